//! Watches: a stream of the changes to a key or a prefix, from a start revision on.
//!
//! Each watch has its own gRPC stream; dropping the [`WatchStream`] cancels it. Changes arrive
//! in [`WatchBatch`]es, one per revision (or a few revisions) as the server groups them; a batch
//! with no events is a progress notification. A start revision older than the compaction point
//! ends the watch with [`Error::Compacted`], from [`Watcher::watch`] or as the stream's first
//! item.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use cella_proto::etcdserverpb as pb;
use cella_proto::etcdserverpb::watch_client::WatchClient;
use cella_proto::mvccpb;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Transport;
use crate::kv::{header_revision, KeyRange, KeyValue};
use crate::{Error, Result, Revision};

/// What a watch reports, and from when.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    start_revision: Option<Revision>,
    prev_kv: bool,
    progress_notify: bool,
}

impl WatchOptions {
    /// The defaults: changes after the current revision, without previous values.
    pub fn new() -> Self {
        Self::default()
    }

    /// Delivers history from `revision` on (inclusive) before live changes.
    pub fn start_revision(mut self, revision: Revision) -> Self {
        self.start_revision = Some(revision);
        self
    }

    /// Includes each key's previous value in its events.
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    /// Asks the server for periodic empty batches carrying the current revision.
    pub fn progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }

    fn into_request(self, keys: KeyRange) -> pb::WatchRequest {
        let (key, range_end) = keys.into_wire();
        let create = pb::WatchCreateRequest {
            key,
            range_end,
            start_revision: self.start_revision.map_or(0, |revision| revision.0),
            progress_notify: self.progress_notify,
            prev_kv: self.prev_kv,
            ..Default::default()
        };
        pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
        }
    }
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete only `key` and `mod_revision` are meaningful.
    pub kv: KeyValue,
    /// The key before the change, when the watch asked for it and the key existed.
    pub prev_kv: Option<KeyValue>,
}

impl From<mvccpb::Event> for Event {
    fn from(event: mvccpb::Event) -> Self {
        let kind = match event.r#type() {
            mvccpb::event::EventType::Put => EventKind::Put,
            mvccpb::event::EventType::Delete => EventKind::Delete,
        };
        Event {
            kind,
            kv: event.kv.unwrap_or_default().into(),
            prev_kv: event.prev_kv.map(KeyValue::from),
        }
    }
}

/// Events delivered together; empty for a progress notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    /// The store's revision when the server sent the batch.
    pub revision: Revision,
    /// The changes, in revision order.
    pub events: Vec<Event>,
}

/// The Watch service.
#[derive(Debug, Clone)]
pub struct Watcher {
    client: WatchClient<Transport>,
}

impl Watcher {
    pub(crate) fn new(transport: Transport) -> Self {
        Watcher {
            client: WatchClient::new(transport),
        }
    }

    /// Starts watching `keys`; returns once the server has registered the watch, so every
    /// later write to `keys` is seen.
    pub async fn watch(&self, keys: KeyRange, options: WatchOptions) -> Result<WatchStream> {
        // Queued before the call: servers send response headers with their first message.
        let (requests, queued) = mpsc::channel(1);
        requests
            .try_send(options.into_request(keys))
            .expect("a new channel has room for one request");
        let call = self
            .client
            .clone()
            .watch(ReceiverStream::new(queued))
            .await?;
        let mut responses = call.into_inner();
        let first = match responses.message().await? {
            Some(response) => read_response(response)?,
            None => return Err(Error::StreamClosed { stream: "watch" }),
        };
        Ok(WatchStream {
            _requests: requests,
            responses,
            pending: first.into_batch(),
            finished: false,
        })
    }
}

/// The changes seen by one watch; dropping it cancels the watch.
///
/// Yields batches until the server ends the watch; the reason (compaction, cancellation,
/// a broken connection) comes as a final `Err`.
#[derive(Debug)]
pub struct WatchStream {
    /// Held so the request side of the stream stays open while the watch lives.
    _requests: mpsc::Sender<pb::WatchRequest>,
    responses: tonic::Streaming<pb::WatchResponse>,
    /// A batch that came with the creation acknowledgement.
    pending: Option<WatchBatch>,
    finished: bool,
}

