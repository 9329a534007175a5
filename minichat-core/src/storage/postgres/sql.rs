//! The SQL text of every statement PostgreSQL storage runs on users, messages and conversations,
//! as named constants.
//!
//! This file exists so that the queries, and the index each one is meant to use, can be read
//! and reviewed apart from the Rust that runs them (`mod.rs`), and so that the plan test there
//! checks exactly the text that runs. Every value is a parameter; none is ever formatted in.
//! (The migration runner's own statements live with it in `migrations.rs`.)
//!
//! Plans were checked with EXPLAIN on 4,000 direct messages between 100 users (one user in half
//! of them) and 1,000 group messages in 20 groups, after ANALYZE, with custom and with generic
//! plans; the `plans_are_index_driven` test in `plans.rs` repeats that check. No read scans
//! `messages` or `stream_entries` sequentially: each half is an Index
//! Scan (Backward, for newest first) of the index named in its comment under a Limit, or, for a
//! user with few rows, a Bitmap Index Scan of it followed by a small sort; for a user in half of
//! all messages the planner may instead walk the primary key backward until the page is full.

/// Inserts unless the username exists (so a taken name does not use up an id; a concurrent
/// insert of the same name still fails on the unique constraint).
pub(super) const CREATE_USER: &str = "INSERT INTO users (username, display_name, created_at)
     SELECT $1::text, $2::text, $3::timestamptz
     WHERE NOT EXISTS (SELECT 1 FROM users WHERE username = $1::text)
     RETURNING id";

pub(super) const LIST_USERS: &str =
    "SELECT id, username, display_name, created_at FROM users ORDER BY id OFFSET $1 LIMIT $2";

/// The users whose folded username or display name starts with `$1` (a folded prefix), by id,
/// OFFSET `$3` LIMIT `$4`. `$2` is the first text after every text starting with `$1`
/// (`prefix_end` in `mod.rs`), so each half is a byte-order range of one index of migration
/// 0002 (`users_username_search_idx`, `users_display_name_search_idx`), which the planner can
/// use in a generic plan too; a `LIKE $1 || '%'` could only use them in a custom plan. A range
/// has no metacharacters: `%`, `_` and `\` in the prefix are plain characters.
///
/// For a prefix found in few rows the plan is a BitmapOr of both indexes, then a sort of the
/// matches by id; for one found in most rows the planner may walk the primary key instead and
/// stop when the page is full.
pub(super) const SEARCH_USERS: &str = "SELECT id, username, display_name, created_at FROM users
     WHERE (lower(username) ~>=~ $1 AND lower(username) ~<~ $2)
        OR (lower(display_name) ~>=~ $1 AND lower(display_name) ~<~ $2)
     ORDER BY id OFFSET $3 LIMIT $4";

/// [`SEARCH_USERS`] for a prefix with no end (every character U+10FFFF): then every text at or
/// above `$1` starts with it. OFFSET `$2` LIMIT `$3`.
pub(super) const SEARCH_USERS_FROM: &str =
    "SELECT id, username, display_name, created_at FROM users
     WHERE lower(username) ~>=~ $1 OR lower(display_name) ~>=~ $1
     ORDER BY id OFFSET $2 LIMIT $3";

pub(super) const GET_USER: &str =
    "SELECT id, username, display_name, created_at FROM users WHERE id = $1";

/// The columns every read of a message returns, in the order `message_from` (`mod.rs`) reads
/// them: `id, conversation_id, sender_id, sender_username, receiver_id, content, created_at`.
///
/// Everything `user` ($1) sent or received directly with `id < $2` (group messages are read
/// by conversation, as in memory): the newest `$3` (= skip + limit) of each half
/// (`messages_direct_sender_idx` of migration 0003, partial on `receiver_id IS NOT NULL`, which
/// this half repeats word for word so that generic plans can use it too, and
/// `messages_receiver_idx`, which holds direct messages only), merged, then paged
/// (OFFSET $4 LIMIT $5); the sender's name is joined only for the rows of the page.
pub(super) const HISTORY_ALL: &str =
    "SELECT h.id, h.conversation_id, h.sender_id, u.username, h.receiver_id, h.content,
            h.created_at
     FROM (
         SELECT * FROM (
             (SELECT id, conversation_id, sender_id, receiver_id, content, created_at
              FROM messages
              WHERE sender_id = $1 AND receiver_id IS NOT NULL AND id < $2
              ORDER BY id DESC LIMIT $3)
             UNION ALL
             (SELECT id, conversation_id, sender_id, receiver_id, content, created_at
              FROM messages
              WHERE receiver_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3)
         ) AS halves
         ORDER BY id DESC OFFSET $4 LIMIT $5
     ) AS h
     JOIN users u ON u.id = h.sender_id
     ORDER BY h.id DESC";

