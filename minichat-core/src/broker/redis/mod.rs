//! Cross-node fan-out over Redis pub/sub.
//!
//! With several nodes behind a load balancer, the sender of a message and the connections of its
//! receiver are usually on different nodes. [`RedisBroker`] gives every user a channel,
//! `{prefix}user:{<id>}`; a node subscribes to it while the user has a connection there, and a
//! send publishes each event once on its user's channel. Redis answers each `PUBLISH` with the
//! number of subscribed nodes, which is how a sender learns whether the receiver is connected
//! anywhere in the cluster.
//!
//! This file is the broker itself: publishing, and what it falls back to while Redis is away.
//! The pieces it is made of have their own files: [`envelope`] (the bytes on a channel),
//! [`link`] (the subscriber connection, its push handler and its resync after an outage),
//! [`flow`] (publishing paced by the subscriber's backlog), [`presence`] (the presence
//! records, their scripts and the heartbeat) and [`run`] (a run of sends' cache pushes and
//! publishes in one pipeline).
//!
//! # Redis Cluster
//!
//! When `REDIS_URL` names a Redis Cluster (see `redis_support`), fan-out is sharded pub/sub: a
//! node `SSUBSCRIBE`s each user's channel on the shard that owns its slot, and a send
//! `SPUBLISH`es there, so channels and their traffic spread over the shards instead of every
//! message being relayed to every shard as classic pub/sub is. A send's cache push and its
//! publishes then go out side by side, each to its own shard (one pipeline keeps to one slot;
//! the receiver's list and channel share one, the sender's channel is elsewhere). Presence
//! changes stay on classic pub/sub (a pattern subscription; they are few). A shard that is down
//! counts as Redis being down, with the same fallback; redis-rs follows `MOVED`/`ASK`, refreshes
//! the slot map when a shard fails over to its replica, and re-subscribes on the new owner.
//!
//! # Delivery
//!
//! While Redis is up, a node's own connections get each event by one path, so nothing is
//! delivered twice: back through its subscription, or, for a direct message's deliveries to a
//! user whose connections are on this node alone (the presence set says so), straight from the
//! hub, with no `PUBLISH` at all: see [`run`] for when that is, and why nothing is lost. Other
//! events (group fan-out, read marks, typing, membership changes) always go through Redis.
//! While Redis cannot be reached,
//! `publish` hands each event to the local hub instead (through [`LocalBroker`]) and still
//! succeeds (once per outage it logs a warning): sends never fail for lack of fan-out, and
//! storage is the source of truth for whatever other nodes missed. Only the first send of an
//! outage waits, at most the backend budget (every command is bounded by it: see
//! `RedisPool::bounded`); later ones fall back at once until the pool finds Redis again. (If Redis goes away after publishing but before answering, the fallback
//! can hand this node's connections an event they also got through the subscription; a reader
//! tracking `seq` can tell it is a duplicate.) Presence events fall back the same way, to this
//! node's watchers.
//!
//! # Group fan-out
//!
//! A group's copies of one event (a group message, a membership change) differ only in each
//! member's seq. Published per member, that is a `PUBLISH` per member, and a push per member
//! for the receiving nodes to parse. So when a group has more members than there are nodes,
//! the copies go out as one members envelope (`envelope`: the `(user, seq)` list and the
//! frames' shared head, each once) on the fan-out channel `{prefix}fanout`, which every node
//! subscribes to when it connects: one `PUBLISH` per event, one push per node, and each node
//! makes the frames of the members connected to it. Redis's answer to that `PUBLISH` is the
//! number of nodes, which is what the next group is measured against (1 until the first
//! answer). Whether any member is connected anywhere comes from an `EXISTS` of their presence
//! records in the same round trip (a node that stopped without goodbye still counts for up to
//! the presence TTL). The sender's own copy goes on its user's channel as before. On a Redis
//! Cluster, group copies stay per member (`SPUBLISH` on each member's shard): one channel for
//! every node would put all group traffic on one shard.
//!
//! # Flow control
//!
//! Every publish first waits while this node's subscriber connection is more than a few
//! milliseconds behind its publishes ([`flow`]): the subscriber's pushes queue in process without
//! a bound, and receiving costs more than publishing, so without it a node sending flat out
//! outran its own deliveries by seconds.
//!
//! [`Broker::user_arrived`] returns once Redis has confirmed the subscription. The service
//! calls [`Broker::user_left`] for users the hub reports as departed (their last local
//! connection left); it unsubscribes those still without a connection.

