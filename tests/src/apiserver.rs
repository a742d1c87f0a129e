//! A stand-in for kube-apiserver: the smallest honest one that the agent's kube-rs watchers
//! (and `kubectl get`) can talk to, over plain HTTP on 127.0.0.1 with no authentication,
//! through a kubeconfig ([`ApiServer::kubeconfig`]).
//!
//! What it stands in for:
//! - the REST paths of a few resources: `pods`, `nodes` and `events` (core `v1`),
//!   `endpointslices` (`discovery.k8s.io/v1`), `events` (`events.k8s.io/v1`), `deployments`
//!   and `replicasets` (`apps/v1`), all namespaces (`/api/v1/pods`) and one
//!   (`/api/v1/namespaces/{ns}/pods`), and single objects (also as `PartialObjectMetadata`
//!   when the client asks for it, as kube-rs's `get_metadata` does);
//! - LIST with `metadata.resourceVersion`, `fieldSelector` (`a.b=v`, `a.b==v`, `a.b!=v`,
//!   comma-separated, on any dotted field path of the JSON object, e.g. `spec.nodeName`) and
//!   `labelSelector` (equality, inequality, existence `k` and `!k`; no set-based `in`/`notin`);
//!   `limit` is accepted and everything is returned in one page (a server may do that);
//! - WATCH (`watch=true`): a chunked response of JSON lines `{"type","object"}`, ADDED,
//!   MODIFIED, DELETED as they happen, from `resourceVersion` N on (omitted or "0": the current
//!   objects as ADDED first); BOOKMARK events with `allowWatchBookmarks`, every
//!   [`ApiServer::set_bookmark_interval`]; `sendInitialEvents=true` (streaming lists): the
//!   current objects as ADDED, then the `k8s.io/initial-events-end` bookmark; `timeoutSeconds`
//!   ends the watch; a watch from before the compaction point ([`ApiServer::compact`]) gets an
//!   `ERROR` event with a 410 Gone `Status` (reason `Expired`), as from etcd compaction, so a
//!   client must re-list;
//! - one resourceVersion counter for all objects (as etcd's revision), bumped on every change;
//! - POST (create; `generateName`; 409 AlreadyExists), PUT (replace), PATCH (merge patch;
//!   a strategic merge patch is applied as a merge patch, which is the same for the maps the
//!   tests patch), DELETE (the object goes at once, DELETED is sent);
//! - discovery (`/api`, `/api/v1`, `/apis`, `/apis/{group}[/{version}]`, `/version`) in the
//!   legacy (non-aggregated) form, which kubectl falls back to.
//!
//! - a hung server ([`ApiServer::hang`]): it still accepts connections and reads requests but
//!   answers none, and open watches send nothing more (no events, no bookmarks), until
//!   [`ApiServer::answer`]; then the held requests are answered and the watches go on. It
//!   stands in for a kube-apiserver stuck behind its load balancer (etcd unavailable, the
//!   server overloaded or paused, a black-holed connection), which clients only notice by
//!   their own timeouts.
//!
//! What it does not do: authentication, authorization, admission, validation or defaulting
//! (objects are stored as sent, plus `metadata.{uid,resourceVersion,creationTimestamp}`), graceful
//! deletion through the HTTP DELETE (the test's kubelet stand-in sets `deletionTimestamp`
//! through [`ApiServer::update`], as the real server does when a client deletes with a grace
//! period), field selectors limited to the fields real servers index (any field works here),
//! DELETED events for objects that stop matching a watch's selector, pagination (`continue`),
//! protobuf, server-side apply, `/status` subresources, any other resource, and TLS.
//!
//! The store is also reachable from Rust ([`ApiServer::upsert`], [`ApiServer::update`],
//! [`ApiServer::delete`], ...): that is how the kubelet stand-in updates pods and how the
//! tests play the endpoints controller. Requests are logged ([`ApiServer::requests`]), so a test
//! can check what the agent asked for.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use axum::{
    body::{Body, Bytes},
    extract::{Query, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use crate::{TempDir, cri::background_runtime};

/// A resource the stand-in serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Res {
    /// `v1` `pods`.
    Pods,
    /// `v1` `nodes` (cluster-scoped).
    Nodes,
    /// `v1` `events` (core events, the old API).
    CoreEvents,
    /// `discovery.k8s.io/v1` `endpointslices`.
    EndpointSlices,
    /// `events.k8s.io/v1` `events`.
    Events,
    /// `apps/v1` `deployments` (the agent reads a Deployment's uid to put Events on it).
    Deployments,
    /// `apps/v1` `replicasets`.
    ReplicaSets,
}

