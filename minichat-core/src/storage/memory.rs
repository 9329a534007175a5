//! In-memory storage: the zero-set-up default. Everything is lost when the process ends.
//!
//! One lock guards the whole state, so every operation is atomic, as a database transaction
//! would be. Per-user indexes keep history and replay proportional to what they return.

use super::Storage;
use crate::error::{Error, Result};
use crate::model::{
    now, HistoryQuery, Message, MessageId, MessageType, Page, ReadState, Seq, StoredMessage,
    StreamMessage, User, UserId, UserSearch, ValidMessage, ValidReadMark, ValidUser,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
struct State {
    /// `users[id - 1]`.
    users: Vec<User>,
    by_username: HashMap<String, UserId>,
    /// `messages[id - 1]`.
    messages: Vec<Message>,
    /// Per user, the indexes of every message they sent or received, oldest first. Every such
    /// message advanced the user's seq by one, so position `k` holds seq `k + 1`.
    stream: HashMap<UserId, Vec<usize>>,
    /// `(sender, client_id)` → message index.
    client_ids: HashMap<(UserId, String), usize>,
    /// `client_id_of[i]`: the client id `messages[i]` was sent with, if any (replayed to its
    /// sender only).
    client_id_of: Vec<Option<String>>,
    /// `(reader, peer)` → the newest message of `peer`'s that `reader` has read.
    read_marks: HashMap<(UserId, UserId), MessageId>,
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

impl State {
    fn user(&self, id: UserId) -> Option<&User> {
        index(id, self.users.len()).map(|i| &self.users[i])
    }

    fn seq_of(&self, user: UserId, idx: usize) -> Seq {
        let stream = &self.stream[&user];
        // The stream is sorted by message index; the position is the seq minus one.
        stream.binary_search(&idx).map_or(0, |p| p as Seq + 1)
    }

    fn stored(&self, idx: usize, created: bool) -> StoredMessage {
        let m = &self.messages[idx];
        StoredMessage {
            sender_seq: self.seq_of(m.sender_id, idx),
            receiver_seq: self.seq_of(m.receiver_id, idx),
            message: m.clone(),
            created,
        }
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
        let sender = state
            .user(message.sender_id())
            .ok_or(Error::SenderNotFound)?
            .username
            .clone();
        if state.user(message.receiver_id()).is_none() {
            return Err(Error::ReceiverNotFound);
        }
        if let Some(client_id) = message.client_id() {
            let key = (message.sender_id(), client_id.to_owned());
            if let Some(&idx) = state.client_ids.get(&key) {
                let earlier = &state.messages[idx];
                if earlier.receiver_id != message.receiver_id()
                    || earlier.content != message.content()
                {
                    return Err(Error::ClientIdConflict);
                }
                return Ok(state.stored(idx, false));
            }
        }
        let idx = state.messages.len();
        state.messages.push(Message {
            id: idx as i64 + 1,
            sender_id: message.sender_id(),
            sender_username: sender,
            receiver_id: message.receiver_id(),
            content: message.content().to_owned(),
            timestamp: now(),
            kind: MessageType::Message,
        });
        state
            .client_id_of
            .push(message.client_id().map(str::to_owned));
        for user in [message.sender_id(), message.receiver_id()] {
            state.stream.entry(user).or_default().push(idx);
        }
        if let Some(client_id) = message.client_id() {
            state
                .client_ids
                .insert((message.sender_id(), client_id.to_owned()), idx);
        }
        Ok(state.stored(idx, true))
    }

    async fn history(&self, query: &HistoryQuery) -> Result<Vec<Message>> {
        let state = self.state();
        let Some(stream) = state.stream.get(&query.user_id()) else {
            return Ok(Vec::new());
        };
        Ok(stream
            .iter()
            .rev()
            .map(|&i| &state.messages[i])
            .filter(|m| query.matches(m))
            .skip(query.page().skip() as usize)
            .take(query.page().limit() as usize)
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
            .map(|&i| &state.messages[i])
            .filter(|m| m.receiver_id == user)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn events_since(
        &self,
        user: UserId,
        since: Seq,
        limit: usize,
    ) -> Result<Vec<StreamMessage>> {
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
            .map(|(k, &i)| {
                let message = state.messages[i].clone();
                // Only the sender learns the client id it gave.
                let client_id = (message.sender_id == user)
                    .then(|| state.client_id_of[i].clone())
                    .flatten();
                StreamMessage {
                    seq: (start + k) as Seq + 1,
                    message,
                    client_id,
                }
            })
            .collect())
    }

    async fn current_seq(&self, user: UserId) -> Result<Seq> {
        Ok(self.state().stream.get(&user).map_or(0, |s| s.len() as Seq))
    }

    async fn mark_read(&self, mark: &ValidReadMark) -> Result<MessageId> {
        let (reader, peer, up_to) = (mark.reader_id(), mark.peer_id(), mark.up_to());
        let mut state = self.state();
        let is_theirs = index(up_to, state.messages.len())
            .map(|i| &state.messages[i])
            .is_some_and(|m| m.sender_id == peer && m.receiver_id == reader);
        if !is_theirs {
            return Err(Error::MessageNotFound);
        }
        let mark = state.read_marks.entry((reader, peer)).or_insert(up_to);
        *mark = (*mark).max(up_to);
        Ok(*mark)
    }

    async fn read_marks(&self, user: UserId, peer: UserId) -> Result<ReadState> {
        let state = self.state();
        Ok(ReadState {
            read_up_to: state.read_marks.get(&(user, peer)).copied(),
            peer_read_up_to: state.read_marks.get(&(peer, user)).copied(),
        })
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
