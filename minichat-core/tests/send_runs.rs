//! A sender's run of sends (`ChatService::send_messages`) through the whole chat, on each
//! backend set: memory, memory storage with Redis, PostgreSQL with Redis.
//!
//! This file exists because a run's fan-out differs from one send after another's: its direct
//! messages go to the broker as one call (on Redis, one pipeline with one cache push per
//! receiver in a row), and a group message in the run goes out on its own, in its place. What
//! the receivers see must not differ: every message once, in seq order, the sender's other
//! connections their own copies, the sending connection none. Redis tests use the shared Redis
//! under a prefix of their own; PostgreSQL ones a database of their own.

use minichat_core::model::NewGroup;
use minichat_core::test_support::{delete_redis_prefix, unique_redis_prefix, TestDatabase};
use minichat_core::{Chat, ChatConfig, ChatService, Error, NewMessage, NewUser, Seq, Subscription};
use std::time::Duration;
use tokio::time::timeout;

/// How long a test waits for an event it expects.
const DEADLINE: Duration = Duration::from_secs(10);

fn redis_url() -> String {
    std::env::var("MINICHAT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The next message event of `sub`: its seq and content.
async fn next_message(sub: &mut Subscription) -> (Seq, String) {
    loop {
        let event = match timeout(DEADLINE, sub.recv()).await {
            Ok(Ok(event)) => event,
            Ok(Err(closed)) => panic!("subscription of user {} closed: {closed:?}", sub.user()),
            Err(_) => panic!("no event for user {} within {DEADLINE:?}", sub.user()),
        };
        let json: serde_json::Value = serde_json::from_slice(&event.payload).expect("JSON");
        if json["type"] == "message" {
            let seq = event.seq.expect("a message event has a seq");
            assert_eq!(json["seq"], seq, "the frame carries the event's seq");
            return (seq, json["content"].as_str().expect("content").to_string());
        }
    }
}

/// Sends a run of direct and group messages, with a retry and an invalid one among them, and
/// checks every answer and what each connection receives.
async fn a_run_reaches_everyone_in_order(chat: Chat) {
    let user = |name: &str| NewUser {
        username: name.into(),
        display_name: None,
    };
    let alice = chat.create_user(user("alice")).await.expect("alice").id;
    let bob = chat.create_user(user("bob")).await.expect("bob").id;
    let carol = chat.create_user(user("carol")).await.expect("carol").id;
    let group = chat
        .create_group(NewGroup {
            creator_id: alice,
            title: "three".into(),
            member_ids: vec![bob, carol],
        })
        .await
        .expect("group")
        .id;
    let mut to_bob = chat.subscribe(bob).await.expect("bob subscribes");
    let mut to_carol = chat.subscribe(carol).await.expect("carol subscribes");
    let mut alice_elsewhere = chat.subscribe(alice).await.expect("alice subscribes");
    let mut alice_sending = chat.subscribe(alice).await.expect("alice subscribes again");

    let run = vec![
        NewMessage::to_user(alice, bob, "one"),
        NewMessage::to_user(alice, bob, "two"),
        NewMessage::to_conversation(alice, group, "three"),
        NewMessage::to_user(alice, carol, "four").with_client_id("k"),
        NewMessage::to_user(alice, carol, "four").with_client_id("k"),
        NewMessage::to_user(alice, bob, ""),
        NewMessage::to_user(alice, bob, "five"),
    ];
    let answers = chat.send_messages(run, Some(alice_sending.id())).await;
    assert_eq!(answers.len(), 7, "one answer per send");
    assert!(
        matches!(answers[5], Err(Error::Invalid(_))),
        "the empty message is refused alone: {:?}",
        answers[5]
    );
    let sent: Vec<_> = answers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 5)
        .map(|(i, a)| {
            a.as_ref()
                .unwrap_or_else(|e| panic!("send {i} failed: {e}"))
        })
        .collect();
    let retry = sent[4];
    assert!(!retry.created, "the repeated client_id is a retry");
    assert_eq!(
        retry.message.id, sent[3].message.id,
        "the retry answers the first"
    );
    let created: Vec<_> = sent.iter().filter(|s| s.created).collect();
    assert_eq!(created.len(), 5);
    for pair in created.windows(2) {
        assert_eq!(
            pair[1].sender_seq,
            pair[0].sender_seq + 1,
            "the sender's seqs follow the run's order"
        );
    }
    assert!(
        created.iter().all(|s| s.delivered),
        "every receiver is online"
    );

    // Each receiver gets its messages once, in seq order, without a gap.
    let mut bob_got = Vec::new();
    for _ in 0..4 {
        bob_got.push(next_message(&mut to_bob).await);
    }
    let contents: Vec<&str> = bob_got.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(contents, ["one", "two", "three", "five"]);
    assert!(
        bob_got.windows(2).all(|p| p[1].0 == p[0].0 + 1),
        "{bob_got:?}"
    );
    let carol_got = [
        next_message(&mut to_carol).await,
        next_message(&mut to_carol).await,
    ];
    assert_eq!(
        (carol_got[0].1.as_str(), carol_got[1].1.as_str()),
        ("three", "four")
    );
    assert_eq!(carol_got[1].0, carol_got[0].0 + 1);
    // The sender's other connection gets their own copies in the run's order, with their seqs.
    for s in &created {
        let (seq, content) = next_message(&mut alice_elsewhere).await;
        assert_eq!(
            (seq, content.as_str()),
            (s.sender_seq, s.message.content.as_str())
        );
    }
    // The sending connection gets none of them: the first message it sees is the next one.
    chat.send_message(NewMessage::to_user(bob, alice, "after"), None)
        .await
        .expect("a reply");
    assert_eq!(next_message(&mut alice_sending).await.1, "after");
    // The recent messages of a receiver hold the run's direct messages, newest first.
    let recent = chat.recent_messages(bob).await.expect("recent");
    let contents: Vec<&str> = recent.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["five", "two", "one"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory() {
    a_run_reaches_everyone_in_order(Chat::in_memory()).await;
}

/// Runs the test on a chat with Redis under a prefix of its own (deleted afterwards) and
/// `database_url`'s PostgreSQL, or memory storage without one.
async fn with_redis(database_url: Option<String>) {
    let prefix = unique_redis_prefix();
    let chat = Chat::connect(&ChatConfig {
        database_url,
        redis_url: Some(redis_url()),
        redis_prefix: prefix.clone(),
        ..ChatConfig::default()
    })
    .await
    .expect("connects");
    a_run_reaches_everyone_in_order(chat).await;
    delete_redis_prefix(&redis_url(), &prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_storage_with_redis() {
    with_redis(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_redis() {
    let db = TestDatabase::create().await;
    with_redis(Some(db.url().to_string())).await;
}
