//! The kind of a timeline step (`timeline[].what`), what opened a termination
//! (`opened_by`), how a process ended (`exits[].how`) and the kind of a preStop hook
//! (`kubernetes.pre_stop.kind`): enums inside the agent, the same snake_case strings in JSON
//! (`docs/report.md`); unknown names are kept (see [`super::named`]).

use super::named::named_enum;
use crate::decode::ExitStatus;

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

named_enum! {
    /// How a process ended (`exits[].how`): the kind of its [`ExitStatus`].
    pub enum ExitHow expecting "how a process ended (a string)" {
        /// It exited (`exit(code)`, or returned from main).
        Exited = "exited",
        /// A signal killed it.
        Signaled = "signaled",
        /// The kernel's exit code could not be read.
        Unknown = "unknown",
    }
}

named_enum! {
    /// The kind of a container's preStop hook (`kubernetes.pre_stop.kind`).
    pub enum HookKind expecting "the kind of a preStop hook (a string)" {
        /// A command run in the container.
        Exec = "exec",
        /// An HTTP GET kubelet sends to the container.
        HttpGet = "http_get",
        /// kubelet's own sleep.
        Sleep = "sleep",
        /// A TCP connection kubelet opens (deprecated by Kubernetes).
        TcpSocket = "tcp_socket",
    }
}

impl ExitHow {
    /// How a process that ended with `status` ended.
    pub fn of(status: &ExitStatus) -> ExitHow {
        match status {
            ExitStatus::Exited { .. } => ExitHow::Exited,
            ExitStatus::Signaled { .. } => ExitHow::Signaled,
            ExitStatus::Unknown => ExitHow::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::terminations::named::assert_round_trips;

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
        assert_round_trips(StepKind::ALL, &STEPS, StepKind::from_name);
        assert!(StepKind::ALL.iter().all(StepKind::is_known));
    }

    #[test]
    fn every_opener_round_trips_through_its_name() {
        let names = ["stop_signal", "pod_deletion", "kernel_watch"];
        assert_round_trips(OpenedBy::ALL, &names, OpenedBy::from_name);
        assert!(OpenedBy::ALL.iter().all(OpenedBy::is_known));
        assert_eq!(OpenedBy::default(), OpenedBy::StopSignal);
    }

    #[test]
    fn every_exit_kind_round_trips_through_its_name() {
        assert_round_trips(
            ExitHow::ALL,
            &["exited", "signaled", "unknown"],
            ExitHow::from_name,
        );
        // The events' own tag (`exit.how`) says the same.
        for status in [
            ExitStatus::Exited { code: 0 },
            ExitStatus::Signaled {
                signal: crate::signal::Signal::KILL,
                core_dumped: false,
            },
            ExitStatus::Unknown,
        ] {
            let json = serde_json::to_value(status).expect("json");
            assert_eq!(json["how"], ExitHow::of(&status).as_str(), "{json}");
        }
    }

    #[test]
    fn every_hook_kind_round_trips_through_its_name() {
        assert_round_trips(
            HookKind::ALL,
            &["exec", "http_get", "sleep", "tcp_socket"],
            HookKind::from_name,
        );
    }

    /// `docs/report.md` names every kind of exit in the `exits` row, and every result of a
    /// stop signal in the `stop_signals` row.
    #[test]
    fn docs_list_every_exit_kind_and_signal_result() {
        let doc = include_str!("../../../docs/report.md");
        let row = |field: &str| {
            doc.lines()
                .find(|l| l.starts_with(&format!("| `{field}` |")))
                .unwrap_or_else(|| panic!("the {field} row of docs/report.md"))
        };
        let exits = row("exits");
        for how in ExitHow::ALL {
            assert!(exits.contains(&format!("`{how}`")), "{how} not in {exits}");
        }
        let signals = row("stop_signals");
        for result in crate::decode::SignalResult::ALL {
            assert!(
                signals.contains(&format!("`{result}`")),
                "{result} not in {signals}"
            );
        }
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
