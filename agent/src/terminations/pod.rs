//! The pod roll-up: a pod's container terminations, each joined with its pod
//! ([`super::kube::enrich`]), rolled up into one pod report with the pod's own facts as last
//! seen; and [`PodRollUps`], which pods are being deleted, which container reports wait for
//! their pod, and when a pod is done. Pure: times, the pod's view and which containers are
//! still terminating are passed in.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::{
    kube::{ns_rfc3339, round3},
    report::{Counts, Flag, KubeFacts, LateTraffic, Outcome, Step, StepKind, TerminationReport},
};
use crate::{
    clock::{parse_rfc3339, unix_ns},
    kube::{UnixNanos, state::PodView},
};

/// Version of the pod report schema.
pub const POD_SCHEMA: &str = "termscope/pod-termination/v3";

/// What every version of the pod report schema starts with: a log holds the reports of older
/// agents too (v2 before `closed_unanswered`), and they are still pod reports.
pub const POD_SCHEMA_FAMILY: &str = "termscope/pod-termination/";

/// Severity of an outcome, for rolling containers up into a pod.
fn severity(o: Outcome) -> u8 {
    match o {
        Outcome::Graceful => 0,
        Outcome::Cut => 1,
        Outcome::Survived => 2,
        Outcome::Ignored => 3,
        Outcome::NoHandler => 4,
        Outcome::Killed => 5,
    }
}

/// One pod's termination: its containers' terminations rolled up, with the pod's facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodTerminationReport {
    pub schema: String,
    pub id: String,
    pub node: String,
    pub pod: String,
    pub pod_uid: String,
    pub namespace: String,
    pub workload: String,
    pub workload_kind: String,
    /// The most severe of the containers' outcomes.
    pub outcome: Outcome,
    pub flags: Vec<Flag>,
    pub summary: Vec<String>,
    /// The connections the pod's containers served.
    pub counts: Counts,
    /// Their own outbound connections.
    #[serde(default)]
    pub outbound_counts: Counts,
    /// Connections listed but not counted above (between its containers over loopback,
    /// kubelet's httpGet preStop request).
    #[serde(default)]
    pub internal_counts: Counts,
    /// The pod's Kubernetes facts (container-independent ones).
    pub kubernetes: KubeFacts,
    /// Deletion requested -> observed -> endpoints -> stop signals -> exits, per container.
    pub timeline: Vec<Step>,
    pub containers: Vec<TerminationReport>,
}

impl PodTerminationReport {
    /// Whether the pod report carries `flag` (any of its containers' flags).
    pub fn has_flag(&self, flag: Flag) -> bool {
        self.flags.contains(&flag)
    }
}

