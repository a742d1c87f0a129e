//! `cargo xtask setup`: checks each thing building (and testing) termscope needs, and installs
//! what is missing. Every step detects first, so a second run only checks.

use std::{path::Path, process::Output};

use anyhow::{Context as _, Result, bail};

use crate::util::Ctx;

/// Where Debian's `llvm-22-dev` puts LLVM; bpf-linker is built against it.
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// The Debian package with LLVM 22's development files.
pub const LLVM_PACKAGE: &str = "llvm-22-dev";
/// The bpf-linker release the eBPF build is known to work with.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// Where tracefs is expected (the agent reads tracepoint formats from it).
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// A Debian package the kernel tests need (`setup --test-deps`).
pub struct TestPackage {
    pub name: &'static str,
    pub why: &'static str,
}

/// Debian packages the kernel tests use. Add new ones here.
pub const TEST_PACKAGES: &[TestPackage] = &[
    TestPackage {
        name: "iproute2",
        why: "`ip netns` for the tests' network namespaces",
    },
    TestPackage {
        name: "curl",
        why: "an HTTP client for the tests",
    },
    TestPackage {
        name: "python3",
        why: "small servers and clients for the tests",
    },
    TestPackage {
        name: "nginx",
        why: "the nginx scenarios (SIGTERM fast shutdown vs SIGQUIT graceful)",
    },
    TestPackage {
        name: "gunicorn",
        why: "the gunicorn scenarios (graceful_timeout, SIGKILL escalation)",
    },
    TestPackage {
        name: "uwsgi",
        why: "the uWSGI scenarios (SIGTERM reload, SIGINT, --die-on-term)",
    },
    TestPackage {
        name: "uwsgi-plugin-python3",
        why: "uWSGI's Python plugin",
    },
    TestPackage {
        name: "supervisor",
        why: "the supervisord scenario (stopsignal, stopwaitsecs)",
    },
    TestPackage {
        name: "busybox-static",
        why: "busybox `nc -ll -e` as a process-per-connection server (scenarios_truth); the \
              same package the kernel VMs use",
    },
    TestPackage {
        name: "nodejs",
        why: "a Node.js HTTP server for the keep-alive and init scenarios",
    },
    TestPackage {
        name: "tini",
        why: "a forwarding init as PID 1 (what `docker run --init` runs) for the init scenarios",
    },
    TestPackage {
        name: "dumb-init",
        why: "a forwarding init that signals the app's process group, for the init scenarios",
    },
    TestPackage {
        name: "redis-server",
        why: "a server with long-lived clients, idle or blocked on a command, for its scenario",
    },
    TestPackage {
        name: "postgresql",
        why: "PostgreSQL, whose SIGTERM is a smart shutdown that waits for its sessions",
    },
    TestPackage {
        name: "apache2",
        why: "Apache httpd as a reverse proxy, graceful-stop (SIGWINCH) vs SIGTERM \
              (scenarios_servers)",
    },
    TestPackage {
        name: "haproxy",
        why: "HAProxy in master-worker mode with a pooled upstream, soft stop (SIGUSR1) vs \
              SIGTERM (scenarios_servers)",
    },
    TestPackage {
        name: "python3-uvicorn",
        why: "uvicorn (asyncio) with keep-alive clients, run by Debian's python3 \
              (scenarios_servers)",
    },
    TestPackage {
        name: "php-fpm",
        why: "PHP-FPM behind nginx over FastCGI, SIGQUIT graceful vs SIGTERM \
              (scenarios_php_caddy)",
    },
    TestPackage {
        name: "caddy",
        why: "Caddy (a Go server) as a reverse proxy, SIGTERM within its grace_period vs \
              SIGQUIT (scenarios_php_caddy)",
    },
    TestPackage {
        name: "puma",
        why: "Puma (Ruby) in cluster mode, SIGTERM drain and worker_shutdown_timeout \
              (scenarios_puma)",
    },
    TestPackage {
        name: "prometheus",
        why: "promtool, to check /metrics",
    },
    TestPackage {
        name: "containerd",
        why: "the Kubernetes tests' container runtime, driven over CRI as kubelet does (and ctr)",
    },
    TestPackage {
        name: "runc",
        why: "the OCI runtime containerd runs the Kubernetes tests' containers with",
    },
    TestPackage {
        name: "containernetworking-plugins",
        why: "CNI bridge, host-local and loopback plugins for the Kubernetes tests' pods",
    },
];

