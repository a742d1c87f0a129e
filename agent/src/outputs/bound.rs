//! Every report has a bounded size. The engine lists at most `--max-connections-per-report`
//! connections (`connections_omitted` counts the others); here the lists that grow with the
//! number of connections or processes — the timeline (one step per cut connection, exit,
//! exec, refusal...), the exits and the stop signals — are cut to the same bound before a
//! report is written, served or counted. What is left out is said in the report: a timeline
//! step `omitted` in place of the steps left out (how many of each kind), the flag
//! `truncated`, and a summary sentence. The counts always cover everything.
//!
//! The first and the last entries are kept (how the shutdown began and how it ended); the
//! middle goes.

use std::collections::BTreeMap;

use crate::terminations::{
    flag::{self, Flag},
    kube::PodTerminationReport,
    report::{Step, StepKind, TerminationReport},
};

/// Timeline steps kept beyond `max` (signals, handlers, exits, the end).
pub const TIMELINE_EXTRA: usize = 64;
/// The fewest entries of each list kept, whatever `max` says.
pub const MIN_KEPT: usize = 16;

/// Keeps the first and last entries of `v`, at most `keep` in all; returns the left-out ones.
fn keep_ends<T>(v: &mut Vec<T>, keep: usize) -> Vec<T> {
    if v.len() <= keep {
        return Vec::new();
    }
    let head = keep.div_ceil(2);
    let tail = keep - head;
    let end = v.len() - tail;
    v.drain(head..end).collect()
}

/// Cuts `r` to size for `max` (`--max-connections-per-report`); `true` if anything was left
/// out.
pub fn report(r: &mut TerminationReport, max: usize) -> bool {
    let max = max.max(MIN_KEPT);
    let mut said = Vec::new();
    // The engine may have cut the timeline already (it never builds a huge one).
    let steps = r
        .timeline_left_out
        .take()
        .or_else(|| timeline(&mut r.timeline, max + TIMELINE_EXTRA));
    if let Some(s) = steps {
        said.push(s);
    }
    let exits = keep_ends(&mut r.exits, max).len();
    if exits > 0 {
        said.push(format!("{exits} process exit(s)"));
    }
    let signals = keep_ends(&mut r.stop_signals, max).len();
    if signals > 0 {
        said.push(format!("{signals} stop signal(s)"));
    }
    if said.is_empty() {
        return false;
    }
    mark(&mut r.flags, &mut r.summary, &said, max);
    true
}

/// Cuts a pod report and its containers' reports to size.
pub fn pod_report(p: &mut PodTerminationReport, max: usize) -> bool {
    let mut cut = false;
    for c in &mut p.containers {
        cut |= report(c, max);
    }
    let max = max.max(MIN_KEPT);
    if let Some(s) = timeline(&mut p.timeline, max + TIMELINE_EXTRA) {
        mark(&mut p.flags, &mut p.summary, &[s], max);
        cut = true;
    }
    cut
}

/// Flags a report cut to size ([`Flag::Truncated`]) and says what was left out.
fn mark(flags: &mut Vec<Flag>, summary: &mut Vec<String>, said: &[String], max: usize) {
    flag::add(flags, Flag::Truncated);
    summary.push(format!(
        "This report was cut to size (--max-connections-per-report {max}): {} not listed; \
         the counts cover everything.",
        said.join(", ")
    ));
}

/// What [`cut_steps`] left out of a list of timeline steps.
pub struct LeftOut<T> {
    /// Where the `omitted` step goes.
    pub at: usize,
    /// The first step left out (its time is the `omitted` step's).
    pub first: T,
    /// The `omitted` step's detail.
    pub detail: String,
    /// What was left out, in words (for the summary).
    pub said: String,
}

