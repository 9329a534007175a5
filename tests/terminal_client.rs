//! The terminal client example (`examples/terminal_client/`), driven as a user would drive it:
//! lines into its stdin, lines out of its stdout, against a real server with auth `token`.
//!
//! The client reaches the server through a TCP proxy of the test's own, which can cut every
//! connection and refuse new ones, so the client sees a real drop and has to resume.

mod support;

use serde_json::{json, Value};
use std::collections::HashSet;
use std::process::Stdio;
use support::{cargo_built, name, Backend, Backends, TcpProxy, TestServer, Ws, DEADLINE};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The client process: stdin to type into, stdout read line by line with a deadline.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Everything it printed so far, for failure messages.
    transcript: Vec<String>,
}

impl Client {
    fn spawn(args: &[&str]) -> Client {
        // `cargo test --test terminal_client` alone does not build examples.
        let binary = cargo_built(
            &["--example", "terminal_client"],
            "examples/terminal_client",
        );
        let mut child = Command::new(binary)
            .args(args)
            .env_remove("MINICHAT_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("client starts");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Client {
            child,
            stdin,
            stdout,
            transcript: Vec::new(),
        }
    }

    async fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to the client's stdin");
        stdin.flush().await.expect("flush the client's stdin");
    }

    /// Closes stdin: the client sees its end.
    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next line printed, or `None` at the end of output.
    async fn next_line(&mut self, waiting_for: &str) -> Option<String> {
        match tokio::time::timeout(DEADLINE, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => {
                self.transcript.push(line.clone());
                Some(line)
            }
            Ok(Ok(None)) | Ok(Err(_)) => None,
            Err(_) => panic!(
                "no line within {DEADLINE:?} while waiting for {waiting_for}; output so far:\n{}",
                self.transcript.join("\n")
            ),
        }
    }

    /// Every line up to and including the first that satisfies `wanted`.
    async fn lines_until(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let Some(line) = self.next_line(what).await else {
                panic!(
                    "output ended while waiting for {what}; output:\n{}",
                    self.transcript.join("\n")
                );
            };
            let done = wanted(&line);
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// The first line that satisfies `wanted` (skipping others).
    async fn expect(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let mut lines = self.lines_until(what, wanted).await;
        lines.pop().expect("at least the matching line")
    }

    /// Waits for the process to end and returns its exit code, reading what it still prints.
    async fn exit_code(&mut self) -> i32 {
        while self.next_line("the client to exit").await.is_some() {}
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("the client exits in time")
            .expect("wait for the client");
        status.code().expect("exited, not killed by a signal")
    }
}

/// `[HH:MM:SS] <sender>: <content>`
fn is_message_line(line: &str, sender: &str, content: &str) -> bool {
    let bytes = line.as_bytes();
    bytes.len() > 11
        && bytes[0] == b'['
        && bytes[3] == b':'
        && bytes[6] == b':'
        && bytes[9] == b']'
        && line[11..] == format!("{sender}: {content}")
}

/// `> <content> (sent #<id>)`: the id.
fn sent_id(line: &str, content: &str) -> Option<i64> {
    line.strip_prefix(&format!("> {content} (sent #"))?
        .strip_suffix(')')?
        .parse()
        .ok()
}

/// Signs a user up over REST: (id, token).
async fn signup(server: &TestServer, username: &str) -> (i64, String) {
    let body = server.user(username).await;
    let id = body["id"].as_i64().expect("user id");
    let token = body["token"]
        .as_str()
        .expect("token (auth is on)")
        .to_owned();
    (id, token)
}

async fn user_id_of(server: &TestServer, token: &str, username: &str) -> i64 {
    let (status, users) = server
        .send(
            server
                .http
                .get(server.url("/users/?limit=1000"))
                .bearer_auth(token),
        )
        .await;
    assert_eq!(status, 200, "list users: {users}");
    users
        .as_array()
        .and_then(|list| list.iter().find(|u| u["username"] == username))
        .and_then(|u| u["id"].as_i64())
        .unwrap_or_else(|| panic!("{username} is not in the directory: {users}"))
}

/// Sends a message over REST as the token's user.
async fn rest_message(
    server: &TestServer,
    token: &str,
    from: i64,
    to: i64,
    content: &str,
) -> Value {
    let (status, body) = server
        .send(
            server
                .http
                .post(server.url("/messages/"))
                .bearer_auth(token)
                .json(&json!({"sender_id": from, "receiver_id": to, "content": content})),
        )
        .await;
    assert_eq!(status, 200, "send {content:?}: {body}");
    body
}

