//! Redis plumbing shared by the Redis cache and the Redis broker.
//!
//! Both backends need the same few things, and getting them subtly different would hurt:
//!
//! - **One way to read `REDIS_URL`.** A malformed URL is a configuration mistake, reported as
//!   [`Error::Config`] naming the setting, never a panic. So is a Redis that cannot be reached
//!   when the node starts: better to refuse to start than to run half-connected.
//! - **One Redis or a Redis Cluster.** `REDIS_URL` names one server, or a cluster's seed nodes
//!   separated by commas; [`connection`] decides which, and hides the difference behind one
//!   connection type.
//! - **One naming scheme**, in [`keys`]: every key and channel lives under the configured
//!   prefix (`MINICHAT_REDIS_PREFIX`, `minichat:` by default), and each of a user's names carries
//!   the user's id as a hash tag, so that on a cluster everything of one user is in one slot.
//! - **One connection policy.** The commands that run per message, typing or read event (the
//!   cache's push and read, every `PUBLISH`) go over ONE shared multiplexed [`Connection`] per
//!   pool ([`RedisPool::shared`]; the broker connected with the cache, as `Chat::connect` does,
//!   shares the cache's pool, so a send's push and `PUBLISH`es go out as one pipeline), cloned
//!   per call: commands issued concurrently are written
//!   to the socket together and Redis answers them together, so a busy node pays a round trip
//!   per batch of sends, not per command. (Redis takes well over a million pipelined commands a
//!   second; checking a connection out of a pool exclusively per command, as this crate first
//!   did, capped memory storage + Redis at a quarter of memory-only throughput.) The rest
//!   (presence scripts and queries, the heartbeat, one half of the health check) goes through a
//!   small [`bb8`] pool ([`POOL_SIZE`]), where a command has a connection to itself. (On a
//!   cluster there is no such pool: redis-rs's cluster connection already keeps a multiplexed
//!   connection per node, and the rest uses it too.)
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

mod connection;
mod keys;

pub(crate) use connection::{Connection, Target};
pub(crate) use keys::Keys;

use crate::error::{Backend, Error, Result};
use bb8_redis::RedisConnectionManager;
use redis::aio::ConnectionLike;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{AsyncConnectionConfig, Client, ConnectionInfo, RedisError, RedisFuture, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Where Redis is, and the prefix of every key and channel.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// One Redis (`redis://host:6379`), or the seed nodes of a Redis Cluster separated by
    /// commas (`redis://h1:7001,redis://h2:7002`).
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

/// Requests on the shared connection that may wait for their replies at once (on a cluster,
/// per node); more wait for a reply to come first.
pub(crate) const MAX_IN_FLIGHT: usize = 4096;

/// The setting every Redis configuration error names.
const SETTING: &str = "REDIS_URL";

/// A connection checked out of a [`RedisPool`].
pub(crate) type Pooled<'a> = bb8::PooledConnection<'a, RedisConnectionManager>;

/// A connection for a command of its own ([`RedisPool::get`]): checked out of the pool on one
/// Redis; on a cluster, a clone of the shared cluster connection.
pub(crate) enum Checkout<'a> {
    Pooled(Pooled<'a>),
    Shared(Connection),
}

impl ConnectionLike for Checkout<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Checkout::Pooled(conn) => conn.req_packed_command(cmd),
            Checkout::Shared(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Checkout::Pooled(conn) => conn.req_packed_commands(pipeline, offset, count),
            Checkout::Shared(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Checkout::Pooled(conn) => conn.get_db(),
            Checkout::Shared(conn) => conn.get_db(),
        }
    }
}

/// Commands for many users at once: on one Redis a single pipeline (one round trip); on a
/// cluster a pipeline per user (a pipeline must keep to one slot, and all of a user's keys
/// share one), sent together.
pub(crate) struct UserPipelines {
    cluster: bool,
    pipes: Vec<redis::Pipeline>,
}

impl UserPipelines {
    pub(crate) fn new(pool: &RedisPool) -> UserPipelines {
        UserPipelines {
            cluster: pool.is_cluster(),
            pipes: Vec::new(),
        }
    }

    /// The pipeline for the next user's commands.
    pub(crate) fn user(&mut self) -> &mut redis::Pipeline {
        if self.cluster || self.pipes.is_empty() {
            self.pipes.push(redis::pipe());
        }
        let last = self.pipes.len() - 1;
        &mut self.pipes[last]
    }

