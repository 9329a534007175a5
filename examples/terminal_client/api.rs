//! The REST side of the terminal client: signup, the user directory and history, with the
//! bearer token; and how server answers (messages, error `detail`s) are read and printed.

use crate::target::To;
use serde_json::{json, Value};
use std::time::Duration;

/// Messages listed by `/history`.
pub const HISTORY_LIMIT: usize = 20;
/// Time limit of a REST request or a WebSocket handshake.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The `HH:MM:SS` of an RFC 3339 timestamp (UTC, as the server writes it).
pub fn clock(timestamp: &str) -> &str {
    match timestamp.get(11..19) {
        Some(time) if timestamp.as_bytes().get(10) == Some(&b'T') => time,
        _ => "--:--:--",
    }
}

/// The text of an error `detail`: a sentence, or the messages of a validation error list.
pub fn detail_text(detail: &Value) -> String {
    match detail {
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let msgs: Vec<String> = items
                .iter()
                .map(|item| match item.get("msg").and_then(Value::as_str) {
                    Some(msg) => msg.to_owned(),
                    None => item.to_string(),
                })
                .collect();
            msgs.join("; ")
        }
        Value::Null => "no detail given".to_owned(),
        other => other.to_string(),
    }
}

/// A message as the server sends it (REST and WebSocket), reduced to what is printed.
pub struct Msg {
    pub id: i64,
    pub conversation_id: i64,
    pub sender_id: i64,
    pub sender_username: String,
    /// The receiver of a direct message; `None` in a group.
    pub receiver_id: Option<i64>,
    pub content: String,
    pub timestamp: String,
}

impl Msg {
    pub fn parse(v: &Value) -> Option<Msg> {
        Some(Msg {
            id: v.get("id")?.as_i64()?,
            conversation_id: v.get("conversation_id")?.as_i64()?,
            sender_id: v.get("sender_id")?.as_i64()?,
            sender_username: v.get("sender_username")?.as_str()?.to_owned(),
            receiver_id: v.get("receiver_id").and_then(Value::as_i64),
            content: v.get("content")?.as_str()?.to_owned(),
            timestamp: v.get("timestamp")?.as_str().unwrap_or_default().to_owned(),
        })
    }

    /// `[HH:MM:SS] sender: content`, or in a group `[HH:MM:SS] #title sender: content`.
    pub fn line(&self, group: Option<&str>) -> String {
        match group {
            None => format!(
                "[{}] {}: {}",
                clock(&self.timestamp),
                self.sender_username,
                self.content
            ),
            Some(title) => format!(
                "[{}] #{title} {}: {}",
                clock(&self.timestamp),
                self.sender_username,
                self.content
            ),
        }
    }
}

/// The REST side: signup, the user directory and history, with the bearer token.
pub struct Api {
    http: reqwest::Client,
    base: String,
    /// Replaced by the signup's token, which the socket uses too.
    pub token: Option<String>,
}

impl Api {
    /// A client of the server at `base` (an `http://` URL without the trailing slash).
    pub fn new(base: String, token: Option<String>) -> Result<Api, String> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Api { http, base, token })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{}", self.base, path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a request; a non-2xx answer becomes its `detail` (with the status).
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, String> {
        let response = request
            .send()
            .await
            .map_err(|e| format!("cannot reach the server: {e}"))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("the server's answer broke off: {e}"))?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!(
                "{} (HTTP {})",
                detail_text(body.get("detail").unwrap_or(&Value::Null)),
                status.as_u16()
            ))
        }
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        self.call(self.request(reqwest::Method::GET, path)).await
    }

    /// `POST /users/`: the new user and its token (none when the server's auth is off).
    pub async fn signup(&self, username: &str) -> Result<(i64, String, Option<String>), String> {
        let body = self
            .call(
                self.request(reqwest::Method::POST, "/users/")
                    .json(&json!({ "username": username })),
            )
            .await?;
        let id = body["id"]
            .as_i64()
            .ok_or_else(|| format!("unexpected signup answer: {body}"))?;
        let name = body["username"].as_str().unwrap_or(username).to_owned();
        Ok((id, name, body["token"].as_str().map(str::to_owned)))
    }

    /// The username of user `id`.
    pub async fn username(&self, id: i64) -> Result<String, String> {
        let body = self.get(&format!("/users/{id}")).await?;
        body["username"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("unexpected user answer: {body}"))
    }

    /// Finds a user by username (exact, then ignoring case), or else by id.
    pub async fn find_user(&self, wanted: &str) -> Result<(i64, String), String> {
        const PAGE: usize = 1000;
        let mut folded = Vec::new();
        let mut skip = 0;
        loop {
            let page = self
                .get(&format!("/users/?skip={skip}&limit={PAGE}"))
                .await?;
            let users = page.as_array().cloned().unwrap_or_default();
            for user in &users {
                let (Some(id), Some(name)) = (user["id"].as_i64(), user["username"].as_str())
                else {
                    continue;
                };
                if name == wanted {
                    return Ok((id, name.to_owned()));
                }
                if name.to_lowercase() == wanted.to_lowercase() {
                    folded.push((id, name.to_owned()));
                }
            }
            if users.len() < PAGE {
                break;
            }
            skip += PAGE;
        }
        if folded.len() == 1 {
            return Ok(folded.remove(0));
        }
        if let Ok(id) = wanted.parse::<i64>() {
            if let Ok(name) = self.username(id).await {
                return Ok((id, name));
            }
        }
        Err(format!("no user named {wanted:?}"))
    }

    /// The last [`HISTORY_LIMIT`] messages with `to` (a peer, or a conversation), oldest
    /// first.
    pub async fn history(&self, me: i64, to: To) -> Result<Vec<Msg>, String> {
        let filter = match to {
            To::User(peer) => format!("chat_with={peer}"),
            To::Conversation(id) => format!("conversation_id={id}"),
        };
        let body = self
            .get(&format!(
                "/messages/?user_id={me}&{filter}&limit={HISTORY_LIMIT}"
            ))
            .await?;
        let mut messages: Vec<Msg> = body
            .as_array()
            .map(|list| list.iter().filter_map(Msg::parse).collect())
            .unwrap_or_default();
        messages.reverse();
        Ok(messages)
    }

    /// Creates a group of `me` and `members`: its id and title.
    pub async fn create_group(
        &self,
        me: i64,
        title: &str,
        members: &[i64],
    ) -> Result<(i64, String), String> {
        let body = self
            .call(self.request(reqwest::Method::POST, "/conversations/").json(
                &serde_json::json!({"creator_id": me, "title": title, "member_ids": members}),
            ))
            .await?;
        match (body["id"].as_i64(), body["title"].as_str()) {
            (Some(id), Some(title)) => Ok((id, title.to_owned())),
            _ => Err(format!("unexpected conversation answer: {body}")),
        }
    }

    /// `me`'s conversations, most recent first: the inbox's summaries as the server sends them.
    pub async fn inbox(&self, me: i64) -> Result<Vec<Value>, String> {
        let body = self
            .get(&format!("/conversations/?user_id={me}&limit=1000"))
            .await?;
        Ok(body.as_array().cloned().unwrap_or_default())
    }
}
