//! One batch's transaction: the statements the writer runs, in their lock order.
//!
//! This file exists so that the reads and writes of a batch, and why they come in this order,
//! sit in one place, apart from the queue (`writer.rs`) and the per-send rules (`plan.rs`).
//! A fixed number of statements whatever the batch's size:
//!
//! 1. the conversations sent to by id, locked `FOR SHARE` in id order, then (a new snapshot,
//!    after the locks) the members of the group ones: membership changes lock the conversation
//!    row `FOR UPDATE` before its users, so the members read stay the members until commit;
//! 2. every user (senders, receivers, the members sent to) locked in id order, and, pipelined
//!    behind it in the same round trip, 3. the earlier messages of the batch's client ids;
//! 4. only for pairs the writer's map does not know: their direct conversations, made when
//!    missing (with members), and read again if a concurrent transaction made one meanwhile;
//! 5. the messages and, pipelined with them, 6. the users' seqs; 7. the group messages'
//!    stream entries (which need the messages' ids).
//!
//! Pipelined statements run one after the other in the session, as if awaited in turn (so 3's
//! snapshot is taken after 2's locks were granted); they only share the trip to the server.
//! The one-to-one hot path with warm pairs runs 2 and 3, then 5 and 6: with `BEGIN` and
//! `COMMIT`, four round trips per batch.

use super::plan::{self, Pair, Plan, Read, Shape};
use super::{query, DirectMap, Failure};
use crate::error::Result;
use crate::model::{
    now, ConversationId, Message, MessageType, Recipient, StoredMessage, UserId, ValidMessage,
};
use crate::storage::postgres::sql::*;
use crate::storage::postgres::{col, unavailable};
use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap};
use tokio_postgres::types::ToSql;

type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// One transaction for the whole batch. Returns each send's answer and the direct conversations
/// it learnt (to remember once committed).
pub(super) async fn commit(
    client: &mut deadpool_postgres::Object,
    messages: &[&ValidMessage],
    directs: &DirectMap,
) -> std::result::Result<(Vec<Result<StoredMessage>>, Vec<(Pair, ConversationId)>), Failure> {
    let tx = client.transaction().await?;
    let mut learnt = Vec::new();

    // 1. The conversations sent to by id, then their members.
    let conversations = lock_conversations(&tx, messages, &mut learnt).await?;

    // 2. Every user, in id order.
    let mut ids: Vec<UserId> = Vec::with_capacity(messages.len() * 2);
    for m in messages {
        ids.push(m.sender_id());
        match m.to() {
            Recipient::User(receiver) => ids.push(receiver),
            Recipient::Conversation(id) => match conversations.get(&id) {
                Some(shape) if shape.has(m.sender_id()) => ids.extend(shape.members()),
                _ => {}
            },
        }
    }
    ids.sort_unstable();
    ids.dedup();
    // 3. Pipelined behind the locks (one round trip for both): the earlier messages of the
    // batch's client_ids. PostgreSQL runs it after the locks were granted, so its snapshot
    // (a new one, under READ COMMITTED) sees every earlier send of those senders committed.
    let (senders, client_ids): (Vec<UserId>, Vec<&str>) = messages
        .iter()
        .filter_map(|m| m.client_id().map(|c| (m.sender_id(), c)))
        .unzip();
    let lock_params: [&(dyn ToSql + Sync); 1] = [&ids];
    let (locked, found) = tokio::join!(query(&tx, LOCK_BATCH_USERS, &lock_params), async {
        if client_ids.is_empty() {
            return Ok(Vec::new());
        }
        query(&tx, FIND_BATCH_CLIENT_IDS, &[&senders, &client_ids]).await
    });
    // The locks' error first: a failed statement aborts the one pipelined behind it.
    let locked = locked?;
    let found = found?;
    let mut users = HashMap::with_capacity(ids.len());
    for row in locked {
        users.insert(col(&row, 0)?, (col::<String>(&row, 1)?, col(&row, 2)?));
    }
    let earlier = earlier_sends(found, &users)?;

    let mut plan = plan::plan(
        messages,
        Read {
            users,
            conversations: &conversations,
            earlier: &earlier,
        },
        |pair| directs.get(pair),
    );

    // 4. The direct conversations of pairs not known yet.
    let timestamp: DateTime<Utc> = now();
    resolve_pairs(&tx, &mut plan, timestamp, &mut learnt).await?;

    // 5-7. Messages and seqs, then stream entries.
    let ids = insert(&tx, messages, &plan, timestamp).await?;
    tx.commit().await?;
    Ok((plan.answers(messages, &ids, timestamp), learnt))
}

