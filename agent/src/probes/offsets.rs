//! Resolves, on the running kernel, every offset the kernel programs read: struct members from
//! BTF and tracepoint fields from tracefs. What cannot be resolved is recorded with the reason
//! and turns the features that need it off; nothing here fails the agent as a whole.

use termscope_common::{
    ActivityOffsets, KernelOffsets, LegacyOffsets, OFFSET_MISSING, TracepointOffsets, feature,
};

use super::{
    btf::Btf,
    tracefs::{Format, Tracefs},
};

/// Something that could not be resolved, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// e.g. `task_struct.cgroups` or `tcp/tcp_send_reset:saddr`.
    pub what: String,
    pub reason: String,
}

/// A member the programs read: struct, member path, expected size in bytes.
struct MemberSpec {
    ty: &'static str,
    path: &'static str,
    size: u32,
}

const fn m(ty: &'static str, path: &'static str, size: u32) -> MemberSpec {
    MemberSpec { ty, path, size }
}

/// Resolves one member, checking its size (a different size means a different layout than the
/// programs expect, which is as bad as a missing member).
fn member(btf: &Btf, spec: &MemberSpec, unresolved: &mut Vec<Unresolved>) -> u32 {
    let what = format!("{}.{}", spec.ty, spec.path);
    match btf.member(spec.ty, spec.path) {
        Ok(found) if found.size == spec.size => found.offset,
        Ok(found) => {
            unresolved.push(Unresolved {
                what,
                reason: format!("size is {} bytes, expected {}", found.size, spec.size),
            });
            OFFSET_MISSING
        }
        Err(e) => {
            unresolved.push(Unresolved {
                what,
                reason: e.to_string(),
            });
            OFFSET_MISSING
        }
    }
}

/// Kernel struct offsets, the feature bits they make possible, and what is missing.
#[derive(Debug, Clone)]
pub struct ResolvedKernel {
    pub offsets: KernelOffsets,
    /// The `tcp_sock` sequence numbers read at a close ([`feature::SOCK_ACTIVITY`]).
    pub activity: ActivityOffsets,
    /// `sk_buff` header members and the drop reason `NO_SOCKET` (the tracepoint fields of
    /// [`LegacyOffsets`] come from [`ResolvedTracepoints::legacy`]).
    pub legacy: LegacyOffsets,
    pub features: u64,
    pub unresolved: Vec<Unresolved>,
}

