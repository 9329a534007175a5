//! One subscriber's bounded event queue, sized for sockets that are idle most of the time.
//!
//! A tokio `mpsc::channel` allocates its first block of 32 slots and its cache-padded channel
//! state up front: ~2.6 KB per subscriber before a single event, most of an idle socket's cost.
//! This queue is one small allocation (the shared [`Queue`]) whose `VecDeque` takes memory only
//! once an event arrives: a socket that never got one holds no buffer, one that did keeps the
//! smallest (4 slots, 256 B) so steady traffic does not allocate per event, and a larger buffer
//! left by a burst is given back as soon as the reader drains it. The bound is enforced on every push: a push into a full queue evicts the
//! subscriber (the hub's slow-consumer rule) instead of growing it.
//!
//! Senders ([`Sender`], one per place the hub keeps the subscriber: its user's list and each
//! presence watch) are counted, so that the reader learns the queue was closed (the hub shut
//! down) when the last one is dropped, as with a channel.

use super::Closed;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// Slots a drained queue keeps (the `VecDeque`'s smallest allocation, 4 slots for the hub's
/// ~64-byte items): a queue that has held at most this many keeps its buffer for the next
/// event; a larger one is freed once drained.
const KEEP_SLOTS: usize = 4;

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pushed {
    Queued,
    /// The queue was full: the subscriber is evicted from now on.
    Evicted,
    /// The subscriber was evicted earlier, or its reader is gone.
    Gone,
}

struct State<T> {
    items: VecDeque<T>,
    evicted: bool,
    /// The reader dropped its end.
    reader_gone: bool,
}

struct Queue<T> {
    state: Mutex<State<T>>,
    /// Wakes the reader: an item, an eviction or the last sender's drop.
    wake: Notify,
    senders: AtomicUsize,
    capacity: usize,
}

impl<T> Queue<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every update is a single push, pop or flag: a panic cannot leave it half done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A queue of at most `capacity` (at least 1) items: its one sender and its reader.
pub(super) fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let queue = Arc::new(Queue {
        state: Mutex::new(State {
            items: VecDeque::new(),
            evicted: false,
            reader_gone: false,
        }),
        wake: Notify::new(),
        senders: AtomicUsize::new(1),
        capacity: capacity.max(1),
    });
    (
        Sender {
            queue: queue.clone(),
        },
        Receiver { queue },
    )
}

/// The hub's end of a queue; clones count as further senders.
pub(super) struct Sender<T> {
    queue: Arc<Queue<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.queue.senders.fetch_add(1, Ordering::Relaxed);
        Sender {
            queue: self.queue.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.queue.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last one: the reader sees the queue closed once it is empty.
            self.queue.wake.notify_one();
        }
    }
}

impl<T> Sender<T> {
    /// Queues `item` without waiting. A full queue evicts its subscriber instead.
    pub(super) fn push(&self, item: T) -> Pushed {
        let pushed = {
            let mut state = self.queue.lock();
            if state.evicted || state.reader_gone {
                return Pushed::Gone;
            }
            if state.items.len() >= self.queue.capacity {
                state.evicted = true;
                // What it held is never read: give the memory back now.
                state.items = VecDeque::new();
                Pushed::Evicted
            } else {
                state.items.push_back(item);
                Pushed::Queued
            }
        };
        self.queue.wake.notify_one();
        pushed
    }
}

/// The subscriber's end of a queue.
pub(super) struct Receiver<T> {
    queue: Arc<Queue<T>>,
}

