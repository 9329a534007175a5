//! The stream over the in-memory chat: replay, gap fill, own sends, resume, concurrency and
//! cancellation.

use super::*;
use crate::event::typing_event;
use crate::health::Health;
use crate::model::{
    Conversation, ConversationId, ConversationSummary, HistoryRequest, Message, MessageId,
    NewGroup, NewMembers, NewUser, ReadState, Recipient, Rename, User, UserSearchRequest,
};
use async_trait::async_trait;
use futures_util::FutureExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(10);

async fn user(chat: &Chat, name: &str) -> UserId {
    chat.create_user(NewUser {
        username: name.into(),
        display_name: None,
    })
    .await
    .expect("create user")
    .id
}

fn text(sender: UserId, receiver: UserId, content: &str) -> NewMessage {
    NewMessage::to_user(sender, receiver, content)
}

async fn send(chat: &Chat, sender: UserId, receiver: UserId, content: &str) -> SentMessage {
    chat.send_message(text(sender, receiver, content), None)
        .await
        .expect("send")
}

async fn next(stream: &mut EventStream) -> Item {
    match tokio::time::timeout(DEADLINE, stream.next()).await {
        Ok(Ok(item)) => item,
        Ok(Err(end)) => panic!("stream ended: {end:?}"),
        Err(_) => panic!("no item within {DEADLINE:?}"),
    }
}

fn is_source(item: &Item, replay: bool, gap: bool) -> bool {
    match item.source {
        Source::Live { .. } => !replay && !gap,
        Source::Replay => replay,
        Source::Gap => gap,
    }
}

fn content(item: &Item) -> String {
    let frame: serde_json::Value = serde_json::from_slice(&item.event.payload).expect("JSON");
    frame["content"].as_str().unwrap_or_default().to_owned()
}

/// Nothing queued on the stream right now.
async fn assert_idle(stream: &mut EventStream) {
    let idle = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
    assert!(idle.is_err(), "unexpected item: {idle:?}");
}

#[tokio::test]
async fn without_since_the_stream_starts_at_the_newest_stored_event() {
    let chat = Chat::in_memory();
    let (alice, bob) = (user(&chat, "alice").await, user(&chat, "bob").await);
    send(&chat, alice, bob, "before").await;
    let mut stream = chat.stream(bob, None).await.expect("open");
    assert_eq!(stream.last_seq(), 1);
    send(&chat, alice, bob, "after").await;
    let item = next(&mut stream).await;
    assert_eq!((item.event.seq, content(&item)), (Some(2), "after".into()));
    assert!(is_source(&item, false, false) && item.is_message());
    assert_idle(&mut stream).await;
}

#[tokio::test]
async fn since_replays_in_pages_then_continues_live() {
    let chat = Chat::in_memory();
    let (alice, bob) = (user(&chat, "alice").await, user(&chat, "bob").await);
    let stored = 2 * REPLAY_PAGE as Seq + 3;
    for i in 1..=stored {
        send(&chat, alice, bob, &format!("m{i}")).await;
    }
    let mut stream = chat.stream(bob, Some(2)).await.expect("open");
    // Sent while the replay is under way: in the queue too, and handed out once.
    send(&chat, alice, bob, "live").await;
    for seq in 3..=stored {
        let item = next(&mut stream).await;
        assert_eq!(item.event.seq, Some(seq));
        assert!(is_source(&item, true, false), "{:?}", item.source);
        assert_eq!(content(&item), format!("m{seq}"));
    }
    let replayed_live = next(&mut stream).await;
    assert_eq!(replayed_live.event.seq, Some(stored + 1));
    assert!(
        is_source(&replayed_live, true, false),
        "stored before the replay reached it"
    );
    send(&chat, alice, bob, "later").await;
    let item = next(&mut stream).await;
    assert_eq!(item.event.seq, Some(stored + 2));
    assert!(is_source(&item, false, false));
    assert_idle(&mut stream).await;
}

