//! The signals a member sends besides messages: typing and read marks, as a client sends them
//! and as validated. Where they go is a [`Recipient`] (a peer, or a conversation).

use super::{MessageId, Recipient, UserId, ValidationError};

/// Input of "tell the others in `to` that `sender_id` is typing", as a client sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypingSignal {
    pub sender_id: UserId,
    pub to: Recipient,
}

/// A typing signal that passed validation; only [`TypingSignal::validate`] makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidTypingSignal {
    sender_id: UserId,
    to: Recipient,
}

impl ValidTypingSignal {
    pub fn sender_id(&self) -> UserId {
        self.sender_id
    }
    pub fn to(&self) -> Recipient {
        self.to
    }
}

impl TypingSignal {
    /// A user cannot signal typing to themself.
    pub fn validate(self) -> Result<ValidTypingSignal, ValidationError> {
        if self.to == Recipient::User(self.sender_id) {
            return Err(ValidationError::single(
                "receiver_id",
                "Cannot send typing to yourself",
            ));
        }
        Ok(ValidTypingSignal {
            sender_id: self.sender_id,
            to: self.to,
        })
    }
}

/// Input of "`reader_id` has read the messages of `to` up to `up_to`", as a client sends it
/// (`to` a user: the direct conversation with that peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadMark {
    pub reader_id: UserId,
    pub to: Recipient,
    pub up_to: MessageId,
}

/// A read mark that passed validation; only [`ReadMark::validate`] makes one. (Whether `up_to`
/// is a message of that conversation is for storage to say.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidReadMark {
    reader_id: UserId,
    to: Recipient,
    up_to: MessageId,
}

impl ValidReadMark {
    pub fn reader_id(&self) -> UserId {
        self.reader_id
    }
    pub fn to(&self) -> Recipient {
        self.to
    }
    pub fn up_to(&self) -> MessageId {
        self.up_to
    }
}

impl ReadMark {
    /// A user cannot mark their own messages read, and `up_to` must be a message id (≥ 1).
    /// Only the first of these that fails is reported.
    pub fn validate(self) -> Result<ValidReadMark, ValidationError> {
        if self.to == Recipient::User(self.reader_id) {
            return Err(ValidationError::single(
                "peer_id",
                "Cannot mark your own messages read",
            ));
        }
        if self.up_to < 1 {
            return Err(ValidationError::single(
                "up_to",
                "up_to must be a message id",
            ));
        }
        Ok(ValidReadMark {
            reader_id: self.reader_id,
            to: self.to,
            up_to: self.up_to,
        })
    }
}
