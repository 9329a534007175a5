//! Reading a request's input: JSON bodies, query parameters and path ids.
//!
//! Everything a client sends is parsed here, at the edge, into typed values; anything that does
//! not parse becomes a 4xx [`ApiError`] with a clear detail (422 in FastAPI's shape for fields,
//! 413 for an oversized body, 415 for a body that is not JSON, 431 for oversized headers). The rules about values (lengths,
//! ranges) are not here: they live in `minichat_core::model`.

use crate::error::{ApiError, Invalid, Location};
use bytes::Bytes;
use http::{header, HeaderMap, Request};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use std::collections::HashMap;

/// How much of an oversized body is read and thrown away before answering 413. A server that
/// answers without reading the body and then closes makes the client's kernel see unread data
/// and reset the connection, which can destroy the 413 before the client reads it; draining a
/// bounded amount avoids that for ordinary clients, and beyond it the connection is closed.
const DRAIN_LIMIT: usize = 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Refuses a request whose header fields, counted as `name: value\r\n` each, pass `limit`
/// bytes (431), before anything else reads them. hyper reads heads up to
/// `Limits::hyper_head_buffer` (in `config`) and answers a bigger
/// one itself, without a body.
pub fn headers_within(headers: &HeaderMap, limit: usize) -> Result<(), ApiError> {
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > limit {
        return Err(ApiError::HeadersTooLarge { limit });
    }
    Ok(())
}

/// Reads the whole body, refusing more than `limit` bytes with 413.
pub async fn read_body(
    headers: &HeaderMap,
    mut body: Incoming,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut collected = Vec::with_capacity(declared.map_or(0, |n| n.min(limit as u64) as usize));
    let mut too_large = declared.is_some_and(|n| n > limit as u64);
    let mut seen = 0usize;
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Err(ApiError::BadRequest("Could not read the request body"));
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            seen += data.len();
            if seen > DRAIN_LIMIT {
                break;
            }
            if seen > limit {
                too_large = true;
            }
            if !too_large {
                collected.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(DRAIN_TIME, read).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) if too_large => {}
        Err(_) => return Err(ApiError::BadRequest("Timed out reading the request body")),
    }
    if too_large || seen > limit {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    Ok(Bytes::from(collected))
}

/// Whether the request declares a JSON body. No `Content-Type` at all is taken as JSON, as the
/// original (FastAPI) does; any other type is refused with 415.
fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let mime = value
        .to_str()
        .map_err(|_| ApiError::UnsupportedMediaType)?
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Reads a request's whole body (413 past `limit` bytes) and parses it as JSON into `T`
/// ([`read_body`], then [`parse_json`]): what every handler with a JSON body starts with.
pub async fn json_body<T: DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, ApiError> {
    let (parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body, limit).await?;
    parse_json(&parts.headers, &body)
}

/// Parses a JSON body into `T`, reporting the failing field in FastAPI's 422 shape.
pub fn parse_json<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    check_json_content_type(headers)?;
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| ApiError::Invalid(vec![json_error_item(&e)]))?;
    // Anything but white space after the value is malformed JSON too.
    de.end().map_err(|e| {
        ApiError::Invalid(vec![Invalid {
            loc: vec![
                serde_json::json!(Location::Body),
                serde_json::json!(e.column()),
            ],
            msg: "JSON decode error: trailing characters after the JSON value".into(),
            kind: "json_invalid",
        }])
    })?;
    Ok(value)
}

fn json_error_item(e: &serde_path_to_error::Error<serde_json::Error>) -> Invalid {
    let inner = e.inner();
    // serde_json appends " at line L column C"; the location is in `loc` instead.
    let message = inner.to_string();
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(m, _)| m)
        .to_owned();
    let mut loc = vec![serde_json::json!(Location::Body)];
    match inner.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            loc.push(serde_json::json!(inner.column()));
            return Invalid {
                loc,
                msg: format!("JSON decode error: {message}"),
                kind: "json_invalid",
            };
        }
        serde_json::error::Category::Io | serde_json::error::Category::Data => {}
    }
    for segment in e.path().iter() {
        match segment {
            serde_path_to_error::Segment::Map { key } => loc.push(serde_json::json!(key)),
            serde_path_to_error::Segment::Seq { index } => loc.push(serde_json::json!(index)),
            _ => {}
        }
    }
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        loc.push(serde_json::json!(field));
        return Invalid {
            loc,
            msg: "Field required".into(),
            kind: "missing",
        };
    }
    Invalid {
        loc,
        msg: message,
        kind: "type_error",
    }
}

