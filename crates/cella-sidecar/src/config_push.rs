//! Pushes config changes to the app, one lane per path (`/configuration/{store}/{key}`).
//!
//! Guarantees: lanes do not wait on each other, so a slow or failing key does not hold back
//! the others. Within a lane one POST is in flight at a time and each POST carries the newest
//! value queued, so the app never receives an older value after a newer one: a newer value
//! replaces a pending retry and, while a POST is in flight, is sent once it ends. A POST
//! the app fails (no answer, or a status outside 2xx) is retried after 100 ms, doubling to at
//! most 5 s, [`MAX_ATTEMPTS`] times in all; then the value is dropped with a warning (the
//! key's next change carries its whole value again). Dropping the [`Pusher`] stops every
//! lane, pending retries included. Limits: a lane lives as long as its pusher.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use cella_base::Backoff;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::app::AppChannel;

/// Pauses between retries.
const RETRY: Backoff = Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_secs(5),
};
/// Most POSTs of one value (the first one included).
const MAX_ATTEMPTS: u32 = 10;

/// The pause after failed attempt number `attempt` (1-based), or None to give up.
fn retry_pause(attempt: u32) -> Option<Duration> {
    (attempt < MAX_ATTEMPTS).then(|| RETRY.pause(attempt))
}

/// The lanes of one subscription.
pub(crate) struct Pusher {
    app: AppChannel,
    lanes: HashMap<String, watch::Sender<Bytes>>,
    running: JoinSet<()>,
}

impl Pusher {
    /// A pusher with no lanes yet.
    pub fn new(app: AppChannel) -> Pusher {
        Pusher {
            app,
            lanes: HashMap::new(),
            running: JoinSet::new(),
        }
    }

    /// Queues a JSON `body` for `path`, replacing the value pending there.
    pub fn push(&mut self, path: String, body: Bytes) {
        if let Some(lane) = self.lanes.get(&path) {
            lane.send_replace(body);
            return;
        }
        let (lane, latest) = watch::channel(Bytes::new());
        // Sent after the receiver exists, so the lane sees it as a change.
        lane.send_replace(body);
        self.running
            .spawn(run_lane(self.app.clone(), path.clone(), latest));
        self.lanes.insert(path, lane);
    }
}

/// Delivers the newest value of one path until the pusher is dropped.
async fn run_lane(app: AppChannel, path: String, mut latest: watch::Receiver<Bytes>) {
    while latest.changed().await.is_ok() {
        let mut body = latest.borrow_and_update().clone();
        let mut attempt = 1;
        loop {
            let failure = match post(&app, &path, body.clone()).await {
                Ok(()) => break,
                Err(failure) => failure,
            };
            let Some(pause) = retry_pause(attempt) else {
                tracing::warn!(%path, attempt, %failure, "config change not delivered, giving up");
                break;
            };
            tracing::debug!(%path, attempt, %failure, ?pause, "config change not delivered, retrying");
            attempt += 1;
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                changed = latest.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    body = latest.borrow_and_update().clone();
                    attempt = 1;
                }
            }
        }
    }
}

/// One POST of `body` to the app; Err says why it did not succeed.
async fn post(app: &AppChannel, path: &str, body: Bytes) -> Result<(), String> {
    match app.post(path, "application/json", body, &[]).await {
        Ok(answer) if (200..300).contains(&answer.status) => Ok(()),
        Ok(answer) => Err(format!("the app answered {}", answer.status)),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_from_100_ms_doubling_to_5_s_then_give_up() {
        let pauses: Vec<Duration> = (1..).map_while(retry_pause).collect();
        let ms: Vec<u128> = pauses.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(pauses.len() as u32 + 1, MAX_ATTEMPTS);
        assert_eq!(retry_pause(MAX_ATTEMPTS), None);
    }
}
