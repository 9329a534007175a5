//! The whole send path of the service, on the embedded backends: validate, store (assigning
//! both users' seqs), serialise the event for receiver and sender, record it in the
//! recent-messages cache and hand it to the hub, then the receiver's subscription takes it.
//!
//! ```sh
//! cargo bench --bench send_path
//! ```
//!
//! This is the per-message cost of the core without PostgreSQL and Redis round trips (with them,
//! the storing transaction dominates); the server adds HTTP or WebSocket framing on top.
//! Messages accumulate in memory storage while it runs, as they would in a real process.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use minichat_core::{Chat, ChatService, NewMessage, NewUser};
use std::hint::black_box;

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
    let content =
        "Hello Bob! This is a message of a typical length for a chat, about eighty bytes.";

    let mut group = c.benchmark_group("send_path");
    group.throughput(Throughput::Elements(1));
    group.bench_function("send_and_receive/memory", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let sent = chat
                    .send_message(
                        NewMessage {
                            sender_id: alice,
                            receiver_id: bob,
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

criterion_group!(benches, send_path);
criterion_main!(benches);
