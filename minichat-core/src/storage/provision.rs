//! Creating the PostgreSQL database a `DATABASE_URL` names, for a fresh machine.
//!
//! Connecting (and migrating) needs the database to exist; PostgreSQL cannot create one from a
//! connection to it. These functions connect to the server's `postgres` maintenance database
//! with the URL's own host, port, user and password instead: one to tell "the database does not
//! exist" apart from other failures (so the binary can say how to create it), one to create it
//! (`minichat-server migrate --create-database`).

use crate::error::{Error, Result};
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

const SETTING: &str = "DATABASE_URL";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The database every PostgreSQL server has, to connect to when the wanted one is missing.
const MAINTENANCE_DATABASE: &str = "postgres";

/// The URL's config and its database name.
fn parse(url: &str) -> Result<(tokio_postgres::Config, String)> {
    let pg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        Error::config(SETTING, format!("not a valid PostgreSQL URL ({e})"))
    })?;
    let name = pg
        .get_dbname()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::config(SETTING, "the URL names no database"))?
        .to_owned();
    Ok((pg, name))
}

async fn connect(mut pg: tokio_postgres::Config, database: &str) -> Result<Client> {
    // Several hosts are tried in turn: each gets a share of the wait.
    let hosts = pg.get_hosts().len().max(pg.get_hostaddrs().len()).max(1);
    let share = CONNECT_TIMEOUT / u32::try_from(hosts).unwrap_or(u32::MAX);
    pg.dbname(database).connect_timeout(share);
    let cannot = |reason: String| {
        Error::config(
            SETTING,
            format!("cannot connect to the `{database}` database: {reason}"),
        )
    };
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, pg.connect(NoTls))
        .await
        .map_err(|_| cannot(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| cannot(e.as_db_error().map_or(e.to_string(), |d| d.to_string())))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "maintenance connection ended");
        }
    });
    Ok(client)
}

/// `Some(name)` when the server answers and has no database of the URL's name; `None` when it
/// has one, or cannot tell (unreachable, not allowed to look).
pub async fn missing_database(url: &str) -> Option<String> {
    let (pg, name) = parse(url).ok()?;
    let client = connect(pg, MAINTENANCE_DATABASE).await.ok()?;
    let row = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .ok()?;
    row.is_none().then_some(name)
}

/// Creates the database the URL names, unless it exists. `Ok(true)` when it was created here.
pub async fn create_database(url: &str) -> Result<bool> {
    let (pg, name) = parse(url)?;
    let client = connect(pg, MAINTENANCE_DATABASE).await?;
    let failed = |e: tokio_postgres::Error| {
        let reason = e.as_db_error().map_or(e.to_string(), |d| d.to_string());
        Error::config(
            SETTING,
            format!("cannot create database \"{name}\": {reason}"),
        )
    };
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(failed)?
        .is_some();
    if exists {
        return Ok(false);
    }
    // CREATE DATABASE takes no parameters: quote the name as an identifier.
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match client
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .await
    {
        Ok(()) => Ok(true),
        // Someone else created it meanwhile: it exists, which is what was asked.
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(false),
        Err(e) => Err(failed(e)),
    }
}
