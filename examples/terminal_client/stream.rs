//! The terminal client's WebSocket connection: the handshake (and which refusals are final),
//! the URL with `token` and `since`, and the one piece of resume bookkeeping, [`Resume`]: the
//! seq to resume after and the message ids already printed.

use crate::api::{detail_text, REQUEST_TIMEOUT};
use serde_json::Value;
use std::collections::{BTreeSet, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Message ids remembered to skip duplicates after a resume.
const PRINTED_MEMORY: usize = 50_000;

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub type Connecting = Pin<Box<dyn Future<Output = Result<Box<Socket>, ConnectError>> + Send>>;

pub enum ConnectError {
    /// Retrying cannot help (bad token, unknown user).
    Fatal(String),
    Retry(String),
}

pub async fn connect(url: String) -> Result<Box<Socket>, ConnectError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, tokio_tungstenite::connect_async(url)).await {
        Err(_) => Err(ConnectError::Retry("WebSocket handshake timed out".into())),
        Ok(Ok((socket, _))) => Ok(Box::new(socket)),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let detail = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                .map(|v| detail_text(v.get("detail").unwrap_or(&Value::Null)))
                .unwrap_or_else(|| "no detail given".into());
            let text = format!("WebSocket refused: {detail} (HTTP {status})");
            if matches!(status, 400 | 401 | 403 | 404 | 422) {
                Err(ConnectError::Fatal(text))
            } else {
                Err(ConnectError::Retry(text))
            }
        }
        Ok(Err(e)) => Err(ConnectError::Retry(format!("cannot connect: {e}"))),
    }
}

/// What this client has seen of its user's stream, so that a reconnect (`?since=`) misses
/// nothing and prints nothing twice.
///
/// `since` is the highest seq below which nothing is missing: an `ack` can overtake the frame
/// of a message stored just before it, so the highest seq alone could skip that message. The
/// replay after a resume may repeat messages already printed; their ids are remembered (the
/// last [`PRINTED_MEMORY`]) so they are skipped.
#[derive(Default)]
pub struct Resume {
    /// Every seq up to this one has been seen; `None` before the first (unknown start).
    floor: Option<i64>,
    /// Seen seqs above `floor + 1`.
    above: BTreeSet<i64>,
    printed: HashSet<i64>,
    printed_order: VecDeque<i64>,
}

impl Resume {
    /// From the start of the stream (a new user: nothing before this can be missed), or, with
    /// `false`, live: the seq is learnt as it goes.
    pub fn new(from_start: bool) -> Resume {
        Resume {
            floor: from_start.then_some(0),
            ..Resume::default()
        }
    }

    /// The seq to resume after, once one is known.
    pub fn since(&self) -> Option<i64> {
        self.floor
    }

    pub fn see(&mut self, seq: i64) {
        let mut floor = *self.floor.get_or_insert(seq.saturating_sub(1));
        if seq > floor {
            self.above.insert(seq);
        }
        while self.above.remove(&(floor + 1)) {
            floor += 1;
        }
        self.floor = Some(floor);
    }

    /// Once a connection's replay is over, a remaining gap is a seq this connection is never
    /// sent: it stops holding `since` back.
    pub fn settle(&mut self) {
        if let Some(&max) = self.above.last() {
            self.floor = Some(max);
            self.above.clear();
        }
    }

    /// Whether message `id` is new to the screen (and from now on remembered as printed).
    pub fn first_sight(&mut self, id: i64) -> bool {
        if !self.printed.insert(id) {
            return false;
        }
        self.printed_order.push_back(id);
        if self.printed_order.len() > PRINTED_MEMORY {
            if let Some(old) = self.printed_order.pop_front() {
                self.printed.remove(&old);
            }
        }
        true
    }
}

/// The socket URL: `ws://…/ws/<me>`, with the token and where to resume. `replay_all` asks
/// for everything (`since=0`) when no seq is known yet.
pub fn ws_url(
    ws_base: &str,
    me: i64,
    token: Option<&str>,
    since: Option<i64>,
    replay_all: bool,
) -> String {
    let mut url = format!("{ws_base}/ws/{me}");
    let mut params = Vec::new();
    if let Some(token) = token {
        params.push(format!("token={token}"));
    }
    match since {
        Some(since) => params.push(format!("since={since}")),
        None if replay_all => params.push("since=0".into()),
        None => {}
    }
    if !params.is_empty() {
        url.push('?');
        url.push_str(&params.join("&"));
    }
    url
}
