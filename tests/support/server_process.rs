//! A real `minichat-server` process (the binary of [`server_binary`](super::server_binary)),
//! for the tests that take a backend away under a running node: killed when dropped (also
//! when the test panics), its log printed then if the test failed.

use super::{eventually, server_binary, DEADLINE};
use std::process::{Child, Command, Stdio};

pub struct ServerProcess {
    child: Child,
    log: std::path::PathBuf,
    pub port: u16,
}

impl ServerProcess {
    /// Starts one on 127.0.0.1:`port` with auth off, no send-rate limit, a 2 s backend
    /// timeout, `RUST_LOG=warn` and no `REDIS_URL` from the test's own environment, then
    /// `env` (say `DATABASE_URL`, `REDIS_URL`, `MINICHAT_REDIS_PREFIX`) on top. `label` names
    /// its log file.
    pub fn start(label: &str, port: u16, env: &[(&str, &str)]) -> ServerProcess {
        let log = std::env::temp_dir().join(format!(
            "minichat-{label}-{}-{port}.log",
            std::process::id()
        ));
        let file = std::fs::File::create(&log).expect("create the server's log");
        let mut command = Command::new(server_binary());
        command
            .env_remove("REDIS_URL")
            .env("RUST_LOG", "warn")
            .env("MINICHAT_BIND", format!("127.0.0.1:{port}"))
            .env("MINICHAT_AUTH", "off")
            .env("MINICHAT_SEND_RATE", "100000")
            .env("MINICHAT_SEND_BURST", "100000")
            .env("MINICHAT_BACKEND_TIMEOUT_MS", "2000");
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start minichat-server");
        ServerProcess { child, log, port }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `ws://127.0.0.1:<port><path>`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// Creates a user named `name(prefix)` over REST; its id.
    pub async fn create_user(&self, http: &reqwest::Client, prefix: &str) -> i64 {
        let response = http
            .post(format!("{}/users/", self.base()))
            .json(&serde_json::json!({ "username": super::name(prefix) }))
            .send()
            .await
            .expect("create a user");
        assert_eq!(response.status().as_u16(), 200);
        let user: serde_json::Value = response.json().await.expect("user JSON");
        user["id"].as_i64().expect("user id")
    }

    /// Waits until `GET /health` answers 200; fails at once, with the server's log, if the
    /// process ends first (a setting it refused, say).
    pub async fn wait_healthy(&mut self, http: &reqwest::Client) {
        let url = format!("{}/health", self.base());
        let child = &mut self.child;
        let (log, url) = (&self.log, &url);
        eventually(DEADLINE, "the server to be healthy", || {
            let exited = child.try_wait().ok().flatten();
            async move {
                if let Some(status) = exited {
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    panic!("minichat-server exited ({status}) before it was healthy:\n{text}");
                }
                let response = http.get(url).send().await.ok()?;
                (response.status().as_u16() == 200).then_some(())
            }
        })
        .await;
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            if let Ok(text) = std::fs::read_to_string(&self.log) {
                eprintln!("---- minichat-server log ({})\n{text}", self.log.display());
            }
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
