//! A ground-truth HTTP/1.1 load client for the scenario tests.
//!
//! Raw HTTP/1.1 over TCP, one thread per connection, sockets created inside the test's
//! network namespace (and in the test process's cgroup, i.e. outside the "container"). For
//! every connection it records what the client really saw, keyed by its local port — the
//! port a termination report names as the connection's `remote`:
//!
//! - [`Truth::Completed`] — the full response was read and the connection then ended in order
//!   (or was still open, idle, when the test ended);
//! - [`Truth::Reset`] — ECONNRESET;
//! - [`Truth::EofMidResponse`] — a FIN before the full response;
//! - [`Truth::EofIdle`] — the server closed an idle keep-alive connection with a FIN;
//! - [`Truth::Refused`] — ECONNREFUSED on connect;
//! - [`Truth::Open`] — still waiting for a response when the test ended.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use socket2::{Domain, SockAddr, Socket, Type};
use termscope::terminations::report::{Connection, Direction, TerminationReport, Verdict};

use crate::{Agent, NetNs, Proc};

/// How long a client waits for one connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Reads wake up this often to check whether the test is over.
const POLL: Duration = Duration::from_millis(50);

/// What the client saw on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    Completed,
    Reset,
    EofMidResponse,
    EofIdle,
    Refused,
    Open,
}

/// What the connection was doing when the stop signal came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A keep-alive connection whose request completed before: idle.
    Idle,
    /// A request whose response was still coming.
    InFlight,
    /// One attempt of a client that keeps connecting ([`Load::knock`]).
    Knock,
}

/// One connection's ground truth.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The client's local port (the report's `remote.port()`); 0 if none was bound.
    pub port: u16,
    pub kind: Kind,
    pub truth: Truth,
    /// Response body bytes read (of the request in flight, for [`Kind::InFlight`]).
    pub body: usize,
    /// The expected body length, when the headers arrived.
    pub expected: Option<usize>,
    /// When the connection was attempted.
    pub started: Instant,
    /// When `connect()` returned (connected or refused). The server's side of the handshake
    /// happened between `started` and this.
    pub connected: Instant,
}

/// A parsed response head.
#[derive(Debug)]
struct Head {
    status: u16,
    content_length: usize,
    close: bool,
}

/// Incremental reader of one response: head, then `Content-Length` body bytes.
#[derive(Default)]
struct ResponseReader {
    buf: Vec<u8>,
    head: Option<Head>,
    body: usize,
}

impl ResponseReader {
    /// Feeds bytes read from the connection (these tests never pipeline requests).
    fn feed(&mut self, data: &[u8]) -> Result<()> {
        if let Some(head) = &self.head {
            self.body += data.len();
            if self.body > head.content_length {
                bail!(
                    "{} body bytes, more than Content-Length {}",
                    self.body,
                    head.content_length
                );
            }
            return Ok(());
        }
        self.buf.extend_from_slice(data);
        let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(());
        };
        let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let mut content_length = None;
        let mut close = false;
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = Some(value.parse()?);
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                }
            }
        }
        let content_length =
            content_length.with_context(|| format!("no Content-Length in {text:?}"))?;
        let body = self.buf.len() - (end + 4);
        if body > content_length {
            bail!("{body} body bytes, more than Content-Length {content_length}");
        }
        self.head = Some(Head {
            status,
            content_length,
            close,
        });
        self.buf.clear();
        self.body = body;
        Ok(())
    }

    fn complete(&self) -> bool {
        self.head
            .as_ref()
            .is_some_and(|h| self.body == h.content_length)
    }
}

fn request(path: &str, close: bool) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: {}\r\n\r\n",
        if close { "close" } else { "keep-alive" }
    )
    .into_bytes()
}

/// Connects from the calling thread's namespace, from a port bound first so that it is
/// known even when the connection is refused.
fn connect_from_known_port(addr: SocketAddr) -> Result<(u16, std::io::Result<TcpStream>)> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    let any: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    socket.bind(&SockAddr::from(any))?;
    let port = socket
        .local_addr()?
        .as_socket()
        .context("local address is not an IP socket")?
        .port();
    let res = socket
        .connect_timeout(&SockAddr::from(addr), CONNECT_TIMEOUT)
        .map(|()| TcpStream::from(socket));
    Ok((port, res))
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// How a read loop ended.
enum End {
    /// The response is complete (with `reader` still holding it).
    Response,
    Eof,
    Reset,
    Stopped,
}