#[tokio::test]
async fn a_since_beyond_the_newest_is_taken_as_the_newest() {
    let chat = Chat::in_memory();
    let (alice, bob) = (user(&chat, "alice").await, user(&chat, "bob").await);
    send(&chat, alice, bob, "old").await;
    let mut stream = chat.stream(bob, Some(1000)).await.expect("open");
    assert_eq!(stream.last_seq(), 1);
    send(&chat, alice, bob, "new").await;
    let item = next(&mut stream).await;
    assert_eq!((item.event.seq, content(&item)), (Some(2), "new".into()));
}

#[tokio::test]
async fn a_gap_in_live_events_is_read_from_storage_first() {
    let chat = Chat::in_memory();
    let (alice, bob) = (user(&chat, "alice").await, user(&chat, "bob").await);
    let mut stream = chat.stream(bob, None).await.expect("open");
    // Bob's send from this stream's connection is not echoed to it, and not acknowledged:
    // seq 1 is missing from the live events.
    chat.send_message(text(bob, alice, "missed"), Some(stream.connection_id()))
        .await
        .expect("send");
    send(&chat, alice, bob, "live").await;
    let filled = next(&mut stream).await;
    assert_eq!(
        (filled.event.seq, content(&filled)),
        (Some(1), "missed".into())
    );
    assert!(is_source(&filled, false, true), "{:?}", filled.source);
    let live = next(&mut stream).await;
    assert_eq!((live.event.seq, content(&live)), (Some(2), "live".into()));
    assert!(is_source(&live, false, false));
    assert_idle(&mut stream).await;
}

/// A made-up message event for `user`'s stream, delivered straight to the hub.
fn event_for(seq: Seq, content: &str) -> crate::hub::Event {
    let message = Message {
        id: seq,
        conversation_id: 1,
        sender_id: 1,
        sender_username: "alice".into(),
        receiver_id: Some(2),
        content: content.into(),
        timestamp: crate::model::now(),
        kind: crate::model::MessageType::Message,
    };
    crate::event::message_event(&message, seq)
}

#[tokio::test]
async fn events_that_arrive_slightly_out_of_order_are_put_back_in_order_without_storage() {
    let (chat, bob, service, mut stream) = bob_over_counted_reads().await;
    // Seq 2 is queued first, seq 1 right behind it (nothing is in storage, so a storage read
    // could not have produced seq 1).
    chat.hub().deliver(bob, None, &event_for(2, "second"));
    chat.hub().deliver(bob, None, &event_for(1, "first"));
    let first = next(&mut stream).await;
    let second = next(&mut stream).await;
    assert_eq!(
        (first.event.seq, content(&first)),
        (Some(1), "first".into())
    );
    assert_eq!(
        (second.event.seq, content(&second)),
        (Some(2), "second".into())
    );
    assert!(is_source(&first, false, false) && is_source(&second, false, false));
    assert_eq!(service.reads.load(Ordering::SeqCst), 0, "no storage read");
    assert_idle(&mut stream).await;
}

/// The wait for a missing event ends while that event is already queued (a busy node runs the
/// stream late): the queue is read first, so the event is taken live, not read from storage.
/// Twenty rounds, because with no preference between the two a round would go either way.
#[tokio::test(start_paused = true)]
async fn a_missing_event_already_queued_when_the_wait_ends_is_taken_live() {
    for round in 0..20 {
        let (chat, bob, service, mut stream) = bob_over_counted_reads().await;
        chat.hub().deliver(bob, None, &event_for(2, "second"));
        // Seq 2 is held, waiting for seq 1.
        assert!(stream.next().now_or_never().is_none(), "round {round}");
        chat.hub().deliver(bob, None, &event_for(1, "first"));
        tokio::time::advance(REORDER_WAIT * 2).await;
        // (Storage holds neither, so a read instead would hand out seq 2 first.)
        let first = next(&mut stream).await;
        assert_eq!(first.event.seq, Some(1), "round {round}");
        let second = next(&mut stream).await;
        assert_eq!(second.event.seq, Some(2), "round {round}");
        assert!(is_source(&first, false, false) && is_source(&second, false, false));
        assert_eq!(service.reads.load(Ordering::SeqCst), 0, "round {round}");
    }
}

