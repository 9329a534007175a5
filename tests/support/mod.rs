//! Shared test harness: a real server on a free port over a chosen backend, an HTTP client and
//! a WebSocket client that wait for what they expect (with generous deadlines), never for time.
#![allow(dead_code)]

/// `suite!(test_a, test_b)`: each `async fn test_a(kind: Backend)` of the test file as two
/// tests, `memory::test_a` and `postgres_redis::test_a`, so one suite runs against both
/// backends. The file must have `Backend` in scope and declare `#[macro_use] mod support;`.
#[allow(unused_macros)]
macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::Backend::Memory).await })*
        }
        mod postgres_redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::Backend::Shared).await })*
        }
    };
}

pub mod conversations;
pub mod postgres_pair;
pub mod server_process;

use futures_util::{SinkExt, StreamExt};
use minichat::server::{AuthMode, RunningServer, Server, Settings};
use minichat_core::test_support::{unique_redis_prefix, TestDatabase};
use minichat_core::ChatConfig;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something it expects before failing.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub const SHARED_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Which backends a test server runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default: everything in process.
    Memory,
    /// PostgreSQL and Redis, each test with its own database and key prefix.
    Shared,
}

/// The backends of one test: owns the database (dropped at the end) and the Redis prefix.
/// Declare it before the test's servers, so that they are dropped (shut down) first.
pub struct Backends {
    pub kind: Backend,
    pub database: Option<TestDatabase>,
    pub redis_prefix: String,
}

impl Drop for Backends {
    /// The test's database drops itself; its keys on the shared Redis go too.
    fn drop(&mut self) {
        if self.kind == Backend::Shared {
            minichat_core::test_support::delete_redis_prefix(SHARED_REDIS_URL, &self.redis_prefix);
        }
    }
}

impl Backends {
    pub async fn new(kind: Backend) -> Backends {
        let database = match kind {
            Backend::Memory => None,
            Backend::Shared => Some(TestDatabase::create().await),
        };
        Backends {
            kind,
            database,
            redis_prefix: unique_redis_prefix(),
        }
    }

    pub fn chat_config(&self) -> ChatConfig {
        ChatConfig {
            database_url: self.database.as_ref().map(|d| d.url().to_owned()),
            redis_url: (self.kind == Backend::Shared).then(|| SHARED_REDIS_URL.to_owned()),
            redis_prefix: self.redis_prefix.clone(),
            database_pool_size: 4,
            ..ChatConfig::default()
        }
    }

    pub fn settings(&self, auth: AuthMode) -> Settings {
        Settings {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            auth,
            jwt_secret: Some("test-secret".into()),
            chat: self.chat_config(),
            ..Settings::default()
        }
    }
}

/// A running server and a client for it.
pub struct TestServer {
    pub server: Option<RunningServer>,
    pub addr: SocketAddr,
    pub http: reqwest::Client,
}

impl TestServer {
    pub async fn start(settings: Settings) -> TestServer {
        TestServer::over(Server::bind(settings).await.expect("server starts").spawn())
    }

    /// A client for a server started some other way (say, over a chat built by the test).
    pub fn over(server: RunningServer) -> TestServer {
        let addr = server.addr();
        TestServer {
            server: Some(server),
            addr,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(DEADLINE)
                .build()
                .expect("client"),
        }
    }

    /// A server with auth off (the original's contract) on `backends`.
    pub async fn open(backends: &Backends) -> TestServer {
        TestServer::start(backends.settings(AuthMode::Off)).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Shuts the server down gracefully (sockets closed, departures recorded): after this, it
    /// writes nothing more to its backends, so they can be cleaned up.
    pub async fn shutdown(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// The value of the unlabelled metric `name` in this server's `GET /metrics` (the
    /// process's: servers of one test binary share it), if it has one yet.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("scrape answered")
            .text()
            .await
            .expect("scrape body");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    /// GET, returning the status and the JSON body (`Null` when the body is not JSON).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(self.url(path)).json(&body)).await
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("request answered");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body read");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Creates a user and returns its JSON.
    pub async fn user(&self, username: &str) -> Value {
        let (status, body) = self.post("/users/", json!({ "username": username })).await;
        assert_eq!(status, 200, "create {username}: {body}");
        body
    }

    pub async fn message(&self, from: i64, to: i64, content: &str) -> Value {
        let (status, body) = self
            .post(
                "/messages/",
                json!({"sender_id": from, "receiver_id": to, "content": content}),
            )
            .await;
        assert_eq!(status, 200, "send: {body}");
        body
    }

    pub async fn ws(&self, path: &str) -> Ws {
        Ws::connect(&self.ws_url(path)).await
    }
}

impl Drop for TestServer {
    /// Best effort for a test that did not call [`TestServer::shutdown`]: on a multi-threaded
    /// runtime the server is shut down here, waited for, so that the test's [`Backends`]
    /// (declared before it, so dropped after it) delete its keys only once it has stopped
    /// writing; on a current-thread runtime, which cannot block, it is only told to stop.
    fn drop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
            tokio::task::block_in_place(|| runtime.block_on(server.shutdown()));
        } else {
            runtime.spawn(server.shutdown());
        }
    }
}

