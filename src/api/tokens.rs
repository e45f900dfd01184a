//! Tenants' API tokens: made, listed, rotated and revoked through the API.
//!
//! | route | answer |
//! |---|---|
//! | `POST /tenants/{tenant}/tokens` | (node token) body `{"name": "crm"}`, optional; 201 `{"id", "tenant", "name", "origin", "created_ms", "token"}`: the secret is shown this once |
//! | `GET /tenants/{tenant}/tokens` | (node token, or the tenant's own) the tenant's tokens: `id`, `name`, `origin` (`file` for the config file's `api_token`, `api`), `created_ms`, `rotated_ms`, `last_used_ms` (on the node answering); never a secret |
//! | `POST /tenants/{tenant}/tokens/{id}/rotate` | (node token) a new secret for the same id, 200 with it (shown once); the old secret fails at once |
//! | `DELETE /tenants/{tenant}/tokens/{id}` | (node token) 204; the token fails at once |
//!
//! The node keeps a token's SHA-256, never its secret ([`crate::store::tokens`]); the records
//! are configuration entries (SQLite alone, etcd in a cluster), so every node accepts a new
//! token and refuses a revoked one within a second. Rotation replaces the secret in one step;
//! to switch a client over without a gap, make a second token, move the client, then revoke
//! the first. The config file's `api_token` (id `file`) is listed but changed in the file
//! only (501 here). A tenant has at most
//! [`crate::cluster::shared_config::MAX_TOKENS_PER_TENANT`] tokens (409 beyond).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{route, ApiState, Caller, Problem};
use crate::cluster::shared_config::{scoped_id, ChangeError, Kind, SharedConfig};
use crate::store::tokens::{self, TokenRecord, FILE_TOKEN_ID};

/// Counter, label `action` (`created`, `rotated`, `revoked`): tenant API tokens changed
/// through this node's API.
pub const TOKEN_CHANGES_TOTAL: &str = "switchyard_api_token_changes_total";

/// Describe this module's metrics (called from [`super::describe`]).
pub fn describe() {
    metrics::describe_counter!(
        TOKEN_CHANGES_TOTAL,
        "Tenant API tokens created, rotated and revoked through this node's API"
    );
}

pub(super) fn routes(router: Router<ApiState>) -> Router<ApiState> {
    let router = route(
        router,
        "/tenants/{tenant}/tokens",
        get(list_tokens).post(create_token),
    );
    let router = route(
        router,
        "/tenants/{tenant}/tokens/{id}",
        delete(revoke_token),
    );
    route(
        router,
        "/tenants/{tenant}/tokens/{id}/rotate",
        post(rotate_token),
    )
}

/// The optional body of `POST /tenants/{tenant}/tokens`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    #[serde(default)]
    name: String,
}

async fn list_tokens(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(tenant): Path<String>,
) -> Response {
    let answer = (|| {
        caller.check(&tenant)?;
        let config = live_config(&state)?;
        if !config.tenant_exists(&tenant) {
            return Err(Problem::not_found(format!("no tenant {tenant:?}")));
        }
        Ok(state.tokens.of_tenant(&tenant))
    })();
    match answer {
        Ok(views) => Json(views).into_response(),
        Err(problem) => problem.into_response(),
    }
}

async fn create_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(denied) = state.authorize(&headers) {
        return super::auth::refuse(denied);
    }
    let answer = async {
        let config = live_config(&state)?;
        let wanted = if body.iter().all(u8::is_ascii_whitespace) {
            NewToken::default()
        } else {
            Problem::json_body::<NewToken>(&body)?
        };
        tokens::check_name(&wanted.name)
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, format!("name: {e}")))?;
        let (id, secret) = (tokens::new_id(), tokens::new_secret());
        let now = crate::store::now_unix_ms() as u64;
        let record = TokenRecord::new(&tenant, &id, &wanted.name, &secret, now);
        let value = serde_json::to_value(&record).expect("a token serializes");
        let (_, view) = config
            .put(Kind::Token, &scoped_id(&tenant, &id), value)
            .await
            .map_err(change_problem)?;
        metrics::counter!(TOKEN_CHANGES_TOTAL, "action" => "created").increment(1);
        tracing::info!(tenant, token = id, "tenant API token created");
        Ok::<_, Problem>(with_secret(view, &secret))
    };
    match answer.await {
        Ok(body) => secret_response(StatusCode::CREATED, body),
        Err(problem) => problem.into_response(),
    }
}

