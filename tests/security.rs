//! Access control and hostile input (API.md Part 2): the auth matrix on every route and the
//! socket, a table of bad requests each with its expected status, random bodies and frames
//! thrown at the running server, and every limit hit once.

mod support;

use futures_util::SinkExt;
use minichat::server::{AuthMode, Authenticator, Settings, Signup};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::time::Duration;
use support::{name, Backend, Backends, TestServer, Ws};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Frame;

const SECRET: &str = "test-secret";

fn id(v: &Value) -> i64 {
    v["id"].as_i64().expect("id")
}

async fn token_server(kind: Backend, tweak: impl FnOnce(&mut Settings)) -> (Backends, TestServer) {
    let backends = Backends::new(kind).await;
    let mut settings = backends.settings(AuthMode::Token);
    tweak(&mut settings);
    let server = TestServer::start(settings).await;
    (backends, server)
}

/// Signs up and returns (user, token).
async fn signup(s: &TestServer, prefix: &str) -> (Value, String) {
    let (status, body) = s.post("/users/", json!({"username": name(prefix)})).await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().expect("token on signup").to_owned();
    (body, token)
}

#[derive(Clone, Copy, Debug)]
enum Credential {
    None,
    Forged,
    Expired,
    OtherUser,
    Right,
}

const ALL: [Credential; 5] = [
    Credential::None,
    Credential::Forged,
    Credential::Expired,
    Credential::OtherUser,
    Credential::Right,
];