#[tokio::test]
async fn own_sends_are_acknowledged_instead_of_echoed() {
    let chat = Chat::in_memory();
    let (alice, bob) = (user(&chat, "alice").await, user(&chat, "bob").await);
    let mut stream = chat.stream(bob, None).await.expect("open");
    // Alice's seq 1 is queued but not read yet when bob's own send (seq 2) is acknowledged:
    // it is ahead of the stream.
    send(&chat, alice, bob, "first").await;
    let own = stream
        .send_message(text(bob, alice, "mine"))
        .await
        .expect("send");
    assert_eq!(own.sender_seq, 2);
    // Exactly next: seq 3 is acknowledged at once.
    let first = next(&mut stream).await;
    assert_eq!(first.event.seq, Some(1));
    let own = stream
        .send_message(text(bob, alice, "again"))
        .await
        .expect("send");
    assert_eq!((own.sender_seq, stream.last_seq()), (3, 3));
    send(&chat, alice, bob, "reply").await;
    let reply = next(&mut stream).await;
    assert_eq!(
        (reply.event.seq, content(&reply)),
        (Some(4), "reply".into())
    );
    assert!(is_source(&reply, false, false), "no gap to fill");
    assert_idle(&mut stream).await;
    // Another connection of bob's gets them all.
    let mut other = chat.stream(bob, Some(0)).await.expect("open");
    for (seq, expected) in [(1, "first"), (2, "mine"), (3, "again"), (4, "reply")] {
        let item = next(&mut other).await;
        assert_eq!(
            (item.event.seq, content(&item)),
            (Some(seq), expected.into())
        );
    }
}

fn client_id(item: &Item) -> Option<String> {
    let frame: serde_json::Value = serde_json::from_slice(&item.event.payload).expect("JSON");
    frame
        .get("client_id")
        .map(|v| v.as_str().expect("a string").to_owned())
}

fn keyed(sender: UserId, receiver: UserId, content: &str, key: Option<&str>) -> NewMessage {
    NewMessage {
        client_id: key.map(Into::into),
        ..text(sender, receiver, content)
    }
}

#[tokio::test]
async fn client_ids_reach_the_senders_copies_only_live_replayed_and_filled() {
    let chat = Chat::in_memory();
    let (alice, bob) = (user(&chat, "alice").await, user(&chat, "bob").await);
    let sending = chat.stream(alice, None).await.expect("open");
    let mut other = chat.stream(alice, None).await.expect("open");
    let mut inbox = chat.stream(bob, None).await.expect("open");
    for (content, key) in [("ok", Some("c-1")), ("ok", Some("c-2")), ("plain", None)] {
        chat.send_message(
            keyed(alice, bob, content, key),
            Some(sending.connection_id()),
        )
        .await
        .expect("send");
    }
    let expected = [Some("c-1".to_owned()), Some("c-2".to_owned()), None];
    // Live: the sender's other connection gets each exact client id; the receiver none.
    for (seq, key) in (1..).zip(&expected) {
        let mine = next(&mut other).await;
        assert_eq!((mine.event.seq, &client_id(&mine)), (Some(seq), key));
        let theirs = next(&mut inbox).await;
        assert_eq!((theirs.event.seq, client_id(&theirs)), (Some(seq), None));
    }
    // Replayed from storage: the same, for both users.
    let mut replay = chat.stream(alice, Some(0)).await.expect("open");
    let mut replay_bob = chat.stream(bob, Some(0)).await.expect("open");
    for (seq, key) in (1..).zip(&expected) {
        let mine = next(&mut replay).await;
        assert!(is_source(&mine, true, false));
        assert_eq!((mine.event.seq, &client_id(&mine)), (Some(seq), key));
        let theirs = next(&mut replay_bob).await;
        assert_eq!((theirs.event.seq, client_id(&theirs)), (Some(seq), None));
    }
    // Filled from a gap: alice's send from `replay` itself, unacknowledged, then a live one.
    chat.send_message(
        keyed(alice, bob, "ok", Some("c-3")),
        Some(replay.connection_id()),
    )
    .await
    .expect("send");
    send(&chat, bob, alice, "reply").await;
    let filled = next(&mut replay).await;
    assert!(is_source(&filled, false, true), "{:?}", filled.source);
    assert_eq!(
        (filled.event.seq, client_id(&filled)),
        (Some(4), Some("c-3".into()))
    );
    let live = next(&mut replay).await;
    assert_eq!((live.event.seq, client_id(&live)), (Some(5), None));
    drop(sending);
}

