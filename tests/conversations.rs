//! Conversations (API.md Part 4) over real HTTP: groups, direct conversations, the inbox and
//! its unread counts, roles, and the permission matrix with tokens. One suite, run against both
//! backends: in memory, and PostgreSQL + Redis (each test with its own database and Redis
//! prefix). The events of the WebSocket stream are `tests/conversation_events.rs`.

#[macro_use]
mod support;

use minichat_server::AuthMode;
use serde_json::{json, Value};
use support::conversations::*;
use support::{name, Backend, Ws};

suite!(
    a_group_is_made_with_its_creator_as_owner,
    group_messages_and_conversation_history,
    direct_conversations_are_made_by_the_first_message,
    the_inbox_orders_by_activity_and_counts_unread,
    roles_decide_who_changes_a_group,
    tokens_act_only_as_their_user,
);

async fn a_group_is_made_with_its_creator_as_owner(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let u = users(&s, 4).await;
    // The creator is a member whether listed or not; duplicates count once.
    let g = group(&s, u[0], "  Team  ", &[u[2], u[1], u[2], u[0]]).await;
    assert_eq!(g["kind"], "group");
    assert_eq!(g["title"], "Team", "stripped");
    assert_eq!(g["created_by"], u[0]);
    assert_eq!(member_ids(&g), vec![u[0], u[1], u[2]]);
    assert_eq!(role_of(&g, u[0]), "owner");
    assert_eq!(role_of(&g, u[1]), "member");
    assert!(g["created_at"].is_string() && g["members"][0]["joined_at"].is_string());

    let (status, got) = s
        .get(&format!("/conversations/{}?user_id={}", id(&g), u[1]))
        .await;
    assert_eq!((status, &got), (200, &g));
    // A non-member, an unknown id: the same 404, so ids cannot be probed.
    for path in [
        format!("/conversations/{}?user_id={}", id(&g), u[3]),
        format!("/conversations/999999?user_id={}", u[0]),
    ] {
        let (status, body) = s.get(&path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["detail"], "Conversation not found");
    }
    let (status, _) = s.get(&format!("/conversations/{}", id(&g))).await;
    assert_eq!(status, 422, "user_id is required");

    // 404 naming no one; nothing made.
    let (status, body) = s
        .post(
            "/conversations/",
            json!({"creator_id": u[0], "title": "x", "member_ids": [u[1], 999999]}),
        )
        .await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (404, Some("User not found"))
    );
    for (body, field) in [
        (
            json!({"creator_id": u[0], "title": "   ", "member_ids": []}),
            "title",
        ),
        (
            json!({"creator_id": u[0], "title": "x".repeat(101), "member_ids": []}),
            "title",
        ),
        // Five with the creator, over the limit of four.
        (
            json!({"creator_id": u[0], "title": "big", "member_ids": [u[1], u[2], u[3], 999999]}),
            "member_ids",
        ),
    ] {
        let (status, err) = s.post("/conversations/", body).await;
        assert_eq!(status, 422, "{err}");
        assert_eq!(err["detail"][0]["loc"], json!(["body", field]), "{err}");
    }
    let (status, inbox) = s.get(&format!("/conversations/?user_id={}", u[3])).await;
    assert_eq!((status, inbox), (200, json!([])), "no group was half-made");
}

async fn group_messages_and_conversation_history(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let u = users(&s, 4).await;
    let g = id(&group(&s, u[0], "g", &[u[1], u[2]]).await);
    let first = send_to(&s, u[1], g, " hello ").await;
    assert_eq!(first["conversation_id"], g);
    assert_eq!(first["receiver_id"], Value::Null);
    assert_eq!(first["content"], "hello");
    assert_eq!(first["type"], "message");
    assert_eq!(first["delivered_via_websocket"], false);
    let second = send_to(&s, u[0], g, "second").await;
    let third = send_to(&s, u[2], g, "third").await;

    // A non-member sends nothing and learns nothing.
    let (status, body) = s
        .post(
            "/messages/",
            json!({"sender_id": u[3], "conversation_id": g, "content": "hi"}),
        )
        .await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (404, Some("Conversation not found"))
    );
    for body in [
        json!({"sender_id": u[0], "conversation_id": g, "receiver_id": u[1], "content": "hi"}),
        json!({"sender_id": u[0], "content": "hi"}),
    ] {
        let (status, err) = s.post("/messages/", body).await;
        assert_eq!(status, 422, "{err}");
        assert_eq!(err["detail"][0]["loc"], json!(["body", "conversation_id"]));
    }
    let (status, _) = s
        .post(
            "/messages/",
            json!({"sender_id": u[0], "conversation_id": g, "content": "  "}),
        )
        .await;
    assert_eq!(status, 422, "content rules hold for group messages");

    let history = |user: i64, extra: &str| {
        let path = format!("/messages/?user_id={user}&conversation_id={g}{extra}");
        let s = &s;
        async move { s.get(&path).await }
    };
    let (status, all) = history(u[2], "").await;
    assert_eq!(status, 200);
    let ids: Vec<i64> = all.as_array().expect("list").iter().map(id).collect();
    assert_eq!(
        ids,
        vec![id(&third), id(&second), id(&first)],
        "newest first"
    );
    let (_, older) = history(u[0], &format!("&before_id={}&limit=1", id(&third))).await;
    assert_eq!(older.as_array().map(Vec::len), Some(1));
    assert_eq!(older[0]["id"], second["id"]);
    let (status, _) = history(u[3], "").await;
    assert_eq!(status, 404, "a non-member reads no history");
    let (status, _) = s
        .get(&format!(
            "/messages/?user_id={}&conversation_id={g}&chat_with={}",
            u[0], u[1]
        ))
        .await;
    assert_eq!(
        status, 422,
        "chat_with and conversation_id exclude each other"
    );

    // Part 1's history is direct messages, as it always was.
    let (_, direct) = s.get(&format!("/messages/?user_id={}", u[0])).await;
    assert_eq!(direct, json!([]));
}

