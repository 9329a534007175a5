//! Tests of the PostgreSQL storage against a real server.
//!
//! This file exists to show that `PostgresStorage` keeps the `Storage` contract exactly as
//! `MemoryStorage` (the reference) does, and that it holds up where memory never has to:
//! concurrent sends, restarts, and a database that goes away (migrations have their own file,
//! `postgres_migrations.rs`). Each test makes its own database (`TestDatabase`), so the tests
//! run in parallel and leave nothing behind. They need PostgreSQL at 127.0.0.1:5432 (user
//! `postgres`, trust auth), or `MINICHAT_TEST_PG_ADMIN_URL`.

use chrono::{DateTime, Utc};
use minichat_core::model::{
    HistoryRequest, Message, NewGroup, NewMessage, NewUser, Page, StoredMessage, StreamEvent,
    StreamMessage, User, UserId, UserSearchRequest, ValidMessage, ValidUser,
};
use minichat_core::storage::{MemoryStorage, PostgresConfig, PostgresStorage, Storage};
use minichat_core::test_support::{free_port, TestDatabase};
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

fn new_user(username: &str, display_name: Option<&str>) -> ValidUser {
    NewUser {
        username: username.into(),
        display_name: display_name.map(Into::into),
    }
    .validate()
    .expect("valid user")
}

fn new_message(sender: UserId, receiver: UserId, content: &str) -> ValidMessage {
    with_client_id(sender, receiver, content, None)
}

fn with_client_id(
    sender: UserId,
    receiver: UserId,
    content: &str,
    client_id: Option<&str>,
) -> ValidMessage {
    NewMessage {
        sender_id: sender,
        receiver_id: Some(receiver),
        conversation_id: None,
        content: content.into(),
        client_id: client_id.map(Into::into),
    }
    .validate()
    .expect("valid message")
}

fn history(user: UserId, chat_with: Option<UserId>, skip: i64, limit: i64) -> HistoryRequest {
    HistoryRequest {
        user_id: user,
        chat_with,
        conversation_id: None,
        skip,
        limit,
        before_id: None,
    }
}

/// The receiver's seq of a direct message just stored (0 for a retry, which is not delivered
/// again and so has no recipients).
fn receiver_seq(m: &StoredMessage) -> i64 {
    m.recipients.first().map_or(0, |&(_, seq)| seq)
}

/// The messages of a stream with direct messages only (what every test here sends).
fn messages_of(events: Vec<StreamEvent>) -> Vec<StreamMessage> {
    events
        .into_iter()
        .map(|e| match e {
            StreamEvent::Message(m) => m,
            other => panic!("a membership event in a stream of direct messages: {other:?}"),
        })
        .collect()
}

fn ids(messages: &[Message]) -> Vec<i64> {
    messages.iter().map(|m| m.id).collect()
}

/// A message with its timestamp blanked, to compare two backends' clocks-apart answers.
fn timeless(m: &Message) -> Message {
    Message {
        timestamp: DateTime::<Utc>::UNIX_EPOCH,
        ..m.clone()
    }
}

fn timeless_all(ms: &[Message]) -> Vec<Message> {
    ms.iter().map(timeless).collect()
}

/// Runs every operation on PostgreSQL and on the in-memory reference, and checks they agree.
struct Both {
    pg: PostgresStorage,
    mem: MemoryStorage,
}

impl Both {
    async fn create_user(&self, username: &str, display_name: Option<&str>) -> User {
        let user = new_user(username, display_name);
        let pg = self.pg.create_user(&user).await.expect("pg create_user");
        let mem = self.mem.create_user(&user).await.expect("mem create_user");
        assert_eq!(
            (pg.id, &pg.username, &pg.display_name),
            (mem.id, &mem.username, &mem.display_name)
        );
        pg
    }

