//! The resumable stream over PostgreSQL: a storage read the stream started must not hold its
//! connection while the stream's reader is busy elsewhere.
//!
//! The WebSocket server polls a socket's stream and its incoming frames side by side; when a
//! frame (a send) comes in while the stream is reading a page from storage, the server turns
//! to the send and stops polling the stream. Were the read a future polled only by the
//! stream, it would keep its pooled connection until the send returned; with every connection
//! held that way, the sends would wait for one that none of them gives back, until the
//! backend budget failed them all (what collapsed the groups benchmark). Each test makes its
//! own database.

use futures_util::FutureExt;
use minichat_core::test_support::TestDatabase;
use minichat_core::{Chat, ChatConfig, ChatService, NewMessage, NewUser};
use std::time::Duration;

/// Long enough that a send which waited for a held connection fails clearly, short enough to
/// keep the test quick.
const BUDGET: Duration = Duration::from_secs(3);
/// How long the test waits for an event it expects.
const DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_read_left_unpolled_does_not_hold_the_connection_a_send_needs() {
    let db = TestDatabase::create().await;
    let chat = Chat::connect(&ChatConfig {
        database_url: Some(db.url().to_string()),
        // One connection: the stream's read and the send must take turns on it.
        database_pool_size: 1,
        backend_timeout: BUDGET,
        ..ChatConfig::default()
    })
    .await
    .expect("connects");
    let user = |name: &str| NewUser {
        username: name.into(),
        display_name: None,
    };
    let alice = chat.create_user(user("alice")).await.expect("alice").id;
    let bob = chat.create_user(user("bob")).await.expect("bob").id;
    chat.send_message(NewMessage::to_user(alice, bob, "stored"), None)
        .await
        .expect("the first send");

    // Bob's stream from the start: its first `next` reads the stored message.
    let mut stream = chat.stream(bob, Some(0)).await.expect("opens");
    // Start that read, then turn away from the stream, as the server does when a frame
    // comes in, for a send of bob's own.
    let first = stream.next().now_or_never();
    let sent = chat
        .send_message(
            NewMessage::to_user(bob, alice, "while the read waits"),
            None,
        )
        .await;
    assert!(
        sent.is_ok(),
        "the send got the connection back from the stream's read: {sent:?}"
    );

    // The stream goes on from where it was: the stored message, then bob's own send.
    let mut contents = Vec::new();
    if let Some(item) = first {
        contents.push(item.expect("an item"));
    }
    while contents.len() < 2 {
        let item = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("the stream goes on")
            .expect("an item");
        contents.push(item);
    }
    let texts: Vec<String> = contents
        .iter()
        .map(|item| {
            let frame: serde_json::Value =
                serde_json::from_slice(&item.event.payload).expect("JSON");
            frame["content"].as_str().expect("content").to_string()
        })
        .collect();
    assert_eq!(texts, ["stored", "while the read waits"]);
}
