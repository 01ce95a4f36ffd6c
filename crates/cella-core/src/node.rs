//! A member of the consistent core: openraft wired to the log, the state machine and peers,
//! and the operations the APIs call.
//!
//! Writes become commands in the Raft log; a follower forwards them to the leader. Reads are
//! linearizable by default: the leader confirms its leadership with a quorum (read index) and
//! the answering node waits until it has applied that far. Serializable reads skip that and
//! answer from the local replica.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cella_base::{Clock, SystemClock};
use cella_proto::cella::core::v1::{
    self as corepb, command, command_result, forward_request, forward_response,
    raft_peer_client::RaftPeerClient,
};
use cella_proto::etcdserverpb::{self as pb, response_op};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, ChangeMembers, RaftMetrics, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

use crate::election::ElectionClock;
use crate::error::{CoreError, CoreResult};
use crate::gateway::ApiError;
use crate::lease::LeaseTimer;
use crate::log_store::LogStore;
use crate::metrics;
use crate::network::{PeerChannels, PeerNetworkFactory};
use crate::state_machine::{Shared, StateMachine};
use crate::types::{Batch, LogId, NodeId, Raft};
use crate::validate::{self, Limits};

/// Tunables of the consistent core; the `[core]` table of the server's TOML file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CoreConfig {
    /// Name shared by the members of one cluster; the cluster id is derived from it.
    pub cluster_name: String,
    /// Election timeout in milliseconds: the longest a follower waits for the leader before
    /// campaigning (randomized over its second half); heartbeats every tenth of it.
    pub election_timeout_ms: u64,
    /// Take a snapshot (and compact the Raft log) after this many entries. Each snapshot
    /// copies and writes the whole store, so the default is etcd's (100,000): with a store
    /// of 150 MB, a snapshot every 10,000 entries stalled writes for tens of milliseconds.
    pub snapshot_every: u64,
    /// How long a write or read may wait for the cluster before failing.
    pub request_timeout_ms: u64,
    /// Keep this many revisions of history; older ones are compacted automatically (0: never).
    pub auto_compaction_revisions: i64,
    /// Request size limits.
    pub limits: Limits,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            cluster_name: "cella".into(),
            election_timeout_ms: 1000,
            snapshot_every: 100_000,
            request_timeout_ms: 5000,
            auto_compaction_revisions: 0,
            limits: Limits::default(),
        }
    }
}

/// Where a member runs and who its initial peers are.
#[derive(Debug, Clone)]
pub struct Membership {
    /// This member's id.
    pub node_id: NodeId,
    /// Address (HOST:PORT) the member serves clients and peers on.
    pub addr: String,
    /// Initial members by id, this one included; used only on first start.
    pub initial_members: BTreeMap<NodeId, String>,
    /// Directory for the Raft log and snapshots.
    pub data_dir: PathBuf,
}

/// A running member of the consistent core. Cheap to clone.
#[derive(Clone)]
pub struct Core {
    pub(crate) inner: Arc<Inner>,
}

/// Rounds of heartbeats a linearizable read may take to confirm leadership.
const READ_CONFIRM_ATTEMPTS: u32 = 3;

/// Most commands proposed as one Raft entry.
const MAX_BATCH_COMMANDS: usize = 512;

/// A write waiting to be batched into a Raft entry.
struct Proposal {
    command: corepb::Command,
    reply: Reply,
}

/// Where a proposer waits for its command's result.
type Reply = oneshot::Sender<CoreResult<command_result::Result>>;

pub(crate) struct Inner {
    pub(crate) id: NodeId,
    cluster_id: u64,
    pub(crate) raft: Raft,
    pub(crate) metrics: watch::Receiver<RaftMetrics<NodeId, BasicNode>>,
    shared: Arc<Shared>,
    pub(crate) channels: PeerChannels,
    /// The log, read for its last entry when pre-voting.
    pub(crate) log: LogStore,
    pub(crate) election: ElectionClock,
    config: CoreConfig,
    proposals: mpsc::Sender<Proposal>,
    /// Who is proposing; see [`Core::propose`].
    proposers: Proposers,
    background: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// The first background task that panicked; see [`Core::failed_task`].
    failed_task: Arc<OnceLock<&'static str>>,
}

fn internal(e: impl std::fmt::Display) -> CoreError {
    CoreError::Internal(e.to_string())
}

/// Whether `id` is the only voter of membership `m` (not in a joint change).
fn is_sole_voter(m: &openraft::StoredMembership<NodeId, BasicNode>, id: NodeId) -> bool {
    let configs = m.membership().get_joint_config();
    configs.len() == 1 && configs[0].len() == 1 && configs[0].contains(&id)
}

/// FNV-1a, for a stable cluster id from the cluster name.
fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

