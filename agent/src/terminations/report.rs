//! The termination report: one record per stopped container, versioned and documented in
//! `docs/report.md`. Plain data; the engine in [`super`] fills it.

use std::net::SocketAddr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::kube::pod::PreStop;

pub use super::flag::Flag;
pub use super::kinds::{ExitHow, HookKind, OpenedBy, StepKind};
use crate::decode::Disposition;
pub use crate::decode::SignalResult;
pub use crate::signal::Signal;

/// Version of the report schema. Bump on any incompatible change.
pub const SCHEMA: &str = "termscope/termination/v3";

/// How a termination ended, most telling first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Exited on its own after the stop signal, nothing cut.
    Graceful,
    /// Exited after the stop signal, but connections were cut.
    Cut,
    /// SIGKILL ended it: the grace period ran out (or it was killed outright).
    Killed,
    /// The stop signal's default action killed it at once: the app has no handler.
    NoHandler,
    /// The stop signal was ignored (`SIG_IGN`) and nothing else ended it.
    Ignored,
    /// The processes did not exit (e.g. uWSGI reloads on SIGTERM instead of exiting).
    Survived,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Graceful,
        Outcome::Cut,
        Outcome::Killed,
        Outcome::NoHandler,
        Outcome::Ignored,
        Outcome::Survived,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Graceful => "graceful",
            Outcome::Cut => "cut",
            Outcome::Killed => "killed",
            Outcome::NoHandler => "no_handler",
            Outcome::Ignored => "ignored",
            Outcome::Survived => "survived",
        }
    }
}

/// What happened to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Closed by an orderly FIN exchange, no reset either way.
    Completed,
    /// The container sent a reset while alive (close with unread data, `SO_LINGER 0`).
    ResetByApp,
    /// The kernel closed it because the owning process died (RST or FIN) while the peer was
    /// waiting for something: a request unread or unanswered (or it could not be told).
    ClosedByExit,
    /// The container closed it in order (FIN, while alive) over a request it had read and
    /// never answered: its client got an end of stream instead of the answer.
    ClosedUnanswered,
    /// Closed by the container (its exit, or a reset) while idle: the peer's last request was
    /// answered. Not a cut; costs the peer a reconnect (a keep-alive risk).
    ClosedIdle,
    /// The peer had closed first (its FIN came before ours, the socket was in CLOSE_WAIT)
    /// and nothing of its was left unanswered: it said goodbye, nothing was lost.
    PeerClosedFirst,
    /// A reset came from the peer.
    ResetByPeer,
    /// A SYN to the container's address and port after its listener closed, answered by RST.
    Refused,
    /// Still open when the report was made (the processes survived).
    Open,
}

impl Verdict {
    pub const ALL: [Verdict; 9] = [
        Verdict::Completed,
        Verdict::ResetByApp,
        Verdict::ClosedByExit,
        Verdict::ClosedUnanswered,
        Verdict::ClosedIdle,
        Verdict::PeerClosedFirst,
        Verdict::ResetByPeer,
        Verdict::Refused,
        Verdict::Open,
    ];

    /// Whether this verdict means the container cut the connection.
    pub fn is_cut(self) -> bool {
        matches!(
            self,
            Verdict::ResetByApp
                | Verdict::ClosedByExit
                | Verdict::ClosedUnanswered
                | Verdict::Refused
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Completed => "completed",
            Verdict::ResetByApp => "reset_by_app",
            Verdict::ClosedByExit => "closed_by_exit",
            Verdict::ClosedUnanswered => "closed_unanswered",
            Verdict::ClosedIdle => "closed_idle",
            Verdict::PeerClosedFirst => "peer_closed_first",
            Verdict::ResetByPeer => "reset_by_peer",
            Verdict::Refused => "refused",
            Verdict::Open => "open",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
    Unknown,
}

/// A process as the report names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proc {
    pub pid: u32,
    pub comm: String,
}

/// One connection of the container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub direction: Direction,
    pub verdict: Verdict,
    /// Established after the termination began: new traffic that still reached the
    /// container (a risk, not a cut by itself).
    pub accepted_late: bool,
    /// For late connections and refusals: how long after the first stop signal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::clock::serde_rfc3339::option"
    )]
    pub established_at: Option<Timestamp>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::clock::serde_rfc3339::option"
    )]
    pub closed_at: Option<Timestamp>,
    /// The kernel's reason for a reset it sent (`tcp_abort_on_close`, `no_socket`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset_reason: Option<String>,
    /// The process whose exit closed it (`closed_by_exit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<Proc>,
    /// What was in flight when the container closed it (absent when the kernel could not
    /// read it, or the peer closed it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<crate::terminations::activity::InFlight>,
    /// Shown, but not a client's: not in `counts` nor `outbound_counts` (see
    /// [`Internal`]); counted in `internal_counts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal: Option<Internal>,
}

