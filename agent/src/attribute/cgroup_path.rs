//! Cgroup v2 path -> something a person recognises.
//!
//! The kernel programs attribute every event to a cgroup v2 id; userspace maps
//! that id to a path relative to the cgroup2 mount (for example
//! `/kubepods.slice/kubepods-burstable.slice/...`). This module reads the
//! naming conventions of kubelet, the container runtimes and systemd out of
//! that path: container runtime, container id, pod UID, QoS class, systemd
//! unit, containerd namespace.
//!
//! Pure string logic: no I/O, never fails, testable without root.
//! Anything that does not match a known layout comes back as
//! [`Runtime::Unknown`] carrying only the normalised path.
//!
//! Order of recognition (first hit wins):
//! 1. a Kubernetes pod cgroup anywhere in the path (systemd slice name,
//!    cgroupfs `kubepods/<qos>/pod<uid>` or the misconfigured literal
//!    `<pod>.slice:<runtime>:<id>` form); the container, if any, is the pod
//!    cgroup's direct child. A pod found inside an outer container (kind,
//!    nested nodes) wins over that outer container, since it is more specific.
//! 2. a container cgroup outside Kubernetes (docker, podman, CRI-O, containerd
//!    scopes, cgroupfs `/docker/<id>`); the innermost one wins.
//! 3. plain containerd: exactly `/<namespace>/<64 hex>`.
//! 4. a systemd `*.service` / `*.scope` unit.
//!
//! Container ids are only accepted as exactly 64 lowercase hex characters;
//! anything else is not taken as a container id, so a typo'd or truncated
//! name never produces a fake identity.

use serde::Serialize;

/// Length of a container id as used by containerd (CRI), CRI-O, docker and
/// podman.
const CONTAINER_ID_LEN: usize = 64;

/// Number of id characters shown in [`Identity::label`].
const SHORT_ID_LEN: usize = 12;

/// Which component created the cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    Containerd,
    #[serde(rename = "crio")]
    CriO,
    Docker,
    Podman,
    /// A plain `*.service` / `*.scope` unit that is not a container.
    Systemd,
    /// Layout not recognised, or a runtime that the path does not reveal
    /// (Kubernetes with the cgroupfs driver, a pod's own cgroup).
    Unknown,
}

impl Runtime {
    fn name(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "crio",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
            Runtime::Systemd => "systemd",
            Runtime::Unknown => "unknown",
        }
    }
}

/// Kubernetes pod QoS class, as encoded in the kubelet's cgroup layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// What a cgroup path says about the workload inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Identity {
    pub runtime: Runtime,
    /// Full container id (64 lowercase hex), as found in the path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Pod UID with dashes restored (8-4-4-4-12), or the 32-hex hash kubelet
    /// uses as UID for static pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<QosClass>,
    /// systemd unit name such as `nginx.service`; set only for
    /// [`Runtime::Systemd`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// containerd namespace for plain containerd (`/<namespace>/<id>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The input path, normalised: leading `/`, no trailing or doubled `/`.
    pub cgroup_path: String,
}

impl Identity {
    /// A short human label, e.g. `containerd:3f2a9c1b2d4e`,
    /// `pod 1b4e28ba-2fa1-11d2-883f-0016d3cca427:3f2a9c1b2d4e`,
    /// `nginx.service`, or the cgroup path when nothing better is known.
    pub fn label(&self) -> String {
        let short = self.container_id.as_deref().map(short_id);
        match (self.pod_uid.as_deref(), short) {
            (Some(uid), Some(id)) => format!("pod {uid}:{id}"),
            // A known runtime without an id under a pod is the runtime's
            // monitor process (conmon); the pod's own cgroup has Unknown.
            (Some(uid), None) if self.runtime != Runtime::Unknown => {
                format!("pod {uid} ({} monitor)", self.runtime.name())
            }
            (Some(uid), None) => format!("pod {uid}"),
            (None, Some(id)) if self.runtime == Runtime::Unknown => id.to_owned(),
            (None, Some(id)) => format!("{}:{id}", self.runtime.name()),
            (None, None) => self
                .unit
                .clone()
                .unwrap_or_else(|| self.cgroup_path.clone()),
        }
    }

