//! deploy/: the manifests render with kustomize and validate against the Kubernetes schemas;
//! the DaemonSet keeps to its least privileges; RBAC, Service, ServiceMonitor and
//! NetworkPolicy fit together; the alert rules pass promtool's checks and unit tests; the
//! PrometheusRule holds exactly the rules file's groups; the dashboard and the alerts use only
//! documented metrics and labels.
//!
//! Tools: kubectl (kustomize), python3 with kubernetes-validate (PyPI, which brings PyYAML:
//! the YAML is read through it) and promtool; `cargo xtask setup --test-deps` installs them.
//! Where one is missing the test skips, saying so, except with CI=true or
//! TERMSCOPE_REQUIRE_KERNEL_TESTS=1, where that is a failure (as for the kernel tests).
//!
//! ServiceMonitor and PrometheusRule are custom resources whose schemas kubernetes-validate
//! does not have: it warns and skips them (checked: exactly those two). They are checked here
//! structurally instead: the fields used, the selectors against the Service, and the
//! PrometheusRule's groups against deploy/alerts/rules.yaml, which promtool checks.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use termscope_tests::TempDir;

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

fn deploy() -> PathBuf {
    root().join("deploy")
}

/// Whether a missing tool must fail the test (CI), rather than skip it.
fn skips_are_failures() -> bool {
    std::env::var("TERMSCOPE_REQUIRE_KERNEL_TESTS").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Runs `cmd`; `None` (after saying why) when its program is not installed and skipping is
/// allowed; a failure when it is not.
fn run_tool(cmd: &mut Command, install: &str) -> Result<Option<Output>> {
    match cmd.output() {
        Ok(out) => Ok(Some(out)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let why = format!(
                "{:?} is not installed ({install}; `cargo xtask setup --test-deps` installs it)",
                cmd.get_program()
            );
            assert!(
                !skips_are_failures(),
                "{why} (CI=true or TERMSCOPE_REQUIRE_KERNEL_TESTS=1: not skipping)"
            );
            eprintln!("SKIPPED: {why}");
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("running {cmd:?}")),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether python3 has kubernetes-validate (and so PyYAML); skips or fails like `run_tool`.
fn have_kubernetes_validate() -> Result<bool> {
    let Some(out) = run_tool(
        Command::new("python3").args(["-m", "kubernetes_validate", "--version"]),
        "Debian package python3",
    )?
    else {
        return Ok(false);
    };
    if out.status.success() {
        return Ok(true);
    }
    let why = format!(
        "python3 has no kubernetes_validate module ({}); `cargo xtask setup --test-deps` \
         installs kubernetes-validate==1.37.0 with pip",
        text(&out).trim()
    );
    assert!(
        !skips_are_failures(),
        "{why} (CI=true or TERMSCOPE_REQUIRE_KERNEL_TESTS=1: not skipping)"
    );
    eprintln!("SKIPPED: {why}");
    Ok(false)
}

/// Every document of a YAML stream, as JSON, read with PyYAML (which kubernetes-validate
/// brings).
use termscope_tests::yaml_documents;

fn yaml_file(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = yaml_documents(&text)?;
    ensure!(
        docs.len() == 1,
        "{}: {} documents",
        path.display(),
        docs.len()
    );
    Ok(docs.remove(0))
}

/// `kubectl kustomize deploy/`: the YAML and its objects; `None` when a tool is missing.
fn rendered() -> Result<Option<(String, Vec<Value>)>> {
    if !have_kubernetes_validate()? {
        return Ok(None);
    }
    let Some(out) = run_tool(
        Command::new("kubectl").arg("kustomize").arg(deploy()),
        "kubectl; Debian package kubernetes-client",
    )?
    else {
        return Ok(None);
    };
    ensure!(
        out.status.success(),
        "kubectl kustomize deploy/ failed: {}",
        text(&out)
    );
    let yaml = String::from_utf8(out.stdout)?;
    let docs = yaml_documents(&yaml)?;
    Ok(Some((yaml, docs)))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The one object of `kind` (and the name `termscope...`).
fn one<'a>(docs: &'a [Value], kind: &str) -> Result<&'a Value> {
    let found: Vec<&Value> = docs.iter().filter(|d| str_at(d, "/kind") == kind).collect();
    ensure!(found.len() == 1, "{} objects of kind {kind}", found.len());
    Ok(found[0])
}

/// `labels` holds every `selector` label.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

#[test]
fn manifests_render_with_kustomize_and_validate_against_kubernetes_schemas() -> Result<()> {
    let Some((yaml, docs)) = rendered()? else {
        return Ok(());
    };
    let kinds: BTreeSet<&str> = docs.iter().map(|d| str_at(d, "/kind")).collect();
    let want: BTreeSet<&str> = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Service",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
    ]
    .into();
    assert_eq!(kinds, want);
    assert_eq!(docs.len(), want.len(), "one object of each kind");
    for d in &docs {
        let ns = str_at(d, "/metadata/namespace");
        match str_at(d, "/kind") {
            "Namespace" | "ClusterRole" | "ClusterRoleBinding" => assert_eq!(ns, ""),
            _ => assert_eq!(ns, "termscope", "{}", str_at(d, "/kind")),
        }
        assert_eq!(
            str_at(d, "/metadata/labels/app.kubernetes.io~1name"),
            "termscope",
            "{} has the app label",
            str_at(d, "/kind")
        );
    }

    let dir = TempDir::new("deploy")?;
    let file = dir.write("rendered.yaml", &yaml)?;
    // The newest schemas kubernetes-validate ships, and the oldest: the manifests use nothing
    // newer than Kubernetes 1.25.
    for version in ["1.37.0", "1.25.0"] {
        let out = Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "-k", version])
            .arg(&file)
            .output()?;
        let report = text(&out);
        println!("kubernetes-validate --strict -k {version}:\n{report}");
        ensure!(
            out.status.success(),
            "the manifests do not validate against Kubernetes {version}:\n{report}"
        );
        let passed = report
            .lines()
            .filter(|l| l.starts_with("INFO") && l.contains(" passed for resource "))
            .count();
        assert_eq!(passed, 7, "the 7 core objects pass: {report}");
        let unknown: BTreeSet<String> = report
            .lines()
            .filter(|l| l.starts_with("WARN"))
            .map(|l| {
                l.split("for kind ")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .unwrap_or(l)
                    .to_string()
            })
            .collect();
        let crds: BTreeSet<String> = ["PrometheusRule".into(), "ServiceMonitor".into()].into();
        assert_eq!(unknown, crds, "only the two custom resources lack a schema");
    }
    Ok(())
}

