//! Topics and consumer groups declared as resources, through the resource service over a
//! real core and broker.

use cella_resource::{Outcome, Resource, ResourceError, Resources};
use serde_json::json;

use crate::common::{test_config, Harness};
use cella_mq::resources::{ConsumerGroupKind, TopicKind};
use cella_mq::{FlushPolicy, Overflow};
use std::sync::Arc;

fn resource(kind: &str, name: &str, spec: serde_json::Value) -> Resource {
    serde_json::from_value(json!({
        "apiVersion": "cella.dev/v1", "kind": kind, "metadata": { "name": name }, "spec": spec,
    }))
    .expect("a resource")
}

fn invalid_field(result: Result<(Resource, Outcome), ResourceError>) -> String {
    match result {
        Err(ResourceError::InvalidField { field, .. }) => field,
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

#[tokio::test]
async fn topics_and_groups_are_created_as_declared_and_refusals_change_nothing() {
    let harness = Harness::start().await;
    let broker = harness.broker(test_config());
    let resources = Resources::new(
        harness.core(),
        vec![
            Arc::new(TopicKind::new(broker.clone())),
            Arc::new(ConsumerGroupKind::new(broker.clone())),
        ],
    );

    let topic = resource("Topic", "orders", json!({ "queues": 8, "flush": "async" }));
    let (stored, outcome) = resources.apply(topic.clone()).await.expect("applied");
    assert_eq!(outcome, Outcome::Created);
    let made = broker
        .topic("orders")
        .await
        .expect("read")
        .expect("topic exists");
    assert_eq!(
        (made.queues, made.ordered, made.flush),
        (8, false, FlushPolicy::Async)
    );
    let (again, outcome) = resources.apply(topic.clone()).await.expect("re-applied");
    assert_eq!(outcome, Outcome::Unchanged);
    assert_eq!(
        again.metadata.resource_version,
        stored.metadata.resource_version
    );

    // A fixed setting cannot change; a stale version is refused; neither changes anything.
    let field = invalid_field(
        resources
            .apply(resource("Topic", "orders", json!({ "queues": 2 })))
            .await,
    );
    assert_eq!(field, "spec.queues");
    let mut stale = topic.clone();
    stale.metadata.resource_version = stored.metadata.resource_version - 1;
    assert!(matches!(
        resources.apply(stale).await,
        Err(ResourceError::Conflict { .. })
    ));
    assert_eq!(
        broker
            .topic("orders")
            .await
            .expect("read")
            .expect("exists")
            .queues,
        8
    );
    let now = resources.get("topics", "", "orders").await.expect("stored");
    assert_eq!(
        now.metadata.resource_version,
        stored.metadata.resource_version
    );

    // Bad input: each names its field and creates nothing.
    assert_eq!(
        invalid_field(
            resources
                .apply(resource("Topic", "t2", json!({ "queus": 1 })))
                .await
        ),
        "spec"
    );
    assert_eq!(
        invalid_field(
            resources
                .apply(resource("Topic", "t2", json!({ "queues": 0 })))
                .await
        ),
        "spec.queues"
    );
    let mut namespaced = resource("Topic", "t2", json!({}));
    namespaced.metadata.namespace = "prod".into();
    assert_eq!(
        invalid_field(resources.apply(namespaced).await),
        "metadata.namespace"
    );
    assert!(matches!(
        resources.apply(resource("Widget", "w", json!({}))).await,
        Err(ResourceError::UnknownKind { .. })
    ));
    assert_eq!(broker.topic("t2").await.expect("read"), None);
    assert_eq!(resources.list("Topic", "").await.expect("list").len(), 1);

    // A group with a capped subscription: the broker enforces what was declared.
    let group = resource(
        "ConsumerGroup",
        "billing",
        json!({ "mode": "broadcasting", "subscriptions": [{ "topic": "orders", "maxBacklog": 10, "overflow": "dead_letter" }] }),
    );
    let (stored, _) = resources.apply(group).await.expect("group applied");
    assert_eq!(stored.status["subscriptions"][0]["maxBacklog"], 10);
    let groups = broker.groups().await.expect("groups");
    assert_eq!(groups.len(), 1);
    let declared = broker
        .subscription("billing", "orders")
        .await
        .expect("read")
        .expect("declared");
    assert_eq!(
        (declared.max_backlog, declared.overflow),
        (10, Overflow::DeadLetter)
    );
    let field = invalid_field(
        resources
            .apply(resource(
                "ConsumerGroup",
                "billing",
                json!({ "mode": "clustering" }),
            ))
            .await,
    );
    assert_eq!(field, "spec.mode");

    // Deleting is refused and keeps both the declaration and the topic.
    assert!(matches!(
        resources.delete("topic", "", "orders").await,
        Err(ResourceError::Rejected { .. })
    ));
    assert!(resources.get("Topic", "", "orders").await.is_ok());
}
