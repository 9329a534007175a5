//! In-memory storage: the zero-set-up default. Everything is lost when the process ends.
//!
//! One lock guards the whole state, so every operation is atomic, as a database transaction
//! would be. Per-user and per-conversation indexes keep history, replay and the inbox
//! proportional to what they return. The rules of who may do what come from the model; this
//! file only keeps the state (conversations' membership rules live in `model/conversation.rs`).

mod chunked;
mod conversations;

use super::{ReadReceipt, Storage};
use crate::error::{Error, Result};
use crate::model::{
    authorize_add, authorize_removal, authorize_rename, now, ChangeKind, Conversation,
    ConversationChange, ConversationEvent, ConversationId, ConversationKind, ConversationSummary,
    HistoryQuery, Member, Message, MessageId, MessageType, Page, ReadState, Recipient, Refusal,
    Role, Seq, StoredMessage, StreamEvent, StreamMessage, User, UserId, UserSearch, ValidGroup,
    ValidMessage, ValidNewMembers, ValidReadMark, ValidRename, ValidUser,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use chunked::Chunked;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// One event of a user's stream: the `i`th message or the `i`th membership event.
#[derive(Debug, Clone, Copy)]
enum Entry {
    Message(usize),
    Event(usize),
}

/// A conversation and what storage keeps beside it.
struct ConversationState {
    /// Members sorted by user id.
    conversation: Conversation,
    /// Member → the newest message of this conversation they have read.
    read: HashMap<UserId, MessageId>,
    /// Indexes of its messages, oldest first.
    messages: Vec<usize>,
}

#[derive(Default)]
struct State {
    /// `users[id - 1]`.
    users: Vec<User>,
    by_username: HashMap<String, UserId>,
    /// `messages[id - 1]`. Chunked, as are the two lists beside it, so that growing never
    /// copies every message under the lock (`memory/chunked.rs`).
    messages: Chunked<Message>,
    /// `sender_seq[i]`: `messages[i]`'s seq in its sender's stream.
    sender_seq: Chunked<Seq>,
    /// `client_id_of[i]`: the client id `messages[i]` was sent with, if any (replayed to its
    /// sender only).
    client_id_of: Chunked<Option<String>>,
    /// Per user, every event of their stream, oldest first: position `k` holds seq `k + 1`.
    stream: HashMap<UserId, Vec<Entry>>,
    /// Per sender, `client_id` → message index. One map per sender rather than one for all:
    /// a map grows by rehashing everything it holds under the state's lock, which for one map
    /// of every message stalled every operation for ~400 ms at ~920,000 messages
    /// (BENCHMARKS.md, "Run of stop 28"); a sender's own map is as large as their own sends.
    /// It also looks up by `&str`, with no key to allocate.
    client_ids: HashMap<UserId, HashMap<String, usize>>,
    /// `conversations[id - 1]`.
    conversations: Vec<ConversationState>,
    /// `(lower id, higher id)` → their direct conversation.
    direct: HashMap<(UserId, UserId), ConversationId>,
    /// Per user, the conversations they are a member of.
    memberships: HashMap<UserId, Vec<ConversationId>>,
    /// Every membership event, in the order they happened.
    events: Vec<ConversationEvent>,
    last_seen: HashMap<UserId, DateTime<Utc>>,
}

#[derive(Default)]
pub struct MemoryStorage {
    state: Mutex<State>,
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn index(id: i64, len: usize) -> Option<usize> {
    usize::try_from(id)
        .ok()
        .filter(|&i| i >= 1 && i <= len)
        .map(|i| i - 1)
}

/// A rule's refusal as the crate's error.
fn refused(refusal: Refusal) -> Error {
    match refusal {
        Refusal::Denied(why) => Error::Forbidden(why),
        Refusal::Invalid(e) => Error::Invalid(e),
    }
}

impl State {
    fn user(&self, id: UserId) -> Option<&User> {
        index(id, self.users.len()).map(|i| &self.users[i])
    }

    /// Appends `entry` to `user`'s stream; returns its seq.
    fn append(&mut self, user: UserId, entry: Entry) -> Seq {
        let stream = self.stream.entry(user).or_default();
        stream.push(entry);
        stream.len() as Seq
    }

    /// The earlier send of `message`'s `(sender, client_id)`, if any, as its answer.
    fn earlier_send(&self, message: &ValidMessage) -> Option<Result<StoredMessage>> {
        let client_id = message.client_id()?;
        let &idx = self.client_ids.get(&message.sender_id())?.get(client_id)?;
        let earlier = &self.messages[idx];
        Some(if message.same_as(earlier) {
            Ok(StoredMessage {
                message: earlier.clone(),
                sender_seq: self.sender_seq[idx],
                recipients: Vec::new(),
                created: false,
            })
        } else {
            Err(Error::ClientIdConflict)
        })
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn create_user(&self, user: &ValidUser) -> Result<User> {
        let mut state = self.state();
        if state.by_username.contains_key(user.username()) {
            return Err(Error::UsernameTaken);
        }
        let created = User {
            id: state.users.len() as UserId + 1,
            username: user.username().to_owned(),
            display_name: user.display_name().to_owned(),
            created_at: now(),
        };
        state
            .by_username
            .insert(created.username.clone(), created.id);
        state.users.push(created.clone());
        Ok(created)
    }

    async fn list_users(&self, page: Page) -> Result<Vec<User>> {
        let state = self.state();
        Ok(state
            .users
            .iter()
            .skip(page.skip() as usize)
            .take(page.limit() as usize)
            .cloned()
            .collect())
    }

    /// A scan of every user (memory is the small, zero-set-up backend; PostgreSQL has indexes).
    async fn search_users(&self, search: &UserSearch) -> Result<Vec<User>> {
        let state = self.state();
        Ok(state
            .users
            .iter()
            .filter(|u| search.matches(u))
            .skip(search.page().skip() as usize)
            .take(search.page().limit() as usize)
            .cloned()
            .collect())
    }

    async fn get_user(&self, id: UserId) -> Result<Option<User>> {
        Ok(self.state().user(id).cloned())
    }

    async fn store_message(&self, message: &ValidMessage) -> Result<StoredMessage> {
        let mut state = self.state();
        let sender_id = message.sender_id();
        let sender = state
            .user(sender_id)
            .ok_or(Error::SenderNotFound)?
            .username
            .clone();
        if let Recipient::User(receiver) = message.to() {
            if state.user(receiver).is_none() {
                return Err(Error::ReceiverNotFound);
            }
        }
        if let Some(answer) = state.earlier_send(message) {
            return answer;
        }
        let conversation_id = match message.to() {
            Recipient::User(receiver) => state.direct_conversation(sender_id, receiver),
            Recipient::Conversation(id) => state.member_of(id, sender_id)?.conversation.id,
        };
        let idx = state.messages.len();
        let conversation = &state.conversation_mut(conversation_id).conversation;
        let others: Vec<UserId> = conversation
            .member_ids()
            .filter(|&u| u != sender_id)
            .collect();
        // A direct message has a receiver, also when sent by the conversation's id.
        let receiver_id = (conversation.kind == ConversationKind::Direct)
            .then(|| others.first().copied())
            .flatten();
        state.messages.push(Message {
            id: idx as MessageId + 1,
            conversation_id,
            sender_id,
            sender_username: sender,
            receiver_id,
            content: message.content().to_owned(),
            timestamp: now(),
            kind: MessageType::Message,
        });
        state
            .client_id_of
            .push(message.client_id().map(str::to_owned));
        let sender_seq = state.append(sender_id, Entry::Message(idx));
        state.sender_seq.push(sender_seq);
        let recipients = others
            .into_iter()
            .map(|user| (user, state.append(user, Entry::Message(idx))))
            .collect();
        state.conversation_mut(conversation_id).messages.push(idx);
        if let Some(client_id) = message.client_id() {
            state
                .client_ids
                .entry(sender_id)
                .or_default()
                .insert(client_id.to_owned(), idx);
        }
        Ok(StoredMessage {
            message: state.messages[idx].clone(),
            sender_seq,
            recipients,
            created: true,
        })
    }

    async fn history(&self, query: &HistoryQuery) -> Result<Vec<Message>> {
        let state = self.state();
        let page = query.page();
        let indexes: &[usize] = match query.conversation_id() {
            Some(id) => &state.member_of(id, query.user_id())?.messages,
            None => {
                let Some(stream) = state.stream.get(&query.user_id()) else {
                    return Ok(Vec::new());
                };
                return Ok(stream
                    .iter()
                    .rev()
                    .filter_map(|e| match *e {
                        Entry::Message(i) => Some(&state.messages[i]),
                        Entry::Event(_) => None,
                    })
                    .filter(|m| query.matches(m))
                    .skip(page.skip() as usize)
                    .take(page.limit() as usize)
                    .cloned()
                    .collect());
            }
        };
        Ok(indexes
            .iter()
            .rev()
            .map(|&i| &state.messages[i])
            .filter(|m| query.matches(m))
            .skip(page.skip() as usize)
            .take(page.limit() as usize)
            .cloned()
            .collect())
    }

    async fn recent_received(&self, user: UserId, limit: usize) -> Result<Vec<Message>> {
        let state = self.state();
        let Some(stream) = state.stream.get(&user) else {
            return Ok(Vec::new());
        };
        Ok(stream
            .iter()
            .rev()
            .filter_map(|e| match *e {
                Entry::Message(i) => Some(&state.messages[i]),
                Entry::Event(_) => None,
            })
            .filter(|m| m.receiver_id == Some(user))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn events_since(
        &self,
        user: UserId,
        since: Seq,
        limit: usize,
    ) -> Result<Vec<StreamEvent>> {
        let state = self.state();
        let Some(stream) = state.stream.get(&user) else {
            return Ok(Vec::new());
        };
        let start = usize::try_from(since.max(0))
            .unwrap_or(usize::MAX)
            .min(stream.len());
        Ok(stream[start..]
            .iter()
            .take(limit)
            .enumerate()
            .map(|(k, entry)| {
                let seq = (start + k) as Seq + 1;
                match *entry {
                    Entry::Message(i) => {
                        let message = state.messages[i].clone();
                        // Only the sender learns the client id it gave.
                        let client_id = (message.sender_id == user)
                            .then(|| state.client_id_of[i].clone())
                            .flatten();
                        StreamEvent::Message(StreamMessage {
                            seq,
                            message,
                            client_id,
                        })
                    }
                    Entry::Event(i) => StreamEvent::Conversation {
                        seq,
                        event: state.events[i].clone(),
                    },
                }
            })
            .collect())
    }

    async fn current_seq(&self, user: UserId) -> Result<Seq> {
        Ok(self.state().stream.get(&user).map_or(0, |s| s.len() as Seq))
    }

    async fn mark_read(&self, mark: &ValidReadMark) -> Result<ReadReceipt> {
        let (reader, up_to) = (mark.reader_id(), mark.up_to());
        let mut state = self.state();
        let id = match mark.to() {
            Recipient::Conversation(id) => id,
            Recipient::User(peer) => *state
                .direct
                .get(&(reader.min(peer), reader.max(peer)))
                .ok_or(Error::ConversationNotFound)?,
        };
        let conversation = state.member_of(id, reader)?;
        let readable = index(up_to, state.messages.len())
            .map(|i| &state.messages[i])
            .is_some_and(|m| m.conversation_id == id && m.sender_id != reader);
        if !readable {
            return Err(Error::MessageNotFound);
        }
        let others = conversation
            .conversation
            .member_ids()
            .filter(|&u| u != reader)
            .collect();
        let read = &mut state.conversation_mut(id).read;
        let stored = read.entry(reader).or_insert(up_to);
        *stored = (*stored).max(up_to);
        Ok(ReadReceipt {
            conversation_id: id,
            up_to: *stored,
            others,
        })
    }

    async fn read_marks(&self, user: UserId, peer: UserId) -> Result<ReadState> {
        let state = self.state();
        let Some(&id) = state.direct.get(&(user.min(peer), user.max(peer))) else {
            return Ok(ReadState::default());
        };
        let read = &state.conversations[(id - 1) as usize].read;
        Ok(ReadState {
            read_up_to: read.get(&user).copied(),
            peer_read_up_to: read.get(&peer).copied(),
        })
    }

    async fn create_group(&self, group: &ValidGroup) -> Result<ConversationChange> {
        let mut state = self.state();
        if group.members().iter().any(|&u| state.user(u).is_none()) {
            return Err(Error::UserNotFound);
        }
        let at = now();
        let id = state.conversations.len() as ConversationId + 1;
        let members = group
            .members()
            .iter()
            .map(|&user_id| Member {
                user_id,
                role: if user_id == group.creator_id() {
                    Role::Owner
                } else {
                    Role::Member
                },
                joined_at: at,
            })
            .collect();
        let conversation = Conversation {
            id,
            kind: ConversationKind::Group,
            title: Some(group.title().to_owned()),
            created_by: group.creator_id(),
            created_at: at,
            members,
        };
        state.conversations.push(ConversationState {
            conversation: conversation.clone(),
            read: HashMap::new(),
            messages: Vec::new(),
        });
        for &user in group.members() {
            state.memberships.entry(user).or_default().push(id);
        }
        Ok(state.record(ConversationEvent {
            event: ChangeKind::Created,
            conversation,
            user_ids: group.members().to_vec(),
            by: group.creator_id(),
        }))
    }

    async fn conversation(&self, id: ConversationId, user: UserId) -> Result<Conversation> {
        Ok(self.state().member_of(id, user)?.conversation.clone())
    }

    async fn conversations(&self, user: UserId, page: Page) -> Result<Vec<ConversationSummary>> {
        let state = self.state();
        let Some(ids) = state.memberships.get(&user) else {
            return Ok(Vec::new());
        };
        let mut summaries: Vec<ConversationSummary> = ids
            .iter()
            .map(|&id| state.summary(&state.conversations[(id - 1) as usize], user))
            .collect();
        summaries.sort_by_key(|s| {
            let active = s
                .last_message
                .as_ref()
                .map_or(s.created_at, |m| m.timestamp);
            std::cmp::Reverse((active, s.id))
        });
        Ok(summaries
            .into_iter()
            .skip(page.skip() as usize)
            .take(page.limit() as usize)
            .collect())
    }

    async fn rename_conversation(
        &self,
        id: ConversationId,
        rename: &ValidRename,
    ) -> Result<ConversationChange> {
        let mut state = self.state();
        let by = rename.user_id();
        let c = &state.member_of(id, by)?.conversation;
        let actor = c.member(by).expect("a member");
        authorize_rename(c, actor).map_err(refused)?;
        let conversation = &mut state.conversation_mut(id).conversation;
        conversation.title = Some(rename.title().to_owned());
        let conversation = conversation.clone();
        Ok(state.record(ConversationEvent {
            event: ChangeKind::Renamed,
            conversation,
            user_ids: Vec::new(),
            by,
        }))
    }

    async fn add_members(
        &self,
        id: ConversationId,
        add: &ValidNewMembers,
        max_members: usize,
    ) -> Result<ConversationChange> {
        let mut state = self.state();
        let by = add.user_id();
        let c = &state.member_of(id, by)?.conversation;
        let new: Vec<UserId> = add
            .member_ids()
            .iter()
            .copied()
            .filter(|&u| c.member(u).is_none())
            .collect();
        let actor = c.member(by).expect("a member");
        authorize_add(c, actor, new.len(), max_members).map_err(refused)?;
        if new.iter().any(|&u| state.user(u).is_none()) {
            return Err(Error::UserNotFound);
        }
        let at = now();
        let conversation = &mut state.conversation_mut(id).conversation;
        conversation.admit(&new, at);
        let conversation = conversation.clone();
        for &user in &new {
            state.memberships.entry(user).or_default().push(id);
        }
        Ok(state.record(ConversationEvent {
            event: ChangeKind::MemberAdded,
            conversation,
            user_ids: new,
            by,
        }))
    }

    async fn remove_member(
        &self,
        id: ConversationId,
        actor: UserId,
        member: UserId,
    ) -> Result<ConversationChange> {
        let mut state = self.state();
        let c = &state.member_of(id, actor)?.conversation;
        let target = c.member(member).ok_or(Error::UserNotFound)?;
        authorize_removal(c, c.member(actor).expect("a member"), target).map_err(refused)?;
        let kept = &mut state.conversation_mut(id);
        kept.conversation.members.retain(|m| m.user_id != member);
        kept.read.remove(&member);
        let conversation = kept.conversation.clone();
        if let Some(ids) = state.memberships.get_mut(&member) {
            ids.retain(|&c| c != id);
        }
        Ok(state.record(ConversationEvent {
            event: ChangeKind::MemberRemoved,
            conversation,
            user_ids: vec![member],
            by: actor,
        }))
    }

    async fn set_last_seen(&self, user: UserId, at: DateTime<Utc>) -> Result<()> {
        let mut state = self.state();
        let seen = state.last_seen.entry(user).or_insert(at);
        *seen = (*seen).max(at);
        Ok(())
    }

    async fn last_seen(&self, users: &[UserId]) -> Result<Vec<Option<DateTime<Utc>>>> {
        let state = self.state();
        Ok(users
            .iter()
            .map(|u| state.last_seen.get(u).copied())
            .collect())
    }

    fn kind(&self) -> crate::BackendKind {
        crate::BackendKind::Memory
    }

    async fn check(&self) -> Result<()> {
        Ok(())
    }
}
