//! Builds the kernel programs (`agent-ebpf`) with the nightly toolchain and `bpf-linker`, into
//! `OUT_DIR/termscope-probes`, which the agent embeds. `cargo xtask setup` installs what this
//! needs; without it the error below says what is missing.

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir)
        .join("..")
        .join("agent-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("the agent-ebpf path is not UTF-8"))?;
    println!("cargo:rerun-if-changed=../agent-common/src");
    // aya-build passes every line the inner cargo prints on stderr on as a `cargo:warning`:
    // its ~35 `Compiling ...` lines would bury real warnings. Quiet cargo prints only
    // warnings and errors (the compiler's messages still come through).
    // SAFETY: the build script is single-threaded here; nothing reads the environment
    // concurrently.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "termscope-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "building the eBPF programs failed: {e:#}\n\
             termscope's kernel programs need the nightly toolchain with rust-src and \
             bpf-linker 0.13; `cargo xtask setup` installs them"
        )
    })
}
