//! `build`, `run`, `test` and `bench`.

use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, util::Ctx};

/// The variable that makes the kernel tests fail, instead of skip, where they cannot run.
pub const REQUIRE_KERNEL_TESTS: &str = "TERMSCOPE_REQUIRE_KERNEL_TESTS";

/// Builds the agent (setup first) and returns the binary's path.
pub fn build(ctx: &Ctx, release: bool) -> Result<PathBuf> {
    setup::run(ctx, false)?;
    let mut args = vec!["build", "-p", "termscope"];
    if release {
        args.push("--release");
    }
    ctx.run(&mut ctx.cargo(&args))?;
    let bin = ctx
        .target_dir()
        .join(if release { "release" } else { "debug" })
        .join("termscope");
    if !bin.is_file() {
        bail!(
            "the build succeeded but {} does not exist (is CARGO_BUILD_TARGET set?)",
            bin.display()
        );
    }
    println!("==> built {}", bin.display());
    Ok(bin)
}

/// Builds the agent and replaces this process with it (through `sudo -E` when not root), so
/// Ctrl-C reaches the agent alone and its exit code is ours.
pub fn run_agent(ctx: &Ctx, release: bool, no_sudo: bool, args: Vec<String>) -> Result<()> {
    let bin = build(ctx, release)?;
    let args = if args.is_empty() {
        vec!["agent".to_string()]
    } else {
        args
    };
    let mut cmd = if ctx.is_root || no_sudo {
        Command::new(&bin)
    } else if let Some(sudo) = ctx.find_program("sudo") {
        let mut cmd = Command::new(sudo);
        cmd.arg("-E").arg(&bin);
        cmd
    } else {
        bail!(
            "termscope needs root (or CAP_BPF + CAP_PERFMON) to load its eBPF programs, you are \
             not root and sudo is not installed. Either run it as root:\n    \
             su -c '{bin} {args}'\nor give it the capabilities (as root) and run it as you:\n    \
             setcap cap_bpf,cap_perfmon+ep {bin}\n    cargo xtask run --no-sudo -- {args}",
            bin = bin.display(),
            args = args.join(" ")
        )
    };
    cmd.args(&args);
    let shown = ctx.describe(&cmd);
    println!("==> {shown}");
    // exec only returns when the program could not be started.
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not start `{shown}`"))
}

/// `cargo bench -p termscope [args]`, after setup and the references' packages.
pub fn bench(ctx: &Ctx, args: &[String]) -> Result<()> {
    setup::run_for_bench(ctx)?;
    let mut cmd = ctx.cargo(&["bench", "-p", "termscope"]);
    cmd.args(args);
    ctx.run(&mut cmd)
}

