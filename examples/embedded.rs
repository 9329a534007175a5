//! Minichat embedded in a program: the library in-process, with no server and no network.
//!
//! Run it with:
//!
//! ```sh
//! cargo run --example embedded
//! ```
//!
//! What it does:
//!
//! 1. builds a chat whose storage, recent-messages cache and fan-out all live in this process
//!    ([`Chat::in_memory`]: nothing to set up, nothing kept after exit);
//! 2. registers two users, `alice` and `bob`;
//! 3. subscribes to bob's events, as the server does for each of his WebSocket connections;
//! 4. sends a message from alice to bob through [`ChatService::send_message`], the same call the
//!    REST and WebSocket endpoints make;
//! 5. receives the event on bob's subscription and prints it: the exact JSON frame a WebSocket
//!    client of bob would get, the message plus `seq`, bob's own update sequence number.
//!
//! Swap [`Chat::in_memory`] for [`Chat::connect`] with a [`minichat::ChatConfig`] naming a
//! `database_url` and a `redis_url` and the same code runs against PostgreSQL and Redis, with
//! delivery across every node that shares them.

use minichat::{Chat, ChatService, NewMessage, NewUser};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let chat = Chat::in_memory();

    let alice = chat
        .create_user(NewUser {
            username: "alice".into(),
            display_name: Some("Alice".into()),
        })
        .await?;
    let bob = chat
        .create_user(NewUser {
            username: "bob".into(),
            display_name: None,
        })
        .await?;
    println!("users: {alice:?}\n       {bob:?}");

    // Every event sent to bob from now on reaches this subscription. Dropping it unsubscribes.
    let mut inbox = chat.subscribe(bob.id).await?;

    let sent = chat
        .send_message(
            NewMessage {
                sender_id: alice.id,
                receiver_id: bob.id,
                content: "  Hello, Bob!  ".into(),
                client_id: None,
            },
            None,
        )
        .await?;
    println!(
        "sent:  message {} (stored content {:?}), seq {} for bob, delivered live: {}",
        sent.message.id, sent.message.content, sent.receiver_seq, sent.delivered
    );

    // Delivery is immediate; the timeout only keeps a broken build from hanging forever.
    let event = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
        .await
        .map_err(|_| "no event within 5 s")?
        .map_err(|closed| format!("subscription closed: {closed:?}"))?;
    println!(
        "bob received (seq {:?}): {}",
        event.seq,
        String::from_utf8_lossy(&event.payload)
    );

    // The frame is JSON: parse it back to check it is the message just sent.
    let frame: serde_json::Value = serde_json::from_slice(&event.payload)?;
    assert_eq!(frame["id"], sent.message.id);
    assert_eq!(frame["content"], "Hello, Bob!");
    assert_eq!(frame["seq"], sent.receiver_seq);
    Ok(())
}
