//! Types shared by termscope's kernel programs (`termscope-ebpf`) and its userspace agent.
//!
//! Everything here is `#[repr(C)]` with explicit padding so that both sides agree on the
//! layout byte for byte. Every event starts with the same [`EventHeader`]; userspace reads the
//! header's `kind` to know which struct follows. With the `user` feature the types implement
//! `aya::Pod` so the agent can put them into maps and globals.
#![no_std]

/// Length of a task's `comm` in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// A field offset (in a kernel struct or a tracepoint record) that could not be resolved on the
/// running kernel. Programs skip reads at this offset; the feature that needs it is turned off.
pub const OFFSET_MISSING: u32 = u32::MAX;

/// Kinds of event in the ring buffer (`EventHeader::kind`).
pub mod kind {
    /// [`crate::SignalEvent`]: a signal was generated (`signal:signal_generate`).
    pub const SIGNAL_GENERATE: u32 = 1;
    /// [`crate::SignalDeliverEvent`]: a task took a signal (`signal:signal_deliver`).
    pub const SIGNAL_DELIVER: u32 = 2;
    /// [`crate::ExitEvent`]: a task exited (`sched:sched_process_exit`).
    pub const PROCESS_EXIT: u32 = 3;
    /// [`crate::TcpStateEvent`]: a TCP socket changed state (`sock:inet_sock_set_state`).
    pub const TCP_STATE: u32 = 4;
    /// [`crate::TcpResetEvent`]: a TCP reset was sent or received.
    pub const TCP_RESET: u32 = 5;
    /// [`crate::ExecEvent`]: a task in a watched cgroup executed a program
    /// (`sched:sched_process_exec`), e.g. an exec preStop hook.
    pub const PROCESS_EXEC: u32 = 6;
}

/// Bytes of an executed program's path kept in [`ExecEvent`].
pub const FILENAME_LEN: usize = 64;

/// Bits of [`Config::features`]: what userspace could resolve on this kernel. A program that
/// needs a feature whose bit is clear does without it (and userspace reports it in `doctor`).
pub mod feature {
    /// `task_struct -> cgroups -> dfl_cgrp -> kn -> id`: the cgroup v2 id of a non-current task.
    pub const TASK_CGROUP: u64 = 1 << 0;
    /// `sock -> sk_cgrp_data.cgroup -> kn -> id`: the cgroup v2 id of a socket.
    pub const SOCK_CGROUP: u64 = 1 << 1;
    /// `task_struct -> nsproxy -> net_ns -> ns.inum`: a task's network namespace.
    pub const TASK_NETNS: u64 = 1 << 2;
    /// `sk_buff -> dev -> nd_net.net -> ns.inum`: the netns of a packet (resets with no socket).
    pub const SKB_NETNS: u64 = 1 << 3;
    /// `task_struct -> flags` (PF_EXITING) and `exit_code`.
    pub const TASK_EXIT: u64 = 1 << 4;
    /// `task_struct -> pid, tgid, comm` of a non-current task.
    pub const TASK_IDS: u64 = 1 << 5;
    /// `sock_common` addresses, ports, family and state: existing connections can be learnt
    /// at start-up by walking the kernel's TCP sockets (a BPF iterator).
    pub const SOCK_TUPLE: u64 = 1 << 6;
    /// With [`SOCK_CGROUP`]: the socket's cgroup is read from `sk_cgrp_data.val` (kernels
    /// before 5.15), a pointer only while bit 0 is clear (set, it holds net_cls/net_prio data).
    pub const SOCK_CGROUP_TAGGED: u64 = 1 << 7;
    /// `sk_buff -> head, data, network_header, transport_header`: the headers of a dropped
    /// packet (refusals seen at `skb:kfree_skb` where `tcp_send_reset` does not see them).
    pub const SKB_HEADERS: u64 = 1 << 8;
    /// `tcp_sock -> rcv_nxt, copied_seq, snd_wl1, write_seq, snd_una, tcp_mstamp`: what was in
    /// flight on a connection when it was closed ([`crate::SockActivity`]).
    pub const SOCK_ACTIVITY: u64 = 1 << 9;
}

