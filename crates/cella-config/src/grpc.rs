//! The `cella.config.v1.ConfigService` gRPC service: each call reads the bearer token from
//! the `authorization` metadata and hands the request to [`ConfigApi`].

use cella_proto::cella::config::v1 as cpb;
use cella_proto::cella::config::v1::config_service_server::{
    ConfigService as Rpc, ConfigServiceServer,
};
use futures::StreamExt;
use tonic::{Request, Response, Status};

use crate::acl::Caller;
use crate::api::ConfigApi;

type GrpcResult<T> = Result<Response<T>, Status>;

/// Largest message accepted: content plus room for the rest of a request.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The config service, ready to add to the node's routes.
pub fn service(api: ConfigApi) -> ConfigServiceServer<ConfigGrpc> {
    ConfigServiceServer::new(ConfigGrpc(api)).max_decoding_message_size(MAX_MESSAGE_BYTES)
}

/// The gRPC face of [`ConfigApi`].
pub struct ConfigGrpc(ConfigApi);

fn caller<T>(request: &Request<T>) -> Caller {
    Caller::from_authorization(
        request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
    )
}

/// Splits a request into its caller and message.
fn split<T>(request: Request<T>) -> (Caller, T) {
    (caller(&request), request.into_inner())
}

#[tonic::async_trait]
impl Rpc for ConfigGrpc {
    async fn create_namespace(
        &self,
        r: Request<cpb::CreateNamespaceRequest>,
    ) -> GrpcResult<cpb::Namespace> {
        Ok(Response::new(
            self.0.create_namespace(r.into_inner()).await?,
        ))
    }

    async fn list_namespaces(
        &self,
        _: Request<cpb::ListNamespacesRequest>,
    ) -> GrpcResult<cpb::ListNamespacesResponse> {
        Ok(Response::new(self.0.list_namespaces().await?))
    }

    async fn delete_namespace(
        &self,
        r: Request<cpb::DeleteNamespaceRequest>,
    ) -> GrpcResult<cpb::DeleteNamespaceResponse> {
        let (c, m) = split(r);
        Ok(Response::new(self.0.delete_namespace(&c, m).await?))
    }

    async fn publish(&self, r: Request<cpb::PublishRequest>) -> GrpcResult<cpb::Release> {
        let (c, m) = split(r);
        Ok(Response::new(self.0.publish(&c, m).await?))
    }

    async fn get(&self, r: Request<cpb::GetConfigRequest>) -> GrpcResult<cpb::GetConfigResponse> {
        let (c, m) = split(r);
        Ok(Response::new(self.0.get(&c, m).await?))
    }

    async fn get_state(&self, r: Request<cpb::GetStateRequest>) -> GrpcResult<cpb::ConfigState> {
        let (c, m) = split(r);
        Ok(Response::new(self.0.get_state(&c, m).await?))
    }

    async fn list(
        &self,
        r: Request<cpb::ListConfigsRequest>,
    ) -> GrpcResult<cpb::ListConfigsResponse> {
        let (c, m) = split(r);
        Ok(Response::new(self.0.list(&c, m).await?))
    }

    async fn history(&self, r: Request<cpb::HistoryRequest>) -> GrpcResult<cpb::HistoryResponse> {
        let (c, m) = split(r);
        Ok(Response::new(self.0.history(&c, m).await?))
    }

    async fn diff(&self, r: Request<cpb::DiffRequest>) -> GrpcResult<cpb::DiffResponse> {
        let (c, m) = split(r);
        Ok(Response::new(self.0.diff(&c, m).await?))
    }

    async fn rollback(&self, r: Request<cpb::RollbackRequest>) -> GrpcResult<cpb::Release> {
        let (c, m) = split(r);
        Ok(Response::new(self.0.rollback(&c, m).await?))
    }

    async fn start_gray(&self, r: Request<cpb::StartGrayRequest>) -> GrpcResult<cpb::Release> {
        let (c, m) = split(r);
        Ok(Response::new(self.0.start_gray(&c, m).await?))
    }

    async fn promote_gray(&self, r: Request<cpb::GrayActionRequest>) -> GrpcResult<cpb::Release> {
        let (c, m) = split(r);
        Ok(Response::new(self.0.promote_gray(&c, m).await?))
    }

    async fn abort_gray(&self, r: Request<cpb::GrayActionRequest>) -> GrpcResult<cpb::ConfigState> {
        let (c, m) = split(r);
        Ok(Response::new(self.0.abort_gray(&c, m).await?))
    }

    async fn delete(
        &self,
        r: Request<cpb::DeleteConfigRequest>,
    ) -> GrpcResult<cpb::DeleteConfigResponse> {
        let (c, m) = split(r);
        Ok(Response::new(self.0.delete(&c, m).await?))
    }

    async fn set_acl(&self, r: Request<cpb::SetAclRequest>) -> GrpcResult<cpb::AclResponse> {
        let (c, m) = split(r);
        Ok(Response::new(self.0.set_acl(&c, m).await?))
    }

    async fn get_acl(&self, r: Request<cpb::GetAclRequest>) -> GrpcResult<cpb::AclResponse> {
        let (c, m) = split(r);
        Ok(Response::new(self.0.get_acl(&c, m).await?))
    }

    async fn audit(&self, r: Request<cpb::AuditRequest>) -> GrpcResult<cpb::AuditResponse> {
        let (c, m) = split(r);
        Ok(Response::new(self.0.audit(&c, m).await?))
    }

    type WatchStream = futures::stream::BoxStream<'static, Result<cpb::WatchResponse, Status>>;

    async fn watch(&self, r: Request<cpb::WatchRequest>) -> GrpcResult<Self::WatchStream> {
        let (c, m) = split(r);
        let stream = self.0.watch(&c, m).await?;
        Ok(Response::new(
            stream.map(|item| item.map_err(Status::from)).boxed(),
        ))
    }
}

/// The tonic server type for the config service.
pub type ConfigServiceServerFor = ConfigServiceServer<ConfigGrpc>;
