//! Several nodes acting as one, and what survives: two servers sharing PostgreSQL and Redis,
//! a restart on the same database, a Redis outage, and shutdown.

mod support;

use minichat_core::test_support::ThrowawayRedis;
use std::time::Duration;
use support::{eventually, name, Backend, Backends, TestServer, Ws};

fn id(v: &serde_json::Value) -> i64 {
    v["id"].as_i64().expect("id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_posted_on_one_node_reaches_sockets_on_both_exactly_once() {
    let backends = Backends::new(Backend::Shared).await;
    let node_a = TestServer::open(&backends).await;
    let node_b = TestServer::open(&backends).await;
    let alice = id(&node_a.user(&name("alice")).await);
    let bob = id(&node_b.user(&name("bob")).await);

    // Bob is connected only on node B: a send on node A still reaches him and says so.
    let mut bob_on_b = Ws::connect_ready(&node_b.ws_url(&format!("/ws/{bob}"))).await;
    let first = node_a.message(alice, bob, "across nodes").await;
    assert_eq!(first["delivered_via_websocket"], true);
    assert_eq!(bob_on_b.next_json().await["id"], first["id"]);

    // Now also on node A: each of his sockets gets each message exactly once.
    let mut bob_on_a = Ws::connect_ready(&node_a.ws_url(&format!("/ws/{bob}"))).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(node_a.message(alice, bob, &format!("m{i}")).await["id"].clone());
    }
    let marker = node_b.message(alice, bob, "marker").await["id"].clone();
    sent.push(marker);
    for ws in [&mut bob_on_b, &mut bob_on_a] {
        for expected in &sent {
            let frame = ws.next_json().await;
            assert_eq!(&frame["id"], expected, "in order, no duplicate, no gap");
        }
    }
    bob_on_a.assert_no_pending_message().await;

    // A user connected nowhere: not delivered.
    let carol = id(&node_a.user(&name("carol")).await);
    let offline = node_b.message(alice, carol, "nobody home").await;
    assert_eq!(offline["delivered_via_websocket"], false);

    // Both nodes read the same storage.
    let (_, on_a) = node_a.get(&format!("/messages/?user_id={bob}")).await;
    let (_, on_b) = node_b.get(&format!("/messages/?user_id={bob}")).await;
    assert_eq!(on_a, on_b);
    assert_eq!(on_a.as_array().unwrap().len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_messages_survive_a_restart() {
    let backends = Backends::new(Backend::Shared).await;
    let mut first = TestServer::open(&backends).await;
    let a = first.user(&name("dura")).await;
    let b = first.user(&name("durb")).await;
    let m = first.message(id(&a), id(&b), "still here?").await;
    first.shutdown().await;

    let second = TestServer::open(&backends).await;
    let (status, user) = second.get(&format!("/users/{}", id(&a))).await;
    assert_eq!(status, 200);
    for field in ["id", "username", "display_name", "created_at"] {
        assert_eq!(user[field], a[field], "{field}");
    }
    let (_, history) = second.get(&format!("/messages/?user_id={}", id(&b))).await;
    assert_eq!(history[0]["id"], m["id"]);
    assert_eq!(history[0]["content"], "still here?");
    // Seqs continue where they were.
    let mut ws = Ws::connect_ready(&second.ws_url(&format!("/ws/{}", id(&b)))).await;
    second.message(id(&a), id(&b), "after restart").await;
    assert_eq!(ws.next_json().await["seq"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_survive_a_redis_outage_and_cross_node_delivery_resumes() {
    let mut redis = ThrowawayRedis::start().await;
    let backends = Backends::new(Backend::Shared).await;
    let settings = || {
        let mut s = backends.settings(minichat::server::AuthMode::Off);
        s.chat.redis_url = Some(redis.url());
        s
    };
    let node_a = TestServer::start(settings()).await;
    let node_b = TestServer::start(settings()).await;
    let alice = id(&node_a.user(&name("alice")).await);
    let bob = id(&node_a.user(&name("bob")).await);
    let mut bob_on_b = Ws::connect_ready(&node_b.ws_url(&format!("/ws/{bob}"))).await;
    let before = node_a.message(alice, bob, "before").await;
    assert_eq!(bob_on_b.next_json().await["id"], before["id"]);

    redis.kill();
    // Sends still succeed (storage is the source of truth) and health names what is down.
    let during = node_a.message(alice, bob, "during").await;
    assert!(id(&during) > id(&before));
    let (status, health) = node_a.get("/health").await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "ERROR");
    assert_eq!(health["redis"], "unavailable");
    assert_eq!(health["database"], "OK");
    // Recent messages fall back to storage.
    let (status, recent) = node_a.get(&format!("/messages/recent/{bob}")).await;
    assert_eq!(status, 200);
    assert_eq!(recent["messages"][0]["id"], during["id"]);

    redis.restart().await;
    // Delivery across nodes comes back by itself: keep sending until one arrives.
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    let resumed = 'resume: loop {
        assert!(
            tokio::time::Instant::now() < until,
            "cross-node delivery did not resume"
        );
        let m = node_a.message(alice, bob, "after").await;
        while let Ok(frame) =
            tokio::time::timeout(Duration::from_millis(500), bob_on_b.next_json()).await
        {
            if frame["id"] == m["id"] {
                break 'resume frame;
            }
        }
    };
    assert_eq!(resumed["content"], "after");
    let (status, _) = eventually(Duration::from_secs(10), "health OK", || async {
        let (status, body) = node_a.get("/health").await;
        (status == 200).then_some((status, body))
    })
    .await;
    assert_eq!(status, 200);
    // What was sent during the outage is recovered from storage with `since`.
    let mut resumed_ws = Ws::connect_ready(&node_b.ws_url(&format!("/ws/{bob}?since=1"))).await;
    assert_eq!(resumed_ws.next_json().await["id"], during["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recent_list_that_missed_a_push_is_not_trusted_after_redis_returns() {
    // A node whose link to Redis the test cuts: Redis keeps its lists, but the node's push for
    // a message sent meanwhile fails, leaving a hole in the receiver's cached list.
    let backends = Backends::new(Backend::Shared).await;
    let proxy = support::TcpProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let mut settings = backends.settings(minichat::server::AuthMode::Off);
    settings.limits.send_rate_per_sec = 10_000;
    settings.limits.send_burst = 10_000;
    settings.chat.redis_url = Some(proxy.url("redis"));
    let node = TestServer::start(settings).await;
    let alice = id(&node.user(&name("alice")).await);
    let bob = id(&node.user(&name("bob")).await);
    for i in 0..60 {
        node.message(alice, bob, &format!("warm {i}")).await;
    }
    proxy.cut();
    let missed = node
        .message(alice, bob, "sent while the cache was away")
        .await;
    proxy.restore();
    eventually(
        Duration::from_secs(20),
        "Redis to be back for the node",
        || async {
            let (status, _) = node.get("/health").await;
            (status == 200).then_some(())
        },
    )
    .await;
    let (status, recent) = node.get(&format!("/messages/recent/{bob}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        recent["messages"][0]["id"], missed["id"],
        "the newest message is not hidden"
    );
    assert_eq!(recent["messages"].as_array().unwrap().len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sockets_with_1001() {
    let backends = Backends::new(Backend::Memory).await;
    let mut server = TestServer::open(&backends).await;
    let u = id(&server.user(&name("bye")).await);
    let mut ws = Ws::connect_ready(&server.ws_url(&format!("/ws/{u}"))).await;
    let stop = server.shutdown();
    let close = async { ws.next_close().await };
    let ((), close) = tokio::join!(stop, close);
    let close = close.expect("close frame");
    assert_eq!(u16::from(close.code), 1001);
}

#[tokio::test]
async fn an_unreachable_backend_stops_start_with_a_clear_error() {
    let port = minichat_core::test_support::free_port();
    let mut settings = minichat::server::Settings {
        bind: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    settings.chat.database_url = Some(format!("postgresql://postgres@127.0.0.1:{port}/nothing"));
    let err = minichat::server::Server::bind(settings.clone())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().starts_with("DATABASE_URL:"), "{err}");

    settings.chat.database_url = None;
    settings.chat.redis_url = Some(format!("redis://127.0.0.1:{port}"));
    let err = minichat::server::Server::bind(settings.clone())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().starts_with("REDIS_URL:"), "{err}");

    settings.chat.redis_url = Some("not a url".into());
    let err = minichat::server::Server::bind(settings)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().starts_with("REDIS_URL:"), "{err}");
}
