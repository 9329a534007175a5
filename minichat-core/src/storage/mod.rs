//! Storage: where users and messages durably live.
//!
//! [`Storage`] is the seam between the service and its database. Two implementations:
//! [`MemoryStorage`] (the zero-set-up default; gone with the process) and
//! [`PostgresStorage`] (chosen when `DATABASE_URL` is set). Both assign each message a place in
//! the sender's and the receiver's update sequence (`seq`) in the same step that stores it.

mod memory;
mod postgres;
pub mod provision;

pub use memory::MemoryStorage;
pub use postgres::{PostgresConfig, PostgresStorage};

use crate::error::Result;
use crate::model::ReadState;
use crate::model::{
    HistoryQuery, Message, MessageId, Page, Seq, StoredMessage, StreamMessage, User, UserId,
    UserSearch, ValidMessage, ValidReadMark, ValidUser,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Stores a new user. `Error::UsernameTaken` when the username exists.
    async fn create_user(&self, user: &ValidUser) -> Result<User>;

    /// Users ordered by id.
    async fn list_users(&self, page: Page) -> Result<Vec<User>>;

    /// The users matching `search` ([`UserSearch::matches`]: username or display name starts
    /// with its prefix, case folded), ordered by id, then its page.
    async fn search_users(&self, search: &UserSearch) -> Result<Vec<User>>;

    async fn get_user(&self, id: UserId) -> Result<Option<User>>;

    /// Stores a message and gives it the next `seq` of its sender and of its receiver, atomically:
    /// when this returns `Ok`, the message is committed. When `(sender, client_id)` was stored
    /// before, returns that message with `created: false` and stores nothing.
    /// `Error::SenderNotFound` / `Error::ReceiverNotFound` when either user does not exist.
    async fn store_message(&self, message: &ValidMessage) -> Result<StoredMessage>;

    /// A user's messages, newest first (see [`HistoryQuery`]).
    async fn history(&self, query: &HistoryQuery) -> Result<Vec<Message>>;

    /// The newest `limit` messages `user` received, newest first.
    async fn recent_received(&self, user: UserId, limit: usize) -> Result<Vec<Message>>;

    /// The messages of `user`'s update stream with a seq above `since`, oldest first, at most
    /// `limit`, each with the seq it has in `user`'s stream, and with its `client_id` when
    /// `user` sent it with one (never on a message `user` received).
    async fn events_since(
        &self,
        user: UserId,
        since: Seq,
        limit: usize,
    ) -> Result<Vec<StreamMessage>>;

    /// The seq of `user`'s newest event (0 when none, or no such user).
    async fn current_seq(&self, user: UserId) -> Result<Seq>;

    /// Records that the mark's reader has read the messages its peer sent them up to `up_to` (a
    /// message from the peer to the reader), never moving backwards; returns the stored mark.
    /// `Error::MessageNotFound` when `up_to` is not such a message.
    async fn mark_read(&self, mark: &ValidReadMark) -> Result<MessageId>;

    /// The read marks between `user` and `peer`: the newest of `peer`'s messages `user` has
    /// read, and the newest of `user`'s messages `peer` has read.
    async fn read_marks(&self, user: UserId, peer: UserId) -> Result<ReadState>;

    /// Records when `user` was last seen online (never moving backwards).
    async fn set_last_seen(&self, user: UserId, at: DateTime<Utc>) -> Result<()>;

    /// When each of `users` was last seen online, as recorded; `None` for never (or unknown).
    async fn last_seen(&self, users: &[UserId]) -> Result<Vec<Option<DateTime<Utc>>>>;

    /// What this backend is, for `/health` (memory or PostgreSQL).
    fn kind(&self) -> crate::BackendKind;

    /// Whether the backend answers now.
    async fn check(&self) -> Result<()>;
}
