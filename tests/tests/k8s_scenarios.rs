//! Kubernetes scenarios end to end, with the real `termscope agent` binary: pods run on the
//! tests' containerd by the kubelet stand-in, the agent watches them through the API server
//! stand-in (kube-rs over HTTP), and each pod's deletion is checked against what clients on
//! the node really saw, connection by connection (a client's local port is the report
//! connection's `remote.port()`).
//!
//! The agent binary must be built first: `cargo build -p termscope` (see
//! `termscope_tests::k8s_agent`).

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Mutex, MutexGuard, PoisonError, atomic::Ordering},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use termscope::{
    clock::parse_rfc3339,
    terminations::{
        kube::PodTerminationReport,
        report::{Flag, HookKind, Internal, Outcome, Signal, StepKind, TerminationReport, Verdict},
    },
};
use termscope_tests::{
    TempDir,
    apiserver::{ApiServer, Res},
    containerd::Containerd,
    images::{self, rw_mount},
    k8s_agent::{AgentProcess, Attempt, Knock, Knocker},
    k8s_test,
    kubelet::{ContainerSpec, KubeletDriver, Pod, PodSpec, PreStop},
    load::{Kind, Load, Truth, check_verdicts, show},
    nginx,
};

/// A threaded HTTP server on 0.0.0.0:PORT that answers every request with
/// `Connection: close` and closes the connection itself (no idle keep-alive connection is
/// left for an exit to cut). `/slow?s=N` sleeps N s first and prints `start <client port>`.
/// PID 1 of its container, so it handles SIGTERM itself (the kernel drops a signal PID 1 has
/// no handler for). `/quit?s=N` (a drain endpoint for an httpGet preStop hook, as Envoy's
/// `/quitquitquit`) waits N s and ends the process at once, answering nothing.
/// On SIGTERM, by MODE:
/// - `drain`: waits until no request is in flight, then exits 0;
/// - `close-listener`: closes the listening socket at once (new connections are refused),
///   keeps serving what it accepted for 1.5 s, then exits 0.
const APP: &str = r#"
import os, signal, socket, sys, threading, time
from urllib.parse import parse_qs, urlsplit
port, mode = int(sys.argv[1]), sys.argv[2]
busy = 0
lock = threading.Lock()
def serve(conn, peer):
    global busy
    with lock:
        busy += 1
    try:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = conn.recv(4096)
            if not data:
                return
            buf += data
        url = urlsplit(buf.split(b" ", 2)[1].decode())
        if url.path == "/quit":
            time.sleep(float(parse_qs(url.query).get("s", ["1"])[0]))
            os._exit(0)
        if url.path == "/slow":
            # One write(2) per line: concurrent threads' lines never interleave.
            os.write(1, b"start %d\n" % peer[1])
            time.sleep(float(parse_qs(url.query).get("s", ["2"])[0]))
            body = b"slow done\n"
        else:
            body = b"ok\n"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (len(body), body))
    except OSError:
        pass
    finally:
        conn.close()
        with lock:
            busy -= 1
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", port))
listener.listen(64)
def on_term(signum, frame):
    print("term", flush=True)
    if mode == "drain":
        while busy:
            time.sleep(0.05)
    else:
        listener.close()
        time.sleep(1.5)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("listening", flush=True)
while True:
    conn, peer = listener.accept()
    threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
"#;

const PORT: u16 = 8080;
/// How long to wait for a pod report once the pod is gone (linger 1 s, a 1 s tick, the
/// roll-up, on a busy 2-core machine).
const REPORT_TIMEOUT: Duration = Duration::from_secs(20);
const QUIT_IMAGE: &str = "termscope.test/app-sigquit:1";

/// The app container running [`APP`] in `mode`.
fn app(mode: &str) -> ContainerSpec {
    ContainerSpec::new(
        "app",
        &["/usr/bin/python3", "-u", "-c", APP, &PORT.to_string(), mode],
    )
    .port(PORT)
}

fn pod_addr(ip: &str) -> Result<SocketAddr> {
    Ok(SocketAddr::new(ip.parse()?, PORT))
}

/// Unix ns of an RFC 3339 time in a report.
fn ns(at: Option<&str>, what: &str) -> Result<u64> {
    at.and_then(parse_rfc3339)
        .with_context(|| format!("no parsable {what}: {at:?}"))
}

fn unix_ns(t: SystemTime) -> Result<u64> {
    Ok(u64::try_from(
        t.duration_since(SystemTime::UNIX_EPOCH)?.as_nanos(),
    )?)
}

/// Milliseconds from `from_ns` to `t` (negative before).
fn ms_after(t: SystemTime, from_ns: u64) -> Result<f64> {
    Ok((unix_ns(t)? as f64 - from_ns as f64) / 1e6)
}

/// The pod report's only container report.
fn only_container(pod: &PodTerminationReport) -> Result<&TerminationReport> {
    ensure!(
        pod.containers.len() == 1,
        "expected one container report, got {}",
        pod.containers.len()
    );
    Ok(&pod.containers[0])
}

fn print_pod_report(pod: &PodTerminationReport) -> Result<()> {
    println!("pod report: {}", serde_json::to_string_pretty(pod)?);
    println!("pod report summary:");
    for s in &pod.summary {
        println!("  {s}");
    }
    Ok(())
}

fn print_attempts(attempts: &[Attempt], from_ns: u64) -> Result<()> {
    println!("client attempts (ms after the stop signal):");
    for a in attempts {
        println!(
            "  port {} {:>9.1} .. {:>9.1}: {:?}",
            a.port,
            ms_after(a.started, from_ns)?,
            ms_after(a.ended, from_ns)?,
            a.knock
        );
    }
    Ok(())
}

/// The timeline's `what`s, for messages.
fn steps(pod: &PodTerminationReport) -> Vec<String> {
    pod.timeline
        .iter()
        .map(|s| format!("{:.1} {} {}", s.t_ms, s.what, s.detail))
        .collect()
}

fn has_step(pod: &PodTerminationReport, what: StepKind, detail: &str) -> bool {
    pod.timeline
        .iter()
        .any(|s| s.what == what && s.detail.contains(detail))
}

