//! The termination engine: kernel events in, one [`TerminationReport`] per stopped container
//! out. Pure logic — no I/O, no clock reads — so every rule is unit-tested without root.
//!
//! A termination opens at the first stop signal sent to a container from outside it, and
//! closes when its last process has exited (plus a short linger for the kernel's last closes
//! and for refusals of traffic that still arrives), or when its processes survive the stop
//! signal for too long. Signals a container sends to itself, and the kernel's SIGKILL spread
//! when a PID-namespace init dies, are recorded but open nothing.

pub mod activity;
pub mod advice;
pub mod flag;
pub mod kinds;
pub mod kube;
pub mod named;
pub mod outcome;
pub mod pod;
pub mod report;
pub mod verdict;

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use report::{
    Connection, Counts, Direction, Exit, ExitHow, OpenedBy, Proc, SCHEMA, Step, StepKind,
    StopSignal, Subject, TerminationReport, Verdict,
};
use verdict::Conn;

use crate::{
    attribute::cgroup_path::Identity,
    decode::{
        Disposition, Event, ExitStatus, KeptConnection, ResetDirection, SignalResult, TcpState,
        WallClock,
    },
    outputs::bound,
    signal::Signal,
};

/// A process that ran its own handler for a stop signal and died of that signal this long
/// after or later had a handler: it shut down, then re-raised the signal (Ruby does). Sooner,
/// the handler only cleaned up (Node.js resets the terminal and re-raises at once): the
/// default action, in effect.
const SHUTDOWN_BEFORE_RERAISE_NS: u64 = 100_000_000;

/// kubelet's preStop httpGet request may precede this agent's view of the pod's deletion by
/// the API watch's delay.
const HOOK_REQUEST_SLACK_NS: u64 = 1_000_000_000;
/// The root cgroup: not a container.
const ROOT_CGROUP: u64 = 1;

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// After the last process exited, keep collecting this long (the kernel's final closes,
    /// refusals of traffic that still arrives).
    pub linger: Duration,
    /// With processes still alive this long after the last stop signal, report them as
    /// having survived it.
    pub survive_after: Duration,
    /// Connections listed per report (all are counted).
    pub max_connections: usize,
    /// This node's name, for the reports.
    pub node: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            linger: Duration::from_secs(3),
            survive_after: Duration::from_secs(120),
            max_connections: 256,
            node: String::new(),
        }
    }
}

/// What the engine asks of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A termination opened: list the container's open connections from the kernel's
    /// live-connection map and give them to [`Engine::on_snapshot`].
    Snapshot(u64),
    /// Tell [`Engine::on_population`] whether the cgroup still has processes.
    CheckPopulated(u64),
    /// The termination is reported (or none opened): the kernel may stop watching the cgroup.
    Unwatch(u64),
    /// No termination in progress uses this network namespace any more: the kernel may stop
    /// sending its socket-less resets unconditionally.
    UnwatchNetns(u32),
}

/// Signals that services also use to reload or rotate logs. A termination opened by these
/// alone whose processes neither exit nor lose connections is not reported: it was a reload.
const SOFT_SIGNALS: [Signal; 4] = advice::RELOAD_SIGNALS;

/// A connection the kernel listed as open when the termination began.
#[derive(Debug, Clone, Copy)]
pub struct OpenConnection {
    pub conn_id: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub inbound: bool,
    pub established_ns: u64,
}

/// A signal sent to one of the container's processes, as the engine keeps it.
#[derive(Debug, Clone)]
struct SentSignal {
    ts: u64,
    signal: Signal,
    /// `si_code`: 0 from kill(2), -6 from tkill/tgkill, 0x80 from the kernel.
    code: i32,
    sender: Proc,
    sender_cgroup: Option<String>,
    target: Proc,
    result: SignalResult,
    internal: bool,
}

impl SentSignal {
    /// A SIGKILL a process inside the container sent on purpose (kill(2), tkill): a
    /// supervisor's escalation (supervisord's `stopwaitsecs`, gunicorn's `graceful_timeout`),
    /// not the kernel's SIGKILL to the rest of a PID namespace whose init died (`si_code`
    /// SI_KERNEL).
    fn is_inside_escalation(&self) -> bool {
        self.internal && self.signal == Signal::KILL && matches!(self.code, 0 | -6)
    }

    /// The escalation's grace: from the same sender's earlier stop signal to the same target.
    fn grace_from<'a>(&self, all: &'a [SentSignal]) -> Option<&'a SentSignal> {
        all.iter().find(|e| {
            e.ts <= self.ts
                && e.signal != Signal::KILL
                && e.sender.pid == self.sender.pid
                && e.target.pid == self.target.pid
        })
    }
}

#[derive(Debug, Clone)]
struct Refusal {
    ts: u64,
    local: SocketAddr,
    remote: SocketAddr,
}

#[derive(Debug, Clone)]
struct Termination {
    cgroup_id: u64,
    opened_by: OpenedBy,
    identity: Option<Identity>,
    netns: u32,
    opened_ns: u64,
    signals: Vec<SentSignal>,
    deliveries: Vec<(u64, Proc, Signal, Disposition)>,
    exits: Vec<(u64, Proc, ExitStatus)>,
    execs: Vec<(u64, Proc, String)>,
    listeners_closed: Vec<(u64, SocketAddr)>,
    listen_addrs: Vec<SocketAddr>,
    conns: HashMap<u64, Conn>,
    /// Names of the processes that closed connections (by tgid), from their events.
    comms: HashMap<u32, String>,
    /// Reset reasons named by the kernel, each once ([`Conn::reset_reason`] indexes it).
    reasons: Vec<String>,
    refusals: Vec<Refusal>,
    emptied_ns: Option<u64>,
    /// When the network namespace's inode was seen naming another namespace: after every
    /// process of the pod had exited, a cgroup outside the pod showed up in it. Refusals from
    /// then on are not this termination's.
    netns_ended_ns: Option<u64>,
    /// Kubernetes: the port of the container's httpGet preStop hook (kubelet's own request).
    http_hook_port: Option<u16>,
}

impl Termination {
    fn new(
        cgroup_id: u64,
        opened_by: OpenedBy,
        identity: Option<Identity>,
        netns: u32,
        opened_ns: u64,
    ) -> Self {
        Termination {
            cgroup_id,
            opened_by,
            identity,
            netns,
            opened_ns,
            signals: Vec::new(),
            deliveries: Vec::new(),
            exits: Vec::new(),
            execs: Vec::new(),
            listeners_closed: Vec::new(),
            listen_addrs: Vec::new(),
            conns: HashMap::new(),
            comms: HashMap::new(),
            reasons: Vec::new(),
            refusals: Vec::new(),
            emptied_ns: None,
            netns_ended_ns: None,
            http_hook_port: None,
        }
    }

