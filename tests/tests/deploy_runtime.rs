//! The DaemonSet of deploy/, run for real: its pod spec as `kubectl kustomize deploy/`
//! renders it — init container, security contexts (capabilities, uid/gid, no privilege
//! escalation, read-only root, seccomp profiles), volumes and mounts, env, ports, resource
//! limits — run as a pod on the tests' containerd over CRI, from the agent's image built by
//! the same code as `cargo xtask image`; next to it a workload pod that is deleted while
//! clients are connected, and an unrelated pod.
//!
//! What it checks: the init container installs the seccomp profile where the kubelet reads
//! `localhostProfile`; the agent starts under it and its startup and readiness probes pass as
//! kubelet runs them (HTTP from the node to the pod IP); the runtime applied exactly the
//! manifest's settings (the OCI spec containerd made, and the agent's `/proc/<pid>/status`:
//! capabilities, seccomp filter mode, no_new_privs); `termscope doctor` run in the container
//! attaches every probe; the agent reports the workload's termination (read inside the pod,
//! with `termscope report` through CRI exec, as `kubectl exec` does) with the clients' cut
//! connections, writes it to the forensic log on the host, and counts it in `/metrics` (read
//! from inside the pod's network namespace, and from the node as Prometheus does); the
//! unrelated pod reaches no report on any port the agent listens on; the agent stops cleanly
//! when its pod is deleted. The second test runs the same with the socket-walk component
//! (`deploy/components/socket-walk`): the host's PID namespace, two more capabilities, the
//! walk's seccomp profile; the agent walks other pods' sockets instead of keeping every
//! connection of the node.
//!
//! Where this differs from a real node, on purpose:
//! - the hostPaths under `/var/lib/kubelet`, `/var/lib` and `/var/log` are redirected into a
//!   temp dir (the kubelet stand-in's root dir, whose `seccomp/` directory is where Localhost
//!   profiles are looked up), and `/sys/fs/bpf` to a bpffs mounted for the test, so the
//!   agent's pins and state are the test's own and it leaves nothing on the machine; the
//!   mounts' container paths and modes are the manifest's;
//! - the API server stand-in speaks plain HTTP, so no service account token is mounted and no
//!   `KUBERNETES_SERVICE_HOST` is set: the agent runs standalone (reports without pod names).
//!   Kubernetes mode is covered by k8s_scenarios.rs with the agent as a process;
//! - scheduling fields (priorityClassName, tolerations) mean nothing to one node.
//!
//! A field of the rendered pod spec this test does not know fails it: a manifest change must
//! come with its translation here, rather than be silently left out.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Read,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use termscope_tests::{
    TempDir,
    containerd::Containerd,
    cri::v1,
    http::http_get,
    images, k8s_agent, k8s_test,
    kubelet::{ContainerSpec, KubeletDriver, Pod, PodSpec, Qos},
};

/// A TCP server on 0.0.0.0:8080 that keeps every connection open and exits 1 s after
/// SIGTERM: the clients' connections are closed by the kernel as it exits. (The second lets
/// an agent that walks sockets when a stop begins find them open.)
const WORKLOAD: &str = r#"
import os, signal, socket, time
def on_term(*_):
    time.sleep(1)
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(16)
print("listening", flush=True)
kept = []
while True:
    c, _ = s.accept()
    kept.append(c)
"#;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// The DaemonSet's pod template, as `kubectl kustomize deploy/` renders it, or an overlay of
/// `deploy/` with one of its components (`deploy/components/<name>`) as an operator writes it.
fn rendered_pod_template(component: Option<&str>) -> Result<Value> {
    let deploy = workspace().join("deploy");
    let overlay = component
        .map(|name| termscope_tests::component_overlay(&deploy, name))
        .transpose()?;
    let target = overlay.as_ref().map_or(deploy, |o| o.path.clone());
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&target)
        .output()
        .context("running kubectl kustomize (kubectl: `cargo xtask setup --test-deps`)")?;
    ensure!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        target.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = termscope_tests::yaml_documents(&String::from_utf8(out.stdout)?)?;
    let ds: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "DaemonSet").collect();
    ensure!(ds.len() == 1, "{} DaemonSets rendered", ds.len());
    ds[0]
        .pointer("/spec/template")
        .cloned()
        .context("the DaemonSet has no pod template")
}

/// Fails on a key of `obj` that is not in `known`.
fn only_known(obj: &Value, known: &[&str], what: &str) -> Result<()> {
    let Some(map) = obj.as_object() else {
        bail!("{what} is not an object: {obj}");
    };
    for k in map.keys() {
        ensure!(
            known.contains(&k.as_str()),
            "{what}.{k} is not translated by this test: add it to deploy_runtime.rs"
        );
    }
    Ok(())
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// "256Mi", "64M", "1Gi", "1000" -> bytes.
fn memory_bytes(q: &str) -> Result<i64> {
    let units: [(&str, i64); 6] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, mult) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return Ok(n.parse::<i64>()? * mult);
        }
    }
    Ok(q.parse()?)
}

