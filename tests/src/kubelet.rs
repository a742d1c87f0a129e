//! A kubelet stand-in: runs test pods on the tests' containerd over CRI the way kubelet does,
//! deletes them the way kubelet does, and keeps the API server stand-in's Pod and
//! EndpointSlice objects as kubelet and the endpoints controller would.
//!
//! Creation ([`KubeletDriver::run_pod`]): the Pod object is stored as scheduled to this node
//! (Pending); `RunPodSandbox` with the pod's cgroup parent (`/kubepods/<qos>/pod<uid>`, the
//! cgroupfs driver's form), labels and namespace options as kubelet sets them (network and IPC
//! shared in the pod, one PID namespace per container: the app is PID 1 of its container, so
//! the kernel drops any signal it has no handler for, SIGTERM included — an app without a
//! SIGTERM handler is not ended by StopContainer's SIGTERM but by the SIGKILL at the deadline,
//! exit code 137, as on a real node);
//! `CreateContainer` + `StartContainer` for each container, in order; then the status is
//! reported: phase Running, podIP, `containerStatuses[].containerID = containerd://<id>`,
//! Ready; and, for a pod with a `service`, its endpoint in the service's EndpointSlice is
//! ready.
//!
//! Deletion ([`Pod::delete`]), as after `kubectl delete pod`:
//! 1. the API server marks the pod: `deletionTimestamp = now + grace`,
//!    `deletionGracePeriodSeconds = grace`; the endpoints controller at once turns its endpoint
//!    `ready=false, serving=true, terminating=true`;
//! 2. kubelet kills the containers, all at once, each: the preStop hook (exec through
//!    `ExecSync`, sleep, or httpGet: `GET` to the pod IP from the node), then `StopContainer` with what is left of the grace period (at
//!    least 2 s, kubelet's minimum; 0 kills at once) — containerd sends the image's stop
//!    signal, then SIGKILL at the deadline;
//! 3. the final status is reported (terminated, exit codes), the sandbox is stopped and
//!    removed with its containers, the pod cgroup is removed, the endpoint leaves the slice,
//!    and the Pod object is deleted.
//!
//! Init containers ([`PodSpec::init_containers`]) run one after the other, each to a zero
//! exit, before the app containers are created, as kubelet runs them. A container's security
//! context ([`ContainerSpec::security`]: capabilities, uid/gid, read-only root, no_new_privs,
//! seccomp profile) and the sandbox's seccomp profile go to CRI as kubelet sends them; a
//! Localhost seccomp profile is the absolute path kubelet makes of `localhostProfile` under
//! its seccomp directory. Container memory and CPU limits go to CRI's `resources`.
//!
//! Not done: restarts (restartPolicy), probes (a test runs them itself), volumes other than
//! host mounts, resource limits on the pod cgroup, Events from kubelet, and the watch-driven
//! asynchrony of the real thing (here each step runs when the test calls it).

use std::{
    collections::BTreeMap,
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    apiserver::{ApiServer, Res, rfc3339},
    containerd::{self, Containerd},
    cri::{self, ContainerStatus, Cri, PodSandboxConfig, v1},
    images,
};

/// kubelet's floor for the stop timeout after a preStop hook (`minimumGracePeriodInSeconds`).
const MIN_GRACE_SECS: i64 = 2;

/// A pod's QoS class: where its cgroup goes and its containers' oom_score_adj.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Qos {
    Guaranteed,
    #[default]
    Burstable,
    BestEffort,
}

