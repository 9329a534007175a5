//! The WebSocket frames of the wire contract: what a client sends, what the server writes
//! besides the events of the user's stream (greeting, pong, ack, error), and the close codes.
//! Serialisation only: what to do with them is the connection's.

use minichat_core::model::{timestamp, ConversationId, Message, Seq};
use minichat_core::{MessageId, UserId};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as Frame;

/// A text frame or close reason was not UTF-8 (RFC 6455 §7.4.1).
pub const CLOSE_INVALID_UTF8: u16 = 1007;
/// The user of the path does not exist.
pub const CLOSE_USER_NOT_FOUND: u16 = 4004;
/// The connection's queue on the hub filled up: resume with `since`.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// A frame a client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientFrame {
    Ping,
    /// To a user (Part 1's direct form) or to a conversation: exactly one of the two.
    Message {
        #[serde(default)]
        receiver_id: Option<UserId>,
        #[serde(default)]
        conversation_id: Option<ConversationId>,
        content: String,
        #[serde(default)]
        client_id: Option<String>,
    },
    Typing {
        #[serde(default)]
        receiver_id: Option<UserId>,
        #[serde(default)]
        conversation_id: Option<ConversationId>,
    },
    Read {
        #[serde(default)]
        peer_id: Option<UserId>,
        #[serde(default)]
        conversation_id: Option<ConversationId>,
        up_to: MessageId,
    },
    Watch {
        user_ids: Vec<UserId>,
    },
}

impl ClientFrame {
    /// The detail of the 422 error frame for text that is not a client frame.
    pub fn parse_error(e: &serde_json::Error) -> &'static str {
        if e.classify() == serde_json::error::Category::Data {
            "Unknown or malformed frame: expected a type of ping, message, typing, read or watch with its fields"
        } else {
            "Frames must be JSON objects"
        }
    }

    /// Typing, read and watch fan out, write or look up: they are rate-limited per user.
    pub fn is_signal(&self) -> bool {
        matches!(
            self,
            ClientFrame::Typing { .. } | ClientFrame::Read { .. } | ClientFrame::Watch { .. }
        )
    }
}

/// The greeting, first frame of every connection.
#[derive(Serialize)]
pub struct SystemFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
    #[serde(with = "timestamp")]
    timestamp: chrono::DateTime<chrono::Utc>,
}

impl<'a> SystemFrame<'a> {
    pub fn new(message: &'a str) -> Self {
        SystemFrame {
            kind: "system",
            message,
            timestamp: minichat_core::model::now(),
        }
    }
}

/// The answer to a client's `ping` frame.
#[derive(Serialize)]
pub struct PongFrame {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(with = "timestamp")]
    timestamp: chrono::DateTime<chrono::Utc>,
}

impl PongFrame {
    pub fn now() -> Self {
        PongFrame {
            kind: "pong",
            timestamp: minichat_core::model::now(),
        }
    }
}

/// A failed client frame; the connection stays open.
#[derive(Serialize)]
pub struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    status: u16,
    detail: serde_json::Value,
}

impl<'a> ErrorFrame<'a> {
    pub fn new(
        client_id: Option<&'a str>,
        status: http::StatusCode,
        detail: serde_json::Value,
    ) -> Self {
        ErrorFrame {
            kind: "error",
            client_id,
            status: status.as_u16(),
            detail,
        }
    }
}

/// A message as the sender's stream numbers it, with the send's `client_id`: what the ack
/// carries (the same JSON as the sender's copy on its other connections).
#[derive(Serialize)]
pub struct MessageFrame<'a> {
    #[serde(flatten)]
    pub message: &'a Message,
    pub seq: Seq,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<&'a str>,
}

/// A client's message, stored: it carries the message as the sender's stream numbers it.
#[derive(Serialize)]
pub struct AckFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    client_id: Option<&'a str>,
    message: MessageFrame<'a>,
}

impl<'a> AckFrame<'a> {
    pub fn new(client_id: Option<&'a str>, message: MessageFrame<'a>) -> Self {
        AckFrame {
            kind: "ack",
            client_id,
            message,
        }
    }
}

/// A JSON text frame.
pub fn text(value: &impl Serialize) -> Frame {
    match serde_json::to_string(value) {
        Ok(s) => Frame::Text(s.into()),
        Err(_) => {
            Frame::Text(r#"{"type":"error","status":500,"detail":"Internal server error"}"#.into())
        }
    }
}

pub fn close_frame(code: u16, reason: &'static str) -> Frame {
    Frame::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}
