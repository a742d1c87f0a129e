//! What the hot path costs, measured rather than guessed.
//!
//! 1. userspace: decoding ring buffer records (ns per event);
//! 2. kernel (root only): the real programs attached, N loopback TCP connections opened and
//!    closed as fast as two threads can, with the kernel's own per-program accounting
//!    (`BPF_ENABLE_STATS`): ns per run of each program, and how many events reached userspace
//!    — with nothing watched (the default on a busy node), with the churning cgroup watched
//!    and with everything watched; next to the same churn with no agent, with a bpftrace
//!    one-liner on the same tracepoint, and with libbpf-tools' `tcpstates` + `sigsnoop`, in
//!    rounds whose order rotates so that drifts of a shared machine hit every configuration.
//!
//! Run with `cargo xtask bench` (it installs bpftrace and libbpf-tools), or
//! `cargo bench -p termscope`. `TERMSCOPE_BENCH_CONNS` sets N, `TERMSCOPE_BENCH_ROUNDS` the
//! rounds (3).

use std::{
    hint::black_box,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use termscope::{
    decode::Decoder,
    probes::{self, LoadOptions, Probes},
};
use termscope_common::{EventHeader, TcpStateEvent, Tuple, kind, tcp_state};

fn main() {
    decode_bench();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("kernel benchmark skipped: needs root to load the probes");
        return;
    }
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let conns = env("TERMSCOPE_BENCH_CONNS", 20_000);
    let rounds = env("TERMSCOPE_BENCH_ROUNDS", 3).max(1);
    let stats_fd = match probes::enable_run_time_stats() {
        Ok(fd) => Some(fd),
        Err(e) => {
            println!("kernel run-time statistics unavailable ({e}): ns/run not printed");
            None
        }
    };
    let configs = [
        Config::NoAgent,
        Config::Agent(Mode::NothingWatched),
        Config::Agent(Mode::OwnCgroupWatched),
        Config::Agent(Mode::WatchAll),
        Config::Bpftrace,
        Config::LibbpfTools,
    ];
    let mut results: Vec<RunResult> = Vec::new();
    let mut unavailable: Vec<(Config, String)> = Vec::new();
    println!(
        "kernel: {rounds} rounds of {conns} loopback connections per configuration, the order \
         rotated each round; ratios are against the no-agent run of the same round"
    );
    for round in 0..rounds {
        for i in 0..configs.len() {
            let config = configs[(i + round) % configs.len()];
            if unavailable.iter().any(|(c, _)| *c == config) {
                continue;
            }
            match run_config(config, conns) {
                Ok(r) => {
                    println!("  round {}: {}", round + 1, r.line(conns));
                    results.push(RunResult { round, ..r });
                }
                Err(e) => {
                    println!(
                        "  round {}: {}: not measured: {e}",
                        round + 1,
                        config.label()
                    );
                    if round == 0 && config != Config::NoAgent {
                        unavailable.push((config, e.to_string()));
                    }
                }
            }
        }
    }
    drop(stats_fd);
    summary(&configs, &results, &unavailable);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    /// The churn alone: the reference for every ratio.
    NoAgent,
    /// termscope's programs.
    Agent(Mode),
    /// A bpftrace one-liner counting state changes on the same tracepoint.
    Bpftrace,
    /// libbpf-tools' `tcpstates` and `sigsnoop`, both running (what termscope's TCP and
    /// signal probes replace).
    LibbpfTools,
}

/// The bpftrace one-liner of the reference row.
const BPFTRACE_PROGRAM: &str = "tracepoint:sock:inet_sock_set_state /args->protocol == 6/ \
                                { @[args->oldstate, args->newstate] = count(); }";

impl Config {
    fn label(self) -> &'static str {
        match self {
            Config::NoAgent => "no agent",
            Config::Agent(Mode::NothingWatched) => "termscope, nothing watched",
            Config::Agent(Mode::OwnCgroupWatched) => "termscope, churning cgroup watched",
            Config::Agent(Mode::WatchAll) => "termscope, --watch-all",
            Config::Bpftrace => "bpftrace one-liner",
            Config::LibbpfTools => "libbpf-tools tcpstates+sigsnoop",
        }
    }
}

#[derive(Debug, Clone)]
struct RunResult {
    config: Config,
    round: usize,
    rate: f64,
    /// Mean ns per run of the programs on `inet_sock_set_state` (for libbpf-tools and
    /// bpftrace: of all their programs that ran), when statistics were on.
    ns_per_run: Option<f64>,
    /// What else to print about the run.
    detail: String,
}

