//! Configuration routes: routes, numbers, trunks, tenants' users and queues changed while the switch
//! runs, in force at once (on every node of a cluster within a second). See
//! [`crate::cluster::shared_config`].
//!
//! | route | answer |
//! |---|---|
//! | `GET /routes` | every route with its id and all fields |
//! | `PUT /routes/{id}` | (token) body: the `[[routes]]` fields as JSON; 201 created or 200 replaced, with the route as stored |
//! | `DELETE /routes/{id}` | (token) 204; 409 while a tenant's or user's `outbound` names it; 404 if there is no such route |
//! | `GET /numbers` | every number: `number`, `tenant`, `target`, `priority` |
//! | `PUT /numbers/{number}` | (token) body `{"tenant", "target", "priority"}`; 201 or 200 with the number as stored |
//! | `DELETE /numbers/{number}` | (token) 204; 404 if there is no such number |
//! | `GET /tenants/{tenant}/users` | the tenant's users: `tenant`, `username`, `algorithms` (never the hashes); 404 for no such tenant |
//! | `PUT /tenants/{tenant}/users/{name}` | (token) body: the `[[tenants.users]]` fields (`ha1_md5`, `ha1_sha256`, `outbound`); 201 or 200 with the user as shown; 404 for no such tenant |
//! | `DELETE /tenants/{tenant}/users/{name}` | (token) 204; 404 if there is no such user |
//! | `PUT /tenants/{tenant}/queues/{id}` | (token) body: the `[[tenants.queues]]` fields, replacing the queue's (left-out fields take their defaults); 200 with the body as stored, the queue actor restarting with it and keeping its callers; 201 for a queue the tenant lacks, started under the tenant's supervisor on the node running the tenant (with no agents: agents name their queues in the file); 404 for no such tenant |
//! | `DELETE /tenants/{tenant}/queues/{id}` | (token) 204 for a queue added through the API: its actor stops (its owner key is released); 409 while callers wait in it (on the node running it) or a number or another queue's overflow names it; 501 for a queue of the config file; 404 for no such queue |
//! | `GET /trunks` | every trunk with all fields; the carrier password is never shown (`auth_password_set` instead, ignored when sent back) |
//! | `PUT /trunks/{id}` | (token) body: the `[[trunks]]` fields as JSON; 201 created or 200 replaced, with the trunk as shown. A new trunk's actor starts at once (alone) or on the node that claims `trunk/<id>` (cluster); a changed one's actor restarts with it, from its checkpoint, and its channels in use still count |
//! | `DELETE /trunks/{id}` | (token) 204; 409 while a route names the trunk; 404 if there is no such trunk. Its actor stops (its owner key is released); calls on it go on |
//! | `GET /tenants` | the tenants added through the API, as stored (the file's are not listed) |
//! | `PUT /tenants/{id}` | (token) body: the `[[tenants]]` fields (`domain`, `realm`, `users`, `queues`, `agents`, `numbers`, `flows`, `record`; not `users_csv`, `agents_csv` or `api_token`: 400) for a tenant the node lacks: 201 with the tenant as stored (its users' and numbers' names), validated like the file (id, domain and numbers its own). Its users and numbers become entries of their own (changed through their routes); its domain REGISTERs, its numbers route, and its actors (tenant, queues, agents) start at once alone or on the node that claims `tenant/<id>` (cluster). 501 for a tenant that exists (the file's, or one added before): change it through its users, queues and numbers routes |
//! | `DELETE /tenants/{id}` | (token) 204 for a tenant added through the API: its users and queue changes go with it, its actors stop (its owner keys are released), its users get 404 (unknown domain) at once; registrations stay until they expire but reach no one. 409 while a number leads to it (delete its numbers first) or callers wait in its queues (on the node running it); 501 for a tenant of the config file; 404 for no such tenant |
//!
//! Every route here needs the node's token ("(token)" marks the changes), except the reads a
//! tenant's token may make of its own tenant: `GET /numbers` (filtered to its numbers) and
//! `GET /tenants/{tenant}/users` (see [`super::auth`]).
//!
//! A body the config file would refuse is a 400 problem whose `field` member names the field;
//! a change that cannot be stored (SQLite, or etcd in a cluster) is a 503 and changes nothing;
//! a 409 when other nodes kept changing the configuration while it was checked (try again).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Extension, Json, Router};
use serde::Serialize;

use super::{route, ApiState, Caller, Problem, PROBLEM_JSON};
use crate::cluster::shared_config::{
    scoped_id, ChangeError, Kind, SharedConfig, CONFIG_REJECTED_TOTAL,
};

