//! The Redis broker's subscriber link: the one connection that receives this node's events, and
//! what keeps its subscriptions right across Redis outages.
//!
//! This file exists because receiving is the delicate half of the broker: publishing is one
//! round trip on the shared connection, but the subscriber connection has state (which channels
//! Redis confirmed) that an outage silently invalidates.
//!
//! # The subscriber connection
//!
//! Subscriptions live on one dedicated connection speaking RESP3 (a [`ConnectionManager`] on one
//! Redis; on a Redis Cluster, a [`ClusterConnection`] of its own, which keeps a connection per
//! node and `SSUBSCRIBE`s each user's channel on the shard that owns its slot), whose pushes go to
//! [`Inbox`], an [`AsyncPushSender`] that decodes each message and calls [`Hub::deliver`] right
//! there, synchronously: `deliver` never waits (a full subscriber queue evicts that subscriber),
//! so there is no queue of our own between Redis and the hub's bounded per-connection queues.
//! (The manager itself relays pushes from the socket to the sender through an internal channel,
//! without a bound, drained by its own task. The sender never waits, but under load the task
//! can still fall behind the socket: the broker keeps that backlog within a few milliseconds by
//! pacing its publishes with a probe that comes back on this connection, `flow`.)
//!
//! `SUBSCRIBE` and `UNSUBSCRIBE` go out under one async mutex, which also guards this node's
//! record of which channels Redis confirmed ([`Channels`]), so they reach Redis in the order they
//! were decided. [`Subscriber::watch`] returns once Redis has confirmed the subscription;
//! [`Subscriber::unwatch`] unsubscribes the users still without a local connection.
//!
//! # Redis restarts
//!
//! When the subscriber connection drops, the manager reconnects by itself (capped exponential
//! backoff) and re-subscribes what Redis had confirmed. That is not enough alone: a user who
//! connected during the outage never got a confirmed `SUBSCRIBE`, and one who left never got an
//! `UNSUBSCRIBE`. So the drop also marks the link down, and a resync task (capped exponential
//! backoff, [`RETRY_MIN`] to [`RETRY_MAX`]) PINGs until Redis answers, then makes the
//! subscriptions match the hub: it subscribes every user of [`Hub::connected_users`] and
//! unsubscribes every channel no local connection wants. Until then [`Subscriber::watch`] fails
//! at once (the service logs it and carries on; the resync subscribes the user later) and the
//! broker's health check reports the subscriber down. A command that fails or times out while the
//! link looks up (every one is bounded by [`COMMAND_TIMEOUT`]) schedules the same resync. A resync
//! after a lost connection also subscribes the fan-out channel again and wakes the presence
//! heartbeat, which renews this node's users at once (Redis may have lost them).

use super::envelope;
use super::flow::Flow;
use super::{unavailable, CHUNK};
use crate::error::{Error, Result};
use crate::hub::{ConnectionId, Event, Hub};
use crate::model::UserId;
use crate::redis_support::{cluster_builder, Keys, Target, CONNECT_TIMEOUT};
use bytes::Bytes;
use futures_util::future::try_join_all;
use redis::aio::{AsyncPushSender, ConnectionManager, ConnectionManagerConfig, SendError};
use redis::cluster_async::ClusterConnection;
use redis::{Client, ProtocolVersion, PushInfo, PushKind, RedisResult, Value};
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify};
use tokio::time::{timeout, timeout_at, Instant};

/// Bound on each subscriber command (`SUBSCRIBE`, `UNSUBSCRIBE`, `PING`) and on `user_arrived`.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// First pause between resync attempts while Redis is away (it doubles each time).
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest pause between resync attempts, and between the manager's reconnection attempts.
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Reconnection attempts per outage the manager makes on its own; the resync task's PINGs start
/// a new round whenever one ends without success.
const RECONNECT_ATTEMPTS: usize = 10;
/// How often an otherwise idle subscriber connection is PINGed, to notice a silent failure.
const KEEPALIVE: Duration = Duration::from_secs(15);

fn timed_out(what: &str) -> Error {
    unavailable(format!(
        "Redis did not confirm {what} within {} s",
        COMMAND_TIMEOUT.as_secs()
    ))
}

/// Awaits one subscriber command until `deadline`: a Redis error, or no answer by then (`what`
/// names the command in the error), is unavailable.
async fn bounded<T>(
    deadline: Instant,
    what: &str,
    command: impl Future<Output = RedisResult<T>>,
) -> Result<T> {
    match timeout_at(deadline, command).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(timed_out(what)),
    }
}

