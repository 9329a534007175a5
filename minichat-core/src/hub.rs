//! The fan-out hub: who is connected to this node, and handing each of them their events.
//!
//! The hub is a registry of local subscribers per user. Each subscriber owns a bounded queue
//! (`hub/queue.rs`: it holds no buffer while empty); [`Hub::deliver`] puts one [`Event`]
//! (already serialised, its bytes shared by reference count) into the queue of every subscriber of a user without ever waiting: a subscriber whose queue is
//! full is evicted and learns it was a slow consumer, so one stalled client cannot hold up a
//! sender or anyone else. A [`Subscription`] unregisters itself when dropped. Each queued event
//! keeps when it was queued ([`Subscription::recv_timed`]), so a transport can measure how long
//! delivery took.
//!
//! The hub knows nothing of transports: the server turns a subscription into a WebSocket, an
//! embedding application reads it directly. Nor does it know of other nodes: a broker feeds it
//! events that arrive from elsewhere, and learns through [`Departures`] when a user's last local
//! subscriber has gone.

use crate::error::{Error, Result};
use crate::model::{Seq, UserId};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::Notify;

mod queue;

/// Identifies one subscriber (one WebSocket connection, one device) across the cluster: the
/// high 32 bits are random per hub, the low 32 count up.
pub type ConnectionId = u64;

/// Default capacity of each subscriber's queue.
pub const DEFAULT_QUEUE_CAPACITY: usize = 256;

const SHARDS: usize = 16;

/// One event for one user: the serialised frame, and the user's update sequence number when the
/// event is a stored one (messages), so a resuming reader can drop what it already replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub seq: Option<Seq>,
    pub payload: Bytes,
}

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The subscriber's queue filled up: it was evicted and should resume from storage.
    SlowConsumer,
    /// The hub was shut down.
    Shutdown,
}

/// An event in a subscriber's queue, with when it was queued (for delivery-time metrics).
struct Queued {
    event: Event,
    at: Instant,
}

/// A handle to one subscriber's queue.
#[derive(Clone)]
struct Slot {
    id: ConnectionId,
    tx: queue::Sender<Queued>,
}

impl Slot {
    /// Queues without waiting; false when the subscriber is gone or was evicted just now.
    fn offer(&self, event: &Event, at: Instant) -> bool {
        match self.tx.push(Queued {
            event: event.clone(),
            at,
        }) {
            queue::Pushed::Queued => true,
            queue::Pushed::Evicted => {
                tracing::debug!(conn = self.id, "slow consumer evicted");
                false
            }
            queue::Pushed::Gone => false,
        }
    }
}

type Shard = Mutex<HashMap<UserId, Vec<Slot>>>;

/// Most users one connection may watch for presence.
pub const MAX_WATCHED: usize = 1000;

struct Inner {
    shards: Box<[Shard]>,
    /// Presence watchers: watched user → the connections watching them.
    watchers: Box<[Shard]>,
    capacity: usize,
    id_base: u64,
    next_id: AtomicU64,
    /// Users whose last local subscriber left, awaiting the broker (only while tracked).
    departed: Mutex<Option<HashSet<UserId>>>,
    departure: Notify,
}

