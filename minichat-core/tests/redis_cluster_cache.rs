//! The Redis cache on a Redis Cluster of the test's own, where a `SCAN` sees one server only: a
//! cache that missed more pushes than it can remember one by one clears the recent lists on
//! every master once the cluster answers again, and keeps working after.
//!
//! The cluster is frozen (`SIGSTOP` on every master) rather than killed, so that it keeps its
//! keys through the outage: a clear that scanned only one node would leave the others' lists,
//! and the check at the end would see them.

use bytes::Bytes;
use minichat_core::cache::{RecentCache, RedisCache, MAX_STALE};
use minichat_core::model::{now, MessageType};
use minichat_core::test_support::{node_connection, unique_redis_prefix, ThrowawayRedisCluster};
use minichat_core::{Message, RedisConfig, UserId};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(30);

fn message(id: i64, receiver: UserId) -> Message {
    Message {
        id,
        sender_id: 999,
        sender_username: "sender".into(),
        receiver_id: Some(receiver),
        conversation_id: 1,
        content: format!("message {id}"),
        timestamp: now(),
        kind: MessageType::Message,
    }
}

fn frame(message: &Message) -> Bytes {
    Bytes::from(serde_json::to_vec(message).expect("a message serialises"))
}

/// The recent lists under `prefix` on the node at `port`.
async fn recent_lists(port: u16, prefix: &str) -> Vec<String> {
    let mut conn = node_connection(port).await.expect("connect to a node");
    redis::cmd("KEYS")
        .arg(format!("{prefix}recent:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS")
}

/// The process id of the node at `port`.
async fn pid(port: u16) -> u32 {
    let mut conn = node_connection(port).await.expect("connect to a node");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("a process_id in INFO server")
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_that_missed_too_many_pushes_clears_every_master() {
    let cluster = ThrowawayRedisCluster::start(3, 0).await;
    let prefix = unique_redis_prefix();
    let config = RedisConfig {
        url: cluster.url(),
        prefix: prefix.clone(),
        presence_ttl: minichat_core::broker::PRESENCE_TTL,
        timeout: Duration::from_millis(300),
    };
    let cache = RedisCache::connect(&config).await.expect("connect");

    // Lists for receivers all over the cluster.
    let receivers: Vec<UserId> = (1..=30).collect();
    for &r in &receivers {
        cache.push(r, &frame(&message(r, r))).await.expect("push");
    }
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3);
    let mut holding = 0;
    for &port in &masters {
        if !recent_lists(port, &prefix).await.is_empty() {
            holding += 1;
        }
    }
    assert_eq!(holding, 3, "every master holds some of the lists");
    let warm = cache.recent(7, 10).await.expect("recent").expect("warm");
    assert_eq!(warm.iter().map(|m| m.id).collect::<Vec<_>>(), vec![7]);

    // Frozen: pushes fail (the first after the 300 ms budget, the rest at once) and each
    // marks its receiver stale, more than can be remembered one by one.
    let pids = futures_util::future::join_all(masters.iter().map(|&p| pid(p))).await;
    for &p in &pids {
        signal(p, "STOP");
    }
    let mut failed = 0;
    for r in 1..=(MAX_STALE as UserId + 1) {
        if cache.push(r, &frame(&message(r, r))).await.is_err() {
            failed += 1;
        }
    }
    for &p in &pids {
        signal(p, "CONT");
    }
    assert_eq!(failed, MAX_STALE + 1, "every push during the freeze failed");

    // Back: the first read clears every list, on every master.
    let until = Instant::now() + DEADLINE;
    loop {
        if cache.check().await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < until,
            "the cache never found the cluster again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        cache.recent(7, 10).await.expect("recent"),
        None,
        "a list that may have a hole is cold"
    );
    let mut left = BTreeSet::new();
    for &port in &masters {
        left.extend(recent_lists(port, &prefix).await);
    }
    assert!(left.is_empty(), "lists left after the clear: {left:?}");

    // And it fills again from new pushes.
    cache.push(7, &frame(&message(70, 7))).await.expect("push");
    let again = cache.recent(7, 10).await.expect("recent").expect("warm");
    assert_eq!(again.iter().map(|m| m.id).collect::<Vec<_>>(), vec![70]);
}