/// Reads until the response in `reader` is complete, the peer ends the connection, or
/// `stop` is set. `started` is told once the response head arrived.
fn read_response(
    s: &mut TcpStream,
    reader: &mut ResponseReader,
    stop: &AtomicBool,
    mut started: Option<mpsc::Sender<()>>,
) -> Result<End> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        if reader.complete() {
            return Ok(End::Response);
        }
        match s.read(&mut buf) {
            Ok(0) => return Ok(End::Eof),
            Ok(n) => {
                reader.feed(&buf[..n])?;
                if reader.head.is_some()
                    && let Some(tx) = started.take()
                {
                    let _ = tx.send(());
                }
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(End::Reset),
            Err(e) if is_timeout(&e) => {
                if stop.load(Ordering::Relaxed) {
                    return Ok(End::Stopped);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// After the last response: waits for the server to end the connection (or the test to).
fn wait_for_close(s: &mut TcpStream, stop: &AtomicBool) -> Result<End> {
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(End::Eof),
            Ok(n) => bail!("{n} unexpected bytes on an idle connection"),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(End::Reset),
            Err(e) if is_timeout(&e) => {
                if stop.load(Ordering::Relaxed) {
                    return Ok(End::Stopped);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The load client: connections to one server address, in one namespace.
pub struct Load<'a> {
    ns: &'a NetNs,
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Vec<JoinHandle<Result<Vec<Seen>>>>,
}

impl<'a> Load<'a> {
    pub fn new(ns: &'a NetNs, addr: SocketAddr) -> Self {
        Load {
            ns,
            addr,
            stop: Arc::new(AtomicBool::new(false)),
            conns: Vec::new(),
        }
    }

    fn connect(&self) -> Result<(u16, TcpStream)> {
        let addr = self.addr;
        let (port, res) = self.ns.enter(move || connect_from_known_port(addr))??;
        let s = res.with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(POLL))?;
        Ok((port, s))
    }

    /// Waits until the server answers `GET path` completely (connection refused or reset
    /// while it starts up is retried).
    pub fn wait_ready(&self, path: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.get(path) {
                Ok(200) => return Ok(()),
                Ok(status) => last = format!("status {status}"),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{} not ready within {timeout:?}: {last}", self.addr)
    }

    /// One complete `GET path` with `Connection: close`; returns the status.
    pub fn get(&self, path: &str) -> Result<u16> {
        let (_, mut s) = self.connect()?;
        s.write_all(&request(path, true))?;
        let mut reader = ResponseReader::default();
        let never = AtomicBool::new(false);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match read_response(&mut s, &mut reader, &never, None) {
                Ok(End::Response) => break,
                Ok(End::Eof) => bail!("EOF before the full response"),
                Ok(End::Reset) => bail!("reset before the full response"),
                Ok(End::Stopped) => {}
                Err(e) => return Err(e),
            }
            if Instant::now() > deadline {
                bail!("no full response within 5 s");
            }
        }
        reader.head.map(|h| h.status).context("no response head")
    }

    /// Opens a keep-alive connection, completes `GET path` on it and leaves it idle; a
    /// thread then waits for the server to end it. Returns the client port.
    pub fn idle(&mut self, path: &str) -> Result<u16> {
        let started = Instant::now();
        let (port, mut s) = self.connect()?;
        let connected = Instant::now();
        s.write_all(&request(path, false))?;
        let mut reader = ResponseReader::default();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match read_response(&mut s, &mut reader, &AtomicBool::new(false), None)? {
                End::Response => break,
                End::Eof | End::Reset => bail!("idle connection {port} ended during its request"),
                End::Stopped => {}
            }
            if Instant::now() > deadline {
                bail!("no response to {path} within 5 s");
            }
        }
        if reader.head.as_ref().is_some_and(|h| h.close) {
            bail!("the server does not keep {port} alive (Connection: close)");
        }
        let body = reader.body;
        let expected = reader.head.as_ref().map(|h| h.content_length);
        let stop = self.stop.clone();
        self.conns.push(std::thread::spawn(move || {
            let truth = match wait_for_close(&mut s, &stop)? {
                End::Eof => Truth::EofIdle,
                End::Reset => Truth::Reset,
                End::Stopped | End::Response => Truth::Completed,
            };
            Ok(vec![Seen {
                port,
                kind: Kind::Idle,
                truth,
                body,
                expected,
                started,
                connected,
            }])
        }));
        Ok(port)
    }

    /// Sends `GET path` (keep-alive) and reads the response on a thread. With
    /// `wait_head`, returns only once the response head arrived (the response is then
    /// streaming); otherwise right after sending. Returns the client port.
    pub fn in_flight(&mut self, path: &str, wait_head: bool) -> Result<u16> {
        let started = Instant::now();
        let (port, mut s) = self.connect()?;
        let connected = Instant::now();
        s.write_all(&request(path, false))?;
        let stop = self.stop.clone();
        let (tx, rx) = mpsc::channel();
        self.conns.push(std::thread::spawn(move || {
            let mut reader = ResponseReader::default();
            let end = read_response(&mut s, &mut reader, &stop, Some(tx))?;
            let truth = match end {
                End::Response => match wait_for_close(&mut s, &stop)? {
                    End::Reset => Truth::Reset,
                    _ => Truth::Completed,
                },
                End::Eof => Truth::EofMidResponse,
                End::Reset => Truth::Reset,
                End::Stopped => Truth::Open,
            };
            Ok(vec![Seen {
                port,
                kind: Kind::InFlight,
                truth,
                body: reader.body,
                expected: reader.head.as_ref().map(|h| h.content_length),
                started,
                connected,
            }])
        }));
        if wait_head {
            rx.recv_timeout(Duration::from_secs(5))
                .with_context(|| format!("no response head for {path} on {port}"))?;
        }
        Ok(port)
    }

    /// Keeps connecting, every `every`, until [`Load::finish`]: each attempt sends
    /// `GET path` with `Connection: close` and reads the answer.
    pub fn knock(&mut self, path: &str, every: Duration) -> Result<()> {
        let stop = self.stop.clone();
        let addr = self.addr;
        let req = request(path, true);
        let handle = self.ns.spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let (port, res) = connect_from_known_port(addr)?;
                let connected = Instant::now();
                let (truth, body, expected) = match res {
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => (Truth::Refused, 0, None),
                    Err(e) => return Err(e.into()),
                    Ok(mut s) => {
                        s.set_read_timeout(Some(POLL))?;
                        match s.write_all(&req) {
                            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                                (Truth::Reset, 0, None)
                            }
                            Err(e) => return Err(e.into()),
                            Ok(()) => {
                                let mut reader = ResponseReader::default();
                                let never = AtomicBool::new(false);
                                let mut end = read_response(&mut s, &mut reader, &never, None)?;
                                while matches!(end, End::Stopped) {
                                    end = read_response(&mut s, &mut reader, &never, None)?;
                                }
                                let truth = match end {
                                    End::Response => match wait_for_close(&mut s, &never)? {
                                        End::Reset => Truth::Reset,
                                        _ => Truth::Completed,
                                    },
                                    End::Eof => Truth::EofMidResponse,
                                    End::Reset => Truth::Reset,
                                    End::Stopped => Truth::Open,
                                };
                                let expected = reader.head.as_ref().map(|h| h.content_length);
                                (truth, reader.body, expected)
                            }
                        }
                    }
                };
                seen.push(Seen {
                    port,
                    kind: Kind::Knock,
                    truth,
                    body,
                    expected,
                    started,
                    connected,
                });
                std::thread::sleep(every.saturating_sub(started.elapsed()));
            }
            Ok(seen)
        })?;
        self.conns.push(handle);
        Ok(())
    }

    /// Ends the load: connections still open are left as they are (idle ones count as
    /// completed, unanswered ones as open). Returns what every connection saw.
    pub fn finish(self) -> Result<Vec<Seen>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for h in self.conns {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a client thread panicked"))??,
            );
        }
        Ok(all)
    }
}