const ALL: [Res; 7] = [
    Res::Pods,
    Res::Nodes,
    Res::CoreEvents,
    Res::EndpointSlices,
    Res::Events,
    Res::Deployments,
    Res::ReplicaSets,
];

impl Res {
    /// The API group ("" for core).
    pub fn group(self) -> &'static str {
        match self {
            Res::Pods | Res::Nodes | Res::CoreEvents => "",
            Res::EndpointSlices => "discovery.k8s.io",
            Res::Events => "events.k8s.io",
            Res::Deployments | Res::ReplicaSets => "apps",
        }
    }

    /// `apiVersion` of its objects.
    pub fn api_version(self) -> &'static str {
        match self {
            Res::Pods | Res::Nodes | Res::CoreEvents => "v1",
            Res::EndpointSlices => "discovery.k8s.io/v1",
            Res::Events => "events.k8s.io/v1",
            Res::Deployments | Res::ReplicaSets => "apps/v1",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Res::Pods => "pods",
            Res::Nodes => "nodes",
            Res::CoreEvents | Res::Events => "events",
            Res::EndpointSlices => "endpointslices",
            Res::Deployments => "deployments",
            Res::ReplicaSets => "replicasets",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Res::Pods => "Pod",
            Res::Nodes => "Node",
            Res::CoreEvents | Res::Events => "Event",
            Res::EndpointSlices => "EndpointSlice",
            Res::Deployments => "Deployment",
            Res::ReplicaSets => "ReplicaSet",
        }
    }

    pub fn namespaced(self) -> bool {
        self != Res::Nodes
    }

    fn short_names(self) -> Vec<&'static str> {
        match self {
            Res::Pods => vec!["po"],
            Res::Nodes => vec!["no"],
            Res::CoreEvents => vec!["ev"],
            Res::Deployments => vec!["deploy"],
            Res::ReplicaSets => vec!["rs"],
            Res::EndpointSlices | Res::Events => vec![],
        }
    }

    fn find(group: &str, version: &str, plural: &str) -> Option<Res> {
        ALL.into_iter()
            .find(|r| r.group() == group && version == "v1" && r.plural() == plural)
    }
}

/// A change, as a watch sends it.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: &'static str,
    object: Value,
}

struct Collection {
    objects: BTreeMap<(String, String), Value>,
    /// Changes after `compacted`, oldest first.
    history: Vec<Change>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    tx: broadcast::Sender<Change>,
}

struct Store {
    rv: u64,
    collections: HashMap<Res, Collection>,
    requests: Vec<String>,
    bookmark_interval: Duration,
    uid_seq: u64,
}

struct Shared {
    store: Mutex<Store>,
    /// Bumped to end every open watch.
    watch_generation: watch::Sender<u64>,
    /// `true` while the server hangs ([`ApiServer::hang`]).
    hung: watch::Sender<bool>,
}

