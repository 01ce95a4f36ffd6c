//! Locks, elections and counting semaphores on the consistent core (etcd's concurrency
//! recipe, served by the node).
//!
//! A lock is a queue of keys `<name>/<lease-hex>`, each bound to its owner's lease; the key
//! with the lowest create revision holds, each waiter watches only its predecessor, and the
//! holder's create revision is its fencing token, higher for every later grant. A hold ends
//! when released (by its own lease only) or when its lease ends. Elections and semaphores
//! (the first N hold) use the same queues.
//!
//! - [`model`]: the decisions (who holds given these keys), with no I/O.
//! - [`LockService`], [`Elections`]: the transport-free domain services over [`cella_core::Core`].
//! - [`etcd`]: etcd's v3lock and v3election gRPC services; [`grpc`] and [`rest`]: Cella's own
//!   API (try, status, semaphores). [`LockError`] maps to both once.
//! - [`metrics`]: `cella_lock_*` (grants, releases, waiters, hold time, hand-over time).

mod election;
mod error;
pub mod etcd;
mod grants;
pub mod grpc;
pub mod metrics;
pub mod model;
mod queue;
pub mod rest;
mod service;

pub use election::Elections;
pub use error::{LockError, LockResult};
pub use service::{LockService, Wait};

/// Adds every gRPC service of the lock block (etcd's Lock and Election, Cella's Locks) to
/// the node's routes, over `locks` (the same service the REST router uses, so both see one
/// node's grant records).
pub fn add_services(routes: tonic::service::Routes, locks: LockService) -> tonic::service::Routes {
    let elections = Elections::new(locks.core().clone());
    routes
        .add_service(etcd::lock_server(locks.clone()))
        .add_service(etcd::election_server(elections))
        .add_service(grpc::locks_server(locks))
}
