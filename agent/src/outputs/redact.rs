//! What reports do not show by default: a preStop hook's command line (it can carry tokens
//! and passwords), and an httpGet hook's query string. Applied to every report before it is
//! written, served or posted as an Event; `--show-prestop-commands` turns it off.
//!
//! The program of an exec hook stays (`/bin/sh`, `nginx`): it tells what kind of hook it is.

use crate::terminations::{
    kube::{KubeFacts, PodTerminationReport},
    report::{HookKind, TerminationReport},
};

/// What replaces the arguments of an exec hook.
pub const REDACTED: &str = "[arguments redacted; --show-prestop-commands shows them]";

/// Redacts the hook in `facts`; returns what was replaced and by what.
fn facts(facts: &mut KubeFacts) -> Option<(String, String)> {
    let hook = facts.pre_stop.as_mut()?;
    let redacted = match hook.kind {
        HookKind::Exec => {
            let program = hook.detail.split_whitespace().next().unwrap_or_default();
            if program == hook.detail.trim() {
                return None;
            }
            format!("{program} {REDACTED}")
        }
        HookKind::HttpGet => {
            let (path, query) = hook.detail.split_once('?')?;
            if query.is_empty() {
                return None;
            }
            format!("{path}?[query redacted]")
        }
        _ => return None,
    };
    let original = std::mem::replace(&mut hook.detail, redacted.clone());
    Some((original, redacted))
}

/// Replaces `original` with `redacted` in sentences that quote it.
fn texts<'a>(texts: impl Iterator<Item = &'a mut String>, original: &str, redacted: &str) {
    for t in texts {
        if t.contains(original) {
            *t = t.replace(original, redacted);
        }
    }
}

/// Redacts a container report.
pub fn report(r: &mut TerminationReport) {
    let Some((original, redacted)) = r.kubernetes.as_mut().and_then(|k| facts(k)) else {
        return;
    };
    texts(r.summary.iter_mut(), &original, &redacted);
    texts(
        r.timeline.iter_mut().map(|s| &mut s.detail),
        &original,
        &redacted,
    );
}

/// Redacts a pod report and its containers' reports.
pub fn pod_report(p: &mut PodTerminationReport) {
    let mut replaced = Vec::new();
    replaced.extend(facts(&mut p.kubernetes));
    for c in &mut p.containers {
        if let Some(k) = c.kubernetes.as_mut()
            && let Some(hook) = &k.pre_stop
        {
            let before = hook.detail.clone();
            report(c);
            if let Some(after) = c.kubernetes.as_ref().and_then(|k| k.pre_stop.as_ref())
                && after.detail != before
            {
                replaced.push((before, after.detail.clone()));
            }
        }
    }
    for (original, redacted) in &replaced {
        texts(p.summary.iter_mut(), original, redacted);
        texts(
            p.timeline.iter_mut().map(|s| &mut s.detail),
            original,
            redacted,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{outputs::fixtures, terminations::kube::PreStopHook};

    fn with_hook(kind: HookKind, detail: &str) -> TerminationReport {
        let mut r = fixtures::no_handler();
        let mut k: KubeFacts = serde_json::from_value(serde_json::json!({
            "pod": "web-1", "pod_uid": "u", "namespace": "shop", "workload": "web",
            "workload_kind": "Deployment", "grace_period_seconds": 30,
            "late_after_stop_signal": {"accepted": 0, "refused": 0},
        }))
        .expect("facts");
        k.pre_stop = Some(PreStopHook {
            kind,
            detail: detail.into(),
            sleep_seconds: None,
        });
        r.kubernetes = Some(Box::new(k));
        r.summary.push(format!(
            "3 connection(s) arrived; the preStop hook is `{detail}`: ..."
        ));
        r
    }

    fn detail(r: &TerminationReport) -> &str {
        r.kubernetes
            .as_ref()
            .and_then(|k| k.pre_stop.as_ref())
            .map(|h| h.detail.as_str())
            .unwrap_or_default()
    }

    #[test]
    fn exec_arguments_and_query_strings_are_redacted_everywhere() {
        let secret = "/bin/sh -c curl -H 'Authorization: Bearer s3cr3t' http://x/drain";
        let mut r = with_hook(HookKind::Exec, secret);
        report(&mut r);
        assert_eq!(detail(&r), format!("/bin/sh {REDACTED}"));
        let json = serde_json::to_string(&r).expect("json");
        assert!(!json.contains("s3cr3t"), "{json}");
        assert!(
            r.summary
                .iter()
                .any(|s| s.contains("`/bin/sh [arguments redacted")),
            "{:?}",
            r.summary
        );

        let mut r = with_hook(HookKind::HttpGet, ":8080/drain?token=s3cr3t");
        report(&mut r);
        assert_eq!(detail(&r), ":8080/drain?[query redacted]");
        assert!(!serde_json::to_string(&r).expect("json").contains("s3cr3t"));
    }

    /// A pod report: its own facts, its summary (what the Kubernetes Event quotes) and its
    /// containers' reports.
    #[test]
    fn pod_reports_are_redacted_with_their_containers() {
        let secret = "/bin/sh -c curl -u admin:hunter2 http://x/drain";
        let container = with_hook(HookKind::Exec, secret);
        let facts = container.kubernetes.as_deref().cloned().expect("facts");
        let mut pod: PodTerminationReport = serde_json::from_value(serde_json::json!({
            "schema": "termscope/pod-termination/v1", "id": "p1", "node": "n", "pod": "web-1",
            "pod_uid": "u", "namespace": "shop", "workload": "web", "workload_kind": "Deployment",
            "outcome": "cut", "flags": ["cut"],
            "summary": [format!("the preStop hook is `{secret}`: too short")],
            "counts": {"completed": 0, "reset_by_app": 0, "closed_by_exit": 1, "reset_by_peer": 0,
                       "refused": 0, "open": 0, "accepted_late": 0, "cut": 1},
            "kubernetes": facts,
            "timeline": [],
            "containers": [container],
        }))
        .expect("pod report");
        pod_report(&mut pod);
        let json = serde_json::to_string(&pod).expect("json");
        assert!(!json.contains("hunter2"), "{json}");
        assert_eq!(
            pod.summary[0],
            format!("the preStop hook is `/bin/sh {REDACTED}`: too short")
        );
        assert_eq!(detail(&pod.containers[0]), format!("/bin/sh {REDACTED}"));
    }

    #[test]
    fn hooks_without_secrets_stay() {
        for (kind, d) in [
            (HookKind::Exec, "/usr/sbin/nginx"),
            (HookKind::HttpGet, ":8080/drain"),
            (HookKind::Sleep, "5 s"),
        ] {
            let mut r = with_hook(kind, d);
            report(&mut r);
            assert_eq!(detail(&r), d);
        }
    }
}
