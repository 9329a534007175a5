//! The web chat page (`/app/`) end to end, in headless Chromium driven through chromedriver.
//!
//! A real server (auth `token`, memory backend) runs in process behind a small TCP proxy of the
//! test's own, which can cut every connection on demand and refuse new ones: that is the
//! server-side socket drop. Two browser sessions, each with its own profile, sign up as two
//! users, chat both ways, see each other typing and online, get read receipts, then live
//! through a drop: the page shows that it is reconnecting, two identical messages queued in the
//! page meanwhile are each sent once after it resumes (matched to their acks and replays by
//! `client_id`), and messages sent over REST during the drop (one of them Alice's own, from
//! "another device", with the same text) are shown exactly once. Then a third session, Carol,
//! joins for a group of three (`browser/group.rs`): Alice creates it in the page, messages show
//! their sender, unread badges come and clear, and the member list follows a removal, an
//! addition and a leave. Screenshots of every session go to `artifacts/browser/` under the
//! workspace root.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`/usr/bin/chromium`, `/usr/bin/chromedriver`;
//! `scripts/test` installs them). Without them the test is skipped with a message, so developers
//! without a browser can still run `cargo test`, except in CI (env `CI` set), where a missing
//! browser is a failure: CI must have installed them.

//!
//! The scenario is a sequence of named steps (`sign_up`, `see_each_other_online`, …); a
//! failure names its step. The browser plumbing (chromedriver, `Browser`) is in `browser/driver.rs`.

#[path = "browser/driver.rs"]
mod driver;
#[path = "browser/group.rs"]
mod group;
mod support;

use driver::{Account, Browser, Chromedriver, CHROMEDRIVER, CHROMIUM, WAIT};
use futures_util::FutureExt;
use minichat::server::AuthMode;
use serde_json::{json, Value};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use support::{eventually, name, Backend, Backends, TcpProxy, TestServer};

/// What the two people write, in order.
const HELLO: &str = "Hello Bob! Fancy a chat?";
const REPLY: &str = "Hi Alice <b>not bold</b> & <script>alert(1)</script> :)";
const AWAY: &str = "Sent while you were away";
const QUEUED: &str = "Queued while the connection was down";
const BACK: &str = "Welcome back";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_in_the_browser_and_survive_a_dropped_connection() {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if !missing.is_empty() {
        // CI installs both (scripts/test does), so there a missing browser is a broken setup;
        // a developer's machine may simply not have one, and the rest of the suite still runs.
        let message = format!(
            "browser test: {} missing; install Debian's `chromium` and `chromium-driver` packages \
             (scripts/test does)",
            missing.join(" and ")
        );
        if std::env::var_os("CI").is_some() {
            panic!("{message} (CI is set, so this is a failure)");
        }
        eprintln!("SKIPPED {message}");
        return;
    }

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/browser");
    std::fs::create_dir_all(&artifacts).expect("create artifacts/browser");
    let driver = Chromedriver::start(&artifacts.join("chromedriver.log")).await;
    let alice_browser = Browser::open(&driver, "alice", &artifacts).await;
    let bob_browser = Browser::open(&driver, "bob", &artifacts).await;
    let carol_browser = Browser::open(&driver, "carol", &artifacts).await;

    // The scenario runs in its own task so that, pass or fail, the browsers are closed
    // properly below (a panic would otherwise leave Chromium running).
    let scenario = tokio::spawn(scenario(
        alice_browser.clone_handle(),
        bob_browser.clone_handle(),
        carol_browser.clone_handle(),
    ));
    let outcome = scenario.await;

    for browser in [alice_browser, bob_browser, carol_browser] {
        browser.close().await;
    }
    drop(driver);
    match outcome {
        Ok(shots) => {
            println!("browser test screenshots:");
            for shot in shots {
                println!("  {}", shot.display());
            }
        }
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("browser scenario did not finish: {e}"),
    }
}

/// Runs one step of the scenario; a failure inside it names the step.
async fn step<T>(name: &str, work: impl Future<Output = T>) -> T {
    eprintln!("browser step: {name}");
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(value) => value,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("browser step `{name}` failed: {message}");
        }
    }
}

