//! cella-idgen against a real consistent core: in-process generators over a `Core` started
//! in a temp dir, and the node's gRPC and REST APIs over 127.0.0.1 sockets.

mod api;
mod generator;
mod segments;
mod support;
