//! The agent's HTTP API (documented in `docs/api.md`): Prometheus metrics, liveness and
//! readiness, and the recent termination reports as JSON.
//!
//! Reports carry peer addresses, pod and process names and what ran in containers, so they
//! are served only on loopback addresses ([`router_for`]): a listener on any other address
//! (the DaemonSet's pod IP, for Prometheus) serves `/metrics`, `/healthz` and `/readyz` only.
//! The server under it ([`server`](crate::outputs::server)) caps connections and times out
//! slow or idle clients.

use std::{
    future::Future,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;

use crate::{
    clock,
    outputs::{
        metrics::Metrics,
        server::{self, Limits},
        store::{self, Filter, Store},
    },
    terminations::kube::PodTerminationReport,
};

/// Where the API listens by default (the DaemonSet uses `0.0.0.0:9469`, metrics only).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9469";
/// The answer to `/v1/...` on a listener that does not serve reports.
pub const REPORTS_LOOPBACK_ONLY: &str = "termination reports are served only on a loopback address (--listen 127.0.0.1:PORT or \
     --reports-listen; in the DaemonSet: `kubectl exec` into the agent's pod and run \
     `termscope report --agent http://127.0.0.1:9470`); see docs/api.md";
/// The event loop counts as stuck when it has not gone round for this long (it goes round at
/// least once a second).
pub const STALL_MS: u64 = 30_000;

/// What `/healthz` and `/readyz` tell, set by the event loop.
#[derive(Debug, Default)]
pub struct Status {
    running: AtomicBool,
    iterations: AtomicU64,
    probes_attached: AtomicUsize,
    heartbeat_ms: AtomicU64,
    /// Kubernetes mode: whether the API server serves the agent's watches.
    kube: std::sync::OnceLock<Arc<crate::kube::watch::ApiHealth>>,
}

impl Status {
    /// Kubernetes mode: readiness also needs the API server (listed, not failing).
    pub fn set_kube(&self, health: Arc<crate::kube::watch::ApiHealth>) {
        let _ = self.kube.set(health);
    }

    pub fn set_probes_attached(&self, n: usize) {
        self.probes_attached.store(n, Ordering::Relaxed);
    }

    /// The event loop starts (or stops: `false`).
    pub fn set_running(&self, running: bool) {
        self.heartbeat_ms.store(boot_ms(), Ordering::Relaxed);
        self.running.store(running, Ordering::Relaxed);
    }

    /// The event loop went round once.
    pub fn loop_iteration(&self) {
        self.heartbeat_ms.store(boot_ms(), Ordering::Relaxed);
        self.iterations.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the event loop runs and went round recently (`now_ms`: boot-time ms).
    pub fn live(&self, now_ms: u64) -> Result<(), String> {
        if !self.running.load(Ordering::Relaxed) {
            return Err("the event loop is not running".into());
        }
        let idle = now_ms.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed));
        if idle > STALL_MS {
            return Err(format!(
                "the event loop has not gone round for {:.0} s",
                idle as f64 / 1000.0
            ));
        }
        Ok(())
    }

    /// Whether probes are attached and the event loop went round at least once.
    pub fn ready(&self) -> Result<(), String> {
        if self.probes_attached.load(Ordering::Relaxed) == 0 {
            return Err("no probe attached yet".into());
        }
        if !self.running.load(Ordering::Relaxed) {
            return Err("the event loop is not running".into());
        }
        if self.iterations.load(Ordering::Relaxed) == 0 {
            return Err("the event loop has not started yet".into());
        }
        if let Some(kube) = self.kube.get() {
            kube.check()?;
        }
        Ok(())
    }
}

fn boot_ms() -> u64 {
    clock::boot_ns() / 1_000_000
}

/// What the handlers share with the event loop. Locks are held only to copy out.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub metrics: Arc<Metrics>,
    pub store: Arc<RwLock<Store>>,
    pub status: Arc<Status>,
    /// Recent pod reports (Kubernetes), newest first.
    pub pods: Arc<RwLock<PodStore>>,
}

