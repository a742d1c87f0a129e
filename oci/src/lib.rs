//! OCI image archives built from files on this machine, with no base image and no registry:
//! an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`: one config, one
//! manifest, one gzip layer) in a tar file, what `ctr images import`, `skopeo copy
//! oci-archive:...` and `podman load` read.
//!
//! Reproducible: the same files (content, mode, path) and the same image config give the
//! same bytes, hence the same digests. Every tar entry is owned by root with mtime 0, entries
//! are sorted by path, the gzip header carries no time or name, and the image config has no
//! `created` date. What is not recorded: the files' owners, times and extended attributes on
//! this machine.
//!
//! Used by `cargo xtask image` (the agent's image: [`agent_image`]) and by the tests, which
//! build their pause and app images with it and run the agent's image on containerd.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ldd {program}: {message}")]
    Ldd { program: PathBuf, message: String },
    #[error("the image config: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0} bytes do not fit in a tar entry")]
    TooBig(usize),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OciError {
    let what = what.into();
    move |source| OciError::Io { what, source }
}

/// A file tree to pack as an image layer. Paths are relative to the rootfs (no leading `/`).
#[derive(Debug, Clone, Default)]
pub struct Rootfs {
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone)]
enum Entry {
    Dir(u32),
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

fn rel(path: &str) -> String {
    path.trim_matches('/').to_string()
}

impl Rootfs {
    /// The directories every Linux rootfs has (runc mounts /proc, /sys, /dev over them).
    pub fn base() -> Self {
        let mut r = Rootfs::default();
        for d in ["dev", "proc", "sys", "etc", "run", "var", "root"] {
            r.dir(d, 0o755);
        }
        r.dir("tmp", 0o1777);
        r.dir("var/tmp", 0o1777);
        r
    }

    /// Adds a directory (and its parents).
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let path = rel(path);
        self.parent_of(&path);
        if !path.is_empty() {
            self.entries.insert(path, Entry::Dir(mode));
        }
        self
    }

    fn parent_of(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/')
            && !self.entries.contains_key(parent)
        {
            self.dir(parent, 0o755);
        }
    }

    /// Adds a file.
    pub fn file(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> &mut Self {
        let path = rel(path);
        self.parent_of(&path);
        self.entries.insert(
            path,
            Entry::File {
                data: data.into(),
                mode,
            },
        );
        self
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let path = rel(path);
        self.parent_of(&path);
        self.entries
            .insert(path, Entry::Symlink(target.to_string()));
        self
    }

    /// Copies a host file (following symlinks: the content) to `path` in the rootfs, with
    /// its permission bits.
    pub fn copy_file(&mut self, host: &Path, path: &str) -> Result<&mut Self, OciError> {
        use std::os::unix::fs::PermissionsExt;
        let data = std::fs::read(host).map_err(io(format!("reading {}", host.display())))?;
        let mode = std::fs::metadata(host)
            .map_err(io(format!("reading {}", host.display())))?
            .permissions()
            .mode()
            & 0o7777;
        Ok(self.file(path, data, mode))
    }

    /// Copies a host file to the same path in the rootfs.
    pub fn copy_from_host(&mut self, host: &Path) -> Result<&mut Self, OciError> {
        let path = host.to_string_lossy().to_string();
        self.copy_file(host, &path)
    }

    /// Copies a host program and every shared library `ldd` resolves for it (at the paths
    /// the loader looks for them), so it runs in a rootfs with nothing else.
    pub fn copy_program(&mut self, host: &Path) -> Result<&mut Self, OciError> {
        self.copy_from_host(host)?;
        self.copy_libraries_of(host)
    }

    /// Copies the shared libraries (and loader) `ldd` resolves for a host program.
    pub fn copy_libraries_of(&mut self, host: &Path) -> Result<&mut Self, OciError> {
        for lib in shared_libraries(host)? {
            self.copy_from_host(&lib)?;
        }
        Ok(self)
    }

    /// The paths in the tree, sorted.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Packs the tree as an uncompressed tar (reproducible: owner root, mtime 0, sorted).
    fn tar_into<W: Write>(&self, out: W) -> Result<W, OciError> {
        let mut b = tar::Builder::new(out);
        for (path, entry) in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            let what = || io(format!("packing {path}"));
            match entry {
                Entry::Dir(mode) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{path}/"), std::io::empty())
                        .map_err(what())?;
                }
                Entry::File { data, mode } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(
                        u64::try_from(data.len()).map_err(|_| OciError::TooBig(data.len()))?,
                    );
                    b.append_data(&mut h, path, data.as_slice())
                        .map_err(what())?;
                }
                Entry::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, path, target).map_err(what())?;
                }
            }
        }
        b.into_inner().map_err(io("finishing the layer"))
    }
}

