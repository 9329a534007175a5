//! The whole send path of the service, on the embedded backends: validate, store (assigning
//! both users' seqs), serialise the event for receiver and sender, record it in the
//! recent-messages cache and hand it to the hub, then the receiver's subscription takes it.
//!
//! ```sh
//! cargo bench --bench send_path
//! cargo bench --bench send_path -- concurrent   # only the 64-task groups
//! ```
//!
//! `send_and_receive/memory` is the per-message cost of the core without PostgreSQL and Redis
//! round trips (with them, the storing transaction dominates); the server adds HTTP or WebSocket
//! framing on top. Messages accumulate in memory storage while it runs, as they would in a real
//! process.
//!
//! `concurrent_64/...` is throughput under concurrency, the shape of a busy node: 64 tasks on a
//! two-worker runtime, each sending to its own receiver and waiting until that receiver's
//! subscription got the message before sending the next. `memory` is everything in process;
//! `memory_redis` keeps memory storage but puts the recent-messages cache and the fan-out in
//! Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`, under a throw-away key prefix that is
//! deleted afterwards), so each send pushes to the cache and publishes, and the receiver's copy
//! comes back through the node's subscriber connection. The ratio of the two is the share of
//! in-process throughput the Redis round trips leave. Without a reachable Redis that group is
//! skipped with a note.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use minichat_core::test_support::{delete_redis_prefix, unique_redis_prefix};
use minichat_core::{Chat, ChatConfig, ChatService, NewMessage, NewUser, Subscription};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Concurrent senders in the `concurrent_64` groups.
const TASKS: usize = 64;
const CONTENT: &str =
    "Hello Bob! This is a message of a typical length for a chat, about eighty bytes.";

fn send_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let chat = Chat::in_memory();
    let (alice, bob, mut inbox) = runtime.block_on(async {
        let user = |name: &str| NewUser {
            username: name.into(),
            display_name: None,
        };
        let alice = chat.create_user(user("alice")).await.expect("alice");
        let bob = chat.create_user(user("bob")).await.expect("bob");
        let inbox = chat.subscribe(bob.id).await.expect("subscribe");
        (alice.id, bob.id, inbox)
    });
    let content = CONTENT;

    let mut group = c.benchmark_group("send_path");
    group.throughput(Throughput::Elements(1));
    group.bench_function("send_and_receive/memory", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let sent = chat
                    .send_message(
                        NewMessage {
                            sender_id: alice,
                            receiver_id: Some(bob),
                            conversation_id: None,
                            content: content.into(),
                            client_id: None,
                        },
                        None,
                    )
                    .await
                    .expect("sent");
                let event = inbox.recv().await.expect("delivered");
                black_box((sent, event))
            })
        })
    });
    group.finish();
}

/// One sender and its receiver's subscription, per task.
struct Pair {
    sender: i64,
    receiver: i64,
    inbox: Subscription,
}

async fn pairs(chat: &Chat, tag: &str) -> Vec<Pair> {
    let user = |name: String| NewUser {
        username: name,
        display_name: None,
    };
    let mut pairs = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        let sender = chat
            .create_user(user(format!("{tag}s{i}")))
            .await
            .expect("sender");
        let receiver = chat
            .create_user(user(format!("{tag}r{i}")))
            .await
            .expect("receiver");
        let inbox = chat.subscribe(receiver.id).await.expect("subscribe");
        pairs.push(Pair {
            sender: sender.id,
            receiver: receiver.id,
            inbox,
        });
    }
    pairs
}

/// `iters` sends spread over the [`TASKS`] pairs, each task sending its next message only once
/// the previous one reached its receiver; how long they all took.
async fn run_concurrent(chat: &Chat, pairs: &mut Vec<Pair>, iters: u64) -> Duration {
    let per_task = iters.div_ceil(TASKS as u64);
    let started = Instant::now();
    let tasks: Vec<_> = pairs
        .drain(..)
        .map(|mut pair| {
            let chat = chat.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let sent = chat
                        .send_message(
                            NewMessage {
                                sender_id: pair.sender,
                                receiver_id: Some(pair.receiver),
                                conversation_id: None,
                                content: CONTENT.into(),
                                client_id: None,
                            },
                            None,
                        )
                        .await
                        .expect("sent");
                    let event = pair.inbox.recv().await.expect("delivered");
                    black_box((sent, event));
                }
                pair
            })
        })
        .collect();
    for task in tasks {
        pairs.push(task.await.expect("sender task"));
    }
    // Scaled to `iters`, since the tasks sent `per_task * TASKS >= iters` in all.
    started
        .elapsed()
        .mul_f64(iters as f64 / (per_task * TASKS as u64) as f64)
}

fn concurrent(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("concurrent_64");
    group.throughput(Throughput::Elements(1));

    let chat = Chat::in_memory();
    let mut memory = runtime.block_on(pairs(&chat, "m"));
    group.bench_function("memory", |b| {
        b.iter_custom(|iters| runtime.block_on(run_concurrent(&chat, &mut memory, iters)))
    });
    drop((memory, chat));

    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = unique_redis_prefix();
    let config = ChatConfig {
        redis_url: Some(url.clone()),
        redis_prefix: prefix.clone(),
        ..ChatConfig::default()
    };
    match runtime.block_on(Chat::connect(&config)) {
        Ok(chat) => {
            let mut redis = runtime.block_on(pairs(&chat, "r"));
            group.bench_function("memory_redis", |b| {
                b.iter_custom(|iters| runtime.block_on(run_concurrent(&chat, &mut redis, iters)))
            });
            drop((redis, chat));
            delete_redis_prefix(&url, &prefix);
        }
        Err(e) => eprintln!("concurrent_64/memory_redis skipped: {e}"),
    }
    group.finish();
}

criterion_group!(benches, send_path, concurrent);
criterion_main!(benches);
