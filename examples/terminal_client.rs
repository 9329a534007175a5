//! A line-oriented terminal client for a Minichat server: plain stdin in, plain stdout out, so a
//! person can chat with it in a terminal and a program can drive it through pipes.
//!
//! Start a server (in-memory storage, auth `token`) and two clients, each in its own terminal:
//!
//! ```sh
//! cargo run --release -p minichat-server
//! cargo run --example terminal_client -- --signup alice
//! cargo run --example terminal_client -- --signup bob --peer alice
//! ```
//!
//! `--signup NAME` registers a new user (`POST /users/`) and prints its id and token; run again
//! later as that user with `--user-id ID --token TOKEN` (the token can also come from
//! `MINICHAT_TOKEN`; against a server with auth `off` it may be left out). `--server URL` picks
//! the server (default `http://127.0.0.1:8000`; plain HTTP only) and `--peer USERNAME_OR_ID` the
//! user to chat with.
//!
//! Every line typed is sent to the peer over the WebSocket (`ws://…/ws/<id>?token=…`). Commands:
//!
//! | line            | effect                                                                 |
//! |-----------------|------------------------------------------------------------------------|
//! | `/peer NAME`    | chat with NAME (a username, or an id), and watch its presence          |
//! | `/history`      | the last 20 messages with the peer, oldest first                       |
//! | `/help`         | this list                                                              |
//! | `/quit`         | close the connection and exit (status 0)                               |
//! | `//text`        | send `/text` as a message                                              |
//!
//! What it prints, one event a line:
//!
//! ```text
//! * connected as bob
//! [10:15:30] alice: hello bob              a message (the time is the server's, in UTC)
//! > hi alice (sent #42)                    a line of yours, stored by the server as message 42
//! * alice is typing…
//! * alice read up to #42
//! * alice is online
//! ! Message content cannot be empty        an error (from the server or the client)
//! * reconnecting…                          the connection dropped; retrying (0.2 s, doubling to 5 s)
//! * reconnected
//! ```
//!
//! Nothing is lost across a drop: the client keeps the highest update sequence number (`seq`)
//! it has seen without a gap and reconnects with `?since=<seq>`, so the server replays what was
//! missed; message ids already printed are skipped. Lines typed while disconnected are queued (up
//! to 100) and sent after the reconnect; a line sent but not yet acknowledged when the
//! connection dropped is sent again with the same `client_id`, which the server stores once.
//!
//! After printing a message from the peer it sends a read receipt, and after choosing a peer a
//! presence `watch`. It sends no typing notices (it only sees whole lines). A server that does
//! not know a frame answers with an error frame: the client prints it and carries on.
//!
//! At the end of stdin it waits (up to 10 s) until every line it read has been acknowledged,
//! then exits with status 0 (1 if some could not be delivered).

use clap::{ArgGroup, Parser};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Display;
use std::future::Future;
use std::io::{BufRead, Write};
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message as Frame};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Lines kept while they wait for their `ack` (typed while disconnected, or in flight).
/// How long read receipts are gathered before one frame per peer goes out.
const READ_RECEIPT_DELAY: Duration = Duration::from_millis(300);
const OUTBOX_LIMIT: usize = 100;
/// Messages listed by `/history`.
const HISTORY_LIMIT: usize = 20;
/// First reconnect delay, doubled after each failed attempt up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the client pings an established connection, and how long a silent one is trusted.
const PING_EVERY: Duration = Duration::from_secs(20);
const SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// Time limit of a REST request or a WebSocket handshake.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the end of stdin waits for the last lines to be acknowledged.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Message ids remembered to skip duplicates after a resume.
const PRINTED_MEMORY: usize = 50_000;

