//! Limits that keep one client from hurting the rest: a per-user send rate (token bucket) and
//! caps on WebSocket connections per user and per node.
//!
//! The body-size, message-size and timeout limits are enforced where the bytes are read
//! (`extract.rs`, `ws.rs`, `server.rs`); this file holds the ones that need shared counters.
//! Every refusal is counted in `minichat_rate_limited_total{limit}`.

use crate::config::Limits;
use crate::error::ApiError;
use crate::telemetry;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use minichat_core::UserId;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How often (in checks) idle rate-limit buckets are forgotten, so the map stays small.
const SWEEP_EVERY: u64 = 4096;

/// The shared counters behind the limits.
pub struct Guards {
    sends: DefaultKeyedRateLimiter<UserId>,
    /// Typing, read receipts and presence watches: each fans out, or writes, or looks up, so a
    /// flood of them must not reach other users (a flooded receiver's queue would fill).
    signals: DefaultKeyedRateLimiter<UserId>,
    clock: DefaultClock,
    checks: AtomicU64,
    sockets: Arc<Mutex<SocketCounts>>,
    max_sockets_per_user: usize,
    max_sockets: usize,
}

#[derive(Default)]
struct SocketCounts {
    total: usize,
    per_user: HashMap<UserId, usize>,
}

impl Guards {
    pub fn new(limits: &Limits) -> Guards {
        let quota = |rate: u32, burst: u32| {
            let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            Quota::per_second(rate).allow_burst(burst)
        };
        Guards {
            sends: RateLimiter::keyed(quota(limits.send_rate_per_sec, limits.send_burst)),
            signals: RateLimiter::keyed(quota(limits.signal_rate_per_sec, limits.signal_burst)),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
            sockets: Arc::new(Mutex::new(SocketCounts::default())),
            max_sockets_per_user: limits.max_sockets_per_user,
            max_sockets: limits.max_sockets,
        }
    }

    /// Takes one send from `user`'s bucket, or says when to retry (429).
    pub fn check_send(&self, user: UserId) -> Result<(), ApiError> {
        self.check(&self.sends, user, "send", "Too many messages: slow down")
    }

    /// Takes one typing, read or watch frame from `user`'s bucket, or says when to retry.
    pub fn check_signal(&self, user: UserId) -> Result<(), ApiError> {
        self.check(
            &self.signals,
            user,
            "signal",
            "Too many typing, read or watch frames: slow down",
        )
    }

    fn check(
        &self,
        bucket: &DefaultKeyedRateLimiter<UserId>,
        user: UserId,
        limit: &'static str,
        detail: &'static str,
    ) -> Result<(), ApiError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sends.retain_recent();
            self.signals.retain_recent();
        }
        bucket.check_key(&user).map_err(|not_until| {
            telemetry::rate_limited(limit);
            let wait = not_until.wait_time_from(self.clock.now());
            ApiError::TooManyRequests {
                detail,
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        })
    }

    /// Reserves a WebSocket slot for `user`, released when the permit is dropped.
    pub fn open_socket(&self, user: UserId) -> Result<SocketPermit, ApiError> {
        let mut counts = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        if counts.total >= self.max_sockets {
            telemetry::rate_limited("node_sockets");
            return Err(ApiError::Unavailable(
                "Too many connections on this server; try another node or later",
            ));
        }
        let mine = counts.per_user.entry(user).or_insert(0);
        if *mine >= self.max_sockets_per_user {
            telemetry::rate_limited("user_sockets");
            return Err(ApiError::TooManyRequests {
                detail: "Too many connections for this user",
                retry_after_secs: 1,
            });
        }
        *mine += 1;
        counts.total += 1;
        Ok(SocketPermit {
            user,
            counts: self.sockets.clone(),
        })
    }
}

/// One open WebSocket's place in the counts.
pub struct SocketPermit {
    user: UserId,
    counts: Arc<Mutex<SocketCounts>>,
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                counts.per_user.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32, per_user: usize, total: usize) -> Limits {
        Limits {
            send_rate_per_sec: rate,
            send_burst: burst,
            max_sockets_per_user: per_user,
            max_sockets: total,
            ..Limits::default()
        }
    }

    #[test]
    fn sends_beyond_the_burst_are_refused_with_a_retry_time() {
        let guards = Guards::new(&limits(1, 3, 1, 1));
        for _ in 0..3 {
            guards.check_send(1).unwrap();
        }
        match guards.check_send(1) {
            Err(ApiError::TooManyRequests {
                retry_after_secs, ..
            }) => assert!(retry_after_secs >= 1),
            other => panic!("expected 429, got {other:?}"),
        }
        // Another user has their own bucket.
        guards.check_send(2).unwrap();
    }

    #[test]
    fn socket_caps_per_user_and_per_node() {
        let guards = Guards::new(&limits(1, 1, 2, 3));
        let a1 = guards.open_socket(1).unwrap();
        let _a2 = guards.open_socket(1).unwrap();
        assert!(matches!(
            guards.open_socket(1),
            Err(ApiError::TooManyRequests { .. })
        ));
        let _b1 = guards.open_socket(2).unwrap();
        assert!(matches!(
            guards.open_socket(3),
            Err(ApiError::Unavailable(_))
        ));
        drop(a1);
        let _c1 = guards.open_socket(3).unwrap();
    }
}
