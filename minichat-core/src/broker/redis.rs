//! Cross-node fan-out over Redis pub/sub.
//!
//! With several nodes behind a load balancer, the sender of a message and the connections of its
//! receiver are usually on different nodes. [`RedisBroker`] gives every user a channel,
//! `{prefix}user:{id}`; a node subscribes to it while the user has a connection there, and a
//! send publishes each event once on its user's channel. Redis answers each `PUBLISH` with the
//! number of subscribed nodes, which is how a sender learns whether the receiver is connected
//! anywhere in the cluster.
//!
//! # The envelope
//!
//! What travels on a channel is a fixed 18-byte binary header followed by the event's JSON
//! payload, exactly as the hub hands it to connections:
//!
//! ```text
//! offset  size  field
//!      0     1  version, 1
//!      1     1  flags: bit 0 = an excluded connection is set, bit 1 = a seq is set
//!                      (other bits are reserved and must be 0)
//!      2     8  excluded connection id, u64 big-endian (0 when bit 0 is clear)
//!     10     8  seq, i64 big-endian (0 when bit 1 is clear)
//!     18     …  the payload: the event's JSON, untouched
//! ```
//!
//! A receiving node takes the message bytes Redis handed it, wraps them in [`Bytes`] without
//! copying, reads the header and delivers `payload.slice(18..)` to its hub: no copy and no JSON
//! parsing per node, whatever the number of connections. (Publishing writes header and payload
//! straight into the command buffer.) An envelope of another version, with reserved flags set or
//! shorter than the header is dropped with a warning.
//!
//! # Delivery
//!
//! While Redis is up, a node's own connections also get their events back through its
//! subscription, never directly, so nothing is delivered twice. While Redis cannot be reached,
//! `publish` hands each event to the local hub instead and still succeeds (once per outage it
//! logs a warning): sends never fail for lack of fan-out, and storage is the source of truth for
//! whatever other nodes missed. Only the first send of an outage waits for the pool's checkout
//! timeout; later ones fall back at once until the pool finds Redis again. (If Redis goes away
//! after publishing but before answering, the fallback can hand this node's connections an event
//! they also got through the subscription; a reader tracking `seq` can tell it is a duplicate.)
//!
//! # The subscriber connection
//!
//! Subscriptions live on one dedicated [`ConnectionManager`] speaking RESP3, whose pushes go to
//! [`Inbox`], an [`AsyncPushSender`] that decodes each message and calls [`Hub::deliver`] right
//! there, synchronously: `deliver` never waits (a full subscriber queue evicts that subscriber),
//! so there is no queue of our own between Redis and the hub's bounded per-connection queues.
//! (The manager itself relays pushes from the socket to the sender through an internal channel
//! drained by its own task; since the sender never waits, that channel stays near empty.)
//!
//! `SUBSCRIBE` and `UNSUBSCRIBE` go out under one async mutex, which also guards this node's
//! record of which channels Redis confirmed, so they reach Redis in the order they were decided.
//! [`Broker::user_arrived`] returns once Redis has confirmed the subscription. The service
//! calls [`Broker::user_left`] for users the hub reports as departed (their last local
//! connection left); it unsubscribes those still without a connection.
//!
//! # Presence
//!
//! Each user has a sorted set `{prefix}online:{user}` of the nodes where they are connected,
//! scored by when that report expires ([`PRESENCE_TTL`]); every node renews its users every
//! heartbeat, so a node that dies without goodbye drops out by itself. Arrivals and departures
//! are Lua scripts, so "came online" and "went offline" are decided atomically across nodes.
//! Presence changes travel on `{prefix}presence:{user}`, which every node pattern-subscribes.
//!
//! # Redis restarts
//!
//! When the subscriber connection drops, the manager reconnects by itself (capped exponential
//! backoff) and re-subscribes what Redis had confirmed. That is not enough alone: a user who
//! connected during the outage never got a confirmed `SUBSCRIBE`, and one who left never got an
//! `UNSUBSCRIBE`. So the drop also marks the link down, and a resync task (capped exponential
//! backoff, [`RETRY_MIN`] to [`RETRY_MAX`]) PINGs until Redis answers, then makes the
//! subscriptions match the hub: it subscribes every user of [`Hub::connected_users`] and
//! unsubscribes every channel no local connection wants. Until then [`Broker::user_arrived`] fails
//! at once (the service logs it and carries on; the resync subscribes the user later) and
//! [`Broker::check`] reports the subscriber down. A command that fails or times out while the link
//! looks up (every one is bounded by [`COMMAND_TIMEOUT`]) schedules the same resync.

