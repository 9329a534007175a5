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
//! `BEGIN` ([`BEGIN_BATCH`], which leaves nested loops over indexes as the only plans: no plan
//! made on near-empty tables reads them whole later) rides with the first statements, and
//! `COMMIT` behind the last ones, so the one-to-one hot path with warm pairs takes two round
//! trips per batch: `BEGIN`, 2 and 3; then 5, 6 and `COMMIT`. The row locks are held for one
//! round trip (and the commit's flush), not three.
//!
//! The transaction is run by hand (`BEGIN`, `COMMIT`, `ROLLBACK` as simple queries) rather than
//! through a `Transaction`, which cannot pipeline its `BEGIN` or `COMMIT` and sends a `ROLLBACK`
//! when dropped, even after a `COMMIT` sent beside it. Every way out ends the transaction: a
//! failure before the last trip sends `ROLLBACK` (and the connection is closed if even that
//! fails); in the last trip, a statement that fails aborts the transaction, so the `COMMIT`
//! behind it rolls back. A caller that gives up mid-batch drops the connection unsettled, and
//! PostgreSQL rolls back when it closes (`pool.rs`). The last trip's statements are prepared
//! before it starts: a statement still waiting for its `Parse` would go out after the `COMMIT`.

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
use tokio_postgres::Statement;

type Client = deadpool_postgres::ClientWrapper;

/// One transaction for the whole batch. Returns each send's answer and the direct conversations
/// it learnt (to remember once committed).
pub(super) async fn commit(
    client: &Client,
    messages: &[&ValidMessage],
    directs: &DirectMap,
) -> std::result::Result<(Vec<Result<StoredMessage>>, Vec<(Pair, ConversationId)>), Failure> {
    let mut learnt = Vec::new();
    // `BEGIN` first, in the same round trip as the batch's first statements.
    let (began, staged) = tokio::join!(
        biased;
        client.batch_execute(BEGIN_BATCH),
        stage(client, messages, directs, &mut learnt)
    );
    let staged = began.map_err(Failure::from).and(staged);
    let (plan, timestamp, statements) = match staged {
        Ok(staged) => staged,
        Err(failure) => return Err(rolled_back(client, failure).await),
    };
    let ids = write(client, messages, &plan, &statements, timestamp).await?;
    Ok((plan.answers(messages, &ids, timestamp), learnt))
}

/// The statements of the batch's last round trip, prepared before it starts.
struct Final {
    insert: Statement,
    seqs: Statement,
    /// Only when the batch has a group message.
    stream: Option<Statement>,
}

/// Everything before the last round trip, in the open transaction: locks and reads, the plan,
/// the pairs' conversations (and the time the messages are stamped with), and the last trip's
/// statements.
async fn stage(
    client: &Client,
    messages: &[&ValidMessage],
    directs: &DirectMap,
    learnt: &mut Vec<(Pair, ConversationId)>,
) -> std::result::Result<(Plan, DateTime<Utc>, Final), Failure> {
    // 1. The conversations sent to by id, then their members.
    let conversations = lock_conversations(client, messages, learnt).await?;

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
    let (locked, found) = tokio::join!(
        biased;
        query(client, LOCK_BATCH_USERS, &lock_params),
        async {
            if client_ids.is_empty() {
                return Ok(Vec::new());
            }
            query(client, FIND_BATCH_CLIENT_IDS, &[&senders, &client_ids]).await
        }
    );
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
    resolve_pairs(client, &mut plan, timestamp, learnt).await?;

    let groups = plan.rows.iter().any(|r| r.receiver.is_none());
    let statements = Final {
        insert: client.prepare_cached(INSERT_BATCH).await?,
        seqs: client.prepare_cached(UPDATE_BATCH_SEQS).await?,
        stream: match groups {
            true => Some(client.prepare_cached(INSERT_BATCH_STREAM).await?),
            false => None,
        },
    };
    Ok((plan, timestamp, statements))
}

/// Ends a transaction that failed before its last round trip with `ROLLBACK`, and returns its
/// failure; if the `ROLLBACK` fails too, the connection is closed rather than pooled again.
async fn rolled_back(client: &Client, failure: Failure) -> Failure {
    match client.batch_execute("ROLLBACK").await {
        Ok(()) => failure,
        Err(e) => Failure::Other {
            error: match failure {
                Failure::Retry(first) => unavailable(first),
                Failure::Other { error, .. } => error,
            },
            reusable: {
                tracing::debug!(error = %e, "ROLLBACK failed; closing the connection");
                false
            },
        },
    }
}

