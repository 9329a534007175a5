//! Fan-out over a Redis Cluster, with real processes: a throw-away cluster of 3 masters with a
//! replica each (`test_support::ThrowawayRedisCluster`), two `minichat-server` processes on one
//! test database with `REDIS_URL` the cluster's comma-separated seed list, WebSocket receivers
//! on one node and REST senders on the other. Every user's channel carries the user id as a
//! hash tag (`<prefix>user:{42}`), so it lives on the shard of the slot of "42": the tests pick
//! users by that slot, so that their channels are on different masters.
//!
//! - Delivery is exactly once, in order, with gapless seqs, across nodes and shards.
//! - Presence, typing and the recent-messages cache work across nodes and shards, each user's
//!   keys on that user's shard.
//! - A master killed mid-traffic, the one serving a connected receiver's channel: the cluster
//!   promotes its replica by itself; sends keep being acknowledged all along (fan-out is not
//!   what a send waits for), live delivery on the receiver's open socket resumes by itself, a
//!   reconnect with `since` recovers every acknowledged message exactly once, and the killed
//!   node, restarted, rejoins without getting in the way of delivery.

mod support;

use minichat_core::test_support::{free_port, key_slot, node_connection, ThrowawayRedisCluster};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::server_process::ServerProcess;
use support::{eventually, read_stream, Backend, Backends, Ws, DEADLINE};

/// How long one REST send may take: longer than [`DEADLINE`], since a send made while a master
/// is down may wait for the cluster (it must still succeed).
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Two server processes on one test database and one throw-away Redis Cluster. The servers
/// are declared first, so they are stopped before the database and the cluster go.
struct Setup {
    a: ServerProcess,
    b: ServerProcess,
    http: reqwest::Client,
    prefix: String,
    _backends: Backends,
    cluster: ThrowawayRedisCluster,
}

impl Setup {
    async fn start(label: &str) -> Setup {
        let started = Instant::now();
        let cluster = ThrowawayRedisCluster::start(3, 1).await;
        let backends = Backends::new(Backend::Shared).await;
        let database_url = backends
            .database
            .as_ref()
            .expect("a shared backend has a database")
            .url()
            .to_owned();
        let prefix = backends.redis_prefix.clone();
        let redis_url = cluster.url();
        let env = [
            ("DATABASE_URL", database_url.as_str()),
            ("REDIS_URL", redis_url.as_str()),
            ("MINICHAT_REDIS_PREFIX", prefix.as_str()),
            // The broker's recoveries are logged at info: shown with the log of a failure.
            ("RUST_LOG", "warn,minichat_core=info"),
        ];
        let http = reqwest::Client::builder()
            .timeout(SEND_TIMEOUT)
            .build()
            .expect("client");
        // One after the other: the first applies the migrations to the fresh database.
        let mut a = ServerProcess::start(&format!("{label}-a"), free_port(), &env);
        a.wait_healthy(&http).await;
        let mut b = ServerProcess::start(&format!("{label}-b"), free_port(), &env);
        b.wait_healthy(&http).await;
        eprintln!(
            "{label}: cluster {redis_url} and two nodes up in {:?}",
            started.elapsed()
        );
        Setup {
            a,
            b,
            http,
            prefix,
            _backends: backends,
            cluster,
        }
    }

    async fn user(&self) -> i64 {
        self.a.create_user(&self.http, "shard").await
    }

    /// Users, `per_master` of them on each master (by the slot of their id, the hash tag of
    /// their channel), created until there are enough.
    async fn users_on_each_master(&self, per_master: usize) -> BTreeMap<u16, Vec<i64>> {
        let masters = self.cluster.masters().await;
        let mut by_master: BTreeMap<u16, Vec<i64>> =
            masters.iter().map(|&m| (m, Vec::new())).collect();
        for _ in 0..500 {
            if by_master.values().all(|users| users.len() >= per_master) {
                return by_master;
            }
            let user = self.user().await;
            let master = self.master_of_user(user).await;
            let users = by_master.get_mut(&master).expect("a known master");
            if users.len() < per_master {
                users.push(user);
            }
        }
        panic!("500 users and still not {per_master} on each master: {by_master:?}");
    }

    /// The master serving `user`'s channel now.
    async fn master_of_user(&self, user: i64) -> u16 {
        self.cluster
            .master_of_slot(key_slot(user.to_string().as_bytes()))
            .await
    }

