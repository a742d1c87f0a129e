//! Kubernetes facts, advice and the pod roll-up, on hand-made pods and engine-made reports.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use super::*;
use crate::kube::pod::PodInfo;
use crate::terminations::report::{Flag, StepKind};
use crate::{
    attribute::cgroup_path::classify,
    clock::WallClock,
    decode::{Addrs, ConnFlags, Event, ExitStatus, TcpReset, TcpState},
    kube::{UnixNanos, endpoints::PodEndpoints, pod::from_pod},
    terminations::{
        Engine, EngineConfig,
        test_events::{process_exit, refusal_reset, stop_signal, task},
    },
};

const S: u64 = 1_000_000_000;
/// Boot time 0 is this wall time (2026-11-21T05:00:00Z).
const WALL0: u64 = 1_795_237_200 * S;
const UID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
const CID: &str = "3f2a9c1b2d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeef";

fn pod(pre_stop: serde_json::Value) -> PodInfo {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "web-7d4b9c-x2x9z", "namespace": "shop", "uid": UID,
            "labels": {"pod-template-hash": "7d4b9c"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": "web-7d4b9c", "uid": "rs-uid", "controller": true}],
            "deletionTimestamp": "2026-11-21T05:00:40Z",
            "deletionGracePeriodSeconds": 30
        },
        "spec": {
            "nodeName": "node-1",
            "terminationGracePeriodSeconds": 30,
            "containers": [{"name": "app", "image": "app:1", "lifecycle": pre_stop}]
        },
        "status": {
            "containerStatuses": [{"name": "app", "containerID": format!("containerd://{CID}"),
                                   "image": "app:1", "imageID": "", "ready": true,
                                   "restartCount": 0}]
        }
    }))
    .expect("pod json");
    from_pod(&pod).expect("valid pod")
}

/// A container report: SIGTERM at 12 s (boot), a refusal 2.4 s later, exit at 15 s.
fn report(refusal_after: Option<u64>, killed: bool) -> TerminationReport {
    let path = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID}.scope",
        UID.replace('-', "_")
    );
    let mut engine = Engine::new(
        EngineConfig {
            linger: Duration::from_millis(100),
            ..EngineConfig::default()
        },
        WallClock::with_offset(i128::from(WALL0)),
    );
    let mut id = |cg| (cg == 5).then(|| classify(&path));
    let sig = |ts, signal| Event::Signal(stop_signal(ts, signal, 2, task(10, "app"), 5, 7));
    engine.on_event(&sig(12 * S, 15), &mut id);
    let mut listener = crate::decode::TcpStateChange {
        ts_ns: 12 * S + 1000,
        cgroup_id: 5,
        conn_id: 0,
        sk: 1,
        addrs: Addrs {
            local: "10.1.0.5:8080".parse().expect("addr"),
            remote: "0.0.0.0:0".parse().expect("addr"),
        },
        old_state: TcpState::Listen,
        new_state: TcpState::Close,
        established_ns: 0,
        netns: 7,
        flags: ConnFlags::default(),
        task: task(10, "app"),
        activity: None,
    };
    engine.on_event(&Event::TcpState(listener.clone()), &mut id);
    listener.ts_ns += 1;
    if let Some(after) = refusal_after {
        engine.on_event(
            &Event::TcpReset(TcpReset {
                task: task(0, "swapper"),
                ..refusal_reset(12 * S + after, 7, "10.1.0.5:8080", "10.1.0.9:40000")
            }),
            &mut id,
        );
    }
    if killed {
        engine.on_event(&sig(42 * S, 9), &mut id);
    }
    let exit = if killed {
        ExitStatus::Signaled {
            signal: Signal::KILL,
            core_dumped: false,
        }
    } else {
        ExitStatus::Exited { code: 0 }
    };
    let exit_at = if killed { 42 * S + 1000 } else { 15 * S };
    engine.on_event(&process_exit(exit_at, 5, task(10, "app"), exit), &mut id);
    engine.on_population(5, false, 50 * S);
    let (mut reports, _) = engine.tick(60 * S);
    reports.remove(0)
}

