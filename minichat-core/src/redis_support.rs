//! Redis plumbing shared by the Redis cache and the Redis broker.
//!
//! Both backends need the same few things, and getting them subtly different would hurt:
//!
//! - **One way to read `REDIS_URL`.** A malformed URL is a configuration mistake, reported as
//!   [`Error::Config`] naming the setting, never a panic. So is a Redis that cannot be reached
//!   when the node starts: better to refuse to start than to run half-connected.
//! - **One naming scheme.** Every key and channel lives under the configured prefix
//!   (`MINICHAT_REDIS_PREFIX`, `minichat:` by default), so deployments and test runs can share
//!   one Redis without seeing each other:
//!
//!   | name | kind | what |
//!   |---|---|---|
//!   | `{prefix}recent:{user_id}` | list | the user's newest received messages (the cache) |
//!   | `{prefix}user:{user_id}` | channel | events for the user (the broker) |
//!   | `{prefix}presence:...` | reserved | presence, later |
//!
//! - **One connection policy.** The commands that run per message, typing or read event (the
//!   cache's push and read, every `PUBLISH`) go over ONE shared [`MultiplexedConnection`] per
//!   pool ([`RedisPool::shared`]; the broker connected with the cache, as `Chat::connect` does,
//!   shares the cache's pool, so a send's push and `PUBLISH`es go out as one pipeline), cloned
//!   per call: commands issued concurrently are written
//!   to the socket together and Redis answers them together, so a busy node pays a round trip
//!   per batch of sends, not per command. (Redis takes well over a million pipelined commands a
//!   second; checking a connection out of a pool exclusively per command, as this crate first
//!   did, capped memory storage + Redis at a quarter of memory-only throughput.) The rest
//!   (presence scripts and queries, the heartbeat, one half of the health check) goes through a
//!   small [`bb8`] pool ([`POOL_SIZE`]), where a command has a connection to itself.
//! - **No unbounded queue.** The shared connection queues at most [`PIPELINE_BUFFER`] commands
//!   for its writer task (redis-rs's `pipeline_buffer_size`, a bounded channel: a caller waits
//!   for room, within its deadline) and lets at most [`MAX_IN_FLIGHT`] requests wait for their
//!   replies (redis-rs's `concurrency_limit`, a semaphore). The pool waits at most
//!   [`CONNECT_TIMEOUT`] (or the command deadline) for a checkout.
//! - **Fail fast while Redis is down.** A failed checkout, a command on the shared connection
//!   that fails for want of a connection (I/O, dropped, refused, timed out), or a command past
//!   its deadline marks Redis down: later commands fail with [`Error::Unavailable`] at once,
//!   instead of stalling the caller, until a background probe opens a fresh shared connection,
//!   PINGs it and checks a pooled connection out. That is also how the shared connection comes
//!   back after a Redis restart. (The pool PINGs a connection at each checkout and replaces a
//!   dead one.)
//! - **One deadline per command.** Every command of the cache and the broker (checkout
//!   included) goes through [`RedisPool::bounded`], which gives up after the configured backend
//!   budget ([`RedisConfig::timeout`], `MINICHAT_BACKEND_TIMEOUT_MS`) and marks Redis down, so
//!   a Redis that keeps its connections open but stops answering costs that budget once, not
//!   on every call. (The pooled connections' own response timeout, the redis crate's 500 ms
//!   default, usually fails a command first; the shared connection's is the budget itself.)

use crate::error::{Backend, Error, Result};
use crate::model::UserId;
use bb8_redis::RedisConnectionManager;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionInfo, IntoConnectionInfo, RedisError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Where Redis is, and the prefix of every key and channel.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    pub prefix: String,
    /// How long a node's presence report lasts without a heartbeat (heartbeats come three
    /// times as often).
    pub presence_ttl: std::time::Duration,
    /// The longest any one command (checkout included) may take before it fails as
    /// unavailable: the backend budget of [`ChatConfig`](crate::ChatConfig).
    pub timeout: Duration,
}

/// How long a connection attempt, a pool checkout or a start-up probe may take before Redis is
/// considered unreachable.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections per pool, for the commands off the hot path (presence, health).
const POOL_SIZE: u32 = 8;

/// Commands the shared connection queues for its writer task; a caller waits for room.
pub(crate) const PIPELINE_BUFFER: usize = 512;