/// "500m", "1" -> millicores.
fn cpu_millis(q: &str) -> Result<i64> {
    match q.strip_suffix('m') {
        Some(n) => Ok(n.parse()?),
        None => Ok((q.parse::<f64>()? * 1000.0).round() as i64),
    }
}

/// Where this test's "node" keeps what a kubelet keeps under /var/lib/kubelet, the node's
/// /var/log and /var/lib, and its bpffs: all under a temp dir, so that the agent's pinned maps
/// and state file are this test's alone (another test's agent, or an earlier run's, would
/// otherwise hand it their terminations, as an agent restart does) and nothing is left on the
/// machine.
struct NodeDirs {
    kubelet_root: PathBuf,
    var_log: PathBuf,
    var_lib: PathBuf,
    /// A bpffs of its own, mounted for the test (unmounted on drop).
    bpffs: PathBuf,
}

impl NodeDirs {
    fn new(dir: &TempDir) -> Result<Self> {
        let node = NodeDirs {
            kubelet_root: dir.join("kubelet"),
            var_log: dir.join("var-log"),
            var_lib: dir.join("var-lib"),
            bpffs: dir.join("bpffs"),
        };
        std::fs::create_dir_all(node.kubelet_root.join("seccomp"))?;
        std::fs::create_dir_all(&node.bpffs)?;
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&node.bpffs)
            .status()?;
        ensure!(
            status.success(),
            "mounting a bpffs at {}",
            node.bpffs.display()
        );
        Ok(node)
    }

    /// The host path a hostPath volume gets on this test node.
    fn host_path(&self, path: &str) -> PathBuf {
        if let Some(rest) = path.strip_prefix("/var/lib/kubelet/") {
            self.kubelet_root.join(rest)
        } else if let Some(rest) = path.strip_prefix("/var/log/") {
            self.var_log.join(rest)
        } else if let Some(rest) = path.strip_prefix("/var/lib/") {
            self.var_lib.join(rest)
        } else if path == "/sys/fs/bpf" {
            self.bpffs.clone()
        } else {
            PathBuf::from(path)
        }
    }

    /// What kubelet makes of a `seccompProfile`.
    fn seccomp(&self, profile: &Value) -> Result<v1::SecurityProfile> {
        only_known(profile, &["type", "localhostProfile"], "seccompProfile")?;
        let (profile_type, localhost_ref) = match profile["type"].as_str() {
            Some("RuntimeDefault") => (v1::ProfileType::RuntimeDefault, String::new()),
            Some("Unconfined") => (v1::ProfileType::Unconfined, String::new()),
            Some("Localhost") => {
                let rel = profile["localhostProfile"]
                    .as_str()
                    .context("a Localhost seccompProfile without localhostProfile")?;
                let path = self.kubelet_root.join("seccomp").join(rel);
                (
                    v1::ProfileType::Localhost,
                    path.to_string_lossy().into_owned(),
                )
            }
            other => bail!("seccompProfile type {other:?}"),
        };
        Ok(v1::SecurityProfile {
            profile_type: profile_type as i32,
            localhost_ref,
        })
    }
}

impl Drop for NodeDirs {
    fn drop(&mut self) {
        // Lazily: the agent's container may still hold it for a moment after it stopped.
        let _ = Command::new("umount").arg("-l").arg(&self.bpffs).status();
    }
}

/// An httpGet probe of the manifest, on a resolved port.
#[derive(Debug, Clone)]
struct HttpProbe {
    path: String,
    port: u16,
    period: Duration,
    failure_threshold: u32,
}

/// The rendered pod, translated as kubelet would for CRI.
struct Translated {
    spec: PodSpec,
    /// The agent container's startup and readiness probes.
    startup: HttpProbe,
    readiness: HttpProbe,
    /// The container port named `metrics`.
    metrics_port: u16,
    /// The image every container uses.
    image: String,
}

