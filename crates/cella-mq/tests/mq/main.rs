//! Broker integration tests: a real in-process core (for metadata) and real files.

mod batch;
mod broker;
mod common;
mod model;
mod resources;
