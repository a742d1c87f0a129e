//! Puma (Debian's `puma`, Ruby) in cluster mode with keep-alive clients (issue 8). On SIGTERM
//! its master has its worker drain, then re-raises SIGTERM to end with it (Ruby's way): it had
//! a handler, the stop is graceful, not `no_handler`. A request longer than its
//! `worker_shutdown_timeout` is cut by the master's own SIGKILL to its worker.

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use termscope::terminations::report::{Flag, Outcome, Signal, Verdict};
use termscope_tests::{
    Agent, Marks, NetNs, Proc, TempDir, TestCgroup, kernel_test,
    load::{Load, Truth, check_verdicts, seen_of, show},
};

const LISTEN: &str = "127.0.0.1:8080";

fn puma_stopped(slow_s: u32, shutdown_timeout_s: u32) -> Result<()> {
    let mut agent = Agent::start(Duration::from_secs(30))?;
    let cg = TestCgroup::new("puma")?;
    let ns = NetNs::new("puma")?;
    let dir = TempDir::new("puma")?;
    let d = dir.path.display().to_string();
    let ru = dir.write(
        "config.ru",
        format!(
            r#"run lambda {{ |env|
  s = env['QUERY_STRING'][/s=(\d+)/, 1].to_i
  if s > 0
    File.open('{d}/marks', 'a') {{ |f| f.puts 'start' }}
    sleep s
  end
  body = "ok\n"
  [200, {{ 'Content-Type' => 'text/plain', 'Content-Length' => body.bytesize.to_s }}, [body]]
}}
"#
        ),
    )?;
    let conf = dir.write(
        "puma.rb",
        format!(
            "workers 1\nthreads 4, 4\nbind 'tcp://{LISTEN}'\npersistent_timeout 60\n\
             worker_shutdown_timeout {shutdown_timeout_s}\nrackup '{}'\n",
            ru.display()
        ),
    )?;
    let mut cmd = Command::new("/usr/bin/puma");
    cmd.arg("-C").arg(&conf).current_dir(&dir.path);
    let puma = Proc::spawn(&mut cmd, &cg, Some(&ns))?;
    let mut load = Load::new(&ns, LISTEN.parse::<SocketAddr>()?);
    load.wait_ready("/", Duration::from_secs(30))?;
    let idle = [load.idle("/")?, load.idle("/")?];
    agent.pump(Duration::from_millis(2500), None)?;
    let busy = load.in_flight(&format!("/?s={slow_s}"), false)?;
    Marks::new(&dir).wait("start", 1, Duration::from_secs(10))?;
    agent.pump(Duration::from_millis(300), None)?;
    puma.signal(libc::SIGTERM)?;
    let report = agent.report_for(cg.id, Duration::from_secs(20))?;
    let seen_all = load.finish()?;
    show(&report, &seen_all)?;

    ensure!(
        report.subject.main.pid == puma.pid(),
        "{:?}",
        report.subject
    );
    // The master ran its handler, then re-raised SIGTERM: no `no_handler`.
    ensure!(!report.has_flag(Flag::NoHandler), "{:?}", report.flags);
    // Puma closes idle keep-alive connections in order at SIGTERM.
    for port in idle {
        ensure!(seen_of(&seen_all, port)?.truth == Truth::EofIdle);
    }
    let b = seen_of(&seen_all, busy)?;
    let first = &report.summary[0];
    if slow_s < shutdown_timeout_s {
        ensure!(b.truth == Truth::Completed, "{b:?}");
        check_verdicts(&report, &seen_all, |_| Some(Verdict::Completed))?;
        ensure!(report.outcome == Outcome::Graceful, "{:?}", report.outcome);
        ensure!(report.counts.cut == 0, "{:?}", report.counts);
        ensure!(
            first.starts_with(&format!(
                "puma (pid {}) took SIGTERM and exited",
                puma.pid()
            )) && first.contains("3 connection(s) completed, nothing was cut"),
            "{first}"
        );
    } else {
        ensure!(b.truth == Truth::EofMidResponse, "{b:?}");
        check_verdicts(&report, &seen_all, |s| {
            Some(if s.port == busy {
                Verdict::ClosedByExit
            } else {
                Verdict::Completed
            })
        })?;
        ensure!(report.outcome == Outcome::Killed, "{:?}", report.outcome);
        ensure!(report.counts.cut == 1, "{:?}", report.counts);
        let worker = report
            .exits
            .iter()
            .find(|e| e.signal == Some(Signal::KILL))
            .context("the worker's exit")?;
        ensure!(
            first.starts_with(&format!(
                "puma (pid {m}) was killed by SIGKILL from puma (pid {m}) inside the container, \
                 to puma (pid {w}) 1.0 s after its SIGTERM",
                m = puma.pid(),
                w = worker.pid
            )) && first.contains("1 connection(s) were cut"),
            "{first}"
        );
    }
    Ok(())
}

#[test]
fn puma_sigterm_drains_and_re_raises() -> Result<()> {
    kernel_test!();
    puma_stopped(2, 10)
}

#[test]
fn puma_worker_shutdown_timeout_shorter_than_the_request_cuts_it() -> Result<()> {
    kernel_test!();
    puma_stopped(5, 1)
}