/// The PyPI package the deploy tests validate the manifests with, against the Kubernetes
/// schemas it ships (`setup --test-deps` installs it with pip when missing).
pub const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The Debian package with kubectl, when no kubectl is installed (the deploy tests render
/// deploy/ with `kubectl kustomize`).
pub const KUBECTL_PACKAGE: &str = "kubernetes-client";

/// What `cargo xtask demo` runs: no more than that is installed for it.
pub const DEMO_PACKAGES: &[TestPackage] = &[
    TestPackage {
        name: "iproute2",
        why: "`ip netns` for the demo's network namespace",
    },
    TestPackage {
        name: "curl",
        why: "the demo's clients",
    },
    TestPackage {
        name: "nginx",
        why: "the server the demo stops",
    },
];

/// What `cargo xtask bench` measures termscope against, in the same run.
pub const BENCH_PACKAGES: &[TestPackage] = &[
    TestPackage {
        name: "bpftrace",
        why: "the bench's reference: a bpftrace one-liner on the same tracepoint",
    },
    TestPackage {
        name: "libbpf-tools",
        why: "the bench's reference: tcpstates and sigsnoop",
    },
];

/// The build steps, then the Debian packages of the bench's references.
pub fn run_for_bench(ctx: &Ctx) -> Result<()> {
    run(ctx, false)?;
    let mut apt = Apt::default();
    packages(ctx, &mut apt, BENCH_PACKAGES, "the benchmark's references")
}

/// The build steps, then only the Debian packages the demo runs.
pub fn run_for_demo(ctx: &Ctx) -> Result<()> {
    run(ctx, false)?;
    let mut apt = Apt::default();
    packages(ctx, &mut apt, DEMO_PACKAGES, "the demo")
}

/// Runs every setup step in order; stops at the first that cannot be satisfied.
pub fn run(ctx: &Ctx, test_deps: bool) -> Result<()> {
    println!(
        "==> setup: checking what building termscope needs{}",
        if test_deps {
            ", and what its kernel tests need"
        } else {
            ""
        }
    );
    let mut apt = Apt::default();
    let linker = BpfLinker::detect(ctx)?;
    llvm(ctx, &mut apt, &linker)?;
    bpf_linker(ctx, linker)?;
    nightly(ctx)?;
    rust_src(ctx)?;
    tracefs(ctx)?;
    if test_deps {
        packages(ctx, &mut apt, TEST_PACKAGES, "the kernel tests")?;
        deploy_test_tools(ctx, &mut apt)?;
    }
    println!("==> setup: done");
    Ok(())
}

/// One line per check: what it is, how it was checked, and the outcome.
fn report(what: &str, check: &str, outcome: &str) {
    println!("[setup] {what}: {check}: {outcome}");
}

/// Runs apt-get, with `apt-get update` once per setup run.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn install(&mut self, ctx: &Ctx, packages: &[&str]) -> Result<()> {
        let hint = "this step installs Debian packages with apt-get (Debian or Ubuntu only)";
        if !self.updated {
            ctx.run(
                ctx.command("apt-get")
                    .arg("update")
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
            .context(hint)?;
            self.updated = true;
        }
        // Servers among the packages (nginx, prometheus) must not start as services on
        // install: a policy-rc.d that says "no" keeps invoke-rc.d from starting them.
        let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
        let ours = !policy.exists() && std::fs::write(policy, "#!/bin/sh\nexit 101\n").is_ok();
        if ours {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755));
        }
        let result = ctx
            .run(
                ctx.command("apt-get")
                    .args(["install", "-y", "--no-install-recommends"])
                    .args(packages)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
            .context(hint);
        if ours {
            let _ = std::fs::remove_file(policy);
        }
        result
    }
}

