//! The broker's message store: a commitlog of fixed-size segments, per-queue consume
//! queues, and a lookup index by message key and id. Messages live here, not in the core.
//!
//! # On-disk format (under the store's directory)
//!
//! - `commitlog/<base>.seg` — segments of exactly `segment_bytes` bytes; `<base>` (20 digits)
//!   is the global commitlog offset of the segment's first byte, so segment `n` starts at
//!   `n * segment_bytes`. Records (see [`record`]) are `[len u32][crc32 u32][payload]`,
//!   packed from the segment's start; a record never spans segments (if it does not fit, the
//!   rest of the segment stays zero and the record starts the next one). Zeroes after the
//!   last record mean "no more data here".
//! - `cq/<topic>/<queue>.cq` and `index/lookup.idx` — see [`derived`].
//! - `checkpoint` — `[commitlog offset u64 LE][crc32 of those 8 bytes u32 LE]`, written
//!   (tmp file + rename) after the commitlog, every consume queue and the index were fsynced
//!   up to that offset.
//!
//! # Writes and flushing
//!
//! The tail is one `Writer` behind a lock. A writer thread takes every append queued for it
//! as one batch, `pwrite`s the batch's records, and — if any append in the batch asked for a
//! sync flush — calls `fdatasync` once, still holding the lock, before acknowledging the
//! whole batch (group commit). An async append that finds the lock free writes itself, on
//! the caller's thread, and is acknowledged at once: a lone async producer's message so
//! crosses no thread (when the lock is busy it queues for the writer thread like a sync
//! append). Async appends are fsynced within `flush_interval` by the thread, and checkpoints
//! made every `checkpoint_interval`; both take what to sync under the lock and sync it after
//! releasing it, so appends do not wait behind a flush of everything written since the last.
//! The messages of one [`Store::append_batch`] are one write, so they are written in order,
//! contiguously, and covered by one group commit. Consume-queue and index entries are written
//! after the records; readers see a message only once its entry is written, which is after
//! its fsync for sync appends.
//!
//! Segments are written with `pwrite` into pre-allocated files that read as zeroes (made
//! one segment ahead on a background thread with `fallocate`, while another keeps the next
//! 64 MiB past the write position in the page cache; see [`segment`] for how and why), not
//! through a memory map: a failed write to a mapping (disk full, I/O error) kills the
//! process with SIGBUS instead of returning an error, and a sync flush needs a syscall
//! either way, so mapping would save only the copy while adding `unsafe`. Pre-allocation and
//! the warm window keep block allocation and disk reads off the write path. (Not measured
//! against a mapped variant yet.) An empty store makes its first segment on its first
//! append, so an unused broker costs no disk.
//!
//! # Crash guarantees
//!
//! - A sync append that was acknowledged survives a crash (process or machine): its record
//!   was fsynced. An async append survives a process crash (it is in the page cache) and is
//!   lost on a machine crash only if it was not yet flushed.
//! - Opening scans the commitlog from the checkpoint: the first record that is cut short or
//!   whose checksum fails marks the end; the rest of that segment is zeroed and any later
//!   segment removed. Consume queues and the index are cut back to the checkpoint (or the new
//!   end, if lower) and rebuilt from the commitlog, so they never point at lost records.
//! - Retention deletes whole sealed segments (oldest first) when the log is larger than
//!   `retention_bytes` or when every record of a segment is older than `retention`.

mod derived;
mod lookup;
pub mod record;
mod segment;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use self::derived::{
    cq_entries, cq_offset, index_entries, index_offset, CqEntry, EntryFile, CQ_ENTRY, INDEX_ENTRY,
};
use self::lookup::LookupIndex;
pub use self::record::StoredMessage;
use self::record::{classify, decode, encode_into, hash64, hash64_parts, Frame, HEADER_LEN};
use self::segment::{
    list_segments, open_segment, sync_dir, zero_range, Preallocator, WARM_STEP, WARM_WINDOW,
};
use crate::error::{MqError, MqResult};

/// How the store makes an append durable before acknowledging it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// Acknowledge after the record is fsynced (group commit).
    Sync,
    /// Acknowledge after the record is written; fsync within the flush interval.
    Async,
}

/// Settings of a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The store's directory.
    pub dir: PathBuf,
    /// Size of each commitlog segment file.
    pub segment_bytes: u64,
    /// How often async appends are fsynced.
    pub flush_interval: Duration,
    /// How often consume queues and the index are fsynced and the checkpoint written.
    pub checkpoint_interval: Duration,
    /// Delete sealed segments whose records are all older than this.
    pub retention: Option<Duration>,
    /// Delete the oldest sealed segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
}

impl StoreConfig {
    /// Defaults for a store in `dir`: 1 GiB segments, 200 ms async flush, no retention.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 1 << 30,
            flush_interval: Duration::from_millis(200),
            checkpoint_interval: Duration::from_secs(1),
            retention: None,
            retention_bytes: None,
        }
    }
}

/// Where an appended message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its commitlog offset.
    pub offset: u64,
    /// Its offset in its queue.
    pub queue_offset: u64,
}

/// Messages read from a queue, and where the next read should start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRead {
    /// Matching messages, in queue order.
    pub messages: Vec<StoredMessage>,
    /// The queue offset after the last entry examined (matching or filtered out).
    pub next_offset: u64,
}

type QueueKey = (String, u32);

enum Command {
    /// Messages to append in order, all in one writer batch, each with its own reply.
    Append {
        messages: Vec<(Box<StoredMessage>, Reply)>,
        mode: FlushMode,
    },
    Retain {
        now_ms: u64,
        reply: oneshot::Sender<MqResult<usize>>,
    },
    Checkpoint {
        reply: oneshot::Sender<MqResult<()>>,
    },
}

