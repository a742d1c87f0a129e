//! The Kubernetes side of a termination, joined with what the kernel saw: the pod's deletion,
//! grace period, preStop hook and endpoints, the late traffic measured against them, and
//! advice. Pure: times and states are passed in. The roll-up of a pod's container
//! terminations into one pod report is [`super::pod`]'s.
use super::report::{Connection, Direction, Outcome, Signal, TerminationReport, Verdict};
pub use super::{
    pod::{POD_SCHEMA, POD_SCHEMA_FAMILY, PodTerminationReport, p99, roll_up},
    report::{KubeFacts, LateTraffic, PreStopHook},
};
use jiff::Timestamp;

use crate::{
    clock::unix_ns,
    kube::{pod::ContainerInfo, state::PodView},
};

pub(crate) fn ns_rfc3339(ns: u64) -> String {
    crate::clock::rfc3339(ns)
}

/// Inbound connections accepted and refusals after `since_ns` (Unix ns).
fn late_since(connections: &[Connection], since_ns: u64) -> LateTraffic {
    let mut late = LateTraffic::default();
    let mut note = |at: Option<&Timestamp>, refused: bool| {
        let Some(ns) = at.map(|t| unix_ns(*t)) else {
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
    let stop_ns = report.stop_signal_at.map(unix_ns);
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
        .map(PreStopHook::from_pre_stop);
    // Measured from the deletion (the preStop hook included), so that 1.0 means the grace
    // period ran out; from the stop signal when the deletion was not seen.
    let ended_ns = Some(unix_ns(report.ended_at));
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

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Advice from what was measured against the pod's configuration.
pub fn advice(report: &TerminationReport, k: &KubeFacts, p99_drain_ms: Option<f64>) -> Vec<String> {
    let mut out = Vec::new();
    let sig = report
        .stop_signals
        .iter()
        .find(|s| !s.internal)
        .map_or_else(|| "the stop signal".into(), |s| s.signal.to_string());
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
        .find(|s| s.signal != Signal::KILL)
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

#[cfg(test)]
mod tests;