#[derive(Parser, Debug)]
#[command(
    about = "Line-oriented terminal client for a Minichat server",
    group(ArgGroup::new("identity").required(true).args(["signup", "user_id"]))
)]
struct Args {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    server: String,
    /// Register a new user with this username and chat as it (the token is printed).
    #[arg(long, value_name = "USERNAME", conflicts_with = "user_id")]
    signup: Option<String>,
    /// Chat as this existing user (with --token when the server's auth is on).
    #[arg(long, value_name = "ID")]
    user_id: Option<i64>,
    /// Bearer token of --user-id (with --signup: a token allowed to sign users up, if required).
    #[arg(long, env = "MINICHAT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The user to chat with (username or id); or choose later with `/peer NAME`.
    #[arg(long, value_name = "USERNAME_OR_ID")]
    peer: Option<String>,
}

/// Writes one line to stdout and flushes it; a closed stdout ends the program quietly.
fn say(line: impl Display) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
        std::process::exit(1);
    }
}

/// The `HH:MM:SS` of an RFC 3339 timestamp (UTC, as the server writes it).
fn clock(timestamp: &str) -> &str {
    match timestamp.get(11..19) {
        Some(time) if timestamp.as_bytes().get(10) == Some(&b'T') => time,
        _ => "--:--:--",
    }
}

/// The text of an error `detail`: a sentence, or the messages of a validation error list.
fn detail_text(detail: &Value) -> String {
    match detail {
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let msgs: Vec<String> = items
                .iter()
                .map(|item| match item.get("msg").and_then(Value::as_str) {
                    Some(msg) => msg.to_owned(),
                    None => item.to_string(),
                })
                .collect();
            msgs.join("; ")
        }
        Value::Null => "no detail given".to_owned(),
        other => other.to_string(),
    }
}

/// A message as the server sends it (REST and WebSocket), reduced to what is printed.
struct Msg {
    id: i64,
    sender_id: i64,
    sender_username: String,
    receiver_id: i64,
    content: String,
    timestamp: String,
}

impl Msg {
    fn parse(v: &Value) -> Option<Msg> {
        Some(Msg {
            id: v.get("id")?.as_i64()?,
            sender_id: v.get("sender_id")?.as_i64()?,
            sender_username: v.get("sender_username")?.as_str()?.to_owned(),
            receiver_id: v.get("receiver_id")?.as_i64()?,
            content: v.get("content")?.as_str()?.to_owned(),
            timestamp: v.get("timestamp")?.as_str().unwrap_or_default().to_owned(),
        })
    }

    fn line(&self) -> String {
        format!(
            "[{}] {}: {}",
            clock(&self.timestamp),
            self.sender_username,
            self.content
        )
    }
}

/// The REST side: signup, the user directory and history, with the bearer token.
struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{}", self.base, path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a request; a non-2xx answer becomes its `detail` (with the status).
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, String> {
        let response = request
            .send()
            .await
            .map_err(|e| format!("cannot reach the server: {e}"))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("the server's answer broke off: {e}"))?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!(
                "{} (HTTP {})",
                detail_text(body.get("detail").unwrap_or(&Value::Null)),
                status.as_u16()
            ))
        }
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        self.call(self.request(reqwest::Method::GET, path)).await
    }

    /// `POST /users/`: the new user and its token (none when the server's auth is off).
    async fn signup(&self, username: &str) -> Result<(i64, String, Option<String>), String> {
        let body = self
            .call(
                self.request(reqwest::Method::POST, "/users/")
                    .json(&json!({ "username": username })),
            )
            .await?;
        let id = body["id"]
            .as_i64()
            .ok_or_else(|| format!("unexpected signup answer: {body}"))?;
        let name = body["username"].as_str().unwrap_or(username).to_owned();
        Ok((id, name, body["token"].as_str().map(str::to_owned)))
    }

    /// The username of user `id`.
    async fn username(&self, id: i64) -> Result<String, String> {
        let body = self.get(&format!("/users/{id}")).await?;
        body["username"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("unexpected user answer: {body}"))
    }

    /// Finds a user by username (exact, then ignoring case), or else by id.
    async fn find_user(&self, wanted: &str) -> Result<(i64, String), String> {
        const PAGE: usize = 1000;
        let mut folded = Vec::new();
        let mut skip = 0;
        loop {
            let page = self
                .get(&format!("/users/?skip={skip}&limit={PAGE}"))
                .await?;
            let users = page.as_array().cloned().unwrap_or_default();
            for user in &users {
                let (Some(id), Some(name)) = (user["id"].as_i64(), user["username"].as_str())
                else {
                    continue;
                };
                if name == wanted {
                    return Ok((id, name.to_owned()));
                }
                if name.to_lowercase() == wanted.to_lowercase() {
                    folded.push((id, name.to_owned()));
                }
            }
            if users.len() < PAGE {
                break;
            }
            skip += PAGE;
        }
        if folded.len() == 1 {
            return Ok(folded.remove(0));
        }
        if let Ok(id) = wanted.parse::<i64>() {
            if let Ok(name) = self.username(id).await {
                return Ok((id, name));
            }
        }
        Err(format!("no user named {wanted:?}"))
    }

    /// The last [`HISTORY_LIMIT`] messages between `me` and `peer`, oldest first.
    async fn history(&self, me: i64, peer: i64) -> Result<Vec<Msg>, String> {
        let body = self
            .get(&format!(
                "/messages/?user_id={me}&chat_with={peer}&limit={HISTORY_LIMIT}"
            ))
            .await?;
        let mut messages: Vec<Msg> = body
            .as_array()
            .map(|list| list.iter().filter_map(Msg::parse).collect())
            .unwrap_or_default();
        messages.reverse();
        Ok(messages)
    }
}

