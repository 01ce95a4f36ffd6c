//! The sidecar's own calls to its app (subscriptions, event and config deliveries): plain
//! HTTP/1.1 to the app's host and port, each bounded by a timeout, the answer buffered.

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use cella_sdk::registry::pb;
use cella_sdk::rpc::{Connect, HttpConnect, HttpConnection};
use http::{header, Method, Request};
use tower::ServiceExt;

/// The largest answer from the app the sidecar reads.
const MAX_ANSWER: usize = 1024 * 1024;

/// What the app answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppAnswer {
    pub status: u16,
    pub body: Bytes,
}

/// A connection pool to the app.
#[derive(Clone, Debug)]
pub(crate) struct AppChannel {
    connection: HttpConnection,
    timeout: Duration,
}

impl AppChannel {
    /// A channel to the app at `host:port`; each call gives up after `timeout`.
    pub fn new(host: &str, port: u16, timeout: Duration) -> Result<AppChannel, String> {
        let instance = pb::Instance {
            ip: host.to_owned(),
            port: u32::from(port),
            ..Default::default()
        };
        let connection = HttpConnect.connect(&instance).map_err(|e| e.to_string())?;
        Ok(AppChannel {
            connection,
            timeout,
        })
    }

    /// `GET path` on the app.
    pub async fn get(&self, path: &str) -> Result<AppAnswer, String> {
        self.call(Method::GET, path, None, Bytes::new(), &[]).await
    }

    /// `POST path` with `body` of `content_type` and extra `headers`.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> Result<AppAnswer, String> {
        self.call(Method::POST, path, Some(content_type), body, headers)
            .await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> Result<AppAnswer, String> {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(body)
            .map_err(|e| format!("request to the app at {path}: {e}"))?;
        let exchange = async {
            let answer = self
                .connection
                .clone()
                .oneshot(request)
                .await
                .map_err(|e| format!("calling the app at {path}: {e}"))?;
            let status = answer.status().as_u16();
            let body = axum::body::to_bytes(Body::new(answer.into_body()), MAX_ANSWER)
                .await
                .map_err(|e| format!("reading the app's answer to {path}: {e}"))?;
            Ok(AppAnswer { status, body })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("the app did not answer {path} within {:?}", self.timeout))?
    }
}
