//! Ring buffer records to typed events.
//!
//! Every record starts with [`EventHeader`]; its `kind` says which struct follows. Decoding
//! checks the length before reading, so a short or unknown record is an error, never a panic.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use crate::{signal::Signal, terminations::named::named_enum};
use serde::{Deserialize, Deserializer, Serialize};
use termscope_common::{
    EventHeader, ExecEvent, ExitEvent, KeptConn, RESET_RECEIVED, SignalDeliverEvent, SignalEvent,
    TcpResetEvent, TcpStateEvent, Tuple, flags, kind, tcp_state,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need} bytes of a {what}")]
    Short {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
}

/// Reads a `T` from the start of `bytes` (unaligned), checking the length.
fn read<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            what,
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: the length is checked above, `T` is a plain-old-data `#[repr(C)]` type from
    // termscope-common made only of integers, so every bit pattern is valid.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// A task as the kernel names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

impl Task {
    fn current(h: &EventHeader) -> Self {
        Task {
            pid: h.pid,
            tgid: h.tgid,
            comm: comm(&h.comm),
        }
    }
}

named_enum! {
    /// What the kernel did with a generated signal (`TRACE_SIGNAL_*`), as the events and the
    /// report (`stop_signals[].result`) name it. A number the kernel adds later is `unknown`;
    /// a name this agent does not know (read from a newer agent's report) is kept as `Other`.
    pub enum SignalResult expecting "what the kernel did with a signal (a string)" {
        Delivered = "delivered",
        Ignored = "ignored",
        AlreadyPending = "already_pending",
        Lost = "lost",
        LostInfo = "lost_info",
        Unknown = "unknown",
    }
}

impl SignalResult {
    fn from_raw(v: u32) -> Self {
        match v {
            0 => Self::Delivered,
            1 => Self::Ignored,
            2 => Self::AlreadyPending,
            3 => Self::Lost,
            4 => Self::LostInfo,
            _ => Self::Unknown,
        }
    }
}

/// How a task took a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// `SIG_DFL`: the default action (for SIGTERM: the process dies at once).
    Default,
    /// `SIG_IGN`.
    Ignored,
    /// The application's own handler.
    Handler,
}

/// How a process ended, from `task->exit_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum ExitStatus {
    /// `exit(code)` or returning from main.
    Exited {
        code: i32,
    },
    /// Killed by a signal.
    Signaled {
        #[serde(with = "crate::signal::number")]
        signal: Signal,
        core_dumped: bool,
    },
    Unknown,
}

impl ExitStatus {
    pub fn from_raw(exit_code: i32) -> Self {
        if exit_code < 0 {
            return Self::Unknown;
        }
        let sig = (exit_code & 0x7f) as u32;
        if sig == 0 {
            Self::Exited {
                code: (exit_code >> 8) & 0xff,
            }
        } else {
            Self::Signaled {
                signal: Signal::from_kernel(sig),
                core_dumped: exit_code & 0x80 != 0,
            }
        }
    }
}

/// A TCP state (`include/net/tcp_states.h`), from the kernel's number: the rules compare
/// these; the name (`ESTABLISHED`, ...) exists only in JSON (`--print-events`, the restart
/// journal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    /// 0: no state (a reset with no socket).
    None,
    /// A number this agent does not know.
    Unknown,
}

