//! Helpers of the conversation suites (`tests/conversations.rs`, `tests/conversation_events.rs`):
//! a server with a small member limit, users, groups and sends over REST, and frames read past
//! presence.

use super::{name, Backend, Backends, TestServer, Ws};
use minichat_server::AuthMode;
use serde_json::{json, Value};

/// Members per group in these tests (the creator counts).
pub const MAX_MEMBERS: usize = 4;

pub async fn setup(kind: Backend) -> (Backends, TestServer) {
    setup_with(kind, AuthMode::Off).await
}

pub async fn setup_with(kind: Backend, auth: AuthMode) -> (Backends, TestServer) {
    let backends = Backends::new(kind).await;
    let mut settings = backends.settings(auth);
    settings.chat.max_group_members = MAX_MEMBERS;
    let server = TestServer::start(settings).await;
    (backends, server)
}

pub fn id(v: &Value) -> i64 {
    v["id"].as_i64().expect("id")
}

pub async fn users(s: &TestServer, n: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(id(&s.user(&name("u")).await));
    }
    ids
}

pub async fn group(s: &TestServer, creator: i64, title: &str, members: &[i64]) -> Value {
    let (status, body) = s
        .post(
            "/conversations/",
            json!({"creator_id": creator, "title": title, "member_ids": members}),
        )
        .await;
    assert_eq!(status, 200, "create group: {body}");
    body
}

pub async fn send_to(s: &TestServer, sender: i64, conversation: i64, content: &str) -> Value {
    let (status, body) = s
        .post(
            "/messages/",
            json!({"sender_id": sender, "conversation_id": conversation, "content": content}),
        )
        .await;
    assert_eq!(status, 200, "send to {conversation}: {body}");
    body
}

pub async fn patch(s: &TestServer, path: &str, body: Value) -> (u16, Value) {
    s.send(s.http.patch(s.url(path)).json(&body)).await
}

pub async fn delete(s: &TestServer, path: &str) -> (u16, Value) {
    s.send(s.http.delete(s.url(path))).await
}

pub fn member_ids(conversation: &Value) -> Vec<i64> {
    conversation["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["user_id"].as_i64().expect("user_id"))
        .collect()
}

pub fn role_of(conversation: &Value, user: i64) -> Value {
    conversation["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["user_id"] == user)
        .map_or(Value::Null, |m| m["role"].clone())
}

/// The next frame of `ws` that is not presence.
pub async fn next_event(ws: &mut Ws) -> Value {
    loop {
        let frame = ws.next_json().await;
        if frame["type"] != "presence" {
            return frame;
        }
    }
}