/// State readers share with the writer.
struct Shared {
    config: StoreConfig,
    segments: RwLock<BTreeMap<u64, Arc<File>>>,
    log_start: AtomicU64,
    queues: RwLock<HashMap<QueueKey, Arc<EntryFile>>>,
    lookup: Mutex<LookupIndex>,
    /// The visible end of the log; bumped after each batch (for long polls).
    published: watch::Sender<u64>,
    /// Per-queue signals for long polls, made when first asked for: bumped after a batch
    /// that appended to the queue, so a poller wakes only for its own queues.
    queue_signals: Mutex<HashMap<QueueKey, watch::Sender<u64>>>,
    failed: AtomicBool,
}

/// The message store. Cheap to share behind an `Arc`; closes its threads on drop.
pub struct Store {
    shared: Arc<Shared>,
    /// The tail; see "Writes and flushing".
    writer: Arc<Mutex<Writer>>,
    commands: Mutex<Option<mpsc::Sender<Command>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.shared.config.dir)
            .finish()
    }
}

fn queue_path(dir: &Path, topic: &str, queue_id: u32) -> PathBuf {
    dir.join("cq").join(topic).join(format!("{queue_id}.cq"))
}

fn key_hash(key: &str) -> u64 {
    hash64_parts(&[b"k:", key.as_bytes()])
}

fn id_hash(id: u128) -> u64 {
    hash64_parts(&[b"i:", &id.to_le_bytes()])
}

/// The hash a consume queue keeps for `tag`.
pub fn tag_hash(tag: &str) -> u64 {
    hash64(tag.as_bytes())
}

impl Store {
    /// Opens (or creates) the store, recovering from a crash as the module doc describes.
    pub fn open(config: StoreConfig) -> MqResult<Store> {
        if config.segment_bytes < 4096 {
            return Err(MqError::InvalidField {
                field: "segment_bytes",
                rule: "must be at least 4096".into(),
            });
        }
        let log_dir = config.dir.join("commitlog");
        for d in [&log_dir, &config.dir.join("cq"), &config.dir.join("index")] {
            std::fs::create_dir_all(d).map_err(MqError::io(format!("creating {}", d.display())))?;
        }
        let seg = config.segment_bytes;
        let mut segments = BTreeMap::new();
        for base in list_segments(&log_dir)? {
            if base % seg != 0 {
                return Err(MqError::Corrupt(format!(
                    "segment {base} is not a multiple of segment_bytes {seg} (was segment_bytes changed?)"
                )));
            }
            segments.insert(base, Arc::new(open_segment(&log_dir, base)?));
        }
        // An empty store makes its first segment on its first append, so a node that never
        // uses the broker spends no disk on it.
        let first = segments.keys().next().copied().unwrap_or(0);
        let checkpoint = read_checkpoint(&config.dir)?.unwrap_or(first);
        // Scan from the start of the checkpoint's segment, so a tail cut below the checkpoint
        // (a file damaged after it was synced) is still found.
        let scan_from =
            if checkpoint >= first && segments.contains_key(&(checkpoint - checkpoint % seg)) {
                checkpoint - checkpoint % seg
            } else {
                first
            };

        // Pass 1: find the end of the valid log.
        let mut end = scan_from;
        let mut torn = false;
        let mut records = Vec::new();
        'segments: loop {
            let base = end - end % seg;
            let Some(file) = segments.get(&base).cloned() else {
                break;
            };
            let mut window = Window::new(&file, seg, SCAN_READ_AHEAD);
            let mut at = end - base;
            loop {
                match window.frame(at) {
                    (Frame::Valid { len }, _) => {
                        records.push(base + at);
                        at += (HEADER_LEN + len) as u64;
                        end = base + at;
                    }
                    (Frame::Empty, _) => {
                        let next = base + seg;
                        let next_valid = segments.get(&next).is_some_and(|f| {
                            matches!(
                                Window::new(f, seg, RECORD_READ_AHEAD).frame(0).0,
                                Frame::Valid { .. }
                            )
                        });
                        if next_valid {
                            end = next;
                            continue 'segments;
                        }
                        break 'segments;
                    }
                    (Frame::Torn, _) => {
                        torn = true;
                        break 'segments;
                    }
                }
            }
        }
        let end_base = end - end % seg;
        let end_base = if end_base > first && end % seg == 0 && !segments.contains_key(&end_base) {
            end_base - seg
        } else {
            end_base
        };
        if torn {
            tracing::warn!(
                offset = end,
                "commitlog: torn record at the tail; truncating"
            );
        }
        // Segments past the end's segment are unreached (preallocated or torn): remove.
        let later: Vec<u64> = segments.range(end_base + 1..).map(|(b, _)| *b).collect();
        for base in later {
            segments.remove(&base);
            std::fs::remove_file(segment::segment_path(&log_dir, base))
                .map_err(MqError::io("removing an unreached segment"))?;
        }
        let active = segments.get(&end_base).cloned();
        if let Some(active) = &active {
            let len = active
                .metadata()
                .map_err(MqError::io("reading segment length"))?
                .len();
            if len < seg {
                active
                    .set_len(seg)
                    .map_err(MqError::io("restoring segment length"))?;
            }
            if torn {
                zero_range(active, end - end_base, seg.min(len))?;
                active
                    .sync_data()
                    .map_err(MqError::io("syncing a truncated segment"))?;
            }
        }
        sync_dir(&log_dir)?;

