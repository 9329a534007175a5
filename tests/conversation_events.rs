//! Conversations (API.md Part 4) on the WebSocket: group messages and membership events live
//! to every member, `since` over both, typing and read receipts per conversation. One suite,
//! run against both backends: in memory, and PostgreSQL + Redis. The REST side is
//! `tests/conversations.rs`.

#[macro_use]
mod support;

use serde_json::{json, Value};
use support::conversations::*;
use support::{Backend, Ws};

suite!(
    members_get_group_messages_and_membership_events_live,
    since_replays_group_messages_and_membership_events,
    typing_and_read_receipts_per_conversation,
);

async fn members_get_group_messages_and_membership_events_live(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let u = users(&s, 4).await;
    let (a, b, c, d) = (u[0], u[1], u[2], u[3]);
    let ws_url = |user: i64| s.ws_url(&format!("/ws/{user}"));
    let mut wa = Ws::connect_ready(&ws_url(a)).await;
    let mut wa2 = Ws::connect_ready(&ws_url(a)).await;
    let mut wb = Ws::connect_ready(&ws_url(b)).await;
    let mut wc = Ws::connect_ready(&ws_url(c)).await;

    let g = group(&s, a, "team", &[b, c]).await;
    let gid = id(&g);
    for ws in [&mut wa, &mut wa2, &mut wb, &mut wc] {
        let created = next_event(ws).await;
        assert_eq!(created["type"], "conversation", "{created}");
        assert_eq!(created["event"], "created");
        assert_eq!(created["conversation"], g);
        assert_eq!(created["user_ids"], json!([a, b, c]));
        assert_eq!(created["by"], a);
        assert_eq!(created["seq"], 1, "the first event of each stream");
    }

    // A group message over the socket: acked to the sender, delivered once to everyone else.
    wa.send_json(
        json!({"type": "message", "conversation_id": gid, "content": "hi all", "client_id": "k1"}),
    )
    .await;
    let ack = next_event(&mut wa).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["client_id"], "k1");
    assert_eq!(ack["message"]["conversation_id"], gid);
    assert_eq!(ack["message"]["seq"], 2);
    let own = next_event(&mut wa2).await;
    assert_eq!(
        (own["content"].as_str(), own["client_id"].as_str()),
        (Some("hi all"), Some("k1"))
    );
    for ws in [&mut wb, &mut wc] {
        let m = next_event(ws).await;
        assert_eq!(m["type"], "message");
        assert_eq!(m["content"], "hi all");
        assert_eq!(m["receiver_id"], Value::Null);
        assert_eq!(m["sender_id"], a);
        assert_eq!(m["seq"], 2);
        assert!(
            m.get("client_id").is_none(),
            "others never see the client id"
        );
    }
    // Over REST, the sender's connections get it too; the ack says someone was connected.
    let sent = send_to(&s, b, gid, "from b").await;
    assert_eq!(sent["delivered_via_websocket"], true);
    for ws in [&mut wa, &mut wa2, &mut wb, &mut wc] {
        let m = next_event(ws).await;
        assert_eq!(
            (m["content"].as_str(), m["seq"].as_i64()),
            (Some("from b"), Some(3))
        );
    }

    // Membership changes reach every member, the actor included, and the removed.
    let (status, _) = s
        .post(
            &format!("/conversations/{gid}/members"),
            json!({"user_id": a, "member_ids": [d]}),
        )
        .await;
    assert_eq!(status, 200);
    let mut wd = Ws::connect_ready(&format!("{}?since=0", ws_url(d))).await;
    let added = next_event(&mut wd).await;
    assert_eq!(
        (added["event"].as_str(), added["seq"].as_i64()),
        (Some("member_added"), Some(1))
    );
    for ws in [&mut wa, &mut wb, &mut wc] {
        let e = next_event(ws).await;
        assert_eq!(e["event"], "member_added", "{e}");
        assert_eq!(e["user_ids"], json!([d]));
        assert_eq!(e["by"], a);
        assert_eq!(e["seq"], 4);
    }
    let (status, _) = delete(&s, &format!("/conversations/{gid}/members/{c}?user_id={a}")).await;
    assert_eq!(status, 200);
    for ws in [&mut wa, &mut wb, &mut wc, &mut wd] {
        let e = next_event(ws).await;
        assert_eq!(e["event"], "member_removed", "{e}");
        assert_eq!(e["user_ids"], json!([c]));
        assert!(!member_ids(&e["conversation"]).contains(&c));
    }
    // The removed member gets no more of the group.
    send_to(&s, d, gid, "after").await;
    for ws in [&mut wa, &mut wb] {
        assert_eq!(next_event(ws).await["content"], "after");
    }
    wc.assert_no_pending_message().await;
    wa2.send_json(json!({"type": "ping"})).await;
}

