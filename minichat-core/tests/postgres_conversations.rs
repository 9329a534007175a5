//! Tests of the PostgreSQL storage of conversations against a real server.
//!
//! This file exists to show that `PostgresStorage` keeps the conversation half of the `Storage`
//! contract exactly as `MemoryStorage` (the reference) does: every operation of one script
//! (groups made, renamed, joined and left, with the rules' refusals; group and direct messages;
//! read marks and unread counts; the inbox's order; each user's stream across messages and
//! membership events) runs on both, and every answer, error and seq must agree (timestamps
//! aside: the two backends' clocks are read at different moments). Concurrent membership
//! changes and sends from two nodes must keep every stream gapless. Each test makes its own
//! database (`TestDatabase`). They need PostgreSQL at 127.0.0.1:5432 (user `postgres`, trust
//! auth), or `MINICHAT_TEST_PG_ADMIN_URL`.

mod reference;

use minichat_core::model::{
    ChangeKind, ConversationId, ConversationSummary, HistoryRequest, NewGroup, NewMembers,
    NewMessage, NewUser, ReadState, Recipient, Role, StreamEvent, UserId,
};
use minichat_core::storage::Storage;
use minichat_core::test_support::TestDatabase;
use minichat_core::Error;
use reference::{connect, Both, MAX};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use tokio::task::JoinSet;

fn assert_forbidden<T: Debug>(r: Result<T, Error>) {
    assert!(matches!(r, Err(Error::Forbidden(_))), "{r:?}");
}

fn assert_invalid<T: Debug>(r: Result<T, Error>) {
    assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
}

fn assert_not_found<T: Debug>(r: Result<T, Error>) {
    assert!(matches!(r, Err(Error::ConversationNotFound)), "{r:?}");
}

fn assert_no_user<T: Debug>(r: Result<T, Error>) {
    assert!(matches!(r, Err(Error::UserNotFound)), "{r:?}");
}

fn assert_no_message<T: Debug>(r: Result<T, Error>) {
    assert!(matches!(r, Err(Error::MessageNotFound)), "{r:?}");
}

fn unread(inbox: &[ConversationSummary], id: ConversationId) -> Option<i64> {
    inbox.iter().find(|s| s.id == id).map(|s| s.unread)
}

