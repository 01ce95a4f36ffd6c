//! One commitlog record: `[len: u32 LE][crc32: u32 LE][payload: len bytes]`, where the
//! payload is a postcard-encoded [`StoredMessage`] and the crc32 (IEEE) covers the payload.
//! A record never has `len == 0`, so a zero length marks the end of a segment's data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{MqError, MqResult};

/// Bytes before a record's payload: its length and its checksum.
pub(crate) const HEADER_LEN: usize = 8;

/// A message as the commitlog keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// The topic it was sent to.
    pub topic: String,
    /// The queue of the topic it is in.
    pub queue_id: u32,
    /// Its position in that queue (0, 1, 2, ...), assigned by the store.
    pub queue_offset: u64,
    /// Its id, unique per broker.
    pub id: u128,
    /// Its tag (empty for none); consumers filter on it.
    pub tag: String,
    /// Its keys, looked up through the key index.
    pub keys: Vec<String>,
    /// Free-form properties.
    pub properties: BTreeMap<String, String>,
    /// The payload.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// When the producer created it (unix milliseconds).
    pub born_ms: u64,
    /// When the broker stored it (unix milliseconds).
    pub stored_ms: u64,
}

/// Appends the framed record of `message` to `out`; returns the framed length.
pub(crate) fn encode_into(message: &StoredMessage, out: &mut Vec<u8>) -> MqResult<usize> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    let payload = postcard::to_extend(message, std::mem::take(out))
        .map_err(|e| MqError::Corrupt(format!("encoding a message: {e}")))?;
    *out = payload;
    let len = out.len() - start - HEADER_LEN;
    let crc = crc32fast::hash(&out[start + HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(HEADER_LEN + len)
}

/// What the bytes at a position of a segment hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// Zeroes: no record starts here (end of data or padding before the next segment).
    Empty,
    /// A whole record with a matching checksum, `len` bytes of payload.
    Valid {
        /// Payload length.
        len: usize,
    },
    /// A record cut short or with a wrong checksum: a torn write.
    Torn,
}

/// Reads a record header, given `header` and a way to read `len` payload bytes after it.
pub(crate) fn classify(
    header: &[u8; HEADER_LEN],
    room: usize,
    payload: impl FnOnce(usize) -> Option<Vec<u8>>,
) -> (Frame, Option<Vec<u8>>) {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 {
        return if crc == 0 {
            (Frame::Empty, None)
        } else {
            (Frame::Torn, None)
        };
    }
    if len > room.saturating_sub(HEADER_LEN) {
        return (Frame::Torn, None);
    }
    match payload(len) {
        Some(bytes) if crc32fast::hash(&bytes) == crc => (Frame::Valid { len }, Some(bytes)),
        _ => (Frame::Torn, None),
    }
}

/// Decodes a record's payload.
pub(crate) fn decode(payload: &[u8]) -> MqResult<StoredMessage> {
    postcard::from_bytes(payload).map_err(|e| MqError::Corrupt(format!("decoding a message: {e}")))
}

/// The 64-bit FNV-1a hash used for tag hashes in consume queues and for the key index.
pub(crate) fn hash64(bytes: &[u8]) -> u64 {
    hash64_parts(&[bytes])
}

/// [`hash64`] of the concatenation of `parts`, without building it.
pub(crate) use cella_base::fnv1a64 as hash64_parts;

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(body: &[u8]) -> StoredMessage {
        StoredMessage {
            topic: "orders".into(),
            queue_id: 2,
            queue_offset: 7,
            id: 42,
            tag: "created".into(),
            keys: vec!["order-1".into()],
            properties: BTreeMap::from([("k".into(), "v".into())]),
            body: body.to_vec(),
            born_ms: 1,
            stored_ms: 2,
        }
    }

    fn read(buf: &[u8]) -> (Frame, Option<Vec<u8>>) {
        let header: [u8; HEADER_LEN] = buf[..HEADER_LEN].try_into().unwrap();
        classify(&header, buf.len(), |len| {
            buf.get(HEADER_LEN..HEADER_LEN + len).map(<[u8]>::to_vec)
        })
    }

    #[test]
    fn a_record_round_trips_and_any_flipped_byte_is_torn() {
        let msg = sample(b"hello");
        let mut buf = Vec::new();
        let n = encode_into(&msg, &mut buf).unwrap();
        assert_eq!(n, buf.len());
        let (frame, payload) = read(&buf);
        assert_eq!(
            frame,
            Frame::Valid {
                len: n - HEADER_LEN
            }
        );
        assert_eq!(decode(&payload.unwrap()).unwrap(), msg);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert_ne!(
                read(&bad).0,
                Frame::Valid {
                    len: n - HEADER_LEN
                },
                "flip at {i}"
            );
        }
    }

    #[test]
    fn zeroes_are_empty_and_a_cut_record_is_torn() {
        assert_eq!(read(&[0u8; 64]).0, Frame::Empty);
        let mut buf = Vec::new();
        encode_into(&sample(b"abc"), &mut buf).unwrap();
        assert_eq!(read(&buf[..buf.len() - 1]).0, Frame::Torn);
    }
}
