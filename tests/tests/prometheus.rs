//! The dashboard and the alerts against real data: a real Prometheus (Debian's
//! /usr/bin/prometheus) scraping the real agent binary every second, with
//! deploy/alerts/rules.yaml loaded, while a real nginx in a test cgroup and network namespace
//! is stopped with SIGTERM (fast shutdown) with four downloads in progress, and a connection
//! attempt arrives after it is gone — what `cargo xtask demo` shows.
//!
//! Then EVERY query of deploy/grafana/termscope-dashboard.json (read from the file: panels and
//! template variables) and EVERY alert expression (as Prometheus parsed them from the rules
//! file: /api/v1/rules) runs against Prometheus's HTTP API, and each answer is compared with
//! what the agent's own report of that shutdown says. Queries whose data only Kubernetes gives
//! (grace period used, preStop duration) must come back empty here, and do: that is asserted.
//! A panel or alert without an expectation below fails the test, so none goes unchecked.
//!
//! Kernel test: root, BTF, cgroup v2 (the agent loads its probes). Also needs prometheus,
//! nginx, curl and ip; missing, the test skips (fails with CI=true).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use termscope::outputs::metrics::{DELAY_BUCKETS, SHUTDOWN_BUCKETS};
use termscope_tests::{NetNs, Proc, TempDir, TestCgroup, http::http_get, kernel_test};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

fn skips_are_failures() -> bool {
    std::env::var("TERMSCOPE_REQUIRE_KERNEL_TESTS").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `Some(path)` of the first of `candidates` that exists; `None` (skip) or a failure (CI).
fn tool(candidates: &[&str], package: &str) -> Option<PathBuf> {
    let found = candidates.iter().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        let why = format!("{candidates:?} not found (Debian package {package})");
        assert!(
            !skips_are_failures(),
            "{why} (CI=true or TERMSCOPE_REQUIRE_KERNEL_TESTS=1: not skipping)"
        );
        eprintln!("SKIPPED: {why}");
    }
    found
}

/// A child process killed (SIGTERM, then SIGKILL) on drop.
struct Daemon {
    name: &'static str,
    child: Child,
}

impl Daemon {
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("{} did not stop on SIGTERM: killing it", self.name);
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port free on 127.0.0.1 now.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Percent-encodes a query string value.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The agent binary, built (or found up to date) by cargo: `cargo xtask test` builds it before
/// the tests; run alone, the test builds it itself.
fn agent_binary() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "-p", "termscope"]).current_dir(root());
    // Not the variables cargo sets for this test (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, ...):
    // build scripts that watch them (ring's) would rebuild, and again at the next build.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        let set_for_tests = ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_BIN_"]
            .iter()
            .any(|p| k.starts_with(p))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .contains(&k.as_ref());
        if set_for_tests {
            cmd.env_remove(&key);
        }
    }
    let status = cmd
        .status()
        .with_context(|| format!("running {cargo} build -p termscope"))?;
    ensure!(status.success(), "cargo build -p termscope failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| root().join("target"), |d| root().join(d));
    let bin = target.join("debug").join("termscope");
    ensure!(bin.is_file(), "{} does not exist", bin.display());
    Ok(bin)
}

/// Prometheus's HTTP API.
struct Prom {
    addr: SocketAddr,
}

impl Prom {
    fn api(&self, path: &str) -> Result<Value> {
        let (status, body) = http_get(self.addr, path)?;
        let v: Value =
            serde_json::from_str(&body).with_context(|| format!("{path}: {status} {body}"))?;
        ensure!(
            v.get("status").and_then(Value::as_str) == Some("success"),
            "{path}: {status} {body}"
        );
        v.get("data").cloned().context("no data")
    }

    /// An instant query: its series as (labels, value).
    fn query(&self, q: &str) -> Result<Vec<Sample>> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(q)))?;
        let result = data.get("result").context("result")?;
        let mut out = Vec::new();
        match data.get("resultType").and_then(Value::as_str) {
            Some("vector") => {
                for s in result.as_array().context("vector")? {
                    let labels = s
                        .get("metric")
                        .and_then(Value::as_object)
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                                .collect()
                        })
                        .unwrap_or_default();
                    let value = s
                        .pointer("/value/1")
                        .and_then(Value::as_str)
                        .context("value")?
                        .parse()?;
                    out.push(Sample { labels, value });
                }
            }
            other => bail!("{q}: result type {other:?}"),
        }
        Ok(out)
    }
}

