//! Loading and attaching the kernel programs, and talking to their maps.
//!
//! Every probe is attached on its own: one that cannot be attached on this kernel is turned
//! off with its reason (see [`ProbeStatus`]) and the rest keep running. Offsets come from the
//! running kernel's BTF ([`btf`]) and tracefs ([`tracefs`]), resolved in [`offsets`].

pub mod batch;
pub mod btf;
pub mod est_log;
pub mod offsets;
pub mod pin;
pub mod prog_info;
pub mod tracefs;

use std::{
    os::fd::{AsFd, AsRawFd},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        BtfTracePoint, Iter, TracePoint, tp_btf::BtfTracePointLinkId, trace_point::TracePointLinkId,
    },
};
use serde::Serialize;
use termscope_common::{
    CgroupStats, Config, KeptConn, LiveConn, OFFSET_MISSING, WatchEntry, counter, feature, names,
    watch_hint, watch_reason,
};
use tokio::io::unix::AsyncFd;

use crate::{
    decode::{DecodeError, Decoder, Event},
    signal::Signal,
};
use offsets::{ResolvedKernel, ResolvedTracepoints, Unresolved};

/// The size of `EST_LOG`: a ring of `est_log::PER_CPU` entries per possible CPU.
fn est_log_entries() -> u32 {
    let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1)) as u32;
    cpus.saturating_mul(termscope_common::est_log::PER_CPU)
}

/// The kernel programs, built by `agent/build.rs` from `agent-ebpf`.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/termscope-probes"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("the ring buffer has already been taken")]
    RingBufferTaken,
    #[error("registering the ring buffer with the event loop failed: {0}")]
    Poll(#[source] std::io::Error),
    #[error("pinning the kernel maps: {0}")]
    Pin(#[source] pin::PinError),
    #[error("map {name}: {source}")]
    Batch {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("program {program}: {reason}")]
    Attach {
        program: &'static str,
        reason: String,
    },
}

/// How a probe is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachPoint {
    TracePoint {
        category: &'static str,
        name: &'static str,
    },
    BtfTracePoint {
        name: &'static str,
    },
}

impl std::fmt::Display for AttachPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachPoint::TracePoint { category, name } => write!(f, "tracepoint/{category}/{name}"),
            AttachPoint::BtfTracePoint { name } => write!(f, "tp_btf/{name}"),
        }
    }
}

/// A probe the agent knows.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSpec {
    /// Program name in the object.
    pub program: &'static str,
    pub attach: AttachPoint,
    /// What it gives the agent, for `doctor`.
    pub purpose: &'static str,
    /// Tracepoint fields without which the program is useless (`category/name:field`).
    pub required_fields: &'static [&'static str],
    /// Feature bits it needs for its attribution; without them it runs degraded.
    pub wanted_features: u64,
}

/// Every probe, in the order they are attached.
pub const PROBES: &[ProbeSpec] = &[
    ProbeSpec {
        program: "signal_generate",
        attach: AttachPoint::BtfTracePoint {
            name: "signal_generate",
        },
        purpose: "stop signals: sender, target task and its cgroup, result",
        required_fields: &[],
        wanted_features: feature::TASK_CGROUP | feature::TASK_IDS | feature::TASK_NETNS,
    },
    ProbeSpec {
        program: "signal_deliver",
        attach: AttachPoint::TracePoint {
            category: "signal",
            name: "signal_deliver",
        },
        purpose: "what the target did with a stop signal: default action, ignored, own handler",
        required_fields: &[
            "signal/signal_deliver:sig",
            "signal/signal_deliver:sa_handler",
        ],
        wanted_features: 0,
    },
    ProbeSpec {
        program: "sched_process_exit",
        attach: AttachPoint::TracePoint {
            category: "sched",
            name: "sched_process_exit",
        },
        purpose: "process exits with exit code or killing signal",
        required_fields: &[],
        wanted_features: feature::TASK_EXIT,
    },
    ProbeSpec {
        program: "sched_process_exec",
        attach: AttachPoint::TracePoint {
            category: "sched",
            name: "sched_process_exec",
        },
        purpose: "programs started in a watched container (exec preStop hooks)",
        required_fields: &[],
        wanted_features: 0,
    },
    ProbeSpec {
        program: "inet_sock_set_state",
        attach: AttachPoint::TracePoint {
            category: "sock",
            name: "inet_sock_set_state",
        },
        purpose: "TCP state changes per socket cgroup; watched containers' connections kept in the kernel",
        required_fields: &[
            "sock/inet_sock_set_state:skaddr",
            "sock/inet_sock_set_state:oldstate",
            "sock/inet_sock_set_state:newstate",
            "sock/inet_sock_set_state:protocol",
            "sock/inet_sock_set_state:family",
        ],
        wanted_features: feature::SOCK_CGROUP | feature::TASK_EXIT | feature::SOCK_ACTIVITY,
    },
    ProbeSpec {
        program: "tcp_send_reset",
        attach: AttachPoint::TracePoint {
            category: "tcp",
            name: "tcp_send_reset",
        },
        purpose: "resets sent, with the kernel's reason, including for SYNs to closed ports",
        required_fields: &[
            "tcp/tcp_send_reset:skaddr",
            "tcp/tcp_send_reset:state",
            "tcp/tcp_send_reset:saddr",
            "tcp/tcp_send_reset:daddr",
        ],
        wanted_features: feature::SOCK_CGROUP | feature::SKB_NETNS,
    },
    ProbeSpec {
        program: "tcp_receive_reset",
        attach: AttachPoint::TracePoint {
            category: "tcp",
            name: "tcp_receive_reset",
        },
        purpose: "resets received",
        required_fields: &["tcp/tcp_receive_reset:skaddr"],
        wanted_features: feature::SOCK_CGROUP,
    },
    ProbeSpec {
        program: KFREE_SKB,
        attach: AttachPoint::TracePoint {
            category: "skb",
            name: "kfree_skb",
        },
        purpose: "refusals (a SYN to a port with no listener) on kernels before 6.8, where \
                  tcp_send_reset does not see them",
        required_fields: &["skb/kfree_skb:skbaddr", "skb/kfree_skb:protocol"],
        wanted_features: feature::SKB_NETNS,
    },
];

/// The program that sees refusals where `tcp_send_reset` cannot.
pub const KFREE_SKB: &str = "kfree_skb";

/// The hot probe: its entry in [`PROBES`] is the tracepoint program, which reads the
/// tracepoint's record; where the kernel allows it, [`HOT_PROBE_BTF`] is attached instead.
pub const HOT_PROBE: &str = "inet_sock_set_state";

/// The hot probe as a BTF tracepoint: the socket and both states are its arguments (no record
/// is built for it, nor read), the protocol and addresses come from the socket. Preferred;
/// chosen at load time when the kernel has the BTF tracepoint and the socket members it
/// reads, and the load and attach succeed.
pub const HOT_PROBE_BTF: ProbeSpec = ProbeSpec {
    program: "inet_sock_set_state_btf",
    attach: AttachPoint::BtfTracePoint {
        name: "inet_sock_set_state",
    },
    purpose: "TCP state changes per socket cgroup; watched containers' connections kept in the kernel",
    required_fields: &[],
    wanted_features: feature::SOCK_CGROUP | feature::TASK_EXIT | feature::SOCK_ACTIVITY,
};

/// Where a probe stands after loading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum ProbeState {
    Attached,
    /// Not attached because another probe gives what it would on this kernel.
    NotNeeded(String),
    /// Not attempted: something it needs is missing on this kernel.
    Disabled(String),
    /// Attempted and refused by the kernel.
    Failed(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    pub program: &'static str,
    pub attach_point: String,
    pub purpose: &'static str,
    #[serde(flatten)]
    pub state: ProbeState,
    /// Attached, but with these pieces missing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub degraded: Vec<String>,
}

/// What the agent asks of the kernel programs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Send every event of every cgroup to userspace (debugging and tests; costly on a busy
    /// node).
    pub watch_all: bool,
    /// Signals that count as stop signals.
    pub stop_signals: Vec<Signal>,
    /// Resets with no socket from unwatched network namespaces sent to userspace, per CPU per
    /// second.
    pub unowned_reset_rate: u32,
    /// Size in bytes of the TCP events' ring buffer (a power of two, multiple of the page
    /// size).
    pub ring_buffer_bytes: u32,
    /// Size in bytes of the control events' ring buffer (signals, exits, execs; same rules).
    pub control_ring_bytes: u32,
    /// Capacity of the kernel's live-connection map (preallocated: about 130 bytes of
    /// kernel memory each). When it is full, further connections are counted and flagged in
    /// their reports, never dropped silently.
    pub max_live_connections: u32,
    /// Capacity of `KEPT_CONNS`, what the kernel keeps of watched cgroups' connections until
    /// the agent takes it (preallocated: about 190 bytes of kernel memory each, 24 MiB at the
    /// default). The agent takes the records every 50 ms; it must hold the closes of a
    /// container killed at once while the agent is busy opening its termination (100,000 in
    /// ~1 s on a 2-CPU node: 65,536 overflowed there). When the map is full a change goes
    /// through the TCP ring instead (and counts as lost if the ring cannot take it either).
    pub max_kept_connections: u32,
    /// A bpffs directory where the maps that outlive the agent are pinned and found again
    /// at the next start ([`PINNED`]); `None`: nothing is pinned.
    pub pin_dir: Option<std::path::PathBuf>,
    /// Attach the hot probe's tracepoint program even where its BTF tracepoint
    /// ([`HOT_PROBE_BTF`]) would do: to measure or test the fallback.
    pub tracepoint_hot_probe: bool,
    /// Send every state change of a watched connection through the TCP ring as it happens
    /// (tests and diagnostics that follow each change). Off (the agent): the kernel keeps
    /// what a report needs of each connection in its `KEPT_CONNS` record, taken with
    /// [`Probes::take_kept`], and sends no event for it; the changes no report needs (the
    /// peer's FIN, the waits after a close) are not looked at.
    pub stream_states: bool,
}

/// The maps pinned under [`LoadOptions::pin_dir`]: what the kernel knows that a restarted
/// agent needs — the watches, the live connections and their id counter (so ids carry over),
/// the listeners, the per-cgroup counts (lost events). The rings and the agent-wide counters
/// start afresh.
pub const PINNED: [&str; 9] = [
    names::WATCHED,
    names::WATCHED_NETNS,
    names::LIVE_CONNS,
    names::KEPT_CONNS,
    "RECENTLY_CLOSED",
    names::CGROUP_STATS,
    "LISTEN_PORTS",
    "NEXT_CONN_ID",
    names::WATCH_HINT,
];

