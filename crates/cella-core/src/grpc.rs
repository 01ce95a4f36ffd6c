//! The core's gRPC services: etcd v3's KV, Watch, Lease, Cluster and Maintenance, plus
//! the internal RaftPeer service members use among themselves.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use cella_proto::cella::core::v1 as corepb;
use cella_proto::cella::core::v1::raft_peer_server::{RaftPeer, RaftPeerServer};
use cella_proto::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use cella_proto::etcdserverpb::kv_server::{Kv, KvServer};
use cella_proto::etcdserverpb::lease_server::{Lease, LeaseServer};
use cella_proto::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use cella_proto::etcdserverpb::watch_server::{Watch, WatchServer};
use cella_proto::etcdserverpb::{self as pb, watch_request};
use futures::{Stream, StreamExt};
use openraft::error::RaftError;
use openraft::raft::AppendEntriesResponse;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::election::{PreVoteRequest, PreVoteResponse};
use crate::network::{decode, encode};
use crate::node::Core;
use crate::types::NodeId;
use crate::watch::{run_watcher, WatchSpec};

type GrpcResult<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// How often a watcher that asked for progress notifications gets one while idle.
const PROGRESS_NOTIFY_EVERY: Duration = Duration::from_secs(600);

/// The largest gRPC message accepted: the largest value plus room for key and framing.
fn max_message_bytes(core: &Core) -> usize {
    core.limits().max_value_bytes + core.limits().max_key_bytes + 512 * 1024
}

/// All of the core's gRPC services, ready to mount on the node's port.
pub fn routes(core: Core) -> tonic::service::Routes {
    let max = max_message_bytes(&core);
    let mut routes = tonic::service::Routes::default();
    routes = routes
        .add_service(KvServer::new(KvService(core.clone())).max_decoding_message_size(max))
        .add_service(WatchServer::new(WatchService(core.clone())).max_decoding_message_size(max))
        .add_service(LeaseServer::new(LeaseService(core.clone())).max_decoding_message_size(max))
        .add_service(
            ClusterServer::new(ClusterService(core.clone())).max_decoding_message_size(max),
        )
        .add_service(
            MaintenanceServer::new(MaintenanceService(core.clone())).max_decoding_message_size(max),
        )
        .add_service(RaftPeerServer::new(PeerService(core)).max_decoding_message_size(usize::MAX));
    routes
}

