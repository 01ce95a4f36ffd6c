//! Cella's own lock API over gRPC (`cella.lock.v1.Locks`): try-lock, timeouts, owner-checked
//! release, status and semaphores. Each method is one call into [`LockService`].

use cella_proto::cella::lock::v1 as lockpb;
use cella_proto::cella::lock::v1::locks_server::{Locks, LocksServer};
use tonic::{Request, Response, Status};

use crate::service::LockService;

type GrpcResult<T> = Result<Response<T>, Status>;

/// The `cella.lock.v1.Locks` service, ready to mount.
pub fn locks_server(service: LockService) -> LocksServer<LocksApi> {
    LocksServer::new(LocksApi(service))
}

/// Cella's Locks service.
pub struct LocksApi(LockService);

#[tonic::async_trait]
impl Locks for LocksApi {
    async fn acquire(
        &self,
        request: Request<lockpb::AcquireRequest>,
    ) -> GrpcResult<lockpb::AcquireResponse> {
        Ok(Response::new(self.0.acquire(request.into_inner()).await?))
    }

    async fn release(
        &self,
        request: Request<lockpb::ReleaseRequest>,
    ) -> GrpcResult<lockpb::ReleaseResponse> {
        Ok(Response::new(self.0.release(request.into_inner()).await?))
    }

    async fn status(
        &self,
        request: Request<lockpb::StatusRequest>,
    ) -> GrpcResult<lockpb::LockStatus> {
        Ok(Response::new(self.0.status(request.into_inner()).await?))
    }

    async fn acquire_permit(
        &self,
        request: Request<lockpb::AcquirePermitRequest>,
    ) -> GrpcResult<lockpb::AcquireResponse> {
        Ok(Response::new(
            self.0.acquire_permit(request.into_inner()).await?,
        ))
    }

    async fn release_permit(
        &self,
        request: Request<lockpb::ReleaseRequest>,
    ) -> GrpcResult<lockpb::ReleaseResponse> {
        Ok(Response::new(
            self.0.release_permit(request.into_inner()).await?,
        ))
    }

    async fn semaphore_status(
        &self,
        request: Request<lockpb::StatusRequest>,
    ) -> GrpcResult<lockpb::SemaphoreStatus> {
        Ok(Response::new(
            self.0.semaphore_status(request.into_inner()).await?,
        ))
    }
}
