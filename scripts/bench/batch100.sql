-- 100 messages in one transaction: the ceiling a group commit could reach.
BEGIN;
INSERT INTO bench_messages (sender_id, receiver_id, content)
    SELECT 1 + g % 200, 1 + (g + 1) % 200, 'pgbench batch' FROM generate_series(1, 100) g;
COMMIT;
