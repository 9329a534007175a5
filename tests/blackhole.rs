//! Black-holed backends: a PostgreSQL or a Redis that keeps its connections open but stops
//! answering (a partition, a frozen host) must not hang requests. Each test puts a TCP proxy of
//! its own in front of its backend, runs the server on a short backend budget, holds every byte
//! at the proxy, and checks that every request is answered within the budget (503 where the
//! backend is needed, 200 where it is best effort), that `/health` says so within its own
//! budget, and that after the proxy forwards again requests succeed and nothing is half-written.

mod support;

use futures_util::future::join_all;
use minichat::server::{AuthMode, Settings};
use minichat_core::test_support::{unique_redis_prefix, TestDatabase, ThrowawayRedis};
use minichat_core::ChatConfig;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{eventually, name, TcpProxy, TestServer, Ws, DEADLINE};

/// The backend budget the server runs on in these tests.
const BUDGET: Duration = Duration::from_millis(1000);
/// The most any request may take while a backend is held: the budget, with generous slack for a
/// loaded machine.
const REQUEST_BOUND: Duration = Duration::from_millis(3000);
/// The most `/health` may take: its own 1 s check budget, with slack.
const HEALTH_BOUND: Duration = Duration::from_millis(2500);
/// Concurrent requests of each kind while held.
const N: usize = 20;

fn settings(chat: ChatConfig) -> Settings {
    Settings {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        auth: AuthMode::Off,
        chat: ChatConfig {
            backend_timeout: BUDGET,
            database_pool_size: 4,
            ..chat
        },
        ..Settings::default()
    }
}

/// A throw-away Redis, a proxy of this test's in front of it, and a server (memory storage) on
/// the proxy: the test holds the proxy to black-hole Redis.
async fn server_on_proxied_redis() -> (ThrowawayRedis, TcpProxy, TestServer) {
    let redis = ThrowawayRedis::start().await;
    let proxy = TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port()))).await;
    let server = TestServer::start(settings(ChatConfig {
        redis_url: Some(proxy.url("redis")),
        redis_prefix: unique_redis_prefix(),
        ..ChatConfig::default()
    }))
    .await;
    (redis, proxy, server)
}

/// `(status, body, how long it took)` of a request.
async fn timed(server: &TestServer, request: reqwest::RequestBuilder) -> (u16, Value, Duration) {
    let started = Instant::now();
    let (status, body) = server.send(request).await;
    (status, body, started.elapsed())
}

fn send_request(server: &TestServer, from: i64, to: i64, content: &str) -> reqwest::RequestBuilder {
    server.http.post(server.url("/messages/")).json(&json!({
        "sender_id": from,
        "receiver_id": to,
        "content": content,
        "client_id": content,
    }))
}

