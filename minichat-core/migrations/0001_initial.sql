-- Migration 0001: the initial Minichat schema.
--
-- This file exists so that the PostgreSQL schema is versioned: `storage/postgres.rs` embeds it
-- with `include_str!` and applies it once per database, inside one transaction together with
-- its row in `minichat_migrations`. Never edit it after it has shipped; change the schema with
-- a new, higher-numbered migration instead.

-- Registered users. `last_seq` is the last update sequence number given to the user: sending
-- or receiving a message increments it by one in the transaction that stores the message, so
-- every user's stream is gapless and starts at 1. `last_seen` is for presence (not yet used).
CREATE TABLE users (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username     TEXT        NOT NULL,
    display_name TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    last_seq     BIGINT      NOT NULL DEFAULT 0,
    last_seen    TIMESTAMPTZ NULL,
    CONSTRAINT users_username_key UNIQUE (username)
);

-- Messages. Each one holds its place in both its sender's and its receiver's stream
-- (`sender_seq`, `receiver_seq`). `client_id` is the sender's optional idempotency key.
CREATE TABLE messages (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sender_id    BIGINT      NOT NULL REFERENCES users (id),
    receiver_id  BIGINT      NOT NULL REFERENCES users (id),
    content      TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    sender_seq   BIGINT      NOT NULL,
    receiver_seq BIGINT      NOT NULL,
    client_id    TEXT        NULL,
    -- Validation forbids messaging yourself; a self-message would also take two places in one
    -- stream, so the database refuses it too.
    CONSTRAINT messages_not_to_self CHECK (sender_id <> receiver_id),
    -- No seq is given twice in one stream. These two are also the indexes of
    -- `events_since`: `sender_id = $1 AND sender_seq > $2 ORDER BY sender_seq` (and the same
    -- for the receiver half) is a range scan of each.
    CONSTRAINT messages_sender_seq_key UNIQUE (sender_id, sender_seq),
    CONSTRAINT messages_receiver_seq_key UNIQUE (receiver_id, receiver_seq)
);

-- Idempotent sends: one message per (sender, client_id); also the index of that lookup.
CREATE UNIQUE INDEX messages_sender_client_id_key
    ON messages (sender_id, client_id) WHERE client_id IS NOT NULL;

-- History indexes. Every read of a conversation is split into halves of the form
-- "sender = A [AND receiver = B] AND id < cursor ORDER BY id DESC LIMIT n", each of which is a
-- backward range scan of exactly one index below that stops after n rows (B-trees scan either
-- way, so no DESC is needed):
--   * messages_sender_idx   (sender_id, id):              messages a user sent;
--   * messages_receiver_idx (receiver_id, id):            messages a user received, and
--                                                         recent_received;
--   * messages_pair_idx     (sender_id, receiver_id, id): both halves of a pair's history
--                                                         (u -> p, and p -> u).
-- A fourth index (receiver_id, sender_id, id) would be redundant with the pair index, and
-- (sender_id, receiver_id, id) cannot replace (sender_id, id): with only sender_id fixed its
-- rows are not in id order. The receiver index also serves the foreign key on receiver_id; the
-- sender indexes serve the one on sender_id.
CREATE INDEX messages_sender_idx ON messages (sender_id, id);
CREATE INDEX messages_receiver_idx ON messages (receiver_id, id);
CREATE INDEX messages_pair_idx ON messages (sender_id, receiver_id, id);

-- Read receipts, for the upcoming read-receipt feature: how far `user_id` has read the
-- conversation with `peer_id`.
CREATE TABLE read_receipts (
    user_id           BIGINT      NOT NULL REFERENCES users (id),
    peer_id           BIGINT      NOT NULL REFERENCES users (id),
    up_to_message_id  BIGINT      NOT NULL REFERENCES messages (id),
    updated_at        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, peer_id)
);