/// The report's connection whose peer is the client port `port`.
pub fn connection(report: &TerminationReport, port: u16) -> Option<&Connection> {
    report.connections.iter().find(|c| c.remote.port() == port)
}

/// Checks, connection by connection, that the report agrees with what the clients saw:
/// `expect` gives the verdict each client's connection must have (`None`: it must not be in
/// the report, e.g. it ended before the stop signal). Fails listing every disagreement.
/// [`Load::knock`]'s attempts are left to [`check_knocks`].
pub fn check_verdicts(
    report: &TerminationReport,
    seen: &[Seen],
    expect: impl Fn(&Seen) -> Option<Verdict>,
) -> Result<()> {
    let mut wrong = Vec::new();
    for s in seen.iter().filter(|s| s.kind != Kind::Knock) {
        let got = connection(report, s.port);
        match (expect(s), got) {
            (Some(v), Some(c)) if c.verdict == v => {}
            (None, None) => {}
            (want, got) => wrong.push(format!(
                "client port {} ({:?}, saw {:?}, body {}/{:?}): expected {:?}, report has {:?}",
                s.port,
                s.kind,
                s.truth,
                s.body,
                s.expected,
                want.map(Verdict::as_str),
                got.map(|c| c.verdict.as_str()),
            )),
        }
    }
    if !wrong.is_empty() {
        bail!(
            "the report disagrees with the clients:\n  {}\nreport: {}",
            wrong.join("\n  "),
            serde_json::to_string_pretty(report)?
        );
    }
    Ok(())
}

