//! PostgreSQL storage: users and messages in a database that outlives the process and is shared
//! by every node of a cluster.
//!
//! This file exists so that [`Storage`] has a durable implementation that several nodes can use
//! at once. It behaves exactly as [`MemoryStorage`](super::MemoryStorage) does through the trait;
//! what it adds is how that behaviour survives concurrency and restarts:
//!
//! - **Schema by migration.** The SQL files under `minichat-core/migrations/` are embedded in the
//!   binary and applied in version order, each in its own transaction together with its row in
//!   `minichat_migrations`, under a PostgreSQL advisory lock, so that nodes starting at the same
//!   time apply each migration exactly once.
//! - **Gapless per-user sequences.** Every user row carries `last_seq`. Storing a message locks
//!   the sender's and the receiver's rows (always in id order, so two sends between the same
//!   users cannot deadlock), increments both `last_seq`s and inserts the message with them, all
//!   in one transaction. A seq is therefore only ever taken by a committed message. Because a
//!   user's row stays locked from seq assignment to commit, a user's messages also get
//!   increasing ids in seq order (ids of *different* users' messages may commit out of order).
//! - **Index-driven reads.** Each read is split into halves ("what the user sent", "what the user
//!   received") that are each a bounded backward range scan of one index, then merged; see the
//!   index comments in `migrations/0001_initial.sql`.
//! - **Fail fast.** The pool has wait and create timeouts, so while PostgreSQL is down every call
//!   returns [`Error::Unavailable`] within seconds instead of hanging.
//!
//! Every statement is prepared once per connection (`prepare_cached`) and every value is a
//! parameter.

use super::Storage;
use crate::error::{Backend, Error, Result};
use crate::model::{
    now, HistoryQuery, Message, MessageId, MessageType, Page, ReadState, Seq, StoredMessage, User,
    UserId, ValidMessage, ValidUser,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::collections::HashSet;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Row};

/// The setting every start-up error names.
const SETTING: &str = "DATABASE_URL";

/// How long to wait for a new connection (TCP connect plus PostgreSQL start-up).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call waits for a free pooled connection before it fails as unavailable.
const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long checking a returning connection may take.
const POOL_RECYCLE_TIMEOUT: Duration = Duration::from_secs(5);

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
    sql: include_str!("../../migrations/0001_initial.sql"),
}];

/// Where the database is and how many connections this node may hold.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `postgresql://user:password@host:5432/dbname`; the database name is required.
    pub url: String,
    /// Maximum connections of this node's pool (at least 1 is used).
    pub pool_size: usize,
}

