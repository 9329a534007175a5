//! Cross-node fan-out over Redis pub/sub.
//!
//! With several nodes behind a load balancer, the sender of a message and the connections of its
//! receiver are usually on different nodes. [`RedisBroker`] gives every user a channel,
//! `{prefix}user:{id}`; a node subscribes to it while the user has a connection there, and a
//! send publishes each event once on its user's channel. Redis answers each `PUBLISH` with the
//! number of subscribed nodes, which is how a sender learns whether the receiver is connected
//! anywhere in the cluster.
//!
//! This file is the broker itself: publishing, and what it falls back to while Redis is away.
//! The pieces it is made of have their own files: [`envelope`] (the bytes on a channel),
//! [`link`] (the subscriber connection, its push handler and its resync after an outage) and
//! [`presence`] (the presence records, their scripts and the heartbeat).
//!
//! # Delivery
//!
//! While Redis is up, a node's own connections also get their events back through its
//! subscription, never directly, so nothing is delivered twice. While Redis cannot be reached,
//! `publish` hands each event to the local hub instead (through [`LocalBroker`]) and still
//! succeeds (once per outage it logs a warning): sends never fail for lack of fan-out, and
//! storage is the source of truth for whatever other nodes missed. Only the first send of an
//! outage waits, at most the backend budget (every command is bounded by it: see
//! `RedisPool::bounded`); later ones fall back at once until the pool finds Redis again. (If Redis goes away after publishing but before answering, the fallback
//! can hand this node's connections an event they also got through the subscription; a reader
//! tracking `seq` can tell it is a duplicate.) Presence events fall back the same way, to this
//! node's watchers.
//!
//! [`Broker::user_arrived`] returns once Redis has confirmed the subscription. The service
//! calls [`Broker::user_left`] for users the hub reports as departed (their last local
//! connection left); it unsubscribes those still without a connection.

mod envelope;
mod link;
mod presence;

pub use presence::PRESENCE_TTL;

use super::{Broker, ClusterPresence, Delivery, LocalBroker};
use crate::error::{Backend, Error, Result};
use crate::hub::{Event, Hub};
use crate::model::UserId;
use crate::redis_support::{self, Keys, RedisConfig, RedisPool};
use async_trait::async_trait;
use envelope::Envelope;
use link::Subscriber;
use presence::Presence;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Mutex;
use tokio::task::AbortHandle;

/// Users per `SUBSCRIBE`/`UNSUBSCRIBE`, and per heartbeat round trip, when many change at once.
const CHUNK: usize = 512;

fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::unavailable(Backend::Broker, e)
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
    presence: Arc<Presence>,
    /// Serialises arrivals and departures, so a user who leaves and comes back at once cannot
    /// be taken offline after they returned.
    presence_lock: Mutex<()>,
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
        let (pool, info) = redis_support::connect_pool(config).await?;
        let keys = Keys::new(&config.prefix);
        let subscriber = Subscriber::connect(info, keys.clone(), hub.clone()).await?;
        let presence = Arc::new(Presence::new(
            pool.clone(),
            keys.clone(),
            config.presence_ttl,
        ));
        let tasks = vec![
            tokio::spawn(subscriber.clone().run_resync()).abort_handle(),
            tokio::spawn(presence.clone().run_heartbeat(hub.clone())).abort_handle(),
        ];
        Ok(RedisBroker {
            pool,
            keys,
            local: LocalBroker::new(hub.clone()),
            hub,
            subscriber,
            publish_failing: AtomicBool::new(false),
            presence,
            presence_lock: Mutex::new(()),
            tasks,
        })
    }

    /// One pipelined round trip on the shared connection (which concurrent sends share): a
    /// `PUBLISH` per delivery; the number of receiving nodes each.
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
        self.pool
            .bounded(Backend::Broker, async {
                let mut conn = self.pool.shared(Backend::Broker)?;
                pipe.query_async(&mut conn)
                    .await
                    .map_err(|e| self.pool.failed(Backend::Broker, e))
            })
            .await
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
