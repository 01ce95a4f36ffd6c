//! Broker integration tests: a real in-process core (for metadata) and real files.

mod broker;
mod common;
mod model;
mod resources;
