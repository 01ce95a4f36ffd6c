//! Connecting to the core: one shared HTTP/2 channel under a small, visible RPC stack.
//!
//! Every service handle ([`Kv`], [`Leases`], [`Watcher`], [`Cluster`], [`Maintenance`])
//! is a cheap clone of the same [`Transport`], so they share one connection.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

use crate::cluster::Cluster;
use crate::id::Ids;
use crate::kv::Kv;
use crate::lease::Leases;
use crate::lock::{Elections, Locks};
use crate::maintenance::Maintenance;
use crate::mq::Mq;
use crate::registry::Registry;
use crate::watch::Watcher;
use crate::{Error, Result};

/// The request path of every core call, outermost first: credentials → connection.
pub(crate) type Transport = InterceptedService<Channel, Credentials>;

/// Builds the request path over an established channel; later layers are added here, in order.
fn stack(channel: Channel, credentials: Credentials) -> Transport {
    InterceptedService::new(channel, credentials)
}

/// How long [`Client::connect`] waits for the TCP and HTTP/2 handshake by default.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to one Cella node's core (or any etcd v3 server).
#[derive(Debug, Clone)]
pub struct Client {
    transport: Transport,
    /// `HOST:PORT`, for connections of their own (the broker's producer wire).
    address: String,
    connect_timeout: Duration,
    /// For connections to the other members a block's route names (the broker's).
    credentials: Credentials,
}

impl Client {
    /// Connects to `endpoint`, given as `HOST:PORT` or `http://HOST:PORT`.
    pub async fn connect(endpoint: &str) -> Result<Client> {
        Client::builder(endpoint).connect().await
    }

    /// Starts configuring a connection to `endpoint` (token, timeouts).
    pub fn builder(endpoint: &str) -> ClientBuilder {
        ClientBuilder {
            endpoint: endpoint.to_owned(),
            token: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// Keys and values: range, put, delete, txn, compact.
    pub fn kv(&self) -> Kv {
        Kv::new(self.transport.clone())
    }

    /// Leases: grant, revoke, time-to-live, list, keep-alive.
    pub fn lease(&self) -> Leases {
        Leases::new(self.transport.clone())
    }

    /// Watches on keys and prefixes.
    pub fn watch(&self) -> Watcher {
        Watcher::new(self.transport.clone())
    }

    /// Locks: acquire (with a kept-alive lease), try, release, status.
    pub fn lock(&self) -> Locks {
        Locks::new(self.transport.clone())
    }

    /// Elections: campaign, leader, observe, resign.
    pub fn election(&self) -> Elections {
        Elections::new(self.transport.clone())
    }

    /// Cluster membership.
    pub fn cluster(&self) -> Cluster {
        Cluster::new(self.transport.clone())
    }

    /// The config center: publish, get, history, diff, rollback, gray.
    pub fn config(&self) -> crate::config::Configs {
        crate::config::Configs::new(self.transport.clone())
    }

    /// Node status.
    pub fn maintenance(&self) -> Maintenance {
        Maintenance::new(self.transport.clone())
    }

    /// The service registry: register, heartbeat, list, subscribe.
    pub fn registry(&self) -> Registry {
        Registry::new(self.transport.clone())
    }

    /// Unique ids: from the node, decoded, per segment tag, or generated locally.
    pub fn ids(&self) -> Ids {
        Ids::new(self.transport.clone())
    }

    /// The message broker: topics, producers, consumers.
    pub fn mq(&self) -> Mq {
        Mq::new(
            self.transport.clone(),
            self.address.clone(),
            self.connect_timeout,
            self.credentials.clone(),
        )
    }

    /// Resources: apply, get, list and delete declarative objects (topics, groups, …).
    pub fn resources(&self) -> crate::resources::Resources {
        crate::resources::Resources::new(self.transport.clone())
    }
}

/// Options for [`Client::connect`]; finish with [`ClientBuilder::connect`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoint: String,
    token: Option<String>,
    connect_timeout: Duration,
}

impl ClientBuilder {
    /// Sends `authorization: Bearer <token>` with every call.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// How long to wait for the connection to be established (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Opens the connection; fails if the endpoint is malformed or unreachable.
    pub async fn connect(self) -> Result<Client> {
        let credentials = Credentials::bearer(self.token.as_deref())?;
        let uri = endpoint_uri(&self.endpoint)?;
        let channel = endpoint(&self.endpoint, &uri, self.connect_timeout)?
            .connect()
            .await
            .map_err(|error| Error::connect_failed(&self.endpoint, &error))?;
        let address = uri
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        Ok(Client {
            transport: stack(channel, credentials.clone()),
            address,
            connect_timeout: self.connect_timeout,
            credentials,
        })
    }
}

/// The channel settings every connection shares, for `uri` (given by the user as `given`).
fn endpoint(given: &str, uri: &str, connect_timeout: Duration) -> Result<Endpoint> {
    Ok(Endpoint::from_shared(uri.to_owned())
        .map_err(|error| Error::InvalidEndpoint {
            endpoint: given.to_owned(),
            reason: error.to_string(),
        })?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true))
}

