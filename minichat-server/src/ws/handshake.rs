//! The WebSocket upgrade: every check happens before the 101 goes out (handshake headers, the
//! user id, the caller's token, the socket caps), then the socket's kernel send buffer is capped
//! and the connection runs in a task.
//!
//! The task runs in a `ws{user, conn}` span (a child of the upgrade request's), so each of the
//! connection's log lines names it.

use super::connection::Connection;
use super::read::{LazyRead, READ_CHUNK};
use crate::error::{ApiError, Location};
use crate::extract::{parse_int, Query};
use crate::response::Response;
use crate::state::AppState;
use crate::tcp::SendBufferCap;
use crate::telemetry;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

/// How many bytes of frames a socket gathers before writing them (`write_buffer_size`): a
/// burst's frames, each a few hundred bytes, go out in one write. A socket keeps the buffer's capacity
/// once it has been busy, so this is also what a busy socket may hold beyond the idle budget
/// (ARCHITECTURE.md, "Per-socket memory budget").
const WRITE_CHUNK: usize = 4096;

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Whether `key` is the base64 of 16 bytes, as RFC 6455 §4.1 requires of `Sec-WebSocket-Key`:
/// 24 characters, the last two `==`, and the 22nd one carrying no bits past the 16th byte.
fn is_valid_key(key: &[u8]) -> bool {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    key.len() == 24
        && key[..21].iter().all(|c| ALPHABET.contains(c))
        && b"AQgw".contains(&key[21])
        && &key[22..] == b"=="
}

/// Checks the handshake and the caller, then answers 101 and runs the connection in a task.
pub fn upgrade(
    state: &Arc<AppState>,
    mut req: Request<Incoming>,
    raw_id: &str,
) -> Result<Response, ApiError> {
    let user_id = parse_int(Location::Path, "user_id", raw_id)?;
    let headers = req.headers();
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let is_upgrade = header_has(headers, header::CONNECTION, "upgrade")
        && header_has(headers, header::UPGRADE, "websocket");
    let Some(key) = key.filter(|_| is_upgrade) else {
        return Err(ApiError::BadRequest("WebSocket upgrade expected"));
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(ApiError::BadRequest(
            "Unsupported WebSocket version (13 expected)",
        ));
    }
    if !is_valid_key(key.as_bytes()) {
        return Err(ApiError::BadRequest(
            "Sec-WebSocket-Key must be the base64 of 16 bytes",
        ));
    }
    let query = Query::parse(req.uri().query());
    let caller = state.auth.caller(
        crate::auth::bearer_token(headers.get(header::AUTHORIZATION)),
        query.get("token"),
    );
    caller.require_user(user_id)?;
    let since = query.int("since")?.filter(|s| *s >= 0);
    // Held for the connection's life; refused here, before the upgrade, when over a cap.
    let permit = state.guards.open_socket(user_id)?;
    // From the 101 on, the kernel holds little for this socket: a client that stops reading
    // stalls the connection's writes within a few frames (see `crate::tcp`).
    if let Some(cap) = req.extensions().get::<SendBufferCap>() {
        cap.request(state.limits.ws_send_buffer_bytes);
    }

    let on_upgrade = hyper::upgrade::on(&mut req);
    let state_for_task = state.clone();
    // Every line of the connection carries its user and, once subscribed, its connection id
    // (`conn`); the span's parent is the upgrade request's, so its request id too.
    let span = tracing::info_span!("ws", user = user_id, conn = tracing::field::Empty);
    let task = async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let metrics = telemetry::SocketMetrics::open();
                let config = WebSocketConfig::default()
                    // Small, and allocated at once: `LazyRead` reads the socket in big chunks.
                    .read_buffer_size(READ_CHUNK)
                    // Frames fed before a flush (a burst of events, a run's answers) gather
                    // up to this much before a write: one syscall for several frames. An idle
                    // socket never allocates it.
                    .write_buffer_size(WRITE_CHUNK)
                    .max_write_buffer_size(256 * 1024)
                    .max_message_size(Some(state_for_task.limits.max_ws_message_bytes))
                    .max_frame_size(Some(state_for_task.limits.max_ws_message_bytes));
                let socket = WebSocketStream::from_raw_socket(
                    LazyRead::new(TokioIo::new(upgraded)),
                    Role::Server,
                    Some(config),
                )
                .await;
                let mut connection = Connection::new(state_for_task, socket, user_id, metrics);
                connection.run(since).await;
                drop(permit);
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    };
    state.tasks.spawn(task.instrument(span));

    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let accept = derive_accept_key(key.as_bytes());
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept)
            .map_err(|_| ApiError::BadRequest("Bad Sec-WebSocket-Key"))?,
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::is_valid_key;

    #[test]
    fn keys_are_the_base64_of_16_bytes() {
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(is_valid_key(b"AAAAAAAAAAAAAAAAAAAAAA=="));
        assert!(!is_valid_key(b""));
        assert!(!is_valid_key(b"not base64 at all!!!!!=="));
        // 15 and 17 bytes, and 16 bytes with stray bits in the padding.
        assert!(!is_valid_key(b"AAAAAAAAAAAAAAAAAAAA"));
        assert!(!is_valid_key(b"AAAAAAAAAAAAAAAAAAAAAAA="));
        assert!(!is_valid_key(b"AAAAAAAAAAAAAAAAAAAAAB=="));
    }
}
