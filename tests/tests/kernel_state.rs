//! The kernel side's state on the real kernel: nothing forgotten, no stop signal lost, losses
//! shown in the affected report only. Real processes in their own cgroups and network
//! namespaces; the agent pipeline in the test process.

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use termscope::{
    decode::TcpState,
    outputs::metrics::{Health, Metrics, MetricsConfig},
    probes::LoadOptions,
    terminations::report::{Direction, Flag, OpenedBy, Outcome, Signal, Verdict},
};
use termscope_common::{LiveConn, flags};
use termscope_tests::{Agent, NetNs, Proc, TestCgroup, kernel_test, python, scripts};

const PORT: u16 = 8080;

/// A server in its own cgroup and netns that accepts one connection and holds it.
fn holding_server(prefix: &str) -> Result<(TestCgroup, NetNs, Proc)> {
    let cg = TestCgroup::new(prefix)?;
    let ns = NetNs::new(prefix)?;
    let proc = hold_on(&cg, &ns, PORT)?;
    Ok((cg, ns, proc))
}

/// A server in `cg` and `ns`, listening on 127.0.0.1:`port`, that accepts one connection and
/// holds it.
fn hold_on(cg: &TestCgroup, ns: &NetNs, port: u16) -> Result<Proc> {
    let mut cmd = Command::new("python3");
    cmd.arg("-u").arg(scripts().join("tcp_server.py")).args([
        "4",
        "127.0.0.1",
        &port.to_string(),
        "hold",
    ]);
    let mut proc = Proc::spawn(&mut cmd, cg, Some(ns))?;
    proc.expect_line("listening")?;
    Ok(proc)
}

/// Connects to the holding server from its netns (from outside its cgroup) and waits until
/// the server has accepted.
fn connect(ns: &NetNs, server: &mut Proc) -> Result<TcpStream> {
    connect_to(ns, PORT, server)
}

/// [`connect`] to the holding server on `port`.
fn connect_to(ns: &NetNs, port: u16, server: &mut Proc) -> Result<TcpStream> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let stream = ns.enter(move || TcpStream::connect_timeout(&addr, Duration::from_secs(10)))??;
    server.expect_line("accepted")?;
    Ok(stream)
}

/// A container (`prefix`) in its own cgroup and netns that the agent watches explicitly
/// (`--watch-cgroup`), to make traffic in.
fn watched_noisy(agent: &mut Agent, prefix: &str) -> Result<(TestCgroup, NetNs)> {
    let cg = TestCgroup::new(prefix)?;
    let ns = NetNs::new(prefix)?;
    agent.pipeline.watch_explicit(cg.id)?;
    Ok((cg, ns))
}

/// A flood of TCP events in `cg` and `ns`: 300 loopback connections opened and closed at
/// once. Returns when it is done (the process, to keep until the test ends).
fn tcp_flood(cg: &TestCgroup, ns: &NetNs) -> Result<Proc> {
    let mut flood = Proc::spawn(
        &mut python(
            "import socket\n\
             ls = socket.socket()\n\
             ls.bind(('127.0.0.1', 9000))\n\
             ls.listen(512)\n\
             for i in range(300):\n\
             \x20   c = socket.create_connection(('127.0.0.1', 9000))\n\
             \x20   a, _ = ls.accept()\n\
             \x20   c.close()\n\
             \x20   a.close()\n\
             print('done', flush=True)\n",
        ),
        cg,
        Some(ns),
    )?;
    flood.expect_line("done")?;
    Ok(flood)
}

/// A process that sleeps until a signal ends it (no handler: the default action kills it).
fn sleeper(prefix: &str) -> Result<(TestCgroup, Proc)> {
    let cg = TestCgroup::new(prefix)?;
    let mut p = Proc::spawn(
        &mut python("import time\nprint('ready', flush=True)\ntime.sleep(120)"),
        &cg,
        None,
    )?;
    p.expect_line("ready")?;
    Ok((cg, p))
}

