//! The router: the one table of every route, and what every request goes through.
//!
//! [`ROUTES`] is the single source of a route's path template, method, metrics label, handler
//! and place in `GET /`'s endpoint list, and says whether it is an API operation; a unit test
//! holds the OpenAPI document (`docs::ApiDoc`) to exactly those. Adding a route is one entry
//! here, its handler with its `#[utoipa::path]`, and that path in `ApiDoc`. Unknown paths are
//! 404, known paths with the wrong method 405 (with `Allow`), `HEAD` is answered on every GET
//! route like GET without the body, and a path that only differs by its trailing slash is
//! redirected (307) as the original did. A request whose headers pass the limit is a 431
//! before any of that. Every request gets an id (logged on each of its lines and returned in
//! `x-request-id`) and the CORS headers, and is counted in the metrics under its route's
//! label, never its raw path.
//!
//! Layers point down: handlers (`api`, `ws`, `docs`, `app`, `telemetry`) use `state`,
//! `response` and `error`, and never this file; only `server` uses it.

use crate::error::ApiError;
use crate::response::{redirect, Response};
use crate::state::AppState;
use crate::{api, app, conversations, cors, docs, extract, telemetry, ws};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::Instant;
use tracing::Instrument;

/// What a handler gets: the shared state, the request, and the text each of its path
/// template's parameters captured, in order. Ids stay raw text here: parsing them is the
/// handler's job, so that `/users/abc` is a 422 on a known route rather than a 404.
struct Call {
    state: Arc<AppState>,
    req: Request<Incoming>,
    params: Vec<String>,
}

impl Call {
    /// What the `i`th parameter captured (empty when the template has fewer).
    fn param(&self, i: usize) -> &str {
        self.params.get(i).map_or("", String::as_str)
    }
}

type Reply = Pin<Box<dyn Future<Output = Result<Response, ApiError>> + Send>>;
type Handler = fn(Call) -> Reply;

fn reply(future: impl Future<Output = Result<Response, ApiError>> + Send + 'static) -> Reply {
    Box::pin(future)
}

/// Whether a route is in the OpenAPI document.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Doc {
    /// An operation of the API, documented by its handler's `#[utoipa::path]`.
    Api,
    /// A page, a file, or the document itself: not an API operation.
    Page,
}

/// One method on one path.
struct Endpoint {
    method: Method,
    /// The path template: literal text and parameters: `{name}` takes one non-empty
    /// segment, `{*name}` (last only) the non-empty rest of the path.
    path: &'static str,
    /// The `route` label of the HTTP metrics (the path, unless set).
    label: &'static str,
    /// Its name in `GET /`'s endpoint list, if listed there.
    listed: Option<&'static str>,
    /// Read by the unit test that holds `docs::ApiDoc` to the table.
    #[cfg_attr(not(test), allow(dead_code))]
    doc: Doc,
    /// A WebSocket upgrade: neither redirected for a trailing slash nor answered to `HEAD`.
    upgrade: bool,
    handler: Handler,
}

fn get(path: &'static str, doc: Doc, handler: Handler) -> Endpoint {
    Endpoint {
        method: Method::GET,
        path,
        label: path,
        listed: None,
        doc,
        upgrade: false,
        handler,
    }
}

fn post(path: &'static str, doc: Doc, handler: Handler) -> Endpoint {
    Endpoint {
        method: Method::POST,
        ..get(path, doc, handler)
    }
}

fn patch(path: &'static str, doc: Doc, handler: Handler) -> Endpoint {
    Endpoint {
        method: Method::PATCH,
        ..get(path, doc, handler)
    }
}

fn delete(path: &'static str, doc: Doc, handler: Handler) -> Endpoint {
    Endpoint {
        method: Method::DELETE,
        ..get(path, doc, handler)
    }
}

impl Endpoint {
    fn label(self, label: &'static str) -> Endpoint {
        Endpoint { label, ..self }
    }

    fn listed(self, name: &'static str) -> Endpoint {
        Endpoint {
            listed: Some(name),
            ..self
        }
    }

    fn upgrade(self) -> Endpoint {
        Endpoint {
            upgrade: true,
            ..self
        }
    }
}

