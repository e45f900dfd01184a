//! The audit log (操作日志): every request that may change state (any method but GET, HEAD
//! and OPTIONS, on any route) is recorded with who made it, from which address, the route and
//! a summary of its body, and for configuration (routes, numbers, trunks, users, tenants)
//! the object before and after.
//!
//! Durable before the answer: [`record`] (a layer on every route, inside the tenant guard, so
//! refused requests change nothing and are counted there instead) commits the record of the
//! attempt **before** the handler runs — if that fails the request is answered 503 and nothing
//! changes — and commits its outcome (status, the value after) **before** the answer leaves.
//! A `kill -9` after a 2xx therefore always finds the record; one during the handler leaves
//! a record without a status (attempted, outcome unknown).
//!
//! `GET /audit[?tenant=T][&limit=N][&cursor=C]`: newest first; a tenant's credential sees the
//! records of its tenant only (changes it made, and the node's changes to its objects).

use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, RawPathParams, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde::Serialize;
use serde_json::Value;

use super::db::Db;
use super::{route, ApiState, Caller, Params, Problem};
use crate::cluster::shared_config::SharedConfig;
use crate::store::audit::AuditRecord;

/// Counter, label `result`: `written` (a change's record committed with its outcome),
/// `incomplete` (the outcome could not be committed after the change), `failed` (the record
/// could not be committed: the request was answered 503 and changed nothing).
pub const AUDIT_RECORDS_TOTAL: &str = "switchyard_api_audit_records_total";

/// The largest request body a change may have (bodies are read whole to be summarised):
/// axum's own default limit, so the audit refuses nothing a handler would take.
pub const MAX_BODY: usize = 2 * 1024 * 1024;
/// The longest body summary kept.
pub const MAX_SUMMARY: usize = 2048;
/// `limit` of `GET /audit` without one, and the largest.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// Body members whose values are never recorded (secrets, password hashes).
const SECRET_WORDS: [&str; 5] = ["password", "secret", "token", "ha1", "key"];

/// Describe this module's metrics with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        AUDIT_RECORDS_TOTAL,
        "Audit records of API changes: written, incomplete (outcome not committed), failed (request refused 503)"
    );
}

/// What the audit layer needs, put into each request's extensions by the authentication
/// layer (the per-route layers have no state of their own).
#[derive(Clone, Debug)]
pub struct AuditSink {
    pub(super) db: Option<Arc<Db>>,
    pub(super) config: Option<Arc<SharedConfig>>,
}

/// Register `GET /audit`.
pub(super) fn routes(router: Router<ApiState>) -> Router<ApiState> {
    route(router, "/audit", get(list_audit))
}

/// Who a caller is, as recorded.
pub fn actor(caller: &Caller) -> String {
    match caller {
        Caller::Node => "node".to_string(),
        Caller::Tenant { tenant, token } => format!("token:{tenant}/{token}"),
        Caller::Key { tenant, key, .. } => format!("key:{tenant}/{key}"),
    }
}