/// Signals that stop services: HUP, INT, QUIT, KILL, USR1, USR2, TERM, WINCH (Apache's graceful
/// stop), PWR.
pub const DEFAULT_STOP_SIGNALS: [Signal; 9] = [
    Signal::HUP,
    Signal::INT,
    Signal::QUIT,
    Signal::KILL,
    Signal::USR1,
    Signal::USR2,
    Signal::TERM,
    Signal::WINCH,
    Signal::PWR,
];

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            watch_all: false,
            stop_signals: DEFAULT_STOP_SIGNALS.to_vec(),
            unowned_reset_rate: 200,
            ring_buffer_bytes: 1 << 22,
            control_ring_bytes: 1 << 18,
            max_live_connections: 262_144,
            max_kept_connections: 131_072,
            pin_dir: None,
            tracepoint_hot_probe: false,
            stream_states: false,
        }
    }
}

/// The bits of a stop-signal mask.
pub fn signal_mask(signals: &[Signal]) -> u64 {
    signals
        .iter()
        .map(|s| s.number())
        .filter(|s| (1..64).contains(s))
        .fold(0, |m, s| m | (1u64 << s))
}

/// What this kernel offers, resolved before loading.
#[derive(Debug, Clone)]
pub struct KernelSupport {
    pub btf: Result<(), String>,
    pub tracefs: Result<String, String>,
    pub kernel: Option<ResolvedKernel>,
    pub tracepoints: Option<ResolvedTracepoints>,
    /// `btf_trace_<name>` typedefs present: BTF tracepoints this kernel has.
    pub btf_tracepoints: Vec<&'static str>,
    pub reset_reasons: Vec<(String, i64)>,
}

impl KernelSupport {
    /// Resolves offsets from `/sys/kernel/btf/vmlinux` and tracefs (mounting it if needed).
    pub fn probe() -> Self {
        let btf = btf::Btf::from_file(btf::Btf::VMLINUX);
        let tracefs = tracefs::Tracefs::find_or_mount();
        let mut support = KernelSupport {
            btf: btf.as_ref().map(|_| ()).map_err(|e| e.to_string()),
            tracefs: tracefs
                .as_ref()
                .map(|t| t.root().display().to_string())
                .map_err(|e| e.to_string()),
            kernel: None,
            tracepoints: None,
            btf_tracepoints: Vec::new(),
            reset_reasons: Vec::new(),
        };
        if let Ok(btf) = &btf {
            support.kernel = Some(offsets::resolve_kernel(btf));
            support.btf_tracepoints = PROBES
                .iter()
                .chain([&HOT_PROBE_BTF])
                .filter_map(|p| match p.attach {
                    AttachPoint::BtfTracePoint { name } => btf
                        .has_typedef(&format!("btf_trace_{name}"))
                        .then_some(name),
                    AttachPoint::TracePoint { .. } => None,
                })
                .collect();
            support.reset_reasons = btf.enum_values("sk_rst_reason").unwrap_or_default();
        }
        if let Ok(tracefs) = &tracefs {
            support.tracepoints = Some(offsets::resolve_tracepoints_from(tracefs));
        }
        support
    }

    /// Everything that could not be resolved.
    pub fn unresolved(&self) -> Vec<&Unresolved> {
        let k = self.kernel.iter().flat_map(|k| k.unresolved.iter());
        let t = self.tracepoints.iter().flat_map(|t| t.unresolved.iter());
        k.chain(t).collect()
    }

    fn features(&self) -> u64 {
        self.kernel.as_ref().map_or(0, |k| k.features)
    }

    fn config(&self, opts: &LoadOptions) -> Config {
        let mut config = Config::EMPTY;
        if let Some(k) = &self.kernel {
            config.kernel = k.offsets;
            config.activity = k.activity;
            config.features = k.features;
        }
        if let Some(t) = &self.tracepoints {
            config.tracepoints = t.offsets;
            config.legacy = t.legacy;
        }
        if let Some(k) = &self.kernel {
            config.legacy.skb_head = k.legacy.skb_head;
            config.legacy.skb_data = k.legacy.skb_data;
            config.legacy.skb_network_header = k.legacy.skb_network_header;
            config.legacy.skb_transport_header = k.legacy.skb_transport_header;
            config.legacy.drop_reason_no_socket = k.legacy.drop_reason_no_socket;
        }
        config.stop_signal_mask = signal_mask(&opts.stop_signals);
        config.watch_all = u32::from(opts.watch_all);
        config.stream_states = u32::from(opts.stream_states);
        config.unowned_reset_rate = opts.unowned_reset_rate;
        config
    }

    /// Whether `tcp_send_reset` has the pre-6.8 layout, where it never fires without a socket
    /// (so refusals are seen at `skb:kfree_skb`).
    pub fn legacy_send_reset(&self) -> bool {
        self.tracepoints
            .as_ref()
            .is_some_and(|t| offsets::legacy_send_reset(&t.offsets, &t.legacy))
    }

    /// Whether drop reasons tell which freed packets had no socket (5.17+).
    pub fn drop_reasons(&self) -> bool {
        self.kernel
            .as_ref()
            .is_some_and(|k| k.legacy.drop_reason_no_socket != OFFSET_MISSING)
            && self
                .tracepoints
                .as_ref()
                .is_some_and(|t| t.legacy.kfree_skb_reason != OFFSET_MISSING)
    }

    /// Whether `tcp_send_reset` gives the kernel's reason (6.10+).
    pub fn reset_reasons(&self) -> bool {
        self.tracepoints
            .as_ref()
            .is_some_and(|t| t.offsets.send_reset_reason != OFFSET_MISSING)
    }

    /// The program attached for `spec`: `tcp_send_reset` has its own for the pre-6.8 layout.
    pub fn program_for(&self, spec: &ProbeSpec) -> &'static str {
        if spec.program == "tcp_send_reset" && self.legacy_send_reset() {
            "tcp_send_reset_legacy"
        } else {
            spec.program
        }
    }

    /// Why `spec` need not run here, when another probe gives what it would.
    pub fn not_needed(&self, spec: &ProbeSpec) -> Option<String> {
        (spec.program == KFREE_SKB && !self.legacy_send_reset()).then(|| {
            "tcp_send_reset sees the resets for SYNs to closed ports on this kernel".to_string()
        })
    }

    /// Why the hot probe's BTF tracepoint program ([`HOT_PROBE_BTF`]) cannot be tried here,
    /// if it cannot (the tracepoint program is attached instead).
    pub fn hot_probe_btf(&self) -> Result<(), String> {
        if let Err(e) = &self.btf {
            return Err(format!("no kernel BTF: {e}"));
        }
        if !self.btf_tracepoints.contains(&HOT_PROBE) {
            return Err(format!("kernel has no BTF tracepoint {HOT_PROBE}"));
        }
        let Some(kernel) = &self.kernel else {
            return Err("kernel BTF not resolved".into());
        };
        if kernel.offsets.sk_protocol == OFFSET_MISSING {
            return Err("sock.sk_protocol (a u16) not resolved from BTF".into());
        }
        if kernel.features & feature::SOCK_TUPLE == 0 {
            return Err("sock_common addresses and ports not resolved from BTF".into());
        }
        Ok(())
    }

    /// What a probe wanting `wanted` lacks here.
    fn lacking(&self, wanted: u64) -> Vec<String> {
        let lacking = wanted & !self.features();
        FEATURE_NAMES
            .iter()
            .filter(|(bit, _)| lacking & bit != 0)
            .map(|(_, name)| format!("{name} unavailable"))
            .collect()
    }

    /// Why `spec` cannot run here, if it cannot; and what it lacks if it runs degraded.
    fn check(&self, spec: &ProbeSpec) -> (Option<String>, Vec<String>) {
        match spec.attach {
            AttachPoint::BtfTracePoint { name } => {
                if let Err(e) = &self.btf {
                    return (Some(format!("no kernel BTF: {e}")), vec![]);
                }
                if !self.btf_tracepoints.contains(&name) {
                    return (Some(format!("kernel has no BTF tracepoint {name}")), vec![]);
                }
            }
            AttachPoint::TracePoint { .. } => {
                if let Err(e) = &self.tracefs {
                    return (Some(e.clone()), vec![]);
                }
            }
        }
        let unresolved = self.unresolved();
        let missing: Vec<_> = spec
            .required_fields
            .iter()
            .filter(|f| {
                unresolved
                    .iter()
                    .any(|u| u.what == **f || f.starts_with(&format!("{}:", u.what)))
            })
            .map(|f| (*f).to_string())
            .collect();
        if spec.program == KFREE_SKB && self.features() & feature::SKB_HEADERS == 0 {
            return (
                Some(
                    "sk_buff header members (head, data, network_header, transport_header) \
                      not resolved from BTF"
                        .to_string(),
                ),
                vec![],
            );
        }
        if !missing.is_empty() {
            return (
                Some(format!("tracepoint fields missing: {}", missing.join(", "))),
                vec![],
            );
        }
        let mut degraded = self.lacking(spec.wanted_features);
        if spec.program == "tcp_send_reset" && !self.reset_reasons() {
            degraded.push("no reset reasons before 6.10 (reports name none)".to_string());
        }
        if spec.program == "tcp_send_reset" && self.legacy_send_reset() {
            degraded.push(
                "does not fire for SYNs to closed ports before 6.8 (skb:kfree_skb sees those)"
                    .to_string(),
            );
        }
        if spec.program == KFREE_SKB && !self.drop_reasons() {
            degraded.push(
                "no drop reasons before 5.17: any SYN freed by TCP itself counts as refused"
                    .to_string(),
            );
        }
        (None, degraded)
    }
}

/// Names of the feature bits, for people.
pub const FEATURE_NAMES: [(u64, &str); 9] = [
    (feature::TASK_CGROUP, "task cgroup (task_struct->cgroups)"),
    (feature::SOCK_CGROUP, "socket cgroup (sock->sk_cgrp_data)"),
    (feature::TASK_NETNS, "task netns (task_struct->nsproxy)"),
    (feature::SKB_NETNS, "packet netns (sk_buff->dev)"),
    (feature::TASK_EXIT, "exit code and PF_EXITING (task_struct)"),
    (feature::TASK_IDS, "target pid/comm (task_struct)"),
    (
        feature::SKB_HEADERS,
        "packet headers (sk_buff->head, data, network/transport header)",
    ),
    (
        feature::SOCK_TUPLE,
        "socket addresses and state (sock_common): existing connections learnt at start-up",
    ),
    (
        feature::SOCK_ACTIVITY,
        "idle / in flight at a close (tcp_sock sequence numbers)",
    ),
];

/// RLIMIT_MEMLOCK now: whether it is unlimited, and the soft limit in bytes.
pub fn memlock() -> Option<(bool, u64)> {
    let mut rlim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rlim) } != 0 {
        return None;
    }
    Some((rlim.rlim_cur == libc::RLIM_INFINITY, rlim.rlim_cur))
}

