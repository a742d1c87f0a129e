//! A private containerd for the tests: the real Debian `containerd` (1.6) and `runc` (1.1),
//! configured as on a Kubernetes node with the cgroupfs driver, and driven over CRI.
//!
//! Everything it owns lives apart from anything else on the machine:
//! - its `--root`, `--state`, sockets, logs, runc's state (`Root`), the pods' logs and the CNI
//!   address allocations are under one temp dir (`/tmp/ts-ctrd-<pid>-<n>`); the pods' network
//!   namespaces are mounted under its state dir. Outside it, only what containerd 1.6 and
//!   libcni hard-code: shim sockets in `/run/containerd/s/`, exec fifos in
//!   `/run/containerd/fifo/`, and CNI results cached in `/var/lib/cni/results/` while a pod
//!   lives (all named by unique ids, all removed with the pod);
//! - it runs in its own network namespace (`ip netns` name `ts-node-<pid>-<n>`), the test's
//!   stand-in for the node's host network. Pods get their network from the standard CNI
//!   `bridge` + `host-local` plugins (Debian's `containernetworking-plugins`): a bridge
//!   `ts-cni0` with 10.88.0.1/24 in that node namespace and one veth per pod, so a pod has
//!   `eth0` with a 10.88.0.x address as on a real node. The addresses exist only inside these
//!   two kinds of namespace: nothing leaves the machine, and nothing reaches the host's own
//!   network. Clients reach a pod either from the node namespace at the pod IP (what kubelet
//!   probes, other pods and kube-proxy'd traffic look like: [`Containerd::node_netns`]) or from
//!   inside the pod's own namespace at 127.0.0.1 ([`crate::cri::SandboxNetwork::netns`]).
//! - CRI runs with `SystemdCgroup = false` (the cgroupfs driver). On this kind of host
//!   (cgroup v1 controllers plus cgroup2 at `/sys/fs/cgroup/unified`, "hybrid"), runc 1.1
//!   creates a container's cgroup in every v1 hierarchy *and* in the unified one, so the
//!   cgroup2 path of a container is `/kubepods/<qos>/pod<uid>/<container id>` under the
//!   cgroup2 mount, exactly the path kubelet's cgroupfs layout gives on a cgroup v2 node.
//!   (The controllers stay on the v1 hierarchies, where runc applies the limits; the v2
//!   directories only group the processes, which is what the agent reads.)
//!
//! Root on the test machines may lack CAP_SYS_RESOURCE; then CRI's `restrict_oom_score_adj`
//! is on (the sandbox's oom_score_adj of -998 would make runc fail), clamping negative
//! oom_score_adj values to containerd's own.
//!
//! One containerd serves a whole test binary ([`Containerd::shared`]): started on first use
//! with the test images imported, and stopped at process exit (pods removed, daemon stopped,
//! mounts, cgroups, namespace and temp dir cleaned up). If the test process is killed outright,
//! containerd dies with it (parent-death signal) but containers already running are left.

