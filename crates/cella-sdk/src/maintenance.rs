//! Maintenance: a node's view of itself and of the Raft group.

use cella_proto::etcdserverpb as pb;
use cella_proto::etcdserverpb::maintenance_client::MaintenanceClient;

use crate::client::Transport;
use crate::{MemberId, Result, Revision};

/// What one node reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// The answering member.
    pub member_id: MemberId,
    /// The leader this node knows of; `None` while there is none.
    pub leader: Option<MemberId>,
    /// The server's version string.
    pub version: String,
    /// The store's current revision on this node.
    pub revision: Revision,
    /// The Raft term.
    pub raft_term: u64,
    /// Index of the last entry in this node's Raft log.
    pub raft_index: u64,
    /// Index of the last entry applied to this node's state machine.
    pub raft_applied_index: u64,
    /// Size of the backing store in bytes.
    pub db_size: i64,
    /// Whether this node is a non-voting learner.
    pub is_learner: bool,
    /// Alarms and other problems the node reports.
    pub errors: Vec<String>,
}

impl From<pb::StatusResponse> for NodeStatus {
    fn from(response: pb::StatusResponse) -> Self {
        let header = response.header.unwrap_or_default();
        NodeStatus {
            member_id: MemberId(header.member_id),
            leader: (response.leader != 0).then_some(MemberId(response.leader)),
            version: response.version,
            revision: Revision(header.revision),
            raft_term: response.raft_term,
            raft_index: response.raft_index,
            raft_applied_index: response.raft_applied_index,
            db_size: response.db_size,
            is_learner: response.is_learner,
            errors: response.errors,
        }
    }
}

/// The Maintenance service (status only).
#[derive(Debug, Clone)]
pub struct Maintenance {
    client: MaintenanceClient<Transport>,
}

impl Maintenance {
    pub(crate) fn new(transport: Transport) -> Self {
        Maintenance {
            client: MaintenanceClient::new(transport),
        }
    }

    /// Asks the connected node for its status.
    pub async fn status(&self) -> Result<NodeStatus> {
        let response = self.client.clone().status(pb::StatusRequest {}).await?;
        Ok(response.into_inner().into())
    }
}
