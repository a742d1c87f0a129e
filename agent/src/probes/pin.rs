//! The kernel maps that outlive the agent, pinned in a bpffs directory.
//!
//! Pins live in a subdirectory named after the layout of what they hold (the sizes of the
//! entries and the live-connection map's capacity): an agent whose maps would differ does not
//! reuse them — it removes them and starts afresh, and says so — instead of misreading them.

use std::{
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
};

use termscope_common::{CgroupStats, KeptConn, LiveConn, WatchEntry};

use super::{LoadOptions, PINNED};

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: not on a bpffs mount, and bpffs cannot be mounted there (only /sys/fs/bpf is)")]
    NotBpffs(PathBuf),
}

/// Where this agent's maps are pinned.
#[derive(Debug, Clone)]
pub struct Pins {
    pub dir: PathBuf,
    /// Every map was found pinned there (an earlier agent's state carries over).
    pub reused: bool,
}

impl Pins {
    pub fn paths(&self) -> impl Iterator<Item = (&'static str, PathBuf)> + '_ {
        PINNED.iter().map(|name| (*name, self.dir.join(name)))
    }
}

/// Bumped when a pinned map's entries change meaning at the same size (1: `WATCHED_NETNS`
/// holds the namespace's cookie, no longer the time it was watched). `WATCH_HINT[1]` gaining
/// the watch generation in its high 32 bits needed no bump: an older agent's value reads as
/// generation 0, and an older agent reading a newer value only looks `WATCHED` up more often.
/// 2: `LIVE_CONNS` holds only watched cgroups' connections, and `WATCH_HINT` has a fourth
/// slot (`TRACK_ALL`).
const LAYOUT_REVISION: u32 = 2;

/// The subdirectory name for this build's map layout.
pub fn layout_tag(opts: &LoadOptions) -> String {
    // FNV-1a: stable across builds and Rust versions (DefaultHasher is not).
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    (
        std::mem::size_of::<LiveConn>(),
        std::mem::size_of::<WatchEntry>(),
        std::mem::size_of::<CgroupStats>(),
        opts.max_live_connections,
        std::mem::size_of::<KeptConn>(),
        opts.max_kept_connections,
        PINNED.as_slice(),
        LAYOUT_REVISION,
    )
        .hash(&mut h);
    format!("maps-{:016x}", h.finish())
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct it is given; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes sure `dir` is on bpffs (mounting it at /sys/fs/bpf when nothing is mounted there),
/// creates this layout's subdirectory, removes pins of other layouts, and tells whether
/// every map is already pinned.
pub fn prepare(dir: &Path, opts: &LoadOptions) -> Result<Pins, PinError> {
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) {
        if !is_bpffs(root) {
            mount_bpffs(root)?;
        }
    } else if !dir.ancestors().find(|a| a.exists()).is_some_and(is_bpffs) {
        return Err(PinError::NotBpffs(dir.to_path_buf()));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tag = layout_tag(opts);
    // Pins of another layout (another version, another --max-live-connections): removed.
    for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("maps-") && name != tag.as_str() {
            let path = entry.path();
            tracing::warn!(
                dir = %path.display(),
                "removing kernel maps pinned by an agent with another map layout: its state \
                 does not carry over"
            );
            remove_pins(&path)?;
        }
    }
    let sub = dir.join(&tag);
    std::fs::create_dir_all(&sub).map_err(io(&sub))?;
    let present = PINNED.iter().filter(|n| sub.join(n).exists()).count();
    if present != 0 && present != PINNED.len() {
        // Half a state is no state: start afresh rather than mix.
        tracing::warn!(
            dir = %sub.display(),
            present,
            "some pinned maps are missing: starting from empty maps"
        );
        remove_pins(&sub)?;
        std::fs::create_dir_all(&sub).map_err(io(&sub))?;
    }
    Ok(Pins {
        dir: sub,
        reused: present == PINNED.len(),
    })
}

fn mount_bpffs(root: &Path) -> Result<(), PinError> {
    std::fs::create_dir_all(root).map_err(io(root))?;
    let fstype = c"bpf";
    let target = c"/sys/fs/bpf";
    // SAFETY: NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(PinError::Io {
            path: root.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    tracing::info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

/// Unpins every map in a directory and removes it.
pub fn remove_pins(dir: &Path) -> Result<(), PinError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let path = entry.path();
        std::fs::remove_file(&path).map_err(io(&path))?;
    }
    std::fs::remove_dir(dir).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_tag_follows_the_map_sizes() {
        let a = LoadOptions::default();
        let b = LoadOptions {
            max_live_connections: 1024,
            ..LoadOptions::default()
        };
        assert_eq!(layout_tag(&a), layout_tag(&LoadOptions::default()));
        assert_ne!(layout_tag(&a), layout_tag(&b));
        assert!(layout_tag(&a).starts_with("maps-"));
    }
}
