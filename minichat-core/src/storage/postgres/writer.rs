//! Group commit: the batch writer every `store_message` of PostgreSQL storage goes through.
//!
//! This file exists because one transaction per message caps durable sends at PostgreSQL's
//! single-row commit rate (one WAL flush each, about 2,000/s here). Sends are queued instead on a
//! bounded channel ([`QUEUE`] slots, enforced by `mpsc::channel`), each with a oneshot reply. A
//! writer task takes the first waiting send (blocking), drains whatever else is already waiting
//! without waiting (at most [`MAX_BATCH`]), commits all of it as ONE transaction, and answers
//! each. There is no timer: a lone send commits at once, and whatever arrives while a batch
//! commits forms the next one. [`WRITERS`] tasks, each on its own connection, share the queue, so
//! one gathers while another waits for its commit's fsync.
//!
//! Invariants (the same as one transaction per message):
//! - **Gapless seqs in commit order, across nodes.** A batch locks all its users' rows in one
//!   global id order (so batches cannot deadlock each other), computes seqs from the locked
//!   `last_seq`, and inserts with ids taken in seq order; rows stay locked until commit.
//! - **Each send its own outcome.** Unknown users, repeated or conflicting `client_id`s (also
//!   twice within one batch: the second is the retry of the first) are answered per send and
//!   never fail a neighbour. Only a database failure fails the batch, then every send in it gets
//!   [`Error::Unavailable`] and the rollback leaves nothing half-written.
//! - **Acknowledged means committed**: replies go out after `COMMIT` returned.
//! - **Bounded waits**: a caller waits for queue space and its reply within the backend budget;
//!   a batch runs within it too (`Connections::bounded`), and a send whose caller gave up before
//!   its batch started is skipped.
//! - **Shutdown**: the tasks end when the last sender (the storage) is dropped.

use super::pool::Connections;
use super::sql::*;
use super::{col, unavailable};
use crate::error::{Error, Result};
use crate::model::{now, Message, MessageType, StoredMessage, UserId, ValidMessage};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

/// The most sends one transaction commits.
pub(super) const MAX_BATCH: usize = 256;
/// Sends that may wait for a writer; a caller beyond it waits for space (within the budget).
const QUEUE: usize = 4 * MAX_BATCH;
/// Writer tasks, each with its own connection per batch.
const WRITERS: usize = 2;
/// Attempts of a batch that met a deadlock or a serialization failure.
const ATTEMPTS: usize = 3;

type Reply = oneshot::Sender<Result<StoredMessage>>;

struct Job {
    message: ValidMessage,
    reply: Reply,
}

/// The sending side of the writer; dropping it ends the writer tasks.
pub(super) struct Writer {
    queue: mpsc::Sender<Job>,
    timeout: Duration,
    #[cfg_attr(not(feature = "test-support"), allow(dead_code))]
    largest: Arc<AtomicUsize>,
}

impl Writer {
    /// Starts the writer tasks on `pool`'s connections.
    pub(super) fn start(pool: Connections, timeout: Duration) -> Writer {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let jobs = Arc::new(Mutex::new(jobs));
        let largest = Arc::new(AtomicUsize::new(0));
        let pool = Arc::new(pool);
        for _ in 0..WRITERS {
            tokio::spawn(write(jobs.clone(), pool.clone(), largest.clone()));
        }
        Writer {
            queue,
            timeout,
            largest,
        }
    }

    /// Stores `message` in the next batch; answers within the budget.
    pub(super) async fn store(&self, message: &ValidMessage) -> Result<StoredMessage> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            message: message.clone(),
            reply,
        };
        let waited = tokio::time::timeout(self.timeout, async {
            self.queue
                .send(job)
                .await
                .map_err(|_| unavailable("the batch writer has stopped"))?;
            answer
                .await
                .map_err(|_| unavailable("the batch writer dropped the send"))?
        });
        match waited.await {
            Ok(answer) => answer,
            Err(_) => Err(unavailable(format!(
                "PostgreSQL did not commit the send within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// The largest batch committed so far.
    #[cfg_attr(not(feature = "test-support"), allow(dead_code))]
    pub(super) fn largest_batch(&self) -> usize {
        self.largest.load(Ordering::Relaxed)
    }
}

/// One writer task: gather a batch, commit it, answer it; until the queue closes.
async fn write(
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    pool: Arc<Connections>,
    largest: Arc<AtomicUsize>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let mut jobs = jobs.lock().await;
            let Some(first) = jobs.recv().await else {
                return;
            };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        // A caller that gave up (timed out) before its batch started is not written.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        metrics::histogram!(crate::telemetry::STORAGE_BATCH_SIZE).record(batch.len() as f64);
        largest.fetch_max(batch.len(), Ordering::Relaxed);
        let messages: Vec<&ValidMessage> = batch.iter().map(|job| &job.message).collect();
        let answers = commit_with_retry(&pool, &messages).await;
        drop(messages);
        match answers {
            Ok(answers) => {
                for (job, answer) in batch.drain(..).zip(answers) {
                    let _ = job.reply.send(answer);
                }
            }
            Err(e) => {
                let reason = super::describe(&e);
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(unavailable(reason.clone())));
                }
            }
        }
    }
}

