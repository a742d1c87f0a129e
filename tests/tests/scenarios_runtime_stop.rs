//! A runtime's grace period running out (`docker stop -t 3`, a pod's
//! `terminationGracePeriodSeconds`; seeds 002/003/004): the app takes SIGTERM and starts to
//! drain, but its requests need 10 s; 3 s later the runtime kills every process with SIGKILL.

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::{Context, Result};
use termscope::terminations::report::{Flag, Outcome, Signal, StepKind, Verdict};
use termscope_tests::{
    Agent, NetNs, Proc, TestCgroup, kernel_test,
    load::{Kind, Load, Truth, check_verdicts, show},
    scripts,
};

const GRACE: Duration = Duration::from_secs(3);

#[test]
fn runtime_sigkill_after_the_grace_period() -> Result<()> {
    kernel_test!();
    let mut agent = Agent::start(Duration::from_secs(20))?;
    let cg = TestCgroup::new("stop")?;
    let ns = NetNs::new("stop")?;
    let mut cmd = Command::new("python3");
    cmd.arg("-u")
        .arg(scripts().join("http_app.py"))
        .args(["8080", "drain"]);
    let mut app = Proc::spawn(&mut cmd, &cg, Some(&ns))?;
    app.expect_line("listening")?;
    let mut load = Load::new(&ns, "127.0.0.1:8080".parse::<SocketAddr>()?);
    load.wait_ready("/", Duration::from_secs(10))?;
    load.idle("/")?;
    for _ in 0..2 {
        let port = load.in_flight("/slow?s=10", false)?;
        app.expect_line(&format!("start {port}"))?;
    }

    agent.pump(Duration::from_millis(200), None)?;
    app.signal(libc::SIGTERM)?;
    // `docker stop -t 3`: SIGTERM, then, the app still draining, SIGKILL to all.
    agent.pump(GRACE, None)?;
    cg.signal_all(libc::SIGKILL)?;
    let report = agent.report_for(cg.id, Duration::from_secs(15))?;
    let seen = load.finish()?;
    show(&report, &seen)?;

    for s in &seen {
        match s.kind {
            Kind::Idle => assert_eq!(s.truth, Truth::EofIdle, "{s:?}"),
            _ => assert!(
                matches!(s.truth, Truth::EofMidResponse | Truth::Reset),
                "{s:?}"
            ),
        }
    }
    // The kernel closed all of them when the process died; the idle keep-alive connection
    // (its request answered, quiet since) lost nothing, the requests in flight their answers.
    check_verdicts(&report, &seen, |s| {
        Some(match s.kind {
            Kind::Idle => Verdict::ClosedIdle,
            _ => Verdict::ClosedByExit,
        })
    })?;
    assert_eq!(report.outcome, Outcome::Killed);
    for flag in [Flag::Cut, Flag::Killed] {
        assert!(report.has_flag(flag), "{:?}", report.flags);
    }
    assert_eq!(report.counts.closed_by_exit, 2);
    assert_eq!(report.counts.closed_idle, 1);
    assert_eq!(report.counts.cut, 2);
    assert_eq!(report.subject.main.pid, app.pid());
    // SIGTERM, its handler, then the runtime's SIGKILL.
    let sigs: Vec<_> = report
        .stop_signals
        .iter()
        .map(|s| (s.signal, s.internal))
        .collect();
    assert_eq!(sigs, [(Signal::TERM, false), (Signal::KILL, false)]);
    assert!(report.timeline.iter().any(|s| s.what == StepKind::Handler));
    assert!(report.timeline.iter().any(|s| s.what == StepKind::Sigkill));
    assert!(report.exits.iter().all(|e| e.signal == Some(Signal::KILL)));
    // The shutdown lasted the grace period (and not the 10 s the requests needed).
    let grace_ms = GRACE.as_millis() as f64;
    assert!(
        report.shutdown_ms >= grace_ms - 50.0 && report.shutdown_ms < grace_ms + 2000.0,
        "shutdown {} ms",
        report.shutdown_ms
    );
    // "... was killed by SIGKILL from <sender> 3.0 s after SIGTERM: it did not finish within
    // the grace period ..."
    let summary = &report.summary[0];
    assert!(summary.contains("grace period"), "{summary}");
    let after: f64 = summary
        .split(" s after SIGTERM")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no delay in {summary:?}"))?;
    assert!((2.9..3.6).contains(&after), "{summary}");
    Ok(())
}
