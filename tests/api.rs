//! The wire contract of the original (API.md Part 1), over real HTTP and WebSocket, with auth
//! off. One suite, run against both backends: in memory, and PostgreSQL + Redis (each test with
//! its own database and Redis prefix).

#[macro_use]
mod support;

use serde_json::{json, Value};
use support::{name, Backend, Backends, TestServer, Ws};

suite!(
    root_and_health,
    create_user_and_defaults,
    duplicate_username_is_400,
    user_validation_rules,
    list_users_pages_by_id,
    list_users_rejects_bad_numbers,
    get_user_found_missing_and_malformed,
    send_message_and_its_fields,
    send_message_errors,
    history_by_user_pair_and_pages,
    recent_messages_newest_fifty,
    malformed_and_wrong_requests,
    websocket_system_ping_and_delivery_exactly_once,
    websocket_several_connections_of_one_user,
    websocket_unknown_user_is_4004,
    websocket_send_ack_and_echo_to_other_devices,
    websocket_resume_with_since,
    docs_are_served_offline,
    head_is_get_without_a_body,
    round_trip_is_byte_exact,
);

async fn setup(kind: Backend) -> (Backends, TestServer) {
    let backends = Backends::new(kind).await;
    let server = TestServer::open(&backends).await;
    (backends, server)
}

fn id(v: &Value) -> i64 {
    v["id"].as_i64().expect("id")
}

fn loc(body: &Value) -> Value {
    body["detail"][0]["loc"].clone()
}