    /// `user`'s channel, as the core names it.
    fn channel(&self, user: i64) -> String {
        format!("{}user:{{{user}}}", self.prefix)
    }

    /// Waits until `user`'s channel has a subscriber on its shard, the master of its slot or
    /// a replica of it (`PUBSUB SHARDNUMSUB` there): fan-out really is sharded, and on the
    /// right shard.
    async fn wait_subscribed_on_its_shard(&self, user: i64) {
        let master = self.master_of_user(user).await;
        let mut shard = vec![master];
        shard.extend(self.cluster.replicas_of(master).await);
        let channel = self.channel(user);
        eventually(
            DEADLINE,
            &format!("a subscriber of {channel} on its shard {shard:?}"),
            || async {
                let mut count = 0;
                for &node in &shard {
                    let Ok(mut conn) = node_connection(node).await else {
                        continue;
                    };
                    let answer: Result<(String, i64), _> = redis::cmd("PUBSUB")
                        .arg("SHARDNUMSUB")
                        .arg(&channel)
                        .query_async(&mut conn)
                        .await;
                    count += answer.map_or(0, |(_, n)| n);
                }
                (count >= 1).then_some(())
            },
        )
        .await;
    }
}

impl Setup {
    /// Whether `key` exists on the master of `user`'s slot, asked there directly: a key in
    /// another slot would answer `MOVED`, which fails the test.
    async fn exists_on_users_shard(&self, user: i64, key: &str) -> bool {
        let master = self.master_of_user(user).await;
        let mut conn = node_connection(master)
            .await
            .expect("connect to the master");
        let found: i64 = redis::cmd("EXISTS")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("EXISTS {key} on {master}, the master of {user}: {e}"));
        found == 1
    }
}

