//! A fault injector for clusters: kill -9 a member, keep it down a while, restart it.
//!
//! One member is down at a time, and the next kill waits until the restarted member is
//! ready again, so a 3-member cluster keeps its majority except while a restarted member
//! catches up. Each round kills the current leader with probability
//! [`Nemesis::leader_share`], otherwise a random running member. Everything done is
//! returned as timed [`NemesisEvent`]s for the test to print.

use std::fmt;
use std::ops::Range;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};

use crate::cluster::Cluster;
use crate::node::NodeId;

/// Kill/restart schedule; see the module docs.
#[derive(Clone, Debug)]
pub struct Nemesis {
    /// Time between a member being ready again and the next kill.
    pub quiet: Range<Duration>,
    /// Time a killed member stays down.
    pub down: Range<Duration>,
    /// Probability that a round kills the leader rather than a random member.
    pub leader_share: f64,
    /// How long a restarted member may take to become ready before the run fails.
    pub ready_timeout: Duration,
    /// Seed of the random choices.
    pub seed: u64,
}

impl Default for Nemesis {
    fn default() -> Self {
        Nemesis {
            quiet: Duration::from_millis(500)..Duration::from_millis(2000),
            down: Duration::from_millis(300)..Duration::from_millis(2000),
            leader_share: 0.5,
            ready_timeout: Duration::from_secs(20),
            seed: 0,
        }
    }
}

/// Something the nemesis did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NemesisAction {
    /// Killed a member with SIGKILL.
    Kill { node: NodeId, was_leader: bool },
    /// Started it again.
    Restart { node: NodeId },
    /// The restarted member answered `/readyz`, this long after its restart.
    Ready { node: NodeId, after: Duration },
}

/// A [`NemesisAction`] and when it happened.
#[derive(Clone, Debug)]
pub struct NemesisEvent {
    pub at: Instant,
    pub action: NemesisAction,
}

impl fmt::Display for NemesisAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NemesisAction::Kill {
                node,
                was_leader: true,
            } => write!(f, "kill -9 node {node} (leader)"),
            NemesisAction::Kill {
                node,
                was_leader: false,
            } => write!(f, "kill -9 node {node}"),
            NemesisAction::Restart { node } => write!(f, "restart node {node}"),
            NemesisAction::Ready { node, after } => {
                write!(f, "node {node} ready {after:?} after restart")
            }
        }
    }
}

impl Nemesis {
    /// Kills and restarts members of `cluster` until `duration` has passed; every member is
    /// up again when it returns. Fails if a restarted member does not become ready.
    pub async fn run(
        &self,
        cluster: &mut Cluster,
        duration: Duration,
    ) -> anyhow::Result<Vec<NemesisEvent>> {
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let end = Instant::now() + duration;
        let mut events = Vec::new();
        let mut record = |action| {
            events.push(NemesisEvent {
                at: Instant::now(),
                action,
            })
        };
        loop {
            tokio::time::sleep(rng.random_range(self.quiet.clone())).await;
            if Instant::now() >= end {
                break;
            }
            let leader = if rng.random_bool(self.leader_share) {
                cluster.leader().await
            } else {
                None
            };
            let running = cluster.running_ids();
            let Some(node) = leader.or_else(|| {
                (!running.is_empty()).then(|| running[rng.random_range(0..running.len())])
            }) else {
                break;
            };
            cluster.kill9(node)?;
            record(NemesisAction::Kill {
                node,
                was_leader: leader == Some(node),
            });
            let down = rng
                .random_range(self.down.clone())
                .min(end.saturating_duration_since(Instant::now()));
            tokio::time::sleep(down).await;
            cluster.restart(node)?;
            let restarted = Instant::now();
            record(NemesisAction::Restart { node });
            cluster
                .member_mut(node)
                .wait_ready(self.ready_timeout)
                .await?;
            record(NemesisAction::Ready {
                node,
                after: restarted.elapsed(),
            });
        }
        Ok(events)
    }
}
