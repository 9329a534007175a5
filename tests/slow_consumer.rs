//! A slow consumer: closed with 4008 while others keep being served, memory flat meanwhile
//! (the queues are bounded), and nothing lost when it resumes with `since`.
//!
//! Alone in its own test binary, so that the process's resident memory is this test's alone.

mod support;

use futures_util::StreamExt;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;
use support::{busy, name, read_stream, Backend, Backends, TestServer, Ws, DEADLINE};

fn id(v: &Value) -> i64 {
    v["id"].as_i64().expect("id")
}

/// Resident memory of this process, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("rss pages");
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_with_4008_without_holding_up_others_and_resumes() {
    let backends = Backends::new(Backend::Shared).await;
    let mut settings = busy(&backends);
    settings.chat.queue_capacity = 16;
    let s = TestServer::start(settings).await;
    let sender = id(&s.user(&name("flood")).await);
    let slow = id(&s.user(&name("slow")).await);
    let fast = id(&s.user(&name("fast")).await);

    // The slow client: a tiny receive buffer, and it stops reading after the greeting.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(s.addr).await.unwrap();
    let (stream, _) = tokio_tungstenite::client_async(
        s.ws_url(&format!("/ws/{slow}")),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    let mut slow_ws = Ws { stream };
    assert_eq!(slow_ws.next_json().await["type"], "system");
    let mut fast_ws = Ws::connect_ready(&s.ws_url(&format!("/ws/{fast}"))).await;

    let content = "x".repeat(900);
    let mut sent = 0usize;
    let mut baseline_rss = None;
    let mut evicted_at = None;
    // Send until the server has let the slow connection go (its sends stop reaching a live
    // socket), then a while more; the fast client keeps getting its messages throughout.
    while sent < 20_000 {
        let m = s.message(sender, slow, &content).await;
        sent += 1;
        if sent == 200 {
            baseline_rss = Some(rss_bytes());
        }
        if m["delivered_via_websocket"] == false && evicted_at.is_none() {
            evicted_at = Some(sent);
        }
        if sent.is_multiple_of(100) {
            let quick = s.message(sender, fast, "still here").await;
            assert_eq!(fast_ws.next_json().await["id"], quick["id"]);
        }
        if evicted_at.is_some_and(|at| sent >= at + 500) {
            break;
        }
    }
    let evicted_at = evicted_at.expect("the slow consumer was never let go");
    let growth = rss_bytes().saturating_sub(baseline_rss.expect("baseline"));
    let payload = (sent.saturating_sub(200) * content.len()) as u64;
    eprintln!(
        "resident memory grew by {growth} bytes while {payload} bytes went to a slow consumer"
    );
    assert!(
        growth < payload / 2,
        "memory grew by {growth} bytes while {payload} bytes went to a slow consumer"
    );

    // When it reads again: what was in flight, then the close with 4008.
    let mut last_seq = 0;
    let mut seen = HashSet::new();
    let mut close_code = None;
    loop {
        match tokio::time::timeout(DEADLINE, slow_ws.stream.next())
            .await
            .expect("frames or close")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                let frame: Value = serde_json::from_str(&t).unwrap();
                let seq = frame["seq"].as_i64().unwrap();
                assert_eq!(seq, last_seq + 1);
                last_seq = seq;
                seen.insert(id(&frame));
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                close_code = frame.map(|f| u16::from(f.code));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    assert_eq!(
        close_code,
        Some(4008),
        "closed as a slow consumer (evicted after {evicted_at} sends)"
    );
    assert!(seen.len() < sent, "it really was behind");
    // It resumes with `since` and gets everything else, exactly once.
    let mut ws = Ws::connect_ready(&s.ws_url(&format!("/ws/{slow}?since={last_seq}"))).await;
    read_stream(
        &mut ws,
        &mut last_seq,
        &mut seen,
        usize::MAX,
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(seen.len(), sent);
}