impl Qos {
    /// The pod's cgroup parent with the cgroupfs driver.
    pub fn cgroup_parent(self, uid: &str) -> String {
        match self {
            Qos::Guaranteed => format!("/kubepods/pod{uid}"),
            Qos::Burstable => format!("/kubepods/burstable/pod{uid}"),
            Qos::BestEffort => format!("/kubepods/besteffort/pod{uid}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }

    /// kubelet's oom_score_adj for the class (Burstable without a memory request).
    fn oom_score_adj(self) -> i64 {
        match self {
            Qos::Guaranteed => -997,
            Qos::Burstable => 999,
            Qos::BestEffort => 1000,
        }
    }
}

/// A container's preStop hook.
#[derive(Debug, Clone)]
pub enum PreStop {
    /// `lifecycle.preStop.exec.command`, run in the container with `ExecSync`.
    Exec(Vec<String>),
    /// `lifecycle.preStop.sleep.seconds` (run by kubelet itself).
    Sleep(Duration),
    /// `lifecycle.preStop.httpGet` on the container's port and path: kubelet itself sends
    /// `GET path` to the pod IP from the node and waits for the answer (or the grace period).
    HttpGet { port: u16, path: String },
}

/// One container of a test pod.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    /// Defaults to the host-userland app image, [`images::APP`].
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// Mounts besides the host userland.
    pub mounts: Vec<v1::Mount>,
    /// Mount the host's /usr (and friends) read-only: needed by host-userland images.
    pub host_userland: bool,
    /// `ports[].containerPort` (TCP), also the EndpointSlice ports.
    pub ports: Vec<u16>,
    pub pre_stop: Option<PreStop>,
    /// The container's security context as kubelet sends it (its namespace options are
    /// always the pod's). `None`: only the namespace options, as before (no seccomp profile
    /// asked for: containerd runs the container unconfined).
    pub security: Option<v1::LinuxContainerSecurityContext>,
    /// `resources.limits.memory` in bytes (0: none).
    pub memory_limit_bytes: i64,
    /// `resources.limits.cpu` in millicores (0: none).
    pub cpu_limit_millis: i64,
}

impl ContainerSpec {
    /// A container of the app image running `command`.
    pub fn new(name: &str, command: &[&str]) -> Self {
        ContainerSpec {
            name: name.into(),
            image: images::APP.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: Vec::new(),
            env: Vec::new(),
            working_dir: None,
            mounts: Vec::new(),
            host_userland: true,
            ports: Vec::new(),
            pre_stop: None,
            security: None,
            memory_limit_bytes: 0,
            cpu_limit_millis: 0,
        }
    }

    pub fn image(mut self, image: &str) -> Self {
        self.image = image.into();
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.ports.push(port);
        self
    }

    pub fn mount(mut self, mount: v1::Mount) -> Self {
        self.mounts.push(mount);
        self
    }

    pub fn pre_stop(mut self, hook: PreStop) -> Self {
        self.pre_stop = Some(hook);
        self
    }
}

/// A test pod.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    /// Generated when empty.
    pub uid: String,
    pub qos: Qos,
    pub labels: BTreeMap<String, String>,
    pub containers: Vec<ContainerSpec>,
    pub termination_grace_period_seconds: i64,
    /// The Service whose EndpointSlice lists this pod, if any.
    pub service: Option<String>,
    /// Run to completion, in order, before `containers` start.
    pub init_containers: Vec<ContainerSpec>,
    /// The sandbox's seccomp profile (the pod-level `securityContext.seccompProfile`).
    pub sandbox_seccomp: Option<v1::SecurityProfile>,
    /// `hostPID`: the pod's processes in the node's PID namespace (network and IPC stay the
    /// pod's).
    pub host_pid: bool,
}

impl PodSpec {
    /// A pod in namespace `default`, Burstable, grace period 30 s (the Kubernetes default).
    pub fn new(name: &str, containers: Vec<ContainerSpec>) -> Self {
        PodSpec {
            name: name.into(),
            namespace: "default".into(),
            uid: String::new(),
            qos: Qos::Burstable,
            labels: BTreeMap::new(),
            containers,
            termination_grace_period_seconds: 30,
            service: None,
            init_containers: Vec::new(),
            sandbox_seccomp: None,
            host_pid: false,
        }
    }

    pub fn grace(mut self, seconds: i64) -> Self {
        self.termination_grace_period_seconds = seconds;
        self
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.into();
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn service(mut self, name: &str) -> Self {
        self.service = Some(name.into());
        self
    }

    pub fn qos(mut self, qos: Qos) -> Self {
        self.qos = qos;
        self
    }
}

/// A fresh pod UID (random-looking v4 form: what `classify` expects of a pod uid).
pub fn new_pod_uid() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let seed = u128::from(std::process::id()) << 96
        ^ u128::from(SEQ.fetch_add(1, Ordering::Relaxed)) << 64
        ^ nanos;
    // splitmix-style scrambling of the 128 bits, for spread, not secrecy.
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    x ^= x >> 67;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9_94d0_49bb_1331_11eb);
    let hex = format!("{x:032x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// Drives pods on one containerd, reporting to an optional API server stand-in.
pub struct KubeletDriver<'a> {
    pub containerd: &'a Containerd,
    pub api: Option<&'a ApiServer>,
    /// `spec.nodeName` of the pods (default `test-node`).
    pub node_name: String,
}

impl<'a> KubeletDriver<'a> {
    /// A driver; with an API server it registers the Node object there.
    pub fn new(containerd: &'a Containerd, api: Option<&'a ApiServer>) -> Result<Self> {
        let k = KubeletDriver {
            containerd,
            api,
            node_name: "test-node".into(),
        };
        k.register_node()?;
        Ok(k)
    }