async fn root_and_health(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let (status, body) = s.get("/").await;
    assert_eq!(status, 200);
    assert_eq!(body["message"], "Mini Chat Backend API");
    assert!(body["version"].is_string());
    assert!(body["endpoints"].is_object());

    let (status, body) = s.get("/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "OK");
    match kind {
        Backend::Memory => {
            assert_eq!(body["database"], "memory");
            assert_eq!(body["redis"], "disabled");
        }
        Backend::Shared => {
            // The original's word for a database that answers: its clients check for it.
            assert_eq!(body["database"], "OK");
            assert_eq!(body["redis"], "connected");
        }
    }
    let ts = body["timestamp"].as_str().unwrap();
    assert!(
        ts.ends_with('Z') && ts.len() == "2026-11-24T10:15:30.123456Z".len(),
        "{ts}"
    );
}

async fn create_user_and_defaults(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let username = name("alice");
    let (status, body) = s
        .post(
            "/users/",
            json!({"username": username, "display_name": "Alice Smith"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["username"], username);
    assert_eq!(body["display_name"], "Alice Smith");
    assert!(id(&body) >= 1);
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    // Auth is off: no token in the answer, exactly the original's shape.
    assert!(body.get("token").is_none());

    let bob = s.user(&name("bob")).await;
    assert_eq!(
        bob["display_name"], bob["username"],
        "display_name defaults to username"
    );
}

async fn duplicate_username_is_400(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let username = name("dup");
    s.user(&username).await;
    let (status, body) = s.post("/users/", json!({"username": username})).await;
    assert_eq!(status, 400);
    assert_eq!(body, json!({"detail": "Username already registered"}));
}

async fn user_validation_rules(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let cases = [
        (json!({"username": "ab"}), json!(["body", "username"])),
        (
            json!({"username": "a".repeat(51)}),
            json!(["body", "username"]),
        ),
        (json!({"username": "bad name"}), json!(["body", "username"])),
        (json!({"username": "bad-name"}), json!(["body", "username"])),
        (
            json!({"username": "x<script>"}),
            json!(["body", "username"]),
        ),
        (
            json!({"username": name("ok"), "display_name": "d".repeat(101)}),
            json!(["body", "display_name"]),
        ),
        (json!({}), json!(["body", "username"])),
        (json!({"username": 12345}), json!(["body", "username"])),
    ];
    for (body, expected_loc) in cases {
        let (status, answer) = s.post("/users/", body.clone()).await;
        assert_eq!(status, 422, "{body} → {answer}");
        assert_eq!(loc(&answer), expected_loc, "{body} → {answer}");
        assert!(answer["detail"][0]["msg"].is_string());
        assert!(answer["detail"][0]["type"].is_string());
    }
    // Unicode letters and digits are alphanumeric, as Python's isalnum says.
    let (status, body) = s
        .post(
            "/users/",
            json!({"username": format!("Алиса{}", rand::random::<u16>())}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Boundaries.
    let (status, _) = s
        .post(
            "/users/",
            json!({"username": format!("a{}", "b".repeat(49))}),
        )
        .await;
    assert!(status == 200 || status == 400);
}

async fn list_users_pages_by_id(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(id(&s.user(&name(&format!("u{i}x"))).await));
    }
    let (status, all) = s.get("/users/").await;
    assert_eq!(status, 200);
    let listed: Vec<i64> = all.as_array().unwrap().iter().map(id).collect();
    assert_eq!(listed, ids, "ordered by id");
    let (_, page) = s.get("/users/?skip=1&limit=2").await;
    let listed: Vec<i64> = page.as_array().unwrap().iter().map(id).collect();
    assert_eq!(listed, ids[1..3]);
    let (status, redirect) = s.send(s.http.get(s.url("/users?limit=1"))).await;
    assert_eq!(status, 307, "{redirect}");
}

async fn list_users_rejects_bad_numbers(kind: Backend) {
    let (_b, s) = setup(kind).await;
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=abc", "limit"),
        ("skip=-1", "skip"),
        ("skip=1.5", "skip"),
        ("limit=99999999999999999999999", "limit"),
    ] {
        let (status, body) = s.get(&format!("/users/?{query}")).await;
        assert_eq!(status, 422, "{query}: {body}");
        assert_eq!(loc(&body), json!(["query", field]), "{query}");
    }
    let (status, _) = s.get("/users/?limit=1000").await;
    assert_eq!(status, 200);
}

async fn get_user_found_missing_and_malformed(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let u = s.user(&name("carol")).await;
    let (status, body) = s.get(&format!("/users/{}", id(&u))).await;
    assert_eq!(status, 200);
    for field in ["id", "username", "display_name", "created_at"] {
        assert_eq!(body[field], u[field], "{field}");
    }
    // Part 3 adds presence; never connected: offline, never seen.
    assert_eq!(body["online"], false);
    assert_eq!(body["last_seen"], Value::Null);
    for missing in ["999999", "0", "-5"] {
        let (status, body) = s.get(&format!("/users/{missing}")).await;
        assert_eq!(status, 404, "{missing}");
        assert_eq!(body, json!({"detail": "User not found"}));
    }
    let (status, body) = s.get("/users/abc").await;
    assert_eq!(status, 422);
    assert_eq!(loc(&body), json!(["path", "user_id"]));
    assert_eq!(body["detail"][0]["type"], "int_parsing");
}

async fn send_message_and_its_fields(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let a = s.user(&name("snd")).await;
    let b = s.user(&name("rcv")).await;
    let m = s.message(id(&a), id(&b), "  Привет!  ").await;
    assert_eq!(m["sender_id"], a["id"]);
    assert_eq!(m["receiver_id"], b["id"]);
    assert_eq!(m["sender_username"], a["username"]);
    assert_eq!(m["content"], "Привет!", "stored stripped");
    assert_eq!(m["type"], "message");
    assert_eq!(m["delivered_via_websocket"], false);
    assert!(m["timestamp"].as_str().unwrap().ends_with('Z'));
    let m2 = s.message(id(&a), id(&b), "second").await;
    assert!(id(&m2) > id(&m));
}

async fn send_message_errors(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let a = id(&s.user(&name("e1x")).await);
    let b = id(&s.user(&name("e2x")).await);
    let post = |body: Value| s.post("/messages/", body);

    let (status, body) = post(json!({"sender_id": 999999, "receiver_id": b, "content": "x"})).await;
    assert_eq!((status, body), (404, json!({"detail": "Sender not found"})));
    let (status, body) = post(json!({"sender_id": a, "receiver_id": 999999, "content": "x"})).await;
    assert_eq!(
        (status, body),
        (404, json!({"detail": "Receiver not found"}))
    );

    for (content, why) in [("", "empty"), ("   \n\t", "blank")] {
        let (status, body) =
            post(json!({"sender_id": a, "receiver_id": b, "content": content})).await;
        assert_eq!(status, 422, "{why}");
        assert_eq!(loc(&body), json!(["body", "content"]));
        assert_eq!(body["detail"][0]["msg"], "Message content cannot be empty");
    }
    let (status, body) =
        post(json!({"sender_id": a, "receiver_id": b, "content": "x".repeat(1001)})).await;
    assert_eq!(status, 422);
    assert_eq!(loc(&body), json!(["body", "content"]));
    let (status, _) = post(
        json!({"sender_id": a, "receiver_id": b, "content": format!(" {} ", "y".repeat(1000))}),
    )
    .await;
    assert_eq!(status, 200, "1000 characters after stripping is allowed");

    let (status, body) = post(json!({"sender_id": a, "receiver_id": a, "content": "me"})).await;
    assert_eq!(status, 422);
    assert_eq!(body["detail"][0]["msg"], "Cannot send message to yourself");

    let (status, body) = post(json!({"sender_id": "one", "receiver_id": b, "content": "x"})).await;
    assert_eq!(status, 422);
    assert_eq!(loc(&body), json!(["body", "sender_id"]));
    let (status, body) = post(json!({"receiver_id": b, "content": "x"})).await;
    assert_eq!(status, 422);
    assert_eq!(body["detail"][0]["type"], "missing");

    // Nothing was stored by any of the failures.
    let (_, history) = s.get(&format!("/messages/?user_id={a}")).await;
    assert_eq!(history.as_array().unwrap().len(), 1);
}

async fn history_by_user_pair_and_pages(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let a = id(&s.user(&name("ha")).await);
    let b = id(&s.user(&name("hb")).await);
    let c = id(&s.user(&name("hc")).await);
    let mut with_b = Vec::new();
    for i in 0..6 {
        with_b.push(id(&s
            .message(
                if i % 2 == 0 { a } else { b },
                if i % 2 == 0 { b } else { a },
                &format!("ab{i}"),
            )
            .await));
        s.message(c, a, &format!("ca{i}")).await;
    }
    s.message(b, c, "not a's").await;

    let (status, all) = s.get(&format!("/messages/?user_id={a}")).await;
    assert_eq!(status, 200);
    let all: Vec<i64> = all.as_array().unwrap().iter().map(id).collect();
    assert_eq!(all.len(), 12);
    assert!(all.windows(2).all(|w| w[0] > w[1]), "newest first: {all:?}");

    let (_, pair) = s
        .get(&format!("/messages/?user_id={a}&chat_with={b}"))
        .await;
    let pair: Vec<i64> = pair.as_array().unwrap().iter().map(id).collect();
    let mut expected = with_b.clone();
    expected.reverse();
    assert_eq!(pair, expected);

    let (_, page) = s
        .get(&format!(
            "/messages/?user_id={a}&chat_with={b}&skip=2&limit=2"
        ))
        .await;
    let page: Vec<i64> = page.as_array().unwrap().iter().map(id).collect();
    assert_eq!(page, expected[2..4]);

    let cursor = expected[1];
    let (_, before) = s
        .get(&format!(
            "/messages/?user_id={a}&chat_with={b}&before_id={cursor}&limit=3"
        ))
        .await;
    let before: Vec<i64> = before.as_array().unwrap().iter().map(id).collect();
    assert_eq!(before, expected[2..5]);

    let (status, body) = s.get("/messages/").await;
    assert_eq!(status, 422);
    assert_eq!(loc(&body), json!(["query", "user_id"]));
    assert_eq!(body["detail"][0]["type"], "missing");
    let (status, _) = s.get(&format!("/messages/?user_id={a}&limit=0")).await;
    assert_eq!(status, 422);
    let (status, _) = s.get("/messages/?user_id=x").await;
    assert_eq!(status, 422);
}

async fn recent_messages_newest_fifty(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let a = id(&s.user(&name("ra")).await);
    let b = id(&s.user(&name("rb")).await);
    let (status, body) = s.get(&format!("/messages/recent/{b}")).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"messages": []}));
    let mut sent = Vec::new();
    for i in 0..60 {
        sent.push(id(&s.message(a, b, &format!("m{i}")).await));
    }
    s.message(b, a, "reply is not received by b").await;
    let (_, body) = s.get(&format!("/messages/recent/{b}")).await;
    let got: Vec<i64> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(id)
        .collect();
    let expected: Vec<i64> = sent.iter().rev().take(50).copied().collect();
    assert_eq!(got, expected);
    let (status, _) = s.get("/messages/recent/abc").await;
    assert_eq!(status, 422);
}

