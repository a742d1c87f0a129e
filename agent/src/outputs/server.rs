//! The HTTP server under the API: HTTP/1.1 with a cap on open connections and timeouts, so
//! that hostile or broken clients cannot exhaust the agent's memory or file descriptors, and
//! `/metrics` keeps answering while they try.
//!
//! - A connection that sends no complete request within [`Limits::request_timeout`] (a
//!   slowloris, or an idle keep-alive connection) is closed.
//! - A response not written out within [`Limits::response_timeout`] (a client that does not
//!   read) is abandoned and its connection closed.
//! - At most [`Limits::max_connections`] connections are open at once. A new connection over
//!   the cap closes the connection that has waited longest without a request in progress
//!   (so a flood of idle or slow connections cannot lock out a scraper that sends its request
//!   at once); when every connection has a request in progress, the new one is closed.
//! - Request heads are read into a buffer of at most [`MAX_BUF`] bytes.
//!
//! Each closed connection is counted in `termscope_api_connections_closed_total{reason}`
//! and the open ones in `termscope_api_connections` (docs/metrics.md).

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{
    sync::{Notify, Semaphore},
    time::Instant,
};
use tower::ServiceExt;

use crate::outputs::metrics::Metrics;

/// The largest read buffer of a connection (hyper's minimum is 8 KiB).
pub const MAX_BUF: usize = 16 * 1024;

/// The server's limits (`--api-max-connections`, docs/api.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    /// Longest wait for a complete request on a connection (new or kept alive).
    pub request_timeout: Duration,
    /// Longest time to write a response out.
    pub response_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            request_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the server closed a connection (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No complete request within the request timeout.
    RequestTimeout,
    /// The response was not written out within the response timeout.
    ResponseTimeout,
    /// Closed to make room for a new connection at the cap.
    Evicted,
    /// Refused at the cap: every open connection had a request in progress.
    Rejected,
}

impl Closed {
    pub const ALL: [Closed; 4] = [
        Closed::RequestTimeout,
        Closed::ResponseTimeout,
        Closed::Evicted,
        Closed::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Closed::RequestTimeout => "request_timeout",
            Closed::ResponseTimeout => "response_timeout",
            Closed::Evicted => "evicted",
            Closed::Rejected => "rejected",
        }
    }
}

/// One open connection: whether a request is in progress, and since when it is in its
/// current phase (waiting for a request, or answering one).
#[derive(Debug)]
struct Conn {
    phase: Mutex<Phase>,
    evict: Notify,
}

#[derive(Debug, Clone, Copy)]
struct Phase {
    /// Requests in progress (0 or 1 with HTTP/1.1 without pipelining).
    busy: usize,
    since: Instant,
}

