//! The Redis cache and broker against a real Redis.
//!
//! Most tests use the shared Redis at 127.0.0.1:6379 (override with `MINICHAT_TEST_REDIS_URL`),
//! each under a prefix of its own, deleting its keys at the end; they never flush, stop or
//! reconfigure that server. The fault test starts a throw-away `redis-server` on a free port so
//! that it can kill and restart it. Every wait is bounded by a deadline; nothing relies on a
//! fixed sleep to be right.

use bytes::Bytes;
use minichat_core::broker::{Broker, Delivery, RedisBroker};
use minichat_core::cache::{RecentCache, RedisCache, CACHE_CAPACITY, CACHE_TTL};
use minichat_core::model::{now, MessageType};
use minichat_core::test_support::{
    delete_redis_prefix, free_port, unique_redis_prefix, ThrowawayRedis,
};
use minichat_core::{
    Backend, ConnectionId, Error, Event, Hub, Message, RedisConfig, Subscription, UserId,
};
use std::time::Duration;
use tokio::time::{sleep, timeout, Instant};

const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";

fn shared_redis() -> String {
    std::env::var("MINICHAT_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS.into())
}

fn config(url: &str, prefix: &str) -> RedisConfig {
    RedisConfig {
        url: url.into(),
        prefix: prefix.into(),
        presence_ttl: minichat_core::broker::PRESENCE_TTL,
        timeout: minichat_core::DEFAULT_BACKEND_TIMEOUT,
    }
}

/// Deletes every key under a prefix when dropped, also when the test panics.
struct Cleanup {
    url: String,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        delete_redis_prefix(&self.url, &self.prefix);
    }
}

async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis URL")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("tests need Redis at {url}: {e}"))
}

/// A message as the cache receives it: its receiver's frame (the message plus its seq).
fn frame(message: &Message) -> Bytes {
    minichat_core::event::message_event(message, message.id).payload
}

fn message(id: i64, receiver: UserId) -> Message {
    Message {
        id,
        sender_id: 1_000_000,
        sender_username: "sender".into(),
        receiver_id: Some(receiver),
        conversation_id: 1,
        content: format!("message {id}"),
        timestamp: now(),
        kind: MessageType::Message,
    }
}