/// One scenario at a time. Each test's agent watches the whole node: with scenarios in
/// parallel, every agent also traces the other tests' pods (extra terminations, cgroup
/// rescans) and the 2-core test machines get slower; run alone, a scenario's agent sees its
/// own pods only. (Run in parallel, the nginx scenarios also hit an agent race: a container
/// whose cgroup appears within the resolver's 200 ms rescan cooldown and is stopped within it
/// loses its identity, so no pod report.)
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A scenario's node: the tests' containerd, the kubelet stand-in posting to `api`, and an
/// agent watching that node (ready: it sees every change made from then on).
fn node(api: &ApiServer) -> Result<(&'static Containerd, KubeletDriver<'_>, AgentProcess)> {
    let containerd = Containerd::shared()?;
    let kubelet = KubeletDriver::new(containerd, Some(api))?;
    let agent = AgentProcess::start(api, &kubelet.node_name)?;
    Ok((containerd, kubelet, agent))
}

/// Pod `name` with `containers` and a grace period of `grace` s, behind Service `name`
/// (selecting `app=name`).
fn app_pod(name: &str, containers: Vec<ContainerSpec>, grace: i64) -> PodSpec {
    PodSpec::new(name, containers)
        .grace(grace)
        .service(name)
        .label("app", name)
}

/// Runs `spec` and waits until its `app` container ([`APP`]) listens.
fn run_listening<'k>(kubelet: &'k KubeletDriver<'_>, spec: PodSpec) -> Result<Pod<'k>> {
    let pod = kubelet.run_pod(spec)?;
    pod.wait_for_log("app", "listening", Duration::from_secs(20))?;
    Ok(pod)
}

/// A client's request to `path` on the pod's [`APP`], in flight once the app printed
/// `start <client port>`: the load holding it, and the client's port.
fn request_in_flight(
    containerd: &'static Containerd,
    pod: &Pod<'_>,
    path: &str,
) -> Result<(Load<'static>, u16)> {
    let mut load = Load::new(containerd.node_netns(), pod_addr(&pod.ip)?);
    load.wait_ready("/", Duration::from_secs(10))?;
    let port = load.in_flight(path, false)?;
    pod.wait_for_log("app", &format!("start {port}"), Duration::from_secs(10))?;
    Ok((load, port))
}

/// Waits for `pod`'s report, and prints it.
fn pod_report(agent: &mut AgentProcess, pod: &Pod<'_>) -> Result<PodTerminationReport> {
    let report = agent.wait_pod_report(pod.uid(), REPORT_TIMEOUT)?;
    print_pod_report(&report)?;
    Ok(report)
}

/// Stops the agent with SIGINT: it must exit successfully.
fn stop_agent(agent: AgentProcess) -> Result<()> {
    let status = agent.stop()?;
    ensure!(
        status.success(),
        "the agent exited with {status} after SIGINT"
    );
    Ok(())
}

