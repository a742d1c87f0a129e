//! The Kubernetes side: who a container is (pod, workload), when its deletion was
//! asked for, when its endpoints stopped taking traffic, and where to tell the
//! operator (a Kubernetes Event on the workload).
//!
//! Layout, pure first:
//! - [`pod`]: a `Pod` object -> [`PodInfo`] (identity, workload, containers and
//!   their preStop hooks, IPs, grace period, deletion request);
//! - [`endpoints`]: `EndpointSlice` objects -> per-pod endpoint conditions, and the
//!   [`EndpointTracker`] recording, as observed, when a pod's endpoints went
//!   not-ready, terminating, or were removed;
//! - [`state`]: [`KubeState`], everything above indexed by pod uid and container
//!   id, with a bounded cache of deleted pods so late kernel events still get
//!   their identity. Applies [`KubeUpdate`]s;
//! - [`watch`] (async, I/O): the API client from the environment and the two
//!   watchers (this node's Pods, all EndpointSlices) producing [`KubeUpdate`]s on
//!   an `mpsc` channel. The agent's main loop owns the [`KubeState`] and applies
//!   the updates it receives (`state.apply(update)`) in its `select!` loop: no
//!   lock is shared between the watchers and the engine;
//! - [`events`] (async, I/O): a Kubernetes Event on the pod's workload when
//!   connections were cut, rate limited per workload.
//!
//! Every time in this module is Unix-epoch nanoseconds ([`UnixNanos`]), as
//! observed by this agent unless said otherwise; pure code takes the time as a
//! parameter and never reads a clock.

pub mod endpoints;
pub mod events;
pub mod pod;
pub mod state;
pub mod watch;

use std::fmt;

use serde::{Serialize, Serializer};

pub use endpoints::{EndpointTracker, PodEndpoints, SliceInfo, SliceKey};
pub use events::{EventRateLimiter, ShutdownEvents};
pub use pod::{ContainerInfo, Deletion, PodError, PodInfo, PreStop, WorkloadKind};
pub use state::{KubeState, KubeStateConfig, KubeUpdate};
pub use watch::{client_from_env, node_name};

/// A wall-clock instant: nanoseconds since the Unix epoch. Serialises as RFC 3339
/// UTC (microseconds), like every time in the reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixNanos(pub u64);

impl UnixNanos {
    pub const NANOS_PER_SEC: u64 = 1_000_000_000;

    /// `secs` whole seconds since the epoch (saturating; negative is 0).
    pub fn from_secs(secs: i64) -> Self {
        UnixNanos(
            u64::try_from(secs)
                .unwrap_or(0)
                .saturating_mul(Self::NANOS_PER_SEC),
        )
    }

    /// The instant a Kubernetes timestamp stands for; `None` before 1970.
    pub fn from_timestamp(ts: &k8s_openapi::jiff::Timestamp) -> Option<Self> {
        u64::try_from(ts.as_nanosecond()).ok().map(UnixNanos)
    }

    /// The same instant as a Kubernetes timestamp (saturating at jiff's range).
    pub fn to_timestamp(self) -> k8s_openapi::jiff::Timestamp {
        k8s_openapi::jiff::Timestamp::from_nanosecond(i128::from(self.0))
            .unwrap_or(k8s_openapi::jiff::Timestamp::MAX)
    }

    /// This instant plus `secs` seconds (negative subtracts), saturating.
    pub fn add_secs(self, secs: i64) -> Self {
        let delta = secs.unsigned_abs().saturating_mul(Self::NANOS_PER_SEC);
        if secs >= 0 {
            UnixNanos(self.0.saturating_add(delta))
        } else {
            UnixNanos(self.0.saturating_sub(delta))
        }
    }

    /// RFC 3339 UTC with microseconds, e.g. `2026-11-21T04:53:11.123456Z`.
    pub fn rfc3339(self) -> String {
        crate::clock::rfc3339(self.0)
    }
}

impl fmt::Display for UnixNanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

impl Serialize for UnixNanos {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.rfc3339())
    }
}

/// What can go wrong talking to Kubernetes.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "running in a pod (KUBERNETES_SERVICE_HOST is set) but the in-cluster configuration \
         cannot be loaded (service account token and CA under \
         /var/run/secrets/kubernetes.io/serviceaccount): {0}"
    )]
    InCluster(#[source] ::kube::config::InClusterError),
    #[error("cannot read kubeconfig {path}: {source}")]
    KubeconfigRead {
        path: String,
        #[source]
        source: ::kube::config::KubeconfigError,
    },
    #[error("kubeconfig {paths} is not usable (current context, cluster or user): {source}")]
    KubeconfigLoad {
        paths: String,
        #[source]
        source: ::kube::config::KubeconfigError,
    },
    #[error("cannot build a Kubernetes API client: {0}")]
    Client(#[source] ::kube::Error),
    #[error(
        "the node name is unknown: pass --node-name or set NODE_NAME (in a DaemonSet, from the \
         downward API: env NODE_NAME valueFrom fieldRef spec.nodeName)"
    )]
    NodeNameMissing,
    #[error("Kubernetes API request failed ({what}): {source}")]
    Api {
        what: String,
        #[source]
        source: ::kube::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_nanos_round_trip_and_format() {
        let t = UnixNanos::from_secs(1_800_000_000);
        assert_eq!(t.rfc3339(), "2027-01-15T08:00:00.000000Z");
        assert_eq!(UnixNanos::from_timestamp(&t.to_timestamp()), Some(t));
        assert_eq!(t.add_secs(-30).add_secs(30), t);
        assert_eq!(UnixNanos::from_secs(-5), UnixNanos(0));
        assert_eq!(
            serde_json::to_value(t).ok(),
            Some(serde_json::json!("2027-01-15T08:00:00.000000Z"))
        );
    }
}
