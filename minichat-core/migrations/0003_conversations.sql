-- Migration 0003: conversations (direct and group), their members, and the per-user stream of
-- group messages and membership events.
--
-- This file exists so that every message belongs to a conversation, groups can exist, and a
-- database made by migrations 0001-0002 is upgraded in place: every existing pair of users who
-- exchanged messages gets its direct conversation, every message its conversation_id, every read
-- receipt becomes its reader's read mark in that conversation. Ids and seqs are unchanged. Never
-- edit it after it has shipped.
--
-- Where a user's stream (seq) lives:
--   * a message's sender:            messages.sender_seq (as before);
--   * a direct message's receiver:   messages.receiver_seq (as before);
--   * a group message's other members, and every membership event: one stream_entries row per
--     recipient.
-- So a one-to-one send writes exactly what it wrote before, plus nothing per message: the pair's
-- conversation is made once.

CREATE TABLE conversations (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        TEXT        NOT NULL,
    title       TEXT        NULL,
    created_by  BIGINT      NOT NULL REFERENCES users (id),
    created_at  TIMESTAMPTZ NOT NULL,
    -- A direct conversation's pair, lower id first; NULL for a group. The unique constraint is
    -- what makes exactly one direct conversation per pair, whichever node makes it first.
    direct_low  BIGINT      NULL REFERENCES users (id),
    direct_high BIGINT      NULL REFERENCES users (id),
    CONSTRAINT conversations_kind CHECK (kind IN ('direct', 'group')),
    CONSTRAINT conversations_shape CHECK (
        (kind = 'direct' AND direct_low IS NOT NULL AND direct_high IS NOT NULL
            AND direct_low < direct_high AND title IS NULL)
        OR (kind = 'group' AND direct_low IS NULL AND direct_high IS NULL AND title IS NOT NULL)),
    CONSTRAINT conversations_direct_pair_key UNIQUE (direct_low, direct_high)
);

-- Members. `read_up_to` is the member's read mark: the newest message of the conversation
-- they have read (never moves back).
CREATE TABLE conversation_members (
    conversation_id BIGINT      NOT NULL REFERENCES conversations (id),
    user_id         BIGINT      NOT NULL REFERENCES users (id),
    role            TEXT        NOT NULL,
    joined_at       TIMESTAMPTZ NOT NULL,
    read_up_to      BIGINT      NULL,
    PRIMARY KEY (conversation_id, user_id),
    CONSTRAINT conversation_members_role CHECK (role IN ('owner', 'admin', 'member'))
);
-- A user's inbox.
CREATE INDEX conversation_members_user_idx ON conversation_members (user_id, conversation_id);

-- Membership events, once each; `conversation` is the conversation after the change, as the
-- event shows it (JSON of the core's `Conversation`).
CREATE TABLE conversation_events (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id BIGINT      NOT NULL REFERENCES conversations (id),
    event           TEXT        NOT NULL,
    by_user         BIGINT      NOT NULL REFERENCES users (id),
    user_ids        BIGINT[]    NOT NULL,
    conversation    JSONB       NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    CONSTRAINT conversation_events_event
        CHECK (event IN ('created', 'renamed', 'member_added', 'member_removed'))
);

-- The stream entries that messages' own columns do not hold: a group message for each member
-- but its sender, and a membership event for each recipient. No foreign keys: rows are written
-- only by the transaction that writes what they point at, and a per-row key check would be a
-- lookup per recipient on the hot path of group sends.
CREATE TABLE stream_entries (
    user_id    BIGINT NOT NULL,
    seq        BIGINT NOT NULL,
    message_id BIGINT NULL,
    event_id   BIGINT NULL,
    PRIMARY KEY (user_id, seq),
    CONSTRAINT stream_entries_one_target CHECK ((message_id IS NULL) <> (event_id IS NULL))
);

-- Messages gain their conversation; a group message has no receiver (and no receiver seq).
-- No foreign key on conversation_id: the batch writer writes it only from a conversation row it
-- locked or made in the same transaction, and conversations are never deleted; the key's check
-- (a lookup per inserted message) cost ~12% of one-to-one durable throughput here (an A/B of
-- `minichat-load chat --max`, BENCHMARKS.md).
ALTER TABLE messages ADD COLUMN conversation_id BIGINT NULL;
ALTER TABLE messages ALTER COLUMN receiver_id DROP NOT NULL;
ALTER TABLE messages ALTER COLUMN receiver_seq DROP NOT NULL;
ALTER TABLE messages ADD CONSTRAINT messages_receiver_seq_with_receiver
    CHECK ((receiver_id IS NULL) = (receiver_seq IS NULL));

-- Existing data: one direct conversation per pair that exchanged messages, made by the sender
-- of its first message at that message's time, in the order of those first messages.
INSERT INTO conversations (kind, title, created_by, created_at, direct_low, direct_high)
SELECT 'direct', NULL, first.sender_id, first.created_at, first.lo, first.hi
FROM (
    SELECT DISTINCT ON (LEAST(sender_id, receiver_id), GREATEST(sender_id, receiver_id))
           LEAST(sender_id, receiver_id) AS lo, GREATEST(sender_id, receiver_id) AS hi,
           sender_id, created_at, id
    FROM messages
    ORDER BY LEAST(sender_id, receiver_id), GREATEST(sender_id, receiver_id), id
) AS first
ORDER BY first.id;

UPDATE messages m SET conversation_id = c.id
FROM conversations c
WHERE c.direct_low = LEAST(m.sender_id, m.receiver_id)
  AND c.direct_high = GREATEST(m.sender_id, m.receiver_id);

INSERT INTO conversation_members (conversation_id, user_id, role, joined_at)
SELECT id, direct_low, 'member', created_at FROM conversations
UNION ALL
SELECT id, direct_high, 'member', created_at FROM conversations;

UPDATE conversation_members cm SET read_up_to = r.up_to_message_id
FROM read_receipts r, conversations c
WHERE c.id = cm.conversation_id
  AND cm.user_id = r.user_id
  AND c.direct_low = LEAST(r.user_id, r.peer_id)
  AND c.direct_high = GREATEST(r.user_id, r.peer_id);

-- Read marks live with the members from now on.
DROP TABLE read_receipts;

ALTER TABLE messages ALTER COLUMN conversation_id SET NOT NULL;
-- A conversation's history, its last message and its unread count: ranges of this index.
CREATE INDEX messages_conversation_idx ON messages (conversation_id, id);

-- Part 1's history (`GET /messages/?user_id=`) is of direct messages only. Its "what the user
-- sent" half reads this partial index, so that a user's group messages are never scanned only
-- to be filtered out (a busy group member with few direct messages would otherwise read all of
-- them for every page). It replaces 0001's messages_sender_idx (sender_id, id), which only that
-- half used; the foreign key on sender_id keeps messages_pair_idx and messages_sender_seq_key.
DROP INDEX messages_sender_idx;
CREATE INDEX messages_direct_sender_idx ON messages (sender_id, id) WHERE receiver_id IS NOT NULL;
