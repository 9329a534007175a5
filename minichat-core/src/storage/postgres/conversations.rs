//! PostgreSQL storage of conversations: reading them (one, the inbox), read marks, and every
//! membership change (create, rename, add, remove).
//!
//! This file exists so that the transactions that change who is in a conversation, and the
//! locking they depend on, are one piece apart from the message reads of `mod.rs`. Each change
//! is ONE transaction, retried after a deadlock or a serialization failure:
//!
//! 1. lock the conversation row `FOR UPDATE` (the send path locks a group's row `FOR SHARE`
//!    before any user row, so the global lock order is: conversation rows, then user rows in
//!    id order), then read its members in a new statement (whose snapshot sees every change
//!    committed before the lock was granted);
//! 2. ask the model's rules (`authorize_*`): storage never re-implements them;
//! 3. lock every recipient's user row `ORDER BY id FOR UPDATE` (which also finds unknown
//!    users) and give each the next seq;
//! 4. change the members, then record the event and its stream entries and move the
//!    recipients' `last_seq`, in one statement ([`RECORD_EVENT`]).
//!
//! A refusal or an unknown user rolls the transaction back (it is dropped), so nothing is
//! written; a database failure is [`Error::Unavailable`], with nothing written either.

use super::pool::Failure;
use super::sql::*;
use super::{col, message_if_any, run, unavailable, PostgresStorage};
use crate::error::{Error, Result};
use crate::model::{
    authorize_add, authorize_removal, authorize_rename, now, ChangeKind, Conversation,
    ConversationChange, ConversationEvent, ConversationId, ConversationKind, ConversationSummary,
    Member, Page, ReadState, Recipient, Refusal, Role, Seq, UserId, ValidGroup, ValidNewMembers,
    ValidReadMark, ValidRename,
};
use crate::storage::ReadReceipt;
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

