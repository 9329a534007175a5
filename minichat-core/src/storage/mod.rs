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
    Conversation, ConversationChange, ConversationId, ConversationSummary, HistoryQuery, Message,
    Page, Seq, StoredMessage, StreamEvent, User, UserId, UserSearch, ValidGroup, ValidMessage,
    ValidNewMembers, ValidReadMark, ValidRename, ValidUser,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// A stored read mark: where, how far, and whom to tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadReceipt {
    pub conversation_id: ConversationId,
    pub up_to: crate::model::MessageId,
    /// The conversation's other members.
    pub others: Vec<UserId>,
}

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

    /// Stores a message in its conversation and gives it the next `seq` of its sender and of
    /// every other member, atomically: when this returns `Ok`, the message is committed. A
    /// message to a user goes to the direct conversation of the pair, made in the same step on
    /// first use (exactly one per pair, also when both send their first message at once, on two
    /// nodes). When `(sender, client_id)` was stored before, returns that message with
    /// `created: false` (and no recipients) and stores nothing; `Error::ClientIdConflict` when
    /// it was a different message. `Error::SenderNotFound` / `Error::ReceiverNotFound` when a
    /// user does not exist; `Error::ConversationNotFound` when the sender is not a member of
    /// the conversation.
    async fn store_message(&self, message: &ValidMessage) -> Result<StoredMessage>;

    /// Stores a run of one sender's `messages`, in order, each as [`store_message`] would
    /// (its own answer: a bad one does not fail the others), so that their seqs follow the run.
    /// Once one fails for want of the backend (`Error::Unavailable`), the rest are not stored
    /// either, and answer the same: a later message is never stored without an earlier one.
    /// PostgreSQL commits a run in one transaction.
    ///
    /// [`store_message`]: Storage::store_message
    async fn store_messages(&self, messages: &[&ValidMessage]) -> Vec<Result<StoredMessage>> {
        crate::error::one_after_another(messages.iter(), |message| self.store_message(message))
            .await
    }

    /// Messages newest first (see [`HistoryQuery`]); `Error::ConversationNotFound` when the
    /// query names a conversation the user is not a member of.
    async fn history(&self, query: &HistoryQuery) -> Result<Vec<Message>>;

    /// The newest `limit` direct messages `user` received, newest first.
    async fn recent_received(&self, user: UserId, limit: usize) -> Result<Vec<Message>>;

    /// The events of `user`'s update stream with a seq above `since`, oldest first, at most
    /// `limit`, each with the seq it has in `user`'s stream: messages (with their `client_id`
    /// when `user` sent them with one, never on a message `user` received) and membership
    /// changes.
    async fn events_since(
        &self,
        user: UserId,
        since: Seq,
        limit: usize,
    ) -> Result<Vec<StreamEvent>>;

    /// The seq of `user`'s newest event (0 when none, or no such user).
    async fn current_seq(&self, user: UserId) -> Result<Seq>;

    /// Records that the mark's reader has read its conversation up to `up_to` (a message of
    /// that conversation from another member; for a peer, the direct conversation with them),
    /// never moving backwards. Returns the conversation, the stored mark and the other members
    /// to tell. `Error::ConversationNotFound` when the reader is not a member (or, for a peer,
    /// no message was ever exchanged); `Error::MessageNotFound` when `up_to` is not such a
    /// message.
    async fn mark_read(&self, mark: &ValidReadMark) -> Result<ReadReceipt>;

    /// The read marks between `user` and `peer` in their direct conversation: the newest of
    /// `peer`'s messages `user` has read, and the newest of `user`'s messages `peer` has read.
    async fn read_marks(&self, user: UserId, peer: UserId) -> Result<ReadState>;

    /// Creates a group: the creator as `owner`, the others as `member`s, and a `created` event
    /// in every member's stream. `Error::UserNotFound` when any member does not exist.
    async fn create_group(&self, group: &ValidGroup) -> Result<ConversationChange>;

    /// The conversation `id`, with its members, if `user` is one of them;
    /// `Error::ConversationNotFound` otherwise.
    async fn conversation(&self, id: ConversationId, user: UserId) -> Result<Conversation>;

    /// `user`'s conversations, most recent activity first (the newest message's time, or the
    /// conversation's creation when it has none; then the higher id), then `page`.
    async fn conversations(&self, user: UserId, page: Page) -> Result<Vec<ConversationSummary>>;

    /// Renames group `id` ([`authorize_rename`](crate::model::authorize_rename)), with a
    /// `renamed` event to every member.
    async fn rename_conversation(
        &self,
        id: ConversationId,
        rename: &ValidRename,
    ) -> Result<ConversationChange>;

    /// Adds the users of `add` who are not members yet
    /// ([`authorize_add`](crate::model::authorize_add), at most `max_members` in all), with a
    /// `member_added` event to every member (`user_ids`: those added, possibly none).
    /// `Error::UserNotFound` when one does not exist.
    async fn add_members(
        &self,
        id: ConversationId,
        add: &ValidNewMembers,
        max_members: usize,
    ) -> Result<ConversationChange>;

    /// `actor` removes `member` (themself: leaves) from group `id`
    /// ([`authorize_removal`](crate::model::authorize_removal)), with a `member_removed`
    /// event to the remaining members and the removed one. `Error::ConversationNotFound` when
    /// `actor` is not a member, `Error::UserNotFound` when `member` is not.
    async fn remove_member(
        &self,
        id: ConversationId,
        actor: UserId,
        member: UserId,
    ) -> Result<ConversationChange>;

    /// Records when `user` was last seen online (never moving backwards).
    async fn set_last_seen(&self, user: UserId, at: DateTime<Utc>) -> Result<()>;

    /// When each of `users` was last seen online, as recorded; `None` for never (or unknown).
    async fn last_seen(&self, users: &[UserId]) -> Result<Vec<Option<DateTime<Utc>>>>;

    /// What this backend is, for `/health` (memory or PostgreSQL).
    fn kind(&self) -> crate::BackendKind;

    /// Whether the backend answers now.
    async fn check(&self) -> Result<()>;
}
