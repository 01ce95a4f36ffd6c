//! The broker's gRPC service (`cella.mq.v1.MessageQueue`) and REST routes (`/v1/mq/...`),
//! both thin over [`Broker`]. REST bodies are the proto3 JSON form of the same messages
//! (bytes as base64, 64-bit integers as strings); errors are `{"error","code","message"}`
//! with the status from [`MqError::http_status`].

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::Router;
use cella_core::gateway;
use cella_proto::cella::mq::v1 as pb;
use pb::message_queue_client::MessageQueueClient;
use pb::message_queue_server::{MessageQueue, MessageQueueServer};
use tonic::{Request, Status};

use crate::broker::{format_id, Broker, Delivery, PullRequest, QueueLag, SendRequest, SendResult};
use crate::error::{MqError, MqResult};
use crate::group::GroupMode;
use crate::meta::{FlushPolicy, Overflow, StartFrom, TopicMeta};
use crate::storage::StoredMessage;

/// Longest a pull may wait for messages.
const MAX_WAIT_MS: u64 = 30_000;
/// Messages per pull when the request does not say.
const DEFAULT_PULL: u32 = 32;
/// How long a member waits for another's lag before listing it unreachable.
const PEER_LAG_TIMEOUT: Duration = Duration::from_secs(2);

fn topic_to_pb(t: TopicMeta) -> pb::Topic {
    pb::Topic {
        name: t.name,
        queues: t.queues,
        ordered: t.ordered,
        flush: match t.flush {
            FlushPolicy::Sync => pb::FlushPolicy::Sync,
            FlushPolicy::Async => pb::FlushPolicy::Async,
        } as i32,
    }
}

fn message_to_pb(m: StoredMessage) -> pb::Message {
    pb::Message {
        message_id: format_id(m.id),
        topic: m.topic,
        queue_id: m.queue_id,
        queue_offset: m.queue_offset,
        tag: m.tag,
        keys: m.keys,
        properties: m.properties.into_iter().collect(),
        body: m.body.into(),
        born_ms: m.born_ms,
        stored_ms: m.stored_ms,
    }
}

fn lag_to_pb(l: QueueLag, node_id: u64) -> pb::QueueLag {
    pb::QueueLag {
        node_id,
        topic: l.topic,
        queue_id: l.queue_id,
        member: l.member,
        committed: l.committed,
        end: l.end,
        lag: l.lag,
    }
}

fn deliveries_from_pb(deliveries: Vec<pb::Delivery>) -> Vec<Delivery> {
    deliveries
        .into_iter()
        .map(|d| Delivery {
            topic: d.topic,
            queue_id: d.queue_id,
            queue_offset: d.queue_offset,
        })
        .collect()
}

fn send_from_pb(req: pb::SendRequest) -> SendRequest {
    SendRequest {
        topic: req.topic,
        sharding_key: (!req.sharding_key.is_empty()).then_some(req.sharding_key),
        queue_id: req.queue_id,
        tag: req.tag,
        keys: req.keys,
        properties: req.properties.into_iter().collect(),
        body: req.body.to_vec(),
        born_ms: req.born_ms,
        delay_ms: req.delay_ms,
        transaction_group: (!req.transaction_group.is_empty()).then_some(req.transaction_group),
    }
}

fn sent_to_pb(result: SendResult) -> pb::SendResponse {
    pb::SendResponse {
        message_id: format_id(result.id),
        queue_id: result.queue_id,
        queue_offset: result.queue_offset,
        delayed: result.delayed,
        half: result.half,
    }
}

fn parse_id(text: &str) -> MqResult<u128> {
    if text.len() != 32 {
        return Err(MqError::InvalidField {
            field: "message_id",
            rule: format!("must be 32 hex digits (got {text:?})"),
        });
    }
    u128::from_str_radix(text, 16).map_err(|_| MqError::InvalidField {
        field: "message_id",
        rule: format!("must be 32 hex digits (got {text:?})"),
    })
}

