//! The REST handlers of the wire contract (`docs/API.md`).
//!
//! Each handler reads its input with `extract`, asks the caller's permission with `auth`, calls
//! the [`ChatService`](minichat_core::ChatService) and answers JSON. The `#[utoipa::path]`
//! attributes beside each one are the OpenAPI document, so it cannot drift from the code.

use crate::auth::{AuthMode, DEFAULT_TOKEN_TTL};
use crate::config::Signup;
use crate::error::{ApiError, Location};
use crate::extract::{json_body, parse_int, Query};
use crate::response::{json, Response};
use crate::state::AppState;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use minichat_core::model::{timestamp, DEFAULT_USERS_LIMIT};
use minichat_core::{
    BackendKind, HistoryRequest, Message, NewMessage, NewUser, ReadState, User, UserSearchRequest,
};
use serde::Serialize;
use utoipa::ToSchema;

/// `POST /users/`: the new user, plus a token when auth is on.
#[derive(Serialize, ToSchema)]
pub struct CreatedUser {
    #[serde(flatten)]
    pub user: User,
    /// A bearer token acting as this user (absent when auth is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `GET /users/{user_id}`: the user, and their presence across the cluster.
#[derive(Serialize, ToSchema)]
pub struct UserWithPresence {
    #[serde(flatten)]
    pub user: User,
    /// Connected to any node now.
    pub online: bool,
    /// When last seen online (now, while online); null if never.
    #[serde(with = "timestamp::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen: Option<chrono::DateTime<chrono::Utc>>,
}

/// `POST /messages/`: the stored message, and whether its receiver was connected.
#[derive(Serialize, ToSchema)]
pub struct SentMessageBody {
    #[serde(flatten)]
    pub message: Message,
    /// True when the receiver (for a group: any other member) had a live WebSocket on any
    /// node when it was sent.
    pub delivered_via_websocket: bool,
}

/// `GET /messages/recent/{user_id}`.
#[derive(Serialize, ToSchema)]
pub struct RecentMessages {
    pub messages: Vec<Message>,
}

/// `GET /health`.
#[derive(Serialize, ToSchema)]
pub struct HealthBody {
    /// `OK`, or `ERROR` when a configured backend is down.
    pub status: &'static str,
    /// `memory` (in-process storage), `OK` (PostgreSQL answers) or `unavailable`.
    pub database: String,
    /// `disabled`, `connected` or `unavailable`.
    pub redis: String,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: chrono::DateTime<chrono::Utc>,
}

/// Every error's body (`error.rs` makes it): `detail` is one sentence, or FastAPI's list.
pub use crate::error::ErrorBody;

// `endpoints`: the router's list of (name, path) to show (a plain comment: a doc comment
// would become the operation's summary in OpenAPI).
#[utoipa::path(get, path = "/", tag = "system",
    responses((status = 200, description = "Service name, version and endpoints", body = Object)))]
pub fn root(endpoints: &[(&'static str, &'static str)]) -> Response {
    let endpoints: serde_json::Map<String, serde_json::Value> = endpoints
        .iter()
        .map(|(name, path)| ((*name).to_owned(), (*path).into()))
        .collect();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "message": "Mini Chat Backend API",
            "version": env!("CARGO_PKG_VERSION"),
            "endpoints": endpoints,
        }),
    )
}

#[utoipa::path(get, path = "/health", tag = "system", responses(
    (status = 200, description = "Every configured backend answers", body = HealthBody),
    (status = 503, description = "A configured backend is down", body = HealthBody)))]
pub async fn health(state: &AppState) -> Response {
    let health = state.chat.health().await;
    // `OK` is the original's word for a database that answers, which its clients check.
    let database = match (&health.storage.error, health.storage.kind) {
        (Some(_), _) => "unavailable",
        (None, BackendKind::Memory) => "memory",
        (None, _) => "OK",
    };
    // The cache and the broker are the same Redis when it is configured.
    let redis = match (health.cache.kind, health.broker.kind) {
        (BackendKind::Memory, BackendKind::Local) => "disabled".to_owned(),
        _ if health.cache.error.is_some() || health.broker.error.is_some() => "unavailable".into(),
        _ => "connected".into(),
    };
    for (name, status) in [
        ("storage", &health.storage),
        ("cache", &health.cache),
        ("broker", &health.broker),
    ] {
        if let Some(error) = &status.error {
            tracing::warn!(backend = name, kind = status.kind.as_str(), error = %error, "health check failed");
        }
    }
    let ok = health.is_ok();
    json(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &HealthBody {
            status: if ok { "OK" } else { "ERROR" },
            database: database.into(),
            redis,
            timestamp: minichat_core::model::now(),
        },
    )
}

