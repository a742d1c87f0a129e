//! Kubernetes Events telling the operator, where they look (`kubectl describe
//! deployment web`, `kubectl get events`), that a pod's shutdown cut connections.
//!
//! One core/v1 Event of type Warning, reason [`REASON_CONNECTIONS_CUT`] by
//! default, reporting component `termscope`, on the pod's workload (Deployment,
//! StatefulSet, DaemonSet, Job, CronJob, ReplicaSet), else on the pod, with the
//! pod as the related object. At most one per workload per interval
//! ([`EventRateLimiter`]); the event's `count` says how many shutdowns it stands
//! for.
//!
//! A Deployment is inferred from its ReplicaSet's name, without its uid; since
//! `kubectl describe` matches events by uid, the Deployment's uid is read
//! (metadata only). If that fails (no `get` on `deployments`, not found) the
//! event goes on the ReplicaSet, whose uid the pod names.
//!
//! RBAC needed: `create` on `events`; `get` on `deployments` (apps) for events
//! on Deployments.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::PostParams;
use kube::{Api, Client};
use serde::Serialize;

use super::pod::{PodInfo, WorkloadKind};
use super::{KubeError, UnixNanos};

/// The event reason for a shutdown that cut connections.
pub const REASON_CONNECTIONS_CUT: &str = "ConnectionsCutOnShutdown";
/// `reportingComponent` and `source.component`.
pub const REPORTING_COMPONENT: &str = "termscope";
/// The event's action (what the pod was doing).
pub const ACTION: &str = "Shutdown";
/// Default minimum interval between two events on one workload.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// The API server's limits on a core/v1 event with `eventTime`.
const MAX_MESSAGE_BYTES: usize = 1024;
const MAX_INSTANCE_BYTES: usize = 128;

/// An object an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Unknown for a Deployment inferred from its ReplicaSet's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl ObjectRef {
    fn to_k8s(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(self.api_version.clone()),
            kind: Some(self.kind.clone()),
            namespace: Some(self.namespace.clone()),
            name: Some(self.name.clone()),
            uid: self.uid.clone(),
            ..Default::default()
        }
    }

    /// The rate-limiting key: namespace, kind, name.
    pub fn key(&self) -> WorkloadKey {
        WorkloadKey {
            namespace: self.namespace.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
        }
    }
}

/// The pod itself.
pub fn pod_ref(pod: &PodInfo) -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "Pod".into(),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: Some(pod.uid.clone()),
    }
}

/// The workload an event about this pod should be on, as far as the pod tells
/// (a Deployment without uid); the pod itself for a bare pod or an owner of
/// another kind.
pub fn workload_ref(pod: &PodInfo) -> ObjectRef {
    match (&pod.workload_kind, &pod.owner) {
        (WorkloadKind::Deployment, _) => ObjectRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: pod.namespace.clone(),
            name: pod.workload.clone(),
            uid: None,
        },
        (
            WorkloadKind::StatefulSet
            | WorkloadKind::DaemonSet
            | WorkloadKind::Job
            | WorkloadKind::CronJob
            | WorkloadKind::ReplicaSet,
            Some(owner),
        ) => ObjectRef {
            api_version: owner.api_version.clone(),
            kind: owner.kind.clone(),
            namespace: pod.namespace.clone(),
            name: owner.name.clone(),
            uid: Some(owner.uid.clone()).filter(|u| !u.is_empty()),
        },
        _ => pod_ref(pod),
    }
}

/// The owner reference as written (the ReplicaSet of a Deployment's pod).
fn owner_ref(pod: &PodInfo) -> Option<ObjectRef> {
    pod.owner.as_ref().map(|o| ObjectRef {
        api_version: o.api_version.clone(),
        kind: o.kind.clone(),
        namespace: pod.namespace.clone(),
        name: o.name.clone(),
        uid: Some(o.uid.clone()).filter(|u| !u.is_empty()),
    })
}

/// A workload for rate limiting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkloadKey {
    pub namespace: String,
    pub kind: String,
    pub name: String,
}

/// What [`EventRateLimiter::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Post an event now, standing for `count` occurrences (this one and those
    /// suppressed since the last event); `total` counts every occurrence seen.
    Emit { count: u32, total: u64 },
    /// Too soon after the last event; `pending` occurrences wait for the next.
    Suppress { pending: u32 },
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    last_emitted: UnixNanos,
    pending: u32,
    total: u64,
}