use super::{Broker, ClusterPresence, Delivery, LocalBroker};
use crate::error::{Backend, Error, Result};
use crate::hub::{ConnectionId, Event, Hub};
use crate::model::UserId;
use crate::redis_support::{self, Keys, RedisConfig, RedisPool, CONNECT_TIMEOUT};
use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{AsyncPushSender, ConnectionManager, ConnectionManagerConfig, SendError};
use redis::{Client, ProtocolVersion, PushInfo, PushKind, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify};
use tokio::task::AbortHandle;
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
/// Channels per `SUBSCRIBE`/`UNSUBSCRIBE` when many change at once.
const CHUNK: usize = 512;

/// The wire envelope (see the module docs).
mod envelope {
    use crate::hub::{ConnectionId, Event};
    use bytes::{Buf, BufMut, Bytes};
    use redis::{RedisWrite, ToRedisArgs};

    pub(super) const VERSION: u8 = 1;
    pub(super) const HEADER: usize = 18;
    const HAS_EXCLUDE: u8 = 0b01;
    const HAS_SEQ: u8 = 0b10;

    /// One delivery as a single `PUBLISH` argument, written straight into the command buffer.
    pub(super) struct Envelope<'a> {
        pub(super) exclude: Option<ConnectionId>,
        pub(super) event: &'a Event,
    }

    impl ToRedisArgs for Envelope<'_> {
        fn write_redis_args<W>(&self, out: &mut W)
        where
            W: ?Sized + RedisWrite,
        {
            let mut flags = 0;
            if self.exclude.is_some() {
                flags |= HAS_EXCLUDE;
            }
            if self.event.seq.is_some() {
                flags |= HAS_SEQ;
            }
            let mut buf = out.bufmut_for_next_arg(HEADER + self.event.payload.len());
            buf.put_u8(VERSION);
            buf.put_u8(flags);
            buf.put_u64(self.exclude.unwrap_or(0));
            buf.put_i64(self.event.seq.unwrap_or(0));
            buf.put_slice(&self.event.payload);
        }
    }

    /// Reads an envelope; the event's payload shares `raw`'s buffer.
    pub(super) fn decode(raw: Bytes) -> Result<(Option<ConnectionId>, Event), &'static str> {
        if raw.len() < HEADER {
            return Err("shorter than the envelope header");
        }
        let mut header = &raw[..HEADER];
        if header.get_u8() != VERSION {
            return Err("unknown envelope version");
        }
        let flags = header.get_u8();
        if flags & !(HAS_EXCLUDE | HAS_SEQ) != 0 {
            return Err("reserved envelope flags set");
        }
        let exclude = header.get_u64();
        let seq = header.get_i64();
        let event = Event {
            seq: (flags & HAS_SEQ != 0).then_some(seq),
            payload: raw.slice(HEADER..),
        };
        Ok(((flags & HAS_EXCLUDE != 0).then_some(exclude), event))
    }
}

use envelope::Envelope;

fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::unavailable(Backend::Broker, e)
}

fn timed_out(what: &str) -> Error {
    unavailable(format!(
        "Redis did not confirm {what} within {} s",
        COMMAND_TIMEOUT.as_secs()
    ))
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
}

impl AsyncPushSender for Inbox {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match info.kind {
            PushKind::Message => self.deliver(info.data),
            PushKind::PMessage => self.deliver_presence(info.data),
            PushKind::Disconnection => {
                tracing::warn!("lost the Redis subscriber connection; reconnecting");
                self.state.lost();
            }
            // Subscription confirmations: the commands that asked for them see them too.
            _ => {}
        }
        Ok(())
    }
}

