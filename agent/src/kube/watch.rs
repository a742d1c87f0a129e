//! The API client from the environment, and the watchers feeding [`KubeState`].
//!
//! Design: the watchers own nothing but a channel. Each one turns kube-rs
//! watcher events into [`KubeUpdate`]s stamped with the time it received them and
//! sends them on a bounded `tokio::sync::mpsc` channel; the agent's main loop
//! receives them in its `select!` and applies them to the [`KubeState`] it owns
//! (`state.apply(update)`). A watcher ends when the receiver is dropped.
//!
//! - Pods: this node's only (`fieldSelector=spec.nodeName=<node>`), all
//!   namespaces.
//! - EndpointSlices: all namespaces; endpoints on other nodes are dropped
//!   before they are sent.
//!
//! Both use kube-rs's watcher with its default backoff.
//!
//! A hung API server (it accepts connections but never answers, or stops sending on a watch)
//! is noticed within a bounded time set by `--kube-api-timeout` ([`ApiTimeout`], default 60 s):
//! every request must get its answer, and a watch its next bytes, within that time (the
//! client's read timeout, counted from when the request was sent); watches ask the server to
//! end them after 5 s less (`timeoutSeconds`; half the timeout up to 10 s), so a quiet but healthy watch ends before the
//! read timeout and is simply watched again. A probe (`GET /version`, which every
//! authenticated client may read) every half timeout tells when the server answers again:
//! a watcher's failure is over once a probe sent after it was answered, or once the watcher
//! gets an event. A re-list (at start, and
//! after `410 Gone` when the resource version expired) arrives as `Init`,
//! `InitApply`..., `InitDone`: every listed object is sent as it comes, and at
//! `InitDone` the set of listed keys ([`KubeUpdate::PodsListed`],
//! [`KubeUpdate::SlicesListed`]) so that objects deleted while the watch was
//! broken are treated as deleted. A malformed object is logged and skipped;
//! watch errors are logged and the watcher retries: nothing here ends the watch
//! but the receiver going away.
//!
//! RBAC needed: `list`/`watch` on `pods` and on `endpointslices`
//! (discovery.k8s.io), cluster-wide.
//!
//! [`KubeState`]: super::KubeState

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt::Debug;
use std::hash::Hash;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::endpoints::{SliceInfo, SliceKey};
use super::pod::PodInfo;
use super::state::KubeUpdate;
use super::{KubeError, UnixNanos};

/// Set by Kubernetes in every container: we run in a pod.
pub const SERVICE_HOST_ENV: &str = "KUBERNETES_SERVICE_HOST";
/// Kubeconfig path(s), `:`-separated like kubectl's.
pub const KUBECONFIG_ENV: &str = "KUBECONFIG";
/// The node name, from the downward API in a DaemonSet.
pub const NODE_NAME_ENV: &str = "NODE_NAME";

/// Where the API client's configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// One or more kubeconfig files, merged in order like kubectl does.
    Kubeconfig(Vec<PathBuf>),
    /// The pod's service account.
    InCluster,
    /// No Kubernetes: run standalone.
    Standalone,
}

/// Chooses the configuration, as client-go does: an explicit kubeconfig
/// (`--kubeconfig`, else `KUBECONFIG`) wins; else in-cluster when
/// `KUBERNETES_SERVICE_HOST` is set; else standalone. Empty values count as
/// unset. Pure: the caller reads the environment.
pub fn config_source(
    kubeconfig: Option<&OsStr>,
    kubeconfig_env: Option<&OsStr>,
    service_host_env: Option<&OsStr>,
) -> ConfigSource {
    fn set(v: Option<&OsStr>) -> Option<&OsStr> {
        v.filter(|v| !v.is_empty())
    }
    if let Some(paths) = set(kubeconfig).or(set(kubeconfig_env)) {
        let paths: Vec<PathBuf> = std::env::split_paths(paths)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        if !paths.is_empty() {
            return ConfigSource::Kubeconfig(paths);
        }
    }
    if set(service_host_env).is_some() {
        return ConfigSource::InCluster;
    }
    ConfigSource::Standalone
}

/// An API client from the environment (see [`config_source`]): `kubeconfig` is
/// `--kubeconfig` (else `KUBECONFIG` is read). `Ok(None)`: not in a cluster and
/// no kubeconfig given, run standalone.
pub async fn client_from_env(
    kubeconfig: Option<&OsStr>,
    api_timeout: ApiTimeout,
) -> Result<Option<Client>, KubeError> {
    let env = |name| std::env::var_os(name);
    let (kubeconfig_env, service_host): (Option<OsString>, Option<OsString>) =
        (env(KUBECONFIG_ENV), env(SERVICE_HOST_ENV));
    let config = match config_source(
        kubeconfig,
        kubeconfig_env.as_deref(),
        service_host.as_deref(),
    ) {
        ConfigSource::Standalone => return Ok(None),
        ConfigSource::InCluster => Config::incluster().map_err(KubeError::InCluster)?,
        ConfigSource::Kubeconfig(paths) => {
            let shown = paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":");
            let mut merged: Option<Kubeconfig> = None;
            for path in &paths {
                let one =
                    Kubeconfig::read_from(path).map_err(|source| KubeError::KubeconfigRead {
                        path: path.display().to_string(),
                        source,
                    })?;
                merged = Some(match merged {
                    None => one,
                    Some(m) => m.merge(one).map_err(|source| KubeError::KubeconfigLoad {
                        paths: shown.clone(),
                        source,
                    })?,
                });
            }
            let Some(merged) = merged else {
                return Ok(None);
            };
            Config::from_custom_kubeconfig(merged, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::KubeconfigLoad {
                    paths: shown,
                    source,
                })?
        }
    };
    let mut config = config;
    api_timeout.apply(&mut config);
    Client::try_from(config)
        .map(Some)
        .map_err(KubeError::Client)
}