/// Requests on the shared connection that may wait for their replies at once; more wait for a
/// reply to come first.
pub(crate) const MAX_IN_FLIGHT: usize = 4096;

/// The setting every Redis configuration error names.
const SETTING: &str = "REDIS_URL";

/// A connection checked out of a [`RedisPool`].
pub(crate) type Pooled<'a> = bb8::PooledConnection<'a, RedisConnectionManager>;

/// The Redis connections of one backend: the shared multiplexed connection of the hot path, a
/// pool for the rest, and whether Redis is known to be down, which both fail fast on.
///
/// bb8 cannot tell "Redis is down" from "the pool is busy": while Redis is down every checkout
/// waits out the whole [`CONNECT_TIMEOUT`], and a dead shared connection stays dead. So once a
/// checkout or a shared command has failed for want of Redis, it is marked down and later
/// commands fail at once, while a background probe keeps trying (capped backoff) and reopens
/// both as soon as Redis answers. An outage then costs the timeout once, not on every send.
#[derive(Clone)]
pub(crate) struct RedisPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    pool: bb8::Pool<RedisConnectionManager>,
    /// Opens the shared connection (again, after an outage).
    client: Client,
    /// The hot path's connection, cloned per command ([`RedisPool::shared`]).
    shared: RwLock<MultiplexedConnection>,
    /// The deadline of each command ([`RedisPool::bounded`]).
    timeout: Duration,
    /// A command failed for want of Redis, and the probe has not yet succeeded.
    down: AtomicBool,
    /// A probe task is running.
    probing: AtomicBool,
}

/// Pauses between the probe's attempts while Redis stays away.
const PROBE_MIN: Duration = Duration::from_millis(100);
const PROBE_MAX: Duration = Duration::from_secs(1);

/// Whether `e` means the connection, not the command, failed: Redis is away, or not answering.
fn is_link_failure(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

impl RedisPool {
    fn new(
        pool: bb8::Pool<RedisConnectionManager>,
        client: Client,
        shared: MultiplexedConnection,
        timeout: Duration,
    ) -> RedisPool {
        RedisPool {
            inner: Arc::new(PoolInner {
                pool,
                client,
                shared: RwLock::new(shared),
                timeout,
                down: AtomicBool::new(false),
                probing: AtomicBool::new(false),
            }),
        }
    }

    fn unreachable(backend: Backend) -> Error {
        Error::unavailable(
            backend,
            "Redis is unreachable (reconnecting in the background)",
        )
    }

    /// The shared connection of the hot path (a clone: commands on clones share one socket and
    /// are pipelined together); fails at once while Redis is known to be away. Run its commands
    /// within [`RedisPool::bounded`] and map their errors with [`RedisPool::failed`].
    pub(crate) fn shared(&self, backend: Backend) -> Result<MultiplexedConnection> {
        if self.inner.down.load(Ordering::Acquire) {
            return Err(Self::unreachable(backend));
        }
        Ok(self
            .inner
            .shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }

    /// `e`, a failed command on the shared connection, as [`Error::Unavailable`]; marks Redis
    /// down when the connection itself failed, so the probe replaces it.
    pub(crate) fn failed(&self, backend: Backend, e: RedisError) -> Error {
        if is_link_failure(&e) {
            self.mark_down();
        }
        Error::unavailable(backend, e)
    }

    /// Runs `command` (a checkout and what it sends) within the command deadline: no answer by
    /// then is [`Error::Unavailable`] for `backend`, and marks the pool down like a failed
    /// checkout (the background probe reopens it once Redis answers).
    pub(crate) async fn bounded<T>(
        &self,
        backend: Backend,
        command: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.inner.timeout, command).await {
            Ok(answer) => answer,
            Err(_) => {
                self.mark_down();
                Err(Error::unavailable(
                    backend,
                    format!(
                        "Redis did not answer within {} ms",
                        self.inner.timeout.as_millis()
                    ),
                ))
            }
        }
    }

    /// Checks a connection out: fails within [`CONNECT_TIMEOUT`] (or the command deadline, if
    /// shorter) when Redis goes away, and at once while it is known to be away.
    pub(crate) async fn get(&self, backend: Backend) -> Result<Pooled<'_>> {
        if self.inner.down.load(Ordering::Acquire) {
            return Err(Self::unreachable(backend));
        }
        self.inner.pool.get().await.map_err(|e| {
            self.mark_down();
            match e {
                bb8::RunError::User(e) => Error::unavailable(backend, e),
                bb8::RunError::TimedOut => Error::unavailable(
                    backend,
                    format!(
                        "no Redis connection within {} ms",
                        checkout_timeout(self.inner.timeout).as_millis()
                    ),
                ),
            }
        })
    }

    fn mark_down(&self) {
        self.inner.down.store(true, Ordering::Release);
        if self.inner.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        // The probe holds the pool weakly, so it ends with the backend that owns the pool.
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut pause = PROBE_MIN;
            loop {
                let Some(inner) = weak.upgrade() else { return };
                if inner.reopen().await.is_ok() {
                    // In this order: a failure in between then starts a new probe.
                    inner.probing.store(false, Ordering::Release);
                    inner.down.store(false, Ordering::Release);
                    metrics::counter!(crate::telemetry::REDIS_RECONNECTS, "link" => "pool")
                        .increment(1);
                    return;
                }
                drop(inner);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(PROBE_MAX);
            }
        });
    }

    /// PINGs Redis within the command deadline, on the shared connection and on a pooled one:
    /// the health check of both backends.
    pub(crate) async fn ping(&self, backend: Backend) -> Result<()> {
        self.bounded(backend, async {
            let mut shared = self.shared(backend)?;
            redis::cmd("PING")
                .query_async::<String>(&mut shared)
                .await
                .map_err(|e| self.failed(backend, e))?;
            let mut conn = self.get(backend).await?;
            redis::cmd("PING")
                .query_async::<String>(&mut *conn)
                .await
                .map(drop)
                .map_err(|e| Error::unavailable(backend, e))
        })
        .await
    }
}