/// A connection established before the agent started, cut by the server's death after: it is
/// in the report, cut, inbound (learnt by the start-up walk of the kernel's sockets), with its
/// client's port. A connection out of the same container, also older than the agent, is
/// outbound.
#[test]
fn a_connection_older_than_the_agent_is_counted() -> Result<()> {
    kernel_test!();
    let (cg, ns, mut server) = holding_server("old")?;
    let client = connect(&ns, &mut server)?;
    let client_port = client.local_addr()?.port();

    // An outgoing connection of the same container, to a listener outside it.
    let peer = std::net::TcpListener::bind("127.0.0.1:0")?;
    let peer_port = peer.local_addr()?.port();
    let mut dialer = Proc::spawn(
        &mut python(&format!(
            "import socket, time\n\
             c = socket.create_connection(('127.0.0.1', {peer_port}))\n\
             print('connected', flush=True)\n\
             time.sleep(120)\n"
        )),
        &cg,
        None,
    )?;
    dialer.expect_line("connected")?;
    let (accepted, _) = peer.accept()?;

    let mut agent = Agent::start(Duration::from_secs(20))?;
    // The walk runs here; the container's connections are learnt when its watch begins.
    let walk = agent.pipeline.probes().preexisting.clone();
    assert!(walk.is_ok(), "start-up walk: {walk:?}");
    // Both peers are waiting for an answer (a request the container never read): what the
    // kill cuts, however long the connections were quiet before.
    (&client).write_all(b"request\n")?;
    (&accepted).write_all(b"request\n")?;
    agent.pump(Duration::from_millis(200), None)?;
    cg.signal_all(libc::SIGKILL)?;
    let report = agent.report_for(cg.id, Duration::from_secs(15))?;
    println!("{}", serde_json::to_string_pretty(&report)?);

    let out = report
        .connections
        .iter()
        .find(|c| c.remote.port() == peer_port)
        .context("the outgoing connection is not in the report")?;
    assert_eq!(out.direction, Direction::Outbound, "{out:?}");
    assert_eq!(out.verdict, Verdict::ClosedByExit, "{out:?}");
    let conn = report
        .connections
        .iter()
        .find(|c| c.remote.port() == client_port)
        .with_context(|| format!("client port {client_port} not in the report"))?;
    assert_eq!(conn.verdict, Verdict::ClosedByExit, "{conn:?}");
    assert_eq!(conn.direction, Direction::Inbound, "{conn:?}");
    // The served connection counts for the outcome; the container's own upstream apart.
    assert_eq!(report.counts.cut, 1);
    assert_eq!(report.outbound_counts.cut, 1);
    assert_eq!(report.outcome, Outcome::Killed);
    assert!(report.incomplete.is_none(), "{:?}", report.incomplete);
    drop((client, accepted));
    Ok(())
}

/// The control ring is full (a watched container execs in a loop while nobody reads) when a
/// stop signal comes for another container: its event is lost, but the kernel watches that
/// container, and the agent opens its termination from the kernel's watch. The report says it
/// is incomplete, and why.
#[test]
fn a_lost_stop_signal_is_reported_from_the_kernel_watch() -> Result<()> {
    kernel_test!();
    let opts = LoadOptions {
        control_ring_bytes: 4096,
        ..LoadOptions::default()
    };
    let mut agent = Agent::start_with(&opts, Duration::from_secs(20))?;
    let noisy = TestCgroup::new("noisy")?;
    agent.pipeline.watch_explicit(noisy.id)?;
    let (target, mut sleeper) = sleeper("lostsig")?;

    // 200 execs and exits in a watched cgroup: far more than 4 KiB of control events.
    let mut storm = Proc::spawn(
        Command::new("sh").args(["-c", "for i in $(seq 200); do /bin/true; done; echo done"]),
        &noisy,
        None,
    )?;
    storm.expect_line("done")?;
    sleeper.signal(libc::SIGTERM)?;
    sleeper.child.wait()?;
    let counters = agent.pipeline.probes().counters()?;
    ensure!(
        counters.control_lost > 0,
        "the control ring never filled: {counters:?}"
    );

    let report = agent.report_for(target.id, Duration::from_secs(15))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    assert_eq!(report.opened_by, OpenedBy::KernelWatch);
    assert!(report.has_flag(Flag::Incomplete), "{:?}", report.flags);
    let incomplete = report.incomplete.context("no `incomplete`")?;
    assert!(incomplete.stop_signal_missed);
    assert!(incomplete.events_lost >= 1, "{incomplete:?}");
    assert_eq!(report.subject.cgroup_path, target.path);
    Ok(())
}