/// This node's name: `explicit` (`--node-name`) else `NODE_NAME`.
pub fn node_name(explicit: Option<&str>) -> Result<String, KubeError> {
    let from_env = std::env::var(NODE_NAME_ENV).ok();
    explicit
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            from_env
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
        })
        .ok_or(KubeError::NodeNameMissing)
}

/// How long the agent waits for the API server before it counts as not answering
/// (`--kube-api-timeout`): connecting, each answer, and the next bytes of a watch. Watches
/// ask the server to end them 5 s sooner (half as long up to 10 s), a probe (`GET /version`) goes every half of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiTimeout(Duration);

impl ApiTimeout {
    /// The default: 60 s.
    pub const DEFAULT_SECS: u64 = 60;
    /// The shortest allowed: a watch must end (`timeoutSeconds` >= 1) before the read timeout.
    pub const MIN_SECS: u64 = 2;
    /// The longest allowed: one hour.
    pub const MAX_SECS: u64 = 3600;

    /// `secs` clamped to [`Self::MIN_SECS`]..=[`Self::MAX_SECS`] (the CLI rejects others).
    pub fn from_secs(secs: u64) -> Self {
        ApiTimeout(Duration::from_secs(
            secs.clamp(Self::MIN_SECS, Self::MAX_SECS),
        ))
    }

    pub fn duration(self) -> Duration {
        self.0
    }

    /// The `timeoutSeconds` the watches ask for: 5 s less than the timeout (half of it up
    /// to 10 s; at least 1 s, always less than the timeout).
    pub fn watch_secs(self) -> u32 {
        let secs = self.0.as_secs();
        let watch = if secs > 10 { secs - 5 } else { secs / 2 };
        u32::try_from(watch.max(1)).unwrap_or(u32::MAX)
    }

    /// How often the probe asks for `/version`.
    pub fn probe_every(self) -> Duration {
        self.0 / 2
    }

    /// Sets the client's connect, read and write timeouts (kube-rs sets no read timeout).
    pub fn apply(self, config: &mut Config) {
        config.connect_timeout = Some(self.0);
        config.read_timeout = Some(self.0);
        config.write_timeout = Some(self.0);
        // Count the read timeout from when a request is sent, not from when its pooled
        // connection went idle.
        config.reset_reader_on_write = true;
    }
}

impl Default for ApiTimeout {
    fn default() -> Self {
        ApiTimeout::from_secs(Self::DEFAULT_SECS)
    }
}

/// The field selector of this node's pods.
pub fn node_field_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

/// Whether the watchers reach the API server: the agent is ready only once every watcher
/// has listed, and not while one fails (an unreachable or failing API server; a hung one
/// fails the request after [`ApiTimeout`]), nor while the probe gets no answer. `/readyz` and
/// `termscope_kubernetes_api_up` show it.
#[derive(Debug, Default)]
pub struct ApiHealth {
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    /// Per watcher (`Pod`, `EndpointSlice`): whether it has listed once.
    listed: HashMap<&'static str, bool>,
    /// Per watcher (and [`PROBE`]): why it fails and since when, until it works again.
    failing: HashMap<&'static str, Failure>,
}

#[derive(Debug)]
struct Failure {
    since: Instant,
    why: String,
    /// The server answered, with an error (403, 500...): only the watcher's own success ends
    /// it. Otherwise (no answer, no connection) the server answering the probe ends it.
    answered: bool,
}

/// The name of the `GET /version` probe among the watchers' health entries.
const PROBE: &str = "probe";

