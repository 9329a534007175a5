//! The reference harness of the PostgreSQL conversation tests: every `Storage` call made on
//! PostgreSQL and on `MemoryStorage` (the reference), checked to agree.
//!
//! This file exists so that the comparison (which answers must be equal, with the two
//! backends' timestamps blanked) is written once, apart from the scripts that use it
//! (`postgres_conversations.rs`).

#![allow(dead_code)]

use chrono::{DateTime, Utc};
use minichat_core::model::{
    Conversation, ConversationChange, ConversationId, ConversationSummary, HistoryRequest, Message,
    NewGroup, NewMembers, NewMessage, NewUser, Page, ReadMark, ReadState, Recipient, Rename,
    StoredMessage, StreamEvent, UserId,
};
use minichat_core::storage::{
    MemoryStorage, PostgresConfig, PostgresStorage, ReadReceipt, Storage,
};
use minichat_core::test_support::TestDatabase;
use minichat_core::Error;
use std::fmt::Debug;

/// A generous member limit, for the calls that are not about it.
pub const MAX: usize = 100;

pub async fn connect(url: &str) -> PostgresStorage {
    PostgresStorage::connect(&PostgresConfig {
        url: url.into(),
        pool_size: 8,
        timeout: minichat_core::DEFAULT_BACKEND_TIMEOUT,
    })
    .await
    .expect("connect")
}

fn epoch() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH
}

// ---- Timestamps blanked, to compare two backends' clocks-apart answers --------------------

fn message(m: &Message) -> Message {
    Message {
        timestamp: epoch(),
        ..m.clone()
    }
}

fn conversation(c: &Conversation) -> Conversation {
    let mut c = c.clone();
    c.created_at = epoch();
    for m in &mut c.members {
        m.joined_at = epoch();
    }
    c
}

fn change(c: &ConversationChange) -> ConversationChange {
    let mut c = c.clone();
    c.event.conversation = conversation(&c.event.conversation);
    c
}

fn stored(s: &StoredMessage) -> StoredMessage {
    StoredMessage {
        message: message(&s.message),
        ..s.clone()
    }
}

fn event(e: &StreamEvent) -> StreamEvent {
    match e {
        StreamEvent::Message(m) => {
            let mut m = m.clone();
            m.message = message(&m.message);
            StreamEvent::Message(m)
        }
        StreamEvent::Conversation { seq, event } => {
            let mut event = event.clone();
            event.conversation = conversation(&event.conversation);
            StreamEvent::Conversation { seq: *seq, event }
        }
    }
}

fn summary(s: &ConversationSummary) -> ConversationSummary {
    let mut s = s.clone();
    s.created_at = epoch();
    s.last_message = s.last_message.as_ref().map(message);
    s
}

fn all<T, U>(f: impl Fn(&T) -> U) -> impl Fn(&Vec<T>) -> Vec<U> {
    move |v| v.iter().map(&f).collect()
}

/// The two backends' answers agree (values after `norm`, errors by their Debug text); returns
/// PostgreSQL's.
fn agree<T: Debug, U: PartialEq + Debug>(
    what: &str,
    pg: Result<T, Error>,
    mem: Result<T, Error>,
    norm: impl Fn(&T) -> U,
) -> Result<T, Error> {
    match (&pg, &mem) {
        (Ok(p), Ok(m)) => assert_eq!(norm(p), norm(m), "{what}"),
        (Err(p), Err(m)) => assert_eq!(format!("{p:?}"), format!("{m:?}"), "{what}"),
        _ => panic!("{what}: backends disagree: {pg:?} vs {mem:?}"),
    }
    pg
}

fn same<T: Clone>(t: &T) -> T {
    t.clone()
}

/// Every operation on PostgreSQL and on the in-memory reference, checked to agree.
pub struct Both {
    pub pg: PostgresStorage,
    pub mem: MemoryStorage,
}

impl Both {
    pub async fn new(db: &TestDatabase) -> Both {
        Both {
            pg: connect(db.url()).await,
            mem: MemoryStorage::new(),
        }
    }

    pub async fn user(&self, name: &str) -> UserId {
        let user = NewUser {
            username: name.into(),
            display_name: None,
        }
        .validate()
        .expect("valid user");
        let pg = self.pg.create_user(&user).await.expect("pg user");
        let mem = self.mem.create_user(&user).await.expect("mem user");
        assert_eq!(pg.id, mem.id);
        pg.id
    }

    pub async fn send(&self, m: NewMessage) -> Result<StoredMessage, Error> {
        let what = format!("send {m:?}");
        let m = m.validate().expect("valid message");
        let pg = self.pg.store_message(&m).await;
        let mem = self.mem.store_message(&m).await;
        agree(&what, pg, mem, stored)
    }

    pub async fn to_user(&self, from: UserId, to: UserId, text: &str) -> StoredMessage {
        self.send(NewMessage::to_user(from, to, text))
            .await
            .expect("direct send")
    }

    pub async fn to_group(&self, from: UserId, to: ConversationId, text: &str) -> StoredMessage {
        self.send(NewMessage::to_conversation(from, to, text))
            .await
            .expect("group send")
    }

    pub async fn group(
        &self,
        creator: UserId,
        title: &str,
        members: &[UserId],
    ) -> Result<ConversationChange, Error> {
        let group = NewGroup {
            creator_id: creator,
            title: title.into(),
            member_ids: members.to_vec(),
        }
        .validate(MAX)
        .expect("valid group");
        let pg = self.pg.create_group(&group).await;
        let mem = self.mem.create_group(&group).await;
        agree(&format!("create {group:?}"), pg, mem, change)
    }