async fn scenario(alice: Browser, bob: Browser, carol: Browser) -> Vec<PathBuf> {
    let backends = Backends::new(Backend::Memory).await;
    let server = TestServer::start(backends.settings(AuthMode::Token)).await;
    let proxy = TcpProxy::start(server.addr).await;
    let page = format!("{}/app/", proxy.url("http"));
    let (a, b) = step("sign_up", sign_up(&server, &page, &alice, &bob)).await;
    let chat = Chat {
        _backends: backends,
        server,
        proxy,
        alice,
        bob,
        a,
        b,
    };
    step("see_each_other_online", chat.see_each_other_online()).await;
    step("alice_writes_to_bob", chat.alice_writes_to_bob()).await;
    step("bob_replies_with_markup", chat.bob_replies_with_markup()).await;
    step(
        "receipts_survive_a_reload",
        chat.receipts_survive_a_reload(),
    )
    .await;
    let away_id = step("drop_the_connection", chat.drop_the_connection()).await;
    let back_id = step("resume_without_loss_or_duplicate", chat.resume(away_id)).await;
    step("log_out_and_back_in", chat.log_out_and_back_in(back_id)).await;
    group::run(&chat, &carol, &page).await;
    step("phone_layout", chat.phone_layout()).await;

    let mut shots = chat.alice.shots();
    shots.extend(chat.bob.shots());
    shots.extend(carol.shots());
    shots
}

/// Both people sign up in their own browser (after a refused username shows the server's
/// messages); Alice's page, loaded before Bob existed, finds him by searching the server.
async fn sign_up(
    server: &TestServer,
    page: &str,
    alice: &Browser,
    bob: &Browser,
) -> (Account, Account) {
    let alice_name = name("alice");
    let bob_name = name("bob");
    alice.goto(page).await;
    alice.wait_visible("auth-screen").await;
    alice.shot("01-alice-sign-up").await;
    // A 422 shows the server's own messages (its `detail` list), not raw JSON.
    let (status, body) = server.post("/users/", json!({"username": "x!"})).await;
    assert_eq!(status, 422, "invalid username: {body}");
    let expected: Vec<&str> = body["detail"]
        .as_array()
        .expect("422 detail list")
        .iter()
        .filter_map(|d| d["msg"].as_str())
        .collect();
    alice.type_into("signup-username", "x!").await;
    alice.click("signup-submit").await;
    alice.wait_text("signup-error", &expected.join("; ")).await;
    alice.clear("signup-username").await;
    let a = alice.sign_up(&alice_name, "Alice Liddell").await;
    bob.goto(page).await;
    let b = bob.sign_up(&bob_name, "Bob Builder").await;

    // Alice's directory was loaded before Bob existed: typing the start of his display name,
    // in another case, asks the server (no timer, no reload) and lists him.
    let item = format!("[data-testid=user-item][data-user-id=\"{}\"]", b.id);
    alice.type_into("user-search", "bOB bu").await;
    alice
        .wait_until(
            "Bob found by the directory search",
            "const item = document.querySelector(arguments[0]); return !!item && !item.hidden",
            vec![json!(item)],
            |v| v == &json!(true),
        )
        .await;
    alice.clear("user-search").await;
    // WebDriver's clear fires no `input` event; a person's backspace would.
    alice
        .js(
            "document.getElementById('search').dispatchEvent(new Event('input')); return true",
            vec![],
        )
        .await;

    // The session survives a reload (it is kept in localStorage).
    alice.client.refresh().await.expect("reload");
    alice.wait_online().await;
    assert_eq!(
        alice
            .js(
                "return document.getElementById('me-name').textContent",
                vec![]
            )
            .await,
        "Alice Liddell",
        "the session survives a reload"
    );
    alice.shot("02-alice-people").await;
    (a, b)
}

/// Everything the steps after sign-up share.
struct Chat {
    _backends: Backends,
    server: TestServer,
    /// Between the browsers and the server: cuts every connection on demand.
    proxy: TcpProxy,
    alice: Browser,
    bob: Browser,
    a: Account,
    b: Account,
}

impl Chat {
    /// A send over REST, as another device of the token's user would make it.
    async fn rest_send(&self, token: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.server
            .send(
                self.server
                    .http
                    .post(self.server.url("/messages/"))
                    .bearer_auth(token)
                    .json(&body),
            )
            .await
    }