impl RunResult {
    fn line(&self, conns: usize) -> String {
        format!(
            "{:<38} {:>7.0} conn/s ({:.2} s){}{}",
            self.config.label(),
            self.rate,
            conns as f64 / self.rate,
            self.ns_per_run
                .map_or(String::new(), |ns| format!(", {ns:.0} ns/run")),
            self.detail
        )
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn summary(configs: &[Config], results: &[RunResult], unavailable: &[(Config, String)]) {
    println!();
    println!(
        "{:<38} {:>10} {:>22} {:>10}",
        "summary (median over rounds)", "conn/s", "vs no agent (min-max)", "ns/run"
    );
    for &config in configs {
        if let Some((_, why)) = unavailable.iter().find(|(c, _)| *c == config) {
            println!("{:<38} not measured: {why}", config.label());
            continue;
        }
        let runs: Vec<&RunResult> = results.iter().filter(|r| r.config == config).collect();
        let Some(rate) = median(runs.iter().map(|r| r.rate).collect()) else {
            continue;
        };
        let ratios: Vec<f64> = runs
            .iter()
            .filter_map(|r| {
                let base = results
                    .iter()
                    .find(|b| b.config == Config::NoAgent && b.round == r.round)?;
                Some(r.rate / base.rate)
            })
            .collect();
        let ratio = match (
            median(ratios.clone()),
            ratios.iter().copied().reduce(f64::min),
            ratios.iter().copied().reduce(f64::max),
        ) {
            (Some(m), Some(lo), Some(hi)) => format!("{m:.2} ({lo:.2}-{hi:.2})"),
            _ => String::from("n/a"),
        };
        let ns = median(runs.iter().filter_map(|r| r.ns_per_run).collect())
            .map_or(String::from("-"), |ns| format!("{ns:.0}"));
        println!("{:<38} {rate:>10.0} {ratio:>22} {ns:>10}", config.label());
    }
}

fn run_config(config: Config, conns: usize) -> Result<RunResult, Box<dyn std::error::Error>> {
    match config {
        Config::NoAgent => {
            let wall = churn(conns, &mut || {})?;
            Ok(RunResult {
                config,
                round: 0,
                rate: conns as f64 / wall.as_secs_f64(),
                ns_per_run: None,
                detail: String::new(),
            })
        }
        Config::Agent(mode) => kernel_bench(conns, mode),
        Config::Bpftrace => {
            let mut cmd = Command::new("bpftrace");
            cmd.args(["-e", BPFTRACE_PROGRAM]);
            tool_bench(config, conns, vec![cmd])
        }
        Config::LibbpfTools => tool_bench(
            config,
            conns,
            vec![Command::new("tcpstates"), Command::new("sigsnoop")],
        ),
    }
}

/// Ids and (runs, run time) of every BPF program loaded on the node.
fn all_programs() -> Vec<(u32, String, u64, Duration)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| {
            (
                p.id(),
                p.name_as_str().unwrap_or("?").to_string(),
                p.run_count(),
                p.run_time(),
            )
        })
        .collect()
}

/// Children killed (SIGINT, then SIGKILL) when dropped.
struct Tools(Vec<Child>);

impl Drop for Tools {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        }
        for c in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the churn while another tool's programs are attached. The tools are ready when each