/// A unique, valid username (letters and digits only).
pub fn name(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client for tests.
pub struct Ws {
    pub stream: Stream,
}

impl Ws {
    pub async fn connect(url: &str) -> Ws {
        let (stream, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("WebSocket handshake");
        Ws { stream }
    }

    /// Connects and reads the system frame, after which the connection receives every event.
    pub async fn connect_ready(url: &str) -> Ws {
        let mut ws = Ws::connect(url).await;
        let first = ws.next_json().await;
        assert_eq!(first["type"], "system", "first frame: {first}");
        ws
    }

    /// The next frame of any kind.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        match tokio::time::timeout(DEADLINE, self.stream.next()).await {
            Ok(Some(Ok(frame))) => Some(frame),
            Ok(Some(Err(_))) | Ok(None) => None,
            Err(_) => panic!("no frame within {DEADLINE:?}"),
        }
    }

    /// The next text frame as JSON (skipping control frames).
    pub async fn next_json(&mut self) -> Value {
        loop {
            match self.next_frame().await {
                Some(Frame::Text(t)) => return serde_json::from_str(&t).expect("JSON frame"),
                Some(Frame::Ping(_)) | Some(Frame::Pong(_)) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The close frame the server sends (skipping anything before it).
    pub async fn next_close(&mut self) -> Option<CloseFrame> {
        loop {
            match self.next_frame().await {
                Some(Frame::Close(frame)) => return frame,
                Some(_) => continue,
                None => return None,
            }
        }
    }

    pub async fn send_json(&mut self, value: Value) {
        self.stream
            .send(Frame::Text(value.to_string().into()))
            .await
            .expect("send frame");
    }

    /// Asserts that no message frame is pending: a ping's pong must come next.
    pub async fn assert_no_pending_message(&mut self) {
        self.send_json(json!({"type": "ping"})).await;
        let next = self.next_json().await;
        assert_eq!(next["type"], "pong", "unexpected frame before pong: {next}");
    }
}

/// Polls `check` until it returns `Some`, failing after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy of the test's own on a free loopback port, in front of `target`: it can cut
/// every connection through it and refuse new ones (accepted, then closed at once), so a test
/// can drop a client's sockets, or take a backend away from one node without touching the
/// shared services. It can also [`hold`](TcpProxy::hold) ("black hole"): every connection,
/// old and new, stays open, but no byte goes through in either direction until
/// [`resume`](TcpProxy::resume), which delivers what waited, as a healed partition would.
pub struct TcpProxy {
    pub port: u16,
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    /// `true` while holding: the pumps forward nothing.
    held: watch::Sender<bool>,
    /// Bumped on every cut: each link watches it and ends when it changes.
    generation: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let (held, _) = watch::channel(false);
        let accept = tokio::spawn({
            let up = up.clone();
            let generation = generation.clone();
            let held = held.clone();
            async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        // A transient failure (a connection reset before it was accepted, or
                        // out of descriptors): keep serving, without spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    // Subscribe before checking `up`, so a cut between the two still applies.
                    let mut cuts = generation.subscribe();
                    if !up.load(Ordering::SeqCst) {
                        continue; // dropped: the client sees the connection closed
                    }
                    let (to_target, to_client) = (held.subscribe(), held.subscribe());
                    tokio::spawn(async move {
                        let Ok(outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        let (from_client, into_client) = inbound.into_split();
                        let (from_target, into_target) = outbound.into_split();
                        tokio::select! {
                            _ = async {
                                tokio::join!(
                                    pump(from_client, into_target, to_target),
                                    pump(from_target, into_client, to_client),
                                )
                            } => {}
                            _ = cuts.changed() => {}
                        }
                    });
                }
            }
        });
        TcpProxy {
            port: addr.port(),
            addr,
            up,
            held,
            generation,
            accept,
        }
    }

    /// The proxy's own address, to connect to instead of the target's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `scheme://127.0.0.1:<port>`.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    /// Cuts every connection and refuses new ones until [`restore`](TcpProxy::restore).
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// Accepts and forwards new connections again (the cut ones stay closed).
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// Black hole: connections (old and new) stay open, but no byte goes through either way.
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Forwards again, the bytes that waited first.
    pub fn resume(&self) {
        self.held.send_replace(false);
    }
}

/// Copies `from` to `to` while `held` is false: a read made just before a hold is delivered only
/// after the resume. Ends at EOF (passed on as a shutdown) or on an error.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut held: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if held.wait_for(|h| !*h).await.is_err() {
            return;
        }
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if held.wait_for(|h| !*h).await.is_err() || to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// The `minichat-server` binary, built once before the tests by `scripts/test`, which passes
/// its path in `MINICHAT_SERVER_BIN` (`cargo test --test X` alone builds no other crate's
/// binary, and building it inside a test would be slow and hidden).
pub fn server_binary() -> PathBuf {
    let path = std::env::var_os("MINICHAT_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
            "MINICHAT_SERVER_BIN is not set: run the tests with `bash scripts/test`, or build the \
             server first: `cargo build -p minichat-server --bin minichat-server && \
             MINICHAT_SERVER_BIN=target/debug/minichat-server cargo test ...`"
        )
        });
    assert!(
        path.is_file(),
        "MINICHAT_SERVER_BIN={} is not a file: build it with `cargo build -p minichat-server --bin minichat-server`",
        path.display()
    );
    path
}

