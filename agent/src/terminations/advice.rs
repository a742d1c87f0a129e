//! Sentences a person can act on, from what the engine measured: which process, what
//! happened to its connections, and the fix that fits the cause — not the same "lengthen the
//! grace period" for every SIGKILL.

use super::report::{Counts, Outcome, Proc};
use crate::signal::Signal;

/// Signals that services commonly take as "reload" or "rotate logs" rather than "stop".
pub const RELOAD_SIGNALS: [Signal; 4] = [Signal::HUP, Signal::USR1, Signal::USR2, Signal::WINCH];

/// A SIGKILL that a supervisor inside the container sends to a worker sooner than this after
/// its own stop signal to it gave the worker no time at all: the supervisor's shutdown kills
/// its workers by design (PHP-FPM's fast shutdown: SIGTERM, then SIGKILL within a
/// millisecond), it is no grace period that ran out.
pub const IMMEDIATE_KILL_MS: f64 = 100.0;

/// A program whose operators stop it gracefully with particular signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GracefulStop {
    /// As people name it.
    pub program: &'static str,
    /// The signals that make it drain and exit.
    pub signals: &'static [Signal],
    /// What the other signals do to it, and how to send the right one.
    pub note: &'static str,
    /// What bounds its graceful stop, said when that very signal still cut requests in flight
    /// (in place of the generic "it did not wait for them").
    pub drain_limit: Option<&'static str>,
}

/// The graceful stops of common servers, from their documentation, matched by the
/// process's `comm` prefix. One table, used by every rule that names a signal.
/// Apache httpd runs as `httpd` or (Debian) `apache2`.
const APACHE_HTTPD: GracefulStop = GracefulStop {
    program: "Apache httpd",
    signals: &[Signal::WINCH],
    note: "Apache httpd stops gracefully on SIGWINCH (`apachectl graceful-stop`); SIGTERM \
           stops it at once.",
    drain_limit: None,
};

const GRACEFUL_STOPS: [(&str, GracefulStop); 12] = [
    (
        "nginx",
        GracefulStop {
            program: "nginx",
            signals: &[Signal::QUIT],
            note: "nginx treats SIGTERM as a fast shutdown and drops open connections: stop it \
                   with SIGQUIT (STOPSIGNAL SIGQUIT, or `nginx -s quit` in a preStop hook) to \
                   drain them.",
            drain_limit: None,
        },
    ),
    (
        "gunicorn",
        GracefulStop {
            program: "gunicorn",
            signals: &[Signal::TERM],
            note: "gunicorn drains on SIGTERM (within --graceful-timeout); SIGINT and SIGQUIT \
                   are its quick shutdown.",
            drain_limit: None,
        },
    ),
    (
        "uwsgi",
        GracefulStop {
            program: "uWSGI",
            signals: &[Signal::INT, Signal::QUIT],
            note: "uWSGI reloads on SIGTERM: run it with --die-on-term, or stop it with SIGINT \
                   / SIGQUIT.",
            drain_limit: None,
        },
    ),
    (
        "haproxy",
        GracefulStop {
            program: "HAProxy",
            signals: &[Signal::USR1],
            note: "HAProxy's soft stop is SIGUSR1 (it finishes its sessions, bounded by \
                   hard-stop-after); SIGTERM and SIGINT stop it at once.",
            drain_limit: None,
        },
    ),
    (
        "lighttpd",
        GracefulStop {
            program: "lighttpd",
            signals: &[Signal::INT],
            note: "lighttpd stops gracefully on SIGINT (bounded by \
                   server.graceful-shutdown-timeout); SIGTERM stops it at once.",
            drain_limit: None,
        },
    ),
    ("httpd", APACHE_HTTPD),
    ("apache2", APACHE_HTTPD),
    (
        "php-fpm",
        GracefulStop {
            program: "PHP-FPM",
            signals: &[Signal::QUIT],
            note: "PHP-FPM stops gracefully on SIGQUIT (with process_control_timeout set); \
                   SIGTERM and SIGINT stop it at once.",
            drain_limit: Some(
                "PHP-FPM's SIGQUIT waits for the requests in flight only up to \
                 process_control_timeout, 0 by default: its master then sends its workers \
                 SIGTERM at once. Set process_control_timeout to the longest request, within the \
                 grace period.",
            ),
        },
    ),
    (
        "unicorn",
        GracefulStop {
            program: "unicorn",
            signals: &[Signal::QUIT],
            note: "unicorn stops gracefully on SIGQUIT; SIGTERM and SIGINT stop it at once.",
            drain_limit: None,
        },
    ),
    (
        "postgres",
        GracefulStop {
            program: "PostgreSQL",
            signals: &[Signal::INT],
            note: "PostgreSQL takes SIGTERM as a smart shutdown, which waits for every client \
                   session to end (pooled and idle sessions never do) until SIGKILL forces crash \
                   recovery at the next start: stop it with SIGINT, its fast shutdown (open \
                   transactions rolled back, clients told and disconnected, a clean checkpoint; \
                   `pg_ctl stop`'s default and the official image's STOPSIGNAL).",
            drain_limit: None,
        },
    ),
    (
        "caddy",
        GracefulStop {
            program: "Caddy",
            signals: &[Signal::TERM, Signal::INT],
            note: "Caddy stops gracefully on SIGTERM or SIGINT (it finishes the requests in \
                   flight, bounded by its grace_period); SIGQUIT quits at once.",
            drain_limit: None,
        },
    ),
    (
        "puma",
        GracefulStop {
            program: "Puma",
            signals: &[Signal::TERM],
            note: "Puma drains on SIGTERM (bounded by its worker shutdown timeout).",
            drain_limit: None,
        },
    ),
];

