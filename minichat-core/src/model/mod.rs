//! The chat model: users, messages, the queries over them, and every validation rule.
//!
//! This module is the one place where input is judged. Transports (the HTTP server, an embedding
//! application) hand raw input to [`ChatService`](crate::ChatService), which calls the `validate`
//! functions here; storage backends only ever see the validated types ([`ValidUser`],
//! [`ValidMessage`], [`HistoryQuery`], [`ValidReadMark`], [`UserSearch`]), whose fields cannot be
//! built any other way. The directory search's rules live in `search.rs`, conversations' and
//! their membership rules in `conversation.rs`, typing and read marks in `signal.rs`.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::ToSchema;

mod conversation;
mod search;
mod signal;
pub use conversation::{
    authorize_add, authorize_removal, authorize_rename, check_member_count, ChangeKind,
    Conversation, ConversationChange, ConversationEvent, ConversationId, ConversationKind,
    ConversationSummary, Denied, Member, NewGroup, NewMembers, Recipient, Refusal, Rename, Role,
    ValidGroup, ValidNewMembers, ValidRename, DEFAULT_MAX_GROUP_MEMBERS, TITLE_MAX_CHARS,
};
pub use search::{fold_char, UserSearch, UserSearchRequest, SEARCH_MAX_CHARS};
pub use signal::{ReadMark, TypingSignal, ValidReadMark, ValidTypingSignal};

/// A user's id, assigned by storage, starting at 1.
pub type UserId = i64;
/// A message's id, assigned by storage, increasing.
pub type MessageId = i64;
/// A user's update sequence number: gapless and increasing per user, starting at 1.
pub type Seq = i64;

/// Username length bounds, in characters (Unicode scalar values, as Python's `len`).
pub const USERNAME_MIN_CHARS: usize = 3;
pub const USERNAME_MAX_CHARS: usize = 50;
pub const DISPLAY_NAME_MAX_CHARS: usize = 100;
pub const CONTENT_MAX_CHARS: usize = 1000;
pub const CLIENT_ID_MAX_CHARS: usize = 64;
/// `GET /users/` and `GET /messages/` accept `limit` in `1..=MAX_PAGE_LIMIT`.
pub const MAX_PAGE_LIMIT: i64 = 1000;
pub const DEFAULT_USERS_LIMIT: i64 = 100;
pub const DEFAULT_HISTORY_LIMIT: i64 = 50;
/// How many messages `recent_messages` returns.
pub const RECENT_LIMIT: usize = 50;

/// The current time, at the precision every backend stores (microseconds).
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// RFC 3339 in UTC with microseconds: `2026-11-24T10:15:30.123456Z`.
pub mod timestamp {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&raw)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }

    /// The same format, for `Option<DateTime<Utc>>` (`null` when absent).
    pub mod option {
        use super::*;
        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }
    }
}

/// A registered user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime, example = "2026-11-24T10:15:30.123456Z")]
    pub created_at: DateTime<Utc>,
}

/// The constant `"message"` tag every message carries in its `type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    #[default]
    Message,
}

/// A stored message. Every message belongs to a conversation; a direct one also names its
/// receiver, a group one has `receiver_id: null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Message {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub sender_username: String,
    pub receiver_id: Option<UserId>,
    pub content: String,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime, example = "2026-11-24T10:15:30.123456Z")]
    pub timestamp: DateTime<Utc>,
    #[serde(rename = "type", default)]
    pub kind: MessageType,
}

/// A message as storage returns it after a send: the message, the update sequence numbers it
/// was given in the sender's stream and in each other member's (`recipients`, by user id: the
/// receiver alone for a direct message), and whether this call stored it (false when
/// `(sender, client_id)` had already been stored, and this is that earlier message; its
/// `recipients` are then empty, as it is not delivered again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub message: Message,
    pub sender_seq: Seq,
    pub recipients: Vec<(UserId, Seq)>,
    pub created: bool,
}