    pub async fn rename(
        &self,
        id: ConversationId,
        by: UserId,
        title: &str,
    ) -> Result<ConversationChange, Error> {
        let rename = Rename {
            user_id: by,
            title: title.into(),
        }
        .validate()
        .expect("valid rename");
        let pg = self.pg.rename_conversation(id, &rename).await;
        let mem = self.mem.rename_conversation(id, &rename).await;
        agree(&format!("rename {id} {rename:?}"), pg, mem, change)
    }

    pub async fn add(
        &self,
        id: ConversationId,
        by: UserId,
        users: &[UserId],
        max: usize,
    ) -> Result<ConversationChange, Error> {
        let add = NewMembers {
            user_id: by,
            member_ids: users.to_vec(),
        }
        .validate()
        .expect("valid addition");
        let pg = self.pg.add_members(id, &add, max).await;
        let mem = self.mem.add_members(id, &add, max).await;
        agree(&format!("add {id} {add:?} max {max}"), pg, mem, change)
    }

    pub async fn remove(
        &self,
        id: ConversationId,
        actor: UserId,
        member: UserId,
    ) -> Result<ConversationChange, Error> {
        let pg = self.pg.remove_member(id, actor, member).await;
        let mem = self.mem.remove_member(id, actor, member).await;
        agree(&format!("remove {id} {actor} {member}"), pg, mem, change)
    }

    pub async fn conversation(
        &self,
        id: ConversationId,
        user: UserId,
    ) -> Result<Conversation, Error> {
        let pg = self.pg.conversation(id, user).await;
        let mem = self.mem.conversation(id, user).await;
        agree(&format!("conversation {id} {user}"), pg, mem, conversation)
    }

    pub async fn inbox(&self, user: UserId, skip: i64, limit: i64) -> Vec<ConversationSummary> {
        let page = Page::new(skip, limit).expect("valid page");
        let pg = self.pg.conversations(user, page).await;
        let mem = self.mem.conversations(user, page).await;
        agree(&format!("inbox {user} {page:?}"), pg, mem, all(summary)).expect("inbox")
    }

    pub async fn mark(
        &self,
        reader: UserId,
        to: Recipient,
        up_to: i64,
    ) -> Result<ReadReceipt, Error> {
        let mark = ReadMark {
            reader_id: reader,
            to,
            up_to,
        }
        .validate()
        .expect("valid mark");
        let pg = self.pg.mark_read(&mark).await;
        let mem = self.mem.mark_read(&mark).await;
        agree(&format!("mark {mark:?}"), pg, mem, same)
    }

    pub async fn marks(&self, user: UserId, peer: UserId) -> ReadState {
        let pg = self.pg.read_marks(user, peer).await;
        let mem = self.mem.read_marks(user, peer).await;
        agree(&format!("marks {user} {peer}"), pg, mem, same).expect("marks")
    }

    pub async fn history(&self, request: HistoryRequest) -> Result<Vec<Message>, Error> {
        let query = request.validate().expect("valid query");
        let pg = self.pg.history(&query).await;
        let mem = self.mem.history(&query).await;
        agree(&format!("history {request:?}"), pg, mem, all(message))
    }

    pub async fn recent(&self, user: UserId) -> Vec<Message> {
        let pg = self.pg.recent_received(user, 100).await;
        let mem = self.mem.recent_received(user, 100).await;
        agree(&format!("recent {user}"), pg, mem, all(message)).expect("recent")
    }

    pub async fn events(&self, user: UserId, since: i64, limit: usize) -> Vec<StreamEvent> {
        let pg = self.pg.events_since(user, since, limit).await;
        let mem = self.mem.events_since(user, since, limit).await;
        agree(
            &format!("events {user} {since} {limit}"),
            pg,
            mem,
            all(event),
        )
        .expect("events")
    }

    pub async fn seq(&self, user: UserId) -> i64 {
        let pg = self.pg.current_seq(user).await;
        let mem = self.mem.current_seq(user).await;
        agree(&format!("seq {user}"), pg, mem, same).expect("seq")
    }

    /// Every read of every user agrees: each stream whole and in every window, the inbox
    /// whole and paged, each conversation, each history, the recent messages.
    pub async fn check_reads(&self, users: &[UserId], conversations: &[ConversationId]) {
        for &user in users {
            let stream = self.events(user, 0, 1000).await;
            let seqs: Vec<i64> = stream.iter().map(StreamEvent::seq).collect();
            assert_eq!(
                seqs,
                (1..=stream.len() as i64).collect::<Vec<_>>(),
                "gapless"
            );
            assert_eq!(self.seq(user).await, stream.len() as i64);
            for since in 0..=stream.len() as i64 {
                for limit in [1, 2, 5] {
                    self.events(user, since, limit).await;
                }
            }
            let inbox = self.inbox(user, 0, 1000).await;
            for skip in 0..=inbox.len() as i64 {
                self.inbox(user, skip, 2).await;
            }
            for &id in conversations {
                let _ = self.conversation(id, user).await;
                for (skip, limit, before_id) in [(0, 1000, None), (1, 2, None), (0, 3, Some(6))] {
                    let _ = self
                        .history(HistoryRequest {
                            conversation_id: Some(id),
                            skip,
                            limit,
                            before_id,
                            ..HistoryRequest::new(user)
                        })
                        .await;
                }
            }
            let direct = self
                .history(HistoryRequest {
                    limit: 1000,
                    ..HistoryRequest::new(user)
                })
                .await
                .expect("direct history");
            assert!(
                direct.iter().all(|m| m.receiver_id.is_some()),
                "direct only"
            );
            assert!(self
                .recent(user)
                .await
                .iter()
                .all(|m| m.receiver_id == Some(user)));
        }
    }
}
