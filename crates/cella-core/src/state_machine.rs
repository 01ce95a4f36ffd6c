//! The Raft state machine: applies committed commands to the store, and snapshots it.
//!
//! The store lives in memory; the Raft log is its write-ahead log. A snapshot file holds the
//! whole store (history since the last compaction included) with the log position it covers:
//!
//! ```text
//! snapshot   [crc32: u32 LE][postcard(SnapshotFile)]   replaced atomically (temp, fsync, rename)
//! ```
//!
//! On start the node loads the snapshot, and openraft re-applies the log after it. Applying is
//! deterministic: every replica gets the same results at the same revisions.

// openraft's storage traits return its (large) StorageError by value.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use cella_proto::cella::core::v1::{self as corepb, command, command_result};
use cella_proto::etcdserverpb as pb;
use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::error::CoreError;
use crate::gateway::ApiError;
use crate::lease::LeaseTimer;
use crate::log_store::{decode_framed, encode_framed, write_atomically};
use crate::metrics;
use crate::mvcc::{Store, StoreImage};
use crate::node::fill_txn_headers;
use crate::types::{Applied, Entry, LogId, NodeId, TypeConfig};
use crate::watch::Interests;

type Membership = StoredMembership<NodeId, openraft::BasicNode>;

/// What the state machine shares with readers: the store, lease timing, progress.
pub(crate) struct Shared {
    pub store: RwLock<Store>,
    pub leases: Mutex<LeaseTimer>,
    /// What running watchers wait on; woken by the batches that change their ranges.
    pub watchers: Arc<Interests>,
    applied: Mutex<(Option<LogId>, Membership)>,
    /// The last log id of the snapshot on disk. Held while a snapshot is written: a build and
    /// an install from the leader can run at once, and they share the temp file, and the
    /// older of two must not replace the newer.
    snapshot_on_disk: Mutex<Option<LogId>>,
}

impl Shared {
    pub fn store(&self) -> std::sync::RwLockReadGuard<'_, Store> {
        self.store
            .read()
            .expect("store lock poisoned only by a panic while applying")
    }

    fn store_mut(&self) -> std::sync::RwLockWriteGuard<'_, Store> {
        self.store
            .write()
            .expect("store lock poisoned only by a panic while applying")
    }

    /// Writes `bytes`, the snapshot up to `last_log_id`, to `path` unless the file already
    /// holds a snapshot as new (blocking: call off the runtime).
    fn persist_snapshot(
        &self,
        path: &Path,
        bytes: &[u8],
        last_log_id: Option<LogId>,
    ) -> std::io::Result<()> {
        let mut on_disk = self
            .snapshot_on_disk
            .lock()
            .expect("snapshot lock poisoned only by a panic");
        if on_disk.is_some() && *on_disk >= last_log_id {
            return Ok(());
        }
        write_atomically(path, bytes)?;
        *on_disk = last_log_id;
        Ok(())
    }

    pub fn leases(&self) -> std::sync::MutexGuard<'_, LeaseTimer> {
        self.leases
            .lock()
            .expect("lease timer lock poisoned only by a panic")
    }

    /// The last applied log position and the membership it carries.
    pub fn applied(&self) -> (Option<LogId>, Membership) {
        self.applied
            .lock()
            .expect("applied lock poisoned only by a panic")
            .clone()
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    image: StoreImage,
}

/// The state machine handed to openraft.
pub(crate) struct StateMachine {
    shared: Arc<Shared>,
    path: PathBuf,
}

fn read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, &std::io::Error::other(e.to_string())).into()
}

fn write_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, &std::io::Error::other(e.to_string())).into()
}

fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotFile, StorageError<NodeId>> {
    decode_framed(bytes).map_err(|e| read_err(format!("snapshot: {e}")))
}

fn encode_snapshot(file: &SnapshotFile) -> Result<Vec<u8>, StorageError<NodeId>> {
    encode_framed(file).map_err(write_err)
}

