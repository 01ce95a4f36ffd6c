//! A static cluster of real `cella server` processes on 127.0.0.1.
//!
//! Members are numbered `1..=n`, each on its own free port, all started with the same
//! [`NodeOptions`]. The leader is found by asking every running member for its Maintenance
//! status: a member is the leader when its own status names itself as leader (matching the
//! response header's member id, or its node id when the header carries none); if several
//! claim it (an old leader cut off), the one with the highest term wins.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::client::status;
use crate::free_port;
use crate::node::{Node, NodeId, NodeOptions};

/// Time a single status call may take while looking for the leader.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// A running cluster; dropping it kills every member.
pub struct Cluster {
    members: BTreeMap<NodeId, Node>,
}

impl Cluster {
    /// Starts `n` members with default options.
    pub fn start(n: usize) -> anyhow::Result<Cluster> {
        Cluster::start_with(n, NodeOptions::default())
    }

    /// Starts `n` members, each with `options`.
    pub fn start_with(n: usize, options: NodeOptions) -> anyhow::Result<Cluster> {
        anyhow::ensure!(n > 0, "a cluster needs at least one member");
        let mut peers = Vec::with_capacity(n);
        for id in 1..=n as NodeId {
            peers.push((id, SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?))));
        }
        let mut members = BTreeMap::new();
        for &(id, _) in &peers {
            members.insert(id, Node::member(id, &peers, options.clone())?);
        }
        Ok(Cluster { members })
    }

    /// The member ids, ascending.
    pub fn ids(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    /// Ids of members that are up and not paused.
    pub fn running_ids(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|(_, node)| node.is_running())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The member `id`. Panics if there is none: ids are `1..=n`.
    pub fn member(&self, id: NodeId) -> &Node {
        self.members
            .get(&id)
            .unwrap_or_else(|| panic!("no member {id} in {:?}", self.ids()))
    }

    /// The member `id`, mutably. Panics if there is none: ids are `1..=n`.
    pub fn member_mut(&mut self, id: NodeId) -> &mut Node {
        let ids = self.ids();
        self.members
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no member {id} in {ids:?}"))
    }

    /// All members in id order.
    pub fn members(&self) -> impl Iterator<Item = &Node> {
        self.members.values()
    }

    /// The gRPC endpoints of all members (up or not), in id order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.values().map(Node::endpoint).collect()
    }

    /// Kills member `id` with SIGKILL.
    pub fn kill9(&mut self, id: NodeId) -> anyhow::Result<()> {
        self.member_mut(id).kill9()
    }

    /// Restarts member `id` with its data dir and arguments (killing it first if it is up).
    pub fn restart(&mut self, id: NodeId) -> anyhow::Result<()> {
        self.member_mut(id).restart()
    }

    /// Waits until every running member answers `/readyz` with 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for id in self.running_ids() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.member_mut(id).wait_ready(left).await?;
        }
        Ok(())
    }

    /// The member that currently leads, if the running members can tell (see the module
    /// docs).
    pub async fn leader(&self) -> Option<NodeId> {
        let asks = self.running_ids().into_iter().map(|id| {
            let endpoint = self.member(id).endpoint();
            async move { (id, status(&endpoint, STATUS_TIMEOUT).await) }
        });
        let mut best: Option<(u64, NodeId)> = None;
        for (id, answer) in futures::future::join_all(asks).await {
            let Ok(status) = answer else { continue };
            let own_id = status.header.as_ref().map_or(0, |header| header.member_id);
            let own_id = if own_id == 0 { id } else { own_id };
            if status.leader == own_id && best.is_none_or(|(term, _)| status.raft_term > term) {
                best = Some((status.raft_term, id));
            }
        }
        best.map(|(_, id)| id)
    }

    /// Polls [`Cluster::leader`] until a leader is known.
    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<NodeId> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(id) = self.leader().await {
                return Ok(id);
            }
            if Instant::now() >= deadline {
                let reports: Vec<String> = self.members().map(Node::log_report).collect();
                return Err(anyhow::anyhow!(
                    "no leader after {timeout:?}\n{}",
                    reports.join("\n")
                ))
                .context("waiting for a leader");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