/// Users and messages in PostgreSQL, through a pool of connections.
pub struct PostgresStorage {
    pool: Pool,
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl PostgresStorage {
    /// Checks the URL, connects, applies pending migrations, and opens the pool.
    ///
    /// `Error::Config` naming `DATABASE_URL` when the URL is malformed or names no database,
    /// when PostgreSQL cannot be reached, or when a migration fails.
    pub async fn connect(config: &PostgresConfig) -> Result<Self> {
        let pg = parse_url(&config.url)?;
        migrate(&pg).await?;
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .wait_timeout(Some(POOL_WAIT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(POOL_RECYCLE_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::config(SETTING, format!("cannot build the pool: {e}")))?;
        Ok(PostgresStorage { pool })
    }

    /// Connects, applies pending migrations, and returns (`minichat-server migrate`).
    pub async fn migrate_only(url: &str) -> Result<()> {
        let pg = parse_url(url)?;
        migrate(&pg).await
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(unavailable)
    }
}

/// `e` and its sources, joined by ": " (tokio-postgres puts the useful part in the source).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn unavailable<E>(e: E) -> Error
where
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    Error::unavailable(Backend::Storage, e)
}

/// Parses the URL and requires a database name; adds a connect timeout when the URL has none.
fn parse_url(url: &str) -> Result<tokio_postgres::Config> {
    let mut pg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        Error::config(
            SETTING,
            format!(
                "not a valid PostgreSQL URL ({}); expected postgresql://user:password@host:5432/dbname",
                describe(&e)
            ),
        )
    })?;
    if pg.get_dbname().is_none_or(str::is_empty) {
        return Err(Error::config(
            SETTING,
            "the URL names no database; expected postgresql://user:password@host:5432/dbname",
        ));
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    if pg.get_application_name().is_none() {
        pg.application_name("minichat");
    }
    Ok(pg)
}

/// Opens one connection outside the pool (for migrations), bounded by [`CONNECT_TIMEOUT`].
async fn connect_one(pg: &tokio_postgres::Config) -> Result<Client> {
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

/// Applies every pending migration, holding the migration lock on a dedicated connection.
///
/// The lock is a session lock: if this process dies (or this future is dropped) midway, the
/// connection closes and PostgreSQL releases it. A migration that fails leaves nothing behind
/// (its transaction rolls back) and stops the start-up.
async fn migrate(pg: &tokio_postgres::Config) -> Result<()> {
    let mut client = connect_one(pg).await?;
    let failed = |what: &str, e: tokio_postgres::Error| {
        Error::config(SETTING, format!("{what} failed: {}", describe(&e)))
    };
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
    let failed = |what: String, e: tokio_postgres::Error| {
        Error::config(SETTING, format!("{what} failed: {}", describe(&e)))
    };
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
        .map_err(|e| failed("creating minichat_migrations".into(), e))?;
    let applied: HashSet<i32> = client
        .query("SELECT version FROM minichat_migrations", &[])
        .await
        .map_err(|e| failed("reading minichat_migrations".into(), e))?
        .iter()
        .map(|row| row.try_get::<_, i32>(0))
        .collect::<Result<_, _>>()
        .map_err(|e| failed("reading minichat_migrations".into(), e))?;
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
        run.await.map_err(|e| failed(label.clone(), e))?;
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

// ---- Statements -------------------------------------------------------------------------
//
// Plans were checked with EXPLAIN on 4,000 messages between 100 users (one user in half of
// them) after ANALYZE, with custom and with generic plans; the `plans_are_index_driven` test
// below repeats that check. No read scans `messages` sequentially: each half is an Index Scan
// (Backward, for newest first) of the index named in its comment under a Limit, or, for a user
// with few rows, a Bitmap Index Scan of it followed by a small sort; for a user in half of all
// messages the planner may instead walk the primary key backward until the page is full.

/// Inserts unless the username exists (so a taken name does not use up an id; a concurrent
/// insert of the same name still fails on the unique constraint).
const CREATE_USER: &str = "INSERT INTO users (username, display_name, created_at)
     SELECT $1::text, $2::text, $3::timestamptz
     WHERE NOT EXISTS (SELECT 1 FROM users WHERE username = $1::text)
     RETURNING id";

const LIST_USERS: &str =
    "SELECT id, username, display_name, created_at FROM users ORDER BY id OFFSET $1 LIMIT $2";

const GET_USER: &str = "SELECT id, username, display_name, created_at FROM users WHERE id = $1";

/// Locks both users of a send, in id order, so concurrent sends cannot deadlock.
const LOCK_USERS: &str = "SELECT id, username FROM users WHERE id = ANY($1) ORDER BY id FOR UPDATE";

/// The earlier message of `(sender, client_id)`, by `messages_sender_client_id_key`.
const FIND_CLIENT_ID: &str = "SELECT id, receiver_id, content, created_at, sender_seq, receiver_seq
     FROM messages WHERE sender_id = $1 AND client_id = $2";

/// Takes the next seq of both users and stores the message with them, in one statement.
const INSERT_MESSAGE: &str = "WITH seqs AS (
         UPDATE users SET last_seq = last_seq + 1
         WHERE id IN ($1::bigint, $2::bigint)
         RETURNING id, last_seq
     )
     INSERT INTO messages
         (sender_id, receiver_id, content, created_at, sender_seq, receiver_seq, client_id)
     SELECT $1::bigint, $2::bigint, $3::text, $4::timestamptz,
            (SELECT last_seq FROM seqs WHERE id = $1::bigint),
            (SELECT last_seq FROM seqs WHERE id = $2::bigint),
            $5::text
     RETURNING id, sender_seq, receiver_seq";

/// Everything `user` ($1) sent or received with `id < $2`: the newest `$3` (= skip + limit) of
/// each half (`messages_sender_idx`, `messages_receiver_idx`), merged, then paged
/// (OFFSET $4 LIMIT $5); the sender's name is joined only for the rows of the page.
const HISTORY_ALL: &str =
    "SELECT h.id, h.sender_id, u.username, h.receiver_id, h.content, h.created_at
     FROM (
         SELECT * FROM (
             (SELECT id, sender_id, receiver_id, content, created_at FROM messages
              WHERE sender_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3)
             UNION ALL
             (SELECT id, sender_id, receiver_id, content, created_at FROM messages
              WHERE receiver_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3)
         ) AS halves
         ORDER BY id DESC OFFSET $4 LIMIT $5
     ) AS h
     JOIN users u ON u.id = h.sender_id
     ORDER BY h.id DESC";

/// As [`HISTORY_ALL`], between `user` ($1) and `peer` ($6): both halves use
/// `messages_pair_idx` (`$1 -> $6` and `$6 -> $1`).
const HISTORY_PAIR: &str =
    "SELECT h.id, h.sender_id, u.username, h.receiver_id, h.content, h.created_at
     FROM (
         SELECT * FROM (
             (SELECT id, sender_id, receiver_id, content, created_at FROM messages
              WHERE sender_id = $1 AND receiver_id = $6 AND id < $2 ORDER BY id DESC LIMIT $3)
             UNION ALL
             (SELECT id, sender_id, receiver_id, content, created_at FROM messages
              WHERE sender_id = $6 AND receiver_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3)
         ) AS halves
         ORDER BY id DESC OFFSET $4 LIMIT $5
     ) AS h
     JOIN users u ON u.id = h.sender_id
     ORDER BY h.id DESC";

/// The newest `$2` messages `$1` received, by `messages_receiver_idx`.
const RECENT_RECEIVED: &str =
    "SELECT m.id, m.sender_id, u.username, m.receiver_id, m.content, m.created_at
     FROM messages m JOIN users u ON u.id = m.sender_id
     WHERE m.receiver_id = $1
     ORDER BY m.id DESC LIMIT $2";

/// The first `$3` messages of `$1`'s stream with a seq above `$2`: the first `$3` of each half
/// (`messages_sender_seq_key`, `messages_receiver_seq_key`), merged by seq.
const EVENTS_SINCE: &str =
    "SELECT e.seq, e.id, e.sender_id, u.username, e.receiver_id, e.content, e.created_at
     FROM (
         SELECT * FROM (
             (SELECT sender_seq AS seq, id, sender_id, receiver_id, content, created_at
              FROM messages WHERE sender_id = $1 AND sender_seq > $2
              ORDER BY sender_seq LIMIT $3)
             UNION ALL
             (SELECT receiver_seq AS seq, id, sender_id, receiver_id, content, created_at
              FROM messages WHERE receiver_id = $1 AND receiver_seq > $2
              ORDER BY receiver_seq LIMIT $3)
         ) AS halves
         ORDER BY seq LIMIT $3
     ) AS e
     JOIN users u ON u.id = e.sender_id
     ORDER BY e.seq";

/// Only a message of the peer's to the reader can be marked; the mark never moves back.
const MARK_READ: &str = "INSERT INTO read_receipts (user_id, peer_id, up_to_message_id, updated_at)
     SELECT $1, $2, id, now() FROM messages WHERE id = $3 AND sender_id = $2 AND receiver_id = $1
     ON CONFLICT (user_id, peer_id) DO UPDATE
         SET up_to_message_id = GREATEST(read_receipts.up_to_message_id, EXCLUDED.up_to_message_id),
             updated_at = EXCLUDED.updated_at
     RETURNING up_to_message_id";

const CURRENT_SEQ: &str = "SELECT last_seq FROM users WHERE id = $1";

const READ_MARKS: &str = "SELECT user_id, up_to_message_id FROM read_receipts
     WHERE (user_id = $1 AND peer_id = $2) OR (user_id = $2 AND peer_id = $1)";

const SET_LAST_SEEN: &str = "UPDATE users SET last_seen = GREATEST(last_seen, $2) WHERE id = $1";

const LAST_SEEN: &str = "SELECT id, last_seen FROM users WHERE id = ANY($1)";

const CHECK: &str = "SELECT 1";

// ---- Rows ---------------------------------------------------------------------------------

fn user_from(row: &Row) -> Result<User> {
    Ok(User {
        id: row.try_get(0).map_err(unavailable)?,
        username: row.try_get(1).map_err(unavailable)?,
        display_name: row.try_get(2).map_err(unavailable)?,
        created_at: row.try_get(3).map_err(unavailable)?,
    })
}

/// A message from the columns `id, sender_id, sender_username, receiver_id, content,
/// created_at`, starting at column `at`.
fn message_from(row: &Row, at: usize) -> Result<Message> {
    Ok(Message {
        id: row.try_get(at).map_err(unavailable)?,
        sender_id: row.try_get(at + 1).map_err(unavailable)?,
        sender_username: row.try_get(at + 2).map_err(unavailable)?,
        receiver_id: row.try_get(at + 3).map_err(unavailable)?,
        content: row.try_get(at + 4).map_err(unavailable)?,
        timestamp: row.try_get(at + 5).map_err(unavailable)?,
        kind: MessageType::Message,
    })
}

/// A `usize` count as a SQL `LIMIT` (clamped; no table holds `i64::MAX` rows).
fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn is_unique_violation(e: &tokio_postgres::Error, constraint: &str) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code() == &SqlState::UNIQUE_VIOLATION && db.constraint() == Some(constraint)
    })
}