async fn history(server: &TestServer, token: &str, me: i64, with: i64) -> Vec<Value> {
    let (status, body) = server
        .send(
            server
                .http
                .get(server.url(&format!(
                    "/messages/?user_id={me}&chat_with={with}&limit=1000"
                )))
                .bearer_auth(token),
        )
        .await;
    assert_eq!(status, 200, "history: {body}");
    body.as_array().cloned().unwrap_or_default()
}

/// The next message from `sender` on `ws`, skipping other frames (typing, read, presence, and
/// the messages the socket's own user sent from elsewhere).
async fn next_message_from(ws: &mut Ws, sender: i64) -> Value {
    loop {
        let frame = ws.next_json().await;
        if frame["type"] == "message" && frame["sender_id"] == sender {
            return frame;
        }
    }
}

/// Asserts that no message from `sender` is pending on `ws`: a ping's pong comes before any.
async fn assert_no_pending_message_from(ws: &mut Ws, sender: i64) {
    ws.send_json(json!({"type": "ping"})).await;
    loop {
        let frame = ws.next_json().await;
        if frame["type"] == "pong" {
            return;
        }
        assert!(
            frame["type"] != "message" || frame["sender_id"] != sender,
            "unexpected message: {frame}"
        );
    }
}

#[tokio::test]
async fn chats_over_stdin_and_stdout_and_resumes_after_a_drop() {
    let backends = Backends::new(Backend::Memory).await;
    let mut server = TestServer::start(backends.settings(minichat::server::AuthMode::Token)).await;
    let proxy = TcpProxy::start(server.addr).await;

    let peer_name = name("peer");
    let (peer, peer_token) = signup(&server, &peer_name).await;
    let mut peer_ws =
        Ws::connect_ready(&server.ws_url(&format!("/ws/{peer}?token={peer_token}"))).await;

    let me_name = name("term");
    let mut client = Client::spawn(&[
        "--server",
        &proxy.url("http"),
        "--signup",
        &me_name,
        "--peer",
        &peer_name,
    ]);
    client
        .expect("the token", |l| {
            l.starts_with(&format!("* signed up as {me_name} (id ")) && l.contains("token: ")
        })
        .await;
    client
        .expect("the connection", |l| {
            l == format!("* connected as {me_name}")
        })
        .await;
    let me = user_id_of(&server, &peer_token, &me_name).await;

    // A typed line reaches the peer and is acknowledged with its id.
    client.type_line("hello from the terminal").await;
    let ack = client
        .expect("the ack", |l| {
            sent_id(l, "hello from the terminal").is_some()
        })
        .await;
    let sent = sent_id(&ack, "hello from the terminal").expect("id");
    let received = next_message_from(&mut peer_ws, me).await;
    assert_eq!(received["id"], sent, "{received}");
    assert_eq!(received["sender_id"], me);
    assert_eq!(received["content"], "hello from the terminal");

    // A message from the peer is printed.
    rest_message(&server, &peer_token, peer, me, "hi from the peer").await;
    client
        .expect("the peer's message", |l| {
            is_message_line(l, &peer_name, "hi from the peer")
        })
        .await;

    // `/history` lists both, oldest first.
    client.type_line("/history").await;
    client
        .expect("the history header", |l| {
            l.starts_with("* last 2 message(s) with")
        })
        .await;
    let listed = client
        .lines_until("the end of history", |l| l == "* end of history")
        .await;
    let mine = listed
        .iter()
        .position(|l| is_message_line(l, &me_name, "hello from the terminal"));
    let theirs = listed
        .iter()
        .position(|l| is_message_line(l, &peer_name, "hi from the peer"));
    assert!(
        matches!((mine, theirs), (Some(a), Some(b)) if a < b),
        "history out of order or incomplete: {listed:?}"
    );

    // The connection drops; while the client is away the peer writes, and the client queues the
    // same line twice.
    proxy.cut();
    client
        .expect("the drop", |l| l.starts_with("* reconnecting…"))
        .await;
    rest_message(&server, &peer_token, peer, me, "missed while down").await;
    for _ in 0..2 {
        client.type_line("queued while down").await;
        client
            .expect("the line queued", |l| {
                l.starts_with("* not connected: queued")
            })
            .await;
    }

    proxy.restore();
    client
        .expect("the reconnect", |l| l == "* reconnected")
        .await;
    let mut after = client
        .lines_until("the first queued line's ack", |l| {
            sent_id(l, "queued while down").is_some()
        })
        .await;
    after.extend(
        client
            .lines_until("the second queued line's ack", |l| {
                sent_id(l, "queued while down").is_some()
            })
            .await,
    );
    let acked: HashSet<i64> = after
        .iter()
        .filter_map(|l| sent_id(l, "queued while down"))
        .collect();
    assert_eq!(acked.len(), 2, "two lines, two messages: {after:?}");
    rest_message(&server, &peer_token, peer, me, "after the reconnect").await;
    after.extend(
        client
            .lines_until("a message after the reconnect", |l| {
                is_message_line(l, &peer_name, "after the reconnect")
            })
            .await,
    );
    let missed = after
        .iter()
        .filter(|l| is_message_line(l, &peer_name, "missed while down"))
        .count();
    assert_eq!(missed, 1, "the missed message, exactly once: {after:?}");
    for old in ["hi from the peer", "hello from the terminal"] {
        assert!(
            !after.iter().any(|l| l.ends_with(old)),
            "{old:?} printed again after the reconnect: {after:?}"
        );
    }

    assert_eq!(
        after
            .iter()
            .filter(|l| sent_id(l, "queued while down").is_some())
            .count(),
        2,
        "each queued line acknowledged once: {after:?}"
    );

    // Each queued line reached the peer once, and was stored once.
    let mut delivered = HashSet::new();
    for _ in 0..2 {
        let queued = next_message_from(&mut peer_ws, me).await;
        assert_eq!(queued["content"], "queued while down", "{queued}");
        delivered.insert(queued["id"].as_i64().expect("id"));
    }
    assert_eq!(delivered, acked);
    assert_no_pending_message_from(&mut peer_ws, me).await;
    let stored = history(&server, &peer_token, peer, me).await;
    let copies = stored
        .iter()
        .filter(|m| m["content"] == "queued while down")
        .count();
    assert_eq!(copies, 2, "each stored once: {stored:?}");

    client.type_line("/quit").await;
    assert_eq!(client.exit_code().await, 0, "{:?}", client.transcript);
    server.shutdown().await;
}

