//! Resources: long-lived objects in Kubernetes' shape — `apiVersion: cella.dev/v1`, `kind`,
//! `metadata` (name, namespace, labels, resourceVersion), `spec`, `status` — stored in the
//! consistent core under `/cella/resources/<Kind>/<namespace>/<name>` and applied
//! declaratively (`cella apply -f`).
//!
//! Each kind belongs to a block, which implements [`Kind`]: it checks the spec and makes its
//! own state match it. Apply is idempotent: the block acts first, then the resource is stored
//! (compare-and-swap on its revision), so a failed apply stores nothing and re-applying
//! converges. The resource version is the core revision of the last stored change.

mod error;
pub mod grpc;
mod model;
pub mod rest;
mod service;

pub use error::{ResourceError, ResourceResult};
pub use model::{Metadata, Outcome, Resource, API_VERSION};
pub use service::{Kind, KindFuture, Resources};