/// Hands the heap freed after loading back to the kernel. Reading the kernel's BTF (aya's
/// copy for `tp_btf` programs and the socket walk, and the offsets read from it) takes about
/// 20 MiB that is all freed once the programs are loaded, but glibc's allocator keeps freed
/// memory at the top of its heap: without this the idle agent's RSS stays about 19 MiB higher
/// for its whole life (measured with the debug build: 52.6 MiB before, 33.4 MiB after).
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas; it
    // touches no memory the program still uses.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Kernels since 5.11 account BPF memory to the cgroup and ignore RLIMIT_MEMLOCK; older ones
/// need it raised (CAP_SYS_RESOURCE, or a hard limit already high enough). Try, and go on
/// when it is not allowed (doctor says so).
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid pointer to a local struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        // Without CAP_SYS_RESOURCE: at least up to the hard limit.
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit / setrlimit with valid pointers to local structs.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut cur) == 0 {
                cur.rlim_cur = cur.rlim_max;
                libc::setrlimit(libc::RLIMIT_MEMLOCK, &cur);
            }
        }
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "could not raise RLIMIT_MEMLOCK; not needed on kernels since 5.11"
        );
    }
}

/// How often a program ran and for how long in total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProgramStats {
    pub program: String,
    pub run_count: u64,
    pub run_time: std::time::Duration,
}

