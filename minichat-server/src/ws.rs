//! `GET /ws/{user_id}`: the WebSocket upgrade and the life of one connection.
//!
//! The upgrade is checked (handshake headers, id, token) before the 101 goes out. The
//! connection then subscribes the user on the hub *before* replaying anything stored (`?since=`),
//! so an event sent meanwhile is in the queue and is dropped there by its seq if the replay
//! already carried it: nothing is lost, nothing doubled. After that it forwards the user's
//! events, answers the client's frames, pings a quiet client and closes a dead one, and closes
//! with 4008 when it cannot keep up (its bounded queue filled on the hub) or 1001 at shutdown.
//!
//! The connection's task runs in a `ws{user, conn}` span (a child of the upgrade request's), so
//! each of its log lines names it; frames' content is never logged.

use crate::error::{ApiError, Location};
use crate::extract::{parse_int, Query};
use crate::response::Response;
use crate::state::AppState;
use crate::telemetry;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use minichat_core::event::{message_event, presence_event, MessageFrame};
use minichat_core::hub::MAX_WATCHED;
use minichat_core::model::timestamp;
use minichat_core::{
    Closed, Error as CoreError, MessageId, NewMessage, Seq, Subscription, User, UserId,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as Frame, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

/// How long one write to a socket may take before the client is taken for dead: a client
/// that stops reading holds its connection task no longer than this.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Own sends acknowledged ahead of the stream that a connection remembers (a bound; own sends
/// are rate-limited far below it).
const MAX_PENDING_OWN: usize = 1024;
/// Stored events replayed per storage round trip on `?since=`.
const REPLAY_PAGE: usize = 500;

const CLOSE_USER_NOT_FOUND: u16 = 4004;
const CLOSE_SLOW_CONSUMER: u16 = 4008;

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Checks the handshake and the caller, then answers 101 and runs the connection in a task.
pub fn upgrade(
    state: &Arc<AppState>,
    mut req: Request<Incoming>,
    raw_id: &str,
) -> Result<Response, ApiError> {
    let user_id = parse_int(Location::Path, "user_id", raw_id)?;
    let headers = req.headers();
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let is_upgrade = header_has(headers, header::CONNECTION, "upgrade")
        && header_has(headers, header::UPGRADE, "websocket");
    let Some(key) = key.filter(|_| is_upgrade) else {
        return Err(ApiError::BadRequest("WebSocket upgrade expected"));
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(ApiError::BadRequest(
            "Unsupported WebSocket version (13 expected)",
        ));
    }
    let query = Query::parse(req.uri().query());
    let caller = state.auth.caller(
        crate::auth::bearer_token(headers.get(header::AUTHORIZATION)),
        query.get("token"),
    );
    caller.require_user(user_id)?;
    let since = query.int("since")?.filter(|s| *s >= 0);
    // Held for the connection's life; refused here, before the upgrade, when over a cap.
    let permit = state.guards.open_socket(user_id)?;

    let on_upgrade = hyper::upgrade::on(&mut req);
    let state_for_task = state.clone();
    // Every line of the connection carries its user and, once subscribed, its connection id
    // (`conn`); the span's parent is the upgrade request's, so its request id too.
    let span = tracing::info_span!("ws", user = user_id, conn = tracing::field::Empty);
    let task = async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let metrics = telemetry::SocketMetrics::open();
                let config = WebSocketConfig::default()
                    .read_buffer_size(4096)
                    .write_buffer_size(0)
                    .max_write_buffer_size(256 * 1024)
                    .max_message_size(Some(state_for_task.limits.max_ws_message_bytes))
                    .max_frame_size(Some(state_for_task.limits.max_ws_message_bytes));
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                Connection::run(state_for_task, socket, user_id, since, metrics).await;
                drop(permit);
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    };
    state.tasks.spawn(task.instrument(span));

    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let accept = derive_accept_key(key.as_bytes());
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept)
            .map_err(|_| ApiError::BadRequest("Bad Sec-WebSocket-Key"))?,
    );
    Ok(response)
}

/// A frame a client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientFrame {
    Ping,
    Message {
        receiver_id: UserId,
        content: String,
        #[serde(default)]
        client_id: Option<String>,
    },
    Typing {
        receiver_id: UserId,
    },
    Read {
        peer_id: UserId,
        up_to: MessageId,
    },
    Watch {
        user_ids: Vec<UserId>,
    },
}

