//! A server that is not HTTP and whose clients hold long-lived connections: Redis (Debian's
//! `redis-server`), stopped with SIGTERM — what `docker stop` and Kubernetes send. Redis
//! handles it by exiting at once (after an optional save), leaving its client connections to
//! the kernel. Some clients are idle between commands; others wait on a blocking command
//! (`BLPOP` on an empty list), a request in flight whose answer never comes. The report must
//! tell them apart, connection by connection, as the clients saw it: the blocked ones cut (their
//! request came after the server's last answer), the idle ones closed between requests (a
//! reconnect, no loss).

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use termscope::terminations::report::{Direction, Flag, Outcome, Verdict};
use termscope_tests::{
    Agent, NetNs, Proc, TestCgroup, join_clients, kernel_test, load::connection,
};

const ADDR: &str = "127.0.0.1:6379";

/// What one client saw when the server went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Idle after its last answer: the server's FIN, nothing owed.
    ClosedWhileIdle,
    /// Waiting for the answer to its `BLPOP`: end of stream instead.
    LostItsAnswer,
    /// A reset (either kind of client).
    Reset,
}

/// Sends one command and reads one line of answer.
fn command(s: &mut TcpStream, cmd: &[u8]) -> Result<Vec<u8>> {
    s.write_all(cmd)?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        ensure!(s.read(&mut b)? == 1, "end of stream before the answer");
        line.push(b[0]);
    }
    Ok(line)
}

/// Waits for the end: 0 bytes (the server's FIN) or a reset. Anything else is a protocol
/// answer the test did not expect.
fn wait_end(s: &mut TcpStream, idle: bool) -> Result<Seen> {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) if idle => Ok(Seen::ClosedWhileIdle),
        Ok(0) => Ok(Seen::LostItsAnswer),
        Ok(n) => bail!("unexpected answer {:?}", String::from_utf8_lossy(&b[..n])),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(Seen::Reset),
        Err(e) => Err(e.into()),
    }
}

#[test]
fn redis_stopped_with_clients_idle_and_blocked() -> Result<()> {
    kernel_test!();
    let mut agent = Agent::start(Duration::from_secs(20))?;
    let cg = TestCgroup::new("redis")?;
    let ns = NetNs::new("redis")?;
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        "6379",
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
    ]);
    let server = Proc::spawn(&mut cmd, &cg, Some(&ns))
        .context("redis-server (Debian `redis-server`; `cargo xtask setup --test-deps`)")?;
    let addr: SocketAddr = ADDR.parse()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ns.enter(move || TcpStream::connect(addr))?.is_err() {
        ensure!(
            Instant::now() < deadline,
            "redis-server did not listen within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.pump(Duration::from_millis(300), None)?;

    // Three idle clients (a PING answered, then nothing) and two blocked on BLPOP.
    let mut clients = Vec::new();
    for i in 0..5 {
        let idle = i < 3;
        let mut s = ns.enter(move || TcpStream::connect(addr))??;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        let pong = command(&mut s, b"PING\r\n")?;
        ensure!(pong == b"+PONG\r\n", "{pong:?}");
        if !idle {
            s.write_all(b"BLPOP termscope:empty 0\r\n")?;
        }
        let port = s.local_addr()?.port();
        clients.push(std::thread::spawn(move || -> Result<(u16, Seen)> {
            Ok((port, wait_end(&mut s, idle)?))
        }));
    }
    // The BLPOPs have reached the server (it answers nothing until a push or the end), and
    // the idle clients stay quiet for longer than the rule's idle window (2 s without a
    // segment: docs/report.md, "In flight or idle"; a connection used more recently than that
    // reads as in flight, a documented limit this test does not exercise).
    agent.pump(Duration::from_millis(2_500), None)?;
    server.signal(libc::SIGTERM)?;
    let truth = join_clients(clients)?;
    let report = agent.report_for(cg.id, Duration::from_secs(15))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    println!("clients saw: {truth:?}");

    for (port, seen) in &truth {
        let c = connection(&report, *port)
            .with_context(|| format!("client port {port} not in the report"))?;
        assert_eq!(c.direction, Direction::Inbound, "{c:?}");
        match seen {
            Seen::ClosedWhileIdle => {
                assert_eq!(
                    c.verdict,
                    Verdict::ClosedIdle,
                    "client {port} was idle: {c:?}"
                )
            }
            Seen::LostItsAnswer | Seen::Reset => assert!(
                c.verdict.is_cut(),
                "client {port} saw {seen:?}, the report says {:?}",
                c.verdict
            ),
        }
    }
    let lost = truth
        .iter()
        .filter(|(_, s)| *s != Seen::ClosedWhileIdle)
        .count();
    ensure!(
        lost == 2,
        "the two blocked clients lost their answer: {truth:?}"
    );
    assert_eq!(report.counts.cut, 2, "{:?}", report.counts);
    assert_eq!(report.counts.closed_idle, 3, "{:?}", report.counts);
    assert_eq!(report.outcome, Outcome::Cut);
    assert!(report.has_flag(Flag::Cut));
    assert!(report.has_flag(Flag::ClosedIdle));
    assert!(
        report
            .summary
            .iter()
            .any(|s| s.contains("did not wait for the 2 request(s) in flight: on SIGTERM")),
        "{:?}",
        report.summary
    );
    assert_eq!(report.subject.main.pid, server.pid());
    Ok(())
}