/// Resolves every struct member the programs read from `btf`.
pub fn resolve_kernel(btf: &Btf) -> ResolvedKernel {
    let mut un = Vec::new();
    let mut tagged = false;
    let o = KernelOffsets {
        task_pid: member(btf, &m("task_struct", "pid", 4), &mut un),
        task_tgid: member(btf, &m("task_struct", "tgid", 4), &mut un),
        task_comm: member(btf, &m("task_struct", "comm", 16), &mut un),
        task_flags: member(btf, &m("task_struct", "flags", 4), &mut un),
        task_exit_code: member(btf, &m("task_struct", "exit_code", 4), &mut un),
        task_cgroups: member(btf, &m("task_struct", "cgroups", 8), &mut un),
        task_nsproxy: member(btf, &m("task_struct", "nsproxy", 8), &mut un),
        css_set_dfl_cgrp: member(btf, &m("css_set", "dfl_cgrp", 8), &mut un),
        cgroup_kn: member(btf, &m("cgroup", "kn", 8), &mut un),
        kernfs_node_id: member(btf, &m("kernfs_node", "id", 8), &mut un),
        nsproxy_net_ns: member(btf, &m("nsproxy", "net_ns", 8), &mut un),
        net_ns_inum: member(btf, &m("net", "ns.inum", 4), &mut un),
        sock_cgroup: sock_cgroup(btf, &mut un, &mut tagged),
        sock_net: member(btf, &m("sock", "__sk_common.skc_net.net", 8), &mut un),
        skb_dev: member(btf, &m("sk_buff", "dev", 8), &mut un),
        net_device_net: member(btf, &m("net_device", "nd_net.net", 8), &mut un),
        siginfo_code: member(btf, &m("kernel_siginfo", "si_code", 4), &mut un),
        skc_daddr: member(btf, &m("sock_common", "skc_daddr", 4), &mut un),
        skc_rcv_saddr: member(btf, &m("sock_common", "skc_rcv_saddr", 4), &mut un),
        skc_dport: member(btf, &m("sock_common", "skc_dport", 2), &mut un),
        skc_num: member(btf, &m("sock_common", "skc_num", 2), &mut un),
        skc_family: member(btf, &m("sock_common", "skc_family", 2), &mut un),
        skc_state: member(btf, &m("sock_common", "skc_state", 1), &mut un),
        skc_v6_daddr: member(btf, &m("sock_common", "skc_v6_daddr", 16), &mut un),
        skc_v6_rcv_saddr: member(btf, &m("sock_common", "skc_v6_rcv_saddr", 16), &mut un),
        // Only the BTF tracepoint of the hot probe needs it; without it the tracepoint
        // program (which reads the record) is attached: not reported as unresolved here.
        sk_protocol: member(btf, &m("sock", "sk_protocol", 2), &mut Vec::new()),
        net_cookie: member(btf, &m("net", "net_cookie", 8), &mut un),
        // Only for the local port of a connection first met at its CLOSE (the port is
        // released before that change): not reported as unresolved (the port then reads 0).
        inet_sport: member(btf, &m("inet_sock", "inet_sport", 2), &mut Vec::new()),
    };
    let all = |offs: &[u32]| offs.iter().all(|&x| x != OFFSET_MISSING);
    let mut features = 0;
    let cgroup_chain = [o.cgroup_kn, o.kernfs_node_id];
    if all(&[o.task_cgroups, o.css_set_dfl_cgrp]) && all(&cgroup_chain) {
        features |= feature::TASK_CGROUP;
    }
    if all(&[o.sock_cgroup]) && all(&cgroup_chain) {
        features |= feature::SOCK_CGROUP;
        if tagged {
            features |= feature::SOCK_CGROUP_TAGGED;
        }
    }
    if all(&[o.task_nsproxy, o.nsproxy_net_ns, o.net_ns_inum]) {
        features |= feature::TASK_NETNS;
    }
    if all(&[o.skb_dev, o.net_device_net, o.net_ns_inum]) {
        features |= feature::SKB_NETNS;
    }
    if all(&[o.task_flags, o.task_exit_code]) {
        features |= feature::TASK_EXIT;
    }
    if all(&[o.task_pid, o.task_tgid, o.task_comm]) {
        features |= feature::TASK_IDS;
    }
    let activity = resolve_activity(btf, &mut un);
    if all(&[
        activity.rcv_nxt,
        activity.copied_seq,
        activity.snd_wl1,
        activity.write_seq,
        activity.snd_una,
        activity.tcp_mstamp,
    ]) {
        features |= feature::SOCK_ACTIVITY;
    }
    if all(&[
        o.skc_daddr,
        o.skc_rcv_saddr,
        o.skc_dport,
        o.skc_num,
        o.skc_family,
        o.skc_state,
        o.skc_v6_daddr,
        o.skc_v6_rcv_saddr,
    ]) {
        features |= feature::SOCK_TUPLE;
    }
    // Only needed where refusals are seen at skb:kfree_skb: not reported as unresolved here.
    let mut skb_un = Vec::new();
    let mut legacy = LegacyOffsets::MISSING;
    legacy.skb_head = member(btf, &m("sk_buff", "head", 8), &mut skb_un);
    legacy.skb_data = member(btf, &m("sk_buff", "data", 8), &mut skb_un);
    legacy.skb_network_header = member(btf, &m("sk_buff", "network_header", 2), &mut skb_un);
    legacy.skb_transport_header = member(btf, &m("sk_buff", "transport_header", 2), &mut skb_un);
    if skb_un.is_empty() {
        features |= feature::SKB_HEADERS;
    }
    legacy.drop_reason_no_socket = btf
        .enum_values("skb_drop_reason")
        .ok()
        .and_then(|values| {
            values
                .into_iter()
                .find(|(name, _)| name == "SKB_DROP_REASON_NO_SOCKET")
        })
        .and_then(|(_, value)| u32::try_from(value).ok())
        .unwrap_or(OFFSET_MISSING);
    ResolvedKernel {
        offsets: o,
        activity,
        legacy,
        features,
        unresolved: un,
    }
}

