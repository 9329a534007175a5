//! PostgreSQL storage: users and messages in a database that outlives the process and is shared
//! by every node of a cluster.
//!
//! This file exists so that [`Storage`] has a durable implementation that several nodes can use
//! at once. It behaves exactly as [`MemoryStorage`](super::MemoryStorage) does through the trait;
//! what it adds is how that behaviour survives concurrency and restarts:
//!
//! - **Schema by migration.** The SQL files under `minichat-core/migrations/` are embedded in the
//!   binary and applied in order under an advisory lock before the pool opens (`migrations.rs`).
//! - **Gapless per-user sequences.** Every user row carries `last_seq`. Sends are committed in
//!   batches by the writer (`writer.rs`, group commit): a batch locks all its users' rows
//!   (always in id order, so batches cannot deadlock), takes the next `last_seq`s and inserts
//!   the messages with them, all in one transaction. A seq is therefore only ever taken by a committed message. Because a
//!   user's row stays locked from seq assignment to commit, a user's messages also get
//!   increasing ids in seq order (ids of *different* users' messages may commit out of order).
//! - **Index-driven reads.** Each read is split into halves ("what the user sent", "what the user
//!   received", and for the stream also "the user's `stream_entries`": group messages of others
//!   and membership events) that are each a bounded range scan of one index, then merged; a
//!   conversation's history, last message and unread count are ranges of
//!   `messages_conversation_idx` (as is the history between two users: their direct
//!   conversation's). See the statements in `sql.rs`, the index comments in
//!   `migrations/0001_initial.sql`, `0003_conversations.sql` and `0004_lighter_message_inserts.sql`,
//!   and the plan test (`plans.rs`).
//! - **No foreign keys from `messages` to `users`** (0004): the batch writer locks and reads
//!   every sender and receiver in the transaction that inserts their messages, and answers a
//!   send whose user is missing before inserting; the per-row checks repeated that under the
//!   locks the next batch waits for. No operation deletes a user.
//! - **Membership changes** (`conversations.rs`) are one transaction each, locking the
//!   conversation row before any user row (the order the send path keeps too), so a send and a
//!   change of the same group never interleave and every recipient's seq stays gapless.
//! - **Fail fast.** Every call is bounded by the backend budget, and so are the pool's waits and
//!   the connections' sockets (`pool.rs`), so while PostgreSQL is down or black-holed every call
//!   returns [`Error::Unavailable`] within the budget instead of hanging, and a call that timed
//!   out closes its connection rather than returning it to the pool mid-transaction.
//!
//! Every statement goes through [`run`]: prepared once per connection (`prepare_cached`), every
//! value a parameter, every failure mapped by [`db_error`].

mod conversations;
mod migrations;
#[cfg(test)]
mod plans;
mod pool;
mod sql;
mod writer;

use super::{ReadReceipt, Storage};
use crate::error::{Backend, Error, Result};
use crate::model::{
    now, Conversation, ConversationChange, ConversationId, ConversationSummary, HistoryQuery,
    Message, MessageType, Page, ReadState, Seq, StoredMessage, StreamEvent, StreamMessage, User,
    UserId, UserSearch, ValidGroup, ValidMessage, ValidNewMembers, ValidReadMark, ValidRename,
    ValidUser,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use conversations::Change;
use deadpool_postgres::GenericClient;
use pool::{Connections, Lease};
use sql::*;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::Row;

/// The setting every start-up error names.
const SETTING: &str = "DATABASE_URL";

/// How long the start-up connections (migrations) wait for TCP connect plus PostgreSQL start-up;
/// the pool's connections use the backend budget instead.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the database is and how many connections this node may hold.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `postgresql://user:password@host:5432/dbname`; the database name is required.
    pub url: String,
    /// Maximum connections of this node's pool (at least 1 is used).
    pub pool_size: usize,
    /// The longest one call (checkout, statements, commit) may take before it fails as
    /// unavailable: the backend budget of [`ChatConfig`](crate::ChatConfig).
    pub timeout: Duration,
}

