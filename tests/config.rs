//! The README's promise about configuration, held against the real binary: every setting with a
//! bad value stops `minichat-server` with a non-zero status and exactly one line on stderr that
//! names its environment variable (and flag), the value and what is expected; a backend of the
//! wrong protocol is said in plain words; and a missing PostgreSQL database is explained and
//! created by `migrate --create-database`.

mod support;

use minichat_core::test_support::{free_port, TestDatabase};
use std::process::{Command, Output};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Runs the binary with `env` over a clean environment (no backend, a free port), to its end.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(support::server_binary());
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("MINICHAT_")
            || key == "DATABASE_URL"
            || key == "REDIS_URL"
            || key == "RUST_LOG"
        {
            command.env_remove(key);
        }
    }
    command.env("MINICHAT_BIND", format!("127.0.0.1:{}", free_port()));
    command.envs(env.iter().copied());
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start minichat-server");
    // A bad setting ends the process within the backends' connect timeouts; one that is
    // accepted would serve for ever: stop it after a deadline and let the assertion say so.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().expect("wait").is_none() {
        let _ = child.kill();
    }
    child.wait_with_output().expect("output")
}

/// Asserts the one line: non-zero exit, stderr exactly one line naming `variable` and holding
/// each of `words`.
fn assert_one_line(out: &Output, variable: &str, words: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{variable}: the server accepted it; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{variable}: not one line:\n{stderr}");
    let line = lines[0];
    assert!(
        line.starts_with(&format!("minichat-server: {variable}")),
        "{variable}: the line does not start with the variable: {line}"
    );
    for word in words {
        assert!(
            line.contains(word),
            "{variable}: `{word}` missing from: {line}"
        );
    }
    line.to_owned()
}

#[test]
fn every_setting_with_a_bad_value_stops_the_server_with_one_line() {
    // (variable, bad value, words the line must hold besides the variable)
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "MINICHAT_BIND",
            "nowhere",
            &["--bind", "'nowhere'", "expected"],
        ),
        (
            "DATABASE_URL",
            "mysql://127.0.0.1:3306/x",
            &["--database-url", "mysql://", "expected postgresql://"],
        ),
        (
            "DATABASE_URL",
            "garbage",
            &["--database-url", "'garbage'", "expected postgresql://"],
        ),
        (
            "MINICHAT_DATABASE_POOL_SIZE",
            "0",
            &["--database-pool-size", "'0'", "at least 1"],
        ),
        (
            "REDIS_URL",
            "garbage",
            &["--redis-url", "'garbage'", "expected redis://"],
        ),
        (
            "REDIS_URL",
            "http://127.0.0.1:6379",
            &["--redis-url", "not a Redis one"],
        ),
        (
            "REDIS_URL",
            "redis://127.0.0.1:6379,http://127.0.0.1:6380",
            &["--redis-url", "not a Redis one", "separated by commas"],
        ),
        (
            "REDIS_URL",
            "redis://127.0.0.1:6379,,redis://127.0.0.1:6380",
            &["--redis-url", "is empty"],
        ),
        ("MINICHAT_AUTH", "foo", &["--auth", "'foo'", "token, off"]),
        ("MINICHAT_AUTH", "", &["--auth", "token, off"]),
        ("MINICHAT_JWT_SECRET", "", &["--jwt-secret", "non-empty"]),
        (
            "MINICHAT_SIGNUP",
            "closed",
            &["--signup", "'closed'", "open, admin"],
        ),
        (
            "MINICHAT_CORS_ORIGINS",
            "not a url",
            &["--cors-origins", "'not a url'", "expected"],
        ),
        (
            "MINICHAT_CORS_ORIGINS",
            "https://chat.example.com/",
            &["--cors-origins", "https://chat.example.com`"],
        ),
        ("MINICHAT_CORS_ORIGINS", "", &["--cors-origins", "expected"]),
        (
            "MINICHAT_MAX_BODY_BYTES",
            "-1",
            &["--max-body-bytes", "'-1'", "whole number"],
        ),
        (
            "MINICHAT_MAX_HEADER_BYTES",
            "100",
            &["--max-header-bytes", "'100'", "at least 1024"],
        ),
        (
            "MINICHAT_MAX_WS_MESSAGE_BYTES",
            "64k",
            &["--max-ws-message-bytes", "'64k'", "whole number"],
        ),
        (
            "MINICHAT_HEADER_READ_TIMEOUT_SECS",
            "0",
            &["--header-read-timeout-secs", "at least 1"],
        ),
        (
            "MINICHAT_SEND_RATE",
            "fast",
            &["--send-rate", "'fast'", "whole number"],
        ),
        ("MINICHAT_SEND_BURST", "0", &["--send-burst", "at least 1"]),
        (
            "MINICHAT_SIGNAL_RATE",
            "0",
            &["--signal-rate", "at least 1"],
        ),
        (
            "MINICHAT_SIGNAL_BURST",
            "1.5",
            &["--signal-burst", "whole number"],
        ),
        (
            "MINICHAT_MAX_SOCKETS_PER_USER",
            "many",
            &["--max-sockets-per-user", "whole number"],
        ),
        (
            "MINICHAT_MAX_SOCKETS",
            "-5",
            &["--max-sockets", "whole number"],
        ),
        (
            "MINICHAT_WS_PING_SECS",
            "0",
            &["--ws-ping-secs", "at least 1"],
        ),
        ("MINICHAT_WS_QUEUE", "0", &["--ws-queue", "at least 1"]),
        (
            "MINICHAT_WS_SEND_BUFFER_BYTES",
            "0",
            &["--ws-send-buffer-bytes", "at least 1"],
        ),
        (
            "MINICHAT_WS_WRITE_STALL_MS",
            "soon",
            &["--ws-write-stall-ms", "'soon'", "whole number"],
        ),
        (
            "MINICHAT_LOG_FORMAT",
            "xml",
            &["--log-format", "'xml'", "text, json"],
        ),
        ("RUST_LOG", "info,[", &["'info,['", "log filter"]),
    ];
    for (variable, value, words) in cases {
        let out = run(&[], &[(variable, value)]);
        assert_one_line(&out, variable, words);
    }
    // A prefix is checked once there is a Redis to use it on: braces would make every key
    // hash to one Redis Cluster slot.
    let out = run(
        &[],
        &[
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("MINICHAT_REDIS_PREFIX", "mc:{x}:"),
        ],
    );
    assert_one_line(&out, "MINICHAT_REDIS_PREFIX", &["{", "hash tag"]);
}

