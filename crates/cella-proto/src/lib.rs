//! Cella's wire API, generated from `proto/` at build time.
//!
//! `etcdserverpb` and `mvccpb` are wire-compatible with etcd v3, so etcd clients work
//! against Cella's core. Every message also has serde impls following the proto3 JSON
//! mapping (with proto field names), which the REST gateway uses.

#![allow(missing_docs, clippy::all)]

/// etcd v3's data types: key-values and watch events.
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// etcd v3's services and messages: KV, Watch, Lease, Cluster, Maintenance.
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// etcd v3's server-side lock service (Lock, Unlock).
pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
}

/// etcd v3's server-side election service (Campaign, Proclaim, Leader, Observe, Resign).
pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
}

/// Cella's own protocols.
pub mod cella {
    /// Internal messages of the consistent core: replicated commands and peer traffic.
    pub mod core {
        /// Version 1.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/cella.core.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/cella.core.v1.serde.rs"));
        }
    }

    /// The service registry: instances, heartbeats, lists and subscriptions.
    pub mod registry {
        /// Version 1.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/cella.registry.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/cella.registry.v1.serde.rs"));
        }
    }

    /// Locks and counting semaphores: what etcd's lock service lacks (try, status, permits).
    pub mod lock {
        /// Version 1.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/cella.lock.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/cella.lock.v1.serde.rs"));
        }
    }

    /// Unique ids: snowflake layouts, decoding, segment mode.
    pub mod idgen {
        /// Version 1.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/cella.idgen.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/cella.idgen.v1.serde.rs"));
        }
    }

    /// The config center: namespaces, releases, gray releases, push, ACLs, audit.
    pub mod config {
        /// Version 1.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/cella.config.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/cella.config.v1.serde.rs"));
        }
    }

    /// The message broker's API.
    pub mod mq {
        /// Version 1.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/cella.mq.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/cella.mq.v1.serde.rs"));
        }
    }

    /// Resources: declarative objects (apply, get, list, delete) that blocks act on.
    pub mod resource {
        /// Version 1.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/cella.resource.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/cella.resource.v1.serde.rs"));
        }
    }
}

// Hand-written, so linted like the rest of the workspace.
#[warn(missing_docs, clippy::all)]
pub mod mq_wire;
