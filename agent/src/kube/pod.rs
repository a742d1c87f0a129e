//! A `Pod` object -> [`PodInfo`]: what the termination engine needs to know about a
//! pod, read out of the object alone (no API call). Pure.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, EphemeralContainer, Lifecycle, LifecycleHandler, Pod,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Serialize, Serializer};

use super::UnixNanos;

/// Kubernetes' default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE_PERIOD_SECONDS: i64 = 30;

/// The label the Deployment controller puts on its ReplicaSets' pods; the
/// ReplicaSet is named `<deployment>-<hash>`.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// A pod object that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    #[error(
        "malformed Pod (namespace {namespace:?}, name {name:?}, uid {uid:?}): \
         metadata.{missing} is missing or empty"
    )]
    Malformed {
        missing: &'static str,
        namespace: Option<String>,
        name: Option<String>,
        uid: Option<String>,
    },
}

/// The kind of workload that owns a pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    /// Inferred from an owner ReplicaSet named `<deployment>-<pod-template-hash>`.
    Deployment,
    StatefulSet,
    DaemonSet,
    Job,
    /// Only when an owner reference says so (a pod's owner is a Job, never a CronJob).
    CronJob,
    /// A ReplicaSet not recognisable as a Deployment's.
    ReplicaSet,
    /// No owner: a bare pod.
    Pod,
    /// Any other owner kind, as the owner reference names it (`Node` for static
    /// pods' mirror pods, custom resources, ...).
    Other(String),
}

impl WorkloadKind {
    fn from_kind(kind: &str) -> Self {
        match kind {
            "Deployment" => WorkloadKind::Deployment,
            "StatefulSet" => WorkloadKind::StatefulSet,
            "DaemonSet" => WorkloadKind::DaemonSet,
            "Job" => WorkloadKind::Job,
            "CronJob" => WorkloadKind::CronJob,
            "ReplicaSet" => WorkloadKind::ReplicaSet,
            "Pod" => WorkloadKind::Pod,
            other => WorkloadKind::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::Pod => "Pod",
            WorkloadKind::Other(kind) => kind,
        }
    }
}

impl Serialize for WorkloadKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The pod's controlling owner reference, as written in the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// How the container is run within the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerKind {
    /// `spec.containers`.
    App,
    /// `spec.initContainers`, run to completion before the app containers.
    Init,
    /// `spec.initContainers` with `restartPolicy: Always`: a native sidecar, stopped
    /// after the app containers.
    Sidecar,
    /// `spec.ephemeralContainers` (debug containers).
    Ephemeral,
}

/// A container's preStop hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PreStop {
    Exec {
        command: Vec<String>,
    },
    HttpGet {
        #[serde(skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        /// Port number or named port.
        port: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        scheme: Option<String>,
    },
    Sleep {
        seconds: i64,
    },
    /// Deprecated (never run by kubelet as a hook), still accepted by the API.
    TcpSocket {
        port: String,
    },
}

/// One container of the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerInfo {
    pub name: String,
    pub kind: ContainerKind,
    /// The runtime's id (`status.containerStatuses[].containerID` without the
    /// `containerd://` / `cri-o://` / `docker://` prefix); `None` before it starts.
    pub container_id: Option<String>,
    /// The id of the previous instance after a restart (`lastState.terminated`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_stop: Option<PreStop>,
    /// The stop signal the runtime sends (status, else `lifecycle.stopSignal`);
    /// `None` means the image's STOPSIGNAL or SIGTERM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

/// The pod's deletion, from `metadata.deletionTimestamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Deletion {
    /// `metadata.deletionTimestamp`: not when deletion was asked for but the
    /// deadline, request time + grace period, after which the pod is killed.
    /// Second precision (API server).
    pub deadline: UnixNanos,
    /// `metadata.deletionGracePeriodSeconds`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_period_seconds: Option<i64>,
    /// `deadline - grace_period_seconds`: when the (last) deletion request with
    /// that grace period reached the API server. A later delete with a shorter
    /// grace period moves both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<UnixNanos>,
}

