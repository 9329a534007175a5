//! A user's resumable event stream: the delivery guarantee for any reader of a [`ChatService`].
//!
//! A [`Subscription`] alone hands out events as the hub gets them: concurrent senders' events
//! may arrive out of seq order, one may be missed (a broker outage), and nothing before the
//! subscription is there. An [`EventStream`] wraps one and makes it the user's stream: it
//! subscribes *before* reading storage, replays what came after `since` (in pages of
//! [`REPLAY_PAGE`]), puts live events that arrive slightly out of order back in order (waiting
//! [`REORDER_WAIT`] for a missing one), reads any gap still left from storage before the event
//! after it, drops what its reader already has, and skips its reader's own sends once they are
//! [acknowledged](EventStream::acknowledged). So a reader that keeps the last seq it saw and
//! reopens with it as `since` gets every message exactly once, in seq order, with no gap. The
//! WebSocket server is one such reader; an embedding application is another:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> minichat_core::Result<()> {
//! use minichat_core::{Chat, ChatService, NewMessage, NewUser};
//!
//! let chat = Chat::in_memory(); // or Chat::connect(&ChatConfig { database_url, redis_url, .. })
//! let alice = chat.create_user(NewUser { username: "alice".into(), display_name: None }).await?;
//! let bob = chat.create_user(NewUser { username: "bob".into(), display_name: None }).await?;
//! let mut inbox = chat.stream(bob.id, None).await?; // reopen with Some(inbox.last_seq()) to resume
//! chat.send_message(NewMessage::to_user(alice.id, bob.id, "hi"), None).await?;
//! let item = inbox.next().await.expect("subscribed"); // in seq order, none missing or doubled
//! println!("{}", String::from_utf8_lossy(&item.event.payload)); // JSON, with bob's seq
//! # Ok(()) }
//! ```
//!
//! The rule itself (what to deliver, drop or fill) is the pure [`Sequencer`]; this file does
//! the reading.

mod sequencer;

pub use sequencer::{Action, Sequencer, MAX_PENDING_OWN};

use crate::error::{Backend, Error, Result};
use crate::event::{conversation_event, own_message_event, Presence};
use crate::hub::{Closed, ConnectionId, Event, Subscription};
use crate::model::{NewMessage, Seq, StreamEvent, UserId};
use crate::service::{Chat, ChatService, SentMessage};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// Stored events read per storage round trip (replay and gap fill).
pub const REPLAY_PAGE: usize = 500;

/// How long a live event that arrived ahead of its turn waits for the missing ones to arrive
/// live before the gap is read from storage. Concurrent sends are published in whatever order
/// their tasks run, so a member of a busy group sees seqs slightly out of order all the time; a
/// storage read for each such gap, on every socket at once, is what took the database from the
/// writer under load (BENCHMARKS.md, "Groups").
pub const REORDER_WAIT: std::time::Duration = std::time::Duration::from_millis(25);
/// The most live events held ahead of their turn (a bound, like every queue here): past it the
/// gap is read from storage at once.
pub const REORDER_LIMIT: usize = 64;

/// A page of stored events being read, by a task of its own: a read holds a storage
/// connection until it completes, and must complete even while the stream's reader is busy
/// elsewhere. (Kept as a future polled only by [`EventStream::next`], a read whose reader had
/// turned to a send of its own held its connection until that send returned; with every
/// connection so held, the sends waited for a connection that none of them would give back, a
/// cycle that only the backend budget broke: BENCHMARKS.md, "The stalled reads".)
type PageRead = tokio::task::JoinHandle<Result<Vec<StreamEvent>>>;

/// Where an [`Item`] came from (the server's delivery metrics tell them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Live from the hub, which queued it at `queued`.
    Live { queued: Instant },
    /// Read from storage to replay what came after `since`.
    Replay,
    /// Read from storage to fill a gap in the live events.
    Gap,
}

/// One event of the stream, ready to hand to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The serialised frame, and its seq for a message.
    pub event: Event,
    pub source: Source,
}

