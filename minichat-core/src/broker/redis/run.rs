//! A run of direct messages fanned out in one pipeline: the cache pushes and the `PUBLISH`es
//! together, and a delivery published only where another node can receive it.
//!
//! This file exists because the run is the broker's hot path ([`Broker::publish_messages`]) and
//! its one subtle rule, when a delivery may skip Redis, needs its argument beside it.
//!
//! # Deliveries to this node's users
//!
//! Published, a delivery comes back through every subscribed node's subscriber as a push to
//! parse and hand to the hub, this node's own included. When the only connections of its user
//! are here (one node, or a receiver on the sender's node), that is a `PUBLISH`, a push and a
//! parse for nothing. So a delivery whose user has a connection on this node, or that is the
//! sender's echo (their own copy, for their other devices: the sending connection is here), is
//! *held*: instead of its `PUBLISH`, the run's pipeline carries a look at the user's presence
//! set (`ZRANGE {prefix}online:{<user>} 0 1`, once per user). If the set holds this node and no
//! other, the held deliveries go straight to this node's hub; otherwise they are published, in a
//! second round trip, and reach this node's connections back through its subscription as
//! before. Either way a delivery reaches this node's connections by one path only, never twice.
//!
//! Why nothing is lost: a connection that opens on another node subscribes that node to the
//! user's channel, then adds the node to the user's presence set, and only then reads storage
//! for what it missed (`Chat::subscribe`, then the stream's replay). The message was stored
//! before its run reached the broker. If the presence look came after that node's `ZADD`, the
//! delivery is published and the subscription carries it; if it came before, so did the store,
//! and the new connection's read of storage, which follows the `ZADD`, holds the message. A new
//! connection on this node joins the hub before reading storage, and the hub is looked at (to
//! hold, and again to deliver) after the store: it gets the delivery live, from storage, or both
//! (the stream drops the second by its seq). Where presence lags behind the subscriptions, the
//! look errs towards publishing: a set without this node, though the user is connected here
//! (a Redis that lost its data, until the heartbeat writes the records again), or an answer not
//! understood, counts as another node; so does a node that died without goodbye, until its
//! record expires. Only a node whose own arrival could not reach Redis is missed, until its
//! resync; its stream then reads the message from storage as a gap, before the next event.
//!
//! Held and published deliveries can reach a connection out of seq order (a delivery that goes
//! straight to the hub can overtake one of another run still on its way back from Redis); the
//! stream's reorder window puts them back in order, as it does for concurrent sends.

use super::RedisBroker;
use crate::broker::{Delivery, MessageFanout};
use crate::cache::RedisCache;
use crate::error::{Backend, Error, Result};
use crate::hub::Hub;
use crate::model::UserId;
use redis::{RedisResult, Value};

/// The users of a run whose deliveries wait for the presence look (a run is one sender's: mostly
/// the sender and one receiver), each with what the look said: whether this node alone has the
/// user's connections (`false` until the answer is in).
struct Held(Vec<(UserId, bool)>);