    /// Connection `id`, met through a source that gives its addresses, its direction
    /// (`None`: unknown) and when it was established (0: unknown): created the first time,
    /// otherwise completed with what the earlier sources lacked ([`Conn::learn_origin`]) —
    /// records and ring events reach the engine in no fixed order.
    fn meet(
        &mut self,
        id: u64,
        local: SocketAddr,
        remote: SocketAddr,
        inbound: Option<bool>,
        established_ns: u64,
    ) -> &mut Conn {
        match self.conns.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let conn = e.into_mut();
                conn.learn_origin(inbound, established_ns);
                conn
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Conn::new(local, remote, inbound, established_ns))
            }
        }
    }

    fn pod_uid(&self) -> Option<&str> {
        self.identity.as_ref().and_then(|i| i.pod_uid.as_deref())
    }

    /// Whether `other` is a container of the same pod (or, outside Kubernetes, a container
    /// sharing this one's network namespace): while one of them runs, the network namespace
    /// lives, and refusals in it belong to the pod.
    fn is_sibling(&self, other: &Termination) -> bool {
        if self.cgroup_id == other.cgroup_id {
            return true;
        }
        match (self.pod_uid(), other.pod_uid()) {
            (Some(a), Some(b)) => a == b,
            (None, None) => {
                let container = |t: &Termination| {
                    t.identity
                        .as_ref()
                        .is_some_and(|i| i.container_id.is_some())
                };
                self.netns != 0 && self.netns == other.netns && container(self) && container(other)
            }
            _ => false,
        }
    }

    /// Whether a segment to `local` in network namespace `netns` at `ts` reached this
    /// termination's namespace while it was the one the inode named, at one of its listening
    /// addresses.
    fn refused_here(&self, netns: u32, ts: u64, local: SocketAddr) -> bool {
        self.netns != 0
            && self.netns == netns
            && self.netns_ended_ns.is_none_or(|end| ts < end)
            && self.listened_on(local)
    }

    /// The index ([`Conn::reset_reason`]) of a reset reason.
    fn reason_index(&mut self, reason: Option<&str>) -> u16 {
        let Some(reason) = reason else {
            return 0;
        };
        let i = match self.reasons.iter().position(|r| r == reason) {
            Some(i) => i,
            None => {
                self.reasons.push(reason.to_string());
                self.reasons.len() - 1
            }
        };
        u16::try_from(i + 1).unwrap_or(0)
    }

    fn reason(&self, index: u16) -> Option<String> {
        (index as usize)
            .checked_sub(1)
            .and_then(|i| self.reasons.get(i))
            .cloned()
    }

    /// The process `tgid` as the report names it: from the events of its closes, else from
    /// its exit; `None` when neither named it.
    fn proc_named(&self, tgid: u32) -> Option<Proc> {
        if tgid == 0 {
            return None;
        }
        let comm = self.comms.get(&tgid).cloned().or_else(|| {
            self.exits
                .iter()
                .find(|(_, p, _)| p.pid == tgid)
                .map(|(_, p, _)| p.comm.clone())
        })?;
        Some(Proc { pid: tgid, comm })
    }

    /// Records that `tgid` (named `comm`) closed `conn` as it exited.
    fn closed_by(&mut self, conn_id: u64, tgid: u32, comm: &str) {
        if let Some(conn) = self.conns.get_mut(&conn_id)
            && conn.closed_by == 0
        {
            conn.closed_by = tgid;
            self.comms.entry(tgid).or_insert_with(|| comm.to_string());
        }
    }

    fn last_signal_ns(&self) -> u64 {
        self.signals
            .iter()
            .filter(|s| !s.internal)
            .map(|s| s.ts)
            .max()
            .unwrap_or(self.opened_ns)
    }

    /// Opened only by reload-style signals (HUP, USR1, USR2, WINCH), and nothing exited or
    /// was cut: the service reloaded, it did not stop.
    fn was_only_a_reload(&self) -> bool {
        self.emptied_ns.is_none()
            && self.exits.is_empty()
            && self
                .signals
                .iter()
                .filter(|s| !s.internal)
                .all(|s| SOFT_SIGNALS.contains(&s.signal))
            && !self.conns.values().any(|c| c.verdict().is_cut())
            && self.refusals.is_empty()
    }

    fn learn_listen_addr(&mut self, addr: SocketAddr) {
        if !self.listen_addrs.contains(&addr) {
            self.listen_addrs.push(addr);
        }
    }

    /// Whether `c` is a connection the container served (a client of its): accepted, or of
    /// unknown direction (older than the agent) on one of its listening addresses or with no
    /// listener known. Its own outbound connections (upstreams, pools) are told apart.
    fn serves(&self, c: &Conn) -> bool {
        match c.inbound {
            Some(inbound) => inbound,
            None => self.listen_addrs.is_empty() || self.listened_on(c.local),
        }
    }

    /// Kubernetes: the processes of an exec preStop hook, not the workload: programs started
    /// in the container after its pod's deletion and before the first stop signal from
    /// outside to the workload (a signal to a process started so is kubelet's timeout of the
    /// hook).
    fn hook_pids(&self) -> Vec<u32> {
        if self.opened_by != OpenedBy::PodDeletion {
            return Vec::new();
        }
        let started_before =
            |pid: u32, ts: u64| self.execs.iter().any(|(e, p, _)| p.pid == pid && *e < ts);
        let first_stop = self
            .signals
            .iter()
            .filter(|s| !s.internal)
            .find(|s| !started_before(s.target.pid, s.ts))
            .map(|s| s.ts);
        let mut pids: Vec<u32> = self
            .execs
            .iter()
            .filter(|(ts, _, _)| first_stop.is_none_or(|stop| *ts < stop))
            .map(|(_, p, _)| p.pid)
            .collect();
        pids.dedup();
        pids
    }

    /// Kubernetes: kubelet's request of the container's httpGet preStop hook: the first
    /// connection accepted on the hook's port from the deletion (as observed, less a second
    /// for the watch's delay) to the first stop signal, as (local, remote).
    fn http_hook_request(&self, first_stop_ns: Option<u64>) -> Option<(SocketAddr, SocketAddr)> {
        let port = self.http_hook_port?;
        let from = self.opened_ns.saturating_sub(HOOK_REQUEST_SLACK_NS);
        self.conns
            .values()
            .filter(|c| {
                c.inbound == Some(true)
                    && c.local.port() == port
                    && c.established_ns >= from
                    && first_stop_ns.is_none_or(|stop| c.established_ns < stop)
            })
            .min_by_key(|c| (c.established_ns, c.remote))
            .map(|c| (c.local, c.remote))
    }

    /// Its connections with both ends on loopback, as (local, remote).
    fn loopback_pairs(&self) -> impl Iterator<Item = (SocketAddr, SocketAddr)> + '_ {
        self.conns
            .values()
            .filter(|c| is_loopback(c.local.ip()) && is_loopback(c.remote.ip()))
            .map(|c| (c.local, c.remote))
    }

    /// Whether a segment to `local` would have reached one of this container's listeners.
    fn listened_on(&self, local: SocketAddr) -> bool {
        self.listen_addrs.iter().any(|l| {
            l.port() == local.port()
                && (l.ip() == local.ip()
                    || l.ip().is_unspecified()
                    || mapped_eq(l.ip(), local.ip()))
        })
    }
}

