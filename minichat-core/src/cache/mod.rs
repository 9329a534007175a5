//! The recent-messages cache: the newest messages each user received, kept close at hand.
//!
//! [`RecentCache`] is the seam; [`MemoryCache`] is the in-process default and [`RedisCache`]
//! the shared one (chosen when `REDIS_URL` is set). Each keeps a capped list per receiver
//! ([`CACHE_CAPACITY`] entries, expiring [`CACHE_TTL`] after the last push). The cache is never
//! the source of truth: the service falls back to storage when it is cold, short or down.

mod memory;
mod redis;

pub use self::redis::{RedisCache, MAX_STALE};
pub use memory::MemoryCache;

use crate::error::Result;
use crate::model::{Message, UserId};
use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;

/// Entries kept per receiver.
pub const CACHE_CAPACITY: usize = 100;
/// A receiver's list expires this long after its last push.
pub const CACHE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

#[async_trait]
pub trait RecentCache: Send + Sync + 'static {
    /// Records a message `receiver` got (the newest first, capped, expiry renewed), as the
    /// frame already serialised for them: the JSON of a [`Message`] plus its `seq`, which
    /// readers ignore. Taking the frame's bytes means no serialisation or copy per message.
    async fn push(&self, receiver: UserId, frame: &Bytes) -> Result<()>;

    /// Up to `limit` of the newest messages `receiver` got, newest first; `None` when the cache
    /// holds nothing for them.
    async fn recent(&self, receiver: UserId, limit: usize) -> Result<Option<Vec<Message>>>;

    /// What this cache is, for `/health` (memory or Redis).
    fn kind(&self) -> crate::BackendKind;

    async fn check(&self) -> Result<()>;
}