/// Asks the kernel to account run counts and run time of BPF programs for as long as the
/// returned fd is open (`BPF_ENABLE_STATS`; costs a little on every program run).
pub fn enable_run_time_stats() -> Result<std::os::fd::OwnedFd, std::io::Error> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Agent-level counters kept by the kernel programs (summed over CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KernelCounters {
    /// TCP events the `EVENTS` ring could not take.
    pub ringbuf_lost: u64,
    /// Control events (signals, exits, execs) the `CONTROL` ring could not take.
    #[serde(default)]
    pub control_lost: u64,
    pub resets_rate_limited: u64,
    pub live_map_failed: u64,
    /// Watches the kernel could not record (its watched-cgroup map was full).
    #[serde(default)]
    pub watch_map_failed: u64,
    /// Records of watched connections written to `KEPT_CONNS`.
    #[serde(default)]
    pub kept: u64,
    /// `KEPT_CONNS` writes that failed (full): the change went through the TCP ring.
    #[serde(default)]
    pub kept_map_failed: u64,
    /// TCP events not sent because the ring was half full: `KEPT_CONNS` has what they said.
    #[serde(default)]
    pub left_to_kept: u64,
}

/// The loaded, attached kernel programs.
pub struct Probes {
    ebpf: Ebpf,
    pub status: Vec<ProbeStatus>,
    /// The start-up walk of the kernel's TCP sockets: how many existing connections it
    /// learnt, or why it could not run (then connections older than the agent are learnt at
    /// their next state change, without their direction).
    pub preexisting: Result<usize, String>,
    /// Whether the walks reach every network namespace of the node (the agent sees every
    /// process and can enter each namespace), or why not. When they do not, a container
    /// whose namespace the agent cannot walk could not have its connections learnt when its
    /// watch begins: every connection is then kept from its opening (`tracks_all`).
    pub walk_coverage: Result<(), String>,
    watch_all: bool,
    /// What userspace last wrote as the number of watched cgroups (`WATCH_HINT[1]`'s low 32
    /// bits).
    hint_count: u64,
    /// Userspace's watch generation (`WATCH_HINT[1]`'s high 32 bits), moved at every change
    /// it makes to `WATCHED`: the programs' per-CPU answer to "is this cgroup watched?" is
    /// valid while it (and the kernel's own count of watches made) stays.
    hint_generation: u64,
    pub support: KernelSupport,
    decoder: Decoder,
    /// The maps were found pinned: an earlier agent's watches and connections carry over.
    pub pins_reused: bool,
    /// The programs attached at load.
    attachments: Vec<Attachment>,
}

impl Probes {
    /// Loads the programs with offsets resolved on this kernel and attaches each probe that can
    /// run. Fails only when the object as a whole cannot be loaded (e.g. no privileges).
    pub fn load(opts: &LoadOptions) -> Result<Self, ProbeError> {
        let support = KernelSupport::probe();
        Self::load_with(support, opts)
    }

    pub fn load_with(support: KernelSupport, opts: &LoadOptions) -> Result<Self, ProbeError> {
        raise_memlock();
        let config = support.config(opts);
        let pins = match &opts.pin_dir {
            Some(dir) => Some(pin::prepare(dir, opts).map_err(ProbeError::Pin)?),
            None => None,
        };
        let mut loader = EbpfLoader::new();
        loader
            .override_global(names::CONFIG, &config, true)
            .map_max_entries(names::EVENTS, opts.ring_buffer_bytes)
            .map_max_entries(names::CONTROL, opts.control_ring_bytes)
            .map_max_entries(names::LIVE_CONNS, opts.max_live_connections)
            .map_max_entries(names::KEPT_CONNS, opts.max_kept_connections)
            .map_max_entries(names::EST_LOG, est_log_entries());
        if let Some(pins) = &pins {
            for (name, path) in pins.paths() {
                loader.map_pin_path(name, path);
            }
        }
        let mut ebpf = loader
            .load(PROGRAMS)
            .map_err(|e| ProbeError::Load(Box::new(e)))?;
        // Until the start-up walk says whether a watch can learn its container's connections,
        // every connection is kept (the walk then learns all of them, and the entries of
        // unwatched cgroups are dropped if they need not be kept).
        set_track_all(&mut ebpf)?;
        if let Some(pins) = &pins {
            tracing::info!(
                dir = %pins.dir.display(),
                reused = pins.reused,
                "kernel maps pinned (found again after a restart)"
            );
        }

        let aya_btf = aya::Btf::from_sys_fs().ok();
        let mut status = Vec::with_capacity(PROBES.len());
        let mut attachments = Vec::with_capacity(PROBES.len());
        for spec in PROBES {
            // The hot probe: the BTF tracepoint first, the tracepoint program where it cannot
            // be attached (the reason is in `doctor`).
            let mut fallback = None;
            if spec.program == HOT_PROBE {
                let wanted = if opts.tracepoint_hot_probe {
                    Err("not tried: the tracepoint program was asked for".to_string())
                } else {
                    support.hot_probe_btf()
                };
                let tried = wanted.and_then(|()| {
                    attach(
                        &mut ebpf,
                        &HOT_PROBE_BTF,
                        HOT_PROBE_BTF.program,
                        aya_btf.as_ref(),
                    )
                });
                match tried {
                    Ok(link) => {
                        tracing::debug!(probe = spec.program, "attached as a BTF tracepoint");
                        attachments.push(Attachment {
                            probe: spec.program,
                            spec: &HOT_PROBE_BTF,
                            program: HOT_PROBE_BTF.program,
                            link: Some(link),
                        });
                        status.push(ProbeStatus {
                            program: spec.program,
                            attach_point: HOT_PROBE_BTF.attach.to_string(),
                            purpose: spec.purpose,
                            state: ProbeState::Attached,
                            degraded: support.lacking(HOT_PROBE_BTF.wanted_features),
                        });
                        continue;
                    }
                    Err(reason) => {
                        tracing::info!(
                            probe = spec.program,
                            %reason,
                            "the BTF tracepoint cannot be used: attaching the tracepoint program"
                        );
                        fallback = Some(reason);
                    }
                }
            }
            let (disabled, mut degraded) = support.check(spec);
            if let Some(reason) = fallback {
                degraded.push(format!(
                    "{} unavailable ({reason}): the tracepoint program, which reads the \
                     tracepoint's record, costs more per state change",
                    HOT_PROBE_BTF.attach
                ));
            }
            let state = match (support.not_needed(spec), disabled) {
                (Some(why), _) => ProbeState::NotNeeded(why),
                (None, Some(reason)) => ProbeState::Disabled(reason),
                (None, None) => {
                    let program = support.program_for(spec);
                    match attach(&mut ebpf, spec, program, aya_btf.as_ref()) {
                        Ok(link) => {
                            attachments.push(Attachment {
                                probe: spec.program,
                                spec,
                                program,
                                link: Some(link),
                            });
                            ProbeState::Attached
                        }
                        Err(reason) => ProbeState::Failed(reason),
                    }
                }
            };
            match &state {
                ProbeState::Attached => tracing::debug!(probe = spec.program, "attached"),
                ProbeState::NotNeeded(r) => {
                    tracing::debug!(probe = spec.program, reason = %r, "not needed")
                }
                ProbeState::Disabled(r) | ProbeState::Failed(r) => {
                    tracing::warn!(probe = spec.program, reason = %r, "probe not attached")
                }
            }
            status.push(ProbeStatus {
                program: spec.program,
                attach_point: spec.attach.to_string(),
                purpose: spec.purpose,
                state,
                degraded,
            });
        }
        // After the probes: a connection that opens meanwhile is the probe's, and the walk
        // leaves its entry alone.
        let (preexisting, walk_coverage) =
            match learn_existing_connections(&mut ebpf, aya_btf.as_ref(), &support) {
                Ok((learnt, coverage)) => (Ok(learnt), coverage),
                Err(e) => (Err(e.clone()), Err(e)),
            };
        match &preexisting {
            Ok(n) => tracing::info!(connections = n, "learnt the TCP connections already open"),
            Err(reason) => tracing::warn!(
                %reason,
                "could not walk the existing TCP sockets: connections older than the agent are \
                 learnt at their next state change, without their direction"
            ),
        }
        drop(aya_btf);
        release_freed_heap();
        let decoder = Decoder::new(support.reset_reasons.iter().cloned());
        let mut probes = Probes {
            ebpf,
            status,
            preexisting,
            walk_coverage,
            watch_all: opts.watch_all,
            hint_count: 0,
            hint_generation: 0,
            support,
            decoder,
            pins_reused: pins.is_some_and(|p| p.reused),
            attachments,
        };
        // Watches found in pinned maps: the hot probe must know something is watched. The
        // generation carries on from the pinned value.
        probes.hint_generation =
            watch_hint::generation(probes.hint()?.get(&watch_hint::USER, 0).unwrap_or(0));
        probes.watched_cgroups()?;
        // Without a walk that reaches every namespace, a container's connections cannot be
        // learnt when its watch begins: the programs keep every connection from its opening
        // instead (as they did from the attach on, see below).
        let track_all = probes.tracks_all();
        if let Err(reason) = &probes.walk_coverage {
            tracing::warn!(
                %reason,
                "every connection is kept from its opening (dearer per connection): the \
                 agent cannot walk every network namespace's sockets when a watch begins"
            );
        }
        probes.set_hint(watch_hint::TRACK_ALL, u64::from(track_all))?;
        if !track_all {
            // Pinned entries of cgroups no longer watched: nothing keeps them right.
            let dropped = probes.forget_unwatched_connections()?;
            if dropped > 0 {
                tracing::debug!(
                    dropped,
                    "dropped pinned entries of cgroups no longer watched"
                );
            }
        }
        Ok(probes)
    }

    /// Whether every connection is kept in `LIVE_CONNS` from its opening (no socket walk on
    /// this kernel, or `--watch-all`); otherwise only watched cgroups' are.
    pub fn tracks_all(&self) -> bool {
        self.watch_all || self.preexisting.is_err() || self.walk_coverage.is_err()
    }

    /// A watch began: walks the kernel's TCP sockets, so that `LIVE_CONNS` holds every
    /// connection of the watched cgroups (the programs keep only those opened while watched),
    /// and reads when the ones opened before were established (`EST_LOG`). An error when the
    /// walk cannot run (then every connection is tracked from its opening anyway).
    pub fn learn_watched_connections(&mut self) -> Result<est_log::Establishments, String> {
        if let Err(e) = &self.preexisting {
            return Err(e.clone());
        }
        let walk_began = boot_ns();
        let walked = walk_sockets(&mut self.ebpf)?;
        if let Err(reason) = walked.coverage {
            // A namespace that could not be entered: from now on every connection is kept
            // from its opening, so that the next watch needs no walk to know them.
            tracing::warn!(
                %reason,
                "the walk missed a network namespace: keeping every connection from now on"
            );
            self.walk_coverage = Err(reason.clone());
            self.set_hint(watch_hint::TRACK_ALL, 1)
                .map_err(|e| e.to_string())?;
            return Err(reason);
        }
        self.establishments(walk_began)
    }

    /// The establishment log as it stands, trusted up to `before_ns` (see
    /// [`est_log::Establishments::from_log`]).
    pub fn establishments(&self, before_ns: u64) -> Result<est_log::Establishments, String> {
        let Some(Map::Array(data)) = self.ebpf.map(names::EST_LOG) else {
            return Err(format!("no array {}", names::EST_LOG));
        };
        let mut entries: Vec<termscope_common::est_log::Entry> = Vec::new();
        batch::for_each::<u32, termscope_common::est_log::Entry>(data.fd().as_fd(), |_, values| {
            entries.extend_from_slice(values)
        })
        .map_err(|e| format!("reading {}: {e}", names::EST_LOG))?;
        let heads = self.est_heads()?;
        Ok(est_log::Establishments::from_log(
            &entries, &heads, before_ns,
        ))
    }

    /// Each CPU's count of writes into the establishment log.
    fn est_heads(&self) -> Result<Vec<u64>, String> {
        let heads = self
            .ebpf
            .map(names::EST_HEAD)
            .ok_or_else(|| format!("no map {}", names::EST_HEAD))
            .and_then(|m| PerCpuArray::<&MapData, u64>::try_from(m).map_err(|e| e.to_string()))
            .and_then(|a| a.get(&0, 0).map_err(|e| e.to_string()))
            .map_err(|e| format!("reading {}: {e}", names::EST_HEAD))?;
        Ok(heads.iter().copied().collect())
    }

    /// How many establishments the hot probe has logged since it was loaded, all CPUs: the
    /// benchmark's proof that the probe ran (or did not) in a block of its churn.
    #[doc(hidden)]
    pub fn establishments_logged(&self) -> Result<u64, String> {
        Ok(self.est_heads()?.iter().sum())
    }

    /// Removes the `LIVE_CONNS` entries of `cgroup_id` (its watch ended: nothing keeps them
    /// right any more). Returns how many.
    pub fn forget_connections_of(&mut self, cgroup_id: u64) -> Result<usize, ProbeError> {
        if self.tracks_all() {
            return Ok(0);
        }
        self.forget_connections_where(|c| c.cgroup_id == cgroup_id)
    }

    /// Removes the `LIVE_CONNS` entries of every cgroup not watched now.
    fn forget_unwatched_connections(&mut self) -> Result<usize, ProbeError> {
        let watched: std::collections::HashSet<u64> =
            self.watched()?.keys().filter_map(Result::ok).collect();
        self.forget_connections_where(|c| !watched.contains(&c.cgroup_id))
    }

    fn forget_connections_where(
        &mut self,
        gone: impl Fn(&LiveConn) -> bool,
    ) -> Result<usize, ProbeError> {
        let mut doomed = Vec::new();
        self.for_each_live_connection(|sk, c| {
            if gone(c) {
                doomed.push((sk, c.conn_id));
            }
        })?;
        let mut map = self.hash_map_mut::<u64, LiveConn>(names::LIVE_CONNS)?;
        let mut removed = 0;
        for (sk, conn_id) in doomed {
            // Only the same connection: a new socket at the address may have replaced it.
            if map.get(&sk, 0).is_ok_and(|c| c.conn_id == conn_id) && map.remove(&sk).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Whether every cgroup's events go to userspace (`--watch-all`).
    pub fn watches_all(&self) -> bool {
        self.watch_all
    }

    pub fn attached(&self) -> usize {
        self.status
            .iter()
            .filter(|s| s.state == ProbeState::Attached)
            .count()
    }

    /// The probes this kernel needs: all but those another probe stands in for here (e.g.
    /// the pre-6.8 `tcp_send_reset` layout and `skb:kfree_skb` on a newer kernel). Fewer
    /// attached than needed means a feature is off.
    pub fn needed(&self) -> usize {
        self.status
            .iter()
            .filter(|s| !matches!(s.state, ProbeState::NotNeeded(_)))
            .count()
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// Takes the ring buffers (TCP events and control events); events are read from the
    /// returned stream, both rings merged in time order.
    pub fn events(&mut self) -> Result<EventStream, ProbeError> {
        let mut take = |name: &'static str| -> Result<RingBuf<MapData>, ProbeError> {
            let map = self
                .ebpf
                .take_map(name)
                .ok_or(ProbeError::RingBufferTaken)?;
            RingBuf::try_from(map).map_err(|source| ProbeError::Map { name, source })
        };
        let ring = take(names::EVENTS)?;
        let control = take(names::CONTROL)?;
        Ok(EventStream {
            ring,
            control,
            decoder: self.decoder.clone(),
        })
    }

    /// The runs of each loaded program the kernel skipped since it was loaded (a run nested
    /// in another on one CPU, see [`prog_info`]), by program name; programs whose count this
    /// kernel does not keep are left out. Each is a state change, signal or exit the agent
    /// never saw.
    pub fn runs_missed(&self) -> Vec<(String, u64)> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let fd = program.fd().ok()?;
                let missed = prog_info::runs_missed(fd.as_fd())
                    .inspect_err(|e| tracing::debug!(program = name, error = %e, "program info"))
                    .ok()??;
                Some((name.to_string(), missed))
            })
            .collect()
    }

    /// Writes an entry of `LIVE_CONNS` from userspace: what a skipped run of the TCP probe
    /// leaves behind, for the tests of [`Probes::sweep_live_connections`] (an entry of a socket
    /// that is gone). The agent never calls it.
    #[doc(hidden)]
    pub fn put_live_connection(&mut self, sk: u64, conn: LiveConn) -> Result<(), ProbeError> {
        let mut map = self.hash_map_mut::<u64, LiveConn>(names::LIVE_CONNS)?;
        map.insert(sk, conn, 0).map_err(|source| ProbeError::Map {
            name: names::LIVE_CONNS,
            source,
        })
    }

    /// Detaches probe `probe` (its name in `PROBES`, e.g. `HOT_PROBE`, whichever program
    /// of it is attached) or attaches it again; the maps and their contents stay. For the
    /// benchmark, which measures a workload with and without the hot probe in one process,
    /// block by block (an agent has no use for it).
    #[doc(hidden)]
    pub fn set_attached(&mut self, probe: &str, on: bool) -> Result<(), ProbeError> {
        for a in &mut self.attachments {
            if a.probe != probe {
                continue;
            }
            let result = match (on, a.link.take()) {
                (false, Some(link)) => detach(&mut self.ebpf, a.program, link),
                // Loaded already: the kernel's BTF is not needed again.
                (true, None) => {
                    attach(&mut self.ebpf, a.spec, a.program, None).map(|link| a.link = Some(link))
                }
                (_, link) => {
                    a.link = link;
                    Ok(())
                }
            };
            result.map_err(|reason| ProbeError::Attach {
                program: a.program,
                reason,
            })?;
        }
        Ok(())
    }

    /// Marks every CPU's record scratch as in use (or free again) from userspace: what a run
    /// of the hot probe nested in another's merge finds (5.10, where BTF-tracepoint runs nest),
    /// for the test that such a run sends its change through the ring. The agent never calls
    /// it.
    #[doc(hidden)]
    pub fn hold_record_scratch(&mut self, held: bool) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut(names::KEEPING)
            .ok_or(ProbeError::MissingMap(names::KEEPING))?;
        let err = |source| ProbeError::Map {
            name: names::KEEPING,
            source,
        };
        let mut words: PerCpuArray<&mut MapData, u32> = PerCpuArray::try_from(map).map_err(err)?;
        let io = |source| ProbeError::Batch {
            name: names::KEEPING,
            source,
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| io(e))?;
        let values = aya::maps::PerCpuValues::try_from(vec![u32::from(held); cpus]).map_err(io)?;
        words.set(0, values, 0).map_err(err)
    }

    /// Removes an entry of `LIVE_CONNS` from userspace: what a skipped opening leaves (no
    /// entry), for the same tests. The agent never calls it.
    #[doc(hidden)]
    pub fn forget_live_connection(&mut self, sk: u64) -> Result<(), ProbeError> {
        let mut map = self.hash_map_mut::<u64, LiveConn>(names::LIVE_CONNS)?;
        removed_or_missing(names::LIVE_CONNS, map.remove(&sk))
    }

    /// The hash map `name`, for writing.
    fn hash_map_mut<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<BpfHashMap<&mut MapData, K, V>, ProbeError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(ProbeError::MissingMap(name))?;
        BpfHashMap::try_from(map).map_err(|source| ProbeError::Map { name, source })
    }

    /// Walks the node's TCP sockets again (after the kernel skipped runs of the TCP probe,
    /// see [`Probes::runs_missed`]): an entry of `LIVE_CONNS` whose CLOSE was skipped is
    /// dropped (left, it would stay forever and a later stop of its container would list it
    /// as open), and a connection whose opening was skipped is learnt. Returns how many
    /// entries were dropped; an error when the start-up walk could not run either.
    pub fn sweep_live_connections(&mut self) -> Result<usize, String> {
        if let Err(e) = &self.preexisting {
            return Err(e.clone());
        }
        walk_sockets(&mut self.ebpf).map(|w| w.dropped)
    }

    /// Every cgroup the kernel watches now, with when and why it began. Also tells the hot
    /// probe how many there are (`WATCH_HINT`): with none, it skips most state changes.
    pub fn watched_cgroups(&mut self) -> Result<Vec<(u64, WatchEntry)>, ProbeError> {
        // Read before the walk: the walk includes every watch made up to this count.
        let made = self.hint()?.get(&watch_hint::KERNEL_MADE, 0).unwrap_or(0);
        // Entries can vanish while we iterate; skip those.
        let watched: Vec<_> = self.watched()?.iter().filter_map(Result::ok).collect();
        let count = watched.len() as u64;
        // The count first, then what it includes: in between, a new watch still shows.
        self.hint_count = count;
        self.write_user_hint()?;
        self.set_hint(watch_hint::USER_SAW, made)?;
        Ok(watched)
    }

    /// Writes `WATCH_HINT[1]`: the count and the generation.
    fn write_user_hint(&mut self) -> Result<(), ProbeError> {
        let value = watch_hint::user_word(self.hint_generation, self.hint_count);
        self.set_hint(watch_hint::USER, value)
    }

    /// Moves the generation and writes it with the count.
    fn next_generation(&mut self) -> Result<(), ProbeError> {
        self.hint_generation = self.hint_generation.wrapping_add(1);
        self.write_user_hint()
    }

    fn hint(&mut self) -> Result<Array<&mut MapData, u64>, ProbeError> {
        let map = self
            .ebpf
            .map_mut(names::WATCH_HINT)
            .ok_or(ProbeError::MissingMap(names::WATCH_HINT))?;
        Array::try_from(map).map_err(|source| ProbeError::Map {
            name: names::WATCH_HINT,
            source,
        })
    }

    fn set_hint(&mut self, index: u32, value: u64) -> Result<(), ProbeError> {
        self.hint()?
            .set(index, value, 0)
            .map_err(|source| ProbeError::Map {
                name: names::WATCH_HINT,
                source,
            })
    }

    fn watched(&mut self) -> Result<BpfHashMap<&mut MapData, u64, WatchEntry>, ProbeError> {
        let map = self
            .ebpf
            .map_mut(names::WATCHED)
            .ok_or(ProbeError::MissingMap(names::WATCHED))?;
        BpfHashMap::try_from(map).map_err(|source| ProbeError::Map {
            name: names::WATCHED,
            source,
        })
    }

    /// Sends this cgroup's per-connection events to userspace from now on.
    pub fn watch(&mut self, cgroup_id: u64) -> Result<(), ProbeError> {
        let entry = WatchEntry {
            since_ns: boot_ns(),
            reason: watch_reason::USERSPACE,
            _pad: 0,
        };
        // The hot probe looks at `WATCHED` only while the hint says something may be
        // watched: the hint goes up first, so that no state change of this cgroup is missed
        // between the two writes. A failed insert leaves the hint one too high until the
        // next count (which only costs the probe a lookup). The generation moves again after
        // the insert: an answer a CPU cached in between is not kept.
        self.hint_count += 1;
        self.next_generation()?;
        let inserted = self
            .watched()?
            .insert(cgroup_id, entry, 0)
            .map_err(|source| ProbeError::Map {
                name: names::WATCHED,
                source,
            });
        self.next_generation()?;
        inserted
    }

    /// Stops sending this cgroup's events (a missing entry is not an error).
    pub fn unwatch(&mut self, cgroup_id: u64) -> Result<(), ProbeError> {
        let removed = removed_or_missing(names::WATCHED, self.watched()?.remove(&cgroup_id));
        self.next_generation()?;
        removed
    }

    /// Stops sending this network namespace's socket-less resets unconditionally (they are
    /// rate-limited again).
    pub fn unwatch_netns(&mut self, netns: u32) -> Result<(), ProbeError> {
        let mut map = self.hash_map_mut::<u32, u64>(names::WATCHED_NETNS)?;
        // Missing: never watched, or evicted (an LRU map).
        removed_or_missing(names::WATCHED_NETNS, map.remove(&netns))
    }

    /// Whether the kernel watches this cgroup (userspace or a stop signal put it there).
    pub fn is_watched(&mut self, cgroup_id: u64) -> Result<bool, ProbeError> {
        Ok(self.watched()?.get(&cgroup_id, 0).is_ok())
    }

    /// The connections the kernel knows to be open (socket address, connection).
    pub fn live_connections(&self) -> Result<Vec<(u64, LiveConn)>, ProbeError> {
        let map = self
            .ebpf
            .map(names::LIVE_CONNS)
            .ok_or(ProbeError::MissingMap(names::LIVE_CONNS))?;
        let map: BpfHashMap<&MapData, u64, LiveConn> =
            BpfHashMap::try_from(map).map_err(|source| ProbeError::Map {
                name: names::LIVE_CONNS,
                source,
            })?;
        // Entries can vanish while we iterate; skip those.
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// Per-cgroup counters summed over CPUs (all zero when the kernel has none for it).
    pub fn cgroup_stats(&self, cgroup_id: u64) -> Result<CgroupStats, ProbeError> {
        let map = self
            .ebpf
            .map(names::CGROUP_STATS)
            .ok_or(ProbeError::MissingMap(names::CGROUP_STATS))?;
        let map: PerCpuHashMap<&MapData, u64, CgroupStats> =
            PerCpuHashMap::try_from(map).map_err(|source| ProbeError::Map {
                name: names::CGROUP_STATS,
                source,
            })?;
        let Ok(per_cpu) = map.get(&cgroup_id, 0) else {
            return Ok(CgroupStats::default());
        };
        Ok(per_cpu.iter().fold(CgroupStats::default(), |mut a, s| {
            a.opened_inbound += s.opened_inbound;
            a.opened_outbound += s.opened_outbound;
            a.closed += s.closed;
            a.resets_sent += s.resets_sent;
            a.resets_received += s.resets_received;
            a.closed_by_exit += s.closed_by_exit;
            a.events_lost += s.events_lost;
            a.untracked += s.untracked;
            a
        }))
    }

    /// Run count and accumulated run time of each attached program. The kernel only keeps
    /// these while run-time statistics are enabled (see [`enable_run_time_stats`]).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                Some(ProgramStats {
                    program: name.to_string(),
                    run_count: info.run_count(),
                    run_time: info.run_time(),
                })
            })
            .collect()
    }

    /// The per-CPU `COUNTERS` array the kernel programs bump.
    fn counters_map(&self) -> Result<PerCpuArray<&MapData, u64>, ProbeError> {
        let map = self
            .ebpf
            .map(names::COUNTERS)
            .ok_or(ProbeError::MissingMap(names::COUNTERS))?;
        PerCpuArray::try_from(map).map_err(|source| ProbeError::Map {
            name: names::COUNTERS,
            source,
        })
    }

    /// The kernel programs' own counters, summed over CPUs.
    pub fn counters(&self) -> Result<KernelCounters, ProbeError> {
        let map = self.counters_map()?;
        let sum = |i: u32| map.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        Ok(KernelCounters {
            ringbuf_lost: sum(counter::RINGBUF_LOST),
            control_lost: sum(counter::CONTROL_LOST),
            resets_rate_limited: sum(counter::RESETS_RATE_LIMITED),
            live_map_failed: sum(counter::LIVE_MAP_FAILED),
            watch_map_failed: sum(counter::WATCH_MAP_FAILED),
            kept: sum(counter::KEPT),
            kept_map_failed: sum(counter::KEPT_MAP_FAILED),
            left_to_kept: sum(counter::LEFT_TO_KEPT),
        })
    }

    /// Records written to `KEPT_CONNS` so far (summed over CPUs): when it moves, there is
    /// something to take.
    pub fn kept_written(&self) -> Result<u64, ProbeError> {
        let map = self.counters_map()?;
        Ok(map
            .get(&counter::KEPT, 0)
            .map(|v| v.iter().sum::<u64>())
            .unwrap_or(0))
    }

    /// The data of hash map `name`.
    fn hash_map_data(&self, name: &'static str) -> Result<&MapData, ProbeError> {
        match self.ebpf.map(name) {
            Some(Map::HashMap(data)) => Ok(data),
            Some(_) => Err(ProbeError::Map {
                name,
                source: aya::maps::MapError::InvalidMapType { map_type: 0 },
            }),
            None => Err(ProbeError::MissingMap(name)),
        }
    }

    /// Walks the live connections the kernel knows (socket address, connection), a batch at
    /// a time, without copying the map.
    pub fn for_each_live_connection(
        &self,
        mut f: impl FnMut(u64, &LiveConn),
    ) -> Result<(), ProbeError> {
        let data = self.hash_map_data(names::LIVE_CONNS)?;
        batch::for_each::<u64, LiveConn>(data.fd().as_fd(), |keys, values| {
            for (k, v) in keys.iter().zip(values) {
                f(*k, v);
            }
        })
        .map_err(|source| ProbeError::Batch {
            name: names::LIVE_CONNS,
            source,
        })
    }

    /// Takes what the kernel keeps of watched connections (`KEPT_CONNS`): every record is
    /// read and deleted in one step (`BPF_MAP_LOOKUP_AND_DELETE_BATCH`) and handed to `f`.
    /// Read then deleted in two steps, a record the programs rewrote in between (a
    /// connection's CLOSE right after its close) would be deleted unread; taken in one, the
    /// programs' next write of that connection starts a new record. Returns how many were
    /// taken.
    pub fn take_kept(&self, mut f: impl FnMut(&KeptConn)) -> Result<usize, ProbeError> {
        let data = self.hash_map_data(names::KEPT_CONNS)?;
        let fd = data.fd().as_fd();
        let mut taken = 0;
        batch::take_each::<u64, KeptConn>(fd, |_, values| {
            for v in values {
                f(v);
                taken += 1;
            }
        })
        .map_err(|source| ProbeError::Batch {
            name: names::KEPT_CONNS,
            source,
        })?;
        Ok(taken)
    }
}

