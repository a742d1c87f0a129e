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
    for watch_all in [false, true] {
        if let Err(e) = kernel_bench(conns, watch_all) {
            println!("kernel benchmark (watch_all={watch_all}) failed: {e}");
        }
    }
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
        activity: Default::default(),
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

fn kernel_bench(conns: usize, watch_all: bool) -> Result<(), Box<dyn std::error::Error>> {
    let mut probes = Probes::load(&LoadOptions {
        watch_all,
        ..LoadOptions::default()
    })?;
    let mut events = probes.events()?;
    let stats_fd = probes::enable_run_time_stats()?;
    let before = probes.program_stats();

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
    let mut received = 0usize;
    let start = Instant::now();
    for i in 0..conns {
        let mut c = TcpStream::connect(addr)?;
        c.write_all(b"ping")?;
        let mut b = [0u8; 4];
        c.read_exact(&mut b)?;
        drop(c);
        if i % 256 == 0 {
            received += events.drain().len();
        }
    }
    server.join().map_err(|_| "server thread panicked")??;
    let wall = start.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    received += events.drain().len();
    let after = probes.program_stats();
    drop(stats_fd);

    println!(
        "kernel, {}: {conns} loopback connections in {:.2} s ({:.0} conn/s); events to userspace: {received} ({:.2} per connection); ring buffer lost: {}",
        if watch_all {
            "everything watched"
        } else {
            "nothing watched (default)"
        },
        wall.as_secs_f64(),
        conns as f64 / wall.as_secs_f64(),
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
