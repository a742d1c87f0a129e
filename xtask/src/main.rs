//! `cargo xtask`: sets up, builds, runs and tests termscope. `cargo xtask --help` explains.

mod demo;
mod deploy;
mod image;
mod kernels;
mod setup;
mod tasks;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Sets up, builds, runs and tests termscope (run from anywhere in the workspace).
///
/// termscope's kernel programs are built with the nightly toolchain (with rust-src) and
/// bpf-linker 0.13, which is built against LLVM 22. `cargo xtask setup` checks for all of that
/// and installs what is missing; `build`, `run`, `test` and `bench` run it first.
///
/// Start with `cargo xtask build`, then `cargo xtask run -- doctor` to see what this machine
/// supports. `cargo xtask test` runs everything CI runs.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check for, and install when missing, what building termscope needs.
    ///
    /// Each step says what it checks and what it does; when everything is present it only
    /// checks. Steps: LLVM 22 (Debian package llvm-22-dev, installed with apt-get as root),
    /// bpf-linker 0.13 (cargo install), the nightly toolchain (must already be installed),
    /// rust-src for nightly (rustup component add), tracefs mounted at /sys/kernel/tracing
    /// (mounted as root).
    Setup {
        /// Also install the Debian packages the kernel tests use (iproute2, curl, python3).
        #[arg(long)]
        test_deps: bool,
    },
    /// Run setup, then build the agent (`cargo build -p termscope`) and print its path.
    Build {
        /// Build with optimizations (target/release instead of target/debug).
        #[arg(long)]
        release: bool,
    },
    /// Run setup, build the agent and run it as root (through `sudo -E` when needed)
    ///
    /// Arguments after `--` go to the agent; without any it runs `termscope agent`, which
    /// prints a termination report (JSON) per stopped container and serves /metrics and
    /// /v1/terminations on 127.0.0.1:9469 until Ctrl-C. Examples:
    ///   cargo xtask run                      # termscope agent
    ///   cargo xtask run -- doctor            # what this machine supports
    ///   cargo xtask run -- agent --print-events   # also every kernel event
    ///
    /// The agent's exit code is xtask's exit code.
    #[command(verbatim_doc_comment)]
    Run {
        /// Build and run with optimizations.
        #[arg(long)]
        release: bool,
        /// Run as the current user even when it is not root (e.g. for `doctor`, or a binary
        /// given CAP_BPF and CAP_PERFMON with setcap).
        #[arg(long)]
        no_sudo: bool,
        /// Arguments for the agent (default: `agent`).
        #[arg(last = true, value_name = "AGENT_ARGS")]
        args: Vec<String>,
    },
    /// Run everything CI runs: setup (with test packages), fmt, clippy, and all tests
    ///
    /// Steps, stopping at the first failure:
    ///   1. cargo xtask setup --test-deps
    ///   2. cargo fmt --all -- --check
    ///   3. cargo clippy --workspace --exclude termscope-ebpf --all-targets -- -D warnings
    ///   4. cargo test --workspace --exclude termscope-ebpf [ARGS]
    ///   5. as root, unless --no-vms: cargo xtask test-kernels 6.12 (in a VM)
    ///
    /// The kernel tests need root; as another user they skip (run `sudo -E cargo xtask test`).
    /// As root or with CI=true, TERMSCOPE_REQUIRE_KERNEL_TESTS=1 is set so a skipped kernel test
    /// fails instead. Arguments after `--` go to `cargo test`. Examples:
    ///   cargo xtask test
    ///   cargo xtask test --skip-lint -- decode     # only tests whose name contains `decode`
    ///   cargo xtask test -- -- --nocapture         # options for the test binaries
    #[command(verbatim_doc_comment)]
    Test {
        /// Skip the fmt and clippy steps.
        #[arg(long)]
        skip_lint: bool,
        /// Do not boot the other kernels (`cargo xtask test-kernels`), which runs as root.
        #[arg(long)]
        no_vms: bool,
        /// Arguments for `cargo test` (a test name filter, `-- --nocapture`, ...).
        #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
        args: Vec<String>,
    },
    /// See the point in a minute (as root): a real nginx in its own cgroup and network
    /// namespace, clients downloading from it, nginx stopped with SIGTERM (what `docker stop`
    /// and Kubernetes send) — and termscope's report of which connections that cut, and why.
    ///
    /// Installs only what it runs (nginx, curl, iproute2) when missing, and removes its
    /// temporary directory when done.
    Demo {
        /// The signal that stops nginx: TERM (fast shutdown) or QUIT (graceful).
        #[arg(long, default_value = "TERM")]
        signal: String,
    },
    /// Boot Debian's stock kernels (5.10, 6.1, 6.12) in VMs and run the kernel tests and the
    /// nginx SIGTERM/SIGQUIT and late-traffic scenarios in each (as root)
    ///
    /// Installs what it needs when missing: qemu-system-x86, busybox-static and kmod (apt),
    /// virtme-ng 1.42 (pip), and each kernel's Debian package, fetched with a private apt
    /// configuration into /var/cache/termscope-kernels (TERMSCOPE_KERNEL_CACHE), its modules
    /// copied to /lib/modules. Each VM runs under TCG with this machine's filesystem as its
    /// root, so the binaries built here run inside. Prints a per-kernel summary (also in
    /// target/kernel-tests/summary.md, with every log). `cargo xtask test` runs it as root.
    ///   cargo xtask test-kernels             # all three
    ///   cargo xtask test-kernels 5.10 6.1    # only these
    ///   cargo xtask test-kernels 5.10 --only scenarios_late_traffic --repeat 10
    #[command(verbatim_doc_comment)]
    TestKernels {
        /// Kernel series to boot (default: all).
        series: Vec<String>,
        /// Run only these test runs: a `--test` target (`tcp`, `signals`, ...) or `lib`.
        #[arg(long)]
        only: Vec<String>,
        /// Run each test binary this many times in each VM (to hunt a flaky test).
        #[arg(long, default_value_t = 1)]
        repeat: u32,
    },
    /// Run setup, install the references (bpftrace, libbpf-tools), then the agent's
    /// benchmarks (`cargo bench -p termscope`).
    ///
    /// Arguments after `--` go to `cargo bench`, e.g. `cargo xtask bench -- ring_buffer`.
    Bench {
        /// Arguments for `cargo bench`.
        #[arg(last = true, value_name = "CARGO_BENCH_ARGS")]
        args: Vec<String>,
    },
    /// Build the agent's container image as an OCI archive, reproducibly, from the release
    /// binary (no base image, no registry, no Docker)
    ///
    /// The image holds /termscope, the shared libraries it links (copied from this machine),
    /// and the DaemonSet's mount points; entrypoint `/termscope agent`. The same binary and
    /// libraries give the same digest. Writes target/image/termscope-<version>.oci.tar and
    /// prints its digest; load it with `ctr -n k8s.io images import`, push it with
    /// `skopeo copy oci-archive:<file> docker://<registry>/termscope:<version>`.
    #[command(verbatim_doc_comment)]
    Image {
        /// The image's name (default termscope:<version>, what deploy/ asks for).
        #[arg(long)]
        name: Option<String>,
        /// Package this binary instead of building the release one.
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
        /// Where to write the archive.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
    /// Write deploy/prometheus-rule.yaml (the Prometheus Operator's PrometheusRule) from
    /// deploy/alerts/rules.yaml, the one source of termscope's alerts.
    ///
    /// The rules file's `groups` become the PrometheusRule's `spec.groups`, verbatim and
    /// indented. A test (`cargo xtask test`) fails while the committed file differs.
    GenAlerts {
        /// Only check that deploy/prometheus-rule.yaml is up to date; fail if not.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The chain without a backtrace: these errors are for people, not for debugging xtask.
            eprintln!("\nxtask: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    let ctx = util::Ctx::detect()?;
    match command {
        Command::Setup { test_deps } => setup::run(&ctx, test_deps),
        Command::Build { release } => tasks::build(&ctx, release).map(|_| ()),
        Command::Run {
            release,
            no_sudo,
            args,
        } => tasks::run_agent(&ctx, release, no_sudo, args),
        Command::Test {
            skip_lint,
            no_vms,
            args,
        } => tasks::test(&ctx, skip_lint, no_vms, &args),
        Command::TestKernels {
            series,
            only,
            repeat,
        } => kernels::test_kernels(&ctx, &series, &only, repeat),
        Command::Bench { args } => tasks::bench(&ctx, &args),
        Command::Demo { signal } => demo::demo(&ctx, &signal),
        Command::GenAlerts { check } => deploy::gen_alerts(&ctx, check),
        Command::Image {
            name,
            binary,
            output,
        } => image::image(&ctx, name, binary, output),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn each_command_has_its_own_help() {
        let cli = Cli::command();
        let about = |name: &str| -> String {
            cli.find_subcommand(name)
                .and_then(|c| c.get_about())
                .map(ToString::to_string)
                .unwrap_or_default()
        };
        assert!(about("demo").contains("nginx"), "{}", about("demo"));
        assert!(!about("demo").contains("bench"), "{}", about("demo"));
        assert!(about("bench").contains("benchmarks"), "{}", about("bench"));
        assert!(!about("bench").contains("nginx"), "{}", about("bench"));
        for c in cli.get_subcommands() {
            assert!(c.get_about().is_some(), "{} has no help", c.get_name());
        }
    }

    #[test]
    fn test_args_after_double_dash_reach_cargo_test() -> anyhow::Result<()> {
        let cli = Cli::try_parse_from(["xtask", "test", "--skip-lint", "--", "-p", "x", "--"])?;
        match cli.command {
            Command::Test {
                skip_lint, args, ..
            } => {
                assert!(skip_lint);
                assert_eq!(args, ["-p", "x", "--"]);
            }
            other => anyhow::bail!("parsed as {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn run_args_are_the_agents() -> anyhow::Result<()> {
        let cli = Cli::try_parse_from(["xtask", "run", "--release", "--", "doctor", "--json"])?;
        match cli.command {
            Command::Run {
                release,
                no_sudo,
                args,
            } => {
                assert!(release);
                assert!(!no_sudo);
                assert_eq!(args, ["doctor", "--json"]);
            }
            other => anyhow::bail!("parsed as {other:?}"),
        }
        Ok(())
    }
}