/// The shortest time between two walks of the node's TCP sockets made because the kernel
/// skipped runs of the TCP probe: a walk costs a system call per network namespace and a few
/// hundred nanoseconds per socket.
pub const SWEEP_EVERY: Duration = Duration::from_secs(300);

/// What the agent does at each health tick about the runs the kernel skipped
/// ([`Probes::runs_missed`]): warns when they grow, and walks the sockets again
/// ([`Probes::sweep_live_connections`]) when the TCP probe's grew, at most every
/// [`SWEEP_EVERY`].
#[derive(Debug, Default)]
pub struct SkippedRuns {
    reported: u64,
    swept_at: u64,
    last_sweep: Option<Instant>,
}

impl SkippedRuns {
    /// Reads the counts, acts on them, and returns them (for the metrics).
    pub fn check(&mut self, probes: &mut Probes) -> Vec<(String, u64)> {
        let runs_missed = probes.runs_missed();
        let missed: u64 = runs_missed.iter().map(|(_, n)| n).sum();
        if missed > self.reported {
            tracing::warn!(
                missed,
                programs = ?runs_missed,
                "the kernel skipped runs of termscope's programs (a run nested in another on \
                 one CPU): each is a state change, signal or exit never seen, of a container it \
                 cannot name"
            );
            self.reported = missed;
        }
        let tcp_missed = tcp_probe_runs(&runs_missed);
        if self.sweep_due(tcp_missed, Instant::now()) {
            self.last_sweep = Some(Instant::now());
            self.swept_at = tcp_missed;
            match probes.sweep_live_connections() {
                Ok(dropped) => tracing::info!(
                    dropped,
                    "walked the TCP sockets after skipped runs: dropped the entries of \
                     connections whose close was not seen"
                ),
                Err(e) => tracing::warn!(error = %e, "walking the TCP sockets"),
            }
        }
        runs_missed
    }

