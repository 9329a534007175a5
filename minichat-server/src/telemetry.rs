//! Metrics: the process's Prometheus recorder, `GET /metrics`, and what the server records.
//!
//! The `metrics` macros, here and in `minichat-core` (see [`minichat_core::telemetry`]), write to
//! one process-global recorder. So the first server built in a process installs a Prometheus
//! recorder, once, and every server of the process shares it: **the numbers are per process**,
//! not per server, and a test that runs several servers compares before and after, never absolute
//! values. (If an embedding application installed a recorder of its own first, the metrics go
//! to it and `/metrics` shows nothing; a warning says so at start.) Histograms are exported as
//! Prometheus histograms with fixed buckets; a background thread folds their samples in every few
//! seconds, so memory stays flat when nobody scrapes.
//!
//! `/metrics` is public, like `/health`: it holds counts and timings, never a user, a token or a
//! message. Restrict it at the load balancer if even counts should not leave the network.
//!
//! Every label has a small, fixed set of values: HTTP requests are labelled with their route's
//! template (`/users/{user_id}`), never the raw path, and unknown methods are `other`.

use crate::response::Response;
use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use http_body_util::Full;
use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Gauge: WebSocket connections open now.
pub const WEBSOCKET_CONNECTIONS: &str = "minichat_websocket_connections";
/// Counter: WebSocket connections opened (upgraded).
pub const WEBSOCKET_CONNECTIONS_TOTAL: &str = "minichat_websocket_connections_total";
/// Counter: message frames written to local WebSockets (acks to the sending connection aside):
/// live from the hub, or read from storage to fill a gap or replay `?since=`.
pub const MESSAGES_DELIVERED: &str = "minichat_messages_delivered_total";
/// Counter: of those, the ones a `?since=` replay sent.
pub const MESSAGES_REPLAYED: &str = "minichat_messages_replayed_total";
/// Counter: of those, the ones read from storage to fill a gap in the live stream (a live event
/// that never came, or came later than the stream's reorder window): a rate well above zero
/// means fan-out is losing or badly reordering events, and each one cost a storage read.
pub const MESSAGES_GAP_FILLED: &str = "minichat_messages_gap_filled_total";
/// Histogram: from the hub queueing a live event for a connection to the write of its frame to
/// the socket finishing (handed to the kernel; the network after that is not included).
pub const DELIVERY_DURATION: &str = "minichat_delivery_duration_seconds";
/// Counter: connections closed with 4008 because their queue filled.
pub const SLOW_CONSUMER_CLOSES: &str = "minichat_slow_consumer_closes_total";
/// Counter, label `limit` (`send`, `user_sockets`, `node_sockets`): requests refused by a limit.
pub const RATE_LIMITED: &str = "minichat_rate_limited_total";
/// Counter, labels `route` (template), `method`, `status`.
pub const HTTP_REQUESTS: &str = "minichat_http_requests_total";
/// Histogram, labels `route` (template), `method`: from the request's arrival to its response
/// being ready (the body is sent after).
pub const HTTP_REQUEST_DURATION: &str = "minichat_http_request_duration_seconds";

/// Upper bounds of every duration histogram's buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histogram samples are folded into their buckets between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Methods that get their own label value; any other is `other`.
static METHODS: [Method; 9] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
    Method::PATCH,
    Method::CONNECT,
    Method::TRACE,
];

/// Installs the process's Prometheus recorder the first time it is called; returns its handle.
pub(crate) fn install() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let batch = Matcher::Full(minichat_core::telemetry::STORAGE_BATCH_SIZE.to_owned());
        let builder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(batch, minichat_core::telemetry::STORAGE_BATCH_SIZE_BUCKETS)
            })
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed: Minichat's metrics go to it, and /metrics is empty");
            return handle;
        }
        describe();
        minichat_core::telemetry::describe();
        let upkeep = handle.clone();
        let started = std::thread::Builder::new()
            .name("minichat-metrics".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "no metrics upkeep thread: histograms are folded in at each scrape only");
        }
        handle
    })
}