/// A loopback address, `::ffff:127.x.y.z` included.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// `::ffff:a.b.c.d` and `a.b.c.d` are the same address to a dual-stack listener.
fn mapped_eq(a: IpAddr, b: IpAddr) -> bool {
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    };
    v4(a).is_some() && v4(a) == v4(b)
}

/// The engine. Feed it events with [`Engine::on_event`], answer its [`Action`]s, call
/// [`Engine::tick`] about once a second for finished reports.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    clock: WallClock,
    open: HashMap<u64, Termination>,
    /// Descendant cgroups of containers (a child cgroup the container's processes live in)
    /// -> the container's cgroup, which keys its termination: one report per container.
    members: HashMap<u64, u64>,
    /// Loopback connections (local, remote) of reported terminations, per network namespace
    /// still used by one in progress: the other end of an internal connection.
    loopback_reported: HashMap<u32, HashSet<(SocketAddr, SocketAddr)>>,
}

impl Engine {
    pub fn new(cfg: EngineConfig, clock: WallClock) -> Self {
        Engine {
            cfg,
            clock,
            open: HashMap::new(),
            members: HashMap::new(),
            loopback_reported: HashMap::new(),
        }
    }

    /// Makes `member`, a cgroup below `container`'s, part of it: its signals, exits and
    /// connections go to `container`'s termination (the agent's attribution tells which
    /// cgroups are descendants of a container's).
    pub fn add_member(&mut self, container: u64, member: u64) {
        if member != container && member > ROOT_CGROUP && container > ROOT_CGROUP {
            self.members.insert(member, container);
        }
    }

    /// The cgroup whose termination events of cgroup `cgroup_id` belong to.
    pub fn key(&self, cgroup_id: u64) -> u64 {
        self.members.get(&cgroup_id).copied().unwrap_or(cgroup_id)
    }