    /// Both open the conversation and see the other online.
    async fn see_each_other_online(&self) {
        self.alice.open_chat(self.b.id, "Bob Builder").await;
        self.bob.open_chat(self.a.id, "Alice Liddell").await;
        for (browser, peer) in [(&self.alice, self.b.id), (&self.bob, self.a.id)] {
            browser
                .wait_until(
                    "the peer's presence dot to show online",
                    "const dot = document.querySelector(`[data-testid=user-item][data-user-id=\"${arguments[0]}\"] [data-testid=presence-dot]`);
                     return dot && dot.dataset.online === 'true'
                         && document.getElementById('peer-status').textContent === 'online';",
                    vec![json!(peer)],
                    |v| v == &json!(true),
                )
                .await;
        }
    }

    /// Alice → Bob, with typing and a read receipt.
    async fn alice_writes_to_bob(&self) {
        self.alice.type_message(HELLO).await;
        self.bob.wait_typing("Alice Liddell").await;
        self.bob.shot("02-bob-sees-alice-typing").await;
        self.alice.press_enter().await;
        let seen = self
            .bob
            .wait_messages(HELLO, "Bob to receive Alice's message", |m| m.len() == 1)
            .await;
        assert_eq!(seen[0]["mine"], false);
        assert_eq!(
            self.bob
                .js("return document.getElementById('typing').hidden", vec![])
                .await,
            true,
            "the typing indicator goes away when the message arrives"
        );
        // Bob has the conversation open and scrolled to the end, so he reads it: ✓✓ for Alice.
        let mine = self
            .alice
            .wait_messages(HELLO, "Alice's message to be marked read", |m| {
                m.len() == 1 && m[0]["status"] == "read"
            })
            .await;
        assert_eq!(mine[0]["tick"], "✓✓");
    }

    /// Bob → Alice: markup stays text, and the receipt flows back.
    async fn bob_replies_with_markup(&self) {
        self.bob.type_message(REPLY).await;
        self.alice.wait_typing("Bob Builder").await;
        self.bob.press_enter().await;
        let got = self
            .alice
            .wait_messages(REPLY, "Alice to receive Bob's reply", |m| m.len() == 1)
            .await;
        assert_eq!(got[0]["mine"], false);
        assert_eq!(
            self.alice
                .js(
                    "return document.querySelectorAll('#message-list b, #message-list script').length",
                    vec![]
                )
                .await,
            0,
            "user content is shown as text, never parsed as HTML"
        );
        self.bob
            .wait_messages(REPLY, "Bob's reply to be marked read", |m| {
                m.len() == 1 && m[0]["status"] == "read" && m[0]["tick"] == "✓✓"
            })
            .await;
        self.alice.shot("03-alice-conversation").await;
        self.bob.shot("03-bob-conversation").await;
    }

    /// Each sender reloads while the reader stays idle: the ✓✓ comes back.
    async fn receipts_survive_a_reload(&self) {
        // Each sender reloads while the reader stays idle. The page resumes its socket after the
        // read frames it already saw (`since`), so the ✓✓ can only come from the stored read state
        // (`GET /messages/read`), fetched when the saved conversation opens again.
        for (browser, text, peer_name) in [
            (&self.alice, HELLO, "Bob Builder"),
            (&self.bob, REPLY, "Alice Liddell"),
        ] {
            browser.client.refresh().await.expect("reload");
            browser.wait_online().await;
            browser.wait_conversation(peer_name).await;
            let mine = browser
                .wait_messages(text, "the ✓✓ to come back after a reload", |m| {
                    m.len() == 1 && m[0]["status"] == "read"
                })
                .await;
            assert_eq!(mine[0]["mine"], true);
            assert_eq!(
                mine[0]["tick"], "✓✓",
                "{}: read receipt after a reload",
                browser.label
            );
        }
    }

