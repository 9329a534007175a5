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
//!
//! # The members envelope
//!
//! A group's copies of one event travel to every node at once on the fan-out channel (see the
//! broker's "Group fan-out"), as one members envelope: the list of `(user, seq)` it is for and
//! the head its frames share (see [`Frames`]), each once:
//!
//! ```text
//! offset  size  field
//!      0     1  version, 2
//!      1     1  flags, reserved: 0
//!      2     4  n, the number of members, u32 big-endian
//!      6   16n  n × (user id i64, seq i64), big-endian
//! 6+16n     …  the frames' head: the event's JSON without its closing brace
//! ```
//!
//! A receiving node makes the frame of each member connected to it from the head (the head
//! plus that member's seq) and hands nothing to anyone else.

use crate::event::Frames;
use crate::hub::{ConnectionId, Event};
use crate::model::{Seq, UserId};
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

const MEMBERS_VERSION: u8 = 2;
const MEMBERS_HEADER: usize = 6;
/// One member's entry: user id and seq.
const ENTRY: usize = 16;

/// A group's copies of one event as a single `PUBLISH` argument, written straight into the
/// command buffer.
pub(super) struct MembersEnvelope<'a> {
    pub(super) members: &'a [(UserId, Seq)],
    pub(super) frames: &'a Frames,
}

impl ToRedisArgs for MembersEnvelope<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + RedisWrite,
    {
        let head = self.frames.head();
        let count = u32::try_from(self.members.len()).expect("a group has fewer than 2^32 members");
        let mut buf =
            out.bufmut_for_next_arg(MEMBERS_HEADER + ENTRY * self.members.len() + head.len());
        buf.put_u8(MEMBERS_VERSION);
        buf.put_u8(0);
        buf.put_u32(count);
        for &(user, seq) in self.members {
            buf.put_i64(user);
            buf.put_i64(seq);
        }
        buf.put_slice(head);
    }
}

/// A decoded members envelope: who it is for, and the frames to make their copies from (whose
/// head shares the received buffer).
#[derive(Debug)]
pub(super) struct Members {
    entries: Bytes,
    pub(super) frames: Frames,
}

impl Members {
    /// Each member and the seq the event has in their stream.
    pub(super) fn iter(&self) -> impl Iterator<Item = (UserId, Seq)> + '_ {
        self.entries.chunks_exact(ENTRY).map(|mut entry| {
            let user = entry.get_i64();
            (user, entry.get_i64())
        })
    }
}

/// Reads a members envelope; its entries and head share `raw`'s buffer.
pub(super) fn decode_members(raw: Bytes) -> Result<Members, &'static str> {
    if raw.len() < MEMBERS_HEADER {
        return Err("shorter than the members envelope header");
    }
    let mut header = &raw[..MEMBERS_HEADER];
    if header.get_u8() != MEMBERS_VERSION {
        return Err("unknown members envelope version");
    }
    if header.get_u8() != 0 {
        return Err("reserved members envelope flags set");
    }
    let count = header.get_u32() as usize;
    let end = count
        .checked_mul(ENTRY)
        .and_then(|n| n.checked_add(MEMBERS_HEADER))
        .filter(|&end| end <= raw.len())
        .ok_or("members envelope shorter than its member list")?;
    Ok(Members {
        entries: raw.slice(MEMBERS_HEADER..end),
        frames: Frames::from_head(raw.slice(end..)),
    })
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
    fn members_envelope_round_trips_and_makes_each_members_frame() {
        let frames = Frames::from_head(Bytes::from_static(br#"{"type":"message","id":7"#));
        let members = [(3, 10), (9, 1), (i64::MAX, i64::MAX)];
        let mut args = MembersEnvelope {
            members: &members,
            frames: &frames,
        }
        .to_redis_args();
        assert_eq!(args.len(), 1);
        let raw = Bytes::from(args.remove(0));
        let got = decode_members(raw.clone()).unwrap();
        assert_eq!(got.iter().collect::<Vec<_>>(), members);
        // The head is a view into the received buffer, and frames made from it are the sender's.
        assert_eq!(
            got.frames.head().as_ptr(),
            raw[raw.len() - frames.head().len()..].as_ptr()
        );
        assert_eq!(got.frames.event(10), frames.event(10));
        assert_eq!(
            &got.frames.event(10).payload[..],
            br#"{"type":"message","id":7,"seq":10}"#
        );

        let none = MembersEnvelope {
            members: &[],
            frames: &frames,
        }
        .to_redis_args();
        assert_eq!(
            decode_members(Bytes::from(none[0].clone()))
                .unwrap()
                .iter()
                .count(),
            0
        );
    }

    #[test]
    fn bad_members_envelopes_are_rejected() {
        let frames = Frames::from_head(Bytes::from_static(b"{"));
        let good = MembersEnvelope {
            members: &[(1, 2), (3, 4)],
            frames: &frames,
        }
        .to_redis_args()
        .remove(0);
        assert!(decode_members(Bytes::from(good[..MEMBERS_HEADER - 1].to_vec())).is_err());
        // A member list longer than the bytes that follow.
        assert!(decode_members(Bytes::from(good[..MEMBERS_HEADER + ENTRY].to_vec())).is_err());
        let mut huge = good.clone();
        huge[2..6].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_members(Bytes::from(huge)).is_err());
        let mut other_version = good.clone();
        other_version[0] = 1;
        assert!(decode_members(Bytes::from(other_version)).is_err());
        let mut reserved = good;
        reserved[1] = 1;
        assert!(decode_members(Bytes::from(reserved)).is_err());
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
