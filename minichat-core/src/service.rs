//! The `ChatService` contract, and `Chat`, its implementation over the three backend seams.
//!
//! Every transport (the HTTP server, an embedding application, a test) talks to the chat
//! through [`ChatService`]. [`Chat`] validates input with the model, stores through
//! [`Storage`], records recent messages in the [`RecentCache`], and fans events out through the
//! [`Broker`] to the [`Hub`]s of the nodes where their users are connected.

use crate::broker::{Broker, ClusterPresence, Delivery, LocalBroker, RedisBroker};
use crate::cache::{MemoryCache, RecentCache, RedisCache};
use crate::error::{Error, Result};
use crate::event::{presence_event, read_event, typing_event, Frames, Presence};
use crate::health::{BackendKind, BackendStatus, Health};
use crate::hub::{ConnectionId, Hub, Subscription, DEFAULT_QUEUE_CAPACITY};
use crate::model::{
    Conversation, ConversationChange, ConversationId, ConversationSummary, HistoryRequest,
    Message, MessageId, NewGroup, NewMembers, NewMessage, NewUser, Page, ReadMark, ReadState,
    Recipient, Rename, Seq, StreamEvent, TypingSignal, User, UserId, UserSearchRequest,
    DEFAULT_MAX_GROUP_MEMBERS, RECENT_LIMIT,
};
use crate::redis_support::RedisConfig;
use crate::storage::{MemoryStorage, PostgresConfig, PostgresStorage, Storage};
use crate::telemetry;
use async_trait::async_trait;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::task::AbortHandle;

/// The outcome of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub message: Message,
    /// The message's seq in the sender's stream.
    pub sender_seq: Seq,
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
    async fn send_message(
        &self,
        new: NewMessage,
        origin: Option<ConnectionId>,
    ) -> Result<SentMessage>;

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
    /// `client_id` (see [`StreamMessage`]).
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

/// How long one call to a backend (a storage call with its transaction, one Redis command) may
/// take before it fails as unavailable, by default (`MINICHAT_BACKEND_TIMEOUT_MS`): the one
/// place this default is written.
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(5);

/// How long each backend's check of [`ChatService::health`] may take (they run concurrently),
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

/// The chat: a [`ChatService`] over a storage, a cache and a broker. Cheap to clone.
#[derive(Clone)]
pub struct Chat {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Arc<dyn Storage>,
    cache: Arc<dyn RecentCache>,
    broker: Arc<dyn Broker>,
    hub: Hub,
    /// The bound of each backend check of `health`.
    health_timeout: Duration,
    /// Members per group, creator included.
    max_group_members: usize,
    /// Handles users whose last local connection left (started with the first subscription,
    /// since that is when a runtime is sure to be there); ends with the chat.
    departures: OnceLock<AbortHandle>,
    /// Held while a batch of departures is taken and handled, by that task or by `drain`, so
    /// that `drain` returns only after a batch in flight is done.
    departing: tokio::sync::Mutex<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.departures.get() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Chat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat")
            .field("storage", &self.inner.storage.kind().as_str())
            .field("cache", &self.inner.cache.kind().as_str())
            .field("broker", &self.inner.broker.kind().as_str())
            .finish()
    }
}

impl Chat {
    /// Everything in this process: nothing to set up, nothing kept after exit.
    pub fn in_memory() -> Chat {
        let hub = Hub::default();
        Chat::from_parts(
            Arc::new(MemoryStorage::new()),
            Arc::new(MemoryCache::default()),
            Arc::new(LocalBroker::new(hub.clone())),
            hub,
        )
    }

    /// Assembles a chat from backends of your choice. `hub` must be the one `broker` feeds.
    pub fn from_parts(
        storage: Arc<dyn Storage>,
        cache: Arc<dyn RecentCache>,
        broker: Arc<dyn Broker>,
        hub: Hub,
    ) -> Chat {
        Chat::assemble(
            storage,
            cache,
            broker,
            hub,
            HEALTH_CHECK_TIMEOUT,
            DEFAULT_MAX_GROUP_MEMBERS,
        )
    }