async fn direct_conversations_are_made_by_the_first_message(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let u = users(&s, 3).await;
    let first = s.message(u[0], u[1], "hi").await;
    let conversation = first["conversation_id"].as_i64().expect("conversation_id");
    assert_eq!(first["receiver_id"], u[1]);
    let reply = s.message(u[1], u[0], "hello").await;
    assert_eq!(reply["conversation_id"], conversation, "one per pair");
    let other = s.message(u[0], u[2], "x").await;
    assert_ne!(other["conversation_id"], conversation);

    let (status, direct) = s
        .get(&format!("/conversations/{conversation}?user_id={}", u[1]))
        .await;
    assert_eq!(status, 200, "{direct}");
    assert_eq!(direct["kind"], "direct");
    assert_eq!(direct["title"], Value::Null);
    assert_eq!(member_ids(&direct), vec![u[0], u[1]]);
    assert_eq!(role_of(&direct, u[0]), "member");
    assert_eq!(role_of(&direct, u[1]), "member");
    assert_eq!(direct["created_by"], u[0]);
    let (status, _) = s
        .get(&format!("/conversations/{conversation}?user_id={}", u[2]))
        .await;
    assert_eq!(status, 404);

    // Sending by the direct conversation's id is a message to the peer.
    let by_id = send_to(&s, u[1], conversation, "by id").await;
    assert_eq!(by_id["receiver_id"], u[0]);
    let (_, pair) = s
        .get(&format!("/messages/?user_id={}&chat_with={}", u[0], u[1]))
        .await;
    assert_eq!(pair.as_array().map(Vec::len), Some(3));
    // A direct conversation takes no members and no title.
    let (status, body) = s
        .post(
            &format!("/conversations/{conversation}/members"),
            json!({"user_id": u[0], "member_ids": [u[2]]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = patch(
        &s,
        &format!("/conversations/{conversation}"),
        json!({"user_id": u[0], "title": "t"}),
    )
    .await;
    assert_eq!(status, 422);
}

async fn the_inbox_orders_by_activity_and_counts_unread(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let u = users(&s, 3).await;
    let direct = s.message(u[1], u[0], "one").await;
    s.message(u[1], u[0], "two").await;
    let g = id(&group(&s, u[0], "g", &[u[1], u[2]]).await);
    // The group is newer than the direct conversation's last message.
    let inbox = |user: i64| {
        let path = format!("/conversations/?user_id={user}");
        let s = &s;
        async move {
            let (status, body) = s.get(&path).await;
            assert_eq!(status, 200, "{body}");
            body
        }
    };
    let list = inbox(u[0]).await;
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    assert_eq!(list[0]["id"], g);
    assert_eq!(list[0]["last_message"], Value::Null);
    assert_eq!(list[0]["member_count"], 3);
    assert_eq!(list[0]["unread"], 0);
    assert!(list[0].get("members").is_none() && list[0].get("peer_id").is_none());
    assert_eq!(list[1]["kind"], "direct");
    assert_eq!(list[1]["peer_id"], u[1]);
    assert_eq!(list[1]["unread"], 2);
    assert_eq!(list[1]["last_message"]["content"], "two");

    // A message moves its conversation up; the sender's own messages are never unread.
    let newest = s.message(u[0], u[1], "three").await;
    let list = inbox(u[0]).await;
    assert_eq!(list[0]["id"], direct["conversation_id"]);
    assert_eq!(list[0]["unread"], 2);
    assert_eq!(list[0]["last_message"]["id"], newest["id"]);
    for n in 0..3 {
        send_to(&s, u[2], g, &format!("g{n}")).await;
    }
    let list = inbox(u[0]).await;
    assert_eq!(
        (list[0]["id"].as_i64(), list[0]["unread"].as_i64()),
        (Some(g), Some(3))
    );
    assert_eq!(inbox(u[2]).await[0]["unread"], 0);

    // Reading moves the count, never back.
    let mut ws = Ws::connect_ready(&s.ws_url(&format!("/ws/{}", u[0]))).await;
    let (_, history) = s
        .get(&format!("/messages/?user_id={}&conversation_id={g}", u[0]))
        .await;
    let middle = history[1]["id"].as_i64().expect("id");
    ws.send_json(json!({"type": "read", "conversation_id": g, "up_to": middle}))
        .await;
    ws.assert_no_pending_message().await;
    assert_eq!(inbox(u[0]).await[0]["unread"], 1);
    let oldest = history[2]["id"].as_i64().expect("id");
    ws.send_json(json!({"type": "read", "conversation_id": g, "up_to": oldest}))
        .await;
    ws.assert_no_pending_message().await;
    assert_eq!(
        inbox(u[0]).await[0]["unread"],
        1,
        "a read mark never moves back"
    );

    let (_, page) = s
        .get(&format!("/conversations/?user_id={}&skip=1&limit=1", u[0]))
        .await;
    assert_eq!(page.as_array().map(Vec::len), Some(1));
    assert_eq!(page[0]["id"], direct["conversation_id"]);
    for bad in ["skip=-1", "limit=0", "limit=x"] {
        let (status, _) = s
            .get(&format!("/conversations/?user_id={}&{bad}", u[0]))
            .await;
        assert_eq!(status, 422, "{bad}");
    }
}

async fn roles_decide_who_changes_a_group(kind: Backend) {
    let (_b, s) = setup(kind).await;
    let u = users(&s, 5).await;
    let (owner, member, other, outsider, extra) = (u[0], u[1], u[2], u[3], u[4]);
    let g = id(&group(&s, owner, "g", &[member, other]).await);
    let path = format!("/conversations/{g}");
    let members_path = format!("/conversations/{g}/members");

    // A non-member gets 404 before anything else, even for a bad title.
    for body in [
        json!({"user_id": outsider, "title": "x"}),
        json!({"user_id": outsider, "title": "  "}),
    ] {
        let (status, _) = patch(&s, &path, body).await;
        assert_eq!(status, 404);
    }
    let (status, body) = patch(&s, &path, json!({"user_id": member, "title": "x"})).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = patch(&s, &path, json!({"user_id": owner, "title": " "})).await;
    assert_eq!(status, 422);
    let (status, renamed) = patch(&s, &path, json!({"user_id": owner, "title": " New "})).await;
    assert_eq!((status, renamed["title"].as_str()), (200, Some("New")));

    let (status, _) = s
        .post(
            &members_path,
            json!({"user_id": member, "member_ids": [outsider]}),
        )
        .await;
    assert_eq!(status, 403, "a member adds no one");
    let (status, _) = s
        .post(
            &members_path,
            json!({"user_id": outsider, "member_ids": [outsider]}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = s
        .post(
            &members_path,
            json!({"user_id": owner, "member_ids": [999999]}),
        )
        .await;
    assert_eq!(status, 404, "unknown user");
    let (status, _) = s
        .post(&members_path, json!({"user_id": owner, "member_ids": []}))
        .await;
    assert_eq!(status, 422);
    let (status, added) = s
        .post(
            &members_path,
            json!({"user_id": owner, "member_ids": [member, outsider, outsider]}),
        )
        .await;
    assert_eq!(status, 200, "already-members are ignored: {added}");
    assert_eq!(member_ids(&added), vec![owner, member, other, outsider]);
    let (status, body) = s
        .post(
            &members_path,
            json!({"user_id": owner, "member_ids": [extra]}),
        )
        .await;
    assert_eq!(status, 422, "the limit counts everyone: {body}");

    let remove = |actor: i64, target: i64| {
        let path = format!("/conversations/{g}/members/{target}?user_id={actor}");
        let s = &s;
        async move { delete(s, &path).await }
    };
    assert_eq!(
        remove(member, other).await.0,
        403,
        "a member removes no one else"
    );
    assert_eq!(
        remove(owner, owner).await.0,
        403,
        "the owner cannot leave others behind"
    );
    assert_eq!(
        remove(member, owner).await.0,
        403,
        "nobody removes the owner"
    );
    assert_eq!(remove(owner, extra).await.0, 404, "not a member");
    assert_eq!(remove(extra, owner).await.0, 404, "a non-member asks");
    let (status, after) = remove(owner, other).await;
    assert_eq!(status, 200);
    assert_eq!(member_ids(&after), vec![owner, member, outsider]);
    let (status, left) = remove(member, member).await;
    assert_eq!((status, left), (200, json!({"id": g, "left": true})));
    let (status, _) = s.get(&format!("/conversations/{g}?user_id={member}")).await;
    assert_eq!(status, 404, "who left sees the group no more");
    let (status, _) = s
        .post(
            "/messages/",
            json!({"sender_id": member, "conversation_id": g, "content": "back?"}),
        )
        .await;
    assert_eq!(status, 404, "nor sends to it");
    let (status, bad) = delete(&s, &format!("/conversations/{g}/members/x?user_id={owner}")).await;
    assert_eq!(status, 422, "{bad}");
}

async fn tokens_act_only_as_their_user(kind: Backend) {
    let (_b, s) = setup_with(kind, AuthMode::Token).await;
    let mut tokens = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, body) = s.post("/users/", json!({"username": name("t")})).await;
        assert_eq!(status, 200);
        ids.push(id(&body));
        tokens.push(body["token"].as_str().expect("token").to_owned());
    }
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let as_user = |i: usize, req: reqwest::RequestBuilder| req.bearer_auth(&tokens[i]);

    let create = json!({"creator_id": a, "title": "g", "member_ids": [b]});
    let (status, _) = s
        .send(s.http.post(s.url("/conversations/")).json(&create))
        .await;
    assert_eq!(status, 401, "no token");
    let (status, _) = s
        .send(as_user(
            1,
            s.http.post(s.url("/conversations/")).json(&create),
        ))
        .await;
    assert_eq!(status, 403, "b cannot create as a");
    let (status, g) = s
        .send(as_user(
            0,
            s.http.post(s.url("/conversations/")).json(&create),
        ))
        .await;
    assert_eq!(status, 200);
    let g = id(&g);

    let checks: Vec<(usize, reqwest::RequestBuilder, u16)> = vec![
        (
            1,
            s.http
                .get(s.url(&format!("/conversations/{g}?user_id={a}"))),
            403,
        ),
        (
            1,
            s.http
                .get(s.url(&format!("/conversations/{g}?user_id={b}"))),
            200,
        ),
        (
            2,
            s.http
                .get(s.url(&format!("/conversations/{g}?user_id={c}"))),
            404,
        ),
        (
            1,
            s.http.get(s.url(&format!("/conversations/?user_id={a}"))),
            403,
        ),
        (
            1,
            s.http
                .get(s.url(&format!("/messages/?user_id={a}&conversation_id={g}"))),
            403,
        ),
        (
            2,
            s.http
                .get(s.url(&format!("/messages/?user_id={c}&conversation_id={g}"))),
            404,
        ),
        (
            1,
            s.http
                .patch(s.url(&format!("/conversations/{g}")))
                .json(&json!({"user_id": a, "title": "x"})),
            403,
        ),
        (
            1,
            s.http
                .patch(s.url(&format!("/conversations/{g}")))
                .json(&json!({"user_id": b, "title": "x"})),
            403,
        ),
        (
            1,
            s.http
                .post(s.url(&format!("/conversations/{g}/members")))
                .json(&json!({"user_id": a, "member_ids": [c]})),
            403,
        ),
        (
            1,
            s.http
                .delete(s.url(&format!("/conversations/{g}/members/{b}?user_id={a}"))),
            403,
        ),
        (
            1,
            s.http
                .post(s.url("/messages/"))
                .json(&json!({"sender_id": a, "conversation_id": g, "content": "x"})),
            403,
        ),
        (
            1,
            s.http
                .post(s.url("/messages/"))
                .json(&json!({"sender_id": b, "conversation_id": g, "content": "x"})),
            200,
        ),
        (
            2,
            s.http
                .post(s.url("/messages/"))
                .json(&json!({"sender_id": c, "conversation_id": g, "content": "x"})),
            404,
        ),
        (
            0,
            s.http
                .post(s.url(&format!("/conversations/{g}/members")))
                .json(&json!({"user_id": a, "member_ids": [c]})),
            200,
        ),
        (
            1,
            s.http
                .delete(s.url(&format!("/conversations/{g}/members/{b}?user_id={b}"))),
            200,
        ),
    ];
    for (n, (who, request, expected)) in checks.into_iter().enumerate() {
        let (status, body) = s.send(as_user(who, request)).await;
        assert_eq!(status, expected, "check {n}: {body}");
    }
}
