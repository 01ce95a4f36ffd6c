//! Elections with a pre-vote round (Raft thesis §9.6).
//!
//! openraft 0.9 campaigns by raising its term at once. When a leader dies, the survivor whose
//! log is behind may campaign first: it cannot win, and the term it raised makes the
//! up-to-date survivor's first campaign fail too, so a failover takes two or three rounds.
//! Cella therefore turns openraft's election timer off and runs this one. A voter that has
//! heard no leader for its randomized timeout (between half and all of the election timeout)
//! first asks the other voters whether they would vote for it, and asks openraft to campaign
//! only when a majority says yes. A voter says yes when the candidate's log is at least as
//! up to date as its own and it has heard no leader for half the timeout itself (openraft's
//! leader lease, which would refuse the real vote anyway). So only a member that can win
//! campaigns, and a restarted or partitioned member never unseats a healthy leader.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use openraft::ServerState;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::network::PeerClient;
use crate::node::Core;
use crate::types::{LogId, NodeId};

/// Asks a voter whether it would vote for `candidate` if it campaigned now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PreVoteRequest {
    pub candidate: NodeId,
    pub last_log_id: Option<LogId>,
}

/// A voter's answer to a [`PreVoteRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PreVoteResponse {
    pub granted: bool,
}

/// When this member last heard a leader, and when its election timer started.
#[derive(Debug)]
pub(crate) struct ElectionClock {
    election_timeout: Duration,
    state: Mutex<ClockState>,
}

#[derive(Debug)]
struct ClockState {
    /// Last accepted AppendEntries or InstallSnapshot, or vote granted; `None` since start.
    heard_leader_at: Option<Instant>,
    /// The timer counts from here: start, the last leader contact, or the last campaign.
    waiting_since: Instant,
}