/// Rolls a pod's container reports (already [`enrich`]ed) into one pod report.
pub fn roll_up(
    node: &str,
    view: &PodView<'_>,
    containers: Vec<TerminationReport>,
) -> PodTerminationReport {
    let pod = view.info;
    let outcome = containers
        .iter()
        .map(|c| c.outcome)
        .max_by_key(|o| severity(*o))
        .unwrap_or(Outcome::Graceful);
    let mut flags: Vec<Flag> = Vec::new();
    let mut summary = Vec::new();
    let mut counts = Counts::default();
    let mut outbound_counts = Counts::default();
    let mut internal_counts = Counts::default();
    for c in &containers {
        for f in &c.flags {
            super::flag::add(&mut flags, f.clone());
        }
        let name = c.subject.container.as_str();
        for s in &c.summary {
            summary.push(if name.is_empty() {
                s.clone()
            } else {
                format!("[{name}] {s}")
            });
        }
        counts.merge(&c.counts);
        outbound_counts.merge(&c.outbound_counts);
        internal_counts.merge(&c.internal_counts);
    }
    let grace_used_ratio = containers
        .iter()
        .filter_map(|c| c.kubernetes.as_deref().and_then(|k| k.grace_used_ratio))
        .reduce(f64::max);
    let mut kubernetes = containers
        .iter()
        .find_map(|c| c.kubernetes.as_deref().cloned())
        .unwrap_or_else(|| KubeFacts {
            pod: pod.name.clone(),
            pod_uid: pod.uid.clone(),
            namespace: pod.namespace.clone(),
            workload: pod.workload.clone(),
            workload_kind: pod.workload_kind.as_str().to_string(),
            container: None,
            grace_period_seconds: pod.termination_grace_period_seconds,
            deletion_requested_at: None,
            deletion_observed_at: view.deletion_observed_at.map(|t| ns_rfc3339(t.0)),
            deadline: pod.deletion.map(|d| ns_rfc3339(d.deadline.0)),
            endpoints_not_ready_at: None,
            endpoints_terminating_at: None,
            endpoints_removed_at: None,
            pre_stop: None,
            deletion_to_stop_signal_ms: None,
            grace_used_ratio: None,
            late_after_stop_signal: LateTraffic::default(),
            late_after_endpoints: None,
        });
    kubernetes.container = None;
    kubernetes.pre_stop = None;
    // The pod's own facts as last seen (after a watch resumed or re-listed), not as the first
    // container's report had them; its grace used is the largest of its containers'.
    kubernetes.pod = pod.name.clone();
    kubernetes.namespace = pod.namespace.clone();
    kubernetes.workload = pod.workload.clone();
    kubernetes.workload_kind = pod.workload_kind.as_str().to_string();
    kubernetes.grace_period_seconds = pod
        .deletion
        .and_then(|d| d.grace_period_seconds)
        .unwrap_or(pod.termination_grace_period_seconds);
    if let Some(d) = pod.deletion {
        kubernetes.deadline = Some(ns_rfc3339(d.deadline.0));
    }
    if let Some(t) = view.deletion_observed_at {
        kubernetes.deletion_observed_at = Some(ns_rfc3339(t.0));
    }
    kubernetes.grace_used_ratio = grace_used_ratio;

    // The pod's timeline: Kubernetes steps, then every container's, by time.
    let mut steps: Vec<(u64, Step)> = Vec::new();
    let origin = kubernetes
        .deletion_requested_at
        .as_deref()
        .or(kubernetes.deletion_observed_at.as_deref())
        .and_then(parse_rfc3339)
        .or_else(|| containers.iter().map(|c| unix_ns(c.started_at)).min())
        .unwrap_or(0);
    let k8s_step = |at: &Option<String>, what: StepKind, detail: String| {
        at.as_deref().and_then(parse_rfc3339).map(|ns| {
            (
                ns,
                Step {
                    t_ms: round3((ns as f64 - origin as f64) / 1e6),
                    at: crate::clock::timestamp(ns),
                    what,
                    detail,
                },
            )
        })
    };
    steps.extend(k8s_step(
        &kubernetes.deletion_requested_at,
        StepKind::DeletionRequested,
        format!("grace period {} s", kubernetes.grace_period_seconds),
    ));
    steps.extend(k8s_step(
        &kubernetes.deletion_observed_at,
        StepKind::DeletionObserved,
        "this agent saw the deletion".into(),
    ));
    steps.extend(k8s_step(
        &kubernetes.endpoints_not_ready_at,
        StepKind::EndpointsNotReady,
        "the pod's endpoints turned not ready".into(),
    ));
    steps.extend(k8s_step(
        &kubernetes.endpoints_terminating_at,
        StepKind::EndpointsTerminating,
        "the pod's endpoints turned terminating".into(),
    ));
    steps.extend(k8s_step(
        &kubernetes.endpoints_removed_at,
        StepKind::EndpointsRemoved,
        "the pod left its endpoint slices".into(),
    ));
    for c in &containers {
        let name = c.subject.container.clone();
        for s in &c.timeline {
            let ns = unix_ns(s.at);
            steps.push((
                ns,
                Step {
                    t_ms: round3((ns as f64 - origin as f64) / 1e6),
                    at: s.at,
                    what: s.what.clone(),
                    detail: if name.is_empty() {
                        s.detail.clone()
                    } else {
                        format!("[{name}] {}", s.detail)
                    },
                },
            ));
        }
    }
    // The deadline only matters when the pod lived up to it.
    let last = steps.iter().map(|(ns, _)| *ns).max().unwrap_or(0);
    if let Some(step) = k8s_step(
        &kubernetes.deadline,
        StepKind::Deadline,
        "the grace period ended".into(),
    ) && step.0 <= last
    {
        steps.push(step);
    }
    steps.sort_by_key(|(ns, _)| *ns);

    PodTerminationReport {
        schema: POD_SCHEMA.into(),
        id: format!("{}-{:x}", pod.uid, origin),
        node: node.into(),
        pod: pod.name.clone(),
        pod_uid: pod.uid.clone(),
        namespace: pod.namespace.clone(),
        workload: pod.workload.clone(),
        workload_kind: pod.workload_kind.as_str().to_string(),
        outcome,
        flags,
        summary,
        counts,
        outbound_counts,
        internal_counts,
        kubernetes,
        timeline: steps.into_iter().map(|(_, s)| s).collect(),
        containers,
    }
}