    fn bare(cgroup_path: String) -> Self {
        Identity {
            runtime: Runtime::Unknown,
            container_id: None,
            pod_uid: None,
            qos: None,
            unit: None,
            namespace: None,
            cgroup_path,
        }
    }
}

/// Classify a cgroup v2 path (relative to the cgroup2 mount).
///
/// Never fails; see the module documentation for the layouts recognised.
///
/// Notes on specific layouts:
/// - A pod's own cgroup (kubelet's `...pod<uid>.slice` or `pod<uid>`, the
///   "sandbox level" without a container below it) yields pod UID and QoS
///   with [`Runtime::Unknown`]: kubelet, not the runtime, creates it.
/// - Kubernetes with the cgroupfs driver (`/kubepods/<qos>/pod<uid>/<id>`)
///   names containers by bare id, which containerd, CRI-O and cri-dockerd
///   all do alike, so the runtime stays [`Runtime::Unknown`] while container
///   id, pod UID and QoS are filled in.
/// - `crio-conmon-<id>.scope` and `libpod-conmon-<id>.scope` hold conmon,
///   the runtime's per-container monitor process, not the container. They
///   are attributed to the runtime (CRI-O / Podman) with no container id, so
///   the monitor's sockets are never mistaken for the workload's.
/// - Anything below a container cgroup (crun's `/container` child, a
///   systemd running inside the container) belongs to that container.
pub fn classify(path: &str) -> Identity {
    let segments: Vec<&str> = path
        .trim()
        .split('/')
        .filter(|segment| !segment.is_empty())
        .collect();
    let mut identity = Identity::bare(format!("/{}", segments.join("/")));

    if let Some((pod, container)) = kubernetes(&segments) {
        identity.pod_uid = Some(pod.uid);
        identity.qos = Some(pod.qos);
        if let Some(container) = container {
            identity.runtime = container.runtime;
            identity.container_id = container.id;
        }
    } else if let Some(container) = standalone_container(&segments) {
        identity.runtime = container.runtime;
        identity.container_id = container.id;
    } else if let Some((namespace, id)) = containerd_namespace(&segments) {
        identity.runtime = Runtime::Containerd;
        identity.namespace = Some(namespace.to_owned());
        identity.container_id = Some(id.to_owned());
    } else if let Some(unit) = systemd_unit(&segments) {
        identity.runtime = Runtime::Systemd;
        identity.unit = Some(unit.to_owned());
    }
    identity
}

/// The path of the cgroup that *is* the workload of `path`: the container's own cgroup for
/// a cgroup below it (crun's `/container` child, a systemd running inside the container,
/// an app that makes child cgroups itself: `.../cri-containerd-<id>.scope/sub`), the unit's
/// for a cgroup below a unit. That is the shortest ancestor-or-self path that names the same
/// workload (runtime, container id, pod, unit, namespace). A path naming nothing known is its
/// own workload.
pub fn container_path(path: &str) -> String {
    let identity = classify(path);
    let same = |other: &Identity| {
        other.runtime == identity.runtime
            && other.container_id == identity.container_id
            && other.pod_uid == identity.pod_uid
            && other.unit == identity.unit
            && other.namespace == identity.namespace
    };
    let named = identity.container_id.is_some()
        || identity.pod_uid.is_some()
        || identity.unit.is_some()
        || identity.runtime != Runtime::Unknown;
    if !named {
        return identity.cgroup_path;
    }
    let segments: Vec<&str> = identity
        .cgroup_path
        .split('/')
        .filter(|segment| !segment.is_empty())
        .collect();
    (1..segments.len())
        .map(|n| format!("/{}", segments[..n].join("/")))
        .find(|prefix| same(&classify(prefix)))
        .unwrap_or(identity.cgroup_path)
}

