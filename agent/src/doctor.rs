//! `termscope doctor`: what this node supports, one line each, honestly.
//!
//! It really loads and attaches every probe (then detaches them) when it has the privileges,
//! because whether a program passes this kernel's verifier is only known by trying.

use serde::Serialize;

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
                    ProbeState::Disabled(r) => (Status::Fail, format!("disabled: {r}")),
                    ProbeState::Failed(r) => (Status::Fail, format!("failed: {r}")),
                };
                checks.push(essential(check(
                    format!("probe {}", s.attach_point),
                    status,
                    detail,
                )));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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
