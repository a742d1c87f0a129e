//! The kind of a timeline step (`timeline[].what`) and what opened a termination
//! (`opened_by`), as enums inside the agent and as the same snake_case strings in JSON
//! (`docs/report.md`), the way [`super::flag::Flag`] is.
//!
//! A name this agent does not know — written by a newer agent (or an older one, for a name
//! since dropped) into a report log or sent by another agent's API — is kept verbatim as the
//! `Other` variant rather than rejected: rejecting it would make a reader of the report log
//! ([`crate::outputs::log::read_log`], `termscope report`) skip the whole report as a
//! malformed line. Kept, it is shown and written out again as the same string; no rule of
//! the engine acts on it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A name this agent does not know. Only the `from_name` of [`StepKind`] and [`OpenedBy`]
/// make one, so a known name is always its own variant and two equal values always compare
/// equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnknownName(String);

impl UnknownName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An enum of known names plus `Other(UnknownName)`, with its names, `Display`, and serde as
/// the name.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident expecting $expecting:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A name this agent does not know, kept as it was read (see the module docs).
            Other(UnknownName),
        }

        impl $name {
            /// Every value this agent knows.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name in JSON (and in `docs/report.md`).
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $text, )+
                    $name::Other(u) => u.as_str(),
                }
            }

            /// The value named `name`: a known one, or `Other` keeping the name as it is.
            pub fn from_name(name: &str) -> $name {
                match name {
                    $( $text => $name::$variant, )+
                    _ => $name::Other(UnknownName(name.to_owned())),
                }
            }

            /// Whether this agent knows the name.
            pub fn is_known(&self) -> bool {
                !matches!(self, $name::Other(_))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Name;
                impl serde::de::Visitor<'_> for Name {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        Ok($name::from_name(v))
                    }
                }
                d.deserialize_str(Name)
            }
        }
    };
}

named_enum! {
    /// The kind of a timeline step: a container's (from the kernel's events) or, in a pod's
    /// timeline, a Kubernetes one.
    pub enum StepKind expecting "a timeline step kind (a string)" {
        /// A stop signal sent to the container.
        StopSignal = "stop_signal",
        /// A signal to a process of the container's exec preStop hook (kubelet's timeout).
        PreStopHookSignal = "pre_stop_hook_signal",
        /// A SIGKILL from outside, or a supervisor's escalation inside.
        Sigkill = "sigkill",
        /// The target's own handler took the signal.
        Handler = "handler",
        /// The signal's default action took over.
        DefaultAction = "default_action",
        /// The target ignored the signal.
        Ignored = "ignored",
        /// A listening socket closed.
        ListenerClosed = "listener_closed",
        /// A connection accepted after the stop signal.
        AcceptedLate = "accepted_late",
        /// A connection refused: nothing listened any more.
        Refused = "refused",
        /// A connection cut.
        ConnectionCut = "connection_cut",
        /// The last connection closed.
        LastConnectionClosed = "last_connection_closed",
        /// A process exited.
        Exit = "exit",
        /// A process started a program.
        Exec = "exec",
        /// No process left.
        Empty = "empty",
        /// In place of the steps left out of a report cut to size.
        Omitted = "omitted",
        /// Kubernetes: the pod's deletion was requested.
        DeletionRequested = "deletion_requested",
        /// Kubernetes: this agent saw the deletion.
        DeletionObserved = "deletion_observed",
        /// Kubernetes: the pod's endpoints turned not ready.
        EndpointsNotReady = "endpoints_not_ready",
        /// Kubernetes: the pod's endpoints turned terminating.
        EndpointsTerminating = "endpoints_terminating",
        /// Kubernetes: the pod left its endpoint slices.
        EndpointsRemoved = "endpoints_removed",
        /// Kubernetes: the grace period ended.
        Deadline = "deadline",
    }
}