impl Shared {
    /// Returns once the server does not hang (at once if it does not).
    async fn unhung(&self) {
        let mut hung = self.hung.subscribe();
        let _ = hung.wait_for(|h| !*h).await;
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running stand-in. Stops (and ends its watches) on drop.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    dir: TempDir,
}

impl ApiServer {
    /// Starts serving on an ephemeral port of 127.0.0.1 and writes a kubeconfig for it.
    pub fn start() -> Result<ApiServer> {
        let mut collections = HashMap::new();
        for r in ALL {
            collections.insert(
                r,
                Collection {
                    objects: BTreeMap::new(),
                    history: Vec::new(),
                    compacted: 0,
                    tx: broadcast::channel(4096).0,
                },
            );
        }
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 1,
                collections,
                requests: Vec::new(),
                bookmark_interval: Duration::from_secs(1),
                uid_seq: 0,
            }),
            watch_generation: watch::channel(0).0,
            hung: watch::channel(false).0,
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let listener = {
            let _guard = background_runtime().enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        background_runtime().spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            });
            if let Err(e) = serve.await {
                eprintln!("[apiserver] serve failed: {e}");
            }
        });
        let dir = TempDir::new("apiserver")?;
        let server = ApiServer {
            addr,
            shared,
            stop: Some(stop_tx),
            dir,
        };
        server
            .dir
            .write("kubeconfig", kubeconfig_yaml(&server.url()))?;
        Ok(server)
    }

    /// From now on the server hangs: it accepts connections and requests but answers none,
    /// and its open watches send nothing (see the module's documentation).
    pub fn hang(&self) {
        self.shared.hung.send_replace(true);
    }

    /// The server answers again: held requests are answered, watches go on.
    pub fn answer(&self) {
        self.shared.hung.send_replace(false);
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig file (context `termscope-test`, namespace `default`, no credentials).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// A directory that lives as long as the server (for kubectl's cache, say).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir.path
    }

    /// The current resourceVersion (of the whole store).
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// How often watches with `allowWatchBookmarks` get a BOOKMARK (default 1 s; the real
    /// server sends about one a minute).
    pub fn set_bookmark_interval(&self, every: Duration) {
        self.shared.lock().bookmark_interval = every;
    }

    /// Creates or replaces an object (ADDED or MODIFIED). `metadata.name` (and, when
    /// namespaced, `metadata.namespace`) must be set. Returns the stored object.
    pub fn upsert(&self, res: Res, object: Value) -> Result<Value> {
        let mut store = self.shared.lock();
        store
            .put(res, object, Put::Upsert)
            .map_err(|e| e.into_anyhow())
    }

    /// Changes an object in place (MODIFIED). Returns the stored object.
    pub fn update(
        &self,
        res: Res,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Result<Value> {
        let mut store = self.shared.lock();
        let key = (ns_key(res, namespace), name.to_string());
        let mut object = store
            .collection(res)
            .objects
            .get(&key)
            .cloned()
            .with_context(|| format!("no {} {namespace}/{name}", res.kind()))?;
        f(&mut object);
        store
            .put(res, object, Put::Replace)
            .map_err(|e| e.into_anyhow())
    }

    /// Deletes an object (DELETED). Returns it, if it existed.
    pub fn delete(&self, res: Res, namespace: &str, name: &str) -> Option<Value> {
        self.shared.lock().remove(res, namespace, name)
    }

    /// One object.
    pub fn get(&self, res: Res, namespace: &str, name: &str) -> Option<Value> {
        let mut store = self.shared.lock();
        let key = (ns_key(res, namespace), name.to_string());
        store.collection(res).objects.get(&key).cloned()
    }

    /// Every object of a resource.
    pub fn list(&self, res: Res) -> Vec<Value> {
        let mut store = self.shared.lock();
        store.collection(res).objects.values().cloned().collect()
    }

    /// Every event posted, of both events APIs (core `v1` and `events.k8s.io/v1`).
    pub fn events(&self) -> Vec<Value> {
        let mut v = self.list(Res::CoreEvents);
        v.extend(self.list(Res::Events));
        v
    }

    /// Forgets the change history up to now (as an etcd compaction): a watch that resumes
    /// from an older resourceVersion gets 410 Gone and must re-list. A client that has seen
    /// everything can still resume.
    pub fn compact(&self) {
        let mut store = self.shared.lock();
        let rv = store.rv;
        store.compact_to(rv);
    }

    /// Makes every watcher re-list: the store moves on (as with writes to other resources),
    /// the history is compacted to there, and open watches end; a client resuming from the
    /// version it had gets 410 Gone, lists again, and watches from the new version.
    pub fn force_relist(&self) {
        {
            let mut store = self.shared.lock();
            store.rv += 1;
            let rv = store.rv;
            store.compact_to(rv);
        }
        self.close_watches();
    }

    /// Ends every open watch (the clients see the stream end and watch again).
    pub fn close_watches(&self) {
        self.shared.watch_generation.send_modify(|g| *g += 1);
    }

    /// The requests served so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.close_watches();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn kubeconfig_yaml(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: termscope-test\n  cluster:\n    \
         server: {url}\nusers:\n- name: termscope-test\n  user: {{}}\ncontexts:\n- name: \
         termscope-test\n  context:\n    cluster: termscope-test\n    user: termscope-test\n    \
         namespace: default\ncurrent-context: termscope-test\n"
    )
}

