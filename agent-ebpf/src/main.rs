//! termscope's kernel programs.
//!
//! Five probes, each attributing its event to a cgroup v2 id:
//! - `signal_generate` (BTF tracepoint: it needs the *target* task) — stop signals, and the
//!   moment a container starts being watched;
//! - `signal_deliver` — what the target did with the signal (default action, its own handler);
//! - `sched_process_exit` — a thread group died, with its exit code;
//! - `inet_sock_set_state` — TCP state changes, the hot path: watched cgroups' connections
//!   and per-cgroup counters stay in kernel maps (the others' establishments in a log), and
//!   only watched cgroups' events reach userspace. A BTF
//!   tracepoint (its arguments are the socket and both states) where the kernel allows it,
//!   else the classic tracepoint (its record);
//! - `tcp_send_reset` / `tcp_receive_reset` — resets, including those for a SYN to a port with
//!   no listener.
//!
//! Rust eBPF cannot emit CO-RE relocations, so every struct member and tracepoint field offset
//! comes from userspace in the `CONFIG` global, resolved from the running kernel's BTF and
//! tracefs. An offset that could not be resolved is `OFFSET_MISSING` and the read is skipped.
#![no_std]
#![no_main]
// The atomic add of `bump_watch_hint`: the bpf target has no `AtomicU64::fetch_add` (it lacks
// compare-and-swap), but LLVM emits the add itself (BPF_ATOMIC | BPF_ADD) for the intrinsic.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use aya_ebpf::EbpfContext;
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, bpf_seq_write,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use termscope_common::{
    CgroupStats, Config, EventHeader, ExecEvent, ExitEvent, FILENAME_LEN, KeptConn, LiveConn,
    OFFSET_MISSING, RESET_RECEIVED, RESET_SENT, RateWindow, SignalDeliverEvent, SignalEvent,
    SockActivity, TcpResetEvent, TcpStateEvent, Tuple, WatchEntry, counter, est_log, feature,
    flags, kind, tcp_state, watch_hint, watch_reason,
};

/// Written by userspace at load time (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static CONFIG: Config = Config::EMPTY;

/// Reads one field of `CONFIG`. Volatile so the compiler never folds the placeholder value.
macro_rules! cfg {
    ($($field:tt)+) => {
        unsafe { core::ptr::read_volatile(&raw const CONFIG.$($field)+) }
    };
}

/// TCP state changes and resets. Submitted without a wake-up (userspace drains it on a short
/// timer), except when it is half full.
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Signals, deliveries, exits and execs: few, small, and each one matters. A ring of their
/// own, so that a flood of TCP events elsewhere cannot crowd out a stop signal.
#[map(name = "CONTROL")]
static CONTROL: RingBuf = RingBuf::with_byte_size(1 << 18, 0);

/// Live TCP connections of watched cgroups by socket address (of every cgroup while
/// `WATCH_HINT[TRACK_ALL]` is set). A connection established while its cgroup is not watched
/// only goes into `EST_LOG`; userspace walks the kernel's sockets into this map when a watch
/// begins, and removes a cgroup's entries when its watch ends. A plain preallocated hash (sized
/// by userspace, `--max-live-connections`), not an LRU: an entry leaves it only when its socket
/// reaches CLOSE or userspace removes it, never silently. When it is full, the connection is counted (`LIVE_MAP_FAILED`, and
/// per cgroup) and its report says so; its events still reach userspace with an id.
#[map(name = "LIVE_CONNS")]
static LIVE_CONNS: HashMap<u64, LiveConn> = HashMap::with_max_entries(262144, 0);

/// What the programs keep of watched cgroups' connections for userspace, by connection id
/// (sized by userspace): one record per connection, merged at each change that matters to a
/// report (opened, the container's close, a reset, CLOSE) and taken by userspace. A mass close
/// of a watched container therefore never depends on the TCP ring: its events are sent only
/// while the ring has room. A write that fails (full) is counted, and the change goes through
/// the ring as an event that counts as lost if the ring cannot take it.
#[map(name = "KEPT_CONNS")]
static KEPT_CONNS: HashMap<u64, KeptConn> = HashMap::with_max_entries(131072, 0);

/// Where `keep` merges a record (one per CPU): off the stack, which the older verifiers bound
/// to 512 bytes over the whole call chain.
#[map(name = "KEPT_SCRATCH")]
static KEPT_SCRATCH: PerCpuArray<KeptConn> = PerCpuArray::with_max_entries(1, 0);

/// Whether this CPU's `KEPT_SCRATCH` is in use by a `keep` (non-zero while it merges). Where
/// runs of the BTF tracepoint nest (before ~5.19, e.g. 5.10: a softirq's state change inside
/// a process's on the same CPU), the nested run finds it set and sends its change through
/// the TCP ring instead of merging into the interrupted run's record.
#[map(name = "KEEPING")]
static KEEPING: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Connections that just reached CLOSE. The kernel sets CLOSE *before* sending the reset of an
/// abortive close (unread data, SO_LINGER 0), so the reset finds its connection here.
#[map(name = "RECENTLY_CLOSED")]
static RECENTLY_CLOSED: LruHashMap<u64, LiveConn> = LruHashMap::with_max_entries(8192, 0);

/// Cgroups whose events go to userspace. A plain hash, not an LRU: a watch is never evicted
/// silently; a failed insert is counted (`WATCH_MAP_FAILED`), and userspace reconciles the
/// entries with its terminations every tick.
#[map(name = "WATCHED")]
static WATCHED: HashMap<u64, WatchEntry> = HashMap::with_max_entries(16384, 0);

/// Network namespaces whose socket-less resets go to userspace, by inode; the value is the
/// namespace's cookie (0: unknown). Once that namespace is gone its inode may name a new one,
/// whose resets are not the old one's: [`unowned_reset_allowed`] tells them apart.
#[map(name = "WATCHED_NETNS")]
static WATCHED_NETNS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

#[map(name = "CGROUP_STATS")]
static CGROUP_STATS: LruPerCpuHashMap<u64, CgroupStats> =
    LruPerCpuHashMap::with_max_entries(16384, 0);

/// Listening ports by `(netns << 16) | port`, to tell accepted connections from outgoing ones
/// among those learnt without their establishment: noted when a socket begins listening and by
/// every walk of the kernel's TCP sockets (listeners come before connections in it, so a walk
/// notes its namespace's listeners again right before it judges its connections). An LRU: a
/// namespace that is gone leaves entries nothing removes.
#[map(name = "LISTEN_PORTS")]
static LISTEN_PORTS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

/// Whether anything is watched, without a map walk on the hot path:
/// `[0]` stop-signal watches the kernel made (only the kernel writes it, adding 1 before and
/// 1 after each insert into `WATCHED`), `[1]` in its low 32 bits the watches userspace
/// counted in `WATCHED` and in its high 32 bits userspace's generation (moved before and after
/// each insert, and after each removal), `[2]` the value of `[0]` that count includes.
/// Something may be watched when the count is not 0 or `[0] != [2]` (a watch made since
/// userspace counted). `[0]` plus the generation moves whenever `WATCHED` changes: the
/// per-CPU [`WATCH_CACHE`] is valid while it stays.
#[map(name = "WATCH_HINT")]
static WATCH_HINT: Array<u64> = Array::with_max_entries(watch_hint::SLOTS, 0);

/// Connections established while their cgroup was not watched: per CPU, a ring of
/// `est_log::PER_CPU` entries from `cpu * PER_CPU` (userspace sizes the array for the
/// possible CPUs). Written with no lookup by key and never deleted: what a busy node pays per
/// connection while nothing is watched. Userspace reads it when a watch begins.
#[map(name = "EST_LOG")]
static EST_LOG: Array<est_log::Entry> = Array::with_max_entries(est_log::PER_CPU, 0);

/// Each CPU's count of the entries it wrote into `EST_LOG`.
#[map(name = "EST_HEAD")]
static EST_HEAD: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The last answer of [`is_watched`] on this CPU: a connection's changes come in runs, and
/// most belong to the cgroup of the change before, so most cost no lookup in `WATCHED`.
#[map(name = "WATCH_CACHE")]
static WATCH_CACHE: PerCpuArray<WatchCache> = PerCpuArray::with_max_entries(1, 0);

/// [`WATCH_CACHE`]'s entry. `check` mixes the watch generation with the cgroup (and holds the
/// answer in bit 0), so that an entry torn by a program nested on the same CPU (a softirq's
/// state change inside a process's) does not match the cgroup it would misname.
#[repr(C)]
#[derive(Clone, Copy)]
struct WatchCache {
    cgroup_id: u64,
    check: u64,
}

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map(name = "NEXT_CONN_ID")]
static NEXT_CONN_ID: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "RESET_RATE")]
static RESET_RATE: PerCpuArray<RateWindow> = PerCpuArray::with_max_entries(1, 0);

const PF_EXITING: u32 = 0x0000_0004;
const IPPROTO_TCP: u16 = 6;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `TRACE_SIGNAL_DELIVERED` .. `TRACE_SIGNAL_LOSE_INFO`.
const SIGNAL_RESULT_MAX: i32 = 4;

// ---------------------------------------------------------------------------------------------
// Reading kernel memory at offsets resolved in userspace.

/// Reads a `T` at `base + off`, or `None` when the offset is unresolved, `base` is null or the
/// read faults.
#[inline(always)]
fn read_at<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 || off == OFFSET_MISSING {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.ok()
}