/// The user's update sequence numbers seen so far, to resume with `?since=`.
///
/// `since` is the highest seq below which nothing is missing: an `ack` can overtake the frame
/// of a message stored just before it, so the highest seq alone could skip that message.
#[derive(Default)]
struct SeqTracker {
    /// Every seq up to this one has been seen; `None` before the first (unknown start).
    floor: Option<i64>,
    /// Seen seqs above `floor + 1`.
    above: BTreeSet<i64>,
}

impl SeqTracker {
    fn see(&mut self, seq: i64) {
        let mut floor = *self.floor.get_or_insert(seq.saturating_sub(1));
        if seq > floor {
            self.above.insert(seq);
        }
        while self.above.remove(&(floor + 1)) {
            floor += 1;
        }
        self.floor = Some(floor);
    }

    /// Once a connection's replay is over, a remaining gap is a seq this connection is never
    /// sent: it stops holding `since` back.
    fn settle(&mut self) {
        if let Some(&max) = self.above.last() {
            self.floor = Some(max);
            self.above.clear();
        }
    }
}

/// A line waiting for its `ack`.
struct Outgoing {
    client_id: String,
    receiver_id: i64,
    content: String,
}

impl Outgoing {
    fn frame(&self) -> Value {
        json!({
            "type": "message",
            "receiver_id": self.receiver_id,
            "content": self.content,
            "client_id": self.client_id,
        })
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Connecting = Pin<Box<dyn Future<Output = Result<Box<Socket>, ConnectError>> + Send>>;

enum ConnectError {
    /// Retrying cannot help (bad token, unknown user).
    Fatal(String),
    Retry(String),
}

async fn connect(url: String) -> Result<Box<Socket>, ConnectError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, tokio_tungstenite::connect_async(url)).await {
        Err(_) => Err(ConnectError::Retry("WebSocket handshake timed out".into())),
        Ok(Ok((socket, _))) => Ok(Box::new(socket)),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let detail = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                .map(|v| detail_text(v.get("detail").unwrap_or(&Value::Null)))
                .unwrap_or_else(|| "no detail given".into());
            let text = format!("WebSocket refused: {detail} (HTTP {status})");
            if matches!(status, 400 | 401 | 403 | 404 | 422) {
                Err(ConnectError::Fatal(text))
            } else {
                Err(ConnectError::Retry(text))
            }
        }
        Ok(Err(e)) => Err(ConnectError::Retry(format!("cannot connect: {e}"))),
    }
}

