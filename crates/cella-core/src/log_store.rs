//! The Raft log on disk: append-only segment files of checksummed records, group-committed.
//!
//! Layout under the log directory:
//!
//! ```text
//! <first index, 20 digits>.seg   records, each [len: u32 LE][crc32 of payload: u32 LE][payload]
//!                                where payload = postcard(Entry), then zeros to the end
//! spare.seg                      the next segment, already written with zeros
//! vote                           [crc32: u32 LE][postcard(Vote)]
//! purged                         [crc32: u32 LE][postcard(LogId)]: entries up to it are gone
//! ```
//!
//! Segments are created at their full size (64 MiB) by writing zeros, off the write path (a
//! spare is prepared in the background), so appends overwrite allocated blocks and
//! `fdatasync` flushes data only, with no file-size or extent metadata to journal. A record
//! never starts with a zero length, so the first zero length ends a segment's records.
//!
//! Crash guarantees: `append` reports an entry flushed only after `fdatasync` of its segment,
//! and one `fdatasync` covers every append queued meanwhile (group commit). A record cut short
//! or failing its checksum at the tail of the last segment is a write that was never
//! acknowledged; recovery drops it and zeroes it out. Damage anywhere else refuses to start,
//! because acknowledged entries would be lost. `vote` and `purged` are replaced
//! atomically (write a temp file, fsync, rename, fsync the directory).
//!
//! All writes run on one thread in submission order, as openraft requires; readers see
//! appended entries at once through an in-memory copy of the unpurged log.

// openraft's storage traits return its (large) StorageError by value.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{EntryPayload, LogState, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::metrics;
use crate::types::{Entry, LogId, NodeId, TypeConfig};

/// Size a segment is created at; a segment rolls when the next write would not fit.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const SPARE_SEGMENT: &str = "spare.seg";
const RECORD_HEADER: usize = 8;

/// The unpurged log, vote and purge point as seen by readers.
#[derive(Default)]
struct LogCache {
    entries: VecDeque<Entry>,
    purged: Option<LogId>,
    vote: Option<Vote<NodeId>>,
}

impl LogCache {
    fn first_index(&self) -> u64 {
        self.entries.front().map_or_else(
            || self.purged.map_or(0, |p| p.index + 1),
            |e| e.log_id.index,
        )
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.entries.back().map(|e| e.log_id).or(self.purged)
    }
}

/// The Raft log storage handed to openraft.
#[derive(Clone)]
pub(crate) struct LogStore {
    cache: Arc<Mutex<LogCache>>,
    writer: mpsc::Sender<WriteOp>,
    /// The files, shared with the writer thread, which locks them for each batch.
    segments: Arc<Mutex<SegmentWriter>>,
    /// Writes sent to the writer thread and not yet done.
    queued: Arc<AtomicUsize>,
    /// Whether an append may be written and fsynced by its caller; see [`LogStore::set_sole_voter`].
    sole_voter: Arc<AtomicBool>,
    /// Counts the writer's fsyncs of appends; see [`LogStore::flushes`].
    flushes: watch::Receiver<u64>,
}

/// Told once an append is durable, or that it failed.
type AppendDone = Box<dyn FnOnce(io::Result<()>) + Send>;