/// A flood of TCP events from a watched container fills the TCP ring — and the kernel's
/// records of watched connections (`KEPT_CONNS`, made tiny here), which would otherwise keep
/// what the ring cannot take — while nobody reads. Two other containers are stopped
/// meanwhile: one without connections, one holding a connection whose close falls into the
/// full ring and finds no room in the records either. Both are reported (the stop signals have
/// their own ring); only the second is `incomplete`, with the count of its own lost events.
#[test]
fn a_tcp_flood_elsewhere_loses_no_stop_and_flags_only_the_affected_report() -> Result<()> {
    kernel_test!();
    let opts = LoadOptions {
        ring_buffer_bytes: 4096,
        max_kept_connections: 16,
        ..LoadOptions::default()
    };
    let mut agent = Agent::start_with(&opts, Duration::from_secs(20))?;
    let (noisy, noisy_ns) = watched_noisy(&mut agent, "flood")?;
    let (quiet, mut quiet_proc) = sleeper("quiet")?;
    let (holder, holder_ns, mut holder_proc) = holding_server("holder")?;
    let client = connect(&holder_ns, &mut holder_proc)?;
    agent.pump(Duration::from_millis(300), None)?;

    let _flood = tcp_flood(&noisy, &noisy_ns)?;
    quiet_proc.signal(libc::SIGKILL)?;
    holder_proc.signal(libc::SIGKILL)?;
    quiet_proc.child.wait()?;
    holder_proc.child.wait()?;
    let counters = agent.pipeline.probes().counters()?;
    ensure!(
        counters.ringbuf_lost > 0 && counters.kept_map_failed > 0,
        "the TCP ring and the records never filled: {counters:?}"
    );
    assert_eq!(counters.control_lost, 0);

    let quiet_report = agent.report_for(quiet.id, Duration::from_secs(15))?;
    let holder_report = agent.report_for(holder.id, Duration::from_secs(15))?;
    println!("{}", serde_json::to_string_pretty(&holder_report)?);
    assert_eq!(quiet_report.opened_by, OpenedBy::StopSignal);
    assert!(
        quiet_report.incomplete.is_none(),
        "{:?}",
        quiet_report.incomplete
    );
    assert_eq!(holder_report.opened_by, OpenedBy::StopSignal);
    let incomplete = holder_report
        .incomplete
        .context("the holder's close was lost, but its report is not incomplete")?;
    assert!(incomplete.events_lost >= 1, "{incomplete:?}");
    assert!(!incomplete.stop_signal_missed);
    // The failed writes and the losses are in the metrics too.
    let text = health_metrics(&agent)?;
    assert!(
        metric_sum(&text, "termscope_kept_map_failures_total") > 0.0,
        "{text}"
    );
    assert!(
        metric_sum(&text, "termscope_events_lost_total") > 0.0,
        "{text}"
    );
    // The runs the kernel skipped (a run nested in another on one CPU, which a flood makes
    // likelier): counted by the kernel from 5.11 (before, `termscope doctor` says they are
    // not), for every program, and exported.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let counted = termscope::doctor::kernel_version(release.trim()).is_some_and(|v| v >= (5, 11));
    let missed = agent.pipeline.probes().runs_missed();
    println!("runs the kernel skipped: {missed:?}");
    if counted {
        ensure!(
            missed
                .iter()
                .any(|(p, _)| p.starts_with("inet_sock_set_state")),
            "no count for the hot probe on Linux {release}: {missed:?}"
        );
        ensure!(
            text.contains("termscope_kernel_runs_missed_total{program=\"inet_sock_set_state"),
            "{text}"
        );
    }
    drop(client);
    Ok(())
}

/// The agent-health metrics as `termscope agent` exposes them on `/metrics` (the same
/// `Metrics::set_health` its health tick calls), from this agent's kernel counters.
fn health_metrics(agent: &Agent) -> Result<String> {
    let metrics = Metrics::new(MetricsConfig::default())?;
    metrics.set_health(&Health {
        kernel: Some(agent.pipeline.probes().counters()?),
        kept_records: agent.pipeline.kept_stats(),
        runs_missed: agent.pipeline.probes().runs_missed(),
        ..Health::default()
    });
    Ok(metrics.render()?)
}