    /// The server side drops every socket and refuses new ones for a while: both pages show
    /// it; Bob writes over REST meanwhile (its id is returned), Alice's page queues the same
    /// message twice, and Alice's "other device" (REST) sends that text too, with a client id.
    async fn drop_the_connection(&self) -> i64 {
        self.proxy.cut();
        for browser in [&self.alice, &self.bob] {
            browser
                .wait_until(
                    "the page to show it is reconnecting",
                    "return !document.getElementById('reconnect-banner').hidden
                         && document.querySelector('[data-testid=connection-status]').dataset.status === 'reconnecting';",
                    vec![],
                    |v| v == &json!(true),
                )
                .await;
        }
        // Meanwhile Bob (from another device: REST, straight to the server) writes to Alice...
        let (status, body) = self
            .rest_send(
                &self.b.token,
                json!({"sender_id": self.b.id, "receiver_id": self.a.id, "content": AWAY}),
            )
            .await;
        assert_eq!(status, 200, "REST send during the drop: {body}");
        let away_id = body["id"].as_i64().expect("message id");
        // ...and Alice writes to Bob in the page, twice the same, which has to queue both...
        for n in 1..=2 {
            self.alice.type_message(QUEUED).await;
            self.alice.press_enter().await;
            self.alice
                .wait_messages(QUEUED, "Alice's offline messages to show as pending", |m| {
                    m.len() == n && m.iter().all(|m| m["status"] == "pending")
                })
                .await;
        }
        // ...while her other device sends the same text: its replay must not be taken for one
        // of the page's pending sends.
        let (status, body) = self
            .rest_send(
                &self.a.token,
                json!({"sender_id": self.a.id, "receiver_id": self.b.id,
                       "content": QUEUED, "client_id": "other-device-1"}),
            )
            .await;
        assert_eq!(status, 200, "Alice's REST send during the drop: {body}");
        self.alice.shot("04-alice-reconnecting").await;
        self.bob.shot("04-bob-reconnecting").await;
        away_id
    }