/// Users and messages in PostgreSQL, through a pool of connections.
pub struct PostgresStorage {
    pool: Connections,
    writer: writer::Writer,
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
        migrations::migrate(&pg).await?;
        let pool = Connections::open(&pg, config.pool_size, config.timeout)?;
        let writer = writer::Writer::start(pool.clone(), config.timeout);
        Ok(PostgresStorage { pool, writer })
    }

    /// Connects, applies pending migrations, and returns (`minichat-server migrate`).
    pub async fn migrate_only(url: &str) -> Result<()> {
        let pg = parse_url(url)?;
        migrations::migrate(&pg).await
    }

    /// The largest batch the writer has committed in one transaction (for tests).
    #[cfg(feature = "test-support")]
    pub fn largest_batch(&self) -> usize {
        self.writer.largest_batch()
    }

    /// How many sends or runs wait in the writer's queue, not yet in a batch (for tests that
    /// must know a batch will take them together).
    #[cfg(feature = "test-support")]
    pub fn queued_jobs(&self) -> usize {
        self.writer.queued_jobs()
    }

    async fn client(&self) -> Result<Lease> {
        self.pool.lease().await
    }

    /// [`run`] on a connection from the pool, within the budget.
    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        self.pool
            .bounded(async {
                let client = self.client().await?;
                let rows = run(&*client, sql, params).await;
                client.settle_if(rows.as_ref().err().is_none_or(pool::reusable_after));
                rows.map_err(db_error)
            })
            .await
    }
}

/// Prepares `sql` (once per connection: `prepare_cached`) and runs it with `params` on `client`,
/// a pooled connection or a transaction on one. Every statement of the storage goes through here
/// (the writer's through its own `query`); the caller maps a failure with [`db_error`] after
/// deciding whether the connection may be reused.
async fn run(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> std::result::Result<Vec<Row>, tokio_postgres::Error> {
    let statement = client.prepare_cached(sql).await?;
    client.query(&statement, params).await
}

/// The one mapping of a failed statement: a username taken by a concurrent insert (which only
/// [`CREATE_USER`] can meet) is [`Error::UsernameTaken`]; anything else, unavailable.
fn db_error(e: tokio_postgres::Error) -> Error {
    let taken = e.as_db_error().is_some_and(|db| {
        db.code() == &SqlState::UNIQUE_VIOLATION && db.constraint() == Some("users_username_key")
    });
    if taken {
        Error::UsernameTaken
    } else {
        unavailable(e)
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

/// Parses the URL (one host, or several: `postgresql://u@h1:5432,h2:5432/db`) and requires a
/// database name; adds a connect timeout when the URL has none.
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
    // Several hosts (`h1:5432,h2:5432`, tried in turn; `target_session_attrs=read-write` skips
    // standbys): tokio-postgres wants one port for all or one per host.
    let (hosts, ports) = (pool::host_count(&pg), pg.get_ports().len());
    if ports > 1 && u32::try_from(ports).ok() != Some(hosts) {
        return Err(Error::config(
            SETTING,
            format!(
                "{hosts} hosts but {ports} ports; expected one port per host, like postgresql://user@h1:5432,h2:5432/dbname"
            ),
        ));
    }
    if pg.get_connect_timeout().is_none() {
        // The start-up connection waits CONNECT_TIMEOUT in all: a share for each host.
        pg.connect_timeout(CONNECT_TIMEOUT / hosts);
    }
    if pg.get_application_name().is_none() {
        pg.application_name("minichat");
    }
    Ok(pg)
}

// ---- Rows ---------------------------------------------------------------------------------

/// Column `i` of `row`.
fn col<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i).map_err(unavailable)
}

/// The row of a statement that always returns exactly one.
fn one(rows: &[Row]) -> Result<&Row> {
    rows.first()
        .ok_or_else(|| unavailable("the statement returned no row"))
}

fn user_from(row: &Row) -> Result<User> {
    Ok(User {
        id: col(row, 0)?,
        username: col(row, 1)?,
        display_name: col(row, 2)?,
        created_at: col(row, 3)?,
    })
}

/// A message from the columns `id, conversation_id, sender_id, sender_username, receiver_id,
/// content, created_at` (`receiver_id` NULL for a group message), starting at column `at`.
fn message_from(row: &Row, at: usize) -> Result<Message> {
    Ok(Message {
        id: col(row, at)?,
        conversation_id: col(row, at + 1)?,
        sender_id: col(row, at + 2)?,
        sender_username: col(row, at + 3)?,
        receiver_id: col(row, at + 4)?,
        content: col(row, at + 5)?,
        timestamp: col(row, at + 6)?,
        kind: MessageType::Message,
    })
}

