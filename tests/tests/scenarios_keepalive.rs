//! Keep-alive clients idle and in flight when a real app stops at once (issue 8, "in flight or
//! idle at the cut"): a Node.js HTTP server that exits as soon as SIGTERM comes
//! (`process.on('SIGTERM', () => process.exit(0))`), and the same server killed by SIGKILL
//! with no stop signal before it. The kernel closes every connection at the exit; only the
//! client whose request was in flight lost something. Each client records what it saw.

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::{Result, ensure};
use termscope::terminations::report::{Flag, Outcome, Verdict};
use termscope_tests::{
    Agent, NetNs, Proc, TestCgroup, kernel_test,
    load::{Kind, Load, Truth, check_verdicts, show},
    scripts,
};

/// Two idle keep-alive clients (answered, then quiet for longer than the idle threshold) and
/// one request in flight when the app gets `signal`.
fn node_stopped_with(signal: i32) -> Result<()> {
    let mut agent = Agent::start(Duration::from_secs(20))?;
    let cg = TestCgroup::new("node")?;
    let ns = NetNs::new("node")?;
    let mut cmd = Command::new("node");
    cmd.arg(scripts().join("http_app.js"))
        .args(["8080", "exit"]);
    let mut app = Proc::spawn(&mut cmd, &cg, Some(&ns))?;
    app.expect_line("listening")?;
    let mut load = Load::new(&ns, "127.0.0.1:8080".parse::<SocketAddr>()?);
    load.wait_ready("/", Duration::from_secs(10))?;
    let idle = [load.idle("/")?, load.idle("/")?];
    // Quiet for longer than the kernel-side idle threshold (2 s) before the stop.
    agent.pump(Duration::from_millis(2500), None)?;
    let busy = load.in_flight("/slow?s=10", false)?;
    app.expect_line(&format!("start {busy}"))?;
    agent.pump(Duration::from_millis(300), None)?;
    app.signal(signal)?;
    let report = agent.report_for(cg.id, Duration::from_secs(15))?;
    let seen = load.finish()?;
    show(&report, &seen)?;

    // The clients' truth: the idle ones saw their connection end between requests, the busy
    // one lost its answer.
    for s in &seen {
        let ok = match s.kind {
            Kind::Idle => s.truth == Truth::EofIdle,
            _ => matches!(s.truth, Truth::EofMidResponse | Truth::Reset),
        };
        ensure!(ok, "{s:?}");
    }
    check_verdicts(&report, &seen, |s| {
        Some(if idle.contains(&s.port) {
            Verdict::ClosedIdle
        } else {
            Verdict::ClosedByExit
        })
    })?;
    ensure!(report.counts.cut == 1, "{:?}", report.counts);
    ensure!(report.counts.closed_idle == 2, "{:?}", report.counts);
    ensure!(report.has_flag(Flag::Cut), "{:?}", report.flags);
    ensure!(report.has_flag(Flag::ClosedIdle), "{:?}", report.flags);
    ensure!(
        report
            .summary
            .iter()
            .any(|s| s.starts_with("2 idle keep-alive connection(s) were closed")),
        "{:?}",
        report.summary
    );
    let first = &report.summary[0];
    let who = format!("(pid {})", app.pid());
    ensure!(first.contains(&who), "{first}");
    if signal == libc::SIGTERM {
        // Its own handler exited at once: a cut, not a missing handler nor a kill.
        ensure!(report.outcome == Outcome::Cut, "{:?}", report.outcome);
        ensure!(
            first.contains("took SIGTERM and exited after")
                && first.contains("but 1 connection(s) were cut"),
            "{first}"
        );
    } else {
        ensure!(report.outcome == Outcome::Killed, "{:?}", report.outcome);
        // SIGKILL was the stop signal: no grace period ran out.
        ensure!(
            first.contains("with no stop signal before it")
                && first.contains("1 connection(s) were cut"),
            "{first}"
        );
        ensure!(!first.contains("Lengthen the grace period"), "{first}");
    }
    Ok(())
}

#[test]
fn keepalive_clients_when_node_exits_at_once_on_sigterm() -> Result<()> {
    kernel_test!();
    node_stopped_with(libc::SIGTERM)
}

#[test]
fn keepalive_clients_when_node_is_killed() -> Result<()> {
    kernel_test!();
    node_stopped_with(libc::SIGKILL)
}
