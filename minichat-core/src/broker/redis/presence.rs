//! Cluster-wide presence in Redis: which nodes a user is connected to, and when they were seen.
//!
//! This file exists so that the presence records, the scripts that change them and the heartbeat
//! that keeps them alive are read together: their expiry rules only make sense side by side.
//!
//! Each user has a sorted set `{prefix}online:{<user>}` of the nodes where they are connected,
//! scored by when that report expires ([`PRESENCE_TTL`] by default); every node renews its users
//! every heartbeat, so a node that dies without goodbye drops out by itself. Arrivals and
//! departures are Lua scripts, so "came online" and "went offline" are decided atomically across
//! nodes. `{prefix}seen:{<user>}` keeps when the user was last seen, in Unix milliseconds.
//! The heartbeat also runs at once when the subscriber link comes back after an outage: a Redis
//! that restarted without its data has lost every record, and users would read offline until
//! the next tick.
//! Every round trip here is bounded by the backend budget (`RedisPool::bounded`).
//! (Presence changes travel on `{prefix}presence:{<user>}`, which every node pattern-subscribes;
//! see the subscriber link.)

use super::{unavailable, CHUNK};
use crate::broker::ClusterPresence;
use crate::error::{Backend, Result};
use crate::hub::Hub;
use crate::model::UserId;
use crate::redis_support::{Keys, RedisPool, UserPipelines};
use redis::Value;
use std::time::{Duration, SystemTime};

/// How long a node's presence report for a user lasts without a heartbeat, by default: a node
/// that stops without goodbye drops out of its users' presence within this time. Nodes renew
/// their users' reports three times per TTL.
pub const PRESENCE_TTL: Duration = Duration::from_secs(30);
/// How long `{prefix}seen:{<user>}` is kept.
const SEEN_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Adds this node to a user's presence and records them seen now; 1 when that made them
/// online (no other live node).
const ARRIVE: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local added = redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[5])
if added == 1 and redis.call('ZCARD', KEYS[1]) == 1 then return 1 end
return 0
"#;

/// Removes this node from a user's presence and records when they were seen; 1 when that made
/// them offline (no other live node).
const LEAVE: &str = r#"
local removed = redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
if removed == 1 and redis.call('ZCARD', KEYS[1]) == 0 then return 1 end
return 0
"#;

fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A duration as Redis milliseconds (`PX`, `PEXPIRE`), clamped.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// This node's presence reports, and the reading of everyone's.
pub(super) struct Presence {
    pool: RedisPool,
    keys: Keys,
    /// This node's name in users' presence sets.
    node: String,
    ttl: Duration,
    arrive: redis::Script,
    leave: redis::Script,
    /// Held by a heartbeat from its look at the hub to its last write, so that
    /// [`settle`](Presence::settle) can wait for one in flight.
    beat: tokio::sync::Mutex<()>,
}

impl Presence {
    /// Presence for a new node (named at random) whose reports last `ttl` without renewal.
    pub(super) fn new(pool: RedisPool, keys: Keys, ttl: Duration) -> Presence {
        Presence {
            pool,
            keys,
            node: format!("{:016x}", rand::random::<u64>()),
            ttl,
            arrive: redis::Script::new(ARRIVE),
            leave: redis::Script::new(LEAVE),
            beat: tokio::sync::Mutex::new(()),
        }
    }

