//! The command line: arguments, logging, and the `report` and `watch` commands (the agent
//! itself is wired in `main.rs`). Everything printed for a terminal goes through
//! [`render::terminal_safe`]; a closed pipe (`termscope report | head`) ends the command
//! quietly.

use std::{
    collections::HashSet,
    io::{self, BufRead, IsTerminal, Seek, Write},
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, builder::BoolishValueParser, value_parser};

use crate::{
    clock,
    outputs::{
        api,
        client::{self, AgentClient},
        log,
        render::{self, terminal_safe},
        store::{self, Filter},
    },
    signal::Signal,
    terminations::{
        kube::{POD_SCHEMA_FAMILY, PodTerminationReport},
        report::{Outcome, TerminationReport},
    },
};

/// The longest `--linger-ms`: one hour.
pub const MAX_LINGER_MS: u64 = 3_600_000;
/// The longest `--survive-timeout-secs`: one day.
pub const MAX_SURVIVE_SECS: u64 = 86_400;
/// The longest `--event-interval-secs`: one day.
pub const MAX_EVENT_INTERVAL_SECS: u64 = 86_400;

/// How the agent's own logs look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn loopback_addr(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s
        .parse()
        .map_err(|e| format!("{e} (expected IP:PORT, e.g. 127.0.0.1:9470)"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: reports are served only on loopback \
             (127.0.0.1, ::1); see docs/api.md"
        ));
    }
    Ok(addr)
}

fn stop_signal(s: &str) -> Result<Signal, String> {
    Signal::parse(s).ok_or_else(|| {
        format!("unknown signal {s:?} (a name such as TERM or SIGQUIT, or a number from 1 to 63)")
    })
}

fn outcome(s: &str) -> Result<Outcome, String> {
    store::parse_outcome(s).map_err(|e| e.to_string())
}

