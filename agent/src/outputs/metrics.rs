//! Prometheus metrics: what the terminations did (counted from each report) and how the agent
//! itself is doing. Every metric is documented in `docs/metrics.md`.
//!
//! Per-termination metrics are labelled by workload (`namespace`, `workload`, `container`
//! from the report's subject); [`MetricsConfig::pod_labels`] adds `pod`, which multiplies
//! the series by the number of pods and is therefore opt-in.

use std::sync::Mutex;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
    core::{Collector, GenericCounter, GenericGauge},
};

use crate::{
    outputs::server::Closed,
    pipeline::KeptStats,
    probes::KernelCounters,
    terminations::report::{Flag, TerminationReport, Verdict},
};

/// Buckets of `termscope_shutdown_duration_seconds`: 10 ms to 5 min.
pub const SHUTDOWN_BUCKETS: [f64; 16] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 180.0, 300.0,
];

/// The verdicts counted by `termscope_connections_cut_total`, by their `reason` label.
/// Buckets for delays after a stop signal (late traffic, preStop), in seconds.
pub const DELAY_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 10.0, 15.0, 20.0, 30.0, 60.0,
];

/// Buckets for the share of the grace period used.
pub const RATIO_BUCKETS: [f64; 10] = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0];

pub const CUT_REASONS: [Verdict; 4] = [
    Verdict::ResetByApp,
    Verdict::ClosedByExit,
    Verdict::ClosedUnanswered,
    Verdict::Refused,
];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metric {name}: {source}")]
    Register {
        name: String,
        #[source]
        source: prometheus::Error,
    },
    #[error("encoding the metrics: {0}")]
    Encode(#[source] prometheus::Error),
}

/// What the metrics are labelled with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Add a `pod` label (the pod UID, empty outside Kubernetes) to the per-termination
    /// metrics. One series per pod: use it only where pods are few or short-lived series are
    /// fine.
    pub pod_labels: bool,
}

/// The agent's health, as [`Metrics::set_health`] takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// The kernel programs' counters; `None` when they could not be read this time.
    pub kernel: Option<KernelCounters>,
    pub probes_attached: usize,
    pub probes_total: usize,
    /// Entries in the kernel's live-connection map; `None`: not counted this time (counting
    /// is O(n), so the agent does it at most every 15 s).
    pub tracked_connections: Option<usize>,
    pub terminations_in_progress: usize,
    /// What the agent did so far with the kernel's records of watched connections.
    pub kept_records: KeptStats,
    /// Runs of each program the kernel skipped since it was loaded (program name, count):
    /// only programs whose count the kernel keeps.
    pub runs_missed: Vec<(String, u64)>,
}