#[async_trait]
impl Storage for PostgresStorage {
    async fn create_user(&self, user: &ValidUser) -> Result<User> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(CREATE_USER)
            .await
            .map_err(unavailable)?;
        let created_at = now();
        let row = client
            .query_opt(
                &stmt,
                &[&user.username(), &user.display_name(), &created_at],
            )
            .await
            .map_err(|e| {
                if is_unique_violation(&e, "users_username_key") {
                    Error::UsernameTaken
                } else {
                    unavailable(e)
                }
            })?
            .ok_or(Error::UsernameTaken)?;
        Ok(User {
            id: row.try_get(0).map_err(unavailable)?,
            username: user.username().to_owned(),
            display_name: user.display_name().to_owned(),
            created_at,
        })
    }

    async fn list_users(&self, page: Page) -> Result<Vec<User>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(LIST_USERS)
            .await
            .map_err(unavailable)?;
        client
            .query(&stmt, &[&page.skip(), &page.limit()])
            .await
            .map_err(unavailable)?
            .iter()
            .map(user_from)
            .collect()
    }

    async fn get_user(&self, id: UserId) -> Result<Option<User>> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(GET_USER).await.map_err(unavailable)?;
        client
            .query_opt(&stmt, &[&id])
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    async fn store_message(&self, message: &ValidMessage) -> Result<StoredMessage> {
        let (sender, receiver) = (message.sender_id(), message.receiver_id());
        let mut client = self.client().await?;
        // An early return drops `tx`, which rolls the transaction back.
        let tx = client.transaction().await.map_err(unavailable)?;

        let lock = tx.prepare_cached(LOCK_USERS).await.map_err(unavailable)?;
        let mut sender_username = None;
        let mut receiver_exists = false;
        for row in tx
            .query(&lock, &[&vec![sender, receiver]])
            .await
            .map_err(unavailable)?
        {
            let id: UserId = row.try_get(0).map_err(unavailable)?;
            if id == sender {
                sender_username = Some(row.try_get::<_, String>(1).map_err(unavailable)?);
            } else if id == receiver {
                receiver_exists = true;
            }
        }
        let sender_username = sender_username.ok_or(Error::SenderNotFound)?;
        if !receiver_exists {
            return Err(Error::ReceiverNotFound);
        }

        // The sender's row is locked, so an earlier send with this client_id has committed by
        // now, and this statement (a new snapshot under READ COMMITTED) sees it.
        if let Some(client_id) = message.client_id() {
            let find = tx
                .prepare_cached(FIND_CLIENT_ID)
                .await
                .map_err(unavailable)?;
            if let Some(row) = tx
                .query_opt(&find, &[&sender, &client_id])
                .await
                .map_err(unavailable)?
            {
                let earlier = Message {
                    id: row.try_get(0).map_err(unavailable)?,
                    sender_id: sender,
                    sender_username,
                    receiver_id: row.try_get(1).map_err(unavailable)?,
                    content: row.try_get(2).map_err(unavailable)?,
                    timestamp: row.try_get(3).map_err(unavailable)?,
                    kind: MessageType::Message,
                };
                let sender_seq = row.try_get(4).map_err(unavailable)?;
                let receiver_seq = row.try_get(5).map_err(unavailable)?;
                tx.commit().await.map_err(unavailable)?;
                if earlier.receiver_id != receiver || earlier.content != message.content() {
                    return Err(Error::ClientIdConflict);
                }
                return Ok(StoredMessage {
                    message: earlier,
                    sender_seq,
                    receiver_seq,
                    created: false,
                });
            }
        }

        let insert = tx
            .prepare_cached(INSERT_MESSAGE)
            .await
            .map_err(unavailable)?;
        let timestamp = now();
        let row = tx
            .query_one(
                &insert,
                &[
                    &sender,
                    &receiver,
                    &message.content(),
                    &timestamp,
                    &message.client_id(),
                ],
            )
            .await
            .map_err(unavailable)?;
        let id = row.try_get(0).map_err(unavailable)?;
        let sender_seq = row.try_get(1).map_err(unavailable)?;
        let receiver_seq = row.try_get(2).map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(StoredMessage {
            message: Message {
                id,
                sender_id: sender,
                sender_username,
                receiver_id: receiver,
                content: message.content().to_owned(),
                timestamp,
                kind: MessageType::Message,
            },
            sender_seq,
            receiver_seq,
            created: true,
        })
    }

    async fn history(&self, query: &HistoryQuery) -> Result<Vec<Message>> {
        let user = query.user_id();
        let before = query.before_id().unwrap_or(i64::MAX);
        let (skip, limit) = (query.page().skip(), query.page().limit());
        let per_half = skip.saturating_add(limit);
        let client = self.client().await?;
        // Talking "with yourself" matches every message of the user, as in memory.
        let rows = match query.chat_with().filter(|&peer| peer != user) {
            None => {
                let stmt = client
                    .prepare_cached(HISTORY_ALL)
                    .await
                    .map_err(unavailable)?;
                client
                    .query(&stmt, &[&user, &before, &per_half, &skip, &limit])
                    .await
            }
            Some(peer) => {
                let stmt = client
                    .prepare_cached(HISTORY_PAIR)
                    .await
                    .map_err(unavailable)?;
                client
                    .query(&stmt, &[&user, &before, &per_half, &skip, &limit, &peer])
                    .await
            }
        }
        .map_err(unavailable)?;
        rows.iter().map(|row| message_from(row, 0)).collect()
    }

    async fn recent_received(&self, user: UserId, limit: usize) -> Result<Vec<Message>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(RECENT_RECEIVED)
            .await
            .map_err(unavailable)?;
        client
            .query(&stmt, &[&user, &sql_limit(limit)])
            .await
            .map_err(unavailable)?
            .iter()
            .map(|row| message_from(row, 0))
            .collect()
    }

    async fn events_since(
        &self,
        user: UserId,
        since: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, Message)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(EVENTS_SINCE)
            .await
            .map_err(unavailable)?;
        client
            .query(&stmt, &[&user, &since, &sql_limit(limit)])
            .await
            .map_err(unavailable)?
            .iter()
            .map(|row| Ok((row.try_get(0).map_err(unavailable)?, message_from(row, 1)?)))
            .collect()
    }

    async fn current_seq(&self, user: UserId) -> Result<Seq> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(CURRENT_SEQ)
            .await
            .map_err(unavailable)?;
        match client
            .query_opt(&stmt, &[&user])
            .await
            .map_err(unavailable)?
        {
            Some(row) => row.try_get(0).map_err(unavailable),
            None => Ok(0),
        }
    }

    async fn mark_read(&self, reader: UserId, peer: UserId, up_to: MessageId) -> Result<MessageId> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(MARK_READ)
            .await
            .map_err(unavailable)?;
        let row = client
            .query_opt(&stmt, &[&reader, &peer, &up_to])
            .await
            .map_err(unavailable)?
            .ok_or(Error::MessageNotFound)?;
        row.try_get(0).map_err(unavailable)
    }

    async fn read_marks(&self, user: UserId, peer: UserId) -> Result<ReadState> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(READ_MARKS)
            .await
            .map_err(unavailable)?;
        let mut state = ReadState::default();
        for row in client
            .query(&stmt, &[&user, &peer])
            .await
            .map_err(unavailable)?
        {
            let reader: UserId = row.try_get(0).map_err(unavailable)?;
            let up_to: MessageId = row.try_get(1).map_err(unavailable)?;
            if reader == user {
                state.read_up_to = Some(up_to);
            } else {
                state.peer_read_up_to = Some(up_to);
            }
        }
        Ok(state)
    }

    async fn set_last_seen(&self, user: UserId, at: DateTime<Utc>) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(SET_LAST_SEEN)
            .await
            .map_err(unavailable)?;
        client
            .execute(&stmt, &[&user, &at])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn last_seen(&self, users: &[UserId]) -> Result<Vec<Option<DateTime<Utc>>>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(LAST_SEEN)
            .await
            .map_err(unavailable)?;
        let rows = client.query(&stmt, &[&users]).await.map_err(unavailable)?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: UserId = row.try_get(0).map_err(unavailable)?;
            let seen: Option<DateTime<Utc>> = row.try_get(1).map_err(unavailable)?;
            found.insert(id, seen);
        }
        Ok(users
            .iter()
            .map(|u| found.get(u).copied().flatten())
            .collect())
    }

    fn kind(&self) -> crate::BackendKind {
        crate::BackendKind::Postgresql
    }

    async fn check(&self) -> Result<()> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(CHECK).await.map_err(unavailable)?;
        client.query_one(&stmt, &[]).await.map_err(unavailable)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestDatabase;

    #[test]
    fn migrations_are_in_increasing_version_order() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(MIGRATIONS.first().map(|m| m.version), Some(1));
    }

    /// EXPLAINs every read on 4,000 messages between 100 users, user 1 being in half of them,
    /// and checks that none reads `messages` by a sequential scan, both with the plans made
    /// for the actual values and with the generic plans a cached statement may switch to
    /// after a few executions.
    #[tokio::test]
    async fn plans_are_index_driven() {
        let db = TestDatabase::create().await;
        let pg = parse_url(db.url()).unwrap();
        migrate(&pg).await.unwrap();
        let client = connect_one(&pg).await.unwrap();
        client
            .batch_execute(
                "INSERT INTO users (username, display_name, created_at)
                     SELECT 'u' || i, 'u' || i, now() FROM generate_series(1, 100) AS i;
                 INSERT INTO messages
                     (sender_id, receiver_id, content, created_at, sender_seq, receiver_seq)
                     SELECT CASE WHEN i % 2 = 0 THEN 1 ELSE 2 + i % 99 END,
                            CASE WHEN i % 2 = 0 THEN 2 + i % 99 ELSE 2 + (7 * i + 1) % 99 END,
                            'm', now(), i, i
                     FROM generate_series(1, 4000) AS i;
                 ANALYZE users;
                 ANALYZE messages;",
            )
            .await
            .unwrap();
        // (name, statement, arguments): for the busy user 1 and a quieter user 50.
        let queries = [
            ("history", HISTORY_ALL, "1, 9223372036854775807, 50, 0, 50"),
            ("history", HISTORY_ALL, "50, 3000, 60, 10, 50"),
            (
                "pair",
                HISTORY_PAIR,
                "1, 9223372036854775807, 50, 0, 50, 40",
            ),
            ("pair", HISTORY_PAIR, "50, 3000, 60, 10, 50, 40"),
            ("recent", RECENT_RECEIVED, "1, 50"),
            ("recent", RECENT_RECEIVED, "50, 50"),
            ("events", EVENTS_SINCE, "1, 0, 1000"),
            ("events", EVENTS_SINCE, "50, 3, 50"),
        ];
        for mode in ["force_custom_plan", "force_generic_plan"] {
            for (name, sql, args) in queries {
                // Test-only SQL text: the arguments are the constants above.
                client
                    .batch_execute(&format!(
                        "SET plan_cache_mode = {mode}; DEALLOCATE ALL; PREPARE q AS {sql}"
                    ))
                    .await
                    .unwrap();
                let plan: Vec<String> = client
                    .query(&format!("EXPLAIN EXECUTE q({args})"), &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let plan = plan.join("\n");
                eprintln!("---- {name}({args}) {mode}\n{plan}");
                assert!(
                    !plan.contains("Seq Scan on messages"),
                    "{name} {mode}:\n{plan}"
                );
            }
        }
    }
}
