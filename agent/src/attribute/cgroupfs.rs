//! The cgroup v2 filesystem: where it is mounted (pure v2 at `/sys/fs/cgroup`, or hybrid at
//! `/sys/fs/cgroup/unified`), the id of a cgroup directory (what the kernel programs report),
//! and the path of an id.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupfsError {
    #[error("no cgroup2 filesystem is mounted (checked /proc/self/mountinfo)")]
    NotMounted,
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a path the kernel accepts")]
    BadPath { path: PathBuf },
    #[error("{path} is not a directory, so not a cgroup")]
    NotADirectory { path: PathBuf },
    #[error("{path} gave a {len}-byte file handle, not a cgroup id")]
    NotACgroup { path: PathBuf, len: u32 },
}

/// How cgroups are mounted on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// cgroup v2 only (the "unified" hierarchy at `/sys/fs/cgroup`).
    Unified,
    /// cgroup v1 controllers with the v2 hierarchy beside them (usually
    /// `/sys/fs/cgroup/unified`).
    Hybrid,
}

/// The cgroup v2 mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub path: PathBuf,
    pub layout: Layout,
}

/// Finds the cgroup v2 mount in the text of `/proc/self/mountinfo`.
pub fn find_mount(mountinfo: &str) -> Option<Mount> {
    let mut v2 = None;
    let mut has_v1 = false;
    for line in mountinfo.lines() {
        // <id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> ...
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = right.split_whitespace().next();
        let mount_point = left.split_whitespace().nth(4);
        match (fstype, mount_point) {
            (Some("cgroup2"), Some(mp)) if v2.is_none() => v2 = Some(unescape(mp)),
            (Some("cgroup"), Some(_)) => has_v1 = true,
            _ => {}
        }
    }
    v2.map(|path| Mount {
        path: PathBuf::from(path),
        layout: if has_v1 {
            Layout::Hybrid
        } else {
            Layout::Unified
        },
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let n = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(n);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Mount {
    /// The cgroup v2 mount of this system.
    pub fn detect() -> Result<Self, CgroupfsError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(|source| CgroupfsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        find_mount(&text).ok_or(CgroupfsError::NotMounted)
    }

    /// The directory of a cgroup path such as `/kubepods.slice/...`.
    pub fn dir(&self, cgroup_path: &str) -> PathBuf {
        self.path.join(cgroup_path.trim_start_matches('/'))
    }

    /// The cgroup path (`/a/b`) of a directory under this mount.
    pub fn cgroup_path(&self, dir: &Path) -> Option<String> {
        let rel = dir.strip_prefix(&self.path).ok()?;
        Some(format!("/{}", rel.to_string_lossy()))
    }
}

/// The cgroup id of a cgroup v2 directory: the kernfs node id, which is what
/// `bpf_get_current_cgroup_id()` and the programs report.
///
/// On 64-bit kernels kernfs gives a directory that id as its inode number, so a `stat` is
/// enough: no capability, and a syscall every container runtime's default seccomp profile
/// allows. (`name_to_handle_at`, which hands the id out as an 8-byte file handle, is allowed
/// by those profiles only with CAP_SYS_ADMIN.) On 32-bit kernels the inode number is only the
/// id's low half, so there the file handle is used: [`cgroup_id_by_handle`]. The unit test
/// `stat_and_handle_agree` checks that both give the same id for every cgroup of the machine
/// it runs on.
pub fn cgroup_id(dir: &Path) -> Result<u64, CgroupfsError> {
    #[cfg(target_pointer_width = "64")]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(dir).map_err(|source| CgroupfsError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(CgroupfsError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        Ok(meta.ino())
    }
    #[cfg(not(target_pointer_width = "64"))]
    {
        cgroup_id_by_handle(dir)
    }
}

/// The cgroup id of a cgroup v2 directory from its file handle (`name_to_handle_at`): the
/// kernfs node id in 8 bytes, on every kernel. Needs CAP_SYS_ADMIN under the container
/// runtimes' default seccomp profiles (not under termscope's own, which does not allow it:
/// it is used only where [`cgroup_id`]'s `stat` cannot give the whole id, 32-bit kernels).
pub fn cgroup_id_by_handle(dir: &Path) -> Result<u64, CgroupfsError> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| CgroupfsError::BadPath {
        path: dir.to_path_buf(),
    })?;
    #[repr(C)]
    struct Handle {
        handle_bytes: u32,
        handle_type: i32,
        f_handle: [u8; 64],
    }
    let mut handle = Handle {
        handle_bytes: 64,
        handle_type: 0,
        f_handle: [0; 64],
    };
    let mut mount_id = 0;
    // SAFETY: `handle` is a file_handle header followed by 64 bytes of room, as handle_bytes
    // says; both out-pointers are valid for the call.
    let rc = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            c.as_ptr(),
            (&raw mut handle).cast::<libc::file_handle>(),
            &mut mount_id,
            0,
        )
    };
    if rc != 0 {
        return Err(CgroupfsError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    if handle.handle_bytes != 8 {
        return Err(CgroupfsError::NotACgroup {
            path: dir.to_path_buf(),
            len: handle.handle_bytes,
        });
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&handle.f_handle[..8]);
    Ok(u64::from_ne_bytes(id))
}

/// Finds the directory of cgroup `id` by walking the hierarchy below `root` (breadth first,
/// so pods and containers a few levels down are found quickly).
pub fn find_by_id(root: &Path, id: u64) -> Option<PathBuf> {
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    while let Some(dir) = queue.pop_front() {
        if cgroup_id(&dir).ok() == Some(id) {
            return Some(dir);
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push_back(entry.path());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
38 33 0:33 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
";
    const UNIFIED: &str = "\
26 22 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    const V1_ONLY: &str = "\
35 33 0:30 / /sys/fs/cgroup/memory rw shared:11 - cgroup cgroup rw,memory
";

    #[test]
    fn finds_the_cgroup2_mount() {
        assert_eq!(
            find_mount(HYBRID),
            Some(Mount {
                path: "/sys/fs/cgroup/unified".into(),
                layout: Layout::Hybrid
            })
        );
        assert_eq!(
            find_mount(UNIFIED),
            Some(Mount {
                path: "/sys/fs/cgroup".into(),
                layout: Layout::Unified
            })
        );
        assert_eq!(find_mount(V1_ONLY), None);
        assert_eq!(find_mount("garbage\n\n - \n"), None);
    }

    #[test]
    fn unescapes_mount_points() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/trailing\\04"), "/trailing\\04");
    }

    #[test]
    fn paths_under_the_mount() {
        let m = Mount {
            path: "/sys/fs/cgroup/unified".into(),
            layout: Layout::Hybrid,
        };
        assert_eq!(
            m.dir("/system.slice/nginx.service"),
            PathBuf::from("/sys/fs/cgroup/unified/system.slice/nginx.service")
        );
        assert_eq!(
            m.cgroup_path(Path::new("/sys/fs/cgroup/unified/a/b"))
                .as_deref(),
            Some("/a/b")
        );
        assert_eq!(m.cgroup_path(Path::new("/elsewhere")), None);
    }

    /// This process's own cgroup has an id, and walking the tree finds it again.
    #[test]
    fn ids_of_real_cgroups() -> Result<(), CgroupfsError> {
        let Ok(mount) = Mount::detect() else {
            eprintln!("skipped: no cgroup2 mount here");
            return Ok(());
        };
        let root_id = cgroup_id(&mount.path)?;
        assert_eq!(root_id, 1, "the root cgroup's id is 1");
        assert_eq!(find_by_id(&mount.path, root_id), Some(mount.path.clone()));
        assert!(cgroup_id(Path::new("/nonexistent/cgroup")).is_err());
        assert!(cgroup_id(&mount.path.join("cgroup.procs")).is_err());
        Ok(())
    }

    /// The two ways to a cgroup id give the same id for every cgroup of this machine (and a
    /// few made for the test, when it may make them): on 64-bit kernels a cgroup v2
    /// directory's inode number is its id.
    #[test]
    fn stat_and_handle_agree() -> Result<(), CgroupfsError> {
        let Ok(mount) = Mount::detect() else {
            eprintln!("skipped: no cgroup2 mount here");
            return Ok(());
        };
        let made = mount
            .path
            .join(format!("termscope-id-test-{}", std::process::id()));
        let nested = made.join("a/b");
        let made_ok = std::fs::create_dir_all(&nested).is_ok();
        let mut stack = vec![mount.path.clone()];
        let mut seen = 0;
        while let Some(dir) = stack.pop() {
            let by_handle = match cgroup_id_by_handle(&dir) {
                Ok(id) => id,
                // Gone meanwhile (a cgroup of another process), or not allowed here.
                Err(_) => continue,
            };
            assert_eq!(cgroup_id(&dir)?, by_handle, "{}", dir.display());
            seen += 1;
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
            }
        }
        if made_ok {
            let _ = std::fs::remove_dir(&nested);
            let _ = std::fs::remove_dir(made.join("a"));
            let _ = std::fs::remove_dir(&made);
            assert!(seen >= 4, "only {seen} cgroups compared");
        }
        assert!(seen >= 1);
        Ok(())
    }
}