/// Reads a tracepoint record field.
#[inline(always)]
fn field<T>(ctx: &TracePointContext, off: u32) -> Option<T> {
    if off == OFFSET_MISSING {
        return None;
    }
    // SAFETY: the offset comes from the tracepoint's own format file; the helper checks bounds.
    unsafe { ctx.read_at::<T>(off as usize) }.ok()
}

#[inline(always)]
fn has(feature: u64) -> bool {
    cfg!(features) & feature != 0
}

/// `cgroup -> kn -> id`.
#[inline(always)]
fn cgroup_id_of(cgrp: u64) -> Option<u64> {
    let kn: u64 = read_at(cgrp, cfg!(kernel.cgroup_kn))?;
    read_at(kn, cfg!(kernel.kernfs_node_id))
}

/// The cgroup v2 id of any task: `task -> cgroups -> dfl_cgrp -> kn -> id`.
#[inline(always)]
fn task_cgroup_id(task: u64) -> Option<u64> {
    if !has(feature::TASK_CGROUP) {
        return None;
    }
    let cset: u64 = read_at(task, cfg!(kernel.task_cgroups))?;
    let cgrp: u64 = read_at(cset, cfg!(kernel.css_set_dfl_cgrp))?;
    cgroup_id_of(cgrp)
}

/// The cgroup v2 id a socket was charged to: `sk -> sk_cgrp_data.cgroup -> kn -> id`.
#[inline(always)]
fn sock_cgroup_id(sk: u64) -> Option<u64> {
    if !has(feature::SOCK_CGROUP) {
        return None;
    }
    let cgrp: u64 = read_at(sk, cfg!(kernel.sock_cgroup))?;
    // Before 5.15 the member is `val`: bit 0 set means it holds net_cls/net_prio data.
    if has(feature::SOCK_CGROUP_TAGGED) && cgrp & 1 != 0 {
        return None;
    }
    cgroup_id_of(cgrp)
}

#[inline(always)]
fn net_inum(net: u64) -> u32 {
    read_at::<u32>(net, cfg!(kernel.net_ns_inum)).unwrap_or(0)
}

/// A network namespace's cookie (`net.net_cookie`), unique for the boot where its inode is
/// not: 0 where unknown (unresolved, or not yet given before 5.12).
#[inline(always)]
fn net_cookie(net: u64) -> u64 {
    read_at::<u64>(net, cfg!(kernel.net_cookie)).unwrap_or(0)
}

/// A task's network namespace: `task -> nsproxy -> net_ns` (0 where unknown).
#[inline(always)]
fn task_net(task: u64) -> u64 {
    if !has(feature::TASK_NETNS) {
        return 0;
    }
    let Some(nsproxy) = read_at::<u64>(task, cfg!(kernel.task_nsproxy)) else {
        return 0;
    };
    read_at::<u64>(nsproxy, cfg!(kernel.nsproxy_net_ns)).unwrap_or(0)
}

/// A socket's (or timewait / request socket's: `sock_common` is shared) network namespace.
#[inline(always)]
fn sock_net(sk: u64) -> u64 {
    read_at::<u64>(sk, cfg!(kernel.sock_net)).unwrap_or(0)
}

/// A socket's network namespace inode.
#[inline(never)]
fn sock_netns(sk: u64) -> u32 {
    match sock_net(sk) {
        0 => 0,
        net => net_inum(net),
    }
}

/// A packet's network namespace: `skb -> dev -> nd_net.net` (0 where unknown).
#[inline(always)]
fn skb_net(skb: u64) -> u64 {
    if !has(feature::SKB_NETNS) {
        return 0;
    }
    let Some(dev) = read_at::<u64>(skb, cfg!(kernel.skb_dev)) else {
        return 0;
    };
    read_at::<u64>(dev, cfg!(kernel.net_device_net)).unwrap_or(0)
}

/// Whether `current` is exiting (`PF_EXITING`): a close done now is the kernel tearing down a
/// dead process's files, not the application closing its socket.
#[inline(never)]
fn current_is_exiting() -> bool {
    if !has(feature::TASK_EXIT) {
        return false;
    }
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    read_at::<u32>(task, cfg!(kernel.task_flags)).is_some_and(|f| f & PF_EXITING != 0)
}

// ---------------------------------------------------------------------------------------------
// Maps.

#[inline(always)]
fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

/// Whether any cgroup may be watched now (see `WATCH_HINT`): when none is, state changes that
/// need no map work are not looked at further.
#[inline(never)]
fn anything_watched() -> bool {
    if cfg!(watch_all) != 0 {
        return true;
    }
    watch_hint::count(hint(watch_hint::USER)) != 0
        || hint(watch_hint::KERNEL_MADE) != hint(watch_hint::USER_SAW)
}

/// Whether every connection goes into `LIVE_CONNS` (see `watch_hint::TRACK_ALL`).
#[inline(always)]
fn tracks_all() -> bool {
    cfg!(watch_all) != 0 || hint(watch_hint::TRACK_ALL) != 0
}

/// Logs the establishment of a connection whose cgroup is not watched (see `EST_LOG`).
#[inline(always)]
fn log_establishment(sk: u64, inbound: bool) {
    let Some(head) = EST_HEAD.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; a run nested on this CPU at worst writes the same slot, which
    // the entry's check word then rejects.
    let n = unsafe { *head };
    unsafe { *head = n.wrapping_add(1) };
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let index = cpu
        .wrapping_mul(est_log::PER_CPU)
        .wrapping_add(n as u32 & (est_log::PER_CPU - 1));
    let at = (now() & !est_log::INBOUND) | if inbound { est_log::INBOUND } else { 0 };
    if let Some(slot) = EST_LOG.get_ptr_mut(index) {
        // SAFETY: a slot of the array; userspace tells a torn entry by its check word.
        unsafe {
            (*slot).sk = sk;
            (*slot).at = at;
            // The BTF tracepoint's socket is a pointer the verifier allows no arithmetic on:
            // its value, read back from the map, is a plain number.
            let sk = core::ptr::read_volatile(&raw const (*slot).sk);
            (*slot).check = est_log::check(sk, at);
        }
    }
}

/// `WATCH_HINT[i]`.
#[inline(always)]
fn hint(i: u32) -> u64 {
    // SAFETY: a plain load of a map value.
    WATCH_HINT
        .get(i)
        .map_or(0, |v| unsafe { core::ptr::read_volatile(v) })
}

/// [`WatchCache::check`] for `cgroup_id` at watch generation `generation`.
#[inline(always)]
fn watch_check(generation: u64, cgroup_id: u64, watched: bool) -> u64 {
    let mixed = (generation.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ cgroup_id)
        .wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (mixed & !1) | u64::from(watched)
}

/// Whether `cgroup_id`'s events go to userspace. With nothing watched (the hint says so) no
/// hash lookup is made: a busy node's state changes cost no map work for it.
#[inline(always)]
fn is_watched(cgroup_id: u64) -> bool {
    cfg!(watch_all) != 0 || (anything_watched() && in_watched(cgroup_id))
}

/// Whether `cgroup_id` is in `WATCHED`: the answer for the cgroup asked last on this CPU is
/// reused until `WATCHED` changes (the watch generation moves).
#[inline(never)]
fn in_watched(cgroup_id: u64) -> bool {
    let generation =
        hint(watch_hint::KERNEL_MADE).wrapping_add(watch_hint::generation(hint(watch_hint::USER)));
    let cache = WATCH_CACHE.get_ptr_mut(0);
    if let Some(c) = cache {
        // SAFETY: this CPU's slot.
        let c = unsafe { *c };
        if c.cgroup_id == cgroup_id {
            if c.check == watch_check(generation, cgroup_id, true) {
                return true;
            }
            if c.check == watch_check(generation, cgroup_id, false) {
                return false;
            }
        }
    }
    // SAFETY: the value is only tested for presence.
    let watched = unsafe { WATCHED.get(cgroup_id) }.is_some();
    if let Some(c) = cache {
        // SAFETY: this CPU's slot; a nested writer at worst leaves an entry that matches
        // nothing (see `WatchCache`).
        unsafe {
            (*c).cgroup_id = cgroup_id;
            (*c).check = watch_check(generation, cgroup_id, watched);
        }
    }
    watched
}

/// Applies `update` to the per-CPU counters of `cgroup_id`, creating them on first use.
#[inline(always)]
fn with_stats(cgroup_id: u64, update: impl FnOnce(&mut CgroupStats)) {
    if cgroup_id == 0 {
        return;
    }
    let mut ptr = CGROUP_STATS.get_ptr_mut(cgroup_id);
    if ptr.is_none() {
        let _ = CGROUP_STATS.insert(cgroup_id, CgroupStats::default(), 0);
        ptr = CGROUP_STATS.get_ptr_mut(cgroup_id);
    }
    if let Some(stats) = ptr {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        update(unsafe { &mut *stats });
    }
}

#[inline(always)]
fn next_conn_id() -> u64 {
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    match NEXT_CONN_ID.get_ptr_mut(0) {
        Some(slot) => {
            // SAFETY: per-CPU slot.
            let n = unsafe {
                *slot += 1;
                *slot
            };
            ((cpu + 1) << 48) | (n & 0xffff_ffff_ffff)
        }
        None => 0,
    }
}

/// `bpf_ringbuf_output` flags and `bpf_ringbuf_query` selectors.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;

/// Internal bit of `ev_flags`, never sent: what the event says is kept in `KEPT_CONNS`, so
/// the ring may do without it.
const KEPT_IN_MAP: u32 = 1 << 31;

