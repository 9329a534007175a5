//! The WebSocket traffic engine behind `chat` and `fanout`: sockets that send on a timetable
//! (open loop) or with a window in flight (closed loop), and read acks and deliveries into a
//! per-socket record checked at the end by the ledger.
//!
//! Each socket is split: a writer task owns the sending half, a reader task owns the receiving
//! half and every figure of that socket, so nothing is shared per message but three counters.
//! A message's content is `"<k> <micros>"`: its number among its sender's sends and its
//! scheduled time in microseconds from the run's start, so an ack (whose message carries the
//! content) and a delivery each give their latency without any lookup.

use crate::args::Pace;
use crate::error::{LoadError, Result};
use crate::histogram::Latency;
use crate::ledger::{self, SocketRecord};
use crate::report::Report;
use crate::target::{Deployment, User};
use crate::timeline::Timeline;
use crate::ws::{self, Socket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Who sends to whom: the sockets of the run and which of them send.
pub struct Topology {
    /// The user (index into the run's users) of each socket.
    pub socket_users: Vec<usize>,
    /// The sending sockets, each with the destinations its sends go to in turn (`k % len`).
    pub senders: Vec<(usize, Vec<Dest>)>,
    /// Sockets replay their user's stream from the start (`since=0`): for users whose stream
    /// already holds events of the set-up (a group's `created`), so that their seqs count.
    pub replay: bool,
}

/// Where a sender's message goes: a user (`receiver_id`) or a conversation
/// (`conversation_id`), and the users (indexes into the run's users) it is owed to.
pub struct Dest {
    field: &'static str,
    id: i64,
    receivers: Vec<usize>,
}

impl Dest {
    /// The direct conversation with user `index`.
    pub fn user(users: &[User], index: usize) -> Dest {
        Dest {
            field: "receiver_id",
            id: users[index].id,
            receivers: vec![index],
        }
    }

    /// Conversation `id`, owed to `receivers` (its members but the sender).
    pub fn conversation(id: i64, receivers: Vec<usize>) -> Dest {
        Dest {
            field: "conversation_id",
            id,
            receivers,
        }
    }
}

/// Shared by every task of the run.
struct Run {
    start: Instant,
    users: Vec<User>,
    /// Sender index of a user id, for the ledger key of a delivery.
    sender_of: HashMap<i64, u32>,
    /// Sockets per user: how many deliveries an acked message to that user is owed.
    sockets_of_user: Vec<u64>,
    answered: AtomicU64,
    delivered: AtomicU64,
    expected: AtomicU64,
}

/// The sending side of one socket.
struct Sender {
    index: u32,
    targets: Vec<Dest>,
    /// With `--max`: the permits of the window, returned by the reader on each answer.
    window: Option<Arc<Semaphore>>,
}

/// What one reader hands back at the end.
#[derive(Default)]
struct ReaderResult {
    record: SocketRecord,
    ack: Latency,
    delivery: Latency,
    delivery_by_second: Timeline,
    errors: BTreeMap<u16, u64>,
    acked: u64,
    disconnected: bool,
    last_event: Option<Instant>,
}

/// Connects every socket, runs the senders for `pace.duration`, waits up to `grace` for the
/// last answers and deliveries, and checks them.
pub async fn run(
    deployment: Arc<Deployment>,
    users: Vec<User>,
    topology: Topology,
    pace: &Pace,
    grace: Duration,
    report: &mut Report,
) -> Result<()> {
    pace.check().map_err(LoadError::Usage)?;
    let since = topology.replay.then_some(0);
    let sockets = connect_all(&deployment, &users, &topology.socket_users, since).await?;
    let mut sockets_of_user = vec![0u64; users.len()];
    for &user in &topology.socket_users {
        sockets_of_user[user] += 1;
    }
    let sender_of = topology
        .senders
        .iter()
        .enumerate()
        .map(|(index, &(socket, _))| (users[topology.socket_users[socket]].id, index as u32))
        .collect();
    // A short lead, so the first sends are not late because the tasks are still starting.
    let run = Arc::new(Run {
        start: Instant::now() + Duration::from_millis(200),
        users,
        sender_of,
        sockets_of_user,
        answered: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        expected: AtomicU64::new(0),
    });
    let mut sending: HashMap<usize, Arc<Sender>> = HashMap::new();
    for (index, (socket, targets)) in topology.senders.into_iter().enumerate() {
        let window = pace.max.then(|| Arc::new(Semaphore::new(pace.window)));
        sending.insert(
            socket,
            Arc::new(Sender {
                index: index as u32,
                targets,
                window,
            }),
        );
    }
    let sender_count = sending.len() as u32;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut readers = Vec::with_capacity(sockets.len());
    let mut writers = Vec::with_capacity(sending.len());
    for (socket_index, socket) in sockets.into_iter().enumerate() {
        let (sink, stream) = socket.split();
        let user = topology.socket_users[socket_index];
        let sender = sending.get(&socket_index).cloned();
        readers.push(tokio::spawn(read(
            Arc::clone(&run),
            stream,
            SocketRecord::new(user),
            sender.clone(),
            stop_rx.clone(),
        )));
        if let Some(sender) = sender {
            writers.push(tokio::spawn(write(
                Arc::clone(&run),
                sink,
                sender,
                pace.clone(),
                sender_count,
            )));
        } else {
            // A socket that only receives keeps its sending half here until the end, so the
            // connection stays whole (pongs still go out through the reader).
            readers.push(tokio::spawn(hold(sink, stop_rx.clone())));
        }
    }
    let mut sent = 0;
    let mut kept = Vec::with_capacity(writers.len());
    for writer in writers {
        let (count, sink) = writer
            .await
            .map_err(|e| LoadError::Protocol(format!("a sender task failed: {e}")))?;
        sent += count;
        kept.push(sink);
    }
    // Every send is out: wait until each is answered and each owed delivery arrived.
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        let answered = run.answered.load(Ordering::Acquire);
        let delivered = run.delivered.load(Ordering::Acquire);
        if answered >= sent && delivered >= run.expected.load(Ordering::Acquire) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    drop(kept);
    let mut records = Vec::new();
    let (mut ack, mut delivery) = (Latency::new(), Latency::new());
    let mut delivery_by_second = Timeline::default();
    let mut last = run.start;
    for reader in readers {
        let Some(result) = reader
            .await
            .map_err(|e| LoadError::Protocol(format!("a reader task failed: {e}")))?
        else {
            continue;
        };
        ack.merge(&result.ack);
        delivery.merge(&result.delivery);
        delivery_by_second.merge(&result.delivery_by_second);
        report.acked += result.acked;
        for (status, count) in result.errors {
            report.errors += count;
            *report.error_statuses.entry(status).or_default() += count;
        }
        report.disconnects += u64::from(result.disconnected);
        last = last.max(result.last_event.unwrap_or(run.start));
        records.push(result.record);
    }
    let outcome = ledger::check(&mut records, run.users.len());
    let elapsed = last
        .saturating_duration_since(run.start)
        .as_secs_f64()
        .max(1e-9);
    report.sent = sent;
    report.unanswered = sent.saturating_sub(report.acked + report.errors);
    report.elapsed_s = elapsed;
    report.throughput = report.acked as f64 / elapsed;
    report.deliveries_per_s = Some(outcome.delivered as f64 / elapsed);
    report.expected_deliveries = Some(outcome.expected);
    report.delivered = Some(outcome.delivered);
    report.lost = Some(outcome.lost);
    report.duplicates = Some(outcome.duplicates);
    report.delivered_unacked = Some(outcome.delivered_unacked);
    report.seq_errors = Some(outcome.seq_errors);
    report.ack_latency_ms = ack.summary();
    report.delivery_latency_ms = delivery.summary();
    report.delivery_by_second = delivery_by_second.seconds();
    Ok(())
}

/// Opens the sockets `setup_concurrency` at a time; socket `i` goes to node `i % nodes`.
async fn connect_all(
    deployment: &Arc<Deployment>,
    users: &[User],
    socket_users: &[usize],
    since: Option<u64>,
) -> Result<Vec<Socket>> {
    let mut sockets = Vec::with_capacity(socket_users.len());
    for chunk in socket_users
        .iter()
        .enumerate()
        .collect::<Vec<_>>()
        .chunks(deployment.setup_concurrency)
    {
        let connecting = chunk.iter().map(|&(index, &user)| {
            let node = deployment.node_of(index).clone();
            let user = users[user].clone();
            tokio::spawn(async move { ws::connect(&node, &user, None, since).await })
        });
        for task in futures_util::future::join_all(connecting).await {
            sockets.push(
                task.map_err(|e| LoadError::Protocol(format!("a connect task failed: {e}")))??,
            );
        }
    }
    Ok(sockets)
}

/// Sends this socket's messages; returns how many, and the sink (kept open until the end).
async fn write(
    run: Arc<Run>,
    mut sink: SplitSink<Socket, Message>,
    sender: Arc<Sender>,
    pace: Pace,
    senders: u32,
) -> (u64, SplitSink<Socket, Message>) {
    let end = run.start + pace.duration;
    // Open loop: sender s sends at start + (s + k * senders) / rate, so all sends together
    // are evenly spaced at `rate`.
    let period = Duration::from_secs_f64(f64::from(senders) / pace.rate.max(f64::MIN_POSITIVE));
    let offset =
        Duration::from_secs_f64(f64::from(sender.index) / pace.rate.max(f64::MIN_POSITIVE));
    let mut k: u32 = 0;
    loop {
        let scheduled = match &sender.window {
            Some(window) => {
                tokio::time::sleep_until(run.start).await;
                tokio::select! {
                    permit = window.acquire() => match permit {
                        Ok(permit) => permit.forget(),
                        Err(_) => break,
                    },
                    _ = tokio::time::sleep_until(end) => break,
                }
                Instant::now()
            }
            None => {
                let at = run.start + offset + period * k;
                tokio::time::sleep_until(at).await;
                at
            }
        };
        if scheduled >= end {
            break;
        }
        let dest = &sender.targets[k as usize % sender.targets.len()];
        let micros = scheduled.saturating_duration_since(run.start).as_micros();
        let frame = format!(
            r#"{{"type":"message","{}":{},"content":"{k} {micros}","client_id":"{k}"}}"#,
            dest.field, dest.id
        );
        // A server that stops reading must not hold the run past its end: the frame is then
        // counted as sent (it may be out), and the sender stops.
        match tokio::time::timeout_at(
            end + Duration::from_secs(1),
            sink.send(Message::text(frame)),
        )
        .await
        {
            Ok(Ok(())) => k += 1,
            Ok(Err(_)) => break,
            Err(_) => {
                k += 1;
                break;
            }
        }
    }
    (u64::from(k), sink)
}

/// Holds a receive-only socket's sending half until the run stops.
async fn hold(
    sink: SplitSink<Socket, Message>,
    mut stop: watch::Receiver<bool>,
) -> Option<ReaderResult> {
    let _ = stop.wait_for(|stopped| *stopped).await;
    drop(sink);
    None
}

/// Reads one socket until the run stops, recording every ack, error and delivery.
async fn read(
    run: Arc<Run>,
    mut stream: SplitStream<Socket>,
    record: SocketRecord,
    sender: Option<Arc<Sender>>,
    mut stop: watch::Receiver<bool>,
) -> Option<ReaderResult> {
    let mut result = ReaderResult {
        record,
        ..ReaderResult::default()
    };
    loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                result.disconnected = true;
                break;
            }
            Some(Ok(_)) => continue,
        };
        let now = Instant::now();
        let Some(frame) = ws::parse(text.as_str()) else {
            continue;
        };
        match &*frame.kind {
            "message" => {
                let (Some(seq), Some(sender_id), Some(content)) =
                    (frame.seq, frame.sender_id, frame.content.as_deref())
                else {
                    continue;
                };
                let Some((k, scheduled)) = parse_content(content) else {
                    continue;
                };
                let from = run.sender_of.get(&sender_id).copied().unwrap_or(u32::MAX);
                result.record.delivered(ledger::key(from, k), seq);
                let latency = now.saturating_duration_since(run.start + scheduled);
                result.delivery.record(latency);
                result.delivery_by_second.record(scheduled, latency);
                result.last_event = Some(now);
                run.delivered.fetch_add(1, Ordering::AcqRel);
            }
            "ack" => {
                let (Some(sender), Some(message)) =
                    (&sender, frame.message.and_then(|m| m.acked()))
                else {
                    continue;
                };
                let Some((k, scheduled)) = message.content.as_deref().and_then(parse_content)
                else {
                    continue;
                };
                let dest = &sender.targets[k as usize % sender.targets.len()];
                result
                    .record
                    .acked(&dest.receivers, ledger::key(sender.index, k), message.seq);
                result
                    .ack
                    .record(now.saturating_duration_since(run.start + scheduled));
                result.acked += 1;
                result.last_event = Some(now);
                let owed: u64 = dest.receivers.iter().map(|&r| run.sockets_of_user[r]).sum();
                run.expected.fetch_add(owed, Ordering::AcqRel);
                answered(&run, sender);
            }
            "conversation" => {
                if let Some(seq) = frame.seq {
                    result.record.other_event(seq);
                }
            }
            "error" => {
                *result.errors.entry(frame.status.unwrap_or(0)).or_default() += 1;
                if let Some(sender) = &sender {
                    answered(&run, sender);
                }
            }
            _ => {}
        }
    }
    Some(result)
}

fn answered(run: &Run, sender: &Sender) {
    run.answered.fetch_add(1, Ordering::AcqRel);
    if let Some(window) = &sender.window {
        window.add_permits(1);
    }
}

/// `"<k> <micros>"` back into k and the scheduled offset from the run's start.
fn parse_content(content: &str) -> Option<(u32, Duration)> {
    let (k, micros) = content.split_once(' ')?;
    Some((k.parse().ok()?, Duration::from_micros(micros.parse().ok()?)))
}
