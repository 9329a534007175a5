//! The recent-messages cache in Redis, shared by every node of the cluster.
//!
//! `GET /messages/recent/{user_id}` is the hottest read of the chat. With several nodes, an
//! in-process cache would only know the messages its own node handled; this one keeps a list
//! per receiver in Redis that every node pushes to:
//!
//! - `{prefix}recent:{<receiver>}` is a list of the receiver's message frames (the serde form of
//!   [`Message`] plus its `seq`), newest first, capped at [`CACHE_CAPACITY`] entries and expiring
//!   [`CACHE_TTL`] after the last push.
//! - A push is one transaction, `MULTI; LPUSH; LTRIM; PEXPIRE; EXEC`, so the list never grows
//!   past its cap nor lives without an expiry, even when the node dies half-way. Pushes and
//!   reads go over the backend's shared multiplexed connection (see `redis_support`), so
//!   concurrent pushes share the socket's writes and round trips instead of taking one each.
//!   When the Redis broker was connected with this cache ([`RedisBroker::connect_with_cache`],
//!   as `Chat::connect` does), both share that connection and a send's push travels in the
//!   same pipeline as its `PUBLISH`es ([`Broker::publish_messages`]; a run of sends to one
//!   receiver is one transaction with one `LPUSH` of all their frames): the broker appends the
//!   transaction with [`RedisCache::push_commands`] and reports a failed push back here with
//!   [`RedisCache::push_failed`].
//!
//! [`RedisBroker::connect_with_cache`]: crate::broker::RedisBroker::connect_with_cache
//! [`Broker::publish_messages`]: crate::broker::Broker::publish_messages
//! - A read is one `LRANGE`. An empty or missing list, or one holding an entry this build cannot
//!   decode (written by another version, say), is reported as cold (`None`): the service then
//!   reads storage, which is always the source of truth.
//!
//! Every Redis failure is [`Error::Unavailable`] for [`Backend::Cache`], and so is a push or a
//! read that takes longer than the backend budget (each is bounded as a whole); the service
//! treats the cache as best effort and carries on without it.
//!
//! A push that fails leaves a hole in its receiver's list (Redis may keep the list through an
//! outage of ours, or of the link). So a failed push marks the receiver stale: their list reads
//! as cold here, and the first time Redis answers again the stale lists are deleted, for every
//! node (they fill again from new pushes, and storage answers meanwhile). At most
//! [`MAX_STALE`] receivers are remembered; past that, every recent list under the prefix is
//! cleared on recovery.

use super::{RecentCache, CACHE_CAPACITY, CACHE_TTL};
use crate::error::{Backend, Result};
use crate::model::{Message, UserId};
use crate::redis_support::{self, Connection, Keys, RedisConfig, RedisPool};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::Mutex;

/// The recent-messages cache in Redis: a list per receiver (`{prefix}recent:{<id>}`) of message
/// JSON, newest first, capped at [`CACHE_CAPACITY`] and expiring [`CACHE_TTL`] after the last
/// push. A list holding an entry it cannot decode reads as cold; every Redis failure is
/// [`Error::Unavailable`](crate::Error::Unavailable) for [`Backend::Cache`], at once while
/// Redis is known to be away.
pub struct RedisCache {
    pool: RedisPool,
    keys: Keys,
    stale: Mutex<Stale>,
}

/// Receivers whose lists may have a hole (a push for them failed), remembered until deleted.
#[derive(Default)]
struct Stale {
    receivers: HashSet<UserId>,
    /// More failed than [`MAX_STALE`]: clear every list.
    all: bool,
}

impl Stale {
    fn is_empty(&self) -> bool {
        !self.all && self.receivers.is_empty()
    }
}

/// How many stale receivers a [`RedisCache`] remembers one by one; past that, every recent list
/// under the prefix is cleared when Redis answers again.
pub const MAX_STALE: usize = 10_000;

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

impl RedisCache {
    /// Connects to Redis. A malformed or unreachable `REDIS_URL` is an
    /// [`Error::Config`](crate::Error::Config).
    pub async fn connect(config: &RedisConfig) -> Result<Self> {
        let pool = redis_support::connect_pool(config).await?;
        Ok(RedisCache {
            pool,
            keys: Keys::new(&config.prefix),
            stale: Mutex::new(Stale::default()),
        })
    }

    fn stale(&self) -> std::sync::MutexGuard<'_, Stale> {
        self.stale.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connections this cache uses: a broker connected with this cache shares them.
    pub(crate) fn pool(&self) -> &RedisPool {
        &self.pool
    }

    /// Whether some list may have a hole, to be deleted before the next push.
    pub(crate) fn has_stale(&self) -> bool {
        !self.stale().is_empty()
    }

