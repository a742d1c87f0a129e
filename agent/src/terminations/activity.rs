//! What was in flight on a connection at the moment the container closed it, from the socket's
//! own sequence numbers (read by the kernel program at the close transition).
//!
//! Who spoke last tells it. `rcv_nxt - snd_wl1` (`after_last_ack_bytes`) is the data of the
//! peer's latest segment when that segment carried data, and 0 once the peer has sent a bare
//! acknowledgement since: it is > 0 when the peer spoke last.
//!
//! On a connection the container **served** (it accepted it), the peer lost something when,
//! at the close:
//! - it had sent bytes the application never read (`rcv_nxt - copied_seq`, not counting the
//!   peer's FIN), or
//! - it had not closed its side (no FIN from it yet) and the connection was not idle:
//!   - it spoke last: it sent bytes after its last acknowledgement of our data (a request
//!     that arrived after our previous answer was acknowledged, not yet answered), or
//!   - data of ours was still unacknowledged (`write_seq != snd_una`: an answer on its way,
//!     perhaps cut short), or
//!   - a segment went either way less than [`IDLE_AFTER_US`] before the close (an answer
//!     still streaming between two writes).
//!
//! On the container's own **outbound** connections (it is the client: upstreams, pools) the
//! roles turn round: the peer speaking last is its answer having arrived, the normal state of
//! an idle pooled connection. There the peer was left with something when data was unread or
//! unacknowledged, when it had acknowledged our request and not answered yet (it spoke last
//! with a bare acknowledgement: `after_last_ack_bytes == 0`), or when its answer may still
//! have been streaming (a segment less than [`IDLE_AFTER_US`] before the close).
//!
//! A peer whose FIN came first said goodbye: what it sent last was read, and it expects
//! nothing more (the rare client that half-closes and still waits for an answer is the
//! exception, stated in `docs/report.md`).
//!
//! Otherwise the connection was idle: the peer's last request was answered and acknowledged
//! and the connection had been quiet for [`IDLE_AFTER_US`]; closing it costs the peer no
//! more than a reconnect. The limits, stated in `docs/report.md`: an answer the server stopped
//! writing half-way, then left quiet for that long, looks the same as a finished one at the
//! TCP level; and an outbound connection reset right after its answer arrived looks the same
//! as one whose answer was still streaming.
//!
//! An orderly close (our FIN, no reset) of a served connection usually finishes an exchange,
//! but one whose peer spoke last while nothing of ours was left unacknowledged closed over a
//! request that was read and never answered ([`InFlight::unanswered`]): the client gets an end
//! of stream instead of its answer.

use serde::{Deserialize, Serialize};

use crate::decode::CloseActivity;

/// A connection quiet for this long (no segment either way) with nothing pending is idle;
/// one with traffic more recent than that may be streaming an answer between two writes.
pub const IDLE_AFTER_US: u32 = 2_000_000;

/// Which end of the exchange the container was on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It served the connection (accepted it, or of unknown direction): the peer is a client.
    Server,
    /// Its own outbound connection: the peer is its upstream.
    Client,
}

/// The decision about one close, with the byte counts behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// Bytes of the peer's the application never read.
    pub unread_bytes: u32,
    /// Bytes the peer sent after its last acknowledgement of our data.
    pub after_last_ack_bytes: u32,
    /// Bytes we wrote that the peer had not acknowledged yet.
    pub unacked_bytes: u32,
    /// The peer's FIN had arrived: it closed first.
    pub peer_closed: bool,
    /// Microseconds since the connection's last segment either way.
    pub quiet_us: u32,
}

