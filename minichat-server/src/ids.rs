//! Request and socket ids as logs and `x-request-id` show them: unique across nodes and
//! restarts, so a log search over every node finds one request, or one socket, and nothing else.
//!
//! An id is a node prefix and a counter, in hex: `3f9a1c0e-000001a4`. Each server picks a random
//! 32-bit prefix when it is built ([`RequestIds::new`]) and counts its requests after it, so two
//! nodes, or one node before and after a restart, share ids only if they drew the same prefix
//! (about one chance in 4 billion per pair). Socket ids are the core's
//! [`ConnectionId`](minichat_core::ConnectionId)s, which have the same shape (a random 32-bit
//! prefix per hub, then a 32-bit counter), and are rendered the same way by [`Id::connection`].

use minichat_core::ConnectionId;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Hands out this server's request ids.
pub struct RequestIds {
    node: u32,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds::new()
    }
}

impl RequestIds {
    /// A new series, under a random node prefix.
    pub fn new() -> RequestIds {
        RequestIds {
            node: rand::random(),
            next: AtomicU64::new(1),
        }
    }

    /// The next request's id.
    pub fn next(&self) -> Id {
        Id {
            node: self.node,
            n: self.next.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// One request's or socket's id; `Display` is its one rendering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Id {
    node: u32,
    n: u64,
}

impl Id {
    /// A socket's id, from the hub's connection id (its prefix in the high 32 bits).
    pub fn connection(id: ConnectionId) -> Id {
        Id {
            node: (id >> 32) as u32,
            n: id & 0xffff_ffff,
        }
    }
}

impl fmt::Display for Id {
    /// Eight hex digits of prefix, a dash, at least eight of counter.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}-{:08x}", self.node, self.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_prefix_and_counter_in_hex() {
        let ids = RequestIds {
            node: 0x3f9a_1c0e,
            next: AtomicU64::new(0x1a4),
        };
        assert_eq!(ids.next().to_string(), "3f9a1c0e-000001a4");
        assert_eq!(ids.next().to_string(), "3f9a1c0e-000001a5");
        let wide = RequestIds {
            node: 7,
            next: AtomicU64::new(1 << 36),
        };
        assert_eq!(wide.next().to_string(), "00000007-1000000000");
    }

    #[test]
    fn two_series_never_share_an_id() {
        let (a, b) = (RequestIds::new(), RequestIds::new());
        assert_ne!(a.node, b.node, "two random prefixes (1 in 2^32 to fail)");
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(a.next()));
            assert!(seen.insert(b.next()));
        }
    }

    #[test]
    fn socket_ids_read_like_request_ids() {
        let id = Id::connection(0xdead_beef_0000_002a);
        assert_eq!(id.to_string(), "deadbeef-0000002a");
    }
}
