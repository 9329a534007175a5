//! The in-process recent-messages cache.

use super::{RecentCache, CACHE_CAPACITY, CACHE_TTL};
use crate::error::Result;
use crate::model::{Message, UserId};
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Entry {
    expires: Instant,
    /// Newest first, at most `CACHE_CAPACITY`.
    messages: VecDeque<Message>,
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
    async fn push(&self, message: &Message) -> Result<()> {
        let now = Instant::now();
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, last_sweep) = &mut *guard;
        if now.duration_since(*last_sweep) > self.ttl / 24 {
            map.retain(|_, e| e.expires > now);
            *last_sweep = now;
        }
        let entry = map.entry(message.receiver_id).or_insert_with(|| Entry {
            expires: now,
            messages: VecDeque::with_capacity(8),
        });
        if entry.expires <= now {
            entry.messages.clear();
        }
        entry.expires = now + self.ttl;
        entry.messages.push_front(message.clone());
        entry.messages.truncate(CACHE_CAPACITY);
        Ok(())
    }

    async fn recent(&self, receiver: UserId, limit: usize) -> Result<Option<Vec<Message>>> {
        let now = Instant::now();
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok(guard
            .0
            .get(&receiver)
            .filter(|e| e.expires > now)
            .map(|e| e.messages.iter().take(limit).cloned().collect()))
    }

    fn kind(&self) -> &'static str {
        "memory"
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
            sender_id: 99,
            sender_username: "sender".into(),
            receiver_id: receiver,
            content: format!("m{id}"),
            timestamp: now(),
            kind: MessageType::Message,
        }
    }

    #[tokio::test]
    async fn keeps_the_newest_hundred_newest_first() {
        let cache = MemoryCache::default();
        assert_eq!(cache.recent(1, 50).await.unwrap(), None);
        for id in 1..=150 {
            cache.push(&message(id, 1)).await.unwrap();
        }
        cache.push(&message(151, 2)).await.unwrap();
        let all = cache.recent(1, 1000).await.unwrap().unwrap();
        assert_eq!(all.len(), CACHE_CAPACITY);
        assert_eq!(all[0].id, 150);
        assert_eq!(all[99].id, 51);
        assert_eq!(cache.recent(1, 50).await.unwrap().unwrap().len(), 50);
    }

    #[tokio::test]
    async fn lists_expire() {
        let cache = MemoryCache::with_ttl(Duration::from_millis(1));
        cache.push(&message(1, 1)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.recent(1, 50).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "entry never expired");
            tokio::task::yield_now().await;
        }
    }
}
