//! Redis recent-messages cache (placeholder until the backend lands).

use super::RecentCache;
use crate::error::{Error, Result};
use crate::model::{Message, UserId};
use crate::redis_support::RedisConfig;
use async_trait::async_trait;

pub struct RedisCache {}

impl RedisCache {
    pub async fn connect(_config: &RedisConfig) -> Result<Self> {
        Err(Error::config("REDIS_URL", "Redis is not built yet"))
    }
}

#[async_trait]
impl RecentCache for RedisCache {
    async fn push(&self, _m: &Message) -> Result<()> {
        unimplemented!()
    }
    async fn recent(&self, _r: UserId, _l: usize) -> Result<Option<Vec<Message>>> {
        unimplemented!()
    }
    fn kind(&self) -> &'static str {
        "redis"
    }
    async fn check(&self) -> Result<()> {
        Ok(())
    }
}
