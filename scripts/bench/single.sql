-- One message per transaction, the shape of today's send: lock both users, bump the sender's
-- seq, insert, commit (with its fsync).
\set a random(1, 200)
\set b random(1, 200)
BEGIN;
SELECT id FROM bench_users WHERE id IN (:a, :b) ORDER BY id FOR UPDATE;
UPDATE bench_users SET seq = seq + 1 WHERE id = :a;
INSERT INTO bench_messages (sender_id, receiver_id, content) VALUES (:a, :b, 'pgbench single');
COMMIT;