struct Pod {
    uid: String,
    qos: QosClass,
}

struct Container {
    runtime: Runtime,
    /// None for a runtime's monitor process (conmon).
    id: Option<String>,
}

impl Container {
    fn new(runtime: Runtime, id: &str) -> Self {
        Container {
            runtime,
            id: Some(id.to_owned()),
        }
    }
}

/// Find the first pod cgroup in the path and the container directly below it.
fn kubernetes(segments: &[&str]) -> Option<(Pod, Option<Container>)> {
    for (index, segment) in segments.iter().enumerate() {
        if let Some((slice, rest)) = segment.split_once(':') {
            // `kubepods-<qos>-pod<uid>.slice:<runtime>:<id>`: the systemd
            // driver configured in kubelet but not in the runtime.
            if let Some(pod) = parse_pod_slice(slice) {
                return Some((pod, parse_colon_container(rest)));
            }
            continue;
        }
        let pod =
            parse_pod_slice(segment).or_else(|| parse_cgroupfs_pod(&segments[..index], segment));
        if let Some(pod) = pod {
            let container = segments
                .get(index + 1)
                .and_then(|child| parse_container_segment(child, true));
            return Some((pod, container));
        }
    }
    None
}

/// systemd driver: `kubepods-pod<uid>.slice` (Guaranteed),
/// `kubepods-burstable-pod<uid>.slice`, `kubepods-besteffort-pod<uid>.slice`,
/// uid with `_` for `-`. Tokens before `kubepods` (kubelet's cgroup root,
/// e.g. kind's `kubelet-kubepods-...`) are allowed.
fn parse_pod_slice(segment: &str) -> Option<Pod> {
    let name = segment.strip_suffix(".slice")?;
    let tokens: Vec<&str> = name.split('-').collect();
    let (qos, pod_token) = match tokens.as_slice() {
        [.., "kubepods", "burstable", pod] => (QosClass::Burstable, *pod),
        [.., "kubepods", "besteffort", pod] => (QosClass::BestEffort, *pod),
        [.., "kubepods", pod] => (QosClass::Guaranteed, *pod),
        _ => return None,
    };
    let uid = pod_token.strip_prefix("pod")?.replace('_', "-");
    is_pod_uid(&uid).then_some(Pod { uid, qos })
}

/// cgroupfs driver: `.../kubepods/pod<uid>` (Guaranteed) or
/// `.../kubepods/{burstable,besteffort}/pod<uid>`, uid with dashes.
fn parse_cgroupfs_pod(parents: &[&str], segment: &str) -> Option<Pod> {
    let uid = segment.strip_prefix("pod")?;
    if !is_pod_uid(uid) {
        return None;
    }
    let qos = match parents {
        [.., "kubepods", "burstable"] => QosClass::Burstable,
        [.., "kubepods", "besteffort"] => QosClass::BestEffort,
        [.., "kubepods"] => QosClass::Guaranteed,
        _ => return None,
    };
    Some(Pod {
        uid: uid.to_owned(),
        qos,
    })
}

/// The `<runtime>:<id>` tail of the misconfigured literal form.
fn parse_colon_container(rest: &str) -> Option<Container> {
    let (runtime, id) = rest.split_once(':')?;
    if !is_container_id(id) {
        return None;
    }
    let runtime = match runtime {
        "cri-containerd" | "containerd" => Runtime::Containerd,
        "crio" | "cri-o" => Runtime::CriO,
        "crio-conmon" => {
            return Some(Container {
                runtime: Runtime::CriO,
                id: None,
            });
        }
        "docker" => Runtime::Docker,
        _ => Runtime::Unknown,
    };
    Some(Container::new(runtime, id))
}