impl Core {
    /// Opens the data directory, starts Raft, and on a cluster's first start lets the member
    /// with the lowest id initialize it.
    pub async fn start(member: Membership, config: CoreConfig) -> CoreResult<Core> {
        let raft_dir = member.data_dir.join("raft");
        let fresh = !raft_dir.exists();
        let log = LogStore::open(&raft_dir.join("log")).map_err(internal)?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let state_machine = StateMachine::open(raft_dir.join("snapshot"), LeaseTimer::new(clock))
            .map_err(internal)?;
        let shared = state_machine.shared();
        let timeout = config.election_timeout_ms.max(10);
        let raft_config = openraft::Config {
            cluster_name: config.cluster_name.clone(),
            // openraft's own election timer is off (see `election`); what remains of these is
            // its leader lease, the max: voters refuse candidates for half the timeout after
            // they last heard a leader.
            election_timeout_min: timeout / 4,
            election_timeout_max: timeout / 2,
            // Five heartbeats per lease; openraft also gives a read's leadership check one
            // heartbeat interval per round.
            heartbeat_interval: (timeout / 10).max(1),
            // Elections are started by `election`, after a pre-vote round.
            enable_elect: false,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every.max(1)),
            // Entries kept behind a snapshot, so a briefly lagging follower catches up from
            // the log rather than by a whole snapshot.
            max_in_snapshot_log_to_keep: config.snapshot_every.clamp(1, 1000),
            ..Default::default()
        }
        .validate()
        .map_err(internal)?;
        let channels = PeerChannels::new(&member.addr);
        let network = PeerNetworkFactory {
            channels: channels.clone(),
        };
        let raft = Raft::new(
            member.node_id,
            Arc::new(raft_config),
            network,
            log.clone(),
            state_machine,
        )
        .await
        .map_err(internal)?;
        let first_member = member.initial_members.keys().next().copied();
        if fresh && first_member == Some(member.node_id) {
            let nodes: BTreeMap<NodeId, BasicNode> = member
                .initial_members
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr)))
                .collect();
            raft.initialize(nodes).await.map_err(internal)?;
        }
        let (proposals, proposal_queue) = mpsc::channel(4 * MAX_BATCH_COMMANDS);
        let core = Core {
            inner: Arc::new(Inner {
                id: member.node_id,
                cluster_id: stable_hash(config.cluster_name.as_bytes()),
                metrics: raft.metrics(),
                raft,
                shared,
                channels,
                log,
                election: ElectionClock::new(Duration::from_millis(timeout)),
                config,
                proposals,
                proposers: Proposers::default(),
                background: std::sync::Mutex::new(Vec::new()),
                failed_task: Arc::default(),
            }),
        };
        let failed = &core.inner.failed_task;
        let tasks = [
            spawn_vital(failed, "lease expiry", core.clone().expire_leases()),
            spawn_vital(
                failed,
                "proposal batching",
                core.clone().run_proposals(proposal_queue),
            ),
            spawn_vital(failed, "elections", core.clone().run_elections()),
            spawn_vital(
                failed,
                "sole-voter tracking",
                core.clone().track_sole_voter(),
            ),
        ];
        core.inner
            .background
            .lock()
            .expect("background list poisoned only by a panic")
            .extend(tasks);
        Ok(core)
    }

    /// The request limits in force.
    pub fn limits(&self) -> &Limits {
        &self.inner.config.limits
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.config.request_timeout_ms)
    }

    /// The response header for an answer at `revision`.
    pub fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.inner.cluster_id,
            member_id: self.inner.id,
            revision,
            raft_term: self.inner.metrics.borrow().current_term,
        }
    }

    /// Completes a header that carries only a revision (or none: the newest).
    fn stamp(&self, header: Option<pb::ResponseHeader>) -> Option<pb::ResponseHeader> {
        let revision = header.map_or_else(|| self.revision(), |h| h.revision);
        Some(self.header(revision))
    }

    /// The newest revision this member has applied.
    pub fn revision(&self) -> i64 {
        self.inner.shared.store().revision()
    }

    /// The background task that panicked, if one did: the node is then broken (without its
    /// batching task, say, every concurrent write fails) and should be restarted.
    pub fn failed_task(&self) -> Option<&'static str> {
        self.inner.failed_task.get().copied()
    }

    /// True once this member knows a leader and has applied an entry of the leader's term
    /// (every new leader commits one first), so its reads are no older than that election;
    /// false for good once a background task has panicked.
    pub fn is_ready(&self) -> bool {
        if self.failed_task().is_some() {
            return false;
        }
        let m = self.inner.metrics.borrow();
        m.current_leader.is_some()
            && m.running_state.is_ok()
            && m.last_applied
                .is_some_and(|applied| applied.leader_id.term == m.current_term)
    }

    /// Stops Raft and background tasks.
    pub async fn shutdown(&self) {
        for task in self
            .inner
            .background
            .lock()
            .expect("background list poisoned only by a panic")
            .drain(..)
        {
            task.abort();
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }

    // ---- writes -------------------------------------------------------------------------

    /// Proposes a command and waits until it is applied here. Concurrent proposals share
    /// one Raft entry (see [`Core::run_proposals`]); a proposer with no other waiting
    /// beside it has nothing to share an entry with, so it goes to Raft itself. That spares
    /// two hand-overs between tasks, and with them the chain of wake-ups that made tokio
    /// rouse its idle worker several times per write (kv-put at one client: 2.0 instead of
    /// 4.7 wake-ups per put); proposers that come meanwhile batch behind it.
    async fn propose(&self, command: corepb::Command) -> CoreResult<command_result::Result> {
        let command = detached(command);
        let waiting = self.inner.proposers.join();
        let outcome = async {
            if waiting.alone {
                let batch = corepb::CommandBatch {
                    commands: vec![command],
                };
                let applied = self.replicate(batch, true).await?;
                return applied
                    .results
                    .into_iter()
                    .next()
                    .map_or_else(|| Err(internal("a batch of one had no result")), outcome_of);
            }
            let (reply, answer) = oneshot::channel();
            self.inner
                .proposals
                .send(Proposal { command, reply })
                .await
                .map_err(|_| CoreError::Stopped)?;
            answer.await.map_err(|_| CoreError::Stopped)?
        };
        let result = tokio::time::timeout(self.request_timeout(), outcome)
            .await
            .unwrap_or(Err(CoreError::Timeout));
        metrics::count_proposal(result.is_ok());
        result
    }

    /// Batches proposals: while one batch is fsynced, the next accumulates, so one fsync
    /// serves every write that arrived meanwhile (openraft 0.9 flushes the log once per
    /// entry, so batching must happen before Raft). The next batch is proposed as soon as
    /// the log has flushed the last one, while that one is still being applied and
    /// answered, so apply and reply overlap the next fsync. Flushes are listened for only
    /// while a proposer waits: with one writer at a time nothing wakes this task after
    /// each fsync (a wake that made tokio rouse its other worker for nothing).
    async fn run_proposals(self, mut proposals: mpsc::Receiver<Proposal>) {
        let mut flushes = self.inner.log.flushes();
        // Batches proposed and not yet answered, with their proposers.
        let mut in_flight = FuturesUnordered::new();
        loop {
            tokio::select! {
                Some((replies, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                    answer(replies, outcome);
                }
                first = proposals.recv() => {
                    let Some(first) = first else { break };
                    // Until the last batch is flushed (a batch that failed before reaching
                    // the log brings no flush, but leaves `in_flight`) and no proposer is
                    // in Raft by itself.
                    let mut flushed = in_flight.is_empty() || flushes.has_changed().unwrap_or(true);
                    loop {
                        // Read once: the lone proposer may finish on another thread at any
                        // moment, and a guard that turned false between this check and the
                        // select's would leave no branch enabled.
                        let direct = self.inner.proposers.direct_pending();
                        if flushed && !direct {
                            break;
                        }
                        tokio::select! {
                            Some((replies, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                                answer(replies, outcome);
                                flushed |= in_flight.is_empty();
                            }
                            _ = flushes.changed(), if !flushed => flushed = true,
                            _ = self.inner.proposers.direct_finished(), if direct => {}
                        }
                    }
                    let (commands, replies) = gather(first, &mut proposals);
                    flushes.borrow_and_update();
                    let core = self.clone();
                    in_flight.push(async move {
                        let batch = corepb::CommandBatch { commands };
                        (replies, core.replicate(batch, true).await)
                    });
                }
            }
        }
        while let Some((replies, outcome)) = in_flight.next().await {
            answer(replies, outcome);
        }
    }

    /// Replicates a batch as one entry, through the leader, and returns its results.
    async fn replicate(
        &self,
        batch: corepb::CommandBatch,
        may_forward: bool,
    ) -> CoreResult<corepb::BatchResult> {
        let expected = batch.commands.len();
        let applied = match self.inner.raft.client_write(Batch(batch.clone())).await {
            Ok(resp) => resp.data.0,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to))) if may_forward => {
                match self
                    .forward(&to, forward_request::Request::Propose(batch))
                    .await?
                {
                    forward_response::Response::Applied(applied) => applied,
                    other => return Err(internal(format!("unexpected forward reply {other:?}"))),
                }
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                return Err(CoreError::NoLeader)
            }
            Err(e) => return Err(internal(e)),
        };
        if applied.results.len() != expected {
            return Err(internal(format!(
                "a batch of {expected} commands applied to {} results",
                applied.results.len()
            )));
        }
        Ok(applied)
    }

    /// Sends work to the leader named in `to`.
    async fn forward(
        &self,
        to: &ForwardToLeader<NodeId, BasicNode>,
        request: forward_request::Request,
    ) -> CoreResult<forward_response::Response> {
        let node = to.leader_node.as_ref().ok_or(CoreError::NoLeader)?;
        let channel = self
            .inner
            .channels
            .get(&node.addr)
            .map_err(|_| CoreError::NoLeader)?;
        let mut req = tonic::Request::new(corepb::ForwardRequest {
            request: Some(request),
        });
        req.set_timeout(self.request_timeout());
        let reply = RaftPeerClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .forward(req)
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unavailable | tonic::Code::Cancelled => CoreError::NoLeader,
                tonic::Code::DeadlineExceeded => CoreError::Timeout,
                code => CoreError::Remote {
                    code,
                    message: status.message().to_string(),
                },
            })?;
        match reply.into_inner().response {
            Some(forward_response::Response::Refused(r)) => Err(refusal_error(r)),
            Some(response) => Ok(response),
            None => Err(internal("empty forward reply")),
        }
    }

    /// Serves a request forwarded by a follower (this member should be the leader).
    pub(crate) async fn handle_forward(
        &self,
        request: forward_request::Request,
    ) -> forward_response::Response {
        use forward_request::Request as Req;
        use forward_response::Response as Resp;
        let result = match request {
            Req::Propose(batch) => self.replicate(batch, false).await.map(Resp::Applied),
            Req::ReadIndex(_) => self.local_read_index().await.map(Resp::ReadIndex),
            Req::LeaseKeepAlive(req) => self.local_keep_alive(req.id).map(Resp::LeaseKeepAlive),
            Req::LeaseTimeToLive(req) => Ok(Resp::LeaseTimeToLive(self.local_time_to_live(&req))),
            Req::MemberAdd(req) => self.local_member_add(req).await.map(Resp::MemberAdd),
            Req::MemberRemove(req) => self
                .local_member_remove(req.id)
                .await
                .map(Resp::MemberRemove),
        };
        result.unwrap_or_else(|e| {
            Resp::Refused(corepb::Refusal {
                code: e.grpc_code() as i32,
                message: e.to_string(),
            })
        })
    }

    /// Puts a key.
    pub async fn put(&self, req: pb::PutRequest) -> CoreResult<pb::PutResponse> {
        validate::put(&req, self.limits())?;
        match self
            .propose(corepb::Command {
                op: Some(command::Op::Put(req)),
            })
            .await?
        {
            command_result::Result::Put(resp) => Ok(pb::PutResponse {
                header: self.stamp(resp.header),
                ..resp
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes a key or range.
    pub async fn delete_range(
        &self,
        req: pb::DeleteRangeRequest,
    ) -> CoreResult<pb::DeleteRangeResponse> {
        validate::delete_range(&req, self.limits())?;
        match self
            .propose(corepb::Command {
                op: Some(command::Op::DeleteRange(req)),
            })
            .await?
        {
            command_result::Result::DeleteRange(resp) => Ok(pb::DeleteRangeResponse {
                header: self.stamp(resp.header),
                ..resp
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Runs a transaction through the log (a txn that changes nothing keeps the revision).
    pub async fn txn(&self, req: pb::TxnRequest) -> CoreResult<pb::TxnResponse> {
        validate::txn(&req, self.limits())?;
        if crate::mvcc::is_read_only(&req) {
            self.read_barrier().await?;
            let (mut resp, revision) = {
                let store = self.inner.shared.store();
                (store.read_txn(&req)?, store.revision())
            };
            fill_txn_headers(&mut resp, &self.header(revision));
            return Ok(resp);
        }
        match self
            .propose(corepb::Command {
                op: Some(command::Op::Txn(req)),
            })
            .await?
        {
            command_result::Result::Txn(mut resp) => {
                let header = self
                    .stamp(resp.header)
                    .expect("stamp always returns a header");
                fill_txn_headers(&mut resp, &header);
                Ok(resp)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Compacts history up to `revision`.
    pub async fn compact(&self, req: pb::CompactionRequest) -> CoreResult<pb::CompactionResponse> {
        validate::compaction(&req)?;
        match self
            .propose(corepb::Command {
                op: Some(command::Op::Compact(req)),
            })
            .await?
        {
            command_result::Result::Compact(resp) => Ok(pb::CompactionResponse {
                header: self.stamp(resp.header),
            }),
            other => Err(unexpected(other)),
        }
    }

    // ---- reads --------------------------------------------------------------------------

    /// Serves a Range, linearizable unless `serializable` is set.
    pub async fn range(&self, req: pb::RangeRequest) -> CoreResult<pb::RangeResponse> {
        validate::range(&req, self.limits())?;
        if !req.serializable {
            self.read_barrier().await?;
        }
        let mut resp = self.inner.shared.store().range(&req)?;
        resp.header = self.stamp(resp.header);
        Ok(resp)
    }

    /// Waits until this member has applied everything committed before the call began.
    pub async fn read_barrier(&self) -> CoreResult<()> {
        if let Some(index) = self.sole_voter_read_index() {
            return self.wait_applied(index).await;
        }
        let index = match self.confirmed_read_log_id().await {
            Ok((read, _)) => read.map_or(0, |l| l.index),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(to))) => {
                match self
                    .forward(
                        &to,
                        forward_request::Request::ReadIndex(corepb::ReadIndexRequest {}),
                    )
                    .await?
                {
                    forward_response::Response::ReadIndex(i) => i,
                    other => return Err(internal(format!("unexpected forward reply {other:?}"))),
                }
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                return Err(CoreError::NoLeader)
            }
            Err(e) => return Err(internal(e)),
        };
        self.wait_applied(index).await
    }

    /// The read index of a leader that is the cluster's only voter (the embedded default),
    /// known without asking the Raft core: no other node can be elected without its vote, so
    /// nothing is committed that is not in its own log, and waiting for its last log entry
    /// covers every write acknowledged before the read. `None` in any other configuration.
    fn sole_voter_read_index(&self) -> Option<u64> {
        let m = self.inner.metrics.borrow();
        let sole = is_sole_voter(&m.membership_config, self.inner.id)
            && m.state == ServerState::Leader
            && m.current_leader == Some(self.inner.id);
        sole.then(|| m.last_log_index.unwrap_or(0))
    }

    /// Keeps the log told whether this member is the only voter (see
    /// [`LogStore::set_sole_voter`]), as membership changes.
    async fn track_sole_voter(self) {
        // Server metrics change with membership and leadership only, not with every write.
        let mut metrics = self.inner.raft.server_metrics();
        loop {
            let sole = is_sole_voter(
                &metrics.borrow_and_update().membership_config,
                self.inner.id,
            );
            self.inner.log.set_sole_voter(sole);
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until this member has applied the log up to `index`.
    async fn wait_applied(&self, index: u64) -> CoreResult<()> {
        self.inner
            .raft
            .wait(Some(self.request_timeout()))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|_| CoreError::Timeout)
    }

    /// The read index, confirmed by a quorum's heartbeat answers. openraft gives each answer
    /// only a heartbeat interval, so one slow round on a loaded machine is retried before the
    /// read fails for want of a quorum.
    async fn confirmed_read_log_id(
        &self,
    ) -> Result<
        (Option<LogId>, Option<LogId>),
        RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>,
    > {
        let mut attempt = 1;
        loop {
            match self.inner.raft.get_read_log_id().await {
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))
                    if attempt < READ_CONFIRM_ATTEMPTS =>
                {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn local_read_index(&self) -> CoreResult<u64> {
        match self.confirmed_read_log_id().await {
            Ok((read, _)) => Ok(read.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(CoreError::NoLeader)
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(CoreError::NoLeader)
            }
            Err(e) => Err(internal(e)),
        }
    }

    // ---- leases -------------------------------------------------------------------------

    /// The shortest TTL granted: long enough to survive a leader election.
    fn min_lease_ttl(&self) -> i64 {
        (self.inner.config.election_timeout_ms * 3)
            .div_ceil(2000)
            .max(1) as i64
    }

    /// Grants a lease; the id is chosen here when the request leaves it 0.
    pub async fn lease_grant(
        &self,
        mut req: pb::LeaseGrantRequest,
    ) -> CoreResult<pb::LeaseGrantResponse> {
        validate::lease_grant(&req, self.limits())?;
        req.ttl = req.ttl.max(self.min_lease_ttl());
        if req.id == 0 {
            let store = self.inner.shared.store();
            req.id = loop {
                let id = rand::random::<i64>() & i64::MAX;
                if id != 0 && store.lease(id).is_none() {
                    break id;
                }
            };
        }
        match self
            .propose(corepb::Command {
                op: Some(command::Op::LeaseGrant(req)),
            })
            .await?
        {
            command_result::Result::LeaseGrant(resp) => Ok(pb::LeaseGrantResponse {
                header: self.stamp(resp.header),
                ..resp
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Revokes a lease and deletes its keys.
    pub async fn lease_revoke(
        &self,
        req: pb::LeaseRevokeRequest,
    ) -> CoreResult<pb::LeaseRevokeResponse> {
        match self
            .propose(corepb::Command {
                op: Some(command::Op::LeaseRevoke(req)),
            })
            .await?
        {
            command_result::Result::LeaseRevoke(resp) => Ok(pb::LeaseRevokeResponse {
                header: self.stamp(resp.header),
            }),
            other => Err(unexpected(other)),
        }
    }

    fn is_leader(&self) -> bool {
        let m = self.inner.metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.inner.id)
    }

    fn leader_hint(&self) -> ForwardToLeader<NodeId, BasicNode> {
        let m = self.inner.metrics.borrow();
        let leader_node = m
            .current_leader
            .and_then(|id| m.membership_config.membership().get_node(&id).cloned());
        ForwardToLeader {
            leader_id: m.current_leader,
            leader_node,
        }
    }

    /// Refreshes a lease on the leader; TTL 0 in the answer means the lease is gone.
    pub async fn lease_keep_alive(&self, id: i64) -> CoreResult<pb::LeaseKeepAliveResponse> {
        if self.is_leader() {
            return self.local_keep_alive(id);
        }
        let req = pb::LeaseKeepAliveRequest { id };
        match self
            .forward(
                &self.leader_hint(),
                forward_request::Request::LeaseKeepAlive(req),
            )
            .await?
        {
            forward_response::Response::LeaseKeepAlive(resp) => Ok(resp),
            other => Err(internal(format!("unexpected forward reply {other:?}"))),
        }
    }

    fn local_keep_alive(&self, id: i64) -> CoreResult<pb::LeaseKeepAliveResponse> {
        if !self.is_leader() {
            return Err(CoreError::NoLeader);
        }
        let ttl = self.inner.shared.leases().renew(id).unwrap_or(0);
        Ok(pb::LeaseKeepAliveResponse {
            header: self.stamp(None),
            id,
            ttl,
        })
    }

    /// Remaining and granted TTL of a lease (TTL -1 when it does not exist), from the leader.
    pub async fn lease_time_to_live(
        &self,
        req: pb::LeaseTimeToLiveRequest,
    ) -> CoreResult<pb::LeaseTimeToLiveResponse> {
        if self.is_leader() {
            return Ok(self.local_time_to_live(&req));
        }
        match self
            .forward(
                &self.leader_hint(),
                forward_request::Request::LeaseTimeToLive(req),
            )
            .await?
        {
            forward_response::Response::LeaseTimeToLive(resp) => Ok(resp),
            other => Err(internal(format!("unexpected forward reply {other:?}"))),
        }
    }

    fn local_time_to_live(&self, req: &pb::LeaseTimeToLiveRequest) -> pb::LeaseTimeToLiveResponse {
        let store = self.inner.shared.store();
        let Some(lease) = store.lease(req.id) else {
            return pb::LeaseTimeToLiveResponse {
                header: self.stamp(None),
                id: req.id,
                ttl: -1,
                ..Default::default()
            };
        };
        let ttl = self
            .inner
            .shared
            .leases()
            .remaining_secs(req.id)
            .unwrap_or(lease.ttl);
        let keys = if req.keys {
            lease.keys.iter().cloned().collect()
        } else {
            Vec::new()
        };
        pb::LeaseTimeToLiveResponse {
            header: self.stamp(None),
            id: req.id,
            ttl,
            granted_ttl: lease.ttl,
            keys,
        }
    }

    /// All lease ids.
    pub fn lease_leases(&self) -> pb::LeaseLeasesResponse {
        let store = self.inner.shared.store();
        let leases = store
            .leases()
            .map(|(id, _)| pb::LeaseStatus { id })
            .collect();
        pb::LeaseLeasesResponse {
            header: Some(self.header(store.revision())),
            leases,
        }
    }

    /// Leader-only loop: revokes expired leases, and restarts deadlines on gaining leadership.
    async fn expire_leases(self) {
        let mut was_leader = false;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let leader = self.is_leader();
            if leader && !was_leader {
                self.inner.shared.leases().restart_all();
            }
            was_leader = leader;
            if !leader {
                continue;
            }
            self.auto_compact().await;
            let expired = self.inner.shared.leases().expired();
            for id in expired {
                // Retry later if the revoke does not go through (leadership lost, timeout).
                self.inner.shared.leases().renew(id);
                metrics::count_expired_lease();
                let core = self.clone();
                tokio::spawn(async move {
                    let req = pb::LeaseRevokeRequest { id };
                    match core
                        .propose(corepb::Command {
                            op: Some(command::Op::LeaseRevoke(req)),
                        })
                        .await
                    {
                        Ok(_)
                        | Err(CoreError::Remote {
                            code: tonic::Code::NotFound,
                            ..
                        }) => {}
                        Err(e) => {
                            tracing::warn!(lease = id, error = %e, "revoking expired lease failed; will retry")
                        }
                    }
                });
            }
        }
    }

    /// Keeps history to the configured number of revisions.
    async fn auto_compact(&self) {
        let keep = self.inner.config.auto_compaction_revisions;
        if keep <= 0 {
            return;
        }
        let (revision, compacted) = {
            let store = self.inner.shared.store();
            (store.revision(), store.compact_revision())
        };
        // Compact in steps of a tenth of the window, not on every write.
        let target = revision - keep;
        if target > compacted + keep / 10 {
            if let Err(e) = self
                .compact(pb::CompactionRequest {
                    revision: target,
                    physical: false,
                })
                .await
            {
                tracing::debug!(error = %e, "auto compaction");
            }
        }
    }

    // ---- membership and status ----------------------------------------------------------

    /// This member's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.id
    }

    /// A shared channel to another member at `addr` (HOST:PORT), for a block's peer traffic;
    /// `None` when the address is malformed.
    pub fn peer_channel(&self, addr: &str) -> Option<tonic::transport::Channel> {
        self.inner.channels.get(addr).ok()
    }

    /// The members as etcd describes them.
    pub fn members(&self) -> Vec<pb::Member> {
        let m = self.inner.metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| pb::Member {
                id: *id,
                name: format!("cella-{id}"),
                peer_ur_ls: vec![format!("http://{}", node.addr)],
                client_ur_ls: vec![format!("http://{}", node.addr)],
                is_learner: !voters.contains(id),
            })
            .collect()
    }

    /// MemberList's answer.
    pub fn member_list(&self) -> pb::MemberListResponse {
        pb::MemberListResponse {
            header: Some(self.header(self.revision())),
            members: self.members(),
        }
    }

    /// Adds a member (as a voter unless `is_learner`); the new member is then started with
    /// the same peers list. Runs on the leader.
    pub async fn member_add(&self, req: pb::MemberAddRequest) -> CoreResult<pb::MemberAddResponse> {
        if self.is_leader() {
            return self.local_member_add(req).await;
        }
        match self
            .forward(
                &self.leader_hint(),
                forward_request::Request::MemberAdd(req),
            )
            .await?
        {
            forward_response::Response::MemberAdd(resp) => Ok(resp),
            other => Err(internal(format!("unexpected forward reply {other:?}"))),
        }
    }

    async fn local_member_add(
        &self,
        req: pb::MemberAddRequest,
    ) -> CoreResult<pb::MemberAddResponse> {
        let url = req.peer_ur_ls.first().ok_or(CoreError::InvalidField {
            field: "peerURLs",
            rule: "must hold one URL",
        })?;
        let addr = url
            .strip_prefix("http://")
            .filter(|a| a.parse::<std::net::SocketAddr>().is_ok() || a.contains(':'))
            .ok_or_else(|| CoreError::InvalidPeerUrl { url: url.clone() })?
            .to_string();
        let id = self.members().iter().map(|m| m.id).max().unwrap_or(0) + 1;
        let raft = &self.inner.raft;
        raft.add_learner(id, BasicNode::new(&addr), false)
            .await
            .map_err(membership_error)?;
        if !req.is_learner {
            raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(membership_error)?;
        }
        let members = self.members();
        let member = members.iter().find(|m| m.id == id).cloned();
        Ok(pb::MemberAddResponse {
            header: self.stamp(None),
            member,
            members,
        })
    }

    /// Removes a member. Runs on the leader.
    pub async fn member_remove(
        &self,
        req: pb::MemberRemoveRequest,
    ) -> CoreResult<pb::MemberRemoveResponse> {
        if self.is_leader() {
            return self.local_member_remove(req.id).await;
        }
        match self
            .forward(
                &self.leader_hint(),
                forward_request::Request::MemberRemove(req),
            )
            .await?
        {
            forward_response::Response::MemberRemove(resp) => Ok(resp),
            other => Err(internal(format!("unexpected forward reply {other:?}"))),
        }
    }

    async fn local_member_remove(&self, id: NodeId) -> CoreResult<pb::MemberRemoveResponse> {
        let member = self
            .members()
            .into_iter()
            .find(|m| m.id == id)
            .ok_or(CoreError::MemberNotFound { id })?;
        let change = if member.is_learner {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        };
        self.inner
            .raft
            .change_membership(change, false)
            .await
            .map_err(membership_error)?;
        Ok(pb::MemberRemoveResponse {
            header: self.stamp(None),
            members: self.members(),
        })
    }

    /// This member's view of the cluster, as etcd's Status call reports it.
    pub fn status(&self) -> pb::StatusResponse {
        let (leader, raft_index, raft_term, applied) = {
            let m = self.inner.metrics.borrow();
            (
                m.current_leader.unwrap_or(0),
                m.last_log_index.unwrap_or(0),
                m.current_term,
                m.last_applied.map_or(0, |l| l.index),
            )
        };
        let size = self.inner.shared.store().size_bytes();
        let is_learner = self
            .members()
            .iter()
            .any(|m| m.id == self.inner.id && m.is_learner);
        pb::StatusResponse {
            header: Some(self.header(self.revision())),
            version: crate::ETCD_API_VERSION.to_string(),
            db_size: size,
            leader,
            raft_index,
            raft_term,
            raft_applied_index: applied,
            errors: Vec::new(),
            db_size_in_use: size,
            is_learner,
        }
    }
}

/// `command` with its byte fields in one buffer of its own. Keys and values decoded from a
/// request point into the whole receive buffer (8 KiB or more), which the log and the
/// store would otherwise keep alive for as long as they keep the value.
fn detached(command: corepb::Command) -> corepb::Command {
    use prost::Message;
    let encoded = bytes::Bytes::from(command.encode_to_vec());
    corepb::Command::decode(encoded).unwrap_or(command)
}

/// `first` and whatever else is queued, up to [`MAX_BATCH_COMMANDS`].
fn gather(
    first: Proposal,
    proposals: &mut mpsc::Receiver<Proposal>,
) -> (Vec<corepb::Command>, Vec<Reply>) {
    let mut commands = Vec::with_capacity(1);
    let mut replies = Vec::with_capacity(1);
    let mut next = Some(first);
    while let Some(Proposal { command, reply }) = next.take() {
        commands.push(command);
        replies.push(reply);
        if commands.len() < MAX_BATCH_COMMANDS {
            next = proposals.try_recv().ok();
        }
    }
    (commands, replies)
}

/// Sends each proposer its command's result, or the batch's failure.
fn answer(replies: Vec<Reply>, outcome: CoreResult<corepb::BatchResult>) {
    match outcome {
        Ok(applied) => {
            for (reply, result) in replies.into_iter().zip(applied.results) {
                let _ = reply.send(outcome_of(result));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// What a proposer gets for its applied command.
fn outcome_of(result: corepb::CommandResult) -> CoreResult<command_result::Result> {
    match result.result {
        Some(command_result::Result::Refused(r)) => Err(refusal_error(r)),
        Some(result) => Ok(result),
        None => Err(internal("applied command returned no result")),
    }
}

/// Spawns a task the node cannot work without; if it panics, its name is recorded in
/// `failed` (the first such task's) so health checks report the node broken.
fn spawn_vital(
    failed: &Arc<OnceLock<&'static str>>,
    name: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    let failed = Arc::clone(failed);
    tokio::spawn(async move {
        if AssertUnwindSafe(task).catch_unwind().await.is_err() {
            tracing::error!(
                task = name,
                "a core task panicked; the node needs a restart"
            );
            let _ = failed.set(name);
        }
    })
}

/// The proposers waiting for their commands' results, and whether one of them went to Raft
/// by itself (at most one does at a time: only a proposer that finds none waiting).
#[derive(Default)]
struct Proposers {
    waiting: AtomicUsize,
    direct: AtomicBool,
    direct_done: Notify,
}

impl Proposers {
    fn join(&self) -> Waiting<'_> {
        let alone = self.waiting.fetch_add(1, Ordering::AcqRel) == 0;
        if alone {
            self.direct.store(true, Ordering::Release);
        }
        Waiting {
            proposers: self,
            alone,
        }
    }

    /// Whether a proposer is in Raft by itself.
    fn direct_pending(&self) -> bool {
        self.direct.load(Ordering::Acquire)
    }

    /// Resolves once no proposer is in Raft by itself.
    async fn direct_finished(&self) {
        loop {
            let done = self.direct_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if !self.direct_pending() {
                return;
            }
            done.await;
        }
    }
}

/// A proposer counted among the waiting for as long as it waits (dropped on timeout too).
struct Waiting<'a> {
    proposers: &'a Proposers,
    /// No other proposer was waiting when this one joined: it goes to Raft by itself.
    alone: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.alone {
            self.proposers.direct.store(false, Ordering::Release);
            self.proposers.direct_done.notify_waiters();
        }
        self.proposers.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

fn refusal_error(r: corepb::Refusal) -> CoreError {
    CoreError::Remote {
        code: tonic::Code::from_i32(r.code),
        message: r.message,
    }
}

fn unexpected(result: command_result::Result) -> CoreError {
    internal(format!(
        "command applied to an unexpected result: {result:?}"
    ))
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> CoreError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => CoreError::NoLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => CoreError::Remote {
            code: tonic::Code::FailedPrecondition,
            message: format!("etcdserver: membership change refused: {e}"),
        },
        other => internal(other),
    }
}

/// Fills the header of a txn response and of every response nested in it.
pub(crate) fn fill_txn_headers(resp: &mut pb::TxnResponse, header: &pb::ResponseHeader) {
    resp.header = Some(*header);
    for op in &mut resp.responses {
        match &mut op.response {
            Some(response_op::Response::ResponseRange(r)) => r.header = Some(*header),
            Some(response_op::Response::ResponsePut(r)) => r.header = Some(*header),
            Some(response_op::Response::ResponseDeleteRange(r)) => r.header = Some(*header),
            Some(response_op::Response::ResponseTxn(t)) => fill_txn_headers(t, header),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_vital_task_that_panics_is_recorded_and_one_that_ends_is_not() {
        let failed = Arc::default();
        spawn_vital(&failed, "ends", async {}).await.expect("joins");
        assert_eq!(failed.get(), None);
        spawn_vital(&failed, "panics", async { panic!("a bug") })
            .await
            .expect("the panic is caught inside the task");
        spawn_vital(&failed, "panics later", async { panic!("another") })
            .await
            .expect("joins");
        assert_eq!(failed.get(), Some(&"panics"), "the first failure is kept");
    }
}
