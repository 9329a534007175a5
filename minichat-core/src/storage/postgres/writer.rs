//! Group commit: the batch writer every `store_message` of PostgreSQL storage goes through.
//!
//! This file exists because one transaction per message caps durable sends at PostgreSQL's
//! single-row commit rate (one WAL flush each, about 2,000/s here). Sends are queued instead on a
//! bounded channel ([`QUEUE`] slots, enforced by `mpsc::channel`), each with a oneshot reply. A
//! writer task takes the first waiting send (blocking), drains whatever else is already waiting
//! without waiting (at most [`MAX_BATCH`] sends), commits all of it as ONE transaction, and
//! answers each. A run of sends (`store_run`: a connection's pipelined sends) is one queue
//! entry, never split between batches: one that does not fit is carried, first in line, to
//! the next batch, so the queue's order holds and the run's seqs follow its order. There is no
//! timer: a lone send commits at once, and whatever arrives while a batch commits forms the
//! next one. [`WRITERS`] tasks, each on its own connection, share the queue, so
//! one gathers while another waits for its commit's fsync.
//!
//! The batch's transaction is `writer/batch.rs` (its statements, in lock order); what each send
//! turns into is `writer/plan.rs`.
//!
//! Invariants (the same as one transaction per message):
//! - **Gapless seqs in commit order, across nodes.** A batch locks the conversations it sends
//!   to by id (`FOR SHARE`, id order), then all its users' rows (senders, receivers, every
//!   member sent to) in id order: one global order, conversations then users, which membership
//!   changes follow too, so batches cannot deadlock each other. It computes seqs from the
//!   locked `last_seq`, and inserts with ids taken in seq order; rows stay locked until commit,
//!   and so does every group's membership as the batch read it.
//! - **One direct conversation per pair**, made by the first batch that needs it (the unique
//!   pair constraint decides between nodes), remembered in-process ([`DirectMap`]) once
//!   committed, so a warm pair's send runs no statement for it.
//! - **Each send its own outcome.** Unknown users, a conversation the sender is not a member
//!   of, repeated or conflicting `client_id`s (also twice within one batch: the second is the
//!   retry of the first) are answered per send and never fail a neighbour. Only a database
//!   failure fails the batch, then every send in it gets [`Error::Unavailable`] and the
//!   rollback leaves nothing half-written (nor remembered: see [`DirectMap`]).
//! - **Acknowledged means committed**: replies go out after `COMMIT` returned.
//! - **Bounded waits**: a caller waits for queue space and its reply within the backend budget;
//!   a batch runs within it too (`Connections::bounded`), and a send whose caller gave up before
//!   its batch started is skipped.
//! - **Shutdown**: the tasks end when the last sender (the storage) is dropped.

mod batch;
mod plan;

use super::pool::{Connections, Failure};
use super::unavailable;
use crate::error::{Error, Result};
use crate::model::{ConversationId, StoredMessage, ValidMessage};
use plan::Pair;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_postgres::types::ToSql;

/// The most sends one transaction commits.
pub(super) const MAX_BATCH: usize = 256;
/// Sends that may wait for a writer; a caller beyond it waits for space (within the budget).
const QUEUE: usize = 4 * MAX_BATCH;
/// Writer tasks, each with its own connection per batch.
const WRITERS: usize = 2;

/// One caller's sends: a lone send, or a sender's run of sends that must keep their order
/// (they go into one batch, in order, so their seqs follow it).
enum Job {
    One(ValidMessage, oneshot::Sender<Result<StoredMessage>>),
    Run(
        Vec<ValidMessage>,
        oneshot::Sender<Vec<Result<StoredMessage>>>,
    ),
}

impl Job {
    fn len(&self) -> usize {
        match self {
            Job::One(..) => 1,
            Job::Run(messages, _) => messages.len(),
        }
    }

    fn messages(&self) -> &[ValidMessage] {
        match self {
            Job::One(message, _) => std::slice::from_ref(message),
            Job::Run(messages, _) => messages,
        }
    }

