//! Helpers for tests only: throwaway PostgreSQL databases, unique Redis key prefixes, free
//! ports, and throw-away Redis servers and Redis Clusters ([`ThrowawayRedisCluster`]).
//!
//! This file exists so that every test (of this crate, of the server, of an application that
//! embeds Minichat) can run against the real backends in isolation and in parallel: each test
//! gets its own database, which is dropped when the test ends, and its own Redis prefix. It is
//! compiled only with the `test-support` feature (and for this crate's unit tests); the library
//! never uses it. Its functions panic with a clear message when the test environment is
//! missing, which is what a test wants.
//!
//! ```no_run
//! # async fn demo() {
//! use minichat_core::test_support::TestDatabase;
//! let db = TestDatabase::create().await; // a fresh, empty database
//! let url = db.url(); // hand it to PostgresStorage::connect or ChatConfig
//! # let _ = url;
//! } // dropped here, with every connection to it
//! ```

mod cluster_view;
mod redis_cluster;

pub use redis_cluster::{
    key_slot, node_connection, parse_cluster_nodes, ClusterNodeView, ThrowawayRedisCluster,
    CLUSTER_SLOTS,
};
use tokio_postgres::NoTls;

/// The PostgreSQL server (and maintenance database) test databases are created on.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Environment variable that overrides [`DEFAULT_ADMIN_URL`]; it must be a URL
/// (`postgres://user:password@host:port/dbname`), not a `key=value` string.
pub const ADMIN_URL_ENV: &str = "MINICHAT_TEST_PG_ADMIN_URL";

/// A PostgreSQL database of its own for one test, dropped (`WITH (FORCE)`, so open connections
/// do not stop it) when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
    name: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates an empty database named `minichat_test_<pid>_<random>` on the server of
    /// `MINICHAT_TEST_PG_ADMIN_URL` (default [`DEFAULT_ADMIN_URL`]).
    ///
    /// # Panics
    /// When that server cannot be reached or refuses to create the database.
    pub async fn create() -> TestDatabase {
        let admin_url = std::env::var(ADMIN_URL_ENV).unwrap_or_else(|_| DEFAULT_ADMIN_URL.into());
        let name = format!(
            "minichat_test_{}_{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let url = with_dbname(&admin_url, &name)
            .unwrap_or_else(|| panic!("{ADMIN_URL_ENV} must be a postgres:// URL: {admin_url}"));
        let (client, connection) = tokio_postgres::connect(&admin_url, NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!("tests need PostgreSQL at {admin_url} (set {ADMIN_URL_ENV}): {e:?}")
            });
        let driver = tokio::spawn(connection);
        // An identifier cannot be a parameter; `name` is generated above from digits, hex
        // and underscores only.
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e:?}"));
        drop(client);
        let _ = driver.await;
        TestDatabase {
            url,
            name,
            admin_url,
        }
    }

    /// The URL of this database (the admin URL with its database name replaced).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    /// Drops the database on a thread of its own with its own runtime, so that this works
    /// inside a runtime (of either flavour) and outside one; waits for it to finish.
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropper = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&admin_url, NoTls)
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                let driver = tokio::spawn(connection);
                let dropped = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
                    .map_err(|e| format!("{e:?}"));
                drop(client);
                let _ = driver.await;
                dropped
            })
        });
        match dropper.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("could not drop test database {}: panicked", self.name),
        }
    }
}

/// `url` with its database name (the path) replaced by `dbname`, keeping any query string.
fn with_dbname(url: &str, dbname: &str) -> Option<String> {
    let scheme_end = url.find("://")? + 3;
    if !matches!(&url[..scheme_end], "postgres://" | "postgresql://") {
        return None;
    }
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let after = &rest[authority_end..];
    let query = after.find('?').map_or("", |q| &after[q..]);
    Some(format!("{}{authority}/{dbname}{query}", &url[..scheme_end]))
}

