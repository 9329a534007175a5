//! A PostgreSQL primary with a synchronous streaming standby, of a test's own, on free loopback
//! ports: what a failover test stops and promotes. Never the shared PostgreSQL on 5432.
//!
//! This file exists so that a test can take a real primary away (`pg_ctl stop -m immediate`,
//! as a crash would) and promote a real standby (`pg_ctl promote`) without touching any shared
//! service. The binaries are PostgreSQL's own (`initdb`, `pg_ctl`, `pg_basebackup`) from the
//! newest `/usr/lib/postgresql/<version>/bin` (Debian's layout, what `scripts/test` installs),
//! or `MINICHAT_TEST_PG_BIN`. PostgreSQL refuses to run as root, so as root they run as user
//! `postgres` through `runuser` (the data directories are then owned by `postgres`).
//!
//! The pair: `initdb` with `trust` for local TCP (its default `pg_hba.conf` also lets
//! replication in from 127.0.0.1), the standby made by `pg_basebackup -R` (so it streams from
//! the primary), then `synchronous_standby_names = '*'` set on the primary only (`ALTER
//! SYSTEM`, after the copy, so the promoted standby does not wait for a standby it does not
//! have), and a wait until `pg_stat_replication` says the standby is `sync`: from then on a
//! `COMMIT` returns only once the standby has the commit record on disk. Everything is
//! stopped (`-m immediate`) and removed when the pair is dropped, also when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How long starting, promoting or a replication state may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);

/// The environment variable naming the directory of `initdb`, `pg_ctl` and `pg_basebackup`.
pub const PG_BIN_ENV: &str = "MINICHAT_TEST_PG_BIN";

pub struct PostgresPair {
    base: PathBuf,
    bin: PathBuf,
    /// Run PostgreSQL's tools as user `postgres` (this process is root).
    as_postgres: bool,
    pub primary_port: u16,
    pub standby_port: u16,
}

/// The newest `/usr/lib/postgresql/<version>/bin` with an `initdb`, or `MINICHAT_TEST_PG_BIN`.
fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (install the \
             postgresql package, or set {PG_BIN_ENV} to the directory of initdb and pg_ctl)"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

