//! The progress line on stderr: elapsed time, operations so far and the current rate,
//! redrawn once a second. Drawn only when stderr is a terminal, so logs and pipes stay clean.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the progress line is about, e.g. `kv-put etcd 64 clients`.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    label: String,
}

impl Progress {
    /// A progress line with this label, or `None` when stderr is not a terminal.
    pub(crate) fn for_terminal(label: String) -> Option<Progress> {
        std::io::stderr()
            .is_terminal()
            .then_some(Progress { label })
    }

    /// Starts redrawing the line once a second from the `completed` counter.
    pub(crate) fn start(&self, completed: Arc<AtomicU64>) -> Ticker {
        let label = self.label.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut last = (started, 0u64);
            let mut tick =
                tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
            loop {
                let now = tick.tick().await;
                let ops = completed.load(Ordering::Relaxed);
                let current = crate::stats::rate(ops - last.1, now - last.0);
                last = (now, ops);
                eprint!(
                    "\r\x1b[2K{label}: {:>4.0}s  {ops} ops  {current:.0} ops/s",
                    (now - started).as_secs_f64()
                );
                let _ = std::io::stderr().flush();
            }
        });
        Ticker { task }
    }
}

/// A running progress line; [`Ticker::finish`] stops it and clears the line. Dropping it
/// (say, when a run is abandoned) stops it too.
pub(crate) struct Ticker {
    task: JoinHandle<()>,
}

impl Ticker {
    /// Stops redrawing and erases the line.
    pub(crate) fn finish(self) {
        drop(self);
        eprint!("\r\x1b[2K");
        let _ = std::io::stderr().flush();
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.task.abort();
    }
}