    async fn send(&self, message: ValidMessage) -> Result<StoredMessage, (Error, Error)> {
        let pg = self.pg.store_message(&message).await;
        let mem = self.mem.store_message(&message).await;
        match (pg, mem) {
            (Ok(pg), Ok(mem)) => {
                assert_eq!(timeless(&pg.message), timeless(&mem.message));
                assert_eq!(
                    (&pg.recipients, pg.sender_seq, pg.created),
                    (&mem.recipients, mem.sender_seq, mem.created)
                );
                Ok(pg)
            }
            (Err(pg), Err(mem)) => {
                assert_eq!(pg.to_string(), mem.to_string());
                Err((pg, mem))
            }
            (pg, mem) => panic!("backends disagree: {pg:?} vs {mem:?}"),
        }
    }

    async fn history(&self, request: HistoryRequest) -> Vec<Message> {
        let query = request.validate().expect("valid query");
        let pg = self.pg.history(&query).await.expect("pg history");
        let mem = self.mem.history(&query).await.expect("mem history");
        assert_eq!(timeless_all(&pg), timeless_all(&mem), "{request:?}");
        pg
    }

    /// The search on both backends; they must return the same users, in the same order.
    async fn search(&self, q: &str, skip: i64, limit: i64) -> Vec<String> {
        let search = UserSearchRequest {
            q: q.into(),
            skip,
            limit,
        }
        .validate()
        .expect("valid search");
        let pg = self.pg.search_users(&search).await.expect("pg search");
        let mem = self.mem.search_users(&search).await.expect("mem search");
        let key = |us: &[User]| -> Vec<(UserId, String, String)> {
            us.iter()
                .map(|u| (u.id, u.username.clone(), u.display_name.clone()))
                .collect()
        };
        assert_eq!(key(&pg), key(&mem), "search {q:?} {skip} {limit}");
        pg.into_iter().map(|u| u.username).collect()
    }

    async fn recent(&self, user: UserId, limit: usize) -> Vec<Message> {
        let pg = self
            .pg
            .recent_received(user, limit)
            .await
            .expect("pg recent");
        let mem = self
            .mem
            .recent_received(user, limit)
            .await
            .expect("mem recent");
        assert_eq!(
            timeless_all(&pg),
            timeless_all(&mem),
            "recent {user} {limit}"
        );
        pg
    }

    async fn events(&self, user: UserId, since: i64, limit: usize) -> Vec<StreamMessage> {
        let pg = messages_of(
            self.pg
                .events_since(user, since, limit)
                .await
                .expect("pg events"),
        );
        let mem = messages_of(
            self.mem
                .events_since(user, since, limit)
                .await
                .expect("mem events"),
        );
        let strip = |v: &[StreamMessage]| -> Vec<StreamMessage> {
            v.iter()
                .map(|e| StreamMessage {
                    message: timeless(&e.message),
                    ..e.clone()
                })
                .collect()
        };
        assert_eq!(strip(&pg), strip(&mem), "events {user} {since} {limit}");
        pg
    }
}

async fn both(db: &TestDatabase) -> Both {
    Both {
        pg: connect(db.url()).await,
        mem: MemoryStorage::new(),
    }
}

