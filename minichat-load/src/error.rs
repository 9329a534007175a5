//! The load tool's one error type: everything that stops a run before it has a result to report
//! (a bad argument, a server that cannot be reached, an answer that breaks the contract).
//! Failures *measured* during a run (error frames, lost messages) are counted, not raised.

use std::io;

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// An argument that parses but cannot be used (zero users, a bad URL, too many sockets).
    #[error("{0}")]
    Usage(String),
    /// A connection or socket call failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The HTTP client failed (connection reset mid-request, malformed response).
    #[error("{what}: {source}")]
    Http {
        what: String,
        #[source]
        source: hyper::Error,
    },
    /// The WebSocket handshake or a frame failed.
    #[error("{what}: {source}")]
    WebSocket {
        what: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// The server answered, but not as docs/API.md says (a status or body set-up cannot use).
    #[error("{0}")]
    Protocol(String),
}

impl LoadError {
    pub fn io(what: impl Into<String>, source: io::Error) -> LoadError {
        LoadError::Io {
            what: what.into(),
            source,
        }
    }

    pub fn http(what: impl Into<String>, source: hyper::Error) -> LoadError {
        LoadError::Http {
            what: what.into(),
            source,
        }
    }

    pub fn ws(what: impl Into<String>, source: tokio_tungstenite::tungstenite::Error) -> LoadError {
        LoadError::WebSocket {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

pub type Result<T, E = LoadError> = std::result::Result<T, E>;
