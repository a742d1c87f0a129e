//! The agent's core loop, without the async runtime: events from the probes go through
//! attribution into the termination engine, whose requests (list open connections, is the
//! cgroup empty, stop watching) are answered here against the kernel maps and cgroupfs.
//! `termscope agent` drives it from tokio; the scenario tests drive it directly.

use std::collections::{HashMap, HashSet, VecDeque};

use termscope_common::{LiveConn, flags, watch_reason};

use crate::{
    attribute::{Resolver, cgroup_path::Identity, cgroupfs},
    clock::{self, WallClock},
    decode::{Addrs, Event, KeptConnection},
    kube::{
        UnixNanos,
        state::{KubeState, KubeStateConfig, KubeUpdate},
    },
    probes::{ProbeError, Probes},
    restart::{Journal, Listed, Record},
    terminations::{
        Action, Engine, EngineConfig, OpenConnection,
        kube::enrich,
        pod::{PodNow, PodRollUps, PodTerminationReport, roll_up},
        report::{Flag, Incomplete, OpenedBy, TerminationReport},
    },
};

/// A cgroup the kernel began watching on a stop signal this long ago, with no termination
/// open in userspace, lost its signal event: a termination is opened from the kernel's
/// watch. (Control events are read as soon as they arrive; this only leaves room for a busy
/// moment.)
const RECONCILE_AFTER_NS: u64 = 2_000_000_000;
/// Cgroups whose lost-event counts are remembered after their terminations.
const MAX_UNWATCHED_COUNTS: usize = 65_536;

/// The Kubernetes side of the pipeline: the API's view of this node's pods, the pods being
/// deleted, and the container reports waiting to be rolled up into pod reports.
struct KubeSide {
    state: KubeState,
    /// Pods being deleted, their container reports, drain times (the roll-up's rules).
    pods: PodRollUps,
    pod_reports: Vec<PodTerminationReport>,
}

/// How long a record of a connection whose cgroup has no termination in progress is left in
/// `KEPT_CONNS` after its last change: the stop signal that opens the termination may be on
/// its way (it reaches the agent through its own ring, and records are taken right after
/// each batch of events), and a cgroup the kernel watched before the signal
/// (`--watch-cgroup`) is not among those a stop signal's watch marks.
const RECENT_RECORD_NS: u64 = 1_000_000_000;

/// Whether a record of a connection whose cgroup has no termination in progress stays for a
/// later take rather than being reaped: its cgroup's termination opens within moments (the
/// kernel began watching it on a stop signal), or it changed less than [`RECENT_RECORD_NS`]
/// ago.
fn leave_for_later(stop_signal_watch: bool, last_change_ns: u64, now_ns: u64) -> bool {
    stop_signal_watch || now_ns.saturating_sub(last_change_ns) < RECENT_RECORD_NS
}

pub struct Pipeline {
    probes: Probes,
    engine: Engine,
    resolver: Resolver,
    clock: WallClock,
    node: String,
    kube: Option<KubeSide>,
    /// Cgroups watched by configuration (`--watch-cgroup`): the end of a termination does not
    /// stop watching them.
    explicit: HashSet<u64>,
    /// Per open termination: the kernel's counts of the cgroup's lost events and untracked
    /// connections when it opened.
    lost_at_open: HashMap<u64, (u64, u64)>,
    /// The same counts when the cgroup was last unwatched: a cgroup only loses events while
    /// it is watched, so a termination opened by a stop signal counts from here (or from 0)
    /// — the kernel watched it from the signal on, before userspace heard of it.
    lost_at_unwatch: HashMap<u64, (u64, u64)>,
    /// Per open termination (by its container's cgroup): the node's count of the kernel
    /// programs' skipped runs when it opened (see `TerminationReport::kernel_runs_skipped`).
    /// Node-wide, so one per termination, not one per cgroup as the losses above.
    skipped_at_open: HashMap<u64, u64>,
    /// The inputs of the terminations in progress, for the state file (`None`: none kept).
    journal: Option<Journal>,
    /// Cgroups whose termination spanned an agent restart: their reports say
    /// `agent_restarted`.
    restarted: HashSet<u64>,
    /// While a journal is replayed: the kernel's lists of open connections as they were
    /// when each termination began, per cgroup in order.
    replay_snapshots: HashMap<u64, VecDeque<Vec<Listed>>>,
    /// While a journal is replayed: identities resolved before the restart.
    replay_identities: HashMap<u64, Identity>,
    /// Per open termination: the cgroups below the container's own that are part of it
    /// (watched with it, their connections listed and their losses counted with it).
    members: HashMap<u64, Vec<u64>>,
    /// The kernel's count of records written to `KEPT_CONNS` when they were last taken.
    kept_seen: u64,
    /// Records taken from `KEPT_CONNS` whose termination was not open yet but about to open
    /// ([`leave_for_later`]): offered to the engine again at each take, reaped once too old.
    kept_pending: Vec<KeptConnection>,
    /// What was done with the kernel's records of watched connections.
    kept: KeptStats,
}

