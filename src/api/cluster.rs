//! Cluster routes: what the cluster looks like from this node, and draining it.
//!
//! | route | answer |
//! |---|---|
//! | `GET /cluster` | nodes (name, addresses, state, since), the singletons each owns, and this configuration's singletons nobody owns right now |
//! | `POST /cluster/drain` | (token) this node gives every trunk, tenant and queue away and claims none; answers when they are all released (or 503 after 15 s) |
//! | `POST /cluster/undrain` | (token) this node takes its fair share again |
//!
//! A node running alone answers 404 on all three.
//!
//! In a cluster, the queue, agent and click-to-call routes of a tenant another node runs
//! answer 307 with that node's address (see [`tenant_elsewhere`]).

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::{route, ApiState, Problem};

/// How long a drain request waits for the node's singletons to be released.
const DRAIN_WAIT: Duration = Duration::from_secs(15);

pub(super) fn routes(router: Router<ApiState>) -> Router<ApiState> {
    let router = route(router, "/cluster", get(view));
    let router = route(router, "/cluster/drain", post(drain));
    route(router, "/cluster/undrain", post(undrain))
}

fn alone() -> Problem {
    Problem::not_found("this node runs alone (started without --cluster)")
}

/// In a cluster, a tenant's queues and agents answer on the node that runs the tenant: a
/// request about them on another node gets a 307 to the same path on the owner's HTTP
/// address (as a standby of a replicated service redirects to its active node; counted in
/// `switchyard_http_requests_total{status="307"}`). None when
/// the node runs alone, runs the tenant itself, or nobody runs it right now.
pub(super) fn tenant_elsewhere(state: &ApiState, tenant: &str, uri: &Uri) -> Option<Problem> {
    let dir = state.cluster.as_ref()?.directory();
    let owner = dir.owner(&crate::cluster::tenant_key(tenant))?;
    if owner == dir.me() {
        return None;
    }
    let http = dir.node(&owner)?.http;
    if http.is_empty() {
        return None;
    }
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    // The nodes of a cluster share one configuration: an HTTPS node's peers speak HTTPS.
    let scheme = if state.https { "https" } else { "http" };
    Some(Problem::elsewhere(
        format!("{scheme}://{http}{path}"),
        format!("tenant {tenant} runs on node {owner}"),
    ))
}

/// Why a cluster command was not run.
enum Refused {
    Denied(super::Denied),
    Alone,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Denied(d) => d.into_response(),
            Refused::Alone => alone().into_response(),
        }
    }
}

/// The node's membership, once the caller may change it.
fn member<'s>(
    state: &'s ApiState,
    headers: &HeaderMap,
) -> Result<&'s crate::cluster::membership::Membership, Refused> {
    state.authorize(headers).map_err(Refused::Denied)?;
    state.cluster.as_deref().ok_or(Refused::Alone)
}

async fn view(State(state): State<ApiState>) -> Response {
    match &state.cluster {
        Some(m) => Json(m.view()).into_response(),
        None => alone().into_response(),
    }
}

async fn drain(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let m = match member(&state, &headers) {
        Ok(m) => m,
        Err(refused) => return refused.into_response(),
    };
    match m.drain(DRAIN_WAIT).await {
        Ok(_) => Json(m.view()).into_response(),
        Err(e) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}

async fn undrain(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let m = match member(&state, &headers) {
        Ok(m) => m,
        Err(refused) => return refused.into_response(),
    };
    match m.undrain().await {
        Ok(()) => Json(m.view()).into_response(),
        Err(e) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}
