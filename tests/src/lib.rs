//! Harness for termscope's kernel tests: real probes on the running kernel, real processes in
//! fresh cgroup v2 children ("containers") and network namespaces.
//!
//! Kernel tests need root. Where they cannot run they skip, saying why — except when
//! `TERMSCOPE_REQUIRE_KERNEL_TESTS=1` or `CI=true`, where a skip is a failure.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

pub mod http;
pub mod load;
pub mod nginx;

// Kubernetes test infrastructure: a real containerd driven over CRI like kubelet does, local
// images, and an API server stand-in.
pub mod apiserver;
pub mod containerd;
pub mod cri;
pub mod images;
pub mod kubelet;

use anyhow::{Context, Result, bail};
use termscope::{
    attribute::cgroupfs,
    decode::Event,
    probes::{EventStream, LoadOptions, Probes},
};

/// Whether a skipped kernel test must fail instead.
fn skips_are_failures() -> bool {
    std::env::var("TERMSCOPE_REQUIRE_KERNEL_TESTS").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `None` when kernel tests can run here; otherwise the reason (and a panic when skipping is
/// not allowed).
pub fn cannot_run() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let reason = if unsafe { libc::geteuid() } != 0 {
        Some("kernel tests need root (run `sudo -E cargo xtask test`)".to_string())
    } else if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        Some("this kernel has no BTF at /sys/kernel/btf/vmlinux".to_string())
    } else if cgroupfs::Mount::detect().is_err() {
        Some("no cgroup v2 mount".to_string())
    } else {
        None
    };
    if let Some(r) = &reason {
        assert!(
            !skips_are_failures(),
            "kernel test cannot run: {r} (TERMSCOPE_REQUIRE_KERNEL_TESTS=1 or CI=true)"
        );
        eprintln!("SKIPPED: {r}");
    }
    reason
}

