//! The one error type of `minichat-core`.
//!
//! Every fallible operation of the library returns [`Error`]. Each variant is a distinct
//! outcome a caller may handle differently; the server maps them to HTTP statuses in one place
//! (`minichat-server/src/error.rs`), so this file says nothing of statuses.

use crate::model::ValidationError;
use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A run's rule, in one place: `each` on `items` one after another, in order, until one fails
/// for want of a backend; the rest are not tried and answer
/// [`Error::earlier_in_run_unstored`], so a later item never lands without an earlier one.
pub(crate) async fn one_after_another<I, T, F, Fut>(items: I, mut each: F) -> Vec<Result<T>>
where
    I: ExactSizeIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut answers = Vec::with_capacity(items.len());
    let mut failed = false;
    for item in items {
        if failed {
            answers.push(Err(Error::earlier_in_run_unstored()));
            continue;
        }
        let answer = each(item).await;
        failed = matches!(answer, Err(Error::Unavailable { .. }));
        answers.push(answer);
    }
    answers
}

/// Which backend failed, for "storage unavailable" style messages and `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Where users and messages live (PostgreSQL, or memory).
    Storage,
    /// The recent-messages cache (Redis, or memory).
    Cache,
    /// Cross-node fan-out and presence (Redis, or in-process).
    Broker,
}

impl Backend {
    /// `storage`, `cache` or `broker`: for messages and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Storage => "storage",
            Backend::Cache => "cache",
            Backend::Broker => "broker",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input broke a rule of the model; every failing field is listed.
    #[error("invalid input: {0}")]
    Invalid(#[from] ValidationError),
    #[error("Username already registered")]
    UsernameTaken,
    #[error("User not found")]
    UserNotFound,
    #[error("Sender not found")]
    SenderNotFound,
    #[error("Receiver not found")]
    ReceiverNotFound,
    #[error("Message not found")]
    MessageNotFound,
    /// No such conversation, or the user is not a member (the two are not told apart, so that
    /// ids cannot be probed).
    #[error("Conversation not found")]
    ConversationNotFound,
    /// A member asked for what their role does not allow; the text says what.
    #[error("{0}")]
    Forbidden(&'static str),
    /// A `client_id` was reused by the same sender for a different message.
    #[error("client_id was already used for a different message")]
    ClientIdConflict,
    /// A subscription asked to watch the presence of more users than it may.
    #[error("A connection may watch at most {max} users")]
    WatchLimit { max: usize },
    /// A backend could not be reached or failed; nothing was half-done.
    #[error("{backend} unavailable")]
    Unavailable {
        backend: Backend,
        #[source]
        source: BoxError,
    },
    /// Configuration that cannot work (a malformed URL, a missing database name, ...).
    #[error("{setting}: {reason}")]
    Config {
        setting: &'static str,
        reason: String,
    },
}

impl Error {
    /// A failed backend operation. Every one is made here, so this is also where they are
    /// counted (`minichat_backend_errors_total`).
    pub fn unavailable(backend: Backend, source: impl Into<BoxError>) -> Self {
        metrics::counter!(crate::telemetry::BACKEND_ERRORS, "backend" => backend.name())
            .increment(1);
        Error::Unavailable {
            backend,
            source: source.into(),
        }
    }

    /// The answer of a message of a run not stored because an earlier one could not be
    /// (see [`ChatService::send_messages`](crate::ChatService::send_messages)).
    pub fn earlier_in_run_unstored() -> Self {
        Error::unavailable(
            Backend::Storage,
            "an earlier message of the run could not be stored",
        )
    }

    pub fn config(setting: &'static str, reason: impl fmt::Display) -> Self {
        Error::Config {
            setting,
            reason: reason.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn a_run_stops_at_the_first_unavailable_backend() {
        let mut tried = Vec::new();
        let answers = one_after_another([1, 2, 3, 4].into_iter(), |n| {
            tried.push(n);
            std::future::ready(match n {
                2 => Err(Error::UserNotFound),
                3 => Err(Error::unavailable(Backend::Storage, "down")),
                n => Ok(n),
            })
        })
        .now_or_never()
        .expect("nothing waits");
        assert_eq!(
            tried,
            [1, 2, 3],
            "nothing is tried after the unavailable one"
        );
        assert!(matches!(answers[0], Ok(1)));
        assert!(
            matches!(answers[1], Err(Error::UserNotFound)),
            "a bad one fails no other"
        );
        assert!(matches!(answers[2], Err(Error::Unavailable { .. })));
        assert_eq!(answers.len(), 4);
        assert_eq!(
            answers[3].as_ref().err().map(ToString::to_string),
            Some(Error::earlier_in_run_unstored().to_string())
        );
    }
}