fn enum_field<T>(
    field: &'static str,
    value: i32,
    parse: impl FnOnce(i32) -> Option<T>,
) -> MqResult<T> {
    parse(value).ok_or_else(|| MqError::InvalidField {
        field,
        rule: format!("has unknown value {value}"),
    })
}

/// The operations, shared by gRPC and REST.
#[derive(Clone)]
pub(crate) struct Api(Broker);

impl Api {
    async fn create_topic(&self, req: pb::CreateTopicRequest) -> MqResult<pb::Topic> {
        let flush = match enum_field("flush", req.flush, |v| pb::FlushPolicy::try_from(v).ok())? {
            pb::FlushPolicy::Unspecified | pb::FlushPolicy::Sync => FlushPolicy::Sync,
            pb::FlushPolicy::Async => FlushPolicy::Async,
        };
        let queues = if req.queues == 0 {
            self.0.config().default_queues
        } else {
            req.queues
        };
        Ok(topic_to_pb(
            self.0
                .create_topic(&req.name, queues, req.ordered, flush)
                .await?,
        ))
    }

    async fn list_topics(&self) -> MqResult<pb::ListTopicsResponse> {
        let topics = self
            .0
            .topics()
            .await?
            .into_iter()
            .map(topic_to_pb)
            .collect();
        Ok(pb::ListTopicsResponse { topics })
    }

    async fn route(&self, req: pb::RouteRequest) -> MqResult<pb::TopicRoute> {
        let (topic, brokers) = self.0.route(&req.topic).await?;
        Ok(pb::TopicRoute {
            topic: Some(topic_to_pb(topic)),
            brokers: brokers
                .into_iter()
                .map(|(node_id, address)| pb::BrokerNode { node_id, address })
                .collect(),
            answered_by: self.0.node_id(),
        })
    }

    pub(crate) async fn send(&self, req: pb::SendRequest) -> MqResult<pb::SendResponse> {
        Ok(sent_to_pb(self.0.send(send_from_pb(req)).await?))
    }

    pub(crate) async fn send_batch(
        &self,
        req: pb::SendBatchRequest,
    ) -> MqResult<pb::SendBatchResponse> {
        let messages = req.messages.into_iter().map(send_from_pb).collect();
        let results = self.0.send_batch(&req.topic, messages).await?;
        Ok(pb::SendBatchResponse {
            results: results.into_iter().map(sent_to_pb).collect(),
        })
    }

    async fn pull(&self, req: pb::PullRequest) -> MqResult<pb::PullResponse> {
        if req.wait_ms > MAX_WAIT_MS {
            return Err(MqError::InvalidField {
                field: "wait_ms",
                rule: format!("must be at most {MAX_WAIT_MS} (got {})", req.wait_ms),
            });
        }
        let mode = match enum_field("mode", req.mode, |v| pb::GroupMode::try_from(v).ok())? {
            pb::GroupMode::Unspecified => None,
            pb::GroupMode::Clustering => Some(GroupMode::Clustering),
            pb::GroupMode::Broadcasting => Some(GroupMode::Broadcasting),
        };
        let start = match enum_field("start", req.start, |v| pb::StartFrom::try_from(v).ok())? {
            pb::StartFrom::Unspecified => None,
            pb::StartFrom::Earliest => Some(StartFrom::Earliest),
            pb::StartFrom::Latest => Some(StartFrom::Latest),
        };
        if !req.acks.is_empty() {
            let acks = deliveries_from_pb(req.acks);
            self.0
                .ack_listed(&req.group, &req.member, &acks, "acks")
                .await?;
        }
        let pull = PullRequest {
            group: req.group,
            topic: req.topic,
            member: req.member,
            tags: req.tags,
            max: if req.max_messages == 0 {
                DEFAULT_PULL
            } else {
                req.max_messages
            },
            mode,
            start,
        };
        let messages = self
            .0
            .pull_wait(&pull, Duration::from_millis(req.wait_ms))
            .await?;
        Ok(pb::PullResponse {
            messages: messages.into_iter().map(message_to_pb).collect(),
        })
    }

