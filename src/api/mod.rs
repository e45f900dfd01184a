//! HTTP API: `GET /metrics` (Prometheus text format) and `GET /health`, on axum.
//!
//! The metrics recorder is installed by [`crate::metrics::install`]; this module only renders
//! its handle. Every response is counted in [`HTTP_REQUESTS_TOTAL`] by route template, so an
//! unknown path (a scanner) cannot create new series. Errors are RFC 9457 problem bodies.
//!
//! Adding a route: register it with [`route`] (not `Router::route`) in [`router`], so that it
//! gets its own `path` label; routes added otherwise are counted as `other`.

mod health;
mod problem;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

pub use health::{Health, HealthCheck, HealthReport};
pub use problem::{Problem, PROBLEM_JSON};

/// Counter, labels `path` (route template, or `other`) and `status`: HTTP requests answered.
pub const HTTP_REQUESTS_TOTAL: &str = "switchyard_http_requests_total";

/// Content type of the Prometheus text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `path` label of requests that matched no route.
const OTHER_PATH: &str = "other";

/// Describe this module's metrics with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP API requests answered, by route template (`other` if unrouted) and status code"
    );
}

/// Shared state of the HTTP handlers; cheap to clone (one per request).
#[derive(Clone, Debug)]
pub struct ApiState {
    metrics: PrometheusHandle,
    health: Arc<Health>,
}

impl ApiState {
    /// State rendering `metrics` on `/metrics` and reporting `health` on `/health`.
    pub fn new(metrics: PrometheusHandle, health: Health) -> Self {
        Self {
            metrics,
            health: Arc::new(health),
        }
    }
}

/// Bind the API listener (use port 0 in tests and read `local_addr()`).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serve the API on `listener` until `shutdown` completes, then finish in-flight requests and
/// return. A failing connection never stops the server; accept errors back off (axum).
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP API listening");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The API's routes with request counting and problem-body fallbacks.
pub fn router(state: ApiState) -> Router {
    let router = Router::new();
    let router = route(router, "/metrics", get(render_metrics));
    let router = route(router, "/health", get(report_health));
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}

/// Add `method_router` at `path` and label its responses with `path` (the template, e.g.
/// `/tenants/{id}`), which becomes the `path` label of [`HTTP_REQUESTS_TOTAL`]. A method it
/// does not handle gets a 405 problem body.
///
/// The label travels as a response extension because axum's `matched-path` feature is off.
pub fn route<S>(router: Router<S>, path: &'static str, method_router: MethodRouter<S>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let label = middleware::map_response(move |mut response: Response| async move {
        response.extensions_mut().insert(RouteLabel(path));
        response
    });
    // The 405 fallback is set here, before the layer, so that it is labelled too.
    router.route(
        path,
        method_router.fallback(method_not_allowed).layer(label),
    )
}

/// The route template a response came from, for the `path` label.
#[derive(Clone, Copy, Debug)]
struct RouteLabel(&'static str);

async fn count_requests(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let path = response
        .extensions()
        .get::<RouteLabel>()
        .map_or(OTHER_PATH, |label| label.0);
    metrics::counter!(
        HTTP_REQUESTS_TOTAL,
        "path" => path,
        "status" => response.status().as_u16().to_string(),
    )
    .increment(1);
    response
}

async fn render_metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        state.metrics.render(),
    )
}

async fn report_health(State(state): State<ApiState>) -> impl IntoResponse {
    let (status, report) = state.health.report();
    (status, Json(report))
}

async fn not_found(method: Method, uri: Uri) -> Problem {
    Problem::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