/// Bits of [`EventHeader::flags`].
pub mod flags {
    /// Signal: this signal made the kernel start watching the target's cgroup (a stop signal
    /// sent from outside the target's cgroup).
    pub const WATCH_OPENED: u32 = 1 << 0;
    /// TCP: the connection was accepted (passive open), not connected out.
    pub const INBOUND: u32 = 1 << 1;
    /// TCP: the close was done by the kernel while the owning task was exiting (PF_EXITING):
    /// the process died with the socket open.
    pub const CLOSED_BY_EXIT: u32 = 1 << 2;
    /// TCP: a reset was sent on this connection.
    pub const RESET_SENT: u32 = 1 << 3;
    /// TCP: a reset was received on this connection.
    pub const RESET_RECEIVED: u32 = 1 << 4;
    /// TCP: the connection was already open when the kernel first saw it (no open event), or
    /// the socket has no entry in the live-connection map.
    pub const UNTRACKED: u32 = 1 << 5;
    /// Exit: the whole thread group died with this task (`group_dead`).
    pub const GROUP_DEAD: u32 = 1 << 6;
    /// TCP: the socket's cgroup could not be read; `cgroup_id` is that of `current`.
    pub const CGROUP_FROM_CURRENT: u32 = 1 << 7;
    /// Reset: the reset answered a segment for which there was no socket (e.g. a SYN to a
    /// port with no listener).
    pub const NO_SOCKET: u32 = 1 << 8;
    /// TCP: the state change ran in the context of a task in the socket's own cgroup.
    pub const IN_OWNER_TASK: u32 = 1 << 9;
    /// TCP: the connection was open before the agent started, learnt by the start-up walk of
    /// the kernel's sockets; its direction comes from the listeners of its network namespace
    /// (inbound when one listens on its local port).
    pub const PREEXISTING: u32 = 1 << 10;
    /// Kept connection ([`crate::KeptConn`]): the container's close (its first close
    /// transition) is in the record: `close_ns`, `activity`, `closer_tgid`.
    pub const CLOSE_SEEN: u32 = 1 << 11;
    /// Kept connection: that close came after the peer's FIN (from CLOSE_WAIT).
    pub const PEER_CLOSED_FIRST: u32 = 1 << 12;
    /// Kept connection: the socket reached CLOSE (`closed_ns`).
    pub const CLOSED: u32 = 1 << 13;
}

/// Value of [`WatchEntry::reason`].
pub mod watch_reason {
    /// Userspace asked for it (configuration, a known container, a termination in progress).
    pub const USERSPACE: u32 = 1;
    /// The signal probe saw a stop signal from outside the cgroup.
    pub const STOP_SIGNAL: u32 = 2;
}

/// The slots of `WATCH_HINT` (`u64`s) and the packing of userspace's word, shared by
/// the programs that read it and the userspace that writes it.
pub mod watch_hint {
    /// Stop-signal watches the kernel made (only the kernel writes it).
    pub const KERNEL_MADE: u32 = 0;
    /// Userspace's word: the watches it counted (low 32 bits), its generation (high 32).
    pub const USER: u32 = 1;
    /// The value of [`KERNEL_MADE`] userspace's count includes.
    pub const USER_SAW: u32 = 2;
    /// Not 0: the programs keep every connection in `LIVE_CONNS`, watched or not, because
    /// userspace cannot walk the kernel's sockets to learn a container's when its watch
    /// begins (no TCP iterator). Written by userspace at start-up.
    pub const TRACK_ALL: u32 = 3;
    /// How many slots there are.
    pub const SLOTS: u32 = 4;
    /// The count's bits in [`USER`]'s word.
    pub const COUNT_MASK: u64 = 0xffff_ffff;

    /// [`USER`]'s word for a generation and a count (saturated at 32 bits).
    pub const fn user_word(generation: u64, count: u64) -> u64 {
        let count = if count > COUNT_MASK {
            COUNT_MASK
        } else {
            count
        };
        ((generation & COUNT_MASK) << 32) | count
    }

    /// The count in [`USER`]'s word.
    pub const fn count(word: u64) -> u64 {
        word & COUNT_MASK
    }

    /// The generation in [`USER`]'s word.
    pub const fn generation(word: u64) -> u64 {
        word >> 32
    }
}

/// The establishment log (`EST_LOG`): each CPU's ring of the connections established on it
/// while their cgroup was not watched, written without a map lookup by key (an array slot and
/// a per-CPU head), never deleted. When a container's watch begins, userspace walks its
/// sockets into `LIVE_CONNS` and finds in the log when each was established and in which
/// direction; a connection older than what the log still holds has no establishment time.
pub mod est_log {
    /// Entries per CPU (a power of two). At 24 bytes each, 192 KiB per CPU.
    pub const PER_CPU: u32 = 8192;