async fn malformed_and_wrong_requests(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let raw = |body: &'static str, content_type: &'static str| {
        s.send(
            s.http
                .post(s.url("/users/"))
                .header("content-type", content_type)
                .body(body),
        )
    };
    let (status, body) = raw("{\"username\": ", "application/json").await;
    assert_eq!(status, 422);
    assert_eq!(body["detail"][0]["type"], "json_invalid");
    let (status, body) = raw("[1, 2]", "application/json").await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = raw("null", "application/json").await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = raw("{\"username\": \"abcdef\"}", "text/plain").await;
    assert_eq!(status, 415);
    assert!(body["detail"].is_string());

    let huge = json!({"username": "x".repeat(70 * 1024)});
    let (status, body) = s.post("/users/", huge).await;
    assert_eq!(status, 413);
    assert!(body["detail"].as_str().unwrap().contains("too large"));

    let (status, body) = s.get("/no/such/route").await;
    assert_eq!((status, body), (404, json!({"detail": "Not Found"})));
    let (status, body) = s.send(s.http.delete(s.url("/users/"))).await;
    assert_eq!(
        (status, body),
        (405, json!({"detail": "Method Not Allowed"}))
    );
    let (status, _) = s.send(s.http.put(s.url("/users/1"))).await;
    assert_eq!(status, 405);
    // 405 says what the route does answer (RFC 9110).
    for (path, allow) in [
        ("/users/", "POST, GET, HEAD, OPTIONS"),
        ("/users/1", "GET, HEAD, OPTIONS"),
        ("/ws/1", "GET, OPTIONS"),
    ] {
        let response = s.http.delete(s.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 405, "{path}");
        assert_eq!(response.headers()["allow"], allow, "{path}");
    }

    // CORS: any origin by default, and preflights are answered.
    let response = s
        .http
        .request(http::Method::OPTIONS, s.url("/messages/"))
        .header("origin", "https://example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");

    // The server still serves normally.
    let (status, _) = s.get("/health").await;
    assert_eq!(status, 200);
}