impl Conn {
    fn new(now: Instant) -> Self {
        Conn {
            phase: Mutex::new(Phase {
                busy: 0,
                since: now,
            }),
            evict: Notify::new(),
        }
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn start_request(&self) {
        let mut p = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        if p.busy == 0 {
            p.since = Instant::now();
        }
        p.busy += 1;
    }

    fn end_request(&self) {
        let mut p = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        p.busy = p.busy.saturating_sub(1);
        if p.busy == 0 {
            p.since = Instant::now();
        }
    }

    /// When the current phase times out, and as what.
    fn deadline(&self, limits: &Limits) -> (Instant, Closed) {
        let p = self.phase();
        if p.busy > 0 {
            (p.since + limits.response_timeout, Closed::ResponseTimeout)
        } else {
            (p.since + limits.request_timeout, Closed::RequestTimeout)
        }
    }
}

/// The open connections.
#[derive(Debug, Default)]
struct Registry {
    next: u64,
    conns: HashMap<u64, Arc<Conn>>,
}

impl Registry {
    /// Makes room for one more connection under `cap`: evicts the connection idle the longest
    /// (no request in progress). `false`: every connection is answering a request.
    fn make_room(&mut self, cap: usize) -> bool {
        if self.conns.len() < cap.max(1) {
            return true;
        }
        let victim = self
            .conns
            .iter()
            .map(|(id, c)| (*id, c.phase()))
            .filter(|(_, p)| p.busy == 0)
            .min_by_key(|(_, p)| p.since)
            .map(|(id, _)| id);
        match victim.and_then(|id| self.conns.remove(&id)) {
            Some(conn) => {
                conn.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Marks its connection busy until the response body is written out (or dropped).
struct TrackedBody {
    inner: Body,
    conn: Arc<Conn>,
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.conn.end_request();
    }
}

impl http_body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes; then closes every
/// connection.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let registry = Arc::new(Mutex::new(Registry::default()));
    // One permit per open socket, held by its task until the socket is closed.
    let sockets = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors (EMFILE) and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "the HTTP API could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let conn = Arc::new(Conn::new(Instant::now()));
        {
            let mut reg = registry.lock().unwrap_or_else(PoisonError::into_inner);
            if !reg.make_room(limits.max_connections) {
                drop(reg);
                metrics.api_connection_closed(Closed::Rejected);
                drop(stream);
                continue;
            }
        }
        // An evicted connection's socket closes when its task ends: wait for that, so that the
        // sockets open (not only the connections counted) stay within the cap however fast
        // new ones arrive.
        let permit = match sockets.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::select! {
                permit = sockets.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = &mut shutdown => break,
            },
        };
        let id = {
            let mut reg = registry.lock().unwrap_or_else(PoisonError::into_inner);
            reg.next += 1;
            let id = reg.next;
            reg.conns.insert(id, conn.clone());
            metrics.set_api_connections(reg.conns.len());
            id
        };
        let (registry, metrics, router) = (registry.clone(), metrics.clone(), router.clone());
        tokio::spawn(async move {
            let closed = connection(stream, router, conn, &limits).await;
            let mut reg = registry.lock().unwrap_or_else(PoisonError::into_inner);
            reg.conns.remove(&id);
            metrics.set_api_connections(reg.conns.len());
            drop(reg);
            if let Some(why) = closed {
                metrics.api_connection_closed(why);
            }
            drop(permit);
        });
    }
    let mut reg = registry.lock().unwrap_or_else(PoisonError::into_inner);
    for (_, conn) in reg.conns.drain() {
        conn.evict.notify_one();
    }
    Ok(())
}

/// Serves one connection; `Some`: the server closed it, and why.
async fn connection(
    stream: tokio::net::TcpStream,
    router: Router,
    conn: Arc<Conn>,
    limits: &Limits,
) -> Option<Closed> {
    let service = {
        let conn = conn.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let (router, conn) = (router.clone(), conn.clone());
            conn.start_request();
            async move {
                let response = router.oneshot(req.map(Body::new)).await;
                response.map(|r| {
                    r.map(|inner| TrackedBody {
                        inner,
                        conn: conn.clone(),
                    })
                })
            }
        })
    };
    let http = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_BUF)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(http);
    loop {
        let (deadline, _) = conn.deadline(limits);
        tokio::select! {
            done = &mut http => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "HTTP API connection");
                }
                return None;
            }
            () = conn.evict.notified() => return Some(Closed::Evicted),
            () = tokio::time::sleep_until(deadline) => {
                // The phase may have changed meanwhile: time out only if its own deadline
                // passed too.
                let (deadline, why) = conn.deadline(limits);
                if deadline <= Instant::now() {
                    return Some(why);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_longest_idle_and_never_a_busy_connection() {
        let t0 = Instant::now();
        let mut reg = Registry::default();
        for (id, secs, busy) in [(1, 3, 0), (2, 1, 1), (3, 2, 0)] {
            let c = Conn::new(t0 + Duration::from_secs(secs));
            c.phase.lock().expect("lock").busy = busy;
            reg.conns.insert(id, Arc::new(c));
        }
        assert!(reg.make_room(4), "under the cap");
        assert_eq!(reg.conns.len(), 3);
        assert!(reg.make_room(3));
        let mut left: Vec<u64> = reg.conns.keys().copied().collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [1, 2],
            "3 was idle the longest (since t0+2s); 2 is busy"
        );
        assert!(reg.make_room(2));
        assert_eq!(reg.conns.keys().copied().collect::<Vec<_>>(), [2]);
        assert!(!reg.make_room(1), "only a busy connection is left");
    }
}
