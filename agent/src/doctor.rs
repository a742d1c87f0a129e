//! `termscope doctor`: what this node supports, one line each, honestly.
//!
//! It really loads and attaches every probe (then detaches them) when it has the privileges,
//! because whether a program passes this kernel's verifier is only known by trying.

use serde::Serialize;

use termscope_common::feature;

use crate::{
    attribute::cgroupfs,
    probes::{self, KernelSupport, LoadOptions, ProbeState, Probes},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// Works, with something missing.
    Warn,
    /// Missing; `essential` says whether the agent can do its job without it.
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// Without this the agent cannot report terminations.
    pub essential: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether an essential piece is missing.
    pub fn failed(&self) -> bool {
        self.checks
            .iter()
            .any(|c| c.essential && c.status == Status::Fail)
    }

    /// A table for people.
    pub fn render(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            let mark = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail if c.essential => "FAIL",
                Status::Fail => "off ",
            };
            out.push_str(&format!("{mark}  {:width$}  {}\n", c.name, c.detail));
        }
        out
    }
}

fn check(name: impl Into<String>, status: Status, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
        essential: false,
    }
}

fn essential(mut c: Check) -> Check {
    c.essential = true;
    c
}

/// Effective capabilities of this process (`CapEff` in /proc/self/status).
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Whether this process may load tracing programs (see [`caps_allow_tracing`]).
pub fn has_tracing_privileges() -> bool {
    effective_caps().is_some_and(caps_allow_tracing)
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Whether `caps` allow loading tracing programs: CAP_BPF with CAP_PERFMON, or CAP_SYS_ADMIN.
pub fn caps_allow_tracing(caps: u64) -> bool {
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    (has(CAP_BPF) && has(CAP_PERFMON)) || has(CAP_SYS_ADMIN)
}

/// Runs every check.
/// The process's seccomp mode and filter count, from `/proc/self/status` (`Seccomp:` 0 none,
/// 1 strict, 2 filter; `Seccomp_filters:`).
pub fn seccomp_status(status: &str) -> Option<(u32, Option<u32>)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u32>().ok())
    };
    Some((field("Seccomp:")?, field("Seccomp_filters:")))
}

/// Whether this (privileged) process may make the `bpf()` system call at all. A seccomp
/// filter without `bpf` (a container runtime's default profile, `RuntimeDefault`) answers
/// `EPERM` before the kernel looks at capabilities or arguments; the agent's own profile
/// (deploy/seccomp/termscope-agent.json) allows it. The call made is `BPF_MAP_CREATE` with an
/// empty attribute, which the kernel refuses with `EINVAL` when the call is allowed.
pub fn bpf_syscall_allowed() -> Result<(), String> {
    // SAFETY: bpf(BPF_MAP_CREATE = 0, NULL, 0): no memory is passed; a descriptor it might
    // return is closed at once.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0 as libc::c_long,
            std::ptr::null::<u8>(),
            0 as libc::c_uint,
        )
    };
    if fd >= 0 {
        // SAFETY: fd was just returned to this process and is not used elsewhere.
        unsafe { libc::close(fd as libc::c_int) };
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Ok(());
    }
    let seccomp = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| seccomp_status(&s));
    Err(match seccomp {
        Some((2, filters)) => format!(
            "denied (EPERM) although the capabilities are in effect: this process runs under a \
             seccomp filter ({} filter(s)) that does not allow bpf(); run the agent under its \
             own profile, which does (deploy/seccomp/termscope-agent.json, a Localhost \
             profile: deploy/README.md), not RuntimeDefault",
            filters.map_or_else(|| "?".to_string(), |n| n.to_string())
        ),
        _ => "denied (EPERM) although the capabilities are in effect: a security module \
              (SELinux, AppArmor, lockdown) or kernel.unprivileged_bpf_disabled refuses it"
            .to_string(),
    })
}