/// A membership change, as the trait asks for it.
pub(super) enum Change<'a> {
    Create(&'a ValidGroup),
    Rename(ConversationId, &'a ValidRename),
    Add(ConversationId, &'a ValidNewMembers, usize),
    Remove {
        id: ConversationId,
        actor: UserId,
        member: UserId,
    },
}

/// A rule's refusal as the crate's error.
fn refused(refusal: Refusal) -> Error {
    match refusal {
        Refusal::Denied(why) => Error::Forbidden(why),
        Refusal::Invalid(e) => Error::Invalid(e),
    }
}

fn kind_from(row: &Row, i: usize) -> Result<ConversationKind> {
    let kind: &str = col(row, i)?;
    ConversationKind::parse(kind)
        .ok_or_else(|| unavailable(format!("unknown conversation kind {kind:?}")))
}

/// A conversation without its members from the columns `id, kind, title, created_by,
/// created_at`.
fn conversation_from(row: &Row) -> Result<Conversation> {
    Ok(Conversation {
        id: col(row, 0)?,
        kind: kind_from(row, 1)?,
        title: col(row, 2)?,
        created_by: col(row, 3)?,
        created_at: col(row, 4)?,
        members: Vec::new(),
    })
}

/// A member from the columns `user_id, role, joined_at`, starting at column `at`.
fn member_from(row: &Row, at: usize) -> Result<Member> {
    let role: &str = col(row, at + 1)?;
    Ok(Member {
        user_id: col(row, at)?,
        role: Role::parse(role).ok_or_else(|| unavailable(format!("unknown role {role:?}")))?,
        joined_at: col(row, at + 2)?,
    })
}

/// A membership event from the columns `event, by_user, user_ids, conversation` (JSON text),
/// starting at column `at` (see [`EVENTS_SINCE`]).
pub(super) fn event_from(row: &Row, at: usize) -> Result<ConversationEvent> {
    let event: &str = col(row, at)?;
    let conversation: &str = col(row, at + 3)?;
    Ok(ConversationEvent {
        event: ChangeKind::parse(event)
            .ok_or_else(|| unavailable(format!("unknown conversation event {event:?}")))?,
        by: col(row, at + 1)?,
        user_ids: col(row, at + 2)?,
        conversation: serde_json::from_str(conversation).map_err(unavailable)?,
    })
}

impl PostgresStorage {
    pub(super) async fn conversation_of(
        &self,
        id: ConversationId,
        user: UserId,
    ) -> Result<Conversation> {
        let rows = self.query(CONVERSATION, &[&id, &user]).await?;
        let first = rows.first().ok_or(Error::ConversationNotFound)?;
        let mut conversation = conversation_from(first)?;
        conversation.members = rows
            .iter()
            .map(|row| member_from(row, 5))
            .collect::<Result<_>>()?;
        Ok(conversation)
    }

    pub(super) async fn inbox(&self, user: UserId, page: Page) -> Result<Vec<ConversationSummary>> {
        let params: [&(dyn ToSql + Sync); 3] = [&user, &page.skip(), &page.limit()];
        let rows = self.query(CONVERSATIONS, &params).await?;
        rows.iter()
            .map(|row| {
                Ok(ConversationSummary {
                    id: col(row, 0)?,
                    kind: kind_from(row, 1)?,
                    title: col(row, 2)?,
                    created_by: col(row, 3)?,
                    created_at: col(row, 4)?,
                    member_count: col(row, 5)?,
                    unread: col(row, 6)?,
                    peer_id: col(row, 7)?,
                    last_message: message_if_any(row, 8)?,
                })
            })
            .collect()
    }

    pub(super) async fn mark_read_in(&self, mark: &ValidReadMark) -> Result<ReadReceipt> {
        let (conversation, peer) = match mark.to() {
            Recipient::Conversation(id) => (Some(id), None),
            Recipient::User(peer) => (None, Some(peer)),
        };
        let params: [&(dyn ToSql + Sync); 4] =
            [&mark.reader_id(), &conversation, &peer, &mark.up_to()];
        let rows = self.query(MARK_READ, &params).await?;
        let row = rows.first().ok_or(Error::ConversationNotFound)?;
        let up_to: Option<i64> = col(row, 1)?;
        Ok(ReadReceipt {
            conversation_id: col(row, 0)?,
            up_to: up_to.ok_or(Error::MessageNotFound)?,
            others: col(row, 2)?,
        })
    }

    pub(super) async fn read_marks_of(&self, user: UserId, peer: UserId) -> Result<ReadState> {
        let mut state = ReadState::default();
        for row in self.query(READ_MARKS, &[&user, &peer]).await? {
            let reader: UserId = col(&row, 0)?;
            if reader == user {
                state.read_up_to = col(&row, 1)?;
            } else {
                state.peer_read_up_to = col(&row, 1)?;
            }
        }
        Ok(state)
    }

    /// Applies `change` in one transaction within the budget, again after a deadlock or a
    /// serialization failure.
    pub(super) async fn change(&self, change: Change<'_>) -> Result<ConversationChange> {
        let change = &change;
        self.pool
            .transact(|mut lease| async move {
                let done = match lease.transaction().await {
                    Ok(tx) => apply(tx, change).await,
                    Err(e) => Err(Failure::from(e)),
                };
                (lease, done)
            })
            .await
    }
}

type Step<T> = std::result::Result<T, Failure>;

/// One attempt of `change` in `tx`; committed when it returns `Ok`.
async fn apply(tx: Transaction<'_>, change: &Change<'_>) -> Step<ConversationChange> {
    let at = now();
    match *change {
        Change::Create(group) => {
            let created = create(&tx, group, at).await?;
            tx.commit().await?;
            Ok(created)
        }
        Change::Rename(id, rename) => {
            let mut conversation = locked(&tx, id).await?;
            let by = rename.user_id();
            let actor = conversation.member(by).ok_or(Error::ConversationNotFound)?;
            authorize_rename(&conversation, actor).map_err(refused)?;
            conversation.title = Some(rename.title().to_owned());
            let event = ConversationEvent {
                event: ChangeKind::Renamed,
                conversation,
                user_ids: Vec::new(),
                by,
            };
            let seqs = lock_recipients(&tx, &event).await?;
            run(&tx, RENAME, &[&id, &rename.title()]).await?;
            record(tx, event, seqs, at).await
        }
        Change::Add(id, add, max_members) => {
            let mut conversation = locked(&tx, id).await?;
            let by = add.user_id();
            let actor = conversation.member(by).ok_or(Error::ConversationNotFound)?;
            let new: Vec<UserId> = add
                .member_ids()
                .iter()
                .copied()
                .filter(|&u| conversation.member(u).is_none())
                .collect();
            authorize_add(&conversation, actor, new.len(), max_members).map_err(refused)?;
            conversation.admit(&new, at);
            let event = ConversationEvent {
                event: ChangeKind::MemberAdded,
                conversation,
                user_ids: new,
                by,
            };
            // Unknown users among the new ones have no row: UserNotFound, nothing written.
            let seqs = lock_recipients(&tx, &event).await?;
            let roles = vec![Role::Member.as_str(); event.user_ids.len()];
            let params: [&(dyn ToSql + Sync); 4] = [&id, &event.user_ids, &roles, &at];
            run(&tx, INSERT_MEMBERS, &params).await?;
            record(tx, event, seqs, at).await
        }
        Change::Remove { id, actor, member } => {
            let mut conversation = locked(&tx, id).await?;
            let by = conversation
                .member(actor)
                .ok_or(Error::ConversationNotFound)?;
            let target = conversation.member(member).ok_or(Error::UserNotFound)?;
            authorize_removal(&conversation, by, target).map_err(refused)?;
            conversation.members.retain(|m| m.user_id != member);
            let event = ConversationEvent {
                event: ChangeKind::MemberRemoved,
                conversation,
                user_ids: vec![member],
                by: actor,
            };
            let seqs = lock_recipients(&tx, &event).await?;
            run(&tx, REMOVE_MEMBER, &[&id, &member]).await?;
            record(tx, event, seqs, at).await
        }
    }
}

/// A new group: its users locked (all must exist), the conversation and its members inserted,
/// the `created` event recorded (the caller commits).
async fn create(
    tx: &Transaction<'_>,
    group: &ValidGroup,
    at: DateTime<Utc>,
) -> Step<ConversationChange> {
    let members = group.members();
    let last = lock_users(tx, members).await?;
    let rows = run(
        tx,
        INSERT_GROUP,
        &[&group.title(), &group.creator_id(), &at],
    )
    .await?;
    let id: ConversationId = col(super::one(&rows)?, 0)?;
    let role = |user: UserId| {
        if user == group.creator_id() {
            Role::Owner
        } else {
            Role::Member
        }
    };
    let roles: Vec<&str> = members.iter().map(|&u| role(u).as_str()).collect();
    let params: [&(dyn ToSql + Sync); 4] = [&id, &members, &roles, &at];
    run(tx, INSERT_MEMBERS, &params).await?;
    let conversation = Conversation {
        id,
        kind: ConversationKind::Group,
        title: Some(group.title().to_owned()),
        created_by: group.creator_id(),
        created_at: at,
        members: members
            .iter()
            .map(|&user_id| Member {
                user_id,
                role: role(user_id),
                joined_at: at,
            })
            .collect(),
    };
    let event = ConversationEvent {
        event: ChangeKind::Created,
        conversation,
        user_ids: members.to_vec(),
        by: group.creator_id(),
    };
    record_in(tx, &event, &last, at).await?;
    Ok(ConversationChange {
        seqs: next_seqs(&last),
        event,
    })
}

/// Locks conversation `id` and reads it with its members; `ConversationNotFound` when there is
/// no such conversation.
async fn locked(tx: &Transaction<'_>, id: ConversationId) -> Step<Conversation> {
    let rows = run(tx, LOCK_CONVERSATION, &[&id]).await?;
    let row = rows.first().ok_or(Error::ConversationNotFound)?;
    let mut conversation = conversation_from(row)?;
    conversation.members = run(tx, MEMBERS, &[&id])
        .await?
        .iter()
        .map(|row| member_from(row, 0))
        .collect::<Result<_>>()?;
    Ok(conversation)
}

/// Locks `users` (sorted, distinct) in id order; their last seqs, or `UserNotFound` when one
/// does not exist.
async fn lock_users(tx: &Transaction<'_>, users: &[UserId]) -> Step<Vec<(UserId, Seq)>> {
    let last = run(tx, LOCK_USERS, &[&users])
        .await?
        .iter()
        .map(|row| Ok((col(row, 0)?, col(row, 1)?)))
        .collect::<Result<Vec<(UserId, Seq)>>>()?;
    if last.len() != users.len() {
        return Err(Error::UserNotFound.into());
    }
    Ok(last)
}

/// Locks the recipients of `event` ([`ConversationEvent::recipients`]); their last seqs.
async fn lock_recipients(
    tx: &Transaction<'_>,
    event: &ConversationEvent,
) -> Step<Vec<(UserId, Seq)>> {
    lock_users(tx, &event.recipients()).await
}

/// Each locked user's next seq.
fn next_seqs(last: &[(UserId, Seq)]) -> Vec<(UserId, Seq)> {
    last.iter().map(|&(user, seq)| (user, seq + 1)).collect()
}

/// Records `event` for the locked users `last` (its recipients, by id) at their next seqs.
async fn record_in(
    tx: &Transaction<'_>,
    event: &ConversationEvent,
    last: &[(UserId, Seq)],
    at: DateTime<Utc>,
) -> Step<()> {
    let json = serde_json::to_string(&event.conversation).map_err(unavailable)?;
    let (users, seqs): (Vec<UserId>, Vec<Seq>) = next_seqs(last).into_iter().unzip();
    let params: [&(dyn ToSql + Sync); 8] = [
        &event.conversation.id,
        &event.event.as_str(),
        &event.by,
        &event.user_ids,
        &json,
        &at,
        &users,
        &seqs,
    ];
    run(tx, RECORD_EVENT, &params).await?;
    Ok(())
}

/// [`record_in`], then commit.
async fn record(
    tx: Transaction<'_>,
    event: ConversationEvent,
    last: Vec<(UserId, Seq)>,
    at: DateTime<Utc>,
) -> Step<ConversationChange> {
    record_in(&tx, &event, &last, at).await?;
    tx.commit().await?;
    Ok(ConversationChange {
        seqs: next_seqs(&last),
        event,
    })
}
