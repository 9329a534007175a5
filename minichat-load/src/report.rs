//! The result of a run: one JSON line on stdout (for scripts and BENCHMARKS.md) and a readable
//! summary on stderr, and whether the run's checks passed (the exit code).

use crate::histogram::Summary;
use crate::timeline::{self, SecondFigures};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;

/// Every figure of a run; a field a scenario does not measure is left out of the JSON.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    /// The scenario's arguments, as given or defaulted.
    pub params: serde_json::Value,
    pub nodes: usize,
    /// Seconds from the first scheduled send to the last answer or delivery counted.
    pub elapsed_s: f64,
    /// Messages sent (frames written, requests made).
    pub sent: u64,
    /// Sends answered with success: an `ack` frame, or a 2xx to `POST /messages/`.
    pub acked: u64,
    /// Sends answered with an error frame or a non-2xx status, by status.
    pub errors: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub error_statuses: BTreeMap<u16, u64>,
    /// Sends with no answer at all by the end of the grace period.
    pub unanswered: u64,
    /// Sockets or connections the server closed (or that failed) during the run.
    pub disconnects: u64,
    /// Acked messages times the sockets of their receiver: what should have been delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_deliveries: Option<u64>,
    /// Expected deliveries that arrived (each once counted once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
    /// Expected deliveries that never arrived by the end of the grace period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    /// Deliveries that arrived more than once on one socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicates: Option<u64>,
    /// Deliveries of messages whose send was not acked (its answer was an error or missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_unacked: Option<u64>,
    /// Per-user seq faults on a socket: an event out of order, a seq seen twice, a seq missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq_errors: Option<u64>,
    /// Acked sends per second over `elapsed_s`.
    pub throughput: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries_per_s: Option<f64>,
    /// From the scheduled send time (open loop) or the actual one (closed loop) to the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_latency_ms: Option<Summary>,
    /// From the scheduled (or actual) send time to the arrival at the receiver's socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_latency_ms: Option<Summary>,
    /// Deliveries by second of their scheduled send time: when the slow ones happened.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub delivery_by_second: Vec<SecondFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleFigures>,
}

/// What the idle scenario measures.
#[derive(Debug, Default, Serialize)]
pub struct IdleFigures {
    pub sockets: u64,
    /// The server processes' resident memory before the sockets opened and while they are held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_before_kb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_after_kb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_socket: Option<f64>,
    /// Seconds to open all the sockets (handshake and system frame).
    pub connect_s: f64,
}

impl Report {
    /// Whether every check passed: nothing lost, duplicated, out of seq, failed or unanswered.
    pub fn passed(&self) -> bool {
        self.errors == 0
            && self.unanswered == 0
            && self.disconnects == 0
            && self.lost.unwrap_or(0) == 0
            && self.duplicates.unwrap_or(0) == 0
            && self.seq_errors.unwrap_or(0) == 0
    }

    /// Writes the JSON line to stdout and the summary to stderr.
    pub fn emit(&self) {
        let line = serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        eprint!("{}", self.summary());
    }

    fn summary(&self) -> String {
        let mut text = format!(
            "minichat-load {}: {} node(s), {:.2} s\n  sent {}  acked {}  errors {}  unanswered {}  disconnects {}\n  throughput {:.0}/s",
            self.scenario,
            self.nodes,
            self.elapsed_s,
            self.sent,
            self.acked,
            self.errors,
            self.unanswered,
            self.disconnects,
            self.throughput
        );
        if let Some(rate) = self.deliveries_per_s {
            text.push_str(&format!("  deliveries {rate:.0}/s"));
        }
        text.push('\n');
        if !self.error_statuses.is_empty() {
            text.push_str(&format!("  error statuses {:?}\n", self.error_statuses));
        }
        if let (Some(expected), Some(delivered)) = (self.expected_deliveries, self.delivered) {
            text.push_str(&format!(
                "  delivered {delivered}/{expected}  lost {}  duplicates {}  seq errors {}  delivered unacked {}\n",
                self.lost.unwrap_or(0),
                self.duplicates.unwrap_or(0),
                self.seq_errors.unwrap_or(0),
                self.delivered_unacked.unwrap_or(0)
            ));
        }
        for (name, summary) in [
            ("ack", self.ack_latency_ms),
            ("delivery", self.delivery_latency_ms),
        ] {
            if let Some(s) = summary {
                text.push_str(&format!(
                    "  {name} latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (n {})\n",
                    s.p50, s.p90, s.p99, s.p999, s.max, s.count
                ));
            }
        }
        if let Some(line) = timeline::describe(&self.delivery_by_second) {
            text.push_str(&format!("  {line}\n"));
        }
        if let Some(idle) = &self.idle {
            text.push_str(&format!(
                "  {} idle sockets opened in {:.2} s",
                idle.sockets, idle.connect_s
            ));
            match (idle.rss_before_kb, idle.rss_after_kb, idle.bytes_per_socket) {
                (Some(before), Some(after), Some(per)) => text.push_str(&format!(
                    "; server RSS {before} kB -> {after} kB: {per:.0} bytes per socket\n"
                )),
                _ => text.push_str(" (no --server-pid: memory not measured)\n"),
            }
        }
        text.push_str(if self.passed() {
            "  checks passed\n"
        } else {
            "  CHECKS FAILED\n"
        });
        text
    }
}
