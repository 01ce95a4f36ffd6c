//! The client RPC stack against real upstreams on 127.0.0.1 (tonic and HTTP servers from
//! `cella_testkit::upstream`), and, with a real `cella up`, discovery from the registry and
//! the register-after-ready / deregister-before-drain lifecycle.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cella_base::SystemClock;
use cella_sdk::registry::service_name;
use cella_sdk::rpc::{
    self, headers, BalancePolicy, Context, EjectionPolicy, GrpcChannel, GrpcConnect, HttpConnect,
    HttpConnection, RetryBudget, RpcSettings, RpcStack, ServeOptions,
};
use cella_testkit::upstream::{echo, EchoRequest, Upstream};
use cella_testkit::{Node, NodeOptions};
use tower::ServiceExt;

fn grpc_channel(upstreams: &[&Upstream], settings: &RpcSettings) -> GrpcChannel {
    let instances: Vec<_> = upstreams.iter().map(|u| u.instance()).collect();
    let discover = rpc::fixed(&instances, &GrpcConnect).expect("valid instances");
    let stack = rpc::stack("test", discover, settings, Arc::new(SystemClock::new()))
        .expect("valid settings");
    GrpcChannel::new(stack)
}

fn http_stack(upstreams: &[&Upstream], settings: &RpcSettings) -> RpcStack<HttpConnection> {
    let instances: Vec<_> = upstreams.iter().map(|u| u.instance()).collect();
    let discover = rpc::fixed(&instances, &HttpConnect).expect("valid instances");
    rpc::stack("test", discover, settings, Arc::new(SystemClock::new())).expect("valid settings")
}

fn request(text: &str) -> tonic::Request<EchoRequest> {
    tonic::Request::new(EchoRequest { text: text.into() })
}

async fn http_call(stack: &RpcStack<HttpConnection>, method: &str, path: &str) -> u16 {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .body(Bytes::from_static(b"payload"))
        .expect("valid request");
    match stack.clone().oneshot(request).await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 * p).ceil() as usize).saturating_sub(1)]
}

/// Sends `calls` echo calls, `concurrency` at a time; returns each call's latency.
async fn run_calls(channel: &GrpcChannel, calls: usize, concurrency: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls / concurrency {
        let batch = (0..concurrency).map(|_| {
            let channel = channel.clone();
            async move {
                let start = Instant::now();
                echo(channel, request("hi")).await.expect("echo succeeds");
                start.elapsed()
            }
        });
        latencies.extend(futures::future::join_all(batch).await);
    }
    latencies
}

#[tokio::test]
async fn the_balancer_steers_away_from_a_slow_instance() {
    // Far above a loaded machine's scheduling noise, so "slow" is unambiguous.
    const SLOW: Duration = Duration::from_millis(200);
    let fast_a = Upstream::grpc("fast-a").await.unwrap();
    let fast_b = Upstream::grpc("fast-b").await.unwrap();
    let slow = Upstream::grpc("slow").await.unwrap();
    slow.set_delay(SLOW);
    let upstreams = [&fast_a, &fast_b, &slow];

    let channel = grpc_channel(&upstreams, &RpcSettings::default());
    let mut latencies = run_calls(&channel, 400, 4).await;
    let p99 = percentile(&mut latencies, 0.99);
    let slow_share = slow.hits() as f64 / 400.0;
    assert!(
        slow_share < 0.02,
        "the slow instance got {:.1} % of calls",
        slow_share * 100.0
    );
    assert!(
        p99 < SLOW / 2,
        "p99 {p99:?} is not near the fast instances' (slow one answers in {SLOW:?})"
    );

    // The same calls round robin: the slow instance gets its third, and the p99 shows it.
    let before = slow.hits();
    let settings = RpcSettings {
        policy: BalancePolicy::RoundRobin,
        ..RpcSettings::default()
    };
    let channel = grpc_channel(&upstreams, &settings);
    let mut latencies = run_calls(&channel, 60, 4).await;
    assert!(
        slow.hits() - before >= 15,
        "round robin sent {} of 60",
        slow.hits() - before
    );
    assert!(percentile(&mut latencies, 0.99) >= SLOW);
}

