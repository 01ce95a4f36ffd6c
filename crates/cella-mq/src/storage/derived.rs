//! Files derived from the commitlog, rebuilt from it after a crash:
//!
//! - consume queues, `cq/<topic>/<queue id>.cq`: one 20-byte entry per message of the queue,
//!   `[commitlog offset: u64 LE][record size: u32 LE][tag hash: u64 LE]`; entry `n` is the
//!   message at queue offset `n`. Entries are in commitlog order.
//! - the lookup index, `index/lookup.idx`: 16-byte entries `[hash: u64 LE][commitlog offset:
//!   u64 LE]`, one per message key and one per message id, in commitlog order.
//!
//! Both are written with plain `pwrite`s after their records and fsynced only at a
//! checkpoint. On open, entries pointing at or beyond the replay point (a torn entry, or one
//! written after the last checkpoint) are cut off, and the commitlog from that point is
//! replayed into them; so after recovery they match the commitlog exactly.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{MqError, MqResult};

/// A consume-queue entry's size in bytes.
pub(crate) const CQ_ENTRY: u64 = 20;
/// A lookup-index entry's size in bytes.
pub(crate) const INDEX_ENTRY: u64 = 16;

/// One consume-queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CqEntry {
    /// Where the record starts in the commitlog.
    pub(crate) offset: u64,
    /// The framed record's length.
    pub(crate) size: u32,
    /// The hash of the message's tag.
    pub(crate) tag_hash: u64,
}

impl CqEntry {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.tag_hash.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Self {
            offset: u64_at(0),
            size: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            tag_hash: u64_at(12),
        }
    }
}

/// An append-only file of fixed-size entries, with a count readers can trust.
#[derive(Debug)]
pub(crate) struct EntryFile {
    file: File,
    entry: u64,
    count: AtomicU64,
}

impl EntryFile {
    /// Opens (creating) `path`, cuts a partial last entry and every entry whose commitlog
    /// offset (read by `offset_of`) is at or beyond `replay_from`.
    pub(crate) fn open(
        path: &Path,
        entry: u64,
        replay_from: u64,
        offset_of: fn(&[u8]) -> u64,
    ) -> MqResult<Self> {
        let ctx = || format!("opening {}", path.display());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(MqError::io(ctx()))?;
        let len = file.metadata().map_err(MqError::io(ctx()))?.len();
        let mut count = len / entry;
        let mut buf = vec![0u8; entry as usize];
        while count > 0 {
            file.read_exact_at(&mut buf, (count - 1) * entry)
                .map_err(MqError::io(ctx()))?;
            let zero = buf.iter().all(|b| *b == 0);
            if !zero && offset_of(&buf) < replay_from {
                break;
            }
            count -= 1;
        }
        if count * entry != len {
            file.set_len(count * entry).map_err(MqError::io(ctx()))?;
        }
        Ok(Self {
            file,
            entry,
            count: AtomicU64::new(count),
        })
    }

    /// Entries readers may read.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Writes `bytes` (whole entries) after the last entry, then publishes them.
    pub(crate) fn append(&self, bytes: &[u8]) -> MqResult<()> {
        let count = self.count();
        self.file
            .write_all_at(bytes, count * self.entry)
            .map_err(MqError::io("appending to a consume queue or index"))?;
        self.count
            .store(count + bytes.len() as u64 / self.entry, Ordering::Release);
        Ok(())
    }

    /// Reads entries `[from, from + n)` (clamped to the count) as raw bytes.
    pub(crate) fn read(&self, from: u64, n: u64) -> MqResult<Vec<u8>> {
        let end = (from + n).min(self.count());
        if end <= from {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; ((end - from) * self.entry) as usize];
        self.file
            .read_exact_at(&mut buf, from * self.entry)
            .map_err(MqError::io("reading a consume queue or index"))?;
        Ok(buf)
    }

    /// Fsyncs the file.
    pub(crate) fn sync(&self) -> MqResult<()> {
        self.file
            .sync_data()
            .map_err(MqError::io("syncing a consume queue or index"))
    }
}

/// The commitlog offset in a consume-queue entry.
pub(crate) fn cq_offset(b: &[u8]) -> u64 {
    CqEntry::decode(b).offset
}

/// The commitlog offset in a lookup-index entry.
pub(crate) fn index_offset(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[8..16].try_into().expect("16-byte entry"))
}

/// Decodes consume-queue entries read by [`EntryFile::read`].
pub(crate) fn cq_entries(bytes: &[u8]) -> impl Iterator<Item = CqEntry> + '_ {
    bytes.chunks_exact(CQ_ENTRY as usize).map(CqEntry::decode)
}

/// Decodes lookup-index entries as `(hash, offset)`.
pub(crate) fn index_entries(bytes: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    bytes.chunks_exact(INDEX_ENTRY as usize).map(|b| {
        (
            u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            index_offset(b),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_cuts_partial_entries_and_entries_past_the_replay_point() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.cq");
        let q = EntryFile::open(&path, CQ_ENTRY, 0, cq_offset).unwrap();
        let mut bytes = Vec::new();
        for i in 0..5u64 {
            CqEntry {
                offset: i * 100,
                size: 10,
                tag_hash: i,
            }
            .encode(&mut bytes);
        }
        q.append(&bytes).unwrap();
        assert_eq!(q.count(), 5);
        drop(q);
        // A torn entry at the end, as a crash mid-write leaves it.
        let f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all_at(&[1, 2, 3], 100).unwrap();
        let q = EntryFile::open(&path, CQ_ENTRY, 300, cq_offset).unwrap();
        assert_eq!(q.count(), 3);
        let read: Vec<_> = cq_entries(&q.read(1, 10).unwrap()).collect();
        assert_eq!(
            read,
            vec![
                CqEntry {
                    offset: 100,
                    size: 10,
                    tag_hash: 1
                },
                CqEntry {
                    offset: 200,
                    size: 10,
                    tag_hash: 2
                }
            ]
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 60);
    }
}