#[tokio::test]
async fn conversations_agree_with_memory() {
    let db = TestDatabase::create().await;
    let s = Both::new(&db).await;
    let [alice, bob, carol, dave, erin] = [
        s.user("alice").await,
        s.user("bob").await,
        s.user("carol").await,
        s.user("dave").await,
        s.user("erin").await,
    ];

    // A direct pair first: its conversation is made by the first message.
    let hi = s.to_user(alice, bob, "hi").await;
    let hey = s.to_user(bob, alice, "hey").await;
    let direct = hi.message.conversation_id;
    assert_eq!(hey.message.conversation_id, direct);

    // A group: the creator owns it; every member gets the `created` event.
    let team = s
        .group(alice, "  team ", &[carol, bob, carol])
        .await
        .unwrap();
    let group = team.event.conversation.id;
    assert_eq!(team.event.event, ChangeKind::Created);
    assert_eq!(team.event.conversation.title.as_deref(), Some("team"));
    assert_eq!(
        team.seqs,
        [(alice, 3), (bob, 3), (carol, 1)],
        "after the direct pair's two messages"
    );
    // What PostgreSQL returned is exactly what it reads back, timestamps included.
    assert_eq!(
        s.pg.conversation(group, carol).await.unwrap(),
        team.event.conversation
    );
    assert_eq!(
        s.pg.events_since(carol, 0, 10).await.unwrap(),
        [StreamEvent::Conversation {
            seq: 1,
            event: team.event.clone()
        }]
    );
    assert_no_user(s.group(alice, "ghosts", &[bob, 99]).await);
    let solo = s.group(dave, "solo", &[]).await.unwrap();
    let solo = solo.event.conversation.id;

    // Group messages: to every other member; a client id retried, then conflicting.
    let from_bob = s.to_group(bob, group, "hello team").await;
    assert_eq!(from_bob.message.receiver_id, None);
    assert_eq!(from_bob.recipients, [(alice, 4), (carol, 2)]);
    let from_carol = s.to_group(carol, group, "hi all").await;
    let keyed = NewMessage::to_conversation(alice, group, "agenda").with_client_id("g1");
    let first = s.send(keyed.clone()).await.unwrap();
    let retry = s.send(keyed).await.unwrap();
    assert!(first.created && !retry.created && retry.recipients.is_empty());
    let conflict = NewMessage::to_conversation(alice, group, "other").with_client_id("g1");
    assert!(matches!(
        s.send(conflict).await,
        Err(Error::ClientIdConflict)
    ));
    assert_not_found(
        s.send(NewMessage::to_conversation(dave, group, "let me in"))
            .await,
    );
    assert_not_found(
        s.send(NewMessage::to_conversation(alice, 99, "nowhere"))
            .await,
    );

    // Renames: owners and admins only, groups only, members only.
    assert_forbidden(s.rename(group, carol, "mine").await);
    assert_not_found(s.rename(group, dave, "outsider").await);
    assert_not_found(s.rename(99, alice, "nothing").await);
    assert_invalid(s.rename(direct, alice, "pair").await);
    let renamed = s.rename(group, alice, "the team").await.unwrap();
    assert_eq!(renamed.event.user_ids, Vec::<UserId>::new());

    // Additions: refused for members, unknown users and over the limit; existing members skip.
    assert_forbidden(s.add(group, bob, &[dave], MAX).await);
    assert_no_user(s.add(group, alice, &[dave, 99], MAX).await);
    assert_invalid(s.add(group, alice, &[dave, erin], 4).await);
    assert_invalid(s.add(direct, alice, &[carol], MAX).await);
    assert_not_found(s.add(group, erin, &[erin], MAX).await);
    let added = s.add(group, alice, &[dave, bob], 4).await.unwrap();
    assert_eq!(
        s.pg.conversation(group, dave).await.unwrap(),
        added.event.conversation
    );
    assert_eq!(added.event.user_ids, [dave]);
    assert_eq!(added.event.conversation.members.len(), 4);
    let nobody = s.add(group, alice, &[bob], MAX).await.unwrap();
    assert_eq!(nobody.event.user_ids, Vec::<UserId>::new());
    let from_dave = s.to_group(dave, group, "thanks").await;

    // Read marks: a message of that conversation from another member, never backwards.
    assert_no_message(
        s.mark(bob, Recipient::Conversation(group), from_bob.message.id)
            .await,
    );
    assert_no_message(
        s.mark(bob, Recipient::Conversation(group), hi.message.id)
            .await,
    );
    assert_no_message(s.mark(bob, Recipient::Conversation(group), 999).await);
    assert_not_found(
        s.mark(erin, Recipient::Conversation(group), from_bob.message.id)
            .await,
    );
    assert_not_found(s.mark(bob, Recipient::Conversation(99), 1).await);
    assert_not_found(
        s.mark(carol, Recipient::User(dave), from_dave.message.id)
            .await,
    );
    let marked = s
        .mark(bob, Recipient::Conversation(group), first.message.id)
        .await
        .unwrap();
    assert_eq!(
        (marked.up_to, marked.others.clone()),
        (first.message.id, vec![alice, carol, dave])
    );
    let back = s
        .mark(bob, Recipient::Conversation(group), from_carol.message.id)
        .await
        .unwrap();
    assert_eq!(back.up_to, first.message.id, "never backwards");
    // A message from before the reader joined is still theirs to mark.
    s.mark(dave, Recipient::Conversation(group), from_bob.message.id)
        .await
        .unwrap();
    let pair = s
        .mark(alice, Recipient::User(bob), hey.message.id)
        .await
        .unwrap();
    assert_eq!((pair.conversation_id, pair.others), (direct, vec![bob]));
    assert_no_message(s.mark(alice, Recipient::User(bob), hi.message.id).await);
    assert_eq!(
        s.marks(bob, alice).await,
        ReadState {
            read_up_to: None,
            peer_read_up_to: Some(hey.message.id)
        }
    );
    assert_eq!(s.marks(carol, dave).await, ReadState::default());

    // Unread counts and the inbox's order (the newest activity first).
    let inbox = s.inbox(bob, 0, 100).await;
    assert_eq!(unread(&inbox, group), Some(1), "dave's, after bob's mark");
    assert_eq!(
        inbox.iter().map(|c| c.id).collect::<Vec<_>>(),
        [group, direct]
    );
    let inbox = s.inbox(alice, 0, 100).await;
    assert_eq!(unread(&inbox, direct), Some(0));
    assert_eq!(unread(&inbox, group), Some(3));
    assert_eq!(
        inbox.iter().find(|c| c.id == direct).unwrap().peer_id,
        Some(bob)
    );
    let dave_inbox = s.inbox(dave, 0, 100).await;
    assert_eq!(
        dave_inbox.iter().map(|c| c.id).collect::<Vec<_>>(),
        [group, solo]
    );
    s.to_group(dave, solo, "note to self").await;
    assert_eq!(
        s.inbox(dave, 0, 1).await[0].id,
        solo,
        "activity moves it up"
    );

    // Removals: the rules, then leaving, then re-adding.
    assert_forbidden(s.remove(group, carol, bob).await);
    assert_forbidden(s.remove(group, bob, alice).await);
    assert_forbidden(s.remove(group, alice, alice).await);
    assert_no_user(s.remove(group, alice, erin).await);
    assert_not_found(s.remove(group, erin, bob).await);
    assert_invalid(s.remove(direct, alice, bob).await);
    let left = s.remove(group, dave, dave).await.unwrap();
    assert_eq!(
        left.seqs.iter().map(|(u, _)| *u).collect::<Vec<_>>(),
        [alice, bob, carol, dave],
        "the removed member is told too"
    );
    let removed = s.remove(group, alice, bob).await.unwrap();
    assert_eq!(removed.event.event, ChangeKind::MemberRemoved);
    assert_not_found(s.conversation(group, bob).await);
    assert_not_found(
        s.history(HistoryRequest {
            conversation_id: Some(group),
            ..HistoryRequest::new(bob)
        })
        .await,
    );
    assert_eq!(
        s.inbox(bob, 0, 100)
            .await
            .iter()
            .map(|c| c.id)
            .collect::<Vec<_>>(),
        [direct]
    );
    s.to_group(carol, group, "bob is gone").await;
    s.add(group, alice, &[bob], MAX).await.unwrap();
    // Back, bob has no read mark: every message of the others is unread.
    assert_eq!(unread(&s.inbox(bob, 0, 100).await, group), Some(4));

    s.check_reads(
        &[alice, bob, carol, dave, erin, 99],
        &[direct, group, solo, 99],
    )
    .await;

    // The owner leaves last: the group is then nobody's.
    s.remove(group, bob, bob).await.unwrap();
    s.remove(group, carol, carol).await.unwrap();
    s.remove(group, alice, alice).await.unwrap();
    for user in [alice, bob, carol, dave] {
        assert_not_found(s.conversation(group, user).await);
    }
    assert_not_found(s.add(group, alice, &[bob], MAX).await);
    s.check_reads(&[alice, bob, carol, dave], &[group]).await;
}