/// Why a batch's transaction failed.
enum Failure {
    /// A deadlock or serialization failure: the batch may simply run again.
    Retry(tokio_postgres::Error),
    /// Anything else: the batch fails. `reusable` is false when the connection must be closed
    /// rather than pooled again (it broke, or its server shuts down or became read-only, as a
    /// primary does when it dies or is demoted: see `pool::reusable_after`).
    Other { error: Error, reusable: bool },
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Failure {
        let code = e.code();
        if code == Some(&SqlState::T_R_DEADLOCK_DETECTED)
            || code == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
        {
            Failure::Retry(e)
        } else {
            Failure::Other {
                reusable: super::pool::reusable_after(&e),
                error: unavailable(e),
            }
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Other {
            error: e,
            reusable: true,
        }
    }
}

/// Commits `messages` within the budget, again after a deadlock or serialization failure.
async fn commit_with_retry(
    pool: &Connections,
    messages: &[&ValidMessage],
) -> std::result::Result<Vec<Result<StoredMessage>>, Error> {
    pool.bounded(async {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut lease = pool.lease().await?;
            let done = commit(&mut lease, messages).await;
            // Completed: committed, or rolled back by dropping the transaction; a connection
            // that broke (or whose server can no longer take writes) is closed, not pooled.
            lease.settle_if(!matches!(
                done,
                Err(Failure::Other {
                    reusable: false,
                    ..
                })
            ));
            match done {
                Ok(answers) => return Ok(answers),
                Err(Failure::Retry(e)) if attempt >= ATTEMPTS => return Err(unavailable(e)),
                Err(Failure::Retry(_)) => continue,
                Err(Failure::Other { error, .. }) => return Err(error),
            }
        }
    })
    .await
}

/// What a send of the batch turns into before the insert.
enum Plan {
    /// Answered already (unknown user, an earlier message, a conflict).
    Done(Result<StoredMessage>),
    /// The `i`th row of the insert.
    Insert(usize),
    /// A retry of the `i`th row of the insert (same `client_id` earlier in the batch).
    Repeat(usize),
}

async fn query(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let statement = tx.prepare_cached(sql).await?;
    tx.query(&statement, params).await
}