#[tokio::test]
async fn users_are_created_listed_and_found() {
    let db = TestDatabase::create().await;
    let s = both(&db).await;
    let alice = s.create_user("alice", Some("Alice A")).await;
    let bob = s.create_user("bob", None).await;
    assert_eq!((alice.id, bob.id), (1, 2));
    assert_eq!(bob.display_name, "bob");

    // A taken username is refused, and does not use up an id.
    let taken = s.pg.create_user(&new_user("alice", None)).await;
    assert!(matches!(taken, Err(Error::UsernameTaken)), "{taken:?}");
    let carol = s.create_user("carol", None).await;
    assert_eq!(carol.id, 3);

    // What create returned is exactly what is read back, timestamps included.
    assert_eq!(s.pg.get_user(alice.id).await.unwrap(), Some(alice.clone()));
    assert_eq!(s.pg.get_user(99).await.unwrap(), None);
    assert_eq!(s.pg.get_user(-1).await.unwrap(), None);

    let page = |skip, limit| Page::new(skip, limit).unwrap();
    let all = s.pg.list_users(page(0, 100)).await.unwrap();
    assert_eq!(all, [alice.clone(), bob.clone(), carol.clone()]);
    assert_eq!(s.pg.list_users(page(1, 1)).await.unwrap(), [bob]);
    assert_eq!(s.pg.list_users(page(2, 10)).await.unwrap(), [carol]);
    assert!(s.pg.list_users(page(3, 10)).await.unwrap().is_empty());
    assert!(s
        .pg
        .list_users(page(i64::MAX, 1000))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn user_search_agrees_with_memory() {
    let db = TestDatabase::create().await;
    let s = both(&db).await;
    for (username, display_name) in [
        ("alice42", "Alice Liddell"),
        ("ALICIA", "Wonder"),
        ("bob", "Alice's friend"),
        ("percent", "100% Real"),
        ("under", "50_50 Club"),
        ("slash", "back\\slash"),
        ("Élan", "élan vital"),
        ("sofia", "ΣΟΦΙΑ"),
        ("İstanbul", "City"),
        ("max", "\u{10FFFF}\u{10FFFF}x"),
    ] {
        s.create_user(username, Some(display_name)).await;
    }
    for i in 1..=30 {
        s.create_user(&format!("user{i}"), Some(&format!("Member {i}")))
            .await;
    }

    // Either name, any case, a prefix only.
    assert_eq!(s.search("ali", 0, 1000).await, ["alice42", "ALICIA", "bob"]);
    assert_eq!(
        s.search("  ALIC ", 0, 1000).await,
        ["alice42", "ALICIA", "bob"]
    );
    assert_eq!(s.search("alice'", 0, 1000).await, ["bob"]);
    assert_eq!(s.search("wonder", 0, 1000).await, ["ALICIA"]);
    assert!(
        s.search("lice", 0, 1000).await.is_empty(),
        "not a substring"
    );
    assert!(s.search("zz", 0, 1000).await.is_empty());
    // LIKE's metacharacters are plain characters.
    assert_eq!(s.search("100%", 0, 1000).await, ["percent"]);
    assert!(s.search("10%", 0, 1000).await.is_empty());
    assert!(s.search("%", 0, 1000).await.is_empty());
    assert_eq!(s.search("50_", 0, 1000).await, ["under"]);
    assert!(s.search("5_", 0, 1000).await.is_empty());
    assert_eq!(s.search("back\\", 0, 1000).await, ["slash"]);
    assert!(s.search("\\", 0, 1000).await.is_empty());
    // Beyond ASCII, folded the same way by both.
    assert_eq!(s.search("ÉL", 0, 1000).await, ["Élan"]);
    assert_eq!(s.search("σοφ", 0, 1000).await, ["sofia"]);
    assert_eq!(s.search("istan", 0, 1000).await, ["İstanbul"]);
    // The prefix with no end above it (every character U+10FFFF).
    assert_eq!(s.search("\u{10FFFF}", 0, 1000).await, ["max"]);
    assert_eq!(s.search("\u{10FFFF}\u{10FFFF}x", 0, 1000).await, ["max"]);
    assert!(s
        .search("\u{10FFFF}\u{10FFFF}\u{10FFFF}", 0, 1000)
        .await
        .is_empty());

    // Ordered by id, then paged.
    let ones: Vec<String> = [1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
        .iter()
        .map(|i| format!("user{i}"))
        .collect();
    assert_eq!(s.search("user1", 0, 1000).await, ones);
    assert_eq!(s.search("member 1", 0, 1000).await, ones);
    assert_eq!(s.search("user", 0, 5).await.len(), 5);
    assert_eq!(
        s.search("user", 5, 5).await,
        ["user6", "user7", "user8", "user9", "user10"]
    );
    assert_eq!(s.search("user", 28, 5).await, ["user29", "user30"]);
    assert!(s.search("user", 30, 5).await.is_empty());
    assert!(s.search("user", i64::MAX, 1000).await.is_empty());
}

#[tokio::test]
async fn text_round_trips_byte_exact() {
    let db = TestDatabase::create().await;
    let s = both(&db).await;
    let tricky = [
        "'; DROP TABLE users; --",
        "Robert'); DELETE FROM messages;--",
        r#"quotes " ' ` and \ backslash \\ and $1 and %s"#,
        "Жан-Поль 名前です 🦀 e\u{301} \u{200b}zero-width",
        "line\nbreak\ttab",
    ];
    let mut users = Vec::new();
    for (i, display) in tricky.iter().enumerate() {
        let user = s.create_user(&format!("Юзер名{i}"), Some(display)).await;
        assert_eq!(user.display_name, *display);
        assert_eq!(s.pg.get_user(user.id).await.unwrap(), Some(user.clone()));
        users.push(user);
    }
    for (i, content) in tricky.iter().enumerate() {
        let to = users[(i + 1) % users.len()].id;
        let sent = s.send(new_message(users[i].id, to, content)).await.unwrap();
        assert_eq!(sent.message.content, *content);
        assert_eq!(sent.message.sender_username, users[i].username);
        // What was returned is exactly what is read back, timestamp included.
        assert_eq!(s.recent(to, 1).await, [sent.message]);
    }
    let listed = s.pg.list_users(Page::new(0, 100).unwrap()).await.unwrap();
    assert_eq!(listed, users);
}

#[tokio::test]
async fn seqs_count_every_message_a_user_sent_or_received() {
    let db = TestDatabase::create().await;
    let s = both(&db).await;
    let a = s.create_user("alice", None).await.id;
    let b = s.create_user("bob", None).await.id;
    let c = s.create_user("carol", None).await.id;
    let seqs = |m: StoredMessage| (m.message.id, m.sender_seq, receiver_seq(&m), m.created);
    assert_eq!(
        seqs(s.send(new_message(a, b, "1")).await.unwrap()),
        (1, 1, 1, true)
    );
    assert_eq!(
        seqs(s.send(new_message(b, a, "2")).await.unwrap()),
        (2, 2, 2, true)
    );
    assert_eq!(
        seqs(s.send(new_message(c, a, "3")).await.unwrap()),
        (3, 1, 3, true)
    );
    assert_eq!(
        seqs(s.send(new_message(a, c, "4")).await.unwrap()),
        (4, 4, 2, true)
    );
    let stream: Vec<_> = s
        .events(a, 0, 100)
        .await
        .into_iter()
        .map(|e| (e.seq, e.message.id))
        .collect();
    assert_eq!(stream, [(1, 1), (2, 2), (3, 3), (4, 4)]);
    // Content is stored stripped, as validated.
    let padded = s.send(new_message(b, c, "  padded \n")).await.unwrap();
    assert_eq!(padded.message.content, "padded");
    assert_eq!((padded.sender_seq, receiver_seq(&padded)), (3, 3));
}

#[tokio::test]
async fn a_retried_client_id_returns_the_stored_message() {
    let db = TestDatabase::create().await;
    let s = both(&db).await;
    let a = s.create_user("alice", None).await.id;
    let b = s.create_user("bob", None).await.id;
    let c = s.create_user("carol", None).await.id;

    let first = s
        .send(with_client_id(a, b, "hello", Some("k1")))
        .await
        .unwrap();
    assert!(first.created);
    let retry = s
        .send(with_client_id(a, b, " hello ", Some("k1")))
        .await
        .unwrap();
    assert!(!retry.created);
    assert_eq!(retry.message, first.message, "same message, same timestamp");
    assert_eq!((retry.sender_seq, retry.recipients.is_empty()), (1, true));

    // A different message under the same key is a conflict; nothing is stored.
    for conflicting in [
        with_client_id(a, b, "other text", Some("k1")),
        with_client_id(a, c, "hello", Some("k1")),
    ] {
        let (pg, _) = s.send(conflicting).await.unwrap_err();
        assert!(matches!(pg, Error::ClientIdConflict), "{pg:?}");
    }
    // Keys belong to their sender: bob may use k1 too.
    let bobs = s
        .send(with_client_id(b, a, "hello", Some("k1")))
        .await
        .unwrap();
    assert!(bobs.created);
    assert_eq!(
        (bobs.message.id, bobs.sender_seq, receiver_seq(&bobs)),
        (2, 2, 2)
    );
    // No retry took a seq.
    let next = s.send(new_message(a, b, "next")).await.unwrap();
    assert_eq!(
        (next.message.id, next.sender_seq, receiver_seq(&next)),
        (3, 3, 3)
    );
    assert_eq!(s.events(a, 0, 100).await.len(), 3);

    // Replayed, a message carries its client id for its sender only (both backends agree).
    let keys = |events: &[StreamMessage]| -> Vec<(i64, Option<String>)> {
        events
            .iter()
            .map(|e| (e.seq, e.client_id.clone()))
            .collect()
    };
    assert_eq!(
        keys(&s.events(a, 0, 100).await),
        [(1, Some("k1".into())), (2, None), (3, None)]
    );
    assert_eq!(
        keys(&s.events(b, 0, 100).await),
        [(1, None), (2, Some("k1".into())), (3, None)]
    );
    assert_eq!(keys(&s.events(a, 1, 1).await), [(2, None)]);
}

#[tokio::test]
async fn unknown_sender_or_receiver_stores_nothing() {
    let db = TestDatabase::create().await;
    let s = both(&db).await;
    let a = s.create_user("alice", None).await.id;
    let b = s.create_user("bob", None).await.id;
    s.send(new_message(a, b, "before")).await.unwrap();

    for (sender, receiver, expected) in [
        (99, b, "Sender not found"),
        (a, 99, "Receiver not found"),
        // Both unknown: the sender is reported.
        (98, 99, "Sender not found"),
        (99, 1, "Sender not found"),
    ] {
        let (pg, _) = s
            .send(with_client_id(sender, receiver, "lost", Some("k")))
            .await
            .unwrap_err();
        assert_eq!(pg.to_string(), expected);
        assert!(matches!(
            pg,
            Error::SenderNotFound | Error::ReceiverNotFound
        ));
    }
    // Nothing was stored and no seq or id was used up.
    let after = s.send(new_message(b, a, "after")).await.unwrap();
    assert_eq!(
        (after.message.id, after.sender_seq, receiver_seq(&after)),
        (2, 2, 2)
    );
    assert_eq!(s.history(history(a, None, 0, 100)).await.len(), 2);
}

#[tokio::test]
async fn history_recent_and_replay_agree_with_memory() {
    let db = TestDatabase::create().await;
    let s = both(&db).await;
    let mut u = Vec::new();
    for name in ["alice", "bob", "carol", "dave"] {
        u.push(s.create_user(name, None).await.id);
    }
    // 40 messages in a fixed, irregular pattern over every pair and direction, every third
    // with a client id.
    for i in 0..40usize {
        let from = u[(i * 7) % 4];
        let to = u[(i * 7 + 1 + i % 3) % 4];
        let key = (i % 3 == 0).then(|| format!("key {i}"));
        s.send(with_client_id(
            from,
            to,
            &format!("message {i}"),
            key.as_deref(),
        ))
        .await
        .unwrap();
    }
    let (alice, bob) = (u[0], u[1]);

    // By user: every message alice sent or received, newest first, paged.
    let all = s.history(history(alice, None, 0, 1000)).await;
    assert!(all.len() > 10);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    assert!(all
        .iter()
        .all(|m| m.sender_id == alice || m.receiver_id == Some(alice)));
    let page = s.history(history(alice, None, 3, 5)).await;
    assert_eq!(ids(&page), ids(&all[3..8]));
    assert!(s.history(history(alice, None, 1000, 5)).await.is_empty());

    // By pair: only alice <-> bob, in both directions.
    let pair = s.history(history(alice, Some(bob), 0, 1000)).await;
    assert!(pair.iter().any(|m| m.sender_id == alice) && pair.iter().any(|m| m.sender_id == bob));
    let expected: Vec<i64> = all
        .iter()
        .filter(|m| m.sender_id == bob || m.receiver_id == Some(bob))
        .map(|m| m.id)
        .collect();
    assert_eq!(ids(&pair), expected);
    assert_eq!(
        ids(&s.history(history(alice, Some(bob), 1, 2)).await),
        expected[1..3]
    );
    // "With yourself" means every message of the user, as in memory.
    assert_eq!(s.history(history(alice, Some(alice), 0, 1000)).await, all);
    // An unknown user or peer has no history.
    assert!(s.history(history(99, None, 0, 10)).await.is_empty());
    assert!(s.history(history(alice, Some(99), 0, 10)).await.is_empty());

    // Cursor: strictly below before_id, then paged.
    let cursor = all[6].id;
    for (chat_with, skip, limit) in [
        (None, 0, 4),
        (None, 2, 3),
        (Some(bob), 0, 100),
        (Some(bob), 1, 1),
    ] {
        let request = HistoryRequest {
            before_id: Some(cursor),
            ..history(alice, chat_with, skip, limit)
        };
        let got = s.history(request).await;
        assert!(got.iter().all(|m| m.id < cursor));
    }
    let below = s
        .history(HistoryRequest {
            before_id: Some(cursor),
            ..history(alice, None, 0, 4)
        })
        .await;
    assert_eq!(ids(&below), ids(&all[7..11]));
    assert!(s
        .history(HistoryRequest {
            before_id: Some(1),
            ..history(alice, None, 0, 10)
        })
        .await
        .is_empty());

    // Recent: newest received first.
    for user in &u {
        let recent = s.recent(*user, 5).await;
        assert!(recent.len() <= 5);
        assert!(recent.iter().all(|m| m.receiver_id == Some(*user)));
        assert!(recent.windows(2).all(|w| w[0].id > w[1].id));
        assert_eq!(
            s.recent(*user, 1000).await.len(),
            all_received(&s, *user).await
        );
    }
    assert!(s.recent(alice, 0).await.is_empty());
    assert!(s.recent(99, 10).await.is_empty());

    // Replay: the user's stream above a seq, in seq order, limited.
    for user in &u {
        let stream = s.events(*user, 0, 1000).await;
        let seqs: Vec<i64> = stream.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=stream.len() as i64).collect::<Vec<_>>());
        // A client id is replayed to its sender only, and only where the send had one.
        for e in &stream {
            let n: usize = e.message.content["message ".len()..].parse().unwrap();
            let sent_with = (n % 3 == 0).then(|| format!("key {n}"));
            let expected = sent_with.filter(|_| e.message.sender_id == *user);
            assert_eq!(e.client_id, expected, "{e:?}");
        }
        assert_eq!(s.events(*user, 3, 4).await, stream[3..7]);
        assert!(s.events(*user, stream.len() as i64, 10).await.is_empty());
        assert_eq!(s.events(*user, -5, 2).await, stream[..2]);
        assert!(s.events(*user, 0, 0).await.is_empty());
    }
    assert!(s.events(99, 0, 10).await.is_empty());
}

async fn all_received(s: &Both, user: UserId) -> usize {
    let all = s.history(history(user, None, 0, 1000)).await;
    all.iter().filter(|m| m.receiver_id == Some(user)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sends_keep_every_stream_gapless() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 25;
    let db = TestDatabase::create().await;
    let storage = Arc::new(connect(db.url()).await);
    let mut users = Vec::new();
    for name in ["alice", "bob", "carol", "dave"] {
        users.push(storage.create_user(&new_user(name, None)).await.unwrap().id);
    }
    // Overlapping pairs: every user is in four of the eight, in both directions.
    let pairs = [
        (0, 1),
        (1, 2),
        (2, 3),
        (3, 0),
        (0, 2),
        (1, 3),
        (1, 0),
        (3, 2),
    ];
    let mut tasks = JoinSet::new();
    for (t, &(x, y)) in pairs.iter().enumerate() {
        let storage = storage.clone();
        let (x, y) = (users[x], users[y]);
        tasks.spawn(async move {
            let mut stored = Vec::new();
            for i in 0..PER_TASK {
                let (from, to) = if i % 2 == 0 { (x, y) } else { (y, x) };
                let message =
                    with_client_id(from, to, &format!("t{t} m{i}"), Some(&format!("t{t}-{i}")));
                stored.push(storage.store_message(&message).await.expect("store"));
            }
            stored
        });
    }
    let mut sent: HashMap<UserId, Vec<(i64, i64)>> = HashMap::new();
    let mut total = 0;
    while let Some(stored) = tasks.join_next().await {
        for m in stored.expect("task") {
            assert!(m.created);
            sent.entry(m.message.sender_id)
                .or_default()
                .push((m.sender_seq, m.message.id));
            sent.entry(m.message.receiver_id.expect("a direct message"))
                .or_default()
                .push((receiver_seq(&m), m.message.id));
            total += 1;
        }
    }
    assert_eq!(total, TASKS * PER_TASK);
    for user in &users {
        // What the senders were told: each seq exactly once, 1..=n.
        let mut told = sent.remove(user).unwrap_or_default();
        told.sort_unstable();
        let n = told.len() as i64;
        assert_eq!(n, 100, "every user is in four pairs of 25");
        assert_eq!(
            told.iter().map(|(q, _)| *q).collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>()
        );
        // What is stored agrees, and replays in seq order.
        let stream = messages_of(storage.events_since(*user, 0, 1000).await.unwrap());
        let replayed: Vec<(i64, i64)> = stream.iter().map(|e| (e.seq, e.message.id)).collect();
        assert_eq!(replayed, told);
        // A user's row is locked from seq to commit, so within one user's stream ids increase
        // with seq (across users, ids may commit out of order): history (by id) and replay
        // (by seq) list a user's messages in the same order.
        assert!(replayed.windows(2).all(|w| w[0].1 < w[1].1));
        let newest_first: Vec<i64> = storage
            .history(&history(*user, None, 0, 1000).validate().unwrap())
            .await
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(
            newest_first,
            replayed.iter().rev().map(|(_, id)| *id).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn data_survives_a_reconnect() {
    let db = TestDatabase::create().await;
    let (alice, bob, sent) = {
        let first = connect(db.url()).await;
        let alice = first.create_user(&new_user("alice", None)).await.unwrap();
        let bob = first.create_user(&new_user("bob", None)).await.unwrap();
        let sent = first
            .store_message(&with_client_id(alice.id, bob.id, "kept", Some("k")))
            .await
            .unwrap();
        (alice, bob, sent)
    }; // the first pool is closed here
    let second = connect(db.url()).await;
    assert_eq!(
        second.get_user(alice.id).await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(
        second.list_users(Page::new(0, 10).unwrap()).await.unwrap(),
        [alice.clone(), bob.clone()]
    );
    assert_eq!(
        second.recent_received(bob.id, 10).await.unwrap(),
        vec![sent.message.clone()]
    );
    assert_eq!(
        second.events_since(alice.id, 0, 10).await.unwrap(),
        [StreamEvent::Message(StreamMessage {
            seq: 1,
            message: sent.message.clone(),
            client_id: Some("k".into()),
        })]
    );
    assert_eq!(
        second.events_since(bob.id, 0, 10).await.unwrap(),
        [StreamEvent::Message(StreamMessage {
            seq: 1,
            message: sent.message.clone(),
            client_id: None,
        })],
        "the receiver never gets the sender's client id"
    );
    // Seqs and client ids carry over too.
    let retry = second
        .store_message(&with_client_id(alice.id, bob.id, "kept", Some("k")))
        .await
        .unwrap();
    assert_eq!((retry.message, retry.created), (sent.message, false));
    let next = second
        .store_message(&new_message(bob.id, alice.id, "next"))
        .await
        .unwrap();
    assert_eq!((next.sender_seq, receiver_seq(&next)), (2, 2));
}

fn assert_config_error(result: Result<PostgresStorage, Error>, needle: &str) {
    match result {
        Err(Error::Config { setting, reason }) => {
            assert_eq!(setting, "DATABASE_URL");
            assert!(
                reason.contains(needle),
                "{reason:?} should mention {needle:?}"
            );
        }
        Err(other) => panic!("expected a DATABASE_URL config error, got {other:?}"),
        Ok(_) => panic!("expected a DATABASE_URL config error, got a storage"),
    }
}

#[tokio::test]
async fn bad_urls_and_unreachable_servers_are_config_errors() {
    let connect_to = |url: String| async move {
        PostgresStorage::connect(&PostgresConfig {
            url,
            pool_size: 2,
            timeout: minichat_core::DEFAULT_BACKEND_TIMEOUT,
        })
        .await
    };
    let started = Instant::now();
    let closed = format!("postgres://postgres@127.0.0.1:{}/minichat", free_port());
    assert_config_error(
        connect_to(closed.clone()).await,
        "cannot connect to PostgreSQL",
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(
        PostgresStorage::migrate_only(&closed).await,
        Err(Error::Config {
            setting: "DATABASE_URL",
            ..
        })
    ));

    for no_db in [
        "postgres://postgres@127.0.0.1:5432",
        "postgresql://postgres@127.0.0.1:5432/",
        "",
    ] {
        assert_config_error(connect_to(no_db.into()).await, "names no database");
    }
    for malformed in [
        "postgres://postgres@127.0.0.1:notaport/db",
        "mysql://h/db",
        "postgres://postgres@127.0.0.1:5432/db?sslmode=bogus",
    ] {
        assert_config_error(
            connect_to(malformed.into()).await,
            "not a valid PostgreSQL URL",
        );
    }
}

/// A TCP relay to PostgreSQL that the test can cut (closing every relayed connection) and
/// restore on the same port: "the database went away" without touching the real server.
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
            // Every relayed connection is closed, and the listener with it, before `cut`
            // returns: nothing can reach PostgreSQL through this relay afterwards.
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
async fn calls_fail_fast_while_the_database_is_away_and_recover() {
    let db = TestDatabase::create().await;
    let mut relay = Relay::start(0).await;
    let url = format!("postgres://postgres@127.0.0.1:{}/{}", relay.port, db.name());
    let storage = connect(&url).await;
    let alice = storage.create_user(&new_user("alice", None)).await.unwrap();
    let bob = storage.create_user(&new_user("bob", None)).await.unwrap();
    storage.check().await.unwrap();

    let lost_group = NewGroup {
        creator_id: alice.id,
        title: "lost".into(),
        member_ids: vec![bob.id],
    }
    .validate(10)
    .unwrap();
    relay.cut().await;
    let started = Instant::now();
    let unavailable = |r: &Result<(), Error>| {
        matches!(
            r,
            Err(Error::Unavailable {
                backend: Backend::Storage,
                ..
            })
        )
    };
    let results = [
        storage.check().await,
        storage.get_user(alice.id).await.map(drop),
        storage
            .store_message(&new_message(alice.id, bob.id, "lost"))
            .await
            .map(drop),
        storage.events_since(bob.id, 0, 10).await.map(drop),
        storage.create_group(&lost_group).await.map(drop),
        storage
            .conversations(alice.id, Page::new(0, 10).unwrap())
            .await
            .map(drop),
        storage.check().await,
    ];
    for r in &results {
        assert!(unavailable(r), "{r:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // PostgreSQL is back (on the same address): the pool reconnects by itself.
    let _relay = Relay::start(relay.port).await;
    storage.check().await.expect("back");
    let sent = storage
        .store_message(&new_message(alice.id, bob.id, "after"))
        .await
        .unwrap();
    assert_eq!(
        (sent.message.id, sent.sender_seq),
        (1, 1),
        "the failed send and group stored nothing"
    );
    assert_eq!(
        storage
            .conversations(alice.id, Page::new(0, 10).unwrap())
            .await
            .unwrap()
            .len(),
        1,
        "the direct conversation only"
    );
}