fn translate(template: &Value, node: &NodeDirs, node_name: &str) -> Result<Translated> {
    let meta = &template["metadata"];
    let pod = &template["spec"];
    only_known(
        pod,
        &[
            "serviceAccountName",
            "automountServiceAccountToken",
            "priorityClassName",
            "tolerations",
            "hostPID",
            "hostNetwork",
            "hostIPC",
            "terminationGracePeriodSeconds",
            "securityContext",
            "initContainers",
            "containers",
            "volumes",
        ],
        "spec.template.spec",
    )?;
    for host_ns in ["hostNetwork", "hostIPC"] {
        ensure!(
            pod.get(host_ns).is_none_or(|v| v == false),
            "{host_ns}: the kubelet stand-in runs pods in their own network and IPC namespaces only"
        );
    }
    let host_pid = match pod.get("hostPID") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => bail!("hostPID: {other}"),
    };
    only_known(
        &pod["securityContext"],
        &["seccompProfile"],
        "pod securityContext",
    )?;
    let sandbox_seccomp = match pod.pointer("/securityContext/seccompProfile") {
        Some(p) => Some(node.seccomp(p)?),
        None => None,
    };

    // Volumes: hostPath only; DirectoryOrCreate makes the directory as kubelet does.
    let mut volumes: BTreeMap<String, PathBuf> = BTreeMap::new();
    for v in pod["volumes"].as_array().into_iter().flatten() {
        only_known(v, &["name", "hostPath"], "volume")?;
        only_known(&v["hostPath"], &["path", "type"], "hostPath")?;
        let name = v["name"].as_str().context("volume name")?;
        let path = node.host_path(v["hostPath"]["path"].as_str().context("hostPath.path")?);
        match v["hostPath"]["type"].as_str() {
            Some("DirectoryOrCreate") => std::fs::create_dir_all(&path)?,
            Some("Directory") => ensure!(path.is_dir(), "{} is not a directory", path.display()),
            other => bail!("hostPath type {other:?}"),
        }
        volumes.insert(name.to_string(), path);
    }

    let mut image = String::new();
    let mut probes = None;
    let mut metrics_port = None;
    let mut translate_container = |c: &Value, init: bool| -> Result<ContainerSpec> {
        only_known(
            c,
            &[
                "name",
                "image",
                "imagePullPolicy",
                "command",
                "args",
                "env",
                "ports",
                "securityContext",
                "resources",
                "startupProbe",
                "livenessProbe",
                "readinessProbe",
                "volumeMounts",
            ],
            "container",
        )?;
        let name = c["name"].as_str().context("container name")?;
        let img = c["image"].as_str().context("container image")?;
        ensure!(
            image.is_empty() || image == img,
            "containers use different images: {image}, {img}"
        );
        image = img.to_string();
        let mut spec = ContainerSpec::new(name, &[]).image(img);
        spec.host_userland = false;
        spec.command = strs(&c["command"]);
        spec.args = strs(&c["args"]);
        for e in c["env"].as_array().into_iter().flatten() {
            only_known(e, &["name", "value", "valueFrom"], "env")?;
            let key = e["name"].as_str().context("env name")?;
            let value = if let Some(v) = e["value"].as_str() {
                v.to_string()
            } else {
                only_known(&e["valueFrom"], &["fieldRef"], "env.valueFrom")?;
                match e
                    .pointer("/valueFrom/fieldRef/fieldPath")
                    .and_then(Value::as_str)
                {
                    Some("spec.nodeName") => node_name.to_string(),
                    Some("metadata.namespace") => meta["namespace"]
                        .as_str()
                        .unwrap_or("termscope")
                        .to_string(),
                    other => bail!("env {key}: fieldRef {other:?}"),
                }
            };
            spec = spec.env(key, &value);
        }
        let mut named_ports = BTreeMap::new();
        for p in c["ports"].as_array().into_iter().flatten() {
            only_known(p, &["name", "containerPort", "protocol"], "port")?;
            let port = u16::try_from(p["containerPort"].as_u64().context("containerPort")?)?;
            ensure!(
                p["protocol"].as_str().unwrap_or("TCP") == "TCP",
                "non-TCP port"
            );
            if let Some(n) = p["name"].as_str() {
                named_ports.insert(n.to_string(), port);
            }
            spec = spec.port(port);
        }
        if let Some(&p) = named_ports.get("metrics") {
            metrics_port = Some(p);
        }

        let sc = &c["securityContext"];
        only_known(
            sc,
            &[
                "seccompProfile",
                "privileged",
                "allowPrivilegeEscalation",
                "readOnlyRootFilesystem",
                "runAsUser",
                "runAsGroup",
                "capabilities",
                "appArmorProfile",
            ],
            "container securityContext",
        )?;
        ensure!(sc["privileged"] != true, "{name}: privileged");
        only_known(&sc["capabilities"], &["add", "drop"], "capabilities")?;
        let seccomp = match sc.get("seccompProfile") {
            Some(p) => Some(node.seccomp(p)?),
            None => sandbox_seccomp.clone(),
        };
        // kubelet passes `appArmorProfile` on as CRI's `apparmor` (the runtime ignores it on
        // a node without AppArmor, as this one is).
        let apparmor = match sc.get("appArmorProfile") {
            None => None,
            Some(p) => {
                only_known(p, &["type"], "appArmorProfile")?;
                let profile_type = match p["type"].as_str() {
                    Some("RuntimeDefault") => v1::ProfileType::RuntimeDefault,
                    Some("Unconfined") => v1::ProfileType::Unconfined,
                    other => bail!("appArmorProfile type {other:?}"),
                };
                Some(v1::SecurityProfile {
                    profile_type: profile_type as i32,
                    localhost_ref: String::new(),
                })
            }
        };
        spec.security = Some(v1::LinuxContainerSecurityContext {
            capabilities: Some(v1::Capability {
                add_capabilities: strs(&sc["capabilities"]["add"]),
                drop_capabilities: strs(&sc["capabilities"]["drop"]),
            }),
            privileged: false,
            namespace_options: None,
            run_as_user: sc["runAsUser"]
                .as_i64()
                .map(|value| v1::Int64Value { value }),
            run_as_group: sc["runAsGroup"]
                .as_i64()
                .map(|value| v1::Int64Value { value }),
            readonly_rootfs: sc["readOnlyRootFilesystem"] == true,
            // kubelet (AddNoNewPrivileges): no_new_privs exactly when allowPrivilegeEscalation
            // is set to false, whatever the capabilities.
            no_new_privs: sc["allowPrivilegeEscalation"] == false,
            seccomp,
            apparmor,
        });

        let res = &c["resources"];
        only_known(res, &["requests", "limits"], "resources")?;
        if let Some(m) = res.pointer("/limits/memory").and_then(Value::as_str) {
            spec.memory_limit_bytes = memory_bytes(m)?;
        }
        if let Some(cpu) = res.pointer("/limits/cpu").and_then(Value::as_str) {
            spec.cpu_limit_millis = cpu_millis(cpu)?;
        }

        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            only_known(m, &["name", "mountPath", "readOnly"], "volumeMount")?;
            let vol = m["name"].as_str().context("volumeMount name")?;
            let host = volumes
                .get(vol)
                .with_context(|| format!("volumeMount of unknown volume {vol}"))?;
            let host = host.to_string_lossy();
            let path = m["mountPath"].as_str().context("mountPath")?;
            spec = spec.mount(if m["readOnly"] == true {
                images::ro_mount(&host, path)
            } else {
                images::rw_mount(&host, path)
            });
        }

        if !init {
            let probe = |key: &str| -> Result<HttpProbe> {
                let p = &c[key];
                only_known(
                    p,
                    &[
                        "httpGet",
                        "periodSeconds",
                        "failureThreshold",
                        "timeoutSeconds",
                    ],
                    key,
                )?;
                let port = match &p["httpGet"]["port"] {
                    Value::String(n) => *named_ports
                        .get(n)
                        .with_context(|| format!("{key}: no port named {n}"))?,
                    Value::Number(n) => u16::try_from(n.as_u64().context("port")?)?,
                    other => bail!("{key}: port {other}"),
                };
                Ok(HttpProbe {
                    path: p["httpGet"]["path"].as_str().unwrap_or("/").to_string(),
                    port,
                    period: Duration::from_secs(p["periodSeconds"].as_u64().unwrap_or(10)),
                    failure_threshold: u32::try_from(p["failureThreshold"].as_u64().unwrap_or(3))?,
                })
            };
            // The liveness probe is the startup probe's path (checked by deploy.rs).
            probe("livenessProbe")?;
            probes = Some((probe("startupProbe")?, probe("readinessProbe")?));
        }
        Ok(spec)
    };

    let mut init_containers = Vec::new();
    for c in pod["initContainers"].as_array().into_iter().flatten() {
        init_containers.push(translate_container(c, true)?);
    }
    let mut containers = Vec::new();
    for c in pod["containers"].as_array().into_iter().flatten() {
        containers.push(translate_container(c, false)?);
    }
    ensure!(containers.len() == 1, "{} containers", containers.len());
    let (startup, readiness) = probes.context("the agent container has no probes")?;

    let mut spec = PodSpec::new("termscope-test-agent", containers)
        .namespace(meta["namespace"].as_str().unwrap_or("termscope"))
        .grace(pod["terminationGracePeriodSeconds"].as_i64().unwrap_or(30))
        .qos(Qos::Burstable);
    for (k, v) in meta["labels"].as_object().into_iter().flatten() {
        spec = spec.label(k, v.as_str().unwrap_or(""));
    }
    spec.init_containers = init_containers;
    spec.sandbox_seccomp = sandbox_seccomp;
    spec.host_pid = host_pid;
    Ok(Translated {
        spec,
        startup,
        readiness,
        metrics_port: metrics_port.context("no container port named metrics")?,
        image,
    })
}