enum WriteOp {
    Append(Vec<u8>, Option<u64>, AppendDone),
    Truncate(u64, oneshot::Sender<io::Result<()>>),
    Purge(LogId, oneshot::Sender<io::Result<()>>),
    SaveVote(Vote<NodeId>, oneshot::Sender<io::Result<()>>),
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn storage_err(e: io::Error) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

fn writer_stopped() -> StorageError<NodeId> {
    storage_err(io_err("raft log writer stopped"))
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, recovering from a torn tail, and starts its
    /// writer thread.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        // A committed vote would make openraft resume as leader of its old term without
        // knowing the commit index, so its first read index could predate acknowledged
        // writes. Reopened as uncommitted, the node wins a new term (and commits a fresh
        // entry) before it leads again.
        let vote = read_small_file::<Vote<NodeId>>(&dir.join("vote"))?
            .map(|v| Vote::new(v.leader_id.term, v.leader_id.node_id));
        let purged = read_small_file::<LogId>(&dir.join("purged"))?;
        let Recovered {
            segments,
            entries,
            end_of_records,
        } = recover_segments(dir, purged)?;
        let cache = Arc::new(Mutex::new(LogCache {
            entries: entries.iter().map(|(e, _)| e.clone()).collect(),
            purged,
            vote,
        }));
        let positions = entries
            .iter()
            .map(|(e, pos)| (e.log_id.index, *pos))
            .collect();
        let (flushed, flushes) = watch::channel(0);
        let writer = SegmentWriter::open(
            dir.to_path_buf(),
            segments,
            positions,
            end_of_records,
            flushed,
        )?;
        let segments = Arc::new(Mutex::new(writer));
        let queued = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("cella-raft-log".into())
            .spawn({
                let (segments, queued) = (Arc::clone(&segments), Arc::clone(&queued));
                move || SegmentWriter::run(&segments, &queued, rx)
            })?;
        Ok(Self {
            cache,
            writer: tx,
            segments,
            queued,
            sole_voter: Arc::new(AtomicBool::new(false)),
            flushes,
        })
    }

    /// Tells the log whether this member is the cluster's only voter. Then nothing waits
    /// to replicate an entry while it is written, and openraft's next append waits for its
    /// flush anyway, so a lone write (an append of at most one command) made while the
    /// writer thread is idle is written and fsynced by its caller: the two hand-overs
    /// between threads that the thread would cost (tens of µs each on a busy machine) leave
    /// its path. In a cluster the leader must start replicating at once, so appends go
    /// through the thread.
    pub(crate) fn set_sole_voter(&self, sole: bool) {
        self.sole_voter.store(sole, Ordering::Relaxed);
    }

    /// Changes after every fsync of appended entries, failed or not: openraft 0.9 takes the
    /// next entry only once the last is flushed, so this is when a new entry can start.
    pub(crate) fn flushes(&self) -> watch::Receiver<u64> {
        self.flushes.clone()
    }