    /// One establishment. `at` is the boot-time ns with bit 0 set for an accepted (inbound)
    /// connection; `check` ties the two to `sk`, so that an entry read while it is rewritten
    /// (or torn by a nested run) is recognised and skipped.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Entry {
        pub sk: u64,
        pub at: u64,
        pub check: u64,
    }

    /// `at`'s bit for an accepted connection.
    pub const INBOUND: u64 = 1;

    /// The check word of an entry.
    pub const fn check(sk: u64, at: u64) -> u64 {
        (sk ^ at.rotate_left(29) ^ 0x5bd1_e995_9e37_79b9).wrapping_mul(0xff51_afd7_ed55_8ccd)
    }

    impl Entry {
        pub const fn new(sk: u64, at: u64) -> Self {
            Entry {
                sk,
                at,
                check: check(sk, at),
            }
        }

        /// Written whole, and ever written (an unused slot is all zeros).
        pub const fn is_valid(&self) -> bool {
            self.sk != 0 && self.check == check(self.sk, self.at)
        }
    }
}

/// The first bytes of every event in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// Bits of [`flags`].
    pub flags: u32,
    /// `CLOCK_BOOTTIME` nanoseconds (`bpf_ktime_get_boot_ns`).
    pub ts_ns: u64,
    /// The cgroup v2 id the event is attributed to: the target task's for signals, the
    /// exiting task's for exits, the socket's for TCP.
    pub cgroup_id: u64,
    /// Thread id and thread-group id of `current` when the event fired (0 in softirq context
    /// is not guaranteed: check the event's meaning before trusting it).
    pub pid: u32,
    pub tgid: u32,
    /// `current`'s comm.
    pub comm: [u8; COMM_LEN],
}

/// `signal:signal_generate`: a signal was sent. `header.pid/tgid/comm` are the sender.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalEvent {
    pub header: EventHeader,
    /// The sender's cgroup v2 id.
    pub sender_cgroup_id: u64,
    pub target_pid: u32,
    pub target_tgid: u32,
    pub target_comm: [u8; COMM_LEN],
    /// The target's network namespace inode (0 when unknown).
    pub target_netns: u32,
    pub sig: u32,
    /// `si_code` (SI_USER 0 for kill(2), SI_KERNEL 0x80, SI_TKILL -6, SI_QUEUE -1).
    pub code: i32,
    /// Non-zero when sent to the whole thread group.
    pub group: u32,
    /// The kernel's `TRACE_SIGNAL_*` result: 0 delivered, 1 ignored, 2 already pending,
    /// 3 overflow (lost), 4 lost info.
    pub result: u32,
    pub _pad: u32,
}

/// `signal:signal_deliver`: `current` (header) took a signal.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalDeliverEvent {
    pub header: EventHeader,
    pub sig: u32,
    pub code: i32,
    /// The handler: 0 `SIG_DFL` (default action), 1 `SIG_IGN`, anything else the app's own.
    pub sa_handler: u64,
    pub sa_flags: u64,
}

/// `sched:sched_process_exit`: `current` (header) exited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: EventHeader,
    /// `task->exit_code`: `(status & 0xff) << 8` for an exit, the signal number (| 0x80 for a
    /// core dump) when killed. `-1` when unknown.
    pub exit_code: i32,
    pub _pad: u32,
}

/// `sched:sched_process_exec`: `current` (header, with its new comm) executed `filename`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// NUL-terminated, truncated to [`FILENAME_LEN`] bytes.
    pub filename: [u8; FILENAME_LEN],
}

/// The addresses of a TCP connection, local side first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    /// Host byte order.
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u16,
    /// IPv4 addresses in the first 4 bytes; network byte order.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// `sock:inet_sock_set_state` for TCP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStateEvent {
    pub header: EventHeader,
    /// Stable id of the connection for its life, assigned by the kernel program when it first
    /// sees the socket (0 for listeners and untracked sockets).
    pub conn_id: u64,
    /// The socket's kernel address (a key for joining events, reused after close).
    pub skaddr: u64,
    /// When the connection was established (boot ns), 0 if unknown.
    pub established_ns: u64,
    pub tuple: Tuple,
    pub netns: u32,
    pub old_state: u8,
    pub new_state: u8,
    pub _pad: [u8; 2],
    /// Read from the socket at the close transitions (ESTABLISHED / CLOSE_WAIT to FIN_WAIT1,
    /// LAST_ACK or CLOSE); zero (`valid == 0`) at other changes or without
    /// [`feature::SOCK_ACTIVITY`].
    pub activity: SockActivity,
}

