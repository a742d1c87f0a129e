//! What the agent gives operators: Prometheus [`metrics`], the forensic JSON-lines [`log`],
//! the in-memory [`store`] of recent reports behind the HTTP [`api`], and the human-readable
//! [`render`]ing used by `termscope report` and `termscope watch` (which reach a running
//! agent through [`client`]).

pub mod api;
pub mod bound;
pub mod client;
pub mod log;
pub mod metrics;
pub mod redact;
pub mod render;
pub mod server;
pub mod store;

#[cfg(test)]
pub(crate) mod fixtures;