    fn register_node(&self) -> Result<()> {
        if let Some(api) = self.api {
            api.upsert(
                Res::Nodes,
                json!({
                    "metadata": {
                        "name": self.node_name,
                        "labels": { "kubernetes.io/hostname": self.node_name },
                    },
                    "status": {
                        "addresses": [
                            { "type": "InternalIP", "address": containerd::NODE_BRIDGE_IP },
                            { "type": "Hostname", "address": self.node_name },
                        ],
                        "conditions": [{ "type": "Ready", "status": "True" }],
                    },
                }),
            )?;
        }
        Ok(())
    }

    pub fn cri(&self) -> &Cri {
        self.containerd.cri()
    }

    /// Runs a pod as kubelet does (see the module docs). The pod is force-removed on drop if
    /// the test did not delete it.
    pub fn run_pod(&self, spec: PodSpec) -> Result<Pod<'_>> {
        let mut spec = spec;
        if spec.uid.is_empty() {
            spec.uid = new_pod_uid();
        }
        let cgroup_parent = spec.qos.cgroup_parent(&spec.uid);
        self.containerd.track_pod_cgroup(&cgroup_parent);
        let log_dir = self
            .containerd
            .dir
            .join("pods")
            .join(format!("{}_{}_{}", spec.namespace, spec.name, spec.uid));
        std::fs::create_dir_all(&log_dir)?;
        if let Some(api) = self.api {
            api.upsert(Res::Pods, self.pod_object(&spec))?;
        }
        let sandbox_config = sandbox_config(&spec, &cgroup_parent, &log_dir);
        let t = Instant::now();
        let sandbox_id = self
            .cri()
            .run_pod_sandbox(&sandbox_config)
            .with_context(|| self.failure_context("RunPodSandbox"))?;
        let mut pod = Pod {
            kubelet: self,
            spec,
            sandbox_id,
            sandbox_config,
            cgroup_parent,
            log_dir,
            ip: String::new(),
            netns: PathBuf::new(),
            containers: Vec::new(),
            init_container_ids: Vec::new(),
            started_at: SystemTime::now(),
            gone: false,
        };
        let net = self.cri().sandbox_network(&pod.sandbox_id)?;
        pod.ip = net.ip;
        pod.netns = net.netns;
        for c in pod.spec.init_containers.clone() {
            let config = container_config(&pod.spec, &c);
            let id = self
                .cri()
                .create_container(&pod.sandbox_id, &config, &pod.sandbox_config)
                .with_context(|| {
                    self.failure_context(&format!("CreateContainer {} (init)", c.name))
                })?;
            pod.init_container_ids.push(id.clone());
            self.cri()
                .start_container(&id)
                .with_context(|| self.failure_context(&format!("StartContainer {}", c.name)))?;
            let deadline = Instant::now() + Duration::from_secs(60);
            let status = loop {
                let status = self.cri().container_status(&id)?;
                if status.state == v1::ContainerState::ContainerExited as i32 {
                    break status;
                }
                if Instant::now() >= deadline {
                    bail!("init container {} did not finish within 60 s", c.name);
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if status.exit_code != 0 {
                bail!(
                    "init container {} failed with exit code {} ({}); it printed:\n{}",
                    c.name,
                    status.exit_code,
                    status.reason,
                    pod.logs(&c.name)
                );
            }
        }
        for c in pod.spec.containers.clone() {
            let config = container_config(&pod.spec, &c);
            let id = self
                .cri()
                .create_container(&pod.sandbox_id, &config, &pod.sandbox_config)
                .with_context(|| self.failure_context(&format!("CreateContainer {}", c.name)))?;
            self.cri().start_container(&id).with_context(|| {
                format!(
                    "{}\nits status: {:?}\nthe container printed:\n{}",
                    self.failure_context(&format!("StartContainer {}", c.name)),
                    self.cri().container_status(&id),
                    pod.logs(&c.name)
                )
            })?;
            let pid = self.cri().container_pid(&id)?;
            pod.containers.push(RunningContainer {
                name: c.name.clone(),
                cgroup_path: cri::container_cgroup_path(&pod.cgroup_parent, &id),
                id,
                pid,
                spec: c,
            });
        }
        pod.started_at = SystemTime::now();
        if std::env::var_os("TERMSCOPE_TEST_VERBOSE").is_some() {
            eprintln!(
                "[kubelet] pod {}/{} running in {:?} (ip {})",
                pod.spec.namespace,
                pod.spec.name,
                t.elapsed(),
                pod.ip
            );
        }
        self.report_running(&pod)?;
        Ok(pod)
    }

    fn failure_context(&self, what: &str) -> String {
        format!(
            "{what} failed; containerd's log ends with:\n{}",
            self.containerd.log_tail(20)
        )
    }

    /// The Pod object as the scheduler leaves it: bound to this node, Pending.
    fn pod_object(&self, spec: &PodSpec) -> Value {
        let containers: Vec<Value> = spec
            .containers
            .iter()
            .map(|c| {
                let mut v = json!({
                    "name": c.name,
                    "image": c.image,
                    "command": c.command,
                    "args": c.args,
                    "env": c.env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
                    "ports": c.ports.iter().map(|p| json!({"containerPort": p, "protocol": "TCP"})).collect::<Vec<_>>(),
                    "imagePullPolicy": "Never",
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                });
                match &c.pre_stop {
                    Some(PreStop::Exec(cmd)) => {
                        v["lifecycle"] = json!({ "preStop": { "exec": { "command": cmd } } });
                    }
                    Some(PreStop::Sleep(d)) => {
                        v["lifecycle"] = json!({ "preStop": { "sleep": { "seconds": d.as_secs() } } });
                    }
                    Some(PreStop::HttpGet { port, path }) => {
                        v["lifecycle"] = json!({ "preStop": { "httpGet": { "port": port, "path": path } } });
                    }
                    None => {}
                }
                v
            })
            .collect();
        json!({
            "metadata": {
                "name": spec.name,
                "namespace": spec.namespace,
                "uid": spec.uid,
                "labels": spec.labels,
            },
            "spec": {
                "nodeName": self.node_name,
                "containers": containers,
                "restartPolicy": "Always",
                "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
                "dnsPolicy": "ClusterFirst",
                "schedulerName": "default-scheduler",
            },
            "status": {
                "phase": "Pending",
                "qosClass": spec.qos.name(),
                "conditions": [{ "type": "PodScheduled", "status": "True" }],
            },
        })
    }

    fn report_running(&self, pod: &Pod) -> Result<()> {
        let Some(api) = self.api else { return Ok(()) };
        let now = rfc3339(SystemTime::now(), false);
        let started = rfc3339(pod.started_at, false);
        let statuses: Vec<Value> = pod
            .containers
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "containerID": format!("containerd://{}", c.id),
                    "image": c.spec.image,
                    "imageID": "",
                    "ready": true,
                    "started": true,
                    "restartCount": 0,
                    "state": { "running": { "startedAt": started } },
                })
            })
            .collect();
        let cond = |t: &str| json!({ "type": t, "status": "True", "lastTransitionTime": now });
        let ip = pod.ip.clone();
        let qos = pod.spec.qos.name();
        api.update(Res::Pods, &pod.spec.namespace, &pod.spec.name, |o| {
            o["status"] = json!({
                "phase": "Running",
                "qosClass": qos,
                "hostIP": containerd::NODE_BRIDGE_IP,
                "podIP": ip,
                "podIPs": [{ "ip": ip }],
                "startTime": started,
                "conditions": [
                    cond("PodReadyToStartContainers"),
                    cond("Initialized"),
                    cond("Ready"),
                    cond("ContainersReady"),
                    cond("PodScheduled"),
                ],
                "containerStatuses": statuses,
            });
        })?;
        self.set_endpoint(pod, Some((true, true, false)))
    }

    /// The endpoints controller's part: puts the pod in its service's EndpointSlice with the
    /// given (ready, serving, terminating) conditions, or takes it out (`None`).
    fn set_endpoint(&self, pod: &Pod, conditions: Option<(bool, bool, bool)>) -> Result<()> {
        let (Some(api), Some(service)) = (self.api, pod.spec.service.as_deref()) else {
            return Ok(());
        };
        let ns = &pod.spec.namespace;
        let name = format!("{service}-ts");
        let mut slice = api.get(Res::EndpointSlices, ns, &name).unwrap_or_else(|| {
            json!({
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": {
                        "kubernetes.io/service-name": service,
                        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                    },
                },
                "addressType": "IPv4",
                "endpoints": [],
                "ports": [],
            })
        });
        let mut endpoints: Vec<Value> = slice["endpoints"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["targetRef"]["uid"] != pod.spec.uid.as_str())
            .collect();
        if let Some((ready, serving, terminating)) = conditions {
            endpoints.push(json!({
                "addresses": [pod.ip],
                "conditions": { "ready": ready, "serving": serving, "terminating": terminating },
                "nodeName": self.node_name,
                "targetRef": {
                    "kind": "Pod",
                    "namespace": ns,
                    "name": pod.spec.name,
                    "uid": pod.spec.uid,
                },
            }));
        }
        let ports: Vec<Value> = pod
            .spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter())
            .map(|p| json!({ "name": format!("tcp-{p}"), "port": p, "protocol": "TCP" }))
            .collect();
        slice["endpoints"] = json!(endpoints);
        if !ports.is_empty() {
            slice["ports"] = json!(ports);
        }
        api.upsert(Res::EndpointSlices, slice)?;
        Ok(())
    }
}

