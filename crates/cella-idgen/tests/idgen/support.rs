//! A single-member core in a temp dir, and a manual clock that runs on its own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cella_base::ManualClock;
use cella_core::{Core, CoreConfig, Membership};

/// The longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A core member started in its own temp dir; ready (leader elected) on return.
pub struct TestCore {
    pub core: Core,
    _dir: tempfile::TempDir,
}

impl TestCore {
    pub async fn start() -> TestCore {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = "127.0.0.1:1".to_string();
        let config = CoreConfig {
            election_timeout_ms: 200,
            ..CoreConfig::default()
        };
        let core = Core::start(
            Membership {
                node_id: 1,
                addr: addr.clone(),
                initial_members: BTreeMap::from([(1, addr)]),
                data_dir: dir.path().to_path_buf(),
            },
            config,
        )
        .await
        .expect("core starts");
        tokio::time::timeout(WAIT, async {
            while !core.is_ready() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("core ready within the wait");
        TestCore { core, _dir: dir }
    }
}

/// A manual clock (origin: the Unix epoch) that a background thread moves forward one
/// millisecond every `tick`, so generators waiting on it make progress; tests also step it
/// back by hand.
pub struct RunningClock {
    pub clock: ManualClock,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningClock {
    pub fn start(unix_ms: u64, tick: Duration) -> RunningClock {
        let clock = ManualClock::new();
        clock.advance(Duration::from_millis(unix_ms));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (clock, stop) = (clock.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(tick);
                    clock.advance(Duration::from_millis(1));
                }
            })
        };
        RunningClock {
            clock,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RunningClock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
