//! Cella's config center (SPEC §3), built on the consistent core.
//!
//! Namespaces (environments / tenants, created explicitly) hold groups of configs named by
//! data id. Every publish is an immutable, numbered release stored as its own core key,
//! written in the same txn as the config's head (current release and gray candidate) and an
//! audit record. Clients watch many configs over one stream, fed by one in-process core
//! watch ([`hub`]) and fanned out in memory; a gray candidate goes to the clients its target
//! selects ([`gray`]), by labels, ids or a stable-hash percentage.
//!
//! - [`ConfigService`]: the domain operations, no transport; a private `decide` module holds the pure
//!   decisions it applies.
//! - [`ConfigApi`]: the operations in `cella.config.v1` messages; [`grpc::service`] and
//!   [`rest::router`] serve it, and [`nacos::router`] serves Nacos's v1 HTTP config API.
//! - [`ConfigError`]: the one error enum, mapped once to gRPC and HTTP statuses.

mod acl;
mod api;
mod decide;
mod diff;
mod error;
mod format;
pub mod gray;
pub mod grpc;
pub mod hub;
mod md5;
mod model;
pub mod nacos;
pub mod rest;
mod service;
mod session;
mod store;

pub use acl::{Caller, Permission};
pub use api::{ConfigApi, WatchStream, MAX_WATCHED_CONFIGS};
pub use cella_base::UnixClock;
pub use diff::{diff_lines, DiffLine};
pub use error::{ConfigError, ConfigResult};
pub use format::Format;
pub use gray::ClientIdentity;
pub use model::{
    Acl, AclEntry, AuditRecord, ConfigGroup, ConfigKey, Gray, GrayTarget, Head, Namespace, Release,
    PUBLIC_NAMESPACE,
};
pub use service::{ConfigService, ConfigSettings, PublishInput};
pub use session::{Change, Session};

/// The MD5 of `content` as lowercase hex: the hash releases carry and watchers compare.
pub fn content_hash(content: &str) -> String {
    md5::hex(content.as_bytes())
}

/// The config center's gRPC and REST (incl. Nacos) routes over one API instance.
pub fn routes(api: ConfigApi) -> (grpc::ConfigServiceServerFor, axum::Router) {
    let rest = rest::router(api.clone()).merge(nacos::router(api.clone()));
    (grpc::service(api), rest)
}
