//! The plan tests of PostgreSQL storage: every read is index-driven, and so is every statement
//! of the batch writer, from a database's first batch on.
//!
//! This file exists so that the claims of `sql.rs` (no read scans `messages` or
//! `stream_entries` sequentially, with custom and with generic plans, on data shaped like a
//! busy node's; every batch statement reads each table by an index keyed on the batch's ids,
//! on empty and on nearly empty tables that were never analyzed) are checked on the exact text
//! that runs, apart from the storage code.

use super::migrations::{connect_one, migrate};
use super::parse_url;
use super::sql::*;
use crate::test_support::TestDatabase;

/// 100 users; 4,000 direct messages between them, user 1 in half of them, each pair with its
/// direct conversation; 20 groups (user 1 in half of them) with 1,000 messages and a stream
/// entry for each other member; 20,000 more users (who sent nothing) so that the directory
/// search shows it reads `users` by its indexes (or, for a prefix most users share, by the
/// primary key until the page is full).
const DATA: &str = "INSERT INTO users (username, display_name, created_at)
         SELECT 'u' || i, 'u' || i, now() FROM generate_series(1, 100) AS i;
     CREATE TEMP TABLE pattern AS
         SELECT i, CASE WHEN i % 2 = 0 THEN 1 ELSE 2 + i % 99 END AS s,
                CASE WHEN i % 2 = 0 THEN 2 + i % 99 ELSE 2 + (7 * i + 1) % 99 END AS r
         FROM generate_series(1, 4000) AS i;
     INSERT INTO conversations (kind, created_by, created_at, direct_low, direct_high)
         SELECT DISTINCT ON (LEAST(s, r), GREATEST(s, r))
                'direct', s, now(), LEAST(s, r), GREATEST(s, r)
         FROM pattern ORDER BY LEAST(s, r), GREATEST(s, r), i;
     INSERT INTO conversations (kind, title, created_by, created_at)
         SELECT 'group', 'g' || g, 1, now() FROM generate_series(1, 20) AS g;
     INSERT INTO conversation_members (conversation_id, user_id, role, joined_at, read_up_to)
         SELECT id, direct_low, 'member', now(), 100 FROM conversations WHERE kind = 'direct'
         UNION ALL
         SELECT id, direct_high, 'member', now(), NULL FROM conversations WHERE kind = 'direct'
         UNION ALL
         SELECT c.id, u, 'member', now(), NULL
         FROM conversations c, generate_series(2, 100) AS u
         WHERE c.kind = 'group' AND (u + c.id) % 5 = 0
         UNION ALL
         SELECT id, 1, 'owner', now(), NULL FROM conversations
         WHERE kind = 'group' AND id % 2 = 0;
     INSERT INTO messages (conversation_id, sender_id, receiver_id, content, created_at,
                           sender_seq, receiver_seq)
         SELECT c.id, p.s, p.r, 'm', now(), p.i, p.i
         FROM pattern p
         JOIN conversations c
           ON c.direct_low = LEAST(p.s, p.r) AND c.direct_high = GREATEST(p.s, p.r)
         ORDER BY p.i;
     INSERT INTO messages (conversation_id, sender_id, content, created_at, sender_seq)
         SELECT g.id, cm.user_id, 'g', now(), 10000 + g.n
         FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM conversations
               WHERE kind = 'group') AS grp
         CROSS JOIN LATERAL (SELECT grp.id, grp.n * 100 + k AS n
                             FROM generate_series(1, 50) AS k) AS g
         CROSS JOIN LATERAL (SELECT user_id FROM conversation_members
                             WHERE conversation_id = g.id ORDER BY user_id LIMIT 1) AS cm;
     INSERT INTO stream_entries (user_id, seq, message_id)
         SELECT cm.user_id,
                20000 + row_number() OVER (PARTITION BY cm.user_id ORDER BY m.id), m.id
         FROM messages m JOIN conversation_members cm ON cm.conversation_id = m.conversation_id
         WHERE m.receiver_id IS NULL AND cm.user_id <> m.sender_id;
     INSERT INTO users (username, display_name, created_at)
         SELECT 'p' || i, 'Person ' || i, now() FROM generate_series(1, 20000) AS i;
     ANALYZE;";

