//! Attribution: cgroup v2 id -> cgroup path -> what a person recognises (container, pod,
//! service).

pub mod cgroup_path;
pub mod cgroupfs;

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use cgroup_path::Identity;

/// Maps cgroup ids to identities. Cached; a miss re-indexes the hierarchy (at most once per
/// `min_rescan`); entries stay after the cgroup is removed, so late events keep their
/// identity until [`Resolver::forget`] is called.
#[derive(Debug)]
pub struct Resolver {
    mount: Option<cgroupfs::Mount>,
    known: HashMap<u64, Identity>,
    last_scan: Option<Instant>,
    min_rescan: Duration,
}

impl Resolver {
    pub fn new(mount: Option<cgroupfs::Mount>) -> Self {
        Resolver {
            mount,
            known: HashMap::new(),
            last_scan: None,
            min_rescan: Duration::from_millis(200),
        }
    }

    /// The identity of cgroup `id`, if it is or was on this node.
    pub fn resolve(&mut self, id: u64) -> Option<&Identity> {
        if id != 0 && !self.known.contains_key(&id) && self.may_rescan() {
            self.rescan();
        }
        self.known.get(&id)
    }

    /// The cgroup id of the container with this runtime id, if it is (or was) on this node.
    /// Re-indexes the hierarchy on a miss (a pod's deletion: rare, and the container may be
    /// younger than the last index).
    pub fn cgroup_of_container(&mut self, container_id: &str) -> Option<u64> {
        if let Some(id) = self.cgroup_of_known_container(container_id) {
            return Some(id);
        }
        if self.mount.is_some() {
            self.rescan();
        }
        self.cgroup_of_known_container(container_id)
    }

    /// Like [`Resolver::cgroup_of_container`], without re-indexing.
    /// The container's own cgroup, not one of its descendants (which carry the same id).
    pub fn cgroup_of_known_container(&self, container_id: &str) -> Option<u64> {
        self.known
            .iter()
            .filter(|(_, i)| i.container_id.as_deref() == Some(container_id))
            .min_by_key(|(_, i)| i.cgroup_path.len())
            .map(|(id, _)| *id)
    }

    /// The cgroup of the container (or unit) that cgroup `id` belongs to: `id` itself, or
    /// the ancestor that is the container when `id` is one of its descendants
    /// ([`cgroup_path::container_path`]). `id` when it is not known, or its container's
    /// cgroup is gone.
    pub fn container_of(&mut self, id: u64) -> u64 {
        let Some(identity) = self.resolve(id) else {
            return id;
        };
        let root = cgroup_path::container_path(&identity.cgroup_path);
        if root == identity.cgroup_path {
            return id;
        }
        if let Some((root_id, _)) = self.known.iter().find(|(_, i)| i.cgroup_path == root) {
            return *root_id;
        }
        if self.mount.is_none() {
            return id;
        }
        match self.id_of(&root) {
            Ok(root_id) => {
                self.remember(root_id, &root);
                root_id
            }
            Err(_) => id,
        }
    }