/// The layer on each route `template`: changes are recorded, reads pass.
pub async fn record(template: &'static str, request: Request, next: Next) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let sink = request.extensions().get::<AuditSink>().cloned();
    let Some((db, config)) = sink.and_then(|s| s.db.map(|db| (db, s.config))) else {
        // A node without a store (some tests) has nothing to audit into.
        return next.run(request).await;
    };
    let caller = request.extensions().get::<Caller>().cloned();
    let source = request
        .extensions()
        .get::<ConnectInfo<super::Peer>>()
        .map_or_else(|| "unknown".to_string(), |c| c.0 .0.to_string());
    let (mut parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a request body is at most {MAX_BODY} bytes"),
            )
            .into_response()
        }
    };
    let params: Vec<(String, String)> = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .map(|p| {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let tenant = caller
        .as_ref()
        .and_then(|c| c.tenant().map(str::to_string))
        .or_else(|| param("tenant").map(str::to_string))
        .or_else(|| (template == "/tenants/{id}").then(|| param("id").map(str::to_string))?)
        .or_else(|| {
            json.as_ref()
                .and_then(|j| j.get("tenant"))
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    let snapshot = |config: &Option<Arc<SharedConfig>>| {
        config
            .as_deref()
            .and_then(|c| config_value(c, template, &param))
            .map(|v| v.to_string())
    };
    let mut rec = AuditRecord {
        at: crate::store::now_unix_ms(),
        tenant,
        actor: caller.as_ref().map_or_else(|| "unknown".to_string(), actor),
        source,
        method: parts.method.to_string(),
        route: template.to_string(),
        path: bounded(parts.uri.path(), 512),
        summary: (!body.is_empty()).then(|| summary(&body, json.as_ref())),
        before: snapshot(&config),
        ..Default::default()
    };
    let id = {
        let rec = rec.clone();
        match db.run(move |s| s.insert_audit(&rec)).await {
            Ok(id) => id,
            Err(_) => {
                metrics::counter!(AUDIT_RECORDS_TOTAL, "result" => "failed").increment(1);
                return Problem::unavailable(
                    "the change could not be recorded in the audit log; nothing changed",
                )
                .into_response();
            }
        }
    };
    let response = next
        .run(Request::from_parts(parts, axum::body::Body::from(body)))
        .await;
    let status = response.status().as_u16();
    rec.after = response
        .status()
        .is_success()
        .then(|| snapshot(&config))
        .flatten();
    let after = rec.after.clone();
    let done = crate::store::now_unix_ms();
    match db
        .run(move |s| s.complete_audit(id, status, after.as_deref(), done))
        .await
    {
        Ok(()) => {
            metrics::counter!(AUDIT_RECORDS_TOTAL, "result" => "written").increment(1);
        }
        Err(_) => {
            // The change is made and its attempt recorded; the outcome is not.
            metrics::counter!(AUDIT_RECORDS_TOTAL, "result" => "incomplete").increment(1);
            tracing::error!(id, status, "audit record's outcome not committed");
        }
    }
    response
}

/// The configuration object a change route names, as the API shows it (no secrets); None
/// for other routes or an object that does not exist.
fn config_value<'a>(
    config: &SharedConfig,
    template: &str,
    param: &impl Fn(&str) -> Option<&'a str>,
) -> Option<Value> {
    let by = |items: Vec<Value>, field: &str, want: &str| {
        items
            .into_iter()
            .find(|v| v.get(field).and_then(Value::as_str) == Some(want))
    };
    match template {
        "/routes/{id}" => by(config.routes(), "id", param("id")?),
        "/trunks/{id}" => by(config.trunks(), "id", param("id")?),
        "/numbers/{number}" => {
            let n = param("number")?;
            let entry = config.numbers().into_iter().find(|e| e.number == n)?;
            serde_json::to_value(entry).ok()
        }
        "/tenants/{tenant}/users/{name}" => {
            by(config.users(param("tenant")?)?, "username", param("name")?)
        }
        "/tenants/{id}" => by(config.added_tenants(), "id", param("id")?),
        _ => None,
    }
}

/// A body as recorded: JSON with secret members masked, else its size; at most
/// [`MAX_SUMMARY`] characters.
pub fn summary(body: &[u8], json: Option<&Value>) -> String {
    match json {
        Some(v) => {
            let mut v = v.clone();
            mask(&mut v);
            bounded(&v.to_string(), MAX_SUMMARY)
        }
        None => format!("({} bytes, not JSON)", body.len()),
    }
}

fn mask(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let k = k.to_ascii_lowercase();
                if SECRET_WORDS.iter().any(|w| k.contains(w)) {
                    *v = Value::String("***".into());
                } else {
                    mask(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask),
        _ => {}
    }
}

fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

/// A page of the audit log.
#[derive(Debug, Serialize)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    pub next_cursor: Option<String>,
}

async fn list_audit(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Response {
    super::problem::respond(list_inner(&state, &caller, &uri).await)
}

async fn list_inner(state: &ApiState, caller: &Caller, uri: &Uri) -> Result<AuditPage, Problem> {
    let params = Params::parse(uri, &["tenant", "limit", "cursor"])?;
    let tenant = caller.listing(params.get("tenant"))?.map(str::to_string);
    let limit = params.number("limit", DEFAULT_LIMIT)?;
    if limit == 0 || limit > MAX_LIMIT {
        return Err(Problem::bad_request(format!(
            "limit must be 1 to {MAX_LIMIT}"
        )));
    }
    let cursor = params
        .get("cursor")
        .map(super::cdrs::decode_cursor)
        .transpose()?;
    let db = state
        .store
        .as_ref()
        .ok_or_else(|| Problem::not_found("this node has no store"))?;
    let records = db
        .run_heavy(move |s| s.list_audit(tenant.as_deref(), cursor, limit))
        .await?;
    let next_cursor = (records.len() == limit)
        .then(|| records.last().map(|r| super::cdrs::encode_cursor(r.id)))
        .flatten();
    Ok(AuditPage {
        records,
        next_cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_in_summaries() {
        let body = br#"{"gateways":["127.0.0.1"],"auth_password":"hunter2","users":[{"ha1_md5":"abc","name":"u"}],"Token":"x"}"#;
        let json: Value = serde_json::from_slice(body).unwrap();
        let s = summary(body, Some(&json));
        assert!(!s.contains("hunter2") && !s.contains("abc"), "{s}");
        assert!(s.contains("127.0.0.1") && s.contains("\"u\""), "{s}");
        assert_eq!(summary(b"xyz", None), "(3 bytes, not JSON)");
        let long = format!("\"{}\"", "é".repeat(MAX_SUMMARY));
        let v: Value = serde_json::from_str(&long).unwrap();
        assert!(summary(long.as_bytes(), Some(&v)).len() <= MAX_SUMMARY + 3);
    }
}
