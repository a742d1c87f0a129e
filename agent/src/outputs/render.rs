//! Termination reports as text for a terminal (`termscope report`, `termscope watch`).
//! Pure: report in, text out. What comes from containers (process names, paths, labels) can
//! hold terminal escape sequences: [`terminal_safe`] shows them escaped, and the CLI passes
//! everything it prints through it.

use std::{borrow::Cow, fmt::Write as _};

use crate::terminations::{
    flag::{self, Flag},
    kube::PodTerminationReport,
    report::{Connection, Direction, Step, TerminationReport, Verdict},
};

/// `text` with every control character but the newline (C0, DEL, C1: escape sequences,
/// carriage returns, backspaces) and every bidirectional-override character shown escaped
/// (`\u{1b}`), so that nothing a container named itself can move the cursor, recolour,
/// retitle or rewrite the terminal.
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One line per report (the list view of `termscope report`): when it began, the outcome,
/// the connections cut, who, and the id to ask for the full view with.
pub fn list_line(r: &TerminationReport) -> String {
    let s = &r.subject;
    let who = match (&s.pod, s.namespace.is_empty()) {
        (Some(pod), false) if !s.container.is_empty() => {
            format!("{}/{pod} {}", s.namespace, s.container)
        }
        (Some(pod), false) => format!("{}/{pod}", s.namespace),
        _ => s.label.clone(),
    };
    let mut line = format!(
        "{}  {:<10}  {:>4}  {}  {}",
        crate::clock::text(r.started_at),
        r.outcome.as_str(),
        r.counts.cut,
        r.id,
        who
    );
    if !r.flags.is_empty() {
        let _ = write!(line, "  [{}]", flag::joined(&r.flags));
    }
    line
}

/// One line per pod report.
pub fn pod_list_line(p: &PodTerminationReport) -> String {
    let start = p
        .timeline
        .first()
        .map_or_else(|| "-".to_string(), |s| crate::clock::text(s.at));
    let mut line = format!(
        "{start}  {:<10}  {:>4}  {}  pod {}/{} ({} container(s))",
        p.outcome.as_str(),
        p.counts.cut,
        p.id,
        p.namespace,
        p.pod,
        p.containers.len()
    );
    if !p.flags.is_empty() {
        let _ = write!(line, "  [{}]", flag::joined(&p.flags));
    }
    line
}

/// The header of the list view.
/// (the columns of [`list_line`] and [`pod_list_line`]: a 27-character time, the outcome in
/// 10, the connections cut in 4).
pub const LIST_HEADER: &str = "started_at                   outcome      cut  id  who";

/// Summary sentences are wrapped at this width.
const WIDTH: usize = 100;

/// One report as a readable block: a header line (time, subject, outcome, flags), the
/// subject, the summary sentences, the timeline, the connections with their verdicts, and the
/// counts. Ends with a newline.
pub fn report(r: &TerminationReport) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_report(&mut out, r);
    out
}

/// Several reports, separated by blank lines.
pub fn reports<'a>(rs: impl IntoIterator<Item = &'a TerminationReport>) -> String {
    rs.into_iter().map(report).collect::<Vec<_>>().join("\n")
}

/// A pod's termination (Kubernetes): header, Kubernetes facts, summary, the pod's timeline,
/// then each container's report.
pub fn pod_report(p: &PodTerminationReport) -> String {
    let mut out = String::new();
    let _ = write_pod_report(&mut out, p);
    out
}

