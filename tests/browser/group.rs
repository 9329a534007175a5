//! The group part of `tests/browser.rs`: a third person, Carol, signs up in her own browser;
//! Alice creates a group with Bob and Carol in the page (people picked from the directory
//! search), and each sees it appear in their inbox. Messages in the group reach the others with
//! the sender's name, an unread badge counts them until the group is opened, typing and "read
//! by" come live, and the title and member list follow a rename, a removal, an addition and a
//! leave in every page.
//! The steps share the two-person scenario's `Chat`; each waits for what it expects, never a
//! fixed time.

use super::{step, Chat};
use crate::driver::{Account, Browser, WAIT};
use crate::support::eventually;
use serde_json::{json, Value};

/// The group's title: markup in it stays text.
const TITLE: &str = "Tea <i>party</i> & co";
const GROUP_HELLO: &str = "Hello both of you";
const CAROL_REPLY: &str = "Hi all, Carol here";
const RENAMED: &str = "Tea party (renamed)";
const QUEUED_IN_GROUP: &str = "Written to the group while offline";

/// Runs the group steps after the two-person ones.
pub async fn run(chat: &Chat, carol: &Browser, page: &str) {
    let c = step("carol_signs_up", async {
        carol.goto(page).await;
        carol
            .sign_up(&crate::support::name("carol"), "Carol Danvers")
            .await
    })
    .await;
    let group = Group { chat, carol, c };
    let id = step("alice_creates_a_group", group.create()).await;
    step("group_messages_show_the_sender", group.messages(id)).await;
    step("a_group_message_queued_during_a_drop", group.queued(id)).await;
    step("rename_remove_add_and_leave", group.members(id)).await;
}

struct Group<'a> {
    chat: &'a Chat,
    carol: &'a Browser,
    c: Account,
}

fn item(id: i64) -> String {
    format!("[data-testid=conversation-item][data-conversation-id=\"{id}\"]")
}

fn member(user: i64) -> String {
    format!("#member-list [data-testid=member-item][data-user-id=\"{user}\"]")
}