    /// Whether its caller gave up waiting.
    fn abandoned(&self) -> bool {
        match self {
            Job::One(_, reply) => reply.is_closed(),
            Job::Run(_, reply) => reply.is_closed(),
        }
    }

    /// Answers the caller with the next `self.len()` answers.
    fn answer(self, answers: &mut impl Iterator<Item = Result<StoredMessage>>) {
        match self {
            Job::One(_, reply) => {
                if let Some(answer) = answers.next() {
                    let _ = reply.send(answer);
                }
            }
            Job::Run(messages, reply) => {
                let _ = reply.send(answers.take(messages.len()).collect());
            }
        }
    }

    /// Answers every send of the job with `error`.
    fn fail(self, error: impl Fn() -> Error) {
        match self {
            Job::One(_, reply) => {
                let _ = reply.send(Err(error()));
            }
            Job::Run(messages, reply) => {
                let _ = reply.send(messages.iter().map(|_| Err(error())).collect());
            }
        }
    }
}

/// The writers' shared end of the queue, and the job that did not fit in the last batch (the
/// first of the next one, so that the queue's order holds).
struct Jobs {
    queue: mpsc::Receiver<Job>,
    carried: Option<Job>,
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
        let jobs = Arc::new(Mutex::new(Jobs {
            queue: jobs,
            carried: None,
        }));
        let largest = Arc::new(AtomicUsize::new(0));
        let pool = Arc::new(pool);
        let directs = Arc::new(DirectMap::default());
        for _ in 0..WRITERS {
            let directs = directs.clone();
            tokio::spawn(write(jobs.clone(), pool.clone(), directs, largest.clone()));
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
        self.within_budget(Job::One(message.clone(), reply), answer)
            .await
            .unwrap_or_else(Err)
    }

    /// Stores `messages` in order, each with its own answer: at most [`MAX_BATCH`] at a time,
    /// all in one batch, so that their seqs follow their order. Once a batch of them fails (or
    /// is not answered within the budget), the rest is not queued: see
    /// `Storage::store_messages`.
    pub(super) async fn store_run(&self, messages: &[&ValidMessage]) -> Vec<Result<StoredMessage>> {
        let mut answers = Vec::with_capacity(messages.len());
        for run in messages.chunks(MAX_BATCH) {
            let (reply, answer) = oneshot::channel();
            let job = Job::Run(run.iter().map(|&m| m.clone()).collect(), reply);
            let stored = self
                .within_budget(job, answer)
                .await
                .unwrap_or_else(|e| vec![Err(e)]);
            // A batch fails as a whole: every send of it answers unavailable.
            let failed = stored
                .iter()
                .any(|s| matches!(s, Err(Error::Unavailable { .. })));
            answers.extend(stored);
            if failed {
                break;
            }
        }
        answers.resize_with(messages.len(), || Err(Error::earlier_in_run_unstored()));
        answers
    }