/// At most one event per workload per interval, counting the rest. Pure.
#[derive(Debug)]
pub struct EventRateLimiter {
    interval_ns: u64,
    max_workloads: usize,
    slots: HashMap<WorkloadKey, Slot>,
}

impl EventRateLimiter {
    /// `max_workloads` bounds memory: past it, workloads whose interval has
    /// passed are forgotten, then the least recently emitted.
    pub fn new(interval: Duration, max_workloads: usize) -> Self {
        EventRateLimiter {
            interval_ns: u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX),
            max_workloads: max_workloads.max(1),
            slots: HashMap::new(),
        }
    }

    /// An occurrence for `key` at `now`: emit an event or not.
    pub fn check(&mut self, key: &WorkloadKey, now: UnixNanos) -> RateDecision {
        if let Some(slot) = self.slots.get_mut(key) {
            slot.total += 1;
            if now.0 >= slot.last_emitted.0.saturating_add(self.interval_ns) {
                let count = slot.pending.saturating_add(1);
                slot.pending = 0;
                slot.last_emitted = now;
                return RateDecision::Emit {
                    count,
                    total: slot.total,
                };
            }
            slot.pending = slot.pending.saturating_add(1);
            return RateDecision::Suppress {
                pending: slot.pending,
            };
        }
        if self.slots.len() >= self.max_workloads {
            self.make_room(now);
        }
        self.slots.insert(
            key.clone(),
            Slot {
                last_emitted: now,
                pending: 0,
                total: 1,
            },
        );
        RateDecision::Emit { count: 1, total: 1 }
    }

    /// Occurrences counted for `key` so far.
    pub fn total(&self, key: &WorkloadKey) -> u64 {
        self.slots.get(key).map_or(0, |s| s.total)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn make_room(&mut self, now: UnixNanos) {
        let interval = self.interval_ns;
        self.slots
            .retain(|_, s| now.0 < s.last_emitted.0.saturating_add(interval));
        while self.slots.len() >= self.max_workloads {
            let oldest = self
                .slots
                .iter()
                .min_by_key(|(_, s)| s.last_emitted)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.slots.remove(&k);
                }
                None => break,
            }
        }
    }
}

/// Details of one event besides the pod and the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    /// Occurrences it stands for (the event's `count`).
    pub count: u32,
    pub now: UnixNanos,
    /// `reportingInstance` and `source.host`: this node's name.
    pub reporting_instance: String,
}

fn truncate(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_owned();
    }
    let mut end = max_bytes.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The Event object about `target` (with the pod as related object). Pure.
pub fn build_event(
    target: &ObjectRef,
    pod: &PodInfo,
    reason: &str,
    message: &str,
    meta: &EventMeta,
) -> Event {
    let ts = meta.now.to_timestamp();
    let instance = truncate(&meta.reporting_instance, MAX_INSTANCE_BYTES);
    let pod = pod_ref(pod);
    Event {
        metadata: ObjectMeta {
            // client-go's naming: <object>.<hex nanoseconds>.
            name: Some(format!("{}.{:x}", target.name, meta.now.0)),
            namespace: Some(target.namespace.clone()),
            ..Default::default()
        },
        involved_object: target.to_k8s(),
        related: (pod != *target).then(|| pod.to_k8s()),
        type_: Some("Warning".into()),
        reason: Some(reason.to_owned()),
        message: Some(truncate(message, MAX_MESSAGE_BYTES)),
        action: Some(ACTION.into()),
        count: Some(i32::try_from(meta.count.max(1)).unwrap_or(i32::MAX)),
        event_time: Some(MicroTime(ts)),
        first_timestamp: Some(Time(ts)),
        last_timestamp: Some(Time(ts)),
        reporting_component: Some(REPORTING_COMPONENT.into()),
        reporting_instance: Some(instance.clone()),
        source: Some(EventSource {
            component: Some(REPORTING_COMPONENT.into()),
            host: Some(instance),
        }),
        ..Default::default()
    }
}