impl<T> Receiver<T> {
    /// The next item if there is one now; `Ok(None)` when the queue is empty and open.
    pub(super) fn try_recv(&self) -> Result<Option<T>, Closed> {
        let mut state = self.queue.lock();
        if state.evicted {
            return Err(Closed::SlowConsumer);
        }
        match state.items.pop_front() {
            Some(item) => {
                if state.items.is_empty() && state.items.capacity() > KEEP_SLOTS {
                    // Drained after a burst: give the big buffer back. The smallest buffer is
                    // kept, so that events arriving one at a time (the usual case) do not
                    // allocate and free a buffer each.
                    state.items = VecDeque::new();
                }
                Ok(Some(item))
            }
            None if self.queue.senders.load(Ordering::Acquire) == 0 => Err(Closed::Shutdown),
            None => Ok(None),
        }
    }

    /// Waits for the next item. An evicted subscriber learns it at once, without reading what
    /// was queued. Cancel-safe: an item is taken only when this returns it.
    pub(super) async fn recv(&self) -> Result<T, Closed> {
        loop {
            // Registered before looking, so a push between the look and the wait still wakes
            // it (`notify_one` also keeps a wake-up for a reader not waiting yet).
            let woken = self.queue.wake.notified();
            if let Some(item) = self.try_recv()? {
                return Ok(item);
            }
            woken.await;
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        state.reader_gone = true;
        state.items = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_no_buffer_when_empty_and_gives_it_back_when_drained() {
        let (tx, rx) = bounded::<u64>(8);
        assert_eq!(tx.queue.lock().items.capacity(), 0);
        for i in 0..5 {
            assert_eq!(tx.push(i), Pushed::Queued);
        }
        assert!(tx.queue.lock().items.capacity() >= 5);
        for i in 0..5 {
            assert_eq!(rx.try_recv(), Ok(Some(i)));
        }
        assert_eq!(tx.queue.lock().items.capacity(), 0);
        assert_eq!(rx.try_recv(), Ok(None));
    }

    #[test]
    fn events_one_at_a_time_reuse_the_smallest_buffer() {
        let (tx, rx) = bounded::<u64>(8);
        assert_eq!(tx.push(1), Pushed::Queued);
        let first = tx.queue.lock().items.capacity();
        assert!((1..=KEEP_SLOTS).contains(&first), "capacity {first}");
        for i in 2..100 {
            assert_eq!(rx.try_recv(), Ok(Some(i - 1)));
            assert_eq!(tx.queue.lock().items.capacity(), first, "kept, not freed");
            assert_eq!(tx.push(i), Pushed::Queued);
        }
    }

    #[test]
    fn the_bound_holds_and_a_push_past_it_evicts() {
        let (tx, rx) = bounded::<u64>(2);
        assert_eq!(tx.push(1), Pushed::Queued);
        assert_eq!(tx.push(2), Pushed::Queued);
        assert_eq!(tx.push(3), Pushed::Evicted);
        assert_eq!(tx.queue.lock().items.len(), 0, "dropped, not grown");
        assert_eq!(tx.push(4), Pushed::Gone);
        assert_eq!(rx.try_recv(), Err(Closed::SlowConsumer));
    }

    #[tokio::test]
    async fn the_last_sender_closes_it_after_what_was_queued() {
        let (tx, rx) = bounded::<u64>(4);
        let other = tx.clone();
        assert_eq!(tx.push(1), Pushed::Queued);
        drop(tx);
        assert_eq!(rx.try_recv(), Ok(Some(1)));
        assert_eq!(rx.try_recv(), Ok(None), "one sender left");
        let waiting = tokio::spawn(async move { rx.recv().await });
        drop(other);
        assert_eq!(waiting.await.ok(), Some(Err(Closed::Shutdown)));
    }

    #[tokio::test]
    async fn a_waiting_reader_is_woken_by_a_push() {
        let (tx, rx) = bounded::<u64>(4);
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        assert_eq!(tx.push(7), Pushed::Queued);
        assert_eq!(waiting.await.ok(), Some(Ok(7)));
    }

    #[test]
    fn a_gone_reader_refuses_pushes() {
        let (tx, rx) = bounded::<u64>(4);
        drop(rx);
        assert_eq!(tx.push(1), Pushed::Gone);
    }
}
