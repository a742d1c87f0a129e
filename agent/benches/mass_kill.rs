//! One container with 100,000 connections killed at once, against the real agent pipeline
//! (probes, attribution, termination engine, default ring sizes and live-connection map).
//!
//! 1. The agent pipeline starts in this process (nothing watched).
//! 2. Server processes in a cgroup of their own accept N loopback connections from client
//!    processes in this process's cgroup (all re-runs of this binary; as many of each as the
//!    open-file limit needs), and hold them idle:
//!    the agent's RSS is printed before and with the N idle connections on the node.
//! 3. This process SIGKILLs every server process (from outside their cgroup, as a runtime
//!    does). The kernel closes the N sockets in the dying tasks; the agent reports the termination after
//!    its linger. Printed: the connections the report counts (all must be there), events
//!    lost (kernel counters and the report's `incomplete`), the agent's RSS (now and peak),
//!    and how long after the kill the report came out, next to the linger.
//!
//! Also printed: what the kernel kept of the connections (`KEPT_CONNS`) and what the agent
//! took of it. Root only. Run with `cargo xtask bench` (or `cargo bench -p termscope --bench
//! mass_kill`).
//! `TERMSCOPE_BENCH_KILL_CONNS` sets N (100,000), `TERMSCOPE_BENCH_RING_KIB` the TCP ring's
//! size (default: the agent's).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use termscope::{
    attribute::cgroupfs,
    pipeline::Pipeline,
    probes::{LoadOptions, Probes},
    terminations::EngineConfig,
};

type Error = Box<dyn std::error::Error>;

/// Listening ports of the server: a client's ephemeral port range (about 28,000 ports) is
/// shared per destination, so N / PORTS must stay below it.
const PORTS: usize = 8;
const ROLE: &str = "TERMSCOPE_BENCH_ROLE";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("server") => exit_with(server()),
        Ok("client") => exit_with(client()),
        _ => {}
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("mass-kill benchmark skipped: needs root to load the probes");
        return;
    }
    let conns = std::env::var("TERMSCOPE_BENCH_KILL_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000usize);
    if let Err(e) = bench(conns) {
        println!("mass-kill benchmark failed: {e}");
    }
}

fn exit_with(r: Result<(), Error>) -> ! {
    if let Err(e) = r {
        eprintln!("{e}");
        std::process::exit(1);
    }
    std::process::exit(0)
}

fn raise_nofile(n: u64) -> Result<(), Error> {
    let hard = nofile_limit()?;
    let rlim = libc::rlimit {
        rlim_cur: n.min(hard),
        rlim_max: hard,
    };
    // SAFETY: setrlimit with a valid pointer to a local struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) } != 0 {
        return Err(format!("RLIMIT_NOFILE {n}: {}", std::io::Error::last_os_error()).into());
    }
    Ok(())
}

/// This process's hard limit on open files.
fn nofile_limit() -> Result<u64, Error> {
    let mut rlim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(rlim.rlim_max)
}

fn count_from_env() -> Result<usize, Error> {
    Ok(std::env::var("TERMSCOPE_BENCH_KILL_CONNS")?.parse()?)
}

/// Accepts N connections on PORTS listeners, prints their ports, then `ready`, and holds them.
fn server() -> Result<(), Error> {
    let n = count_from_env()?;
    raise_nofile(n as u64 + 1024)?;
    let listeners: Vec<TcpListener> = (0..PORTS)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let ports: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port().to_string()))
        .collect::<Result<_, _>>()?;
    println!("ports {}", ports.join(" "));
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let (s, _) = listeners[i % PORTS].accept()?;
        held.push(s);
    }
    println!("ready");
    std::io::stdout().flush()?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Connects N times, round-robin over the ports given on stdin, prints `ready`, then holds
/// the connections until stdin closes, and closes them.
fn client() -> Result<(), Error> {
    let n = count_from_env()?;
    raise_nofile(n as u64 + 1024)?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let ports: Vec<u16> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    if ports.is_empty() {
        return Err("no ports".into());
    }
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let addr: SocketAddr = ([127, 0, 0, 1], ports[i % ports.len()]).into();
        held.push(TcpStream::connect(addr)?);
    }
    println!("ready");
    std::io::stdout().flush()?;
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    Ok(())
}

