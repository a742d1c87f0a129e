//! A CRI v1 client: the gRPC calls kubelet makes to the container runtime, over the runtime's
//! unix socket.
//!
//! The messages are the subset of `runtime.v1` (k8s.io/cri-api `api.proto`) that the tests use,
//! written out with `prost` derives; field numbers and names are those of the proto, and
//! protobuf skips fields a side does not know, so the subset talks to a full CRI server.
//! (The `k8s-cri` crate generates the whole API, but its build script needs `protoc`, which
//! would make every build of the workspace need the `protobuf-compiler` package.)
//!
//! Calls are blocking: each runs on a shared background tokio runtime and the calling thread
//! waits for it, so they work from plain `#[test]` functions and from async code alike.

use std::{
    collections::HashMap,
    future::Future,
    path::{Path, PathBuf},
    sync::{OnceLock, mpsc},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use tonic::transport::{Channel, Endpoint};

/// A small multi-threaded runtime shared by the CRI clients and the API server stand-in.
pub fn background_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ts-k8s-bg")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot build the tests' background tokio runtime: {e}"))
    })
}

/// Runs `f` on the background runtime and waits for its output. Works from any thread, also
/// from inside another runtime (the future runs elsewhere; this thread only blocks).
pub fn block_on<F>(f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    background_runtime().spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv()
        .unwrap_or_else(|_| panic!("a background task panicked (see its message above)"))
}