/// The object to put the event on: [`workload_ref`], with the Deployment's uid
/// read from the API; the ReplicaSet when that fails.
pub async fn resolve_target(client: &Client, pod: &PodInfo) -> ObjectRef {
    let target = workload_ref(pod);
    if target.kind != "Deployment" || target.uid.is_some() {
        return target;
    }
    let api: Api<Deployment> = Api::namespaced(client.clone(), &target.namespace);
    let fallback = || owner_ref(pod).unwrap_or_else(|| pod_ref(pod));
    match api.get_metadata_opt(&target.name).await {
        Ok(Some(meta)) => match meta.metadata.uid {
            Some(uid) if !uid.is_empty() => ObjectRef {
                uid: Some(uid),
                ..target
            },
            _ => fallback(),
        },
        Ok(None) => {
            tracing::debug!(
                namespace = %target.namespace, deployment = %target.name,
                "kubernetes: deployment not found; the event goes on the replicaset"
            );
            fallback()
        }
        Err(error) => {
            tracing::debug!(
                namespace = %target.namespace, deployment = %target.name, %error,
                "kubernetes: cannot read the deployment; the event goes on the replicaset"
            );
            fallback()
        }
    }
}

/// Posts one Warning event about the pod's shutdown on its workload (no rate
/// limit: see [`ShutdownEvents`]). Returns the object it was put on.
pub async fn post_shutdown_event(
    client: &Client,
    pod: &PodInfo,
    message: &str,
    reason: &str,
    meta: &EventMeta,
) -> Result<ObjectRef, KubeError> {
    let target = resolve_target(client, pod).await;
    let event = build_event(&target, pod, reason, message, meta);
    let api: Api<Event> = Api::namespaced(client.clone(), &target.namespace);
    api.create(&PostParams::default(), &event)
        .await
        .map_err(|source| KubeError::Api {
            what: format!(
                "create event {reason} on {} {}/{}",
                target.kind, target.namespace, target.name
            ),
            source,
        })?;
    Ok(target)
}

/// What [`ShutdownEvents::post`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    Created {
        target: ObjectRef,
        count: u32,
    },
    /// An event on this workload was posted less than an interval ago.
    RateLimited {
        pending: u32,
    },
}

/// Posts shutdown events with a per-workload rate limit. Shareable (`Arc`)
/// between tasks.
pub struct ShutdownEvents {
    client: Client,
    node: String,
    limiter: Mutex<EventRateLimiter>,
}