    /// The id of the last entry, appended or purged.
    pub(crate) fn last_log_id(&self) -> Option<LogId> {
        self.cache().last_log_id()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LogCache> {
        self.cache
            .lock()
            .expect("log cache lock poisoned only if a reader panicked")
    }

    async fn request(
        &self,
        op: impl FnOnce(oneshot::Sender<io::Result<()>>) -> WriteOp,
    ) -> Result<(), StorageError<NodeId>> {
        let (tx, rx) = oneshot::channel();
        self.send(op(tx))?;
        rx.await.map_err(|_| writer_stopped())?.map_err(storage_err)
    }

    /// Hands `op` to the writer thread, counted in `queued` until the thread has done it.
    fn send(&self, op: WriteOp) -> Result<(), StorageError<NodeId>> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.writer.send(op).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            writer_stopped()
        })
    }

    /// Makes entries visible to readers at once and has them written (see
    /// [`LogStore::set_sole_voter`]); `done` is called after the fsync that covers them.
    fn queue_append(
        &self,
        entries: impl IntoIterator<Item = Entry>,
        done: AppendDone,
    ) -> Result<(), StorageError<NodeId>> {
        let mut buf = Vec::new();
        let mut first_index = None;
        let mut commands = 0;
        {
            let mut cache = self.cache();
            for entry in entries {
                first_index.get_or_insert(entry.log_id.index);
                if let EntryPayload::Normal(batch) = &entry.payload {
                    commands += batch.0.commands.len();
                }
                encode_record(&mut buf, &entry).map_err(storage_err)?;
                cache.entries.push_back(entry);
            }
        }
        let op = WriteOp::Append(buf, first_index, done);
        // A group commit (several commands) goes to the thread, so both runtime workers keep
        // serving while it syncs: written here, config publishes/s at 16 clients fell ~15%.
        if commands <= 1 && self.sole_voter.load(Ordering::Relaxed) {
            if let Ok(mut segments) = self.segments.try_lock() {
                // Nothing queued before it, so it is written in order.
                if self.queued.load(Ordering::Acquire) == 0 {
                    segments.serve(vec![op]);
                    return Ok(());
                }
            }
        }
        self.send(op)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let cache = self.cache();
        let first = cache.first_index();
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => first,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i + 1,
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        let from = start.saturating_sub(first) as usize;
        let to = (end.saturating_sub(first) as usize).min(cache.entries.len());
        Ok(if from < to {
            cache.entries.range(from..to).cloned().collect()
        } else {
            Vec::new()
        })
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let cache = self.cache();
        Ok(LogState {
            last_purged_log_id: cache.purged,
            last_log_id: cache.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let v = *vote;
        self.request(|tx| WriteOp::SaveVote(v, tx)).await?;
        self.cache().vote = Some(v);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.cache().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        self.queue_append(
            entries,
            Box::new(move |result| callback.log_io_completed(result)),
        )
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        {
            let mut cache = self.cache();
            let keep = log_id.index.saturating_sub(cache.first_index()) as usize;
            cache.entries.truncate(keep);
        }
        self.request(|tx| WriteOp::Truncate(log_id.index, tx)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        {
            let mut cache = self.cache();
            while cache
                .entries
                .front()
                .is_some_and(|e| e.log_id.index <= log_id.index)
            {
                cache.entries.pop_front();
            }
            cache.purged = Some(log_id);
        }
        self.request(|tx| WriteOp::Purge(log_id, tx)).await
    }
}

fn encode_record<T: Serialize>(buf: &mut Vec<u8>, value: &T) -> io::Result<()> {
    let payload = postcard::to_allocvec(value).map_err(io_err)?;
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    buf.extend_from_slice(&payload);
    Ok(())
}

/// Decodes the record at the start of `bytes`: its value and length, or None if torn.
fn decode_record<T: DeserializeOwned>(bytes: &[u8]) -> Option<(T, usize)> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let payload = bytes.get(RECORD_HEADER..RECORD_HEADER + len)?;
    if len == 0 || crc32fast::hash(payload) != crc {
        return None;
    }
    Some((postcard::from_bytes(payload).ok()?, RECORD_HEADER + len))
}

/// Encodes a value as `[crc32: u32 LE][postcard(value)]`, the framing of small files and
/// snapshots.
pub(crate) fn encode_framed<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let payload = postcard::to_allocvec(value).map_err(io_err)?;
    let mut bytes = crc32fast::hash(&payload).to_le_bytes().to_vec();
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// Decodes what [`encode_framed`] wrote, checking the checksum.
pub(crate) fn decode_framed<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    let crc = bytes
        .get(0..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes);
    let payload = bytes.get(4..).unwrap_or_default();
    if crc != Some(crc32fast::hash(payload)) {
        return Err(io_err("checksum mismatch"));
    }
    postcard::from_bytes(payload).map_err(io_err)
}

fn read_small_file<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => decode_framed(&bytes)
            .map(Some)
            .map_err(|e| io_err(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces a small file atomically and durably.
pub(crate) fn write_small_file<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    write_atomically(path, &encode_framed(value)?)
}

/// Writes `bytes` to `path` through a temp file, fsync and rename, then fsyncs the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes a segment-sized file of zeros through a temp name, durably.
fn write_zeroed_segment(path: &Path) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..SEGMENT_BYTES / zeros.len() as u64 {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// What recovery found on disk.
struct Recovered {
    /// First index of each segment, in order.
    segments: Vec<u64>,
    /// Entries after the purge point, with their positions.
    entries: Vec<(Entry, Position)>,
    /// Where the last segment's records end.
    end_of_records: u64,
}

/// Where a record sits: segment (by its first index) and byte offset.
type Position = (u64, u64);

fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}.seg"))
}