/// The namespaces kubelet asks for (`namespacesForPod`): the pod's network and IPC, a PID
/// namespace per container unless `hostPID` (the node's).
fn sandbox_namespaces(spec: &PodSpec) -> v1::NamespaceOption {
    v1::NamespaceOption {
        network: v1::NamespaceMode::Pod as i32,
        pid: if spec.host_pid {
            v1::NamespaceMode::Node as i32
        } else {
            v1::NamespaceMode::Container as i32
        },
        ipc: v1::NamespaceMode::Pod as i32,
        target_id: String::new(),
    }
}

fn sandbox_config(spec: &PodSpec, cgroup_parent: &str, log_dir: &Path) -> PodSandboxConfig {
    let mut labels: std::collections::HashMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert("io.kubernetes.pod.name".into(), spec.name.clone());
    labels.insert("io.kubernetes.pod.namespace".into(), spec.namespace.clone());
    labels.insert("io.kubernetes.pod.uid".into(), spec.uid.clone());
    PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: spec.name.clone(),
            uid: spec.uid.clone(),
            namespace: spec.namespace.clone(),
            attempt: 0,
        }),
        hostname: spec.name.clone(),
        log_directory: log_dir.display().to_string(),
        // There is no cluster DNS. Without a DNS config containerd copies the host's
        // resolv.conf, whose resolvers the pod cannot reach: lookups would hang until they
        // time out. The pod's own loopback refuses them at once instead.
        dns_config: Some(v1::DnsConfig {
            servers: vec!["127.0.0.1".into()],
            searches: vec![
                format!("{}.svc.cluster.local", spec.namespace),
                "svc.cluster.local".into(),
                "cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        }),
        labels,
        annotations: cri::labels(&[
            ("kubernetes.io/config.source", "api"),
            (
                "kubernetes.io/config.seen",
                &rfc3339(SystemTime::now(), true),
            ),
        ]),
        linux: Some(v1::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: Some(sandbox_namespaces(spec)),
                seccomp: spec.sandbox_seccomp.clone(),
                ..Default::default()
            }),
            sysctls: Default::default(),
        }),
    }
}