async fn websocket_system_ping_and_delivery_exactly_once(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let a = s.user(&name("wa")).await;
    let b = s.user(&name("wb")).await;
    let mut ws = s.ws(&format!("/ws/{}", id(&b))).await;
    let system = ws.next_json().await;
    assert_eq!(system["type"], "system");
    assert_eq!(
        system["message"],
        format!("Connected to chat as {}", b["username"].as_str().unwrap())
    );
    assert!(system["timestamp"].is_string());

    ws.send_json(json!({"type": "ping"})).await;
    let pong = ws.next_json().await;
    assert_eq!(pong["type"], "pong");
    assert!(pong["timestamp"].is_string());

    let sent = s.message(id(&a), id(&b), "live!").await;
    assert_eq!(sent["delivered_via_websocket"], true);
    let got = ws.next_json().await;
    assert_eq!(got["type"], "message");
    assert_eq!(got["id"], sent["id"]);
    assert_eq!(got["content"], "live!");
    assert_eq!(got["sender_username"], a["username"]);
    assert_eq!(got["seq"], 1);
    // Exactly once: the next message frame is the next message, not a copy.
    let marker = s.message(id(&a), id(&b), "marker").await;
    let next = ws.next_json().await;
    assert_eq!(next["id"], marker["id"], "duplicate delivery: {next}");
    ws.assert_no_pending_message().await;

    // Unknown frames get an error frame, and the connection stays open.
    ws.send_json(json!({"type": "dance"})).await;
    let error = ws.next_json().await;
    assert_eq!(error["type"], "error");
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await["type"], "pong");
}

async fn websocket_several_connections_of_one_user(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let a = id(&s.user(&name("ma")).await);
    let b = id(&s.user(&name("mb")).await);
    let mut phone = Ws::connect_ready(&s.ws_url(&format!("/ws/{b}"))).await;
    let mut laptop = Ws::connect_ready(&s.ws_url(&format!("/ws/{b}"))).await;
    let sent = s.message(a, b, "to all devices").await;
    for ws in [&mut phone, &mut laptop] {
        assert_eq!(ws.next_json().await["id"], sent["id"]);
    }
    let marker = s.message(a, b, "marker").await;
    for ws in [&mut phone, &mut laptop] {
        assert_eq!(ws.next_json().await["id"], marker["id"]);
    }
    drop(phone);
    // The remaining connection still gets everything.
    let after = s.message(a, b, "after one left").await;
    assert_eq!(laptop.next_json().await["id"], after["id"]);
}

async fn websocket_unknown_user_is_4004(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let mut ws = s.ws("/ws/987654").await;
    let close = ws.next_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 4004);
    assert_eq!(close.reason.as_str(), "User not found");
    // A malformed id is refused before the upgrade.
    let err = tokio_tungstenite::connect_async(s.ws_url("/ws/abc"))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 422),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
    // A plain GET (no upgrade) is a clear 400.
    let (status, body) = s.get("/ws/1").await;
    assert_eq!(status, 400);
    assert!(body["detail"].is_string());
}

