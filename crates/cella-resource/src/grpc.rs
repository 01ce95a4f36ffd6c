//! `cella.resource.v1.ResourceService` over tonic: wire messages in, [`Resources`] calls out.

use cella_proto::cella::resource::v1 as rpb;
use rpb::resource_service_server::{ResourceService, ResourceServiceServer};
use tonic::{Request, Response, Status};

use crate::model::Resource;
use crate::service::Resources;

/// The gRPC service for `resources`.
pub fn service(resources: Resources) -> ResourceServiceServer<Api> {
    ResourceServiceServer::new(Api { resources })
}

/// The gRPC face of [`Resources`].
pub struct Api {
    resources: Resources,
}

#[tonic::async_trait]
impl ResourceService for Api {
    async fn apply(
        &self,
        request: Request<rpb::ApplyRequest>,
    ) -> Result<Response<rpb::ApplyResponse>, Status> {
        let given = request.into_inner().resource.unwrap_or_default();
        let (stored, outcome) = self.resources.apply(Resource::from_proto(given)?).await?;
        Ok(Response::new(rpb::ApplyResponse {
            resource: Some(stored.to_proto()),
            outcome: outcome.as_str().to_string(),
        }))
    }

    async fn get(
        &self,
        request: Request<rpb::GetRequest>,
    ) -> Result<Response<rpb::Resource>, Status> {
        let r = request.into_inner();
        let found = self.resources.get(&r.kind, &r.namespace, &r.name).await?;
        Ok(Response::new(found.to_proto()))
    }

    async fn list(
        &self,
        request: Request<rpb::ListRequest>,
    ) -> Result<Response<rpb::ListResponse>, Status> {
        let r = request.into_inner();
        let items = self.resources.list(&r.kind, &r.namespace).await?;
        Ok(Response::new(rpb::ListResponse {
            items: items.iter().map(Resource::to_proto).collect(),
        }))
    }

    async fn delete(
        &self,
        request: Request<rpb::DeleteRequest>,
    ) -> Result<Response<rpb::Resource>, Status> {
        let r = request.into_inner();
        let gone = self
            .resources
            .delete(&r.kind, &r.namespace, &r.name)
            .await?;
        Ok(Response::new(gone.to_proto()))
    }
}