/// Skips the calling test (returns from it) when kernel tests cannot run here.
#[macro_export]
macro_rules! kernel_test {
    () => {
        if $crate::cannot_run().is_some() {
            return Ok(());
        }
    };
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique short name for this test's cgroup / netns.
pub fn unique(prefix: &str) -> String {
    format!(
        "ts-{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh cgroup v2 child: a stand-in for a container. Killed and removed on drop.
pub struct TestCgroup {
    pub dir: PathBuf,
    pub path: String,
    pub id: u64,
    /// A directory made for it that is removed after it ([`TestCgroup::container`]'s slice).
    outer: Option<PathBuf>,
}

impl TestCgroup {
    pub fn new(prefix: &str) -> Result<Self> {
        let mount = cgroupfs::Mount::detect()?;
        let name = unique(prefix);
        let dir = mount.path.join(&name);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let id = cgroupfs::cgroup_id(&dir)?;
        Ok(TestCgroup {
            dir,
            path: format!("/{name}"),
            id,
            outer: None,
        })
    }

    /// A cgroup laid out as containerd (systemd driver) names a container's,
    /// `/<unique>.slice/cri-containerd-<64 hex>.scope`, so that the agent recognises it as a
    /// container (and the cgroups below it as its own).
    pub fn container(prefix: &str) -> Result<Self> {
        let mount = cgroupfs::Mount::detect()?;
        let slice = format!("{}.slice", unique(prefix));
        let id_hex = format!(
            "{:064x}",
            (u128::from(std::process::id()) << 32)
                | u128::from(SEQ.fetch_add(1, Ordering::Relaxed))
        );
        let scope = format!("cri-containerd-{id_hex}.scope");
        let outer = mount.path.join(&slice);
        let dir = outer.join(&scope);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let id = cgroupfs::cgroup_id(&dir)?;
        Ok(TestCgroup {
            dir,
            path: format!("/{slice}/{scope}"),
            id,
            outer: Some(outer),
        })
    }

    /// A cgroup below this one (removed before it: declare it after).
    pub fn child(&self, name: &str) -> Result<Self> {
        let dir = self.dir.join(name);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let id = cgroupfs::cgroup_id(&dir)?;
        Ok(TestCgroup {
            dir,
            path: format!("{}/{name}", self.path),
            id,
            outer: None,
        })
    }

    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// The processes in the cgroup now.
    pub fn pids(&self) -> Result<Vec<u32>> {
        let text = std::fs::read_to_string(self.procs())?;
        text.lines()
            .map(|l| l.trim().parse::<u32>().context("cgroup.procs line"))
            .collect()
    }

    /// Sends `sig` to every process in the cgroup, from the test process (outside the
    /// container): what a runtime does when it kills a container.
    pub fn signal_all(&self, sig: i32) -> Result<usize> {
        let pids = self.pids()?;
        for pid in &pids {
            // SAFETY: kill has no memory-safety preconditions.
            // A process that exited meanwhile (ESRCH) is fine.
            unsafe { libc::kill(i32::try_from(*pid)?, sig) };
        }
        Ok(pids.len())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        let mut removed = false;
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                removed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !removed {
            eprintln!("warning: could not remove {}", self.dir.display());
        }
        if let Some(outer) = &self.outer {
            let _ = std::fs::remove_dir(outer);
        }
    }
}

/// A network namespace with loopback up. Deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(prefix: &str) -> Result<Self> {
        let name = unique(prefix);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    pub fn file(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// The namespace's inode number: what the kernel programs report as `netns`.
    pub fn inode(&self) -> Result<u32> {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(self.file())?.ino();
        Ok(u32::try_from(ino)?)
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it creates live there
    /// (and in the test process's own cgroup, i.e. outside the "container").
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = File::open(self.file())?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on a valid netns fd affects only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(anyhow::anyhow!(
                        "setns: {}",
                        std::io::Error::last_os_error()
                    ));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in netns panicked"))?
        })
    }
}

impl NetNs {
    /// Runs `f` on a new thread that has entered this namespace and stays there (sockets
    /// created on it live in the namespace); returns its handle.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Result<T>>> {
        let file = File::open(self.file())?;
        Ok(std::thread::spawn(move || {
            // SAFETY: setns on a valid netns fd affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            drop(file);
            f()
        }))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A fresh directory under the system's temp dir, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `contents` to `name` in the directory; returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> Result<PathBuf> {
        let p = self.join(name);
        std::fs::write(&p, contents).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A file the test apps append marker lines to, named by their `MARKS` environment variable:
/// for servers that do not leave the app its stdout (uWSGI logs it to stderr).
pub struct Marks {
    pub path: PathBuf,
}

impl Marks {
    pub fn new(dir: &TempDir) -> Self {
        Marks {
            path: dir.join("marks"),
        }
    }

    /// Waits until `n` lines starting with `prefix` are in the file; returns them.
    pub fn wait(&self, prefix: &str, n: usize, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.path).unwrap_or_default();
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with(prefix))
                .map(str::to_string)
                .collect();
            if lines.len() >= n {
                return Ok(lines);
            }
            if Instant::now() >= deadline {
                bail!("{} {prefix:?} lines of {n} within {timeout:?}", lines.len());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs a command to completion, failing with its stderr.
pub fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// How long [`Proc::expect_line`] waits for a line: a program's start-up, not something the
/// tests measure. CI runs test files side by side on two cores, with a VM beside them at times:
/// a Python server's imports took over 20 s there.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// A process started inside a test cgroup (and netns), with its stdout lines readable.
pub struct Proc {
    pub child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `cmd` as a member of `cgroup` and, when given, inside `netns`. The child moves
    /// itself between fork and exec, so its very first instruction already runs there.
    pub fn spawn(cmd: &mut Command, cgroup: &TestCgroup, netns: Option<&NetNs>) -> Result<Self> {
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(cgroup.procs())?;
        let ns = netns.map(|n| File::open(n.file())).transpose()?;
        let procs_fd = procs.as_raw_fd();
        let ns_fd = ns.as_ref().map(|f| f.as_raw_fd());
        // SAFETY: the closure only makes async-signal-safe syscalls (write, setns) on fds that
        // stay open until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                // Writing "0" moves the writing process itself.
                if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = ns_fd
                    && libc::setns(fd, libc::CLONE_NEWNET) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        drop((procs, ns));
        let stdout = child.stdout.take().context("no stdout")?;
        Ok(Proc {
            child,
            lines: read_lines(stdout),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads stdout lines until one starts with `prefix`; returns it. Fails when the
    /// process closes its stdout first, or after `LINE_TIMEOUT`, saying what it printed
    /// meanwhile.
    pub fn expect_line(&mut self, prefix: &str) -> Result<String> {
        let deadline = Instant::now() + LINE_TIMEOUT;
        // The last lines passed over, for the error (what the process did say).
        let mut skipped: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(line) => {
                    if skipped.len() == 10 {
                        skipped.pop_front();
                    }
                    skipped.push_back(line);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "process {} ended before printing {prefix:?} (its last lines: {skipped:?})",
                    self.pid()
                ),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => bail!(
                    "process {} printed no {prefix:?} line within {LINE_TIMEOUT:?} (its last \
                     lines meanwhile: {skipped:?})",
                    self.pid()
                ),
            }
        }
    }

    /// Whether the process has exited (and its status), without waiting.
    pub fn try_exit(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    pub fn signal(&self, sig: i32) -> Result<()> {
        let pid = i32::try_from(self.pid())?;
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(pid, sig) } != 0 {
            bail!("kill {pid}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Reads `stdout` line by line on a thread (so that waiting for a line can time out).
fn read_lines(stdout: ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if tx.send(line.trim_end().to_string()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid of the first child of `pid` (waits up to 5 s for one): the PID-namespace init
/// `unshare --pid --fork` starts, an init's app.
pub fn child_of(pid: u32) -> Result<u32> {
    for _ in 0..100 {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
        if let Some(first) = children.split_whitespace().next() {
            return Ok(first.parse()?);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{pid} has no child")
}

/// Sends `sig` to `pid`.
pub fn kill(pid: u32, sig: i32) -> Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(i32::try_from(pid)?, sig) } != 0 {
        bail!("kill {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A python3 program run with `-u` (unbuffered) and `-c`.
/// Waits for every client thread and collects what each saw (a panicked client is an error).
pub fn join_clients<T>(handles: Vec<std::thread::JoinHandle<Result<T>>>) -> Result<Vec<T>> {
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))?
        })
        .collect()
}

pub fn python(code: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.args(["-u", "-c", code]);
    cmd
}

/// The test helper scripts' directory.
pub fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// The real probes, loaded for one test, with the events they have seen so far: every state
/// change of a watched connection streamed through the ring ([`LoadOptions::stream_states`]),
/// as the tests of the kernel's view of each change read them. The agent ([`Agent`]) runs
/// without it, on the kernel's records of connections.
pub struct Kernel {
    pub probes: Probes,
    stream: EventStream,
    pub seen: Vec<Event>,
}

impl Kernel {
    pub fn load() -> Result<Self> {
        Self::load_with(&LoadOptions::default())
    }

    /// Loads with `opts`, streaming every state change.
    pub fn load_with(opts: &LoadOptions) -> Result<Self> {
        let opts = LoadOptions {
            stream_states: true,
            ..opts.clone()
        };
        let mut probes = Probes::load(&opts)?;
        let not_attached: Vec<_> = probes
            .status
            .iter()
            // A probe another one stands in for on this kernel is fine (`doctor` says which).
            .filter(|s| {
                !matches!(
                    s.state,
                    termscope::probes::ProbeState::Attached
                        | termscope::probes::ProbeState::NotNeeded(_)
                )
            })
            .map(|s| format!("{}: {:?}", s.program, s.state))
            .collect();
        if !not_attached.is_empty() {
            bail!("probes not attached: {not_attached:?}");
        }
        let stream = probes.events()?;
        Ok(Kernel {
            probes,
            stream,
            seen: Vec::new(),
        })
    }

    /// Collects events until `done(seen)` holds, or fails after `timeout` listing what was
    /// seen. (A deadline for events to arrive, not a performance assertion.)
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Event]) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            for e in self.stream.wait(Duration::from_millis(50)) {
                self.seen.push(e?);
            }
            if done(&self.seen) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut dump = String::new();
                for e in &self.seen {
                    dump.push_str(&serde_json::to_string(e)?);
                    dump.push('\n');
                }
                bail!("timed out waiting for {what}; events seen:\n{dump}");
            }
        }
    }

    /// Collects whatever arrives within `period` (to check that something did *not* happen).
    pub fn settle(&mut self, period: Duration) -> Result<()> {
        let deadline = Instant::now() + period;
        while Instant::now() < deadline {
            for e in self.stream.wait(Duration::from_millis(50)) {
                self.seen.push(e?);
            }
        }
        Ok(())
    }

    /// The events attributed to `cgroup_id`.
    pub fn of(&self, cgroup_id: u64) -> Vec<&Event> {
        self.seen
            .iter()
            .filter(|e| e.cgroup_id() == cgroup_id)
            .collect()
    }
}

/// The real agent pipeline (probes, attribution, termination engine) running in the test
/// process: what `termscope agent` runs, without the async runtime and outputs.
pub struct Agent {
    pub pipeline: termscope::pipeline::Pipeline,
    stream: EventStream,
    /// Every event seen, for diagnostics when a test fails.
    pub seen: Vec<Event>,
    pub reports: Vec<termscope::terminations::report::TerminationReport>,
}

impl Agent {
    /// Starts the pipeline with a short linger (the report follows the last exit quickly) and
    /// the given survive timeout.
    pub fn start(survive_after: Duration) -> Result<Self> {
        Self::start_with(&LoadOptions::default(), survive_after)
    }

    /// Like [`Agent::start`], with the given kernel-side options (e.g. small ring buffers).
    pub fn start_with(opts: &LoadOptions, survive_after: Duration) -> Result<Self> {
        Self::start_lingering(opts, survive_after, Duration::from_millis(800))
    }

    /// Like [`Agent::start_with`], with the given linger (how long a report waits after the
    /// container's last exit; the agent's default is 3 s).
    pub fn start_lingering(
        opts: &LoadOptions,
        survive_after: Duration,
        linger: Duration,
    ) -> Result<Self> {
        let mut probes = Probes::load(opts)?;
        let stream = probes.events()?;
        let cfg = termscope::terminations::EngineConfig {
            linger,
            survive_after,
            max_connections: 1000,
            node: "test-node".into(),
        };
        let pipeline =
            termscope::pipeline::Pipeline::new(probes, cfg, cgroupfs::Mount::detect().ok());
        Ok(Agent {
            pipeline,
            stream,
            seen: Vec::new(),
            reports: Vec::new(),
        })
    }

    /// Runs the pipeline for up to `period`, or until a report for `cgroup_id` is out.
    pub fn pump(&mut self, period: Duration, cgroup_id: Option<u64>) -> Result<()> {
        let deadline = Instant::now() + period;
        let mut last_tick = Instant::now();
        while Instant::now() < deadline {
            for e in self.stream.wait(Duration::from_millis(50)) {
                let e = e?;
                self.pipeline.handle(&e)?;
                self.seen.push(e);
            }
            if last_tick.elapsed() >= Duration::from_millis(100) {
                last_tick = Instant::now();
                self.reports.extend(self.pipeline.tick()?);
                if let Some(cg) = cgroup_id
                    && self.reports.iter().any(|r| r.subject.cgroup_id == cg)
                {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The events seen for `cgroup_id` (and those of no cgroup), one JSON object a line: for
    /// diagnostics.
    pub fn events_of(&self, cgroup_id: u64) -> Result<String> {
        let mut dump = String::new();
        for e in self
            .seen
            .iter()
            .filter(|e| e.cgroup_id() == cgroup_id || e.cgroup_id() == 0)
        {
            dump.push_str(&serde_json::to_string(e)?);
            dump.push('\n');
        }
        Ok(dump)
    }

    /// Waits for the report of `cgroup_id`.
    pub fn report_for(
        &mut self,
        cgroup_id: u64,
        timeout: Duration,
    ) -> Result<termscope::terminations::report::TerminationReport> {
        self.pump(timeout, Some(cgroup_id))?;
        if let Some(r) = self
            .reports
            .iter()
            .find(|r| r.subject.cgroup_id == cgroup_id)
        {
            return Ok(r.clone());
        }
        let dump = self.events_of(cgroup_id)?;
        bail!("no report for cgroup {cgroup_id} within {timeout:?}; its events:\n{dump}")
    }
}

/// Late traffic (seeds 001/003/004): the app (`http_app.py`, port 8080, in `cg` and `ns`)
/// closes its listener as soon as SIGTERM arrives and lingers 1 s before exiting, while a
/// client keeps connecting every 100 ms. Returns what each attempt saw (the client has left
/// the namespace) and the moment just before SIGTERM was sent; `agent` ran throughout.
pub fn stop_while_knocking(
    agent: &mut Agent,
    cg: &TestCgroup,
    ns: &NetNs,
) -> Result<(Vec<load::Seen>, Instant)> {
    let mut cmd = Command::new("python3");
    cmd.arg("-u")
        .arg(scripts().join("http_app.py"))
        .args(["8080", "close-listener"]);
    let mut app = Proc::spawn(&mut cmd, cg, Some(ns))?;
    app.expect_line("listening")?;
    let mut load = load::Load::new(ns, "127.0.0.1:8080".parse()?);
    load.wait_ready("/", Duration::from_secs(10))?;
    load.knock("/", Duration::from_millis(100))?;
    agent.pump(Duration::from_millis(400), None)?;
    let signalled = Instant::now();
    app.signal(libc::SIGTERM)?;
    // Keep knocking until the app is gone: its last refusals fall within the agent's linger.
    while app.try_exit()?.is_none() {
        if signalled.elapsed() > Duration::from_secs(10) {
            bail!("the app did not exit");
        }
        agent.pump(Duration::from_millis(50), None)?;
    }
    Ok((load.finish()?, signalled))
}

// The real agent binary against the Kubernetes stand-ins (tests/tests/k8s_scenarios.rs).
pub mod k8s_agent;

/// A kustomize overlay as an operator writes one: `deploy` (the repository's `deploy/`) with
/// its component `deploy/components/<component>`, in a temp dir (render it with `kubectl
/// kustomize <dir>`).
pub fn component_overlay(deploy: &Path, component: &str) -> Result<TempDir> {
    let dir = TempDir::new(&format!("{component}-overlay"))?;
    // kustomize wants relative paths: from the overlay up to / and down to deploy/.
    let up = "../".repeat(dir.path.components().count().saturating_sub(1));
    let rel = format!(
        "{up}{}",
        deploy.display().to_string().trim_start_matches('/')
    );
    dir.write(
        "kustomization.yaml",
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n  - {rel}\ncomponents:\n  - {rel}/components/{component}\n"
        ),
    )?;
    Ok(dir)
}

/// The documents of a YAML text as JSON values, read with python3's PyYAML (which
/// kubernetes-validate brings: `cargo xtask setup --test-deps`).
pub fn yaml_documents(yaml: &str) -> Result<Vec<serde_json::Value>> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\n\
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("python3")?;
    child
        .stdin
        .take()
        .context("python3's stdin")?
        .write_all(yaml.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "reading YAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout)? {
        serde_json::Value::Array(docs) => Ok(docs),
        other => bail!("not a list of documents: {other}"),
    }
}
