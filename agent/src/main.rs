//! The `termscope` binary: the edge where errors become messages and exit codes.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use termscope::{
    attribute::{Resolver, cgroupfs},
    clock::{self, WallClock},
    decode::{Event, parse_signal},
    doctor,
    kube::{events::ShutdownEvents, state::KubeStateConfig, state::KubeUpdate},
    outputs::{
        api::{self, ApiState, Status},
        client::{self, AgentClient},
        log::{self, LogConfig, ReportLog},
        metrics::{Health, Metrics, MetricsConfig},
        render,
        store::{self, Filter, Store},
    },
    pipeline::Pipeline,
    probes::{self, LoadOptions, Probes},
    terminations::{EngineConfig, kube::PodTerminationReport, report::TerminationReport},
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
    },
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

    /// After a container's last process exited, keep collecting this long (the kernel's last
    /// closes, refusals of traffic that still arrives) before reporting, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        env = "TERMSCOPE_LINGER_MS",
        default_value_t = 3000
    )]
    linger_ms: u64,
    /// Report a container whose processes are still alive this long after the last stop
    /// signal as having survived it, in seconds.
    #[arg(
        long,
        value_name = "SECS",
        env = "TERMSCOPE_SURVIVE_TIMEOUT_SECS",
        default_value_t = 120
    )]
    survive_timeout_secs: u64,
    /// Connections listed per report (all are counted; cut ones are listed first).
    #[arg(
        long,
        value_name = "N",
        env = "TERMSCOPE_MAX_CONNECTIONS_PER_REPORT",
        default_value_t = 256
    )]
    max_connections_per_report: usize,
    /// This node's name, written in every report. Default: $NODE_NAME (set by the DaemonSet
    /// from the downward API), else the host name.
    #[arg(long, value_name = "NAME", env = "TERMSCOPE_NODE_NAME")]
    node_name: Option<String>,

    /// Kubernetes: a kubeconfig to reach the API server from outside a cluster. In a pod the
    /// agent uses its service account; with neither (and no $KUBECONFIG) it runs standalone.
    #[arg(long, value_name = "PATH", env = "TERMSCOPE_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Kubernetes: at most one Event per workload per this many seconds when a pod's shutdown
    /// cut connections.
    #[arg(
        long,
        value_name = "SECS",
        env = "TERMSCOPE_EVENT_INTERVAL_SECS",
        default_value_t = 300
    )]
    event_interval_secs: u64,
    /// Kubernetes: post no Events.
    #[arg(long, env = "TERMSCOPE_NO_EVENTS")]
    no_events: bool,

    /// Address of the HTTP API: /metrics, /healthz, /readyz, /v1/terminations,
    /// /v1/pod-terminations (the DaemonSet uses 0.0.0.0:9469).
    #[arg(long, value_name = "ADDR", env = "TERMSCOPE_LISTEN", default_value = api::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Recent reports kept in memory for the API.
    #[arg(long, value_name = "N", env = "TERMSCOPE_STORE_SIZE", default_value_t = store::DEFAULT_CAPACITY)]
    store_size: usize,
    /// Add a `pod` label (the pod UID) to the per-termination metrics: one series per pod,
    /// so off by default.
    #[arg(long, env = "TERMSCOPE_POD_LABELS")]
    pod_labels: bool,

    /// The forensic log: one report per line (JSON), rotated by size.
    #[arg(long, value_name = "PATH", env = "TERMSCOPE_LOG_FILE", default_value = log::DEFAULT_PATH)]
    log_file: PathBuf,
    /// Write no log file.
    #[arg(long, env = "TERMSCOPE_NO_LOG_FILE")]
    no_log_file: bool,
    /// Rotate the log file when a report would take it past this many bytes.
    #[arg(long, value_name = "BYTES", env = "TERMSCOPE_LOG_MAX_BYTES", default_value_t = log::DEFAULT_MAX_BYTES)]
    log_max_bytes: u64,
    /// Rotated log files kept: PATH.1 (newest) ... PATH.N; the oldest is dropped.
    #[arg(long, value_name = "N", env = "TERMSCOPE_LOG_KEEP", default_value_t = log::DEFAULT_KEEP)]
    log_keep: usize,
    /// Do not print reports on stdout (by default each report is also one JSON line there,
    /// for log shippers).
    #[arg(long, env = "TERMSCOPE_NO_STDOUT_REPORTS")]
    no_stdout_reports: bool,
    /// Also print every kernel event as a JSON line on stdout (`{"event": ...}`; debugging).
    #[arg(long, env = "TERMSCOPE_PRINT_EVENTS")]
    print_events: bool,
}