#[tokio::test]
async fn a_reader_that_reopens_with_its_last_seq_misses_nothing() {
    let chat = Chat::in_memory();
    let (alice, bob) = (user(&chat, "alice").await, user(&chat, "bob").await);
    let mut stream = chat.stream(bob, Some(0)).await.expect("open");
    let mut got = Vec::new();
    for round in 0..3 {
        for i in 0..5 {
            send(&chat, alice, bob, &format!("r{round} m{i}")).await;
        }
        for _ in 0..2 {
            got.push(next(&mut stream).await.event.seq);
        }
        let since = stream.last_seq();
        drop(stream);
        send(&chat, alice, bob, &format!("r{round} while away")).await;
        stream = chat.stream(bob, Some(since)).await.expect("reopen");
        for _ in 0..4 {
            got.push(next(&mut stream).await.event.seq);
        }
    }
    let expected: Vec<_> = (1..=18).map(Some).collect();
    assert_eq!(got, expected);
    assert_idle(&mut stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_reach_the_stream_in_seq_order() {
    let chat = Chat::in_memory();
    let bob = user(&chat, "bob").await;
    let mut stream = chat.stream(bob, None).await.expect("open");
    let mut senders = Vec::new();
    for s in 0..4 {
        let chat = chat.clone();
        let sender = user(&chat, &format!("sender{s}")).await;
        senders.push(tokio::spawn(async move {
            for i in 0..40 {
                send(&chat, sender, bob, &format!("{s}/{i}")).await;
            }
        }));
    }
    // Bob's own sends, interleaved, are acknowledged instead of handed out.
    let (mut got, mut own) = (Vec::new(), Vec::new());
    while got.len() < 160 {
        got.push(next(&mut stream).await.event.seq.expect("a message"));
        if got.len() % 40 == 0 {
            let sent = stream
                .send_message(text(bob, 2, "own"))
                .await
                .expect("own send");
            own.push(sent.sender_seq);
        }
    }
    for s in senders {
        s.await.expect("sender");
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in seq order: {got:?}");
    let mut all: Vec<Seq> = got.iter().chain(&own).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=164).collect::<Vec<_>>(), "each seq exactly once");
    assert_eq!(stream.last_seq(), 164);
    assert_idle(&mut stream).await;
}

#[tokio::test]
async fn seq_less_events_and_presence_pass_through() {
    let chat = Chat::in_memory();
    let (alice, bob) = (user(&chat, "alice").await, user(&chat, "bob").await);
    let mut stream = chat.stream(bob, None).await.expect("open");
    chat.typing(alice, Recipient::User(bob))
        .await
        .expect("typing");
    let typing = next(&mut stream).await;
    assert_eq!(typing.event, typing_event(alice, None));
    assert!(!typing.is_message() && is_source(&typing, false, false));
    assert_eq!(stream.last_seq(), 0);

    let now = stream.watch(&[alice]).await.expect("watch");
    assert_eq!(now.len(), 1);
    assert!(!now[0].online);
    assert_eq!(stream.watching(), &[alice]);
    let alice_stream = chat.stream(alice, None).await.expect("alice online");
    let presence = next(&mut stream).await;
    let frame: serde_json::Value = serde_json::from_slice(&presence.event.payload).expect("JSON");
    assert_eq!(
        (frame["type"].as_str(), frame["online"].as_bool()),
        (Some("presence"), Some(true))
    );
    drop(alice_stream);
}

#[tokio::test]
async fn watching_beyond_the_limit_is_an_error() {
    let chat = Chat::in_memory();
    let bob = user(&chat, "bob").await;
    let mut stream = chat.stream(bob, None).await.expect("open");
    let many: Vec<UserId> = (1000..1000 + crate::hub::MAX_WATCHED as UserId + 1).collect();
    let refused = stream.watch(&many).await;
    assert!(matches!(refused, Err(Error::WatchLimit { max }) if max == crate::hub::MAX_WATCHED));
    assert!(stream.watching().is_empty(), "nothing watched");
}

#[tokio::test]
async fn the_end_is_reported_and_final() {
    let hub = crate::hub::Hub::new(1);
    let chat = Chat::from_parts(
        Arc::new(crate::storage::MemoryStorage::new()),
        Arc::new(crate::cache::MemoryCache::default()),
        Arc::new(crate::broker::LocalBroker::new(hub.clone())),
        hub.clone(),
    );
    let (alice, bob) = (user(&chat, "alice").await, user(&chat, "bob").await);
    let mut stream = chat.stream(bob, None).await.expect("open");
    send(&chat, alice, bob, "fits").await;
    send(&chat, alice, bob, "overflows").await;
    for _ in 0..2 {
        let end = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("in time");
        assert!(
            matches!(end, Err(End::Closed(Closed::SlowConsumer))),
            "{end:?}"
        );
    }
    // It resumes from storage.
    let mut stream = chat
        .stream(bob, Some(stream.last_seq()))
        .await
        .expect("reopen");
    assert_eq!(next(&mut stream).await.event.seq, Some(1));
    assert_eq!(next(&mut stream).await.event.seq, Some(2));
    hub.close_all();
    let end = tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("in time");
    assert!(matches!(end, Err(End::Closed(Closed::Shutdown))), "{end:?}");
}

/// A chat whose storage reads take one extra poll, and are counted: a `next` polled once and
/// dropped is cancelled in the middle of each.
struct Yielding {
    chat: Chat,
    reads: AtomicUsize,
}

impl Yielding {
    fn over(chat: &Chat) -> Arc<Yielding> {
        Arc::new(Yielding {
            chat: chat.clone(),
            reads: AtomicUsize::new(0),
        })
    }
}

/// A chat with alice (1) and bob (2), nothing stored, and bob's stream (from now) over a
/// service that counts its storage reads: for events handed to the hub directly.
async fn bob_over_counted_reads() -> (Chat, UserId, Arc<Yielding>, EventStream) {
    let chat = Chat::in_memory();
    user(&chat, "alice").await;
    let bob = user(&chat, "bob").await;
    let service = Yielding::over(&chat);
    let stream = open(service.clone(), bob, None).await.expect("open");
    (chat, bob, service, stream)
}

#[async_trait]
impl ChatService for Yielding {
    async fn create_user(&self, new: NewUser) -> Result<User> {
        self.chat.create_user(new).await
    }
    async fn list_users(&self, skip: i64, limit: i64) -> Result<Vec<User>> {
        self.chat.list_users(skip, limit).await
    }
    async fn search_users(&self, request: UserSearchRequest) -> Result<Vec<User>> {
        self.chat.search_users(request).await
    }
    async fn get_user(&self, id: UserId) -> Result<User> {
        self.chat.get_user(id).await
    }
    async fn send_message(
        &self,
        new: NewMessage,
        origin: Option<ConnectionId>,
    ) -> Result<SentMessage> {
        self.chat.send_message(new, origin).await
    }
    async fn history(&self, request: HistoryRequest) -> Result<Vec<Message>> {
        self.chat.history(request).await
    }
    async fn recent_messages(&self, user: UserId) -> Result<Vec<Message>> {
        self.chat.recent_messages(user).await
    }
    async fn subscribe(&self, user: UserId) -> Result<Subscription> {
        self.chat.subscribe(user).await
    }
    async fn events_since(
        &self,
        user: UserId,
        since: Seq,
        limit: usize,
    ) -> Result<Vec<StreamEvent>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        tokio::task::yield_now().await;
        self.chat.events_since(user, since, limit).await
    }
    async fn current_seq(&self, user: UserId) -> Result<Seq> {
        self.chat.current_seq(user).await
    }
    async fn typing(&self, sender: UserId, to: Recipient) -> Result<()> {
        self.chat.typing(sender, to).await
    }
    async fn mark_read(
        &self,
        reader: UserId,
        to: Recipient,
        up_to: MessageId,
    ) -> Result<MessageId> {
        self.chat.mark_read(reader, to, up_to).await
    }
    async fn create_group(&self, new: NewGroup) -> Result<Conversation> {
        self.chat.create_group(new).await
    }
    async fn conversation(&self, id: ConversationId, user: UserId) -> Result<Conversation> {
        self.chat.conversation(id, user).await
    }
    async fn conversations(
        &self,
        user: UserId,
        skip: i64,
        limit: i64,
    ) -> Result<Vec<ConversationSummary>> {
        self.chat.conversations(user, skip, limit).await
    }
    async fn rename_conversation(
        &self,
        id: ConversationId,
        rename: Rename,
    ) -> Result<Conversation> {
        self.chat.rename_conversation(id, rename).await
    }
    async fn add_members(&self, id: ConversationId, add: NewMembers) -> Result<Conversation> {
        self.chat.add_members(id, add).await
    }
    async fn remove_member(
        &self,
        id: ConversationId,
        actor: UserId,
        member: UserId,
    ) -> Result<Conversation> {
        self.chat.remove_member(id, actor, member).await
    }
    async fn read_state(&self, user: UserId, peer: UserId) -> Result<ReadState> {
        self.chat.read_state(user, peer).await
    }
    async fn presence(&self, users: &[UserId]) -> Result<Vec<Presence>> {
        self.chat.presence(users).await
    }
    async fn watch(
        &self,
        subscription: &mut Subscription,
        users: &[UserId],
    ) -> Result<Vec<Presence>> {
        self.chat.watch(subscription, users).await
    }
    async fn health(&self) -> Health {
        self.chat.health().await
    }
}