#[utoipa::path(post, path = "/users/", tag = "users", request_body = NewUser, responses(
    (status = 200, description = "The new user (with a token when auth is on)", body = CreatedUser),
    (status = 400, description = "Username already registered", body = ErrorBody),
    (status = 401, description = "Signup is `admin` and no valid token was sent", body = ErrorBody),
    (status = 403, description = "Signup is `admin` and the token is not an admin's", body = ErrorBody),
    (status = 413, description = "Body too large", body = ErrorBody),
    (status = 422, description = "Invalid username or display name", body = ErrorBody)))]
pub async fn create_user(state: &AppState, req: Request<Incoming>) -> Result<Response, ApiError> {
    if state.signup == Signup::Admin {
        state.caller(&req).require_admin()?;
    }
    let new: NewUser = json_body(req, state.limits.max_body_bytes).await?;
    let user = state.chat.create_user(new).await?;
    let token = (state.auth.mode() == AuthMode::Token)
        .then(|| state.auth.issue(user.id, DEFAULT_TOKEN_TTL));
    tracing::info!(user = user.id, "user created");
    Ok(json(StatusCode::OK, &CreatedUser { user, token }))
}

// Without `q`, every user (the list of Part 1, unchanged); with it, the directory's search.
#[utoipa::path(get, path = "/users/", tag = "users",
    params(("q" = Option<String>, Query, description = "Only users whose username or display name starts with this text, in any case (trimmed; 1–50 characters)"),
           ("skip" = Option<i64>, Query, description = "Rows to skip (≥ 0)"),
           ("limit" = Option<i64>, Query, description = "Rows to return, 1–1000 (default 100)")),
    security(("bearer" = [])),
    responses((status = 200, description = "Users ordered by id (those matching `q` when given)", body = [User]),
              (status = 401, description = "Missing or invalid token", body = ErrorBody),
              (status = 422, description = "Bad numbers, or a `q` that is blank or too long", body = ErrorBody)))]
pub async fn list_users(state: &AppState, req: Request<Incoming>) -> Result<Response, ApiError> {
    state.caller(&req).require_any()?;
    let query = Query::parse(req.uri().query());
    let skip = query.int_or("skip", 0)?;
    let limit = query.int_or("limit", DEFAULT_USERS_LIMIT)?;
    let users = match query.get("q") {
        None => state.chat.list_users(skip, limit).await?,
        Some(q) => {
            let request = UserSearchRequest {
                q: q.to_owned(),
                skip,
                limit,
            };
            state.chat.search_users(request).await?
        }
    };
    Ok(json(StatusCode::OK, &users))
}

#[utoipa::path(get, path = "/users/{user_id}", tag = "users",
    params(("user_id" = i64, Path, description = "User id")),
    security(("bearer" = [])),
    responses((status = 200, description = "The user, with presence", body = UserWithPresence),
              (status = 401, description = "Missing or invalid token", body = ErrorBody),
              (status = 404, description = "User not found", body = ErrorBody),
              (status = 422, description = "Non-integer id", body = ErrorBody)))]
pub async fn get_user(
    state: &AppState,
    req: Request<Incoming>,
    raw_id: &str,
) -> Result<Response, ApiError> {
    state.caller(&req).require_any()?;
    let id = parse_int(Location::Path, "user_id", raw_id)?;
    let user = state.chat.get_user(id).await?;
    let presence = state.chat.presence(&[id]).await?;
    let (online, last_seen) = presence
        .first()
        .map_or((false, None), |p| (p.online, p.last_seen));
    Ok(json(
        StatusCode::OK,
        &UserWithPresence {
            user,
            online,
            last_seen,
        },
    ))
}

#[utoipa::path(post, path = "/messages/", tag = "messages", request_body = NewMessage,
    security(("bearer" = [])),
    responses((status = 200, description = "The stored message", body = SentMessageBody),
              (status = 401, description = "Missing or invalid token", body = ErrorBody),
              (status = 403, description = "sender_id is not the token's user", body = ErrorBody),
              (status = 404, description = "Sender not found / Receiver not found / Conversation not found (the sender is not a member)", body = ErrorBody),
              (status = 409, description = "client_id reused for a different message", body = ErrorBody),
              (status = 413, description = "Body too large", body = ErrorBody),
              (status = 422, description = "Empty or too long content, sending to yourself, or not exactly one of receiver_id and conversation_id", body = ErrorBody),
              (status = 429, description = "Sending too fast (see Retry-After)", body = ErrorBody),
              (status = 503, description = "storage unavailable", body = ErrorBody)))]