/// One thing that happened, for the main loop to handle.
enum Input {
    /// A line of stdin, or `None` at its end.
    Line(Option<String>),
    Frame(Option<Result<Frame, tungstenite::Error>>),
    Connected(Result<Box<Socket>, ConnectError>),
    RetryDue,
    Tick,
    FlushExpired,
    /// Time to send the read receipts gathered since the last ones.
    ReadsDue,
}

/// What handling an input asks of the main loop.
enum Flow {
    Continue,
    Exit(u8),
}

struct Client {
    api: Api,
    ws_base: String,
    me: i64,
    my_name: String,
    peer: Option<(i64, String)>,
    names: HashMap<i64, String>,
    seq: SeqTracker,
    printed: HashSet<i64>,
    printed_order: VecDeque<i64>,
    outbox: VecDeque<Outgoing>,
    /// The highest message id of each peer a read receipt was sent for.
    read_sent: HashMap<i64, i64>,
    /// Read receipts not sent yet (the newest id per peer), and when they go out: gathered so
    /// that a burst of messages (a replay, say) costs one frame, within the server's limit.
    reads_pending: HashMap<i64, i64>,
    reads_due: Option<Instant>,
    /// Error details without a `client_id` already shown on this connection.
    shown_errors: HashSet<String>,

    socket: Option<Socket>,
    /// The system frame arrived on the current connection.
    ready: bool,
    connecting: Option<Connecting>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// The connection dropped and `* reconnecting…` was printed; `* reconnected` is due.
    outage: bool,
    ever_connected: bool,
    /// The first pong on a connection marks the end of its replay.
    settle_on_pong: bool,
    /// Connected with `since=0` without knowing the seq: messages before this (the first
    /// connection's system timestamp) were from before the session and are not printed.
    quiet_before: Option<String>,
    session_start: Option<String>,
    last_heard: Instant,
    /// When stdin ended, with lines still unacknowledged: the time limit for them.
    flush_deadline: Option<Instant>,
    stdin_done: bool,
}

impl Client {
    fn ws_url(&self) -> String {
        let mut url = format!("{}/ws/{}", self.ws_base, self.me);
        let mut params = Vec::new();
        if let Some(token) = &self.api.token {
            params.push(format!("token={token}"));
        }
        match self.seq.floor {
            Some(since) => params.push(format!("since={since}")),
            // Dropped before any seq was known: replay everything, printing only the new.
            None if self.ever_connected => params.push("since=0".into()),
            None => {}
        }
        if !params.is_empty() {
            url.push('?');
            url.push_str(&params.join("&"));
        }
        url
    }

    fn start_connecting(&mut self) {
        if self.seq.floor.is_none() && self.ever_connected {
            self.quiet_before = self.session_start.clone();
        }
        self.retry_at = None;
        self.connecting = Some(Box::pin(connect(self.ws_url())));
    }

