//! The OpenAPI document served at `/openapi.json`: the node's own routes plus each block's.

use serde_json::{json, Value};

/// The whole REST API as one OpenAPI 3.0 document.
pub fn document() -> Value {
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Cella",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "REST/JSON API of a Cella node. The core's routes follow etcd's gRPC gateway: bytes are base64, 64-bit integers are strings."
        },
        "paths": {
            "/healthz": { "get": { "summary": "Liveness: 200 while the process runs and its core tasks live", "responses": { "200": { "description": "alive" }, "503": { "description": "a core task panicked; restart the node" } } } },
            "/readyz": { "get": { "summary": "Readiness: 200 once the node knows a leader and has applied an entry of its term", "responses": { "200": { "description": "ready" }, "503": { "description": "no leader known yet, or a core task panicked" } } } },
            "/metrics": { "get": { "summary": "Prometheus metrics (OpenMetrics text)", "responses": { "200": { "description": "metrics" } } } },
            "/openapi.json": { "get": { "summary": "This document", "responses": { "200": { "description": "OpenAPI document" } } } }
        },
        "components": { "schemas": {} }
    });
    merge(&mut doc, cella_core::rest::openapi());
    merge(&mut doc, cella_registry::rest::openapi());
    merge(&mut doc, cella_lock::rest::openapi());
    merge(&mut doc, cella_idgen::rest::openapi());
    merge(&mut doc, cella_config::rest::openapi());
    merge(&mut doc, cella_mq::api::openapi());
    merge(&mut doc, cella_resource::rest::openapi());
    doc
}

/// Adds a block's `paths` and `components.schemas` to the document.
fn merge(doc: &mut Value, part: Value) {
    for section in ["paths", "components"] {
        let Some(Value::Object(from)) = part.get(section).cloned() else {
            continue;
        };
        let target = &mut doc[section];
        for (k, v) in from {
            if section == "components" {
                if let (Some(Value::Object(dst)), Value::Object(src)) =
                    (target.get_mut(&k), v.clone())
                {
                    dst.extend(src);
                    continue;
                }
            }
            target[k] = v;
        }
    }
}
