//! Cella's available (AP) service registry (SPEC §2).
//!
//! Ephemeral instances live in memory and are kept alive by heartbeats; silent ones turn
//! unhealthy and then disappear, unless protection judges the silence to be the registry's
//! own fault. Persistent instances are stored in the consistent core and probed. Clients
//! list with label selectors or subscribe to a snapshot followed by versioned deltas, over
//! gRPC, REST, or Nacos's v1 naming open API.

pub mod api;
mod error;
pub mod grpc;
pub mod metrics;
mod model;
pub mod nacos;
mod peers;
mod probe;
mod registry;
pub mod rest;
mod table;

pub use error::{RegistryError, RegistryResult};
pub use model::{
    Instance, InstanceSpec, LabelSelector, ServiceKey, ServiceSettings, DEFAULT_GROUP,
    DEFAULT_NAMESPACE,
};
pub use probe::HEALTH_CHECK_PATH;
pub use registry::{Registry, RegistryConfig, Subscription};
pub use table::{ServiceChange, ServiceView};
