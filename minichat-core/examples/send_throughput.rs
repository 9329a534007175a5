//! Durable send throughput: `TASKS` concurrent senders, each sending `PER_TASK` messages through
//! a [`Chat`] on PostgreSQL storage (memory cache and in-process fan-out), on a scratch database
//! of its own that is dropped at the end.
//!
//! ```sh
//! cargo run --release -p minichat-core --example send_throughput -- [tasks] [per_task] [users]
//! ```
//!
//! This exists to measure the storage's write path as the service uses it (what group commit is
//! for), without HTTP or Redis in the way; it prints one line of figures. It needs PostgreSQL at
//! `MINICHAT_TEST_PG_ADMIN_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).

use minichat_core::test_support::TestDatabase;
use minichat_core::{Chat, ChatConfig, ChatService, NewMessage, NewUser};
use std::time::Instant;

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .map(|a| a.parse().expect("arguments are counts"))
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let (tasks, per_task, users) = (arg(1, 64), arg(2, 500), arg(3, 200).max(2));
    let db = TestDatabase::create().await;
    let chat = Chat::connect(&ChatConfig {
        database_url: Some(db.url().to_owned()),
        ..ChatConfig::default()
    })
    .await
    .expect("connect");
    let mut ids = Vec::with_capacity(users);
    for i in 0..users {
        let user = NewUser {
            username: format!("user{i}"),
            display_name: None,
        };
        ids.push(chat.create_user(user).await.expect("user").id);
    }
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let (chat, ids) = (chat.clone(), ids.clone());
        senders.spawn(async move {
            for i in 0..per_task {
                let from = ids[(t + i) % ids.len()];
                let to = ids[(t + i * 7 + 1) % ids.len()];
                let to = if to == from {
                    ids[(t + i + 1) % ids.len()]
                } else {
                    to
                };
                let message = NewMessage {
                    sender_id: from,
                    receiver_id: Some(to),
                    conversation_id: None,
                    content: format!("message {i} of task {t}"),
                    client_id: Some(format!("{t}-{i}")),
                };
                chat.send_message(message, None).await.expect("send");
            }
        });
    }
    while let Some(done) = senders.join_next().await {
        done.expect("sender task");
    }
    let elapsed = started.elapsed();
    let total = tasks * per_task;
    println!(
        "{total} durable sends ({tasks} tasks x {per_task}, {users} users) in {:.2} s: {:.0} msgs/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
}