/// Container cgroup names, with or without the systemd `.scope` suffix
/// (CRI-O with cgroupfs uses `crio-<id>` without it). Longer prefixes first.
/// The flag marks a runtime's monitor process rather than a container.
const CONTAINER_PREFIXES: &[(&str, Runtime, bool)] = &[
    ("cri-containerd-", Runtime::Containerd, false),
    ("crio-conmon-", Runtime::CriO, true),
    ("crio-", Runtime::CriO, false),
    ("docker-", Runtime::Docker, false),
    ("libpod-conmon-", Runtime::Podman, true),
    // podman --cgroups=split (e.g. quadlet units)
    ("libpod-payload-", Runtime::Podman, false),
    ("libpod-", Runtime::Podman, false),
];

/// A single container cgroup name. `allow_bare` accepts a bare 64-hex name
/// (Kubernetes cgroupfs driver), whose runtime cannot be told.
fn parse_container_segment(segment: &str, allow_bare: bool) -> Option<Container> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    for &(prefix, runtime, monitor) in CONTAINER_PREFIXES {
        if let Some(id) = name.strip_prefix(prefix)
            && is_container_id(id)
        {
            return Some(if monitor {
                Container { runtime, id: None }
            } else {
                Container::new(runtime, id)
            });
        }
    }
    (allow_bare && name.len() == segment.len() && is_container_id(name))
        .then(|| Container::new(Runtime::Unknown, name))
}

/// The innermost container cgroup outside Kubernetes: runtime scopes
/// anywhere, or docker's cgroupfs layout `docker/<id>`.
fn standalone_container(segments: &[&str]) -> Option<Container> {
    let mut found = None;
    for (index, segment) in segments.iter().enumerate() {
        if let Some(container) = parse_container_segment(segment, false) {
            found = Some(container);
        } else if index > 0 && segments[index - 1] == "docker" && is_container_id(segment) {
            found = Some(Container::new(Runtime::Docker, segment));
        }
    }
    found
}

/// Plain containerd (`ctr`, nerdctl, moby's containerd): exactly
/// `/<namespace>/<64 hex>`.
fn containerd_namespace<'a>(segments: &[&'a str]) -> Option<(&'a str, &'a str)> {
    match segments {
        [namespace, id] if is_containerd_namespace(namespace) && is_container_id(id) => {
            Some((namespace, id))
        }
        _ => None,
    }
}

/// containerd's namespace grammar (alphanumerics joined by `.`, `_`, `-`),
/// minus names that are known cgroup hierarchy roots or systemd units.
fn is_containerd_namespace(name: &str) -> bool {
    const NOT_NAMESPACES: &[&str] = &["docker", "kubepods"];
    const UNIT_SUFFIXES: &[&str] = &[".slice", ".scope", ".service"];
    let bytes = name.as_bytes();
    let well_formed = bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    well_formed
        && !NOT_NAMESPACES.contains(&name)
        && !UNIT_SUFFIXES.iter().any(|suffix| name.ends_with(suffix))
}

/// The innermost `*.service` / `*.scope` unit. A trailing `init.scope`
/// below another unit (a user manager's own process) names the outer unit.
fn systemd_unit<'a>(segments: &[&'a str]) -> Option<&'a str> {
    let units: Vec<&'a str> = segments
        .iter()
        .copied()
        .filter(|segment| is_unit(segment))
        .collect();
    match units.as_slice() {
        [.., outer, "init.scope"] => Some(outer),
        [.., innermost] => Some(innermost),
        [] => None,
    }
}

fn is_unit(segment: &str) -> bool {
    [".service", ".scope"].iter().any(|suffix| {
        segment
            .strip_suffix(suffix)
            .is_some_and(|stem| !stem.is_empty())
    })
}

fn is_lower_hex(byte: u8) -> bool {
    matches!(byte, b'0'..=b'9' | b'a'..=b'f')
}

fn is_container_id(id: &str) -> bool {
    id.len() == CONTAINER_ID_LEN && id.bytes().all(is_lower_hex)
}

/// A Kubernetes pod UID: a lowercase UUID (8-4-4-4-12), or the 32 lowercase
/// hex characters kubelet uses for static pods.
fn is_pod_uid(uid: &str) -> bool {
    let bytes = uid.as_bytes();
    match bytes.len() {
        32 => bytes.iter().copied().all(is_lower_hex),
        36 => bytes.iter().enumerate().all(|(index, &byte)| {
            if matches!(index, 8 | 13 | 18 | 23) {
                byte == b'-'
            } else {
                is_lower_hex(byte)
            }
        }),
        _ => false,
    }
}