    /// The member cgroups of `container` (see [`Engine::add_member`]).
    pub fn members_of(&self, container: u64) -> Vec<u64> {
        let mut members: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, c)| **c == container)
            .map(|(m, _)| *m)
            .collect();
        members.sort_unstable();
        members
    }

    /// Forgets the members of a container with no termination open.
    fn drop_members_unless_open(&mut self, container: u64) {
        if !self.open.contains_key(&container) {
            self.members.retain(|_, c| *c != container);
        }
    }

    /// Terminations in progress.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Whether cgroup `id` has a termination in progress.
    pub fn is_open(&self, cgroup_id: u64) -> bool {
        self.open.contains_key(&cgroup_id)
    }

    /// Takes one event. `identity` resolves cgroup ids (the target's, the sender's).
    pub fn on_event(
        &mut self,
        event: &Event,
        identity: &mut dyn FnMut(u64) -> Option<Identity>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        // Who else lives in a network namespace a stopped pod left.
        let netns_use = match event {
            Event::Signal(s) => Some((s.target_cgroup_id, s.target_netns, s.ts_ns)),
            Event::TcpState(c) => Some((c.cgroup_id, c.netns, c.ts_ns)),
            _ => None,
        };
        if let Some((cg, netns, ts)) = netns_use {
            self.note_netns_use(self.key(cg), netns, ts, identity);
        }
        match event {
            Event::Signal(s) => {
                let target = s.target_cgroup_id;
                if target == 0 || target == ROOT_CGROUP {
                    if s.watch_opened && target != 0 {
                        actions.push(Action::Unwatch(target));
                    }
                    return actions;
                }
                // A container's processes may live in cgroups below its own: the signal is
                // the container's, and internal when it comes from any of them.
                let cg = self.key(target);
                let sender = self.key(s.sender_cgroup_id);
                let internal = sender == cg;
                let signal = SentSignal {
                    ts: s.ts_ns,
                    signal: s.signal,
                    code: s.code,
                    sender: proc_of(s.sender.tgid, &s.sender.comm),
                    sender_cgroup: identity(s.sender_cgroup_id).map(|i| i.cgroup_path),
                    target: proc_of(s.target.tgid, &s.target.comm),
                    result: s.result.clone(),
                    internal,
                };
                if let Some(t) = self.open.get_mut(&cg) {
                    if t.netns == 0 {
                        t.netns = s.target_netns;
                    }
                    t.signals.push(signal);
                } else if s.signal == Signal::KILL && s.result == SignalResult::Ignored {
                    // SIGKILL cannot be ignored: the kernel drops it because the target is
                    // already exiting (e.g. a runtime's cgroup.kill after the container's
                    // termination was reported). Nothing new is stopping.
                    if s.watch_opened {
                        actions.push(Action::Unwatch(target));
                    }
                } else if !internal {
                    let mut t = Termination::new(
                        cg,
                        OpenedBy::StopSignal,
                        identity(cg),
                        s.target_netns,
                        s.ts_ns,
                    );
                    t.signals.push(signal);
                    self.open.insert(cg, t);
                    actions.push(Action::Snapshot(cg));
                } else if s.watch_opened {
                    // From one of the container's cgroups to another (the kernel watches a
                    // target outside the sender's own cgroup): nothing is stopping.
                    actions.push(Action::Unwatch(target));
                }
                self.drop_members_unless_open(cg);
                self.drop_members_unless_open(sender);
            }
            Event::SignalDelivered(d) => {
                // Every thread of a process reports the same delivery; keep the first.
                let cg = self.key(d.cgroup_id);
                if let Some(t) = self.open.get_mut(&cg)
                    && !t
                        .deliveries
                        .iter()
                        .any(|(_, p, sig, _)| p.pid == d.task.tgid && *sig == d.signal)
                {
                    t.deliveries.push((
                        d.ts_ns,
                        proc_of(d.task.tgid, &d.task.comm),
                        d.signal,
                        d.disposition,
                    ));
                }
            }
            Event::ProcessExit(x) => {
                let cg = self.key(x.cgroup_id);
                if let Some(t) = self.open.get_mut(&cg) {
                    t.exits
                        .push((x.ts_ns, proc_of(x.task.tgid, &x.task.comm), x.exit));
                    // An exit read after the emptiness check still belongs before "empty".
                    if let Some(emptied) = &mut t.emptied_ns {
                        *emptied = (*emptied).max(x.ts_ns);
                    }
                    actions.push(Action::CheckPopulated(cg));
                }
            }
            Event::ProcessExec(x) => {
                let cg = self.key(x.cgroup_id);
                if let Some(t) = self.open.get_mut(&cg) {
                    t.execs.push((
                        x.ts_ns,
                        proc_of(x.task.tgid, &x.task.comm),
                        x.filename.clone(),
                    ));
                }
            }
            Event::TcpState(c) => {
                let cg = self.key(c.cgroup_id);
                let Some(t) = self.open.get_mut(&cg) else {
                    return actions;
                };
                if t.netns == 0 {
                    t.netns = c.netns;
                }
                let (old, new) = (c.old_state, c.new_state);
                if old == TcpState::Listen && new == TcpState::Close {
                    t.listeners_closed.push((c.ts_ns, c.addrs.local));
                    t.learn_listen_addr(c.addrs.local);
                    return actions;
                }
                if new == TcpState::Listen {
                    t.learn_listen_addr(c.addrs.local);
                    return actions;
                }
                if c.conn_id == 0 {
                    return actions; // before the handshake completed
                }
                if c.flags.inbound {
                    t.learn_listen_addr(c.addrs.local);
                }
                let inbound = Some(c.flags.inbound).filter(|_| !c.flags.untracked);
                let conn = t.meet(
                    c.conn_id,
                    c.addrs.local,
                    c.addrs.remote,
                    inbound,
                    c.established_ns,
                );
                if TcpState::is_close(old, new) {
                    conn.on_close(old, c.activity.as_ref());
                }
                let named = c.flags.closed_by_exit && !conn.closed_by_exit && c.flags.in_owner_task;
                conn.closed_by_exit |= c.flags.closed_by_exit;
                conn.reset_sent |= c.flags.reset_sent;
                conn.reset_received |= c.flags.reset_received;
                if new == TcpState::Close {
                    conn.closed_ns = Some(c.ts_ns);
                }
                if named {
                    t.closed_by(c.conn_id, c.task.tgid, &c.task.comm);
                }
            }
            Event::TcpReset(r) => {
                if r.no_socket {
                    // Traffic for a listener that is gone: attribute it to the terminating
                    // container that listened there, in the same network namespace.
                    let ts = r.ts_ns;
                    if let Some(t) = self
                        .open
                        .values_mut()
                        .find(|t| t.refused_here(r.netns, ts, r.addrs.local))
                    {
                        t.refusals.push(Refusal {
                            ts,
                            local: r.addrs.local,
                            remote: r.addrs.remote,
                        });
                    }
                    return actions;
                }
                let cg = self.key(r.cgroup_id);
                let Some(t) = self.open.get_mut(&cg) else {
                    return actions;
                };
                if r.conn_id == 0 {
                    return actions;
                }
                // A reset's event carries no establishment time: the connection's record or
                // state event, if it comes later, fills it in.
                let inbound = Some(r.flags.inbound).filter(|_| !r.flags.untracked);
                let conn = t.meet(r.conn_id, r.addrs.local, r.addrs.remote, inbound, 0);
                let named = r.flags.closed_by_exit && conn.closed_by == 0 && r.flags.in_owner_task;
                conn.closed_by_exit |= r.flags.closed_by_exit;
                match r.direction {
                    ResetDirection::Sent => {
                        conn.reset_sent = true;
                        let index = t.reason_index(r.reason.as_deref());
                        if let Some(conn) = t.conns.get_mut(&r.conn_id) {
                            conn.reset_reason = index;
                        }
                    }
                    ResetDirection::Received => conn.reset_received = true,
                }
                if named {
                    t.closed_by(r.conn_id, r.task.tgid, &r.task.comm);
                }
            }
        }
        actions
    }

    /// Cgroup `cg` has a process or socket in network namespace `netns` at `ts`. A pod's
    /// namespace lives while any of its processes does (and until its sandbox is torn down);
    /// once every container of the pod has exited, a cgroup from outside the pod in the same
    /// inode means the inode was freed and names a new namespace: refusals there from then on
    /// are not the old pod's.
    fn note_netns_use(
        &mut self,
        cg: u64,
        netns: u32,
        ts: u64,
        identity: &mut dyn FnMut(u64) -> Option<Identity>,
    ) {
        if netns == 0 {
            return;
        }
        let ended: Vec<u64> = self
            .open
            .values()
            .filter(|t| {
                t.netns == netns
                    && t.netns_ended_ns.is_none()
                    && t.cgroup_id != cg
                    && self
                        .open
                        .values()
                        .filter(|o| o.is_sibling(t))
                        .all(|o| o.emptied_ns.is_some_and(|e| e <= ts))
            })
            .map(|t| t.cgroup_id)
            .collect();
        if ended.is_empty() {
            return;
        }
        let pod_uid = match self.open.get(&cg) {
            Some(o) => o.pod_uid().map(str::to_string),
            None => identity(cg).and_then(|i| i.pod_uid),
        };
        for id in ended {
            let Some(t) = self.open.get(&id) else {
                continue;
            };
            let same_pod = pod_uid.is_some() && t.pod_uid() == pod_uid.as_deref();
            let sibling = self.open.get(&cg).is_some_and(|o| o.is_sibling(t));
            if !same_pod
                && !sibling
                && let Some(t) = self.open.get_mut(&id)
            {
                tracing::debug!(
                    cgroup = id,
                    netns,
                    "the network namespace's inode names another namespace now"
                );
                t.netns_ended_ns = Some(ts);
            }
        }
    }

    /// Takes what the kernel kept of a connection of a watched cgroup (`KEPT_CONNS`): the
    /// same facts its events carry, merged the same way (a fact seen twice counts once).
    /// `false` when no termination of its cgroup is open (nothing to add it to).
    pub fn on_kept(&mut self, k: &KeptConnection) -> bool {
        let key = self.key(k.cgroup_id);
        if !self.open.contains_key(&key) {
            return false;
        }
        // What a state event would say of the namespace: the container had a socket there
        // at the record's last change.
        let last_ns = k.last_change_ns();
        if last_ns != 0 {
            self.note_netns_use(key, k.netns, last_ns, &mut |_| None);
        }
        let Some(t) = self.open.get_mut(&key) else {
            return false;
        };
        if t.netns == 0 {
            t.netns = k.netns;
        }
        if k.flags.inbound {
            t.learn_listen_addr(k.addrs.local);
        }
        let inbound = Some(k.flags.inbound).filter(|_| !k.flags.untracked);
        let conn = t.meet(
            k.conn_id,
            k.addrs.local,
            k.addrs.remote,
            inbound,
            k.established_ns,
        );
        if let Some(close) = &k.close {
            let old = if close.peer_closed_first {
                TcpState::CloseWait
            } else {
                TcpState::Established
            };
            conn.on_close(old, close.activity.as_ref());
            if k.flags.closed_by_exit
                && conn.closed_by == 0
                && let Some(tgid) = close.closer_tgid
            {
                conn.closed_by = tgid;
            }
        }
        conn.closed_by_exit |= k.flags.closed_by_exit;
        conn.reset_sent |= k.flags.reset_sent;
        conn.reset_received |= k.flags.reset_received;
        if conn.closed_ns.is_none() {
            conn.closed_ns = k.closed_ns;
        }
        if conn.reset_reason == 0 && k.reset_reason.is_some() {
            let index = t.reason_index(k.reset_reason.as_deref());
            if let Some(conn) = t.conns.get_mut(&k.conn_id) {
                conn.reset_reason = index;
            }
        }
        true
    }

    /// The earliest moment (boot ns) a termination in progress is due to be reported, if any
    /// is known: the agent ticks then, not only on its one-second tick.
    pub fn next_due_ns(&self) -> Option<u64> {
        let linger = self.cfg.linger.as_nanos() as u64;
        let survive = self.cfg.survive_after.as_nanos() as u64;
        self.open
            .values()
            .map(|t| match t.emptied_ns {
                Some(emptied) => emptied.saturating_add(linger),
                None => t.last_signal_ns().saturating_add(survive),
            })
            .min()
    }

    /// Opens a termination before any stop signal: the container's pod is being deleted.
    /// PreStop hooks, traffic that still arrives and the time until the stop signal are then
    /// part of it. Nothing happens when one is already open.
    pub fn open_for_deletion(
        &mut self,
        cgroup_id: u64,
        identity: Option<Identity>,
        ts_ns: u64,
    ) -> Vec<Action> {
        if cgroup_id <= ROOT_CGROUP || self.open.contains_key(&cgroup_id) {
            return Vec::new();
        }
        self.open.insert(
            cgroup_id,
            Termination::new(cgroup_id, OpenedBy::PodDeletion, identity, 0, ts_ns),
        );
        vec![Action::Snapshot(cgroup_id)]
    }

    /// Opens a termination for a cgroup the kernel has been watching since `since_ns`
    /// because of a stop signal whose event never reached userspace (its ring buffer was full,
    /// or the agent was not running). Nothing happens when one is already open.
    pub fn open_from_kernel(
        &mut self,
        cgroup_id: u64,
        identity: Option<Identity>,
        since_ns: u64,
    ) -> Vec<Action> {
        if cgroup_id <= ROOT_CGROUP || self.open.contains_key(&cgroup_id) {
            return Vec::new();
        }
        self.open.insert(
            cgroup_id,
            Termination::new(cgroup_id, OpenedBy::KernelWatch, identity, 0, since_ns),
        );
        vec![Action::Snapshot(cgroup_id)]
    }

    /// Kubernetes: the container of termination `cgroup_id` has an httpGet preStop hook on
    /// `port`; kubelet's request to it is not a client's connection.
    pub fn set_http_hook_port(&mut self, cgroup_id: u64, port: u16) {
        if let Some(t) = self.open.get_mut(&cgroup_id) {
            t.http_hook_port = Some(port);
        }
    }

    /// Gives an open termination the identity of its cgroup when it opened without one.
    pub fn set_identity(&mut self, cgroup_id: u64, identity: Identity) {
        if let Some(t) = self.open.get_mut(&cgroup_id)
            && t.identity.is_none()
        {
            t.identity = Some(identity);
        }
    }

    /// The connections the kernel listed as open when the termination of `cgroup_id` began.
    pub fn on_snapshot(&mut self, cgroup_id: u64, conns: &[OpenConnection]) {
        let Some(t) = self.open.get_mut(&cgroup_id) else {
            return;
        };
        for c in conns {
            if c.inbound {
                t.learn_listen_addr(c.local);
            }
            t.meet(
                c.conn_id,
                c.local,
                c.remote,
                Some(c.inbound),
                c.established_ns,
            );
        }
    }

    /// Whether `cgroup_id` still has processes, as of `now_ns` (boot ns).
    pub fn on_population(&mut self, cgroup_id: u64, populated: bool, now_ns: u64) {
        let Some(t) = self.open.get_mut(&cgroup_id) else {
            return;
        };
        if populated {
            t.emptied_ns = None;
        } else if t.emptied_ns.is_none() {
            let last_exit = t.exits.iter().map(|(ts, _, _)| *ts).max();
            t.emptied_ns = Some(last_exit.unwrap_or(now_ns).min(now_ns));
        }
    }

    /// Finishes the terminations that are done as of `now_ns` (boot ns). Returns their reports
    /// and what to ask of the kernel.
    pub fn tick(&mut self, now_ns: u64) -> (Vec<TerminationReport>, Vec<Action>) {
        let linger = self.cfg.linger.as_nanos() as u64;
        let survive = self.cfg.survive_after.as_nanos() as u64;
        let mut finished = Vec::new();
        let mut actions = Vec::new();
        for (cg, t) in &self.open {
            match t.emptied_ns {
                Some(emptied) if now_ns >= emptied.saturating_add(linger) => finished.push(*cg),
                Some(_) => {}
                None if now_ns >= t.last_signal_ns().saturating_add(survive) => finished.push(*cg),
                None => actions.push(Action::CheckPopulated(*cg)),
            }
        }
        // A container of a pod whose other containers still run stays open: the pod's network
        // namespace lives until the last of them has exited, and refusals of late traffic to
        // its ports until then are still its own.
        let done: Vec<u64> = finished
            .iter()
            .copied()
            .filter(|cg| {
                self.open.get(cg).is_some_and(|t| {
                    !self
                        .open
                        .values()
                        .any(|o| o.is_sibling(t) && !finished.contains(&o.cgroup_id))
                })
            })
            .collect();
        let peers = self.loopback_peers();
        let mut reports = Vec::new();
        for cg in done {
            if let Some(t) = self.open.remove(&cg) {
                if t.was_only_a_reload() {
                    tracing::debug!(cgroup = cg, "not a termination: a reload signal");
                } else {
                    reports.push(self.report(&t, now_ns, &peers));
                }
                actions.push(Action::Unwatch(cg));
                self.members.retain(|_, c| *c != cg);
                if t.netns != 0 && !self.open.values().any(|o| o.netns == t.netns) {
                    actions.push(Action::UnwatchNetns(t.netns));
                    self.loopback_reported.remove(&t.netns);
                } else if t.netns != 0 {
                    self.loopback_reported
                        .entry(t.netns)
                        .or_default()
                        .extend(t.loopback_pairs());
                }
            }
        }
        (reports, actions)
    }

    /// The loopback connections of every termination in progress (and of those already
    /// reported whose network namespace another still uses), by network namespace.
    fn loopback_peers(&self) -> HashSet<(u32, SocketAddr, SocketAddr)> {
        let mut peers: HashSet<(u32, SocketAddr, SocketAddr)> = self
            .open
            .values()
            .filter(|t| t.netns != 0)
            .flat_map(|t| {
                t.loopback_pairs()
                    .map(move |(local, remote)| (t.netns, local, remote))
            })
            .collect();
        for (netns, pairs) in &self.loopback_reported {
            peers.extend(pairs.iter().map(|(l, r)| (*netns, *l, *r)));
        }
        peers
    }

    /// Reports every termination in progress now (the agent is stopping).
    pub fn flush(&mut self, now_ns: u64) -> Vec<TerminationReport> {
        let peers = self.loopback_peers();
        let open: Vec<_> = self.open.drain().map(|(_, t)| t).collect();
        self.members.clear();
        self.loopback_reported.clear();
        open.iter()
            .map(|t| self.report(t, now_ns, &peers))
            .collect()
    }

    fn report(
        &self,
        t: &Termination,
        now_ns: u64,
        peers: &HashSet<(u32, SocketAddr, SocketAddr)>,
    ) -> TerminationReport {
        let at = |ns: u64| self.clock.timestamp(ns);
        // Timeline times count from the opening (a stop signal, or a pod's deletion); delays
        // and the shutdown's duration count from the first stop signal from outside.
        let rel = |ns: u64| (ns as f64 - t.opened_ns as f64) / 1e6;
        // Signals from outside to the workload: not those to an exec preStop hook's processes
        // (kubelet's timeout of the hook kills them), which are no trigger and name no main
        // process.
        let hook_pids = t.hook_pids();
        let outside: Vec<&SentSignal> = t
            .signals
            .iter()
            .filter(|s| !s.internal && !hook_pids.contains(&s.target.pid))
            .collect();
        let first = outside.first().copied();
        let stop_ns = first.map_or(t.opened_ns, |s| s.ts);
        let since_stop = |ns: u64| (ns as f64 - stop_ns as f64) / 1e6;
        let main = first.map_or_else(|| proc_of(0, ""), |s| s.target.clone());
        let hook_request = t.http_hook_request(first.map(|s| s.ts));

        // Connections and their verdicts, counted on the side they belong to.
        let mut served = Counts::default();
        let mut outbound = Counts::default();
        let mut internal_counts = Counts::default();
        let mut conns: Vec<_> = t
            .conns
            .values()
            .filter(|c| c.closed_ns.is_none_or(|closed| closed >= t.opened_ns))
            .collect();
        conns.sort_by_key(|c| (c.established_ns, c.local, c.remote));
        let mut late_delays = Vec::new();
        let mut activity_missing = false;
        // Which connections to list: the cut ones first (what the report is for), then the
        // others, completed last, each group in the order above. Only those listed become
        // report entries: a termination may hold hundreds of thousands.
        let rank = |v: Verdict| u8::from(!v.is_cut()) * 2 + u8::from(v == Verdict::Completed);
        // Both ends in the pod (or the container) over loopback: the connection that reaches
        // the outside is counted, this one is not counted again.
        let internal_of = |c: &Conn| {
            if t.netns != 0
                && is_loopback(c.local.ip())
                && is_loopback(c.remote.ip())
                && peers.contains(&(t.netns, c.remote, c.local))
            {
                Some(report::Internal::Loopback)
            } else if hook_request == Some((c.local, c.remote)) {
                Some(report::Internal::PreStopHook)
            } else {
                None
            }
        };
        let mut listed: Vec<(u8, u32)> = Vec::with_capacity(conns.len() + t.refusals.len());
        for (i, c) in conns.iter().enumerate() {
            let verdict = c.verdict();
            let internal = internal_of(c);
            let side = if internal.is_some() {
                &mut internal_counts
            } else if t.serves(c) {
                &mut served
            } else {
                &mut outbound
            };
            side.add(verdict);
            activity_missing |= internal.is_none() && c.activity_missing() && verdict.is_cut();
            if internal.is_none() && c.inbound == Some(true) && c.established_ns > stop_ns {
                served.accepted_late += 1;
                late_delays.push(since_stop(c.established_ns));
            }
            listed.push((rank(verdict), i as u32));
        }
        for i in 0..t.refusals.len() {
            served.add(Verdict::Refused);
            listed.push((rank(Verdict::Refused), (conns.len() + i) as u32));
        }
        let total = listed.len();
        listed.sort_by_key(|(rank, _)| *rank);
        listed.truncate(self.cfg.max_connections);
        let omitted = (total - listed.len()) as u32;
        let connections: Vec<Connection> = listed
            .iter()
            .filter_map(|&(_, i)| {
                let i = i as usize;
                if let Some(c) = conns.get(i) {
                    let internal = internal_of(c);
                    let late =
                        internal.is_none() && c.inbound == Some(true) && c.established_ns > stop_ns;
                    return Some(Connection {
                        local: c.local,
                        remote: c.remote,
                        direction: match c.inbound {
                            Some(true) => Direction::Inbound,
                            Some(false) => Direction::Outbound,
                            None => Direction::Unknown,
                        },
                        verdict: c.verdict(),
                        accepted_late: late,
                        delay_ms: late.then(|| round3(since_stop(c.established_ns))),
                        established_at: (c.established_ns > 0).then(|| at(c.established_ns)),
                        closed_at: c.closed_ns.map(at),
                        reset_reason: t.reason(c.reset_reason),
                        closed_by: t.proc_named(c.closed_by),
                        in_flight: c.in_flight,
                        internal,
                    });
                }
                let r = t.refusals.get(i - conns.len())?;
                Some(Connection {
                    local: r.local,
                    remote: r.remote,
                    direction: Direction::Inbound,
                    verdict: Verdict::Refused,
                    accepted_late: false,
                    delay_ms: Some(round3(since_stop(r.ts))),
                    established_at: None,
                    closed_at: Some(at(r.ts)),
                    reset_reason: Some("no_socket".into()),
                    closed_by: None,
                    in_flight: None,
                    internal: None,
                })
            })
            .collect();

        // Outcome. A hook killed when the grace period ends does not make the container
        // `killed`.
        let died_of_sigkill = |pid: Option<u32>| {
            t.exits.iter().any(|(_, p, e)| {
                !hook_pids.contains(&p.pid)
                    && pid.is_none_or(|pid| p.pid == pid)
                    && matches!(
                        e,
                        ExitStatus::Signaled {
                            signal: Signal::KILL,
                            ..
                        }
                    )
            })
        };
        let outside_kill = outside.iter().find(|s| s.signal == Signal::KILL).copied();
        // A supervisor inside the container that SIGKILLed its child after its own grace
        // period is an escalation too, when that child died of it.
        // Of several (a supervisor that SIGKILLs all its workers at once), the one whose
        // target's death closed connections (those the report may count as cut) is the one
        // to name, when any is.
        let cut_by: HashSet<u32> = t
            .conns
            .values()
            .filter(|c| c.closed_by != 0 && c.closed_by_exit)
            .map(|c| c.closed_by)
            .collect();
        let escalations = || {
            t.signals
                .iter()
                .filter(|s| s.is_inside_escalation() && died_of_sigkill(Some(s.target.pid)))
        };
        let inside_escalation = escalations()
            .find(|s| cut_by.contains(&s.target.pid))
            .or_else(|| escalations().next());
        let killed =
            (outside_kill.is_some() && died_of_sigkill(None)) || inside_escalation.is_some();
        let stop_sigs: Vec<Signal> = outside
            .iter()
            .map(|s| s.signal)
            .filter(|&s| s != Signal::KILL)
            .collect();
        // The process that died of a stop signal's default action: the one to name (a
        // worker, not the master or init that forwarded the signal to it). One that had run
        // its own handler for that signal at least `SHUTDOWN_BEFORE_RERAISE_NS` before dying
        // of it did a shutdown and then re-raised the signal to end with it (Ruby, e.g.
        // Puma's master after its workers drained): it had a handler. A handler that re-raises
        // at once only cleaned up (Node.js resets the terminal): the default action, in effect.
        let handled_first = |pid: u32, signal: Signal, died: u64| {
            t.deliveries.iter().any(|(ts, p, sig, d)| {
                p.pid == pid
                    && *sig == signal
                    && *d == Disposition::Handler
                    && died.saturating_sub(*ts) >= SHUTDOWN_BEFORE_RERAISE_NS
            })
        };
        let no_handler_exit = t.exits.iter().find(|(ts, p, e)| {
            !hook_pids.contains(&p.pid)
                && matches!(e, ExitStatus::Signaled { signal, .. }
                    if stop_sigs.contains(signal) && !handled_first(p.pid, *signal, *ts))
        });
        let ignored = outside
            .iter()
            .any(|s| s.signal != Signal::KILL && s.result == SignalResult::Ignored)
            || t.deliveries
                .iter()
                .any(|(_, _, _, d)| *d == Disposition::Ignored);
        let facts = outcome::Facts {
            survived: t.emptied_ns.is_none(),
            killed,
            no_handler: no_handler_exit.is_some(),
            ignored,
            served,
            outbound,
            activity_missing,
        };
        let outcome = facts.outcome();
        let flags = facts.flags();

        let end_ns = t.emptied_ns.unwrap_or(now_ns);
        let shutdown_ms = since_stop(end_ns).max(0.0);

        let (timeline, timeline_left_out) = self.timeline(t, &conns, stop_ns, &hook_pids, rel);

        // The stop signal the advice is about: the first from outside other than SIGKILL.
        let stop = outside.iter().find(|s| s.signal != Signal::KILL).copied();
        // The process the advice names: the stop signal's target, or the app it passed the
        // signal on to (an init that forwards signals, a wrapper that traps and forwards).
        let app = stop.map_or_else(|| main.clone(), |s| forwarded_to(&t.signals, s));
        let took = |p: &Proc, s: &SentSignal| p.pid == s.target.pid || p.pid == app.pid;
        let signal_ignored = stop.is_some_and(|s| {
            s.result == SignalResult::Ignored
                || t.deliveries.iter().any(|(_, p, sig, d)| {
                    took(p, s) && *sig == s.signal && *d == Disposition::Ignored
                })
        });
        let signal_handled = stop.is_some_and(|s| {
            t.deliveries
                .iter()
                .any(|(_, p, sig, d)| took(p, s) && *sig == s.signal && *d == Disposition::Handler)
        });
        let kill = match (outside_kill, inside_escalation) {
            (Some(k), _) => advice::KillSource::Outside {
                sender: k.sender.comm.clone(),
                after_ms: stop
                    .filter(|f| f.ts <= k.ts)
                    .map(|f| (k.ts - f.ts) as f64 / 1e6),
            },
            (None, Some(k)) => {
                let earlier = k.grace_from(&t.signals);
                advice::KillSource::Inside {
                    sender: k.sender.clone(),
                    target: k.target.clone(),
                    after: earlier.map(|e| ((k.ts - e.ts) as f64 / 1e6, e.signal)),
                    handled: earlier.is_some_and(|e| {
                        t.deliveries.iter().any(|(_, p, sig, d)| {
                            p.pid == k.target.pid && *sig == e.signal && *d == Disposition::Handler
                        })
                    }),
                }
            }
            (None, None) => advice::KillSource::Unknown,
        };
        let no_handler = no_handler_exit.and_then(|(_, p, e)| match e {
            ExitStatus::Signaled { signal, .. } => Some((p, *signal)),
            _ => None,
        });
        let summary = advice::summarize(&advice::Input {
            outcome,
            main: &app,
            signal: stop.or(first).map(|s| s.signal),
            signal_ignored,
            signal_handled,
            no_handler,
            kill,
            served: &served,
            outbound: &outbound,
            shutdown_ms,
            latest_late_ms: late_delays.iter().copied().reduce(f64::max),
            latest_refusal_ms: t.refusals.iter().map(|r| since_stop(r.ts)).reduce(f64::max),
            activity_missing,
        });

        TerminationReport {
            schema: SCHEMA.to_string(),
            id: format!("{:x}-{:x}", t.cgroup_id, t.opened_ns),
            opened_by: t.opened_by.clone(),
            stop_signal_at: first.map(|s| at(s.ts)),
            kubernetes: None,
            node: self.cfg.node.clone(),
            subject: subject(t, main),
            outcome,
            flags,
            summary,
            started_at: at(t.opened_ns),
            ended_at: at(end_ns),
            shutdown_ms: round3(shutdown_ms),
            stop_signals: t
                .signals
                .iter()
                .map(|s| StopSignal {
                    at: at(s.ts),
                    t_ms: round3(rel(s.ts)),
                    signal: s.signal,
                    sender: s.sender.clone(),
                    sender_cgroup: s.sender_cgroup.clone(),
                    target: s.target.clone(),
                    result: s.result.clone(),
                    internal: s.internal,
                    pre_stop_hook: !s.internal && hook_pids.contains(&s.target.pid),
                })
                .collect(),
            timeline,
            counts: served,
            outbound_counts: outbound,
            internal_counts,
            connections,
            connections_omitted: omitted,
            incomplete: None,
            kernel_runs_skipped: 0,
            timeline_left_out,
            exits: t
                .exits
                .iter()
                .map(|(ts, p, e)| Exit {
                    at: at(*ts),
                    pid: p.pid,
                    comm: p.comm.clone(),
                    how: ExitHow::of(e),
                    code: match e {
                        ExitStatus::Exited { code } => Some(*code),
                        _ => None,
                    },
                    signal: match e {
                        ExitStatus::Signaled { signal, .. } => Some(*signal),
                        _ => None,
                    },
                })
                .collect(),
        }
    }

    /// The timeline: every step in time order — at most `--max-connections-per-report` + 64
    /// of them, the first and the last (as `outputs::bound` cuts a report), with what was left
    /// out in words. Steps are ordered and cut before any is written out: a termination of
    /// many connections never builds its whole timeline.
    fn timeline(
        &self,
        t: &Termination,
        conns: &[&Conn],
        stop_ns: u64,
        hook_pids: &[u32],
        rel: impl Fn(u64) -> f64,
    ) -> (Vec<Step>, Option<String>) {
        let at = |ns: u64| self.clock.timestamp(ns);
        let mut steps: Vec<(u64, StepKind, StepOf)> = Vec::new();
        for (i, s) in t.signals.iter().enumerate() {
            let what = if !s.internal && hook_pids.contains(&s.target.pid) {
                StepKind::PreStopHookSignal
            } else if s.signal == Signal::KILL && (!s.internal || s.is_inside_escalation()) {
                StepKind::Sigkill
            } else {
                StepKind::StopSignal
            };
            steps.push((s.ts, what, StepOf::Signal(i)));
        }
        for (i, (ts, _, _, disp)) in t.deliveries.iter().enumerate() {
            let what = match disp {
                Disposition::Handler => StepKind::Handler,
                Disposition::Default => StepKind::DefaultAction,
                Disposition::Ignored => StepKind::Ignored,
            };
            steps.push((*ts, what, StepOf::Delivery(i)));
        }
        for (i, (ts, _)) in t.listeners_closed.iter().enumerate() {
            steps.push((*ts, StepKind::ListenerClosed, StepOf::Listener(i)));
        }
        for (i, c) in conns.iter().enumerate() {
            if c.inbound == Some(true) && c.established_ns > stop_ns {
                steps.push((c.established_ns, StepKind::AcceptedLate, StepOf::Late(i)));
            }
            if c.verdict().is_cut()
                && let Some(closed) = c.closed_ns
            {
                steps.push((closed, StepKind::ConnectionCut, StepOf::Cut(i)));
            }
        }
        if let Some(last) = conns.iter().filter_map(|c| c.closed_ns).max() {
            steps.push((last, StepKind::LastConnectionClosed, StepOf::Last));
        }
        for (i, r) in t.refusals.iter().enumerate() {
            steps.push((r.ts, StepKind::Refused, StepOf::Refusal(i)));
        }
        for (i, (ts, _, _)) in t.exits.iter().enumerate() {
            steps.push((*ts, StepKind::Exit, StepOf::Exit(i)));
        }
        for (i, (ts, _, _)) in t.execs.iter().enumerate() {
            steps.push((*ts, StepKind::Exec, StepOf::Exec(i)));
        }
        if let Some(emptied) = t.emptied_ns {
            steps.push((emptied, StepKind::Empty, StepOf::Empty));
        }
        steps.sort_by_key(|(ts, what, _)| (*ts, *what == StepKind::Empty));
        let keep = self.cfg.max_connections.max(bound::MIN_KEPT) + bound::TIMELINE_EXTRA;
        let cut = bound::cut_steps(&mut steps, keep, |s| s.1.as_str());
        let detail = |of: &StepOf| -> String {
            match *of {
                StepOf::Signal(i) => {
                    let s = &t.signals[i];
                    format!(
                        "{} from {} (pid {}){} to {} (pid {}): {}",
                        s.signal,
                        s.sender.comm,
                        s.sender.pid,
                        if s.internal {
                            ", inside the container"
                        } else {
                            ""
                        },
                        s.target.comm,
                        s.target.pid,
                        s.result
                    )
                }
                StepOf::Delivery(i) => {
                    let (_, p, sig, disp) = &t.deliveries[i];
                    let detail = report::delivery_words(*disp, *sig);
                    format!("{} (pid {}): {detail}", p.comm, p.pid)
                }
                StepOf::Listener(i) => {
                    format!("stopped listening on {}", t.listeners_closed[i].1)
                }
                StepOf::Late(i) => {
                    let c = conns[i];
                    format!("accepted {} -> {} after the stop signal", c.remote, c.local)
                }
                StepOf::Cut(i) => {
                    let c = conns[i];
                    format!("{} <-> {}: {}", c.local, c.remote, c.verdict().as_str())
                }
                StepOf::Last | StepOf::Empty => match of {
                    StepOf::Empty => "no process left".into(),
                    _ => String::new(),
                },
                StepOf::Refusal(i) => {
                    let r = &t.refusals[i];
                    format!(
                        "{} -> {} refused: nothing listened any more",
                        r.remote, r.local
                    )
                }
                StepOf::Exit(i) => {
                    let (_, p, e) = &t.exits[i];
                    format!("{} (pid {}) {}", p.comm, p.pid, exit_str(e))
                }
                StepOf::Exec(i) => {
                    let (_, p, filename) = &t.execs[i];
                    format!("{} (pid {}) started {filename}", p.comm, p.pid)
                }
            }
        };
        let mut out: Vec<Step> = steps
            .iter()
            .map(|(ts, what, of)| Step {
                t_ms: round3(rel(*ts)),
                at: at(*ts),
                what: what.clone(),
                detail: detail(of),
            })
            .collect();
        let said = cut.map(|cut| {
            let ts = cut.first.0;
            out.insert(
                cut.at,
                Step {
                    t_ms: round3(rel(ts)),
                    at: at(ts),
                    what: StepKind::Omitted,
                    detail: cut.detail,
                },
            );
            cut.said
        });
        (out, said)
    }
}