    /// A walk is due when the TCP probe skipped runs since the last one, and that one is at
    /// least [`SWEEP_EVERY`] old.
    fn sweep_due(&self, tcp_missed: u64, now: Instant) -> bool {
        tcp_missed > self.swept_at
            && self
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY)
    }
}

/// The skipped runs of the TCP probe (either of its programs).
fn tcp_probe_runs(runs_missed: &[(String, u64)]) -> u64 {
    runs_missed
        .iter()
        .filter(|(p, _)| p.as_str() == HOT_PROBE_BTF.program || p.as_str() == HOT_PROBE)
        .map(|(_, n)| n)
        .sum()
}

/// Runs the TCP socket iterator: every connection open now goes into `LIVE_CONNS` with its
/// cgroup and direction. A TCP iterator walks the network namespace it is created in, so it
/// is run in the agent's own, and — when the agent may enter namespaces (CAP_SYS_ADMIN, e.g.
/// standalone as root) — in every other one it can find: those of the processes it sees in
/// `/proc`, and the named ones in `/run/netns` (where CNI plugins keep pods'). Returns how
/// many connections the kernel knows from the walk.
///
/// The walk also says which sockets it met that `LIVE_CONNS` already held (maps pinned by an
/// earlier agent): an entry that was there before the walk, of a namespace the walk covered,
/// whose socket it did not meet, is a connection that closed while no agent ran — nobody saw
/// its CLOSE. It is dropped: left, a later stop of its container would list it as open.
fn learn_existing_connections(
    ebpf: &mut Ebpf,
    btf: Option<&aya::Btf>,
    support: &KernelSupport,
) -> Result<(usize, Result<(), String>), String> {
    if support.features() & feature::SOCK_TUPLE == 0 {
        return Err("socket fields (sock_common) not resolved from BTF".into());
    }
    let btf = btf.ok_or("kernel BTF could not be read by the loader")?;
    let program = ebpf
        .program_mut(names::LEARN_PROGRAM)
        .ok_or_else(|| format!("program {} is not in the object", names::LEARN_PROGRAM))?;
    let iter: &mut Iter = program.try_into().map_err(|e| format!("{e}"))?;
    iter.load("tcp", btf).map_err(|e| {
        format!(
            "load (the TCP iterator needs Linux 5.9+): {}",
            error_chain(&e)
        )
    })?;
    let Walked { dropped, coverage } = walk_sockets(ebpf)?;
    if dropped > 0 {
        tracing::info!(
            dropped,
            "dropped the kernel's entries of connections that closed while no agent ran"
        );
    }
    let map = ebpf
        .map(names::LIVE_CONNS)
        .ok_or_else(|| format!("no map {}", names::LIVE_CONNS))?;
    let map: BpfHashMap<&MapData, u64, LiveConn> =
        BpfHashMap::try_from(map).map_err(|e| e.to_string())?;
    let learnt = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, c)| c.flags & termscope_common::flags::PREEXISTING != 0)
        .count();
    Ok((learnt, coverage))
}

/// Walks the TCP sockets of every network namespace the agent can enter with the loaded
/// iterator: learns the connections of watched cgroups `LIVE_CONNS` lacks, and drops the entries whose socket
/// is gone.
fn walk_sockets(ebpf: &mut Ebpf) -> Result<Walked, String> {
    let before = live_entries(ebpf)?;
    let program = ebpf
        .program_mut(names::LEARN_PROGRAM)
        .ok_or_else(|| format!("program {} is not in the object", names::LEARN_PROGRAM))?;
    let iter: &mut Iter = program.try_into().map_err(|e| format!("{e}"))?;
    let mut coverage = sees_every_process();
    let mut met = Vec::new();
    let mut walked = Vec::new();
    walk_once(iter, &mut met)?;
    walked.extend(own_netns());
    let (others, refused) = other_netns();
    coverage = coverage.and(refusals(&refused));
    if !others.is_empty() {
        // setns changes the calling thread's namespace only: walk from a thread of our own.
        let res = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let (mut met, mut walked) = (Vec::new(), Vec::new());
                    let mut failed: Option<String> = None;
                    for (ino, ns) in &others {
                        // SAFETY: setns with a valid namespace fd, on this thread only.
                        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                            // The others may still be entered: go on, and say so.
                            let e = std::io::Error::last_os_error();
                            failed.get_or_insert_with(|| format!("entering netns {ino}: {e}"));
                            continue;
                        }
                        match walk_once(iter, &mut met) {
                            Ok(()) => walked.push(*ino),
                            Err(e) => {
                                failed.get_or_insert_with(|| format!("netns {ino}: {e}"));
                            }
                        }
                    }
                    (met, walked, failed)
                })
                .join()
        });
        match res {
            Ok((m, w, failed)) => {
                met.extend(m);
                walked.extend(w);
                match failed {
                    None => tracing::debug!(namespaces = walked.len(), "walked the TCP sockets"),
                    Some(reason) => {
                        tracing::info!(
                            %reason,
                            namespaces = walked.len(),
                            "walked the TCP sockets of some network namespaces only"
                        );
                        coverage = Err(format!(
                            "a network namespace could not be entered: {reason}"
                        ));
                    }
                }
            }
            Err(_) => return Err("the namespace walk panicked".into()),
        }
    }
    let dropped = drop_unmet(ebpf, &before, &met, &walked)?;
    Ok(Walked { dropped, coverage })
}

/// Sets `WATCH_HINT[TRACK_ALL]` on a freshly loaded object.
fn set_track_all(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    let map = ebpf
        .map_mut(names::WATCH_HINT)
        .ok_or(ProbeError::MissingMap(names::WATCH_HINT))?;
    let mut hint: Array<&mut MapData, u64> =
        Array::try_from(map).map_err(|source| ProbeError::Map {
            name: names::WATCH_HINT,
            source,
        })?;
    hint.set(watch_hint::TRACK_ALL, 1, 0)
        .map_err(|source| ProbeError::Map {
            name: names::WATCH_HINT,
            source,
        })
}

/// What a walk of the kernel's TCP sockets did.
struct Walked {
    /// Entries of `LIVE_CONNS` whose socket was gone.
    dropped: usize,
    /// Whether it reached every network namespace of the node, or why not.
    coverage: Result<(), String>,
}

/// `PROC_PID_INIT_INO`: the inode of the initial PID namespace.
const INIT_PID_NS_INODE: u64 = 0xEFFF_FFFC;

/// Whether the agent can see and enter every network namespace that has a process: it runs
/// in the initial PID namespace (standalone, or a pod with `hostPID`) with CAP_SYS_PTRACE (to
/// open another user's `/proc/<pid>/ns/net`) and CAP_SYS_ADMIN (to enter it).
fn sees_every_process() -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self/ns/pid") {
        Ok(m) if m.ino() == INIT_PID_NS_INODE => {}
        Ok(_) => {
            return Err(
                "the agent runs in a PID namespace of its own (no hostPID): it cannot \
                        see other containers' network namespaces"
                    .into(),
            );
        }
        Err(e) => return Err(format!("/proc/self/ns/pid: {e}")),
    }
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("/proc/self/status: {e}"))?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or("no CapEff in /proc/self/status")?;
    missing_caps(effective)
}

/// The capabilities a walk of every namespace needs that `effective` lacks, as an error.
fn missing_caps(effective: u64) -> Result<(), String> {
    const CAP_SYS_PTRACE: u32 = 19;
    const CAP_SYS_ADMIN: u32 = 21;
    let missing: Vec<&str> = [
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| effective & (1 << bit) == 0)
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "without {} the agent cannot open and enter other containers' network namespaces",
            missing.join(" and ")
        ))
    }
}

/// `LIVE_CONNS` as (socket address, connection id, namespace inode), walked in batches.
fn live_entries(ebpf: &Ebpf) -> Result<Vec<(u64, u64, u32)>, String> {
    let Some(Map::HashMap(data)) = ebpf.map(names::LIVE_CONNS) else {
        return Err(format!("no hash map {}", names::LIVE_CONNS));
    };
    let mut out = Vec::new();
    batch::for_each::<u64, LiveConn>(data.fd().as_fd(), |keys, values| {
        out.extend(
            keys.iter()
                .zip(values)
                .map(|(k, v)| (*k, v.conn_id, v.netns)),
        );
    })
    .map_err(|e| format!("walking {}: {e}", names::LIVE_CONNS))?;
    Ok(out)
}

/// Of the entries `before` the walk, those whose socket the walk of their namespace did not
/// meet: gone. Each is looked up again and removed only if it is still the same connection (a
/// new socket at the same address replaces it). Returns how many were removed.
fn drop_unmet(
    ebpf: &mut Ebpf,
    before: &[(u64, u64, u32)],
    met: &[u64],
    walked: &[u64],
) -> Result<usize, String> {
    let gone = unmet(before, met, walked);
    if gone.is_empty() {
        return Ok(0);
    }
    let map = ebpf
        .map_mut(names::LIVE_CONNS)
        .ok_or_else(|| format!("no map {}", names::LIVE_CONNS))?;
    let mut map: BpfHashMap<&mut MapData, u64, LiveConn> =
        BpfHashMap::try_from(map).map_err(|e| e.to_string())?;
    let mut dropped = 0;
    for (sk, conn_id) in gone {
        if map.get(&sk, 0).is_ok_and(|c| c.conn_id == conn_id) && map.remove(&sk).is_ok() {
            dropped += 1;
        }
    }
    Ok(dropped)
}

/// The (socket address, connection id) of the entries `before` the walk that belong to a
/// namespace it `walked` and whose socket it did not `met`.
fn unmet(before: &[(u64, u64, u32)], met: &[u64], walked: &[u64]) -> Vec<(u64, u64)> {
    let met: std::collections::HashSet<u64> = met.iter().copied().collect();
    let walked: std::collections::HashSet<u64> = walked.iter().copied().collect();
    before
        .iter()
        .filter(|(sk, _, netns)| {
            *netns != 0 && walked.contains(&u64::from(*netns)) && !met.contains(sk)
        })
        .map(|(sk, id, _)| (*sk, *id))
        .collect()
}