/// Checks the attempts of [`Load::knock`] against the report, `signalled` being taken just
/// before the stop signal was sent:
///
/// - a refused attempt came after the signal and is in the report as `refused` (the kernel's
///   reset for a SYN nothing listened for);
/// - an answered one is in the report only if it ended after the signal; then as
///   `completed`, and as accepted late only if its handshake can have ended after the signal
///   (`connect()` returned after it), as not late only if it began before it;
/// - a reset one (a SYN that reached the accept queue just before the listener closed) is
///   in the report as cut.
///
/// Returns the number of refused attempts.
pub fn check_knocks(
    report: &TerminationReport,
    seen: &[Seen],
    signalled: Instant,
) -> Result<usize> {
    // The server's side of a handshake happened between `started` and `connected`: an
    // attempt whose window spans the signal (or starts within 5 ms after it, the clocks of
    // the kernel and of this process being read at different instants) may have been
    // accepted on either side of it, or refused.
    let slack = Duration::from_millis(5);
    let mut refused = 0;
    let mut wrong = Vec::new();
    for s in seen.iter().filter(|s| s.kind == Kind::Knock) {
        // A refused attempt leaves no TIME_WAIT: the kernel may give its client port to a
        // later attempt (seen on 5.10), so one port can name a served connection and a
        // refusal. Each attempt is matched to the report's connection of its own kind.
        let refusal = s.truth == Truth::Refused;
        let c = report
            .connections
            .iter()
            .find(|c| c.remote.port() == s.port && (c.verdict == Verdict::Refused) == refusal);
        let maybe_before = s.started < signalled + slack;
        let maybe_after = s.connected >= signalled;
        let late_fits = |late: bool| if late { maybe_after } else { maybe_before };
        let ok = match s.truth {
            Truth::Refused => {
                refused += 1;
                maybe_after
                    && c.is_some_and(|c| {
                        c.verdict == Verdict::Refused
                            && c.reset_reason.as_deref() == Some("no_socket")
                            && c.delay_ms.is_some_and(|d| d >= 0.0)
                    })
            }
            Truth::Completed => match c {
                None => maybe_before,
                Some(c) => c.verdict == Verdict::Completed && late_fits(c.accepted_late),
            },
            Truth::Reset | Truth::EofMidResponse => {
                c.is_some_and(|c| c.verdict.is_cut() && late_fits(c.accepted_late))
            }
            Truth::EofIdle | Truth::Open => false,
        };
        if !ok {
            wrong.push(format!(
                "client port {} ({:?}, {:?} after the signal): report has {:?}",
                s.port,
                s.truth,
                s.started.checked_duration_since(signalled),
                c
            ));
        }
    }
    if !wrong.is_empty() {
        bail!(
            "the report disagrees with the clients:\n  {}\nreport: {}",
            wrong.join("\n  "),
            serde_json::to_string_pretty(report)?
        );
    }
    if report.counts.refused as usize != refused {
        bail!(
            "the client saw {refused} refusals, the report counts {}",
            report.counts.refused
        );
    }
    Ok(refused)
}

