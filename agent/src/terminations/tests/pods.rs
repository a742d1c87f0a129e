//! Pods with several containers, preStop hooks, and the pod's network namespace.

use super::*;

const UID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
const OTHER_UID: &str = "9c1d7a52-0b6e-4f3a-8d1e-5f2a7b3c4d5e";
/// The app container and its sidecar (same pod), and a container of another pod.
const APP: u64 = 5001;
const SIDECAR: u64 = 5002;
const STRANGER: u64 = 5003;

fn pod_path(uid: &str, n: u64) -> String {
    format!(
        "/kubepods/burstable/pod{uid}/{}",
        format!("{n:x}").repeat(64).get(..64).unwrap_or_default()
    )
}

fn identity_of(id: u64) -> Option<Identity> {
    match id {
        APP | SIDECAR => Some(classify(&pod_path(UID, id))),
        STRANGER => Some(classify(&pod_path(OTHER_UID, id))),
        RUNTIME_CG => Some(classify("/system.slice/containerd.service")),
        _ => None,
    }
}

fn pod_engine() -> Engine {
    engine(Duration::from_secs(30))
}

fn feed(e: &mut Engine, ev: Event) -> Vec<Action> {
    e.on_event(&ev, &mut identity_of)
}

fn sig_to(ts: u64, sig: u32, cg: u64, pid: u32, comm: &str, netns: u32) -> Event {
    Event::Signal(stop_signal(ts, sig, RUNTIME_CG, task(pid, comm), cg, netns))
}

fn exit_of(ts: u64, cg: u64, pid: u32, comm: &str, exit: ExitStatus) -> Event {
    process_exit(ts, cg, task(pid, comm), exit)
}

/// A connection of `cg` closed by its owner's exit with a request in flight (a cut).
fn cut_by_exit(ts: u64, cg: u64, conn_id: u64, local: &str, remote: &str, inbound: bool) -> Event {
    let mut s = state(
        ts,
        conn_id,
        remote,
        TcpState::Established,
        TcpState::FinWait1,
    );
    s.cgroup_id = cg;
    s.addrs.local = addr(local);
    s.flags.inbound = inbound;
    s.flags.closed_by_exit = true;
    s.flags.in_owner_task = true;
    // In flight either way: a client's request unanswered, or our request to an upstream.
    if !inbound {
        s.activity = Some(AWAITING_ANSWER);
    }
    Event::TcpState(s)
}

fn listener_closed(ts: u64, cg: u64, local: &str) -> Event {
    let mut l = state(ts, 0, "0.0.0.0:0", TcpState::Listen, TcpState::Close);
    l.cgroup_id = cg;
    l.addrs.local = addr(local);
    Event::TcpState(l)
}

fn exited(code: i32) -> ExitStatus {
    ExitStatus::Exited { code }
}