/// One walk of the TCP sockets of the calling thread's network namespace; the addresses of
/// the sockets it met in `LIVE_CONNS` are added to `met`.
fn walk_once(iter: &mut Iter, met: &mut Vec<u64>) -> Result<(), String> {
    use std::io::Read;
    let link_id = iter
        .attach()
        .map_err(|e| format!("attach: {}", error_chain(&e)))?;
    let link = iter
        .take_link(link_id)
        .map_err(|e| format!("link: {}", error_chain(&e)))?;
    let mut file = link
        .into_file()
        .map_err(|e| format!("iterator file: {}", error_chain(&e)))?;
    // Reading runs the walk; the program writes each address as 8 bytes.
    let mut out = Vec::new();
    file.read_to_end(&mut out)
        .map_err(|e| format!("running the walk: {e}"))?;
    met.extend(
        out.chunks_exact(8)
            .filter_map(|b| b.try_into().ok().map(u64::from_ne_bytes)),
    );
    Ok(())
}

/// The inode of the agent's own network namespace.
fn own_netns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino())
}

/// The walk's coverage after the network namespace files `refused` could not be opened, and
/// their namespaces were not found among those walked ([`unresolved_refusals`]). With
/// CAP_SYS_PTRACE (checked in `sees_every_process`) only a security module refuses
/// (AppArmor's container profiles let a container read only processes under the same
/// profile; SELinux; a sandbox guarding its init): a namespace no process led the walk to,
/// where a container would have its open connections missing from its report.
fn refusals(refused: &[std::path::PathBuf]) -> Result<(), String> {
    let Some(first) = refused.first() else {
        return Ok(());
    };
    // The process, by name, for the operator to look up.
    let comm = proc_dir_of(first)
        .and_then(|pid| std::fs::read_to_string(pid.join("comm")).ok())
        .map(|c| format!(" ({})", c.trim()))
        .unwrap_or_default();
    Err(format!(
        "the network namespace of {} process(es) could not be opened, e.g. {}{comm} \
         (permission denied: a security module such as AppArmor or SELinux refuses it; run \
         the agent unconfined by it)",
        refused.len(),
        first.display()
    ))
}

/// The network namespaces other than the agent's own it can open (by `/run/netns` and the
/// processes it sees), and the namespace files it was refused (permission) whose namespace is
/// none of those (see [`unresolved_refusals`]).
fn other_netns() -> (Vec<(u64, std::fs::File)>, Vec<std::path::PathBuf>) {
    use std::os::unix::fs::MetadataExt;
    let Some(own) = own_netns() else {
        return (Vec::new(), Vec::new());
    };
    let mut refused = Vec::new();
    // The processes whose namespace file opened: where a refused one's namespace is looked for.
    let mut opened: Vec<std::path::PathBuf> = Vec::new();
    let mut seen = std::collections::HashSet::from([own]);
    let mut candidates: Vec<std::path::PathBuf> = Vec::new();
    for dir in ["/run/netns", "/var/run/netns"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            candidates.extend(entries.flatten().map(|e| e.path()));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        candidates.extend(
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .map(|e| e.path().join("ns/net")),
        );
    }
    let found = candidates
        .into_iter()
        .filter_map(|path| {
            let file = match std::fs::File::open(&path) {
                Ok(file) => file,
                Err(e) => {
                    // A process that exited meanwhile is no namespace missed.
                    if e.kind() == std::io::ErrorKind::PermissionDenied {
                        refused.push(path.clone());
                    }
                    return None;
                }
            };
            // A file of `/run/netns` that is not (yet, or any more) a namespace's bind mount:
            // `ip netns add` creates it before mounting the namespace over it.
            if !is_nsfs(&file) {
                return None;
            }
            if let Some(dir) = proc_dir_of(&path) {
                opened.push(dir.to_path_buf());
            }
            // The inode of what was opened (a namespace file's inode is its namespace's).
            let ino = file.metadata().ok()?.ino();
            if !seen.insert(ino) {
                return None;
            }
            Some((ino, file))
        })
        .collect();
    (found, unresolved_refusals(refused, &opened))
}

/// `/proc/<pid>` of a `/proc/<pid>/ns/net` path (`None` for `/run/netns` files).
fn proc_dir_of(ns_path: &std::path::Path) -> Option<&std::path::Path> {
    ns_path
        .parent()
        .and_then(std::path::Path::parent)
        .filter(|d| d.parent() == Some(std::path::Path::new("/proc")))
}

/// Which network namespace the process of `proc_dir` (`/proc/<pid>`) is in, readable without
/// the ptrace access its `ns/net` takes: the inode of its `net/tcp`, an entry each network
/// namespace has its own of (procfs numbers it when the namespace is made).
fn netns_key(proc_dir: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(proc_dir.join("net/tcp")).map(|m| m.ino())
}

/// Of the namespace files the walk was refused, those whose namespace it does not reach
/// otherwise. A process that refuses (e.g. a sandbox's PID 1, which even root may not read)
/// is usually in a namespace the walk reached through another process or its own: its
/// `net/tcp` has the same inode as theirs. One whose namespace cannot be told, or is none
/// of those, is a namespace missed; one that exited meanwhile is not.
fn unresolved_refusals(
    refused: Vec<std::path::PathBuf>,
    opened: &[std::path::PathBuf],
) -> Vec<std::path::PathBuf> {
    if refused.is_empty() {
        return refused;
    }
    let mut missed = Vec::new();
    let mut wanted: Vec<(std::path::PathBuf, u64)> = Vec::new();
    for path in refused {
        match proc_dir_of(&path).map(netns_key) {
            Some(Ok(key)) => wanted.push((path, key)),
            Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Some(Err(_)) | None => missed.push(path),
        }
    }
    // The agent's own namespace (walked first), then those of the processes it entered by,
    // until every refused one is found.
    let mut covered: std::collections::HashSet<u64> = netns_key(std::path::Path::new("/proc/self"))
        .into_iter()
        .collect();
    for dir in opened {
        if wanted.iter().all(|(_, key)| covered.contains(key)) {
            break;
        }
        if let Ok(key) = netns_key(dir) {
            covered.insert(key);
        }
    }
    missed.extend(
        wanted
            .into_iter()
            .filter(|(_, key)| !covered.contains(key))
            .map(|(path, _)| path),
    );
    missed
}

/// Whether `file` is a namespace (on nsfs).
fn is_nsfs(file: &std::fs::File) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    // SAFETY: fstatfs on an open fd into a zeroed struct of the right type.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    r == 0 && st.f_type as i64 == NSFS_MAGIC
}

/// The result of removing a key from map `name`, where a missing key is no error.
fn removed_or_missing(
    name: &'static str,
    res: Result<(), aya::maps::MapError>,
) -> Result<(), ProbeError> {
    match res {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        // The kernel's answer for a missing key.
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(source) => Err(ProbeError::Map { name, source }),
    }
}

/// One attached program: what detaches it (`Probes::set_attached`).
#[derive(Debug)]
enum Link {
    TracePoint(TracePointLinkId),
    BtfTracePoint(BtfTracePointLinkId),
}

/// A program attached at load, with what attaches it again.
#[derive(Debug)]
struct Attachment {
    /// The probe's name in `PROBES`.
    probe: &'static str,
    spec: &'static ProbeSpec,
    /// Its name in the object (the spec's, or the variant the kernel needs).
    program: &'static str,
    link: Option<Link>,
}

/// Loads `program` (unless it is loaded) and attaches it where `spec` says.
fn attach(
    ebpf: &mut Ebpf,
    spec: &ProbeSpec,
    program: &str,
    btf: Option<&aya::Btf>,
) -> Result<Link, String> {
    let program = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} is not in the object"))?;
    let loaded = program.fd().is_ok();
    match spec.attach {
        AttachPoint::TracePoint { category, name } => {
            let tp: &mut TracePoint = program.try_into().map_err(|e| format!("{e}"))?;
            if !loaded {
                tp.load()
                    .map_err(|e| format!("load: {}", error_chain(&e)))?;
            }
            tp.attach(category, name)
                .map(Link::TracePoint)
                .map_err(|e| format!("attach: {}", error_chain(&e)))
        }
        AttachPoint::BtfTracePoint { name } => {
            let tp: &mut BtfTracePoint = program.try_into().map_err(|e| format!("{e}"))?;
            if !loaded {
                let btf = btf.ok_or("kernel BTF could not be read by the loader")?;
                tp.load(name, btf)
                    .map_err(|e| format!("load: {}", error_chain(&e)))?;
            }
            tp.attach()
                .map(Link::BtfTracePoint)
                .map_err(|e| format!("attach: {}", error_chain(&e)))
        }
    }
}

/// Detaches what `link` attached of `program`.
fn detach(ebpf: &mut Ebpf, program: &str, link: Link) -> Result<(), String> {
    let program = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} is not in the object"))?;
    match link {
        Link::TracePoint(id) => {
            let tp: &mut TracePoint = program.try_into().map_err(|e| format!("{e}"))?;
            tp.detach(id)
        }
        Link::BtfTracePoint(id) => {
            let tp: &mut BtfTracePoint = program.try_into().map_err(|e| format!("{e}"))?;
            tp.detach(id)
        }
    }
    .map_err(|e| format!("detach: {}", error_chain(&e)))
}

/// An error with its sources, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

pub use crate::clock::{boot_ns, wall_ns};

/// How often userspace drains the TCP events' ring, which the kernel fills without waking it
/// (it wakes it only when half full). Short enough that a report is never held up by it.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Decodes everything waiting in both rings, in time order: a stop signal (control ring) is
/// handled before the TCP events it made the kernel send (TCP ring).
fn drain_rings(
    ring: &mut RingBuf<MapData>,
    control: &mut RingBuf<MapData>,
    decoder: &Decoder,
) -> Vec<Result<Event, DecodeError>> {
    let mut out = Vec::new();
    while let Some(item) = control.next() {
        out.push(decoder.decode(&item));
    }
    let from_control = out.len();
    while let Some(item) = ring.next() {
        out.push(decoder.decode(&item));
    }
    if from_control > 0 && out.len() > from_control {
        // Each ring is in order already: a stable sort by time merges them.
        out.sort_by_key(|e| e.as_ref().map_or(0, Event::ts_ns));
    }
    out
}

/// Events from the ring buffers.
pub struct EventStream {
    ring: RingBuf<MapData>,
    control: RingBuf<MapData>,
    decoder: Decoder,
}

impl EventStream {
    /// Takes every event waiting now, without blocking.
    pub fn drain(&mut self) -> Vec<Result<Event, DecodeError>> {
        drain_rings(&mut self.ring, &mut self.control, &self.decoder)
    }