/// Waits for a `ConnectionsCutOnShutdown` Event (posted after the pod report, from a task).
fn wait_for_cut_event(api: &ApiServer) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(e) = api
            .events()
            .into_iter()
            .find(|e| e["reason"] == "ConnectionsCutOnShutdown")
        {
            return Ok(e);
        }
        if Instant::now() >= deadline {
            bail!(
                "no ConnectionsCutOnShutdown Event within 15 s; events: {:?}",
                api.events()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// 1. A pod whose app finishes its in-flight request on SIGTERM and exits: graceful, nothing
///    cut, and the pod report tells the Kubernetes side of it.
#[test]
fn graceful_pod_finishes_its_request_in_flight() -> Result<()> {
    k8s_test!();
    let _one = one_at_a_time();
    let api = ApiServer::start()?;
    let (containerd, kubelet, mut agent) = node(&api)?;
    let mut pod = run_listening(&kubelet, app_pod("web", vec![app("drain")], 10))?;
    let container_id = pod.container("app")?.id.clone();
    let (load, _) = request_in_flight(containerd, &pod, "/slow?s=2")?;

    let deletion = pod.delete_with_grace(10)?;
    let seen = load.finish()?;
    let report = pod_report(&mut agent, &pod)?;
    let c = only_container(&report)?;
    show(c, &seen)?;

    // Ground truth: the request was answered, and the app exited 0 on its own.
    ensure!(
        seen.len() == 1 && seen[0].truth == Truth::Completed,
        "{seen:?}"
    );
    let stop = deletion.container("app")?;
    ensure!(stop.status.exit_code == 0, "{stop:?}");
    check_verdicts(c, &seen, |_| Some(Verdict::Completed))?;
    ensure!(
        c.connections.len() == 1,
        "only the request in flight: {:?}",
        c.connections
    );

    ensure!(report.outcome == Outcome::Graceful, "{:?}", report.outcome);
    ensure!(report.counts.cut == 0, "{:?}", report.counts);
    ensure!(report.counts.completed == 1, "{:?}", report.counts);
    ensure!(report.flags.is_empty(), "{:?}", report.flags);
    ensure!(report.pod == "web" && report.namespace == "default");
    ensure!(c.subject.container == "app", "{:?}", c.subject);
    ensure!(
        c.subject.container_id.as_deref() == Some(container_id.as_str()),
        "{:?}",
        c.subject
    );
    ensure!(
        c.stop_signals.first().map(|s| s.signal) == Some(Signal::TERM),
        "{:?}",
        c.stop_signals
    );

    // The timeline: deletion, endpoints, the container's stop signal and exit, in order.
    let timeline = steps(&report);
    for what in [StepKind::DeletionRequested, StepKind::DeletionObserved] {
        ensure!(
            has_step(&report, what.clone(), ""),
            "no {what}: {timeline:#?}"
        );
    }
    ensure!(
        has_step(&report, StepKind::EndpointsNotReady, "")
            || has_step(&report, StepKind::EndpointsTerminating, ""),
        "no endpoints step: {timeline:#?}"
    );
    let index = |what: StepKind| report.timeline.iter().position(|s| s.what == what);
    let (Some(requested), Some(signal), Some(exit)) = (
        index(StepKind::DeletionRequested),
        index(StepKind::StopSignal),
        index(StepKind::Exit),
    ) else {
        bail!("missing steps: {timeline:#?}");
    };
    ensure!(requested < signal && signal < exit, "{timeline:#?}");
    ensure!(
        report.timeline[signal].detail.starts_with("[app] SIGTERM"),
        "{timeline:#?}"
    );
    ensure!(
        report.timeline[exit].detail.starts_with("[app] "),
        "{timeline:#?}"
    );

    let k = &report.kubernetes;
    ensure!(k.grace_period_seconds == 10, "{k:?}");
    ensure!(
        k.deletion_to_stop_signal_ms.is_some_and(|ms| ms >= 0.0),
        "{k:?}"
    );
    ensure!(
        k.grace_used_ratio.is_some_and(|r| r > 0.0 && r < 1.0),
        "{k:?}"
    );
    ensure!(k.late_after_stop_signal.refused == 0, "{k:?}");

    // The container report is served too, with its Kubernetes section, and both are in the
    // forensic log.
    let containers = agent.terminations()?;
    let served = containers
        .iter()
        .find(|r| r.subject.container_id.as_deref() == Some(container_id.as_str()))
        .context("the container report is not in /v1/terminations")?;
    ensure!(
        served
            .kubernetes
            .as_deref()
            .is_some_and(|k| k.pod_uid == pod.uid() && k.container.as_deref() == Some("app")),
        "{:?}",
        served.kubernetes
    );
    let log = std::fs::read_to_string(&agent.log_file)?;
    ensure!(
        log.lines()
            .any(|l| l.contains("termscope/pod-termination/v3") && l.contains(&report.id)),
        "the pod report is not in {}",
        agent.log_file.display()
    );
    ensure!(
        !api.events()
            .iter()
            .any(|e| e["reason"] == "ConnectionsCutOnShutdown"),
        "an Event for a graceful shutdown: {:?}",
        api.events()
    );
    stop_agent(agent)
}

/// 2. No preStop hook, and clients keep connecting after SIGTERM (the endpoints take time to
///    propagate): the app closes its listener on SIGTERM, and every connection attempt from
///    then on is refused by the pod's kernel.
///
/// Ground truth: a client on the node connects every 100 ms throughout the deletion. An
/// ECONNREFUSED can only be the RST of the pod's own network namespace (a SYN to a port
/// nothing listens on any more), so every refusal the client saw happened while that
/// namespace existed: during the app's 1.5 s after SIGTERM, and from its exit until
/// StopPodSandbox tears down the pod network. After that the pod IP is gone: a SYN gets no
/// answer at all (the client times out), there is no RST, and nothing to report. So the
/// client's count of refusals must equal the report's, port by port, and no unanswered attempt
/// may be in the report.
#[test]
fn late_connections_are_refused_without_a_pre_stop_hook() -> Result<()> {
    k8s_test!();
    let _one = one_at_a_time();
    let api = ApiServer::start()?;
    let (containerd, kubelet, mut agent) = node(&api)?;
    let mut pod = run_listening(&kubelet, app_pod("late", vec![app("close-listener")], 10))?;
    let addr = pod_addr(&pod.ip)?;
    Load::new(containerd.node_netns(), addr).wait_ready("/", Duration::from_secs(10))?;

    let knocker = Knocker::start(containerd.node_netns(), addr, Duration::from_millis(100))?;
    std::thread::sleep(Duration::from_millis(300));
    let deletion = pod.delete_with_grace(10)?;
    // The sandbox is gone: a few more attempts find nothing there.
    std::thread::sleep(Duration::from_millis(600));
    let attempts = knocker.finish()?;
    let report = pod_report(&mut agent, &pod)?;
    let c = only_container(&report)?;
    let stop_ns = ns(
        c.stop_signal_at.map(termscope::clock::text).as_deref(),
        "stop_signal_at",
    )?;
    print_attempts(&attempts, stop_ns)?;
    ensure!(deletion.container("app")?.status.exit_code == 0);

    let refused: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.knock == Knock::Refused)
        .collect();
    ensure!(!refused.is_empty(), "the client saw no refusal");
    ensure!(
        attempts
            .iter()
            .any(|a| matches!(a.knock, Knock::NoAnswer(_))),
        "no attempt after the pod network was torn down"
    );
    let mut wrong = Vec::new();
    for a in &attempts {
        let got = c.connections.iter().find(|x| x.remote.port() == a.port);
        let ok = match &a.knock {
            Knock::Refused => got.is_some_and(|x| {
                x.verdict == Verdict::Refused && x.reset_reason.as_deref() == Some("no_socket")
            }),
            // Answered: in the report only if it was still open when the deletion was seen,
            // then as completed.
            Knock::Answered => got.is_none_or(|x| x.verdict == Verdict::Completed),
            // Accepted just before the listener closed, reset with it.
            Knock::Reset | Knock::Eof => got.is_some_and(|x| x.verdict.is_cut()),
            Knock::NoAnswer(_) => got.is_none(),
        };
        if !ok {
            wrong.push(format!(
                "port {} saw {:?}: report has {got:?}",
                a.port, a.knock
            ));
        }
    }
    ensure!(
        wrong.is_empty(),
        "the report disagrees with the client:\n{}",
        wrong.join("\n")
    );
    let k = &report.kubernetes;
    ensure!(
        report.counts.refused as usize == refused.len(),
        "the client saw {} refusals, the pod report counts {}",
        refused.len(),
        report.counts.refused
    );
    ensure!(
        k.late_after_stop_signal.refused as usize == refused.len(),
        "late_after_stop_signal {:?}, the client saw {} refusals",
        k.late_after_stop_signal,
        refused.len()
    );

    // The latest late arrival: no earlier than the client's last refused attempt began, no
    // later than the last attempt the pod answered ended (50 ms for the two clocks).
    let max_ms = k
        .late_after_stop_signal
        .max_delay_ms
        .context("no max_delay_ms")?;
    let mut lower = f64::MIN;
    for a in &refused {
        lower = lower.max(ms_after(a.started, stop_ns)?);
    }
    let mut upper = f64::MIN;
    for a in attempts.iter().filter(|a| a.answered_by_pod()) {
        upper = upper.max(ms_after(a.ended, stop_ns)?);
    }
    ensure!(
        max_ms >= lower - 50.0 && max_ms <= upper + 50.0,
        "max_delay_ms {max_ms} outside [{lower}, {upper}] from the client's clock"
    );

    ensure!(report.outcome == Outcome::Cut, "{:?}", report.outcome);
    for flag in [Flag::Cut, Flag::LateTraffic] {
        ensure!(report.has_flag(flag), "{:?}", report.flags);
    }
    let needed = (max_ms / 1000.0).ceil().max(1.0);
    ensure!(
        report.summary.iter().any(|s| s.contains(&format!(
            "a preStop sleep of at least {needed} s would have kept them"
        )) && s.contains("there is no preStop hook")),
        "no preStop advice for {needed} s: {:?}",
        report.summary
    );
    ensure!(k.deletion_to_stop_signal_ms.is_some(), "{k:?}");

    // A bare pod: the Event goes on the Pod itself.
    let event = wait_for_cut_event(&api)?;
    ensure!(
        event["involvedObject"]["kind"] == "Pod" && event["involvedObject"]["name"] == "late",
        "{event}"
    );
    stop_agent(agent)
}

/// 3. The same app with `preStop: sleep: 2`: the endpoints turn at the deletion, the clients
///    stop coming 1 s later (the endpoint change has propagated), and only then, after the
///    sleep, SIGTERM closes the listener: nothing is refused, nothing cut, no advice.
#[test]
fn a_pre_stop_sleep_covers_the_endpoint_propagation() -> Result<()> {
    k8s_test!();
    let _one = one_at_a_time();
    pre_stop_scenario(false)
}

/// Scenario 3, also checking `kubernetes.late_after_endpoints` against the clients: the
/// connections that arrived after the endpoints turned (during the preStop sleep) are the
/// traffic a preStop sleep exists to absorb, and the measure of the endpoint propagation delay.
#[test]
fn a_pre_stop_sleep_counts_the_traffic_after_the_endpoints_turned() -> Result<()> {
    k8s_test!();
    let _one = one_at_a_time();
    pre_stop_scenario(true)
}

fn pre_stop_scenario(check_late_after_endpoints: bool) -> Result<()> {
    let api = ApiServer::start()?;
    let (containerd, kubelet, mut agent) = node(&api)?;
    let mut pod = run_listening(
        &kubelet,
        app_pod(
            "covered",
            vec![app("close-listener").pre_stop(PreStop::Sleep(Duration::from_secs(2)))],
            10,
        ),
    )?;
    let addr = pod_addr(&pod.ip)?;
    Load::new(containerd.node_netns(), addr).wait_ready("/", Duration::from_secs(10))?;

    let knocker = Knocker::start(containerd.node_netns(), addr, Duration::from_millis(100))?;
    std::thread::sleep(Duration::from_millis(300));
    let stopper = knocker.stopper();
    let propagated = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        stopper.store(true, Ordering::Relaxed);
    });
    let deletion = pod.delete_with_grace(10)?;
    propagated
        .join()
        .map_err(|_| anyhow::anyhow!("the stopping thread panicked"))?;
    let attempts = knocker.finish()?;
    let report = pod_report(&mut agent, &pod)?;
    let c = only_container(&report)?;
    let stop_ns = ns(
        c.stop_signal_at.map(termscope::clock::text).as_deref(),
        "stop_signal_at",
    )?;
    print_attempts(&attempts, stop_ns)?;

    // Ground truth: every attempt was answered, all of them before SIGTERM; the hook slept 2 s.
    let stop = deletion.container("app")?;
    ensure!(stop.pre_stop_took >= Duration::from_secs(2), "{stop:?}");
    ensure!(stop.status.exit_code == 0, "{stop:?}");
    ensure!(attempts.len() >= 5, "{attempts:?}");
    ensure!(
        attempts.iter().all(|a| a.knock == Knock::Answered),
        "{attempts:?}"
    );
    for a in &attempts {
        ensure!(
            ms_after(a.ended, stop_ns)? < 0.0,
            "{a:?} ended after SIGTERM"
        );
        if let Some(x) = c.connections.iter().find(|x| x.remote.port() == a.port) {
            ensure!(x.verdict == Verdict::Completed && !x.accepted_late, "{x:?}");
        }
    }

    ensure!(report.outcome == Outcome::Graceful, "{:?}", report.outcome);
    ensure!(
        report.counts.refused == 0 && report.counts.cut == 0,
        "{:?}",
        report.counts
    );
    ensure!(report.flags.is_empty(), "{:?}", report.flags);
    let hook = c
        .kubernetes
        .as_deref()
        .and_then(|k| k.pre_stop.as_ref())
        .context("no pre_stop in the container's kubernetes section")?;
    ensure!(
        hook.kind == HookKind::Sleep && hook.sleep_seconds == Some(2),
        "{hook:?}"
    );
    let k = &report.kubernetes;
    ensure!(
        k.deletion_to_stop_signal_ms.is_some_and(|ms| ms >= 1900.0),
        "{k:?}"
    );
    ensure!(
        k.late_after_stop_signal.accepted == 0 && k.late_after_stop_signal.refused == 0,
        "{k:?}"
    );
    ensure!(
        !report
            .summary
            .iter()
            .any(|s| s.contains("preStop sleep of at least")),
        "{:?}",
        report.summary
    );
    if check_late_after_endpoints {
        // The endpoints turned (as the agent saw it) during the first attempts after the
        // deletion: every attempt that began after that arrived late, and none that ended
        // before it did.
        let turned = [&k.endpoints_not_ready_at, &k.endpoints_terminating_at]
            .into_iter()
            .filter_map(|t| t.as_deref().and_then(parse_rfc3339))
            .min()
            .context("no endpoints time")?;
        let mut began_after = 0;
        let mut ended_after = 0;
        for a in &attempts {
            began_after += usize::from(ms_after(a.started, turned)? > 0.0);
            ended_after += usize::from(ms_after(a.ended, turned)? > 0.0);
        }
        let late = k
            .late_after_endpoints
            .context("no late_after_endpoints although the endpoints turned")?;
        ensure!(began_after >= 5, "{attempts:?}");
        ensure!(
            (began_after..=ended_after).contains(&(late.accepted as usize)) && late.refused == 0,
            "late_after_endpoints {late:?}; the client made {began_after} to {ended_after} \
             connections after the endpoints turned"
        );
    }
    stop_agent(agent)
}