impl Inbox {
    /// A user's event: `[channel, envelope]` → that user's local connections.
    fn deliver(&self, data: Vec<Value>) {
        let Some((channel, exclude, event)) = unpack(data, 0) else {
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

    /// A presence change: `[pattern, channel, envelope]` → the connections watching that user.
    fn deliver_presence(&self, data: Vec<Value>) {
        let Some((channel, _, event)) = unpack(data, 1) else {
            return;
        };
        if let Some(user) = self.keys.user_of_presence_channel(&channel) {
            self.hub.deliver_presence(user, &event);
        }
    }
}

/// The channel and decoded envelope of a pub/sub push, after `skip` leading fields (the
/// pattern, for pattern subscriptions); `None`, logged, for anything malformed.
fn unpack(data: Vec<Value>, skip: usize) -> Option<(Vec<u8>, Option<ConnectionId>, Event)> {
    let mut data = data.into_iter().skip(skip);
    let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
        (data.next(), data.next())
    else {
        tracing::warn!("dropped a malformed pub/sub message from Redis");
        return None;
    };
    match envelope::decode(Bytes::from(payload)) {
        Ok((exclude, event)) => Some((channel, exclude, event)),
        Err(why) => {
            tracing::warn!(why, channel = %String::from_utf8_lossy(&channel), "dropped an undecodable broker envelope");
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
    /// Records an `UNSUBSCRIBE` of `users`: gone when it succeeded, unsure when it failed.
    fn unsubscribed(&mut self, users: &[UserId], succeeded: bool) {
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

/// The dedicated subscriber connection and the bookkeeping around it.
struct Subscriber {
    conn: ConnectionManager,
    keys: Keys,
    hub: Hub,
    state: Arc<LinkState>,
    channels: Mutex<Channels>,
}

impl Subscriber {
    fn channel_names(&self, users: &[UserId]) -> Vec<String> {
        users.iter().map(|u| self.keys.user_channel(*u)).collect()
    }

    async fn subscribe(&self, users: &[UserId], deadline: Instant) -> Result<()> {
        let mut conn = self.conn.clone();
        match timeout_at(deadline, conn.subscribe(self.channel_names(users))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(timed_out("the subscription")),
        }
    }

    async fn unsubscribe(&self, users: &[UserId], deadline: Instant) -> Result<()> {
        let mut conn = self.conn.clone();
        match timeout_at(deadline, conn.unsubscribe(self.channel_names(users))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(timed_out("the unsubscription")),
        }
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        match timeout(
            COMMAND_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(timed_out("a PING")),
        }
    }

    /// Subscribes to `user`'s channel unless already done; returns once Redis confirmed it.
    async fn watch(&self, user: UserId) -> Result<()> {
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
        match self.subscribe(&[user], deadline).await {
            Ok(()) => {
                channels.unsure.remove(&user);
                channels.subscribed.insert(user);
                Ok(())
            }
            Err(e) => {
                channels.unsure.insert(user);
                self.state.resync_soon();
                Err(e)
            }
        }
    }

    /// Unsubscribes those of `users` who still have no local connection.
    async fn unwatch(&self, users: Vec<UserId>) {
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
            channels.unsubscribed(chunk, result.is_ok());
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
            if let Err(e) = self.subscribe(chunk, deadline).await {
                for user in chunk {
                    channels.subscribed.remove(user);
                    channels.unsure.insert(*user);
                }
                return Err(e);
            }
            for user in chunk {
                channels.unsure.remove(user);
                channels.subscribed.insert(*user);
            }
        }
        for chunk in to_unsubscribe.chunks(CHUNK) {
            let deadline = Instant::now() + COMMAND_TIMEOUT;
            let result = self.unsubscribe(chunk, deadline).await;
            channels.unsubscribed(chunk, result.is_ok());
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
        }
        Ok(())
    }

    /// Runs resyncs when due, retrying with capped exponential backoff, and PINGs an idle link.
    async fn run_resync(self: Arc<Self>) {
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

    /// Listens for presence changes of every user (one pattern subscription per node).
    async fn listen_presence(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        match timeout(
            COMMAND_TIMEOUT,
            conn.psubscribe(self.keys.presence_pattern()),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(timed_out("the presence subscription")),
        }
    }
}

/// How long a node's presence report for a user lasts without a heartbeat, by default: a node
/// that stops without goodbye drops out of its users' presence within this time. Nodes renew
/// their users' reports three times per TTL.
pub const PRESENCE_TTL: Duration = Duration::from_secs(30);
/// How long `{prefix}seen:{user}` is kept.
const SEEN_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Adds this node to a user's presence and records them seen now; 1 when that made them
/// online (no other live node).
const ARRIVE: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local added = redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[5])
if added == 1 and redis.call('ZCARD', KEYS[1]) == 1 then return 1 end
return 0
"#;

/// Removes this node from a user's presence and records when they were seen; 1 when that made
/// them offline (no other live node).
const LEAVE: &str = r#"
local removed = redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
if removed == 1 and redis.call('ZCARD', KEYS[1]) == 0 then return 1 end
return 0
"#;

fn unix_millis(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Fan-out through Redis pub/sub: one channel per user (`{prefix}user:{id}`), subscribed by the
/// nodes where that user has a connection.
///
/// - [`publish`](Broker::publish) sends every delivery in one pipelined round trip and reports,
///   per delivery, whether any node is subscribed. Each event travels as a small binary header
///   (version, flags, excluded connection id, seq) followed by its JSON payload, which receiving
///   nodes hand to their hub without copying or parsing it.
/// - [`user_arrived`](Broker::user_arrived) returns once Redis has confirmed the subscription; the
///   broker unsubscribes in [`user_left`](Broker::user_left), when the user's last local
///   connection has left.
/// - While Redis is unreachable, `publish` delivers to this node's connections and still
///   succeeds, `user_arrived` fails fast, and [`check`](Broker::check) reports the broker down;
///   when Redis returns, the subscriber reconnects and every connected user is subscribed again.
///
/// Background tasks keep the subscriptions in line with the hub; they end when the broker is
/// dropped.
pub struct RedisBroker {
    pool: RedisPool,
    keys: Keys,
    hub: Hub,
    /// What publishing falls back to while Redis is away: this node's connections only.
    local: LocalBroker,
    subscriber: Arc<Subscriber>,
    /// Whether the last publish failed (to log an outage once, not per message).
    publish_failing: AtomicBool,
    /// This node's name in users' presence sets.
    node: String,
    presence_ttl: Duration,
    /// Serialises arrivals and departures, so a user who leaves and comes back at once cannot
    /// be taken offline after they returned.
    presence_lock: Mutex<()>,
    arrive: redis::Script,
    leave: redis::Script,
    tasks: Vec<AbortHandle>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("prefix", &self.keys.prefix())
            .field("subscriber_up", &self.subscriber.state.is_up())
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects the publishing pool and the subscriber connection, and starts the tasks that keep
    /// the subscriptions in line with `hub` (they end when the broker is dropped). A malformed or
    /// unreachable `REDIS_URL` is an [`Error::Config`].
    pub async fn connect(config: &RedisConfig, hub: Hub) -> Result<Self> {
        let (pool, info) = redis_support::connect_pool(config).await?;
        let keys = Keys::new(&config.prefix);
        let state = Arc::new(LinkState::default());
        let inbox = Inbox {
            keys: keys.clone(),
            hub: hub.clone(),
            state: state.clone(),
        };
        // Pub/sub pushes need RESP3, whatever the URL asked for.
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings))
            .map_err(|e| Error::config("REDIS_URL", format!("not a valid Redis URL ({e})")))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_min_delay(RETRY_MIN)
            .set_max_delay(RETRY_MAX)
            .set_number_of_retries(RECONNECT_ATTEMPTS)
            .set_push_sender(inbox)
            .set_automatic_resubscription();
        let conn = match timeout(
            CONNECT_TIMEOUT * 2,
            client.get_connection_manager_with_config(manager_config),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                return Err(Error::config(
                    "REDIS_URL",
                    format!("cannot connect to Redis: {e}"),
                ))
            }
            Err(_) => {
                return Err(Error::config(
                    "REDIS_URL",
                    "cannot connect to Redis: the subscriber connection timed out",
                ))
            }
        };
        let subscriber = Arc::new(Subscriber {
            conn,
            keys: keys.clone(),
            hub: hub.clone(),
            state,
            channels: Mutex::new(Channels::default()),
        });
        if let Err(e) = subscriber.listen_presence().await {
            return Err(Error::config(
                "REDIS_URL",
                format!("cannot subscribe to presence changes: {e}"),
            ));
        }
        let node = format!("{:016x}", rand::random::<u64>());
        let tasks = vec![
            tokio::spawn(subscriber.clone().run_resync()).abort_handle(),
            tokio::spawn(heartbeat(
                pool.clone(),
                keys.clone(),
                hub.clone(),
                node.clone(),
                config.presence_ttl,
            ))
            .abort_handle(),
        ];
        Ok(RedisBroker {
            pool,
            keys,
            local: LocalBroker::new(hub.clone()),
            hub,
            subscriber,
            publish_failing: AtomicBool::new(false),
            node,
            presence_ttl: config.presence_ttl,
            presence_lock: Mutex::new(()),
            arrive: redis::Script::new(ARRIVE),
            leave: redis::Script::new(LEAVE),
            tasks,
        })
    }

    /// One pipelined round trip: a `PUBLISH` per delivery; the number of receiving nodes each.
    async fn publish_remote(&self, deliveries: &[Delivery]) -> Result<Vec<i64>> {
        let mut pipe = redis::pipe();
        for d in deliveries {
            pipe.cmd("PUBLISH")
                .arg(self.keys.user_channel(d.user))
                .arg(Envelope {
                    exclude: d.exclude,
                    event: &d.event,
                });
        }
        let mut conn = self.pool.get(Backend::Broker).await?;
        pipe.query_async(&mut *conn).await.map_err(unavailable)
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, deliveries: &[Delivery]) -> Result<Vec<bool>> {
        if deliveries.is_empty() {
            return Ok(Vec::new());
        }
        match self.publish_remote(deliveries).await {
            Ok(receivers) => {
                if self.publish_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("Redis reachable again; fan-out is cluster-wide");
                }
                Ok((0..deliveries.len())
                    .map(|i| receivers.get(i).is_some_and(|n| *n > 0))
                    .collect())
            }
            Err(e) => {
                if !self.publish_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "Redis unreachable; delivering to this node's connections only until it returns");
                }
                self.local.publish(deliveries).await
            }
        }
    }

