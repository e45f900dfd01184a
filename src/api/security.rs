//! The edge's bans (issue 16), both routes behind the node's token:
//!
//! | route | answer |
//! |---|---|
//! | `GET /security/bans` | the bans in force, longest remaining first: `{"total", "bans": [{"source", "prefix", "reason", "until_ms", "remaining_secs", "offences", "dropped"}]}`; `?limit=N` (default 1000) |
//! | `DELETE /security/bans/{ip}` | lifts the ban of an address (or of the IPv6 /64 it lies in) and forgets its offences: 204; 404 when it is not banned; 400 for a malformed address |

use std::net::IpAddr;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Serialize;

use super::{route, ApiState, Params, Problem};
use crate::security::BanView;

/// Most bans one listing returns.
const MAX_LIMIT: usize = 10_000;

pub(super) fn routes(router: Router<ApiState>) -> Router<ApiState> {
    let router = route(router, "/security/bans", get(list));
    route(router, "/security/bans/{ip}", delete(lift))
}

#[derive(Serialize)]
struct Bans {
    /// Bans in force (all of them, whatever the limit).
    total: usize,
    bans: Vec<BanView>,
}

fn no_edge() -> Problem {
    Problem::not_found("this node runs without the edge's tables")
}

async fn list(State(state): State<ApiState>, headers: HeaderMap, uri: Uri) -> Response {
    if let Err(denied) = state.authorize(&headers) {
        return denied.into_response();
    }
    let limit = match Params::parse(&uri, &["limit"]).and_then(|p| p.number("limit", 1000)) {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
        Ok(_) => {
            return Problem::new(
                StatusCode::BAD_REQUEST,
                format!("limit must be between 1 and {MAX_LIMIT}"),
            )
            .into_response()
        }
        Err(p) => return p.into_response(),
    };
    let Some(guard) = &state.security else {
        return no_edge().into_response();
    };
    let mut bans = guard.bans(Instant::now());
    let total = bans.len();
    bans.truncate(limit);
    Json(Bans { total, bans }).into_response()
}

async fn lift(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(ip): Path<String>,
) -> Response {
    if let Err(denied) = state.authorize(&headers) {
        return denied.into_response();
    }
    let Ok(addr) = ip.parse::<IpAddr>() else {
        return Problem::new(
            StatusCode::BAD_REQUEST,
            format!("{ip:?} is not an IP address"),
        )
        .into_response();
    };
    let Some(guard) = &state.security else {
        return no_edge().into_response();
    };
    if guard.lift(addr, Instant::now()) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        Problem::not_found(format!("{addr} is not banned")).into_response()
    }
}
