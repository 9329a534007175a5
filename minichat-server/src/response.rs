//! The response type every handler returns, and the few ways to build one.
//!
//! Handlers and the router build responses only through these helpers, so that a JSON body, a
//! static file or a redirect has one shape everywhere (errors have theirs in `error.rs`).

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body_util::Full;

pub type Response = http::Response<Full<Bytes>>;

/// A JSON response.
pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = bytes("application/json", Bytes::from(body));
            *response.status_mut() = status;
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "response did not serialise");
            let mut response = empty(StatusCode::INTERNAL_SERVER_ERROR);
            *response.body_mut() = Full::new(Bytes::from_static(
                b"{\"detail\":\"Internal server error\"}",
            ));
            response
        }
    }
}

/// A 200 with `body` of `content_type` (a page, a script, a document).
pub fn bytes(content_type: &'static str, body: Bytes) -> Response {
    let mut response = Response::new(Full::new(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// No body, just `status`.
pub fn empty(status: StatusCode) -> Response {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// The one redirect: 307, so that the method and body are kept, to `location`. `None` when
/// `location` cannot be a header value.
pub fn redirect(location: &str) -> Option<Response> {
    let location = HeaderValue::from_str(location).ok()?;
    let mut response = empty(StatusCode::TEMPORARY_REDIRECT);
    response.headers_mut().insert(header::LOCATION, location);
    Some(response)
}
