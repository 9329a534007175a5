//! The schema migration runner of PostgreSQL storage, and the list of migrations.
//!
//! This file exists so that how the schema gets where this build needs it is one piece, apart
//! from how the storage uses it. The SQL files under `minichat-core/migrations/` are embedded in
//! the binary ([`MIGRATIONS`]) and applied in version order, each in its own transaction together
//! with its row in `minichat_migrations`, under a PostgreSQL advisory lock, so that nodes starting
//! at the same time apply each migration exactly once.
//!
//! Each row also records the migration's [`checksum`] (SHA-256 of its SQL text). At every start
//! the applied migrations this build knows are checked against it, so a migration edited after it
//! shipped stops the start with one line naming it, instead of leaving databases that were
//! migrated by different texts of "the same" version. The record table is upgraded in place:
//! databases migrated before checksums existed get the column, and their rows get the checksum
//! of this build's text the first time it runs (trusted as what was applied).

use super::{describe, CONNECT_TIMEOUT, SETTING};
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use tokio_postgres::{Client, NoTls};

/// The key of the session-level advisory lock that serialises migrations across nodes: the
/// ASCII bytes of "minichat". Any process migrating this database takes the same lock.
const MIGRATION_LOCK_KEY: i64 = 0x6d69_6e69_6368_6174;

/// One schema migration, embedded in the binary.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// Every migration, in increasing version order. Append only; never edit a shipped one.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../../../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "user_search",
        sql: include_str!("../../../migrations/0002_user_search.sql"),
    },
    Migration {
        version: 3,
        name: "conversations",
        sql: include_str!("../../../migrations/0003_conversations.sql"),
    },
    Migration {
        version: 4,
        name: "lighter_message_inserts",
        sql: include_str!("../../../migrations/0004_lighter_message_inserts.sql"),
    },
];

impl Migration {
    /// `0001_initial`: how errors and logs name it (its file name without `.sql`).
    fn label(&self) -> String {
        format!("{:04}_{}", self.version, self.name)
    }
}

/// The SHA-256 of a migration's SQL text, in lowercase hex.
fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// Opens one connection outside the pool (for migrations), bounded by [`CONNECT_TIMEOUT`].
pub(super) async fn connect_one(pg: &tokio_postgres::Config) -> Result<Client> {
    let cannot =
        |reason: String| Error::config(SETTING, format!("cannot connect to PostgreSQL: {reason}"));
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, pg.connect(NoTls))
        .await
        .map_err(|_| cannot(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| cannot(describe(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %describe(&e), "migration connection ended");
        }
    });
    Ok(client)
}

/// A start-up error for the migration step `what`.
fn failed(what: &str, e: tokio_postgres::Error) -> Error {
    Error::config(SETTING, format!("{what} failed: {}", describe(&e)))
}

/// Applies every pending migration, holding the migration lock on a dedicated connection.
///
/// The lock is a session lock: if this process dies (or this future is dropped) midway, the
/// connection closes and PostgreSQL releases it. A migration that fails leaves nothing behind
/// (its transaction rolls back) and stops the start-up.
pub(super) async fn migrate(pg: &tokio_postgres::Config) -> Result<()> {
    let mut client = connect_one(pg).await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(|e| failed("taking the migration lock", e))?;
    let outcome = apply_pending(&mut client).await;
    // Dropping the connection would release the lock too; unlocking says so explicitly.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    outcome?;
    unlocked.map_err(|e| failed("releasing the migration lock", e))?;
    Ok(())
}

async fn apply_pending(client: &mut Client) -> Result<()> {
    // Created and upgraded under the lock: concurrent `CREATE TABLE IF NOT EXISTS` can fail on
    // its own. The `checksum` column came later; databases migrated before it gain it here.
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS minichat_migrations (
                version    INT PRIMARY KEY,
                name       TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            );
            ALTER TABLE minichat_migrations ADD COLUMN IF NOT EXISTS checksum TEXT",
        )
        .await
        .map_err(|e| failed("creating minichat_migrations", e))?;
    let applied: HashMap<i32, Option<String>> = client
        .query("SELECT version, checksum FROM minichat_migrations", &[])
        .await
        .map_err(|e| failed("reading minichat_migrations", e))?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(|e| failed("reading minichat_migrations", e))?;
    verify_applied(client, &applied).await?;
    for m in MIGRATIONS
        .iter()
        .filter(|m| !applied.contains_key(&m.version))
    {
        let label = format!("migration {}", m.label());
        let run = async {
            let tx = client.transaction().await?;
            tx.batch_execute(m.sql).await?;
            tx.execute(
                "INSERT INTO minichat_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                &[&m.version, &m.name, &checksum(m.sql)],
            )
            .await?;
            tx.commit().await
        };
        run.await.map_err(|e| failed(&label, e))?;
        tracing::info!(migration = %label, "applied");
    }
    let known: HashSet<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    if let Some(newer) = applied.keys().filter(|v| !known.contains(v)).max() {
        tracing::warn!(
            version = newer,
            "the database has a migration this build does not know; a newer version ran here"
        );
    }
    Ok(())
}

/// Checks every applied migration this build knows against its recorded checksum, and records
/// the checksum of those applied before checksums were kept. A mismatch stops the start.
async fn verify_applied(client: &Client, applied: &HashMap<i32, Option<String>>) -> Result<()> {
    for m in MIGRATIONS {
        let Some(recorded) = applied.get(&m.version) else {
            continue;
        };
        let expected = checksum(m.sql);
        match recorded {
            Some(recorded) if *recorded == expected => {}
            Some(recorded) => {
                return Err(Error::config(
                    SETTING,
                    format!(
                        "migration {} was changed after it was applied (checksum {recorded} \
                         recorded, {expected} in this build); restore its text, or record the \
                         new checksum in minichat_migrations if the change is intended",
                        m.label()
                    ),
                ))
            }
            None => {
                client
                    .execute(
                        "UPDATE minichat_migrations SET checksum = $2
                         WHERE version = $1 AND checksum IS NULL",
                        &[&m.version, &expected],
                    )
                    .await
                    .map_err(|e| failed("recording migration checksums", e))?;
                tracing::info!(migration = %m.label(), "recorded the checksum of an applied migration");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_in_increasing_version_order() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(MIGRATIONS.first().map(|m| m.version), Some(1));
    }

    #[test]
    fn checksums_are_sha256_in_hex() {
        assert_eq!(
            checksum(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(MIGRATIONS[0].label(), "0001_initial");
        assert_eq!(MIGRATIONS[1].label(), "0002_user_search");
        assert_ne!(checksum(MIGRATIONS[0].sql), checksum(""));
    }
}