/// A Redis key prefix no other test run uses: `minichat:test:<pid>:<random>:`.
pub fn unique_redis_prefix() -> String {
    format!(
        "minichat:test:{}:{:016x}:",
        std::process::id(),
        rand::random::<u64>()
    )
}

/// Deletes every key under `prefix` on the Redis at `url` (a test's own prefix, at its end),
/// on a thread of its own with its own runtime, so it works inside a runtime and outside one.
/// Failures are reported on stderr, not raised: cleaning up must not fail a test.
pub fn delete_redis_prefix(url: &str, prefix: &str) {
    assert!(
        prefix.starts_with("minichat:test:"),
        "refusing to delete keys outside a test prefix: {prefix}"
    );
    if let Err(e) = scan_prefix(url, prefix, true) {
        eprintln!("could not delete Redis keys on {}: {e}", url_safe(url));
    }
}

/// Every key under `prefix` on the Redis at `url` now (like [`delete_redis_prefix`], from a
/// thread of its own); panics when Redis cannot be asked.
pub fn redis_keys(url: &str, prefix: &str) -> Vec<String> {
    scan_prefix(url, prefix, false)
        .unwrap_or_else(|e| panic!("could not list Redis keys on {}: {e}", url_safe(url)))
}

/// `SCAN`s the keys under `prefix` (unlinking each batch when `delete`), on a thread with a
/// runtime of its own; returns the keys found.
fn scan_prefix(url: &str, prefix: &str, delete: bool) -> Result<Vec<String>, String> {
    let (url, prefix) = (url.to_owned(), prefix.to_owned());
    let scanner = std::thread::spawn(move || -> Result<Vec<String>, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            let (mut cursor, mut found) = (0u64, Vec::new());
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                if delete && !keys.is_empty() {
                    redis::cmd("UNLINK")
                        .arg(&keys)
                        .query_async::<()>(&mut conn)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                found.extend(keys);
                cursor = next;
                if cursor == 0 {
                    return Ok(found);
                }
            }
        })
    });
    scanner.join().map_err(|_| "panicked".to_owned())?
}

fn url_safe(url: &str) -> &str {
    url.split('@').next_back().unwrap_or(url)
}

/// A throw-away `redis-server` of a test's own on a free loopback port (never the shared one):
/// killed, and its directory removed, when dropped, also when the test panics.
pub struct ThrowawayRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl ThrowawayRedis {
    /// Starts one and waits until it answers `PING`.
    ///
    /// # Panics
    /// When `redis-server` is not on `PATH` or does not come up within 10 s.
    pub async fn start() -> ThrowawayRedis {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("minichat-redis-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        let mut server = ThrowawayRedis {
            port,
            dir,
            child: None,
        };
        server.restart().await;
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again, after [`kill`](Self::kill)) on the same port; waits until it answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = std::process::Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tests need redis-server on PATH (scripts/test installs it)");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("a valid URL");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Kills it and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ThrowawayRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A local TCP port that was free a moment ago (bound on 127.0.0.1:0, then released). Nothing
/// listens on it when this returns, so it also serves as "a closed port".
///
/// # Panics
/// When no local port can be bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind a local port: {e}"))
}

#[cfg(test)]
mod tests {
    use super::with_dbname;

    #[test]
    fn dbname_is_replaced() {
        let f = |u| with_dbname(u, "x");
        assert_eq!(
            f("postgres://postgres@127.0.0.1:5432/postgres").as_deref(),
            Some("postgres://postgres@127.0.0.1:5432/x")
        );
        assert_eq!(
            f("postgresql://u:p@h/db?sslmode=disable").as_deref(),
            Some("postgresql://u:p@h/x?sslmode=disable")
        );
        assert_eq!(f("postgres://h:1").as_deref(), Some("postgres://h:1/x"));
        assert_eq!(f("postgres://h?a=b").as_deref(), Some("postgres://h/x?a=b"));
        assert_eq!(f("host=h dbname=d"), None);
        assert_eq!(f("mysql://h/d"), None);
    }
}
