//! Group conversations on two nodes sharing PostgreSQL and Redis: a member who keeps dropping
//! and reconnecting (alternating nodes, with `since`) while group messages and membership
//! changes are made on both nodes gets every one of them exactly once, in one gapless stream;
//! and a group message reaches each member's sockets on both nodes exactly once.

mod support;

use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use support::{busy, name, Backend, Backends, TestServer, Ws};

fn id(v: &Value) -> i64 {
    v["id"].as_i64().expect("id")
}

/// What a member's stream held so far: the last seq, the messages and the membership events.
#[derive(Default)]
struct Seen {
    last_seq: i64,
    messages: HashSet<i64>,
    /// `(event, seq)` of the membership events.
    changes: Vec<(String, i64)>,
}

/// Reads events until `idle` passes with none (or `budget` were read), checking that each
/// continues the stream (seq exactly one more than the last) and that no message repeats.
async fn read_events(ws: &mut Ws, seen: &mut Seen, budget: usize, idle: Duration) {
    use futures_util::StreamExt;
    let mut read = 0;
    while read < budget {
        let text = match tokio::time::timeout(idle, ws.stream.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
            Ok(_) | Err(_) => break,
        };
        let frame: Value = serde_json::from_str(&text).expect("JSON frame");
        let kind = frame["type"].as_str().unwrap_or_default();
        if kind != "message" && kind != "conversation" {
            continue;
        }
        let seq = frame["seq"].as_i64().expect("seq");
        assert_eq!(
            seq,
            seen.last_seq + 1,
            "gap or reorder after {}: {frame}",
            seen.last_seq
        );
        seen.last_seq = seq;
        if kind == "message" {
            assert!(seen.messages.insert(id(&frame)), "delivered twice: {frame}");
        } else {
            let event = frame["event"].as_str().unwrap_or_default().to_owned();
            seen.changes.push((event, seq));
        }
        read += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_member_loses_no_group_message_or_change_across_nodes() {
    const ROUNDS: usize = 4;
    const SENDERS: usize = 3;
    const PER_SENDER: usize = 12;
    let backends = Backends::new(Backend::Shared).await;
    let nodes = [
        TestServer::start(busy(&backends)).await,
        TestServer::start(busy(&backends)).await,
    ];
    let member = id(&nodes[0].user(&name("member")).await);
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        senders.push(id(&nodes[i % 2].user(&name(&format!("snd{i}x"))).await));
    }
    let guests: Vec<i64> = {
        let mut guests = Vec::new();
        for i in 0..ROUNDS {
            guests.push(id(&nodes[i % 2].user(&name(&format!("guest{i}x"))).await));
        }
        guests
    };
    let owner = senders[0];
    let mut members = senders.clone();
    members.push(member);
    let (status, group) = nodes[1]
        .post(
            "/conversations/",
            json!({"creator_id": owner, "title": "loss test", "member_ids": members}),
        )
        .await;
    assert_eq!(status, 200, "{group}");
    let group = id(&group);
    let base: Vec<String> = nodes.iter().map(|n| n.url("")).collect();

    let mut seen = Seen::default();
    let mut expected_messages = 0;
    let mut expected_changes = 1; // created
    let mut connections = 0;
    for round in 0..ROUNDS {
        let mut tasks = Vec::new();
        for (k, &sender) in senders.iter().enumerate() {
            let (http, base) = (nodes[0].http.clone(), base.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..PER_SENDER {
                    let body = json!({"sender_id": sender, "conversation_id": group, "content": format!("r{round} s{k} m{i}")});
                    let url = format!("{}/messages/", base[(i + k) % 2]);
                    let response = http.post(&url).json(&body).send().await.expect("send");
                    assert_eq!(response.status(), 200);
                }
            }));
        }
        // Meanwhile the owner adds a guest on one node and removes them on the other.
        let (http, base, guest) = (nodes[0].http.clone(), base.clone(), guests[round]);
        tasks.push(tokio::spawn(async move {
            let add = format!("{}/conversations/{group}/members", base[round % 2]);
            let body = json!({"user_id": owner, "member_ids": [guest]});
            let response = http.post(&add).json(&body).send().await.expect("add");
            assert_eq!(response.status(), 200);
            let remove = format!(
                "{}/conversations/{group}/members/{guest}?user_id={owner}",
                base[(round + 1) % 2]
            );
            let response = http.delete(&remove).send().await.expect("remove");
            assert_eq!(response.status(), 200);
        }));
        expected_messages += SENDERS * PER_SENDER;
        expected_changes += 2;
        // The member drops and comes back, alternating nodes, at random moments.
        let mut all_sent = false;
        loop {
            let node = &nodes[connections % 2];
            connections += 1;
            let url = node.ws_url(&format!("/ws/{member}?since={}", seen.last_seq));
            let mut ws = Ws::connect_ready(&url).await;
            let budget = 1 + rand::random::<u32>() as usize % 12;
            read_events(&mut ws, &mut seen, budget, Duration::from_millis(300)).await;
            drop(ws);
            if !all_sent && tasks.iter().all(|t| t.is_finished()) {
                all_sent = true;
            }
            if all_sent
                && seen.messages.len() == expected_messages
                && seen.changes.len() == expected_changes
            {
                break;
            }
            assert!(connections < 2000, "no progress");
        }
        for task in tasks {
            task.await.expect("task");
        }
    }
    assert_eq!(seen.last_seq as usize, expected_messages + expected_changes);
    let kinds: Vec<&str> = seen.changes.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(kinds[0], "created");
    assert_eq!(
        kinds.iter().filter(|&&k| k == "member_added").count(),
        ROUNDS
    );
    assert_eq!(
        kinds.iter().filter(|&&k| k == "member_removed").count(),
        ROUNDS
    );
    // Exactly what the group's history holds.
    let (_, history) = nodes[1]
        .get(&format!(
            "/messages/?user_id={member}&conversation_id={group}&limit=1000"
        ))
        .await;
    let stored: HashSet<i64> = history.as_array().expect("list").iter().map(id).collect();
    assert_eq!(stored, seen.messages);
    // A guest who was removed sees the group no more, on either node.
    for node in &nodes {
        let (status, _) = node
            .get(&format!("/conversations/{group}?user_id={}", guests[0]))
            .await;
        assert_eq!(status, 404);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_message_reaches_every_members_sockets_on_both_nodes_once() {
    let backends = Backends::new(Backend::Shared).await;
    let nodes = [
        TestServer::start(busy(&backends)).await,
        TestServer::start(busy(&backends)).await,
    ];
    let mut users = Vec::new();
    for i in 0..4 {
        users.push(id(&nodes[i % 2].user(&name("m")).await));
    }
    let (status, group) = nodes[0]
        .post(
            "/conversations/",
            json!({"creator_id": users[0], "title": "both nodes", "member_ids": users}),
        )
        .await;
    assert_eq!(status, 200);
    let group = id(&group);
    // Every member on both nodes, from the start of their stream.
    let mut sockets = Vec::new();
    for &user in &users {
        for node in &nodes {
            let url = node.ws_url(&format!("/ws/{user}?since=0"));
            sockets.push((user, Ws::connect_ready(&url).await));
        }
    }
    let fanouts_before = group_fanouts(&nodes[0]).await;
    let mut sent = Vec::new();
    for (k, &sender) in users.iter().enumerate() {
        let (status, body) = nodes[k % 2]
            .post(
                "/messages/",
                json!({"sender_id": sender, "conversation_id": group, "content": format!("from {k}")}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["delivered_via_websocket"], true);
        sent.push(id(&body));
    }
    for (user, ws) in &mut sockets {
        let created = ws.next_json().await;
        assert_eq!(
            (created["event"].as_str(), created["seq"].as_i64()),
            (Some("created"), Some(1))
        );
        for (k, expected) in sent.iter().enumerate() {
            let frame = ws.next_json().await;
            assert_eq!(
                frame["id"].as_i64(),
                Some(*expected),
                "user {user}: {frame}"
            );
            assert_eq!(
                frame["seq"].as_i64(),
                Some(k as i64 + 2),
                "each user's own seq"
            );
        }
        ws.assert_no_pending_message().await;
    }
    // Three other members on two nodes: each message went to both nodes as one Redis message
    // (the process's counter; a concurrent test can only add to it).
    assert!(group_fanouts(&nodes[0]).await - fanouts_before >= sent.len() as f64);
}

/// `minichat_redis_group_fanouts_total` as `node` exports it (process-wide).
async fn group_fanouts(node: &TestServer) -> f64 {
    node.metric("minichat_redis_group_fanouts_total")
        .await
        .expect("the group fan-out counter")
}
