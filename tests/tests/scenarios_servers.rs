//! Servers that no other scenario runs, stopped with their graceful signal and with the one that
//! hurts, each client recording what it saw (issue 8, "every verdict says what the client
//! really lost"):
//!
//! - Apache httpd (Debian's `apache2`, event MPM) as a reverse proxy: SIGWINCH
//!   (graceful-stop) finishes every request; on SIGTERM its child shuts the client's socket
//!   down in order over a request it read and never answered — `closed_unanswered`, a cut,
//!   where an orderly close used to read as `completed`;
//! - HAProxy in master-worker mode (`-W`, what its image runs) with a pooled upstream:
//!   SIGUSR1 (soft stop) cuts no client; on SIGTERM the worker dies of the default action, and
//!   its idle pooled upstream connections, whose upstream spoke last by answering, are idle,
//!   not cut — only the one carrying a request is;
//! - uvicorn (asyncio): SIGTERM closes idle keep-alive connections in order and answers the
//!   request in flight; with a SIGKILL before the answer, only that request was lost.

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use termscope::terminations::report::{Flag, Outcome, Signal, TerminationReport, Verdict};
use termscope_tests::{
    Agent, NetNs, Proc, TempDir, TestCgroup, kernel_test,
    load::{
        Kind, Load, Seen, Truth, check_verdicts, connection, outbound, pool_then_stop, seen_of,
        show,
    },
    scripts,
};

const UPSTREAM: u16 = 9000;
const LISTEN: &str = "127.0.0.1:8080";

/// The upstream every proxy here forwards to: `http_app.py` in a cgroup of its own (another
/// container), printing `start <port of the proxy's upstream connection>` per slow request.
fn upstream(cg: &TestCgroup, ns: &NetNs) -> Result<Proc> {
    let mut cmd = Command::new("python3");
    cmd.arg("-u")
        .arg(scripts().join("http_app.py"))
        .args([&UPSTREAM.to_string(), "drain"]);
    let mut up = Proc::spawn(&mut cmd, cg, Some(ns))?;
    up.expect_line("listening")?;
    Ok(up)
}

/// The client port in an upstream's `start <port>` line.
fn started_port(line: &str) -> Result<u16> {
    line.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {line:?}"))
}

/// Idle keep-alive clients lost nothing: their connection's verdict is no cut (closed in
/// order, or idle at an exit), whichever the server chose.
fn idle_not_cut(report: &TerminationReport, seen: &[Seen], idle: &[u16]) -> Result<()> {
    for s in seen.iter().filter(|s| idle.contains(&s.port)) {
        ensure!(
            matches!(s.truth, Truth::EofIdle | Truth::Completed),
            "{s:?}"
        );
        let c = connection(report, s.port).with_context(|| format!("{s:?} not in the report"))?;
        ensure!(
            matches!(c.verdict, Verdict::ClosedIdle | Verdict::Completed),
            "idle client {} lost nothing: {c:?}",
            s.port
        );
    }
    Ok(())
}

/// Apache httpd, event MPM, one child, proxying everything to the upstream.
fn apache_config(dir: &TempDir) -> Result<std::path::PathBuf> {
    let d = dir.path.display();
    let mods = "/usr/lib/apache2/modules";
    dir.write(
        "apache2.conf",
        format!(
            r#"ServerRoot {d}
ServerName localhost
LoadModule mpm_event_module {mods}/mod_mpm_event.so
LoadModule authz_core_module {mods}/mod_authz_core.so
LoadModule proxy_module {mods}/mod_proxy.so
LoadModule proxy_http_module {mods}/mod_proxy_http.so
User www-data
Group www-data
PidFile {d}/httpd.pid
Mutex file:{d}
ErrorLog {d}/error.log
Listen {LISTEN}
KeepAlive On
KeepAliveTimeout 60
MaxKeepAliveRequests 0
StartServers 1
ServerLimit 1
ThreadsPerChild 16
MaxRequestWorkers 16
ProxyPass / http://127.0.0.1:{UPSTREAM}/
"#
        ),
    )
}

