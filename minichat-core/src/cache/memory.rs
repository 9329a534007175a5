//! The in-process recent-messages cache.

use super::{RecentCache, CACHE_CAPACITY, CACHE_TTL};
use crate::error::Result;
use crate::model::{Message, UserId};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Entry {
    expires: Instant,
    /// Newest first, at most `CACHE_CAPACITY`: the receiver's frames, shared, not copied.
    frames: VecDeque<Bytes>,
}

/// A capped list per receiver in a map; expired lists are dropped when touched and swept
/// every so often, so the map holds at most the receivers active within the last TTL.
pub struct MemoryCache {
    ttl: Duration,
    inner: Mutex<(HashMap<UserId, Entry>, Instant)>,
}

impl Default for MemoryCache {
    fn default() -> Self {
        MemoryCache::with_ttl(CACHE_TTL)
    }
}

impl MemoryCache {
    pub fn with_ttl(ttl: Duration) -> Self {
        MemoryCache {
            ttl,
            inner: Mutex::new((HashMap::new(), Instant::now())),
        }
    }
}

#[async_trait]
impl RecentCache for MemoryCache {
    async fn push(&self, receiver: UserId, frame: &Bytes) -> Result<()> {
        let now = Instant::now();
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, last_sweep) = &mut *guard;
        if now.duration_since(*last_sweep) > self.ttl / 24 {
            map.retain(|_, e| e.expires > now);
            *last_sweep = now;
        }
        let entry = map.entry(receiver).or_insert_with(|| Entry {
            expires: now,
            frames: VecDeque::with_capacity(8),
        });
        if entry.expires <= now {
            entry.frames.clear();
        }
        entry.expires = now + self.ttl;
        entry.frames.push_front(frame.clone());
        entry.frames.truncate(CACHE_CAPACITY);
        Ok(())
    }

    async fn recent(&self, receiver: UserId, limit: usize) -> Result<Option<Vec<Message>>> {
        let now = Instant::now();
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = guard.0.get(&receiver).filter(|e| e.expires > now) else {
            return Ok(None);
        };
        // Frames were serialised from messages by this process: they always decode.
        Ok(Some(
            entry
                .frames
                .iter()
                .take(limit)
                .filter_map(|f| serde_json::from_slice::<Message>(f).ok())
                .collect(),
        ))
    }

    fn kind(&self) -> crate::BackendKind {
        crate::BackendKind::Memory
    }

    async fn check(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{now, MessageType};

    fn message(id: i64, receiver: UserId) -> Message {
        Message {
            id,
            conversation_id: 1,
            sender_id: 99,
            sender_username: "sender".into(),
            receiver_id: Some(receiver),
            content: format!("m{id}"),
            timestamp: now(),
            kind: MessageType::Message,
        }
    }

    fn frame(id: i64, receiver: UserId) -> Bytes {
        crate::event::message_event(&message(id, receiver), id).payload
    }

    #[tokio::test]
    async fn keeps_the_newest_hundred_newest_first() {
        let cache = MemoryCache::default();
        assert_eq!(cache.recent(1, 50).await.unwrap(), None);
        for id in 1..=150 {
            cache.push(1, &frame(id, 1)).await.unwrap();
        }
        cache.push(2, &frame(151, 2)).await.unwrap();
        let all = cache.recent(1, 1000).await.unwrap().unwrap();
        assert_eq!(all.len(), CACHE_CAPACITY);
        assert_eq!(all[0].id, 150);
        assert_eq!(all[99].id, 51);
        assert_eq!(cache.recent(1, 50).await.unwrap().unwrap().len(), 50);
    }

    #[tokio::test]
    async fn lists_expire() {
        let cache = MemoryCache::with_ttl(Duration::from_millis(1));
        cache.push(1, &frame(1, 1)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.recent(1, 50).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "entry never expired");
            tokio::task::yield_now().await;
        }
    }
}
