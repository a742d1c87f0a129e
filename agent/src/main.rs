//! The `termscope` binary: the edge where errors become messages and exit codes.

use std::{
    io::Write,
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use termscope::{
    attribute::{Resolver, cgroupfs},
    cli::{self, AgentArgs, Cli, Command},
    clock::{self, WallClock},
    decode::Event,
    doctor,
    kube::{events::ShutdownEvents, state::KubeStateConfig, state::KubeUpdate},
    outputs::{
        api::{self, ApiState, Status},
        bound,
        log::{LogConfig, ReportLog, WriteErrors},
        metrics::{Health, Metrics, MetricsConfig},
        redact,
        server::Limits,
        store::Store,
    },
    pipeline::Pipeline,
    probes::{LoadOptions, Probes, SkippedRuns},
    restart::Journal,
    terminations::{EngineConfig, kube::PodTerminationReport, report::TerminationReport},
};

fn main() -> std::process::ExitCode {
    let args = Cli::parse();
    let result = cli::init_logging(&args.log, args.log_format).and_then(|()| run(args));
    match result {
        Ok(code) => code,
        // `termscope report | head`: the reader has all it wanted.
        Err(e) if cli::is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "termscope: {}",
                termscope::outputs::render::terminal_safe(&format!("{e:#}"))
            );
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<std::process::ExitCode> {
    match cli.command {
        Command::Doctor { json } => {
            let report = doctor::run();
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                write!(out, "{}", report.render())?;
            }
            out.flush()?;
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
        Command::Report(args) => cli::report(args),
        Command::Watch(args) => cli::watch(args),
        Command::SeccompProfile { install, walk } => {
            let profile = if walk {
                termscope::seccomp::Profile::Walk
            } else {
                termscope::seccomp::Profile::Agent
            };
            match install {
                None => {
                    let mut out = std::io::stdout().lock();
                    write!(out, "{}", profile.text())?;
                    out.flush()?;
                }
                Some(path) => {
                    let done = termscope::seccomp::install(&path, profile)
                        .context("installing the seccomp profile")?;
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
    /// `--max-connections-per-report`: the bound of every list in a report.
    max_listed: usize,
    /// `--show-prestop-commands`.
    show_prestop_commands: bool,
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
    /// What every pod report goes through before it is written, served or posted.
    fn prepare_pod(&self, pod: &mut PodTerminationReport) {
        if !self.show_prestop_commands {
            redact::pod_report(pod);
        }
        if bound::pod_report(pod, self.max_listed) {
            self.metrics.report_truncated();
        }
    }

    fn count_failures(&self, errors: &WriteErrors) {
        for e in &errors.0 {
            self.metrics.report_write_failed(e.output());
        }
    }

    fn emit_pod(&mut self, pod: PodTerminationReport) {
        tracing::info!(
            id = %pod.id,
            pod = %format!("{}/{}", pod.namespace, pod.pod),
            outcome = pod.outcome.as_str(),
            cut = pod.counts.cut,
            "pod termination reported"
        );
        if let Err(e) = self.log.write_pod(&pod) {
            self.count_failures(&e);
            tracing::warn!(error = %e, id = %pod.id, "the pod report was not written (it is still served by the API)");
        }
        if self.log.take_stdout_shortened() {
            self.metrics.stdout_report_shortened();
        }
        self.pods
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(pod);
    }

    fn emit(&mut self, reports: Vec<TerminationReport>) {
        for mut report in reports {
            if !self.show_prestop_commands {
                redact::report(&mut report);
            }
            if bound::report(&mut report, self.max_listed) {
                self.metrics.report_truncated();
            }
            tracing::info!(
                id = %report.id,
                subject = %report.subject.label,
                outcome = report.outcome.as_str(),
                cut = report.counts.cut,
                "termination reported"
            );
            self.metrics.observe(&report);
            if let Err(e) = self.log.write(&report) {
                self.count_failures(&e);
                tracing::warn!(error = %e, id = %report.id, "the report was not written (it is still served by the API)");
            }
            if self.log.take_stdout_shortened() {
                self.metrics.stdout_report_shortened();
            }
            self.store
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .push(report);
        }
    }
}

async fn agent(args: AgentArgs) -> Result<()> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        "termscope agent starting"
    );
    let opts = LoadOptions {
        watch_all: args.watch_all,
        stop_signals: args.stop_signals.clone(),
        unowned_reset_rate: args.unowned_reset_rate,
        ring_buffer_bytes: args
            .ring_buffer_kib
            .checked_mul(1024)
            .filter(|b| b.is_power_of_two())
            .context("--ring-buffer-kib must be a power of two")?,
        pin_dir: (!args.no_pin).then(|| args.bpf_pin_dir.clone()),
        ..LoadOptions::default()
    };
    let engine = EngineConfig {
        linger: Duration::from_millis(args.linger_ms),
        survive_after: Duration::from_secs(args.survive_timeout_secs),
        max_connections: args.max_connections_per_report,
        node: node_name(args.node_name.clone()),
    };

    // What can be checked without the kernel comes first, with clear errors: the log file,
    // the kubeconfig.
    let mut report_log = ReportLog::new(LogConfig {
        path: (!args.no_log_file).then(|| args.log_file.clone()),
        max_bytes: args.log_max_bytes,
        keep: args.log_keep,
        stdout: !args.no_stdout_reports,
    });
    report_log.open()?;
    let state_file = (!args.no_state_file).then(|| args.state_file.clone());
    let journal = match &state_file {
        Some(path) => match Journal::read(path) {
            Ok(j) => j,
            Err(e) => {
                let aside = Journal::set_aside(path);
                tracing::warn!(
                    error = %e,
                    set_aside = ?aside,
                    "the state file cannot be read: the terminations in progress when the agent \
                     last stopped are lost"
                );
                Journal::new()
            }
        },
        None => Journal::new(),
    };
    let kube_timeout = termscope::kube::watch::ApiTimeout::from_secs(args.kube_api_timeout_secs);
    let kube_client = termscope::kube::watch::client_from_env(
        args.kubeconfig.as_deref().map(std::path::Path::as_os_str),
        kube_timeout,
    )
    .await
    .context("reading the Kubernetes configuration (--kubeconfig, $KUBECONFIG, or the pod's service account)")?;

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
    let api_state = ApiState {
        metrics: metrics.clone(),
        store: store.clone(),
        status: status.clone(),
        pods: pods.clone(),
    };
    let limits = Limits {
        max_connections: usize::try_from(args.api_max_connections).unwrap_or(usize::MAX),
        ..Limits::default()
    };
    let (stop_api, api_stopped) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    for addr in std::iter::once(args.listen).chain(args.reports_listen) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("{addr}: cannot listen there (--listen, --reports-listen)"))?;
        let mut stopped = api_stopped.clone();
        servers.push(tokio::spawn(api::serve(
            listener,
            api_state.clone(),
            limits,
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        )));
        if addr.ip().is_loopback() {
            tracing::info!(listen = %addr, "serving /metrics, /healthz, /readyz and the reports (/v1/...)");
        } else {
            tracing::info!(
                listen = %addr,
                "serving /metrics, /healthz, /readyz; the reports only on loopback (--reports-listen)"
            );
        }
    }

    if let Err(why) = doctor::bpf_syscall_allowed() {
        bail!("the bpf() system call is {why}");
    }
    let mut probes = Probes::load(&opts).context("loading the kernel programs")?;
    let attached = probes.attached();
    tracing::info!(
        attached,
        needed = probes.needed(),
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
        pipeline.watch_explicit(id)?;
        tracing::info!(cgroup = %path, id, "watching");
    }
    if state_file.is_some() {
        pipeline
            .restore(journal)
            .context("restoring the terminations in progress from the state file")?;
    }
    let mut kube_health: Option<Arc<termscope::kube::watch::ApiHealth>> = None;
    let (mut kube_updates, kube_events) = match kube_client {
        Some(client) => {
            let node = termscope::kube::watch::node_name(args.node_name.as_deref()).context(
                "Kubernetes mode needs this node's name: set NODE_NAME (the DaemonSet does, \
                 from the downward API) or --node-name",
            )?;
            pipeline.enable_kube(KubeStateConfig::default());
            let health = Arc::new(termscope::kube::watch::ApiHealth::default());
            status.set_kube(health.clone());
            kube_health = Some(health.clone());
            let (rx, _task) = termscope::kube::watch::spawn(
                client.clone(),
                node.clone(),
                4096,
                health,
                kube_timeout,
            );
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
        log: report_log,
        max_listed: args.max_connections_per_report,
        show_prestop_commands: args.show_prestop_commands,
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
    let mut kept_failed_reported = 0;
    let mut skipped_runs = SkippedRuns::default();
    let clock = WallClock::now();
    let mut kube_state: Result<(), String> = Ok(());
    let mut failure = None;
    // The journal's generation last written to the state file.
    let mut written = None;
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
                if let Err(e) = pipeline.take_kept() {
                    tracing::warn!(error = %e, "taking the kernel's records of watched connections");
                }
                // A report due now (its linger is over) goes out now, not at the next tick.
                if pipeline.tick_due() {
                    tick.reset_immediately();
                }
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
                if let (Some(path), Some(journal)) = (&state_file, pipeline.journal_state())
                    && written != Some(journal.generation)
                {
                    match journal.write(path) {
                        Ok(()) => written = Some(journal.generation),
                        Err(e) => tracing::warn!(error = %e, "writing the state file"),
                    }
                }
                for mut pod in pipeline.take_pod_reports() {
                    outputs.prepare_pod(&mut pod);
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
                    && c.ringbuf_lost + c.control_lost > lost_reported
                {
                    tracing::warn!(
                        tcp = c.ringbuf_lost,
                        control = c.control_lost,
                        "a ring buffer was full: events were lost (the affected reports say `incomplete`)"
                    );
                    lost_reported = c.ringbuf_lost + c.control_lost;
                }
                if let Some(c) = counters
                    && c.kept_map_failed > kept_failed_reported
                {
                    tracing::warn!(
                        failed = c.kept_map_failed,
                        "the kernel's records of watched connections were full: those changes \
                         went through the TCP ring (the affected reports say `incomplete` if it \
                         could not take them either)"
                    );
                    kept_failed_reported = c.kept_map_failed;
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
                if let Some(h) = &kube_health {
                    let now = h.check();
                    metrics.set_kubernetes_api_up(now.is_ok());
                    if now != kube_state {
                        match &now {
                            Ok(()) => tracing::info!("kubernetes: the API server serves the watches: ready"),
                            Err(why) => tracing::warn!(%why, "kubernetes: not ready"),
                        }
                        kube_state = now;
                    }
                }
                let runs_missed = skipped_runs.check(pipeline.probes_mut());
                metrics.set_health(&Health {
                    runs_missed,
                    kernel: counters,
                    probes_attached: pipeline.probes().attached(),
                    probes_total: pipeline.probes().needed(),
                    tracked_connections: tracked,
                    terminations_in_progress: pipeline.open_terminations(),
                    kept_records: pipeline.kept_stats(),
                });
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        status.loop_iteration();
    }
    status.set_running(false);

    // Stopping with terminations in progress: kept in the state file for the next agent
    // (their reports come from it, complete); only without one are they reported as they
    // stand.
    let persisted = match (&state_file, pipeline.journal_state()) {
        (Some(path), Some(journal)) => match journal.write(path) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "writing the state file");
                false
            }
        },
        _ => false,
    };
    if persisted {
        if pipeline.open_terminations() > 0 {
            tracing::info!(
                terminations = pipeline.open_terminations(),
                "stopping: the terminations in progress are kept in the state file for the \
                 next agent"
            );
        }
    } else {
        let open = pipeline.flush();
        if !open.is_empty() {
            tracing::info!(
                reports = open.len(),
                "stopping: reporting the terminations in progress"
            );
        }
        outputs.emit(open);
    }
    tracing::info!("stopping: detaching all probes");
    drop(events);
    drop(pipeline);
    let _ = stop_api.send(true);
    for server in servers {
        match tokio::time::timeout(Duration::from_secs(2), server).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the HTTP API failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP API task failed"),
            Ok(Ok(Ok(()))) | Err(_) => {}
        }
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
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}")?;
    Ok(())
}