async fn websocket_send_ack_and_echo_to_other_devices(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let a = id(&s.user(&name("sa")).await);
    let b = id(&s.user(&name("sb")).await);
    let mut a_phone = Ws::connect_ready(&s.ws_url(&format!("/ws/{a}"))).await;
    let mut a_laptop = Ws::connect_ready(&s.ws_url(&format!("/ws/{a}"))).await;
    let mut b_ws = Ws::connect_ready(&s.ws_url(&format!("/ws/{b}"))).await;

    a_phone
        .send_json(json!({"type": "message", "receiver_id": b, "content": "over the socket", "client_id": "c-1"}))
        .await;
    let ack = a_phone.next_json().await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["client_id"], "c-1");
    assert_eq!(ack["message"]["content"], "over the socket");
    assert_eq!(ack["message"]["seq"], 1);
    let got = b_ws.next_json().await;
    assert_eq!(got["id"], ack["message"]["id"]);
    let echo = a_laptop.next_json().await;
    assert_eq!(
        echo["id"], ack["message"]["id"],
        "sender's other device gets it"
    );
    // The sending connection itself only got the ack.
    a_phone.assert_no_pending_message().await;

    // A retry with the same client_id returns the stored message and stores nothing new.
    a_phone
        .send_json(json!({"type": "message", "receiver_id": b, "content": "over the socket", "client_id": "c-1"}))
        .await;
    let again = a_phone.next_json().await;
    assert_eq!(again["message"]["id"], ack["message"]["id"]);
    let (_, history) = s.get(&format!("/messages/?user_id={a}")).await;
    assert_eq!(history.as_array().unwrap().len(), 1);

    // Invalid sends get an error frame naming the client_id; the socket stays open.
    a_phone
        .send_json(
            json!({"type": "message", "receiver_id": b, "content": "  ", "client_id": "c-2"}),
        )
        .await;
    let error = a_phone.next_json().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["client_id"], "c-2");
    assert_eq!(error["status"], 422);
    a_phone.assert_no_pending_message().await;
}

async fn websocket_resume_with_since(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let a = id(&s.user(&name("pa")).await);
    let b = id(&s.user(&name("pb")).await);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(s.message(a, b, &format!("offline {i}")).await["id"].clone());
    }
    let mut ws = Ws::connect_ready(&s.ws_url(&format!("/ws/{b}?since=2"))).await;
    for (k, expected) in ids[2..].iter().enumerate() {
        let frame = ws.next_json().await;
        assert_eq!(&frame["id"], expected);
        assert_eq!(frame["seq"], k as i64 + 3);
    }
    let live = s.message(a, b, "live").await;
    let frame = ws.next_json().await;
    assert_eq!(frame["id"], live["id"]);
    assert_eq!(frame["seq"], 6);
    ws.assert_no_pending_message().await;

    // A `since` from the future (a client that outlived a data reset) does not swallow events.
    let mut ahead = Ws::connect_ready(&s.ws_url(&format!("/ws/{b}?since=1000"))).await;
    ahead.assert_no_pending_message().await;
    let next = s.message(a, b, "after a reset").await;
    let frame = ahead.next_json().await;
    assert_eq!(frame["id"], next["id"]);
    assert_eq!(frame["seq"], 7);
}