/// As [`HISTORY_ALL`], between `user` ($1) and `peer` ($5): the messages of their direct
/// conversation (found by `conversations_direct_pair_key`), which are their direct messages by
/// construction, by `messages_conversation_idx`; OFFSET $3 LIMIT $4. No row when the pair has
/// no conversation yet.
pub(super) const HISTORY_PAIR: &str =
    "SELECT m.id, m.conversation_id, m.sender_id, u.username, m.receiver_id, m.content,
            m.created_at
     FROM conversations c
     CROSS JOIN LATERAL (
         SELECT id, conversation_id, sender_id, receiver_id, content, created_at FROM messages
         WHERE conversation_id = c.id AND id < $2
         ORDER BY id DESC OFFSET $3 LIMIT $4
     ) AS m
     JOIN users u ON u.id = m.sender_id
     WHERE c.direct_low = LEAST($1::bigint, $5::bigint)
       AND c.direct_high = GREATEST($1::bigint, $5::bigint)
     ORDER BY m.id DESC";

/// The messages of conversation `$1` with `id < $3`, newest first, OFFSET $4 LIMIT $5, if
/// `$2` is a member: a backward range of `messages_conversation_idx`. One row per message,
/// or, for a member of a conversation with none on this page, one row of NULLs; no row at all
/// when `$2` is not a member (the caller's `ConversationNotFound`).
pub(super) const HISTORY_CONVERSATION: &str =
    "SELECT h.id, h.conversation_id, h.sender_id, u.username, h.receiver_id, h.content,
            h.created_at
     FROM conversation_members me
     LEFT JOIN LATERAL (
         SELECT id, conversation_id, sender_id, receiver_id, content, created_at FROM messages
         WHERE conversation_id = me.conversation_id AND id < $3
         ORDER BY id DESC OFFSET $4 LIMIT $5
     ) AS h ON true
     LEFT JOIN users u ON u.id = h.sender_id
     WHERE me.conversation_id = $1 AND me.user_id = $2
     ORDER BY h.id DESC";

/// The newest `$2` direct messages `$1` received, by `messages_receiver_idx` (a group message
/// has no receiver).
pub(super) const RECENT_RECEIVED: &str =
    "SELECT m.id, m.conversation_id, m.sender_id, u.username, m.receiver_id, m.content,
            m.created_at
     FROM messages m JOIN users u ON u.id = m.sender_id
     WHERE m.receiver_id = $1
     ORDER BY m.id DESC LIMIT $2";

/// The first `$3` events of `$1`'s stream with a seq above `$2`: the first `$3` of each of
/// three halves, merged by seq:
/// - what `$1` sent (`messages_sender_seq_key`), with its client id: only here, since the
///   receivers never learn the sender's client ids;
/// - the direct messages `$1` received (`messages_receiver_seq_key`);
/// - `$1`'s `stream_entries` (its primary key): group messages of others, each joined to its
///   message by primary key, and membership events, joined to `conversation_events` only for
///   the rows that are returned.
///
/// Columns: `seq`, the message columns (NULL for an event), `client_id`, then the event's
/// `event, by_user, user_ids, conversation` (NULL for a message; the conversation as JSON
/// text).
pub(super) const EVENTS_SINCE: &str =
    "SELECT e.seq, e.id, e.conversation_id, e.sender_id, u.username, e.receiver_id, e.content,
            e.created_at, e.client_id, ev.event, ev.by_user, ev.user_ids, ev.conversation::text
     FROM (
         SELECT * FROM (
             (SELECT sender_seq AS seq, id, conversation_id, sender_id, receiver_id, content,
                     created_at, client_id, NULL::bigint AS event_id
              FROM messages WHERE sender_id = $1 AND sender_seq > $2
              ORDER BY sender_seq LIMIT $3)
             UNION ALL
             (SELECT receiver_seq AS seq, id, conversation_id, sender_id, receiver_id, content,
                     created_at, NULL::text AS client_id, NULL::bigint AS event_id
              FROM messages WHERE receiver_id = $1 AND receiver_seq > $2
              ORDER BY receiver_seq LIMIT $3)
             UNION ALL
             (SELECT s.seq, m.id, m.conversation_id, m.sender_id, m.receiver_id, m.content,
                     m.created_at, NULL::text AS client_id, s.event_id
              FROM stream_entries s LEFT JOIN messages m ON m.id = s.message_id
              WHERE s.user_id = $1 AND s.seq > $2
              ORDER BY s.seq LIMIT $3)
         ) AS halves
         ORDER BY seq LIMIT $3
     ) AS e
     LEFT JOIN users u ON u.id = e.sender_id
     LEFT JOIN conversation_events ev ON ev.id = e.event_id
     ORDER BY e.seq";