impl StoredMessage {
    /// The seq of `user` (the sender or a recipient), if the message is in their stream.
    pub fn seq_of(&self, user: UserId) -> Option<Seq> {
        if user == self.message.sender_id {
            return Some(self.sender_seq);
        }
        self.recipients
            .iter()
            .find(|(u, _)| *u == user)
            .map(|&(_, s)| s)
    }
}

/// A message of a user's update stream as storage replays it: the message, its seq in that
/// user's stream, and the `client_id` it was sent with, present only when that user is its
/// sender (the receiver never learns the sender's client ids) and the send had one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMessage {
    pub seq: Seq,
    pub message: Message,
    pub client_id: Option<String>,
}

/// One stored event of a user's update stream: a message, or a membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    Message(StreamMessage),
    Conversation { seq: Seq, event: ConversationEvent },
}

impl StreamEvent {
    pub fn seq(&self) -> Seq {
        match self {
            StreamEvent::Message(m) => m.seq,
            StreamEvent::Conversation { seq, .. } => *seq,
        }
    }
}

/// How far two users have read each other's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, ToSchema)]
pub struct ReadState {
    /// The newest message from the peer that the user has read (`null`: none).
    pub read_up_to: Option<MessageId>,
    /// The newest of the user's messages that the peer has read (`null`: none).
    pub peer_read_up_to: Option<MessageId>,
}

/// Input of "create a user", as a client sends it.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct NewUser {
    pub username: String,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// Input of "send a message", as a client sends it: to a user (their direct conversation) or to
/// a conversation, exactly one of the two.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct NewMessage {
    pub sender_id: UserId,
    #[serde(default)]
    pub receiver_id: Option<UserId>,
    #[serde(default)]
    pub conversation_id: Option<ConversationId>,
    pub content: String,
    /// Optional idempotency key: a retry with the same `(sender_id, client_id)` returns the
    /// message stored the first time instead of storing it again.
    #[serde(default)]
    pub client_id: Option<String>,
}

/// One field that failed validation, and why. `field` is the input's field name
/// (`username`, `content`, `limit`, ...); `message` is a sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

/// Every field of one input that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub errors: Vec<FieldError>,
}

impl ValidationError {
    pub fn single(field: &'static str, message: impl Into<String>) -> Self {
        ValidationError {
            errors: vec![FieldError {
                field,
                message: message.into(),
            }],
        }
    }

    fn push(&mut self, field: &'static str, message: impl Into<String>) {
        self.errors.push(FieldError {
            field,
            message: message.into(),
        });
    }