/// Why a connection is not counted as a client's or an upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Internal {
    /// Both ends on loopback, the other end in the same container or pod (a sidecar proxy
    /// to the app): counted once, where it reaches the outside, not twice.
    Loopback,
    /// Kubernetes: kubelet's own request of the container's httpGet preStop hook.
    PreStopHook,
}

impl Internal {
    pub fn as_str(self) -> &'static str {
        match self {
            Internal::Loopback => "loopback",
            Internal::PreStopHook => "pre_stop_hook",
        }
    }
}

/// One stop signal sent to the container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopSignal {
    #[serde(with = "crate::clock::serde_rfc3339")]
    pub at: Timestamp,
    pub t_ms: f64,
    /// In JSON its name (`SIGTERM`).
    pub signal: Signal,
    pub sender: Proc,
    /// The sender's cgroup path, when known (`/system.slice/containerd.service`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_cgroup: Option<String>,
    pub target: Proc,
    /// What the kernel did with it (`delivered`, `ignored`, `already_pending`, ...).
    pub result: SignalResult,
    /// From inside the container (not a trigger).
    pub internal: bool,
    /// Kubernetes: sent to a process of the container's exec preStop hook (kubelet's timeout
    /// of the hook), not to the workload: not a trigger either.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pre_stop_hook: bool,
}

/// A timeline entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Milliseconds since the first stop signal (negative: before it).
    pub t_ms: f64,
    #[serde(with = "crate::clock::serde_rfc3339")]
    pub at: Timestamp,
    /// What happened (`docs/report.md`, "Timeline steps").
    pub what: StepKind,
    pub detail: String,
}

/// Counts per verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub completed: u32,
    pub reset_by_app: u32,
    pub closed_by_exit: u32,
    #[serde(default)]
    pub closed_unanswered: u32,
    #[serde(default)]
    pub closed_idle: u32,
    #[serde(default)]
    pub peer_closed_first: u32,
    pub reset_by_peer: u32,
    pub refused: u32,
    pub open: u32,
    pub accepted_late: u32,
    /// `reset_by_app + closed_by_exit + closed_unanswered + refused`.
    pub cut: u32,
}

impl Counts {
    pub fn add(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Completed => self.completed += 1,
            Verdict::ResetByApp => self.reset_by_app += 1,
            Verdict::ClosedByExit => self.closed_by_exit += 1,
            Verdict::ClosedUnanswered => self.closed_unanswered += 1,
            Verdict::ClosedIdle => self.closed_idle += 1,
            Verdict::PeerClosedFirst => self.peer_closed_first += 1,
            Verdict::ResetByPeer => self.reset_by_peer += 1,
            Verdict::Refused => self.refused += 1,
            Verdict::Open => self.open += 1,
        }
        if verdict.is_cut() {
            self.cut += 1;
        }
    }

    /// Adds `other`'s counts to these (a pod's containers).
    pub fn merge(&mut self, other: &Counts) {
        self.completed += other.completed;
        self.reset_by_app += other.reset_by_app;
        self.closed_by_exit += other.closed_by_exit;
        self.closed_unanswered += other.closed_unanswered;
        self.closed_idle += other.closed_idle;
        self.peer_closed_first += other.peer_closed_first;
        self.reset_by_peer += other.reset_by_peer;
        self.refused += other.refused;
        self.open += other.open;
        self.accepted_late += other.accepted_late;
        self.cut += other.cut;
    }

    pub fn get(&self, verdict: Verdict) -> u32 {
        match verdict {
            Verdict::Completed => self.completed,
            Verdict::ResetByApp => self.reset_by_app,
            Verdict::ClosedByExit => self.closed_by_exit,
            Verdict::ClosedUnanswered => self.closed_unanswered,
            Verdict::ClosedIdle => self.closed_idle,
            Verdict::PeerClosedFirst => self.peer_closed_first,
            Verdict::ResetByPeer => self.reset_by_peer,
            Verdict::Refused => self.refused,
            Verdict::Open => self.open,
        }
    }
}

