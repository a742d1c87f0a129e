//! The real `termscope agent` binary for the Kubernetes scenario tests: started as a child
//! process against the API server stand-in ([`crate::apiserver`]), asked for its reports over
//! its HTTP API, and stopped with SIGINT; plus a ground-truth client that keeps connecting to
//! a pod ([`Knocker`]).
//!
//! The binary is `<workspace>/target/debug/termscope` (or `$CARGO_TARGET_DIR/debug/termscope`,
//! or `$TERMSCOPE_AGENT_BIN`). `cargo test` does not build it: run `cargo build -p termscope`
//! first. `TERMSCOPE_TEST_AGENT_LOG` sets the agent's log filter (default `info`); its log is
//! shown when a test fails waiting for a report.

use std::{
    collections::HashSet,
    fs::File,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use socket2::{Domain, SockAddr, Socket, Type};
use termscope::terminations::{kube::PodTerminationReport, report::TerminationReport};

use crate::{NetNs, TempDir, apiserver::ApiServer};

/// The agent binary, or why it cannot be used.
pub fn agent_binary() -> Result<PathBuf> {
    let bin = match std::env::var_os("TERMSCOPE_AGENT_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace().join("target"));
            target.join("debug/termscope")
        }
    };
    if !bin.is_file() {
        bail!(
            "the agent binary {} does not exist: these tests run the real `termscope agent`; \
             build it first with `cargo build -p termscope` (`cargo test` does not build it)",
            bin.display()
        );
    }
    if let Some(newer) = newer_source(&bin) {
        eprintln!(
            "warning: {} is older than {}: the tests run the agent as last built; run \
             `cargo build -p termscope` to test the current sources",
            bin.display(),
            newer.display()
        );
    }
    Ok(bin)
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// A source file of the agent modified after `bin` was built, if any.
fn newer_source(bin: &Path) -> Option<PathBuf> {
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok()?;
    let root = workspace();
    let mut stack: Vec<PathBuf> = ["agent/src", "agent-common/src", "agent-ebpf/src"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n != "tests.rs")
                && meta.modified().is_ok_and(|m| m > built)
            {
                return Some(path);
            }
        }
    }
    None
}

/// A free TCP port on 127.0.0.1 (free when asked: the agent binds it right after).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running `termscope agent` in Kubernetes mode. Killed on drop; [`AgentProcess::stop`]
/// stops it the polite way (SIGINT).
pub struct AgentProcess {
    child: Child,
    /// Where its HTTP API listens.
    pub addr: SocketAddr,
    /// Its forensic log (`--log-file`).
    pub log_file: PathBuf,
    stderr: PathBuf,
    _dir: TempDir,
}

impl AgentProcess {
    /// Starts the agent against `api` as node `node_name`, with `--linger-ms 1000`, and waits
    /// until it is ready: `/readyz` answers 200 and its watchers on pods and EndpointSlices
    /// have listed and are watching (so it sees every change made from then on).
    pub fn start(api: &ApiServer, node_name: &str) -> Result<Self> {
        Self::start_with(api, node_name, &[])
    }

