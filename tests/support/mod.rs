//! Shared test harness: a real server on a free port over a chosen backend, an HTTP client and
//! a WebSocket client that wait for what they expect (with generous deadlines), never for time.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use minichat::server::{AuthMode, RunningServer, Server, Settings};
use minichat_core::test_support::{unique_redis_prefix, TestDatabase};
use minichat_core::ChatConfig;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
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
pub struct Backends {
    pub kind: Backend,
    pub database: Option<TestDatabase>,
    pub redis_prefix: String,
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
        let server = Server::bind(settings).await.expect("server starts").spawn();
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

    pub async fn shutdown(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
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

/// A throw-away `redis-server` of the test's own on a free loopback port (never the shared
/// one), killed when dropped.
pub struct RedisProcess {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisProcess {
    pub async fn start() -> RedisProcess {
        let port = minichat_core::test_support::free_port();
        let mut process = RedisProcess { port, child: None };
        process.restart().await;
        process
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and waits until it answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 16];
                if stream.write_all(b"PING\r\n").await.is_ok() {
                    if let Ok(n) = stream.read(&mut buf).await {
                        if buf[..n].starts_with(b"+PONG") {
                            return;
                        }
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not come up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills it and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
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
/// every connection through it and refuse new ones, so a test can take a backend away from
/// one node without touching the shared services.
pub struct TcpProxy {
    pub port: u16,
    state: std::sync::Arc<ProxyState>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    blocked: std::sync::atomic::AtomicBool,
    links: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = std::sync::Arc::new(ProxyState::default());
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if shared.blocked.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                shared.links.lock().unwrap().push(link.abort_handle());
            }
        });
        TcpProxy {
            port,
            state,
            accept,
        }
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Cuts every connection and refuses new ones until [`restore`](TcpProxy::restore).
    pub fn cut(&self) {
        self.state
            .blocked
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for link in self.state.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    pub fn restore(&self) {
        self.state
            .blocked
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
