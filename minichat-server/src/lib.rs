//! # minichat-server
//!
//! A thin hyper server that mounts a [`minichat_core::ChatService`] as the REST and WebSocket
//! endpoints of the wire contract. It has no SQL in it: storage, caching and fan-out are the
//! core's. Use it as the `minichat-server` binary, or embed it:
//!
//! ```
//! # #[tokio::main]
//! # async fn main() -> Result<(), minichat_server::ServerError> {
//! use minichat_server::{Server, Settings};
//!
//! // The in-memory defaults, on a free port.
//! let settings = Settings { bind: "127.0.0.1:0".parse().expect("an address"), ..Settings::default() };
//! let server = Server::bind(settings).await?.spawn();
//! println!("open http://{}/app/", server.addr());
//! server.shutdown().await; // or `run_until(minichat_server::shutdown_signal())` on a `Server`
//! # Ok(()) }
//! ```
//!
//! Files, one concern each, in layers that only point down:
//!
//! - `server` (accept loop, timeouts, shutdown) uses `routes` (the one route table, request
//!   ids, 404/405/307, `HEAD`), which uses the handlers;
//! - the handlers: `api` (REST: users and messages), `conversations` (REST: groups and the
//!   inbox), `ws` (the WebSocket connection), `docs` (OpenAPI, Swagger UI,
//!   ReDoc), `app` (the embedded web chat page), `telemetry` (the Prometheus recorder and
//!   `GET /metrics`);
//! - the ground floor they share: `state` (`AppState`), `response` (building responses),
//!   `cors`, `error` (statuses and error bodies), `extract` (parsing input), `auth` (tokens and
//!   who may act as whom), `limits` (send rate, socket caps), `config` (flags and environment),
//!   `ids` (request and socket ids as logged).

mod api;
mod app;
pub mod auth;
pub mod config;
mod conversations;
mod cors;
mod docs;
mod error;
mod extract;
mod ids;
mod limits;
mod openapi;
mod response;
mod routes;
mod server;
mod state;
mod tcp;
mod telemetry;
mod ws;

pub use auth::{AuthMode, Authenticator};
pub use config::{Cli, CorsOrigins, Limits, Settings, Signup};
pub use docs::ApiDoc;
pub use error::ApiError;
pub use server::{shutdown_signal, RunningServer, Server, ServerError};
