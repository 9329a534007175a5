-- Lighter inserts into messages. Sends are committed in batches that keep their users' rows
-- locked until COMMIT (storage/postgres/writer.rs), so whatever the INSERT costs per row is
-- paid while the next batch waits for those locks: on a 2-core box the insert was most of a
-- batch's time, and so the ceiling of durable sends. Two of its costs served no reader:
--
-- * The foreign keys from messages to users. Each ran a query per row (a trigger) to check a
--   user the batch had just locked and read itself: the writer locks every sender's and
--   receiver's row (FOR NO KEY UPDATE) in the same transaction and answers a send whose user
--   is missing before inserting anything. No operation deletes a user; whoever deletes one by
--   hand must delete their messages (and stream entries) first. Every other reference to users
--   keeps its foreign key.
-- * messages_pair_idx (sender_id, receiver_id, id). The history between two users now reads
--   their direct conversation by messages_conversation_idx, as every conversation's history
--   does; no other statement used it.
ALTER TABLE messages
    DROP CONSTRAINT messages_sender_id_fkey,
    DROP CONSTRAINT messages_receiver_id_fkey;
DROP INDEX messages_pair_idx;
