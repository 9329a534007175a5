//! Tests of PostgreSQL storage's group commit (the batch writer) against a real server.
//!
//! This file exists to show that batching sends into one transaction keeps every promise of one
//! transaction per message: gapless per-user seqs in commit order across nodes, each send its own
//! outcome inside a mixed batch, and nothing half-written when PostgreSQL goes away mid-batch.
//! Each test makes its own database (`TestDatabase`).

use minichat_core::model::{
    ConversationId, NewMessage, NewUser, StoredMessage, UserId, ValidMessage,
};
use minichat_core::storage::{PostgresConfig, PostgresStorage, Storage};
use minichat_core::test_support::TestDatabase;
use minichat_core::{Backend, Error};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
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

async fn user(storage: &PostgresStorage, name: &str) -> UserId {
    let user = NewUser {
        username: name.into(),
        display_name: None,
    }
    .validate()
    .expect("valid user");
    storage.create_user(&user).await.expect("user").id
}

fn message(
    sender: UserId,
    receiver: UserId,
    content: &str,
    client_id: Option<&str>,
) -> ValidMessage {
    let m = NewMessage::to_user(sender, receiver, content);
    match client_id {
        Some(c) => m.with_client_id(c),
        None => m,
    }
    .validate()
    .expect("valid message")
}

fn to_conversation(
    sender: UserId,
    conversation: ConversationId,
    content: &str,
    client_id: Option<&str>,
) -> ValidMessage {
    let m = NewMessage::to_conversation(sender, conversation, content);
    match client_id {
        Some(c) => m.with_client_id(c),
        None => m,
    }
    .validate()
    .expect("valid message")
}

/// A group of `members` (the first its owner), written directly: what the batch writer reads
/// of a group is its `conversations` and `conversation_members` rows.
async fn group(admin: &tokio_postgres::Client, members: &[UserId]) -> ConversationId {
    let id: ConversationId = admin
        .query_one(
            "INSERT INTO conversations (kind, title, created_by, created_at)
             VALUES ('group', 'a group', $1, now()) RETURNING id",
            &[&members[0]],
        )
        .await
        .unwrap()
        .get(0);
    let roles: Vec<&str> = (0..members.len())
        .map(|i| if i == 0 { "owner" } else { "member" })
        .collect();
    admin
        .execute(
            "INSERT INTO conversation_members (conversation_id, user_id, role, joined_at)
             SELECT $1, u, r, now() FROM unnest($2::bigint[], $3::text[]) AS m(u, r)",
            &[&id, &members, &roles],
        )
        .await
        .unwrap();
    id
}

/// Every seq `user` has in the database (sent, received directly, and stream entries), in id
/// order of the message each one is in.
async fn stored_seqs(admin: &tokio_postgres::Client, user: UserId) -> Vec<i64> {
    admin
        .query(
            "SELECT seq FROM (
                 SELECT id, sender_seq AS seq FROM messages WHERE sender_id = $1
                 UNION ALL
                 SELECT id, receiver_seq FROM messages WHERE receiver_id = $1
                 UNION ALL
                 SELECT message_id, seq FROM stream_entries WHERE user_id = $1
             ) AS s ORDER BY id",
            &[&user],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Per user, `(message id, seq)` of every message `stored` put in their stream; asserts each
/// user's seqs are 1..=n in message id order (commit order) and returns n per user.
fn gapless_in_id_order(stored: &[StoredMessage]) -> HashMap<UserId, i64> {
    let mut per_user: HashMap<UserId, Vec<(i64, i64)>> = HashMap::new();
    for s in stored {
        per_user
            .entry(s.message.sender_id)
            .or_default()
            .push((s.message.id, s.sender_seq));
        for &(user, seq) in &s.recipients {
            per_user.entry(user).or_default().push((s.message.id, seq));
        }
    }
    per_user
        .into_iter()
        .map(|(user, mut pairs)| {
            pairs.sort_unstable();
            let seqs: Vec<i64> = pairs.iter().map(|p| p.1).collect();
            let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
            assert_eq!(seqs, expected, "user {user}: seqs in id order");
            (user, seqs.len() as i64)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_from_two_nodes_batch_and_stay_gapless_in_commit_order() {
    let db = TestDatabase::create().await;
    let nodes = [
        Arc::new(connect(db.url()).await),
        Arc::new(connect(db.url()).await),
    ];
    let mut users = Vec::new();
    for i in 0..6 {
        users.push(user(&nodes[0], &format!("user{i}")).await);
    }
    let (tasks, per_task) = (32, 20);
    let mut senders = JoinSet::new();
    for t in 0..tasks {
        let (node, users) = (nodes[t % 2].clone(), users.clone());
        senders.spawn(async move {
            let mut stored = Vec::new();
            for i in 0..per_task {
                let from = users[(t + i) % users.len()];
                let to = users[(t + i + 1 + i % 4) % users.len()];
                let m = message(from, to, &format!("{t}/{i}"), Some(&format!("{t}-{i}")));
                stored.push(node.store_message(&m).await.expect("send"));
            }
            stored
        });
    }
    let mut all: Vec<StoredMessage> = Vec::new();
    while let Some(done) = senders.join_next().await {
        all.extend(done.expect("sender task"));
    }
    assert_eq!(all.len(), tasks * per_task);
    assert!(all.iter().all(|s| s.created));
    // Per user: the seqs are 1..=n, and message id order is seq order.
    for (user, n) in gapless_in_id_order(&all) {
        assert_eq!(nodes[1].current_seq(user).await.unwrap(), n);
        let replay = nodes[1].events_since(user, 0, 10_000).await.unwrap();
        assert_eq!(replay.len() as i64, n);
    }
    let largest = nodes[0].largest_batch().max(nodes[1].largest_batch());
    assert!(largest > 1, "no batch formed under concurrency: {largest}");
}

/// Waits until `n` transactions wait on a row lock (the writers, held by the admin's lock).
async fn until_waiting(admin: &tokio_postgres::Client, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = admin
            .query(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'",
                &[],
            )
            .await
            .unwrap();
        if rows[0].get::<_, i64>(0) >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the writers did not wait on the lock"
        );
        tokio::task::yield_now().await;
    }
}

/// Keeps both writers busy: locks `held`'s row from outside and sends two messages from
/// `sender` to `held`, which wait on it mid-batch; what is sent meanwhile queues up behind
/// them, until `ROLLBACK` on `admin`. Returns the two sends.
async fn busy_writers(
    admin: &tokio_postgres::Client,
    storage: &Arc<PostgresStorage>,
    sender: UserId,
    held: UserId,
) -> Vec<tokio::task::JoinHandle<minichat_core::Result<StoredMessage>>> {
    admin
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM users WHERE id = {held} FOR UPDATE"
        ))
        .await
        .unwrap();
    let mut blockers = Vec::new();
    // One at a time: two sends queued together would be one batch, and keep one writer busy.
    for i in 0..2 {
        let (storage, m) = (
            storage.clone(),
            message(sender, held, &format!("b{i}"), None),
        );
        blockers.push(tokio::spawn(async move { storage.store_message(&m).await }));
        until_waiting(admin, i + 1).await;
    }
    blockers
}