/// Builds a sibling target of this package's tests with `cargo build --quiet <args>` in the
/// profile the tests run in (`target/<profile>/`, found from this test binary's path under
/// `target/<profile>/deps`), and returns `target/<profile>/<file_name>` plus the platform's
/// executable suffix, e.g. `cargo_built(&["--example", "x"], "examples/x")`. `cargo test --test
/// …` alone builds neither other crates' binaries nor examples; an up-to-date build is a no-op,
/// and each `(args, file_name)` is built once per test process.
pub fn cargo_built(args: &[&str], file_name: &str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<(Vec<String>, String), PathBuf>> = Mutex::new(BTreeMap::new());
    // Held through the build, so concurrent tests wait for one build rather than race it; a
    // failed build (a panic here) is retried, and fails again, in the next test that asks.
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let key = (
        args.iter().map(|a| a.to_string()).collect(),
        file_name.to_owned(),
    );
    if let Some(binary) = built.get(&key) {
        return binary.clone();
    }
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary under target/<profile>/deps");
    let mut build = std::process::Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile_dir.file_name().and_then(|p| p.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            build.arg("--release");
        }
        Some(profile) => {
            build.args(["--profile", profile]);
        }
    }
    let command = format!("cargo build {}", args.join(" "));
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("run `{command}`: {e}"));
    assert!(status.success(), "`{command}` failed");
    let binary = profile_dir.join(format!("{file_name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "`{command}` left no binary at {}: is the target directory elsewhere?",
        binary.display()
    );
    built.insert(key, binary.clone());
    binary
}

/// Settings for a busy test: no send-rate limit in the way.
pub fn busy(backends: &Backends) -> Settings {
    let mut settings = backends.settings(AuthMode::Off);
    settings.limits.send_rate_per_sec = 100_000;
    settings.limits.send_burst = 100_000;
    settings
}

/// Reads message frames until `idle` passes with none, checking that each continues the
/// stream (`seq` is exactly one more than the last) and is new.
pub async fn read_stream(
    ws: &mut Ws,
    last_seq: &mut i64,
    seen: &mut HashSet<i64>,
    budget: usize,
    idle: Duration,
) -> usize {
    let mut read = 0;
    while read < budget {
        let frame = match tokio::time::timeout(idle, ws.stream.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
            Ok(_) | Err(_) => break,
        };
        let frame: Value = serde_json::from_str(&frame).expect("JSON frame");
        if frame["type"] != "message" {
            continue;
        }
        let seq = frame["seq"].as_i64().expect("seq");
        assert_eq!(
            seq,
            *last_seq + 1,
            "gap or reorder: got seq {seq} after {last_seq}"
        );
        let message_id = frame["id"].as_i64().expect("id");
        assert!(
            seen.insert(message_id),
            "message {message_id} delivered twice"
        );
        *last_seq = seq;
        read += 1;
    }
    read
}
