//! Container images built on this machine, without a registry: an OCI image layout (one
//! config, one manifest, one gzip layer) written by this module and imported with
//! `ctr images import` into containerd's `k8s.io` namespace, where CRI finds it.
//!
//! Two kinds of root filesystem:
//! - self-contained: host programs copied in with the shared libraries `ldd` names. The pause
//!   image is that: `/usr/bin/sleep infinity` with its libc and loader (a few MB). A sandbox
//!   container gets no CRI mounts, so its image must hold everything it runs.
//! - "host userland": an almost empty rootfs (`/etc` basics, `/tmp`, mount points, and the
//!   host's `bin -> usr/bin`-style links) whose containers get the host's `/usr` (and
//!   `/etc/alternatives`) mounted read-only through the CRI `mounts` of CreateContainer
//!   ([`host_mounts`], like a `hostPath` volume). So the app image stays a few kB and its
//!   containers run the host's python3, nginx, gunicorn, uwsgi, curl... as they are installed.
//!
//! Images are named `termscope.test/<name>:1`. The image config's `StopSignal` is what CRI's
//! StopContainer sends first: [`Image::app_with_stop_signal`] builds app images that stop with
//! another signal, as an nginx image (`STOPSIGNAL SIGQUIT`) does.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::{containerd::Containerd, cri::v1};

/// The sandbox ("pause") image containerd is configured with.
pub const PAUSE: &str = "termscope.test/pause:1";
/// The host-userland app image (stop signal: the default, SIGTERM).
pub const APP: &str = "termscope.test/app:1";

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Top-level directories that a usr-merged host has as links into /usr.
const MERGED_DIRS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

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

    /// Copies a host file to the same path in the rootfs (following symlinks: the content).
    pub fn copy_from_host(&mut self, host: &Path) -> Result<&mut Self> {
        use std::os::unix::fs::PermissionsExt;
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let mode = std::fs::metadata(host)?.permissions().mode() & 0o7777;
        let path = host.to_string_lossy().to_string();
        Ok(self.file(&path, data, mode))
    }

    /// Copies a host program and every shared library `ldd` resolves for it (at the paths
    /// the loader looks for them), so it runs in a rootfs with nothing else.
    pub fn copy_program(&mut self, host: &Path) -> Result<&mut Self> {
        self.copy_from_host(host)?;
        for lib in shared_libraries(host)? {
            self.copy_from_host(&lib)?;
        }
        Ok(self)
    }

    /// Packs the tree as an uncompressed tar (reproducible: owner root, mtime 0).
    fn tar_into<W: Write>(&self, out: W) -> Result<W> {
        let mut b = tar::Builder::new(out);
        for (path, entry) in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match entry {
                Entry::Dir(mode) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{path}/"), std::io::empty())?;
                }
                Entry::File { data, mode } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(u64::try_from(data.len())?);
                    b.append_data(&mut h, path, data.as_slice())?;
                }
                Entry::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, path, target)?;
                }
            }
        }
        Ok(b.into_inner()?)
    }
}

/// The shared libraries (and loader) `ldd` lists for a program, resolved to files.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        );
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
            bail!("ldd {}: {line}", program.display());
        }
    }
    Ok(libs)
}

/// An image to build: its rootfs and the runtime config a Dockerfile would set.
#[derive(Debug, Clone)]
pub struct Image {
    /// Full reference, e.g. `termscope.test/app:1`.
    pub name: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    /// The image config's `StopSignal` (Dockerfile `STOPSIGNAL`), e.g. "SIGQUIT".
    pub stop_signal: Option<String>,
    pub rootfs: Rootfs,
}

impl Image {
    /// The sandbox image: `sleep infinity` (GNU coreutils) and its libraries. StopPodSandbox
    /// kills the sandbox with SIGKILL, so no signal handling is needed.
    pub fn pause() -> Result<Image> {
        let mut rootfs = Rootfs::base();
        rootfs.copy_program(Path::new("/usr/bin/sleep"))?;
        Ok(Image {
            name: PAUSE.into(),
            entrypoint: vec!["/usr/bin/sleep".into(), "infinity".into()],
            cmd: Vec::new(),
            env: vec![PATH_ENV.into()],
            working_dir: "/".into(),
            stop_signal: None,
            rootfs,
        })
    }

    /// The host-userland app image (see the module docs): containers of it need
    /// [`host_mounts`]. No entrypoint: the container's command says what runs.
    pub fn app() -> Result<Image> {
        Self::app_with_stop_signal(APP, None)
    }

