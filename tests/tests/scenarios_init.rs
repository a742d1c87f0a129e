//! A server behind a forwarding init as PID 1 of the container's PID namespace: Debian's
//! `tini` (what `docker run --init` runs) and `dumb-init` (which runs the app in a session of
//! its own and forwards a signal to its whole process group). The runtime's SIGTERM goes to
//! the init, which passes it on to the app. The advice names the app, not the init; a
//! graceful app behind it cuts nothing, and one without a handler is named as the process
//! that died of the default action.

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::{Result, ensure};
use termscope::terminations::report::{Outcome, Signal, Verdict};
use termscope_tests::{
    Agent, NetNs, Proc, TestCgroup, child_of, kernel_test, kill,
    load::{Load, Truth, check_verdicts, show},
    scripts,
};

/// An init (`init_cmd`: its command line up to the app's, the first word its name) as PID 1
/// running the Node.js app in `mode`; one idle keep-alive client and one request in flight
/// when the runtime sends SIGTERM to the init.
fn behind_init(init_cmd: &[&str], mode: &str) -> Result<()> {
    let name = init_cmd[0];
    let mut agent = Agent::start(Duration::from_secs(20))?;
    let cg = TestCgroup::new(name)?;
    let ns = NetNs::new(name)?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .args(init_cmd)
        .arg("node")
        .arg(scripts().join("http_app.js"))
        .args(["8080", mode]);
    let mut container = Proc::spawn(&mut cmd, &cg, Some(&ns))?;
    container.expect_line("listening")?;
    let init = child_of(container.pid())?;
    let app = child_of(init)?;
    let mut load = Load::new(&ns, "127.0.0.1:8080".parse::<SocketAddr>()?);
    load.wait_ready("/", Duration::from_secs(10))?;
    let idle = load.idle("/")?;
    agent.pump(Duration::from_millis(2500), None)?;
    let busy = load.in_flight("/slow?s=1", false)?;
    container.expect_line(&format!("start {busy}"))?;
    agent.pump(Duration::from_millis(200), None)?;
    kill(init, libc::SIGTERM)?;
    let report = agent.report_for(cg.id, Duration::from_secs(15))?;
    let seen = load.finish()?;
    show(&report, &seen)?;

    // The init passed the runtime's SIGTERM on to the app.
    ensure!(
        report.stop_signals.iter().any(|s| s.internal
            && s.signal == Signal::TERM
            && s.sender.pid == init
            && s.target.pid == app),
        "{:?}",
        report.stop_signals
    );
    ensure!(report.subject.main.pid == init, "{:?}", report.subject.main);
    let first = &report.summary[0];
    let named = format!("(pid {app})");
    ensure!(first.contains(&named), "the app is not named: {first}");
    ensure!(
        !report.summary.iter().any(|s| s.contains(name)),
        "{:?}",
        report.summary
    );
    if mode == "drain" {
        // The app closed its idle client and answered the busy one: nothing cut.
        ensure!(
            seen.iter()
                .all(|s| matches!(s.truth, Truth::Completed | Truth::EofIdle)),
            "{seen:?}"
        );
        check_verdicts(&report, &seen, |_| Some(Verdict::Completed))?;
        ensure!(report.outcome == Outcome::Graceful, "{:?}", report.outcome);
        ensure!(report.counts.cut == 0, "{:?}", report.counts);
        ensure!(first.contains("took SIGTERM and exited after"), "{first}");
    } else {
        // No handler: the app died of SIGTERM's default action, its request with it.
        check_verdicts(&report, &seen, |s| {
            Some(if s.port == idle {
                Verdict::ClosedIdle
            } else {
                Verdict::ClosedByExit
            })
        })?;
        ensure!(report.outcome == Outcome::NoHandler, "{:?}", report.outcome);
        ensure!(report.counts.cut == 1, "{:?}", report.counts);
        ensure!(first.contains("has no handler for SIGTERM"), "{first}");
    }
    Ok(())
}

const TINI: &[&str] = &["tini", "--"];
const DUMB_INIT: &[&str] = &["dumb-init"];

#[test]
fn a_graceful_app_behind_tini_cuts_nothing_and_is_named() -> Result<()> {
    kernel_test!();
    behind_init(TINI, "drain")
}

#[test]
fn an_app_without_a_handler_behind_tini_is_named() -> Result<()> {
    kernel_test!();
    behind_init(TINI, "default")
}

#[test]
fn a_graceful_app_behind_dumb_init_cuts_nothing_and_is_named() -> Result<()> {
    kernel_test!();
    behind_init(DUMB_INIT, "drain")
}

#[test]
fn an_app_without_a_handler_behind_dumb_init_is_named() -> Result<()> {
    kernel_test!();
    behind_init(DUMB_INIT, "default")
}
