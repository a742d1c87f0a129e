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
    kube::PodTerminationReport,
    report::{Step, TerminationReport},
};

/// Timeline steps kept beyond `max` (signals, handlers, exits, the end).
pub const TIMELINE_EXTRA: usize = 64;
/// The fewest entries of each list kept, whatever `max` says.
pub const MIN_KEPT: usize = 16;
/// The flag of a report cut to size.
pub const TRUNCATED: &str = "truncated";

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
    let steps = timeline(&mut r.timeline, max + TIMELINE_EXTRA);
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

fn mark(flags: &mut Vec<String>, summary: &mut Vec<String>, said: &[String], max: usize) {
    if !flags.iter().any(|f| f == TRUNCATED) {
        flags.push(TRUNCATED.into());
    }
    summary.push(format!(
        "This report was cut to size (--max-connections-per-report {max}): {} not listed; \
         the counts cover everything.",
        said.join(", ")
    ));
}

/// Cuts a timeline to `keep` steps, the left-out ones replaced by one `omitted` step;
/// returns what was left out, in words.
fn timeline(steps: &mut Vec<Step>, keep: usize) -> Option<String> {
    let keep = keep.max(3);
    if steps.len() <= keep {
        return None;
    }
    // One of the kept places goes to the `omitted` step.
    let left_out = keep_ends(steps, keep - 1);
    let first = left_out.first()?;
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &left_out {
        *kinds.entry(s.what.as_str()).or_default() += 1;
    }
    let kinds = kinds
        .iter()
        .map(|(what, n)| format!("{n} {what}"))
        .collect::<Vec<_>>()
        .join(", ");
    let omitted = Step {
        t_ms: first.t_ms,
        at: first.at.clone(),
        what: "omitted".into(),
        detail: format!("{} step(s) not listed: {kinds}", left_out.len()),
    };
    let at = (keep - 1).div_ceil(2);
    steps.insert(at, omitted);
    Some(format!("{} timeline step(s) ({kinds})", left_out.len()))
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
            .find(|s| s.what == "connection_cut")
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
        let omitted: Vec<&Step> = r.timeline.iter().filter(|s| s.what == "omitted").collect();
        assert_eq!(omitted.len(), 1);
        let left_out = total - (r.timeline.len() - 1);
        assert_eq!(
            omitted[0].detail,
            format!("{left_out} step(s) not listed: {left_out} connection_cut")
        );
        // The start and the end of the shutdown are kept.
        assert_eq!(r.timeline[0].what, "stop_signal");
        assert_eq!(r.timeline.last().map(|s| s.what.as_str()), Some("empty"));
        assert!(r.flags.iter().any(|f| f == TRUNCATED));
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
