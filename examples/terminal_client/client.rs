//! One session of the terminal client: the state machine that turns stdin lines, socket
//! frames and timers into frames to send and lines to print. It queues lines until they are
//! acknowledged, reconnects with backoff, gathers read receipts, and exits at the end of stdin.

use crate::api::{detail_text, Api, Msg};
use crate::stream::{connect, ws_url, ConnectError, Connecting, Resume, Socket};
use crate::target::{Target, To};
use crate::ui::{say, Command, HELP};

mod groups;
mod receipts;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message as Frame};

/// How long read receipts are gathered before one frame per peer goes out.
const READ_RECEIPT_DELAY: Duration = Duration::from_millis(300);
/// Lines kept while they wait for their `ack` (typed while disconnected, or in flight).
const OUTBOX_LIMIT: usize = 100;
/// First reconnect delay (half of it random), doubled after each failed attempt up to
/// [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the client pings an established connection, and how long a silent one is trusted.
const PING_EVERY: Duration = Duration::from_secs(20);
const SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// How long the end of stdin waits for the last lines to be acknowledged.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// A line waiting for its `ack`.
struct Outgoing {
    client_id: String,
    to: To,
    content: String,
}

impl Outgoing {
    fn frame(&self) -> Value {
        self.to.message(&self.content, &self.client_id)
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

pub struct Client {
    api: Api,
    ws_base: String,
    me: i64,
    my_name: String,
    target: Option<Target>,
    names: HashMap<i64, String>,
    /// Group titles by conversation id, from the inbox and membership events.
    groups: HashMap<i64, String>,
    resume: Resume,
    outbox: VecDeque<Outgoing>,
    /// The highest message id a read receipt was sent for, per peer or group.
    read_sent: HashMap<To, i64>,
    /// Read receipts not sent yet (the newest id per peer or group), and when they go out:
    /// gathered so that a burst of messages (a replay, say) costs one frame, within the
    /// server's limit.
    reads_pending: HashMap<To, i64>,
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
    /// A session as `me` (`from_start`: a new user, whose whole stream is replayed).
    pub fn new(api: Api, ws_base: String, me: i64, my_name: String, from_start: bool) -> Client {
        let mut names = HashMap::new();
        names.insert(me, my_name.clone());
        Client {
            api,
            ws_base,
            me,
            my_name,
            target: None,
            names,
            groups: HashMap::new(),
            // A new user's stream is empty: replay from the start, catching anything sent
            // before the connection is up. An existing user starts live and learns its seq as
            // it goes.
            resume: Resume::new(from_start),
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
        }
    }

    /// Chats with `id` from the start (before the first connection).
    pub fn set_peer(&mut self, id: i64, name: String) {
        self.names.insert(id, name.clone());
        self.target = Some(Target {
            to: To::User(id),
            name,
        });
    }

    /// Runs the session until it ends; the exit status.
    pub async fn run(mut self, mut lines: mpsc::Receiver<String>) -> u8 {
        let mut ticks = tokio::time::interval(PING_EVERY);
        ticks.reset();
        self.start_connecting();
        loop {
            let input = tokio::select! {
                line = lines.recv(), if !self.stdin_done => Input::Line(line),
                frame = maybe(self.socket.as_mut().map(|s| s.next())), if self.socket.is_some() => Input::Frame(frame),
                result = maybe(self.connecting.as_mut()), if self.connecting.is_some() => Input::Connected(result),
                _ = tokio::time::sleep_until(self.retry_at.unwrap_or_else(Instant::now)), if self.retry_at.is_some() => Input::RetryDue,
                _ = tokio::time::sleep_until(self.flush_deadline.unwrap_or_else(Instant::now)), if self.flush_deadline.is_some() => Input::FlushExpired,
                _ = tokio::time::sleep_until(self.reads_due.unwrap_or_else(Instant::now)), if self.reads_due.is_some() && self.socket.is_some() => Input::ReadsDue,
                _ = ticks.tick() => Input::Tick,
            };
            if let Flow::Exit(code) = self.handle(input).await {
                return code;
            }
        }
    }

    fn ws_url(&self) -> String {
        // Dropped before any seq was known: replay everything, printing only the new.
        ws_url(
            &self.ws_base,
            self.me,
            self.api.token.as_deref(),
            self.resume.since(),
            self.ever_connected,
        )
    }

    fn start_connecting(&mut self) {
        if self.resume.since().is_none() && self.ever_connected {
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
        // Half the delay is random, so that the clients of a node that went away do not all
        // come back in the same instant.
        let jitter = self.backoff.mul_f64(rand::random::<f64>() / 2.0);
        self.retry_at = Some(Instant::now() + self.backoff / 2 + jitter);
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
            Input::ReadsDue => self.send_due_reads().await,
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
        match Command::parse(&line) {
            Command::Quit => {
                if !self.outbox.is_empty() {
                    say(format!("! {} unsent line(s) dropped", self.outbox.len()));
                }
                return self.quit(0).await;
            }
            Command::Help => say(HELP),
            Command::ShowPeer => match &self.target {
                Some(target) => say(target.describe()),
                None => say("! no peer yet: /peer NAME"),
            },
            Command::Peer(wanted) => self.choose_peer(wanted).await,
            Command::Group(title, members) => self.create_group(title, &members).await,
            Command::Open(wanted) => self.open(wanted).await,
            Command::History => self.history().await,
            Command::Send(content) => self.send_line(content).await,
            Command::Usage(usage) => say(format!("! usage: {usage}")),
            Command::Unknown(command) => {
                say(format!("! unknown command {command} (/help lists them)"));
            }
            Command::Nothing => {}
        }
        Flow::Continue
    }

    async fn choose_peer(&mut self, wanted: &str) {
        match self.api.find_user(wanted).await {
            Ok((id, _)) if id == self.me => say("! that is you: choose someone else"),
            Ok((id, name)) => {
                self.set_peer(id, name);
                self.describe_target();
                if self.ready {
                    self.send(json!({"type": "watch", "user_ids": [id]})).await;
                }
            }
            Err(e) => say(format!("! {e}")),
        }
    }

    fn describe_target(&self) {
        if let Some(target) = &self.target {
            say(target.describe());
        }
    }

    async fn history(&mut self) {
        let Some(target) = self.target.clone() else {
            say("! no peer yet: /peer NAME");
            return;
        };
        match self.api.history(self.me, target.to).await {
            Ok(messages) => {
                say(format!(
                    "* last {} message(s) with {}:",
                    messages.len(),
                    target.name
                ));
                for m in &messages {
                    say(self.line_of(m));
                }
                say("* end of history");
            }
            Err(e) => say(format!("! history: {e}")),
        }
    }

    async fn send_line(&mut self, content: &str) {
        let Some(to) = self.target.as_ref().map(|t| t.to) else {
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
            to,
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
            "message" => return self.on_message(&frame).await,
            "ack" => return self.on_ack(&frame).await,
            "error" => return self.on_error(&frame).await,
            "conversation" => self.on_conversation(&frame).await,
            "pong" if self.settle_on_pong => {
                self.resume.settle();
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
                self.resume.see(seq);
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
        if let Some(peer) = self.target.as_ref().and_then(Target::peer) {
            self.send(json!({"type": "watch", "user_ids": [peer]}))
                .await;
        }
        let frames: Vec<Value> = self.outbox.iter().map(Outgoing::frame).collect();
        for frame in frames {
            self.send(frame).await;
        }
    }

    async fn on_message(&mut self, frame: &Value) -> Flow {
        let Some(message) = Msg::parse(frame) else {
            say(format!("! unreadable message frame: {frame}"));
            return Flow::Continue;
        };
        if let Some(seq) = frame["seq"].as_i64() {
            self.resume.see(seq);
        }
        self.names
            .insert(message.sender_id, message.sender_username.clone());
        // My own message carries the client_id I sent it with: if it is a line still waiting
        // for its ack (the ack was lost in a drop, and this is the replay), it is that line,
        // exactly (two identical lines have different client ids). A message without one is
        // never a line of this client's: it gives every line a client id.
        let own = frame["client_id"]
            .as_str()
            .filter(|_| message.sender_id == self.me)
            .and_then(|c| self.outbox.iter().position(|o| o.client_id == c));
        if let Some(at) = own {
            self.outbox.remove(at);
        }
        if self.resume.first_sight(message.id) {
            if own.is_some() {
                say(sent_line(&message));
            } else if self
                .quiet_before
                .as_ref()
                .is_none_or(|before| message.timestamp.as_str() >= before.as_str())
            {
                say(self.line_of(&message));
                self.note_unread(&message);
            }
        }
        self.check_flushed().await
    }

    async fn on_ack(&mut self, frame: &Value) -> Flow {
        let client_id = frame["client_id"].as_str();
        let waiting = client_id.and_then(|c| self.outbox.iter().position(|o| o.client_id == c));
        if let Some(at) = waiting {
            self.outbox.remove(at);
        }
        let message = &frame["message"];
        if let Some(seq) = message["seq"].as_i64() {
            self.resume.see(seq);
        }
        match Msg::parse(message) {
            Some(m) => {
                if self.resume.first_sight(m.id) || waiting.is_some() {
                    say(sent_line(&m));
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
/// `> <content> (sent #<id>)`: one of my lines, stored.
fn sent_line(m: &Msg) -> String {
    format!("> {} (sent #{})", m.content, m.id)
}

async fn maybe<F: Future>(future: Option<F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}