/// EXPLAINs every read, both with the plans made for the actual values and with the generic
/// plans a cached statement may switch to after a few executions, and checks that none reads
/// `messages` or `stream_entries` by a sequential scan (`users`, for the search).
#[tokio::test]
async fn plans_are_index_driven() {
    let db = TestDatabase::create().await;
    let pg = parse_url(db.url()).unwrap();
    migrate(&pg).await.unwrap();
    let client = connect_one(&pg).await.unwrap();
    client.batch_execute(DATA).await.unwrap();
    // The group conversation ids: after the direct ones.
    let first_group: i64 = client
        .query_one(
            "SELECT min(id) FROM conversations WHERE kind = 'group'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (g1, g2) = (first_group + 1, first_group + 2);
    // (name, statement, arguments): for the busy user 1 and a quieter user 50.
    let queries = [
        (
            "history",
            HISTORY_ALL,
            "1, 9223372036854775807, 50, 0, 50".into(),
        ),
        ("history", HISTORY_ALL, "50, 3000, 60, 10, 50".into()),
        (
            "pair",
            HISTORY_PAIR,
            "1, 9223372036854775807, 0, 50, 40".into(),
        ),
        ("pair", HISTORY_PAIR, "50, 3000, 10, 50, 40".into()),
        (
            "conversation",
            HISTORY_CONVERSATION,
            format!("{g1}, 1, 9223372036854775807, 0, 50"),
        ),
        (
            "conversation",
            HISTORY_CONVERSATION,
            format!("{g2}, 50, 3000, 10, 20"),
        ),
        ("recent", RECENT_RECEIVED, "1, 50".into()),
        ("recent", RECENT_RECEIVED, "50, 50".into()),
        ("events", EVENTS_SINCE, "1, 0, 1000".into()),
        ("events", EVENTS_SINCE, "50, 3, 50".into()),
        ("events", EVENTS_SINCE, "50, 20010, 50".into()),
        ("inbox", CONVERSATIONS, "1, 0, 50".into()),
        ("inbox", CONVERSATIONS, "50, 10, 20".into()),
        ("one", CONVERSATION, format!("{g1}, 1")),
        ("mark", MARK_READ, format!("1, {g1}, NULL, 4500")),
        ("mark", MARK_READ, "1, NULL, 40, 100".into()),
        ("marks", READ_MARKS, "1, 40".into()),
        // 111 usernames, then 1,111 display names; the end a prefix of nobody.
        ("search", SEARCH_USERS, "'p123', 'p124', 0, 50".into()),
        (
            "search",
            SEARCH_USERS,
            "'person 19', 'person 1:', 100, 50".into(),
        ),
        ("search", SEARCH_USERS_FROM, "'\u{10FFFF}', 0, 50".into()),
    ];
    for mode in ["force_custom_plan", "force_generic_plan"] {
        for (name, sql, args) in &queries {
            let setup = format!("SET plan_cache_mode = {mode}");
            let plan = explain(&client, &setup, sql, args).await;
            eprintln!("---- {name}({args}) {mode}\n{plan}");
            let tables: &[&str] = if *name == "search" {
                &["users"]
            } else {
                &["messages", "stream_entries"]
            };
            for table in tables {
                assert!(
                    !plan.contains(&format!("Seq Scan on {table} ")),
                    "{name} {mode}:\n{plan}"
                );
            }
        }
    }
}

/// The plan of `sql` with `args` (test-only SQL text: the arguments are this file's
/// constants), prepared after `setup` ran.
async fn explain(client: &tokio_postgres::Client, setup: &str, sql: &str, args: &str) -> String {
    client
        .batch_execute(&format!("{setup}; DEALLOCATE ALL; PREPARE q AS {sql}"))
        .await
        .unwrap();
    let plan: Vec<String> = client
        .query(&format!("EXPLAIN EXECUTE q({args})"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    plan.join("\n")
}

/// The batch writer's statements (every one, with arguments of its types), in the order a
/// batch runs them.
const BATCH_STATEMENTS: [(&str, &str, &str); 9] = [
    ("conversations", LOCK_BATCH_CONVERSATIONS, "'{1,2}'"),
    ("members", BATCH_MEMBERS, "'{1,2}'"),
    ("users", LOCK_BATCH_USERS, "'{1,2,3}'"),
    ("client ids", FIND_BATCH_CLIENT_IDS, "'{1,2}', '{a,b}'"),
    (
        "directs",
        DIRECT_CONVERSATIONS,
        "'{1}', '{2}', '{1}', ARRAY[now()]",
    ),
    ("pairs", DIRECT_PAIRS, "'{1}', '{2}'"),
    (
        "insert",
        INSERT_BATCH,
        "'{1}', '{2}', '{x}', ARRAY[now()], '{1}', '{1}', '{k}', '{1}'",
    ),
    ("stream", INSERT_BATCH_STREAM, "'{1}', '{1}', '{1}'"),
    ("seqs", UPDATE_BATCH_SEQS, "'{1,2}', '{5,6}'"),
];

/// A few rows in every table a batch reads (never analyzed): 20 users, a direct conversation
/// for each neighbour pair and a group of five, 20 messages with client ids, their stream
/// entries. What a node's first batches see once a handful of sends went in, when the
/// connections make their generic plans.
const FEW_ROWS: &str = "INSERT INTO users (username, display_name, created_at)
         SELECT 'u' || i, 'u' || i, now() FROM generate_series(1, 20) AS i;
     INSERT INTO conversations (kind, created_by, created_at, direct_low, direct_high)
         SELECT 'direct', i, now(), i, i + 1 FROM generate_series(1, 19) AS i;
     INSERT INTO conversations (kind, title, created_by, created_at)
         VALUES ('group', 'g', 1, now());
     INSERT INTO conversation_members (conversation_id, user_id, role, joined_at)
         SELECT id, direct_low, 'member', now() FROM conversations WHERE kind = 'direct'
         UNION ALL
         SELECT id, direct_high, 'member', now() FROM conversations WHERE kind = 'direct'
         UNION ALL
         SELECT c.id, u, 'member', now() FROM conversations c, generate_series(1, 5) AS u
         WHERE c.kind = 'group';
     INSERT INTO messages (conversation_id, sender_id, receiver_id, content, created_at,
                           sender_seq, receiver_seq, client_id)
         SELECT i, i, i + 1, 'm', now(), 1, 1, 'c' || i FROM generate_series(1, 19) AS i;
     INSERT INTO messages (conversation_id, sender_id, content, created_at, sender_seq, client_id)
         SELECT id, 1, 'g', now(), 2, 'g' FROM conversations WHERE kind = 'group';
     INSERT INTO stream_entries (user_id, seq, message_id)
         SELECT u, 2, m.id FROM messages m, generate_series(2, 5) AS u
         WHERE m.receiver_id IS NULL;";

/// The scans of `plan` that read a table or index without a key from the statement: a
/// sequential scan, or an index scan with no `Index Cond` of its own.
fn unkeyed_scans(plan: &str) -> Vec<String> {
    let lines: Vec<&str> = plan.lines().collect();
    let mut found = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        if line.contains("Seq Scan") {
            found.push(line.trim().to_string());
        } else if line.contains("Index Scan") || line.contains("Index Only Scan") {
            // The node's own details, up to the next node (a line with "->").
            let keyed = lines[at + 1..]
                .iter()
                .take_while(|l| !l.contains("->"))
                .any(|l| l.contains("Index Cond:"));
            if !keyed {
                found.push(line.trim().to_string());
            }
        }
    }
    found
}

/// On a new database (never analyzed: what a node's first batches see, and all its batches
/// where no ANALYZE runs), with empty tables and then with a few rows in each, every statement
/// of a batch opened by [`BEGIN_BATCH`] reads each table by an index keyed on the batch's ids,
/// in nested loops, with the plans made for the values and with the generic plans a connection
/// keeps after its first five runs. Without the settings, the client-id lookup's plans read all
/// of `messages` (a sequential scan on empty tables; a hash join over the whole client-id index
/// on a few rows), and keep reading it as it grows (see [`BEGIN_BATCH`]).
#[tokio::test]
async fn batch_plans_use_indexes_from_the_start() {
    let db = TestDatabase::create().await;
    let pg = parse_url(db.url()).unwrap();
    migrate(&pg).await.unwrap();
    let client = connect_one(&pg).await.unwrap();
    for tables in ["empty", "a few rows"] {
        if tables == "a few rows" {
            client.batch_execute(FEW_ROWS).await.unwrap();
        }
        for mode in ["force_custom_plan", "force_generic_plan"] {
            for (name, sql, args) in BATCH_STATEMENTS {
                let setup = format!("{BEGIN_BATCH}; SET LOCAL plan_cache_mode = {mode}");
                let plan = explain(&client, &setup, sql, args).await;
                client.batch_execute("ROLLBACK").await.unwrap();
                eprintln!("---- {name} {mode}, {tables}\n{plan}");
                let what = format!("{name} {mode}, {tables}:\n{plan}");
                assert_eq!(unkeyed_scans(&plan), Vec::<String>::new(), "{what}");
                assert!(!plan.contains("Hash Join"), "{what}");
                assert!(!plan.contains("Merge Join"), "{what}");
            }
        }
    }
}