/// A forwarder passes the stop signal on within this long.
const FORWARD_WITHIN_NS: u64 = 2_000_000_000;

/// The process a stop signal ends up at: its target, or, when the target passed the same
/// signal on to another program of the container right away (an init such as tini or
/// dumb-init, a shell wrapper that traps and forwards, a supervisor), the process it passed
/// it to, hop by hop. A program signalling its own kind (a master and its workers: the same
/// `comm`) is the program itself, and stays named.
fn forwarded_to(all: &[SentSignal], stop: &SentSignal) -> Proc {
    let mut at = stop.target.clone();
    let mut ts = stop.ts;
    for _ in 0..4 {
        let next = all.iter().find(|s| {
            s.internal
                && s.signal == stop.signal
                && s.sender.pid == at.pid
                && s.target.pid != at.pid
                && s.target.comm != at.comm
                && s.ts >= ts
                && s.ts <= ts.saturating_add(FORWARD_WITHIN_NS)
        });
        match next {
            Some(n) => {
                at = n.target.clone();
                ts = n.ts;
            }
            None => break,
        }
    }
    at
}

/// What a timeline step is about (an index into the termination's lists), for steps that are
/// ordered and cut before they are written out.
#[derive(Debug, Clone, Copy)]
enum StepOf {
    Signal(usize),
    Delivery(usize),
    Listener(usize),
    Late(usize),
    Cut(usize),
    Last,
    Refusal(usize),
    Exit(usize),
    Exec(usize),
    Empty,
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn proc_of(pid: u32, comm: &str) -> Proc {
    Proc {
        pid,
        comm: comm.to_string(),
    }
}

fn exit_str(e: &ExitStatus) -> String {
    match e {
        ExitStatus::Exited { code } => format!("exited with code {code}"),
        ExitStatus::Signaled {
            signal,
            core_dumped,
        } => format!(
            "killed by {}{}",
            signal,
            if *core_dumped { " (core dumped)" } else { "" }
        ),
        ExitStatus::Unknown => "exited".into(),
    }
}

/// Metric labels and names for the subject.
fn subject(t: &Termination, main: Proc) -> Subject {
    let (cgroup_path, label, runtime, container_id, pod_uid, unit) = match &t.identity {
        Some(i) => (
            i.cgroup_path.clone(),
            i.label(),
            serde_json::to_value(i.runtime)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            i.container_id.clone(),
            i.pod_uid.clone(),
            i.unit.clone(),
        ),
        None => (
            String::new(),
            format!("cgroup {}", t.cgroup_id),
            "unknown".into(),
            None,
            None,
            None,
        ),
    };
    // Standalone, the workload is the service (unit), the pod, or the runtime; the container
    // label is the short container id. The Kubernetes integration refines these.
    let workload = unit
        .clone()
        .or_else(|| pod_uid.as_ref().map(|p| format!("pod-{p}")))
        .or_else(|| container_id.as_ref().map(|_| runtime.clone()))
        .unwrap_or_else(|| cgroup_path.clone());
    let container = container_id
        .as_deref()
        .map(|id| id.chars().take(12).collect())
        .unwrap_or_default();
    Subject {
        cgroup_id: t.cgroup_id,
        cgroup_path,
        label,
        runtime,
        container_id,
        pod_uid,
        unit,
        namespace: String::new(),
        workload,
        container,
        workload_kind: None,
        pod: None,
        main,
    }
}

#[cfg(test)]
pub(crate) mod test_events;
#[cfg(test)]
mod tests;
