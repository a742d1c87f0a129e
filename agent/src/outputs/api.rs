//! The agent's HTTP API (documented in `docs/api.md`): Prometheus metrics, liveness and
//! readiness, and the recent termination reports as JSON.

use std::{
    future::Future,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use axum::{
    Json, Router,
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
        store::{self, Filter, Store},
    },
    terminations::kube::PodTerminationReport,
    terminations::report::TerminationReport,
};

/// Where the API listens by default (the DaemonSet uses `0.0.0.0:9469`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9469";
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
}

impl Status {
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

/// The API's routes.
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

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
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

async fn index() -> Response {
    text(
        StatusCode::OK,
        "termscope agent\n\n\
         GET /metrics                Prometheus metrics\n\
         GET /healthz                200 while the event loop runs\n\
         GET /readyz                 200 once probes are attached and events flow\n\
         GET /v1/terminations        recent termination reports, newest first \
         (?container= &pod= &workload= &since= &until= &limit=)\n\
         GET /v1/terminations/{id}   one report\n"
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
    let refs: Vec<&TerminationReport> = found.iter().map(AsRef::as_ref).collect();
    Json(refs).into_response()
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
    let refs: Vec<&PodTerminationReport> = found.iter().map(AsRef::as_ref).collect();
    Json(refs).into_response()
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
    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;
    use crate::outputs::{client::AgentClient, fixtures, metrics::MetricsConfig};

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
        let server = tokio::spawn(serve(listener, s, async {
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
}
