//! Events: what a connected user receives, serialised once per target user.
//!
//! An event is encoded to JSON here, once, and the resulting [`Event`] bytes
//! travel through the broker and the hub untouched to every connection of that user.

use crate::hub::Event;
use crate::model::{ConversationEvent, ConversationId, Message, MessageId, Seq, UserId};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::io::Write;

/// A frame serialised once for every user who gets it: the JSON of the message (or membership
/// event) without its closing brace, to which each user's frame appends that user's `seq` (and,
/// on the sender's own copy, its `client_id`). So a message to a group of N is serialised once,
/// not N times; each member's frame is one copy of these bytes plus a few.
///
/// The head is shared bytes, so that a broker can carry it to other nodes as it is (one copy per
/// message, not per member) and they make each local member's frame from it.
#[derive(Debug, Clone)]
pub struct Frames {
    head: Bytes,
}

impl Frames {
    fn of(value: &impl Serialize) -> Frames {
        let mut head = serde_json::to_vec(value).expect("an event always serialises to JSON");
        debug_assert_eq!(head.last(), Some(&b'}'));
        head.pop();
        Frames {
            head: Bytes::from(head),
        }
    }

    /// The frames whose shared head is `head` (what [`head`](Self::head) gave on another node).
    pub(crate) fn from_head(head: Bytes) -> Frames {
        Frames { head }
    }

    /// The JSON every user's frame starts with: the event without its closing brace.
    pub(crate) fn head(&self) -> &Bytes {
        &self.head
    }

    /// The frames of `message`: `{...message, "seq": n[, "client_id": c]}`.
    pub fn message(message: &Message) -> Frames {
        Frames::of(message)
    }

    /// The frames of a membership event:
    /// `{"type": "conversation", "event", "conversation", "user_ids", "by", "seq"}`.
    pub fn conversation(event: &ConversationEvent) -> Frames {
        #[derive(Serialize)]
        struct Frame<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(flatten)]
            event: &'a ConversationEvent,
        }
        Frames::of(&Frame {
            kind: "conversation",
            event,
        })
    }

    /// The frame for the user whose stream gives it `seq`, without a `client_id`.
    pub fn event(&self, seq: Seq) -> Event {
        self.own_event(seq, None)
    }

    /// The sender's own copy (`seq` in the sender's stream), carrying the `client_id` the send
    /// had. Never use it for anyone else's copy.
    pub fn own_event(&self, seq: Seq, client_id: Option<&str>) -> Event {
        let mut json = Vec::with_capacity(self.head.len() + 32);
        json.extend_from_slice(&self.head);
        // Writing to a Vec cannot fail.
        let _ = write!(json, ",\"seq\":{seq}");
        if let Some(client_id) = client_id {
            json.extend_from_slice(b",\"client_id\":");
            serde_json::to_writer(&mut json, client_id).expect("a string serialises to JSON");
        }
        json.push(b'}');
        Event {
            seq: Some(seq),
            payload: Bytes::from(json),
        }
    }
}

/// Serialises the frame of `message` for the user whose stream gives it `seq`, without a
/// `client_id`: the receiver's copy (and the sender's, when the send had no client id).
pub fn message_event(message: &Message, seq: Seq) -> Event {
    Frames::message(message).event(seq)
}

/// Serialises the sender's own copy of `message` (`seq` in the sender's stream), carrying the
/// `client_id` the send had. Never use it for the receiver's copy.
pub fn own_message_event(message: &Message, seq: Seq, client_id: Option<&str>) -> Event {
    Frames::message(message).own_event(seq, client_id)
}

/// Serialises a membership event for the user whose stream gives it `seq`.
pub fn conversation_event(event: &ConversationEvent, seq: Seq) -> Event {
    Frames::conversation(event).event(seq)
}

fn encode(value: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("an event always serialises to JSON"))
}

/// `{"type": "typing", "sender_id"}`, with `"conversation_id"` when typing in a conversation
/// by its id: `sender` is typing to the recipient (not stored).
pub fn typing_event(sender: UserId, conversation: Option<ConversationId>) -> Event {
    let json = match conversation {
        None => serde_json::json!({"type": "typing", "sender_id": sender}),
        Some(c) => {
            serde_json::json!({"type": "typing", "sender_id": sender, "conversation_id": c})
        }
    };
    Event {
        seq: None,
        payload: encode(&json),
    }
}

/// `{"type": "read", "reader_id", "conversation_id", "up_to"}`: `reader` has read the
/// conversation up to `up_to`.
pub fn read_event(reader: UserId, conversation: ConversationId, up_to: MessageId) -> Event {
    Event {
        seq: None,
        payload: encode(&serde_json::json!({
            "type": "read", "reader_id": reader, "conversation_id": conversation, "up_to": up_to
        })),
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
            conversation_id: 1,
            sender_username: "alice".into(),
            receiver_id: Some(2),
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
            conversation_id: 1,
            sender_username: "alice".into(),
            receiver_id: Some(2),
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
        // The spliced frame is what serialising the whole frame at once gives.
        #[derive(Serialize)]
        struct Whole<'a> {
            #[serde(flatten)]
            message: &'a Message,
            seq: Seq,
            client_id: &'a str,
        }
        let whole = Whole {
            message: &m,
            seq: 4,
            client_id: "c\"1",
        };
        assert_eq!(
            own_message_event(&m, 4, Some("c\"1")).payload,
            serde_json::to_vec(&whole).unwrap()
        );
    }
}
