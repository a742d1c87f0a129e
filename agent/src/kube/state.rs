//! [`KubeState`]: this node's pods by uid and by container id, a bounded cache of
//! deleted pods (kernel events about a container often arrive after its Pod
//! object is gone), and the endpoint history. Pure: every time is passed in.
//!
//! The owner applies [`KubeUpdate`]s as they arrive and calls
//! [`KubeState::expire`] now and then (every minute is plenty).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use crate::attribute::cgroup_path::Identity;

use super::UnixNanos;
use super::endpoints::{EndpointTracker, PodEndpoints, SliceInfo, SliceKey};
use super::pod::{ContainerInfo, PodInfo};

/// A change seen by the watchers ([`super::watch`]), for [`KubeState::apply`].
/// `observed_at` is when the watcher received it.
#[derive(Debug, Clone, PartialEq)]
pub enum KubeUpdate {
    /// A pod was listed, added or changed.
    PodApplied {
        pod: Box<PodInfo>,
        observed_at: UnixNanos,
    },
    /// A pod object was deleted (its final state).
    PodDeleted {
        pod: Box<PodInfo>,
        observed_at: UnixNanos,
    },
    /// A (re-)list of the node's pods completed; these uids were listed (and
    /// sent as [`KubeUpdate::PodApplied`] before). Any other live pod is gone.
    PodsListed {
        uids: HashSet<String>,
        observed_at: UnixNanos,
    },
    /// An EndpointSlice was listed, added or changed (endpoints of other nodes
    /// already dropped).
    SliceApplied {
        slice: SliceInfo,
        observed_at: UnixNanos,
    },
    SliceDeleted {
        key: SliceKey,
        observed_at: UnixNanos,
    },
    /// A (re-)list of EndpointSlices completed; any other slice is gone.
    SlicesListed {
        keys: HashSet<SliceKey>,
        observed_at: UnixNanos,
    },
}

/// Limits of [`KubeState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeStateConfig {
    /// How long a deleted pod (and the endpoint history of a pod in no slice) is
    /// kept.
    pub deleted_ttl: Duration,
    /// At most this many deleted pods are kept; the oldest go first.
    pub deleted_max: usize,
}

impl Default for KubeStateConfig {
    fn default() -> Self {
        KubeStateConfig {
            deleted_ttl: Duration::from_secs(10 * 60),
            deleted_max: 4096,
        }
    }
}

#[derive(Debug, Clone)]
struct PodEntry {
    info: PodInfo,
    /// When this agent first saw `deletionTimestamp` set.
    deletion_observed_at: Option<UnixNanos>,
    /// When the Pod object was seen deleted (or missing from a re-list).
    deleted_at: Option<UnixNanos>,
    /// Every container id indexed for this pod (current and previous
    /// instances), to unindex on eviction.
    container_ids: Vec<String>,
}

/// A pod as [`KubeState`] knows it.
#[derive(Debug, Clone, Copy)]
pub struct PodView<'a> {
    pub info: &'a PodInfo,
    pub deletion_observed_at: Option<UnixNanos>,
    /// Set once the Pod object is gone.
    pub deleted_at: Option<UnixNanos>,
    pub endpoints: Option<&'a PodEndpoints>,
}

/// Pods of this node, live and recently deleted, and their endpoints.
#[derive(Debug, Default)]
pub struct KubeState {
    config: KubeStateConfig,
    live: HashMap<String, PodEntry>,
    deleted: HashMap<String, PodEntry>,
    /// Deleted pods in deletion order: (uid, deleted_at). An entry whose pod
    /// came back or was evicted is skipped.
    deleted_order: VecDeque<(String, UnixNanos)>,
    /// Container id -> (pod uid, container name).
    by_container: HashMap<String, (String, String)>,
    endpoints: EndpointTracker,
}

impl KubeState {
    pub fn new(config: KubeStateConfig) -> Self {
        KubeState {
            config,
            ..Default::default()
        }
    }