/// Reader `$1` marks conversation `$2` (or, when `$2` is NULL, the direct conversation with
/// peer `$3`) read up to message `$4`, never moving back. No row: `$1` is not a member (or has
/// no direct conversation with `$3`). Otherwise one row: the conversation, the stored mark
/// (NULL when `$4` is not a message of that conversation from another member, and nothing
/// changed), and the other members by id.
pub(super) const MARK_READ: &str = "WITH conv AS (
         SELECT me.conversation_id AS id FROM conversation_members me
         WHERE me.user_id = $1
           AND me.conversation_id = COALESCE($2::bigint, (
               SELECT id FROM conversations
               WHERE direct_low = LEAST($1, $3::bigint)
                 AND direct_high = GREATEST($1, $3::bigint)))
     ), readable AS (
         SELECT m.id FROM messages m JOIN conv ON m.conversation_id = conv.id
         WHERE m.id = $4 AND m.sender_id <> $1
     ), marked AS (
         UPDATE conversation_members me SET read_up_to = GREATEST(me.read_up_to, readable.id)
         FROM readable, conv
         WHERE me.conversation_id = conv.id AND me.user_id = $1
         RETURNING me.read_up_to
     )
     SELECT conv.id, (SELECT read_up_to FROM marked),
            ARRAY(SELECT user_id FROM conversation_members
                  WHERE conversation_id = conv.id AND user_id <> $1 ORDER BY user_id)
     FROM conv";

/// The read marks of `$1` and `$2` in their direct conversation (none without one).
pub(super) const READ_MARKS: &str = "SELECT me.user_id, me.read_up_to
     FROM conversations c JOIN conversation_members me ON me.conversation_id = c.id
     WHERE c.direct_low = LEAST($1::bigint, $2::bigint)
       AND c.direct_high = GREATEST($1::bigint, $2::bigint)";

// ---- Conversations --------------------------------------------------------------------------

/// Conversation `$1` with its members by user id (columns `id, kind, title, created_by,
/// created_at, user_id, role, joined_at`), if `$2` is one of them; no row otherwise.
pub(super) const CONVERSATION: &str =
    "SELECT c.id, c.kind, c.title, c.created_by, c.created_at, cm.user_id, cm.role, cm.joined_at
     FROM conversations c JOIN conversation_members cm ON cm.conversation_id = c.id
     WHERE c.id = $1
       AND EXISTS (SELECT 1 FROM conversation_members me
                   WHERE me.conversation_id = $1 AND me.user_id = $2)
     ORDER BY cm.user_id";

