//! The real agent's HTTP API under hostile clients: thousands of idle connections and
//! hundreds of slowloris ones (request heads never finished). `/metrics` keeps answering, the
//! agent keeps at most `--api-max-connections` open, and its memory and file descriptors stay
//! bounded. Before the connection cap and timeouts (issue 11), 15,000 idle connections took
//! 238 MB and 800 slowloris connections stayed open for good.

use std::{
    io::Write,
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use termscope_tests::{
    TempDir,
    http::{http_get, metric_in},
    kernel_test,
};

const CAP: usize = 32;
const IDLE: usize = 5000;
const SLOWLORIS: usize = 800;

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")
}

fn fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

#[test]
fn idle_and_slowloris_floods_leave_metrics_answering_and_memory_bounded() -> Result<()> {
    kernel_test!();
    let bin = termscope_tests::k8s_agent::agent_binary()?;
    let dir = TempDir::new("exhaust")?;
    let addr: SocketAddr = format!(
        "127.0.0.1:{}",
        TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()
    )
    .parse()?;
    let agent = Agent(
        Command::new(&bin)
            .args(["agent", "--listen", &addr.to_string()])
            // Its own run: no maps pinned, no state file shared with other tests' agents.
            .args(["--no-pin", "--no-state-file"])
            .args(["--no-log-file", "--no-stdout-reports"])
            .args(["--api-max-connections", &CAP.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.log"))?)
            .spawn()?,
    );
    let pid = agent.0.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if http_get(addr, "/readyz").is_ok_and(|(s, _)| s == 200) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the agent did not become ready: {}",
                std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Warm up (the first requests allocate), then measure.
    for _ in 0..20 {
        http_get(addr, "/metrics")?;
    }
    let (rss_before, fds_before) = (rss_kib(pid)?, fds(pid)?);

    let mut hostile = Vec::with_capacity(IDLE + SLOWLORIS);
    let mut scrapes = 0;
    for i in 0..IDLE + SLOWLORIS {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connection {i}"))?;
        if i >= IDLE {
            c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")?;
        }
        hostile.push(c);
        if i % 500 == 499 {
            let (status, _) = http_get(addr, "/metrics").context("/metrics during the flood")?;
            ensure!(status == 200, "/metrics answered {status} during the flood");
            scrapes += 1;
        }
    }
    let (status, body) = http_get(addr, "/metrics")?;
    ensure!(status == 200);
    let (rss_after, fds_after) = (rss_kib(pid)?, fds(pid)?);
    let open = metric_in(&body, "termscope_api_connections")?;
    let evicted = metric_in(
        &body,
        "termscope_api_connections_closed_total{reason=\"evicted\"}",
    )?;
    println!(
        "{} hostile connections ({IDLE} idle, {SLOWLORIS} slowloris), {scrapes} scrapes during the \
         flood: agent RSS {rss_before} -> {rss_after} KiB, fds {fds_before} -> {fds_after}, \
         open {open}, evicted {evicted}",
        hostile.len()
    );
    ensure!(open <= CAP as f64, "{open} connections open, cap {CAP}");
    ensure!(
        fds_after <= fds_before + CAP + 8,
        "fds {fds_before} -> {fds_after}"
    );
    ensure!(
        rss_after <= rss_before + 16 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    ensure!(evicted > 0.0);
    drop(hostile);
    Ok(())
}