    /// Applies a watcher update.
    pub fn apply(&mut self, update: KubeUpdate) {
        match update {
            KubeUpdate::PodApplied { pod, observed_at } => self.apply_pod(*pod, observed_at),
            KubeUpdate::PodDeleted { pod, observed_at } => {
                self.apply_deleted_pod(*pod, observed_at);
            }
            KubeUpdate::PodsListed { uids, observed_at } => self.resync_pods(&uids, observed_at),
            KubeUpdate::SliceApplied { slice, observed_at } => {
                self.endpoints.apply_slice(&slice, observed_at);
            }
            KubeUpdate::SliceDeleted { key, observed_at } => {
                self.endpoints.delete_slice(&key, observed_at);
            }
            KubeUpdate::SlicesListed { keys, observed_at } => {
                self.endpoints.resync(&keys, observed_at);
            }
        }
    }

    /// A pod was listed, added or changed, observed at `now`. A pod in the
    /// deleted cache (listed again by a re-list) becomes live again.
    pub fn apply_pod(&mut self, info: PodInfo, now: UnixNanos) {
        let uid = info.uid.clone();
        let mut entry = match self.live.remove(&uid) {
            Some(e) => e,
            None => match self.deleted.remove(&uid) {
                Some(mut e) => {
                    e.deleted_at = None;
                    e
                }
                None => PodEntry {
                    info: info.clone(),
                    deletion_observed_at: None,
                    deleted_at: None,
                    container_ids: Vec::new(),
                },
            },
        };
        self.update_entry(&mut entry, info, now);
        self.live.insert(uid, entry);
    }

    fn update_entry(&mut self, entry: &mut PodEntry, info: PodInfo, now: UnixNanos) {
        if info.deletion.is_some() {
            entry.deletion_observed_at.get_or_insert(now);
        }
        for c in &info.containers {
            for id in [&c.container_id, &c.last_container_id]
                .into_iter()
                .flatten()
            {
                self.by_container
                    .insert(id.clone(), (info.uid.clone(), c.name.clone()));
                if !entry.container_ids.contains(id) {
                    entry.container_ids.push(id.clone());
                }
            }
        }
        entry.info = info;
    }

    /// The final state of a deleted pod, observed at `now`: recorded, and the
    /// pod moves to the deleted cache (where it stays put if already there).
    pub fn apply_deleted_pod(&mut self, info: PodInfo, now: UnixNanos) {
        let uid = info.uid.clone();
        if !self.live.contains_key(&uid)
            && let Some(mut entry) = self.deleted.remove(&uid)
        {
            self.update_entry(&mut entry, info, now);
            self.deleted.insert(uid, entry);
            return;
        }
        self.apply_pod(info, now);
        self.delete_pod(&uid, now);
    }

    /// The Pod object is gone (observed at `now`): it moves to the deleted cache.
    pub fn delete_pod(&mut self, uid: &str, now: UnixNanos) {
        let Some(mut entry) = self.live.remove(uid) else {
            return;
        };
        entry.deleted_at = Some(now);
        self.deleted_order.push_back((uid.to_owned(), now));
        self.deleted.insert(uid.to_owned(), entry);
        while self.deleted.len() > self.config.deleted_max {
            if !self.evict_oldest() {
                break;
            }
        }
    }

    /// A re-list of the node's pods completed: live pods not listed are deleted.
    pub fn resync_pods(&mut self, listed: &HashSet<String>, now: UnixNanos) {
        let gone: Vec<String> = self
            .live
            .keys()
            .filter(|uid| !listed.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.delete_pod(&uid, now);
        }
    }

    /// Drops deleted pods older than the TTL, and stale endpoint history.
    pub fn expire(&mut self, now: UnixNanos) {
        let ttl = u64::try_from(self.config.deleted_ttl.as_nanos()).unwrap_or(u64::MAX);
        let cutoff = UnixNanos(now.0.saturating_sub(ttl));
        while let Some((_, at)) = self.deleted_order.front() {
            if *at >= cutoff {
                break;
            }
            if let Some((uid, at)) = self.deleted_order.pop_front() {
                self.evict(&uid, at);
            }
        }
        self.endpoints.expire(cutoff);
    }