pub async fn send_message(state: &AppState, req: Request<Incoming>) -> Result<Response, ApiError> {
    let caller = state.caller(&req);
    caller.require_any()?;
    let new: NewMessage = json_body(req, state.limits.max_body_bytes).await?;
    caller.require_user(new.sender_id)?;
    state.guards.check_send(new.sender_id)?;
    let sent = state.chat.send_message(new, None).await?;
    Ok(json(
        StatusCode::OK,
        &SentMessageBody {
            message: sent.message,
            delivered_via_websocket: sent.delivered,
        },
    ))
}

#[utoipa::path(get, path = "/messages/", tag = "messages",
    params(("user_id" = i64, Query, description = "Whose messages"),
           ("chat_with" = Option<i64>, Query, description = "Only those exchanged with this user"),
           ("conversation_id" = Option<i64>, Query, description = "Only this conversation's messages (the user must be a member); without it and `chat_with`, the user's direct messages"),
           ("before_id" = Option<i64>, Query, description = "Only messages with a smaller id (deep paging)"),
           ("skip" = Option<i64>, Query, description = "Rows to skip (≥ 0)"),
           ("limit" = Option<i64>, Query, description = "Rows to return, 1–1000 (default 50)")),
    security(("bearer" = [])),
    responses((status = 200, description = "Messages, newest first", body = [Message]),
              (status = 401, description = "Missing or invalid token", body = ErrorBody),
              (status = 403, description = "user_id is not the token's user", body = ErrorBody),
              (status = 404, description = "Conversation not found (or the user is not a member)", body = ErrorBody),
              (status = 422, description = "Missing user_id, bad numbers, or both chat_with and conversation_id", body = ErrorBody)))]
pub async fn history(state: &AppState, req: Request<Incoming>) -> Result<Response, ApiError> {
    let caller = state.caller(&req);
    caller.require_any()?;
    let query = Query::parse(req.uri().query());
    let user_id = query.required_int("user_id")?;
    caller.require_user(user_id)?;
    let request = HistoryRequest {
        chat_with: query.int("chat_with")?,
        conversation_id: query.int("conversation_id")?,
        before_id: query.int("before_id")?,
        skip: query.int_or("skip", 0)?,
        limit: query.int_or("limit", minichat_core::model::DEFAULT_HISTORY_LIMIT)?,
        ..HistoryRequest::new(user_id)
    };
    let messages = state.chat.history(request).await?;
    Ok(json(StatusCode::OK, &messages))
}

#[utoipa::path(get, path = "/messages/recent/{user_id}", tag = "messages",
    params(("user_id" = i64, Path, description = "Receiver")),
    security(("bearer" = [])),
    responses((status = 200, description = "The newest 50 messages received, newest first", body = RecentMessages),
              (status = 401, description = "Missing or invalid token", body = ErrorBody),
              (status = 403, description = "Not the token's user", body = ErrorBody),
              (status = 422, description = "Non-integer id", body = ErrorBody)))]
pub async fn recent_messages(
    state: &AppState,
    req: Request<Incoming>,
    raw_id: &str,
) -> Result<Response, ApiError> {
    let caller = state.caller(&req);
    caller.require_any()?;
    let id = parse_int(Location::Path, "user_id", raw_id)?;
    caller.require_user(id)?;
    let messages = state.chat.recent_messages(id).await?;
    Ok(json(StatusCode::OK, &RecentMessages { messages }))
}

#[utoipa::path(get, path = "/messages/read", tag = "messages",
    params(("user_id" = i64, Query, description = "The reader"),
           ("chat_with" = i64, Query, description = "The other side of the conversation")),
    security(("bearer" = [])),
    responses((status = 200, description = "How far each has read the other's messages (ids, or null)", body = ReadState),
              (status = 401, description = "Missing or invalid token", body = ErrorBody),
              (status = 403, description = "user_id is not the token's user", body = ErrorBody),
              (status = 422, description = "Missing or non-integer ids", body = ErrorBody)))]
pub async fn read_state(state: &AppState, req: Request<Incoming>) -> Result<Response, ApiError> {
    let caller = state.caller(&req);
    caller.require_any()?;
    let query = Query::parse(req.uri().query());
    let user_id = query.required_int("user_id")?;
    caller.require_user(user_id)?;
    let peer = query.required_int("chat_with")?;
    let marks = state.chat.read_state(user_id, peer).await?;
    Ok(json(StatusCode::OK, &marks))
}
