//! The router: from a request's method and path to its handler, and what every response gets.
//!
//! One table ([`Route::parse`]) knows every path; unknown paths are 404, known paths with the
//! wrong method 405, and a path that only differs by its trailing slash is redirected (307) as
//! the original did. Every request gets an id (logged on each of its lines and returned in
//! `x-request-id`) and the CORS headers, and is counted in the metrics under its route's
//! template ([`Route::template`]), never its raw path.

use crate::auth::{bearer_token, Authenticator, Caller};
use crate::config::{CorsOrigins, Limits, Signup};
use crate::docs;
use crate::error::ApiError;
use crate::limits::Guards;
use crate::telemetry;
use crate::ws;
use crate::{api, app};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use minichat_core::ChatService;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub type Response = http::Response<Full<Bytes>>;

/// What every handler shares: the chat, access control, limits. Behind one `Arc`.
pub struct AppState {
    pub chat: Arc<dyn ChatService>,
    pub auth: Authenticator,
    pub signup: Signup,
    pub limits: Limits,
    /// Send rate and connection counts.
    pub guards: Guards,
    pub cors: CorsOrigins,
    /// Cancelled when the server shuts down; WebSocket loops watch it.
    pub shutdown: CancellationToken,
    /// WebSocket connections, which outlive their request; awaited at shutdown.
    pub tasks: TaskTracker,
    /// The OpenAPI document, serialised once.
    pub openapi_json: Bytes,
    next_request_id: AtomicU64,
}

impl AppState {
    pub fn new(
        chat: Arc<dyn ChatService>,
        auth: Authenticator,
        signup: Signup,
        limits: Limits,
        cors: CorsOrigins,
        shutdown: CancellationToken,
    ) -> AppState {
        AppState {
            chat,
            auth,
            signup,
            guards: Guards::new(&limits),
            limits,
            cors,
            shutdown,
            tasks: crate::server::new_task_tracker(),
            openapi_json: docs::openapi_json(),
            next_request_id: AtomicU64::new(1),
        }
    }

    /// Who the request acts as, from its `Authorization` header.
    pub fn caller(&self, req: &Request<Incoming>) -> Caller {
        self.auth
            .caller(bearer_token(req.headers().get(header::AUTHORIZATION)), None)
    }
}