#[test]
fn the_daemonset_has_the_least_privileges_that_work() -> Result<()> {
    let Some((_, docs)) = rendered()? else {
        return Ok(());
    };
    let ds = one(&docs, "DaemonSet")?;
    let pod = ds.pointer("/spec/template/spec").context("pod spec")?;
    for host in ["hostPID", "hostNetwork", "hostIPC"] {
        assert_ne!(pod.get(host), Some(&Value::Bool(true)), "{host}");
    }
    assert_eq!(str_at(pod, "/priorityClassName"), "system-node-critical");
    assert_eq!(
        pod.pointer("/tolerations"),
        Some(&serde_json::json!([{"operator": "Exists"}])),
        "tolerates every taint"
    );
    assert_eq!(
        pod.pointer("/terminationGracePeriodSeconds"),
        Some(&Value::from(30))
    );
    // The sandbox and the init container under the runtime's default profile, the agent
    // under its own, which the init container installs (deploy_runtime.rs runs it all).
    assert_eq!(
        str_at(pod, "/securityContext/seccompProfile/type"),
        "RuntimeDefault"
    );
    let inits = pod
        .get("initContainers")
        .and_then(Value::as_array)
        .context("initContainers")?;
    assert_eq!(inits.len(), 1);
    let init = &inits[0];
    assert_eq!(str_at(init, "/image"), "termscope:0.1.0");
    assert_eq!(
        init.get("command"),
        Some(&serde_json::json!([
            "/termscope",
            "seccomp-profile",
            "--install",
            "/seccomp/agent.json"
        ]))
    );
    assert_eq!(
        init.get("securityContext"),
        Some(&serde_json::json!({
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsUser": 0,
            "runAsGroup": 0,
            "capabilities": {"drop": ["ALL"]},
        })),
        "the init container: no capability at all"
    );
    assert_eq!(
        init.get("volumeMounts"),
        Some(&serde_json::json!([{"name": "seccomp", "mountPath": "/seccomp"}]))
    );
    let containers = pod
        .get("containers")
        .and_then(Value::as_array)
        .context("containers")?;
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    // The image after kustomize's `images:`.
    assert_eq!(str_at(c, "/image"), "termscope:0.1.0");
    let sc = c.get("securityContext").context("securityContext")?;
    assert_eq!(
        sc.get("seccompProfile"),
        Some(&serde_json::json!({"type": "Localhost", "localhostProfile": "termscope/agent.json"}))
    );
    assert_eq!(sc.get("privileged"), Some(&Value::Bool(false)));
    assert_eq!(
        sc.get("allowPrivilegeEscalation"),
        Some(&Value::Bool(false))
    );
    assert_eq!(sc.get("readOnlyRootFilesystem"), Some(&Value::Bool(true)));
    assert_eq!(
        sc.pointer("/capabilities"),
        Some(&serde_json::json!({"drop": ["ALL"], "add": ["BPF", "PERFMON"]})),
        "drop ALL, add only CAP_BPF and CAP_PERFMON"
    );

    let env: BTreeMap<&str, &Value> = c
        .get("env")
        .and_then(Value::as_array)
        .context("env")?
        .iter()
        .map(|e| (str_at(e, "/name"), e))
        .collect();
    assert_eq!(
        str_at(env["NODE_NAME"], "/valueFrom/fieldRef/fieldPath"),
        "spec.nodeName"
    );
    assert_eq!(str_at(env["TERMSCOPE_LISTEN"], "/value"), "0.0.0.0:9469");

    let port = c.pointer("/ports/0").context("the container's port")?;
    assert_eq!(str_at(port, "/name"), "metrics");
    assert_eq!(port.get("containerPort"), Some(&Value::from(9469)));
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let p = c.get(probe).with_context(|| probe.to_string())?;
        assert_eq!(str_at(p, "/httpGet/path"), path, "{probe}");
        assert_eq!(str_at(p, "/httpGet/port"), "metrics", "{probe}");
    }
    for what in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                c.pointer(&format!("/resources/{what}/{res}")).is_some(),
                "resources.{what}.{res}"
            );
        }
    }

    // Mounts: the host's BTF, cgroup hierarchy and tracefs read-only where the agent looks for
    // them, the log, the pinned maps (bpffs) and the state file writable, and nothing else.
    let volumes: BTreeMap<&str, &str> = pod
        .get("volumes")
        .and_then(Value::as_array)
        .context("volumes")?
        .iter()
        .map(|v| (str_at(v, "/name"), str_at(v, "/hostPath/path")))
        .collect();
    let mounts: BTreeSet<(String, String, bool)> = c
        .get("volumeMounts")
        .and_then(Value::as_array)
        .context("volumeMounts")?
        .iter()
        .map(|m| {
            (
                volumes
                    .get(str_at(m, "/name"))
                    .copied()
                    .unwrap_or("?")
                    .to_string(),
                str_at(m, "/mountPath").to_string(),
                m.get("readOnly") == Some(&Value::Bool(true)),
            )
        })
        .collect();
    let want: BTreeSet<(String, String, bool)> = [
        ("/sys/kernel/btf", "/sys/kernel/btf", true),
        ("/sys/fs/cgroup", "/sys/fs/cgroup", true),
        ("/sys/kernel/tracing", "/sys/kernel/tracing", true),
        ("/var/log/termscope", "/var/log/termscope", false),
        ("/sys/fs/bpf", "/sys/fs/bpf", false),
        ("/var/lib/termscope", "/var/lib/termscope", false),
    ]
    .iter()
    .map(|(h, m, ro)| (h.to_string(), m.to_string(), *ro))
    .collect();
    assert_eq!(mounts, want);
    assert_eq!(
        volumes.get("seccomp").copied(),
        Some("/var/lib/kubelet/seccomp/termscope"),
        "the init container's volume: termscope's own profile directory"
    );
    assert_eq!(volumes.len(), 7);

    // Pod Security: the namespace admits the hostPath volumes and the two capabilities.
    let ns = one(&docs, "Namespace")?;
    assert_eq!(
        str_at(ns, "/metadata/labels/pod-security.kubernetes.io~1enforce"),
        "privileged"
    );
    Ok(())
}

