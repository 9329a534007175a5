//! One WebSocket connection's life, once upgraded: it opens the user's
//! [`EventStream`] (which subscribes before reading storage, replays `?since=`, and hands out
//! events in seq order without gaps or duplicates), greets the client, writes the stream's
//! items, answers the client's frames, pings a quiet client and closes a dead one, and closes
//! with 4008 when it cannot keep up (its bounded queue filled on the hub, or a write stalled on
//! its small kernel send buffer) or 1001 at shutdown.
//! No sequencing happens here. Frames' content is never logged.

use super::frames::{
    close_frame, text, AckFrame, ClientFrame, ErrorFrame, MessageFrame, PongFrame, SystemFrame,
    CLOSE_INVALID_UTF8, CLOSE_SLOW_CONSUMER, CLOSE_USER_NOT_FOUND,
};
use super::read::LazyRead;
use crate::error::ApiError;
use crate::ids::Id;
use crate::state::AppState;
use crate::telemetry;
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use http::StatusCode;
use hyper_util::rt::TokioIo;
use minichat_core::event::presence_event;
use minichat_core::model::{ConversationId, Recipient};
use minichat_core::stream::{self, End as StreamEnd, Item, Source};
use minichat_core::{
    Closed, Error as CoreError, EventStream, NewMessage, SentMessage, Seq, UserId,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{self, Message as Frame, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

type Socket = WebSocketStream<LazyRead<TokioIo<hyper::upgrade::Upgraded>>>;

/// Why the connection loop ended, and the close frame to send (if any).
enum End {
    /// The client closed or vanished: nothing more to send.
    Gone,
    Close(u16, &'static str),
}

/// Counts a slow consumer (its queue filled, or a write stalled: the one counter for both) and
/// closes it with 4008.
fn slow_consumer(why: &str) -> End {
    telemetry::slow_consumer_closed();
    tracing::info!("{why}: closing as a slow consumer");
    End::Close(CLOSE_SLOW_CONSUMER, "slow consumer")
}

pub(super) struct Connection {
    state: Arc<AppState>,
    socket: Socket,
    user_id: UserId,
    metrics: telemetry::SocketMetrics,
}

impl Connection {
    pub(super) fn new(
        state: Arc<AppState>,
        socket: Socket,
        user_id: UserId,
        metrics: telemetry::SocketMetrics,
    ) -> Connection {
        Connection {
            state,
            socket,
            user_id,
            metrics,
        }
    }

    /// Runs the connection to its end. This future lives as long as the socket, so it is kept
    /// small (see ARCHITECTURE.md, "Per-socket memory budget"): what only its start, its end or
    /// a client's frame needs is boxed and gone again once done. It borrows the connection: an
    /// `async fn` taking `self` by value keeps both the argument and the moved local in its
    /// state, a second copy of the connection (360 B per socket).
    pub(super) async fn run(&mut self, since: Option<Seq>) {
        let opened = Box::pin(self.open(since)).await;
        let end = match opened {
            Ok(mut events) => self.serve(&mut events).await,
            Err(end) => end,
        };
        if let End::Close(code, reason) = end {
            Box::pin(self.close(code, reason)).await;
        }
        tracing::info!("disconnected");
    }

    /// Looks the user up, opens their stream and greets them.
    async fn open(&mut self, since: Option<Seq>) -> Result<EventStream, End> {
        let user = match self.state.chat.get_user(self.user_id).await {
            Ok(user) => user,
            Err(e) => {
                let (code, reason) = match e {
                    CoreError::UserNotFound => (CLOSE_USER_NOT_FOUND, "User not found"),
                    _ => (1011, "storage unavailable"),
                };
                let _ = self.socket.send(close_frame(code, reason)).await;
                let _ = self.socket.close(None).await;
                return Err(End::Gone);
            }
        };
        let events = match stream::open(self.state.chat.clone(), self.user_id, since).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "could not open the event stream");
                return Err(End::Close(1011, "storage unavailable"));
            }
        };
        let id = Id::connection(events.connection_id());
        tracing::Span::current().record("conn", tracing::field::display(id));
        tracing::info!("connected");
        let greeting = format!("Connected to chat as {}", user.username);
        self.send(text(&SystemFrame::new(&greeting))).await?;
        Ok(events)
    }

    /// Sends the close frame, then waits briefly for the client's close reply, so the close is
    /// clean; a client whose buffer is full cannot even take the close frame, and is dropped
    /// at once.
    async fn close(&mut self, code: u16, reason: &'static str) {
        let stall = self.state.limits.ws_write_stall;
        let sent = tokio::time::timeout(stall, self.socket.send(close_frame(code, reason)));
        if let Ok(Ok(())) = sent.await {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(_)) = self.socket.next().await {}
            })
            .await;
        }
    }

    /// Writes one frame. The kernel's send buffer is small (`MINICHAT_WS_SEND_BUFFER_BYTES`), so
    /// a client that stops reading stalls this write within a few frames; one that stalls for
    /// `MINICHAT_WS_WRITE_STALL_MS` is a slow consumer, like one whose queue filled.
    async fn send(&mut self, frame: Frame) -> Result<(), End> {
        let stall = self.state.limits.ws_write_stall;
        written(tokio::time::timeout(stall, self.socket.send(frame)).await)
    }

    /// Queues one frame for the next [`flush`](Self::flush), within the same stall limit.
    async fn feed(&mut self, frame: Frame) -> Result<(), End> {
        let stall = self.state.limits.ws_write_stall;
        written(tokio::time::timeout(stall, self.socket.feed(frame)).await)
    }

    /// Writes what [`feed`](Self::feed) queued.
    async fn flush(&mut self) -> Result<(), End> {
        let stall = self.state.limits.ws_write_stall;
        written(tokio::time::timeout(stall, self.socket.flush()).await)
    }

    async fn serve(&mut self, events: &mut EventStream) -> End {
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
                // Cancel-safe: an item not returned yet stays in the stream.
                item = events.next() => match item {
                    Ok(item) => self.write_items(item, events).await,
                    Err(StreamEnd::Closed(Closed::SlowConsumer)) => {
                        return slow_consumer("its queue filled");
                    }
                    Err(StreamEnd::Closed(Closed::Shutdown)) => {
                        return End::Close(1001, "server shutting down")
                    }
                    Err(StreamEnd::Storage(e)) => {
                        tracing::warn!(error = %e, "replay failed");
                        return End::Close(1011, "storage unavailable");
                    }
                },
                frame = self.socket.next() => {
                    last_heard = Instant::now();
                    // Boxed: parsing and answering a frame takes more room than waiting does.
                    Box::pin(self.on_frame(frame, events)).await
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

    /// Answers what the socket read: a client's frame, its end, or a protocol error (which ends
    /// the connection too).
    async fn on_frame(
        &mut self,
        frame: Option<Result<Frame, tungstenite::Error>>,
        events: &mut EventStream,
    ) -> Result<(), End> {
        match frame {
            None => Err(End::Gone),
            Some(Ok(Frame::Text(t))) => self.on_text(&t, events).await,
            Some(Ok(Frame::Binary(_))) => {
                let detail = "Binary frames are not supported; send JSON text";
                self.error_frame(None, StatusCode::BAD_REQUEST, detail.into())
                    .await
            }
            // Pings are answered and closes acknowledged by tungstenite itself.
            Some(Ok(_)) => Ok(()),
            Some(Err(tungstenite::Error::Capacity(_))) => Err(End::Close(1009, "message too big")),
            Some(Err(tungstenite::Error::Protocol(_))) => Err(End::Close(1002, "protocol error")),
            // A text frame or a close reason that is not UTF-8 (RFC 6455 §8.1).
            Some(Err(tungstenite::Error::Utf8(_))) => {
                Err(End::Close(CLOSE_INVALID_UTF8, "invalid UTF-8"))
            }
            Some(Err(_)) => Err(End::Gone),
        }
    }

    /// Writes `first` and the items the stream already has ready behind it (at most
    /// [`MAX_BURST`]) with one flush: a socket's backlog (a run of messages from one sender,
    /// say) goes out in a write or two instead of a write per frame. A stream error met while
    /// looking ahead is left for the next `next`, which returns it again.
    async fn write_items(&mut self, first: Item, events: &mut EventStream) -> Result<(), End> {
        self.feed_item(first).await?;
        // Cancel-safe: an item not returned stays in the stream.
        if let Some(Ok(second)) = events.next().now_or_never() {
            // Boxed: the look-ahead takes more room than waiting does, and only a burst needs it.
            Box::pin(self.feed_burst(second, events)).await?;
        }
        self.flush().await
    }

    /// Feeds `second` and the items ready behind it, up to [`MAX_BURST`] in the burst.
    async fn feed_burst(&mut self, second: Item, events: &mut EventStream) -> Result<(), End> {
        self.feed_item(second).await?;
        for _ in 2..MAX_BURST {
            match events.next().now_or_never() {
                Some(Ok(item)) => self.feed_item(item).await?,
                Some(Err(_)) | None => break,
            }
        }
        Ok(())
    }

    /// Queues one item of the stream for the flush that follows, and counts it.
    async fn feed_item(&mut self, item: Item) -> Result<(), End> {
        let is_message = item.is_message();
        if let Ok(text) = Utf8Bytes::try_from(item.event.payload) {
            self.feed(Frame::Text(text)).await?;
            match item.source {
                Source::Live { queued } => self.metrics.live_event_written(queued, is_message),
                Source::Replay => self.metrics.stored_message_written(true),
                Source::Gap => self.metrics.stored_message_written(false),
            }
        }
        Ok(())
    }

    async fn error_frame(
        &mut self,
        client_id: Option<&str>,
        status: StatusCode,
        detail: serde_json::Value,
    ) -> Result<(), End> {
        self.send(text(&ErrorFrame::new(client_id, status, detail)))
            .await
    }

    async fn on_text(&mut self, raw: &str, events: &mut EventStream) -> Result<(), End> {
        match serde_json::from_str(raw) {
            Ok(frame) => self.on_client_frame(frame, events).await,
            Err(e) => {
                let detail = ClientFrame::parse_error(&e);
                self.error_frame(None, StatusCode::UNPROCESSABLE_ENTITY, detail.into())
                    .await
            }
        }
    }

    async fn on_client_frame(
        &mut self,
        frame: ClientFrame,
        events: &mut EventStream,
    ) -> Result<(), End> {
        // Typing, read and watch fan out, write or look up: a flood must not reach others.
        if frame.is_signal() {
            if let Err(e) = self.state.guards.check_signal(self.user_id) {
                return self.error_frame(None, e.status(), e.detail()).await;
            }
        }
        match frame {
            ClientFrame::Ping => self.send(text(&PongFrame::now())).await,
            ClientFrame::Message {
                receiver_id,
                conversation_id,
                content,
                client_id,
            } => {
                let first = self.checked_send(receiver_id, conversation_id, content, client_id);
                self.send_run(first, events).await
            }
            ClientFrame::Typing {
                receiver_id,
                conversation_id,
            } => {
                let to = Recipient::from_fields(receiver_id, conversation_id, "receiver_id");
                let typed = match to {
                    Ok(to) => self.state.chat.typing(self.user_id, to).await,
                    Err(e) => Err(e.into()),
                };
                match typed {
                    Ok(()) => Ok(()),
                    Err(e) => self.core_error(None, e).await,
                }
            }
            ClientFrame::Read {
                peer_id,
                conversation_id,
                up_to,
            } => {
                let to = Recipient::from_fields(peer_id, conversation_id, "peer_id");
                let marked = match to {
                    Ok(to) => self.state.chat.mark_read(self.user_id, to, up_to).await,
                    Err(e) => Err(e.into()),
                };
                match marked {
                    Ok(_) => Ok(()),
                    Err(e) => self.core_error(None, e).await,
                }
            }
            ClientFrame::Watch { user_ids } => match events.watch(&user_ids).await {
                Ok(now) => {
                    for presence in &now {
                        if let Ok(text) = Utf8Bytes::try_from(presence_event(presence).payload) {
                            self.send(Frame::Text(text)).await?;
                        }
                    }
                    Ok(())
                }
                Err(e) => self.core_error(None, e).await,
            },
        }
    }

    /// A send as read, checked against the sender's rate: the message to store, or the error
    /// frame that answers it.
    fn checked_send(
        &self,
        receiver_id: Option<UserId>,
        conversation_id: Option<ConversationId>,
        content: String,
        client_id: Option<String>,
    ) -> Result<NewMessage, Frame> {
        if let Err(e) = self.state.guards.check_send(self.user_id) {
            return Err(text(&ErrorFrame::new(
                client_id.as_deref(),
                e.status(),
                e.detail(),
            )));
        }
        Ok(NewMessage {
            sender_id: self.user_id,
            receiver_id,
            conversation_id,
            content,
            client_id,
        })
    }

    /// Sends `first` and every send the client has already pipelined behind it (read without
    /// waiting, at most [`MAX_RUN`] in all) as one run: stored in order (in one transaction on
    /// PostgreSQL), then answered in order with one flush. A frame read ahead that is not a
    /// send is answered after the run, so answers keep the client's order.
    async fn send_run(
        &mut self,
        first: Result<NewMessage, Frame>,
        events: &mut EventStream,
    ) -> Result<(), End> {
        // `first` is kept apart, so that a lone send (the usual case) allocates nothing here.
        let mut rest = Run::default();
        let mut after = None;
        while 1 + rest.answers.len() < MAX_RUN {
            let Some(frame) = self.socket.next().now_or_never() else {
                break; // nothing more has arrived
            };
            let parsed = match &frame {
                Some(Ok(Frame::Text(t))) => serde_json::from_str::<ClientFrame>(t).ok(),
                _ => None,
            };
            match parsed {
                Some(ClientFrame::Message {
                    receiver_id,
                    conversation_id,
                    content,
                    client_id,
                }) => {
                    rest.push(self.checked_send(receiver_id, conversation_id, content, client_id))
                }
                _ => {
                    after = Some(frame);
                    break;
                }
            }
        }
        if rest.answers.is_empty() {
            // A run of one: the one-send path.
            let frame = match first {
                Err(refused) => refused,
                Ok(new) => {
                    let client_id = new.client_id.clone();
                    answer_frame(client_id.as_deref(), events.send_message(new).await)
                }
            };
            self.send(frame).await?;
        } else {
            rest.push_front(first);
            let mut sent = events.send_messages(rest.news).await.into_iter();
            for answer in rest.answers {
                let frame = match answer {
                    Err(refused) => refused,
                    Ok(client_id) => {
                        let sent = sent
                            .next()
                            .unwrap_or_else(|| Err(CoreError::earlier_in_run_unstored()));
                        answer_frame(client_id.as_deref(), sent)
                    }
                };
                self.feed(frame).await?;
            }
            self.flush().await?;
        }
        match after {
            Some(frame) => Box::pin(self.on_frame(frame, events)).await,
            None => Ok(()),
        }
    }

    /// Answers a failed request with an error frame; the connection stays open.
    async fn core_error(&mut self, client_id: Option<&str>, e: CoreError) -> Result<(), End> {
        self.send(error_text(client_id, e)).await
    }
}

/// A write within the stall limit: done, the client gone, or a slow consumer.
fn written(
    write: Result<Result<(), tungstenite::Error>, tokio::time::error::Elapsed>,
) -> Result<(), End> {
    match write {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Gone),
        Err(_) => Err(slow_consumer("a write stalled")),
    }
}