impl ApiHealth {
    fn with<T>(&self, f: impl FnOnce(&mut HealthState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn started(&self, kind: &'static str) {
        self.with(|s| {
            s.listed.entry(kind).or_insert(false);
        });
    }

    fn works(&self, kind: &'static str, listed: bool) {
        self.with(|s| {
            s.failing.remove(kind);
            if listed {
                s.listed.insert(kind, true);
            }
        });
    }

    fn failed(&self, kind: &'static str, error: String, answered: bool) {
        let why = if kind == PROBE {
            format!("the Kubernetes API server does not answer GET /version: {error}")
        } else {
            format!("the Kubernetes API server fails the {kind} watch: {error}")
        };
        let failure = Failure {
            since: Instant::now(),
            why,
            answered,
        };
        self.with(|s| s.failing.insert(kind, failure));
    }

    /// The probe sent at `sent` was answered: the server answers, so the failures to answer
    /// from before `sent` are over (a watch that still gets no answer fails again within the
    /// timeout). Errors the server answered with stay until their watcher works.
    fn probe_answered(&self, sent: Instant) {
        self.with(|s| {
            s.failing.remove(PROBE);
            s.failing.retain(|_, f| f.answered || f.since >= sent);
        });
    }

    /// `Err`: why the API server does not serve the agent now.
    pub fn check(&self) -> Result<(), String> {
        self.with(|s| {
            let mut failing: Vec<_> = s.failing.iter().collect();
            failing.sort_by_key(|(kind, _)| **kind);
            if let Some((_, failure)) = failing.first() {
                return Err(failure.why.clone());
            }
            let mut waiting: Vec<&str> = s
                .listed
                .iter()
                .filter(|(_, listed)| !**listed)
                .map(|(kind, _)| *kind)
                .collect();
            waiting.sort_unstable();
            if !waiting.is_empty() {
                return Err(format!(
                    "waiting for the Kubernetes API server to list {}",
                    waiting.join(", ")
                ));
            }
            Ok(())
        })
    }
}

/// Starts both watchers on the runtime; updates arrive on the returned
/// receiver (`capacity` bounds it: a slow reader slows the watchers down,
/// nothing is dropped). Drop the receiver to stop them. `health` follows whether
/// they reach the API server.
pub fn spawn(
    client: Client,
    node: String,
    capacity: usize,
    health: std::sync::Arc<ApiHealth>,
    timeout: ApiTimeout,
) -> (mpsc::Receiver<KubeUpdate>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    health.started(<Pod as Watched>::KIND);
    health.started(<EndpointSlice as Watched>::KIND);
    let task = tokio::spawn(async move { run(client, &node, tx, &health, timeout).await });
    (rx, task)
}

/// Runs both watchers and the probe until the receiver is dropped.
pub async fn run(
    client: Client,
    node: &str,
    tx: mpsc::Sender<KubeUpdate>,
    health: &ApiHealth,
    timeout: ApiTimeout,
) {
    tokio::join!(
        watch_pods(client.clone(), node, tx.clone(), health, timeout),
        watch_endpoint_slices(client.clone(), node, tx.clone(), health, timeout),
        probe(client, &tx, health, timeout),
    );
}

/// Asks the API server for `/version` every [`ApiTimeout::probe_every`] until the receiver is
/// dropped, and tells `health` whether it answered within the timeout.
pub async fn probe(
    client: Client,
    tx: &mpsc::Sender<KubeUpdate>,
    health: &ApiHealth,
    timeout: ApiTimeout,
) {
    let mut answering = true;
    loop {
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(timeout.probe_every()) => {}
        }
        let sent = Instant::now();
        let answer = tokio::select! {
            () = tx.closed() => return,
            answer = tokio::time::timeout(timeout.duration(), client.apiserver_version()) => answer,
        };
        let error = match answer {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {:?}", timeout.duration())),
        };
        match error {
            None => {
                if !answering {
                    tracing::info!("kubernetes: the API server answers GET /version again");
                }
                answering = true;
                health.probe_answered(sent);
            }
            Some(error) => {
                if answering {
                    tracing::warn!(%error, "kubernetes: the API server does not answer GET /version");
                }
                answering = false;
                health.failed(PROBE, error, false);
            }
        }
    }
}

/// Watches this node's pods until the receiver is dropped.
pub async fn watch_pods(
    client: Client,
    node: &str,
    tx: mpsc::Sender<KubeUpdate>,
    health: &ApiHealth,
    timeout: ApiTimeout,
) {
    let config = watcher::Config::default()
        .fields(&node_field_selector(node))
        .timeout(timeout.watch_secs());
    run_watcher::<Pod>(Api::all(client), config, node, &tx, health).await;
}

/// Watches EndpointSlices in all namespaces (keeping this node's endpoints)
/// until the receiver is dropped.
pub async fn watch_endpoint_slices(
    client: Client,
    node: &str,
    tx: mpsc::Sender<KubeUpdate>,
    health: &ApiHealth,
    timeout: ApiTimeout,
) {
    run_watcher::<EndpointSlice>(
        Api::all(client),
        watcher::Config::default().timeout(timeout.watch_secs()),
        node,
        &tx,
        health,
    )
    .await;
}

/// A watched resource: how to read it and what update it makes.
trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    const KIND: &'static str;
    type Key: Eq + Hash + Clone + Send;
    type Info;
    fn read(&self, node: &str) -> Result<(Self::Key, Self::Info), String>;
    fn applied(info: Self::Info, observed_at: UnixNanos) -> KubeUpdate;
    fn deleted(key: Self::Key, info: Self::Info, observed_at: UnixNanos) -> KubeUpdate;
    fn listed(keys: HashSet<Self::Key>, observed_at: UnixNanos) -> KubeUpdate;
}

impl Watched for Pod {
    const KIND: &'static str = "Pod";
    type Key = String;
    type Info = PodInfo;

    fn read(&self, _node: &str) -> Result<(String, PodInfo), String> {
        let info = PodInfo::from_pod(self).map_err(|e| e.to_string())?;
        Ok((info.uid.clone(), info))
    }

