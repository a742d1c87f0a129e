//! `cargo xtask test-kernels`: the kernel tests and chosen scenarios on Debian's stock kernels,
//! each booted in a VM (qemu under TCG, through virtme-ng) with this machine's filesystem as
//! its root, so the test binaries built here run inside as they are.
//!
//! What it installs: the Debian packages qemu-system-x86, busybox-static (virtme-ng's
//! initramfs) and kmod (depmod); virtme-ng from PyPI; and each kernel's Debian package,
//! fetched with a private apt configuration (never the machine's sources) into
//! [`DEFAULT_CACHE`], its modules copied to `/lib/modules/<release>`.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, tasks::format_duration, util::Ctx};

/// Where kernels and the private apt state are kept between runs.
pub const DEFAULT_CACHE: &str = "/var/cache/termscope-kernels";
/// Overrides [`DEFAULT_CACHE`].
pub const CACHE_VAR: &str = "TERMSCOPE_KERNEL_CACHE";
/// virtme-ng, pinned.
pub const VIRTME_NG: &str = "virtme-ng==1.42";
const MIRROR: &str = "http://deb.debian.org/debian";
/// A kernel's whole run (boot, doctor, tests) may take this long before it is stopped.
const PER_KERNEL_TIMEOUT: Duration = Duration::from_secs(25 * 60);

/// A Debian kernel series and the suite whose `linux-image-amd64` points at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series {
    pub series: &'static str,
    pub suite: &'static str,
}

/// The kernels booted, oldest first. (This machine's own kernel runs every test directly, in
/// `cargo xtask test`.)
pub const SERIES: [Series; 3] = [
    Series {
        series: "5.10",
        suite: "bullseye",
    },
    Series {
        series: "6.1",
        suite: "bookworm",
    },
    Series {
        series: "6.12",
        suite: "trixie",
    },
];

/// One test binary run inside each VM: cargo test target, and test-name filters.
struct TestRun {
    /// Shown in the summary.
    name: &'static str,
    package: &'static str,
    /// `--test <target>`, or the library (`None`).
    target: Option<&'static str>,
    filters: &'static [&'static str],
}

/// The focused set: every kernel test of the probes (TCP, signals, exits, resets, refusals),
/// the agent's own checks of the running kernel, and the nginx SIGTERM/SIGQUIT and late
/// traffic scenarios end to end. The other scenarios exercise userspace rules that do not
/// depend on the kernel; they run on this machine's kernel.
const TESTS: &[TestRun] = &[
    TestRun {
        name: "agent: running kernel's BTF and tracefs",
        package: "termscope",
        target: None,
        filters: &["probes::"],
    },
    TestRun {
        name: "kernel tests: tcp",
        package: "termscope-tests",
        target: Some("tcp"),
        filters: &[],
    },
    TestRun {
        name: "kernel tests: signals",
        package: "termscope-tests",
        target: Some("signals"),
        filters: &[],
    },
    TestRun {
        name: "kernel test: connections older than the agent (TCP iterator)",
        package: "termscope-tests",
        target: Some("kernel_state"),
        filters: &["a_connection_older_than_the_agent_is_counted"],
    },
    TestRun {
        name: "scenario: nginx SIGTERM / SIGQUIT",
        package: "termscope-tests",
        target: Some("scenarios_nginx"),
        filters: &[],
    },
    TestRun {
        name: "scenario: late traffic",
        package: "termscope-tests",
        target: Some("scenarios_late_traffic"),
        filters: &[],
    },
];

/// The private apt configuration: options for apt-get and apt-cache.
fn apt_options(cache: &Path) -> Vec<String> {
    let apt = cache.join("apt");
    vec![
        format!(
            "-oDir::Etc::sourcelist={}",
            apt.join("sources.list").display()
        ),
        "-oDir::Etc::sourceparts=/dev/null".to_string(),
        format!("-oDir::State::Lists={}", apt.join("lists").display()),
        format!("-oDir::Cache={}", apt.join("cache").display()),
        "-oAPT::Sandbox::User=root".to_string(),
    ]
}