pub(super) fn routes(router: Router<ApiState>) -> Router<ApiState> {
    let router = route(router, "/routes", get(list_routes));
    let router = route(
        router,
        "/routes/{id}",
        axum::routing::put(put_route).delete(delete_route),
    );
    let router = route(router, "/numbers", get(list_numbers));
    let router = route(
        router,
        "/numbers/{number}",
        axum::routing::put(put_number).delete(delete_number),
    );
    let router = route(router, "/tenants/{tenant}/users", get(list_users));
    let router = route(
        router,
        "/tenants/{tenant}/users/{name}",
        put_in_tenant(Kind::User).delete(delete_user),
    );
    let router = route(
        router,
        "/tenants/{tenant}/queues/{id}",
        put_in_tenant(Kind::Queue).delete(delete_queue),
    );
    let router = route(router, "/trunks", get(list_trunks));
    let router = route(
        router,
        "/trunks/{id}",
        axum::routing::put(put_trunk).delete(delete_trunk),
    );
    let router = route(router, "/tenants", get(list_tenants));
    route(
        router,
        "/tenants/{id}",
        axum::routing::put(put_tenant).delete(delete_tenant),
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
        ChangeError::Unsupported(why) => {
            Problem::new(StatusCode::NOT_IMPLEMENTED, why).into_response()
        }
        ChangeError::InUse(why) => Problem::new(StatusCode::CONFLICT, why).into_response(),
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

async fn list_trunks(State(state): State<ApiState>) -> Result<Response, Refused> {
    let config = state.config.as_deref().ok_or(Refused::NoConfig)?;
    Ok(Json(config.trunks()).into_response())
}

/// Every number for the node's token; a tenant's token sees its tenant's numbers only.
async fn list_numbers(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Refused> {
    let config = state.config.as_deref().ok_or(Refused::NoConfig)?;
    let mut numbers = config.numbers();
    numbers.retain(|n| caller.sees(&n.tenant));
    Ok(Json(numbers).into_response())
}

async fn list_users(
    State(state): State<ApiState>,
    Path(tenant): Path<String>,
) -> Result<Response, Refused> {
    let config = state.config.as_deref().ok_or(Refused::NoConfig)?;
    let users = config
        .users(&tenant)
        .ok_or_else(|| Refused::Change(ChangeError::NotFound(format!("tenant {tenant:?}"))))?;
    Ok(Json(users).into_response())
}

/// Creates or replaces the entry of `kind` at `id` from the body.
async fn put_entry(
    state: &ApiState,
    headers: &HeaderMap,
    kind: Kind,
    id: &str,
    body: &Bytes,
) -> Result<Response, Refused> {
    let config = authorized(state, headers, kind)?;
    let value = json_body(body)?;
    let (created, entry) = config.put(kind, id, value).await.map_err(Refused::Change)?;
    Ok(stored(created, entry))
}

/// Removes the entry of `kind` at `id`.
async fn delete_entry(
    state: &ApiState,
    headers: &HeaderMap,
    kind: Kind,
    id: &str,
) -> Result<Response, Refused> {
    let config = authorized(state, headers, kind)?;
    config.delete(kind, id).await.map_err(Refused::Change)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn put_route(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refused> {
    put_entry(&state, &headers, Kind::Route, &id, &body).await
}

async fn delete_route(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    delete_entry(&state, &headers, Kind::Route, &id).await
}

async fn put_trunk(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refused> {
    put_entry(&state, &headers, Kind::Trunk, &id, &body).await
}

async fn delete_trunk(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    delete_entry(&state, &headers, Kind::Trunk, &id).await
}

async fn put_number(
    State(state): State<ApiState>,
    Path(number): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refused> {
    put_entry(&state, &headers, Kind::Number, &number, &body).await
}

async fn delete_number(
    State(state): State<ApiState>,
    Path(number): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    delete_entry(&state, &headers, Kind::Number, &number).await
}

async fn delete_queue(
    State(state): State<ApiState>,
    Path((tenant, queue)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    delete_entry(&state, &headers, Kind::Queue, &scoped_id(&tenant, &queue)).await
}

async fn delete_user(
    State(state): State<ApiState>,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    delete_entry(&state, &headers, Kind::User, &scoped_id(&tenant, &name)).await
}

/// `PUT /tenants/{tenant}/.../{name}`: the entry `<tenant>/<name>` of `kind`.
fn put_in_tenant(kind: Kind) -> MethodRouter<ApiState> {
    axum::routing::put(
        move |State(state): State<ApiState>,
              Path((tenant, name)): Path<(String, String)>,
              headers: HeaderMap,
              body: Bytes| async move {
            put_entry(&state, &headers, kind, &scoped_id(&tenant, &name), &body).await
        },
    )
}

async fn list_tenants(State(state): State<ApiState>) -> Result<Response, Refused> {
    let config = state.config.as_deref().ok_or(Refused::NoConfig)?;
    Ok(Json(config.added_tenants()).into_response())
}

async fn put_tenant(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refused> {
    put_entry(&state, &headers, Kind::Tenant, &id, &body).await
}

async fn delete_tenant(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    delete_entry(&state, &headers, Kind::Tenant, &id).await
}