    fn assemble(
        storage: Arc<dyn Storage>,
        cache: Arc<dyn RecentCache>,
        broker: Arc<dyn Broker>,
        hub: Hub,
        health_timeout: Duration,
        max_group_members: usize,
    ) -> Chat {
        Chat {
            inner: Arc::new(Inner {
                storage,
                cache,
                broker,
                hub,
                health_timeout,
                max_group_members,
                departures: OnceLock::new(),
                departing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Starts, once, the task that takes users off this node when their last connection
    /// leaves: unsubscribe them from the cluster, and when that took them offline, record when
    /// they were last seen and tell their watchers.
    fn handle_departures(&self) {
        self.inner.departures.get_or_init(|| {
            let departures = self.inner.hub.departures();
            let chat = Arc::downgrade(&self.inner);
            tokio::spawn(async move {
                loop {
                    departures.wait().await;
                    let Some(inner) = chat.upgrade() else { return };
                    let chat = Chat { inner };
                    let _one_batch = chat.inner.departing.lock().await;
                    chat.depart(departures.take()).await;
                }
            })
            .abort_handle()
        });
    }

    /// Takes `users` off this node's presence, unless they came back; records and announces
    /// those who went offline cluster-wide.
    async fn depart(&self, users: Vec<UserId>) {
        for user in users {
            if self.inner.hub.is_connected(user) {
                continue;
            }
            match self.inner.broker.user_left(user).await {
                Ok(true) => self.announce(user, false).await,
                Ok(false) => {}
                Err(e) => tracing::warn!(user, error = %e, "presence update failed"),
            }
        }
    }

    /// Records and publishes that `user` came online or went offline.
    async fn announce(&self, user: UserId, online: bool) {
        let now = crate::model::now();
        if !online {
            if let Err(e) = self.inner.storage.set_last_seen(user, now).await {
                tracing::warn!(user, error = %e, "could not record last_seen");
            }
        }
        let event = presence_event(&Presence {
            user_id: user,
            online,
            last_seen: Some(now),
        });
        match self.inner.broker.publish_presence(user, &event).await {
            Ok(()) => telemetry::published("presence", 1),
            Err(e) => tracing::warn!(user, error = %e, "presence publish failed"),
        }
    }

    /// Connects the backends `config` names (PostgreSQL migrations run first), falling back to
    /// the in-process ones for what it leaves unset. Fails when a configured backend cannot be
    /// reached, with an error that names the setting.
    pub async fn connect(config: &ChatConfig) -> Result<Chat> {
        let hub = Hub::new(config.queue_capacity);
        let storage: Arc<dyn Storage> = match &config.database_url {
            Some(url) => Arc::new(
                PostgresStorage::connect(&PostgresConfig {
                    url: url.clone(),
                    pool_size: config.database_pool_size,
                    timeout: config.backend_timeout,
                })
                .await?,
            ),
            None => Arc::new(MemoryStorage::new()),
        };
        let (cache, broker): (Arc<dyn RecentCache>, Arc<dyn Broker>) = match &config.redis_url {
            Some(url) => {
                let redis = RedisConfig {
                    url: url.clone(),
                    prefix: config.redis_prefix.clone(),
                    presence_ttl: config.presence_ttl,
                    timeout: config.backend_timeout,
                };
                // One set of connections for both, so that a send's cache push and its
                // PUBLISHes go out in one pipeline (`Broker::publish_message`).
                let cache = Arc::new(RedisCache::connect(&redis).await?);
                let broker =
                    RedisBroker::connect_with_cache(&redis, hub.clone(), cache.clone()).await?;
                (cache, Arc::new(broker))
            }
            None => (
                Arc::new(MemoryCache::default()),
                Arc::new(LocalBroker::new(hub.clone())),
            ),
        };
        let health_timeout = HEALTH_CHECK_TIMEOUT.min(config.backend_timeout);
        Ok(Chat::assemble(
            storage,
            cache,
            broker,
            hub,
            health_timeout,
            config.max_group_members,
        ))
    }

    /// This node's hub (to count connections, or close them all at shutdown).
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// [`ChatService::send_message`], untimed.
    async fn send(&self, new: NewMessage, origin: Option<ConnectionId>) -> Result<SentMessage> {
        let valid = new.validate()?;
        let stored = self.inner.storage.store_message(&valid).await?;
        let message = stored.message;
        let mut delivered = false;
        if stored.created {
            metrics::counter!(telemetry::MESSAGES_STORED).increment(1);
            // Serialised once; each member's frame adds its own seq. The others' copies never
            // carry the sender's client id; the sender's other connections get it, to match
            // the send to what they have pending.
            let frames = Frames::message(&message);
            let mut deliveries: Vec<Delivery> = stored
                .recipients
                .iter()
                .map(|&(user, seq)| Delivery {
                    user,
                    exclude: None,
                    event: frames.event(seq),
                })
                .collect();
            deliveries.push(Delivery {
                user: message.sender_id,
                exclude: origin,
                event: frames.own_event(stored.sender_seq, valid.client_id()),
            });
            // The message is committed; the cache and the fan-out are best effort from here,
            // and a client that missed the event recovers it from storage. The recent-messages
            // cache is per receiver: direct messages only.
            let (cached, published) = match message.receiver_id {
                Some(receiver) => {
                    self.inner
                        .broker
                        .publish_message(
                            self.inner.cache.as_ref(),
                            receiver,
                            &deliveries[0].event.payload,
                            &deliveries,
                        )
                        .await
                }
                None => (Ok(()), self.inner.broker.publish(&deliveries).await),
            };
            if let Err(e) = cached {
                // Debug, not warn: during an outage every send fails its push, and the Redis
                // broker already warns once that Redis is unreachable (and `/health` names it).
                // The receiver's list is marked stale by the cache itself.
                tracing::debug!(error = %e, "recent-messages cache push failed");
            }
            match published {
                Ok(reached) => {
                    telemetry::published("message", deliveries.len());
                    let others = stored.recipients.len();
                    delivered = reached.iter().take(others).any(|&r| r);
                }
                Err(e) => tracing::warn!(error = %e, "fan-out failed"),
            }
        }
        Ok(SentMessage {
            message,
            sender_seq: stored.sender_seq,
            delivered,
            created: stored.created,
        })
    }

    /// Puts a stored membership change in each recipient's stream on every node; returns the
    /// conversation after it. Best effort, as a message's fan-out: `since` recovers it.
    async fn announce_change(&self, change: ConversationChange) -> Conversation {
        let frames = Frames::conversation(&change.event);
        let deliveries: Vec<Delivery> = change
            .seqs
            .iter()
            .map(|&(user, seq)| Delivery {
                user,
                exclude: None,
                event: frames.event(seq),
            })
            .collect();
        match self.inner.broker.publish(&deliveries).await {
            Ok(_) => telemetry::published("conversation", deliveries.len()),
            Err(e) => tracing::warn!(error = %e, "membership event fan-out failed"),
        }
        change.event.conversation
    }

    /// The users who get a typing signal or a read receipt of `user` in `to`: the peer, or the
    /// conversation's other members (`Error::ConversationNotFound` for a non-member).
    async fn others_in(&self, user: UserId, to: Recipient) -> Result<Vec<UserId>> {
        Ok(match to {
            Recipient::User(peer) => vec![peer],
            Recipient::Conversation(id) => self
                .inner
                .storage
                .conversation(id, user)
                .await?
                .member_ids()
                .filter(|&u| u != user)
                .collect(),
        })
    }

    /// Runs storage migrations alone (`minichat-server migrate`); a no-op in memory.
    pub async fn migrate(database_url: &str) -> Result<()> {
        PostgresStorage::migrate_only(database_url).await
    }
}

/// The status of one backend: `check`'s error, or a timeout when it takes longer than `limit`.
async fn status<F>(kind: BackendKind, limit: Duration, check: F) -> BackendStatus
where
    F: std::future::Future<Output = Result<()>>,
{
    let error = match tokio::time::timeout(limit, check).await {
        Ok(checked) => checked.err().map(|e| e.to_string()),
        Err(_) => Some(format!("no answer within {} ms", limit.as_millis())),
    };
    BackendStatus { kind, error }
}

#[async_trait]
impl ChatService for Chat {
    async fn create_user(&self, new: NewUser) -> Result<User> {
        let valid = new.validate()?;
        self.inner.storage.create_user(&valid).await
    }

    async fn list_users(&self, skip: i64, limit: i64) -> Result<Vec<User>> {
        let page = Page::new(skip, limit)?;
        self.inner.storage.list_users(page).await
    }

    async fn search_users(&self, request: UserSearchRequest) -> Result<Vec<User>> {
        let search = request.validate()?;
        self.inner.storage.search_users(&search).await
    }

    async fn get_user(&self, id: UserId) -> Result<User> {
        self.inner
            .storage
            .get_user(id)
            .await?
            .ok_or(Error::UserNotFound)
    }

    async fn send_message(
        &self,
        new: NewMessage,
        origin: Option<ConnectionId>,
    ) -> Result<SentMessage> {
        let started = Instant::now();
        let sent = self.send(new, origin).await;
        let result = if sent.is_ok() { "ok" } else { "error" };
        metrics::histogram!(telemetry::SEND_DURATION, "result" => result).record(started.elapsed());
        sent
    }

    async fn history(&self, request: HistoryRequest) -> Result<Vec<Message>> {
        let query = request.validate()?;
        self.inner.storage.history(&query).await
    }

    async fn create_group(&self, new: NewGroup) -> Result<Conversation> {
        let valid = new.validate(self.inner.max_group_members)?;
        let change = self.inner.storage.create_group(&valid).await?;
        Ok(self.announce_change(change).await)
    }

    async fn conversation(&self, id: ConversationId, user: UserId) -> Result<Conversation> {
        self.inner.storage.conversation(id, user).await
    }

    async fn conversations(
        &self,
        user: UserId,
        skip: i64,
        limit: i64,
    ) -> Result<Vec<ConversationSummary>> {
        let page = Page::new(skip, limit)?;
        self.inner.storage.conversations(user, page).await
    }

    async fn rename_conversation(
        &self,
        id: ConversationId,
        rename: Rename,
    ) -> Result<Conversation> {
        let valid = rename.validate()?;
        let change = self.inner.storage.rename_conversation(id, &valid).await?;
        Ok(self.announce_change(change).await)
    }

    async fn add_members(&self, id: ConversationId, add: NewMembers) -> Result<Conversation> {
        let valid = add.validate()?;
        let change = self
            .inner
            .storage
            .add_members(id, &valid, self.inner.max_group_members)
            .await?;
        Ok(self.announce_change(change).await)
    }

    async fn remove_member(
        &self,
        id: ConversationId,
        actor: UserId,
        member: UserId,
    ) -> Result<Conversation> {
        let change = self.inner.storage.remove_member(id, actor, member).await?;
        Ok(self.announce_change(change).await)
    }


    async fn recent_messages(&self, user: UserId) -> Result<Vec<Message>> {
        // A list shorter than asked for may be partial (a cache that was flushed, or filled
        // after a restart): only a full one is trusted; storage answers otherwise.
        match self.inner.cache.recent(user, RECENT_LIMIT).await {
            Ok(Some(mut cached)) if cached.len() >= RECENT_LIMIT => {
                // Pushes from several nodes may land out of order.
                cached.sort_unstable_by_key(|m| std::cmp::Reverse(m.id));
                return Ok(cached);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "recent-messages cache unavailable, reading storage")
            }
        }
        self.inner.storage.recent_received(user, RECENT_LIMIT).await
    }

    async fn subscribe(&self, user: UserId) -> Result<Subscription> {
        if self.inner.storage.get_user(user).await?.is_none() {
            return Err(Error::UserNotFound);
        }
        self.handle_departures();
        let (subscription, first) = self.inner.hub.subscribe(user);
        // Always ask: the broker's call is idempotent, and a second connection must not return
        // before the first one's cluster subscription is in place.
        match self.inner.broker.user_arrived(user, first).await {
            Ok(true) => self.announce(user, true).await,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(user, error = %e, "cluster subscription failed; local delivery only until it recovers")
            }
        }
        Ok(subscription)
    }

    async fn events_since(
        &self,
        user: UserId,
        since: Seq,
        limit: usize,
    ) -> Result<Vec<StreamEvent>> {
        self.inner.storage.events_since(user, since, limit).await
    }

    async fn current_seq(&self, user: UserId) -> Result<Seq> {
        self.inner.storage.current_seq(user).await
    }

    async fn typing(&self, sender: UserId, to: Recipient) -> Result<()> {
        let signal = TypingSignal { sender_id: sender, to }.validate()?;
        let conversation = match to {
            Recipient::User(_) => None,
            Recipient::Conversation(id) => Some(id),
        };
        let event = typing_event(signal.sender_id(), conversation);
        let deliveries: Vec<Delivery> = self
            .others_in(sender, signal.to())
            .await?
            .into_iter()
            .map(|user| Delivery {
                user,
                exclude: None,
                event: event.clone(),
            })
            .collect();
        self.inner.broker.publish(&deliveries).await?;
        telemetry::published("typing", deliveries.len());
        Ok(())
    }

    async fn mark_read(
        &self,
        reader: UserId,
        to: Recipient,
        up_to: MessageId,
    ) -> Result<MessageId> {
        let valid = ReadMark {
            reader_id: reader,
            to,
            up_to,
        }
        .validate()?;
        let receipt = self.inner.storage.mark_read(&valid).await?;
        let event = read_event(reader, receipt.conversation_id, receipt.up_to);
        let deliveries: Vec<Delivery> = receipt
            .others
            .iter()
            .map(|&user| Delivery {
                user,
                exclude: None,
                event: event.clone(),
            })
            .collect();
        match self.inner.broker.publish(&deliveries).await {
            Ok(_) => telemetry::published("read", deliveries.len()),
            Err(e) => tracing::warn!(error = %e, "read receipt fan-out failed"),
        }
        Ok(receipt.up_to)
    }

    async fn read_state(&self, user: UserId, peer: UserId) -> Result<ReadState> {
        self.inner.storage.read_marks(user, peer).await
    }

    async fn presence(&self, users: &[UserId]) -> Result<Vec<Presence>> {
        let (cluster, stored) = tokio::join!(
            self.inner.broker.presence(users),
            self.inner.storage.last_seen(users)
        );
        let stored = stored?;
        let cluster = cluster.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cluster presence unavailable; reporting stored last_seen");
            vec![ClusterPresence::default(); users.len()]
        });
        let now = crate::model::now();
        Ok(users
            .iter()
            .zip(cluster.iter().zip(stored))
            .map(|(&user_id, (c, s))| Presence {
                user_id,
                online: c.online,
                last_seen: if c.online {
                    Some(now)
                } else {
                    c.last_seen.max(s)
                },
            })
            .collect())
    }

    async fn watch(
        &self,
        subscription: &mut Subscription,
        users: &[UserId],
    ) -> Result<Vec<Presence>> {
        let added = self.inner.hub.watch(subscription, users)?;
        self.presence(&added).await
    }

    /// Checks the backends concurrently, each within its own short budget
    /// ([`HEALTH_CHECK_TIMEOUT`], or the backend budget if shorter).
    async fn drain(&self) {
        if self.inner.departures.get().is_none() {
            return; // nobody ever subscribed: no departure to record
        }
        // First the heartbeat in flight, which could otherwise renew a departed user after
        // their departure; one that starts later sees the connections as they are now.
        self.inner.broker.settle().await;
        let _one_batch = self.inner.departing.lock().await;
        self.depart(self.inner.hub.departures().take()).await;
    }

    async fn health(&self) -> Health {
        let limit = self.inner.health_timeout;
        let (storage, cache, broker) = tokio::join!(
            status(self.inner.storage.kind(), limit, self.inner.storage.check()),
            status(self.inner.cache.kind(), limit, self.inner.cache.check()),
            status(self.inner.broker.kind(), limit, self.inner.broker.check()),
        );
        Health {
            storage,
            cache,
            broker,
        }
    }
}