/// A cheap, cloneable handle to the hub of this node.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(DEFAULT_QUEUE_CAPACITY)
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("capacity", &self.inner.capacity)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a hub lock cannot leave the maps inconsistent (every update is a
    // single insert or remove), so a poisoned lock is still safe to use.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// A hub whose subscribers each queue at most `capacity` events.
    pub fn new(capacity: usize) -> Hub {
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        let watchers = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Hub {
            inner: Arc::new(Inner {
                shards,
                watchers,
                capacity: capacity.max(1),
                id_base: (rand::random::<u32>() as u64) << 32,
                next_id: AtomicU64::new(1),
                departed: Mutex::new(None),
                departure: Notify::new(),
            }),
        }
    }

    fn shard(&self, user: UserId) -> &Shard {
        &self.inner.shards[(user as u64 % SHARDS as u64) as usize]
    }

    fn watcher_shard(&self, user: UserId) -> &Shard {
        &self.inner.watchers[(user as u64 % SHARDS as u64) as usize]
    }

    /// Registers a new subscriber for `user`. The flag is true when it is the user's first
    /// subscriber on this node (the moment a broker must start listening for the user).
    pub fn subscribe(&self, user: UserId) -> (Subscription, bool) {
        let id =
            self.inner.id_base | (self.inner.next_id.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff);
        let (tx, rx) = queue::bounded(self.inner.capacity);
        let first = {
            let mut map = lock(self.shard(user));
            let slots = map.entry(user).or_default();
            slots.push(Slot { id, tx });
            slots.len() == 1
        };
        let sub = Subscription {
            user,
            id,
            rx,
            watching: Vec::new(),
            hub: self.clone(),
        };
        (sub, first)
    }

    /// Queues `event` for every local subscriber of `user` except `exclude`, without waiting.
    /// Returns how many subscribers received it. A subscriber whose queue is full is evicted.
    pub fn deliver(&self, user: UserId, exclude: Option<ConnectionId>, event: &Event) -> usize {
        let now = Instant::now();
        let mut delivered = 0;
        let mut departed = false;
        {
            let mut map = lock(self.shard(user));
            let Some(slots) = map.get_mut(&user) else {
                return 0;
            };
            slots.retain(|slot| {
                if Some(slot.id) == exclude {
                    return true;
                }
                let kept = slot.offer(event, now);
                delivered += usize::from(kept);
                kept
            });
            if slots.is_empty() {
                map.remove(&user);
                departed = true;
            }
        }
        if departed {
            self.note_departure(user);
        }
        delivered
    }

    /// Whether `user` has at least one subscriber on this node.
    pub fn is_connected(&self, user: UserId) -> bool {
        lock(self.shard(user)).contains_key(&user)
    }

    /// How many subscribers `user` has on this node.
    pub fn connections(&self, user: UserId) -> usize {
        lock(self.shard(user)).get(&user).map_or(0, Vec::len)
    }

    /// Every user with at least one subscriber on this node.
    pub fn connected_users(&self) -> Vec<UserId> {
        let mut users = Vec::new();
        for shard in self.inner.shards.iter() {
            users.extend(lock(shard).keys().copied());
        }
        users
    }

    /// Closes every subscription (their streams end with [`Closed::Shutdown`]).
    pub fn close_all(&self) {
        for shard in self.inner.shards.iter().chain(self.inner.watchers.iter()) {
            lock(shard).clear();
        }
    }

    /// Makes `subscription` receive the presence events of `users` (see
    /// [`deliver_presence`](Hub::deliver_presence)), on top of those it watches already.
    /// Returns the users newly watched. `Error::WatchLimit`, and nothing watched, when that
    /// would make more than [`MAX_WATCHED`] users in all.
    pub fn watch(&self, subscription: &mut Subscription, users: &[UserId]) -> Result<Vec<UserId>> {
        let mut seen: HashSet<UserId> = subscription.watching.iter().copied().collect();
        let mut added: Vec<UserId> = Vec::new();
        for &user in users {
            if seen.insert(user) {
                added.push(user);
            }
            if seen.len() > MAX_WATCHED {
                return Err(Error::WatchLimit { max: MAX_WATCHED });
            }
        }
        let slot = {
            let map = lock(self.shard(subscription.user));
            map.get(&subscription.user)
                .and_then(|slots| slots.iter().find(|s| s.id == subscription.id).cloned())
        };
        let Some(slot) = slot else {
            return Ok(Vec::new());
        };
        for &user in &added {
            lock(self.watcher_shard(user))
                .entry(user)
                .or_default()
                .push(slot.clone());
            subscription.watching.push(user);
        }
        Ok(added)
    }

    /// Queues a presence event of `user` for every local connection watching them.
    pub fn deliver_presence(&self, user: UserId, event: &Event) -> usize {
        let now = Instant::now();
        let mut delivered = 0;
        let mut map = lock(self.watcher_shard(user));
        if let Some(watchers) = map.get_mut(&user) {
            watchers.retain(|slot| {
                let kept = slot.offer(event, now);
                delivered += usize::from(kept);
                kept
            });
            if watchers.is_empty() {
                map.remove(&user);
            }
        }
        delivered
    }

    fn unwatch(&self, id: ConnectionId, users: &[UserId]) {
        for &user in users {
            let mut map = lock(self.watcher_shard(user));
            if let Some(watchers) = map.get_mut(&user) {
                watchers.retain(|s| s.id != id);
                if watchers.is_empty() {
                    map.remove(&user);
                }
            }
        }
    }

    /// Starts recording users whose last local subscriber leaves, for a broker that must stop
    /// listening for them. The record holds each user at most once until taken.
    pub fn departures(&self) -> Departures {
        let mut departed = lock(&self.inner.departed);
        departed.get_or_insert_with(HashSet::new);
        Departures { hub: self.clone() }
    }

    fn unsubscribe(&self, user: UserId, id: ConnectionId) {
        let departed = {
            let mut map = lock(self.shard(user));
            match map.get_mut(&user) {
                Some(slots) => {
                    slots.retain(|s| s.id != id);
                    if slots.is_empty() {
                        map.remove(&user);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if departed {
            self.note_departure(user);
        }
    }

    /// Records as departed again each of `users` who has no subscriber here now: for a broker
    /// whose write for them (a heartbeat) may have crossed their departure.
    pub fn recheck_departures(&self, users: &[UserId]) {
        for &user in users {
            if !self.is_connected(user) {
                self.note_departure(user);
            }
        }
    }

    fn note_departure(&self, user: UserId) {
        if let Some(set) = lock(&self.inner.departed).as_mut() {
            set.insert(user);
            self.inner.departure.notify_one();
        }
    }
}

/// Tells a broker which users lost their last local subscriber (see [`Hub::departures`]).
pub struct Departures {
    hub: Hub,
}

impl Departures {
    /// Waits until at least one user has departed, then takes every departure recorded so far.
    /// A user in the batch may have come back since: check [`Hub::is_connected`].
    pub async fn next(&self) -> Vec<UserId> {
        self.wait().await;
        self.take()
    }

    /// Waits until at least one departure is recorded, without taking it.
    pub async fn wait(&self) {
        loop {
            let departure = self.hub.inner.departure.notified();
            if lock(&self.hub.inner.departed)
                .as_ref()
                .is_some_and(|set| !set.is_empty())
            {
                return;
            }
            departure.await;
        }
    }

    /// Takes every departure recorded so far (none: empty), without waiting.
    pub fn take(&self) -> Vec<UserId> {
        lock(&self.hub.inner.departed)
            .as_mut()
            .map(|set| set.drain().collect())
            .unwrap_or_default()
    }
}

/// One local subscriber's stream of events; unregisters itself when dropped.
pub struct Subscription {
    user: UserId,
    id: ConnectionId,
    rx: queue::Receiver<Queued>,
    /// Users whose presence this subscriber watches.
    watching: Vec<UserId>,
    hub: Hub,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("user", &self.user)
            .field("id", &self.id)
            .finish()
    }
}

impl Subscription {
    pub fn user(&self) -> UserId {
        self.user
    }

    /// This subscriber's id, to exclude it from the echo of its own sends.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The next event, or why there will be none. An evicted subscriber learns it at once:
    /// what was still queued is dropped, since it must resume from storage anyway.
    pub async fn recv(&mut self) -> Result<Event, Closed> {
        self.recv_timed().await.map(|(event, _)| event)
    }

    /// Like [`recv`](Subscription::recv), with when the hub queued the event: a transport
    /// measures from there how long delivery took.
    pub async fn recv_timed(&mut self) -> Result<(Event, Instant), Closed> {
        self.rx.recv().await.map(|q| (q.event, q.at))
    }

    /// The next event if one is queued now; `Ok(None)` when the queue is empty.
    pub fn try_recv(&mut self) -> Result<Option<Event>, Closed> {
        self.rx.try_recv().map(|queued| queued.map(|q| q.event))
    }

    /// How many users this subscriber watches for presence.
    pub fn watching(&self) -> &[UserId] {
        &self.watching
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unwatch(self.id, &self.watching);
        self.hub.unsubscribe(self.user, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(text: &'static str) -> Event {
        Event {
            seq: None,
            payload: Bytes::from_static(text.as_bytes()),
        }
    }

    #[tokio::test]
    async fn delivers_the_same_bytes_to_every_subscriber_of_the_user() {
        let hub = Hub::new(8);
        let (mut a, first_a) = hub.subscribe(1);
        let (mut b, first_b) = hub.subscribe(1);
        let (mut other, _) = hub.subscribe(2);
        assert!(first_a && !first_b);
        let e = event("hello");
        assert_eq!(hub.deliver(1, None, &e), 2);
        let got_a = a.recv().await.unwrap();
        let got_b = b.recv().await.unwrap();
        assert_eq!(got_a, e);
        // Shared, not copied: both point at the same buffer.
        assert_eq!(got_a.payload.as_ptr(), got_b.payload.as_ptr());
        assert_eq!(other.try_recv().unwrap(), None);
    }

    #[tokio::test]
    async fn excludes_the_origin_connection() {
        let hub = Hub::new(8);
        let (mut a, _) = hub.subscribe(1);
        let (mut b, _) = hub.subscribe(1);
        assert_eq!(hub.deliver(1, Some(a.id()), &event("x")), 1);
        assert_eq!(a.try_recv().unwrap(), None);
        assert_eq!(b.recv().await.unwrap(), event("x"));
    }

    #[tokio::test]
    async fn dropping_a_subscription_unregisters_it() {
        let hub = Hub::new(8);
        let departures = hub.departures();
        let (a, _) = hub.subscribe(5);
        let (b, _) = hub.subscribe(5);
        assert_eq!(hub.connections(5), 2);
        drop(a);
        assert_eq!(hub.connections(5), 1);
        drop(b);
        assert!(!hub.is_connected(5));
        assert_eq!(hub.deliver(5, None, &event("x")), 0);
        assert_eq!(departures.next().await, vec![5]);
    }

    #[test]
    fn departures_are_taken_once_and_rechecked_on_demand() {
        let hub = Hub::new(8);
        let departures = hub.departures();
        let (a, _) = hub.subscribe(5);
        let (_b, _) = hub.subscribe(6);
        assert_eq!(departures.take(), Vec::<UserId>::new());
        drop(a);
        assert_eq!(departures.take(), vec![5]);
        assert_eq!(departures.take(), Vec::<UserId>::new(), "taken once");
        // A heartbeat that renewed 5 and 6: only 5, gone, is a departure again.
        hub.recheck_departures(&[5, 6]);
        assert_eq!(departures.take(), vec![5]);
    }

    #[tokio::test]
    async fn a_full_queue_evicts_the_slow_subscriber_without_blocking_the_sender() {
        let hub = Hub::new(2);
        let (mut slow, _) = hub.subscribe(1);
        let (mut fast, _) = hub.subscribe(1);
        for i in 0..2 {
            assert_eq!(hub.deliver(1, None, &event("e")), 2, "event {i}");
            fast.recv().await.unwrap();
        }
        // The slow one's queue is full: the third event evicts it, the fast one still gets it.
        assert_eq!(hub.deliver(1, None, &event("e")), 1);
        assert_eq!(hub.connections(1), 1);
        fast.recv().await.unwrap();
        // The evicted one learns it at once, without reading what was queued.
        assert_eq!(slow.recv().await, Err(Closed::SlowConsumer));
    }

    #[tokio::test]
    async fn close_all_ends_streams_with_shutdown() {
        let hub = Hub::new(2);
        let (mut a, _) = hub.subscribe(1);
        hub.close_all();
        assert_eq!(a.recv().await, Err(Closed::Shutdown));
    }

    #[tokio::test]
    async fn presence_goes_to_watching_connections_only_until_they_drop() {
        let hub = Hub::new(4);
        let (mut watcher, _) = hub.subscribe(1);
        let (mut other, _) = hub.subscribe(1);
        assert_eq!(hub.watch(&mut watcher, &[7, 8, 7]).unwrap(), vec![7, 8]);
        assert_eq!(hub.watch(&mut watcher, &[8]).unwrap(), Vec::<UserId>::new());
        assert_eq!(hub.deliver_presence(7, &event("seven")), 1);
        assert_eq!(watcher.recv().await.unwrap(), event("seven"));
        assert_eq!(other.try_recv().unwrap(), None);
        drop(watcher);
        assert_eq!(hub.deliver_presence(7, &event("seven")), 0);
    }

    #[tokio::test]
    async fn a_full_queue_evicts_through_presence_too() {
        let hub = Hub::new(1);
        let (mut watcher, _) = hub.subscribe(1);
        hub.watch(&mut watcher, &[2]).unwrap();
        assert_eq!(hub.deliver_presence(2, &event("a")), 1);
        assert_eq!(hub.deliver_presence(2, &event("b")), 0);
        // Evicted although the user registry still holds a handle to its queue.
        assert_eq!(watcher.recv().await, Err(Closed::SlowConsumer));
    }

    #[test]
    fn watching_more_than_the_limit_is_refused_whole() {
        let hub = Hub::new(1);
        let (mut watcher, _) = hub.subscribe(1);
        let first: Vec<UserId> = (2..2 + MAX_WATCHED as UserId - 1).collect();
        assert_eq!(
            hub.watch(&mut watcher, &first).unwrap().len(),
            MAX_WATCHED - 1
        );
        // Already watched ones and repeats do not count twice: this makes exactly the limit.
        let last = 2 + MAX_WATCHED as UserId;
        assert_eq!(
            hub.watch(&mut watcher, &[2, last, last]).unwrap(),
            vec![last]
        );
        assert!(matches!(
            hub.watch(&mut watcher, &[2, last + 1]),
            Err(Error::WatchLimit { max: MAX_WATCHED })
        ));
        assert_eq!(watcher.watching().len(), MAX_WATCHED);
        assert_eq!(hub.deliver_presence(last + 1, &event("x")), 0);
    }

    #[test]
    fn connection_ids_are_unique() {
        let hub = Hub::new(1);
        let subs: Vec<_> = (0..100).map(|_| hub.subscribe(1).0).collect();
        let ids: HashSet<_> = subs.iter().map(|s| s.id()).collect();
        assert_eq!(ids.len(), 100);
        assert_eq!(hub.connected_users(), vec![1]);
    }
}