    async fn user_arrived(&self, user: UserId, _first_here: bool) -> Result<bool> {
        self.subscriber.watch(user).await?;
        let _serial = self.presence_lock.lock().await;
        let now = std::time::SystemTime::now();
        let mut conn = self.pool.get(Backend::Broker).await?;
        let came_online: i64 = self
            .arrive
            .key(self.keys.online(user))
            .key(self.keys.seen(user))
            .arg(unix_millis(now))
            .arg(unix_millis(now + self.presence_ttl))
            .arg(&self.node)
            .arg(i64::try_from((self.presence_ttl * 2).as_millis()).unwrap_or(i64::MAX))
            .arg(i64::try_from(SEEN_TTL.as_millis()).unwrap_or(i64::MAX))
            .invoke_async(&mut *conn)
            .await
            .map_err(unavailable)?;
        Ok(came_online == 1)
    }

    async fn user_left(&self, user: UserId) -> Result<bool> {
        let _serial = self.presence_lock.lock().await;
        if self.hub.is_connected(user) {
            // They came back meanwhile: still here, still subscribed.
            return Ok(false);
        }
        self.subscriber.unwatch(vec![user]).await;
        let mut conn = self.pool.get(Backend::Broker).await?;
        let went_offline: i64 = self
            .leave
            .key(self.keys.online(user))
            .key(self.keys.seen(user))
            .arg(unix_millis(std::time::SystemTime::now()))
            .arg(&self.node)
            .arg(i64::try_from(SEEN_TTL.as_millis()).unwrap_or(i64::MAX))
            .invoke_async(&mut *conn)
            .await
            .map_err(unavailable)?;
        Ok(went_offline == 1)
    }

