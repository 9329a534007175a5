//! The wire envelope of the Redis broker: how one delivery travels on a pub/sub channel.
//!
//! This file exists so that the byte layout every node must agree on is written down, encoded
//! and decoded in one place, with its tests beside it. What travels on a channel is a fixed
//! 18-byte binary header followed by the event's JSON payload, exactly as the hub hands it to
//! connections:
//!
//! ```text
//! offset  size  field
//!      0     1  version, 1
//!      1     1  flags: bit 0 = an excluded connection is set, bit 1 = a seq is set
//!                      (other bits are reserved and must be 0)
//!      2     8  excluded connection id, u64 big-endian (0 when bit 0 is clear)
//!     10     8  seq, i64 big-endian (0 when bit 1 is clear)
//!     18     …  the payload: the event's JSON, untouched
//! ```
//!
//! A receiving node takes the message bytes Redis handed it, wraps them in [`Bytes`] without
//! copying, reads the header and delivers `payload.slice(18..)` to its hub: no copy and no JSON
//! parsing per node, whatever the number of connections. (Publishing writes header and payload
//! straight into the command buffer.) An envelope of another version, with reserved flags set or
//! shorter than the header is refused by [`decode`], and the caller drops it with a warning.

use crate::hub::{ConnectionId, Event};
use bytes::{Buf, BufMut, Bytes};
use redis::{RedisWrite, ToRedisArgs};

const VERSION: u8 = 1;
const HEADER: usize = 18;
const HAS_EXCLUDE: u8 = 0b01;
const HAS_SEQ: u8 = 0b10;

/// One delivery as a single `PUBLISH` argument, written straight into the command buffer.
pub(super) struct Envelope<'a> {
    pub(super) exclude: Option<ConnectionId>,
    pub(super) event: &'a Event,
}

impl ToRedisArgs for Envelope<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + RedisWrite,
    {
        let mut flags = 0;
        if self.exclude.is_some() {
            flags |= HAS_EXCLUDE;
        }
        if self.event.seq.is_some() {
            flags |= HAS_SEQ;
        }
        let mut buf = out.bufmut_for_next_arg(HEADER + self.event.payload.len());
        buf.put_u8(VERSION);
        buf.put_u8(flags);
        buf.put_u64(self.exclude.unwrap_or(0));
        buf.put_i64(self.event.seq.unwrap_or(0));
        buf.put_slice(&self.event.payload);
    }
}

/// Reads an envelope; the event's payload shares `raw`'s buffer.
pub(super) fn decode(raw: Bytes) -> Result<(Option<ConnectionId>, Event), &'static str> {
    if raw.len() < HEADER {
        return Err("shorter than the envelope header");
    }
    let mut header = &raw[..HEADER];
    if header.get_u8() != VERSION {
        return Err("unknown envelope version");
    }
    let flags = header.get_u8();
    if flags & !(HAS_EXCLUDE | HAS_SEQ) != 0 {
        return Err("reserved envelope flags set");
    }
    let exclude = header.get_u64();
    let seq = header.get_i64();
    let event = Event {
        seq: (flags & HAS_SEQ != 0).then_some(seq),
        payload: raw.slice(HEADER..),
    };
    Ok(((flags & HAS_EXCLUDE != 0).then_some(exclude), event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(exclude: Option<ConnectionId>, event: &Event) -> Vec<u8> {
        let mut args = Envelope { exclude, event }.to_redis_args();
        assert_eq!(args.len(), 1);
        args.remove(0)
    }

    #[test]
    fn envelope_round_trips_without_copying_the_payload() {
        for (exclude, seq) in [
            (None, None),
            (Some(0xdead_beef_0000_0001), Some(42)),
            (Some(0), Some(-1)),
        ] {
            let event = Event {
                seq,
                payload: Bytes::from_static(br#"{"type":"message"}"#),
            };
            let raw = Bytes::from(encode(exclude, &event));
            assert_eq!(raw.len(), HEADER + event.payload.len());
            assert_eq!(raw[0], VERSION);
            let (got_exclude, got) = decode(raw.clone()).unwrap();
            assert_eq!(got_exclude, exclude);
            assert_eq!(got, event);
            // The payload is a view into the received buffer.
            assert_eq!(got.payload.as_ptr(), raw[HEADER..].as_ptr());
        }
    }

    #[test]
    fn bad_envelopes_are_rejected() {
        let event = Event {
            seq: None,
            payload: Bytes::from_static(b"{}"),
        };
        let good = encode(None, &event);
        assert!(decode(Bytes::from(good[..HEADER - 1].to_vec())).is_err());
        let mut other_version = good.clone();
        other_version[0] = 2;
        assert!(decode(Bytes::from(other_version)).is_err());
        let mut reserved = good;
        reserved[1] = 0b100;
        assert!(decode(Bytes::from(reserved)).is_err());
    }
}