fn ns_key(res: Res, namespace: &str) -> String {
    if res.namespaced() {
        namespace.to_string()
    } else {
        String::new()
    }
}

/// An API error, sent as a `Status`.
#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }

    fn into_anyhow(self) -> anyhow::Error {
        anyhow::anyhow!("{} {}: {}", self.code, self.reason, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(code, &self.status())
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

#[derive(PartialEq)]
enum Put {
    Upsert,
    Create,
    Replace,
}

impl Store {
    fn collection(&mut self, res: Res) -> &mut Collection {
        self.collections
            .get_mut(&res)
            .unwrap_or_else(|| unreachable!("every resource has a collection"))
    }

    fn compact_to(&mut self, rv: u64) {
        for c in self.collections.values_mut() {
            c.history.retain(|ch| ch.rv > rv);
            c.compacted = c.compacted.max(rv);
        }
    }

    fn put(&mut self, res: Res, mut object: Value, mode: Put) -> Result<Value, ApiError> {
        if !object.is_object() {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the body is not a JSON object",
            ));
        }
        if object["metadata"].is_null() {
            object["metadata"] = json!({});
        }
        let name = match object["metadata"]["name"].as_str() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => {
                let Some(prefix) = object["metadata"]["generateName"].as_str() else {
                    return Err(ApiError::new(
                        400,
                        "BadRequest",
                        "metadata.name is required",
                    ));
                };
                self.uid_seq += 1;
                let n = format!("{prefix}{:05x}", self.uid_seq & 0xfffff);
                object["metadata"]["name"] = json!(n);
                n
            }
        };
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if res.namespaced() && namespace.is_empty() {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "metadata.namespace is required",
            ));
        }
        let key = (ns_key(res, &namespace), name.clone());
        let existing = self.collection(res).objects.get(&key).cloned();
        match (&mode, &existing) {
            (Put::Create, Some(_)) => {
                return Err(ApiError::new(
                    409,
                    "AlreadyExists",
                    format!("{} \"{name}\" already exists", res.plural()),
                ));
            }
            (Put::Replace, None) => {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    format!("{} \"{name}\" not found", res.plural()),
                ));
            }
            _ => {}
        }
        object["apiVersion"] = json!(res.api_version());
        object["kind"] = json!(res.kind());
        let meta = &mut object["metadata"];
        match &existing {
            Some(old) => {
                meta["uid"] = old["metadata"]["uid"].clone();
                meta["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
            }
            None => {
                if meta["uid"].as_str().is_none_or(str::is_empty) {
                    self.uid_seq += 1;
                    meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uid_seq));
                }
                if meta["creationTimestamp"].is_null() {
                    meta["creationTimestamp"] = json!(rfc3339(SystemTime::now(), false));
                }
            }
        }
        self.rv += 1;
        let rv = self.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let kind = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let c = self.collection(res);
        c.objects.insert(key, object.clone());
        let change = Change {
            rv,
            kind,
            object: object.clone(),
        };
        c.history.push(change.clone());
        let _ = c.tx.send(change);
        Ok(object)
    }

    fn remove(&mut self, res: Res, namespace: &str, name: &str) -> Option<Value> {
        let key = (ns_key(res, namespace), name.to_string());
        let mut object = self.collection(res).objects.remove(&key)?;
        self.rv += 1;
        let rv = self.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let c = self.collection(res);
        let change = Change {
            rv,
            kind: "DELETED",
            object: object.clone(),
        };
        c.history.push(change.clone());
        let _ = c.tx.send(change);
        Some(object)
    }
}

/// What a request path names.
enum Target {
    Discovery(Value),
    Collection {
        res: Res,
        namespace: Option<String>,
    },
    Item {
        res: Res,
        namespace: String,
        name: String,
    },
}