/// Whether the TCP ring is half full or more.
#[inline(always)]
fn ring_half_full() -> bool {
    EVENTS.query(BPF_RB_AVAIL_DATA) >= EVENTS.query(BPF_RB_RING_SIZE) / 2
}

/// Counts a TCP event the ring did not take: lost, unless `KEPT_CONNS` has what it said.
#[inline(always)]
fn not_sent(kept: bool, cgroup_id: u64) {
    if kept {
        bump(counter::LEFT_TO_KEPT);
    } else {
        bump(counter::RINGBUF_LOST);
        with_stats(cgroup_id, |s| s.events_lost += 1);
    }
}

/// Sends a TCP event. No wake-up per event (a wake-up costs more than the rest of the probe):
/// userspace drains the ring on a short timer, and is woken only once the ring is half full.
/// An event the ring cannot take is counted, globally and for its cgroup — unless `kept`: its
/// connection's record in `KEPT_CONNS` says it, and such events are sent only while the ring
/// is less than half full.
#[inline(always)]
fn emit<T: 'static>(event: &T, cgroup_id: u64, kept: bool) {
    let half = ring_half_full();
    if kept && half {
        bump(counter::LEFT_TO_KEPT);
        return;
    }
    let wake = if half {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<T>(event, wake).is_err() {
        not_sent(kept, cgroup_id);
    }
}

/// Sends a control event (signal, delivery, exit, exec), waking userspace.
#[inline(always)]
fn emit_control<T: 'static>(event: &T, cgroup_id: u64) {
    if CONTROL.output::<T>(event, 0).is_err() {
        bump(counter::CONTROL_LOST);
        with_stats(cgroup_id, |s| s.events_lost += 1);
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_boot_ns() }
}

#[inline(always)]
fn header(kind: u32, flags: u32, cgroup_id: u64) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    EventHeader {
        kind,
        flags,
        ts_ns: now(),
        cgroup_id,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// Counts a watch the kernel makes (`WATCH_HINT[0]`). Atomic: two CPUs making watches at
/// once must both move it, or a [`WATCH_CACHE`] filled between them would outlive a watch.
#[inline(always)]
fn bump_watch_hint() {
    if let Some(made) = WATCH_HINT.get_ptr_mut(watch_hint::KERNEL_MADE) {
        // SAFETY: a valid, aligned u64 in the map, only ever accessed atomically by the
        // programs (userspace reads it). The result is unused, so this is the plain atomic
        // add every kernel since 4.x takes (no BPF_FETCH, which 5.10 lacks).
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                made, 1,
            )
        };
    }
}

#[inline(always)]
fn is_stop_signal(sig: i32) -> bool {
    (1..64).contains(&sig) && cfg!(stop_signal_mask) & (1u64 << sig) != 0
}

// ---------------------------------------------------------------------------------------------
// Signals.

/// `signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task, int group,
/// int result)`.
#[btf_tracepoint(function = "signal_generate")]
pub fn signal_generate(ctx: BtfTracePointContext) -> i32 {
    let sig: i32 = ctx.arg(0);
    if !is_stop_signal(sig) {
        return 0;
    }
    let info: u64 = ctx.arg(1);
    let task: u64 = ctx.arg(2);
    let group: i32 = ctx.arg(3);
    let result: i32 = ctx.arg(4);

    // SAFETY: helper without preconditions.
    let sender_cgroup = unsafe { bpf_get_current_cgroup_id() };
    let target_cgroup = task_cgroup_id(task).unwrap_or(0);
    let target_net = task_net(task);
    let target_netns = if target_net != 0 {
        net_inum(target_net)
    } else {
        0
    };
    // SEND_SIG_NOINFO (0) is a kill from userspace, SEND_SIG_PRIV (1) one from the kernel.
    let code = match info {
        0 => 0,
        1 => 0x80,
        _ => read_at::<i32>(info, cfg!(kernel.siginfo_code)).unwrap_or(0),
    };

    let mut ev_flags = 0;
    // The root cgroup (id 1) holds no container: never watch all of it.
    if target_cgroup > 1
        && target_cgroup != sender_cgroup
        && (0..=SIGNAL_RESULT_MAX).contains(&result)
    {
        // A stop signal from outside the container: start watching it right here, so the
        // connections it closes next are seen even before userspace has read this event.
        // SAFETY: only tested for presence.
        if unsafe { WATCHED.get(target_cgroup) }.is_none() {
            let entry = WatchEntry {
                since_ns: now(),
                reason: watch_reason::STOP_SIGNAL,
                _pad: 0,
            };
            // The hint changes before the insert (so that no CPU can find the watch in
            // `WATCHED` while the hint still says nothing is watched, as `is_watched` looks
            // at the hint first) and after it (so that userspace's count, which includes the
            // watches made up to the hint it read first, never misses this one).
            bump_watch_hint();
            if WATCHED.insert(target_cgroup, entry, 0).is_ok() {
                ev_flags |= flags::WATCH_OPENED;
            } else {
                bump(counter::WATCH_MAP_FAILED);
            }
            bump_watch_hint();
        }
        if target_netns != 0 {
            let _ = WATCHED_NETNS.insert(target_netns, net_cookie(target_net), 0);
        }
    }

    let (target_pid, target_tgid, target_comm) = if has(feature::TASK_IDS) {
        (
            read_at::<i32>(task, cfg!(kernel.task_pid)).unwrap_or(0) as u32,
            read_at::<i32>(task, cfg!(kernel.task_tgid)).unwrap_or(0) as u32,
            read_at::<[u8; 16]>(task, cfg!(kernel.task_comm)).unwrap_or([0; 16]),
        )
    } else {
        (0, 0, [0; 16])
    };

    let event = SignalEvent {
        header: header(kind::SIGNAL_GENERATE, ev_flags, target_cgroup),
        sender_cgroup_id: sender_cgroup,
        target_pid,
        target_tgid,
        target_comm,
        target_netns,
        sig: sig as u32,
        code,
        group: group as u32,
        result: result as u32,
        _pad: 0,
    };
    emit_control(&event, target_cgroup);
    0
}

#[tracepoint(category = "signal", name = "signal_deliver")]
pub fn signal_deliver(ctx: TracePointContext) -> u32 {
    let Some(sig) = field::<i32>(&ctx, cfg!(tracepoints.deliver_sig)) else {
        return 0;
    };
    if !is_stop_signal(sig) {
        return 0;
    }
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if !is_watched(cgroup_id) {
        return 0;
    }
    let event = SignalDeliverEvent {
        header: header(kind::SIGNAL_DELIVER, 0, cgroup_id),
        sig: sig as u32,
        code: field::<i32>(&ctx, cfg!(tracepoints.deliver_code)).unwrap_or(0),
        sa_handler: field::<u64>(&ctx, cfg!(tracepoints.deliver_sa_handler)).unwrap_or(0),
        sa_flags: field::<u64>(&ctx, cfg!(tracepoints.deliver_sa_flags)).unwrap_or(0),
    };
    emit_control(&event, cgroup_id);
    0
}

// ---------------------------------------------------------------------------------------------
// Process exits.

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if !is_watched(cgroup_id) {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let group_dead = match field::<u8>(&ctx, cfg!(tracepoints.exit_group_dead)) {
        Some(dead) => dead != 0,
        // Kernels before 6.16 have no group_dead: report the leader's exit.
        None => pid_tgid as u32 == (pid_tgid >> 32) as u32,
    };
    if !group_dead {
        return 0; // a thread, not the process
    }
    let exit_code = if has(feature::TASK_EXIT) {
        // SAFETY: helper without preconditions.
        let task = unsafe { bpf_get_current_task() };
        read_at::<i32>(task, cfg!(kernel.task_exit_code)).unwrap_or(-1)
    } else {
        -1
    };
    let event = ExitEvent {
        header: header(kind::PROCESS_EXIT, flags::GROUP_DEAD, cgroup_id),
        exit_code,
        _pad: 0,
    };
    emit_control(&event, cgroup_id);
    0
}

/// A program executed in a watched cgroup: how exec preStop hooks show up.
#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if !is_watched(cgroup_id) {
        return 0;
    }
    let mut event = ExecEvent {
        header: header(kind::PROCESS_EXEC, 0, cgroup_id),
        filename: [0; FILENAME_LEN],
    };
    // `__data_loc`: the low 16 bits are the string's offset in the record.
    if let Some(loc) = field::<u32>(&ctx, cfg!(tracepoints.exec_filename)) {
        let src = ctx.as_ptr() as u64 + (loc & 0xffff) as u64;
        // SAFETY: the helper bounds the copy by the buffer and checks the address.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(src as *const u8, &mut event.filename) };
    }
    emit_control(&event, cgroup_id);
    0
}

// ---------------------------------------------------------------------------------------------
// TCP.

/// Reads an address of `family` from a tracepoint's separate v4 / v6 fields.
#[inline(always)]
fn addr_field(ctx: &TracePointContext, family: u16, v4: u32, v6: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    if family == AF_INET6 {
        if let Some(a) = field::<[u8; 16]>(ctx, v6) {
            out = a;
        }
    } else if let Some(a) = field::<[u8; 4]>(ctx, v4) {
        out[..4].copy_from_slice(&a);
    }
    out
}

