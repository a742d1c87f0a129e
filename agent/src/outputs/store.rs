//! The most recent termination reports, in memory, newest first: what the HTTP API serves.
//! [`Filter`] is also what `termscope report` applies to a log file.

use std::{collections::VecDeque, sync::Arc};

use crate::{
    clock,
    terminations::report::{Outcome, TerminationReport},
};

/// Reports kept by default.
pub const DEFAULT_CAPACITY: usize = 1000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error(
        "invalid time {0:?}: use RFC 3339 (2026-11-21T05:00:00Z, 2026-11-21T06:00:00+01:00) \
         or a duration ago (90s, 15m, 1h30m, 7d)"
    )]
    Time(String),
    #[error("invalid outcome {0:?}: one of {1}")]
    Outcome(String, String),
}

/// Bounded store of recent reports, newest first (in the order they were finished).
#[derive(Debug)]
pub struct Store {
    capacity: usize,
    reports: VecDeque<Arc<TerminationReport>>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new(DEFAULT_CAPACITY)
    }
}

impl Store {
    /// A store keeping at most `capacity` reports (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Store {
            capacity,
            reports: VecDeque::with_capacity(capacity.min(DEFAULT_CAPACITY)),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.reports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    /// Adds a report as the newest; the oldest goes when the store is full.
    pub fn push(&mut self, report: TerminationReport) {
        if self.reports.len() == self.capacity {
            self.reports.pop_back();
        }
        self.reports.push_front(Arc::new(report));
    }

    /// The report with this id.
    pub fn get(&self, id: &str) -> Option<Arc<TerminationReport>> {
        self.reports.iter().find(|r| r.id == id).cloned()
    }

    /// The reports `filter` matches, newest first, at most `filter.limit`.
    pub fn query(&self, filter: &Filter) -> Vec<Arc<TerminationReport>> {
        self.reports
            .iter()
            .filter(|r| filter.matches(r))
            .take(filter.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect()
    }
}

/// Which reports to show. Text fields match case-insensitive substrings; times bound when
/// the termination began.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// The container label, the full container id or the subject's label.
    pub container: Option<String>,
    /// The pod's name or UID.
    pub pod: Option<String>,
    /// The namespace (Kubernetes).
    pub namespace: Option<String>,
    /// Exactly this outcome.
    pub outcome: Option<Outcome>,
    /// The workload or the systemd unit.
    pub workload: Option<String>,
    /// Exactly this report id.
    pub id: Option<String>,
    /// Began at or after (Unix-epoch ns).
    pub since_ns: Option<u64>,
    /// Began at or before (Unix-epoch ns).
    pub until_ns: Option<u64>,
    /// At most this many (the newest).
    pub limit: Option<usize>,
}

impl Filter {
    pub fn matches(&self, r: &TerminationReport) -> bool {
        let s = &r.subject;
        let has = |want: &Option<String>, fields: &[Option<&str>]| match want {
            None => true,
            Some(w) => {
                let w = w.to_ascii_lowercase();
                fields
                    .iter()
                    .flatten()
                    .any(|f| f.to_ascii_lowercase().contains(&w))
            }
        };
        if !has(
            &self.container,
            &[
                Some(&s.container),
                s.container_id.as_deref(),
                Some(&s.label),
            ],
        ) || !has(&self.pod, &[s.pod_uid.as_deref(), s.pod.as_deref()])
            || !has(&self.namespace, &[Some(&s.namespace)])
            || self.outcome.is_some_and(|o| o != r.outcome)
            || !has(&self.workload, &[Some(&s.workload), s.unit.as_deref()])
        {
            return false;
        }
        if self.id.as_ref().is_some_and(|id| *id != r.id) {
            return false;
        }
        if self.since_ns.is_some() || self.until_ns.is_some() {
            let started = r.started_unix_ns();
            if self.since_ns.is_some_and(|t| started < t)
                || self.until_ns.is_some_and(|t| started > t)
            {
                return false;
            }
        }
        true
    }
}

/// The outcomes a filter can name.
pub const OUTCOMES: [Outcome; 6] = [
    Outcome::Graceful,
    Outcome::Cut,
    Outcome::Killed,
    Outcome::NoHandler,
    Outcome::Ignored,
    Outcome::Survived,
];

/// Parses an outcome name (`killed`, `no_handler`, ...; `-` may stand for `_`).
pub fn parse_outcome(s: &str) -> Result<Outcome, StoreError> {
    let name = s.trim().to_ascii_lowercase().replace('-', "_");
    serde_json::from_value(serde_json::Value::String(name))
        .map_err(|_| StoreError::Outcome(s.to_string(), OUTCOMES.map(Outcome::as_str).join(", ")))
}

