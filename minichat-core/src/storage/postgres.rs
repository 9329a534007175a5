//! PostgreSQL storage (placeholder until the backend lands).

use super::Storage;
use crate::error::{Error, Result};
use crate::model::{
    HistoryQuery, Message, Page, Seq, StoredMessage, User, UserId, ValidMessage, ValidUser,
};
use async_trait::async_trait;

#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub url: String,
    pub pool_size: usize,
}

pub struct PostgresStorage {}

impl PostgresStorage {
    pub async fn connect(_config: &PostgresConfig) -> Result<Self> {
        Err(Error::config(
            "DATABASE_URL",
            "PostgreSQL storage is not built yet",
        ))
    }
    pub async fn migrate_only(_url: &str) -> Result<()> {
        Err(Error::config(
            "DATABASE_URL",
            "PostgreSQL storage is not built yet",
        ))
    }
}

#[async_trait]
impl Storage for PostgresStorage {
    async fn create_user(&self, _user: &ValidUser) -> Result<User> {
        unimplemented!()
    }
    async fn list_users(&self, _page: Page) -> Result<Vec<User>> {
        unimplemented!()
    }
    async fn get_user(&self, _id: UserId) -> Result<Option<User>> {
        unimplemented!()
    }
    async fn store_message(&self, _m: &ValidMessage) -> Result<StoredMessage> {
        unimplemented!()
    }
    async fn history(&self, _q: &HistoryQuery) -> Result<Vec<Message>> {
        unimplemented!()
    }
    async fn recent_received(&self, _u: UserId, _l: usize) -> Result<Vec<Message>> {
        unimplemented!()
    }
    async fn events_since(&self, _u: UserId, _s: Seq, _l: usize) -> Result<Vec<(Seq, Message)>> {
        unimplemented!()
    }
    fn kind(&self) -> &'static str {
        "postgresql"
    }
    async fn check(&self) -> Result<()> {
        Ok(())
    }
}
