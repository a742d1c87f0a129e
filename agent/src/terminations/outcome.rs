//! How a termination ended: the facts the engine measured, and the rule that picks the
//! outcome and the flags from them.

use super::report::{Counts, Flag, Outcome};

/// What the engine measured, as the outcome rule needs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts {
    /// Processes were still alive when the report was made.
    pub survived: bool,
    /// SIGKILL ended it: from outside, or a supervisor's escalation inside.
    pub killed: bool,
    /// A process died of a stop signal's default action.
    pub no_handler: bool,
    /// A stop signal was ignored (`SIG_IGN`, or PID 1 of a PID namespace without a handler).
    pub ignored: bool,
    /// The connections the container served.
    pub served: Counts,
    /// Its own outbound connections.
    pub outbound: Counts,
    /// Some close needed the socket's activity and the kernel could not read it.
    pub activity_missing: bool,
}

impl Facts {
    /// Most telling first. Cuts of the container's own outbound connections (an upstream
    /// pool reset on a graceful stop) do not make the outcome `cut`: they are flagged
    /// `outbound_cut` and named in the summary.
    pub fn outcome(&self) -> Outcome {
        if self.survived && !self.ignored {
            Outcome::Survived
        } else if self.killed {
            Outcome::Killed
        } else if self.no_handler {
            Outcome::NoHandler
        } else if self.ignored {
            Outcome::Ignored
        } else if self.served.cut > 0 {
            Outcome::Cut
        } else {
            Outcome::Graceful
        }
    }

    /// Every condition that holds, in the order of [`Flag::ALL`].
    pub fn flags(&self) -> Vec<Flag> {
        let late = self.served.accepted_late > 0 || self.served.refused > 0;
        [
            (self.served.cut > 0, Flag::Cut),
            (self.outbound.cut > 0, Flag::OutboundCut),
            (self.killed, Flag::Killed),
            (self.no_handler, Flag::NoHandler),
            (self.ignored, Flag::Ignored),
            (self.survived, Flag::Survived),
            (late, Flag::LateTraffic),
            (
                self.served.reset_by_peer + self.outbound.reset_by_peer > 0,
                Flag::ResetByPeer,
            ),
            (
                self.served.closed_idle + self.outbound.closed_idle > 0,
                Flag::ClosedIdle,
            ),
            (self.activity_missing, Flag::ActivityUnavailable),
        ]
        .into_iter()
        .filter_map(|(on, flag)| on.then_some(flag))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(n: u32) -> Counts {
        Counts {
            closed_by_exit: n,
            cut: n,
            ..Counts::default()
        }
    }

    #[test]
    fn outbound_cuts_alone_do_not_make_a_cut() {
        let f = Facts {
            outbound: cut(3),
            ..Facts::default()
        };
        assert_eq!(f.outcome(), Outcome::Graceful);
        assert_eq!(f.flags(), [Flag::OutboundCut]);
        let f = Facts {
            served: cut(1),
            outbound: cut(3),
            ..Facts::default()
        };
        assert_eq!(f.outcome(), Outcome::Cut);
        assert_eq!(f.flags(), [Flag::Cut, Flag::OutboundCut]);
    }

    #[test]
    fn idle_closes_are_flagged_but_not_cut() {
        let f = Facts {
            served: Counts {
                closed_idle: 4,
                ..Counts::default()
            },
            ..Facts::default()
        };
        assert_eq!(f.outcome(), Outcome::Graceful);
        assert_eq!(f.flags(), [Flag::ClosedIdle]);
    }

    #[test]
    fn the_order_of_outcomes() {
        let all = Facts {
            survived: true,
            killed: true,
            no_handler: true,
            ignored: true,
            served: cut(1),
            ..Facts::default()
        };
        // Ignored and still alive: the signal did nothing.
        assert_eq!(all.outcome(), Outcome::Killed);
        let f = Facts {
            ignored: false,
            ..all
        };
        assert_eq!(f.outcome(), Outcome::Survived);
        let f = Facts {
            survived: false,
            killed: false,
            ..all
        };
        assert_eq!(f.outcome(), Outcome::NoHandler);
        let f = Facts {
            survived: false,
            killed: false,
            no_handler: false,
            ..all
        };
        assert_eq!(f.outcome(), Outcome::Ignored);
    }

    #[test]
    fn missing_activity_is_flagged() {
        let f = Facts {
            activity_missing: true,
            served: cut(1),
            ..Facts::default()
        };
        assert_eq!(f.flags(), [Flag::Cut, Flag::ActivityUnavailable]);
    }
}