/// A bounded list of recent pod reports, newest first.
#[derive(Debug)]
pub struct PodStore {
    reports: std::collections::VecDeque<Arc<PodTerminationReport>>,
    capacity: usize,
}

impl PodStore {
    pub fn new(capacity: usize) -> Self {
        PodStore {
            reports: std::collections::VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn push(&mut self, report: PodTerminationReport) {
        if self.reports.len() == self.capacity {
            self.reports.pop_back();
        }
        self.reports.push_front(Arc::new(report));
    }

    /// Newest first, filtered by namespace / pod / workload substrings.
    pub fn query(&self, f: &PodFilter) -> Vec<Arc<PodTerminationReport>> {
        let has = |value: &str, want: &Option<String>| {
            want.as_deref()
                .is_none_or(|w| value.to_lowercase().contains(&w.to_lowercase()))
        };
        self.reports
            .iter()
            .filter(|r| {
                has(&r.namespace, &f.namespace)
                    && has(&r.pod, &f.pod)
                    && has(&r.workload, &f.workload)
            })
            .take(f.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<Arc<PodTerminationReport>> {
        self.reports.iter().find(|r| r.id == id).cloned()
    }
}

/// Query parameters of `/v1/pod-terminations`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodFilter {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub workload: Option<String>,
    pub limit: Option<usize>,
}

/// What a listener serves: reports only on loopback addresses.
pub fn router_for(addr: std::net::SocketAddr, state: ApiState) -> Router {
    if addr.ip().is_loopback() {
        router(state)
    } else {
        metrics_router(state)
    }
}

/// `/metrics`, `/healthz` and `/readyz` only: for listeners other than loopback.
pub fn metrics_router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(metrics_index))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/{*rest}", get(reports_not_here))
        .fallback(not_found)
        .with_state(state)
}

/// The API's routes, reports included (loopback listeners).
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/terminations", get(terminations))
        .route("/v1/terminations/{id}", get(termination))
        .route("/v1/pod-terminations", get(pod_terminations))
        .route("/v1/pod-terminations/{id}", get(pod_termination))
        .fallback(not_found)
        .with_state(state)
}

/// Serves the API on `listener` (reports only if it is on a loopback address) within `limits`
/// until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let metrics = state.metrics.clone();
    server::serve(listener, router_for(addr, state), limits, metrics, shutdown).await
}