fn route(path: &str, addr_hint: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    };
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["version"] => {
            return Ok(Target::Discovery(json!({
                "major": "1", "minor": "30", "gitVersion": "v1.30.0-termscope-test",
                "platform": "linux/amd64",
            })));
        }
        ["api"] => {
            return Ok(Target::Discovery(json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": addr_hint }],
            })));
        }
        ["apis"] => return Ok(Target::Discovery(group_list())),
        ["apis", g] => {
            return group_list()["groups"]
                .as_array()
                .and_then(|gs| gs.iter().find(|x| x["name"] == *g))
                .map(|x| {
                    let mut x = x.clone();
                    x["kind"] = json!("APIGroup");
                    x["apiVersion"] = json!("v1");
                    Target::Discovery(x)
                })
                .ok_or_else(not_found);
        }
        ["api", "v1"] => return Ok(Target::Discovery(resource_list("", "v1"))),
        ["apis", g, v] => {
            let list = resource_list(g, v);
            if list["resources"].as_array().is_none_or(|r| r.is_empty()) {
                return Err(not_found());
            }
            return Ok(Target::Discovery(list));
        }
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => return Err(not_found()),
    };
    let res_of = |plural: &str| Res::find(group, version, plural).ok_or_else(not_found);
    match rest {
        ["namespaces", ns, plural] => Ok(Target::Collection {
            res: res_of(plural)?,
            namespace: Some((*ns).to_string()),
        }),
        ["namespaces", ns, plural, name] => Ok(Target::Item {
            res: res_of(plural)?,
            namespace: (*ns).to_string(),
            name: (*name).to_string(),
        }),
        [plural] => Ok(Target::Collection {
            res: res_of(plural)?,
            namespace: None,
        }),
        [plural, name] => {
            let res = res_of(plural)?;
            if res.namespaced() {
                return Err(not_found());
            }
            Ok(Target::Item {
                res,
                namespace: String::new(),
                name: (*name).to_string(),
            })
        }
        _ => Err(not_found()),
    }
}

fn group_list() -> Value {
    let mut groups: Vec<Value> = Vec::new();
    for r in ALL {
        if r.group().is_empty() || groups.iter().any(|g| g["name"] == r.group()) {
            continue;
        }
        let gv = json!({ "groupVersion": r.api_version(), "version": "v1" });
        groups.push(json!({
            "name": r.group(),
            "versions": [gv.clone()],
            "preferredVersion": gv,
        }));
    }
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

fn resource_list(group: &str, version: &str) -> Value {
    let resources: Vec<Value> = ALL
        .into_iter()
        .filter(|r| r.group() == group && version == "v1")
        .map(|r| {
            json!({
                "name": r.plural(),
                "singularName": r.kind().to_lowercase(),
                "namespaced": r.namespaced(),
                "kind": r.kind(),
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                "shortNames": r.short_names(),
            })
        })
        .collect();
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources })
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    shared.lock().requests.push(format!(
        "{method} {}",
        uri.path_and_query().map_or("", |p| p.as_str())
    ));
    shared.unhung().await;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    match serve(&shared, method, uri.path(), &host, &headers, &query, &body) {
        Ok(Reply::Json(code, v)) => json_response(code, &v),
        Ok(Reply::Watch(w)) => start_watch(shared, w),
        Err(e) => e.into_response(),
    }
}

enum Reply {
    Json(StatusCode, Value),
    Watch(WatchRequest),
}

struct WatchRequest {
    res: Res,
    filter: Filter,
    from: Option<u64>,
    initial_events: bool,
    bookmarks: bool,
    timeout: Option<Duration>,
}