/// The p99 of a workload's recent drain times (shutdown durations), in ms.
pub fn p99(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let idx = ((v.len() as f64) * 0.99).ceil() as usize;
    v.get(idx.saturating_sub(1).min(v.len() - 1)).copied()
}

/// Drain times kept per workload for the p99 in the advice.
pub const DRAIN_HISTORY: usize = 100;
/// A pod's roll-up waits at most this long after its deletion deadline for container reports.
pub const ROLLUP_GRACE_NS: u64 = 60_000_000_000;

/// What the roll-up needs to know of a pod now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodNow {
    /// The Pod object is gone from the API.
    pub deleted: bool,
    /// A termination of one of its containers is still in progress.
    pub terminating: bool,
    /// `deletionTimestamp`, when it is being deleted.
    pub deadline: Option<UnixNanos>,
}

/// The pods being deleted on this node and their container reports waiting for the roll-up.
#[derive(Debug, Default)]
pub struct PodRollUps {
    /// Pods whose deletion has been acted on (their containers' terminations opened).
    deleting: HashSet<String>,
    /// Container reports per pod uid, waiting for the pod's roll-up.
    pending: HashMap<String, Vec<TerminationReport>>,
    /// Recent drain times (ms) per `namespace/workload`.
    drains: HashMap<String, VecDeque<f64>>,
    /// Pods already rolled up: a late container report does not make a second pod report.
    rolled_up: HashSet<String>,
}

impl PodRollUps {
    /// A pod's deletion is seen: `true` the first time (open its containers' terminations).
    pub fn begin(&mut self, uid: &str) -> bool {
        if self.deleting.contains(uid) || self.rolled_up.contains(uid) {
            return false;
        }
        self.deleting.insert(uid.to_string());
        self.pending.entry(uid.to_string()).or_default();
        true
    }

    /// The workload's (`namespace/workload`) p99 drain time, for the advice.
    pub fn p99_drain(&self, workload: &str) -> Option<f64> {
        self.drains
            .get(workload)
            .and_then(|h| p99(&h.iter().copied().collect::<Vec<_>>()))
    }

    /// Files a container report (already enriched) for its pod's roll-up; a shutdown that
    /// ended joins its workload's drain times.
    pub fn file(&mut self, uid: &str, workload: &str, report: &TerminationReport) {
        if !report.has_flag(Flag::Survived) {
            let history = self.drains.entry(workload.to_string()).or_default();
            if history.len() == DRAIN_HISTORY {
                history.pop_front();
            }
            history.push_back(report.shutdown_ms);
        }
        if !self.rolled_up.contains(uid) {
            self.pending
                .entry(uid.to_string())
                .or_default()
                .push(report.clone());
        }
    }