impl TcpState {
    /// Every state, in the kernel's order.
    pub const ALL: [TcpState; 14] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
        TcpState::None,
        TcpState::Unknown,
    ];

    /// The state the kernel numbers `state`.
    pub fn from_kernel(state: u8) -> Self {
        match state {
            tcp_state::ESTABLISHED => TcpState::Established,
            tcp_state::SYN_SENT => TcpState::SynSent,
            tcp_state::SYN_RECV => TcpState::SynRecv,
            tcp_state::FIN_WAIT1 => TcpState::FinWait1,
            tcp_state::FIN_WAIT2 => TcpState::FinWait2,
            tcp_state::TIME_WAIT => TcpState::TimeWait,
            tcp_state::CLOSE => TcpState::Close,
            tcp_state::CLOSE_WAIT => TcpState::CloseWait,
            tcp_state::LAST_ACK => TcpState::LastAck,
            tcp_state::LISTEN => TcpState::Listen,
            tcp_state::CLOSING => TcpState::Closing,
            tcp_state::NEW_SYN_RECV => TcpState::NewSynRecv,
            0 => TcpState::None,
            _ => TcpState::Unknown,
        }
    }

    /// Its name, as the kernel's headers spell it.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
            TcpState::None => "NONE",
            TcpState::Unknown => "UNKNOWN",
        }
    }

    /// The container closing (or aborting) a connection that was open or that the peer had
    /// closed first: the transitions at which the kernel reads [`CloseActivity`].
    pub fn is_close(old: TcpState, new: TcpState) -> bool {
        matches!(old, TcpState::Established | TcpState::CloseWait)
            && matches!(
                new,
                TcpState::FinWait1 | TcpState::LastAck | TcpState::Close
            )
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for TcpState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A state read back (the restart journal) by its name; a name the agent never writes is
/// an error.
impl<'de> Deserialize<'de> for TcpState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        TcpState::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown TCP state {name:?}")))
    }
}

/// A connection's addresses, local side first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Addrs {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl Addrs {
    pub fn from_raw(t: &Tuple) -> Self {
        let ip = |raw: &[u8; 16]| -> IpAddr {
            if t.family == 10 {
                IpAddr::V6(Ipv6Addr::from(*raw))
            } else {
                IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
            }
        };
        Addrs {
            local: SocketAddr::new(ip(&t.local_addr), t.local_port),
            remote: SocketAddr::new(ip(&t.remote_addr), t.remote_port),
        }
    }
}

/// Connection facts gathered in the kernel over its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnFlags {
    pub inbound: bool,
    pub closed_by_exit: bool,
    pub reset_sent: bool,
    pub reset_received: bool,
    /// The kernel had no record of the connection's opening (it predates the agent).
    pub untracked: bool,
    /// The state change ran in a task of the socket's own cgroup (process context).
    pub in_owner_task: bool,
}