    /// The connection comes back: the message sent during the drop, the two queued ones and
    /// the other device's are each shown and stored exactly once. Returns the id of a live
    /// message sent after.
    async fn resume(&self, away_id: i64) -> i64 {
        self.proxy.restore();
        self.alice.wait_online().await;
        self.bob.wait_online().await;
        let shown = self
            .alice
            .wait_messages(AWAY, "the message sent during the drop", |m| !m.is_empty())
            .await;
        assert_eq!(shown[0]["id"], away_id.to_string());
        self.alice
            .wait_messages(QUEUED, "the queued messages to be sent", |m| {
                m.len() == 3
                    && m.iter()
                        .all(|m| m["status"] == "sent" || m["status"] == "read")
            })
            .await;
        self.bob
            .wait_messages(QUEUED, "Bob to receive the queued messages", |m| {
                m.len() == 3
            })
            .await;
        // A live message after the resume: once it is on Alice's screen, everything replayed before
        // it on the same socket is too, so the counts below are final.
        self.bob.type_message(BACK).await;
        self.bob.press_enter().await;
        let live = self
            .alice
            .wait_messages(BACK, "a live message after the resume", |m| m.len() == 1)
            .await;
        let back_id: i64 = live[0]["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("id of the live message");
        assert_eq!(
            self.alice.messages(AWAY).await.len(),
            1,
            "the message sent during the drop is shown exactly once"
        );
        for (browser, what) in [
            (&self.alice, "shown to its sender"),
            (&self.bob, "delivered"),
        ] {
            let shown = browser.messages(QUEUED).await;
            let ids: std::collections::HashSet<&str> =
                shown.iter().filter_map(|m| m["id"].as_str()).collect();
            assert_eq!(
                (shown.len(), ids.len()),
                (3, 3),
                "each of the three identical messages is {what} once: {shown:?}"
            );
        }
        for browser in [&self.alice, &self.bob] {
            let duplicates = browser
                .js(
                    "const ids = [...document.querySelectorAll('[data-testid=message][data-id]')].map(m => m.dataset.id);
                     return ids.length - new Set(ids).size;",
                    vec![],
                )
                .await;
            assert_eq!(
                duplicates, 0,
                "{}: no message is shown twice",
                browser.label
            );
        }
        // The server stored each message once (the page resent the queued ones with their
        // client_ids).
        let (status, history) = self
            .server
            .send(
                self.server
                    .http
                    .get(self.server.url(&format!(
                        "/messages/?user_id={}&chat_with={}&limit=100",
                        self.a.id, self.b.id
                    )))
                    .bearer_auth(&self.a.token),
            )
            .await;
        assert_eq!(status, 200, "history: {history}");
        let contents: Vec<&str> = history
            .as_array()
            .expect("history list")
            .iter()
            .filter_map(|m| m["content"].as_str())
            .collect();
        assert_eq!(
            contents.iter().filter(|c| **c == QUEUED).count(),
            3,
            "each stored once: {contents:?}"
        );
        self.alice.shot("05-alice-resumed").await;
        self.bob.shot("05-bob-resumed").await;
        back_id
    }

    /// Log out, then back in with the token (a wrong one first): history and ✓✓ come back,
    /// and no read frame is sent for messages already read (`back_id`: Bob's newest).
    async fn log_out_and_back_in(&self, back_id: i64) {
        // Alice's page has read everything Bob sent: the server has it stored before she leaves.
        let read_state = format!(
            "/messages/read?user_id={}&chat_with={}",
            self.a.id, self.b.id
        );
        eventually(WAIT, "Alice's read mark to reach the server", || async {
            let (status, body) = self
                .server
                .send(
                    self.server
                        .http
                        .get(self.server.url(&read_state))
                        .bearer_auth(&self.a.token),
                )
                .await;
            (status == 200 && body["read_up_to"] == back_id).then_some(())
        })
        .await;
        self.alice.click("logout").await;
        self.alice.wait_visible("auth-screen").await;
        assert_eq!(
            self.alice
                .js("return localStorage.getItem('minichat.session')", vec![])
                .await,
            Value::Null,
            "log out forgets the session"
        );
        let (status, body) = self
            .server
            .send(
                self.server
                    .http
                    .get(self.server.url(&format!("/users/{}", self.a.id)))
                    .bearer_auth("not-a-token"),
            )
            .await;
        assert_eq!(status, 401, "bad token: {body}");
        self.alice.click("tab-token").await;
        self.alice
            .type_into("token-user-id", &self.a.id.to_string())
            .await;
        self.alice.type_into("token-value", "not-a-token").await;
        self.alice.click("token-submit").await;
        self.alice
            .wait_text("token-error", body["detail"].as_str().expect("401 detail"))
            .await;
        self.alice.clear("token-value").await;
        // From here on, record every frame the page sends (this document stays: no reload).
        self.alice
            .js(
                "window.sentFrames = [];
                 const send = WebSocket.prototype.send;
                 WebSocket.prototype.send = function (data) {
                     try { window.sentFrames.push(JSON.parse(data)); } catch { window.sentFrames.push(data); }
                     return send.call(this, data);
                 };",
                vec![],
            )
            .await;
        self.alice.type_into("token-value", &self.a.token).await;
        self.alice.click("token-submit").await;
        self.alice.wait_online().await;
        self.alice.open_chat(self.b.id, "Bob Builder").await;
        self.alice
            .wait_messages(BACK, "the history after signing in again", |m| m.len() == 1)
            .await;
        assert_eq!(self.alice.messages(HELLO).await.len(), 1, "history once");
        // Bob read up to the queued message: ✓✓ again in the fresh session, with Bob doing nothing.
        for (text, count) in [(HELLO, 1), (QUEUED, 3)] {
            self.alice
                .wait_messages(text, "the ✓✓ after signing in again", |m| {
                    m.len() == count && m.iter().all(|m| m["status"] == "read" && m["tick"] == "✓✓")
                })
                .await;
        }
        // Both the history and the read state are in (the ✓✓ needs both), and the page decides
        // about a read frame as soon as the later of the two arrives: it had nothing new to
        // announce, since the server already had Alice's mark at Bob's newest message.
        let sent = self.alice.js("return window.sentFrames", vec![]).await;
        let sent = sent.as_array().expect("recorded frames");
        assert!(
            sent.iter().any(|f| f["type"] == "watch"),
            "the recorder sees the page's frames: {sent:?}"
        );
        assert!(
            !sent.iter().any(|f| f["type"] == "read"),
            "no read frame for messages already read: {sent:?}"
        );
    }

    /// A phone-sized window: one pane at a time.
    async fn phone_layout(&self) {
        self.bob
            .client
            .set_window_size(400, 800)
            .await
            .expect("resize the window");
        self.bob
            .wait_until(
                "the narrow layout (conversation only)",
                "return getComputedStyle(document.querySelector('.sidebar')).display === 'none'
                 && !document.getElementById('conversation').hidden;",
                vec![],
                |v| v == &json!(true),
            )
            .await;
        self.bob.shot("06-bob-phone-conversation").await;
    }
}
