//! The browser side of `tests/browser.rs`: a chromedriver process of the test's own, and
//! `Browser`, one WebDriver session (its own Chromium and profile) with the page-level actions
//! and waits the scenario is written in. Every wait has a deadline ([`WAIT`]) and, when it
//! runs out, fails with a screenshot and the page's text.

use crate::support::eventually;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use minichat_core::test_support::free_port;
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the test waits for anything it expects the page to do.
pub const WAIT: Duration = Duration::from_secs(20);
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

// ---------------------------------------------------------------------------------------------
// The browser

/// Who a page signed up as.
pub struct Account {
    pub id: i64,
    pub token: String,
}

/// One WebDriver session: its own Chromium with its own profile directory.
pub struct Browser {
    pub client: Client,
    pub label: &'static str,
    profile: Option<PathBuf>,
    artifacts: PathBuf,
    shots: Arc<std::sync::Mutex<Vec<PathBuf>>>,
}

impl Browser {
    pub async fn open(driver: &Chromedriver, label: &'static str, artifacts: &Path) -> Browser {
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
    pub fn clone_handle(&self) -> Browser {
        Browser {
            client: self.client.clone(),
            label: self.label,
            profile: None,
            artifacts: self.artifacts.clone(),
            shots: self.shots.clone(),
        }
    }

    pub async fn close(mut self) {
        if let Err(e) = self.client.clone().close().await {
            eprintln!("{}: closing the browser session failed: {e}", self.label);
        }
        if let Some(profile) = self.profile.take() {
            let _ = std::fs::remove_dir_all(profile);
        }
    }

    pub fn shots(&self) -> Vec<PathBuf> {
        self.shots.lock().expect("shots").clone()
    }

    pub async fn shot(&self, name: &str) {
        let path = self.artifacts.join(format!("{name}.png"));
        match self.client.screenshot().await {
            Ok(png) => {
                std::fs::write(&path, png).expect("write screenshot");
                self.shots.lock().expect("shots").push(path);
            }
            Err(e) => eprintln!("{}: screenshot {name} failed: {e}", self.label),
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("{}: open {url}: {e}", self.label));
    }

    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("{}: script failed: {e}\n{script}", self.label))
    }

    /// Runs `script` until `done` accepts its result; fails after [`WAIT`] with a screenshot.
    pub async fn wait_until(
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

    pub async fn wait_visible(&self, testid: &str) {
        self.wait_until(
            &format!("[data-testid={testid}] to be visible"),
            "const el = document.querySelector(`[data-testid=\"${arguments[0]}\"]`);
             return !!el && el.offsetParent !== null && !el.hidden;",
            vec![json!(testid)],
            |v| v == &json!(true),
        )
        .await;
    }

    pub async fn wait_online(&self) {
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

    pub async fn type_into(&self, testid: &str, text: &str) {
        self.find(&format!("[data-testid={testid}]"))
            .await
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("{}: type into {testid}: {e}", self.label));
    }

    pub async fn clear(&self, testid: &str) {
        self.find(&format!("[data-testid={testid}]"))
            .await
            .clear()
            .await
            .unwrap_or_else(|e| panic!("{}: clear {testid}: {e}", self.label));
    }

    pub async fn click(&self, testid: &str) {
        self.find(&format!("[data-testid={testid}]"))
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("{}: click {testid}: {e}", self.label));
    }

    /// Clicks the first element matching `css`, once there is one.
    pub async fn click_css(&self, what: &str, css: &str) {
        self.wait_css(what, css).await;
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("{}: click {css}: {e}", self.label));
    }

    /// Waits until an element matching `css` is shown.
    pub async fn wait_css(&self, what: &str, css: &str) {
        self.wait_until(
            what,
            "const el = document.querySelector(arguments[0]);
             return !!el && el.offsetParent !== null && !el.hidden;",
            vec![json!(css)],
            |v| v == &json!(true),
        )
        .await;
    }

    /// Waits until no element matching `css` is shown.
    pub async fn wait_gone(&self, what: &str, css: &str) {
        self.wait_until(
            what,
            "return [...document.querySelectorAll(arguments[0])].every(el => el.hidden || el.offsetParent === null);",
            vec![json!(css)],
            |v| v == &json!(true),
        )
        .await;
    }

    /// Waits until the text of the first element matching `css` is exactly `text`.
    pub async fn wait_css_text(&self, what: &str, css: &str, text: &str) {
        self.wait_until(
            what,
            "const el = document.querySelector(arguments[0]);
             return !!el && el.textContent === arguments[1];",
            vec![json!(css), json!(text)],
            |v| v == &json!(true),
        )
        .await;
    }

    /// Waits until the element shows exactly `text`.
    pub async fn wait_text(&self, testid: &str, text: &str) {
        self.wait_until(
            &format!("[data-testid={testid}] to say {text:?}"),
            "const el = document.querySelector(`[data-testid=\"${arguments[0]}\"]`);
             return !!el && !el.hidden && el.textContent === arguments[1];",
            vec![json!(testid), json!(text)],
            |v| v == &json!(true),
        )
        .await;
    }

    pub async fn sign_up(&self, username: &str, display_name: &str) -> Account {
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

    pub async fn open_chat(&self, peer: i64, peer_name: &str) {
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

    /// Opens a conversation of the inbox by its id.
    pub async fn open_inbox_item(&self, conversation: i64, title: &str) {
        self.click_css(
            "the conversation in the inbox",
            &format!("[data-testid=conversation-item][data-conversation-id=\"{conversation}\"]"),
        )
        .await;
        self.wait_conversation(title).await;
    }

    /// Waits until the conversation with `peer_name` is open and its history loaded.
    pub async fn wait_conversation(&self, peer_name: &str) {
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

    pub async fn type_message(&self, text: &str) {
        self.find("[data-testid=message-input]")
            .await
            .send_keys(text)
            .await
            .expect("type a message");
    }

    pub async fn press_enter(&self) {
        self.find("[data-testid=message-input]")
            .await
            .send_keys("\u{E007}")
            .await
            .expect("press Enter");
    }

    pub async fn wait_typing(&self, who: &str) {
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
    pub async fn messages(&self, text: &str) -> Vec<Value> {
        let value = self.js(MESSAGES_JS, vec![json!(text)]).await;
        value.as_array().cloned().unwrap_or_default()
    }

    pub async fn wait_messages(
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
            const sender = m.querySelector('[data-testid=message-sender]');
            const readers = m.querySelector('[data-testid=message-readers]');
            return {
                id: m.dataset.id || null,
                status: m.dataset.status || null,
                mine: m.classList.contains('mine'),
                tick: tick ? tick.textContent : null,
                sender: sender ? sender.textContent : null,
                readers: readers ? readers.textContent : null,
            };
        });";

// ---------------------------------------------------------------------------------------------
// chromedriver

/// A chromedriver process of the test's own, in its own process group so that everything it
/// started goes with it when dropped.
pub struct Chromedriver {
    child: Child,
    port: u16,
}

impl Chromedriver {
    pub async fn start(log: &Path) -> Chromedriver {
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

    pub fn url(&self) -> String {
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