impl Stream for WatchStream {
    type Item = Result<WatchBatch>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(batch) = this.pending.take() {
            return Poll::Ready(Some(Ok(batch)));
        }
        while !this.finished {
            let error = match ready!(Pin::new(&mut this.responses).poll_next(cx)) {
                Some(Ok(response)) => match read_response(response) {
                    Ok(Reply::Batch(batch)) => return Poll::Ready(Some(Ok(batch))),
                    Ok(Reply::Created) => continue,
                    Err(error) => error,
                },
                Some(Err(status)) => status.into(),
                None => Error::StreamClosed { stream: "watch" },
            };
            this.finished = true;
            return Poll::Ready(Some(Err(error)));
        }
        Poll::Ready(None)
    }
}

/// What one WatchResponse means to the watcher.
#[derive(Debug, PartialEq)]
enum Reply {
    /// The watch was registered; nothing to deliver.
    Created,
    /// Events (or a progress notification) to deliver.
    Batch(WatchBatch),
}

impl Reply {
    fn into_batch(self) -> Option<WatchBatch> {
        match self {
            Reply::Created => None,
            Reply::Batch(batch) => Some(batch),
        }
    }
}

/// Reads a WatchResponse: compaction and cancellation end the watch as errors.
fn read_response(response: pb::WatchResponse) -> Result<Reply> {
    if response.compact_revision != 0 {
        return Err(Error::Compacted {
            compact_revision: Revision(response.compact_revision),
        });
    }
    if response.canceled {
        let reason = if response.cancel_reason.is_empty() {
            "no reason given".to_owned()
        } else {
            response.cancel_reason
        };
        return Err(Error::WatchCanceled { reason });
    }
    if response.created && response.events.is_empty() {
        return Ok(Reply::Created);
    }
    Ok(Reply::Batch(WatchBatch {
        revision: header_revision(response.header.as_ref()),
        events: response.events.into_iter().map(Event::from).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn header(revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            revision,
            ..Default::default()
        })
    }

    #[test]
    fn compaction_is_an_error_carrying_the_compact_revision() {
        let response = pb::WatchResponse {
            canceled: true,
            compact_revision: 42,
            ..Default::default()
        };
        assert!(matches!(
            read_response(response),
            Err(Error::Compacted {
                compact_revision: Revision(42)
            })
        ));
    }

    #[test]
    fn cancellation_keeps_the_server_reason() {
        let response = pb::WatchResponse {
            created: true,
            canceled: true,
            cancel_reason: "permission denied".to_owned(),
            ..Default::default()
        };
        let error = read_response(response).expect_err("canceled");
        assert_eq!(
            error.to_string(),
            "watch canceled by the server: permission denied"
        );
    }

    #[test]
    fn creation_ack_delivers_nothing() {
        let response = pb::WatchResponse {
            created: true,
            header: header(5),
            ..Default::default()
        };
        assert_eq!(read_response(response).ok(), Some(Reply::Created));
    }

    #[test]
    fn progress_notification_is_an_empty_batch() {
        let response = pb::WatchResponse {
            header: header(9),
            ..Default::default()
        };
        let expected = WatchBatch {
            revision: Revision(9),
            events: Vec::new(),
        };
        assert_eq!(read_response(response).ok(), Some(Reply::Batch(expected)));
    }

    #[test]
    fn events_keep_kind_and_previous_value() {
        let kv = |value: &'static [u8], revision| mvccpb::KeyValue {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(value),
            mod_revision: revision,
            ..Default::default()
        };
        let response = pb::WatchResponse {
            header: header(8),
            events: vec![mvccpb::Event {
                r#type: mvccpb::event::EventType::Delete.into(),
                kv: Some(kv(b"", 8)),
                prev_kv: Some(kv(b"old", 7)),
            }],
            ..Default::default()
        };
        let Ok(Reply::Batch(batch)) = read_response(response) else {
            panic!("expected a batch");
        };
        let event = &batch.events[0];
        assert_eq!(event.kind, EventKind::Delete);
        assert_eq!(event.kv.mod_revision, Revision(8));
        assert_eq!(
            event.prev_kv.as_ref().map(|kv| kv.value.clone()),
            Some(Bytes::from_static(b"old"))
        );
    }
}