fn serve(
    shared: &Shared,
    method: Method,
    path: &str,
    host: &str,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let target = route(path, host)?;
    let parse_body = || -> Result<Value, ApiError> {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::new(400, "BadRequest", format!("the body is not JSON: {e}")))
    };
    match (method, target) {
        (Method::GET, Target::Discovery(v)) => Ok(Reply::Json(StatusCode::OK, v)),
        (Method::GET, Target::Collection { res, namespace }) => {
            let filter = Filter::parse(res, namespace, query)?;
            let flag = |k: &str| query.get(k).is_some_and(|v| v == "true" || v == "1");
            if flag("watch") {
                let from = match query.get("resourceVersion").map(String::as_str) {
                    None | Some("") | Some("0") => None,
                    Some(v) => Some(v.parse::<u64>().map_err(|_| {
                        ApiError::new(400, "BadRequest", format!("bad resourceVersion {v:?}"))
                    })?),
                };
                let timeout = query
                    .get("timeoutSeconds")
                    .and_then(|t| t.parse::<u64>().ok())
                    .filter(|t| *t > 0)
                    .map(Duration::from_secs);
                return Ok(Reply::Watch(WatchRequest {
                    res,
                    filter,
                    from,
                    initial_events: flag("sendInitialEvents"),
                    bookmarks: flag("allowWatchBookmarks"),
                    timeout,
                }));
            }
            let mut store = shared.lock();
            let rv = store.rv;
            let items: Vec<Value> = store
                .collection(res)
                .objects
                .values()
                .filter(|o| filter.matches(o))
                .cloned()
                .collect();
            Ok(Reply::Json(
                StatusCode::OK,
                json!({
                    "kind": format!("{}List", res.kind()),
                    "apiVersion": res.api_version(),
                    "metadata": { "resourceVersion": rv.to_string() },
                    "items": items,
                }),
            ))
        }
        (
            Method::GET,
            Target::Item {
                res,
                namespace,
                name,
            },
        ) => {
            let mut store = shared.lock();
            let key = (ns_key(res, &namespace), name.clone());
            let accept = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let metadata_only = accept.contains("as=PartialObjectMetadata");
            store
                .collection(res)
                .objects
                .get(&key)
                .map(|o| {
                    if metadata_only {
                        json!({
                            "kind": "PartialObjectMetadata",
                            "apiVersion": "meta.k8s.io/v1",
                            "metadata": o["metadata"],
                        })
                    } else {
                        o.clone()
                    }
                })
                .map(|o| Reply::Json(StatusCode::OK, o))
                .ok_or_else(|| {
                    ApiError::new(
                        404,
                        "NotFound",
                        format!("{} \"{name}\" not found", res.plural()),
                    )
                })
        }
        (Method::POST, Target::Collection { res, namespace }) => {
            let mut object = parse_body()?;
            if let Some(ns) = namespace {
                if object.get("metadata").is_none() {
                    object["metadata"] = json!({});
                }
                object["metadata"]["namespace"] = json!(ns);
            }
            let stored = shared.lock().put(res, object, Put::Create)?;
            Ok(Reply::Json(StatusCode::CREATED, stored))
        }
        (
            Method::PUT,
            Target::Item {
                res,
                namespace,
                name,
            },
        ) => {
            let mut object = parse_body()?;
            if object.get("metadata").is_none() {
                object["metadata"] = json!({});
            }
            object["metadata"]["name"] = json!(name);
            if res.namespaced() {
                object["metadata"]["namespace"] = json!(namespace);
            }
            let stored = shared.lock().put(res, object, Put::Replace)?;
            Ok(Reply::Json(StatusCode::OK, stored))
        }
        (
            Method::PATCH,
            Target::Item {
                res,
                namespace,
                name,
            },
        ) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !content_type.contains("merge-patch") {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the stand-in applies merge patches only, not {content_type:?}"),
                ));
            }
            let patch = parse_body()?;
            let mut store = shared.lock();
            let key = (ns_key(res, &namespace), name.clone());
            let mut object = store
                .collection(res)
                .objects
                .get(&key)
                .cloned()
                .ok_or_else(|| {
                    ApiError::new(
                        404,
                        "NotFound",
                        format!("{} \"{name}\" not found", res.plural()),
                    )
                })?;
            merge_patch(&mut object, &patch);
            object["metadata"]["name"] = json!(name);
            if res.namespaced() {
                object["metadata"]["namespace"] = json!(namespace);
            }
            let stored = store.put(res, object, Put::Replace)?;
            Ok(Reply::Json(StatusCode::OK, stored))
        }
        (
            Method::DELETE,
            Target::Item {
                res,
                namespace,
                name,
            },
        ) => shared
            .lock()
            .remove(res, &namespace, &name)
            .map(|o| Reply::Json(StatusCode::OK, o))
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "NotFound",
                    format!("{} \"{name}\" not found", res.plural()),
                )
            }),
        (m, _) => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{m} is not supported here"),
        )),
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Some(t) = target.as_object_mut() {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// A LIST/WATCH's namespace, field and label selectors.
struct Filter {
    namespace: Option<String>,
    fields: Vec<(String, bool, String)>,
    labels: Vec<LabelReq>,
}

enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
}