#[test]
fn rbac_grants_exactly_the_calls_the_agent_makes() -> Result<()> {
    let Some((_, docs)) = rendered()? else {
        return Ok(());
    };
    let role = one(&docs, "ClusterRole")?;
    let mut rules = BTreeSet::new();
    for rule in role
        .get("rules")
        .and_then(Value::as_array)
        .context("rules")?
    {
        let list = |f: &str| -> Vec<String> {
            rule.get(f)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        for group in list("apiGroups") {
            for resource in list("resources") {
                for verb in list("verbs") {
                    rules.insert(format!("{group}/{resource}:{verb}"));
                }
            }
        }
    }
    // agent/src/kube/: watchers (list + watch) on pods of this node and on endpoint slices;
    // Events created; a Deployment's metadata read by name.
    let want: BTreeSet<String> = [
        "/pods:list",
        "/pods:watch",
        "discovery.k8s.io/endpointslices:list",
        "discovery.k8s.io/endpointslices:watch",
        "/events:create",
        "apps/deployments:get",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(rules, want);

    let binding = one(&docs, "ClusterRoleBinding")?;
    assert_eq!(str_at(binding, "/roleRef/kind"), "ClusterRole");
    assert_eq!(
        str_at(binding, "/roleRef/name"),
        str_at(role, "/metadata/name")
    );
    let sa = one(&docs, "ServiceAccount")?;
    assert_eq!(
        binding.pointer("/subjects"),
        Some(&serde_json::json!([{
            "kind": "ServiceAccount",
            "name": str_at(sa, "/metadata/name"),
            "namespace": str_at(sa, "/metadata/namespace"),
        }]))
    );
    let ds = one(&docs, "DaemonSet")?;
    assert_eq!(
        str_at(ds, "/spec/template/spec/serviceAccountName"),
        str_at(sa, "/metadata/name")
    );
    Ok(())
}

#[test]
fn service_servicemonitor_and_networkpolicy_reach_the_agent() -> Result<()> {
    let Some((_, docs)) = rendered()? else {
        return Ok(());
    };
    let ds = one(&docs, "DaemonSet")?;
    let pod_labels = ds
        .pointer("/spec/template/metadata/labels")
        .context("pod labels")?;
    assert!(selects(
        ds.pointer("/spec/selector/matchLabels")
            .context("selector")?,
        pod_labels
    ));

    let svc = one(&docs, "Service")?;
    assert!(selects(
        svc.pointer("/spec/selector").context("selector")?,
        pod_labels
    ));
    let port = svc.pointer("/spec/ports/0").context("port")?;
    assert_eq!(str_at(port, "/name"), "metrics");
    assert_eq!(port.get("port"), Some(&Value::from(9469)));
    assert_eq!(str_at(port, "/targetPort"), "metrics");

    // ServiceMonitor (monitoring.coreos.com/v1): no schema in kubernetes-validate, so its
    // fields are checked here against the operator's API.
    let sm = one(&docs, "ServiceMonitor")?;
    assert_eq!(str_at(sm, "/apiVersion"), "monitoring.coreos.com/v1");
    let spec = sm.get("spec").context("spec")?;
    let keys: BTreeSet<&str> = spec
        .as_object()
        .context("spec")?
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["endpoints", "namespaceSelector", "selector"].into());
    assert!(selects(
        spec.pointer("/selector/matchLabels").context("selector")?,
        svc.pointer("/metadata/labels").context("labels")?
    ));
    assert_eq!(
        spec.pointer("/namespaceSelector/matchNames"),
        Some(&serde_json::json!([str_at(svc, "/metadata/namespace")]))
    );
    let endpoints = spec
        .get("endpoints")
        .and_then(Value::as_array)
        .context("endpoints")?;
    assert_eq!(endpoints.len(), 1);
    let ep = &endpoints[0];
    let allowed: BTreeSet<&str> = [
        "port",
        "path",
        "interval",
        "scrapeTimeout",
        "honorLabels",
        "relabelings",
    ]
    .into();
    for key in ep.as_object().context("endpoint")?.keys() {
        assert!(allowed.contains(key.as_str()), "endpoint field {key}");
    }
    assert_eq!(str_at(ep, "/port"), "metrics");
    assert_eq!(str_at(ep, "/path"), "/metrics");
    let duration = |s: &str| {
        !s.is_empty()
            && s.trim_end_matches(['s', 'm', 'h'])
                .chars()
                .all(|c| c.is_ascii_digit())
    };
    assert!(duration(str_at(ep, "/interval")));
    assert!(duration(str_at(ep, "/scrapeTimeout")));
    assert_eq!(ep.get("honorLabels"), Some(&Value::Bool(true)));
    let actions: BTreeSet<&str> = ["replace", "labeldrop"].into();
    for r in ep
        .get("relabelings")
        .and_then(Value::as_array)
        .context("relabelings")?
    {
        for key in r.as_object().context("relabeling")?.keys() {
            assert!(
                [
                    "sourceLabels",
                    "targetLabel",
                    "regex",
                    "action",
                    "replacement"
                ]
                .contains(&key.as_str()),
                "relabeling field {key}"
            );
        }
        assert!(actions.contains(str_at(r, "/action")), "{r}");
    }

    let np = one(&docs, "NetworkPolicy")?;
    assert!(selects(
        np.pointer("/spec/podSelector/matchLabels")
            .context("podSelector")?,
        pod_labels
    ));
    assert_eq!(
        np.pointer("/spec/policyTypes"),
        Some(&serde_json::json!(["Ingress"]))
    );
    assert_eq!(
        np.pointer("/spec/ingress/0/ports"),
        Some(&serde_json::json!([{"port": 9469, "protocol": "TCP"}]))
    );
    assert_eq!(
        np.pointer("/spec/ingress/0/from"),
        Some(&serde_json::json!([{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }])),
        "Prometheus pods of the monitoring namespace only (one peer: namespace AND pod)"
    );
    assert_eq!(
        np.pointer("/spec/ingress")
            .and_then(Value::as_array)
            .map(Vec::len),
        Some(1)
    );

    // The pod IP serves metrics only; the reports listen on the pod's loopback, not exposed.
    let container = ds
        .pointer("/spec/template/spec/containers/0")
        .context("container")?;
    let env: BTreeMap<&str, &str> = container
        .get("env")
        .and_then(Value::as_array)
        .context("env")?
        .iter()
        .map(|e| (str_at(e, "/name"), str_at(e, "/value")))
        .collect();
    assert_eq!(env.get("TERMSCOPE_LISTEN"), Some(&"0.0.0.0:9469"));
    let reports: std::net::SocketAddr = env
        .get("TERMSCOPE_REPORTS_LISTEN")
        .context("TERMSCOPE_REPORTS_LISTEN")?
        .parse()?;
    assert!(reports.ip().is_loopback(), "{reports}");
    assert_eq!(
        ds.pointer("/spec/template/spec/hostNetwork"),
        Some(&Value::Bool(false)),
        "the pod's loopback is its own"
    );
    let ports: Vec<u64> = container
        .get("ports")
        .and_then(Value::as_array)
        .context("ports")?
        .iter()
        .filter_map(|p| p.get("containerPort").and_then(Value::as_u64))
        .collect();
    assert_eq!(ports, [9469], "only the metrics port is declared");
    Ok(())
}

/// The optional component: the dashboard as a ConfigMap for Grafana's sidecar.
#[test]
fn the_grafana_component_ships_the_dashboard_for_the_sidecar() -> Result<()> {
    if !have_kubernetes_validate()? {
        return Ok(());
    }
    // An overlay as a user writes one; inside the repository (kustomize wants relative
    // paths), in the target directory.
    let dir = root().join(format!("target/kustomize-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources: [../../deploy]\ncomponents: [../../deploy/grafana]\n",
    )?;
    let out = run_tool(
        Command::new("kubectl").arg("kustomize").arg(&dir),
        "kubectl; Debian package kubernetes-client",
    );
    let _ = std::fs::remove_dir_all(&dir);
    let Some(out) = out? else {
        return Ok(());
    };
    ensure!(out.status.success(), "kubectl kustomize: {}", text(&out));
    let docs = yaml_documents(&String::from_utf8(out.stdout)?)?;
    let cm = one(&docs, "ConfigMap")?;
    assert_eq!(str_at(cm, "/metadata/name"), "termscope-grafana-dashboard");
    assert_eq!(str_at(cm, "/metadata/namespace"), "termscope");
    assert_eq!(str_at(cm, "/metadata/labels/grafana_dashboard"), "1");
    let data = cm
        .pointer("/data")
        .and_then(Value::as_object)
        .context("data")?;
    assert_eq!(data.len(), 1);
    let shipped: Value = serde_json::from_str(
        data.get("termscope-dashboard.json")
            .and_then(Value::as_str)
            .context("the dashboard's key")?,
    )?;
    assert_eq!(shipped, dashboard()?, "the dashboard, verbatim");
    // Everything else is the plain deploy/.
    let Some((_, plain)) = rendered()? else {
        return Ok(());
    };
    assert_eq!(docs.len(), plain.len() + 1);
    Ok(())
}

/// promtool: `None` (skipped) when it is missing.
fn promtool(args: &[&str]) -> Result<Option<Output>> {
    run_tool(
        Command::new("promtool").args(args).current_dir(deploy()),
        "Debian package prometheus",
    )
}

#[test]
fn the_prometheus_rule_holds_the_rules_file_groups() -> Result<()> {
    let Some((_, docs)) = rendered()? else {
        return Ok(());
    };
    let rule = one(&docs, "PrometheusRule")?;
    assert_eq!(str_at(rule, "/apiVersion"), "monitoring.coreos.com/v1");
    let spec = rule.get("spec").context("spec")?;
    assert_eq!(
        spec.as_object().map(|m| m.len()),
        Some(1),
        "spec: groups only"
    );
    let file = yaml_file(&deploy().join("alerts/rules.yaml"))?;
    assert_eq!(
        spec.get("groups"),
        file.get("groups"),
        "the PrometheusRule's groups are deploy/alerts/rules.yaml's: run `cargo xtask gen-alerts`"
    );
    // And they are valid rules, as the operator hands them to Prometheus.
    let dir = TempDir::new("deploy")?;
    let path = dir.write("from-prometheus-rule.json", serde_json::to_vec(spec)?)?;
    let path = path.to_string_lossy();
    let Some(out) = promtool(&["check", "rules", &path])? else {
        return Ok(());
    };
    ensure!(out.status.success(), "{}", text(&out));
    Ok(())
}

/// The alerting rules of deploy/alerts/rules.yaml.
fn alert_rules() -> Result<Vec<Value>> {
    let file = yaml_file(&deploy().join("alerts/rules.yaml"))?;
    let mut alerts = Vec::new();
    for group in file
        .get("groups")
        .and_then(Value::as_array)
        .context("groups")?
    {
        for rule in group
            .get("rules")
            .and_then(Value::as_array)
            .context("rules")?
        {
            if rule.get("alert").is_some() {
                alerts.push(rule.clone());
            }
        }
    }
    Ok(alerts)
}

/// The project's repository, from the workspace's Cargo.toml.
fn repository() -> Result<String> {
    let toml = std::fs::read_to_string(root().join("Cargo.toml"))?;
    toml.lines()
        .find_map(|l| {
            l.strip_prefix("repository = ")
                .map(|v| v.trim().trim_matches('"').to_string())
        })
        .context("no repository in Cargo.toml")
}

#[test]
fn alert_rules_pass_promtool_and_every_alert_is_tested_and_documented() -> Result<()> {
    if !have_kubernetes_validate()? {
        return Ok(());
    }
    let Some(out) = promtool(&["check", "rules", "alerts/rules.yaml"])? else {
        return Ok(());
    };
    println!("{}", text(&out));
    ensure!(out.status.success(), "promtool check rules: {}", text(&out));
    let Some(out) = promtool(&["test", "rules", "alerts/tests.yaml"])? else {
        return Ok(());
    };
    println!("{}", text(&out));
    ensure!(out.status.success(), "promtool test rules: {}", text(&out));

    let alerts = alert_rules()?;
    let names: Vec<&str> = alerts.iter().map(|a| str_at(a, "/alert")).collect();
    let want = [
        "TermscopeConnectionsCutOnShutdown",
        "TermscopeSigkillEscalations",
        "TermscopeGracePeriodNearlyUsed",
        "TermscopeLateTrafficAfterStopSignal",
        "TermscopeNoSigtermHandler",
        "TermscopeAgentLosingEvents",
        "TermscopeAgentDown",
        "TermscopeProbesMissing",
    ];
    assert_eq!(names, want);

    // Each alert: a case where it fires and one where it stays silent.
    let tests = yaml_file(&deploy().join("alerts/tests.yaml"))?;
    let mut fires = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for t in tests
        .get("tests")
        .and_then(Value::as_array)
        .context("tests")?
    {
        for case in t
            .get("alert_rule_test")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = str_at(case, "/alertname").to_string();
            match case.get("exp_alerts").and_then(Value::as_array) {
                Some(a) if !a.is_empty() => fires.insert(name),
                _ => silent.insert(name),
            };
        }
    }
    for name in want {
        assert!(fires.contains(name), "no test where {name} fires");
        assert!(silent.contains(name), "no test where {name} stays silent");
    }

    // Each alert: summary, description, and a runbook section in docs/alerts.md.
    let runbooks =
        std::fs::read_to_string(root().join("docs/alerts.md")).context("reading docs/alerts.md")?;
    // The anchors GitHub gives docs/alerts.md's headings: every link to a section resolves.
    let anchors: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## ").or_else(|| l.strip_prefix("# ")))
        .map(github_anchor)
        .collect();
    for link in runbooks.split("](#").skip(1) {
        let anchor = link.split(')').next().unwrap_or("");
        assert!(
            anchors.contains(anchor),
            "docs/alerts.md links to #{anchor}, no such heading"
        );
    }
    let base = format!("{}/blob/main/docs/alerts.md#", repository()?);
    for a in &alerts {
        let name = str_at(a, "/alert");
        assert!(!str_at(a, "/annotations/summary").is_empty(), "{name}");
        assert!(!str_at(a, "/annotations/description").is_empty(), "{name}");
        assert!(!str_at(a, "/labels/severity").is_empty(), "{name}");
        assert_eq!(
            str_at(a, "/annotations/runbook_url"),
            format!("{base}{}", name.to_lowercase()),
            "{name}"
        );
        assert!(
            runbooks.lines().any(|l| l == format!("## {name}")),
            "docs/alerts.md has no `## {name}` section"
        );
        assert!(
            name.starts_with("Termscope"),
            "{name}: prefixed, not to collide"
        );
        let url = str_at(a, "/annotations/runbook_url");
        let (file, anchor) = url
            .strip_prefix(&format!("{}/blob/main/", repository()?))
            .and_then(|rest| rest.split_once('#'))
            .context(url.to_string())?;
        assert!(
            root().join(file).is_file(),
            "{url}: no {file} in the repository"
        );
        assert!(anchors.contains(anchor), "{url}: no such heading");
    }
    Ok(())
}

/// The anchor GitHub gives a Markdown heading: lower case, spaces to `-`, punctuation but
/// `-` and `_` dropped.
fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Identifiers in a PromQL expression or text: `[A-Za-z_:][A-Za-z0-9_:]*`, with what follows
/// each (to tell metric names, functions and labels apart).
fn identifiers(expr: &str) -> Vec<(String, usize)> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < b.len() {
        let c = b[i];
        if let Some(q) = quote {
            if c == b'\\' {
                i += 2;
                continue;
            }
            if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if c == b'"' || c == b'\'' || c == b'`' {
            quote = Some(c);
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            // A duration such as 15m or 1h follows a digit: not an identifier.
            if start > 0 && b[start - 1].is_ascii_digit() {
                continue;
            }
            out.push((expr[start..i].to_string(), i));
            continue;
        }
        i += 1;
    }
    out
}

/// The label names an expression uses: in `by (...)`, `without (...)`, `on (...)`,
/// `ignoring (...)`, `group_left (...)`, and the matchers' names in `{...}`.
fn labels_used(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ids = identifiers(expr);
    let b = expr.as_bytes();
    let next_char = |mut at: usize| {
        while at < b.len() && b[at] == b' ' {
            at += 1;
        }
        b.get(at).copied()
    };
    for (k, (id, end)) in ids.iter().enumerate() {
        let grouping = matches!(
            id.as_str(),
            "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
        );
        if grouping && next_char(*end) == Some(b'(') {
            let close = expr[*end..].find(')').map_or(expr.len(), |p| end + p);
            for (label, e) in &ids[k + 1..] {
                if *e > close {
                    break;
                }
                out.insert(label.clone());
            }
        }
        // A matcher: inside braces, followed by =, !=, =~ or !~.
        let open = expr[..*end].rfind('{');
        let shut = expr[..*end].rfind('}');
        let in_braces = open.is_some_and(|o| shut.is_none_or(|s| s < o));
        if in_braces && matches!(next_char(*end), Some(b'=' | b'!')) {
            out.insert(id.clone());
        }
    }
    out
}

/// Metric names (histograms without their `_bucket` suffix) and label names documented in
/// docs/metrics.md, with the target labels Prometheus adds (deploy/README.md).
fn documented() -> Result<(BTreeSet<String>, BTreeSet<String>)> {
    let doc = std::fs::read_to_string(root().join("docs/metrics.md"))?;
    let mut metrics = BTreeSet::new();
    let mut labels: BTreeSet<String> = ["job", "instance", "node", "le"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut section = "";
    // The column of the metric tables that lists labels, from their header row.
    let mut labels_column = None;
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = if h.starts_with("Labels") {
                "labels"
            } else if h.contains("metrics") || h.contains("health") {
                "metrics"
            } else {
                ""
            };
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 3 {
            continue;
        }
        if cells[1] == "name" || cells[1] == "label" {
            labels_column = cells.iter().position(|c| *c == "labels");
            continue;
        }
        let ticked = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        };
        match section {
            "labels" => labels.extend(ticked(cells[1])),
            "metrics" => {
                metrics.extend(
                    ticked(cells[1])
                        .into_iter()
                        .filter(|m| m.starts_with("termscope_")),
                );
                if let Some(cell) = labels_column.and_then(|i| cells.get(i)) {
                    labels.extend(ticked(cell));
                }
            }
            _ => {}
        }
    }
    ensure!(metrics.len() >= 20, "docs/metrics.md: only {metrics:?}");
    Ok((metrics, labels))
}

