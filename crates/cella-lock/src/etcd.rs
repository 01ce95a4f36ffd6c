//! etcd's v3lock (`Lock`, `Unlock`) and v3election (`Campaign`, `Proclaim`, `Leader`,
//! `Observe`, `Resign`) gRPC services, wire-compatible with etcd's, over
//! [`LockService`] and [`Elections`].

use std::pin::Pin;

use cella_proto::v3electionpb::election_server::{Election, ElectionServer};
use cella_proto::v3electionpb::{self as electionpb, LeaderKey};
use cella_proto::v3lockpb as lockpb;
use cella_proto::v3lockpb::lock_server::{Lock, LockServer};
use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::election::Elections;
use crate::error::LockError;
use crate::service::LockService;

type GrpcResult<T> = Result<Response<T>, Status>;

/// The v3lock service, ready to mount.
pub fn lock_server(service: LockService) -> LockServer<V3Lock> {
    LockServer::new(V3Lock(service))
}

/// The v3election service, ready to mount.
pub fn election_server(elections: Elections) -> ElectionServer<V3Election> {
    ElectionServer::new(V3Election(elections))
}

/// etcd's Lock service.
pub struct V3Lock(LockService);

#[tonic::async_trait]
impl Lock for V3Lock {
    async fn lock(
        &self,
        request: Request<lockpb::LockRequest>,
    ) -> GrpcResult<lockpb::LockResponse> {
        let req = request.into_inner();
        let (key, revision) = self.0.lock(&req.name, req.lease).await?;
        Ok(Response::new(lockpb::LockResponse {
            header: Some(self.0.core().header(revision)),
            key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<lockpb::UnlockRequest>,
    ) -> GrpcResult<lockpb::UnlockResponse> {
        let revision = self.0.unlock(request.into_inner().key).await?;
        Ok(Response::new(lockpb::UnlockResponse {
            header: Some(self.0.core().header(revision)),
        }))
    }
}

/// etcd's Election service.
pub struct V3Election(Elections);

fn leader_of(leader: Option<LeaderKey>) -> Result<LeaderKey, Status> {
    leader.ok_or_else(|| {
        LockError::InvalidField {
            field: "leader",
            rule: "must be provided",
        }
        .into()
    })
}

type LeaderStream = Pin<Box<dyn Stream<Item = Result<electionpb::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for V3Election {
    async fn campaign(
        &self,
        request: Request<electionpb::CampaignRequest>,
    ) -> GrpcResult<electionpb::CampaignResponse> {
        let req = request.into_inner();
        let (leader, revision) = self.0.campaign(&req.name, req.lease, req.value).await?;
        Ok(Response::new(electionpb::CampaignResponse {
            header: Some(self.0.core().header(revision)),
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<electionpb::ProclaimRequest>,
    ) -> GrpcResult<electionpb::ProclaimResponse> {
        let req = request.into_inner();
        let revision = self.0.proclaim(&leader_of(req.leader)?, req.value).await?;
        Ok(Response::new(electionpb::ProclaimResponse {
            header: Some(self.0.core().header(revision)),
        }))
    }

    async fn leader(
        &self,
        request: Request<electionpb::LeaderRequest>,
    ) -> GrpcResult<electionpb::LeaderResponse> {
        let (kv, revision) = self.0.leader(&request.into_inner().name).await?;
        Ok(Response::new(electionpb::LeaderResponse {
            header: Some(self.0.core().header(revision)),
            kv: Some(kv),
        }))
    }

    type ObserveStream = LeaderStream;

    async fn observe(
        &self,
        request: Request<electionpb::LeaderRequest>,
    ) -> GrpcResult<Self::ObserveStream> {
        let changes = self.0.observe(&request.into_inner().name)?;
        let core = self.0.core().clone();
        let stream = ReceiverStream::new(changes).map(move |change| match change {
            Ok((kv, revision)) => Ok(electionpb::LeaderResponse {
                header: Some(core.header(revision)),
                kv: Some(kv),
            }),
            Err(e) => Err(Status::from(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn resign(
        &self,
        request: Request<electionpb::ResignRequest>,
    ) -> GrpcResult<electionpb::ResignResponse> {
        let req = request.into_inner();
        let revision = self.0.resign(&leader_of(req.leader)?).await?;
        Ok(Response::new(electionpb::ResignResponse {
            header: Some(self.0.core().header(revision)),
        }))
    }
}
