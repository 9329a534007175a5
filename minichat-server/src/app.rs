//! `GET /app`: the web chat page. Plain HTML, CSS and JavaScript with no build step, embedded
//! in the binary (`assets/app/`), so the page works with no internet access and no files beside
//! the server. It talks to the server through the public API only (REST, the socket, tokens).

use crate::error::ApiError;
use crate::response::{redirect, Response};
use bytes::Bytes;
use http::{header, HeaderValue};
use http_body_util::Full;

/// Every file of the page: (name under `/app/`, content type, bytes).
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_bytes!("../assets/app/index.html"),
    ),
    (
        "app.js",
        "application/javascript; charset=utf-8",
        include_bytes!("../assets/app/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/app/app.css"),
    ),
];

/// `/app` redirects to `/app/`, so the page's relative URLs resolve under it.
pub fn serve(path: &str, tail: &str) -> Result<Response, ApiError> {
    if path == "/app" {
        return redirect("/app/").ok_or(ApiError::NotFound);
    }
    let tail = if tail == "index.html" { "" } else { tail };
    let (_, content_type, bytes) = FILES
        .iter()
        .find(|(name, _, _)| *name == tail)
        .ok_or(ApiError::NotFound)?;
    let mut response = Response::new(Full::new(Bytes::from_static(bytes)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}
