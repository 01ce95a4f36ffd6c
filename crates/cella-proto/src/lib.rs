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

    /// The message broker's API.
    pub mod mq {
        /// Version 1.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/cella.mq.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/cella.mq.v1.serde.rs"));
        }
    }
}