/// The command a non-root user should run to install Debian packages.
fn sudo_apt_install(packages: &[&str]) -> String {
    format!(
        "sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y {}",
        packages.join(" ")
    )
}

fn llvm(ctx: &Ctx, apt: &mut Apt, linker: &BpfLinker) -> Result<()> {
    let what = format!("LLVM 22 (Debian package {LLVM_PACKAGE}, to build bpf-linker)");
    let llvm_config = format!("{LLVM_PREFIX}/bin/llvm-config");
    let check = format!("{llvm_config} exists");
    if Path::new(&llvm_config).exists() {
        report(&what, &check, "ok");
        return Ok(());
    }
    if matches!(linker, BpfLinker::Good(_)) {
        report(
            &what,
            &check,
            "missing, but not needed: bpf-linker 0.13 is already installed",
        );
        return Ok(());
    }
    if !ctx.is_root {
        report(&what, &check, "missing");
        bail!(
            "{LLVM_PACKAGE} is missing ({llvm_config} does not exist) and installing it needs \
             root. Run:\n    {}\nthen `cargo xtask setup` again.",
            sudo_apt_install(&[LLVM_PACKAGE])
        );
    }
    report(&what, &check, "missing; installing it with apt-get");
    apt.install(ctx, &[LLVM_PACKAGE])?;
    if !Path::new(&llvm_config).exists() {
        bail!("apt-get installed {LLVM_PACKAGE} but {llvm_config} is still missing");
    }
    report(&what, &check, "installed");
    Ok(())
}

/// What `bpf-linker --version` says.
enum BpfLinker {
    /// The right version; the line it printed.
    Good(String),
    /// It runs but is another version, or fails; what it printed.
    Unusable(String),
    /// Not on PATH (nor in cargo's bin directory).
    Missing,
}

impl BpfLinker {
    fn detect(ctx: &Ctx) -> Result<Self> {
        let Some(out) = ctx.probe(ctx.command("bpf-linker").arg("--version"))? else {
            return Ok(Self::Missing);
        };
        let text = output_text(&out);
        Ok(if out.status.success() && bpf_linker_version_ok(&text) {
            Self::Good(text.lines().next().unwrap_or_default().trim().to_string())
        } else if out.status.success() {
            Self::Unusable(format!("it is another version: {}", text.trim()))
        } else {
            Self::Unusable(format!("it fails ({}): {}", out.status, text.trim()))
        })
    }
}

/// Whether `bpf-linker --version` output names a 0.13.x release.
pub fn bpf_linker_version_ok(output: &str) -> bool {
    output
        .split_whitespace()
        .any(|word| word.trim_start_matches('v').starts_with("0.13."))
}

fn bpf_linker(ctx: &Ctx, found: BpfLinker) -> Result<()> {
    let what = "bpf-linker 0.13 (links the eBPF programs)";
    let check = "`bpf-linker --version` (PATH and cargo's bin directory)";
    let force = match found {
        BpfLinker::Good(line) => {
            report(what, check, &format!("ok ({line})"));
            return Ok(());
        }
        BpfLinker::Unusable(why) => {
            report(what, check, &format!("{why}; reinstalling it"));
            true
        }
        BpfLinker::Missing => {
            report(
                what,
                check,
                "missing; building it with cargo install (takes a few minutes)",
            );
            false
        }
    };
    let mut install = ctx.cargo(&[
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--no-default-features",
        "--features",
        "llvm-22",
    ]);
    if force {
        install.arg("--force");
    }
    ctx.run(install.env("LLVM_PREFIX", LLVM_PREFIX))
        .context("installing bpf-linker failed (see the output above)")?;
    match BpfLinker::detect(ctx)? {
        BpfLinker::Good(line) => {
            report(what, check, &format!("installed ({line})"));
            Ok(())
        }
        BpfLinker::Unusable(why) => bail!(
            "bpf-linker was installed but {why}; is another bpf-linker earlier on PATH? ({})",
            ctx.find_program("bpf-linker")
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
        BpfLinker::Missing => bail!(
            "bpf-linker was installed but is not on PATH; add cargo's bin directory \
             ($CARGO_HOME/bin or ~/.cargo/bin) to PATH"
        ),
    }
}

/// Whether `rustup toolchain list` shows the toolchain `rustup run nightly` resolves to
/// (`nightly-<host>`, not a dated `nightly-YYYY-MM-DD-<host>`).
pub fn has_nightly(toolchain_list: &str) -> bool {
    toolchain_list.lines().any(|line| {
        let name = line.split_whitespace().next().unwrap_or_default();
        name == "nightly"
            || name
                .strip_prefix("nightly-")
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    })
}

fn rustup(ctx: &Ctx, args: &[&str]) -> Result<Output> {
    let mut cmd = ctx.command("rustup");
    cmd.args(args);
    let shown = ctx.describe(&cmd);
    let out = ctx.probe(&mut cmd)?.context(
        "rustup is not installed: termscope's eBPF programs are built with \
         `rustup run nightly cargo build`, so they need rustup and its nightly toolchain",
    )?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            output_text(&out).trim()
        );
    }
    Ok(out)
}