/// The graceful stop of the program `comm` runs, when it is one the table knows.
pub fn graceful_stop(comm: &str) -> Option<&'static GracefulStop> {
    GRACEFUL_STOPS
        .iter()
        .find(|(prefix, _)| comm.starts_with(prefix))
        .map(|(_, g)| g)
}

fn names(signals: &[Signal]) -> String {
    signals
        .iter()
        .map(Signal::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Who sent the SIGKILL that ended a `killed` termination, and after how long.
#[derive(Debug, Clone, PartialEq)]
pub enum KillSource {
    /// From outside the container (a runtime, kubelet): `after_ms` since the first stop signal
    /// when that was another signal.
    Outside {
        sender: String,
        after_ms: Option<f64>,
    },
    /// A supervisor inside the container escalated: `after` its own earlier signal, which
    /// the target ran its own handler for (`handled`).
    Inside {
        sender: Proc,
        target: Proc,
        after: Option<(f64, Signal)>,
        handled: bool,
    },
    Unknown,
}

/// What the summary is made from.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub outcome: Outcome,
    /// The target of the first stop signal from outside.
    pub main: &'a Proc,
    /// The first stop signal from outside (other than SIGKILL, when one came).
    pub signal: Option<Signal>,
    /// That signal never reached the app: ignored (`SIG_IGN`, or PID 1 of a PID namespace
    /// without a handler).
    pub signal_ignored: bool,
    /// The main process ran its own handler for that signal.
    pub signal_handled: bool,
    /// The process that died of a stop signal's default action, and the signal.
    pub no_handler: Option<(&'a Proc, Signal)>,
    pub kill: KillSource,
    pub served: &'a Counts,
    pub outbound: &'a Counts,
    pub shutdown_ms: f64,
    /// Latest late acceptance and refusal, ms after the stop signal.
    pub latest_late_ms: Option<f64>,
    pub latest_refusal_ms: Option<f64>,
    pub activity_missing: bool,
}

/// A duration for people: milliseconds below a second, seconds above.
pub fn secs(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

fn cut_detail(c: &Counts) -> String {
    let mut parts = Vec::new();
    for (n, what) in [
        (c.reset_by_app, "reset by the app"),
        (
            c.closed_by_exit,
            "closed by the kernel when the process died",
        ),
        (
            c.closed_unanswered,
            "closed by the app before answering the request it had read",
        ),
        (c.refused, "refused after the listener closed"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    parts.join(", ")
}

/// "3 connection(s) were cut (2 reset by the app, ...)" or "no connection was cut".
fn cut_clause(c: &Counts) -> String {
    if c.cut > 0 {
        format!("{} connection(s) were cut ({})", c.cut, cut_detail(c))
    } else {
        "no connection was cut".into()
    }
}

/// The sentences of a report, first the one that says what happened.
pub fn summarize(i: &Input<'_>) -> Vec<String> {
    let mut out = Vec::new();
    let sig = i
        .signal
        .map_or_else(|| "the stop signal".into(), |s| s.to_string());
    let who = format!("{} (pid {})", i.main.comm, i.main.pid);
    let c = i.served;
    let program = graceful_stop(&i.main.comm);
    // A reload signal used as the stop signal: handled, and the process kept running.
    let reload = |comm: &str, s: Signal| {
        RELOAD_SIGNALS.contains(&s) && graceful_stop(comm).is_none_or(|p| !p.signals.contains(&s))
    };
    match i.outcome {
        Outcome::Graceful => out.push(format!(
            "{who} took {sig} and exited after {}; {} connection(s) completed, nothing was cut.",
            secs(i.shutdown_ms),
            c.completed + c.peer_closed_first
        )),
        Outcome::Cut => out.push(format!(
            "{who} took {sig} and exited after {}, but {} connection(s) were cut: {}.",
            secs(i.shutdown_ms),
            c.cut,
            cut_detail(c)
        )),
        Outcome::NoHandler => {
            let (dead, signal) = i.no_handler.map_or((i.main, Signal::TERM), |(p, s)| (p, s));
            // A program the table knows is not to be changed: it is to be sent its own
            // graceful stop (HAProxy's worker dies of SIGTERM by design).
            let fix = match graceful_stop(&dead.comm) {
                Some(p) if !p.signals.contains(&signal) => format!(
                    "Stop it with {} instead ({}'s graceful stop).",
                    names(p.signals),
                    p.program
                ),
                _ => format!("Handle {signal} in the app, or send a signal it handles."),
            };
            out.push(format!(
                "{} (pid {}) has no handler for {}: its default action killed the process at \
                 once; {}. {fix}",
                dead.comm,
                dead.pid,
                signal,
                cut_clause(c),
            ));
        }
        Outcome::Killed => {
            let (from, grace) = match &i.kill {
                KillSource::Outside { sender, after_ms } => (
                    format!(" from {sender}"),
                    after_ms.map_or_else(String::new, |ms| format!(" {} after {sig}", secs(ms))),
                ),
                KillSource::Inside {
                    sender,
                    target,
                    after,
                    ..
                } => (
                    format!(
                        " from {} (pid {}) inside the container, to {} (pid {})",
                        sender.comm, sender.pid, target.comm, target.pid
                    ),
                    after.map_or_else(String::new, |(ms, s)| {
                        format!(" {} after its {s}", secs(ms))
                    }),
                ),
                KillSource::Unknown => (String::new(), String::new()),
            };
            if i.signal_ignored {
                out.push(format!(
                    "{who} never got {sig}: it was ignored (SIG_IGN, or the process is PID 1 of \
                     its PID namespace without a handler, e.g. a shell wrapper), so SIGKILL{from}\
                     {grace} ended it; {}. A longer grace period \
                     would not help: use `exec` in the entrypoint so the app itself receives \
                     {sig}, run an init that forwards signals (tini, dumb-init, `docker run \
                     --init`), or handle {sig}.",
                    cut_clause(c),
                ));
            } else if i.signal == Some(Signal::KILL) && matches!(i.kill, KillSource::Outside { .. })
            {
                // SIGKILL was the stop signal: no grace period at all.
                out.push(format!(
                    "{who} was killed by SIGKILL{from} with no stop signal before it: it had no \
                     chance to finish its work; {}. A longer grace period would not help: send \
                     a stop signal first and SIGKILL only after a grace period (`docker stop`, \
                     not `docker kill`; no force delete with a grace period of 0).",
                    cut_clause(c),
                ));
            } else if let Some((proc, s)) = match &i.kill {
                // The signal the SIGKILL followed, to the process it killed.
                KillSource::Inside {
                    target,
                    after: Some((_, s)),
                    handled: true,
                    ..
                } => Some((target, *s)),
                _ => i.signal.filter(|_| i.signal_handled).map(|s| (i.main, s)),
            }
            .filter(|(p, s)| reload(&p.comm, *s))
            {
                let stop = graceful_stop(&proc.comm)
                    .map_or_else(|| Signal::TERM.to_string(), |p| names(p.signals));
                out.push(format!(
                    "{} (pid {}) took {} as a reload and kept running, so SIGKILL{from}{grace} \
                     ended it; {}. A longer grace period would not \
                     help: stop it with {stop} instead of {} (the supervisor's stop signal, \
                     e.g. supervisord `stopsignal`, or STOPSIGNAL).",
                    proc.comm,
                    proc.pid,
                    s,
                    cut_clause(c),
                    s,
                ));
            } else if let KillSource::Inside {
                sender,
                target,
                after: Some((ms, s)),
                ..
            } = &i.kill
                && *ms < IMMEDIATE_KILL_MS
            {
                // A supervisor inside the container whose own shutdown kills its workers
                // right after signalling them: no grace period, outer or its own, was waited.
                let fix = match graceful_stop(&sender.comm) {
                    Some(p) if i.signal.is_none_or(|s| !p.signals.contains(&s)) => format!(
                        "stop it with {} instead ({}'s graceful stop)",
                        names(p.signals),
                        p.program
                    ),
                    _ => "stop it with the signal that makes it wait for its workers, or give \
                          its workers a shutdown timeout of their own"
                        .into(),
                };
                out.push(format!(
                    "{} (pid {}) killed {} (pid {}) with SIGKILL {} after its {s}, without \
                     waiting for it: its own shutdown on {sig} does not let its workers finish; \
                     {}. A longer grace period would not help: {fix}.",
                    sender.comm,
                    sender.pid,
                    target.comm,
                    target.pid,
                    secs(*ms),
                    cut_clause(c),
                ));
            } else {
                out.push(format!(
                    "{who} was killed by SIGKILL{from}{grace}: it did not finish within the \
                     grace period; {}. Lengthen the grace period \
                     or make the shutdown faster.",
                    cut_clause(c),
                ));
            }
        }
        Outcome::Ignored => out.push(format!(
            "{who} ignores {sig} (SIG_IGN, or it is PID 1 of its PID namespace without a \
             handler): the stop signal did nothing. Use `exec` in the entrypoint, an init that \
             forwards signals, or handle {sig}."
        )),
        Outcome::Survived if c.open > 0 => out.push(format!(
            "{who} took {sig} and was still serving {} open connection(s) {} later: it waits \
             for its clients to close them (a drain without a deadline); {} connection(s) were \
             cut{}.",
            c.open,
            secs(i.shutdown_ms),
            c.cut,
            if c.cut > 0 {
                format!(" ({})", cut_detail(c))
            } else {
                String::new()
            },
        )),
        Outcome::Survived => out.push(format!(
            "{who} took {sig} but its processes did not exit within {}, with no connection \
             open: it may reload on {sig} instead of stopping; {} connection(s) were cut{}.",
            secs(i.shutdown_ms),
            c.cut,
            if c.cut > 0 {
                format!(" ({})", cut_detail(c))
            } else {
                String::new()
            },
        )),
    }
    // The program's own graceful stop, when another signal was used and it hurt.
    let mut noted = false;
    if let (Some(p), Some(s)) = (program, i.signal)
        && !p.signals.contains(&s)
        && (c.cut > 0 || matches!(i.outcome, Outcome::Survived | Outcome::Killed))
    {
        out.push(p.note.to_string());
        noted = true;
    }
    // It took the stop signal and exited on its own, but its own close cut requests in flight
    // (no other signal of its would have drained them): what to change in the app — or, when
    // that signal is the program's graceful stop, what bounds that stop.
    let in_flight_cut = c.closed_by_exit + c.reset_by_app + c.closed_unanswered;
    if i.outcome == Outcome::Cut
        && !noted
        && in_flight_cut > 0
        && let Some(limit) = program.and_then(|p| p.drain_limit)
    {
        out.push(limit.to_string());
    } else if i.outcome == Outcome::Cut && !noted && in_flight_cut > 0 {
        out.push(format!(
            "It did not wait for the {} request(s) in flight: on {sig}, stop accepting new \
             connections, finish the requests already received, then exit (within the grace \
             period); clients that hold a request open (long polls, blocking calls) must retry \
             elsewhere.",
            in_flight_cut
        ));
    }
    if i.outbound.cut > 0 {
        out.push(format!(
            "{} outbound connection(s) of its own (upstreams, connection pools) were closed \
             abruptly: {}. They are counted apart from the connections it served.",
            i.outbound.cut,
            cut_detail(i.outbound)
        ));
    }
    let idle = c.closed_idle + i.outbound.closed_idle;
    if idle > 0 {
        out.push(format!(
            "{idle} idle keep-alive connection(s) were closed between requests: their peers \
             lost no response, but must reconnect (a request sent at that very moment fails)."
        ));
    }
    if c.peer_closed_first > 0 {
        out.push(format!(
            "{} connection(s) were closed after their clients had said goodbye (their FIN came \
             first): nothing was lost.",
            c.peer_closed_first
        ));
    }
    if let Some(max) = i.latest_refusal_ms {
        out.push(format!(
            "{} connection attempt(s) were refused after the listener closed, up to {} after \
             the stop signal: traffic still arrived (endpoint propagation delay). Keep serving \
             for longer after the stop signal (a preStop delay) before closing the listener.",
            c.refused,
            secs(max)
        ));
    }
    if let Some(max) = i.latest_late_ms {
        out.push(format!(
            "{} new connection(s) were accepted up to {} after the stop signal.",
            c.accepted_late,
            secs(max)
        ));
    }
    let by_peer = c.reset_by_peer + i.outbound.reset_by_peer;
    if by_peer > 0 {
        out.push(format!(
            "{by_peer} connection(s) were reset by the peer during the shutdown."
        ));
    }
    if i.activity_missing {
        out.push(
            "The kernel could not tell whether the closed connections were idle or in flight \
             (tcp_sock offsets unavailable, see `termscope doctor`): they are counted as cut."
                .into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, comm: &str) -> Proc {
        Proc {
            pid,
            comm: comm.into(),
        }
    }

    fn input<'a>(outcome: Outcome, main: &'a Proc, served: &'a Counts) -> Input<'a> {
        static NONE: Counts = Counts {
            completed: 0,
            reset_by_app: 0,
            closed_by_exit: 0,
            closed_unanswered: 0,
            closed_idle: 0,
            peer_closed_first: 0,
            reset_by_peer: 0,
            refused: 0,
            open: 0,
            accepted_late: 0,
            cut: 0,
        };
        Input {
            outcome,
            main,
            signal: Some(Signal::TERM),
            signal_ignored: false,
            signal_handled: true,
            no_handler: None,
            kill: KillSource::Outside {
                sender: "runc".into(),
                after_ms: Some(10_000.0),
            },
            served,
            outbound: &NONE,
            shutdown_ms: 10_000.0,
            latest_late_ms: None,
            latest_refusal_ms: None,
            activity_missing: false,
        }
    }

    #[test]
    fn the_table_knows_common_servers() {
        assert_eq!(
            graceful_stop("nginx").map(|g| g.signals),
            Some(&[Signal::QUIT][..])
        );
        assert_eq!(graceful_stop("uwsgi").map(|g| g.program), Some("uWSGI"));
        assert_eq!(
            graceful_stop("haproxy").map(|g| g.signals),
            Some(&[Signal::USR1][..])
        );
        assert!(graceful_stop("python3").is_none());
    }

    #[test]
    fn an_app_that_exits_on_its_stop_signal_without_draining() {
        let main = p(10, "redis-server");
        let c = Counts {
            closed_by_exit: 2,
            closed_idle: 3,
            cut: 2,
            ..Counts::default()
        };
        let s = summarize(&input(Outcome::Cut, &main, &c)).join(" ");
        assert!(
            s.contains("did not wait for the 2 request(s) in flight: on SIGTERM, stop accepting"),
            "{s}"
        );
        // Requests it closed in order without answering were in flight too.
        let unanswered = Counts {
            closed_unanswered: 1,
            closed_by_exit: 1,
            cut: 2,
            ..Counts::default()
        };
        let s = summarize(&input(Outcome::Cut, &main, &unanswered)).join(" ");
        assert!(
            s.contains("did not wait for the 2 request(s) in flight"),
            "{s}"
        );
        // Refusals alone are the listener's story (a preStop delay), not the app's drain.
        let refused = Counts {
            refused: 4,
            cut: 4,
            ..Counts::default()
        };
        let s = summarize(&input(Outcome::Cut, &main, &refused)).join(" ");
        assert!(!s.contains("did not wait"), "{s}");
        // A program with its own graceful signal gets that signal's note instead.
        let nginx = p(10, "nginx");
        let s = summarize(&input(Outcome::Cut, &nginx, &c)).join(" ");
        assert!(s.contains("stop it with SIGQUIT"), "{s}");
        assert!(!s.contains("did not wait"), "{s}");
    }

    #[test]
    fn a_graceful_stop_that_still_cut_names_what_bounds_it() {
        // PHP-FPM's SIGQUIT with process_control_timeout left at 0.
        let main = p(10, "php-fpm8.2");
        let c = Counts {
            closed_by_exit: 1,
            cut: 1,
            ..Counts::default()
        };
        let mut quit = input(Outcome::Cut, &main, &c);
        quit.signal = Some(Signal::QUIT);
        let s = summarize(&quit);
        assert!(s[1].contains("Set process_control_timeout"), "{s:?}");
        assert!(!s.join(" ").contains("did not wait"), "{s:?}");
        // A program without such a limit in the table keeps the generic sentence.
        let main = p(10, "nginx");
        let mut quit = input(Outcome::Cut, &main, &c);
        quit.signal = Some(Signal::QUIT);
        let s = summarize(&quit).join(" ");
        assert!(
            s.contains("did not wait for the 1 request(s) in flight"),
            "{s}"
        );
    }

    #[test]
    fn caddy_quit_at_once_is_told_its_graceful_stop() {
        // Caddy handles SIGQUIT by quitting at once: it is to be sent SIGTERM, not changed.
        let main = p(10, "caddy");
        let c = Counts {
            closed_by_exit: 1,
            closed_idle: 2,
            cut: 1,
            ..Counts::default()
        };
        let mut quit = input(Outcome::Cut, &main, &c);
        quit.signal = Some(Signal::QUIT);
        let s = summarize(&quit).join(" ");
        assert!(
            s.contains("Caddy stops gracefully on SIGTERM or SIGINT"),
            "{s}"
        );
        assert!(!s.contains("did not wait"), "{s}");
        // Its graceful stop that cut nothing has no note.
        let none = Counts::default();
        let s = summarize(&input(Outcome::Graceful, &main, &none)).join(" ");
        assert!(!s.contains("Caddy stops"), "{s}");
    }

    #[test]
    fn postgres_smart_shutdown_that_ran_into_sigkill() {
        let main = p(10, "postgres");
        let c = Counts {
            closed_by_exit: 3,
            cut: 3,
            ..Counts::default()
        };
        let s = summarize(&input(Outcome::Killed, &main, &c)).join(" ");
        assert!(s.contains("smart shutdown"), "{s}");
        assert!(s.contains("stop it with SIGINT"), "{s}");
        // Stopped with its fast shutdown, the note is not repeated.
        let mut fast = input(Outcome::Cut, &main, &c);
        fast.signal = Some(Signal::INT);
        let s = summarize(&fast).join(" ");
        assert!(!s.contains("smart shutdown"), "{s}");
    }

    /// SIGKILL with no stop signal before it: no grace period ran out.
    #[test]
    fn a_sigkill_without_a_stop_signal_is_not_a_grace_period_to_lengthen() {
        let main = p(10, "node");
        let c = Counts {
            closed_by_exit: 1,
            closed_idle: 2,
            cut: 1,
            ..Counts::default()
        };
        let i = Input {
            signal: Some(Signal::KILL),
            signal_handled: false,
            kill: KillSource::Outside {
                sender: "containerd-shim".into(),
                after_ms: None,
            },
            ..input(Outcome::Killed, &main, &c)
        };
        let s = summarize(&i);
        assert!(s[0].contains("with no stop signal before it"), "{s:?}");
        assert!(s[0].contains("1 connection(s) were cut"), "{s:?}");
        assert!(!s[0].contains("Lengthen"), "{s:?}");
        assert!(
            s.iter().any(|l| l.starts_with("2 idle keep-alive")),
            "{s:?}"
        );
    }

    #[test]
    fn a_grace_period_that_ran_out() {
        let main = p(10, "app");
        let c = Counts::default();
        let s = summarize(&input(Outcome::Killed, &main, &c));
        assert!(s[0].contains("10.0 s after SIGTERM"), "{s:?}");
        assert!(s[0].contains("Lengthen the grace period"), "{s:?}");
    }

    #[test]
    fn an_ignored_signal_is_not_a_grace_period_problem() {
        let main = p(1, "sh");
        let c = Counts::default();
        let i = Input {
            signal_ignored: true,
            signal_handled: false,
            ..input(Outcome::Killed, &main, &c)
        };
        let s = summarize(&i);
        assert!(s[0].contains("never got SIGTERM"), "{s:?}");
        assert!(
            s[0].contains("`exec`") && s[0].contains("forwards signals"),
            "{s:?}"
        );
        assert!(!s[0].contains("Lengthen"), "{s:?}");
    }

    #[test]
    fn a_reload_signal_used_to_stop() {
        let main = p(10, "python3");
        let c = Counts::default();
        let i = Input {
            signal: Some(Signal::HUP),
            ..input(Outcome::Killed, &main, &c)
        };
        let s = summarize(&i);
        assert!(s[0].contains("took SIGHUP as a reload"), "{s:?}");
        assert!(
            s[0].contains("stop it with SIGTERM instead of SIGHUP"),
            "{s:?}"
        );
        // nginx's reload signal: its graceful stop is named.
        let main = p(10, "nginx");
        let i = Input {
            signal: Some(Signal::HUP),
            ..input(Outcome::Killed, &main, &c)
        };
        let s = summarize(&i);
        assert!(
            s[0].contains("stop it with SIGQUIT instead of SIGHUP"),
            "{s:?}"
        );
        // HAProxy's SIGUSR1 is its soft stop, not a reload: the grace period ran out.
        let main = p(10, "haproxy");
        let i = Input {
            signal: Some(Signal::USR1),
            ..input(Outcome::Killed, &main, &c)
        };
        let s = summarize(&i);
        assert!(s[0].contains("Lengthen the grace period"), "{s:?}");
    }

    #[test]
    fn a_supervisor_configured_with_a_reload_signal() {
        let main = p(1, "supervisord");
        let c = Counts::default();
        let i = Input {
            kill: KillSource::Inside {
                sender: p(1, "supervisord"),
                target: p(7, "gunicorn"),
                after: Some((2_000.0, Signal::HUP)),
                handled: true,
            },
            ..input(Outcome::Killed, &main, &c)
        };
        let s = summarize(&i);
        assert!(
            s[0].starts_with("gunicorn (pid 7) took SIGHUP as a reload"),
            "{s:?}"
        );
        assert!(
            s[0].contains("stop it with SIGTERM instead of SIGHUP"),
            "{s:?}"
        );
        assert!(s[0].contains("2.0 s after its SIGHUP"), "{s:?}");
        // The same escalation after a stop signal: the grace period ran out.
        let i = Input {
            kill: KillSource::Inside {
                sender: p(1, "supervisord"),
                target: p(7, "gunicorn"),
                after: Some((2_000.0, Signal::TERM)),
                handled: true,
            },
            ..input(Outcome::Killed, &main, &c)
        };
        assert!(summarize(&i)[0].contains("Lengthen the grace period"));
    }

    #[test]
    fn a_supervisor_that_kills_its_workers_at_once() {
        // PHP-FPM's fast shutdown: its master sends its workers SIGTERM, then SIGKILL at once.
        let main = p(10, "php-fpm8.2");
        let c = Counts {
            closed_by_exit: 1,
            cut: 1,
            ..Counts::default()
        };
        let i = Input {
            kill: KillSource::Inside {
                sender: p(10, "php-fpm8.2"),
                target: p(11, "php-fpm8.2"),
                after: Some((0.01, Signal::TERM)),
                handled: false,
            },
            ..input(Outcome::Killed, &main, &c)
        };
        let s = summarize(&i);
        assert!(
            s[0].starts_with(
                "php-fpm8.2 (pid 10) killed php-fpm8.2 (pid 11) with SIGKILL 0.0 ms after its \
                 SIGTERM, without waiting for it"
            ),
            "{s:?}"
        );
        assert!(
            s[0].ends_with(
                "A longer grace period would not help: stop it with SIGQUIT instead (PHP-FPM's \
                 graceful stop)."
            ),
            "{s:?}"
        );
        assert!(!s.join(" ").contains("Lengthen"), "{s:?}");
        // A supervisor the table does not know is told what to change in it.
        let i = Input {
            kill: KillSource::Inside {
                sender: p(10, "supervisor"),
                target: p(11, "worker"),
                after: Some((5.0, Signal::TERM)),
                handled: true,
            },
            ..input(Outcome::Killed, &main, &c)
        };
        let s = summarize(&i);
        assert!(
            s[0].contains("give its workers a shutdown timeout"),
            "{s:?}"
        );
        // One that waited for its own timeout first: the grace period ran out.
        let i = Input {
            kill: KillSource::Inside {
                sender: p(10, "supervisor"),
                target: p(11, "worker"),
                after: Some((3_000.0, Signal::TERM)),
                handled: true,
            },
            ..input(Outcome::Killed, &main, &c)
        };
        assert!(summarize(&i)[0].contains("Lengthen the grace period"));
    }

    #[test]
    fn the_process_without_a_handler_is_named() {
        let main = p(10, "master");
        let worker = p(11, "worker");
        let c = Counts::default();
        let i = Input {
            no_handler: Some((&worker, Signal::TERM)),
            ..input(Outcome::NoHandler, &main, &c)
        };
        let s = summarize(&i);
        assert!(
            s[0].starts_with("worker (pid 11) has no handler for SIGTERM"),
            "{s:?}"
        );
    }

    #[test]
    fn a_known_program_without_a_handler_is_sent_its_graceful_stop() {
        // HAProxy's worker dies of SIGTERM by design: not "handle SIGTERM in the app".
        let main = p(10, "haproxy");
        let worker = p(11, "haproxy");
        let c = Counts {
            closed_by_exit: 2,
            cut: 2,
            ..Counts::default()
        };
        let i = Input {
            no_handler: Some((&worker, Signal::TERM)),
            ..input(Outcome::NoHandler, &main, &c)
        };
        let s = summarize(&i);
        assert!(
            s[0].starts_with("haproxy (pid 11) has no handler for SIGTERM"),
            "{s:?}"
        );
        assert!(
            s[0].ends_with("Stop it with SIGUSR1 instead (HAProxy's graceful stop)."),
            "{s:?}"
        );
        assert!(!s[0].contains("in the app"), "{s:?}");
        // An app the table does not know keeps the general advice.
        let main = p(10, "python3");
        let i = Input {
            no_handler: Some((&main, Signal::TERM)),
            ..input(Outcome::NoHandler, &main, &c)
        };
        assert!(
            summarize(&i)[0].ends_with("Handle SIGTERM in the app, or send a signal it handles.")
        );
        // lighttpd: SIGTERM is its immediate stop, SIGINT its graceful one.
        assert_eq!(
            graceful_stop("lighttpd").map(|g| g.signals),
            Some(&[Signal::INT][..])
        );
    }

    #[test]
    fn requests_closed_unanswered_are_cut_and_named() {
        let main = p(10, "apache2");
        let c = Counts {
            closed_unanswered: 2,
            closed_idle: 2,
            cut: 2,
            ..Counts::default()
        };
        let s = summarize(&input(Outcome::Cut, &main, &c));
        assert!(
            s[0].contains(
                "but 2 connection(s) were cut: 2 closed by the app before answering the \
                 request it had read"
            ),
            "{s:?}"
        );
        assert!(s.iter().any(|l| l.contains("SIGWINCH")), "{s:?}");
    }

    #[test]
    fn a_server_waiting_for_its_clients_is_not_a_reload() {
        let main = p(10, "app");
        let c = Counts {
            open: 2,
            ..Counts::default()
        };
        let s = summarize(&input(Outcome::Survived, &main, &c));
        assert!(s[0].contains("still serving 2 open connection(s)"), "{s:?}");
        assert!(!s[0].contains("reload"), "{s:?}");
        let none = Counts::default();
        let s = summarize(&input(Outcome::Survived, &main, &none));
        assert!(s[0].contains("may reload"), "{s:?}");
    }

    #[test]
    fn the_programs_graceful_signal_when_another_one_hurt() {
        let main = p(10, "nginx: master process");
        let c = Counts {
            closed_by_exit: 2,
            cut: 2,
            ..Counts::default()
        };
        let s = summarize(&input(Outcome::Cut, &main, &c));
        assert!(
            s.iter().any(|l| l.contains("stop it with SIGQUIT")),
            "{s:?}"
        );
        // The right signal: nothing more to say.
        let i = Input {
            signal: Some(Signal::QUIT),
            ..input(Outcome::Cut, &main, &c)
        };
        assert!(!summarize(&i).iter().any(|l| l.contains("fast shutdown")));
    }

    #[test]
    fn outbound_idle_and_goodbye_sentences() {
        let main = p(10, "haproxy");
        let served = Counts {
            completed: 1,
            peer_closed_first: 2,
            closed_idle: 1,
            ..Counts::default()
        };
        let outbound = Counts {
            reset_by_app: 3,
            cut: 3,
            ..Counts::default()
        };
        let i = Input {
            signal: Some(Signal::USR1),
            outbound: &outbound,
            ..input(Outcome::Graceful, &main, &served)
        };
        let s = summarize(&i);
        assert!(
            s[0].contains("3 connection(s) completed, nothing was cut"),
            "{s:?}"
        );
        assert!(
            s.iter().any(|l| l.starts_with("3 outbound connection(s)")),
            "{s:?}"
        );
        assert!(
            s.iter().any(|l| l.starts_with("1 idle keep-alive")),
            "{s:?}"
        );
        assert!(
            s.iter()
                .any(|l| l.starts_with("2 connection(s) were closed after")),
            "{s:?}"
        );
    }
}
