//! Service invocation: an incoming Dapr call becomes a call through the SDK's RPC stack to
//! one instance of the target app (discovered in the registry, balanced, retried when
//! idempotent, with outlier ejection). One stack per target app, built on first use.
//!
//! What is forwarded: the method, the path `/{method}` with the query, the headers (less
//! hop-by-hop ones and `dapr-app-id`) and the body; the context headers continue the
//! caller's context (or start one).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use cella_base::BusyPoll;
use cella_sdk::registry::Registry;
use cella_sdk::rpc::{self, Context, HttpConnection, RpcSettings, RpcStack};
use http::{HeaderMap, Method, Uri};
use tokio::sync::Mutex;
use tower::{BoxError, ServiceExt};

use crate::SidecarError;

/// Headers that belong to one connection, not to the call.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Rejects app ids that could not be a registry service name.
pub(crate) fn check_app_id(app_id: &str) -> Result<(), SidecarError> {
    let valid = !app_id.is_empty()
        && app_id.len() <= 128
        && app_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(SidecarError::InvalidAppId {
            app_id: app_id.to_owned(),
        })
    }
}

/// The stacks to the apps this sidecar has called.
pub(crate) struct Invoker {
    registry: Registry,
    settings: RpcSettings,
    stacks: Mutex<HashMap<String, RpcStack<HttpConnection>>>,
    /// Marked when a call arrives and when its answer is back: for a busy caller, the app's
    /// answer and the next request come within the window.
    busy_poll: BusyPoll,
}

/// One call to forward.
pub(crate) struct Invocation {
    pub app_id: String,
    pub method: Method,
    /// The target's path and query, starting with `/`.
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Invoker {
    pub fn new(registry: Registry, settings: RpcSettings, busy_poll: BusyPoll) -> Arc<Self> {
        Arc::new(Invoker {
            registry,
            settings,
            stacks: Mutex::new(HashMap::new()),
            busy_poll,
        })
    }

    async fn stack(&self, app_id: &str) -> Result<RpcStack<HttpConnection>, SidecarError> {
        let mut stacks = self.stacks.lock().await;
        if let Some(stack) = stacks.get(app_id) {
            return Ok(stack.clone());
        }
        let stack = rpc::http_stack(&self.registry, app_id, self.settings.clone())
            .await
            .map_err(|e| SidecarError::Discovery {
                app_id: app_id.to_owned(),
                message: e.to_string(),
            })?;
        stacks.insert(app_id.to_owned(), stack.clone());
        Ok(stack)
    }

    /// Forwards `call` and returns the target's answer, streamed.
    pub async fn invoke(&self, call: Invocation) -> Result<Response, SidecarError> {
        self.busy_poll.arrival();
        check_app_id(&call.app_id)?;
        let stack = self.stack(&call.app_id).await?;
        let uri: Uri = call
            .path_and_query
            .parse()
            .map_err(|_| SidecarError::NoRoute {
                path: call.path_and_query.clone(),
            })?;
        let mut request = http::Request::new(call.body);
        *request.method_mut() = call.method;
        *request.uri_mut() = uri;
        let context = Context::from_headers(&call.headers).child();
        let mut headers = call.headers;
        for name in HOP_BY_HOP.iter().chain(&["dapr-app-id", "content-length"]) {
            headers.remove(*name);
        }
        *request.headers_mut() = headers;
        request.extensions_mut().insert(context);
        let answer = stack.oneshot(request).await;
        self.busy_poll.activity();
        let answer = answer.map_err(|e| upstream_error(&call.app_id, e))?;
        let (mut parts, body) = answer.into_parts();
        for name in HOP_BY_HOP {
            parts.headers.remove(name);
        }
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

fn upstream_error(app_id: &str, error: BoxError) -> SidecarError {
    let app_id = app_id.to_owned();
    match error.downcast_ref::<cella_sdk::Error>() {
        Some(cella_sdk::Error::NoEndpoints { .. }) => SidecarError::NoInstance { app_id },
        Some(cella_sdk::Error::RateLimited) => SidecarError::RateLimited { app_id },
        Some(cella_sdk::Error::DeadlineExceeded { message }) => SidecarError::Timeout {
            app_id,
            message: message.clone(),
        },
        _ => SidecarError::Upstream {
            app_id,
            message: error_chain(error.as_ref()),
        },
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_are_checked() {
        for good in ["orders", "orders-v2", "a.b_c", &"x".repeat(128)] {
            assert!(check_app_id(good).is_ok(), "{good}");
        }
        for bad in ["", "a/b", "a b", "ä", &"x".repeat(129)] {
            let error = check_app_id(bad).expect_err("invalid");
            assert!(error.to_string().contains("invalid app id"), "{bad}");
        }
    }
}
