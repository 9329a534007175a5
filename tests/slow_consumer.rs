//! Slow consumers, caught by what they leave unsent rather than by a queue the kernel hides: a
//! client that stops reading stalls the server's writes within its small send buffer and is
//! closed as slow (counted once) while others keep being served; one that reads, but slower than
//! its events come, fills its queue and gets 4008; one that keeps up under the same flood is
//! never closed. Each resumes with `since` and loses nothing.
//!
//! The metrics recorder is process-global, so the tests of this file take turns ([`SERIAL`]):
//! each counts exactly its own closes.

mod support;

use futures_util::StreamExt;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{busy, eventually, name, read_stream, Backend, Backends, TestServer, Ws, DEADLINE};
use tokio_tungstenite::tungstenite::Message as Frame;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The client's receive buffer: small, so that what is in flight is mostly the server's.
const CLIENT_RECEIVE_BUFFER: u32 = 4096;

fn id(v: &Value) -> i64 {
    v["id"].as_i64().expect("id")
}

/// `minichat_slow_consumer_closes_total` as the server reports it.
async fn slow_consumer_closes(s: &TestServer) -> u64 {
    let closes = s.metric("minichat_slow_consumer_closes_total").await;
    closes.map_or(0, |v| v as u64)
}

/// A socket whose client-side receive buffer is tiny, past its greeting.
async fn small_buffered_socket(s: &TestServer, path: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(CLIENT_RECEIVE_BUFFER).unwrap();
    let stream = socket.connect(s.addr).await.unwrap();
    let (stream, _) = tokio_tungstenite::client_async(
        s.ws_url(path),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    let mut ws = Ws { stream };
    assert_eq!(ws.next_json().await["type"], "system");
    ws
}

/// How a connection that was behind ended, once its client read again.
struct Drained {
    last_seq: i64,
    /// Bytes of the message frames it still got: what was in flight when it was let go.
    bytes: usize,
    /// The close frame's code, or `None` when the connection just ended (the close frame could
    /// not be written, its buffer being full).
    close: Option<u16>,
}

/// Reads what a closed-as-slow connection still has (paced by `pace`, if any), checking that
/// each message continues the stream, up to its close or end.
async fn drain(
    ws: &mut Ws,
    seen: &mut HashSet<i64>,
    mut pace: Option<tokio::time::Interval>,
) -> Drained {
    let mut drained = Drained {
        last_seq: 0,
        bytes: 0,
        close: None,
    };
    loop {
        if let Some(pace) = pace.as_mut() {
            pace.tick().await;
        }
        match tokio::time::timeout(DEADLINE, ws.stream.next())
            .await
            .expect("a frame or the end")
        {
            Some(Ok(Frame::Text(t))) => {
                let frame: Value = serde_json::from_str(&t).unwrap();
                let seq = frame["seq"].as_i64().unwrap();
                assert_eq!(seq, drained.last_seq + 1, "gap or reorder");
                drained.last_seq = seq;
                drained.bytes += t.len();
                assert!(seen.insert(id(&frame)), "delivered twice");
            }
            Some(Ok(Frame::Close(frame))) => {
                drained.close = frame.map(|f| u16::from(f.code));
                return drained;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return drained,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_as_slow_by_its_stalled_writes() {
    let _turn = SERIAL.lock().await;
    let backends = Backends::new(Backend::Shared).await;
    let mut settings = busy(&backends);
    // A queue far too deep to be what catches it: only the stalled writes can.
    settings.chat.queue_capacity = 100_000;
    settings.limits.ws_write_stall = Duration::from_millis(500);
    let send_buffer = settings.limits.ws_send_buffer_bytes;
    let s = TestServer::start(settings).await;
    let sender = id(&s.user(&name("flood")).await);
    let slow = id(&s.user(&name("slow")).await);
    let fast = id(&s.user(&name("fast")).await);
    let mut slow_ws = small_buffered_socket(&s, &format!("/ws/{slow}")).await;
    let mut fast_ws = Ws::connect_ready(&s.ws_url(&format!("/ws/{fast}"))).await;
    let closes_before = slow_consumer_closes(&s).await;

    // The slow client reads nothing from here on. Send to it until the server lets it go (its
    // sends stop reaching a live socket); the fast client keeps getting its messages throughout.
    let content = "x".repeat(900);
    let started = Instant::now();
    let mut sent = 0usize;
    loop {
        let m = s.message(sender, slow, &content).await;
        sent += 1;
        if m["delivered_via_websocket"] == false {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "still delivering after {sent} sends"
        );
        if sent.is_multiple_of(20) {
            let quick = s.message(sender, fast, "still here").await;
            assert_eq!(fast_ws.next_json().await["id"], quick["id"]);
        }
    }
    eprintln!("let go after {sent} sends, {:?}", started.elapsed());
    eventually(DEADLINE, "the close counted", || async {
        (slow_consumer_closes(&s).await > closes_before).then_some(())
    })
    .await;
    let quick = s.message(sender, fast, "after").await;
    assert_eq!(fast_ws.next_json().await["id"], quick["id"]);

    // When it reads again: what was in flight (bounded by the send buffers, not the queue),
    // then the close with 4008, or the end if even the close frame could not be written.
    let mut seen = HashSet::new();
    let drained = drain(&mut slow_ws, &mut seen, None).await;
    assert!(
        drained.close.is_none() || drained.close == Some(4008),
        "closed with {:?}",
        drained.close
    );
    // The kernel reserves twice the set sizes; a frame may be half written besides.
    let in_flight_bound = 2 * send_buffer + 2 * CLIENT_RECEIVE_BUFFER as usize + 2 * content.len();
    assert!(
        drained.bytes <= in_flight_bound,
        "{} bytes were still in flight (bound {in_flight_bound})",
        drained.bytes
    );
    eprintln!("{} bytes were in flight", drained.bytes);
    assert!(seen.len() < sent, "it really was behind");
    assert_eq!(slow_consumer_closes(&s).await, closes_before + 1);

    // It resumes with `since` and gets everything else, exactly once.
    let mut last_seq = drained.last_seq;
    let mut ws = Ws::connect_ready(&s.ws_url(&format!("/ws/{slow}?since={last_seq}"))).await;
    let missing = sent - seen.len();
    read_stream(&mut ws, &mut last_seq, &mut seen, missing, DEADLINE).await;
    assert_eq!(seen.len(), sent);
    ws.assert_no_pending_message().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_closed_while_a_full_speed_reader_of_the_same_flood_is_not() {
    let _turn = SERIAL.lock().await;
    let backends = Backends::new(Backend::Shared).await;
    let mut settings = busy(&backends);
    settings.chat.queue_capacity = 64;
    settings.limits.ws_send_buffer_bytes = 8 * 1024;
    let s = Arc::new(TestServer::start(settings).await);
    let sender = id(&s.user(&name("flood")).await);
    let reader = id(&s.user(&name("reader")).await);
    let closes_before = slow_consumer_closes(&s).await;
    // Two connections of one user get the same flood: one reads 20 frames a second, the other
    // as fast as it can.
    let mut slow_ws = small_buffered_socket(&s, &format!("/ws/{reader}")).await;
    let mut fast_ws = Ws::connect_ready(&s.ws_url(&format!("/ws/{reader}"))).await;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    // Eight senders at once: hundreds of messages a second, whatever one request's latency.
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let (s, stop, sent) = (s.clone(), stop.clone(), sent.clone());
            tokio::spawn(async move {
                let content = "y".repeat(900);
                while !stop.load(Ordering::Relaxed) {
                    s.message(sender, reader, &content).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // The full-speed reader: every message in order, until it has all the flood sent.
    let (total_tx, mut total) = tokio::sync::watch::channel(None::<usize>);
    let fast = tokio::spawn(async move {
        let mut last_seq = 0;
        let mut seen = HashSet::new();
        while total.borrow().is_none_or(|total| seen.len() < total) {
            let frame = tokio::select! {
                frame = fast_ws.stream.next() => frame,
                _ = total.changed() => continue,
                _ = tokio::time::sleep(DEADLINE) => panic!("the fast reader got nothing for {DEADLINE:?}"),
            };
            let Some(Ok(Frame::Text(t))) = frame else {
                panic!("the fast reader's connection ended: {frame:?}");
            };
            let frame: Value = serde_json::from_str(&t).unwrap();
            let seq = frame["seq"].as_i64().unwrap();
            assert_eq!(seq, last_seq + 1, "gap or reorder for the fast reader");
            last_seq = seq;
            assert!(seen.insert(id(&frame)), "delivered twice");
        }
        (fast_ws, seen)
    });

    let started = Instant::now();
    let mut seen = HashSet::new();
    let pace = tokio::time::interval(Duration::from_millis(50));
    let drained = drain(&mut slow_ws, &mut seen, Some(pace)).await;
    stop.store(true, Ordering::Relaxed);
    for sender in flood {
        sender.await.unwrap();
    }
    let sent = sent.load(Ordering::Relaxed);
    total_tx.send(Some(sent)).unwrap();
    eprintln!(
        "slow reader closed after {:?}, {} frames read, {sent} sent",
        started.elapsed(),
        seen.len()
    );
    assert_eq!(drained.close, Some(4008), "closed as a slow consumer");
    assert_eq!(slow_consumer_closes(&s).await, closes_before + 1);

    // The full-speed reader got every message of the flood, in order, and is still open.
    let (mut fast_ws, fast_seen) = fast.await.unwrap();
    assert_eq!(fast_seen.len(), sent, "the fast reader missed messages");
    fast_ws.assert_no_pending_message().await;
    assert_eq!(slow_consumer_closes(&s).await, closes_before + 1);

    // The slow one resumes with `since` and loses nothing.
    let mut last_seq = drained.last_seq;
    let mut ws = Ws::connect_ready(&s.ws_url(&format!("/ws/{reader}?since={last_seq}"))).await;
    let missing = sent - seen.len();
    read_stream(&mut ws, &mut last_seq, &mut seen, missing, DEADLINE).await;
    assert_eq!(seen.len(), sent);
}
