//! The OpenAPI document as this server enforces it, built once at start from its settings.
//!
//! `docs::ApiDoc` (utoipa's derive over the handlers' annotations) gives the operations, their
//! types and tags. This file adds what the derive cannot know: the validation rules of
//! `minichat_core::model`, taken from its constants (so the document cannot drift from the
//! rules), the statuses every operation can answer, and security only when auth is on.

use crate::auth::AuthMode;
use crate::config::Signup;
use crate::docs::ApiDoc;
use minichat_core::model::{
    CLIENT_ID_MAX_CHARS, CONTENT_MAX_CHARS, DEFAULT_HISTORY_LIMIT, DEFAULT_USERS_LIMIT,
    DISPLAY_NAME_MAX_CHARS, MAX_PAGE_LIMIT, SEARCH_MAX_CHARS, TITLE_MAX_CHARS, USERNAME_MAX_CHARS,
    USERNAME_MIN_CHARS,
};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{Object, Ref, Schema};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, ResponseBuilder};
use utoipa::OpenApi as _;

/// Every character a letter or a digit (Python's `str.isalnum`, as `NewUser::validate`). In
/// Python's and Rust's regex dialects `[^\W_]` is Unicode-aware; in ECMA-262's it is ASCII
/// only, which is stricter than the server, never looser.
pub const USERNAME_PATTERN: &str = r"^[^\W_]+$";
/// No U+0000 anywhere (PostgreSQL text cannot hold it; every backend refuses it).
pub const NO_NUL_PATTERN: &str = r"^[^\u0000]*$";
/// No U+0000, and something besides white space (content and a search's `q` are trimmed before
/// they are judged).
pub const CONTENT_PATTERN: &str = r"^[^\u0000]*[^\s\u0000][^\u0000]*$";

/// The name of the bearer scheme in `components.securitySchemes`.
const BEARER: &str = "bearer";

/// The document for a server with these settings, as JSON.
pub fn json(auth: AuthMode, signup: Signup) -> String {
    document(auth, signup)
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".into())
}

/// The document for a server with these settings.
pub fn document(auth: AuthMode, signup: Signup) -> OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    constrain_bodies(&mut doc);
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in operations(item) {
            constrain_parameters(path, op);
            add_statuses(path, method, op);
            secure(path, method, op, auth, signup);
        }
    }
    if auth != AuthMode::Off {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
    doc
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("post", item.post.as_mut()),
        ("put", item.put.as_mut()),
        ("delete", item.delete.as_mut()),
        ("patch", item.patch.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, op)| Some((method, op?)))
}

/// The object schema at `schema` (a property or a parameter), if it is one inline.
fn object(schema: Option<&mut RefOr<Schema>>) -> Option<&mut Object> {
    match schema? {
        RefOr::T(Schema::Object(o)) => Some(o),
        _ => None,
    }
}

fn property<'a>(doc: &'a mut OpenApi, schema: &str, field: &str) -> Option<&'a mut Object> {
    let components = doc.components.as_mut()?;
    let RefOr::T(Schema::Object(o)) = components.schemas.get_mut(schema)? else {
        return None;
    };
    object(o.properties.get_mut(field))
}

fn set_length(o: &mut Object, min: Option<usize>, max: usize, pattern: &str) {
    o.min_length = min;
    o.max_length = Some(max);
    o.pattern = Some(pattern.into());
}