fn container_config(pod: &PodSpec, c: &ContainerSpec) -> v1::ContainerConfig {
    let mut mounts = if c.host_userland {
        images::host_mounts()
    } else {
        Vec::new()
    };
    mounts.extend(c.mounts.iter().cloned());
    v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: c.name.clone(),
            attempt: 0,
        }),
        image: Some(v1::ImageSpec {
            image: c.image.clone(),
        }),
        command: c.command.clone(),
        args: c.args.clone(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: c
            .env
            .iter()
            .map(|(k, v)| v1::KeyValue {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        mounts,
        labels: cri::labels(&[
            ("io.kubernetes.container.name", &c.name),
            ("io.kubernetes.pod.name", &pod.name),
            ("io.kubernetes.pod.namespace", &pod.namespace),
            ("io.kubernetes.pod.uid", &pod.uid),
        ]),
        annotations: cri::labels(&[
            ("io.kubernetes.container.restartCount", "0"),
            (
                "io.kubernetes.pod.terminationGracePeriod",
                &pod.termination_grace_period_seconds.to_string(),
            ),
        ]),
        log_path: format!("{}/0.log", c.name),
        stdin: false,
        tty: false,
        linux: Some(v1::LinuxContainerConfig {
            resources: Some(v1::LinuxContainerResources {
                cpu_period: 100_000,
                // kubelet: quota = limit in millicores * period / 1000.
                cpu_quota: c.cpu_limit_millis * 100,
                cpu_shares: 2,
                memory_limit_in_bytes: c.memory_limit_bytes,
                oom_score_adj: pod.qos.oom_score_adj(),
            }),
            security_context: Some(v1::LinuxContainerSecurityContext {
                namespace_options: Some(sandbox_namespaces(pod)),
                ..c.security.clone().unwrap_or_default()
            }),
        }),
    }
}

/// A started container.
#[derive(Debug, Clone)]
pub struct RunningContainer {
    pub name: String,
    /// The CRI container id (64 hex).
    pub id: String,
    /// Its cgroup path (relative to the cgroup2 mount): `/kubepods/<qos>/pod<uid>/<id>`.
    pub cgroup_path: String,
    /// Its main process (host pid).
    pub pid: u32,
    pub spec: ContainerSpec,
}

/// What happened to one container when its pod was deleted.
#[derive(Debug, Clone)]
pub struct ContainerStop {
    pub name: String,
    pub id: String,
    /// How long the preStop hook ran (zero without one).
    pub pre_stop_took: Duration,
    /// The preStop hook's failure, if it failed (kubelet goes on with the stop).
    pub pre_stop_error: Option<String>,
    /// The timeout given to StopContainer.
    pub stop_timeout_secs: i64,
    /// How long StopContainer took.
    pub stop_took: Duration,
    /// The final CRI status: exit code, reason, finish time.
    pub status: ContainerStatus,
}

/// The record of a pod deletion.
#[derive(Debug, Clone)]
pub struct Deletion {
    pub grace_secs: i64,
    /// When the deletion was requested.
    pub requested_at: SystemTime,
    pub containers: Vec<ContainerStop>,
    /// From the request to the Pod object's removal.
    pub took: Duration,
}

impl Deletion {
    pub fn container(&self, name: &str) -> Result<&ContainerStop> {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .with_context(|| format!("no container {name} in the deletion record"))
    }
}

/// A running test pod.
pub struct Pod<'a> {
    kubelet: &'a KubeletDriver<'a>,
    pub spec: PodSpec,
    pub sandbox_id: String,
    sandbox_config: PodSandboxConfig,
    /// `/kubepods/<qos>/pod<uid>`.
    pub cgroup_parent: String,
    /// The pod's log directory (CRI `log_directory`; each container logs to `<name>/0.log`).
    pub log_dir: PathBuf,
    /// The pod IP (on the bridge in the node's network namespace).
    pub ip: String,
    /// The pod's network namespace file.
    pub netns: PathBuf,
    pub containers: Vec<RunningContainer>,
    /// The init containers (exited), removed with the pod.
    pub init_container_ids: Vec<String>,
    pub started_at: SystemTime,
    gone: bool,
}