/// Runs an httpGet probe as kubelet does (from the node, to the pod IP) until it succeeds,
/// at most `failure_threshold` times `period`.
fn run_probe(
    containerd: &Containerd,
    pod: &Pod,
    probe: &HttpProbe,
    what: &str,
) -> Result<Duration> {
    let t = Instant::now();
    let addr: SocketAddr = format!("{}:{}", pod.ip, probe.port).parse()?;
    let budget = probe.period * probe.failure_threshold;
    loop {
        let path = probe.path.clone();
        let last = containerd
            .node_netns()
            .enter(move || http_get(addr, &path))?;
        match last {
            Ok((status, _)) if (200..400).contains(&status) => return Ok(t.elapsed()),
            other if t.elapsed() >= budget => {
                bail!(
                    "the {what} probe (GET {addr}{}) did not pass within {budget:?}: {other:?}; \
                     the agent printed:\n{}",
                    probe.path,
                    pod.logs("agent")
                );
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The listening TCP sockets (address, port) of the network namespace `pid` is in.
fn listening(pid: u32) -> Result<Vec<(String, u16)>> {
    let mut out = Vec::new();
    for file in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || f[3] != "0A" {
                continue;
            }
            let Some((addr, port)) = f[1].split_once(':') else {
                continue;
            };
            let port = u16::from_str_radix(port, 16)?;
            let addr = if addr.len() == 8 {
                let n = u32::from_str_radix(addr, 16)?;
                std::net::Ipv4Addr::from(n.to_le_bytes()).to_string()
            } else {
                format!("[{addr}]")
            };
            out.push((addr, port));
        }
    }
    Ok(out)
}

/// `/proc/<pid>/status` fields.
fn proc_status(pid: u32) -> Result<BTreeMap<String, String>> {
    Ok(std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect())
}

/// The syscalls a seccomp filter (OCI runtime-spec JSON) allows without conditions.
fn allowed_syscalls(seccomp: &Value) -> BTreeSet<String> {
    seccomp["syscalls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["action"] == "SCMP_ACT_ALLOW" && r["args"].as_array().is_none_or(Vec::is_empty)
        })
        .flat_map(|r| strs(&r["names"]))
        .collect()
}

#[test]
fn the_daemonset_runs_on_containerd_with_exactly_its_manifest_privileges() -> Result<()> {
    k8s_test!();
    daemonset_on_containerd(None)
}

/// The same with the socket-walk component (deploy/components/socket-walk): the host's PID
/// namespace, CAP_SYS_PTRACE and CAP_SYS_ADMIN, the walk's seccomp profile. The agent walks
/// every pod's sockets instead of keeping every connection of the node (`doctor` says so),
/// and the workload's connections, opened while nothing was watched, are in its report.
#[test]
fn the_daemonset_with_the_socket_walk_component_walks_other_pods_sockets() -> Result<()> {
    k8s_test!();
    daemonset_on_containerd(Some("socket-walk"))
}

/// A capability's bit (`capability.h`), for the few the manifests name.
fn cap_bit(name: &str) -> Result<u32> {
    Ok(match name {
        "CAP_SYS_PTRACE" => 19,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => bail!("capability {other} not known to this test"),
    })
}

/// The seccomp rules with conditions (arguments), as comparable text.
fn conditional_rules(seccomp: &Value) -> BTreeSet<String> {
    seccomp["syscalls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["args"].as_array().is_some_and(|a| !a.is_empty()))
        .map(|r| {
            let args: Vec<String> = r["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| format!("{}{}{}", a["index"], a["op"], a["value"]))
                .collect();
            format!("{} {:?} {}", r["action"], strs(&r["names"]), args.join(","))
        })
        .collect()
}

/// One DaemonSet at a time: a node runs one agent, and two on 2 vCPUs slow each other's
/// probes down.
static ONE_DAEMONSET: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn daemonset_on_containerd(component: Option<&str>) -> Result<()> {
    let _one = ONE_DAEMONSET
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let t0 = Instant::now();
    let walk = component == Some("socket-walk");
    let template = rendered_pod_template(component)?;
    let containerd = Containerd::shared()?;
    let dir = TempDir::new("node")?;
    let node = NodeDirs::new(&dir)?;
    let kubelet = KubeletDriver::new(containerd, None)?;
    let tr = translate(&template, &node, &kubelet.node_name)?;

    // The agent's image, built as `cargo xtask image` builds it, from the agent binary the
    // tests use, named as the manifest asks for it.
    let binary = k8s_agent::agent_binary()?;
    let mut image = termscope_oci::agent_image(&binary, &tr.image, env!("CARGO_PKG_VERSION"))?;
    // The debug binary is ~200 MB: gzip would take most of the test's time.
    image.uncompressed_layer = true;
    images::import(&image, containerd)?;
    eprintln!(
        "[deploy] image {} imported after {:?}",
        image.name,
        t0.elapsed()
    );

    // The agent's pod: the init container installs the profile, then the agent starts.
    let agent = kubelet.run_pod(tr.spec.clone())?;
    let asked = template
        .pointer("/spec/containers/0/securityContext/seccompProfile/localhostProfile")
        .and_then(Value::as_str)
        .context("the agent container has no localhostProfile")?;
    let profile_path = node.kubelet_root.join("seccomp").join(asked);
    let installed = std::fs::read_to_string(&profile_path).with_context(|| {
        format!(
            "the init container did not write {}",
            profile_path.display()
        )
    })?;
    let want_profile = if walk {
        termscope::seccomp::WALK_PROFILE
    } else {
        termscope::seccomp::PROFILE
    };
    assert_eq!(installed, want_profile, "{}", profile_path.display());
    let took = run_probe(containerd, &agent, &tr.startup, "startup")?;
    run_probe(containerd, &agent, &tr.readiness, "readiness")?;
    eprintln!("[deploy] agent ready {took:?} after its container started");

    // What the runtime applied is the manifest's, and nothing more.
    let ac = agent.container("agent")?;
    let info = kubelet.cri().container_info(&ac.id)?;
    let oci = &info["runtimeSpec"];
    let caps = &oci["process"]["capabilities"];
    let manifest_caps: BTreeSet<String> =
        strs(&template["spec"]["containers"][0]["securityContext"]["capabilities"]["add"])
            .into_iter()
            .map(|c| format!("CAP_{c}"))
            .collect();
    let mut want_caps: BTreeSet<String> = ["CAP_BPF".into(), "CAP_PERFMON".into()].into();
    if walk {
        want_caps.extend(["CAP_SYS_PTRACE".into(), "CAP_SYS_ADMIN".into()]);
    }
    assert_eq!(manifest_caps, want_caps, "the manifest's capabilities");
    for set in ["bounding", "effective", "permitted"] {
        let got: BTreeSet<String> = strs(&caps[set]).into_iter().collect();
        assert_eq!(got, want_caps, "{set} capabilities");
    }
    let cap_mask = want_caps
        .iter()
        .map(|c| cap_bit(c).map(|b| 1u64 << b))
        .sum::<Result<u64>>()?;
    assert!(strs(&caps["ambient"]).is_empty());
    assert_eq!(oci["process"]["noNewPrivileges"], true);
    assert_eq!(oci["process"]["user"]["uid"], 0);
    assert_eq!(oci["process"]["user"]["gid"], 0);
    assert_eq!(oci["root"]["readonly"], true);
    let profile: Value = serde_json::from_str(want_profile)?;
    let applied = &oci["linux"]["seccomp"];
    assert_eq!(applied["defaultAction"], profile["defaultAction"]);
    assert_eq!(
        allowed_syscalls(applied),
        allowed_syscalls(&profile),
        "containerd applied the profile file"
    );
    assert_eq!(
        conditional_rules(applied),
        conditional_rules(&profile),
        "containerd applied the profile's conditional rules"
    );
    assert!(
        !allowed_syscalls(applied).contains("setns"),
        "setns is allowed only with conditions, if at all"
    );
    let mounts: BTreeMap<String, (String, bool)> = oci["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["destination"].as_str().unwrap_or("").to_string(),
                (
                    m["source"].as_str().unwrap_or("").to_string(),
                    strs(&m["options"]).iter().any(|o| o == "ro"),
                ),
            )
        })
        .collect();
    for m in &ac.spec.mounts {
        assert_eq!(
            mounts.get(&m.container_path),
            Some(&(m.host_path.clone(), m.readonly)),
            "mount {}",
            m.container_path
        );
    }
    let status = proc_status(ac.pid)?;
    assert_eq!(
        status["CapEff"],
        format!("{cap_mask:016x}"),
        "{want_caps:?} only"
    );
    assert_eq!(status["CapBnd"], format!("{cap_mask:016x}"));
    // hostPID: the agent in the node's PID namespace (this test's), or in one of its own.
    let pid_ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid"));
    assert_eq!(
        pid_ns(&ac.pid.to_string())? == pid_ns("self")?,
        walk,
        "the agent's PID namespace"
    );
    assert_eq!(status["Seccomp"], "2", "a seccomp filter is on");
    assert_eq!(status["NoNewPrivs"], "1");
    // The memory limit reached the container's cgroup.
    assert!(
        oci.pointer("/linux/resources/memory/limit")
            .and_then(Value::as_i64)
            .is_some_and(|l| l == ac.spec.memory_limit_bytes && l > 0)
    );

    // `kubectl exec ... -- /termscope doctor` under the same restrictions: every probe.
    let doctor = agent.exec("agent", &["/termscope", "doctor"])?;
    let doctor_out = String::from_utf8_lossy(&doctor.stdout).into_owned();
    ensure!(
        doctor.exit_code == 0,
        "doctor failed in the agent's container:\n{doctor_out}{}",
        String::from_utf8_lossy(&doctor.stderr)
    );
    let probes_ok = doctor_out
        .lines()
        .filter(|l| l.starts_with("ok") && l.contains("probe "))
        .count();
    assert_eq!(probes_ok, termscope::probes::PROBES.len(), "{doctor_out}");
    // Without the component the agent cannot walk other pods' sockets and keeps every
    // connection instead; with it, it walks them (setns allowed by its profile).
    let walk_line = doctor_out
        .lines()
        .find(|l| l.contains("feature: socket walk"))
        .context("doctor says nothing of the socket walk")?;
    assert_eq!(
        walk_line.starts_with("ok"),
        walk,
        "{walk_line}\nagent log:\n{}",
        agent.logs("agent")
    );

    // The workload: a server with two clients connected from the node, then deleted.
    let mut workload = kubelet.run_pod(
        PodSpec::new(
            "web",
            vec![ContainerSpec::new("web", &["python3", "-c", WORKLOAD]).port(8080)],
        )
        .grace(10),
    )?;
    workload.wait_for_log("web", "listening", Duration::from_secs(20))?;
    let web_addr: SocketAddr = format!("{}:8080", workload.ip).parse()?;
    let clients = containerd.node_netns().spawn(move || {
        let mut socks = Vec::new();
        for _ in 0..2 {
            socks.push(TcpStream::connect_timeout(
                &web_addr,
                Duration::from_secs(5),
            )?);
        }
        Ok(socks)
    })?;
    let clients = clients
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    let client_ports: BTreeSet<u16> = clients
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()?;
    std::thread::sleep(Duration::from_millis(300));
    let web_id = workload.container("web")?.id.clone();
    let deletion = workload.delete()?;
    ensure!(deletion.container("web")?.status.exit_code == 0);
    for mut s in clients {
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [0u8; 16];
        // Ground truth: each client saw its connection end (EOF or a reset).
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "the server sent nothing");
    }

    // The report, read inside the agent's pod as `kubectl exec` does. The reports are served
    // on a loopback address in the pod: the one the manifest's env names, else --listen's.
    let env: BTreeMap<&str, &str> = ac
        .spec
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let reports_addr = env
        .values()
        .filter_map(|v| v.parse::<SocketAddr>().ok())
        .find(|a| a.ip().is_loopback())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], tr.metrics_port)));
    let url = format!("http://{reports_addr}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let report: Value = loop {
        let out = agent.exec(
            "agent",
            &[
                "/termscope",
                "report",
                "--agent",
                &url,
                "--container",
                &web_id,
                "--json",
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.exit_code == 0
            && let Some(line) = text.lines().find(|l| l.contains(&web_id))
        {
            break serde_json::from_str(line)?;
        }
        if Instant::now() >= deadline {
            bail!(
                "no report for {web_id} from {url} within 30 s (exit {}): {text}{}\nagent log:\n{}",
                out.exit_code,
                String::from_utf8_lossy(&out.stderr),
                agent.logs("agent")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(report["subject"]["container_id"], web_id.as_str());
    assert_eq!(
        report["subject"]["pod_uid"],
        workload.uid(),
        "the cgroup path was resolved through the host's cgroup mount"
    );
    let cut_ports: BTreeSet<u16> = report["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["verdict"] != "completed")
        .filter_map(|c| c["remote"].as_str()?.rsplit_once(':')?.1.parse().ok())
        .collect();
    assert_eq!(
        cut_ports, client_ports,
        "the two clients' connections: {report}"
    );
    // Both accepted by the workload: inbound, and established when they were, whether the
    // kernel kept them from their opening (no walk) or the walk found them open when the
    // stop began (and their time in the establishment log).
    for c in report["connections"].as_array().into_iter().flatten() {
        assert_eq!(c["direction"], "inbound", "{c}");
        assert!(c["established_at"].is_string(), "{c}");
    }
    // The running agent, too, walked (or kept every connection, without the component).
    let log = agent.logs("agent");
    assert_eq!(
        log.contains("every connection is kept from its opening"),
        !walk,
        "agent log:\n{log}"
    );
    assert!(
        !log.contains("the walk missed a network namespace"),
        "agent log:\n{log}"
    );

    // The forensic log, on the host through the hostPath mount (read-only root elsewhere).
    let log = node.host_path("/var/log/termscope/terminations.jsonl");
    let logged =
        std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    assert!(
        logged.contains(&web_id),
        "the report is in {}",
        log.display()
    );

    // /metrics from inside the pod's network namespace, and from the node (Prometheus).
    let metrics_port = tr.metrics_port;
    let (status, inside) = agent.in_netns(move || {
        http_get(SocketAddr::from(([127, 0, 0, 1], metrics_port)), "/metrics")
    })??;
    ensure!(status == 200, "/metrics in the pod: {status}");
    let terminations: f64 = inside
        .lines()
        .filter(|l| l.starts_with("termscope_terminations_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(
        terminations >= 1.0,
        "termscope_terminations_total:\n{inside}"
    );
    let pod_metrics: SocketAddr = format!("{}:{metrics_port}", agent.ip).parse()?;
    let (status, _) = containerd
        .node_netns()
        .enter(move || http_get(pod_metrics, "/metrics"))??;
    ensure!(status == 200, "/metrics from the node: {status}");

    // An unrelated pod reaches no report, on any port the agent listens on.
    let other = kubelet.run_pod(PodSpec::new(
        "curious",
        vec![ContainerSpec::new("curious", &["sleep", "infinity"])],
    ))?;
    let ports = listening(ac.pid)?;
    ensure!(!ports.is_empty(), "the agent listens on nothing");
    let agent_ip = agent.ip.clone();
    let attempts = other.in_netns(move || {
        ports
            .iter()
            .map(|(addr, port)| {
                let target: SocketAddr = format!("{agent_ip}:{port}").parse()?;
                let mut seen = Vec::new();
                for path in ["/v1/terminations", "/v1/pod-terminations"] {
                    seen.push((path, http_get(target, path).ok()));
                }
                Ok(((addr.clone(), *port), seen))
            })
            .collect::<Result<Vec<_>>>()
    })??;
    for ((addr, port), seen) in &attempts {
        for (path, answer) in seen {
            if let Some((status, body)) = answer {
                assert!(
                    *status != 200 && !body.contains(&web_id),
                    "an unrelated pod got {path} from the agent's listener {addr}:{port}: \
                     {status} {body}"
                );
            }
        }
    }
    eprintln!("[deploy] unrelated pod refused reports on {attempts:?}");

    // The agent stops cleanly when its pod goes.
    let mut agent = agent;
    let stopped = agent.delete()?;
    let agent_exit = stopped.container("agent")?;
    ensure!(
        agent_exit.status.exit_code == 0,
        "the agent exited with {}; it printed:\n{}",
        agent_exit.status.exit_code,
        agent.logs("agent")
    );
    eprintln!("[deploy] done in {:?}", t0.elapsed());
    Ok(())
}

/// The system calls the agent makes that containerd's default profile (for a container
/// without capabilities) does not allow: measured by running the agent under strace
/// (deploy/README.md, "The seccomp profile"), and proven sufficient by the test above.
const AGENT_EXTRAS: &[&str] = &["bpf", "perf_event_open"];

/// The seccomp filter containerd makes for RuntimeDefault, for a container without any
/// capability: read from the OCI spec of such a container on the tests' containerd.
fn runtime_default(kubelet: &KubeletDriver) -> Result<Value> {
    let mut c = ContainerSpec::new("probe", &["sleep", "infinity"]);
    c.security = Some(v1::LinuxContainerSecurityContext {
        capabilities: Some(v1::Capability {
            add_capabilities: Vec::new(),
            drop_capabilities: vec!["ALL".into()],
        }),
        seccomp: Some(v1::SecurityProfile {
            profile_type: v1::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        }),
        ..Default::default()
    });
    let pod = kubelet.run_pod(PodSpec::new("runtime-default", vec![c]))?;
    let info = kubelet.cri().container_info(&pod.container("probe")?.id)?;
    let seccomp = info
        .pointer("/runtimeSpec/linux/seccomp")
        .cloned()
        .context("RuntimeDefault gave the container no seccomp filter")?;
    Ok(seccomp)
}

/// deploy/seccomp/termscope-agent.json is containerd's RuntimeDefault filter for a container
/// without capabilities, rule for rule, plus one rule allowing [`AGENT_EXTRAS`].
/// `TERMSCOPE_WRITE_SECCOMP_PROFILE=1` writes the file so instead of comparing.
#[test]
fn the_seccomp_profile_is_the_runtime_default_plus_what_the_agent_needs() -> Result<()> {
    k8s_test!();
    let containerd = Containerd::shared()?;
    let kubelet = KubeletDriver::new(containerd, None)?;
    let mut want = runtime_default(&kubelet)?;
    let default_allowed = allowed_syscalls(&want);
    for extra in AGENT_EXTRAS {
        assert!(
            !default_allowed.contains(*extra),
            "the runtime default already allows {extra}: drop it from AGENT_EXTRAS"
        );
    }
    want["syscalls"]
        .as_array_mut()
        .context("the runtime default has no syscalls")?
        .push(serde_json::json!({
            "names": AGENT_EXTRAS,
            "action": "SCMP_ACT_ALLOW",
        }));
    let path = workspace().join("deploy/seccomp/termscope-agent.json");
    if std::env::var("TERMSCOPE_WRITE_SECCOMP_PROFILE").is_ok_and(|v| v == "1") {
        std::fs::write(&path, serde_json::to_string_pretty(&want)? + "\n")?;
        eprintln!("wrote {}", path.display());
        return Ok(());
    }
    let have: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    assert!(
        have == want,
        "{} is not containerd's RuntimeDefault plus {AGENT_EXTRAS:?} (containerd {}); \
         regenerate it: TERMSCOPE_WRITE_SECCOMP_PROFILE=1 cargo test -p termscope-tests \
         --test deploy_runtime seccomp_profile",
        path.display(),
        kubelet.cri().version()?.runtime_version
    );
    Ok(())
}