/// Whether the kernel tests must not skip: in CI (`CI=true`) or as root, where they can and
/// must run.
pub fn kernel_tests_required(ci: Option<&str>, is_root: bool) -> bool {
    is_root || ci.is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

const NOT_ROOT_WARNING: &str = "\
!!! WARNING: not running as root, so the kernel tests will SKIP (they load eBPF programs).
!!! To run them, run everything as root:  sudo -E cargo xtask test
!!! (if sudo then cannot find cargo:       sudo -E env \"PATH=$PATH\" cargo xtask test)";

/// setup, fmt, clippy, tests: each timed, stopping at the first failure.
pub fn test(ctx: &Ctx, skip_lint: bool, no_vms: bool, args: &[String]) -> Result<()> {
    if !ctx.is_root {
        eprintln!("{NOT_ROOT_WARNING}");
    }
    let mut steps = Steps::default();
    steps.step("setup --test-deps", || setup::run(ctx, true))?;
    if skip_lint {
        println!("==> skipping cargo fmt and cargo clippy (--skip-lint)");
    } else {
        steps.step("cargo fmt --check", || {
            ctx.run(&mut ctx.cargo(&["fmt", "--all", "--", "--check"]))
        })?;
        steps.step("cargo clippy", || {
            ctx.run(&mut ctx.cargo(&[
                "clippy",
                "--workspace",
                "--exclude",
                "termscope-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        })?;
    }
    // The Prometheus test (tests/tests/prometheus.rs) runs the real agent binary, which
    // `cargo test` does not build (the tests crate uses the termscope library).
    steps.step("cargo build -p termscope", || {
        ctx.run(&mut ctx.cargo(&["build", "-p", "termscope"]))
    })?;
    steps.step("cargo test", || {
        let mut cmd = ctx.cargo(&["test", "--workspace", "--exclude", "termscope-ebpf"]);
        // No backtraces: a failing test's message (its panic's, or the `Error:` of its
        // `Result`) is then the last thing it prints, where a CI log cut short in the middle
        // still shows it; a panic's message names its file and line anyway.
        cmd.args(args)
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0");
        let already_set = std::env::var_os(REQUIRE_KERNEL_TESTS).is_some();
        let ci = std::env::var("CI").ok();
        if already_set {
            println!("==> kernel tests: {REQUIRE_KERNEL_TESTS} is already set; leaving it");
        } else if kernel_tests_required(ci.as_deref(), ctx.is_root) {
            println!(
                "==> kernel tests: required ({}), so a skipped kernel test fails",
                if ctx.is_root {
                    "running as root"
                } else {
                    "CI=true"
                }
            );
            cmd.env(REQUIRE_KERNEL_TESTS, "1");
        } else {
            println!("==> kernel tests: allowed to skip (not root, not CI)");
        }
        ctx.run(&mut cmd)
    })?;
    if crate::kernels::wanted_in_test(ctx.is_root, no_vms) {
        steps.step("kernels in VMs (5.10, 6.1, 6.12)", || {
            let series: Vec<String> = crate::kernels::CI_SERIES
                .iter()
                .map(ToString::to_string)
                .collect();
            crate::kernels::test_kernels(ctx, &series, &[], 1)
        })?;
    } else {
        println!(
            "==> kernels in VMs: skipped ({})",
            if no_vms { "--no-vms" } else { "needs root" }
        );
    }
    steps.summary();
    if !ctx.is_root {
        eprintln!("{NOT_ROOT_WARNING}");
    }
    Ok(())
}

/// Steps run so far, with how long each took.
#[derive(Default)]
struct Steps {
    done: Vec<(&'static str, Duration, bool)>,
}

impl Steps {
    /// Runs `f` as the step `name`; on failure prints the summary and fails naming the step.
    fn step(&mut self, name: &'static str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        let start = Instant::now();
        let result = f();
        let took = start.elapsed();
        self.done.push((name, took, result.is_ok()));
        match result {
            Ok(()) => {
                println!("==> {name}: ok ({})", format_duration(took));
                Ok(())
            }
            Err(e) => {
                println!("==> {name}: FAILED ({})", format_duration(took));
                self.summary();
                Err(e.context(format!("step `{name}` failed")))
            }
        }
    }

    fn summary(&self) {
        let total: Duration = self.done.iter().map(|(_, took, _)| *took).sum();
        let steps: Vec<String> = self
            .done
            .iter()
            .map(|(name, took, ok)| {
                format!(
                    "{name} {}{}",
                    format_duration(*took),
                    if *ok { "" } else { " FAILED" }
                )
            })
            .collect();
        let all_ok = self.done.iter().all(|(_, _, ok)| *ok);
        println!(
            "\n==> summary: {}: {} (total {})",
            if all_ok { "passed" } else { "FAILED" },
            steps.join(", "),
            format_duration(total)
        );
    }
}

/// `4.2s` under a minute, `3m07s` above.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_requires_kernel_tests() {
        assert!(kernel_tests_required(None, true));
        assert!(kernel_tests_required(Some("false"), true));
    }

    #[test]
    fn ci_requires_kernel_tests() {
        assert!(kernel_tests_required(Some("true"), false));
        assert!(kernel_tests_required(Some("TRUE"), false));
        assert!(kernel_tests_required(Some("1"), false));
    }

    #[test]
    fn a_user_outside_ci_may_skip() {
        assert!(!kernel_tests_required(None, false));
        assert!(!kernel_tests_required(Some("false"), false));
        assert!(!kernel_tests_required(Some(""), false));
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(format_duration(Duration::from_millis(4_240)), "4.2s");
        assert_eq!(format_duration(Duration::from_millis(59_900)), "59.9s");
        assert_eq!(format_duration(Duration::from_secs(187)), "3m07s");
    }
}