impl InFlight {
    /// Reads `a`, taken at a close; `peer_fin`: the peer's FIN had arrived (the socket was in
    /// CLOSE_WAIT), which takes one sequence number that is not data.
    pub fn of(a: &CloseActivity, peer_fin: bool) -> Self {
        let fin = u32::from(peer_fin);
        let ahead = |to: u32, from: u32| -> u32 {
            // Sequence numbers wrap; a "negative" distance is none.
            let d = to.wrapping_sub(from) as i32;
            u32::try_from(d).unwrap_or(0)
        };
        InFlight {
            unread_bytes: ahead(a.rcv_nxt, a.copied_seq).saturating_sub(fin),
            after_last_ack_bytes: ahead(a.rcv_nxt, a.snd_wl1).saturating_sub(fin),
            unacked_bytes: ahead(a.write_seq, a.snd_una),
            peer_closed: peer_fin,
            quiet_us: a.quiet_us,
        }
    }

    /// Whether the peer was waiting for something the close took from it, the container being
    /// on the `role` end of the exchange.
    pub fn lost_something(&self, role: Role) -> bool {
        let waiting = match role {
            // A request after our last answer was acknowledged.
            Role::Server => self.after_last_ack_bytes > 0,
            // Our request acknowledged, no answer since.
            Role::Client => self.after_last_ack_bytes == 0,
        };
        self.unread_bytes > 0
            || (!self.peer_closed
                && (waiting || self.unacked_bytes > 0 || self.quiet_us < IDLE_AFTER_US))
    }

