//! Raft traffic between members over the `cella.core.v1.RaftPeer` gRPC service.
//!
//! Payloads are openraft's own messages, postcard-encoded; the receiving side returns the
//! whole `Result` so a remote Raft error travels back intact.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cella_proto::cella::core::v1::raft_peer_client::RaftPeerClient;
use cella_proto::cella::core::v1::RaftPayload;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::election::{PreVoteRequest, PreVoteResponse};
use crate::types::{NodeId, TypeConfig};

/// Channels to peers by address, shared by Raft replication, request forwarding and the
/// blocks' own peer traffic.
#[derive(Clone, Default)]
pub(crate) struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Outgoing connections start from this address: the one the node listens on, so peers
    /// (and a firewall or test proxy between them) see which member is calling.
    local_ip: Option<IpAddr>,
}

impl PeerChannels {
    /// Channels whose connections start from the IP of `listen` (HOST:PORT), when it names one.
    pub fn new(listen: &str) -> Self {
        let local_ip = listen
            .parse::<SocketAddr>()
            .ok()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified());
        Self {
            channels: Arc::default(),
            local_ip,
        }
    }

    /// A lazily connecting channel to `addr` (HOST:PORT), reused across calls.
    pub fn get(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self
            .channels
            .lock()
            .expect("peer channel map poisoned only by a panic");
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let ch = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .local_address(self.local_ip)
            .connect_lazy();
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }
}

/// Builds one [`PeerClient`] per target member.
pub(crate) struct PeerNetworkFactory {
    pub channels: PeerChannels,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient::new(target, self.channels.get(&node.addr).ok())
    }
}

/// Sends Raft RPCs to one member.
pub(crate) struct PeerClient {
    target: NodeId,
    channel: Option<Channel>,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl PeerClient {
    /// A client for `target`; without a channel (a bad address) every call is unreachable.
    pub(crate) fn new(target: NodeId, channel: Option<Channel>) -> Self {
        Self { target, channel }
    }

    /// Asks `target` whether it would vote for this member (see `election`).
    pub(crate) async fn pre_vote(
        &mut self,
        request: &PreVoteRequest,
        timeout: Duration,
    ) -> RpcResult<PreVoteResponse, openraft::error::Infallible> {
        self.call(RpcKind::PreVote, request, timeout).await
    }

    async fn call<Req, Resp, E>(
        &mut self,
        kind: RpcKind,
        req: &Req,
        timeout: Duration,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel = self.channel.clone().ok_or_else(|| {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other("bad peer address")))
        })?;
        let data = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = RaftPeerClient::new(channel).max_decoding_message_size(usize::MAX);
        let mut request = tonic::Request::new(RaftPayload { data: data.into() });
        request.set_timeout(timeout);
        let reply = match kind {
            RpcKind::Append => client.append_entries(request).await,
            RpcKind::Vote => client.vote(request).await,
            RpcKind::Snapshot => client.install_snapshot(request).await,
            RpcKind::PreVote => client.pre_vote(request).await,
        }
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                RPCError::Unreachable(Unreachable::new(&status))
            }
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> = decode(&reply.into_inner().data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

enum RpcKind {
    Append,
    Vote,
    Snapshot,
    PreVote,
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call(RpcKind::Append, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(RpcKind::Snapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(RpcKind::Vote, &rpc, option.hard_ttl()).await
    }
}