    /// Adds this node to `user`'s presence; whether that made them online cluster-wide.
    pub(super) async fn arrive(&self, user: UserId) -> Result<bool> {
        let now = SystemTime::now();
        let came_online: i64 = self
            .pool
            .bounded(Backend::Broker, async {
                let mut conn = self.pool.get(Backend::Broker).await?;
                self.arrive
                    .key(self.keys.online(user))
                    .key(self.keys.seen(user))
                    .arg(unix_millis(now))
                    .arg(unix_millis(now + self.ttl))
                    .arg(&self.node)
                    .arg(millis(self.ttl * 2))
                    .arg(millis(SEEN_TTL))
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        Ok(came_online == 1)
    }

    /// Removes this node from `user`'s presence; whether that made them offline cluster-wide.
    pub(super) async fn leave(&self, user: UserId) -> Result<bool> {
        let went_offline: i64 = self
            .pool
            .bounded(Backend::Broker, async {
                let mut conn = self.pool.get(Backend::Broker).await?;
                self.leave
                    .key(self.keys.online(user))
                    .key(self.keys.seen(user))
                    .arg(unix_millis(SystemTime::now()))
                    .arg(&self.node)
                    .arg(millis(SEEN_TTL))
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        Ok(went_offline == 1)
    }

    /// Appends a look at `user`'s presence set to `pipe`: two of its nodes at most, which is
    /// enough for [`only_here`](Self::only_here) to tell.
    pub(super) fn nodes_command(&self, pipe: &mut redis::Pipeline, user: UserId) {
        pipe.cmd("ZRANGE").arg(self.keys.online(user)).arg(0).arg(1);
    }

    /// From the answer to [`nodes_command`](Self::nodes_command): whether this node alone has
    /// the user's connections, by a set that holds this node and no other. Anything else says
    /// no: another node's report, expired ones included (a node that stopped without goodbye,
    /// until its record goes); a set without this node (records behind the subscriptions, as
    /// after Redis lost its data, since the caller knows the user is here); an answer that is
    /// not understood.
    pub(super) fn only_here(&self, reply: Option<redis::RedisResult<Value>>) -> bool {
        match reply {
            Some(Ok(Value::Array(nodes))) => {
                matches!(nodes.as_slice(), [Value::BulkString(name)] if name == self.node.as_bytes())
            }
            _ => false,
        }
    }

    /// Whether each of `users` has a live report from any node, and when they were last seen.
    pub(super) async fn query(&self, users: &[UserId]) -> Result<Vec<ClusterPresence>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let now = unix_millis(SystemTime::now());
        let mut pipes = UserPipelines::new(&self.pool);
        for &user in users {
            let pipe = pipes.user();
            pipe.cmd("ZCOUNT")
                .arg(self.keys.online(user))
                .arg(now)
                .arg("+inf");
            pipe.cmd("GET").arg(self.keys.seen(user));
        }
        let answers: Vec<Value> = self
            .pool
            .bounded(Backend::Broker, async {
                let mut conn = self.pool.get(Backend::Broker).await?;
                pipes.query(&mut conn).await.map_err(unavailable)
            })
            .await?;
        Ok(answers
            .chunks(2)
            .map(|pair| {
                let count = redis::from_redis_value::<i64>(pair[0].clone()).unwrap_or(0);
                let seen = redis::from_redis_value::<Option<i64>>(pair[1].clone()).unwrap_or(None);
                ClusterPresence {
                    online: count > 0,
                    last_seen: seen.and_then(chrono::DateTime::from_timestamp_millis),
                }
            })
            .collect())
    }

    /// Renews this node's presence report for every user connected to `hub`, and when they were
    /// seen, in one pipelined round trip per chunk of users, three times per TTL. Runs until
    /// aborted.
    pub(super) async fn run_heartbeat(
        self: std::sync::Arc<Self>,
        hub: Hub,
        relinked: std::sync::Arc<tokio::sync::Notify>,
    ) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                // Redis came back after an outage, perhaps without its data (one that keeps
                // nothing on disk): renew now rather than leave users offline until the tick.
                _ = relinked.notified() => tick.reset(),
            }
            let _beat = self.beat.lock().await;
            let users = hub.connected_users();
            if let Err(e) = self.renew(&users).await {
                tracing::debug!(error = %e, "presence heartbeat failed; retrying next beat");
            }
            // A user who left while their renewal was on its way may have been put back:
            // their departure is handled again.
            hub.recheck_departures(&users);
        }
    }

    /// Returns once no heartbeat is in flight (a user it renewed who left meanwhile is a
    /// departure again): one that starts later sees the hub as it is now (with no connection
    /// left, it writes nothing).
    pub(super) async fn settle(&self) {
        drop(self.beat.lock().await);
    }

    /// One heartbeat for `users`; stops at the first chunk that fails.
    async fn renew(&self, users: &[UserId]) -> Result<()> {
        let now = SystemTime::now();
        let (now_ms, expiry) = (unix_millis(now), unix_millis(now + self.ttl));
        for chunk in users.chunks(CHUNK) {
            let mut pipes = UserPipelines::new(&self.pool);
            for &user in chunk {
                let pipe = pipes.user();
                pipe.cmd("ZADD")
                    .arg(self.keys.online(user))
                    .arg(expiry)
                    .arg(&self.node)
                    .ignore();
                pipe.cmd("PEXPIRE")
                    .arg(self.keys.online(user))
                    .arg(millis(self.ttl * 2))
                    .ignore();
                pipe.cmd("SET")
                    .arg(self.keys.seen(user))
                    .arg(now_ms)
                    .arg("PX")
                    .arg(millis(SEEN_TTL))
                    .ignore();
            }
            self.pool
                .bounded(Backend::Broker, async {
                    let mut conn = self.pool.get(Backend::Broker).await?;
                    pipes
                        .query::<Value>(&mut conn)
                        .await
                        .map(drop)
                        .map_err(unavailable)
                })
                .await?;
        }
        Ok(())
    }
}