#[tokio::test]
async fn a_failing_instance_is_ejected() {
    let a = Upstream::http("a").await.unwrap();
    let b = Upstream::http("b").await.unwrap();
    let failing = Upstream::http("failing").await.unwrap();
    failing.set_failing(true);
    let settings = RpcSettings {
        ejection: EjectionPolicy {
            consecutive_failures: 3,
            base: Duration::from_secs(60),
            max: Duration::from_secs(60),
        },
        policy: BalancePolicy::RoundRobin,
        ..RpcSettings::default()
    };
    let stack = http_stack(&[&a, &b, &failing], &settings);
    // Idempotent calls: a failed try is retried on another instance.
    for i in 0..60 {
        assert_eq!(http_call(&stack, "GET", &format!("/item/{i}")).await, 200);
    }
    assert_eq!(
        failing.hits(),
        3,
        "ejected after its third failure in a row"
    );
    // Once ejected it takes nothing, so non-idempotent calls succeed too.
    for i in 0..30 {
        assert_eq!(http_call(&stack, "POST", &format!("/buy/{i}")).await, 200);
    }
    assert_eq!(failing.hits(), 3);
    assert_eq!(a.hits() + b.hits(), 90);
}

#[tokio::test]
async fn an_endpoint_nobody_listens_on_is_unavailable_naming_its_address() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let instance = cella_sdk::registry::pb::Instance {
        id: "gone".into(),
        ip: "127.0.0.1".into(),
        port: u32::from(port),
        healthy: true,
        ..Default::default()
    };
    let discover = rpc::fixed(&[instance], &GrpcConnect).expect("valid instance");
    let stack = rpc::stack(
        "test",
        discover,
        &RpcSettings::default(),
        Arc::new(SystemClock::new()),
    )
    .expect("valid settings");
    let status = echo(GrpcChannel::new(stack), request("x"))
        .await
        .expect_err("nobody listens");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains(&format!("127.0.0.1:{port}")),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn an_ejected_instance_is_readmitted_after_its_backoff() {
    let good = Upstream::http("good").await.unwrap();
    let flaky = Upstream::http("flaky").await.unwrap();
    flaky.set_failing(true);
    let settings = RpcSettings {
        ejection: EjectionPolicy {
            consecutive_failures: 2,
            base: Duration::from_millis(300),
            max: Duration::from_secs(10),
        },
        policy: BalancePolicy::RoundRobin,
        ..RpcSettings::default()
    };
    let stack = http_stack(&[&good, &flaky], &settings);
    for _ in 0..10 {
        http_call(&stack, "GET", "/").await;
    }
    let ejected_at = flaky.hits();
    assert_eq!(ejected_at, 2);
    flaky.set_failing(false);
    // Bounded wait: once the backoff ends, flaky takes calls again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while flaky.hits() == ejected_at && Instant::now() < deadline {
        assert_eq!(http_call(&stack, "GET", "/").await, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(flaky.hits() > ejected_at, "never re-admitted");
}

#[tokio::test]
async fn retries_only_idempotent_calls_and_within_the_budget() {
    let down = Upstream::http("down").await.unwrap();
    down.set_failing(true);
    let no_ejection = EjectionPolicy {
        consecutive_failures: 0,
        ..EjectionPolicy::default()
    };
    // A budget of 5 retries (1 a second over 5 s, no successes to earn more).
    let tight = RpcSettings {
        ejection: no_ejection,
        max_attempts: 3,
        retry_budget: RetryBudget {
            ttl: Duration::from_secs(5),
            min_per_second: 1,
            ratio: 1.0,
        },
        ..RpcSettings::default()
    };
    let stack = http_stack(&[&down], &tight);
    for _ in 0..10 {
        assert_eq!(http_call(&stack, "POST", "/order").await, 503);
    }
    assert_eq!(down.hits(), 10, "POST is never retried");
    for _ in 0..10 {
        assert_eq!(http_call(&stack, "GET", "/order").await, 503);
    }
    assert_eq!(
        down.hits(),
        10 + 10 + 5,
        "GET retried until the budget ran out"
    );

    // A roomy budget: every GET gets its three tries.
    let roomy = RpcSettings {
        retry_budget: RetryBudget {
            ttl: Duration::from_secs(10),
            min_per_second: 1000,
            ratio: 1.0,
        },
        ..tight
    };
    let stack = http_stack(&[&down], &roomy);
    let before = down.hits();
    for _ in 0..10 {
        http_call(&stack, "GET", "/order").await;
    }
    assert_eq!(down.hits() - before, 30);

    // gRPC: retried only when marked idempotent (by path or per call).
    let grpc_down = Upstream::grpc("grpc-down").await.unwrap();
    grpc_down.set_failing(true);
    let channel = grpc_channel(&[&grpc_down], &roomy);
    let status = echo(channel.clone(), request("x"))
        .await
        .expect_err("fails");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(grpc_down.hits(), 1);
    let mut marked = request("x");
    marked.extensions_mut().insert(rpc::Idempotent);
    echo(channel, marked).await.expect_err("fails");
    assert_eq!(grpc_down.hits(), 1 + 3);
}

fn grpc_timeout_of(reply: &cella_testkit::upstream::EchoReply) -> Duration {
    let (digits, unit) = reply.grpc_timeout.split_at(reply.grpc_timeout.len() - 1);
    let value: u64 = digits.parse().expect("digits");
    match unit {
        "u" => Duration::from_micros(value),
        "m" => Duration::from_millis(value),
        "S" => Duration::from_secs(value),
        other => panic!("unexpected unit {other}"),
    }
}

#[tokio::test]
async fn deadlines_propagate_and_end_calls() {
    let upstream = Upstream::grpc("deadline").await.unwrap();
    let settings = RpcSettings {
        timeout: Some(Duration::from_secs(5)),
        ..RpcSettings::default()
    };
    let channel = grpc_channel(&[&upstream], &settings);

    // The context's deadline is sooner than the per-call timeout: it travels.
    let mut call = request("hi");
    call.extensions_mut()
        .insert(Context::new().with_timeout(Duration::from_millis(300)));
    let reply = echo(channel.clone(), call).await.unwrap();
    let left = grpc_timeout_of(&reply);
    assert!(
        left <= Duration::from_millis(300) && !left.is_zero(),
        "{left:?}"
    );

    // No context deadline: nothing travels; the per-call timeout guards the caller alone.
    let reply = echo(channel.clone(), request("hi")).await.unwrap();
    assert_eq!(reply.grpc_timeout, "", "the per-call timeout is not sent");

    // A server slower than the deadline: the call ends with DEADLINE_EXCEEDED.
    upstream.set_delay(Duration::from_millis(500));
    let mut call = request("hi");
    call.extensions_mut()
        .insert(Context::new().with_timeout(Duration::from_millis(100)));
    let status = echo(channel, call).await.expect_err("deadline passes");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status}");

    // Slower than the per-call timeout, which the server never hears of: the caller ends
    // the call itself.
    let guarded = grpc_channel(
        &[&upstream],
        &RpcSettings {
            timeout: Some(Duration::from_millis(100)),
            ..RpcSettings::default()
        },
    );
    let status = echo(guarded, request("hi"))
        .await
        .expect_err("the timeout passes");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status}");
}

