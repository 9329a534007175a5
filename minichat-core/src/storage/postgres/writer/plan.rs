//! The planning of one batch: what each send turns into, once the batch's rows are locked.
//!
//! This file exists so that the per-send rules of `store_message` (the same as
//! `MemoryStorage::store_message`, in the same order) are plain Rust over what the transaction
//! read, apart from the statements that read and write it (`batch.rs`). Sends are planned in
//! queue order, as sequential sends would go: each one that stores takes the next seq of its
//! sender and of every other member from the locked `last_seq`s, so a later send of the batch
//! sees the seqs an earlier one took, and the second send of a `(sender, client_id)` in the batch
//! is the retry of the first.

use crate::error::{Error, Result};
use crate::model::{
    ConversationId, Message, MessageType, Recipient, Seq, StoredMessage, UserId, ValidMessage,
};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// A direct conversation's pair: lower user id first.
pub(super) type Pair = (UserId, UserId);

pub(super) fn pair(a: UserId, b: UserId) -> Pair {
    (a.min(b), a.max(b))
}

/// A conversation a batch sends to by id, as read under its lock.
pub(super) enum Shape {
    Direct(Pair),
    /// Its members, sorted by user id.
    Group(Vec<UserId>),
}

impl Shape {
    pub(super) fn has(&self, user: UserId) -> bool {
        match self {
            Shape::Direct((low, high)) => user == *low || user == *high,
            Shape::Group(members) => members.binary_search(&user).is_ok(),
        }
    }

    /// Every member, sorted by user id.
    pub(super) fn members(&self) -> Vec<UserId> {
        match self {
            Shape::Direct((low, high)) => vec![*low, *high],
            Shape::Group(members) => members.clone(),
        }
    }
}

/// What the transaction read before planning.
pub(super) struct Read<'a> {
    /// The locked users: id -> (username, last seq given).
    pub users: HashMap<UserId, (String, Seq)>,
    /// The locked conversations the batch sends to by id.
    pub conversations: &'a HashMap<ConversationId, Shape>,
    /// Earlier messages of the batch's `(sender, client_id)`s.
    pub earlier: &'a HashMap<(UserId, String), StoredMessage>,
}

/// One message the batch inserts.
pub(super) struct Row {
    /// Its send's index in the batch.
    pub send: usize,
    pub sender: UserId,
    /// The receiver of a direct message; `None` for a group message.
    pub receiver: Option<UserId>,
    /// Its conversation; 0 until the batch's new direct conversations are made (`pair` is set).
    pub conversation: ConversationId,
    /// The pair whose direct conversation this row goes to, when its id is not known yet.
    pub pair: Option<Pair>,
    pub sender_seq: Seq,
    /// Every other member with their seq, by user id (the receiver alone for a direct message).
    pub recipients: Vec<(UserId, Seq)>,
}

impl Row {
    /// The receiver's seq of a direct message.
    pub(super) fn receiver_seq(&self) -> Option<Seq> {
        self.receiver
            .and_then(|r| self.recipients.iter().find(|(u, _)| *u == r))
            .map(|&(_, seq)| seq)
    }
}

/// What a send of the batch turns into.
pub(super) enum Outcome {
    /// Answered already (unknown user, not a member, an earlier message, a conflict).
    Done(Result<StoredMessage>),
    /// The `i`th row of the insert.
    Insert(usize),
    /// The same `(sender, client_id)` as the `i`th row: its retry if
    /// [`ValidMessage::same_as`] the row's message (known only once its conversation is), else a
    /// conflict.
    Repeat(usize),
}

/// The plan of a batch.
pub(super) struct Plan {
    /// One per send, in the batch's order.
    pub outcomes: Vec<Outcome>,
    /// The rows to insert, in seq order.
    pub rows: Vec<Row>,
    /// The locked users with the last seq the batch gave each, and their names.
    pub users: HashMap<UserId, (String, Seq)>,
    /// The users whose seq the batch moved.
    pub moved: Vec<UserId>,
}

