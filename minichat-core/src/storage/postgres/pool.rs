//! The connection pool of PostgreSQL storage, and the bound on every call through it.
//!
//! This file exists so that "no storage call waits longer than the backend budget" is one piece
//! of code, apart from the statements. A PostgreSQL that keeps its connections open but stops
//! answering (a black hole: a partition, a frozen host) would otherwise hold a caller until TCP
//! gives up, which can be a quarter of an hour. Four things bound it, all from one budget
//! (`MINICHAT_BACKEND_TIMEOUT_MS`, [`ChatConfig::backend_timeout`](crate::ChatConfig)):
//!
//! - **Each call as a whole** ([`Connections::bounded`]): checkout, statements and commit end
//!   within the budget, or the call fails as [`Error::Unavailable`].
//! - **The pool**: waiting for a free connection, creating one (TCP connect and start-up) and
//!   recycling one are each bounded by the budget.
//! - **The socket**: TCP keepalives and `TCP_USER_TIMEOUT` (Linux), so a connection whose peer
//!   vanished is closed by the kernel and dropped by the pool, idle or not.
//! - **The server's side**: the session runs with `statement_timeout` and
//!   `idle_in_transaction_session_timeout` equal to the budget, so PostgreSQL abandons work
//!   (and releases row locks) that no caller waits for any more.
//!
//! A connection leaves the pool as a [`Lease`]. A call that completes settles its lease, and the
//! connection goes back: by then its transaction, if any, was committed or rolled back (a
//! dropped `Transaction` queues its `ROLLBACK` ahead of anything else on the connection). A call
//! that did not complete (it timed out, or its caller went away) drops its lease unsettled, and
//! the connection is taken out of the pool and closed, never handed to another caller with a
//! statement or a transaction in flight. A transaction that did not commit is rolled back by
//! PostgreSQL when its connection closes, so a timed-out send leaves nothing half-written; one
//! whose `COMMIT` reached the server just before the deadline is stored whole (and its `client_id`
//! makes the client's retry find it).

use super::{unavailable, SETTING};
use crate::error::{Error, Result};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::time::Duration;
use tokio_postgres::NoTls;

/// How long a pooled connection may be idle before TCP keepalive probes start (when the URL
/// sets no `keepalives_idle`); with `TCP_USER_TIMEOUT` they close a connection to a vanished
/// server within about this plus the budget.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// tokio-postgres's own default idle time, which means "the URL did not set one".
const LIBRARY_KEEPALIVE_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// The pool, and the budget of every call made through it.
#[derive(Clone)]
pub(super) struct Connections {
    pool: Pool,
    timeout: Duration,
}

impl Connections {
    /// A pool of at most `size` connections made from `pg` with the socket and session bounds
    /// of `timeout` added (what the URL sets itself is kept).
    pub(super) fn open(
        pg: &tokio_postgres::Config,
        size: usize,
        timeout: Duration,
    ) -> Result<Connections> {
        let manager = Manager::from_config(
            bounded_config(pg, timeout),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(size.max(1))
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::config(SETTING, format!("cannot build the pool: {e}")))?;
        Ok(Connections { pool, timeout })
    }

    pub(super) fn status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }

    /// Runs `call` (a checkout and its statements) within the budget; no answer by then is
    /// [`Error::Unavailable`]. A lease `call` holds when the deadline passes is dropped unsettled,
    /// which closes its connection.
    pub(super) async fn bounded<T>(&self, call: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(answer) => answer,
            Err(_) => Err(unavailable(format!(
                "PostgreSQL did not answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// A connection from the pool (bounded by the pool's own timeouts).
    pub(super) async fn lease(&self) -> Result<Lease> {
        let object = self.pool.get().await.map_err(unavailable)?;
        Ok(Lease {
            object: Some(object),
            settled: false,
        })
    }
}

/// `pg` with the bounds of `timeout`: connect timeout (the URL's own if shorter), keepalives, `TCP_USER_TIMEOUT`, and the
/// session's `statement_timeout` and `idle_in_transaction_session_timeout` (appended to the
/// URL's own `options`, so an explicit setting there comes first and the budget wins).
fn bounded_config(pg: &tokio_postgres::Config, timeout: Duration) -> tokio_postgres::Config {
    let mut pg = pg.clone();
    let connect = pg
        .get_connect_timeout()
        .map_or(timeout, |own| timeout.min(*own));
    pg.connect_timeout(connect);
    pg.keepalives(true);
    if pg.get_keepalives_idle() == LIBRARY_KEEPALIVE_IDLE {
        pg.keepalives_idle(KEEPALIVE_IDLE);
    }
    if pg.get_tcp_user_timeout().is_none() {
        pg.tcp_user_timeout(timeout);
    }
    let ms = timeout.as_millis().max(1);
    let session = format!("-c statement_timeout={ms} -c idle_in_transaction_session_timeout={ms}");
    let options = match pg.get_options() {
        Some(own) if !own.trim().is_empty() => format!("{own} {session}"),
        _ => session,
    };
    pg.options(options);
    pg
}

/// A pooled connection held by one call. [`settle`](Lease::settle) it when the call completed;
/// dropped unsettled, it closes its connection instead of returning it (see the module docs).
pub(super) struct Lease {
    object: Option<Object>,
    settled: bool,
}

impl Lease {
    /// The call completed: the connection goes back to the pool.
    pub(super) fn settle(mut self) {
        self.settled = true;
    }
}

impl Deref for Lease {
    type Target = Object;

    fn deref(&self) -> &Object {
        // Only `drop` takes the object out.
        self.object.as_ref().expect("a lease holds its connection")
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut Object {
        self.object.as_mut().expect("a lease holds its connection")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(object) = self.object.take() {
            if !self.settled {
                // Out of the pool for good: dropping the client closes the connection (once
                // the requests already written are answered or the socket fails).
                drop(Object::take(object));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_bounds_socket_and_session() {
        let pg: tokio_postgres::Config = "postgresql://u@localhost/db?options=-c%20search_path%3Dx"
            .parse()
            .unwrap();
        let bounded = bounded_config(&pg, Duration::from_millis(1500));
        assert_eq!(
            bounded.get_connect_timeout(),
            Some(&Duration::from_millis(1500))
        );
        assert_eq!(
            bounded.get_tcp_user_timeout(),
            Some(&Duration::from_millis(1500))
        );
        assert!(bounded.get_keepalives());
        assert_eq!(bounded.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(
            bounded.get_options(),
            Some(
                "-c search_path=x -c statement_timeout=1500 \
                 -c idle_in_transaction_session_timeout=1500"
            )
        );
    }
}