/// The family of a pre-6.8 reset record: its `family` field when it has one (5.13+), else
/// from `saddr_v6`, which the kernel fills with a v4-mapped address for IPv4 sockets.
#[inline(always)]
fn legacy_family(ctx: &TracePointContext, family_off: u32, saddr_v6_off: u32) -> u16 {
    if let Some(family) = field::<u16>(ctx, family_off) {
        return family;
    }
    match field::<[u8; 16]>(ctx, saddr_v6_off) {
        Some(a) if a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff => AF_INET,
        Some(_) => AF_INET6,
        None => 0,
    }
}

/// The socket's cgroup, or `current`'s when the socket's cannot be read (flagged).
#[inline(never)]
fn owner_cgroup(sk: u64, ev_flags: &mut u32) -> u64 {
    match sock_cgroup_id(sk) {
        Some(id) => id,
        None => {
            *ev_flags |= flags::CGROUP_FROM_CURRENT;
            // SAFETY: helper without preconditions.
            unsafe { bpf_get_current_cgroup_id() }
        }
    }
}

/// `IN_OWNER_TASK` when `current` runs in `cgroup_id` (the change is the owner's own doing):
/// asked only of changes that go to userspace.
#[inline(always)]
fn in_owner_task(cgroup_id: u64) -> u32 {
    // SAFETY: helper without preconditions.
    if unsafe { bpf_get_current_cgroup_id() } == cgroup_id {
        flags::IN_OWNER_TASK
    } else {
        0
    }
}

/// The connection's addresses (into `out`) and network namespace (returned), in a frame of
/// its own: the callers' frames stay small enough for the stack limit of 5.10's and 6.1's
/// verifiers (512 bytes over the whole call chain). It returns a scalar, never the stack
/// pointer the verifier would refuse.
#[inline(never)]
fn read_addresses<A: Addresses>(src: &A, sk: u64, out: &mut Tuple) -> u32 {
    *out = src.tuple(sk);
    sock_netns(sk)
}

/// Where the hot probe reads a connection's addresses: the record of
/// `tracepoint/sock/inet_sock_set_state` (the fallback program), or the socket itself for
/// `tp_btf/inet_sock_set_state`, which has no record.
trait Addresses {
    fn tuple(&self, sk: u64) -> Tuple;
    /// Whether the socket is TCP's: the tracepoint fires for other protocols' sockets too
    /// (MPTCP, SCTP). Asked only of sockets not in `LIVE_CONNS`, which holds TCP's alone.
    fn is_tcp(&self, sk: u64) -> bool;
}

impl Addresses for TracePointContext {
    #[inline(always)]
    fn tuple(&self, _sk: u64) -> Tuple {
        state_tuple(self)
    }
    #[inline(always)]
    fn is_tcp(&self, _sk: u64) -> bool {
        field::<u16>(self, cfg!(tracepoints.state_protocol)) == Some(IPPROTO_TCP)
    }
}

/// The BTF tracepoint's addresses: `sock_common`, as the start-up walk reads them (userspace
/// attaches that program only when those members are resolved, [`feature::SOCK_TUPLE`]).
struct FromSock;

impl Addresses for FromSock {
    #[inline(always)]
    fn tuple(&self, sk: u64) -> Tuple {
        let daddr = cfg!(kernel.skc_daddr);
        // `sock_common` begins, in every kernel, with `skc_addrpair` (remote, then local IPv4
        // address), `skc_hash`, `skc_portpair` (remote port in network order, then the local
        // port) and `skc_family`: one read of those 18 bytes where the offsets say so.
        if daddr == OFFSET_MISSING
            || cfg!(kernel.skc_rcv_saddr) != daddr.wrapping_add(4)
            || cfg!(kernel.skc_dport) != daddr.wrapping_add(12)
            || cfg!(kernel.skc_num) != daddr.wrapping_add(14)
            || cfg!(kernel.skc_family) != daddr.wrapping_add(16)
        {
            let family = read_at::<u16>(sk, cfg!(kernel.skc_family)).unwrap_or(0);
            let local_port = read_at::<u16>(sk, cfg!(kernel.skc_num)).unwrap_or(0);
            return sock_tuple(sk, family, local_port);
        }
        let head = read_at::<[u8; 18]>(sk, daddr).unwrap_or([0; 18]);
        let family = u16::from_ne_bytes([head[16], head[17]]);
        let mut t = Tuple {
            family,
            local_port: u16::from_ne_bytes([head[14], head[15]]),
            remote_port: u16::from_be_bytes([head[12], head[13]]),
            _pad: 0,
            local_addr: [0; 16],
            remote_addr: [0; 16],
        };
        if family == AF_INET6 {
            let v6_daddr = cfg!(kernel.skc_v6_daddr);
            let v6_saddr = cfg!(kernel.skc_v6_rcv_saddr);
            // `skc_v6_daddr` and `skc_v6_rcv_saddr` are adjacent too: one read.
            if v6_daddr != OFFSET_MISSING && v6_saddr == v6_daddr.wrapping_add(16) {
                let both = read_at::<[u8; 32]>(sk, v6_daddr).unwrap_or([0; 32]);
                t.remote_addr.copy_from_slice(&both[..16]);
                t.local_addr.copy_from_slice(&both[16..]);
            } else {
                t.local_addr = read_at(sk, v6_saddr).unwrap_or([0; 16]);
                t.remote_addr = read_at(sk, v6_daddr).unwrap_or([0; 16]);
            }
        } else {
            t.remote_addr[..4].copy_from_slice(&head[..4]);
            t.local_addr[..4].copy_from_slice(&head[4..8]);
        }
        t
    }
    #[inline(always)]
    fn is_tcp(&self, sk: u64) -> bool {
        read_at::<u16>(sk, cfg!(kernel.sk_protocol)) == Some(IPPROTO_TCP)
    }
}

/// The connection's addresses from the tracepoint record.
#[inline(always)]
fn state_tuple(ctx: &TracePointContext) -> Tuple {
    let tp = |off| field::<u16>(ctx, off);
    let family = tp(cfg!(tracepoints.state_family)).unwrap_or(0);
    Tuple {
        family,
        local_port: tp(cfg!(tracepoints.state_sport)).unwrap_or(0),
        remote_port: tp(cfg!(tracepoints.state_dport)).unwrap_or(0),
        _pad: 0,
        local_addr: addr_field(
            ctx,
            family,
            cfg!(tracepoints.state_saddr),
            cfg!(tracepoints.state_saddr_v6),
        ),
        remote_addr: addr_field(
            ctx,
            family,
            cfg!(tracepoints.state_daddr),
            cfg!(tracepoints.state_daddr_v6),
        ),
    }
}

/// What was in flight on `sk` as it is being closed: its `tcp_sock` sequence numbers (offsets
/// in `CONFIG.activity`, resolved from BTF), written field by field into `out` (the event's
/// slot in the ring buffer, so that no copy sits on the probe's stack, which the older
/// verifiers bound tightly). Only at the close transitions; `out.valid` stays 0 when the
/// feature is off, the transition is not a close or a read failed. Userspace decides from
/// these whether the peer lost something (unread data, a request not answered) or the
/// connection was idle.
#[inline(always)]
fn fill_activity(sk: u64, old: u8, new: u8, out: &mut SockActivity) {
    out.valid = 0;
    out._pad = 0;
    if !is_close(old, new) || !has(feature::SOCK_ACTIVITY) {
        return;
    }
    macro_rules! read_into {
        ($field:ident) => {
            match read_at::<u32>(sk, cfg!(activity.$field)) {
                Some(v) => out.$field = v,
                None => return,
            }
        };
    }
    read_into!(rcv_nxt);
    read_into!(copied_seq);
    read_into!(snd_wl1);
    read_into!(write_seq);
    read_into!(snd_una);
    // `tcp_mstamp` is `tcp_clock_us()`, i.e. CLOCK_MONOTONIC in microseconds.
    let Some(mstamp) = read_at::<u64>(sk, cfg!(activity.tcp_mstamp)) else {
        return;
    };
    // SAFETY: helper without preconditions.
    let now_us = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() } / 1000;
    let quiet = now_us.saturating_sub(mstamp);
    out.quiet_us = if quiet > u32::MAX as u64 {
        u32::MAX
    } else {
        quiet as u32
    };
    out.valid = 1;
}

/// The close transitions: the container (or the kernel for its exiting process) closing a
/// connection that was open (ESTABLISHED) or that the peer had closed first (CLOSE_WAIT).
#[inline(always)]
fn is_close(old: u8, new: u8) -> bool {
    matches!(old, tcp_state::ESTABLISHED | tcp_state::CLOSE_WAIT)
        && matches!(
            new,
            tcp_state::FIN_WAIT1 | tcp_state::LAST_ACK | tcp_state::CLOSE
        )
}

/// Whether a watched connection's change goes through the TCP ring: when its record in
/// `KEPT_CONNS` does not hold it (`kept` without `KEPT_IN_MAP`: a map failure, or a change no
/// record keeps), or when every change is streamed. Asked before the event's flags are
/// gathered: a change its record holds costs nothing more.
#[inline(always)]
fn goes_to_ring(kept: u32) -> bool {
    kept & KEPT_IN_MAP == 0 || cfg!(stream_states) != 0
}