/// The metrics, in their own registry.
pub struct Metrics {
    registry: Registry,
    pod_labels: bool,
    terminations: IntCounterVec,
    connections_cut: IntCounterVec,
    outbound_cut: IntCounterVec,
    idle_closed: IntCounterVec,
    reset_by_peer: IntCounterVec,
    accepted_after_stop: IntCounterVec,
    shutdown_duration: HistogramVec,
    stop_signals: IntCounterVec,
    sigkill_escalations: IntCounterVec,
    late_connections: IntCounterVec,
    late_traffic_delay: HistogramVec,
    grace_used: HistogramVec,
    prestop_duration: HistogramVec,
    events_processed: IntCounter,
    events_undecodable: IntCounter,
    events_lost: IntCounter,
    control_events_lost: IntCounter,
    incomplete_reports: IntCounter,
    restarted_reports: IntCounter,
    watch_map_failures: IntCounter,
    resets_rate_limited: IntCounter,
    live_map_failures: IntCounter,
    kept_records_written: IntCounter,
    kept_map_failures: IntCounter,
    events_left_to_kept: IntCounter,
    kept_records_taken: IntCounter,
    kept_records_reaped: IntCounter,
    runs_missed: IntCounterVec,
    probes_attached: IntGauge,
    probes_total: IntGauge,
    tracked_connections: IntGauge,
    terminations_in_progress: IntGauge,
    api_connections: IntGauge,
    api_connections_closed: IntCounterVec,
    report_write_failures: IntCounterVec,
    reports_truncated: IntCounter,
    stdout_reports_shortened: IntCounter,
    /// Registered on first use: Kubernetes mode only.
    kubernetes_api_up: std::sync::OnceLock<Result<IntGauge, String>>,
    /// The kernel's counters and the kept-record totals as last seen: the counters above
    /// grow by the difference.
    last: Mutex<(KernelCounters, KeptStats)>,
    /// Each program's skipped runs as last seen (a reloaded program starts again from 0).
    last_missed: Mutex<std::collections::HashMap<String, u64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("pod_labels", &self.pod_labels)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new(cfg: MetricsConfig) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let subject: &[&str] = if cfg.pod_labels {
            &["namespace", "workload", "workload_kind", "pod", "container"]
        } else {
            &["namespace", "workload", "workload_kind", "container"]
        };
        let with = |extra: &[&'static str]| -> Vec<&str> {
            subject
                .iter()
                .copied()
                .chain(extra.iter().copied())
                .collect()
        };
        let r = Reg(&registry);
        Ok(Metrics {
            pod_labels: cfg.pod_labels,
            terminations: r.counter_vec(
                "termscope_terminations_total",
                "Container terminations reported, by outcome (graceful, cut, killed, \
                 no_handler, ignored, survived).",
                &with(&["outcome"]),
            )?,
            connections_cut: r.counter_vec(
                "termscope_connections_cut_total",
                "Connections the terminating container cut, by reason: reset_by_app (the app \
                 reset it), closed_by_exit (the kernel closed it when the process died), \
                 refused (a connection attempt after the listener closed).",
                &with(&["reason"]),
            )?,
            outbound_cut: r.counter_vec(
                "termscope_outbound_connections_cut_total",
                "The terminating container's own outbound connections (upstreams, connection \
                 pools) it cut, by reason (reset_by_app, closed_by_exit). Counted apart from \
                 termscope_connections_cut_total, which follows the connections it served.",
                &with(&["reason"]),
            )?,
            idle_closed: r.counter_vec(
                "termscope_idle_connections_closed_total",
                "Idle keep-alive connections the terminating container closed between \
                 requests (verdict closed_idle): nothing lost, but the peer must reconnect, and \
                 a request sent at that moment fails. By direction (inbound, outbound).",
                &with(&["direction"]),
            )?,
            reset_by_peer: r.counter_vec(
                "termscope_connections_reset_by_peer_total",
                "Connections of a terminating container reset by the peer.",
                &with(&[]),
            )?,
            accepted_after_stop: r.counter_vec(
                "termscope_connections_accepted_after_stop_total",
                "Connections a container accepted after its first stop signal.",
                &with(&[]),
            )?,
            shutdown_duration: r.histogram_vec(
                "termscope_shutdown_duration_seconds",
                "From the first stop signal to the exit of the container's last process \
                 (terminations whose processes survived are not observed).",
                &with(&[]),
            )?,
            stop_signals: r.counter_vec(
                "termscope_stop_signals_total",
                "Stop signals sent to containers from outside, by signal and by what the \
                 target process did with it (handler, default, ignored, unknown).",
                &with(&["signal", "disposition"]),
            )?,
            sigkill_escalations: r.counter_vec(
                "termscope_sigkill_escalations_total",
                "Terminations ended by SIGKILL after a different stop signal: the grace \
                 period ran out.",
                &with(&[]),
            )?,
            late_connections: r.counter_vec(
                "termscope_late_connections_total",
                "Inbound connections that still arrived after a container's first stop signal: \
                 accepted (the listener was still open) or refused (it was not).",
                &with(&["kind"]),
            )?,
            late_traffic_delay: r.histogram_vec_with(
                "termscope_late_traffic_delay_seconds",
                "Per termination with late traffic: from the first stop signal to the last new \
                 inbound connection (accepted or refused). Its distribution is the node's real \
                 endpoint propagation delay.",
                &with(&[]),
                DELAY_BUCKETS.to_vec(),
            )?,
            grace_used: r.histogram_vec_with(
                "termscope_grace_period_used_ratio",
                "Kubernetes: from the pod's deletion (the preStop hook included) to the \
                 container's last exit, over the pod's termination grace period (1 = the grace \
                 period ran out).",
                &with(&[]),
                RATIO_BUCKETS.to_vec(),
            )?,
            prestop_duration: r.histogram_vec_with(
                "termscope_prestop_duration_seconds",
                "Kubernetes: from the pod's deletion to the container's first stop signal, the \
                 time kubelet spent on the preStop hook.",
                &with(&[]),
                DELAY_BUCKETS.to_vec(),
            )?,
            events_processed: r.counter(
                "termscope_events_processed_total",
                "Kernel events the agent processed.",
            )?,
            events_undecodable: r.counter(
                "termscope_events_undecodable_total",
                "Kernel events the agent could not decode.",
            )?,
            events_lost: r.counter(
                "termscope_events_lost_total",
                "Kernel events lost because a ring buffer was full (the kernel's own count; \
                 both rings).",
            )?,
            control_events_lost: r.counter(
                "termscope_control_events_lost_total",
                "Signals, exits and execs lost because the control ring buffer was full (also \
                 counted in termscope_events_lost_total).",
            )?,
            runs_missed: r.counter_vec(
                "termscope_kernel_runs_missed_total",
                "Runs of a termscope kernel program that the kernel skipped because the program \
                 (or, for a tracepoint program, any tracing program) was already running on that \
                 CPU: each is a TCP state change, signal or exit the agent never saw, of a \
                 container it cannot name. Only where the kernel counts them (tracing programs \
                 from Linux 5.11, tracepoint programs from 6.7).",
                &["program"],
            )?,
            incomplete_reports: r.counter(
                "termscope_incomplete_reports_total",
                "Termination reports whose collection lost events, or whose stop signal never \
                 reached the agent (the report says `incomplete`).",
            )?,
            restarted_reports: r.counter(
                "termscope_agent_restarted_reports_total",
                "Termination reports of terminations that spanned an agent restart (the report \
                 says `agent_restarted`).",
            )?,
            watch_map_failures: r.counter(
                "termscope_watch_map_failures_total",
                "Stop signals for which the kernel could not start watching the container \
                 (its watched-cgroup map was full).",
            )?,
            resets_rate_limited: r.counter(
                "termscope_resets_rate_limited_total",
                "Resets for which no socket exists, in namespaces not being watched, that the \
                 kernel did not send to the agent because of --unowned-reset-rate.",
            )?,
            live_map_failures: r.counter(
                "termscope_live_map_failures_total",
                "Connections the kernel could not track because its live-connection map was \
                 full.",
            )?,
            kept_records_written: r.counter(
                "termscope_kept_records_written_total",
                "Writes of the kernel's records of watched connections (KEPT_CONNS): each \
                 change that matters to a report, merged into its connection's record.",
            )?,
            kept_map_failures: r.counter(
                "termscope_kept_map_failures_total",
                "Changes of watched connections the kernel could not keep because its \
                 kept-connection map was full: they went through the TCP ring instead (lost, \
                 and the report says incomplete, only if the ring could not take them either).",
            )?,
            events_left_to_kept: r.counter(
                "termscope_events_left_to_kept_total",
                "TCP events of watched connections not sent because the TCP ring was half \
                 full or more: the kernel's record of the connection has what they said (not \
                 lost).",
            )?,
            kept_records_taken: r.counter(
                "termscope_kept_records_taken_total",
                "Records of watched connections the agent took from the kernel into a \
                 termination in progress.",
            )?,
            kept_records_reaped: r.counter(
                "termscope_kept_records_reaped_total",
                "Records of watched connections the agent deleted unused: no termination of \
                 their cgroup was in progress or about to open.",
            )?,
            probes_attached: r.gauge(
                "termscope_probes_attached",
                "Kernel probes attached (see `termscope doctor` for the others).",
            )?,
            probes_total: r.gauge("termscope_probes_known", "Kernel probes this kernel needs (those another probe stands in for here are left out).")?,
            tracked_connections: r.gauge(
                "termscope_tracked_connections",
                "TCP connections in the kernel's live-connection map (counted every 15 s).",
            )?,
            terminations_in_progress: r.gauge(
                "termscope_terminations_in_progress",
                "Terminations begun and not yet reported.",
            )?,
            api_connections: r.gauge(
                "termscope_api_connections",
                "Connections open to the agent's HTTP API (at most --api-max-connections per \
                 listener).",
            )?,
            api_connections_closed: {
                let v = r.counter_vec(
                    "termscope_api_connections_closed_total",
                    "HTTP API connections the agent closed, by reason: request_timeout (no \
                     complete request in time: idle or slow clients), response_timeout (the \
                     client did not read the response), evicted (closed to make room at the \
                     connection cap), rejected (refused at the cap: every connection was busy).",
                    &["reason"],
                )?;
                for why in Closed::ALL {
                    v.with_label_values(&[why.as_str()]);
                }
                v
            },
            report_write_failures: {
                let v = r.counter_vec(
                    "termscope_report_write_failures_total",
                    "Reports that could not be written, by output: file (the log file: full \
                     disk, permissions) or stdout. The API still serves them.",
                    &["output"],
                )?;
                for output in ["file", "stdout"] {
                    v.with_label_values(&[output]);
                }
                v
            },
            reports_truncated: r.counter(
                "termscope_reports_truncated_total",
                "Reports cut to size (timeline steps, exits or stop signals beyond \
                 --max-connections-per-report left out; the report says how many).",
            )?,
            stdout_reports_shortened: r.counter(
                "termscope_stdout_reports_shortened_total",
                "Reports shortened on stdout to fit one 16 KiB line (the log file and the API \
                 have them whole; the line says what it left out).",
            )?,
            kubernetes_api_up: std::sync::OnceLock::new(),
            last: Mutex::new((KernelCounters::default(), KeptStats::default())),
            last_missed: Mutex::new(std::collections::HashMap::new()),
            registry,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts one finished termination.
    pub fn observe(&self, report: &TerminationReport) {
        if report.incomplete.is_some() {
            self.incomplete_reports.inc();
        }
        if report.has_flag(Flag::AgentRestarted) {
            self.restarted_reports.inc();
        }
        self.terminations
            .with_label_values(&self.labels(report, &[report.outcome.as_str()]))
            .inc();
        for verdict in CUT_REASONS {
            let n = report.counts.get(verdict);
            if n > 0 {
                self.connections_cut
                    .with_label_values(&self.labels(report, &[verdict.as_str()]))
                    .inc_by(u64::from(n));
            }
        }
        for verdict in CUT_REASONS {
            let n = report.outbound_counts.get(verdict);
            if n > 0 {
                self.outbound_cut
                    .with_label_values(&self.labels(report, &[verdict.as_str()]))
                    .inc_by(u64::from(n));
            }
        }
        for (direction, n) in [
            ("inbound", report.counts.closed_idle),
            ("outbound", report.outbound_counts.closed_idle),
        ] {
            if n > 0 {
                self.idle_closed
                    .with_label_values(&self.labels(report, &[direction]))
                    .inc_by(u64::from(n));
            }
        }
        if report.counts.reset_by_peer > 0 {
            self.reset_by_peer
                .with_label_values(&self.labels(report, &[]))
                .inc_by(u64::from(report.counts.reset_by_peer));
        }
        if report.counts.accepted_late > 0 {
            self.accepted_after_stop
                .with_label_values(&self.labels(report, &[]))
                .inc_by(u64::from(report.counts.accepted_late));
        }
        if !report.has_flag(Flag::Survived) {
            self.shutdown_duration
                .with_label_values(&self.labels(report, &[]))
                .observe(report.shutdown_ms / 1000.0);
        }
        for signal in report.external_signals() {
            let disposition = report.disposition_of(signal);
            let name = signal.signal.name();
            self.stop_signals
                .with_label_values(&self.labels(report, &[&name, disposition.as_str()]))
                .inc();
        }
        if report.sigkill_escalation() {
            self.sigkill_escalations
                .with_label_values(&self.labels(report, &[]))
                .inc();
        }
        for (kind, n) in [
            ("accepted", report.counts.accepted_late),
            ("refused", report.counts.refused),
        ] {
            if n > 0 {
                self.late_connections
                    .with_label_values(&self.labels(report, &[kind]))
                    .inc_by(u64::from(n));
            }
        }
        let last_late = report
            .connections
            .iter()
            .filter(|c| c.accepted_late || c.verdict == Verdict::Refused)
            .filter_map(|c| c.delay_ms)
            .reduce(f64::max);
        if let Some(ms) = last_late {
            self.late_traffic_delay
                .with_label_values(&self.labels(report, &[]))
                .observe(ms / 1000.0);
        }
        if let Some(k) = report.kubernetes.as_deref() {
            if let Some(ratio) = k.grace_used_ratio {
                self.grace_used
                    .with_label_values(&self.labels(report, &[]))
                    .observe(ratio);
            }
            if let Some(ms) = k.deletion_to_stop_signal_ms {
                self.prestop_duration
                    .with_label_values(&self.labels(report, &[]))
                    .observe(ms / 1000.0);
            }
        }
    }

    /// The per-termination label values, in the order the metrics were built with.
    fn labels<'a>(&self, report: &'a TerminationReport, extra: &[&'a str]) -> Vec<&'a str> {
        let s = &report.subject;
        let mut v = vec![
            s.namespace.as_str(),
            s.workload.as_str(),
            s.workload_kind.as_deref().unwrap_or(""),
        ];
        if self.pod_labels {
            v.push(s.pod.as_deref().or(s.pod_uid.as_deref()).unwrap_or(""));
        }
        v.push(s.container.as_str());
        v.extend_from_slice(extra);
        v
    }

    /// Kernel events handled (`processed`) and not decodable (`undecodable`) since the last
    /// call.
    pub fn add_events(&self, processed: u64, undecodable: u64) {
        self.events_processed.inc_by(processed);
        self.events_undecodable.inc_by(undecodable);
    }

    /// Updates the agent-health metrics.
    pub fn set_health(&self, h: &Health) {
        let mut seen = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (last, handled) = &mut *seen;
        if let Some(now) = h.kernel {
            advance(&self.events_lost, &mut last.ringbuf_lost, now.ringbuf_lost);
            let before = last.control_lost;
            advance(&self.events_lost, &mut last.control_lost, now.control_lost);
            last.control_lost = before;
            advance(
                &self.control_events_lost,
                &mut last.control_lost,
                now.control_lost,
            );
            advance(
                &self.watch_map_failures,
                &mut last.watch_map_failed,
                now.watch_map_failed,
            );
            advance(
                &self.resets_rate_limited,
                &mut last.resets_rate_limited,
                now.resets_rate_limited,
            );
            advance(
                &self.live_map_failures,
                &mut last.live_map_failed,
                now.live_map_failed,
            );
            advance(&self.kept_records_written, &mut last.kept, now.kept);
            advance(
                &self.kept_map_failures,
                &mut last.kept_map_failed,
                now.kept_map_failed,
            );
            advance(
                &self.events_left_to_kept,
                &mut last.left_to_kept,
                now.left_to_kept,
            );
        }
        advance(
            &self.kept_records_taken,
            &mut handled.taken,
            h.kept_records.taken,
        );
        advance(
            &self.kept_records_reaped,
            &mut handled.reaped,
            h.kept_records.reaped,
        );
        drop(seen);
        let mut missed = self
            .last_missed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (program, now) in &h.runs_missed {
            let last = missed.entry(program.clone()).or_insert(0);
            let counter = self.runs_missed.with_label_values(&[program.as_str()]);
            advance(&counter, last, *now);
        }
        drop(missed);
        self.probes_attached.set(gauge_value(h.probes_attached));
        self.probes_total.set(gauge_value(h.probes_total));
        if let Some(n) = h.tracked_connections {
            self.tracked_connections.set(gauge_value(n));
        }
        self.terminations_in_progress
            .set(gauge_value(h.terminations_in_progress));
    }

    /// The number of open HTTP API connections.
    pub fn set_api_connections(&self, n: usize) {
        self.api_connections.set(gauge_value(n));
    }

    /// The HTTP API closed a connection.
    pub fn api_connection_closed(&self, why: Closed) {
        self.api_connections_closed
            .with_label_values(&[why.as_str()])
            .inc();
    }

    /// A report could not be written to `output` (`file` or `stdout`).
    pub fn report_write_failed(&self, output: &str) {
        self.report_write_failures
            .with_label_values(&[output])
            .inc();
    }

    /// A report was cut to size.
    pub fn report_truncated(&self) {
        self.reports_truncated.inc();
    }

    /// A report was shortened on stdout to fit one line.
    pub fn stdout_report_shortened(&self) {
        self.stdout_reports_shortened.inc();
    }

    /// Kubernetes mode: whether the API server answers the agent's watches.
    pub fn set_kubernetes_api_up(&self, up: bool) {
        let gauge = self.kubernetes_api_up.get_or_init(|| {
            Reg(&self.registry)
                .gauge(
                    "termscope_kubernetes_api_up",
                    "Kubernetes mode: 1 while the agent's watches on the API server work, 0 \
                     while they fail or have not listed yet (the agent is then not ready).",
                )
                .map_err(|e| e.to_string())
        });
        match gauge {
            Ok(g) => g.set(i64::from(up)),
            Err(e) => tracing::warn!(error = %e, "termscope_kubernetes_api_up"),
        }
    }

    /// The metrics in Prometheus' text exposition format (version 0.0.4).
    pub fn render(&self) -> Result<String, MetricsError> {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .map_err(MetricsError::Encode)
    }
}

/// Grows `counter` by what the kernel's counter grew since it was last seen. The kernel's
/// counters start at zero with the programs and only grow; should one go backwards (the
/// programs were reloaded), what it counted since is added.
fn advance(counter: &IntCounter, last: &mut u64, now: u64) {
    counter.inc_by(now.checked_sub(*last).unwrap_or(now));
    *last = now;
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Creates and registers metrics.
struct Reg<'a>(&'a Registry);

impl Reg<'_> {
    fn register<C: Collector + Clone + 'static>(
        &self,
        name: &str,
        made: prometheus::Result<C>,
    ) -> Result<C, MetricsError> {
        let register = |m: C| self.0.register(Box::new(m.clone())).map(|()| m);
        made.and_then(register)
            .map_err(|source| MetricsError::Register {
                name: name.to_string(),
                source,
            })
    }

    fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, MetricsError> {
        self.register(name, IntCounterVec::new(Opts::new(name, help), labels))
    }

    fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<HistogramVec, MetricsError> {
        self.histogram_vec_with(name, help, labels, SHUTDOWN_BUCKETS.to_vec())
    }

    fn histogram_vec_with(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: Vec<f64>,
    ) -> Result<HistogramVec, MetricsError> {
        let opts = HistogramOpts::new(name, help).buckets(buckets);
        self.register(name, HistogramVec::new(opts, labels))
    }

    fn counter(&self, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
        self.register(name, GenericCounter::new(name, help))
    }

    fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
        self.register(name, GenericGauge::new(name, help))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outputs::fixtures;

    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    fn has(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "missing line\n  {line}\nin\n{text}"
        );
    }

