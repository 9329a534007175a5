//! Which backends a chat uses and its budgets: [`ChatConfig`], and the defaults written once
//! here. Read by `Chat::connect` (`service.rs`) and by the server's settings.

use crate::hub::DEFAULT_QUEUE_CAPACITY;
use crate::model::DEFAULT_MAX_GROUP_MEMBERS;
use std::time::Duration;

/// How long one call to a backend (a storage call with its transaction, one Redis command) may
/// take before it fails as unavailable, by default (`MINICHAT_BACKEND_TIMEOUT_MS`): the one
/// place this default is written.
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(5);

/// How long each backend's check of [`ChatService::health`](crate::ChatService::health) may take (they run concurrently),
/// or the backend budget if that is shorter: past it, the backend is reported down.
pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Which backends to use; the defaults are all in-process.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// PostgreSQL URL; `None` keeps everything in memory.
    pub database_url: Option<String>,
    /// Maximum PostgreSQL connections of this node.
    pub database_pool_size: usize,
    /// Redis URL; `None` keeps fan-out and the cache in this process.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel.
    pub redis_prefix: String,
    /// Capacity of each subscriber's queue.
    pub queue_capacity: usize,
    /// With Redis: how long a node's report that a user is connected lasts without renewal, so
    /// the users of a node that died without goodbye go offline by themselves.
    pub presence_ttl: std::time::Duration,
    /// The longest one backend call may take before it fails as unavailable (a PostgreSQL
    /// call as a whole, checkout and commit included; each Redis command): what bounds a
    /// request while a backend is down or silent. Default [`DEFAULT_BACKEND_TIMEOUT`].
    pub backend_timeout: Duration,
    /// Members per group, creator included. Default [`DEFAULT_MAX_GROUP_MEMBERS`].
    pub max_group_members: usize,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            database_url: None,
            database_pool_size: 16,
            redis_url: None,
            redis_prefix: "minichat:".into(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            presence_ttl: crate::broker::PRESENCE_TTL,
            backend_timeout: DEFAULT_BACKEND_TIMEOUT,
            max_group_members: DEFAULT_MAX_GROUP_MEMBERS,
        }
    }
}