async fn since_replays_group_messages_and_membership_events(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let u = users(&s, 3).await;
    let (a, b, c) = (u[0], u[1], u[2]);
    s.message(a, b, "direct").await;
    let g = id(&group(&s, a, "g", &[b]).await);
    send_to(&s, b, g, "one").await;
    let (status, _) = patch(
        &s,
        &format!("/conversations/{g}"),
        json!({"user_id": a, "title": "h"}),
    )
    .await;
    assert_eq!(status, 200);
    s.post(
        &format!("/conversations/{g}/members"),
        json!({"user_id": a, "member_ids": [c]}),
    )
    .await;
    send_to(&s, a, g, "two").await;

    let mut replay = Ws::connect_ready(&s.ws_url(&format!("/ws/{b}?since=0"))).await;
    let mut kinds = Vec::new();
    for expected_seq in 1..=6 {
        let e = next_event(&mut replay).await;
        assert_eq!(e["seq"], expected_seq, "gapless and in order: {e}");
        kinds.push(match e["type"].as_str() {
            Some("conversation") => e["event"].as_str().unwrap_or_default().to_owned(),
            _ => e["content"].as_str().unwrap_or_default().to_owned(),
        });
    }
    assert_eq!(
        kinds,
        ["direct", "created", "one", "renamed", "member_added", "two"]
    );
    replay.assert_no_pending_message().await;
    // Resuming in the middle gives the rest only.
    let mut resumed = Ws::connect_ready(&s.ws_url(&format!("/ws/{b}?since=4"))).await;
    assert_eq!(next_event(&mut resumed).await["event"], "member_added");
    assert_eq!(next_event(&mut resumed).await["content"], "two");
    resumed.assert_no_pending_message().await;
    // The renamed event carries the conversation as it was then.
    let mut from_c = Ws::connect_ready(&s.ws_url(&format!("/ws/{c}?since=0"))).await;
    let added = next_event(&mut from_c).await;
    assert_eq!(added["conversation"]["title"], "h");
    assert_eq!(member_ids(&added["conversation"]), vec![a, b, c]);
}

async fn typing_and_read_receipts_per_conversation(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let u = users(&s, 4).await;
    let (a, b, c, outsider) = (u[0], u[1], u[2], u[3]);
    let g = id(&group(&s, a, "g", &[b, c]).await);
    let mut wa = Ws::connect_ready(&s.ws_url(&format!("/ws/{a}"))).await;
    let mut wb = Ws::connect_ready(&s.ws_url(&format!("/ws/{b}"))).await;
    let mut wc = Ws::connect_ready(&s.ws_url(&format!("/ws/{c}"))).await;
    let mut wo = Ws::connect_ready(&s.ws_url(&format!("/ws/{outsider}"))).await;

    wa.send_json(json!({"type": "typing", "conversation_id": g}))
        .await;
    for ws in [&mut wb, &mut wc] {
        assert_eq!(
            next_event(ws).await,
            json!({"type": "typing", "sender_id": a, "conversation_id": g})
        );
    }
    wa.assert_no_pending_message().await;
    wo.send_json(json!({"type": "typing", "conversation_id": g}))
        .await;
    let err = next_event(&mut wo).await;
    assert_eq!(
        (err["type"].as_str(), err["status"].as_i64()),
        (Some("error"), Some(404))
    );
    wo.send_json(json!({"type": "typing", "conversation_id": g, "receiver_id": a}))
        .await;
    assert_eq!(next_event(&mut wo).await["status"], 422);

    let m = send_to(&s, b, g, "read me").await;
    for ws in [&mut wa, &mut wc] {
        assert_eq!(next_event(ws).await["content"], "read me");
    }
    assert_eq!(next_event(&mut wb).await["content"], "read me");
    wc.send_json(json!({"type": "read", "conversation_id": g, "up_to": m["id"]}))
        .await;
    for ws in [&mut wa, &mut wb] {
        assert_eq!(
            next_event(ws).await,
            json!({"type": "read", "reader_id": c, "conversation_id": g, "up_to": m["id"]})
        );
    }
    wc.assert_no_pending_message().await;
    // Only another member's message of that conversation can be marked.
    wb.send_json(json!({"type": "read", "conversation_id": g, "up_to": m["id"]}))
        .await;
    assert_eq!(next_event(&mut wb).await["status"], 404);

    // Part 3's forms keep working in direct conversations.
    let d = s.message(a, b, "direct").await;
    assert_eq!(next_event(&mut wb).await["content"], "direct");
    assert_eq!(next_event(&mut wa).await["content"], "direct");
    wb.send_json(json!({"type": "typing", "receiver_id": a}))
        .await;
    assert_eq!(
        next_event(&mut wa).await,
        json!({"type": "typing", "sender_id": b})
    );
    wb.send_json(json!({"type": "read", "peer_id": a, "up_to": d["id"]}))
        .await;
    let read = next_event(&mut wa).await;
    assert_eq!(
        (read["reader_id"].as_i64(), read["up_to"].clone()),
        (Some(b), d["id"].clone())
    );
    assert_eq!(read["conversation_id"], d["conversation_id"]);
    let (_, marks) = s
        .get(&format!("/messages/read?user_id={a}&chat_with={b}"))
        .await;
    assert_eq!(
        marks,
        json!({"read_up_to": null, "peer_read_up_to": d["id"]})
    );
}
