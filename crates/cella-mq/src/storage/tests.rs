//! Store tests over real files: round trips, segment rolls, torn and corrupt tails,
//! crash images taken while producers are writing, and retention.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;

fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        segment_bytes: 16 * 1024,
        // Only explicit checkpoints: a crash image then has to replay from the open point.
        checkpoint_interval: Duration::from_secs(3600),
        ..StoreConfig::new(dir)
    }
}

fn message(topic: &str, queue_id: u32, n: u64, tag: &str) -> StoredMessage {
    StoredMessage {
        topic: topic.into(),
        queue_id,
        queue_offset: 0,
        id: u128::from(n) + 1_000,
        tag: tag.into(),
        keys: vec![format!("key-{}", n % 3)],
        properties: BTreeMap::new(),
        body: format!("body-{n}-{}", "x".repeat(200)).into_bytes(),
        born_ms: n,
        stored_ms: n,
    }
}

fn bodies(store: &Store, topic: &str, queue_id: u32) -> Vec<String> {
    let read = store.read_queue(topic, queue_id, 0, 100_000, &[]).unwrap();
    read.messages
        .iter()
        .map(|m| String::from_utf8(m.body.clone()).unwrap())
        .collect()
}

/// Copies a store directory while it may be written: what a crash would leave behind.
fn crash_image(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            crash_image(&entry.path(), &target);
        } else if let Ok(bytes) = std::fs::read(entry.path()) {
            std::fs::write(&target, bytes).unwrap();
        }
    }
}

fn active_segment(dir: &Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("commitlog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    // The last file is the preallocated, empty next segment unless none was made yet.
    segs.into_iter()
        .rev()
        .find(|p| std::fs::read(p).unwrap().iter().any(|b| *b != 0))
        .unwrap()
}

#[tokio::test]
async fn appends_are_read_back_by_queue_tag_key_and_id_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    for n in 0..10 {
        let a = store
            .append(
                message("t", (n % 2) as u32, n, if n % 3 == 0 { "a" } else { "b" }),
                FlushMode::Sync,
            )
            .await
            .unwrap();
        assert_eq!(a.queue_offset, n / 2);
    }
    assert_eq!(store.queue_bounds("t", 0).unwrap(), (0, 5));
    let tagged = store
        .read_queue("t", 0, 0, 100, &["a".to_string()])
        .unwrap();
    assert_eq!(
        tagged
            .messages
            .iter()
            .map(|m| m.born_ms)
            .collect::<Vec<_>>(),
        vec![0, 6]
    );
    assert_eq!(tagged.next_offset, 5);
    let page = store.read_queue("t", 1, 1, 2, &[]).unwrap();
    assert_eq!(
        page.messages
            .iter()
            .map(|m| m.queue_offset)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(page.next_offset, 3);
    assert_eq!(store.find_by_key("key-1").unwrap().len(), 3);
    assert_eq!(store.find_by_id(1_004).unwrap().unwrap().born_ms, 4);
    assert!(store.find_by_id(7).unwrap().is_none());
    drop(store);

    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(store.queue_bounds("t", 1).unwrap(), (0, 5));
    assert_eq!(store.find_by_key("key-1").unwrap().len(), 3);
    let a = store
        .append(message("t", 1, 10, "a"), FlushMode::Async)
        .await
        .unwrap();
    assert_eq!(a.queue_offset, 5);
}

#[tokio::test]
async fn reopening_over_allocated_but_unwritten_space_finds_the_end_and_appends_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    for n in 0..3 {
        store
            .append(message("t", 0, n, "a"), FlushMode::Sync)
            .await
            .unwrap();
    }
    let end = store.log_bounds().1;
    drop(store);
    // The active segment's tail (and the next segment, if made) was allocated, never written.
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(store.log_bounds().1, end);
    let a = store
        .append(message("t", 0, 3, "a"), FlushMode::Sync)
        .await
        .unwrap();
    assert_eq!((a.offset, a.queue_offset), (end, 3));
    assert_eq!(bodies(&store, "t", 0).len(), 4);
}