async fn rotate_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((tenant, id)): Path<(String, String)>,
) -> Response {
    if let Err(denied) = state.authorize(&headers) {
        return super::auth::refuse(denied);
    }
    let answer = async {
        let config = live_config(&state)?;
        let Some(old) = config.token(&tenant, &id) else {
            return Err(missing(&state, &tenant, &id));
        };
        let secret = tokens::new_secret();
        let now = crate::store::now_unix_ms() as u64;
        let record = TokenRecord {
            rotated_ms: Some(now),
            ..TokenRecord::new(&tenant, &id, &old.name, &secret, old.created_ms)
        };
        let value = serde_json::to_value(&record).expect("a token serializes");
        // Replaced only while it still exists: a rotation never brings back a token
        // revoked meanwhile (through another node too).
        let view = config
            .replace(Kind::Token, &scoped_id(&tenant, &id), value)
            .await
            .map_err(change_problem)?;
        metrics::counter!(TOKEN_CHANGES_TOTAL, "action" => "rotated").increment(1);
        tracing::info!(tenant, token = id, "tenant API token rotated");
        Ok::<_, Problem>(with_secret(view, &secret))
    };
    match answer.await {
        Ok(body) => secret_response(StatusCode::OK, body),
        Err(problem) => problem.into_response(),
    }
}

async fn revoke_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((tenant, id)): Path<(String, String)>,
) -> Response {
    if let Err(denied) = state.authorize(&headers) {
        return super::auth::refuse(denied);
    }
    let answer = async {
        let config = live_config(&state)?;
        if !tokens::is_id(&id) {
            return Err(missing(&state, &tenant, &id));
        }
        match config.delete(Kind::Token, &scoped_id(&tenant, &id)).await {
            Ok(()) => {}
            Err(ChangeError::NotFound(_)) => return Err(missing(&state, &tenant, &id)),
            Err(e) => return Err(change_problem(e)),
        }
        metrics::counter!(TOKEN_CHANGES_TOTAL, "action" => "revoked").increment(1);
        tracing::info!(tenant, token = id, "tenant API token revoked");
        Ok::<_, Problem>(())
    };
    match answer.await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(problem) => problem.into_response(),
    }
}

fn live_config(state: &ApiState) -> Result<&SharedConfig, Problem> {
    state
        .config
        .as_deref()
        .ok_or_else(|| Problem::not_found("this node has no live configuration"))
}

/// Why token `id` of `tenant` cannot be changed here: the config file's (501) or none (404).
fn missing(state: &ApiState, tenant: &str, id: &str) -> Problem {
    if id == FILE_TOKEN_ID && state.tokens.has_file_token(tenant) {
        return Problem::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("tenant {tenant:?}'s token {id:?} is the config file's api_token: change it there and restart"),
        );
    }
    Problem::not_found(format!("tenant {tenant:?} has no token {id:?}"))
}

/// A refused change as a problem (a 404 for a tenant that does not exist, 409 for too many
/// tokens, 503 when it cannot be stored).
fn change_problem(e: ChangeError) -> Problem {
    let status = match &e {
        ChangeError::Invalid { .. } => StatusCode::BAD_REQUEST,
        ChangeError::NotFound(_) => StatusCode::NOT_FOUND,
        ChangeError::Conflict | ChangeError::InUse(_) => StatusCode::CONFLICT,
        ChangeError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
        ChangeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    Problem::new(status, e.to_string())
}

/// The token as shown, with its secret.
fn with_secret(mut view: Value, secret: &str) -> Value {
    view["token"] = json!(secret);
    view
}

/// A body with a secret: never cached.
fn secret_response(status: StatusCode, body: Value) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}