/// `$1`'s inbox, OFFSET $2 LIMIT $3: per membership (`conversation_members_user_idx`), the
/// conversation and its newest message (one row of a backward `messages_conversation_idx`
/// range); sorted by the newest message's time (the conversation's creation when it has none),
/// then the higher id; then, for the rows of the page only, the member count (a range of the
/// members' primary key), the unread count (the range of `messages_conversation_idx` above
/// the read mark, less `$1`'s own) and the last message's sender name. `peer` is the other
/// member of a direct conversation.
///
/// Columns: `id, kind, title, created_by, created_at, member_count, unread, peer`, then the
/// last message's columns (NULL when none).
pub(super) const CONVERSATIONS: &str = "SELECT p.id, p.kind, p.title, p.created_by, p.created_at,
            (SELECT count(*) FROM conversation_members cm WHERE cm.conversation_id = p.id),
            (SELECT count(*) FROM messages m
             WHERE m.conversation_id = p.id AND m.id > COALESCE(p.read_up_to, 0)
               AND m.sender_id <> $1),
            p.peer,
            p.last_id, p.id, p.last_sender, u.username, p.last_receiver, p.last_content,
            p.last_at
     FROM (
         SELECT c.id, c.kind, c.title, c.created_by, c.created_at, me.read_up_to,
                CASE WHEN c.kind = 'direct' THEN
                    CASE WHEN c.direct_low = $1 THEN c.direct_high ELSE c.direct_low END
                END AS peer,
                last.id AS last_id, last.sender_id AS last_sender,
                last.receiver_id AS last_receiver, last.content AS last_content,
                last.created_at AS last_at
         FROM conversation_members me
         JOIN conversations c ON c.id = me.conversation_id
         LEFT JOIN LATERAL (
             SELECT id, sender_id, receiver_id, content, created_at FROM messages
             WHERE conversation_id = me.conversation_id ORDER BY id DESC LIMIT 1
         ) AS last ON true
         WHERE me.user_id = $1
         ORDER BY COALESCE(last.created_at, c.created_at) DESC, c.id DESC
         OFFSET $2 LIMIT $3
     ) AS p
     LEFT JOIN users u ON u.id = p.last_sender
     ORDER BY COALESCE(p.last_at, p.created_at) DESC, p.id DESC";

/// Locks conversation `$1` for a membership change (before any user row: the global lock
/// order) and reads it; the members are read by the next statement, whose snapshot sees every
/// change committed before the lock was granted.
pub(super) const LOCK_CONVERSATION: &str =
    "SELECT id, kind, title, created_by, created_at FROM conversations WHERE id = $1 FOR UPDATE";

/// The members of conversation `$1` by user id.
pub(super) const MEMBERS: &str = "SELECT user_id, role, joined_at FROM conversation_members
     WHERE conversation_id = $1 ORDER BY user_id";

/// Locks the users `$1` in id order (after any conversation row) and reads the last seq each
/// was given; an unknown id has no row.
pub(super) const LOCK_USERS: &str =
    "SELECT id, last_seq FROM users WHERE id = ANY($1) ORDER BY id FOR UPDATE";

/// A new group: kind, title `$1`, creator `$2`, time `$3`.
pub(super) const INSERT_GROUP: &str =
    "INSERT INTO conversations (kind, title, created_by, created_at)
     VALUES ('group', $1, $2, $3) RETURNING id";

/// Members `$2` with roles `$3` joining conversation `$1` at `$4`.
pub(super) const INSERT_MEMBERS: &str =
    "INSERT INTO conversation_members (conversation_id, user_id, role, joined_at)
     SELECT $1, u, r, $4 FROM unnest($2::bigint[], $3::text[]) AS m(u, r)";

pub(super) const REMOVE_MEMBER: &str =
    "DELETE FROM conversation_members WHERE conversation_id = $1 AND user_id = $2";

pub(super) const RENAME: &str = "UPDATE conversations SET title = $2 WHERE id = $1";

/// Records a membership event of conversation `$1` (`event` $2, `by_user` $3, `user_ids` $4,
/// the conversation after it as JSON text $5, at $6) and puts it in the stream of each user of
/// `$7` at the seq of `$8` (computed from the locked `last_seq`s), moving their `last_seq`
/// there: one statement whatever the number of recipients.
pub(super) const RECORD_EVENT: &str = "WITH ev AS (
         INSERT INTO conversation_events
             (conversation_id, event, by_user, user_ids, conversation, created_at)
         VALUES ($1, $2, $3, $4, $5::text::jsonb, $6)
         RETURNING id
     ), entries AS (
         INSERT INTO stream_entries (user_id, seq, event_id)
         SELECT r.u, r.s, ev.id FROM unnest($7::bigint[], $8::bigint[]) AS r(u, s), ev
     ), seqs AS (
         UPDATE users SET last_seq = r.s
         FROM unnest($7::bigint[], $8::bigint[]) AS r(u, s) WHERE users.id = r.u
     )
     SELECT id FROM ev";

