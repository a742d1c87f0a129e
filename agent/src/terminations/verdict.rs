//! One connection's story during a termination, and the rule that turns it into a
//! [`Verdict`]: what its peer really lost.

use std::net::SocketAddr;

use super::{
    activity::{InFlight, Role},
    report::Verdict,
};
use crate::decode::{CloseActivity, TcpState};

/// What the engine knows of one connection. Kept small (a termination may hold hundreds of
/// thousands): no string of its own — the closing process is a pid named from the
/// termination's processes, a reset reason an index into the termination's reasons.
#[derive(Debug, Clone)]
pub struct Conn {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub established_ns: u64,
    pub closed_ns: Option<u64>,
    /// What was in flight at the container's close, when the kernel could read it.
    pub in_flight: Option<InFlight>,
    /// The process (tgid) whose exit closed it, when the close ran in it; 0 unknown.
    pub closed_by: u32,
    /// The kernel's reason for the reset sent on it: 1 + its index in the termination's
    /// reasons; 0 none.
    pub reset_reason: u16,
    pub inbound: Option<bool>,
    pub closed_by_exit: bool,
    pub reset_sent: bool,
    pub reset_received: bool,
    /// The container's close came after the peer's FIN (from CLOSE_WAIT).
    pub peer_closed_first: bool,
    /// Whether the container's first close transition was seen (with or without activity).
    pub close_seen: bool,
}

impl Conn {
    pub fn new(
        local: SocketAddr,
        remote: SocketAddr,
        inbound: Option<bool>,
        established_ns: u64,
    ) -> Self {
        Conn {
            local,
            remote,
            inbound,
            established_ns,
            closed_ns: None,
            in_flight: None,
            closed_by: 0,
            reset_reason: 0,
            closed_by_exit: false,
            reset_sent: false,
            reset_received: false,
            peer_closed_first: false,
            close_seen: false,
        }
    }

    /// What a later source knows of the connection's origin, where this one did not: a
    /// connection first met through a reset (whose event carries no establishment time) learns
    /// when it was established from its kernel record or state event, whichever comes after
    /// it, and a direction from one that knows it.
    pub fn learn_origin(&mut self, inbound: Option<bool>, established_ns: u64) {
        if self.established_ns == 0 {
            self.established_ns = established_ns;
        }
        if self.inbound.is_none() {
            self.inbound = inbound;
        }
    }

    /// Records the container's close (the first one counts: a later CLOSE after FIN_WAIT is
    /// not the moment the container let go).
    pub fn on_close(&mut self, old: TcpState, activity: Option<&CloseActivity>) {
        if self.close_seen {
            return;
        }
        self.close_seen = true;
        let peer_fin = old == TcpState::CloseWait;
        self.peer_closed_first = peer_fin;
        self.in_flight = activity.map(|a| InFlight::of(a, peer_fin));
    }

    /// Which end of the exchange the container was on: the client of its own outbound
    /// connections, the server of the others (accepted, or of unknown direction).
    pub fn role(&self) -> Role {
        if self.inbound == Some(false) {
            Role::Client
        } else {
            Role::Server
        }
    }

    /// Whether the peer was left waiting at the container's close: `Some(true)` it lost a
    /// request or its answer, `Some(false)` idle, `None` unknown (the kernel could not read
    /// the socket).
    pub fn lost_something(&self) -> Option<bool> {
        let role = self.role();
        self.in_flight.map(|f| f.lost_something(role))
    }