    fn applied(pod: PodInfo, observed_at: UnixNanos) -> KubeUpdate {
        KubeUpdate::PodApplied {
            pod: Box::new(pod),
            observed_at,
        }
    }

    fn deleted(_uid: String, pod: PodInfo, observed_at: UnixNanos) -> KubeUpdate {
        KubeUpdate::PodDeleted {
            pod: Box::new(pod),
            observed_at,
        }
    }

    fn listed(uids: HashSet<String>, observed_at: UnixNanos) -> KubeUpdate {
        KubeUpdate::PodsListed { uids, observed_at }
    }
}

impl Watched for EndpointSlice {
    const KIND: &'static str = "EndpointSlice";
    type Key = SliceKey;
    type Info = SliceInfo;

    fn read(&self, node: &str) -> Result<(SliceKey, SliceInfo), String> {
        let mut info = SliceInfo::from_slice(self).map_err(|e| e.to_string())?;
        info.retain_node(node);
        Ok((info.key.clone(), info))
    }

    fn applied(slice: SliceInfo, observed_at: UnixNanos) -> KubeUpdate {
        KubeUpdate::SliceApplied { slice, observed_at }
    }

    fn deleted(key: SliceKey, _slice: SliceInfo, observed_at: UnixNanos) -> KubeUpdate {
        KubeUpdate::SliceDeleted { key, observed_at }
    }

    fn listed(keys: HashSet<SliceKey>, observed_at: UnixNanos) -> KubeUpdate {
        KubeUpdate::SlicesListed { keys, observed_at }
    }
}

/// Whether a watcher's error is an answer of the server (an error status) rather than no
/// answer (a timeout, no connection).
fn answered(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::WatchError(_) | watcher::Error::NoResourceVersion => true,
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => matches!(e, kube::Error::Api(_)),
    }
}

fn now() -> UnixNanos {
    UnixNanos(crate::clock::wall_ns())
}

/// Reads an object, logging and skipping it when malformed.
fn read_or_skip<K: Watched>(obj: &K, node: &str) -> Option<(K::Key, K::Info)> {
    match obj.read(node) {
        Ok(read) => Some(read),
        Err(error) => {
            tracing::warn!(
                kind = K::KIND,
                namespace = obj.namespace().unwrap_or_default(),
                name = obj.meta().name.clone().unwrap_or_default(),
                uid = obj.uid().unwrap_or_default(),
                %error,
                "kubernetes: skipping a malformed object"
            );
            None
        }
    }
}