/// The `tcp_sock` members read at a close, their own group: without one of them only the
/// idle / in-flight distinction of closed connections is off (see `docs/report.md`).
///
/// - `rcv_nxt - copied_seq`: bytes the peer sent that the application never read;
/// - `rcv_nxt - snd_wl1`: bytes the peer sent after its last acknowledgement of our data (a
///   request that came after our last answer was acknowledged);
/// - `write_seq - snd_una`: bytes we wrote that the peer has not acknowledged yet.
pub fn resolve_activity(btf: &Btf, un: &mut Vec<Unresolved>) -> ActivityOffsets {
    ActivityOffsets {
        rcv_nxt: member(btf, &m("tcp_sock", "rcv_nxt", 4), un),
        copied_seq: member(btf, &m("tcp_sock", "copied_seq", 4), un),
        snd_wl1: member(btf, &m("tcp_sock", "snd_wl1", 4), un),
        write_seq: member(btf, &m("tcp_sock", "write_seq", 4), un),
        snd_una: member(btf, &m("tcp_sock", "snd_una", 4), un),
        tcp_mstamp: member(btf, &m("tcp_sock", "tcp_mstamp", 8), un),
    }
}

/// `sock.sk_cgrp_data.cgroup` (5.15+), else the tagged `sock.sk_cgrp_data.val` of older
/// kernels (`tagged` set).
fn sock_cgroup(btf: &Btf, un: &mut Vec<Unresolved>, tagged: &mut bool) -> u32 {
    let mut first = Vec::new();
    let off = member(btf, &m("sock", "sk_cgrp_data.cgroup", 8), &mut first);
    if off != OFFSET_MISSING {
        return off;
    }
    let mut second = Vec::new();
    let off = member(btf, &m("sock", "sk_cgrp_data.val", 8), &mut second);
    if off != OFFSET_MISSING {
        *tagged = true;
        return off;
    }
    un.extend(first);
    un.extend(second);
    OFFSET_MISSING
}

/// A tracepoint field the programs read: name and expected size.
type FieldSpec = (&'static str, u32);

/// Looks up fields of one tracepoint's format; `None` for the whole tracepoint when its
/// format could not be read.
struct FormatReader<'a> {
    tracepoint: String,
    format: Option<Format>,
    unresolved: &'a mut Vec<Unresolved>,
}

impl FormatReader<'_> {
    /// A field whose absence is a known older layout: its offset, or missing without a report
    /// (a field of another size is still reported).
    fn optional(&mut self, (name, size): FieldSpec) -> u32 {
        let present = self.format.as_ref().and_then(|f| f.field(name)).is_some();
        if present {
            self.field((name, size))
        } else {
            OFFSET_MISSING
        }
    }

    fn field(&mut self, (name, size): FieldSpec) -> u32 {
        let Some(format) = &self.format else {
            return OFFSET_MISSING;
        };
        let what = format!("{}:{name}", self.tracepoint);
        match format.field(name) {
            Some(f) if f.size == size => f.offset,
            Some(f) => {
                self.unresolved.push(Unresolved {
                    what,
                    reason: format!("size is {} bytes, expected {size}", f.size),
                });
                OFFSET_MISSING
            }
            None => {
                self.unresolved.push(Unresolved {
                    what,
                    reason: "no such field in the tracepoint's format".into(),
                });
                OFFSET_MISSING
            }
        }
    }
}

/// Tracepoint field offsets and what is missing.
#[derive(Debug, Clone)]
pub struct ResolvedTracepoints {
    pub offsets: TracepointOffsets,
    /// The pre-6.8 `tcp_send_reset` fields and `skb:kfree_skb`'s (the `sk_buff` members of
    /// [`LegacyOffsets`] come from [`ResolvedKernel::legacy`]).
    pub legacy: LegacyOffsets,
    pub unresolved: Vec<Unresolved>,
}

