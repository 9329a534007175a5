//! `GET /ws/{user_id}`: the WebSocket upgrade and the life of one connection.
//!
//! The upgrade is checked (handshake headers, id, token) before the 101 goes out. The
//! connection then subscribes the user on the hub *before* replaying anything stored (`?since=`),
//! so an event sent meanwhile is in the queue and is dropped there by its seq if the replay
//! already carried it: nothing is lost, nothing doubled. After that it forwards the user's
//! events, answers the client's frames, pings a quiet client and closes a dead one, and closes
//! with 4008 when it cannot keep up (its bounded queue filled on the hub) or 1001 at shutdown.

use crate::error::{ApiError, Location};
use crate::extract::{parse_int, Query};
use crate::routes::{AppState, Response};
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
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as Frame, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// How long a socket may stay silent before the server pings it; twice that without any
/// frame from the client and it is taken for dead.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// How long one write to a socket may take before the client is taken for dead: a client
/// that stops reading holds its connection task no longer than this.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
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
    state.tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
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
                Connection::run(state_for_task, socket, user_id, since).await;
                drop(permit);
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });

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
    /// The highest seq already sent on this connection; live events at or below it are
    /// duplicates of the replay and are dropped.
    last_seq: Seq,
}

impl Connection {
    async fn run(state: Arc<AppState>, mut socket: Socket, user_id: UserId, since: Option<Seq>) {
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
        let span = tracing::info_span!("ws", user = user.id);
        let _enter = span.enter();
        let subscription = match state.chat.subscribe(user.id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "subscribe failed");
                let _ = socket.send(close_frame(1011, "storage unavailable")).await;
                return;
            }
        };
        tracing::info!(conn = subscription.id(), "connected");
        let mut conn = Connection {
            state,
            socket,
            user,
            last_seq: 0,
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
        let greeting = format!("Connected to chat as {}", self.user.username);
        let system = text(&SystemFrame {
            kind: "system",
            message: &greeting,
            timestamp: minichat_core::model::now(),
        });
        if let Err(end) = self.send(system).await {
            return end;
        }
        if let Some(since) = since {
            if let Err(end) = self.replay(since).await {
                return end;
            }
        }
        let mut heartbeat = tokio::time::interval(PING_INTERVAL);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        let mut last_heard = Instant::now();
        let shutdown = self.state.shutdown.clone();
        loop {
            let result = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Close(1001, "server shutting down"),
                event = subscription.recv() => match event {
                    Ok(event) => {
                        if event.seq.is_some_and(|s| s <= self.last_seq) {
                            continue;
                        }
                        if let Some(seq) = event.seq {
                            self.last_seq = seq;
                        }
                        match Utf8Bytes::try_from(event.payload) {
                            Ok(text) => self.send(Frame::Text(text)).await,
                            Err(_) => Ok(()),
                        }
                    }
                    Err(Closed::SlowConsumer) => return End::Close(CLOSE_SLOW_CONSUMER, "slow consumer"),
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
                    if quiet >= PING_INTERVAL * 2 {
                        tracing::info!("no frame for {quiet:?}: closing dead connection");
                        return End::Close(1001, "ping timeout");
                    }
                    if quiet >= PING_INTERVAL {
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

    /// Sends every stored event above `since`, oldest first.
    async fn replay(&mut self, since: Seq) -> Result<(), End> {
        self.last_seq = since;
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
                let event = message_event(&message, seq);
                self.last_seq = seq;
                if let Ok(text) = Utf8Bytes::try_from(event.payload) {
                    self.send(Frame::Text(text)).await?;
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
