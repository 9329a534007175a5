//! The `ChatService` contract: what every transport (the HTTP server, an embedding
//! application, a test) may ask of a chat, and what a send answers. A file of its own so that
//! the public contract reads apart from `Chat`, its implementation (`service.rs`).

use crate::error::Result;
use crate::event::Presence;
use crate::health::Health;
use crate::hub::{ConnectionId, Subscription};
use crate::model::{
    Conversation, ConversationId, ConversationSummary, HistoryRequest, Message, MessageId,
    NewGroup, NewMembers, NewMessage, NewUser, ReadState, Recipient, Rename, Seq, StreamEvent,
    User, UserId, UserSearchRequest,
};
use async_trait::async_trait;

/// The outcome of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub message: Message,
    /// The message's seq in the sender's stream.
    pub sender_seq: Seq,
    /// Every other member (the receiver of a direct message) with the message's seq in their
    /// stream, by user id; empty for a retried `client_id`.
    pub recipients: Vec<(UserId, Seq)>,
    /// Whether any other member (the receiver of a direct message) had a live connection on
    /// any node when it was sent (false for a retried `client_id`, which is not delivered
    /// again).
    pub delivered: bool,
    /// False when this was a retry of an already stored `(sender, client_id)`.
    pub created: bool,
}

/// The public contract of a chat: users, messages, history, recent messages, subscriptions.
#[async_trait]
pub trait ChatService: Send + Sync + 'static {
    async fn create_user(&self, new: NewUser) -> Result<User>;

    /// Users ordered by id; `skip ≥ 0`, `limit` in `1..=1000`.
    async fn list_users(&self, skip: i64, limit: i64) -> Result<Vec<User>>;

    /// The directory's search: users whose username or display name starts with `request.q`
    /// (trimmed, any case), ordered by id, paged as [`list_users`](Self::list_users). A separate
    /// operation rather than an optional filter on the list, so that listing keeps its exact
    /// meaning; `Error::Invalid` for a `q` that is empty once trimmed, longer than
    /// [`SEARCH_MAX_CHARS`](crate::model::SEARCH_MAX_CHARS) or holds NUL (see
    /// [`UserSearchRequest::validate`]).
    async fn search_users(&self, request: UserSearchRequest) -> Result<Vec<User>>;

    /// `Error::UserNotFound` when there is no such user.
    async fn get_user(&self, id: UserId) -> Result<User>;

    /// Validates, stores (committed when this returns), then delivers to the receiver's
    /// connections and the sender's other connections on every node. `origin` is the sending
    /// connection, which is not sent its own message.
    ///
    /// Run it to its end: a future dropped after the commit but before the fan-out leaves the
    /// message stored but not delivered live (readers of an [`EventStream`](crate::EventStream)
    /// still get it, from storage, at their next gap or resume). A transport whose requests can
    /// be cancelled spawns it, as the server does for every request that changes something.
    /// The same holds for the membership changes below.
    async fn send_message(
        &self,
        new: NewMessage,
        origin: Option<ConnectionId>,
    ) -> Result<SentMessage>;

    /// A run of one sender's messages, in order, each answered as [`send_message`] would
    /// answer it alone (a bad one fails no other). Their seqs follow the run's order, and each
    /// is delivered after the one before it. Once one fails for want of a backend, the rest
    /// are not stored either (`Error::Unavailable`): a later message never lands without an
    /// earlier one. A backend may commit the run in one go (PostgreSQL does: one transaction),
    /// which is why a transport that reads several sends at once hands them over together.
    ///
    /// [`send_message`]: ChatService::send_message
    async fn send_messages(
        &self,
        news: Vec<NewMessage>,
        origin: Option<ConnectionId>,
    ) -> Vec<Result<SentMessage>> {
        crate::error::one_after_another(news.into_iter(), |new| self.send_message(new, origin))
            .await
    }

    /// Messages newest first: a conversation's (its members only:
    /// `Error::ConversationNotFound` otherwise), or a user's direct messages.
    async fn history(&self, request: HistoryRequest) -> Result<Vec<Message>>;

    /// Creates a group with its creator as `owner`; every member gets a `created` event.
    async fn create_group(&self, new: NewGroup) -> Result<Conversation>;

    /// Conversation `id` as its member `user` sees it; `Error::ConversationNotFound` for
    /// anyone else.
    async fn conversation(&self, id: ConversationId, user: UserId) -> Result<Conversation>;

    /// `user`'s inbox: their conversations, most recent activity first, paged as
    /// [`list_users`](Self::list_users).
    async fn conversations(
        &self,
        user: UserId,
        skip: i64,
        limit: i64,
    ) -> Result<Vec<ConversationSummary>>;

    /// Renames a group (owners and admins); every member gets a `renamed` event.
    async fn rename_conversation(&self, id: ConversationId, rename: Rename)
        -> Result<Conversation>;

    /// Adds members (owners and admins; already-members are ignored); every member gets a
    /// `member_added` event.
    async fn add_members(&self, id: ConversationId, add: NewMembers) -> Result<Conversation>;

    /// `actor` removes `member`, or leaves when they are the same; the remaining members and
    /// the removed one get a `member_removed` event. Returns the conversation after it.
    async fn remove_member(
        &self,
        id: ConversationId,
        actor: UserId,
        member: UserId,
    ) -> Result<Conversation>;

    /// The newest 50 messages a user received, newest first.
    async fn recent_messages(&self, user: UserId) -> Result<Vec<Message>>;

    /// A live stream of the user's events on this node. `Error::UserNotFound` for an unknown
    /// user. When this returns, every event sent to the user from then on reaches the stream.
    async fn subscribe(&self, user: UserId) -> Result<Subscription>;

    /// Stored events of the user's stream with a seq above `since`, oldest first, at most
    /// `limit`: what a reconnecting client missed. The user's own sends carry their
    /// `client_id` (see [`StreamMessage`](crate::model::StreamMessage)).
    async fn events_since(
        &self,
        user: UserId,
        since: Seq,
        limit: usize,
    ) -> Result<Vec<StreamEvent>>;

    /// The seq of the user's newest stored event (0 when none): where a live stream that did
    /// not ask for a replay starts.
    async fn current_seq(&self, user: UserId) -> Result<Seq>;

    /// Tells the others of `to` (a user, or a conversation's other members) that `sender` is
    /// typing (not stored; delivered to connected devices). `Error::ConversationNotFound` when
    /// the sender is not a member of the conversation.
    async fn typing(&self, sender: UserId, to: Recipient) -> Result<()>;

    /// Stores that `reader` read `to` (a conversation, or the direct one with a peer) up to
    /// `up_to` (never moving backwards) and tells its other members. Returns the stored mark.
    /// `Error::MessageNotFound` when `up_to` is not another member's message there.
    async fn mark_read(&self, reader: UserId, to: Recipient, up_to: MessageId)
        -> Result<MessageId>;

    /// How far `user` and `peer` have read each other's messages.
    async fn read_state(&self, user: UserId, peer: UserId) -> Result<ReadState>;

    /// Whether each of `users` is online anywhere in the cluster, and when they were last seen.
    async fn presence(&self, users: &[UserId]) -> Result<Vec<Presence>>;

    /// Makes `subscription` receive presence events of `users`, and returns their presence now.
    /// `Error::WatchLimit`, and nothing watched, beyond [`MAX_WATCHED`](crate::hub::MAX_WATCHED)
    /// users in all.
    async fn watch(
        &self,
        subscription: &mut Subscription,
        users: &[UserId],
    ) -> Result<Vec<Presence>>;

    async fn health(&self) -> Health;

    /// Called by a transport at shutdown, once it has closed its connections: returns when what
    /// the chat owes the cluster for them is done (each departed user taken off this node's
    /// presence, their last-seen time recorded), so that nothing more is written for them
    /// afterwards. The chat stays usable. Nothing to wait for, by default.
    async fn drain(&self) {}
}