    /// The cgroups below cgroup `id` that exist now (remembered, so that their identities
    /// outlive them). Empty without a mount or when `id` is unknown or gone.
    pub fn descendants(&mut self, id: u64) -> Vec<u64> {
        let Some(path) = self.resolve(id).map(|i| i.cgroup_path.clone()) else {
            return Vec::new();
        };
        let Some(mount) = self.mount.clone() else {
            return Vec::new();
        };
        let mut found = Vec::new();
        let mut stack = vec![mount.dir(&path)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let child = entry.path();
                if let (Ok(child_id), Some(child_path)) =
                    (cgroupfs::cgroup_id(&child), mount.cgroup_path(&child))
                {
                    self.remember(child_id, &child_path);
                    found.push(child_id);
                }
                stack.push(child);
            }
        }
        found
    }

    /// Like [`Resolver::resolve`], but re-indexes on a miss even within the rate limit: for the
    /// moments that matter (a termination opens, a pod is deleted), when the cgroup still
    /// exists and may be younger than the last index.
    pub fn resolve_now(&mut self, id: u64) -> Option<&Identity> {
        if id != 0 && !self.known.contains_key(&id) && self.mount.is_some() {
            self.rescan();
        }
        self.known.get(&id)
    }

    /// Records a cgroup directory's identity now (e.g. right when watching starts, before the
    /// cgroup can be removed).
    pub fn remember(&mut self, id: u64, cgroup_path: &str) -> &Identity {
        self.known
            .entry(id)
            .or_insert_with(|| cgroup_path::classify(cgroup_path))
    }

    /// Drops a cgroup that is gone and whose reports are done.
    pub fn forget(&mut self, id: u64) {
        self.known.remove(&id);
    }

    fn may_rescan(&self) -> bool {
        self.mount.is_some()
            && self
                .last_scan
                .is_none_or(|t| t.elapsed() >= self.min_rescan)
    }

    /// Indexes every cgroup directory under the mount.
    fn rescan(&mut self) {
        self.last_scan = Some(Instant::now());
        let Some(mount) = &self.mount else {
            return;
        };
        let mut stack = vec![mount.path.clone()];
        while let Some(dir) = stack.pop() {
            if let Ok(id) = cgroupfs::cgroup_id(&dir)
                && let Some(path) = mount.cgroup_path(&dir)
            {
                self.known
                    .entry(id)
                    .or_insert_with(|| cgroup_path::classify(&path));
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
    }

    /// Whether cgroup `id` still has processes: `populated` in its `cgroup.events`. A cgroup
    /// whose directory is gone has none, and so has one no longer in the hierarchy. `None`
    /// without a cgroup v2 mount.
    pub fn populated(&mut self, id: u64) -> Option<bool> {
        let Some(identity) = self.resolve(id) else {
            // Not in the hierarchy (a termination's cgroup is resolved when it opens): it was
            // removed before the agent could read it, and a removed cgroup has no processes.
            return self.mount.as_ref().map(|_| false);
        };
        let path = identity.cgroup_path.clone();
        let dir = self.mount.as_ref()?.dir(&path);
        match std::fs::read_to_string(dir.join("cgroup.events")) {
            Ok(events) => Some(populated_from_events(&events)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(false),
            Err(_) => None,
        }
    }

    /// The cgroup id of a path under the mount (`/a/b`), or of an absolute directory.
    pub fn id_of(&self, path: &str) -> Result<u64, cgroupfs::CgroupfsError> {
        let dir = match &self.mount {
            Some(m) if !Path::new(path).starts_with(&m.path) => m.dir(path),
            _ => path.into(),
        };
        cgroupfs::cgroup_id(&dir)
    }
}

/// Reads `populated` from the text of a `cgroup.events` file.
fn populated_from_events(text: &str) -> bool {
    text.lines()
        .filter_map(|l| l.strip_prefix("populated "))
        .any(|v| v.trim() != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descendant cgroup resolves to its container's; the container to itself; the
    /// container id to the container's own cgroup, not a descendant's.
    #[test]
    fn descendants_resolve_to_their_container() {
        let id = "3f2a9c1b2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
        let scope = format!("/system.slice/cri-containerd-{id}.scope");
        let mut resolver = Resolver::new(None);
        resolver.remember(21, &format!("{scope}/sub/deeper"));
        resolver.remember(20, &format!("{scope}/sub"));
        resolver.remember(10, &scope);
        resolver.remember(30, "/ts-test/a");
        assert_eq!(resolver.container_of(20), 10);
        assert_eq!(resolver.container_of(21), 10);
        assert_eq!(resolver.container_of(10), 10);
        // Unknown layout: its own; unknown id: itself.
        assert_eq!(resolver.container_of(30), 30);
        assert_eq!(resolver.container_of(99), 99);
        assert_eq!(resolver.cgroup_of_known_container(id), Some(10));
        // The container's cgroup not known (and no mount to look it up): itself.
        let mut alone = Resolver::new(None);
        alone.remember(20, &format!("{scope}/sub"));
        assert_eq!(alone.container_of(20), 20);
    }

    #[test]
    fn reads_populated() {
        assert!(populated_from_events("populated 1\nfrozen 0\n"));
        assert!(!populated_from_events("populated 0\nfrozen 0\n"));
        assert!(!populated_from_events(""));
    }

    /// A real cgroup: empty, then with a process, then without.
    #[test]
    fn populated_follows_the_processes() -> Result<(), Box<dyn std::error::Error>> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to create a cgroup");
            return Ok(());
        }
        let Ok(mount) = cgroupfs::Mount::detect() else {
            eprintln!("skipped: no cgroup2 mount");
            return Ok(());
        };
        let name = format!("ts-unit-populated-{}", std::process::id());
        let dir = mount.path.join(&name);
        std::fs::create_dir(&dir)?;
        let id = cgroupfs::cgroup_id(&dir)?;
        let mut resolver = Resolver::new(Some(mount));
        assert_eq!(resolver.populated(id), Some(false));
        let mut child = std::process::Command::new("sleep").arg("30").spawn()?;
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string())?;
        assert_eq!(resolver.populated(id), Some(true));
        child.kill()?;
        child.wait()?;
        std::fs::remove_dir(&dir)?;
        assert_eq!(
            resolver.populated(id),
            Some(false),
            "a removed cgroup is empty"
        );
        // Not in the hierarchy at all: gone, hence empty.
        assert_eq!(resolver.populated(999_999_999), Some(false));
        assert_eq!(
            Resolver::new(None).populated(id),
            None,
            "no mount, no answer"
        );
        Ok(())
    }
}