/// Two idle keep-alive clients and one request in flight through Apache when it gets `signal`.
fn apache_stopped_with(signal: i32) -> Result<()> {
    let mut agent = Agent::start(Duration::from_secs(30))?;
    let cg = TestCgroup::new("apache")?;
    let up_cg = TestCgroup::new("apache-up")?;
    let ns = NetNs::new("apache")?;
    let dir = TempDir::new("apache")?;
    let mut up = upstream(&up_cg, &ns)?;
    let conf = apache_config(&dir)?;
    let mut cmd = Command::new("/usr/sbin/apache2");
    cmd.arg("-f").arg(&conf).arg("-DFOREGROUND");
    let apache = Proc::spawn(&mut cmd, &cg, Some(&ns))?;
    let mut load = Load::new(&ns, LISTEN.parse::<SocketAddr>()?);
    load.wait_ready("/", Duration::from_secs(15))?;
    let idle = [load.idle("/")?, load.idle("/")?];
    // Quiet for longer than the idle threshold (2 s) before the stop.
    agent.pump(Duration::from_millis(2500), None)?;
    let busy = load.in_flight("/slow?s=2", false)?;
    up.expect_line("start")?;
    agent.pump(Duration::from_millis(300), None)?;
    apache.signal(signal)?;
    let report = agent.report_for(cg.id, Duration::from_secs(20))?;
    let seen = load.finish()?;
    show(&report, &seen)?;

    idle_not_cut(&report, &seen, &idle)?;
    ensure!(
        report.subject.main.pid == apache.pid(),
        "{:?}",
        report.subject
    );
    if signal == libc::SIGWINCH {
        // graceful-stop: the request is answered, nothing is cut.
        let b = seen_of(&seen, busy)?;
        ensure!(b.truth == Truth::Completed, "{b:?}");
        let c = connection(&report, busy).context("the busy client's connection")?;
        ensure!(c.verdict == Verdict::Completed, "{c:?}");
        ensure!(report.outcome == Outcome::Graceful, "{:?}", report.outcome);
        ensure!(report.counts.cut == 0, "{:?}", report.counts);
        ensure!(
            report.summary[0].contains("nothing was cut"),
            "{:?}",
            report.summary
        );
    } else {
        // SIGTERM: the child shuts the busy client's socket down (FIN) at once, over the
        // request it read; the client gets an end of stream and no answer.
        let b = seen_of(&seen, busy)?;
        ensure!(
            b.truth == Truth::EofMidResponse && b.expected.is_none(),
            "{b:?}"
        );
        let c = connection(&report, busy).context("the busy client's connection")?;
        ensure!(c.verdict == Verdict::ClosedUnanswered, "{c:?}");
        ensure!(
            c.in_flight
                .is_some_and(|f| f.after_last_ack_bytes > 0 && f.unacked_bytes == 0),
            "{c:?}"
        );
        ensure!(report.outcome == Outcome::Cut, "{:?}", report.outcome);
        ensure!(
            report.counts.cut == 1 && report.counts.closed_unanswered == 1,
            "{:?}",
            report.counts
        );
        ensure!(report.has_flag(Flag::Cut), "{:?}", report.flags);
        let first = &report.summary[0];
        ensure!(
            first.contains(
                "but 1 connection(s) were cut: 1 closed by the app before answering the \
                 request it had read"
            ),
            "{first}"
        );
        ensure!(
            report.summary.iter().any(|s| s.contains("SIGWINCH")),
            "{:?}",
            report.summary
        );
    }
    // Its own upstream connections are counted apart, never as clients.
    ensure!(
        outbound(&report)
            .iter()
            .all(|c| c.remote.port() == UPSTREAM),
        "{:?}",
        report.connections
    );
    Ok(())
}

#[test]
fn apache_graceful_stop_finishes_every_request() -> Result<()> {
    kernel_test!();
    apache_stopped_with(libc::SIGWINCH)
}

#[test]
fn apache_sigterm_closes_requests_unanswered() -> Result<()> {
    kernel_test!();
    apache_stopped_with(libc::SIGTERM)
}