/// `NewUser::validate`, `NewMessage::validate` and the group titles' rule, as schema
/// constraints.
fn constrain_bodies(doc: &mut OpenApi) {
    if let Some(o) = property(doc, "NewUser", "username") {
        set_length(
            o,
            Some(USERNAME_MIN_CHARS),
            USERNAME_MAX_CHARS,
            USERNAME_PATTERN,
        );
        o.description = Some(format!(
            "{USERNAME_MIN_CHARS}–{USERNAME_MAX_CHARS} characters, each a Unicode letter or digit"
        ));
    }
    if let Some(o) = property(doc, "NewUser", "display_name") {
        set_length(o, None, DISPLAY_NAME_MAX_CHARS, NO_NUL_PATTERN);
        o.description = Some(format!(
            "At most {DISPLAY_NAME_MAX_CHARS} characters; absent or blank: the username"
        ));
    }
    if let Some(o) = property(doc, "NewMessage", "content") {
        set_length(o, Some(1), CONTENT_MAX_CHARS, CONTENT_PATTERN);
        o.description = Some(format!(
            "1–{CONTENT_MAX_CHARS} characters once stripped of surrounding white space; no NUL"
        ));
    }
    if let Some(o) = property(doc, "NewMessage", "client_id") {
        set_length(o, Some(1), CLIENT_ID_MAX_CHARS, NO_NUL_PATTERN);
    }
    for schema in ["NewGroup", "Rename"] {
        if let Some(o) = property(doc, schema, "title") {
            set_length(o, Some(1), TITLE_MAX_CHARS, CONTENT_PATTERN);
            o.description = Some(format!(
                "1–{TITLE_MAX_CHARS} characters once stripped of surrounding white space; no NUL"
            ));
        }
    }
}

/// `model::Page::new`: `skip` ≥ 0, `limit` in 1..=`MAX_PAGE_LIMIT`, with each list's default;
/// `UserSearchRequest::validate`: `q` of 1..=`SEARCH_MAX_CHARS` characters, not only white space.
fn constrain_parameters(path: &str, op: &mut Operation) {
    let default_limit = match path {
        "/users/" => DEFAULT_USERS_LIMIT,
        _ => DEFAULT_HISTORY_LIMIT,
    };
    for param in op.parameters.iter_mut().flatten() {
        let RefOr::T(param) = param else { continue };
        let Some(o) = object(param.schema.as_mut()) else {
            continue;
        };
        match param.name.as_str() {
            "skip" => {
                o.minimum = Some(0.into());
                o.default = Some(0.into());
            }
            "limit" => {
                o.minimum = Some(1.into());
                o.maximum = Some((MAX_PAGE_LIMIT as isize).into());
                o.default = Some(default_limit.into());
            }
            "q" => set_length(o, Some(1), SEARCH_MAX_CHARS, CONTENT_PATTERN),
            _ => {}
        }
    }
}

fn error_response(op: &mut Operation, status: u16, description: &str) {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .build();
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| {
            ResponseBuilder::new()
                .description(description)
                .content("application/json", content)
                .into()
        });
}

/// The statuses the derive's annotations leave out because every operation of a kind has them.
fn add_statuses(path: &str, method: &str, op: &mut Operation) {
    let tags = op.tags.clone().unwrap_or_default();
    error_response(op, 431, "Request header fields too large");
    if tags.iter().any(|t| t == "users" || t == "messages") {
        error_response(op, 503, "storage unavailable");
    }
    if method == "post" {
        error_response(op, 400, "The body could not be read in time");
        error_response(op, 413, "Body too large");
        error_response(op, 415, "Content-Type must be application/json");
        error_response(op, 422, "Malformed JSON or invalid fields");
    }
    if path.contains('{') {
        error_response(op, 422, "Non-integer id");
    }
}

