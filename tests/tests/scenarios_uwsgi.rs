//! uWSGI 2.0 and its signals (seed 002): SIGTERM without `--die-on-term` "brutally reloads"
//! (workers die, the instance lives on), SIGINT kills the whole stack at once, and with
//! `--die-on-term` SIGTERM shuts the instance down.

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::Result;
use termscope::terminations::report::{Flag, Outcome, TerminationReport, Verdict};
use termscope_tests::{
    Agent, Marks, NetNs, Proc, TempDir, TestCgroup, kernel_test,
    load::{Load, Seen, Truth, check_verdicts, show},
    scripts,
};

/// Requests in flight at the stop signal: one per worker.
const IN_FLIGHT: usize = 2;

struct Run {
    report: TerminationReport,
    seen: Vec<Seen>,
    master: u32,
}

fn scenario(die_on_term: bool, signal: i32, survive_after: Duration) -> Result<Run> {
    let mut agent = Agent::start(survive_after)?;
    let cg = TestCgroup::new("uwsgi")?;
    let ns = NetNs::new("uwsgi")?;
    let dir = TempDir::new("uwsgi")?;
    let marks = Marks::new(&dir);
    let mut cmd = Command::new("/usr/bin/uwsgi");
    cmd.args([
        "--http-socket",
        "127.0.0.1:8080",
        "--master",
        "--processes",
        "2",
    ])
    .args(["--plugin", "python3", "--need-app", "--disable-logging"])
    .arg("--wsgi-file")
    .arg(scripts().join("wsgi_app.py"))
    .env("MARKS", &marks.path);
    if die_on_term {
        cmd.arg("--die-on-term");
    }
    let uwsgi = Proc::spawn(&mut cmd, &cg, Some(&ns))?;
    let mut load = Load::new(&ns, "127.0.0.1:8080".parse::<SocketAddr>()?);
    load.wait_ready("/", Duration::from_secs(15))?;

    for _ in 0..IN_FLIGHT {
        load.in_flight("/slow?s=3", false)?;
    }
    marks.wait("start", IN_FLIGHT, Duration::from_secs(10))?;
    agent.pump(Duration::from_millis(200), None)?;
    uwsgi.signal(signal)?;
    let report = agent.report_for(cg.id, survive_after + Duration::from_secs(10))?;
    let seen = load.finish()?;
    show(&report, &seen)?;
    let master = uwsgi.pid();
    assert_eq!(report.subject.main.pid, master);
    assert_eq!(report.subject.main.comm, "uwsgi");
    Ok(Run {
        report,
        seen,
        master,
    })
}

fn assert_cut_in_flight(r: &Run) -> Result<()> {
    assert!(
        r.seen
            .iter()
            .all(|s| matches!(s.truth, Truth::EofMidResponse | Truth::Reset)),
        "{:?}",
        r.seen
    );
    check_verdicts(&r.report, &r.seen, |_| Some(Verdict::ClosedByExit))?;
    assert_eq!(r.report.counts.closed_by_exit as usize, IN_FLIGHT);
    assert!(r.report.has_flag(Flag::Cut));
    Ok(())
}

#[test]
fn uwsgi_sigterm_reloads_and_survives() -> Result<()> {
    kernel_test!();
    let r = scenario(false, libc::SIGTERM, Duration::from_secs(4))?;
    assert_cut_in_flight(&r)?;
    assert_eq!(r.report.outcome, Outcome::Survived);
    assert!(r.report.has_flag(Flag::Survived));
    assert!(
        r.report.summary.iter().any(|s| s.contains("--die-on-term")),
        "no uWSGI advice: {:?}",
        r.report.summary
    );
    // The master lived on.
    assert!(!r.report.exits.iter().any(|e| e.pid == r.master));
    Ok(())
}

#[test]
fn uwsgi_sigint_kills_the_stack() -> Result<()> {
    kernel_test!();
    let r = scenario(false, libc::SIGINT, Duration::from_secs(20))?;
    assert_cut_in_flight(&r)?;
    assert_eq!(r.report.outcome, Outcome::Cut);
    assert!(r.report.exits.iter().any(|e| e.pid == r.master));
    Ok(())
}

#[test]
fn uwsgi_die_on_term_sigterm_shuts_down() -> Result<()> {
    kernel_test!();
    let r = scenario(true, libc::SIGTERM, Duration::from_secs(20))?;
    assert_cut_in_flight(&r)?;
    assert_eq!(r.report.outcome, Outcome::Cut);
    assert!(r.report.exits.iter().any(|e| e.pid == r.master));
    Ok(())
}