/// Sends a state change of `conn` (its id, cgroup, start, addresses, namespace). A
/// subprogram of its own (BPF-to-BPF call) that writes the event straight into the ring
/// buffer: with the callers' frames, the probe's stack stays within 512 bytes on every kernel.
#[inline(never)]
fn emit_state(ev_flags: u32, conn: &LiveConn, sk: u64, old: u8, new: u8) {
    // Written in place in the ring buffer: no copy of the event on the stack.
    let kept = ev_flags & KEPT_IN_MAP != 0;
    let half = ring_half_full();
    if kept && half {
        bump(counter::LEFT_TO_KEPT);
        return;
    }
    let wake = if half {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    let Some(mut entry) = EVENTS.reserve::<TcpStateEvent>(0) else {
        not_sent(kept, conn.cgroup_id);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points to a reserved ring buffer slot of the event's size; every field is
    // written before the slot is submitted.
    unsafe {
        (*e).header = header(kind::TCP_STATE, ev_flags & !KEPT_IN_MAP, conn.cgroup_id);
        (*e).conn_id = conn.conn_id;
        (*e).skaddr = sk;
        (*e).established_ns = conn.established_ns;
        (*e).tuple = conn.tuple;
        (*e).netns = conn.netns;
        (*e).old_state = old;
        (*e).new_state = new;
        (*e)._pad = [0; 2];
        // A close whose record was just written: `keep` read what was in flight into this
        // CPU's scratch record; copied rather than read from the socket again — unless a
        // run nested since (5.10) merged another connection there.
        match KEPT_SCRATCH.get_ptr(0) {
            Some(rec) if kept && is_close(old, new) && (*rec).conn.conn_id == conn.conn_id => {
                (*e).activity = (*rec).activity
            }
            _ => fill_activity(sk, old, new, &mut (*e).activity),
        }
    }
    entry.submit(wake);
}

/// Merges a change of a watched cgroup's connection into its record in `KEPT_CONNS`: the
/// connection and its flags, and — at its first close transition — the close (time, what was
/// in flight, the closing task, whether the peer had closed first), at CLOSE its end, and a
/// sent reset's reason. Read, merged on the stack and written back whole (not in place): a
/// record userspace takes meanwhile is written again with everything, never half-updated.
/// Returns [`KEPT_IN_MAP`] when the record was written, 0 when not (counted; the caller's
/// event then must go through the ring).
///
/// A run nested in another's `keep` on the same CPU (see `KEEPING`) keeps nothing: 0.
#[inline(never)]
fn keep(sk: u64, conn: &LiveConn, old: u8, new: u8, reset_reason: u32) -> u32 {
    if conn.conn_id == 0 {
        return 0;
    }
    let Some(busy) = KEEPING.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's word; a run nested in ours sees it set and leaves the scratch alone.
    unsafe {
        if *busy != 0 {
            return 0;
        }
        *busy = 1;
    }
    let kept = merge_kept(sk, conn, old, new, reset_reason);
    // SAFETY: as above.
    unsafe { *busy = 0 };
    kept
}

/// `keep`'s merge, in its frame (inlined), with this CPU's scratch slot held.
#[inline(always)]
fn merge_kept(sk: u64, conn: &LiveConn, old: u8, new: u8, reset_reason: u32) -> u32 {
    let id = conn.conn_id;
    let Some(rec) = KEPT_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot, held through `KEEPING`: a run nested in ours does not
    // write it.
    let rec = unsafe { &mut *rec };
    // A connection just established has a fresh id: no record to look up.
    let prev = if is_established(old, new) {
        None
    } else {
        // SAFETY: a plain copy of the map value.
        unsafe { KEPT_CONNS.get(id) }
    };
    match prev {
        // One helper call copies the record: a plain assignment compiles to a byte loop
        // (the BPF build's `memmove`), several times dearer for its 128 bytes.
        Some(prev) => {
            // SAFETY: both are valid `KeptConn`s (this CPU's scratch slot and a map value).
            // A failed read (none expected) fails the keep, as a full map does: the caller
            // then sends the change through the ring.
            let copied = unsafe {
                aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                    (rec as *mut KeptConn).cast(),
                    core::mem::size_of::<KeptConn>() as u32,
                    (prev as *const KeptConn).cast(),
                )
            };
            if copied != 0 {
                return 0;
            }
        }
        None => {
            rec.conn = *conn;
            rec.close_ns = 0;
            rec.closed_ns = 0;
            rec.activity.valid = 0;
            rec.closer_tgid = 0;
            rec.reset_reason = 0;
        }
    }
    rec.conn.flags |= conn.flags;
    if is_close(old, new) && rec.conn.flags & flags::CLOSE_SEEN == 0 {
        rec.conn.flags |= flags::CLOSE_SEEN;
        if old == tcp_state::CLOSE_WAIT {
            rec.conn.flags |= flags::PEER_CLOSED_FIRST;
        }
        rec.close_ns = now();
        // SAFETY: helper without preconditions.
        if unsafe { bpf_get_current_cgroup_id() } == conn.cgroup_id {
            rec.closer_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        }
        fill_activity(sk, old, new, &mut rec.activity);
    }
    if new == tcp_state::CLOSE && rec.conn.flags & flags::CLOSED == 0 {
        rec.conn.flags |= flags::CLOSED;
        rec.closed_ns = now();
    }
    if reset_reason != 0 {
        rec.reset_reason = reset_reason;
    }
    if KEPT_CONNS.insert(id, &*rec, 0).is_err() {
        bump(counter::KEPT_MAP_FAILED);
        return 0;
    }
    bump(counter::KEPT);
    KEPT_IN_MAP
}

/// The hot path, as the BTF tracepoint (preferred): its arguments are the socket and the two
/// states, so the state-first filter reads nothing from memory, and only the changes that
/// pass it read the socket's protocol. Most state changes belong to a connection already in
/// `LIVE_CONNS`: they cost one map lookup, and reach userspace only when the connection's
/// cgroup is watched. Addresses and the socket's cgroup are read once, when the connection is
/// established (or first seen, for a connection older than the programs).
///
/// `inet_sock_set_state(const struct sock *sk, const int oldstate, const int newstate)`.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    let old = ctx.arg::<i32>(1) as u8;
    let new = ctx.arg::<i32>(2) as u8;
    match triage(old, new) {
        SKIP => {}
        FORGET => forget(ctx.arg(0)),
        LISTENER => on_listen(&FromSock, ctx.arg(0), old, new),
        _ => on_state_change(&FromSock, ctx.arg(0), old, new),
    }
    0
}

/// The hot path on kernels where the BTF tracepoint cannot be attached: the same, with the
/// states, protocol, socket and addresses read from the tracepoint's record.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let old = field::<i32>(&ctx, cfg!(tracepoints.state_oldstate)).unwrap_or(0) as u8;
    let new = field::<i32>(&ctx, cfg!(tracepoints.state_newstate)).unwrap_or(0) as u8;
    let verdict = triage(old, new);
    if verdict == SKIP {
        return 0;
    }
    let Some(sk) = field::<u64>(&ctx, cfg!(tracepoints.state_skaddr)) else {
        return 0;
    };
    match verdict {
        FORGET => forget(sk),
        LISTENER => on_listen(&ctx, sk, old, new),
        _ => on_state_change(&ctx, sk, old, new),
    }
    0
}

/// [`triage`]'s verdicts: nothing to do; remove the connection from `LIVE_CONNS`, nothing
/// else; look further.
const SKIP: u8 = 0;
const FORGET: u8 = 1;
const LOOK: u8 = 2;
/// A socket begins listening: its port goes into `LISTEN_PORTS` (and the change is looked at
/// further while anything is watched).
const LISTENER: u8 = 3;

/// The state-first filter: what a change needs beyond its two states. A connection
/// established is looked at (with nothing watched, that is one write into `EST_LOG`); a socket
/// that begins listening has its port noted. A handshake's changes (to or from SYN_SENT /
/// SYN_RECV) have no connection yet: nothing unless everything is watched. With nothing
/// watched nothing else needs a look: `LIVE_CONNS` holds only watched cgroups' connections —
/// unless every connection is tracked (`TRACK_ALL`: no socket walk on this kernel), when the
/// CLOSE of a connection removes it (one map deletion, no lookup, not even of the socket's
/// protocol, as only TCP sockets are in the map — except an abort, straight from ESTABLISHED /
/// CLOSE_WAIT, whose reset comes next and looks for the connection in `RECENTLY_CLOSED`), and
/// a close begun by a dying process is looked at (`CLOSED_BY_EXIT`).
#[inline(always)]
fn triage(old: u8, new: u8) -> u8 {
    if is_established(old, new) {
        return LOOK;
    }
    // A listener: its port tells accepted connections from outgoing ones (rare; always).
    if new == tcp_state::LISTEN {
        return LISTENER;
    }
    let handshake = matches!(new, tcp_state::SYN_SENT | tcp_state::SYN_RECV)
        || matches!(old, tcp_state::SYN_SENT | tcp_state::SYN_RECV);
    if handshake && cfg!(watch_all) == 0 {
        return SKIP;
    }
    if anything_watched() {
        // Unless every change is streamed, only those a connection's record keeps (its
        // close, its end) and a listener's are looked at: the others (the peer's FIN, the
        // waits that follow a close) say nothing a report needs.
        let needed = cfg!(stream_states) != 0
            || is_close(old, new)
            || new == tcp_state::CLOSE
            || new == tcp_state::LISTEN
            || old == tcp_state::LISTEN;
        return if needed { LOOK } else { SKIP };
    }
    // Nothing watched: `LIVE_CONNS` holds no connection to keep right (userspace empties a
    // cgroup's entries when its watch ends), unless every connection is tracked.
    if !tracks_all() {
        return SKIP;
    }
    if new == tcp_state::CLOSE {
        return match old {
            tcp_state::LISTEN | tcp_state::CLOSE => SKIP,
            tcp_state::ESTABLISHED | tcp_state::CLOSE_WAIT => LOOK,
            _ => FORGET,
        };
    }
    if closing_by_us(old, new) && current_is_exiting() {
        return LOOK;
    }
    SKIP
}

