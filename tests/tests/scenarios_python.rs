//! Termination scenarios with a small Python HTTP-like app (seed 002's pattern): one that
//! traps SIGTERM and finishes its in-flight request, one with no handler.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result};
use termscope::terminations::report::{Flag, Outcome, StepKind, Verdict};
use termscope_tests::{Agent, NetNs, Proc, TestCgroup, join_clients, kernel_test, python};

/// Serves one slow request per connection: reads a line, sleeps `delay` seconds, answers.
fn app(handler: bool, delay: f64) -> String {
    format!(
        r#"
import signal, socket, sys, threading, time
busy = []
def serve(conn):
    busy.append(conn)
    conn.recv(1024)
    time.sleep({delay})
    conn.sendall(b"done\n")
    conn.close()
    busy.remove(conn)
def on_term(signum, frame):
    while busy:
        time.sleep(0.05)
    sys.exit(0)
if {handler}:
    signal.signal(signal.SIGTERM, on_term)
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 8080))
ls.listen(16)
print("listening", flush=True)
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#,
        handler = if handler { "True" } else { "False" }
    )
}

/// What the client saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Answered,
    Reset,
    EofWithoutAnswer,
}

fn request(stream: &mut TcpStream) -> Result<Seen> {
    stream.write_all(b"work\n")?;
    let mut buf = Vec::new();
    match stream.read_to_end(&mut buf) {
        Ok(_) if buf == b"done\n" => Ok(Seen::Answered),
        Ok(_) => Ok(Seen::EofWithoutAnswer),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(Seen::Reset),
        Err(e) => Err(e.into()),
    }
}

fn scenario(handler: bool) -> Result<()> {
    let mut agent = Agent::start(Duration::from_secs(20))?;
    let cg = TestCgroup::new("py")?;
    let ns = NetNs::new("py")?;
    let mut server = Proc::spawn(&mut python(&app(handler, 1.0)), &cg, Some(&ns))?;
    server.expect_line("listening")?;
    let addr: SocketAddr = "127.0.0.1:8080".parse()?;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let s = ns.enter(move || TcpStream::connect(addr))??;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        clients.push(s);
    }
    let handles: Vec<_> = clients
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || -> Result<(u16, Seen)> {
                let port = s.local_addr()?.port();
                Ok((port, request(&mut s)?))
            })
        })
        .collect();
    // The requests are in flight (the app sleeps 1 s on each): stop it.
    agent.pump(Duration::from_millis(300), None)?;
    server.signal(libc::SIGTERM)?;
    let truth = join_clients(handles)?;
    let report = agent.report_for(cg.id, Duration::from_secs(15))?;
    println!("{}", serde_json::to_string_pretty(&report)?);

    // Connection by connection, the report agrees with what the clients saw.
    for (port, seen) in &truth {
        let c = report
            .connections
            .iter()
            .find(|c| c.remote.port() == *port)
            .with_context(|| format!("client port {port} not in the report"))?;
        let expected = match seen {
            Seen::Answered => Verdict::Completed,
            Seen::Reset | Seen::EofWithoutAnswer => Verdict::ClosedByExit,
        };
        assert_eq!(c.verdict, expected, "client {port} saw {seen:?}: {c:?}");
    }
    if handler {
        assert!(truth.iter().all(|(_, s)| *s == Seen::Answered), "{truth:?}");
        assert_eq!(report.outcome, Outcome::Graceful);
        assert_eq!(report.counts.completed, 3);
        assert!(report.timeline.iter().any(|s| s.what == StepKind::Handler));
    } else {
        assert!(truth.iter().all(|(_, s)| *s != Seen::Answered), "{truth:?}");
        assert_eq!(report.outcome, Outcome::NoHandler);
        assert_eq!(report.counts.closed_by_exit, 3);
        assert!(report.has_flag(Flag::Cut));
    }
    assert_eq!(report.subject.main.pid, server.pid());
    Ok(())
}

#[test]
fn python_app_that_drains_on_sigterm() -> Result<()> {
    kernel_test!();
    scenario(true)
}

#[test]
fn python_app_without_a_sigterm_handler() -> Result<()> {
    kernel_test!();
    scenario(false)
}
