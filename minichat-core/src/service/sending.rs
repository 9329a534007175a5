//! The send path of [`Chat`]: a message, or a sender's run of them, validated, stored, then
//! fanned out once committed.
//!
//! Kept apart from `service.rs` (the contract's other operations and the backends' assembly)
//! because the fan-out of a run has a rule of its own: its direct messages go to the broker as
//! one call ([`Broker::publish_messages`]), so that on Redis a run is one round trip, in the
//! sender's order, instead of one per message; a group message in a run goes out on its own,
//! in its place, so the sender's own copies still arrive in seq order.
//!
//! [`Broker::publish_messages`]: crate::broker::Broker::publish_messages

use super::{Chat, SentMessage};
use crate::broker::{member_deliveries, reached_any, Delivery, MessageFanout};
use crate::error::{Error, Result};
use crate::event::Frames;
use crate::hub::ConnectionId;
use crate::model::{NewMessage, StoredMessage, UserId, ValidMessage};
use crate::telemetry;

/// A committed message on its way out: its answer, and the fan-out that completes it.
struct Outgoing {
    /// The answer, `delivered` still false.
    sent: SentMessage,
    fanout: Fanout,
}

/// What a committed message sends to the cluster.
enum Fanout {
    /// A retried `client_id`: it went out when it was first stored, and does not again.
    Nothing,
    /// A direct message: the receiver's copy (first, also the recent-messages cache's) and the
    /// sender's own.
    Direct {
        receiver: UserId,
        deliveries: Vec<Delivery>,
    },
    /// A group message: one frame per member, and the sender's own copy.
    Group { frames: Frames, own: Delivery },
}

impl Outgoing {
    /// The answer and fan-out of `valid`, stored as `stored`; `origin` is the connection the
    /// send came from, which gets an acknowledgement instead of its own copy.
    fn new(valid: &ValidMessage, stored: StoredMessage, origin: Option<ConnectionId>) -> Outgoing {
        let sent = SentMessage {
            message: stored.message,
            sender_seq: stored.sender_seq,
            recipients: stored.recipients,
            delivered: false,
            created: stored.created,
        };
        if !sent.created {
            return Outgoing {
                sent,
                fanout: Fanout::Nothing,
            };
        }
        metrics::counter!(telemetry::MESSAGES_STORED).increment(1);
        // Serialised once; each member's frame adds its own seq. The others' copies never
        // carry the sender's client id; the sender's other connections get it, to match the
        // send to what they have pending.
        let frames = Frames::message(&sent.message);
        let own = Delivery {
            user: sent.message.sender_id,
            exclude: origin,
            event: frames.own_event(sent.sender_seq, valid.client_id()),
        };
        let fanout = match sent.message.receiver_id {
            Some(receiver) => Fanout::Direct {
                receiver,
                deliveries: member_deliveries(&frames, &sent.recipients, Some(own)),
            },
            None => Fanout::Group { frames, own },
        };
        Outgoing { sent, fanout }
    }

    fn is_group(&self) -> bool {
        matches!(self.fanout, Fanout::Group { .. })
    }
}

impl Chat {
    /// [`ChatService::send_message`](super::ChatService::send_message), untimed.
    pub(super) async fn send(
        &self,
        new: NewMessage,
        origin: Option<ConnectionId>,
    ) -> Result<SentMessage> {
        let valid = new.validate()?;
        let stored = self.inner.storage.store_message(&valid).await?;
        let mut out = [Outgoing::new(&valid, stored, origin)];
        self.fan_out(&mut out).await;
        let [out] = out;
        Ok(out.sent)
    }

