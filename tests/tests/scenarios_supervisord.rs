//! supervisord as a container's init (seed 002): the runtime stops the container with SIGTERM
//! to supervisord, which sends the program its `stopsignal` (TERM), waits `stopwaitsecs` (2 s)
//! and, the program still running, kills it with SIGKILL — all inside the container. Traffic
//! keeps coming all along: served late while the program ignores TERM, refused once it is
//! dead and supervisord is still winding down.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Result;
use termscope::terminations::report::{
    ExitHow, Flag, Outcome, Signal, StepKind, TerminationReport, Verdict,
};
use termscope_tests::{
    Agent, NetNs, Proc, TempDir, TestCgroup, kernel_test,
    load::{Kind, Load, Seen, Truth, check_knocks, check_verdicts, show},
    scripts,
};

const STOPWAITSECS: u64 = 2;

/// A supervisord configuration running `http_app.py 8080 stubborn` (an app that keeps
/// serving after SIGTERM) with `stopsignal=TERM`, `stopwaitsecs=2`; the program's output goes
/// to supervisord's stdout.
fn supervisord_config(dir: &TempDir) -> Result<std::path::PathBuf> {
    let d = dir.path.display();
    let app = scripts().join("http_app.py");
    dir.write(
        "supervisord.conf",
        format!(
            r#"[supervisord]
nodaemon=true
user=root
logfile={d}/supervisord.log
pidfile={d}/supervisord.pid
childlogdir={d}

[unix_http_server]
file={d}/supervisor.sock

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{d}/supervisor.sock

[program:prog]
command=/usr/bin/python3 -u {app} 8080 stubborn
stopsignal=TERM
stopwaitsecs={STOPWAITSECS}
startsecs=0
autorestart=false
redirect_stderr=true
stdout_logfile=/dev/stdout
stdout_logfile_maxbytes=0
"#,
            app = app.display()
        ),
    )
}

struct Setup {
    agent: Agent,
    cg: TestCgroup,
    ns: NetNs,
    dir: TempDir,
    conf: std::path::PathBuf,
    supervisord: Proc,
}

fn start() -> Result<Setup> {
    let agent = Agent::start(Duration::from_secs(20))?;
    let cg = TestCgroup::new("supervisord")?;
    let ns = NetNs::new("supervisord")?;
    let dir = TempDir::new("supervisord")?;
    let conf = supervisord_config(&dir)?;
    let mut cmd = Command::new("/usr/bin/supervisord");
    cmd.arg("-n").arg("-c").arg(&conf);
    let mut supervisord = Proc::spawn(&mut cmd, &cg, Some(&ns))?;
    supervisord.expect_line("listening")?;
    Ok(Setup {
        agent,
        cg,
        ns,
        dir,
        conf,
        supervisord,
    })
}

/// A 10 s request in flight in the program when the container is stopped.
fn in_flight(supervisord: &mut Proc, load: &mut Load<'_>) -> Result<u16> {
    load.wait_ready("/", Duration::from_secs(10))?;
    let port = load.in_flight("/slow?s=10", false)?;
    supervisord.expect_line(&format!("start {port}"))?;
    Ok(port)
}

struct Run {
    report: TerminationReport,
    /// The kernel's events for the container, for diagnostics.
    events: String,
    seen: Vec<Seen>,
    signalled: Instant,
    supervisord: u32,
}

/// `docker stop`: SIGTERM to supervisord, the container's init.
fn stop_container() -> Result<Run> {
    let mut s = start()?;
    let mut load = Load::new(&s.ns, "127.0.0.1:8080".parse::<SocketAddr>()?);
    in_flight(&mut s.supervisord, &mut load)?;
    load.knock("/", Duration::from_millis(200))?;
    s.agent.pump(Duration::from_millis(300), None)?;
    let signalled = Instant::now();
    s.supervisord.signal(libc::SIGTERM)?;
    // Keep knocking until supervisord is gone: its last refusals fall within the linger.
    while s.supervisord.try_exit()?.is_none() {
        anyhow::ensure!(
            signalled.elapsed() < Duration::from_secs(15),
            "supervisord did not exit"
        );
        s.agent.pump(Duration::from_millis(50), None)?;
    }
    let seen = load.finish()?;
    let report = s.agent.report_for(s.cg.id, Duration::from_secs(15))?;
    let events = s.agent.events_of(s.cg.id)?;
    show(&report, &seen)?;
    println!(
        "supervisord log:\n{}",
        std::fs::read_to_string(s.dir.join("supervisord.log"))?
    );
    assert!(
        seen.iter()
            .filter(|c| c.kind == Kind::InFlight)
            .all(|c| matches!(c.truth, Truth::EofMidResponse | Truth::Reset)),
        "{seen:?}"
    );
    Ok(Run {
        report,
        events,
        seen,
        signalled,
        supervisord: s.supervisord.pid(),
    })
}