    /// Appends a push of `frames` (oldest first) to `receiver`'s list to `pipe`, every command
    /// ignored: the `LPUSH`, `LTRIM` and `PEXPIRE` of the transaction, which the caller wraps
    /// in `MULTI` and `EXEC` (or an atomic pipeline). One `LPUSH` of several frames leaves the
    /// list as that many `LPUSH`es in a row would.
    pub(crate) fn push_commands<'a>(
        &self,
        pipe: &mut redis::Pipeline,
        receiver: UserId,
        frames: impl IntoIterator<Item = &'a Bytes>,
    ) {
        let key = self.keys.recent(receiver);
        let ttl_ms = u64::try_from(CACHE_TTL.as_millis()).unwrap_or(u64::MAX);
        let push = pipe.cmd("LPUSH").arg(&key);
        for frame in frames {
            push.arg(frame.as_ref());
        }
        push.ignore()
            .cmd("LTRIM")
            .arg(&key)
            .arg(0)
            .arg(CACHE_CAPACITY as i64 - 1)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl_ms)
            .ignore();
    }

    /// Records that a push for `receiver` sent by someone else (the broker) failed: their list
    /// may have a hole now.
    pub(crate) fn push_failed(&self, receiver: UserId) {
        self.mark_stale(receiver);
    }

    fn mark_stale(&self, receiver: UserId) {
        let mut stale = self.stale();
        if stale.receivers.len() >= MAX_STALE {
            stale.all = true;
            stale.receivers.clear();
        } else if !stale.all {
            stale.receivers.insert(receiver);
        }
    }

    /// Deletes the lists marked stale, now that Redis answers; keeps the marks on failure.
    async fn clear_stale(&self, conn: &mut Connection) -> Result<()> {
        let (receivers, all) = {
            let stale = self.stale();
            if stale.is_empty() {
                return Ok(());
            }
            (
                stale.receivers.iter().copied().collect::<Vec<_>>(),
                stale.all,
            )
        };
        if all {
            // A `SCAN` sees one server's keys: on a cluster, every master is scanned.
            let masters = conn
                .masters()
                .await
                .map_err(|e| self.pool.failed(Backend::Cache, e))?;
            if masters.is_empty() {
                self.unlink_matching(conn, None).await?;
            }
            for (host, port) in &masters {
                self.unlink_matching(conn, Some((host, *port))).await?;
            }
        } else {
            let keys: Vec<String> = receivers.iter().map(|r| self.keys.recent(*r)).collect();
            for chunk in keys.chunks(1000) {
                redis::cmd("UNLINK")
                    .arg(chunk)
                    .query_async::<()>(conn)
                    .await
                    .map_err(|e| self.pool.failed(Backend::Cache, e))?;
            }
        }
        let mut stale = self.stale();
        if all {
            // Marks made while clearing stay (the scan may have passed their keys already).
            stale.all = false;
        } else {
            for r in &receivers {
                stale.receivers.remove(r);
            }
        }
        tracing::info!(
            lists = if all {
                "all".to_string()
            } else {
                receivers.len().to_string()
            },
            "cleared recent-messages lists with a failed push"
        );
        Ok(())
    }
}

#[async_trait]
impl RecentCache for RedisCache {
    async fn push(&self, receiver: UserId, frame: &Bytes) -> Result<()> {
        let pushed = self
            .pool
            .bounded(Backend::Cache, self.push_now(receiver, frame))
            .await;
        if pushed.is_err() {
            self.mark_stale(receiver);
        }
        pushed
    }

    async fn recent(&self, receiver: UserId, limit: usize) -> Result<Option<Vec<Message>>> {
        self.pool
            .bounded(Backend::Cache, async {
                let mut conn = self.pool.shared(Backend::Cache)?;
                self.clear_stale(&mut conn).await?;
                if self.stale().receivers.contains(&receiver) {
                    return Ok(None);
                }
                self.read(&mut conn, receiver, limit).await
            })
            .await
    }

    fn kind(&self) -> crate::BackendKind {
        crate::BackendKind::Redis
    }

    async fn check(&self) -> Result<()> {
        self.pool.ping(Backend::Cache).await
    }
}

impl RedisCache {
    async fn push_now(&self, receiver: UserId, frame: &Bytes) -> Result<()> {
        let mut conn = self.pool.shared(Backend::Cache)?;
        self.clear_stale(&mut conn).await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.push_commands(&mut pipe, receiver, [frame]);
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.pool.failed(Backend::Cache, e))
    }

    /// `SCAN`s the recent lists under the prefix on one Redis, or on the cluster master at
    /// `node`, and unlinks each batch found.
    async fn unlink_matching(
        &self,
        conn: &mut Connection,
        node: Option<(&str, u16)>,
    ) -> Result<()> {
        let pattern = self.keys.recent_pattern();
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let answer = match node {
                Some((host, port)) => conn.on_node(scan, host, port).await,
                None => scan.query_async(conn).await,
            };
            let (next, keys): (u64, Vec<String>) = answer
                .and_then(|v| redis::from_redis_value(v).map_err(redis::RedisError::from))
                .map_err(|e| self.pool.failed(Backend::Cache, e))?;
            if !keys.is_empty() {
                // On a cluster, redis-rs splits a multi-key UNLINK by slot.
                redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<()>(conn)
                    .await
                    .map_err(|e| self.pool.failed(Backend::Cache, e))?;
            }
            cursor = next;
            if cursor == 0 {
                return Ok(());
            }
        }
    }

    async fn read(
        &self,
        conn: &mut Connection,
        receiver: UserId,
        limit: usize,
    ) -> Result<Option<Vec<Message>>> {
        // LRANGE's stop index is inclusive, and -1 would mean "to the end": ask for at least one
        // entry so that an empty list still reads as cold, then cut to `limit`.
        let stop = i64::try_from(limit.max(1)).unwrap_or(i64::MAX) - 1;
        let key = self.keys.recent(receiver);
        let raw: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(&key)
            .arg(0)
            .arg(stop)
            .query_async(conn)
            .await
            .map_err(|e| self.pool.failed(Backend::Cache, e))?;
        if raw.is_empty() {
            return Ok(None);
        }
        let mut messages = Vec::with_capacity(raw.len().min(limit));
        for entry in raw.iter().take(limit) {
            match serde_json::from_slice::<Message>(entry) {
                Ok(message) => messages.push(message),
                Err(e) => {
                    tracing::warn!(key, error = %e, "undecodable recent-messages entry; treating the cache as cold");
                    return Ok(None);
                }
            }
        }
        Ok(Some(messages))
    }
}