/// Parses `since`/`until`: RFC 3339 with `Z` or an offset (`2026-11-21T05:00:00Z`,
/// `2026-11-21T06:00:00+01:00`, fractions allowed), or a duration before `now_unix_ns`, one
/// or more number-unit pairs (`90s`, `15m`, `1h30m`, `2d12h`, `500ms`; units ms, s, m, h, d).
pub fn parse_time(s: &str, now_unix_ns: u64) -> Result<u64, StoreError> {
    let s = s.trim();
    let bad = || StoreError::Time(s.to_string());
    if s.contains('T') || s.contains('t') {
        return parse_rfc3339_offset(s).ok_or_else(bad);
    }
    let ago = parse_duration_ns(s).ok_or_else(bad)?;
    Ok(now_unix_ns.saturating_sub(ago))
}

/// RFC 3339 with `Z` or a numeric offset, to Unix-epoch ns.
pub fn parse_rfc3339_offset(s: &str) -> Option<u64> {
    let upper = s.to_ascii_uppercase();
    if let Some(t) = clock::parse_rfc3339(&upper) {
        return Some(t);
    }
    // `...[+-]HH:MM`
    let (local, sign, off) = match upper.len().checked_sub(6) {
        Some(i) if upper.is_char_boundary(i) => {
            let (local, off) = upper.split_at(i);
            let sign: i64 = match off.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return None,
            };
            (local, sign, &off[1..])
        }
        _ => return None,
    };
    let (hh, mm) = off.split_once(':')?;
    let (hh, mm): (i64, i64) = (hh.parse().ok()?, mm.parse().ok()?);
    if !(0..=23).contains(&hh) || !(0..=59).contains(&mm) {
        return None;
    }
    let t = i128::from(clock::parse_rfc3339(&format!("{local}Z"))?);
    // Local time = UTC + offset.
    let utc = t - i128::from(sign * (hh * 3600 + mm * 60)) * 1_000_000_000;
    u64::try_from(utc).ok()
}

