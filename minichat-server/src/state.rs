//! [`AppState`]: what every handler shares, behind one `Arc`.

use crate::auth::{bearer_token, Authenticator, Caller};
use crate::config::{CorsOrigins, Limits, Signup};
use crate::ids::RequestIds;
use crate::limits::Guards;
use bytes::Bytes;
use http::{header, Request};
use minichat_core::ChatService;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every handler shares: the chat, access control, limits.
pub struct AppState {
    pub chat: Arc<dyn ChatService>,
    pub auth: Authenticator,
    pub signup: Signup,
    pub limits: Limits,
    /// Send rate and connection counts.
    pub guards: Guards,
    pub cors: CorsOrigins,
    /// Cancelled when the server shuts down; WebSocket loops watch it.
    pub shutdown: CancellationToken,
    /// WebSocket connections, which outlive their request; awaited at shutdown.
    pub tasks: TaskTracker,
    /// `GET /openapi.json`: the document for these settings (auth, signup), built once.
    pub openapi_json: Bytes,
    /// Request ids, unique across nodes and restarts (see [`crate::ids`]).
    pub request_ids: RequestIds,
}

impl AppState {
    pub fn new(
        chat: Arc<dyn ChatService>,
        auth: Authenticator,
        signup: Signup,
        limits: Limits,
        cors: CorsOrigins,
        shutdown: CancellationToken,
        openapi_json: Bytes,
    ) -> AppState {
        AppState {
            openapi_json,
            chat,
            auth,
            signup,
            guards: Guards::new(&limits),
            limits,
            cors,
            shutdown,
            tasks: TaskTracker::new(),
            request_ids: RequestIds::new(),
        }
    }

    /// Who the request acts as, from its `Authorization` header.
    pub fn caller<B>(&self, req: &Request<B>) -> Caller {
        self.auth
            .caller(bearer_token(req.headers().get(header::AUTHORIZATION)), None)
    }
}