/// Sequence numbers of a TCP socket at the moment it was closed (`struct tcp_sock`), from
/// which userspace tells a connection with something in flight from an idle one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockActivity {
    /// 1 when the fields below were read, 0 otherwise.
    pub valid: u32,
    /// Next sequence number expected from the peer.
    pub rcv_nxt: u32,
    /// Up to where the application has read.
    pub copied_seq: u32,
    /// Sequence number of the peer's segment that last acknowledged new data of ours (or
    /// updated the window): peer data beyond it came after the peer's last acknowledgement.
    pub snd_wl1: u32,
    /// End of the data the application has written.
    pub write_seq: u32,
    /// First byte of ours the peer has not acknowledged.
    pub snd_una: u32,
    /// Microseconds since the socket last sent or received a segment (`tcp_mstamp`), at
    /// most `u32::MAX`.
    pub quiet_us: u32,
    pub _pad: u32,
}

/// Offsets of the `tcp_sock` members read into [`SockActivity`], resolved from BTF as their
/// own group: when one is missing only the idle / in-flight distinction is off.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivityOffsets {
    pub rcv_nxt: u32,
    pub copied_seq: u32,
    pub snd_wl1: u32,
    pub write_seq: u32,
    pub snd_una: u32,
    /// `tcp_sock.tcp_mstamp`: `tcp_clock_us()` of the socket's most recent segment.
    pub tcp_mstamp: u32,
}

impl ActivityOffsets {
    /// Every member missing.
    pub const MISSING: Self = Self {
        rcv_nxt: OFFSET_MISSING,
        copied_seq: OFFSET_MISSING,
        snd_wl1: OFFSET_MISSING,
        write_seq: OFFSET_MISSING,
        snd_una: OFFSET_MISSING,
        tcp_mstamp: OFFSET_MISSING,
    };
}

/// A TCP reset sent (`tcp:tcp_send_reset`) or received (`tcp:tcp_receive_reset`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpResetEvent {
    pub header: EventHeader,
    pub conn_id: u64,
    pub skaddr: u64,
    pub tuple: Tuple,
    /// Network namespace inode of the socket or packet (0 when unknown).
    pub netns: u32,
    /// `enum sk_rst_reason` for sent resets (names come from the kernel's BTF), 0 otherwise.
    pub reason: u32,
    /// The socket's state when the reset went out or came in (0 without a socket).
    pub state: u8,
    /// 1 sent, 2 received.
    pub direction: u8,
    pub _pad: [u8; 6],
}

/// `TcpResetEvent::direction`.
pub const RESET_SENT: u8 = 1;
/// `TcpResetEvent::direction`.
pub const RESET_RECEIVED: u8 = 2;

/// A live connection in the kernel's `LIVE_CONNS` map, keyed by the socket's address. Userspace
/// lists these when a termination opens to know which connections were open at that moment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveConn {
    pub conn_id: u64,
    pub cgroup_id: u64,
    pub established_ns: u64,
    pub tuple: Tuple,
    pub netns: u32,
    /// Bits of [`flags`] gathered over the connection's life.
    pub flags: u32,
}

/// What the kernel keeps of a watched cgroup's connection for userspace (`KEPT_CONNS`, by
/// connection id): the connection as in `LIVE_CONNS`, and what happened to it since it was
/// opened or the watch began — its close, its reset, its end. One record per connection,
/// merged by the programs at each change and taken (read and deleted) by userspace, so a mass
/// close of a watched container never depends on the TCP ring buffer. Every field is a fact
/// that only ever gets set: a record taken early and one made again later merge.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeptConn {
    /// The connection; `conn.flags` also carries [`flags::CLOSE_SEEN`],
    /// [`flags::PEER_CLOSED_FIRST`] and [`flags::CLOSED`].
    pub conn: LiveConn,
    /// When the container closed it (boot ns; with `CLOSE_SEEN`).
    pub close_ns: u64,
    /// When the socket reached CLOSE (boot ns; with `CLOSED`).
    pub closed_ns: u64,
    /// What was in flight at the container's close (`valid == 0`: not read).
    pub activity: SockActivity,
    /// The task that closed it, when the close ran in a task of the socket's own cgroup (0
    /// otherwise).
    pub closer_tgid: u32,
    /// `enum sk_rst_reason` of a reset sent on it (0: none, or before 6.10).
    pub reset_reason: u32,
}

/// An entry of the `WATCHED` map: a cgroup whose per-connection events go to userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchEntry {
    /// Boot ns when watching began.
    pub since_ns: u64,
    /// One of [`watch_reason`].
    pub reason: u32,
    pub _pad: u32,
}