impl Pod<'_> {
    pub fn uid(&self) -> &str {
        &self.spec.uid
    }

    pub fn container(&self, name: &str) -> Result<&RunningContainer> {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .with_context(|| format!("pod {} has no container {name}", self.spec.name))
    }

    /// The container's cgroup directory under the cgroup2 mount.
    pub fn cgroup_dir(&self, container: &str) -> Result<PathBuf> {
        let mount = termscope::attribute::cgroupfs::Mount::detect()?;
        Ok(mount.dir(&self.container(container)?.cgroup_path))
    }

    /// The container's cgroup id (what the kernel programs report).
    pub fn cgroup_id(&self, container: &str) -> Result<u64> {
        Ok(termscope::attribute::cgroupfs::cgroup_id(
            &self.cgroup_dir(container)?,
        )?)
    }

    /// The container's stdout and stderr so far, without CRI's timestamp/stream prefixes.
    pub fn logs(&self, container: &str) -> String {
        let path = self.log_dir.join(container).join("0.log");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| l.splitn(4, ' ').nth(3).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until the container's output has a line containing `text`.
    pub fn wait_for_log(&self, container: &str, text: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.logs(container).contains(text) {
            if Instant::now() >= deadline {
                bail!(
                    "container {container} did not print {text:?} within {timeout:?}; it \
                     printed:\n{}",
                    self.logs(container)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `ExecSync` in a container.
    pub fn exec(&self, container: &str, cmd: &[&str]) -> Result<v1::ExecSyncResponse> {
        let id = &self.container(container)?.id;
        self.kubelet
            .cri()
            .exec_sync(id, cmd, Duration::from_secs(30))
    }

    /// Runs `f` on a thread inside the pod's network namespace (reach the pod at 127.0.0.1).
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        in_netns(&self.netns, f)
    }

    /// Runs `f` on a new thread that stays in the pod's network namespace.
    pub fn spawn_in_netns<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Result<T>>> {
        spawn_in_netns(&self.netns, f)
    }

    /// Deletes the pod with its own grace period (see the module docs).
    pub fn delete(&mut self) -> Result<Deletion> {
        self.delete_with_grace(self.spec.termination_grace_period_seconds)
    }

    /// Deletes the pod as `kubectl delete pod --grace-period=<grace>` does.
    pub fn delete_with_grace(&mut self, grace: i64) -> Result<Deletion> {
        if self.gone {
            bail!("pod {} was already deleted", self.spec.name);
        }
        let k = self.kubelet;
        let requested_at = SystemTime::now();
        let t0 = Instant::now();
        // 1. The API server marks the pod; the endpoints controller reacts.
        if let Some(api) = k.api {
            let deadline = rfc3339(
                requested_at + Duration::from_secs(u64::try_from(grace.max(0))?),
                false,
            );
            api.update(Res::Pods, &self.spec.namespace, &self.spec.name, |o| {
                o["metadata"]["deletionTimestamp"] = json!(deadline);
                o["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            })?;
        }
        k.set_endpoint(self, Some((false, true, true)))?;

        // 2. Kill the containers, in parallel as kubelet does.
        let cri = k.cri();
        let node = (k.containerd.node_netns(), self.ip.as_str());
        let stops: Vec<Result<ContainerStop>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .containers
                .iter()
                .map(|c| s.spawn(move || kill_container(cri, node, c, grace)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("container stop panicked")))
                })
                .collect()
        });
        let stops: Vec<ContainerStop> = stops.into_iter().collect::<Result<_>>()?;

        // 3. Final status, teardown, and the object's removal.
        if let Some(api) = k.api {
            let statuses: Vec<Value> = stops
                .iter()
                .map(|s| {
                    json!({
                        "name": s.name,
                        "containerID": format!("containerd://{}", s.id),
                        "ready": false,
                        "started": false,
                        "restartCount": 0,
                        "state": { "terminated": {
                            "exitCode": s.status.exit_code,
                            "reason": s.status.reason,
                            "containerID": format!("containerd://{}", s.id),
                            "startedAt": ns_rfc3339(s.status.started_at),
                            "finishedAt": ns_rfc3339(s.status.finished_at),
                        } },
                    })
                })
                .collect();
            let failed = stops.iter().any(|s| s.status.exit_code != 0);
            api.update(Res::Pods, &self.spec.namespace, &self.spec.name, |o| {
                o["status"]["phase"] = json!(if failed { "Failed" } else { "Succeeded" });
                o["status"]["containerStatuses"] = json!(statuses);
                if let Some(conds) = o["status"]["conditions"].as_array_mut() {
                    for c in conds {
                        if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                            c["status"] = json!("False");
                        }
                    }
                }
            })?;
        }
        self.teardown()?;
        k.set_endpoint(self, None)?;
        if let Some(api) = k.api {
            api.delete(Res::Pods, &self.spec.namespace, &self.spec.name);
        }
        Ok(Deletion {
            grace_secs: grace,
            requested_at,
            containers: stops,
            took: t0.elapsed(),
        })
    }

    /// StopPodSandbox, RemoveContainer each, RemovePodSandbox, and the pod cgroup.
    fn teardown(&mut self) -> Result<()> {
        let cri = self.kubelet.cri();
        self.gone = true;
        cri.stop_pod_sandbox(&self.sandbox_id)?;
        for id in self
            .containers
            .iter()
            .map(|c| &c.id)
            .chain(&self.init_container_ids)
        {
            cri.remove_container(id)?;
        }
        cri.remove_pod_sandbox(&self.sandbox_id)?;
        containerd::remove_cgroup_everywhere(&self.cgroup_parent, true);
        Ok(())
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        if self.gone {
            return;
        }
        if let Err(e) = self.teardown() {
            eprintln!("warning: removing pod {}: {e:#}", self.spec.name);
        }
        let _ = self.kubelet.set_endpoint(self, None);
        if let Some(api) = self.kubelet.api {
            api.delete(Res::Pods, &self.spec.namespace, &self.spec.name);
        }
    }
}

/// kubelet's killContainer: the preStop hook, then StopContainer with the rest of the grace.
fn kill_container(
    cri: &Cri,
    (node, pod_ip): (&crate::NetNs, &str),
    c: &RunningContainer,
    grace: i64,
) -> Result<ContainerStop> {
    let t = Instant::now();
    let mut pre_stop_error = None;
    if grace > 0
        && let Some(hook) = &c.spec.pre_stop
    {
        let budget = Duration::from_secs(u64::try_from(grace)?);
        match hook {
            PreStop::Exec(cmd) => {
                let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
                match cri.exec_sync(&c.id, &cmd, budget) {
                    Ok(r) if r.exit_code == 0 => {}
                    Ok(r) => {
                        pre_stop_error = Some(format!(
                            "exit code {}: {}",
                            r.exit_code,
                            String::from_utf8_lossy(&r.stderr).trim()
                        ));
                    }
                    Err(e) => pre_stop_error = Some(format!("{e:#}")),
                }
            }
            PreStop::Sleep(d) => std::thread::sleep((*d).min(budget)),
            PreStop::HttpGet { port, path } => {
                if let Err(e) = http_get_hook(node, pod_ip, *port, path, budget) {
                    pre_stop_error = Some(format!("{e:#}"));
                }
            }
        }
    }
    let pre_stop_took = t.elapsed();
    let used = i64::try_from(pre_stop_took.as_secs())?;
    // kubelet: the grace left after the hook (whole seconds it took are subtracted), never
    // under 2 s; a zero grace (a forced deletion's override) kills at once.
    let stop_timeout_secs = if grace <= 0 {
        0
    } else {
        (grace - used).max(MIN_GRACE_SECS)
    };
    let t = Instant::now();
    cri.stop_container(&c.id, stop_timeout_secs)?;
    let stop_took = t.elapsed();
    let status = cri.container_status(&c.id)?;
    Ok(ContainerStop {
        name: c.name.clone(),
        id: c.id.clone(),
        pre_stop_took,
        pre_stop_error,
        stop_timeout_secs,
        stop_took,
        status,
    })
}

/// kubelet's httpGet hook: `GET path` to the pod from the node, the answer read until the
/// server closes (or `budget` runs out); an error when there was no whole answer.
fn http_get_hook(
    node: &crate::NetNs,
    pod_ip: &str,
    port: u16,
    path: &str,
    budget: Duration,
) -> Result<()> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::new(pod_ip.parse()?, port);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-lifecycle/1.31\r\nConnection: close\r\n\r\n"
    );
    node.enter(move || -> Result<()> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, budget)?;
        s.set_read_timeout(Some(budget))?;
        s.write_all(request.as_bytes())?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)?;
        if !answer.starts_with(b"HTTP/1.1 2") {
            bail!(
                "the hook got {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(40)])
            );
        }
        Ok(())
    })?
}