impl std::fmt::Debug for ShutdownEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownEvents")
            .field("node", &self.node)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl ShutdownEvents {
    pub fn new(client: Client, node: String, interval: Duration) -> Self {
        ShutdownEvents {
            client,
            node,
            limiter: Mutex::new(EventRateLimiter::new(interval, 10_000)),
        }
    }

    /// One shutdown of `pod` that cut connections, at `now`.
    pub async fn post(
        &self,
        pod: &PodInfo,
        message: &str,
        reason: &str,
        now: UnixNanos,
    ) -> Result<Posted, KubeError> {
        let key = workload_ref(pod).key();
        let decision = self
            .limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check(&key, now);
        match decision {
            RateDecision::Suppress { pending } => Ok(Posted::RateLimited { pending }),
            RateDecision::Emit { count, .. } => {
                let meta = EventMeta {
                    count,
                    now,
                    reporting_instance: self.node.clone(),
                };
                let target = post_shutdown_event(&self.client, pod, message, reason, &meta).await?;
                Ok(Posted::Created { target, count })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;
    use serde_json::{Value, json};

    use super::*;
    use crate::kube::pod::tests::{pod, pod_json};
    use crate::kube::watch::tests::{mock_client, next_request, respond};

    const MIN: u64 = 60 * 1_000_000_000;
    const T0: UnixNanos = UnixNanos(1_800_000_000_000_000_000);

    fn at_min(m: u64) -> UnixNanos {
        UnixNanos(T0.0 + m * MIN)
    }

    fn info(name: &str, extra: Value) -> PodInfo {
        PodInfo::from_pod(&pod(pod_json("pod-uid", name, extra))).unwrap_or_else(|e| panic!("{e}"))
    }

    fn owned(kind: &str, api_version: &str, name: &str, labels: Value) -> Value {
        json!({"metadata": {"labels": labels, "ownerReferences": [{
            "apiVersion": api_version, "kind": kind, "name": name,
            "uid": format!("{name}-uid"), "controller": true,
        }]}})
    }

    fn deployment_pod() -> PodInfo {
        info(
            "web-7d4b9c8f6d-abcde",
            owned(
                "ReplicaSet",
                "apps/v1",
                "web-7d4b9c8f6d",
                json!({"pod-template-hash": "7d4b9c8f6d"}),
            ),
        )
    }

    fn key(name: &str) -> WorkloadKey {
        WorkloadKey {
            namespace: "shop".into(),
            kind: "Deployment".into(),
            name: name.into(),
        }
    }

    #[test]
    fn rate_limit_per_workload_with_counts() {
        let mut l = EventRateLimiter::new(Duration::from_secs(600), 100);
        assert_eq!(
            l.check(&key("web"), at_min(0)),
            RateDecision::Emit { count: 1, total: 1 }
        );
        assert_eq!(
            l.check(&key("web"), at_min(1)),
            RateDecision::Suppress { pending: 1 }
        );
        // Another workload is not held back.
        assert_eq!(
            l.check(&key("api"), at_min(2)),
            RateDecision::Emit { count: 1, total: 1 }
        );
        assert_eq!(
            l.check(&key("web"), at_min(9)),
            RateDecision::Suppress { pending: 2 }
        );
        // Interval passed: one event standing for the three occurrences.
        assert_eq!(
            l.check(&key("web"), at_min(10)),
            RateDecision::Emit { count: 3, total: 4 }
        );
        assert_eq!(
            l.check(&key("web"), at_min(15)),
            RateDecision::Suppress { pending: 1 }
        );
        assert_eq!(l.total(&key("web")), 5);
    }

    #[test]
    fn rate_limiter_is_bounded() {
        let mut l = EventRateLimiter::new(Duration::from_secs(600), 2);
        l.check(&key("a"), at_min(0));
        l.check(&key("b"), at_min(1));
        l.check(&key("c"), at_min(2)); // evicts "a", the least recently emitted
        assert_eq!(l.len(), 2);
        assert_eq!(l.total(&key("a")), 0);
        // Past the interval, stale workloads go first.
        l.check(&key("d"), at_min(30));
        assert_eq!(l.len(), 1);
        assert_eq!(l.total(&key("d")), 1);
    }

    #[test]
    fn workload_targets() {
        let t = workload_ref(&deployment_pod());
        assert_eq!(
            (
                t.api_version.as_str(),
                t.kind.as_str(),
                t.name.as_str(),
                t.uid
            ),
            ("apps/v1", "Deployment", "web", None)
        );
        for (kind, api) in [
            ("StatefulSet", "apps/v1"),
            ("DaemonSet", "apps/v1"),
            ("Job", "batch/v1"),
            ("ReplicaSet", "apps/v1"),
        ] {
            let t = workload_ref(&info("p", owned(kind, api, "w", json!({}))));
            assert_eq!(t.kind, kind);
            assert_eq!(t.api_version, api);
            assert_eq!(t.name, "w");
            assert_eq!(t.uid.as_deref(), Some("w-uid"));
        }
        // Bare pod and unknown owners: the pod itself.
        let t = workload_ref(&info("bare", json!({})));
        assert_eq!((t.kind.as_str(), t.name.as_str()), ("Pod", "bare"));
        let t = workload_ref(&info("static-x", owned("Node", "v1", "node-a", json!({}))));
        assert_eq!((t.kind.as_str(), t.name.as_str()), ("Pod", "static-x"));
    }

    #[test]
    fn event_object() {
        let pod = info("db-0", owned("StatefulSet", "apps/v1", "db", json!({})));
        let target = workload_ref(&pod);
        let meta = EventMeta {
            count: 2,
            now: T0,
            reporting_instance: "node-a".into(),
        };
        let long = "x".repeat(2000);
        let e = build_event(&target, &pod, REASON_CONNECTIONS_CUT, &long, &meta);
        let v = serde_json::to_value(&e).unwrap_or_default();
        assert_eq!(v["metadata"]["namespace"], json!("shop"));
        assert!(
            v["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("db."))
        );
        assert_eq!(
            v["involvedObject"],
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "namespace": "shop",
                   "name": "db", "uid": "db-uid"})
        );
        assert_eq!(v["related"]["kind"], json!("Pod"));
        assert_eq!(v["related"]["uid"], json!("pod-uid"));
        assert_eq!(v["type"], json!("Warning"));
        assert_eq!(v["reason"], json!("ConnectionsCutOnShutdown"));
        assert_eq!(v["reportingComponent"], json!("termscope"));
        assert_eq!(v["reportingInstance"], json!("node-a"));
        assert_eq!(v["source"]["component"], json!("termscope"));
        assert_eq!(v["action"], json!("Shutdown"));
        assert_eq!(v["count"], json!(2));
        assert_eq!(v["firstTimestamp"], json!("2027-01-15T08:00:00Z"));
        assert!(v["eventTime"].as_str().is_some());
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(msg.len() <= 1024 && msg.ends_with('…'));

        // On the pod itself: no related object.
        let bare = info("bare", json!({}));
        let e = build_event(&pod_ref(&bare), &bare, "R", "m", &meta);
        assert!(e.related.is_none());
    }

    #[tokio::test]
    async fn posts_on_the_deployment_with_its_uid() {
        let (client, mut api) = mock_client();
        let pod = deployment_pod();
        let meta = EventMeta {
            count: 1,
            now: T0,
            reporting_instance: "node-a".into(),
        };
        let post = tokio::spawn(async move {
            post_shutdown_event(
                &client,
                &pod,
                "2 connections cut",
                REASON_CONNECTIONS_CUT,
                &meta,
            )
            .await
        });

        let (method, uri, _, reply) = next_request(&mut api).await;
        assert_eq!(method, "GET");
        assert_eq!(uri, "/apis/apps/v1/namespaces/shop/deployments/web");
        respond(
            reply,
            StatusCode::OK,
            &json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                    "metadata": {"name": "web", "namespace": "shop", "uid": "dep-uid"}}),
        );

        let (method, uri, body, reply) = next_request(&mut api).await;
        assert_eq!(method, "POST");
        assert!(uri.starts_with("/api/v1/namespaces/shop/events"), "{uri}");
        assert_eq!(body["involvedObject"]["kind"], json!("Deployment"));
        assert_eq!(body["involvedObject"]["name"], json!("web"));
        assert_eq!(body["involvedObject"]["uid"], json!("dep-uid"));
        assert_eq!(body["message"], json!("2 connections cut"));
        assert_eq!(body["type"], json!("Warning"));
        respond(reply, StatusCode::CREATED, &body);

        let target = tokio::time::timeout(Duration::from_secs(10), post).await;
        let target = match target {
            Ok(Ok(Ok(t))) => t,
            _ => panic!("post failed"),
        };
        assert_eq!(target.uid.as_deref(), Some("dep-uid"));
    }

    #[tokio::test]
    async fn falls_back_to_the_replicaset_and_rate_limits() {
        let (client, mut api) = mock_client();
        let events = std::sync::Arc::new(ShutdownEvents::new(
            client,
            "node-a".into(),
            Duration::from_secs(600),
        ));
        let pod = deployment_pod();
        let (e, p) = (events.clone(), pod.clone());
        let first =
            tokio::spawn(async move { e.post(&p, "cut", REASON_CONNECTIONS_CUT, at_min(0)).await });

        let (_, uri, _, reply) = next_request(&mut api).await;
        assert!(uri.contains("/deployments/web"), "{uri}");
        respond(
            reply,
            StatusCode::FORBIDDEN,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "Forbidden", "code": 403, "message": "forbidden"}),
        );
        let (_, _, body, reply) = next_request(&mut api).await;
        assert_eq!(body["involvedObject"]["kind"], json!("ReplicaSet"));
        assert_eq!(body["involvedObject"]["name"], json!("web-7d4b9c8f6d"));
        assert_eq!(body["involvedObject"]["uid"], json!("web-7d4b9c8f6d-uid"));
        respond(reply, StatusCode::CREATED, &body);
        match tokio::time::timeout(Duration::from_secs(10), first).await {
            Ok(Ok(Ok(Posted::Created { count: 1, .. }))) => {}
            other => panic!("first post: {other:?}"),
        }

        // Within the interval: nothing is sent.
        let second = events
            .post(&pod, "cut", REASON_CONNECTIONS_CUT, at_min(3))
            .await;
        assert!(matches!(second, Ok(Posted::RateLimited { pending: 1 })));

        // An API error is returned, not swallowed.
        let (e, p) = (events.clone(), pod.clone());
        let third =
            tokio::spawn(
                async move { e.post(&p, "cut", REASON_CONNECTIONS_CUT, at_min(11)).await },
            );
        let (_, _, _, reply) = next_request(&mut api).await;
        respond(
            reply,
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "code": 404}),
        );
        let (_, _, body, reply) = next_request(&mut api).await;
        assert_eq!(body["count"], json!(2));
        respond(
            reply,
            StatusCode::FORBIDDEN,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "Forbidden", "code": 403, "message": "no create on events"}),
        );
        match tokio::time::timeout(Duration::from_secs(10), third).await {
            Ok(Ok(Err(e @ KubeError::Api { .. }))) => {
                assert!(
                    e.to_string().contains("ReplicaSet shop/web-7d4b9c8f6d"),
                    "{e}"
                );
            }
            other => panic!("third post: {other:?}"),
        }
    }
}
