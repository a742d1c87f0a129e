//! The flags of a report (`flags` in `docs/report.md`): every condition that holds, as an
//! enum inside the agent and as the same snake_case strings in JSON.
//!
//! A flag this agent does not know — written by a newer agent (or an older one, for a flag
//! since dropped) into a report log or sent by another agent's API — is kept verbatim as
//! [`Flag::Other`] rather than rejected: rejecting it would make a reader of the report log
//! ([`crate::outputs::log::read_log`], `termscope report`) skip the whole report as a
//! malformed line. Kept, it is shown and written out again as the same string; no rule of
//! the engine acts on it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One condition that holds for a termination (or a pod's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Flag {
    /// A connection the container served was cut.
    Cut,
    /// One of its own outbound connections (an upstream, a pool) was cut.
    OutboundCut,
    /// SIGKILL ended it.
    Killed,
    /// A process died of a stop signal's default action.
    NoHandler,
    /// A stop signal was ignored.
    Ignored,
    /// Processes were still alive when the report was made.
    Survived,
    /// Connections were accepted or refused after the stop signal.
    LateTraffic,
    /// A peer reset a connection.
    ResetByPeer,
    /// Idle keep-alive connections were closed.
    ClosedIdle,
    /// The kernel could not tell idle from in flight for some close.
    ActivityUnavailable,
    /// The report may miss something (`incomplete` says what).
    Incomplete,
    /// The termination spanned an agent restart.
    AgentRestarted,
    /// The report was cut to size (`--max-connections-per-report`).
    Truncated,
    /// Only on stdout: the line was shortened to 16 KiB.
    StdoutTruncated,
    /// A flag this agent does not know, kept as it was read (see the module docs).
    Other(UnknownFlag),
}

/// The name of a flag this agent does not know. Only [`Flag::from_name`] makes one, so a
/// known name is always its own variant and two equal flags always compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnknownFlag(String);

impl UnknownFlag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Flag {
    /// Every flag this agent knows, in the order a report lists them.
    pub const ALL: [Flag; 14] = [
        Flag::Cut,
        Flag::OutboundCut,
        Flag::Killed,
        Flag::NoHandler,
        Flag::Ignored,
        Flag::Survived,
        Flag::LateTraffic,
        Flag::ResetByPeer,
        Flag::ClosedIdle,
        Flag::ActivityUnavailable,
        Flag::Incomplete,
        Flag::AgentRestarted,
        Flag::Truncated,
        Flag::StdoutTruncated,
    ];

    /// The name in JSON (and in `docs/report.md`).
    pub fn as_str(&self) -> &str {
        match self {
            Flag::Cut => "cut",
            Flag::OutboundCut => "outbound_cut",
            Flag::Killed => "killed",
            Flag::NoHandler => "no_handler",
            Flag::Ignored => "ignored",
            Flag::Survived => "survived",
            Flag::LateTraffic => "late_traffic",
            Flag::ResetByPeer => "reset_by_peer",
            Flag::ClosedIdle => "closed_idle",
            Flag::ActivityUnavailable => "activity_unavailable",
            Flag::Incomplete => "incomplete",
            Flag::AgentRestarted => "agent_restarted",
            Flag::Truncated => "truncated",
            Flag::StdoutTruncated => "stdout_truncated",
            Flag::Other(u) => u.as_str(),
        }
    }

    /// The flag named `name`: a known one, or [`Flag::Other`] keeping the name as it is.
    pub fn from_name(name: &str) -> Flag {
        Flag::ALL
            .into_iter()
            .find(|f| f.as_str() == name)
            .unwrap_or_else(|| Flag::Other(UnknownFlag(name.to_owned())))
    }

    /// Whether this agent knows the flag.
    pub fn is_known(&self) -> bool {
        !matches!(self, Flag::Other(_))
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

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Flag {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a flag name (a string)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Flag, E> {
                Ok(Flag::from_name(v))
            }
        }
        d.deserialize_str(Name)
    }
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
        assert_eq!(names.len(), Flag::ALL.len());
        for (flag, name) in Flag::ALL.iter().zip(names) {
            assert_eq!(flag.as_str(), name);
            assert_eq!(flag.to_string(), name);
            assert!(flag.is_known());
            let json = serde_json::to_string(flag).expect("json");
            assert_eq!(json, format!("\"{name}\""));
            let back: Flag = serde_json::from_str(&json).expect("flag");
            assert_eq!(&back, flag);
            assert_eq!(&Flag::from_name(name), flag);
        }
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
