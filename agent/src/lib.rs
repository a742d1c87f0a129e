//! termscope: which connections were cut while a container or pod shut down, and why.
//!
//! The flow is visible in the module layout:
//! [`probes`] (load the kernel programs) -> [`decode`] (ring buffer records to events)
//! -> [`attribute`] (cgroup -> container -> pod) -> [`terminations`] -> [`outputs`].
//! [`doctor`] tells what this node supports.

pub mod attribute;
pub mod cli;
pub mod clock;
pub mod decode;
pub mod doctor;
pub mod kube;
pub mod outputs;
pub mod pipeline;
pub mod probes;
pub mod restart;
pub mod seccomp;
pub mod signal;
pub mod terminations;