/// A compound duration (`1h30m`, `90s`, `500ms`) in ns; `None` when malformed or beyond
/// u64 (about 584 years).
pub fn parse_duration_ns(s: &str) -> Option<u64> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ns: u64 = match &rest[..unit_len] {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "d" => 86_400 * 1_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(n.checked_mul(unit_ns)?)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outputs::fixtures;

    fn report(id: &str, started_at: &str) -> TerminationReport {
        let mut r = fixtures::graceful();
        r.id = id.into();
        r.started_at = started_at.parse().expect("a test time");
        r
    }

    #[test]
    fn bounded_newest_first_and_found_by_id() {
        let mut store = Store::new(3);
        for i in 0..5 {
            store.push(report(&format!("r{i}"), "2026-11-21T05:00:00.000000Z"));
        }
        assert_eq!(store.len(), 3);
        let ids: Vec<_> = store
            .query(&Filter::default())
            .iter()
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(ids, ["r4", "r3", "r2"]);
        assert!(store.get("r3").is_some());
        assert!(store.get("r1").is_none(), "evicted");
        let limited = store.query(&Filter {
            limit: Some(1),
            ..Filter::default()
        });
        assert_eq!(limited.len(), 1);
        assert_eq!(limited[0].id, "r4");
        assert_eq!(Store::new(0).capacity(), 1);
    }

    #[test]
    fn filters_by_subject_substrings() {
        let mut store = Store::default();
        store.push(fixtures::no_handler()); // pod, container 3f2a9c1b2d4e
        store.push(fixtures::killed()); // app.service
        let count = |f: Filter| store.query(&f).len();
        let f = |container: Option<&str>, pod: Option<&str>, workload: Option<&str>| Filter {
            container: container.map(Into::into),
            pod: pod.map(Into::into),
            workload: workload.map(Into::into),
            ..Filter::default()
        };
        assert_eq!(count(f(Some("3F2A9C"), None, None)), 1, "case-insensitive");
        assert_eq!(count(f(Some("ccddeeff"), None, None)), 1, "full id");
        assert_eq!(count(f(None, Some("1b4e28ba"), None)), 1);
        assert_eq!(count(f(None, None, Some("app.serv"))), 1);
        assert_eq!(count(f(None, None, Some("pod-1b4e"))), 1);
        assert_eq!(count(f(Some("3f2a"), None, Some("app.service"))), 0);
        assert_eq!(count(f(None, None, None)), 2);
        let id = fixtures::killed().id;
        assert_eq!(
            count(Filter {
                id: Some(id),
                ..Filter::default()
            }),
            1
        );
    }

    #[test]
    fn filters_by_namespace_pod_name_and_outcome() {
        let mut store = Store::default();
        let mut web = fixtures::no_handler();
        web.subject.namespace = "shop".into();
        web.subject.pod = Some("web-7d9f".into());
        store.push(web);
        store.push(fixtures::killed());
        let ids =
            |f: Filter| -> Vec<String> { store.query(&f).iter().map(|r| r.id.clone()).collect() };
        let killed_id = fixtures::killed().id;
        let web_ids = vec![fixtures::no_handler().id];
        assert_eq!(
            ids(Filter {
                namespace: Some("SHOP".into()),
                ..Filter::default()
            }),
            web_ids
        );
        assert_eq!(
            ids(Filter {
                pod: Some("web-7d".into()),
                ..Filter::default()
            }),
            web_ids,
            "by name"
        );
        assert_eq!(
            ids(Filter {
                pod: Some("1b4e28ba".into()),
                ..Filter::default()
            }),
            web_ids,
            "by UID"
        );
        assert_eq!(
            ids(Filter {
                outcome: Some(parse_outcome("killed").expect("outcome")),
                ..Filter::default()
            }),
            [killed_id]
        );
        assert_eq!(parse_outcome("No-Handler"), Ok(Outcome::NoHandler));
        let err = parse_outcome("dead").expect_err("unknown");
        assert!(err.to_string().contains("graceful, cut, killed"), "{err}");
    }

    #[test]
    fn filters_by_time_range() {
        let mut store = Store::default();
        store.push(report("a", "2026-11-21T05:00:00.000000Z"));
        store.push(report("b", "2026-11-21T06:00:00.000000Z"));
        let t = |s: &str| parse_time(s, 0).expect("time");
        let ids = |since: Option<&str>, until: Option<&str>| -> Vec<String> {
            store
                .query(&Filter {
                    since_ns: since.map(t),
                    until_ns: until.map(t),
                    ..Filter::default()
                })
                .iter()
                .map(|r| r.id.clone())
                .collect()
        };
        assert_eq!(ids(Some("2026-11-21T05:30:00Z"), None), ["b"]);
        assert_eq!(ids(None, Some("2026-11-21T05:30:00Z")), ["a"]);
        assert_eq!(
            ids(Some("2026-11-21T05:00:00Z"), Some("2026-11-21T06:00:00Z")),
            ["b", "a"]
        );
        assert_eq!(ids(None, None), ["b", "a"]);
    }

    #[test]
    fn times_are_rfc3339_or_durations_ago() {
        let now = 10 * 86_400 * 1_000_000_000;
        assert_eq!(parse_time("1970-01-01T00:00:01Z", now), Ok(1_000_000_000));
        assert_eq!(parse_time("90s", now), Ok(now - 90_000_000_000));
        assert_eq!(parse_time("2h", now), Ok(now - 7_200_000_000_000));
        assert_eq!(parse_time("500ms", now), Ok(now - 500_000_000));
        assert_eq!(parse_time("20d", now), Ok(0));
        assert!(parse_time("yesterday", now).is_err());
        assert!(parse_time("5y", now).is_err());
        assert_eq!(parse_time("1h30m", now), Ok(now - 5_400_000_000_000));
        assert_eq!(parse_time("1d2h3m4s5ms", now), Ok(now - 93_784_005_000_000));
        assert!(parse_time("1h30", now).is_err(), "a number without unit");
        assert!(parse_time("h", now).is_err());
        assert!(
            parse_time("99999999999999999999d", now).is_err(),
            "overflow"
        );
        assert!(parse_time("300000000000d", now).is_err(), "overflow in ns");
        assert_eq!(
            parse_time("2026-12-02T04:00:00+01:00", now),
            parse_time("2026-12-02T03:00:00Z", now)
        );
        assert_eq!(
            parse_time("2026-12-02T04:00:00.5-05:30", now),
            parse_time("2026-12-02T09:30:00.500Z", now)
        );
        assert_eq!(
            parse_time("2026-12-02t03:00:00z", now),
            parse_time("2026-12-02T03:00:00Z", now)
        );
        assert!(parse_time("2026-12-02T04:00:00+25:00", now).is_err());
        assert!(parse_time("2026-12-02T04:00:00", now).is_err(), "no zone");
        assert!(
            parse_time("1970-01-01T00:30:00+01:00", now).is_err(),
            "before the epoch"
        );
        assert!(parse_time("", now).is_err());
        let err = parse_time("soon", now).expect_err("invalid");
        assert!(err.to_string().contains("RFC 3339"), "{err}");
    }
}