/// The health of the subscriber connection, shared with the push sender (which runs inside the
/// connection's task and must not wait for anything).
#[derive(Default)]
struct LinkState {
    /// How many times the subscriber connection was lost.
    drops: AtomicU64,
    /// `drops` as of the last complete resync: the link is up when the two are equal.
    synced: AtomicU64,
    /// The subscriptions may not match what this node wants: a resync is due.
    dirty: AtomicBool,
    wake: Notify,
}

impl LinkState {
    fn is_up(&self) -> bool {
        self.drops.load(Ordering::SeqCst) == self.synced.load(Ordering::SeqCst)
    }

    fn resync_soon(&self) {
        self.dirty.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn lost(&self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
        self.resync_soon();
    }
}

/// Receives the subscriber connection's pushes, synchronously, and hands events to the hub.
struct Inbox {
    keys: Keys,
    hub: Hub,
    state: Arc<LinkState>,
    flow: Arc<Flow>,
}

impl AsyncPushSender for Inbox {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match info.kind {
            PushKind::Message | PushKind::SMessage => self.deliver(info.data),
            PushKind::PMessage => self.deliver_presence(info.data),
            // A cluster node drops a sharded subscription whose slot it no longer serves (the
            // slot moved, or the node became a replica): one a local connection still wants is
            // asked for again, on the slot's new owner.
            PushKind::SUnsubscribe => self.resubscribe_if_wanted(&info.data),
            PushKind::Disconnection => {
                tracing::warn!("lost the Redis subscriber connection; reconnecting");
                self.state.lost();
                self.flow.forget();
            }
            // Subscription confirmations: the commands that asked for them see them too.
            _ => {}
        }
        Ok(())
    }
}

impl Inbox {
    /// After a `SUNSUBSCRIBE` push for `[channel, count]`: a resync when a local connection
    /// still wants that user (this node's own unsubscribes are of users no longer here).
    fn resubscribe_if_wanted(&self, data: &[Value]) {
        let Some(Value::BulkString(channel)) = data.first() else {
            return;
        };
        if let Some(user) = self.keys.user_of_channel(channel) {
            if self.hub.is_connected(user) {
                tracing::info!(
                    user,
                    "Redis Cluster moved a subscribed channel; re-subscribing"
                );
                self.state.lost();
            }
        }
    }

    /// A user's event, `[channel, envelope]`, to that user's local connections; or, on the
    /// fan-out channel, a group's copies (a members envelope) to the members connected here.
    fn deliver(&self, data: Vec<Value>) {
        let Some((channel, payload)) = unpack(data, 0) else {
            return;
        };
        if channel == self.keys.fanout_channel().as_bytes() {
            return self.deliver_members(&channel, payload);
        }
        if channel == self.flow.channel().as_bytes() {
            return self.flow.returned(&payload);
        }
        let Some((exclude, event)) = decode(&channel, payload) else {
            return;
        };
        match self.keys.user_of_channel(&channel) {
            Some(user) => {
                self.hub.deliver(user, exclude, &event);
            }
            None => {
                tracing::debug!(channel = %String::from_utf8_lossy(&channel), "message on a foreign channel")
            }
        }
    }

    /// A members envelope: each member connected to this node gets its frame (made here, from
    /// the shared head); the others cost a lookup each.
    fn deliver_members(&self, channel: &[u8], payload: Bytes) {
        let members = match envelope::decode_members(payload) {
            Ok(members) => members,
            Err(why) => {
                tracing::warn!(why, channel = %String::from_utf8_lossy(channel), "dropped an undecodable members envelope");
                return;
            }
        };
        for (user, seq) in members.iter() {
            if self.hub.is_connected(user) {
                self.hub.deliver(user, None, &members.frames.event(seq));
            }
        }
    }

    /// A presence change: `[pattern, channel, envelope]` → the connections watching that user.
    fn deliver_presence(&self, data: Vec<Value>) {
        let Some((channel, payload)) = unpack(data, 1) else {
            return;
        };
        let Some((_, event)) = decode(&channel, payload) else {
            return;
        };
        if let Some(user) = self.keys.user_of_presence_channel(&channel) {
            self.hub.deliver_presence(user, &event);
        }
    }
}

/// The channel and the message of a pub/sub push, after `skip` leading fields (the pattern,
/// for pattern subscriptions); `None`, logged, for anything malformed.
fn unpack(data: Vec<Value>, skip: usize) -> Option<(Vec<u8>, Bytes)> {
    let mut data = data.into_iter().skip(skip);
    let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
        (data.next(), data.next())
    else {
        tracing::warn!("dropped a malformed pub/sub message from Redis");
        return None;
    };
    Some((channel, Bytes::from(payload)))
}