fn event(seq: Option<i64>, text: &str) -> Event {
    Event {
        seq,
        payload: Bytes::from(format!(r#"{{"type":"message","content":"{text}"}}"#)),
    }
}

fn delivery(user: UserId, exclude: Option<ConnectionId>, event: &Event) -> Delivery {
    Delivery {
        user,
        exclude,
        event: event.clone(),
    }
}

/// The next event of `sub`, failing the test if none comes within 5 s.
async fn next(sub: &mut Subscription) -> Event {
    match timeout(Duration::from_secs(5), sub.recv()).await {
        Ok(Ok(event)) => event,
        Ok(Err(closed)) => panic!("subscription of user {} closed: {closed:?}", sub.user()),
        Err(_) => panic!("no event for user {} within 5 s", sub.user()),
    }
}

/// Publishes `marker` to `user` and asserts it is the next thing `subs` receive: whatever was
/// published before it arrived exactly as already asserted, and nothing else.
async fn assert_next_is_marker(broker: &RedisBroker, user: UserId, subs: &mut [&mut Subscription]) {
    let marker = event(None, &format!("marker for {user}"));
    broker
        .publish(&[delivery(user, None, &marker)])
        .await
        .expect("publish");
    for sub in subs.iter_mut() {
        assert_eq!(
            next(sub).await,
            marker,
            "unexpected event before the marker"
        );
    }
}

async fn numsub(conn: &mut redis::aio::MultiplexedConnection, channel: &str) -> i64 {
    let reply: (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(conn)
        .await
        .expect("PUBSUB NUMSUB");
    reply.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_keeps_the_newest_hundred_newest_first_with_expiry() {
    let url = shared_redis();
    let prefix = unique_redis_prefix();
    let _cleanup = Cleanup {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let cache = RedisCache::connect(&config(&url, &prefix))
        .await
        .expect("connect");
    assert_eq!(cache.kind(), minichat_core::BackendKind::Redis);
    cache.check().await.expect("check");

    assert_eq!(cache.recent(1, 50).await.expect("recent"), None, "cold");

    let sent: Vec<Message> = (1..=120).map(|id| message(id, 1)).collect();
    for m in &sent {
        cache.push(1, &frame(m)).await.expect("push");
    }
    cache.push(2, &frame(&message(500, 2))).await.expect("push");

    let recent = cache.recent(1, 50).await.expect("recent").expect("warm");
    let expected: Vec<Message> = sent.iter().rev().take(50).cloned().collect();
    assert_eq!(recent, expected, "the newest 50, newest first, intact");

    let all = cache.recent(1, 1000).await.expect("recent").expect("warm");
    assert_eq!(all.len(), CACHE_CAPACITY);
    assert_eq!(all.last().map(|m| m.id), Some(21));

    let mut conn = admin(&url).await;
    let key = format!("{prefix}recent:{{1}}");
    let len: i64 = redis::cmd("LLEN")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("LLEN");
    assert_eq!(len, CACHE_CAPACITY as i64);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(
        ttl > 0 && ttl <= CACHE_TTL.as_millis() as i64,
        "PTTL {ttl} out of range"
    );

    // Another receiver's list is its own.
    let other = cache.recent(2, 50).await.expect("recent").expect("warm");
    assert_eq!(other.iter().map(|m| m.id).collect::<Vec<_>>(), vec![500]);
    assert_eq!(cache.recent(3, 50).await.expect("recent"), None);

    // An entry this build cannot read makes the whole answer cold, not an error.
    let _: i64 = redis::cmd("LPUSH")
        .arg(&key)
        .arg("not json")
        .query_async(&mut conn)
        .await
        .expect("LPUSH");
    assert_eq!(cache.recent(1, 50).await.expect("recent"), None);
}

/// Two brokers (nodes A and B) on the shared Redis under a prefix of their own, removed at the
/// end.
struct TwoNodes {
    url: String,
    prefix: String,
    _cleanup: Cleanup,
    hub_a: Hub,
    a: RedisBroker,
    hub_b: Hub,
    b: RedisBroker,
}

impl TwoNodes {
    async fn connect() -> TwoNodes {
        let url = shared_redis();
        let prefix = unique_redis_prefix();
        let _cleanup = Cleanup {
            url: url.clone(),
            prefix: prefix.clone(),
        };
        let (hub_a, hub_b) = (Hub::default(), Hub::default());
        let a = RedisBroker::connect(&config(&url, &prefix), hub_a.clone())
            .await
            .expect("connect node A");
        let b = RedisBroker::connect(&config(&url, &prefix), hub_b.clone())
            .await
            .expect("connect node B");
        TwoNodes {
            url,
            prefix,
            _cleanup,
            hub_a,
            a,
            hub_b,
            b,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_exactly_once_with_seq_and_exclusion() {
    let TwoNodes {
        _cleanup,
        hub_a,
        a,
        hub_b,
        b,
        ..
    } = TwoNodes::connect().await;
    assert_eq!(a.kind(), minichat_core::BackendKind::Redis);
    a.check().await.expect("check A");

    // User 7 is connected to node B only; node A sends.
    let (mut sub7, _) = hub_b.subscribe(7);
    b.user_arrived(7, true).await.expect("watch");
    let sent = event(Some(42), "hello 7");
    let reached = a
        .publish(&[delivery(7, None, &sent)])
        .await
        .expect("publish");
    assert_eq!(reached, vec![true]);
    let got = next(&mut sub7).await;
    assert_eq!(got.payload, sent.payload, "the exact payload bytes");
    assert_eq!(got.seq, Some(42));
    assert_next_is_marker(&a, 7, &mut [&mut sub7]).await;

    // Nobody watches user 999; a pipeline answers per delivery, in order.
    let reached = a
        .publish(&[
            delivery(999, None, &sent),
            delivery(7, None, &event(None, "no seq")),
        ])
        .await
        .expect("publish");
    assert_eq!(reached, vec![false, true]);
    assert_eq!(next(&mut sub7).await, event(None, "no seq"));

    // Two connections of user 8 on node B; the event comes from the first one.
    let (mut origin, _) = hub_b.subscribe(8);
    let (mut other_device, _) = hub_b.subscribe(8);
    b.user_arrived(8, true).await.expect("watch");
    b.user_arrived(8, true).await.expect("watch is idempotent");
    let echo = event(Some(3), "sent from a device");
    let reached = a
        .publish(&[delivery(8, Some(origin.id()), &echo)])
        .await
        .expect("publish");
    assert_eq!(reached, vec![true]);
    assert_eq!(next(&mut other_device).await, echo);
    assert_next_is_marker(&a, 8, &mut [&mut origin, &mut other_device]).await;

    // A node's own connections get their events back through Redis, once.
    let (mut local, _) = hub_a.subscribe(9);
    a.user_arrived(9, true).await.expect("watch");
    let own = event(Some(1), "local");
    assert_eq!(
        a.publish(&[delivery(9, None, &own)])
            .await
            .expect("publish"),
        vec![true]
    );
    assert_eq!(next(&mut local).await, own);
    assert_next_is_marker(&a, 9, &mut [&mut local]).await;
    // Node B never heard of user 9.
    assert!(!hub_b.is_connected(9));
}

/// The next message on a test's own pub/sub connection, within 5 s: its channel and payload.
async fn next_published(messages: &mut redis::aio::PubSubStream) -> (String, Vec<u8>) {
    use futures_util::StreamExt;
    let msg = timeout(Duration::from_secs(5), messages.next())
        .await
        .expect("a PUBLISH within 5 s")
        .expect("the pub/sub connection is open");
    (
        msg.get_channel_name().to_owned(),
        msg.get_payload_bytes().to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_copies_reach_every_node_in_one_publish() {
    let TwoNodes {
        url,
        prefix,
        _cleanup,
        hub_a,
        a,
        hub_b,
        b,
    } = TwoNodes::connect().await;
    // The test listens too: on the fan-out channel and on member 12's own channel.
    let mut listener = redis::Client::open(url.as_str())
        .expect("redis URL")
        .get_async_pubsub()
        .await
        .expect("pub/sub connection");
    listener
        .subscribe(format!("{prefix}fanout"))
        .await
        .expect("subscribe");
    listener
        .subscribe(format!("{prefix}user:{{12}}"))
        .await
        .expect("subscribe");
    let mut published = listener.into_on_message();

    // Member 11 on node A, 12 and 13 (two devices) on node B, 14 nowhere; sender 10 on A,
    // sending from one of two devices.
    let (mut sub11, _) = hub_a.subscribe(11);
    let (mut sub12, _) = hub_b.subscribe(12);
    let (mut sub13, _) = hub_b.subscribe(13);
    let (mut sub13b, _) = hub_b.subscribe(13);
    let (mut origin, _) = hub_a.subscribe(10);
    let (mut other_device, _) = hub_a.subscribe(10);
    for (node, user) in [(&a, 11), (&b, 12), (&b, 13), (&a, 10)] {
        node.user_arrived(user, true).await.expect("watch");
    }
    let mut group_message = message(70, 11);
    group_message.receiver_id = None;
    let frames = minichat_core::event::Frames::message(&group_message);
    let own = frames.own_event(4, Some("c-1"));
    let members = [(11, 5), (12, 6), (13, 7), (14, 8)];
    let reached = a
        .publish_to_members(
            &frames,
            &members,
            Some(Delivery {
                user: 10,
                exclude: Some(origin.id()),
                event: own.clone(),
            }),
        )
        .await
        .expect("publish");
    assert!(reached, "members 11 to 13 are online");
    // Every member's connections get their own seq's frame, once; the sender's other device
    // gets the sender's copy.
    assert_eq!(next(&mut sub11).await, frames.event(5));
    assert_eq!(next(&mut sub12).await, frames.event(6));
    assert_eq!(next(&mut sub13).await, frames.event(7));
    assert_eq!(next(&mut sub13b).await, frames.event(7));
    assert_eq!(next(&mut other_device).await, own);
    // Four members, more than the one node A knew of: one PUBLISH on the fan-out channel, none
    // on a member's channel.
    let (channel, _) = next_published(&mut published).await;
    assert_eq!(channel, format!("{prefix}fanout"));
    assert_next_is_marker(&a, 12, &mut [&mut sub12]).await;
    assert_eq!(
        next_published(&mut published).await.0,
        format!("{prefix}user:{{12}}"),
        "the marker is the next thing on member 12's channel"
    );
    assert_next_is_marker(&a, 10, &mut [&mut origin, &mut other_device]).await;
    assert_next_is_marker(&a, 11, &mut [&mut sub11]).await;
    assert_next_is_marker(&a, 13, &mut [&mut sub13, &mut sub13b]).await;

    // Members all offline: the fan-out goes out (four members, three listeners of the channel)
    // and says nobody had a connection.
    let offline = [(14, 9), (15, 1), (16, 1), (17, 1)];
    let reached = a
        .publish_to_members(&frames, &offline, None)
        .await
        .expect("publish");
    assert!(!reached, "no member is online");
    assert_eq!(
        next_published(&mut published).await.0,
        format!("{prefix}fanout")
    );

    // A group no bigger than the number of nodes (three listeners now) goes per member.
    let reached = a
        .publish_to_members(&frames, &[(12, 11)], None)
        .await
        .expect("publish");
    assert!(reached);
    assert_eq!(next(&mut sub12).await, frames.event(11));
    assert_eq!(
        next_published(&mut published).await.0,
        format!("{prefix}user:{{12}}")
    );
    assert_next_is_marker(&a, 12, &mut [&mut sub12]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribes_when_the_last_local_connection_leaves() {
    let url = shared_redis();
    let prefix = unique_redis_prefix();
    let _cleanup = Cleanup {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let hub = Hub::default();
    let broker = RedisBroker::connect(&config(&url, &prefix), hub.clone())
        .await
        .expect("connect");
    let mut conn = admin(&url).await;
    let channel = format!("{prefix}user:{{5}}");

    let (first, _) = hub.subscribe(5);
    let (second, _) = hub.subscribe(5);
    broker.user_arrived(5, true).await.expect("watch");
    assert_eq!(numsub(&mut conn, &channel).await, 1);

    drop(first);
    drop(second);
    // The service calls this for every departure the hub reports.
    assert!(broker.user_left(5).await.expect("leave"), "went offline");
    let deadline = Instant::now() + Duration::from_secs(5);
    while numsub(&mut conn, &channel).await != 0 {
        assert!(
            Instant::now() < deadline,
            "channel still subscribed after 5 s"
        );
        sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        broker
            .publish(&[delivery(5, None, &event(None, "gone"))])
            .await
            .expect("publish"),
        vec![false]
    );

    // Coming back subscribes again.
    let (mut again, _) = hub.subscribe(5);
    broker.user_arrived(5, true).await.expect("watch");
    assert_eq!(numsub(&mut conn, &channel).await, 1);
    let back = event(Some(9), "back");
    broker
        .publish(&[delivery(5, None, &back)])
        .await
        .expect("publish");
    assert_eq!(next(&mut again).await, back);
}

/// Re-publishes to `user` until `sub` receives one of those events, or the deadline passes.
async fn eventually_receives(
    broker: &RedisBroker,
    user: UserId,
    sub: &mut Subscription,
    deadline: Instant,
) {
    for attempt in 1.. {
        assert!(
            Instant::now() < deadline,
            "user {user}: cross-node delivery did not resume"
        );
        let probe = event(None, &format!("retry {attempt}"));
        broker
            .publish(&[delivery(user, None, &probe)])
            .await
            .expect("publish never fails for lack of Redis");
        if let Ok(Ok(got)) = timeout(Duration::from_millis(300), sub.recv()).await {
            assert!(got
                .payload
                .starts_with(br#"{"type":"message","content":"retry "#));
            return;
        }
    }
}

/// Receives until `wanted`, skipping the late re-publishes of [`eventually_receives`], and
/// returns how many times `wanted` came before `marker`.
async fn count_before_marker(sub: &mut Subscription, wanted: &Event, marker: &Event) -> usize {
    let mut count = 0;
    loop {
        let got = next(sub).await;
        if got == *marker {
            return count;
        }
        if got == *wanted {
            count += 1;
        } else {
            assert!(
                got.payload
                    .starts_with(br#"{"type":"message","content":"retry "#),
                "unexpected event {got:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_redis_restart() {
    let mut server = ThrowawayRedis::start().await;
    let prefix = unique_redis_prefix();
    let (hub_a, hub_b) = (Hub::default(), Hub::default());
    let a = RedisBroker::connect(&config(&server.url(), &prefix), hub_a.clone())
        .await
        .expect("connect node A");
    let b = RedisBroker::connect(&config(&server.url(), &prefix), hub_b.clone())
        .await
        .expect("connect node B");
    let cache = RedisCache::connect(&config(&server.url(), &prefix))
        .await
        .expect("connect the cache");

    let (mut remote, _) = hub_b.subscribe(1);
    b.user_arrived(1, true).await.expect("watch");
    let (mut local, _) = hub_a.subscribe(2);
    a.user_arrived(2, true).await.expect("watch");
    let (leaves_during_outage, _) = hub_b.subscribe(6);
    b.user_arrived(6, true).await.expect("watch");
    let before = event(Some(1), "before");
    assert_eq!(
        a.publish(&[delivery(1, None, &before)])
            .await
            .expect("publish"),
        vec![true]
    );
    assert_eq!(next(&mut remote).await, before);

    server.kill();

    // Sends still succeed, and reach this node's own connections.
    let started = Instant::now();
    let during = event(Some(2), "during");
    let reached = a
        .publish(&[delivery(2, None, &during), delivery(1, None, &during)])
        .await
        .expect("publish succeeds while Redis is down");
    assert_eq!(reached, vec![true, false], "user 1 has no connection on A");
    assert_eq!(next(&mut local).await, during);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "publish stalled"
    );
    // Once the outage is known, sends no longer wait for Redis at all.
    let started = Instant::now();
    let again = event(Some(3), "during, again");
    assert_eq!(
        a.publish(&[delivery(2, None, &again)])
            .await
            .expect("publish"),
        vec![true]
    );
    assert_eq!(next(&mut local).await, again);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "publish waited {:?} for a Redis known to be down",
        started.elapsed()
    );
    // A group's copies fall back to this node's members too, who count as reached (as
    // `publish` counts user 2 above).
    let mut group_message = message(71, 2);
    group_message.receiver_id = None;
    let frames = minichat_core::event::Frames::message(&group_message);
    let group = [(2, 4), (1, 3), (8, 1)];
    assert!(
        a.publish_to_members(&frames, &group, None)
            .await
            .expect("publish succeeds while Redis is down"),
        "member 2 is connected to this node"
    );
    // Users 1 and 8 have no connection here: nobody is reached.
    assert!(!a
        .publish_to_members(&frames, &[(1, 4), (8, 2), (9, 1)], None)
        .await
        .expect("publish succeeds while Redis is down"));
    assert_eq!(next(&mut local).await, frames.event(4));
    // The cache reports itself unavailable (the service then reads storage).
    match cache.push(1, &frame(&message(1, 1))).await {
        Err(Error::Unavailable { backend, .. }) => assert_eq!(backend, Backend::Cache),
        other => panic!("expected the cache to be unavailable, got {other:?}"),
    }
    assert!(cache.recent(1, 50).await.is_err());

    // A user connecting during the outage: user_arrived gives up quickly...
    let (mut newcomer, _) = hub_b.subscribe(3);
    let started = Instant::now();
    let _ = b.user_arrived(3, true).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "user_arrived hung while Redis was down"
    );
    assert!(b.check().await.is_err(), "health must report Redis down");
    drop(leaves_during_outage);

    // ...and is subscribed once Redis is back, like everyone subscribed before.
    server.restart().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    eventually_receives(&a, 1, &mut remote, deadline).await;
    eventually_receives(&a, 3, &mut newcomer, deadline).await;
    eventually_receives(&a, 2, &mut local, deadline).await;
    while a.check().await.is_err() || b.check().await.is_err() || cache.check().await.is_err() {
        assert!(Instant::now() < deadline, "health did not recover");
        sleep(Duration::from_millis(50)).await;
    }
    // The user who left during the outage is not subscribed again.
    let mut conn = admin(&server.url()).await;
    let channel = format!("{prefix}user:{{6}}");
    while numsub(&mut conn, &channel).await != 0 {
        assert!(Instant::now() < deadline, "{channel} still subscribed");
        sleep(Duration::from_millis(20)).await;
    }
    cache
        .push(1, &frame(&message(2, 1)))
        .await
        .expect("the cache works again");
    let recent = cache.recent(1, 50).await.expect("recent").expect("warm");
    assert_eq!(recent.iter().map(|m| m.id).collect::<Vec<_>>(), vec![2]);

    // Exactly once again, for a connection from before the outage and one from during it.
    for (user, sub) in [(1, &mut remote), (3, &mut newcomer)] {
        let after = event(Some(10), &format!("after {user}"));
        let marker = event(None, &format!("marker {user}"));
        let reached = a
            .publish(&[delivery(user, None, &after), delivery(user, None, &marker)])
            .await
            .expect("publish");
        assert_eq!(reached, vec![true, true]);
        assert_eq!(count_before_marker(sub, &after, &marker).await, 1);
    }
    // This Redis lost its data with the restart, presence records included: each node renews
    // its users' as soon as its subscriber is back, not a heartbeat period (10 s) later.
    let soon = Instant::now() + Duration::from_secs(5);
    loop {
        let online = [a.presence(&[1, 2, 3]).await, b.presence(&[1, 2, 3]).await];
        if online
            .iter()
            .all(|p| p.as_ref().is_ok_and(|p| p.iter().all(|u| u.online)))
        {
            break;
        }
        assert!(
            Instant::now() < soon,
            "presence not renewed after the restart: {online:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
    // And a group's copies reach both nodes, once (three members, more than the one node A
    // has heard of, so on the fan-out channel, subscribed again after the restart).
    let group = [(1, 11), (2, 5), (3, 11)];
    assert!(a
        .publish_to_members(&frames, &group, None)
        .await
        .expect("publish"));
    assert_eq!(next(&mut remote).await, frames.event(11));
    assert_eq!(next(&mut local).await, frames.event(5));
    assert_eq!(next(&mut newcomer).await, frames.event(11));
    assert_next_is_marker(&a, 1, &mut [&mut remote]).await;
    assert_next_is_marker(&a, 2, &mut [&mut local]).await;
}

#[tokio::test]
async fn malformed_urls_are_config_errors() {
    for url in [
        "redis://:::garbage",
        "http://127.0.0.1:6379",
        "not a url",
        "",
    ] {
        let cfg = config(url, "minichat:test:");
        match RedisCache::connect(&cfg).await {
            Err(Error::Config { setting, .. }) => assert_eq!(setting, "REDIS_URL"),
            other => panic!("{url:?}: expected a REDIS_URL config error, got {other:?}"),
        }
        match RedisBroker::connect(&cfg, Hub::default()).await {
            Err(Error::Config { setting, .. }) => assert_eq!(setting, "REDIS_URL"),
            other => panic!("{url:?}: expected a REDIS_URL config error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_unreachable_redis_fails_fast_at_start() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let cfg = config(&url, "minichat:test:");
    let started = Instant::now();
    match RedisCache::connect(&cfg).await {
        Err(Error::Config { setting, reason }) => {
            assert_eq!(setting, "REDIS_URL");
            assert!(reason.contains("cannot connect to Redis"), "{reason}");
        }
        other => panic!("expected a REDIS_URL config error, got {other:?}"),
    }
    match RedisBroker::connect(&cfg, Hub::default()).await {
        Err(Error::Config { setting, .. }) => assert_eq!(setting, "REDIS_URL"),
        other => panic!("expected a REDIS_URL config error, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}