/// The sidecar (a proxy on :15001 in front of the app on 127.0.0.1:8080) exits at once on
/// SIGTERM; the app drains for 3 s. Traffic still arriving at the sidecar's port while the app
/// drains is refused by the pod's network namespace: the pod's, for the whole window.
/// The sidecar's loopback connection to the app is internal in both reports; the client the
/// sidecar served is cut once.
#[test]
fn a_sidecar_that_exits_first_keeps_the_pods_refusals_and_loopback_is_counted_once() {
    let mut e = pod_engine();
    for cg in [APP, SIDECAR] {
        assert_eq!(
            e.open_for_deletion(cg, identity_of(cg), T0 - 10 * MS),
            vec![Action::Snapshot(cg)]
        );
    }
    e.on_snapshot(
        SIDECAR,
        &[
            OpenConnection {
                conn_id: 1,
                local: addr("10.0.0.5:15001"),
                remote: addr("10.0.0.9:40000"),
                inbound: true,
                established_ns: T0 - 100 * MS,
            },
            OpenConnection {
                conn_id: 2,
                local: addr("127.0.0.1:41000"),
                remote: addr("127.0.0.1:8080"),
                inbound: false,
                established_ns: T0 - 100 * MS,
            },
        ],
    );
    e.on_snapshot(
        APP,
        &[OpenConnection {
            conn_id: 3,
            local: addr("127.0.0.1:8080"),
            remote: addr("127.0.0.1:41000"),
            inbound: true,
            established_ns: T0 - 100 * MS,
        }],
    );
    feed(&mut e, sig_to(T0, 15, SIDECAR, 20, "envoy", NETNS));
    feed(&mut e, sig_to(T0, 15, APP, 10, "app", NETNS));
    // The sidecar dies at once: its listener, its client and its upstream go with it.
    feed(
        &mut e,
        listener_closed(T0 + 50 * MS, SIDECAR, "0.0.0.0:15001"),
    );
    for (id, local, remote, inbound) in [
        (1, "10.0.0.5:15001", "10.0.0.9:40000", true),
        (2, "127.0.0.1:41000", "127.0.0.1:8080", false),
    ] {
        feed(
            &mut e,
            cut_by_exit(T0 + 60 * MS, SIDECAR, id, local, remote, inbound),
        );
    }
    feed(
        &mut e,
        exit_of(T0 + 60 * MS, SIDECAR, 20, "envoy", exited(0)),
    );
    e.on_population(SIDECAR, false, T0 + 61 * MS);
    // The app's end of the loopback connection is reset by the sidecar's exit.
    let mut s = state(
        T0 + 61 * MS,
        3,
        "127.0.0.1:41000",
        TcpState::Established,
        TcpState::Close,
    );
    s.cgroup_id = APP;
    s.addrs.local = addr("127.0.0.1:8080");
    s.flags.reset_received = true;
    feed(&mut e, Event::TcpState(s));

    // Past the sidecar's linger, the app still drains: nothing is reported yet.
    let (reports, _) = e.tick(T0 + 1_000 * MS);
    assert!(reports.is_empty(), "{reports:?}");
    assert!(e.is_open(SIDECAR));
    // A client still sent to the sidecar's port: refused by the pod's namespace.
    feed(
        &mut e,
        refusal(T0 + 2_000 * MS, NETNS, "10.0.0.5:15001", "10.0.0.9:40100"),
    );
    feed(&mut e, exit_of(T0 + 3_000 * MS, APP, 10, "app", exited(0)));
    e.on_population(APP, false, T0 + 3_000 * MS);
    let (reports, actions) = e.tick(T0 + 3_600 * MS);
    assert_eq!(reports.len(), 2, "{actions:?}");
    assert!(
        actions.contains(&Action::UnwatchNetns(NETNS)),
        "{actions:?}"
    );
    let by = |cg: u64| {
        reports
            .iter()
            .find(|r| r.subject.cgroup_id == cg)
            .expect("report")
    };
    let (sidecar, app) = (by(SIDECAR), by(APP));

    assert_eq!(sidecar.counts.refused, 1, "{:?}", sidecar.counts);
    // The client it served (cut) and the refusal; the loopback upstream is not counted.
    assert_eq!(sidecar.counts.cut, 2, "{:?}", sidecar.counts);
    assert_eq!(
        sidecar.outbound_counts.cut, 0,
        "{:?}",
        sidecar.outbound_counts
    );
    assert_eq!(sidecar.internal_counts.closed_by_exit, 1);
    assert_eq!(sidecar.shutdown_ms, 60.0, "the sidecar's own shutdown");
    let internal: Vec<_> = sidecar
        .connections
        .iter()
        .filter(|c| c.internal == Some(report::Internal::Loopback))
        .collect();
    assert_eq!(internal.len(), 1, "{:?}", sidecar.connections);

    assert_eq!(app.counts.cut, 0, "{:?}", app.counts);
    assert_eq!(app.counts.reset_by_peer, 0, "{:?}", app.counts);
    assert_eq!(
        app.internal_counts.reset_by_peer, 1,
        "{:?}",
        app.internal_counts
    );
    assert_eq!(app.outcome, Outcome::Graceful, "{:?}", app.summary);
    assert_eq!(
        app.connections[0].internal,
        Some(report::Internal::Loopback)
    );
}

/// A loopback connection whose other end is in no termination (a host process talking to a
/// service in the host's namespace) is the service's client as any other.
#[test]
fn loopback_from_outside_the_pod_is_a_client() {
    let mut r = Run::new();
    r.feed(signal(T0, 15, RUNTIME_CG, SignalResult::Delivered));
    r.engine.on_snapshot(
        CG,
        &[OpenConnection {
            conn_id: 1,
            local: addr("127.0.0.1:8080"),
            remote: addr("127.0.0.1:45000"),
            inbound: true,
            established_ns: T0 - 100 * MS,
        }],
    );
    let mut s = state(
        T0 + MS,
        1,
        "127.0.0.1:45000",
        TcpState::Established,
        TcpState::FinWait1,
    );
    s.addrs.local = addr("127.0.0.1:8080");
    s.flags.closed_by_exit = true;
    r.feed(Event::TcpState(s));
    r.feed(exit(T0 + 2 * MS, 10, exited(0)));
    let rep = r.finish(T0 + 2 * MS);
    assert_eq!(rep.counts.cut, 1, "{:?}", rep.counts);
    assert_eq!(rep.connections[0].internal, None);
}

