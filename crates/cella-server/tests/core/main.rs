//! The consistent core over real sockets: a node started in-process with
//! `cella_server::run` on 127.0.0.1, exercised through etcd's gRPC API and the REST
//! gateway on the same port.

mod bad_input;
mod durability;
mod harness;
mod kv;
mod lease;
mod mq;
mod rest;
mod watch;