/// Per-cgroup counters kept in the kernel (per CPU) for every cgroup, watched or not.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// No longer counted (always 0): no reader needed them, and the hot path's per-cgroup
    /// map work at every open and close cost more than the rest of a close. Kept so that the
    /// pinned map's layout does not change.
    pub opened_inbound: u64,
    /// Not counted (see `opened_inbound`).
    pub opened_outbound: u64,
    /// Not counted (see `opened_inbound`).
    pub closed: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub closed_by_exit: u64,
    /// Events of this cgroup that a ring buffer could not take (either ring). Userspace
    /// compares it with its value when a termination opened: the difference is the number of
    /// events lost while that termination was being collected.
    pub events_lost: u64,
    /// Connections of this cgroup the kernel could not keep in its live-connection map (it
    /// was full): a report lists them only through their own events.
    pub untracked: u64,
}

/// Index of the per-CPU counters in the `COUNTERS` map.
pub mod counter {
    /// TCP events the `EVENTS` ring buffer could not take.
    pub const RINGBUF_LOST: u32 = 0;
    /// Resets without a socket that were not sent to userspace because of the rate limit.
    pub const RESETS_RATE_LIMITED: u32 = 1;
    /// Live-connection map inserts that failed (the map was full; see `--max-live-connections`).
    pub const LIVE_MAP_FAILED: u32 = 2;
    /// Control events (signals, deliveries, exits, execs) the `CONTROL` ring buffer could not
    /// take.
    pub const CONTROL_LOST: u32 = 3;
    /// Watched-cgroup map inserts that failed (the map is a plain hash: it never evicts a
    /// watch silently).
    pub const WATCH_MAP_FAILED: u32 = 4;
    /// Records written to `KEPT_CONNS` (userspace takes them when this moves).
    pub const KEPT: u32 = 5;
    /// `KEPT_CONNS` writes that failed (it was full): the change went through the TCP ring
    /// instead, as an event that counts as lost if the ring cannot take it either.
    pub const KEPT_MAP_FAILED: u32 = 6;
    /// TCP events of watched connections not sent because the ring was half full or more
    /// (only when the programs stream every state change, [`Config::stream_states`]): what
    /// they said is in `KEPT_CONNS` (not lost).
    pub const LEFT_TO_KEPT: u32 = 7;
    /// Number of counters.
    pub const COUNT: u32 = 8;
}

/// Offsets of the fields the programs read from tracepoint records, from the tracepoints'
/// `format` files in tracefs. [`OFFSET_MISSING`] where the field does not exist.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointOffsets {
    // signal:signal_deliver
    pub deliver_sig: u32,
    pub deliver_code: u32,
    pub deliver_sa_handler: u32,
    pub deliver_sa_flags: u32,
    // sched:sched_process_exit
    pub exit_group_dead: u32,
    // sched:sched_process_exec (`__data_loc char[] filename`)
    pub exec_filename: u32,
    // sock:inet_sock_set_state
    pub state_skaddr: u32,
    pub state_oldstate: u32,
    pub state_newstate: u32,
    pub state_sport: u32,
    pub state_dport: u32,
    pub state_family: u32,
    pub state_protocol: u32,
    pub state_saddr: u32,
    pub state_daddr: u32,
    pub state_saddr_v6: u32,
    pub state_daddr_v6: u32,
    // tcp:tcp_send_reset (6.10+ layout: sockaddr-sized saddr/daddr)
    pub send_reset_skbaddr: u32,
    pub send_reset_skaddr: u32,
    pub send_reset_state: u32,
    pub send_reset_reason: u32,
    pub send_reset_saddr: u32,
    pub send_reset_daddr: u32,
    // tcp:tcp_receive_reset
    pub recv_reset_skaddr: u32,
    pub recv_reset_sport: u32,
    pub recv_reset_dport: u32,
    pub recv_reset_family: u32,
    pub recv_reset_saddr: u32,
    pub recv_reset_daddr: u32,
    pub recv_reset_saddr_v6: u32,
    pub recv_reset_daddr_v6: u32,
    pub _pad: u32,
}

