//! The broker's producer wire: length-prefixed frames on a plain TCP connection, for sends,
//! the one call where gRPC's per-call cost (HTTP/2 framing, a task per stream) would be most
//! of a small message's latency. RocketMQ and NATS producers speak such protocols too.
//!
//! A client opens it on the node's usual port with an HTTP/1.1 upgrade: `GET` [`PATH`] with
//! `Connection: Upgrade` and `Upgrade:` [`PROTOCOL`]; after `101 Switching Protocols` both
//! sides exchange frames:
//!
//! ```text
//! u32 (big-endian)  length of the rest, at most MAX_FRAME_BYTES
//! u64 (big-endian)  request id, chosen by the client; the answer carries the same id
//! u8                kind
//! ...               body: one protobuf message of cella.mq.v1, chosen by the kind
//! ```
//!
//! Requests are `Send` (SendRequest) and `SendBatch` (SendBatchRequest); the answer has the
//! same kind (SendResponse / SendBatchResponse) or `Error` (WireError, with the gRPC status
//! code the same refusal has over gRPC). Requests are pipelined: a client may send many
//! before the first answer, and answers come in the order the sends complete.

use prost::bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

/// Path of the upgrade request.
pub const PATH: &str = "/v1/mq/wire";
/// Value of the `Upgrade` header, naming this protocol and its version.
pub const PROTOCOL: &str = "cella-mq.v1";
/// Largest frame (after its length field) either side accepts.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// Bytes before a frame's body: length, id and kind.
const HEADER_BYTES: usize = 4 + 8 + 1;

/// What a frame's body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One message: SendRequest, answered by SendResponse.
    Send,
    /// Many messages of one topic: SendBatchRequest, answered by SendBatchResponse.
    SendBatch,
    /// A refused request's answer: WireError.
    Error,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Send => 1,
            Kind::SendBatch => 2,
            Kind::Error => 255,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        match code {
            1 => Some(Kind::Send),
            2 => Some(Kind::SendBatch),
            255 => Some(Kind::Error),
            _ => None,
        }
    }
}

/// One frame read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The request id.
    pub id: u64,
    /// What the body is; `None` for a kind this side does not know.
    pub kind: Option<Kind>,
    /// The body, still encoded.
    pub body: Bytes,
}

impl Frame {
    /// Decodes the body as `M`.
    pub fn decode<M: Message + Default>(&self) -> Result<M, prost::DecodeError> {
        M::decode(self.body.clone())
    }
}

/// A frame whose length is out of range: the stream cannot be trusted past it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrameLength {
    /// Its declared length.
    pub len: usize,
}

impl std::fmt::Display for BadFrameLength {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "frame length {} must be {} to {MAX_FRAME_BYTES} bytes",
            self.len,
            HEADER_BYTES - 4
        )
    }
}

impl std::error::Error for BadFrameLength {}

/// Appends a frame with `body` to `out`.
pub fn encode(out: &mut BytesMut, id: u64, kind: Kind, body: &impl Message) {
    let len = body.encoded_len();
    out.reserve(HEADER_BYTES + len);
    out.put_u32((HEADER_BYTES - 4 + len) as u32);
    out.put_u64(id);
    out.put_u8(kind.code());
    body.encode_raw(out);
}

/// Takes the first whole frame off `buf`, or `None` until one has arrived.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, BadFrameLength> {
    let Some(mut header) = buf.get(..4) else {
        return Ok(None);
    };
    let len = header.get_u32() as usize;
    if !(HEADER_BYTES - 4..=MAX_FRAME_BYTES).contains(&len) {
        return Err(BadFrameLength { len });
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let mut frame = buf.split_to(len);
    let id = frame.get_u64();
    let kind = Kind::from_code(frame.get_u8());
    Ok(Some(Frame {
        id,
        kind,
        body: frame.freeze(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cella::mq::v1 as pb;

    #[test]
    fn frames_round_trip_whole_and_in_pieces() {
        let request = pb::SendRequest {
            topic: "orders".into(),
            body: Bytes::from_static(b"created #1"),
            ..Default::default()
        };
        let mut wire = BytesMut::new();
        encode(&mut wire, 7, Kind::Send, &request);
        encode(&mut wire, 8, Kind::Error, &pb::WireError::default());
        let whole = wire.clone().freeze();

        // Byte by byte, as a slow socket might deliver it.
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in whole.iter() {
            buf.put_u8(*byte);
            while let Some(frame) = decode(&mut buf).expect("valid frames") {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].id, 7);
        assert_eq!(frames[0].kind, Some(Kind::Send));
        assert_eq!(frames[0].decode::<pb::SendRequest>(), Ok(request));
        assert_eq!(frames[1].kind, Some(Kind::Error));
        assert!(buf.is_empty());
    }

    #[test]
    fn unknown_kinds_pass_and_bad_lengths_are_refused() {
        let mut buf = BytesMut::new();
        buf.put_u32(9);
        buf.put_u64(3);
        buf.put_u8(42);
        let frame = decode(&mut buf).expect("valid length").expect("whole");
        assert_eq!((frame.id, frame.kind), (3, None));

        buf.put_u32(MAX_FRAME_BYTES as u32 + 1);
        assert_eq!(
            decode(&mut buf),
            Err(BadFrameLength {
                len: MAX_FRAME_BYTES + 1
            })
        );
        let mut short = BytesMut::new();
        short.put_u32(3);
        assert!(decode(&mut short).is_err());
    }
}