/// Reads every segment in order; returns segment first indexes and the entries after the
/// purge point with their positions, and where the last segment's records end. Wipes a
/// torn tail of the last segment.
fn recover_segments(dir: &Path, purged: Option<LogId>) -> io::Result<Recovered> {
    let mut segments: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
        .collect();
    segments.sort_unstable();
    let mut entries: Vec<(Entry, Position)> = Vec::new();
    let mut end_of_records = 0;
    for (n, &first) in segments.iter().enumerate() {
        let path = segment_path(dir, first);
        let mut bytes = Vec::new();
        File::open(&path)?.read_to_end(&mut bytes)?;
        let mut offset = 0usize;
        while offset < bytes.len() {
            let Some((entry, len)) = decode_record::<Entry>(&bytes[offset..]) else {
                break;
            };
            let expected = entries.last().map(|(e, _)| e.log_id.index + 1);
            if expected.is_some_and(|i| i != entry.log_id.index) {
                return Err(io_err(format!(
                    "{}: entry {} follows {:?}",
                    path.display(),
                    entry.log_id.index,
                    expected
                )));
            }
            entries.push((entry, (first, offset as u64)));
            offset += len;
        }
        end_of_records = offset as u64;
        // Past the last record: zeros, or in the last segment a torn write to wipe.
        if let Some(dirty_end) = bytes.iter().rposition(|b| *b != 0).filter(|e| *e >= offset) {
            if n + 1 != segments.len() {
                return Err(io_err(format!(
                    "{}: damaged record at offset {offset} before the last segment",
                    path.display()
                )));
            }
            tracing::warn!(segment = %path.display(), offset, dropped = dirty_end + 1 - offset, "wiping torn tail of the raft log");
            let file = OpenOptions::new().write(true).open(&path)?;
            file.write_all_at(&vec![0; dirty_end + 1 - offset], offset as u64)?;
            file.sync_all()?;
        }
    }
    let purged_index = purged.map(|p| p.index);
    entries.retain(|(e, _)| purged_index.is_none_or(|p| e.log_id.index > p));
    Ok(Recovered {
        segments,
        entries,
        end_of_records,
    })
}

/// The single writer: owns the segment files and performs every write in order.
struct SegmentWriter {
    dir: PathBuf,
    segments: Vec<u64>,
    /// Position of every entry in the segments, oldest first.
    positions: VecDeque<(u64, Position)>,
    /// The open segment: first index, file, end of its records.
    current: Option<(u64, File, u64)>,
    /// The background preparation of the next segment, if running.
    spare: Option<std::thread::JoinHandle<io::Result<()>>>,
    /// Bumped after each fsync of appends.
    flushed: watch::Sender<u64>,
}

impl SegmentWriter {
    fn open(
        dir: PathBuf,
        segments: Vec<u64>,
        positions: VecDeque<(u64, Position)>,
        end_of_records: u64,
        flushed: watch::Sender<u64>,
    ) -> io::Result<Self> {
        let current = match segments.last() {
            Some(&first) => {
                let file = OpenOptions::new()
                    .write(true)
                    .open(segment_path(&dir, first))?;
                Some((first, file, end_of_records))
            }
            None => None,
        };
        let mut writer = Self {
            dir,
            segments,
            positions,
            current,
            spare: None,
            flushed,
        };
        writer.prepare_spare();
        Ok(writer)
    }

    /// The writer thread: serves what is queued, in batches, until the log is dropped.
    fn run(segments: &Mutex<SegmentWriter>, queued: &AtomicUsize, rx: mpsc::Receiver<WriteOp>) {
        while let Ok(op) = rx.recv() {
            // Everything queued while the last fsync ran shares the next one.
            let mut batch = vec![op];
            batch.extend(rx.try_iter());
            let count = batch.len();
            let mut writer = segments.lock().expect("raft log writer lock poisoned");
            writer.serve(batch);
            queued.fetch_sub(count, Ordering::AcqRel);
        }
    }

    /// Performs `batch` in order, with one fsync for all its appends.
    fn serve(&mut self, batch: Vec<WriteOp>) {
        let mut flushed = Vec::new();
        let mut failure: Option<String> = None;
        for op in batch {
            match op {
                WriteOp::Append(buf, first_index, done) => {
                    let res = match (&failure, first_index) {
                        (Some(e), _) => Err(io_err(e)),
                        (None, Some(first)) => self.append(&buf, first),
                        (None, None) => Ok(()),
                    };
                    match res {
                        Ok(()) => flushed.push(done),
                        Err(e) => {
                            failure = Some(e.to_string());
                            done(Err(e));
                        }
                    }
                }
                WriteOp::Truncate(index, done) => {
                    let _ = done.send(self.sync().and_then(|_| self.truncate(index)));
                }
                WriteOp::Purge(log_id, done) => {
                    let _ = done.send(self.sync().and_then(|_| self.purge(log_id)));
                }
                WriteOp::SaveVote(vote, done) => {
                    let _ = done.send(
                        self.sync()
                            .and_then(|_| write_small_file(&self.dir.join("vote"), &vote)),
                    );
                }
            }
        }
        if flushed.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let result = self.sync();
        metrics::observe_log_fsync(started.elapsed(), flushed.len());
        for done in flushed {
            done(result.as_ref().map(|_| ()).map_err(io_err));
        }
        self.flushed.send_modify(|n| *n += 1);
    }

