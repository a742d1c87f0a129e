//! The `termscope` binary as people run it: `report` and `watch` on a log file, the agent's
//! start-up checks, its own logs. No root needed: the agent tests here stop at start-up
//! errors, before anything touches the kernel.

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

fn termscope() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_termscope"));
    // Nothing from the environment that runs the tests.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TERMSCOPE_")
            || key == "KUBECONFIG"
            || key == "KUBERNETES_SERVICE_HOST"
            || key == "NO_COLOR"
        {
            cmd.env_remove(key);
        }
    }
    cmd
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "termscope-cli-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// RFC 3339 UTC of `secs_ago` seconds before now.
fn ago(secs_ago: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let t = now - secs_ago;
    let (days, rem) = (t / 86_400, t % 86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000000Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A container report as the agent writes it.
fn report(id: &str, namespace: &str, pod: &str, outcome: &str, secs_ago: u64) -> Value {
    json!({
        "schema": "termscope/termination/v1",
        "id": id,
        "node": "node-1",
        "subject": {
            "cgroup_id": 42, "cgroup_path": format!("/kubepods/{pod}"), "label": format!("{namespace}/{pod}"),
            "runtime": "containerd", "pod_uid": format!("uid-{pod}"), "namespace": namespace,
            "workload": pod.split('-').next().unwrap_or(pod), "container": "app", "pod": pod,
            "main": {"pid": 10, "comm": "app"}
        },
        "outcome": outcome,
        "flags": [],
        "summary": [format!("{outcome} shutdown")],
        "started_at": ago(secs_ago),
        "ended_at": ago(secs_ago),
        "shutdown_ms": 1.5,
        "stop_signals": [],
        "timeline": [],
        "counts": {"completed": 0, "reset_by_app": 0, "closed_by_exit": 0, "reset_by_peer": 0,
                   "refused": 0, "open": 0, "accepted_late": 0, "cut": 0},
        "connections": [],
        "connections_omitted": 0,
        "exits": []
    })
}

fn write_log(path: &Path, reports: &[Value]) {
    let mut text = String::new();
    for r in reports {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).expect("write log");
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

fn three(dir: &TempDir) -> PathBuf {
    let log = dir.0.join("t.jsonl");
    write_log(
        &log,
        &[
            report("r-old", "shop", "cart-1", "graceful", 7200),
            report("r-web", "web", "front-7f", "killed", 600),
            report("r-cut", "shop", "checkout-2", "cut", 60),
        ],
    );
    log
}

#[test]
fn many_reports_are_listed_one_is_shown_in_full() {
    let dir = TempDir::new("views");
    let log = three(&dir);
    let (out, stdout, _) = run(termscope().args(["report", "--from-file"]).arg(&log));
    assert!(out.status.success());
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("started_at"), "{stdout}");
    assert!(
        lines[1].contains("graceful") && lines[1].contains("r-old"),
        "{stdout}"
    );
    assert!(lines[3].contains("  shop/checkout-2 app"), "{stdout}");
    assert!(!stdout.contains("timeline"), "list view: {stdout}");
    assert!(stdout.contains("3 report(s)"), "{stdout}");

    // One match: in full.
    let (_, stdout, _) = run(termscope()
        .args(["report", "--namespace", "web", "--from-file"])
        .arg(&log));
    assert!(stdout.contains("killed shutdown"), "full view: {stdout}");
    assert!(stdout.contains("connections: none"), "{stdout}");
    // --full for all.
    let (_, stdout, _) = run(termscope()
        .args(["report", "--full", "--from-file"])
        .arg(&log));
    assert_eq!(stdout.matches("connections: none").count(), 3, "{stdout}");
}

#[test]
fn listed_in_the_order_they_began_and_limit_keeps_the_latest() {
    let dir = TempDir::new("order");
    let log = dir.0.join("t.jsonl");
    // The log holds reports as they end: a long termination that began first ends last.
    write_log(
        &log,
        &[
            report("r-second", "shop", "b", "graceful", 600),
            report("r-third", "shop", "c", "graceful", 60),
            report("r-first", "shop", "a", "killed", 3600),
        ],
    );
    let q = |args: &[&str]| json_ids(&log, args);
    assert_eq!(q(&[]), ["r-first", "r-second", "r-third"]);
    assert_eq!(q(&["--limit", "2"]), ["r-second", "r-third"]);
}

/// The ids `termscope report --json` prints for `log` with `args`, in order.
fn json_ids(log: &Path, args: &[&str]) -> Vec<String> {
    let (out, stdout, stderr) = run(termscope()
        .args(["report", "--json", "--from-file"])
        .arg(log)
        .args(args));
    assert!(out.status.success(), "{args:?}: {stderr}");
    ids(&stdout)
}

fn ids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            v["id"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

#[test]
fn filters_by_namespace_pod_name_outcome_and_time() {
    let dir = TempDir::new("filters");
    let log = three(&dir);
    let q = |args: &[&str]| json_ids(&log, args);
    assert_eq!(q(&["--namespace", "shop"]), ["r-old", "r-cut"]);
    assert_eq!(q(&["--pod", "front-7f"]), ["r-web"], "by name");
    assert_eq!(q(&["--pod", "uid-cart"]), ["r-old"], "by UID");
    assert_eq!(q(&["--outcome", "killed"]), ["r-web"]);
    assert_eq!(q(&["--since", "1h30m"]), ["r-web", "r-cut"]);
    assert_eq!(q(&["--since", "5m"]), ["r-cut"]);
    assert_eq!(q(&["--until", "1h"]), ["r-old"]);
    // RFC 3339 with an offset: 30 minutes ago, written in UTC+01:00 and UTC-05:30.
    let utc = ago(1800);
    let t = |h: i64, m: i64| -> String {
        let hour: i64 = utc[11..13].parse().expect("hour");
        let min: i64 = utc[14..16].parse().expect("minute");
        let total = (hour * 60 + min + h * 60 + m).rem_euclid(24 * 60);
        // Only the time of day moves: keep the test away from midnight.
        format!(
            "{}T{:02}:{:02}:{}{}{:02}:{:02}",
            &utc[..10],
            total / 60,
            total % 60,
            &utc[17..19],
            if h >= 0 { '+' } else { '-' },
            h.abs(),
            m.abs()
        )
    };
    let hour: i64 = utc[11..13].parse().expect("hour");
    if (6..18).contains(&hour) {
        // 30 minutes ago: the reports of 10 and 1 minute ago, not the one of 2 hours ago.
        assert_eq!(q(&["--since", &t(1, 0)]), ["r-web", "r-cut"]);
        assert_eq!(q(&["--since", &t(-5, -30)]), ["r-web", "r-cut"]);
    }
    let (out, _, stderr) = run(termscope()
        .args(["report", "--since", "yesterday", "--from-file"])
        .arg(&log));
    assert!(!out.status.success());
    assert!(stderr.contains("1h30m"), "{stderr}");
    let (out, _, stderr) = run(termscope()
        .args(["report", "--outcome", "dead", "--from-file"])
        .arg(&log));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("graceful, cut, killed"), "{stderr}");
}

#[test]
fn escape_sequences_in_reports_reach_the_terminal_escaped() {
    let dir = TempDir::new("escapes");
    let log = dir.0.join("t.jsonl");
    let mut r = report("r-evil", "shop", "evil-1", "cut", 60);
    r["subject"]["main"]["comm"] = json!("x\u{1b}]0;owned\u{7}\u{1b}[2J");
    r["summary"] = json!(["bad \u{1b}[31mred\u{1b}[0m \r overwritten \u{202e}"]);
    write_log(&log, &[r]);
    let (out, stdout, _) = run(termscope().args(["report", "--from-file"]).arg(&log));
    assert!(out.status.success());
    assert!(
        !stdout.bytes().any(|b| b == 0x1b || b == b'\r' || b == 0x07),
        "{stdout:?}"
    );
    assert!(!stdout.contains('\u{202e}'));
    assert!(
        stdout.contains("x\\u{1b}]0;owned\\u{7}\\u{1b}[2J"),
        "{stdout}"
    );
    // JSON escapes them its own way.
    let (_, stdout, _) = run(termscope()
        .args(["report", "--json", "--from-file"])
        .arg(&log));
    assert!(!stdout.bytes().any(|b| b == 0x1b), "{stdout:?}");
}

#[test]
fn piped_into_head_ends_quietly() {
    let dir = TempDir::new("pipe");
    let log = dir.0.join("t.jsonl");
    let many: Vec<Value> = (0..3000)
        .map(|i| report(&format!("r{i:04}"), "shop", &format!("p-{i}"), "cut", 60))
        .collect();
    write_log(&log, &many);
    for args in [
        &["report"][..],
        &["report", "--full"],
        &["report", "--json"],
    ] {
        let mut child = termscope()
            .args(args)
            .arg("--from-file")
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut first = String::new();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        stdout.read_line(&mut first).expect("a line");
        drop(stdout);
        let status = child.wait().expect("exits");
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("stderr");
        assert!(status.success(), "{args:?}: {status:?} {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Reads stdout lines until one satisfies `want` (a minute at most).
fn read_until(lines: &std::sync::mpsc::Receiver<String>, want: impl Fn(&str) -> bool) -> String {
    loop {
        match lines.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if want(&l) => return l,
            Ok(_) => {}
            Err(e) => panic!("no such line from `termscope watch`: {e}"),
        }
    }
}

#[test]
fn watch_follows_the_log_file_across_rotations() {
    let dir = TempDir::new("watch");
    let log = dir.0.join("t.jsonl");
    write_log(&log, &[report("r-before", "shop", "a-1", "cut", 60)]);
    let mut child = termscope()
        .args(["watch", "--json", "--namespace", "shop", "--from-file"])
        .arg(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Started: it says so on stderr.
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut said = String::new();
    stderr.read_line(&mut said).expect("stderr");
    assert!(said.contains("following"), "{said}");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let append = |r: Value, partial: bool| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .expect("open");
        let line = r.to_string();
        if partial {
            // Half a line now, the rest later: only whole lines are reports.
            let (a, b) = line.split_at(line.len() / 2);
            f.write_all(a.as_bytes()).expect("write");
            f.flush().expect("flush");
            std::thread::sleep(Duration::from_millis(600));
            f.write_all(b.as_bytes()).expect("write");
        } else {
            f.write_all(line.as_bytes()).expect("write");
        }
        f.write_all(b"\n").expect("write");
    };
    append(report("r-other-ns", "web", "b-1", "cut", 1), false);
    append(report("r-new", "shop", "c-1", "killed", 1), true);
    let got = read_until(&rx, |_| true);
    assert_eq!(
        ids(&got),
        ["r-new"],
        "earlier and filtered-out reports are not shown"
    );
    // Rotation: the file is renamed and a new one started.
    std::fs::rename(&log, dir.0.join("t.jsonl.1")).expect("rotate");
    write_log(&log, &[report("r-rotated", "shop", "d-1", "cut", 1)]);
    let got = read_until(&rx, |_| true);
    assert_eq!(ids(&got), ["r-rotated"]);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn boolean_env_vars_take_what_people_write() {
    let dir = TempDir::new("bools");
    std::fs::write(dir.0.join("blocker"), "").expect("write");
    let bad_log = dir.0.join("blocker/t.jsonl");
    for value in ["1", "0", "true", "false", "yes", "no", "on", "off"] {
        let (out, _, stderr) = run(termscope()
            .args(["agent", "--log-file"])
            .arg(&bad_log)
            .env("TERMSCOPE_POD_LABELS", value)
            .env("TERMSCOPE_NO_EVENTS", value)
            .env("TERMSCOPE_NO_STDOUT_REPORTS", value));
        // Parsed: the agent went on to its start-up checks, which stop at the log file.
        assert_eq!(out.status.code(), Some(1), "{value}: {stderr}");
        assert!(stderr.contains("cannot write there"), "{value}: {stderr}");
    }
    let (out, _, stderr) = run(termscope()
        .args(["agent", "--no-log-file"])
        .env("TERMSCOPE_NO_EVENTS", "maybe"));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("TERMSCOPE_NO_EVENTS") || stderr.contains("maybe"),
        "{stderr}"
    );
}

#[test]
fn start_up_errors_are_clear() {
    let dir = TempDir::new("startup");
    std::fs::write(dir.0.join("blocker"), "").expect("write");
    // A log file that cannot be written.
    let (out, _, stderr) = run(termscope()
        .args(["agent", "--log-file"])
        .arg(dir.0.join("blocker/t.jsonl")));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("--log-file") && stderr.contains("blocker/t.jsonl"),
        "{stderr}"
    );
    // A broken kubeconfig.
    let kubeconfig = dir.0.join("kubeconfig");
    std::fs::write(&kubeconfig, "clusters: [this is not: a kubeconfig").expect("write");
    let (out, _, stderr) = run(termscope()
        .args(["agent", "--no-log-file", "--kubeconfig"])
        .arg(&kubeconfig));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("Kubernetes configuration"), "{stderr}");
    assert!(stderr.contains("kubeconfig"), "{stderr}");
    // Durations out of range, not wrapped.
    for (flag, value) in [
        ("--linger-ms", "18446744073709551615"),
        ("--linger-ms", "3600001"),
        ("--survive-timeout-secs", "0"),
        ("--survive-timeout-secs", "100000"),
        ("--event-interval-secs", "99999999999"),
    ] {
        let (out, _, stderr) = run(termscope().args(["agent", flag, value]));
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{stderr}");
    }
    // A stop signal that is no signal.
    let (out, _, stderr) = run(termscope().args(["agent", "--stop-signals", "TERM,NOPE"]));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--stop-signals") && stderr.contains("unknown signal \"NOPE\""),
        "{stderr}"
    );
    // Reports are not served off loopback.
    let (out, _, stderr) = run(termscope().args(["agent", "--reports-listen", "0.0.0.0:9470"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("not a loopback address"), "{stderr}");
}

#[test]
fn the_agents_logs_are_json_on_request_and_never_coloured_off_a_terminal() {
    let dir = TempDir::new("logs");
    std::fs::write(dir.0.join("blocker"), "").expect("write");
    let args = |cmd: &mut Command| {
        cmd.args(["agent", "--log-file"])
            .arg(dir.0.join("blocker/t.jsonl"));
    };
    let mut cmd = termscope();
    cmd.args(["--log-format", "json"]);
    args(&mut cmd);
    let (_, _, stderr) = run(&mut cmd);
    let first = stderr.lines().next().expect("a log line");
    let v: Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(
        v["fields"]["message"], "termscope agent starting",
        "{first}"
    );
    assert_eq!(v["level"], "INFO");

    let mut cmd = termscope();
    args(&mut cmd);
    let (_, _, stderr) = run(&mut cmd);
    assert!(stderr.contains("termscope agent starting"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour off a terminal: {stderr:?}"
    );
}
