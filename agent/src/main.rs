//! The `termscope` binary: the edge where errors become messages and exit codes.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use termscope::{
    attribute::{Resolver, cgroupfs},
    clock::WallClock,
    decode::{Event, parse_signal},
    doctor,
    probes::{self, LoadOptions, Probes},
};

/// termscope: which connections were cut while a container or pod shut down, and why.
///
/// It watches stop signals, process exits, TCP closes and resets per container in the kernel
/// (eBPF) and reports them. Needs root, or CAP_BPF + CAP_PERFMON.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `termscope=debug`.
    #[arg(long, env = "TERMSCOPE_LOG", default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tell what this node supports: kernel, BTF, tracefs, cgroups, privileges, each probe.
    /// Exits non-zero when an essential piece is missing.
    Doctor {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Load the probes and print every event as a JSON line on stdout until SIGINT/SIGTERM.
    Agent(AgentArgs),
}

#[derive(Debug, clap::Args)]
struct AgentArgs {
    /// Send every cgroup's events to userspace, not only those of containers being stopped
    /// (for debugging: costly on a busy node).
    #[arg(long, env = "TERMSCOPE_WATCH_ALL")]
    watch_all: bool,
    /// Also watch these cgroups from the start (paths under the cgroup2 mount, e.g.
    /// `/system.slice/nginx.service`, or absolute directories). Repeatable.
    #[arg(
        long = "watch-cgroup",
        env = "TERMSCOPE_WATCH_CGROUPS",
        value_delimiter = ','
    )]
    watch_cgroups: Vec<String>,
    /// Signals that count as stop signals (names or numbers).
    #[arg(
        long,
        env = "TERMSCOPE_STOP_SIGNALS",
        value_delimiter = ',',
        default_value = "HUP,INT,QUIT,KILL,USR1,USR2,TERM,WINCH,PWR"
    )]
    stop_signals: Vec<String>,
    /// Resets answering segments for which no socket exists (e.g. SYN to a closed port) in
    /// namespaces not being watched: how many per CPU per second reach userspace.
    #[arg(long, env = "TERMSCOPE_UNOWNED_RESET_RATE", default_value_t = 200)]
    unowned_reset_rate: u32,
    /// Ring buffer size in KiB (power of two).
    #[arg(long, env = "TERMSCOPE_RING_BUFFER_KIB", default_value_t = 4096)]
    ring_buffer_kib: u32,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("termscope: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> Result<std::process::ExitCode> {
    match cli.command {
        Command::Doctor { json } => {
            let report = doctor::run();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(if report.failed() {
                std::process::ExitCode::FAILURE
            } else {
                std::process::ExitCode::SUCCESS
            })
        }
        Command::Agent(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(agent(args))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

async fn agent(args: AgentArgs) -> Result<()> {
    let mut stop_signals = Vec::new();
    for s in &args.stop_signals {
        stop_signals.push(parse_signal(s).with_context(|| format!("unknown signal {s:?}"))?);
    }
    let opts = LoadOptions {
        watch_all: args.watch_all,
        stop_signals,
        unowned_reset_rate: args.unowned_reset_rate,
        ring_buffer_bytes: args
            .ring_buffer_kib
            .checked_mul(1024)
            .filter(|b| b.is_power_of_two())
            .context("--ring-buffer-kib must be a power of two")?,
        ..LoadOptions::default()
    };

    if !doctor::caps_allow_tracing(effective_caps()) {
        bail!(
            "loading eBPF programs needs root, or CAP_BPF + CAP_PERFMON; run it with sudo \
             (`cargo xtask run` does that for you)"
        );
    }
    let mut probes = Probes::load(&opts).context("loading the kernel programs")?;
    let attached = probes.attached();
    tracing::info!(
        attached,
        total = probes::PROBES.len(),
        "probes attached; `termscope doctor` tells what is missing"
    );
    if attached == 0 {
        bail!("no probe could be attached on this kernel; see `termscope doctor`");
    }

    let mount = cgroupfs::Mount::detect()
        .inspect_err(|e| tracing::warn!(error = %e, "no cgroup v2 mount: events keep only ids"))
        .ok();
    let mut resolver = Resolver::new(mount);
    for path in &args.watch_cgroups {
        let id = resolver
            .id_of(path)
            .with_context(|| format!("--watch-cgroup {path}"))?;
        resolver.remember(id, path);
        probes.watch(id)?;
        tracing::info!(cgroup = %path, id, "watching");
    }
    tracing::info!(
        "standalone mode (no Kubernetes): watching every cgroup that receives a stop signal \
         from outside"
    );

    let mut events = probes.events()?.into_async()?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut health = tokio::time::interval(Duration::from_secs(30));
    let mut lost_reported = 0;
    let clock = WallClock::now();

    loop {
        tokio::select! {
            batch = events.next_batch() => {
                for decoded in batch? {
                    match decoded {
                        Ok(event) => print_event(&event, &clock, &mut resolver)?,
                        Err(e) => tracing::warn!(error = %e, "undecodable event"),
                    }
                }
            }
            _ = health.tick() => {
                let counters = probes.counters()?;
                if counters.ringbuf_lost > lost_reported {
                    tracing::warn!(lost = counters.ringbuf_lost, "the ring buffer was full: events were lost");
                    lost_reported = counters.ringbuf_lost;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    tracing::info!("stopping: detaching all probes");
    drop(events);
    drop(probes);
    Ok(())
}

fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn print_event(event: &Event, clock: &WallClock, resolver: &mut Resolver) -> Result<()> {
    let mut value = serde_json::to_value(event)?;
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("time".into(), clock.rfc3339(event.ts_ns()).into());
        if let Some(identity) = resolver.resolve(event.cgroup_id()) {
            map.insert("cgroup".into(), serde_json::to_value(identity)?);
        }
    }
    println!("{value}");
    Ok(())
}
