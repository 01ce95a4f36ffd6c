//! The server side of the producer wire ([`cella_proto::mq_wire`]): the upgrade route and
//! one task per connection that reads frames, runs their sends concurrently and writes each
//! answer as its send completes. Answers are written by the same task, between reads, so a
//! lone producer's send costs no hand-over between tasks on its way in or out.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use cella_core::gateway::ApiError;
use cella_proto::cella::mq::v1 as pb;
use cella_proto::mq_wire::{self, Frame, Kind};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::api::Api;
use crate::error::MqError;

/// Sends one connection may have running; past this it stops reading until one completes.
const MAX_IN_FLIGHT: usize = 1024;
/// Read buffer to start with; it grows to the largest frame seen.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// `GET /v1/mq/wire` with `Upgrade: cella-mq.v1`: switches the connection to frames.
pub(crate) async fn upgrade(State(api): State<Api>, mut req: Request) -> Response {
    let wanted = req.headers().get(header::UPGRADE).is_some_and(|v| {
        v.as_bytes()
            .eq_ignore_ascii_case(mq_wire::PROTOCOL.as_bytes())
    });
    if !wanted {
        let message = format!(
            "header `upgrade` must be `{}` to open the producer wire",
            mq_wire::PROTOCOL
        );
        return (StatusCode::BAD_REQUEST, message).into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(api, TokioIo::new(upgraded)).await,
            Err(e) => tracing::debug!(error = %e, "producer wire: upgrade failed"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static(mq_wire::PROTOCOL)),
        ],
    )
        .into_response()
}

/// Serves frames on `io` until the client closes it or sends a frame that cannot be read.
async fn serve(api: Api, mut io: impl AsyncRead + AsyncWrite + Unpin) {
    let mut input = BytesMut::with_capacity(READ_BUFFER_BYTES);
    let mut output = BytesMut::new();
    let mut in_flight = FuturesUnordered::new();
    let mut reading = true;
    while reading || !in_flight.is_empty() {
        tokio::select! {
            Some((id, answer)) = in_flight.next(), if !in_flight.is_empty() => {
                write_reply(&mut output, id, answer);
                // Every other answer already done leaves in the same write.
                while let Some(Some((id, answer))) = in_flight.next().now_or_never() {
                    write_reply(&mut output, id, answer);
                }
            }
            read = io.read_buf(&mut input), if reading && in_flight.len() < MAX_IN_FLIGHT => {
                match read {
                    Ok(0) | Err(_) => reading = false,
                    Ok(_) => loop {
                        match mq_wire::decode(&mut input) {
                            Ok(Some(frame)) => in_flight.push(answer(api.clone(), frame)),
                            Ok(None) => break,
                            Err(e) => {
                                tracing::debug!(error = %e, "producer wire: closing on a bad frame");
                                let refusal = Reply::refused(tonic::Code::InvalidArgument, e.to_string());
                                write_reply(&mut output, 0, refusal);
                                reading = false;
                                break;
                            }
                        }
                    },
                }
            }
        }
        if !output.is_empty() {
            if io.write_all(&output).await.is_err() {
                return;
            }
            output.clear();
        }
    }
    let _ = io.shutdown().await;
}

/// What a request frame is answered with.
enum Reply {
    Sent(pb::SendResponse),
    SentBatch(pb::SendBatchResponse),
    Refused(pb::WireError),
}

impl Reply {
    fn refused(code: tonic::Code, message: String) -> Reply {
        Reply::Refused(pb::WireError {
            code: code as i32,
            message,
        })
    }
}

impl From<MqError> for Reply {
    fn from(e: MqError) -> Reply {
        Reply::refused(e.grpc_code(), e.to_string())
    }
}

/// Runs one request frame.
async fn answer(api: Api, frame: Frame) -> (u64, Reply) {
    let id = frame.id;
    let unreadable = |what: &str, e: prost::DecodeError| {
        let message = format!("frame {id}: the body is not a {what}: {e}");
        Reply::refused(tonic::Code::InvalidArgument, message)
    };
    let reply = match frame.kind {
        Some(Kind::Send) => match frame.decode::<pb::SendRequest>() {
            Ok(req) => api.send(req).await.map_or_else(Reply::from, Reply::Sent),
            Err(e) => unreadable("cella.mq.v1.SendRequest", e),
        },
        Some(Kind::SendBatch) => match frame.decode::<pb::SendBatchRequest>() {
            Ok(req) => api
                .send_batch(req)
                .await
                .map_or_else(Reply::from, Reply::SentBatch),
            Err(e) => unreadable("cella.mq.v1.SendBatchRequest", e),
        },
        Some(Kind::Error) | None => Reply::refused(
            tonic::Code::InvalidArgument,
            format!("frame {id}: the kind must be Send (1) or SendBatch (2)"),
        ),
    };
    (id, reply)
}

fn write_reply(out: &mut BytesMut, id: u64, reply: Reply) {
    match reply {
        Reply::Sent(r) => mq_wire::encode(out, id, Kind::Send, &r),
        Reply::SentBatch(r) => mq_wire::encode(out, id, Kind::SendBatch, &r),
        Reply::Refused(e) => mq_wire::encode(out, id, Kind::Error, &e),
    }
}