    /// [`AgentProcess::start`] with more command-line arguments.
    pub fn start_with(api: &ApiServer, node_name: &str, extra: &[&str]) -> Result<Self> {
        let bin = agent_binary()?;
        let dir = TempDir::new("agent")?;
        let log_file = dir.join("t.jsonl");
        let stderr = dir.join("agent.stderr");
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut cmd = Command::new(&bin);
        // No maps pinned and no state file: each run starts clean, apart from other tests.
        cmd.arg("agent")
            .args(["--no-pin", "--no-state-file"])
            .arg("--kubeconfig")
            .arg(api.kubeconfig())
            .args(["--node-name", node_name])
            .args(["--listen", &addr.to_string()])
            .arg("--log-file")
            .arg(&log_file)
            .args(["--no-stdout-reports", "--linger-ms", "1000"])
            .args(extra)
            // Keep the environment from choosing another API server or log level.
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env(
                "TERMSCOPE_LOG",
                std::env::var("TERMSCOPE_TEST_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr)?);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // The agent goes when the test thread that started it does (a panic, a kill).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut agent = AgentProcess {
            child,
            addr,
            log_file,
            stderr,
            _dir: dir,
        };
        agent
            .wait_ready(api, Duration::from_secs(60))
            .with_context(|| format!("agent stderr:\n{}", agent.stderr_tail(30)))?;
        Ok(agent)
    }

    fn wait_ready(&mut self, api: &ApiServer, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let last = match self.get("/readyz") {
                Ok((200, _)) => {
                    let requests = api.requests();
                    let watching = |path: &str| {
                        requests
                            .iter()
                            .any(|r| r.starts_with(&format!("GET {path}?")) && r.contains("watch="))
                    };
                    if watching("/api/v1/pods")
                        && watching("/apis/discovery.k8s.io/v1/endpointslices")
                    {
                        return Ok(());
                    }
                    format!("ready, but not watching pods and slices yet: {requests:?}")
                }
                Ok((status, body)) => format!("/readyz: {status} {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("the agent was not ready within {timeout:?}: {last}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the agent exited ({status}); its stderr ends with:\n{}",
                self.stderr_tail(30)
            );
        }
        Ok(())
    }

    /// The last `lines` lines the agent wrote to stderr (its log).
    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `GET path` on the agent's API (HTTP/1.0: the answer ends with the connection).
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: agent\r\n\r\n").as_bytes())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8(raw).context("the agent's answer is not UTF-8")?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("no end of headers in {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line in {head:?}"))?;
        Ok((status, body.to_string()))
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let (status, body) = self.get(path)?;
        if status != 200 {
            bail!("GET {path}: {status} {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("GET {path}: {body}"))
    }

    /// `/v1/pod-terminations`, newest first.
    pub fn pod_reports(&self) -> Result<Vec<PodTerminationReport>> {
        self.get_json("/v1/pod-terminations")
    }

    /// `/v1/terminations` (container reports), newest first.
    pub fn terminations(&self) -> Result<Vec<TerminationReport>> {
        self.get_json("/v1/terminations")
    }

    /// Waits for the pod report of `pod_uid`.
    pub fn wait_pod_report(
        &mut self,
        pod_uid: &str,
        timeout: Duration,
    ) -> Result<PodTerminationReport> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if let Some(r) = self
                .pod_reports()?
                .into_iter()
                .find(|r| r.pod_uid == pod_uid)
            {
                return Ok(r);
            }
            if Instant::now() >= deadline {
                let containers = self.terminations().map(|t| {
                    t.iter()
                        .map(|r| serde_json::to_string(r).unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join("\n")
                });
                bail!(
                    "no pod report for {pod_uid} within {timeout:?}; container reports:\n{}\n\
                     agent stderr:\n{}",
                    containers.unwrap_or_else(|e| format!("{e:#}")),
                    self.stderr_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the agent with SIGINT, as Ctrl-C does; waits for it to exit (SIGKILL after 15 s).
    pub fn stop(mut self) -> Result<ExitStatus> {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet.
        if unsafe { libc::kill(pid, libc::SIGINT) } != 0 {
            bail!("kill -INT {pid}: {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "the agent did not exit within 15 s of SIGINT; its stderr ends with:\n{}",
                    self.stderr_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What one connection attempt of a [`Knocker`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Knock {
    /// The whole answer, then the server's FIN.
    Answered,
    /// ECONNREFUSED: the SYN was answered with a RST.
    Refused,
    /// Connected, then ECONNRESET.
    Reset,
    /// Connected, then a FIN before the whole answer.
    Eof,
    /// Nothing answered the SYN in time (the address is gone), or another connect error.
    NoAnswer(String),
}

/// One attempt: the client's port (the report's `remote.port()`) and when it was made.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub port: u16,
    pub started: SystemTime,
    pub ended: SystemTime,
    pub knock: Knock,
}

impl Attempt {
    /// Whether the pod's network namespace answered at all (a SYN-ACK or a RST).
    pub fn answered_by_pod(&self) -> bool {
        !matches!(self.knock, Knock::NoAnswer(_))
    }
}

/// A client that keeps connecting to one address, every `every`, until stopped: each
/// attempt is a `GET /` with `Connection: close`, read to the end. Sockets are created in
/// the namespace given (the node's, for a pod IP), from a port bound before connecting so
/// that a refused attempt's port is known too.
pub struct Knocker {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<Vec<Attempt>>>,
}

/// How long one attempt waits for the SYN's answer.
const KNOCK_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

impl Knocker {
    pub fn start(ns: &NetNs, addr: SocketAddr, every: Duration) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = ns.spawn(move || {
            let mut attempts: Vec<Attempt> = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let t = Instant::now();
                let used: HashSet<u16> = attempts.iter().map(|a| a.port).collect();
                attempts.push(knock_once(addr, &used)?);
                std::thread::sleep(every.saturating_sub(t.elapsed()));
            }
            Ok(attempts)
        })?;
        Ok(Knocker { stop, handle })
    }

    /// A flag that stops the knocking when set (from another thread).
    pub fn stopper(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Stops knocking; returns every attempt, oldest first.
    pub fn finish(self) -> Result<Vec<Attempt>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("the knocking thread panicked"))?
    }
}

/// A socket bound to a port none of the `used` ones: the port names the attempt in the report,
/// so it must not be one the kernel handed out before (it does reuse them).
fn fresh_socket(used: &HashSet<u16>) -> Result<(Socket, u16)> {
    let mut held = Vec::new();
    loop {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.bind(&SockAddr::from("0.0.0.0:0".parse::<SocketAddr>()?))?;
        let port = socket
            .local_addr()?
            .as_socket()
            .context("not an IP socket")?
            .port();
        if !used.contains(&port) {
            return Ok((socket, port));
        }
        // Kept bound until a fresh port is found, so that the kernel picks another.
        held.push(socket);
    }
}

fn knock_once(addr: SocketAddr, used: &HashSet<u16>) -> Result<Attempt> {
    let (socket, port) = fresh_socket(used)?;
    let started = SystemTime::now();
    let knock = match socket.connect_timeout(&SockAddr::from(addr), KNOCK_CONNECT_TIMEOUT) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Knock::Refused,
        Err(e) => Knock::NoAnswer(format!("{e}")),
        Ok(()) => {
            let mut s = TcpStream::from(socket);
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            match s.write_all(b"GET / HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n") {
                Err(e) if e.kind() == ErrorKind::ConnectionReset => Knock::Reset,
                Err(e) => bail!("writing to {addr} from port {port}: {e}"),
                Ok(()) => {
                    let mut answer = Vec::new();
                    match s.read_to_end(&mut answer) {
                        Ok(_) if complete_answer(&answer) => Knock::Answered,
                        Ok(_) => Knock::Eof,
                        Err(e) if e.kind() == ErrorKind::ConnectionReset => Knock::Reset,
                        Err(e) => bail!("reading from {addr} on port {port}: {e}"),
                    }
                }
            }
        }
    };
    Ok(Attempt {
        port,
        started,
        ended: SystemTime::now(),
        knock,
    })
}

/// Whether `raw` is a whole HTTP response with a `Content-Length` body.
fn complete_answer(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .is_some_and(|n| n == body.len())
}