/// The sources file: the suites of [`SERIES`], main only.
pub fn sources_list() -> String {
    SERIES
        .iter()
        .map(|s| {
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {MIRROR} {} main\n",
                s.suite
            )
        })
        .collect()
}

/// From `apt-cache show linux-image-amd64` (one stanza per suite), the image package of
/// `series`: the `Depends` of the stanza whose `Version` starts with it, e.g.
/// `linux-image-5.10.0-32-amd64`.
pub fn image_package(show: &str, series: &str) -> Option<String> {
    show.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let version = field("Version:")?;
        let matches = version
            .strip_prefix(series)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('-'));
        if !matches {
            return None;
        }
        let depends = field("Depends:")?;
        let package = depends.split([' ', ',']).next()?.to_string();
        package.starts_with("linux-image-").then_some(package)
    })
}

/// `linux-image-5.10.0-32-amd64` -> `5.10.0-32-amd64`.
pub fn release_of(package: &str) -> Option<&str> {
    package
        .strip_prefix("linux-image-")
        .filter(|r| !r.is_empty())
}

fn cache_dir() -> PathBuf {
    std::env::var_os(CACHE_VAR)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_CACHE), PathBuf::from)
}

fn output_text(out: &Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

/// qemu, busybox, depmod (Debian) and virtme-ng (PyPI), installed when missing.
fn tools(ctx: &Ctx) -> Result<()> {
    let mut missing = Vec::new();
    for (program, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("busybox", "busybox-static"),
        ("depmod", "kmod"),
    ] {
        let found = ctx.find_program(program).is_some()
            || ["/usr/sbin", "/sbin"]
                .iter()
                .any(|d| Path::new(d).join(program).exists());
        println!(
            "[kernels] {program}: {}",
            if found {
                "ok".to_string()
            } else {
                format!("missing; installing Debian package {package}")
            }
        );
        if !found {
            missing.push(package);
        }
    }
    if !missing.is_empty() {
        setup::apt_install(ctx, &missing)?;
    }
    let vng_ok = |ctx: &Ctx| -> Result<bool> {
        Ok(ctx
            .probe(
                ctx.command("python3")
                    .args(["-m", "virtme_ng.run", "--version"]),
            )?
            .is_some_and(|o| o.status.success()))
    };
    if vng_ok(ctx)? {
        println!("[kernels] virtme-ng: ok");
        return Ok(());
    }
    println!("[kernels] virtme-ng: missing; installing {VIRTME_NG} with pip");
    setup::pip_install(ctx, VIRTME_NG)?;
    if !vng_ok(ctx)? {
        bail!("pip installed {VIRTME_NG} but `python3 -m virtme_ng.run --version` fails");
    }
    Ok(())
}

/// A kernel ready to boot.
#[derive(Debug, Clone)]
struct Kernel {
    series: &'static str,
    release: String,
    vmlinuz: PathBuf,
}

/// Each kernel of `wanted` from the cache, fetching what is missing.
fn kernels(ctx: &Ctx, cache: &Path, wanted: &[Series]) -> Result<Vec<Kernel>> {
    fs::create_dir_all(cache.join("apt/lists/partial"))
        .and_then(|()| fs::create_dir_all(cache.join("apt/cache/archives/partial")))
        .with_context(|| format!("creating {}", cache.display()))?;
    fs::write(cache.join("apt/sources.list"), sources_list())?;
    let opts = apt_options(cache);
    let mut updated = false;
    let mut out = Vec::new();
    for s in wanted {
        let pinned = cache.join(format!("{}.release", s.series));
        let cached = fs::read_to_string(&pinned)
            .ok()
            .map(|r| r.trim().to_string())
            .filter(|r| {
                cache.join(format!("vmlinuz-{r}")).is_file()
                    && Path::new("/lib/modules")
                        .join(r)
                        .join("modules.dep")
                        .is_file()
            });
        let release = match cached {
            Some(r) => {
                println!("[kernels] {}: cached ({r})", s.series);
                r
            }
            None => {
                if !updated {
                    ctx.run(ctx.command("apt-get").args(&opts).arg("update"))
                        .context("apt-get update with the private configuration")?;
                    updated = true;
                }
                fetch(ctx, cache, &opts, *s)?
            }
        };
        fs::write(&pinned, format!("{release}\n"))?;
        out.push(Kernel {
            series: s.series,
            vmlinuz: cache.join(format!("vmlinuz-{release}")),
            release,
        });
    }
    Ok(out)
}

/// Downloads, unpacks and installs (modules, depmod) the newest kernel of `s`.
fn fetch(ctx: &Ctx, cache: &Path, opts: &[String], s: Series) -> Result<String> {
    let show = ctx
        .probe(
            ctx.command("apt-cache")
                .args(opts)
                .args(["show", "linux-image-amd64"]),
        )?
        .context("apt-cache is not installed")?;
    let package = image_package(&output_text(&show), s.series).with_context(|| {
        format!(
            "no linux-image-amd64 of {} in {} points at a {} kernel",
            s.suite, MIRROR, s.series
        )
    })?;
    let release = release_of(&package)
        .context("unexpected package name")?
        .to_string();
    println!("[kernels] {}: fetching {package}", s.series);
    let debs = cache.join("debs");
    fs::create_dir_all(&debs)?;
    ctx.run(
        ctx.command("apt-get")
            .args(opts)
            .args(["download", &package])
            .current_dir(&debs),
    )?;
    let deb = fs::read_dir(&debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
        })
        .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
    let unpacked = cache.join("unpacked").join(&release);
    let _ = fs::remove_dir_all(&unpacked);
    fs::create_dir_all(&unpacked)?;
    ctx.run(ctx.command("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| unpacked.join(d).join(&release))
        .find(|p| p.is_dir())
        .with_context(|| format!("{} has no modules for {release}", deb.display()))?;
    fs::create_dir_all("/lib/modules")?;
    let target = Path::new("/lib/modules").join(&release);
    let _ = fs::remove_dir_all(&target);
    ctx.run(ctx.command("cp").arg("-a").arg(&modules).arg(&target))?;
    ctx.run(ctx.command("depmod").arg(&release))?;
    fs::copy(
        unpacked.join("boot").join(format!("vmlinuz-{release}")),
        cache.join(format!("vmlinuz-{release}")),
    )
    .context("copying vmlinuz")?;
    let _ = fs::remove_dir_all(&unpacked);
    let _ = fs::remove_file(&deb);
    Ok(release)
}

/// A test executable built here.
#[derive(Debug, Clone)]
struct Executable {
    name: &'static str,
    path: PathBuf,
    cwd: PathBuf,
    filters: &'static [&'static str],
}

/// Builds the agent and the test binaries of [`TESTS`], and finds their paths.
fn build(ctx: &Ctx, runs: &[&TestRun]) -> Result<(PathBuf, Vec<Executable>)> {
    ctx.run(&mut ctx.cargo(&["build", "-p", "termscope"]))?;
    let agent = ctx.target_dir().join("debug/termscope");
    let mut out = Vec::new();
    for t in runs {
        let mut args = vec!["test", "-p", t.package, "--no-run", "--message-format=json"];
        match t.target {
            Some(target) => args.extend(["--test", target]),
            None => args.push("--lib"),
        }
        let mut cmd = ctx.cargo(&args);
        cmd.stderr(Stdio::inherit());
        println!("==> {}", ctx.describe(&cmd));
        let output = cmd.output().context("running cargo test --no-run")?;
        if !output.status.success() {
            bail!("building the tests of {} failed", t.name);
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let path = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["reason"] == "compiler-artifact" && v["profile"]["test"] == true)
            .filter(|v| match t.target {
                Some(target) => v["target"]["name"] == target,
                None => v["target"]["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "lib")),
            })
            .find_map(|v| v["executable"].as_str().map(PathBuf::from))
            .with_context(|| format!("cargo built no test executable for {}", t.name))?;
        let manifest = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| {
                (v["executable"].as_str() == Some(&path.to_string_lossy()))
                    .then(|| v["manifest_path"].as_str().map(PathBuf::from))
                    .flatten()
            })
            .and_then(|m| m.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| ctx.root.clone());
        out.push(Executable {
            name: t.name,
            path,
            cwd: manifest,
            filters: t.filters,
        });
    }
    Ok((agent, out))
}

/// The test runs `--only` names (a `--test` target, or `lib`), all of [`TESTS`] if none.
fn selected(only: &[String]) -> Result<Vec<&'static TestRun>> {
    if only.is_empty() {
        return Ok(TESTS.iter().collect());
    }
    let key = |t: &TestRun| t.target.unwrap_or("lib");
    only.iter()
        .map(|o| {
            TESTS.iter().find(|t| key(t) == o).with_context(|| {
                format!(
                    "no VM test run named {o}; known: {}",
                    TESTS.iter().map(key).collect::<Vec<_>>().join(", ")
                )
            })
        })
        .collect()
}