named_enum! {
    /// What began a termination. A report written before `opened_by` existed was opened by
    /// a stop signal: that is the default.
    #[derive(Default)]
    pub enum OpenedBy expecting "what opened a termination (a string)" {
        /// The first stop signal from outside.
        #[default]
        StopSignal = "stop_signal",
        /// Kubernetes: the pod's deletion, observed before any stop signal.
        PodDeletion = "pod_deletion",
        /// The kernel's watch of the container, after a stop signal whose event never
        /// reached the agent.
        KernelWatch = "kernel_watch",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: [&str; 21] = [
        "stop_signal",
        "pre_stop_hook_signal",
        "sigkill",
        "handler",
        "default_action",
        "ignored",
        "listener_closed",
        "accepted_late",
        "refused",
        "connection_cut",
        "last_connection_closed",
        "exit",
        "exec",
        "empty",
        "omitted",
        "deletion_requested",
        "deletion_observed",
        "endpoints_not_ready",
        "endpoints_terminating",
        "endpoints_removed",
        "deadline",
    ];

    #[test]
    fn every_step_kind_round_trips_through_its_name() {
        assert_eq!(STEPS.len(), StepKind::ALL.len());
        for (kind, name) in StepKind::ALL.iter().zip(STEPS) {
            assert_eq!(kind.as_str(), name);
            assert_eq!(kind.to_string(), name);
            assert!(kind.is_known());
            let json = serde_json::to_string(kind).expect("json");
            assert_eq!(json, format!("\"{name}\""));
            let back: StepKind = serde_json::from_str(&json).expect("step kind");
            assert_eq!(&back, kind);
            assert_eq!(&StepKind::from_name(name), kind);
        }
    }

    #[test]
    fn every_opener_round_trips_through_its_name() {
        let names = ["stop_signal", "pod_deletion", "kernel_watch"];
        assert_eq!(names.len(), OpenedBy::ALL.len());
        for (o, name) in OpenedBy::ALL.iter().zip(names) {
            assert_eq!(o.as_str(), name);
            assert_eq!(o.to_string(), name);
            assert!(o.is_known());
            let json = serde_json::to_string(o).expect("json");
            assert_eq!(json, format!("\"{name}\""));
            let back: OpenedBy = serde_json::from_str(&json).expect("opener");
            assert_eq!(&back, o);
            assert_eq!(&OpenedBy::from_name(name), o);
        }
        assert_eq!(OpenedBy::default(), OpenedBy::StopSignal);
    }

    /// Names from another agent's version are kept as they came, and written out again the
    /// same; they never equal a known value.
    #[test]
    fn unknown_names_are_kept_verbatim() {
        let json = r#"["exit","a_future_step","Exit",""]"#;
        let kinds: Vec<StepKind> = serde_json::from_str(json).expect("kinds");
        assert_eq!(kinds[0], StepKind::Exit);
        for k in &kinds[1..] {
            assert!(!k.is_known(), "{k:?}");
            assert!(!StepKind::ALL.contains(k));
        }
        assert_eq!(kinds[1].as_str(), "a_future_step");
        assert_eq!(kinds[2].as_str(), "Exit");
        assert_ne!(kinds[2], StepKind::Exit);
        assert_eq!(serde_json::to_string(&kinds).expect("json"), json);

        let o: OpenedBy = serde_json::from_str(r#""a_future_opener""#).expect("opener");
        assert!(!o.is_known());
        assert_eq!(o.as_str(), "a_future_opener");
        assert_eq!(
            serde_json::to_string(&o).expect("json"),
            r#""a_future_opener""#
        );
    }

    #[test]
    fn a_name_that_is_not_a_string_is_refused() {
        let err = serde_json::from_str::<StepKind>("3").expect_err("not a step kind");
        assert!(err.to_string().contains("a timeline step kind"), "{err}");
        let err = serde_json::from_str::<OpenedBy>("null").expect_err("not an opener");
        assert!(err.to_string().contains("what opened"), "{err}");
    }

    /// A whole report with a step kind and an opener this agent does not know (a report log
    /// written by a newer agent) reads back, and writes out byte for byte the same.
    #[test]
    fn a_report_with_unknown_names_reads_back_and_writes_the_same() {
        let r = crate::outputs::fixtures::killed();
        let ours = serde_json::to_string(&r).expect("json");
        let opened = r#""opened_by":"stop_signal""#;
        let step = r#""what":"sigkill""#;
        assert!(ours.contains(opened) && ours.contains(step), "{ours}");
        let line = ours
            .replacen(opened, r#""opened_by":"a_newer_opener""#, 1)
            .replacen(step, r#""what":"a_newer_step""#, 1);
        let back: crate::terminations::report::TerminationReport =
            serde_json::from_str(&line).expect("report");
        assert_eq!(back.opened_by, OpenedBy::from_name("a_newer_opener"));
        assert!(
            back.timeline
                .iter()
                .any(|s| s.what == StepKind::from_name("a_newer_step"))
        );
        assert_eq!(serde_json::to_string(&back).expect("json"), line);
    }

    /// `docs/report.md` names every step kind in its "Timeline steps" section (a pod's
    /// Kubernetes steps included), and no other; and every opener in the `opened_by` row.
    #[test]
    fn docs_list_every_step_kind_and_opener() {
        let doc = include_str!("../../../docs/report.md");
        let names = |text: &str| -> Vec<String> {
            text.split('`')
                .skip(1)
                .step_by(2)
                .filter(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
                .map(str::to_owned)
                .collect()
        };
        let start = doc
            .find("## Timeline steps (`timeline[].what`)")
            .expect("the timeline steps section of docs/report.md");
        let section = &doc[start..];
        let body = section
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with("## "))
            .collect::<Vec<_>>()
            .join("\n");
        let listed = names(&body);
        for k in StepKind::ALL {
            assert!(listed.iter().any(|n| n == k.as_str()), "{k} not in {body}");
        }
        for name in &listed {
            assert!(
                StepKind::from_name(name).is_known(),
                "{name} is not a step kind"
            );
        }

        let row = doc
            .lines()
            .find(|l| l.starts_with("| `opened_by` |"))
            .expect("the opened_by row of docs/report.md");
        let listed = names(row);
        for o in OpenedBy::ALL {
            assert!(listed.iter().any(|n| n == o.as_str()), "{o} not in {row}");
        }
        for name in listed.iter().filter(|n| *n != "opened_by") {
            assert!(
                OpenedBy::from_name(name).is_known(),
                "{name} is not an opener"
            );
        }
    }
}