    /// Forgets the connection and schedules the next attempt.
    fn drop_connection(&mut self, why: Option<String>) {
        let was_connected = self.socket.is_some();
        self.socket = None;
        self.ready = false;
        self.settle_on_pong = false;
        self.shown_errors.clear();
        if !self.outage && (was_connected || self.ever_connected) {
            match why {
                Some(why) => say(format!("* reconnecting… ({why})")),
                None => say("* reconnecting…"),
            }
            self.outage = true;
        }
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Sends a frame on the current connection; a failure drops it.
    async fn send(&mut self, frame: Value) {
        let Some(socket) = self.socket.as_mut() else {
            return;
        };
        if let Err(e) = socket.send(Frame::Text(frame.to_string().into())).await {
            self.drop_connection(Some(e.to_string()));
        }
    }

    async fn name_of(&mut self, id: i64) -> String {
        if let Some(name) = self.names.get(&id) {
            return name.clone();
        }
        match self.api.username(id).await {
            Ok(name) => {
                self.names.insert(id, name.clone());
                name
            }
            Err(_) => format!("user #{id}"),
        }
    }

    fn remember_printed(&mut self, id: i64) -> bool {
        if !self.printed.insert(id) {
            return false;
        }
        self.printed_order.push_back(id);
        if self.printed_order.len() > PRINTED_MEMORY {
            if let Some(old) = self.printed_order.pop_front() {
                self.printed.remove(&old);
            }
        }
        true
    }

    async fn handle(&mut self, input: Input) -> Flow {
        match input {
            Input::Line(Some(line)) => return self.on_line(line).await,
            Input::Line(None) => {
                self.stdin_done = true;
                if self.outbox.is_empty() {
                    return self.quit(0).await;
                }
                self.flush_deadline = Some(Instant::now() + FLUSH_TIMEOUT);
            }
            Input::Frame(frame) => return self.on_frame(frame).await,
            Input::Connected(result) => {
                self.connecting = None;
                match result {
                    Ok(socket) => {
                        self.socket = Some(*socket);
                        self.last_heard = Instant::now();
                    }
                    Err(ConnectError::Fatal(why)) => {
                        say(format!("! {why}"));
                        return Flow::Exit(1);
                    }
                    Err(ConnectError::Retry(why)) => {
                        if !self.outage {
                            say(format!("! {why} (retrying)"));
                            self.outage = true;
                        }
                        self.drop_connection(None);
                    }
                }
            }
            Input::RetryDue => self.start_connecting(),
            Input::Tick => {
                if self.socket.is_some() {
                    if self.last_heard.elapsed() > SILENCE_LIMIT {
                        self.drop_connection(Some("no answer from the server".into()));
                    } else {
                        self.send(json!({"type": "ping"})).await;
                    }
                }
            }
            Input::ReadsDue => {
                self.reads_due = None;
                let pending: Vec<(i64, i64)> = self.reads_pending.drain().collect();
                for (peer, up_to) in pending {
                    if self.read_sent.get(&peer).is_none_or(|&sent| up_to > sent) {
                        self.read_sent.insert(peer, up_to);
                        self.send(json!({"type": "read", "peer_id": peer, "up_to": up_to}))
                            .await;
                    }
                }
            }
            Input::FlushExpired => {
                say(format!(
                    "! {} line(s) could not be delivered",
                    self.outbox.len()
                ));
                return self.quit(1).await;
            }
        }
        Flow::Continue
    }

    async fn quit(&mut self, code: u8) -> Flow {
        if let Some(mut socket) = self.socket.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
        }
        Flow::Exit(code)
    }

    /// After an ack or a failed send: at the end of stdin, exits once everything is through.
    async fn check_flushed(&mut self) -> Flow {
        if self.stdin_done && self.outbox.is_empty() {
            return self.quit(0).await;
        }
        Flow::Continue
    }

    async fn on_line(&mut self, line: String) -> Flow {
        let line = line.trim_end_matches(['\r', '\n']);
        let (command, rest) = match line.split_once(char::is_whitespace) {
            Some((command, rest)) => (command, rest.trim()),
            None => (line, ""),
        };
        match command {
            "/quit" => {
                if !self.outbox.is_empty() {
                    say(format!("! {} unsent line(s) dropped", self.outbox.len()));
                }
                return self.quit(0).await;
            }
            "/help" => {
                say("* /peer NAME: chat with NAME (username or id) · /history: last 20 messages · /quit: exit · //text: send /text");
            }
            "/peer" if rest.is_empty() => match &self.peer {
                Some((id, name)) => say(format!("* chatting with {name} (#{id})")),
                None => say("! no peer yet: /peer NAME"),
            },
            "/peer" => self.choose_peer(rest).await,
            "/history" => self.history().await,
            _ if line.starts_with("//") => self.send_line(&line[1..]).await,
            _ if line.starts_with('/') => {
                say(format!("! unknown command {command} (/help lists them)"));
            }
            _ if line.trim().is_empty() => {}
            _ => self.send_line(line).await,
        }
        Flow::Continue
    }