/// Swagger UI's page and files share one label, and so do the chat page's.
const DOCS: &str = "/docs/{file}";
const APP: &str = "/app/{file}";

/// Every route.
static ROUTES: LazyLock<Vec<Endpoint>> = LazyLock::new(|| {
    use Doc::{Api, Page};
    vec![
        get("/", Api, |_| reply(async { Ok(api::root(&endpoints())) })),
        get("/health", Api, |c| {
            reply(async move { Ok(api::health(&c.state).await) })
        })
        .listed("health"),
        get("/metrics", Api, |_| {
            reply(async { Ok(telemetry::metrics()) })
        })
        .listed("metrics"),
        get("/openapi.json", Page, |c| {
            reply(async move { Ok(docs::openapi(&c.state)) })
        })
        .listed("openapi"),
        get("/docs", Page, |_| reply(async { docs::swagger("") }))
            .label(DOCS)
            .listed("docs"),
        get("/docs/", Page, |_| reply(async { docs::swagger("") })).label(DOCS),
        get("/docs/{*file}", Page, |c| {
            reply(async move { docs::swagger(c.param(0)) })
        })
        .label(DOCS),
        get("/redoc", Page, |_| reply(async { Ok(docs::redoc_page()) })).listed("redoc"),
        get("/redoc/redoc.standalone.js", Page, |_| {
            reply(async { Ok(docs::redoc_script()) })
        }),
        get("/app", Page, |_| reply(async { app::serve("/app", "") })).label(APP),
        get("/app/", Page, |_| reply(async { app::serve("/app/", "") }))
            .label(APP)
            .listed("app"),
        get("/app/{*file}", Page, |c| {
            reply(async move { app::serve(c.req.uri().path(), c.param(0)) })
        })
        .label(APP),
        post("/users/", Api, |c| {
            reply(async move { api::create_user(&c.state, c.req).await })
        })
        .listed("users"),
        get("/users/", Api, |c| {
            reply(async move { api::list_users(&c.state, c.req).await })
        }),
        get("/users/{user_id}", Api, |c| {
            reply(async move {
                let id = c.param(0).to_owned();
                api::get_user(&c.state, c.req, &id).await
            })
        }),
        post("/messages/", Api, |c| {
            reply(async move { api::send_message(&c.state, c.req).await })
        })
        .listed("messages"),
        get("/messages/", Api, |c| {
            reply(async move { api::history(&c.state, c.req).await })
        }),
        get("/messages/recent/{user_id}", Api, |c| {
            reply(async move {
                let id = c.param(0).to_owned();
                api::recent_messages(&c.state, c.req, &id).await
            })
        })
        .listed("recent_messages"),
        get("/messages/read", Api, |c| {
            reply(async move { api::read_state(&c.state, c.req).await })
        }),
        post("/conversations/", Api, |c| {
            reply(async move { conversations::create(&c.state, c.req).await })
        })
        .listed("conversations"),
        get("/conversations/", Api, |c| {
            reply(async move { conversations::list(&c.state, c.req).await })
        }),
        get("/conversations/{conversation_id}", Api, |c| {
            reply(async move {
                let id = c.param(0).to_owned();
                conversations::get(&c.state, c.req, &id).await
            })
        }),
        patch("/conversations/{conversation_id}", Api, |c| {
            reply(async move {
                let id = c.param(0).to_owned();
                conversations::rename(&c.state, c.req, &id).await
            })
        }),
        post("/conversations/{conversation_id}/members", Api, |c| {
            reply(async move {
                let id = c.param(0).to_owned();
                conversations::add_members(&c.state, c.req, &id).await
            })
        }),
        delete(
            "/conversations/{conversation_id}/members/{member_id}",
            Api,
            |c| {
                reply(async move {
                    let (id, member) = (c.param(0).to_owned(), c.param(1).to_owned());
                    conversations::remove_member(&c.state, c.req, &id, &member).await
                })
            },
        ),
        get("/ws/{user_id}", Api, |c| {
            reply(async move {
                let id = c.param(0).to_owned();
                ws::upgrade(&c.state, c.req, &id)
            })
        })
        .listed("websocket")
        .upgrade(),
    ]
});

