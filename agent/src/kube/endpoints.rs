//! `EndpointSlice` objects -> per-pod endpoint conditions, and the
//! [`EndpointTracker`] that records, as this agent observed them, when a pod's
//! endpoints stopped being ready, started terminating, or left a service.
//!
//! Why it matters: a pod keeps receiving new connections until every kube-proxy /
//! load balancer has seen its endpoint go not-ready or disappear. The gap between
//! the stop signal and these moments is the endpoint propagation delay that a
//! preStop hook must cover.
//!
//! Pure: the caller passes the observed-at time of every slice it feeds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;

use super::UnixNanos;

/// The label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// An EndpointSlice that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SliceError {
    #[error(
        "malformed EndpointSlice (namespace {namespace:?}, name {name:?}): \
         metadata.{missing} is missing or empty"
    )]
    Malformed {
        missing: &'static str,
        namespace: Option<String>,
        name: Option<String>,
    },
}

/// `namespace/name` of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SliceKey {
    pub namespace: String,
    pub name: String,
}

/// One endpoint of a slice that belongs to a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodEndpoint {
    pub pod_uid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    pub addresses: Vec<String>,
    /// `conditions.ready` (unset reads as ready, as the API says).
    pub ready: bool,
    /// `conditions.serving` (unset reads as `ready`).
    pub serving: bool,
    /// `conditions.terminating` (unset reads as not terminating).
    pub terminating: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

/// What termscope keeps of an EndpointSlice: its pod endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SliceInfo {
    pub key: SliceKey,
    /// The Service (label `kubernetes.io/service-name`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Endpoints whose `targetRef` is a Pod with a uid; others are dropped.
    pub endpoints: Vec<PodEndpoint>,
}

impl SliceInfo {
    /// Reads an EndpointSlice. Only a missing name or namespace is an error.
    pub fn from_slice(slice: &EndpointSlice) -> Result<SliceInfo, SliceError> {
        let meta = &slice.metadata;
        let present =
            |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
        let (namespace, name) = (present(&meta.namespace), present(&meta.name));
        let malformed = |missing| SliceError::Malformed {
            missing,
            namespace: namespace.clone(),
            name: name.clone(),
        };
        let key = SliceKey {
            namespace: namespace.clone().ok_or_else(|| malformed("namespace"))?,
            name: name.clone().ok_or_else(|| malformed("name"))?,
        };
        let endpoints = slice
            .endpoints
            .iter()
            .flatten()
            .filter_map(|e| {
                let target = e.target_ref.as_ref()?;
                if target.kind.as_deref() != Some("Pod") {
                    return None;
                }
                let pod_uid = target.uid.as_deref().filter(|u| !u.is_empty())?.to_owned();
                let conditions = e.conditions.as_ref();
                let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
                Some(PodEndpoint {
                    pod_uid,
                    pod_name: target.name.clone(),
                    addresses: e.addresses.clone(),
                    ready,
                    serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
                    terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                    node_name: e.node_name.clone(),
                })
            })
            .collect();
        Ok(SliceInfo {
            key,
            service: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .cloned(),
            endpoints,
        })
    }

    /// Keeps only endpoints on `node` (and those whose node is not said).
    pub fn retain_node(&mut self, node: &str) {
        self.endpoints
            .retain(|e| e.node_name.as_deref().is_none_or(|n| n == node));
    }
}

/// The current conditions of one pod's endpoint in one slice.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    service: String,
    addresses: Vec<String>,
    ready: bool,
    serving: bool,
    terminating: bool,
}

/// What the tracker knows about one pod's endpoints. Every time is when this
/// agent observed it (the slice update reached it), not when the endpoint
/// controller made the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodEndpoints {
    pub first_seen_at: UnixNanos,
    /// Current conditions over the slices holding the pod: ready and serving
    /// when every one of its endpoints is; terminating when any is. Last known
    /// values once it is in no slice any more.
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Addresses over all slices holding the pod (last known when in none).
    pub addresses: Vec<String>,
    /// Services whose slices hold the pod now.
    pub services: Vec<String>,
    /// Last observation of the pod's endpoints all ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_ready_at: Option<UnixNanos>,
    /// First observation of an endpoint not ready, in the current not-ready
    /// stretch (cleared when all are ready again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_ready_since: Option<UnixNanos>,
    /// First observation of an endpoint terminating.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminating_since: Option<UnixNanos>,
    /// First observation of the pod leaving a service's slices (cleared if it
    /// joins a service again). An endpoint moved between two slices of one
    /// service may briefly look removed if the two updates arrive apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<UnixNanos>,
    /// The number of slices holding the pod now.
    pub in_slices: usize,
}

