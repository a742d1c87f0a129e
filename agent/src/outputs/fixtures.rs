//! Reports for the outputs' tests, made by the real engine from hand-written events so that
//! their timeline and summary have exactly the engine's wording.

use std::time::Duration;

use crate::{
    attribute::cgroup_path::classify,
    decode::{
        Addrs, ConnFlags, Disposition, Event, ExitStatus, ResetDirection, SignalDelivered,
        SignalGenerated, SignalResult, TcpReset, TcpState, TcpStateChange,
    },
    signal::Signal,
    terminations::{
        Engine, OpenConnection,
        report::TerminationReport,
        test_events::{
            ANSWERED, IN_FLIGHT, MS, T0, addr, engine, inbound_state, process_exit, refusal_reset,
            stop_signal, task,
        },
    },
};

pub const POD_UID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
pub const CONTAINER_ID: &str = "3f2a9c1b2d4e5f60718293a4b5c6d7e8f9011223344556677889aabbccddeeff";
const POD_CG: u64 = 4242;
const SVC_CG: u64 = 4343;
const RUNTIME_CG: u64 = 77;
const NETNS: u32 = 4026532000;

fn pod_path() -> String {
    format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/\
         cri-containerd-{CONTAINER_ID}.scope",
        POD_UID.replace('-', "_")
    )
}

struct Run {
    engine: Engine,
    cg: u64,
    comm: &'static str,
}

impl Run {
    fn new(cg: u64, comm: &'static str) -> Self {
        Run {
            engine: engine(Duration::from_secs(120)),
            cg,
            comm,
        }
    }

    fn feed(&mut self, e: Event) {
        let pod = pod_path();
        self.engine.on_event(&e, &mut |id| match id {
            POD_CG => Some(classify(&pod)),
            SVC_CG => Some(classify("/system.slice/app.service")),
            RUNTIME_CG => Some(classify("/system.slice/containerd.service")),
            _ => None,
        });
    }

    fn signal(&mut self, ts: u64, sig: u32, result: SignalResult) {
        self.feed(Event::Signal(SignalGenerated {
            result,
            ..stop_signal(ts, sig, RUNTIME_CG, task(10, self.comm), self.cg, NETNS)
        }));
    }

    fn delivered(&mut self, ts: u64, sig: u32, disposition: Disposition) {
        self.feed(Event::SignalDelivered(SignalDelivered {
            ts_ns: ts,
            task: task(10, self.comm),
            cgroup_id: self.cg,
            signal: Signal::from_kernel(sig),
            disposition,
        }));
    }

    fn exit(&mut self, ts: u64, exit: ExitStatus) {
        self.feed(process_exit(ts, self.cg, task(10, self.comm), exit));
    }

    fn state(&mut self, ts: u64, conn_id: u64, remote: &str, new: TcpState, by_exit: bool) {
        self.feed(Event::TcpState(TcpStateChange {
            flags: ConnFlags {
                inbound: true,
                closed_by_exit: by_exit,
                ..ConnFlags::default()
            },
            task: task(10, self.comm),
            // An orderly close finishes an answered exchange; an exit cuts one in flight.
            activity: Some(if by_exit { IN_FLIGHT } else { ANSWERED }),
            ..inbound_state(
                ts,
                self.cg,
                NETNS,
                conn_id,
                remote,
                TcpState::Established,
                new,
            )
        }));
    }

    fn snapshot(&mut self, remotes: &[&str]) {
        let conns: Vec<_> = remotes
            .iter()
            .enumerate()
            .map(|(i, r)| OpenConnection {
                conn_id: i as u64 + 1,
                local: addr("10.0.0.5:8080"),
                remote: addr(r),
                inbound: true,
                established_ns: T0 - 100 * MS,
            })
            .collect();
        self.engine.on_snapshot(self.cg, &conns);
    }

    fn finish(mut self, emptied_at: u64) -> TerminationReport {
        self.engine.on_population(self.cg, false, emptied_at);
        let (mut reports, _) = self.engine.tick(emptied_at + 600 * MS);
        reports.pop().unwrap_or_else(|| panic!("no report"))
    }
}

/// A pod's container without a SIGTERM handler: killed at once, two connections closed by
/// the kernel. Outcome `no_handler`, flags `cut`, `no_handler`; shutdown 2 ms.
pub fn no_handler() -> TerminationReport {
    let mut r = Run::new(POD_CG, "app");
    r.signal(T0, 15, SignalResult::Delivered);
    r.snapshot(&["10.0.0.9:40000", "10.0.0.9:40001"]);
    r.delivered(T0 + MS, 9, Disposition::Default);
    r.state(T0 + MS, 1, "10.0.0.9:40000", TcpState::Close, true);
    r.state(T0 + MS, 2, "10.0.0.9:40001", TcpState::Close, true);
    r.exit(
        T0 + 2 * MS,
        ExitStatus::Signaled {
            signal: Signal::TERM,
            core_dumped: false,
        },
    );
    r.finish(T0 + 2 * MS)
}

