//! The server loop: accept connections, serve them with hyper, shut down gracefully.
//!
//! [`Server::bind`] connects the chat's backends and binds the listener, so that every
//! configuration problem surfaces before anything is served. [`Server::run_until`] accepts until
//! its shutdown future resolves, then stops accepting, closes WebSockets with 1001, lets
//! in-flight requests finish (within [`Limits::shutdown_grace`]), and waits for the chat to
//! record the departures of the closed sockets' users ([`ChatService::drain`]).

use crate::auth::{AuthMode, Authenticator};
use crate::config::{Limits, Settings};
use crate::routes;
use crate::state::AppState;
use crate::tcp::Tcp;
use crate::telemetry;
use http::{header, Request};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use minichat_core::{Chat, ChatService};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("MINICHAT_BIND: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Backend(#[from] minichat_core::Error),
}

/// A bound, not yet running, server.
pub struct Server {
    listener: TcpListener,
    state: Arc<AppState>,
}

impl Server {
    /// Connects the backends `settings` names and binds the listener.
    pub async fn bind(settings: Settings) -> Result<Server, ServerError> {
        // Before the backends connect, so that what they record from the start is kept.
        telemetry::install();
        let chat = Chat::connect(&settings.chat).await?;
        Server::bind_with(settings, Arc::new(chat)).await
    }

    /// Binds a server over a chat you built yourself.
    pub async fn bind_with(
        settings: Settings,
        chat: Arc<dyn ChatService>,
    ) -> Result<Server, ServerError> {
        telemetry::install();
        let listener =
            TcpListener::bind(settings.bind)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: settings.bind,
                    source,
                })?;
        if settings.auth == AuthMode::Off {
            tracing::warn!("MINICHAT_AUTH=off: anyone can read and send as any user; use only on a trusted network");
        } else if settings.jwt_secret.is_none() {
            tracing::warn!("MINICHAT_JWT_SECRET is unset: using a random secret, so tokens die with this process and differ per node");
        }
        let auth = Authenticator::new(settings.auth, settings.jwt_secret.as_deref());
        // The document follows the settings (security only when auth is on); built here, above
        // the handlers, so the shared state stays on the ground floor.
        let openapi_json = bytes::Bytes::from(crate::openapi::json(auth.mode(), settings.signup));
        let state = Arc::new(AppState::new(
            chat,
            auth,
            settings.signup,
            settings.limits,
            settings.cors,
            CancellationToken::new(),
            openapi_json,
        ));
        Ok(Server { listener, state })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        let Server { listener, state } = self;
        let connections = Connections::new(&state.limits);
        let graceful = GracefulShutdown::new();
        tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "listening");
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            tokio::spawn(connections.serve(stream, peer, state.clone(), graceful.watcher()));
        }
        drop(listener);
        tracing::info!("shutting down: closing WebSockets, finishing requests");
        state.shutdown.cancel();
        state.tasks.close();
        let drained = async {
            graceful.shutdown().await;
            state.tasks.wait().await;
        };
        if within(state.limits.shutdown_grace, drained).await.is_none() {
            tracing::warn!("shutdown grace period over; dropping what is left");
        }
        // The closed sockets' users leave this node's presence (last seen recorded) before
        // this returns, so nothing is written for them after.
        if within(state.limits.shutdown_grace, state.chat.drain())
            .await
            .is_none()
        {
            tracing::warn!("shutdown grace period over while recording departures");
        }
        tracing::info!("stopped");
    }

    /// Runs in a background task; the handle stops it.
    pub fn spawn(self) -> RunningServer {
        let addr = self.local_addr();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(self.run_until(async move { token.cancelled().await }));
        RunningServer { addr, stop, task }
    }
}

/// A server running in the background.
pub struct RunningServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes WebSockets with 1001, waits for in-flight requests and for the
    /// chat to record the departures of the sockets' users.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// How every connection is served: hyper's settings and the header timeout, written once.
#[derive(Clone)]
struct Connections {
    builder: auto::Builder<TokioExecutor>,
    /// From the connection's start to its request's headers being read; hyper keeps it after
    /// the first byte, [`Connections::serve`] before.
    header_timeout: Duration,
}

impl Connections {
    fn new(limits: &Limits) -> Connections {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.hyper_head_buffer());
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.hyper_head_buffer()).unwrap_or(u32::MAX))
            .max_concurrent_streams(64);
        Connections {
            builder,
            header_timeout: limits.header_read_timeout,
        }
    }

    /// Serves one connection until it ends (or the shutdown `watcher` ends it).
    fn serve(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        state: Arc<AppState>,
        watcher: Watcher,
    ) -> impl Future<Output = ()> + Send + 'static {
        let Connections {
            builder,
            header_timeout,
        } = self.clone();
        async move {
            let _ = stream.set_nodelay(true);
            // hyper's header timer starts only once the protocol is known, which takes a
            // first byte: a client that never sends one is dropped here instead, and so is one
            // that has sent nothing when the server shuts down (a browser's pre-opened
            // connection): nothing is lost, and shutdown need not wait for it.
            let mut first = [0u8; 1];
            let started = tokio::select! {
                peeked = within(header_timeout, stream.peek(&mut first)) => {
                    matches!(peeked, Some(Ok(n)) if n > 0)
                }
                () = state.shutdown.cancelled() => return,
            };
            if !started {
                tracing::debug!(%peer, "no request within the header timeout");
                return;
            }
            let (stream, send_buffer) = Tcp::new(stream);
            let service = service_fn(move |mut req: Request<Incoming>| {
                // Only an upgrade uses it (to cap a WebSocket's send buffer): other requests
                // carry nothing extra.
                if req.headers().contains_key(header::UPGRADE) {
                    req.extensions_mut().insert(send_buffer.clone());
                }
                routes::handle(state.clone(), req)
            });
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
    }
}

/// `future`'s output, or `None` when it took longer than `limit`.
async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(limit, future).await.ok()
}
