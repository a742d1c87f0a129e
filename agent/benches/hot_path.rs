//! What the hot path costs, measured rather than guessed.
//!
//! 1. userspace: decoding ring buffer records (ns per event);
//! 2. kernel (root only): the real programs attached, N loopback TCP connections opened and
//!    closed as fast as two threads can, with the kernel's own per-program accounting
//!    (`BPF_ENABLE_STATS`): ns per run of each program, and how many events reached userspace
//!    — first with nothing watched (the default on a busy node), then with everything watched.
//!
//! Run with `cargo xtask bench` (or `cargo bench -p termscope`). `TERMSCOPE_BENCH_CONNS` sets N.

use std::{
    hint::black_box,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
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
    let conns = std::env::var("TERMSCOPE_BENCH_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    // The same churn without the agent, for the throughput ratios (same run, same machine).
    let baseline = match churn(conns, &mut || {}) {
        Ok(wall) => {
            let rate = conns as f64 / wall.as_secs_f64();
            println!("no agent: {conns} loopback connections at {rate:.0} conn/s (reference)");
            Some(rate)
        }
        Err(e) => {
            println!("no-agent reference failed: {e}");
            None
        }
    };
    for mode in [Mode::NothingWatched, Mode::OwnCgroupWatched, Mode::WatchAll] {
        if let Err(e) = kernel_bench(conns, mode, baseline) {
            println!("kernel benchmark ({mode:?}) failed: {e}");
        }
    }
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

fn kernel_bench(
    conns: usize,
    mode: Mode,
    baseline: Option<f64>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut probes = Probes::load(&LoadOptions {
        watch_all: mode == Mode::WatchAll,
        ..LoadOptions::default()
    })?;
    if mode == Mode::OwnCgroupWatched {
        probes.watch(own_cgroup()?)?;
    }
    let mut events = probes.events()?;
    let stats_fd = probes::enable_run_time_stats()?;
    let before = probes.program_stats();
    let mut received = 0usize;
    let wall = churn(conns, &mut || received += events.drain().len())?;
    std::thread::sleep(Duration::from_millis(200));
    received += events.drain().len();
    let after = probes.program_stats();
    drop(stats_fd);
    let rate = conns as f64 / wall.as_secs_f64();
    let ratio = baseline.map_or(String::from("n/a"), |b| format!("{:.2}", rate / b));
    println!(
        "kernel, {}: {conns} loopback connections in {:.2} s ({rate:.0} conn/s, {ratio} of no agent); events to userspace: {received} ({:.2} per connection); ring buffer lost: {}",
        match mode {
            Mode::NothingWatched => "nothing watched (default)",
            Mode::OwnCgroupWatched => "the churning cgroup watched",
            Mode::WatchAll => "everything watched",
        },
        wall.as_secs_f64(),
        received as f64 / conns as f64,
        probes.counters()?.ringbuf_lost,
    );
    for a in &after {
        let Some(b) = before.iter().find(|b| b.program == a.program) else {
            continue;
        };
        let runs = a.run_count.saturating_sub(b.run_count);
        let time = a.run_time.saturating_sub(b.run_time);
        if runs > 0 {
            println!(
                "  {:<22} {runs:>9} runs  {:>6.0} ns/run",
                a.program,
                time.as_nanos() as f64 / runs as f64
            );
        }
    }
    Ok(())
}