    /// A host-userland app image named `name` whose config has `StopSignal = stop_signal`.
    pub fn app_with_stop_signal(name: &str, stop_signal: Option<&str>) -> Result<Image> {
        let mut rootfs = Rootfs::base();
        rootfs.dir("usr", 0o755);
        for d in MERGED_DIRS {
            let host = Path::new("/").join(d);
            if let Ok(target) = std::fs::read_link(&host) {
                rootfs.symlink(d, &target.to_string_lossy());
            } else if host.is_dir() {
                rootfs.dir(d, 0o755);
            }
        }
        rootfs.dir("etc/alternatives", 0o755);
        for f in [
            "/etc/passwd",
            "/etc/group",
            "/etc/nsswitch.conf",
            "/etc/ld.so.cache",
            "/etc/protocols",
            "/etc/services",
            "/etc/mime.types",
        ] {
            if Path::new(f).exists() {
                rootfs.copy_from_host(Path::new(f))?;
            }
        }
        Ok(Image {
            name: name.into(),
            entrypoint: Vec::new(),
            cmd: vec!["/bin/sh".into()],
            env: vec![PATH_ENV.into(), "LANG=C.UTF-8".into()],
            working_dir: "/".into(),
            stop_signal: stop_signal.map(str::to_string),
            rootfs,
        })
    }

    /// The image as an OCI image layout archive (`oci-layout`, `index.json`,
    /// `blobs/sha256/...`), what `ctr images import` reads.
    pub fn oci_archive(&self) -> Result<Vec<u8>> {
        // The layer: tar.gz; its diff id is the digest of the uncompressed tar.
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let hashing = self.rootfs.tar_into(HashingWriter {
            inner: gz,
            hasher: Sha256::new(),
        })?;
        let diff_id = format!("sha256:{:x}", hashing.hasher.finalize());
        let layer = hashing.inner.finish()?;
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
        let image_config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch,
            "os": os,
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            "history": [{ "created_by": "termscope-tests images.rs" }],
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
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
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
        let mut add = |path: &str, data: &[u8]| -> Result<()> {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_size(u64::try_from(data.len())?);
            b.append_data(&mut h, path, data)?;
            Ok(())
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
        Ok(b.into_inner()?)
    }

    /// Builds the image and imports it into `containerd` (namespace `k8s.io`, unpacked for
    /// the overlayfs snapshotter CRI uses); waits until CRI's ImageStatus knows it.
    pub fn import(&self, containerd: &Containerd) -> Result<()> {
        let dir = containerd.dir.join("images");
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(format!("{}.tar", self.name.replace(['/', ':'], "_")));
        std::fs::write(&file, self.oci_archive()?)?;
        crate::run(
            containerd
                .ctr()
                .args(["images", "import", "--snapshotter", "overlayfs"])
                .arg(&file),
        )
        .with_context(|| format!("importing {}", self.name))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if containerd.cri().image_id(&self.name)?.is_some() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                bail!("CRI does not see {} after ctr imported it", self.name);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Imports the pause and app images.
pub fn import_standard(containerd: &Containerd) -> Result<()> {
    Image::pause()?.import(containerd)?;
    Image::app()?.import(containerd)
}

/// The read-only host mounts a host-userland container needs: `/usr`, any top-level
/// program or library directory that is not a link into /usr on this host, and
/// `/etc/alternatives` (Debian's alternatives links, e.g. for `awk`).
pub fn host_mounts() -> Vec<v1::Mount> {
    let mut dirs = vec!["/usr".to_string()];
    for d in MERGED_DIRS {
        let host = Path::new("/").join(d);
        if host.is_dir() && std::fs::read_link(&host).is_err() {
            dirs.push(host.to_string_lossy().into_owned());
        }
    }
    dirs.push("/etc/alternatives".into());
    dirs.into_iter().map(|d| ro_mount(&d, &d)).collect()
}

/// A read-only bind mount of a host path into a container.
pub fn ro_mount(host_path: &str, container_path: &str) -> v1::Mount {
    v1::Mount {
        container_path: container_path.into(),
        host_path: host_path.into(),
        readonly: true,
        propagation: v1::MountPropagation::PropagationPrivate as i32,
    }
}

/// A writable bind mount of a host path into a container.
pub fn rw_mount(host_path: &str, container_path: &str) -> v1::Mount {
    v1::Mount {
        readonly: false,
        ..ro_mount(host_path, container_path)
    }
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

fn go_arch() -> &'static str {
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