    async fn ack(&self, req: pb::AckRequest, positive: bool) -> MqResult<pb::AckResponse> {
        if positive {
            self.0
                .ack(
                    &req.group,
                    &req.member,
                    &req.topic,
                    req.queue_id,
                    req.queue_offset,
                )
                .await?;
        } else {
            self.0
                .nack(
                    &req.group,
                    &req.member,
                    &req.topic,
                    req.queue_id,
                    req.queue_offset,
                )
                .await?;
        }
        Ok(pb::AckResponse {})
    }

    async fn ack_batch(&self, req: pb::AckBatchRequest) -> MqResult<pb::AckResponse> {
        let deliveries = deliveries_from_pb(req.deliveries);
        self.0
            .ack_batch(&req.group, &req.member, &deliveries)
            .await?;
        Ok(pb::AckResponse {})
    }

    fn leave(&self, req: pb::LeaveRequest) -> MqResult<pb::LeaveResponse> {
        self.0.leave(&req.group, &req.member)?;
        Ok(pb::LeaveResponse {})
    }

    async fn declare_subscription(&self, req: pb::Subscription) -> MqResult<pb::Subscription> {
        let overflow =
            match enum_field("overflow", req.overflow, |v| pb::Overflow::try_from(v).ok())? {
                pb::Overflow::Unspecified | pb::Overflow::DropOldest => Overflow::DropOldest,
                pb::Overflow::DeadLetter => Overflow::DeadLetter,
            };
        let sub = self
            .0
            .declare_subscription(&req.group, &req.topic, req.max_backlog, overflow)
            .await?;
        Ok(pb::Subscription {
            group: sub.group,
            topic: sub.topic,
            max_backlog: sub.max_backlog,
            overflow: match sub.overflow {
                Overflow::DropOldest => pb::Overflow::DropOldest,
                Overflow::DeadLetter => pb::Overflow::DeadLetter,
            } as i32,
        })
    }

    async fn end_transaction(
        &self,
        req: pb::EndTransactionRequest,
    ) -> MqResult<pb::EndTransactionResponse> {
        let id = parse_id(&req.message_id)?;
        self.0.end_transaction(id, req.commit).await?;
        Ok(pb::EndTransactionResponse {})
    }

    async fn transaction_checks(
        &self,
        req: pb::TransactionChecksRequest,
    ) -> MqResult<pb::TransactionChecksResponse> {
        let max = if req.max_messages == 0 {
            DEFAULT_PULL
        } else {
            req.max_messages.min(self.0.config().max_pull)
        };
        let messages = self
            .0
            .transaction_checks(&req.producer_group, max as usize)
            .await?;
        Ok(pb::TransactionChecksResponse {
            messages: messages.into_iter().map(message_to_pb).collect(),
        })
    }

    async fn lag(&self, req: pb::LagRequest) -> MqResult<pb::LagResponse> {
        let node_id = self.0.node_id();
        let mut queues: Vec<pb::QueueLag> = self
            .0
            .lag(&req.group)
            .await?
            .into_iter()
            .map(|lag| lag_to_pb(lag, node_id))
            .collect();
        let mut unreachable = Vec::new();
        if !req.local {
            let asks = self.0.other_members().into_iter().map(|(id, channel)| {
                let request = pb::LagRequest {
                    group: req.group.clone(),
                    local: true,
                };
                async move {
                    let Some(channel) = channel else {
                        return (id, None);
                    };
                    let mut client = MessageQueueClient::new(channel);
                    let answer = tokio::time::timeout(PEER_LAG_TIMEOUT, client.lag(request)).await;
                    (id, answer.ok().and_then(Result::ok))
                }
            });
            for (id, answer) in futures::future::join_all(asks).await {
                match answer {
                    Some(answer) => queues.extend(answer.into_inner().queues),
                    None => unreachable.push(id),
                }
            }
        }
        Ok(pb::LagResponse {
            queues,
            unreachable,
        })
    }
}