impl Held {
    /// The users among `messages`' deliveries with a connection on this node, or whose delivery
    /// is an echo, looked up in `hub` now (after the messages were stored: see the module docs).
    fn of(hub: &Hub, messages: &[MessageFanout<'_>]) -> Held {
        let mut held = Vec::new();
        for d in messages.iter().flat_map(|m| m.deliveries) {
            if !held.iter().any(|&(user, _)| user == d.user)
                && (d.exclude.is_some() || hub.is_connected(d.user))
            {
                held.push((d.user, false));
            }
        }
        Held(held)
    }

    /// Whether `d` is held: `Some` of whether it goes straight to the hub.
    fn route(&self, d: &Delivery) -> Option<bool> {
        self.0
            .iter()
            .find(|&&(user, _)| user == d.user)
            .map(|&(_, here)| here)
    }

    fn holds(&self, d: &Delivery) -> bool {
        self.route(d).is_some()
    }
}

impl RedisBroker {
    /// One pipelined round trip carrying a run of messages: per run of consecutive messages to
    /// one receiver, `cache`'s push of their frames to that receiver's list (one `MULTI ...
    /// EXEC`), then each message's `PUBLISH`es in order, except held deliveries (see the module
    /// docs), whose users' presence sets are read at the end. Held deliveries of users connected
    /// here alone are then handed to the hub; the others go out in a second round trip. Returns,
    /// per message, whether its push succeeded and the number of receiving nodes of each
    /// delivery (1 for one handed to the hub if its user is connected here, as [`LocalBroker`]
    /// counts). A failed round trip fails everything; a failed transaction fails only the pushes
    /// it carried, a failed `PUBLISH` only its message's fan-out.
    ///
    /// [`LocalBroker`]: crate::broker::LocalBroker
    pub(super) async fn push_and_publish_remote(
        &self,
        cache: &RedisCache,
        messages: &[MessageFanout<'_>],
    ) -> Vec<(Result<()>, Result<Vec<i64>>)> {
        self.paced().await;
        let mut held = Held::of(&self.hub, messages);
        let segments = || messages.chunk_by(|a, b| a.receiver == b.receiver);
        let mut pipe = redis::pipe();
        // Every reply comes back, errors included, and is judged below.
        pipe.ignore_errors();
        for segment in segments() {
            pipe.cmd("MULTI").ignore();
            cache.push_commands(
                &mut pipe,
                segment[0].receiver,
                segment.iter().map(|m| m.frame),
            );
            pipe.cmd("EXEC");
            for d in segment.iter().flat_map(|m| m.deliveries) {
                if !held.holds(d) {
                    self.publish_commands(&mut pipe, std::slice::from_ref(d));
                }
            }
        }
        for &(user, _) in &held.0 {
            self.presence.nodes_command(&mut pipe, user);
        }
        let answered: Result<Vec<RedisResult<Value>>> = self.query_probed(&mut pipe).await;
        let mut replies = match answered {
            Ok(replies) => replies.into_iter(),
            Err(e) => {
                let why = e.to_string();
                return messages
                    .iter()
                    .map(|_| {
                        (
                            Err(Error::unavailable(Backend::Cache, why.clone())),
                            Err(Error::unavailable(Backend::Broker, why.clone())),
                        )
                    })
                    .collect();
            }
        };
        let mut outcomes = Vec::with_capacity(messages.len());
        for segment in segments() {
            let pushed = exec_outcome(replies.next());
            for m in segment {
                let published = m
                    .deliveries
                    .iter()
                    .map(|d| match held.holds(d) {
                        true => Ok(0),
                        false => publish_count(replies.next()),
                    })
                    .collect();
                let pushed = match &pushed {
                    Ok(()) => Ok(()),
                    Err(why) => Err(Error::unavailable(Backend::Cache, why.clone())),
                };
                outcomes.push((pushed, published));
            }
        }
        for (_, here) in &mut held.0 {
            *here = self.presence.only_here(replies.next());
        }
        if held.0.iter().any(|&(_, here)| here) {
            self.deliver_here(messages, &held, &mut outcomes);
        }
        if held.0.iter().any(|&(_, here)| !here) {
            self.publish_held(messages, &held, &mut outcomes).await;
        }
        outcomes
    }

    /// The held deliveries among `messages` whose users are connected here alone, handed to this
    /// node's hub in order (as [`LocalBroker`] does), their counts written into `outcomes`; none
    /// of a message whose publish failed (it falls back whole).
    ///
    /// [`LocalBroker`]: crate::broker::LocalBroker
    fn deliver_here(
        &self,
        messages: &[MessageFanout<'_>],
        held: &Held,
        outcomes: &mut [(Result<()>, Result<Vec<i64>>)],
    ) {
        for (m, (_, published)) in messages.iter().zip(outcomes) {
            // A message whose publish failed falls back to this node's hub whole (`publish`).
            let Ok(receivers) = published else { continue };
            for (j, d) in m.deliveries.iter().enumerate() {
                if held.route(d) == Some(true) {
                    receivers[j] = i64::from(self.local.deliver(d));
                }
            }
        }
    }

    /// The second round trip: the held deliveries among `messages` whose users may be connected
    /// elsewhere, published in order, their receiving nodes written into `outcomes`; none of a
    /// message whose publish failed (it falls back whole). When the trip fails, this node's
    /// connections get them (as `publish` falls back).
    async fn publish_held(
        &self,
        messages: &[MessageFanout<'_>],
        held: &Held,
        outcomes: &mut [(Result<()>, Result<Vec<i64>>)],
    ) {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut sent = Vec::new();
        for (i, (m, (_, published))) in messages.iter().zip(outcomes.iter()).enumerate() {
            if published.is_err() {
                continue;
            }
            for (j, d) in m.deliveries.iter().enumerate() {
                if held.route(d) == Some(false) {
                    self.publish_commands(&mut pipe, std::slice::from_ref(d));
                    sent.push((i, j, d));
                }
            }
        }
        let answered: Result<Vec<RedisResult<Value>>> = self.query_shared(&pipe).await;
        match answered {
            Ok(replies) => {
                self.publish_succeeded();
                for ((i, j, _), reply) in sent.into_iter().zip(replies) {
                    let count = publish_count(Some(reply));
                    if let (Ok(receivers), Ok(n)) = (&mut outcomes[i].1, count) {
                        receivers[j] = n;
                    }
                }
            }
            Err(e) => {
                let local: Vec<Delivery> = sent.iter().map(|&(_, _, d)| d.clone()).collect();
                // Falls back to this node's connections; its answer is always `Ok`.
                if let Ok(reached) = self.settle_publish(Err(e), &local).await {
                    for ((i, j, _), reached) in sent.into_iter().zip(reached) {
                        if let Ok(receivers) = &mut outcomes[i].1 {
                            receivers[j] = i64::from(reached);
                        }
                    }
                }
            }
        }
    }
}

/// The push's outcome from `EXEC`'s reply: one answer per queued command, each of which must
/// have succeeded; the reason otherwise.
fn exec_outcome(reply: Option<RedisResult<Value>>) -> std::result::Result<(), String> {
    match reply {
        Some(Ok(Value::Array(results)))
            if !results.iter().any(|r| matches!(r, Value::ServerError(_))) =>
        {
            Ok(())
        }
        Some(Err(e)) => Err(e.to_string()),
        other => Err(format!("the cache push's transaction failed: {other:?}")),
    }
}

/// The number of receiving nodes from a `PUBLISH` reply.
fn publish_count(reply: Option<RedisResult<Value>>) -> Result<i64> {
    match reply {
        Some(Ok(Value::Int(n))) => Ok(n),
        Some(Ok(other)) => Err(Error::unavailable(
            Backend::Broker,
            format!("unexpected answer to PUBLISH: {other:?}"),
        )),
        Some(Err(e)) => Err(Error::unavailable(Backend::Broker, e)),
        None => Err(Error::unavailable(
            Backend::Broker,
            "fewer answers than PUBLISHes",
        )),
    }
}