/// HAProxy, master-worker, reusing idle upstream connections for every client.
fn haproxy_config(dir: &TempDir) -> Result<std::path::PathBuf> {
    dir.write(
        "haproxy.cfg",
        format!(
            r#"global
    pidfile {d}/haproxy.pid
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend fe
    bind {LISTEN}
    default_backend be
backend be
    http-reuse always
    server s1 127.0.0.1:{UPSTREAM}
"#,
            d = dir.path.display()
        ),
    )
}

/// Two answered requests that leave two upstream connections in the pool (their clients idle),
/// then one slow request in flight (on a pooled connection) when HAProxy gets `signal`.
fn haproxy_stopped_with(signal: i32) -> Result<()> {
    let mut agent = Agent::start(Duration::from_secs(30))?;
    let cg = TestCgroup::new("haproxy")?;
    let up_cg = TestCgroup::new("haproxy-up")?;
    let ns = NetNs::new("haproxy")?;
    let dir = TempDir::new("haproxy")?;
    let mut up = upstream(&up_cg, &ns)?;
    let conf = haproxy_config(&dir)?;
    let mut cmd = Command::new("/usr/sbin/haproxy");
    cmd.args(["-W", "-db", "-f"]).arg(&conf);
    let haproxy = Proc::spawn(&mut cmd, &cg, Some(&ns))?;
    let load = Load::new(&ns, LISTEN.parse::<SocketAddr>()?);
    load.wait_ready("/", Duration::from_secs(15))?;
    let run = pool_then_stop(&mut agent, load, &mut up, &haproxy, signal, cg.id)?;
    let (warm, report, seen) = (&run.warm, &run.report, &run.seen);
    let busy_upstream = started_port(&run.busy_upstream_line)?;

    ensure!(
        report.subject.main.pid == haproxy.pid(),
        "{:?}",
        report.subject
    );
    let out = outbound(report);
    ensure!(
        !out.is_empty() && out.iter().all(|c| c.remote.port() == UPSTREAM),
        "{out:?}"
    );
    if signal == libc::SIGUSR1 {
        // Soft stop: the slow request is answered, the idle clients closed in order.
        ensure!(seen.iter().all(|s| s.truth == Truth::Completed), "{seen:?}");
        check_verdicts(report, seen, |_| Some(Verdict::Completed))?;
        ensure!(report.outcome == Outcome::Graceful, "{:?}", report.outcome);
        ensure!(report.counts.cut == 0, "{:?}", report.counts);
        ensure!(!report.has_flag(Flag::Cut), "{:?}", report.flags);
        ensure!(
            report.summary[0].starts_with(&format!(
                "haproxy (pid {}) took SIGUSR1 and exited",
                haproxy.pid()
            )) && report.summary[0].contains("nothing was cut"),
            "{:?}",
            report.summary
        );
    } else {
        // Hard stop: the worker dies of SIGTERM's default action at once.
        run.check_clients_after_hard_stop()?;
        // The warm clients had their answers: idle at the exit.
        ensure!(
            seen.iter()
                .filter(|s| s.kind == Kind::InFlight && warm.contains(&s.port))
                .all(|s| s.truth == Truth::Completed),
            "{seen:?}"
        );
        // Upstream side: the connection carrying the slow request was cut; the pooled ones,
        // whose upstream spoke last by answering, were idle.
        for c in &out {
            let want = if c.local.port() == busy_upstream {
                Verdict::ClosedByExit
            } else {
                Verdict::ClosedIdle
            };
            ensure!(
                c.verdict == want,
                "upstream connection {c:?}: expected {want:?}"
            );
        }
        ensure!(
            out.iter().any(|c| c.local.port() == busy_upstream),
            "{out:?}"
        );
        ensure!(
            report.outbound_counts.cut == 1 && report.outbound_counts.closed_idle >= 1,
            "{:?}",
            report.outbound_counts
        );
        ensure!(report.outcome == Outcome::NoHandler, "{:?}", report.outcome);
        ensure!(report.counts.cut == 1, "{:?}", report.counts);
        // The worker is named, and sent HAProxy's graceful stop rather than told to handle
        // SIGTERM.
        let first = &report.summary[0];
        let worker = report
            .exits
            .iter()
            .find(|e| e.signal == Some(Signal::TERM))
            .context("the worker's exit")?;
        ensure!(worker.pid != haproxy.pid(), "{:?}", report.exits);
        ensure!(
            first.starts_with(&format!(
                "haproxy (pid {}) has no handler for SIGTERM",
                worker.pid
            )) && first.ends_with("Stop it with SIGUSR1 instead (HAProxy's graceful stop)."),
            "{first}"
        );
    }
    Ok(())
}

