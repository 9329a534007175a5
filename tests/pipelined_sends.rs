//! A WebSocket client that pipelines its sends (writes many before reading any answer).
//!
//! This file exists because the server reads such sends as runs, stores each run in order
//! (one transaction on PostgreSQL) and answers it with one flush: the client must still get
//! every answer in the order it wrote the frames, each send its own outcome (stored, refused by
//! the rate limit, failed on a missing receiver), with frames that are not sends (a ping, a
//! malformed frame) answered in their place, and the receiver must get the messages in order.

#[macro_use]
mod support;

use futures_util::SinkExt;
use minichat::server::AuthMode;
use serde_json::{json, Value};
use support::{name, Backend, Backends, TestServer, Ws};
use tokio_tungstenite::tungstenite::Message as Frame;

fn id(v: &Value) -> i64 {
    v["id"].as_i64().expect("id")
}

/// What the sender wrote, in order, and what each frame must be answered with.
enum Expect {
    /// A send that fits the burst: acknowledged with the next seq.
    Stored(String),
    /// A send beyond the burst: acknowledged, or refused with 429.
    StoredOrLimited(String),
    /// A send to a missing user: a 404 error frame with its client id.
    Missing(String),
    Pong,
    Malformed,
}

suite!(pipelined_sends_are_answered_and_delivered_in_the_order_written);

async fn pipelined_sends_are_answered_and_delivered_in_the_order_written(kind: Backend) {
    let backends = Backends::new(kind).await;
    let mut settings = backends.settings(AuthMode::Off);
    // 30 sends at once, then (nearly) none: the run's tail is refused, in its place.
    settings.limits.send_burst = 30;
    settings.limits.send_rate_per_sec = 1;
    let server = TestServer::start(settings).await;
    let alice = id(&server.user(&name("alice")).await);
    let bob = id(&server.user(&name("bob")).await);
    let mut receiver = Ws::connect_ready(&server.ws_url(&format!("/ws/{bob}"))).await;
    let mut sender = Ws::connect_ready(&server.ws_url(&format!("/ws/{alice}"))).await;

    let send = |k: usize, to: i64| json!({"type": "message", "receiver_id": to, "content": format!("m{k}"), "client_id": format!("c{k}")});
    let mut frames = Vec::new();
    let mut expect = Vec::new();
    for k in 0..70 {
        let key = format!("c{k}");
        match k {
            12 => {
                frames.push(send(k, 999_999));
                expect.push(Expect::Missing(key));
            }
            _ => {
                frames.push(send(k, bob));
                expect.push(if k < 30 {
                    Expect::Stored(key)
                } else {
                    Expect::StoredOrLimited(key)
                });
            }
        }
        if k == 7 {
            frames.push(json!({"type": "ping"}));
            expect.push(Expect::Pong);
        }
        if k == 20 {
            frames.push(json!({"type": "message", "receiver_id": bob}));
            expect.push(Expect::Malformed);
        }
    }
    let batches_before = batches(&server).await;
    // All of it in one write, so the server finds sends already waiting behind each other.
    for frame in &frames {
        sender
            .stream
            .feed(Frame::Text(frame.to_string().into()))
            .await
            .expect("feed");
    }
    sender.stream.flush().await.expect("flush");

    let mut seq = 0;
    let mut stored = Vec::new();
    let mut limited = 0;
    for (i, expected) in expect.iter().enumerate() {
        let answer = sender.next_json().await;
        let acked = |answer: &Value, key: &str| {
            answer["type"] == "ack"
                && answer["client_id"] == key
                && answer["message"]["client_id"] == key
        };
        match expected {
            Expect::Stored(key) => {
                assert!(acked(&answer, key), "{i}: {answer}");
            }
            Expect::StoredOrLimited(key) => {
                if answer["type"] == "error" {
                    assert_eq!(answer["status"], 429, "{i}: {answer}");
                    assert_eq!(answer["client_id"], key.as_str(), "{i}: {answer}");
                    limited += 1;
                    continue;
                }
                assert!(acked(&answer, key), "{i}: {answer}");
            }
            Expect::Missing(key) => {
                assert_eq!(answer["type"], "error", "{i}: {answer}");
                assert_eq!(answer["status"], 404, "{i}: {answer}");
                assert_eq!(answer["client_id"], key.as_str(), "{i}: {answer}");
                continue;
            }
            Expect::Pong => {
                assert_eq!(answer["type"], "pong", "{i}: {answer}");
                continue;
            }
            Expect::Malformed => {
                assert_eq!(answer["type"], "error", "{i}: {answer}");
                assert_eq!(answer["status"], 422, "{i}: {answer}");
                continue;
            }
        }
        // Every stored send takes the sender's next seq, in the order written.
        let got = answer["message"]["seq"].as_i64().expect("seq");
        assert_eq!(got, seq + 1, "{i}: {answer}");
        seq = got;
        stored.push(
            answer["message"]["content"]
                .as_str()
                .expect("content")
                .to_owned(),
        );
    }
    assert!(
        limited > 0,
        "40 sends beyond a burst of 30 at 1/s: some are refused"
    );
    assert_eq!(stored.len(), 69 - limited);
    sender.assert_no_pending_message().await;
    if kind == Backend::Shared {
        // Stored as runs: far fewer transactions than sends (one each without runs).
        let batches = batches(&server).await - batches_before;
        assert!(
            batches < 30.0,
            "{batches} batches for {} sends",
            stored.len()
        );
    }

    // The receiver gets the stored ones, in the same order.
    for content in &stored {
        let frame = receiver.next_json().await;
        assert_eq!(frame["type"], "message", "{frame}");
        assert_eq!(frame["content"], content.as_str(), "{frame}");
    }
    receiver.assert_no_pending_message().await;
}

/// How many batches PostgreSQL storage has committed in this process (none in memory).
async fn batches(server: &TestServer) -> f64 {
    let count = server.metric("minichat_storage_batch_size_count").await;
    count.unwrap_or(0.0)
}