impl ElectionClock {
    pub(crate) fn new(election_timeout: Duration) -> Self {
        Self {
            election_timeout,
            state: Mutex::new(ClockState {
                heard_leader_at: None,
                waiting_since: Instant::now(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state
            .lock()
            .expect("election clock poisoned only by a panic")
    }

    /// Records contact with a leader (or a vote granted to a candidate): restarts the timer.
    pub(crate) fn heard_leader(&self) {
        let now = Instant::now();
        let mut state = self.state();
        state.heard_leader_at = Some(now);
        state.waiting_since = now;
    }

    fn campaigned(&self) {
        self.state().waiting_since = Instant::now();
    }

    fn waiting_since(&self) -> Instant {
        self.state().waiting_since
    }

    /// Whether a leader was heard within the lease, during which real votes are refused.
    fn leader_recently_heard(&self) -> bool {
        self.state()
            .heard_leader_at
            .is_some_and(|at| at.elapsed() < self.lease())
    }

    fn lease(&self) -> Duration {
        self.election_timeout / 2
    }

    /// A fresh random wait in [timeout / 2, timeout), so members rarely campaign together.
    fn random_wait(&self) -> Duration {
        let half = self.lease();
        half + rand::rng().random_range(Duration::ZERO..half.max(Duration::from_millis(1)))
    }
}

/// Whether a voter grants a pre-vote: the candidate's log is at least as up to date as its
/// own and it has not heard a leader within the lease (a leader never grants).
pub(crate) fn grant_pre_vote(
    request: &PreVoteRequest,
    my_last_log_id: Option<LogId>,
    i_lead: bool,
    leader_recently_heard: bool,
) -> bool {
    !i_lead && !leader_recently_heard && request.last_log_id >= my_last_log_id
}

impl Core {
    /// Records contact with a leader, or a vote granted; restarts the election timer.
    pub(crate) fn heard_leader(&self) {
        self.inner.election.heard_leader();
    }

    /// Answers a peer's pre-vote.
    pub(crate) fn handle_pre_vote(&self, request: &PreVoteRequest) -> PreVoteResponse {
        let i_lead = self.inner.metrics.borrow().state == ServerState::Leader;
        PreVoteResponse {
            granted: grant_pre_vote(
                request,
                self.inner.log.last_log_id(),
                i_lead,
                self.inner.election.leader_recently_heard(),
            ),
        }
    }

    /// The election loop: campaigns when the timer runs out and a pre-vote round passes.
    pub(crate) async fn run_elections(self) {
        let clock = &self.inner.election;
        let mut wait = clock.random_wait();
        loop {
            let since = clock.waiting_since();
            // A sole voter has nobody to disrupt: it campaigns at once (after a short pause,
            // so a leader does not spin here).
            let sole_voter = self
                .inner
                .metrics
                .borrow()
                .membership_config
                .voter_ids()
                .eq([self.inner.id]);
            let pause = if sole_voter { clock.lease() / 10 } else { wait };
            tokio::time::sleep_until(since + pause).await;
            if clock.waiting_since() != since {
                continue; // a leader was heard meanwhile: the timer restarted
            }
            wait = clock.random_wait();
            let (i_lead, voters) = {
                let metrics = self.inner.metrics.borrow();
                let voters: BTreeSet<NodeId> =
                    metrics.membership_config.membership().voter_ids().collect();
                (metrics.state == ServerState::Leader, voters)
            };
            if i_lead || !voters.contains(&self.inner.id) {
                clock.campaigned();
                continue;
            }
            if self.pre_vote(&voters).await {
                tracing::info!(
                    "no leader heard and a majority would vote for this member: campaigning"
                );
                if let Err(e) = self.inner.raft.trigger().elect().await {
                    tracing::warn!(error = %e, "could not start an election");
                }
            }
            clock.campaigned();
        }
    }

    /// Asks the other voters for a pre-vote; true with a majority, this member included.
    async fn pre_vote(&self, voters: &BTreeSet<NodeId>) -> bool {
        let request = PreVoteRequest {
            candidate: self.inner.id,
            last_log_id: self.inner.log.last_log_id(),
        };
        let majority = voters.len() / 2 + 1;
        let timeout = self.inner.election.lease();
        let peers: Vec<(NodeId, String)> = {
            let metrics = self.inner.metrics.borrow();
            let membership = metrics.membership_config.membership();
            voters
                .iter()
                .filter(|id| **id != self.inner.id)
                .filter_map(|id| Some((*id, membership.get_node(id)?.addr.clone())))
                .collect()
        };
        let asks = peers.into_iter().map(|(id, addr)| {
            let mut client = PeerClient::new(id, self.inner.channels.get(&addr).ok());
            let request = request.clone();
            async move { client.pre_vote(&request, timeout).await }
        });
        let answers = futures::future::join_all(asks).await;
        let granted = 1 + answers
            .iter()
            .filter(|a| matches!(a, Ok(PreVoteResponse { granted: true })))
            .count();
        tracing::debug!(granted, majority, "pre-vote round");
        granted >= majority
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log_id(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn ask(last_log_id: Option<LogId>) -> PreVoteRequest {
        PreVoteRequest {
            candidate: 2,
            last_log_id,
        }
    }

    #[test]
    fn grants_a_candidate_at_least_as_up_to_date_when_no_leader_is_heard() {
        assert!(grant_pre_vote(
            &ask(log_id(2, 10)),
            log_id(2, 10),
            false,
            false
        ));
        assert!(grant_pre_vote(
            &ask(log_id(3, 1)),
            log_id(2, 10),
            false,
            false
        ));
        assert!(grant_pre_vote(&ask(None), None, false, false));
    }

    #[test]
    fn refuses_a_candidate_whose_log_is_behind() {
        assert!(!grant_pre_vote(
            &ask(log_id(2, 9)),
            log_id(2, 10),
            false,
            false
        ));
        assert!(!grant_pre_vote(
            &ask(log_id(1, 50)),
            log_id(2, 10),
            false,
            false
        ));
        assert!(!grant_pre_vote(&ask(None), log_id(1, 1), false, false));
    }

    #[test]
    fn refuses_while_a_leader_is_heard_or_when_leading() {
        assert!(!grant_pre_vote(
            &ask(log_id(2, 10)),
            log_id(2, 10),
            false,
            true
        ));
        assert!(!grant_pre_vote(
            &ask(log_id(2, 10)),
            log_id(2, 10),
            true,
            false
        ));
    }

    #[test]
    fn a_leader_counts_as_heard_for_half_the_timeout() {
        let long = ElectionClock::new(Duration::from_secs(600));
        assert!(!long.leader_recently_heard(), "nothing heard since start");
        long.heard_leader();
        assert!(long.leader_recently_heard());

        let short = ElectionClock::new(Duration::from_millis(4));
        short.heard_leader();
        std::thread::sleep(Duration::from_millis(10));
        assert!(!short.leader_recently_heard());
    }

    #[test]
    fn waits_are_between_half_and_all_of_the_timeout() {
        let clock = ElectionClock::new(Duration::from_millis(1000));
        for _ in 0..1000 {
            let wait = clock.random_wait();
            assert!(wait >= Duration::from_millis(500) && wait < Duration::from_millis(1000));
        }
    }
}