impl Filter {
    fn parse(
        res: Res,
        namespace: Option<String>,
        query: &HashMap<String, String>,
    ) -> Result<Filter, ApiError> {
        let bad = |m: String| ApiError::new(400, "BadRequest", m);
        let mut fields = Vec::new();
        for term in query
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let (key, eq, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(bad(format!("invalid field selector term {term:?}")));
            };
            fields.push((key.trim().to_string(), eq, value.trim().to_string()));
        }
        let mut labels = Vec::new();
        for term in query
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            if term.contains(" in ") || term.contains(" notin ") || term.contains('(') {
                return Err(bad(format!(
                    "set-based label selectors are not supported by the stand-in: {term:?}"
                )));
            }
            labels.push(if let Some((k, v)) = term.split_once("!=") {
                LabelReq::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==") {
                LabelReq::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once('=') {
                LabelReq::Eq(k.trim().into(), v.trim().into())
            } else if let Some(k) = term.strip_prefix('!') {
                LabelReq::NotExists(k.trim().into())
            } else {
                LabelReq::Exists(term.into())
            });
        }
        Ok(Filter {
            namespace: namespace.filter(|_| res.namespaced()),
            fields,
            labels,
        })
    }

    fn matches(&self, o: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && o["metadata"]["namespace"].as_str() != Some(ns.as_str())
        {
            return false;
        }
        for (path, eq, want) in &self.fields {
            let mut v = o;
            for part in path.split('.') {
                v = &v[part];
            }
            let have = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            if (have == *want) != *eq {
                return false;
            }
        }
        let labels = &o["metadata"]["labels"];
        self.labels.iter().all(|req| match req {
            LabelReq::Eq(k, v) => labels[k].as_str() == Some(v.as_str()),
            LabelReq::Ne(k, v) => labels[k].as_str() != Some(v.as_str()),
            LabelReq::Exists(k) => !labels[k].is_null(),
            LabelReq::NotExists(k) => labels[k].is_null(),
        })
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": kind, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn start_watch(shared: Arc<Shared>, w: WatchRequest) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    tokio::spawn(run_watch(shared, w, tx));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap_or_else(|e| ApiError::new(500, "InternalError", e.to_string()).into_response())
}

