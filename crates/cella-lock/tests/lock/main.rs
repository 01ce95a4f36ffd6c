//! The lock block over real sockets: a node started in-process with `cella_server::run` on
//! 127.0.0.1, exercised through Cella's Locks service, etcd's Lock and Election services
//! and the REST API on the same port.

mod api;
mod etcd;
mod harness;
mod metrics;
mod rest;