/// The request path to another member at `address` (`HOST:PORT`), connected on first use,
/// with the same credentials and timeouts as the client's own.
pub(crate) fn lazy_transport(
    address: &str,
    connect_timeout: Duration,
    credentials: Credentials,
) -> Result<Transport> {
    let uri = endpoint_uri(address)?;
    let channel = endpoint(address, &uri, connect_timeout)?.connect_lazy();
    Ok(stack(channel, credentials))
}

/// `HOST:PORT` becomes `http://HOST:PORT`; `http://` URIs pass; anything else is refused.
fn endpoint_uri(endpoint: &str) -> Result<String> {
    let invalid = |reason: &str| Error::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    match endpoint.split_once("://") {
        Some(("http", rest)) if !rest.is_empty() => Ok(endpoint.to_owned()),
        Some(("https", _)) => Err(invalid(
            "TLS is not supported by this client yet; use http://",
        )),
        Some(_) => Err(invalid("the scheme must be http://, or none (HOST:PORT)")),
        None if endpoint.is_empty() => Err(invalid("it must not be empty")),
        None => Ok(format!("http://{endpoint}")),
    }
}

/// Adds the bearer token, if any, to every request.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    authorization: Option<MetadataValue<Ascii>>,
}

impl Credentials {
    fn bearer(token: Option<&str>) -> Result<Credentials> {
        let Some(token) = token else {
            return Ok(Credentials {
                authorization: None,
            });
        };
        let mut value =
            MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| Error::InvalidToken)?;
        value.set_sensitive(true);
        Ok(Credentials {
            authorization: Some(value),
        })
    }
}

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_without_a_scheme_get_http() {
        assert_eq!(
            endpoint_uri("127.0.0.1:7070").ok().as_deref(),
            Some("http://127.0.0.1:7070")
        );
        assert_eq!(
            endpoint_uri("http://node1:7070").ok().as_deref(),
            Some("http://node1:7070")
        );
    }

    #[test]
    fn unsupported_endpoints_are_refused() {
        for endpoint in ["", "https://node1:7070", "unix:///tmp/sock", "http://"] {
            assert!(
                matches!(endpoint_uri(endpoint), Err(Error::InvalidEndpoint { .. })),
                "{endpoint:?} accepted"
            );
        }
    }

    #[test]
    fn token_becomes_a_bearer_header() {
        let mut credentials = Credentials::bearer(Some("s3cret")).expect("ascii token");
        let request = credentials
            .call(tonic::Request::new(()))
            .expect("interceptor never fails");
        let value = request.metadata().get("authorization").expect("header set");
        assert_eq!(value.to_str().ok(), Some("Bearer s3cret"));
    }

    #[test]
    fn token_with_a_newline_is_refused() {
        assert!(matches!(
            Credentials::bearer(Some("a\nb")),
            Err(Error::InvalidToken)
        ));
    }
}