fn check_expression(
    what: &str,
    expr: &str,
    metrics: &BTreeSet<String>,
    labels: &BTreeSet<String>,
) -> Result<()> {
    for (id, _) in identifiers(expr) {
        if id.starts_with("termscope_") {
            let base = id.strip_suffix("_bucket").unwrap_or(&id);
            ensure!(
                metrics.contains(base),
                "{what}: {id} is not a metric docs/metrics.md documents"
            );
        }
    }
    for l in labels_used(expr) {
        ensure!(
            labels.contains(&l),
            "{what}: label {l} is not in docs/metrics.md ({expr})"
        );
    }
    Ok(())
}

/// The dashboard's JSON.
fn dashboard() -> Result<Value> {
    let path = deploy().join("grafana/termscope-dashboard.json");
    let text = std::fs::read_to_string(&path)?;
    Ok(serde_json::from_str(&text)?)
}

#[test]
fn the_dashboard_and_the_alerts_use_only_documented_metrics_and_labels() -> Result<()> {
    if !have_kubernetes_validate()? {
        return Ok(());
    }
    let (metrics, labels) = documented()?;
    // The checker itself.
    assert_eq!(
        labels_used(r#"sum by (a, b) (x{c="1", d=~"2"} offset 5m) / on (e) y{f!="z"}"#),
        ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert!(check_expression("self-test", "termscope_nope_total", &metrics, &labels).is_err());

    let d = dashboard()?;
    let mut used = BTreeSet::new();
    for p in d
        .get("panels")
        .and_then(Value::as_array)
        .context("panels")?
    {
        for t in p
            .get("targets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let expr = str_at(t, "/expr");
            let what = format!("panel {:?} {}", str_at(p, "/title"), str_at(t, "/refId"));
            check_expression(&what, expr, &metrics, &labels)?;
            // Legends name labels too.
            for part in str_at(t, "/legendFormat").split("{{").skip(1) {
                let label = part.split("}}").next().unwrap_or("").trim();
                ensure!(labels.contains(label), "{what}: legend label {label}");
            }
            used.extend(
                identifiers(expr)
                    .into_iter()
                    .map(|(id, _)| id)
                    .filter(|id| id.starts_with("termscope_")),
            );
        }
    }
    for v in d
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .context("templating")?
    {
        let q = str_at(v, "/definition");
        check_expression(
            &format!("variable {}", str_at(v, "/name")),
            q,
            &metrics,
            &labels,
        )?;
    }
    for a in alert_rules()? {
        check_expression(str_at(&a, "/alert"), str_at(&a, "/expr"), &metrics, &labels)?;
    }
    // Every per-termination metric shows on the dashboard.
    for m in [
        "termscope_terminations_total",
        "termscope_connections_cut_total",
        "termscope_connections_reset_by_peer_total",
        "termscope_shutdown_duration_seconds_bucket",
        "termscope_stop_signals_total",
        "termscope_late_connections_total",
        "termscope_late_traffic_delay_seconds_bucket",
        "termscope_grace_period_used_ratio_bucket",
        "termscope_prestop_duration_seconds_bucket",
        "termscope_sigkill_escalations_total",
        "termscope_events_lost_total",
        "termscope_probes_attached",
        "termscope_probes_known",
        "termscope_tracked_connections",
        "termscope_terminations_in_progress",
    ] {
        assert!(used.contains(m), "the dashboard does not show {m}");
    }
    Ok(())
}

#[test]
fn the_dashboard_is_importable() -> Result<()> {
    let d = dashboard()?;
    assert!(
        d.get("schemaVersion")
            .and_then(Value::as_u64)
            .is_some_and(|v| v >= 39)
    );
    assert!(!str_at(&d, "/uid").is_empty());
    assert!(!str_at(&d, "/title").is_empty());
    assert_eq!(
        d.get("id"),
        Some(&Value::Null),
        "no id: Grafana assigns one"
    );
    let vars: BTreeMap<&str, &Value> = d
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .context("templating")?
        .iter()
        .map(|v| (str_at(v, "/name"), v))
        .collect();
    let ds = vars.get("datasource").context("a datasource variable")?;
    assert_eq!(str_at(ds, "/type"), "datasource");
    assert_eq!(str_at(ds, "/query"), "prometheus");
    // Cluster (an external label where Prometheus has one, e.g. in Thanos or Mimir) and node
    // first: the other variables and every panel are narrowed by them.
    let order: Vec<&str> = d
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .context("templating")?
        .iter()
        .map(|v| str_at(v, "/name"))
        .collect();
    assert_eq!(
        order,
        ["datasource", "cluster", "node", "namespace", "workload"]
    );
    for (name, query) in [
        ("cluster", "label_values(termscope_probes_known, cluster)"),
        (
            "node",
            r#"label_values(termscope_probes_known{cluster=~"$cluster"}, node)"#,
        ),
        (
            "namespace",
            r#"label_values(termscope_terminations_total{cluster=~"$cluster", node=~"$node"}, namespace)"#,
        ),
        (
            "workload",
            r#"label_values(termscope_terminations_total{cluster=~"$cluster", node=~"$node", namespace=~"$namespace"}, workload)"#,
        ),
    ] {
        let v = vars.get(name).with_context(|| format!("variable {name}"))?;
        assert_eq!(str_at(v, "/type"), "query");
        assert_eq!(str_at(v, "/definition"), query);
        assert_eq!(str_at(v, "/query/query"), query);
        assert_eq!(str_at(v, "/datasource/uid"), "${datasource}");
        assert_eq!(str_at(v, "/allValue"), ".*");
    }
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for p in d
        .get("panels")
        .and_then(Value::as_array)
        .context("panels")?
    {
        let id = p.get("id").and_then(Value::as_u64).context("panel id")?;
        assert!(ids.insert(id), "panel id {id} twice");
        assert!(
            titles.insert(str_at(p, "/title").to_string()),
            "title {} twice",
            str_at(p, "/title")
        );
        for k in ["h", "w", "x", "y"] {
            assert!(p.pointer(&format!("/gridPos/{k}")).is_some(), "{p}");
        }
        if str_at(p, "/type") == "row" {
            continue;
        }
        assert_eq!(
            str_at(p, "/datasource/uid"),
            "${datasource}",
            "{}",
            p["title"]
        );
        let targets = p
            .get("targets")
            .and_then(Value::as_array)
            .context("targets")?;
        assert!(!targets.is_empty());
        for t in targets {
            assert!(!str_at(t, "/expr").is_empty());
            // Every query follows the cluster and node variables.
            let expr = str_at(t, "/expr");
            for selector in [r#"cluster=~"$cluster""#, r#"node=~"$node""#] {
                assert!(expr.contains(selector), "{}: {expr}", p["title"]);
            }
            assert!(!str_at(t, "/refId").is_empty());
            assert_eq!(str_at(t, "/datasource/uid"), "${datasource}");
        }
    }
    Ok(())
}

/// `deploy/` with one of its components, in an overlay as an operator would write it,
/// rendered (the YAML and its objects); `None` where kubectl is missing.
fn rendered_with_component(component: &str) -> Result<Option<(String, Vec<Value>)>> {
    let dir = termscope_tests::component_overlay(&deploy(), component)?;
    let Some(out) = run_tool(
        Command::new("kubectl").arg("kustomize").arg(&dir.path),
        "kubectl; Debian package kubernetes-client",
    )?
    else {
        return Ok(None);
    };
    ensure!(out.status.success(), "kustomize: {}", text(&out));
    let yaml = String::from_utf8(out.stdout)?;
    let docs = yaml_documents(&yaml)?;
    Ok(Some((yaml, docs)))
}

/// The optional memlock component (kernels before 5.11) adds exactly CAP_SYS_RESOURCE to the
/// agent, in an overlay as an operator would write it; nothing else changes.
#[test]
fn memlock_component_adds_only_sys_resource() -> Result<()> {
    let Some((_, base)) = rendered()? else {
        return Ok(());
    };
    let Some((_, docs)) = rendered_with_component("memlock")? else {
        return Ok(());
    };
    let caps = |docs: &[Value]| -> Result<Vec<String>> {
        let ds = one(docs, "DaemonSet")?;
        Ok(ds
            .pointer("/spec/template/spec/containers/0/securityContext/capabilities/add")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    };
    assert_eq!(caps(&base)?, ["BPF", "PERFMON"]);
    assert_eq!(caps(&docs)?, ["BPF", "PERFMON", "SYS_RESOURCE"]);
    assert_eq!(docs.len(), base.len());
    Ok(())
}

/// The optional socket-walk component grants exactly what walking other pods' sockets takes
/// — the host's PID namespace, CAP_SYS_PTRACE and CAP_SYS_ADMIN, the walk's seccomp profile
/// (installed by the init container), AppArmor unconfined — and changes nothing else: the
/// rendered objects are the base's with those fields, and no other, changed.
#[test]
fn socket_walk_component_grants_what_the_walk_needs_and_nothing_else() -> Result<()> {
    let Some((_, base)) = rendered()? else {
        return Ok(());
    };
    let Some((yaml, docs)) = rendered_with_component("socket-walk")? else {
        return Ok(());
    };
    // Valid from Kubernetes 1.30 (the container's `appArmorProfile`), refused before it.
    let dir = TempDir::new("socket-walk-rendered")?;
    let file = dir.write("rendered.yaml", &yaml)?;
    for (version, valid) in [("1.37.0", true), ("1.30.0", true), ("1.29.0", false)] {
        let out = Command::new("python3")
            .args([
                "-m",
                "kubernetes_validate",
                "--strict",
                "--quiet",
                "-k",
                version,
            ])
            .arg(&file)
            .output()?;
        let report = text(&out);
        ensure!(
            out.status.success() == valid,
            "kubernetes-validate --strict -k {version}: expected {}:\n{report}",
            if valid { "valid" } else { "refused" }
        );
        if !valid {
            ensure!(report.contains("appArmorProfile"), "{report}");
        }
    }
    ensure!(
        docs.len() == base.len(),
        "{} objects, {}",
        docs.len(),
        base.len()
    );
    let mut want = base.clone();
    let ds = want
        .iter_mut()
        .find(|d| d["kind"] == "DaemonSet")
        .context("no DaemonSet")?;
    let pod = ds
        .pointer_mut("/spec/template/spec")
        .context("no pod spec")?;
    pod["hostPID"] = Value::Bool(true);
    pod["initContainers"][0]["command"] = serde_json::json!([
        "/termscope",
        "seccomp-profile",
        "--walk",
        "--install",
        "/seccomp/agent-walk.json"
    ]);
    let sc = &mut pod["containers"][0]["securityContext"];
    sc["capabilities"]["add"] = serde_json::json!(["BPF", "PERFMON", "SYS_PTRACE", "SYS_ADMIN"]);
    sc["seccompProfile"]["localhostProfile"] = "termscope/agent-walk.json".into();
    sc["appArmorProfile"] = serde_json::json!({ "type": "Unconfined" });
    for (got, want) in docs.iter().zip(&want) {
        assert_eq!(got, want, "{} {}", got["kind"], got["metadata"]["name"]);
    }
    // The profile the init container installs is the one the agent container asks for.
    let ds = one(&docs, "DaemonSet")?;
    let asked = ds
        .pointer("/spec/template/spec/containers/0/securityContext/seccompProfile/localhostProfile")
        .and_then(Value::as_str)
        .context("no localhostProfile")?;
    let installed = ds
        .pointer("/spec/template/spec/initContainers/0/command/4")
        .and_then(Value::as_str)
        .context("no install path")?;
    assert_eq!(
        Path::new(asked).file_name(),
        Path::new(installed).file_name()
    );
    Ok(())
}