    async fn choose_peer(&mut self, wanted: &str) {
        match self.api.find_user(wanted).await {
            Ok((id, _)) if id == self.me => say("! that is you: choose someone else"),
            Ok((id, name)) => {
                say(format!("* chatting with {name} (#{id})"));
                self.names.insert(id, name.clone());
                self.peer = Some((id, name));
                if self.ready {
                    self.send(json!({"type": "watch", "user_ids": [id]})).await;
                }
            }
            Err(e) => say(format!("! {e}")),
        }
    }

    async fn history(&mut self) {
        let Some((peer, name)) = self.peer.clone() else {
            say("! no peer yet: /peer NAME");
            return;
        };
        match self.api.history(self.me, peer).await {
            Ok(messages) => {
                say(format!("* last {} message(s) with {name}:", messages.len()));
                for m in &messages {
                    say(m.line());
                }
                say("* end of history");
            }
            Err(e) => say(format!("! history: {e}")),
        }
    }

    async fn send_line(&mut self, content: &str) {
        let Some((peer, _)) = self.peer else {
            say("! no peer yet: /peer NAME");
            return;
        };
        if self.outbox.len() >= OUTBOX_LIMIT {
            say(format!(
                "! {OUTBOX_LIMIT} lines are waiting to be sent; line dropped"
            ));
            return;
        }
        let outgoing = Outgoing {
            client_id: format!(
                "{:016x}{:016x}",
                rand::random::<u64>(),
                rand::random::<u64>()
            ),
            receiver_id: peer,
            content: content.to_owned(),
        };
        let frame = outgoing.frame();
        self.outbox.push_back(outgoing);
        if self.ready {
            self.send(frame).await;
        } else {
            say(format!(
                "* not connected: queued ({} waiting)",
                self.outbox.len()
            ));
        }
    }

