//! `cargo xtask image`: the agent's container image as an OCI archive, built from the release
//! binary and the shared libraries it links, copied from this machine: no base image, no
//! registry, no container engine. The archive is reproducible (termscope-oci): the same
//! binary and libraries give the same digest.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::{tasks, util::Ctx};

/// The image's version: the workspace's, the agent's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn image(
    ctx: &Ctx,
    reference: Option<String>,
    binary: Option<PathBuf>,
    output: Option<PathBuf>,
) -> Result<()> {
    let binary = match binary {
        Some(b) => b,
        None => tasks::build(ctx, true)?,
    };
    let reference = reference.unwrap_or_else(|| format!("termscope:{VERSION}"));
    let image = termscope_oci::agent_image(&binary, &reference, VERSION)
        .with_context(|| format!("building the image from {}", binary.display()))?;
    let archive = image.oci_archive()?;
    let output = output.unwrap_or_else(|| {
        ctx.target_dir()
            .join("image")
            .join(format!("termscope-{VERSION}.oci.tar"))
    });
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&output, &archive.bytes)
        .with_context(|| format!("writing {}", output.display()))?;
    println!(
        "==> wrote {} ({:.1} MiB)\n    image   {}\n    digest  {}  (the manifest's: what a registry shows)\n    id      {}  (the config's: crictl's IMAGE ID)\n    from    {} and the libraries it links: {}",
        output.display(),
        archive.bytes.len() as f64 / (1024.0 * 1024.0),
        image.name,
        archive.manifest_digest,
        archive.config_digest,
        binary.display(),
        image
            .rootfs
            .paths()
            .filter(|p| p.contains(".so"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    println!(
        "\n    push it:   skopeo copy oci-archive:{out} docker://registry.example.com/infra/termscope:{VERSION}\n    or load it on a node:  ctr -n k8s.io images import {out}\n    (deploy/README.md, \"The image\")",
        out = output.display()
    );
    Ok(())
}
