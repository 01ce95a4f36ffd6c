//! The registry's gRPC service, `cella.registry.v1.Registry`.

use std::pin::Pin;

use cella_proto::cella::registry::v1 as rpb;
use cella_proto::cella::registry::v1::registry_peer_server::{self, RegistryPeerServer};
use cella_proto::cella::registry::v1::registry_server::{self, RegistryServer};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::api;
use crate::registry::Registry;

type GrpcResult<T> = Result<Response<T>, Status>;

/// The registry's gRPC service, to add to the node's routes.
pub fn service(registry: Registry) -> RegistryServer<impl registry_server::Registry> {
    RegistryServer::new(RegistryService(registry))
}

/// The peer-sync service other nodes of the cluster call.
pub fn peer_service(
    registry: Registry,
) -> RegistryPeerServer<impl registry_peer_server::RegistryPeer> {
    RegistryPeerServer::new(PeerService(registry))
}

struct PeerService(Registry);

#[tonic::async_trait]
impl registry_peer_server::RegistryPeer for PeerService {
    async fn sync(&self, request: Request<rpb::SyncBatch>) -> GrpcResult<rpb::SyncAck> {
        Ok(Response::new(self.0.apply_sync(request.into_inner())))
    }
}

struct RegistryService(Registry);

#[tonic::async_trait]
impl registry_server::Registry for RegistryService {
    async fn create_namespace(
        &self,
        request: Request<rpb::CreateNamespaceRequest>,
    ) -> GrpcResult<rpb::CreateNamespaceResponse> {
        Ok(Response::new(
            api::create_namespace(&self.0, request.into_inner()).await?,
        ))
    }

    async fn register(
        &self,
        request: Request<rpb::RegisterRequest>,
    ) -> GrpcResult<rpb::RegisterResponse> {
        Ok(Response::new(
            api::register(&self.0, request.into_inner()).await?,
        ))
    }

    async fn deregister(
        &self,
        request: Request<rpb::DeregisterRequest>,
    ) -> GrpcResult<rpb::DeregisterResponse> {
        Ok(Response::new(
            api::deregister(&self.0, request.into_inner()).await?,
        ))
    }

    async fn heartbeat(
        &self,
        request: Request<rpb::HeartbeatRequest>,
    ) -> GrpcResult<rpb::HeartbeatResponse> {
        Ok(Response::new(api::heartbeat(
            &self.0,
            request.into_inner(),
        )?))
    }

    async fn list(&self, request: Request<rpb::ListRequest>) -> GrpcResult<rpb::ListResponse> {
        Ok(Response::new(api::list(&self.0, request.into_inner())?))
    }

    async fn list_services(
        &self,
        request: Request<rpb::ListServicesRequest>,
    ) -> GrpcResult<rpb::ListServicesResponse> {
        Ok(Response::new(api::list_services(
            &self.0,
            request.into_inner(),
        )?))
    }

    async fn configure(
        &self,
        request: Request<rpb::ConfigureRequest>,
    ) -> GrpcResult<rpb::ConfigureResponse> {
        Ok(Response::new(
            api::configure(&self.0, request.into_inner()).await?,
        ))
    }

    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<rpb::ServiceEvent, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<rpb::SubscribeRequest>,
    ) -> GrpcResult<Self::SubscribeStream> {
        let subscription = api::subscribe(&self.0, request.into_inner())?;
        let events = api::events(self.0.clone(), subscription).map(Ok);
        Ok(Response::new(Box::pin(events)))
    }
}