impl TracepointOffsets {
    /// Every field missing.
    pub const MISSING: Self = Self {
        deliver_sig: OFFSET_MISSING,
        deliver_code: OFFSET_MISSING,
        deliver_sa_handler: OFFSET_MISSING,
        deliver_sa_flags: OFFSET_MISSING,
        exit_group_dead: OFFSET_MISSING,
        exec_filename: OFFSET_MISSING,
        state_skaddr: OFFSET_MISSING,
        state_oldstate: OFFSET_MISSING,
        state_newstate: OFFSET_MISSING,
        state_sport: OFFSET_MISSING,
        state_dport: OFFSET_MISSING,
        state_family: OFFSET_MISSING,
        state_protocol: OFFSET_MISSING,
        state_saddr: OFFSET_MISSING,
        state_daddr: OFFSET_MISSING,
        state_saddr_v6: OFFSET_MISSING,
        state_daddr_v6: OFFSET_MISSING,
        send_reset_skbaddr: OFFSET_MISSING,
        send_reset_skaddr: OFFSET_MISSING,
        send_reset_state: OFFSET_MISSING,
        send_reset_reason: OFFSET_MISSING,
        send_reset_saddr: OFFSET_MISSING,
        send_reset_daddr: OFFSET_MISSING,
        recv_reset_skaddr: OFFSET_MISSING,
        recv_reset_sport: OFFSET_MISSING,
        recv_reset_dport: OFFSET_MISSING,
        recv_reset_family: OFFSET_MISSING,
        recv_reset_saddr: OFFSET_MISSING,
        recv_reset_daddr: OFFSET_MISSING,
        recv_reset_saddr_v6: OFFSET_MISSING,
        recv_reset_daddr_v6: OFFSET_MISSING,
        _pad: 0,
    };
}

/// Offsets of kernel struct members, resolved from the running kernel's BTF.
/// [`OFFSET_MISSING`] where a member could not be resolved.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub task_flags: u32,
    pub task_exit_code: u32,
    pub task_cgroups: u32,
    pub task_nsproxy: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    pub nsproxy_net_ns: u32,
    pub net_ns_inum: u32,
    /// `sock.sk_cgrp_data.cgroup`.
    pub sock_cgroup: u32,
    /// `sock.__sk_common.skc_net.net`.
    pub sock_net: u32,
    pub skb_dev: u32,
    /// `net_device.nd_net.net`.
    pub net_device_net: u32,
    /// `kernel_siginfo.si_code` (via the `__SIGINFO` anonymous struct).
    pub siginfo_code: u32,
    /// `sock_common` addresses, ports, family and state: a socket's connection read from the
    /// socket itself (the start-up walk of existing sockets).
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_state: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// `sock.sk_protocol` (a `u16` since 5.6): the BTF tracepoint of the hot probe has no
    /// record to read the protocol from.
    pub sk_protocol: u32,
    /// `net.net_cookie`: a network namespace's 64-bit id, never reused (its inode is). An
    /// `atomic64_t` set on first use before 5.12 (0 until then), set at creation since.
    pub net_cookie: u32,
    /// `inet_sock.inet_sport` (network order): a socket's local port once the kernel has
    /// released its port (`skc_num` reads 0 at its CLOSE).
    pub inet_sport: u32,
}

impl KernelOffsets {
    /// Every member missing.
    pub const MISSING: Self = Self {
        task_pid: OFFSET_MISSING,
        task_tgid: OFFSET_MISSING,
        task_comm: OFFSET_MISSING,
        task_flags: OFFSET_MISSING,
        task_exit_code: OFFSET_MISSING,
        task_cgroups: OFFSET_MISSING,
        task_nsproxy: OFFSET_MISSING,
        css_set_dfl_cgrp: OFFSET_MISSING,
        cgroup_kn: OFFSET_MISSING,
        kernfs_node_id: OFFSET_MISSING,
        nsproxy_net_ns: OFFSET_MISSING,
        net_ns_inum: OFFSET_MISSING,
        sock_cgroup: OFFSET_MISSING,
        sock_net: OFFSET_MISSING,
        skb_dev: OFFSET_MISSING,
        net_device_net: OFFSET_MISSING,
        siginfo_code: OFFSET_MISSING,
        skc_daddr: OFFSET_MISSING,
        skc_rcv_saddr: OFFSET_MISSING,
        skc_dport: OFFSET_MISSING,
        skc_num: OFFSET_MISSING,
        skc_family: OFFSET_MISSING,
        skc_state: OFFSET_MISSING,
        skc_v6_daddr: OFFSET_MISSING,
        skc_v6_rcv_saddr: OFFSET_MISSING,
        sk_protocol: OFFSET_MISSING,
        net_cookie: OFFSET_MISSING,
        inet_sport: OFFSET_MISSING,
    };
}