/// What the agent did with the kernel's records of watched connections (`KEPT_CONNS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeptStats {
    /// Taken into a termination in progress.
    pub taken: u64,
    /// Deleted without use: no termination of their cgroup is in progress and none is about
    /// to open (the cgroup was unwatched since, or is watched for another reason, e.g.
    /// `--watch-all`). Nothing is left behind in the kernel.
    pub reaped: u64,
}

impl Pipeline {
    pub fn new(probes: Probes, cfg: EngineConfig, mount: Option<cgroupfs::Mount>) -> Self {
        let clock = WallClock::now();
        let node = cfg.node.clone();
        Pipeline {
            probes,
            engine: Engine::new(cfg, clock),
            resolver: Resolver::new(mount),
            clock,
            node,
            kube: None,
            explicit: HashSet::new(),
            lost_at_open: HashMap::new(),
            lost_at_unwatch: HashMap::new(),
            skipped_at_open: HashMap::new(),
            journal: None,
            restarted: HashSet::new(),
            replay_snapshots: HashMap::new(),
            replay_identities: HashMap::new(),
            members: HashMap::new(),
            kept_seen: 0,
            kept_pending: Vec::new(),
            kept: KeptStats::default(),
        }
    }

    /// What was done so far with the kernel's records of watched connections.
    pub fn kept_stats(&self) -> KeptStats {
        self.kept
    }

    /// Takes what the kernel kept of watched connections (`KEPT_CONNS`) since the last call
    /// (read and deleted in one step) into the terminations in progress; records of cgroups
    /// with no termination in progress are dropped (counted as reaped), except those of a
    /// cgroup the kernel began watching on a stop signal, whose termination opens within
    /// moments, and those that changed within the last second ([`leave_for_later`]): the
    /// agent holds these and offers them again at the next calls. Cheap when nothing was
    /// written and nothing is held: call it after every batch of events and on the drain
    /// timer.
    pub fn take_kept(&mut self) -> Result<(), ProbeError> {
        let written = self.probes.kept_written()?;
        if written == self.kept_seen && self.kept_pending.is_empty() {
            return Ok(());
        }
        let soon: HashSet<u64> = self
            .probes
            .watched_cgroups()?
            .into_iter()
            .filter(|(cg, e)| {
                e.reason == watch_reason::STOP_SIGNAL
                    && !self.engine.is_open(*cg)
                    && !self.explicit.contains(cg)
            })
            .map(|(cg, _)| cg)
            .collect();
        let now = clock::boot_ns();
        let Pipeline {
            probes,
            engine,
            journal,
            kept,
            kept_pending,
            kept_seen,
            ..
        } = self;
        let journal_on = journal.is_some();
        let mut journalled: HashMap<u64, Vec<KeptConnection>> = HashMap::new();
        let mut held = Vec::new();
        // Each record straight into the engine as it is taken: no list of them all.
        let mut offer = |k: KeptConnection| {
            if engine.on_kept(&k) {
                kept.taken += 1;
                if journal_on {
                    journalled.entry(k.cgroup_id).or_default().push(k);
                }
            } else if leave_for_later(soon.contains(&k.cgroup_id), k.last_change_ns(), now) {
                held.push(k);
            } else {
                kept.reaped += 1;
            }
        };
        for k in std::mem::take(kept_pending) {
            offer(k);
        }
        let taken = if written != *kept_seen {
            // Read before the take: a record written during it makes the next call take again.
            *kept_seen = written;
            let decoder = probes.decoder();
            probes.take_kept(|rec| offer(decoder.kept(rec)))
        } else {
            Ok(0)
        };
        // Whatever the take did before an error is kept: those records are out of the map.
        self.kept_pending = held;
        for (cgroup_id, conns) in journalled {
            self.journal(Record::Kept { cgroup_id, conns });
        }
        taken.map(|_| ())
    }

    /// Whether a termination in progress is due to be reported now: the agent calls
    /// [`Pipeline::tick`] then, besides its one-second tick, so a report comes out when its
    /// linger ends rather than up to a tick later.
    pub fn tick_due(&self) -> bool {
        self.engine
            .next_due_ns()
            .is_some_and(|due| clock::boot_ns() >= due)
    }

