//! Integration tests of the config center over real sockets: a node runs in this process
//! on 127.0.0.1, and the tests talk gRPC, REST and Nacos's HTTP API to it.

mod harness;

mod bad_input;
mod gray;
mod nacos;
mod releases;
mod rest_acl_audit;
mod watch;