struct KvService(Core);

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<pb::RangeRequest>) -> GrpcResult<pb::RangeResponse> {
        Ok(Response::new(self.0.range(request.into_inner()).await?))
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> GrpcResult<pb::PutResponse> {
        Ok(Response::new(self.0.put(request.into_inner()).await?))
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> GrpcResult<pb::DeleteRangeResponse> {
        Ok(Response::new(
            self.0.delete_range(request.into_inner()).await?,
        ))
    }

    async fn txn(&self, request: Request<pb::TxnRequest>) -> GrpcResult<pb::TxnResponse> {
        Ok(Response::new(self.0.txn(request.into_inner()).await?))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> GrpcResult<pb::CompactionResponse> {
        Ok(Response::new(self.0.compact(request.into_inner()).await?))
    }
}

struct WatchService(Core);

/// Serves one watch stream: many watchers multiplexed, each in its own task.
pub(crate) async fn serve_watch_session<S>(
    core: Core,
    mut inbound: S,
    out: mpsc::Sender<pb::WatchResponse>,
) where
    S: Stream<Item = pb::WatchRequest> + Unpin,
{
    let mut watchers: HashMap<i64, JoinHandle<()>> = HashMap::new();
    let mut next_id = 0i64;
    loop {
        let request = tokio::select! {
            r = inbound.next() => match r { Some(r) => r, None => break },
            _ = out.closed() => break,
        };
        watchers.retain(|_, task| !task.is_finished());
        let reply = match request.request_union {
            Some(watch_request::RequestUnion::CreateRequest(create)) => {
                let spec = WatchSpec::new(&core, &create);
                let id = if create.watch_id != 0 {
                    create.watch_id
                } else {
                    while watchers.contains_key(&next_id) {
                        next_id += 1;
                    }
                    next_id
                };
                match spec {
                    Ok(_) if watchers.contains_key(&id) => pb::WatchResponse {
                        header: Some(core.header(core.revision())),
                        watch_id: id,
                        created: true,
                        canceled: true,
                        cancel_reason: format!("etcdserver: duplicate watch ID: field `watch_id` {id} is in use on this stream"),
                        ..Default::default()
                    },
                    Ok(spec) => {
                        let created = pb::WatchResponse {
                            header: Some(core.header(core.revision())),
                            watch_id: id,
                            created: true,
                            ..Default::default()
                        };
                        if out.send(created).await.is_err() {
                            break;
                        }
                        let task = tokio::spawn(run_watcher(core.clone(), id, spec, out.clone(), PROGRESS_NOTIFY_EVERY));
                        watchers.insert(id, task);
                        continue;
                    }
                    Err(e) => pb::WatchResponse {
                        header: Some(core.header(core.revision())),
                        watch_id: -1,
                        created: true,
                        canceled: true,
                        cancel_reason: e.to_string(),
                        ..Default::default()
                    },
                }
            }
            Some(watch_request::RequestUnion::CancelRequest(cancel)) => {
                let Some(task) = watchers.remove(&cancel.watch_id) else {
                    continue;
                };
                task.abort();
                pb::WatchResponse {
                    header: Some(core.header(core.revision())),
                    watch_id: cancel.watch_id,
                    canceled: true,
                    ..Default::default()
                }
            }
            Some(watch_request::RequestUnion::ProgressRequest(_)) => pb::WatchResponse {
                header: Some(core.header(core.revision())),
                watch_id: -1,
                ..Default::default()
            },
            None => continue,
        };
        if out.send(reply).await.is_err() {
            break;
        }
    }
    for task in watchers.into_values() {
        task.abort();
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = BoxStream<pb::WatchResponse>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> GrpcResult<Self::WatchStream> {
        let (tx, rx) = mpsc::channel(256);
        // A malformed message ends the session like a closed stream.
        let inbound = request
            .into_inner()
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(|r| async { r.ok() });
        tokio::spawn(serve_watch_session(self.0.clone(), Box::pin(inbound), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }
}

struct LeaseService(Core);

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> GrpcResult<pb::LeaseGrantResponse> {
        Ok(Response::new(
            self.0.lease_grant(request.into_inner()).await?,
        ))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> GrpcResult<pb::LeaseRevokeResponse> {
        Ok(Response::new(
            self.0.lease_revoke(request.into_inner()).await?,
        ))
    }

    type LeaseKeepAliveStream = BoxStream<pb::LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> GrpcResult<Self::LeaseKeepAliveStream> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let core = self.0.clone();
        tokio::spawn(async move {
            while let Some(Ok(req)) = inbound.next().await {
                let reply = core.lease_keep_alive(req.id).await.map_err(Status::from);
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> GrpcResult<pb::LeaseTimeToLiveResponse> {
        Ok(Response::new(
            self.0.lease_time_to_live(request.into_inner()).await?,
        ))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> GrpcResult<pb::LeaseLeasesResponse> {
        Ok(Response::new(self.0.lease_leases()))
    }
}

struct ClusterService(Core);

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> GrpcResult<pb::MemberAddResponse> {
        Ok(Response::new(
            self.0.member_add(request.into_inner()).await?,
        ))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> GrpcResult<pb::MemberRemoveResponse> {
        Ok(Response::new(
            self.0.member_remove(request.into_inner()).await?,
        ))
    }

    async fn member_update(
        &self,
        _request: Request<pb::MemberUpdateRequest>,
    ) -> GrpcResult<pb::MemberUpdateResponse> {
        Err(Status::unimplemented(
            "cella: a member's address cannot change; remove the member and add it again",
        ))
    }

    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> GrpcResult<pb::MemberListResponse> {
        Ok(Response::new(self.0.member_list()))
    }

    async fn member_promote(
        &self,
        _request: Request<pb::MemberPromoteRequest>,
    ) -> GrpcResult<pb::MemberPromoteResponse> {
        Err(Status::unimplemented(
            "cella: learners are promoted by adding them as voters (member add without --learner)",
        ))
    }
}

struct MaintenanceService(Core);

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, _request: Request<pb::AlarmRequest>) -> GrpcResult<pb::AlarmResponse> {
        // Cella raises no storage alarms (no quota on the in-memory store).
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.0.header(self.0.revision())),
            alarms: Vec::new(),
        }))
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> GrpcResult<pb::StatusResponse> {
        Ok(Response::new(self.0.status()))
    }

    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> GrpcResult<pb::DefragmentResponse> {
        // The store lives in memory and the log is compacted by snapshots: nothing to defragment.
        Ok(Response::new(pb::DefragmentResponse {
            header: Some(self.0.header(self.0.revision())),
        }))
    }

    async fn hash(&self, _request: Request<pb::HashRequest>) -> GrpcResult<pb::HashResponse> {
        Err(Status::unimplemented("cella: Hash is not supported"))
    }

    async fn hash_kv(
        &self,
        _request: Request<pb::HashKvRequest>,
    ) -> GrpcResult<pb::HashKvResponse> {
        Err(Status::unimplemented("cella: HashKV is not supported"))
    }

    type SnapshotStream = BoxStream<pb::SnapshotResponse>;

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> GrpcResult<Self::SnapshotStream> {
        Err(Status::unimplemented(
            "cella: snapshots are not bbolt files; back up the data directory instead",
        ))
    }

    async fn move_leader(
        &self,
        _request: Request<pb::MoveLeaderRequest>,
    ) -> GrpcResult<pb::MoveLeaderResponse> {
        Err(Status::unimplemented(
            "cella: leadership transfer is not supported",
        ))
    }
}

struct PeerService(Core);

fn decode_payload<T: DeserializeOwned>(request: Request<corepb::RaftPayload>) -> Result<T, Status> {
    decode(&request.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("raft payload: {e}")))
}

fn encode_payload<T: Serialize>(value: &T) -> GrpcResult<corepb::RaftPayload> {
    let data = encode(value).map_err(|e| Status::internal(format!("raft payload: {e}")))?;
    Ok(Response::new(corepb::RaftPayload { data: data.into() }))
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        request: Request<corepb::RaftPayload>,
    ) -> GrpcResult<corepb::RaftPayload> {
        let req = decode_payload(request)?;
        let result = self.0.raft().append_entries(req).await;
        if matches!(&result, Ok(resp) if !matches!(resp, AppendEntriesResponse::HigherVote(_))) {
            self.0.heard_leader();
        }
        encode_payload(&result)
    }

    async fn vote(&self, request: Request<corepb::RaftPayload>) -> GrpcResult<corepb::RaftPayload> {
        let req = decode_payload(request)?;
        let result = self.0.raft().vote(req).await;
        if matches!(&result, Ok(resp) if resp.vote_granted) {
            self.0.heard_leader();
        }
        encode_payload(&result)
    }

    async fn pre_vote(
        &self,
        request: Request<corepb::RaftPayload>,
    ) -> GrpcResult<corepb::RaftPayload> {
        let req: PreVoteRequest = decode_payload(request)?;
        let answer: Result<PreVoteResponse, RaftError<NodeId>> = Ok(self.0.handle_pre_vote(&req));
        encode_payload(&answer)
    }

    async fn install_snapshot(
        &self,
        request: Request<corepb::RaftPayload>,
    ) -> GrpcResult<corepb::RaftPayload> {
        let req = decode_payload(request)?;
        let result = self.0.raft().install_snapshot(req).await;
        if result.is_ok() {
            self.0.heard_leader();
        }
        encode_payload(&result)
    }

    async fn forward(
        &self,
        request: Request<corepb::ForwardRequest>,
    ) -> GrpcResult<corepb::ForwardResponse> {
        let Some(req) = request.into_inner().request else {
            return Err(Status::invalid_argument(
                "field `request` must hold one request",
            ));
        };
        Ok(Response::new(corepb::ForwardResponse {
            response: Some(self.0.handle_forward(req).await),
        }))
    }
}
