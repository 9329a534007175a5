//! The load tool (`minichat-load`) run briefly against a real in-process server: its JSON line
//! must agree with what the server did (everything acked is delivered once, in seq order), and
//! a run the server refuses must fail with the refusals counted.

mod support;

use minichat::server::AuthMode;
use serde_json::Value;
use support::{busy, cargo_built, Backend, Backends, TestServer, DEADLINE};

/// Runs `minichat-load --url <server> <args>`; returns its exit code and its JSON line.
async fn load(server: &TestServer, args: &[&str]) -> (i32, Value) {
    let binary = tokio::task::spawn_blocking(|| {
        cargo_built(
            &["-p", "minichat-load", "--bin", "minichat-load"],
            "minichat-load",
        )
    })
    .await
    .expect("build task");
    let run = tokio::process::Command::new(binary)
        .arg("--url")
        .arg(server.url(""))
        .args(args)
        .kill_on_drop(true)
        .output();
    // A few seconds of load plus set-up; the deadline only catches a hung tool.
    let output = tokio::time::timeout(DEADLINE * 3, run)
        .await
        .expect("minichat-load finishes in time")
        .expect("minichat-load runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut lines = stdout.lines();
    let line = lines
        .next()
        .unwrap_or_else(|| panic!("no JSON line; stderr: {stderr}"));
    assert!(lines.next().is_none(), "one line only: {stdout}");
    let report: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    (output.status.code().expect("exit code"), report)
}

fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {report}"))
}

/// The checks every clean WebSocket run must pass.
fn assert_clean(code: i32, report: &Value, deliveries_per_ack: u64) {
    assert_eq!(code, 0, "{report}");
    let sent = count(report, "sent");
    assert!(sent > 0, "{report}");
    assert_eq!(count(report, "acked"), sent, "{report}");
    assert_eq!(
        count(report, "delivered"),
        sent * deliveries_per_ack,
        "{report}"
    );
    assert_eq!(
        count(report, "expected_deliveries"),
        sent * deliveries_per_ack
    );
    for field in [
        "errors",
        "unanswered",
        "disconnects",
        "lost",
        "duplicates",
        "seq_errors",
    ] {
        assert_eq!(count(report, field), 0, "{field}: {report}");
    }
    // Every delivery is in the second its send was scheduled in; the slow ones are among them.
    let seconds = report["delivery_by_second"]
        .as_array()
        .unwrap_or_else(|| panic!("delivery_by_second in {report}"));
    let by_second: u64 = seconds.iter().map(|s| count(s, "deliveries")).sum();
    assert_eq!(by_second, sent * deliveries_per_ack, "{report}");
    for (at, second) in seconds.iter().enumerate() {
        assert_eq!(count(second, "second"), at as u64, "{report}");
        assert!(count(second, "over_10ms") <= count(second, "deliveries"));
    }
    for latency in ["ack_latency_ms", "delivery_latency_ms"] {
        let summary = &report[latency];
        let (p50, max) = (summary["p50"].as_f64(), summary["max"].as_f64());
        assert!(
            matches!((p50, max), (Some(p50), Some(max)) if 0.0 < p50 && p50 <= max),
            "{latency}: {report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_and_fanout_runs_deliver_every_acked_message_once() {
    let backends = Backends::new(Backend::Memory).await;
    // With tokens, so the tool's sign-up and bearer paths are exercised.
    let mut settings = busy(&backends);
    settings.auth = AuthMode::Token;
    let mut server = TestServer::start(settings).await;

    let (code, report) = load(
        &server,
        &[
            "chat",
            "--users",
            "10",
            "--rate",
            "300",
            "--duration",
            "1.5",
        ],
    )
    .await;
    assert_clean(code, &report, 1);
    assert_eq!(report["scenario"], "chat");
    assert_eq!(report["params"]["users"], 10);
    // Open loop: the timetable is kept, whatever the answers do (300/s for 1.5 s).
    assert!((400..=460).contains(&count(&report, "sent")), "{report}");

    let (code, report) = load(
        &server,
        &[
            "chat",
            "--users",
            "4",
            "--max",
            "--window",
            "4",
            "--duration",
            "1",
        ],
    )
    .await;
    assert_clean(code, &report, 1);

    let (code, report) = load(
        &server,
        &[
            "fanout",
            "--peers",
            "5",
            "--sockets-per-receiver",
            "2",
            "--rate",
            "100",
            "--duration",
            "1",
        ],
    )
    .await;
    assert_clean(code, &report, 2);

    // Groups of four: each message is owed to the three other members, and the groups'
    // `created` events fill each user's first seq.
    let (code, report) = load(
        &server,
        &[
            "groups",
            "--groups",
            "3",
            "--members",
            "4",
            "--rate",
            "120",
            "--duration",
            "1",
        ],
    )
    .await;
    assert_clean(code, &report, 3);
    assert_eq!(report["scenario"], "groups");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_and_idle_runs_report_what_the_server_did() {
    let backends = Backends::new(Backend::Memory).await;
    let mut server = TestServer::start(busy(&backends)).await;

    let (code, report) = load(
        &server,
        &[
            "rest",
            "--users",
            "4",
            "--connections",
            "2",
            "--messages",
            "60",
            "--max",
        ],
    )
    .await;
    assert_eq!(code, 0, "{report}");
    assert_eq!((count(&report, "sent"), count(&report, "acked")), (60, 60));
    // Every one of them is stored: the receivers' histories hold them all.
    let (status, users) = server.get("/users/?limit=1000").await;
    assert_eq!(status, 200);
    let mut stored = 0;
    for user in users.as_array().expect("users") {
        let (_, messages) = server
            .get(&format!("/messages/?user_id={}&limit=1000", user["id"]))
            .await;
        stored += messages.as_array().expect("messages").len();
    }
    assert_eq!(
        stored,
        2 * 60,
        "each message is in its sender's and receiver's history"
    );

    // The server runs in this process, so its memory is this process's.
    let pid = std::process::id().to_string();
    let (code, report) = load(
        &server,
        &[
            "idle",
            "--sockets",
            "40",
            "--sockets-per-user",
            "8",
            "--server-pid",
            &pid,
            "--hold",
            "0.2",
        ],
    )
    .await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["idle"]["sockets"], 40);
    assert_eq!(count(&report, "disconnects"), 0);
    assert!(
        report["idle"]["rss_after_kb"].as_u64() > Some(0),
        "{report}"
    );
    assert!(report["idle"]["bytes_per_socket"].is_number(), "{report}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_the_server_refuses_fails_and_counts_the_refusals() {
    let backends = Backends::new(Backend::Memory).await;
    // The default send limit (30/s, bursts of 100) against 2 users sending 300/s each.
    let mut server = TestServer::open(&backends).await;
    let (code, report) = load(
        &server,
        &[
            "chat",
            "--users",
            "2",
            "--rate",
            "600",
            "--duration",
            "1",
            "--grace",
            "3",
        ],
    )
    .await;
    assert_eq!(code, 1, "{report}");
    let errors = count(&report, "errors");
    assert!(errors > 0, "{report}");
    assert_eq!(
        report["error_statuses"]["429"].as_u64(),
        Some(errors),
        "{report}"
    );
    // What was acked is still delivered: refusals are not losses.
    assert_eq!(count(&report, "delivered"), count(&report, "acked"));
    assert_eq!(count(&report, "lost"), 0);
    assert_eq!(count(&report, "seq_errors"), 0);
    server.shutdown().await;
}
