//! `GET /app`: the web chat page. Plain HTML, CSS and JavaScript with no build step, embedded
//! in the binary (`assets/app/`), so the page works with no internet access and no files beside
//! the server. It talks to the server through the public API only (REST, the socket, tokens).
//! The script is a handful of ES modules loaded by the browser itself (`main.js` imports the
//! rest), served from this origin; the server sets no Content-Security-Policy on them.

use crate::error::ApiError;
use crate::response::{redirect, Response};
use bytes::Bytes;
use http::{header, HeaderValue};
use http_body_util::Full;

/// The type of the page's ES modules (`<script type="module">` needs a JavaScript type).
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// Every file of the page: (name under `/app/`, content type, bytes). `main.js` is the entry
/// module; the others are imported by relative path, so each must be listed here.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_bytes!("../assets/app/index.html"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/app/app.css"),
    ),
    (
        "main.js",
        JAVASCRIPT,
        include_bytes!("../assets/app/main.js"),
    ),
    ("api.js", JAVASCRIPT, include_bytes!("../assets/app/api.js")),
    (
        "stream.js",
        JAVASCRIPT,
        include_bytes!("../assets/app/stream.js"),
    ),
    (
        "state.js",
        JAVASCRIPT,
        include_bytes!("../assets/app/state.js"),
    ),
    (
        "view.js",
        JAVASCRIPT,
        include_bytes!("../assets/app/view.js"),
    ),
    (
        "session.js",
        JAVASCRIPT,
        include_bytes!("../assets/app/session.js"),
    ),
    (
        "people.js",
        JAVASCRIPT,
        include_bytes!("../assets/app/people.js"),
    ),
    (
        "conversation.js",
        JAVASCRIPT,
        include_bytes!("../assets/app/conversation.js"),
    ),
    (
        "outbox.js",
        JAVASCRIPT,
        include_bytes!("../assets/app/outbox.js"),
    ),
    (
        "receipts.js",
        JAVASCRIPT,
        include_bytes!("../assets/app/receipts.js"),
    ),
    (
        "inbox.js",
        JAVASCRIPT,
        include_bytes!("../assets/app/inbox.js"),
    ),
    (
        "group.js",
        JAVASCRIPT,
        include_bytes!("../assets/app/group.js"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn served(name: &str) -> Option<(&'static str, &'static str)> {
        let response = serve("/app/", name).ok()?;
        let content_type = FILES.iter().find(|(n, _, _)| *n == name)?.1;
        let bytes = FILES.iter().find(|(n, _, _)| *n == name)?.2;
        assert_eq!(response.headers()[header::CONTENT_TYPE], content_type);
        Some((
            content_type,
            std::str::from_utf8(bytes).expect("UTF-8 asset"),
        ))
    }

    /// Every quoted `./name.js` a module imports (`from './x.js'`).
    fn imports(source: &str) -> Vec<&str> {
        source
            .split("from '")
            .skip(1)
            .filter_map(|rest| rest.split_once('\''))
            .filter_map(|(target, _)| target.strip_prefix("./"))
            .collect()
    }

    #[test]
    fn the_page_loads_its_entry_module_and_stylesheet() {
        let (content_type, html) = served("").expect("index");
        assert!(content_type.starts_with("text/html"));
        assert!(html.contains(r#"<script type="module" src="main.js"></script>"#));
        assert!(html.contains(r#"href="app.css""#));
        assert_eq!(served("app.css").expect("css").0, "text/css; charset=utf-8");
        assert!(
            serve("/app/", "index.html").is_ok(),
            "index.html is the page too"
        );
    }

    #[test]
    fn every_module_import_is_served_as_javascript() {
        let mut seen = vec!["main.js"];
        let mut next = 0;
        while next < seen.len() {
            let (content_type, source) = served(seen[next])
                .unwrap_or_else(|| panic!("{} is imported but not served", seen[next]));
            assert_eq!(content_type, JAVASCRIPT, "{}", seen[next]);
            for target in imports(source) {
                if !seen.contains(&target) {
                    seen.push(target);
                }
            }
            next += 1;
        }
        let listed = FILES.iter().filter(|(n, _, _)| n.ends_with(".js")).count();
        assert_eq!(seen.len(), listed, "every listed module is used: {seen:?}");
    }

    #[test]
    fn unknown_files_are_not_found() {
        assert!(matches!(serve("/app/", "app.js"), Err(ApiError::NotFound)));
        assert!(matches!(
            serve("/app/", "../Cargo.toml"),
            Err(ApiError::NotFound)
        ));
    }
}
