//! What is really at the other end of `DATABASE_URL` or `REDIS_URL`, for the one error line.
//!
//! When a backend fails to connect, its client's error says little ("broken pipe", "Parse error
//! at 1", "no answer within 5s") if the address holds a server of another protocol. These probes
//! open their own short TCP connection and greet the server in the protocol expected (a Redis
//! `PING`, a PostgreSQL `SSLRequest`), so the binary can say "127.0.0.1:8000 does not speak
//! Redis (it answered as an HTTP server)". Part of the binary only: the library is untouched.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The 8-byte request every PostgreSQL server answers with one byte, `S` or `N`.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// `host:port` of a URL, with the scheme's usual port when it names none.
fn address(url: &str, default_port: u16) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let host = parsed.host_str().filter(|h| !h.is_empty())?;
    let port = parsed.port().unwrap_or(default_port);
    Some(format!("{host}:{port}"))
}

/// Sends `greeting` and returns what came back first: `None` when nothing could be connected
/// to; `Some(empty)` when the peer closed or stayed silent.
async fn exchange(addr: &str, greeting: &[u8]) -> Option<Vec<u8>> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(greeting).await.ok()?;
        let mut reply = vec![0u8; 64];
        let n = match tokio::time::timeout(PROBE_TIMEOUT, stream.read(&mut reply)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => 0,
        };
        reply.truncate(n);
        Some(reply)
    };
    tokio::time::timeout(PROBE_TIMEOUT * 2, attempt)
        .await
        .ok()
        .flatten()
}

/// An HTTP status line, or an HTTP/0.9-style HTML error page.
fn is_http_reply(reply: &[u8]) -> bool {
    reply.starts_with(b"HTTP/") || reply.starts_with(b"<")
}

fn is_redis_reply(reply: &[u8]) -> bool {
    reply
        .first()
        .is_some_and(|b| b"+-$*:%_,#!=(|>~".contains(b))
        && !is_http_reply(reply)
}

fn is_postgres_reply(reply: &[u8]) -> bool {
    matches!(reply, [b'S'] | [b'N'] | [b'E', ..])
}

/// What else the server at `addr` is, as a parenthesis for the error line.
async fn identify(addr: &str, first_reply: &[u8]) -> String {
    if is_http_reply(first_reply) {
        return "it answered as an HTTP server".into();
    }
    if let Some(reply) = exchange(addr, b"PING\r\n").await {
        if is_http_reply(&reply) {
            return "it answered as an HTTP server".into();
        }
        if is_redis_reply(&reply) {
            return "it is a Redis server".into();
        }
    }
    if let Some(reply) = exchange(addr, &SSL_REQUEST).await {
        if is_postgres_reply(&reply) {
            return "it is a PostgreSQL server".into();
        }
    }
    if first_reply.is_empty() {
        "it did not answer the greeting".into()
    } else {
        "it answered something else".into()
    }
}

/// `Some(problem)` when something listens at the Redis URL's address but does not speak Redis.
pub async fn not_redis(url: &str) -> Option<String> {
    let addr = address(url, 6379)?;
    let reply = exchange(&addr, b"PING\r\n").await?;
    if is_redis_reply(&reply) {
        return None;
    }
    let what = identify(&addr, &reply).await;
    Some(format!(
        "{addr} does not speak Redis ({what}); expected the address of a Redis server"
    ))
}

/// `Some(problem)` when something listens at the PostgreSQL URL's address but does not speak
/// PostgreSQL.
pub async fn not_postgres(url: &str) -> Option<String> {
    let addr = address(url, 5432)?;
    let reply = exchange(&addr, &SSL_REQUEST).await?;
    if is_postgres_reply(&reply) {
        return None;
    }
    let what = identify(&addr, &reply).await;
    Some(format!(
        "{addr} does not speak PostgreSQL ({what}); expected the address of a PostgreSQL server"
    ))
}