/// Waits until `n` jobs wait in the writer's queue (both writers being busy).
async fn until_queued(storage: &PostgresStorage, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while storage.queued_jobs() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} jobs reached the queue",
            storage.queued_jobs()
        );
        tokio::task::yield_now().await;
    }
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let (admin, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
}

// One thread: spawned sends run (and queue) in spawn order, so the batch's order is known.
#[tokio::test(flavor = "current_thread")]
async fn a_mixed_batch_answers_each_send_as_sequential_sends_would() {
    let db = TestDatabase::create().await;
    let storage = Arc::new(connect(db.url()).await);
    let (alice, bob, carol, dave) = (
        user(&storage, "alice").await,
        user(&storage, "bob").await,
        user(&storage, "carol").await,
        user(&storage, "dave").await,
    );
    let earlier = storage
        .store_message(&message(alice, bob, "before", Some("old")))
        .await
        .unwrap();

    // Both writers busy on dave's locked row, so the sends below queue up as one batch.
    let admin = admin(db.url()).await;
    let blockers = busy_writers(&admin, &storage, carol, dave).await;

    let missing = 999_999;
    let sends = [
        message(alice, bob, "one", Some("a")),
        message(alice, missing, "x", Some("b")),
        message(missing, bob, "x", None),
        message(alice, bob, "before", Some("old")),
        message(alice, carol, "before", Some("old")),
        message(alice, bob, "one", Some("a")),
        message(alice, bob, "other", Some("a")),
        message(bob, alice, "two", Some("a")),
        message(alice, bob, "three", Some("b")),
    ];
    let mut handles = Vec::new();
    for m in sends {
        let storage = storage.clone();
        handles.push(tokio::spawn(async move { storage.store_message(&m).await }));
    }
    // Every send in the queue before the writers are released.
    until_queued(&storage, handles.len()).await;
    admin.batch_execute("ROLLBACK").await.unwrap();
    for b in blockers {
        assert!(b.await.unwrap().unwrap().created);
    }
    let mut got = Vec::new();
    for h in handles {
        got.push(h.await.unwrap());
    }
    assert!(storage.largest_batch() >= 9, "{}", storage.largest_batch());

    let one = got[0].as_ref().expect("first send");
    assert!(one.created);
    assert_eq!((one.sender_seq, one.seq_of(bob)), (2, Some(2)));
    assert_eq!(one.recipients, vec![(bob, 2)]);
    assert_eq!(one.message.conversation_id, earlier.message.conversation_id);
    assert_eq!(one.message.receiver_id, Some(bob));
    assert!(
        matches!(got[1], Err(Error::ReceiverNotFound)),
        "{:?}",
        got[1]
    );
    assert!(matches!(got[2], Err(Error::SenderNotFound)), "{:?}", got[2]);
    let old = got[3].as_ref().expect("retry of an earlier batch");
    assert!(!old.created);
    assert_eq!(old.message.id, earlier.message.id);
    assert_eq!(old.sender_seq, 1);
    assert!(old.recipients.is_empty(), "a retry is not delivered again");
    assert_eq!(old.message, earlier.message);
    assert!(
        matches!(got[4], Err(Error::ClientIdConflict)),
        "{:?}",
        got[4]
    );
    let repeat = got[5].as_ref().expect("retry inside the batch");
    assert!(!repeat.created);
    assert_eq!(repeat.message.id, one.message.id);
    assert_eq!(repeat.sender_seq, 2);
    assert!(repeat.recipients.is_empty());
    assert_eq!(repeat.message, one.message);
    assert!(
        matches!(got[6], Err(Error::ClientIdConflict)),
        "{:?}",
        got[6]
    );
    let two = got[7].as_ref().expect("another sender's same client_id");
    assert!(two.created);
    assert_eq!((two.sender_seq, two.seq_of(alice)), (3, Some(3)));
    assert_eq!(two.message.conversation_id, one.message.conversation_id);
    // "b" was not taken: its send failed.
    let three = got[8].as_ref().expect("client_id of a failed send");
    assert!(three.created);
    assert_eq!((three.sender_seq, three.seq_of(bob)), (4, Some(4)));
    assert!(one.message.id < two.message.id && two.message.id < three.message.id);
    assert_eq!(storage.current_seq(alice).await.unwrap(), 4);
    assert_eq!(storage.current_seq(bob).await.unwrap(), 4);
    assert_eq!(storage.events_since(alice, 0, 100).await.unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_group_and_direct_sends_from_two_nodes_stay_gapless_for_every_member() {
    let db = TestDatabase::create().await;
    let admin = admin(db.url()).await;
    let nodes = [
        Arc::new(connect(db.url()).await),
        Arc::new(connect(db.url()).await),
    ];
    let mut users = Vec::new();
    for i in 0..8 {
        users.push(user(&nodes[0], &format!("user{i}")).await);
    }
    // Overlapping groups, so one user's stream interleaves several conversations.
    let groups = [
        group(&admin, &users[0..5]).await,
        group(&admin, &users[3..8]).await,
        group(&admin, &users[..]).await,
    ];
    let members = |g: usize| -> Vec<UserId> {
        match g {
            0 => users[0..5].to_vec(),
            1 => users[3..8].to_vec(),
            _ => users.clone(),
        }
    };
    let (tasks, per_task) = (32, 24);
    let mut senders = JoinSet::new();
    for t in 0..tasks {
        let node = nodes[t % 2].clone();
        let plan: Vec<(ValidMessage, Option<usize>)> = (0..per_task)
            .map(|i| {
                let key = format!("{t}-{i}");
                let content = format!("{t}/{i}");
                if i % 3 == 0 {
                    let from = users[(t + i) % users.len()];
                    let to = users[(t + 2 * i + 1) % users.len()];
                    let to = if to == from {
                        users[(t + i + 1) % users.len()]
                    } else {
                        to
                    };
                    (message(from, to, &content, Some(&key)), None)
                } else {
                    let g = (t + i) % groups.len();
                    let m = members(g);
                    let from = m[(t * 7 + i) % m.len()];
                    (
                        to_conversation(from, groups[g], &content, Some(&key)),
                        Some(g),
                    )
                }
            })
            .collect();
        senders.spawn(async move {
            let mut stored = Vec::new();
            for (m, g) in plan {
                stored.push((node.store_message(&m).await.expect("send"), g));
            }
            stored
        });
    }
    let mut all: Vec<StoredMessage> = Vec::new();
    while let Some(done) = senders.join_next().await {
        for (s, g) in done.expect("sender task") {
            assert!(s.created);
            let expected: Vec<UserId> = match g {
                Some(g) => {
                    assert_eq!(s.message.conversation_id, groups[g]);
                    assert_eq!(s.message.receiver_id, None);
                    members(g)
                        .into_iter()
                        .filter(|&u| u != s.message.sender_id)
                        .collect()
                }
                None => vec![s.message.receiver_id.expect("a direct receiver")],
            };
            let got: Vec<UserId> = s.recipients.iter().map(|r| r.0).collect();
            assert_eq!(got, expected, "every other member, by id");
            all.push(s);
        }
    }
    assert_eq!(all.len(), tasks * per_task);
    let counts = gapless_in_id_order(&all);
    assert_eq!(counts.len(), users.len());
    for (user, n) in counts {
        assert_eq!(nodes[1].current_seq(user).await.unwrap(), n);
        let expected: Vec<i64> = (1..=n).collect();
        assert_eq!(
            stored_seqs(&admin, user).await,
            expected,
            "user {user} as stored"
        );
    }
    // One direct conversation per pair, whichever node sent first.
    let pairs: std::collections::HashSet<(UserId, UserId)> = all
        .iter()
        .filter_map(|s| {
            let r = s.message.receiver_id?;
            Some((s.message.sender_id.min(r), s.message.sender_id.max(r)))
        })
        .collect();
    let directs: i64 = admin
        .query_one(
            "SELECT count(*) FROM conversations WHERE kind = 'direct'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(directs, pairs.len() as i64);
    let largest = nodes[0].largest_batch().max(nodes[1].largest_batch());
    assert!(largest > 1, "no batch formed under concurrency: {largest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_users_of_a_pair_sending_first_at_once_from_two_nodes_make_one_conversation() {
    let db = TestDatabase::create().await;
    let admin = admin(db.url()).await;
    let nodes = [
        Arc::new(connect(db.url()).await),
        Arc::new(connect(db.url()).await),
    ];
    let pairs = 16;
    let mut users = Vec::new();
    for i in 0..2 * pairs {
        users.push(user(&nodes[0], &format!("user{i}")).await);
    }
    for round in 0..3 {
        let start = Arc::new(tokio::sync::Barrier::new(2 * pairs));
        let mut sends = JoinSet::new();
        for p in 0..pairs {
            let (a, b) = (users[2 * p], users[2 * p + 1]);
            for (node, from, to) in [(0, a, b), (1, b, a)] {
                let (node, start) = (nodes[node].clone(), start.clone());
                let m = message(from, to, &format!("first {round}"), None);
                sends.spawn(async move {
                    start.wait().await;
                    (p, node.store_message(&m).await.expect("send"))
                });
            }
        }
        let mut of_pair: HashMap<usize, Vec<i64>> = HashMap::new();
        while let Some(done) = sends.join_next().await {
            let (p, stored) = done.unwrap();
            of_pair
                .entry(p)
                .or_default()
                .push(stored.message.conversation_id);
        }
        let mut ids: Vec<i64> = of_pair
            .into_values()
            .map(|c| {
                assert_eq!(c.len(), 2);
                assert_eq!(c[0], c[1], "both sends in one conversation");
                c[0]
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), pairs, "round {round}: one conversation per pair");
    }
    let row = admin
        .query_one(
            "SELECT (SELECT count(*) FROM conversations WHERE kind = 'direct'),
                    (SELECT count(*) FROM conversation_members WHERE role = 'member'),
                    (SELECT count(DISTINCT conversation_id) FROM messages)",
            &[],
        )
        .await
        .unwrap();
    let counts: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(counts, (pairs as i64, 2 * pairs as i64, pairs as i64));
    // Each conversation's members are its pair, joined when it was made.
    let wrong: i64 = admin
        .query_one(
            "SELECT count(*) FROM conversations c
             WHERE (SELECT array_agg(user_id ORDER BY user_id) FROM conversation_members m
                    WHERE m.conversation_id = c.id AND m.joined_at = c.created_at)
                   IS DISTINCT FROM ARRAY[c.direct_low, c.direct_high]",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0);
}

/// A pair's conversation committed by another transaction after the batch's insert took its
/// snapshot: the insert skips it (the unique pair), cannot see it, and the writer reads it again.
/// (The other transaction's foreign-key checks lock both users `FOR KEY SHARE`, which the
/// batch's `FOR NO KEY UPDATE` does not wait for, so the batch gets to its insert.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_made_meanwhile_by_another_transaction_is_read_again() {
    let db = TestDatabase::create().await;
    let storage = Arc::new(connect(db.url()).await);
    let (alice, bob) = (user(&storage, "alice").await, user(&storage, "bob").await);
    let other = admin(db.url()).await;
    other.batch_execute("BEGIN").await.unwrap();
    let made: ConversationId = other
        .query_one(
            "INSERT INTO conversations (kind, created_by, created_at, direct_low, direct_high)
             VALUES ('direct', $1, now(), $1, $2) RETURNING id",
            &[&alice, &bob],
        )
        .await
        .unwrap()
        .get(0);
    other
        .execute(
            "INSERT INTO conversation_members (conversation_id, user_id, role, joined_at)
             VALUES ($1, $2, 'member', now()), ($1, $3, 'member', now())",
            &[&made, &alice, &bob],
        )
        .await
        .unwrap();
    let send = {
        let storage = storage.clone();
        tokio::spawn(async move {
            storage
                .store_message(&message(alice, bob, "hi", None))
                .await
        })
    };
    // The batch's insert waits on the uncommitted pair.
    until_waiting(&other, 1).await;
    other.batch_execute("COMMIT").await.unwrap();
    let stored = send.await.unwrap().expect("send");
    assert_eq!(stored.message.conversation_id, made);
    let again = storage
        .store_message(&message(bob, alice, "hello", None))
        .await
        .unwrap();
    assert_eq!(again.message.conversation_id, made);
    let directs: i64 = other
        .query_one("SELECT count(*) FROM conversations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(directs, 1);
}

// One thread: spawned sends run (and queue) in spawn order, so the batch's order is known.
#[tokio::test(flavor = "current_thread")]
async fn a_mixed_group_batch_answers_each_send_as_sequential_sends_would() {
    let db = TestDatabase::create().await;
    let storage = Arc::new(connect(db.url()).await);
    let mut ids = Vec::new();
    for name in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        ids.push(user(&storage, name).await);
    }
    let [alice, bob, carol, dave, erin, frank] = ids[..] else {
        unreachable!()
    };
    let admin = admin(db.url()).await;
    let g = group(&admin, &[alice, bob, carol]).await;
    let direct = storage
        .store_message(&message(alice, bob, "hello", None))
        .await
        .unwrap();
    let d = direct.message.conversation_id;
    let earlier = storage
        .store_message(&to_conversation(alice, g, "before", Some("old")))
        .await
        .unwrap();
    assert_eq!(earlier.recipients, vec![(bob, 2), (carol, 1)]);

    // Both writers busy on frank's locked row, so the sends below queue up as one batch.
    let blockers = busy_writers(&admin, &storage, erin, frank).await;

    let sends = [
        to_conversation(alice, g, "one", Some("x")), // 0 stored
        to_conversation(dave, g, "nope", Some("x")), // 1 not a member
        to_conversation(alice, 999_999, "nope", Some("z")), // 2 no such conversation
        to_conversation(alice, g, "one", Some("x")), // 3 retry of 0
        to_conversation(alice, g, "other", Some("x")), // 4 conflict: content
        message(alice, bob, "one", Some("x")),       // 5 conflict: place
        to_conversation(alice, d, "dm", Some("y")),  // 6 direct by id
        message(alice, bob, "dm", Some("y")),        // 7 retry of 6, by receiver
        to_conversation(alice, g, "before", Some("old")), // 8 retry of an earlier batch
        to_conversation(alice, d, "before", Some("old")), // 9 conflict with it
        to_conversation(bob, g, "two", Some("x")),   // 10 another sender's key
        to_conversation(alice, g, "three", Some("z")), // 11 "z" was not taken
        to_conversation(dave, d, "nope", None),      // 12 not a member of a direct one
    ];
    let mut handles = Vec::new();
    for m in sends {
        let storage = storage.clone();
        handles.push(tokio::spawn(async move { storage.store_message(&m).await }));
    }
    until_queued(&storage, handles.len()).await;
    admin.batch_execute("ROLLBACK").await.unwrap();
    for b in blockers {
        assert!(b.await.unwrap().unwrap().created);
    }
    let mut got = Vec::new();
    for h in handles {
        got.push(h.await.unwrap());
    }
    assert!(storage.largest_batch() >= 13, "{}", storage.largest_batch());

    let one = got[0].as_ref().expect("group send");
    assert!(one.created);
    assert_eq!(one.message.conversation_id, g);
    assert_eq!(one.message.receiver_id, None);
    assert_eq!(
        (one.sender_seq, one.recipients.clone()),
        (3, vec![(bob, 3), (carol, 2)])
    );
    for i in [1, 2, 12] {
        assert!(
            matches!(got[i], Err(Error::ConversationNotFound)),
            "{i}: {:?}",
            got[i]
        );
    }
    let repeat = got[3].as_ref().expect("retry inside the batch");
    assert!(!repeat.created && repeat.recipients.is_empty());
    assert_eq!((&repeat.message, repeat.sender_seq), (&one.message, 3));
    for i in [4, 5, 9] {
        assert!(
            matches!(got[i], Err(Error::ClientIdConflict)),
            "{i}: {:?}",
            got[i]
        );
    }
    let dm = got[6].as_ref().expect("direct by id");
    assert!(dm.created);
    assert_eq!(
        (dm.message.conversation_id, dm.message.receiver_id),
        (d, Some(bob))
    );
    assert_eq!((dm.sender_seq, dm.recipients.clone()), (4, vec![(bob, 4)]));
    let dm_again = got[7].as_ref().expect("retry by receiver");
    assert!(!dm_again.created && dm_again.recipients.is_empty());
    assert_eq!(dm_again.message, dm.message);
    let old = got[8].as_ref().expect("retry of an earlier batch");
    assert!(!old.created && old.recipients.is_empty());
    assert_eq!((&old.message, old.sender_seq), (&earlier.message, 2));
    let two = got[10].as_ref().expect("bob's x");
    assert!(two.created);
    assert_eq!(
        (two.sender_seq, two.recipients.clone()),
        (5, vec![(alice, 5), (carol, 3)])
    );
    let three = got[11].as_ref().expect("z");
    assert!(three.created);
    assert_eq!(
        (three.sender_seq, three.recipients.clone()),
        (6, vec![(bob, 6), (carol, 4)])
    );
    assert!(one.message.id < dm.message.id);
    assert!(dm.message.id < two.message.id && two.message.id < three.message.id);
    for (user, n) in [(alice, 6), (bob, 6), (carol, 4), (dave, 0)] {
        assert_eq!(storage.current_seq(user).await.unwrap(), n);
        let expected: Vec<i64> = (1..=n).collect();
        assert_eq!(stored_seqs(&admin, user).await, expected, "user {user}");
    }
    let messages: i64 = admin
        .query_one("SELECT count(*) FROM messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        messages,
        2 + 2 + 4,
        "the two before, the blockers, and four new"
    );
}

/// A send's answer without its timestamp (which differs between backends), for comparing them.
fn comparable(answer: minichat_core::Result<StoredMessage>) -> String {
    match answer {
        Ok(mut stored) => {
            stored.message.timestamp = chrono::DateTime::UNIX_EPOCH;
            format!("{stored:?}")
        }
        Err(e) => format!("{e:?}"),
    }
}

/// PostgreSQL and the reference (`MemoryStorage`) set up alike: the same four users (alice,
/// bob, carol, dave) and a group of the first three; with the sends of a mixed run to them
/// (direct and group sends, retries, conflicts, strangers, missing users).
struct Twins {
    _db: TestDatabase,
    pg: PostgresStorage,
    memory: minichat_core::storage::MemoryStorage,
    users: [UserId; 4],
    sends: Vec<ValidMessage>,
}

async fn twins() -> Twins {
    let db = TestDatabase::create().await;
    let pg = connect(db.url()).await;
    let memory = minichat_core::storage::MemoryStorage::new();
    let mut ids = Vec::new();
    for name in ["alice", "bob", "carol", "dave"] {
        let u = user(&pg, name).await;
        let m = NewUser {
            username: name.into(),
            display_name: None,
        }
        .validate()
        .unwrap();
        assert_eq!(memory.create_user(&m).await.unwrap().id, u);
        ids.push(u);
    }
    let [alice, bob, carol, dave] = ids[..] else {
        unreachable!()
    };
    let new_group = minichat_core::model::NewGroup {
        creator_id: alice,
        title: "a group".into(),
        member_ids: vec![bob, carol],
    }
    .validate(10)
    .unwrap();
    let made = memory.create_group(&new_group).await.unwrap();
    let admin = admin(db.url()).await;
    let g = group(&admin, &[alice, bob, carol]).await;
    assert_eq!(made.event.conversation.id, g);
    // The `created` event took seq 1 of each member in the reference; here too.
    admin
        .execute(
            "UPDATE users SET last_seq = last_seq + 1 WHERE id = ANY($1)",
            &[&vec![alice, bob, carol]],
        )
        .await
        .unwrap();
    let missing = 999_999;
    let sends = vec![
        message(alice, bob, "hi", None),
        message(bob, alice, "yo", Some("k1")),
        to_conversation(alice, g, "g1", Some("k1")),
        to_conversation(carol, g, "g2", None),
        to_conversation(dave, g, "nope", Some("k2")),
        to_conversation(alice, g, "g1", Some("k1")),
        to_conversation(alice, g, "g1x", Some("k1")),
        message(alice, bob, "g1", Some("k1")),
        message(bob, alice, "yo", Some("k1")),
        message(bob, carol, "a new pair", None),
        to_conversation(carol, missing, "nope", None),
        message(dave, alice, "x", Some("k2")),
        message(missing, alice, "x", None),
        message(alice, missing, "x", None),
        to_conversation(bob, g, "g3", Some("k9")),
    ];
    Twins {
        _db: db,
        pg,
        memory,
        users: [alice, bob, carol, dave],
        sends,
    }
}

impl Twins {
    async fn assert_same_seqs(&self) {
        for user in self.users {
            assert_eq!(
                self.pg.current_seq(user).await.unwrap(),
                self.memory.current_seq(user).await.unwrap()
            );
        }
    }
}

/// The same sends, one at a time, through the reference (`MemoryStorage`) and PostgreSQL: the
/// same answers (ids, conversations, seqs, recipients, retries, errors) and the same seqs after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_sends_answer_as_the_memory_reference_does() {
    let twins = twins().await;
    for (i, m) in twins.sends.iter().enumerate() {
        let (want, got) = (
            comparable(twins.memory.store_message(m).await),
            comparable(twins.pg.store_message(m).await),
        );
        assert_eq!(got, want, "send {i}");
    }
    twins.assert_same_seqs().await;
}

/// The same sends as one run (`store_messages`: one batch on PostgreSQL) answer as the
/// reference answers them one at a time; and a run longer than a batch keeps its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_answers_as_the_memory_reference_does_one_send_at_a_time() {
    let twins = twins().await;
    let run: Vec<&ValidMessage> = twins.sends.iter().collect();
    let got = twins.pg.store_messages(&run).await;
    assert_eq!(got.len(), run.len());
    assert_eq!(twins.pg.largest_batch(), run.len(), "one batch");
    for (i, (m, got)) in run.iter().zip(got).enumerate() {
        let want = comparable(twins.memory.store_message(m).await);
        assert_eq!(comparable(got), want, "send {i}");
    }
    twins.assert_same_seqs().await;

    // 600 of alice's to bob: three batches (at most 256 each), seqs in the run's order.
    let [alice, bob, ..] = twins.users;
    let before = twins.pg.current_seq(alice).await.unwrap();
    let long: Vec<ValidMessage> = (0..600)
        .map(|i| message(alice, bob, &format!("m{i}"), Some(&format!("long{i}"))))
        .collect();
    let got = twins
        .pg
        .store_messages(&long.iter().collect::<Vec<_>>())
        .await;
    let seqs: Vec<i64> = got.iter().map(|g| g.as_ref().unwrap().sender_seq).collect();
    let expected: Vec<i64> = (before + 1..=before + 600).collect();
    assert_eq!(seqs, expected);
    assert_eq!(twins.pg.largest_batch(), 256);
    let contents: Vec<&str> = got
        .iter()
        .map(|g| g.as_ref().unwrap().message.content.as_str())
        .collect();
    assert_eq!(contents[599], "m599");
}

/// A TCP relay to PostgreSQL that the test can cut (closing every relayed connection).
struct Relay {
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    async fn start(port: u16) -> Relay {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind relay");
        let port = listener.local_addr().unwrap().port();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut relays = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        relays.spawn(async move {
                            if let Ok(mut outbound) = TcpStream::connect("127.0.0.1:5432").await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                }
            }
            relays.shutdown().await;
        });
        Relay {
            port,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn cut(&mut self) {
        if let (Some(stop), Some(task)) = (self.stop.take(), self.task.take()) {
            let _ = stop.send(());
            task.await.expect("relay task");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_mid_batch_fails_every_waiting_send_and_stores_none() {
    let db = TestDatabase::create().await;
    let mut relay = Relay::start(0).await;
    let url = format!("postgres://postgres@127.0.0.1:{}/{}", relay.port, db.name());
    let storage = Arc::new(connect(&url).await);
    let (alice, bob) = (user(&storage, "alice").await, user(&storage, "bob").await);
    storage
        .store_message(&message(alice, bob, "warm", None))
        .await
        .unwrap();

    // Hold alice's row from outside, so the batches of the sends below wait on the lock,
    // mid-transaction, until the cut.
    let admin = admin(db.url()).await;
    admin
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM users WHERE id = {alice} FOR UPDATE"
        ))
        .await
        .unwrap();
    let mut sends = JoinSet::new();
    for i in 0..20 {
        let storage = storage.clone();
        let m = message(alice, bob, &format!("lost {i}"), Some(&format!("k{i}")));
        sends.spawn(async move { storage.store_message(&m).await });
    }
    let run_storage = storage.clone();
    let run = tokio::spawn(async move {
        let run: Vec<ValidMessage> = (0..5)
            .map(|i| message(alice, bob, &format!("run {i}"), None))
            .collect();
        run_storage
            .store_messages(&run.iter().collect::<Vec<_>>())
            .await
    });
    // A writer is blocked on the lock: its transaction is open mid-batch.
    until_waiting(&admin, 1).await;
    let started = Instant::now();
    relay.cut().await;
    while let Some(done) = sends.join_next().await {
        let got = done.unwrap();
        assert!(
            matches!(
                got,
                Err(Error::Unavailable {
                    backend: Backend::Storage,
                    ..
                })
            ),
            "{got:?}"
        );
    }
    let run = run.await.unwrap();
    assert_eq!(run.len(), 5);
    for got in run {
        assert!(matches!(got, Err(Error::Unavailable { .. })), "{got:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    admin.batch_execute("ROLLBACK").await.unwrap();
    let stored: i64 = admin
        .query_one("SELECT count(*) FROM messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1, "only the warm-up message is stored");

    // Restored on the same port: sends succeed again, seqs continue without a gap.
    let _relay = Relay::start(relay.port).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let stored = loop {
        match storage
            .store_message(&message(alice, bob, "back", Some("k0")))
            .await
        {
            Ok(stored) => break stored,
            Err(e) => assert!(Instant::now() < deadline, "not back: {e:?}"),
        }
        tokio::task::yield_now().await;
    };
    assert!(stored.created);
    assert_eq!((stored.sender_seq, stored.seq_of(bob)), (2, Some(2)));
}

/// Runs queued behind each other fill batches up to the bound without splitting a run: one that
/// does not fit waits, first in line, for the next batch; each keeps its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_runs_are_never_split_across_batches() {
    let db = TestDatabase::create().await;
    let storage = Arc::new(connect(db.url()).await);
    let mut ids = Vec::new();
    for name in ["alice", "bob", "carol", "dave", "erin"] {
        ids.push(user(&storage, name).await);
    }
    let [alice, bob, carol, dave, erin] = ids[..] else {
        unreachable!()
    };
    // Both writers busy on erin's locked row, so the runs below queue up behind them.
    let admin = admin(db.url()).await;
    let blockers = busy_writers(&admin, &storage, dave, erin).await;
    let mut runs = Vec::new();
    for (sender, receiver) in [(alice, bob), (bob, carol), (carol, alice)] {
        let storage = storage.clone();
        runs.push(tokio::spawn(async move {
            let run: Vec<ValidMessage> = (0..150)
                .map(|i| message(sender, receiver, &format!("{sender}:{i}"), None))
                .collect();
            storage
                .store_messages(&run.iter().collect::<Vec<_>>())
                .await
        }));
    }
    // Every run in the queue before the writers are released.
    until_queued(&storage, runs.len()).await;
    admin.batch_execute("ROLLBACK").await.unwrap();
    for b in blockers {
        assert!(b.await.unwrap().unwrap().created);
    }
    for (k, run) in runs.into_iter().enumerate() {
        let got = run.await.unwrap();
        let contents: Vec<String> = got
            .iter()
            .map(|g| g.as_ref().expect("stored").message.content.clone())
            .collect();
        let sender = [alice, bob, carol][k];
        let expected: Vec<String> = (0..150).map(|i| format!("{sender}:{i}")).collect();
        assert_eq!(contents, expected);
        // Each run's own seqs: consecutive, in its order.
        let seqs: Vec<i64> = got.iter().map(|g| g.as_ref().unwrap().sender_seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    }
    // Two runs of 150 do not fit in one batch of at most 256: each had a batch of its own.
    assert_eq!(storage.largest_batch(), 150);
    for user in [alice, bob, carol] {
        let expected: Vec<i64> = (1..=300).collect();
        assert_eq!(stored_seqs(&admin, user).await, expected, "user {user}");
    }
}

/// Every way a batch's transaction fails ends it: before its last round trip (with `ROLLBACK`),
/// in its last one (the `COMMIT` pipelined behind a failed insert rolls back), and in either of a
/// group batch's last two trips. The batch's send fails and stores nothing, no connection is
/// left in a transaction, and the same send stores once the cause is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_stores_nothing_and_leaves_no_transaction_open() {
    let db = TestDatabase::create().await;
    let storage = connect(db.url()).await;
    let admin = admin(db.url()).await;
    let (alice, bob, carol) = (
        user(&storage, "alice").await,
        user(&storage, "bob").await,
        user(&storage, "carol").await,
    );
    let g = group(&admin, &[alice, bob, carol]).await;
    storage
        .store_message(&message(alice, bob, "warm", None))
        .await
        .unwrap();
    // (table, the check a row fails, the send whose batch writes such a row)
    let new_direct = ("conversations", "kind <> 'direct'");
    let boom = ("messages", "content <> 'boom'");
    let stream_entry = ("stream_entries", "seq < 0");
    let cases = [
        // Before the last trip: making carol and bob's direct conversation.
        (new_direct, message(carol, bob, "a new pair", None)),
        // The last trip of a one-to-one batch: the insert, with COMMIT behind it.
        (boom, message(alice, bob, "boom", None)),
        // A group batch's first of two last trips.
        (boom, to_conversation(alice, g, "boom", None)),
        // A group batch's stream entries, with COMMIT beside them.
        (
            stream_entry,
            to_conversation(alice, g, "to the group", None),
        ),
    ];
    let counts = "SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM stream_entries)
                        + (SELECT count(*) FROM conversations)";
    let in_transaction = "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND state LIKE 'idle in transaction%'";
    for ((table, check), send) in cases {
        admin
            .batch_execute(&format!(
                "ALTER TABLE {table} ADD CONSTRAINT fails_here CHECK ({check}) NOT VALID"
            ))
            .await
            .unwrap();
        let before: i64 = admin.query_one(counts, &[]).await.unwrap().get(0);
        let got = storage.store_message(&send).await;
        assert!(
            matches!(
                got,
                Err(Error::Unavailable {
                    backend: Backend::Storage,
                    ..
                })
            ),
            "{table}: {got:?}"
        );
        // The failed send was answered after its transaction ended.
        let open: i64 = admin.query_one(in_transaction, &[]).await.unwrap().get(0);
        assert_eq!(open, 0, "{table}: a connection was left in a transaction");
        let after: i64 = admin.query_one(counts, &[]).await.unwrap().get(0);
        assert_eq!(after, before, "{table}: the failed batch wrote rows");

        admin
            .batch_execute(&format!("ALTER TABLE {table} DROP CONSTRAINT fails_here"))
            .await
            .unwrap();
        let stored = storage
            .store_message(&send)
            .await
            .expect("stored once fixed");
        assert!(stored.created);
        let open: i64 = admin.query_one(in_transaction, &[]).await.unwrap().get(0);
        assert_eq!(open, 0, "{table}: a connection was left in a transaction");
    }
    // Every seq given once: nothing the failed batches took stayed taken.
    for user in [alice, bob, carol] {
        let seqs = stored_seqs(&admin, user).await;
        let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, expected, "user {user}");
    }
}

/// A run longer than a batch goes in several batches, in order; when one of them fails, the
/// rest of the run is not stored (a later message never lands without an earlier one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_stops_at_its_first_failed_batch() {
    let db = TestDatabase::create().await;
    let storage = connect(db.url()).await;
    let admin = admin(db.url()).await;
    let (alice, bob) = (user(&storage, "alice").await, user(&storage, "bob").await);
    admin
        .batch_execute(
            "ALTER TABLE messages ADD CONSTRAINT fails_here CHECK (content <> 'boom') NOT VALID",
        )
        .await
        .unwrap();
    // 300 sends: more than one batch (at most 256), the first of them refused by PostgreSQL.
    let run: Vec<ValidMessage> = (0..300)
        .map(|i| {
            let content = if i == 0 {
                "boom".into()
            } else {
                format!("{i}")
            };
            message(alice, bob, &content, None)
        })
        .collect();
    let got = storage
        .store_messages(&run.iter().collect::<Vec<_>>())
        .await;
    assert_eq!(got.len(), run.len());
    for (i, answer) in got.iter().enumerate() {
        assert!(
            matches!(answer, Err(Error::Unavailable { .. })),
            "send {i}: {answer:?}"
        );
    }
    let stored: i64 = admin
        .query_one("SELECT count(*) FROM messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "a later batch of the run was stored");
}