impl Item {
    /// Whether it is a message (with a seq), rather than typing, a read receipt or presence.
    pub fn is_message(&self) -> bool {
        self.event.seq.is_some()
    }
}

/// Why [`EventStream::next`] returned no item.
#[derive(Debug)]
pub enum End {
    /// The hub closed the subscription: the reader was too slow (its queue filled up) or the
    /// node shut down. The stream is over; reopen it with `since` = [`EventStream::last_seq`].
    Closed(Closed),
    /// Storage failed while replaying or filling a gap. Nothing was lost: calling `next` again
    /// retries, or the reader may give up and reopen later with `since`.
    Storage(Error),
}

/// What the stream is reading from storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    Replay,
    /// The gap before a held live event with seq `before`.
    Gap {
        before: Seq,
    },
}

/// A live event held back while the gap before it is read.
struct Held {
    event: Event,
    queued: Instant,
    filled: bool,
    /// It already waited [`REORDER_WAIT`] for the events before it: the gap is read now.
    waited: bool,
}

/// A user's stream of events, in seq order, without gaps or duplicates (see the module docs).
///
/// [`next`](EventStream::next) is cancel-safe: dropping its future (a `tokio::select!` that took
/// another branch) loses nothing. The stream's position only moves when `next` returns an
/// item, and a storage read in flight is kept and resumed by the next call.
pub struct EventStream {
    chat: Arc<dyn ChatService>,
    user: UserId,
    subscription: Subscription,
    sequencer: Sequencer,
    reading: Option<Reading>,
    /// Whether storage may hold more for `reading` than was read so far.
    more: bool,
    /// The highest seq read from storage and kept: where the next page starts, if above the
    /// sequencer's position.
    read_to: Seq,
    /// Stored events read for `reading`, not yet handed out, oldest first.
    stored: VecDeque<StreamEvent>,
    /// A storage read in flight, kept across cancelled calls of `next`.
    fetch: Option<PageRead>,
    held: Option<Held>,
    /// Live events that came ahead of their turn, by seq (at most [`REORDER_LIMIT`]), waiting
    /// for the ones before them until `early_until`.
    early: std::collections::BTreeMap<Seq, (Event, Instant)>,
    early_until: Option<tokio::time::Instant>,
    closed: Option<Closed>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("user", &self.user)
            .field("connection", &self.subscription.id())
            .field("last_seq", &self.sequencer.last_seq())
            .finish_non_exhaustive()
    }
}

/// Opens `user`'s stream: subscribes, then reads where it starts. With `since`, it first
/// replays the stored events after it (a `since` beyond the newest stored seq is taken as the
/// newest); without, it starts at the newest stored event. `Error::UserNotFound` for an
/// unknown user.
pub async fn open(
    chat: Arc<dyn ChatService>,
    user: UserId,
    since: Option<Seq>,
) -> Result<EventStream> {
    // Subscribed first, so anything stored from here on is in the queue as well.
    let subscription = chat.subscribe(user).await?;
    let current = chat.current_seq(user).await?;
    let sequencer = Sequencer::resume(since, current);
    Ok(EventStream {
        chat,
        user,
        subscription,
        read_to: sequencer.last_seq(),
        sequencer,
        reading: since.map(|_| Reading::Replay),
        more: since.is_some(),
        stored: VecDeque::new(),
        fetch: None,
        held: None,
        early: std::collections::BTreeMap::new(),
        early_until: None,
        closed: None,
    })
}

impl Chat {
    /// Opens `user`'s resumable stream over this chat: see [`open`].
    pub async fn stream(&self, user: UserId, since: Option<Seq>) -> Result<EventStream> {
        open(Arc::new(self.clone()), user, since).await
    }
}

impl EventStream {
    pub fn user(&self) -> UserId {
        self.user
    }

    /// The subscription's connection id: the `origin` of this reader's own sends.
    pub fn connection_id(&self) -> ConnectionId {
        self.subscription.id()
    }