/// The same flood with the records at their default size: the TCP ring is full while nobody
/// reads, and the connections of a container killed meanwhile close into it. Their events are
/// not sent (not lost: counted as left to the records), and the report still has each of them,
/// closed by the exit, with nothing `incomplete` — from what the kernel kept of them alone.
#[test]
fn closes_into_a_full_tcp_ring_are_kept_by_the_kernel() -> Result<()> {
    kernel_test!();
    // Every state change streamed (the agent's own setting sends none of these through the
    // ring, so a flood of them cannot fill it).
    let opts = LoadOptions {
        ring_buffer_bytes: 4096,
        stream_states: true,
        ..LoadOptions::default()
    };
    let mut agent = Agent::start_with(&opts, Duration::from_secs(20))?;
    let (noisy, noisy_ns) = watched_noisy(&mut agent, "keptflood")?;
    let (holder, holder_ns, mut holder_proc) = holding_server("kept")?;
    let client = connect(&holder_ns, &mut holder_proc)?;
    let client_port = client.local_addr()?.port();
    agent.pump(Duration::from_millis(300), None)?;
    let before = agent.pipeline.probes().counters()?;

    let _flood = tcp_flood(&noisy, &noisy_ns)?;
    holder_proc.signal(libc::SIGKILL)?;
    holder_proc.child.wait()?;
    let counters = agent.pipeline.probes().counters()?;
    ensure!(
        counters.left_to_kept > before.left_to_kept,
        "the TCP ring never filled: {counters:?}"
    );
    assert_eq!(counters.ringbuf_lost, 0, "{counters:?}");
    assert_eq!(counters.kept_map_failed, 0, "{counters:?}");

    let report = agent.report_for(holder.id, Duration::from_secs(15))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    // The close never came through the ring...
    let through_ring = agent.seen.iter().any(|e| {
        matches!(e, termscope::decode::Event::TcpState(t)
            if t.cgroup_id == holder.id && t.addrs.remote.port() == client_port
                && t.old_state == TcpState::Established)
    });
    assert!(
        !through_ring,
        "the close went through the ring: the test did not fill it"
    );
    // ...and the report has it, with its verdict, from the kernel's record.
    let conn = report
        .connections
        .iter()
        .find(|c| c.remote.port() == client_port)
        .with_context(|| format!("client port {client_port} not in the report"))?;
    assert_eq!(conn.direction, Direction::Inbound, "{conn:?}");
    assert_eq!(conn.verdict, Verdict::ClosedByExit, "{conn:?}");
    assert!(conn.closed_by.is_some(), "{conn:?}");
    assert_eq!(report.counts.closed_by_exit, 1);
    assert_eq!(report.outcome, Outcome::Killed);
    assert!(report.incomplete.is_none(), "{:?}", report.incomplete);
    assert!(agent.pipeline.kept_stats().taken >= 1);
    // What the kernel kept, what it left to the records and what the agent took: counted.
    let text = health_metrics(&agent)?;
    for name in [
        "termscope_kept_records_written_total",
        "termscope_events_left_to_kept_total",
        "termscope_kept_records_taken_total",
    ] {
        assert!(metric_sum(&text, name) >= 1.0, "{name}:\n{text}");
    }
    assert_eq!(
        metric_sum(&text, "termscope_kept_map_failures_total"),
        0.0,
        "{text}"
    );
    drop(client);
    Ok(())
}

/// The runtime removes the cgroup right after the last exit (runc does within milliseconds):
/// the report still names the container (resolved when the stop signal arrived), and comes
/// after the linger, not as `survived` after the survive timeout.
#[test]
fn the_cgroup_removed_right_after_the_last_exit() -> Result<()> {
    kernel_test!();
    let mut agent = Agent::start(Duration::from_secs(60))?;
    let (cg, ns, mut server) = holding_server("gone")?;
    let client = connect(&ns, &mut server)?;
    agent.pump(Duration::from_millis(200), None)?;
    server.signal(libc::SIGKILL)?;
    // The agent reads the stop signal as it comes, as it does running.
    agent.pump(Duration::from_millis(200), None)?;
    server.child.wait()?;
    std::fs::remove_dir(&cg.dir).context("removing the cgroup")?;
    let report = agent.report_for(cg.id, Duration::from_secs(10))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    assert_eq!(report.subject.cgroup_path, cg.path);
    assert_eq!(report.outcome, Outcome::Killed);
    assert!(!report.has_flag(Flag::Survived), "{:?}", report.flags);
    assert_eq!(report.counts.closed_by_exit, 1);
    drop(client);
    Ok(())
}