/// A socket begins listening: its port is noted, so that a connection learnt later (by a walk
/// or at its close) is known to be accepted; then it is looked at like any change.
#[inline(never)]
fn on_listen<A: Addresses>(src: &A, sk: u64, old: u8, new: u8) {
    if !src.is_tcp(sk) {
        return;
    }
    let port = read_at::<u16>(sk, cfg!(kernel.skc_num)).unwrap_or(0);
    if port != 0 {
        let key = ((sock_netns(sk) as u64) << 16) | port as u64;
        let _ = LISTEN_PORTS.insert(key, 1, 0);
    }
    if anything_watched() {
        on_state_change(src, sk, old, new);
    }
}

/// A connection reached CLOSE while nothing is watched: it leaves `LIVE_CONNS` (a socket not
/// there, e.g. another protocol's, is a miss).
#[inline(always)]
fn forget(sk: u64) {
    let _ = LIVE_CONNS.remove(sk);
}

#[inline(always)]
fn is_established(old: u8, new: u8) -> bool {
    new == tcp_state::ESTABLISHED && (old == tcp_state::SYN_SENT || old == tcp_state::SYN_RECV)
}

/// A TCP state change that passed the filter, whichever program saw it.
#[inline(always)]
fn on_state_change<A: Addresses>(src: &A, sk: u64, old: u8, new: u8) {
    if is_established(old, new) {
        on_established(src, sk, old, new);
        return;
    }
    let live = match LIVE_CONNS.get_ptr_mut(sk) {
        Some(live) => live,
        None if !src.is_tcp(sk) => return,
        None => match learn_untracked(src, sk, old, new) {
            Some(live) => live,
            None => return,
        },
    };
    on_known_connection(sk, live, old, new);
}

/// A close the socket's owner began (or its death did): the changes where `CLOSED_BY_EXIT` is
/// decided.
#[inline(always)]
fn closing_by_us(old: u8, new: u8) -> bool {
    matches!(
        old,
        tcp_state::ESTABLISHED | tcp_state::CLOSE_WAIT | tcp_state::SYN_RECV
    ) && matches!(
        new,
        tcp_state::FIN_WAIT1 | tcp_state::LAST_ACK | tcp_state::CLOSE
    )
}

/// A new connection: into `LIVE_CONNS` when its cgroup is watched (or every connection is
/// tracked); otherwise only into `EST_LOG` — with nothing watched, that is all, with no read
/// of the socket (another protocol's entry in the log is never looked for).
#[inline(never)]
fn on_established<A: Addresses>(src: &A, sk: u64, old: u8, new: u8) {
    let inbound = old == tcp_state::SYN_RECV;
    let track_all = tracks_all();
    if !track_all && !anything_watched() {
        log_establishment(sk, inbound);
        return;
    }
    if !src.is_tcp(sk) {
        return;
    }
    let mut ev_flags = 0u32;
    let cgroup_id = owner_cgroup(sk, &mut ev_flags);
    let watched = is_watched(cgroup_id);
    if !watched && !track_all {
        log_establishment(sk, inbound);
        return;
    }
    if inbound {
        ev_flags |= flags::INBOUND;
    }
    // Built in place (the addresses read into it, inserted by reference): one copy of the
    // connection on this frame keeps the call chain within 5.10's 512-byte stack limit.
    let mut live = LiveConn {
        conn_id: next_conn_id(),
        cgroup_id,
        established_ns: now(),
        tuple: Tuple::default(),
        netns: 0,
        flags: ev_flags & (flags::INBOUND | flags::CGROUP_FROM_CURRENT),
    };
    live.netns = read_addresses(src, sk, &mut live.tuple);
    let tracked = LIVE_CONNS.insert(sk, &live, 0).is_ok();
    if !tracked {
        bump(counter::LIVE_MAP_FAILED);
        with_stats(cgroup_id, |s| s.untracked += 1);
    }
    if watched {
        // Opened while its cgroup is watched (e.g. accepted after the stop signal): kept.
        let kept = if tracked {
            keep(sk, &live, old, new, 0)
        } else {
            0
        };
        if goes_to_ring(kept) {
            emit_state(
                ev_flags | kept | in_owner_task(cgroup_id),
                &live,
                sk,
                old,
                new,
            );
        }
    }
}

/// A socket with no entry in `LIVE_CONNS`. A handshake in progress (or failed) or a listener
/// carries no connection: its event goes to userspace as it is (handshakes only when
/// everything is watched), and `None` is returned. Any other state change is a connection
/// the programs did not see open (older than the agent, or evicted): it is learnt here, with
/// a fresh connection id, so that its close is never dropped for want of an id.
#[inline(never)]
fn learn_untracked<A: Addresses>(src: &A, sk: u64, old: u8, new: u8) -> Option<*mut LiveConn> {
    let handshake = matches!(new, tcp_state::SYN_SENT | tcp_state::SYN_RECV)
        || matches!(old, tcp_state::SYN_SENT | tcp_state::SYN_RECV);
    if handshake && cfg!(watch_all) == 0 {
        return None;
    }
    // Its close, with nothing watched: no one to tell, nothing to keep.
    if new == tcp_state::CLOSE && !anything_watched() {
        return None;
    }
    let mut ev_flags = 0u32;
    let cgroup_id = owner_cgroup(sk, &mut ev_flags);
    // One copy of the connection on this frame, built in place (see `on_established`).
    let mut live = LiveConn {
        conn_id: 0,
        cgroup_id,
        established_ns: 0,
        tuple: Tuple::default(),
        netns: 0,
        flags: 0,
    };
    live.netns = read_addresses(src, sk, &mut live.tuple);
    if live.tuple.local_port == 0 {
        // Met at its CLOSE: the kernel released the port (`skc_num`) just before this change;
        // the socket's own copy of it stays.
        let sport = read_at::<u16>(sk, cfg!(kernel.inet_sport)).unwrap_or(0);
        live.tuple.local_port = u16::from_be(sport);
    }
    if handshake || new == tcp_state::LISTEN || old == tcp_state::LISTEN {
        if is_watched(cgroup_id) {
            emit_state(ev_flags | in_owner_task(cgroup_id), &live, sk, old, new);
        }
        return None;
    }
    let watched = is_watched(cgroup_id);
    let track_all = tracks_all();
    if !watched && !track_all {
        // Not watched: not kept (its establishment, if recent, is in `EST_LOG`).
        return None;
    }
    // A connection whose opening the programs did not keep: one of a watched cgroup
    // established before its watch began, met before userspace's walk (see `EST_LOG`), or one
    // older than the programs. Accepted when a socket listens on its port. Otherwise outgoing
    // — where every namespace's listeners are known (the walks reach them all, `TRACK_ALL`
    // unset); else its direction is unknown.
    let mut conn_flags = ev_flags & flags::CGROUP_FROM_CURRENT;
    let port_key = ((live.netns as u64) << 16) | live.tuple.local_port as u64;
    // SAFETY: only tested for presence.
    if unsafe { LISTEN_PORTS.get(port_key) }.is_some() {
        conn_flags |= flags::PREEXISTING | flags::INBOUND;
    } else if track_all {
        conn_flags |= flags::UNTRACKED;
    } else {
        conn_flags |= flags::PREEXISTING;
    }
    live.conn_id = next_conn_id();
    live.flags = conn_flags;
    if LIVE_CONNS.insert(sk, &live, 0).is_err() {
        bump(counter::LIVE_MAP_FAILED);
        with_stats(cgroup_id, |s| s.untracked += 1);
    }
    match LIVE_CONNS.get_ptr_mut(sk) {
        Some(ptr) => Some(ptr),
        None => {
            // Not even a fresh entry: still report the change, with the connection's id.
            if watched {
                let ev_flags = ev_flags | live.flags | in_owner_task(cgroup_id);
                emit_state(ev_flags, &live, sk, old, new);
            }
            None
        }
    }
}

/// A state change of a connection in `LIVE_CONNS`.
#[inline(never)]
fn on_known_connection(sk: u64, live: *mut LiveConn, old: u8, new: u8) {
    // SAFETY: the entry is only written by these programs; a racing removal (the socket's
    // close on another CPU) at worst makes us update a recycled slot's flags.
    let live = unsafe { &mut *live };
    if closing_by_us(old, new) && live.flags & flags::RESET_RECEIVED == 0 && current_is_exiting() {
        live.flags |= flags::CLOSED_BY_EXIT;
        with_stats(live.cgroup_id, |s| s.closed_by_exit += 1);
    }
    let cgroup_id = live.cgroup_id;
    if is_watched(cgroup_id) {
        // The changes a report needs are kept in `KEPT_CONNS`; the others say nothing it
        // needs. Either way the event goes through the ring only while it has room.
        let kept = if is_close(old, new) || new == tcp_state::CLOSE {
            keep(sk, live, old, new, 0)
        } else {
            KEPT_IN_MAP
        };
        if goes_to_ring(kept) {
            let ev_flags = kept | live.flags | in_owner_task(cgroup_id);
            // Sent before the entry may go below (read from the map, no copy on the stack).
            emit_state(ev_flags, live, sk, old, new);
        }
    }
    if new == tcp_state::CLOSE {
        // The close transition: the connection leaves the kernel's state here.
        // Straight from ESTABLISHED / CLOSE_WAIT to CLOSE is an abort: the kernel sends
        // the reset right after this change.
        if matches!(old, tcp_state::ESTABLISHED | tcp_state::CLOSE_WAIT) {
            let _ = RECENTLY_CLOSED.insert(sk, &*live, 0);
        }
        let _ = LIVE_CONNS.remove(sk);
    }
}

