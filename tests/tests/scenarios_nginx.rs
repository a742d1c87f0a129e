//! nginx stopped with SIGTERM (fast shutdown: open connections are dropped) and with SIGQUIT
//! (graceful: in-flight responses finish, idle keep-alive connections are closed by nginx
//! itself). Seeds 000/001: `STOPSIGNAL SIGQUIT`, or `nginx -s quit` in a preStop hook.

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::Result;
use termscope::terminations::report::{ExitHow, Flag, Outcome, StepKind, Verdict};
use termscope_tests::{
    Agent, NetNs, Proc, TempDir, TestCgroup, kernel_test,
    load::{Kind, Load, Truth, check_verdicts, show},
    nginx,
};

/// Idle keep-alive connections and slow responses in flight at the stop signal.
const IDLE: usize = 3;
const IN_FLIGHT: usize = 2;
fn scenario(signal: i32) -> Result<()> {
    let mut agent = Agent::start(Duration::from_secs(20))?;
    let cg = TestCgroup::new("nginx")?;
    let ns = NetNs::new("nginx")?;
    let dir = TempDir::new("nginx")?;
    let conf = nginx::write_config(&dir, &dir.path.display().to_string(), "127.0.0.1:8080")?;
    let mut cmd = Command::new("/usr/sbin/nginx");
    cmd.arg("-p")
        .arg(&dir.path)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf);
    let nginx = Proc::spawn(&mut cmd, &cg, Some(&ns))?;
    let addr: SocketAddr = "127.0.0.1:8080".parse()?;
    let mut load = Load::new(&ns, addr);
    load.wait_ready("/index.html", Duration::from_secs(10))?;

    for _ in 0..IDLE {
        load.idle("/index.html")?;
    }
    // Idle means quiet: nothing moved on them for a while before the stop signal.
    agent.pump(Duration::from_millis(2500), None)?;
    for _ in 0..IN_FLIGHT {
        load.in_flight("/slow/big.bin", true)?;
    }
    // The responses are streaming: stop nginx (its master process).
    agent.pump(Duration::from_millis(300), None)?;
    nginx.signal(signal)?;
    let report = agent.report_for(cg.id, Duration::from_secs(15))?;
    let seen = load.finish()?;
    show(&report, &seen)?;
    println!(
        "nginx error log:\n{}",
        std::fs::read_to_string(dir.join("error.log"))?
    );

    assert_eq!(report.subject.main.pid, nginx.pid());
    assert_eq!(report.subject.main.comm, "nginx");
    if signal == libc::SIGTERM {
        // Fast shutdown: the workers exit at once and the kernel closes what they held.
        for s in &seen {
            match s.kind {
                Kind::Idle => assert_eq!(s.truth, Truth::EofIdle, "{s:?}"),
                _ => assert!(
                    matches!(s.truth, Truth::EofMidResponse | Truth::Reset),
                    "{s:?}"
                ),
            }
        }
        // The downloads were cut; the idle keep-alive connections lost nothing.
        check_verdicts(&report, &seen, |s| {
            Some(match s.kind {
                Kind::Idle => Verdict::ClosedIdle,
                _ => Verdict::ClosedByExit,
            })
        })?;
        assert_eq!(report.outcome, Outcome::Cut);
        assert!(report.has_flag(Flag::Cut), "{:?}", report.flags);
        assert_eq!(report.counts.closed_by_exit as usize, IN_FLIGHT);
        assert_eq!(report.counts.closed_idle as usize, IDLE);
        assert_eq!(report.counts.cut as usize, IN_FLIGHT);
        assert!(
            report.summary.iter().any(|s| s.contains("SIGQUIT")),
            "no SIGQUIT advice: {:?}",
            report.summary
        );
    } else {
        // Graceful: the responses finish, nginx closes the idle connections itself.
        for s in &seen {
            match s.kind {
                Kind::Idle => assert_eq!(s.truth, Truth::EofIdle, "{s:?}"),
                _ => assert_eq!(s.truth, Truth::Completed, "{s:?}"),
            }
        }
        check_verdicts(&report, &seen, |_| Some(Verdict::Completed))?;
        assert_eq!(report.outcome, Outcome::Graceful);
        assert_eq!(report.counts.cut, 0);
        assert_eq!(report.counts.completed as usize, IDLE + IN_FLIGHT);
        assert!(report.flags.is_empty(), "{:?}", report.flags);
        assert!(!report.summary.iter().any(|s| s.contains("fast shutdown")));
    }
    // The master tells its workers over its channel (a socketpair), not with kill(2): the
    // one stop signal is the test's, and the master and both workers exit on their own.
    assert_eq!(report.stop_signals.len(), 1, "{:?}", report.stop_signals);
    assert_eq!(report.exits.len(), 3, "{:?}", report.exits);
    assert!(
        report
            .exits
            .iter()
            .all(|e| e.how == ExitHow::Exited && e.code == Some(0)),
        "{:?}",
        report.exits
    );
    assert!(
        report
            .timeline
            .iter()
            .any(|s| s.what == StepKind::ListenerClosed)
    );
    Ok(())
}

#[test]
fn nginx_sigterm_is_a_fast_shutdown_that_cuts() -> Result<()> {
    kernel_test!();
    scenario(libc::SIGTERM)
}

#[test]
fn nginx_sigquit_drains_gracefully() -> Result<()> {
    kernel_test!();
    scenario(libc::SIGQUIT)
}