/// `GET /`'s endpoint list: (name, path) of every listed route.
fn endpoints() -> Vec<(&'static str, &'static str)> {
    ROUTES
        .iter()
        .filter_map(|e| e.listed.map(|name| (name, e.path)))
        .collect()
}

/// What each parameter of `template` captures when `path` fits it (none for a template
/// without parameters).
fn capture<'p>(template: &str, path: &'p str) -> Option<Vec<&'p str>> {
    let mut params = Vec::new();
    let (mut template, mut rest) = (template, path);
    loop {
        let Some(open) = template.find('{') else {
            return (template == rest).then_some(params);
        };
        rest = rest.strip_prefix(&template[..open])?;
        let close = open + template[open..].find('}')?;
        if template[open..].starts_with("{*") {
            return (!rest.is_empty()).then(|| {
                params.push(rest);
                params
            });
        }
        let end = rest.find('/').unwrap_or(rest.len());
        if end == 0 {
            return None;
        }
        params.push(&rest[..end]);
        rest = &rest[end..];
        template = &template[close + 1..];
    }
}

/// The endpoints of the one path template `path` fits (each method of a route), and what its
/// parameters captured; empty when no route has that path.
fn lookup(path: &str) -> (Vec<&'static Endpoint>, Vec<&str>) {
    let mut found: Vec<&'static Endpoint> = Vec::new();
    let mut captured = Vec::new();
    for endpoint in ROUTES.iter() {
        if let Some(param) = capture(endpoint.path, path) {
            if found.is_empty() || found[0].path == endpoint.path {
                found.push(endpoint);
                captured = param;
            }
        }
    }
    (found, captured)
}

/// The service function hyper calls for every request.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Result<Response, Infallible> {
    let id = state.request_ids.next();
    let span =
        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    async move {
        let started = Instant::now();
        let (route, param) = lookup(req.uri().path());
        // Unknown paths (404s, trailing-slash redirects) share one label value.
        let label = route.first().map_or("unmatched", |e| e.label);
        let method = req.method().clone();
        let origin = req.headers().get(header::ORIGIN).cloned();
        let head = extract::headers_within(req.headers(), state.limits.max_header_bytes);
        let mut response = if let Err(too_large) = head {
            too_large.into_response()
        } else if method == Method::OPTIONS {
            cors::preflight(req.headers())
        } else {
            let params = param.into_iter().map(str::to_owned).collect();
            dispatch(state.clone(), req, &route, params).await
        };
        cors::allow_origin(&state.cors, origin.as_ref(), &mut response);
        if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
            response.headers_mut().insert("x-request-id", v);
        }
        let elapsed = started.elapsed();
        telemetry::http_request(label, &method, response.status(), elapsed);
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms = elapsed.as_secs_f64() * 1e3,
            "served"
        );
        Ok(response)
    }
    .instrument(span)
    .await
}

/// Runs the endpoint of `route` for the request's method.
async fn dispatch(
    state: Arc<AppState>,
    req: Request<Incoming>,
    route: &[&'static Endpoint],
    params: Vec<String>,
) -> Response {
    if route.is_empty() {
        return redirect_slash(&req).unwrap_or_else(|| ApiError::NotFound.into_response());
    }
    let head = req.method() == Method::HEAD;
    let endpoint = route
        .iter()
        .find(|e| e.method == req.method() || (head && e.method == Method::GET && !e.upgrade));
    let Some(endpoint) = endpoint else {
        let mut response = ApiError::MethodNotAllowed.into_response();
        if let Ok(allow) = HeaderValue::from_str(&allowed_methods(route)) {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        return response;
    };
    let call = Call { state, req, params };
    let reply = (endpoint.handler)(call);
    let answer = if endpoint.method == Method::GET {
        reply.await
    } else {
        // A change runs to its end even if its client goes away. hyper drops a request's
        // future when its connection closes, and a send (or a membership change) dropped
        // between its commit and its fan-out would be stored, but reach no socket live.
        match tokio::spawn(reply.instrument(tracing::Span::current())).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::error!(error = %e, "a request's handler panicked");
                Err(ApiError::Internal)
            }
        }
    };
    let response = answer.unwrap_or_else(ApiError::into_response);
    if head {
        without_body(response)
    } else {
        response
    }
}

