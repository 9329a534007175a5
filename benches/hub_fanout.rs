//! Fan-out cost of the hub, and the cost of serialising the event it fans out.
//!
//! ```sh
//! cargo bench --bench hub_fanout              # full run
//! cargo bench --bench hub_fanout -- --quick   # a quick look
//! ```
//!
//! One event (`Event { seq: Some(1), payload }`, a ~200-byte JSON message frame) is handed to
//! 10,000 local subscribers, in two shapes:
//!
//! - `one_user_10k_conns`: 10,000 subscriptions of user 1, one `Hub::deliver(1, ..)` call (one
//!   shard lock, one pass over the user's connections);
//! - `10k_users_1_conn_each`: one subscription each for users 1..=10,000, one `Hub::deliver` per
//!   user (10,000 lock-and-lookup rounds). The same `Event` is delivered to every user so that only
//!   the hub is measured; in a real send each user's frame is serialised separately (see
//!   `event/message_event` for that cost).
//!
//! The hub never blocks: every subscriber has a bounded queue (the default, 256) and is evicted
//! when it is full, so every queue is emptied after each delivery with `Subscription::try_recv`.
//! Each shape is measured twice, and the bench name says how the draining is counted:
//!
//! - `deliver_only/...`: `iter_batched` with `BatchSize::PerIteration`, whose untimed setup drains
//!   every queue, so the figure is the `deliver` calls alone;
//! - `deliver_and_drain/...`: `iter`, timing the delivery plus every subscriber taking its event
//!   off its queue, i.e. the whole hand-over (on one thread, so without cross-core wake-ups).
//!
//! Throughput is reported in subscribers (elements) per second. Both shapes check before timing
//! that every subscriber got the event exactly once, and that nobody was evicted.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use minichat_core::event::message_event;
use minichat_core::model::{now, Message, MessageType};
use minichat_core::{Event, Hub, Subscription};
use std::hint::black_box;

const SUBSCRIBERS: usize = 10_000;

fn sample_message() -> Message {
    Message {
        id: 1_234_567,
        sender_id: 42,
        sender_username: "alice1984".into(),
        receiver_id: Some(4242),
        conversation_id: 1,
        content: "Hi Bob! Lunch at noon tomorrow? ☕".into(),
        timestamp: now(),
        kind: MessageType::Message,
    }
}

/// The event every subscriber receives: a real message frame of about 200 bytes.
fn sample_event() -> Event {
    let event = message_event(&sample_message(), 1);
    let len = event.payload.len();
    assert!(
        (180..=220).contains(&len),
        "payload should be ~200 bytes, is {len}"
    );
    assert_eq!(event.seq, Some(1));
    event
}

/// Empties every subscriber's queue; returns how many events were taken.
fn drain(subs: &mut [Subscription]) -> usize {
    let mut taken = 0;
    for sub in subs.iter_mut() {
        while let Some(event) = sub.try_recv().expect("subscriber evicted or hub closed") {
            black_box(event);
            taken += 1;
        }
    }
    taken
}

/// Delivery of one event, for one shape of subscribers.
struct Shape {
    name: &'static str,
    hub: Hub,
    subs: Vec<Subscription>,
    users: Vec<i64>,
}

impl Shape {
    fn one_user() -> Shape {
        let hub = Hub::default();
        let subs = (0..SUBSCRIBERS).map(|_| hub.subscribe(1).0).collect();
        Shape {
            name: "one_user_10k_conns",
            hub,
            subs,
            users: vec![1],
        }
    }

    fn many_users() -> Shape {
        let hub = Hub::default();
        let users: Vec<i64> = (1..=SUBSCRIBERS as i64).collect();
        let subs = users.iter().map(|&u| hub.subscribe(u).0).collect();
        Shape {
            name: "10k_users_1_conn_each",
            hub,
            subs,
            users,
        }
    }

    fn deliver(hub: &Hub, users: &[i64], event: &Event) -> usize {
        users
            .iter()
            .map(|&user| hub.deliver(user, None, event))
            .sum()
    }

    /// Every subscriber gets the event exactly once, and nobody is evicted.
    fn check(&mut self, event: &Event) {
        assert_eq!(Shape::deliver(&self.hub, &self.users, event), SUBSCRIBERS);
        assert_eq!(drain(&mut self.subs), SUBSCRIBERS);
        assert_eq!(drain(&mut self.subs), 0);
    }
}

fn fanout(c: &mut Criterion) {
    let event = sample_event();
    for mut shape in [Shape::one_user(), Shape::many_users()] {
        shape.check(&event);
        let Shape {
            name,
            hub,
            subs,
            users,
        } = &mut shape;

        let mut group = c.benchmark_group("hub_fanout");
        group.throughput(Throughput::Elements(SUBSCRIBERS as u64));

        group.bench_function(
            format!("deliver_only/{name}/iter_batched_drain_untimed"),
            |b| {
                b.iter_batched(
                    || {
                        drain(subs);
                    },
                    |()| Shape::deliver(hub, users, black_box(&event)),
                    BatchSize::PerIteration,
                )
            },
        );
        drain(subs);

        group.bench_function(format!("deliver_and_drain/{name}/drain_timed"), |b| {
            b.iter(|| {
                let delivered = Shape::deliver(hub, users, black_box(&event));
                let taken = drain(subs);
                debug_assert_eq!(delivered, taken);
                taken
            })
        });
        group.finish();

        // Still every subscriber connected: no one was evicted as a slow consumer.
        shape.check(&event);
    }
}

fn serialise(c: &mut Criterion) {
    let message = sample_message();
    let mut group = c.benchmark_group("event");
    group.throughput(Throughput::Elements(1));
    group.bench_function("message_event/one_message_~200B", |b| {
        b.iter(|| message_event(black_box(&message), black_box(7)))
    });
    group.finish();
}

criterion_group!(benches, fanout, serialise);
criterion_main!(benches);