/// What termscope knows about a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    pub workload_kind: WorkloadKind,
    /// The workload's name (the pod's own name for a bare pod).
    pub workload: String,
    /// The controlling owner reference as written (e.g. the ReplicaSet of a
    /// Deployment), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerRef>,
    pub containers: Vec<ContainerInfo>,
    pub pod_ips: Vec<IpAddr>,
    pub termination_grace_period_seconds: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion: Option<Deletion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

impl PodInfo {
    /// Reads a pod object. Only a missing uid, name or namespace is an error.
    pub fn from_pod(pod: &Pod) -> Result<PodInfo, PodError> {
        from_pod(pod)
    }

    /// The container with this runtime id, current or previous instance.
    pub fn container_by_id(&self, id: &str) -> Option<&ContainerInfo> {
        self.containers.iter().find(|c| {
            c.container_id.as_deref() == Some(id) || c.last_container_id.as_deref() == Some(id)
        })
    }

    pub fn container(&self, name: &str) -> Option<&ContainerInfo> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Reads a pod object. Only a missing uid, name or namespace is an error.
pub fn from_pod(pod: &Pod) -> Result<PodInfo, PodError> {
    let meta = &pod.metadata;
    let present = |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    let (uid, name, namespace) = (
        present(&meta.uid),
        present(&meta.name),
        present(&meta.namespace),
    );
    let malformed = |missing| PodError::Malformed {
        missing,
        namespace: namespace.clone(),
        name: name.clone(),
        uid: uid.clone(),
    };
    let uid_v = uid.clone().ok_or_else(|| malformed("uid"))?;
    let name_v = name.clone().ok_or_else(|| malformed("name"))?;
    let namespace_v = namespace.clone().ok_or_else(|| malformed("namespace"))?;

    let owner = controller_owner(pod);
    let (workload_kind, workload) = workload_of(pod, owner.as_ref(), &name_v);

    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();

    let mut containers = Vec::new();
    if let Some(spec) = spec {
        let statuses = status.and_then(|s| s.init_container_statuses.as_deref());
        for c in spec.init_containers.iter().flatten() {
            let kind = if c.restart_policy.as_deref() == Some("Always") {
                ContainerKind::Sidecar
            } else {
                ContainerKind::Init
            };
            containers.push(container_info(c, kind, statuses));
        }
        let statuses = status.and_then(|s| s.container_statuses.as_deref());
        for c in &spec.containers {
            containers.push(container_info(c, ContainerKind::App, statuses));
        }
        let statuses = status.and_then(|s| s.ephemeral_container_statuses.as_deref());
        for c in spec.ephemeral_containers.iter().flatten() {
            containers.push(ephemeral_info(c, statuses));
        }
    }

    let mut pod_ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.ip.parse().ok())
        .collect();
    if pod_ips.is_empty()
        && let Some(ip) = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
    {
        pod_ips.push(ip);
    }

    let deletion = meta
        .deletion_timestamp
        .as_ref()
        .and_then(|t| UnixNanos::from_timestamp(&t.0))
        .map(|deadline| {
            let grace_period_seconds = meta.deletion_grace_period_seconds;
            Deletion {
                deadline,
                grace_period_seconds,
                requested_at: grace_period_seconds.map(|g| deadline.add_secs(-g)),
            }
        });

    Ok(PodInfo {
        uid: uid_v,
        namespace: namespace_v,
        name: name_v,
        node_name: spec.and_then(|s| s.node_name.clone()),
        workload_kind,
        workload,
        owner,
        containers,
        pod_ips,
        termination_grace_period_seconds: spec
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(DEFAULT_GRACE_PERIOD_SECONDS),
        deletion,
        phase: status.and_then(|s| s.phase.clone()),
    })
}

/// The owner reference with `controller: true`, else the first one.
fn controller_owner(pod: &Pod) -> Option<OwnerRef> {
    let refs = pod.metadata.owner_references.as_deref()?;
    let chosen = refs
        .iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())?;
    Some(OwnerRef {
        api_version: chosen.api_version.clone(),
        kind: chosen.kind.clone(),
        name: chosen.name.clone(),
        uid: chosen.uid.clone(),
    })
}

