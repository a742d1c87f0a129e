//! The agent's seccomp profile, built into the binary so that the DaemonSet's init container
//! can install it on the node (`termscope seccomp-profile --install FILE`) before the agent
//! container, which asks for it as a `Localhost` profile, is created.
//!
//! The profile is `deploy/seccomp/termscope-agent.json` (deploy/README.md says how it was
//! made and measured): containerd's default profile for a container without capabilities,
//! plus the system calls the agent needs beyond it (`bpf`, `perf_event_open`).
//!
//! The socket-walk component (`deploy/components/socket-walk`) runs the agent with the host's
//! PID namespace, CAP_SYS_ADMIN and CAP_SYS_PTRACE, so that it can enter other pods' network
//! namespaces and walk their sockets when a watch begins; its profile,
//! `deploy/seccomp/termscope-agent-walk.json` (`--walk`), is the same plus one rule: `setns`
//! into a network namespace (`nstype == CLONE_NEWNET`), and no other kind.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

/// The profile (OCI runtime-spec `LinuxSeccomp` JSON, which containerd and CRI-O read).
pub const PROFILE: &str = include_str!("../../deploy/seccomp/termscope-agent.json");

/// The socket-walk component's profile: [`PROFILE`] plus `setns(fd, CLONE_NEWNET)`.
pub const WALK_PROFILE: &str = include_str!("../../deploy/seccomp/termscope-agent-walk.json");

/// Which of the two profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The DaemonSet's: the agent in its own PID namespace, no `setns`.
    Agent,
    /// The socket-walk component's: also `setns` into network namespaces.
    Walk,
}

impl Profile {
    /// The profile's JSON.
    pub fn text(self) -> &'static str {
        match self {
            Profile::Agent => PROFILE,
            Profile::Walk => WALK_PROFILE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no parent directory")]
    NoParent { path: PathBuf },
}

/// What [`install`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// The file already held this profile.
    Unchanged,
    /// The profile was written (a new file, or a different profile replaced).
    Written,
}

/// Writes `profile` to `path` unless it already holds it: into a temporary file beside
/// it, then renamed over it, so that a container runtime reading it never sees half a file.
pub fn install(path: &Path, profile: Profile) -> Result<Installed, SeccompError> {
    let text = profile.text();
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SeccompError::Io { path: p, source }
    };
    if std::fs::read(path).is_ok_and(|current| current == text.as_bytes()) {
        return Ok(Installed::Unchanged);
    }
    let dir = path.parent().ok_or_else(|| SeccompError::NoParent {
        path: path.to_path_buf(),
    })?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
    Ok(Installed::Written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_allows_what_the_agent_needs_and_denies_the_rest() -> Result<(), String> {
        let p: serde_json::Value = serde_json::from_str(PROFILE).map_err(|e| e.to_string())?;
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        let allowed: Vec<&str> = p["syscalls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
            .flat_map(|r| r["names"].as_array().into_iter().flatten())
            .filter_map(|n| n.as_str())
            .collect();
        for needed in [
            "bpf",
            "perf_event_open",
            "newfstatat",
            "statx",
            "read",
            "epoll_wait",
        ] {
            assert!(allowed.contains(&needed), "{needed} is not allowed");
        }
        for denied in [
            "name_to_handle_at",
            "open_by_handle_at",
            "mount",
            "init_module",
            "kexec_load",
            "unshare",
            "setns",
            "pivot_root",
            "chroot",
        ] {
            assert!(!allowed.contains(&denied), "{denied} is allowed");
        }
        Ok(())
    }

    #[test]
    fn the_walk_profile_adds_only_setns_into_network_namespaces() -> Result<(), String> {
        let parse = |t: &str| -> Result<serde_json::Value, String> {
            serde_json::from_str(t).map_err(|e| e.to_string())
        };
        let (base, walk) = (parse(PROFILE)?, parse(WALK_PROFILE)?);
        let rules = |p: &serde_json::Value| p["syscalls"].as_array().cloned().unwrap_or_default();
        let (base_rules, walk_rules) = (rules(&base), rules(&walk));
        // Everything else is the agent's profile, rule for rule.
        for key in ["architectures", "defaultAction"] {
            assert_eq!(base[key], walk[key], "{key}");
        }
        assert_eq!(walk_rules.len(), base_rules.len() + 1);
        assert_eq!(walk_rules[..base_rules.len()], base_rules[..]);
        // The one more: setns, its second argument (nstype) CLONE_NEWNET and nothing else
        // (setns with nstype 0, "any kind", would let it into a mount or PID namespace).
        let extra = &walk_rules[base_rules.len()];
        assert_eq!(extra["action"], "SCMP_ACT_ALLOW");
        assert_eq!(extra["names"], serde_json::json!(["setns"]));
        assert_eq!(
            extra["args"],
            serde_json::json!([{ "index": 1, "op": "SCMP_CMP_EQ", "value": libc::CLONE_NEWNET }])
        );
        Ok(())
    }

    #[test]
    fn install_writes_once_and_atomically() -> Result<(), SeccompError> {
        let dir = std::env::temp_dir().join(format!("termscope-seccomp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|source| SeccompError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join("agent.json");
        assert_eq!(install(&path, Profile::Agent)?, Installed::Written);
        assert_eq!(install(&path, Profile::Agent)?, Installed::Unchanged);
        std::fs::write(&path, "{}").map_err(|source| SeccompError::Io {
            path: path.clone(),
            source,
        })?;
        assert_eq!(install(&path, Profile::Agent)?, Installed::Written);
        assert_eq!(
            std::fs::read_to_string(&path).ok().as_deref(),
            Some(PROFILE)
        );
        // The other profile replaces it.
        assert_eq!(install(&path, Profile::Walk)?, Installed::Written);
        assert_eq!(
            std::fs::read_to_string(&path).ok().as_deref(),
            Some(WALK_PROFILE)
        );
        let left: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|source| SeccompError::Io {
                path: dir.clone(),
                source,
            })?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(install(&dir.join("missing/agent.json"), Profile::Agent).is_err());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