/// A `--watch-cgroup` watch outlives a reload signal: the service takes SIGHUP and reloads
/// (no exit, nothing cut: not a termination, no report), and the kernel still sends the
/// cgroup's connections to userspace afterwards.
#[test]
fn a_reload_signal_keeps_an_explicit_watch() -> Result<()> {
    kernel_test!();
    let mut agent = Agent::start(Duration::from_secs(2))?;
    let peer = std::net::TcpListener::bind("127.0.0.1:0")?;
    let peer_port = peer.local_addr()?.port();
    let cg = TestCgroup::new("reload")?;
    let mut service = Proc::spawn(
        &mut python(&format!(
            "import signal, socket, time\n\
             go = []\n\
             signal.signal(signal.SIGHUP, lambda *_: print('reloaded', flush=True))\n\
             signal.signal(signal.SIGCONT, lambda *_: go.append(1))\n\
             print('ready', flush=True)\n\
             while not go:\n\
             \x20   signal.pause()\n\
             c = socket.create_connection(('127.0.0.1', {peer_port}))\n\
             print('connected', flush=True)\n\
             time.sleep(120)\n"
        )),
        &cg,
        None,
    )?;
    service.expect_line("ready")?;
    agent.pipeline.watch_explicit(cg.id)?;
    agent.pump(Duration::from_millis(300), None)?;

    service.signal(libc::SIGHUP)?;
    service.expect_line("reloaded")?;
    // The reload opens a termination, which ends (only a reload) after the survive timeout.
    let mut opened = false;
    for _ in 0..50 {
        agent.pump(Duration::from_millis(200), None)?;
        opened |= agent.pipeline.open_terminations() > 0;
        if opened && agent.pipeline.open_terminations() == 0 {
            break;
        }
    }
    ensure!(opened, "the reload signal opened no termination");
    ensure!(
        agent.pipeline.open_terminations() == 0,
        "the reload's termination never ended"
    );
    assert!(
        agent.reports.iter().all(|r| r.subject.cgroup_id != cg.id),
        "a reload is not a termination: {:?}",
        agent.reports
    );
    assert!(
        agent.pipeline.probes_mut().is_watched(cg.id)?,
        "the configured watch is gone after the reload"
    );

    // Still watched in fact: the kernel keeps a record of the cgroup's next connection for
    // userspace (taken here, before the pipeline's next take).
    service.signal(libc::SIGCONT)?;
    service.expect_line("connected")?;
    let (_accepted, _) = peer.accept()?;
    let mut kept = false;
    agent.pipeline.probes().take_kept(|rec| {
        kept |= rec.conn.cgroup_id == cg.id && rec.conn.tuple.remote_port == peer_port;
    })?;
    assert!(
        kept,
        "no record of the cgroup's new connection:\n{}",
        agent.events_of(cg.id)?
    );
    Ok(())
}