    /// Every message up to this seq has been handed out (or acknowledged, or predates the
    /// stream): the `since` to reopen with.
    pub fn last_seq(&self) -> Seq {
        self.sequencer.last_seq()
    }

    /// The users whose presence this stream receives.
    pub fn watching(&self) -> &[UserId] {
        self.subscription.watching()
    }

    /// Records that this reader's own send was stored with `seq` in the user's stream and
    /// acknowledged to it (sent with `origin` = [`connection_id`](EventStream::connection_id),
    /// so the hub does not echo it): it counts as handed out.
    pub fn acknowledged(&mut self, seq: Seq) {
        self.sequencer.acknowledged(seq);
    }

    /// Sends a message from this stream's reader: [`ChatService::send_message`] with this
    /// stream as the origin, then [`acknowledged`](EventStream::acknowledged).
    pub async fn send_message(&mut self, new: NewMessage) -> Result<SentMessage> {
        let sent = self
            .chat
            .send_message(new, Some(self.connection_id()))
            .await?;
        if sent.message.sender_id == self.user {
            self.sequencer.acknowledged(sent.sender_seq);
        }
        Ok(sent)
    }

    /// Sends a run of messages from this stream's reader, in order:
    /// [`ChatService::send_messages`] with this stream as the origin, then
    /// [`acknowledged`](EventStream::acknowledged) for each one stored.
    pub async fn send_messages(&mut self, news: Vec<NewMessage>) -> Vec<Result<SentMessage>> {
        let sent = self
            .chat
            .send_messages(news, Some(self.connection_id()))
            .await;
        for sent in sent.iter().flatten() {
            if sent.message.sender_id == self.user {
                self.sequencer.acknowledged(sent.sender_seq);
            }
        }
        sent
    }

    /// Makes the stream carry presence events of `users` too (see [`ChatService::watch`]), and
    /// returns their presence now.
    pub async fn watch(&mut self, users: &[UserId]) -> Result<Vec<Presence>> {
        self.chat.watch(&mut self.subscription, users).await
    }

    /// The next event, or why there is none (see [`End`]). Cancel-safe (see [`EventStream`]).
    pub async fn next(&mut self) -> Result<Item, End> {
        loop {
            if let Some(closed) = self.closed {
                return Err(End::Closed(closed));
            }
            if let Some(reading) = self.reading {
                if let Some(item) = self.next_stored(reading) {
                    return Ok(item);
                }
                if self.more {
                    self.read_page(reading).await.map_err(End::Storage)?;
                    continue;
                }
                self.reading = None;
                if let (Reading::Gap { .. }, Some(held)) = (reading, self.held.as_mut()) {
                    held.filled = true;
                }
            }
            if let Some(held) = self.held.take() {
                let action = if held.filled {
                    self.sequencer.live_after_fill(held.event.seq)
                } else {
                    self.sequencer.live(held.event.seq)
                };
                match action {
                    Action::Deliver => {
                        if let Some(seq) = held.event.seq {
                            self.sequencer.delivered(seq);
                        }
                        return Ok(Item {
                            event: held.event,
                            source: Source::Live {
                                queued: held.queued,
                            },
                        });
                    }
                    Action::Drop => continue,
                    Action::Fill { .. } if !held.waited && self.early.len() < REORDER_LIMIT => {
                        // Ahead of its turn: give the missing events a moment to come live.
                        if let Some(seq) = held.event.seq {
                            self.early.insert(seq, (held.event, held.queued));
                            self.early_until
                                .get_or_insert_with(|| tokio::time::Instant::now() + REORDER_WAIT);
                        }
                        continue;
                    }
                    Action::Fill { .. } => {
                        self.reading = Some(Reading::Gap {
                            before: held.event.seq.unwrap_or(Seq::MAX),
                        });
                        self.more = true;
                        self.held = Some(held);
                        continue;
                    }
                }
            }
            // An early event whose turn has come (or that is now a duplicate) goes first.
            if let Some((&seq, _)) = self.early.first_key_value() {
                if !matches!(self.sequencer.live(Some(seq)), Action::Fill { .. }) {
                    self.take_early(false);
                    continue;
                }
            }
            if !self.early.is_empty() && self.early_until.is_none() {
                // Progress was made, and a later gap is left: it gets its own moment.
                self.early_until = Some(tokio::time::Instant::now() + REORDER_WAIT);
            }
            let waiting = self.early_until;
            let received = match waiting {
                None => self.subscription.recv_timed().await,
                Some(until) => tokio::select! {
                    // The queue first: a missing event may be in it already when the wait
                    // ends (a busy node runs the stream late), and then it is taken live, not
                    // read from storage. A queue that never empties cannot hold the wait off
                    // for long: past `REORDER_LIMIT` early events the gap is read at once.
                    biased;
                    received = self.subscription.recv_timed() => received,
                    _ = tokio::time::sleep_until(until) => {
                        // The missing events did not come live: read them from storage.
                        self.take_early(true);
                        continue;
                    }
                },
            };
            match received {
                Ok((event, queued)) => {
                    self.held = Some(Held {
                        event,
                        queued,
                        filled: false,
                        waited: false,
                    })
                }
                Err(closed) => self.closed = Some(closed),
            }
        }
    }