#[test]
fn a_secret_value_is_never_printed() {
    let out = run(&["--jwt-secret", ""], &[]);
    assert_one_line(&out, "MINICHAT_JWT_SECRET", &["--jwt-secret"]);
    let out = run(
        &[],
        &[("DATABASE_URL", "mysql://user:hunter2@127.0.0.1:3306/x")],
    );
    let line = assert_one_line(&out, "DATABASE_URL", &["***"]);
    assert!(!line.contains("hunter2"), "{line}");
    // A multi-host URL (no valid single URL) that cannot connect: still one line, still masked,
    // for `serve` and for `migrate`.
    let url = format!(
        "postgresql://user:hunter2@127.0.0.1:{},127.0.0.1:{}/x?target_session_attrs=read-write",
        free_port(),
        free_port()
    );
    for args in [&[][..], &["migrate"][..]] {
        let out = run(args, &[("DATABASE_URL", url.as_str())]);
        let line = assert_one_line(&out, "DATABASE_URL", &["user:***@127.0.0.1:", "connect"]);
        assert!(!line.contains("hunter2"), "{args:?}: {line}");
    }
}

/// A listener that answers every connection as a web server would.
async fn http_listener() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_of_another_protocol_is_named_in_plain_words() {
    let http = http_listener().await;
    let redis_at_http = format!("redis://127.0.0.1:{http}");
    let pg_at_http = format!("postgresql://postgres@127.0.0.1:{http}/minichat");
    let cases = [
        (
            "REDIS_URL",
            redis_at_http,
            format!("127.0.0.1:{http} does not speak Redis (it answered as an HTTP server)"),
        ),
        (
            "REDIS_URL",
            "redis://127.0.0.1:5432".to_owned(),
            "127.0.0.1:5432 does not speak Redis (it is a PostgreSQL server)".to_owned(),
        ),
        (
            "DATABASE_URL",
            pg_at_http,
            format!("127.0.0.1:{http} does not speak PostgreSQL (it answered as an HTTP server)"),
        ),
        (
            "DATABASE_URL",
            "postgresql://postgres@127.0.0.1:6379/minichat".to_owned(),
            "127.0.0.1:6379 does not speak PostgreSQL (it is a Redis server)".to_owned(),
        ),
    ];
    for (variable, value, words) in cases {
        let out = tokio::task::spawn_blocking(move || run(&[], &[(variable, &value)]))
            .await
            .expect("run");
        assert_one_line(&out, variable, &[&words]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_is_explained_then_created_by_migrate() {
    // A unique name: the test database's, dropped here so that it does not exist yet (and
    // dropped again, if created, when `db` goes).
    let db = TestDatabase::create().await;
    let admin = std::env::var(minichat_core::test_support::ADMIN_URL_ENV)
        .unwrap_or_else(|_| minichat_core::test_support::DEFAULT_ADMIN_URL.to_owned());
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("admin connection");
    let driver = tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP DATABASE \"{}\" WITH (FORCE)", db.name()))
        .await
        .expect("drop the fresh database");
    drop(client);
    let _ = driver.await;

    let url = db.url().to_owned();
    let serve = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || run(&[], &[("DATABASE_URL", &url)]))
            .await
            .expect("run")
    };
    assert_one_line(
        &serve,
        "DATABASE_URL",
        &[
            &format!("database \"{}\" does not exist", db.name()),
            "minichat-server migrate --create-database",
        ],
    );

    for expected in ["database created", "database already exists"] {
        let url = url.clone();
        let out = tokio::task::spawn_blocking(move || {
            run(&["migrate", "--create-database"], &[("DATABASE_URL", &url)])
        })
        .await
        .expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "migrate --create-database failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(expected), "{stdout}");
        assert!(stdout.contains("migrations applied"), "{stdout}");
    }
    // The database is usable: the storage connects to it and finds its tables.
    let chat = minichat_core::Chat::connect(&minichat_core::ChatConfig {
        database_url: Some(url),
        ..Default::default()
    })
    .await
    .expect("connects to the created database");
    use minichat_core::ChatService;
    assert!(chat.health().await.is_ok());
}