/// A request's query parameters, decoded.
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        Query(
            url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// An optional integer parameter (422 when present but not an integer).
    pub fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|raw| parse_int(Location::Query, name, raw))
            .transpose()
    }

    /// An integer parameter with a default.
    pub fn int_or(&self, name: &str, default: i64) -> Result<i64, ApiError> {
        Ok(self.int(name)?.unwrap_or(default))
    }

    /// A required integer parameter (422 `missing` when absent).
    pub fn required_int(&self, name: &str) -> Result<i64, ApiError> {
        self.int(name)?.ok_or_else(|| {
            ApiError::Invalid(vec![Invalid::new(
                Location::Query,
                name,
                "Field required",
                "missing",
            )])
        })
    }
}

/// Parses an integer from a path or query, FastAPI's way of failing included.
pub fn parse_int(location: Location, name: &str, raw: &str) -> Result<i64, ApiError> {
    raw.trim().parse::<i64>().map_err(|_| {
        ApiError::Invalid(vec![Invalid::new(
            location,
            name,
            "Input should be a valid integer, unable to parse string as an integer",
            "int_parsing",
        )])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use minichat_core::NewUser;

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        h
    }

    fn detail(e: ApiError) -> serde_json::Value {
        e.detail()
    }

    #[test]
    fn parses_json_with_and_without_content_type() {
        let u: NewUser = parse_json(&json_headers(), br#"{"username":"alice"}"#).unwrap();
        assert_eq!(u.username, "alice");
        let u: NewUser = parse_json(&HeaderMap::new(), br#"{"username":"bob"}"#).unwrap();
        assert_eq!(u.username, "bob");
    }

    #[test]
    fn wrong_content_type_is_415() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        let e = parse_json::<NewUser>(&h, br#"{"username":"alice"}"#).unwrap_err();
        assert_eq!(e.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn malformed_json_is_422_json_invalid() {
        let e = parse_json::<NewUser>(&json_headers(), br#"{"username": "#).unwrap_err();
        assert_eq!(e.status(), http::StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(detail(e)[0]["type"], "json_invalid");
        let e =
            parse_json::<NewUser>(&json_headers(), br#"{"username":"abc"} trailing"#).unwrap_err();
        assert_eq!(detail(e)[0]["type"], "json_invalid");
    }

    #[test]
    fn missing_and_mistyped_fields_name_the_field() {
        let e = parse_json::<NewUser>(&json_headers(), br#"{}"#).unwrap_err();
        let d = detail(e);
        assert_eq!(d[0]["loc"], serde_json::json!(["body", "username"]));
        assert_eq!(d[0]["type"], "missing");
        let e = parse_json::<NewUser>(&json_headers(), br#"{"username": 5}"#).unwrap_err();
        let d = detail(e);
        assert_eq!(d[0]["loc"], serde_json::json!(["body", "username"]));
        assert_eq!(d[0]["type"], "type_error");
    }

    #[test]
    fn query_integers() {
        let q = Query::parse(Some("skip=5&limit=abc&user_id=%31"));
        assert_eq!(q.int("skip").unwrap(), Some(5));
        assert_eq!(q.int("user_id").unwrap(), Some(1));
        assert!(q.int("limit").is_err());
        assert_eq!(q.int_or("missing", 9).unwrap(), 9);
        let d = detail(q.required_int("chat_with").unwrap_err());
        assert_eq!(d[0]["loc"], serde_json::json!(["query", "chat_with"]));
        let d = detail(parse_int(Location::Path, "user_id", "99999999999999999999").unwrap_err());
        assert_eq!(d[0]["type"], "int_parsing");
    }
}