/// Reads a `struct sockaddr_in` / `sockaddr_in6` as stored by `tcp_send_reset`.
#[inline(always)]
fn sockaddr_field(ctx: &TracePointContext, off: u32) -> (u16, u16, [u8; 16]) {
    let Some(raw) = field::<[u8; 28]>(ctx, off) else {
        return (0, 0, [0; 16]);
    };
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    let mut addr = [0u8; 16];
    if family == AF_INET6 {
        addr.copy_from_slice(&raw[8..24]);
    } else if family == AF_INET {
        addr[..4].copy_from_slice(&raw[4..8]);
    }
    (family, port, addr)
}

/// Whether a reset with no owning socket in namespace `net` (inode `netns`) goes to
/// userspace: always for watched namespaces, otherwise within a per-CPU rate so a port scan
/// cannot flood the ring buffer. Never for a new namespace that holds the inode of a watched
/// one that is gone (another cookie): userspace would take its refusals for the old one's.
#[inline(always)]
fn unowned_reset_allowed(netns: u32, net: u64) -> bool {
    // SAFETY: a plain read of the value.
    if let Some(watched) = unsafe { WATCHED_NETNS.get(netns) } {
        let cookie = if net != 0 { net_cookie(net) } else { 0 };
        return *watched == 0 || cookie == 0 || cookie == *watched;
    }
    if cfg!(watch_all) != 0 {
        return true;
    }
    let limit = cfg!(unowned_reset_rate) as u64;
    let Some(window) = RESET_RATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot.
    let window = unsafe { &mut *window };
    let t = now();
    if t.wrapping_sub(window.window_start_ns) > 1_000_000_000 {
        window.window_start_ns = t;
        window.count = 0;
    }
    if window.count < limit {
        window.count += 1;
        true
    } else {
        bump(counter::RESETS_RATE_LIMITED);
        false
    }
}

/// Marks a reset (`flag`) on the connection of `sk` and returns its cgroup: the one the
/// connection was charged to when known (no socket reads), else the socket's own. Fills in the
/// connection's id and flags for the event.
#[inline(always)]
fn mark_reset(
    sk: u64,
    flag: u32,
    also_recently_closed: bool,
    conn: &mut *mut LiveConn,
    conn_id: &mut u64,
    ev_flags: &mut u32,
) -> u64 {
    let live = match LIVE_CONNS.get_ptr_mut(sk) {
        Some(live) => Some(live),
        None if also_recently_closed => RECENTLY_CLOSED.get_ptr_mut(sk),
        None => None,
    };
    let Some(live) = live else {
        return owner_cgroup(sk, ev_flags);
    };
    *conn = live;
    // SAFETY: see inet_sock_set_state.
    let live = unsafe { &mut *live };
    live.flags |= flag;
    *conn_id = live.conn_id;
    *ev_flags |= live.flags;
    // SAFETY: helper without preconditions.
    if unsafe { bpf_get_current_cgroup_id() } == live.cgroup_id {
        *ev_flags |= flags::IN_OWNER_TASK;
    }
    live.cgroup_id
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let (family, local_port, local_addr) = sockaddr_field(&ctx, cfg!(tracepoints.send_reset_saddr));
    let (_, remote_port, remote_addr) = sockaddr_field(&ctx, cfg!(tracepoints.send_reset_daddr));
    let tuple = Tuple {
        family,
        local_port,
        remote_port,
        _pad: 0,
        local_addr,
        remote_addr,
    };
    send_reset(&ctx, tuple)
}

/// `tcp_send_reset` before 6.8 (attached instead of the above there): the record has ports
/// and `saddr_v6`/`daddr_v6`, which hold a v4-mapped address for IPv4; `family` only since
/// 5.13; it only fires with a socket.
#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset_legacy(ctx: TracePointContext) -> u32 {
    let local = field::<[u8; 16]>(&ctx, cfg!(legacy.send_reset_saddr_v6)).unwrap_or([0; 16]);
    let remote = field::<[u8; 16]>(&ctx, cfg!(legacy.send_reset_daddr_v6)).unwrap_or([0; 16]);
    let mut tuple = Tuple {
        family: AF_INET6,
        local_port: field::<u16>(&ctx, cfg!(legacy.send_reset_sport)).unwrap_or(0),
        remote_port: field::<u16>(&ctx, cfg!(legacy.send_reset_dport)).unwrap_or(0),
        _pad: 0,
        local_addr: local,
        remote_addr: remote,
    };
    let mapped = local[..10] == [0; 10] && local[10] == 0xff && local[11] == 0xff;
    let family = field::<u16>(&ctx, cfg!(legacy.send_reset_family)).unwrap_or(if mapped {
        AF_INET
    } else {
        AF_INET6
    });
    if family == AF_INET {
        tuple.family = AF_INET;
        tuple.local_addr = [0; 16];
        tuple.remote_addr = [0; 16];
        tuple.local_addr[..4].copy_from_slice(&local[12..16]);
        tuple.remote_addr[..4].copy_from_slice(&remote[12..16]);
    }
    send_reset(&ctx, tuple)
}

/// What both `tcp_send_reset` programs do with the record's socket.
#[inline(always)]
fn send_reset(ctx: &TracePointContext, tuple: Tuple) -> u32 {
    let sk = field::<u64>(ctx, cfg!(tracepoints.send_reset_skaddr)).unwrap_or(0);
    let skb = field::<u64>(ctx, cfg!(tracepoints.send_reset_skbaddr)).unwrap_or(0);
    let state = field::<i32>(ctx, cfg!(tracepoints.send_reset_state)).unwrap_or(0) as u8;
    let reason = field::<u32>(ctx, cfg!(tracepoints.send_reset_reason)).unwrap_or(0);

    // Only full sockets carry a cgroup; timewait and request sockets share `sock_common`.
    let full_sock = sk != 0 && state != tcp_state::TIME_WAIT && state != tcp_state::NEW_SYN_RECV;
    let mut ev_flags = 0u32;
    let mut conn_id = 0;
    let kept = 0;
    let (cgroup_id, netns) = if full_sock {
        // The kernel sets CLOSE before the reset of an abortive close: look there too.
        let mut conn: *mut LiveConn = core::ptr::null_mut();
        let cgroup_id = mark_reset(
            sk,
            flags::RESET_SENT,
            true,
            &mut conn,
            &mut conn_id,
            &mut ev_flags,
        );
        with_stats(cgroup_id, |s| s.resets_sent += 1);
        if !is_watched(cgroup_id) {
            return 0;
        }
        // Not merged into the record here (the older verifiers' stack bound): the flag is on
        // the live entry, which the connection's CLOSE merges; a reset after CLOSE goes
        // through the ring as before.
        let _ = conn;
        (cgroup_id, sock_netns(sk))
    } else {
        ev_flags |= flags::NO_SOCKET;
        let net = if sk != 0 { sock_net(sk) } else { skb_net(skb) };
        let netns = if net != 0 { net_inum(net) } else { 0 };
        if !unowned_reset_allowed(netns, net) {
            return 0;
        }
        (0, netns)
    };

    let event = TcpResetEvent {
        header: header(kind::TCP_RESET, ev_flags, cgroup_id),
        conn_id,
        skaddr: sk,
        tuple,
        netns,
        reason,
        state,
        direction: RESET_SENT,
        _pad: [0; 6],
    };
    emit(&event, cgroup_id, kept != 0);
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let Some(sk) = field::<u64>(&ctx, cfg!(tracepoints.recv_reset_skaddr)) else {
        return 0;
    };
    let mut ev_flags = 0u32;
    let mut conn_id = 0;
    let mut conn: *mut LiveConn = core::ptr::null_mut();
    let cgroup_id = mark_reset(
        sk,
        flags::RESET_RECEIVED,
        false,
        &mut conn,
        &mut conn_id,
        &mut ev_flags,
    );
    with_stats(cgroup_id, |s| s.resets_received += 1);
    if !is_watched(cgroup_id) {
        return 0;
    }
    // The flag is on the live entry: the CLOSE that follows a received reset merges it into
    // the record (not merged here: the older verifiers' stack bound).
    let _ = conn;
    let kept = 0;
    // No `family` before 5.13.
    let family = legacy_family(
        &ctx,
        cfg!(tracepoints.recv_reset_family),
        cfg!(tracepoints.recv_reset_saddr_v6),
    );
    let tuple = Tuple {
        family,
        local_port: field::<u16>(&ctx, cfg!(tracepoints.recv_reset_sport)).unwrap_or(0),
        remote_port: field::<u16>(&ctx, cfg!(tracepoints.recv_reset_dport)).unwrap_or(0),
        _pad: 0,
        local_addr: addr_field(
            &ctx,
            family,
            cfg!(tracepoints.recv_reset_saddr),
            cfg!(tracepoints.recv_reset_saddr_v6),
        ),
        remote_addr: addr_field(
            &ctx,
            family,
            cfg!(tracepoints.recv_reset_daddr),
            cfg!(tracepoints.recv_reset_daddr_v6),
        ),
    };
    let event = TcpResetEvent {
        header: header(kind::TCP_RESET, ev_flags, cgroup_id),
        conn_id,
        skaddr: sk,
        tuple,
        netns: sock_netns(sk),
        reason: 0,
        state: 0,
        direction: RESET_RECEIVED,
        _pad: [0; 6],
    };
    emit(&event, cgroup_id, kept != 0);
    0
}

