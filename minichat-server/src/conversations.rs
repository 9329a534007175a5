//! The REST handlers of conversations (`docs/API.md` Part 4): create a group, the inbox, one
//! conversation, rename, add and remove members.
//!
//! A file of its own beside `api.rs` (users and messages) because it is one resource with its
//! own routes. As there, each handler parses input with `extract`, asks `auth` whether the
//! caller may act as the user it names, and calls the
//! [`ChatService`](minichat_core::ChatService); the membership rules (404 to non-members, roles,
//! the member limit) are the core's.

use crate::error::{ApiError, Location};
use crate::extract::{json_body, parse_int, Query};
use crate::response::{json, Response};
use crate::state::AppState;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use minichat_core::model::{
    Conversation, ConversationId, ConversationSummary, NewGroup, NewMembers, Rename,
    DEFAULT_HISTORY_LIMIT,
};
use serde::Serialize;
use utoipa::ToSchema;

pub use crate::error::ErrorBody;

/// `DELETE /conversations/{id}/members/{member_id}` when the user removed themself.
#[derive(Serialize, ToSchema)]
pub struct LeftConversation {
    pub id: ConversationId,
    /// Always true.
    pub left: bool,
}

fn conversation_id(raw: &str) -> Result<ConversationId, ApiError> {
    parse_int(Location::Path, "conversation_id", raw)
}

#[utoipa::path(post, path = "/conversations/", tag = "conversations", request_body = NewGroup,
    security(("bearer" = [])),
    responses((status = 200, description = "The new group; its creator is its owner", body = Conversation),
              (status = 401, description = "Missing or invalid token", body = ErrorBody),
              (status = 403, description = "creator_id is not the token's user", body = ErrorBody),
              (status = 404, description = "User not found (a member does not exist)", body = ErrorBody),
              (status = 413, description = "Body too large", body = ErrorBody),
              (status = 422, description = "Blank or too long title, or more members than the limit", body = ErrorBody),
              (status = 503, description = "storage unavailable", body = ErrorBody)))]
pub async fn create(state: &AppState, req: Request<Incoming>) -> Result<Response, ApiError> {
    let caller = state.caller(&req);
    caller.require_any()?;
    let new: NewGroup = json_body(req, state.limits.max_body_bytes).await?;
    caller.require_user(new.creator_id)?;
    let conversation = state.chat.create_group(new).await?;
    tracing::info!(conversation = conversation.id, "group created");
    Ok(json(StatusCode::OK, &conversation))
}

#[utoipa::path(get, path = "/conversations/", tag = "conversations",
    params(("user_id" = i64, Query, description = "Whose inbox"),
           ("skip" = Option<i64>, Query, description = "Rows to skip (≥ 0)"),
           ("limit" = Option<i64>, Query, description = "Rows to return, 1–1000 (default 50)")),
    security(("bearer" = [])),
    responses((status = 200, description = "The user's conversations, most recent activity first", body = [ConversationSummary]),
              (status = 401, description = "Missing or invalid token", body = ErrorBody),
              (status = 403, description = "user_id is not the token's user", body = ErrorBody),
              (status = 422, description = "Missing user_id or bad numbers", body = ErrorBody),
              (status = 503, description = "storage unavailable", body = ErrorBody)))]
pub async fn list(state: &AppState, req: Request<Incoming>) -> Result<Response, ApiError> {
    let caller = state.caller(&req);
    caller.require_any()?;
    let query = Query::parse(req.uri().query());
    let user_id = query.required_int("user_id")?;
    caller.require_user(user_id)?;
    let skip = query.int_or("skip", 0)?;
    let limit = query.int_or("limit", DEFAULT_HISTORY_LIMIT)?;
    let inbox = state.chat.conversations(user_id, skip, limit).await?;
    Ok(json(StatusCode::OK, &inbox))
}

#[utoipa::path(get, path = "/conversations/{conversation_id}", tag = "conversations",
    params(("conversation_id" = i64, Path, description = "Conversation id"),
           ("user_id" = i64, Query, description = "The member asking")),
    security(("bearer" = [])),
    responses((status = 200, description = "The conversation with its members", body = Conversation),
              (status = 401, description = "Missing or invalid token", body = ErrorBody),
              (status = 403, description = "user_id is not the token's user", body = ErrorBody),
              (status = 404, description = "Conversation not found (or the user is not a member)", body = ErrorBody),
              (status = 422, description = "Missing or non-integer ids", body = ErrorBody),
              (status = 503, description = "storage unavailable", body = ErrorBody)))]