/// Containers of different pods are not held for each other, even in one network namespace
/// (host network).
#[test]
fn containers_of_other_pods_are_not_held() {
    let mut e = pod_engine();
    feed(&mut e, sig_to(T0, 15, APP, 10, "app", NETNS));
    feed(&mut e, sig_to(T0, 15, STRANGER, 30, "other", NETNS));
    feed(&mut e, exit_of(T0 + MS, APP, 10, "app", exited(0)));
    e.on_population(APP, false, T0 + MS);
    let (reports, _) = e.tick(T0 + 600 * MS);
    assert_eq!(reports.len(), 1);
    assert!(e.is_open(STRANGER));
}

/// The pod's namespace is gone once all of its processes have exited and its inode shows up
/// again for a container of another pod: a refusal in that inode afterwards is the new
/// namespace's, not the old pod's; one before is still the pod's.
#[test]
fn a_reused_netns_inode_is_not_the_old_pods() {
    let mut e = pod_engine();
    feed(&mut e, sig_to(T0, 15, APP, 10, "app", NETNS));
    e.on_snapshot(APP, &[]);
    feed(&mut e, listener_closed(T0 + 10 * MS, APP, "0.0.0.0:8080"));
    feed(&mut e, exit_of(T0 + 20 * MS, APP, 10, "app", exited(0)));
    e.on_population(APP, false, T0 + 20 * MS);
    // Still the pod's namespace (its sandbox has not been torn down yet).
    feed(
        &mut e,
        refusal(T0 + 100 * MS, NETNS, "10.0.0.5:8080", "10.0.0.9:40001"),
    );
    // A new pod's container, in a namespace that got the freed inode, is stopped.
    feed(
        &mut e,
        sig_to(T0 + 200 * MS, 15, STRANGER, 30, "other", NETNS),
    );
    feed(
        &mut e,
        refusal(T0 + 300 * MS, NETNS, "10.0.0.5:8080", "10.0.0.9:40002"),
    );
    let (reports, _) = e.tick(T0 + 600 * MS);
    let app = reports
        .iter()
        .find(|r| r.subject.cgroup_id == APP)
        .expect("app report");
    assert_eq!(app.counts.refused, 1, "{:?}", app.connections);
    assert_eq!(app.connections[0].remote, addr("10.0.0.9:40001"));
}

/// While the pod still runs, another container of the same pod in its namespace (its sandbox
/// being stopped) is no sign of a new namespace.
#[test]
fn the_pods_own_sandbox_does_not_end_its_namespace() {
    let mut e = pod_engine();
    feed(&mut e, sig_to(T0, 15, APP, 10, "app", NETNS));
    e.on_snapshot(APP, &[]);
    feed(&mut e, listener_closed(T0 + 10 * MS, APP, "0.0.0.0:8080"));
    feed(&mut e, exit_of(T0 + 20 * MS, APP, 10, "app", exited(0)));
    e.on_population(APP, false, T0 + 20 * MS);
    feed(&mut e, sig_to(T0 + 50 * MS, 9, SIDECAR, 1, "pause", NETNS));
    feed(
        &mut e,
        refusal(T0 + 100 * MS, NETNS, "10.0.0.5:8080", "10.0.0.9:40001"),
    );
    feed(
        &mut e,
        exit_of(
            T0 + 60 * MS,
            SIDECAR,
            1,
            "pause",
            ExitStatus::Signaled {
                signal: Signal::KILL,
                core_dumped: false,
            },
        ),
    );
    e.on_population(SIDECAR, false, T0 + 60 * MS);
    let (reports, _) = e.tick(T0 + 700 * MS);
    let app = reports
        .iter()
        .find(|r| r.subject.cgroup_id == APP)
        .expect("app report");
    assert_eq!(app.counts.refused, 1, "{:?}", app.connections);
}