/// The shared libraries (and loader) `ldd` lists for a program, resolved to files.
pub fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>, OciError> {
    let ldd_error = |message: String| OciError::Ldd {
        program: program.to_path_buf(),
        message,
    };
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(io("running ldd"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(ldd_error(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        } else if line.contains("not found") {
            return Err(ldd_error(line.trim().to_string()));
        }
    }
    Ok(libs)
}

/// An image to build: its rootfs and the runtime config a Dockerfile would set.
#[derive(Debug, Clone, Default)]
pub struct Image {
    /// Full reference, e.g. `termscope.test/app:1` or `docker.io/library/termscope:0.1.0`
    /// (containerd names the imported image exactly so: see [`normalize_reference`]).
    pub name: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    /// The image config's `StopSignal` (Dockerfile `STOPSIGNAL`), e.g. "SIGQUIT".
    pub stop_signal: Option<String>,
    /// `ExposedPorts`, e.g. "9469/tcp".
    pub exposed_ports: Vec<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    pub rootfs: Rootfs,
    /// Store the layer as a plain tar instead of tar+gzip: bigger, but much faster to build
    /// and to unpack (the tests' images of a 200 MB debug binary).
    pub uncompressed_layer: bool,
}

/// An image archive and its digests.
#[derive(Debug, Clone)]
pub struct OciArchive {
    /// The tar file's bytes.
    pub bytes: Vec<u8>,
    /// The manifest's digest (`sha256:...`): the image's digest, as a registry reports it
    /// once pushed, and as `ctr images ls` shows it.
    pub manifest_digest: String,
    /// The image config's digest: the image id (`crictl images`' IMAGE ID, `docker images`').
    pub config_digest: String,
}

impl Image {
    /// The image as an OCI image layout archive (`oci-layout`, `index.json`,
    /// `blobs/sha256/...`), what `ctr images import` reads.
    pub fn oci_archive(&self) -> Result<OciArchive, OciError> {
        // The layer: tar.gz; its diff id is the digest of the uncompressed tar. flate2's gzip
        // header has mtime 0 and no file name.
        let (layer, diff_id, layer_media_type) = if self.uncompressed_layer {
            let tar = self.rootfs.tar_into(Vec::new())?;
            let diff_id = sha256(&tar);
            (tar, diff_id, "application/vnd.oci.image.layer.v1.tar")
        } else {
            let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let hashing = self.rootfs.tar_into(HashingWriter {
                inner: gz,
                hasher: Sha256::new(),
            })?;
            let diff_id = format!("sha256:{:x}", hashing.hasher.finalize());
            let layer = hashing
                .inner
                .finish()
                .map_err(io("compressing the layer"))?;
            (
                layer,
                diff_id,
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        };
        let layer_digest = sha256(&layer);

        let (arch, os) = (go_arch(), "linux");
        let mut config = serde_json::json!({
            "Env": self.env,
            "WorkingDir": self.working_dir,
        });
        if !self.entrypoint.is_empty() {
            config["Entrypoint"] = serde_json::json!(self.entrypoint);
        }
        if !self.cmd.is_empty() {
            config["Cmd"] = serde_json::json!(self.cmd);
        }
        if let Some(sig) = &self.stop_signal {
            config["StopSignal"] = serde_json::json!(sig);
        }
        if !self.exposed_ports.is_empty() {
            let ports: serde_json::Map<String, serde_json::Value> = self
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), serde_json::json!({})))
                .collect();
            config["ExposedPorts"] = serde_json::Value::Object(ports);
        }
        if !self.labels.is_empty() {
            config["Labels"] = serde_json::json!(self.labels);
        }
        // No "created": a date would make every build differ.
        let image_config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch,
            "os": os,
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            "history": [{ "created_by": "termscope-oci" }],
        }))?;
        let config_digest = sha256(&image_config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": image_config.len(),
            },
            "layers": [{
                "mediaType": layer_media_type,
                "digest": layer_digest,
                "size": layer.len(),
            }],
        }))?;
        let manifest_digest = sha256(&manifest);
        let tag = self.name.rsplit_once(':').map_or("latest", |(_, t)| t);
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "platform": { "architecture": arch, "os": os },
                "annotations": {
                    "io.containerd.image.name": self.name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }],
        }))?;

        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| -> Result<(), OciError> {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_size(u64::try_from(data.len()).map_err(|_| OciError::TooBig(data.len()))?);
            b.append_data(&mut h, path, data)
                .map_err(io(format!("packing {path}")))
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        add("index.json", &index)?;
        for (digest, data) in [
            (&config_digest, &image_config),
            (&manifest_digest, &manifest),
            (&layer_digest, &layer),
        ] {
            let hex = digest.trim_start_matches("sha256:");
            add(&format!("blobs/sha256/{hex}"), data)?;
        }
        Ok(OciArchive {
            bytes: b.into_inner().map_err(io("finishing the archive"))?,
            manifest_digest,
            config_digest,
        })
    }
}