/// The `Allow` header of a route: its methods, `HEAD` with `GET`, and `OPTIONS` (CORS).
fn allowed_methods(route: &[&Endpoint]) -> String {
    let mut methods = Vec::new();
    for endpoint in route {
        methods.push(endpoint.method.as_str());
        if endpoint.method == Method::GET && !endpoint.upgrade {
            methods.push(Method::HEAD.as_str());
        }
    }
    methods.push(Method::OPTIONS.as_str());
    methods.join(", ")
}

/// A GET response answered to `HEAD`: its status and headers, its length, no body.
fn without_body(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    if let Some(length) = body.size_hint().exact() {
        parts
            .headers
            .entry(header::CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(length));
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}

/// `/users` → `/users/` and `/users/1/` → `/users/1`, keeping the query, as the original did.
fn redirect_slash<B>(req: &Request<B>) -> Option<Response> {
    let path = req.uri().path();
    let other = match path.strip_suffix('/') {
        Some(stripped) if !stripped.is_empty() => stripped.to_owned(),
        Some(_) => return None,
        None => format!("{path}/"),
    };
    let (route, _) = lookup(&other);
    if route.first().is_none_or(|e| e.upgrade) {
        return None;
    }
    match req.uri().query() {
        Some(q) => redirect(&format!("{other}?{q}")),
        None => redirect(&other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn route_of(path: &str) -> Option<(&'static str, String)> {
        let (route, params) = lookup(path);
        route.first().map(|e| (e.path, params.join(",")))
    }

    fn at(template: &'static str, param: &str) -> Option<(&'static str, String)> {
        Some((template, param.to_owned()))
    }

    #[test]
    fn paths_find_their_route() {
        assert_eq!(route_of("/"), at("/", ""));
        assert_eq!(route_of("/users/"), at("/users/", ""));
        assert_eq!(route_of("/users/12"), at("/users/{user_id}", "12"));
        assert_eq!(route_of("/users/abc"), at("/users/{user_id}", "abc"));
        assert_eq!(route_of("/users"), None);
        assert_eq!(route_of("/users/1/x"), None);
        assert_eq!(
            route_of("/messages/recent/3"),
            at("/messages/recent/{user_id}", "3")
        );
        assert_eq!(route_of("/messages/read"), at("/messages/read", ""));
        assert_eq!(route_of("/ws/3"), at("/ws/{user_id}", "3"));
        assert_eq!(route_of("/ws/"), None);
        assert_eq!(route_of("/docs"), at("/docs", ""));
        assert_eq!(route_of("/docs/"), at("/docs/", ""));
        assert_eq!(
            route_of("/docs/swagger-ui.css"),
            at("/docs/{*file}", "swagger-ui.css")
        );
        assert_eq!(route_of("/app/a/b.js"), at("/app/{*file}", "a/b.js"));
        assert_eq!(route_of("/nope"), None);
        assert_eq!(route_of("/metrics"), at("/metrics", ""));
        assert_eq!(
            route_of("/conversations/4/members/9"),
            at(
                "/conversations/{conversation_id}/members/{member_id}",
                "4,9"
            )
        );
        assert_eq!(
            route_of("/conversations/4/members"),
            at("/conversations/{conversation_id}/members", "4")
        );
        assert_eq!(route_of("/conversations//members"), None);
        assert_eq!(route_of("/conversations/4/members/"), None);
    }

    #[test]
    fn a_path_has_its_methods_together() {
        let (route, _) = lookup("/users/");
        let methods: Vec<_> = route.iter().map(|e| e.method.clone()).collect();
        assert_eq!(methods, [Method::POST, Method::GET]);
        assert_eq!(allowed_methods(&route), "POST, GET, HEAD, OPTIONS");
        let (route, _) = lookup("/ws/1");
        assert_eq!(allowed_methods(&route), "GET, OPTIONS");
    }

    #[test]
    fn templates_are_well_formed_and_never_overlap() {
        let mut seen = BTreeSet::new();
        for endpoint in ROUTES.iter() {
            assert!(
                seen.insert((endpoint.path, endpoint.method.as_str())),
                "{} {} twice",
                endpoint.method,
                endpoint.path
            );
            if let Some(rest) = endpoint.path.find("{*").map(|at| &endpoint.path[at..]) {
                assert!(
                    rest.ends_with('}') && rest.matches('{').count() == 1,
                    "{}: a rest parameter is last",
                    endpoint.path
                );
            }
            // A path of this template finds this template, not another one.
            let mut example = String::new();
            let mut in_param = false;
            for ch in endpoint.path.chars() {
                match ch {
                    '{' => {
                        in_param = true;
                        example.push('1');
                    }
                    '}' => in_param = false,
                    _ if !in_param => example.push(ch),
                    _ => {}
                }
            }
            assert_eq!(lookup(&example).0[0].path, endpoint.path, "{example}");
        }
    }

    #[test]
    fn labels_never_hold_the_raw_path() {
        let label = |path: &str| lookup(path).0.first().map(|e| e.label);
        assert_eq!(label("/users/12345"), Some("/users/{user_id}"));
        assert_eq!(
            label("/messages/recent/9"),
            Some("/messages/recent/{user_id}")
        );
        assert_eq!(label("/docs/swagger-ui.css"), Some("/docs/{file}"));
        assert_eq!(label("/docs"), Some("/docs/{file}"));
        assert_eq!(label("/app/"), Some("/app/{file}"));
        for endpoint in ROUTES.iter() {
            assert!(!endpoint.label.contains("{*"), "{}", endpoint.label);
        }
    }

    /// `GET /` lists what the original listed (and the pages added since), each a route.
    #[test]
    fn the_endpoint_list_comes_from_the_table() {
        let listed: Vec<_> = endpoints();
        let names: BTreeSet<_> = listed.iter().map(|(name, _)| *name).collect();
        assert_eq!(names.len(), listed.len(), "names are unique");
        let expected = [
            ("app", "/app/"),
            ("conversations", "/conversations/"),
            ("docs", "/docs"),
            ("health", "/health"),
            ("messages", "/messages/"),
            ("metrics", "/metrics"),
            ("openapi", "/openapi.json"),
            ("recent_messages", "/messages/recent/{user_id}"),
            ("redoc", "/redoc"),
            ("users", "/users/"),
            ("websocket", "/ws/{user_id}"),
        ];
        let listed: BTreeSet<_> = listed.into_iter().collect();
        assert_eq!(listed, expected.into_iter().collect());
    }

    /// The OpenAPI document has an operation for each API route of the table, at its path
    /// and method, and nothing else.
    #[test]
    fn openapi_is_the_tables_api_routes() {
        let from_table: BTreeSet<(String, String)> = ROUTES
            .iter()
            .filter(|e| e.doc == Doc::Api)
            .map(|e| (e.path.to_owned(), e.method.as_str().to_lowercase()))
            .collect();
        let doc = serde_json::to_value(<docs::ApiDoc as utoipa::OpenApi>::openapi()).expect("json");
        let mut in_doc = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                assert!(
                    operation["tags"][0].is_string(),
                    "{method} {path} has a tag"
                );
                in_doc.insert((path.clone(), method.clone()));
            }
        }
        assert_eq!(in_doc, from_table, "docs::ApiDoc's paths against ROUTES");
        assert!(from_table.contains(&("/ws/{user_id}".into(), "get".into())));
    }

    #[test]
    fn slash_variants_redirect_except_sockets() {
        let req = |uri: &str| Request::builder().uri(uri).body(()).expect("request");
        let location = |uri: &str| {
            redirect_slash(&req(uri))
                .map(|r| r.headers()[header::LOCATION].to_str().map(str::to_owned))
        };
        assert_eq!(
            location("/users?limit=1").map(Result::ok),
            Some(Some("/users/?limit=1".into()))
        );
        assert_eq!(
            location("/users/1/").map(Result::ok),
            Some(Some("/users/1".into()))
        );
        assert_eq!(
            location("/redoc/").map(Result::ok),
            Some(Some("/redoc".into()))
        );
        assert!(location("/ws/1/").is_none());
        assert!(location("/nope").is_none());
        assert!(location("/").is_none());
    }
}
