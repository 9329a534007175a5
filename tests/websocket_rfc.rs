//! RFC 6455 at the edges, over a raw TCP socket with hand-written frames (a client library
//! would refuse to send them): a bad `Sec-WebSocket-Key` is refused with 400 before any
//! upgrade (§4.2.1), and text that is not UTF-8, in a text frame or a close reason, gets a
//! close frame with 1007 (§8.1) rather than a dropped connection.

mod support;

use serde_json::Value;
use support::{name, Backend, Backends, TestServer, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn handshake(user: i64, key: Option<&str>) -> String {
    let key = key.map_or(String::new(), |k| format!("Sec-WebSocket-Key: {k}\r\n"));
    format!(
        "GET /ws/{user} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         {key}Sec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Sends the handshake and reads the answer's head; returns its status and the socket.
async fn open(s: &TestServer, request: &str) -> (u16, TcpStream) {
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut byte))
            .await
            .expect("an answer in time")
            .unwrap();
        assert_eq!(n, 1, "connection closed mid-answer: {head:?}");
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head)
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    (status, stream)
}

/// A masked client frame (FIN set) with a payload under 126 bytes.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads one unmasked server frame: its opcode and payload.
async fn server_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let read = async {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await?;
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let len = match head[1] & 0x7f {
            126 => u64::from(stream.read_u16().await?),
            127 => stream.read_u64().await?,
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        stream.read_exact(&mut payload).await?;
        Ok::<_, std::io::Error>((head[0] & 0x0f, payload))
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("a frame in time")
        .expect("a frame, not the end of the connection")
}

/// Upgrades, checks the greeting, sends `frame` and returns the close code the server sends.
async fn close_code_after(s: &TestServer, user: i64, frame: &[u8]) -> u16 {
    let (status, mut stream) = open(s, &handshake(user, Some("dGhlIHNhbXBsZSBub25jZQ=="))).await;
    assert_eq!(status, 101);
    let (opcode, greeting) = server_frame(&mut stream).await;
    assert_eq!(opcode, 1);
    let greeting: Value = serde_json::from_slice(&greeting).unwrap();
    assert_eq!(greeting["type"], "system");
    stream.write_all(frame).await.unwrap();
    loop {
        match server_frame(&mut stream).await {
            (8, payload) => {
                assert!(payload.len() >= 2, "a close frame with a code");
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
            (opcode, _) => assert!(opcode == 9 || opcode == 1, "unexpected opcode {opcode}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sec_websocket_key_not_the_base64_of_16_bytes_is_refused_with_400() {
    let backends = Backends::new(Backend::Memory).await;
    let s = TestServer::open(&backends).await;
    let user = s.user(&name("keys")).await["id"].as_i64().unwrap();
    for key in [
        "",
        "not base64 at all!!!!!==",
        // The base64 of 15 and of 17 bytes.
        "AAAAAAAAAAAAAAAAAAAA",
        "AAAAAAAAAAAAAAAAAAAAAAA=",
    ] {
        let (status, _) = open(&s, &handshake(user, Some(key))).await;
        assert_eq!(status, 400, "key {key:?}");
    }
    // The RFC's own example key still upgrades.
    let (status, _) = open(&s, &handshake(user, Some("dGhlIHNhbXBsZSBub25jZQ=="))).await;
    assert_eq!(status, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_utf8_is_closed_with_1007() {
    let backends = Backends::new(Backend::Memory).await;
    let s = TestServer::open(&backends).await;
    let user = s.user(&name("utf")).await["id"].as_i64().unwrap();
    let invalid = [b'{', 0xff, 0xfe, b'}'];
    // A text frame.
    let code = close_code_after(&s, user, &client_frame(0x1, &invalid)).await;
    assert_eq!(code, 1007);
    // A close frame whose reason is not UTF-8.
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(&[0xc3, 0x28, 0xa0, 0xa1]);
    let code = close_code_after(&s, user, &client_frame(0x8, &close)).await;
    assert_eq!(code, 1007);
    // The server still serves.
    let (status, _) = s.get("/health").await;
    assert_eq!(status, 200);
}