/// Which reports: shared by `report` and `watch`.
#[derive(Debug, Clone, clap::Args)]
struct FilterArgs {
    /// Only containers whose label, short or full id contains this.
    #[arg(long, value_name = "S")]
    container: Option<String>,
    /// Only pods whose UID contains this.
    #[arg(long, value_name = "S")]
    pod: Option<String>,
    /// Only workloads (or systemd units) whose name contains this.
    #[arg(long, value_name = "S")]
    workload: Option<String>,
    /// Only terminations that began at or after this time: RFC 3339 UTC
    /// (2026-11-21T05:00:00Z) or a duration ago (90s, 15m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only terminations that began at or before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> Result<Filter> {
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
            workload: self.workload.clone(),
            id: None,
            since_ns: time(&self.since).context("--since")?,
            until_ns: time(&self.until).context("--until")?,
            limit: None,
        })
    }
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// Read the agent's log file (and its rotations PATH.N ... PATH.1). The default source.
    #[arg(long, value_name = "PATH", conflicts_with = "agent")]
    from_file: Option<PathBuf>,
    /// Ask a running agent's API instead (e.g. http://127.0.0.1:9469); it keeps the most
    /// recent reports only.
    #[arg(long, value_name = "URL")]
    agent: Option<String>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Only the report with this id.
    #[arg(long)]
    id: Option<String>,
    /// Only the N most recent.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Print the reports as JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct WatchArgs {
    /// The agent's API.
    #[arg(long, value_name = "URL", env = "TERMSCOPE_AGENT", default_value = client::DEFAULT_AGENT_URL)]
    agent: String,
    #[command(flatten)]
    filter: FilterArgs,
    /// Print the reports as JSON lines instead of text.
    #[arg(long)]
    json: bool,
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
        Command::Report(args) => report(args),
        Command::Watch(args) => watch(args),
        Command::SeccompProfile { install } => {
            match install {
                None => print!("{}", termscope::seccomp::PROFILE),
                Some(path) => {
                    let done = termscope::seccomp::install(&path)
                        .with_context(|| "installing the seccomp profile".to_string())?;
                    tracing::info!(path = %path.display(), result = ?done, "seccomp profile");
                }
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

/// `--node-name`, else `NODE_NAME` (as Kubernetes mode reads them), else the host name.
fn node_name(flag: Option<String>) -> String {
    termscope::kube::watch::node_name(flag.as_deref())
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_default()
}

/// Where finished reports go: metrics, the in-memory store, the log (file and stdout).
struct Outputs {
    metrics: Arc<Metrics>,
    store: Arc<RwLock<Store>>,
    pods: Arc<RwLock<api::PodStore>>,
    log: ReportLog,
}

/// The next update from the Kubernetes watchers; never, in standalone mode.
async fn next_kube_update(
    rx: &mut Option<tokio::sync::mpsc::Receiver<KubeUpdate>>,
) -> Option<KubeUpdate> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The message of the Event posted on the workload when a pod's shutdown cut connections.
fn pod_event_message(pod: &PodTerminationReport) -> String {
    let mut m = format!(
        "termscope: pod {} shut down ({}) and cut {} connection(s) ({} closed by exit, {} reset \
         by the app, {} refused).",
        pod.pod,
        pod.outcome.as_str(),
        pod.counts.cut,
        pod.counts.closed_by_exit,
        pod.counts.reset_by_app,
        pod.counts.refused
    );
    if let Some(first) = pod.summary.first() {
        m.push(' ');
        m.push_str(first);
    }
    m.chars().take(1000).collect()
}

impl Outputs {
    fn emit_pod(&mut self, pod: PodTerminationReport) {
        tracing::info!(
            id = %pod.id,
            pod = %format!("{}/{}", pod.namespace, pod.pod),
            outcome = pod.outcome.as_str(),
            cut = pod.counts.cut,
            "pod termination reported"
        );
        if let Err(e) = self.log.write_pod(&pod) {
            tracing::warn!(error = %e, id = %pod.id, "the pod report was not written (it is still served by the API)");
        }
        self.pods
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(pod);
    }

    fn emit(&mut self, reports: Vec<TerminationReport>) {
        for report in reports {
            tracing::info!(
                id = %report.id,
                subject = %report.subject.label,
                outcome = report.outcome.as_str(),
                cut = report.counts.cut,
                "termination reported"
            );
            self.metrics.observe(&report);
            if let Err(e) = self.log.write(&report) {
                tracing::warn!(error = %e, id = %report.id, "the report was not written (it is still served by the API)");
            }
            self.store
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .push(report);
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
    let engine = EngineConfig {
        linger: Duration::from_millis(args.linger_ms),
        survive_after: Duration::from_secs(args.survive_timeout_secs),
        max_connections: args.max_connections_per_report,
        node: node_name(args.node_name.clone()),
    };

    if !doctor::has_tracing_privileges() {
        bail!(
            "loading eBPF programs needs root, or CAP_BPF + CAP_PERFMON; run it with sudo \
             (`cargo xtask run` does that for you)"
        );
    }

    // The API first: /healthz and /readyz answer (503) while the probes load.
    let metrics = Arc::new(
        Metrics::new(MetricsConfig {
            pod_labels: args.pod_labels,
        })
        .context("setting up the metrics")?,
    );
    let store = Arc::new(RwLock::new(Store::new(args.store_size)));
    let pods = Arc::new(RwLock::new(api::PodStore::new(args.store_size)));
    let status = Arc::new(Status::default());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot listen there", args.listen))?;
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(
        listener,
        ApiState {
            metrics: metrics.clone(),
            store: store.clone(),
            status: status.clone(),
            pods: pods.clone(),
        },
        async {
            let _ = api_stopped.await;
        },
    ));
    tracing::info!(listen = %args.listen, "serving /metrics, /healthz, /readyz, /v1/terminations");

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
    status.set_probes_attached(attached);

    let mount = cgroupfs::Mount::detect()
        .inspect_err(|e| tracing::warn!(error = %e, "no cgroup v2 mount: events keep only ids"))
        .ok();
    let mut events = probes.events()?.into_async()?;
    let mut pipeline = Pipeline::new(probes, engine, mount);
    for path in &args.watch_cgroups {
        let id = pipeline
            .resolver()
            .id_of(path)
            .with_context(|| format!("--watch-cgroup {path}"))?;
        pipeline.resolver().remember(id, path);
        pipeline.probes_mut().watch(id)?;
        tracing::info!(cgroup = %path, id, "watching");
    }
    let kube_client = termscope::kube::watch::client_from_env(
        args.kubeconfig.as_deref().map(std::path::Path::as_os_str),
    )
    .await
    .context("connecting to the Kubernetes API")?;
    let (mut kube_updates, kube_events) = match kube_client {
        Some(client) => {
            let node = termscope::kube::watch::node_name(args.node_name.as_deref()).context(
                "Kubernetes mode needs this node's name: set NODE_NAME (the DaemonSet does, \
                 from the downward API) or --node-name",
            )?;
            pipeline.enable_kube(KubeStateConfig::default());
            let (rx, _task) = termscope::kube::watch::spawn(client.clone(), node.clone(), 4096);
            tracing::info!(
                %node,
                "Kubernetes mode: watching this node's pods and the endpoint slices; a pod's \
                 deletion opens the terminations of its containers"
            );
            let events = (!args.no_events).then(|| {
                Arc::new(ShutdownEvents::new(
                    client,
                    node,
                    Duration::from_secs(args.event_interval_secs),
                ))
            });
            (Some(rx), events)
        }
        None => {
            tracing::info!(
                "standalone mode (no Kubernetes API configured): watching every cgroup that \
                 receives a stop signal from outside"
            );
            (None, None)
        }
    };

    let mut outputs = Outputs {
        metrics: metrics.clone(),
        store,
        pods,
        log: ReportLog::new(LogConfig {
            path: (!args.no_log_file).then(|| args.log_file.clone()),
            max_bytes: args.log_max_bytes,
            keep: args.log_keep,
            stdout: !args.no_stdout_reports,
        }),
    };
    if let Some(path) = &outputs.log.config().path {
        tracing::info!(path = %path.display(), "writing reports to the log file");
    }

    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut health = tokio::time::interval(Duration::from_secs(5));
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_count: Option<Instant> = None;
    let mut last_expire = Instant::now();
    let mut lost_reported = 0;
    let clock = WallClock::now();
    let mut failure = None;
    status.set_running(true);

    loop {
        tokio::select! {
            batch = events.next_batch() => {
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                };
                let (mut processed, mut undecodable) = (0, 0);
                for decoded in batch {
                    match decoded {
                        Ok(event) => {
                            if args.print_events {
                                print_event(&event, &clock, pipeline.resolver())?;
                            }
                            if let Err(e) = pipeline.handle(&event) {
                                tracing::warn!(error = %e, "handling an event");
                            }
                            processed += 1;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "undecodable event");
                            undecodable += 1;
                        }
                    }
                }
                metrics.add_events(processed, undecodable);
            }
            Some(update) = next_kube_update(&mut kube_updates) => {
                if let Err(e) = pipeline.apply_kube(update) {
                    tracing::warn!(error = %e, "acting on a Kubernetes update");
                }
            }
            _ = tick.tick() => {
                match pipeline.tick() {
                    Ok(reports) => outputs.emit(reports),
                    Err(e) => tracing::warn!(error = %e, "finishing terminations"),
                }
                for pod in pipeline.take_pod_reports() {
                    if pod.counts.cut > 0
                        && let Some(events) = &kube_events
                        && let Some(info) = pipeline.pod_info(&pod.pod_uid)
                    {
                        let events = events.clone();
                        let message = pod_event_message(&pod);
                        tokio::spawn(async move {
                            let now = termscope::kube::UnixNanos(clock::wall_ns());
                            if let Err(e) = events
                                .post(&info, &message, termscope::kube::events::REASON_CONNECTIONS_CUT, now)
                                .await
                            {
                                tracing::warn!(error = %e, pod = %info.name, "posting the Kubernetes Event");
                            }
                        });
                    }
                    outputs.emit_pod(pod);
                }
                if last_expire.elapsed() >= Duration::from_secs(60) {
                    last_expire = Instant::now();
                    pipeline.expire_kube();
                }
            }
            _ = health.tick() => {
                let counters = pipeline
                    .probes()
                    .counters()
                    .inspect_err(|e| tracing::warn!(error = %e, "reading the kernel counters"))
                    .ok();
                if let Some(c) = counters
                    && c.ringbuf_lost > lost_reported
                {
                    tracing::warn!(lost = c.ringbuf_lost, "the ring buffer was full: events were lost");
                    lost_reported = c.ringbuf_lost;
                }
                // Counting the live-connection map walks it: at most every 15 s.
                let tracked = if last_count.is_none_or(|t| t.elapsed() >= Duration::from_secs(15)) {
                    last_count = Some(Instant::now());
                    pipeline
                        .probes()
                        .live_connections()
                        .inspect_err(|e| tracing::warn!(error = %e, "counting live connections"))
                        .ok()
                        .map(|c| c.len())
                } else {
                    None
                };
                metrics.set_health(&Health {
                    kernel: counters,
                    probes_attached: pipeline.probes().attached(),
                    probes_total: probes::PROBES.len(),
                    tracked_connections: tracked,
                    terminations_in_progress: pipeline.open_terminations(),
                });
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        status.loop_iteration();
    }
    status.set_running(false);

    let open = pipeline.flush();
    if !open.is_empty() {
        tracing::info!(
            reports = open.len(),
            "stopping: reporting the terminations in progress"
        );
    }
    outputs.emit(open);
    tracing::info!("stopping: detaching all probes");
    drop(events);
    drop(pipeline);
    let _ = stop_api.send(());
    match tokio::time::timeout(Duration::from_secs(2), server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the HTTP API failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP API task failed"),
        Ok(Ok(Ok(()))) | Err(_) => {}
    }
    match failure {
        Some(e) => Err(e).context("reading events from the ring buffer"),
        None => Ok(()),
    }
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

/// `termscope report`.
fn report(args: ReportArgs) -> Result<std::process::ExitCode> {
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
                eprintln!("termscope: skipped {s}");
            }
            if !contents.skipped.is_empty() {
                eprintln!(
                    "termscope: skipped {} malformed line(s) of {}",
                    contents.skipped.len(),
                    path.display()
                );
            }
            pods = contents
                .pods
                .into_iter()
                .filter(|p| {
                    let has = |v: &str, want: &Option<String>| {
                        want.as_deref()
                            .is_none_or(|w| v.to_lowercase().contains(&w.to_lowercase()))
                    };
                    has(&p.pod, &args.filter.pod)
                        && has(&p.workload, &args.filter.workload)
                        && args.id.as_deref().is_none_or(|id| p.id == id)
                })
                .collect();
            contents
                .reports
                .into_iter()
                .filter(|r| filter.matches(r))
                .collect()
        }
    };
    for p in &pods {
        if args.json {
            println!("{}", serde_json::to_string(p)?);
        } else {
            println!("{}", render::pod_report(p));
        }
    }
    if let Some(limit) = args.limit {
        let excess = reports.len().saturating_sub(limit);
        reports.drain(..excess);
    }
    if args.json {
        for r in &reports {
            println!("{}", serde_json::to_string(r)?);
        }
    } else if reports.is_empty() && pods.is_empty() {
        eprintln!("termscope: no termination report matches");
    } else {
        print!("{}", render::reports(&reports));
        println!(
            "\n{} report(s); `--json` prints them as JSON lines",
            reports.len()
        );
    }
    Ok(
        if args.id.is_some() && reports.is_empty() && pods.is_empty() {
            std::process::ExitCode::FAILURE
        } else {
            std::process::ExitCode::SUCCESS
        },
    )
}

/// How many reports each poll asks for: more new ones than this within a second are noticed.
const WATCH_WINDOW: usize = 100;

/// `termscope watch`.
fn watch(args: WatchArgs) -> Result<std::process::ExitCode> {
    let client = AgentClient::new(&args.agent)?;
    let mut filter = args.filter.filter()?;
    filter.limit = Some(WATCH_WINDOW);
    // Reports already there when watching began are not printed.
    let mut seen: Option<HashSet<String>> = None;
    let mut reachable = true;
    loop {
        match client.terminations(&filter) {
            Ok(newest_first) => {
                if !reachable {
                    eprintln!("termscope: the agent at {} answers again", client.addr());
                    reachable = true;
                }
                let ids: HashSet<String> = newest_first.iter().map(|r| r.id.clone()).collect();
                match &seen {
                    None => eprintln!(
                        "termscope: watching {} ({} earlier report(s) not shown; \
                         `termscope report --agent {}` shows them)",
                        client.addr(),
                        newest_first.len(),
                        args.agent
                    ),
                    Some(seen) => {
                        let fresh: Vec<&TerminationReport> = newest_first
                            .iter()
                            .rev()
                            .filter(|r| !seen.contains(&r.id))
                            .collect();
                        if fresh.len() == WATCH_WINDOW {
                            eprintln!(
                                "termscope: more than {WATCH_WINDOW} reports within a second: \
                                 some may not be shown"
                            );
                        }
                        for r in fresh {
                            if args.json {
                                println!("{}", serde_json::to_string(r)?);
                            } else {
                                println!("{}", render::report(r));
                            }
                        }
                    }
                }
                // Only the newest window can hold reports not seen yet.
                seen = Some(ids);
            }
            Err(e) => {
                if reachable {
                    eprintln!("termscope: {e}; retrying every second");
                    reachable = false;
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
