//! Peer sync for a registry cluster (SPEC §2, "Cluster").
//!
//! Every node accepts registrations and heartbeats, so the registry stays available on both
//! sides of a partition. What a node changes is queued for every peer and sent in batches
//! each [`SYNC_INTERVAL`]. A service's owner — its name hashed over the nodes this node can
//! reach — alone sweeps it for silent instances and probes its persistent ones, so each
//! health verdict is made once and travels like any other change. Beats travel as ids; a
//! peer that does not know the instance says so, and the sender follows with the instance.
//! Every [`CHECKSUM_EVERY`] rounds each node also sends a checksum of each service it holds;
//! where copies differ, the owner sends its whole copy to replace the other. So after a
//! partition heals, or a queue overflowed, the nodes agree again within a few rounds.
//!
//! The set of nodes comes from the consistent core's membership; a peer counts as reachable
//! while a sync to it succeeded within [`LIVE_WINDOW`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use cella_proto::cella::registry::v1 as rpb;
use cella_proto::cella::registry::v1::registry_peer_client::RegistryPeerClient;
use tonic::transport::Channel;

use crate::model::ServiceKey;

/// How often queued changes are sent to each peer.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Checksums go out every this many sync rounds.
pub const CHECKSUM_EVERY: u64 = 10;
/// A peer that has not taken a sync for this long is treated as unreachable.
pub const LIVE_WINDOW: Duration = Duration::from_secs(2);
/// Most records queued for one peer; older ones are dropped (checksums repair the loss).
const MAX_QUEUE: usize = 200_000;
/// Most records sent in one batch.
const MAX_BATCH: usize = 20_000;
/// How long one sync call may take.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(1);

/// A peer node: where it is, what it has not been sent yet, when it last answered.
struct Peer {
    addr: String,
    channel: Option<Channel>,
    queue: VecDeque<rpb::SyncRecord>,
    last_ok: Option<Duration>,
}

/// The peers of this node and what each still has to be sent.
pub(crate) struct Peers {
    self_id: u64,
    peers: Mutex<BTreeMap<u64, Peer>>,
}

/// A batch ready to send to one peer.
pub(crate) struct Outgoing {
    pub peer: u64,
    pub client: RegistryPeerClient<Channel>,
    pub batch: rpb::SyncBatch,
}

impl Peers {
    pub(crate) fn new(self_id: u64) -> Self {
        Self {
            self_id,
            peers: Mutex::new(BTreeMap::new()),
        }
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Peer>> {
        self.peers
            .lock()
            .expect("peer table poisoned only by a panic")
    }

    /// Brings the peer set in line with the cluster's members (id → HOST:PORT), reaching new
    /// ones through `connect`.
    pub(crate) fn set_members(
        &self,
        members: &BTreeMap<u64, String>,
        connect: impl Fn(&str) -> Option<Channel>,
    ) {
        let mut peers = self.peers();
        peers.retain(|id, _| members.contains_key(id));
        for (id, addr) in members {
            if *id == self.self_id {
                continue;
            }
            let same = peers.get(id).is_some_and(|p| &p.addr == addr);
            if !same {
                let channel = connect(addr);
                peers.insert(
                    *id,
                    Peer {
                        addr: addr.clone(),
                        channel,
                        queue: VecDeque::new(),
                        last_ok: None,
                    },
                );
            }
        }
    }

    /// Queues records for every peer.
    pub(crate) fn send_to_all(&self, records: &[rpb::SyncRecord]) {
        if records.is_empty() {
            return;
        }
        for peer in self.peers().values_mut() {
            push_capped(&mut peer.queue, records.iter().cloned());
        }
    }

    /// Queues records for one peer.
    pub(crate) fn send_to(&self, peer: u64, records: Vec<rpb::SyncRecord>) {
        if let Some(peer) = self.peers().get_mut(&peer) {
            push_capped(&mut peer.queue, records);
        }
    }

    /// Takes each peer's next batch (with `checksums` attached when given).
    pub(crate) fn take_batches(&self, checksums: Option<&[rpb::ServiceChecksum]>) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for (id, peer) in self.peers().iter_mut() {
            let Some(channel) = peer.channel.clone() else {
                continue;
            };
            let n = peer.queue.len().min(MAX_BATCH);
            let records: Vec<rpb::SyncRecord> = peer.queue.drain(..n).collect();
            out.push(Outgoing {
                peer: *id,
                client: RegistryPeerClient::new(channel),
                batch: rpb::SyncBatch {
                    from_node: self.self_id,
                    records,
                    checksums: checksums.map(<[_]>::to_vec).unwrap_or_default(),
                },
            });
        }
        out
    }

