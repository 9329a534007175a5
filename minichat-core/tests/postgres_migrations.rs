//! Tests of the PostgreSQL migration runner against a real server.
//!
//! This file exists to show that the schema gets where a build needs it safely: nodes starting
//! at once apply each migration exactly once, a migration changed after it was applied stops the
//! start with a line naming it, and a record table from before checksums is upgraded in place.
//! Each test makes its own database (`TestDatabase`). They need PostgreSQL at 127.0.0.1:5432
//! (user `postgres`, trust auth), or `MINICHAT_TEST_PG_ADMIN_URL`.

use minichat_core::model::NewUser;
use minichat_core::storage::{PostgresConfig, PostgresStorage, Storage};
use minichat_core::test_support::TestDatabase;
use minichat_core::Error;

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
    vec![(1, "initial".into()), (2, "user_search".into())]
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