/// The `runtime.v1` messages the tests use.
pub mod v1 {
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionRequest {
        #[prost(string, tag = "1")]
        pub version: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionResponse {
        #[prost(string, tag = "1")]
        pub version: String,
        #[prost(string, tag = "2")]
        pub runtime_name: String,
        #[prost(string, tag = "3")]
        pub runtime_version: String,
        #[prost(string, tag = "4")]
        pub runtime_api_version: String,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum NamespaceMode {
        Pod = 0,
        Container = 1,
        Node = 2,
        Target = 3,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamespaceOption {
        #[prost(enumeration = "NamespaceMode", tag = "1")]
        pub network: i32,
        #[prost(enumeration = "NamespaceMode", tag = "2")]
        pub pid: i32,
        #[prost(enumeration = "NamespaceMode", tag = "3")]
        pub ipc: i32,
        #[prost(string, tag = "4")]
        pub target_id: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Int64Value {
        #[prost(int64, tag = "1")]
        pub value: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LinuxSandboxSecurityContext {
        #[prost(message, optional, tag = "1")]
        pub namespace_options: Option<NamespaceOption>,
        #[prost(message, optional, tag = "3")]
        pub run_as_user: Option<Int64Value>,
        #[prost(bool, tag = "4")]
        pub readonly_rootfs: bool,
        #[prost(bool, tag = "6")]
        pub privileged: bool,
        #[prost(message, optional, tag = "9")]
        pub seccomp: Option<SecurityProfile>,
    }
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum ProfileType {
        RuntimeDefault = 0,
        Unconfined = 1,
        Localhost = 2,
    }
    /// A seccomp (or AppArmor) profile: `localhost_ref` is the profile file's absolute path.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SecurityProfile {
        #[prost(enumeration = "ProfileType", tag = "1")]
        pub profile_type: i32,
        #[prost(string, tag = "2")]
        pub localhost_ref: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LinuxContainerResources {
        #[prost(int64, tag = "1")]
        pub cpu_period: i64,
        #[prost(int64, tag = "2")]
        pub cpu_quota: i64,
        #[prost(int64, tag = "3")]
        pub cpu_shares: i64,
        #[prost(int64, tag = "4")]
        pub memory_limit_in_bytes: i64,
        #[prost(int64, tag = "5")]
        pub oom_score_adj: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LinuxPodSandboxConfig {
        #[prost(string, tag = "1")]
        pub cgroup_parent: String,
        #[prost(message, optional, tag = "2")]
        pub security_context: Option<LinuxSandboxSecurityContext>,
        #[prost(map = "string, string", tag = "3")]
        pub sysctls: HashMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxMetadata {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub uid: String,
        #[prost(string, tag = "3")]
        pub namespace: String,
        #[prost(uint32, tag = "4")]
        pub attempt: u32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DnsConfig {
        #[prost(string, repeated, tag = "1")]
        pub servers: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub searches: Vec<String>,
        #[prost(string, repeated, tag = "3")]
        pub options: Vec<String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxConfig {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<PodSandboxMetadata>,
        #[prost(string, tag = "2")]
        pub hostname: String,
        #[prost(string, tag = "3")]
        pub log_directory: String,
        #[prost(message, optional, tag = "4")]
        pub dns_config: Option<DnsConfig>,
        #[prost(map = "string, string", tag = "6")]
        pub labels: HashMap<String, String>,
        #[prost(map = "string, string", tag = "7")]
        pub annotations: HashMap<String, String>,
        #[prost(message, optional, tag = "8")]
        pub linux: Option<LinuxPodSandboxConfig>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RunPodSandboxRequest {
        #[prost(message, optional, tag = "1")]
        pub config: Option<PodSandboxConfig>,
        #[prost(string, tag = "2")]
        pub runtime_handler: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RunPodSandboxResponse {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxIdRequest {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxStatusRequest {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
        #[prost(bool, tag = "2")]
        pub verbose: bool,
    }
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum PodSandboxState {
        SandboxReady = 0,
        SandboxNotready = 1,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodIp {
        #[prost(string, tag = "1")]
        pub ip: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxNetworkStatus {
        #[prost(string, tag = "1")]
        pub ip: String,
        #[prost(message, repeated, tag = "2")]
        pub additional_ips: Vec<PodIp>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxStatus {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(message, optional, tag = "2")]
        pub metadata: Option<PodSandboxMetadata>,
        #[prost(enumeration = "PodSandboxState", tag = "3")]
        pub state: i32,
        #[prost(int64, tag = "4")]
        pub created_at: i64,
        #[prost(message, optional, tag = "5")]
        pub network: Option<PodSandboxNetworkStatus>,
        #[prost(map = "string, string", tag = "7")]
        pub labels: HashMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxStatusResponse {
        #[prost(message, optional, tag = "1")]
        pub status: Option<PodSandboxStatus>,
        #[prost(map = "string, string", tag = "2")]
        pub info: HashMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxFilter {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(map = "string, string", tag = "3")]
        pub label_selector: HashMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListPodSandboxRequest {
        #[prost(message, optional, tag = "1")]
        pub filter: Option<PodSandboxFilter>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandbox {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(message, optional, tag = "2")]
        pub metadata: Option<PodSandboxMetadata>,
        #[prost(enumeration = "PodSandboxState", tag = "3")]
        pub state: i32,
        #[prost(map = "string, string", tag = "5")]
        pub labels: HashMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListPodSandboxResponse {
        #[prost(message, repeated, tag = "1")]
        pub items: Vec<PodSandbox>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerMetadata {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(uint32, tag = "2")]
        pub attempt: u32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageSpec {
        #[prost(string, tag = "1")]
        pub image: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum MountPropagation {
        PropagationPrivate = 0,
        PropagationHostToContainer = 1,
        PropagationBidirectional = 2,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mount {
        #[prost(string, tag = "1")]
        pub container_path: String,
        #[prost(string, tag = "2")]
        pub host_path: String,
        #[prost(bool, tag = "3")]
        pub readonly: bool,
        #[prost(enumeration = "MountPropagation", tag = "5")]
        pub propagation: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Capability {
        #[prost(string, repeated, tag = "1")]
        pub add_capabilities: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub drop_capabilities: Vec<String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LinuxContainerSecurityContext {
        #[prost(message, optional, tag = "1")]
        pub capabilities: Option<Capability>,
        #[prost(bool, tag = "2")]
        pub privileged: bool,
        #[prost(message, optional, tag = "3")]
        pub namespace_options: Option<NamespaceOption>,
        #[prost(message, optional, tag = "5")]
        pub run_as_user: Option<Int64Value>,
        #[prost(bool, tag = "7")]
        pub readonly_rootfs: bool,
        #[prost(bool, tag = "11")]
        pub no_new_privs: bool,
        #[prost(message, optional, tag = "12")]
        pub run_as_group: Option<Int64Value>,
        #[prost(message, optional, tag = "15")]
        pub seccomp: Option<SecurityProfile>,
        #[prost(message, optional, tag = "16")]
        pub apparmor: Option<SecurityProfile>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LinuxContainerConfig {
        #[prost(message, optional, tag = "1")]
        pub resources: Option<LinuxContainerResources>,
        #[prost(message, optional, tag = "2")]
        pub security_context: Option<LinuxContainerSecurityContext>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerConfig {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<ContainerMetadata>,
        #[prost(message, optional, tag = "2")]
        pub image: Option<ImageSpec>,
        #[prost(string, repeated, tag = "3")]
        pub command: Vec<String>,
        #[prost(string, repeated, tag = "4")]
        pub args: Vec<String>,
        #[prost(string, tag = "5")]
        pub working_dir: String,
        #[prost(message, repeated, tag = "6")]
        pub envs: Vec<KeyValue>,
        #[prost(message, repeated, tag = "7")]
        pub mounts: Vec<Mount>,
        #[prost(map = "string, string", tag = "9")]
        pub labels: HashMap<String, String>,
        #[prost(map = "string, string", tag = "10")]
        pub annotations: HashMap<String, String>,
        #[prost(string, tag = "11")]
        pub log_path: String,
        #[prost(bool, tag = "12")]
        pub stdin: bool,
        #[prost(bool, tag = "14")]
        pub tty: bool,
        #[prost(message, optional, tag = "15")]
        pub linux: Option<LinuxContainerConfig>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CreateContainerRequest {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
        #[prost(message, optional, tag = "2")]
        pub config: Option<ContainerConfig>,
        #[prost(message, optional, tag = "3")]
        pub sandbox_config: Option<PodSandboxConfig>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerIdRequest {
        #[prost(string, tag = "1")]
        pub container_id: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StopContainerRequest {
        #[prost(string, tag = "1")]
        pub container_id: String,
        #[prost(int64, tag = "2")]
        pub timeout: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerStatusRequest {
        #[prost(string, tag = "1")]
        pub container_id: String,
        #[prost(bool, tag = "2")]
        pub verbose: bool,
    }
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum ContainerState {
        ContainerCreated = 0,
        ContainerRunning = 1,
        ContainerExited = 2,
        ContainerUnknown = 3,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerStatus {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(message, optional, tag = "2")]
        pub metadata: Option<ContainerMetadata>,
        #[prost(enumeration = "ContainerState", tag = "3")]
        pub state: i32,
        #[prost(int64, tag = "4")]
        pub created_at: i64,
        #[prost(int64, tag = "5")]
        pub started_at: i64,
        #[prost(int64, tag = "6")]
        pub finished_at: i64,
        #[prost(int32, tag = "7")]
        pub exit_code: i32,
        #[prost(message, optional, tag = "8")]
        pub image: Option<ImageSpec>,
        #[prost(string, tag = "9")]
        pub image_ref: String,
        #[prost(string, tag = "10")]
        pub reason: String,
        #[prost(string, tag = "11")]
        pub message: String,
        #[prost(map = "string, string", tag = "12")]
        pub labels: HashMap<String, String>,
        #[prost(string, tag = "15")]
        pub log_path: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerStatusResponse {
        #[prost(message, optional, tag = "1")]
        pub status: Option<ContainerStatus>,
        #[prost(map = "string, string", tag = "2")]
        pub info: HashMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExecSyncRequest {
        #[prost(string, tag = "1")]
        pub container_id: String,
        #[prost(string, repeated, tag = "2")]
        pub cmd: Vec<String>,
        #[prost(int64, tag = "3")]
        pub timeout: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExecSyncResponse {
        #[prost(bytes = "vec", tag = "1")]
        pub stdout: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub stderr: Vec<u8>,
        #[prost(int32, tag = "3")]
        pub exit_code: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerFilter {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(string, tag = "3")]
        pub pod_sandbox_id: String,
        #[prost(map = "string, string", tag = "4")]
        pub label_selector: HashMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListContainersRequest {
        #[prost(message, optional, tag = "1")]
        pub filter: Option<ContainerFilter>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Container {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(string, tag = "2")]
        pub pod_sandbox_id: String,
        #[prost(message, optional, tag = "3")]
        pub metadata: Option<ContainerMetadata>,
        #[prost(enumeration = "ContainerState", tag = "6")]
        pub state: i32,
        #[prost(map = "string, string", tag = "8")]
        pub labels: HashMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListContainersResponse {
        #[prost(message, repeated, tag = "1")]
        pub containers: Vec<Container>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageStatusRequest {
        #[prost(message, optional, tag = "1")]
        pub image: Option<ImageSpec>,
        #[prost(bool, tag = "2")]
        pub verbose: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Image {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(string, repeated, tag = "2")]
        pub repo_tags: Vec<String>,
        #[prost(uint64, tag = "4")]
        pub size: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageStatusResponse {
        #[prost(message, optional, tag = "1")]
        pub image: Option<Image>,
    }
}

pub use v1::{ContainerConfig, ContainerState, ContainerStatus, PodSandboxConfig};

/// The sandbox's network namespace and address, read from `PodSandboxStatus`.
#[derive(Debug, Clone)]
pub struct SandboxNetwork {
    /// The pod IP (what kubelet reports as `status.podIP`); empty without CNI.
    pub ip: String,
    /// The sandbox's network namespace file (`/proc/<pause pid>/ns/net` is the same
    /// namespace), from the verbose status's runtime spec.
    pub netns: PathBuf,
    /// The pause process's pid (in the test's pid namespace).
    pub pause_pid: u32,
}

/// A CRI client on one runtime socket. Cheap to clone.
#[derive(Clone)]
pub struct Cri {
    channel: Channel,
    socket: PathBuf,
}

/// Longest wait for a call that is not a stop (those wait for their own timeout on top).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl Cri {
    /// A client for the CRI server listening on `socket` (connects on first use).
    pub fn connect(socket: &Path) -> Result<Self> {
        let path = socket.to_path_buf();
        let connector = tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        // The authority is unused: the connector ignores it.
        let endpoint = Endpoint::try_from("http://cri.invalid")?;
        let channel = {
            let _guard = background_runtime().enter();
            endpoint.connect_with_connector_lazy(connector)
        };
        Ok(Cri {
            channel,
            socket: socket.to_path_buf(),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn call<Req, Resp>(
        &self,
        service: &'static str,
        method: &'static str,
        req: Req,
        timeout: Duration,
    ) -> Result<Resp>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let channel = self.channel.clone();
        let path = format!("/runtime.v1.{service}/{method}");
        block_on(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready()
                .await
                .map_err(|e| anyhow!("CRI {method}: connecting: {e}"))?;
            let path = http::uri::PathAndQuery::try_from(path)?;
            let mut request = tonic::Request::new(req);
            request.set_timeout(timeout);
            let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
            match grpc.unary(request, path, codec).await {
                Ok(resp) => Ok(resp.into_inner()),
                Err(status) => Err(anyhow!(
                    "CRI {method}: {:?}: {}",
                    status.code(),
                    status.message()
                )),
            }
        })
    }

    fn runtime<Req, Resp>(&self, method: &'static str, req: Req) -> Result<Resp>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.call("RuntimeService", method, req, CALL_TIMEOUT)
    }

    /// `Version`: the runtime's name and version (also a liveness check).
    pub fn version(&self) -> Result<v1::VersionResponse> {
        self.runtime(
            "Version",
            v1::VersionRequest {
                version: "v1".into(),
            },
        )
    }

    /// `RunPodSandbox`: creates the pod's sandbox (pause container, network namespace,
    /// CNI setup). Returns the sandbox id.
    pub fn run_pod_sandbox(&self, config: &PodSandboxConfig) -> Result<String> {
        let resp: v1::RunPodSandboxResponse = self.runtime(
            "RunPodSandbox",
            v1::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            },
        )?;
        Ok(resp.pod_sandbox_id)
    }

    /// `StopPodSandbox`: kills every container left in the pod (SIGKILL), then the sandbox,
    /// and tears down its network.
    pub fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let _: v1::Empty = self.runtime(
            "StopPodSandbox",
            v1::PodSandboxIdRequest {
                pod_sandbox_id: id.into(),
            },
        )?;
        Ok(())
    }

    /// `RemovePodSandbox`: removes the sandbox and every container in it.
    pub fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let _: v1::Empty = self.runtime(
            "RemovePodSandbox",
            v1::PodSandboxIdRequest {
                pod_sandbox_id: id.into(),
            },
        )?;
        Ok(())
    }

    /// `PodSandboxStatus` with `verbose` (the runtime's `info` map, containerd's runtime spec).
    pub fn pod_sandbox_status(&self, id: &str) -> Result<v1::PodSandboxStatusResponse> {
        self.runtime(
            "PodSandboxStatus",
            v1::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            },
        )
    }

    /// The sandbox's pod IP, network namespace file and pause pid.
    pub fn sandbox_network(&self, id: &str) -> Result<SandboxNetwork> {
        let resp = self.pod_sandbox_status(id)?;
        let ip = resp
            .status
            .as_ref()
            .and_then(|s| s.network.as_ref())
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        let info = resp
            .info
            .get("info")
            .context("PodSandboxStatus has no verbose `info`")?;
        let info: serde_json::Value =
            serde_json::from_str(info).context("PodSandboxStatus `info` is not JSON")?;
        let netns = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .and_then(|nss| {
                nss.iter()
                    .find(|ns| ns["type"] == "network")
                    .and_then(|ns| ns["path"].as_str())
            })
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .context("the sandbox's runtime spec names no network namespace path")?;
        let pause_pid = info["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .context("PodSandboxStatus `info` has no pid")?;
        Ok(SandboxNetwork {
            ip,
            netns,
            pause_pid,
        })
    }

    /// `ListPodSandbox`, all of them.
    pub fn list_pod_sandboxes(&self) -> Result<Vec<v1::PodSandbox>> {
        let resp: v1::ListPodSandboxResponse =
            self.runtime("ListPodSandbox", v1::ListPodSandboxRequest { filter: None })?;
        Ok(resp.items)
    }

    /// `CreateContainer` in a sandbox. Returns the container id (64 hex).
    pub fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String> {
        let resp: v1::ContainerIdRequest = self.runtime(
            "CreateContainer",
            v1::CreateContainerRequest {
                pod_sandbox_id: sandbox_id.into(),
                config: Some(config.clone()),
                sandbox_config: Some(sandbox_config.clone()),
            },
        )?;
        Ok(resp.container_id)
    }

    /// `StartContainer`.
    pub fn start_container(&self, id: &str) -> Result<()> {
        let _: v1::Empty = self.runtime(
            "StartContainer",
            v1::ContainerIdRequest {
                container_id: id.into(),
            },
        )?;
        Ok(())
    }

    /// `StopContainer` with a grace period: the runtime sends the image's stop signal
    /// (`StopSignal` in the image config, SIGTERM without one), waits up to `timeout_secs`
    /// for the container to exit, then sends SIGKILL. `0` kills at once. Returns when the
    /// container has exited.
    pub fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<()> {
        let wait = CALL_TIMEOUT + Duration::from_secs(u64::try_from(timeout_secs.max(0))?);
        let _: v1::Empty = self.call(
            "RuntimeService",
            "StopContainer",
            v1::StopContainerRequest {
                container_id: id.into(),
                timeout: timeout_secs,
            },
            wait,
        )?;
        Ok(())
    }

    /// `RemoveContainer`.
    pub fn remove_container(&self, id: &str) -> Result<()> {
        let _: v1::Empty = self.runtime(
            "RemoveContainer",
            v1::ContainerIdRequest {
                container_id: id.into(),
            },
        )?;
        Ok(())
    }

    /// `ContainerStatus`: state, exit code, reason ("Completed", "Error", "OOMKilled"),
    /// start and finish times (ns since the epoch).
    pub fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        let resp: v1::ContainerStatusResponse = self.runtime(
            "ContainerStatus",
            v1::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            },
        )?;
        resp.status
            .context("ContainerStatus response without a status")
    }

    /// `ContainerStatus` with `verbose`: containerd's `info` (pid, runtime spec) as JSON.
    pub fn container_info(&self, id: &str) -> Result<serde_json::Value> {
        let resp: v1::ContainerStatusResponse = self.runtime(
            "ContainerStatus",
            v1::ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            },
        )?;
        let info = resp
            .info
            .get("info")
            .context("ContainerStatus has no verbose `info`")?;
        Ok(serde_json::from_str(info)?)
    }

    /// The container's main process, as seen from the test (host pid namespace).
    pub fn container_pid(&self, id: &str) -> Result<u32> {
        let info = self.container_info(id)?;
        info["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p != 0)
            .context("container has no pid (not running?)")
    }

    /// `ListContainers` in one sandbox (all of them with an empty id).
    pub fn list_containers(&self, sandbox_id: &str) -> Result<Vec<v1::Container>> {
        let resp: v1::ListContainersResponse = self.runtime(
            "ListContainers",
            v1::ListContainersRequest {
                filter: Some(v1::ContainerFilter {
                    pod_sandbox_id: sandbox_id.into(),
                    ..Default::default()
                }),
            },
        )?;
        Ok(resp.containers)
    }

    /// `ExecSync`: runs `cmd` in the container (what an exec probe or exec preStop hook
    /// does) and waits up to `timeout` for it.
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<v1::ExecSyncResponse> {
        let secs = i64::try_from(timeout.as_secs().max(1))?;
        self.call(
            "RuntimeService",
            "ExecSync",
            v1::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: secs,
            },
            timeout + CALL_TIMEOUT,
        )
    }

    /// `ImageStatus`: the image's id when the runtime has it.
    pub fn image_id(&self, image: &str) -> Result<Option<String>> {
        let resp: v1::ImageStatusResponse = self.call(
            "ImageService",
            "ImageStatus",
            v1::ImageStatusRequest {
                image: Some(v1::ImageSpec {
                    image: image.into(),
                }),
                verbose: false,
            },
            CALL_TIMEOUT,
        )?;
        Ok(resp.image.map(|i| i.id))
    }
}

/// The container's cgroup path with the cgroupfs driver: the pod's cgroup parent and the
/// container id, as containerd passes it to runc (`/kubepods/<qos>/pod<uid>/<id>`).
pub fn container_cgroup_path(cgroup_parent: &str, container_id: &str) -> String {
    format!("{}/{container_id}", cgroup_parent.trim_end_matches('/'))
}

/// A `KeyValue` list from pairs.
pub fn envs(pairs: &[(&str, &str)]) -> Vec<v1::KeyValue> {
    pairs
        .iter()
        .map(|(k, v)| v1::KeyValue {
            key: (*k).into(),
            value: (*v).into(),
        })
        .collect()
}

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// What state a container is in, by name, for messages.
pub fn state_name(state: i32) -> &'static str {
    match ContainerState::try_from(state) {
        Ok(ContainerState::ContainerCreated) => "created",
        Ok(ContainerState::ContainerRunning) => "running",
        Ok(ContainerState::ContainerExited) => "exited",
        Ok(ContainerState::ContainerUnknown) | Err(_) => "unknown",
    }
}

/// Fails unless `status` is exited.
pub fn expect_exited(status: &ContainerStatus) -> Result<()> {
    if status.state != ContainerState::ContainerExited as i32 {
        bail!(
            "container {} is {}, not exited",
            status.id,
            state_name(status.state)
        );
    }
    Ok(())
}