/// The script the guest runs: doctor, then each test binary `repeat` times (to hunt a
/// flaky test: the log keeps every run, the exit code the first failing one's), each
/// result in `results`.
fn guest_script(agent: &Path, tests: &[Executable], results: &Path, repeat: u32) -> String {
    let q = |p: &Path| crate::util::shell_quote(&p.to_string_lossy());
    let mut s = String::from(
        "#!/bin/sh\n# Written by cargo xtask test-kernels; run inside the VM.\nset -u\n\
         export TERMSCOPE_REQUIRE_KERNEL_TESTS=1 CI=true RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0\n\
         mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing\n\
         ip link set lo up 2>/dev/null\n",
    );
    let r = q(results);
    let _ = writeln!(s, "uname -r > {r}/release");
    let _ = writeln!(
        s,
        "{} doctor > {r}/doctor.txt 2>&1; echo $? > {r}/doctor.rc",
        q(agent)
    );
    for (i, t) in tests.iter().enumerate() {
        let filters: Vec<String> = t
            .filters
            .iter()
            .map(|f| crate::util::shell_quote(f))
            .collect();
        let _ = writeln!(
            s,
            "start=$(date +%s); rc=0; for n in $(seq {repeat}); do (cd {cwd} && \
             CARGO_MANIFEST_DIR={cwd} {exe} {filters} --test-threads=2) >> {r}/test-{i}.log 2>&1 \
             || {{ r=$?; [ $rc = 0 ] && rc=$r; }}; done; echo $rc > {r}/test-{i}.rc; \
             echo $(( $(date +%s) - start )) > {r}/test-{i}.secs",
            cwd = q(&t.cwd),
            exe = q(&t.path),
            filters = filters.join(" "),
        );
    }
    let _ = writeln!(s, "echo done > {r}/done");
    s
}

