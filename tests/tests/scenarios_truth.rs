//! Verdicts that say what the client really lost (issue 8), each with a real program and
//! clients that record, connection by connection, what they saw:
//!
//! - a process-per-connection server (busybox `nc -ll -e`, inetd style) whose workers exit
//!   after their client's goodbye: nothing was cut;
//! - nginx as a reverse proxy with a pooled upstream, soft-stopped (SIGQUIT) and hard-stopped
//!   (SIGTERM): its clients and its own upstream connections are counted apart;
//! - an app behind a shell wrapper that is PID 1 of its PID namespace: the stop signal never
//!   reaches it, and the advice says `exec` / an init, not a longer grace period;
//! - supervisord configured with a reload signal (HUP) as the stop signal of gunicorn: the
//!   advice names the right stop signal.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use termscope::terminations::report::{
    Direction, Flag, Outcome, Signal, SignalResult, TerminationReport, Verdict,
};
use termscope_tests::{
    Agent, NetNs, Proc, TempDir, TestCgroup, child_of, kernel_test, kill,
    load::{Load, Truth, check_verdicts, outbound, pool_then_stop, show},
    scripts,
};

/// What one client of the process-per-connection server saw.
#[derive(Debug)]
struct Goodbye {
    port: u16,
    /// Every line it sent came back, and the server's FIN came after its own.
    echoed_all: bool,
}

/// Connects, sends `hello`, reads it back; returns the stream for the goodbye.
fn hello(ns: &NetNs, addr: SocketAddr) -> Result<TcpStream> {
    let mut s = ns.enter(move || TcpStream::connect(addr))??;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"hello\n")?;
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf)?;
    ensure!(&buf == b"hello\n", "{buf:?}");
    Ok(s)
}

/// Sends `bye`, closes its side, reads the echo and the server's FIN.
fn goodbye(mut s: TcpStream) -> Result<Goodbye> {
    let port = s.local_addr()?.port();
    s.write_all(b"bye\n")?;
    s.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    let echoed_all = match s.read_to_end(&mut rest) {
        Ok(_) => rest == b"bye\n",
        Err(_) => false,
    };
    Ok(Goodbye { port, echoed_all })
}

#[test]
fn process_per_connection_workers_exit_after_the_clients_goodbye() -> Result<()> {
    kernel_test!();
    const CLIENTS: usize = 3;
    let mut agent = Agent::start(Duration::from_secs(20))?;
    let cg = TestCgroup::new("inetd")?;
    let ns = NetNs::new("inetd")?;
    // busybox nc as a persistent server: one `busybox cat` per connection, which exits at
    // its client's FIN without closing the socket; the kernel closes it at the exit.
    let mut cmd = Command::new("busybox");
    cmd.args(["nc", "-ll", "-p", "8080", "-e", "busybox", "cat"]);
    let server = Proc::spawn(&mut cmd, &cg, Some(&ns))?;
    let addr: SocketAddr = "127.0.0.1:8080".parse()?;
    let mut streams = Vec::new();
    for attempt in 0.. {
        match hello(&ns, addr) {
            Ok(s) => {
                streams.push(s);
                if streams.len() == CLIENTS {
                    break;
                }
            }
            Err(e) if attempt < 50 && streams.is_empty() => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
    agent.pump(Duration::from_millis(300), None)?;
    // The container is stopped: the listener dies at once, the workers finish with their
    // clients, who say goodbye.
    server.signal(libc::SIGTERM)?;
    agent.pump(Duration::from_millis(300), None)?;
    let mut seen = Vec::new();
    for s in streams {
        seen.push(goodbye(s)?);
    }
    let report = agent.report_for(cg.id, Duration::from_secs(15))?;
    println!("clients: {seen:?}");
    println!("report: {}", serde_json::to_string_pretty(&report)?);

    ensure!(seen.iter().all(|g| g.echoed_all), "{seen:?}");
    for g in &seen {
        let c = report
            .connections
            .iter()
            .find(|c| c.remote.port() == g.port)
            .with_context(|| format!("client port {} not in the report", g.port))?;
        ensure!(
            c.verdict == Verdict::PeerClosedFirst,
            "client {} said goodbye first and lost nothing: {c:?}",
            g.port
        );
        // The worker's exit closed it (not the listener's death).
        ensure!(
            c.closed_by.as_ref().is_some_and(|p| p.pid != server.pid()),
            "{c:?}"
        );
        ensure!(c.in_flight.is_some_and(|f| f.peer_closed), "{c:?}");
    }
    ensure!(report.counts.cut == 0, "{:?}", report.counts);
    ensure!(
        report.counts.peer_closed_first as usize == CLIENTS,
        "{:?}",
        report.counts
    );
    ensure!(!report.has_flag(Flag::Cut), "{:?}", report.flags);
    ensure!(
        report
            .summary
            .iter()
            .any(|s| s.starts_with(&format!("{CLIENTS} connection(s) were closed after"))),
        "{:?}",
        report.summary
    );
    Ok(())
}

const UPSTREAM: u16 = 9000;

/// nginx as a reverse proxy to `127.0.0.1:9000` with a pool of keep-alive upstream
/// connections.
fn proxy_config(dir: &TempDir) -> Result<std::path::PathBuf> {
    let d = dir.path.display().to_string();
    dir.write(
        "nginx.conf",
        termscope_tests::nginx::config(
            &d,
            1,
            &format!(
                r#"    upstream backend {{
        server 127.0.0.1:{UPSTREAM};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:8080;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 60s;
        }}
    }}
"#
            ),
        ),
    )
}

