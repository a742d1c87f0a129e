//! The report log on a disk that fills up, for real: a small tmpfs under the agent's
//! `--log-file`. A report that does not fit is counted in
//! `termscope_report_write_failures_total{output="file"}` and still served by the API; once
//! there is room again, the next report starts on a line of its own instead of being glued
//! to the line the full disk cut short.

use std::{
    io::Write,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use termscope::{outputs::log, terminations::report::TerminationReport};
use termscope_tests::{
    Proc, TempDir, TestCgroup,
    http::{http_get, metric, wait_until},
    kernel_test,
};

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

/// A tmpfs mounted for the test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(at)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()?;
        ensure!(status.success(), "mounting a tmpfs at {}", at.display());
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// This test's cgroups (other stop signals on the machine make reports too).
fn ours() -> String {
    format!("ts-fulldisk-{}-", std::process::id())
}

/// The reports of this test's cgroups the API serves, newest first.
fn served(addr: SocketAddr) -> Result<Vec<TerminationReport>> {
    let (status, body) = http_get(addr, &format!("/v1/terminations?workload={}", ours()))?;
    ensure!(status == 200, "{status}: {body}");
    Ok(serde_json::from_str(&body)?)
}

/// A stand-in container (a `sleep` in its own cgroup) stopped with SIGTERM from outside;
/// returns once the agent has finished its report.
fn terminate(addr: SocketAddr) -> Result<()> {
    let before = served(addr)?.len();
    let cg = TestCgroup::new("fulldisk")?;
    let proc = Proc::spawn(Command::new("sleep").arg("1000"), &cg, None)?;
    proc.signal(libc::SIGTERM)?;
    wait_until("the report", || {
        Ok((served(addr)?.len() > before).then_some(()))
    })
}

#[test]
fn a_full_disk_is_counted_and_the_cut_line_is_not_glued_to_the_next_report() -> Result<()> {
    kernel_test!();
    let bin = termscope_tests::k8s_agent::agent_binary()?;
    let dir = TempDir::new("fulldisk")?;
    let disk = Tmpfs::mount(&dir.join("disk"), "64k")?;
    let path = disk.0.join("terminations.jsonl");
    let addr: SocketAddr = format!(
        "127.0.0.1:{}",
        TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()
    )
    .parse()?;
    let _agent = Agent(
        Command::new(&bin)
            .args(["agent", "--listen", &addr.to_string()])
            // Its own run: no maps pinned, no state file shared with other tests' agents.
            .args(["--no-pin", "--no-state-file"])
            .arg("--log-file")
            .arg(&path)
            .args(["--no-stdout-reports", "--linger-ms", "100"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.log"))?)
            .spawn()?,
    );
    wait_until("the agent's /readyz", || {
        Ok(http_get(addr, "/readyz")
            .is_ok_and(|(s, _)| s == 200)
            .then_some(()))
    })?;
    let failures = "termscope_report_write_failures_total{output=\"file\"}";
    ensure!(metric(addr, failures)? == 0.0);

    terminate(addr)?;
    let one = std::fs::metadata(&path)?.len();
    ensure!(one > 0, "the first report is in the log");
    // Fill the disk: what is left is the rest of the log file's last page.
    let mut filler = std::fs::File::create(disk.0.join("filler"))?;
    let page = vec![b'x'; 4096];
    while filler.write_all(&page).is_ok() {}
    // Bytes, then nothing: write the last free bytes one at a time.
    while filler.write_all(b"x").is_ok() {}
    drop(filler);

    // Reports until one does not fit (the page fills up after a few).
    let mut stopped = 1;
    while metric(addr, failures)? == 0.0 {
        ensure!(stopped < 10, "no write failed on a full disk");
        terminate(addr)?;
        stopped += 1;
    }
    let failed = metric(addr, failures)?;
    if failed != 1.0 {
        let (_, all) = http_get(addr, "/v1/terminations")?;
        bail!("{failed} failed writes; every report served: {all}");
    }
    ensure!(
        served(addr)?.len() == stopped,
        "the report that could not be written is served"
    );
    let cut_short = std::fs::read(&path)?;
    ensure!(
        cut_short.last() != Some(&b'\n'),
        "the full disk cut a line short (the test's premise)"
    );

    // Room again: the next report is whole and on its own line.
    std::fs::remove_file(disk.0.join("filler"))?;
    terminate(addr)?;
    let contents = log::read_log(&path)?;
    let last = served(addr)?
        .first()
        .map(|r| r.id.clone())
        .context("reports")?;
    ensure!(
        contents.reports.iter().any(|r| r.id == last),
        "the last report is readable: {:?}",
        contents.skipped
    );
    ensure!(
        contents.skipped.len() == 1,
        "only the cut line is skipped: {:?}",
        contents.skipped
    );
    let logged = contents
        .reports
        .iter()
        .filter(|r| r.subject.workload.contains(&ours()))
        .count();
    ensure!(logged == stopped, "{logged} of ours in the log");
    Ok(())
}
