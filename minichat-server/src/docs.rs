//! API documentation, served from the binary with no internet access: the OpenAPI document
//! generated from the handlers' annotations, Swagger UI (vendored by `utoipa-swagger-ui`) at
//! `/docs`, and ReDoc (its standalone bundle kept in `assets/`) at `/redoc`.

use crate::error::ApiError;
use crate::response::{bytes, Response};
use crate::state::AppState;
use crate::telemetry;
use crate::{api, conversations};
use bytes::Bytes;
use http::{header, HeaderValue};
use http_body_util::Full;
use std::sync::{Arc, OnceLock};
use utoipa::OpenApi;

/// `GET /ws/{user_id}`: documented here, served by `ws.rs`.
#[utoipa::path(get, path = "/ws/{user_id}", tag = "websocket",
    params(("user_id" = i64, Path, description = "The user to connect as"),
           ("token" = Option<String>, Query, description = "Bearer token (browsers cannot set headers on WebSockets)"),
           ("since" = Option<i64>, Query, description = "Replay stored events with a higher seq first")),
    responses(
        (status = 101, description = "Upgraded. First frame `{\"type\":\"system\",...}`; `{\"type\":\"ping\"}` → `{\"type\":\"pong\"}`; every message to the user arrives once as a Message frame with `seq`. Close 4004 unknown user, 4008 slow consumer, 1001 shutdown, 1009 message too big."),
        (status = 400, description = "Not a WebSocket handshake", body = api::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = api::ErrorBody),
        (status = 403, description = "Token of another user", body = api::ErrorBody),
        (status = 422, description = "Non-integer id", body = api::ErrorBody)))]
#[allow(dead_code)]
fn websocket() {}

/// The OpenAPI document's operations and types. `openapi.rs` adds the validation rules, the
/// common statuses and (with auth on) security; its `paths` must be the route table's API routes (`routes.rs`, where
/// a unit test compares them): utoipa's derive is what attaches each operation's tag.
#[derive(OpenApi)]
#[openapi(
    info(title = "Minichat", description = "Real-time chat backend: REST and WebSocket. Wire contract compatible with the original Mini Chat Backend."),
    paths(api::root, api::health, telemetry::metrics, api::create_user, api::list_users, api::get_user,
          api::send_message, api::history, api::recent_messages, api::read_state,
          conversations::create, conversations::list, conversations::get, conversations::rename,
          conversations::add_members, conversations::remove_member, websocket),
    components(schemas(minichat_core::User, minichat_core::Message, minichat_core::NewUser,
                       minichat_core::NewMessage, minichat_core::ReadState, minichat_core::model::MessageType,
                       api::CreatedUser, api::UserWithPresence, api::SentMessageBody, api::RecentMessages,
                       api::HealthBody, api::ErrorBody, crate::error::Detail, crate::error::Invalid,
                       minichat_core::model::Conversation, minichat_core::model::ConversationSummary,
                       minichat_core::model::Member, minichat_core::model::Role,
                       minichat_core::model::ConversationKind, minichat_core::model::NewGroup,
                       minichat_core::model::Rename, minichat_core::model::NewMembers,
                       conversations::LeftConversation)),
    tags((name = "users"), (name = "messages"), (name = "conversations"), (name = "websocket"), (name = "system"))
)]
pub struct ApiDoc;

/// `GET /openapi.json`: the document built at start for this server's settings.
pub fn openapi(state: &AppState) -> Response {
    bytes("application/json", state.openapi_json.clone())
}

fn swagger_config() -> Arc<utoipa_swagger_ui::Config<'static>> {
    static CONFIG: OnceLock<Arc<utoipa_swagger_ui::Config<'static>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| Arc::new(utoipa_swagger_ui::Config::from("/openapi.json")))
        .clone()
}

/// Swagger UI's page. Its asset URLs are relative (`./swagger-ui.css`), so a `<base>` makes
/// them resolve under `/docs/` whether the page is fetched as `/docs` or `/docs/`.
fn swagger_page() -> Result<Response, ApiError> {
    static PAGE: OnceLock<Option<Bytes>> = OnceLock::new();
    let page = PAGE.get_or_init(|| {
        let file = swagger_file("")?;
        let html = String::from_utf8(file.bytes.into_owned()).ok()?;
        let html = html.replacen("<head>", "<head>\n    <base href=\"/docs/\">", 1);
        Some(Bytes::from(html))
    });
    page.clone()
        .map(|html| bytes("text/html; charset=utf-8", html))
        .ok_or(ApiError::NotFound)
}

fn swagger_file(tail: &str) -> Option<utoipa_swagger_ui::SwaggerFile<'static>> {
    match utoipa_swagger_ui::serve(tail, swagger_config()) {
        Ok(file) => file,
        Err(e) => {
            tracing::error!(error = %e, "Swagger UI file failed");
            None
        }
    }
}

/// `/docs`, `/docs/` (the page) and the files under `/docs/`.
pub fn swagger(tail: &str) -> Result<Response, ApiError> {
    if matches!(tail, "" | "index.html") {
        return swagger_page();
    }
    let file = swagger_file(tail).ok_or(ApiError::NotFound)?;
    let mut response = Response::new(Full::new(Bytes::from(file.bytes.into_owned())));
    if let Ok(v) = HeaderValue::from_str(&file.content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    if file.gzpipped {
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    Ok(response)
}

const REDOC_PAGE: &str = r#"<!DOCTYPE html>
<html>
  <head>
    <title>Minichat API — ReDoc</title>
    <meta charset="utf-8"/>
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <style>body { margin: 0; padding: 0; }</style>
  </head>
  <body>
    <redoc spec-url="/openapi.json"></redoc>
    <script src="/redoc/redoc.standalone.js"></script>
  </body>
</html>
"#;

/// ReDoc's bundle (redoc 2.5.4, MIT; see `assets/README.md`).
static REDOC_JS: &[u8] = include_bytes!("../assets/redoc.standalone.js");

pub fn redoc_page() -> Response {
    bytes(
        "text/html; charset=utf-8",
        Bytes::from_static(REDOC_PAGE.as_bytes()),
    )
}

pub fn redoc_script() -> Response {
    let mut response = bytes(
        "application/javascript; charset=utf-8",
        Bytes::from_static(REDOC_JS),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    response
}