/// termscope: which connections were cut while a container or pod shut down, and why.
///
/// It watches stop signals, process exits, TCP closes and resets per container in the kernel
/// (eBPF) and reports them. Needs root, or CAP_BPF + CAP_PERFMON.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
pub struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `termscope=debug`.
    #[arg(long, env = "TERMSCOPE_LOG", default_value = "info", global = true)]
    pub log: String,
    /// How the agent's own logs (on stderr) look: `text` (coloured only on a terminal;
    /// NO_COLOR turns colour off) or `json` (one object per line, for log shippers).
    #[arg(
        long,
        value_enum,
        env = "TERMSCOPE_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Tell what this node supports: kernel, BTF, tracefs, cgroups, privileges, each probe.
    /// Exits non-zero when an essential piece is missing.
    Doctor {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run the node agent until SIGINT/SIGTERM: one termination report per stopped container,
    /// as a JSON line on stdout and in the log file, served with the metrics over HTTP.
    Agent(AgentArgs),
    /// Show termination reports, from the agent's log file or from a running agent.
    Report(ReportArgs),
    /// Print each new termination report of a running agent as it appears, until Ctrl-C.
    Watch(WatchArgs),
    /// Print the agent's seccomp profile (JSON), or install it on this node: what the
    /// DaemonSet's init container does before the agent container, which runs under it, is
    /// created (deploy/README.md).
    SeccompProfile {
        /// Write the profile to this file (atomically; left alone when it already holds it),
        /// e.g. /var/lib/kubelet/seccomp/termscope/agent.json.
        #[arg(long, value_name = "FILE")]
        install: Option<PathBuf>,
        /// The socket-walk component's profile (deploy/components/socket-walk): the agent's
        /// plus `setns` into network namespaces.
        #[arg(long)]
        walk: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Send every cgroup's events to userspace, not only those of containers being stopped
    /// (for debugging: costly on a busy node).
    #[arg(long, env = "TERMSCOPE_WATCH_ALL", value_parser = BoolishValueParser::new())]
    pub watch_all: bool,
    /// Also watch these cgroups from the start (paths under the cgroup2 mount, e.g.
    /// `/system.slice/nginx.service`, or absolute directories). Repeatable.
    #[arg(
        long = "watch-cgroup",
        env = "TERMSCOPE_WATCH_CGROUPS",
        value_delimiter = ','
    )]
    pub watch_cgroups: Vec<String>,
    /// Signals that count as stop signals (names or numbers).
    #[arg(
        long,
        env = "TERMSCOPE_STOP_SIGNALS",
        value_delimiter = ',',
        default_value = "HUP,INT,QUIT,KILL,USR1,USR2,TERM,WINCH,PWR",
        value_parser = stop_signal
    )]
    pub stop_signals: Vec<Signal>,
    /// Resets answering segments for which no socket exists (e.g. SYN to a closed port) in
    /// namespaces not being watched: how many per CPU per second reach userspace.
    #[arg(long, env = "TERMSCOPE_UNOWNED_RESET_RATE", default_value_t = 200)]
    pub unowned_reset_rate: u32,
    /// Ring buffer size in KiB (power of two).
    #[arg(long, env = "TERMSCOPE_RING_BUFFER_KIB", default_value_t = 4096)]
    pub ring_buffer_kib: u32,

    /// After a container's last process exited, keep collecting this long (the kernel's last
    /// closes, refusals of traffic that still arrives) before reporting, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        env = "TERMSCOPE_LINGER_MS",
        default_value_t = 3000,
        value_parser = value_parser!(u64).range(0..=MAX_LINGER_MS)
    )]
    pub linger_ms: u64,
    /// Report a container whose processes are still alive this long after the last stop
    /// signal as having survived it, in seconds.
    #[arg(
        long,
        value_name = "SECS",
        env = "TERMSCOPE_SURVIVE_TIMEOUT_SECS",
        default_value_t = 120,
        value_parser = value_parser!(u64).range(1..=MAX_SURVIVE_SECS)
    )]
    pub survive_timeout_secs: u64,
    /// Connections listed per report (all are counted; cut ones are listed first).
    #[arg(
        long,
        value_name = "N",
        env = "TERMSCOPE_MAX_CONNECTIONS_PER_REPORT",
        default_value_t = 256
    )]
    pub max_connections_per_report: usize,
    /// This node's name, written in every report. Default: $NODE_NAME (set by the DaemonSet
    /// from the downward API), else the host name.
    #[arg(long, value_name = "NAME", env = "TERMSCOPE_NODE_NAME")]
    pub node_name: Option<String>,

    /// Kubernetes: a kubeconfig to reach the API server from outside a cluster. In a pod the
    /// agent uses its service account; with neither (and no $KUBECONFIG) it runs standalone.
    #[arg(long, value_name = "PATH", env = "TERMSCOPE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes: at most one Event per workload per this many seconds when a pod's shutdown
    /// cut connections.
    #[arg(
        long,
        value_name = "SECS",
        env = "TERMSCOPE_EVENT_INTERVAL_SECS",
        default_value_t = 300,
        value_parser = value_parser!(u64).range(0..=MAX_EVENT_INTERVAL_SECS)
    )]
    pub event_interval_secs: u64,
    /// Kubernetes: how long to wait for the API server, in seconds: connecting, each answer,
    /// and the next bytes of a watch (watches end after 5 s less and are renewed). A hung API
    /// server is logged and shows in /readyz and termscope_kubernetes_api_up within 1.5 times
    /// this (docs/kubernetes.md).
    #[arg(
        long,
        value_name = "SECS",
        env = "TERMSCOPE_KUBE_API_TIMEOUT_SECS",
        default_value_t = crate::kube::watch::ApiTimeout::DEFAULT_SECS,
        value_parser = value_parser!(u64).range(
            crate::kube::watch::ApiTimeout::MIN_SECS..=crate::kube::watch::ApiTimeout::MAX_SECS
        )
    )]
    pub kube_api_timeout_secs: u64,
    /// Kubernetes: post no Events.
    #[arg(long, env = "TERMSCOPE_NO_EVENTS", value_parser = BoolishValueParser::new())]
    pub no_events: bool,

    /// Address of the HTTP API: /metrics, /healthz, /readyz; and the reports (/v1/terminations,
    /// /v1/pod-terminations) only if it is a loopback address. The DaemonSet uses 0.0.0.0:9469
    /// (metrics for Prometheus) and --reports-listen 127.0.0.1:9470 (docs/api.md).
    #[arg(long, value_name = "ADDR", env = "TERMSCOPE_LISTEN", default_value = api::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Also serve the whole API, reports included, on this loopback address (e.g.
    /// 127.0.0.1:9470 in the pod: reachable with `kubectl exec` only).
    #[arg(long, value_name = "ADDR", env = "TERMSCOPE_REPORTS_LISTEN", value_parser = loopback_addr)]
    pub reports_listen: Option<SocketAddr>,
    /// Connections the HTTP API keeps open at once, per listener; over it, the connection idle
    /// the longest is closed.
    #[arg(
        long,
        value_name = "N",
        env = "TERMSCOPE_API_MAX_CONNECTIONS",
        default_value_t = 64,
        value_parser = value_parser!(u64).range(1..=10_000)
    )]
    pub api_max_connections: u64,
    /// Write the preStop hooks' exec command lines (and httpGet query strings) into reports
    /// and Events. Off by default: they can carry secrets.
    #[arg(long, env = "TERMSCOPE_SHOW_PRESTOP_COMMANDS", value_parser = BoolishValueParser::new())]
    pub show_prestop_commands: bool,
    /// Recent reports kept in memory for the API.
    #[arg(long, value_name = "N", env = "TERMSCOPE_STORE_SIZE", default_value_t = store::DEFAULT_CAPACITY)]
    pub store_size: usize,
    /// Add a `pod` label (the pod UID) to the per-termination metrics: one series per pod,
    /// so off by default.
    #[arg(long, env = "TERMSCOPE_POD_LABELS", value_parser = BoolishValueParser::new())]
    pub pod_labels: bool,

    /// The forensic log: one report per line (JSON), rotated by size.
    #[arg(long, value_name = "PATH", env = "TERMSCOPE_LOG_FILE", default_value = log::DEFAULT_PATH)]
    pub log_file: PathBuf,
    /// Write no log file.
    #[arg(long, env = "TERMSCOPE_NO_LOG_FILE", value_parser = BoolishValueParser::new())]
    pub no_log_file: bool,
    /// Rotate the log file when a report would take it past this many bytes.
    #[arg(long, value_name = "BYTES", env = "TERMSCOPE_LOG_MAX_BYTES", default_value_t = log::DEFAULT_MAX_BYTES)]
    pub log_max_bytes: u64,
    /// Rotated log files kept: PATH.1 (newest) ... PATH.N; the oldest is dropped.
    #[arg(long, value_name = "N", env = "TERMSCOPE_LOG_KEEP", default_value_t = log::DEFAULT_KEEP)]
    pub log_keep: usize,
    /// Do not print reports on stdout (by default each report is also one JSON line there,
    /// for log shippers).
    #[arg(long, env = "TERMSCOPE_NO_STDOUT_REPORTS", value_parser = BoolishValueParser::new())]
    pub no_stdout_reports: bool,
    /// Also print every kernel event as a JSON line on stdout (`{"event": ...}`; debugging).
    #[arg(long, env = "TERMSCOPE_PRINT_EVENTS", value_parser = BoolishValueParser::new())]
    pub print_events: bool,
    /// The terminations in progress, kept on the node (written each second and when the agent
    /// stops) so that one spanning an agent restart is reported once, complete, flagged
    /// `agent_restarted`.
    #[arg(long, value_name = "PATH", env = "TERMSCOPE_STATE_FILE", default_value = DEFAULT_STATE_FILE)]
    pub state_file: PathBuf,
    /// Keep no state file: terminations in progress are reported as they stand when the
    /// agent stops, and forgotten when it is killed.
    #[arg(long, env = "TERMSCOPE_NO_STATE_FILE", value_parser = BoolishValueParser::new())]
    pub no_state_file: bool,
    /// Where the kernel maps that outlive the agent are pinned (a bpffs directory; bpffs is
    /// mounted at /sys/fs/bpf if it is not).
    #[arg(long, value_name = "DIR", env = "TERMSCOPE_BPF_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
    pub bpf_pin_dir: PathBuf,
    /// Pin nothing: a restarted agent starts from empty kernel maps.
    #[arg(long, env = "TERMSCOPE_NO_PIN", value_parser = BoolishValueParser::new())]
    pub no_pin: bool,
}

