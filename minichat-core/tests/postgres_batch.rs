//! Tests of group commit in PostgreSQL storage (`storage/postgres/writer.rs`) against a real
//! server: concurrent sends from many tasks on two nodes (two storages on one database) are
//! gathered into batches and still give every user a gapless stream in commit order.

use minichat_core::model::{NewMessage, NewUser, UserId};
use minichat_core::storage::{PostgresConfig, PostgresStorage, Storage};
use minichat_core::test_support::TestDatabase;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::task::JoinSet;

async fn connect(url: &str) -> PostgresStorage {
    PostgresStorage::connect(&PostgresConfig {
        url: url.into(),
        pool_size: 8,
        timeout: minichat_core::DEFAULT_BACKEND_TIMEOUT,
    })
    .await
    .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_batch_concurrent_sends_into_gapless_streams_in_commit_order() {
    const TASKS: usize = 32;
    const PER_TASK: usize = 20;
    let db = TestDatabase::create().await;
    let nodes = [
        Arc::new(connect(db.url()).await),
        Arc::new(connect(db.url()).await),
    ];
    let mut users = Vec::new();
    for i in 0..6 {
        let user = NewUser {
            username: format!("user{i}"),
            display_name: None,
        };
        users.push(
            nodes[0]
                .create_user(&user.validate().unwrap())
                .await
                .unwrap()
                .id,
        );
    }
    let mut tasks = JoinSet::new();
    for t in 0..TASKS {
        let node = nodes[t % 2].clone();
        let users = users.clone();
        tasks.spawn(async move {
            let mut told = Vec::new();
            for i in 0..PER_TASK {
                let from = users[(t + i) % users.len()];
                let to = users[(t + 2 * i + 1) % users.len()];
                let to = if to == from {
                    users[(t + i + 1) % users.len()]
                } else {
                    to
                };
                let message = NewMessage {
                    sender_id: from,
                    receiver_id: to,
                    content: format!("t{t} m{i}"),
                    client_id: Some(format!("{t}-{i}")),
                }
                .validate()
                .unwrap();
                let stored = node.store_message(&message).await.expect("store");
                assert!(stored.created);
                told.push((from, stored.sender_seq, stored.message.id));
                told.push((to, stored.receiver_seq, stored.message.id));
            }
            told
        });
    }
    let mut by_user: HashMap<UserId, Vec<(i64, i64)>> = HashMap::new();
    while let Some(told) = tasks.join_next().await {
        for (user, seq, id) in told.expect("task") {
            by_user.entry(user).or_default().push((seq, id));
        }
    }
    let mut total = 0;
    for user in &users {
        let mut told = by_user.remove(user).unwrap_or_default();
        told.sort_unstable();
        total += told.len();
        let n = told.len() as i64;
        assert_eq!(
            told.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>()
        );
        // Seq order is commit order: within a user's stream ids increase with seq.
        assert!(told.windows(2).all(|w| w[0].1 < w[1].1), "{told:?}");
        let replayed = nodes[1].events_since(*user, 0, 10_000).await.unwrap();
        let replayed: Vec<(i64, i64)> = replayed.iter().map(|e| (e.seq, e.message.id)).collect();
        assert_eq!(replayed, told);
        assert_eq!(nodes[0].current_seq(*user).await.unwrap(), n);
    }
    assert_eq!(total, 2 * TASKS * PER_TASK);
    let largest = nodes[0].largest_batch().max(nodes[1].largest_batch());
    assert!(
        largest > 1,
        "no batch formed under {TASKS} concurrent senders"
    );
}