impl PodEndpoints {
    fn new(now: UnixNanos) -> Self {
        PodEndpoints {
            first_seen_at: now,
            ready: false,
            serving: false,
            terminating: false,
            addresses: Vec::new(),
            services: Vec::new(),
            last_ready_at: None,
            not_ready_since: None,
            terminating_since: None,
            removed_at: None,
            in_slices: 0,
        }
    }
}

/// Per-pod endpoint history, fed with slices over time.
#[derive(Debug, Default)]
pub struct EndpointTracker {
    /// Slices holding at least one tracked pod: pod uid -> its endpoint there.
    slices: HashMap<SliceKey, BTreeMap<String, Member>>,
    /// Pod uid -> slices holding it now.
    memberships: HashMap<String, BTreeSet<SliceKey>>,
    pods: HashMap<String, PodEndpoints>,
}

impl EndpointTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// The pod's endpoint history, if any slice ever held it (and it has not
    /// expired).
    pub fn pod(&self, uid: &str) -> Option<&PodEndpoints> {
        self.pods.get(uid)
    }

    /// The number of pods tracked.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// A slice was added or changed (observed at `now`).
    pub fn apply_slice(&mut self, slice: &SliceInfo, now: UnixNanos) {
        let service = slice
            .service
            .clone()
            .unwrap_or_else(|| format!("{}/{}", slice.key.namespace, slice.key.name));
        let mut members: BTreeMap<String, Member> = BTreeMap::new();
        for e in &slice.endpoints {
            let m = members.entry(e.pod_uid.clone()).or_insert_with(|| Member {
                service: service.clone(),
                addresses: Vec::new(),
                ready: true,
                serving: true,
                terminating: false,
            });
            // A pod listed twice in one slice: combine like across slices.
            m.addresses.extend(e.addresses.iter().cloned());
            m.ready &= e.ready;
            m.serving &= e.serving;
            m.terminating |= e.terminating;
        }
        let old = if members.is_empty() {
            self.slices.remove(&slice.key)
        } else {
            self.slices.insert(slice.key.clone(), members.clone())
        }
        .unwrap_or_default();

        let mut touched: BTreeSet<&String> = members.keys().collect();
        touched.extend(old.keys());
        let touched: Vec<String> = touched.into_iter().cloned().collect();
        for uid in &touched {
            let set = self.memberships.entry(uid.clone()).or_default();
            if members.contains_key(uid) {
                set.insert(slice.key.clone());
            } else {
                set.remove(&slice.key);
            }
            self.recompute(uid, now);
        }
    }

    /// A slice was deleted (observed at `now`): its pods are removed from it.
    pub fn delete_slice(&mut self, key: &SliceKey, now: UnixNanos) {
        let Some(old) = self.slices.remove(key) else {
            return;
        };
        for uid in old.keys() {
            if let Some(set) = self.memberships.get_mut(uid) {
                set.remove(key);
            }
            self.recompute(uid, now);
        }
    }

    /// After a full re-list: slices not listed are gone.
    pub fn resync(&mut self, listed: &HashSet<SliceKey>, now: UnixNanos) {
        let gone: Vec<SliceKey> = self
            .slices
            .keys()
            .filter(|k| !listed.contains(*k))
            .cloned()
            .collect();
        for key in &gone {
            self.delete_slice(key, now);
        }
    }

    /// Forgets pods that are in no slice and were removed before `cutoff`.
    pub fn expire(&mut self, cutoff: UnixNanos) {
        let memberships = &mut self.memberships;
        self.pods.retain(|uid, p| {
            let keep = p.in_slices > 0 || p.removed_at.unwrap_or(p.first_seen_at) >= cutoff;
            if !keep {
                memberships.remove(uid);
            }
            keep
        });
    }

    fn recompute(&mut self, uid: &str, now: UnixNanos) {
        let members: Vec<&Member> = self
            .memberships
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|key| self.slices.get(key).and_then(|s| s.get(uid)))
            .collect();
        let p = self
            .pods
            .entry(uid.to_owned())
            .or_insert_with(|| PodEndpoints::new(now));

        let services: Vec<String> = members
            .iter()
            .map(|m| m.service.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let left = p.services.iter().any(|s| !services.contains(s));
        let joined = services.iter().any(|s| !p.services.contains(s));
        if joined {
            p.removed_at = None;
        }
        if left {
            p.removed_at.get_or_insert(now);
        }
        p.services = services;
        p.in_slices = members.len();
        if members.is_empty() {
            self.memberships.remove(uid);
            return;
        }

        p.ready = members.iter().all(|m| m.ready);
        p.serving = members.iter().all(|m| m.serving);
        p.terminating = members.iter().any(|m| m.terminating);
        let mut addresses: Vec<String> = members
            .iter()
            .flat_map(|m| m.addresses.iter().cloned())
            .collect();
        addresses.sort();
        addresses.dedup();
        p.addresses = addresses;
        if p.ready {
            p.last_ready_at = Some(now);
            p.not_ready_since = None;
        } else {
            p.not_ready_since.get_or_insert(now);
        }
        if p.terminating {
            p.terminating_since.get_or_insert(now);
        } else {
            p.terminating_since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const T0: UnixNanos = UnixNanos(1_000_000_000_000);

    fn at(ms: u64) -> UnixNanos {
        UnixNanos(T0.0 + ms * 1_000_000)
    }

    fn ep(uid: &str, ip: &str, ready: bool, serving: bool, terminating: bool) -> Value {
        json!({
            "addresses": [ip],
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
            "nodeName": "node-a",
            "targetRef": {"kind": "Pod", "namespace": "shop", "name": format!("pod-{uid}"), "uid": uid},
        })
    }

    fn slice(name: &str, service: &str, endpoints: Vec<Value>) -> SliceInfo {
        let v = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name, "namespace": "shop", "resourceVersion": "1",
                "labels": {"kubernetes.io/service-name": service},
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
        });
        let s: EndpointSlice = match serde_json::from_value(v) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        SliceInfo::from_slice(&s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn reads_pod_endpoints_only() {
        let v = json!({
            "metadata": {"name": "web-abc", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "a", "uid": "ua"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false},
                 "targetRef": {"kind": "Pod", "name": "b", "uid": "ub"}, "nodeName": "node-b"},
                {"addresses": ["10.0.0.9"], "targetRef": {"kind": "Node", "name": "n", "uid": "un"}},
                {"addresses": ["10.0.0.8"]},
            ],
        });
        let s: EndpointSlice = serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"));
        let mut info = SliceInfo::from_slice(&s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(info.service.as_deref(), Some("web"));
        assert_eq!(info.endpoints.len(), 2);
        // Unset conditions: ready and serving, not terminating.
        let a = &info.endpoints[0];
        assert!(a.ready && a.serving && !a.terminating);
        let b = &info.endpoints[1];
        assert!(!b.ready && !b.serving && !b.terminating);
        info.retain_node("node-a");
        assert_eq!(info.endpoints.len(), 1);
        assert_eq!(info.endpoints[0].pod_uid, "ua");

        let bad: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"namespace": "shop"}, "addressType": "IPv4",
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            SliceInfo::from_slice(&bad),
            Err(SliceError::Malformed {
                missing: "name",
                ..
            })
        ));
    }

    #[test]
    fn ready_to_terminating_to_removed() {
        let mut t = EndpointTracker::new();
        t.apply_slice(
            &slice(
                "web-1",
                "web",
                vec![ep("u1", "10.0.0.1", true, true, false)],
            ),
            at(0),
        );
        let p = t
            .pod("u1")
            .cloned()
            .unwrap_or_else(|| panic!("u1 not tracked"));
        assert!(p.ready && !p.terminating);
        assert_eq!(p.first_seen_at, at(0));
        assert_eq!(p.last_ready_at, Some(at(0)));
        assert_eq!(p.not_ready_since, None);
        assert_eq!(p.services, ["web"]);

        // Pod deletion: terminating, no longer ready, still serving while draining.
        t.apply_slice(
            &slice(
                "web-1",
                "web",
                vec![ep("u1", "10.0.0.1", false, true, true)],
            ),
            at(120),
        );
        // Observed again later: the first observation stays.
        t.apply_slice(
            &slice(
                "web-1",
                "web",
                vec![ep("u1", "10.0.0.1", false, false, true)],
            ),
            at(900),
        );
        let p = t.pod("u1").cloned().unwrap_or_else(|| panic!("u1"));
        assert!(!p.ready && !p.serving && p.terminating);
        assert_eq!(p.last_ready_at, Some(at(0)));
        assert_eq!(p.not_ready_since, Some(at(120)));
        assert_eq!(p.terminating_since, Some(at(120)));
        assert_eq!(p.removed_at, None);

        // Removed from the slice.
        t.apply_slice(&slice("web-1", "web", vec![]), at(5000));
        let p = t.pod("u1").cloned().unwrap_or_else(|| panic!("u1"));
        assert_eq!(p.removed_at, Some(at(5000)));
        assert_eq!(p.in_slices, 0);
        assert!(p.services.is_empty());
        assert_eq!(p.addresses, ["10.0.0.1"], "last known kept");
        assert_eq!(p.terminating_since, Some(at(120)));

        // Expiry only after it left every slice and the cutoff passed.
        t.expire(at(4000));
        assert!(t.pod("u1").is_some());
        t.expire(at(6000));
        assert!(t.pod("u1").is_none());
        assert!(t.is_empty());
    }

    #[test]
    fn not_ready_stretch_resets_when_ready_again() {
        let mut t = EndpointTracker::new();
        let s = |ready| {
            slice(
                "web-1",
                "web",
                vec![ep("u1", "10.0.0.1", ready, ready, false)],
            )
        };
        t.apply_slice(&s(false), at(0)); // starting up
        assert_eq!(t.pod("u1").and_then(|p| p.not_ready_since), Some(at(0)));
        assert_eq!(t.pod("u1").and_then(|p| p.last_ready_at), None);
        t.apply_slice(&s(true), at(10));
        assert_eq!(t.pod("u1").and_then(|p| p.not_ready_since), None);
        t.apply_slice(&s(false), at(20));
        t.apply_slice(&s(false), at(30));
        let p = t.pod("u1").cloned().unwrap_or_else(|| panic!("u1"));
        assert_eq!(p.not_ready_since, Some(at(20)));
        assert_eq!(p.last_ready_at, Some(at(10)));
    }

    #[test]
    fn several_slices_and_services() {
        let mut t = EndpointTracker::new();
        t.apply_slice(
            &slice(
                "web-v4",
                "web",
                vec![ep("u1", "10.0.0.1", true, true, false)],
            ),
            at(0),
        );
        t.apply_slice(
            &slice(
                "admin-1",
                "admin",
                vec![ep("u1", "10.0.0.1", true, true, false)],
            ),
            at(1),
        );
        let p = t.pod("u1").cloned().unwrap_or_else(|| panic!("u1"));
        assert_eq!(p.in_slices, 2);
        assert_eq!(p.services, ["admin", "web"]);

        // One slice says not ready: the pod is not ready.
        t.apply_slice(
            &slice(
                "admin-1",
                "admin",
                vec![ep("u1", "10.0.0.1", false, false, true)],
            ),
            at(2),
        );
        let p = t.pod("u1").cloned().unwrap_or_else(|| panic!("u1"));
        assert!(!p.ready && p.terminating);
        assert_eq!(p.not_ready_since, Some(at(2)));

        // Deleting one slice removes it from that service.
        t.delete_slice(
            &SliceKey {
                namespace: "shop".into(),
                name: "admin-1".into(),
            },
            at(3),
        );
        let p = t.pod("u1").cloned().unwrap_or_else(|| panic!("u1"));
        assert_eq!(p.removed_at, Some(at(3)));
        assert_eq!(p.in_slices, 1);
        assert!(p.ready, "the remaining slice says ready");

        // A re-list without web-v4 removes it from the last one.
        t.resync(&HashSet::new(), at(4));
        let p = t.pod("u1").cloned().unwrap_or_else(|| panic!("u1"));
        assert_eq!(p.in_slices, 0);
        assert_eq!(p.removed_at, Some(at(3)), "first removal kept");
    }

    #[test]
    fn other_pods_in_a_slice_are_untouched() {
        let mut t = EndpointTracker::new();
        t.apply_slice(
            &slice(
                "web-1",
                "web",
                vec![
                    ep("u1", "10.0.0.1", true, true, false),
                    ep("u2", "10.0.0.2", true, true, false),
                ],
            ),
            at(0),
        );
        t.apply_slice(
            &slice(
                "web-1",
                "web",
                vec![ep("u2", "10.0.0.2", true, true, false)],
            ),
            at(50),
        );
        assert_eq!(t.pod("u1").and_then(|p| p.removed_at), Some(at(50)));
        let u2 = t.pod("u2").cloned().unwrap_or_else(|| panic!("u2"));
        assert_eq!(u2.removed_at, None);
        assert_eq!(u2.last_ready_at, Some(at(50)));
        assert_eq!(t.len(), 2);
    }
}
