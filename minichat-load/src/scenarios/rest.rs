//! `rest`: `POST /messages/` over `--connections` keep-alive connections, each one request at a
//! time. Open loop by default (request `m` is due at `m / rate`, and its latency counts from
//! then, so a stalled connection shows), or as fast as answers come with `--max`.

use crate::args::RestArgs;
use crate::error::{LoadError, Result};
use crate::histogram::Latency;
use crate::http::Connection;
use crate::report::Report;
use crate::target::{Deployment, User};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What one connection's worker counted.
#[derive(Default)]
struct Counts {
    sent: u64,
    ok: u64,
    errors: BTreeMap<u16, u64>,
    disconnected: bool,
    latency: Latency,
    last: Option<Instant>,
}

pub async fn run(deployment: Arc<Deployment>, args: &RestArgs, report: &mut Report) -> Result<()> {
    if args.users < 2 || args.connections == 0 {
        return Err(LoadError::Usage(
            "--users must be at least 2 and --connections at least 1".into(),
        ));
    }
    args.pace.check().map_err(LoadError::Usage)?;
    let users: Arc<Vec<User>> = Arc::new(deployment.create_users(args.users).await?);
    let mut connections = Vec::with_capacity(args.connections);
    for worker in 0..args.connections {
        connections.push(Connection::open(deployment.node_of(worker)).await?);
    }
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + args.pace.duration;
    let limit = args.messages.unwrap_or(u64::MAX);
    let workers = args.connections as u64;
    let rate = args.pace.rate;
    let max = args.pace.max;
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(worker, mut connection)| {
            let users = Arc::clone(&users);
            tokio::spawn(async move {
                let mut counts = Counts::default();
                // Message m = worker + i * workers: sender m % users, receiver the next one.
                let mut m = worker as u64;
                while m < limit {
                    let scheduled = if max {
                        tokio::time::sleep_until(start).await;
                        Instant::now()
                    } else {
                        let at = start + Duration::from_secs_f64(m as f64 / rate);
                        tokio::time::sleep_until(at).await;
                        at
                    };
                    if scheduled >= end {
                        break;
                    }
                    let sender = &users[(m % users.len() as u64) as usize];
                    let receiver = &users[((m + 1) % users.len() as u64) as usize];
                    let body = format!(
                        r#"{{"sender_id":{},"receiver_id":{},"content":"rest {m}"}}"#,
                        sender.id, receiver.id
                    );
                    counts.sent += 1;
                    match connection
                        .post_json("/messages/", sender.token.as_deref(), body)
                        .await
                    {
                        Ok((status, _)) => {
                            let now = Instant::now();
                            counts
                                .latency
                                .record(now.saturating_duration_since(scheduled));
                            counts.last = Some(now);
                            if status.is_success() {
                                counts.ok += 1;
                            } else {
                                *counts.errors.entry(status.as_u16()).or_default() += 1;
                            }
                        }
                        Err(_) => {
                            counts.disconnected = true;
                            break;
                        }
                    }
                    m += workers;
                }
                counts
            })
        })
        .collect();
    let mut latency = Latency::new();
    let mut last = start;
    for task in tasks {
        let counts = task
            .await
            .map_err(|e| LoadError::Protocol(format!("a REST worker failed: {e}")))?;
        report.sent += counts.sent;
        report.acked += counts.ok;
        for (status, count) in counts.errors {
            report.errors += count;
            *report.error_statuses.entry(status).or_default() += count;
        }
        report.disconnects += u64::from(counts.disconnected);
        latency.merge(&counts.latency);
        last = last.max(counts.last.unwrap_or(start));
    }
    report.unanswered = report.sent - latency.count();
    report.elapsed_s = last
        .saturating_duration_since(start)
        .as_secs_f64()
        .max(1e-9);
    report.throughput = report.acked as f64 / report.elapsed_s;
    report.ack_latency_ms = latency.summary();
    Ok(())
}