#[tokio::test]
async fn records_roll_into_new_segments_and_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    for n in 0..400 {
        store
            .append(message("t", 0, n, ""), FlushMode::Async)
            .await
            .unwrap();
    }
    let (_, end) = store.log_bounds();
    assert!(
        end > 5 * 16 * 1024,
        "400 records of ~250 bytes fill several 16 KiB segments"
    );
    assert_eq!(bodies(&store, "t", 0).len(), 400);
    drop(store);
    let store = Store::open(config(dir.path())).unwrap();
    let all = bodies(&store, "t", 0);
    assert_eq!(all.len(), 400);
    assert!(all[399].starts_with("body-399-"));
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_queues_and_index_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    let mut last = None;
    for n in 0..20 {
        last = Some(
            store
                .append(message("t", 0, n, ""), FlushMode::Sync)
                .await
                .unwrap(),
        );
    }
    crash_image(dir.path(), image.path());
    drop(store);

    // Cut the file in the middle of the last record, as a crash mid-write would.
    let seg_path = active_segment(image.path());
    let last = last.unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg_path)
        .unwrap();
    file.set_len(last.offset % (16 * 1024) + 12).unwrap();
    drop(file);

    let store = Store::open(config(image.path())).unwrap();
    assert_eq!(store.queue_bounds("t", 0).unwrap(), (0, 19));
    assert_eq!(bodies(&store, "t", 0).len(), 19);
    assert!(
        store.find_by_id(1_019).unwrap().is_none(),
        "the cut message is not in the index"
    );
    assert_eq!(
        std::fs::metadata(&seg_path).unwrap().len(),
        16 * 1024,
        "segment length restored"
    );
    let a = store
        .append(message("t", 0, 99, ""), FlushMode::Sync)
        .await
        .unwrap();
    assert_eq!(
        (a.offset, a.queue_offset),
        (last.offset, 19),
        "the next record reuses the torn space"
    );
    drop(store);
    let store = Store::open(config(image.path())).unwrap();
    assert_eq!(bodies(&store, "t", 0).len(), 20);
    assert!(bodies(&store, "t", 0)[19].starts_with("body-99-"));
}

#[tokio::test]
async fn a_corrupt_record_ends_the_log_and_nothing_after_it_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    let mut offsets = Vec::new();
    for n in 0..10 {
        offsets.push(
            store
                .append(message("t", (n % 2) as u32, n, ""), FlushMode::Sync)
                .await
                .unwrap()
                .offset,
        );
    }
    crash_image(dir.path(), image.path());
    drop(store);
    let seg_path = active_segment(image.path());
    let mut bytes = std::fs::read(&seg_path).unwrap();
    bytes[(offsets[6] % (16 * 1024)) as usize + 20] ^= 0xff;
    std::fs::write(&seg_path, &bytes).unwrap();

    let store = Store::open(config(image.path())).unwrap();
    assert_eq!(
        store.queue_bounds("t", 0).unwrap(),
        (0, 3),
        "records 0, 2, 4 survive in queue 0"
    );
    assert_eq!(
        store.queue_bounds("t", 1).unwrap(),
        (0, 3),
        "records 1, 3, 5 survive in queue 1"
    );
    let rest = std::fs::read(&seg_path).unwrap();
    assert!(
        rest[(offsets[6] % (16 * 1024)) as usize..]
            .iter()
            .all(|b| *b == 0),
        "tail zeroed"
    );
}

#[tokio::test]
async fn lost_consume_queue_entries_are_rebuilt_from_the_commitlog() {
    let dir = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    for n in 0..30 {
        store
            .append(message("t", 0, n, ""), FlushMode::Sync)
            .await
            .unwrap();
    }
    crash_image(dir.path(), image.path());
    drop(store);
    let cq = image.path().join("cq/t/0.cq");
    let f = std::fs::OpenOptions::new().write(true).open(&cq).unwrap();
    f.set_len(20 * 7 + 9).unwrap();
    drop(f);
    std::fs::remove_file(image.path().join("index/lookup.idx")).unwrap();
    let store = Store::open(config(image.path())).unwrap();
    assert_eq!(bodies(&store, "t", 0).len(), 30);
    assert_eq!(store.find_by_key("key-2").unwrap().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_image_taken_during_concurrent_sync_appends_keeps_every_acknowledged_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(config(dir.path())).unwrap());
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut producers = Vec::new();
    for p in 0..4u64 {
        let (store, acked) = (Arc::clone(&store), Arc::clone(&acked));
        producers.push(tokio::spawn(async move {
            for n in 0..150u64 {
                let m = message("t", p as u32, p * 1000 + n, "");
                let id = m.id;
                if store.append(m, FlushMode::Sync).await.is_ok() {
                    acked.lock().unwrap().push(id);
                }
            }
        }));
    }
    // Take images while producers run; each must hold what was acked before it started.
    let mut images = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let before = acked.lock().unwrap().clone();
        let image = tempfile::tempdir().unwrap();
        crash_image(dir.path(), image.path());
        images.push((before, image));
    }
    for p in producers {
        p.await.unwrap();
    }
    for (before, image) in images {
        let store = Store::open(config(image.path())).unwrap();
        for id in &before {
            assert!(
                store.find_by_id(*id).unwrap().is_some(),
                "acked message {id} lost"
            );
        }
        for q in 0..4 {
            let read = store.read_queue("t", q, 0, 10_000, &[]).unwrap();
            let offsets: Vec<u64> = read.messages.iter().map(|m| m.queue_offset).collect();
            assert_eq!(
                offsets,
                (0..offsets.len() as u64).collect::<Vec<_>>(),
                "queue {q} is gap-free"
            );
        }
    }
}