/// What one test binary did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryResult {
    pub passed: u32,
    pub failed: Vec<String>,
    pub ok: bool,
    /// What the failed tests printed (libtest's first `failures:` section), its last lines
    /// only: CI shows it, so a failure in a VM can be read without the VM's files.
    pub failures: String,
}

/// Lines of a failed binary's output the summary keeps.
const FAILURE_LINES: usize = 60;

/// Reads libtest's output: the `test result:` counts and the names of failed tests.
pub fn parse_test_log(log: &str, exit_ok: bool) -> BinaryResult {
    let mut passed = 0;
    let mut failed = Vec::new();
    for line in log.lines() {
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" ... FAILED"))
        {
            failed.push(name.to_string());
        }
        if let Some(n) = line
            .strip_prefix("test result: ")
            .and_then(|rest| {
                rest.split(';')
                    .find_map(|p| p.trim().strip_suffix(" passed"))
            })
            .and_then(|p| p.rsplit(' ').next())
            .and_then(|n| n.parse::<u32>().ok())
        {
            passed += n;
        }
    }
    BinaryResult {
        passed,
        failed,
        ok: exit_ok,
        failures: failure_excerpt(log),
    }
}

/// libtest prints `failures:`, each failed test's output, then `failures:` again with the
/// names: the text between the two, its last [`FAILURE_LINES`] lines. A binary that died
/// without that section (a crash, a timeout) gives its log's last lines instead.
fn failure_excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let marks: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim_end() == "failures:")
        .map(|(i, _)| i)
        .collect();
    let section = match marks.as_slice() {
        [first, second, ..] => &lines[first + 1..*second],
        [only] => &lines[only + 1..],
        [] if log.contains("test result: ok.") => &[][..],
        [] => &lines[..],
    };
    let section: Vec<&str> = section
        .iter()
        .copied()
        .skip_while(|l| l.trim().is_empty())
        .collect();
    let cut = section.len().saturating_sub(FAILURE_LINES);
    let mut out = String::new();
    if cut > 0 {
        let _ = writeln!(out, "[{cut} earlier line(s) in the log]");
    }
    for l in &section[cut..] {
        let _ = writeln!(out, "{l}");
    }
    out.trim_end().to_string()
}