/// Resolves every tracepoint field the programs read, from a source of formats (tracefs on a
/// node; a closure over fixtures in tests).
pub fn resolve_tracepoints(
    mut format_of: impl FnMut(&str, &str) -> Result<Format, String>,
) -> ResolvedTracepoints {
    let mut un = Vec::new();
    let mut reader = |category: &str, name: &str, un: &mut Vec<Unresolved>| {
        let tracepoint = format!("{category}/{name}");
        let format = match format_of(category, name) {
            Ok(f) => Some(f),
            Err(reason) => {
                un.push(Unresolved {
                    what: tracepoint.clone(),
                    reason,
                });
                None
            }
        };
        (tracepoint, format)
    };

    let mut o = TracepointOffsets::MISSING;
    let mut legacy = LegacyOffsets::MISSING;
    {
        let (tracepoint, format) = reader("signal", "signal_deliver", &mut un);
        let mut r = FormatReader {
            tracepoint,
            format,
            unresolved: &mut un,
        };
        o.deliver_sig = r.field(("sig", 4));
        o.deliver_code = r.field(("code", 4));
        o.deliver_sa_handler = r.field(("sa_handler", 8));
        o.deliver_sa_flags = r.field(("sa_flags", 8));
    }
    {
        let (tracepoint, format) = reader("sched", "sched_process_exit", &mut un);
        // `group_dead` is new in 6.16; without it the program falls back to the leader's exit,
        // so its absence is not reported as a problem.
        o.exit_group_dead = format
            .as_ref()
            .and_then(|f| f.field("group_dead"))
            .filter(|f| f.size == 1)
            .map_or(OFFSET_MISSING, |f| f.offset);
        let _ = tracepoint;
    }
    {
        let (tracepoint, format) = reader("sched", "sched_process_exec", &mut un);
        let mut r = FormatReader {
            tracepoint,
            format,
            unresolved: &mut un,
        };
        o.exec_filename = r.field(("filename", 4));
    }
    {
        let (tracepoint, format) = reader("sock", "inet_sock_set_state", &mut un);
        let mut r = FormatReader {
            tracepoint,
            format,
            unresolved: &mut un,
        };
        o.state_skaddr = r.field(("skaddr", 8));
        o.state_oldstate = r.field(("oldstate", 4));
        o.state_newstate = r.field(("newstate", 4));
        o.state_sport = r.field(("sport", 2));
        o.state_dport = r.field(("dport", 2));
        o.state_family = r.field(("family", 2));
        o.state_protocol = r.field(("protocol", 2));
        o.state_saddr = r.field(("saddr", 4));
        o.state_daddr = r.field(("daddr", 4));
        o.state_saddr_v6 = r.field(("saddr_v6", 16));
        o.state_daddr_v6 = r.field(("daddr_v6", 16));
    }
    {
        let (tracepoint, format) = reader("tcp", "tcp_send_reset", &mut un);
        let mut r = FormatReader {
            tracepoint,
            format,
            unresolved: &mut un,
        };
        o.send_reset_skbaddr = r.field(("skbaddr", 8));
        o.send_reset_skaddr = r.field(("skaddr", 8));
        o.send_reset_state = r.field(("state", 4));
        // Since 6.8 the addresses are whole `sockaddr_in6`-sized records (and the tracepoint
        // also fires without a socket); before, the layout of inet_sock_set_state.
        let legacy_layout = r
            .format
            .as_ref()
            .and_then(|f| f.field("saddr"))
            .is_some_and(|f| f.size == 4);
        if legacy_layout {
            legacy.send_reset_sport = r.field(("sport", 2));
            legacy.send_reset_dport = r.field(("dport", 2));
            legacy.send_reset_saddr4 = r.field(("saddr", 4));
            legacy.send_reset_daddr4 = r.field(("daddr", 4));
            legacy.send_reset_saddr_v6 = r.field(("saddr_v6", 16));
            legacy.send_reset_daddr_v6 = r.field(("daddr_v6", 16));
            // `family` is new in 5.13 and `reason` in 6.10: optional here.
            legacy.send_reset_family = r.optional(("family", 2));
            o.send_reset_reason = r.optional(("reason", 4));
        } else {
            o.send_reset_reason = r.optional(("reason", 4));
            o.send_reset_saddr = r.field(("saddr", 28));
            o.send_reset_daddr = r.field(("daddr", 28));
        }
    }
    if legacy_send_reset(&o, &legacy) {
        // tcp_send_reset does not fire without a socket: refusals are seen where TCP frees
        // the SYN it answered.
        let (tracepoint, format) = reader("skb", "kfree_skb", &mut un);
        let mut r = FormatReader {
            tracepoint,
            format,
            unresolved: &mut un,
        };
        legacy.kfree_skb_skbaddr = r.field(("skbaddr", 8));
        legacy.kfree_skb_protocol = r.field(("protocol", 2));
        // Drop reasons are new in 5.17.
        legacy.kfree_skb_reason = r.optional(("reason", 4));
    }
    {
        let (tracepoint, format) = reader("tcp", "tcp_receive_reset", &mut un);
        let mut r = FormatReader {
            tracepoint,
            format,
            unresolved: &mut un,
        };
        o.recv_reset_skaddr = r.field(("skaddr", 8));
        o.recv_reset_sport = r.field(("sport", 2));
        o.recv_reset_dport = r.field(("dport", 2));
        // `family` is new in 5.13; without it the program infers it from `saddr_v6`.
        o.recv_reset_family = r.optional(("family", 2));
        o.recv_reset_saddr = r.field(("saddr", 4));
        o.recv_reset_daddr = r.field(("daddr", 4));
        o.recv_reset_saddr_v6 = r.field(("saddr_v6", 16));
        o.recv_reset_daddr_v6 = r.field(("daddr_v6", 16));
    }
    ResolvedTracepoints {
        offsets: o,
        legacy,
        unresolved: un,
    }
}