impl ConnFlags {
    fn from_raw(f: u32) -> Self {
        ConnFlags {
            inbound: f & flags::INBOUND != 0,
            closed_by_exit: f & flags::CLOSED_BY_EXIT != 0,
            reset_sent: f & flags::RESET_SENT != 0,
            reset_received: f & flags::RESET_RECEIVED != 0,
            untracked: f & flags::UNTRACKED != 0,
            in_owner_task: f & flags::IN_OWNER_TASK != 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalGenerated {
    pub ts_ns: u64,
    /// In JSON `signal` (the number) and `signal_name`.
    #[serde(flatten, with = "crate::signal::number_and_name")]
    pub signal: Signal,
    /// `si_code`: 0 from kill(2), 0x80 from the kernel, -6 from tkill/tgkill.
    pub code: i32,
    pub group: bool,
    pub result: SignalResult,
    pub sender: Task,
    pub sender_cgroup_id: u64,
    pub target: Task,
    pub target_cgroup_id: u64,
    pub target_netns: u32,
    /// This signal made the kernel start watching the target's cgroup.
    pub watch_opened: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalDelivered {
    pub ts_ns: u64,
    pub task: Task,
    pub cgroup_id: u64,
    /// In JSON `signal` (the number) and `signal_name`.
    #[serde(flatten, with = "crate::signal::number_and_name")]
    pub signal: Signal,
    pub disposition: Disposition,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessExit {
    pub ts_ns: u64,
    pub task: Task,
    pub cgroup_id: u64,
    pub exit: ExitStatus,
    pub raw_exit_code: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessExec {
    pub ts_ns: u64,
    /// The task, with the comm of the program it now runs.
    pub task: Task,
    pub cgroup_id: u64,
    /// The executed file (truncated to 63 bytes).
    pub filename: String,
}

/// A socket's sequence numbers as it was closed ([`termscope_common::SockActivity`]): the
/// engine's `terminations::activity` decides from them what was in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseActivity {
    pub rcv_nxt: u32,
    pub copied_seq: u32,
    pub snd_wl1: u32,
    pub write_seq: u32,
    pub snd_una: u32,
    /// Microseconds since the socket's last segment either way.
    pub quiet_us: u32,
}

impl CloseActivity {
    fn from_raw(a: &termscope_common::SockActivity) -> Option<Self> {
        (a.valid != 0).then_some(CloseActivity {
            rcv_nxt: a.rcv_nxt,
            copied_seq: a.copied_seq,
            snd_wl1: a.snd_wl1,
            write_seq: a.write_seq,
            snd_una: a.snd_una,
            quiet_us: a.quiet_us,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpStateChange {
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub conn_id: u64,
    pub sk: u64,
    pub addrs: Addrs,
    pub old_state: TcpState,
    pub new_state: TcpState,
    pub established_ns: u64,
    pub netns: u32,
    pub flags: ConnFlags,
    /// `current` when the change happened (unrelated to the socket in softirq context).
    pub task: Task,
    /// At a close transition, when the kernel could read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<CloseActivity>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetDirection {
    Sent,
    Received,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpReset {
    pub ts_ns: u64,
    /// 0 when no socket owns the connection (`no_socket`).
    pub cgroup_id: u64,
    pub conn_id: u64,
    pub direction: ResetDirection,
    /// `enum sk_rst_reason` as the kernel names it, lower-case without the prefix
    /// (e.g. `no_socket`, `tcp_unexpected_data`); sent resets only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub reason_code: u32,
    /// The reset answered a segment for which there was no socket (e.g. SYN to a closed port).
    pub no_socket: bool,
    pub state: TcpState,
    pub addrs: Addrs,
    pub netns: u32,
    pub flags: ConnFlags,
    pub task: Task,
}

/// The container's close of a kept connection ([`KeptConnection::close`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptClose {
    pub ts_ns: u64,
    /// The close came after the peer's FIN (the socket was in CLOSE_WAIT).
    pub peer_closed_first: bool,
    /// What was in flight, when the kernel could read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<CloseActivity>,
    /// The closing process, when the close ran in a task of the socket's own cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closer_tgid: Option<u32>,
}

/// What the kernel kept of a watched cgroup's connection (`KEPT_CONNS`): the connection and
/// what happened to it so far. The same facts as its state-change and reset events, which the
/// ring may not have carried; the engine merges both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptConnection {
    pub cgroup_id: u64,
    pub conn_id: u64,
    pub addrs: Addrs,
    pub established_ns: u64,
    pub netns: u32,
    pub flags: ConnFlags,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close: Option<KeptClose>,
    /// When the socket reached CLOSE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_ns: Option<u64>,
    /// The kernel's reason for a reset sent on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_reason: Option<String>,
}

impl KeptConnection {
    /// When the record last changed, as far as it says (boot ns; 0 when it has no time:
    /// a connection older than the programs, not closed yet).
    pub fn last_change_ns(&self) -> u64 {
        let close = self.close.as_ref().map_or(0, |c| c.ts_ns);
        self.established_ns
            .max(close)
            .max(self.closed_ns.unwrap_or(0))
    }
}

/// A decoded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Signal(SignalGenerated),
    SignalDelivered(SignalDelivered),
    ProcessExit(ProcessExit),
    ProcessExec(ProcessExec),
    TcpState(TcpStateChange),
    TcpReset(TcpReset),
}

impl Event {
    /// Boot-time nanoseconds of the event.
    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::Signal(e) => e.ts_ns,
            Event::SignalDelivered(e) => e.ts_ns,
            Event::ProcessExit(e) => e.ts_ns,
            Event::ProcessExec(e) => e.ts_ns,
            Event::TcpState(e) => e.ts_ns,
            Event::TcpReset(e) => e.ts_ns,
        }
    }

    /// The cgroup the event is attributed to (0 when none).
    pub fn cgroup_id(&self) -> u64 {
        match self {
            Event::Signal(e) => e.target_cgroup_id,
            Event::SignalDelivered(e) => e.cgroup_id,
            Event::ProcessExit(e) => e.cgroup_id,
            Event::ProcessExec(e) => e.cgroup_id,
            Event::TcpState(e) => e.cgroup_id,
            Event::TcpReset(e) => e.cgroup_id,
        }
    }
}

pub use crate::clock::WallClock;

/// Decodes ring buffer records; knows the kernel's names for reset reasons.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    reset_reasons: HashMap<u32, String>,
}

impl Decoder {
    /// `reset_reasons`: the values of the kernel's `enum sk_rst_reason` (from BTF), names as
    /// the kernel spells them (`SK_RST_REASON_NO_SOCKET`).
    pub fn new(reset_reasons: impl IntoIterator<Item = (String, i64)>) -> Self {
        let reset_reasons = reset_reasons
            .into_iter()
            .filter_map(|(name, value)| {
                let value = u32::try_from(value).ok()?;
                let short = name
                    .strip_prefix("SK_RST_REASON_")
                    .unwrap_or(&name)
                    .to_ascii_lowercase();
                Some((value, short))
            })
            .collect();
        Decoder { reset_reasons }
    }

    /// A record of `KEPT_CONNS`.
    pub fn kept(&self, k: &KeptConn) -> KeptConnection {
        let f = k.conn.flags;
        let close = (f & flags::CLOSE_SEEN != 0).then(|| KeptClose {
            ts_ns: k.close_ns,
            peer_closed_first: f & flags::PEER_CLOSED_FIRST != 0,
            activity: CloseActivity::from_raw(&k.activity),
            closer_tgid: (k.closer_tgid != 0).then_some(k.closer_tgid),
        });
        KeptConnection {
            cgroup_id: k.conn.cgroup_id,
            conn_id: k.conn.conn_id,
            addrs: Addrs::from_raw(&k.conn.tuple),
            established_ns: k.conn.established_ns,
            netns: k.conn.netns,
            flags: ConnFlags::from_raw(f),
            close,
            closed_ns: (f & flags::CLOSED != 0).then_some(k.closed_ns),
            reset_reason: (k.reset_reason != 0)
                .then(|| self.reset_reasons.get(&k.reset_reason).cloned())
                .flatten(),
        }
    }

    pub fn decode(&self, bytes: &[u8]) -> Result<Event, DecodeError> {
        let h: EventHeader = read(bytes, "event header")?;
        match h.kind {
            kind::SIGNAL_GENERATE => {
                let e: SignalEvent = read(bytes, "signal event")?;
                Ok(Event::Signal(SignalGenerated {
                    ts_ns: h.ts_ns,
                    signal: Signal::from_kernel(e.sig),
                    code: e.code,
                    group: e.group != 0,
                    result: SignalResult::from_raw(e.result),
                    sender: Task::current(&h),
                    sender_cgroup_id: e.sender_cgroup_id,
                    target: Task {
                        pid: e.target_pid,
                        tgid: e.target_tgid,
                        comm: comm(&e.target_comm),
                    },
                    target_cgroup_id: h.cgroup_id,
                    target_netns: e.target_netns,
                    watch_opened: h.flags & flags::WATCH_OPENED != 0,
                }))
            }
            kind::SIGNAL_DELIVER => {
                let e: SignalDeliverEvent = read(bytes, "signal delivery event")?;
                Ok(Event::SignalDelivered(SignalDelivered {
                    ts_ns: h.ts_ns,
                    task: Task::current(&h),
                    cgroup_id: h.cgroup_id,
                    signal: Signal::from_kernel(e.sig),
                    disposition: match e.sa_handler {
                        0 => Disposition::Default,
                        1 => Disposition::Ignored,
                        _ => Disposition::Handler,
                    },
                }))
            }
            kind::PROCESS_EXIT => {
                let e: ExitEvent = read(bytes, "exit event")?;
                Ok(Event::ProcessExit(ProcessExit {
                    ts_ns: h.ts_ns,
                    task: Task::current(&h),
                    cgroup_id: h.cgroup_id,
                    exit: ExitStatus::from_raw(e.exit_code),
                    raw_exit_code: e.exit_code,
                }))
            }
            kind::PROCESS_EXEC => {
                let e: ExecEvent = read(bytes, "exec event")?;
                let end = e
                    .filename
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(e.filename.len());
                Ok(Event::ProcessExec(ProcessExec {
                    ts_ns: h.ts_ns,
                    task: Task::current(&h),
                    cgroup_id: h.cgroup_id,
                    filename: String::from_utf8_lossy(&e.filename[..end]).into_owned(),
                }))
            }
            kind::TCP_STATE => {
                let e: TcpStateEvent = read(bytes, "TCP state event")?;
                Ok(Event::TcpState(TcpStateChange {
                    ts_ns: h.ts_ns,
                    cgroup_id: h.cgroup_id,
                    conn_id: e.conn_id,
                    sk: e.skaddr,
                    addrs: Addrs::from_raw(&e.tuple),
                    old_state: TcpState::from_kernel(e.old_state),
                    new_state: TcpState::from_kernel(e.new_state),
                    established_ns: e.established_ns,
                    netns: e.netns,
                    flags: ConnFlags::from_raw(h.flags),
                    task: Task::current(&h),
                    activity: CloseActivity::from_raw(&e.activity),
                }))
            }
            kind::TCP_RESET => {
                let e: TcpResetEvent = read(bytes, "TCP reset event")?;
                let direction = if e.direction == RESET_RECEIVED {
                    ResetDirection::Received
                } else {
                    ResetDirection::Sent
                };
                let no_socket = h.flags & flags::NO_SOCKET != 0;
                let reason = match direction {
                    // Kernels before 6.10 name no reasons; a reset without a socket is still
                    // known to be for that.
                    ResetDirection::Sent if self.reset_reasons.is_empty() && no_socket => {
                        Some("no_socket".to_string())
                    }
                    ResetDirection::Sent => self.reset_reasons.get(&e.reason).cloned(),
                    ResetDirection::Received => None,
                };
                Ok(Event::TcpReset(TcpReset {
                    ts_ns: h.ts_ns,
                    cgroup_id: h.cgroup_id,
                    conn_id: e.conn_id,
                    direction,
                    reason,
                    reason_code: e.reason,
                    no_socket,
                    state: TcpState::from_kernel(e.state),
                    addrs: Addrs::from_raw(&e.tuple),
                    netns: e.netns,
                    flags: ConnFlags::from_raw(h.flags),
                    task: Task::current(&h),
                }))
            }
            other => Err(DecodeError::UnknownKind(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_states_by_number_and_by_name() -> Result<(), serde_json::Error> {
        assert_eq!(
            TcpState::from_kernel(tcp_state::CLOSE_WAIT),
            TcpState::CloseWait
        );
        assert_eq!(TcpState::from_kernel(0), TcpState::None);
        assert_eq!(TcpState::from_kernel(200), TcpState::Unknown);
        for s in TcpState::ALL {
            let json = serde_json::to_string(&s)?;
            assert_eq!(json, format!("\"{}\"", s.name()));
            assert_eq!(serde_json::from_str::<TcpState>(&json)?, s);
        }
        // Every number the kernel uses has its own name.
        for n in 1..=tcp_state::NEW_SYN_RECV {
            assert_ne!(TcpState::from_kernel(n), TcpState::Unknown, "{n}");
        }
        assert!(serde_json::from_str::<TcpState>("\"ESTABLISHED_ISH\"").is_err());
        Ok(())
    }

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: T is a repr(C) POD type from termscope-common.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn header(kind: u32, flags: u32) -> EventHeader {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"runc");
        EventHeader {
            kind,
            flags,
            ts_ns: 42,
            cgroup_id: 7,
            pid: 100,
            tgid: 99,
            comm,
        }
    }

    #[test]
    fn decodes_a_signal() {
        let mut target_comm = [0u8; 16];
        target_comm.copy_from_slice(b"nginx: master pr");
        let e = SignalEvent {
            header: header(kind::SIGNAL_GENERATE, flags::WATCH_OPENED),
            sender_cgroup_id: 1,
            target_pid: 5,
            target_tgid: 5,
            target_comm,
            target_netns: 4026531840,
            sig: 15,
            code: 0,
            group: 1,
            result: 0,
            _pad: 0,
        };
        let ev = Decoder::default().decode(&bytes_of(&e)).expect("decodes");
        let Event::Signal(s) = ev else {
            panic!("not a signal: {ev:?}")
        };
        assert_eq!(s.signal, Signal::TERM);
        assert_eq!(s.sender.comm, "runc");
        assert_eq!(s.target.comm, "nginx: master pr"); // full 16 bytes, no NUL
        assert_eq!(s.target_cgroup_id, 7);
        assert!(s.group && s.watch_opened);
        assert_eq!(s.result, SignalResult::Delivered);
    }

    #[test]
    fn decodes_dispositions() {
        for (handler, want) in [
            (0, Disposition::Default),
            (1, Disposition::Ignored),
            (0x5555_1234, Disposition::Handler),
        ] {
            let e = SignalDeliverEvent {
                header: header(kind::SIGNAL_DELIVER, 0),
                sig: 15,
                code: 0,
                sa_handler: handler,
                sa_flags: 0,
            };
            match Decoder::default().decode(&bytes_of(&e)) {
                Ok(Event::SignalDelivered(d)) => assert_eq!(d.disposition, want),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(ExitStatus::from_raw(0), ExitStatus::Exited { code: 0 });
        assert_eq!(ExitStatus::from_raw(3 << 8), ExitStatus::Exited { code: 3 });
        assert_eq!(
            ExitStatus::from_raw(9),
            ExitStatus::Signaled {
                signal: Signal::KILL,
                core_dumped: false
            }
        );
        assert_eq!(
            ExitStatus::from_raw(0x80 | 6),
            ExitStatus::Signaled {
                signal: Signal::from_kernel(6),
                core_dumped: true
            }
        );
        assert_eq!(ExitStatus::from_raw(-1), ExitStatus::Unknown);
    }

    #[test]
    fn decodes_tcp_v4_and_v6() {
        let mut t = Tuple {
            family: 2,
            local_port: 80,
            remote_port: 50000,
            _pad: 0,
            local_addr: [0; 16],
            remote_addr: [0; 16],
        };
        t.local_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        t.remote_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let e = TcpStateEvent {
            header: header(kind::TCP_STATE, flags::INBOUND | flags::CLOSED_BY_EXIT),
            conn_id: 9,
            skaddr: 0xffff_8880_0000_1000,
            established_ns: 40,
            tuple: t,
            netns: 1,
            old_state: tcp_state::ESTABLISHED,
            new_state: tcp_state::FIN_WAIT1,
            _pad: [0; 2],
            activity: termscope_common::SockActivity {
                valid: 1,
                rcv_nxt: 100,
                copied_seq: 90,
                snd_wl1: 80,
                write_seq: 7,
                snd_una: 7,
                quiet_us: 3,
                _pad: 0,
            },
        };
        let Ok(Event::TcpState(s)) = Decoder::default().decode(&bytes_of(&e)) else {
            panic!("not decoded")
        };
        let a = s.activity.expect("activity");
        assert_eq!((a.rcv_nxt, a.copied_seq, a.snd_wl1), (100, 90, 80));
        assert_eq!(s.addrs.local.to_string(), "10.0.0.1:80");
        assert_eq!(s.addrs.remote.to_string(), "10.0.0.2:50000");
        assert_eq!(
            (s.old_state, s.new_state),
            (TcpState::Established, TcpState::FinWait1)
        );
        assert!(s.flags.inbound && s.flags.closed_by_exit && !s.flags.reset_sent);

        let mut t6 = t;
        t6.family = 10;
        t6.local_addr = Ipv6Addr::LOCALHOST.octets();
        t6.remote_addr = "fd00::2".parse::<Ipv6Addr>().expect("v6").octets();
        let r = TcpResetEvent {
            header: header(kind::TCP_RESET, flags::NO_SOCKET),
            conn_id: 0,
            skaddr: 0,
            tuple: t6,
            netns: 1,
            reason: 2,
            state: 0,
            direction: termscope_common::RESET_SENT,
            _pad: [0; 6],
        };
        let decoder = Decoder::new([
            ("SK_RST_REASON_NOT_SPECIFIED".to_string(), 0),
            ("SK_RST_REASON_NO_SOCKET".to_string(), 2),
        ]);
        let Ok(Event::TcpReset(r)) = decoder.decode(&bytes_of(&r)) else {
            panic!("not decoded")
        };
        assert_eq!(r.addrs.local.to_string(), "[::1]:80");
        assert_eq!(r.addrs.remote.to_string(), "[fd00::2]:50000");
        assert_eq!(r.reason.as_deref(), Some("no_socket"));
        assert!(r.no_socket);
        assert_eq!(r.direction, ResetDirection::Sent);
    }

    /// Kernels before 6.10 have no `enum sk_rst_reason`: a reset without a socket is still
    /// named `no_socket`, one with a socket has no reason.
    #[test]
    fn resets_without_kernel_reasons() {
        let mut r = TcpResetEvent {
            header: header(kind::TCP_RESET, flags::NO_SOCKET),
            direction: termscope_common::RESET_SENT,
            ..Default::default()
        };
        let d = Decoder::default();
        let Ok(Event::TcpReset(decoded)) = d.decode(&bytes_of(&r)) else {
            panic!("not decoded")
        };
        assert_eq!(decoded.reason.as_deref(), Some("no_socket"));
        r.header.flags = 0;
        let Ok(Event::TcpReset(decoded)) = d.decode(&bytes_of(&r)) else {
            panic!("not decoded")
        };
        assert_eq!(decoded.reason, None);
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let d = Decoder::default();
        assert!(matches!(d.decode(&[]), Err(DecodeError::Short { .. })));
        let h = header(kind::TCP_STATE, 0);
        assert!(matches!(
            d.decode(&bytes_of(&h)),
            Err(DecodeError::Short {
                what: "TCP state event",
                ..
            })
        ));
        let h = header(99, 0);
        assert_eq!(d.decode(&bytes_of(&h)), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn decodes_an_exec() {
        let mut filename = [0u8; termscope_common::FILENAME_LEN];
        filename[..15].copy_from_slice(b"/usr/sbin/nginx");
        let e = ExecEvent {
            header: header(kind::PROCESS_EXEC, 0),
            filename,
        };
        match Decoder::default().decode(&bytes_of(&e)) {
            Ok(Event::ProcessExec(x)) => {
                assert_eq!(x.filename, "/usr/sbin/nginx");
                assert_eq!(x.cgroup_id, 7);
            }
            other => panic!("{other:?}"),
        }
    }

    /// An exit event as the agent wrote it before signals were typed (`--print-events`, the
    /// state file) reads back, and writes out the same.
    #[test]
    fn an_exit_event_of_the_previous_agent_reads_back_the_same() {
        let old = r#"{"event":"process_exit","ts_ns":7,"task":{"pid":1,"tgid":1,"comm":"x"},"cgroup_id":5,"exit":{"how":"signaled","signal":9,"core_dumped":true},"raw_exit_code":137}"#;
        let ev: Event = serde_json::from_str(old).expect("event");
        let Event::ProcessExit(x) = &ev else {
            panic!("not an exit: {ev:?}")
        };
        assert_eq!(x.exit, ExitStatus::from_raw(137));
        assert_eq!(
            x.exit,
            ExitStatus::Signaled {
                signal: Signal::KILL,
                core_dumped: true
            }
        );
        assert_eq!(serde_json::to_string(&ev).expect("json"), old);
    }

    #[test]
    fn signal_results_round_trip() {
        let names = [
            "delivered",
            "ignored",
            "already_pending",
            "lost",
            "lost_info",
            "unknown",
        ];
        crate::terminations::named::assert_round_trips(
            SignalResult::ALL,
            &names,
            SignalResult::from_name,
        );
        for (raw, want) in (0..).zip(SignalResult::ALL) {
            assert_eq!(&SignalResult::from_raw(raw), want);
        }
        // A number the kernel adds later.
        assert_eq!(SignalResult::from_raw(5), SignalResult::Unknown);
    }
}