    async fn presence(&self, users: &[UserId]) -> Result<Vec<ClusterPresence>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let now = unix_millis(std::time::SystemTime::now());
        let mut pipe = redis::pipe();
        for &user in users {
            pipe.cmd("ZCOUNT")
                .arg(self.keys.online(user))
                .arg(now)
                .arg("+inf");
            pipe.cmd("GET").arg(self.keys.seen(user));
        }
        let mut conn = self.pool.get(Backend::Broker).await?;
        let answers: Vec<(i64, Option<i64>)> = pipe
            .query_async::<Vec<Value>>(&mut *conn)
            .await
            .map_err(unavailable)?
            .chunks(2)
            .map(|pair| {
                let count = redis::from_redis_value::<i64>(pair[0].clone()).unwrap_or(0);
                let seen = redis::from_redis_value::<Option<i64>>(pair[1].clone()).unwrap_or(None);
                (count, seen)
            })
            .collect();
        Ok(answers
            .into_iter()
            .map(|(count, seen)| ClusterPresence {
                online: count > 0,
                last_seen: seen.and_then(chrono::DateTime::from_timestamp_millis),
            })
            .collect())
    }

    async fn publish_presence(&self, user: UserId, event: &Event) -> Result<()> {
        let published = async {
            let mut conn = self.pool.get(Backend::Broker).await?;
            redis::cmd("PUBLISH")
                .arg(self.keys.presence_channel(user))
                .arg(Envelope {
                    exclude: None,
                    event,
                })
                .query_async::<i64>(&mut *conn)
                .await
                .map_err(unavailable)
        };
        if let Err(e) = published.await {
            tracing::debug!(user, error = %e, "presence publish failed; local watchers only");
            self.hub.deliver_presence(user, event);
        }
        Ok(())
    }

    fn kind(&self) -> crate::BackendKind {
        crate::BackendKind::Redis
    }

    async fn check(&self) -> Result<()> {
        self.pool.ping(Backend::Broker).await?;
        if !self.subscriber.state.is_up() {
            return Err(unavailable(
                "the Redis subscriber connection is down; reconnecting",
            ));
        }
        Ok(())
    }
}