    /// Waits (blocking the thread) up to `timeout` for a wake-up from either ring, then drains
    /// both. For tools and tests without an async runtime.
    pub fn wait(&mut self, timeout: std::time::Duration) -> Vec<Result<Event, DecodeError>> {
        let mut pfds = [
            libc::pollfd {
                fd: self.ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.control.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: two valid pollfds.
        unsafe { libc::poll(pfds.as_mut_ptr(), 2, ms) };
        self.drain()
    }

    /// An async stream for the tokio event loop.
    pub fn into_async(self) -> Result<AsyncEventStream, ProbeError> {
        let decoder = self.decoder;
        let register = |ring| {
            // SAFETY: the ring buffer owns its fd, and it stays open and the same for as long
            // as the AsyncFd owns the RingBuf.
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(|e| ProbeError::Poll(e.into_parts().1))
        };
        let ring = register(self.ring)?;
        let control = register(self.control)?;
        let mut timer = tokio::time::interval(DRAIN_INTERVAL);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(AsyncEventStream {
            ring,
            control,
            timer,
            decoder,
        })
    }
}

/// Events from the ring buffers, for the tokio event loop.
pub struct AsyncEventStream {
    ring: AsyncFd<RingBuf<MapData>>,
    control: AsyncFd<RingBuf<MapData>>,
    timer: tokio::time::Interval,
    decoder: Decoder,
}

impl AsyncEventStream {
    /// Waits for a control event, a half-full TCP ring or the drain timer, and returns all
    /// events that are ready — after each tick of the drain timer even when there are none:
    /// the caller then also takes what the kernel kept of watched connections
    /// (`Pipeline::take_kept`), which no event announces.
    pub async fn next_batch(&mut self) -> Result<Vec<Result<Event, DecodeError>>, ProbeError> {
        loop {
            let timer = tokio::select! {
                guard = self.control.readable_mut() => {
                    guard.map_err(ProbeError::Poll)?.clear_ready();
                    false
                }
                guard = self.ring.readable_mut() => {
                    guard.map_err(ProbeError::Poll)?.clear_ready();
                    false
                }
                _ = self.timer.tick() => true,
            };
            let out = drain_rings(self.ring.get_mut(), self.control.get_mut(), &self.decoder);
            if !out.is_empty() || timer {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_of_every_namespace_needs_ptrace_and_admin() {
        assert_eq!(missing_caps(0x1ff_ffff_ffff), Ok(()));
        let bpf_perfmon_only = (1 << 38) | (1 << 39);
        let e = missing_caps(bpf_perfmon_only).expect_err("both missing");
        assert!(e.contains("CAP_SYS_PTRACE and CAP_SYS_ADMIN"), "{e}");
        let e = missing_caps(1 << 21).expect_err("ptrace missing");
        assert!(e.contains("without CAP_SYS_PTRACE the"), "{e}");
    }

    #[test]
    fn a_refused_namespace_the_walk_reached_otherwise_is_not_missed() {
        let me = std::path::PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
        // In the agent's own namespace: reached.
        assert_eq!(
            unresolved_refusals(vec![me.clone()], &[]),
            Vec::<std::path::PathBuf>::new()
        );
        // A process that is gone: no namespace missed.
        let gone = std::path::PathBuf::from(format!("/proc/{}/ns/net", u32::MAX - 1));
        assert_eq!(
            unresolved_refusals(vec![gone], &[]),
            Vec::<std::path::PathBuf>::new()
        );
        // A named namespace file: which namespace it is cannot be told otherwise.
        let named = std::path::PathBuf::from("/run/netns/somewhere");
        assert_eq!(unresolved_refusals(vec![named.clone()], &[]), vec![named]);
        assert_eq!(proc_dir_of(&me).map(|d| d.join("ns/net")), Some(me.clone()));
        // A process in a network namespace of its own (a user namespace's, so no root is
        // needed): missed, unless a process the walk entered by is in it too.
        let mut other = std::process::Command::new("unshare")
            .args(["-rn", "sleep", "30"])
            .spawn()
            .expect("unshare -rn (util-linux)");
        let dir = std::path::PathBuf::from(format!("/proc/{}", other.id()));
        // Until unshare has made the namespace and exec'd sleep.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while netns_key(&dir).ok() == netns_key(std::path::Path::new("/proc/self")).ok()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let ns = dir.join("ns/net");
        let missed = unresolved_refusals(vec![ns.clone(), me.clone()], &[]);
        let reached = unresolved_refusals(vec![ns.clone()], std::slice::from_ref(&dir));
        let _ = other.kill();
        let _ = other.wait();
        assert_eq!(missed, vec![ns]);
        assert_eq!(reached, Vec::<std::path::PathBuf>::new());
    }

    #[test]
    fn a_namespace_the_walk_was_refused_is_a_namespace_missed() {
        assert_eq!(refusals(&[]), Ok(()));
        let refused: Vec<std::path::PathBuf> = ["/proc/7/ns/net", "/proc/8/ns/net", "/run/netns/x"]
            .into_iter()
            .map(Into::into)
            .collect();
        let e = refusals(&refused).expect_err("refused");
        assert!(
            e.contains("of 3 process(es) could not be opened, e.g. /proc/7/ns/net"),
            "{e}"
        );
        // The first reason the walk falls short stands.
        let no_caps = missing_caps(0);
        assert_eq!(no_caps.clone().and(refusals(&refused)), no_caps);
    }

    #[test]
    fn a_walk_is_due_after_the_tcp_probe_skipped_runs_at_most_every_sweep_interval() {
        let now = Instant::now();
        let mut s = SkippedRuns::default();
        assert!(!s.sweep_due(0, now), "nothing skipped");
        assert!(s.sweep_due(1, now), "the first skip");
        s.swept_at = 1;
        s.last_sweep = Some(now);
        assert!(!s.sweep_due(1, now + SWEEP_EVERY), "no new skip");
        assert!(
            !s.sweep_due(3, now + SWEEP_EVERY / 2),
            "too soon after the last walk"
        );
        assert!(s.sweep_due(3, now + SWEEP_EVERY));
        let runs = [
            (HOT_PROBE_BTF.program.to_string(), 2),
            (HOT_PROBE.to_string(), 1),
            ("signal_generate".to_string(), 5),
        ];
        assert_eq!(tcp_probe_runs(&runs), 3);
    }

    #[test]
    fn entries_the_walk_did_not_meet_are_gone_only_in_the_namespaces_it_walked() {
        // (socket, connection id, namespace)
        let before = [
            (0x10, 1, 7), // met: open
            (0x20, 2, 7), // not met, in a walked namespace: gone
            (0x30, 3, 9), // not met, namespace not walked: unknown, kept
            (0x40, 4, 0), // namespace unknown: kept
        ];
        assert_eq!(unmet(&before, &[0x10, 0x99], &[7]), vec![(0x20, 2)]);
        // A walk that met nothing of a namespace it walked: all of that namespace's are gone.
        assert_eq!(
            unmet(&before, &[], &[7, 9]),
            vec![(0x10, 1), (0x20, 2), (0x30, 3)]
        );
        // No namespace walked: nothing can be judged.
        assert!(unmet(&before, &[], &[]).is_empty());
    }

    #[test]
    fn signal_masks() {
        let sig = Signal::from_kernel;
        assert_eq!(signal_mask(&[Signal::TERM]), 1 << 15);
        assert_eq!(signal_mask(&[sig(0), sig(64), sig(99)]), 0);
        assert_eq!(
            signal_mask(&[Signal::HUP, Signal::KILL]),
            (1 << 1) | (1 << 9)
        );
    }

    #[test]
    fn the_hot_probe_uses_its_btf_tracepoint_only_with_what_it_reads() {
        use termscope_common::{ActivityOffsets, KernelOffsets, LegacyOffsets};
        let mut offsets = KernelOffsets::MISSING;
        offsets.sk_protocol = 516;
        let kernel = offsets::ResolvedKernel {
            offsets,
            activity: ActivityOffsets::MISSING,
            legacy: LegacyOffsets::MISSING,
            features: feature::SOCK_TUPLE | feature::SOCK_CGROUP,
            unresolved: vec![],
        };
        let support = KernelSupport {
            btf: Ok(()),
            tracefs: Ok("/sys/kernel/tracing".into()),
            kernel: Some(kernel.clone()),
            tracepoints: None,
            btf_tracepoints: vec![HOT_PROBE],
            reset_reasons: vec![],
        };
        assert_eq!(support.hot_probe_btf(), Ok(()));

        let without_typedef = KernelSupport {
            btf_tracepoints: vec![],
            ..support.clone()
        };
        assert_eq!(
            without_typedef.hot_probe_btf(),
            Err("kernel has no BTF tracepoint inet_sock_set_state".into())
        );
        let mut no_protocol = support.clone();
        if let Some(k) = &mut no_protocol.kernel {
            k.offsets.sk_protocol = OFFSET_MISSING;
        }
        assert!(
            no_protocol
                .hot_probe_btf()
                .is_err_and(|e| e.contains("sk_protocol"))
        );
        let mut no_tuple = support.clone();
        if let Some(k) = &mut no_tuple.kernel {
            k.features = feature::SOCK_CGROUP;
        }
        assert!(
            no_tuple
                .hot_probe_btf()
                .is_err_and(|e| e.contains("sock_common"))
        );
        let no_btf = KernelSupport {
            btf: Err("no /sys/kernel/btf/vmlinux".into()),
            ..support.clone()
        };
        assert!(
            no_btf
                .hot_probe_btf()
                .is_err_and(|e| e.contains("no kernel BTF"))
        );
        // The BTF program lacks what the tracepoint program would lack (here: the exit and
        // activity features), nothing about record fields.
        assert_eq!(
            support.lacking(HOT_PROBE_BTF.wanted_features),
            vec![
                "exit code and PF_EXITING (task_struct) unavailable".to_string(),
                "idle / in flight at a close (tcp_sock sequence numbers) unavailable".to_string()
            ]
        );
    }

    #[test]
    fn probes_without_their_fields_are_disabled_with_the_reason() {
        let support = KernelSupport {
            btf: Ok(()),
            tracefs: Ok("/sys/kernel/tracing".into()),
            kernel: None,
            tracepoints: Some(offsets::resolve_tracepoints(|c, n| {
                Err(format!("{c}/{n} does not exist"))
            })),
            btf_tracepoints: vec![],
            reset_reasons: vec![],
        };
        let by_name = |name: &str| {
            PROBES
                .iter()
                .find(|p| p.program == name)
                .map(|p| support.check(p))
                .expect("probe exists")
        };
        let (disabled, _) = by_name("inet_sock_set_state");
        assert!(
            disabled
                .as_deref()
                .is_some_and(|r| r.contains("sock/inet_sock_set_state:skaddr")),
            "{disabled:?}"
        );
        let (disabled, _) = by_name("signal_generate");
        assert_eq!(
            disabled.as_deref(),
            Some("kernel has no BTF tracepoint signal_generate")
        );
        // sched_process_exit needs no field: it runs, degraded without task offsets.
        let (disabled, degraded) = by_name("sched_process_exit");
        assert_eq!(disabled, None);
        assert_eq!(
            degraded,
            vec!["exit code and PF_EXITING (task_struct) unavailable"]
        );
    }
}