fn workload_of(pod: &Pod, owner: Option<&OwnerRef>, pod_name: &str) -> (WorkloadKind, String) {
    let Some(owner) = owner.filter(|o| !o.kind.is_empty() && !o.name.is_empty()) else {
        return (WorkloadKind::Pod, pod_name.to_owned());
    };
    if owner.kind == "ReplicaSet" {
        let hash = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL))
            .filter(|h| !h.is_empty());
        if let Some(deployment) = hash.and_then(|h| {
            owner
                .name
                .strip_suffix(h.as_str())
                .and_then(|rest| rest.strip_suffix('-'))
                .filter(|d| !d.is_empty())
        }) {
            return (WorkloadKind::Deployment, deployment.to_owned());
        }
    }
    (WorkloadKind::from_kind(&owner.kind), owner.name.clone())
}

/// `containerd://<id>` -> `<id>` (any `scheme://`); empty -> `None`.
pub fn strip_runtime_prefix(id: &str) -> Option<String> {
    let bare = id.split_once("://").map_or(id, |(_, rest)| rest);
    (!bare.is_empty()).then(|| bare.to_owned())
}

fn container_info(
    c: &Container,
    kind: ContainerKind,
    statuses: Option<&[ContainerStatus]>,
) -> ContainerInfo {
    with_status(&c.name, kind, c.lifecycle.as_ref(), statuses)
}

fn ephemeral_info(c: &EphemeralContainer, statuses: Option<&[ContainerStatus]>) -> ContainerInfo {
    with_status(
        &c.name,
        ContainerKind::Ephemeral,
        c.lifecycle.as_ref(),
        statuses,
    )
}

fn with_status(
    name: &str,
    kind: ContainerKind,
    lifecycle: Option<&Lifecycle>,
    statuses: Option<&[ContainerStatus]>,
) -> ContainerInfo {
    let status = statuses.into_iter().flatten().find(|s| s.name == name);
    let last_container_id = status
        .and_then(|s| s.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.container_id.as_deref())
        .and_then(strip_runtime_prefix);
    ContainerInfo {
        name: name.to_owned(),
        kind,
        container_id: status
            .and_then(|s| s.container_id.as_deref())
            .and_then(strip_runtime_prefix),
        last_container_id,
        pre_stop: lifecycle
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(pre_stop),
        stop_signal: status
            .and_then(|s| s.stop_signal.clone())
            .or_else(|| lifecycle.and_then(|l| l.stop_signal.clone())),
    }
}