/// What one kernel gave.
struct KernelResult {
    kernel: Kernel,
    booted: bool,
    took: Duration,
    /// Boots that ended before the guest script's first line ran (QEMU or virtme-ng failing
    /// to start, not a kernel or test result): how long each took and its console's last lines.
    boot_failures: Vec<(Duration, String)>,
    /// The console's last lines when the script did not finish: CI shows them.
    console_tail: String,
    doctor: String,
    doctor_ok: bool,
    binaries: Vec<(&'static str, BinaryResult, Option<u64>)>,
}

impl KernelResult {
    fn ok(&self) -> bool {
        self.booted && self.doctor_ok && self.binaries.iter().all(|(_, r, _)| r.ok)
    }
}

/// Boots `k` and runs the script in it. A boot that ends before the script's first line
/// (`release`) was written is QEMU or virtme-ng failing to start — seen once in CI, 3 s after
/// the previous kernel's VM — not something the kernel or a test did: it is retried up to
/// [`BOOT_ATTEMPTS`] times, and every such failure is in the summary with its console.
fn run_kernel(
    ctx: &Ctx,
    k: &Kernel,
    agent: &Path,
    tests: &[Executable],
    root: &Path,
    repeat: u32,
) -> Result<KernelResult> {
    let results = root.join(&k.release);
    let mut boot_failures = Vec::new();
    let start = Instant::now();
    for attempt in 1..=BOOT_ATTEMPTS {
        let attempt_start = Instant::now();
        boot_once(ctx, k, agent, tests, root, &results, repeat)?;
        if results.join("release").exists() || attempt == BOOT_ATTEMPTS {
            break;
        }
        let tail = file_tail(&results.join("console.log"), CONSOLE_LINES);
        println!(
            "==> {} ({}): the VM ended after {} before its script started (attempt {attempt} of \
             {BOOT_ATTEMPTS}); its console:\n{tail}",
            k.series,
            k.release,
            format_duration(attempt_start.elapsed())
        );
        boot_failures.push((attempt_start.elapsed(), tail));
        std::thread::sleep(Duration::from_secs(5));
    }
    let took = start.elapsed();
    let read = |name: &str| fs::read_to_string(results.join(name)).unwrap_or_default();
    let booted = results.join("done").exists();
    let console_tail = if booted {
        String::new()
    } else {
        file_tail(&results.join("console.log"), CONSOLE_LINES)
    };
    let doctor = read("doctor.txt");
    let doctor_ok = read("doctor.rc").trim() == "0";
    let binaries = tests
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let exit_ok = read(&format!("test-{i}.rc")).trim() == "0";
            let secs = read(&format!("test-{i}.secs")).trim().parse().ok();
            (
                t.name,
                parse_test_log(&read(&format!("test-{i}.log")), exit_ok),
                secs,
            )
        })
        .collect();
    Ok(KernelResult {
        kernel: k.clone(),
        booted,
        took,
        boot_failures,
        console_tail,
        doctor,
        doctor_ok,
        binaries,
    })
}