/// An exec preStop hook (`sleep 30`) longer than a 2 s grace period: kubelet's timeout kills
/// the hook with SIGKILL before the app's SIGTERM. The hook is not the main process, its
/// SIGKILL is no trigger and does not make the container `killed`; the shutdown counts from
/// the app's SIGTERM.
#[test]
fn a_hook_killed_before_the_stop_signal_is_not_the_main_process() {
    let mut e = pod_engine();
    e.open_for_deletion(APP, identity_of(APP), T0 - 2_000 * MS);
    e.on_snapshot(APP, &[]);
    for (pid, comm, file) in [(40, "sh", "/bin/sh"), (41, "sleep", "/bin/sleep")] {
        feed(
            &mut e,
            Event::ProcessExec(crate::decode::ProcessExec {
                ts_ns: T0 - 1_990 * MS,
                task: task(pid, comm),
                cgroup_id: APP,
                filename: file.into(),
            }),
        );
    }
    feed(&mut e, sig_to(T0 - 5 * MS, 9, APP, 40, "sh", NETNS));
    let killed = ExitStatus::Signaled {
        signal: Signal::KILL,
        core_dumped: false,
    };
    feed(&mut e, exit_of(T0 - 4 * MS, APP, 40, "sh", killed));
    feed(&mut e, sig_to(T0, 15, APP, 10, "app", NETNS));
    feed(&mut e, exit_of(T0 + 300 * MS, APP, 10, "app", exited(0)));
    // The orphaned sleep dies with the PID namespace's init.
    feed(&mut e, exit_of(T0 + 301 * MS, APP, 41, "sleep", killed));
    e.on_population(APP, false, T0 + 301 * MS);
    let (reports, _) = e.tick(T0 + 900 * MS);
    let rep = &reports[0];
    assert_eq!(rep.subject.main.pid, 10, "{:?}", rep.subject.main);
    assert_eq!(rep.outcome, Outcome::Graceful, "{:?}", rep.summary);
    assert!(!rep.has_flag(Flag::Killed), "{:?}", rep.flags);
    assert_eq!(rep.shutdown_ms, 301.0);
    assert_eq!(
        rep.stop_signal_at.map(crate::clock::text).as_deref(),
        Some(
            WallClock::with_offset(1_795_236_791_000_000_000)
                .rfc3339(T0)
                .as_str()
        )
    );
    let hook_signal = rep
        .stop_signals
        .iter()
        .find(|s| s.target.pid == 40)
        .expect("the hook's SIGKILL is listed");
    assert!(hook_signal.pre_stop_hook);
    assert_eq!(rep.external_signals().count(), 1);
    assert!(
        rep.timeline
            .iter()
            .any(|s| s.what == StepKind::PreStopHookSignal && s.detail.contains("SIGKILL")),
        "{:?}",
        rep.timeline
    );
    assert!(!rep.timeline.iter().any(|s| s.what == StepKind::Sigkill));
}

/// kubelet's request of an httpGet preStop hook on :8080, cut when the app exits: shown,
/// not counted as a client cut. A client's connection on the same port, accepted later, is.
#[test]
fn kubelets_http_get_hook_request_is_not_a_client() {
    let mut e = pod_engine();
    e.open_for_deletion(APP, identity_of(APP), T0 - 1_000 * MS);
    e.set_http_hook_port(APP, 8080);
    e.on_snapshot(APP, &[]);
    for (id, remote, at) in [
        (7, "10.0.0.1:50000", T0 - 990 * MS),
        (8, "10.0.0.9:50001", T0 - 500 * MS),
    ] {
        let mut s = state(at, id, remote, TcpState::SynRecv, TcpState::Established);
        s.cgroup_id = APP;
        s.established_ns = at;
        feed(&mut e, Event::TcpState(s));
    }
    feed(&mut e, sig_to(T0, 15, APP, 10, "app", NETNS));
    for (id, remote) in [(7, "10.0.0.1:50000"), (8, "10.0.0.9:50001")] {
        feed(
            &mut e,
            cut_by_exit(T0 + 10 * MS, APP, id, "10.0.0.5:8080", remote, true),
        );
    }
    feed(&mut e, exit_of(T0 + 10 * MS, APP, 10, "app", exited(0)));
    e.on_population(APP, false, T0 + 10 * MS);
    let (reports, _) = e.tick(T0 + 600 * MS);
    let rep = &reports[0];
    assert_eq!(rep.counts.cut, 1, "{:?}", rep.connections);
    assert_eq!(rep.internal_counts.closed_by_exit, 1);
    let hook = rep
        .connections
        .iter()
        .find(|c| c.remote == addr("10.0.0.1:50000"))
        .expect("hook request listed");
    assert_eq!(hook.internal, Some(report::Internal::PreStopHook));
}