/// A service that handles SIGTERM but is still busy after 10 s: SIGKILL. One connection
/// closed by the exit, one reset by the peer, one new connection accepted after the stop
/// signal and one refusal after the listener closed.
pub fn killed() -> TerminationReport {
    let mut r = Run::new(SVC_CG, "gunicorn");
    r.signal(T0, 15, SignalResult::Delivered);
    r.snapshot(&["10.0.0.9:40000", "10.0.0.9:40001"]);
    r.delivered(T0 + MS, 15, Disposition::Handler);
    // Accepted late, 300 ms after SIGTERM.
    r.feed(Event::TcpState(TcpStateChange {
        established_ns: T0 + 300 * MS,
        ..inbound_state(
            T0 + 300 * MS,
            SVC_CG,
            NETNS,
            3,
            "10.0.0.9:40002",
            TcpState::SynRecv,
            TcpState::Established,
        )
    }));
    // The peer resets connection 2.
    r.feed(Event::TcpReset(TcpReset {
        ts_ns: T0 + 400 * MS,
        cgroup_id: SVC_CG,
        conn_id: 2,
        direction: ResetDirection::Received,
        reason: None,
        reason_code: 0,
        no_socket: false,
        state: TcpState::Established,
        addrs: Addrs {
            local: addr("10.0.0.5:8080"),
            remote: addr("10.0.0.9:40001"),
        },
        netns: NETNS,
        flags: ConnFlags::default(),
        task: task(0, "swapper/0"),
    }));
    r.state(T0 + 400 * MS, 2, "10.0.0.9:40001", TcpState::Close, false);
    // A SYN 2 s after SIGTERM finds no socket: refused.
    r.feed(Event::TcpReset(refusal_reset(
        T0 + 2_000 * MS,
        NETNS,
        "10.0.0.5:8080",
        "10.0.0.9:40003",
    )));
    r.signal(T0 + 10_000 * MS, 9, SignalResult::Delivered);
    r.delivered(T0 + 10_001 * MS, 9, Disposition::Default);
    r.state(T0 + 10_001 * MS, 1, "10.0.0.9:40000", TcpState::Close, true);
    r.state(T0 + 10_001 * MS, 3, "10.0.0.9:40002", TcpState::Close, true);
    r.exit(
        T0 + 10_002 * MS,
        ExitStatus::Signaled {
            signal: Signal::KILL,
            core_dumped: false,
        },
    );
    r.finish(T0 + 10_002 * MS)
}

/// A pod's container that handles SIGTERM and finishes its one connection: graceful, 0.25 s.
pub fn graceful() -> TerminationReport {
    let mut r = Run::new(POD_CG, "app");
    r.signal(T0, 15, SignalResult::Delivered);
    r.snapshot(&["10.0.0.9:40000"]);
    r.delivered(T0 + MS, 15, Disposition::Handler);
    r.state(
        T0 + 200 * MS,
        1,
        "10.0.0.9:40000",
        TcpState::FinWait1,
        false,
    );
    r.state(T0 + 201 * MS, 1, "10.0.0.9:40000", TcpState::Close, false);
    r.exit(T0 + 250 * MS, ExitStatus::Exited { code: 0 });
    r.finish(T0 + 250 * MS)
}

#[test]
fn fixtures_are_what_they_say() {
    use crate::terminations::report::{Flag, Outcome, SignalDisposition};
    let r = no_handler();
    assert_eq!(r.outcome, Outcome::NoHandler);
    assert_eq!(r.subject.pod_uid.as_deref(), Some(POD_UID));
    assert_eq!(r.subject.container, "3f2a9c1b2d4e");
    assert_eq!(r.counts.closed_by_exit, 2);
    assert_eq!(
        r.disposition_of(&r.stop_signals[0]),
        SignalDisposition::Default
    );
    assert!(!r.sigkill_escalation());

    let k = killed();
    assert_eq!(k.outcome, Outcome::Killed);
    assert_eq!(k.subject.workload, "app.service");
    assert_eq!(
        k.flags,
        [
            Flag::Cut,
            Flag::Killed,
            Flag::LateTraffic,
            Flag::ResetByPeer
        ],
        "{k:#?}"
    );
    assert_eq!(k.counts.closed_by_exit, 2);
    assert_eq!(k.counts.reset_by_peer, 1);
    assert_eq!(k.counts.accepted_late, 1);
    assert_eq!(k.counts.refused, 1);
    assert_eq!(k.counts.cut, 3);
    assert!(k.sigkill_escalation());
    assert_eq!(
        k.disposition_of(&k.stop_signals[0]),
        SignalDisposition::Handler
    );
    assert_eq!(
        k.disposition_of(&k.stop_signals[1]),
        SignalDisposition::Default
    );

    let g = graceful();
    assert_eq!(g.outcome, Outcome::Graceful);
    assert_eq!(g.shutdown_ms, 250.0);
}