/// The programs' configuration: one global (`CONFIG`) that userspace writes at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Bits of [`feature`].
    pub features: u64,
    /// Bit `n` set: signal `n` is a stop signal (reported, and opens a watch when sent from
    /// outside the target's cgroup).
    pub stop_signal_mask: u64,
    /// Non-zero: send every event of every cgroup to userspace (debugging, tests).
    pub watch_all: u32,
    /// Resets with no socket (e.g. SYN to a closed port) sent to userspace per CPU per second
    /// from netns that are not watched; the rest are only counted.
    pub unowned_reset_rate: u32,
    /// Non-zero: every state change of a watched connection also goes through the TCP ring
    /// as it happens, the changes kept in `KEPT_CONNS` included (tests and diagnostics that
    /// follow each change). Zero (the agent): what a report needs of a connection the kernel
    /// keeps in its record alone, and the changes it does not need are not looked at.
    pub stream_states: u32,
    pub _pad: u32,
    pub kernel: KernelOffsets,
    pub tracepoints: TracepointOffsets,
    pub activity: ActivityOffsets,
    pub legacy: LegacyOffsets,
}

impl Config {
    /// A configuration with nothing resolved and no stop signals.
    pub const EMPTY: Self = Self {
        features: 0,
        stop_signal_mask: 0,
        watch_all: 0,
        unowned_reset_rate: 0,
        stream_states: 0,
        _pad: 0,
        kernel: KernelOffsets::MISSING,
        tracepoints: TracepointOffsets::MISSING,
        activity: ActivityOffsets::MISSING,
        legacy: LegacyOffsets::MISSING,
    };
}

/// What the programs read on kernels older than the layouts above: `tcp_send_reset` before
/// 6.8 (4-byte `saddr`/`daddr`, `saddr_v6`/`daddr_v6`, ports; no `family` before 5.13, no
/// `reason`), and refusals seen at `skb:kfree_skb` where `tcp_send_reset` never fires for a
/// segment without a socket. [`OFFSET_MISSING`] where a field does not exist.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegacyOffsets {
    pub send_reset_sport: u32,
    pub send_reset_dport: u32,
    pub send_reset_family: u32,
    pub send_reset_saddr4: u32,
    pub send_reset_daddr4: u32,
    pub send_reset_saddr_v6: u32,
    pub send_reset_daddr_v6: u32,
    /// `skb:kfree_skb` fields.
    pub kfree_skb_skbaddr: u32,
    pub kfree_skb_protocol: u32,
    /// Since 5.17; missing on older kernels.
    pub kfree_skb_reason: u32,
    /// The value of `SKB_DROP_REASON_NO_SOCKET` ([`OFFSET_MISSING`] without drop reasons).
    pub drop_reason_no_socket: u32,
    /// `sk_buff` members.
    pub skb_head: u32,
    pub skb_data: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    pub _pad: u32,
}

impl LegacyOffsets {
    /// Every field missing.
    pub const MISSING: Self = Self {
        send_reset_sport: OFFSET_MISSING,
        send_reset_dport: OFFSET_MISSING,
        send_reset_family: OFFSET_MISSING,
        send_reset_saddr4: OFFSET_MISSING,
        send_reset_daddr4: OFFSET_MISSING,
        send_reset_saddr_v6: OFFSET_MISSING,
        send_reset_daddr_v6: OFFSET_MISSING,
        kfree_skb_skbaddr: OFFSET_MISSING,
        kfree_skb_protocol: OFFSET_MISSING,
        kfree_skb_reason: OFFSET_MISSING,
        drop_reason_no_socket: OFFSET_MISSING,
        skb_head: OFFSET_MISSING,
        skb_data: OFFSET_MISSING,
        skb_network_header: OFFSET_MISSING,
        skb_transport_header: OFFSET_MISSING,
        _pad: 0,
    };
}

/// State of a token bucket (per CPU) limiting unowned resets sent to userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateWindow {
    pub window_start_ns: u64,
    pub count: u64,
}

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