/// 4. The grace period runs out: the app handles SIGTERM by waiting for its 10 s request, the
///    grace period is 2 s, so SIGKILL ends it and the kernel closes the request's connection.
///    The pod belongs to a Deployment: the Event about the cut goes on the Deployment.
#[test]
fn grace_period_runs_out_and_sigkill_cuts() -> Result<()> {
    k8s_test!();
    let _one = one_at_a_time();
    let api = ApiServer::start()?;
    let (containerd, kubelet, mut agent) = node(&api)?;

    // Deployment web -> ReplicaSet web-<hash> -> pod web-<hash>-<suffix>, as the controllers
    // name them.
    let hash = "7d4b9c8f6d";
    let deployment = api.upsert(
        Res::Deployments,
        json!({"metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}}}),
    )?;
    let deployment_uid = deployment["metadata"]["uid"]
        .as_str()
        .context("the deployment has no uid")?
        .to_string();
    let rs_name = format!("web-{hash}");
    let rs = api.upsert(
        Res::ReplicaSets,
        json!({"metadata": {
            "name": rs_name, "namespace": "default",
            "labels": {"app": "web", "pod-template-hash": hash},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                 "uid": deployment_uid, "controller": true}],
        }}),
    )?;
    let rs_uid = rs["metadata"]["uid"]
        .as_str()
        .context("the replicaset has no uid")?
        .to_string();
    let pod_name = format!("web-{hash}-x2k4p");
    let mut pod = kubelet.run_pod(
        PodSpec::new(&pod_name, vec![app("drain")])
            .grace(2)
            .service("web")
            .label("app", "web")
            .label("pod-template-hash", hash),
    )?;
    api.update(Res::Pods, "default", &pod_name, |o| {
        o["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name, "uid": rs_uid,
            "controller": true, "blockOwnerDeletion": true,
        }]);
    })?;
    pod.wait_for_log("app", "listening", Duration::from_secs(20))?;
    let (load, _) = request_in_flight(containerd, &pod, "/slow?s=10")?;

    let deletion = pod.delete_with_grace(2)?;
    let seen = load.finish()?;
    let report = pod_report(&mut agent, &pod)?;
    let c = only_container(&report)?;
    show(c, &seen)?;

    // Ground truth: SIGKILL at the deadline (exit 137), the request never answered.
    let stop = deletion.container("app")?;
    ensure!(stop.status.exit_code == 137, "{stop:?}");
    ensure!(
        seen.len() == 1 && matches!(seen[0].truth, Truth::EofMidResponse | Truth::Reset),
        "{seen:?}"
    );
    check_verdicts(c, &seen, |_| Some(Verdict::ClosedByExit))?;

    ensure!(report.outcome == Outcome::Killed, "{:?}", report.outcome);
    for flag in [Flag::Killed, Flag::Cut] {
        ensure!(report.has_flag(flag), "{:?}", report.flags);
    }
    ensure!(report.counts.closed_by_exit == 1, "{:?}", report.counts);
    ensure!(
        report
            .summary
            .iter()
            .any(|s| s.contains("The grace period (2 s) ran out")),
        "{:?}",
        report.summary
    );
    ensure!(
        has_step(&report, StepKind::Sigkill, "[app] SIGKILL"),
        "{:#?}",
        steps(&report)
    );
    let k = &report.kubernetes;
    ensure!(k.grace_period_seconds == 2, "{k:?}");
    ensure!(k.grace_used_ratio.is_some_and(|r| r >= 0.9), "{k:?}");
    ensure!(
        report.workload == "web" && report.workload_kind == "Deployment",
        "{} {}",
        report.workload_kind,
        report.workload
    );

    // The Event, on the Deployment (with its uid, which `kubectl describe` matches on).
    let event = wait_for_cut_event(&api)?;
    println!("event: {event}");
    let involved = &event["involvedObject"];
    ensure!(
        involved["kind"] == "Deployment"
            && involved["name"] == "web"
            && involved["uid"] == deployment_uid.as_str(),
        "{event}"
    );
    ensure!(event["type"] == "Warning", "{event}");
    ensure!(
        event["related"]["kind"] == "Pod" && event["related"]["name"] == pod_name.as_str(),
        "{event}"
    );
    stop_agent(agent)
}

