//! The OpenAPI document describes the server: schemathesis (from PyPI; `scripts/test` installs
//! it) generates requests from `/openapi.json` of a real server and runs every check it has
//! (no 5xx, documented statuses, content types, headers and bodies, auth that is not ignored).
//! Once with auth off, once with auth on and a user's token.
//!
//! Without `schemathesis` on PATH the test is skipped with a message, except in CI (env `CI`
//! set), where that is a failure: CI must have installed it.

mod support;

use minichat::server::AuthMode;
use std::process::Command;
use support::{name, Backend, Backends, TestServer};

/// Examples per operation and run: about 10 s per run on two cores.
const EXAMPLES: &str = "40";
/// Fixed, so a failure can be reproduced.
const SEED: &str = "20261202";

fn schemathesis_missing() -> Option<String> {
    match Command::new("schemathesis").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`schemathesis --version` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => Some(format!("schemathesis is not on PATH ({e})")),
    }
}

/// Runs `schemathesis run --checks all` against `server`, with `headers` on every request.
async fn schemathesis(server: &TestServer, headers: Vec<String>, what: &str) {
    let base = server.url("");
    let schema = server.url("/openapi.json");
    let mut args: Vec<String> = [
        "run",
        "--experimental=openapi-3.1",
        "--checks",
        "all",
        "--hypothesis-max-examples",
        EXAMPLES,
        "--hypothesis-seed",
        SEED,
        "--hypothesis-database=none",
        "--request-timeout",
        "10000",
        "--no-color",
        "--base-url",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(base);
    for h in headers {
        args.push("--header".into());
        args.push(h);
    }
    args.push(schema);
    // Run from the temporary directory: schemathesis may leave files where it runs.
    let out = tokio::task::spawn_blocking(move || {
        Command::new("schemathesis")
            .args(&args)
            .current_dir(std::env::temp_dir())
            .output()
    })
    .await
    .expect("schemathesis task")
    .expect("schemathesis runs");
    assert!(
        out.status.success(),
        "schemathesis ({what}) found failures, exit {:?}:\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_holds_against_the_server() {
    if let Some(why) = schemathesis_missing() {
        let message = format!(
            "contract test: {why}; install it with \
             `python3 -m pip install 'schemathesis>=3.30,<4' 'hypothesis<6.120'` (scripts/test does)"
        );
        if std::env::var_os("CI").is_some() {
            panic!("{message} (CI is set, so this is a failure)");
        }
        eprintln!("SKIPPED {message}");
        return;
    }
    let backends = Backends::new(Backend::Memory).await;

    let open = TestServer::open(&backends).await;
    schemathesis(&open, Vec::new(), "auth off").await;

    let secured = TestServer::start(backends.settings(AuthMode::Token)).await;
    let user = secured.user(&name("contract")).await;
    let token = user["token"].as_str().expect("a token with auth on");
    schemathesis(
        &secured,
        vec![format!("Authorization: Bearer {token}")],
        "auth on",
    )
    .await;
}
