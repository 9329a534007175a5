//! What the server answers to requests that hyper can barely parse, over raw TCP: an oversized
//! head is the server's own 431 with a `detail`, and what hyper still answers itself (a head
//! past its buffer, too many header fields, an overlong URI, bytes that are not HTTP) is exactly
//! what docs/API.md says: the status, no body, the connection closed.

mod support;

use serde_json::Value;
use std::net::SocketAddr;
use support::{Backend, Backends, TestServer, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One answer as it came off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// hyper's automatic answer: the status, an empty body.
    fn assert_bodiless(&self, status: u16) {
        assert_eq!(self.status, status, "{self:?}");
        assert!(self.body.is_empty(), "{self:?}");
        assert_eq!(self.header("content-length"), Some("0"), "{self:?}");
    }
}

/// Writes `bytes` on a new connection (in a task: the server may answer, and close, before it
/// has read them all) and reads until the server closes. Bytes read before a reset are kept.
async fn raw(addr: SocketAddr, bytes: Vec<u8>) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&bytes).await;
        write // kept open until the answer is read: a half-close is no signal here
    });
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    tokio::time::timeout(DEADLINE, async {
        loop {
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the server answers and closes in time");
    drop(writer);
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&answer)));
    let head = String::from_utf8(answer[..split].to_vec()).expect("an ASCII head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|l| l.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line of {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: answer[split + 4..].to_vec(),
    }
}

/// `GET /health` with `fields` header fields of `size` bytes each (`name: value\r\n`).
fn request(fields: usize, size: usize) -> Vec<u8> {
    let mut req = b"GET /health HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..fields {
        let name = format!("x-pad-{i:04}");
        let value = "a".repeat(size - name.len() - 4);
        req.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    req.extend_from_slice(b"Connection: close\r\n\r\n");
    req
}

async fn server() -> (Backends, TestServer) {
    let backends = Backends::new(Backend::Memory).await;
    let server = TestServer::open(&backends).await;
    (backends, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_a_431_with_a_detail() {
    let (_b, s) = server().await;
    // 70 KiB of headers: past the server's 64 KiB, within hyper's 128 KiB.
    let answer = raw(s.addr, request(10, 7 * 1024)).await;
    assert_eq!(answer.status, 431, "{answer:?}");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(answer.header("x-request-id").is_some(), "{answer:?}");
    assert_eq!(
        answer.json()["detail"],
        "Request header fields too large (limit 65536 bytes)"
    );
    // Just under the limit (Host and Connection included) is an ordinary request.
    let answer = raw(s.addr, request(8, 8 * 1024 - 8)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["status"], "OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_limit_is_a_setting() {
    let backends = Backends::new(Backend::Memory).await;
    let mut settings = backends.settings(minichat::server::AuthMode::Off);
    settings.limits.max_header_bytes = 2048;
    let s = TestServer::start(settings).await;
    let answer = raw(s.addr, request(1, 3 * 1024)).await;
    assert_eq!(answer.status, 431, "{answer:?}");
    assert_eq!(
        answer.json()["detail"],
        "Request header fields too large (limit 2048 bytes)"
    );
    assert_eq!(raw(s.addr, request(1, 1024)).await.status, 200);
}

/// What hyper answers before the server sees a request, as docs/API.md ("Conventions") lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_hyper_answers_itself_is_bodiless() {
    let (_b, s) = server().await;
    // A head past hyper's buffer (twice the limit): hyper's 431.
    raw(s.addr, request(20, 8 * 1024))
        .await
        .assert_bodiless(431);
    // More than 100 header fields, however small: hyper's 431.
    raw(s.addr, request(120, 16)).await.assert_bodiless(431);
    // A request target over 65,534 bytes: hyper's 414.
    let long = format!(
        "GET /health?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "q".repeat(70_000)
    );
    raw(s.addr, long.into_bytes()).await.assert_bodiless(414);
    // Bytes that are not HTTP (a TLS ClientHello), and a malformed header line: hyper's 400.
    let tls = vec![
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ];
    raw(s.addr, tls).await.assert_bodiless(400);
    raw(
        s.addr,
        b"GET /health HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n".to_vec(),
    )
    .await
    .assert_bodiless(400);
    // The server is unharmed.
    let (status, _) = s.get("/health").await;
    assert_eq!(status, 200);
}