pub fn run() -> Report {
    let mut checks = Vec::new();

    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    checks.push(check("kernel", Status::Ok, format!("Linux {release}")));

    let caps = effective_caps();
    let privileged = caps.is_some_and(caps_allow_tracing);
    checks.push(essential(match caps {
        Some(c) if caps_allow_tracing(c) => check(
            "privileges",
            Status::Ok,
            "CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN) in effect",
        ),
        Some(_) => check(
            "privileges",
            Status::Fail,
            "needs root, or CAP_BPF + CAP_PERFMON: run with sudo",
        ),
        None => check(
            "privileges",
            Status::Fail,
            "could not read capabilities from /proc/self/status",
        ),
    }));

    if privileged {
        checks.push(essential(match bpf_syscall_allowed() {
            Ok(()) => check("bpf() system call", Status::Ok, "allowed"),
            Err(why) => check("bpf() system call", Status::Fail, why),
        }));
    }

    let support = KernelSupport::probe();
    checks.push(essential(match &support.btf {
        Ok(()) => check(
            "BTF",
            Status::Ok,
            format!("{} parsed", probes::btf::Btf::VMLINUX),
        ),
        Err(e) => check("BTF", Status::Fail, e.clone()),
    }));
    checks.push(essential(match &support.tracefs {
        Ok(root) => check("tracefs", Status::Ok, format!("mounted at {root}")),
        Err(e) => check("tracefs", Status::Fail, e.clone()),
    }));

    checks.push(essential(match cgroupfs::Mount::detect() {
        Ok(m) => check(
            "cgroup v2",
            Status::Ok,
            format!(
                "{} at {}",
                match m.layout {
                    cgroupfs::Layout::Unified => "pure v2 (unified)",
                    cgroupfs::Layout::Hybrid => "hybrid (v1 controllers + v2)",
                },
                m.path.display()
            ),
        ),
        Err(e) => check("cgroup v2", Status::Fail, e.to_string()),
    }));

    let features = support.kernel.as_ref().map_or(0, |k| k.features);
    for (bit, name) in probes::FEATURE_NAMES {
        let on = features & bit != 0;
        checks.push(check(
            format!("offsets: {name}"),
            if on { Status::Ok } else { Status::Warn },
            if on {
                "resolved from BTF".to_string()
            } else if bit == termscope_common::feature::SOCK_ACTIVITY {
                "not resolved: reports cannot tell idle connections from ones in flight at a \
                 close; every close by an exit or a reset counts as cut (flag \
                 activity_unavailable)"
                    .to_string()
            } else {
                "not resolved: the probes that use it run without it".to_string()
            },
        ));
    }
    for u in support.unresolved() {
        checks.push(check(
            format!("unresolved: {}", u.what),
            Status::Warn,
            u.reason.clone(),
        ));
    }

    if !privileged {
        for spec in probes::PROBES {
            checks.push(essential(check(
                format!("probe {}", spec.attach),
                Status::Fail,
                "not tried: no privileges to load eBPF programs",
            )));
        }
        return Report { checks };
    }

    match Probes::load_with(support, &LoadOptions::default()) {
        Ok(probes) => {
            for s in &probes.status {
                let (status, detail) = match &s.state {
                    ProbeState::Attached if s.degraded.is_empty() => {
                        (Status::Ok, format!("attached: {}", s.purpose))
                    }
                    ProbeState::Attached => (
                        Status::Warn,
                        format!("attached, degraded: {}", s.degraded.join("; ")),
                    ),
                    ProbeState::NotNeeded(r) => (Status::Ok, format!("not needed: {r}")),
                    ProbeState::Disabled(r) => (Status::Fail, format!("disabled: {r}")),
                    ProbeState::Failed(r) => (Status::Fail, format!("failed: {r}")),
                };
                checks.push(essential(check(
                    format!("probe {}", s.attach_point),
                    status,
                    detail,
                )));
            }
            let attached = |program: &str| {
                probes
                    .status
                    .iter()
                    .any(|s| s.program == program && s.state == ProbeState::Attached)
            };
            let support = &probes.support;
            let features = support.kernel.as_ref().map_or(0, |k| k.features);
            let facts = KernelFacts {
                version: kernel_version(&release),
                send_reset: attached("tcp_send_reset"),
                legacy_send_reset: support.legacy_send_reset(),
                kfree_skb: attached(probes::KFREE_SKB),
                drop_reasons: support.drop_reasons(),
                reset_reasons: support.reset_reasons(),
                sock_cgroup: if features & feature::SOCK_CGROUP == 0 {
                    SockCgroup::Missing
                } else if features & feature::SOCK_CGROUP_TAGGED != 0 {
                    SockCgroup::Tagged
                } else {
                    SockCgroup::Pointer
                },
                memlock: probes::memlock(),
                runs_missed_counted: !probes.runs_missed().is_empty(),
                socket_walk: probes.walk_coverage.as_ref().err().cloned(),
            };
            checks.extend(feature_checks(&facts));
            checks.push(essential(check(
                "ring buffer",
                Status::Ok,
                format!(
                    "created ({} KiB); events it cannot take are counted",
                    LoadOptions::default().ring_buffer_bytes / 1024
                ),
            )));
            // Dropping `probes` detaches and unloads everything.
        }
        Err(e) => {
            checks.push(essential(check(
                "eBPF object",
                Status::Fail,
                probes::error_chain(&e),
            )));
        }
    }
    Report { checks }
}