    /// The container cgroup `cg` belongs to (itself, or the container's when `cg` is one of
    /// its descendants); the engine is told, so the events of `cg` go to the container.
    fn container_of(&mut self, cg: u64) -> u64 {
        if cg <= 1 {
            return cg;
        }
        let key = self.engine.key(cg);
        if key != cg {
            return key;
        }
        let container = self.resolver.container_of(cg);
        self.engine.add_member(container, cg);
        container
    }

    /// Keeps a journal of the terminations in progress ([`Pipeline::journal`] is what goes
    /// to the state file), starting with the one an earlier agent left (replayed now: its
    /// terminations continue here and their reports say `agent_restarted`). Then tidies the
    /// watches found in pinned maps: a stop signal's watch with no termination is opened by
    /// the next reconcile; a userspace watch of nothing in progress is removed (an explicit
    /// watch is added again by its flag).
    pub fn restore(&mut self, journal: Journal) -> Result<(), ProbeError> {
        self.journal = Some(Journal::new());
        if journal.dropped > 0 {
            tracing::warn!(
                dropped = journal.dropped,
                "the state file's journal was full: the restored terminations miss some events"
            );
        }
        for record in &journal.records {
            match record {
                Record::Snapshot { cgroup_id, open } => self
                    .replay_snapshots
                    .entry(*cgroup_id)
                    .or_default()
                    .push_back(open.clone()),
                Record::Identity {
                    cgroup_id,
                    identity,
                } => {
                    self.replay_identities.insert(*cgroup_id, identity.clone());
                }
                _ => {}
            }
        }
        let mut seen = HashSet::new();
        for record in journal.records {
            match record {
                Record::Event { event } => {
                    seen.insert(event.cgroup_id());
                    self.handle(&event)?;
                }
                Record::Kept { cgroup_id, conns } => {
                    seen.insert(cgroup_id);
                    for k in &conns {
                        self.engine.on_kept(k);
                    }
                    self.journal(Record::Kept { cgroup_id, conns });
                }
                Record::OpenedForDeletion {
                    cgroup_id,
                    identity,
                    at_ns,
                    http_hook_port,
                } => {
                    seen.insert(cgroup_id);
                    self.journal(Record::OpenedForDeletion {
                        cgroup_id,
                        identity: identity.clone(),
                        at_ns,
                        http_hook_port,
                    });
                    let actions = self.engine.open_for_deletion(cgroup_id, identity, at_ns);
                    if let Some(port) = http_hook_port {
                        self.engine.set_http_hook_port(cgroup_id, port);
                    }
                    self.act(actions)?;
                }
                Record::OpenedFromKernel {
                    cgroup_id,
                    identity,
                    since_ns,
                } => {
                    seen.insert(cgroup_id);
                    self.journal(Record::OpenedFromKernel {
                        cgroup_id,
                        identity: identity.clone(),
                        since_ns,
                    });
                    let actions = self.engine.open_from_kernel(cgroup_id, identity, since_ns);
                    self.act(actions)?;
                }
                Record::LostBase {
                    cgroup_id,
                    events_lost,
                    untracked,
                } => {
                    self.lost_at_open
                        .insert(cgroup_id, (events_lost, untracked));
                    self.journal(Record::LostBase {
                        cgroup_id,
                        events_lost,
                        untracked,
                    });
                }
                // Taken above, where the replay asks for them.
                Record::Snapshot { .. } | Record::Identity { .. } => {}
            }
        }
        for (cg, identity) in std::mem::take(&mut self.replay_identities) {
            if self.engine.is_open(cg) {
                self.engine.set_identity(cg, identity.clone());
                self.journal(Record::Identity {
                    cgroup_id: cg,
                    identity,
                });
            }
        }
        self.replay_snapshots.clear();
        self.restarted = seen
            .into_iter()
            .filter(|cg| self.engine.is_open(*cg))
            .collect();
        if !self.restarted.is_empty() {
            tracing::info!(
                terminations = self.restarted.len(),
                "restored the terminations in progress when the agent last stopped"
            );
        }
        // Watches found in the pinned maps.
        for (cg, entry) in self.probes.watched_cgroups()? {
            if self.engine.is_open(self.engine.key(cg)) || self.explicit.contains(&cg) {
                continue;
            }
            if entry.reason == watch_reason::STOP_SIGNAL {
                // Its termination began before this agent: opened by the next reconcile.
                self.restarted.insert(cg);
            } else {
                self.probes.unwatch(cg)?;
                self.probes.forget_connections_of(cg)?;
            }
        }
        Ok(())
    }