fn write_pod_report(out: &mut String, p: &PodTerminationReport) -> std::fmt::Result {
    let k = &p.kubernetes;
    let start = p
        .timeline
        .first()
        .map_or_else(|| "-".to_string(), |s| crate::clock::text(s.at));
    write!(
        out,
        "{start}  pod {}/{}  {}",
        p.namespace,
        p.pod,
        p.outcome.as_str()
    )?;
    if !p.flags.is_empty() {
        write!(out, "  [{}]", flag::joined(&p.flags))?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "  {} {}, grace period {} s, node {}, id {}",
        p.workload_kind,
        p.workload,
        k.grace_period_seconds,
        if p.node.is_empty() { "-" } else { &p.node },
        p.id
    )?;
    let mut facts = Vec::new();
    if let Some(ms) = k.deletion_to_stop_signal_ms {
        facts.push(format!("deletion to stop signal {}", duration(ms)));
    }
    if let Some(r) = k.grace_used_ratio {
        facts.push(format!("{:.0}% of the grace period used", r * 100.0));
    }
    let late = k.late_after_stop_signal;
    if late.accepted + late.refused > 0 {
        facts.push(format!(
            "after the stop signal: {} accepted, {} refused, the last {}",
            late.accepted,
            late.refused,
            late.max_delay_ms.map_or_else(|| "-".into(), duration)
        ));
    }
    if let Some(e) = k.late_after_endpoints
        && e.accepted + e.refused > 0
    {
        facts.push(format!(
            "after the endpoints turned: {} accepted, {} refused, the last {}",
            e.accepted,
            e.refused,
            e.max_delay_ms.map_or_else(|| "-".into(), duration)
        ));
    }
    if !facts.is_empty() {
        writeln!(out, "  {}", facts.join("; "))?;
    }
    if !p.summary.is_empty() {
        writeln!(out)?;
        for sentence in &p.summary {
            out.push_str(&wrap(sentence, "  - ", "    ", WIDTH));
        }
    }
    if !p.timeline.is_empty() {
        writeln!(out)?;
        writeln!(out, "  pod timeline")?;
        timeline(out, &p.timeline)?;
    }
    for c in &p.containers {
        writeln!(out)?;
        writeln!(out, "  container {}:", c.subject.container)?;
        for line in report(c).lines() {
            writeln!(out, "    {line}")?;
        }
    }
    Ok(())
}

/// A timeline as a table: t_ms, what, detail.
fn timeline(out: &mut String, steps: &[Step]) -> std::fmt::Result {
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|step| {
            vec![
                format!("{:.1}", step.t_ms),
                step.what.to_string(),
                step.detail.clone(),
            ]
        })
        .collect();
    table(
        out,
        &["t_ms", "what", "detail"],
        &[true, false, false],
        &rows,
    )
}

fn write_report(out: &mut String, r: &TerminationReport) -> std::fmt::Result {
    let s = &r.subject;
    write!(
        out,
        "{}  {}  {}",
        crate::clock::text(r.started_at),
        s.label,
        r.outcome.as_str()
    )?;
    if !r.flags.is_empty() {
        write!(out, "  [{}]", flag::joined(&r.flags))?;
    }
    writeln!(out)?;

    let mut who = Vec::new();
    if !s.namespace.is_empty() {
        who.push(format!("namespace {}", s.namespace));
    }
    if !s.workload.is_empty() {
        who.push(format!("workload {}", s.workload));
    }
    if !s.container.is_empty() {
        who.push(format!("container {}", s.container));
    }
    if let Some(pod) = &s.pod_uid {
        who.push(format!("pod {pod}"));
    }
    who.push(format!("main {} (pid {})", s.main.comm, s.main.pid));
    writeln!(out, "  {}", who.join(", "))?;
    let shutdown = if r.has_flag(Flag::Survived) {
        format!(
            "still running {} after the stop signal",
            duration(r.shutdown_ms)
        )
    } else {
        format!("shutdown {}", duration(r.shutdown_ms))
    };
    writeln!(
        out,
        "  {shutdown}, ended {}, node {}, cgroup {}, id {}",
        crate::clock::text(r.ended_at),
        if r.node.is_empty() { "-" } else { &r.node },
        if s.cgroup_path.is_empty() {
            "-"
        } else {
            &s.cgroup_path
        },
        r.id
    )?;

    if !r.summary.is_empty() {
        writeln!(out)?;
        for sentence in &r.summary {
            out.push_str(&wrap(sentence, "  - ", "    ", WIDTH));
        }
    }

    if !r.timeline.is_empty() {
        writeln!(out)?;
        writeln!(out, "  timeline")?;
        timeline(out, &r.timeline)?;
    }

    writeln!(out)?;
    if r.connections.is_empty() {
        writeln!(out, "  connections: none")?;
    } else {
        writeln!(out, "  connections")?;
        let rows: Vec<Vec<String>> = r.connections.iter().map(connection_row).collect();
        table(
            out,
            &["local", "remote", "direction", "verdict", "delay", "reason"],
            &[false, false, false, false, true, false],
            &rows,
        )?;
        if r.connections_omitted > 0 {
            writeln!(
                out,
                "    ... and {} more not listed (counted below)",
                r.connections_omitted
            )?;
        }
    }

    let c = &r.counts;
    writeln!(
        out,
        "  counts: {} cut ({} reset by app, {} closed by exit, {}{} refused), {} completed, \
         {} reset by peer, {} open, {} accepted after stop",
        c.cut,
        c.reset_by_app,
        c.closed_by_exit,
        unanswered(c.closed_unanswered, "", ", "),
        c.refused,
        c.completed,
        c.reset_by_peer,
        c.open,
        c.accepted_late
    )?;
    if c.closed_idle + c.peer_closed_first > 0 {
        writeln!(
            out,
            "  not cut: {} idle closed between requests, {} closed after the client's goodbye",
            c.closed_idle, c.peer_closed_first
        )?;
    }
    let o = &r.outbound_counts;
    if o != &Default::default() {
        writeln!(
            out,
            "  outbound (its own upstreams): {} cut ({} reset by app, {} closed by exit{}), {} \
             idle closed, {} completed, {} reset by peer, {} open",
            o.cut,
            o.reset_by_app,
            o.closed_by_exit,
            unanswered(o.closed_unanswered, ", ", ""),
            o.closed_idle,
            o.completed,
            o.reset_by_peer,
            o.open
        )?;
    }
    Ok(())
}