/// Who was stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub cgroup_id: u64,
    pub cgroup_path: String,
    /// A short human label (`containerd:3f2a9c1b2d4e`, `nginx.service`, a path).
    pub label: String,
    pub runtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Metric labels: namespace (Kubernetes, else empty), workload, container.
    pub namespace: String,
    pub workload: String,
    pub container: String,
    /// Kubernetes: the workload's kind (Deployment, StatefulSet, ...) and the pod's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The main process (target of the first stop signal).
    pub main: Proc,
}

/// One termination of one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TerminationReport {
    pub schema: String,
    pub id: String,
    /// What began it: the first stop signal from outside, the pod's deletion (Kubernetes,
    /// observed before any stop signal), or the kernel's watch of the container. Absent in
    /// reports older than the field: a stop signal.
    #[serde(default)]
    pub opened_by: OpenedBy,
    /// The first stop signal from outside, if one came.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::clock::serde_rfc3339::option"
    )]
    pub stop_signal_at: Option<Timestamp>,
    /// What Kubernetes says about the container's pod, when the agent watches the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<Box<KubeFacts>>,
    pub node: String,
    pub subject: Subject,
    pub outcome: Outcome,
    /// Every condition that holds ([`Flag`]; in JSON the snake_case names of
    /// `docs/report.md`).
    pub flags: Vec<Flag>,
    /// Sentences a person can act on.
    pub summary: Vec<String>,
    #[serde(with = "crate::clock::serde_rfc3339")]
    pub started_at: Timestamp,
    #[serde(with = "crate::clock::serde_rfc3339")]
    pub ended_at: Timestamp,
    /// First stop signal to the last process's exit (or to the report, if it survived).
    pub shutdown_ms: f64,
    pub stop_signals: Vec<StopSignal>,
    pub timeline: Vec<Step>,
    /// The connections the container served (inbound, and those of unknown direction on one
    /// of its listening ports or with no listener known): the outcome and the alerts follow
    /// these.
    pub counts: Counts,
    /// The container's own outbound connections (its upstreams, connection pools).
    #[serde(default)]
    pub outbound_counts: Counts,
    /// Connections shown but not counted above: between the container and another of its
    /// pod over loopback, kubelet's httpGet preStop hook request.
    #[serde(default)]
    pub internal_counts: Counts,
    /// Bounded; `connections_omitted` says how many were left out.
    pub connections: Vec<Connection>,
    pub connections_omitted: u32,
    pub exits: Vec<Exit>,
    /// Present when the report may miss something: events of this container were lost while
    /// it was collected, its stop signal never reached the agent, or connections could not be
    /// tracked. The flag `incomplete`
    /// goes with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<Incomplete>,
    /// Runs of termscope's kernel programs the kernel skipped on this node while the report
    /// was collected (a run nested in another on one CPU): each a state change, signal or exit
    /// never seen, of a container the kernel does not name — perhaps this one's, perhaps not,
    /// so not `incomplete`. Counted from when the agent opened the termination (after a
    /// restart: from when the new agent loaded its programs); 0 where the kernel keeps no
    /// count (before 5.11, `termscope doctor`: `feature: skipped runs`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub kernel_runs_skipped: u64,
    /// Timeline steps the engine already left out (in words, as `outputs::bound` says it): a
    /// termination of many connections never builds its whole timeline. Not serialised: the
    /// report says it through its `omitted` step, flag and summary.
    #[serde(skip)]
    pub timeline_left_out: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a report may miss (see [`TerminationReport::incomplete`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incomplete {
    /// Events of this container that the kernel could not hand to the agent (a ring buffer
    /// was full) while the termination was being collected: the kernel's own count.
    pub events_lost: u64,
    /// The stop signal that began the termination never reached the agent: the termination
    /// was opened from the kernel's watch of the container (`opened_by: kernel_watch`).
    #[serde(default)]
    pub stop_signal_missed: bool,
    /// Connections of this container the kernel could not keep in its live-connection map
    /// (it was full, see `--max-live-connections`) while the termination was being
    /// collected: they are in the report only if they changed state during it.
    #[serde(default)]
    pub connections_untracked: u64,
}

/// A process that exited during the termination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    #[serde(with = "crate::clock::serde_rfc3339")]
    pub at: Timestamp,
    pub pid: u32,
    pub comm: String,
    /// `exited` or `signaled` (`unknown` when the kernel's exit code could not be read).
    pub how: ExitHow,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal that killed it (`signaled`); in JSON its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<Signal>,
}

/// What a process did with a stop signal, as far as the report tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalDisposition {
    /// Its own handler took the signal.
    Handler,
    /// The default action took over (for a stop signal: the process was killed).
    Default,
    /// `SIG_IGN`, or the kernel dropped the signal as ignored.
    Ignored,
    /// Not seen (no delivery recorded, e.g. the signal was still pending or blocked).
    Unknown,
}