    fn into_result<T>(self, ok: T) -> Result<T, ValidationError> {
        if self.errors.is_empty() {
            Ok(ok)
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.field, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationError {}

/// A user that passed validation; only [`NewUser::validate`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidUser {
    username: String,
    display_name: String,
}

impl ValidUser {
    pub fn username(&self) -> &str {
        &self.username
    }
    pub fn display_name(&self) -> &str {
        &self.display_name
    }
}

/// Python's `str.isalnum` for one character: a letter or a numeric character.
fn is_alnum(c: char) -> bool {
    c.is_alphanumeric()
}

impl NewUser {
    /// Usernames are 3–50 characters, every one a Unicode letter or digit; display names are
    /// at most 100 characters and default to the username when absent or blank.
    pub fn validate(self) -> Result<ValidUser, ValidationError> {
        let mut errs = ValidationError { errors: Vec::new() };
        let len = self.username.chars().count();
        if !(USERNAME_MIN_CHARS..=USERNAME_MAX_CHARS).contains(&len) {
            errs.push(
                "username",
                format!(
                    "Username must be between {USERNAME_MIN_CHARS} and {USERNAME_MAX_CHARS} characters"
                ),
            );
        } else if !self.username.chars().all(is_alnum) {
            errs.push("username", "Username must contain only letters and digits");
        }
        let display_name = match self.display_name {
            Some(d) if !d.trim().is_empty() => d,
            _ => self.username.clone(),
        };
        if display_name.contains('\0') {
            errs.push("display_name", "Display name cannot contain NUL characters");
        } else if display_name.chars().count() > DISPLAY_NAME_MAX_CHARS {
            errs.push(
                "display_name",
                format!("Display name must be at most {DISPLAY_NAME_MAX_CHARS} characters"),
            );
        }
        errs.into_result(ValidUser {
            username: self.username,
            display_name,
        })
    }
}

impl NewMessage {
    /// A message from `sender` to `receiver` (their direct conversation), without a client id.
    pub fn to_user(sender: UserId, receiver: UserId, content: impl Into<String>) -> NewMessage {
        NewMessage {
            sender_id: sender,
            receiver_id: Some(receiver),
            content: content.into(),
            ..NewMessage::default()
        }
    }

    /// A message from `sender` to `conversation`, without a client id.
    pub fn to_conversation(
        sender: UserId,
        conversation: ConversationId,
        content: impl Into<String>,
    ) -> NewMessage {
        NewMessage {
            sender_id: sender,
            conversation_id: Some(conversation),
            content: content.into(),
            ..NewMessage::default()
        }
    }

    /// The same message with an idempotency key.
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> NewMessage {
        self.client_id = Some(client_id.into());
        self
    }
}

/// A message that passed validation; only [`NewMessage::validate`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidMessage {
    sender_id: UserId,
    to: Recipient,
    content: String,
    client_id: Option<String>,
}

impl ValidMessage {
    pub fn sender_id(&self) -> UserId {
        self.sender_id
    }
    pub fn to(&self) -> Recipient {
        self.to
    }
    /// The receiver, for a message sent by `receiver_id`.
    pub fn receiver_id(&self) -> Option<UserId> {
        match self.to {
            Recipient::User(u) => Some(u),
            Recipient::Conversation(_) => None,
        }
    }
    /// Whether `earlier`, stored with this message's `(sender, client_id)`, is the same send:
    /// same content, to the same place.
    pub fn same_as(&self, earlier: &Message) -> bool {
        let same_place = match self.to {
            Recipient::User(u) => earlier.receiver_id == Some(u),
            Recipient::Conversation(c) => earlier.conversation_id == c,
        };
        same_place && earlier.content == self.content
    }
    /// The content, stripped of surrounding white space.
    pub fn content(&self) -> &str {
        &self.content
    }
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }
}

impl NewMessage {
    /// Exactly one of `receiver_id` and `conversation_id`; content is stripped of surrounding
    /// white space, then must be 1–1000 characters; a user cannot message themself; a
    /// `client_id`, when given, is 1–64 characters.
    pub fn validate(self) -> Result<ValidMessage, ValidationError> {
        let mut errs = ValidationError { errors: Vec::new() };
        let to = match Recipient::from_fields(self.receiver_id, self.conversation_id, "receiver_id")
        {
            Ok(to) => Some(to),
            Err(e) => {
                errs.errors.extend(e.errors);
                None
            }
        };
        let content = self.content.trim();
        let len = content.chars().count();
        if len == 0 {
            errs.push("content", "Message content cannot be empty");
        } else if content.contains('\0') {
            // PostgreSQL text cannot hold U+0000; refusing it everywhere keeps backends alike.
            errs.push("content", "Message content cannot contain NUL characters");
        } else if len > CONTENT_MAX_CHARS {
            errs.push(
                "content",
                format!("Message content cannot exceed {CONTENT_MAX_CHARS} characters"),
            );
        }
        if self.receiver_id == Some(self.sender_id) {
            errs.push("receiver_id", "Cannot send message to yourself");
        }
        if let Some(id) = &self.client_id {
            let n = id.chars().count();
            if n == 0 || n > CLIENT_ID_MAX_CHARS || id.contains('\0') {
                errs.push(
                    "client_id",
                    format!(
                        "client_id must be 1 to {CLIENT_ID_MAX_CHARS} characters, none of them NUL"
                    ),
                );
            }
        }
        let content = if content.len() == self.content.len() {
            self.content
        } else {
            content.to_owned()
        };
        let Some(to) = to else { return Err(errs) };
        errs.into_result(ValidMessage {
            sender_id: self.sender_id,
            to,
            content,
            client_id: self.client_id,
        })
    }
}

