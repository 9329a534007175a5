//! Events: what a connected user receives, serialised once per target user.
//!
//! An event is encoded to JSON here, once, and the resulting [`Event`] bytes
//! travel through the broker and the hub untouched to every connection of that user.

use crate::hub::Event;
use crate::model::{Message, MessageId, Seq, UserId};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// A message as a connected user receives it: the message, plus its seq in that user's stream,
/// plus, on the sender's own copy only, the `client_id` the sender gave it (absent when none),
/// so the sender's clients can match it to their pending send exactly.
#[derive(Debug, Serialize)]
pub struct MessageFrame<'a> {
    #[serde(flatten)]
    pub message: &'a Message,
    pub seq: Seq,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<&'a str>,
}

/// Serialises the frame of `message` for the user whose stream gives it `seq`, without a
/// `client_id`: the receiver's copy (and the sender's, when the send had no client id).
pub fn message_event(message: &Message, seq: Seq) -> Event {
    own_message_event(message, seq, None)
}

/// Serialises the sender's own copy of `message` (`seq` in the sender's stream), carrying the
/// `client_id` the send had. Never use it for the receiver's copy.
pub fn own_message_event(message: &Message, seq: Seq, client_id: Option<&str>) -> Event {
    let frame = MessageFrame {
        message,
        seq,
        client_id,
    };
    let json = serde_json::to_vec(&frame).expect("a message always serialises to JSON");
    Event {
        seq: Some(seq),
        payload: Bytes::from(json),
    }
}

fn encode(value: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("an event always serialises to JSON"))
}

/// `{"type": "typing", "sender_id"}`: `sender` is typing to the recipient (not stored).
pub fn typing_event(sender: UserId) -> Event {
    Event {
        seq: None,
        payload: encode(&serde_json::json!({"type": "typing", "sender_id": sender})),
    }
}

/// `{"type": "read", "reader_id", "up_to"}`: `reader` has read the recipient's messages up to
/// `up_to`.
pub fn read_event(reader: UserId, up_to: MessageId) -> Event {
    Event {
        seq: None,
        payload: encode(&serde_json::json!({"type": "read", "reader_id": reader, "up_to": up_to})),
    }
}

/// The presence of one user, cluster-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Presence {
    pub user_id: UserId,
    pub online: bool,
    /// When the user was last seen online (now, while online); `None` if never.
    #[serde(with = "crate::model::timestamp::option")]
    pub last_seen: Option<DateTime<Utc>>,
}

/// `{"type": "presence", "user_id", "online", "last_seen"}`.
pub fn presence_event(presence: &Presence) -> Event {
    #[derive(Serialize)]
    struct Frame<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(flatten)]
        presence: &'a Presence,
    }
    Event {
        seq: None,
        payload: encode(&Frame {
            kind: "presence",
            presence,
        }),
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
        assert!(
            v.get("client_id").is_none(),
            "no client_id on the plain frame"
        );
    }

    #[test]
    fn the_senders_copy_carries_its_client_id() {
        let m = Message {
            id: 7,
            sender_id: 1,
            sender_username: "alice".into(),
            receiver_id: 2,
            content: "ok".into(),
            timestamp: now(),
            kind: MessageType::Message,
        };
        let own = own_message_event(&m, 4, Some("c-1"));
        let v: serde_json::Value = serde_json::from_slice(&own.payload).unwrap();
        assert_eq!(
            (v["seq"].as_i64(), v["client_id"].as_str()),
            (Some(4), Some("c-1"))
        );
        let none = own_message_event(&m, 4, None);
        assert_eq!(none.payload, message_event(&m, 4).payload);
        let v: serde_json::Value = serde_json::from_slice(&none.payload).unwrap();
        assert!(v.get("client_id").is_none());
    }
}
