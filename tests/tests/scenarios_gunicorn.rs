//! gunicorn (sync workers) stopped with SIGTERM (seed 000): the master forwards it to its
//! workers, which finish the request in hand; `--graceful-timeout` bounds that, after which
//! the master SIGKILLs them itself; and a runtime that gives up first (`docker stop -t 2`).

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::Result;
use termscope::terminations::report::{ExitHow, Flag, Outcome, Signal, TerminationReport, Verdict};
use termscope_tests::{
    Agent, NetNs, Proc, TestCgroup, kernel_test,
    load::{Load, Seen, Truth, check_verdicts, show},
    scripts,
};

struct Run {
    report: TerminationReport,
    /// The kernel's events for the container, for diagnostics.
    events: String,
    seen: Vec<Seen>,
    master: u32,
    worker: u32,
}

/// Starts gunicorn with one sync worker, puts a request of `request_s` seconds in flight,
/// sends SIGTERM to the master, and — when `kill_after` is given — SIGKILL to every process
/// of the container that long after (a runtime's grace period running out).
fn scenario(graceful_timeout: u32, request_s: u32, kill_after: Option<Duration>) -> Result<Run> {
    let mut agent = Agent::start(Duration::from_secs(20))?;
    let cg = TestCgroup::new("gunicorn")?;
    let ns = NetNs::new("gunicorn")?;
    let mut cmd = Command::new("/usr/bin/gunicorn");
    cmd.args([
        "--bind",
        "127.0.0.1:8080",
        "--workers",
        "1",
        "--worker-class",
        "sync",
    ])
    .args(["--graceful-timeout", &graceful_timeout.to_string()])
    .arg("--chdir")
    .arg(scripts())
    .arg("wsgi_app:application");
    let mut gunicorn = Proc::spawn(&mut cmd, &cg, Some(&ns))?;
    let mut load = Load::new(&ns, "127.0.0.1:8080".parse::<SocketAddr>()?);
    load.wait_ready("/", Duration::from_secs(15))?;

    let port = load.in_flight(&format!("/slow?s={request_s}"), false)?;
    let start = gunicorn.expect_line("start")?;
    let worker: u32 = start
        .split_whitespace()
        .nth(2)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad start line {start:?}"))?;
    anyhow::ensure!(start.contains(&port.to_string()), "{start:?} is not {port}");

    agent.pump(Duration::from_millis(200), None)?;
    gunicorn.signal(libc::SIGTERM)?;
    if let Some(grace) = kill_after {
        agent.pump(grace, None)?;
        cg.signal_all(libc::SIGKILL)?;
    }
    let report = agent.report_for(cg.id, Duration::from_secs(15))?;
    let events = agent.events_of(cg.id)?;
    let seen = load.finish()?;
    show(&report, &seen)?;
    let master = gunicorn.pid();
    assert_eq!(report.subject.main.pid, master);
    Ok(Run {
        report,
        events,
        seen,
        master,
        worker,
    })
}

/// The master's SIGTERM to its worker: from inside the container.
fn assert_forwarded(r: &Run, sig: Signal) {
    assert!(
        r.report.stop_signals.iter().any(|s| s.internal
            && s.signal == sig
            && s.sender.pid == r.master
            && s.target.pid == r.worker),
        "no {sig} from the master to the worker: {:?}",
        r.report.stop_signals
    );
}

#[test]
fn gunicorn_sigterm_finishes_the_request_in_flight() -> Result<()> {
    kernel_test!();
    let r = scenario(5, 1, None)?;
    assert!(
        r.seen.iter().all(|s| s.truth == Truth::Completed),
        "{:?}",
        r.seen
    );
    check_verdicts(&r.report, &r.seen, |_| Some(Verdict::Completed))?;
    assert_eq!(r.report.outcome, Outcome::Graceful);
    assert_eq!(r.report.counts.cut, 0);
    assert!(r.report.flags.is_empty(), "{:?}", r.report.flags);
    assert_forwarded(&r, Signal::TERM);
    // The worker finished its request and exited; then the master.
    assert!(
        r.report
            .exits
            .iter()
            .all(|e| e.how == ExitHow::Exited && e.code == Some(0)),
        "{:?}",
        r.report.exits
    );
    assert!(r.report.exits.iter().any(|e| e.pid == r.worker));
    assert!(r.report.exits.iter().any(|e| e.pid == r.master));
    Ok(())
}

/// `--graceful-timeout 1` and a 10 s request: the master SIGKILLs its worker after 1 s.
fn graceful_timeout_run() -> Result<Run> {
    let r = scenario(1, 10, None)?;
    assert!(
        r.seen
            .iter()
            .all(|s| matches!(s.truth, Truth::EofMidResponse | Truth::Reset)),
        "{:?}",
        r.seen
    );
    Ok(r)
}

#[test]
fn gunicorn_graceful_timeout_kills_the_worker() -> Result<()> {
    kernel_test!();
    let r = graceful_timeout_run()?;
    check_verdicts(&r.report, &r.seen, |_| Some(Verdict::ClosedByExit))?;
    assert_forwarded(&r, Signal::TERM);
    assert_forwarded(&r, Signal::KILL);
    assert!(
        r.report
            .exits
            .iter()
            .any(|e| e.pid == r.worker && e.signal == Some(Signal::KILL)),
        "{:?}",
        r.report.exits
    );
    assert!(r.report.has_flag(Flag::Cut));
    assert_eq!(r.report.counts.closed_by_exit, 1);
    // gunicorn's master SIGKILLing its worker after graceful_timeout is an escalation.
    assert_eq!(r.report.outcome, Outcome::Killed);
    Ok(())
}

/// What the outcome should be: gunicorn's `graceful_timeout` is the app's grace period, and
/// when it ran out the master killed the worker (and its request) with SIGKILL.
#[test]
fn gunicorn_graceful_timeout_is_reported_as_killed() -> Result<()> {
    kernel_test!();
    let r = graceful_timeout_run()?;
    println!("events:\n{}", r.events);
    assert_eq!(r.report.outcome, Outcome::Killed);
    assert!(r.report.has_flag(Flag::Killed));
    assert!(
        r.report.summary[0].contains("SIGKILL"),
        "{:?}",
        r.report.summary
    );
    Ok(())
}

#[test]
fn gunicorn_sigterm_then_runtime_sigkill() -> Result<()> {
    kernel_test!();
    let r = scenario(5, 10, Some(Duration::from_secs(2)))?;
    assert!(
        r.seen
            .iter()
            .all(|s| matches!(s.truth, Truth::EofMidResponse | Truth::Reset)),
        "{:?}",
        r.seen
    );
    check_verdicts(&r.report, &r.seen, |_| Some(Verdict::ClosedByExit))?;
    assert_eq!(r.report.outcome, Outcome::Killed);
    assert!(r.report.has_flag(Flag::Killed));
    assert!(r.report.has_flag(Flag::Cut));
    assert_forwarded(&r, Signal::TERM);
    let killed: Vec<_> = r
        .report
        .exits
        .iter()
        .filter(|e| e.signal == Some(Signal::KILL))
        .map(|e| e.pid)
        .collect();
    assert!(
        killed.contains(&r.master) && killed.contains(&r.worker),
        "{:?}",
        r.report.exits
    );
    assert!(
        r.report.summary[0].contains("SIGKILL") && r.report.summary[0].contains("grace period"),
        "{:?}",
        r.report.summary
    );
    Ok(())
}