/// Cuts timeline steps (of any form: `what` names each one's kind) to `keep`, the `omitted`
/// step that replaces the left-out ones included: the first and last are kept.
pub fn cut_steps<T>(
    steps: &mut Vec<T>,
    keep: usize,
    what: impl Fn(&T) -> &str,
) -> Option<LeftOut<T>> {
    let keep = keep.max(3);
    if steps.len() <= keep {
        return None;
    }
    // One of the kept places goes to the `omitted` step.
    let left_out = keep_ends(steps, keep - 1);
    let kinds = {
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &left_out {
            *kinds.entry(what(s)).or_default() += 1;
        }
        kinds
            .iter()
            .map(|(what, n)| format!("{n} {what}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let n = left_out.len();
    let detail = format!("{n} step(s) not listed: {kinds}");
    let said = format!("{n} timeline step(s) ({kinds})");
    let first = left_out.into_iter().next()?;
    Some(LeftOut {
        at: (keep - 1).div_ceil(2),
        first,
        detail,
        said,
    })
}

/// Cuts a timeline to `keep` steps, the left-out ones replaced by one `omitted` step;
/// returns what was left out, in words.
fn timeline(steps: &mut Vec<Step>, keep: usize) -> Option<String> {
    let cut = cut_steps(steps, keep, |s| s.what.as_str())?;
    let omitted = Step {
        t_ms: cut.first.t_ms,
        at: cut.first.at,
        what: StepKind::Omitted,
        detail: cut.detail,
    };
    steps.insert(cut.at, omitted);
    Some(cut.said)
}

/// The longest line written to stdout, newline included: containerd's CRI log format splits
/// longer lines (16 KiB), and log shippers then see pieces that are not JSON.
pub const STDOUT_MAX_LINE: usize = 16 * 1024;
/// The field of a report shortened on stdout that says what was left out (the log file and
/// the API have it whole); the flag [`Flag::StdoutTruncated`] has the same name.
pub const STDOUT_TRUNCATED: &str = "stdout_truncated";
/// The lists that are shortened on stdout, wherever they are (a pod report's containers too),
/// in the order they give way: connections keep their head (cut ones come first), the others
/// their first and last entries.
const STDOUT_LISTS: [&str; 4] = ["connections", "timeline", "exits", "stop_signals"];
/// What is kept of a report when even without its lists it does not fit.
const STDOUT_MINIMAL: [&str; 14] = [
    "schema",
    "id",
    "opened_by",
    "node",
    "pod",
    "pod_uid",
    "namespace",
    "outcome",
    "flags",
    "counts",
    "started_at",
    "ended_at",
    "shutdown_ms",
    "connections_omitted",
];

/// One report (container or pod) as the JSON line written to stdout, newline included, at
/// most [`STDOUT_MAX_LINE`] bytes whatever the report. A report that does not fit gives up
/// its longest lists (halving them, see [`STDOUT_LISTS`]) until it fits; if it still does
/// not, only [`STDOUT_MINIMAL`] is kept. What was left out is said: the flag
/// [`Flag::StdoutTruncated`], a last summary sentence, and the field [`STDOUT_TRUNCATED`] (how many entries of
/// each list, which fields, and where the whole report is). Counts, flags and the summary
/// are kept.
pub fn stdout_line(record: &impl serde::Serialize) -> Result<String, serde_json::Error> {
    let mut line = serde_json::to_string(record)?;
    if line.len() < STDOUT_MAX_LINE {
        line.push('\n');
        return Ok(line);
    }
    let mut v = serde_json::to_value(record)?;
    let id = v
        .get("id")
        .and_then(|i| i.as_str())
        .unwrap_or_default()
        .to_owned();
    let pod = v.get("containers").is_some();
    let mut left_out: BTreeMap<String, usize> = BTreeMap::new();
    let fits = |v: &serde_json::Value| -> Result<bool, serde_json::Error> {
        // Room for the marker added below.
        Ok(serde_json::to_string(v)?.len() + 1024 < STDOUT_MAX_LINE)
    };
    while !fits(&v)? {
        let Some((path, len)) = longest_list(&v) else {
            break;
        };
        if let Some(list) = list_at(&mut v, &path) {
            let keep = len / 2;
            let dropped = if path.last().is_some_and(|k| k == "connections") {
                list.split_off(keep).len()
            } else {
                keep_ends(list, keep).len()
            };
            *left_out
                .entry(path.last().cloned().unwrap_or_default())
                .or_default() += dropped;
        }
    }
    let mut fields_left_out = Vec::new();
    if !fits(&v)?
        && let serde_json::Value::Object(map) = &mut v
    {
        fields_left_out = map
            .keys()
            .filter(|k| !STDOUT_MINIMAL.contains(&k.as_str()))
            .cloned()
            .collect();
        map.retain(|k, _| STDOUT_MINIMAL.contains(&k.as_str()));
    }
    let mut said: Vec<String> = left_out
        .iter()
        .map(|(list, n)| format!("{n} {list} entr(ies)"))
        .collect();
    if !fields_left_out.is_empty() {
        said.push(format!("the fields {}", fields_left_out.join(", ")));
    }
    let api = if pod {
        format!("/v1/pod-terminations/{id}")
    } else {
        format!("/v1/terminations/{id}")
    };
    let whole = format!("the whole report is in the log file (--log-file) and at {api}");
    if let serde_json::Value::Object(map) = &mut v {
        if let Some(serde_json::Value::Array(flags)) = map.get_mut("flags") {
            flags.push(Flag::StdoutTruncated.as_str().into());
        }
        if let Some(serde_json::Value::Array(summary)) = map.get_mut("summary") {
            summary.push(
                format!(
                    "On stdout this report was shortened to {} KiB (containerd splits longer \
                     lines): {} left out; {whole}.",
                    STDOUT_MAX_LINE / 1024,
                    said.join(", ")
                )
                .into(),
            );
        }
        map.insert(
            STDOUT_TRUNCATED.into(),
            serde_json::json!({
                "lists": left_out,
                "fields": fields_left_out,
                "whole_report": whole,
            }),
        );
    }
    let mut line = serde_json::to_string(&v)?;
    if line.len() >= STDOUT_MAX_LINE {
        // The summary made it too long (it is kept whole above unless it is huge itself).
        if let serde_json::Value::Object(map) = &mut v {
            map.retain(|k, _| STDOUT_MINIMAL.contains(&k.as_str()) || k == STDOUT_TRUNCATED);
        }
        line = serde_json::to_string(&v)?;
    }
    line.push('\n');
    Ok(line)
}

/// The path (keys and indices as strings) and length of the longest shortenable list.
fn longest_list(v: &serde_json::Value) -> Option<(Vec<String>, usize)> {
    fn walk(
        v: &serde_json::Value,
        path: &mut Vec<String>,
        best: &mut Option<(Vec<String>, usize)>,
    ) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map {
                    path.push(k.clone());
                    if let serde_json::Value::Array(a) = child
                        && STDOUT_LISTS.contains(&k.as_str())
                        && !a.is_empty()
                    {
                        let size = serde_json::to_string(child).map_or(0, |s| s.len());
                        if best.as_ref().is_none_or(|(_, b)| size > *b) {
                            *best = Some((path.clone(), size));
                        }
                    } else if k == "containers" {
                        walk(child, path, best);
                    }
                    path.pop();
                }
            }
            serde_json::Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    path.push(i.to_string());
                    walk(child, path, best);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut best = None;
    walk(v, &mut Vec::new(), &mut best);
    let (path, _) = best?;
    let len = path
        .iter()
        .try_fold(v, |v, k| match v {
            serde_json::Value::Object(m) => m.get(k),
            serde_json::Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        })
        .and_then(|l| l.as_array())
        .map_or(0, Vec::len);
    Some((path, len))
}

fn list_at<'a>(
    v: &'a mut serde_json::Value,
    path: &[String],
) -> Option<&'a mut Vec<serde_json::Value>> {
    let mut v = v;
    for k in path {
        v = match v {
            serde_json::Value::Object(m) => m.get_mut(k)?,
            serde_json::Value::Array(a) => a.get_mut(k.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    v.as_array_mut()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outputs::fixtures;

    fn many_cuts(n: usize) -> TerminationReport {
        let mut r = fixtures::killed();
        let cut = r
            .timeline
            .iter()
            .find(|s| s.what == StepKind::ConnectionCut)
            .cloned()
            .expect("a cut step");
        let end: Vec<Step> = r.timeline.split_off(r.timeline.len() - 2);
        for i in 0..n {
            let mut s = cut.clone();
            s.detail = format!("cut {i}");
            r.timeline.push(s);
        }
        r.timeline.extend(end);
        r
    }

    #[test]
    fn small_reports_are_untouched() {
        let mut r = fixtures::killed();
        let before = r.clone();
        assert!(!report(&mut r, 256));
        assert_eq!(r, before);
    }

    #[test]
    fn a_timeline_of_3000_cuts_is_bounded_and_says_what_was_left_out() {
        let mut r = many_cuts(3000);
        let total = r.timeline.len();
        let big = serde_json::to_string(&r).expect("json").len();
        assert!(report(&mut r, 256));
        assert_eq!(r.timeline.len(), 256 + TIMELINE_EXTRA);
        let omitted: Vec<&Step> = r
            .timeline
            .iter()
            .filter(|s| s.what == StepKind::Omitted)
            .collect();
        assert_eq!(omitted.len(), 1);
        let left_out = total - (r.timeline.len() - 1);
        assert_eq!(
            omitted[0].detail,
            format!("{left_out} step(s) not listed: {left_out} connection_cut")
        );
        // The start and the end of the shutdown are kept.
        assert_eq!(r.timeline[0].what, StepKind::StopSignal);
        assert_eq!(r.timeline.last().map(|s| &s.what), Some(&StepKind::Empty));
        assert!(r.has_flag(Flag::Truncated));
        assert!(
            r.summary
                .last()
                .is_some_and(|s| s.contains(&format!("{left_out} timeline step(s)"))),
            "{:?}",
            r.summary
        );
        let small = serde_json::to_string(&r).expect("json").len();
        assert!(small * 5 < big, "{small} vs {big}");
        // Cutting again changes nothing.
        let again = r.clone();
        assert!(!report(&mut r, 256));
        assert_eq!(r, again);
    }

    #[test]
    fn a_small_report_goes_to_stdout_whole() {
        let r = fixtures::killed();
        let line = stdout_line(&r).expect("line");
        assert_eq!(
            line,
            format!("{}\n", serde_json::to_string(&r).expect("json"))
        );
    }

    /// A report far over 16 KiB even after the engine's bound (256 connections, 320 steps,
    /// 100 exits): on stdout it fits, keeps its counts, flags and summary, and says what it
    /// left out and where the whole report is.
    #[test]
    fn a_huge_report_fits_in_one_stdout_line_and_says_what_was_left_out() {
        let mut r = many_cuts(3000);
        let conn = r.connections[0].clone();
        r.connections = vec![conn; 256];
        let exit = r.exits[0].clone();
        r.exits = vec![exit; 100];
        report(&mut r, 256);
        let whole = serde_json::to_string(&r).expect("json");
        assert!(whole.len() > 4 * STDOUT_MAX_LINE, "{}", whole.len());
        let line = stdout_line(&r).expect("line");
        assert!(line.len() <= STDOUT_MAX_LINE, "{}", line.len());
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON value");
        assert_eq!(v["counts"], serde_json::to_value(r.counts).expect("counts"));
        assert_eq!(
            v["outcome"],
            serde_json::to_value(r.outcome).expect("outcome")
        );
        let flags: Vec<Flag> = serde_json::from_value(v["flags"].clone()).expect("flags");
        assert!(flags.contains(&Flag::Truncated), "{flags:?}");
        assert!(flags.contains(&Flag::StdoutTruncated), "{flags:?}");
        assert_eq!(STDOUT_TRUNCATED, Flag::StdoutTruncated.as_str());
        let marker = &v[STDOUT_TRUNCATED];
        let lists = marker["lists"].as_object().expect("lists");
        let kept = |k: &str| v[k].as_array().map_or(0, Vec::len);
        assert_eq!(
            kept("connections")
                + lists
                    .get("connections")
                    .and_then(|n| n.as_u64())
                    .unwrap_or(0) as usize,
            256
        );
        assert_eq!(
            kept("timeline") + lists.get("timeline").and_then(|n| n.as_u64()).unwrap_or(0) as usize,
            r.timeline.len()
        );
        assert!(
            marker["whole_report"]
                .as_str()
                .is_some_and(|s| s.contains(&format!("/v1/terminations/{}", r.id))),
            "{marker}"
        );
        // The summary is kept, plus one sentence on what stdout left out.
        let summary = v["summary"].as_array().expect("summary");
        assert_eq!(summary.len(), r.summary.len() + 1);
        assert!(
            summary
                .last()
                .and_then(|s| s.as_str())
                .is_some_and(|s| s.contains("left out") && s.contains("--log-file")),
            "{summary:?}"
        );
        // Kept connections are the first ones (cut ones are listed first); the timeline keeps
        // its start and its end.
        assert_eq!(v["timeline"][0]["what"], "stop_signal");
        assert_eq!(
            v["timeline"]
                .as_array()
                .and_then(|t| t.last())
                .map(|s| &s["what"]),
            Some(&serde_json::json!("empty"))
        );
    }

    /// Even a report whose fields outside the lists are too long (a huge summary here) fits:
    /// only the minimal fields are kept, and the fields left out are named.
    #[test]
    fn a_report_too_long_without_its_lists_keeps_the_minimal_fields() {
        let mut r = fixtures::killed();
        r.summary = vec!["x".repeat(40_000)];
        let line = stdout_line(&r).expect("line");
        assert!(line.len() <= STDOUT_MAX_LINE, "{}", line.len());
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["id"], serde_json::json!(r.id));
        assert!(
            serde_json::from_value::<Vec<Flag>>(v["flags"].clone())
                .is_ok_and(|f| f.contains(&Flag::StdoutTruncated))
        );
        assert!(
            v[STDOUT_TRUNCATED]["fields"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "summary")),
            "{v}"
        );
    }

    /// A pod report: its containers' lists give way too, and the API path is the pod one.
    #[test]
    fn a_huge_pod_report_fits_too() {
        // The shape of a pod report (`containers` is what makes it one here).
        let big = serde_json::to_value(many_cuts(3000)).expect("json");
        let p = serde_json::json!({
            "schema": "x", "id": "pod-1", "flags": ["cut"], "summary": ["s"],
            "counts": {"cut": 3}, "timeline": [], "containers": [big.clone(), big],
        });
        let line = stdout_line(&p).expect("line");
        assert!(line.len() <= STDOUT_MAX_LINE, "{}", line.len());
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["containers"].as_array().map(Vec::len), Some(2));
        assert!(
            v[STDOUT_TRUNCATED]["whole_report"]
                .as_str()
                .is_some_and(|s| s.contains("/v1/pod-terminations/")),
            "{v}"
        );
    }

    #[test]
    fn exits_and_signals_are_bounded_too() {
        let mut r = fixtures::killed();
        let exit = r.exits[0].clone();
        r.exits = vec![exit; 100];
        let sig = r.stop_signals[0].clone();
        r.stop_signals = vec![sig; 50];
        assert!(report(&mut r, 10));
        assert_eq!(r.exits.len(), MIN_KEPT);
        assert_eq!(r.stop_signals.len(), MIN_KEPT);
        let last = r.summary.last().cloned().unwrap_or_default();
        assert!(
            last.contains("84 process exit(s), 34 stop signal(s)"),
            "{last}"
        );
    }
}
