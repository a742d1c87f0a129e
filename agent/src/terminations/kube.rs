//! The Kubernetes side of a termination, joined with what the kernel saw: the pod's deletion,
//! grace period, preStop hook and endpoints, the late traffic measured against them, advice,
//! and the roll-up of a pod's container terminations into one pod report. Pure: times and
//! states are passed in.

use serde::{Deserialize, Serialize};

use super::report::{Connection, Counts, Direction, Outcome, Step, TerminationReport, Verdict};
use crate::{
    clock::parse_rfc3339,
    kube::{
        pod::{ContainerInfo, PreStop},
        state::PodView,
    },
};

/// Version of the pod report schema.
pub const POD_SCHEMA: &str = "termscope/pod-termination/v2";

/// Inbound traffic that still arrived, measured from one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LateTraffic {
    /// New connections accepted after the moment.
    pub accepted: u32,
    /// Connection attempts refused after the moment (the listener was gone).
    pub refused: u32,
    /// The latest of them, in ms after the moment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_delay_ms: Option<f64>,
}

/// A container's preStop hook as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreStopHook {
    /// `exec`, `http_get`, `sleep`, `tcp_socket`.
    pub kind: String,
    /// The command, URL path or seconds.
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sleep_seconds: Option<i64>,
}

impl PreStopHook {
    fn from(p: &PreStop) -> Self {
        match p {
            PreStop::Exec { command } => PreStopHook {
                kind: "exec".into(),
                detail: command.join(" "),
                sleep_seconds: None,
            },
            PreStop::HttpGet { path, port, .. } => PreStopHook {
                kind: "http_get".into(),
                detail: format!(":{port}{}", path.as_deref().unwrap_or("/")),
                sleep_seconds: None,
            },
            PreStop::Sleep { seconds } => PreStopHook {
                kind: "sleep".into(),
                detail: format!("{seconds} s"),
                sleep_seconds: Some(*seconds),
            },
            PreStop::TcpSocket { port } => PreStopHook {
                kind: "tcp_socket".into(),
                detail: format!(":{port}"),
                sleep_seconds: None,
            },
        }
    }
}

/// What Kubernetes says about a termination, and what was measured against it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KubeFacts {
    pub pod: String,
    pub pod_uid: String,
    pub namespace: String,
    pub workload: String,
    pub workload_kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The grace period the deletion used (`deletionGracePeriodSeconds`, else the spec's).
    pub grace_period_seconds: i64,
    /// When the deletion reached the API server (`deletionTimestamp - deletionGracePeriodSeconds`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_requested_at: Option<String>,
    /// When this agent saw the deletion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_observed_at: Option<String>,
    /// `deletionTimestamp`: the deadline after which the pod is killed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// When the pod's endpoints were first seen not ready, terminating, and gone (as
    /// observed by this agent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints_not_ready_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints_terminating_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints_removed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_stop: Option<PreStopHook>,
    /// From the deletion (as observed by this agent, else as requested) to the first stop
    /// signal: kubelet runs the preStop hook in between.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_to_stop_signal_ms: Option<f64>,
    /// Shutdown duration (first stop signal to last exit) over the grace period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_used_ratio: Option<f64>,
    /// Traffic after the first stop signal.
    pub late_after_stop_signal: LateTraffic,
    /// Traffic after the endpoints turned not ready / terminating.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late_after_endpoints: Option<LateTraffic>,
}

fn ns_rfc3339(ns: u64) -> String {
    crate::clock::rfc3339(ns)
}

/// Inbound connections accepted and refusals after `since_ns` (Unix ns).
fn late_since(connections: &[Connection], since_ns: u64) -> LateTraffic {
    let mut late = LateTraffic::default();
    let mut note = |at: Option<&String>, refused: bool| {
        let Some(ns) = at.and_then(|a| parse_rfc3339(a)) else {
            return;
        };
        if ns <= since_ns {
            return;
        }
        if refused {
            late.refused += 1;
        } else {
            late.accepted += 1;
        }
        let delay = (ns - since_ns) as f64 / 1e6;
        late.max_delay_ms = Some(late.max_delay_ms.map_or(delay, |m: f64| m.max(delay)));
    };
    for c in connections {
        match c.verdict {
            Verdict::Refused => note(c.closed_at.as_ref(), true),
            // Every inbound connection established after the moment, whether before or after
            // the stop signal (during a preStop sleep, traffic after the endpoints turned is
            // accepted before the stop signal).
            _ if c.direction == Direction::Inbound => note(c.established_at.as_ref(), false),
            _ => {}
        }
    }
    late
}

