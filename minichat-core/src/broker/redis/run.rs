//! A run of direct messages fanned out in one pipeline: the cache pushes and the `PUBLISH`es
//! together, and each sender's echo only where someone can receive it.
//!
//! This file exists because the run is the broker's hot path ([`Broker::publish_messages`]) and
//! its one subtle rule, when an echo may stay unpublished, needs its argument beside it.
//!
//! # Echoes
//!
//! Every WebSocket send has an echo: the sender's own copy, for their other connections (their
//! other devices), with the sending connection excluded. Published like any delivery, it came
//! back through this node's subscriber as a push to parse and hand to the hub, which then found
//! no one to give it to whenever the sender had no other connection: the common case, and half
//! of all the pushes of a node's one-to-one traffic. So an echo whose user has no connection on
//! this node but the excluded one is *held*: instead of its `PUBLISH`, the run's pipeline carries
//! a look at the user's presence set (`ZRANGE {prefix}online:{<user>} 0 1`, once per sender), and
//! the echo is published, in a second round trip, only when a node other than this one is in it.
//!
//! Why nothing is lost: a connection that opens on another node subscribes that node to the
//! user's channel, then adds the node to the user's presence set, and only then reads storage
//! for what it missed (`Chat::subscribe`, then the stream's replay). The message was stored
//! before its run reached the broker. If the presence look came after that node's `ZADD`, the
//! echo is published and the subscription carries it; if it came before, so did the store, and
//! the new connection's read of storage, which follows the `ZADD`, holds the message. A new
//! connection on this node is the same argument with the hub in Redis's place: it joins the hub
//! before reading storage, and the hub is looked at after the store. Where presence lags behind
//! the subscriptions (a Redis that lost its data, until the heartbeat writes the records again;
//! a node whose arrival could not reach Redis, until its resync), an echo that node would have
//! received is held; its stream then reads it from storage as a gap, before the next event. A
//! node that died without goodbye still counts until its record expires: echoes are published
//! to it meanwhile, as they were before.

use super::RedisBroker;
use crate::broker::{Delivery, MessageFanout};
use crate::cache::RedisCache;
use crate::error::{Backend, Error, Result};
use crate::hub::{ConnectionId, Hub};
use crate::model::UserId;
use redis::{RedisResult, Value};

/// The echoes of a run that wait for the presence look: the `(user, excluded connection)` pairs
/// whose user has no other connection on this node (a run is one sender's, so there is mostly
/// one).
struct Held(Vec<(UserId, ConnectionId)>);

impl Held {
    /// The echoes among `messages`' deliveries that only their excluded connection here could
    /// receive, looked up in `hub` now (after the messages were stored: see the module docs).
    fn of(hub: &Hub, messages: &[MessageFanout<'_>]) -> Held {
        let mut held = Vec::new();
        for d in messages.iter().flat_map(|m| m.deliveries) {
            if let Some(origin) = d.exclude {
                if !held.contains(&(d.user, origin))
                    && !hub.has_other_subscriber(d.user, Some(origin))
                {
                    held.push((d.user, origin));
                }
            }
        }
        Held(held)
    }

    fn holds(&self, d: &Delivery) -> bool {
        d.exclude
            .is_some_and(|origin| self.0.contains(&(d.user, origin)))
    }
}

impl RedisBroker {
    /// One pipelined round trip carrying a run of messages: per run of consecutive messages to
    /// one receiver, `cache`'s push of their frames to that receiver's list (one `MULTI ...
    /// EXEC`), then each message's `PUBLISH`es in order, except held echoes (see the module
    /// docs), whose users' presence sets are read at the end. Held echoes that another node may
    /// receive go out in a second round trip. Returns, per message, whether its push succeeded
    /// and the number of receiving nodes of each delivery (0 for an echo left unpublished). A
    /// failed round trip fails everything; a failed transaction fails only the pushes it
    /// carried, a failed `PUBLISH` only its message's fan-out.
    pub(super) async fn push_and_publish_remote(
        &self,
        cache: &RedisCache,
        messages: &[MessageFanout<'_>],
    ) -> Vec<(Result<()>, Result<Vec<i64>>)> {
        self.paced().await;
        let held = Held::of(&self.hub, messages);
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
        let elsewhere: Vec<(UserId, ConnectionId)> = held
            .0
            .iter()
            .copied()
            .filter(|_| self.presence.elsewhere(replies.next()))
            .collect();
        if !elsewhere.is_empty() {
            self.publish_held(messages, &Held(elsewhere), &mut outcomes)
                .await;
        }
        outcomes
    }

    /// The second round trip: `held`'s echoes among `messages`, published in order, their
    /// receiving nodes written into `outcomes`. When it fails, this node's connections get them
    /// (as `publish` falls back).
    async fn publish_held(
        &self,
        messages: &[MessageFanout<'_>],
        held: &Held,
        outcomes: &mut [(Result<()>, Result<Vec<i64>>)],
    ) {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut echoes = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            for (j, d) in m.deliveries.iter().enumerate() {
                if held.holds(d) {
                    self.publish_commands(&mut pipe, std::slice::from_ref(d));
                    echoes.push((i, j, d));
                }
            }
        }
        let answered: Result<Vec<RedisResult<Value>>> = self.query_shared(&pipe).await;
        match answered {
            Ok(replies) => {
                self.publish_succeeded();
                for ((i, j, _), reply) in echoes.into_iter().zip(replies) {
                    let count = publish_count(Some(reply));
                    if let (Ok(receivers), Ok(n)) = (&mut outcomes[i].1, count) {
                        receivers[j] = n;
                    }
                }
            }
            Err(e) => {
                let local: Vec<Delivery> = echoes.iter().map(|&(_, _, d)| d.clone()).collect();
                // Falls back to this node's connections; its answer is always `Ok`.
                let _ = self.settle_publish(Err(e), &local).await;
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
