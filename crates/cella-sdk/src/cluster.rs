//! Cluster membership: who the members are and where to reach them.

use cella_proto::etcdserverpb as pb;
use cella_proto::etcdserverpb::cluster_client::ClusterClient;

use crate::client::Transport;
use crate::{MemberId, Result};

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's id.
    pub id: MemberId,
    /// Its name; empty until the member has started.
    pub name: String,
    /// Where peers reach it.
    pub peer_urls: Vec<String>,
    /// Where clients reach it; empty until the member has started.
    pub client_urls: Vec<String>,
    /// A learner receives the log but does not vote.
    pub is_learner: bool,
}

impl From<pb::Member> for Member {
    fn from(member: pb::Member) -> Self {
        Member {
            id: MemberId(member.id),
            name: member.name,
            peer_urls: member.peer_ur_ls,
            client_urls: member.client_ur_ls,
            is_learner: member.is_learner,
        }
    }
}

/// The Cluster service.
#[derive(Debug, Clone)]
pub struct Cluster {
    client: ClusterClient<Transport>,
}

impl Cluster {
    pub(crate) fn new(transport: Transport) -> Self {
        Cluster {
            client: ClusterClient::new(transport),
        }
    }

    /// Lists the members, as the contacted node's committed configuration has them.
    pub async fn members(&self) -> Result<Vec<Member>> {
        let request = pb::MemberListRequest { linearizable: true };
        let response = self.client.clone().member_list(request).await?;
        Ok(response
            .into_inner()
            .members
            .into_iter()
            .map(Member::from)
            .collect())
    }
}