/// `/health` within [`HEALTH_BOUND`]; its status and body.
async fn health(server: &TestServer) -> (u16, Value) {
    let (status, body, took) = timed(server, server.http.get(server.url("/health"))).await;
    assert!(took <= HEALTH_BOUND, "/health took {took:?}: {body}");
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_black_holed_postgresql_answers_503_within_the_budget_and_recovers() {
    let db = TestDatabase::create().await;
    let direct: tokio_postgres::Config = db.url().parse().expect("the test database URL");
    let host = match &direct.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("the test database must be on TCP, not {other:?}"),
    };
    let port = direct.get_ports().first().copied().unwrap_or(5432);
    let target = tokio::net::lookup_host((host.as_str(), port))
        .await
        .expect("the database host resolves")
        .next()
        .expect("an address");
    let proxy = TcpProxy::start(target).await;
    let password = direct
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let proxied = format!(
        "postgres://{}{password}@{}/{}",
        direct.get_user().unwrap_or("postgres"),
        proxy.addr(),
        direct.get_dbname().expect("a database name"),
    );
    let server = TestServer::start(settings(ChatConfig {
        database_url: Some(proxied),
        ..ChatConfig::default()
    }))
    .await;
    let a = server.user(&name("bha")).await["id"].as_i64().unwrap();
    let b = server.user(&name("bhb")).await["id"].as_i64().unwrap();
    let mut acknowledged = vec![];
    for i in 0..3 {
        let content = format!("before-{i}");
        server.message(a, b, &content).await;
        acknowledged.push(content);
    }
    assert_eq!(health(&server).await.0, 200);

    proxy.hold();
    let sends = (0..N).map(|i| {
        let content = format!("held-{i}");
        let request = send_request(&server, a, b, &content);
        let server = &server;
        async move { (content, timed(server, request).await) }
    });
    let reads = (0..N).map(|_| timed(&server, server.http.get(server.url(&format!("/users/{a}")))));
    let (sends, reads) = tokio::join!(join_all(sends), join_all(reads));
    let mut unacknowledged = vec![];
    let slowest = sends.iter().map(|(_, (_, _, t))| *t).max();
    eprintln!("while PostgreSQL is held: slowest send {slowest:?}");
    for (content, (status, body, took)) in sends {
        assert!(
            took <= REQUEST_BOUND,
            "send took {took:?} ({status} {body})"
        );
        assert_eq!(status, 503, "send while held: {body}");
        unacknowledged.push(content);
    }
    for (status, body, took) in reads {
        assert!(
            took <= REQUEST_BOUND,
            "GET /users took {took:?} ({status} {body})"
        );
        assert_eq!(status, 503, "GET /users while held: {body}");
    }
    let (status, body) = health(&server).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["database"], "unavailable", "{body}");

    proxy.resume();
    eventually(DEADLINE, "requests succeed again", || async {
        let (status, _) = server.get(&format!("/users/{a}")).await;
        (status == 200).then_some(())
    })
    .await;
    assert_eq!(health(&server).await.0, 200);
    // Retried with their client_ids, the sends that got 503 are stored now, whether or not the
    // first attempt reached PostgreSQL.
    for content in &unacknowledged {
        let (status, body) = server.send(send_request(&server, a, b, content)).await;
        assert_eq!(status, 200, "retry of {content}: {body}");
    }
    acknowledged.extend(unacknowledged);

    // Every acknowledged message is stored exactly once, and no transaction was left open.
    let (client, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .expect("direct connection");
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT content, count(*) FROM messages GROUP BY content",
            &[],
        )
        .await
        .expect("count messages");
    let stored: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for content in &acknowledged {
        assert_eq!(
            stored.get(content),
            Some(&1),
            "{content} stored once: {stored:?}"
        );
    }
    assert_eq!(
        stored.len(),
        acknowledged.len(),
        "nothing else stored: {stored:?}"
    );
    eventually(DEADLINE, "no transaction left open", || async {
        let open: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        (open == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_black_holed_redis_leaves_sends_working_within_the_budget() {
    let (_redis, proxy, server) = server_on_proxied_redis().await;
    let a = server.user(&name("rha")).await["id"].as_i64().unwrap();
    let b = server.user(&name("rhb")).await["id"].as_i64().unwrap();
    server.message(a, b, "before").await;
    let (status, body) = health(&server).await;
    assert_eq!(
        (status, body["redis"].as_str()),
        (200, Some("connected")),
        "{body}"
    );

    proxy.hold();
    // Storage is the source of truth: sends succeed, the cache and the fan-out wait at most the
    // budget once and then give up at once.
    let sends = (0..N).map(|i| timed(&server, send_request(&server, a, b, &format!("held-{i}"))));
    for (status, body, took) in join_all(sends).await {
        assert!(
            took <= REQUEST_BOUND,
            "send took {took:?} ({status} {body})"
        );
        assert_eq!(status, 200, "send while Redis is held: {body}");
    }
    let (status, body, took) = timed(
        &server,
        server
            .http
            .get(server.url(&format!("/messages/recent/{b}"))),
    )
    .await;
    assert!(took <= REQUEST_BOUND, "recent took {took:?}");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["messages"].as_array().map(Vec::len),
        Some(N + 1),
        "from storage: {body}"
    );
    let (status, body) = health(&server).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["redis"], "unavailable", "{body}");

    proxy.resume();
    eventually(DEADLINE, "Redis reported back", || async {
        let (status, _) = server.get("/health").await;
        (status == 200).then_some(())
    })
    .await;
    let (status, body, took) = timed(&server, send_request(&server, a, b, "after")).await;
    assert_eq!(status, 200, "{body}");
    assert!(took <= REQUEST_BOUND, "send after took {took:?}");
}

/// A send whose client hangs up before the answer is still delivered live. hyper drops a
/// request's future when its connection closes; a send dropped between its commit and its
/// fan-out would be stored, but reach no socket. Redis is held so that the fan-out is still
/// waiting (it gives up after the budget and delivers to this node's sockets) when the client
/// goes: the client hangs up once the message is in the history, which is after the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_send_whose_client_hangs_up_after_the_commit_is_still_delivered_live() {
    use tokio::io::AsyncWriteExt;
    let (_redis, proxy, server) = server_on_proxied_redis().await;
    let a = server.user(&name("hua")).await["id"].as_i64().unwrap();
    let b = server.user(&name("hub")).await["id"].as_i64().unwrap();
    let mut ws = Ws::connect_ready(&server.ws_url(&format!("/ws/{b}"))).await;

    proxy.hold();
    let body = json!({"sender_id": a, "receiver_id": b, "content": "hung up"}).to_string();
    let mut client = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connects");
    let request = format!(
        "POST /messages/ HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        server.addr,
        body.len()
    );
    client
        .write_all(request.as_bytes())
        .await
        .expect("request written");
    let history = format!("/messages/?user_id={a}&chat_with={b}");
    eventually(DEADLINE, "the send committed", || async {
        let (status, messages) = server.get(&history).await;
        (status == 200 && messages.as_array().is_some_and(|m| !m.is_empty())).then_some(())
    })
    .await;
    // Gone while the fan-out waits for Redis.
    drop(client);

    let frame = ws.next_json().await;
    assert_eq!(
        (frame["type"].as_str(), frame["content"].as_str()),
        (Some("message"), Some("hung up")),
        "{frame}"
    );
}