    /// Queues `job` and waits for its answer, both within the budget.
    async fn within_budget<T>(&self, job: Job, answer: oneshot::Receiver<T>) -> Result<T> {
        let waited = tokio::time::timeout(self.timeout, async {
            self.queue
                .send(job)
                .await
                .map_err(|_| unavailable("the batch writer has stopped"))?;
            answer
                .await
                .map_err(|_| unavailable("the batch writer dropped the send"))
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

    /// How many jobs wait in the queue, not yet taken by a writer.
    #[cfg_attr(not(feature = "test-support"), allow(dead_code))]
    pub(super) fn queued_jobs(&self) -> usize {
        QUEUE - self.queue.capacity()
    }
}

/// One writer task: gather a batch, commit it, answer it; until the queue closes.
async fn write(
    jobs: Arc<Mutex<Jobs>>,
    pool: Arc<Connections>,
    directs: Arc<DirectMap>,
    largest: Arc<AtomicUsize>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let mut jobs = jobs.lock().await;
            let first = match jobs.carried.take() {
                Some(job) => job,
                None => match jobs.queue.recv().await {
                    Some(job) => job,
                    None => return,
                },
            };
            let mut size = first.len();
            batch.push(first);
            while size < MAX_BATCH {
                match jobs.queue.try_recv() {
                    Ok(job) if size + job.len() > MAX_BATCH => {
                        jobs.carried = Some(job);
                        break;
                    }
                    Ok(job) => {
                        size += job.len();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
        }
        // A caller that gave up (timed out) before its batch started is not written.
        batch.retain(|job| !job.abandoned());
        if batch.is_empty() {
            continue;
        }
        let messages: Vec<&ValidMessage> = batch.iter().flat_map(Job::messages).collect();
        metrics::histogram!(crate::telemetry::STORAGE_BATCH_SIZE).record(messages.len() as f64);
        largest.fetch_max(messages.len(), Ordering::Relaxed);
        let started = std::time::Instant::now();
        let answers = commit_with_retry(&pool, &directs, &messages).await;
        metrics::histogram!(crate::telemetry::STORAGE_BATCH_SECONDS)
            .record(started.elapsed().as_secs_f64());
        drop(messages);
        match answers {
            Ok(answers) => {
                let mut answers = answers.into_iter();
                for job in batch.drain(..) {
                    job.answer(&mut answers);
                    // Lets the woken send run, and hand its events to the broker, before the
                    // next one wakes: otherwise a batch's sends publish in whatever order the
                    // scheduler runs them, and every member of a busy group sees its seqs out
                    // of order (gap fills halved under groups of 100: BENCHMARKS.md).
                    // Mostly, not strictly: a send whose publish waits yields in turn.
                    tokio::task::yield_now().await;
                }
            }
            Err(e) => {
                let reason = super::describe(&e);
                for job in batch.drain(..) {
                    job.fail(|| unavailable(reason.clone()));
                }
            }
        }
    }
}

/// Commits `messages` within the budget, again after a deadlock or serialization failure;
/// remembers the direct conversations the committed batch learnt.
async fn commit_with_retry(
    pool: &Connections,
    directs: &DirectMap,
    messages: &[&ValidMessage],
) -> std::result::Result<Vec<Result<StoredMessage>>, Error> {
    let (answers, learnt) = pool
        .transact(|lease| async move {
            let done = batch::commit(&lease, messages, directs).await;
            (lease, done)
        })
        .await?;
    directs.remember(learnt);
    Ok(answers)
}

/// Runs `sql` (prepared once per connection) in the batch's transaction.
async fn query(
    client: &deadpool_postgres::ClientWrapper,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let statement = client.prepare_cached(sql).await?;
    client.query(&statement, params).await
}

/// The direct conversation of each pair this writer has seen committed, so that a warm pair's
/// send costs no statement: a direct conversation never changes nor disappears, so an entry is
/// never stale. Bounded: cleared when it passes [`DIRECT_MAP`] pairs (a cleared pair costs one
/// statement in its next batch). Shared by the writer tasks; entries are added only after the
/// transaction that found or made them committed.
#[derive(Default)]
pub(super) struct DirectMap(std::sync::Mutex<HashMap<Pair, ConversationId>>);

/// The most pairs [`DirectMap`] holds before it is cleared.
const DIRECT_MAP: usize = 8192;

impl DirectMap {
    fn pairs(&self) -> std::sync::MutexGuard<'_, HashMap<Pair, ConversationId>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn get(&self, pair: Pair) -> Option<ConversationId> {
        self.pairs().get(&pair).copied()
    }

    fn remember(&self, learnt: Vec<(Pair, ConversationId)>) {
        if learnt.is_empty() {
            return;
        }
        let mut pairs = self.pairs();
        if pairs.len() + learnt.len() > DIRECT_MAP {
            pairs.clear();
        }
        pairs.extend(learnt);
    }
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
