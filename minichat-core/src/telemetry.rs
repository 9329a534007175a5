//! The metrics the core records, by name, with what each one means.
//!
//! The core records through the [`metrics`] facade, which is not HTTP and costs next to nothing
//! while no recorder is installed: an application embedding the core sees these metrics in
//! whatever recorder it installs, and `minichat-server` installs a Prometheus one and serves it
//! at `GET /metrics`. The names follow Prometheus conventions (`minichat_` prefix, base units,
//! `_total` on counters) and every label has a small, fixed set of values.
//!
//! A recorder is process-global, so these count for the whole process, whatever the number of
//! [`Chat`](crate::Chat)s in it.

use crate::error::Backend;
use metrics::{describe_counter, describe_histogram, Unit};

/// Counter: messages newly stored (a retried `client_id` is not counted again).
pub const MESSAGES_STORED: &str = "minichat_messages_stored_total";
/// Counter, label `kind` (`message`, `typing`, `read`, `presence`): events handed to the broker,
/// one per target user's stream (a message is two: its receiver's and its sender's other devices').
pub const EVENTS_PUBLISHED: &str = "minichat_events_published_total";
/// Histogram, label `result` (`ok`, `error`): a send in the service, from validation through
/// storage to the broker's publish returning.
pub const SEND_DURATION: &str = "minichat_send_duration_seconds";
/// Counter, label `backend` (`storage`, `cache`, `broker`): backend operations that failed (each
/// [`Error::Unavailable`](crate::Error::Unavailable) made, including background retries).
pub const BACKEND_ERRORS: &str = "minichat_backend_errors_total";
/// Histogram: sends committed per transaction by PostgreSQL storage's batch writer.
pub const STORAGE_BATCH_SIZE: &str = "minichat_storage_batch_size";
/// Bucket bounds for [`STORAGE_BATCH_SIZE`]: powers of two up to the writer's batch bound (a
/// recorder's default buckets are durations in seconds, which would put every batch above 10 in
/// the last bucket).
pub const STORAGE_BATCH_SIZE_BUCKETS: &[f64] =
    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Histogram: how long PostgreSQL storage's batch writer took per batch, from taking it off
/// the queue to its commit (retries included): the time the batch's rows were locked, and what
/// a send waits for once its batch started.
pub const STORAGE_BATCH_SECONDS: &str = "minichat_storage_batch_seconds";
/// Counter: group fan-outs the Redis broker sent to every node as one members envelope on the
/// fan-out channel (one per group message or membership change that had more members than
/// there were nodes), instead of a `PUBLISH` per member.
pub const GROUP_FANOUTS: &str = "minichat_redis_group_fanouts_total";
/// Histogram: how far behind this node's Redis subscriber connection was, as the round trip of
/// a probe published behind this node's events (the broker's flow control).
pub const REDIS_SUBSCRIBER_LAG: &str = "minichat_redis_subscriber_lag_seconds";
/// Counter: publishes that waited for this node's Redis subscriber to catch up (its backlog
/// was above the broker's limit).
pub const REDIS_FANOUT_PAUSES: &str = "minichat_redis_fanout_pauses_total";
/// Counter, label `link` (`subscriber`, `pool`): Redis connections restored after an outage.
pub const REDIS_RECONNECTS: &str = "minichat_redis_reconnects_total";

/// Describes the core's metrics to the installed recorder and registers the unlabelled ones
/// (and each backend's error count) at zero, so that they are exported before anything happens.
/// Call it once, after installing a recorder.
pub fn describe() {
    describe_counter!(MESSAGES_STORED, "Messages newly stored");
    describe_counter!(
        EVENTS_PUBLISHED,
        "Events handed to the broker, one per target user's stream"
    );
    describe_histogram!(
        SEND_DURATION,
        Unit::Seconds,
        "Time to send a message in the service: validate, store, publish"
    );
    describe_counter!(BACKEND_ERRORS, "Backend operations that failed");
    describe_histogram!(
        STORAGE_BATCH_SIZE,
        Unit::Count,
        "Sends committed per PostgreSQL transaction by the batch writer"
    );
    describe_histogram!(
        STORAGE_BATCH_SECONDS,
        Unit::Seconds,
        "Time per batch of the PostgreSQL batch writer, from the queue to its commit"
    );
    describe_counter!(
        REDIS_RECONNECTS,
        "Redis connections restored after an outage"
    );
    describe_counter!(
        GROUP_FANOUTS,
        "Group fan-outs sent to every node as one Redis PUBLISH"
    );
    describe_histogram!(
        REDIS_SUBSCRIBER_LAG,
        Unit::Seconds,
        "How far behind this node's Redis subscriber connection was (a probe's round trip)"
    );
    describe_counter!(
        REDIS_FANOUT_PAUSES,
        "Publishes that waited for this node's Redis subscriber to catch up"
    );
    metrics::counter!(MESSAGES_STORED).increment(0);
    metrics::counter!(REDIS_FANOUT_PAUSES).increment(0);
    metrics::counter!(GROUP_FANOUTS).increment(0);
    for backend in [Backend::Storage, Backend::Cache, Backend::Broker] {
        metrics::counter!(BACKEND_ERRORS, "backend" => backend.name()).increment(0);
    }
}

/// Counts `n` events of `kind` handed to the broker.
pub(crate) fn published(kind: &'static str, n: usize) {
    metrics::counter!(EVENTS_PUBLISHED, "kind" => kind).increment(n as u64);
}
