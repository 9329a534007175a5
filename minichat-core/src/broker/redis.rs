//! Redis broker (placeholder until the backend lands).

use super::{Broker, Delivery};
use crate::error::{Error, Result};
use crate::hub::Hub;
use crate::model::UserId;
use crate::redis_support::RedisConfig;
use async_trait::async_trait;

pub struct RedisBroker {}

impl RedisBroker {
    pub async fn connect(_config: &RedisConfig, _hub: Hub) -> Result<Self> {
        Err(Error::config("REDIS_URL", "Redis is not built yet"))
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, _d: &[Delivery]) -> Result<Vec<bool>> {
        unimplemented!()
    }
    async fn watch_user(&self, _u: UserId) -> Result<()> {
        unimplemented!()
    }
    fn kind(&self) -> &'static str {
        "redis"
    }
    async fn check(&self) -> Result<()> {
        Ok(())
    }
}