    /// The rule, most telling first:
    /// 1. closed by the exit of its process, or reset by the container: a cut
    ///    (`closed_by_exit` / `reset_by_app`) unless the socket shows the peer was not
    ///    waiting for anything — then `peer_closed_first` when its FIN came first, else
    ///    `closed_idle`. Without the socket's activity, a close after the peer's FIN is
    ///    `peer_closed_first` (it said goodbye) and any other stays a cut;
    /// 2. a reset from the peer: `reset_by_peer`;
    /// 3. closed otherwise (an orderly FIN exchange): `completed` — unless the container
    ///    accepted it and closed it in order over a request it had read and never answered
    ///    (`closed_unanswered`: its client got an end of stream instead of the answer);
    ///    else `open`.
    pub fn verdict(&self) -> Verdict {
        let abrupt = self.closed_by_exit || (self.reset_sent && !self.reset_received);
        if abrupt {
            return match (self.lost_something(), self.peer_closed_first) {
                (Some(true), _) | (None, false) => {
                    if self.closed_by_exit {
                        Verdict::ClosedByExit
                    } else {
                        Verdict::ResetByApp
                    }
                }
                (Some(false), true) | (None, true) => Verdict::PeerClosedFirst,
                (Some(false), false) => Verdict::ClosedIdle,
            };
        }
        if self.reset_sent {
            // Both sides reset: the container's reset answered the peer's, or crossed it.
            return Verdict::ResetByApp;
        }
        if self.reset_received {
            Verdict::ResetByPeer
        } else if self.closed_ns.is_some() {
            if self.inbound == Some(true) && self.in_flight.is_some_and(|f| f.unanswered()) {
                Verdict::ClosedUnanswered
            } else {
                Verdict::Completed
            }
        } else {
            Verdict::Open
        }
    }