/// Sends over REST on the node at `base`; the stored message. Any answer but 200 (or 201)
/// fails the test.
async fn send(http: &reqwest::Client, base: &str, from: i64, to: i64, content: &str) -> Value {
    let response = http
        .post(format!("{base}/messages/"))
        .json(&json!({"sender_id": from, "receiver_id": to, "content": content}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("send {content}: the server did not answer: {e}"));
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(
        status == 200 || status == 201,
        "send {content}: {status} {body}"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_is_exactly_once_and_in_order_across_nodes_and_shards() {
    const ROUNDS: usize = 10;
    let started = Instant::now();
    let setup = Setup::start("cluster-once").await;
    let by_master = setup.users_on_each_master(2).await;
    let senders = [setup.user().await, setup.user().await];

    // On every shard, one receiver on node B fed through node A, and one the other way round.
    struct Lane {
        receiver: i64,
        socket: Ws,
        post_on: String,
        sent: Vec<Value>,
    }
    let mut lanes = Vec::new();
    for users in by_master.values() {
        for (k, &receiver) in users.iter().enumerate() {
            let (listen, post) = if k == 0 {
                (&setup.b, &setup.a)
            } else {
                (&setup.a, &setup.b)
            };
            let socket = Ws::connect_ready(&listen.ws_url(&format!("/ws/{receiver}"))).await;
            setup.wait_subscribed_on_its_shard(receiver).await;
            lanes.push(Lane {
                receiver,
                socket,
                post_on: post.base(),
                sent: Vec::new(),
            });
        }
    }
    let shards: HashSet<u16> = by_master.keys().copied().collect();
    assert_eq!(shards.len(), 3, "receivers on three masters");

    for round in 0..ROUNDS {
        for lane in &mut lanes {
            let from = senders[round % 2];
            let content = format!("to {} round {round}", lane.receiver);
            let message = send(&setup.http, &lane.post_on, from, lane.receiver, &content).await;
            assert_eq!(
                message["delivered_via_websocket"], true,
                "{content}: {message}"
            );
            lane.sent.push(message);
        }
    }
    for lane in &mut lanes {
        for (k, expected) in lane.sent.iter().enumerate() {
            let frame = lane.socket.next_json().await;
            assert_eq!(frame["type"], "message", "{frame}");
            assert_eq!(
                frame["id"], expected["id"],
                "user {}: in order, once, nothing missing",
                lane.receiver
            );
            assert_eq!(
                frame["seq"],
                k as i64 + 1,
                "user {}: gapless",
                lane.receiver
            );
        }
        lane.socket.assert_no_pending_message().await;
    }
    eprintln!(
        "cluster-once: {} messages to {} receivers on 3 shards; whole test {:?}",
        ROUNDS * lanes.len(),
        lanes.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_typing_and_recent_messages_work_on_the_cluster() {
    let started = Instant::now();
    let setup = Setup::start("cluster-presence").await;
    let by_master = setup.users_on_each_master(1).await;
    let mut users = by_master.values().map(|u| u[0]);
    let (carol, bob, alice) = (
        users.next().expect("a user"),
        users.next().expect("a user"),
        users.next().expect("a user"),
    );

    // Carol (node A) watches Bob, on another shard, offline and never seen.
    let mut carol_ws = Ws::connect_ready(&setup.a.ws_url(&format!("/ws/{carol}"))).await;
    carol_ws
        .send_json(json!({"type": "watch", "user_ids": [bob]}))
        .await;
    assert_eq!(
        carol_ws.next_json().await,
        json!({"type": "presence", "user_id": bob, "online": false, "last_seen": null})
    );
    // Bob comes online on node B: Carol hears it; his presence record is on his shard.
    let mut bob_ws = Ws::connect_ready(&setup.b.ws_url(&format!("/ws/{bob}"))).await;
    let online = carol_ws.next_json().await;
    assert_eq!(
        (&online["type"], &online["user_id"], &online["online"]),
        (&json!("presence"), &json!(bob), &json!(true)),
        "{online}"
    );
    let online_key = format!("{}online:{{{bob}}}", setup.prefix);
    assert!(
        setup.exists_on_users_shard(bob, &online_key).await,
        "{online_key}"
    );

    // Typing from Alice on node A reaches Bob on node B.
    let mut alice_ws = Ws::connect_ready(&setup.a.ws_url(&format!("/ws/{alice}"))).await;
    alice_ws
        .send_json(json!({"type": "typing", "receiver_id": bob}))
        .await;
    assert_eq!(
        bob_ws.next_json().await,
        json!({"type": "typing", "sender_id": alice})
    );

    // Messages, then the recent list (the cache, on Bob's shard) on the other node.
    let mut sent = Vec::new();
    for i in 0..3 {
        let message = send(&setup.http, &setup.a.base(), alice, bob, &format!("r{i}")).await;
        assert_eq!(bob_ws.next_json().await["id"], message["id"]);
        sent.push(message["id"].clone());
    }
    let response = setup
        .http
        .get(format!("{}/messages/recent/{bob}", setup.b.base()))
        .send()
        .await
        .expect("recent messages");
    assert_eq!(response.status().as_u16(), 200);
    let recent: Value = response.json().await.expect("JSON");
    let ids: Vec<Value> = recent["messages"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    sent.reverse();
    assert_eq!(ids, sent, "newest first");
    let recent_key = format!("{}recent:{{{bob}}}", setup.prefix);
    assert!(
        setup.exists_on_users_shard(bob, &recent_key).await,
        "{recent_key}"
    );

    // Bob leaves: Carol hears he went offline, with when he was last seen.
    drop(bob_ws);
    let offline = carol_ws.next_json().await;
    assert_eq!(offline["online"], false, "{offline}");
    assert!(offline["last_seen"].is_string(), "{offline}");
    drop(alice_ws);
    eprintln!("cluster-presence: whole test {:?}", started.elapsed());
}

/// What the concurrent senders share.
#[derive(Default)]
struct Traffic {
    next: AtomicUsize,
    stop: AtomicBool,
    /// (message id, when acknowledged, how long the send took)
    acks: Mutex<Vec<(i64, Instant, Duration)>>,
}

impl Traffic {
    fn acked(&self) -> usize {
        self.acks.lock().expect("acks").len()
    }
}

/// What the receiver's open socket got: (message id, seq) of each message frame, in order.
type Frames = Arc<Mutex<Vec<(i64, i64)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_and_delivery_resumes_with_nothing_lost() {
    const SENDERS: usize = 4;
    const BEFORE: usize = 40;
    let started = Instant::now();
    let mut setup = Setup::start("cluster-failover").await;
    let seeds = setup.cluster.seed_ports();
    let doomed = seeds[0];
    let receiver = setup.users_on_each_master(1).await[&doomed][0];
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        senders.push(setup.user().await);
    }

    // The receiver's socket on node B, read all along by a task of its own.
    let mut live = Ws::connect_ready(&setup.b.ws_url(&format!("/ws/{receiver}"))).await;
    setup.wait_subscribed_on_its_shard(receiver).await;
    let frames: Frames = Arc::default();
    let reader = tokio::spawn({
        let frames = frames.clone();
        async move {
            use futures_util::StreamExt;
            while let Some(Ok(frame)) = live.stream.next().await {
                let tokio_tungstenite::tungstenite::Message::Text(text) = frame else {
                    continue;
                };
                let frame: Value = serde_json::from_str(&text).expect("JSON frame");
                if frame["type"] == "message" {
                    let id = frame["id"].as_i64().expect("id");
                    let seq = frame["seq"].as_i64().expect("seq");
                    frames.lock().expect("frames").push((id, seq));
                }
            }
        }
    });

    // Concurrent senders, all through node A, so that what reaches the socket on node B
    // comes through the cluster (or is filled in from storage behind an event that did);
    // every send must be acknowledged.
    let traffic = Arc::new(Traffic::default());
    let tasks: Vec<_> = senders
        .iter()
        .map(|&sender| {
            let (http, base, traffic) = (setup.http.clone(), setup.a.base(), traffic.clone());
            tokio::spawn(async move {
                while !traffic.stop.load(Ordering::SeqCst) {
                    let k = traffic.next.fetch_add(1, Ordering::SeqCst);
                    let began = Instant::now();
                    let message = send(&http, &base, sender, receiver, &format!("m{k}")).await;
                    let id = message["id"].as_i64().expect("the stored message's id");
                    let at = Instant::now();
                    traffic
                        .acks
                        .lock()
                        .expect("acks")
                        .push((id, at, at - began));
                }
            })
        })
        .collect();
    let acked = |count: usize, what: &'static str| {
        let traffic = traffic.clone();
        async move {
            eventually(Duration::from_secs(30), what, || async {
                (traffic.acked() >= count).then_some(())
            })
            .await
        }
    };
    acked(BEFORE, "the sends before the kill").await;

    // The master of the receiver's channel dies; the cluster promotes its replica.
    assert_eq!(setup.master_of_user(receiver).await, doomed);
    let replica = setup.cluster.replicas_of(doomed).await;
    let killed = Instant::now();
    setup.cluster.kill(doomed);
    let acked_at_kill = traffic.acked();
    setup.cluster.wait_until_ok().await;
    let failed_over = Instant::now();
    let acked_at_failover = traffic.acked();
    let promoted = setup.master_of_user(receiver).await;
    assert_eq!(vec![promoted], replica, "its replica took over");
    // Sends go on: more are acknowledged than were in flight at the kill (those may each
    // have waited for the backend timeout, longer than the failover took).
    acked(acked_at_kill + SENDERS + 1, "the sends after the kill").await;

    // Live delivery on the open socket resumes by itself: a message acknowledged after the
    // failover arrives on it.
    let newest_before = traffic
        .acks
        .lock()
        .expect("acks")
        .iter()
        .map(|a| a.0)
        .max()
        .expect("acks");
    eventually(
        Duration::from_secs(30),
        "live delivery to resume on the open socket",
        || async {
            frames
                .lock()
                .expect("frames")
                .iter()
                .any(|&(id, _)| id > newest_before)
                .then_some(())
        },
    )
    .await;
    let resumed = Instant::now();
    // Both nodes say Redis is fine again.
    for node in [&setup.a, &setup.b] {
        let url = format!("{}/health", node.base());
        let mut last = Value::Null;
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let response = setup.http.get(&url).send().await.expect("/health");
            let status = response.status().as_u16();
            last = response.json().await.unwrap_or(last);
            if status == 200 {
                break;
            }
            assert!(
                Instant::now() < until,
                "node {} not healthy 30 s after the failover: {status} {last}",
                node.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let healthy = Instant::now();
    // Its channel is subscribed on the shard's new master (or its replica) now.
    setup.wait_subscribed_on_its_shard(receiver).await;
    traffic.stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("a sender failed");
    }
    let acks = std::mem::take(&mut *traffic.acks.lock().expect("acks"));
    assert_eq!(
        acks.len(),
        traffic.next.load(Ordering::SeqCst),
        "every send acknowledged"
    );
    let acked_ids: HashSet<i64> = acks.iter().map(|a| a.0).collect();
    let slowest = acks.iter().map(|a| a.2).max().expect("acks");
    let during = acks
        .iter()
        .filter(|a| a.1 > killed && a.1 < failed_over)
        .count();

    // What the open socket got: each message at most once, in seq order, only acknowledged
    // ones (it may have missed some while the shard was down: `since` is for those).
    let live_frames = frames.lock().expect("frames").clone();
    let mut seen = HashSet::new();
    for pair in live_frames.windows(2) {
        assert!(pair[0].1 < pair[1].1, "live seqs in order: {pair:?}");
    }
    for &(id, _) in &live_frames {
        assert!(
            seen.insert(id),
            "message {id} delivered twice on the open socket"
        );
        assert!(
            acked_ids.contains(&id),
            "message {id} was never acknowledged"
        );
    }
    // The gapless start of what it got, from which a reconnect resumes.
    let contiguous = live_frames
        .iter()
        .enumerate()
        .take_while(|&(k, &(_, seq))| seq == k as i64 + 1)
        .count();

    // A reconnect with `since` on the other node recovers the rest, exactly once, gapless.
    let mut last_seq = contiguous as i64;
    let mut recovered: HashSet<i64> = live_frames[..contiguous].iter().map(|f| f.0).collect();
    let mut again =
        Ws::connect_ready(&setup.a.ws_url(&format!("/ws/{receiver}?since={last_seq}"))).await;
    let wanted = acks.len() - contiguous;
    let read = read_stream(
        &mut again,
        &mut last_seq,
        &mut recovered,
        wanted,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        read, wanted,
        "the reconnect recovers every acknowledged message"
    );
    assert_eq!(recovered, acked_ids);
    assert_eq!(last_seq, acks.len() as i64, "seqs 1..=n");
    again.assert_no_pending_message().await;
    // From scratch, on node B: all of it.
    let (mut replay_seq, mut replayed) = (0, HashSet::new());
    let mut replay = Ws::connect_ready(&setup.b.ws_url(&format!("/ws/{receiver}?since=0"))).await;
    read_stream(
        &mut replay,
        &mut replay_seq,
        &mut replayed,
        acks.len(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(replayed, acked_ids);
    drop(replay);

    // The killed node comes back (as the replica of its replacement). Delivery through node A
    // still reaches the open socket on node B live: sent until one arrives (a node may take a
    // moment to trust Redis again, and sends meanwhile reach its own sockets only); and the
    // reconnected socket on node A gets every one of them, in order.
    setup.cluster.restart(doomed).await;
    assert_eq!(setup.cluster.replicas_of(promoted).await, vec![doomed]);
    let until = Instant::now() + Duration::from_secs(30);
    let mut after = Vec::new();
    'live: loop {
        assert!(
            Instant::now() < until,
            "live delivery to the open socket did not come back after the restart"
        );
        let content = format!("after the restart {}", after.len());
        let message = send(&setup.http, &setup.a.base(), senders[0], receiver, &content).await;
        assert_eq!(message["delivered_via_websocket"], true, "{message}");
        let id = message["id"].as_i64().expect("id");
        after.push(id);
        let wait = Instant::now() + Duration::from_millis(500);
        while Instant::now() < wait {
            if frames.lock().expect("frames").iter().any(|f| f.0 == id) {
                break 'live;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let read = read_stream(
        &mut again,
        &mut last_seq,
        &mut recovered,
        after.len(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(read, after.len(), "the reconnected socket gets them all");
    assert!(after.iter().all(|id| recovered.contains(id)));
    assert_eq!(last_seq, (acks.len() + after.len()) as i64, "gapless");
    reader.abort();

    eprintln!(
        "cluster-failover: {} sends acked ({acked_at_kill} at the kill, {acked_at_failover} at \
         the failover, {during} while it lasted), slowest send {slowest:?}; failover {:?}, \
         live delivery back {:?} after it, both nodes healthy {:?} after it; open socket got {} \
         messages ({contiguous} gapless from 1); {} sends after the restart until one arrived \
         live; whole test {:?}",
        acks.len(),
        failed_over - killed,
        resumed - failed_over,
        healthy - failed_over,
        live_frames.len(),
        after.len(),
        started.elapsed()
    );
}