/// Starts the binary under a shell that first sets the file-descriptor limits, waits until it
/// answers `/health`, and returns its soft limit as the running server sees it, then its stderr.
fn serve_with_fd_limits(soft: u64, hard: u64, max_sockets: &str) -> (u64, String) {
    use std::io::{Read, Write};
    let port = free_port();
    let script = format!("ulimit -Sn {soft} && ulimit -Hn {hard} && exec \"$0\"");
    let mut command = Command::new("bash");
    command.arg("-c").arg(&script).arg(support::server_binary());
    for (key, _) in std::env::vars() {
        if key.starts_with("MINICHAT_") || key == "DATABASE_URL" || key == "REDIS_URL" {
            command.env_remove(key);
        }
    }
    let mut child = command
        .env("MINICHAT_BIND", format!("127.0.0.1:{port}"))
        .env("MINICHAT_MAX_SOCKETS", max_sockets)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start minichat-server");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let healthy = loop {
        let answer = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.write_all(b"GET /health HTTP/1.0\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        });
        if matches!(&answer, Ok(text) if text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"))
        {
            break true;
        }
        if std::time::Instant::now() > deadline || child.try_wait().expect("wait").is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap_or_default();
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(healthy, "the server did not come up: {stderr}");
    let soft_seen = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("Max open files in /proc/PID/limits");
    (soft_seen, stderr)
}

#[test]
fn the_server_raises_its_fd_limit_for_max_sockets_and_warns_when_it_cannot() {
    let (_, hard) = rlimit_of_this_process();
    if hard < 6000 {
        eprintln!("skipped: this process's hard fd limit {hard} is below the test's 6,000");
        return;
    }
    // A soft limit of 1,024 under a higher hard one is raised to what 5,000 sockets need.
    let (soft, stderr) = serve_with_fd_limits(1024, hard, "5000");
    assert!(
        soft >= 5000 + 256,
        "soft limit {soft} was not raised; stderr: {stderr}"
    );
    assert!(
        !stderr.contains("MINICHAT_MAX_SOCKETS"),
        "needless warning: {stderr}"
    );
    // A hard limit of 1,024 cannot be raised: the server starts and says so in one line.
    let (soft, stderr) = serve_with_fd_limits(1024, 1024, "5000");
    assert_eq!(soft, 1024);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("MINICHAT_MAX_SOCKETS"))
        .collect();
    assert_eq!(warnings.len(), 1, "stderr: {stderr}");
    assert!(
        warnings[0].contains("5000")
            && warnings[0].contains("1024")
            && warnings[0].contains("ulimit -n"),
        "the warning names the setting, the value, the limit and the fix: {}",
        warnings[0]
    );
}

/// This test process's (soft, hard) fd limits, from /proc.
fn rlimit_of_this_process() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let mut fields = line.split_whitespace().skip(3);
    let mut next = || {
        fields
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    };
    (next(), next())
}