/// Two requests that fill the upstream pool and then sit idle on both sides, and one slow
/// request in flight through the proxy when nginx gets `signal`.
fn proxy_scenario(signal: i32) -> Result<()> {
    let mut agent = Agent::start(Duration::from_secs(30))?;
    let cg = TestCgroup::new("proxy")?;
    let upstream_cg = TestCgroup::new("upstream")?;
    let ns = NetNs::new("proxy")?;
    let dir = TempDir::new("proxy")?;
    let conf = proxy_config(&dir)?;
    let mut up_cmd = Command::new("python3");
    up_cmd
        .arg("-u")
        .arg(scripts().join("http_app.py"))
        .args([&UPSTREAM.to_string(), "drain"]);
    let mut upstream = Proc::spawn(&mut up_cmd, &upstream_cg, Some(&ns))?;
    upstream.expect_line("listening")?;
    let mut cmd = Command::new("/usr/sbin/nginx");
    cmd.arg("-p")
        .arg(&dir.path)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf);
    let nginx = Proc::spawn(&mut cmd, &cg, Some(&ns))?;
    let load = Load::new(&ns, "127.0.0.1:8080".parse::<SocketAddr>()?);
    load.wait_ready("/", Duration::from_secs(10))?;
    let run = pool_then_stop(&mut agent, load, &mut upstream, &nginx, signal, cg.id)?;
    let (report, seen) = (&run.report, &run.seen);

    // The proxy's clients and its upstreams are told apart.
    let outbound = outbound(report);
    ensure!(
        !outbound.is_empty() && outbound.iter().all(|c| c.remote.port() == UPSTREAM),
        "{outbound:?}"
    );
    ensure!(
        report
            .connections
            .iter()
            .filter(|c| c.direction != Direction::Outbound)
            .all(|c| c.local.port() == 8080),
        "{:?}",
        report.connections
    );
    let total = |c: &termscope::terminations::report::Counts| {
        c.completed
            + c.reset_by_app
            + c.closed_by_exit
            + c.closed_idle
            + c.peer_closed_first
            + c.reset_by_peer
            + c.refused
            + c.open
    };
    ensure!(
        total(&report.outbound_counts) as usize == outbound.len(),
        "{:?}",
        report.outbound_counts
    );
    ensure!(
        total(&report.counts) as usize == report.connections.len() - outbound.len(),
        "{:?}",
        report.counts
    );

    if signal == libc::SIGQUIT {
        // Soft stop: the slow request is answered, the idle clients closed in order. Whatever
        // happens to the upstream pool, no client was cut.
        ensure!(seen.iter().all(|s| s.truth == Truth::Completed), "{seen:?}");
        check_verdicts(report, seen, |_| Some(Verdict::Completed))?;
        ensure!(report.outcome == Outcome::Graceful, "{:?}", report.outcome);
        ensure!(report.counts.cut == 0, "{:?}", report.counts);
        ensure!(!report.has_flag(Flag::Cut), "{:?}", report.flags);
    } else {
        // Hard stop: the client of the slow request lost its answer, the idle ones nothing.
        run.check_clients_after_hard_stop()?;
        ensure!(report.outcome == Outcome::Cut, "{:?}", report.outcome);
        ensure!(report.counts.cut == 1, "{:?}", report.counts);
        // The upstream connection carrying the slow request was cut too, counted apart.
        ensure!(
            report.outbound_counts.cut >= 1,
            "{:?}",
            report.outbound_counts
        );
        ensure!(report.has_flag(Flag::OutboundCut), "{:?}", report.flags);
        ensure!(
            report
                .summary
                .iter()
                .any(|s| s.contains("outbound connection(s) of its own")),
            "{:?}",
            report.summary
        );
        ensure!(
            report.summary[0].contains("but 1 connection(s) were cut"),
            "{:?}",
            report.summary
        );
    }
    Ok(())
}

#[test]
fn proxy_soft_stop_cuts_no_client_whatever_its_upstream_pool() -> Result<()> {
    kernel_test!();
    proxy_scenario(libc::SIGQUIT)
}

#[test]
fn proxy_hard_stop_counts_clients_and_upstreams_apart() -> Result<()> {
    kernel_test!();
    proxy_scenario(libc::SIGTERM)
}