#[tokio::test]
async fn next_is_cancel_safe() {
    let chat = Chat::in_memory();
    let (alice, bob) = (user(&chat, "alice").await, user(&chat, "bob").await);
    let stored = 2 * REPLAY_PAGE as Seq + 200;
    for i in 1..=stored {
        send(&chat, alice, bob, &format!("m{i}")).await;
    }
    let service = Yielding::over(&chat);
    let mut stream = open(service.clone(), bob, Some(0)).await.expect("open");
    // A gap in the live events: its fill is cancelled too.
    chat.send_message(text(bob, alice, "gap"), Some(stream.connection_id()))
        .await
        .expect("send");
    send(&chat, alice, bob, "live").await;

    let total = stored + 2;
    let (mut got, mut cancelled) = (Vec::new(), 0);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while (got.len() as Seq) < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stalled at {}",
            got.len()
        );
        // Polled once, then dropped when not ready: as a `select!` that took another branch.
        match stream.next().now_or_never() {
            Some(Ok(item)) => got.push((item.event.seq, item.source)),
            Some(Err(end)) => panic!("ended: {end:?}"),
            None => {
                cancelled += 1;
                tokio::task::yield_now().await;
            }
        }
    }
    let seqs: Vec<_> = got.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=total).map(Some).collect::<Vec<_>>());
    // The replay reached the gap's message (stored by then), so nothing needed filling.
    assert!(got.iter().all(|(_, source)| *source == Source::Replay));
    assert!(cancelled >= 3, "every read was interrupted at least once");
    // Three pages of replay, each read once although interrupted: 500, 500, 202 (short: done).
    assert_eq!(service.reads.load(Ordering::SeqCst), 3);

    // A live gap whose fill is interrupted.
    chat.send_message(text(bob, alice, "gap 2"), Some(stream.connection_id()))
        .await
        .expect("send");
    send(&chat, alice, bob, "live 2").await;
    let mut tail = Vec::new();
    while tail.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "stalled");
        match stream.next().now_or_never() {
            Some(Ok(item)) => tail.push((item.event.seq, item.source, content(&item))),
            Some(Err(end)) => panic!("ended: {end:?}"),
            None => tokio::task::yield_now().await,
        }
    }
    assert_eq!(tail[0].0, Some(total + 1));
    assert_eq!((tail[0].1, tail[0].2.as_str()), (Source::Gap, "gap 2"));
    assert_eq!(tail[1].0, Some(total + 2));
    assert!(matches!(tail[1].1, Source::Live { .. }));
    assert_eq!(
        service.reads.load(Ordering::SeqCst),
        4,
        "the fill was read once"
    );
    assert_idle(&mut stream).await;
}
