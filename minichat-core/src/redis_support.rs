//! Redis connection set-up shared by the Redis cache and broker: URL parsing, key naming.
//! (Filled in by the Redis backend work.)

/// Where Redis is, and the prefix of every key and channel.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    pub prefix: String,
}