/// The message starting at column `at`, or `None` when its id is NULL (an outer join that
/// found none).
fn message_if_any(row: &Row, at: usize) -> Result<Option<Message>> {
    match col::<Option<i64>>(row, at)? {
        Some(_) => message_from(row, at).map(Some),
        None => Ok(None),
    }
}

/// The least text above every text that starts with `prefix`, in byte (= code point) order:
/// `prefix` with its last character that is not U+10FFFF moved to the next one (the surrogates
/// skipped) and what follows it dropped. `None` when every character is U+10FFFF.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// A `usize` count as a SQL `LIMIT` (clamped; no table holds `i64::MAX` rows).
fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl Storage for PostgresStorage {
    async fn create_user(&self, user: &ValidUser) -> Result<User> {
        let created_at = now();
        let params: [&(dyn ToSql + Sync); 3] =
            [&user.username(), &user.display_name(), &created_at];
        let rows = self.query(CREATE_USER, &params).await?;
        // No row: the name existed already.
        let row = rows.first().ok_or(Error::UsernameTaken)?;
        Ok(User {
            id: col(row, 0)?,
            username: user.username().to_owned(),
            display_name: user.display_name().to_owned(),
            created_at,
        })
    }

    async fn list_users(&self, page: Page) -> Result<Vec<User>> {
        let rows = self
            .query(LIST_USERS, &[&page.skip(), &page.limit()])
            .await?;
        rows.iter().map(user_from).collect()
    }

    async fn search_users(&self, search: &UserSearch) -> Result<Vec<User>> {
        let prefix = search.prefix();
        let (skip, limit) = (search.page().skip(), search.page().limit());
        let rows = match prefix_end(prefix) {
            Some(end) => {
                let params: [&(dyn ToSql + Sync); 4] = [&prefix, &end, &skip, &limit];
                self.query(SEARCH_USERS, &params).await?
            }
            None => {
                self.query(SEARCH_USERS_FROM, &[&prefix, &skip, &limit])
                    .await?
            }
        };
        rows.iter().map(user_from).collect()
    }

    async fn get_user(&self, id: UserId) -> Result<Option<User>> {
        let rows = self.query(GET_USER, &[&id]).await?;
        rows.first().map(user_from).transpose()
    }

    async fn store_message(&self, message: &ValidMessage) -> Result<StoredMessage> {
        // Group commit: see `writer.rs`.
        self.writer.store(message).await
    }

    async fn store_messages(&self, messages: &[&ValidMessage]) -> Vec<Result<StoredMessage>> {
        // One batch per run: see `writer.rs`.
        self.writer.store_run(messages).await
    }

    async fn history(&self, query: &HistoryQuery) -> Result<Vec<Message>> {
        let user = query.user_id();
        let before = query.before_id().unwrap_or(i64::MAX);
        let (skip, limit) = (query.page().skip(), query.page().limit());
        if let Some(id) = query.conversation_id() {
            let params: [&(dyn ToSql + Sync); 5] = [&id, &user, &before, &skip, &limit];
            let rows = self.query(HISTORY_CONVERSATION, &params).await?;
            if rows.is_empty() {
                return Err(Error::ConversationNotFound);
            }
            let page = rows.iter().map(|row| message_if_any(row, 0));
            return page.filter_map(Result::transpose).collect();
        }
        // Talking "with yourself" matches every direct message of the user, as in memory.
        let rows = match query.chat_with().filter(|&peer| peer != user) {
            None => {
                let per_half = skip.saturating_add(limit);
                let params: [&(dyn ToSql + Sync); 5] = [&user, &before, &per_half, &skip, &limit];
                self.query(HISTORY_ALL, &params).await?
            }
            Some(peer) => {
                let params: [&(dyn ToSql + Sync); 5] = [&user, &before, &skip, &limit, &peer];
                self.query(HISTORY_PAIR, &params).await?
            }
        };
        rows.iter().map(|row| message_from(row, 0)).collect()
    }

    async fn recent_received(&self, user: UserId, limit: usize) -> Result<Vec<Message>> {
        let rows = self
            .query(RECENT_RECEIVED, &[&user, &sql_limit(limit)])
            .await?;
        rows.iter().map(|row| message_from(row, 0)).collect()
    }

    async fn events_since(
        &self,
        user: UserId,
        since: Seq,
        limit: usize,
    ) -> Result<Vec<StreamEvent>> {
        let rows = self
            .query(EVENTS_SINCE, &[&user, &since, &sql_limit(limit)])
            .await?;
        rows.iter()
            .map(|row| {
                let seq = col(row, 0)?;
                Ok(match message_if_any(row, 1)? {
                    Some(message) => StreamEvent::Message(StreamMessage {
                        seq,
                        message,
                        client_id: col(row, 8)?,
                    }),
                    None => StreamEvent::Conversation {
                        seq,
                        event: conversations::event_from(row, 9)?,
                    },
                })
            })
            .collect()
    }

    async fn current_seq(&self, user: UserId) -> Result<Seq> {
        match self.query(CURRENT_SEQ, &[&user]).await?.first() {
            Some(row) => col(row, 0),
            None => Ok(0),
        }
    }

    async fn mark_read(&self, mark: &ValidReadMark) -> Result<ReadReceipt> {
        self.mark_read_in(mark).await
    }

    async fn read_marks(&self, user: UserId, peer: UserId) -> Result<ReadState> {
        self.read_marks_of(user, peer).await
    }

    async fn create_group(&self, group: &ValidGroup) -> Result<ConversationChange> {
        self.change(Change::Create(group)).await
    }

    async fn conversation(&self, id: ConversationId, user: UserId) -> Result<Conversation> {
        self.conversation_of(id, user).await
    }

    async fn conversations(&self, user: UserId, page: Page) -> Result<Vec<ConversationSummary>> {
        self.inbox(user, page).await
    }

    async fn rename_conversation(
        &self,
        id: ConversationId,
        rename: &ValidRename,
    ) -> Result<ConversationChange> {
        self.change(Change::Rename(id, rename)).await
    }

    async fn add_members(
        &self,
        id: ConversationId,
        add: &ValidNewMembers,
        max_members: usize,
    ) -> Result<ConversationChange> {
        self.change(Change::Add(id, add, max_members)).await
    }

    async fn remove_member(
        &self,
        id: ConversationId,
        actor: UserId,
        member: UserId,
    ) -> Result<ConversationChange> {
        self.change(Change::Remove { id, actor, member }).await
    }

    async fn set_last_seen(&self, user: UserId, at: DateTime<Utc>) -> Result<()> {
        self.query(SET_LAST_SEEN, &[&user, &at]).await?;
        Ok(())
    }

    async fn last_seen(&self, users: &[UserId]) -> Result<Vec<Option<DateTime<Utc>>>> {
        let rows = self.query(LAST_SEEN, &[&users]).await?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: UserId = col(row, 0)?;
            let seen: Option<DateTime<Utc>> = col(row, 1)?;
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
        one(&self.query(CHECK, &[]).await?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_hosts_are_accepted_with_one_port_each() {
        let pg = parse_url(
            "postgresql://u:pw@127.0.0.1:5432,127.0.0.1:5433/db?target_session_attrs=read-write",
        )
        .unwrap();
        assert_eq!(pg.get_hosts().len(), 2);
        assert_eq!(pg.get_ports(), &[5432, 5433]);
        assert_eq!(pg.get_connect_timeout(), Some(&(CONNECT_TIMEOUT / 2)));
        // The key=value form too.
        let pg =
            parse_url("host=a,b port=5432,5433 dbname=db target_session_attrs=read-write").unwrap();
        assert_eq!(pg.get_hosts().len(), 2);
        let e = parse_url("host=a,b,c port=5432,5433 dbname=db").unwrap_err();
        assert!(e.to_string().contains("3 hosts but 2 ports"), "{e}");
    }

    #[test]
    fn a_prefix_ends_at_its_last_character_moved_up_by_one() {
        assert_eq!(prefix_end("abc").as_deref(), Some("abd"));
        assert_eq!(prefix_end("a%").as_deref(), Some("a&"));
        assert_eq!(prefix_end("ж").as_deref(), Some("з"));
        assert_eq!(prefix_end("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_end("ab\u{10FFFF}").as_deref(), Some("ac"));
        assert_eq!(prefix_end("\u{10FFFF}\u{10FFFF}"), None);
        // Every text starting with the prefix sorts below the end, byte by byte.
        let end = prefix_end("ab").unwrap();
        for text in ["ab", "ab\u{10FFFF}\u{10FFFF}", "abz"] {
            assert!(text.as_bytes() < end.as_bytes(), "{text:?}");
        }
    }
}