/// An offset page: `skip` rows, then at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    skip: i64,
    limit: i64,
}

impl Page {
    /// `skip` must be ≥ 0 and `limit` in `1..=1000`.
    pub fn new(skip: i64, limit: i64) -> Result<Page, ValidationError> {
        let mut errs = ValidationError { errors: Vec::new() };
        if skip < 0 {
            errs.push("skip", "skip must be greater than or equal to 0");
        }
        if !(1..=MAX_PAGE_LIMIT).contains(&limit) {
            errs.push(
                "limit",
                format!("limit must be between 1 and {MAX_PAGE_LIMIT}"),
            );
        }
        errs.into_result(Page { skip, limit })
    }
    pub fn skip(&self) -> i64 {
        self.skip
    }
    pub fn limit(&self) -> i64 {
        self.limit
    }
}

/// Raw input of a history request, as a client sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRequest {
    pub user_id: UserId,
    pub chat_with: Option<UserId>,
    /// Only this conversation's messages (the user must be a member).
    pub conversation_id: Option<ConversationId>,
    pub skip: i64,
    pub limit: i64,
    /// Cursor for deep history: only messages with an id below this one.
    pub before_id: Option<MessageId>,
}

impl HistoryRequest {
    pub fn new(user_id: UserId) -> Self {
        HistoryRequest {
            user_id,
            chat_with: None,
            conversation_id: None,
            skip: 0,
            limit: DEFAULT_HISTORY_LIMIT,
            before_id: None,
        }
    }

    /// `chat_with` and `conversation_id` exclude each other; the page as [`Page::new`].
    pub fn validate(self) -> Result<HistoryQuery, ValidationError> {
        if self.chat_with.is_some() && self.conversation_id.is_some() {
            return Err(ValidationError::single(
                "conversation_id",
                "Give at most one of chat_with and conversation_id",
            ));
        }
        let page = Page::new(self.skip, self.limit)?;
        Ok(HistoryQuery {
            user_id: self.user_id,
            chat_with: self.chat_with,
            conversation_id: self.conversation_id,
            page,
            before_id: self.before_id,
        })
    }
}

/// A validated history query, newest first, below `before_id` when set, then `page`: the
/// messages of `conversation_id` when set (its member `user_id` asks); otherwise the direct
/// messages `user_id` sent or received (only those exchanged with `chat_with` when set), as
/// Part 1's history has always been (group messages are read by conversation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    user_id: UserId,
    chat_with: Option<UserId>,
    conversation_id: Option<ConversationId>,
    page: Page,
    before_id: Option<MessageId>,
}

impl HistoryQuery {
    pub fn user_id(&self) -> UserId {
        self.user_id
    }
    pub fn chat_with(&self) -> Option<UserId> {
        self.chat_with
    }
    pub fn conversation_id(&self) -> Option<ConversationId> {
        self.conversation_id
    }
    pub fn page(&self) -> Page {
        self.page
    }
    pub fn before_id(&self) -> Option<MessageId> {
        self.before_id
    }
    /// Whether `m` belongs to this query's messages (ignoring paging; membership of
    /// `conversation_id` is storage's to check).
    pub fn matches(&self, m: &Message) -> bool {
        let cursor_ok = self.before_id.is_none_or(|b| m.id < b);
        if let Some(c) = self.conversation_id {
            return m.conversation_id == c && cursor_ok;
        }
        let Some(receiver) = m.receiver_id else {
            return false; // a group message
        };
        let involved = m.sender_id == self.user_id || receiver == self.user_id;
        let peer_ok = match self.chat_with {
            None => true,
            Some(peer) => m.sender_id == peer || receiver == peer,
        };
        involved && peer_ok && cursor_ok
    }
}

#[cfg(test)]
mod tests;
