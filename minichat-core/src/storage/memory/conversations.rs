//! The conversation half of the in-memory state: membership lookups, the direct conversation
//! of a pair (made on first use), recording a membership event in its recipients' streams, and
//! an inbox entry. A child of `memory.rs`, whose one lock guards all of it.

use super::{index, ConversationState, Entry, State};
use crate::error::{Error, Result};
use crate::model::{
    now, Conversation, ConversationChange, ConversationEvent, ConversationId, ConversationKind,
    ConversationSummary, Member, Role, UserId,
};
use std::collections::HashMap;

impl State {
    /// Conversation `id` if `user` is a member, else `ConversationNotFound`.
    pub(super) fn member_of(&self, id: ConversationId, user: UserId) -> Result<&ConversationState> {
        index(id, self.conversations.len())
            .map(|i| &self.conversations[i])
            .filter(|c| c.conversation.member(user).is_some())
            .ok_or(Error::ConversationNotFound)
    }

    pub(super) fn conversation_mut(&mut self, id: ConversationId) -> &mut ConversationState {
        let i = index(id, self.conversations.len()).expect("a conversation checked before");
        &mut self.conversations[i]
    }

    /// The direct conversation of `by` and `peer`, made now (by `by`) if they never exchanged a message.
    pub(super) fn direct_conversation(&mut self, by: UserId, peer: UserId) -> ConversationId {
        let pair = (by.min(peer), by.max(peer));
        if let Some(&id) = self.direct.get(&pair) {
            return id;
        }
        let at = now();
        let id = self.conversations.len() as ConversationId + 1;
        let members = [pair.0, pair.1]
            .into_iter()
            .map(|user_id| Member {
                user_id,
                role: Role::Member,
                joined_at: at,
            })
            .collect();
        self.conversations.push(ConversationState {
            conversation: Conversation {
                id,
                kind: ConversationKind::Direct,
                title: None,
                created_by: by,
                created_at: at,
                members,
            },
            read: HashMap::new(),
            messages: Vec::new(),
        });
        self.direct.insert(pair, id);
        for user in [pair.0, pair.1] {
            self.memberships.entry(user).or_default().push(id);
        }
        id
    }

    /// Records `event` and puts it in each recipient's stream.
    pub(super) fn record(&mut self, event: ConversationEvent) -> ConversationChange {
        let i = self.events.len();
        let seqs = event
            .recipients()
            .into_iter()
            .map(|user| (user, self.append(user, Entry::Event(i))))
            .collect();
        self.events.push(event.clone());
        ConversationChange { event, seqs }
    }

    pub(super) fn summary(&self, c: &ConversationState, user: UserId) -> ConversationSummary {
        let conv = &c.conversation;
        let mark = c.read.get(&user).copied().unwrap_or(0);
        let unread = c
            .messages
            .iter()
            .rev()
            .map(|&i| &self.messages[i])
            .take_while(|m| m.id > mark)
            .filter(|m| m.sender_id != user)
            .count() as i64;
        ConversationSummary {
            id: conv.id,
            kind: conv.kind,
            title: conv.title.clone(),
            created_by: conv.created_by,
            created_at: conv.created_at,
            member_count: conv.members.len() as i64,
            last_message: c.messages.last().map(|&i| self.messages[i].clone()),
            unread,
            peer_id: (conv.kind == ConversationKind::Direct)
                .then(|| conv.member_ids().find(|&u| u != user))
                .flatten(),
        }
    }
}