/// Prints a report (shown with `--nocapture`, and on failure).
pub fn show(report: &TerminationReport, seen: &[Seen]) -> Result<()> {
    println!("ground truth:");
    for s in seen {
        println!(
            "  port {} {:?}: {:?} ({} of {:?} body bytes)",
            s.port, s.kind, s.truth, s.body, s.expected
        );
    }
    println!("report: {}", serde_json::to_string_pretty(report)?);
    Ok(())
}

/// What [`pool_then_stop`] ran: the two warm clients' ports, the busy client's, the busy
/// request's upstream line (`start <port>`), the report and what every client saw.
pub struct ProxyRun {
    pub warm: [u16; 2],
    pub busy: u16,
    pub busy_upstream_line: String,
    pub report: TerminationReport,
    pub seen: Vec<Seen>,
}

/// A proxy's upstream pool filled and left idle, then a request in flight through it when the
/// proxy gets `signal`: two concurrent slow requests (two upstream connections, pooled once
/// answered after 1 s; their client connections stay open, idle), quiet on both sides for
/// longer than the idle window, then a 4 s request. `upstream` prints `start <port>` for
/// each request it begins (`tests/scripts/http_app.py`); the report is the one of `cgroup_id`.
pub fn pool_then_stop(
    agent: &mut Agent,
    mut load: Load,
    upstream: &mut Proc,
    proxy: &Proc,
    signal: i32,
    cgroup_id: u64,
) -> Result<ProxyRun> {
    let warm = [
        load.in_flight("/slow?s=1", false)?,
        load.in_flight("/slow?s=1", false)?,
    ];
    for _ in 0..2 {
        upstream.expect_line("start")?;
    }
    agent.pump(Duration::from_millis(3500), None)?;
    let busy = load.in_flight("/slow?s=4", false)?;
    let busy_upstream_line = upstream.expect_line("start")?;
    agent.pump(Duration::from_millis(300), None)?;
    proxy.signal(signal)?;
    let report = agent.report_for(cgroup_id, Duration::from_secs(20))?;
    let seen = load.finish()?;
    show(&report, &seen)?;
    Ok(ProxyRun {
        warm,
        busy,
        busy_upstream_line,
        report,
        seen,
    })
}

impl ProxyRun {
    /// After a hard stop (the proxy's process gone at once): the busy client lost its answer
    /// (an end of stream or a reset), the warm clients, answered and idle, lost nothing; the
    /// report agrees, client by client (`closed_by_exit`, `closed_idle`).
    pub fn check_clients_after_hard_stop(&self) -> Result<()> {
        let busy = seen_of(&self.seen, self.busy)?;
        if !matches!(busy.truth, Truth::EofMidResponse | Truth::Reset) {
            bail!("the busy client did not lose its answer: {busy:?}");
        }
        check_verdicts(&self.report, &self.seen, |s| {
            Some(if self.warm.contains(&s.port) {
                Verdict::ClosedIdle
            } else {
                Verdict::ClosedByExit
            })
        })
    }
}

/// The report's outbound connections (the container's own upstreams and pools).
pub fn outbound(report: &TerminationReport) -> Vec<&Connection> {
    report
        .connections
        .iter()
        .filter(|c| c.direction == Direction::Outbound)
        .collect()
}

/// What the client on `port` saw.
pub fn seen_of(seen: &[Seen], port: u16) -> Result<&Seen> {
    seen.iter()
        .find(|s| s.port == port)
        .with_context(|| format!("no client on port {port}"))
}