fn endpoints() -> PodEndpoints {
    PodEndpoints {
        first_seen_at: UnixNanos(WALL0),
        ready: false,
        serving: true,
        terminating: true,
        addresses: vec!["10.1.0.5".into()],
        services: vec!["web".into()],
        last_ready_at: Some(UnixNanos(WALL0 + 5 * S)),
        not_ready_since: Some(UnixNanos(WALL0 + 11 * S)),
        terminating_since: Some(UnixNanos(WALL0 + 11 * S)),
        removed_at: None,
        in_slices: 1,
    }
}

#[test]
fn facts_and_late_traffic_against_the_deletion_and_endpoints() {
    let info = pod(serde_json::json!(null));
    let ep = endpoints();
    let view = PodView {
        info: &info,
        deletion_observed_at: Some(UnixNanos(WALL0 + 10 * S + S / 2)),
        deleted_at: None,
        endpoints: Some(&ep),
    };
    let mut r = report(Some(2_400_000_000), false);
    enrich(&mut r, &view, info.containers.first(), None);

    assert_eq!(r.subject.namespace, "shop");
    assert_eq!(r.subject.workload, "web");
    assert_eq!(r.subject.workload_kind.as_deref(), Some("Deployment"));
    assert_eq!(r.subject.container, "app");
    assert_eq!(r.subject.pod.as_deref(), Some("web-7d4b9c-x2x9z"));
    let k = r.kubernetes.as_deref().expect("facts");
    assert_eq!(k.grace_period_seconds, 30);
    // deletionTimestamp 05:00:40 - 30 s = requested at 05:00:10; SIGTERM at 05:00:12.
    assert_eq!(
        k.deletion_requested_at.as_deref(),
        Some("2026-11-21T05:00:10.000000Z")
    );
    // From the deletion as observed (10.5 s; the request time has second precision).
    assert_eq!(k.deletion_to_stop_signal_ms, Some(1500.0));
    // From the deletion as observed (10.5 s) to the last exit (15 s): 4.5 s of 30 s.
    assert_eq!(
        k.grace_used_ratio.map(|r| (r * 1000.0).round()),
        Some(150.0)
    );
    assert_eq!(k.late_after_stop_signal.refused, 1);
    assert_eq!(k.late_after_stop_signal.max_delay_ms, Some(2400.0));
    let after_endpoints = k.late_after_endpoints.expect("endpoints known");
    assert_eq!(after_endpoints.refused, 1);
    assert_eq!(after_endpoints.max_delay_ms, Some(3400.0)); // endpoints turned at 11 s
    assert!(
        r.summary
            .iter()
            .any(|s| s.contains("a preStop sleep of at least 3 s would have kept them")),
        "{:?}",
        r.summary
    );
}

#[test]
fn a_long_enough_pre_stop_sleep_draws_no_advice() {
    let info = pod(serde_json::json!({"preStop": {"sleep": {"seconds": 5}}}));
    let view = PodView {
        info: &info,
        deletion_observed_at: None,
        deleted_at: None,
        endpoints: None,
    };
    let mut r = report(Some(2_400_000_000), false);
    enrich(&mut r, &view, info.containers.first(), None);
    let k = r.kubernetes.as_deref().expect("facts");
    assert_eq!(
        k.pre_stop.as_ref().map(|p| &p.kind),
        Some(&crate::terminations::report::HookKind::Sleep)
    );
    assert!(
        !r.summary
            .iter()
            .any(|s| s.contains("preStop sleep of at least")),
        "{:?}",
        r.summary
    );
}

#[test]
fn a_grace_period_that_ran_out() {
    let info = pod(serde_json::json!(null));
    let view = PodView {
        info: &info,
        deletion_observed_at: None,
        deleted_at: None,
        endpoints: None,
    };
    let mut r = report(None, true);
    enrich(&mut r, &view, info.containers.first(), Some(41_000.0));
    assert_eq!(r.outcome, Outcome::Killed);
    assert!(
        r.summary
            .iter()
            .any(|s| s.contains("The grace period (30 s) ran out")
                && s.contains("p99 drain time is 41.0 s")),
        "{:?}",
        r.summary
    );
}

