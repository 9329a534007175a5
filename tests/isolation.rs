//! A finished test leaves nothing on the shared Redis: its server, shut down, has recorded every
//! departure of its sockets' users before the shutdown returns (so nothing is written after it),
//! and its `Backends` then delete every key under the test's prefix.

mod support;

use minichat_core::test_support::redis_keys;
use serde_json::json;
use support::{name, Backend, Backends, TestServer, Ws, SHARED_REDIS_URL};

fn id(v: &serde_json::Value) -> i64 {
    v["id"].as_i64().expect("id")
}

/// The value of `key` on the shared Redis (`None` when absent).
async fn get(key: &str) -> Option<i64> {
    let client = redis::Client::open(SHARED_REDIS_URL).expect("Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers");
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("GET")
}

/// The code of the close frame the server sends, read to the end of the connection (so the
/// client's close reply goes out and the server need not wait for it).
async fn closed(ws: &mut Ws) -> Option<u16> {
    let code = ws.next_close().await.map(|c| u16::from(c.code));
    while ws.next_frame().await.is_some() {}
    code
}

fn unix_millis() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(now.as_millis()).expect("in range")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_test_leaves_no_key_under_its_prefix() {
    let backends = Backends::new(Backend::Shared).await;
    let prefix = backends.redis_prefix.clone();
    let mut server = TestServer::open(&backends).await;
    let alice = id(&server.user(&name("isoa")).await);
    let bob = id(&server.user(&name("isob")).await);
    let mut on_alice = Ws::connect_ready(&server.ws_url(&format!("/ws/{alice}"))).await;
    let mut on_bob = Ws::connect_ready(&server.ws_url(&format!("/ws/{bob}"))).await;
    server.message(alice, bob, "over REST").await;
    assert_eq!(on_bob.next_json().await["content"], "over REST");
    assert_eq!(
        on_alice.next_json().await["content"],
        "over REST",
        "the sender's own copy"
    );
    on_bob
        .send_json(json!({"type": "message", "receiver_id": alice, "content": "over the socket"}))
        .await;
    assert_eq!(on_bob.next_json().await["type"], "ack");
    assert_eq!(on_alice.next_json().await["content"], "over the socket");

    // Both are online on this node, and the test has keys: the check below can fail.
    let keys = redis_keys(SHARED_REDIS_URL, &prefix);
    for user in [alice, bob] {
        for kind in ["online", "seen", "recent"] {
            let key = format!("{prefix}{kind}:{{{user}}}");
            assert!(keys.contains(&key), "{key} in {keys:?}");
        }
    }

    // Shut down with the sockets open: the server closes them (the clients answer the close)
    // and has recorded both departures when it returns.
    let stopping = unix_millis();
    let ((), alice_closed, bob_closed) = tokio::join!(
        server.shutdown(),
        closed(&mut on_alice),
        closed(&mut on_bob)
    );
    assert_eq!((alice_closed, bob_closed), (Some(1001), Some(1001)));
    let keys = redis_keys(SHARED_REDIS_URL, &prefix);
    for user in [alice, bob] {
        let online = format!("{prefix}online:{{{user}}}");
        assert!(!keys.contains(&online), "{online} left behind: {keys:?}");
        let seen = get(&format!("{prefix}seen:{{{user}}}")).await;
        assert!(
            seen.is_some_and(|t| t >= stopping),
            "user {user} last seen at their departure, not before {stopping}: {seen:?}"
        );
    }

    // The test ends: its backends go, and nothing is under its prefix any more.
    drop(server);
    drop(backends);
    let left = redis_keys(SHARED_REDIS_URL, &prefix);
    assert!(left.is_empty(), "keys outlived their test: {left:?}");
}

/// A connection that has sent nothing (a browser's pre-opened one) does not hold up shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_silent_connection() {
    let backends = Backends::new(Backend::Memory).await;
    let mut settings = backends.settings(minichat::server::AuthMode::Off);
    settings.limits.header_read_timeout = std::time::Duration::from_secs(600);
    settings.limits.shutdown_grace = std::time::Duration::from_secs(600);
    let mut server = TestServer::start(settings).await;
    let (status, _) = server.get("/health").await;
    assert_eq!(status, 200);
    let silent = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    // Accepted once a request on another connection is answered after it.
    let (status, _) = server
        .send(
            reqwest::Client::new()
                .get(server.url("/health"))
                .timeout(support::DEADLINE),
        )
        .await;
    assert_eq!(status, 200);
    tokio::time::timeout(support::DEADLINE, server.shutdown())
        .await
        .expect("shutdown without waiting out the 600 s header timeout and grace");
    drop(silent);
}