#[derive(Debug, Clone)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// What a query must return.
#[derive(Debug)]
enum Expect {
    /// No series at all.
    Empty,
    /// Exactly these series (told apart by the given labels), with these values.
    Series(Vec<(Vec<(&'static str, String)>, f64)>),
    /// One series with a value in `[lo, hi]`.
    Between(f64, f64),
    /// At least one series, every value in `[lo, hi]`.
    AllBetween(f64, f64),
}

fn check(what: &str, query: &str, got: &[Sample], want: &Expect) -> Result<()> {
    let fail = |why: String| -> Result<()> {
        bail!("{what}\n  query: {query}\n  want: {want:?}\n  got: {got:?}\n  {why}")
    };
    match want {
        Expect::Empty => {
            if !got.is_empty() {
                return fail("expected no series".into());
            }
        }
        Expect::Series(series) => {
            if got.len() != series.len() {
                return fail(format!("{} series, not {}", got.len(), series.len()));
            }
            for (labels, value) in series {
                let Some(s) = got
                    .iter()
                    .find(|s| labels.iter().all(|(k, v)| s.label(k) == v))
                else {
                    return fail(format!("no series {labels:?}"));
                };
                if (s.value - value).abs() > 1e-9 {
                    return fail(format!("{labels:?} = {}, not {value}", s.value));
                }
            }
        }
        Expect::Between(lo, hi) => {
            if got.len() != 1 || !(got[0].value >= *lo && got[0].value <= *hi) {
                return fail(format!("expected one value in [{lo}, {hi}]"));
            }
        }
        Expect::AllBetween(lo, hi) => {
            if got.is_empty() || got.iter().any(|s| !(s.value >= *lo && s.value <= *hi)) {
                return fail(format!("expected values in [{lo}, {hi}]"));
            }
        }
    }
    println!("ok  {what}: {} series", got.len());
    Ok(())
}

/// The bucket `(lo, hi]` of `buckets` that holds `v`: where histogram_quantile puts any
/// quantile of a single observation.
fn bucket_of(buckets: &[f64], v: f64) -> (f64, f64) {
    let mut lo = 0.0;
    for &b in buckets {
        if v <= b {
            return (lo, b);
        }
        lo = b;
    }
    (lo, f64::INFINITY)
}

/// nginx's configuration: a 4 MiB file served at 256 KiB/s (16 s per download).
fn nginx_conf(dir: &TempDir) -> Result<PathBuf> {
    let d = dir.path.display();
    std::fs::create_dir_all(dir.join("tmp"))?;
    dir.write("big.bin", vec![b'x'; 4 << 20])?;
    dir.write(
        "nginx.conf",
        format!(
            "daemon off;\nmaster_process on;\nworker_processes 2;\nuser root;\n\
             pid {d}/nginx.pid;\nerror_log {d}/error.log notice;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n\
             \x20 proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n\
             \x20 uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
             \x20 server {{\n    listen 127.0.0.1:8080;\n\
             \x20   location = /big {{ alias {d}/big.bin; limit_rate 256k; }}\n\
             \x20   location / {{ return 200 \"hello\\n\"; }}\n  }}\n}}\n"
        ),
    )
}

/// `ip netns exec NS curl ...`.
fn curl_in(ns: &NetNs, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, "curl"]).args(args);
    cmd
}

/// Substitutes the dashboard's variables as Grafana would for one workload, in every
/// namespace (`$namespace` = All), with `$__range` and `$__rate_interval` long enough to hold
/// everything this Prometheus has.
fn substitute(expr: &str, workload_regex: &str) -> String {
    expr.replace("$cluster", ".*")
        .replace("$node", ".*")
        .replace("$namespace", ".*")
        .replace("$workload", workload_regex)
        .replace("$__range", "1h")
        .replace("$__rate_interval", "1m")
}

/// A regular expression matching `s` literally, escaped for a PromQL double-quoted string.
fn regex_literal(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out
}

#[test]
fn dashboard_queries_and_alerts_against_a_real_prometheus_scraping_the_agent() -> Result<()> {
    kernel_test!();
    let started = Instant::now();
    let Some(prometheus) = tool(&["/usr/bin/prometheus"], "prometheus") else {
        return Ok(());
    };
    let Some(nginx) = tool(&["/usr/sbin/nginx"], "nginx") else {
        return Ok(());
    };
    if tool(&["/usr/bin/curl"], "curl").is_none() {
        return Ok(());
    }
    let bin = agent_binary()?;
    let dir = TempDir::new("prom")?;

    // The agent, as the DaemonSet runs it but on loopback, with a short linger.
    let agent_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut agent = Daemon {
        name: "termscope agent",
        child: Command::new(&bin)
            .args(["agent", "--listen", &agent_addr.to_string()])
            // Its own run: no maps pinned, no state file shared with other tests' agents.
            .args(["--no-pin", "--no-state-file"])
            .args([
                "--no-log-file",
                "--no-stdout-reports",
                "--linger-ms",
                "1000",
            ])
            .env("TERMSCOPE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.log"))?)
            .spawn()
            .context("starting the agent")?,
    };
    wait_until("the agent's /readyz", Duration::from_secs(30), || {
        http_get(agent_addr, "/readyz")
            .ok()
            .filter(|(s, _)| *s == 200)
    })
    .with_context(|| std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default())?;

    // Prometheus: scrape the agent every second, evaluate deploy/alerts/rules.yaml every second.
    let rules = root().join("deploy/alerts/rules.yaml");
    let config = dir.write(
        "prometheus.yml",
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: termscope\n    static_configs:\n\
             \x20     - targets: ['{agent_addr}']\n\
             \x20       labels: {{node: test-node}}\n",
            rules = rules.display()
        ),
    )?;
    let prom_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut prom_daemon = Daemon {
        name: "prometheus",
        child: Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log"))?)
            .spawn()
            .context("starting prometheus")?,
    };
    let prom = Prom { addr: prom_addr };
    wait_until("Prometheus ready", Duration::from_secs(30), || {
        http_get(prom_addr, "/-/ready")
            .ok()
            .filter(|(s, _)| *s == 200)
    })
    .with_context(|| std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default())?;
    wait_until(
        "the first scrape of the agent",
        Duration::from_secs(15),
        || {
            prom.query(r#"up{job="termscope"} == 1"#)
                .ok()
                .filter(|s| !s.is_empty())
        },
    )?;

    // The scenario: nginx in its own cgroup and network namespace, four slow downloads, SIGTERM.
    let cg = TestCgroup::new("prom")?;
    let ns = NetNs::new("prom")?;
    let conf = nginx_conf(&dir)?;
    let mut cmd = Command::new(&nginx);
    cmd.arg("-p")
        .arg(&dir.path)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf);
    let mut server = Proc::spawn(&mut cmd, &cg, Some(&ns))?;
    wait_until("nginx answering", Duration::from_secs(10), || {
        curl_in(&ns, &["-sf", "http://127.0.0.1:8080/"])
            .stdout(Stdio::null())
            .status()
            .ok()
            .filter(|s| s.success())
    })?;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(
            curl_in(
                &ns,
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{size_download}",
                    "http://127.0.0.1:8080/big",
                ],
            )
            .stdout(Stdio::piped())
            .spawn()?,
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    server.signal(libc::SIGTERM)?;
    wait_until("nginx's exit", Duration::from_secs(10), || {
        server.try_exit().ok().flatten()
    })?;
    wait_until("the cgroup empty", Duration::from_secs(10), || {
        cg.pids().ok().filter(Vec::is_empty)
    })?;
    // Traffic that still arrives after the stop signal: refused, nothing listens any more.
    let nginx_addr: SocketAddr = "127.0.0.1:8080".parse()?;
    let late = ns.enter(|| TcpStream::connect_timeout(&nginx_addr, Duration::from_secs(2)))?;
    match late {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => bail!("the late connection was not refused: {other:?}"),
    }
    let mut cut_clients = 0;
    for c in clients {
        let out = c.wait_with_output()?;
        let bytes = String::from_utf8_lossy(&out.stdout);
        println!("client: {bytes} bytes, {}", out.status);
        if !out.status.success() {
            cut_clients += 1;
        }
    }
    assert_eq!(cut_clients, 4, "nginx's fast shutdown cut every download");

    // The agent's report of it, from its API.
    let workload = cg.path.clone();
    let report: Value = wait_until("the agent's report", Duration::from_secs(20), || {
        let (status, body) = http_get(
            agent_addr,
            &format!("/v1/terminations?workload={}", encode(&workload)),
        )
        .ok()?;
        let reports: Value = serde_json::from_str(&body).ok()?;
        (status == 200)
            .then_some(())
            .and_then(|()| reports.as_array()?.first().cloned())
    })?;
    println!(
        "report: outcome {} counts {} shutdown_ms {}",
        report["outcome"], report["counts"], report["shutdown_ms"]
    );
    let count = |k: &str| {
        report
            .pointer(&format!("/counts/{k}"))
            .and_then(Value::as_f64)
    };
    let n = |k: &str| count(k).unwrap_or(0.0);
    assert_eq!(report["subject"]["workload"], workload.as_str());
    assert_eq!(report["outcome"], "cut", "nginx's fast shutdown cuts");
    assert!(
        n("closed_by_exit") + n("reset_by_app") >= 4.0,
        "the downloads were cut"
    );
    assert_eq!(n("refused"), 1.0, "the late connection was refused");
    let shutdown_s = report["shutdown_ms"].as_f64().context("shutdown_ms")? / 1000.0;
    let late_delay_s = report["connections"]
        .as_array()
        .context("connections")?
        .iter()
        .filter(|c| c["verdict"] == "refused" || c["accepted_late"] == true)
        .filter_map(|c| c["delay_ms"].as_f64())
        .fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.max(d))))
        .context("the refused connection's delay")?
        / 1000.0;

    // Prometheus has scraped the report's metrics, and evaluated the rules on them.
    let escaped = regex_literal(&workload);
    wait_until(
        "the report's metrics in Prometheus",
        Duration::from_secs(15),
        || {
            prom.query(&format!(
                r#"termscope_terminations_total{{workload="{workload}"}}"#
            ))
            .ok()
            .filter(|s| !s.is_empty())
        },
    )?;
    let firing = |alert: &str| -> Result<bool> {
        let data = prom.api("/api/v1/alerts")?;
        Ok(data["alerts"].as_array().into_iter().flatten().any(|a| {
            a["labels"]["alertname"] == alert
                && a["labels"]["workload"] == workload.as_str()
                && a["state"] == "firing"
        }))
    };
    wait_until(
        "TermscopeConnectionsCutOnShutdown firing",
        Duration::from_secs(15),
        || {
            firing("TermscopeConnectionsCutOnShutdown")
                .ok()
                .filter(|f| *f)
        },
    )?;
    assert!(
        firing("TermscopeLateTrafficAfterStopSignal")?,
        "TermscopeLateTrafficAfterStopSignal fires too (for: 0)"
    );

    // What each query must give, for this one shutdown of this one workload.
    let w = || ("workload", workload.clone());
    let cut_by_reason: Vec<(Vec<(&'static str, String)>, f64)> =
        ["reset_by_app", "closed_by_exit", "refused"]
            .iter()
            .filter(|r| n(r) > 0.0)
            .map(|r| (vec![w(), ("reason", r.to_string())], n(r)))
            .collect();
    let outcome = report["outcome"].as_str().unwrap_or("").to_string();
    let (s_lo, s_hi) = bucket_of(&SHUTDOWN_BUCKETS, shutdown_s);
    let (d_lo, d_hi) = bucket_of(&DELAY_BUCKETS, late_delay_s);
    let probes = prom.query("termscope_probes_known")?;
    let known = probes.first().map_or(0.0, |s| s.value);
    ensure!(known >= 7.0, "probes known: {probes:?}");
    let panels: BTreeMap<(&str, &str), Expect> = [
        // Shutdowns in the selected time range.
        (("Terminations", "A"), Expect::Series(vec![(vec![], 1.0)])),
        (("Not graceful", "A"), Expect::Series(vec![(vec![], 1.0)])),
        (
            ("Connections cut", "A"),
            Expect::Series(vec![(vec![], n("cut"))]),
        ),
        (
            ("SIGKILL escalations", "A"),
            Expect::Series(vec![(vec![], 0.0)]),
        ),
        // The refused attempt is the one late connection.
        (
            ("Late connections", "A"),
            Expect::Series(vec![(vec![], 1.0)]),
        ),
        (
            ("Reset by peer", "A"),
            Expect::Series(vec![(vec![], n("reset_by_peer"))]),
        ),
        // Which workloads, and why.
        (
            ("Connections cut by workload and reason", "A"),
            Expect::Series(cut_by_reason.clone()),
        ),
        (
            ("Terminations by outcome", "A"),
            Expect::Series(vec![(vec![("outcome", outcome.clone())], 1.0)]),
        ),
        // One SIGTERM from the test to nginx's master, which has a handler for it.
        (
            ("Stop signals by disposition", "A"),
            Expect::Series(vec![(
                vec![
                    ("signal", "SIGTERM".to_string()),
                    ("disposition", "handler".to_string()),
                ],
                1.0,
            )]),
        ),
        (("SIGKILL escalations by workload", "A"), Expect::Empty),
        // Timing: one observation, so every quantile lies in its bucket.
        (
            ("Shutdown duration (p50, p99)", "A"),
            Expect::Between(s_lo, s_hi),
        ),
        (
            ("Shutdown duration (p50, p99)", "B"),
            Expect::Between(s_lo, s_hi),
        ),
        // Kubernetes only: no grace period, no preStop outside a cluster.
        (("Grace period used (p50, p99)", "A"), Expect::Empty),
        (("Grace period used (p50, p99)", "B"), Expect::Empty),
        (
            ("Late traffic delay (p50, p99) and preStop (p50)", "A"),
            Expect::Between(d_lo, d_hi),
        ),
        (
            ("Late traffic delay (p50, p99) and preStop (p50)", "B"),
            Expect::Between(d_lo, d_hi),
        ),
        (
            ("Late traffic delay (p50, p99) and preStop (p50)", "C"),
            Expect::Empty,
        ),
        (
            ("Late connections: accepted / refused", "A"),
            Expect::Series(vec![(vec![w(), ("kind", "refused".to_string())], 1.0)]),
        ),
        // Over time (the latest point).
        (
            ("Terminations over time, by outcome", "A"),
            Expect::Series(vec![(vec![("outcome", outcome.clone())], 1.0)]),
        ),
        (
            ("Connections cut over time, by reason", "A"),
            Expect::Series(
                cut_by_reason
                    .iter()
                    .map(|(l, v)| {
                        (
                            l.iter().filter(|(k, _)| *k == "reason").cloned().collect(),
                            *v,
                        )
                    })
                    .collect(),
            ),
        ),
        // Agent health: this agent, one series each.
        (
            ("Events lost and undecodable (per second)", "A"),
            Expect::Series(vec![(vec![("instance", agent_addr.to_string())], 0.0)]),
        ),
        (
            ("Events lost and undecodable (per second)", "B"),
            Expect::Series(vec![(vec![("instance", agent_addr.to_string())], 0.0)]),
        ),
        (
            ("Probes attached vs known", "A"),
            Expect::Series(vec![(vec![("instance", agent_addr.to_string())], known)]),
        ),
        (
            ("Probes attached vs known", "B"),
            Expect::Series(vec![(vec![("instance", agent_addr.to_string())], known)]),
        ),
        (
            ("Tracked connections", "A"),
            Expect::AllBetween(0.0, 65536.0),
        ),
        (
            ("Terminations in progress", "A"),
            Expect::AllBetween(0.0, 1e6),
        ),
        // The API's connections closed: whatever the test's own clients did.
        (
            (
                "Agent API: connections closed, and report writes failed (per second)",
                "A",
            ),
            Expect::AllBetween(0.0, 1e6),
        ),
        (
            (
                "Agent API: connections closed, and report writes failed (per second)",
                "B",
            ),
            Expect::Series(
                ["file", "stdout"]
                    .iter()
                    .map(|o| (vec![("output", o.to_string())], 0.0))
                    .collect(),
            ),
        ),
    ]
    .into_iter()
    .collect();

    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        root().join("deploy/grafana/termscope-dashboard.json"),
    )?)?;
    let mut checked = BTreeSet::new();
    for p in dashboard["panels"].as_array().context("panels")? {
        let title = p["title"].as_str().unwrap_or("");
        for t in p["targets"].as_array().into_iter().flatten() {
            let ref_id = t["refId"].as_str().unwrap_or("");
            let query = substitute(t["expr"].as_str().unwrap_or(""), &escaped);
            ensure!(!query.contains('$'), "a variable left in {query}");
            let want = panels
                .get(&(title, ref_id))
                .with_context(|| format!("no expectation for panel {title:?} {ref_id}"))?;
            let got = prom.query(&query)?;
            check(&format!("panel {title:?} {ref_id}"), &query, &got, want)?;
            checked.insert((title, ref_id));
        }
    }
    let unused: Vec<_> = panels.keys().filter(|k| !checked.contains(*k)).collect();
    ensure!(unused.is_empty(), "expectations for no panel: {unused:?}");

    // The template variables: label_values(SELECTOR, LABEL), as Grafana asks Prometheus.
    for v in dashboard["templating"]["list"]
        .as_array()
        .context("variables")?
    {
        let Some(def) = v["definition"].as_str() else {
            continue;
        };
        let Some(inner) = def
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
        else {
            continue;
        };
        let (selector, label) = inner.rsplit_once(',').context("label_values")?;
        let selector = substitute(selector.trim(), &escaped);
        let values = prom.api(&format!(
            "/api/v1/label/{}/values?match%5B%5D={}",
            label.trim(),
            encode(&selector)
        ))?;
        let values: BTreeSet<&str> = values
            .as_array()
            .context("values")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        match v["name"].as_str() {
            // Outside Kubernetes the namespace label is empty, i.e. absent: no values.
            Some("namespace") => ensure!(values.is_empty(), "namespaces: {values:?}"),
            // No external `cluster` label here.
            Some("cluster") => ensure!(values.is_empty(), "clusters: {values:?}"),
            Some("node") => ensure!(values == BTreeSet::from(["test-node"]), "nodes: {values:?}"),
            Some("workload") => ensure!(
                values.contains(workload.as_str()),
                "workloads {values:?} lack {workload}"
            ),
            other => bail!("no expectation for variable {other:?}"),
        }
        println!("ok  variable {}: {values:?}", v["name"]);
    }

    // Every alert, as Prometheus loaded it from deploy/alerts/rules.yaml.
    let rules = prom.api("/api/v1/rules")?;
    let alerts: Vec<(String, String)> = rules["groups"]
        .as_array()
        .context("groups")?
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["type"] == "alerting")
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("").to_string(),
                r["query"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let ours = |s: &Sample| s.label("workload") == workload;
    let mut seen_alerts = BTreeSet::new();
    for (name, query) in &alerts {
        let got = prom.query(query)?;
        let mine: Vec<Sample> = got.iter().filter(|s| ours(s)).cloned().collect();
        let (scope, samples, want) = match name.as_str() {
            "TermscopeConnectionsCutOnShutdown" => (
                "this workload",
                mine,
                Expect::Series(vec![(vec![w()], n("cut"))]),
            ),
            "TermscopeLateTrafficAfterStopSignal" => (
                "this workload",
                mine,
                Expect::Series(vec![(vec![w()], 1.0)]),
            ),
            // nginx handled its SIGTERM, nothing was SIGKILLed; no grace period outside
            // Kubernetes.
            "TermscopeSigkillEscalations"
            | "TermscopeNoSigtermHandler"
            | "TermscopeGracePeriodNearlyUsed" => ("this workload", mine, Expect::Empty),
            // The agent is up, loses nothing, and has all its probes.
            "TermscopeAgentLosingEvents" | "TermscopeAgentDown" | "TermscopeProbesMissing" => {
                ("all", got, Expect::Empty)
            }
            other => bail!("no expectation for alert {other}"),
        };
        check(&format!("alert {name} ({scope})"), query, &samples, &want)?;
        seen_alerts.insert(name.clone());
    }
    ensure!(seen_alerts.len() == 8, "alerts loaded: {seen_alerts:?}");

    // Stop the agent: TermscopeAgentDown's expression turns true at the next scrape (the alert itself
    // waits 5 minutes).
    agent.stop();
    let down = alerts
        .iter()
        .find(|(n, _)| n == "TermscopeAgentDown")
        .map(|(_, q)| q.clone())
        .context("TermscopeAgentDown")?;
    let got = wait_until(
        "TermscopeAgentDown's expression",
        Duration::from_secs(15),
        || prom.query(&down).ok().filter(|s| !s.is_empty()),
    )?;
    check(
        "alert TermscopeAgentDown after the agent stopped",
        &down,
        &got,
        &Expect::Series(vec![(
            vec![
                ("job", "termscope".into()),
                ("instance", agent_addr.to_string()),
            ],
            0.0,
        )]),
    )?;
    prom_daemon.stop();
    println!("took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
