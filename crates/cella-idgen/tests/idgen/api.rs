//! The id service over real sockets: gRPC (`cella.idgen.v1.Ids`) and REST (`/v1/ids/...`),
//! bad input refused with the field and rule named and nothing written.

use std::collections::{HashMap, HashSet};

use cella_idgen::IdgenConfig;
use cella_proto::cella::idgen::v1 as idpb;
use tonic::Code;

use crate::support::TestServer;

fn batch(layout: &str, count: u32) -> idpb::BatchRequest {
    idpb::BatchRequest {
        layout: layout.into(),
        count,
        tags: HashMap::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_next_batch_decode_and_segments() {
    let server = TestServer::start(IdgenConfig::default()).await;
    let mut ids = server.ids().await;
    let one = ids
        .next(idpb::NextRequest {
            layout: "snowflake64".into(),
            tags: HashMap::new(),
        })
        .await
        .expect("next")
        .into_inner();
    let many = ids
        .batch(batch("snowflake64", 10_000))
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(many.ids.len(), 10_000);
    assert_eq!(
        many.worker, one.worker,
        "the node holds one worker id per layout"
    );
    let numbers: Vec<u64> = many
        .ids
        .iter()
        .map(|id| id.parse().expect("decimal"))
        .collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "a batch increases");
    assert!(
        one.id.parse::<u64>().expect("decimal") < numbers[0],
        "later ids are larger"
    );

    let order = ids
        .next(idpb::NextRequest {
            layout: "order32".into(),
            tags: HashMap::from([("type".into(), 3), ("db".into(), 41), ("table".into(), 7)]),
        })
        .await
        .expect("order32")
        .into_inner();
    assert_eq!(order.id.len(), 32);
    let decoded = ids
        .decode(idpb::DecodeRequest {
            layout: "order32".into(),
            id: order.id.clone(),
        })
        .await
        .expect("decode")
        .into_inner();
    let parts: HashMap<String, u64> = decoded
        .fields
        .into_iter()
        .map(|f| (f.name, f.value))
        .collect();
    assert_eq!((parts["type"], parts["db"], parts["table"]), (3, 41, 7));
    assert_eq!(parts["machine"], order.worker);

    let first = ids
        .segment_next(idpb::SegmentNextRequest {
            tag: "invoices".into(),
            count: 5,
        })
        .await
        .expect("segment")
        .into_inner();
    assert_eq!(first.ids, [1, 2, 3, 4, 5]);
    let layouts = ids
        .list_layouts(idpb::ListLayoutsRequest {})
        .await
        .expect("list")
        .into_inner();
    let names: Vec<_> = layouts.layouts.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["order32", "snowflake64"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_hold_different_worker_ids_and_never_collide() {
    let a = TestServer::start(IdgenConfig::default()).await;
    let b = a.beside().await;
    let (mut ca, mut cb) = (a.ids().await, b.ids().await);
    let mut seen = HashSet::new();
    let mut workers = HashSet::new();
    for _ in 0..5 {
        for client in [&mut ca, &mut cb] {
            let resp = client
                .batch(batch("snowflake64", 2_000))
                .await
                .expect("batch")
                .into_inner();
            workers.insert(resp.worker);
            for id in resp.ids {
                assert!(seen.insert(id), "duplicate across nodes");
            }
        }
        for client in [&mut ca, &mut cb] {
            let resp = client
                .segment_next(idpb::SegmentNextRequest {
                    tag: "orders".into(),
                    count: 300,
                })
                .await
                .expect("segment")
                .into_inner();
            for id in resp.ids {
                assert!(
                    seen.insert(format!("segment {id}")),
                    "segment id {id} twice"
                );
            }
        }
    }
    assert_eq!(workers.len(), 2, "each node claimed its own worker id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_over_grpc_and_changes_nothing() {
    let server = TestServer::start(IdgenConfig::default()).await;
    let mut ids = server.ids().await;
    let cases: Vec<(tonic::Status, Code, &str)> = vec![
        (
            ids.batch(batch("nope", 1)).await.unwrap_err(),
            Code::NotFound,
            "field `layout`",
        ),
        (
            ids.batch(batch("snowflake64", 0)).await.unwrap_err(),
            Code::InvalidArgument,
            "field `count`",
        ),
        (
            ids.batch(batch("snowflake64", 10_001)).await.unwrap_err(),
            Code::InvalidArgument,
            "between 1 and 10000",
        ),
        (
            ids.next(idpb::NextRequest {
                layout: "order32".into(),
                tags: HashMap::from([("type".into(), 100)]),
            })
            .await
            .unwrap_err(),
            Code::InvalidArgument,
            "field `type` is 100",
        ),
        (
            ids.next(idpb::NextRequest {
                layout: "order32".into(),
                tags: HashMap::from([("machine".into(), 1)]),
            })
            .await
            .unwrap_err(),
            Code::InvalidArgument,
            "only tag fields",
        ),
        (
            ids.decode(idpb::DecodeRequest {
                layout: "snowflake64".into(),
                id: "12x".into(),
            })
            .await
            .unwrap_err(),
            Code::InvalidArgument,
            "field `id`",
        ),
        (
            ids.decode(idpb::DecodeRequest {
                layout: "snowflake64".into(),
                id: "9223372036854775808".into(),
            })
            .await
            .unwrap_err(),
            Code::InvalidArgument,
            "below",
        ),
        (
            ids.segment_next(idpb::SegmentNextRequest {
                tag: "Bad Tag".into(),
                count: 1,
            })
            .await
            .unwrap_err(),
            Code::InvalidArgument,
            "field `tag`",
        ),
        (
            ids.segment_next(idpb::SegmentNextRequest {
                tag: "ok".into(),
                count: 20_000,
            })
            .await
            .unwrap_err(),
            Code::InvalidArgument,
            "field `count`",
        ),
    ];
    for (status, code, text) in cases {
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(text),
            "{:?} lacks {text:?}",
            status.message()
        );
    }
    assert_eq!(
        server.idgen_keys().await,
        0,
        "refused requests wrote nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_routes_answer_json_and_map_errors() {
    let server = TestServer::start(IdgenConfig::default()).await;
    let (status, body) = server
        .rest(
            "POST",
            "/v1/ids/batch",
            r#"{"layout":"order32","count":3,"tags":{"db":"5"}}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let ids = body["ids"].as_array().expect("ids");
    assert_eq!(ids.len(), 3);
    let id = ids[0].as_str().expect("text");
    let (status, decoded) = server
        .rest(
            "POST",
            "/v1/ids/decode",
            &format!(r#"{{"layout":"order32","id":"{id}"}}"#),
        )
        .await;
    assert_eq!(status, 200, "{decoded}");
    assert!(decoded["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .any(|f| f["name"] == "db" && f["value"] == "5"));
    let (status, next) = server
        .rest("POST", "/v1/ids/next", r#"{"layout":"snowflake64"}"#)
        .await;
    assert_eq!(status, 200, "{next}");
    let (status, seg) = server
        .rest("POST", "/v1/ids/segments/next", r#"{"tag":"t1","count":2}"#)
        .await;
    assert_eq!(
        (status, seg["ids"].clone()),
        (200, serde_json::json!(["1", "2"]))
    );
    let (status, layouts) = server.rest("GET", "/v1/ids/layouts", "").await;
    assert_eq!(status, 200);
    assert_eq!(layouts["layouts"].as_array().map(Vec::len), Some(2));

    let keys_before = server.idgen_keys().await;
    let bad = [
        (
            r#"{"layout":"nope","count":1}"#,
            "/v1/ids/batch",
            404,
            "field `layout`",
        ),
        (
            r#"{"layout":"snowflake64","count":10001}"#,
            "/v1/ids/batch",
            400,
            "field `count`",
        ),
        (
            r#"{"layout":"snowflake64","id":"abc"}"#,
            "/v1/ids/decode",
            400,
            "field `id`",
        ),
        (
            r#"{"layout":"snowflake64","count":"many"}"#,
            "/v1/ids/batch",
            400,
            "JSON form",
        ),
        (
            r#"{"tag":"","count":1}"#,
            "/v1/ids/segments/next",
            400,
            "field `tag`",
        ),
    ];
    for (body, path, want, text) in bad {
        let (status, error) = server.rest("POST", path, body).await;
        assert_eq!(status, want, "{path} {body}: {error}");
        let message = error["message"].as_str().expect("message");
        assert!(message.contains(text), "{message:?} lacks {text:?}");
        assert!(error["code"].as_i64().is_some() && error["error"].is_string());
    }
    assert_eq!(
        server.idgen_keys().await,
        keys_before,
        "refused requests wrote nothing"
    );
}