/// Two nodes: while one changes a group's members, members send to it through both; every
/// stream stays gapless, and each group message reached exactly the members of the moment
/// (as the membership events before it in the sender's stream say).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_and_sends_keep_streams_gapless() {
    let db = TestDatabase::create().await;
    let nodes = [
        Arc::new(connect(db.url()).await),
        Arc::new(connect(db.url()).await),
    ];
    let mut users = Vec::new();
    for name in ["owner", "mem1", "mem2", "mem3", "mem4", "mem5"] {
        let user = NewUser {
            username: name.into(),
            display_name: None,
        }
        .validate()
        .unwrap();
        users.push(nodes[0].create_user(&user).await.unwrap().id);
    }
    let owner = users[0];
    let created = NewGroup {
        creator_id: owner,
        title: "busy".into(),
        member_ids: users[1..3].to_vec(),
    }
    .validate(MAX)
    .unwrap();
    let group = nodes[0]
        .create_group(&created)
        .await
        .unwrap()
        .event
        .conversation
        .id;

    let mut tasks = JoinSet::new();
    // The owner adds and removes m3..m5, on node 0, while m1 and m2 send on both nodes and m3
    // sends when it can.
    {
        let node = nodes[0].clone();
        let movers = users[3..].to_vec();
        tasks.spawn(async move {
            for round in 0..10 {
                let who = movers[round % movers.len()];
                let add = NewMembers {
                    user_id: owner,
                    member_ids: vec![who],
                }
                .validate()
                .unwrap();
                node.add_members(group, &add, MAX).await.expect("add");
                if round % 2 == 0 {
                    node.remove_member(group, owner, who).await.expect("remove");
                }
            }
        });
    }
    for (i, &sender) in users[1..4].iter().enumerate() {
        for node in &nodes {
            let node = node.clone();
            tasks.spawn(async move {
                for k in 0..15 {
                    let m = NewMessage::to_conversation(sender, group, format!("{i} {k}"))
                        .validate()
                        .unwrap();
                    match node.store_message(&m).await {
                        Ok(_) | Err(Error::ConversationNotFound) => {}
                        Err(e) => panic!("send: {e:?}"),
                    }
                }
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }

    // Replay the owner's stream (the owner is a member throughout): membership events and
    // messages in commit order. Then every user's stream: gapless, and each message that
    // reached them came while they were a member, by the owner's order.
    let owner_stream = nodes[1].events_since(owner, 0, 10_000).await.unwrap();
    let mut members_at: HashMap<i64, Vec<UserId>> = HashMap::new();
    let mut members: Vec<UserId> = Vec::new();
    for e in &owner_stream {
        match e {
            StreamEvent::Conversation { event, .. } => {
                members = event
                    .conversation
                    .members
                    .iter()
                    .map(|m| m.user_id)
                    .collect();
            }
            StreamEvent::Message(m) => {
                members_at.insert(m.message.id, members.clone());
            }
        }
    }
    let changes = owner_stream.len() - members_at.len();
    assert_eq!(changes, 1 + 10 + 5, "created, 10 additions, 5 removals");
    // m1 and m2 always got through, 15 each per node; m3 when it was a member.
    assert!(members_at.len() >= 60, "{}", members_at.len());
    for &user in &users {
        let stream = nodes[user as usize % 2]
            .events_since(user, 0, 10_000)
            .await
            .unwrap();
        let seqs: Vec<i64> = stream.iter().map(StreamEvent::seq).collect();
        assert_eq!(
            seqs,
            (1..=stream.len() as i64).collect::<Vec<_>>(),
            "user {user}"
        );
        assert_eq!(
            nodes[0].current_seq(user).await.unwrap(),
            stream.len() as i64
        );
        for e in &stream {
            if let StreamEvent::Message(m) = e {
                let at = &members_at[&m.message.id];
                assert!(
                    at.contains(&user),
                    "{user} got {} outside membership",
                    m.message.id
                );
            }
        }
        // And every message sent while they were a member reached them.
        let got: Vec<i64> = stream
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Message(m) => Some(m.message.id),
                _ => None,
            })
            .collect();
        let due: Vec<i64> = {
            let mut due: Vec<i64> = members_at
                .iter()
                .filter(|(_, at)| at.contains(&user))
                .map(|(id, _)| *id)
                .collect();
            due.sort_unstable();
            due
        };
        let mut got_sorted = got.clone();
        got_sorted.sort_unstable();
        assert_eq!(got_sorted, due, "user {user}");
    }
}