/// program they loaded has run at least once (a loopback connection and a child's exit —
/// a SIGCHLD — are made until then), so the churn never starts before they attach.
fn tool_bench(
    config: Config,
    conns: usize,
    commands: Vec<Command>,
) -> Result<RunResult, Box<dyn std::error::Error>> {
    let before: Vec<u32> = all_programs().into_iter().map(|p| p.0).collect();
    let mut tools = Tools(Vec::new());
    for mut cmd in commands {
        let name = format!("{:?}", cmd.get_program());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{name}: {e} (cargo xtask bench installs it)"))?;
        tools.0.push(child);
    }
    let probe_listener = TcpListener::bind("127.0.0.1:0")?;
    let probe_addr = probe_listener.local_addr()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stable = 0;
    let mut last = 0;
    loop {
        for c in &mut tools.0 {
            if let Some(status) = c.try_wait()? {
                return Err(format!("{:?} exited before the churn: {status}", c.id()).into());
            }
        }
        let _c = TcpStream::connect(probe_addr)?;
        let _s = probe_listener.accept()?;
        drop((_c, _s));
        Command::new("true").status()?;
        let new: Vec<_> = all_programs()
            .into_iter()
            .filter(|p| !before.contains(&p.0))
            .collect();
        if !new.is_empty() && new.iter().all(|p| p.2 > 0) {
            stable = if new.len() == last { stable + 1 } else { 0 };
            last = new.len();
            if stable >= 3 {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err("its programs did not all run within 60 s of its start".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let start_stats: Vec<_> = all_programs()
        .into_iter()
        .filter(|p| !before.contains(&p.0))
        .collect();
    let wall = churn(conns, &mut || {})?;
    let end_stats = all_programs();
    let (mut runs, mut time, mut names) = (0u64, Duration::ZERO, Vec::new());
    for (id, name, r0, t0) in &start_stats {
        if let Some((_, _, r1, t1)) = end_stats.iter().find(|p| p.0 == *id) {
            let dr = r1.saturating_sub(*r0);
            if dr > 0 {
                runs += dr;
                time += t1.saturating_sub(*t0);
                names.push(format!("{name} {dr} runs"));
            }
        }
    }
    drop(tools);
    Ok(RunResult {
        config,
        round: 0,
        rate: conns as f64 / wall.as_secs_f64(),
        ns_per_run: (runs > 0 && !time.is_zero()).then(|| time.as_nanos() as f64 / runs as f64),
        detail: format!("; its programs: {}", names.join(", ")),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The default on a busy node: no termination in progress.
    NothingWatched,
    /// The churning cgroup (this process's) watched, as during its termination.
    OwnCgroupWatched,
    /// `--watch-all`.
    WatchAll,
}

/// Opens and closes `conns` loopback connections (one request each) as fast as a client and
/// a server thread can; `between` runs every 256 connections. Returns the wall time.
fn churn(conns: usize, between: &mut dyn FnMut()) -> Result<Duration, Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        for _ in 0..conns {
            let (mut s, _) = listener.accept()?;
            let mut b = [0u8; 4];
            s.read_exact(&mut b)?;
            s.write_all(b"pong")?;
        }
        Ok(())
    });
    let start = Instant::now();
    for i in 0..conns {
        let mut c = TcpStream::connect(addr)?;
        c.write_all(b"ping")?;
        let mut b = [0u8; 4];
        c.read_exact(&mut b)?;
        drop(c);
        if i % 256 == 0 {
            between();
        }
    }
    server.join().map_err(|_| "server thread panicked")??;
    Ok(start.elapsed())
}

/// This process's cgroup v2 id.
fn own_cgroup() -> Result<u64, Box<dyn std::error::Error>> {
    let mount = termscope::attribute::cgroupfs::Mount::detect()?;
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("no cgroup v2 line in /proc/self/cgroup")?;
    Ok(termscope::attribute::cgroupfs::cgroup_id(&mount.dir(path))?)
}

fn decode_bench() {
    let event = TcpStateEvent {
        header: EventHeader {
            kind: kind::TCP_STATE,
            flags: 0,
            ts_ns: 1,
            cgroup_id: 7,
            pid: 1,
            tgid: 1,
            comm: *b"nginx: worker\0\0\0",
        },
        conn_id: 9,
        skaddr: 0xffff_8880_0000_1000,
        established_ns: 1,
        tuple: Tuple {
            family: 2,
            local_port: 80,
            remote_port: 50000,
            _pad: 0,
            local_addr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            remote_addr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        },
        netns: 1,
        old_state: tcp_state::ESTABLISHED,
        new_state: tcp_state::FIN_WAIT1,
        _pad: [0; 2],
    };
    // SAFETY: a repr(C) POD type viewed as bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<TcpStateEvent>())
    };
    let decoder = Decoder::default();
    let n = 1_000_000;
    let start = Instant::now();
    for _ in 0..n {
        black_box(decoder.decode(black_box(bytes)).ok());
    }
    let per = start.elapsed().as_nanos() as f64 / n as f64;
    println!("decode: {per:.0} ns per TCP state event ({n} events)");
}

fn kernel_bench(conns: usize, mode: Mode) -> Result<RunResult, Box<dyn std::error::Error>> {
    let mut probes = Probes::load(&LoadOptions {
        watch_all: mode == Mode::WatchAll,
        ..LoadOptions::default()
    })?;
    if mode == Mode::OwnCgroupWatched {
        probes.watch(own_cgroup()?)?;
    }
    let mut events = probes.events()?;
    let before = probes.program_stats();
    let mut received = 0usize;
    let wall = churn(conns, &mut || received += events.drain().len())?;
    let after = probes.program_stats();
    std::thread::sleep(Duration::from_millis(200));
    received += events.drain().len();
    let rate = conns as f64 / wall.as_secs_f64();
    let mut ns_per_run = None;
    let mut programs = Vec::new();
    for a in &after {
        let Some(b) = before.iter().find(|b| b.program == a.program) else {
            continue;
        };
        let runs = a.run_count.saturating_sub(b.run_count);
        let time = a.run_time.saturating_sub(b.run_time);
        if runs > 0 {
            let ns = time.as_nanos() as f64 / runs as f64;
            if a.program == "inet_sock_set_state" {
                ns_per_run = Some(ns);
            }
            programs.push(format!("{} {runs} runs {ns:.0} ns/run", a.program));
        }
    }
    Ok(RunResult {
        config: Config::Agent(mode),
        round: 0,
        rate,
        ns_per_run,
        detail: format!(
            "; events to userspace {:.2}/conn, ring lost {}; {}",
            received as f64 / conns as f64,
            probes.counters()?.ringbuf_lost,
            programs.join(", ")
        ),
    })
}