/// Names of the maps and the global, shared so both sides spell them the same.
pub mod names {
    /// TCP state changes and resets (large; submitted without a wake-up, drained on a timer
    /// or when half full).
    pub const EVENTS: &str = "EVENTS";
    /// Signals, deliveries, exits and execs (small, its own: a TCP flood cannot crowd out a
    /// stop signal).
    pub const CONTROL: &str = "CONTROL";
    pub const LIVE_CONNS: &str = "LIVE_CONNS";
    /// What the kernel keeps of watched cgroups' connections ([`crate::KeptConn`]).
    pub const KEPT_CONNS: &str = "KEPT_CONNS";
    pub const WATCHED: &str = "WATCHED";
    pub const WATCHED_NETNS: &str = "WATCHED_NETNS";
    pub const CGROUP_STATS: &str = "CGROUP_STATS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const WATCH_HINT: &str = "WATCH_HINT";
    /// Establishments of connections whose cgroup was not watched ([`crate::est_log`]).
    pub const EST_LOG: &str = "EST_LOG";
    /// Each CPU's count of writes into [`EST_LOG`].
    pub const EST_HEAD: &str = "EST_HEAD";
    /// Per CPU: whether a run is merging into its record scratch (a nested run then keeps
    /// nothing and uses the ring).
    pub const KEEPING: &str = "KEEPING";
    /// The BPF iterator program that learns existing TCP connections at start-up.
    pub const LEARN_PROGRAM: &str = "learn_tcp_sockets";
    pub const CONFIG: &str = "CONFIG";
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, made only of integers and arrays of
    // integers, with every padding byte an explicit field.
    unsafe impl aya::Pod for EventHeader {}
    unsafe impl aya::Pod for SignalEvent {}
    unsafe impl aya::Pod for SignalDeliverEvent {}
    unsafe impl aya::Pod for ExitEvent {}
    unsafe impl aya::Pod for ExecEvent {}
    unsafe impl aya::Pod for Tuple {}
    unsafe impl aya::Pod for est_log::Entry {}
    unsafe impl aya::Pod for TcpStateEvent {}
    unsafe impl aya::Pod for TcpResetEvent {}
    unsafe impl aya::Pod for LiveConn {}
    unsafe impl aya::Pod for KeptConn {}
    unsafe impl aya::Pod for WatchEntry {}
    unsafe impl aya::Pod for CgroupStats {}
    unsafe impl aya::Pod for TracepointOffsets {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for RateWindow {}
    unsafe impl aya::Pod for SockActivity {}
    unsafe impl aya::Pod for ActivityOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    /// Every shared type's size is a multiple of 8 with no implicit padding, so the kernel and
    /// userspace layouts agree.
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<EventHeader>(), 4 + 4 + 8 + 8 + 4 + 4 + 16);
        assert_eq!(size_of::<Tuple>(), 8 + 32);
        assert_eq!(
            size_of::<SignalEvent>(),
            size_of::<EventHeader>() + 8 + 8 + 16 + 4 * 6
        );
        assert_eq!(
            size_of::<SignalDeliverEvent>(),
            size_of::<EventHeader>() + 8 + 16
        );
        assert_eq!(size_of::<ExitEvent>(), size_of::<EventHeader>() + 8);
        assert_eq!(
            size_of::<TcpStateEvent>(),
            size_of::<EventHeader>() + 24 + size_of::<Tuple>() + 8 + size_of::<SockActivity>()
        );
        assert_eq!(size_of::<SockActivity>(), 8 * 4);
        assert_eq!(size_of::<ActivityOffsets>(), 6 * 4);
        assert_eq!(
            size_of::<TcpResetEvent>(),
            size_of::<EventHeader>() + 16 + size_of::<Tuple>() + 16
        );
        assert_eq!(size_of::<LiveConn>(), 24 + size_of::<Tuple>() + 8);
        assert_eq!(
            size_of::<KeptConn>(),
            size_of::<LiveConn>() + 16 + size_of::<SockActivity>() + 8
        );
        assert_eq!(size_of::<TracepointOffsets>(), 32 * 4);
        assert_eq!(
            size_of::<ExecEvent>(),
            size_of::<EventHeader>() + FILENAME_LEN
        );
        assert_eq!(size_of::<KernelOffsets>(), 28 * 4);
        assert_eq!(
            size_of::<Config>(),
            32 + size_of::<KernelOffsets>()
                + size_of::<TracepointOffsets>()
                + size_of::<ActivityOffsets>()
                + size_of::<LegacyOffsets>()
        );
        for size in [
            size_of::<EventHeader>(),
            size_of::<SignalEvent>(),
            size_of::<SignalDeliverEvent>(),
            size_of::<ExitEvent>(),
            size_of::<ExecEvent>(),
            size_of::<TcpStateEvent>(),
            size_of::<TcpResetEvent>(),
            size_of::<LiveConn>(),
            size_of::<KeptConn>(),
            size_of::<Config>(),
        ] {
            assert_eq!(size % 8, 0, "size {size} is not a multiple of 8");
        }
        assert_eq!(align_of::<Config>(), 8);
    }

    #[test]
    fn the_watch_hint_word_holds_generation_and_count() {
        use super::watch_hint::{count, generation, user_word};
        let w = user_word(7, 3);
        assert_eq!((generation(w), count(w)), (7, 3));
        // The generation wraps at 32 bits; the count saturates rather than reading 0.
        let w = user_word((1 << 32) + 5, 1 << 40);
        assert_eq!((generation(w), count(w)), (5, 0xffff_ffff));
        assert_ne!(count(user_word(0, 1 << 32)), 0);
    }
}