/// A JSON array written one element at a time, so that the response never holds more than
/// one serialized report in memory (the store can hold ~100 MB of them).
fn json_array<T: serde::Serialize + Send + Sync + 'static>(items: Vec<Arc<T>>) -> Response {
    let n = items.len();
    let body = if n == 0 {
        Body::from("[]")
    } else {
        Body::from_stream(futures::stream::iter(items.into_iter().enumerate().map(
            move |(i, item)| {
                let mut buf = Vec::with_capacity(8 * 1024);
                buf.push(if i == 0 { b'[' } else { b',' });
                serde_json::to_writer(&mut buf, item.as_ref())?;
                if i + 1 == n {
                    buf.push(b']');
                }
                Ok::<_, serde_json::Error>(axum::body::Bytes::from(buf))
            },
        )))
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn metrics_index() -> Response {
    text(
        StatusCode::OK,
        "termscope agent\n\n\
         GET /metrics                Prometheus metrics\n\
         GET /healthz                200 while the event loop runs\n\
         GET /readyz                 200 once probes are attached and events flow\n\n\
         Termination reports (/v1/...) are served only on a loopback address: see docs/api.md\n"
            .into(),
    )
}

async fn reports_not_here() -> Response {
    error(StatusCode::FORBIDDEN, REPORTS_LOOPBACK_ONLY)
}

async fn index() -> Response {
    text(
        StatusCode::OK,
        "termscope agent\n\n\
         GET /metrics                Prometheus metrics\n\
         GET /healthz                200 while the event loop runs\n\
         GET /readyz                 200 once probes are attached and events flow\n\
         GET /v1/terminations        recent termination reports, newest first \
         (?container= &pod= &namespace= &outcome= &workload= &since= &until= &limit=)\n\
         GET /v1/terminations/{id}   one report\n\
         GET /v1/pod-terminations    recent pod reports (Kubernetes), newest first \
         (?namespace= &pod= &workload= &limit=)\n\
         GET /v1/pod-terminations/{id}  one pod report\n"
            .into(),
    )
}

async fn metrics(State(s): State<ApiState>) -> Response {
    match s.metrics.render() {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            body,
        )
            .into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

async fn healthz(State(s): State<ApiState>) -> Response {
    match s.status.live(boot_ms()) {
        Ok(()) => text(StatusCode::OK, "ok\n".into()),
        Err(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not live: {why}\n"),
        ),
    }
}

async fn readyz(State(s): State<ApiState>) -> Response {
    match s.status.ready() {
        Ok(()) => text(StatusCode::OK, "ok\n".into()),
        Err(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Query parameters of `GET /v1/terminations`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminationsQuery {
    pub container: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub outcome: Option<String>,
    pub workload: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<usize>,
}

impl TerminationsQuery {
    /// The store filter; times relative to `now_unix_ns`.
    pub fn filter(self, now_unix_ns: u64) -> Result<Filter, store::StoreError> {
        let time = |t: Option<String>| {
            t.filter(|t| !t.is_empty())
                .map(|t| store::parse_time(&t, now_unix_ns))
                .transpose()
        };
        Ok(Filter {
            container: self.container,
            pod: self.pod,
            namespace: self.namespace,
            outcome: self
                .outcome
                .filter(|o| !o.is_empty())
                .map(|o| store::parse_outcome(&o))
                .transpose()?,
            workload: self.workload,
            id: None,
            since_ns: time(self.since)?,
            until_ns: time(self.until)?,
            limit: self.limit,
        })
    }
}

async fn terminations(
    State(s): State<ApiState>,
    query: Result<Query<TerminationsQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let filter = match query.filter(clock::wall_ns()) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let found = s
        .store
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .query(&filter);
    json_array(found)
}

async fn termination(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let (found, capacity) = {
        let store = s.store.read().unwrap_or_else(PoisonError::into_inner);
        (store.get(&id), store.capacity())
    };
    match found {
        Some(r) => Json(r.as_ref()).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!(
                "no termination report with id {id:?} (the agent keeps the last {capacity}; \
                 older ones are in its log file)"
            ),
        ),
    }
}

async fn pod_terminations(
    State(s): State<ApiState>,
    query: Result<Query<PodFilter>, QueryRejection>,
) -> Response {
    let filter = match query {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let found = s
        .pods
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .query(&filter);
    json_array(found)
}

async fn pod_termination(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let found = s
        .pods
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&id);
    match found {
        Some(r) => Json(r.as_ref()).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no pod termination report with id {id:?}"),
        ),
    }
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint: see /metrics, /healthz, /readyz, /v1/terminations, \
         /v1/pod-terminations",
    )
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        time::Duration,
    };

    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;
    use crate::{
        outputs::{client::AgentClient, fixtures, metrics::MetricsConfig},
        terminations::report::TerminationReport,
    };

    fn state() -> ApiState {
        let metrics = Metrics::new(MetricsConfig::default()).expect("metrics");
        let mut store = Store::new(10);
        for r in [fixtures::no_handler(), fixtures::killed()] {
            metrics.observe(&r);
            store.push(r);
        }
        ApiState {
            metrics: Arc::new(metrics),
            store: Arc::new(RwLock::new(store)),
            status: Arc::new(Status::default()),
            pods: Arc::new(RwLock::new(PodStore::new(10))),
        }
    }

    #[tokio::test]
    async fn pod_terminations_are_served() {
        let s = state();
        let (status, _, body) = get(&s, "/v1/pod-terminations").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "[]");
        let (status, _, _) = get(&s, "/v1/pod-terminations/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, _) = get(&s, "/v1/pod-terminations?bogus=1").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    async fn get(state: &ApiState, uri: &str) -> (StatusCode, String, String) {
        let response = router(state.clone())
            .oneshot(
                axum::http::Request::get(uri)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).expect("utf-8"),
        )
    }

    fn ids(body: &str) -> Vec<String> {
        let reports: Vec<TerminationReport> = serde_json::from_str(body).expect("reports");
        reports.into_iter().map(|r| r.id).collect()
    }

    #[tokio::test]
    async fn metrics_in_text_format() {
        let s = state();
        let (status, content_type, body) = get(&s, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "text/plain; version=0.0.4");
        assert!(
            body.contains("termscope_sigkill_escalations_total{container=\"\",namespace=\"\",workload=\"app.service\",workload_kind=\"\"} 1"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn health_and_readiness_follow_the_event_loop() {
        let s = state();
        let (status, _, body) = get(&s, "/healthz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let (status, _, body) = get(&s, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: no probe attached yet\n");

        s.status.set_probes_attached(6);
        s.status.set_running(true);
        let (status, _, body) = get(&s, "/healthz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
        let (status, _, body) = get(&s, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: the event loop has not started yet\n");

        s.status.loop_iteration();
        let (status, _, _) = get(&s, "/readyz").await;
        assert_eq!(status, StatusCode::OK);

        // A loop that stopped going round is not live.
        let later = boot_ms() + STALL_MS + 1_000;
        assert!(
            s.status
                .live(later)
                .is_err_and(|e| e.contains("has not gone round"))
        );
        s.status.set_running(false);
        let (status, _, _) = get(&s, "/healthz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn terminations_newest_first_and_filtered() {
        let s = state();
        let killed = fixtures::killed().id;
        let no_handler = fixtures::no_handler().id;
        let (status, content_type, body) = get(&s, "/v1/terminations").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "application/json");
        assert_eq!(ids(&body), [killed.as_str(), no_handler.as_str()]);

        let (_, _, body) = get(&s, "/v1/terminations?container=3f2a").await;
        assert_eq!(ids(&body), [no_handler.as_str()]);
        let (_, _, body) = get(&s, "/v1/terminations?workload=app.service&limit=5").await;
        assert_eq!(ids(&body), [killed.as_str()]);
        let (_, _, body) = get(&s, "/v1/terminations?pod=1b4e28ba").await;
        assert_eq!(ids(&body), [no_handler.as_str()]);
        let (_, _, body) = get(&s, "/v1/terminations?limit=1").await;
        assert_eq!(ids(&body), [killed.as_str()]);
        let (_, _, body) = get(
            &s,
            "/v1/terminations?since=2026-11-21T05%3A09%3A50Z&until=2026-11-21T05:09:52Z",
        )
        .await;
        assert_eq!(ids(&body).len(), 2);
        let (_, _, body) = get(&s, "/v1/terminations?since=2026-11-21T05:09:52Z").await;
        assert_eq!(body, "[]");

        let (status, content_type, body) = get(&s, "/v1/terminations?since=yesterday").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(content_type, "application/json");
        assert!(body.contains("RFC 3339"), "{body}");
        let (status, _, body) = get(&s, "/v1/terminations?limit=many").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, _, body) = get(&s, "/v1/terminations?contianer=x").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("contianer"), "{body}");
    }

    #[tokio::test]
    async fn one_termination_by_id() {
        let s = state();
        let killed = fixtures::killed();
        let (status, _, body) = get(&s, &format!("/v1/terminations/{}", killed.id)).await;
        assert_eq!(status, StatusCode::OK);
        let got: TerminationReport = serde_json::from_str(&body).expect("report");
        assert_eq!(got, killed);

        let (status, content_type, body) = get(&s, "/v1/terminations/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(content_type, "application/json");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("\"nope\"")),
            "{body}"
        );
        let (status, _, _) = get(&s, "/v2/nothing").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    /// The whole way: a real listener, and the client `termscope report --agent` uses.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn served_over_tcp_to_the_client() {
        let s = state();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, s, Limits::default(), async {
            let _ = stopped.await;
        }));
        let url = format!("http://{addr}");
        let (all, some, one, none, metrics) = tokio::task::spawn_blocking(move || {
            let c = AgentClient::new(&url).expect("url");
            (
                c.terminations(&Filter::default()).expect("list"),
                c.terminations(&Filter {
                    workload: Some("app service".into()),
                    ..Filter::default()
                })
                .expect("list"),
                c.termination(&fixtures::killed().id).expect("one"),
                c.termination("nope").expect("none"),
                c.get("/metrics").expect("metrics"),
            )
        })
        .await
        .expect("client");
        assert_eq!(all.len(), 2);
        assert!(some.is_empty(), "the space is sent encoded");
        assert_eq!(one, Some(fixtures::killed()));
        assert_eq!(none, None);
        assert_eq!(metrics.status, 200);
        assert_eq!(
            metrics.header("content-type"),
            Some("text/plain; version=0.0.4")
        );
        let _ = stop.send(());
        server.await.expect("joins").expect("serves");
    }

    #[tokio::test]
    async fn reports_are_not_served_off_loopback() {
        let s = state();
        let outside: std::net::SocketAddr = "0.0.0.0:9469".parse().expect("addr");
        let inside: std::net::SocketAddr = "127.0.0.1:9469".parse().expect("addr");
        let v6: std::net::SocketAddr = "[::1]:9469".parse().expect("addr");
        for (addr, serves_reports) in [(outside, false), (inside, true), (v6, true)] {
            let response = router_for(addr, s.clone())
                .oneshot(
                    axum::http::Request::get("/v1/terminations")
                        .body(Body::empty())
                        .expect("request"),
                )
                .await
                .expect("infallible");
            let want = if serves_reports {
                StatusCode::OK
            } else {
                StatusCode::FORBIDDEN
            };
            assert_eq!(response.status(), want, "{addr}");
        }
        let off = |uri: &'static str| {
            metrics_router(s.clone()).oneshot(
                axum::http::Request::get(uri)
                    .body(Body::empty())
                    .expect("request"),
            )
        };
        for uri in [
            "/v1/terminations/x",
            "/v1/pod-terminations",
            "/v1/pod-terminations/x",
        ] {
            let r = off(uri).await.expect("infallible");
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{uri}");
            let body = axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .expect("body");
            assert!(
                String::from_utf8_lossy(&body).contains("loopback"),
                "{body:?}"
            );
        }
        for uri in ["/metrics", "/healthz", "/readyz", "/"] {
            let r = off(uri).await.expect("infallible");
            assert_ne!(r.status(), StatusCode::FORBIDDEN, "{uri}");
            assert_ne!(r.status(), StatusCode::NOT_FOUND, "{uri}");
        }
    }

    /// A server on a real listener with these limits; stopped on drop of the sender.
    async fn start(
        s: ApiState,
        limits: Limits,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, s, limits, async {
            let _ = stopped.await;
        }));
        (addr, stop, server)
    }

    /// The value of a metric line (`name{labels}`) in `/metrics`.
    fn metric(body: &str, series: &str) -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{body}"))
    }

    fn scrape(addr: std::net::SocketAddr) -> String {
        let c = AgentClient::new(&format!("http://{addr}")).expect("url");
        let r = c.get("/metrics").expect("/metrics answers");
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).expect("utf-8")
    }

    /// Hundreds of slowloris connections (a request head never finished) and idle ones:
    /// the server keeps at most its cap open, and `/metrics` answers every time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slowloris_and_idle_floods_leave_metrics_answering() {
        let limits = Limits {
            max_connections: 16,
            // Long enough that no connection times out during the test: the cap alone acts.
            request_timeout: Duration::from_secs(600),
            response_timeout: Duration::from_secs(600),
        };
        let (addr, stop, server) = start(state(), limits).await;
        let body = tokio::task::spawn_blocking(move || {
            let mut hostile = Vec::new();
            for i in 0..800 {
                let mut c = std::net::TcpStream::connect(addr).expect("connect");
                if i % 2 == 0 {
                    // Slowloris: a request head that never ends.
                    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-a: ")
                        .expect("write");
                }
                hostile.push(c);
                if i % 100 == 99 {
                    // A scrape in the middle of the flood.
                    scrape(addr);
                }
            }
            let body = scrape(addr);
            // The hostile connections are still open on their side.
            assert_eq!(hostile.len(), 800);
            body
        })
        .await
        .expect("clients");
        let open = metric(&body, "termscope_api_connections");
        assert!((1.0..=16.0).contains(&open), "{open} open\n{body}");
        let evicted = metric(
            &body,
            "termscope_api_connections_closed_total{reason=\"evicted\"}",
        );
        // Most were evicted (the last evictions may still be under way at the scrape).
        assert!(evicted >= 700.0, "{evicted} evicted");
        assert_eq!(
            metric(
                &body,
                "termscope_api_connections_closed_total{reason=\"rejected\"}"
            ),
            0.0
        );
        let _ = stop.send(());
        server.await.expect("joins").expect("serves");
    }

    /// Reads until the server closes the connection (EOF or reset); `false` if it is still
    /// open after a minute.
    fn closed_by_server(c: &mut std::net::TcpStream) -> bool {
        c.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut buf = [0u8; 64 * 1024];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_slow_and_non_reading_clients_are_cut_off() {
        let s = state();
        {
            // A store whose JSON is far larger than the socket buffers.
            let mut big = fixtures::killed();
            let c = big.connections[0].clone();
            big.connections = vec![c; 400];
            let mut store = s.store.write().expect("lock");
            *store = Store::new(400);
            for i in 0..400 {
                big.id = format!("big-{i}");
                store.push(big.clone());
            }
        }
        let limits = Limits {
            max_connections: 16,
            request_timeout: Duration::from_millis(300),
            response_timeout: Duration::from_millis(300),
        };
        let (addr, stop, server) = start(s, limits).await;
        let body = tokio::task::spawn_blocking(move || {
            // Idle: connects, sends nothing.
            let mut idle = std::net::TcpStream::connect(addr).expect("connect");
            assert!(closed_by_server(&mut idle), "idle connection closed");
            // Trickles a header byte at a time: the timeout counts from the start of the
            // request, not from the last byte.
            let mut slow = std::net::TcpStream::connect(addr).expect("connect");
            let trickle = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-a: bbbbbbbbbbbbbbbbbbbbbbbbbbb";
            let mut cut = false;
            for b in trickle {
                if slow.write_all(&[*b]).is_err() {
                    cut = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(cut || closed_by_server(&mut slow), "slow client closed");
            // Asks for every report and never reads the answer.
            let mut deaf = std::net::TcpStream::connect(addr).expect("connect");
            deaf.write_all(b"GET /v1/terminations HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("write");
            // Once the server gave up, what the kernel buffered is all there is.
            std::thread::sleep(Duration::from_secs(2));
            assert!(closed_by_server(&mut deaf), "non-reading client closed");
            scrape(addr)
        })
        .await
        .expect("clients");
        for (reason, at_least) in [("request_timeout", 2.0), ("response_timeout", 1.0)] {
            let n = metric(
                &body,
                &format!("termscope_api_connections_closed_total{{reason=\"{reason}\"}}"),
            );
            assert!(n >= at_least, "{reason}: {n}\n{body}");
        }
        let _ = stop.send(());
        server.await.expect("joins").expect("serves");
    }

    /// The list is streamed, and what arrives is one valid JSON array.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_list_streams_as_one_json_array() {
        let s = state();
        {
            let mut store = s.store.write().expect("lock");
            for i in 0..300 {
                let mut r = fixtures::graceful();
                r.id = format!("g{i}");
                store.push(r);
            }
        }
        let (_, content_type, body) = get(&s, "/v1/terminations").await;
        assert_eq!(content_type, "application/json");
        let got = ids(&body);
        assert_eq!(got.len(), 10, "the store keeps 10");
        assert_eq!(got[0], "g299");
    }
}