    /// Removes the oldest deleted pod still in the cache; false when none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((uid, at)) = self.deleted_order.pop_front() {
            if self.evict(&uid, at) {
                return true;
            }
        }
        false
    }

    /// Removes a deleted pod if it is still the one deleted at `at` (not come
    /// back to life, nor deleted again later); true when removed.
    fn evict(&mut self, uid: &str, at: UnixNanos) -> bool {
        if self.deleted.get(uid).and_then(|e| e.deleted_at) != Some(at) {
            return false;
        }
        if let Some(entry) = self.deleted.remove(uid) {
            for id in &entry.container_ids {
                if self.by_container.get(id).is_some_and(|(u, _)| u == uid) {
                    self.by_container.remove(id);
                }
            }
        }
        true
    }

    fn entry(&self, uid: &str) -> Option<&PodEntry> {
        self.live.get(uid).or_else(|| self.deleted.get(uid))
    }

    /// A live or recently deleted pod.
    pub fn pod_by_uid(&self, uid: &str) -> Option<&PodInfo> {
        self.entry(uid).map(|e| &e.info)
    }

    /// Everything known about a pod, live or recently deleted.
    pub fn pod_view(&self, uid: &str) -> Option<PodView<'_>> {
        self.entry(uid).map(|e| PodView {
            info: &e.info,
            deletion_observed_at: e.deletion_observed_at,
            deleted_at: e.deleted_at,
            endpoints: self.endpoints.pod(uid),
        })
    }

    /// The pod and container with this runtime container id (current or
    /// previous instance of the container).
    pub fn pod_by_container_id(&self, container_id: &str) -> Option<(&PodInfo, &ContainerInfo)> {
        let (uid, name) = self.by_container.get(container_id)?;
        let pod = self.pod_by_uid(uid)?;
        Some((pod, pod.container(name)?))
    }

    /// The pod (and container, when the cgroup names one) of a cgroup identity:
    /// by container id first, else by pod uid.
    pub fn pod_for_identity(&self, id: &Identity) -> Option<(&PodInfo, Option<&ContainerInfo>)> {
        if let Some((pod, c)) = id
            .container_id
            .as_deref()
            .and_then(|cid| self.pod_by_container_id(cid))
        {
            return Some((pod, Some(c)));
        }
        let pod = self.pod_by_uid(id.pod_uid.as_deref()?)?;
        let c = id
            .container_id
            .as_deref()
            .and_then(|cid| pod.container_by_id(cid));
        Some((pod, c))
    }

    /// When this agent first saw the pod's `deletionTimestamp` set.
    pub fn deletion_observed_at(&self, uid: &str) -> Option<UnixNanos> {
        self.entry(uid).and_then(|e| e.deletion_observed_at)
    }

    /// When this agent saw the Pod object gone.
    pub fn deleted_at(&self, uid: &str) -> Option<UnixNanos> {
        self.entry(uid).and_then(|e| e.deleted_at)
    }

    /// The pod's endpoint history.
    pub fn endpoints(&self, uid: &str) -> Option<&PodEndpoints> {
        self.endpoints.pod(uid)
    }

    pub fn endpoint_tracker(&self) -> &EndpointTracker {
        &self.endpoints
    }

    pub fn live_pods(&self) -> impl Iterator<Item = &PodInfo> {
        self.live.values().map(|e| &e.info)
    }

    pub fn live_len(&self) -> usize {
        self.live.len()
    }

    pub fn deleted_len(&self) -> usize {
        self.deleted.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::pod::tests::{CID_A, CID_B, pod, pod_json};
    use serde_json::{Value, json};

    const MIN: u64 = 60 * 1_000_000_000;

    fn at(secs: u64) -> UnixNanos {
        UnixNanos(1_700_000_000_000_000_000 + secs * 1_000_000_000)
    }

    fn info(uid: &str, name: &str, extra: Value) -> PodInfo {
        PodInfo::from_pod(&pod(pod_json(uid, name, extra))).unwrap_or_else(|e| panic!("{e}"))
    }

    fn deleting(uid: &str, name: &str) -> PodInfo {
        info(
            uid,
            name,
            json!({"metadata": {
                "deletionTimestamp": "2026-11-21T05:20:00Z",
                "deletionGracePeriodSeconds": 30,
            }}),
        )
    }

    #[test]
    fn deletion_observed_on_first_update_carrying_it() {
        let mut s = KubeState::new(KubeStateConfig::default());
        s.apply_pod(info("u1", "web-0", json!({})), at(0));
        assert_eq!(s.deletion_observed_at("u1"), None);
        s.apply_pod(deleting("u1", "web-0"), at(5));
        s.apply_pod(deleting("u1", "web-0"), at(9));
        assert_eq!(s.deletion_observed_at("u1"), Some(at(5)));
        let p = s.pod_by_uid("u1").unwrap_or_else(|| panic!("u1"));
        assert_eq!(
            p.deletion
                .and_then(|d| d.requested_at)
                .map(UnixNanos::rfc3339)
                .as_deref(),
            Some("2026-11-21T05:19:30.000000Z")
        );
        // A pod first seen already deleting: observed at that first sight.
        s.apply_pod(deleting("u2", "web-1"), at(7));
        assert_eq!(s.deletion_observed_at("u2"), Some(at(7)));
    }

    #[test]
    fn container_id_index_survives_deletion_until_expiry() {
        let mut s = KubeState::new(KubeStateConfig::default());
        s.apply_pod(info("u1", "web-0", json!({})), at(0));
        let (p, c) = s
            .pod_by_container_id(CID_A)
            .unwrap_or_else(|| panic!("index"));
        assert_eq!((p.name.as_str(), c.name.as_str()), ("web-0", "app"));

        // Restarted container: the new id and the previous one both resolve.
        s.apply_pod(
            info(
                "u1",
                "web-0",
                json!({"status": {"containerStatuses": [{
                    "name": "app", "image": "", "imageID": "", "ready": true, "restartCount": 1,
                    "containerID": format!("containerd://{CID_B}"),
                    "lastState": {"terminated": {"exitCode": 0, "containerID": format!("containerd://{CID_A}")}},
                }]}}),
            ),
            at(1),
        );
        assert!(s.pod_by_container_id(CID_A).is_some());
        assert!(s.pod_by_container_id(CID_B).is_some());

        s.apply(KubeUpdate::PodDeleted {
            pod: Box::new(deleting("u1", "web-0")),
            observed_at: at(40),
        });
        assert_eq!(s.live_len(), 0);
        assert_eq!(s.deleted_len(), 1);
        assert_eq!(s.deleted_at("u1"), Some(at(40)));
        assert_eq!(s.deletion_observed_at("u1"), Some(at(40)));
        let (p, _) = s
            .pod_by_container_id(CID_B)
            .unwrap_or_else(|| panic!("late lookup"));
        assert_eq!(p.uid, "u1");

        let id = Identity {
            runtime: crate::attribute::cgroup_path::Runtime::Containerd,
            container_id: Some(CID_A.into()),
            pod_uid: Some("u1".into()),
            qos: None,
            unit: None,
            namespace: None,
            cgroup_path: "/kubepods.slice/x".into(),
        };
        let (p, c) = s
            .pod_for_identity(&id)
            .unwrap_or_else(|| panic!("identity"));
        assert_eq!(
            (p.uid.as_str(), c.map(|c| c.name.as_str())),
            ("u1", Some("app"))
        );

        s.expire(UnixNanos(at(40).0 + 10 * MIN - 1));
        assert!(s.pod_by_uid("u1").is_some(), "kept for the TTL");
        s.expire(UnixNanos(at(40).0 + 10 * MIN + 1));
        assert!(s.pod_by_uid("u1").is_none());
        assert!(s.pod_by_container_id(CID_A).is_none());
        assert!(s.pod_by_container_id(CID_B).is_none());
        assert!(s.pod_for_identity(&id).is_none());
    }

    #[test]
    fn deleted_cache_is_bounded() {
        let mut s = KubeState::new(KubeStateConfig {
            deleted_ttl: Duration::from_secs(600),
            deleted_max: 2,
        });
        for (i, uid) in ["a", "b", "c"].into_iter().enumerate() {
            let mut p = info(uid, uid, json!({}));
            p.containers[0].container_id = Some(format!("id-{uid}"));
            s.apply_pod(p, at(i as u64));
            s.delete_pod(uid, at(10 + i as u64));
        }
        assert_eq!(s.deleted_len(), 2);
        assert!(s.pod_by_uid("a").is_none(), "oldest evicted");
        assert!(s.pod_by_container_id("id-a").is_none());
        assert!(s.pod_by_uid("b").is_some() && s.pod_by_uid("c").is_some());
    }

    #[test]
    fn relist_deletes_missing_and_revives_listed() {
        let mut s = KubeState::new(KubeStateConfig::default());
        s.apply_pod(info("u1", "a", json!({})), at(0));
        s.apply_pod(info("u2", "b", json!({})), at(0));
        s.apply(KubeUpdate::PodsListed {
            uids: HashSet::from(["u1".to_owned()]),
            observed_at: at(30),
        });
        assert_eq!(s.deleted_at("u2"), Some(at(30)));
        assert_eq!(s.live_len(), 1);

        // A later list shows it after all: live again, and a stale eviction
        // record does not drop it.
        s.apply_pod(info("u2", "b", json!({})), at(31));
        assert_eq!(s.deleted_at("u2"), None);
        assert_eq!(s.live_len(), 2);
        s.expire(UnixNanos(at(31).0 + 11 * MIN));
        assert!(s.pod_by_uid("u2").is_some());

        // A DELETED event for a pod already moved to the cache keeps its time.
        s.delete_pod("u2", at(40));
        s.apply(KubeUpdate::PodDeleted {
            pod: Box::new(info("u2", "b", json!({}))),
            observed_at: at(50),
        });
        assert_eq!(s.deleted_at("u2"), Some(at(40)));
        assert_eq!(s.deleted_len(), 1);
    }

    #[test]
    fn expiry_skips_stale_order_records() {
        let mut s = KubeState::new(KubeStateConfig::default());
        s.apply_pod(info("u1", "a", json!({})), at(0));
        s.delete_pod("u1", at(0)); // missing from a re-list ...
        s.apply_pod(info("u1", "a", json!({})), at(1)); // ... listed again after all
        s.apply_pod(info("u2", "b", json!({})), at(0));
        s.delete_pod("u2", at(300));
        // u1's stale record has expired, u2's has not: u2 stays.
        s.expire(UnixNanos(at(0).0 + 10 * MIN + 1));
        assert!(s.deleted_at("u2").is_some());
        assert!(
            s.pod_by_uid("u1")
                .is_some_and(|_| s.deleted_at("u1").is_none())
        );
    }

    #[test]
    fn endpoint_updates_reach_the_tracker() {
        let mut s = KubeState::new(KubeStateConfig::default());
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.2.3"],
                           "conditions": {"ready": false, "serving": true, "terminating": true},
                           "targetRef": {"kind": "Pod", "name": "web-0", "uid": "u1"}}],
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let slice = SliceInfo::from_slice(&slice).unwrap_or_else(|e| panic!("{e}"));
        s.apply_pod(deleting("u1", "web-0"), at(0));
        s.apply(KubeUpdate::SliceApplied {
            slice: slice.clone(),
            observed_at: at(1),
        });
        let v = s.pod_view("u1").unwrap_or_else(|| panic!("u1"));
        let e = v.endpoints.unwrap_or_else(|| panic!("endpoints"));
        assert_eq!(e.terminating_since, Some(at(1)));
        assert_eq!(v.deletion_observed_at, Some(at(0)));
        s.apply(KubeUpdate::SliceDeleted {
            key: slice.key.clone(),
            observed_at: at(2),
        });
        assert_eq!(s.endpoints("u1").and_then(|e| e.removed_at), Some(at(2)));
        s.apply(KubeUpdate::SlicesListed {
            keys: HashSet::new(),
            observed_at: at(3),
        });
        assert_eq!(s.endpoint_tracker().len(), 1);
        s.expire(UnixNanos(at(2).0 + 10 * MIN + 1));
        assert!(s.endpoints("u1").is_none());
    }
}