mod envelope;
mod flow;
mod link;
mod presence;
mod run;

pub use presence::PRESENCE_TTL;

use super::{
    member_deliveries, publish_each, publish_one_by_one, reached_any, Broker, ClusterPresence,
    Delivery, FanoutOutcome, LocalBroker, MessageFanout,
};
use crate::cache::{RecentCache, RedisCache};
use crate::error::{Backend, Error, Result};
use crate::event::Frames;
use crate::hub::{Event, Hub};
use crate::model::{Seq, UserId};
use crate::redis_support::{self, Checkout, Keys, RedisConfig, RedisPool, UserPipelines};
use async_trait::async_trait;
use envelope::{Envelope, MembersEnvelope};
use flow::Flow;
use link::Subscriber;
use presence::Presence;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{Mutex, Notify};
use tokio::task::AbortHandle;

/// Users per `SUBSCRIBE`/`UNSUBSCRIBE`, and per heartbeat round trip, when many change at once.
const CHUNK: usize = 512;

fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::unavailable(Backend::Broker, e)
}

/// Fan-out through Redis pub/sub: one channel per user (`{prefix}user:{<id>}`), subscribed by the
/// nodes where that user has a connection.
///
/// - [`publish`](Broker::publish) sends every delivery in one pipelined round trip and reports,
///   per delivery, whether any node is subscribed. Each event travels as a small binary header
///   (version, flags, excluded connection id, seq) followed by its JSON payload, which receiving
///   nodes hand to their hub without copying or parsing it.
/// - [`publish_messages`](Broker::publish_messages), for a broker connected with its cache
///   ([`connect_with_cache`](Self::connect_with_cache)), puts the cache pushes (`MULTI; LPUSH;
///   LTRIM; PEXPIRE; EXEC`, one per receiver in a row) and the `PUBLISH`es of a run of sends in
///   that same round trip.
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
    /// How many nodes the last fan-out `PUBLISH` reached (1 before the first): a group with
    /// more members than this goes out on the fan-out channel (see "Group fan-out").
    nodes: AtomicUsize,
    presence: Arc<Presence>,
    /// Serialises arrivals and departures, so a user who leaves and comes back at once cannot
    /// be taken offline after they returned.
    presence_lock: Mutex<()>,
    /// The cache this broker was connected with, whose connections it shares: a send's push
    /// to it rides in the send's pipeline ([`Broker::publish_messages`]).
    cache: Option<Arc<RedisCache>>,
    /// Paces publishing by the subscriber connection's backlog (see `flow`).
    flow: Arc<Flow>,
    tasks: Vec<AbortHandle>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("prefix", &self.keys.prefix())
            .field("subscriber_up", &self.subscriber.is_up())
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects the publishing pool and the subscriber connection, and starts the tasks that keep
    /// the subscriptions in line with `hub` (they end when the broker is dropped). A malformed or
    /// unreachable `REDIS_URL` is an [`Error::Config`].
    pub async fn connect(config: &RedisConfig, hub: Hub) -> Result<Self> {
        let pool = redis_support::connect_pool(config).await?;
        Self::start(config, hub, pool, None).await
    }

    /// [`connect`](Self::connect), but over `cache`'s connections (its shared connection and
    /// pool) instead of a set of its own: then [`Broker::publish_messages`] with that very cache
    /// sends the cache push and the `PUBLISH`es in one pipeline, one round trip per send. With
    /// any other cache it pushes and publishes side by side, as by default. `config` must name
    /// the Redis and prefix `cache` was connected with.
    pub async fn connect_with_cache(
        config: &RedisConfig,
        hub: Hub,
        cache: Arc<RedisCache>,
    ) -> Result<Self> {
        let pool = cache.pool().clone();
        Self::start(config, hub, pool, Some(cache)).await
    }

    async fn start(
        config: &RedisConfig,
        hub: Hub,
        pool: RedisPool,
        cache: Option<Arc<RedisCache>>,
    ) -> Result<Self> {
        let keys = Keys::new(&config.prefix);
        let relinked = Arc::new(Notify::new());
        let flow = Arc::new(Flow::new(&keys));
        let subscriber = Subscriber::connect(
            pool.target(),
            keys.clone(),
            hub.clone(),
            relinked.clone(),
            flow.clone(),
        )
        .await?;
        let presence = Arc::new(Presence::new(
            pool.clone(),
            keys.clone(),
            config.presence_ttl,
        ));
        let tasks = vec![
            tokio::spawn(subscriber.clone().run_resync()).abort_handle(),
            tokio::spawn(presence.clone().run_heartbeat(hub.clone(), relinked)).abort_handle(),
        ];
        Ok(RedisBroker {
            pool,
            keys,
            local: LocalBroker::new(hub.clone()),
            hub,
            subscriber,
            publish_failing: AtomicBool::new(false),
            nodes: AtomicUsize::new(1),
            presence,
            presence_lock: Mutex::new(()),
            cache,
            flow,
            tasks,
        })
    }

    /// Appends a `PUBLISH` per delivery to `pipe` (`SPUBLISH` on a cluster).
    fn publish_commands(&self, pipe: &mut redis::Pipeline, deliveries: &[Delivery]) {
        let command = if self.pool.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        for d in deliveries {
            pipe.cmd(command)
                .arg(self.keys.user_channel(d.user))
                .arg(Envelope {
                    exclude: d.exclude,
                    event: &d.event,
                });
        }
    }

    /// One pipelined round trip on the shared connection (which concurrent sends share): a
    /// `PUBLISH` per delivery; the number of receiving nodes each. On a cluster an `SPUBLISH`
    /// per delivery, all at once, each to the shard of its user's channel (concurrent ones bound
    /// for one shard share its connection's pipeline).
    async fn publish_remote(&self, deliveries: &[Delivery]) -> Result<Vec<i64>> {
        self.paced().await;
        let mut pipes = UserPipelines::new(&self.pool);
        for d in deliveries {
            self.publish_commands(pipes.user(), std::slice::from_ref(d));
        }
        self.pool
            .bounded(Backend::Broker, async {
                let mut conn = Checkout::Shared(self.pool.shared(Backend::Broker)?);
                pipes
                    .query(&mut conn)
                    .await
                    .map_err(|e| self.pool.failed(Backend::Broker, e))
            })
            .await
    }

    /// Returns once this node's subscriber is close enough behind its publishes to publish
    /// more (see `flow`).
    async fn paced(&self) {
        self.flow
            .paced(|| self.subscriber.is_up(), self.pool.timeout())
            .await;
    }

    /// Sends `pipe`, with a backlog probe when one is due (see `flow`), on the shared
    /// connection (which concurrent sends share), within the backend budget: call it once
    /// [`paced`](Self::paced).
    async fn query_probed<T: redis::FromRedisValue + Send>(
        &self,
        pipe: &mut redis::Pipeline,
    ) -> Result<T> {
        self.flow.probe(pipe);
        let answered = self.query_shared(pipe).await;
        if answered.is_err() {
            // The probe may not have gone out: nothing to wait for.
            self.flow.forget();
        }
        answered
    }

    /// Sends `pipe` on the shared connection (which concurrent sends share), within the
    /// backend budget.
    async fn query_shared<T: redis::FromRedisValue + Send>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T> {
        self.pool
            .bounded(Backend::Broker, async {
                let mut conn = self.pool.shared(Backend::Broker)?;
                pipe.query_async(&mut conn)
                    .await
                    .map_err(|e| self.pool.failed(Backend::Broker, e))
            })
            .await
    }

    /// What `publish` returns for `deliveries` once Redis answered (or did not): who was
    /// reached, or, when Redis failed, the local delivery instead.
    async fn settle_publish(
        &self,
        remote: Result<Vec<i64>>,
        deliveries: &[Delivery],
    ) -> Result<Vec<bool>> {
        match remote {
            Ok(receivers) => {
                self.publish_succeeded();
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

    /// Notes that Redis took a publish (logging its return after an outage).
    fn publish_succeeded(&self) {
        if self.publish_failing.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis reachable again; fan-out is cluster-wide");
        }
    }

    /// One round trip carrying a group's copies as one members envelope on the fan-out channel,
    /// the sender's own copy on its user's channel, and an `EXISTS` of the members' presence
    /// records. Returns whether any member is connected anywhere, and records the number of
    /// nodes the fan-out reached.
    async fn publish_members_remote(
        &self,
        frames: &Frames,
        members: &[(UserId, Seq)],
        own: Option<&Delivery>,
    ) -> Result<bool> {
        self.paced().await;
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH")
            .arg(self.keys.fanout_channel())
            .arg(MembersEnvelope { members, frames });
        if let Some(own) = own {
            self.publish_commands(&mut pipe, std::slice::from_ref(own));
            pipe.ignore();
        }
        pipe.cmd("EXISTS")
            .arg(self.keys.online_args(members.iter().map(|&(user, _)| user)));
        let (nodes, online): (usize, usize) = self.query_probed(&mut pipe).await?;
        self.nodes.store(nodes.max(1), Ordering::Relaxed);
        metrics::counter!(crate::telemetry::GROUP_FANOUTS).increment(1);
        Ok(online > 0)
    }

    /// One `PUBLISH` of a presence event on `user`'s presence channel.
    async fn publish_presence_remote(&self, user: UserId, event: &Event) -> Result<i64> {
        self.pool
            .bounded(Backend::Broker, async {
                let mut conn = self.pool.shared(Backend::Broker)?;
                redis::cmd("PUBLISH")
                    .arg(self.keys.presence_channel(user))
                    .arg(Envelope {
                        exclude: None,
                        event,
                    })
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.pool.failed(Backend::Broker, e))
            })
            .await
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
        let remote = self.publish_remote(deliveries).await;
        self.settle_publish(remote, deliveries).await
    }

    async fn publish_messages(
        &self,
        cache: &dyn RecentCache,
        messages: &[MessageFanout<'_>],
    ) -> Vec<FanoutOutcome> {
        // Only for the cache whose connections this broker shares, and not while it has stale
        // lists to delete first (its own push does that, after an outage). Not on a cluster
        // either, where one pipeline keeps to one slot: the push and the publishes go side by
        // side, each to its shard.
        let own = self
            .cache
            .as_ref()
            .filter(|_| !self.pool.is_cluster())
            .filter(|own| std::ptr::addr_eq(cache, Arc::as_ptr(own)) && !own.has_stale());
        let Some(own) = own else {
            return publish_one_by_one(self, cache, messages).await;
        };
        let remote = self.push_and_publish_remote(own, messages).await;
        let mut outcomes = Vec::with_capacity(messages.len());
        for (m, (pushed, published)) in messages.iter().zip(remote) {
            if pushed.is_err() {
                own.push_failed(m.receiver);
            }
            outcomes.push((pushed, self.settle_publish(published, m.deliveries).await));
        }
        outcomes
    }

    async fn publish_to_members(
        &self,
        frames: &Frames,
        members: &[(UserId, Seq)],
        own: Option<Delivery>,
    ) -> Result<bool> {
        if self.pool.is_cluster() || members.len() <= self.nodes.load(Ordering::Relaxed) {
            // A publish per member costs no more than one to every node.
            return publish_each(self, frames, members, own).await;
        }
        match self
            .publish_members_remote(frames, members, own.as_ref())
            .await
        {
            Ok(reached) => {
                self.publish_succeeded();
                Ok(reached)
            }
            Err(e) => {
                // As `publish` does: this node's members get theirs, and count as reached.
                let deliveries = member_deliveries(frames, members, own);
                let reached = self.settle_publish(Err(e), &deliveries).await?;
                Ok(reached_any(&reached, members.len()))
            }
        }
    }

    async fn user_arrived(&self, user: UserId, _first_here: bool) -> Result<bool> {
        self.subscriber.watch(user).await?;
        let _serial = self.presence_lock.lock().await;
        self.presence.arrive(user).await
    }

    async fn user_left(&self, user: UserId) -> Result<bool> {
        let _serial = self.presence_lock.lock().await;
        if self.hub.is_connected(user) {
            // They came back meanwhile: still here, still subscribed.
            return Ok(false);
        }
        self.subscriber.unwatch(vec![user]).await;
        self.presence.leave(user).await
    }

    async fn presence(&self, users: &[UserId]) -> Result<Vec<ClusterPresence>> {
        self.presence.query(users).await
    }

    async fn publish_presence(&self, user: UserId, event: &Event) -> Result<()> {
        if let Err(e) = self.publish_presence_remote(user, event).await {
            tracing::debug!(user, error = %e, "presence publish failed; local watchers only");
            self.hub.deliver_presence(user, event);
        }
        Ok(())
    }

    async fn settle(&self) {
        self.presence.settle().await;
    }

    fn kind(&self) -> crate::BackendKind {
        crate::BackendKind::Redis
    }

    async fn check(&self) -> Result<()> {
        self.pool.ping(Backend::Broker).await?;
        if !self.subscriber.is_up() {
            return Err(unavailable(
                "the Redis subscriber connection is down; reconnecting",
            ));
        }
        Ok(())
    }
}
