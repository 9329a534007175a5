//! The SQL text of every statement PostgreSQL storage runs on users and messages, as named
//! constants.
//!
//! This file exists so that the queries, and the index each one is meant to use, can be read
//! and reviewed apart from the Rust that runs them (`mod.rs`), and so that the plan test there
//! checks exactly the text that runs. Every value is a parameter; none is ever formatted in.
//! (The migration runner's own statements live with it in `migrations.rs`.)
//!
//! Plans were checked with EXPLAIN on 4,000 messages between 100 users (one user in half of
//! them) after ANALYZE, with custom and with generic plans; the `plans_are_index_driven` test
//! in `mod.rs` repeats that check. No read scans `messages` sequentially: each half is an Index
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

/// Everything `user` ($1) sent or received with `id < $2`: the newest `$3` (= skip + limit) of
/// each half (`messages_sender_idx`, `messages_receiver_idx`), merged, then paged
/// (OFFSET $4 LIMIT $5); the sender's name is joined only for the rows of the page.
pub(super) const HISTORY_ALL: &str =
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
pub(super) const HISTORY_PAIR: &str =
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
pub(super) const RECENT_RECEIVED: &str =
    "SELECT m.id, m.sender_id, u.username, m.receiver_id, m.content, m.created_at
     FROM messages m JOIN users u ON u.id = m.sender_id
     WHERE m.receiver_id = $1
     ORDER BY m.id DESC LIMIT $2";

/// The first `$3` messages of `$1`'s stream with a seq above `$2`: the first `$3` of each half
/// (`messages_sender_seq_key`, `messages_receiver_seq_key`), merged by seq. The client id comes
/// from the sent half only: the receiver never learns the sender's client ids.
pub(super) const EVENTS_SINCE: &str =
    "SELECT e.seq, e.id, e.sender_id, u.username, e.receiver_id, e.content, e.created_at,
            e.client_id
     FROM (
         SELECT * FROM (
             (SELECT sender_seq AS seq, id, sender_id, receiver_id, content, created_at,
                     client_id
              FROM messages WHERE sender_id = $1 AND sender_seq > $2
              ORDER BY sender_seq LIMIT $3)
             UNION ALL
             (SELECT receiver_seq AS seq, id, sender_id, receiver_id, content, created_at,
                     NULL::text AS client_id
              FROM messages WHERE receiver_id = $1 AND receiver_seq > $2
              ORDER BY receiver_seq LIMIT $3)
         ) AS halves
         ORDER BY seq LIMIT $3
     ) AS e
     JOIN users u ON u.id = e.sender_id
     ORDER BY e.seq";

/// Only a message of the peer's to the reader can be marked; the mark never moves back.
pub(super) const MARK_READ: &str =
    "INSERT INTO read_receipts (user_id, peer_id, up_to_message_id, updated_at)
     SELECT $1, $2, id, now() FROM messages WHERE id = $3 AND sender_id = $2 AND receiver_id = $1
     ON CONFLICT (user_id, peer_id) DO UPDATE
         SET up_to_message_id = GREATEST(read_receipts.up_to_message_id, EXCLUDED.up_to_message_id),
             updated_at = EXCLUDED.updated_at
     RETURNING up_to_message_id";

pub(super) const CURRENT_SEQ: &str = "SELECT last_seq FROM users WHERE id = $1";

pub(super) const READ_MARKS: &str = "SELECT user_id, up_to_message_id FROM read_receipts
     WHERE (user_id = $1 AND peer_id = $2) OR (user_id = $2 AND peer_id = $1)";

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
// loops over it), none scans a table sequentially.

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