/// `--state-file`'s default.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/termscope/state";
/// `--bpf-pin-dir`'s default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/termscope";

/// Which reports: shared by `report` and `watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// Only containers whose label, short or full id contains this.
    #[arg(long, value_name = "S")]
    pub container: Option<String>,
    /// Only pods whose name or UID contains this.
    #[arg(long, value_name = "S")]
    pub pod: Option<String>,
    /// Only this namespace's pods (Kubernetes; a substring, as the others).
    #[arg(long, short = 'n', value_name = "NS")]
    pub namespace: Option<String>,
    /// Only terminations with this outcome: graceful, cut, killed, no_handler, ignored,
    /// survived.
    #[arg(long, value_name = "OUTCOME", value_parser = outcome)]
    pub outcome: Option<Outcome>,
    /// Only workloads (or systemd units) whose name contains this.
    #[arg(long, value_name = "S")]
    pub workload: Option<String>,
    /// Only terminations that began at or after this time: RFC 3339 with Z or an offset
    /// (2026-11-21T05:00:00Z, 2026-11-21T06:00:00+01:00) or a duration ago (90s, 15m, 1h30m,
    /// 7d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only terminations that began at or before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
}

impl FilterArgs {
    pub fn filter(&self) -> Result<Filter> {
        let now = clock::wall_ns();
        let time = |t: &Option<String>| -> Result<Option<u64>> {
            t.as_deref()
                .map(|t| store::parse_time(t, now))
                .transpose()
                .map_err(Into::into)
        };
        Ok(Filter {
            container: self.container.clone(),
            pod: self.pod.clone(),
            namespace: self.namespace.clone(),
            outcome: self.outcome,
            workload: self.workload.clone(),
            id: None,
            since_ns: time(&self.since).context("--since")?,
            until_ns: time(&self.until).context("--until")?,
            limit: None,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Read the agent's log file (and its rotations PATH.N ... PATH.1). The default source.
    #[arg(long, value_name = "PATH", conflicts_with = "agent")]
    pub from_file: Option<PathBuf>,
    /// Ask a running agent's API instead (e.g. http://127.0.0.1:9469); it keeps the most
    /// recent reports only.
    #[arg(long, value_name = "URL")]
    pub agent: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Only the report with this id.
    #[arg(long)]
    pub id: Option<String>,
    /// Only the N that began last (the list is in the order the terminations began).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Print the reports as JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// Always print every report in full (the default when exactly one matches; with more,
    /// one line each).
    #[arg(long, conflicts_with = "json")]
    pub full: bool,
}

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// The agent's API.
    #[arg(long, value_name = "URL", env = "TERMSCOPE_AGENT", default_value = client::DEFAULT_AGENT_URL, conflicts_with = "from_file")]
    pub agent: String,
    /// Follow the agent's log file instead (as `tail -f` does, across rotations).
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Print the reports as JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Sets up the agent's own logs on stderr: `filter` in tracing's EnvFilter syntax (an invalid
/// one is an error), colour only on a terminal and without NO_COLOR.
pub fn init_logging(filter: &str, format: LogFormat) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).with_context(|| {
        format!("--log {filter:?}: not a log filter (e.g. info, termscope=debug)")
    })?;
    let ansi =
        io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
    Ok(())
}

/// Whether `e` comes from writing to a pipe whose reader went away (`| head`).
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Prints text for a terminal: escape sequences shown, not obeyed.
fn say(out: &mut impl Write, text: &str) -> io::Result<()> {
    out.write_all(terminal_safe(text).as_bytes())
}

/// Prints a line of JSON (serde escapes control characters).
fn json_line(out: &mut impl Write, value: &impl serde::Serialize) -> Result<()> {
    let mut line = serde_json::to_string(value)?;
    line.push('\n');
    // An io::Error, so that a closed pipe is told apart.
    out.write_all(line.as_bytes())?;
    Ok(())
}

fn warn(text: &str) {
    eprintln!("termscope: {}", terminal_safe(text));
}

/// Whether a pod report matches the filter (pods have no container or time filter here).
fn pod_matches(p: &PodTerminationReport, f: &Filter) -> bool {
    let has = |values: &[&str], want: &Option<String>| {
        want.as_deref().is_none_or(|w| {
            let w = w.to_lowercase();
            values.iter().any(|v| v.to_lowercase().contains(&w))
        })
    };
    has(&[&p.pod, &p.pod_uid], &f.pod)
        && has(&[&p.workload], &f.workload)
        && has(&[&p.namespace], &f.namespace)
        && f.outcome.is_none_or(|o| o == p.outcome)
        && f.id.as_deref().is_none_or(|id| p.id == id)
}

/// `termscope report`.
pub fn report(args: ReportArgs) -> Result<std::process::ExitCode> {
    let mut filter = args.filter.filter()?;
    filter.id = args.id.clone();
    // Pod reports (Kubernetes, from the log file) first, then container reports; oldest
    // first, so the newest ends up at the bottom of the terminal.
    let mut pods: Vec<PodTerminationReport> = Vec::new();
    let mut reports = match &args.agent {
        Some(url) => {
            let client = AgentClient::new(url)?;
            filter.limit = args.limit;
            let mut newest_first = client.terminations(&filter)?;
            newest_first.reverse();
            newest_first
        }
        None => {
            let path = args
                .from_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(log::DEFAULT_PATH));
            let contents = log::read_log(&path)?;
            for s in &contents.skipped {
                warn(&format!("skipped {s}"));
            }
            if !contents.skipped.is_empty() {
                warn(&format!(
                    "skipped {} malformed line(s) of {}",
                    contents.skipped.len(),
                    path.display()
                ));
            }
            pods = contents
                .pods
                .into_iter()
                .filter(|p| pod_matches(p, &filter))
                .collect();
            contents
                .reports
                .into_iter()
                .filter(|r| filter.matches(r))
                .collect()
        }
    };
    // In the order they began (the log holds them in the order they ended): the list reads
    // down in time, and `--limit` keeps the ones that began last.
    reports.sort_by_key(|r| r.started_at);
    if let Some(limit) = args.limit {
        let excess = reports.len().saturating_sub(limit);
        reports.drain(..excess);
        let excess = pods.len().saturating_sub(limit);
        pods.drain(..excess);
    }
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let total = pods.len() + reports.len();
    if args.json {
        for p in &pods {
            json_line(&mut out, p)?;
        }
        for r in &reports {
            json_line(&mut out, r)?;
        }
    } else if total == 0 {
        warn("no termination report matches");
    } else if total == 1 || args.full || args.id.is_some() {
        for p in &pods {
            say(&mut out, &render::pod_report(p))?;
            say(&mut out, "\n")?;
        }
        say(&mut out, &render::reports(&reports))?;
        say(
            &mut out,
            &format!("\n{total} report(s); `--json` prints them as JSON lines\n"),
        )?;
    } else {
        let mut text = String::new();
        text.push_str(render::LIST_HEADER);
        text.push('\n');
        for p in &pods {
            text.push_str(&render::pod_list_line(p));
            text.push('\n');
        }
        for r in &reports {
            text.push_str(&render::list_line(r));
            text.push('\n');
        }
        text.push_str(&format!(
            "\n{total} report(s); `--id ID` shows one in full, `--full` all of them, `--json` \
             prints them as JSON lines\n"
        ));
        say(&mut out, &text)?;
    }
    out.flush()?;
    Ok(if args.id.is_some() && total == 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}

/// How many reports each poll asks for: more new ones than this within a second are noticed.
const WATCH_WINDOW: usize = 100;
/// How often `watch --from-file` looks at the file.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// `termscope watch`.
pub fn watch(args: WatchArgs) -> Result<std::process::ExitCode> {
    let filter = args.filter.filter()?;
    match &args.from_file {
        Some(path) => follow_file(path, &filter, args.json),
        None => watch_agent(&args.agent, filter, args.json),
    }
}

/// Prints one report as `watch` does.
fn print_one(out: &mut impl Write, r: &TerminationReport, json: bool) -> Result<()> {
    if json {
        json_line(out, r)?;
    } else {
        say(out, &render::report(r))?;
        say(out, "\n")?;
    }
    out.flush()?;
    Ok(())
}

fn watch_agent(url: &str, mut filter: Filter, json: bool) -> Result<std::process::ExitCode> {
    let client = AgentClient::new(url)?;
    filter.limit = Some(WATCH_WINDOW);
    // Reports already there when watching began are not printed.
    let mut seen: Option<HashSet<String>> = None;
    let mut reachable = true;
    let stdout = io::stdout();
    loop {
        match client.terminations(&filter) {
            Ok(newest_first) => {
                if !reachable {
                    warn(&format!("the agent at {} answers again", client.addr()));
                    reachable = true;
                }
                let ids: HashSet<String> = newest_first.iter().map(|r| r.id.clone()).collect();
                match &seen {
                    None => warn(&format!(
                        "watching {} ({} earlier report(s) not shown; `termscope report \
                         --agent {url}` shows them)",
                        client.addr(),
                        newest_first.len(),
                    )),
                    Some(seen) => {
                        let fresh: Vec<&TerminationReport> = newest_first
                            .iter()
                            .rev()
                            .filter(|r| !seen.contains(&r.id))
                            .collect();
                        if fresh.len() == WATCH_WINDOW {
                            warn(&format!(
                                "more than {WATCH_WINDOW} reports within a second: some may \
                                 not be shown"
                            ));
                        }
                        let mut out = stdout.lock();
                        for r in fresh {
                            print_one(&mut out, r, json)?;
                        }
                    }
                }
                // Only the newest window can hold reports not seen yet.
                seen = Some(ids);
            }
            Err(e) => {
                if reachable {
                    warn(&format!("{e}; retrying every second"));
                    reachable = false;
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The log file being followed.
struct Followed {
    file: std::fs::File,
    ino: u64,
    dev: u64,
    pos: u64,
    /// The start of a line not complete yet.
    partial: Vec<u8>,
}

impl Followed {
    fn open(path: &std::path::Path, at_end: bool) -> io::Result<Self> {
        let mut file = std::fs::File::open(path)?;
        let meta = file.metadata()?;
        let pos = if at_end {
            file.seek(io::SeekFrom::End(0))?
        } else {
            0
        };
        Ok(Followed {
            file,
            ino: meta.ino(),
            dev: meta.dev(),
            pos,
            partial: Vec::new(),
        })
    }

    /// The complete lines appended since the last call.
    fn new_lines(&mut self) -> io::Result<Vec<String>> {
        let mut reader = io::BufReader::new(&self.file);
        let mut lines = Vec::new();
        loop {
            let mut buf = std::mem::take(&mut self.partial);
            let n = reader.read_until(b'\n', &mut buf)?;
            self.pos += n as u64;
            if buf.last() == Some(&b'\n') {
                lines.push(String::from_utf8_lossy(&buf).trim_end().to_string());
            } else {
                self.partial = buf;
                return Ok(lines);
            }
        }
    }
}

/// `termscope watch --from-file`: prints the reports appended to the log from now on,
/// following it across rotations (the file renamed to PATH.1 and a new one created) and
/// truncations.
fn follow_file(
    path: &std::path::Path,
    filter: &Filter,
    json: bool,
) -> Result<std::process::ExitCode> {
    let mut followed = match Followed::open(path, true) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    warn(&format!(
        "following {} (earlier reports not shown; `termscope report --from-file {}` shows \
         them)",
        path.display(),
        path.display()
    ));
    let stdout = io::stdout();
    loop {
        let mut lines = Vec::new();
        if let Some(f) = &mut followed {
            lines.extend(f.new_lines()?);
        }
        // Rotated (another file at the path now) or truncated: the rest of the old file was
        // read just above; go on with the new one from its start.
        let replaced = match (std::fs::metadata(path), &followed) {
            (Ok(m), Some(f)) => m.ino() != f.ino || m.dev() != f.dev || m.len() < f.pos,
            (Ok(_), None) => true,
            (Err(_), _) => false,
        };
        if replaced {
            match Followed::open(path, false) {
                Ok(mut f) => {
                    lines.extend(f.new_lines()?);
                    followed = Some(f);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            }
        }
        let mut out = stdout.lock();
        for line in lines.iter().filter(|l| !l.trim().is_empty()) {
            if line.contains(POD_SCHEMA_FAMILY)
                && let Ok(p) = serde_json::from_str::<PodTerminationReport>(line)
            {
                if pod_matches(&p, filter) {
                    if json {
                        json_line(&mut out, &p)?;
                    } else {
                        say(&mut out, &render::pod_report(&p))?;
                        say(&mut out, "\n")?;
                    }
                    out.flush()?;
                }
                continue;
            }
            match serde_json::from_str::<TerminationReport>(line) {
                Ok(r) if filter.matches(&r) => print_one(&mut out, &r, json)?,
                Ok(_) => {}
                Err(e) => warn(&format!(
                    "{}: skipped a line that is not a termination report: {e}",
                    path.display()
                )),
            }
        }
        drop(out);
        std::thread::sleep(FOLLOW_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::DEFAULT_STOP_SIGNALS;

    fn stop_signals(args: &[&str]) -> Vec<Signal> {
        let cli = Cli::try_parse_from(["termscope", "agent"].iter().chain(args)).expect("args");
        match cli.command {
            Command::Agent(a) => a.stop_signals,
            other => panic!("not the agent: {other:?}"),
        }
    }

    /// `--stop-signals` defaults to the probes' own list, and takes signals as people name
    /// them.
    #[test]
    fn stop_signals_are_signals() {
        assert_eq!(stop_signals(&[]), DEFAULT_STOP_SIGNALS);
        assert_eq!(
            stop_signals(&["--stop-signals", "sigterm,QUIT,9"]),
            [Signal::TERM, Signal::QUIT, Signal::KILL]
        );
    }
}