#[tokio::test]
async fn retention_deletes_whole_old_segments_by_size_and_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.retention_bytes = Some(3 * 16 * 1024);
    let store = Store::open(cfg).unwrap();
    for n in 0..300 {
        store
            .append(message("t", 0, n, ""), FlushMode::Async)
            .await
            .unwrap();
    }
    let deleted = store.retain(0).await.unwrap();
    assert!(deleted > 0);
    let (start, _) = store.log_bounds();
    assert!(start > 0);
    let (min, next) = store.queue_bounds("t", 0).unwrap();
    assert!(min > 0 && next == 300);
    let read = store.read_queue("t", 0, 0, 1, &[]).unwrap();
    assert_eq!(
        read.messages[0].queue_offset, min,
        "reads start at the first retained message"
    );
    let (start, end) = store.log_bounds();
    assert!(
        end - start <= 3 * 16 * 1024,
        "at most three segments are kept"
    );
    assert!(store
        .find_by_key("key-0")
        .unwrap()
        .iter()
        .all(|m| m.queue_offset >= min));
    drop(store);

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.retention = Some(Duration::from_millis(1000));
    let store = Store::open(cfg).unwrap();
    for n in 0..200 {
        // stored_ms = n: the records of later segments are newer.
        store
            .append(message("t", 0, n, ""), FlushMode::Async)
            .await
            .unwrap();
    }
    assert_eq!(
        store.retain(500).await.unwrap(),
        0,
        "nothing is a second old at t=500ms"
    );
    let deleted = store.retain(1_100).await.unwrap();
    let (min, _) = store.queue_bounds("t", 0).unwrap();
    assert!(deleted > 0 && min > 0);
    assert!(
        store.read_queue("t", 0, 0, 1, &[]).unwrap().messages[0].stored_ms + 1000 >= 1_100 - 60
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_lands_in_order_and_contiguously_among_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(config(dir.path())).unwrap());
    let single = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for n in 0..200u64 {
                store
                    .append(message("t", 0, n, ""), FlushMode::Async)
                    .await
                    .unwrap();
            }
        })
    };
    let mut batches = Vec::new();
    for round in 0..5u64 {
        let batch: Vec<StoredMessage> = (0..40)
            .map(|n| message("t", 0, 10_000 + round * 100 + n, ""))
            .collect();
        let appended = store.append_batch(batch, FlushMode::Sync).await.unwrap();
        let offsets: Vec<u64> = appended.iter().map(|a| a.queue_offset).collect();
        assert_eq!(
            offsets,
            (offsets[0]..offsets[0] + 40).collect::<Vec<_>>(),
            "round {round}: no other append inside the batch"
        );
        batches.push(offsets[0]);
    }
    single.await.unwrap();
    assert!(store
        .append_batch(Vec::new(), FlushMode::Sync)
        .await
        .unwrap()
        .is_empty());
    let all = bodies(&store, "t", 0);
    assert_eq!(all.len(), 400);
    for (round, first) in batches.into_iter().enumerate() {
        for n in 0..40 {
            let expected = format!("body-{}-", 10_000 + round as u64 * 100 + n);
            assert!(all[(first + n) as usize].starts_with(&expected));
        }
    }
}

#[test]
fn a_pull_reads_neighbouring_records_in_runs_split_by_segment_gap_and_size() {
    let entry = |offset, size| CqEntry {
        offset,
        size,
        tag_hash: 0,
    };
    let entries = [
        entry(0, 100),
        entry(100, 100),
        // a small gap (another queue's record): still one read
        entry(250, 100),
        // a gap larger than the records: a new run
        entry(2_000, 100),
        // the next segment (segments of 4,096 bytes here): a new run
        entry(4_096, 100),
        entry(4_196, 100),
    ];
    let runs: Vec<Vec<u64>> = read_runs(&entries, 4_096)
        .map(|run| run.iter().map(|e| e.offset).collect())
        .collect();
    assert_eq!(
        runs,
        vec![vec![0, 100, 250], vec![2_000], vec![4_096, 4_196]]
    );
    assert_eq!(run_span(&entries[..3]), 350);

    // A run never spans more than RUN_READ_MAX.
    let size = 64 << 10;
    let big: Vec<CqEntry> = (0..8).map(|i| entry(i * size, size as u32)).collect();
    let lens: Vec<usize> = read_runs(&big, 1 << 30).map(<[CqEntry]>::len).collect();
    assert_eq!(lens, vec![4, 4]);
}