pub async fn get(
    state: &AppState,
    req: Request<Incoming>,
    raw_id: &str,
) -> Result<Response, ApiError> {
    let caller = state.caller(&req);
    caller.require_any()?;
    let id = conversation_id(raw_id)?;
    let query = Query::parse(req.uri().query());
    let user_id = query.required_int("user_id")?;
    caller.require_user(user_id)?;
    let conversation = state.chat.conversation(id, user_id).await?;
    Ok(json(StatusCode::OK, &conversation))
}

#[utoipa::path(patch, path = "/conversations/{conversation_id}", tag = "conversations",
    params(("conversation_id" = i64, Path, description = "Conversation id")),
    request_body = Rename,
    security(("bearer" = [])),
    responses((status = 200, description = "The renamed group", body = Conversation),
              (status = 401, description = "Missing or invalid token", body = ErrorBody),
              (status = 403, description = "user_id is not the token's user, or not an owner or admin", body = ErrorBody),
              (status = 404, description = "Conversation not found (or the user is not a member)", body = ErrorBody),
              (status = 413, description = "Body too large", body = ErrorBody),
              (status = 422, description = "Blank or too long title, or a direct conversation", body = ErrorBody),
              (status = 503, description = "storage unavailable", body = ErrorBody)))]
pub async fn rename(
    state: &AppState,
    req: Request<Incoming>,
    raw_id: &str,
) -> Result<Response, ApiError> {
    let caller = state.caller(&req);
    caller.require_any()?;
    let id = conversation_id(raw_id)?;
    let rename: Rename = json_body(req, state.limits.max_body_bytes).await?;
    caller.require_user(rename.user_id)?;
    let conversation = state.chat.rename_conversation(id, rename).await?;
    Ok(json(StatusCode::OK, &conversation))
}

#[utoipa::path(post, path = "/conversations/{conversation_id}/members", tag = "conversations",
    params(("conversation_id" = i64, Path, description = "Conversation id")),
    request_body = NewMembers,
    security(("bearer" = [])),
    responses((status = 200, description = "The group with its members (already-members are ignored)", body = Conversation),
              (status = 401, description = "Missing or invalid token", body = ErrorBody),
              (status = 403, description = "user_id is not the token's user, or not an owner or admin", body = ErrorBody),
              (status = 404, description = "Conversation not found (or the user is not a member), or User not found", body = ErrorBody),
              (status = 413, description = "Body too large", body = ErrorBody),
              (status = 422, description = "More members than the limit, no member_ids, or a direct conversation", body = ErrorBody),
              (status = 503, description = "storage unavailable", body = ErrorBody)))]
pub async fn add_members(
    state: &AppState,
    req: Request<Incoming>,
    raw_id: &str,
) -> Result<Response, ApiError> {
    let caller = state.caller(&req);
    caller.require_any()?;
    let id = conversation_id(raw_id)?;
    let add: NewMembers = json_body(req, state.limits.max_body_bytes).await?;
    caller.require_user(add.user_id)?;
    let conversation = state.chat.add_members(id, add).await?;
    Ok(json(StatusCode::OK, &conversation))
}

#[utoipa::path(delete, path = "/conversations/{conversation_id}/members/{member_id}", tag = "conversations",
    params(("conversation_id" = i64, Path, description = "Conversation id"),
           ("member_id" = i64, Path, description = "The member to remove (the user themself: leave)"),
           ("user_id" = i64, Query, description = "Who removes")),
    security(("bearer" = [])),
    responses((status = 200, description = "The conversation as the remover now sees it, or `{\"id\", \"left\": true}` when the user left", body = Conversation),
              (status = 401, description = "Missing or invalid token", body = ErrorBody),
              (status = 403, description = "user_id is not the token's user; a member removing someone else; removing the owner, or the owner leaving while others remain", body = ErrorBody),
              (status = 404, description = "Conversation not found (or the user is not a member), or User not found (not a member)", body = ErrorBody),
              (status = 422, description = "Missing or non-integer ids, or a direct conversation", body = ErrorBody),
              (status = 503, description = "storage unavailable", body = ErrorBody)))]
pub async fn remove_member(
    state: &AppState,
    req: Request<Incoming>,
    raw_id: &str,
    raw_member: &str,
) -> Result<Response, ApiError> {
    let caller = state.caller(&req);
    caller.require_any()?;
    let id = conversation_id(raw_id)?;
    let member = parse_int(Location::Path, "member_id", raw_member)?;
    let query = Query::parse(req.uri().query());
    let user_id = query.required_int("user_id")?;
    caller.require_user(user_id)?;
    let conversation = state.chat.remove_member(id, user_id, member).await?;
    if member == user_id {
        return Ok(json(StatusCode::OK, &LeftConversation { id, left: true }));
    }
    Ok(json(StatusCode::OK, &conversation))
}
