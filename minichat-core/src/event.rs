//! Events: what a connected user receives, serialised once per target user.
//!
//! An event is encoded to JSON here, once, and the resulting [`Event`](crate::hub::Event) bytes
//! travel through the broker and the hub untouched to every connection of that user.

use crate::hub::Event;
use crate::model::{Message, Seq};
use bytes::Bytes;
use serde::Serialize;

/// A message as a connected user receives it: the message, plus its seq in that user's stream.
#[derive(Debug, Serialize)]
pub struct MessageFrame<'a> {
    #[serde(flatten)]
    pub message: &'a Message,
    pub seq: Seq,
}

/// Serialises the frame of `message` for the user whose stream gives it `seq`.
pub fn message_event(message: &Message, seq: Seq) -> Event {
    let json = serde_json::to_vec(&MessageFrame { message, seq })
        .expect("a message always serialises to JSON");
    Event {
        seq: Some(seq),
        payload: Bytes::from(json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{now, MessageType};

    #[test]
    fn message_frame_is_the_message_plus_seq() {
        let m = Message {
            id: 7,
            sender_id: 1,
            sender_username: "alice".into(),
            receiver_id: 2,
            content: "hi \"there\"".into(),
            timestamp: now(),
            kind: MessageType::Message,
        };
        let e = message_event(&m, 3);
        assert_eq!(e.seq, Some(3));
        let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["id"], 7);
        assert_eq!(v["content"], "hi \"there\"");
        assert_eq!(v["sender_username"], "alice");
    }
}