async fn auth_matrix(kind: Backend) {
    let (_b, s) = token_server(kind, |_| {}).await;
    let (alice, alice_token) = signup(&s, "alice").await;
    let (bob, bob_token) = signup(&s, "bob").await;
    let a = id(&alice);
    let b = id(&bob);
    let minter = Authenticator::new(AuthMode::Token, Some(SECRET));
    let forger = Authenticator::new(AuthMode::Token, Some("not the secret"));
    let token_for = |c: Credential| -> Option<String> {
        match c {
            Credential::None => None,
            Credential::Forged => Some(forger.issue(a, Duration::from_secs(600))),
            Credential::Expired => Some(minter.issue_expired(a, Duration::from_secs(3600))),
            Credential::OtherUser => Some(bob_token.clone()),
            Credential::Right => Some(alice_token.clone()),
        }
    };
    // (what, request acting as alice) → expected status per credential:
    // none/forged/expired → 401; another user → 403 where acting as alice, 200 where any
    // valid token is enough (the directory); right → 200.
    let routes: Vec<(&str, reqwest::Method, String, Option<Value>, bool)> = vec![
        (
            "list users",
            reqwest::Method::GET,
            "/users/".into(),
            None,
            false,
        ),
        (
            "get user",
            reqwest::Method::GET,
            format!("/users/{b}"),
            None,
            false,
        ),
        (
            "send",
            reqwest::Method::POST,
            "/messages/".into(),
            Some(json!({"sender_id": a, "receiver_id": b, "content": "hi"})),
            true,
        ),
        (
            "history",
            reqwest::Method::GET,
            format!("/messages/?user_id={a}"),
            None,
            true,
        ),
        (
            "recent",
            reqwest::Method::GET,
            format!("/messages/recent/{a}"),
            None,
            true,
        ),
        (
            "read state",
            reqwest::Method::GET,
            format!("/messages/read?user_id={a}&chat_with={b}"),
            None,
            true,
        ),
    ];
    for (what, method, path, body, acts_as_alice) in &routes {
        for credential in ALL {
            let mut request = s.http.request(method.clone(), s.url(path));
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(token) = token_for(credential) {
                request = request.bearer_auth(token);
            }
            let (status, answer) = s.send(request).await;
            let expected = match credential {
                Credential::None | Credential::Forged | Credential::Expired => 401,
                Credential::OtherUser if *acts_as_alice => 403,
                Credential::OtherUser | Credential::Right => 200,
            };
            assert_eq!(status, expected, "{what} with {credential:?}: {answer}");
            if status >= 400 {
                assert!(answer["detail"].is_string(), "{what}: {answer}");
            }
        }
    }
    // The socket: checked before the upgrade is accepted.
    for credential in ALL {
        let mut url = s.ws_url(&format!("/ws/{a}"));
        if let Some(token) = token_for(credential) {
            url.push_str(&format!("?token={token}"));
        }
        let expected = match credential {
            Credential::None | Credential::Forged | Credential::Expired => Some(401),
            Credential::OtherUser => Some(403),
            Credential::Right => None,
        };
        match (tokio_tungstenite::connect_async(&url).await, expected) {
            (Ok((stream, _)), None) => {
                let mut ws = Ws { stream };
                assert_eq!(ws.next_json().await["type"], "system");
            }
            (Err(tokio_tungstenite::tungstenite::Error::Http(response)), Some(code)) => {
                assert_eq!(
                    response.status().as_u16(),
                    code,
                    "socket with {credential:?}"
                );
            }
            (other, expected) => panic!(
                "socket with {credential:?}: expected {expected:?}, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    // The bearer header works on the socket too.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            s.ws_url(&format!("/ws/{a}")),
        )
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {alice_token}").parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("bearer header accepted");
    drop(ws);
    // Public routes need no token.
    for path in ["/", "/health", "/openapi.json", "/docs/", "/redoc"] {
        let (status, _) = s.get(path).await;
        assert_eq!(status, 200, "{path}");
    }
    // A token of a user that does not exist acts as no one: 404 on the socket's user is not
    // reachable (403 first), and a send as them is 404 Sender not found.
    let ghost = minter.issue(999_999, Duration::from_secs(60));
    let (status, _) = s
        .send(
            s.http
                .post(s.url("/messages/"))
                .bearer_auth(&ghost)
                .json(&json!({"sender_id": 999_999, "receiver_id": b, "content": "boo"})),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_matrix_memory() {
    auth_matrix(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_matrix_postgres_redis() {
    auth_matrix(Backend::Shared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_signup_needs_an_admin_token() {
    let (_b, s) = token_server(Backend::Memory, |settings| settings.signup = Signup::Admin).await;
    let minter = Authenticator::new(AuthMode::Token, Some(SECRET));
    let body = json!({"username": name("adm")});
    let (status, _) = s.post("/users/", body.clone()).await;
    assert_eq!(status, 401);
    let admin = minter.issue_admin(Duration::from_secs(60));
    let (status, created) = s
        .send(
            s.http
                .post(s.url("/users/"))
                .bearer_auth(&admin)
                .json(&body),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let user_token = created["token"].as_str().unwrap().to_owned();
    let (status, answer) = s
        .send(
            s.http
                .post(s.url("/users/"))
                .bearer_auth(&user_token)
                .json(&json!({"username": name("adm")})),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    // An admin token acts as no user.
    let (status, _) = s
        .send(
            s.http
                .get(s.url(&format!("/messages/?user_id={}", id(&created))))
                .bearer_auth(&admin),
        )
        .await;
    assert_eq!(status, 403);
}

/// Sends raw bytes and returns the status code of the answer (None when the connection was
/// closed without one). Requests must say `Connection: close` or be refused, so the read ends;
/// `truncate` also half-closes, as a client that gives up mid-request.
async fn raw_status(s: &TestServer, request: &[u8]) -> Option<u16> {
    raw_exchange(s, request, false).await
}

async fn raw_exchange(s: &TestServer, request: &[u8], truncate: bool) -> Option<u16> {
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    if truncate {
        let _ = stream.shutdown().await;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(support::DEADLINE, stream.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_memory() {
    hostile_requests_get_clear_4xx(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_postgres_redis() {
    hostile_requests_get_clear_4xx(Backend::Shared).await;
}

async fn hostile_requests_get_clear_4xx(kind: Backend) {
    let (_b, s) = {
        let backends = Backends::new(kind).await;
        let server = TestServer::open(&backends).await;
        (backends, server)
    };
    let a = id(&s.user(&name("ha")).await);
    let b = id(&s.user(&name("hb")).await);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let nested_obj = format!(
        "{{\"username\": {}1{}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        ("/users/", "application/json", b"{\"username\": \"abc".to_vec(), 422),
        ("/users/", "application/json", deep.clone().into_bytes(), 413),
        ("/users/", "application/json", nested_obj.into_bytes(), 422),
        ("/users/", "application/json", b"{\"username\": [\"a\"]}".to_vec(), 422),
        ("/users/", "application/json", b"{\"username\": \"a\\u0000bc\"}".to_vec(), 422),
        ("/users/", "application/json", b"{\"username\": \"\xff\xfe\xfd\"}".to_vec(), 422),
        ("/users/", "application/json", b"{\"username\": \"<img src=x onerror=alert(1)>\"}".to_vec(), 422),
        ("/users/", "application/json", b"{\"username\": \"abc'; DROP TABLE users;--\"}".to_vec(), 422),
        ("/users/", "application/json", b"".to_vec(), 422),
        ("/users/", "application/xml", b"<user/>".to_vec(), 415),
        ("/messages/", "application/json", format!("{{\"sender_id\": 1e400, \"receiver_id\": {b}, \"content\": \"x\"}}").into_bytes(), 422),
        ("/messages/", "application/json", format!("{{\"sender_id\": 99999999999999999999999, \"receiver_id\": {b}, \"content\": \"x\"}}").into_bytes(), 422),
        ("/messages/", "application/json", format!("{{\"sender_id\": -1, \"receiver_id\": {b}, \"content\": \"x\"}}").into_bytes(), 404),
        ("/messages/", "application/json", format!("{{\"sender_id\": 0, \"receiver_id\": {b}, \"content\": \"x\"}}").into_bytes(), 404),
        ("/messages/", "application/json", format!("{{\"sender_id\": {a}, \"receiver_id\": {b}, \"content\": 5}}").into_bytes(), 422),
        ("/messages/", "application/json", format!("{{\"sender_id\": {a}, \"receiver_id\": {b}, \"content\": null}}").into_bytes(), 422),
        ("/messages/", "application/json", format!("{{\"sender_id\": \"{a}\", \"receiver_id\": {b}, \"content\": \"x\"}}").into_bytes(), 422),
        ("/messages/", "application/json", format!("{{\"sender_id\": {a}, \"receiver_id\": {b}, \"content\": \"{}\"}}", "x".repeat(70_000)).into_bytes(), 413),
    ];
    for (path, content_type, body, expected) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        let (status, answer) = s
            .send(
                s.http
                    .post(s.url(path))
                    .header("content-type", content_type)
                    .body(body),
            )
            .await;
        assert_eq!(status, expected, "{path} {shown}: {answer}");
        assert!(!answer["detail"].is_null(), "{path} {shown}: no detail");
    }
    // SQL and HTML in content are stored as text, byte-exact; NUL is refused on every backend.
    let payload = "'); DROP TABLE messages; -- <script>alert('x')</script> \u{1} \u{7f} \u{feff}";
    let m = s.message(a, b, payload).await;
    assert_eq!(m["content"], payload);
    let (_, history) = s.get(&format!("/messages/?user_id={a}")).await;
    assert_eq!(history[0]["content"], payload);
    let (status, answer) = s
        .post(
            "/messages/",
            json!({"sender_id": a, "receiver_id": b, "content": "nul\u{0}here"}),
        )
        .await;
    assert_eq!(status, 422, "{answer}");

    // Paths and queries.
    for (path, expected) in [
        ("/users/-1", 404),
        ("/users/0", 404),
        ("/users/1.5", 422),
        ("/users/%00", 422),
        ("/users/99999999999999999999", 422),
        ("/messages/?user_id=1&limit=-5", 422),
        ("/messages/?user_id=1&skip=abc", 422),
        ("/messages/?user_id=%ff%fe", 422),
        ("/messages/recent/-3", 200),
        ("/../../etc/passwd", 404),
    ] {
        let (status, answer) = s.get(path).await;
        assert_eq!(status, expected, "{path}: {answer}");
    }

    // Raw protocol abuse: oversized headers, truncated requests, garbage.
    let huge_header = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let status = raw_status(&s, huge_header.as_bytes()).await;
    // Refused by hyper's parser before any handler runs: 431, with no body to put a `detail`
    // in. The server stops reading at its limit and closes with the rest unread, so the
    // client's kernel may receive a reset that overtakes the 431: either is a refusal.
    assert!(
        matches!(status, Some(431) | None),
        "oversized header: {status:?}"
    );
    let truncated = b"POST /users/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"username\"";
    let status = raw_exchange(&s, truncated, true).await;
    assert_eq!(status, Some(400), "truncated body");
    let status = raw_status(&s, b"\x16\x03\x01garbage-not-http\r\n\r\n").await;
    assert_eq!(status, Some(400), "garbage");
    let status = raw_status(
        &s,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, Some(200));

    // Bad WebSocket handshakes.
    let bad_version = format!("GET /ws/{a} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n");
    assert_eq!(raw_status(&s, bad_version.as_bytes()).await, Some(400));
    let no_key = format!("GET /ws/{a} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n");
    assert_eq!(raw_status(&s, no_key.as_bytes()).await, Some(400));

    // Bad frames: the socket answers with error frames and stays usable.
    let mut ws = Ws::connect_ready(&s.ws_url(&format!("/ws/{a}"))).await;
    for frame in [
        Frame::Text("not json".into()),
        Frame::Text("{\"type\": 5}".into()),
        Frame::Text("{\"type\": \"message\", \"receiver_id\": \"x\"}".into()),
        Frame::Text("[]".into()),
        Frame::Binary(vec![0, 159, 146, 150].into()),
    ] {
        ws.stream.send(frame).await.unwrap();
        let answer = ws.next_json().await;
        assert_eq!(answer["type"], "error", "{answer}");
    }
    ws.assert_no_pending_message().await;
    // The server still serves.
    let (status, _) = s.get("/health").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_enforced_and_others_keep_being_served() {
    let (_b, s) = {
        let backends = Backends::new(Backend::Memory).await;
        let mut settings = backends.settings(AuthMode::Off);
        settings.limits.send_rate_per_sec = 1;
        settings.limits.send_burst = 3;
        settings.limits.max_sockets_per_user = 2;
        settings.limits.max_ws_message_bytes = 1024;
        settings.limits.header_read_timeout = Duration::from_millis(500);
        let server = TestServer::start(settings).await;
        (backends, server)
    };
    let a = id(&s.user(&name("la")).await);
    let b = id(&s.user(&name("lb")).await);
    let c = id(&s.user(&name("lc")).await);

    // Send rate: the burst passes, then 429 with Retry-After; others are unaffected.
    for i in 0..3 {
        s.message(a, b, &format!("burst {i}")).await;
    }
    let response = s
        .http
        .post(s.url("/messages/"))
        .json(&json!({"sender_id": a, "receiver_id": b, "content": "one too many"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body: Value = response.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("slow down"));
    s.message(c, b, "c is not limited").await;
    // Over the socket: an error frame, and the connection stays.
    let mut a_ws = Ws::connect_ready(&s.ws_url(&format!("/ws/{a}"))).await;
    a_ws.send_json(json!({"type": "message", "receiver_id": b, "content": "x", "client_id": "r1"}))
        .await;
    let answer = a_ws.next_json().await;
    assert_eq!(answer["type"], "error");
    assert_eq!(answer["status"], 429);
    assert_eq!(answer["client_id"], "r1");

    // Sockets per user: the third is refused before the upgrade.
    let _second = Ws::connect_ready(&s.ws_url(&format!("/ws/{a}"))).await;
    match tokio_tungstenite::connect_async(s.ws_url(&format!("/ws/{a}"))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429)
        }
        other => panic!("third socket: {:?}", other.map(|_| ())),
    }
    let _other_user = Ws::connect_ready(&s.ws_url(&format!("/ws/{b}"))).await;

    // WebSocket message size: closed with 1009.
    let mut big = Ws::connect_ready(&s.ws_url(&format!("/ws/{c}"))).await;
    let _ = big.stream.send(Frame::Text("x".repeat(4096).into())).await;
    let close = big.next_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 1009);

    // A silent client and an idle keep-alive connection are both closed by the server.
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(support::DEADLINE, silent.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        matches!(n, Ok(0) | Err(_)) || String::from_utf8_lossy(&buf).contains("408"),
        "silent client held open"
    );
    let mut idle = TcpStream::connect(s.addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let done = tokio::time::timeout(support::DEADLINE, idle.read_to_end(&mut response)).await;
    assert!(done.is_ok(), "idle keep-alive connection was never closed");
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200"));

    // Everyone else is still served.
    let (status, _) = s.get("/health").await;
    assert_eq!(status, 200);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::hash_map(
                prop_oneof![
                    Just("username".to_string()),
                    Just("sender_id".to_string()),
                    Just("receiver_id".to_string()),
                    Just("content".to_string()),
                    Just("type".to_string()),
                    ".{0,8}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, .. ProptestConfig::default() })]

    /// Random bodies and frames: never a 5xx, never a dropped server, and a normal request
    /// still works afterwards.
    #[test]
    fn random_bodies_and_frames_never_break_the_server(
        bodies in prop::collection::vec(prop_oneof![
            json_value().prop_map(|v| v.to_string().into_bytes()),
            prop::collection::vec(any::<u8>(), 0..200),
        ], 1..6),
        frames in prop::collection::vec(prop_oneof![
            json_value().prop_map(|v| v.to_string()),
            ".{0,100}",
        ], 1..6),
    ) {
        runtime().block_on(async {
            let backends = Backends::new(Backend::Memory).await;
            let s = TestServer::open(&backends).await;
            let a = id(&s.user(&name("pa")).await);
            for body in &bodies {
                for path in ["/users/", "/messages/"] {
                    let (status, _) = s.send(s.http.post(s.url(path)).header("content-type", "application/json").body(body.clone())).await;
                    assert!(status < 500, "{path} answered {status} to {:?}", String::from_utf8_lossy(body));
                }
            }
            let mut ws = Ws::connect_ready(&s.ws_url(&format!("/ws/{a}"))).await;
            for frame in &frames {
                ws.send_json(serde_json::from_str(frame).unwrap_or_else(|_| Value::String(frame.clone()))).await;
                let answer = ws.next_json().await;
                let kind = answer["type"].as_str().unwrap_or("");
                assert!(["error", "pong", "ack"].contains(&kind), "frame {frame:?} → {answer}");
                if kind == "error" {
                    assert!(answer["status"].as_u64().unwrap() < 500, "{answer}");
                }
            }
            ws.assert_no_pending_message().await;
            let (status, _) = s.get("/health").await;
            assert_eq!(status, 200);
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_subcommand_mints_tokens_the_server_accepts() {
    let backends = Backends::new(Backend::Shared).await;
    let (_b, s) = (
        &backends,
        TestServer::start(backends.settings(AuthMode::Token)).await,
    );
    let (alice, _) = signup(&s, "cli").await;
    let binary = support::server_binary();
    let database_url = backends
        .database
        .as_ref()
        .expect("a database")
        .url()
        .to_owned();
    let run = |args: &[&str]| {
        std::process::Command::new(&binary)
            .args(args)
            .env("DATABASE_URL", &database_url)
            .env("MINICHAT_JWT_SECRET", SECRET)
            .env_remove("REDIS_URL")
            .output()
            .expect("run minichat-server")
    };
    // stdout is the token alone (logs go to stderr), so `$(minichat-server token ...)` works.
    let out = run(&["token", "--user-id", &alice["id"].to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (status, body) = s
        .send(
            s.http
                .get(s.url(&format!("/messages/?user_id={}", id(&alice))))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // A user that does not exist gets no token, and one clear line.
    let out = run(&["token", "--user-id", "999999"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.trim().ends_with("User not found"), "{err}");
    // Without the secret there is nothing to sign with.
    let out = std::process::Command::new(&binary)
        .args(["token", "--admin"])
        .env_remove("MINICHAT_JWT_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MINICHAT_JWT_SECRET"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_typing_read_and_watch_frames_is_limited_per_user() {
    let backends = Backends::new(Backend::Memory).await;
    let mut settings = backends.settings(AuthMode::Off);
    settings.limits.signal_rate_per_sec = 1;
    settings.limits.signal_burst = 3;
    let s = TestServer::start(settings).await;
    let flooder = id(&s.user(&name("flood")).await);
    let victim = id(&s.user(&name("victim")).await);
    let mut flood_ws = Ws::connect_ready(&s.ws_url(&format!("/ws/{flooder}"))).await;
    let mut victim_ws = Ws::connect_ready(&s.ws_url(&format!("/ws/{victim}"))).await;

    const FRAMES: usize = 12;
    for _ in 0..FRAMES {
        flood_ws
            .send_json(json!({"type": "typing", "receiver_id": victim}))
            .await;
    }
    // The flooder hears 429 for what was refused; a pong marks the end of its answers.
    flood_ws.send_json(json!({"type": "ping"})).await;
    let mut refused = 0;
    loop {
        let frame = flood_ws.next_json().await;
        match frame["type"].as_str() {
            Some("error") => {
                assert_eq!(frame["status"], 429, "{frame}");
                refused += 1;
            }
            Some("pong") => break,
            _ => panic!("unexpected {frame}"),
        }
    }
    // The victim got only what passed; a message from the flooder marks the end.
    let marker = s.message(flooder, victim, "marker").await;
    let mut typing = 0;
    loop {
        let frame = victim_ws.next_json().await;
        if frame["id"] == marker["id"] {
            break;
        }
        assert_eq!(frame["type"], "typing", "{frame}");
        typing += 1;
    }
    assert_eq!(typing + refused, FRAMES);
    // The burst of 3 (plus at most a token or two refilled meanwhile) got through.
    assert!((3..=5).contains(&typing), "{typing} typing events passed");
    // Messages have their own bucket: the flooder can still send.
    assert!(refused >= FRAMES - 5);
}
