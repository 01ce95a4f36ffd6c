//! The id service over gRPC: `cella.idgen.v1.Ids`.

use std::sync::Arc;

use cella_proto::cella::idgen::v1 as idpb;
use cella_proto::cella::idgen::v1::ids_server::{Ids, IdsServer};
use tonic::{Request, Response, Status};

use crate::service::IdService;

type GrpcResult<T> = Result<Response<T>, Status>;

/// The gRPC service, ready to add to the node's routes.
pub fn server(service: Arc<IdService>) -> IdsServer<IdsGrpc> {
    IdsServer::new(IdsGrpc(service))
}

/// The `Ids` gRPC service over an [`IdService`].
pub struct IdsGrpc(Arc<IdService>);

#[tonic::async_trait]
impl Ids for IdsGrpc {
    async fn next(&self, request: Request<idpb::NextRequest>) -> GrpcResult<idpb::NextResponse> {
        Ok(Response::new(self.0.next(request.into_inner()).await?))
    }

    async fn batch(&self, request: Request<idpb::BatchRequest>) -> GrpcResult<idpb::BatchResponse> {
        Ok(Response::new(self.0.batch(request.into_inner()).await?))
    }

    async fn decode(
        &self,
        request: Request<idpb::DecodeRequest>,
    ) -> GrpcResult<idpb::DecodeResponse> {
        Ok(Response::new(self.0.decode(request.get_ref())?))
    }

    async fn segment_next(
        &self,
        request: Request<idpb::SegmentNextRequest>,
    ) -> GrpcResult<idpb::SegmentNextResponse> {
        Ok(Response::new(
            self.0.segment_next(request.into_inner()).await?,
        ))
    }

    async fn list_layouts(
        &self,
        _request: Request<idpb::ListLayoutsRequest>,
    ) -> GrpcResult<idpb::ListLayoutsResponse> {
        Ok(Response::new(self.0.list_layouts()))
    }
}