#[tokio::test]
async fn existing_user_picks_a_peer_and_flushes_at_the_end_of_input() {
    let backends = Backends::new(Backend::Memory).await;
    let mut server = TestServer::start(backends.settings(minichat::server::AuthMode::Token)).await;
    let other_name = name("other");
    let (other, other_token) = signup(&server, &other_name).await;
    let me_name = name("term");
    let (me, my_token) = signup(&server, &me_name).await;
    let url = format!("http://{}", server.addr);

    // A bad token is refused with a clear line and a failure status.
    let mut refused = Client::spawn(&[
        "--server",
        &url,
        "--user-id",
        &me.to_string(),
        "--token",
        "not-a-token",
    ]);
    let complaint = refused.expect("the refusal", |l| l.starts_with("! ")).await;
    assert!(complaint.contains("401"), "{complaint}");
    assert_ne!(refused.exit_code().await, 0);

    let mut client = Client::spawn(&[
        "--server",
        &url,
        "--user-id",
        &me.to_string(),
        "--token",
        &my_token,
    ]);
    client
        .expect("the connection", |l| {
            l == format!("* connected as {me_name}")
        })
        .await;
    client.type_line("nobody to send this to").await;
    client
        .expect("the missing peer", |l| l.starts_with("! no peer yet"))
        .await;
    client.type_line(&format!("/peer {}", name("ghost"))).await;
    client
        .expect("an unknown user", |l| l.starts_with("! no user named"))
        .await;
    client.type_line(&format!("/peer {other_name}")).await;
    client
        .expect("the peer", |l| {
            l == format!("* chatting with {other_name} (#{other})")
        })
        .await;

    // The last line is followed by the end of input: it is still delivered before the exit.
    client.type_line("last words").await;
    client.close_stdin();
    assert_eq!(client.exit_code().await, 0, "{:?}", client.transcript);
    assert!(
        client
            .transcript
            .iter()
            .any(|l| sent_id(l, "last words").is_some()),
        "{:?}",
        client.transcript
    );
    let stored = history(&server, &other_token, other, me).await;
    assert!(
        stored
            .iter()
            .any(|m| m["content"] == "last words" && m["sender_id"] == me),
        "{stored:?}"
    );
    server.shutdown().await;
}