/// The first [`SHORT_ID_LEN`] characters (not bytes, so hand-built ids with
/// multi-byte characters cannot cause a panic).
fn short_id(id: &str) -> &str {
    match id.char_indices().nth(SHORT_ID_LEN) {
        Some((end, _)) => &id[..end],
        None => id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c1b2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
    const UID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    const UID_US: &str = "1b4e28ba_2fa1_11d2_883f_0016d3cca427";
    const STATIC_UID: &str = "0123456789abcdef0123456789abcdef";

    fn ident(path: &str, runtime: Runtime) -> Identity {
        Identity {
            runtime,
            ..Identity::bare(path.to_owned())
        }
    }

    fn container(path: &str, runtime: Runtime, id: &str) -> Identity {
        Identity {
            container_id: Some(id.to_owned()),
            ..ident(path, runtime)
        }
    }

    fn pod(mut identity: Identity, uid: &str, qos: QosClass) -> Identity {
        identity.pod_uid = Some(uid.to_owned());
        identity.qos = Some(qos);
        identity
    }

    fn unit(path: &str, name: &str) -> Identity {
        Identity {
            unit: Some(name.to_owned()),
            ..ident(path, Runtime::Systemd)
        }
    }

    fn unknown(path: &str) -> Identity {
        ident(path, Runtime::Unknown)
    }

    #[test]
    fn a_cgroup_below_a_container_belongs_to_it() {
        let kube = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{ID}.scope"
        );
        for (path, root) in [
            (format!("{kube}/sub"), kube.clone()),
            (format!("{kube}/a/b/"), kube.clone()),
            (kube.clone(), kube.clone()),
            (
                format!("/system.slice/docker-{ID}.scope/system.slice/nginx.service"),
                format!("/system.slice/docker-{ID}.scope"),
            ),
            (
                format!("/system.slice/docker-{ID}.scope/init.scope"),
                format!("/system.slice/docker-{ID}.scope"),
            ),
            (format!("/docker/{ID}/payload"), format!("/docker/{ID}")),
            (
                "/system.slice/nginx.service/workers".into(),
                "/system.slice/nginx.service".into(),
            ),
            // Nothing known: its own workload, never its parent's.
            ("/ts-test/a".into(), "/ts-test/a".into()),
            ("/".into(), "/".into()),
        ] {
            assert_eq!(container_path(&path), root, "{path}");
        }
        // A pod's conmon beside its container is not the container.
        let conmon = format!("/kubepods.slice/kubepods-pod{UID_US}.slice/crio-conmon-{ID}.scope");
        assert_eq!(container_path(&conmon), conmon);
    }

    #[test]
    fn classifies_every_known_shape() {
        use QosClass::*;
        use Runtime::*;

        let burstable = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice"
        );
        let besteffort = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice"
        );
        let guaranteed = format!("/kubepods.slice/kubepods-pod{UID_US}.slice");
        let podman_user = "/user.slice/user-1000.slice/user@1000.service/user.slice";

        let cases: Vec<(String, Identity)> = vec![
            // --- Kubernetes, systemd driver ---
            {
                let p = format!("{burstable}/cri-containerd-{ID}.scope");
                (
                    p.clone(),
                    pod(container(&p, Containerd, ID), UID, Burstable),
                )
            },
            {
                let p = format!("{besteffort}/cri-containerd-{ID}.scope");
                (
                    p.clone(),
                    pod(container(&p, Containerd, ID), UID, BestEffort),
                )
            },
            {
                let p = format!("{guaranteed}/cri-containerd-{ID}.scope");
                (
                    p.clone(),
                    pod(container(&p, Containerd, ID), UID, Guaranteed),
                )
            },
            // pod sandbox level: pod only, runtime unknown
            (burstable.clone(), pod(unknown(&burstable), UID, Burstable)),
            (
                guaranteed.clone(),
                pod(unknown(&guaranteed), UID, Guaranteed),
            ),
            // trailing slash and doubled slashes are normalised
            (
                format!("{besteffort}//"),
                pod(unknown(&besteffort), UID, BestEffort),
            ),
            // static pod: 32-hex uid kept as is
            {
                let p = format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/cri-containerd-{ID}.scope"
                );
                (
                    p.clone(),
                    pod(container(&p, Containerd, ID), STATIC_UID, Burstable),
                )
            },
            // kind: kubelet cgroup root inside a docker node container
            {
                let p = format!(
                    "/system.slice/docker-{}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{ID}.scope",
                    "a".repeat(64)
                );
                (
                    p.clone(),
                    pod(container(&p, Containerd, ID), UID, BestEffort),
                )
            },
            // --- Kubernetes, cgroupfs driver: runtime not knowable ---
            {
                let p = format!("/kubepods/besteffort/pod{UID}/{ID}");
                (p.clone(), pod(container(&p, Unknown, ID), UID, BestEffort))
            },
            {
                let p = format!("/kubepods/burstable/pod{UID}/{ID}");
                (p.clone(), pod(container(&p, Unknown, ID), UID, Burstable))
            },
            {
                let p = format!("/kubepods/pod{UID}/{ID}");
                (p.clone(), pod(container(&p, Unknown, ID), UID, Guaranteed))
            },
            {
                let p = format!("/kubepods/burstable/pod{UID}");
                (p.clone(), pod(unknown(&p), UID, Burstable))
            },
            {
                let p = format!("/kubepods/burstable/pod{UID}/crio-{ID}");
                (p.clone(), pod(container(&p, CriO, ID), UID, Burstable))
            },
            // --- misconfigured literal form ---
            {
                let p = format!("/kubepods-burstable-pod{UID_US}.slice:cri-containerd:{ID}");
                (
                    p.clone(),
                    pod(container(&p, Containerd, ID), UID, Burstable),
                )
            },
            {
                let p = format!("/kubepods-besteffort-pod{UID_US}.slice:crio:{ID}");
                (p.clone(), pod(container(&p, CriO, ID), UID, BestEffort))
            },
            {
                let p = format!(
                    "/system.slice/containerd.service/kubepods-pod{UID_US}.slice:cri-containerd:{ID}"
                );
                (
                    p.clone(),
                    pod(container(&p, Containerd, ID), UID, Guaranteed),
                )
            },
            // bad id in the literal form: pod level only
            {
                let p = format!(
                    "/kubepods-burstable-pod{UID_US}.slice:cri-containerd:{}",
                    &ID[1..]
                );
                (p.clone(), pod(unknown(&p), UID, Burstable))
            },
            // --- CRI-O ---
            {
                let p = format!("{burstable}/crio-{ID}.scope");
                (p.clone(), pod(container(&p, CriO, ID), UID, Burstable))
            },
            {
                let p = format!("{burstable}/crio-{ID}.scope/container");
                (p.clone(), pod(container(&p, CriO, ID), UID, Burstable))
            },
            {
                let p = format!("{burstable}/crio-conmon-{ID}.scope");
                (p.clone(), pod(ident(&p, CriO), UID, Burstable))
            },
            {
                let p = format!("/system.slice/crio-conmon-{ID}.scope");
                (p.clone(), ident(&p, CriO))
            },
            // --- Docker / cri-dockerd ---
            {
                let p = format!("/system.slice/docker-{ID}.scope");
                (p.clone(), container(&p, Docker, ID))
            },
            {
                let p = format!("/docker/{ID}");
                (p.clone(), container(&p, Docker, ID))
            },
            {
                let p = format!("{guaranteed}/docker-{ID}.scope");
                (p.clone(), pod(container(&p, Docker, ID), UID, Guaranteed))
            },
            // --- Podman ---
            {
                let p = format!("/machine.slice/libpod-{ID}.scope");
                (p.clone(), container(&p, Podman, ID))
            },
            {
                let p = format!("{podman_user}/libpod-{ID}.scope");
                (p.clone(), container(&p, Podman, ID))
            },
            {
                let p = format!("/machine.slice/libpod-{ID}.scope/container");
                (p.clone(), container(&p, Podman, ID))
            },
            {
                let p = format!("/machine.slice/libpod-conmon-{ID}.scope");
                (p.clone(), ident(&p, Podman))
            },
            // --- plain containerd ---
            {
                let p = format!("/default/{ID}");
                (
                    p.clone(),
                    Identity {
                        namespace: Some("default".into()),
                        ..container(&p, Containerd, ID)
                    },
                )
            },
            {
                let p = format!("/k8s.io/{ID}");
                (
                    p.clone(),
                    Identity {
                        namespace: Some("k8s.io".into()),
                        ..container(&p, Containerd, ID)
                    },
                )
            },
            {
                let p = format!("/moby/{ID}/");
                let n = format!("/moby/{ID}");
                (
                    p,
                    Identity {
                        namespace: Some("moby".into()),
                        ..container(&n, Containerd, ID)
                    },
                )
            },
            // --- systemd ---
            (
                "/system.slice/nginx.service".into(),
                unit("/system.slice/nginx.service", "nginx.service"),
            ),
            (
                "/system.slice/system-getty.slice/getty@tty1.service".into(),
                unit(
                    "/system.slice/system-getty.slice/getty@tty1.service",
                    "getty@tty1.service",
                ),
            ),
            (
                "/user.slice/user-1000.slice/session-3.scope".into(),
                unit(
                    "/user.slice/user-1000.slice/session-3.scope",
                    "session-3.scope",
                ),
            ),
            (
                "/system.slice/foo.service/worker".into(),
                unit("/system.slice/foo.service/worker", "foo.service"),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/init.scope".into(),
                unit(
                    "/user.slice/user-1000.slice/user@1000.service/init.scope",
                    "user@1000.service",
                ),
            ),
            ("/init.scope".into(), unit("/init.scope", "init.scope")),
            // --- anything else ---
            ("/termscope-test/abc".into(), unknown("/termscope-test/abc")),
        ];

        for (input, expected) in cases {
            assert_eq!(classify(&input), expected, "input: {input:?}");
        }
    }

    #[test]
    fn rejects_malformed_ids_and_paths() {
        use Runtime::*;

        let id63 = &ID[1..];
        let upper = ID.to_ascii_uppercase();
        let non_hex = format!("{}g", &ID[1..]);
        let burstable = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice"
        );

        let cases: Vec<(String, Identity)> = vec![
            ("".into(), unknown("/")),
            ("/".into(), unknown("/")),
            ("///".into(), unknown("/")),
            ("  \n".into(), unknown("/")),
            // wrong-length / non-hex / uppercase ids are not container ids
            {
                let p = format!("/default/{id63}");
                (p.clone(), unknown(&p))
            },
            {
                let p = format!("/default/{upper}");
                (p.clone(), unknown(&p))
            },
            {
                let p = format!("/docker/{non_hex}");
                (p.clone(), unknown(&p))
            },
            {
                let p = format!("/docker/{ID}a");
                (p.clone(), unknown(&p))
            },
            // a scope whose id is malformed is just a scope unit
            {
                let p = format!("/system.slice/docker-{id63}.scope");
                (p.clone(), unit(&p, &format!("docker-{id63}.scope")))
            },
            {
                let p = format!("/machine.slice/libpod-{upper}.scope");
                (p.clone(), unit(&p, &format!("libpod-{upper}.scope")))
            },
            // bad container under a valid pod: pod level only
            {
                let p = format!("{burstable}/cri-containerd-{id63}.scope");
                (p.clone(), pod(unknown(&p), UID, QosClass::Burstable))
            },
            {
                let p = format!("{burstable}/{upper}");
                (p.clone(), pod(unknown(&p), UID, QosClass::Burstable))
            },
            // empty or malformed pod uids
            (
                "/kubepods.slice/kubepods-pod.slice".into(),
                unknown("/kubepods.slice/kubepods-pod.slice"),
            ),
            {
                let p = format!("/kubepods.slice/kubepods-pod.slice/cri-containerd-{ID}.scope");
                (p.clone(), container(&p, Containerd, ID))
            },
            {
                let p = format!(
                    "/kubepods.slice/kubepods-pod{}.slice",
                    UID_US.to_ascii_uppercase()
                );
                (p.clone(), unknown(&p))
            },
            {
                let p = format!("/kubepods.slice/kubepods-pod{}.slice", &UID_US[1..]);
                (p.clone(), unknown(&p))
            },
            // dashes cannot appear in a systemd pod slice uid
            {
                let p = format!("/kubepods.slice/kubepods-pod{UID}.slice");
                (p.clone(), unknown(&p))
            },
            // cgroupfs pod outside kubepods is not a pod
            {
                let p = format!("/burstable/pod{UID}/{ID}");
                (p.clone(), unknown(&p))
            },
            // bare id under kubepods without a pod
            {
                let p = format!("/kubepods/{ID}");
                (p.clone(), unknown(&p))
            },
            // containerd namespace rule needs exactly two segments
            {
                let p = format!("/a/default/{ID}");
                (p.clone(), unknown(&p))
            },
            {
                let p = format!("/system.slice/{ID}");
                (p.clone(), unknown(&p))
            },
            // odd colon forms
            (":".into(), unknown("/:")),
            ("/a:b:c".into(), unknown("/a:b:c")),
            ("/.service".into(), unknown("/.service")),
        ];

        for (input, expected) in cases {
            assert_eq!(classify(&input), expected, "input: {input:?}");
        }
    }

    #[test]
    fn labels() {
        let short = &ID[..12];
        let cases: Vec<(String, String)> = vec![
            (format!("/default/{ID}"), format!("containerd:{short}")),
            (
                format!("/system.slice/docker-{ID}.scope"),
                format!("docker:{short}"),
            ),
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                format!("podman:{short}"),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_US}.slice/crio-{ID}.scope"),
                format!("pod {UID}:{short}"),
            ),
            (
                format!("/kubepods/pod{UID}/{ID}"),
                format!("pod {UID}:{short}"),
            ),
            (format!("/kubepods/pod{UID}"), format!("pod {UID}")),
            (
                format!("/kubepods.slice/kubepods-pod{UID_US}.slice/crio-conmon-{ID}.scope"),
                format!("pod {UID} (crio monitor)"),
            ),
            ("/system.slice/nginx.service".into(), "nginx.service".into()),
            ("/termscope-test/abc/".into(), "/termscope-test/abc".into()),
            ("".into(), "/".into()),
        ];
        for (input, expected) in cases {
            assert_eq!(classify(&input).label(), expected, "input: {input:?}");
        }

        // hand-built identities with odd ids must not panic
        let odd = Identity {
            container_id: Some("é".repeat(14)),
            ..Identity::bare("/x".into())
        };
        assert_eq!(odd.label(), "é".repeat(12));
    }

    #[test]
    fn serializes_compactly() {
        let json = serde_json::to_value(classify(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/crio-{ID}.scope"
        )))
        .expect("serialize");
        let object = json.as_object().expect("object");
        assert_eq!(object["runtime"], "crio");
        assert_eq!(object["qos"], "best_effort");
        assert_eq!(object["pod_uid"], UID);
        assert_eq!(object["container_id"], ID);
        assert!(!object.contains_key("unit"));
        assert!(!object.contains_key("namespace"));

        let json =
            serde_json::to_value(classify("/system.slice/nginx.service")).expect("serialize");
        assert_eq!(json["runtime"], "systemd");
        assert_eq!(json["unit"], "nginx.service");
        assert!(json.get("container_id").is_none());
    }
}