    /// The close was one the idle / in-flight rule needed, but the kernel could not read
    /// the socket's activity.
    pub fn activity_missing(&self) -> bool {
        (self.closed_by_exit || self.reset_sent) && self.close_seen && self.in_flight.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Conn {
        Conn::new(
            "10.0.0.5:8080".parse().expect("addr"),
            "10.0.0.9:40000".parse().expect("addr"),
            Some(true),
            1,
        )
    }

    fn idle() -> CloseActivity {
        CloseActivity {
            rcv_nxt: 1100,
            copied_seq: 1100,
            snd_wl1: 1100,
            write_seq: 9,
            snd_una: 9,
            quiet_us: 5_000_000,
        }
    }

    /// A request received (1100..1180) and never read.
    fn busy() -> CloseActivity {
        CloseActivity {
            rcv_nxt: 1180,
            ..idle()
        }
    }

    /// A request received and read (1100..1180), nothing written after it; on an outbound
    /// connection, the upstream's answer received and read.
    fn read() -> CloseActivity {
        CloseActivity {
            rcv_nxt: 1180,
            copied_seq: 1180,
            ..idle()
        }
    }

    #[test]
    fn closes_are_the_containers_own() {
        assert!(TcpState::is_close(TcpState::CloseWait, TcpState::LastAck));
        assert!(TcpState::is_close(TcpState::Established, TcpState::Close));
        assert!(!TcpState::is_close(TcpState::FinWait1, TcpState::Close));
    }

    #[test]
    fn an_exit_with_a_request_in_flight_is_a_cut() {
        let mut c = conn();
        c.closed_by_exit = true;
        c.on_close(TcpState::Established, Some(&busy()));
        assert_eq!(c.verdict(), Verdict::ClosedByExit);
        assert!(c.verdict().is_cut());
    }

    #[test]
    fn an_exit_on_an_idle_connection_is_not_a_cut() {
        let mut c = conn();
        c.closed_by_exit = true;
        c.on_close(TcpState::Established, Some(&idle()));
        assert_eq!(c.verdict(), Verdict::ClosedIdle);
        assert!(!c.verdict().is_cut());
    }

    #[test]
    fn an_exit_after_the_peers_goodbye_lost_nothing() {
        let mut c = conn();
        c.closed_by_exit = true;
        let mut a = idle();
        a.rcv_nxt += 1; // the FIN
        c.on_close(TcpState::CloseWait, Some(&a));
        assert_eq!(c.verdict(), Verdict::PeerClosedFirst);
        // Without the socket's activity the FIN alone tells it.
        let mut c = conn();
        c.closed_by_exit = true;
        c.on_close(TcpState::CloseWait, None);
        assert_eq!(c.verdict(), Verdict::PeerClosedFirst);
    }

    #[test]
    fn a_request_and_fin_never_read_were_cut() {
        let mut c = conn();
        c.closed_by_exit = true;
        let mut a = busy();
        a.rcv_nxt += 1;
        a.copied_seq = 1100;
        c.on_close(TcpState::CloseWait, Some(&a));
        assert_eq!(c.verdict(), Verdict::ClosedByExit);
    }

    #[test]
    fn without_activity_an_exit_stays_a_cut() {
        let mut c = conn();
        c.closed_by_exit = true;
        c.on_close(TcpState::Established, None);
        assert_eq!(c.verdict(), Verdict::ClosedByExit);
        assert!(c.activity_missing());
    }

    #[test]
    fn a_reset_of_an_idle_connection_is_idle_and_of_unread_data_a_cut() {
        let mut c = conn();
        c.reset_sent = true;
        c.on_close(TcpState::Established, Some(&idle()));
        assert_eq!(c.verdict(), Verdict::ClosedIdle);
        let mut c = conn();
        c.reset_sent = true;
        let mut a = busy();
        a.copied_seq = 1100; // 80 bytes unread: the kernel's reset for unread data
        c.on_close(TcpState::Established, Some(&a));
        assert_eq!(c.verdict(), Verdict::ResetByApp);
    }

    #[test]
    fn only_the_first_close_counts() {
        let mut c = conn();
        c.closed_by_exit = true;
        c.on_close(TcpState::Established, Some(&busy()));
        c.on_close(TcpState::CloseWait, Some(&idle()));
        assert_eq!(c.verdict(), Verdict::ClosedByExit);
    }

    #[test]
    fn an_orderly_close_over_an_unanswered_request_is_a_cut() {
        // Apache httpd on SIGTERM: its child shuts the client's socket down (FIN) while the
        // request waits for its upstream.
        let mut c = conn();
        c.on_close(TcpState::Established, Some(&read()));
        c.closed_ns = Some(5);
        assert_eq!(c.verdict(), Verdict::ClosedUnanswered);
        assert!(c.verdict().is_cut());
        // An idle keep-alive connection closed in order: completed.
        let mut c = conn();
        c.on_close(TcpState::Established, Some(&idle()));
        c.closed_ns = Some(5);
        assert_eq!(c.verdict(), Verdict::Completed);
        // The answer written and our FIN right behind it (`Connection: close`): completed.
        let mut c = conn();
        let mut a = read();
        a.write_seq = 409;
        c.on_close(TcpState::Established, Some(&a));
        c.closed_ns = Some(5);
        assert_eq!(c.verdict(), Verdict::Completed);
        // Its own outbound connection closed in order after the upstream's answer (which
        // came last): completed, whatever the server rule would say.
        let mut c = conn();
        c.inbound = Some(false);
        c.on_close(TcpState::Established, Some(&read()));
        c.closed_ns = Some(5);
        assert_eq!(c.verdict(), Verdict::Completed);
    }

    #[test]
    fn an_idle_upstream_pool_connection_closed_by_exit_is_idle() {
        // The upstream's answer (1100..1180) came last and was read, quiet since.
        let mut c = conn();
        c.inbound = Some(false);
        c.closed_by_exit = true;
        c.on_close(TcpState::Established, Some(&read()));
        assert_eq!(c.verdict(), Verdict::ClosedIdle);
        // Our request acknowledged and not answered yet: the upstream's work is cut.
        let mut c = conn();
        c.inbound = Some(false);
        c.closed_by_exit = true;
        c.on_close(TcpState::Established, Some(&idle()));
        assert_eq!(c.verdict(), Verdict::ClosedByExit);
    }

    #[test]
    fn resets_from_the_peer_and_orderly_closes() {
        let mut c = conn();
        c.reset_received = true;
        assert_eq!(c.verdict(), Verdict::ResetByPeer);
        let mut c = conn();
        c.closed_ns = Some(5);
        assert_eq!(c.verdict(), Verdict::Completed);
        assert_eq!(conn().verdict(), Verdict::Open);
    }
}
