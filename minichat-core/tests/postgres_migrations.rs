//! Tests of the PostgreSQL migration runner against a real server.
//!
//! This file exists to show that the schema gets where a build needs it safely: nodes starting
//! at once apply each migration exactly once, a migration changed after it was applied stops the
//! start with a line naming it, and a record table from before checksums is upgraded in place.
//! Each test makes its own database (`TestDatabase`). They need PostgreSQL at 127.0.0.1:5432
//! (user `postgres`, trust auth), or `MINICHAT_TEST_PG_ADMIN_URL`.

use chrono::{DateTime, Utc};
use minichat_core::model::{
    ConversationSummary, HistoryRequest, Message, NewGroup, NewMessage, NewUser, Page, ReadMark,
    Recipient, StreamEvent, StreamMessage,
};
use minichat_core::storage::{MemoryStorage, PostgresConfig, PostgresStorage, Storage};
use minichat_core::test_support::TestDatabase;
use minichat_core::Error;
use sha2::{Digest, Sha256};

fn config(url: &str) -> PostgresConfig {
    PostgresConfig {
        url: url.into(),
        pool_size: 2,
        timeout: minichat_core::DEFAULT_BACKEND_TIMEOUT,
    }
}

/// A plain connection to the test database, to look at and tamper with what the runner wrote.
async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("admin connect");
    tokio::spawn(connection);
    client
}

/// What `minichat_migrations` holds once every migration of this build has run.
fn every_migration() -> Vec<(i32, String)> {
    vec![
        (1, "initial".into()),
        (2, "user_search".into()),
        (3, "conversations".into()),
        (4, "lighter_message_inserts".into()),
    ]
}

