-- Tables of the pgbench limits (scripts/bench/run), in the run's own scratch database.
CREATE TABLE bench_users (id BIGINT PRIMARY KEY, seq BIGINT NOT NULL DEFAULT 0);
INSERT INTO bench_users (id) SELECT generate_series(1, 200);
CREATE TABLE bench_messages (
    id BIGSERIAL PRIMARY KEY, sender_id BIGINT NOT NULL, receiver_id BIGINT NOT NULL,
    content TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now());