    /// Sends every pipeline (on a cluster, all at once, over the shared connection); the
    /// replies of the commands not ignored, in the order they were added.
    pub(crate) async fn query<T: redis::FromRedisValue + Send>(
        self,
        conn: &mut Checkout<'_>,
    ) -> redis::RedisResult<Vec<T>> {
        match conn {
            Checkout::Shared(shared) if self.cluster => {
                let each = self.pipes.iter().map(|pipe| {
                    let mut conn = shared.clone();
                    async move { pipe.query_async::<Vec<T>>(&mut conn).await }
                });
                let replies = futures_util::future::try_join_all(each).await?;
                Ok(replies.into_iter().flatten().collect())
            }
            conn => {
                // One pipeline, on one Redis.
                let mut all = Vec::new();
                for pipe in &self.pipes {
                    let replies: Vec<T> = pipe.query_async(&mut *conn).await?;
                    if all.is_empty() {
                        all = replies;
                    } else {
                        all.extend(replies);
                    }
                }
                Ok(all)
            }
        }
    }
}

/// The Redis connections of one backend: the shared multiplexed connection of the hot path, a
/// pool for the rest (one Redis only), and whether Redis is known to be down, which both fail
/// fast on.
///
/// bb8 cannot tell "Redis is down" from "the pool is busy": while Redis is down every checkout
/// waits out the whole [`CONNECT_TIMEOUT`], and a dead shared connection stays dead. So once a
/// checkout or a shared command has failed for want of Redis, it is marked down and later
/// commands fail at once, while a background probe keeps trying (capped backoff) and reopens
/// both as soon as Redis answers. An outage then costs the timeout once, not on every send.
/// (On a cluster, the probe PINGs every master, so "up" means every shard answers.)
#[derive(Clone)]
pub(crate) struct RedisPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    /// Where Redis is, as start-up found it.
    target: Target,
    /// Opens the shared connection (again, after an outage).
    opener: Opener,
    /// The pool of the commands off the hot path; `None` on a cluster.
    pool: Option<bb8::Pool<RedisConnectionManager>>,
    /// The hot path's connection, cloned per command ([`RedisPool::shared`]).
    shared: RwLock<Connection>,
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
        || e.is_cluster_error()
}

impl RedisPool {
    fn unreachable(backend: Backend) -> Error {
        Error::unavailable(
            backend,
            "Redis is unreachable (reconnecting in the background)",
        )
    }

    /// Where Redis is, as start-up found it.
    pub(crate) fn target(&self) -> &Target {
        &self.inner.target
    }

    /// The budget of one command (the backend timeout).
    pub(crate) fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Whether Redis is a cluster (then a pipeline must keep to one slot, and fan-out is
    /// sharded).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.inner.target, Target::Cluster(_))
    }

    /// The shared connection of the hot path (a clone: commands on clones share one socket and
    /// are pipelined together); fails at once while Redis is known to be away. Run its commands
    /// within [`RedisPool::bounded`] and map their errors with [`RedisPool::failed`].
    pub(crate) fn shared(&self, backend: Backend) -> Result<Connection> {
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

    /// A connection for a command of its own: checked out of the pool (failing within
    /// [`CONNECT_TIMEOUT`], or the command deadline if shorter, when Redis goes away), or on a
    /// cluster the shared one; fails at once while Redis is known to be away.
    pub(crate) async fn get(&self, backend: Backend) -> Result<Checkout<'_>> {
        let Some(pool) = &self.inner.pool else {
            return self.shared(backend).map(Checkout::Shared);
        };
        if self.inner.down.load(Ordering::Acquire) {
            return Err(Self::unreachable(backend));
        }
        pool.get().await.map(Checkout::Pooled).map_err(|e| {
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
    /// the health check of both backends. (On a cluster, every master is PINGed.)
    pub(crate) async fn ping(&self, backend: Backend) -> Result<()> {
        self.bounded(backend, async {
            let mut shared = self.shared(backend)?;
            shared
                .ping_every_shard()
                .await
                .map_err(|e| self.failed(backend, e))?;
            if self.inner.pool.is_some() {
                let mut conn = self.get(backend).await?;
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map_err(|e| Error::unavailable(backend, e))?;
            }
            Ok(())
        })
        .await
    }
}

impl PoolInner {
    /// The probe's attempt: a fresh shared connection that answers a PING, and a pooled one.
    /// The shared connection is replaced only once both work.
    async fn reopen(&self) -> std::result::Result<(), ()> {
        let fresh = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let mut conn = self.opener.open(self.timeout).await?;
            conn.ping_every_shard().await?;
            Ok::<_, RedisError>(conn)
        })
        .await
        .map_err(drop)?
        .map_err(drop)?;
        if let Some(pool) = &self.pool {
            pool.get().await.map_err(drop)?;
        }
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }
}

/// What opens a shared connection: a client of one Redis or of a cluster.
enum Opener {
    Single(Client),
    Cluster(Box<ClusterClient>),
}

impl Opener {
    fn new(target: &Target, timeout: Duration) -> redis::RedisResult<Opener> {
        Ok(match target {
            Target::Single(info) => Opener::Single(Client::open(info.clone())?),
            Target::Cluster(seeds) => Opener::Cluster(Box::new(
                cluster_builder(seeds, timeout)
                    .connection_concurrency_limit(MAX_IN_FLIGHT)
                    .build()?,
            )),
        })
    }

