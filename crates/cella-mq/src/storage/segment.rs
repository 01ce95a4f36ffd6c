//! Commitlog segment files: `commitlog/<base offset, 20 digits>.seg`, each exactly
//! `segment_bytes` long, holding records from its start; the unused tail is zeroes.
//!
//! A new segment is made as `<base>.seg.tmp`: its full length is allocated with `fallocate`,
//! fsynced, then the file is renamed to `<base>.seg` and the directory fsynced. So a `.seg`
//! file always has its full length; a crash leaves at most a `.tmp` file, which opening
//! removes. This runs on a background [`Preallocator`] thread, one segment ahead of the
//! writer; a second one keeps the pages of the next [`WARM_WINDOW`] past the write position
//! in the page cache.
//!
//! `fallocate` leaves *unwritten* extents: they read back as zeroes (the end of the records,
//! to recovery) until data written into them is flushed, when the file system converts them
//! in its journal as part of that `fdatasync`. A crash before that conversion commits can
//! only lose data that was not fsynced; a record only partly converted fails its checksum
//! and is cut like any torn tail. File systems without `fallocate` (`EOPNOTSUPP`) get
//! zeroes written through the page cache instead.
//!
//! # Why `fallocate` and a window of zero pages
//!
//! The aim (RocketMQ's mapped-file warm-up) is that the writer's `pwrite` finds its blocks
//! allocated and its pages cached, so it neither allocates a block nor waits on a read.
//! Measured (release build, 2 shared cores, ext4 on virtio, 1 KiB messages; numbers in the
//! commit that introduced this):
//!
//! - Zeroes written through the page cache (the first version) copy 1 GiB into the cache,
//!   dirty it and write it back: about 1.8 s of CPU per GiB, a third of the broker's CPU at
//!   full produce rate, plus a 1 GiB write burst per segment.
//! - Zeroes written with `O_DIRECT` cost 0.1 s of CPU per GiB but leave the pages uncached,
//!   so a `pwrite` ending inside a block reads it from disk first; warming them by
//!   read-ahead reads 1 GiB of zeroes back, and those reads delayed the sync writes (e2e p99
//!   31–36 ms against 18–22 ms with `fallocate`).
//! - `fallocate` costs nothing, and read-ahead over unwritten extents makes zero-filled
//!   pages with no disk I/O, so the warm window costs only making those pages (about 0.4 s
//!   of CPU per GiB, on its own thread, and about as much page work is taken off the single
//!   writer thread). The price is the extent conversion journaled by each `fdatasync`:
//!   2–4x slower for lone O_DSYNC 64 KiB writes in isolation, but under the broker's group
//!   commit sync-produce and e2e latency were no worse than with written blocks, and better
//!   than the first version.

use std::fs::{File, OpenOptions};
use std::num::NonZeroU64;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use rustix::fs::{fadvise, fallocate, Advice, FallocateFlags};
use rustix::io::Errno;

use crate::error::{MqError, MqResult};

/// Zero-writes happen in chunks of this size (a multiple of the 4 KiB page).
const ZERO_CHUNK: usize = 1 << 20;
/// How far past the write position a segment's pages are kept in the page cache.
pub(crate) const WARM_WINDOW: u64 = 64 << 20;
/// The warm window moves in steps of this size: one request to the warming thread per step.
pub(crate) const WARM_STEP: u64 = 8 << 20;
/// Read-ahead requests are this small because the kernel caps each at the device's
/// read-ahead size (128 KiB by default) and silently drops the rest.
const WARM_CHUNK: u64 = 128 << 10;

/// The file name of the segment starting at `base`.
pub(crate) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

