//! A termination that spans an agent restart, with the real agent binary: its kernel maps
//! pinned under bpffs, its terminations in progress in the state file. Killed (SIGKILL) and
//! started again in the middle of a graceful drain and of a SIGKILL escalation, or stopped
//! (SIGTERM) in the middle of one, the agent writes one report per termination, complete,
//! flagged `agent_restarted` — never an early `survived`.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use termscope::{
    outputs::log,
    terminations::report::{Direction, Flag, Outcome, Signal, TerminationReport, Verdict},
};
use termscope_tests::{
    NetNs, Proc, TempDir, TestCgroup,
    http::{http_get, metric, wait_until},
    kernel_test, python,
};

const PORT: u16 = 8080;

/// One run of `termscope agent`, sharing its state file, pin directory and log with the
/// runs before and after it.
struct Agent {
    child: Child,
    addr: SocketAddr,
}

/// Each agent reports every container stopped on the host, so two of these tests at once
/// would each see (and count as restarted) the other's termination: they run one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Setup {
    _serial: std::sync::MutexGuard<'static, ()>,
    bin: PathBuf,
    dir: TempDir,
    pins: PathBuf,
    runs: usize,
}

impl Setup {
    fn new(name: &str) -> Result<Self> {
        // A test that failed while holding the lock leaves it poisoned; the next still runs.
        let serial = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bin = termscope_tests::k8s_agent::agent_binary()?;
        let dir = TempDir::new(name)?;
        // Under /sys/fs/bpf (bpffs is mounted there if it is not), apart from a real agent's.
        let pins = PathBuf::from(format!(
            "/sys/fs/bpf/termscope-test-{name}-{}",
            std::process::id()
        ));
        Ok(Setup {
            _serial: serial,
            bin,
            dir,
            pins,
            runs: 0,
        })
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("terminations.jsonl")
    }