/// 5. nginx in a pod, with a keep-alive connection idle and two slow downloads in flight,
///    stopped with the image's stop signal: SIGTERM (nginx's fast shutdown) or SIGQUIT (its
///    graceful one).
fn nginx_scenario(quit: bool) -> Result<()> {
    let containerd = Containerd::shared()?;
    let image = if quit {
        images::import(
            &images::app_with_stop_signal(QUIT_IMAGE, Some("SIGQUIT"))?,
            containerd,
        )?;
        QUIT_IMAGE
    } else {
        termscope_tests::images::APP
    };
    let api = ApiServer::start()?;
    let (_, kubelet, mut agent) = node(&api)?;
    let dir = TempDir::new("k8s-nginx")?;
    nginx::write_config(&dir, "/ts", &format!("0.0.0.0:{PORT}"))?;
    let host_dir = dir.path.to_string_lossy().into_owned();
    let mut pod = kubelet.run_pod(
        PodSpec::new(
            "nginx",
            vec![
                ContainerSpec::new(
                    "nginx",
                    &[
                        "/usr/sbin/nginx",
                        "-p",
                        "/ts/",
                        "-e",
                        "/ts/error.log",
                        "-c",
                        "/ts/nginx.conf",
                    ],
                )
                .image(image)
                .mount(rw_mount(&host_dir, "/ts"))
                .port(PORT),
            ],
        )
        .grace(10)
        .service("nginx")
        .label("app", "nginx"),
    )?;
    let mut load = Load::new(containerd.node_netns(), pod_addr(&pod.ip)?);
    load.wait_ready("/index.html", Duration::from_secs(20))
        .with_context(|| {
            format!(
                "nginx's output: {}\nerror log: {}",
                pod.logs("nginx"),
                std::fs::read_to_string(Path::new(&host_dir).join("error.log")).unwrap_or_default()
            )
        })?;
    load.idle("/index.html")?;
    // Idle means quiet: nothing moved on it for a while before the deletion.
    std::thread::sleep(Duration::from_millis(2500));
    for _ in 0..2 {
        load.in_flight("/slow/big.bin", true)?;
    }

    let deletion = pod.delete_with_grace(10)?;
    let seen = load.finish()?;
    let report = pod_report(&mut agent, &pod)?;
    let c = only_container(&report)?;
    show(c, &seen)?;
    println!(
        "nginx error log:\n{}",
        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
    );
    let stop = deletion.container("nginx")?;
    ensure!(stop.status.exit_code == 0, "{stop:?}");
    let first = c.stop_signals.first().context("no stop signal")?;
    ensure!(
        first.signal == if quit { Signal::QUIT } else { Signal::TERM }
            && first.target.comm == "nginx",
        "{first:?}"
    );
    ensure!(
        report
            .timeline
            .iter()
            .any(|s| s.what == StepKind::ListenerClosed),
        "{:#?}",
        steps(&report)
    );
    if quit {
        // Graceful: the downloads finish; nginx closes the idle connection itself.
        for s in &seen {
            let want = if s.kind == Kind::Idle {
                Truth::EofIdle
            } else {
                Truth::Completed
            };
            ensure!(s.truth == want, "{s:?}");
        }
        check_verdicts(c, &seen, |_| Some(Verdict::Completed))?;
        ensure!(report.outcome == Outcome::Graceful, "{:?}", report.outcome);
        ensure!(report.counts.cut == 0, "{:?}", report.counts);
        ensure!(report.counts.completed == 3, "{:?}", report.counts);
        ensure!(report.flags.is_empty(), "{:?}", report.flags);
        ensure!(
            !report.summary.iter().any(|s| s.contains("fast shutdown")),
            "{:?}",
            report.summary
        );
    } else {
        // Fast shutdown: the workers exit at once, and the kernel closes what they held.
        for s in &seen {
            let ok = match s.kind {
                Kind::Idle => s.truth == Truth::EofIdle,
                _ => matches!(s.truth, Truth::EofMidResponse | Truth::Reset),
            };
            ensure!(ok, "{s:?}");
        }
        // The downloads were cut; the idle keep-alive connection lost nothing.
        check_verdicts(c, &seen, |s| {
            Some(match s.kind {
                Kind::Idle => Verdict::ClosedIdle,
                _ => Verdict::ClosedByExit,
            })
        })?;
        ensure!(report.outcome == Outcome::Cut, "{:?}", report.outcome);
        ensure!(report.has_flag(Flag::Cut), "{:?}", report.flags);
        ensure!(report.counts.closed_by_exit == 2, "{:?}", report.counts);
        ensure!(report.counts.closed_idle == 1, "{:?}", report.counts);
        ensure!(
            report
                .summary
                .iter()
                .any(|s| s.contains("nginx treats SIGTERM as a fast shutdown")
                    && s.contains("stop it with SIGQUIT")),
            "no SIGQUIT advice: {:?}",
            report.summary
        );
        let event = wait_for_cut_event(&api)?;
        ensure!(event["involvedObject"]["name"] == "nginx", "{event}");
    }
    stop_agent(agent)
}

