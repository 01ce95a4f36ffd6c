//! The node's [`CoreStore`]: the in-process consistent core.

use cella_core::gateway::ApiError;
use cella_core::{Core, CoreError};
use cella_proto::etcdserverpb as pb;

use crate::error::{IdgenError, IdgenResult};
use crate::store::CoreStore;

fn from_core(err: CoreError) -> IdgenError {
    IdgenError::Core {
        code: err.grpc_code(),
        message: err.to_string(),
    }
}

impl CoreStore for Core {
    async fn txn(&self, req: pb::TxnRequest) -> IdgenResult<pb::TxnResponse> {
        Core::txn(self, req).await.map_err(from_core)
    }

    async fn range(&self, req: pb::RangeRequest) -> IdgenResult<pb::RangeResponse> {
        Core::range(self, req).await.map_err(from_core)
    }

    async fn grant_lease(&self, ttl_secs: i64) -> IdgenResult<(i64, i64)> {
        let resp = self
            .lease_grant(pb::LeaseGrantRequest {
                ttl: ttl_secs,
                id: 0,
            })
            .await
            .map_err(from_core)?;
        Ok((resp.id, resp.ttl))
    }

    async fn keep_alive(&self, lease: i64) -> IdgenResult<i64> {
        let resp = self.lease_keep_alive(lease).await.map_err(from_core)?;
        Ok(resp.ttl)
    }

    async fn revoke_lease(&self, lease: i64) -> IdgenResult<()> {
        match self
            .lease_revoke(pb::LeaseRevokeRequest { id: lease })
            .await
        {
            Ok(_) | Err(CoreError::LeaseNotFound { .. }) => Ok(()),
            Err(e) => Err(from_core(e)),
        }
    }
}