#[tokio::test]
async fn context_headers_arrive_at_the_server() {
    let upstream = Upstream::grpc("context").await.unwrap();
    let channel = grpc_channel(&[&upstream], &RpcSettings::default());
    let mut context = Context::new().with_routing_key("user-42");
    context.xid = Some("tx-7".into());
    context.route.cell = Some("cell-a".into());
    context.route.route_version = Some(9);
    context.lane = Some("canary".into());
    context.fault = Some("latency".into());
    let mut call = request("hi");
    call.extensions_mut().insert(context.clone());
    echo(channel.clone(), call).await.unwrap();
    let seen = upstream.last_headers().expect("a call arrived");
    let get = |name: &str| {
        seen.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(get(headers::REQUEST_ID), Some(context.request_id.clone()));
    assert_eq!(get(headers::TRACEPARENT), Some(context.traceparent.clone()));
    assert_eq!(get(headers::XID).as_deref(), Some("tx-7"));
    assert_eq!(get(headers::CELL).as_deref(), Some("cell-a"));
    assert_eq!(get(headers::ROUTING_KEY).as_deref(), Some("user-42"));
    assert_eq!(get(headers::ROUTE_VERSION).as_deref(), Some("9"));
    assert_eq!(get(headers::LANE).as_deref(), Some("canary"));
    assert_eq!(get(headers::FAULT).as_deref(), Some("latency"));
    let server_side = Context::from_headers(&seen);
    assert_eq!(server_side.trace_id(), context.trace_id());

    // Without a context, each call still gets a request id and a trace.
    echo(channel, request("bare")).await.unwrap();
    let seen = upstream.last_headers().expect("a call arrived");
    assert!(seen.contains_key(headers::REQUEST_ID) && seen.contains_key(headers::TRACEPARENT));
    assert!(!seen.contains_key(headers::XID));
}

#[tokio::test]
async fn consistent_hash_keeps_a_key_on_one_instance() {
    let ups = [
        Upstream::grpc("h0").await.unwrap(),
        Upstream::grpc("h1").await.unwrap(),
        Upstream::grpc("h2").await.unwrap(),
    ];
    let settings = RpcSettings {
        policy: BalancePolicy::ConsistentHash,
        ..RpcSettings::default()
    };
    let channel = grpc_channel(&[&ups[0], &ups[1], &ups[2]], &settings);
    let mut owners: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for user in 0..30 {
            let key = format!("user-{user}");
            let mut call = request("hi");
            call.extensions_mut()
                .insert(Context::new().with_routing_key(key.clone()));
            let reply = echo(channel.clone(), call).await.unwrap();
            let owner = owners.entry(key.clone()).or_insert(reply.upstream.clone());
            assert_eq!(*owner, reply.upstream, "{key} moved in round {round}");
        }
    }
    let distinct: std::collections::HashSet<_> = owners.values().collect();
    assert_eq!(distinct.len(), 3, "keys spread over every instance");
}