/// The envelope of a message on `channel`; `None`, logged, when it does not decode.
fn decode(channel: &[u8], payload: Bytes) -> Option<(Option<ConnectionId>, Event)> {
    match envelope::decode(payload) {
        Ok(decoded) => Some(decoded),
        Err(why) => {
            tracing::warn!(why, channel = %String::from_utf8_lossy(channel), "dropped an undecodable broker envelope");
            None
        }
    }
}

/// What this node asked Redis to subscribe to, as far as it knows. Guarded by the mutex that
/// also serialises every `SUBSCRIBE` and `UNSUBSCRIBE`.
#[derive(Default)]
struct Channels {
    /// Users whose channel Redis confirmed.
    subscribed: HashSet<UserId>,
    /// Users whose last command failed or timed out: Redis may or may not be subscribed.
    unsure: HashSet<UserId>,
}

impl Channels {
    /// Records a `SUBSCRIBE` of `users`: confirmed when it succeeded, unsure when it failed.
    fn record_subscribe(&mut self, users: &[UserId], succeeded: bool) {
        for user in users {
            if succeeded {
                self.unsure.remove(user);
                self.subscribed.insert(*user);
            } else {
                self.subscribed.remove(user);
                self.unsure.insert(*user);
            }
        }
    }

    /// Records an `UNSUBSCRIBE` of `users`: gone when it succeeded, unsure when it failed.
    fn record_unsubscribe(&mut self, users: &[UserId], succeeded: bool) {
        for user in users {
            self.subscribed.remove(user);
            if succeeded {
                self.unsure.remove(user);
            } else {
                self.unsure.insert(*user);
            }
        }
    }
}

/// The subscriber's connection: to one Redis, or to a Redis Cluster (sharded pub/sub).
#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Evaluates `$body` with `$conn` a clone of the link's connection, whichever kind it is (the
/// two types share these methods but no trait).
macro_rules! with_link {
    ($link:expr, $conn:ident => $body:expr) => {
        match $link {
            Link::Single(c) => {
                let mut $conn = c.clone();
                $body
            }
            Link::Cluster(c) => {
                let mut $conn = c.clone();
                $body
            }
        }
    };
}

/// The dedicated subscriber connection and the bookkeeping around it.
pub(super) struct Subscriber {
    conn: Link,
    keys: Keys,
    hub: Hub,
    state: Arc<LinkState>,
    channels: Mutex<Channels>,
    /// Notified after each resync that followed a lost connection (Redis may have lost its
    /// data too: the presence heartbeat renews at once).
    relinked: Arc<Notify>,
    /// Whose probes come back on this connection (`flow`).
    flow: Arc<Flow>,
}