impl StateMachine {
    /// Opens the state machine at `path` (the snapshot file), loading the snapshot if any.
    pub fn open(path: PathBuf, leases: LeaseTimer) -> Result<Self, StorageError<NodeId>> {
        let (store, applied, membership) = match std::fs::read(&path) {
            Ok(bytes) => {
                let file = decode_snapshot(&bytes)?;
                (
                    Store::from_image(file.image),
                    file.meta.last_log_id,
                    file.meta.last_membership,
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (Store::default(), None, Membership::default())
            }
            Err(e) => return Err(read_err(e)),
        };
        let shared = Arc::new(Shared {
            store: RwLock::new(store),
            leases: Mutex::new(leases),
            watchers: Arc::default(),
            applied: Mutex::new((applied, membership)),
            snapshot_on_disk: Mutex::new(applied),
        });
        {
            let store = shared.store();
            shared
                .leases()
                .reset(store.leases().map(|(id, l)| (id, l.ttl)));
        }
        Ok(Self { shared, path })
    }

    /// The state shared with readers.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

/// Applies one command to the store; a refusal changes nothing and is returned as a result.
fn apply_command(
    store: &mut Store,
    leases: &mut LeaseTimer,
    cmd: &corepb::Command,
) -> corepb::CommandResult {
    let result = match &cmd.op {
        Some(command::Op::Put(req)) => store.put(req).map(command_result::Result::Put),
        Some(command::Op::DeleteRange(req)) => {
            Ok(command_result::Result::DeleteRange(store.delete_range(req)))
        }
        Some(command::Op::Txn(req)) => store.txn(req).map(command_result::Result::Txn),
        Some(command::Op::Compact(req)) => store
            .compact(req.revision)
            .map(|_| command_result::Result::Compact(pb::CompactionResponse::default())),
        Some(command::Op::LeaseGrant(req)) => store.lease_grant(req.id, req.ttl).map(|_| {
            leases.granted(req.id, req.ttl);
            command_result::Result::LeaseGrant(pb::LeaseGrantResponse {
                id: req.id,
                ttl: req.ttl,
                ..Default::default()
            })
        }),
        Some(command::Op::LeaseRevoke(req)) => store.lease_revoke(req.id).map(|_| {
            leases.remove(req.id);
            command_result::Result::LeaseRevoke(pb::LeaseRevokeResponse::default())
        }),
        None => Err(CoreError::InvalidField {
            field: "command.op",
            rule: "must hold one operation",
        }),
    };
    let mut result = result.unwrap_or_else(|e| {
        command_result::Result::Refused(corepb::Refusal {
            code: e.grpc_code() as i32,
            message: e.to_string(),
        })
    });
    // The revision this command left the store at; the answering node adds the rest.
    let header = pb::ResponseHeader {
        revision: store.revision(),
        ..Default::default()
    };
    match &mut result {
        command_result::Result::Put(r) => r.header = Some(header),
        command_result::Result::DeleteRange(r) => r.header = Some(header),
        command_result::Result::Txn(r) => fill_txn_headers(r, &header),
        command_result::Result::Compact(r) => r.header = Some(header),
        command_result::Result::LeaseGrant(r) => r.header = Some(header),
        command_result::Result::LeaseRevoke(r) => r.header = Some(header),
        command_result::Result::Refused(_) => {}
    }
    corepb::CommandResult {
        result: Some(result),
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError<NodeId>> {
        Ok(self.shared.applied())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let started = Instant::now();
        let mut results = Vec::new();
        let before = {
            let mut store = self.shared.store_mut();
            let before = store.revision();
            let mut leases = self.shared.leases();
            let mut applied = self
                .shared
                .applied
                .lock()
                .expect("applied lock poisoned only by a panic");
            for entry in entries {
                applied.0 = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => results.push(Applied::default()),
                    EntryPayload::Normal(batch) => {
                        let applied_batch = batch
                            .0
                            .commands
                            .iter()
                            .map(|cmd| apply_command(&mut store, &mut leases, cmd))
                            .collect();
                        results.push(Applied(corepb::BatchResult {
                            results: applied_batch,
                        }));
                    }
                    EntryPayload::Membership(m) => {
                        applied.1 = StoredMembership::new(Some(entry.log_id), m);
                        results.push(Applied::default());
                    }
                }
            }
            before
        };
        // Watchers are matched under a read lock, so reads need not wait for the scan.
        let store = self.shared.store();
        if store.compact_revision() > before {
            // Compacted into this batch's own changes: their watchers must learn it.
            self.shared.watchers.wake_all();
        } else {
            self.shared
                .watchers
                .wake_changed(store.changed_since(before + 1));
        }
        drop(store);
        metrics::observe_apply(started.elapsed());
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
            path: self.path.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let file = decode_snapshot(&bytes)?;
        let (path, shared, last_log_id) =
            (self.path.clone(), self.shared.clone(), meta.last_log_id);
        tokio::task::spawn_blocking(move || shared.persist_snapshot(&path, &bytes, last_log_id))
            .await
            .map_err(write_err)?
            .map_err(write_err)?;
        let store = Store::from_image(file.image);
        let revision = store.revision();
        self.shared
            .leases()
            .reset(store.leases().map(|(id, l)| (id, l.ttl)));
        *self.shared.store_mut() = store;
        *self
            .shared
            .applied
            .lock()
            .expect("applied lock poisoned only by a panic") =
            (meta.last_log_id, meta.last_membership.clone());
        self.shared.watchers.wake_all();
        tracing::info!(index = ?meta.last_log_id.map(|l| l.index), revision, "installed a snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_err(e)),
        };
        let meta = decode_snapshot(&bytes)?.meta;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

/// Writes the current store to the snapshot file.
pub(crate) struct SnapshotBuilder {
    shared: Arc<Shared>,
    path: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Copy under the read lock (cheap: values are shared buffers), encode outside it.
        let (image, (last_log_id, last_membership)) = {
            let store = self.shared.store();
            (store.image(), self.shared.applied())
        };
        let snapshot_id = last_log_id.map_or_else(
            || "empty".to_string(),
            |l| format!("{}-{}", l.leader_id, l.index),
        );
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let file = SnapshotFile {
            meta: meta.clone(),
            image,
        };
        let (path, shared) = (self.path.clone(), self.shared.clone());
        let bytes =
            tokio::task::spawn_blocking(move || -> Result<Vec<u8>, StorageError<NodeId>> {
                let bytes = encode_snapshot(&file)?;
                shared
                    .persist_snapshot(&path, &bytes, file.meta.last_log_id)
                    .map_err(write_err)?;
                Ok(bytes)
            })
            .await
            .map_err(write_err)??;
        tracing::info!(index = ?meta.last_log_id.map(|l| l.index), bytes = bytes.len(), "snapshot written");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cella_base::ManualClock;
    use openraft::CommittedLeaderId;

    fn log_id(index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(1, 1), index))
    }

    #[test]
    fn snapshot_writes_never_interleave_and_never_go_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("snapshot");
        let clock = Arc::new(ManualClock::new());
        let machine = StateMachine::open(path.clone(), LeaseTimer::new(clock)).expect("open");
        let shared = machine.shared();
        // A build and an install at once, as openraft may run them: they share the temp
        // file, so unserialised one's rename found the other's already gone (ENOENT).
        let writers: Vec<_> = (0..2u64)
            .map(|writer| {
                let (shared, path) = (shared.clone(), path.clone());
                std::thread::spawn(move || {
                    for round in 0..200u64 {
                        let index = round * 2 + writer;
                        let bytes = index.to_le_bytes();
                        shared
                            .persist_snapshot(&path, &bytes, log_id(index))
                            .expect("every write succeeds or is skipped");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("writer thread");
        }
        assert_eq!(
            std::fs::read(&path).expect("snapshot"),
            399u64.to_le_bytes()
        );
        shared
            .persist_snapshot(&path, b"older", log_id(10))
            .expect("skipped");
        assert_eq!(
            std::fs::read(&path).expect("snapshot"),
            399u64.to_le_bytes(),
            "an older snapshot does not replace a newer one"
        );
    }
}