    /// The journal of the terminations in progress (for the state file).
    pub fn journal_state(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    fn journal(&mut self, record: Record) {
        if let Some(j) = &mut self.journal {
            j.push(record);
        }
    }

    /// Watches a cgroup for as long as the agent runs (`--watch-cgroup`): terminations of it
    /// come and go, the watch stays.
    pub fn watch_explicit(&mut self, cgroup_id: u64) -> Result<(), ProbeError> {
        self.probes.watch(cgroup_id)?;
        self.explicit.insert(cgroup_id);
        Ok(())
    }

    /// Joins terminations with what the Kubernetes API says about this node's pods (fed
    /// through [`Pipeline::apply_kube`]).
    pub fn enable_kube(&mut self, cfg: KubeStateConfig) {
        self.kube = Some(KubeSide {
            state: KubeState::new(cfg),
            pods: PodRollUps::default(),
            pod_reports: Vec::new(),
        });
    }

    /// Takes an update from the API watchers. A pod whose deletion shows up for the first
    /// time opens the terminations of its containers right away, and the kernel starts
    /// watching them: the preStop hook, the traffic that still arrives and the time until the
    /// stop signal become part of the reports.
    pub fn apply_kube(&mut self, update: KubeUpdate) -> Result<(), ProbeError> {
        let Some(kube) = &mut self.kube else {
            return Ok(());
        };
        // Only an applied pod can carry a deletion not seen before: look at that one, not at
        // every pod of the node on every update (EndpointSlice updates come often).
        let candidate = match &update {
            KubeUpdate::PodApplied { pod, .. } if pod.deletion.is_some() => Some(pod.uid.clone()),
            _ => None,
        };
        kube.state.apply(update);
        let Some(uid) = candidate.filter(|uid| kube.pods.begin(uid)) else {
            return Ok(());
        };
        let container_ids: Vec<(String, Option<u16>)> = kube
            .state
            .pod_by_uid(&uid)
            .map(|pod| {
                pod.containers
                    .iter()
                    .filter_map(|c| Some((c.container_id.clone()?, http_hook_port(c))))
                    .collect()
            })
            .unwrap_or_default();
        let now = clock::boot_ns();
        let mut actions = Vec::new();
        for (id, hook_port) in container_ids {
            let Some(cg) = self.resolver.cgroup_of_container(&id) else {
                tracing::debug!(container = %id, "no cgroup for a deleted pod's container");
                continue;
            };
            self.probes.watch(cg)?;
            let identity = self.resolver.resolve(cg).cloned();
            if self.journal.is_some() {
                self.journal(Record::OpenedForDeletion {
                    cgroup_id: cg,
                    identity: identity.clone(),
                    at_ns: now,
                    http_hook_port: hook_port,
                });
            }
            actions.extend(self.engine.open_for_deletion(cg, identity, now));
            if let Some(port) = hook_port {
                self.engine.set_http_hook_port(cg, port);
            }
        }
        self.act(actions)
    }

    /// What the API says about a pod (live or recently deleted).
    pub fn pod_info(&self, uid: &str) -> Option<crate::kube::pod::PodInfo> {
        self.kube.as_ref()?.state.pod_by_uid(uid).cloned()
    }

    /// Pod reports finished since the last call.
    pub fn take_pod_reports(&mut self) -> Vec<PodTerminationReport> {
        self.kube
            .as_mut()
            .map(|k| std::mem::take(&mut k.pod_reports))
            .unwrap_or_default()
    }

    /// Joins a finished container report with its pod, and files it for the pod's roll-up.
    /// `false`: the report is not a container's: it is the pod sandbox's (the pause
    /// container, which the runtime kills when the pod goes), and is dropped.
    fn join_kube(&mut self, report: &mut TerminationReport) -> bool {
        let Some(kube) = &mut self.kube else {
            return true;
        };
        if let (Some(cid), Some(uid)) = (&report.subject.container_id, &report.subject.pod_uid)
            && kube.state.pod_by_uid(uid).is_some()
            && kube.state.pod_by_container_id(cid).is_none()
        {
            tracing::debug!(pod = %uid, container = %cid, "the pod sandbox stopped (not reported)");
            return false;
        }
        let found = report
            .subject
            .container_id
            .as_deref()
            .and_then(|id| kube.state.pod_by_container_id(id))
            .map(|(p, c)| (p.uid.clone(), Some(c.name.clone())))
            .or_else(|| {
                report
                    .subject
                    .pod_uid
                    .as_ref()
                    .filter(|uid| kube.state.pod_by_uid(uid).is_some())
                    .map(|uid| (uid.clone(), None))
            });
        let Some((uid, container)) = found else {
            return true;
        };
        let Some(view) = kube.state.pod_view(&uid) else {
            return true;
        };
        let key = format!("{}/{}", view.info.namespace, view.info.workload);
        let container_info = container.as_deref().and_then(|n| view.info.container(n));
        enrich(report, &view, container_info, kube.pods.p99_drain(&key));
        kube.pods.file(&uid, &key, report);
        true
    }

    /// Rolls up the pods that are done: deleted, with no container termination still open
    /// (or long past their deadline).
    fn roll_up_pods(&mut self) {
        let Some(kube) = &mut self.kube else {
            return;
        };
        let (state, engine, resolver) = (&kube.state, &self.engine, &self.resolver);
        let done = kube.pods.due(UnixNanos(clock::wall_ns()), |uid| {
            let view = state.pod_view(uid)?;
            Some(PodNow {
                deleted: view.deleted_at.is_some(),
                terminating: view.info.containers.iter().any(|c| {
                    c.container_id
                        .as_deref()
                        .and_then(|id| resolver.cgroup_of_known_container(id))
                        .is_some_and(|cg| engine.is_open(cg))
                }),
                deadline: view.info.deletion.map(|d| d.deadline),
            })
        });
        for (uid, reports) in done {
            if let Some(view) = kube.state.pod_view(&uid) {
                kube.pod_reports.push(roll_up(&self.node, &view, reports));
            }
        }
    }

    /// Forgets deleted pods after their time in the cache.
    pub fn expire_kube(&mut self) {
        if let Some(kube) = &mut self.kube {
            kube.state.expire(UnixNanos(clock::wall_ns()));
            let state = &kube.state;
            kube.pods.forget(|uid| state.pod_by_uid(uid).is_some());
        }
    }

    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    pub fn probes_mut(&mut self) -> &mut Probes {
        &mut self.probes
    }

    pub fn resolver(&mut self) -> &mut Resolver {
        &mut self.resolver
    }

    pub fn clock(&self) -> WallClock {
        self.clock
    }

    /// Terminations in progress.
    pub fn open_terminations(&self) -> usize {
        self.engine.open_count()
    }

    /// Takes one event.
    pub fn handle(&mut self, event: &Event) -> Result<(), ProbeError> {
        // A stop signal that opened a watch: resolve the target's identity now, while its
        // cgroup surely exists (runtimes remove it within milliseconds of the last exit).
        if let Event::Signal(s) = event {
            if s.watch_opened {
                let _ = self.resolver.resolve_now(s.target_cgroup_id);
            }
            // A container's processes may live in cgroups below its own: its termination is
            // the container's, and a signal between its cgroups is internal.
            self.container_of(s.target_cgroup_id);
            if self.resolver.resolve(s.sender_cgroup_id).is_some() {
                self.container_of(s.sender_cgroup_id);
            }
        }
        let resolver = &mut self.resolver;
        let restored = &self.replay_identities;
        let actions = self.engine.on_event(event, &mut |id| {
            restored
                .get(&id)
                .cloned()
                .or_else(|| resolver.resolve(id).cloned())
        });
        // A stop signal to a cgroup below a container's whose termination is open: watched
        // and counted with it from now on (and unwatched with it).
        if let Event::Signal(s) = event {
            let target = s.target_cgroup_id;
            let key = self.engine.key(target);
            if key != target && self.engine.is_open(key) {
                let members = self.members.entry(key).or_default();
                if !members.contains(&target) {
                    members.push(target);
                    self.count_losses_from_now(target)?;
                    if !self.probes.is_watched(target)? {
                        self.probes.watch(target)?;
                    }
                }
            }
        }
        // What the terminations in progress took (an event that opened one included).
        if self.journal.is_some() && self.engine.open_count() > 0 {
            self.journal(Record::Event {
                event: event.clone(),
            });
        }
        self.act(actions)
    }

    /// Finishes what is done; call about once a second. Container reports come back here;
    /// pod reports (Kubernetes) from [`Pipeline::take_pod_reports`].
    pub fn tick(&mut self) -> Result<Vec<TerminationReport>, ProbeError> {
        self.reconcile(clock::boot_ns())?;
        // Everything the kernel kept up to now goes into the reports due now.
        self.take_kept()?;
        let (mut reports, actions) = self.engine.tick(clock::boot_ns());
        // Before the actions: they forget the finished terminations' counts.
        for report in &mut reports {
            self.mark_incomplete(report);
            self.mark_restarted(report);
        }
        self.act(actions)?;
        if self.engine.open_count() == 0
            && let Some(j) = &mut self.journal
        {
            j.clear();
        }
        let mut kept = Vec::with_capacity(reports.len());
        for mut report in reports.drain(..) {
            if self.join_kube(&mut report) {
                kept.push(report);
            }
        }
        reports = kept;
        self.roll_up_pods();
        Ok(reports)
    }

    /// Reports every termination in progress (the agent is stopping).
    pub fn flush(&mut self) -> Vec<TerminationReport> {
        let mut reports = self.engine.flush(clock::boot_ns());
        for report in &mut reports {
            self.mark_incomplete(report);
            self.mark_restarted(report);
        }
        reports
    }

    /// Flags a report whose termination spanned an agent restart.
    fn mark_restarted(&mut self, report: &mut TerminationReport) {
        if self.restarted.remove(&report.subject.cgroup_id) {
            report.add_flag(Flag::AgentRestarted);
        }
    }

    /// Opens a termination for every cgroup the kernel watches because of a stop signal
    /// whose event never reached userspace (nothing is left watched without a report).
    fn reconcile(&mut self, now_ns: u64) -> Result<(), ProbeError> {
        let watched = self.probes.watched_cgroups()?;
        for (watched_cg, entry) in watched {
            if entry.reason != watch_reason::STOP_SIGNAL
                || self.engine.is_open(self.engine.key(watched_cg))
                || now_ns < entry.since_ns.saturating_add(RECONCILE_AFTER_NS)
            {
                continue;
            }
            // A cgroup below a container's: the container's termination.
            let cg = self.container_of(watched_cg);
            if self.engine.is_open(cg) {
                continue;
            }
            tracing::warn!(
                cgroup = cg,
                "the kernel watches a cgroup after a stop signal the agent never received: \
                 opening its termination from the kernel's watch"
            );
            let identity = self.resolver.resolve_now(cg).cloned();
            // Every loss of this cgroup since it was last unwatched may have been the stop
            // signal's: count them all.
            let base = self.lost_at_unwatch.get(&cg).copied().unwrap_or((0, 0));
            self.lost_at_open.insert(cg, base);
            if self.journal.is_some() {
                self.journal(Record::LostBase {
                    cgroup_id: cg,
                    events_lost: base.0,
                    untracked: base.1,
                });
                self.journal(Record::OpenedFromKernel {
                    cgroup_id: cg,
                    identity: identity.clone(),
                    since_ns: entry.since_ns,
                });
            }
            let actions = self.engine.open_from_kernel(cg, identity, entry.since_ns);
            self.act(actions)?;
        }
        Ok(())
    }

    /// Marks a finished report `incomplete` when events of its cgroup were lost while it was
    /// collected, or when its stop signal never arrived; and says how many runs of the
    /// kernel programs the kernel skipped on the node meanwhile.
    fn mark_incomplete(&mut self, report: &mut TerminationReport) {
        let cg = report.subject.cgroup_id;
        let mut cgroups = vec![cg];
        cgroups.extend(self.members.get(&cg).into_iter().flatten().copied());
        let (mut events_lost, mut connections_untracked) = (0, 0);
        let base = self.skipped_at_open.remove(&cg);
        report.kernel_runs_skipped = skipped_since(base, self.runs_skipped());
        for id in cgroups {
            let base = self.lost_at_open.remove(&id).unwrap_or((0, 0));
            let now = self
                .probes
                .cgroup_stats(id)
                .inspect_err(
                    |e| tracing::warn!(error = %e, "reading the kernel's lost-event count"),
                )
                .map(|s| (s.events_lost, s.untracked))
                .unwrap_or(base);
            events_lost += now.0.saturating_sub(base.0);
            connections_untracked += now.1.saturating_sub(base.1);
        }
        let incomplete = Incomplete {
            events_lost,
            stop_signal_missed: report.opened_by == OpenedBy::KernelWatch,
            connections_untracked,
        };
        if report.kernel_runs_skipped > 0 {
            tracing::info!(
                cgroup = cg,
                skipped = report.kernel_runs_skipped,
                "the kernel skipped runs of termscope's programs on this node while the report \
                 was collected (whose, it does not say)"
            );
        }
        if incomplete != Incomplete::default() {
            tracing::warn!(
                cgroup = cg,
                lost = incomplete.events_lost,
                untracked = incomplete.connections_untracked,
                stop_signal_missed = incomplete.stop_signal_missed,
                "the report is incomplete"
            );
            report.add_flag(Flag::Incomplete);
            report.incomplete = Some(incomplete);
        }
    }

    fn act(&mut self, actions: Vec<Action>) -> Result<(), ProbeError> {
        for action in actions {
            match action {
                Action::Snapshot(cg) => {
                    // The cgroups below the container's: known members (a stop signal's
                    // target) and those that exist now. Watched with it from here on.
                    let mut members = self.engine.members_of(cg);
                    for m in self.resolver.descendants(cg) {
                        if !members.contains(&m) {
                            members.push(m);
                        }
                    }
                    if !members.is_empty() && !self.probes.is_watched(cg)? {
                        // Its processes may live in its own cgroup too.
                        self.probes.watch(cg)?;
                    }
                    for &m in &members {
                        self.engine.add_member(cg, m);
                        if !self.probes.is_watched(m)? {
                            self.probes.watch(m)?;
                        }
                    }
                    for id in std::iter::once(cg).chain(members.iter().copied()) {
                        self.count_losses_from_now(id)?;
                    }
                    if !self.skipped_at_open.contains_key(&cg) {
                        let skipped = self.runs_skipped();
                        self.skipped_at_open.insert(cg, skipped);
                    }
                    if !members.is_empty() {
                        tracing::debug!(
                            cgroup = cg,
                            members = ?members,
                            "the container's processes live in cgroups below its own"
                        );
                    }
                    // The termination just opened: the cgroup exists now, and may be younger
                    // than the resolver's last index.
                    if let Some(identity) = self.resolver.resolve_now(cg).cloned() {
                        if self.journal.is_some() {
                            self.journal(Record::Identity {
                                cgroup_id: cg,
                                identity: identity.clone(),
                            });
                        }
                        self.engine.set_identity(cg, identity);
                    }
                    // Replaying a journal: the list as it was when the termination began.
                    let replayed = self
                        .replay_snapshots
                        .get_mut(&cg)
                        .and_then(VecDeque::pop_front);
                    let journal_on = self.journal.is_some();
                    let mut listed: Vec<Listed> = Vec::new();
                    let mut count = 0usize;
                    match replayed {
                        Some(replayed) => {
                            let open: Vec<OpenConnection> =
                                replayed.iter().map(OpenConnection::from).collect();
                            count = open.len();
                            self.engine.on_snapshot(cg, &open);
                            listed = replayed;
                        }
                        None => {
                            // The kernel keeps only watched cgroups' connections from their
                            // opening: those opened before the watch are walked in now, with
                            // their establishment from the log while it still holds it.
                            let established = if self.probes.tracks_all() {
                                None
                            } else {
                                self.probes
                                    .learn_watched_connections()
                                    .inspect_err(|e| {
                                        tracing::warn!(
                                            cgroup = cg,
                                            error = %e,
                                            "could not walk the sockets of a watched container"
                                        )
                                    })
                                    .ok()
                            };
                            // Walked a batch at a time, each of this cgroup's straight into
                            // the engine: no list of the node's connections in memory.
                            let engine = &mut self.engine;
                            self.probes.for_each_live_connection(|sk, c| {
                                // A connection learnt at a state change (older than the
                                // agent, where the start-up walk could not run) has no
                                // known direction: it enters the report through its own
                                // events.
                                if (c.cgroup_id == cg || members.contains(&c.cgroup_id))
                                    && c.flags & flags::UNTRACKED == 0
                                {
                                    let c = &with_establishment(c, sk, established.as_ref());
                                    let open = open_connection(c);
                                    engine.on_snapshot(cg, std::slice::from_ref(&open));
                                    count += 1;
                                    if journal_on {
                                        listed.push(Listed::from(&open));
                                    }
                                }
                            })?;
                        }
                    }
                    if journal_on {
                        self.journal(Record::Snapshot {
                            cgroup_id: cg,
                            open: listed,
                        });
                    }
                    tracing::debug!(cgroup = cg, open = count, "termination opened");
                    if members.is_empty() {
                        self.members.remove(&cg);
                    } else {
                        self.members.insert(cg, members);
                    }
                }
                Action::CheckPopulated(cg) => {
                    if let Some(populated) = self.resolver.populated(cg) {
                        self.engine.on_population(cg, populated, clock::boot_ns());
                    }
                }
                Action::Unwatch(cg) => {
                    let members = self.members.remove(&cg).unwrap_or_default();
                    for id in std::iter::once(cg).chain(members) {
                        self.unwatch(id)?;
                    }
                }
                Action::UnwatchNetns(netns) => self.probes.unwatch_netns(netns)?,
            }
        }
        Ok(())
    }
}

/// The node's skipped runs since a termination opened: `now` (all programs' counts) less the
/// count recorded when it opened (`base`), or less 0 when none was recorded (restored from
/// the state file: the programs' counts began at 0 when this agent loaded them, after the
/// termination opened).
fn skipped_since(base: Option<u64>, now: u64) -> u64 {
    now.saturating_sub(base.unwrap_or(0))
}

impl Pipeline {
    /// The runs of all termscope's programs the kernel skipped since they were loaded.
    fn runs_skipped(&self) -> u64 {
        self.probes.runs_missed().iter().map(|(_, n)| n).sum()
    }

