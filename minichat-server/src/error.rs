//! The server's one error type, and the one place errors become HTTP statuses and bodies.
//!
//! Bodies follow the wire contract: `{"detail": "<sentence>"}`, except validation errors, which
//! are 422 in FastAPI's shape (`{"detail": [{"loc": [...], "msg": ..., "type": ...}]}`) so that
//! clients of the original can read them.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use minichat_core::{Error as CoreError, ValidationError};
use serde::Serialize;
use serde_json::json;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;

/// Where a failing input came from, FastAPI's first `loc` element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    Body,
    Query,
    Path,
}

/// One item of a FastAPI-shaped 422.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invalid {
    pub loc: Vec<serde_json::Value>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// `loc` holds strings (`"body"`, a field name) and integers (a JSON column, a list index), so
/// the schema is written here rather than derived from `Vec<serde_json::Value>`.
impl utoipa::PartialSchema for Invalid {
    fn schema() -> RefOr<Schema> {
        let string = || ObjectBuilder::new().schema_type(Type::String);
        let loc_part = OneOfBuilder::new()
            .item(string())
            .item(ObjectBuilder::new().schema_type(Type::Integer));
        ObjectBuilder::new()
            .description(Some(
                "One invalid input, as FastAPI reports it: where (`[\"body\", \"content\"]`), why, and the kind",
            ))
            .property("loc", ArrayBuilder::new().items(loc_part))
            .property("msg", string())
            .property("type", string())
            .required("loc")
            .required("msg")
            .required("type")
            .into()
    }
}

impl ToSchema for Invalid {}

/// An error response's `detail`: one sentence, or (for 422) the list of invalid inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Detail {
    Sentence(String),
    Invalid(Vec<Invalid>),
}

/// Every error response's body (what `ApiError::into_response` serialises).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ErrorBody {
    pub detail: Detail,
}

impl Invalid {
    pub fn new(
        location: Location,
        field: &str,
        msg: impl Into<String>,
        kind: &'static str,
    ) -> Self {
        Invalid {
            loc: vec![json!(location), json!(field)],
            msg: msg.into(),
            kind,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Core(#[from] CoreError),
    /// Input that failed to parse or validate at the edge (422).
    #[error("invalid request")]
    Invalid(Vec<Invalid>),
    #[error("Not Found")]
    NotFound,
    #[error("Method Not Allowed")]
    MethodNotAllowed,
    #[error("Request body too large (limit {limit} bytes)")]
    PayloadTooLarge { limit: usize },
    #[error("Request header fields too large (limit {limit} bytes)")]
    HeadersTooLarge { limit: usize },
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("Not allowed to act as another user")]
    Forbidden,
    #[error("{0}")]
    ForbiddenBecause(&'static str),
    #[error("{detail}")]
    TooManyRequests {
        detail: &'static str,
        retry_after_secs: u64,
    },
    /// This node cannot take more (503).
    #[error("{0}")]
    Unavailable(&'static str),
    /// A handler that failed where it never should (it panicked): 500, the cause logged.
    #[error("Internal server error")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Core(e) => match e {
                CoreError::Invalid(_) | CoreError::WatchLimit { .. } => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                CoreError::UsernameTaken => StatusCode::BAD_REQUEST,
                CoreError::UserNotFound
                | CoreError::SenderNotFound
                | CoreError::ReceiverNotFound
                | CoreError::MessageNotFound
                | CoreError::ConversationNotFound => StatusCode::NOT_FOUND,
                CoreError::Forbidden(_) => StatusCode::FORBIDDEN,
                CoreError::ClientIdConflict => StatusCode::CONFLICT,
                CoreError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
                CoreError::Config { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::ForbiddenBecause(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The body's `detail`: a sentence, or the list of invalid fields.
    pub fn body(&self) -> ErrorBody {
        let detail = match self {
            ApiError::Core(CoreError::Invalid(v)) => Detail::Invalid(validation_items(v)),
            ApiError::Invalid(items) => Detail::Invalid(items.clone()),
            // `Unavailable` displays as "storage unavailable": its cause is logged, not shown.
            ApiError::Core(CoreError::Config { .. }) => {
                Detail::Sentence("Internal server error".into())
            }
            other => Detail::Sentence(other.to_string()),
        };
        ErrorBody { detail }
    }

    /// The JSON `detail`: a sentence, or the list of invalid fields.
    pub fn detail(&self) -> serde_json::Value {
        json!(self.body().detail)
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.status();

        if status.is_server_error() {
            tracing::error!(error = %self, source = ?std::error::Error::source(&self), "request failed");
        }
        let body =
            serde_json::to_vec(&self.body()).unwrap_or_else(|_| b"{\"detail\":\"error\"}".to_vec());
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(
            self,
            ApiError::PayloadTooLarge { .. } | ApiError::HeadersTooLarge { .. }
        ) {
            // What is left of the body is not read: the connection cannot be reused.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ApiError::TooManyRequests {
            retry_after_secs, ..
        } = &self
        {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.max(&1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Query parameters the service validates; every other field comes from a body.
fn location_of(field: &str) -> Location {
    match field {
        "skip" | "limit" | "q" | "user_id" | "chat_with" | "before_id" | "since" => Location::Query,
        // Socket frames' fields are reported as body fields, like REST bodies.
        _ => Location::Body,
    }
}

fn validation_items(v: &ValidationError) -> Vec<Invalid> {
    v.errors
        .iter()
        .map(|e| {
            Invalid::new(
                location_of(e.field),
                e.field,
                e.message.clone(),
                "value_error",
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let taken: ApiError = CoreError::UsernameTaken.into();
        assert_eq!(taken.status(), StatusCode::BAD_REQUEST);
        assert_eq!(taken.detail(), json!("Username already registered"));
        let down: ApiError =
            CoreError::unavailable(minichat_core::Backend::Storage, "connection refused").into();
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(down.detail(), json!("storage unavailable"));
        assert_eq!(ApiError::Forbidden.status(), StatusCode::FORBIDDEN);
        let watch: ApiError = CoreError::WatchLimit { max: 1000 }.into();
        assert_eq!(watch.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            watch.detail(),
            json!("A connection may watch at most 1000 users")
        );
    }

    #[test]
    fn validation_is_fastapi_shaped() {
        let e: ApiError = CoreError::Invalid(ValidationError::single(
            "content",
            "Message content cannot be empty",
        ))
        .into();
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            e.detail(),
            json!([{"loc": ["body", "content"], "msg": "Message content cannot be empty", "type": "value_error"}])
        );
        let e: ApiError = CoreError::Invalid(ValidationError::single("limit", "too big")).into();
        assert_eq!(e.detail()[0]["loc"], json!(["query", "limit"]));
    }
}
