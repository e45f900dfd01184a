//! Configuration routes: routes and numbers changed while the switch runs, in force at once
//! (on every node of a cluster within a second). See [`crate::cluster::shared_config`].
//!
//! | route | answer |
//! |---|---|
//! | `GET /routes` | every route with its id and all fields |
//! | `PUT /routes/{id}` | (token) body: the `[[routes]]` fields as JSON; 201 created or 200 replaced, with the route as stored |
//! | `DELETE /routes/{id}` | (token) 204; 404 if there is no such route |
//! | `GET /numbers` | every number: `number`, `tenant`, `target`, `priority` |
//! | `PUT /numbers/{number}` | (token) body `{"tenant", "target", "priority"}`; 201 or 200 with the number as stored |
//! | `DELETE /numbers/{number}` | (token) 204; 404 if there is no such number |
//!
//! A body the config file would refuse is a 400 problem whose `field` member names the field;
//! a change that cannot be stored (SQLite, or etcd in a cluster) is a 503 and changes nothing;
//! a 409 when other nodes kept changing the configuration while it was checked (try again).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::{route, ApiState, Problem, PROBLEM_JSON};
use crate::cluster::shared_config::{ChangeError, Kind, SharedConfig, CONFIG_REJECTED_TOTAL};

pub(super) fn routes(router: Router<ApiState>) -> Router<ApiState> {
    let router = route(router, "/routes", get(list_routes));
    let router = route(
        router,
        "/routes/{id}",
        axum::routing::put(put_route).delete(delete_route),
    );
    let router = route(router, "/numbers", get(list_numbers));
    route(
        router,
        "/numbers/{number}",
        axum::routing::put(put_number).delete(delete_number),
    )
}

/// A 400 problem that names the field at fault (RFC 9457 allows extension members).
#[derive(Serialize)]
struct FieldProblem {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    detail: String,
    field: String,
}

fn error_response(e: ChangeError) -> Response {
    match e {
        ChangeError::Invalid { field, message } => {
            let body = FieldProblem {
                kind: "about:blank",
                title: "Bad Request",
                status: 400,
                detail: Problem::new(StatusCode::BAD_REQUEST, format!("{field}: {message}")).detail,
                field,
            };
            let mut r = (StatusCode::BAD_REQUEST, Json(body)).into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
            r
        }
        ChangeError::NotFound(what) => Problem::not_found(what).into_response(),
        ChangeError::Unavailable(why) => {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, why).into_response()
        }
        ChangeError::Conflict => {
            Problem::new(StatusCode::CONFLICT, ChangeError::Conflict.to_string()).into_response()
        }
    }
}

/// Why a request changed nothing.
enum Refused {
    /// No or a wrong bearer token.
    Denied(super::Denied),
    /// The node serves no live configuration (a bare API state, as in unit tests).
    NoConfig,
    /// The change itself was refused.
    Change(ChangeError),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Denied(d) => d.into_response(),
            Refused::NoConfig => {
                Problem::not_found("this node has no live configuration").into_response()
            }
            Refused::Change(e) => error_response(e),
        }
    }
}

/// The shared configuration, once the caller is allowed to change it.
fn authorized<'s>(
    state: &'s ApiState,
    headers: &HeaderMap,
    kind: Kind,
) -> Result<&'s SharedConfig, Refused> {
    if let Err(denied) = state.authorize(headers) {
        metrics::counter!(CONFIG_REJECTED_TOTAL, "kind" => kind.label(), "reason" => "unauthorized")
            .increment(1);
        return Err(Refused::Denied(denied));
    }
    state.config.as_deref().ok_or(Refused::NoConfig)
}

/// The body as JSON, or why it is not.
fn json_body(body: &Bytes) -> Result<serde_json::Value, Refused> {
    serde_json::from_slice(body).map_err(|e| {
        Refused::Change(ChangeError::Invalid {
            field: "body".into(),
            message: format!("not JSON: {e}"),
        })
    })
}

fn stored(created: bool, body: impl Serialize) -> Response {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

async fn list_routes(State(state): State<ApiState>) -> Result<Response, Refused> {
    let config = state.config.as_deref().ok_or(Refused::NoConfig)?;
    Ok(Json(config.routes()).into_response())
}

async fn put_route(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refused> {
    let config = authorized(&state, &headers, Kind::Route)?;
    let value = json_body(&body)?;
    let (created, route) = config
        .put_route(&id, value)
        .await
        .map_err(Refused::Change)?;
    Ok(stored(created, route))
}

async fn delete_route(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    let config = authorized(&state, &headers, Kind::Route)?;
    config.delete_route(&id).await.map_err(Refused::Change)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_numbers(State(state): State<ApiState>) -> Result<Response, Refused> {
    let config = state.config.as_deref().ok_or(Refused::NoConfig)?;
    Ok(Json(config.numbers()).into_response())
}

async fn put_number(
    State(state): State<ApiState>,
    Path(number): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refused> {
    let config = authorized(&state, &headers, Kind::Number)?;
    let value = json_body(&body)?;
    let (created, entry) = config
        .put_number(&number, value)
        .await
        .map_err(Refused::Change)?;
    Ok(stored(created, entry))
}

async fn delete_number(
    State(state): State<ApiState>,
    Path(number): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    let config = authorized(&state, &headers, Kind::Number)?;
    config
        .delete_number(&number)
        .await
        .map_err(Refused::Change)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