    /// The pods done as of `now`, with their container reports: deleted with no container
    /// still terminating, or long past their deadline, or forgotten by the API cache (`pod`
    /// answers `None`). A pod with no container report rolls up to nothing.
    pub fn due(
        &mut self,
        now: UnixNanos,
        pod: impl Fn(&str) -> Option<PodNow>,
    ) -> Vec<(String, Vec<TerminationReport>)> {
        let done: Vec<String> = self
            .pending
            .iter()
            .filter(|(uid, reports)| match pod(uid) {
                None => true,
                Some(p) => {
                    let overdue = p
                        .deadline
                        .is_some_and(|d| now.0 > d.0.saturating_add(ROLLUP_GRACE_NS));
                    (!reports.is_empty() || p.deleted) && ((p.deleted && !p.terminating) || overdue)
                }
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        let mut out = Vec::new();
        for uid in done {
            let reports = self.pending.remove(&uid).unwrap_or_default();
            self.deleting.remove(&uid);
            self.rolled_up.insert(uid.clone());
            if !reports.is_empty() {
                out.push((uid, reports));
            }
        }
        out
    }

    /// Forgets the rolled-up pods the API cache no longer knows.
    pub fn forget(&mut self, known: impl Fn(&str) -> bool) {
        self.rolled_up.retain(|uid| known(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::terminations::{Engine, EngineConfig};

    fn report(shutdown_ms: f64, survived: bool) -> TerminationReport {
        let mut e = Engine::new(
            EngineConfig::default(),
            crate::clock::WallClock::with_offset(0),
        );
        e.open_for_deletion(42, None, 1_000);
        let mut r = e.flush(2_000).remove(0);
        r.shutdown_ms = shutdown_ms;
        r.flags.retain(|f| *f != Flag::Survived);
        if survived {
            r.flags.push(Flag::Survived);
        }
        r
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_pod_rolls_up_once_when_deleted_and_no_container_is_terminating() {
        let mut p = PodRollUps::default();
        assert!(p.begin("u1"));
        assert!(!p.begin("u1"), "a deletion seen again opens nothing");
        p.file("u1", "ns/web", &report(1_200.0, false));
        let now = UnixNanos(100 * S);
        let state = |deleted, terminating| {
            move |_: &str| {
                Some(PodNow {
                    deleted,
                    terminating,
                    deadline: Some(UnixNanos(90 * S)),
                })
            }
        };
        assert!(
            p.due(now, state(false, false)).is_empty(),
            "not deleted yet"
        );
        assert!(
            p.due(now, state(true, true)).is_empty(),
            "a sidecar still runs"
        );
        let done = p.due(now, state(true, false));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].1.len(), 1);
        // A late container report of a pod already rolled up makes no second pod report.
        p.file("u1", "ns/web", &report(10.0, false));
        assert!(p.due(now, state(true, false)).is_empty());
        assert!(!p.begin("u1"));
        p.forget(|_| false);
        assert!(p.begin("u1"));
    }

    #[test]
    fn a_pod_long_past_its_deadline_rolls_up_with_what_it_has() {
        let mut p = PodRollUps::default();
        p.begin("u2");
        p.file("u2", "ns/web", &report(1_200.0, false));
        let pod = |_: &str| {
            Some(PodNow {
                deleted: false,
                terminating: true,
                deadline: Some(UnixNanos(10 * S)),
            })
        };
        assert!(p.due(UnixNanos(60 * S), pod).is_empty());
        assert_eq!(p.due(UnixNanos(71 * S), pod).len(), 1);
    }

    #[test]
    fn drain_times_of_ended_shutdowns_make_the_p99() {
        let mut p = PodRollUps::default();
        p.begin("u3");
        assert_eq!(p.p99_drain("ns/web"), None);
        for ms in [100.0, 300.0, 200.0] {
            p.file("u3", "ns/web", &report(ms, false));
        }
        p.file("u3", "ns/web", &report(120_000.0, true));
        assert_eq!(p.p99_drain("ns/web"), Some(300.0));
        for _ in 0..DRAIN_HISTORY {
            p.file("u3", "ns/web", &report(50.0, false));
        }
        assert_eq!(p.p99_drain("ns/web"), Some(50.0), "only the last 100 count");
    }
}