impl PoolInner {
    /// The probe's attempt: a fresh shared connection that answers a PING, and a pooled one.
    /// The shared connection is replaced only once both work.
    async fn reopen(&self) -> std::result::Result<(), ()> {
        let fresh = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let mut conn = shared_connection(&self.client, self.timeout).await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok::<_, RedisError>(conn)
        })
        .await
        .map_err(drop)?
        .map_err(drop)?;
        self.pool.get().await.map_err(drop)?;
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }
}

/// Opens a shared multiplexed connection: bounded connect, replies bounded by the command
/// deadline, and the bounds on its queues ([`PIPELINE_BUFFER`], [`MAX_IN_FLIGHT`]).
async fn shared_connection(
    client: &Client,
    timeout: Duration,
) -> redis::RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(timeout))
        .set_pipeline_buffer_size(PIPELINE_BUFFER)
        .set_concurrency_limit(MAX_IN_FLIGHT);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// How long a checkout may wait: [`CONNECT_TIMEOUT`], or the command deadline if shorter.
fn checkout_timeout(command_timeout: Duration) -> Duration {
    CONNECT_TIMEOUT.min(command_timeout)
}

/// Parses and checks `REDIS_URL` without connecting.
pub(crate) fn connection_info(url: &str) -> Result<ConnectionInfo> {
    let url = url.trim();
    if url.is_empty() {
        return Err(Error::config(
            SETTING,
            "is empty; expected redis://host:port[/db]",
        ));
    }
    url.into_connection_info().map_err(|e| {
        Error::config(
            SETTING,
            format!("not a valid Redis URL ({e}); expected redis://host:port[/db]"),
        )
    })
}