/// Every path the server knows. Ids stay raw text here: parsing them is the handler's job, so
/// that `/users/abc` is a 422 on a known route rather than a 404.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    Root,
    Health,
    Metrics,
    OpenApi,
    Docs(&'a str),
    App(&'a str),
    Redoc,
    RedocScript,
    Users,
    User(&'a str),
    Messages,
    RecentMessages(&'a str),
    ReadState,
    WebSocket(&'a str),
}

impl<'a> Route<'a> {
    pub fn parse(path: &'a str) -> Option<Route<'a>> {
        let route = match path {
            "/" => Route::Root,
            "/health" => Route::Health,
            "/metrics" => Route::Metrics,
            "/openapi.json" => Route::OpenApi,
            "/redoc" => Route::Redoc,
            "/redoc/redoc.standalone.js" => Route::RedocScript,
            "/users/" => Route::Users,
            "/messages/" => Route::Messages,
            "/messages/read" => Route::ReadState,
            "/docs" => Route::Docs(""),
            "/app" => Route::App(""),
            _ => {
                if let Some(tail) = path.strip_prefix("/docs/") {
                    Route::Docs(tail)
                } else if let Some(tail) = path.strip_prefix("/app/") {
                    Route::App(tail)
                } else if let Some(id) = single_segment(path, "/users/") {
                    Route::User(id)
                } else if let Some(id) = single_segment(path, "/messages/recent/") {
                    Route::RecentMessages(id)
                } else if let Some(id) = single_segment(path, "/ws/") {
                    Route::WebSocket(id)
                } else {
                    return None;
                }
            }
        };
        Some(route)
    }

    /// The route's path template, the `route` label of the HTTP metrics: a fixed set of values,
    /// whatever the paths requested.
    pub fn template(&self) -> &'static str {
        match self {
            Route::Root => "/",
            Route::Health => "/health",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/openapi.json",
            Route::Docs(_) => "/docs/{file}",
            Route::App(_) => "/app/{file}",
            Route::Redoc => "/redoc",
            Route::RedocScript => "/redoc/redoc.standalone.js",
            Route::Users => "/users/",
            Route::User(_) => "/users/{user_id}",
            Route::Messages => "/messages/",
            Route::RecentMessages(_) => "/messages/recent/{user_id}",
            Route::ReadState => "/messages/read",
            Route::WebSocket(_) => "/ws/{user_id}",
        }
    }

    /// The methods this route answers (besides `OPTIONS`, answered for CORS everywhere).
    fn methods(&self) -> &'static [Method] {
        match self {
            Route::Users | Route::Messages => &[Method::GET, Method::POST],
            _ => &[Method::GET],
        }
    }
}

fn single_segment<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix)
        .filter(|rest| !rest.is_empty() && !rest.contains('/'))
}

/// The service function hyper calls for every request.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Result<Response, Infallible> {
    let id = state.next_request_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("request", id, method = %req.method(), path = %req.uri().path());
    async move {
        let started = Instant::now();
        // Unknown paths (404s, trailing-slash redirects) share one label value.
        let template = Route::parse(req.uri().path()).map_or("unmatched", |r| r.template());
        let method = req.method().clone();
        let origin = req.headers().get(header::ORIGIN).cloned();
        let mut response = if req.method() == Method::OPTIONS {
            preflight(&req)
        } else {
            match dispatch(&state, req).await {
                Ok(response) => response,
                Err(e) => e.into_response(),
            }
        };
        add_cors(&state.cors, origin.as_ref(), &mut response);
        if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
            response.headers_mut().insert("x-request-id", v);
        }
        let elapsed = started.elapsed();
        telemetry::http_request(template, &method, response.status(), elapsed);
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

async fn dispatch(state: &Arc<AppState>, req: Request<Incoming>) -> Result<Response, ApiError> {
    let path = req.uri().path().to_owned();
    let Some(route) = Route::parse(&path) else {
        return redirect_slash(&req).ok_or(ApiError::NotFound);
    };
    if !route.methods().contains(req.method()) {
        return Err(ApiError::MethodNotAllowed);
    }
    let post = req.method() == Method::POST;
    match route {
        Route::Root => Ok(api::root()),
        Route::Health => Ok(api::health(state).await),
        Route::Metrics => Ok(telemetry::metrics()),
        Route::OpenApi => Ok(docs::openapi(state)),
        Route::Docs(tail) => docs::swagger(&path, tail),
        Route::App(tail) => app::serve(&path, tail),
        Route::Redoc => Ok(docs::redoc_page()),
        Route::RedocScript => Ok(docs::redoc_script()),
        Route::Users if post => api::create_user(state, req).await,
        Route::Users => api::list_users(state, req).await,
        Route::User(id) => api::get_user(state, req, id).await,
        Route::Messages if post => api::send_message(state, req).await,
        Route::Messages => api::history(state, req).await,
        Route::RecentMessages(id) => api::recent_messages(state, req, id).await,
        Route::ReadState => api::read_state(state, req).await,
        Route::WebSocket(id) => ws::upgrade(state, req, id),
    }
}

/// `/users` → `/users/` and `/users/1/` → `/users/1`, keeping the query, as the original did.
fn redirect_slash(req: &Request<Incoming>) -> Option<Response> {
    let path = req.uri().path();
    let other = match path.strip_suffix('/') {
        Some(stripped) if !stripped.is_empty() => stripped.to_owned(),
        Some(_) => return None,
        None => format!("{path}/"),
    };
    if matches!(Route::parse(&other), None | Some(Route::WebSocket(_))) {
        return None;
    }
    let location = match req.uri().query() {
        Some(q) => format!("{other}?{q}"),
        None => other,
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_str(&location).ok()?);
    Some(response)
}

fn preflight(req: &Request<Incoming>) -> Response {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    let requested = req
        .headers()
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

fn add_cors(cors: &CorsOrigins, origin: Option<&HeaderValue>, response: &mut Response) {
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

/// A JSON response.
pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "response did not serialise");
            let mut response = Response::new(Full::new(Bytes::from_static(
                b"{\"detail\":\"Internal server error\"}",
            )));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse() {
        assert_eq!(Route::parse("/"), Some(Route::Root));
        assert_eq!(Route::parse("/users/"), Some(Route::Users));
        assert_eq!(Route::parse("/users/12"), Some(Route::User("12")));
        assert_eq!(Route::parse("/users/abc"), Some(Route::User("abc")));
        assert_eq!(Route::parse("/users"), None);
        assert_eq!(Route::parse("/users/1/x"), None);
        assert_eq!(
            Route::parse("/messages/recent/3"),
            Some(Route::RecentMessages("3"))
        );
        assert_eq!(Route::parse("/ws/3"), Some(Route::WebSocket("3")));
        assert_eq!(Route::parse("/docs"), Some(Route::Docs("")));
        assert_eq!(
            Route::parse("/docs/swagger-ui.css"),
            Some(Route::Docs("swagger-ui.css"))
        );
        assert_eq!(Route::parse("/nope"), None);
        assert_eq!(Route::parse("/metrics"), Some(Route::Metrics));
    }

    #[test]
    fn templates_never_hold_the_raw_path() {
        assert_eq!(
            Route::parse("/users/12345").map(|r| r.template()),
            Some("/users/{user_id}")
        );
        assert_eq!(
            Route::parse("/messages/recent/9").map(|r| r.template()),
            Some("/messages/recent/{user_id}")
        );
        assert_eq!(
            Route::parse("/docs/swagger-ui.css").map(|r| r.template()),
            Some("/docs/{file}")
        );
    }
}