#[tokio::test]
async fn the_rate_limit_turns_calls_away() {
    let upstream = Upstream::grpc("limited").await.unwrap();
    let settings = RpcSettings {
        rate_limit: Some((1.0, 3)),
        ..RpcSettings::default()
    };
    let channel = grpc_channel(&[&upstream], &settings);
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        outcomes.push(
            echo(channel.clone(), request("hi"))
                .await
                .map(|_| ())
                .map_err(|s| s.code()),
        );
    }
    // The burst passes; right after it (well within the second that refills one token)
    // the next call is turned away without reaching the server.
    assert_eq!(outcomes[..3], [Ok(()), Ok(()), Ok(())]);
    assert_eq!(outcomes[3], Err(tonic::Code::ResourceExhausted));
    let passed = outcomes.iter().filter(|o| o.is_ok()).count() as u64;
    assert_eq!(upstream.hits(), passed);
}

#[test]
fn bad_settings_are_refused_naming_the_field() {
    let settings = RpcSettings {
        retry_budget: RetryBudget {
            ttl: Duration::from_millis(10),
            ..RetryBudget::default()
        },
        ..RpcSettings::default()
    };
    let error = settings.validate().expect_err("ttl too short");
    assert!(error.to_string().contains("retry_budget.ttl"), "{error}");
    let settings = RpcSettings {
        max_attempts: 0,
        ..RpcSettings::default()
    };
    assert!(settings
        .validate()
        .expect_err("zero")
        .to_string()
        .contains("max_attempts"));
}

async fn start_node() -> Node {
    let mut node = Node::embedded(NodeOptions::default()).expect("start cella up");
    node.wait_ready(Duration::from_secs(30))
        .await
        .expect("node ready");
    node
}