/// Renews this node's presence report for every user connected here, and when they were seen,
/// in one pipelined round trip per chunk of users, three times per `ttl`.
async fn heartbeat(pool: RedisPool, keys: Keys, hub: Hub, node: String, ttl: Duration) {
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let users = hub.connected_users();
        let now = std::time::SystemTime::now();
        let (now_ms, expiry) = (unix_millis(now), unix_millis(now + ttl));
        for chunk in users.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            for &user in chunk {
                pipe.cmd("ZADD")
                    .arg(keys.online(user))
                    .arg(expiry)
                    .arg(&node)
                    .ignore();
                pipe.cmd("PEXPIRE")
                    .arg(keys.online(user))
                    .arg(i64::try_from((ttl * 2).as_millis()).unwrap_or(i64::MAX))
                    .ignore();
                pipe.cmd("SET")
                    .arg(keys.seen(user))
                    .arg(now_ms)
                    .arg("PX")
                    .arg(i64::try_from(SEEN_TTL.as_millis()).unwrap_or(i64::MAX))
                    .ignore();
            }
            let sent = async {
                let mut conn = pool.get(Backend::Broker).await?;
                pipe.query_async::<()>(&mut *conn)
                    .await
                    .map_err(unavailable)
            };
            if let Err(e) = sent.await {
                tracing::debug!(error = %e, "presence heartbeat failed; retrying next beat");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::envelope::{decode, Envelope, HEADER, VERSION};
    use super::*;
    use crate::hub::{ConnectionId, Event};
    use redis::ToRedisArgs;

    fn encode(exclude: Option<ConnectionId>, event: &Event) -> Vec<u8> {
        let mut args = Envelope { exclude, event }.to_redis_args();
        assert_eq!(args.len(), 1);
        args.remove(0)
    }

    #[test]
    fn envelope_round_trips_without_copying_the_payload() {
        for (exclude, seq) in [
            (None, None),
            (Some(0xdead_beef_0000_0001), Some(42)),
            (Some(0), Some(-1)),
        ] {
            let event = Event {
                seq,
                payload: Bytes::from_static(br#"{"type":"message"}"#),
            };
            let raw = Bytes::from(encode(exclude, &event));
            assert_eq!(raw.len(), HEADER + event.payload.len());
            assert_eq!(raw[0], VERSION);
            let (got_exclude, got) = decode(raw.clone()).unwrap();
            assert_eq!(got_exclude, exclude);
            assert_eq!(got, event);
            // The payload is a view into the received buffer.
            assert_eq!(got.payload.as_ptr(), raw[HEADER..].as_ptr());
        }
    }

    #[test]
    fn bad_envelopes_are_rejected() {
        let event = Event {
            seq: None,
            payload: Bytes::from_static(b"{}"),
        };
        let good = encode(None, &event);
        assert!(decode(Bytes::from(good[..HEADER - 1].to_vec())).is_err());
        let mut other_version = good.clone();
        other_version[0] = 2;
        assert!(decode(Bytes::from(other_version)).is_err());
        let mut reserved = good;
        reserved[1] = 0b100;
        assert!(decode(Bytes::from(reserved)).is_err());
    }
}