/// The most sends a connection hands over as one run (see [`Connection::send_run`]).
const MAX_RUN: usize = 32;

/// The most stream items a connection writes with one flush (see [`Connection::write_items`]).
const MAX_BURST: usize = 32;

/// The sends of a run, and per send read (in the client's order) its `client_id` for the ack,
/// or the error frame that already answers it.
#[derive(Default)]
struct Run {
    news: Vec<NewMessage>,
    answers: Vec<Result<Option<String>, Frame>>,
}

impl Run {
    fn push(&mut self, send: Result<NewMessage, Frame>) {
        match send {
            Ok(new) => {
                self.answers.push(Ok(new.client_id.clone()));
                self.news.push(new);
            }
            Err(refused) => self.answers.push(Err(refused)),
        }
    }

    /// Puts the send read first before those read behind it.
    fn push_front(&mut self, send: Result<NewMessage, Frame>) {
        let stored = send.is_ok();
        self.push(send);
        self.answers.rotate_right(1);
        if stored {
            self.news.rotate_right(1);
        }
    }
}

/// The answer to a send: its ack (the sender's copy, as its other connections get it, with
/// the sender's seq), or its error frame.
fn answer_frame(client_id: Option<&str>, sent: Result<SentMessage, CoreError>) -> Frame {
    match sent {
        Ok(sent) => {
            let message = MessageFrame {
                message: &sent.message,
                seq: sent.sender_seq,
                client_id,
            };
            text(&AckFrame::new(client_id, message))
        }
        Err(e) => error_text(client_id, e),
    }
}

/// The error frame of a failed request.
fn error_text(client_id: Option<&str>, e: CoreError) -> Frame {
    let e = ApiError::from(e);
    text(&ErrorFrame::new(client_id, e.status(), e.detail()))
}