async fn run_watcher<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    node: &str,
    tx: &mpsc::Sender<KubeUpdate>,
    health: &ApiHealth,
) {
    health.started(K::KIND);
    let stream = watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    // Keys listed since the last `Init`, while a (re-)list is under way.
    let mut listing: Option<HashSet<K::Key>> = None;
    loop {
        let item = tokio::select! {
            () = tx.closed() => return,
            item = stream.next() => item,
        };
        let Some(item) = item else {
            tracing::error!(kind = K::KIND, "kubernetes: the watch stream ended");
            return;
        };
        match &item {
            // `Init` comes before the list request: it says nothing about the server.
            Ok(watcher::Event::Init) => {}
            Ok(event) => {
                let was_failing = health.check().is_err();
                health.works(K::KIND, matches!(event, watcher::Event::InitDone));
                if was_failing && health.check().is_ok() {
                    tracing::info!(kind = K::KIND, "kubernetes: the API server answers again");
                }
            }
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {}
            Err(error) => health.failed(K::KIND, error.to_string(), answered(error)),
        }
        let update = match item {
            Ok(watcher::Event::Init) => {
                tracing::debug!(kind = K::KIND, "kubernetes: listing");
                listing = Some(HashSet::new());
                None
            }
            Ok(watcher::Event::InitApply(obj)) => read_or_skip(&obj, node).map(|(key, info)| {
                if let Some(keys) = listing.as_mut() {
                    keys.insert(key);
                }
                K::applied(info, now())
            }),
            Ok(watcher::Event::InitDone) => {
                let keys = listing.take().unwrap_or_default();
                tracing::debug!(kind = K::KIND, count = keys.len(), "kubernetes: listed");
                Some(K::listed(keys, now()))
            }
            Ok(watcher::Event::Apply(obj)) => {
                read_or_skip(&obj, node).map(|(_, info)| K::applied(info, now()))
            }
            Ok(watcher::Event::Delete(obj)) => {
                read_or_skip(&obj, node).map(|(key, info)| K::deleted(key, info, now()))
            }
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                tracing::info!(
                    kind = K::KIND,
                    "kubernetes: watch resource version expired (410 Gone), listing again"
                );
                None
            }
            Err(error) => {
                tracing::warn!(kind = K::KIND, %error, "kubernetes: watch error, retrying");
                None
            }
        };
        if let Some(update) = update
            && tx.send(update).await.is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use http::{Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use kube::client::Body;
    use serde_json::{Value, json};
    use tokio::time::timeout;
    use tower_test::mock::{Handle, SendResponse};

    use super::*;
    use crate::kube::pod::tests::pod_json;
    use crate::kube::state::{KubeState, KubeStateConfig};

    pub(crate) type ApiHandle = Handle<Request<Body>, Response<Body>>;
    pub(crate) type Reply = SendResponse<Response<Body>>;

    const STEP: Duration = Duration::from_secs(15);

    /// A client whose API server is played by the test through the handle.
    pub(crate) fn mock_client() -> (Client, ApiHandle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), handle)
    }

    /// The next request the client sends: method, path and query, body.
    pub(crate) async fn next_request(handle: &mut ApiHandle) -> (String, String, Value, Reply) {
        let Ok(Some((req, reply))) = timeout(STEP, handle.next_request()).await else {
            panic!("no request from the client in time");
        };
        let method = req.method().to_string();
        let uri = req.uri().to_string();
        let bytes = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => panic!("request body: {e}"),
        };
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("request body: {e}"))
        };
        (method, uri, body, reply)
    }

    pub(crate) fn respond(reply: Reply, status: StatusCode, body: &Value) {
        respond_raw(reply, status, body.to_string().into_bytes());
    }

    fn respond_raw(reply: Reply, status: StatusCode, body: Vec<u8>) {
        match Response::builder().status(status).body(Body::from(body)) {
            Ok(r) => reply.send_response(r),
            Err(e) => panic!("response: {e}"),
        }
    }

    /// A watch response: one JSON event per line, then the stream ends.
    fn respond_watch(reply: Reply, lines: &[String]) {
        let mut body = lines.join("\n");
        body.push('\n');
        respond_raw(reply, StatusCode::OK, body.into_bytes());
    }

    fn event(kind: &str, object: &Value) -> String {
        json!({"type": kind, "object": object}).to_string()
    }

    fn list(kind: &str, resource_version: &str, items: Vec<Value>) -> Value {
        json!({
            "apiVersion": "v1", "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": resource_version},
            "items": items,
        })
    }

    fn with_rv(mut v: Value, rv: &str) -> Value {
        v["metadata"]["resourceVersion"] = json!(rv);
        v
    }

    async fn recv(rx: &mut mpsc::Receiver<KubeUpdate>, state: &mut KubeState) -> KubeUpdate {
        let Ok(Some(update)) = timeout(STEP, rx.recv()).await else {
            panic!("no update from the watcher in time");
        };
        state.apply(update.clone());
        update
    }

    fn applied_uid(update: &KubeUpdate) -> Option<&str> {
        match update {
            KubeUpdate::PodApplied { pod, .. } => Some(pod.uid.as_str()),
            _ => None,
        }
    }

    #[test]
    fn chooses_the_configuration() {
        fn s(v: &str) -> Option<&OsStr> {
            Some(OsStr::new(v))
        }
        assert_eq!(config_source(None, None, None), ConfigSource::Standalone);
        assert_eq!(
            config_source(None, None, s("10.96.0.1")),
            ConfigSource::InCluster
        );
        assert_eq!(
            config_source(s("/a"), s("/b"), s("10.96.0.1")),
            ConfigSource::Kubeconfig(vec!["/a".into()]),
            "an explicit kubeconfig wins"
        );
        assert_eq!(
            config_source(s(""), s("/b:/c"), None),
            ConfigSource::Kubeconfig(vec!["/b".into(), "/c".into()])
        );
        assert_eq!(config_source(None, s(""), s("")), ConfigSource::Standalone);
        assert_eq!(node_name(Some(" node-a ")).ok().as_deref(), Some("node-a"));
        assert_eq!(
            node_field_selector("node-a"),
            "spec.nodeName=node-a".to_owned()
        );
    }

    #[tokio::test]
    async fn unreadable_kubeconfig_is_a_clear_error() {
        let missing = OsStr::new("/nonexistent/termscope-kubeconfig");
        match client_from_env(Some(missing), ApiTimeout::default()).await {
            Err(e @ KubeError::KubeconfigRead { .. }) => {
                assert!(
                    e.to_string().contains("/nonexistent/termscope-kubeconfig"),
                    "{e}"
                );
            }
            other => panic!("expected a kubeconfig error, got {:?}", other.err()),
        }
    }

    #[tokio::test]
    async fn kubeconfig_gives_a_tls_client() {
        // Building the client sets up TLS (rustls with ring) without any request.
        let path = std::env::temp_dir().join(format!(
            "termscope-kubeconfig-test-{}.yaml",
            std::process::id()
        ));
        let yaml = r"
apiVersion: v1
kind: Config
current-context: c
clusters:
- name: k
  cluster:
    server: https://127.0.0.1:6443
    insecure-skip-tls-verify: true
users:
- name: u
  user:
    token: abc
contexts:
- name: c
  context:
    cluster: k
    user: u
    namespace: shop
";
        if let Err(e) = std::fs::write(&path, yaml) {
            panic!("{e}");
        }
        let client = client_from_env(Some(path.as_os_str()), ApiTimeout::default()).await;
        let _ = std::fs::remove_file(&path);
        match client {
            Ok(Some(c)) => assert_eq!(c.default_namespace(), "shop"),
            Ok(None) => panic!("no client"),
            Err(e) => panic!("{e}"),
        }
    }

    /// An API server that fails, then answers: the health says so, and why.
    #[tokio::test]
    async fn health_follows_the_api_server() {
        let (client, mut api) = mock_client();
        let (tx, mut rx) = mpsc::channel(64);
        let health = std::sync::Arc::new(ApiHealth::default());
        health.started("Pod");
        assert_eq!(
            health.check(),
            Err("waiting for the Kubernetes API server to list Pod".into())
        );
        let h = health.clone();
        let task = tokio::spawn(async move {
            watch_pods(client, "node-a", tx, &h, ApiTimeout::default()).await
        });
        let (_, _, _, reply) = next_request(&mut api).await;
        respond(
            reply,
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": "etcd is down", "reason": "InternalError", "code": 500}),
        );
        // The watcher backs off and lists again.
        let (_, _, _, reply) = next_request(&mut api).await;
        let err = health.check().expect_err("failing");
        assert!(
            err.starts_with("the Kubernetes API server fails the Pod watch: "),
            "{err}"
        );
        assert!(err.contains("etcd is down"), "{err}");
        respond(reply, StatusCode::OK, &list("Pod", "100", vec![]));
        let mut state = KubeState::new(KubeStateConfig::default());
        assert!(matches!(
            recv(&mut rx, &mut state).await,
            KubeUpdate::PodsListed { .. }
        ));
        assert_eq!(health.check(), Ok(()));
        drop(rx);
        drop(api);
        let _ = timeout(STEP, task).await;
    }

    #[test]
    fn api_timeout_bounds_watches_and_probes() {
        for secs in [ApiTimeout::MIN_SECS, 3, 10, 11, 60, ApiTimeout::MAX_SECS] {
            let t = ApiTimeout::from_secs(secs);
            assert!(
                u64::from(t.watch_secs()) < secs,
                "{secs}: {}",
                t.watch_secs()
            );
            assert!(t.watch_secs() >= 1);
            assert!(t.probe_every() < t.duration());
        }
        assert_eq!(ApiTimeout::default().watch_secs(), 55);
        assert_eq!(ApiTimeout::from_secs(0).duration(), Duration::from_secs(2));
        let mut config = Config::new("http://127.0.0.1:1".parse().expect("uri"));
        ApiTimeout::from_secs(7).apply(&mut config);
        assert_eq!(config.read_timeout, Some(Duration::from_secs(7)));
        assert_eq!(config.connect_timeout, Some(Duration::from_secs(7)));
        assert!(config.reset_reader_on_write);
    }

    /// The probe ends failures to answer from before it, not errors the server answered
    /// with (a 403 stays until the watch works: no flapping between the watcher's retries).
    #[test]
    fn the_probe_ends_only_failures_to_answer() {
        let health = ApiHealth::default();
        health.failed("Pod", "timed out".into(), false);
        health.failed("EndpointSlice", "403 forbidden".into(), true);
        health.probe_answered(Instant::now());
        assert_eq!(
            health.check(),
            Err("the Kubernetes API server fails the EndpointSlice watch: 403 forbidden".into())
        );
        health.works("EndpointSlice", false);
        assert_eq!(health.check(), Ok(()));
        // A failure after the probe was sent stays.
        let sent = Instant::now();
        health.failed("Pod", "timed out".into(), false);
        health.probe_answered(sent);
        assert!(health.check().is_err());
    }

    fn version_json() -> Value {
        json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "x",
               "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
               "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"})
    }

    /// An API server that lists, then hangs (takes requests, answers none: the watch and
    /// the probe stay unanswered): the probe's timeout makes the health fail and say why;
    /// when the server answers the probe again the health recovers.
    #[tokio::test]
    async fn a_hung_api_server_is_noticed_and_its_return_too() {
        let (client, mut api) = mock_client();
        let (tx, mut rx) = mpsc::channel(64);
        let health = std::sync::Arc::new(ApiHealth::default());
        let t = ApiTimeout::from_secs(2);
        let h = health.clone();
        let task = tokio::spawn(async move {
            tokio::join!(
                watch_pods(client.clone(), "node-a", tx.clone(), &h, t),
                probe(client, &tx, &h, t),
            );
        });
        let mut state = KubeState::new(KubeStateConfig::default());
        // Phase 0: the server answers; 1: it hangs; 2: it answers the probe again.
        let mut held: Vec<Reply> = Vec::new();
        let mut listed = false;
        let mut watch_asked = String::new();
        for phase in 0..3 {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let done = match phase {
                    0 => listed && !watch_asked.is_empty() && health.check().is_ok(),
                    1 => health.check().is_err_and(|e| {
                        e == "the Kubernetes API server does not answer GET /version: \
                              no answer within 2s"
                    }),
                    _ => health.check().is_ok(),
                };
                if done {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "phase {phase}: {:?}",
                    health.check()
                );
                tokio::select! {
                    req = api.next_request() => {
                        let Some((req, reply)) = req else { panic!("client gone") };
                        let uri = req.uri().to_string();
                        if uri.contains("watch=true") {
                            watch_asked.clone_from(&uri);
                        }
                        if phase == 1 {
                            held.push(reply);
                        } else if uri == "/version" {
                            respond(reply, StatusCode::OK, &version_json());
                        } else if uri.contains("watch=true") {
                            held.push(reply);
                        } else {
                            respond(reply, StatusCode::OK, &list("Pod", "100", vec![]));
                        }
                    }
                    update = recv(&mut rx, &mut state), if !listed => {
                        listed = matches!(update, KubeUpdate::PodsListed { .. });
                    }
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
        // The watch asked the server to end it before the client's read timeout.
        assert!(watch_asked.contains("timeoutSeconds=1"), "{watch_asked}");
        drop(held);
        drop(rx);
        drop(api);
        let _ = timeout(STEP, task).await;
    }

    #[tokio::test]
    async fn pod_watch_lists_watches_and_relists_after_gone() {
        let (client, mut api) = mock_client();
        let (tx, mut rx) = mpsc::channel(64);
        let task = tokio::spawn(async move {
            watch_pods(
                client,
                "node-a",
                tx,
                &ApiHealth::default(),
                ApiTimeout::default(),
            )
            .await;
        });
        let mut state = KubeState::new(KubeStateConfig::default());
        let selector = "fieldSelector=spec.nodeName%3Dnode-a";

        // Initial LIST.
        let (method, uri, _, reply) = next_request(&mut api).await;
        assert_eq!(method, "GET");
        assert!(uri.starts_with("/api/v1/pods?"), "{uri}");
        assert!(uri.contains(selector), "{uri}");
        assert!(!uri.contains("watch=true"), "{uri}");
        let a = pod_json("uid-a", "web-a", json!({}));
        respond(
            reply,
            StatusCode::OK,
            &list("Pod", "100", vec![with_rv(a.clone(), "90")]),
        );
        assert_eq!(applied_uid(&recv(&mut rx, &mut state).await), Some("uid-a"));
        match recv(&mut rx, &mut state).await {
            KubeUpdate::PodsListed { uids, .. } => {
                assert_eq!(uids, HashSet::from(["uid-a".to_owned()]));
            }
            other => panic!("expected PodsListed, got {other:?}"),
        }

        // WATCH from the list's resource version.
        let (_, uri, _, reply) = next_request(&mut api).await;
        assert!(uri.starts_with("/api/v1/pods?"), "{uri}");
        assert!(uri.contains("watch=true"), "{uri}");
        assert!(uri.contains("resourceVersion=100"), "{uri}");
        assert!(uri.contains(selector), "{uri}");
        let b = pod_json("uid-b", "web-b", json!({}));
        let c = pod_json("uid-c", "web-c", json!({}));
        let a_deleting = pod_json(
            "uid-a",
            "web-a",
            json!({"metadata": {
                "deletionTimestamp": "2026-11-21T05:20:00Z",
                "deletionGracePeriodSeconds": 30,
            }}),
        );
        let mut no_uid = pod_json("x", "broken", json!({}));
        if let Some(m) = no_uid["metadata"].as_object_mut() {
            m.remove("uid");
        }
        respond_watch(
            reply,
            &[
                event("ADDED", &with_rv(b.clone(), "101")),
                event("MODIFIED", &with_rv(a_deleting.clone(), "102")),
                event("ADDED", &with_rv(no_uid, "103")),
                // Not even a Pod: the client cannot decode it.
                event(
                    "ADDED",
                    &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": 7}}),
                ),
                event("ADDED", &with_rv(c.clone(), "104")),
                event("DELETED", &with_rv(a_deleting, "105")),
            ],
        );
        assert_eq!(applied_uid(&recv(&mut rx, &mut state).await), Some("uid-b"));
        assert_eq!(applied_uid(&recv(&mut rx, &mut state).await), Some("uid-a"));
        assert!(state.deletion_observed_at("uid-a").is_some());
        // Both malformed objects skipped; the next valid one is applied.
        assert_eq!(applied_uid(&recv(&mut rx, &mut state).await), Some("uid-c"));
        match recv(&mut rx, &mut state).await {
            KubeUpdate::PodDeleted { pod, .. } => assert_eq!(pod.uid, "uid-a"),
            other => panic!("expected PodDeleted, got {other:?}"),
        }
        assert!(state.deleted_at("uid-a").is_some());
        assert_eq!(state.live_len(), 2);

        // The stream ended: the watch resumes from the last resource version,
        // and the API server says it is too old.
        let (_, uri, _, reply) = next_request(&mut api).await;
        assert!(uri.contains("watch=true"), "{uri}");
        assert!(uri.contains("resourceVersion=105"), "{uri}");
        respond_watch(
            reply,
            &[json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "Expired", "code": 410,
            }})
            .to_string()],
        );

        // Re-list: web-c went away while the watch was broken.
        let (_, uri, _, reply) = next_request(&mut api).await;
        assert!(uri.starts_with("/api/v1/pods?"), "{uri}");
        assert!(!uri.contains("watch=true"), "re-list expected: {uri}");
        assert!(uri.contains(selector), "{uri}");
        respond(
            reply,
            StatusCode::OK,
            &list("Pod", "200", vec![with_rv(b, "101")]),
        );
        assert_eq!(applied_uid(&recv(&mut rx, &mut state).await), Some("uid-b"));
        assert!(matches!(
            recv(&mut rx, &mut state).await,
            KubeUpdate::PodsListed { .. }
        ));
        assert_eq!(state.live_len(), 1);
        assert!(
            state
                .pod_view("uid-b")
                .is_some_and(|v| v.deleted_at.is_none())
        );
        assert!(
            state.deleted_at("uid-c").is_some(),
            "missing from the re-list"
        );
        assert!(state.deleted_at("uid-a").is_some());
        assert!(state.deletion_observed_at("uid-a").is_some());
        // Late kernel events still find the deleted pods by container id.
        assert!(
            state
                .pod_by_container_id(crate::kube::pod::tests::CID_A)
                .is_some()
        );

        // Watching again from the new list.
        let (_, uri, _, _reply) = next_request(&mut api).await;
        assert!(uri.contains("watch=true"), "{uri}");
        assert!(uri.contains("resourceVersion=200"), "{uri}");

        // Dropping the receiver ends the watcher.
        drop(rx);
        assert!(timeout(STEP, task).await.is_ok_and(|r| r.is_ok()));
    }

    fn slice(rv: &str, endpoints: Value) -> Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-x1", "namespace": "shop", "resourceVersion": rv,
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
        })
    }

    fn endpoint(uid: &str, node: &str, ready: bool, terminating: bool) -> Value {
        json!({
            "addresses": ["10.1.2.3"], "nodeName": node,
            "conditions": {"ready": ready, "serving": ready, "terminating": terminating},
            "targetRef": {"kind": "Pod", "namespace": "shop", "name": uid, "uid": uid},
        })
    }

    #[tokio::test]
    async fn slice_watch_tracks_this_nodes_endpoints() {
        let (client, mut api) = mock_client();
        let (tx, mut rx) = mpsc::channel(64);
        let task = tokio::spawn(async move {
            watch_endpoint_slices(
                client,
                "node-a",
                tx,
                &ApiHealth::default(),
                ApiTimeout::default(),
            )
            .await;
        });
        let mut state = KubeState::new(KubeStateConfig::default());

        let (_, uri, _, reply) = next_request(&mut api).await;
        assert!(
            uri.starts_with("/apis/discovery.k8s.io/v1/endpointslices?"),
            "{uri}"
        );
        respond(
            reply,
            StatusCode::OK,
            &list(
                "EndpointSlice",
                "10",
                vec![slice(
                    "9",
                    json!([
                        endpoint("uid-a", "node-a", true, false),
                        endpoint("uid-z", "node-b", true, false),
                    ]),
                )],
            ),
        );
        match recv(&mut rx, &mut state).await {
            KubeUpdate::SliceApplied { slice, .. } => {
                assert_eq!(slice.endpoints.len(), 1, "other nodes' endpoints dropped");
            }
            other => panic!("expected SliceApplied, got {other:?}"),
        }
        assert!(matches!(
            recv(&mut rx, &mut state).await,
            KubeUpdate::SlicesListed { .. }
        ));
        assert!(state.endpoints("uid-a").is_some_and(|e| e.ready));
        assert!(state.endpoints("uid-z").is_none());

        let (_, uri, _, reply) = next_request(&mut api).await;
        assert!(
            uri.contains("watch=true") && uri.contains("resourceVersion=10"),
            "{uri}"
        );
        let terminating = slice("11", json!([endpoint("uid-a", "node-a", false, true)]));
        respond_watch(
            reply,
            &[
                event("MODIFIED", &terminating),
                event("DELETED", &slice("12", json!([]))),
            ],
        );
        recv(&mut rx, &mut state).await;
        let e = state
            .endpoints("uid-a")
            .cloned()
            .unwrap_or_else(|| panic!("uid-a"));
        assert!(e.terminating && !e.ready);
        let since = e
            .terminating_since
            .unwrap_or_else(|| panic!("terminating_since"));
        assert_eq!(e.not_ready_since, Some(since));
        assert!(matches!(
            recv(&mut rx, &mut state).await,
            KubeUpdate::SliceDeleted { .. }
        ));
        let e = state
            .endpoints("uid-a")
            .cloned()
            .unwrap_or_else(|| panic!("uid-a"));
        assert!(e.removed_at.is_some_and(|r| r >= since));
        assert_eq!(e.in_slices, 0);

        drop(rx);
        assert!(timeout(STEP, task).await.is_ok_and(|r| r.is_ok()));
    }

    #[tokio::test]
    async fn run_drives_both_watchers() {
        let (client, mut api) = mock_client();
        let (mut rx, task) = spawn(
            client,
            "node-a".into(),
            8,
            Default::default(),
            ApiTimeout::default(),
        );
        let mut paths = Vec::new();
        for _ in 0..2 {
            let (_, uri, _, reply) = next_request(&mut api).await;
            let kind = if uri.starts_with("/api/v1/pods?") {
                "Pod"
            } else {
                "EndpointSlice"
            };
            paths.push(kind);
            respond(reply, StatusCode::OK, &list(kind, "1", vec![]));
        }
        paths.sort_unstable();
        assert_eq!(paths, ["EndpointSlice", "Pod"]);
        let mut state = KubeState::new(KubeStateConfig::default());
        recv(&mut rx, &mut state).await;
        recv(&mut rx, &mut state).await;
        drop(rx);
        assert!(timeout(STEP, task).await.is_ok_and(|r| r.is_ok()));
    }
}