#[test]
fn nginx_pod_stopped_with_sigterm_cuts_its_downloads() -> Result<()> {
    k8s_test!();
    let _one = one_at_a_time();
    nginx_scenario(false)
}

#[test]
fn nginx_pod_stopped_with_sigquit_finishes_its_downloads() -> Result<()> {
    k8s_test!();
    let _one = one_at_a_time();
    nginx_scenario(true)
}

/// A sidecar proxy: listens on PORT and relays each connection to 127.0.0.1:UPSTREAM (the
/// app, over the pod's loopback). Exits at once on SIGTERM (`os._exit`): the kernel closes
/// what it had open.
const PROXY: &str = r#"
import os, signal, socket, sys, threading
port, upstream = int(sys.argv[1]), int(sys.argv[2])
def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    try:
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass
def serve(c):
    try:
        u = socket.create_connection(("127.0.0.1", upstream))
    except OSError:
        c.close()
        return
    back = threading.Thread(target=pipe, args=(u, c), daemon=True)
    back.start()
    pipe(c, u)
    back.join()
    c.close()
    u.close()
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", port))
listener.listen(64)
print("listening", flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;
const PROXY_PORT: u16 = 15001;

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// 5. A two-container pod whose sidecar exits first: clients reach the app through a sidecar
///    proxy on :15001 (over the pod's loopback). On the deletion the sidecar exits at once,
///    cutting the request it relayed; the app drains that request for 4 s more. A client keeps
///    connecting to the sidecar's port throughout: the pod's network namespace refuses it
///    from the sidecar's exit until the sandbox is torn down, long after the sidecar's own
///    termination would have closed.
///
/// Ground truth, per connection: every refusal the client saw is in the sidecar's report
/// (even those while the app still drained), and nothing else is, but for a SYN the pod's
/// namespace refused during the sandbox's teardown whose reset was lost with the pod's veth; the relayed request is cut once (in the
/// sidecar's report), and the loopback connections between the containers are internal in
/// both reports, not cut.
#[test]
fn a_sidecar_that_exits_first_keeps_the_pods_refusals_and_loopback_is_counted_once() -> Result<()> {
    k8s_test!();
    let _one = one_at_a_time();
    let api = ApiServer::start()?;
    let (containerd, kubelet, mut agent) = node(&api)?;
    let sidecar = ContainerSpec::new(
        "sidecar",
        &[
            "/usr/bin/python3",
            "-u",
            "-c",
            PROXY,
            &PROXY_PORT.to_string(),
            &PORT.to_string(),
        ],
    )
    .port(PROXY_PORT);
    let mut pod = run_listening(&kubelet, app_pod("meshed", vec![app("drain"), sidecar], 10))?;
    pod.wait_for_log("sidecar", "listening", Duration::from_secs(20))?;
    let addr = SocketAddr::new(pod.ip.parse()?, PROXY_PORT);
    let mut load = Load::new(containerd.node_netns(), addr);
    load.wait_ready("/", Duration::from_secs(10))?;
    load.in_flight("/slow?s=4", false)?;
    pod.wait_for_log("app", "start ", Duration::from_secs(10))?;
    let knocker = Knocker::start(containerd.node_netns(), addr, Duration::from_millis(100))?;
    std::thread::sleep(Duration::from_millis(300));

    let deletion = pod.delete_with_grace(10)?;
    std::thread::sleep(Duration::from_millis(600));
    let attempts = knocker.finish()?;
    let seen = load.finish()?;
    let report = pod_report(&mut agent, &pod)?;
    let by_name = |name: &str| {
        report
            .containers
            .iter()
            .find(|c| c.subject.container == name)
            .with_context(|| format!("no report of container {name}"))
    };
    let (side, app_report) = (by_name("sidecar")?, by_name("app")?);
    let sidecar_exit_ns = u64::try_from(deletion.container("sidecar")?.status.finished_at)?;
    print_attempts(&attempts, sidecar_exit_ns)?;
    show(side, &seen)?;

    // Ground truth: the sidecar exited at once, the app drained its request and exited 0.
    ensure!(deletion.container("sidecar")?.status.exit_code == 0);
    ensure!(deletion.container("app")?.status.exit_code == 0);
    let app_exit_ns = u64::try_from(deletion.container("app")?.status.finished_at)?;
    ensure!(
        app_exit_ns > sidecar_exit_ns + 2_000_000_000,
        "the app did not outlive the sidecar by 2 s"
    );
    ensure!(
        seen.len() == 1 && matches!(seen[0].truth, Truth::EofMidResponse | Truth::Reset),
        "{seen:?}"
    );
    let refused: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.knock == Knock::Refused)
        .collect();
    // Some refusals came after the sidecar's own termination would have closed (1 s linger).
    let mut after_linger = 0;
    for a in &refused {
        after_linger += usize::from(ms_after(a.started, sidecar_exit_ns)? > 1_500.0);
    }
    ensure!(
        after_linger > 0,
        "no refusal later than 1.5 s after the sidecar's exit: the scenario tests nothing"
    );

    // Per connection: the client's relayed request is cut in the sidecar's report; every
    // refusal is there; the knocks that were reset or ended early are cut.
    check_verdicts(side, &seen, |_| Some(Verdict::ClosedByExit))?;
    let mut wrong = Vec::new();
    let mut cut_knocks = 0;
    // A SYN that reached the pod's namespace while the sandbox was being torn down (after the
    // last container exited) is refused there, but the reset can be lost with the pod's veth:
    // the client saw no answer, the kernel did send the reset.
    let mut lost_resets = 0;
    for a in &attempts {
        let got = side.connections.iter().find(|x| x.remote.port() == a.port);
        let ok = match &a.knock {
            Knock::Refused => got.is_some_and(|x| x.verdict == Verdict::Refused),
            Knock::Answered => got.is_none_or(|x| x.verdict == Verdict::Completed),
            Knock::Reset | Knock::Eof => {
                cut_knocks += 1;
                got.is_some_and(|x| x.verdict.is_cut())
            }
            Knock::NoAnswer(_) => match got {
                None => true,
                Some(x) => {
                    let in_teardown = x.verdict == Verdict::Refused
                        && x.closed_at
                            .map(termscope::clock::unix_ns)
                            .context("no closed_at")?
                            >= app_exit_ns;
                    lost_resets += usize::from(in_teardown);
                    in_teardown
                }
            },
        };
        if !ok {
            wrong.push(format!(
                "port {} saw {:?}: report has {got:?}",
                a.port, a.knock
            ));
        }
    }
    ensure!(
        wrong.is_empty(),
        "the sidecar's report disagrees with the client:\n{}",
        wrong.join("\n")
    );
    ensure!(
        side.counts.refused as usize == refused.len() + lost_resets,
        "the client saw {} refusals ({lost_resets} more resets lost in the teardown), the \
         sidecar's report counts {}",
        refused.len(),
        side.counts.refused
    );

    // Loopback between the containers: internal in both reports, never counted as cut.
    for c in [side, app_report] {
        for x in &c.connections {
            if is_loopback(&x.local) && is_loopback(&x.remote) {
                ensure!(
                    x.internal == Some(Internal::Loopback),
                    "[{}] a loopback connection between the pod's containers is not internal: \
                     {x:?}",
                    c.subject.container
                );
            }
        }
        ensure!(
            c.outbound_counts.cut == 0,
            "[{}] {:?}",
            c.subject.container,
            c.outbound_counts
        );
    }
    ensure!(
        app_report.internal_counts.completed
            + app_report.internal_counts.reset_by_peer
            + app_report.internal_counts.peer_closed_first
            + app_report.internal_counts.cut
            + app_report.internal_counts.closed_idle
            >= 1,
        "the relayed request's loopback leg is not in the app's report: {:?}",
        app_report.connections
    );
    ensure!(app_report.counts.cut == 0, "{:?}", app_report.counts);
    ensure!(
        app_report.outcome == Outcome::Graceful,
        "{:?}",
        app_report.summary
    );
    let expected_cut = 1 + refused.len() + lost_resets + cut_knocks;
    ensure!(
        report.counts.cut as usize == expected_cut,
        "the pod counts {} cut, the clients saw {expected_cut} (1 relayed request, {} refused, \
         {cut_knocks} reset)",
        report.counts.cut,
        refused.len()
    );
    ensure!(report.outcome == Outcome::Cut, "{:?}", report.outcome);
    stop_agent(agent)
}