    #[test]
    fn outbound_cuts_and_idle_closes_have_their_own_series() {
        let m = Metrics::new(MetricsConfig::default()).expect("metrics");
        let mut r = fixtures::graceful();
        r.outbound_counts.reset_by_app = 3;
        r.outbound_counts.cut = 3;
        r.counts.closed_idle = 2;
        m.observe(&r);
        let text = m.render().expect("renders");
        let pod = format!("pod-{}", fixtures::POD_UID);
        let c = r#"container="3f2a9c1b2d4e""#;
        let w = format!(r#"workload="{pod}",workload_kind="""#);
        let ns = r#"namespace="""#;
        has(
            &text,
            &format!(
                r#"termscope_outbound_connections_cut_total{{{c},{ns},reason="reset_by_app",{w}}} 3"#
            ),
        );
        has(
            &text,
            &format!(
                r#"termscope_idle_connections_closed_total{{{c},direction="inbound",{ns},{w}}} 2"#
            ),
        );
        // The counter of the connections it served saw none of it.
        assert!(!text.contains("termscope_connections_cut_total{"), "{text}");
    }

    #[test]
    fn reports_are_counted_by_workload() {
        let m = Metrics::new(MetricsConfig::default()).expect("metrics");
        m.observe(&fixtures::no_handler());
        m.observe(&fixtures::no_handler());
        m.observe(&fixtures::killed());
        m.observe(&fixtures::graceful());
        let text = m.render().expect("renders");
        // Label pairs come sorted by name (`le` last).
        let pod = format!("pod-{}", fixtures::POD_UID);
        let c = r#"container="3f2a9c1b2d4e""#;
        let w = format!(r#"workload="{pod}",workload_kind="""#);
        let svc = r#"workload="app.service",workload_kind="""#;
        let ns = r#"namespace="""#;
        for line in [
            format!(r#"termscope_terminations_total{{{c},{ns},outcome="no_handler",{w}}} 2"#),
            format!(r#"termscope_terminations_total{{{c},{ns},outcome="graceful",{w}}} 1"#),
            format!(
                r#"termscope_terminations_total{{container="",{ns},outcome="killed",{svc}}} 1"#
            ),
            format!(r#"termscope_connections_cut_total{{{c},{ns},reason="closed_by_exit",{w}}} 4"#),
            format!(
                r#"termscope_connections_cut_total{{container="",{ns},reason="closed_by_exit",{svc}}} 2"#
            ),
            format!(
                r#"termscope_connections_cut_total{{container="",{ns},reason="refused",{svc}}} 1"#
            ),
            format!(r#"termscope_connections_reset_by_peer_total{{container="",{ns},{svc}}} 1"#),
            format!(
                r#"termscope_connections_accepted_after_stop_total{{container="",{ns},{svc}}} 1"#
            ),
            format!(
                r#"termscope_stop_signals_total{{{c},disposition="default",{ns},signal="SIGTERM",{w}}} 2"#
            ),
            format!(
                r#"termscope_stop_signals_total{{{c},disposition="handler",{ns},signal="SIGTERM",{w}}} 1"#
            ),
            format!(
                r#"termscope_stop_signals_total{{container="",disposition="handler",{ns},signal="SIGTERM",{svc}}} 1"#
            ),
            format!(
                r#"termscope_stop_signals_total{{container="",disposition="default",{ns},signal="SIGKILL",{svc}}} 1"#
            ),
            format!(r#"termscope_sigkill_escalations_total{{container="",{ns},{svc}}} 1"#),
            format!(
                r#"termscope_late_connections_total{{container="",kind="accepted",{ns},{svc}}} 1"#
            ),
            format!(
                r#"termscope_late_connections_total{{container="",kind="refused",{ns},{svc}}} 1"#
            ),
            format!(r#"termscope_late_traffic_delay_seconds_count{{container="",{ns},{svc}}} 1"#),
            // 2 ms, 2 ms, 250 ms.
            format!(r#"termscope_shutdown_duration_seconds_count{{{c},{ns},{w}}} 3"#),
            format!(r#"termscope_shutdown_duration_seconds_bucket{{{c},{ns},{w},le="0.01"}} 2"#),
            format!(r#"termscope_shutdown_duration_seconds_bucket{{{c},{ns},{w},le="0.1"}} 2"#),
            format!(r#"termscope_shutdown_duration_seconds_bucket{{{c},{ns},{w},le="0.25"}} 3"#),
            format!(
                r#"termscope_shutdown_duration_seconds_bucket{{container="",{ns},{svc},le="10"}} 0"#
            ),
            format!(
                r#"termscope_shutdown_duration_seconds_bucket{{container="",{ns},{svc},le="15"}} 1"#
            ),
            format!(r#"termscope_shutdown_duration_seconds_sum{{container="",{ns},{svc}}} 10.002"#),
        ] {
            has(&text, &line);
        }
        // Nothing counted that did not happen.
        assert!(!text.contains("reason=\"reset_by_app\""), "{text}");
        assert!(
            !text.contains(&format!("termscope_sigkill_escalations_total{{{c}")),
            "{text}"
        );
        assert!(!text.contains("pod=\""), "{text}");
    }

    #[test]
    fn pod_labels_are_opt_in() {
        let m = Metrics::new(MetricsConfig { pod_labels: true }).expect("metrics");
        m.observe(&fixtures::no_handler());
        m.observe(&fixtures::killed());
        let text = m.render().expect("renders");
        let pod = fixtures::POD_UID;
        has(
            &text,
            &format!(
                "termscope_terminations_total{{container=\"3f2a9c1b2d4e\",namespace=\"\",\
                 outcome=\"no_handler\",pod=\"{pod}\",workload=\"pod-{pod}\",\
                 workload_kind=\"\"}} 1"
            ),
        );
        // No pod: the label is there, empty.
        has(
            &text,
            "termscope_terminations_total{container=\"\",namespace=\"\",outcome=\"killed\",\
             pod=\"\",workload=\"app.service\",workload_kind=\"\"} 1",
        );
    }

    #[test]
    fn health_counters_grow_by_the_kernel_s_deltas() {
        let m = Metrics::new(MetricsConfig::default()).expect("metrics");
        let health = |lost, limited, tracked| Health {
            kernel: Some(KernelCounters {
                ringbuf_lost: lost,
                control_lost: 2,
                resets_rate_limited: limited,
                live_map_failed: 0,
                watch_map_failed: 1,
                kept: 10 * lost,
                kept_map_failed: lost / 2,
                left_to_kept: lost + limited,
            }),
            probes_attached: 5,
            probes_total: 6,
            tracked_connections: tracked,
            terminations_in_progress: 2,
            kept_records: KeptStats {
                taken: 5 * lost,
                reaped: lost - 1,
            },
            runs_missed: vec![("inet_sock_set_state_btf".to_string(), lost)],
        };
        m.set_health(&health(3, 10, Some(42)));
        m.set_health(&health(7, 10, None));
        m.add_events(100, 1);
        m.add_events(20, 0);
        let text = m.render().expect("renders");
        for line in [
            // Both rings: 7 TCP events and 2 control events.
            "termscope_events_lost_total 9",
            "termscope_control_events_lost_total 2",
            "termscope_watch_map_failures_total 1",
            "termscope_resets_rate_limited_total 10",
            "termscope_live_map_failures_total 0",
            // The kernel's records of watched connections, and what the agent did with them.
            "termscope_kept_records_written_total 70",
            "termscope_kept_map_failures_total 3",
            "termscope_events_left_to_kept_total 17",
            "termscope_kept_records_taken_total 35",
            "termscope_kept_records_reaped_total 6",
            "termscope_events_processed_total 120",
            "termscope_events_undecodable_total 1",
            "termscope_probes_attached 5",
            "termscope_probes_known 6",
            "termscope_tracked_connections 42",
            "termscope_terminations_in_progress 2",
            "termscope_kernel_runs_missed_total{program=\"inet_sock_set_state_btf\"} 7",
        ] {
            has(&text, line);
        }
        // Unreadable kernel counters leave the totals alone.
        m.set_health(&Health {
            kernel: None,
            ..health(7, 0, None)
        });
        let text = m.render().expect("renders");
        has(&text, "termscope_events_lost_total 9");
        has(&text, "termscope_kept_records_written_total 70");
        // The agent's totals are its own: they go on growing.
        m.set_health(&Health {
            kernel: None,
            ..health(9, 0, None)
        });
        let text = m.render().expect("renders");
        has(&text, "termscope_kept_records_written_total 70");
        has(&text, "termscope_kept_records_taken_total 45");
        // A program loaded again counts its skipped runs from 0: its 2 are added to the 9.
        m.set_health(&Health {
            kernel: None,
            runs_missed: vec![("inet_sock_set_state_btf".to_string(), 2)],
            ..health(9, 0, None)
        });
        has(
            &m.render().expect("renders"),
            "termscope_kernel_runs_missed_total{program=\"inet_sock_set_state_btf\"} 11",
        );
        has(&text, "termscope_kept_records_reaped_total 8");
        // And the API's and the log's series, at zero from the start.
        for line in [
            "termscope_api_connections 0",
            "termscope_api_connections_closed_total{reason=\"evicted\"} 0",
            "termscope_report_write_failures_total{output=\"file\"} 0",
            "termscope_reports_truncated_total 0",
            "termscope_stdout_reports_shortened_total 0",
        ] {
            has(&text, line);
        }
        // 9 health series, 3 of the kernel state and 1 of restarts, 5 of the kept records,
        // 1 of a program's skipped runs, 9 of the API and the log.
        assert_eq!(lines(&text).len(), 9 + 3 + 1 + 5 + 1 + 9, "{text}");
        assert!(!text.contains("termscope_kubernetes_api_up"), "standalone");
        m.set_kubernetes_api_up(false);
        m.set_kubernetes_api_up(true);
        has(
            &m.render().expect("renders"),
            "termscope_kubernetes_api_up 1",
        );
    }

    #[test]
    fn exposition_passes_promtool() {
        let promtool = std::path::Path::new("/usr/bin/promtool");
        let promtool = if promtool.exists() {
            promtool.to_path_buf()
        } else if let Some(p) = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("promtool"))
                .find(|p| p.exists())
        }) {
            p
        } else {
            let required = std::env::var("CI").is_ok_and(|v| v == "true")
                || std::env::var("TERMSCOPE_REQUIRE_KERNEL_TESTS").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "promtool is not installed (Debian: apt-get install prometheus)"
            );
            eprintln!("skipped: promtool is not installed (Debian: apt-get install prometheus)");
            return;
        };
        for cfg in [MetricsConfig::default(), MetricsConfig { pod_labels: true }] {
            let m = Metrics::new(cfg).expect("metrics");
            m.observe(&fixtures::no_handler());
            m.observe(&fixtures::killed());
            m.observe(&fixtures::graceful());
            m.set_health(&Health {
                kernel: Some(KernelCounters::default()),
                probes_attached: 6,
                probes_total: 6,
                tracked_connections: Some(3),
                terminations_in_progress: 0,
                kept_records: KeptStats {
                    taken: 4,
                    reaped: 1,
                },
                runs_missed: vec![("inet_sock_set_state_btf".to_string(), 1)],
            });
            m.add_events(10, 0);
            let text = m.render().expect("renders");
            let out = run_with_stdin(&promtool, &["check", "metrics"], &text);
            assert!(
                out.status.success(),
                "promtool check metrics failed:\n{}{}\n--- exposition:\n{text}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    fn run_with_stdin(
        program: &std::path::Path,
        args: &[&str],
        input: &str,
    ) -> std::process::Output {
        use std::{io::Write, process::Stdio};
        let mut child = std::process::Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool starts");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("writes to promtool");
        child.wait_with_output().expect("promtool runs")
    }
}