/// Plans `messages` over what was read; `known` is the direct conversation of a pair, when the
/// writer already knows it.
pub(super) fn plan(
    messages: &[&ValidMessage],
    read: Read<'_>,
    known: impl Fn(Pair) -> Option<ConversationId>,
) -> Plan {
    let Read {
        mut users,
        conversations,
        earlier,
    } = read;
    let mut outcomes = Vec::with_capacity(messages.len());
    let mut rows: Vec<Row> = Vec::new();
    let mut in_batch: HashMap<(UserId, &str), usize> = HashMap::new();
    let mut moved = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let sender = m.sender_id();
        if !users.contains_key(&sender) {
            outcomes.push(Outcome::Done(Err(Error::SenderNotFound)));
            continue;
        }
        if let Recipient::User(receiver) = m.to() {
            if !users.contains_key(&receiver) {
                outcomes.push(Outcome::Done(Err(Error::ReceiverNotFound)));
                continue;
            }
        }
        if let Some(client_id) = m.client_id() {
            if let Some(stored) = earlier.get(&(sender, client_id.to_owned())) {
                outcomes.push(Outcome::Done(if m.same_as(&stored.message) {
                    Ok(stored.clone())
                } else {
                    Err(Error::ClientIdConflict)
                }));
                continue;
            }
            if let Some(&row) = in_batch.get(&(sender, client_id)) {
                outcomes.push(Outcome::Repeat(row));
                continue;
            }
        }
        // Where it goes: (receiver, conversation or 0, pair to make, every other member).
        let (receiver, conversation, pending, others) = match m.to() {
            Recipient::User(receiver) => {
                let p = pair(sender, receiver);
                let id = known(p);
                (
                    Some(receiver),
                    id.unwrap_or(0),
                    id.is_none().then_some(p),
                    vec![receiver],
                )
            }
            Recipient::Conversation(id) => match conversations.get(&id) {
                Some(shape) if shape.has(sender) => {
                    let others: Vec<UserId> = shape
                        .members()
                        .into_iter()
                        .filter(|&u| u != sender)
                        .collect();
                    let receiver = match shape {
                        Shape::Direct(_) => others.first().copied(),
                        Shape::Group(_) => None,
                    };
                    (receiver, id, None, others)
                }
                _ => {
                    outcomes.push(Outcome::Done(Err(Error::ConversationNotFound)));
                    continue;
                }
            },
        };
        // Every user here is locked (read with the conversation, or checked above).
        let mut next = |user: UserId| -> Seq {
            match users.get_mut(&user) {
                Some(u) => {
                    u.1 += 1;
                    moved.push(user);
                    u.1
                }
                None => 0,
            }
        };
        let sender_seq = next(sender);
        let recipients = others.into_iter().map(|u| (u, next(u))).collect();
        if let Some(client_id) = m.client_id() {
            in_batch.insert((sender, client_id), rows.len());
        }
        outcomes.push(Outcome::Insert(rows.len()));
        rows.push(Row {
            send: i,
            sender,
            receiver,
            conversation,
            pair: pending,
            sender_seq,
            recipients,
        });
    }
    moved.sort_unstable();
    moved.dedup();
    Plan {
        outcomes,
        rows,
        users,
        moved,
    }
}

impl Plan {
    /// Row `row`'s message, once its id and conversation are known.
    pub(super) fn message(
        &self,
        messages: &[&ValidMessage],
        row: usize,
        id: i64,
        timestamp: DateTime<Utc>,
    ) -> Message {
        let r = &self.rows[row];
        Message {
            id,
            conversation_id: r.conversation,
            sender_id: r.sender,
            sender_username: self.users[&r.sender].0.clone(),
            receiver_id: r.receiver,
            content: messages[r.send].content().to_owned(),
            timestamp,
            kind: MessageType::Message,
        }
    }

    /// Each send's answer, once every row has its id (`ids[row]`) and conversation.
    pub(super) fn answers(
        self,
        messages: &[&ValidMessage],
        ids: &[i64],
        timestamp: DateTime<Utc>,
    ) -> Vec<Result<StoredMessage>> {
        let made: Vec<Message> = (0..self.rows.len())
            .map(|row| self.message(messages, row, ids[row], timestamp))
            .collect();
        let mut answers = Vec::with_capacity(self.outcomes.len());
        for (send, outcome) in self.outcomes.into_iter().enumerate() {
            answers.push(match outcome {
                Outcome::Done(answer) => answer,
                Outcome::Insert(row) => Ok(StoredMessage {
                    message: made[row].clone(),
                    sender_seq: self.rows[row].sender_seq,
                    recipients: self.rows[row].recipients.clone(),
                    created: true,
                }),
                Outcome::Repeat(row) if messages[send].same_as(&made[row]) => Ok(StoredMessage {
                    message: made[row].clone(),
                    sender_seq: self.rows[row].sender_seq,
                    recipients: Vec::new(),
                    created: false,
                }),
                Outcome::Repeat(_) => Err(Error::ClientIdConflict),
            });
        }
        answers
    }
}