/// Joins a container's report with its pod: metric labels, Kubernetes facts, advice.
/// `p99_drain_ms` is the workload's recent drain time, when known, for the advice on a grace
/// period that ran out.
pub fn enrich(
    report: &mut TerminationReport,
    view: &PodView<'_>,
    container: Option<&ContainerInfo>,
    p99_drain_ms: Option<f64>,
) {
    let pod = view.info;
    report.subject.namespace = pod.namespace.clone();
    report.subject.workload = pod.workload.clone();
    report.subject.workload_kind = Some(pod.workload_kind.as_str().to_string());
    report.subject.pod = Some(pod.name.clone());
    report.subject.container = container.map(|c| c.name.clone()).unwrap_or_default();
    report.subject.pod_uid = Some(pod.uid.clone());

    let grace = pod
        .deletion
        .and_then(|d| d.grace_period_seconds)
        .unwrap_or(pod.termination_grace_period_seconds);
    let requested = pod.deletion.and_then(|d| d.requested_at).map(|t| t.0);
    let observed = view.deletion_observed_at.map(|t| t.0);
    let stop_ns = report.stop_signal_at.as_deref().and_then(parse_rfc3339);
    // The deletion as this agent observed it: `deletionTimestamp` (and so the request time
    // derived from it) has whole-second precision; the watch is near-real-time.
    let deletion_ns = observed.or(requested);
    let endpoints_ns =
        view.endpoints
            .and_then(|e| match (e.not_ready_since, e.terminating_since) {
                (Some(a), Some(b)) => Some(a.0.min(b.0)),
                (a, b) => a.or(b).map(|t| t.0),
            });
    let pre_stop = container
        .and_then(|c| c.pre_stop.as_ref())
        .map(PreStopHook::from);
    // Measured from the deletion (the preStop hook included), so that 1.0 means the grace
    // period ran out; from the stop signal when the deletion was not seen.
    let ended_ns = parse_rfc3339(&report.ended_at);
    let grace_used_ratio = (grace > 0)
        .then(|| match (deletion_ns, ended_ns) {
            (Some(del), Some(end)) if end >= del => Some((end - del) as f64 / 1e9 / grace as f64),
            _ => stop_ns.map(|_| report.shutdown_ms / 1000.0 / grace as f64),
        })
        .flatten();

    let facts = KubeFacts {
        pod: pod.name.clone(),
        pod_uid: pod.uid.clone(),
        namespace: pod.namespace.clone(),
        workload: pod.workload.clone(),
        workload_kind: pod.workload_kind.as_str().to_string(),
        container: container.map(|c| c.name.clone()),
        grace_period_seconds: grace,
        deletion_requested_at: requested.map(ns_rfc3339),
        deletion_observed_at: observed.map(ns_rfc3339),
        deadline: pod.deletion.map(|d| ns_rfc3339(d.deadline.0)),
        endpoints_not_ready_at: view
            .endpoints
            .and_then(|e| e.not_ready_since)
            .map(|t| ns_rfc3339(t.0)),
        endpoints_terminating_at: view
            .endpoints
            .and_then(|e| e.terminating_since)
            .map(|t| ns_rfc3339(t.0)),
        endpoints_removed_at: view
            .endpoints
            .and_then(|e| e.removed_at)
            .map(|t| ns_rfc3339(t.0)),
        pre_stop,
        deletion_to_stop_signal_ms: match (deletion_ns, stop_ns) {
            (Some(d), Some(s)) if s >= d => Some(round3((s - d) as f64 / 1e6)),
            _ => None,
        },
        grace_used_ratio: grace_used_ratio.map(round3),
        late_after_stop_signal: stop_ns
            .map(|s| late_since(&report.connections, s))
            .unwrap_or_default(),
        late_after_endpoints: endpoints_ns.map(|e| late_since(&report.connections, e)),
    };
    report.summary.extend(advice(report, &facts, p99_drain_ms));
    report.kubernetes = Some(Box::new(facts));
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Advice from what was measured against the pod's configuration.
pub fn advice(report: &TerminationReport, k: &KubeFacts, p99_drain_ms: Option<f64>) -> Vec<String> {
    let mut out = Vec::new();
    let sig = report
        .stop_signals
        .iter()
        .find(|s| !s.internal)
        .map_or("the stop signal", |s| s.signal.as_str());
    let late = k.late_after_stop_signal;
    if let Some(max) = late.max_delay_ms
        && late.accepted + late.refused > 0
    {
        let sleep = k.pre_stop.as_ref().and_then(|p| p.sleep_seconds);
        let needed = (max / 1000.0).ceil().max(1.0) as i64;
        let hook = match (&k.pre_stop, sleep) {
            (_, Some(s)) => format!("the preStop sleep is {s} s"),
            (Some(p), None) => format!("the preStop hook is `{}`", p.detail),
            (None, None) => "there is no preStop hook: the stop signal came at once".to_string(),
        };
        if sleep.is_none_or(|s| s < needed) {
            out.push(format!(
                "{} connection(s) arrived up to {:.1} s after {sig}; {hook}: a preStop sleep of \
                 at least {needed} s would have kept them (the endpoint propagation delay).",
                late.accepted + late.refused,
                max / 1000.0
            ));
        }
    }
    // The stop signal never reached the app: the engine's advice (exec, an init that
    // forwards signals) holds, and the grace period is not the problem.
    let never_reached = report
        .external_signals()
        .find(|s| s.signal != "SIGKILL")
        .is_some_and(|s| report.disposition_of(s) == super::report::SignalDisposition::Ignored);
    if report.outcome == Outcome::Killed && k.grace_period_seconds <= 0 {
        out.push(
            "The pod was force-deleted (grace period 0): SIGKILL came without a chance to \
             drain. A longer grace period would not help; delete without --force \
             --grace-period=0."
                .into(),
        );
    } else if report.outcome == Outcome::Killed && !never_reached {
        let mut s = format!(
            "The grace period ({} s) ran out and SIGKILL ended the container.",
            k.grace_period_seconds
        );
        // The drain time is advice only when it is above the grace period it would replace.
        if let Some(p99) = p99_drain_ms
            && p99 > k.grace_period_seconds as f64 * 1000.0
        {
            s.push_str(&format!(
                " The workload's p99 drain time is {:.1} s: give it \
                 terminationGracePeriodSeconds above that.",
                p99 / 1000.0
            ));
        }
        out.push(s);
    } else if let Some(ratio) = k.grace_used_ratio
        && ratio >= 0.8
        && report.outcome != Outcome::Survived
    {
        out.push(format!(
            "The shutdown used {:.0}% of the {} s grace period: close to being killed.",
            ratio * 100.0,
            k.grace_period_seconds
        ));
    }
    out
}

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
    pub flags: Vec<String>,
    pub summary: Vec<String>,
    /// The connections the pod's containers served.
    pub counts: Counts,
    /// Their own outbound connections.
    #[serde(default)]
    pub outbound_counts: Counts,
    /// The pod's Kubernetes facts (container-independent ones).
    pub kubernetes: KubeFacts,
    /// Deletion requested -> observed -> endpoints -> stop signals -> exits, per container.
    pub timeline: Vec<Step>,
    pub containers: Vec<TerminationReport>,
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
    let mut flags: Vec<String> = Vec::new();
    let mut summary = Vec::new();
    let mut counts = Counts::default();
    let mut outbound_counts = Counts::default();
    for c in &containers {
        for f in &c.flags {
            if !flags.contains(f) {
                flags.push(f.clone());
            }
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
        .or_else(|| {
            containers
                .iter()
                .filter_map(|c| parse_rfc3339(&c.started_at))
                .min()
        })
        .unwrap_or(0);
    let k8s_step = |at: &Option<String>, what: &str, detail: String| {
        at.as_deref().and_then(parse_rfc3339).map(|ns| {
            (
                ns,
                Step {
                    t_ms: round3((ns as f64 - origin as f64) / 1e6),
                    at: ns_rfc3339(ns),
                    what: what.into(),
                    detail,
                },
            )
        })
    };
    steps.extend(k8s_step(
        &kubernetes.deletion_requested_at,
        "deletion_requested",
        format!("grace period {} s", kubernetes.grace_period_seconds),
    ));
    steps.extend(k8s_step(
        &kubernetes.deletion_observed_at,
        "deletion_observed",
        "this agent saw the deletion".into(),
    ));
    steps.extend(k8s_step(
        &kubernetes.endpoints_not_ready_at,
        "endpoints_not_ready",
        "the pod's endpoints turned not ready".into(),
    ));
    steps.extend(k8s_step(
        &kubernetes.endpoints_terminating_at,
        "endpoints_terminating",
        "the pod's endpoints turned terminating".into(),
    ));
    steps.extend(k8s_step(
        &kubernetes.endpoints_removed_at,
        "endpoints_removed",
        "the pod left its endpoint slices".into(),
    ));
    for c in &containers {
        let name = c.subject.container.clone();
        for s in &c.timeline {
            if let Some(ns) = parse_rfc3339(&s.at) {
                steps.push((
                    ns,
                    Step {
                        t_ms: round3((ns as f64 - origin as f64) / 1e6),
                        at: s.at.clone(),
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
    }
    // The deadline only matters when the pod lived up to it.
    let last = steps.iter().map(|(ns, _)| *ns).max().unwrap_or(0);
    if let Some(step) = k8s_step(
        &kubernetes.deadline,
        "deadline",
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

#[cfg(test)]
mod tests;