#[test]
fn supervisord_stopped_by_the_runtime_escalates_to_sigkill() -> Result<()> {
    kernel_test!();
    let r = stop_container()?;
    let rep = &r.report;
    check_verdicts(rep, &r.seen, |_| Some(Verdict::ClosedByExit))?;
    for flag in [Flag::Cut, Flag::LateTraffic] {
        assert!(rep.has_flag(flag), "{:?}", rep.flags);
    }
    // The traffic that kept coming: served while the program ignored TERM (accepted late),
    // refused between its death and supervisord's exit (up to 1 s: supervisord's main loop
    // ticks once a second, so there may be none).
    let refused = check_knocks(rep, &r.seen, r.signalled)?;
    println!("{refused} refused");
    assert!(rep.counts.accepted_late >= 1, "{:?}", rep.counts);
    // Cut: the request in flight, the refused attempts, and an attempt that happened to be
    // in progress when the program died, if any.
    let knocks_cut = r
        .seen
        .iter()
        .filter(|s| {
            s.kind == Kind::Knock && matches!(s.truth, Truth::Reset | Truth::EofMidResponse)
        })
        .count();
    assert_eq!(
        rep.counts.cut as usize,
        1 + refused + knocks_cut,
        "{:?}",
        rep.counts
    );

    // The runtime's SIGTERM to supervisord opened the termination...
    let first = &rep.stop_signals[0];
    assert_eq!(first.signal, Signal::TERM);
    assert!(!first.internal);
    assert_eq!(first.target.pid, r.supervisord);
    assert_eq!(rep.subject.main.pid, r.supervisord);
    // ...then supervisord sent the program TERM, and SIGKILL `stopwaitsecs` later, from
    // inside the container.
    let prog = rep
        .stop_signals
        .iter()
        .find(|s| s.internal && s.signal == Signal::TERM && s.sender.pid == r.supervisord)
        .ok_or_else(|| anyhow::anyhow!("no TERM from supervisord: {:?}", rep.stop_signals))?;
    let kill = rep
        .stop_signals
        .iter()
        .find(|s| s.internal && s.signal == Signal::KILL && s.sender.pid == r.supervisord)
        .ok_or_else(|| anyhow::anyhow!("no SIGKILL from supervisord: {:?}", rep.stop_signals))?;
    assert_eq!(kill.target.pid, prog.target.pid);
    let waited = kill.t_ms - prog.t_ms;
    assert!(
        waited >= (STOPWAITSECS * 1000 - 100) as f64,
        "SIGKILL {waited} ms after TERM"
    );
    assert!(
        rep.timeline.iter().any(|s| s.what == StepKind::Handler
            && s.detail.contains(&format!(
                "(pid {}): its own handler took SIGTERM",
                prog.target.pid
            ))),
        "no handler step for pid {}: {:?}",
        prog.target.pid,
        rep.timeline
    );
    // The program died of the SIGKILL; supervisord exited on its own.
    assert!(
        rep.exits.iter().any(|e| e.pid == prog.target.pid
            && e.how == ExitHow::Signaled
            && e.signal == Some(Signal::KILL)),
        "pid {} not killed: {:?}",
        prog.target.pid,
        rep.exits
    );
    assert!(
        rep.exits
            .iter()
            .any(|e| e.pid == r.supervisord && e.how == ExitHow::Exited),
        "supervisord (pid {}) did not exit: {:?}",
        r.supervisord,
        rep.exits
    );
    // supervisord's SIGKILL after stopwaitsecs is an escalation: killed.
    assert_eq!(rep.outcome, Outcome::Killed);
    Ok(())
}

/// What the outcome should be: the program was killed by SIGKILL when supervisord's grace
/// period (`stopwaitsecs`) ran out.
#[test]
fn supervisord_stopwaitsecs_escalation_is_reported_as_killed() -> Result<()> {
    kernel_test!();
    let r = stop_container()?;
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

/// `supervisorctl stop prog`: supervisord stops its program on its own; the container keeps
/// running. Signals from inside the container open no termination: no report.
#[test]
fn supervisorctl_stop_is_not_a_container_termination() -> Result<()> {
    kernel_test!();
    let mut s = start()?;
    let mut load = Load::new(&s.ns, "127.0.0.1:8080".parse::<SocketAddr>()?);
    in_flight(&mut s.supervisord, &mut load)?;
    let out = Command::new("/usr/bin/supervisorctl")
        .arg("-c")
        .arg(&s.conf)
        .args(["stop", "prog"])
        .output()?;
    println!("supervisorctl: {}", String::from_utf8_lossy(&out.stdout));
    s.agent.pump(Duration::from_secs(1), None)?;
    let seen = load.finish()?;
    assert!(
        seen.iter()
            .all(|c| matches!(c.truth, Truth::EofMidResponse | Truth::Reset)),
        "{seen:?}"
    );
    // No report, and nothing in progress for this container. (The agent's probes see the
    // other tests' signals too: only this cgroup matters here.)
    assert!(s.agent.report_for(s.cg.id, Duration::from_secs(1)).is_err());
    let open = s.agent.pipeline.flush();
    assert!(
        !open.iter().any(|r| r.subject.cgroup_id == s.cg.id),
        "{open:?}"
    );
    Ok(())
}