async fn docs_are_served_offline(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let (status, doc) = s.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/users/",
        "/users/{user_id}",
        "/messages/",
        "/messages/recent/{user_id}",
        "/messages/read",
        "/ws/{user_id}",
        "/health",
        "/",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from OpenAPI"
        );
    }
    let response = s.http.get(s.url("/docs/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    assert!(html.contains("swagger"), "Swagger UI page");
    // `/docs` itself is the page (the original's URL), and every file it references loads.
    let response = s.http.get(s.url("/docs")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let page = response.text().await.unwrap();
    assert!(page.contains("swagger"), "Swagger UI page at /docs");
    let base = reqwest::Url::parse(&s.url("/docs/")).unwrap();
    assert!(page.contains("<base href=\"/docs/\">"), "{page}");
    let assets = referenced(&page);
    assert!(assets.len() >= 4, "{assets:?}");
    for asset in assets {
        let url = base.join(&asset).unwrap();
        let response = s.http.get(url.clone()).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert!(!response.bytes().await.unwrap().is_empty(), "{url}");
    }
    let init = s
        .http
        .get(s.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap();
    assert!(init.text().await.unwrap().contains("/openapi.json"));
    let redoc = s
        .http
        .get(s.url("/redoc"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(redoc.contains("/redoc/redoc.standalone.js") && redoc.contains("/openapi.json"));
    let script = s
        .http
        .get(s.url("/redoc/redoc.standalone.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    assert!(script.bytes().await.unwrap().len() > 100_000);
}

/// The `href` and `src` attribute values of an HTML page.
fn referenced(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in ["href=\"", "src=\""] {
        for (at, _) in html.match_indices(attribute) {
            let value = &html[at + attribute.len()..];
            if let Some(end) = value.find('"') {
                found.push(value[..end].to_owned());
            }
        }
    }
    found
}

/// `HEAD` on a GET route: GET's status and headers, and no body on the wire.
async fn head_is_get_without_a_body(kind: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_b, s) = setup(kind).await;
    let alice = id(&s.user(&name("head")).await);
    let raw = |method: &'static str, path: String| {
        let addr = s.addr;
        async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let request =
                format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            tokio::time::timeout(support::DEADLINE, stream.read_to_end(&mut answer))
                .await
                .expect("answered in time")
                .unwrap();
            let answer = String::from_utf8(answer).unwrap();
            let (head, body) = answer.split_once("\r\n\r\n").expect("a header block");
            let mut lines = head.lines();
            let status = lines.next().unwrap_or_default().to_owned();
            let mut headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_lowercase(), v.to_owned()))
                .filter(|(k, _)| !["date", "x-request-id"].contains(&k.as_str()))
                .collect();
            headers.sort();
            (status, headers, body.to_owned())
        }
    };
    for path in [
        "/openapi.json".to_owned(),
        format!("/users/{alice}"),
        "/users/0".to_owned(),
        "/users/abc".to_owned(),
        "/docs/swagger-ui.css".to_owned(),
    ] {
        let (get_status, get_headers, get_body) = raw("GET", path.clone()).await;
        let (status, headers, body) = raw("HEAD", path.clone()).await;
        assert_eq!(status, get_status, "{path}");
        assert_eq!(headers, get_headers, "{path}");
        assert!(!get_body.is_empty(), "{path}");
        assert_eq!(body, "", "{path}: no body");
    }
    // Sockets are GET only, and so is the route list for them.
    let response = s
        .http
        .head(s.url(&format!("/ws/{alice}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
}

async fn round_trip_is_byte_exact(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let a = s.user(&name("bytes")).await;
    let b_name = format!("名前{}", rand::random::<u16>());
    let b = s
        .post(
            "/users/",
            json!({"username": b_name, "display_name": "O'Brien \"<b>\" ; DROP TABLE users; --"}),
        )
        .await
        .1;
    assert_eq!(b["username"], b_name);
    assert_eq!(b["display_name"], "O'Brien \"<b>\" ; DROP TABLE users; --");
    let content = "'; DELETE FROM messages; -- <script>alert(1)</script> 🙂 \u{200b} \\n tab\tend";
    let m = s.message(id(&a), id(&b), content).await;
    assert_eq!(m["content"], content);
    let (_, history) = s.get(&format!("/messages/?user_id={}", id(&b))).await;
    assert_eq!(history[0]["content"], content);
}

/// Two servers (two nodes) hand out disjoint request ids: a random prefix each, then a counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_unique_across_servers() {
    let backends = Backends::new(Backend::Memory).await;
    let (a, b) = (
        TestServer::open(&backends).await,
        TestServer::open(&backends).await,
    );
    let request_id = |s: &TestServer| {
        let request = s.http.get(s.url("/health"));
        async move {
            let response = request.send().await.expect("answered");
            let id = response.headers()["x-request-id"]
                .to_str()
                .expect("ASCII")
                .to_owned();
            let (node, n) = id.split_once('-').expect("prefix-counter");
            assert_eq!(node.len(), 8, "{id}");
            u32::from_str_radix(node, 16).expect("hex prefix");
            u64::from_str_radix(n, 16).expect("hex counter");
            (node.to_owned(), id)
        }
    };
    let mut seen = std::collections::HashSet::new();
    let mut nodes = std::collections::HashMap::new();
    for _ in 0..20 {
        for (server, name) in [(&a, "a"), (&b, "b")] {
            let (node, id) = request_id(server).await;
            assert!(seen.insert(id.clone()), "{id} handed out twice");
            assert_eq!(
                nodes.entry(name).or_insert(node.clone()),
                &node,
                "one prefix per server"
            );
        }
    }
    assert_ne!(nodes["a"], nodes["b"], "the servers share a prefix");
}