/// "N closed unanswered" between `before` and `after`, or nothing when there were none: the
/// counts lines of reports without such closes read as before.
fn unanswered(n: u32, before: &str, after: &str) -> String {
    if n == 0 {
        String::new()
    } else {
        format!("{before}{n} closed unanswered{after}")
    }
}

fn connection_row(c: &Connection) -> Vec<String> {
    let mut verdict = c.verdict.as_str().to_string();
    if c.accepted_late && c.verdict != Verdict::Refused {
        verdict.push_str(" (late)");
    }
    let reason = match (&c.closed_by, &c.reset_reason) {
        (Some(p), _) => format!("{} (pid {}) exited", p.comm, p.pid),
        (None, Some(reason)) => reason.clone(),
        (None, None) => "-".into(),
    };
    vec![
        c.local.to_string(),
        c.remote.to_string(),
        match c.direction {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
            Direction::Unknown => "-",
        }
        .into(),
        verdict,
        c.delay_ms.map_or_else(|| "-".into(), duration),
        reason,
    ]
}

/// `0.051 ms`, `250.0 ms`, `10.0 s`.
fn duration(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.3} ms")
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

/// A table indented by four spaces; `right[i]` right-aligns column `i`. The last column is
/// not padded.
fn table(
    out: &mut String,
    header: &[&str],
    right: &[bool],
    rows: &[Vec<String>],
) -> std::fmt::Result {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::from("    ");
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if right.get(i).copied().unwrap_or(false) {
                write!(line, "{cell:>w$}")?;
            } else if i == last {
                line.push_str(cell);
            } else {
                write!(line, "{cell:<w$}")?;
            }
            if i != last {
                line.push_str("  ");
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// Word-wraps `text` to `width` columns: the first line starts with `first`, the others
/// with `rest`.
fn wrap(text: &str, first: &str, rest: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = first.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(&line);
            out.push('\n');
            line = rest.to_string();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(&line);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outputs::fixtures;

    #[test]
    fn a_killed_service() {
        let text = report(&fixtures::killed());
        let expected = "\
2026-11-21T05:09:51.000000Z  app.service  killed  [cut, killed, late_traffic, reset_by_peer]
  workload app.service, main gunicorn (pid 10)
  shutdown 10.0 s, ended 2026-11-21T05:10:01.002000Z, node node-1, cgroup /system.slice/app.service, id 10f7-e8d4a51000

  - gunicorn (pid 10) was killed by SIGKILL from containerd-shim 10.0 s after SIGTERM: it did not
    finish within the grace period; 3 connection(s) were cut (2 closed by the kernel when the
    process died, 1 refused after the listener closed). Lengthen the grace period or make the
    shutdown faster.
  - 1 connection attempt(s) were refused after the listener closed, up to 2.0 s after the stop
    signal: traffic still arrived (endpoint propagation delay). Keep serving for longer after the
    stop signal (a preStop delay) before closing the listener.
  - 1 new connection(s) were accepted up to 300.0 ms after the stop signal.
  - 1 connection(s) were reset by the peer during the shutdown.

  timeline
       t_ms  what                    detail
        0.0  stop_signal             SIGTERM from containerd-shim (pid 900) to gunicorn (pid 10): delivered
        1.0  handler                 gunicorn (pid 10): its own handler took SIGTERM
      300.0  accepted_late           accepted 10.0.0.9:40002 -> 10.0.0.5:8080 after the stop signal
     2000.0  refused                 10.0.0.9:40003 -> 10.0.0.5:8080 refused: nothing listened any more
    10000.0  sigkill                 SIGKILL from containerd-shim (pid 900) to gunicorn (pid 10): delivered
    10001.0  default_action          gunicorn (pid 10): a fatal signal: the kernel ends the whole process
    10001.0  connection_cut          10.0.0.5:8080 <-> 10.0.0.9:40000: closed_by_exit
    10001.0  connection_cut          10.0.0.5:8080 <-> 10.0.0.9:40002: closed_by_exit
    10001.0  last_connection_closed
    10002.0  exit                    gunicorn (pid 10) killed by SIGKILL
    10002.0  empty                   no process left

  connections
    local          remote          direction  verdict                   delay  reason
    10.0.0.5:8080  10.0.0.9:40000  inbound    closed_by_exit                -  -
    10.0.0.5:8080  10.0.0.9:40002  inbound    closed_by_exit (late)  300.0 ms  -
    10.0.0.5:8080  10.0.0.9:40003  inbound    refused                   2.0 s  no_socket
    10.0.0.5:8080  10.0.0.9:40001  inbound    reset_by_peer                 -  -
  counts: 3 cut (0 reset by app, 2 closed by exit, 1 refused), 0 completed, 1 reset by peer, 0 open, 1 accepted after stop
";
        assert_eq!(text, expected, "got:\n{text}");
    }

    #[test]
    fn a_pod_container_without_a_handler() {
        let text = report(&fixtures::no_handler());
        let head: Vec<&str> = text.lines().take(2).collect();
        assert_eq!(
            head,
            [
                "2026-11-21T05:09:51.000000Z  pod 1b4e28ba-2fa1-11d2-883f-0016d3cca427:3f2a9c1b2d4e  \
                 no_handler  [cut, no_handler]",
                "  workload pod-1b4e28ba-2fa1-11d2-883f-0016d3cca427, container 3f2a9c1b2d4e, \
                 pod 1b4e28ba-2fa1-11d2-883f-0016d3cca427, main app (pid 10)",
            ]
        );
        assert!(text.contains("  shutdown 2.0 ms,"), "{text}");
        assert!(
            text.contains("  - app (pid 10) has no handler for SIGTERM"),
            "{text}"
        );
    }

    #[test]
    fn omitted_and_no_connections() {
        let mut r = fixtures::graceful();
        r.connections.clear();
        r.connections_omitted = 0;
        assert!(report(&r).contains("  connections: none\n"));
        r.flags.push(Flag::Survived);
        assert!(
            report(&r).contains("  still running 250.0 ms after the stop signal, ended"),
            "{}",
            report(&r)
        );
        let mut r = fixtures::killed();
        r.connections.truncate(1);
        r.connections_omitted = 3;
        assert!(report(&r).contains("    ... and 3 more not listed (counted below)\n"));
        let both = reports([&fixtures::graceful(), &fixtures::killed()]);
        assert!(both.contains("\n\n2026-11-21T05:09:51.000000Z  app.service  killed"));
    }

    #[test]
    fn escape_sequences_from_containers_are_shown_not_obeyed() {
        let mut r = fixtures::killed();
        r.subject.main.comm = "evil\u{1b}]0;pwned\u{7}\u{1b}[2J\r\u{9b}31m\u{202e}".into();
        let text = report(&r);
        let safe = terminal_safe(&text);
        assert!(
            !safe
                .chars()
                .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
            "{safe}"
        );
        assert!(
            safe.contains("evil\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\u{d}\\u{9b}31m\\u{202e}"),
            "{safe}"
        );
        assert_eq!(safe.lines().count(), text.lines().count());
        assert!(matches!(terminal_safe("plain\ntext"), Cow::Borrowed(_)));
    }

    #[test]
    fn list_lines() {
        let line = list_line(&fixtures::killed());
        assert_eq!(
            line,
            format!(
                "2026-11-21T05:09:51.000000Z  killed         3  {}  app.service  \
                 [cut, killed, late_traffic, reset_by_peer]",
                fixtures::killed().id
            )
        );
        // The header's columns sit over the line's.
        let id = fixtures::killed().id;
        assert_eq!(LIST_HEADER.find("  id  ").map(|i| i + 2), line.find(&id));
        assert_eq!(LIST_HEADER.find("cut").map(|i| i + 2), line.find("3  "));
        let mut r = fixtures::no_handler();
        r.subject.namespace = "shop".into();
        r.subject.pod = Some("web-1".into());
        r.subject.container = "nginx".into();
        assert!(
            list_line(&r).contains("  shop/web-1 nginx"),
            "{}",
            list_line(&r)
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0.051), "0.051 ms");
        assert_eq!(duration(250.0), "250.0 ms");
        assert_eq!(duration(10_002.0), "10.0 s");
    }

    #[test]
    fn wraps_words() {
        assert_eq!(
            wrap("aaa bbb ccc ddd", "- ", "  ", 9),
            "- aaa bbb\n  ccc ddd\n"
        );
        assert_eq!(wrap("x", "- ", "  ", 9), "- x\n");
    }
}