async fn migration_rows(url: &str) -> Vec<(i32, String)> {
    admin(url)
        .await
        .query(
            "SELECT version, name FROM minichat_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("read migrations")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The checksum recorded for migration `version` (`None` when the row has none).
async fn recorded_checksum(url: &str, version: i32) -> Option<String> {
    admin(url)
        .await
        .query_one(
            "SELECT checksum FROM minichat_migrations WHERE version = $1",
            &[&version],
        )
        .await
        .expect("read checksum")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_even_from_concurrent_nodes() {
    let db = TestDatabase::create().await;
    let config = config(db.url());
    // Two nodes start at once on a fresh database: both must come up, one migrating.
    let (a, b) = tokio::join!(
        PostgresStorage::connect(&config),
        PostgresStorage::connect(&config)
    );
    let (a, b) = (a.expect("first node"), b.expect("second node"));
    assert_eq!(migration_rows(db.url()).await, every_migration());

    // Running them again (a third node, or `minichat-server migrate`) changes nothing.
    PostgresStorage::migrate_only(db.url())
        .await
        .expect("re-run");
    let c = PostgresStorage::connect(&config).await.expect("third node");
    assert_eq!(migration_rows(db.url()).await, every_migration());

    // All three nodes share one database.
    let alice = NewUser {
        username: "alice".into(),
        display_name: None,
    }
    .validate()
    .expect("valid user");
    let alice = a.create_user(&alice).await.unwrap();
    assert_eq!(b.get_user(alice.id).await.unwrap(), Some(alice.clone()));
    assert_eq!(c.get_user(alice.id).await.unwrap(), Some(alice));
    assert_eq!(a.kind(), minichat_core::BackendKind::Postgresql);
    a.check().await.expect("check");
}

#[tokio::test]
async fn a_migration_changed_after_it_was_applied_stops_the_start_naming_it() {
    let db = TestDatabase::create().await;
    PostgresStorage::migrate_only(db.url())
        .await
        .expect("migrate");
    let recorded = recorded_checksum(db.url(), 1).await.expect("a checksum");
    assert_eq!(recorded.len(), 64, "{recorded}");
    assert!(
        recorded.bytes().all(|b| b.is_ascii_hexdigit()),
        "{recorded}"
    );

    // What the database records no longer matches this build's text of 0001.
    let tampered = "0".repeat(64);
    admin(db.url())
        .await
        .execute(
            "UPDATE minichat_migrations SET checksum = $1 WHERE version = 1",
            &[&tampered],
        )
        .await
        .expect("tamper");

    let migrate = PostgresStorage::migrate_only(db.url()).await;
    let connect = PostgresStorage::connect(&config(db.url())).await.map(drop);
    for outcome in [migrate, connect] {
        match outcome {
            Err(Error::Config { setting, reason }) => {
                assert_eq!(setting, "DATABASE_URL");
                assert!(
                    reason.starts_with("migration 0001_initial was changed after it was applied"),
                    "{reason}"
                );
                assert!(reason.contains(&tampered), "{reason}");
                assert!(reason.contains(&recorded), "{reason}");
                assert!(!reason.contains('\n'), "one line: {reason}");
            }
            other => panic!("expected a config error naming the migration, got {other:?}"),
        }
    }
    // Nothing was rewritten: the tampered record is still there for a person to look at.
    assert_eq!(recorded_checksum(db.url(), 1).await, Some(tampered));
}

#[tokio::test]
async fn a_record_table_from_before_checksums_is_upgraded_in_place() {
    let db = TestDatabase::create().await;
    PostgresStorage::migrate_only(db.url())
        .await
        .expect("migrate");
    let fresh = recorded_checksum(db.url(), 1).await.expect("a checksum");

    // A database migrated by a build that kept no checksums: the table has no such column.
    admin(db.url())
        .await
        .batch_execute("ALTER TABLE minichat_migrations DROP COLUMN checksum")
        .await
        .expect("downgrade the record table");
    PostgresStorage::migrate_only(db.url())
        .await
        .expect("upgrade");
    assert_eq!(migration_rows(db.url()).await, every_migration());
    assert_eq!(recorded_checksum(db.url(), 1).await, Some(fresh.clone()));

    // A row without a checksum (the column there, the value not yet) is back-filled too.
    admin(db.url())
        .await
        .batch_execute("UPDATE minichat_migrations SET checksum = NULL")
        .await
        .expect("clear checksum");
    let storage = PostgresStorage::connect(&config(db.url()))
        .await
        .expect("start");
    storage.check().await.expect("check");
    assert_eq!(recorded_checksum(db.url(), 1).await, Some(fresh));
}

#[tokio::test]
async fn a_database_from_an_older_build_gets_the_new_migrations_only() {
    let db = TestDatabase::create().await;
    PostgresStorage::migrate_only(db.url())
        .await
        .expect("migrate");
    let first = recorded_checksum(db.url(), 1).await.expect("a checksum");
    // As a build that knew only 0001 left it: no search indexes, no row for 0002.
    admin(db.url())
        .await
        .batch_execute(
            "DROP INDEX users_username_search_idx;
             DROP INDEX users_display_name_search_idx;
             DELETE FROM minichat_migrations WHERE version = 2",
        )
        .await
        .expect("roll back to 0001");
    let storage = PostgresStorage::connect(&config(db.url()))
        .await
        .expect("start");
    storage.check().await.expect("check");
    assert_eq!(migration_rows(db.url()).await, every_migration());
    assert_eq!(recorded_checksum(db.url(), 1).await, Some(first));
    assert_eq!(
        recorded_checksum(db.url(), 2).await.map(|c| c.len()),
        Some(64)
    );
    let indexes: Vec<String> = admin(db.url())
        .await
        .query(
            "SELECT indexname FROM pg_indexes
             WHERE tablename = 'users' AND indexname LIKE '%search%' ORDER BY indexname",
            &[],
        )
        .await
        .expect("list indexes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        indexes,
        ["users_display_name_search_idx", "users_username_search_idx"]
    );
}

// ---- Upgrading a database with data: 0001-0002 to this build ------------------------------

/// The schema as a build that knew only migrations 0001 and 0002 left it, recorded as that
/// build's runner records it (with checksums).
async fn old_schema(client: &tokio_postgres::Client) {
    const OLD: [(i32, &str, &str); 2] = [
        (1, "initial", include_str!("../migrations/0001_initial.sql")),
        (
            2,
            "user_search",
            include_str!("../migrations/0002_user_search.sql"),
        ),
    ];
    client
        .batch_execute(
            "CREATE TABLE minichat_migrations (
                version    INT PRIMARY KEY,
                name       TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                checksum   TEXT
            )",
        )
        .await
        .expect("record table");
    for (version, name, sql) in OLD {
        client.batch_execute(sql).await.expect("old migration");
        let checksum: String = Sha256::digest(sql.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        client
            .execute(
                "INSERT INTO minichat_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                &[&version, &name, &checksum],
            )
            .await
            .expect("record old migration");
    }
}

/// One message of the old database: `(sender, receiver, client id)` by index into the users.
fn old_messages() -> Vec<(usize, usize, Option<String>)> {
    // Four users in an irregular pattern over every pair and direction; the fifth (erin) has
    // never sent or received anything.
    (0..40usize)
        .map(|i| {
            let from = (i * 7) % 4;
            let to = (from + 1 + (i * 3 + i / 5) % 3) % 4;
            (from, to, (i % 3 == 0).then(|| format!("c{i}")))
        })
        .collect()
}

/// A message row, as both schemas hold it.
type Row = (
    i64,
    i64,
    Option<i64>,
    String,
    DateTime<Utc>,
    i64,
    Option<i64>,
    Option<String>,
);

async fn message_rows(client: &tokio_postgres::Client) -> Vec<Row> {
    client
        .query(
            "SELECT id, sender_id, receiver_id, content, created_at, sender_seq, receiver_seq,
                    client_id
             FROM messages ORDER BY id",
            &[],
        )
        .await
        .expect("read messages")
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
            )
        })
        .collect()
}

