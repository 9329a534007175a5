//! A send's cache push and `PUBLISH`es in one pipeline, and a run of sends in one pipeline
//! (`Broker::publish_messages` of a Redis broker connected with its cache), against a real
//! Redis.
//!
//! This file exists because that pipeline carries two backends' guarantees at once: each
//! outcome must still be the one its own call would have given (a failed transaction fails the
//! push only, and marks the list stale; an outage fails the push and falls back to local
//! delivery; both recover). The fault test starts a throw-away `redis-server` so that it can
//! kill and restart it; the other uses the shared Redis under a prefix of its own. Every wait is
//! bounded by a deadline.

use bytes::Bytes;
use minichat_core::broker::{Broker, Delivery, FanoutOutcome, MessageFanout, RedisBroker};
use minichat_core::cache::{MemoryCache, RecentCache, RedisCache};
use minichat_core::model::{now, MessageType};
use minichat_core::test_support::{delete_redis_prefix, unique_redis_prefix, ThrowawayRedis};
use minichat_core::{Backend, Error, Event, Hub, Message, RedisConfig, Subscription, UserId};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep, timeout, Instant};

fn config(url: &str, prefix: &str) -> RedisConfig {
    RedisConfig {
        url: url.into(),
        prefix: prefix.into(),
        presence_ttl: minichat_core::broker::PRESENCE_TTL,
        timeout: minichat_core::DEFAULT_BACKEND_TIMEOUT,
    }
}

fn message(id: i64, receiver: UserId) -> Message {
    Message {
        id,
        sender_id: 99,
        sender_username: "sender".into(),
        receiver_id: Some(receiver),
        conversation_id: 1,
        content: format!("message {id}"),
        timestamp: now(),
        kind: MessageType::Message,
    }
}

/// The two deliveries of a send of `message` (receiver's copy first) and the receiver's frame.
fn send_of(message: &Message) -> (Bytes, [Delivery; 2]) {
    let receiver = minichat_core::event::message_event(message, message.id);
    let sender = minichat_core::event::message_event(message, message.id + 1000);
    let frame = receiver.payload.clone();
    let deliveries = [
        Delivery {
            user: message.receiver_id.expect("a direct message"),
            exclude: None,
            event: receiver,
        },
        Delivery {
            user: message.sender_id,
            exclude: None,
            event: sender,
        },
    ];
    (frame, deliveries)
}

/// The fan-out of one send through `broker`: its push's outcome and its publish's.
async fn publish_one(
    broker: &RedisBroker,
    cache: &dyn RecentCache,
    frame: &Bytes,
    deliveries: &[Delivery],
) -> FanoutOutcome {
    let fanout = MessageFanout {
        receiver: deliveries[0].user,
        frame,
        deliveries,
    };
    let mut outcomes = broker.publish_messages(cache, &[fanout]).await;
    assert_eq!(outcomes.len(), 1, "one outcome per message");
    outcomes.remove(0)
}

/// A connection of the test's own to Redis at `url`.
async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection")
}

/// Makes `user`'s recent-messages list a string, so that a push to it fails.
async fn spoil_list(admin: &mut redis::aio::MultiplexedConnection, prefix: &str, user: UserId) {
    redis::cmd("SET")
        .arg(format!("{prefix}recent:{{{user}}}"))
        .arg("not a list")
        .query_async::<()>(admin)
        .await
        .expect("SET");
}

/// The next event of `sub`, failing the test if none comes within 5 s.
async fn next(sub: &mut Subscription) -> Event {
    match timeout(Duration::from_secs(5), sub.recv()).await {
        Ok(Ok(event)) => event,
        Ok(Err(closed)) => panic!("subscription of user {} closed: {closed:?}", sub.user()),
        Err(_) => panic!("no event for user {} within 5 s", sub.user()),
    }
}

fn ids(messages: &[Message]) -> Vec<i64> {
    messages.iter().map(|m| m.id).collect()
}