#[tonic::async_trait]
impl MessageQueue for Api {
    async fn create_topic(
        &self,
        r: Request<pb::CreateTopicRequest>,
    ) -> Result<tonic::Response<pb::Topic>, Status> {
        Ok(tonic::Response::new(
            Api::create_topic(self, r.into_inner()).await?,
        ))
    }
    async fn list_topics(
        &self,
        _: Request<pb::ListTopicsRequest>,
    ) -> Result<tonic::Response<pb::ListTopicsResponse>, Status> {
        Ok(tonic::Response::new(Api::list_topics(self).await?))
    }
    async fn route(
        &self,
        r: Request<pb::RouteRequest>,
    ) -> Result<tonic::Response<pb::TopicRoute>, Status> {
        Ok(tonic::Response::new(
            Api::route(self, r.into_inner()).await?,
        ))
    }
    async fn send(
        &self,
        r: Request<pb::SendRequest>,
    ) -> Result<tonic::Response<pb::SendResponse>, Status> {
        Ok(tonic::Response::new(Api::send(self, r.into_inner()).await?))
    }
    async fn send_batch(
        &self,
        r: Request<pb::SendBatchRequest>,
    ) -> Result<tonic::Response<pb::SendBatchResponse>, Status> {
        Ok(tonic::Response::new(
            Api::send_batch(self, r.into_inner()).await?,
        ))
    }
    async fn pull(
        &self,
        r: Request<pb::PullRequest>,
    ) -> Result<tonic::Response<pb::PullResponse>, Status> {
        Ok(tonic::Response::new(Api::pull(self, r.into_inner()).await?))
    }
    async fn ack(
        &self,
        r: Request<pb::AckRequest>,
    ) -> Result<tonic::Response<pb::AckResponse>, Status> {
        Ok(tonic::Response::new(
            Api::ack(self, r.into_inner(), true).await?,
        ))
    }
    async fn ack_batch(
        &self,
        r: Request<pb::AckBatchRequest>,
    ) -> Result<tonic::Response<pb::AckResponse>, Status> {
        Ok(tonic::Response::new(
            Api::ack_batch(self, r.into_inner()).await?,
        ))
    }
    async fn nack(
        &self,
        r: Request<pb::AckRequest>,
    ) -> Result<tonic::Response<pb::AckResponse>, Status> {
        Ok(tonic::Response::new(
            Api::ack(self, r.into_inner(), false).await?,
        ))
    }
    async fn leave(
        &self,
        r: Request<pb::LeaveRequest>,
    ) -> Result<tonic::Response<pb::LeaveResponse>, Status> {
        Ok(tonic::Response::new(Api::leave(self, r.into_inner())?))
    }
    async fn lag(
        &self,
        r: Request<pb::LagRequest>,
    ) -> Result<tonic::Response<pb::LagResponse>, Status> {
        Ok(tonic::Response::new(Api::lag(self, r.into_inner()).await?))
    }
    async fn declare_subscription(
        &self,
        r: Request<pb::Subscription>,
    ) -> Result<tonic::Response<pb::Subscription>, Status> {
        Ok(tonic::Response::new(
            Api::declare_subscription(self, r.into_inner()).await?,
        ))
    }
    async fn end_transaction(
        &self,
        r: Request<pb::EndTransactionRequest>,
    ) -> Result<tonic::Response<pb::EndTransactionResponse>, Status> {
        Ok(tonic::Response::new(
            Api::end_transaction(self, r.into_inner()).await?,
        ))
    }
    async fn transaction_checks(
        &self,
        r: Request<pb::TransactionChecksRequest>,
    ) -> Result<tonic::Response<pb::TransactionChecksResponse>, Status> {
        Ok(tonic::Response::new(
            Api::transaction_checks(self, r.into_inner()).await?,
        ))
    }
}

/// The broker's gRPC service, ready to add to the node's routes.
pub fn grpc_service(broker: Broker) -> MessageQueueServer<impl MessageQueue> {
    let max = broker.config().max_request_bytes();
    MessageQueueServer::new(Api(broker)).max_decoding_message_size(max)
}

/// `GET /v1/mq/groups/{group}/lag?local=true`: only the answering member's queues.
#[derive(Debug, Default, serde::Deserialize)]
struct LagQuery {
    #[serde(default)]
    local: bool,
}