fn timeless(m: &Message) -> Message {
    Message {
        timestamp: DateTime::<Utc>::UNIX_EPOCH,
        ..m.clone()
    }
}

fn timeless_events(events: &[StreamEvent]) -> Vec<StreamEvent> {
    events
        .iter()
        .map(|e| match e {
            StreamEvent::Message(m) => StreamEvent::Message(StreamMessage {
                message: timeless(&m.message),
                ..m.clone()
            }),
            other => other.clone(),
        })
        .collect()
}

/// A database of migrations 0001-0002 with users, messages (seqs, client ids) and read
/// receipts, written by plain SQL as the old build wrote them, is migrated by a node's start:
/// nothing is lost, and it then behaves exactly as memory does after the same sends and marks.
#[tokio::test]
async fn a_database_with_data_is_upgraded_to_conversations_without_loss() {
    let db = TestDatabase::create().await;
    let client = admin(db.url()).await;
    old_schema(&client).await;

    // What the old build stored, and the same sends and marks on the reference.
    let mem = MemoryStorage::new();
    let names = ["alice", "bob", "carol", "dave", "erin"];
    let mut ids = Vec::new();
    for name in names {
        let user = NewUser {
            username: name.into(),
            display_name: None,
        }
        .validate()
        .unwrap();
        let id: i64 = client
            .query_one(
                "INSERT INTO users (username, display_name, created_at)
                 VALUES ($1, $1, now()) RETURNING id",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(mem.create_user(&user).await.unwrap().id, id);
        ids.push(id);
    }
    let base = DateTime::parse_from_rfc3339("2026-11-01T08:00:00.123456Z")
        .unwrap()
        .with_timezone(&Utc);
    let mut seq = vec![0i64; ids.len()];
    for (i, (from, to, client_id)) in old_messages().into_iter().enumerate() {
        seq[from] += 1;
        seq[to] += 1;
        let at = base + chrono::Duration::seconds(i as i64);
        client
            .execute(
                "INSERT INTO messages
                     (sender_id, receiver_id, content, created_at, sender_seq, receiver_seq,
                      client_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &ids[from],
                    &ids[to],
                    &format!("old {i}"),
                    &at,
                    &seq[from],
                    &seq[to],
                    &client_id,
                ],
            )
            .await
            .unwrap();
        let mut send = NewMessage::to_user(ids[from], ids[to], format!("old {i}"));
        send.client_id = client_id;
        mem.store_message(&send.validate().unwrap()).await.unwrap();
    }
    for (id, last) in ids.iter().zip(&seq) {
        client
            .execute("UPDATE users SET last_seq = $2 WHERE id = $1", &[id, last])
            .await
            .unwrap();
    }
    // Read receipts: some readers, each up to one of their peer's messages (the newest such
    // but one, so later messages stay unread).
    let rows = message_rows(&client).await;
    let mut receipts: Vec<(i64, i64, i64)> = Vec::new();
    for (reader, peer) in [(0, 1), (1, 0), (2, 0), (3, 2), (1, 3)] {
        let theirs: Vec<i64> = rows
            .iter()
            .filter(|r| r.1 == ids[peer] && r.2 == Some(ids[reader]))
            .map(|r| r.0)
            .collect();
        let up_to = theirs[theirs.len().saturating_sub(2)];
        receipts.push((ids[reader], ids[peer], up_to));
        client
            .execute(
                "INSERT INTO read_receipts (user_id, peer_id, up_to_message_id, updated_at)
                 VALUES ($1, $2, $3, now())",
                &[&ids[reader], &ids[peer], &up_to],
            )
            .await
            .unwrap();
        let mark = ReadMark {
            reader_id: ids[reader],
            to: Recipient::User(ids[peer]),
            up_to,
        };
        mem.mark_read(&mark.validate().unwrap()).await.unwrap();
    }

    // A node of this build starts: 0003 runs.
    let pg = PostgresStorage::connect(&config(db.url()))
        .await
        .expect("start on the old database");
    assert_eq!(migration_rows(db.url()).await, every_migration());

    // Messages: ids, seqs, client ids, contents and times unchanged.
    assert_eq!(message_rows(&client).await, rows);
    // One direct conversation per pair that talked, with both as members; none for erin.
    let pairs: Vec<(i64, i64, i64, i64)> = client
        .query(
            "SELECT c.id, c.direct_low, c.direct_high, count(cm.user_id)
             FROM conversations c JOIN conversation_members cm ON cm.conversation_id = c.id
             WHERE c.kind = 'direct'
               AND cm.user_id IN (c.direct_low, c.direct_high) AND cm.role = 'member'
             GROUP BY c.id ORDER BY c.id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(pairs.len(), 6, "every pair of the four talked: {pairs:?}");
    assert!(pairs.iter().all(|p| p.3 == 2), "{pairs:?}");
    let total: i64 = client
        .query_one("SELECT count(*) FROM conversations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 6);
    // Every message in its pair's conversation.
    let placed: Vec<(i64, i64)> = client
        .query(
            "SELECT m.id, c.id FROM messages m JOIN conversations c
               ON c.direct_low = LEAST(m.sender_id, m.receiver_id)
              AND c.direct_high = GREATEST(m.sender_id, m.receiver_id)
             WHERE m.conversation_id = c.id ORDER BY m.id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(placed.len(), rows.len());
    // Read receipts became read marks, and their table is gone.
    for &(reader, peer, up_to) in &receipts {
        assert_eq!(
            pg.read_marks(reader, peer).await.unwrap().read_up_to,
            Some(up_to)
        );
    }
    let receipts_left: Option<String> = client
        .query_one("SELECT to_regclass('read_receipts')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(receipts_left, None);

    // Every read agrees with the reference (and with what the old build stored).
    for (k, &user) in ids.iter().enumerate() {
        let events = pg.events_since(user, 0, 1000).await.unwrap();
        assert_eq!(
            timeless_events(&events),
            timeless_events(&mem.events_since(user, 0, 1000).await.unwrap())
        );
        assert_eq!(events.len() as i64, seq[k]);
        assert_eq!(pg.current_seq(user).await.unwrap(), seq[k]);
        // The stored times come back as they were written.
        for e in &events {
            let StreamEvent::Message(m) = e else {
                panic!("no membership events in an old database: {e:?}")
            };
            let row = rows.iter().find(|r| r.0 == m.message.id).unwrap();
            assert_eq!(m.message.timestamp, row.4);
        }
        let query = HistoryRequest {
            limit: 1000,
            ..HistoryRequest::new(user)
        }
        .validate()
        .unwrap();
        let history = pg.history(&query).await.unwrap();
        let reference = mem.history(&query).await.unwrap();
        assert_eq!(
            history.iter().map(timeless).collect::<Vec<_>>(),
            reference.iter().map(timeless).collect::<Vec<_>>()
        );
        let page = Page::new(0, 100).unwrap();
        let inbox = pg.conversations(user, page).await.unwrap();
        let expected = mem.conversations(user, page).await.unwrap();
        let key = |s: &[ConversationSummary]| -> Vec<(i64, i64, Option<i64>, Option<i64>)> {
            s.iter()
                .map(|c| {
                    (
                        c.id,
                        c.unread,
                        c.peer_id,
                        c.last_message.as_ref().map(|m| m.id),
                    )
                })
                .collect()
        };
        // By id the same; the reference's times are of its replay, so compare the order by
        // the old times: newest message first.
        let mut by_id = key(&expected);
        by_id.sort_by_key(|c| std::cmp::Reverse(c.3));
        assert_eq!(key(&inbox), by_id);
    }

    // New sends continue every seq, in the pairs' conversations or in a new one.
    for (from, to) in [(0, 1), (3, 2), (0, 4), (4, 0)] {
        let send = NewMessage::to_user(ids[from], ids[to], "new")
            .with_client_id(format!("new {from} {to}"))
            .validate()
            .unwrap();
        let (a, b) = (
            pg.store_message(&send).await.unwrap(),
            mem.store_message(&send).await.unwrap(),
        );
        assert_eq!(timeless(&a.message), timeless(&b.message));
        assert_eq!(
            (a.sender_seq, a.recipients, a.created),
            (b.sender_seq, b.recipients, b.created)
        );
    }
    // An old client id retried finds the old message.
    let retry = NewMessage::to_user(ids[0], ids[1], "old 0")
        .with_client_id("c0")
        .validate()
        .unwrap();
    let again = pg.store_message(&retry).await.unwrap();
    assert_eq!((again.message.id, again.created), (rows[0].0, false));
    // A group made now takes the next conversation id.
    let group = NewGroup {
        creator_id: ids[4],
        title: "after".into(),
        member_ids: vec![ids[0]],
    }
    .validate(10)
    .unwrap();
    let (a, b) = (
        pg.create_group(&group).await.unwrap(),
        mem.create_group(&group).await.unwrap(),
    );
    assert_eq!(a.seqs, b.seqs);
    assert_eq!(a.event.conversation.id, b.event.conversation.id);
    assert_eq!(
        a.event.conversation.id, 8,
        "six old pairs, one new pair, then this"
    );
    assert_eq!(
        timeless_events(&pg.events_since(ids[0], 0, 1000).await.unwrap())
            .into_iter()
            .map(|e| e.seq())
            .collect::<Vec<_>>(),
        (1..=seq[0] + 4).collect::<Vec<_>>(),
        "three sends and the group's creation after the old stream"
    );
    for &user in &ids {
        assert_eq!(
            pg.current_seq(user).await.unwrap(),
            mem.current_seq(user).await.unwrap()
        );
    }
}