fn port_string(port: &IntOrString) -> String {
    match port {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

fn pre_stop(h: &LifecycleHandler) -> Option<PreStop> {
    if let Some(exec) = &h.exec {
        return Some(PreStop::Exec {
            command: exec.command.clone().unwrap_or_default(),
        });
    }
    if let Some(get) = &h.http_get {
        return Some(PreStop::HttpGet {
            path: get.path.clone(),
            port: port_string(&get.port),
            scheme: get.scheme.clone(),
        });
    }
    if let Some(sleep) = &h.sleep {
        return Some(PreStop::Sleep {
            seconds: sleep.seconds,
        });
    }
    h.tcp_socket.as_ref().map(|t| PreStop::TcpSocket {
        port: port_string(&t.port),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::{Value, json};

    pub(crate) const CID_A: &str =
        "3f2a9c1b2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
    pub(crate) const CID_B: &str =
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A pod object as the API server writes it; `extra` is merged into it.
    pub(crate) fn pod_json(uid: &str, name: &str, extra: Value) -> Value {
        let mut base = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": "shop",
                "uid": uid,
                "resourceVersion": "1",
            },
            "spec": {
                "nodeName": "node-a",
                "containers": [{"name": "app", "image": "nginx"}],
            },
            "status": {
                "phase": "Running",
                "podIP": "10.1.2.3",
                "containerStatuses": [{
                    "name": "app", "image": "nginx", "imageID": "", "ready": true,
                    "restartCount": 0, "containerID": format!("containerd://{CID_A}"),
                }],
            },
        });
        merge(&mut base, extra);
        base
    }

    fn merge(base: &mut Value, extra: Value) {
        match (base, extra) {
            (Value::Object(b), Value::Object(e)) => {
                for (k, v) in e {
                    match b.get_mut(&k) {
                        Some(slot) if v.is_object() => merge(slot, v),
                        _ => {
                            b.insert(k, v);
                        }
                    }
                }
            }
            (slot, v) => *slot = v,
        }
    }

    pub(crate) fn pod(v: Value) -> Pod {
        match serde_json::from_value(v) {
            Ok(p) => p,
            Err(e) => panic!("test pod does not deserialise: {e}"),
        }
    }

    fn info(v: Value) -> PodInfo {
        match from_pod(&pod(v)) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    fn owned(kind: &str, name: &str, labels: Value) -> Value {
        json!({"metadata": {
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": kind, "name": name,
                "uid": "owner-uid", "controller": true, "blockOwnerDeletion": true,
            }],
        }})
    }

    #[test]
    fn workload_from_owner_references() {
        let cases: &[(&str, Value, WorkloadKind, &str)] = &[
            (
                "deployment via pod-template-hash",
                owned(
                    "ReplicaSet",
                    "web-7d4b9c8f6d",
                    json!({"pod-template-hash": "7d4b9c8f6d", "app": "web"}),
                ),
                WorkloadKind::Deployment,
                "web",
            ),
            (
                "deployment with dashes in its name",
                owned(
                    "ReplicaSet",
                    "my-web-app-5f6c",
                    json!({"pod-template-hash": "5f6c"}),
                ),
                WorkloadKind::Deployment,
                "my-web-app",
            ),
            (
                "replicaset without the hash label",
                owned("ReplicaSet", "web-7d4b9c8f6d", json!({})),
                WorkloadKind::ReplicaSet,
                "web-7d4b9c8f6d",
            ),
            (
                "replicaset whose name does not end with the hash",
                owned(
                    "ReplicaSet",
                    "custom-rs",
                    json!({"pod-template-hash": "abc"}),
                ),
                WorkloadKind::ReplicaSet,
                "custom-rs",
            ),
            (
                "statefulset",
                owned("StatefulSet", "db", json!({})),
                WorkloadKind::StatefulSet,
                "db",
            ),
            (
                "daemonset",
                owned("DaemonSet", "agent", json!({})),
                WorkloadKind::DaemonSet,
                "agent",
            ),
            (
                "job named like a cronjob's stays a job",
                owned("Job", "backup-28930120", json!({})),
                WorkloadKind::Job,
                "backup-28930120",
            ),
            (
                "mirror pod of a static pod",
                owned("Node", "node-a", json!({})),
                WorkloadKind::Other("Node".into()),
                "node-a",
            ),
            ("bare pod", json!({}), WorkloadKind::Pod, "web-0"),
        ];
        for (what, extra, kind, workload) in cases {
            let p = info(pod_json("u1", "web-0", extra.clone()));
            assert_eq!(&p.workload_kind, kind, "{what}");
            assert_eq!(p.workload, *workload, "{what}");
        }
        let p = info(pod_json(
            "u1",
            "web-0",
            owned("StatefulSet", "db", json!({})),
        ));
        assert_eq!(
            p.owner,
            Some(OwnerRef {
                api_version: "apps/v1".into(),
                kind: "StatefulSet".into(),
                name: "db".into(),
                uid: "owner-uid".into(),
            })
        );
    }

    #[test]
    fn controller_owner_preferred_over_first() {
        let p = info(pod_json(
            "u1",
            "x",
            json!({"metadata": {"ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "cm", "uid": "1"},
                {"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "2", "controller": true},
            ]}}),
        ));
        assert_eq!(p.workload_kind, WorkloadKind::Job);
        assert_eq!(p.workload, "j");
    }

    #[test]
    fn pre_stop_hooks() {
        let with = |lifecycle: Value| {
            info(pod_json(
                "u1",
                "p",
                json!({"spec": {"containers": [{"name": "app", "lifecycle": lifecycle}]}}),
            ))
            .containers
            .remove(0)
            .pre_stop
        };
        assert_eq!(
            with(json!({"preStop": {"exec": {"command": ["/bin/sh", "-c", "sleep 5"]}}})),
            Some(PreStop::Exec {
                command: vec!["/bin/sh".into(), "-c".into(), "sleep 5".into()]
            })
        );
        assert_eq!(
            with(json!({"preStop": {"httpGet": {"path": "/drain", "port": 8080}}})),
            Some(PreStop::HttpGet {
                path: Some("/drain".into()),
                port: "8080".into(),
                scheme: None
            })
        );
        assert_eq!(
            with(json!({"preStop": {"httpGet": {"port": "http", "scheme": "HTTPS"}}})),
            Some(PreStop::HttpGet {
                path: None,
                port: "http".into(),
                scheme: Some("HTTPS".into())
            })
        );
        assert_eq!(
            with(json!({"preStop": {"sleep": {"seconds": 15}}})),
            Some(PreStop::Sleep { seconds: 15 })
        );
        assert_eq!(
            with(json!({"preStop": {"tcpSocket": {"port": 9000}}})),
            Some(PreStop::TcpSocket {
                port: "9000".into()
            })
        );
        assert_eq!(with(json!({"postStart": {"sleep": {"seconds": 1}}})), None);
        assert_eq!(with(json!({"preStop": {}})), None);
    }

    #[test]
    fn deletion_and_grace() {
        let p = info(pod_json("u1", "p", json!({})));
        assert_eq!(p.deletion, None);
        assert_eq!(p.termination_grace_period_seconds, 30);

        let p = info(pod_json(
            "u1",
            "p",
            json!({
                "metadata": {
                    "deletionTimestamp": "2026-11-21T05:20:00Z",
                    "deletionGracePeriodSeconds": 45,
                },
                "spec": {"terminationGracePeriodSeconds": 45},
            }),
        ));
        assert_eq!(p.termination_grace_period_seconds, 45);
        let d = p.deletion.unwrap_or_else(|| panic!("no deletion"));
        assert_eq!(d.deadline.rfc3339(), "2026-11-21T05:20:00.000000Z");
        assert_eq!(d.grace_period_seconds, Some(45));
        assert_eq!(
            d.requested_at.map(UnixNanos::rfc3339).as_deref(),
            Some("2026-11-21T05:19:15.000000Z")
        );

        // Without deletionGracePeriodSeconds there is no request time to derive.
        let p = info(pod_json(
            "u1",
            "p",
            json!({"metadata": {"deletionTimestamp": "2026-11-21T05:20:00Z"}}),
        ));
        let d = p.deletion.unwrap_or_else(|| panic!("no deletion"));
        assert_eq!(d.grace_period_seconds, None);
        assert_eq!(d.requested_at, None);

        let v = serde_json::to_value(d).unwrap_or_default();
        assert_eq!(v, json!({"deadline": "2026-11-21T05:20:00.000000Z"}));
    }

    #[test]
    fn container_ids_per_runtime() {
        for (raw, want) in [
            (format!("containerd://{CID_A}"), Some(CID_A)),
            (format!("cri-o://{CID_A}"), Some(CID_A)),
            (format!("docker://{CID_A}"), Some(CID_A)),
            (CID_A.to_owned(), Some(CID_A)),
            (String::new(), None),
            ("containerd://".to_owned(), None),
        ] {
            let p = info(pod_json(
                "u1",
                "p",
                json!({"status": {"containerStatuses": [{
                    "name": "app", "image": "", "imageID": "", "ready": false,
                    "restartCount": 0, "containerID": raw,
                }]}}),
            ));
            assert_eq!(p.containers[0].container_id.as_deref(), want, "{raw}");
        }
        // Not started yet: no status, no id.
        let p = info(pod_json(
            "u1",
            "p",
            json!({"status": {"phase": "Pending", "containerStatuses": []}}),
        ));
        assert_eq!(p.containers[0].container_id, None);
    }

    #[test]
    fn containers_of_every_kind_and_restarts() {
        let p = info(pod_json(
            "u1",
            "p",
            json!({
                "spec": {
                    "initContainers": [
                        {"name": "migrate", "image": "x"},
                        {"name": "proxy", "image": "envoy", "restartPolicy": "Always"},
                    ],
                    "containers": [{"name": "app", "image": "x", "lifecycle": {"stopSignal": "SIGQUIT"}}],
                },
                "status": {
                    "initContainerStatuses": [{
                        "name": "proxy", "image": "", "imageID": "", "ready": true,
                        "restartCount": 0, "containerID": format!("cri-o://{CID_B}"),
                    }],
                    "containerStatuses": [{
                        "name": "app", "image": "", "imageID": "", "ready": true,
                        "restartCount": 1, "containerID": format!("containerd://{CID_A}"),
                        "lastState": {"terminated": {"exitCode": 137, "containerID": "containerd://old"}},
                    }],
                },
            }),
        ));
        let kinds: Vec<_> = p
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("migrate", ContainerKind::Init),
                ("proxy", ContainerKind::Sidecar),
                ("app", ContainerKind::App)
            ]
        );
        assert_eq!(p.containers[1].container_id.as_deref(), Some(CID_B));
        assert_eq!(p.containers[2].last_container_id.as_deref(), Some("old"));
        assert_eq!(p.containers[2].stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(
            p.container_by_id("old").map(|c| c.name.as_str()),
            Some("app")
        );
        assert_eq!(
            p.container_by_id(CID_B).map(|c| c.name.as_str()),
            Some("proxy")
        );
    }

    #[test]
    fn pod_ips_prefer_the_list() {
        let p = info(pod_json(
            "u1",
            "p",
            json!({"status": {"podIP": "10.1.2.3", "podIPs": [{"ip": "10.1.2.3"}, {"ip": "fd00::3"}]}}),
        ));
        let ips: Vec<String> = p.pod_ips.iter().map(ToString::to_string).collect();
        assert_eq!(ips, ["10.1.2.3", "fd00::3"]);
        let p = info(pod_json("u1", "p", json!({})));
        assert_eq!(p.pod_ips, vec![IpAddr::from([10, 1, 2, 3])]);
        let p = info(pod_json("u1", "p", json!({"status": {"podIP": null}})));
        assert!(p.pod_ips.is_empty());
    }

    #[test]
    fn malformed_pods_are_errors() {
        let mut v = pod_json("u1", "p", json!({}));
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("uid");
        }
        let err = from_pod(&pod(v)).err();
        assert_eq!(
            err,
            Some(PodError::Malformed {
                missing: "uid",
                namespace: Some("shop".into()),
                name: Some("p".into()),
                uid: None,
            })
        );
        let err = from_pod(&pod(pod_json("u1", "", json!({})))).err();
        assert!(matches!(
            err,
            Some(PodError::Malformed {
                missing: "name",
                ..
            })
        ));
        let err = from_pod(&pod(json!({"metadata": {"name": "x", "uid": "u"}}))).err();
        assert!(matches!(
            err,
            Some(PodError::Malformed {
                missing: "namespace",
                ..
            })
        ));
        // Nothing but identity: everything else defaults.
        let p = from_pod(&pod(
            json!({"metadata": {"name": "x", "uid": "u", "namespace": "n"}}),
        ));
        let p = p.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.workload_kind, WorkloadKind::Pod);
        assert!(p.containers.is_empty());
        assert_eq!(p.termination_grace_period_seconds, 30);
        assert_eq!(p.phase, None);
    }

    #[test]
    fn serialises_flat_and_readable() {
        let p = info(pod_json(
            "u1",
            "web-1",
            owned("StatefulSet", "web", json!({})),
        ));
        let v = serde_json::to_value(&p).unwrap_or_default();
        assert_eq!(v["workload_kind"], json!("StatefulSet"));
        assert_eq!(v["workload"], json!("web"));
        assert_eq!(v["pod_ips"], json!(["10.1.2.3"]));
        assert_eq!(v["containers"][0]["container_id"], json!(CID_A));
        assert_eq!(v["containers"][0]["kind"], json!("app"));
    }
}
