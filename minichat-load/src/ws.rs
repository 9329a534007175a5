//! The WebSocket client side of docs/API.md: connecting a user (optionally from a chosen local
//! address), waiting for the `system` frame, and reading the frames a run counts.

use crate::error::{LoadError, Result};
use crate::target::{Node, User};
use futures_util::StreamExt;
use serde::Deserialize;
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Socket = WebSocketStream<TcpStream>;

/// Opens `/ws/{user}` on `node` (with the user's token, if any) from `source` (any local
/// address when `None`), replaying the user's stream after `since` when given, and reads up to
/// the `system` frame: from then on the socket receives every event for the user.
pub async fn connect(
    node: &Node,
    user: &User,
    source: Option<IpAddr>,
    since: Option<u64>,
) -> Result<Socket> {
    let addr = resolve(node).await?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| LoadError::io("socket", e))?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| LoadError::io(format!("bind to {ip}"), e))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| LoadError::io(format!("connect to {addr}"), e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| LoadError::io("TCP_NODELAY", e))?;
    let mut url = format!("{}/ws/{}", node.ws_base, user.id);
    let query: Vec<String> = [
        user.token.as_ref().map(|token| format!("token={token}")),
        since.map(|seq| format!("since={seq}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !query.is_empty() {
        url = format!("{url}?{}", query.join("&"));
    }
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config()))
            .await
            .map_err(|e| LoadError::ws(format!("WebSocket handshake for user {}", user.id), e))?;
    match ws.next().await {
        Some(Ok(Message::Text(text))) if matches!(parse(&text), Some(Frame { kind, .. }) if kind == "system") => {
            Ok(ws)
        }
        Some(Ok(Message::Close(close))) => Err(LoadError::Protocol(format!(
            "user {}'s socket was closed at once: {}",
            user.id,
            close.map_or_else(
                || "no reason".to_owned(),
                |c| format!("{} {}", c.code, c.reason)
            )
        ))),
        Some(Ok(other)) => Err(LoadError::Protocol(format!(
            "user {}'s first frame is not the system frame: {other:?}",
            user.id
        ))),
        Some(Err(e)) => Err(LoadError::ws(
            format!("first frame for user {}", user.id),
            e,
        )),
        None => Err(LoadError::Protocol(format!(
            "user {}'s socket ended before its first frame",
            user.id
        ))),
    }
}

/// Bytes tungstenite reads from the socket at a time. Its default, 128 KiB, is zeroed before
/// every read: that memset was 28% of the tool's CPU while it received group fan-out (perf),
/// CPU taken from the server it shares the machine with, and 128 KiB per socket held.
const READ_BUFFER: usize = 4096;

fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(READ_BUFFER)
}

async fn resolve(node: &Node) -> Result<SocketAddr> {
    tokio::net::lookup_host(&node.authority)
        .await
        .map_err(|e| LoadError::io(format!("resolve {}", node.authority), e))?
        .next()
        .ok_or_else(|| LoadError::Usage(format!("{} resolves to no address", node.authority)))
}

/// The fields of a server frame that a run reads; the rest are skipped unparsed.
#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// On a message event: the receiving user's seq.
    pub seq: Option<u64>,
    pub sender_id: Option<i64>,
    #[serde(borrow)]
    pub content: Option<Cow<'a, str>>,
    /// On an ack: the stored message, with the sender's seq (on a system frame: its text).
    #[serde(borrow)]
    pub message: Option<MessageField<'a>>,
    /// On an error: the status REST would give.
    pub status: Option<u16>,
}

/// The `message` field: an object on an ack, a string on a system frame.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageField<'a> {
    #[serde(borrow)]
    Acked(AckedMessage<'a>),
    Other(serde::de::IgnoredAny),
}

impl<'a> MessageField<'a> {
    pub fn acked(self) -> Option<AckedMessage<'a>> {
        match self {
            MessageField::Acked(message) => Some(message),
            MessageField::Other(_) => None,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct AckedMessage<'a> {
    pub seq: u64,
    #[serde(borrow)]
    pub content: Option<Cow<'a, str>>,
}

/// Parses a text frame; `None` for anything that is not a JSON object with a `type`.
pub fn parse(text: &str) -> Option<Frame<'_>> {
    serde_json::from_str(text).ok()
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn frames_parse() {
        let ack =
            parse(r#"{"type":"ack","client_id":"7","message":{"id":3,"seq":2,"content":"x"}}"#)
                .expect("an ack");
        assert_eq!(ack.kind, "ack");
        let message = ack
            .message
            .and_then(|m| m.acked())
            .expect("the acked message");
        assert_eq!((message.seq, message.content.as_deref()), (2, Some("x")));
        let event = parse(r#"{"type":"message","seq":5,"sender_id":9,"content":"1 2","id":1}"#)
            .expect("an event");
        assert_eq!((event.seq, event.sender_id), (Some(5), Some(9)));
        assert_eq!(event.content.as_deref(), Some("1 2"));
        let error = parse(r#"{"type":"error","client_id":"4","status":429,"detail":"slow"}"#)
            .expect("an error");
        assert_eq!(error.status, Some(429));
        let system = parse(r#"{"type":"system","message":"Connected to chat as a"}"#)
            .expect("a system frame");
        assert_eq!(system.kind, "system");
        assert!(parse("not json").is_none());
    }
}
