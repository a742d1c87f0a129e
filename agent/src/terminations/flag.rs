//! The flags of a report (`flags` in `docs/report.md`): every condition that holds, as an
//! enum inside the agent and as the same snake_case strings in JSON.
//!
//! A flag this agent does not know is kept verbatim as [`Flag::Other`] (see
//! [`super::named`]).

use super::named::named_enum;

named_enum! {
    /// One condition that holds for a termination (or a pod's), in the order a report lists
    /// them.
    pub enum Flag expecting "a flag name (a string)" {
        /// A connection the container served was cut.
        Cut = "cut",
        /// One of its own outbound connections (an upstream, a pool) was cut.
        OutboundCut = "outbound_cut",
        /// SIGKILL ended it.
        Killed = "killed",
        /// A process died of a stop signal's default action.
        NoHandler = "no_handler",
        /// A stop signal was ignored.
        Ignored = "ignored",
        /// Processes were still alive when the report was made.
        Survived = "survived",
        /// Connections were accepted or refused after the stop signal.
        LateTraffic = "late_traffic",
        /// A peer reset a connection.
        ResetByPeer = "reset_by_peer",
        /// Idle keep-alive connections were closed.
        ClosedIdle = "closed_idle",
        /// The kernel could not tell idle from in flight for some close.
        ActivityUnavailable = "activity_unavailable",
        /// The report may miss something (`incomplete` says what).
        Incomplete = "incomplete",
        /// The termination spanned an agent restart.
        AgentRestarted = "agent_restarted",
        /// The report was cut to size (`--max-connections-per-report`).
        Truncated = "truncated",
        /// Only on stdout: the line was shortened to 16 KiB.
        StdoutTruncated = "stdout_truncated",
    }
}

/// Adds `flag` to `flags` unless it is there already.
pub fn add(flags: &mut Vec<Flag>, flag: Flag) {
    if !flags.contains(&flag) {
        flags.push(flag);
    }
}

/// `flags` as text, `a, b, c` (for the human-readable lines).
pub fn joined(flags: &[Flag]) -> String {
    flags
        .iter()
        .map(Flag::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_round_trips_through_its_name() {
        let names = [
            "cut",
            "outbound_cut",
            "killed",
            "no_handler",
            "ignored",
            "survived",
            "late_traffic",
            "reset_by_peer",
            "closed_idle",
            "activity_unavailable",
            "incomplete",
            "agent_restarted",
            "truncated",
            "stdout_truncated",
        ];
        crate::terminations::named::assert_round_trips(Flag::ALL, &names, Flag::from_name);
        assert!(Flag::ALL.iter().all(Flag::is_known));
    }

    /// A flag from another agent's version is kept as it came, and written out again the
    /// same; it never equals a known flag.
    #[test]
    fn unknown_flags_are_kept_verbatim() {
        let json = r#"["cut","drained_by_a_future_rule","Killed",""]"#;
        let flags: Vec<Flag> = serde_json::from_str(json).expect("flags");
        assert_eq!(flags[0], Flag::Cut);
        for f in &flags[1..] {
            assert!(!f.is_known(), "{f:?}");
            assert!(!Flag::ALL.contains(f));
        }
        assert_eq!(flags[1].as_str(), "drained_by_a_future_rule");
        // Names are exact: another spelling of a known flag is not that flag.
        assert_eq!(flags[2].as_str(), "Killed");
        assert_ne!(flags[2], Flag::Killed);
        assert_eq!(serde_json::to_string(&flags).expect("json"), json);
        assert_eq!(joined(&flags), "cut, drained_by_a_future_rule, Killed, ");
    }

    /// A whole report from a writer with a flag this agent does not know (a report log
    /// written by a newer agent) reads back, and writes out byte for byte the same.
    #[test]
    fn a_report_with_an_unknown_flag_reads_back_and_writes_the_same() {
        let r = crate::outputs::fixtures::killed();
        let ours = serde_json::to_string(&r).expect("json");
        let known = r#""flags":["cut","killed","late_traffic","reset_by_peer"]"#;
        assert!(ours.contains(known), "{ours}");
        let line = ours.replacen(
            known,
            r#""flags":["cut","a_newer_flag","killed","late_traffic","reset_by_peer"]"#,
            1,
        );
        let back: crate::terminations::report::TerminationReport =
            serde_json::from_str(&line).expect("report");
        assert_eq!(back.flags[1], Flag::from_name("a_newer_flag"));
        assert!(back.has_flag(Flag::Killed));
        assert_eq!(serde_json::to_string(&back).expect("json"), line);
    }

    #[test]
    fn a_flag_that_is_not_a_string_is_refused() {
        let err = serde_json::from_str::<Flag>("3").expect_err("not a flag");
        assert!(err.to_string().contains("a flag name"), "{err}");
    }

    #[test]
    fn add_keeps_one_of_each() {
        let mut flags = vec![Flag::Cut];
        add(&mut flags, Flag::Truncated);
        add(&mut flags, Flag::Cut);
        add(&mut flags, Flag::Truncated);
        add(&mut flags, Flag::from_name("x"));
        add(&mut flags, Flag::from_name("x"));
        assert_eq!(flags, [Flag::Cut, Flag::Truncated, Flag::from_name("x")]);
    }

    /// `docs/report.md` names every flag in the `flags` row of the report's fields, and no
    /// other: readers rely on that list.
    #[test]
    fn docs_list_every_flag() {
        let doc = include_str!("../../../docs/report.md");
        let row = doc
            .lines()
            .find(|l| l.starts_with("| `flags` |"))
            .expect("the flags row of docs/report.md");
        let listed: Vec<&str> = row
            .split('`')
            .skip(3) // "| ", "flags", " | [string] | every condition that holds: "
            .step_by(2)
            .filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect();
        for f in Flag::ALL {
            assert!(listed.contains(&f.as_str()), "{} not in {row}", f.as_str());
        }
        for name in listed {
            assert!(Flag::from_name(name).is_known(), "{name} is not a flag");
        }
    }
}