    /// Counts the kernel's losses for cgroup `cg` from now on, for the termination that
    /// opens (its container's or its own), unless already counted.
    fn count_losses_from_now(&mut self, cg: u64) -> Result<(), ProbeError> {
        if self.lost_at_open.contains_key(&cg) {
            return Ok(());
        }
        // Watched all along (configuration, --watch-all): count from now. Otherwise from
        // when it was last unwatched (losses between the stop signal and this moment are
        // this termination's).
        let base = if self.explicit.contains(&cg) || self.probes.watches_all() {
            let stats = self.probes.cgroup_stats(cg)?;
            (stats.events_lost, stats.untracked)
        } else {
            self.lost_at_unwatch.get(&cg).copied().unwrap_or((0, 0))
        };
        self.lost_at_open.insert(cg, base);
        self.journal(Record::LostBase {
            cgroup_id: cg,
            events_lost: base.0,
            untracked: base.1,
        });
        Ok(())
    }

    /// The termination of cgroup `cg` (a container's, or one of its cgroups) is reported:
    /// its losses are remembered and the kernel stops watching it, unless configured to.
    fn unwatch(&mut self, cg: u64) -> Result<(), ProbeError> {
        self.lost_at_open.remove(&cg);
        self.skipped_at_open.remove(&cg);
        if self.explicit.contains(&cg) {
            // A configured watch outlives the termination (and a reload signal).
            return Ok(());
        }
        let stats = self.probes.cgroup_stats(cg)?;
        if self.lost_at_unwatch.len() >= MAX_UNWATCHED_COUNTS {
            // Cgroup ids are never reused: forgetting old ones only makes a later
            // termination of the same cgroup count a little more.
            self.lost_at_unwatch.clear();
        }
        if stats.events_lost > 0 || stats.untracked > 0 {
            self.lost_at_unwatch
                .insert(cg, (stats.events_lost, stats.untracked));
        }
        self.probes.unwatch(cg)?;
        // Its connections' entries: nothing keeps them right any more.
        let forgotten = self.probes.forget_connections_of(cg)?;
        if forgotten > 0 {
            tracing::debug!(
                cgroup = cg,
                forgotten,
                "dropped the connections of an unwatched cgroup"
            );
        }
        self.resolver.forget(cg);
        Ok(())
    }
}

/// The port of a container's httpGet preStop hook, when numeric (a named port is not
/// resolved).
fn http_hook_port(c: &crate::kube::pod::ContainerInfo) -> Option<u16> {
    match &c.pre_stop {
        Some(crate::kube::pod::PreStop::HttpGet { port, .. }) => port.parse().ok(),
        _ => None,
    }
}

/// `c` (at socket address `sk`) with its establishment time and direction from the log, when
/// the walk learnt it without them and the log still holds it.
fn with_establishment(
    c: &LiveConn,
    sk: u64,
    log: Option<&crate::probes::est_log::Establishments>,
) -> LiveConn {
    let mut c = *c;
    if c.established_ns == 0
        && let Some(e) = log.and_then(|l| l.get(sk))
    {
        c.established_ns = e.at_ns;
        c.flags &= !flags::INBOUND;
        if e.inbound {
            c.flags |= flags::INBOUND;
        }
    }
    c
}

fn open_connection(c: &LiveConn) -> OpenConnection {
    let addrs = Addrs::from_raw(&c.tuple);
    OpenConnection {
        conn_id: c.conn_id,
        local: addrs.local,
        remote: addrs.remote,
        inbound: c.flags & flags::INBOUND != 0,
        established_ns: c.established_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_record_of_no_termination_waits_while_recent_or_announced() {
        let now = 100 * S;
        // Closed 10 ms ago in a cgroup watched by configuration: its stop signal may not be
        // handled yet.
        assert!(leave_for_later(false, now - S / 100, now));
        // Older than the window, and no stop signal's watch: reaped.
        assert!(!leave_for_later(false, now - 2 * S, now));
        assert!(!leave_for_later(false, 0, now));
        // A stop signal's watch with no termination yet: kept, however old.
        assert!(leave_for_later(true, now - 60 * S, now));
        // A clock read before the record's change (another CPU): recent.
        assert!(leave_for_later(false, now + 5, now));
    }

    #[test]
    fn the_runs_skipped_while_a_report_was_collected_count_from_its_open() {
        // The termination opened when the node had skipped 7 runs.
        assert_eq!(skipped_since(Some(7), 12), 5);
        assert_eq!(skipped_since(Some(7), 7), 0);
        // Restored from the state file: counted since this agent's programs were loaded.
        assert_eq!(skipped_since(None, 3), 3);
        // A count that went down (a program reloaded): none, not a wrap-around.
        assert_eq!(skipped_since(Some(5), 2), 0);
    }
}
