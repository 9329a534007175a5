//! The real-time protocol (API.md Part 3) on two nodes sharing PostgreSQL and Redis: resume
//! without loss, idempotent sends, typing, read receipts, presence (and its expiry when a node
//! dies without goodbye), and slow consumers.

mod support;

use minichat::server::AuthMode;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use support::{busy, name, read_stream, Backend, Backends, TcpProxy, TestServer, Ws, DEADLINE};

fn id(v: &Value) -> i64 {
    v["id"].as_i64().expect("id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_receiver_loses_nothing_across_nodes_and_rounds() {
    const ROUNDS: usize = 6;
    const SENDERS: usize = 3;
    const PER_SENDER: usize = 15;
    let backends = Backends::new(Backend::Shared).await;
    let nodes = [
        TestServer::start(busy(&backends)).await,
        TestServer::start(busy(&backends)).await,
    ];
    let receiver = id(&nodes[0].user(&name("rcv")).await);
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        senders.push(id(&nodes[i % 2].user(&name(&format!("snd{i}x"))).await));
    }
    let urls: Vec<String> = nodes.iter().map(|n| n.url("/messages/")).collect();

    let mut last_seq = 0;
    let mut seen = HashSet::new();
    let mut expected = 0;
    let mut connections = 0;
    for round in 0..ROUNDS {
        // Several senders at once, each alternating between the nodes.
        let mut tasks = Vec::new();
        for (k, &sender) in senders.iter().enumerate() {
            let http = nodes[0].http.clone();
            let urls = urls.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..PER_SENDER {
                    let body = json!({"sender_id": sender, "receiver_id": receiver, "content": format!("r{round} s{k} m{i}")});
                    let response = http.post(&urls[(i + k) % 2]).json(&body).send().await.expect("send");
                    assert_eq!(response.status(), 200);
                }
            }));
        }
        expected += SENDERS * PER_SENDER;
        // Meanwhile the receiver drops and comes back, alternating nodes, at random moments.
        let mut all_sent = false;
        loop {
            let node = &nodes[connections % 2];
            connections += 1;
            let mut ws =
                Ws::connect_ready(&node.ws_url(&format!("/ws/{receiver}?since={last_seq}"))).await;
            let budget = 1 + rand::random::<u32>() as usize % 12;
            read_stream(
                &mut ws,
                &mut last_seq,
                &mut seen,
                budget,
                Duration::from_millis(300),
            )
            .await;
            drop(ws);
            if !all_sent && tasks.iter().all(|t| t.is_finished()) {
                all_sent = true;
            }
            if all_sent && seen.len() == expected {
                break;
            }
            assert!(connections < 2000, "no progress");
        }
        for task in tasks {
            task.await.expect("sender");
        }
    }
    assert_eq!(seen.len(), ROUNDS * SENDERS * PER_SENDER);
    assert_eq!(last_seq as usize, seen.len(), "seqs are exactly 1..=n");
    // Exactly what storage holds for the receiver.
    let (_, history) = nodes[1]
        .get(&format!("/messages/?user_id={receiver}&limit=1000"))
        .await;
    let stored: HashSet<i64> = history.as_array().unwrap().iter().map(id).collect();
    assert_eq!(stored, seen);
    // And a last connection from scratch replays all of it, in order.
    let mut ws = Ws::connect_ready(&nodes[0].ws_url(&format!("/ws/{receiver}?since=0"))).await;
    let (mut replay_seq, mut replayed) = (0, HashSet::new());
    read_stream(
        &mut ws,
        &mut replay_seq,
        &mut replayed,
        usize::MAX,
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(replayed, seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_client_id_stores_one_message_over_rest_and_socket_on_either_node() {
    let backends = Backends::new(Backend::Shared).await;
    let (a, b) = (
        TestServer::open(&backends).await,
        TestServer::open(&backends).await,
    );
    let alice = id(&a.user(&name("ida")).await);
    let bob = id(&a.user(&name("idb")).await);
    let body =
        json!({"sender_id": alice, "receiver_id": bob, "content": "once", "client_id": "k-1"});
    let (status, first) = a.post("/messages/", body.clone()).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = b.post("/messages/", body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(again["id"], first["id"]);
    let mut ws = Ws::connect_ready(&b.ws_url(&format!("/ws/{alice}"))).await;
    ws.send_json(
        json!({"type": "message", "receiver_id": bob, "content": "once", "client_id": "k-1"}),
    )
    .await;
    let ack = ws.next_json().await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["message"]["id"], first["id"]);
    // The same key for something else is a conflict, not a silent overwrite.
    let (status, conflict) = b
        .post("/messages/", json!({"sender_id": alice, "receiver_id": bob, "content": "different", "client_id": "k-1"}))
        .await;
    assert_eq!(status, 409, "{conflict}");
    let (_, history) = a.get(&format!("/messages/?user_id={bob}")).await;
    assert_eq!(history.as_array().unwrap().len(), 1);
}

/// The next message event of `ws`, as `(content, client_id)` (`None`: no `client_id` key).
async fn next_message(ws: &mut Ws) -> (String, Option<String>) {
    let frame = ws.next_json().await;
    assert_eq!(frame["type"], "message", "{frame}");
    let client_id = frame.get("client_id").map(|c| {
        c.as_str()
            .unwrap_or_else(|| panic!("client_id is a string: {frame}"))
            .to_owned()
    });
    (
        frame["content"].as_str().expect("content").to_owned(),
        client_id,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_senders_own_events_carry_their_client_ids_and_the_receivers_none() {
    let backends = Backends::new(Backend::Shared).await;
    let (a, b) = (
        TestServer::open(&backends).await,
        TestServer::open(&backends).await,
    );
    let alice = id(&a.user(&name("cia")).await);
    let bob = id(&a.user(&name("cib")).await);
    // Alice has a socket on each node; bob is on the second.
    let mut sending = Ws::connect_ready(&a.ws_url(&format!("/ws/{alice}"))).await;
    let mut other = Ws::connect_ready(&b.ws_url(&format!("/ws/{alice}"))).await;
    let mut inbox = Ws::connect_ready(&b.ws_url(&format!("/ws/{bob}"))).await;
    for key in ["c-1", "c-2"] {
        sending
            .send_json(
                json!({"type": "message", "receiver_id": bob, "content": "ok", "client_id": key}),
            )
            .await;
        let ack = sending.next_json().await;
        assert_eq!(
            (&ack["type"], &ack["client_id"]),
            (&json!("ack"), &json!(key)),
            "{ack}"
        );
        assert_eq!(ack["message"]["client_id"], key, "{ack}");
    }
    // Without a client id, over REST: none on any copy.
    let (status, _) = a
        .post(
            "/messages/",
            json!({"sender_id": alice, "receiver_id": bob, "content": "ok"}),
        )
        .await;
    assert_eq!(status, 200);
    let own = |key: Option<&str>| ("ok".to_owned(), key.map(str::to_owned));
    let expected_own = [own(Some("c-1")), own(Some("c-2")), own(None)];
    for expected in &expected_own {
        assert_eq!(&next_message(&mut other).await, expected);
        assert_eq!(next_message(&mut inbox).await, own(None));
    }
    // The sending socket got acks (and the REST send), not echoes of its own sends.
    assert_eq!(next_message(&mut sending).await, own(None));
    sending.assert_no_pending_message().await;
    // Replayed after a reconnect, on either node: the same.
    let mut again = Ws::connect_ready(&b.ws_url(&format!("/ws/{alice}?since=0"))).await;
    let mut again_bob = Ws::connect_ready(&a.ws_url(&format!("/ws/{bob}?since=0"))).await;
    for expected in &expected_own {
        assert_eq!(&next_message(&mut again).await, expected);
        assert_eq!(next_message(&mut again_bob).await, own(None));
    }
    // REST history and recent messages keep their shape: no client ids.
    for path in [
        format!("/messages/?user_id={alice}"),
        format!("/messages/recent/{bob}"),
    ] {
        let (status, list) = a.get(&path).await;
        assert_eq!(status, 200, "{path}: {list}");
        let list = list
            .as_array()
            .or_else(|| list["messages"].as_array())
            .expect("a list");
        assert_eq!(list.len(), 3, "{path}");
        assert!(list.iter().all(|m| m.get("client_id").is_none()), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_receipts_and_presence_cross_nodes() {
    let backends = Backends::new(Backend::Shared).await;
    let (a, b) = (
        TestServer::open(&backends).await,
        TestServer::open(&backends).await,
    );
    let alice = id(&a.user(&name("ta")).await);
    let bob = id(&a.user(&name("tb")).await);
    let carol = id(&a.user(&name("tc")).await);

    // Carol (node A) watches Bob, who is offline and was never seen.
    let mut carol_ws = Ws::connect_ready(&a.ws_url(&format!("/ws/{carol}"))).await;
    carol_ws
        .send_json(json!({"type": "watch", "user_ids": [bob]}))
        .await;
    let now = carol_ws.next_json().await;
    assert_eq!(
        now,
        json!({"type": "presence", "user_id": bob, "online": false, "last_seen": null})
    );

    // Bob comes online on node B: Carol hears it on node A, and node A's REST says so.
    let mut bob_ws = Ws::connect_ready(&b.ws_url(&format!("/ws/{bob}"))).await;
    let online = carol_ws.next_json().await;
    assert_eq!(
        (
            online["type"].clone(),
            online["user_id"].clone(),
            online["online"].clone()
        ),
        (json!("presence"), json!(bob), json!(true))
    );
    let (_, user) = a.get(&format!("/users/{bob}")).await;
    assert_eq!(user["online"], true);

    // Typing from Alice on node A reaches Bob on node B, and is not stored.
    let mut alice_ws = Ws::connect_ready(&a.ws_url(&format!("/ws/{alice}"))).await;
    alice_ws
        .send_json(json!({"type": "typing", "receiver_id": bob}))
        .await;
    assert_eq!(
        bob_ws.next_json().await,
        json!({"type": "typing", "sender_id": alice})
    );

    // A message, then Bob's read receipt reaches Alice across nodes.
    let m = a.message(alice, bob, "did you read this?").await;
    assert_eq!(bob_ws.next_json().await["id"], m["id"]);
    // A REST send reaches the sender's own connections too.
    assert_eq!(alice_ws.next_json().await["id"], m["id"]);
    bob_ws
        .send_json(json!({"type": "read", "peer_id": alice, "up_to": m["id"]}))
        .await;
    assert_eq!(
        alice_ws.next_json().await,
        json!({"type": "read", "reader_id": bob, "conversation_id": m["conversation_id"], "up_to": m["id"]})
    );
    // A receipt never moves back, and only covers the peer's messages to the reader.
    let older = a.message(alice, bob, "older?").await;
    assert_eq!(bob_ws.next_json().await["id"], older["id"]);
    assert_eq!(alice_ws.next_json().await["id"], older["id"]);
    bob_ws
        .send_json(json!({"type": "read", "peer_id": alice, "up_to": older["id"]}))
        .await;
    assert_eq!(alice_ws.next_json().await["up_to"], older["id"]);
    bob_ws
        .send_json(json!({"type": "read", "peer_id": alice, "up_to": m["id"]}))
        .await;
    assert_eq!(
        alice_ws.next_json().await["up_to"],
        older["id"],
        "the mark stays at the newest"
    );
    // Stored: either side reads the marks back over REST (on either node), e.g. after a reload.
    let (_, marks) = b
        .get(&format!("/messages/read?user_id={bob}&chat_with={alice}"))
        .await;
    assert_eq!(
        marks,
        json!({"read_up_to": older["id"], "peer_read_up_to": null})
    );
    let (_, marks) = a
        .get(&format!("/messages/read?user_id={alice}&chat_with={bob}"))
        .await;
    assert_eq!(
        marks,
        json!({"read_up_to": null, "peer_read_up_to": older["id"]})
    );
    let mine = a.message(bob, alice, "bob's own").await;
    assert_eq!(alice_ws.next_json().await["id"], mine["id"]);
    assert_eq!(bob_ws.next_json().await["id"], mine["id"]);
    bob_ws
        .send_json(json!({"type": "read", "peer_id": alice, "up_to": mine["id"]}))
        .await;
    let error = bob_ws.next_json().await;
    assert_eq!(
        (error["type"].clone(), error["status"].clone()),
        (json!("error"), json!(404)),
        "{error}"
    );

    // Bob leaves: Carol hears he went offline, with when he was last seen.
    drop(bob_ws);
    let offline = carol_ws.next_json().await;
    assert_eq!(offline["online"], false, "{offline}");
    assert!(offline["last_seen"].is_string());
    let (_, user) = b.get(&format!("/users/{bob}")).await;
    assert_eq!(user["online"], false);
    assert!(user["last_seen"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_without_goodbye_takes_its_users_offline_by_itself() {
    let backends = Backends::new(Backend::Shared).await;
    let ttl = Duration::from_secs(1);
    let mut settings = backends.settings(AuthMode::Off);
    settings.chat.presence_ttl = ttl;
    let healthy = TestServer::start(settings.clone()).await;
    // The doomed node reaches Redis through a proxy that the test cuts.
    let proxy = TcpProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let mut doomed_settings = settings.clone();
    doomed_settings.chat.redis_url = Some(proxy.url("redis"));
    let doomed = TestServer::start(doomed_settings).await;

    let dave = id(&healthy.user(&name("dave")).await);
    let _dave_ws = Ws::connect_ready(&doomed.ws_url(&format!("/ws/{dave}"))).await;
    let (_, user) = healthy.get(&format!("/users/{dave}")).await;
    assert_eq!(user["online"], true);

    // The node loses Redis (as if it had crashed): no goodbye, no more heartbeats.
    proxy.cut();
    support::eventually(DEADLINE, "dave to go offline by expiry", || async {
        let (_, user) = healthy.get(&format!("/users/{dave}")).await;
        (user["online"] == false).then_some(())
    })
    .await;
    let (_, user) = healthy.get(&format!("/users/{dave}")).await;
    assert!(
        user["last_seen"].is_string(),
        "last seen at the last heartbeat: {user}"
    );

    // When the node is back, its heartbeats bring dave back online.
    proxy.restore();
    support::eventually(DEADLINE, "dave to be online again", || async {
        let (_, user) = healthy.get(&format!("/users/{dave}")).await;
        (user["online"] == true).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_sockets_are_pinged_and_dead_ones_closed() {
    let backends = Backends::new(Backend::Memory).await;
    let mut settings = backends.settings(AuthMode::Off);
    settings.limits.ws_ping_interval = Duration::from_secs(1);
    let s = TestServer::start(settings).await;
    let live = id(&s.user(&name("live")).await);
    let dead = id(&s.user(&name("dead")).await);

    // A live client answers pings (tungstenite does, as it reads) and stays connected.
    let mut live_ws = Ws::connect_ready(&s.ws_url(&format!("/ws/{live}"))).await;
    let mut pings = 0;
    while pings < 3 {
        match live_ws.next_frame().await {
            Some(tokio_tungstenite::tungstenite::Message::Ping(_)) => pings += 1,
            Some(tokio_tungstenite::tungstenite::Message::Close(frame)) => {
                panic!("live socket closed: {frame:?}")
            }
            Some(_) => {}
            None => panic!("live socket dropped"),
        }
    }
    live_ws.assert_no_pending_message().await;

    // A dead one: after the greeting it neither reads at the WebSocket layer nor answers. The
    // test reads the raw bytes underneath, which answers nothing, until the server hangs up.
    let mut dead_ws = Ws::connect_ready(&s.ws_url(&format!("/ws/{dead}"))).await;
    let raw = match dead_ws.stream.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp,
        _ => unreachable!("plain TCP"),
    };
    let mut bytes = Vec::new();
    tokio::time::timeout(
        DEADLINE,
        tokio::io::AsyncReadExt::read_to_end(raw, &mut bytes),
    )
    .await
    .expect("the server closes a dead socket")
    .expect("read");
    // Server frames are unmasked: a ping (0x89) first, then a close (0x88) with code 1001.
    assert!(bytes.first() == Some(&0x89), "pinged first: {bytes:?}");
    let close = bytes
        .windows(4)
        .position(|w| w[0] == 0x88 && w[2..4] == 1001u16.to_be_bytes());
    assert!(close.is_some(), "closed with 1001: {bytes:?}");
}

/// A broker that holds back the events of its first publish until the next one has gone
/// out: events published out of seq order, deterministically.
struct OutOfOrder {
    inner: minichat_core::broker::LocalBroker,
    held: std::sync::Mutex<Option<Vec<minichat_core::broker::Delivery>>>,
    first: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl minichat_core::broker::Broker for OutOfOrder {
    async fn publish(
        &self,
        deliveries: &[minichat_core::broker::Delivery],
    ) -> minichat_core::Result<Vec<bool>> {
        if !self.first.swap(true, std::sync::atomic::Ordering::SeqCst) {
            *self.held.lock().unwrap() = Some(deliveries.to_vec());
            return Ok(vec![true; deliveries.len()]);
        }
        let reached = self.inner.publish(deliveries).await?;
        let held = self.held.lock().unwrap().take();
        if let Some(held) = held {
            self.inner.publish(&held).await?;
        }
        Ok(reached)
    }
    async fn user_arrived(&self, user: i64, first_here: bool) -> minichat_core::Result<bool> {
        self.inner.user_arrived(user, first_here).await
    }
    async fn user_left(&self, user: i64) -> minichat_core::Result<bool> {
        self.inner.user_left(user).await
    }
    async fn presence(
        &self,
        users: &[i64],
    ) -> minichat_core::Result<Vec<minichat_core::broker::ClusterPresence>> {
        self.inner.presence(users).await
    }
    async fn publish_presence(
        &self,
        user: i64,
        event: &minichat_core::Event,
    ) -> minichat_core::Result<()> {
        self.inner.publish_presence(user, event).await
    }
    fn kind(&self) -> minichat_core::BackendKind {
        minichat_core::BackendKind::Local
    }
    async fn check(&self) -> minichat_core::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_out_of_order_reach_every_socket_in_seq_order_exactly_once() {
    use minichat_core::{cache::MemoryCache, storage::MemoryStorage, Chat, Hub};
    let hub = Hub::default();
    let broker = OutOfOrder {
        inner: minichat_core::broker::LocalBroker::new(hub.clone()),
        held: std::sync::Mutex::new(None),
        first: std::sync::atomic::AtomicBool::new(false),
    };
    let chat = Chat::from_parts(
        std::sync::Arc::new(MemoryStorage::new()),
        std::sync::Arc::new(MemoryCache::default()),
        std::sync::Arc::new(broker),
        hub,
    );
    let backends = Backends::new(Backend::Memory).await;
    let server = minichat::server::Server::bind_with(
        backends.settings(AuthMode::Off),
        std::sync::Arc::new(chat),
    )
    .await
    .expect("bind")
    .spawn();
    let s = TestServer::over(server);
    let alice = id(&s.user(&name("ooa")).await);
    let bob = id(&s.user(&name("oob")).await);
    let mut plain = Ws::connect_ready(&s.ws_url(&format!("/ws/{bob}"))).await;
    let mut resuming = Ws::connect_ready(&s.ws_url(&format!("/ws/{bob}?since=0"))).await;

    // The first message's events are held back; the second's go out first.
    let first = s.message(alice, bob, "first").await;
    let second = s.message(alice, bob, "second").await;
    for ws in [&mut plain, &mut resuming] {
        let (mut last_seq, mut seen) = (0, HashSet::new());
        read_stream(ws, &mut last_seq, &mut seen, 2, DEADLINE).await;
        assert_eq!(
            seen,
            HashSet::from([id(&first), id(&second)]),
            "in order, nothing lost"
        );
        // The held-back copy of the first arrived late and was dropped as already sent.
        ws.assert_no_pending_message().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_more_than_the_limit_is_refused_with_an_error_frame() {
    let backends = Backends::new(Backend::Memory).await;
    let server = TestServer::open(&backends).await;
    let carol = id(&server.user(&name("wc")).await);
    let bob = id(&server.user(&name("wb")).await);
    let mut ws = Ws::connect_ready(&server.ws_url(&format!("/ws/{carol}"))).await;
    let too_many: Vec<i64> = (1_000_000..1_001_001).collect();
    ws.send_json(json!({"type": "watch", "user_ids": too_many}))
        .await;
    assert_eq!(
        ws.next_json().await,
        json!({"type": "error", "status": 422, "detail": "A connection may watch at most 1000 users"})
    );
    // Nothing was watched, and the connection stays usable.
    ws.send_json(json!({"type": "watch", "user_ids": [bob]}))
        .await;
    let now = ws.next_json().await;
    assert_eq!(
        (now["type"].clone(), now["user_id"].clone()),
        (json!("presence"), json!(bob))
    );
}