#[derive(Serialize)]
struct SystemFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
    #[serde(with = "timestamp")]
    timestamp: chrono::DateTime<chrono::Utc>,
}

#[derive(Serialize)]
struct PongFrame {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(with = "timestamp")]
    timestamp: chrono::DateTime<chrono::Utc>,
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    status: u16,
    detail: serde_json::Value,
}

#[derive(Serialize)]
struct AckFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    client_id: Option<&'a str>,
    message: MessageFrame<'a>,
}

fn text(value: &impl Serialize) -> Frame {
    match serde_json::to_string(value) {
        Ok(s) => Frame::Text(s.into()),
        Err(_) => {
            Frame::Text(r#"{"type":"error","status":500,"detail":"Internal server error"}"#.into())
        }
    }
}

fn close_frame(code: u16, reason: &'static str) -> Frame {
    Frame::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// Why the connection loop ended, and the close frame to send (if any).
enum End {
    /// The client closed or vanished: nothing more to send.
    Gone,
    Close(u16, &'static str),
}

struct Connection {
    state: Arc<AppState>,
    socket: Socket,
    user: User,
    /// Every event of the user's stream up to this seq has been sent on this connection (or
    /// acknowledged to it, for its own sends, or predates it): live events at or below it are
    /// duplicates and are dropped, and a live event beyond `last_seq + 1` first makes the
    /// connection read the missing ones from storage. So events go out gapless, in seq order,
    /// even when concurrent senders' events are published out of order.
    last_seq: Seq,
    /// Seqs above `last_seq` of this connection's own sends, already acknowledged to it.
    own: BTreeSet<Seq>,
    metrics: telemetry::SocketMetrics,
}

impl Connection {
    async fn run(
        state: Arc<AppState>,
        mut socket: Socket,
        user_id: UserId,
        since: Option<Seq>,
        metrics: telemetry::SocketMetrics,
    ) {
        let user = match state.chat.get_user(user_id).await {
            Ok(user) => user,
            Err(e) => {
                let (code, reason) = match e {
                    CoreError::UserNotFound => (CLOSE_USER_NOT_FOUND, "User not found"),
                    _ => (1011, "storage unavailable"),
                };
                let _ = socket.send(close_frame(code, reason)).await;
                let _ = socket.close(None).await;
                return;
            }
        };
        let subscription = match state.chat.subscribe(user.id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "subscribe failed");
                let _ = socket.send(close_frame(1011, "storage unavailable")).await;
                return;
            }
        };
        tracing::Span::current().record("conn", subscription.id());
        tracing::info!("connected");
        let mut conn = Connection {
            state,
            socket,
            user,
            last_seq: 0,
            own: BTreeSet::new(),
            metrics,
        };
        let end = conn.serve(subscription, since).await;
        if let End::Close(code, reason) = end {
            let _ = tokio::time::timeout(SEND_TIMEOUT, conn.socket.send(close_frame(code, reason)))
                .await;
            // Wait briefly for the client's close reply, so the close is clean.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(_)) = conn.socket.next().await {}
            })
            .await;
        }
        tracing::info!("disconnected");
    }

    async fn send(&mut self, frame: Frame) -> Result<(), End> {
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => {
                tracing::info!("client stopped reading: dropping the connection");
                Err(End::Gone)
            }
        }
    }

    async fn serve(&mut self, mut subscription: Subscription, since: Option<Seq>) -> End {
        // Subscribed already, so anything stored from here on arrives live. Without `since`, the
        // stream starts at the newest stored event; a `since` beyond it (a client that kept a
        // seq from before the data was reset) is taken as the newest, or it would drop events.
        let current = match self.state.chat.current_seq(self.user.id).await {
            Ok(seq) => seq,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the current seq");
                return End::Close(1011, "storage unavailable");
            }
        };
        self.last_seq = since.map_or(current, |since| since.min(current));
        let greeting = format!("Connected to chat as {}", self.user.username);
        let system = text(&SystemFrame {
            kind: "system",
            message: &greeting,
            timestamp: minichat_core::model::now(),
        });
        if let Err(end) = self.send(system).await {
            return end;
        }
        if since.is_some() {
            if let Err(end) = self.catch_up(None).await {
                return end;
            }
        }
        // A socket silent for a ping interval is pinged (again at every interval); three
        // intervals with no frame at all (a live client answers pings) and it is taken for dead.
        let ping_interval = self.state.limits.ws_ping_interval;
        let mut heartbeat = tokio::time::interval(ping_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        let mut last_heard = Instant::now();
        let shutdown = self.state.shutdown.clone();
        loop {
            let result = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Close(1001, "server shutting down"),
                event = subscription.recv_timed() => match event {
                    Ok((event, queued)) => self.on_event(event, queued).await,
                    Err(Closed::SlowConsumer) => {
                        telemetry::slow_consumer_closed();
                        tracing::info!("queue full: closing as a slow consumer");
                        return End::Close(CLOSE_SLOW_CONSUMER, "slow consumer");
                    }
                    Err(Closed::Shutdown) => return End::Close(1001, "server shutting down"),
                },
                frame = self.socket.next() => {
                    last_heard = Instant::now();
                    match frame {
                        None => return End::Gone,
                        Some(Ok(Frame::Text(t))) => self.on_text(&t, &mut subscription).await,
                        Some(Ok(Frame::Binary(_))) => {
                            self.error_frame(None, StatusCode::BAD_REQUEST, "Binary frames are not supported; send JSON text".into()).await
                        }
                        // Pings are answered and closes acknowledged by tungstenite itself.
                        Some(Ok(_)) => Ok(()),
                        Some(Err(tungstenite::Error::Capacity(_))) => return End::Close(1009, "message too big"),
                        Some(Err(tungstenite::Error::Protocol(_))) => return End::Close(1002, "protocol error"),
                        Some(Err(_)) => return End::Gone,
                    }
                }
                _ = heartbeat.tick() => {
                    let quiet = last_heard.elapsed();
                    if quiet >= ping_interval * 3 {
                        tracing::info!("no frame for {quiet:?}: closing dead connection");
                        return End::Close(1001, "ping timeout");
                    }
                    if quiet >= ping_interval {
                        self.send(Frame::Ping(Bytes::new())).await
                    } else {
                        Ok(())
                    }
                }
            };
            if let Err(end) = result {
                return end;
            }
        }
    }

    /// Forwards one live event, in seq order: duplicates are dropped, and missing seqs before
    /// it are read from storage first. `queued` is when the hub queued it, for the metrics.
    async fn on_event(&mut self, event: minichat_core::Event, queued: Instant) -> Result<(), End> {
        if let Some(seq) = event.seq {
            if seq <= self.last_seq {
                return Ok(());
            }
            self.absorb_own();
            if seq > self.last_seq + 1 {
                self.catch_up(Some(seq)).await?;
            }
            if seq <= self.last_seq {
                return Ok(());
            }
            self.last_seq = seq;
        }
        let is_message = event.seq.is_some();
        if let Ok(text) = Utf8Bytes::try_from(event.payload) {
            self.send(Frame::Text(text)).await?;
            self.metrics.live_event_written(queued, is_message);
        }
        self.absorb_own();
        Ok(())
    }

    /// Moves `last_seq` over this connection's own acknowledged sends that come next.
    fn absorb_own(&mut self) {
        while self.own.remove(&(self.last_seq + 1)) {
            self.last_seq += 1;
        }
    }

    /// Sends the stored events above `last_seq`, oldest first, up to (not including) `until`,
    /// or all of them.
    async fn catch_up(&mut self, until: Option<Seq>) -> Result<(), End> {
        loop {
            let page = match self
                .state
                .chat
                .events_since(self.user.id, self.last_seq, REPLAY_PAGE)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "replay failed");
                    return Err(End::Close(1011, "storage unavailable"));
                }
            };
            let done = page.len() < REPLAY_PAGE;
            for (seq, message) in page {
                if until.is_some_and(|u| seq >= u) {
                    return Ok(());
                }
                self.last_seq = seq;
                if self.own.remove(&seq) {
                    continue;
                }
                let event = message_event(&message, seq);
                if let Ok(text) = Utf8Bytes::try_from(event.payload) {
                    self.send(Frame::Text(text)).await?;
                    self.metrics.stored_message_written(until.is_none());
                }
            }
            if done {
                return Ok(());
            }
        }
    }

    async fn error_frame(
        &mut self,
        client_id: Option<&str>,
        status: StatusCode,
        detail: serde_json::Value,
    ) -> Result<(), End> {
        let frame = text(&ErrorFrame {
            kind: "error",
            client_id,
            status: status.as_u16(),
            detail,
        });
        self.send(frame).await
    }

    async fn on_text(&mut self, raw: &str, subscription: &mut Subscription) -> Result<(), End> {
        let origin = subscription.id();
        let frame: ClientFrame = match serde_json::from_str(raw) {
            Ok(f) => f,
            Err(e) => {
                let detail = if e.classify() == serde_json::error::Category::Data {
                    "Unknown or malformed frame: expected a type of ping, message, typing, read or watch with its fields"
                } else {
                    "Frames must be JSON objects"
                };
                return self
                    .error_frame(None, StatusCode::UNPROCESSABLE_ENTITY, detail.into())
                    .await;
            }
        };
        // Typing, read and watch fan out, write or look up: a flood must not reach others.
        if matches!(
            frame,
            ClientFrame::Typing { .. } | ClientFrame::Read { .. } | ClientFrame::Watch { .. }
        ) {
            if let Err(e) = self.state.guards.check_signal(self.user.id) {
                return self.error_frame(None, e.status(), e.detail()).await;
            }
        }
        match frame {
            ClientFrame::Ping => {
                let pong = text(&PongFrame {
                    kind: "pong",
                    timestamp: minichat_core::model::now(),
                });
                self.send(pong).await
            }
            ClientFrame::Message {
                receiver_id,
                content,
                client_id,
            } => {
                if let Err(e) = self.state.guards.check_send(self.user.id) {
                    return self
                        .error_frame(client_id.as_deref(), e.status(), e.detail())
                        .await;
                }
                let new = NewMessage {
                    sender_id: self.user.id,
                    receiver_id,
                    content,
                    client_id: client_id.clone(),
                };
                match self.state.chat.send_message(new, Some(origin)).await {
                    Ok(sent) => {
                        // Its own send is in this connection's stream too, acknowledged
                        // instead of echoed.
                        if sent.sender_seq == self.last_seq + 1 {
                            self.last_seq = sent.sender_seq;
                            self.absorb_own();
                        } else if sent.sender_seq > self.last_seq
                            && self.own.len() < MAX_PENDING_OWN
                        {
                            self.own.insert(sent.sender_seq);
                        }
                        // The ack carries the message as the sender's stream numbers it.
                        let ack = text(&AckFrame {
                            kind: "ack",
                            client_id: client_id.as_deref(),
                            message: MessageFrame {
                                message: &sent.message,
                                seq: sent.sender_seq,
                            },
                        });
                        self.send(ack).await
                    }
                    Err(e) => self.core_error(client_id.as_deref(), e).await,
                }
            }
            ClientFrame::Typing { receiver_id } => {
                match self.state.chat.typing(self.user.id, receiver_id).await {
                    Ok(()) => Ok(()),
                    Err(e) => self.core_error(None, e).await,
                }
            }
            ClientFrame::Read { peer_id, up_to } => {
                match self
                    .state
                    .chat
                    .mark_read(self.user.id, peer_id, up_to)
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) => self.core_error(None, e).await,
                }
            }
            ClientFrame::Watch { user_ids } => {
                if subscription.watching().len() + user_ids.len() > MAX_WATCHED {
                    let detail = format!("A connection may watch at most {MAX_WATCHED} users");
                    return self
                        .error_frame(None, StatusCode::UNPROCESSABLE_ENTITY, detail.into())
                        .await;
                }
                match self.state.chat.watch(subscription, &user_ids).await {
                    Ok(now) => {
                        for presence in &now {
                            if let Ok(text) = Utf8Bytes::try_from(presence_event(presence).payload)
                            {
                                self.send(Frame::Text(text)).await?;
                            }
                        }
                        Ok(())
                    }
                    Err(e) => self.core_error(None, e).await,
                }
            }
        }
    }

    /// Answers a failed request with an error frame; the connection stays open.
    async fn core_error(&mut self, client_id: Option<&str>, e: CoreError) -> Result<(), End> {
        let e = ApiError::from(e);
        self.error_frame(client_id, e.status(), e.detail()).await
    }
}