/// A fixed pseudo-random script of 800 operations of every kind (many of them refused or
/// pointless, as a client's can be) on both backends: every answer agrees, and so does every
/// read at the end.
#[tokio::test]
async fn a_random_script_agrees_with_memory() {
    let db = TestDatabase::create().await;
    let s = Both::new(&db).await;
    let mut users = Vec::new();
    for name in ["ann", "ben", "cat", "dan", "eve", "fay"] {
        users.push(s.user(name).await);
    }
    let mut state: u64 = 0x5eed;
    let mut next = move |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % n as u64) as usize
    };
    let mut conversations: Vec<ConversationId> = vec![99];
    // Sends by id go to groups only, for now: sent to a direct conversation by its id, this
    // branch's memory stores the message without its receiver and the writer with it (memory
    // on `groups` gives it its receiver too; once merged, send by any conversation id here).
    let mut groups: Vec<ConversationId> = vec![99];
    let mut messages: Vec<i64> = vec![999];
    // How many of each kind succeeded: the script must reach every success path too.
    let mut ok: HashMap<&str, usize> = HashMap::new();
    for step in 0..800 {
        let id = conversations[next(conversations.len())];
        // Mostly members (the owner often) act on it, so that the script reaches the success
        // paths too; the reference says who the members are.
        let mut members = Vec::new();
        for &u in &users {
            if let Ok(c) = s.mem.conversation(id, u).await {
                members = c.members;
                break;
            }
        }
        let anyone = users[next(users.len())];
        let actor = match (members.is_empty(), next(3)) {
            (false, 0) => members
                .iter()
                .find(|m| m.role == Role::Owner)
                .map_or(anyone, |m| m.user_id),
            (false, 1) => members[next(members.len())].user_id,
            _ => anyone,
        };
        let other = match (members.is_empty(), next(2)) {
            (false, 0) => members[next(members.len())].user_id,
            _ => users[next(users.len())],
        };
        let group = if groups.contains(&id) {
            id
        } else {
            groups[next(groups.len())]
        };
        match next(9) {
            0 if next(3) == 0 => {
                let mut members: Vec<UserId> = (0..next(4)).map(|_| users[next(6)]).collect();
                if next(10) == 0 {
                    members.push(77);
                }
                if let Ok(c) = s.group(actor, &format!("g{step}"), &members).await {
                    conversations.push(c.event.conversation.id);
                    groups.push(c.event.conversation.id);
                    *ok.entry("create").or_default() += 1;
                }
            }
            1 | 2 => {
                if actor != other {
                    let sent = s
                        .send(NewMessage::to_user(actor, other, format!("d{step}")))
                        .await
                        .expect("direct send");
                    messages.push(sent.message.id);
                    conversations.push(sent.message.conversation_id);
                }
            }
            0 | 3 | 4 => {
                let m = NewMessage::to_conversation(actor, group, format!("m{step}"))
                    .with_client_id(format!("k{}", next(20)));
                if let Ok(sent) = s.send(m).await {
                    messages.push(sent.message.id);
                    *ok.entry("group send").or_default() += 1;
                }
            }
            5 => {
                if s.rename(id, actor, &format!("r{step}")).await.is_ok() {
                    *ok.entry("rename").or_default() += 1;
                }
            }
            6 => {
                let more = [other, users[next(6)]];
                if s.add(id, actor, &more, 2 + next(5)).await.is_ok() {
                    *ok.entry("add").or_default() += 1;
                }
            }
            7 => {
                if s.remove(id, actor, other).await.is_ok() {
                    *ok.entry("remove").or_default() += 1;
                }
            }
            _ => {
                // Mostly one of the conversation's own messages.
                let own = s
                    .mem
                    .history(
                        &HistoryRequest {
                            conversation_id: Some(id),
                            ..HistoryRequest::new(actor)
                        }
                        .validate()
                        .expect("valid query"),
                    )
                    .await
                    .unwrap_or_default();
                let up_to = match (own.is_empty(), next(4)) {
                    (false, 0..=2) => own[next(own.len())].id,
                    _ => messages[next(messages.len())],
                };
                let to = if next(2) == 0 {
                    Recipient::Conversation(id)
                } else {
                    Recipient::User(other)
                };
                if to != Recipient::User(actor) && s.mark(actor, to, up_to).await.is_ok() {
                    *ok.entry("mark").or_default() += 1;
                }
            }
        }
    }
    for kind in ["create", "group send", "rename", "add", "remove", "mark"] {
        assert!(ok.get(kind).is_some_and(|&n| n >= 3), "{kind}: {ok:?}");
    }
    conversations.sort_unstable();
    conversations.dedup();
    s.check_reads(&users, &conversations).await;
    for &a in &users {
        for &b in &users {
            if a != b {
                s.marks(a, b).await;
            }
        }
    }
}