    /// Opens a shared connection: bounded connect, replies bounded by the command deadline, and
    /// the bounds on its queues ([`PIPELINE_BUFFER`], [`MAX_IN_FLIGHT`]).
    async fn open(&self, timeout: Duration) -> redis::RedisResult<Connection> {
        match self {
            Opener::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(timeout))
                    .set_pipeline_buffer_size(PIPELINE_BUFFER)
                    .set_concurrency_limit(MAX_IN_FLIGHT);
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Connection::Single)
            }
            Opener::Cluster(client) => client.get_async_connection().await.map(Connection::Cluster),
        }
    }
}

/// A cluster client of `seeds` whose connects take at most [`CONNECT_TIMEOUT`] and whose
/// replies (retries and redirections included) take at most `timeout`.
pub(crate) fn cluster_builder(seeds: &[ConnectionInfo], timeout: Duration) -> ClusterClientBuilder {
    ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(timeout)
}

/// How long a checkout may wait: [`CONNECT_TIMEOUT`], or the command deadline if shorter.
fn checkout_timeout(command_timeout: Duration) -> Duration {
    CONNECT_TIMEOUT.min(command_timeout)
}

/// Connects once and PINGs, so that an unreachable Redis stops the start with a clear line; a
/// single server that is a cluster node makes the target that cluster.
async fn probe(target: Target) -> Result<Target> {
    let unreachable =
        |e: &dyn std::fmt::Display| Error::config(SETTING, format!("cannot connect to Redis: {e}"));
    let attempt = async {
        match target {
            Target::Single(info) => {
                let client = Client::open(info.clone())?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(CONNECT_TIMEOUT));
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                let cluster: String = redis::cmd("INFO")
                    .arg("cluster")
                    .query_async(&mut conn)
                    .await?;
                Ok(if cluster.contains("cluster_enabled:1") {
                    Target::Cluster(vec![info])
                } else {
                    Target::Single(info)
                })
            }
            Target::Cluster(seeds) => {
                let client = cluster_builder(&seeds, CONNECT_TIMEOUT).build()?;
                let mut conn = client.get_async_connection().await?;
                redis::cmd("PING").query_async::<Value>(&mut conn).await?;
                Ok::<_, RedisError>(Target::Cluster(seeds))
            }
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, attempt).await {
        Ok(Ok(target)) => Ok(target),
        Ok(Err(e)) => Err(unreachable(&e)),
        Err(_) => Err(unreachable(&format_args!(
            "no answer within {} s",
            (CONNECT_TIMEOUT * 2).as_secs()
        ))),
    }
}

/// Validates `config` (its URL and prefix), checks that Redis answers, and opens the shared
/// connection and, on one Redis, the pool.
pub(crate) async fn connect_pool(config: &RedisConfig) -> Result<RedisPool> {
    let target = Target::parse(&config.url)?;
    if config.prefix.contains(['{', '}']) {
        return Err(Error::config(
            "MINICHAT_REDIS_PREFIX",
            "must not contain { or } (a user's id is the hash tag of every key of theirs)",
        ));
    }
    let target = probe(target).await?;
    let unreachable =
        |e: &dyn std::fmt::Display| Error::config(SETTING, format!("cannot connect to Redis: {e}"));
    let opener = Opener::new(&target, config.timeout).map_err(|e| unreachable(&e))?;
    let shared = tokio::time::timeout(CONNECT_TIMEOUT * 2, opener.open(config.timeout))
        .await
        .map_err(|_| unreachable(&"the shared connection timed out"))?
        .map_err(|e| unreachable(&e))?;
    let pool = match &target {
        Target::Cluster(_) => None,
        Target::Single(info) => {
            let manager = RedisConnectionManager::new(info.clone())
                .map_err(|e| Error::config(SETTING, format!("not a valid Redis URL ({e})")))?;
            let pool = bb8::Pool::builder()
                .max_size(POOL_SIZE)
                .connection_timeout(checkout_timeout(config.timeout))
                .build(manager)
                .await
                .map_err(|e| unreachable(&e))?;
            Some(pool)
        }
    };
    Ok(RedisPool {
        inner: Arc::new(PoolInner {
            target,
            opener,
            pool,
            shared: RwLock::new(shared),
            timeout: config.timeout,
            down: AtomicBool::new(false),
            probing: AtomicBool::new(false),
        }),
    })
}
