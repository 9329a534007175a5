//! Operability: `GET /metrics` counts what happened, in valid Prometheus text, and the binary's
//! JSON logs name each request and socket without leaking tokens or messages.
//!
//! The metrics recorder is process-global (every server of a process shares it), so this file is
//! its own test process, all in-process traffic happens in one test, and every check compares a
//! scrape after the traffic with one before it. The log test runs the `minichat-server` binary
//! as a child process, so it moves no counter of this one.

mod support;

use futures_util::SinkExt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use support::{eventually, name, Backend, Backends, TestServer, Ws, DEADLINE};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message as Frame;

// ---- a strict parser of the Prometheus text format (0.0.4) ------------------------------------

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Every sample of a scrape, and each family's declared type.
#[derive(Debug, Default)]
struct Scrape {
    samples: Vec<Sample>,
    types: HashMap<String, String>,
}

impl Scrape {
    /// The value of the series `name` whose labels are exactly `labels`; 0 when absent (a series
    /// appears once first touched).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut found = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == wanted);
        match (found.next(), found.next()) {
            (Some(s), None) => s.value,
            (None, _) => 0.0,
            (Some(_), Some(_)) => panic!("series {name}{wanted:?} appears twice"),
        }
    }

    fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

/// `{a="x",b="y\"z"}` after the name; returns the labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let label = &rest[..eq];
        if !is_label_name(label) {
            return Err(format!("bad label name {label:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, '\n')) | None => return Err("unterminated label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(label.to_owned(), value).is_some() {
            return Err(format!("label {label} twice"));
        }
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

/// The family a sample belongs to: its own name, or a histogram's/summary's base name.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if matches!(
                types.get(base).map(String::as_str),
                Some("histogram" | "summary")
            ) {
                return Some(base);
            }
        }
    }
    None
}

