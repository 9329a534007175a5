//! Where the terminal client's lines go: a peer (their direct conversation, by `receiver_id`)
//! or a conversation by id (a group, opened with `/group` or `/open`). One type, so that the
//! outbox, history and read receipts name their destination the same way the server does.

use serde_json::{json, Value};

/// A destination as the server's frames name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum To {
    User(i64),
    Conversation(i64),
}

impl To {
    /// A `message` frame to here.
    pub fn message(self, content: &str, client_id: &str) -> Value {
        let mut frame = json!({"type": "message", "content": content, "client_id": client_id});
        self.name_in(&mut frame, "receiver_id");
        frame
    }

    /// A `read` frame up to `up_to` here.
    pub fn read(self, up_to: i64) -> Value {
        let mut frame = json!({"type": "read", "up_to": up_to});
        self.name_in(&mut frame, "peer_id");
        frame
    }

    /// Puts `user_field` (for a peer) or `conversation_id` into `frame`.
    fn name_in(self, frame: &mut Value, user_field: &str) {
        let (field, id) = match self {
            To::User(id) => (user_field, id),
            To::Conversation(id) => ("conversation_id", id),
        };
        frame[field] = json!(id);
    }
}

/// The conversation on screen: where lines go, and how it is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub to: To,
    /// The peer's username, or the group's title.
    pub name: String,
}

impl Target {
    /// `* chatting with NAME (#id)` or `* in group TITLE (#id)`.
    pub fn describe(&self) -> String {
        match self.to {
            To::User(id) => format!("* chatting with {} (#{id})", self.name),
            To::Conversation(id) => format!("* in group {} (#{id})", self.name),
        }
    }

    pub fn peer(&self) -> Option<i64> {
        match self.to {
            To::User(id) => Some(id),
            To::Conversation(_) => None,
        }
    }
}
