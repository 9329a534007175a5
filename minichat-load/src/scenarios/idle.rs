//! `idle`: opens `--sockets` WebSockets, holds them (each read by a small task, so the
//! server's pings are answered), and reports the server's resident memory per socket from
//! /proc/PID/status before and while they are held.

use crate::args::IdleArgs;
use crate::error::{LoadError, Result};
use crate::report::{IdleFigures, Report};
use crate::target::Deployment;
use crate::ws;
use futures_util::StreamExt;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::Instant;

/// File descriptors this process keeps for itself beyond the sockets (stdio, runtime, HTTP).
const SPARE_FDS: usize = 64;

pub async fn run(deployment: Arc<Deployment>, args: &IdleArgs, report: &mut Report) -> Result<()> {
    if args.sockets == 0 || args.sockets_per_user == 0 {
        return Err(LoadError::Usage(
            "--sockets and --sockets-per-user must be at least 1".into(),
        ));
    }
    if let Some(limit) = open_files_limit() {
        if args.sockets + SPARE_FDS > limit {
            return Err(LoadError::Usage(format!(
                "--sockets {}: this process may open {limit} files (ulimit -n); at most {} sockets",
                args.sockets,
                limit.saturating_sub(SPARE_FDS)
            )));
        }
    }
    let users = deployment
        .create_users(args.sockets.div_ceil(args.sockets_per_user))
        .await?;
    let before = rss_kb(&args.server_pid)?;
    let opened = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut holders = Vec::with_capacity(args.sockets);
    let indexes: Vec<usize> = (0..args.sockets).collect();
    for chunk in indexes.chunks(deployment.setup_concurrency) {
        let connecting = chunk.iter().map(|&index| {
            let node = deployment.node_of(index).clone();
            let user = users[index / args.sockets_per_user].clone();
            let source = (!args.source_ips.is_empty())
                .then(|| args.source_ips[index % args.source_ips.len()]);
            tokio::spawn(async move { ws::connect(&node, &user, source, None).await })
        });
        for task in futures_util::future::join_all(connecting).await {
            let mut socket =
                task.map_err(|e| LoadError::Protocol(format!("a connect task failed: {e}")))??;
            let mut stop = stop_rx.clone();
            // Reads (and so answers pings) until the run stops; true if the server closed first.
            holders.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        frame = socket.next() => match frame {
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => return true,
                        },
                        _ = stop.wait_for(|stopped| *stopped) => return false,
                    }
                }
            }));
        }
    }
    let connect_s = opened.elapsed().as_secs_f64();
    tokio::time::sleep(args.hold).await;
    let after = rss_kb(&args.server_pid)?;
    let _ = stop_tx.send(true);
    for holder in holders {
        report.disconnects += u64::from(holder.await.unwrap_or(true));
    }
    let sockets = args.sockets as u64;
    report.sent = sockets;
    report.acked = sockets - report.disconnects;
    report.elapsed_s = opened.elapsed().as_secs_f64();
    report.throughput = sockets as f64 / connect_s.max(1e-9);
    report.idle = Some(IdleFigures {
        sockets,
        rss_before_kb: before,
        rss_after_kb: after,
        bytes_per_socket: before
            .zip(after)
            .map(|(b, a)| (a as f64 - b as f64) * 1024.0 / sockets as f64),
        connect_s,
    });
    Ok(())
}

/// The summed VmRSS of the server processes in kB, or `None` when no pid was given.
fn rss_kb(pids: &[u32]) -> Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut total = 0;
    for pid in pids {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path)
            .map_err(|e| LoadError::io(format!("--server-pid {pid}: read {path}"), e))?;
        total += status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .ok_or_else(|| LoadError::Protocol(format!("{path} has no VmRSS line")))?;
    }
    Ok(Some(total))
}

/// This process's soft limit on open files, where /proc tells it.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
