//! Resolves, on the running kernel, every offset the kernel programs read: struct members from
//! BTF and tracepoint fields from tracefs. What cannot be resolved is recorded with the reason
//! and turns the features that need it off; nothing here fails the agent as a whole.

use termscope_common::{KernelOffsets, OFFSET_MISSING, TracepointOffsets, feature};

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
    pub features: u64,
    pub unresolved: Vec<Unresolved>,
}

/// Resolves every struct member the programs read from `btf`.
pub fn resolve_kernel(btf: &Btf) -> ResolvedKernel {
    let mut un = Vec::new();
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
        sock_cgroup: member(btf, &m("sock", "sk_cgrp_data.cgroup", 8), &mut un),
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
        _pad: 0,
    };
    let all = |offs: &[u32]| offs.iter().all(|&x| x != OFFSET_MISSING);
    let mut features = 0;
    let cgroup_chain = [o.cgroup_kn, o.kernfs_node_id];
    if all(&[o.task_cgroups, o.css_set_dfl_cgrp]) && all(&cgroup_chain) {
        features |= feature::TASK_CGROUP;
    }
    if all(&[o.sock_cgroup]) && all(&cgroup_chain) {
        features |= feature::SOCK_CGROUP;
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
    ResolvedKernel {
        offsets: o,
        features,
        unresolved: un,
    }
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
        o.send_reset_reason = r.field(("reason", 4));
        // Since 6.10 the addresses are whole `sockaddr_in6`-sized records.
        o.send_reset_saddr = r.field(("saddr", 28));
        o.send_reset_daddr = r.field(("daddr", 28));
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
        o.recv_reset_family = r.field(("family", 2));
        o.recv_reset_saddr = r.field(("saddr", 4));
        o.recv_reset_daddr = r.field(("daddr", 4));
        o.recv_reset_saddr_v6 = r.field(("saddr_v6", 16));
        o.recv_reset_daddr_v6 = r.field(("daddr_v6", 16));
    }
    ResolvedTracepoints {
        offsets: o,
        unresolved: un,
    }
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
            | feature::SOCK_TUPLE;
        assert_eq!(r.features, all);
        // sock_common is the first member of sock, and skc_net lies within it.
        assert!(r.offsets.sock_net < btf.struct_size("sock_common")?);
        Ok(())
    }
}
