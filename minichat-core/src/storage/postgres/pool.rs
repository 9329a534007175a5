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
//!   recycling one are each bounded by the budget. When the URL names several hosts (a primary
//!   and its standbys, `target_session_attrs=read-write`), each host's TCP connect gets an equal
//!   share of the budget, so a host that does not answer at all cannot use up the whole budget
//!   before the next one is tried.
//! - **The socket**: TCP keepalives and `TCP_USER_TIMEOUT` (Linux), so a connection whose peer
//!   vanished is closed by the kernel and dropped by the pool, idle or not.
//! - **The server's side**: the session runs with `idle_in_transaction_session_timeout` equal
//!   to the budget and `statement_timeout` twice the budget, so PostgreSQL abandons work (and
//!   releases row locks) that no caller waits for any more. Twice, not once, because of
//!   synchronous replication: a `COMMIT` waiting for the standby that `statement_timeout`
//!   cancels is not rolled back, it commits locally (with only a WARNING) and answers success,
//!   although the standby may not have it. With twice the budget, that success can only come a
//!   whole budget after the caller's own deadline, so it never reaches a caller: the send was
//!   already answered 503, and its connection closed. (Its client's retry with the same
//!   `client_id` finds the message, or stores it, on whichever server is the primary then.)
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
//!
//! A call that completed with an error that says the connection or its server is no use any
//! more ([`reusable_after`] is false: the connection broke, the server is shutting down, or it
//! is read-only, as an old primary turned standby is) is not settled either: its connection is
//! closed, and the next checkout makes a new one, which goes through `target_session_attrs`
//! again and so finds the current primary. Closed connections in the pool are dropped at
//! checkout (recycling checks them). So after a failover the pool heals by itself.

use super::{unavailable, SETTING};
use crate::error::{Error, Result};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// Attempts of a transaction that met a deadlock or a serialization failure.
const ATTEMPTS: usize = 3;

/// Why one attempt of a transaction ([`Connections::transact`]) failed.
pub(super) enum Failure {
    /// A deadlock or serialization failure: the transaction may simply run again.
    Retry(tokio_postgres::Error),
    /// Anything else: the call fails with `error`. `reusable` is false when the connection must
    /// be closed rather than pooled again (it broke, or its server shuts down or became
    /// read-only, as a primary does when it dies or is demoted: see [`reusable_after`]).
    Other { error: Error, reusable: bool },
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Failure {
        let code = e.code();
        if code == Some(&SqlState::T_R_DEADLOCK_DETECTED)
            || code == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
        {
            Failure::Retry(e)
        } else {
            Failure::Other {
                reusable: reusable_after(&e),
                error: unavailable(e),
            }
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Other {
            error: e,
            reusable: true,
        }
    }
}

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

    /// Runs `attempt` (one transaction, committed when it returns `Ok`) on a leased connection
    /// within the budget, and again, up to [`ATTEMPTS`] times in all, after a deadlock or a
    /// serialization failure. An attempt that fails is rolled back (its transaction is
    /// dropped); a connection that broke, or whose server can no longer take writes, is
    /// closed rather than pooled again.
    ///
    /// `attempt` takes the lease and gives it back with its outcome (rather than borrowing it,
    /// which would make the future's `Send` depend on a higher-ranked lifetime that the
    /// compiler cannot prove for the service's `async_trait` futures).
    pub(super) async fn transact<T, F, Fut>(&self, mut attempt: F) -> Result<T>
    where
        F: FnMut(Lease) -> Fut,
        Fut: Future<Output = (Lease, std::result::Result<T, Failure>)>,
    {
        self.bounded(async {
            let mut tries = 0;
            loop {
                tries += 1;
                let (lease, done) = attempt(self.lease().await?).await;
                lease.settle_if(!matches!(
                    done,
                    Err(Failure::Other {
                        reusable: false,
                        ..
                    })
                ));
                match done {
                    Ok(value) => return Ok(value),
                    Err(Failure::Retry(e)) if tries >= ATTEMPTS => return Err(unavailable(e)),
                    Err(Failure::Retry(_)) => continue,
                    Err(Failure::Other { error, .. }) => return Err(error),
                }
            }
        })
        .await
    }
}

/// Whether a connection may go back to the pool after a statement on it failed with `e`: yes
/// for what one request caused (a constraint violation, a deadlock, a cancelled statement), no
/// when the connection itself or its server is no use for writes any more: no database error at
/// all (the socket broke or closed), class 08 (connection exception), class 57 (operator
/// intervention: shutting down, crash recovery, cannot connect now) but for 57014 (a statement
/// cancelled, by `statement_timeout` say), and 25006 (read-only transaction: the server is, or
/// became, a standby).
pub(super) fn reusable_after(e: &tokio_postgres::Error) -> bool {
    let Some(db) = e.as_db_error() else {
        return false;
    };
    let code = db.code().code();
    let broken = code.starts_with("08") || (code.starts_with("57") && code != "57014");
    !(broken || code == "25006")
}

/// How many hosts the URL names (each tried in turn when connecting); at least 1.
pub(super) fn host_count(pg: &tokio_postgres::Config) -> u32 {
    let hosts = pg.get_hosts().len().max(pg.get_hostaddrs().len()).max(1);
    u32::try_from(hosts).unwrap_or(u32::MAX)
}

/// `pg` with the bounds of `timeout`: connect timeout (the URL's own if shorter; with several
/// hosts, an equal share of the budget each), keepalives, `TCP_USER_TIMEOUT`, and the
/// session's `statement_timeout` (twice the budget: see the module docs) and
/// `idle_in_transaction_session_timeout` (appended to the
/// URL's own `options`, so an explicit setting there comes first and the budget wins).
fn bounded_config(pg: &tokio_postgres::Config, timeout: Duration) -> tokio_postgres::Config {
    let mut pg = pg.clone();
    let share = timeout / host_count(&pg);
    let connect = pg
        .get_connect_timeout()
        .map_or(share, |own| share.min(*own));
    pg.connect_timeout(connect);
    pg.keepalives(true);
    if pg.get_keepalives_idle() == LIBRARY_KEEPALIVE_IDLE {
        pg.keepalives_idle(KEEPALIVE_IDLE);
    }
    if pg.get_tcp_user_timeout().is_none() {
        pg.tcp_user_timeout(timeout);
    }
    let ms = timeout.as_millis().max(1);
    let statement_ms = ms.saturating_mul(2);
    let session =
        format!("-c statement_timeout={statement_ms} -c idle_in_transaction_session_timeout={ms}");
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

    /// The call completed: the connection goes back to the pool if `reusable` (see
    /// [`reusable_after`]), else it is closed.
    pub(super) fn settle_if(self, reusable: bool) {
        if reusable {
            self.settle();
        }
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
                "-c search_path=x -c statement_timeout=3000 \
                 -c idle_in_transaction_session_timeout=1500"
            )
        );
    }

    #[test]
    fn several_hosts_share_the_connect_budget() {
        let pg: tokio_postgres::Config =
            "postgresql://u@h1:5432,h2:5433,h3:5434/db?target_session_attrs=read-write"
                .parse()
                .unwrap();
        assert_eq!(host_count(&pg), 3);
        let bounded = bounded_config(&pg, Duration::from_millis(1500));
        assert_eq!(
            bounded.get_connect_timeout(),
            Some(&Duration::from_millis(500))
        );
        assert_eq!(
            bounded.get_target_session_attrs(),
            tokio_postgres::config::TargetSessionAttrs::ReadWrite
        );
        assert_eq!(bounded.get_ports(), &[5432, 5433, 5434]);
    }
}
