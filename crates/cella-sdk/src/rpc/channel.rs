//! [`GrpcChannel`]: the stack as a tonic transport. It buffers each request body (unary
//! calls) and turns the stack's own errors into gRPC statuses with fitting codes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use http_body_util::BodyExt;
use tower::{BoxError, Service};

use super::{HttpConnection, RpcStack};
use crate::Error;

/// A channel to a service's instances through the client stack; pass it to any generated
/// tonic client (`FooClient::new(channel)`).
#[derive(Clone)]
pub struct GrpcChannel {
    stack: RpcStack<HttpConnection>,
}

impl std::fmt::Debug for GrpcChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcChannel")
    }
}

impl GrpcChannel {
    /// Wraps a stack built by [`super::stack`].
    pub fn new(stack: RpcStack<HttpConnection>) -> Self {
        GrpcChannel { stack }
    }
}

/// The stack's own failures, and endpoints that cannot be reached, as gRPC statuses; other
/// errors pass unchanged (tonic reads HTTP/2 errors itself).
fn to_status(error: BoxError) -> BoxError {
    let code = match error.downcast_ref::<Error>() {
        Some(Error::NoEndpoints { .. } | Error::Unavailable { .. }) => tonic::Code::Unavailable,
        Some(Error::RateLimited) => tonic::Code::ResourceExhausted,
        Some(Error::DeadlineExceeded { .. }) => tonic::Code::DeadlineExceeded,
        _ => return error,
    };
    Box::new(tonic::Status::new(code, error.to_string()))
}

impl Service<http::Request<tonic::body::Body>> for GrpcChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.stack.poll_ready(cx).map_err(to_status)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // The ready stack answers this call; a fresh clone waits for the next one.
        let fresh = self.stack.clone();
        let mut ready = std::mem::replace(&mut self.stack, fresh);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| to_status(e.into()))?
                .to_bytes();
            let response = ready
                .call(http::Request::from_parts(parts, body))
                .await
                .map_err(to_status)?;
            Ok(response.map(tonic::body::Body::new))
        })
    }
}
