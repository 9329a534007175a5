//! A send's cache push and `PUBLISH`es in one pipeline (`Broker::publish_message` of a Redis
//! broker connected with its cache), against a real Redis.
//!
//! This file exists because that pipeline carries two backends' guarantees at once: each
//! outcome must still be the one its own call would have given (a failed transaction fails the
//! push only, and marks the list stale; an outage fails the push and falls back to local
//! delivery; both recover). The fault test starts a throw-away `redis-server` so that it can
//! kill and restart it; the other uses the shared Redis under a prefix of its own. Every wait is
//! bounded by a deadline.

use bytes::Bytes;
use minichat_core::broker::{Broker, Delivery, RedisBroker};
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
    let (pushed, published) = broker
        .publish_message(cache.as_ref(), 1, &frame, &deliveries)
        .await;
    pushed.expect("pushed");
    assert_eq!(published.expect("published"), vec![true, false]);
    assert_eq!(next(&mut sub).await, deliveries[0].event);
    let recent = cache.recent(1, 50).await.expect("read").expect("warm");
    assert_eq!(ids(&recent), vec![1]);

    // Another cache than the broker's own: pushed there, published as ever.
    let other = MemoryCache::default();
    let second = message(2, 1);
    let (frame, deliveries) = send_of(&second);
    let (pushed, published) = broker.publish_message(&other, 1, &frame, &deliveries).await;
    pushed.expect("pushed to the other cache");
    assert_eq!(published.expect("published"), vec![true, false]);
    assert_eq!(next(&mut sub).await, deliveries[0].event);
    let theirs = other.recent(1, 50).await.expect("read").expect("warm");
    assert_eq!(ids(&theirs), vec![2]);

    // A transaction that fails (the key holds a string) fails the push alone: the fan-out
    // still happens, and the list is stale, so it reads as cold and is deleted.
    let key = format!("{prefix}recent:{{1}}");
    let mut admin = redis::Client::open(url.as_str())
        .expect("redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection");
    redis::cmd("SET")
        .arg(&key)
        .arg("not a list")
        .query_async::<()>(&mut admin)
        .await
        .expect("SET");
    let third = message(3, 1);
    let (frame, deliveries) = send_of(&third);
    let (pushed, published) = broker
        .publish_message(cache.as_ref(), 1, &frame, &deliveries)
        .await;
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
    let (pushed, published) = broker
        .publish_message(cache.as_ref(), 1, &frame, &deliveries)
        .await;
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
    let (pushed, _) = broker
        .publish_message(cache.as_ref(), 1, &frame, &deliveries)
        .await;
    pushed.expect("pushed");
    assert_eq!(next(&mut sub).await, deliveries[0].event);

    server.kill();

    // The push fails, the fan-out falls back to this node, and neither waits long.
    let started = Instant::now();
    let (frame, deliveries) = send_of(&message(2, 1));
    let (pushed, published) = broker
        .publish_message(cache.as_ref(), 1, &frame, &deliveries)
        .await;
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
    let (pushed, published) = broker
        .publish_message(cache.as_ref(), 1, &frame, &deliveries)
        .await;
    pushed.expect("pushed");
    assert_eq!(published.expect("published"), vec![true, false]);
    assert_eq!(next(&mut sub).await, deliveries[0].event);
    let recent = cache.recent(1, 50).await.expect("read").expect("warm");
    assert_eq!(ids(&recent), vec![3]);
    // Exactly once: nothing else is waiting on the subscription.
    let (frame, deliveries) = send_of(&message(1000, 1));
    let (pushed, published) = broker
        .publish_message(cache.as_ref(), 1, &frame, &deliveries)
        .await;
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