pub(super) const CURRENT_SEQ: &str = "SELECT last_seq FROM users WHERE id = $1";

pub(super) const SET_LAST_SEEN: &str =
    "UPDATE users SET last_seen = GREATEST(last_seen, $2) WHERE id = $1";

pub(super) const LAST_SEEN: &str = "SELECT id, last_seen FROM users WHERE id = ANY($1)";

pub(super) const CHECK: &str = "SELECT 1";

// ---- The batch writer (`writer/`) ------------------------------------------------------------
// Everything below is run by the group-commit writer only, in this order within one
// transaction: conversations, members, users, client ids, direct conversations, messages,
// stream entries, seqs. The lock order (conversations by id, then users by id) is the global
// one: membership changes lock their conversation row, then its users, the same way.
// Plans checked with EXPLAIN of the generic plans on 100,000 direct conversations and 100 groups
// of 500: every statement reads by the index its comment names (the unnest joins are nested
// loops over it), none scans a table sequentially. The `batch_plans_use_indexes_from_the_start`
// test in `plans.rs` checks their custom and generic plans on never analyzed tables, empty and
// nearly empty.

/// Opens a batch's transaction, with sequential scans, hash joins and merge joins off for its
/// statements: each of them then reads every table by an index keyed on the batch's own ids.
///
/// A connection plans a prepared statement afresh for its first five runs, then may keep one
/// generic plan, made for the tables as they were then and remade only after an ANALYZE. On a
/// new database the client-id lookup's generic plan saw a near-empty `messages` and read all of
/// it once per batch, at a cost that grew with the table for as long as no ANALYZE ran
/// (autovacuum off, or before its first pass):
/// - on empty tables, a sequential scan: at 5,000 sends/s from a new database, 985 scans read
///   17.6M rows in 10 s and delivery p99 was 128 ms (BENCHMARKS.md, "Run of stop 27");
/// - with sequential scans off, on a few dozen rows, a hash join over a bitmap scan of the whole
///   client-id index: after 2 s at 400 sends/s, the next 10 s at 5,000/s read 38.5M index
///   entries and delivery p99 was 30 ms (7 ms with joins off; "Run of stop 28").
///
/// Whether a connection kept such a plan depended on the batches it ran first. Every statement
/// of a batch joins a few keys (an `unnest` of the batch's ids) to an index on them, so a nested
/// loop over that index is the right plan however small or large the tables are, and with these
/// settings it is the only one left. `SET LOCAL` keeps them to the batch's transaction, and they
/// ride in `BEGIN`'s message: no round trip.
pub(super) const BEGIN_BATCH: &str = "BEGIN; SET LOCAL enable_seqscan = off; \
     SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

/// Locks the conversations a batch sends to by id, in id order, `FOR SHARE` (a membership
/// change locks its row `FOR UPDATE`, so the members read next stay as read until commit), and
/// reads what they are, by `conversations_pkey`. A missing id is simply not returned.
pub(super) const LOCK_BATCH_CONVERSATIONS: &str =
    "SELECT id, kind, direct_low, direct_high FROM conversations
     WHERE id = ANY($1) ORDER BY id FOR SHARE";

/// The members of a batch's group conversations, by `conversation_members_pkey` (index only);
/// a separate statement after [`LOCK_BATCH_CONVERSATIONS`], so that its snapshot is taken
/// after the locks were granted and sees every membership change committed before.
pub(super) const BATCH_MEMBERS: &str = "SELECT conversation_id, user_id FROM conversation_members
     WHERE conversation_id = ANY($1) ORDER BY conversation_id, user_id";

/// Locks every user of a batch in one global id order (so batches of any nodes cannot
/// deadlock) and reads the `last_seq` the batch's seqs continue from. `FOR NO KEY UPDATE`: the
/// batch changes no key of the row, only `last_seq`; the lock excludes every other seq-taker
/// (batches, membership events: `FOR UPDATE` or `FOR NO KEY UPDATE`) but not the `FOR KEY SHARE`
/// a foreign-key check takes, so another transaction's insert that references a user (a member
/// row, a conversation's creator) neither waits for a batch nor makes one wait, whatever order
/// it takes those in.
pub(super) const LOCK_BATCH_USERS: &str =
    "SELECT id, username, last_seq FROM users WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE";