impl Group<'_> {
    /// A REST GET as `token`'s user.
    async fn get(&self, token: &str, path: &str) -> Value {
        let server = &self.chat.server;
        let (status, body) = server
            .send(server.http.get(server.url(path)).bearer_auth(token))
            .await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// The member ids of the group as the server has them.
    async fn members_on_server(&self, id: i64) -> Vec<i64> {
        let a = &self.chat.a;
        let body = self
            .get(&a.token, &format!("/conversations/{id}?user_id={}", a.id))
            .await;
        body["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(|m| m["user_id"].as_i64())
            .collect()
    }

    /// Waits until `browser`'s open member list has exactly `ids`.
    async fn wait_member_list(&self, browser: &Browser, ids: &[i64]) {
        let mut expected = ids.to_vec();
        expected.sort_unstable();
        browser
            .wait_until(
                &format!("the member list to be {expected:?}"),
                "return [...document.querySelectorAll('#member-list [data-testid=member-item]')]
                     .map(m => Number(m.dataset.userId)).sort((a, b) => a - b);",
                vec![],
                |v| v == &json!(expected),
            )
            .await;
    }

    /// Alice creates the group in the page; it appears in every member's inbox.
    async fn create(&self) -> i64 {
        let Chat {
            alice, bob, a, b, ..
        } = self.chat;
        alice.click("new-group").await;
        alice.wait_visible("group-title").await;
        alice.type_into("group-title", TITLE).await;
        for (id, query) in [(b.id, "Bob Bu"), (self.c.id, "carol da")] {
            alice.clear("group-search").await;
            alice.type_into("group-search", query).await;
            alice
                .click_css(
                    &format!("{query:?} found by the group's people search"),
                    &format!("[data-testid=group-candidate][data-user-id=\"{id}\"]"),
                )
                .await;
            alice
                .wait_css(
                    "the person to be chosen",
                    &format!("[data-testid=group-chosen-item][data-user-id=\"{id}\"]"),
                )
                .await;
        }
        alice.shot("07-alice-new-group").await;
        alice.click("group-create").await;
        alice.wait_conversation(TITLE).await;
        let open = alice
            .js(
                "return JSON.parse(localStorage.getItem(`minichat.open.${arguments[0]}`))",
                vec![json!(a.id)],
            )
            .await;
        let id = open["conversation_id"]
            .as_i64()
            .unwrap_or_else(|| panic!("the open group's id: {open}"));
        let mut members = self.members_on_server(id).await;
        members.sort_unstable();
        let mut expected = vec![a.id, b.id, self.c.id];
        expected.sort_unstable();
        assert_eq!(members, expected, "the group's members on the server");
        for browser in [alice, bob, self.carol] {
            browser
                .wait_css_text(
                    "the new group in the inbox",
                    &format!("{} [data-testid=conversation-title]", item(id)),
                    TITLE,
                )
                .await;
            assert_eq!(
                browser
                    .js(
                        "return document.querySelectorAll('#inbox i, #peer-name i').length",
                        vec![]
                    )
                    .await,
                0,
                "{}: the title is text, never HTML",
                browser.label
            );
        }
        id
    }

    /// Messages in the group: the sender's name, unread badges, typing and "read by".
    async fn messages(&self, id: i64) {
        let Chat { alice, bob, b, .. } = self.chat;
        let carol = self.carol;
        let badge = format!("{} [data-testid=unread-badge]", item(id));
        alice.type_message(GROUP_HELLO).await;
        alice.press_enter().await;
        alice
            .wait_messages(GROUP_HELLO, "Alice's group message to be sent", |m| {
                m.len() == 1 && m[0]["mine"] == true && m[0]["id"].is_string()
            })
            .await;
        for browser in [bob, carol] {
            browser
                .wait_css_text("an unread badge on the group", &badge, "1")
                .await;
            browser.wait_css("the badge to show", &badge).await;
            browser
                .wait_css_text(
                    "the group's preview naming the sender",
                    &format!("{} [data-testid=conversation-preview]", item(id)),
                    &format!("Alice Liddell: {GROUP_HELLO}"),
                )
                .await;
        }
        assert!(
            bob.messages(GROUP_HELLO).await.is_empty(),
            "Bob's open direct chat does not show the group's message"
        );
        bob.shot("07-bob-group-unread").await;
        carol.open_inbox_item(id, TITLE).await;
        carol
            .wait_gone("the badge to clear on opening", &badge)
            .await;
        carol
            .wait_messages(
                GROUP_HELLO,
                "Carol to see Alice's message with her name",
                |m| m.len() == 1 && m[0]["mine"] == false && m[0]["sender"] == "Alice Liddell",
            )
            .await;
        // Carol has it on screen, so her page says she read it: Alice's message shows it.
        alice
            .wait_messages(
                GROUP_HELLO,
                "\"Read by Carol Danvers\" on Alice's message",
                |m| {
                    m.len() == 1
                        && m[0]["status"] == "read"
                        && m[0]["readers"] == "Read by Carol Danvers"
                },
            )
            .await;
        carol.type_message(CAROL_REPLY).await;
        alice.wait_typing("Carol Danvers").await;
        carol.press_enter().await;
        alice
            .wait_messages(
                CAROL_REPLY,
                "Alice to see Carol's reply with her name",
                |m| m.len() == 1 && m[0]["sender"] == "Carol Danvers",
            )
            .await;
        bob.wait_css_text("two unread in the group", &badge, "2")
            .await;
        // The badge survives a reload that replays Bob's whole stream (his stored seq is
        // forgotten, so `since=0`): the server's count, not that plus the replayed messages.
        let seq_key = format!("minichat.seq.{}", b.id);
        let last_seq = bob
            .js(
                "const seq = Number(localStorage.getItem(arguments[0]));
                 localStorage.removeItem(arguments[0]);
                 return seq;",
                vec![json!(seq_key)],
            )
            .await;
        assert!(last_seq.as_i64().unwrap_or(0) > 0, "Bob's seq: {last_seq}");
        bob.client.refresh().await.expect("reload");
        bob.wait_online().await;
        bob.wait_until(
            "the replay and the inbox to be in",
            "const badge = document.querySelector(arguments[0]);
             return Number(localStorage.getItem(arguments[1])) >= arguments[2]
                 && document.getElementById('inbox').dataset.state === 'ready'
                 && !!badge && !badge.hidden;",
            vec![json!(badge), json!(seq_key), last_seq],
            |v| v == &json!(true),
        )
        .await;
        assert_eq!(
            bob.js(
                "return document.querySelector(arguments[0]).textContent",
                vec![json!(badge)]
            )
            .await,
            "2",
            "the unread count after a full replay"
        );
        bob.open_inbox_item(id, TITLE).await;
        bob.wait_gone("Bob's badge to clear on opening", &badge)
            .await;
        for (text, sender) in [
            (GROUP_HELLO, "Alice Liddell"),
            (CAROL_REPLY, "Carol Danvers"),
        ] {
            bob.wait_messages(text, "Bob to see the group's history with names", |m| {
                m.len() == 1 && m[0]["sender"] == sender
            })
            .await;
        }
        // Bob's page told the server he read the group: his inbox there has nothing unread.
        eventually(
            WAIT,
            "Bob's group read mark to reach the server",
            || async {
                let inbox = self
                    .get(&b.token, &format!("/conversations/?user_id={}", b.id))
                    .await;
                inbox
                    .as_array()?
                    .iter()
                    .find(|c| c["id"] == id)
                    .filter(|c| c["unread"] == 0)
                    .map(|_| ())
            },
        )
        .await;
        alice.shot("08-alice-group").await;
        bob.shot("08-bob-group").await;
        carol.shot("08-carol-group").await;
    }

    /// The connection drops while Alice writes to the group: the page keeps the message (with
    /// its conversation) and sends it once when the socket is back.
    async fn queued(&self, id: i64) {
        let Chat {
            alice,
            bob,
            a,
            proxy,
            ..
        } = self.chat;
        proxy.cut();
        alice
            .wait_until(
                "Alice's page to show it is reconnecting",
                "return document.querySelector('[data-testid=connection-status]').dataset.status === 'reconnecting';",
                vec![],
                |v| v == &json!(true),
            )
            .await;
        alice.type_message(QUEUED_IN_GROUP).await;
        alice.press_enter().await;
        alice
            .wait_messages(
                QUEUED_IN_GROUP,
                "the group message to show as pending",
                |m| m.len() == 1 && m[0]["status"] == "pending",
            )
            .await;
        let outbox = alice
            .js(
                "return JSON.parse(localStorage.getItem(`minichat.outbox.${arguments[0]}`))",
                vec![json!(a.id)],
            )
            .await;
        assert_eq!(
            (outbox[0]["conversation_id"].as_i64(), &outbox[0]["content"]),
            (Some(id), &json!(QUEUED_IN_GROUP)),
            "the stored outbox entry remembers its conversation: {outbox}"
        );
        proxy.restore();
        alice.wait_online().await;
        alice
            .wait_messages(
                QUEUED_IN_GROUP,
                "the queued group message to be sent",
                |m| m.len() == 1 && m[0]["status"] != "pending" && m[0]["id"].is_string(),
            )
            .await;
        for browser in [bob, self.carol] {
            browser
                .wait_messages(QUEUED_IN_GROUP, "the queued group message, once", |m| {
                    m.len() == 1 && m[0]["sender"] == "Alice Liddell"
                })
                .await;
        }
    }

    /// Alice renames the group, removes Bob and adds him back, Carol leaves: every page follows.
    async fn members(&self, id: i64) {
        let Chat {
            alice, bob, a, b, ..
        } = self.chat;
        let carol = self.carol;
        let c = &self.c;
        alice.click("members-button").await;
        self.wait_member_list(alice, &[a.id, b.id, c.id]).await;
        let mut removable = vec![b.id, c.id];
        removable.sort_unstable();
        assert_eq!(
            alice
                .js(
                    "return [...document.querySelectorAll('#member-list [data-testid=member-item]')]
                         .filter(m => m.querySelector('[data-testid=member-remove]'))
                         .map(m => Number(m.dataset.userId)).sort((a, b) => a - b);",
                    vec![],
                )
                .await,
            json!(removable),
            "the owner can remove the others, not herself"
        );
        alice.shot("09-alice-members").await;

        alice.clear("rename-title").await;
        alice.type_into("rename-title", RENAMED).await;
        alice.click("rename-submit").await;
        for browser in [alice, bob, carol] {
            browser
                .wait_css_text(
                    "the new title in the inbox",
                    &format!("{} [data-testid=conversation-title]", item(id)),
                    RENAMED,
                )
                .await;
            browser.wait_text("peer-name", RENAMED).await;
        }

        alice
            .click_css(
                "Bob's remove button",
                &format!("{} [data-testid=member-remove]", member(b.id)),
            )
            .await;
        self.wait_member_list(alice, &[a.id, c.id]).await;
        bob.wait_gone("the group to leave Bob's inbox", &item(id))
            .await;
        bob.wait_visible("left-note").await;
        carol.wait_text("peer-status", "2 members").await;
        bob.shot("09-bob-removed").await;

        alice.type_into("member-search", "bob bu").await;
        alice
            .click_css(
                "Bob among the people to add",
                &format!("[data-testid=member-candidate][data-user-id=\"{}\"]", b.id),
            )
            .await;
        self.wait_member_list(alice, &[a.id, b.id, c.id]).await;
        bob.wait_css("the group back in Bob's inbox", &item(id))
            .await;
        bob.wait_gone("Bob's composer to be back", "[data-testid=left-note]")
            .await;
        carol.wait_text("peer-status", "3 members").await;

        carol.click("members-button").await;
        self.wait_member_list(carol, &[a.id, b.id, c.id]).await;
        assert_eq!(
            carol
                .js(
                    "return document.querySelectorAll('[data-testid=member-remove]').length",
                    vec![]
                )
                .await,
            0,
            "a member removes nobody"
        );
        carol.click("leave-group").await;
        carol
            .wait_gone("the group to leave Carol's inbox", &item(id))
            .await;
        carol.wait_visible("left-note").await;
        self.wait_member_list(alice, &[a.id, b.id]).await;
        bob.wait_text("peer-status", "2 members").await;
        let mut members = self.members_on_server(id).await;
        members.sort_unstable();
        let mut expected = vec![a.id, b.id];
        expected.sort_unstable();
        assert_eq!(members, expected, "the members on the server");
        for browser in [alice, bob, carol] {
            let shown = browser.messages(QUEUED_IN_GROUP).await;
            assert_eq!(
                shown.len(),
                1,
                "{}: the queued group message is shown once",
                browser.label
            );
        }
        alice.shot("10-alice-after-leave").await;
        carol.shot("10-carol-left").await;
    }
}
