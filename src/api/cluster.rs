//! Cluster routes: what the cluster looks like from this node, and draining it.
//!
//! | route | answer |
//! |---|---|
//! | `GET /cluster` | nodes (name, addresses, state, since), the singletons each owns, and this configuration's singletons nobody owns right now |
//! | `POST /cluster/drain` | (token) this node gives every trunk, tenant and queue away and claims none; answers when they are all released (or 503 after 15 s) |
//! | `POST /cluster/undrain` | (token) this node takes its fair share again |
//!
//! A node running alone answers 404 on all three.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
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

async fn view(State(state): State<ApiState>) -> Response {
    match &state.cluster {
        Some(m) => Json(m.view()).into_response(),
        None => alone().into_response(),
    }
}

async fn drain(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(denied) = state.authorize(&headers) {
        return denied.into_response();
    }
    let Some(m) = &state.cluster else {
        return alone().into_response();
    };
    match m.drain(DRAIN_WAIT).await {
        Ok(_) => Json(m.view()).into_response(),
        Err(e) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}

async fn undrain(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(denied) = state.authorize(&headers) {
        return denied.into_response();
    }
    let Some(m) = &state.cluster else {
        return alone().into_response();
    };
    match m.undrain().await {
        Ok(()) => Json(m.view()).into_response(),
        Err(e) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}
