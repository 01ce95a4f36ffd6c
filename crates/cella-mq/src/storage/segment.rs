//! Commitlog segment files: `commitlog/<base offset, 20 digits>.seg`, each exactly
//! `segment_bytes` long, holding records from its start; the unused tail is zeroes.
//!
//! A new segment is made as `<base>.seg.tmp`: its full length is written with zeroes (every
//! page touched, so the file system allocates all blocks and the page cache holds them),
//! fsynced, then renamed to `<base>.seg` and the directory fsynced. So a `.seg` file always
//! has its full length; a crash leaves at most a `.tmp` file, which opening removes. This
//! runs on a background [`Preallocator`] thread, one segment ahead of the writer.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::error::{MqError, MqResult};

/// Zero-writes happen in chunks of this size (a multiple of the 4 KiB page).
const ZERO_CHUNK: usize = 1 << 20;

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

/// Creates the full-length, zero-filled, fsynced segment at `base` and opens it.
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
    let zeroes = vec![0u8; ZERO_CHUNK];
    let mut at = 0u64;
    while at < segment_bytes {
        let n = (segment_bytes - at).min(ZERO_CHUNK as u64) as usize;
        file.write_all_at(&zeroes[..n], at)
            .map_err(MqError::io(ctx("pre-warming")))?;
        at += n as u64;
    }
    file.sync_all().map_err(MqError::io(ctx("syncing")))?;
    std::fs::rename(&tmp, &path).map_err(MqError::io(ctx("renaming")))?;
    sync_dir(dir)?;
    Ok(file)
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

/// A background thread that makes the next segment before the writer needs it.
pub(crate) struct Preallocator {
    requests: Option<mpsc::Sender<u64>>,
    ready: mpsc::Receiver<(u64, MqResult<File>)>,
    thread: Option<JoinHandle<()>>,
}

impl Preallocator {
    /// Starts the thread for segments of `segment_bytes` in `dir`.
    pub(crate) fn start(dir: PathBuf, segment_bytes: u64) -> MqResult<Self> {
        let (req_tx, req_rx) = mpsc::channel::<u64>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("mq-prealloc".into())
            .spawn(move || {
                for base in req_rx {
                    if ready_tx
                        .send((base, create_segment(&dir, base, segment_bytes)))
                        .is_err()
                    {
                        return;
                    }
                }
            })
            .map_err(MqError::io("starting the preallocation thread"))?;
        Ok(Self {
            requests: Some(req_tx),
            ready: ready_rx,
            thread: Some(thread),
        })
    }

    /// Asks for the segment at `base` to be made.
    pub(crate) fn request(&self, base: u64) {
        if let Some(tx) = &self.requests {
            let _ = tx.send(base);
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

impl Drop for Preallocator {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(t) = self.thread.take() {
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
}