/// `[HH:MM:SS] #<title> <sender>: <content>`
fn is_group_line(line: &str, title: &str, sender: &str, content: &str) -> bool {
    line.len() > 11
        && line.starts_with('[')
        && line[11..] == format!("#{title} {sender}: {content}")
}

#[tokio::test]
async fn makes_a_group_talks_in_it_and_switches_back_to_a_peer() {
    let backends = Backends::new(Backend::Memory).await;
    let mut server = TestServer::start(backends.settings(minichat::server::AuthMode::Token)).await;
    let (bob_name, carol_name, me_name) = (name("bob"), name("carol"), name("term"));
    let (bob, bob_token) = signup(&server, &bob_name).await;
    let (carol, carol_token) = signup(&server, &carol_name).await;
    let (me, my_token) = signup(&server, &me_name).await;
    let mut bob_ws =
        Ws::connect_ready(&server.ws_url(&format!("/ws/{bob}?token={bob_token}"))).await;
    let url = format!("http://{}", server.addr);
    let mut client = Client::spawn(&[
        "--server",
        &url,
        "--user-id",
        &me.to_string(),
        "--token",
        &my_token,
    ]);
    client
        .expect("the connection", |l| {
            l == format!("* connected as {me_name}")
        })
        .await;

    client.type_line("/group").await;
    client
        .expect("the usage", |l| l.starts_with("! usage: /group"))
        .await;
    client
        .type_line(&format!("/group team {bob_name} {carol_name}"))
        .await;
    let opened = client
        .expect("the group", |l| l.starts_with("* in group team (#"))
        .await;
    let group: i64 = opened
        .trim_start_matches("* in group team (#")
        .trim_end_matches(')')
        .parse()
        .expect("group id");
    client
        .expect("the created event", |l| {
            l.starts_with(&format!("* {me_name} made the group team (#{group}) with"))
        })
        .await;
    let created = bob_ws.next_json().await;
    assert_eq!(
        (created["type"].as_str(), created["event"].as_str()),
        (Some("conversation"), Some("created"))
    );

    // A line goes to the group; the others get it as a group message.
    client.type_line("hello team").await;
    client
        .expect("the ack", |l| sent_id(l, "hello team").is_some())
        .await;
    let got = next_message_from(&mut bob_ws, me).await;
    assert_eq!(
        (got["conversation_id"].as_i64(), got["receiver_id"].clone()),
        (Some(group), Value::Null)
    );
    // What a member sends shows with the group's title, and is marked read.
    let (status, _) = server
        .send(
            server
                .http
                .post(server.url("/messages/"))
                .bearer_auth(&carol_token)
                .json(&json!({"sender_id": carol, "conversation_id": group, "content": "hi from carol"})),
        )
        .await;
    assert_eq!(status, 200);
    client
        .expect("carol's message", |l| {
            is_group_line(l, "team", &carol_name, "hi from carol")
        })
        .await;
    let read = loop {
        let frame = bob_ws.next_json().await;
        if frame["type"] == "read" {
            break frame;
        }
    };
    assert_eq!(
        (read["reader_id"].as_i64(), read["conversation_id"].as_i64()),
        (Some(me), Some(group))
    );
    client.type_line("/history").await;
    client
        .expect("the group's history", |l| {
            is_group_line(l, "team", &carol_name, "hi from carol")
        })
        .await;

    // Back to a peer by name: lines go to bob directly.
    rest_message(&server, &bob_token, bob, me, "direct one").await;
    client
        .expect("bob's message", |l| {
            is_message_line(l, &bob_name, "direct one")
        })
        .await;
    client.type_line(&format!("/open {bob_name}")).await;
    client
        .expect("the peer", |l| {
            l == format!("* chatting with {bob_name} (#{bob})")
        })
        .await;
    client.type_line("just you").await;
    client
        .expect("the ack", |l| sent_id(l, "just you").is_some())
        .await;
    let direct = next_message_from(&mut bob_ws, me).await;
    assert_eq!(direct["receiver_id"], bob);
    client.type_line("/open team").await;
    client
        .expect("the group again", |l| {
            l == format!("* in group team (#{group})")
        })
        .await;
    client.type_line("/open nobody").await;
    client
        .expect("no such conversation", |l| {
            l.starts_with("! no conversation named")
        })
        .await;
    client.close_stdin();
    assert_eq!(client.exit_code().await, 0, "{:?}", client.transcript);
    server.shutdown().await;
}