/// How many times in all a kernel is booted when its VM ends before its script starts.
const BOOT_ATTEMPTS: u32 = 2;

/// Lines of a VM's console the summary keeps when the VM did not finish.
const CONSOLE_LINES: usize = 40;

/// One boot of `k` running the guest script, its results (emptied first) in `results`.
fn boot_once(
    ctx: &Ctx,
    k: &Kernel,
    agent: &Path,
    tests: &[Executable],
    root: &Path,
    results: &Path,
    repeat: u32,
) -> Result<()> {
    let _ = fs::remove_dir_all(results);
    fs::create_dir_all(results)?;
    let script = results.join("run.sh");
    fs::write(&script, guest_script(agent, tests, results, repeat))?;
    let console = fs::File::create(results.join("console.log"))?;
    let mut cmd = ctx.command("timeout");
    cmd.arg(PER_KERNEL_TIMEOUT.as_secs().to_string())
        .args(["python3", "-m", "virtme_ng.run", "-r"])
        .arg(&k.vmlinuz)
        .args([
            "--memory",
            "4G",
            "--cpus",
            "2",
            "--disable-kvm",
            "--force-9p",
            "--verbose",
        ])
        .arg(format!("--rwdir={}", root.display()))
        .arg("--")
        .arg(format!("sh {}", script.display()))
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console);
    println!(
        "==> {} ({}): {}  [console: {}]",
        k.series,
        k.release,
        ctx.describe(&cmd),
        results.join("console.log").display()
    );
    // virtme-ng's own exit code does not carry the script's: the result files do.
    let _ = cmd.status().context("could not start virtme-ng")?;
    Ok(())
}

/// The last `n` lines of a file (empty when it cannot be read).
fn file_tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The per-kernel summary, as Markdown (also written to `summary.md`).
fn summary(results: &[KernelResult], results_dir: &Path) -> String {
    let mut s = String::new();
    for r in results {
        let _ = writeln!(
            s,
            "### {} ({}): {} in {}\n",
            r.kernel.series,
            r.kernel.release,
            if r.ok() { "passed" } else { "FAILED" },
            format_duration(r.took)
        );
        for (took, tail) in &r.boot_failures {
            let _ = writeln!(
                s,
                "- a boot ended after {} before the script started (retried); its console:\n",
                format_duration(*took)
            );
            push_block(&mut s, tail);
        }
        if !r.booted {
            let _ = writeln!(
                s,
                "- the VM did not finish its script (see {}/{}/console.log); its console's \
                 last lines:\n",
                results_dir.display(),
                r.kernel.release
            );
            push_block(&mut s, &r.console_tail);
        }
        let _ = writeln!(
            s,
            "- `termscope doctor`: {}",
            if r.doctor_ok { "ok" } else { "FAILED" }
        );
        // The check lines that are not ok (a verifier log follows a failed load: cut it).
        let notable: Vec<String> = r
            .doctor
            .lines()
            .filter(|l| ["warn ", "FAIL ", "off  "].iter().any(|m| l.starts_with(m)))
            .map(|l| l.chars().take(300).collect())
            .collect();
        for l in notable {
            let _ = writeln!(
                s,
                "  - `{}`",
                l.split_whitespace().collect::<Vec<_>>().join(" ")
            );
        }
        for (name, b, secs) in &r.binaries {
            let took = secs.map(|t| format!(" ({t} s)")).unwrap_or_default();
            if b.ok {
                let _ = writeln!(s, "- {name}: {} passed{took}", b.passed);
            } else if b.failed.is_empty() {
                let _ = writeln!(s, "- {name}: FAILED{took} ({} passed)", b.passed);
            } else {
                let _ = writeln!(
                    s,
                    "- {name}: FAILED{took}: {} ({} passed)",
                    b.failed.join(", "),
                    b.passed
                );
            }
            if !b.ok && !b.failures.is_empty() {
                s.push('\n');
                push_block(&mut s, &b.failures);
            }
        }
        s.push('\n');
    }
    s
}