/// Whether `tcp_send_reset` has the pre-6.8 layout, where it never fires without a socket.
pub fn legacy_send_reset(o: &TracepointOffsets, legacy: &LegacyOffsets) -> bool {
    o.send_reset_saddr == OFFSET_MISSING && legacy.send_reset_saddr4 != OFFSET_MISSING
}

/// Resolves tracepoint fields from a mounted tracefs.
pub fn resolve_tracepoints_from(tracefs: &Tracefs) -> ResolvedTracepoints {
    resolve_tracepoints(|category, name| tracefs.format(category, name).map_err(|e| e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(name: &str, fields: &[(&str, u32, u32)]) -> Format {
        let mut text = String::from("format:\n");
        for (field, offset, size) in fields {
            text.push_str(&format!(
                "\tfield:int {field};\toffset:{offset};\tsize:{size};\tsigned:0;\n"
            ));
        }
        Format::parse(name, &text).expect("fixture parses")
    }

    #[test]
    fn missing_tracepoints_and_fields_are_reported_not_fatal() {
        let r = resolve_tracepoints(|category, name| match (category, name) {
            ("signal", "signal_deliver") => Ok(format(
                "signal_deliver",
                &[("sig", 8, 4), ("code", 16, 4), ("sa_handler", 24, 8)],
            )),
            ("sched", "sched_process_exit") => Ok(format("x", &[("pid", 24, 4)])),
            // wrong size for sport: a layout we do not know
            ("tcp", "tcp_receive_reset") => Ok(format(
                "r",
                &[("skaddr", 8, 8), ("sport", 16, 4), ("dport", 18, 2)],
            )),
            _ => Err("no such tracepoint".into()),
        });
        let o = r.offsets;
        assert_eq!(o.deliver_sig, 8);
        assert_eq!(o.deliver_sa_handler, 24);
        assert_eq!(o.deliver_sa_flags, OFFSET_MISSING);
        assert_eq!(o.exit_group_dead, OFFSET_MISSING);
        assert_eq!(o.recv_reset_skaddr, 8);
        assert_eq!(o.recv_reset_sport, OFFSET_MISSING);
        assert_eq!(o.recv_reset_dport, 18);
        assert_eq!(o.state_skaddr, OFFSET_MISSING);
        let what: Vec<_> = r.unresolved.iter().map(|u| u.what.as_str()).collect();
        assert!(what.contains(&"signal/signal_deliver:sa_flags"), "{what:?}");
        assert!(what.contains(&"tcp/tcp_receive_reset:sport"), "{what:?}");
        assert!(what.contains(&"sock/inet_sock_set_state"), "{what:?}");
        assert!(what.contains(&"tcp/tcp_send_reset"), "{what:?}");
        // group_dead is optional: not reported.
        assert!(
            !what.iter().any(|w| w.contains("sched_process_exit")),
            "{what:?}"
        );
        let sport = r
            .unresolved
            .iter()
            .find(|u| u.what == "tcp/tcp_receive_reset:sport")
            .expect("reported");
        assert_eq!(sport.reason, "size is 4 bytes, expected 2");
    }

    /// The records of Debian's 5.10 (bullseye) and 6.1 (bookworm), as their tracefs gives them.
    fn format_text(fields: &[(&str, u32, u32)]) -> String {
        let mut text = String::from("format:\n");
        for (decl, offset, size) in fields {
            text.push_str(&format!(
                "\tfield:{decl};\toffset:{offset};\tsize:{size};\tsigned:0;\n"
            ));
        }
        text
    }

    fn old_kernel(family: bool, reasons: bool) -> impl FnMut(&str, &str) -> Result<Format, String> {
        move |category, name| {
            let f = |fields: &[(&str, u32, u32)]| {
                Format::parse(&format!("{category}/{name}"), &format_text(fields))
                    .map_err(|e| e.to_string())
            };
            let shift = if family { 2 } else { 0 };
            match (category, name) {
                ("tcp", "tcp_send_reset") => {
                    let mut v = vec![
                        ("const void * skbaddr", 8, 8),
                        ("const void * skaddr", 16, 8),
                        ("int state", 24, 4),
                        ("__u16 sport", 28, 2),
                        ("__u16 dport", 30, 2),
                        ("__u8 saddr[4]", 32 + shift, 4),
                        ("__u8 daddr[4]", 36 + shift, 4),
                        ("__u8 saddr_v6[16]", 40 + shift, 16),
                        ("__u8 daddr_v6[16]", 56 + shift, 16),
                    ];
                    if family {
                        v.push(("__u16 family", 32, 2));
                    }
                    f(&v)
                }
                ("tcp", "tcp_receive_reset") => {
                    let mut v = vec![
                        ("const void * skaddr", 8, 8),
                        ("__u16 sport", 16, 2),
                        ("__u16 dport", 18, 2),
                        ("__u8 saddr[4]", 20 + shift, 4),
                        ("__u8 daddr[4]", 24 + shift, 4),
                        ("__u8 saddr_v6[16]", 28 + shift, 16),
                        ("__u8 daddr_v6[16]", 44 + shift, 16),
                    ];
                    if family {
                        v.push(("__u16 family", 20, 2));
                    }
                    f(&v)
                }
                ("skb", "kfree_skb") => {
                    let mut v = vec![
                        ("void * skbaddr", 8, 8),
                        ("void * location", 16, 8),
                        ("unsigned short protocol", 24, 2),
                    ];
                    if reasons {
                        v.push(("enum skb_drop_reason reason", 28, 4));
                    }
                    f(&v)
                }
                _ => Err("not in this fixture".into()),
            }
        }
    }

    /// 5.10: the pre-6.8 `tcp_send_reset` without `family`, `tcp_receive_reset` without
    /// `family`, `kfree_skb` without drop reasons; none of that is reported as missing.
    #[test]
    fn debian_5_10_records() {
        let r = resolve_tracepoints(old_kernel(false, false));
        let (o, l) = (r.offsets, r.legacy);
        assert!(legacy_send_reset(&o, &l));
        assert_eq!(o.send_reset_saddr, OFFSET_MISSING);
        assert_eq!(o.send_reset_reason, OFFSET_MISSING);
        assert_eq!((o.send_reset_skaddr, o.send_reset_state), (16, 24));
        assert_eq!((l.send_reset_sport, l.send_reset_dport), (28, 30));
        assert_eq!((l.send_reset_saddr_v6, l.send_reset_daddr_v6), (40, 56));
        assert_eq!(l.send_reset_family, OFFSET_MISSING);
        assert_eq!(o.recv_reset_family, OFFSET_MISSING);
        assert_eq!(o.recv_reset_saddr_v6, 28);
        assert_eq!((l.kfree_skb_skbaddr, l.kfree_skb_protocol), (8, 24));
        assert_eq!(l.kfree_skb_reason, OFFSET_MISSING);
        let what: Vec<_> = r.unresolved.iter().map(|u| u.what.as_str()).collect();
        assert!(
            !what
                .iter()
                .any(|w| w.starts_with("tcp/") || w.starts_with("skb/")),
            "{what:?}"
        );
    }

    /// 6.1: the same with `family` in both reset records and drop reasons.
    #[test]
    fn debian_6_1_records() {
        let r = resolve_tracepoints(old_kernel(true, true));
        let (o, l) = (r.offsets, r.legacy);
        assert!(legacy_send_reset(&o, &l));
        assert_eq!(l.send_reset_family, 32);
        assert_eq!((l.send_reset_saddr_v6, l.send_reset_daddr_v6), (42, 58));
        assert_eq!(o.recv_reset_family, 20);
        assert_eq!(l.kfree_skb_reason, 28);
    }

    /// 6.8+: the sockaddr layout; kfree_skb is not even looked at.
    #[test]
    fn new_send_reset_layout_needs_no_kfree_skb() {
        let r = resolve_tracepoints(|category, name| match (category, name) {
            ("tcp", "tcp_send_reset") => Format::parse(
                "t",
                &format_text(&[
                    ("const void * skbaddr", 8, 8),
                    ("const void * skaddr", 16, 8),
                    ("int state", 24, 4),
                    ("enum sk_rst_reason reason", 28, 4),
                    ("__u8 saddr[28]", 32, 28),
                    ("__u8 daddr[28]", 60, 28),
                ]),
            )
            .map_err(|e| e.to_string()),
            _ => Err("absent".into()),
        });
        assert!(!legacy_send_reset(&r.offsets, &r.legacy));
        assert_eq!(r.offsets.send_reset_saddr, 32);
        assert_eq!(r.offsets.send_reset_reason, 28);
        assert_eq!(r.legacy.kfree_skb_skbaddr, OFFSET_MISSING);
        assert!(!r.unresolved.iter().any(|u| u.what.starts_with("skb/")));
    }

    /// Every member resolves on the running kernel's BTF, and every feature is on.
    #[test]
    fn the_running_kernel_resolves_everything() -> Result<(), Box<dyn std::error::Error>> {
        if !std::path::Path::new(Btf::VMLINUX).exists() {
            eprintln!("skipped: no {} on this kernel", Btf::VMLINUX);
            return Ok(());
        }
        let btf = Btf::from_file(Btf::VMLINUX)?;
        let r = resolve_kernel(&btf);
        assert!(r.unresolved.is_empty(), "{:?}", r.unresolved);
        let all = feature::TASK_CGROUP
            | feature::SOCK_CGROUP
            | feature::TASK_NETNS
            | feature::SKB_NETNS
            | feature::TASK_EXIT
            | feature::TASK_IDS
            | feature::SOCK_TUPLE
            | feature::SKB_HEADERS
            | feature::SOCK_ACTIVITY;
        // The tagged `sk_cgrp_data.val` is only for kernels before 5.15.
        assert_eq!(r.features & !feature::SOCK_CGROUP_TAGGED, all);
        // The sequence numbers lie within tcp_sock, past the inet_connection_sock it embeds.
        let icsk = btf.struct_size("inet_connection_sock")?;
        let tp = btf.struct_size("tcp_sock")?;
        for off in [
            r.activity.rcv_nxt,
            r.activity.copied_seq,
            r.activity.snd_wl1,
            r.activity.write_seq,
            r.activity.snd_una,
            r.activity.tcp_mstamp,
        ] {
            assert!(off >= icsk && off < tp, "{off} not in {icsk}..{tp}");
        }
        // sock_common is the first member of sock, and skc_net lies within it.
        assert!(r.offsets.sock_net < btf.struct_size("sock_common")?);
        Ok(())
    }
}