/// Parses a whole exposition, failing on any line that is not a comment, blank or a sample of
/// a family whose `# TYPE` came before it.
fn parse_exposition(text: &str) -> Result<Scrape, String> {
    let mut scrape = Scrape::default();
    for (n, line) in text.lines().enumerate() {
        let fail = |why: String| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match words.next() {
                Some("TYPE") => {
                    let name = words
                        .next()
                        .ok_or_else(|| fail("TYPE without name".into()))?;
                    let kind = words
                        .next()
                        .ok_or_else(|| fail("TYPE without type".into()))?;
                    if !is_metric_name(name) {
                        return Err(fail("bad metric name".into()));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(fail(format!("unknown type {kind}")));
                    }
                    if scrape.types.insert(name.into(), kind.into()).is_some() {
                        return Err(fail("family typed twice".into()));
                    }
                }
                Some("HELP") => {
                    let name = words
                        .next()
                        .ok_or_else(|| fail("HELP without name".into()))?;
                    if !is_metric_name(name) {
                        return Err(fail("bad metric name".into()));
                    }
                }
                _ => {}
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| fail("no value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(fail("bad metric name".into()));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(fail)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| fail("no space before the value".into()))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or_default()).map_err(fail)?;
        if let Some(timestamp) = fields.next() {
            timestamp
                .parse::<i64>()
                .map_err(|_| fail("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(fail("trailing fields".into()));
        }
        if family_of(name, &scrape.types).is_none() {
            return Err(fail("sample before its # TYPE".into()));
        }
        scrape.samples.push(Sample {
            name: name.into(),
            labels,
            value,
        });
    }
    check_histograms(&scrape)?;
    Ok(scrape)
}

type Labels = Vec<(String, String)>;

/// Each histogram series: cumulative buckets ending in `+Inf`, which equals `_count`.
fn check_histograms(scrape: &Scrape) -> Result<(), String> {
    for (family, kind) in &scrape.types {
        if kind != "histogram" {
            continue;
        }
        // Labels other than `le` → the series' (le, count) buckets.
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for s in scrape
            .samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let le = parse_value(s.labels.get("le").ok_or("bucket without le")?)?;
            let key = s
                .labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            series.entry(key).or_default().push((le, s.value));
        }
        for (labels, buckets) in series {
            let mut last = (f64::NEG_INFINITY, 0.0);
            for &(le, count) in &buckets {
                if le <= last.0 || count < last.1 {
                    return Err(format!("{family}{labels:?}: buckets not cumulative"));
                }
                last = (le, count);
            }
            let label_refs: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let count = scrape.value(&format!("{family}_count"), &label_refs);
            if last.0 != f64::INFINITY || last.1 != count {
                return Err(format!("{family}{labels:?}: +Inf bucket is not _count"));
            }
        }
    }
    Ok(())
}

#[test]
fn the_parser_is_strict() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\"} 3\n\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n";
    let scrape = parse_exposition(good).unwrap();
    assert_eq!(scrape.value("a_total", &[("x", "1"), ("y", "q\"")]), 3.0);
    for bad in [
        "a_total 1\n",                                              // no TYPE
        "# TYPE a counter\na{x=1} 1\n",                             // unquoted
        "# TYPE a counter\na{x=\"1\"}1\n",                          // no space
        "# TYPE a counter\na one\n",                                // not a number
        "# TYPE a counter\na{x=\"1\" 1\n",                          // unclosed
        "# TYPE a counter\na 1 2 3\n",                              // trailing
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n", // +Inf ≠ count
        "# TYPE 1a counter\n",                                      // bad name
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

// ---- the metrics, over a real server ------------------------------------------------------------

async fn scrape(server: &TestServer) -> Scrape {
    let response = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("scrape answered");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain"),
        "content type {content_type}"
    );
    let text = response.text().await.expect("scrape body");
    parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n--- scrape ---\n{text}"))
}

/// After minus before, for one series.
fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

fn id(v: &Value) -> i64 {
    v["id"].as_i64().expect("id")
}

const SENT_BEFORE_SOCKET: usize = 3;
const SENT_TO_SOCKET: usize = 4;
const SENT: usize = SENT_BEFORE_SOCKET + SENT_TO_SOCKET;

const ROUTE_TEMPLATES: &[&str] = &[
    "/",
    "/health",
    "/metrics",
    "/openapi.json",
    "/docs/{file}",
    "/app/{file}",
    "/redoc",
    "/redoc/redoc.standalone.js",
    "/users/",
    "/users/{user_id}",
    "/messages/",
    "/messages/recent/{user_id}",
    "/ws/{user_id}",
    "unmatched",
];

/// Everything that moves the process's counters, in one test so nothing else moves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_happened() {
    let backends = Backends::new(Backend::Memory).await;
    let server = TestServer::open(&backends).await;
    let before = scrape(&server).await;
    for family in [
        "minichat_websocket_connections",
        "minichat_websocket_connections_total",
        "minichat_messages_stored_total",
        "minichat_messages_delivered_total",
        "minichat_backend_errors_total",
    ] {
        assert!(
            before.types.contains_key(family),
            "{family} is exported before anything happened"
        );
    }

    let alice = id(&server.user(&name("alice")).await);
    let bob = id(&server.user(&name("bob")).await);
    for i in 0..SENT_BEFORE_SOCKET {
        server.message(alice, bob, &format!("early {i}")).await;
    }
    let mut ws = Ws::connect_ready(&server.ws_url(&format!("/ws/{bob}"))).await;
    let during = scrape(&server).await;
    assert_eq!(
        delta(&before, &during, "minichat_websocket_connections", &[]),
        1.0,
        "one socket open"
    );
    for i in 0..SENT_TO_SOCKET {
        server.message(alice, bob, &format!("live {i}")).await;
        let frame = ws.next_json().await;
        assert_eq!(frame["content"], format!("live {i}"), "{frame}");
    }
    // A raw id in a path must not become a label value.
    let (status, _) = server.get(&format!("/users/{alice}")).await;
    assert_eq!(status, 200);
    let (status, _) = server.get("/no/such/path").await;
    assert_eq!(status, 404);

    // The server counts a delivery once the socket write returns, which may be just after the
    // client read the frame: wait for it, then everything must match exactly.
    let after = eventually(DEADLINE, "deliveries counted", || async {
        let after = scrape(&server).await;
        (delta(&before, &after, "minichat_messages_delivered_total", &[]) >= SENT_TO_SOCKET as f64)
            .then_some(after)
    })
    .await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    let sent = SENT as f64;
    assert_eq!(d("minichat_messages_stored_total", &[]), sent);
    assert_eq!(
        d("minichat_messages_delivered_total", &[]),
        SENT_TO_SOCKET as f64
    );
    assert_eq!(d("minichat_messages_replayed_total", &[]), 0.0);
    assert_eq!(d("minichat_messages_gap_filled_total", &[]), 0.0);
    assert_eq!(
        d("minichat_delivery_duration_seconds_count", &[]),
        SENT_TO_SOCKET as f64,
        "one delivery time per live event"
    );
    assert_eq!(
        d("minichat_events_published_total", &[("kind", "message")]),
        2.0 * sent,
        "each message is published to its receiver's and its sender's streams"
    );
    assert_eq!(
        d("minichat_send_duration_seconds_count", &[("result", "ok")]),
        sent
    );
    assert_eq!(
        d(
            "minichat_http_requests_total",
            &[
                ("route", "/messages/"),
                ("method", "POST"),
                ("status", "200")
            ]
        ),
        sent
    );
    assert_eq!(
        d(
            "minichat_http_request_duration_seconds_count",
            &[("route", "/messages/"), ("method", "POST")]
        ),
        sent
    );
    assert_eq!(
        d(
            "minichat_http_requests_total",
            &[("route", "/users/"), ("method", "POST"), ("status", "200")]
        ),
        2.0
    );
    assert_eq!(
        d(
            "minichat_http_requests_total",
            &[
                ("route", "/users/{user_id}"),
                ("method", "GET"),
                ("status", "200")
            ]
        ),
        1.0
    );
    assert_eq!(
        d(
            "minichat_http_requests_total",
            &[("route", "unmatched"), ("method", "GET"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        d(
            "minichat_http_requests_total",
            &[
                ("route", "/ws/{user_id}"),
                ("method", "GET"),
                ("status", "101")
            ]
        ),
        1.0
    );
    assert_eq!(d("minichat_websocket_connections_total", &[]), 1.0);
    for backend in ["storage", "cache", "broker"] {
        assert_eq!(
            d("minichat_backend_errors_total", &[("backend", backend)]),
            0.0
        );
    }
    for route in after.label_values("minichat_http_requests_total", "route") {
        assert!(
            ROUTE_TEMPLATES.contains(&route.as_str()),
            "route label {route:?} is not a template"
        );
    }
    for (family, kind) in [
        ("minichat_websocket_connections", "gauge"),
        ("minichat_websocket_connections_total", "counter"),
        ("minichat_messages_stored_total", "counter"),
        ("minichat_messages_delivered_total", "counter"),
        ("minichat_events_published_total", "counter"),
        ("minichat_send_duration_seconds", "histogram"),
        ("minichat_delivery_duration_seconds", "histogram"),
        ("minichat_http_requests_total", "counter"),
        ("minichat_http_request_duration_seconds", "histogram"),
        ("minichat_backend_errors_total", "counter"),
        ("minichat_slow_consumer_closes_total", "counter"),
    ] {
        assert_eq!(
            after.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }

    // Closing the socket takes it off the gauge.
    ws.stream.send(Frame::Close(None)).await.expect("close");
    drop(ws);
    eventually(DEADLINE, "the socket gauge back down", || async {
        let now = scrape(&server).await;
        (delta(&before, &now, "minichat_websocket_connections", &[]) == 0.0).then_some(())
    })
    .await;

    // A second server with the tightest send limit: its refusals are counted (the counters are
    // the process's, so only this part's traffic moves them from here).
    let mut strict = backends.settings(minichat::server::AuthMode::Off);
    strict.limits.send_rate_per_sec = 1;
    strict.limits.send_burst = 1;
    let limited = TestServer::start(strict).await;
    let before = scrape(&limited).await;
    let carol = id(&limited.user(&name("carol")).await);
    let dave = id(&limited.user(&name("dave")).await);
    let (mut ok, mut refused) = (0.0, 0.0);
    while refused == 0.0 {
        assert!(ok < 5.0, "no 429 after {ok} sends at 1/s");
        let (status, body) = limited
            .post(
                "/messages/",
                json!({"sender_id": carol, "receiver_id": dave, "content": "fast"}),
            )
            .await;
        match status {
            200 => ok += 1.0,
            429 => refused += 1.0,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let after = scrape(&limited).await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    assert_eq!(
        d("minichat_rate_limited_total", &[("limit", "send")]),
        refused
    );
    assert_eq!(
        d(
            "minichat_http_requests_total",
            &[
                ("route", "/messages/"),
                ("method", "POST"),
                ("status", "429")
            ]
        ),
        refused
    );
    assert_eq!(d("minichat_messages_stored_total", &[]), ok);
}

// ---- JSON logs of the binary ----------------------------------------------------------------

/// Collects a child's output lines as they come.
fn collect(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            into.lock().unwrap().push(line);
        }
    });
}

fn parsed(lines: &Arc<Mutex<Vec<String>>>) -> Vec<Value> {
    lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The lines logged inside the span named `span` (the innermost) with `field == value`.
fn in_span<'a>(logs: &'a [Value], span: &str, field: &str, value: &Value) -> Vec<&'a Value> {
    logs.iter()
        .filter(|l| l["span"]["name"] == span && &l["span"][field] == value)
        .collect()
}

/// Whether `s` is shaped like a request or socket id: `3f9a1c0e-000001a4`.
fn is_id(s: &str) -> bool {
    let hex = |part: &str| {
        part.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    s.split_once('-')
        .is_some_and(|(node, n)| node.len() == 8 && n.len() >= 8 && hex(node) && hex(n))
}

/// A response's `x-request-id`, checked for its shape.
fn x_request_id(headers: &http::HeaderMap) -> String {
    let id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_owned();
    assert!(is_id(&id), "x-request-id {id:?}");
    id
}

const TOKEN: &str = "secret-value-5f3a";
const CONTENT: &str = "zebra-quokka-7731";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_ids_and_no_secrets() {
    let binary = support::server_binary();
    let port = minichat_core::test_support::free_port();
    let mut child = tokio::process::Command::new(binary)
        .env_remove("RUST_LOG")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env("MINICHAT_AUTH", "off")
        .env("MINICHAT_BIND", format!("127.0.0.1:{port}"))
        .env("MINICHAT_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start minichat-server");
    let lines = Arc::new(Mutex::new(Vec::new()));
    collect(child.stdout.take().expect("stdout"), lines.clone());
    collect(child.stderr.take().expect("stderr"), lines.clone());
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .expect("client");
    eventually(DEADLINE, "the server to answer", || async {
        http.get(format!("{base}/health"))
            .send()
            .await
            .ok()
            .map(drop)
    })
    .await;

    let create = |username: String| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let response = http
                .post(format!("{base}/users/"))
                .json(&json!({ "username": username }))
                .send()
                .await
                .expect("create user");
            assert_eq!(response.status().as_u16(), 200);
            id(&response.json::<Value>().await.expect("user JSON"))
        }
    };
    let alice = create(name("alice")).await;
    let bob = create(name("bob")).await;

    // A request with a token in its query: the request id comes back in x-request-id.
    let response = http
        .get(format!("{base}/users/{alice}?token={TOKEN}"))
        .send()
        .await
        .expect("get user");
    assert_eq!(response.status().as_u16(), 200);
    let request_id = x_request_id(response.headers());

    // A socket (its token in the query too) that receives a message with distinctive content;
    // its 101 names the upgrade request.
    let (stream, upgrade) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws/{bob}?token={TOKEN}"))
            .await
            .expect("WebSocket handshake");
    let upgrade_id = x_request_id(upgrade.headers());
    assert_ne!(upgrade_id, request_id);
    let mut ws = Ws { stream };
    assert_eq!(ws.next_json().await["type"], "system");
    let response = http
        .post(format!("{base}/messages/"))
        .json(&json!({"sender_id": alice, "receiver_id": bob, "content": CONTENT}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 200);
    let frame = ws.next_json().await;
    assert_eq!(frame["content"], CONTENT);
    ws.stream.send(Frame::Close(None)).await.expect("close");
    drop(ws);

    let logs = eventually(DEADLINE, "the socket's last line", || async {
        let logs = parsed(&lines);
        logs.iter()
            .any(|l| l["message"] == "disconnected")
            .then_some(logs)
    })
    .await;
    child.kill().await.expect("kill the server");

    // The request's line names its id, and its path without the query.
    let served = in_span(&logs, "request", "id", &json!(request_id));
    assert!(
        served
            .iter()
            .any(|l| l["message"] == "served" && l["status"] == 200),
        "no served line for request {request_id}: {logs:#?}"
    );
    assert!(served
        .iter()
        .all(|l| l["span"]["path"] == format!("/users/{alice}")));

    // Every line of the socket names its connection and user, and the upgrade request.
    let socket_lines: Vec<&Value> = logs.iter().filter(|l| l["span"]["name"] == "ws").collect();
    let connected = socket_lines
        .iter()
        .find(|l| l["message"] == "connected")
        .unwrap_or_else(|| panic!("no connected line: {logs:#?}"));
    let conn = connected["span"]["conn"].clone();
    assert!(
        conn.as_str().is_some_and(is_id),
        "conn id, shaped like a request id: {connected}"
    );
    assert_eq!(connected["span"]["user"], bob);
    let disconnected = in_span(&logs, "ws", "conn", &conn);
    assert!(
        disconnected.iter().any(|l| l["message"] == "disconnected"),
        "the disconnected line carries conn: {logs:#?}"
    );
    for line in &socket_lines {
        assert!(
            line["spans"].as_array().is_some_and(|spans| spans
                .iter()
                .any(|s| s["name"] == "request"
                    && s["path"] == format!("/ws/{bob}")
                    && s["id"] == upgrade_id)),
            "a socket line without its upgrade request's id {upgrade_id}: {line}"
        );
    }

    let everything = lines.lock().unwrap().join("\n");
    assert!(!everything.contains(TOKEN), "a token was logged");
    assert!(!everything.contains(CONTENT), "message content was logged");
}