/// `text` as an indented code block of the summary.
fn push_block(s: &mut String, text: &str) {
    let _ = writeln!(s, "  ```");
    for l in text.lines() {
        let _ = writeln!(s, "  {l}");
    }
    let _ = writeln!(s, "  ```");
}

/// `cargo xtask test-kernels`.
pub fn test_kernels(ctx: &Ctx, only: &[String], tests_only: &[String], repeat: u32) -> Result<()> {
    if !ctx.is_root {
        bail!(
            "booting kernels needs root (it installs packages and kernel modules under \
             /lib/modules): run `sudo -E cargo xtask test-kernels`"
        );
    }
    let wanted: Vec<Series> = if only.is_empty() {
        SERIES.to_vec()
    } else {
        let mut v = Vec::new();
        for o in only {
            let s = SERIES.iter().find(|s| s.series == o).with_context(|| {
                format!(
                    "unknown kernel series {o}; known: {}",
                    SERIES.map(|s| s.series).join(", ")
                )
            })?;
            v.push(*s);
        }
        v
    };
    let runs = selected(tests_only)?;
    let repeat = repeat.max(1);
    let start = Instant::now();
    tools(ctx)?;
    let cache = cache_dir();
    let kernels = kernels(ctx, &cache, &wanted)?;
    let (agent, tests) = build(ctx, &runs)?;
    let results_dir = ctx.target_dir().join("kernel-tests");
    fs::create_dir_all(&results_dir)?;
    let mut results = Vec::new();
    for k in &kernels {
        let r = run_kernel(ctx, k, &agent, &tests, &results_dir, repeat)?;
        println!(
            "==> {} ({}): {} ({})",
            k.series,
            k.release,
            if r.ok() { "passed" } else { "FAILED" },
            format_duration(r.took)
        );
        results.push(r);
    }
    let text = summary(&results, &results_dir);
    fs::write(results_dir.join("summary.md"), &text)?;
    println!(
        "\n==> kernels in VMs (total {}, summary in {}):\n\n{text}",
        format_duration(start.elapsed()),
        results_dir.join("summary.md").display()
    );
    let failed: Vec<_> = results
        .iter()
        .filter(|r| !r.ok())
        .map(|r| r.kernel.series)
        .collect();
    if !failed.is_empty() {
        bail!(
            "kernel tests failed on {} (logs in {})",
            failed.join(", "),
            results_dir.display()
        );
    }
    Ok(())
}

/// The kernels `cargo xtask test` (CI) boots: every Debian stock kernel termscope supports
/// (6.18 is the machine itself).
pub const CI_SERIES: [&str; 3] = ["5.10", "6.1", "6.12"];