    async fn on_frame(&mut self, frame: Option<Result<Frame, tungstenite::Error>>) -> Flow {
        self.last_heard = Instant::now();
        let text = match frame {
            Some(Ok(Frame::Text(text))) => text,
            Some(Ok(Frame::Close(close))) => {
                let (code, reason) = close
                    .map(|c| (u16::from(c.code), c.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                if code == 4004 {
                    say(format!("! the server closed the connection: {reason}"));
                    return self.quit(1).await;
                }
                let why = if reason.is_empty() {
                    format!("closed with code {code}")
                } else {
                    format!("closed: {reason}")
                };
                self.drop_connection(Some(why));
                return Flow::Continue;
            }
            // Pings are answered by tungstenite itself.
            Some(Ok(_)) => return Flow::Continue,
            Some(Err(e)) => {
                self.drop_connection(Some(e.to_string()));
                return Flow::Continue;
            }
            None => {
                self.drop_connection(None);
                return Flow::Continue;
            }
        };
        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
            say("! the server sent a frame that is not JSON; ignored");
            return Flow::Continue;
        };
        match frame["type"].as_str().unwrap_or_default() {
            "system" => self.on_system(&frame).await,
            "message" => self.on_message(&frame).await,
            "ack" => return self.on_ack(&frame).await,
            "error" => return self.on_error(&frame).await,
            "pong" if self.settle_on_pong => {
                self.seq.settle();
                self.settle_on_pong = false;
                self.quiet_before = None;
            }
            "typing" => {
                if let Some(id) = frame["sender_id"].as_i64() {
                    let name = self.name_of(id).await;
                    say(format!("* {name} is typing…"));
                }
            }
            "read" => {
                if let (Some(id), Some(up_to)) =
                    (frame["reader_id"].as_i64(), frame["up_to"].as_i64())
                {
                    let name = self.name_of(id).await;
                    say(format!("* {name} read up to #{up_to}"));
                }
            }
            "presence" => {
                if let Some(id) = frame["user_id"].as_i64() {
                    let name = self.name_of(id).await;
                    let state = if frame["online"].as_bool() == Some(true) {
                        "online"
                    } else {
                        "offline"
                    };
                    say(format!("* {name} is {state}"));
                }
            }
            _ => {}
        }
        if let Some(seq) = frame["seq"].as_i64() {
            if frame["type"] != "message" {
                self.seq.see(seq);
            }
        }
        Flow::Continue
    }

    async fn on_system(&mut self, frame: &Value) {
        let message = frame["message"].as_str().unwrap_or_default();
        if let Some(name) = message.strip_prefix("Connected to chat as ") {
            self.my_name = name.to_owned();
        }
        if self.ever_connected {
            say("* reconnected");
        } else {
            say(format!("* connected as {}", self.my_name));
            self.session_start = frame["timestamp"].as_str().map(str::to_owned);
        }
        self.ever_connected = true;
        self.outage = false;
        self.ready = true;
        self.backoff = MIN_BACKOFF;
        // The server replays before it reads: its pong marks the end of the replay.
        self.settle_on_pong = true;
        self.send(json!({"type": "ping"})).await;
        if let Some((peer, _)) = self.peer {
            self.send(json!({"type": "watch", "user_ids": [peer]}))
                .await;
        }
        let frames: Vec<Value> = self.outbox.iter().map(Outgoing::frame).collect();
        for frame in frames {
            self.send(frame).await;
        }
    }

    async fn on_message(&mut self, frame: &Value) {
        let Some(message) = Msg::parse(frame) else {
            say(format!("! unreadable message frame: {frame}"));
            return;
        };
        if let Some(seq) = frame["seq"].as_i64() {
            self.seq.see(seq);
        }
        self.names
            .insert(message.sender_id, message.sender_username.clone());
        if !self.remember_printed(message.id) {
            return;
        }
        if let Some(before) = &self.quiet_before {
            if message.timestamp.as_str() < before.as_str() {
                return;
            }
        }
        say(message.line());
        let from_peer = self.peer.as_ref().map(|p| p.0) == Some(message.sender_id);
        if from_peer && message.receiver_id == self.me {
            let last = self.read_sent.get(&message.sender_id).copied();
            if last.is_none_or(|last| message.id > last) {
                let pending = self.reads_pending.entry(message.sender_id).or_insert(0);
                *pending = (*pending).max(message.id);
                self.reads_due
                    .get_or_insert_with(|| Instant::now() + READ_RECEIPT_DELAY);
            }
        }
    }

    async fn on_ack(&mut self, frame: &Value) -> Flow {
        let client_id = frame["client_id"].as_str();
        let waiting = client_id.and_then(|c| self.outbox.iter().position(|o| o.client_id == c));
        if let Some(at) = waiting {
            self.outbox.remove(at);
        }
        let message = &frame["message"];
        if let Some(seq) = message["seq"].as_i64() {
            self.seq.see(seq);
        }
        match Msg::parse(message) {
            Some(m) => {
                if self.remember_printed(m.id) || waiting.is_some() {
                    say(format!("> {} (sent #{})", m.content, m.id));
                }
            }
            None => say(format!("! unreadable ack: {frame}")),
        }
        self.check_flushed().await
    }

    async fn on_error(&mut self, frame: &Value) -> Flow {
        let detail = detail_text(&frame["detail"]);
        let client_id = frame["client_id"].as_str();
        match client_id.and_then(|c| self.outbox.iter().position(|o| o.client_id == c)) {
            Some(at) => {
                if let Some(failed) = self.outbox.remove(at) {
                    say(format!("! not sent: {:?}: {detail}", failed.content));
                }
                return self.check_flushed().await;
            }
            // The same complaint about, say, every read receipt is shown once per connection.
            None => {
                if self.shown_errors.insert(detail.clone()) {
                    say(format!("! {detail}"));
                }
            }
        }
        Flow::Continue
    }
}

/// Awaits `future` if there is one, else never.
async fn maybe<F: Future>(future: Option<F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// Reads stdin on a thread of its own (a blocked read must not hold up the exit).
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(1);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match stdin.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    if tx.blocking_send(line).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

async fn run(args: Args) -> Result<u8, String> {
    let base = args.server.trim_end_matches('/').to_owned();
    let ws_base = match base.split_once("://") {
        Some(("http", rest)) => format!("ws://{rest}"),
        Some(("https", _)) => {
            return Err("this client speaks plain HTTP only (no TLS): use an http:// URL".into())
        }
        _ => return Err(format!("--server must be an http:// URL, not {base:?}")),
    };
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let mut api = Api {
        http,
        base,
        token: args.token,
    };

    let (me, my_name) = match (args.signup, args.user_id) {
        (Some(username), _) => {
            let (id, name, token) = api
                .signup(&username)
                .await
                .map_err(|e| format!("signup failed: {e}"))?;
            match &token {
                Some(token) => say(format!(
                    "* signed up as {name} (id {id}); token: {token}\n* later: --user-id {id} --token {token}"
                )),
                None => say(format!(
                    "* signed up as {name} (id {id}); the server's auth is off: later, --user-id {id}"
                )),
            }
            api.token = token;
            (id, name)
        }
        (None, Some(id)) => {
            let name = api
                .username(id)
                .await
                .map_err(|e| format!("cannot act as user {id}: {e}"))?;
            (id, name)
        }
        (None, None) => return Err("give --signup USERNAME or --user-id ID --token TOKEN".into()),
    };

    let mut client = Client {
        api,
        ws_base,
        me,
        my_name,
        peer: None,
        names: HashMap::new(),
        // A new user's stream is empty: replay from the start, catching anything sent before
        // the connection is up. An existing user starts live and learns its seq as it goes.
        seq: SeqTracker {
            floor: args.user_id.is_none().then_some(0),
            above: BTreeSet::new(),
        },
        printed: HashSet::new(),
        printed_order: VecDeque::new(),
        outbox: VecDeque::new(),
        read_sent: HashMap::new(),
        reads_pending: HashMap::new(),
        reads_due: None,
        shown_errors: HashSet::new(),
        socket: None,
        ready: false,
        connecting: None,
        retry_at: None,
        backoff: MIN_BACKOFF,
        outage: false,
        ever_connected: false,
        settle_on_pong: false,
        quiet_before: None,
        session_start: None,
        last_heard: Instant::now(),
        flush_deadline: None,
        stdin_done: false,
    };
    client.names.insert(me, client.my_name.clone());
    if let Some(wanted) = args.peer {
        let (id, name) = client
            .api
            .find_user(&wanted)
            .await
            .map_err(|e| format!("--peer: {e}"))?;
        if id == me {
            return Err("--peer: that is you; choose someone else".into());
        }
        say(format!("* chatting with {name} (#{id})"));
        client.names.insert(id, name.clone());
        client.peer = Some((id, name));
    }

    let mut lines = stdin_lines();
    let mut ticks = tokio::time::interval(PING_EVERY);
    ticks.reset();
    client.start_connecting();
    loop {
        let input = tokio::select! {
            line = lines.recv(), if !client.stdin_done => Input::Line(line),
            frame = maybe(client.socket.as_mut().map(|s| s.next())), if client.socket.is_some() => Input::Frame(frame),
            result = maybe(client.connecting.as_mut()), if client.connecting.is_some() => Input::Connected(result),
            _ = tokio::time::sleep_until(client.retry_at.unwrap_or_else(Instant::now)), if client.retry_at.is_some() => Input::RetryDue,
            _ = tokio::time::sleep_until(client.flush_deadline.unwrap_or_else(Instant::now)), if client.flush_deadline.is_some() => Input::FlushExpired,
            _ = tokio::time::sleep_until(client.reads_due.unwrap_or_else(Instant::now)), if client.reads_due.is_some() && client.socket.is_some() => Input::ReadsDue,
            _ = ticks.tick() => Input::Tick,
        };
        if let Flow::Exit(code) = client.handle(input).await {
            return Ok(code);
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            say(format!("! {e}"));
            ExitCode::FAILURE
        }
    }
}