/// Refusals where `tcp_send_reset` does not see them (before 6.8 it only fires with a
/// socket): a SYN for which TCP found no socket is freed here after the kernel answered it
/// with a reset. With drop reasons (5.17+) only `NO_SOCKET` drops are looked at; before, a
/// SYN freed by TCP itself (the packet is at its transport header, past netfilter). Off the
/// hot path: it runs for dropped packets only, and userspace attaches it only on such kernels.
#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    let no_socket = cfg!(legacy.drop_reason_no_socket);
    if no_socket != OFFSET_MISSING
        && field::<u32>(&ctx, cfg!(legacy.kfree_skb_reason)) != Some(no_socket)
    {
        return 0;
    }
    // ETH_P_IP / ETH_P_IPV6, in host order in the record.
    let is_v6 = match field::<u16>(&ctx, cfg!(legacy.kfree_skb_protocol)) {
        Some(0x0800) => false,
        Some(0x86dd) => true,
        _ => return 0,
    };
    if !has(feature::SKB_HEADERS) {
        return 0;
    }
    let Some(skb) = field::<u64>(&ctx, cfg!(legacy.kfree_skb_skbaddr)) else {
        return 0;
    };
    let Some(head) = read_at::<u64>(skb, cfg!(legacy.skb_head)) else {
        return 0;
    };
    let Some(data) = read_at::<u64>(skb, cfg!(legacy.skb_data)) else {
        return 0;
    };
    let Some(th) = read_at::<u16>(skb, cfg!(legacy.skb_transport_header)) else {
        return 0;
    };
    let Some(nh) = read_at::<u16>(skb, cfg!(legacy.skb_network_header)) else {
        return 0;
    };
    if th == 0xffff || nh == 0xffff {
        return 0;
    }
    let tcp = head + th as u64;
    if no_socket == OFFSET_MISSING && data != tcp {
        return 0; // not dropped by TCP itself
    }
    let ip = head + nh as u64;
    let mut tuple = Tuple::default();
    if is_v6 {
        // nexthdr at 6 (no extension headers before TCP), addresses at 8 and 24.
        if read_at::<u8>(ip, 6) != Some(IPPROTO_TCP as u8) {
            return 0;
        }
        tuple.family = AF_INET6;
        tuple.remote_addr = read_at::<[u8; 16]>(ip, 8).unwrap_or([0; 16]);
        tuple.local_addr = read_at::<[u8; 16]>(ip, 24).unwrap_or([0; 16]);
    } else {
        if read_at::<u8>(ip, 9) != Some(IPPROTO_TCP as u8) {
            return 0;
        }
        tuple.family = AF_INET;
        let src = read_at::<[u8; 4]>(ip, 12).unwrap_or([0; 4]);
        let dst = read_at::<[u8; 4]>(ip, 16).unwrap_or([0; 4]);
        tuple.remote_addr[..4].copy_from_slice(&src);
        tuple.local_addr[..4].copy_from_slice(&dst);
    }
    let Some(hdr) = read_at::<[u8; 14]>(tcp, 0) else {
        return 0;
    };
    // A connection attempt: SYN without ACK or RST (the kernel answers it with RST|ACK).
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;
    if hdr[13] & (SYN | RST | ACK) != SYN {
        return 0;
    }
    tuple.remote_port = u16::from_be_bytes([hdr[0], hdr[1]]);
    tuple.local_port = u16::from_be_bytes([hdr[2], hdr[3]]);
    let net = skb_net(skb);
    let netns = if net != 0 { net_inum(net) } else { 0 };
    if !unowned_reset_allowed(netns, net) {
        return 0;
    }
    let event = TcpResetEvent {
        header: header(kind::TCP_RESET, flags::NO_SOCKET, 0),
        conn_id: 0,
        skaddr: 0,
        tuple,
        netns,
        reason: 0,
        state: 0,
        direction: RESET_SENT,
        _pad: [0; 6],
    };
    emit(&event, 0, false);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// ---------------------------------------------------------------------------------------------
// Start-up: connections older than the agent.

/// `bpf_map_update_elem` flag: only create, never overwrite (the live probe's entry wins).
const BPF_NOEXIST: u64 = 1;

/// Reads a socket's addresses from `sock_common`, local side first.
#[inline(always)]
fn sock_tuple(sk: u64, family: u16, local_port: u16) -> Tuple {
    let mut t = Tuple {
        family,
        local_port,
        remote_port: u16::from_be(read_at::<u16>(sk, cfg!(kernel.skc_dport)).unwrap_or(0)),
        _pad: 0,
        local_addr: [0; 16],
        remote_addr: [0; 16],
    };
    if family == AF_INET6 {
        t.local_addr = read_at(sk, cfg!(kernel.skc_v6_rcv_saddr)).unwrap_or([0; 16]);
        t.remote_addr = read_at(sk, cfg!(kernel.skc_v6_daddr)).unwrap_or([0; 16]);
    } else {
        let l: [u8; 4] = read_at(sk, cfg!(kernel.skc_rcv_saddr)).unwrap_or([0; 4]);
        let r: [u8; 4] = read_at(sk, cfg!(kernel.skc_daddr)).unwrap_or([0; 4]);
        t.local_addr[..4].copy_from_slice(&l);
        t.remote_addr[..4].copy_from_slice(&r);
    }
    t
}

/// The BPF iterator over every TCP socket of the node (`iter/tcp`, Linux 5.9+), run once by
/// userspace at start-up: each connection that exists is put into `LIVE_CONNS` with its
/// cgroup, addresses and direction, as if the programs had seen it open. Listeners come first
/// in the walk; a connection whose local port one of them listens on (same netns) is inbound.
/// The address of each socket found in `LIVE_CONNS` is written to the walk's output: an
/// entry of a socket the walk did not meet is one whose CLOSE no program saw (it closed while
/// no agent ran), which userspace drops.
///
/// Context: `struct bpf_iter__tcp { bpf_iter_meta *meta; sock_common *sk_common; uid_t uid; }`,
/// `struct bpf_iter_meta { seq_file *seq; ... }`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn learn_tcp_sockets(ctx: *mut core::ffi::c_void) -> i32 {
    if !has(feature::SOCK_TUPLE) {
        return 0;
    }
    // SAFETY: the kernel passes a `bpf_iter__tcp`; its second member is the socket (NULL on
    // the final call).
    let sk: u64 = unsafe { *(ctx as *const u64).add(1) };
    if sk == 0 {
        return 0;
    }
    // SAFETY: only tested for presence.
    if unsafe { LIVE_CONNS.get(sk) }.is_some() {
        // SAFETY: the context's first member is the walk's `bpf_iter_meta`, never NULL, whose
        // first member is its `seq_file`; `sk` lives on this frame for the call.
        unsafe {
            let meta = *(ctx as *const *const *mut core::ffi::c_void);
            let seq = *meta;
            bpf_seq_write(
                seq.cast(),
                (&sk as *const u64).cast(),
                core::mem::size_of::<u64>() as u32,
            );
        }
    }
    let Some(state) = read_at::<u8>(sk, cfg!(kernel.skc_state)) else {
        return 0;
    };
    let family = read_at::<u16>(sk, cfg!(kernel.skc_family)).unwrap_or(0);
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    let local_port = read_at::<u16>(sk, cfg!(kernel.skc_num)).unwrap_or(0);
    let netns = sock_netns(sk);
    let port_key = ((netns as u64) << 16) | local_port as u64;
    if state == tcp_state::LISTEN {
        let _ = LISTEN_PORTS.insert(port_key, 1, 0);
        return 0;
    }
    // Full sockets with a connection (timewait and request sockets share `sock_common` but
    // have no cgroup, and nothing left to cut).
    if !matches!(
        state,
        tcp_state::ESTABLISHED
            | tcp_state::CLOSE_WAIT
            | tcp_state::FIN_WAIT1
            | tcp_state::FIN_WAIT2
            | tcp_state::LAST_ACK
            | tcp_state::CLOSING
    ) {
        return 0;
    }
    let cgroup_id = sock_cgroup_id(sk).unwrap_or(0);
    // Only watched cgroups' connections are kept (unless every connection is tracked).
    // SAFETY: only tested for presence.
    if !tracks_all() && unsafe { WATCHED.get(cgroup_id) }.is_none() {
        return 0;
    }
    let mut conn_flags = flags::PREEXISTING;
    // SAFETY: only tested for presence.
    if unsafe { LISTEN_PORTS.get(port_key) }.is_some() {
        conn_flags |= flags::INBOUND;
    }
    let live = LiveConn {
        conn_id: next_conn_id(),
        cgroup_id,
        established_ns: 0,
        tuple: sock_tuple(sk, family, local_port),
        netns,
        flags: conn_flags,
    };
    // An entry already there was made by the live probe meanwhile: it knows better.
    if LIVE_CONNS.insert(sk, live, BPF_NOEXIST).is_err() && LIVE_CONNS.get_ptr(sk).is_none() {
        bump(counter::LIVE_MAP_FAILED);
        with_stats(cgroup_id, |s| s.untracked += 1);
    }
    0
}