    fn sync(&mut self) -> io::Result<()> {
        match &self.current {
            Some((_, file, _)) => file.sync_data(),
            None => Ok(()),
        }
    }

    fn append(&mut self, buf: &[u8], first_index: u64) -> io::Result<()> {
        if self
            .current
            .as_ref()
            .is_none_or(|(_, _, len)| *len > 0 && *len + buf.len() as u64 > SEGMENT_BYTES)
        {
            self.roll(first_index)?;
        }
        let (first, file, len) = self.current.as_mut().expect("roll() just opened a segment");
        // Record the position of each entry in the buffer.
        let mut offset = 0usize;
        let mut index = first_index;
        while offset < buf.len() {
            let rec_len = RECORD_HEADER
                + u32::from_le_bytes(buf[offset..offset + 4].try_into().expect("4 bytes")) as usize;
            self.positions
                .push_back((index, (*first, *len + offset as u64)));
            offset += rec_len;
            index += 1;
        }
        file.write_all_at(buf, *len)?;
        *len += buf.len() as u64;
        Ok(())
    }

    fn roll(&mut self, first_index: u64) -> io::Result<()> {
        self.sync()?;
        let spare = self.dir.join(SPARE_SEGMENT);
        match self.spare.take().map(|t| t.join()) {
            Some(Ok(Ok(()))) => {}
            // No spare ready (or it failed): make one here, on the write path this once.
            _ => write_zeroed_segment(&spare)?,
        }
        let path = segment_path(&self.dir, first_index);
        fs::rename(&spare, &path)?;
        sync_dir(&self.dir)?;
        let file = OpenOptions::new().write(true).open(&path)?;
        self.segments.push(first_index);
        self.current = Some((first_index, file, 0));
        self.prepare_spare();
        Ok(())
    }

    /// Starts writing the next segment's zeros in the background.
    fn prepare_spare(&mut self) {
        let spare = self.dir.join(SPARE_SEGMENT);
        if spare.exists() {
            self.spare = Some(std::thread::spawn(|| Ok(())));
            return;
        }
        self.spare = std::thread::Builder::new()
            .name("cella-raft-log-spare".into())
            .spawn(move || write_zeroed_segment(&spare))
            .ok();
    }