/// Whether `cargo xtask test` boots the kernels: as root only (it installs kernels), unless
/// turned off.
pub fn wanted_in_test(is_root: bool, no_vms: bool) -> bool {
    is_root && !no_vms
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "Package: linux-image-amd64
Version: 6.12.117-1
Depends: linux-image-6.12.117+deb13-amd64 (= 6.12.117-1)

Package: linux-image-amd64
Version: 6.1.176-1
Depends: linux-image-6.1.0-50-amd64 (= 6.1.176-1)

Package: linux-image-amd64
Version: 5.10.223-1
Depends: linux-image-5.10.0-32-amd64 (= 5.10.223-1)
";

    #[test]
    fn a_vm_that_did_not_run_shows_its_console() {
        let r = KernelResult {
            kernel: Kernel {
                series: "6.12",
                release: "6.12.117+deb13-amd64".into(),
                vmlinuz: PathBuf::from("/k"),
            },
            booted: false,
            took: Duration::from_secs(9),
            boot_failures: vec![(
                Duration::from_secs(3),
                "qemu-system-x86_64: cannot set up guest memory".into(),
            )],
            console_tail: "virtme-ng: something else went wrong".into(),
            doctor: String::new(),
            doctor_ok: false,
            binaries: Vec::new(),
        };
        let s = summary(&[r], Path::new("/results"));
        assert!(s.contains("6.12 (6.12.117+deb13-amd64): FAILED"), "{s}");
        assert!(s.contains("a boot ended after 3.0s before the script started (retried)"));
        assert!(
            s.contains("  qemu-system-x86_64: cannot set up guest memory"),
            "{s}"
        );
        assert!(s.contains("  virtme-ng: something else went wrong"), "{s}");
    }

    #[test]
    fn file_tails() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("xtask-tail-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let f = dir.join("console.log");
        fs::write(&f, "a\nb\nc\n")?;
        assert_eq!(file_tail(&f, 2), "b\nc");
        assert_eq!(file_tail(&f, 10), "a\nb\nc");
        assert_eq!(file_tail(&dir.join("absent"), 2), "");
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn image_packages_per_series() {
        assert_eq!(
            image_package(SHOW, "5.10").as_deref(),
            Some("linux-image-5.10.0-32-amd64")
        );
        assert_eq!(
            image_package(SHOW, "6.1").as_deref(),
            Some("linux-image-6.1.0-50-amd64")
        );
        assert_eq!(
            image_package(SHOW, "6.12").as_deref(),
            Some("linux-image-6.12.117+deb13-amd64")
        );
        assert_eq!(image_package(SHOW, "6.6"), None);
        assert_eq!(
            release_of("linux-image-5.10.0-32-amd64"),
            Some("5.10.0-32-amd64")
        );
        assert_eq!(release_of("linux-image-"), None);
    }

    #[test]
    fn sources_name_every_suite() {
        let s = sources_list();
        for suite in ["bullseye", "bookworm", "trixie"] {
            assert!(s.contains(&format!(" {suite} main")), "{s}");
        }
    }

    #[test]
    fn test_logs() {
        let log = "running 3 tests
test a ... ok
test b ... FAILED
test c ... ok

test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out
";
        let r = parse_test_log(log, false);
        assert_eq!(r.passed, 2);
        assert_eq!(r.failed, ["b"]);
        assert!(!r.ok);
        let r = parse_test_log("test result: ok. 5 passed; 0 failed; 0 ignored", true);
        assert_eq!((r.passed, r.ok), (5, true));
        assert_eq!(parse_test_log("", false).passed, 0);
    }

    #[test]
    fn failure_output_is_kept() {
        let log = "running 2 tests
test a ... ok
test b ... FAILED

failures:

---- b stdout ----
report: {}
thread 'b' panicked at tests/b.rs:3:5:
too few refusals

failures:
    b

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out
";
        let r = parse_test_log(log, false);
        assert_eq!(
            r.failures,
            "---- b stdout ----\nreport: {}\nthread 'b' panicked at tests/b.rs:3:5:\ntoo few refusals"
        );
        assert!(
            parse_test_log("test result: ok. 5 passed", true)
                .failures
                .is_empty()
        );
        // A binary killed mid-run keeps its last lines.
        let long: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let r = parse_test_log(&long, false);
        assert!(
            r.failures
                .starts_with("[40 earlier line(s) in the log]\nline 40")
        );
        assert!(r.failures.ends_with("line 99"));
    }

    #[test]
    fn test_runs_by_target() -> Result<()> {
        assert_eq!(selected(&[])?.len(), TESTS.len());
        let only = selected(&["lib".into(), "scenarios_late_traffic".into()])?;
        assert_eq!(only[0].target, None);
        assert_eq!(only[1].target, Some("scenarios_late_traffic"));
        let err = selected(&["nope".into()]).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("known: lib, tcp")));
        Ok(())
    }

    #[test]
    fn vms_only_as_root() {
        assert!(wanted_in_test(true, false));
        assert!(!wanted_in_test(true, true));
        assert!(!wanted_in_test(false, false));
    }
}