/// Connects once and PINGs, so that an unreachable Redis stops the start with a clear line.
async fn probe(info: &ConnectionInfo) -> Result<()> {
    let unreachable =
        |e: &dyn std::fmt::Display| Error::config(SETTING, format!("cannot connect to Redis: {e}"));
    let client = Client::open(info.clone()).map_err(|e| unreachable(&e))?;
    let attempt = async {
        let mut conn = single_connection(&client).await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unreachable(&e)),
        Err(_) => Err(unreachable(&format_args!(
            "no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// One multiplexed connection whose connect and replies are bounded by [`CONNECT_TIMEOUT`].
async fn single_connection(client: &Client) -> redis::RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(CONNECT_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Validates `config.url`, checks that Redis answers, and opens the shared connection and the
/// pool.
pub(crate) async fn connect_pool(config: &RedisConfig) -> Result<(RedisPool, ConnectionInfo)> {
    let info = connection_info(&config.url)?;
    probe(&info).await?;
    let unreachable =
        |e: &dyn std::fmt::Display| Error::config(SETTING, format!("cannot connect to Redis: {e}"));
    let client = Client::open(info.clone()).map_err(|e| unreachable(&e))?;
    let shared = tokio::time::timeout(CONNECT_TIMEOUT, shared_connection(&client, config.timeout))
        .await
        .map_err(|_| unreachable(&"the shared connection timed out"))?
        .map_err(|e| unreachable(&e))?;
    let manager = RedisConnectionManager::new(info.clone())
        .map_err(|e| Error::config(SETTING, format!("not a valid Redis URL ({e})")))?;
    let pool = bb8::Pool::builder()
        .max_size(POOL_SIZE)
        .connection_timeout(checkout_timeout(config.timeout))
        .build(manager)
        .await
        .map_err(|e| unreachable(&e))?;
    Ok((RedisPool::new(pool, client, shared, config.timeout), info))
}

/// The names of every key and channel, all under one prefix (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: Arc<str>,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.into(),
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The list of messages `user` received, newest first: `{prefix}recent:{user}`.
    pub(crate) fn recent(&self, user: UserId) -> String {
        format!("{}recent:{user}", self.prefix)
    }

    /// Matches every recent-messages list under the prefix (for `SCAN`); glob characters in the
    /// prefix are escaped.
    pub(crate) fn recent_pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.prefix.len() + 8);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push_str("recent:*");
        pattern
    }

    /// The channel of `user`'s events: `{prefix}user:{user}`.
    pub(crate) fn user_channel(&self, user: UserId) -> String {
        format!("{}user:{user}", self.prefix)
    }

    /// The nodes where `user` is connected, scored by when that expires:
    /// `{prefix}online:{user}`.
    pub(crate) fn online(&self, user: UserId) -> String {
        format!("{}online:{user}", self.prefix)
    }

    /// When `user` was last seen online, in Unix milliseconds: `{prefix}seen:{user}`.
    pub(crate) fn seen(&self, user: UserId) -> String {
        format!("{}seen:{user}", self.prefix)
    }

    /// The channel of `user`'s presence changes: `{prefix}presence:{user}`.
    pub(crate) fn presence_channel(&self, user: UserId) -> String {
        format!("{}presence:{user}", self.prefix)
    }

    /// The pattern every node subscribes to for presence changes.
    pub(crate) fn presence_pattern(&self) -> String {
        format!("{}presence:*", self.prefix)
    }

    /// The user whose presence channel `channel` is, if it is one of ours.
    pub(crate) fn user_of_presence_channel(&self, channel: &[u8]) -> Option<UserId> {
        let rest = channel.strip_prefix(self.prefix.as_bytes())?;
        let id = rest.strip_prefix(b"presence:")?;
        std::str::from_utf8(id).ok()?.parse().ok()
    }

    /// The user whose channel `channel` is, if it is one of ours.
    pub(crate) fn user_of_channel(&self, channel: &[u8]) -> Option<UserId> {
        let rest = channel.strip_prefix(self.prefix.as_bytes())?;
        let id = rest.strip_prefix(b"user:")?;
        std::str::from_utf8(id).ok()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_live_under_the_prefix() {
        let keys = Keys::new("mc:");
        assert_eq!(keys.recent(7), "mc:recent:7");
        assert_eq!(keys.user_channel(7), "mc:user:7");
        assert_eq!(keys.user_of_channel(b"mc:user:7"), Some(7));
        assert_eq!(keys.user_of_channel(b"other:user:7"), None);
        assert_eq!(keys.user_of_channel(b"mc:recent:7"), None);
        assert_eq!(keys.user_of_channel(b"mc:user:x"), None);
        assert_eq!(keys.online(7), "mc:online:7");
        assert_eq!(keys.presence_pattern(), "mc:presence:*");
        assert_eq!(keys.user_of_presence_channel(b"mc:presence:7"), Some(7));
        assert_eq!(keys.user_of_presence_channel(b"mc:user:7"), None);
    }

    #[test]
    fn malformed_urls_are_config_errors_naming_the_setting() {
        for url in [
            "",
            "   ",
            "http://localhost:6379",
            "redis://host:notaport",
            "garbage",
        ] {
            match connection_info(url) {
                Err(Error::Config { setting, .. }) => assert_eq!(setting, "REDIS_URL", "{url}"),
                other => panic!("{url:?}: expected a config error, got {other:?}"),
            }
        }
        assert!(connection_info("redis://127.0.0.1:6379/0").is_ok());
    }
}
