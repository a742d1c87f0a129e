//! Container images built on this machine, without a registry: an OCI image layout (one
//! config, one manifest, one gzip layer) written by the `termscope-oci` crate (which
//! `cargo xtask image` builds the agent's image with too) and imported with
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

use std::path::Path;

use anyhow::{Context, Result, bail};
pub use termscope_oci::{Image, Rootfs};

use crate::{containerd::Containerd, cri::v1};

/// The sandbox ("pause") image containerd is configured with.
pub const PAUSE: &str = "termscope.test/pause:1";
/// The host-userland app image (stop signal: the default, SIGTERM).
pub const APP: &str = "termscope.test/app:1";

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Top-level directories that a usr-merged host has as links into /usr.
const MERGED_DIRS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

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
        ..Default::default()
    })
}

/// The host-userland app image (see the module docs): containers of it need
/// [`host_mounts`]. No entrypoint: the container's command says what runs.
pub fn app() -> Result<Image> {
    app_with_stop_signal(APP, None)
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
        ..Default::default()
    })
}

/// Builds the image and imports it into `containerd` (namespace `k8s.io`, unpacked for
/// the overlayfs snapshotter CRI uses); waits until CRI's ImageStatus knows it.
pub fn import(image: &Image, containerd: &Containerd) -> Result<()> {
    let dir = containerd.dir.join("images");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!("{}.tar", image.name.replace(['/', ':'], "_")));
    std::fs::write(&file, image.oci_archive()?.bytes)?;
    crate::run(
        containerd
            .ctr()
            .args(["images", "import", "--snapshotter", "overlayfs"])
            .arg(&file),
    )
    .with_context(|| format!("importing {}", image.name))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if containerd.cri().image_id(&image.name)?.is_some() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!("CRI does not see {} after ctr imported it", image.name);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Imports the pause and app images.
pub fn import_standard(containerd: &Containerd) -> Result<()> {
    import(&pause()?, containerd)?;
    import(&app()?, containerd)
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