/// 6. An exec preStop hook (`exec sleep 30`) longer than the 2 s grace period: kubelet's hook
///    times out at the grace period (the runtime kills it with SIGKILL), then the app gets
///    SIGTERM with kubelet's 2 s minimum and exits at once. The hook is not the workload: not the main process, not
///    a reason to call the container killed.
#[test]
fn an_exec_pre_stop_hook_longer_than_the_grace_period_is_not_the_workload() -> Result<()> {
    k8s_test!();
    let _one = one_at_a_time();
    let api = ApiServer::start()?;
    let (_, kubelet, mut agent) = node(&api)?;
    let mut pod = run_listening(
        &kubelet,
        app_pod(
            "hooked",
            vec![app("drain").pre_stop(PreStop::Exec(vec![
                "/bin/sh".into(),
                "-c".into(),
                "exec sleep 30".into(),
            ]))],
            2,
        ),
    )?;
    let app_pid_comm = "python3";

    let deletion = pod.delete_with_grace(2)?;
    let report = pod_report(&mut agent, &pod)?;
    let c = only_container(&report)?;

    // Ground truth: the hook ran out its 2 s (kubelet's timeout), the app took SIGTERM and
    // exited 0.
    let stop = deletion.container("app")?;
    println!("kubelet: {stop:?}");
    ensure!(
        stop.pre_stop_took >= Duration::from_secs(2),
        "the hook did not run out the grace period: {stop:?}"
    );
    ensure!(stop.status.exit_code == 0, "{stop:?}");

    // The hook's processes, as the report saw them start.
    let hook_pids: Vec<u32> = c
        .timeline
        .iter()
        .filter(|s| s.what == StepKind::Exec)
        .filter_map(|s| {
            let i = s.detail.find("(pid ")? + 5;
            s.detail[i..].split(')').next()?.parse().ok()
        })
        .collect();
    ensure!(
        !hook_pids.is_empty(),
        "the hook's exec is not in the timeline: {:#?}",
        steps(&report)
    );
    ensure!(
        c.subject.main.comm == app_pid_comm && !hook_pids.contains(&c.subject.main.pid),
        "the main process is {:?}, not the app",
        c.subject.main
    );
    for s in &c.stop_signals {
        ensure!(
            s.pre_stop_hook == (!s.internal && hook_pids.contains(&s.target.pid)),
            "{s:?}"
        );
    }
    ensure!(
        c.external_signals().next().map(|s| s.signal) == Some(Signal::TERM),
        "{:?}",
        c.stop_signals
    );
    ensure!(!c.has_flag(Flag::Killed), "{:?}", c.flags);
    ensure!(report.outcome == Outcome::Graceful, "{:?}", report.summary);
    ensure!(
        !report
            .summary
            .iter()
            .any(|s| s.contains("SIGKILL") || s.contains("Lengthen")),
        "{:?}",
        report.summary
    );
    // Grace used counts from the deletion, the hook included: it reached the grace period.
    let k = &report.kubernetes;
    ensure!(k.grace_period_seconds == 2, "{k:?}");
    ensure!(
        k.grace_used_ratio.is_some_and(|r| r >= 1.0),
        "grace used {:?} although the hook alone took the grace period",
        k.grace_used_ratio
    );
    ensure!(
        k.pre_stop
            .as_ref()
            .or(c.kubernetes.as_deref().and_then(|k| k.pre_stop.as_ref()))
            .is_some_and(|h| h.kind == HookKind::Exec),
        "{k:?}"
    );
    stop_agent(agent)
}