/// The earlier messages of a batch's `(sender, client_id)` pairs, by
/// `messages_sender_client_id_key`.
pub(super) const FIND_BATCH_CLIENT_IDS: &str =
    "SELECT m.sender_id, m.client_id, m.id, m.receiver_id, m.content, m.created_at,
            m.sender_seq, m.conversation_id
     FROM unnest($1::bigint[], $2::text[]) AS k(sender_id, client_id)
     JOIN messages m ON m.sender_id = k.sender_id AND m.client_id = k.client_id";

/// The direct conversations of a batch's pairs (`$1` lower ids, `$2` higher ids) that the
/// writer's in-process map did not know, made now when missing (`$3` creators, `$4` times) with
/// their two members. A pair that exists is not inserted (so it takes no id); one that a
/// concurrent transaction commits meanwhile hits `conversations_direct_pair_key` and is
/// skipped, and then this statement's snapshot cannot see it: the writer reads those pairs
/// again with [`DIRECT_PAIRS`]. Returns `id, direct_low, direct_high` of every pair found or
/// made; both lookups use `conversations_direct_pair_key`.
pub(super) const DIRECT_CONVERSATIONS: &str = "WITH pairs AS (
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::timestamptz[])
             WITH ORDINALITY AS p(lo, hi, creator, made_at, ord)
     ), made AS (
         INSERT INTO conversations (kind, title, created_by, created_at, direct_low, direct_high)
         SELECT 'direct', NULL, p.creator, p.made_at, p.lo, p.hi FROM pairs p
         WHERE NOT EXISTS (SELECT 1 FROM conversations c
                           WHERE c.direct_low = p.lo AND c.direct_high = p.hi)
         ORDER BY p.ord
         ON CONFLICT ON CONSTRAINT conversations_direct_pair_key DO NOTHING
         RETURNING id, direct_low, direct_high, created_at
     ), joined AS (
         INSERT INTO conversation_members (conversation_id, user_id, role, joined_at)
         SELECT id, direct_low, 'member', created_at FROM made
         UNION ALL
         SELECT id, direct_high, 'member', created_at FROM made
     )
     SELECT id, direct_low, direct_high FROM made
     UNION ALL
     SELECT c.id, c.direct_low, c.direct_high
     FROM pairs p JOIN conversations c ON c.direct_low = p.lo AND c.direct_high = p.hi";

/// The direct conversations of pairs (`$1` lower ids, `$2` higher ids), by
/// `conversations_direct_pair_key`.
pub(super) const DIRECT_PAIRS: &str = "SELECT c.id, c.direct_low, c.direct_high
     FROM unnest($1::bigint[], $2::bigint[]) AS p(lo, hi)
     JOIN conversations c ON c.direct_low = p.lo AND c.direct_high = p.hi";

/// Inserts a batch's new messages, seqs computed by the writer; ids are taken in the batch's
/// order (`ORDER BY ord`), which is each user's seq order. `(sender_id, sender_seq)` is unique,
/// so it maps each returned id back to its message. A group message has a NULL receiver and
/// receiver seq.
pub(super) const INSERT_BATCH: &str = "INSERT INTO messages
         (sender_id, receiver_id, content, created_at, sender_seq, receiver_seq, client_id,
          conversation_id)
     SELECT s, r, c, t, ss, rs, k, cv
     FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::timestamptz[], $5::bigint[],
                 $6::bigint[], $7::text[], $8::bigint[])
          WITH ORDINALITY AS b(s, r, c, t, ss, rs, k, cv, ord)
     ORDER BY ord
     RETURNING id, sender_id, sender_seq";

/// The stream entries of a batch's group messages: one per member but the sender.
pub(super) const INSERT_BATCH_STREAM: &str = "INSERT INTO stream_entries (user_id, seq, message_id)
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])";

/// Moves each user of a batch to the last seq the batch gave it.
pub(super) const UPDATE_BATCH_SEQS: &str = "UPDATE users SET last_seq = u.seq
     FROM unnest($1::bigint[], $2::bigint[]) AS u(id, seq) WHERE users.id = u.id";