/// One transaction for the whole batch: four statements whatever its size.
async fn commit(
    client: &mut deadpool_postgres::Object,
    messages: &[&ValidMessage],
) -> std::result::Result<Vec<Result<StoredMessage>>, Failure> {
    let tx = client.transaction().await?;

    let mut ids: Vec<UserId> = messages
        .iter()
        .flat_map(|m| [m.sender_id(), m.receiver_id().unwrap_or(0)])
        .collect();
    ids.sort_unstable();
    ids.dedup();
    // id -> (username, last seq given)
    let mut users: HashMap<UserId, (String, i64)> = HashMap::with_capacity(ids.len());
    for row in query(&tx, LOCK_BATCH_USERS, &[&ids]).await? {
        users.insert(col(&row, 0)?, (col(&row, 1)?, col(&row, 2)?));
    }

    // Earlier messages of the batch's client_ids (the senders' rows are locked, so any earlier
    // send with one has committed and this new snapshot sees it).
    let (keyed_senders, keyed_ids): (Vec<UserId>, Vec<&str>) = messages
        .iter()
        .filter(|m| users.contains_key(&m.sender_id()))
        .filter_map(|m| m.client_id().map(|c| (m.sender_id(), c)))
        .unzip();
    let mut earlier: HashMap<(UserId, String), StoredMessage> = HashMap::new();
    if !keyed_ids.is_empty() {
        for row in query(&tx, FIND_BATCH_CLIENT_IDS, &[&keyed_senders, &keyed_ids]).await? {
            let sender: UserId = col(&row, 0)?;
            let stored = StoredMessage {
                message: Message {
                    id: col(&row, 2)?,
                    sender_id: sender,
                    sender_username: users[&sender].0.clone(),
                    receiver_id: col(&row, 3)?,
                    conversation_id: 0,
                    content: col(&row, 4)?,
                    timestamp: col(&row, 5)?,
                    kind: MessageType::Message,
                },
                sender_seq: col(&row, 6)?,
                recipients: vec![],
                created: false,
            };
            earlier.insert((sender, col(&row, 1)?), stored);
        }
    }

    // Plan each send in queue order, as sequential sends would go.
    let timestamp: DateTime<Utc> = now();
    let mut plans = Vec::with_capacity(messages.len());
    let mut rows: Vec<usize> = Vec::new(); // message index of each insert row
    let (mut senders, mut receivers, mut contents) = (Vec::new(), Vec::new(), Vec::new());
    let (mut sender_seqs, mut receiver_seqs, mut client_ids) = (Vec::new(), Vec::new(), Vec::new());
    let mut in_batch: HashMap<(UserId, &str), usize> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        let (sender, receiver) = (m.sender_id(), m.receiver_id().unwrap_or(0));
        if !users.contains_key(&sender) {
            plans.push(Plan::Done(Err(Error::SenderNotFound)));
            continue;
        }
        if !users.contains_key(&receiver) {
            plans.push(Plan::Done(Err(Error::ReceiverNotFound)));
            continue;
        }
        if let Some(client_id) = m.client_id() {
            if let Some(stored) = earlier.get(&(sender, client_id.to_owned())) {
                let same = stored.message.receiver_id == Some(receiver)
                    && stored.message.content == m.content();
                plans.push(Plan::Done(if same {
                    Ok(stored.clone())
                } else {
                    Err(Error::ClientIdConflict)
                }));
                continue;
            }
            if let Some(&row) = in_batch.get(&(sender, client_id)) {
                let first = messages[rows[row]];
                let same = first.receiver_id() == Some(receiver) && first.content() == m.content();
                plans.push(if same {
                    Plan::Repeat(row)
                } else {
                    Plan::Done(Err(Error::ClientIdConflict))
                });
                continue;
            }
            in_batch.insert((sender, client_id), rows.len());
        }
        let mut next = |user: UserId| {
            let entry = users.get_mut(&user).map(|u| &mut u.1);
            entry.map_or(0, |seq| {
                *seq += 1;
                *seq
            })
        };
        sender_seqs.push(next(sender));
        receiver_seqs.push(next(receiver));
        plans.push(Plan::Insert(rows.len()));
        rows.push(i);
        senders.push(sender);
        receivers.push(receiver);
        contents.push(m.content());
        client_ids.push(m.client_id());
    }

    let mut row_ids = vec![0i64; rows.len()];
    if !rows.is_empty() {
        let times = vec![timestamp; rows.len()];
        let params: [&(dyn ToSql + Sync); 7] = [
            &senders,
            &receivers,
            &contents,
            &times,
            &sender_seqs,
            &receiver_seqs,
            &client_ids,
        ];
        let mut row_of: HashMap<(UserId, i64), usize> = HashMap::with_capacity(rows.len());
        for (row, key) in senders.iter().zip(&sender_seqs).enumerate() {
            row_of.insert((*key.0, *key.1), row);
        }
        let inserted = query(&tx, INSERT_BATCH, &params).await?;
        if inserted.len() != rows.len() {
            return Err(unavailable("the batch insert returned a wrong number of rows").into());
        }
        for r in &inserted {
            let key: (UserId, i64) = (col(r, 1)?, col(r, 2)?);
            let row = *row_of
                .get(&key)
                .ok_or_else(|| unavailable("the batch insert returned an unknown row"))?;
            row_ids[row] = col(r, 0)?;
        }
        let (seq_users, seqs): (Vec<UserId>, Vec<i64>) =
            users.iter().map(|(id, (_, seq))| (*id, *seq)).unzip();
        query(&tx, UPDATE_BATCH_SEQS, &[&seq_users, &seqs]).await?;
    }
    tx.commit().await?;

    let made = |row: usize, created: bool| {
        let m = messages[rows[row]];
        StoredMessage {
            message: Message {
                id: row_ids[row],
                sender_id: m.sender_id(),
                sender_username: users[&m.sender_id()].0.clone(),
                receiver_id: m.receiver_id(),
                conversation_id: 0,
                content: m.content().to_owned(),
                timestamp,
                kind: MessageType::Message,
            },
            sender_seq: sender_seqs[row],
            recipients: vec![(m.receiver_id().unwrap_or(0), receiver_seqs[row])],
            created,
        }
    };
    Ok(plans
        .into_iter()
        .map(|plan| match plan {
            Plan::Done(answer) => answer,
            Plan::Insert(row) => Ok(made(row, true)),
            Plan::Repeat(row) => Ok(made(row, false)),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::MAX_BATCH;
    use crate::telemetry::STORAGE_BATCH_SIZE_BUCKETS;

    #[test]
    fn batch_size_buckets_reach_the_batch_bound() {
        assert_eq!(STORAGE_BATCH_SIZE_BUCKETS.last(), Some(&(MAX_BATCH as f64)));
        assert!(STORAGE_BATCH_SIZE_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }
}