/// The sum of a metric's samples in Prometheus' text format.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A container with child cgroups: its processes live in two cgroups below its own
/// (`.../cri-containerd-<id>.scope/a` and `/b`, as a container making its own cgroups, or a
/// systemd-style layout), each holding a client's connection. The runtime SIGKILLs every
/// process: exactly one report, the container's, with both connections, both exits and both
/// signals; the metrics count one termination and two cut connections.
#[test]
fn a_container_with_child_cgroups() -> Result<()> {
    kernel_test!();
    let mut agent = Agent::start(Duration::from_secs(20))?;
    let container = TestCgroup::container("kids")?;
    let child_a = container.child("a")?;
    let child_b = container.child("b")?;
    let ns = NetNs::new("kids")?;
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for (child, port) in [(&child_a, 8080u16), (&child_b, 8081)] {
        let mut server = hold_on(child, &ns, port)?;
        clients.push(connect_to(&ns, port, &mut server)?);
        servers.push(server);
    }
    agent.pump(Duration::from_millis(200), None)?;
    // The runtime kills every process of the container (as `runc kill --all` does).
    child_a.signal_all(libc::SIGKILL)?;
    child_b.signal_all(libc::SIGKILL)?;
    for s in &mut servers {
        s.child.wait()?;
    }
    let report = agent.report_for(container.id, Duration::from_secs(15))?;
    // Anything else about this container would come within the linger.
    agent.pump(Duration::from_secs(2), None)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    let ours: Vec<_> = agent
        .reports
        .iter()
        .filter(|r| [container.id, child_a.id, child_b.id].contains(&r.subject.cgroup_id))
        .collect();
    ensure!(
        ours.len() == 1,
        "{} reports for one container: {:?}",
        ours.len(),
        ours.iter()
            .map(|r| r.subject.cgroup_path.as_str())
            .collect::<Vec<_>>()
    );
    assert_eq!(report.subject.cgroup_path, container.path);
    assert!(
        report.subject.container_id.is_some(),
        "{:?}",
        report.subject
    );
    for client in &clients {
        let port = client.local_addr()?.port();
        let c = report
            .connections
            .iter()
            .find(|c| c.remote.port() == port)
            .with_context(|| format!("client port {port} not in the report"))?;
        assert_eq!(c.verdict, Verdict::ClosedByExit, "{c:?}");
    }
    assert_eq!(report.connections.len(), 2, "{:?}", report.connections);
    assert_eq!(report.counts.closed_by_exit, 2, "{:?}", report.counts);
    assert_eq!(report.counts.cut, 2, "{:?}", report.counts);
    assert_eq!(report.exits.len(), 2, "{:?}", report.exits);
    assert_eq!(
        report
            .stop_signals
            .iter()
            .filter(|s| s.signal == Signal::KILL && !s.internal)
            .count(),
        2,
        "{:?}",
        report.stop_signals
    );
    assert_eq!(report.outcome, Outcome::Killed);
    assert!(report.incomplete.is_none(), "{:?}", report.incomplete);

    let metrics = Metrics::new(MetricsConfig::default())?;
    for r in &ours {
        metrics.observe(r);
    }
    let text = metrics.render()?;
    assert_eq!(
        metric_sum(&text, "termscope_terminations_total"),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "termscope_connections_cut_total"),
        2.0,
        "{text}"
    );
    // Nothing of the container is left watched.
    for id in [container.id, child_a.id, child_b.id] {
        assert!(
            !agent.pipeline.probes_mut().is_watched(id)?,
            "cgroup {id} is still watched"
        );
    }
    drop(clients);
    Ok(())
}

/// The kernel skipped runs of the TCP probe (a run nested in another on one CPU): one was a
/// connection's CLOSE — its entry stays, stood in for here by an entry of a socket that does
/// not exist — and one a connection's opening — no entry, stood in for by removing a real
/// connection's. The walk the agent then makes drops the first and learns the second, with
/// its cgroup and direction.
#[test]
fn a_walk_after_skipped_runs_drops_the_unseen_close_and_learns_the_unseen_open() -> Result<()> {
    kernel_test!();
    let (cg, ns, mut server) = holding_server("sweep")?;
    let mut agent = Agent::start(Duration::from_secs(20))?;
    // Watched: the kernel keeps its connections (as for a container that is stopping).
    agent.pipeline.watch_explicit(cg.id)?;
    let client = connect(&ns, &mut server)?;
    let client_port = client.local_addr()?.port();
    agent.pump(Duration::from_millis(100), None)?;
    let probes = agent.pipeline.probes_mut();
    let (sk, conn) = probes
        .live_connections()?
        .into_iter()
        .find(|(_, c)| c.cgroup_id == cg.id && c.tuple.remote_port == client_port)
        .context("the accepted connection is not in LIVE_CONNS")?;
    ensure!(conn.flags & flags::INBOUND != 0, "{conn:?}");
    // No socket starts 8 bytes into another.
    let ghost_sk = sk + 8;
    let ghost = LiveConn {
        conn_id: conn.conn_id ^ (1 << 47),
        ..conn
    };
    probes.put_live_connection(ghost_sk, ghost)?;
    probes.forget_live_connection(sk)?;

    let dropped = probes
        .sweep_live_connections()
        .map_err(anyhow::Error::msg)?;
    let live = probes.live_connections()?;
    ensure!(dropped >= 1, "nothing dropped");
    ensure!(
        !live.iter().any(|(k, _)| *k == ghost_sk),
        "the entry of the socket that is gone is still there"
    );
    let (_, learnt) = live
        .iter()
        .find(|(k, _)| *k == sk)
        .context("the connection whose opening was skipped was not learnt")?;
    ensure!(learnt.cgroup_id == cg.id, "{learnt:?}");
    ensure!(learnt.tuple.remote_port == client_port, "{learnt:?}");
    ensure!(
        learnt.flags & flags::INBOUND != 0 && learnt.flags & flags::PREEXISTING != 0,
        "{learnt:?}"
    );
    drop(client);
    Ok(())
}