use std::{
    fs::File,
    io::Read,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, OnceLock, atomic::AtomicBool, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{NetNs, cri::Cri, unique};

/// The programs the Kubernetes tests need, with the Debian package of each.
const NEEDED: &[(&str, &str)] = &[
    ("/usr/bin/containerd", "containerd"),
    ("/usr/bin/containerd-shim-runc-v2", "containerd"),
    ("/usr/bin/ctr", "containerd"),
    ("/usr/sbin/runc", "runc"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("/usr/lib/cni/host-local", "containernetworking-plugins"),
    ("/usr/lib/cni/loopback", "containernetworking-plugins"),
    ("/usr/bin/ldd", "libc-bin"),
];

/// The CNI directory of Debian's containernetworking-plugins.
const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The pod subnet, inside the node namespace only.
pub const POD_SUBNET: &str = "10.88.0.0/24";
/// The node namespace's address on the pod bridge (the pods' default gateway).
pub const NODE_BRIDGE_IP: &str = "10.88.0.1";

/// `None` when the Kubernetes tests can run here, otherwise why not (and a panic when
/// skipping is not allowed: CI=true or TERMSCOPE_REQUIRE_KERNEL_TESTS=1).
pub fn cannot_run() -> Option<String> {
    if let Some(r) = crate::cannot_run() {
        return Some(r);
    }
    let missing: Vec<String> = NEEDED
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(path, pkg)| format!("{path} (package {pkg})"))
        .collect();
    let reason = (!missing.is_empty()).then(|| {
        format!(
            "the Kubernetes tests need {}: run `cargo xtask setup --test-deps`",
            missing.join(", ")
        )
    });
    if let Some(r) = &reason {
        assert!(
            !crate::skips_are_failures(),
            "Kubernetes test cannot run: {r} (TERMSCOPE_REQUIRE_KERNEL_TESTS=1 or CI=true)"
        );
        eprintln!("SKIPPED: {r}");
    }
    reason
}

/// Skips the calling test (returns `Ok(())` from it) when the Kubernetes tests cannot run here.
#[macro_export]
macro_rules! k8s_test {
    () => {
        if $crate::containerd::cannot_run().is_some() {
            return Ok(());
        }
    };
}

/// A running private containerd.
pub struct Containerd {
    /// The temp dir holding everything it owns.
    pub dir: PathBuf,
    /// Its gRPC socket (CRI and containerd's own API).
    pub socket: PathBuf,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    node: Option<NetNs>,
    pid: u32,
    cri: Cri,
    /// How long the start took (daemon up and answering CRI), for the record.
    pub started_in: Duration,
    /// Pod cgroup parents created through this containerd, removed at shutdown.
    pod_cgroups: Mutex<Vec<String>>,
    stopped: AtomicBool,
}

static SHARED: OnceLock<std::result::Result<Containerd, String>> = OnceLock::new();

extern "C" fn stop_shared_at_exit() {
    if let Some(Ok(c)) = SHARED.get() {
        c.shutdown();
    }
}

impl Containerd {
    /// The containerd shared by every test in this test binary, with the standard test images
    /// ([`crate::images::PAUSE`], [`crate::images::APP`]) imported. Started on first use;
    /// stopped and cleaned up when the process exits.
    pub fn shared() -> Result<&'static Containerd> {
        let c = SHARED.get_or_init(|| {
            let started = Self::start().and_then(|c| {
                // SAFETY: registering a plain extern "C" function with no preconditions.
                if unsafe { libc::atexit(stop_shared_at_exit) } != 0 {
                    c.shutdown();
                    bail!("atexit failed: cannot arrange to stop containerd at exit");
                }
                let t = Instant::now();
                let imported = crate::images::import_standard(&c);
                if let Err(e) = imported {
                    c.shutdown();
                    return Err(e.context("importing the test images"));
                }
                eprintln!(
                    "[containerd] started in {:?}, test images imported in {:?} ({})",
                    c.started_in,
                    t.elapsed(),
                    c.dir.display()
                );
                Ok(c)
            });
            started.map_err(|e| format!("{e:#}"))
        });
        c.as_ref()
            .map_err(|e| anyhow::anyhow!("the shared containerd did not start: {e}"))
    }

    /// Starts a private containerd (stopped and cleaned up on drop). No images are imported.
    pub fn start() -> Result<Containerd> {
        let t = Instant::now();
        let name = unique("ctrd");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(dir.join("cni/net.d"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(&config, config_toml(&dir, &socket))?;
        std::fs::write(
            dir.join("cni/net.d/10-termscope-test.conflist"),
            cni_conflist(&dir),
        )?;
        let node = NetNs::new("node").context("creating the node network namespace")?;
        let log = dir.join("containerd.log");
        let pid = spawn_daemon(&config, &log, &node.file())?;
        let mut c = Containerd {
            cri: Cri::connect(&socket)?,
            dir,
            socket,
            log,
            node: Some(node),
            pid,
            started_in: Duration::ZERO,
            pod_cgroups: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
        };
        if let Err(e) = c.wait_ready(Duration::from_secs(30)) {
            let log = c.log_tail(40);
            c.shutdown();
            return Err(e.context(format!("containerd's log ends with:\n{log}")));
        }
        c.started_in = t.elapsed();
        Ok(c)
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if !Path::new(&format!("/proc/{}", self.pid)).exists() {
                bail!("containerd (pid {}) exited", self.pid);
            }
            if self.socket.exists() {
                match self.cri.version() {
                    Ok(v) if v.runtime_name == "containerd" => return Ok(()),
                    Ok(v) => bail!("the socket answers as {v:?}, not containerd"),
                    Err(e) if Instant::now() >= deadline => {
                        return Err(e.context("containerd's CRI did not answer"));
                    }
                    Err(_) => {}
                }
            } else if Instant::now() >= deadline {
                bail!("containerd did not create {}", self.socket.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A CRI client on this containerd.
    pub fn cri(&self) -> &Cri {
        &self.cri
    }

    /// The node's network namespace: containerd, the CNI bridge and pod IPs live there.
    pub fn node_netns(&self) -> &NetNs {
        self.node
            .as_ref()
            .unwrap_or_else(|| unreachable!("the node namespace lives as long as containerd"))
    }

    /// `ctr` on this containerd, in the CRI namespace `k8s.io`.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"]);
        cmd
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The last `lines` lines of containerd's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Records a pod cgroup parent (`/kubepods/...`) to remove when containerd stops (kubelet
    /// removes pod cgroups itself; this catches what a failed test left behind).
    pub fn track_pod_cgroup(&self, cgroup_parent: &str) {
        if let Ok(mut v) = self.pod_cgroups.lock() {
            v.push(cgroup_parent.to_string());
        }
    }

    /// Stops every pod, the daemon, and removes what it left. Idempotent.
    pub fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        if Path::new(&format!("/proc/{}", self.pid)).exists() {
            if let Ok(pods) = self.cri.list_pod_sandboxes() {
                for p in pods {
                    let _ = self.cri.stop_pod_sandbox(&p.id);
                    let _ = self.cri.remove_pod_sandbox(&p.id);
                }
            }
            stop_pid(self.pid, Duration::from_secs(5));
        }
        let pods = self
            .pod_cgroups
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        for parent in pods {
            remove_cgroup_everywhere(&parent, true);
        }
        for qos in ["/kubepods/burstable", "/kubepods/besteffort", "/kubepods"] {
            remove_cgroup_everywhere(qos, false);
        }
        unmount_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(node) = &self.node {
            let _ = Command::new("ip")
                .args(["netns", "del", &node.name])
                .status();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.shutdown();
        // shutdown() deleted the namespace already.
        std::mem::forget(self.node.take());
    }
}

/// Starts containerd in the node namespace from a thread that lives as long as it does: the
/// parent-death signal (SIGKILL) is tied to the thread that forked, so the daemon dies with
/// the test process, not with the test that happened to start it.
fn spawn_daemon(config: &Path, log: &Path, netns: &Path) -> Result<u32> {
    let log_file = File::create(log)?;
    let log_err = log_file.try_clone()?;
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let mut cmd = Command::new("containerd");
    cmd.arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("containerd".into())
        .spawn(move || {
            let ns_fd = ns.as_raw_fd();
            // SAFETY: only async-signal-safe syscalls on an fd that stays open until spawn
            // returns.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                        || libc::setns(ns_fd, libc::CLONE_NEWNET) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            match cmd.spawn() {
                Ok(mut child) => {
                    let _ = tx.send(Ok(child.id()));
                    drop(ns);
                    let _ = child.wait();
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })?;
    rx.recv()
        .context("the containerd thread ended")?
        .context("starting containerd")
}

/// SIGTERM, then SIGKILL after `grace`; waits for the process to go.
fn stop_pid(pid: u32, grace: Duration) {
    let Ok(p) = i32::try_from(pid) else { return };
    let gone = || !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid);
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(p, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while !gone() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !gone() {
        // SAFETY: as above.
        unsafe { libc::kill(p, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while !gone() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Every cgroup hierarchy mounted under /sys/fs/cgroup (v1 ones and the v2 one).
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .filter(|p| p.starts_with("/sys/fs/cgroup"))
        .collect()
}

/// Removes `path` (and, with `recursive`, its children, killing what runs there first) in
/// every cgroup hierarchy. Best effort.
pub fn remove_cgroup_everywhere(path: &str, recursive: bool) {
    let rel = path.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    for h in cgroup_hierarchies() {
        let dir = h.join(rel);
        if !dir.is_dir() {
            continue;
        }
        if recursive {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            remove_tree(&dir);
        } else {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// rmdir of a cgroup directory tree, leaves first, retrying while processes leave.
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Unmounts everything mounted under `dir` (deepest first): rootfs overlays and netns
/// bind mounts a crashed run may have left.
fn unmount_under(dir: &Path) {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// containerd's configuration: CRI on, cgroupfs driver, private paths, local sandbox image.
fn config_toml(dir: &Path, socket: &Path) -> String {
    let d = dir.display();
    let sock = socket.display();
    let pause = crate::images::PAUSE;
    let restrict_oom = !has_cap_sys_resource();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
# Plugins that need kernel features or files this machine does not have, or that would
# reach outside the temp dir.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  disable_apparmor = true
  enable_selinux = false
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_unprivileged_ports = false
  # Root on the test machines may lack CAP_SYS_RESOURCE (not in the bounding set), so the
  # sandbox's oom_score_adj of -998 would fail in runc ("failed to update
  # /proc/self/oom_score_adj: Permission denied"). Clamp to containerd's own value instead.
  restrict_oom_score_adj = {restrict_oom}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{d}/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "{d}/runc"
        SystemdCgroup = false
"#
    )
}

/// Whether this process may lower oom_score_adj (CAP_SYS_RESOURCE in its effective set).
fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// The pod network: a bridge in the node namespace, host-local addresses from the pod
/// subnet, state under the temp dir. No masquerading and no port mapping: nothing is routed
/// out of the node namespace.
fn cni_conflist(dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "termscope-test",
        "plugins": [{
            "type": "bridge",
            "bridge": "ts-cni0",
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": POD_SUBNET, "gateway": NODE_BRIDGE_IP }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": dir.join("cni/ipam").display().to_string(),
            }
        }]
    })
    .to_string()
}
