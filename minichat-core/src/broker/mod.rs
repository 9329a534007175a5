//! The broker: carries events to the nodes where their users are connected.
//!
//! [`Broker`] is the seam between the service and the rest of the cluster. [`LocalBroker`]
//! (the default) hands events straight to this node's [`Hub`](crate::Hub); [`RedisBroker`]
//! (chosen when `REDIS_URL` is set) publishes each event once on the target user's channel, and
//! every node subscribed to that channel (the nodes where the user has a connection) hands it to
//! its own hub.

mod local;
mod redis;

pub use self::redis::{RedisBroker, PRESENCE_TTL};
pub use local::LocalBroker;

use crate::cache::RecentCache;
use crate::error::Result;
use crate::event::Frames;
use crate::hub::{ConnectionId, Event};
use crate::model::{Seq, UserId};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

/// One event for one user, to every connection of theirs except `exclude` (the connection
/// the event came from, which gets an acknowledgement instead).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub user: UserId,
    pub exclude: Option<ConnectionId>,
    pub event: Event,
}

/// The fan-out of one stored direct message ([`Broker::publish_messages`]): the receiver, their
/// copy for the recent-messages cache, and every delivery (the receiver's, then the sender's
/// own copy).
#[derive(Debug, Clone, Copy)]
pub struct MessageFanout<'a> {
    pub receiver: UserId,
    pub frame: &'a Bytes,
    pub deliveries: &'a [Delivery],
}

/// What became of one [`MessageFanout`]: the cache push, and per delivery whether any node had
/// a connection of its user.
pub type FanoutOutcome = (Result<()>, Result<Vec<bool>>);

/// One delivery per user of `members` (`frames` with that user's seq), then `own`.
pub(crate) fn member_deliveries(
    frames: &Frames,
    members: &[(UserId, Seq)],
    own: Option<Delivery>,
) -> Vec<Delivery> {
    let mut deliveries = Vec::with_capacity(members.len() + 1);
    deliveries.extend(members.iter().map(|&(user, seq)| Delivery {
        user,
        exclude: None,
        event: frames.event(seq),
    }));
    deliveries.extend(own);
    deliveries
}

/// [`Broker::publish_to_members`] as a delivery per member through `broker`'s `publish`.
async fn publish_each<B: Broker + ?Sized>(
    broker: &B,
    frames: &Frames,
    members: &[(UserId, Seq)],
    own: Option<Delivery>,
) -> Result<bool> {
    let deliveries = member_deliveries(frames, members, own);
    let reached = broker.publish(&deliveries).await?;
    Ok(reached_any(&reached, members.len()))
}

/// [`Broker::publish_messages`] as one message after another, each push and publish side by
/// side.
async fn publish_one_by_one<B: Broker + ?Sized>(
    broker: &B,
    cache: &dyn RecentCache,
    messages: &[MessageFanout<'_>],
) -> Vec<FanoutOutcome> {
    let mut outcomes = Vec::with_capacity(messages.len());
    for m in messages {
        outcomes.push(tokio::join!(
            cache.push(m.receiver, m.frame),
            broker.publish(m.deliveries)
        ));
    }
    outcomes
}

/// Whether any of the first `members` of a publish's answers (those of
/// [`member_deliveries`], before the sender's own copy) reached a node.
pub(crate) fn reached_any(reached: &[bool], members: usize) -> bool {
    reached.iter().take(members).any(|&r| r)
}

/// A user's presence as the cluster knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClusterPresence {
    pub online: bool,
    /// The last time a node reported the user connected, when the cluster keeps that.
    pub last_seen: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publishes each delivery once to the cluster. Returns, per delivery in order, whether any
    /// node had a connection of its user. When the cluster cannot be reached, delivers to this
    /// node's connections only and still returns `Ok`: sends never fail for lack of fan-out.
    async fn publish(&self, deliveries: &[Delivery]) -> Result<Vec<bool>>;

    /// The fan-out of newly stored direct messages, a sender's run of them in order: for each,
    /// publishes its deliveries as [`publish`](Broker::publish) does and records the receiver's
    /// copy in `cache` as [`RecentCache::push`] does (with the same guarantees each). Returns
    /// both outcomes per message, in order, the push's first. By default one message after
    /// another, each push and publish concurrently. A broker that lives in the same backend as
    /// `cache` may carry the whole run in one round trip: the Redis broker does, for the Redis
    /// cache it was connected with ([`RedisBroker::connect_with_cache`]).
    async fn publish_messages(
        &self,
        cache: &dyn RecentCache,
        messages: &[MessageFanout<'_>],
    ) -> Vec<FanoutOutcome> {
        publish_one_by_one(self, cache, messages).await
    }

    /// The fan-out of an event to the members of a conversation: `frames` to each user of
    /// `members` with that user's seq, and `own` (the sender's copy, with its own seq and the
    /// connection to skip) when there is one. Returns whether any user of `members` had a
    /// connection anywhere, with the same guarantees as [`publish`](Broker::publish). By
    /// default, a delivery per user through `publish`; the Redis broker sends a group's copies
    /// to every node as one message when that is cheaper ([`RedisBroker`]'s "Group fan-out").
    async fn publish_to_members(
        &self,
        frames: &Frames,
        members: &[(UserId, Seq)],
        own: Option<Delivery>,
    ) -> Result<bool> {
        publish_each(self, frames, members, own).await
    }

    /// Called for every new connection of `user` on this node (`first_here` when it is their
    /// first); returns once events published for them anywhere will reach this node (or, while
    /// the cluster is unreachable, once it is arranged that they will when it returns). Returns
    /// whether the user just came online cluster-wide.
    async fn user_arrived(&self, user: UserId, first_here: bool) -> Result<bool>;

    /// Called when `user`'s last connection on this node has gone: stop listening for them and
    /// drop this node from their presence. Returns whether they went offline cluster-wide.
    async fn user_left(&self, user: UserId) -> Result<bool>;

    /// Whether each of `users` is online anywhere, and when the cluster last saw them.
    async fn presence(&self, users: &[UserId]) -> Result<Vec<ClusterPresence>>;

    /// Hands a presence event of `user` to every node's connections watching them.
    async fn publish_presence(&self, user: UserId, event: &Event) -> Result<()>;

    /// Returns once no write of the broker's own (a presence heartbeat) is in flight, so that
    /// with no connection left on this node it writes nothing more. Nothing to wait for, by
    /// default.
    async fn settle(&self) {}

    /// What this broker is, for `/health` (local or Redis).
    fn kind(&self) -> crate::BackendKind;

    async fn check(&self) -> Result<()>;
}