/// The name a container runtime gives an image reference: `termscope:0.1.0` is
/// `docker.io/library/termscope:0.1.0`, `me/termscope` is `docker.io/me/termscope:latest`,
/// `registry.example.com/x/termscope:1` stays as it is. The image's name in the archive is
/// this full form, so that a pod asking for the short form finds it after `ctr images import`.
pub fn normalize_reference(reference: &str) -> String {
    let (repo, tag) = match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
        _ => (reference, None),
    };
    let repo = match repo.split_once('/') {
        None => format!("docker.io/library/{repo}"),
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            repo.to_string()
        }
        Some(_) => format!("docker.io/{repo}"),
    };
    if repo.contains('@') {
        return repo;
    }
    format!("{repo}:{}", tag.unwrap_or("latest"))
}

/// The agent's image: the `termscope` binary at `/termscope` with the shared libraries it
/// links (libc, libm, libgcc_s and the loader, copied from this machine: `ldd`), the mount
/// points of the DaemonSet's volumes, entrypoint `/termscope agent`. Nothing else: no shell,
/// no package manager, no base image.
pub fn agent_image(binary: &Path, reference: &str, version: &str) -> Result<Image, OciError> {
    let mut rootfs = Rootfs::base();
    rootfs.copy_file(binary, "termscope")?;
    rootfs.copy_libraries_of(binary)?;
    // The DaemonSet mounts the log directory here; runc would make it, but a read-only root
    // is easier to reason about when every mount point is in the image.
    rootfs.dir("var/log/termscope", 0o755);
    let labels = [
        ("org.opencontainers.image.title", "termscope"),
        (
            "org.opencontainers.image.description",
            "termscope agent: which connections were cut while a container or pod shut down, and why",
        ),
        ("org.opencontainers.image.version", version),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Ok(Image {
        name: normalize_reference(reference),
        entrypoint: vec!["/termscope".into(), "agent".into()],
        cmd: Vec::new(),
        env: Vec::new(),
        working_dir: "/".into(),
        stop_signal: None,
        exposed_ports: vec!["9469/tcp".into()],
        labels,
        rootfs,
        uncompressed_layer: false,
    })
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// The OCI (Go) name of this machine's architecture.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("termscope-oci-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    /// Same inputs, same digest: the same program built into an image twice, and a copy of
    /// it with another path, owner-visible time and access time, give identical archives; a
    /// program that differs by one byte gives another digest.
    #[test]
    fn same_inputs_same_digest() -> Result<(), OciError> {
        let program = Path::new("/usr/bin/sleep");
        if !program.is_file() {
            eprintln!("skipped: no /usr/bin/sleep");
            return Ok(());
        }
        let first = agent_image(program, "termscope:0.1.0", "0.1.0")?.oci_archive()?;
        let second = agent_image(program, "termscope:0.1.0", "0.1.0")?.oci_archive()?;
        assert_eq!(first.manifest_digest, second.manifest_digest);
        assert_eq!(first.bytes, second.bytes);

        let dir = tmp("copy");
        let copy = dir.join("termscope");
        std::fs::copy(program, &copy).map_err(io("copying"))?;
        // A different modification time: not recorded.
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400);
        std::fs::File::options()
            .write(true)
            .open(&copy)
            .and_then(|f| f.set_modified(old))
            .map_err(io("setting mtime"))?;
        let from_copy = agent_image(&copy, "termscope:0.1.0", "0.1.0")?.oci_archive()?;
        assert_eq!(from_copy.manifest_digest, first.manifest_digest);

        let mut data = std::fs::read(&copy).map_err(io("reading"))?;
        if let Some(last) = data.last_mut() {
            *last ^= 1;
        }
        std::fs::write(&copy, data).map_err(io("writing"))?;
        let changed = agent_image(&copy, "termscope:0.1.0", "0.1.0")?.oci_archive()?;
        assert_ne!(changed.manifest_digest, first.manifest_digest);
        assert_ne!(changed.config_digest, first.config_digest);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// The archive is an OCI image layout whose blobs are named by their digests, with the
    /// agent at /termscope and its loader, and the config's entrypoint.
    #[test]
    fn the_archive_is_an_oci_layout() -> Result<(), OciError> {
        let program = Path::new("/usr/bin/sleep");
        if !program.is_file() {
            eprintln!("skipped: no /usr/bin/sleep");
            return Ok(());
        }
        let image = agent_image(program, "termscope:0.1.0", "0.1.0")?;
        assert!(image.rootfs.paths().any(|p| p == "termscope"));
        assert!(image.rootfs.paths().any(|p| p.contains("libc.so")));
        let archive = image.oci_archive()?;
        let mut names = BTreeMap::new();
        let mut tar = tar::Archive::new(archive.bytes.as_slice());
        for entry in tar.entries().map_err(io("reading"))? {
            let mut entry = entry.map_err(io("reading"))?;
            let path = entry
                .path()
                .map_err(io("reading"))?
                .to_string_lossy()
                .into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).map_err(io("reading"))?;
            names.insert(path, data);
        }
        for (path, data) in &names {
            if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                assert_eq!(sha256(data), format!("sha256:{hex}"));
            }
        }
        let index: serde_json::Value =
            serde_json::from_slice(names.get("index.json").map_or(&[][..], |v| v))?;
        assert_eq!(
            index["manifests"][0]["digest"],
            archive.manifest_digest.as_str()
        );
        assert_eq!(
            index["manifests"][0]["annotations"]["io.containerd.image.name"],
            "docker.io/library/termscope:0.1.0"
        );
        let config_blob = names
            .get(&format!(
                "blobs/sha256/{}",
                archive.config_digest.trim_start_matches("sha256:")
            ))
            .map_or(&[][..], |v| v);
        let config: serde_json::Value = serde_json::from_slice(config_blob)?;
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/termscope", "agent"])
        );
        assert!(config.get("created").is_none());
        Ok(())
    }

    #[test]
    fn references_are_normalized_as_runtimes_do() {
        assert_eq!(
            normalize_reference("termscope:0.1.0"),
            "docker.io/library/termscope:0.1.0"
        );
        assert_eq!(
            normalize_reference("termscope"),
            "docker.io/library/termscope:latest"
        );
        assert_eq!(
            normalize_reference("me/termscope:1"),
            "docker.io/me/termscope:1"
        );
        assert_eq!(
            normalize_reference("registry.example.com:5000/infra/termscope:0.1.0"),
            "registry.example.com:5000/infra/termscope:0.1.0"
        );
        assert_eq!(
            normalize_reference("localhost/termscope"),
            "localhost/termscope:latest"
        );
        assert_eq!(
            normalize_reference("termscope.test/app:1"),
            "termscope.test/app:1"
        );
    }
}