/// A broker connected with its cache, on `url` under `prefix`, and a receiver (user 1) online.
async fn node(url: &str, prefix: &str) -> (Arc<RedisCache>, RedisBroker, Hub, Subscription) {
    let cache = Arc::new(
        RedisCache::connect(&config(url, prefix))
            .await
            .expect("connect the cache"),
    );
    let hub = Hub::default();
    let broker = RedisBroker::connect_with_cache(&config(url, prefix), hub.clone(), cache.clone())
        .await
        .expect("connect the broker with the cache");
    let (sub, _) = hub.subscribe(1);
    broker.user_arrived(1, true).await.expect("watch");
    (cache, broker, hub, sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pipeline_keeps_each_outcome_apart() {
    let url = std::env::var("MINICHAT_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = unique_redis_prefix();
    let (cache, broker, _hub, mut sub) = node(&url, &prefix).await;

    // Pushed and published: the receiver is reached and their list holds the frame.
    let first = message(1, 1);
    let (frame, deliveries) = send_of(&first);
    let (pushed, published) = publish_one(&broker, cache.as_ref(), &frame, &deliveries).await;
    pushed.expect("pushed");
    assert_eq!(published.expect("published"), vec![true, false]);
    assert_eq!(next(&mut sub).await, deliveries[0].event);
    let recent = cache.recent(1, 50).await.expect("read").expect("warm");
    assert_eq!(ids(&recent), vec![1]);

    // Another cache than the broker's own: pushed there, published as ever.
    let other = MemoryCache::default();
    let second = message(2, 1);
    let (frame, deliveries) = send_of(&second);
    let (pushed, published) = publish_one(&broker, &other, &frame, &deliveries).await;
    pushed.expect("pushed to the other cache");
    assert_eq!(published.expect("published"), vec![true, false]);
    assert_eq!(next(&mut sub).await, deliveries[0].event);
    let theirs = other.recent(1, 50).await.expect("read").expect("warm");
    assert_eq!(ids(&theirs), vec![2]);

    // A transaction that fails (the key holds a string) fails the push alone: the fan-out
    // still happens, and the list is stale, so it reads as cold and is deleted.
    let key = format!("{prefix}recent:{{1}}");
    let mut admin = admin(&url).await;
    spoil_list(&mut admin, &prefix, 1).await;
    let third = message(3, 1);
    let (frame, deliveries) = send_of(&third);
    let (pushed, published) = publish_one(&broker, cache.as_ref(), &frame, &deliveries).await;
    match pushed {
        Err(Error::Unavailable { backend, .. }) => assert_eq!(backend, Backend::Cache),
        other => panic!("expected the push to fail, got {other:?}"),
    }
    assert_eq!(published.expect("published"), vec![true, false]);
    assert_eq!(next(&mut sub).await, deliveries[0].event);
    assert_eq!(cache.recent(1, 50).await.expect("read"), None);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut admin)
        .await
        .expect("EXISTS");
    assert_eq!(exists, 0, "the stale list was not deleted");

    // And the next send fills it again, in one pipeline.
    let fourth = message(4, 1);
    let (frame, deliveries) = send_of(&fourth);
    let (pushed, published) = publish_one(&broker, cache.as_ref(), &frame, &deliveries).await;
    pushed.expect("pushed");
    assert_eq!(published.expect("published"), vec![true, false]);
    assert_eq!(next(&mut sub).await, deliveries[0].event);
    let recent = cache.recent(1, 50).await.expect("read").expect("warm");
    assert_eq!(ids(&recent), vec![4]);
    delete_redis_prefix(&url, &prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_survive_a_redis_restart() {
    let mut server = ThrowawayRedis::start().await;
    let prefix = unique_redis_prefix();
    let (cache, broker, _hub, mut sub) = node(&server.url(), &prefix).await;
    let (frame, deliveries) = send_of(&message(1, 1));
    let (pushed, _) = publish_one(&broker, cache.as_ref(), &frame, &deliveries).await;
    pushed.expect("pushed");
    assert_eq!(next(&mut sub).await, deliveries[0].event);

    server.kill();

    // The push fails, the fan-out falls back to this node, and neither waits long.
    let started = Instant::now();
    let (frame, deliveries) = send_of(&message(2, 1));
    let (pushed, published) = publish_one(&broker, cache.as_ref(), &frame, &deliveries).await;
    match pushed {
        Err(Error::Unavailable { backend, .. }) => assert_eq!(backend, Backend::Cache),
        other => panic!("expected the push to fail, got {other:?}"),
    }
    assert_eq!(published.expect("local fallback"), vec![true, false]);
    assert_eq!(next(&mut sub).await, deliveries[0].event);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the send stalled"
    );

    server.restart().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while broker.check().await.is_err() {
        assert!(Instant::now() < deadline, "the broker did not recover");
        sleep(Duration::from_millis(50)).await;
    }
    // Both succeed again, through Redis; the list that missed a push was deleted first, so
    // it holds only what came after.
    let (frame, deliveries) = send_of(&message(3, 1));
    let (pushed, published) = publish_one(&broker, cache.as_ref(), &frame, &deliveries).await;
    pushed.expect("pushed");
    assert_eq!(published.expect("published"), vec![true, false]);
    assert_eq!(next(&mut sub).await, deliveries[0].event);
    let recent = cache.recent(1, 50).await.expect("read").expect("warm");
    assert_eq!(ids(&recent), vec![3]);
    // Exactly once: nothing else is waiting on the subscription.
    let (frame, deliveries) = send_of(&message(1000, 1));
    let (pushed, published) = publish_one(&broker, cache.as_ref(), &frame, &deliveries).await;
    pushed.expect("pushed");
    assert_eq!(published.expect("published"), vec![true, false]);
    assert_eq!(next(&mut sub).await, deliveries[0].event);
    assert!(
        timeout(Duration::from_millis(200), sub.recv())
            .await
            .is_err(),
        "an event came twice"
    );
}

/// How many times Redis at `admin` has run `command` (from `INFO commandstats`).
async fn calls(admin: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(admin)
        .await
        .expect("INFO commandstats");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .map_or(0, |rest| {
            rest.split(',')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("a call count")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_goes_out_in_order_with_one_push_per_receiver_in_a_row() {
    // A Redis of the test's own, so that its command counts are this test's alone.
    let server = ThrowawayRedis::start().await;
    let url = server.url();
    let prefix = unique_redis_prefix();
    let (cache, broker, hub, mut first) = node(&url, &prefix).await;
    let (mut second, _) = hub.subscribe(2);
    broker.user_arrived(2, true).await.expect("watch");
    let mut admin = admin(&url).await;
    // Receiver 2's list holds a string: its transaction fails, and only its push.
    spoil_list(&mut admin, &prefix, 2).await;
    let pushes_before = calls(&mut admin, "lpush").await;

    // A run to receivers 1, 1, 2, 1: three receivers in a row, so three pushes.
    let run = [message(1, 1), message(2, 1), message(3, 2), message(4, 1)];
    let sends: Vec<(Bytes, [Delivery; 2])> = run.iter().map(send_of).collect();
    let fanouts: Vec<MessageFanout<'_>> = sends
        .iter()
        .map(|(frame, deliveries)| MessageFanout {
            receiver: deliveries[0].user,
            frame,
            deliveries,
        })
        .collect();
    let outcomes = broker.publish_messages(cache.as_ref(), &fanouts).await;
    assert_eq!(outcomes.len(), run.len(), "one outcome per message");
    for (i, (pushed, published)) in outcomes.into_iter().enumerate() {
        match (i, pushed) {
            (2, Err(Error::Unavailable { backend, .. })) => assert_eq!(backend, Backend::Cache),
            (2, other) => panic!("expected the push to receiver 2 to fail, got {other:?}"),
            (_, pushed) => pushed.expect("pushed"),
        }
        assert_eq!(
            published.expect("published"),
            vec![true, false],
            "message {i}"
        );
    }
    assert_eq!(
        calls(&mut admin, "lpush").await - pushes_before,
        3,
        "one LPUSH per receiver in a row"
    );

    // Each receiver has its events in the run's order, and nothing else.
    for i in [0, 1, 3] {
        assert_eq!(next(&mut first).await, sends[i].1[0].event);
    }
    assert_eq!(next(&mut second).await, sends[2].1[0].event);
    assert!(
        timeout(Duration::from_millis(200), first.recv())
            .await
            .is_err(),
        "an event came twice"
    );
    // Receiver 1's list holds the run's messages to them, newest first; receiver 2's missed a
    // push, so it reads as cold.
    let recent = cache.recent(1, 50).await.expect("read").expect("warm");
    assert_eq!(ids(&recent), vec![4, 2, 1]);
    assert_eq!(cache.recent(2, 50).await.expect("read"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_probe_comes_back_so_sends_do_not_wait() {
    // The broker paces its publishes by a probe that must come back through its own
    // subscriber connection; one that never did would hold every send after it for the
    // backend budget (30 s here) once it was older than the limit (5 ms).
    let url = std::env::var("MINICHAT_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = unique_redis_prefix();
    let slow = RedisConfig {
        timeout: Duration::from_secs(30),
        ..config(&url, &prefix)
    };
    let cache = Arc::new(RedisCache::connect(&slow).await.expect("cache"));
    let hub = Hub::default();
    let broker = RedisBroker::connect_with_cache(&slow, hub.clone(), cache.clone())
        .await
        .expect("broker");
    let (mut sub, _) = hub.subscribe(1);
    broker.user_arrived(1, true).await.expect("watch");
    for id in 1..=3 {
        let (frame, deliveries) = send_of(&message(id, 1));
        let started = Instant::now();
        let (pushed, published) = publish_one(&broker, cache.as_ref(), &frame, &deliveries).await;
        pushed.expect("pushed");
        assert_eq!(published.expect("published"), vec![true, false]);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "send {id} waited {:?} for the probe",
            started.elapsed()
        );
        assert_eq!(next(&mut sub).await, deliveries[0].event);
        // Long enough for a probe that had not come back to count as a backlog.
        sleep(Duration::from_millis(100)).await;
    }
    delete_redis_prefix(&url, &prefix);
}

/// The next message on the test's own pub/sub connection, within 5 s: its channel and payload.
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

/// The sender's echo of `message`, sent from their connection `origin`.
fn echo_of(message: &Message, origin: &Subscription) -> (Bytes, [Delivery; 2]) {
    let (frame, [receiver, mut echo]) = send_of(message);
    echo.exclude = Some(origin.id());
    (frame, [receiver, echo])
}

/// Publishes a marker to `user` through `broker` and asserts it is the next thing on `channel`
/// (the user's, which `published` listens to): nothing was published there before it. Returns
/// the marker.
async fn published_next_is_marker(
    broker: &RedisBroker,
    user: UserId,
    published: &mut redis::aio::PubSubStream,
    channel: &str,
) -> Event {
    let marker = Event {
        seq: None,
        payload: Bytes::from(format!("{{\"type\":\"marker\",\"for\":{user}}}")),
    };
    broker
        .publish(&[Delivery {
            user,
            exclude: None,
            event: marker.clone(),
        }])
        .await
        .expect("publish the marker");
    let (got, payload) = next_published(published).await;
    assert_eq!(got, channel);
    assert!(
        payload.ends_with(&marker.payload),
        "something was published on {channel} before the marker"
    );
    marker
}

/// Publishes a marker to the receiver (user 1) and one to the sender (user 99) through
/// `broker`, and asserts they are the next things published on their channels: nothing else was.
/// Returns the two markers.
async fn nothing_published(
    broker: &RedisBroker,
    published: &mut redis::aio::PubSubStream,
    to_receiver: &str,
    to_sender: &str,
) -> (Event, Event) {
    let marker = published_next_is_marker(broker, 1, published, to_receiver).await;
    let echo_marker = published_next_is_marker(broker, 99, published, to_sender).await;
    (marker, echo_marker)
}

/// Asserts that `marker` is the next event of `sub`: `what` got nothing before it.
async fn marker_is_next(sub: &mut Subscription, marker: &Event, what: &str) {
    assert_eq!(next(sub).await, *marker, "{what} before the marker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_published_only_where_another_node_can_receive_it() {
    let url = std::env::var("MINICHAT_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = unique_redis_prefix();
    // Node A with the receiver (user 1), and the sender (user 99) on one connection there.
    let (cache, a, hub_a, mut receiver) = node(&url, &prefix).await;
    let (mut origin, _) = hub_a.subscribe(99);
    a.user_arrived(99, true).await.expect("watch");
    // The test listens on both users' channels, to see what is published there.
    let mut listener = redis::Client::open(url.as_str())
        .expect("redis URL")
        .get_async_pubsub()
        .await
        .expect("pub/sub connection");
    let to_sender = format!("{prefix}user:{{99}}");
    let to_receiver = format!("{prefix}user:{{1}}");
    listener.subscribe(&to_sender).await.expect("subscribe");
    listener.subscribe(&to_receiver).await.expect("subscribe");
    let mut published = listener.into_on_message();
    // Both users on this node alone: the receiver gets theirs straight from the hub, the echo
    // has no one to go to, and nothing is published.
    let (frame, deliveries) = echo_of(&message(1, 1), &origin);
    let (pushed, reached) = publish_one(&a, cache.as_ref(), &frame, &deliveries).await;
    pushed.expect("pushed");
    assert_eq!(reached.expect("reached"), vec![true, true]);
    assert_eq!(next(&mut receiver).await, deliveries[0].event);
    let (marker, echo_marker) =
        nothing_published(&a, &mut published, &to_receiver, &to_sender).await;
    marker_is_next(&mut receiver, &marker, "the receiver got it twice").await;
    marker_is_next(&mut origin, &echo_marker, "the origin got an echo").await;

    // A second connection of the sender on this node: it gets the echo, still unpublished.
    let (mut laptop, _) = hub_a.subscribe(99);
    let (frame, deliveries) = echo_of(&message(2, 1), &origin);
    let (_, reached) = publish_one(&a, cache.as_ref(), &frame, &deliveries).await;
    assert_eq!(reached.expect("reached"), vec![true, true]);
    assert_eq!(next(&mut receiver).await, deliveries[0].event);
    assert_eq!(next(&mut laptop).await, deliveries[1].event);
    let (marker, echo_marker) =
        nothing_published(&a, &mut published, &to_receiver, &to_sender).await;
    marker_is_next(&mut receiver, &marker, "the receiver got it twice").await;
    marker_is_next(&mut laptop, &echo_marker, "the laptop got the echo twice").await;
    marker_is_next(&mut origin, &echo_marker, "the origin got an echo").await;

    // The sender and the receiver on node B too: both copies are published, and every
    // connection on either node gets its copy once.
    let hub_b = Hub::default();
    let b = RedisBroker::connect(&config(&url, &prefix), hub_b.clone())
        .await
        .expect("connect node B");
    let (mut phone, _) = hub_b.subscribe(99);
    b.user_arrived(99, true).await.expect("watch");
    let (mut tablet, _) = hub_b.subscribe(1);
    b.user_arrived(1, true).await.expect("watch");
    let (frame, deliveries) = echo_of(&message(3, 1), &origin);
    let (_, reached) = publish_one(&a, cache.as_ref(), &frame, &deliveries).await;
    assert_eq!(reached.expect("published"), vec![true, true]);
    // In the run's order: the receiver's copy, then the echo.
    assert_eq!(next_published(&mut published).await.0, to_receiver);
    assert_eq!(next_published(&mut published).await.0, to_sender);
    assert_eq!(next(&mut receiver).await, deliveries[0].event);
    assert_eq!(next(&mut tablet).await, deliveries[0].event);
    assert_eq!(next(&mut laptop).await, deliveries[1].event);
    assert_eq!(next(&mut phone).await, deliveries[1].event);
    let (marker, echo_marker) =
        nothing_published(&a, &mut published, &to_receiver, &to_sender).await;
    marker_is_next(&mut receiver, &marker, "the receiver got it twice").await;
    marker_is_next(&mut laptop, &echo_marker, "the laptop got the echo twice").await;
    marker_is_next(&mut origin, &echo_marker, "the origin got an echo").await;
    drop(laptop);

    // Node B's connections leave (and so do its presence reports): straight to the hub again.
    drop(phone);
    drop(tablet);
    b.user_left(99).await.expect("leave");
    b.user_left(1).await.expect("leave");
    let (frame, deliveries) = echo_of(&message(4, 1), &origin);
    let (_, reached) = publish_one(&a, cache.as_ref(), &frame, &deliveries).await;
    assert_eq!(reached.expect("reached"), vec![true, true]);
    assert_eq!(next(&mut receiver).await, deliveries[0].event);
    let (marker, _) = nothing_published(&a, &mut published, &to_receiver, &to_sender).await;
    marker_is_next(&mut receiver, &marker, "the receiver got it twice").await;

    // A presence set that lost this node (as when Redis lost its data, until the heartbeat
    // writes it again) is not taken at its word: the delivery is published, and arrives once.
    let mut admin = admin(&url).await;
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{prefix}online:{{1}}"))
        .query_async(&mut admin)
        .await
        .expect("DEL");
    let (frame, deliveries) = echo_of(&message(5, 1), &origin);
    let (_, reached) = publish_one(&a, cache.as_ref(), &frame, &deliveries).await;
    assert_eq!(reached.expect("published"), vec![true, true]);
    assert_eq!(next_published(&mut published).await.0, to_receiver);
    assert_eq!(next(&mut receiver).await, deliveries[0].event);
    let (marker, _) = nothing_published(&a, &mut published, &to_receiver, &to_sender).await;
    marker_is_next(&mut receiver, &marker, "the receiver got it twice").await;
    delete_redis_prefix(&url, &prefix);
}