/// Locks the conversations of the batch's sends by id and reads their members.
async fn lock_conversations(
    tx: &Tx<'_>,
    messages: &[&ValidMessage],
    learnt: &mut Vec<(Pair, ConversationId)>,
) -> std::result::Result<HashMap<ConversationId, Shape>, Failure> {
    let ids: Vec<ConversationId> = messages
        .iter()
        .filter_map(|m| match m.to() {
            Recipient::Conversation(id) => Some(id),
            Recipient::User(_) => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut conversations = HashMap::with_capacity(ids.len());
    if ids.is_empty() {
        return Ok(conversations);
    }
    let mut groups = Vec::new();
    for row in query(tx, LOCK_BATCH_CONVERSATIONS, &[&ids]).await? {
        let id: ConversationId = col(&row, 0)?;
        let kind: String = col(&row, 1)?;
        if kind == "direct" {
            let pair = (col(&row, 2)?, col(&row, 3)?);
            learnt.push((pair, id));
            conversations.insert(id, Shape::Direct(pair));
        } else {
            groups.push(id);
            conversations.insert(id, Shape::Group(Vec::new()));
        }
    }
    if !groups.is_empty() {
        for row in query(tx, BATCH_MEMBERS, &[&groups]).await? {
            let id: ConversationId = col(&row, 0)?;
            if let Some(Shape::Group(members)) = conversations.get_mut(&id) {
                members.push(col(&row, 1)?); // in user id order
            }
        }
    }
    Ok(conversations)
}

/// The earlier messages of the batch's `(sender, client_id)`s (the rows of
/// [`FIND_BATCH_CLIENT_IDS`]), as their retries' answers.
fn earlier_sends(
    found: Vec<tokio_postgres::Row>,
    users: &HashMap<UserId, (String, i64)>,
) -> std::result::Result<HashMap<(UserId, String), StoredMessage>, Failure> {
    let mut earlier = HashMap::with_capacity(found.len());
    for row in found {
        let sender: UserId = col(&row, 0)?;
        // A message's sender is a user (a foreign key), so its row was locked.
        let Some((sender_username, _)) = users.get(&sender) else {
            continue;
        };
        let stored = StoredMessage {
            message: Message {
                id: col(&row, 2)?,
                conversation_id: col(&row, 7)?,
                sender_id: sender,
                sender_username: sender_username.clone(),
                receiver_id: col(&row, 3)?,
                content: col(&row, 4)?,
                timestamp: col(&row, 5)?,
                kind: MessageType::Message,
            },
            sender_seq: col(&row, 6)?,
            recipients: Vec::new(),
            created: false,
        };
        earlier.insert((sender, col(&row, 1)?), stored);
    }
    Ok(earlier)
}

/// Gives every row whose pair's conversation was not known its id, making the missing ones.
async fn resolve_pairs(
    tx: &Tx<'_>,
    plan: &mut Plan,
    timestamp: DateTime<Utc>,
    learnt: &mut Vec<(Pair, ConversationId)>,
) -> std::result::Result<(), Failure> {
    // Each new pair once, made by the sender of its first message in the batch.
    let mut creators: Vec<(Pair, UserId)> = Vec::new();
    for row in &plan.rows {
        if let Some(pair) = row.pair {
            if !creators.iter().any(|(p, _)| *p == pair) {
                creators.push((pair, row.sender));
            }
        }
    }
    if creators.is_empty() {
        return Ok(());
    }
    let lows: Vec<UserId> = creators.iter().map(|((low, _), _)| *low).collect();
    let highs: Vec<UserId> = creators.iter().map(|((_, high), _)| *high).collect();
    let by: Vec<UserId> = creators.iter().map(|(_, by)| *by).collect();
    let times = vec![timestamp; creators.len()];
    let mut found: HashMap<Pair, ConversationId> = HashMap::with_capacity(creators.len());
    let params: [&(dyn ToSql + Sync); 4] = [&lows, &highs, &by, &times];
    for row in query(tx, DIRECT_CONVERSATIONS, &params).await? {
        found.insert((col(&row, 1)?, col(&row, 2)?), col(&row, 0)?);
    }
    // Made by a transaction that committed after this statement's snapshot: read them again.
    let (lows, highs): (Vec<UserId>, Vec<UserId>) = creators
        .iter()
        .map(|(pair, _)| *pair)
        .filter(|pair| !found.contains_key(pair))
        .unzip();
    if !lows.is_empty() {
        for row in query(tx, DIRECT_PAIRS, &[&lows, &highs]).await? {
            found.insert((col(&row, 1)?, col(&row, 2)?), col(&row, 0)?);
        }
    }
    for row in &mut plan.rows {
        if let Some(pair) = row.pair.take() {
            row.conversation = *found
                .get(&pair)
                .ok_or_else(|| unavailable("a direct conversation was neither found nor made"))?;
        }
    }
    learnt.extend(found);
    Ok(())
}

/// Inserts the plan's messages and stream entries and moves its users' seqs; returns each
/// row's message id.
async fn insert(
    tx: &Tx<'_>,
    messages: &[&ValidMessage],
    plan: &Plan,
    timestamp: DateTime<Utc>,
) -> std::result::Result<Vec<i64>, Failure> {
    let rows = &plan.rows;
    let mut ids = vec![0i64; rows.len()];
    if rows.is_empty() {
        return Ok(ids);
    }
    let senders: Vec<UserId> = rows.iter().map(|r| r.sender).collect();
    let receivers: Vec<Option<UserId>> = rows.iter().map(|r| r.receiver).collect();
    let contents: Vec<&str> = rows.iter().map(|r| messages[r.send].content()).collect();
    let times = vec![timestamp; rows.len()];
    let sender_seqs: Vec<i64> = rows.iter().map(|r| r.sender_seq).collect();
    let receiver_seqs: Vec<Option<i64>> = rows.iter().map(|r| r.receiver_seq()).collect();
    let client_ids: Vec<Option<&str>> = rows.iter().map(|r| messages[r.send].client_id()).collect();
    let conversations: Vec<ConversationId> = rows.iter().map(|r| r.conversation).collect();
    let params: [&(dyn ToSql + Sync); 8] = [
        &senders,
        &receivers,
        &contents,
        &times,
        &sender_seqs,
        &receiver_seqs,
        &client_ids,
        &conversations,
    ];
    let row_of: HashMap<(UserId, i64), usize> = senders
        .iter()
        .zip(&sender_seqs)
        .enumerate()
        .map(|(row, (sender, seq))| ((*sender, *seq), row))
        .collect();
    // The seqs move in the same round trip as the insert (pipelined: neither needs the
    // other's answer); the insert's error first, since a failed statement aborts the next.
    let seqs: Vec<i64> = plan.moved.iter().map(|u| plan.users[u].1).collect();
    let seq_params: [&(dyn ToSql + Sync); 2] = [&plan.moved, &seqs];
    let (inserted, moved) = tokio::join!(
        query(tx, INSERT_BATCH, &params),
        query(tx, UPDATE_BATCH_SEQS, &seq_params)
    );
    let inserted = inserted?;
    moved?;
    if inserted.len() != rows.len() {
        return Err(unavailable("the batch insert returned a wrong number of rows").into());
    }
    for r in &inserted {
        let key: (UserId, i64) = (col(r, 1)?, col(r, 2)?);
        let row = *row_of
            .get(&key)
            .ok_or_else(|| unavailable("the batch insert returned an unknown row"))?;
        ids[row] = col(r, 0)?;
    }

    // A group message's other members: one stream entry each.
    let (mut users, mut seqs, mut message_ids) = (Vec::new(), Vec::new(), Vec::new());
    for (row, r) in rows.iter().enumerate() {
        if r.receiver.is_none() {
            for &(user, seq) in &r.recipients {
                users.push(user);
                seqs.push(seq);
                message_ids.push(ids[row]);
            }
        }
    }
    if !users.is_empty() {
        query(tx, INSERT_BATCH_STREAM, &[&users, &seqs, &message_ids]).await?;
    }
    Ok(ids)
}