#[test]
fn a_p99_below_the_grace_period_is_not_offered() {
    let info = pod(serde_json::json!(null));
    let view = PodView {
        info: &info,
        deletion_observed_at: None,
        deleted_at: None,
        endpoints: None,
    };
    let mut r = report(None, true);
    enrich(&mut r, &view, info.containers.first(), Some(3_000.0));
    assert!(
        r.summary.iter().any(|s| s.contains("ran out"))
            && !r.summary.iter().any(|s| s.contains("p99")),
        "{:?}",
        r.summary
    );
}

#[test]
fn a_force_delete_is_not_a_grace_period_to_lengthen() {
    let mut info = pod(serde_json::json!(null));
    info.termination_grace_period_seconds = 0;
    if let Some(d) = info.deletion.as_mut() {
        d.grace_period_seconds = Some(0);
    }
    let view = PodView {
        info: &info,
        deletion_observed_at: None,
        deleted_at: None,
        endpoints: None,
    };
    let mut r = report(None, true);
    enrich(&mut r, &view, info.containers.first(), Some(41_000.0));
    assert_eq!(
        r.kubernetes.as_deref().map(|k| k.grace_period_seconds),
        Some(0)
    );
    assert!(
        r.summary.iter().any(|s| s.contains("force-deleted")),
        "{:?}",
        r.summary
    );
    assert!(
        !r.summary
            .iter()
            .any(|s| s.contains("ran out") || s.contains("p99")),
        "{:?}",
        r.summary
    );
}

#[test]
fn containers_roll_up_into_the_pod() {
    let info = pod(serde_json::json!(null));
    let view = PodView {
        info: &info,
        deletion_observed_at: Some(UnixNanos(WALL0 + 10 * S + S / 2)),
        deleted_at: Some(UnixNanos(WALL0 + 50 * S)),
        endpoints: None,
    };
    let mut a = report(Some(2_400_000_000), false);
    enrich(&mut a, &view, info.containers.first(), None);
    let mut b = report(None, true);
    enrich(&mut b, &view, info.containers.first(), None);
    b.subject.container = "sidecar".into();
    // The pod as last seen: its workload relabelled after the containers' reports.
    let mut later = info.clone();
    later.workload = "web-v2".into();
    let view = PodView {
        info: &later,
        ..view
    };
    let p = roll_up("node-1", &view, vec![a, b]);
    assert_eq!(p.schema, POD_SCHEMA);
    assert_eq!(p.kubernetes.workload, "web-v2");
    // Grace used is the largest of the containers': the killed one, 42 s - 10.5 s of 30 s.
    assert_eq!(
        p.kubernetes.grace_used_ratio.map(|r| (r * 1000.0).round()),
        Some(1050.0)
    );
    assert_eq!(p.outcome, Outcome::Killed);
    assert_eq!(p.counts.refused, 1);
    assert!(p.flags.contains(&Flag::Killed));
    assert!(p.flags.contains(&Flag::LateTraffic));
    assert_eq!(p.timeline[0].what, StepKind::DeletionRequested);
    assert_eq!(p.timeline[1].what, StepKind::DeletionObserved);
    assert_eq!(p.timeline[1].t_ms, 500.0);
    assert!(
        p.timeline
            .iter()
            .any(|s| s.detail.starts_with("[sidecar] "))
    );
    assert!(p.summary.iter().any(|s| s.starts_with("[app] ")));
    assert_eq!(p.kubernetes.container, None);
    let text = crate::outputs::render::pod_report(&p);
    assert!(text.contains("pod shop/web-7d4b9c-x2x9z  killed"), "{text}");
    assert!(
        text.contains("Deployment web-v2, grace period 30 s"),
        "{text}"
    );
    assert!(text.contains("  container sidecar:"), "{text}");
    let json = serde_json::to_string(&p).expect("serializes");
    let back: PodTerminationReport = serde_json::from_str(&json).expect("parses");
    assert_eq!(back, p);
}

#[test]
fn p99_of_drain_times() {
    assert_eq!(p99(&[]), None);
    assert_eq!(p99(&[5.0]), Some(5.0));
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(p99(&v), Some(99.0));
}