#[tokio::test]
async fn discovery_follows_the_registry() {
    let node = start_node().await;
    let client = cella_sdk::Client::connect(&node.endpoint()).await.unwrap();
    let registry = client.registry();
    let a = Upstream::http("a").await.unwrap();
    let b = Upstream::http("b").await.unwrap();
    let reg_a = registry
        .register(service_name("shop"), a.instance())
        .await
        .unwrap();
    let reg_b = registry
        .register(service_name("shop"), b.instance())
        .await
        .unwrap();
    let settings = RpcSettings {
        policy: BalancePolicy::RoundRobin,
        ..RpcSettings::default()
    };
    let stack = rpc::http_stack(&registry, "shop", settings).await.unwrap();
    for _ in 0..10 {
        assert_eq!(http_call(&stack, "GET", "/").await, 200);
    }
    assert!(a.hits() > 0 && b.hits() > 0, "both instances discovered");

    // b leaves: within a bounded wait calls stop reaching it.
    reg_b.deregister().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = b.hits();
        for _ in 0..6 {
            assert_eq!(http_call(&stack, "GET", "/").await, 200);
        }
        if b.hits() == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b still gets calls after deregistering"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last instance leaves: calls fail with a clear error.
    reg_a.deregister().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_call(&stack, "GET", "/").await != 0 {
        assert!(
            Instant::now() < deadline,
            "a still gets calls after deregistering"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let request = http::Request::builder()
        .uri("/")
        .body(Bytes::new())
        .unwrap();
    let error = stack
        .clone()
        .oneshot(request)
        .await
        .expect_err("no endpoints");
    assert!(error.to_string().contains("no endpoint of shop"), "{error}");
}

#[tokio::test]
async fn a_server_registers_when_ready_and_deregisters_before_draining() {
    let node = start_node().await;
    let client = cella_sdk::Client::connect(&node.endpoint()).await.unwrap();
    let registry = client.registry();
    let mut watch = registry.subscribe(service_name("lifecycle")).await.unwrap();
    watch.next().await.unwrap();
    assert!(watch.instances().is_empty());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let instance = cella_sdk::registry::pb::Instance {
        ip: "127.0.0.1".into(),
        port: u32::from(port),
        ..Default::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let options = ServeOptions {
        ready_timeout: Duration::from_secs(10),
        drain_grace: Duration::from_millis(300),
    };
    let registry_for_server = registry.clone();
    let lifecycle = tokio::spawn(async move {
        rpc::serve_registered(
            &registry_for_server,
            "lifecycle",
            instance,
            options,
            move |drain| async move {
                let app = accept_and_close(listener);
                tokio::select! {
                    () = drain => {}
                    () = app => {}
                }
                let _ = drained_tx.send(());
                Ok::<(), std::io::Error>(())
            },
            async {
                let _ = stop_rx.await;
            },
        )
        .await
    });

    // Registered once it accepts connections.
    tokio::time::timeout(Duration::from_secs(10), async {
        while watch.instances().is_empty() {
            watch.next().await.unwrap();
        }
    })
    .await
    .expect("registered");
    let (_, registered) = watch.instances().iter().next().unwrap();
    assert_eq!(registered.port, u32::from(port));
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok());

    // Shutdown: the removal reaches subscribers while the server still serves.
    stop_tx.send(()).unwrap();
    let mut drained_rx = drained_rx;
    tokio::time::timeout(Duration::from_secs(10), async {
        while !watch.instances().is_empty() {
            watch.next().await.unwrap();
        }
    })
    .await
    .expect("deregistered");
    assert!(
        drained_rx.try_recv().is_err(),
        "drained before deregistering"
    );
    lifecycle.await.unwrap().unwrap();
    assert!(drained_rx.try_recv().is_ok());
}

/// A server that accepts and closes connections until dropped.
async fn accept_and_close(listener: tokio::net::TcpListener) {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    }
}

#[tokio::test]
async fn discovery_recovers_after_the_registry_node_restarts() {
    let mut node = start_node().await;
    let client = cella_sdk::Client::connect(&node.endpoint()).await.unwrap();
    let registry = client.registry();
    let old = Upstream::grpc("old").await.unwrap();
    let _old = registry
        .register(service_name("inventory"), old.instance())
        .await
        .unwrap();
    let channel = rpc::grpc_channel(&registry, "inventory", RpcSettings::default())
        .await
        .unwrap();
    assert_eq!(
        echo(channel.clone(), request("a")).await.unwrap().upstream,
        "old"
    );

    // The registry node dies: calls keep going to the last known endpoint meanwhile.
    node.kill9().unwrap();
    for _ in 0..5 {
        let reply = echo(channel.clone(), request("b")).await;
        assert_eq!(reply.expect("served from the last set").upstream, "old");
    }

    // It comes back (ephemeral instances are gone with it); a new instance registers. The
    // stack subscribes again and, within a bounded wait, calls reach the new instance.
    node.restart().unwrap();
    node.wait_ready(Duration::from_secs(30)).await.unwrap();
    let new = Upstream::grpc("new").await.unwrap();
    let _new = registry
        .register(service_name("inventory"), new.instance())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = echo(channel.clone(), request("c")).await;
        if matches!(&reply, Ok(r) if r.upstream == "new") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "calls never reached the instance registered after the restart (last: {reply:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