/// A cgroup of its own, removed (its processes killed) when dropped.
struct Cgroup {
    dir: PathBuf,
    id: u64,
}

impl Cgroup {
    fn new() -> Result<Self, Error> {
        let mount = cgroupfs::Mount::detect()?;
        let dir = mount
            .path
            .join(format!("termscope-bench-kill-{}", std::process::id()));
        std::fs::create_dir(&dir)?;
        let id = cgroupfs::cgroup_id(&dir)?;
        Ok(Cgroup { dir, id })
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        for _ in 0..250 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        println!("warning: could not remove {}", self.dir.display());
    }
}

/// Kills the child (if still running) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(role: &str, conns: usize, cgroup: Option<&Path>) -> Result<Child, Error> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(ROLE, role)
        .env("TERMSCOPE_BENCH_KILL_CONNS", conns.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(dir) = cgroup {
        let procs = dir.join("cgroup.procs");
        // SAFETY: the closure only writes a file, as the child, before exec.
        unsafe {
            cmd.pre_exec(move || std::fs::write(&procs, std::process::id().to_string()));
        }
    }
    Ok(cmd.spawn()?)
}

fn expect_line(out: &mut impl BufRead, prefix: &str) -> Result<String, Error> {
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line)? == 0 {
            return Err(format!("the child ended before printing {prefix:?}").into());
        }
        if let Some(rest) = line.trim_end().strip_prefix(prefix) {
            return Ok(rest.trim().to_string());
        }
    }
}

/// This process's resident set size and its peak, in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// The agent's pipeline as `termscope agent` runs it (events as they come, a tick a second).
struct AgentLoop {
    pipeline: Pipeline,
    stream: termscope::probes::EventStream,
    last_tick: Instant,
    events: usize,
}

impl AgentLoop {
    fn run_for(
        &mut self,
        period: Duration,
        mut done: impl FnMut(&[termscope::terminations::report::TerminationReport]) -> bool,
    ) -> Result<Option<termscope::terminations::report::TerminationReport>, Error> {
        let deadline = Instant::now() + period;
        while Instant::now() < deadline {
            for e in self.stream.wait(Duration::from_millis(50)) {
                self.pipeline.handle(&e?)?;
                self.events += 1;
            }
            self.pipeline.take_kept()?;
            if self.last_tick.elapsed() >= Duration::from_secs(1) || self.pipeline.tick_due() {
                self.last_tick = Instant::now();
                let reports = self.pipeline.tick()?;
                if done(&reports) {
                    return Ok(reports.into_iter().next());
                }
            }
        }
        Ok(None)
    }
}

