//! Hand-made kernel events and an engine for the tests that drive the real engine: the
//! engine's own rules (`terminations/tests`), the Kubernetes facts (`terminations/kube`), and
//! the outputs' report fixtures.

use std::{net::SocketAddr, time::Duration};

use crate::{
    clock::WallClock,
    decode::{
        Addrs, CloseActivity, ConnFlags, Event, ExitStatus, ProcessExit, ResetDirection,
        SignalGenerated, SignalResult, Task, TcpReset, TcpState, TcpStateChange,
    },
    signal::Signal,
    terminations::{Engine, EngineConfig},
};

pub(crate) const MS: u64 = 1_000_000;
/// Boot time of the stop signal in most tests (1,000 s after boot).
pub(crate) const T0: u64 = 1_000_000 * MS;

/// A socket at its close with a request read and not answered: in flight.
pub(crate) const IN_FLIGHT: CloseActivity = CloseActivity {
    rcv_nxt: 1180,
    copied_seq: 1180,
    snd_wl1: 1100,
    write_seq: 9,
    snd_una: 9,
    quiet_us: 5_000_000,
};

/// A socket at its close with the last request answered and acknowledged, quiet since: idle
/// (what an orderly close after a finished exchange looks like).
pub(crate) const ANSWERED: CloseActivity = CloseActivity {
    rcv_nxt: 1180,
    copied_seq: 1180,
    snd_wl1: 1180,
    write_seq: 409,
    snd_una: 409,
    quiet_us: 5_000_000,
};

/// The container's own outbound connection at its close, its request acknowledged by the
/// upstream and not answered yet: in flight (the upstream spoke last with a bare ACK).
pub(crate) const AWAITING_ANSWER: CloseActivity = CloseActivity {
    rcv_nxt: 1100,
    copied_seq: 1100,
    snd_wl1: 1100,
    write_seq: 89,
    snd_una: 89,
    quiet_us: 5_000_000,
};

pub(crate) fn task(pid: u32, comm: &str) -> Task {
    Task {
        pid,
        tgid: pid,
        comm: comm.into(),
    }
}

pub(crate) fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// An engine on node `node-1` with a 500 ms linger, at most 100 connections a report, and
/// boot time 0 at a fixed wall time (2026-11-21T04:53:11Z).
pub(crate) fn engine(survive_after: Duration) -> Engine {
    Engine::new(
        EngineConfig {
            linger: Duration::from_millis(500),
            survive_after,
            max_connections: 100,
            node: "node-1".into(),
        },
        WallClock::with_offset(1_795_236_791_000_000_000),
    )
}

/// Signal `sig` from the runtime (containerd-shim, pid 900, in `sender_cg`) to the thread group
/// of `target` in `target_cg` and `netns`: delivered, and opening the kernel's watch.
pub(crate) fn stop_signal(
    ts: u64,
    sig: u32,
    sender_cg: u64,
    target: Task,
    target_cg: u64,
    netns: u32,
) -> SignalGenerated {
    SignalGenerated {
        ts_ns: ts,
        signal: Signal::from_kernel(sig),
        code: 0,
        group: true,
        result: SignalResult::Delivered,
        sender: task(900, "containerd-shim"),
        sender_cgroup_id: sender_cg,
        target,
        target_cgroup_id: target_cg,
        target_netns: netns,
        watch_opened: true,
    }
}

/// `task`, in `cg`, exits with `exit`.
pub(crate) fn process_exit(ts: u64, cg: u64, task: Task, exit: ExitStatus) -> Event {
    Event::ProcessExit(ProcessExit {
        ts_ns: ts,
        task,
        cgroup_id: cg,
        exit,
        raw_exit_code: 0,
    })
}

/// Inbound connection `conn_id` of `cg` in `netns`, from `remote` to 10.0.0.5:8080 and
/// established 50 ms before [`T0`], going from `old` to `new` in softirq context, with a
/// request in flight ([`IN_FLIGHT`]).
pub(crate) fn inbound_state(
    ts: u64,
    cg: u64,
    netns: u32,
    conn_id: u64,
    remote: &str,
    old: TcpState,
    new: TcpState,
) -> TcpStateChange {
    TcpStateChange {
        ts_ns: ts,
        cgroup_id: cg,
        conn_id,
        sk: 0xffff_0000 + conn_id,
        addrs: Addrs {
            local: addr("10.0.0.5:8080"),
            remote: addr(remote),
        },
        old_state: old,
        new_state: new,
        established_ns: T0 - 50 * MS,
        netns,
        flags: ConnFlags {
            inbound: true,
            ..ConnFlags::default()
        },
        task: task(0, "swapper/0"),
        activity: Some(IN_FLIGHT),
    }
}

/// A SYN from `remote` to `local` that found no socket in `netns`: the kernel's reset (a
/// refusal), sent from softirq context.
pub(crate) fn refusal_reset(ts: u64, netns: u32, local: &str, remote: &str) -> TcpReset {
    TcpReset {
        ts_ns: ts,
        cgroup_id: 0,
        conn_id: 0,
        direction: ResetDirection::Sent,
        reason: Some("no_socket".into()),
        reason_code: 1,
        no_socket: true,
        state: TcpState::None,
        addrs: Addrs {
            local: addr(local),
            remote: addr(remote),
        },
        netns,
        flags: ConnFlags::default(),
        task: task(0, "swapper/1"),
    }
}
