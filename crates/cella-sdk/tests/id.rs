//! The SDK's ids against a live `cella up`: ids from the node, and local generators that
//! lease their own worker ids over the network and never collide with the node's.

use std::collections::HashSet;
use std::time::Duration;

use cella_sdk::id::{ORDER32, SNOWFLAKE64};
use cella_sdk::{Client, Error};
use cella_testkit::{Node, NodeOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_and_node_ids_never_collide_and_decode_to_their_worker() {
    let mut node = Node::embedded(NodeOptions::default()).expect("cella up starts");
    node.wait_ready(Duration::from_secs(20))
        .await
        .expect("ready");
    let client = Client::connect(&node.endpoint()).await.expect("connect");
    let ids = client.ids();

    let from_node = ids.batch(SNOWFLAKE64, 5_000).await.expect("node batch");
    let node_worker = ids
        .decode(SNOWFLAKE64, &from_node[0])
        .await
        .expect("decode")
        .fields
        .iter()
        .find(|(name, _)| name == "worker")
        .map(|(_, v)| *v)
        .expect("worker field");
    let local_a = ids.local(SNOWFLAKE64).await.expect("local generator");
    let local_b = ids
        .local(SNOWFLAKE64)
        .await
        .expect("another local generator");
    let workers = HashSet::from([node_worker, local_a.worker(), local_b.worker()]);
    assert_eq!(workers.len(), 3, "every generator holds its own worker id");

    let mut seen: HashSet<String> = from_node.into_iter().collect();
    for _ in 0..20 {
        for generator in [&local_a, &local_b] {
            let batch = generator.batch(5_000).await.expect("local batch");
            assert!(batch
                .windows(2)
                .all(|w| w[0].parse::<u64>().ok() < w[1].parse::<u64>().ok()));
            for id in batch {
                assert!(seen.insert(id), "duplicate id");
            }
        }
        for id in ids.batch(SNOWFLAKE64, 1_000).await.expect("node batch") {
            assert!(seen.insert(id), "duplicate id");
        }
    }
    let local_id = local_a.next().await.expect("next");
    let decoded = ids.decode(SNOWFLAKE64, &local_id).await.expect("decode");
    assert!(decoded
        .fields
        .contains(&("worker".to_owned(), local_a.worker())));

    // Tags in a decimal layout, generated locally.
    let orders = ids.local(ORDER32).await.expect("order32 locally");
    let order = orders
        .next_with(&[("type", 2), ("db", 31), ("table", 9)])
        .await
        .expect("order id");
    assert_eq!(order.len(), 32);
    let parts = ids.decode(ORDER32, &order).await.expect("decode").fields;
    assert!(
        parts.contains(&("db".to_owned(), 31))
            && parts.contains(&("machine".to_owned(), orders.worker()))
    );
    assert!(matches!(
        orders.next_with(&[("db", 100)]).await,
        Err(Error::InvalidArgument { .. })
    ));

    // A released worker id is claimed again by the next generator.
    let freed = local_b.worker();
    drop(local_b);
    let reclaimed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let generator = ids.local(SNOWFLAKE64).await.expect("local generator");
            if generator.worker() == freed {
                return generator;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the freed worker id is claimed again");
    for id in reclaimed.batch(5_000).await.expect("batch") {
        assert!(seen.insert(id), "a reclaimed worker id reissued an id");
    }

    assert!(matches!(
        ids.local("nope").await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        ids.batch(SNOWFLAKE64, 10_001).await,
        Err(Error::InvalidArgument { .. })
    ));
    node.stop().await.expect("stops cleanly");
}