fn ns_rfc3339(ns: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(0));
    rfc3339(t, false)
}

/// Runs `f` on a thread inside the network namespace at `netns`.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid netns fd affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in netns panicked"))?
    })
}

/// Runs `f` on a new thread that stays in the network namespace at `netns`.
pub fn spawn_in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let file = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    Ok(std::thread::spawn(move || {
        // SAFETY: setns on a valid netns fd affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        drop(file);
        f()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_uids_classify_as_pod_uids() {
        let uid = new_pod_uid();
        assert_eq!(uid.len(), 36, "{uid}");
        let path = format!("/kubepods/burstable/pod{uid}/{}", "a".repeat(64));
        let id = termscope::attribute::cgroup_path::classify(&path);
        assert_eq!(id.pod_uid.as_deref(), Some(uid.as_str()));
        assert_ne!(new_pod_uid(), new_pod_uid());
    }

    #[test]
    fn qos_cgroup_parents_follow_the_cgroupfs_layout() {
        assert_eq!(Qos::Guaranteed.cgroup_parent("u"), "/kubepods/podu");
        assert_eq!(
            Qos::Burstable.cgroup_parent("u"),
            "/kubepods/burstable/podu"
        );
        assert_eq!(
            Qos::BestEffort.cgroup_parent("u"),
            "/kubepods/besteffort/podu"
        );
    }
}