    fn start(&mut self) -> Result<Agent> {
        self.runs += 1;
        let addr: SocketAddr = format!(
            "127.0.0.1:{}",
            TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()
        )
        .parse()?;
        let child = Command::new(&self.bin)
            .args(["agent", "--listen", &addr.to_string()])
            .arg("--log-file")
            .arg(self.log())
            .arg("--state-file")
            .arg(self.state())
            .arg("--bpf-pin-dir")
            .arg(&self.pins)
            .args(["--no-stdout-reports", "--linger-ms", "200"])
            .env("TERMSCOPE_LOG", "info,termscope=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(
                self.dir.join(&format!("agent-{}.log", self.runs)),
            )?)
            .spawn()?;
        let agent = Agent { child, addr };
        wait_until("the agent's /readyz", || {
            Ok(http_get(addr, "/readyz")
                .is_ok_and(|(s, _)| s == 200)
                .then_some(()))
        })?;
        Ok(agent)
    }

    /// The reports of a cgroup in the shared log.
    fn reports(&self, cgroup_id: u64) -> Result<Vec<TerminationReport>> {
        if !self.log().exists() {
            return Ok(Vec::new());
        }
        Ok(log::read_log(&self.log())?
            .reports
            .into_iter()
            .filter(|r| r.subject.cgroup_id == cgroup_id)
            .collect())
    }

    /// Waits until the state file holds a termination of this cgroup (the agent journaled
    /// its stop signal).
    fn wait_persisted(&self, cgroup_id: u64) -> Result<()> {
        let needle = format!("\"target_cgroup_id\":{cgroup_id}");
        wait_until("the termination in the state file", || {
            Ok(std::fs::read_to_string(self.state())
                .is_ok_and(|s| s.contains(&needle))
                .then_some(()))
        })
    }

    fn agent_logs(&self) -> String {
        (1..=self.runs)
            .map(|n| {
                std::fs::read_to_string(self.dir.join(&format!("agent-{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n---- next run ----\n")
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.pins) {
            for e in entries.flatten() {
                let _ = termscope::probes::pin::remove_pins(&e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.pins);
    }
}

impl Agent {
    fn kill(mut self, sig: i32) -> Result<()> {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, sig) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the agent did not exit after signal {sig}")
    }

    fn metric(&self, series: &str) -> Result<f64> {
        metric(self.addr, series)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

/// A server in its own cgroup and netns holding one accepted connection. `drain`: on SIGTERM
/// it closes its listener, waits for the client to finish, closes and exits 0. Otherwise it
/// ignores SIGTERM (only SIGKILL ends it) and never reads the client's request.
fn server(prefix: &str, drain: bool) -> Result<(TestCgroup, NetNs, Proc, TcpStream)> {
    let cg = TestCgroup::new(prefix)?;
    let ns = NetNs::new(prefix)?;
    let on_term = if drain {
        "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])\n"
    } else {
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    };
    let code = format!(
        "import signal, socket\n\
         {on_term}\
         ls = socket.socket()\n\
         ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         ls.bind(('127.0.0.1', {PORT}))\n\
         ls.listen(16)\n\
         print('listening', flush=True)\n\
         c, _ = ls.accept()\n\
         print('accepted', flush=True)\n\
         if {drain}:\n\
         \x20   signal.sigwait([signal.SIGTERM])\n\
         \x20   print('draining', flush=True)\n\
         \x20   ls.close()\n\
         \x20   while c.recv(1024):\n\
         \x20       pass\n\
         \x20   c.close()\n\
         \x20   print('drained', flush=True)\n\
         else:\n\
         \x20   signal.pause()\n",
        drain = if drain { "True" } else { "False" },
    );
    let mut proc = Proc::spawn(&mut python(&code), &cg, Some(&ns))?;
    proc.expect_line("listening")?;
    let addr: SocketAddr = ([127, 0, 0, 1], PORT).into();
    let mut client =
        ns.enter(move || TcpStream::connect_timeout(&addr, Duration::from_secs(10)))??;
    proc.expect_line("accepted")?;
    if !drain {
        // A request the server never reads: in flight when SIGKILL ends it, so its client
        // loses it (an idle connection would be `closed_idle`, not cut).
        std::io::Write::write_all(&mut client, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    }
    Ok((cg, ns, proc, client))
}

/// The one report of a cgroup: waits for it, then checks that no second one comes (the
/// agent is stopped first: with a state file, stopping reports nothing early).
fn one_report(setup: &Setup, agent: Agent, cgroup_id: u64) -> Result<TerminationReport> {
    let report = wait_until("the report", || Ok(setup.reports(cgroup_id)?.pop()))
        .with_context(|| setup.agent_logs())?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    // The restart is counted: once per report flagged `agent_restarted` (other containers
    // stopped on this host while the first agent ran are reported by the second one too, so
    // the count is the log's, not 1). The metric is counted before the log line is written.
    wait_until("the restart counted once per flagged report", || {
        let flagged = log::read_log(&setup.log())?
            .reports
            .iter()
            .filter(|r| r.has_flag(Flag::AgentRestarted))
            .count();
        let counted = agent.metric("termscope_agent_restarted_reports_total")?;
        Ok((flagged >= 1 && counted == flagged as f64).then_some(()))
    })?;
    agent.kill(libc::SIGTERM)?;
    let all = setup.reports(cgroup_id)?;
    ensure!(all.len() == 1, "one report, not {}: {all:#?}", all.len());
    Ok(report)
}

fn client_port(client: &TcpStream) -> Result<u16> {
    Ok(client.local_addr()?.port())
}

/// SIGTERM starts a graceful drain; the agent is killed and started again; the client then
/// finishes and the server exits. One report: graceful, the connection closed by its client,
/// nothing cut, `agent_restarted`.
#[test]
fn an_agent_killed_during_a_graceful_drain_reports_it_once_complete() -> Result<()> {
    kernel_test!();
    let mut setup = Setup::new("drain")?;
    let agent = setup.start()?;
    let (cg, _ns, mut server, client) = server("rsdrain", true)?;
    let port = client_port(&client)?;
    server.signal(libc::SIGTERM)?;
    server.expect_line("draining")?;
    setup.wait_persisted(cg.id)?;
    agent.kill(libc::SIGKILL)?;

    let agent = setup.start()?;
    drop(client);
    server.expect_line("drained")?;
    server.child.wait()?;
    let report = one_report(&setup, agent, cg.id)?;
    assert!(report.has_flag(Flag::AgentRestarted), "{:?}", report.flags);
    assert_eq!(report.outcome, Outcome::Graceful);
    assert_eq!(report.counts.cut, 0);
    assert_eq!(report.subject.cgroup_path, cg.path);
    let conn = report
        .connections
        .iter()
        .find(|c| c.remote.port() == port)
        .with_context(|| format!("client port {port} not in the report"))?;
    assert_eq!(conn.direction, Direction::Inbound, "{conn:?}");
    assert!(!conn.verdict.is_cut(), "{conn:?}");
    Ok(())
}

/// SIGTERM is ignored; the agent is killed and started again; SIGKILL ends the server. One
/// report: killed, its connection closed by the exit, `agent_restarted`.
#[test]
fn an_agent_killed_during_a_sigkill_escalation_reports_it_once_complete() -> Result<()> {
    kernel_test!();
    let mut setup = Setup::new("escalate")?;
    let agent = setup.start()?;
    let (cg, _ns, server, client) = server("rsesc", false)?;
    let port = client_port(&client)?;
    server.signal(libc::SIGTERM)?;
    setup.wait_persisted(cg.id)?;
    agent.kill(libc::SIGKILL)?;

    let agent = setup.start()?;
    escalate(server)?;
    let report = one_report(&setup, agent, cg.id)?;
    check_escalation(&report, &cg, port)?;
    drop(client);
    Ok(())
}

/// The agent is stopped (SIGTERM) while a termination is in progress: it writes no report
/// (no early `survived`); the next agent reports it, complete, once.
#[test]
fn an_agent_stopped_during_a_termination_leaves_it_to_the_next_one() -> Result<()> {
    kernel_test!();
    let mut setup = Setup::new("stopped")?;
    let agent = setup.start()?;
    let (cg, _ns, server, client) = server("rsstop", false)?;
    let port = client_port(&client)?;
    server.signal(libc::SIGTERM)?;
    setup.wait_persisted(cg.id)?;
    agent.kill(libc::SIGTERM)?;
    let early = setup.reports(cg.id)?;
    ensure!(early.is_empty(), "a report at the agent's stop: {early:#?}");

    let agent = setup.start()?;
    escalate(server)?;
    let report = one_report(&setup, agent, cg.id)?;
    check_escalation(&report, &cg, port)?;
    drop(client);
    Ok(())
}

fn escalate(mut server: Proc) -> Result<()> {
    server.signal(libc::SIGKILL)?;
    server.child.wait()?;
    Ok(())
}

fn check_escalation(report: &TerminationReport, cg: &TestCgroup, port: u16) -> Result<()> {
    ensure!(
        report.has_flag(Flag::AgentRestarted),
        "not flagged: {:?}",
        report.flags
    );
    ensure!(report.outcome == Outcome::Killed, "{:?}", report.outcome);
    ensure!(report.subject.cgroup_path == cg.path);
    let conn = report
        .connections
        .iter()
        .find(|c| c.remote.port() == port)
        .with_context(|| format!("client port {port} not in the report"))?;
    ensure!(conn.verdict == Verdict::ClosedByExit, "{conn:?}");
    ensure!(conn.direction == Direction::Inbound, "{conn:?}");
    ensure!(report.counts.cut == 1);
    // The SIGTERM seen by the first agent is in the report.
    ensure!(
        report.external_signals().any(|s| s.signal == Signal::TERM),
        "the stop signal before the restart is missing"
    );
    Ok(())
}

/// A connection that closes while no agent runs leaves its entry in the pinned
/// live-connection map (nobody saw its CLOSE). The next agent finds such entries gone from
/// the kernel's sockets and drops them: a later stop of that container reports the
/// connection it really had, not the one that closed an hour before.
#[test]
fn a_connection_closed_while_no_agent_ran_is_not_in_a_later_report() -> Result<()> {
    kernel_test!();
    let mut setup = Setup::new("gone")?;
    let agent = setup.start()?;
    let cg = TestCgroup::new("rsgone")?;
    let ns = NetNs::new("rsgone")?;
    let code = format!(
        "import signal, socket\n\
         ls = socket.socket()\n\
         ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         ls.bind(('127.0.0.1', {PORT}))\n\
         ls.listen(16)\n\
         print('listening', flush=True)\n\
         a, _ = ls.accept()\n\
         b, _ = ls.accept()\n\
         print('accepted', flush=True)\n\
         while a.recv(1024):\n\
         \x20   pass\n\
         a.close()\n\
         print('closed', flush=True)\n\
         signal.pause()\n"
    );
    let mut server = Proc::spawn(&mut python(&code), &cg, Some(&ns))?;
    server.expect_line("listening")?;
    let addr: SocketAddr = ([127, 0, 0, 1], PORT).into();
    let connect = || ns.enter(move || TcpStream::connect_timeout(&addr, Duration::from_secs(10)));
    let gone = connect()??;
    let kept = connect()??;
    server.expect_line("accepted")?;
    let (gone_port, kept_port) = (client_port(&gone)?, client_port(&kept)?);
    agent.kill(libc::SIGKILL)?;

    // Closed on both sides while no agent runs.
    drop(gone);
    server.expect_line("closed")?;
    let agent = setup.start()?;
    server.signal(libc::SIGKILL)?;
    server.child.wait()?;
    let report = wait_until("the report", || Ok(setup.reports(cg.id)?.pop()))
        .with_context(|| setup.agent_logs())?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    agent.kill(libc::SIGTERM)?;
    let ports: Vec<u16> = report.connections.iter().map(|c| c.remote.port()).collect();
    ensure!(
        ports.contains(&kept_port),
        "the open connection (client port {kept_port}) is missing: {ports:?}"
    );
    ensure!(
        !ports.contains(&gone_port),
        "the connection closed while no agent ran (client port {gone_port}) is in the \
         report: {ports:?}"
    );
    ensure!(report.counts.cut <= 1, "{:?}", report.counts);
    drop(kept);
    Ok(())
}
