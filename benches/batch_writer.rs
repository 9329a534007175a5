//! PostgreSQL storage's batch writer (group commit) against a real server: what a durable send
//! costs alone, and per message when 64 senders store at once, one send at a time or in runs.
//!
//! ```sh
//! cargo bench --bench batch_writer
//! ```
//!
//! `lone` is one `store_message` at a time: a batch of one (`BEGIN`, the locks, the insert,
//! `COMMIT` and its WAL flush), the latency a quiet node gives. `concurrent_64/one_by_one` has
//! 64 tasks, each storing its next send once the previous one is committed, so the writer
//! gathers whatever waits; `concurrent_64/runs_of_8` has the same tasks store runs of 8
//! (`Storage::store_messages`, as a WebSocket client that pipelines its sends is stored), each
//! run one queue entry and never split. Each task sends to its own receiver. The database is a
//! scratch one (`TestDatabase`: `MINICHAT_TEST_PG_ADMIN_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), dropped afterwards; without a reachable
//! PostgreSQL the bench is skipped with a note. Correctness is the tests' (postgres_batch.rs).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use minichat_core::model::{NewMessage, NewUser, UserId, ValidMessage};
use minichat_core::storage::{PostgresConfig, PostgresStorage, Storage};
use minichat_core::test_support::{TestDatabase, ADMIN_URL_ENV, DEFAULT_ADMIN_URL};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent senders in the `concurrent_64` group.
const TASKS: usize = 64;
/// Sends per run in `concurrent_64/runs_of_8`.
const RUN: usize = 8;
const CONTENT: &str =
    "Hello Bob! This is a message of a typical length for a chat, about eighty bytes.";

async fn user(storage: &PostgresStorage, name: String) -> UserId {
    let new = NewUser {
        username: name,
        display_name: None,
    }
    .validate()
    .expect("valid user");
    storage.create_user(&new).await.expect("user").id
}

fn message(sender: UserId, receiver: UserId) -> ValidMessage {
    NewMessage::to_user(sender, receiver, CONTENT)
        .validate()
        .expect("valid message")
}

/// `iters` messages spread over the [`TASKS`] pairs, each task storing `run` at a time (one by
/// one when `run` is 1) and the next only once they are committed; how long they all took.
async fn store_concurrently(
    storage: &Arc<PostgresStorage>,
    pairs: &[(UserId, UserId)],
    run: usize,
    iters: u64,
) -> Duration {
    let per_task = iters.div_ceil((TASKS * run) as u64);
    let started = Instant::now();
    let tasks: Vec<_> = pairs
        .iter()
        .map(|&(sender, receiver)| {
            let storage = storage.clone();
            tokio::spawn(async move {
                let messages: Vec<ValidMessage> =
                    (0..run).map(|_| message(sender, receiver)).collect();
                let messages: Vec<&ValidMessage> = messages.iter().collect();
                for _ in 0..per_task {
                    if run == 1 {
                        black_box(storage.store_message(messages[0]).await.expect("stored"));
                    } else {
                        for stored in storage.store_messages(&messages).await {
                            black_box(stored.expect("stored"));
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("sender task");
    }
    // Scaled to `iters`, since the tasks stored `per_task * TASKS * run >= iters` in all.
    started
        .elapsed()
        .mul_f64(iters as f64 / (per_task * (TASKS * run) as u64) as f64)
}

fn batch_writer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let admin_url = std::env::var(ADMIN_URL_ENV).unwrap_or_else(|_| DEFAULT_ADMIN_URL.into());
    if let Err(e) = runtime.block_on(tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)) {
        eprintln!("batch_writer skipped: no PostgreSQL at {admin_url}: {e}");
        return;
    }
    let db = runtime.block_on(TestDatabase::create());
    let storage = runtime.block_on(async {
        PostgresStorage::connect(&PostgresConfig {
            url: db.url().into(),
            pool_size: 8,
            timeout: minichat_core::DEFAULT_BACKEND_TIMEOUT,
        })
        .await
        .expect("connect")
    });
    let storage = Arc::new(storage);
    let pairs: Vec<(UserId, UserId)> = runtime.block_on(async {
        let mut pairs = Vec::with_capacity(TASKS);
        for i in 0..TASKS {
            let sender = user(&storage, format!("sender{i}")).await;
            let receiver = user(&storage, format!("receiver{i}")).await;
            pairs.push((sender, receiver));
        }
        pairs
    });

    let mut group = c.benchmark_group("batch_writer");
    group.throughput(Throughput::Elements(1));
    let lone = message(pairs[0].0, pairs[0].1);
    group.bench_function("lone", |b| {
        b.iter(|| runtime.block_on(async { black_box(storage.store_message(&lone).await) }))
    });
    group.bench_function("concurrent_64/one_by_one", |b| {
        b.iter_custom(|iters| runtime.block_on(store_concurrently(&storage, &pairs, 1, iters)))
    });
    group.bench_function("concurrent_64/runs_of_8", |b| {
        b.iter_custom(|iters| runtime.block_on(store_concurrently(&storage, &pairs, RUN, iters)))
    });
    group.finish();
    drop(storage);
    drop(db);
}

criterion_group!(benches, batch_writer);
criterion_main!(benches);
