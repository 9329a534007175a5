//! The terminal client's groups: `/group` and `/open`, how a group's message is printed, and
//! the membership events of the stream. A part of [`Client`](super::Client) of its own, so that
//! the session's state machine in `client.rs` stays about connections and lines.

use super::Client;
use crate::api::Msg;
use crate::target::{Target, To};
use crate::ui::say;
use serde_json::Value;

impl Client {
    /// `/group TITLE user…`: creates the group and opens it.
    pub(super) async fn create_group(&mut self, title: &str, wanted: &[&str]) {
        let mut members = Vec::new();
        for name in wanted {
            match self.api.find_user(name).await {
                Ok((id, name)) => {
                    self.names.insert(id, name);
                    members.push(id);
                }
                Err(e) => return say(format!("! {e}")),
            }
        }
        match self.api.create_group(self.me, title, &members).await {
            Ok((id, title)) => self.open_group(id, title),
            Err(e) => say(format!("! {e}")),
        }
    }

    pub(super) fn open_group(&mut self, id: i64, title: String) {
        self.groups.insert(id, title.clone());
        self.target = Some(Target {
            to: To::Conversation(id),
            name: title,
        });
        self.describe_target();
    }

    /// `/open NAME`: the conversation of the inbox whose group title or peer's username is
    /// NAME (groups first).
    pub(super) async fn open(&mut self, wanted: &str) {
        let inbox = match self.api.inbox(self.me).await {
            Ok(inbox) => inbox,
            Err(e) => return say(format!("! {e}")),
        };
        for summary in &inbox {
            if let (Some(id), Some(title)) = (summary["id"].as_i64(), summary["title"].as_str()) {
                self.groups.insert(id, title.to_owned());
            }
        }
        let group = inbox.iter().find_map(|s| {
            let id = s["id"].as_i64()?;
            (s["title"].as_str()? == wanted).then(|| (id, wanted.to_owned()))
        });
        if let Some((id, title)) = group {
            return self.open_group(id, title);
        }
        for summary in &inbox {
            if let Some(peer) = summary["peer_id"].as_i64() {
                if self.name_of(peer).await == wanted {
                    self.set_peer(peer, wanted.to_owned());
                    return self.describe_target();
                }
            }
        }
        say(format!(
            "! no conversation named {wanted:?} (/group TITLE user… makes one)"
        ));
    }

    /// How a message is printed: with its group's title when it is a group's.
    pub(super) fn line_of(&self, m: &Msg) -> String {
        match m.receiver_id {
            Some(_) => m.line(None),
            None => {
                let fallback = format!("group{}", m.conversation_id);
                let title = self.groups.get(&m.conversation_id).unwrap_or(&fallback);
                m.line(Some(title))
            }
        }
    }

    /// A membership event: remembers the group's title and says what happened.
    pub(super) async fn on_conversation(&mut self, frame: &Value) {
        let conversation = &frame["conversation"];
        let (Some(id), Some(by)) = (conversation["id"].as_i64(), frame["by"].as_i64()) else {
            return say(format!("! unreadable conversation event: {frame}"));
        };
        let title = conversation["title"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.groups.insert(id, title.clone());
        let by = self.name_of(by).await;
        let mut users = Vec::new();
        for user in frame["user_ids"].as_array().into_iter().flatten() {
            if let Some(user) = user.as_i64() {
                users.push(self.name_of(user).await);
            }
        }
        let users = users.join(", ");
        let line = match frame["event"].as_str().unwrap_or_default() {
            "created" => format!("* {by} made the group {title} (#{id}) with {users}"),
            "renamed" => format!("* {by} renamed group #{id} to {title}"),
            "member_added" => format!("* {by} added {users} to {title}"),
            "member_removed" => format!("* {by} removed {users} from {title}"),
            other => format!("* group {title}: {other}"),
        };
        say(line);
        // Renamed while open: the prompt's name follows.
        if let Some(target) = self.target.as_mut() {
            if target.to == To::Conversation(id) {
                target.name = title;
            }
        }
    }
}