/// `(major, minor)` of a release such as `5.10.0-32-amd64`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// How a socket's cgroup is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockCgroup {
    /// `sk_cgrp_data.cgroup` (5.15+).
    Pointer,
    /// `sk_cgrp_data.val` (before 5.15): a pointer unless net_cls/net_prio tagged the socket.
    Tagged,
    Missing,
}

/// What the kernel-dependent features rest on, as found by loading the probes.
#[derive(Debug, Clone)]
pub struct KernelFacts {
    pub version: Option<(u32, u32)>,
    pub send_reset: bool,
    pub legacy_send_reset: bool,
    pub kfree_skb: bool,
    pub drop_reasons: bool,
    pub reset_reasons: bool,
    pub sock_cgroup: SockCgroup,
    /// RLIMIT_MEMLOCK after trying to raise it: unlimited, and the current limit in bytes.
    pub memlock: Option<(bool, u64)>,
    /// The kernel tells how many runs of each program it skipped (`recursion_misses`, 5.11+).
    pub runs_missed_counted: bool,
    /// Why the kernel's TCP sockets cannot be walked (the TCP iterator), if they cannot.
    pub socket_walk: Option<String>,
}

/// One line per feature that differs between kernels: how it works here, or which verdicts
/// its absence affects.
pub fn feature_checks(f: &KernelFacts) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(
        match (
            f.legacy_send_reset,
            f.send_reset,
            f.kfree_skb,
            f.drop_reasons,
        ) {
            (false, true, _, _) => check(
                "feature: refusals",
                Status::Ok,
                "seen at tcp_send_reset (a reset without a socket): `refused`, late traffic",
            ),
            (true, _, true, true) => check(
                "feature: refusals",
                Status::Ok,
                "seen at skb:kfree_skb, drop reason NO_SOCKET (before 6.8 tcp_send_reset does not \
             fire without a socket): `refused`, late traffic",
            ),
            (true, _, true, false) => check(
                "feature: refusals",
                Status::Ok,
                "seen at skb:kfree_skb: a SYN freed by TCP itself (no drop reasons before 5.17, so \
             a SYN TCP drops for another reason, e.g. a bad checksum, also counts): `refused`, \
             late traffic",
            ),
            _ => check(
                "feature: refusals",
                Status::Warn,
                "not seen: the `refused` verdict and late traffic (connections refused after the \
             listener closed) are never reported",
            ),
        },
    );
    out.push(if f.reset_reasons {
        check(
            "feature: reset reasons",
            Status::Ok,
            "the kernel's reason for each reset sent (enum sk_rst_reason)",
        )
    } else {
        check(
            "feature: reset reasons",
            Status::Warn,
            "none before 6.10: reports show no `reset_reason` for resets sent; no verdict \
             depends on it",
        )
    });
    out.push(match f.sock_cgroup {
        SockCgroup::Pointer => check(
            "feature: socket cgroup",
            Status::Ok,
            "sock->sk_cgrp_data.cgroup: connections belong to the cgroup that opened them",
        ),
        SockCgroup::Tagged => check(
            "feature: socket cgroup",
            Status::Ok,
            "sock->sk_cgrp_data.val (before 5.15); a socket tagged by the net_cls/net_prio v1 \
             controllers falls back to the current task's cgroup, flagged",
        ),
        SockCgroup::Missing => check(
            "feature: socket cgroup",
            Status::Warn,
            "not resolved: connections are attributed to the current task's cgroup, wrong in \
             softirq context: `reset_by_peer`, `closed_by_exit` and `completed` can be missed \
             or misattributed",
        ),
    });
    let before_5_11 = f.version.is_some_and(|v| v < (5, 11));
    out.push(match (before_5_11, f.memlock) {
        (false, _) => check(
            "feature: BPF memory",
            Status::Ok,
            "charged to the memory cgroup (5.11+); RLIMIT_MEMLOCK does not apply",
        ),
        (true, Some((true, _))) => check(
            "feature: BPF memory",
            Status::Ok,
            "charged to RLIMIT_MEMLOCK before 5.11: raised to unlimited",
        ),
        (true, Some((false, cur))) => check(
            "feature: BPF memory",
            Status::Warn,
            format!(
                "charged to RLIMIT_MEMLOCK before 5.11, which is {} KiB and could not be \
                 raised (needs CAP_SYS_RESOURCE: deploy/components/memlock): maps may fail \
                 to load",
                cur / 1024
            ),
        ),
        (true, None) => check(
            "feature: BPF memory",
            Status::Warn,
            "charged to RLIMIT_MEMLOCK before 5.11, which could not be read",
        ),
    });
    out.push(if f.runs_missed_counted {
        check(
            "feature: skipped runs",
            Status::Ok,
            "counted: a run the kernel skips (the program already running on that CPU) shows \
             in termscope_kernel_runs_missed_total and the agent's log",
        )
    } else {
        check(
            "feature: skipped runs",
            Status::Warn,
            "not counted by this kernel (before 5.11): a state change, signal or exit whose \
             program run the kernel skips is lost without a trace",
        )
    });
    out.push(match &f.socket_walk {
        None => check(
            "feature: socket walk",
            Status::Ok,
            format!(
                "the kernel keeps only watched containers' connections; when a watch begins, \
                 the container's open connections are walked in, with when each was \
                 established from a log of the last {} establishments per CPU",
                termscope_common::est_log::PER_CPU
            ),
        ),
        Some(reason) => check(
            "feature: socket walk",
            Status::Warn,
            format!(
                "not every container's sockets can be walked when its watch begins ({reason}): \
                 every connection is kept from its opening instead (a map write and a deletion \
                 per connection on the hot path, about three times the cost with nothing \
                 watched; for the cheaper way run the agent in the host's PID namespace with \
                 CAP_SYS_PTRACE and CAP_SYS_ADMIN, setns allowed into network namespaces: \
                 the DaemonSet's component deploy/components/socket-walk)"
            ),
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> KernelFacts {
        KernelFacts {
            version: Some((6, 18)),
            send_reset: true,
            legacy_send_reset: false,
            kfree_skb: false,
            drop_reasons: true,
            reset_reasons: true,
            sock_cgroup: SockCgroup::Pointer,
            memlock: Some((false, 8 << 20)),
            runs_missed_counted: true,
            socket_walk: None,
        }
    }

    fn statuses(f: &KernelFacts) -> Vec<(String, Status)> {
        feature_checks(f)
            .into_iter()
            .map(|c| (c.name, c.status))
            .collect()
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("5.10.0-32-amd64"), Some((5, 10)));
        assert_eq!(kernel_version("6.12.117+deb13-amd64"), Some((6, 12)));
        assert_eq!(kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(kernel_version("unknown"), None);
    }

    #[test]
    fn features_per_kernel() {
        // 6.18: everything from the newest layouts.
        assert!(statuses(&facts()).iter().all(|(_, s)| *s == Status::Ok));
        // 6.1: refusals at kfree_skb with drop reasons; no reset reasons.
        let f61 = KernelFacts {
            version: Some((6, 1)),
            legacy_send_reset: true,
            kfree_skb: true,
            reset_reasons: false,
            ..facts()
        };
        let c = feature_checks(&f61);
        assert!(c[0].detail.contains("NO_SOCKET"), "{:?}", c[0]);
        assert_eq!(c[0].status, Status::Ok);
        assert_eq!(c[1].status, Status::Warn);
        // 5.10: no drop reasons, tagged socket cgroup, memlock.
        let f510 = KernelFacts {
            version: Some((5, 10)),
            drop_reasons: false,
            sock_cgroup: SockCgroup::Tagged,
            memlock: Some((true, u64::MAX)),
            runs_missed_counted: false,
            ..f61.clone()
        };
        let c = feature_checks(&f510);
        assert_eq!(c[4].status, Status::Warn);
        assert!(c[4].detail.contains("before 5.11"), "{:?}", c[4]);
        assert!(c[0].detail.contains("no drop reasons"), "{:?}", c[0]);
        assert!(c[2].detail.contains("sk_cgrp_data.val"), "{:?}", c[2]);
        assert_eq!(c[3].status, Status::Ok);
        let f510_limited = KernelFacts {
            memlock: Some((false, 8 << 20)),
            ..f510.clone()
        };
        let c = feature_checks(&f510_limited);
        assert_eq!(c[3].status, Status::Warn);
        assert!(c[3].detail.contains("8192 KiB"), "{:?}", c[3]);
        // Refusals not seen at all name the verdicts they affect.
        let none = KernelFacts {
            kfree_skb: false,
            ..f510
        };
        let c = feature_checks(&none);
        assert_eq!(c[0].status, Status::Warn);
        assert!(c[0].detail.contains("`refused`"), "{:?}", c[0]);
        assert_eq!(c[5].status, Status::Ok);
        // No TCP iterator: every connection is tracked, and doctor says what that costs.
        let no_walk = KernelFacts {
            socket_walk: Some("load (the TCP iterator needs Linux 5.9+): EINVAL".into()),
            ..facts()
        };
        let c = feature_checks(&no_walk);
        assert_eq!(c[5].status, Status::Warn);
        assert!(
            c[5].detail.contains("every connection is kept"),
            "{:?}",
            c[5]
        );
        assert!(c[5].detail.contains("5.9+"), "{:?}", c[5]);
    }

    #[test]
    fn capabilities() {
        assert!(caps_allow_tracing(1 << CAP_SYS_ADMIN));
        assert!(caps_allow_tracing((1 << CAP_BPF) | (1 << CAP_PERFMON)));
        assert!(!caps_allow_tracing(1 << CAP_BPF));
        assert!(!caps_allow_tracing(0));
    }

    #[test]
    fn reads_the_seccomp_mode() {
        let status = "Name:\tx\nSeccomp:\t2\nSeccomp_filters:\t1\nCpus_allowed:\tf\n";
        assert_eq!(seccomp_status(status), Some((2, Some(1))));
        assert_eq!(seccomp_status("Seccomp:\t0\n"), Some((0, None)));
        assert_eq!(seccomp_status("Name:\tx\n"), None);
    }

    #[test]
    fn only_essential_failures_fail() {
        let mut r = Report {
            checks: vec![check("a", Status::Ok, ""), check("b", Status::Fail, "")],
        };
        assert!(!r.failed());
        r.checks.push(essential(check("c", Status::Warn, "")));
        assert!(!r.failed());
        r.checks.push(essential(check("d", Status::Fail, "x")));
        assert!(r.failed());
        assert!(r.render().contains("FAIL  d  x"));
    }
}
