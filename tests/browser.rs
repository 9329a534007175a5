//! The web chat page (`/app/`) end to end, in headless Chromium driven through chromedriver.
//!
//! A real server (auth `token`, memory backend) runs in process behind a small TCP proxy of the
//! test's own, which can cut every connection on demand and refuse new ones: that is the
//! server-side socket drop. Two browser sessions, each with its own profile, sign up as two
//! users, chat both ways, see each other typing and online, get read receipts, then live
//! through a drop: the page shows that it is reconnecting, a message queued in the page meanwhile
//! is sent once after it resumes, and a message sent over REST during the drop is shown exactly
//! once. Screenshots of both sessions go to `artifacts/browser/` under the workspace root.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`/usr/bin/chromium`, `/usr/bin/chromedriver`;
//! `scripts/test` installs them). Without them the test is skipped with a message, so developers
//! without a browser can still run `cargo test`, except in CI (env `CI` set), where a missing
//! browser is a failure: CI must have installed them.

mod support;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use minichat::server::AuthMode;
use minichat_core::test_support::free_port;
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use support::{eventually, name, Backend, Backends, TcpProxy, TestServer};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the test waits for anything it expects the page to do.
const WAIT: Duration = Duration::from_secs(20);
/// The flags this machine's Chromium needs (no sandbox as root, no network beyond localhost).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,820",
];

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

    // The scenario runs in its own task so that, pass or fail, both browsers are closed
    // properly below (a panic would otherwise leave Chromium running).
    let scenario = tokio::spawn(scenario(
        alice_browser.clone_handle(),
        bob_browser.clone_handle(),
    ));
    let outcome = scenario.await;

    for browser in [alice_browser, bob_browser] {
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

async fn scenario(alice: Browser, bob: Browser) -> Vec<PathBuf> {
    let backends = Backends::new(Backend::Memory).await;
    let server = TestServer::start(backends.settings(AuthMode::Token)).await;
    let proxy = TcpProxy::start(server.addr).await;
    let page = format!("{}/app/", proxy.url("http"));

    // --- sign up ---------------------------------------------------------------------------
    let alice_name = name("alice");
    let bob_name = name("bob");
    alice.goto(&page).await;
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
    bob.goto(&page).await;
    let b = bob.sign_up(&bob_name, "Bob Builder").await;

    // Alice's directory was loaded before Bob existed: a reload shows him, and also proves the
    // session survives a reload (it is kept in localStorage).
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

    // --- open the conversation, presence -----------------------------------------------------
    alice.open_chat(b.id, "Bob Builder").await;
    bob.open_chat(a.id, "Alice Liddell").await;
    for (browser, peer) in [(&alice, b.id), (&bob, a.id)] {
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

    // --- Alice → Bob, with typing and a read receipt -------------------------------------------
    let hello = "Hello Bob! Fancy a chat?";
    alice.type_message(hello).await;
    bob.wait_typing("Alice Liddell").await;
    bob.shot("02-bob-sees-alice-typing").await;
    alice.press_enter().await;
    let seen = bob
        .wait_messages(hello, "Bob to receive Alice's message", |m| m.len() == 1)
        .await;
    assert_eq!(seen[0]["mine"], false);
    assert_eq!(
        bob.js("return document.getElementById('typing').hidden", vec![])
            .await,
        true,
        "the typing indicator goes away when the message arrives"
    );
    // Bob has the conversation open and scrolled to the end, so he reads it: ✓✓ for Alice.
    let mine = alice
        .wait_messages(hello, "Alice's message to be marked read", |m| {
            m.len() == 1 && m[0]["status"] == "read"
        })
        .await;
    assert_eq!(mine[0]["tick"], "✓✓");

    // --- Bob → Alice: markup stays text, and the receipt flows back ----------------------------
    let reply = "Hi Alice <b>not bold</b> & <script>alert(1)</script> :)";
    bob.type_message(reply).await;
    alice.wait_typing("Bob Builder").await;
    bob.press_enter().await;
    let got = alice
        .wait_messages(reply, "Alice to receive Bob's reply", |m| m.len() == 1)
        .await;
    assert_eq!(got[0]["mine"], false);
    assert_eq!(
        alice
            .js(
                "return document.querySelectorAll('#message-list b, #message-list script').length",
                vec![]
            )
            .await,
        0,
        "user content is shown as text, never parsed as HTML"
    );
    bob.wait_messages(reply, "Bob's reply to be marked read", |m| {
        m.len() == 1 && m[0]["status"] == "read" && m[0]["tick"] == "✓✓"
    })
    .await;
    alice.shot("03-alice-conversation").await;
    bob.shot("03-bob-conversation").await;

    // --- receipts survive a reload ----------------------------------------------------------------
    // Each sender reloads while the reader stays idle. The page resumes its socket after the
    // read frames it already saw (`since`), so the ✓✓ can only come from the stored read state
    // (`GET /messages/read`), fetched when the saved conversation opens again.
    for (browser, text, peer_name) in [
        (&alice, hello, "Bob Builder"),
        (&bob, reply, "Alice Liddell"),
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

    // --- the server side drops every socket and refuses new ones for a while ------------------
    proxy.cut();
    for browser in [&alice, &bob] {
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
    let away = "Sent while you were away";
    let (status, body) = server
        .send(
            server
                .http
                .post(server.url("/messages/"))
                .bearer_auth(&b.token)
                .json(&json!({"sender_id": b.id, "receiver_id": a.id, "content": away})),
        )
        .await;
    assert_eq!(status, 200, "REST send during the drop: {body}");
    let away_id = body["id"].as_i64().expect("message id");
    // ...and Alice writes to Bob in the page, which has to queue it.
    let queued = "Queued while the connection was down";
    alice.type_message(queued).await;
    alice.press_enter().await;
    alice
        .wait_messages(queued, "Alice's offline message to show as pending", |m| {
            m.len() == 1 && m[0]["status"] == "pending"
        })
        .await;
    alice.shot("04-alice-reconnecting").await;
    bob.shot("04-bob-reconnecting").await;

    // --- the connection comes back --------------------------------------------------------------
    proxy.restore();
    alice.wait_online().await;
    bob.wait_online().await;
    let shown = alice
        .wait_messages(away, "the message sent during the drop", |m| !m.is_empty())
        .await;
    assert_eq!(shown[0]["id"], away_id.to_string());
    alice
        .wait_messages(queued, "the queued message to be sent", |m| {
            m.len() == 1 && (m[0]["status"] == "sent" || m[0]["status"] == "read")
        })
        .await;
    bob.wait_messages(queued, "Bob to receive the queued message", |m| {
        m.len() == 1
    })
    .await;
    // A live message after the resume: once it is on Alice's screen, everything replayed before
    // it on the same socket is too, so the counts below are final.
    let back = "Welcome back";
    bob.type_message(back).await;
    bob.press_enter().await;
    let live = alice
        .wait_messages(back, "a live message after the resume", |m| m.len() == 1)
        .await;
    let back_id: i64 = live[0]["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("id of the live message");
    assert_eq!(
        alice.messages(away).await.len(),
        1,
        "the message sent during the drop is shown exactly once"
    );
    assert_eq!(
        alice.messages(queued).await.len(),
        1,
        "the queued message is shown once to its sender"
    );
    assert_eq!(
        bob.messages(queued).await.len(),
        1,
        "the queued message is delivered once"
    );
    for browser in [&alice, &bob] {
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
    // The server stored each message once (the page resent the queued one with its client_id).
    let (status, history) = server
        .send(
            server
                .http
                .get(server.url(&format!(
                    "/messages/?user_id={}&chat_with={}&limit=100",
                    a.id, b.id
                )))
                .bearer_auth(&a.token),
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
        contents.iter().filter(|c| **c == queued).count(),
        1,
        "stored once: {contents:?}"
    );
    alice.shot("05-alice-resumed").await;
    bob.shot("05-bob-resumed").await;

    // --- log out, then back in with the token (a wrong one first) ------------------------------
    // Alice's page has read everything Bob sent: the server has it stored before she leaves.
    let read_state = format!("/messages/read?user_id={}&chat_with={}", a.id, b.id);
    eventually(WAIT, "Alice's read mark to reach the server", || async {
        let (status, body) = server
            .send(
                server
                    .http
                    .get(server.url(&read_state))
                    .bearer_auth(&a.token),
            )
            .await;
        (status == 200 && body["read_up_to"] == back_id).then_some(())
    })
    .await;
    alice.click("logout").await;
    alice.wait_visible("auth-screen").await;
    assert_eq!(
        alice
            .js("return localStorage.getItem('minichat.session')", vec![])
            .await,
        Value::Null,
        "log out forgets the session"
    );
    let (status, body) = server
        .send(
            server
                .http
                .get(server.url(&format!("/users/{}", a.id)))
                .bearer_auth("not-a-token"),
        )
        .await;
    assert_eq!(status, 401, "bad token: {body}");
    alice.click("tab-token").await;
    alice.type_into("token-user-id", &a.id.to_string()).await;
    alice.type_into("token-value", "not-a-token").await;
    alice.click("token-submit").await;
    alice
        .wait_text("token-error", body["detail"].as_str().expect("401 detail"))
        .await;
    alice.clear("token-value").await;
    // From here on, record every frame the page sends (this document stays: no reload).
    alice
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
    alice.type_into("token-value", &a.token).await;
    alice.click("token-submit").await;
    alice.wait_online().await;
    alice.open_chat(b.id, "Bob Builder").await;
    alice
        .wait_messages(back, "the history after signing in again", |m| m.len() == 1)
        .await;
    assert_eq!(alice.messages(hello).await.len(), 1, "history once");
    // Bob read up to the queued message: ✓✓ again in the fresh session, with Bob doing nothing.
    for text in [hello, queued] {
        alice
            .wait_messages(text, "the ✓✓ after signing in again", |m| {
                m.len() == 1 && m[0]["status"] == "read" && m[0]["tick"] == "✓✓"
            })
            .await;
    }
    // Both the history and the read state are in (the ✓✓ needs both), and the page decides
    // about a read frame as soon as the later of the two arrives: it had nothing new to
    // announce, since the server already had Alice's mark at Bob's newest message.
    let sent = alice.js("return window.sentFrames", vec![]).await;
    let sent = sent.as_array().expect("recorded frames");
    assert!(
        sent.iter().any(|f| f["type"] == "watch"),
        "the recorder sees the page's frames: {sent:?}"
    );
    assert!(
        !sent.iter().any(|f| f["type"] == "read"),
        "no read frame for messages already read: {sent:?}"
    );

    // --- a phone-sized window: one pane at a time ---------------------------------------------
    bob.client
        .set_window_size(400, 800)
        .await
        .expect("resize the window");
    bob.wait_until(
        "the narrow layout (conversation only)",
        "return getComputedStyle(document.querySelector('.sidebar')).display === 'none'
             && !document.getElementById('conversation').hidden;",
        vec![],
        |v| v == &json!(true),
    )
    .await;
    bob.shot("06-bob-phone-conversation").await;

    let mut shots = alice.shots();
    shots.extend(bob.shots());
    shots
}

// ---------------------------------------------------------------------------------------------
// The browser

/// Who a page signed up as.
struct Account {
    id: i64,
    token: String,
}

/// One WebDriver session: its own Chromium with its own profile directory.
struct Browser {
    client: Client,
    label: &'static str,
    profile: Option<PathBuf>,
    artifacts: PathBuf,
    shots: Arc<std::sync::Mutex<Vec<PathBuf>>>,
}

impl Browser {
    async fn open(driver: &Chromedriver, label: &'static str, artifacts: &Path) -> Browser {
        let profile = std::env::temp_dir().join(format!(
            "minichat-browser-{}-{label}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&profile).expect("create the browser profile directory");
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let Value::Object(capabilities) = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        }) else {
            unreachable!("an object literal")
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&driver.url())
            .await
            .unwrap_or_else(|e| panic!("start a Chromium session ({label}) via chromedriver: {e}"));
        Browser {
            client,
            label,
            profile: Some(profile),
            artifacts: artifacts.to_owned(),
            shots: Arc::default(),
        }
    }

    /// The same session, for the scenario task (closing stays with the original).
    fn clone_handle(&self) -> Browser {
        Browser {
            client: self.client.clone(),
            label: self.label,
            profile: None,
            artifacts: self.artifacts.clone(),
            shots: self.shots.clone(),
        }
    }

    async fn close(mut self) {
        if let Err(e) = self.client.clone().close().await {
            eprintln!("{}: closing the browser session failed: {e}", self.label);
        }
        if let Some(profile) = self.profile.take() {
            let _ = std::fs::remove_dir_all(profile);
        }
    }

    fn shots(&self) -> Vec<PathBuf> {
        self.shots.lock().expect("shots").clone()
    }

    async fn shot(&self, name: &str) {
        let path = self.artifacts.join(format!("{name}.png"));
        match self.client.screenshot().await {
            Ok(png) => {
                std::fs::write(&path, png).expect("write screenshot");
                self.shots.lock().expect("shots").push(path);
            }
            Err(e) => eprintln!("{}: screenshot {name} failed: {e}", self.label),
        }
    }

    async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("{}: open {url}: {e}", self.label));
    }

    async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("{}: script failed: {e}\n{script}", self.label))
    }

    /// Runs `script` until `done` accepts its result; fails after [`WAIT`] with a screenshot.
    async fn wait_until(
        &self,
        what: &str,
        script: &str,
        args: Vec<Value>,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let until = tokio::time::Instant::now() + WAIT;
        loop {
            let value = self.client.execute(script, args.clone()).await;
            match value {
                Ok(value) if done(&value) => return value,
                Ok(value) if tokio::time::Instant::now() >= until => {
                    self.fail(what, &format!("last value: {value}")).await
                }
                Err(e) if tokio::time::Instant::now() >= until => {
                    self.fail(what, &format!("last error: {e}")).await
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn fail(&self, what: &str, last: &str) -> ! {
        let slug: String = what
            .chars()
            .map(|c| if c.is_alphanumeric() { c } else { '-' })
            .collect();
        self.shot(&format!("FAILED-{}-{slug}", self.label)).await;
        let text = self
            .client
            .execute("return document.body.innerText", vec![])
            .await
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        panic!(
            "{}: timed out after {WAIT:?} waiting for {what}; {last}\n--- page text ---\n{text}\n--- screenshots in {} ---",
            self.label,
            self.artifacts.display()
        );
    }

    async fn wait_visible(&self, testid: &str) {
        self.wait_until(
            &format!("[data-testid={testid}] to be visible"),
            "const el = document.querySelector(`[data-testid=\"${arguments[0]}\"]`);
             return !!el && el.offsetParent !== null && !el.hidden;",
            vec![json!(testid)],
            |v| v == &json!(true),
        )
        .await;
    }

    async fn wait_online(&self) {
        self.wait_until(
            "the page to be connected",
            "const c = document.querySelector('[data-testid=connection-status]');
             return !!c && !document.getElementById('chat').hidden && c.dataset.status === 'online'
                 && document.getElementById('reconnect-banner').hidden;",
            vec![],
            |v| v == &json!(true),
        )
        .await;
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{}: find {css}: {e}", self.label))
    }

    async fn type_into(&self, testid: &str, text: &str) {
        self.find(&format!("[data-testid={testid}]"))
            .await
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("{}: type into {testid}: {e}", self.label));
    }

    async fn clear(&self, testid: &str) {
        self.find(&format!("[data-testid={testid}]"))
            .await
            .clear()
            .await
            .unwrap_or_else(|e| panic!("{}: clear {testid}: {e}", self.label));
    }

    async fn click(&self, testid: &str) {
        self.find(&format!("[data-testid={testid}]"))
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("{}: click {testid}: {e}", self.label));
    }

    /// Waits until the element shows exactly `text`.
    async fn wait_text(&self, testid: &str, text: &str) {
        self.wait_until(
            &format!("[data-testid={testid}] to say {text:?}"),
            "const el = document.querySelector(`[data-testid=\"${arguments[0]}\"]`);
             return !!el && !el.hidden && el.textContent === arguments[1];",
            vec![json!(testid), json!(text)],
            |v| v == &json!(true),
        )
        .await;
    }

    async fn sign_up(&self, username: &str, display_name: &str) -> Account {
        self.wait_visible("signup-form").await;
        self.type_into("signup-username", username).await;
        self.type_into("signup-display-name", display_name).await;
        self.click("signup-submit").await;
        self.wait_online().await;
        let session = self
            .js(
                "return JSON.parse(localStorage.getItem('minichat.session'))",
                vec![],
            )
            .await;
        assert_eq!(session["user"]["username"], username, "stored session");
        Account {
            id: session["user"]["id"]
                .as_i64()
                .expect("user id in the session"),
            token: session["token"]
                .as_str()
                .expect("token in the session")
                .to_owned(),
        }
    }

    async fn open_chat(&self, peer: i64, peer_name: &str) {
        let item = format!("[data-testid=user-item][data-user-id=\"{peer}\"]");
        self.wait_until(
            "the peer in the user list",
            "return !!document.querySelector(arguments[0])",
            vec![json!(item)],
            |v| v == &json!(true),
        )
        .await;
        self.find(&item).await.click().await.expect("open the chat");
        self.wait_conversation(peer_name).await;
    }

    /// Waits until the conversation with `peer_name` is open and its history loaded.
    async fn wait_conversation(&self, peer_name: &str) {
        self.wait_until(
            "the conversation to open",
            "return !document.getElementById('conversation').hidden
                 && document.getElementById('peer-name').textContent === arguments[0]
                 && document.getElementById('conversation').dataset.state === 'ready';",
            vec![json!(peer_name)],
            |v| v == &json!(true),
        )
        .await;
    }

    async fn type_message(&self, text: &str) {
        self.find("[data-testid=message-input]")
            .await
            .send_keys(text)
            .await
            .expect("type a message");
    }

    async fn press_enter(&self) {
        self.find("[data-testid=message-input]")
            .await
            .send_keys("\u{E007}")
            .await
            .expect("press Enter");
    }

    async fn wait_typing(&self, who: &str) {
        let expected = format!("{who} is typing…");
        self.wait_until(
            &format!("\"{expected}\""),
            "const box = document.querySelector('[data-testid=typing-indicator]');
             return !!box && !box.hidden && box.textContent.trim() === arguments[0];",
            vec![json!(expected)],
            |v| v == &json!(true),
        )
        .await;
    }

    /// The open conversation's messages whose text is exactly `text`.
    async fn messages(&self, text: &str) -> Vec<Value> {
        let value = self.js(MESSAGES_JS, vec![json!(text)]).await;
        value.as_array().cloned().unwrap_or_default()
    }

    async fn wait_messages(
        &self,
        text: &str,
        what: &str,
        done: impl Fn(&Vec<Value>) -> bool,
    ) -> Vec<Value> {
        let value = self
            .wait_until(what, MESSAGES_JS, vec![json!(text)], |v| {
                v.as_array().is_some_and(&done)
            })
            .await;
        value.as_array().cloned().unwrap_or_default()
    }
}

const MESSAGES_JS: &str = "
    return [...document.querySelectorAll('#message-list [data-testid=message]')]
        .filter(m => m.querySelector('[data-testid=message-text]').textContent === arguments[0])
        .map(m => {
            const tick = m.querySelector('[data-testid=message-status]');
            return {
                id: m.dataset.id || null,
                status: m.dataset.status || null,
                mine: m.classList.contains('mine'),
                tick: tick ? tick.textContent : null,
            };
        });";

// ---------------------------------------------------------------------------------------------
// chromedriver

/// A chromedriver process of the test's own, in its own process group so that everything it
/// started goes with it when dropped.
struct Chromedriver {
    child: Child,
    port: u16,
}

impl Chromedriver {
    async fn start(log: &Path) -> Chromedriver {
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {CHROMEDRIVER}: {e}"));
        let driver = Chromedriver { child, port };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        let status = driver.url() + "/status";
        eventually(WAIT, "chromedriver to answer", || {
            let request = http.get(&status);
            async move {
                let body: Value = request.send().await.ok()?.json().await.ok()?;
                (body["value"]["ready"] == true).then_some(())
            }
        })
        .await;
        driver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The group is the one made for this child at spawn: chromedriver and its browsers.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