impl SignalDisposition {
    pub const ALL: [SignalDisposition; 4] = [
        SignalDisposition::Handler,
        SignalDisposition::Default,
        SignalDisposition::Ignored,
        SignalDisposition::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SignalDisposition::Handler => "handler",
            SignalDisposition::Default => "default",
            SignalDisposition::Ignored => "ignored",
            SignalDisposition::Unknown => "unknown",
        }
    }
}

impl From<Disposition> for SignalDisposition {
    fn from(d: Disposition) -> Self {
        match d {
            Disposition::Handler => SignalDisposition::Handler,
            Disposition::Default => SignalDisposition::Default,
            Disposition::Ignored => SignalDisposition::Ignored,
        }
    }
}

impl TerminationReport {
    /// Whether the report carries `flag`.
    pub fn has_flag(&self, flag: Flag) -> bool {
        self.flags.contains(&flag)
    }

    /// Adds `flag` unless the report carries it already.
    pub fn add_flag(&mut self, flag: Flag) {
        super::flag::add(&mut self.flags, flag);
    }

    /// The stop signals sent from outside the container (the triggers), in order.
    pub fn external_signals(&self) -> impl Iterator<Item = &StopSignal> {
        self.stop_signals
            .iter()
            .filter(|s| !s.internal && !s.pre_stop_hook)
    }

    /// SIGKILL ended it after a different first stop signal: the grace period ran out.
    pub fn sigkill_escalation(&self) -> bool {
        self.has_flag(Flag::Killed) && self.stop_signals.iter().any(|s| s.signal != Signal::KILL)
    }

    /// What the target process did with stop signal `s`, read from the timeline's
    /// `handler` / `default_action` / `ignored` steps for that process. A fatal default
    /// action shows up as the delivery of SIGKILL: it is counted for the signal it followed.
    pub fn disposition_of(&self, s: &StopSignal) -> SignalDisposition {
        let marker = format!("(pid {}): ", s.target.pid);
        fn of_target<'a>(step: &'a Step, marker: &str) -> Option<&'a str> {
            step.detail
                .find(marker)
                .map(|i| &step.detail[i + marker.len()..])
        }
        let sig = s.signal;
        for step in &self.timeline {
            let Some(rest) = of_target(step, &marker) else {
                continue;
            };
            let disposition = match step.what {
                StepKind::Handler => Disposition::Handler,
                StepKind::Ignored => Disposition::Ignored,
                // SIGKILL's default action is the fatal one, counted below.
                StepKind::DefaultAction if sig != Signal::KILL => Disposition::Default,
                _ => continue,
            };
            if rest == delivery_words(disposition, sig) {
                return disposition.into();
            }
        }
        // A fatal default action between this signal and the next one to the same process.
        let next = self
            .external_signals()
            .filter(|o| o.target.pid == s.target.pid && o.t_ms > s.t_ms)
            .map(|o| o.t_ms)
            .fold(f64::INFINITY, f64::min);
        let fatal_words = delivery_words(Disposition::Default, Signal::KILL);
        let fatal = self.timeline.iter().any(|step| {
            step.what == StepKind::DefaultAction
                && step.t_ms >= s.t_ms
                && step.t_ms < next
                && of_target(step, &marker) == Some(fatal_words.as_str())
        });
        if fatal {
            SignalDisposition::Default
        } else if s.result == SignalResult::Ignored {
            SignalDisposition::Ignored
        } else {
            SignalDisposition::Unknown
        }
    }

    /// When the termination began, in Unix-epoch nanoseconds.
    pub fn started_unix_ns(&self) -> u64 {
        crate::clock::unix_ns(self.started_at)
    }
}

