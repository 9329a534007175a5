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
//! 3. opens bob's event stream ([`Chat::stream`]), as the server does for each of his WebSocket
//!    connections: events in seq order, none missing, none twice;
//! 4. sends a message from alice to bob through [`ChatService::send_message`], the same call the
//!    REST and WebSocket endpoints make;
//! 5. receives it on bob's stream and prints it: the exact JSON frame a WebSocket client of bob
//!    would get, the message plus `seq`, bob's own update sequence number;
//! 6. closes the stream, lets alice send two more, and reopens it with `since` = the last seq
//!    bob saw: the two are replayed from storage, in order, then the stream continues live.
//!
//! Swap [`Chat::in_memory`] for [`Chat::connect`] with a [`minichat::ChatConfig`] naming a
//! `database_url` and a `redis_url` and the same code runs against PostgreSQL and Redis, with
//! delivery across every node that shares them.

use minichat::stream::{EventStream, Item, Source};
use minichat::{Chat, ChatService, NewMessage, NewUser, UserId};
use std::time::Duration;

type Error = Box<dyn std::error::Error>;

/// The stream's next item. Delivery is immediate; the timeout only keeps a broken build from
/// hanging forever.
async fn next(stream: &mut EventStream) -> Result<Item, Error> {
    let item = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .map_err(|_| "no event within 5 s")?
        .map_err(|end| format!("stream ended: {end:?}"))?;
    Ok(item)
}

/// Where an item came from: live from the hub, or read from storage.
fn origin(item: &Item) -> &'static str {
    match item.source {
        Source::Live { .. } => "live",
        Source::Replay => "replayed",
        Source::Gap => "gap filled",
    }
}

fn message(sender_id: UserId, receiver_id: UserId, content: &str) -> NewMessage {
    NewMessage {
        sender_id,
        receiver_id: Some(receiver_id),
        conversation_id: None,
        content: content.into(),
        client_id: None,
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
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

    // Every event of bob's from now on reaches this stream. Dropping it unsubscribes.
    let mut inbox = chat.stream(bob.id, None).await?;

    let sent = chat
        .send_message(message(alice.id, bob.id, "  Hello, Bob!  "), None)
        .await?;
    println!(
        "sent:  message {} (stored content {:?}), seq {} for bob, delivered live: {}",
        sent.message.id, sent.message.content, sent.recipients[0].1, sent.delivered
    );

    let item = next(&mut inbox).await?;
    println!(
        "bob received (seq {:?}, {}): {}",
        item.event.seq,
        origin(&item),
        String::from_utf8_lossy(&item.event.payload)
    );
    // The frame is JSON: parse it back to check it is the message just sent.
    let frame: serde_json::Value = serde_json::from_slice(&item.event.payload)?;
    assert_eq!(frame["id"], sent.message.id);
    assert_eq!(frame["content"], "Hello, Bob!");
    assert_eq!(frame["seq"], sent.recipients[0].1);

    // Bob goes away, keeping the last seq he saw; alice sends twice meanwhile.
    let since = inbox.last_seq();
    drop(inbox);
    for text in ["Are you there?", "Call me back."] {
        chat.send_message(message(alice.id, bob.id, text), None)
            .await?;
    }
    // Reopened with `since`: what he missed comes from storage, in order, exactly once.
    let mut inbox = chat.stream(bob.id, Some(since)).await?;
    for expected in ["Are you there?", "Call me back."] {
        let item = next(&mut inbox).await?;
        let frame: serde_json::Value = serde_json::from_slice(&item.event.payload)?;
        println!(
            "bob caught up (seq {:?}, {}): {}",
            item.event.seq,
            origin(&item),
            frame["content"]
        );
        assert_eq!(frame["content"], expected);
    }
    assert_eq!(inbox.last_seq(), since + 2);
    Ok(())
}