impl PostgresPair {
    /// Starts the primary, copies it into the standby, starts that, and waits until the standby
    /// is the primary's synchronous standby.
    pub async fn start() -> PostgresPair {
        let as_postgres = is_root();
        let base = std::env::temp_dir().join(format!(
            "minichat-pg-pair-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&base).expect("create the pair's directory");
        let primary_port = minichat_core::test_support::free_port();
        let standby_port = loop {
            let port = minichat_core::test_support::free_port();
            if port != primary_port {
                break port;
            }
        };
        let pair = PostgresPair {
            base,
            bin: pg_bin(),
            as_postgres,
            primary_port,
            standby_port,
        };
        if as_postgres {
            pair.check(
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&pair.base)
                    .output(),
                "chown the pair's directory to postgres",
            );
        }
        let primary = pair.primary_dir();
        pair.tool(
            "initdb",
            &[
                "-D".as_ref(),
                primary.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "--no-sync".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--locale=C".as_ref(),
            ],
        );
        pair.configure(&primary, primary_port, true);
        pair.pg_ctl_start(&primary);
        let standby = pair.standby_dir();
        let port = primary_port.to_string();
        pair.tool(
            "pg_basebackup",
            &[
                "-h".as_ref(),
                "127.0.0.1".as_ref(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-D".as_ref(),
                standby.as_os_str(),
                "-R".as_ref(),
                "-X".as_ref(),
                "stream".as_ref(),
                "--checkpoint=fast".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        pair.configure(&standby, standby_port, false);
        pair.pg_ctl_start(&standby);

        let client = connect(primary_port, "postgres").await;
        // Two round trips: ALTER SYSTEM cannot run in the implicit transaction of a batch.
        for statement in [
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
            "SELECT pg_reload_conf()",
        ] {
            client
                .batch_execute(statement)
                .await
                .expect("make the standby synchronous");
        }
        let until = Instant::now() + WAIT;
        loop {
            let state: Option<String> = client
                .query_opt("SELECT sync_state FROM pg_stat_replication", &[])
                .await
                .expect("read pg_stat_replication")
                .map(|row| row.get(0));
            if state.as_deref() == Some("sync") {
                break;
            }
            assert!(
                Instant::now() < until,
                "the standby did not become synchronous (state {state:?}); logs in {}",
                pair.base.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pair
    }

    /// The multi-host URL of `database`, the primary first, writable server only.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{},127.0.0.1:{}/{database}?target_session_attrs=read-write",
            self.primary_port, self.standby_port
        )
    }

    /// Stops the primary as a crash would: every process killed at once, no shutdown checkpoint,
    /// connections cut. Returns once it is gone.
    pub fn stop_primary_immediately(&self) {
        let primary = self.primary_dir();
        self.tool(
            "pg_ctl",
            &[
                "-D".as_ref(),
                primary.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
    }

    /// Fences the primary without stopping it: `default_transaction_read_only` for every
    /// session, as a failover tool may do to an old primary it cannot stop. Its connections
    /// stay open, and every write on them fails with 25006 (read-only transaction), so a pool
    /// that kept them would fail every send until they closed.
    ///
    /// Returns once new sessions are read-only and no session holds a write transaction, as a
    /// switchover would wait before promoting (a session that was idle at the reload may still
    /// run one writable transaction: with the standby synchronous, what it commits is on the
    /// standby too, and a commit still waiting at the promotion waits until its caller gives up).
    pub async fn fence_primary(&self) {
        let client = connect(self.primary_port, "postgres").await;
        for statement in [
            "ALTER SYSTEM SET default_transaction_read_only = on",
            "SELECT pg_reload_conf()",
        ] {
            client
                .batch_execute(statement)
                .await
                .expect("fence the primary");
        }
        let until = Instant::now() + WAIT;
        loop {
            let fresh = connect(self.primary_port, "postgres").await;
            let read_only: String = fresh
                .query_one("SHOW transaction_read_only", &[])
                .await
                .expect("ask the fenced primary")
                .get(0);
            let writing: i64 = fresh
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE backend_type = 'client backend' AND backend_xid IS NOT NULL",
                    &[],
                )
                .await
                .expect("ask the fenced primary")
                .get(0);
            if read_only == "on" && writing == 0 {
                return;
            }
            assert!(
                Instant::now() < until,
                "the primary did not become read-only"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Promotes the standby; returns once it accepts writes (`pg_ctl promote -w`).
    pub fn promote_standby(&self) {
        let standby = self.standby_dir();
        let wait = WAIT.as_secs().to_string();
        self.tool(
            "pg_ctl",
            &[
                "-D".as_ref(),
                standby.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                wait.as_ref(),
                "promote".as_ref(),
            ],
        );
    }

    fn primary_dir(&self) -> PathBuf {
        self.base.join("primary")
    }

    fn standby_dir(&self) -> PathBuf {
        self.base.join("standby")
    }

    /// Appends this test's settings to `data`'s `postgresql.conf` (the later line wins, so the
    /// standby's copy of the primary's file just gets its own port).
    fn configure(&self, data: &Path, port: u16, primary: bool) {
        let mut settings = format!("\nport = {port}\n");
        if primary {
            settings.push_str(
                "listen_addresses = '127.0.0.1'\n\
                 unix_socket_directories = ''\n\
                 max_connections = 40\n\
                 shared_buffers = 16MB\n\
                 wal_level = replica\n\
                 max_wal_senders = 4\n\
                 hot_standby = on\n",
            );
        }
        let file = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&file).expect("read postgresql.conf");
        text.push_str(&settings);
        std::fs::write(&file, text).expect("write postgresql.conf");
    }

    fn pg_ctl_start(&self, data: &Path) {
        let log = self.base.join(format!(
            "{}.log",
            data.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("server")
        ));
        let wait = WAIT.as_secs().to_string();
        self.tool(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                wait.as_ref(),
                "start".as_ref(),
            ],
        );
    }

    /// Runs one of PostgreSQL's tools (as `postgres` when this process is root); panics with
    /// its output when it fails.
    fn tool(&self, name: &str, args: &[&std::ffi::OsStr]) -> Output {
        let program = self.bin.join(name);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        command.args(args).current_dir(&self.base);
        self.check(command.output(), &format!("{} {args:?}", program.display()))
    }

    fn check(&self, output: std::io::Result<Output>, what: &str) -> Output {
        let output = output.unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        assert!(
            output.status.success(),
            "{what} failed ({}):\n{}{}\n(logs in {})",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.base.display()
        );
        output
    }
}

impl Drop for PostgresPair {
    /// Stops both servers (whatever state they are in) and removes their directories.
    fn drop(&mut self) {
        for data in [self.primary_dir(), self.standby_dir()] {
            if !data.join("postmaster.pid").exists() {
                continue;
            }
            let program = self.bin.join("pg_ctl");
            let mut command = if self.as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&program);
                c
            } else {
                Command::new(&program)
            };
            let stopped = command
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"])
                .current_dir(&self.base)
                .output();
            if !stopped.is_ok_and(|out| out.status.success()) {
                eprintln!("could not stop the PostgreSQL in {}", data.display());
            }
        }
        if std::thread::panicking() {
            for log in ["primary.log", "standby.log"] {
                if let Ok(text) = std::fs::read_to_string(self.base.join(log)) {
                    let tail: Vec<&str> = text.lines().rev().take(30).collect();
                    eprintln!("---- last lines of {log}");
                    for line in tail.into_iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.base) {
            eprintln!("could not remove {}: {e}", self.base.display());
        }
    }
}

/// A connection to `database` on the pair's server at `port` (its driver on a task).
pub async fn connect(port: u16, database: &str) -> tokio_postgres::Client {
    let url = format!("postgresql://postgres@127.0.0.1:{port}/{database}");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(connection);
    client
}
