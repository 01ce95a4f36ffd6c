//! Shared helpers for Cella's tests: real `cella` processes, their clients, fault
//! injection, and a linearizability checker.
//!
//! - [`free_port`], [`cella_binary`]: where a node listens and what it runs.
//! - [`Node`], [`Cluster`]: `cella up` / `cella server` processes with temp data dirs and
//!   logs, readiness probes, kill -9, graceful stop, pause and restart.
//! - [`http`]: raw HTTP/1.1 exchanges for REST and Nacos-style routes.
//! - [`etcdctl`]: etcd's own CLI, installed when missing.
//! - [`client`]: etcd v3 KV calls with per-call timeouts and outcome classification.
//! - [`workload`]: the write load and register workload the fault tests share.
//! - [`upstream`]: steerable HTTP and gRPC servers for RPC stack tests.
//! - [`nemesis`]: kill/restart schedules for clusters.
//! - [`PartitionProxy`]: cut cluster members off from each other over loopback.
//! - [`linearizability`]: the checker for recorded register histories.
//! - [`ManualClock`]: deterministic time for unit tests of domain code.

mod binary;
pub mod client;
mod cluster;
pub mod etcdctl;
pub mod http;
pub mod linearizability;
pub mod nemesis;
mod node;
mod partition;
mod port;
mod probe;
pub mod upstream;
pub mod workload;

pub use binary::{cella_binary, workspace_root};
pub use cella_base::ManualClock;
pub use cluster::Cluster;
pub use http::{http_request, HttpResponse};
pub use node::{Node, NodeId, NodeOptions};
pub use partition::PartitionProxy;
pub use port::free_port;
pub use probe::http_get_status;

/// Number of iterations for repeated fault tests: `CELLA_FAULT_ITERATIONS`, else `default`.
pub fn fault_iterations(default: usize) -> usize {
    std::env::var("CELLA_FAULT_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