        // Pass 2: cut derived files back to the replay point, then replay.
        let replay_from = checkpoint.min(end).max(first);
        let mut queues = HashMap::new();
        let cq_dir = config.dir.join("cq");
        for topic_dir in
            std::fs::read_dir(&cq_dir).map_err(MqError::io("listing consume queues"))?
        {
            let topic_dir = topic_dir.map_err(MqError::io("listing consume queues"))?;
            let topic = topic_dir.file_name().to_string_lossy().into_owned();
            for f in std::fs::read_dir(topic_dir.path())
                .map_err(MqError::io("listing consume queues"))?
            {
                let f = f.map_err(MqError::io("listing consume queues"))?;
                let name = f.file_name().to_string_lossy().into_owned();
                let Some(queue_id) = name.strip_suffix(".cq").and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let q = EntryFile::open(&f.path(), CQ_ENTRY, replay_from, cq_offset)?;
                queues.insert((topic.clone(), queue_id), Arc::new(q));
            }
        }
        let lookup_file = EntryFile::open(
            &config.dir.join("index").join("lookup.idx"),
            INDEX_ENTRY,
            replay_from,
            index_offset,
        )?;
        let mut lookup = LookupIndex::new();
        for (hash, offset) in index_entries(&lookup_file.read(0, lookup_file.count())?) {
            if offset >= first {
                lookup.add(hash, offset);
            }
        }
        let mut replay = Replay::default();
        let mut window: Option<(u64, Window<'_>)> = None;
        for offset in records.into_iter().filter(|o| *o >= replay_from) {
            let base = offset - offset % seg;
            if window.as_ref().is_none_or(|(b, _)| *b != base) {
                window = Some((base, Window::new(&segments[&base], seg, SCAN_READ_AHEAD)));
            }
            let (_, payload) = window.as_mut().expect("set above").1.frame(offset - base);
            let payload = payload.ok_or_else(|| {
                MqError::Corrupt(format!("record at {offset} vanished during recovery"))
            })?;
            let message = decode(&payload)?;
            let key = (message.topic.clone(), message.queue_id);
            let q = match queues.get(&key) {
                Some(q) => Arc::clone(q),
                None => {
                    let q = Arc::new(open_queue(&config.dir, &key.0, key.1)?);
                    queues.insert(key.clone(), Arc::clone(&q));
                    q
                }
            };
            let pending = replay.cq.entry(key.clone()).or_default();
            let next = q.count() + pending.len() as u64 / CQ_ENTRY;
            if message.queue_offset > next {
                return Err(MqError::Corrupt(format!(
                    "record at {offset} has queue offset {} but queue {}/{} ends at {next}",
                    message.queue_offset, key.0, key.1
                )));
            }
            if message.queue_offset == next {
                CqEntry {
                    offset,
                    size: (HEADER_LEN + payload.len()) as u32,
                    tag_hash: tag_hash(&message.tag),
                }
                .encode(pending);
            }
            index_message(&message, offset, &mut replay.index, |h, o| lookup.add(h, o));
        }
        drop(window);
        for (key, bytes) in replay.cq {
            queues[&key].append(&bytes)?;
        }
        lookup_file.append(&replay.index)?;

        let (published, _) = watch::channel(end);
        let shared = Arc::new(Shared {
            segments: RwLock::new(segments),
            log_start: AtomicU64::new(first),
            queues: RwLock::new(queues),
            lookup: Mutex::new(lookup),
            published,
            queue_signals: Mutex::default(),
            failed: AtomicBool::new(false),
            config,
        });
        let (tx, rx) = mpsc::channel();
        let mut writer = Writer {
            shared: Arc::clone(&shared),
            preallocator: Preallocator::start(log_dir, seg)?,
            active_base: end_base,
            active,
            position: end - end_base,
            warmed: end - end_base,
            lookup_file: Arc::new(lookup_file),
            dirty: false,
            last_flush: Instant::now(),
            last_checkpoint: Instant::now(),
        };
        if writer.active.is_some() {
            writer.preallocator.request(end_base + seg);
            writer.warm_ahead();
        }
        writer.checkpoint()?;
        let writer = Arc::new(Mutex::new(writer));
        let thread = std::thread::Builder::new()
            .name("mq-writer".into())
            .spawn({
                let writer = Arc::clone(&writer);
                move || Writer::run(&writer, rx)
            })
            .map_err(MqError::io("starting the writer thread"))?;
        Ok(Store {
            shared,
            writer,
            commands: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    fn send(&self, command: Command) -> MqResult<()> {
        let guard = self.commands.lock().expect("commands lock poisoned");
        guard
            .as_ref()
            .ok_or(MqError::Stopped)?
            .send(command)
            .map_err(|_| MqError::Stopped)
    }

    /// Appends `message` (its `queue_offset` is assigned here) and waits until it is
    /// acknowledged under `mode`.
    pub async fn append(&self, message: StoredMessage, mode: FlushMode) -> MqResult<Appended> {
        let mut appended = self.append_batch(vec![message], mode).await?;
        appended.pop().ok_or(MqError::Stopped)
    }

    /// Appends `messages` in order, contiguously in one writer batch (so one group commit,
    /// one fsync for `Sync`, covers them all), and waits until every one is acknowledged.
    /// Returns where each landed, in order.
    pub async fn append_batch(
        &self,
        messages: Vec<StoredMessage>,
        mode: FlushMode,
    ) -> MqResult<Vec<Appended>> {
        let (messages, replies): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .map(|message| {
                let (reply, rx) = oneshot::channel();
                ((Box::new(message), reply), rx)
            })
            .unzip();
        if let Some(messages) = self.append_here(messages, mode) {
            self.send(Command::Append { messages, mode })?;
        }
        let mut appended = Vec::with_capacity(replies.len());
        for rx in replies {
            appended.push(rx.await.map_err(|_| MqError::Stopped)??);
        }
        Ok(appended)
    }

    /// Writes async appends on the caller's thread, answering them, if the writer is free;
    /// gives the appends back for the writer thread otherwise.
    fn append_here(
        &self,
        messages: Vec<(Box<StoredMessage>, Reply)>,
        mode: FlushMode,
    ) -> Option<Vec<(Box<StoredMessage>, Reply)>> {
        let open = self
            .commands
            .lock()
            .expect("commands lock poisoned")
            .is_some();
        if mode != FlushMode::Async || !open {
            return Some(messages);
        }
        match self.writer.try_lock() {
            Ok(mut writer) => {
                writer.append_batch(with_mode(messages, mode).collect());
                None
            }
            Err(_) => Some(messages),
        }
    }

    /// Fsyncs everything and writes the checkpoint.
    pub async fn checkpoint(&self) -> MqResult<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Checkpoint { reply })?;
        rx.await.map_err(|_| MqError::Stopped)?
    }

    /// Applies retention at wall time `now_ms`; returns how many segments were deleted.
    pub async fn retain(&self, now_ms: u64) -> MqResult<usize> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Retain { now_ms, reply })?;
        rx.await.map_err(|_| MqError::Stopped)?
    }

    /// A receiver that changes whenever new messages become readable.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.published.subscribe()
    }

    /// A receiver that changes whenever new messages of `topic`'s queue `queue_id` become
    /// readable (the queue need not exist yet).
    pub fn subscribe_queue(&self, topic: &str, queue_id: u32) -> watch::Receiver<u64> {
        let mut signals = self
            .shared
            .queue_signals
            .lock()
            .expect("signals lock poisoned");
        signals
            .entry((topic.to_string(), queue_id))
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// The first retained commitlog offset and the end of the log.
    pub fn log_bounds(&self) -> (u64, u64) {
        (
            self.shared.log_start.load(Ordering::Acquire),
            *self.shared.published.borrow(),
        )
    }

    fn queue(&self, topic: &str, queue_id: u32) -> Option<Arc<EntryFile>> {
        self.shared
            .queues
            .read()
            .expect("queues lock poisoned")
            .get(&(topic.to_string(), queue_id))
            .cloned()
    }

    /// The first retained and the next queue offset of a queue (`(0, 0)` if it has none).
    pub fn queue_bounds(&self, topic: &str, queue_id: u32) -> MqResult<(u64, u64)> {
        let Some(q) = self.queue(topic, queue_id) else {
            return Ok((0, 0));
        };
        let count = q.count();
        let log_start = self.shared.log_start.load(Ordering::Acquire);
        // Entries are in commitlog order: binary-search the first one still retained.
        let (mut lo, mut hi) = (0u64, count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let entry = cq_entries(&q.read(mid, 1)?).next();
            if entry.is_some_and(|e| e.offset >= log_start) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok((lo, count))
    }

    /// Reads up to `max` messages of a queue from queue offset `from`, keeping only those
    /// whose tag is in `tags` (all if `tags` is empty).
    pub fn read_queue(
        &self,
        topic: &str,
        queue_id: u32,
        from: u64,
        max: usize,
        tags: &[String],
    ) -> MqResult<QueueRead> {
        let Some(q) = self.queue(topic, queue_id) else {
            return Ok(QueueRead {
                messages: Vec::new(),
                next_offset: from,
            });
        };
        let (min, count) = self.queue_bounds(topic, queue_id)?;
        let mut at = from.max(min);
        let hashes: Vec<u64> = tags.iter().map(|t| tag_hash(t)).collect();
        let mut messages = Vec::new();
        while messages.len() < max && at < count {
            let entries = q.read(at, 256)?;
            let mut wanted = Vec::new();
            for entry in cq_entries(&entries) {
                if wanted.len() == max - messages.len() {
                    break;
                }
                at += 1;
                if hashes.is_empty() || hashes.contains(&entry.tag_hash) {
                    wanted.push(entry);
                }
            }
            for run in read_runs(&wanted, self.shared.config.segment_bytes) {
                let span = run_span(run);
                let offsets = run.iter().map(|e| e.offset);
                for message in self.read_records(offsets, span)? {
                    if tags.is_empty() || tags.contains(&message.tag) {
                        messages.push(message);
                    }
                }
            }
        }
        Ok(QueueRead {
            messages,
            next_offset: at,
        })
    }

    /// Reads the message whose record starts at commitlog offset `offset`.
    pub fn read_message(&self, offset: u64) -> MqResult<StoredMessage> {
        let mut read = self.read_records([offset], RECORD_READ_AHEAD)?;
        read.pop()
            .ok_or_else(|| MqError::Corrupt(format!("no record at commitlog offset {offset}")))
    }

    /// Reads the records starting at `offsets`, all in the segment of the first, through one
    /// window that reads `read_ahead` bytes at once (a run's span makes it one read).
    fn read_records(
        &self,
        offsets: impl IntoIterator<Item = u64>,
        read_ahead: u64,
    ) -> MqResult<Vec<StoredMessage>> {
        let seg = self.shared.config.segment_bytes;
        let mut offsets = offsets.into_iter().peekable();
        let Some(&first) = offsets.peek() else {
            return Ok(Vec::new());
        };
        let base = first - first % seg;
        let file = {
            let segments = self.shared.segments.read().expect("segments lock poisoned");
            segments.get(&base).cloned().ok_or_else(|| {
                MqError::Corrupt(format!("offset {first} is not in a retained segment"))
            })?
        };
        let mut reader = Window::new(&file, seg, read_ahead);
        let mut messages = Vec::new();
        for offset in offsets {
            let frame = match offset.checked_sub(base).filter(|at| *at < seg) {
                Some(at) => reader.frame(at),
                None => (Frame::Empty, None),
            };
            match frame {
                (Frame::Valid { .. }, Some(payload)) => messages.push(decode(&payload)?),
                _ => {
                    return Err(MqError::Corrupt(format!(
                        "no valid record at commitlog offset {offset}"
                    )))
                }
            }
        }
        Ok(messages)
    }

    fn lookup(&self, hash: u64) -> MqResult<Vec<StoredMessage>> {
        let offsets = self
            .shared
            .lookup
            .lock()
            .expect("lookup lock poisoned")
            .offsets(hash);
        let start = self.shared.log_start.load(Ordering::Acquire);
        offsets
            .into_iter()
            .filter(|o| *o >= start)
            .map(|o| self.read_message(o))
            .collect()
    }

    /// Retained messages carrying `key` among their keys, oldest first.
    pub fn find_by_key(&self, key: &str) -> MqResult<Vec<StoredMessage>> {
        Ok(self
            .lookup(key_hash(key))?
            .into_iter()
            .filter(|m| m.keys.iter().any(|k| k == key))
            .collect())
    }

    /// The retained message with id `id`, if any.
    pub fn find_by_id(&self, id: u128) -> MqResult<Option<StoredMessage>> {
        Ok(self.lookup(id_hash(id))?.into_iter().find(|m| m.id == id))
    }

    /// Stops the writer after it has flushed and checkpointed.
    pub fn close(&self) {
        self.commands.lock().expect("commands lock poisoned").take();
        if let Some(t) = self.thread.lock().expect("thread lock poisoned").take() {
            let _ = t.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn open_queue(dir: &Path, topic: &str, queue_id: u32) -> MqResult<EntryFile> {
    let path = queue_path(dir, topic, queue_id);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(MqError::io(format!("creating {}", parent.display())))?;
    }
    EntryFile::open(&path, CQ_ENTRY, 0, cq_offset)
}

/// Appends the lookup entries of the record at `offset` to `out` and hands each to `index`.
fn index_message(
    message: &StoredMessage,
    offset: u64,
    out: &mut Vec<u8>,
    mut index: impl FnMut(u64, u64),
) {
    let hashes = message
        .keys
        .iter()
        .map(|k| key_hash(k))
        .chain(std::iter::once(id_hash(message.id)));
    for hash in hashes {
        out.extend_from_slice(&hash.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        index(hash, offset);
    }
}

#[derive(Default)]
struct Replay {
    cq: HashMap<QueueKey, Vec<u8>>,
    index: Vec<u8>,
}

fn read_checkpoint(dir: &Path) -> MqResult<Option<u64>> {
    let path = dir.join("checkpoint");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(MqError::io("reading the checkpoint")(e)),
    };
    if bytes.len() != 12 || crc32fast::hash(&bytes[..8]).to_le_bytes() != bytes[8..12] {
        // A bad checkpoint only costs a longer replay: recover from the log's start.
        tracing::warn!("mq checkpoint is damaged; replaying the whole commitlog");
        return Ok(None);
    }
    Ok(Some(u64::from_le_bytes(
        bytes[..8].try_into().expect("8 bytes"),
    )))
}

fn write_checkpoint(dir: &Path, offset: u64) -> MqResult<()> {
    let mut bytes = offset.to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
    let tmp = dir.join("checkpoint.tmp");
    let file = File::create(&tmp).map_err(MqError::io("writing the checkpoint"))?;
    std::io::Write::write_all(&mut &file, &bytes).map_err(MqError::io("writing the checkpoint"))?;
    file.sync_all()
        .map_err(MqError::io("syncing the checkpoint"))?;
    std::fs::rename(&tmp, dir.join("checkpoint"))
        .map_err(MqError::io("renaming the checkpoint"))?;
    sync_dir(dir)
}

/// Most bytes one read takes for neighbouring records of a pull.
const RUN_READ_MAX: u64 = 256 << 10;

/// Splits consume-queue entries into runs that one read serves: records in one segment, in
/// commitlog order, spanning at most [`RUN_READ_MAX`], with at least half of the bytes read
/// their own (so records of other queues between them are not read for nothing).
fn read_runs(entries: &[CqEntry], segment_bytes: u64) -> impl Iterator<Item = &[CqEntry]> {
    let mut rest = entries;
    std::iter::from_fn(move || {
        let first = rest.first()?;
        let base = first.offset - first.offset % segment_bytes;
        let mut end = first.offset + u64::from(first.size);
        let mut own = u64::from(first.size);
        let mut len = 1;
        for next in &rest[1..] {
            let next_end = next.offset + u64::from(next.size);
            let span = next_end.saturating_sub(first.offset);
            let fits = next.offset >= end
                && next.offset - next.offset % segment_bytes == base
                && span <= RUN_READ_MAX
                && 2 * (own + u64::from(next.size)) >= span;
            if !fits {
                break;
            }
            end = next_end;
            own += u64::from(next.size);
            len += 1;
        }
        let (run, tail) = rest.split_at(len);
        rest = tail;
        Some(run)
    })
}

/// The bytes from a run's first record to the end of its last.
fn run_span(run: &[CqEntry]) -> u64 {
    match (run.first(), run.last()) {
        (Some(first), Some(last)) => last.offset + u64::from(last.size) - first.offset,
        _ => 0,
    }
}

/// Reads frames from a segment through a buffered window: each refill reads at least
/// `read_ahead` bytes, so a scan makes few syscalls per record while a single record's read
/// costs no more than the record.
struct Window<'a> {
    file: &'a File,
    segment_bytes: u64,
    read_ahead: u64,
    start: u64,
    buf: Vec<u8>,
}

/// Read-ahead of sequential scans (recovery).
const SCAN_READ_AHEAD: u64 = 1 << 20;
/// Read-ahead of a single record whose size is not known (a record header and a small body).
const RECORD_READ_AHEAD: u64 = 4 << 10;

impl<'a> Window<'a> {
    fn new(file: &'a File, segment_bytes: u64, read_ahead: u64) -> Self {
        Self {
            file,
            segment_bytes,
            read_ahead,
            start: 0,
            buf: Vec::new(),
        }
    }

    /// Bytes `[at, at + len)` of the segment, or `None` past its end or on a read error.
    fn bytes(&mut self, at: u64, len: usize) -> Option<&[u8]> {
        let end = at.checked_add(len as u64)?;
        if end > self.segment_bytes {
            return None;
        }
        if at < self.start || end > self.start + self.buf.len() as u64 {
            let want = (len as u64)
                .max(self.read_ahead)
                .min(self.segment_bytes - at) as usize;
            self.buf.resize(want, 0);
            // A file cut short (a torn tail) reads as zeroes past its end.
            let mut filled = 0;
            while filled < want {
                match std::os::unix::fs::FileExt::read_at(
                    self.file,
                    &mut self.buf[filled..],
                    at + filled as u64,
                ) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(_) => return None,
                }
            }
            self.buf[filled..].fill(0);
            self.start = at;
        }
        let from = (at - self.start) as usize;
        Some(&self.buf[from..from + len])
    }

    fn frame(&mut self, at: u64) -> (Frame, Option<Vec<u8>>) {
        let room = self.segment_bytes.saturating_sub(at) as usize;
        let Some(header) = self.bytes(at, HEADER_LEN) else {
            return (Frame::Empty, None);
        };
        let header: [u8; HEADER_LEN] = header.try_into().expect("header length");
        let payload = |len: usize| self.bytes(at + HEADER_LEN as u64, len).map(<[u8]>::to_vec);
        classify(&header, room, payload)
    }
}

/// The writer thread's state: the active segment and where the next record goes.
struct Writer {
    shared: Arc<Shared>,
    preallocator: Preallocator,
    active_base: u64,
    active: Option<Arc<File>>,
    position: u64,
    /// How far into the active segment pages were asked to be read ahead.
    warmed: u64,
    lookup_file: Arc<EntryFile>,
    dirty: bool,
    last_flush: Instant,
    last_checkpoint: Instant,
}

/// A checkpoint taken under the writer lock and finished after it: the log end, and the
/// files that hold everything before it (the active segment, the consume queues and the
/// index; earlier segments were synced when they were sealed).
struct Checkpoint {
    segment: Option<Arc<File>>,
    derived: Vec<Arc<EntryFile>>,
    dir: PathBuf,
    end: u64,
}

impl Checkpoint {
    /// Syncs the files, then records the end: recovery starts from it.
    fn finish(self) -> MqResult<()> {
        if let Some(segment) = &self.segment {
            segment
                .sync_data()
                .map_err(MqError::io("syncing the commitlog"))?;
        }
        for file in &self.derived {
            file.sync()?;
        }
        sync_dir(&self.dir.join("cq"))?;
        write_checkpoint(&self.dir, self.end)
    }
}

/// An append placed in the current batch.
struct Placed {
    reply: oneshot::Sender<MqResult<Appended>>,
    appended: Appended,
}

type Reply = oneshot::Sender<MqResult<Appended>>;

/// The writer's form of a command's appends: each with the command's flush mode.
fn with_mode(
    messages: Vec<(Box<StoredMessage>, Reply)>,
    mode: FlushMode,
) -> impl Iterator<Item = (Box<StoredMessage>, FlushMode, Reply)> {
    messages
        .into_iter()
        .map(move |(message, reply)| (message, mode, reply))
}

impl Writer {
    /// The writer thread: serves queued commands in batches, flushes async appends every
    /// `flush_interval` and writes a checkpoint every `checkpoint_interval`.
    fn run(writer: &Mutex<Writer>, commands: mpsc::Receiver<Command>) {
        let lock = || writer.lock().expect("mq writer lock poisoned");
        let config = lock().shared.config.clone();
        loop {
            let first = match commands.recv_timeout(config.flush_interval) {
                Ok(c) => Some(c),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut batch: Vec<Command> = first.into_iter().collect();
            while batch.len() < 4096 {
                match commands.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let mut this = lock();
            let mut appends = Vec::new();
            for command in batch {
                match command {
                    Command::Append { messages, mode } => {
                        appends.extend(with_mode(messages, mode));
                    }
                    Command::Retain { now_ms, reply } => {
                        let _ = reply.send(this.retain(now_ms));
                    }
                    Command::Checkpoint { reply } => {
                        let _ = reply.send(this.checkpoint());
                    }
                }
            }
            if !appends.is_empty() {
                this.append_batch(appends);
            }
            // A checkpoint due flushes too.
            let checkpoint = (this.last_checkpoint.elapsed() >= config.checkpoint_interval)
                .then(|| this.start_checkpoint());
            let flush = (checkpoint.is_none()
                && this.dirty
                && this.last_flush.elapsed() >= config.flush_interval)
                .then(|| this.start_flush())
                .flatten();
            // The periodic fsyncs run without the lock, so appends (inline async ones too)
            // go on meanwhile instead of waiting milliseconds for a flush of everything
            // written since the last; each covers what its file held when it was taken.
            drop(this);
            if let Some(segment) = flush {
                if let Err(e) = segment.sync_data() {
                    tracing::error!(error = %e, "mq: async flush failed");
                    lock().dirty = true;
                }
            }
            if let Some(Err(e)) = checkpoint.map(|c| c.finish()) {
                tracing::error!(error = %e, "mq: checkpoint failed");
                lock().dirty = true;
            }
        }
        if let Err(e) = lock().checkpoint() {
            tracing::error!(error = %e, "mq: final checkpoint failed");
        }
    }

    /// Marks the async appends written so far flushed and returns the segment to
    /// `fdatasync` for them (the caller syncs it, with or without the lock).
    fn start_flush(&mut self) -> Option<Arc<File>> {
        self.dirty = false;
        self.last_flush = Instant::now();
        self.active.clone()
    }

    /// What a checkpoint at the current log end must make durable before it is recorded.
    fn start_checkpoint(&mut self) -> Checkpoint {
        self.last_checkpoint = Instant::now();
        let mut derived: Vec<_> = self
            .shared
            .queues
            .read()
            .expect("queues lock poisoned")
            .values()
            .cloned()
            .collect();
        derived.push(Arc::clone(&self.lookup_file));
        Checkpoint {
            segment: self.start_flush(),
            derived,
            dir: self.shared.config.dir.clone(),
            end: self.active_base + self.position,
        }
    }

    fn checkpoint(&mut self) -> MqResult<()> {
        self.start_checkpoint().finish()
    }

    fn append_batch(&mut self, appends: Vec<(Box<StoredMessage>, FlushMode, Reply)>) {
        if self.shared.failed.load(Ordering::Acquire) {
            for (_, _, reply) in appends {
                let _ = reply.send(Err(MqError::Stopped));
            }
            return;
        }
        match self.write_batch(appends) {
            Ok(()) => {}
            Err((e, replies)) => {
                tracing::error!(error = %e, "mq: commitlog write failed; the store refuses further appends");
                self.shared.failed.store(true, Ordering::Release);
                for reply in replies {
                    let _ = reply.send(Err(MqError::Corrupt(format!("write failed: {e}"))));
                }
            }
        }
    }

    fn write_batch(
        &mut self,
        appends: Vec<(Box<StoredMessage>, FlushMode, Reply)>,
    ) -> Result<(), (MqError, Vec<Reply>)> {
        let seg = self.shared.config.segment_bytes;
        let mut buf = Vec::with_capacity(appends.len() * 1100);
        let mut placed: Vec<Placed> = Vec::with_capacity(appends.len());
        // Per queue touched: its next queue offset and its new consume-queue entries.
        let mut cq: HashMap<QueueKey, (u64, Vec<u8>)> = HashMap::new();
        let mut index = Vec::new();
        let mut sync = false;
        let mut touched: Vec<Arc<File>> = Vec::new();
        let mut rejected = Vec::new();
        let mut lookup_adds: Vec<(u64, u64)> = Vec::new();
        let mut replies_on_error = Vec::new();
        let mut error = None;
        let mut per_topic: HashMap<String, (u64, u64)> = HashMap::new();
        for (mut message, mode, reply) in appends {
            if error.is_some() {
                replies_on_error.push(reply);
                continue;
            }
            let key = (message.topic.clone(), message.queue_id);
            let next = match cq.get(&key) {
                Some((n, _)) => *n,
                None => match self.queue_next(&key) {
                    Ok(n) => n,
                    Err(e) => {
                        error = Some(e);
                        replies_on_error.push(reply);
                        continue;
                    }
                },
            };
            message.queue_offset = next;
            // The record is encoded in place at the end of the batch's buffer.
            let start = buf.len();
            let len = match encode_into(&message, &mut buf) {
                Ok(len) => len as u64,
                Err(e) => {
                    buf.truncate(start);
                    rejected.push((reply, e));
                    continue;
                }
            };
            if len > seg {
                buf.truncate(start);
                rejected.push((reply, MqError::InvalidField { field: "body", rule: format!("makes a record of {len} bytes, larger than a commitlog segment ({seg} bytes)") }));
                continue;
            }
            if self.position + buf.len() as u64 > seg {
                // The record starts the next segment; what precedes it ends this one.
                let record = buf.split_off(start);
                if let Err(e) = self
                    .write_out(&mut buf, &mut touched)
                    .and_then(|()| self.roll())
                {
                    error = Some(e);
                    replies_on_error.push(reply);
                    continue;
                }
                buf.extend_from_slice(&record);
            }
            let offset = self.active_base + self.position + buf.len() as u64 - len;
            sync |= mode == FlushMode::Sync;
            let entry = CqEntry {
                offset,
                size: len as u32,
                tag_hash: tag_hash(&message.tag),
            };
            match cq.get_mut(&key) {
                Some((queue_next, bytes)) => {
                    *queue_next = next + 1;
                    entry.encode(bytes);
                }
                None => {
                    let mut bytes = Vec::new();
                    entry.encode(&mut bytes);
                    cq.insert(key, (next + 1, bytes));
                }
            }
            index_message(&message, offset, &mut index, |h, o| {
                lookup_adds.push((h, o))
            });
            match per_topic.get_mut(&message.topic) {
                Some((messages, bytes)) => {
                    *messages += 1;
                    *bytes += len;
                }
                None => {
                    per_topic.insert(message.topic.clone(), (1, len));
                }
            }
            placed.push(Placed {
                reply,
                appended: Appended {
                    offset,
                    queue_offset: next,
                },
            });
        }
        for (reply, e) in rejected {
            let _ = reply.send(Err(e));
        }
        let result = self.write_out(&mut buf, &mut touched).and_then(|()| {
            if sync {
                let started = Instant::now();
                for f in &touched {
                    f.sync_data()
                        .map_err(MqError::io("syncing the commitlog"))?;
                }
                crate::metrics::observe_fsync(started.elapsed(), placed.len());
                self.dirty = false;
                self.last_flush = Instant::now();
            } else if !touched.is_empty() {
                self.dirty = true;
            }
            error.take().map_or(Ok(()), Err)
        });
        let result = result.and_then(|()| {
            for (key, (_, bytes)) in &cq {
                let q = self
                    .shared
                    .queues
                    .read()
                    .expect("queues lock poisoned")
                    .get(key)
                    .cloned();
                q.ok_or_else(|| MqError::Corrupt(format!("queue {}/{} vanished", key.0, key.1)))?
                    .append(bytes)?;
            }
            self.lookup_file.append(&index)
        });
        if let Err(e) = result {
            replies_on_error.extend(placed.into_iter().map(|p| p.reply));
            return Err((e, replies_on_error));
        }
        {
            let mut lookup = self.shared.lookup.lock().expect("lookup lock poisoned");
            for (hash, offset) in lookup_adds {
                lookup.add(hash, offset);
            }
        }
        let end = self.active_base + self.position;
        self.shared.published.send_replace(end);
        {
            let signals = self
                .shared
                .queue_signals
                .lock()
                .expect("signals lock poisoned");
            for signal in cq.keys().filter_map(|key| signals.get(key)) {
                signal.send_replace(end);
            }
        }
        for (topic, (messages, bytes)) in per_topic {
            crate::metrics::count_appended(&topic, messages, bytes);
        }
        for p in placed {
            let _ = p.reply.send(Ok(p.appended));
        }
        Ok(())
    }

    /// The next queue offset of a queue, creating its file on first use.
    fn queue_next(&self, key: &QueueKey) -> MqResult<u64> {
        if let Some(q) = self
            .shared
            .queues
            .read()
            .expect("queues lock poisoned")
            .get(key)
        {
            return Ok(q.count());
        }
        let q = Arc::new(open_queue(&self.shared.config.dir, &key.0, key.1)?);
        let count = q.count();
        self.shared
            .queues
            .write()
            .expect("queues lock poisoned")
            .insert(key.clone(), q);
        Ok(count)
    }

    fn write_out(&mut self, buf: &mut Vec<u8>, touched: &mut Vec<Arc<File>>) -> MqResult<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let active = self.active()?;
        std::os::unix::fs::FileExt::write_all_at(&*active, buf, self.position)
            .map_err(MqError::io("writing the commitlog"))?;
        self.position += buf.len() as u64;
        buf.clear();
        self.warm_ahead();
        if !touched.iter().any(|f| Arc::ptr_eq(f, &active)) {
            touched.push(active);
        }
        Ok(())
    }

    /// The active segment; an empty store makes its first one here.
    fn active(&mut self) -> MqResult<Arc<File>> {
        if let Some(active) = &self.active {
            return Ok(Arc::clone(active));
        }
        let seg = self.shared.config.segment_bytes;
        self.preallocator.request(self.active_base);
        let file = Arc::new(self.preallocator.take(self.active_base)?);
        self.shared
            .segments
            .write()
            .expect("segments lock poisoned")
            .insert(self.active_base, Arc::clone(&file));
        self.preallocator.request(self.active_base + seg);
        self.active = Some(Arc::clone(&file));
        self.warmed = WARM_WINDOW.min(seg);
        Ok(file)
    }

    /// Keeps [`WARM_WINDOW`] past the write position being read into the page cache (the
    /// segment's first window was read when it was made), one [`WARM_STEP`] at a time.
    fn warm_ahead(&mut self) {
        let Some(active) = &self.active else {
            return;
        };
        let seg = self.shared.config.segment_bytes;
        let want = (self.position + WARM_WINDOW).min(seg);
        while self.warmed < want {
            let to = (self.warmed + WARM_STEP).min(seg);
            self.preallocator.warm(active, self.warmed, to);
            self.warmed = to;
        }
    }

    /// Seals the active segment and continues in the preallocated next one.
    fn roll(&mut self) -> MqResult<()> {
        let seg = self.shared.config.segment_bytes;
        let next = self.active_base + seg;
        // The sealed segment may hold async records not yet flushed.
        self.active()?
            .sync_data()
            .map_err(MqError::io("syncing a sealed segment"))?;
        let file = Arc::new(self.preallocator.take(next)?);
        self.shared
            .segments
            .write()
            .expect("segments lock poisoned")
            .insert(next, Arc::clone(&file));
        self.active = Some(file);
        self.active_base = next;
        self.position = 0;
        self.warmed = WARM_WINDOW.min(seg);
        self.preallocator.request(next + seg);
        Ok(())
    }

    /// Deletes sealed segments past the size or age limit; returns how many.
    fn retain(&mut self, now_ms: u64) -> MqResult<usize> {
        let config = &self.shared.config;
        let seg = config.segment_bytes;
        let mut deleted = 0;
        loop {
            let (oldest, count, second) = {
                let segments = self.shared.segments.read().expect("segments lock poisoned");
                let mut keys = segments.keys();
                let Some(oldest) = keys.next().copied() else {
                    break;
                };
                (oldest, segments.len() as u64, keys.next().copied())
            };
            if oldest == self.active_base {
                break;
            }
            let too_big = config.retention_bytes.is_some_and(|max| count * seg > max);
            let too_old = match (config.retention, second) {
                (Some(age), Some(next)) => {
                    // Every record of `oldest` is no newer than the first record of the next.
                    let next_file =
                        self.shared.segments.read().expect("segments lock poisoned")[&next].clone();
                    let first = Window::new(&next_file, seg, RECORD_READ_AHEAD)
                        .frame(0)
                        .1
                        .map(|p| decode(&p))
                        .transpose()?;
                    first.is_some_and(|m| {
                        m.stored_ms.saturating_add(age.as_millis() as u64) <= now_ms
                    })
                }
                _ => false,
            };
            if !(too_big || too_old) {
                break;
            }
            let next = oldest + seg;
            self.shared.log_start.store(next, Ordering::Release);
            self.shared
                .segments
                .write()
                .expect("segments lock poisoned")
                .remove(&oldest);
            let path = segment::segment_path(&config.dir.join("commitlog"), oldest);
            std::fs::remove_file(&path)
                .map_err(MqError::io(format!("removing {}", path.display())))?;
            deleted += 1;
        }
        if deleted > 0 {
            let start = self.shared.log_start.load(Ordering::Acquire);
            self.shared
                .lookup
                .lock()
                .expect("lookup lock poisoned")
                .forget_before(start);
            sync_dir(&config.dir.join("commitlog"))?;
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests;