#[test]
fn haproxy_soft_stop_cuts_no_client() -> Result<()> {
    kernel_test!();
    haproxy_stopped_with(libc::SIGUSR1)
}

#[test]
fn haproxy_hard_stop_cuts_the_request_not_the_idle_pool() -> Result<()> {
    kernel_test!();
    haproxy_stopped_with(libc::SIGTERM)
}

/// uvicorn (Debian's python3-uvicorn, run by Debian's python3) serving `asgi_app.py`, two idle
/// keep-alive clients and one request in flight at SIGTERM; with `kill_after`, SIGKILL follows
/// (a grace period shorter than the request).
fn uvicorn_stopped(slow_s: u32, kill_after: Option<Duration>) -> Result<()> {
    let mut agent = Agent::start(Duration::from_secs(30))?;
    let cg = TestCgroup::new("uvicorn")?;
    let ns = NetNs::new("uvicorn")?;
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-m", "uvicorn", "--app-dir"])
        .arg(scripts())
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            "8080",
            "--timeout-keep-alive",
            "60",
            "asgi_app:app",
        ]);
    let mut app = Proc::spawn(&mut cmd, &cg, Some(&ns))?;
    let mut load = Load::new(&ns, LISTEN.parse::<SocketAddr>()?);
    load.wait_ready("/", Duration::from_secs(30))?;
    let idle = [load.idle("/")?, load.idle("/")?];
    agent.pump(Duration::from_millis(2500), None)?;
    let busy = load.in_flight(&format!("/slow?s={slow_s}"), false)?;
    app.expect_line(&format!("start {busy}"))?;
    agent.pump(Duration::from_millis(300), None)?;
    app.signal(libc::SIGTERM)?;
    if let Some(after) = kill_after {
        agent.pump(after, None)?;
        cg.signal_all(libc::SIGKILL)?;
    }
    let report = agent.report_for(cg.id, Duration::from_secs(20))?;
    let seen = load.finish()?;
    show(&report, &seen)?;

    // uvicorn closes idle keep-alive connections itself at SIGTERM (FIN): the clients saw
    // their connection end between requests.
    for s in seen.iter().filter(|s| idle.contains(&s.port)) {
        ensure!(s.truth == Truth::EofIdle, "{s:?}");
    }
    idle_not_cut(&report, &seen, &idle)?;
    let b = seen_of(&seen, busy)?;
    let first = &report.summary[0];
    if kill_after.is_none() {
        ensure!(b.truth == Truth::Completed, "{b:?}");
        check_verdicts(&report, &seen, |_| Some(Verdict::Completed))?;
        ensure!(report.outcome == Outcome::Graceful, "{:?}", report.outcome);
        ensure!(report.counts.cut == 0, "{:?}", report.counts);
        ensure!(
            first.contains("took SIGTERM and exited") && first.contains("nothing was cut"),
            "{first}"
        );
    } else {
        ensure!(
            matches!(b.truth, Truth::EofMidResponse | Truth::Reset),
            "{b:?}"
        );
        let c = connection(&report, busy).context("the busy client's connection")?;
        ensure!(c.verdict == Verdict::ClosedByExit, "{c:?}");
        ensure!(report.outcome == Outcome::Killed, "{:?}", report.outcome);
        ensure!(report.counts.cut == 1, "{:?}", report.counts);
        ensure!(
            first.contains("did not finish within the grace period")
                && first.contains("1 connection(s) were cut"),
            "{first}"
        );
    }
    Ok(())
}

#[test]
fn uvicorn_sigterm_drains_keepalive_and_in_flight() -> Result<()> {
    kernel_test!();
    uvicorn_stopped(2, None)
}

#[test]
fn uvicorn_killed_before_its_answer_cuts_only_that_request() -> Result<()> {
    kernel_test!();
    uvicorn_stopped(10, Some(Duration::from_millis(1500)))
}