impl Subscriber {
    /// Opens the subscriber connection (RESP3, whatever `info` asked for) with its push handler,
    /// and pattern-subscribes to every user's presence changes. Failures are [`Error::Config`]
    /// naming `REDIS_URL`: they stop the start.
    pub(super) async fn connect(
        target: &Target,
        keys: Keys,
        hub: Hub,
        relinked: Arc<Notify>,
        flow: Arc<Flow>,
    ) -> Result<Arc<Subscriber>> {
        let state = Arc::new(LinkState::default());
        let inbox = Inbox {
            keys: keys.clone(),
            hub: hub.clone(),
            state: state.clone(),
            flow: flow.clone(),
        };
        let cannot = |e: &dyn std::fmt::Display| {
            Error::config("REDIS_URL", format!("cannot connect to Redis: {e}"))
        };
        let connecting = async {
            match target {
                Target::Single(info) => {
                    // Pub/sub pushes need RESP3, whatever the URL asked for.
                    let settings = info
                        .redis_settings()
                        .clone()
                        .set_protocol(ProtocolVersion::RESP3);
                    let client = Client::open(info.clone().set_redis_settings(settings))?;
                    let manager_config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(CONNECT_TIMEOUT))
                        .set_response_timeout(Some(COMMAND_TIMEOUT))
                        .set_min_delay(RETRY_MIN)
                        .set_max_delay(RETRY_MAX)
                        .set_number_of_retries(RECONNECT_ATTEMPTS)
                        .set_push_sender(inbox)
                        .set_automatic_resubscription();
                    client
                        .get_connection_manager_with_config(manager_config)
                        .await
                        .map(Link::Single)
                }
                Target::Cluster(seeds) => {
                    // The cluster connection re-subscribes by itself after a reconnection or
                    // a slot move (it tracks what was confirmed).
                    let client = cluster_builder(seeds, COMMAND_TIMEOUT)
                        .use_protocol(ProtocolVersion::RESP3)
                        .push_sender(inbox)
                        .build()?;
                    client.get_async_connection().await.map(Link::Cluster)
                }
            }
        };
        let conn = match timeout(CONNECT_TIMEOUT * 2, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(cannot(&e)),
            Err(_) => return Err(cannot(&"the subscriber connection timed out")),
        };
        let subscriber = Arc::new(Subscriber {
            conn,
            keys,
            hub,
            state,
            channels: Mutex::new(Channels::default()),
            relinked,
            flow,
        });
        if let Err(e) = subscriber.listen_presence().await {
            return Err(Error::config(
                "REDIS_URL",
                format!("cannot subscribe to presence changes: {e}"),
            ));
        }
        if let Err(e) = subscriber.listen_fanout().await {
            return Err(Error::config(
                "REDIS_URL",
                format!("cannot subscribe to the fan-out channel: {e}"),
            ));
        }
        Ok(subscriber)
    }

    /// Whether the connection is up and its subscriptions were resynced since it last dropped.
    pub(super) fn is_up(&self) -> bool {
        self.state.is_up()
    }

    fn channel_names(&self, users: &[UserId]) -> Vec<String> {
        users.iter().map(|u| self.keys.user_channel(*u)).collect()
    }

    /// `SUBSCRIBE`s `users`' channels in one command; on a cluster, `SSUBSCRIBE`s each on its
    /// shard (a sharded command keeps to one slot), all at once.
    async fn subscribe(&self, users: &[UserId], deadline: Instant) -> Result<()> {
        let names = self.channel_names(users);
        match &self.conn {
            Link::Single(conn) => {
                let mut conn = conn.clone();
                bounded(deadline, "the subscription", conn.subscribe(names)).await
            }
            Link::Cluster(conn) => {
                let each = names.into_iter().map(|name| {
                    let mut conn = conn.clone();
                    async move { conn.ssubscribe(name).await }
                });
                bounded(deadline, "the subscription", try_join_all(each))
                    .await
                    .map(drop)
            }
        }
    }

    async fn unsubscribe(&self, users: &[UserId], deadline: Instant) -> Result<()> {
        let names = self.channel_names(users);
        match &self.conn {
            Link::Single(conn) => {
                let mut conn = conn.clone();
                bounded(deadline, "the unsubscription", conn.unsubscribe(names)).await
            }
            Link::Cluster(conn) => {
                let each = names.into_iter().map(|name| {
                    let mut conn = conn.clone();
                    async move { conn.sunsubscribe(name).await }
                });
                bounded(deadline, "the unsubscription", try_join_all(each))
                    .await
                    .map(drop)
            }
        }
    }

    /// PINGs the link (on a cluster, every master).
    async fn ping(&self) -> Result<()> {
        let ping = redis::cmd("PING");
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        with_link!(&self.conn, conn => {
            bounded(deadline, "a PING", ping.query_async::<Value>(&mut conn)).await
        })
        .map(drop)
    }

    /// Listens for presence changes of every user (one pattern subscription per node). On a
    /// cluster this is classic pub/sub, which every shard relays to every other: presence
    /// changes are few (one per user going online or offline), so they need no sharding.
    async fn listen_presence(&self) -> Result<()> {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let pattern = self.keys.presence_pattern();
        with_link!(&self.conn, conn => {
            bounded(deadline, "the presence subscription", conn.psubscribe(&pattern)).await
        })
    }

    /// Listens on the fan-out channel, where a group's copies of an event reach every node at
    /// once (one subscription per node, made before any user is watched), and on this node's
    /// probe channel (`flow`). Not on a cluster, where group copies go to each member's shard
    /// channel instead, and no probes are sent.
    async fn listen_fanout(&self) -> Result<()> {
        let Link::Single(conn) = &self.conn else {
            return Ok(());
        };
        let mut conn = conn.clone();
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        bounded(
            deadline,
            "the fan-out subscription",
            conn.subscribe(&[self.keys.fanout_channel(), self.flow.channel()]),
        )
        .await
    }

    /// Subscribes to `user`'s channel unless already done; returns once Redis confirmed it.
    pub(super) async fn watch(&self, user: UserId) -> Result<()> {
        if !self.state.is_up() {
            // The resync that follows the reconnection subscribes every connected user.
            self.state.resync_soon();
            return Err(unavailable(
                "the Redis subscriber connection is down; the user is subscribed when it is back",
            ));
        }
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let Ok(mut channels) = timeout_at(deadline, self.channels.lock()).await else {
            self.state.resync_soon();
            return Err(timed_out("the subscription"));
        };
        if channels.subscribed.contains(&user) {
            return Ok(());
        }
        let result = self.subscribe(&[user], deadline).await;
        channels.record_subscribe(&[user], result.is_ok());
        if result.is_err() {
            self.state.resync_soon();
        }
        result
    }

    /// Unsubscribes those of `users` who still have no local connection.
    pub(super) async fn unwatch(&self, users: Vec<UserId>) {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let Ok(mut channels) = timeout_at(deadline, self.channels.lock()).await else {
            // The resync unsubscribes whatever no connection wants.
            self.state.resync_soon();
            return;
        };
        // Checked under the lock: a user who comes back now waits for it in `watch`, and then
        // finds the channel unsubscribed and subscribes again.
        let gone: Vec<UserId> = users
            .into_iter()
            .filter(|u| {
                !self.hub.is_connected(*u)
                    && (channels.subscribed.contains(u) || channels.unsure.contains(u))
            })
            .collect();
        if gone.is_empty() {
            return;
        }
        if !self.state.is_up() {
            self.state.resync_soon();
            return;
        }
        for chunk in gone.chunks(CHUNK) {
            let result = self.unsubscribe(chunk, deadline).await;
            channels.record_unsubscribe(chunk, result.is_ok());
            if let Err(e) = result {
                tracing::warn!(error = %e, "Redis unsubscribe failed; will retry");
                self.state.resync_soon();
                return;
            }
        }
    }

    /// Makes Redis's subscriptions match the users connected to this node.
    async fn resync(&self) -> Result<()> {
        let drops = self.state.drops.load(Ordering::SeqCst);
        let relinked = drops != self.state.synced.load(Ordering::SeqCst);
        self.ping().await?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let Ok(mut channels) = timeout_at(deadline, self.channels.lock()).await else {
            return Err(timed_out("the resync"));
        };
        if relinked {
            // Like the users' channels below: asked for again, whatever the manager restored.
            self.listen_fanout().await?;
        }
        let wanted: HashSet<UserId> = self.hub.connected_users().into_iter().collect();
        // After a reconnection, ask for every wanted channel again: re-subscribing is harmless,
        // and it does not depend on what the manager restored by itself.
        let to_subscribe: Vec<UserId> = wanted
            .iter()
            .filter(|u| relinked || !channels.subscribed.contains(u))
            .copied()
            .collect();
        let to_unsubscribe: Vec<UserId> = channels
            .subscribed
            .union(&channels.unsure)
            .filter(|u| !wanted.contains(u))
            .copied()
            .collect();
        for chunk in to_subscribe.chunks(CHUNK) {
            let deadline = Instant::now() + COMMAND_TIMEOUT;
            let result = self.subscribe(chunk, deadline).await;
            channels.record_subscribe(chunk, result.is_ok());
            result?;
        }
        for chunk in to_unsubscribe.chunks(CHUNK) {
            let deadline = Instant::now() + COMMAND_TIMEOUT;
            let result = self.unsubscribe(chunk, deadline).await;
            channels.record_unsubscribe(chunk, result.is_ok());
            result?;
        }
        self.state.synced.store(drops, Ordering::SeqCst);
        if relinked {
            metrics::counter!(crate::telemetry::REDIS_RECONNECTS, "link" => "subscriber")
                .increment(1);
            tracing::info!(
                users = wanted.len(),
                "Redis subscriber connection restored and re-subscribed"
            );
            self.relinked.notify_one();
        }
        Ok(())
    }

    /// Runs resyncs when due, retrying with capped exponential backoff, and PINGs an idle link.
    pub(super) async fn run_resync(self: Arc<Self>) {
        let mut retry = RETRY_MIN;
        let mut failing = false;
        loop {
            if !self.state.dirty.swap(false, Ordering::SeqCst) {
                tokio::select! {
                    _ = self.state.wake.notified() => {}
                    _ = tokio::time::sleep(KEEPALIVE) => {
                        if let Err(e) = self.ping().await {
                            tracing::warn!(error = %e, "Redis subscriber connection not answering");
                            self.state.lost();
                        }
                    }
                }
                continue;
            }
            match self.resync().await {
                Ok(()) => {
                    failing = false;
                    retry = RETRY_MIN;
                }
                Err(e) => {
                    self.state.dirty.store(true, Ordering::SeqCst);
                    if !failing {
                        tracing::warn!(error = %e, "Redis subscriptions out of date; retrying until Redis answers");
                        failing = true;
                    }
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }
}