    /// Records the outcome of a send: success marks the peer reachable; failure puts the
    /// records back in front of its queue.
    pub(crate) fn sent(&self, peer: u64, now: Duration, failed: Option<Vec<rpb::SyncRecord>>) {
        let mut peers = self.peers();
        let Some(peer) = peers.get_mut(&peer) else {
            return;
        };
        match failed {
            None => peer.last_ok = Some(now),
            Some(records) => {
                for record in records.into_iter().rev() {
                    peer.queue.push_front(record);
                }
                peer.queue.truncate(MAX_QUEUE);
            }
        }
    }

    /// Marks a peer reachable because it reached us.
    pub(crate) fn heard_from(&self, peer: u64, now: Duration) {
        if let Some(peer) = self.peers().get_mut(&peer) {
            peer.last_ok = Some(now);
        }
    }

    /// This node and the peers reachable at `now`, sorted.
    pub(crate) fn live(&self, now: Duration) -> Vec<u64> {
        let mut live: BTreeSet<u64> = self
            .peers()
            .iter()
            .filter(|(_, p)| {
                p.last_ok
                    .is_some_and(|at| now.saturating_sub(at) <= LIVE_WINDOW)
            })
            .map(|(id, _)| *id)
            .collect();
        live.insert(self.self_id);
        live.into_iter().collect()
    }
}

fn push_capped(
    queue: &mut VecDeque<rpb::SyncRecord>,
    records: impl IntoIterator<Item = rpb::SyncRecord>,
) {
    queue.extend(records);
    let excess = queue.len().saturating_sub(MAX_QUEUE);
    queue.drain(..excess);
}

/// The node among `live` (sorted) that owns `service`.
pub(crate) fn owner(service: &ServiceKey, live: &[u64]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    service.hash(&mut hasher);
    let index = (hasher.finish() % live.len().max(1) as u64) as usize;
    live.get(index).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> rpb::SyncRecord {
        rpb::SyncRecord {
            service: None,
            record: Some(rpb::sync_record::Record::Remove(id.into())),
        }
    }

    #[test]
    fn ownership_spreads_services_and_moves_when_the_live_set_shrinks() {
        let services: Vec<ServiceKey> = (0..300)
            .map(|i| ServiceKey::new("", "", &format!("svc{i}")).expect("valid"))
            .collect();
        let mut per_node = BTreeMap::new();
        for s in &services {
            *per_node.entry(owner(s, &[1, 2, 3])).or_insert(0) += 1;
        }
        assert_eq!(per_node.len(), 3);
        assert!(per_node.values().all(|n| *n > 50), "{per_node:?}");
        for s in &services {
            assert_eq!(
                owner(s, &[2]),
                2,
                "a node alone owns everything on its side"
            );
        }
    }

    #[tokio::test]
    async fn peers_are_live_only_after_a_recent_success_and_failed_batches_are_requeued() {
        let peers = Peers::new(1);
        let lazy = |addr: &str| {
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .ok()
                .map(|e| e.connect_lazy())
        };
        let members = BTreeMap::from([(1, "127.0.0.1:1".into()), (2, "127.0.0.1:2".into())]);
        peers.set_members(&members, lazy);
        assert_eq!(peers.live(Duration::ZERO), vec![1]);
        peers.send_to_all(&[record("a"), record("b")]);
        let batches = peers.take_batches(None);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].batch.records.len(), 2);
        peers.sent(
            2,
            Duration::from_secs(1),
            Some(
                batches
                    .into_iter()
                    .next()
                    .map(|o| o.batch.records)
                    .unwrap_or_default(),
            ),
        );
        assert_eq!(peers.live(Duration::from_secs(1)), vec![1]);
        assert_eq!(
            peers.take_batches(None)[0].batch.records.len(),
            2,
            "requeued"
        );
        peers.sent(2, Duration::from_secs(1), None);
        assert_eq!(peers.live(Duration::from_secs(2)), vec![1, 2]);
        assert_eq!(
            peers.live(Duration::from_secs(4)),
            vec![1],
            "silent past the live window"
        );
    }
}
