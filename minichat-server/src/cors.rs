//! CORS: the preflight answer, and the headers every response gets for an allowed origin.

use crate::config::CorsOrigins;
use crate::response::{empty, Response};
use http::{header, HeaderMap, HeaderValue, StatusCode};

/// The answer to `OPTIONS` on any path.
pub fn preflight(request: &HeaderMap) -> Response {
    let mut response = empty(StatusCode::OK);
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    let requested = request
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("authorization, content-type"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
}

/// Allows `origin` on `response` when `cors` does.
pub fn allow_origin(cors: &CorsOrigins, origin: Option<&HeaderValue>, response: &mut Response) {
    let allowed = match cors {
        CorsOrigins::Any => Some(HeaderValue::from_static("*")),
        CorsOrigins::List(list) => origin
            .filter(|o| {
                list.iter()
                    .any(|allowed| o.as_bytes() == allowed.as_bytes())
            })
            .cloned(),
    };
    if let Some(value) = allowed {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}