/// Locks the conversations of the batch's sends by id and reads their members.
async fn lock_conversations(
    client: &Client,
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
    for row in query(client, LOCK_BATCH_CONVERSATIONS, &[&ids]).await? {
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
        for row in query(client, BATCH_MEMBERS, &[&groups]).await? {
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
    client: &Client,
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
    for row in query(client, DIRECT_CONVERSATIONS, &params).await? {
        found.insert((col(&row, 1)?, col(&row, 2)?), col(&row, 0)?);
    }
    // Made by a transaction that committed after this statement's snapshot: read them again.
    let (lows, highs): (Vec<UserId>, Vec<UserId>) = creators
        .iter()
        .map(|(pair, _)| *pair)
        .filter(|pair| !found.contains_key(pair))
        .unzip();
    if !lows.is_empty() {
        for row in query(client, DIRECT_PAIRS, &[&lows, &highs]).await? {
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

/// The last round trip: inserts the plan's messages and moves its users' seqs, with `COMMIT`
/// pipelined behind (a group message's stream entries need the messages' ids: they go with the
/// `COMMIT` in a trip of their own). Ends the transaction however it goes. Returns each row's
/// message id.
async fn write(
    client: &Client,
    messages: &[&ValidMessage],
    plan: &Plan,
    statements: &Final,
    timestamp: DateTime<Utc>,
) -> std::result::Result<Vec<i64>, Failure> {
    let rows = &plan.rows;
    if rows.is_empty() {
        client.batch_execute("COMMIT").await?;
        return Ok(Vec::new());
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
    let seqs: Vec<i64> = plan.moved.iter().map(|u| plan.users[u].1).collect();
    let seq_params: [&(dyn ToSql + Sync); 2] = [&plan.moved, &seqs];
    // The insert and the seqs share the trip (neither needs the other's answer); the insert's
    // error first, since a failed statement aborts the next.
    let inserted = match &statements.stream {
        None => {
            let (inserted, moved, committed) = tokio::join!(
                biased;
                client.query(&statements.insert, &params),
                client.query(&statements.seqs, &seq_params),
                client.batch_execute("COMMIT")
            );
            let inserted = inserted?;
            moved?;
            committed?;
            inserted
        }
        Some(stream) => {
            let (inserted, moved) = tokio::join!(
                biased;
                client.query(&statements.insert, &params),
                client.query(&statements.seqs, &seq_params)
            );
            let inserted = match (inserted, moved) {
                (Ok(inserted), Ok(_)) => inserted,
                (Err(e), _) | (_, Err(e)) => return Err(rolled_back(client, e.into()).await),
            };
            let ids = match message_ids(&inserted, &senders, &sender_seqs) {
                Ok(ids) => ids,
                Err(failure) => return Err(rolled_back(client, failure).await),
            };
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
            let stream_params: [&(dyn ToSql + Sync); 3] = [&users, &seqs, &message_ids];
            let (streamed, committed) = tokio::join!(
                biased;
                client.query(stream, &stream_params),
                client.batch_execute("COMMIT")
            );
            streamed?;
            committed?;
            return Ok(ids);
        }
    };
    // Committed: what follows only reads the insert's answer.
    message_ids(&inserted, &senders, &sender_seqs)
}

/// Each row's message id, from the insert's `RETURNING id, sender_id, sender_seq` (in no
/// promised order: matched by `(sender, sender_seq)`, which is unique).
fn message_ids(
    inserted: &[tokio_postgres::Row],
    senders: &[UserId],
    sender_seqs: &[i64],
) -> std::result::Result<Vec<i64>, Failure> {
    if inserted.len() != senders.len() {
        return Err(unavailable("the batch insert returned a wrong number of rows").into());
    }
    let row_of: HashMap<(UserId, i64), usize> = senders
        .iter()
        .zip(sender_seqs)
        .enumerate()
        .map(|(row, (sender, seq))| ((*sender, *seq), row))
        .collect();
    let mut ids = vec![0i64; senders.len()];
    for r in inserted {
        let key: (UserId, i64) = (col(r, 1)?, col(r, 2)?);
        let row = *row_of
            .get(&key)
            .ok_or_else(|| unavailable("the batch insert returned an unknown row"))?;
        ids[row] = col(r, 0)?;
    }
    Ok(ids)
}