fn bench(conns: usize) -> Result<(), Error> {
    let mut opts = LoadOptions::default();
    if let Some(kib) = std::env::var("TERMSCOPE_BENCH_RING_KIB")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        opts.ring_buffer_bytes = kib * 1024;
    }
    println!(
        "mass kill: {conns} connections of one cgroup, SIGKILLed at once; TCP ring {} KiB",
        opts.ring_buffer_bytes / 1024
    );
    let mut probes = Probes::load(&opts)?;
    let stream = probes.events()?;
    let cfg = EngineConfig {
        node: "bench".into(),
        ..EngineConfig::default()
    };
    let linger = cfg.linger;
    let pipeline = Pipeline::new(probes, cfg, cgroupfs::Mount::detect().ok());
    let mut agent = AgentLoop {
        pipeline,
        stream,
        last_tick: Instant::now(),
        events: 0,
    };
    agent.run_for(Duration::from_secs(2), |_| false)?;
    let (rss_idle, _) = rss_mib();

    let cg = Cgroup::new()?;
    // Without CAP_SYS_RESOURCE a process cannot raise its open-file limit above the hard
    // limit it has: the container's connections are spread over worker processes (as a
    // multi-worker server's are), each with a client process of its own outside the cgroup.
    let per_worker = nofile_limit()?.saturating_sub(1024).clamp(1, 50_000) as usize;
    let workers = conns.div_ceil(per_worker);
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    let mut waiters = Vec::new();
    let opened = Instant::now();
    for w in 0..workers {
        let n = per_worker.min(conns - w * per_worker);
        let mut server = Killed(spawn("server", n, Some(&cg.dir))?);
        let mut server_out = BufReader::new(server.0.stdout.take().ok_or("server stdout")?);
        let ports = expect_line(&mut server_out, "ports")?;
        let mut client = Killed(spawn("client", n, None)?);
        let mut client_in = client.0.stdin.take().ok_or("client stdin")?;
        writeln!(client_in, "{ports}")?;
        let mut client_out = BufReader::new(client.0.stdout.take().ok_or("client stdout")?);
        // The agent keeps running while the connections open.
        waiters.push(std::thread::spawn(move || -> Result<(), String> {
            expect_line(&mut client_out, "ready").map_err(|e| e.to_string())?;
            expect_line(&mut server_out, "ready").map_err(|e| e.to_string())?;
            Ok(())
        }));
        servers.push(server);
        clients.push((client, client_in));
    }
    while !waiters.iter().all(|w| w.is_finished()) {
        agent.run_for(Duration::from_millis(200), |_| false)?;
    }
    for w in waiters {
        w.join().map_err(|_| "waiter panicked")??;
    }
    println!(
        "  {conns} connections open in {:.1} s ({workers} server processes in cgroup {}, \
         {workers} client processes outside it)",
        opened.elapsed().as_secs_f64(),
        cg.id
    );
    agent.run_for(Duration::from_secs(3), |_| false)?;
    let (rss_open, _) = rss_mib();
    let counters_before = agent.pipeline.probes().counters()?;
    println!(
        "  agent RSS: {rss_idle:.1} MiB before, {rss_open:.1} MiB with {conns} idle connections on the node"
    );

    let killed = Instant::now();
    for server in &servers {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(server.0.id() as i32, libc::SIGKILL) };
    }
    let target = cg.id;
    let report = agent.run_for(linger + Duration::from_secs(60), |reports| {
        reports.iter().any(|r| r.subject.cgroup_id == target)
    })?;
    let out_after = killed.elapsed();
    for server in &mut servers {
        let _ = server.0.wait();
    }
    let counters_after = agent.pipeline.probes().counters()?;
    let (rss_done, rss_peak) = rss_mib();
    let Some(report) = report else {
        return Err(format!(
            "no report within {:?} of the kill",
            linger + Duration::from_secs(60)
        )
        .into());
    };
    let c = &report.counts;
    let counted = c.completed
        + c.reset_by_app
        + c.closed_by_exit
        + c.closed_idle
        + c.peer_closed_first
        + c.reset_by_peer
        + c.open;
    println!(
        "  report out {:.2} s after the kill (linger {:.1} s; a tick when one is due): {counted} \
         of {conns} connections counted ({} closed by exit, {} closed idle, {} reset by app, {} \
         open), {} listed, {} omitted, {} timeline steps",
        out_after.as_secs_f64(),
        linger.as_secs_f64(),
        c.closed_by_exit,
        c.closed_idle,
        c.reset_by_app,
        c.open,
        report.connections.len(),
        report.connections_omitted,
        report.timeline.len(),
    );
    println!(
        "  events lost: {} (TCP ring), {} (control ring); live-map insert failures: {}; \
         report incomplete: {}",
        counters_after.ringbuf_lost - counters_before.ringbuf_lost,
        counters_after.control_lost - counters_before.control_lost,
        counters_after.live_map_failed,
        report
            .incomplete
            .as_ref()
            .map_or(String::from("no"), |i| format!("{i:?}")),
    );
    let kept = agent.pipeline.kept_stats();
    println!(
        "  kernel-kept records: {} written, {} taken into the report, {} reaped, {} write \
         failures; {} TCP events left to them (ring half full)",
        counters_after.kept - counters_before.kept,
        kept.taken,
        kept.reaped,
        counters_after.kept_map_failed - counters_before.kept_map_failed,
        counters_after.left_to_kept - counters_before.left_to_kept,
    );
    println!(
        "  agent RSS: {rss_done:.1} MiB after the report, peak {rss_peak:.1} MiB; {} events handled",
        agent.events
    );
    drop(clients);
    agent.run_for(Duration::from_secs(3), |_| false)?;
    let (rss_after, _) = rss_mib();
    println!("  agent RSS: {rss_after:.1} MiB after the client closed its {conns} ends");
    Ok(())
}