fn nightly(ctx: &Ctx) -> Result<()> {
    let what = "nightly toolchain (builds the eBPF programs with -Z build-std)";
    let check = "`rustup toolchain list` has nightly";
    let out = rustup(ctx, &["toolchain", "list"])?;
    if has_nightly(&String::from_utf8_lossy(&out.stdout)) {
        report(what, check, "ok");
        return Ok(());
    }
    report(what, check, "missing");
    bail!(
        "no nightly toolchain is installed, and setup does not download one (it cannot be \
         fetched on the build machines). Where static.rust-lang.org is reachable, run:\n    \
         rustup toolchain install nightly --component rust-src"
    )
}

/// Whether `rustup component list --installed` output lists `component`.
pub fn has_component(component_list: &str, component: &str) -> bool {
    component_list
        .lines()
        .any(|line| line.split_whitespace().next() == Some(component))
}

fn rust_src(ctx: &Ctx) -> Result<()> {
    let what = "rust-src for nightly (the core library sources -Z build-std compiles)";
    let check = "`rustup component list --toolchain nightly --installed` has rust-src";
    let list = ["component", "list", "--toolchain", "nightly", "--installed"];
    let installed = |ctx: &Ctx| -> Result<bool> {
        let out = rustup(ctx, &list)?;
        Ok(has_component(
            &String::from_utf8_lossy(&out.stdout),
            "rust-src",
        ))
    };
    if installed(ctx)? {
        report(what, check, "ok");
        return Ok(());
    }
    report(what, check, "missing; adding it");
    ctx.run(ctx.command("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))?;
    if !installed(ctx)? {
        bail!("`rustup component add rust-src --toolchain nightly` did not install rust-src");
    }
    report(what, check, "installed");
    Ok(())
}

fn tracefs(ctx: &Ctx) -> Result<()> {
    let what = format!("tracefs at {TRACEFS} (tracepoint formats the agent reads)");
    let events = format!("{TRACEFS}/events");
    let check = format!("{events} is a directory");
    if Path::new(&events).is_dir() {
        report(&what, &check, "ok");
        return Ok(());
    }
    if !ctx.is_root {
        report(
            &what,
            &check,
            "not visible to this user (not mounted, or readable only by root); the agent \
             mounts it when it runs as root",
        );
        return Ok(());
    }
    report(&what, &check, "not mounted; mounting it");
    let mounted = ctx.run(
        ctx.command("mount")
            .args(["-t", "tracefs", "tracefs", TRACEFS]),
    );
    match mounted {
        Ok(()) if Path::new(&events).is_dir() => report(&what, &check, "mounted"),
        Ok(()) => eprintln!(
            "warning: tracefs was mounted but {events} is still missing; tracepoint probes \
             will not attach"
        ),
        // Building does not need tracefs; the agent and its tests report it precisely.
        Err(e) => eprintln!(
            "warning: could not mount tracefs ({e:#}); tracepoint probes will not attach \
             until it is mounted"
        ),
    }
    Ok(())
}

/// Whether `dpkg -s` output says the package is installed (not merely known, e.g. removed
/// with its configuration files left).
pub fn dpkg_says_installed(status_output: &str) -> bool {
    status_output.lines().any(|line| {
        line.strip_prefix("Status:")
            .is_some_and(|s| s.split_whitespace().last() == Some("installed"))
    })
}

fn packages(ctx: &Ctx, apt: &mut Apt, list: &[TestPackage], for_what: &str) -> Result<()> {
    let mut missing = Vec::new();
    for package in list {
        let what = format!("{} ({})", package.name, package.why);
        let check = format!("`dpkg -s {}` says installed", package.name);
        let out = ctx
            .probe(ctx.command("dpkg").args(["-s", package.name]))?
            .context(
                "dpkg is not available: `setup --test-deps` installs the tests' dependencies \
                 with apt-get (Debian or Ubuntu only)",
            )?;
        if out.status.success() && dpkg_says_installed(&String::from_utf8_lossy(&out.stdout)) {
            report(&what, &check, "ok");
        } else {
            report(&what, &check, "missing");
            missing.push(package.name);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !ctx.is_root {
        bail!(
            "{for_what} need Debian packages that are missing ({}). Run:\n    {}\nthen \
             try again.",
            missing.join(", "),
            sudo_apt_install(&missing)
        );
    }
    apt.install(ctx, &missing)?;
    println!(
        "[setup] packages for {for_what}: installed {}",
        missing.join(", ")
    );
    Ok(())
}

/// What the deploy tests (tests/tests/deploy.rs) run besides the Debian packages: `kubectl
/// kustomize` (any kubectl; Debian's kubernetes-client when there is none) and
/// kubernetes-validate from PyPI, run as `python3 -m kubernetes_validate` (installed with
/// `python3 -m pip` only when that does not answer `--version`).
fn deploy_test_tools(ctx: &Ctx, apt: &mut Apt) -> Result<()> {
    let what = format!("kubectl ({KUBECTL_PACKAGE} if missing; renders deploy/ with kustomize)");
    let check = "`kubectl kustomize --help` runs";
    let kustomize = |ctx: &Ctx| -> Result<bool> {
        Ok(ctx
            .probe(ctx.command("kubectl").args(["kustomize", "--help"]))?
            .is_some_and(|o| o.status.success()))
    };
    if kustomize(ctx)? {
        report(&what, check, "ok");
    } else if !ctx.is_root {
        report(&what, check, "missing");
        bail!(
            "the deploy tests need kubectl (kustomize). Run:\n    {}\nthen try again.",
            sudo_apt_install(&[KUBECTL_PACKAGE])
        );
    } else {
        report(&what, check, "missing; installing it with apt-get");
        apt.install(ctx, &[KUBECTL_PACKAGE])?;
        if !kustomize(ctx)? {
            bail!("apt-get installed {KUBECTL_PACKAGE} but `kubectl kustomize` still fails");
        }
        report(&what, check, "installed");
    }

    let what =
        format!("{KUBERNETES_VALIDATE} (PyPI; validates deploy/ against Kubernetes' schemas)");
    let check = "`python3 -m kubernetes_validate --version` runs";
    let version = |ctx: &Ctx| -> Result<Option<String>> {
        Ok(ctx
            .probe(
                ctx.command("python3")
                    .args(["-m", "kubernetes_validate", "--version"]),
            )?
            .filter(|o| o.status.success())
            .map(|o| output_text(&o).trim().to_string()))
    };
    if let Some(v) = version(ctx)? {
        report(&what, check, &format!("ok ({v})"));
        return Ok(());
    }
    report(&what, check, "missing; installing it with pip");
    pip_install(ctx, KUBERNETES_VALIDATE)?;
    match version(ctx)? {
        Some(v) => report(&what, check, &format!("installed ({v})")),
        None => bail!(
            "pip installed {KUBERNETES_VALIDATE} but `python3 -m kubernetes_validate` does not run"
        ),
    }
    Ok(())
}

/// `python3 -m pip install <spec>` (with `--break-system-packages` where Debian's python3
/// refuses pip installs: these are test tools).
pub fn pip_install(ctx: &Ctx, spec: &str) -> Result<()> {
    let pip = |extra: &[&str]| -> Result<Option<Output>> {
        let mut cmd = ctx.command("python3");
        cmd.args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--root-user-action=ignore",
        ])
        .args(extra)
        .arg(spec);
        println!("==> {}", ctx.describe(&cmd));
        ctx.probe(&mut cmd)
    };
    let out = pip(&[])?.context("python3 is not installed (Debian package python3)")?;
    print!("{}", output_text(&out));
    let out = if !out.status.success()
        && output_text(&out).contains("externally-managed-environment")
    {
        println!(
            "[setup] this python3 is externally managed: installing with --break-system-packages"
        );
        let again = pip(&["--break-system-packages"])?.context("python3 disappeared")?;
        print!("{}", output_text(&again));
        again
    } else {
        out
    };
    if !out.status.success() {
        bail!(
            "`python3 -m pip install {spec}` failed ({}); is pip installed (Debian package \
             python3-pip)?",
            out.status
        );
    }
    Ok(())
}

/// `apt-get update` and `apt-get install` of `packages` (as root).
pub fn apt_install(ctx: &Ctx, packages: &[&str]) -> Result<()> {
    Apt::default().install(ctx, packages)
}

/// stdout and stderr of a check, together (tools differ in where they print versions).
fn output_text(out: &Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo installs what it runs and nothing of the test toolchain beyond that.
    #[test]
    fn the_demo_installs_only_what_it_runs() {
        let demo: Vec<&str> = DEMO_PACKAGES.iter().map(|p| p.name).collect();
        assert_eq!(demo, ["iproute2", "curl", "nginx"]);
        let tests: Vec<&str> = TEST_PACKAGES.iter().map(|p| p.name).collect();
        for p in &demo {
            assert!(tests.contains(p), "{p} is a test package too");
        }
        assert!(tests.len() > demo.len() + 5);
    }

    #[test]
    fn bpf_linker_0_13_is_accepted() {
        assert!(bpf_linker_version_ok("bpf-linker 0.13.0\n"));
        assert!(bpf_linker_version_ok("bpf-linker 0.13.2"));
        assert!(bpf_linker_version_ok("bpf-linker v0.13.1"));
    }

    #[test]
    fn other_bpf_linker_versions_are_rejected() {
        assert!(!bpf_linker_version_ok("bpf-linker 0.12.9"));
        assert!(!bpf_linker_version_ok("bpf-linker 0.130.0"));
        assert!(!bpf_linker_version_ok("bpf-linker 1.0.13.0-ish"));
        assert!(!bpf_linker_version_ok(""));
    }

    #[test]
    fn nightly_is_found_in_toolchain_list() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n\
                    1.95.0-x86_64-unknown-linux-gnu\n";
        assert!(has_nightly(list));
        assert!(has_nightly("nightly\n"));
    }

    #[test]
    fn dated_nightly_does_not_count() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-2025-01-01-x86_64-unknown-linux-gnu\n";
        assert!(!has_nightly(list));
        assert!(!has_nightly(""));
    }

    #[test]
    fn rust_src_is_found_in_component_list() {
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrustc-x86_64-unknown-linux-gnu\n";
        assert!(has_component(list, "rust-src"));
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-std-x86_64-unknown-linux-gnu\n";
        assert!(!has_component(list, "rust-src"));
    }

    #[test]
    fn dpkg_status_must_say_installed() {
        let installed = "Package: curl\nStatus: install ok installed\nPriority: optional\n";
        assert!(dpkg_says_installed(installed));
        let removed = "Package: curl\nStatus: deinstall ok config-files\n";
        assert!(!dpkg_says_installed(removed));
        assert!(!dpkg_says_installed(""));
    }

    #[test]
    fn test_packages_have_unique_names() {
        let mut names: Vec<_> = TEST_PACKAGES.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TEST_PACKAGES.len());
    }
}