    /// [`ChatService::send_messages`](super::ChatService::send_messages), untimed: the valid
    /// ones stored as one run, then fanned out in order.
    pub(super) async fn send_run(
        &self,
        news: Vec<NewMessage>,
        origin: Option<ConnectionId>,
    ) -> Vec<Result<SentMessage>> {
        let checked: Vec<Result<ValidMessage>> = news
            .into_iter()
            .map(|new| new.validate().map_err(Error::from))
            .collect();
        let valid: Vec<&ValidMessage> = checked.iter().filter_map(|c| c.as_ref().ok()).collect();
        let mut stored = self.inner.storage.store_messages(&valid).await.into_iter();
        drop(valid);
        // Each answer is either final (an error) or the index of its message in `outgoing`.
        let mut outgoing = Vec::with_capacity(checked.len());
        let answers: Vec<Result<usize>> = checked
            .into_iter()
            .map(|check| {
                let valid = check?;
                match stored.next() {
                    Some(Ok(stored)) => {
                        outgoing.push(Outgoing::new(&valid, stored, origin));
                        Ok(outgoing.len() - 1)
                    }
                    Some(Err(e)) => Err(e),
                    None => Err(Error::earlier_in_run_unstored()),
                }
            })
            .collect();
        self.fan_out(&mut outgoing).await;
        let mut outgoing = outgoing.into_iter();
        answers
            .into_iter()
            .map(|answer| {
                answer.map(|_| {
                    outgoing
                        .next()
                        .expect("one outgoing message per stored answer")
                        .sent
                })
            })
            .collect()
    }

    /// What follows the commit of `run` (a sender's messages, in order): the recent-messages
    /// cache and the fan-out, both best effort (the messages are stored whatever happens
    /// here). Sets each answer's `delivered`.
    async fn fan_out(&self, run: &mut [Outgoing]) {
        let mut rest = run;
        while !rest.is_empty() {
            let directs = rest.iter().take_while(|o| !o.is_group()).count();
            let (direct, after) = std::mem::take(&mut rest).split_at_mut(directs);
            self.fan_out_direct(direct).await;
            if let Some((group, after)) = after.split_first_mut() {
                self.fan_out_group(group).await;
                rest = after;
            }
        }
    }

    /// The direct messages of a run, as one call to the broker.
    async fn fan_out_direct(&self, run: &mut [Outgoing]) {
        let fanouts: Vec<MessageFanout<'_>> = run
            .iter()
            .filter_map(|o| match &o.fanout {
                Fanout::Direct {
                    receiver,
                    deliveries,
                } => Some(MessageFanout {
                    receiver: *receiver,
                    frame: &deliveries[0].event.payload,
                    deliveries,
                }),
                _ => None,
            })
            .collect();
        if fanouts.is_empty() {
            return;
        }
        let outcomes = self
            .inner
            .broker
            .publish_messages(self.inner.cache.as_ref(), &fanouts)
            .await;
        drop(fanouts);
        let sent = run
            .iter_mut()
            .filter(|o| matches!(o.fanout, Fanout::Direct { .. }));
        for (o, (cached, published)) in sent.zip(outcomes) {
            if let Err(e) = cached {
                // Debug, not warn: during an outage every send fails its push, and the Redis
                // broker already warns once that Redis is unreachable (and `/health` names it).
                // The receiver's list is marked stale by the cache itself.
                tracing::debug!(error = %e, "recent-messages cache push failed");
            }
            let reached = published.map(|r| reached_any(&r, o.sent.recipients.len()));
            o.sent.delivered = self.published(reached, o.sent.recipients.len());
        }
    }

    /// A group message: a frame per member through the broker (the recent-messages cache is
    /// per receiver: direct messages only).
    async fn fan_out_group(&self, o: &mut Outgoing) {
        let Fanout::Group { frames, own } = std::mem::replace(&mut o.fanout, Fanout::Nothing)
        else {
            return;
        };
        let reached = self
            .inner
            .broker
            .publish_to_members(&frames, &o.sent.recipients, Some(own))
            .await;
        o.sent.delivered = self.published(reached, o.sent.recipients.len());
    }

    /// Counts a message's fan-out to its `recipients` (and the sender's own copy); whether
    /// any recipient was reached.
    fn published(&self, reached: Result<bool>, recipients: usize) -> bool {
        match reached {
            Ok(reached) => {
                telemetry::published("message", recipients + 1);
                reached
            }
            Err(e) => {
                tracing::warn!(error = %e, "fan-out failed");
                false
            }
        }
    }
}
