//! `cargo xtask demo`: the fastest way to see the point. A real nginx in its own cgroup and
//! network namespace (a stand-in container), four clients downloading a file slowly, nginx
//! stopped with SIGTERM — what `docker stop` and Kubernetes send, and what nginx takes as a
//! fast shutdown — and termscope's report of what that did to the connections.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, tasks, util::Ctx};

const AGENT_ADDR: &str = "127.0.0.1:19469";
const CLIENTS: usize = 4;

/// The demo's directory, removed on drop whatever happened.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Everything the demo creates, removed on drop whatever happened.
struct Scene {
    netns: String,
    cgroup: PathBuf,
    agent: Option<Child>,
    clients: Vec<Child>,
}

impl Drop for Scene {
    fn drop(&mut self) {
        for c in &mut self.clients {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(agent) = &mut self.agent {
            // SIGINT: the agent reports what is in progress and detaches its probes.
            let _ = Command::new("kill")
                .args(["-INT", &agent.id().to_string()])
                .status();
            let _ = agent.wait();
        }
        let _ = fs::write(self.cgroup.join("cgroup.kill"), "1");
        for _ in 0..50 {
            if fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// The cgroup v2 mount point from /proc/self/mountinfo.
fn cgroup2_mount() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next() == Some("cgroup2"))
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup2 filesystem is mounted")
}

fn nginx_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process on;\nworker_processes 2;\nuser root;\npid {d}/nginx.pid;\n\
         error_log {d}/nginx-error.log notice;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n\
         \x20 fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
         \x20 keepalive_timeout 60;\n  server {{\n    listen 127.0.0.1:8080;\n\
         \x20   location = /big {{ alias {d}/big.bin; limit_rate 256k; }}\n\
         \x20   location / {{ return 200 \"hello\\n\"; }}\n  }}\n}}\n"
    )
}

fn in_netns(netns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, program]);
    cmd
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} did not happen within {timeout:?}")
}

pub fn demo(ctx: &Ctx, signal: &str) -> Result<()> {
    let signal = signal.trim_start_matches("SIG").to_ascii_uppercase();
    if !ctx.is_root {
        bail!(
            "the demo loads eBPF programs and creates a cgroup and a network namespace: run it \
             as root (`sudo -E cargo xtask demo`)"
        );
    }
    setup::run_for_demo(ctx)?;
    let bin = tasks::build(ctx, false)?;
    let id = std::process::id();
    let tmp = TempDir(std::env::temp_dir().join(format!("termscope-demo-{id}")));
    let dir = tmp.0.clone();
    fs::create_dir_all(dir.join("tmp"))?;
    let mut scene = Scene {
        netns: format!("termscope-demo-{id}"),
        cgroup: cgroup2_mount()?.join(format!("termscope-demo-{id}")),
        agent: None,
        clients: Vec::new(),
    };
    fs::write(dir.join("nginx.conf"), nginx_conf(&dir))?;
    fs::write(dir.join("big.bin"), vec![b'x'; 4 << 20])?;
    fs::create_dir(&scene.cgroup)
        .with_context(|| format!("creating the cgroup {}", scene.cgroup.display()))?;
    ctx.run(Command::new("ip").args(["netns", "add", &scene.netns]))?;
    ctx.run(Command::new("ip").args(["-n", &scene.netns, "link", "set", "lo", "up"]))?;

    let log = dir.join("terminations.jsonl");
    println!(
        "\n==> starting termscope (its own log: {})",
        dir.join("agent.log").display()
    );
    scene.agent = Some(
        Command::new(&bin)
            .args(["agent", "--listen", AGENT_ADDR, "--linger-ms", "1500"])
            .args(["--no-stdout-reports", "--log-file"])
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("agent.log"))?)
            .spawn()
            .context("starting termscope")?,
    );
    wait_until("termscope becoming ready", Duration::from_secs(30), || {
        Command::new("curl")
            .args(["-sf", &format!("http://{AGENT_ADDR}/readyz")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })?;

    println!(
        "==> starting nginx in cgroup {} and netns {}",
        scene.cgroup.display(),
        scene.netns
    );
    let procs = scene.cgroup.join("cgroup.procs");
    let mut nginx = Command::new("sh")
        .args([
            "-c",
            "echo $$ > \"$1\" && exec ip netns exec \"$2\" nginx -c \"$3\"",
            "sh",
        ])
        .arg(&procs)
        .arg(&scene.netns)
        .arg(dir.join("nginx.conf"))
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    let netns = scene.netns.clone();
    wait_until("nginx answering", Duration::from_secs(10), || {
        in_netns(&netns, "curl")
            .args(["-sf", "http://127.0.0.1:8080/"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })?;

    println!("==> {CLIENTS} clients download a 4 MiB file at 256 KiB/s (16 s each)");
    for _ in 0..CLIENTS {
        scene.clients.push(
            in_netns(&scene.netns, "curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{size_download}"])
                .arg("http://127.0.0.1:8080/big")
                .stdout(Stdio::piped())
                .spawn()?,
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    if signal == "TERM" {
        println!(
            "==> stopping nginx with SIGTERM, as `docker stop` and Kubernetes do (nginx: pid {})",
            nginx.id()
        );
    } else {
        println!(
            "==> stopping nginx with SIG{signal} (nginx: pid {})",
            nginx.id()
        );
    }
    ctx.run(Command::new("kill").args([&format!("-{signal}"), &nginx.id().to_string()]))?;
    let _ = nginx.wait();

    println!("\n==> what the clients saw (ground truth)");
    for (i, client) in std::mem::take(&mut scene.clients).into_iter().enumerate() {
        let out = client.wait_with_output()?;
        let bytes = String::from_utf8_lossy(&out.stdout);
        let how = match out.status.code() {
            Some(0) => "complete".to_string(),
            Some(18) => "cut: transfer closed with data outstanding (curl 18)".to_string(),
            Some(56) => "cut: connection reset (curl 56)".to_string(),
            Some(c) => format!("curl exit {c}"),
            None => "killed".to_string(),
        };
        println!("    client {}: {bytes} of 4194304 bytes, {how}", i + 1);
    }

    println!("\n==> termscope's report");
    let mut report = Command::new(&bin);
    report.args(["report", "--from-file"]).arg(&log);
    wait_until("the termination report", Duration::from_secs(20), || {
        fs::read_to_string(&log).is_ok_and(|s| !s.trim().is_empty())
    })?;
    ctx.run(&mut report)?;
    println!(
        "\n(`termscope report --json` prints the same as JSON; the demo's files in {} are \
         removed now)",
        dir.display()
    );
    if signal == "TERM" {
        println!(
            "Now try `cargo xtask demo --signal QUIT`: SIGQUIT is nginx's graceful shutdown \
             (STOPSIGNAL SIGQUIT), it lets the downloads finish (16 s)."
        );
    }
    // The scene (agent, cgroup, netns) goes away first, then its files.
    drop(scene);
    drop(tmp);
    Ok(())
}