/// The broker's REST routes under `/v1/mq`.
pub fn router(broker: Broker) -> Router {
    // JSON carries bodies in base64: 4/3 of their size.
    let body_limit = broker.config().max_request_bytes() * 2;
    Router::new()
        .route(cella_proto::mq_wire::PATH, get(crate::wire::upgrade))
        .route(
            "/v1/mq/topics",
            post(|State(api): State<Api>, body: Bytes| {
                gateway::call(State(api), body, |api, req| async move {
                    api.create_topic(req).await
                })
            })
            .get(|State(api): State<Api>| async move { gateway::answer(api.list_topics().await) }),
        )
        .route(
            "/v1/mq/topics/{topic}/route",
            get(
                |State(api): State<Api>, Path(topic): Path<String>| async move {
                    gateway::answer(api.route(pb::RouteRequest { topic }).await)
                },
            ),
        )
        .route(
            "/v1/mq/topics/{topic}/messages",
            post(
                |State(api): State<Api>, Path(topic): Path<String>, body: Bytes| {
                    gateway::call(State(api), body, |api, req: pb::SendRequest| async move {
                        api.send(pb::SendRequest { topic, ..req }).await
                    })
                },
            ),
        )
        .route(
            "/v1/mq/topics/{topic}/messages/batch",
            post(
                |State(api): State<Api>, Path(topic): Path<String>, body: Bytes| {
                    gateway::call(
                        State(api),
                        body,
                        |api, req: pb::SendBatchRequest| async move {
                            api.send_batch(pb::SendBatchRequest { topic, ..req }).await
                        },
                    )
                },
            ),
        )
        .route(
            "/v1/mq/pull",
            post(|State(api): State<Api>, body: Bytes| {
                gateway::call(
                    State(api),
                    body,
                    |api, req| async move { api.pull(req).await },
                )
            }),
        )
        .route(
            "/v1/mq/ack",
            post(|State(api): State<Api>, body: Bytes| {
                gateway::call(State(api), body, |api, req| async move {
                    api.ack(req, true).await
                })
            }),
        )
        .route(
            "/v1/mq/ack-batch",
            post(|State(api): State<Api>, body: Bytes| {
                gateway::call(State(api), body, |api, req| async move {
                    api.ack_batch(req).await
                })
            }),
        )
        .route(
            "/v1/mq/nack",
            post(|State(api): State<Api>, body: Bytes| {
                gateway::call(State(api), body, |api, req| async move {
                    api.ack(req, false).await
                })
            }),
        )
        .route(
            "/v1/mq/leave",
            post(|State(api): State<Api>, body: Bytes| {
                gateway::call(State(api), body, |api, req| async move { api.leave(req) })
            }),
        )
        .route(
            "/v1/mq/groups/{group}/lag",
            get(
                |State(api): State<Api>,
                 Path(group): Path<String>,
                 Query(query): Query<LagQuery>| async move {
                    let local = query.local;
                    gateway::answer(api.lag(pb::LagRequest { group, local }).await)
                },
            ),
        )
        .route(
            "/v1/mq/groups/{group}/subscriptions/{topic}",
            axum::routing::put(
                |State(api): State<Api>,
                 Path((group, topic)): Path<(String, String)>,
                 body: Bytes| {
                    gateway::call(State(api), body, |api, req: pb::Subscription| async move {
                        api.declare_subscription(pb::Subscription {
                            group,
                            topic,
                            ..req
                        })
                        .await
                    })
                },
            ),
        )
        .route(
            "/v1/mq/transactions/end",
            post(|State(api): State<Api>, body: Bytes| {
                gateway::call(State(api), body, |api, req| async move {
                    api.end_transaction(req).await
                })
            }),
        )
        .route(
            "/v1/mq/transactions/checks",
            post(|State(api): State<Api>, body: Bytes| {
                gateway::call(State(api), body, |api, req| async move {
                    api.transaction_checks(req).await
                })
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(Api(broker))
}

/// The REST routes' part of `/openapi.json`.
pub fn openapi() -> serde_json::Value {
    let op = |summary: &str, request: Option<&str>, response: &str| {
        let mut o = serde_json::json!({
            "summary": summary,
            "responses": {
                "200": { "description": "ok", "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/mq.{response}") } } } },
                "400": { "description": "bad input: the message names the field and the rule" },
                "404": { "description": "unknown topic, group or member" },
                "409": { "description": "topic exists with other settings" }
            }
        });
        if let Some(req) = request {
            o["requestBody"] = serde_json::json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/mq.{req}") } } } });
        }
        o
    };
    let path_param = |name: &str| serde_json::json!([{ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }]);
    let object =
        |props: serde_json::Value| serde_json::json!({ "type": "object", "properties": props });
    let s = |t: &str| serde_json::json!({ "type": t });
    let u64s = serde_json::json!({ "type": "string", "format": "uint64" });
    let message_props = serde_json::json!({
        "message_id": s("string"), "topic": s("string"), "queue_id": s("integer"), "queue_offset": u64s,
        "tag": s("string"), "keys": { "type": "array", "items": s("string") },
        "properties": { "type": "object", "additionalProperties": s("string") },
        "body": { "type": "string", "format": "byte" }, "born_ms": u64s, "stored_ms": u64s
    });
    let mut send_path = op(
        "Send a message; answers once durable under the topic's flush policy",
        Some("SendRequest"),
        "SendResponse",
    );
    send_path["parameters"] = path_param("topic");
    let mut batch_path = op(
        "Send a batch of messages of the topic with one group commit; one bad message refuses the batch and stores nothing",
        Some("SendBatchRequest"),
        "SendBatchResponse",
    );
    batch_path["parameters"] = path_param("topic");
    let mut lag_path = op(
        "A group's committed offset and backlog per queue, on every member (local=true: this one)",
        None,
        "LagResponse",
    );
    lag_path["parameters"] = serde_json::json!([
        { "name": "group", "in": "path", "required": true, "schema": { "type": "string" } },
        { "name": "local", "in": "query", "required": false, "schema": { "type": "boolean" } }
    ]);
    let mut route_path = op(
        "Where a topic's queues are: the members whose brokers serve them",
        None,
        "TopicRoute",
    );
    route_path["parameters"] = path_param("topic");
    let mut sub_path = op(
        "Declare a subscription's maximum backlog per queue and overflow policy",
        Some("Subscription"),
        "Subscription",
    );
    sub_path["parameters"] = serde_json::json!([
        { "name": "group", "in": "path", "required": true, "schema": { "type": "string" } },
        { "name": "topic", "in": "path", "required": true, "schema": { "type": "string" } }
    ]);
    let topic = object(
        serde_json::json!({ "name": s("string"), "queues": s("integer"), "ordered": s("boolean"), "flush": { "type": "string", "enum": ["FLUSH_POLICY_SYNC", "FLUSH_POLICY_ASYNC"] } }),
    );
    let send_request = object(serde_json::json!({
        "sharding_key": s("string"), "queue_id": s("integer"), "tag": s("string"),
        "keys": { "type": "array", "items": s("string") },
        "properties": { "type": "object", "additionalProperties": s("string") },
        "body": { "type": "string", "format": "byte" }, "born_ms": u64s, "delay_ms": u64s,
        "transaction_group": s("string")
    }));
    let send_response = object(
        serde_json::json!({ "message_id": s("string"), "queue_id": s("integer"), "queue_offset": u64s }),
    );
    let ack = object(
        serde_json::json!({ "group": s("string"), "member": s("string"), "topic": s("string"), "queue_id": s("integer"), "queue_offset": u64s }),
    );
    serde_json::json!({
        "paths": {
            "/v1/mq/topics": {
                "post": op("Create a topic (idempotent with the same settings)", Some("Topic"), "Topic"),
                "get": op("List topics", None, "ListTopicsResponse")
            },
            "/v1/mq/topics/{topic}/route": { "get": route_path },
            "/v1/mq/topics/{topic}/messages": { "post": send_path },
            "/v1/mq/topics/{topic}/messages/batch": { "post": batch_path },
            "/v1/mq/pull": { "post": op("Take messages for a group member, long-polling up to wait_ms", Some("PullRequest"), "PullResponse") },
            "/v1/mq/ack": { "post": op("Acknowledge a delivery", Some("AckRequest"), "Empty") },
            "/v1/mq/ack-batch": { "post": op("Acknowledge many deliveries of a member; one that is not an unacked delivery refuses the batch and acks nothing", Some("AckBatchRequest"), "Empty") },
            "/v1/mq/nack": { "post": op("Negatively acknowledge a delivery: it is delivered again", Some("AckRequest"), "Empty") },
            "/v1/mq/leave": { "post": op("Remove a member from its group at once", Some("LeaveRequest"), "Empty") },
            "/v1/mq/groups/{group}/lag": { "get": lag_path },
            "/v1/mq/groups/{group}/subscriptions/{topic}": { "put": sub_path },
            "/v1/mq/transactions/end": { "post": op("Commit or roll back a half message", Some("EndTransactionRequest"), "Empty") },
            "/v1/mq/transactions/checks": { "post": op("Half messages of a producer group awaiting a decision (check-back)", Some("TransactionChecksRequest"), "PullResponse") }
        },
        "components": { "schemas": {
            "mq.Topic": topic.clone(),
            "mq.ListTopicsResponse": object(serde_json::json!({ "topics": { "type": "array", "items": topic.clone() } })),
            "mq.TopicRoute": object(serde_json::json!({ "topic": topic, "brokers": { "type": "array", "items": object(serde_json::json!({ "node_id": u64s, "address": s("string") })) }, "answered_by": u64s })),
            "mq.SendRequest": send_request.clone(),
            "mq.SendResponse": send_response.clone(),
            "mq.SendBatchRequest": object(serde_json::json!({ "messages": { "type": "array", "items": send_request } })),
            "mq.SendBatchResponse": object(serde_json::json!({ "results": { "type": "array", "items": send_response } })),
            "mq.PullRequest": object(serde_json::json!({
                "group": s("string"), "topic": s("string"), "member": s("string"),
                "tags": { "type": "array", "items": s("string") }, "max_messages": s("integer"), "wait_ms": u64s,
                "mode": { "type": "string", "enum": ["GROUP_MODE_CLUSTERING", "GROUP_MODE_BROADCASTING"] },
                "start": { "type": "string", "enum": ["START_FROM_EARLIEST", "START_FROM_LATEST"] },
                "acks": { "type": "array", "items": object(serde_json::json!({ "topic": s("string"), "queue_id": s("integer"), "queue_offset": u64s })) }
            })),
            "mq.PullResponse": object(serde_json::json!({ "messages": { "type": "array", "items": object(message_props) } })),
            "mq.AckRequest": ack,
            "mq.AckBatchRequest": object(serde_json::json!({
                "group": s("string"), "member": s("string"),
                "deliveries": { "type": "array", "items": object(serde_json::json!({ "topic": s("string"), "queue_id": s("integer"), "queue_offset": u64s })) }
            })),
            "mq.LeaveRequest": object(serde_json::json!({ "group": s("string"), "member": s("string") })),
            "mq.Empty": object(serde_json::json!({})),
            "mq.EndTransactionRequest": object(serde_json::json!({ "message_id": s("string"), "commit": s("boolean") })),
            "mq.TransactionChecksRequest": object(serde_json::json!({ "producer_group": s("string"), "max_messages": s("integer") })),
            "mq.Subscription": object(serde_json::json!({
                "max_backlog": u64s,
                "overflow": { "type": "string", "enum": ["OVERFLOW_DROP_OLDEST", "OVERFLOW_DEAD_LETTER"] }
            })),
            "mq.LagResponse": object(serde_json::json!({ "queues": { "type": "array", "items": object(serde_json::json!({
                "topic": s("string"), "queue_id": s("integer"), "member": s("string"), "committed": u64s, "end": u64s, "lag": u64s, "node_id": u64s
            })) }, "unreachable": { "type": "array", "items": u64s } }))
        } }
    })
}