    /// Makes the earliest early event the held one (`waited`: its wait is over, so its gap is
    /// read from storage); the wait ends with the last early event.
    fn take_early(&mut self, waited: bool) {
        if let Some((_, (event, queued))) = self.early.pop_first() {
            self.held = Some(Held {
                event,
                queued,
                filled: false,
                waited,
            });
        }
        if self.early.is_empty() || !waited {
            self.early_until = None;
        }
    }

    /// The next stored event already read that the reader lacks, dropping those it has.
    fn next_stored(&mut self, reading: Reading) -> Option<Item> {
        while let Some(stored) = self.stored.pop_front() {
            let seq = stored.seq();
            if self.sequencer.stored(seq) == Action::Deliver {
                self.sequencer.delivered(seq);
                let source = match reading {
                    Reading::Replay => Source::Replay,
                    Reading::Gap { .. } => Source::Gap,
                };
                let event = match &stored {
                    StreamEvent::Message(stored) => {
                        // Storage gives the client id on the user's own sends only; checked
                        // again here so that no backend can hand others the sender's client id.
                        let client_id = stored
                            .client_id
                            .as_deref()
                            .filter(|_| stored.message.sender_id == self.user);
                        own_message_event(&stored.message, seq, client_id)
                    }
                    StreamEvent::Conversation { event, .. } => conversation_event(event, seq),
                };
                return Some(Item { event, source });
            }
        }
        None
    }

    /// Reads the next page for `reading` into `stored`. The read runs as a task of its own, so
    /// it completes (and gives its connection back) whether or not the stream is being polled;
    /// it outlives a cancelled call (and a dropped stream: it ends within the backend budget),
    /// and nothing changes until it completes.
    async fn read_page(&mut self, reading: Reading) -> Result<()> {
        let fetch = self.fetch.get_or_insert_with(|| {
            let chat = self.chat.clone();
            let (user, since) = (self.user, self.sequencer.last_seq().max(self.read_to));
            tokio::spawn(async move { chat.events_since(user, since, REPLAY_PAGE).await })
        });
        let page = fetch.await;
        self.fetch = None;
        let page = page.map_err(|e| {
            Error::unavailable(
                Backend::Storage,
                format!("a stream's storage read failed: {e}"),
            )
        })??;
        self.more = page.len() >= REPLAY_PAGE;
        for stored in page {
            let seq = stored.seq();
            if let Reading::Gap { before } = reading {
                if seq >= before {
                    // The held event and what follows it come live.
                    self.more = false;
                    break;
                }
            }
            self.read_to = self.read_to.max(seq);
            self.stored.push_back(stored);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