/// Segment bases found in `dir`, sorted; removes unfinished `.tmp` files.
pub(crate) fn list_segments(dir: &Path) -> MqResult<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in
        std::fs::read_dir(dir).map_err(MqError::io(format!("listing {}", dir.display())))?
    {
        let entry = entry.map_err(MqError::io("listing the commitlog"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            std::fs::remove_file(entry.path()).map_err(MqError::io(format!("removing {name}")))?;
        } else if let Some(stem) = name.strip_suffix(".seg") {
            let base = stem.parse().map_err(|_| {
                MqError::Corrupt(format!("segment file name `{name}` is not <offset>.seg"))
            })?;
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Creates the full-length, allocated, fsynced segment at `base`, with the pages of its
/// first [`WARM_WINDOW`] cached, and opens it.
pub(crate) fn create_segment(dir: &Path, base: u64, segment_bytes: u64) -> MqResult<File> {
    let path = segment_path(dir, base);
    let tmp = path.with_extension("seg.tmp");
    let ctx = |what: &str| format!("{what} segment {}", tmp.display());
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(MqError::io(ctx("creating")))?;
    match fallocate(&file, FallocateFlags::empty(), 0, segment_bytes) {
        Ok(()) => {}
        Err(Errno::OPNOTSUPP) => {
            write_zeroes(&file, segment_bytes).map_err(MqError::io(ctx("zero-filling")))?
        }
        Err(e) => return Err(MqError::io(ctx("allocating"))(e.into())),
    }
    file.sync_all().map_err(MqError::io(ctx("syncing")))?;
    warm(&file, 0, WARM_WINDOW.min(segment_bytes));
    std::fs::rename(&tmp, &path).map_err(MqError::io(ctx("renaming")))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Writes zeroes over the first `len` bytes of a file.
fn write_zeroes(file: &File, len: u64) -> std::io::Result<()> {
    let zeroes = vec![0u8; ZERO_CHUNK];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(ZERO_CHUNK as u64) as usize;
        file.write_all_at(&zeroes[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Asks the kernel to bring `[from, to)` of a segment into the page cache without waiting
/// (over unwritten extents it makes zero pages without reading the disk). Only a hint: a
/// page it misses costs the writer a page allocation, nothing else.
fn warm(file: &File, from: u64, to: u64) {
    let mut at = from;
    while at < to {
        let n = (to - at).min(WARM_CHUNK);
        let _ = fadvise(file, at, NonZeroU64::new(n), Advice::WillNeed);
        at += n;
    }
}

/// Opens an existing segment for reading and writing.
pub(crate) fn open_segment(dir: &Path, base: u64) -> MqResult<File> {
    let path = segment_path(dir, base);
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(MqError::io(format!("opening {}", path.display())))
}

/// Fsyncs a directory so created, renamed and removed names survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> MqResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(MqError::io(format!("syncing directory {}", dir.display())))
}

/// Writes zeroes over `[from, to)` of a segment, skipping chunks that are already zero.
pub(crate) fn zero_range(file: &File, from: u64, to: u64) -> MqResult<()> {
    let mut chunk = vec![0u8; ZERO_CHUNK];
    let zeroes = vec![0u8; ZERO_CHUNK];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZERO_CHUNK as u64) as usize;
        let read = file
            .read_at(&mut chunk[..n], at)
            .map_err(MqError::io("reading a torn tail"))?;
        if chunk[..read].iter().any(|b| *b != 0) {
            file.write_all_at(&zeroes[..n], at)
                .map_err(MqError::io("zeroing a torn tail"))?;
        }
        at += n as u64;
    }
    Ok(())
}

/// A read-ahead request: `[from, to)` of a segment.
type WarmJob = (Arc<File>, u64, u64);

/// Two background threads: one makes the next segment before the writer needs it, one
/// keeps the pages ahead of the writer cached. Apart, so read-ahead for the active segment
/// never waits behind the making of the next one.
pub(crate) struct Preallocator {
    requests: Option<mpsc::Sender<u64>>,
    warms: Option<mpsc::Sender<WarmJob>>,
    ready: mpsc::Receiver<(u64, MqResult<File>)>,
    threads: Vec<JoinHandle<()>>,
}

impl Preallocator {
    /// Starts the threads for segments of `segment_bytes` in `dir`.
    pub(crate) fn start(dir: PathBuf, segment_bytes: u64) -> MqResult<Self> {
        let (req_tx, req_rx) = mpsc::channel::<u64>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (warm_tx, warm_rx) = mpsc::channel::<WarmJob>();
        let maker = spawn("mq-prealloc", move || {
            for base in req_rx {
                let made = create_segment(&dir, base, segment_bytes);
                if ready_tx.send((base, made)).is_err() {
                    return;
                }
            }
        })?;
        let warmer = spawn("mq-warm", move || {
            for (file, from, to) in warm_rx {
                warm(&file, from, to);
            }
        })?;
        Ok(Self {
            requests: Some(req_tx),
            warms: Some(warm_tx),
            ready: ready_rx,
            threads: vec![maker, warmer],
        })
    }

    /// Asks for the segment at `base` to be made.
    pub(crate) fn request(&self, base: u64) {
        if let Some(tx) = &self.requests {
            let _ = tx.send(base);
        }
    }

    /// Asks for the pages of `[from, to)` of `file` to be brought into the page cache.
    pub(crate) fn warm(&self, file: &Arc<File>, from: u64, to: u64) {
        if let Some(tx) = &self.warms {
            let _ = tx.send((Arc::clone(file), from, to));
        }
    }

    /// Waits for the segment at `base` (requested earlier).
    pub(crate) fn take(&self, base: u64) -> MqResult<File> {
        loop {
            match self.ready.recv() {
                Ok((b, file)) if b == base => return file,
                Ok(_) => continue,
                Err(_) => return Err(MqError::Stopped),
            }
        }
    }
}

/// Starts a named thread.
fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> MqResult<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(body)
        .map_err(MqError::io(format!("starting the {name} thread")))
}

impl Drop for Preallocator {
    fn drop(&mut self) {
        self.requests = None;
        self.warms = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preallocated_segments_have_full_length_zeroes_and_no_tmp_left() {
        let dir = tempfile::tempdir().unwrap();
        let pre = Preallocator::start(dir.path().to_path_buf(), 64 * 1024).unwrap();
        pre.request(0);
        pre.request(65_536);
        let a = pre.take(0).unwrap();
        let b = pre.take(65_536).unwrap();
        assert_eq!(a.metadata().unwrap().len(), 65_536);
        assert_eq!(b.metadata().unwrap().len(), 65_536);
        let mut buf = vec![1u8; 65_536];
        a.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|x| *x == 0));
        std::fs::write(dir.path().join("00000000000000131072.seg.tmp"), b"half").unwrap();
        assert_eq!(list_segments(dir.path()).unwrap(), vec![0, 65_536]);
    }

    #[test]
    fn a_segment_of_unaligned_size_is_zeroed_and_allocated_to_its_end() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let size = 3 * 4096 + 100;
        let pre = Preallocator::start(dir.path().to_path_buf(), size).unwrap();
        pre.request(size);
        let file = Arc::new(pre.take(size).unwrap());
        pre.warm(&file, 0, size);
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), size);
        // No holes: every block is allocated, so the writer never allocates one.
        assert!(meta.blocks() * 512 >= size, "{} blocks", meta.blocks());
        let mut buf = vec![1u8; size as usize];
        file.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|x| *x == 0));
    }
}
