//! The recent-messages cache in Redis, shared by every node of the cluster.
//!
//! `GET /messages/recent/{user_id}` is the hottest read of the chat. With several nodes, an
//! in-process cache would only know the messages its own node handled; this one keeps a list
//! per receiver in Redis that every node pushes to:
//!
//! - `{prefix}recent:{receiver}` is a list of message JSON (the serde form of
//!   [`Message`]), newest first, capped at [`CACHE_CAPACITY`] entries and expiring
//!   [`CACHE_TTL`] after the last push.
//! - A push is one round trip: `MULTI; LPUSH; LTRIM; PEXPIRE; EXEC`, so the list never grows
//!   past its cap nor lives without an expiry, even when the node dies half-way.
//! - A read is one `LRANGE`. An empty or missing list, or one holding an entry this build cannot
//!   decode (written by another version, say), is reported as cold (`None`): the service then
//!   reads storage, which is always the source of truth.
//!
//! Every Redis failure is [`Error::Unavailable`] for [`Backend::Cache`]; the service treats the
//! cache as best effort and carries on without it.

use super::{RecentCache, CACHE_CAPACITY, CACHE_TTL};
use crate::error::{Backend, Error, Result};
use crate::model::{Message, UserId};
use crate::redis_support::{self, Keys, RedisConfig, RedisPool};
use async_trait::async_trait;

/// The recent-messages cache in Redis: a list per receiver (`{prefix}recent:{id}`) of message
/// JSON, newest first, capped at [`CACHE_CAPACITY`] and expiring [`CACHE_TTL`] after the last
/// push. A list holding an entry it cannot decode reads as cold; every Redis failure is
/// [`Error::Unavailable`] for [`Backend::Cache`], at once while Redis is known to be away.
pub struct RedisCache {
    pool: RedisPool,
    keys: Keys,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

impl RedisCache {
    /// Connects to Redis. A malformed or unreachable `REDIS_URL` is an [`Error::Config`].
    pub async fn connect(config: &RedisConfig) -> Result<Self> {
        let (pool, _) = redis_support::connect_pool(config).await?;
        Ok(RedisCache {
            pool,
            keys: Keys::new(&config.prefix),
        })
    }
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::unavailable(Backend::Cache, e)
}

#[async_trait]
impl RecentCache for RedisCache {
    async fn push(&self, message: &Message) -> Result<()> {
        let json = serde_json::to_vec(message).map_err(unavailable)?;
        let key = self.keys.recent(message.receiver_id);
        let ttl_ms = u64::try_from(CACHE_TTL.as_millis()).unwrap_or(u64::MAX);
        let mut conn = self.pool.get(Backend::Cache).await?;
        redis::pipe()
            .atomic()
            .cmd("LPUSH")
            .arg(&key)
            .arg(json)
            .ignore()
            .cmd("LTRIM")
            .arg(&key)
            .arg(0)
            .arg(CACHE_CAPACITY as i64 - 1)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl_ms)
            .ignore()
            .query_async::<()>(&mut *conn)
            .await
            .map_err(unavailable)
    }

    async fn recent(&self, receiver: UserId, limit: usize) -> Result<Option<Vec<Message>>> {
        // LRANGE's stop index is inclusive, and -1 would mean "to the end": ask for at least one
        // entry so that an empty list still reads as cold, then cut to `limit`.
        let stop = i64::try_from(limit.max(1)).unwrap_or(i64::MAX) - 1;
        let key = self.keys.recent(receiver);
        let mut conn = self.pool.get(Backend::Cache).await?;
        let raw: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(&key)
            .arg(0)
            .arg(stop)
            .query_async(&mut *conn)
            .await
            .map_err(unavailable)?;
        drop(conn);
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

    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn check(&self) -> Result<()> {
        self.pool.ping(Backend::Cache).await
    }
}
