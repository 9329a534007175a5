//! `Chat`, the implementation of the [`ChatService`] contract (`service/contract.rs`) over the
//! three backend seams.
//!
//! Every transport (the HTTP server, an embedding application, a test) talks to the chat
//! through [`ChatService`]. [`Chat`] validates input with the model, stores through
//! [`Storage`], records recent messages in the [`RecentCache`], and fans events out through the
//! [`Broker`] to the [`Hub`]s of the nodes where their users are connected. What only
//! conversations need (membership events' fan-out, who gets a typing signal) is
//! `service/conversations.rs`; the send path (storing a message or a sender's run of them,
//! then their fan-out) is `service/sending.rs`.

mod config;
mod contract;
mod conversations;
mod sending;

pub use config::{ChatConfig, DEFAULT_BACKEND_TIMEOUT, HEALTH_CHECK_TIMEOUT};
pub use contract::{ChatService, SentMessage};

use crate::broker::{Broker, ClusterPresence, Delivery, LocalBroker, RedisBroker};
use crate::cache::{MemoryCache, RecentCache, RedisCache};
use crate::error::{Error, Result};
use crate::event::{presence_event, read_event, typing_event, Presence};
use crate::health::{BackendKind, BackendStatus, Health};
use crate::hub::{ConnectionId, Hub, Subscription};
use crate::model::{
    Conversation, ConversationId, ConversationSummary, HistoryRequest, Message, MessageId,
    NewGroup, NewMembers, NewMessage, NewUser, Page, ReadMark, ReadState, Recipient, Rename, Seq,
    StreamEvent, TypingSignal, User, UserId, UserSearchRequest, DEFAULT_MAX_GROUP_MEMBERS,
    RECENT_LIMIT,
};
use crate::redis_support::RedisConfig;
use crate::storage::{MemoryStorage, PostgresConfig, PostgresStorage, Storage};
use crate::telemetry;
use async_trait::async_trait;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::task::AbortHandle;

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
                // PUBLISHes go out in one pipeline (`Broker::publish_messages`).
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

    async fn send_messages(
        &self,
        news: Vec<NewMessage>,
        origin: Option<ConnectionId>,
    ) -> Vec<Result<SentMessage>> {
        let started = Instant::now();
        let sent = self.send_run(news, origin).await;
        let took = started.elapsed();
        for answer in &sent {
            let result = if answer.is_ok() { "ok" } else { "error" };
            metrics::histogram!(telemetry::SEND_DURATION, "result" => result).record(took);
        }
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
        let user = rename.user_id;
        let valid = match rename.validate() {
            Ok(valid) => valid,
            Err(e) => return Err(self.refuse_member_first(id, user, e).await),
        };
        let change = self.inner.storage.rename_conversation(id, &valid).await?;
        Ok(self.announce_change(change).await)
    }

    async fn add_members(&self, id: ConversationId, add: NewMembers) -> Result<Conversation> {
        let user = add.user_id;
        let valid = match add.validate() {
            Ok(valid) => valid,
            Err(e) => return Err(self.refuse_member_first(id, user, e).await),
        };
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
        let signal = TypingSignal {
            sender_id: sender,
            to,
        }
        .validate()?;
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
