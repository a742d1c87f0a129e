//! The agent's seccomp profile, built into the binary so that the DaemonSet's init container
//! can install it on the node (`termscope seccomp-profile --install FILE`) before the agent
//! container, which asks for it as a `Localhost` profile, is created.
//!
//! The profile is `deploy/seccomp/termscope-agent.json` (deploy/README.md says how it was
//! made and measured): containerd's default profile for a container without capabilities,
//! plus the system calls the agent needs beyond it (`bpf`, `perf_event_open`).

use std::{
    io::Write,
    path::{Path, PathBuf},
};

/// The profile (OCI runtime-spec `LinuxSeccomp` JSON, which containerd and CRI-O read).
pub const PROFILE: &str = include_str!("../../deploy/seccomp/termscope-agent.json");

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

/// Writes the profile to `path` unless it already holds it: into a temporary file beside
/// it, then renamed over it, so that a container runtime reading it never sees half a file.
pub fn install(path: &Path) -> Result<Installed, SeccompError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SeccompError::Io { path: p, source }
    };
    if std::fs::read(path).is_ok_and(|current| current == PROFILE.as_bytes()) {
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
        f.write_all(PROFILE.as_bytes())?;
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
    fn install_writes_once_and_atomically() -> Result<(), SeccompError> {
        let dir = std::env::temp_dir().join(format!("termscope-seccomp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|source| SeccompError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join("agent.json");
        assert_eq!(install(&path)?, Installed::Written);
        assert_eq!(install(&path)?, Installed::Unchanged);
        std::fs::write(&path, "{}").map_err(|source| SeccompError::Io {
            path: path.clone(),
            source,
        })?;
        assert_eq!(install(&path)?, Installed::Written);
        assert_eq!(
            std::fs::read_to_string(&path).ok().as_deref(),
            Some(PROFILE)
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
        assert!(install(&dir.join("missing/agent.json")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