#[test]
fn a_shell_wrapper_as_pid_1_never_passes_the_stop_signal_on() -> Result<()> {
    kernel_test!();
    let mut agent = Agent::start(Duration::from_secs(20))?;
    let cg = TestCgroup::new("wrapper")?;
    let ns = NetNs::new("wrapper")?;
    // The entrypoint a shell script without `exec`: sh is PID 1 of the container's PID
    // namespace, the app its child.
    let app = scripts().join("http_app.py");
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "sh", "-c"])
        .arg(format!(
            "python3 -u {} 8080 drain; echo wrapper done",
            app.display()
        ));
    let mut wrapper = Proc::spawn(&mut cmd, &cg, Some(&ns))?;
    wrapper.expect_line("listening")?;
    let init = child_of(wrapper.pid())?;
    let mut load = Load::new(&ns, "127.0.0.1:8080".parse::<SocketAddr>()?);
    load.wait_ready("/", Duration::from_secs(10))?;
    let port = load.in_flight("/slow?s=10", false)?;
    wrapper.expect_line(&format!("start {port}"))?;

    agent.pump(Duration::from_millis(200), None)?;
    // The runtime: SIGTERM to the container's init, then SIGKILL to all 2 s later.
    kill(init, libc::SIGTERM)?;
    agent.pump(Duration::from_secs(2), None)?;
    cg.signal_all(libc::SIGKILL)?;
    let report = agent.report_for(cg.id, Duration::from_secs(15))?;
    let seen = load.finish()?;
    show(&report, &seen)?;

    ensure!(
        seen.iter()
            .all(|s| matches!(s.truth, Truth::EofMidResponse | Truth::Reset)),
        "{seen:?}"
    );
    check_verdicts(&report, &seen, |_| Some(Verdict::ClosedByExit))?;
    ensure!(report.subject.main.pid == init, "{:?}", report.subject.main);
    ensure!(
        report.stop_signals.first().map(|s| &s.result) == Some(&SignalResult::Ignored),
        "{:?}",
        report.stop_signals
    );
    ensure!(report.outcome == Outcome::Killed, "{:?}", report.outcome);
    let first = &report.summary[0];
    ensure!(
        first.contains("never got SIGTERM") && first.contains("`exec`"),
        "{first}"
    );
    ensure!(!first.contains("Lengthen the grace period"), "{first}");
    Ok(())
}

/// supervisord stopping gunicorn with `stopsignal=HUP`: gunicorn reloads its workers and keeps
/// running, supervisord SIGKILLs it after `stopwaitsecs`.
fn reload_signal_run() -> Result<TerminationReport> {
    let mut agent = Agent::start(Duration::from_secs(30))?;
    let cg = TestCgroup::new("supervisord-hup")?;
    let ns = NetNs::new("supervisord-hup")?;
    let dir = TempDir::new("supervisord-hup")?;
    let d = dir.path.display();
    let conf = dir.write(
        "supervisord.conf",
        format!(
            r#"[supervisord]
nodaemon=true
user=root
logfile={d}/supervisord.log
pidfile={d}/supervisord.pid
childlogdir={d}

[program:web]
command=/usr/bin/gunicorn --bind 127.0.0.1:8080 --workers 1 --worker-class sync --chdir {scripts} wsgi_app:application
stopsignal=HUP
stopwaitsecs=2
startsecs=0
autorestart=false
redirect_stderr=true
stdout_logfile=/dev/stdout
stdout_logfile_maxbytes=0
"#,
            scripts = scripts().display()
        ),
    )?;
    let mut cmd = Command::new("/usr/bin/supervisord");
    cmd.arg("-n").arg("-c").arg(&conf);
    let mut supervisord = Proc::spawn(&mut cmd, &cg, Some(&ns))?;
    let mut load = Load::new(&ns, "127.0.0.1:8080".parse::<SocketAddr>()?);
    load.wait_ready("/", Duration::from_secs(15))?;
    let port = load.in_flight("/slow?s=1", false)?;
    supervisord.expect_line(&format!("start {port}"))?;
    agent.pump(Duration::from_millis(200), None)?;
    supervisord.signal(libc::SIGTERM)?;
    let report = agent.report_for(cg.id, Duration::from_secs(20))?;
    let seen = load.finish()?;
    show(&report, &seen)?;
    // The request was answered by the old worker during the reload, or cut by the kill:
    // the report must say which.
    check_verdicts(&report, &seen, |s| {
        Some(match s.truth {
            Truth::Completed => Verdict::Completed,
            _ => Verdict::ClosedByExit,
        })
    })?;
    Ok(report)
}

#[test]
fn a_supervisor_stopping_with_a_reload_signal_gets_the_right_advice() -> Result<()> {
    kernel_test!();
    let report = reload_signal_run()?;
    ensure!(report.outcome == Outcome::Killed, "{:?}", report.outcome);
    ensure!(
        report
            .stop_signals
            .iter()
            .any(|s| s.internal && s.signal == Signal::HUP),
        "{:?}",
        report.stop_signals
    );
    let first = &report.summary[0];
    ensure!(
        first.contains("took SIGHUP as a reload") && first.contains("instead of SIGHUP"),
        "{first}"
    );
    ensure!(!first.contains("Lengthen the grace period"), "{first}");
    Ok(())
}