fn describe() {
    describe_gauge!(WEBSOCKET_CONNECTIONS, "WebSocket connections open now");
    describe_counter!(WEBSOCKET_CONNECTIONS_TOTAL, "WebSocket connections opened");
    describe_counter!(
        MESSAGES_DELIVERED,
        "Message frames written to local WebSockets"
    );
    describe_counter!(
        MESSAGES_REPLAYED,
        "Message frames written to WebSockets by a ?since= replay"
    );
    describe_counter!(
        MESSAGES_GAP_FILLED,
        "Message frames written to WebSockets from storage to fill a gap in the live stream"
    );
    describe_histogram!(
        DELIVERY_DURATION,
        Unit::Seconds,
        "From the hub queueing a live event for a connection to its socket write finishing"
    );
    describe_counter!(
        SLOW_CONSUMER_CLOSES,
        "WebSocket connections closed because their queue filled (4008)"
    );
    describe_counter!(
        RATE_LIMITED,
        "Requests refused by a rate or connection limit"
    );
    describe_counter!(HTTP_REQUESTS, "HTTP requests served");
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Time from a request's arrival to its response being ready"
    );
    // Exported at zero from the start, so that rates over them are defined.
    metrics::gauge!(WEBSOCKET_CONNECTIONS).increment(0.0);
    for name in [
        WEBSOCKET_CONNECTIONS_TOTAL,
        MESSAGES_DELIVERED,
        MESSAGES_REPLAYED,
        MESSAGES_GAP_FILLED,
        SLOW_CONSUMER_CLOSES,
    ] {
        metrics::counter!(name).increment(0);
    }
}

/// This process's metrics, in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text format (version 0.0.4). Public, like /health: counts and timings of this process, no users, tokens or messages.",
               body = String, content_type = "text/plain; version=0.0.4")))]
pub fn metrics() -> Response {
    let mut response = Response::new(Full::new(Bytes::from(install().render())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Counts one served HTTP request; `route` is its template, never the raw path.
pub(crate) fn http_request(
    route: &'static str,
    method: &Method,
    status: StatusCode,
    elapsed: Duration,
) {
    let method = METHODS
        .iter()
        .find(|m| *m == method)
        .map_or("other", Method::as_str);
    metrics::counter!(HTTP_REQUESTS, "route" => route, "method" => method, "status" => status.as_u16().to_string())
        .increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION, "route" => route, "method" => method)
        .record(elapsed);
}

/// The handles of the metrics a WebSocket's frames move, looked up once rather than by name on
/// every message, and shared by every socket (a socket holds none: see [`SocketMetrics`]).
struct SocketHandles {
    delivered: Counter,
    replayed: Counter,
    gap_filled: Counter,
    delivery: Histogram,
}

/// Looked up at the first socket, after [`install`] (which binding the server runs first).
fn socket_handles() -> &'static SocketHandles {
    static HANDLES: OnceLock<SocketHandles> = OnceLock::new();
    HANDLES.get_or_init(|| SocketHandles {
        delivered: metrics::counter!(MESSAGES_DELIVERED),
        replayed: metrics::counter!(MESSAGES_REPLAYED),
        gap_filled: metrics::counter!(MESSAGES_GAP_FILLED),
        delivery: metrics::histogram!(DELIVERY_DURATION),
    })
}

/// One open WebSocket: its place in the gauge, for as long as it lives (zero-sized).
pub(crate) struct SocketMetrics(());

impl SocketMetrics {
    pub(crate) fn open() -> SocketMetrics {
        metrics::counter!(WEBSOCKET_CONNECTIONS_TOTAL).increment(1);
        metrics::gauge!(WEBSOCKET_CONNECTIONS).increment(1.0);
        SocketMetrics(())
    }

    /// A live event's frame was written; `queued` is when the hub queued it.
    pub(crate) fn live_event_written(&self, queued: Instant, is_message: bool) {
        let handles = socket_handles();
        handles.delivery.record(queued.elapsed());
        if is_message {
            handles.delivered.increment(1);
        }
    }

    /// A message read from storage was written: a `replay` for `?since=`, otherwise a gap in
    /// the live stream filled.
    pub(crate) fn stored_message_written(&self, replay: bool) {
        let handles = socket_handles();
        handles.delivered.increment(1);
        if replay {
            handles.replayed.increment(1);
        } else {
            handles.gap_filled.increment(1);
        }
    }
}

impl Drop for SocketMetrics {
    fn drop(&mut self) {
        metrics::gauge!(WEBSOCKET_CONNECTIONS).decrement(1.0);
    }
}

pub(crate) fn slow_consumer_closed() {
    metrics::counter!(SLOW_CONSUMER_CLOSES).increment(1);
}

/// A request refused by `limit` (`send`, `user_sockets` or `node_sockets`).
pub(crate) fn rate_limited(limit: &'static str) {
    metrics::counter!(RATE_LIMITED, "limit" => limit).increment(1);
}