    /// Removes entries from `index` on, from the files too.
    fn truncate(&mut self, index: u64) -> io::Result<()> {
        let Some(pos) = self.positions.iter().position(|(i, _)| *i >= index) else {
            return Ok(());
        };
        let (segment, offset) = self.positions[pos].1;
        self.positions.truncate(pos);
        while self.segments.last().is_some_and(|s| *s > segment) {
            let s = self.segments.pop().expect("checked non-empty");
            fs::remove_file(segment_path(&self.dir, s))?;
        }
        let end = match &self.current {
            Some((first, _, len)) if *first == segment => *len,
            _ => SEGMENT_BYTES,
        };
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(&self.dir, segment))?;
        file.write_all_at(&vec![0; end.saturating_sub(offset) as usize], offset)?;
        file.sync_all()?;
        sync_dir(&self.dir)?;
        self.current = Some((segment, file, offset));
        Ok(())
    }

    /// Records the purge point, then deletes segments holding only purged entries.
    fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        write_small_file(&self.dir.join("purged"), &log_id)?;
        while self
            .positions
            .front()
            .is_some_and(|(i, _)| *i <= log_id.index)
        {
            self.positions.pop_front();
        }
        // A segment can go once the next one starts at or before the first kept entry.
        while self.segments.len() > 1 && self.segments[1] <= log_id.index + 1 {
            let s = self.segments.remove(0);
            fs::remove_file(segment_path(&self.dir, s))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Batch;
    use cella_proto::cella::core::v1 as corepb;
    use cella_proto::etcdserverpb as pb;
    use openraft::CommittedLeaderId;

    fn entry(index: u64, key: &str) -> Entry {
        let put = pb::PutRequest {
            key: key.as_bytes().to_vec().into(),
            ..Default::default()
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Batch(corepb::CommandBatch {
                commands: vec![corepb::Command {
                    op: Some(corepb::command::Op::Put(put)),
                }],
            })),
        }
    }

    /// Queues `entries`; the receiver answers after the fsync that covers them.
    fn queue(store: &LogStore, entries: Vec<Entry>) -> oneshot::Receiver<io::Result<()>> {
        let (tx, rx) = oneshot::channel();
        store
            .queue_append(
                entries,
                Box::new(move |result| {
                    let _ = tx.send(result);
                }),
            )
            .expect("append queued");
        rx
    }

    async fn append(store: &mut LogStore, entries: Vec<Entry>) {
        queue(store, entries)
            .await
            .expect("flushed")
            .expect("no io error");
    }

    #[tokio::test]
    async fn entries_survive_reopen_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = LogStore::open(dir.path()).expect("open");
            append(&mut store, (1..=3).map(|i| entry(i, "k")).collect()).await;
            store.save_vote(&Vote::new(2, 1)).await.expect("vote");
        }
        // A torn record after the last one: a header promising more bytes than were written.
        let seg = segment_path(dir.path(), 1);
        let bytes = fs::read(&seg).expect("segment");
        assert_eq!(
            bytes.len() as u64,
            SEGMENT_BYTES,
            "segments are preallocated"
        );
        let mut end = 0;
        while let Some((_, len)) = decode_record::<Entry>(&bytes[end..]) {
            end += len;
        }
        let f = OpenOptions::new().write(true).open(&seg).expect("segment");
        f.write_all_at(&[200, 0, 0, 0, 1, 2, 3, 4, 9], end as u64)
            .expect("write");
        drop(f);

        let mut store = LogStore::open(dir.path()).expect("reopen");
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id.map(|l| l.index), Some(3));
        assert_eq!(
            store.read_vote().await.expect("vote"),
            Some(Vote::new(2, 1))
        );
        append(&mut store, vec![entry(4, "after")]).await;
        drop(store);
        let mut store = LogStore::open(dir.path()).expect("reopen again");
        let got = store.try_get_log_entries(1..=4).await.expect("read");
        assert_eq!(
            got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
    }

    #[tokio::test]
    async fn a_sole_voters_lone_appends_are_written_in_place_and_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = LogStore::open(dir.path()).expect("open");
        store.set_sole_voter(true);
        for i in 1..=3 {
            // Flushed before queue_append returned: no thread was involved.
            queue(&store, vec![entry(i, "k")])
                .try_recv()
                .expect("flushed in place")
                .expect("no io error");
        }
        // Three commands form a group commit, which the thread writes; lone appends after
        // it and a truncate between them keep their order.
        append(&mut store, (4..=6).map(|i| entry(i, "k")).collect()).await;
        store
            .truncate(LogId::new(CommittedLeaderId::new(1, 1), 5))
            .await
            .expect("truncate");
        append(&mut store, vec![entry(5, "new")]).await;
        drop(store);
        let mut store = LogStore::open(dir.path()).expect("reopen");
        let got = store.try_get_log_entries(..).await.expect("read");
        assert_eq!(
            got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            (1..=5).collect::<Vec<_>>()
        );
        assert_eq!(got[4], entry(5, "new"));
    }

    #[tokio::test]
    async fn truncate_and_purge_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = LogStore::open(dir.path()).expect("open");
        append(&mut store, (1..=10).map(|i| entry(i, "k")).collect()).await;
        store
            .truncate(LogId::new(CommittedLeaderId::new(1, 1), 8))
            .await
            .expect("truncate");
        store
            .purge(LogId::new(CommittedLeaderId::new(1, 1), 3))
            .await
            .expect("purge");
        append(&mut store, vec![entry(8, "new")]).await;
        drop(store);
        let mut store = LogStore::open(dir.path()).expect("reopen");
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(3));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(8));
        let got = store.try_get_log_entries(..).await.expect("read");
        assert_eq!(
            got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            (4..=8).collect::<Vec<_>>()
        );
    }
}