/// 7. A force delete (`--grace-period=0`) with a request in flight: SIGKILL at once, the
///    request is cut; the advice says a force delete did it, not a grace period to lengthen.
#[test]
fn a_force_delete_is_not_a_grace_period_to_lengthen() -> Result<()> {
    k8s_test!();
    let _one = one_at_a_time();
    let api = ApiServer::start()?;
    let (containerd, kubelet, mut agent) = node(&api)?;
    let mut pod = run_listening(&kubelet, app_pod("forced", vec![app("drain")], 30))?;
    let (load, _) = request_in_flight(containerd, &pod, "/slow?s=10")?;

    let deletion = pod.delete_with_grace(0)?;
    let seen = load.finish()?;
    let report = pod_report(&mut agent, &pod)?;
    let c = only_container(&report)?;
    show(c, &seen)?;

    // Ground truth: SIGKILL at once (exit 137), the request never answered.
    let stop = deletion.container("app")?;
    ensure!(stop.status.exit_code == 137, "{stop:?}");
    ensure!(
        stop.stop_took < Duration::from_secs(2),
        "no SIGKILL at once: {stop:?}"
    );
    ensure!(
        seen.len() == 1 && matches!(seen[0].truth, Truth::EofMidResponse | Truth::Reset),
        "{seen:?}"
    );
    check_verdicts(c, &seen, |_| Some(Verdict::ClosedByExit))?;
    ensure!(report.outcome == Outcome::Killed, "{:?}", report.outcome);
    ensure!(report.counts.cut == 1, "{:?}", report.counts);
    ensure!(
        c.external_signals().all(|s| s.signal == Signal::KILL),
        "{:?}",
        c.stop_signals
    );
    ensure!(
        report.kubernetes.grace_period_seconds == 0,
        "{:?}",
        report.kubernetes
    );
    ensure!(
        report
            .summary
            .iter()
            .any(|s| s.contains("force-deleted (grace period 0)")),
        "{:?}",
        report.summary
    );
    ensure!(
        !report
            .summary
            .iter()
            .any(|s| s.contains("Lengthen") || s.contains("ran out")),
        "{:?}",
        report.summary
    );
    stop_agent(agent)
}

/// 8. An httpGet preStop hook on the app's own port (`/quit?s=1`, a drain endpoint that ends
///    the process, as Envoy's `/quitquitquit`): the app exits while answering kubelet's hook
///    request, and the kernel closes it together with a client's request in flight. kubelet's
///    own hook connection is listed, not counted as a client cut; the client's is.
#[test]
fn kubelets_http_get_hook_request_is_not_a_client_cut() -> Result<()> {
    k8s_test!();
    let _one = one_at_a_time();
    let api = ApiServer::start()?;
    let (containerd, kubelet, mut agent) = node(&api)?;
    let mut pod = run_listening(
        &kubelet,
        app_pod(
            "quitter",
            vec![app("drain").pre_stop(PreStop::HttpGet {
                port: PORT,
                path: "/quit?s=1".into(),
            })],
            10,
        ),
    )?;
    let (load, client) = request_in_flight(containerd, &pod, "/slow?s=10")?;
    // The client's request began well before the deletion (kubelet's hook request is told by
    // when it came: from the deletion on).
    std::thread::sleep(Duration::from_millis(1500));

    let deletion = pod.delete_with_grace(10)?;
    let seen = load.finish()?;
    let report = pod_report(&mut agent, &pod)?;
    let c = only_container(&report)?;
    show(c, &seen)?;

    // Ground truth: the hook's request got no answer (the app ended while serving it), the
    // client's request was cut, the app exited 0 of its own.
    let stop = deletion.container("app")?;
    println!("kubelet: {stop:?}");
    ensure!(
        stop.pre_stop_error.is_some(),
        "the hook's request was answered: {stop:?}"
    );
    ensure!(stop.status.exit_code == 0, "{stop:?}");
    ensure!(
        seen.len() == 1 && matches!(seen[0].truth, Truth::EofMidResponse | Truth::Reset),
        "{seen:?}"
    );
    check_verdicts(c, &seen, |_| Some(Verdict::ClosedByExit))?;
    let hook: Vec<_> = c
        .connections
        .iter()
        .filter(|x| x.remote.port() != client && x.local.port() == PORT)
        .filter(|x| x.verdict.is_cut())
        .collect();
    ensure!(
        hook.len() == 1,
        "expected kubelet's hook request among the cut connections: {:?}",
        c.connections
    );
    ensure!(
        hook[0].internal == Some(Internal::PreStopHook),
        "kubelet's hook request is not told apart: {:?}",
        hook[0]
    );
    let client_conn = c
        .connections
        .iter()
        .find(|x| x.remote.port() == client)
        .context("the client's connection is not in the report")?;
    ensure!(client_conn.internal.is_none(), "{client_conn:?}");
    ensure!(report.counts.cut == 1, "{:?}", report.counts);
    ensure!(
        report.internal_counts.cut == 1,
        "{:?}",
        report.internal_counts
    );
    ensure!(report.outcome == Outcome::Cut, "{:?}", report.outcome);
    stop_agent(agent)
}