/// Security as the settings make it: none when auth is off (then no 401 or 403 can happen);
/// bearer on every operation that checks the caller when it is on, and on `POST /users/` only
/// when signup is `admin`.
fn secure(path: &str, method: &str, op: &mut Operation, auth: AuthMode, signup: Signup) {
    let signing_up = path == "/users/" && method == "post";
    let checked = if signing_up {
        auth != AuthMode::Off && signup == Signup::Admin
    } else {
        auth != AuthMode::Off && op.security.is_some()
    };
    if checked {
        op.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
    } else {
        op.security = None;
        if auth == AuthMode::Off || signing_up {
            op.responses.responses.remove("401");
            op.responses.responses.remove("403");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn doc(auth: AuthMode, signup: Signup) -> Value {
        serde_json::from_str(&json(auth, signup)).expect("the document is JSON")
    }

    fn param<'a>(doc: &'a Value, path: &str, name: &str) -> &'a Value {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .map(|p| &p["schema"])
            .unwrap_or_else(|| panic!("{path} has parameter {name}"))
    }

    #[test]
    fn rules_are_the_models_constants() {
        let doc = doc(AuthMode::Off, Signup::Open);
        let schemas = &doc["components"]["schemas"];
        let username = &schemas["NewUser"]["properties"]["username"];
        assert_eq!(username["minLength"], json!(USERNAME_MIN_CHARS));
        assert_eq!(username["maxLength"], json!(USERNAME_MAX_CHARS));
        assert_eq!(username["pattern"], USERNAME_PATTERN);
        let display = &schemas["NewUser"]["properties"]["display_name"];
        assert_eq!(display["maxLength"], json!(DISPLAY_NAME_MAX_CHARS));
        let content = &schemas["NewMessage"]["properties"]["content"];
        assert_eq!(content["minLength"], 1);
        assert_eq!(content["maxLength"], json!(CONTENT_MAX_CHARS));
        let client_id = &schemas["NewMessage"]["properties"]["client_id"];
        assert_eq!(client_id["maxLength"], json!(CLIENT_ID_MAX_CHARS));
        for (path, default) in [
            ("/users/", DEFAULT_USERS_LIMIT),
            ("/messages/", DEFAULT_HISTORY_LIMIT),
        ] {
            assert_eq!(param(&doc, path, "skip")["minimum"], 0, "{path}");
            let limit = param(&doc, path, "limit");
            assert_eq!(limit["minimum"], 1, "{path}");
            assert_eq!(limit["maximum"], json!(MAX_PAGE_LIMIT), "{path}");
            assert_eq!(limit["default"], json!(default), "{path}");
        }
        let q = param(&doc, "/users/", "q");
        assert_eq!(q["minLength"], 1);
        assert_eq!(q["maxLength"], json!(SEARCH_MAX_CHARS));
        assert_eq!(q["pattern"], CONTENT_PATTERN);
    }

    #[test]
    fn error_detail_is_a_sentence_or_the_fastapi_list() {
        let doc = doc(AuthMode::Off, Signup::Open);
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["ErrorBody"]["properties"]["detail"]["$ref"],
            "#/components/schemas/Detail"
        );
        let detail = &schemas["Detail"];
        let one_of = detail["oneOf"].as_array().expect("detail is oneOf");
        assert_eq!(one_of.len(), 2, "{detail}");
        assert!(one_of.iter().any(|s| s["type"] == "string"), "{detail}");
        assert!(one_of.iter().any(|s| s["type"] == "array"), "{detail}");
        assert_eq!(
            schemas["Invalid"]["required"],
            json!(["loc", "msg", "type"])
        );
    }

    #[test]
    fn security_only_when_auth_is_on() {
        let off = doc(AuthMode::Off, Signup::Open).to_string();
        assert!(!off.contains("\"security"), "auth off declares security");
        assert!(!off.contains("\"401\""), "auth off documents 401");
        let on = doc(AuthMode::Token, Signup::Open);
        assert_eq!(
            on["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert_eq!(
            on["paths"]["/users/"]["get"]["security"],
            json!([{"bearer": []}])
        );
        assert!(on["paths"]["/users/"]["post"]["security"].is_null());
        assert!(on["paths"]["/users/"]["post"]["responses"]["401"].is_null());
        let admin = doc(AuthMode::Token, Signup::Admin);
        assert_eq!(
            admin["paths"]["/users/"]["post"]["security"],
            json!([{"bearer": []}])
        );
        assert!(admin["paths"]["/users/"]["post"]["responses"]["401"].is_object());
    }
}