    /// At an orderly close of a connection the container served: the peer's request was read
    /// and nothing was written after it (the peer spoke last, nothing of ours unacknowledged,
    /// no FIN from it). Its client gets an end of stream instead of an answer.
    pub fn unanswered(&self) -> bool {
        !self.peer_closed && self.after_last_ack_bytes > 0 && self.unacked_bytes == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quiet for 5 s.
    fn act(rcv_nxt: u32, copied: u32, wl1: u32, write: u32, una: u32) -> CloseActivity {
        CloseActivity {
            rcv_nxt,
            copied_seq: copied,
            snd_wl1: wl1,
            write_seq: write,
            snd_una: una,
            quiet_us: 5_000_000,
        }
    }

    #[test]
    fn an_answered_request_acknowledged_by_the_peer_is_idle() {
        // Request 1000..1100 read; answer 5000..5400 written and acknowledged by a segment at
        // 1100 (the peer's next sequence number).
        let f = InFlight::of(&act(1100, 1100, 1100, 5400, 5400), false);
        assert!(!f.lost_something(Role::Server), "{f:?}");
        assert_eq!(f.after_last_ack_bytes, 0);
    }

    #[test]
    fn a_request_read_but_not_answered_is_in_flight() {
        // The second request (1100..1180) came after the peer acknowledged our last answer.
        let f = InFlight::of(&act(1180, 1180, 1100, 5400, 5400), false);
        assert!(f.lost_something(Role::Server));
        assert_eq!(f.after_last_ack_bytes, 80);
    }

    #[test]
    fn a_request_never_read_is_in_flight() {
        let f = InFlight::of(&act(1180, 1100, 1100, 5400, 5400), false);
        assert_eq!(f.unread_bytes, 80);
        assert!(f.lost_something(Role::Server));
    }

    #[test]
    fn an_answer_still_on_its_way_may_be_cut_short() {
        // Written and not acknowledged: the process may have had more to write.
        let f = InFlight::of(&act(1180, 1180, 1100, 5900, 5400), false);
        assert_eq!(f.unacked_bytes, 500);
        assert!(f.lost_something(Role::Server));
    }

    #[test]
    fn a_recent_segment_means_an_answer_may_still_be_streaming() {
        // Everything acknowledged, but we sent 300 ms before the close (a rate-limited
        // download between two writes).
        let mut a = act(1100, 1100, 1100, 5400, 5400);
        a.quiet_us = 300_000;
        assert!(InFlight::of(&a, false).lost_something(Role::Server));
        a.quiet_us = IDLE_AFTER_US;
        assert!(!InFlight::of(&a, false).lost_something(Role::Server));
        // After the peer's goodbye the recent FIN does not count.
        a.quiet_us = 10;
        a.rcv_nxt += 1;
        assert!(!InFlight::of(&a, true).lost_something(Role::Server));
    }

    #[test]
    fn a_fresh_connection_without_data_is_idle() {
        let f = InFlight::of(&act(1, 1, 1, 1, 1), false);
        assert!(!f.lost_something(Role::Server));
    }

    #[test]
    fn the_peers_fin_is_not_data() {
        // Goodbye read, then the peer's FIN (one sequence number) arrived and was not read.
        let f = InFlight::of(&act(1101, 1100, 1100, 5400, 5400), true);
        assert_eq!((f.unread_bytes, f.after_last_ack_bytes), (0, 0));
        assert!(!f.lost_something(Role::Server));
        // Its goodbye message and FIN read, nothing answered: it expects nothing more.
        let f = InFlight::of(&act(1105, 1105, 1100, 5400, 5400), true);
        assert_eq!(f.after_last_ack_bytes, 4);
        assert!(!f.lost_something(Role::Server));
        // A request and FIN the application never read: in flight.
        let f = InFlight::of(&act(1181, 1100, 1100, 5400, 5400), true);
        assert_eq!(f.unread_bytes, 80);
        assert!(f.lost_something(Role::Server));
    }

    /// The container as the client (an upstream pool): the peer speaking last is its answer.
    #[test]
    fn an_outbound_connection_is_in_flight_while_its_request_waits() {
        // Our request 5000..5080 acknowledged by a bare ACK at 1100 (the upstream's next
        // sequence number): the upstream is working on it.
        let waiting = InFlight::of(&act(1100, 1100, 1100, 5080, 5080), false);
        assert!(waiting.lost_something(Role::Client));
        // Its 400-byte answer (1100..1500) arrived and was read: an idle pooled connection,
        // which the server rule would take for a request in flight.
        let answered = InFlight::of(&act(1500, 1500, 1100, 5080, 5080), false);
        assert!(!answered.lost_something(Role::Client));
        assert!(answered.lost_something(Role::Server));
        // The answer read but still streaming (its last segment 300 ms before the close).
        let mut a = act(1500, 1500, 1100, 5080, 5080);
        a.quiet_us = 300_000;
        assert!(InFlight::of(&a, false).lost_something(Role::Client));
        // Unread answer bytes, or our request unacknowledged: in flight either way.
        assert!(
            InFlight::of(&act(1500, 1100, 1100, 5080, 5080), false).lost_something(Role::Client)
        );
        assert!(
            InFlight::of(&act(1500, 1500, 1100, 5180, 5080), false).lost_something(Role::Client)
        );
        // The upstream closed first (Connection: close): nothing to lose.
        assert!(
            !InFlight::of(&act(1101, 1101, 1100, 5080, 5080), true).lost_something(Role::Client)
        );
    }

    #[test]
    fn an_orderly_close_over_an_unanswered_request() {
        // Request read, nothing written after it: unanswered.
        assert!(InFlight::of(&act(1180, 1180, 1100, 5400, 5400), false).unanswered());
        // Answer written, not yet acknowledged (a `Connection: close` answer and our FIN on
        // their way): answered.
        assert!(!InFlight::of(&act(1180, 1180, 1100, 5900, 5400), false).unanswered());
        // Answer acknowledged by a bare ACK: answered (idle).
        assert!(!InFlight::of(&act(1100, 1100, 1100, 5400, 5400), false).unanswered());
        // After the peer's goodbye: nothing expected.
        assert!(!InFlight::of(&act(1181, 1181, 1100, 5400, 5400), true).unanswered());
    }

    #[test]
    fn sequence_numbers_wrap() {
        let f = InFlight::of(&act(10, 10, u32::MAX - 9, 7, 7), false);
        assert_eq!(f.after_last_ack_bytes, 20);
        assert!(f.lost_something(Role::Server));
        // Behind (a stale snd_wl1 after a window-only update cannot be ahead): none.
        let f = InFlight::of(&act(10, 10, 20, 7, 7), false);
        assert_eq!(f.after_last_ack_bytes, 0);
    }
}