async fn run_watch(
    shared: Arc<Shared>,
    w: WatchRequest,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
) {
    let mut generation = shared.watch_generation.subscribe();
    generation.borrow_and_update();
    // Under the store lock: what to send first, and the subscription for what follows, so
    // nothing falls between the two.
    let (first, live, mut last_rv, bookmark_every) = {
        let mut store = shared.lock();
        let rv = store.rv;
        let every = store.bookmark_interval;
        let c = store.collection(w.res);
        let mut first: Vec<Bytes> = Vec::new();
        let expired = match w.from {
            Some(from) if !w.initial_events && from < c.compacted => {
                let e = ApiError::new(
                    410,
                    "Expired",
                    format!("too old resource version: {from} ({})", c.compacted),
                );
                Some((vec![event_line("ERROR", &e.status())], None, 0, every))
            }
            Some(from) if !w.initial_events => {
                for ch in c.history.iter().filter(|ch| ch.rv > from) {
                    if w.filter.matches(&ch.object) {
                        first.push(event_line(ch.kind, &ch.object));
                    }
                }
                None
            }
            _ => {
                for o in c.objects.values().filter(|o| w.filter.matches(o)) {
                    first.push(event_line("ADDED", o));
                }
                if w.initial_events {
                    first.push(event_line(
                        "BOOKMARK",
                        &json!({
                            "kind": w.res.kind(),
                            "apiVersion": w.res.api_version(),
                            "metadata": {
                                "resourceVersion": rv.to_string(),
                                "annotations": { "k8s.io/initial-events-end": "true" },
                            },
                        }),
                    ));
                }
                None
            }
        };
        if let Some(expired) = expired {
            expired
        } else {
            let last = match w.from {
                Some(from) if !w.initial_events => from.max(c.history.last().map_or(0, |h| h.rv)),
                _ => rv,
            };
            (first, Some(c.tx.subscribe()), last, every)
        }
    };
    for line in first {
        shared.unhung().await;
        if tx.send(Ok(line)).await.is_err() {
            return;
        }
    }
    // An expired resourceVersion: the ERROR event was all there is to say.
    let Some(mut live) = live else { return };
    let deadline = w.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut hung = shared.hung.subscribe();
    let mut bookmark = tokio::time::interval(bookmark_every);
    bookmark.tick().await;
    loop {
        // A hung server sends nothing, not even the end of the watch.
        tokio::select! {
            () = shared.unhung() => {}
            () = tx.closed() => return,
        }
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = async { let _ = hung.wait_for(|h| *h).await; } => continue,
            _ = until_deadline => return,
            _ = generation.changed() => return,
            _ = tx.closed() => return,
            change = live.recv() => match change {
                Ok(ch) => {
                    if ch.rv <= last_rv {
                        continue;
                    }
                    last_rv = ch.rv;
                    if w.filter.matches(&ch.object)
                        && tx.send(Ok(event_line(ch.kind, &ch.object))).await.is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let e = ApiError::new(410, "Expired", "the watch fell too far behind");
                    let _ = tx.send(Ok(event_line("ERROR", &e.status()))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = bookmark.tick(), if w.bookmarks => {
                let rv = {
                    let store = shared.lock();
                    if live.is_empty() { store.rv } else { last_rv }
                };
                let line = event_line(
                    "BOOKMARK",
                    &json!({
                        "kind": w.res.kind(),
                        "apiVersion": w.res.api_version(),
                        "metadata": { "resourceVersion": rv.to_string() },
                    }),
                );
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// RFC 3339 in UTC, as Kubernetes writes `Time` (seconds) and `MicroTime` (microseconds).
pub fn rfc3339(t: SystemTime, micros: bool) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if micros {
        format!(
            "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:06}Z",
            d.subsec_micros()
        )
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    }
}

/// Fails unless `v` has `path` (dotted) equal to `want`; for test assertions on objects.
pub fn expect_field(v: &Value, path: &str, want: &Value) -> Result<()> {
    let mut cur = v;
    for part in path.split('.') {
        cur = &cur[part];
    }
    if cur != want {
        bail!("{path} is {cur}, expected {want}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH, false), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_709_251_199_123_456);
        assert_eq!(rfc3339(t, false), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339(t, true), "2024-02-29T23:59:59.123456Z");
    }

    #[test]
    fn merge_patch_sets_and_removes() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(&mut v, &json!({"a": {"b": null, "e": 3}, "d": [2]}));
        assert_eq!(v, json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }

    #[test]
    fn selectors_match() -> Result<()> {
        let pod = json!({"metadata": {"namespace": "n", "labels": {"app": "web"}},
                         "spec": {"nodeName": "node-a"}});
        let q = |f: &str, l: &str| {
            HashMap::from([
                ("fieldSelector".to_string(), f.to_string()),
                ("labelSelector".to_string(), l.to_string()),
            ])
        };
        let m = |f: &str, l: &str| -> Result<bool> {
            Ok(Filter::parse(Res::Pods, None, &q(f, l))
                .map_err(ApiError::into_anyhow)?
                .matches(&pod))
        };
        assert!(m("spec.nodeName=node-a", "")?);
        assert!(!m("spec.nodeName=node-b", "")?);
        assert!(m("spec.nodeName!=node-b,metadata.namespace=n", "app=web")?);
        assert!(!m("", "app!=web")?);
        assert!(m("", "app,!tier")?);
        assert!(Filter::parse(Res::Pods, None, &q("", "app in (a,b)")).is_err());
        Ok(())
    }

    #[test]
    fn routes_resolve() {
        assert!(matches!(
            route("/api/v1/pods", "h"),
            Ok(Target::Collection {
                res: Res::Pods,
                namespace: None
            })
        ));
        assert!(matches!(
            route("/apis/discovery.k8s.io/v1/namespaces/x/endpointslices", "h"),
            Ok(Target::Collection {
                res: Res::EndpointSlices,
                namespace: Some(_)
            })
        ));
        assert!(matches!(
            route("/apis/events.k8s.io/v1/namespaces/x/events/e1", "h"),
            Ok(Target::Item {
                res: Res::Events,
                ..
            })
        ));
        assert!(matches!(
            route("/api/v1/nodes/n1", "h"),
            Ok(Target::Item {
                res: Res::Nodes,
                ..
            })
        ));
        assert!(route("/api/v1/pods/p1", "h").is_err());
        assert!(route("/apis/apps/v1/deployments", "h").is_ok());
        assert!(route("/apis/batch/v1/jobs", "h").is_err());
    }
}
