//! The schema migration runner of PostgreSQL storage, and the list of migrations.
//!
//! This file exists so that how the schema gets where this build needs it is one piece, apart
//! from how the storage uses it. The SQL files under `minichat-core/migrations/` are embedded in
//! the binary ([`MIGRATIONS`]) and applied in version order, each in its own transaction together
//! with its row in `minichat_migrations`, under a PostgreSQL advisory lock, so that nodes starting
//! at the same time apply each migration exactly once.

use super::{describe, CONNECT_TIMEOUT, SETTING};
use crate::error::{Error, Result};
use std::collections::HashSet;
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
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "initial",
    sql: include_str!("../../../migrations/0001_initial.sql"),
}];

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
    // Created under the lock: concurrent `CREATE TABLE IF NOT EXISTS` can fail on its own.
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS minichat_migrations (
                version    INT PRIMARY KEY,
                name       TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(|e| failed("creating minichat_migrations", e))?;
    let applied: HashSet<i32> = client
        .query("SELECT version FROM minichat_migrations", &[])
        .await
        .map_err(|e| failed("reading minichat_migrations", e))?
        .iter()
        .map(|row| row.try_get::<_, i32>(0))
        .collect::<Result<_, _>>()
        .map_err(|e| failed("reading minichat_migrations", e))?;
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        let label = format!("migration {:04}_{}", m.version, m.name);
        let run = async {
            let tx = client.transaction().await?;
            tx.batch_execute(m.sql).await?;
            tx.execute(
                "INSERT INTO minichat_migrations (version, name) VALUES ($1, $2)",
                &[&m.version, &m.name],
            )
            .await?;
            tx.commit().await
        };
        run.await.map_err(|e| failed(&label, e))?;
        tracing::info!(migration = %label, "applied");
    }
    let known: HashSet<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    if let Some(newer) = applied.iter().filter(|v| !known.contains(v)).max() {
        tracing::warn!(
            version = newer,
            "the database has a migration this build does not know; a newer version ran here"
        );
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
}