/// What a `handler` / `default_action` / `ignored` step says of a signal's delivery to a
/// process, after `comm (pid N): `. The engine writes these words, and
/// [`TerminationReport::disposition_of`] reads them back from a report.
pub(crate) fn delivery_words(disposition: Disposition, signal: Signal) -> String {
    match disposition {
        Disposition::Handler => format!("its own handler took {signal}"),
        // A fatal default action shows up as SIGKILL's delivery: the kernel turns it into a
        // group exit.
        Disposition::Default if signal == Signal::KILL => {
            "a fatal signal: the kernel ends the whole process".into()
        }
        Disposition::Default => format!("the default action of {signal} took over"),
        Disposition::Ignored => format!("ignored {signal}"),
    }
}

// Kubernetes: what the API says about a container's pod, and what was measured against it
// (filled by `super::kube`).
/// Inbound traffic that still arrived, measured from one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LateTraffic {
    /// New connections accepted after the moment.
    pub accepted: u32,
    /// Connection attempts refused after the moment (the listener was gone).
    pub refused: u32,
    /// The latest of them, in ms after the moment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_delay_ms: Option<f64>,
}

/// A container's preStop hook as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreStopHook {
    /// `exec`, `http_get`, `sleep`, `tcp_socket`.
    pub kind: HookKind,
    /// The command, URL path or seconds.
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sleep_seconds: Option<i64>,
}

impl PreStopHook {
    pub(crate) fn from_pre_stop(p: &PreStop) -> Self {
        match p {
            PreStop::Exec { command } => PreStopHook {
                kind: HookKind::Exec,
                detail: command.join(" "),
                sleep_seconds: None,
            },
            PreStop::HttpGet { path, port, .. } => PreStopHook {
                kind: HookKind::HttpGet,
                detail: format!(":{port}{}", path.as_deref().unwrap_or("/")),
                sleep_seconds: None,
            },
            PreStop::Sleep { seconds } => PreStopHook {
                kind: HookKind::Sleep,
                detail: format!("{seconds} s"),
                sleep_seconds: Some(*seconds),
            },
            PreStop::TcpSocket { port } => PreStopHook {
                kind: HookKind::TcpSocket,
                detail: format!(":{port}"),
                sleep_seconds: None,
            },
        }
    }
}

/// What Kubernetes says about a termination, and what was measured against it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KubeFacts {
    pub pod: String,
    pub pod_uid: String,
    pub namespace: String,
    pub workload: String,
    pub workload_kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The grace period the deletion used (`deletionGracePeriodSeconds`, else the spec's).
    pub grace_period_seconds: i64,
    /// When the deletion reached the API server (`deletionTimestamp - deletionGracePeriodSeconds`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_requested_at: Option<String>,
    /// When this agent saw the deletion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_observed_at: Option<String>,
    /// `deletionTimestamp`: the deadline after which the pod is killed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// When the pod's endpoints were first seen not ready, terminating, and gone (as
    /// observed by this agent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints_not_ready_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints_terminating_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints_removed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_stop: Option<PreStopHook>,
    /// From the deletion (as observed by this agent, else as requested) to the first stop
    /// signal: kubelet runs the preStop hook in between.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_to_stop_signal_ms: Option<f64>,
    /// Shutdown duration (first stop signal to last exit) over the grace period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_used_ratio: Option<f64>,
    /// Traffic after the first stop signal.
    pub late_after_stop_signal: LateTraffic,
    /// Traffic after the endpoints turned not ready / terminating.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late_after_endpoints: Option<LateTraffic>,
}
