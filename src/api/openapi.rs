//! The OpenAPI 3.1 document of the API, served at `GET /openapi.json` (any valid credential).
//!
//! Built from [`OPERATIONS`] (one row per method and route) and the access rules the router
//! itself enforces: which credentials reach each operation comes from
//! [`super::auth::tenant_may`] and [`super::keys::least_role`], path parameters from the
//! templates, and every error is the [`super::Problem`] body. A test
//! (`api::tests::the_openapi_document_lists_every_route_the_router_serves`) asks the running
//! router every method of every registered route and fails when an operation it serves is
//! missing here, or one listed here is not served: a route added without its row breaks CI.
//! Request and response bodies are described in words (and in docs/api.md), not yet as
//! schemas.

use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::{route, ApiState};

/// Every operation: method, route template, summary.
pub const OPERATIONS: &[(&str, &str, &str)] = &[
    (
        "GET",
        "/metrics",
        "Prometheus text exposition (no credential)",
    ),
    (
        "GET",
        "/health",
        "Liveness and readiness; 503 names what is down (no credential)",
    ),
    ("GET", "/openapi.json", "This document"),
    ("GET", "/status", "The node at a glance"),
    ("GET", "/log", "The log filter in force"),
    ("PUT", "/log", "Change the log filter: {\"filter\"}"),
    ("GET", "/queues", "Every queue's live statistics"),
    ("GET", "/queues/{tenant}/{queue}", "One queue's statistics"),
    (
        "GET",
        "/queues/{tenant}/{queue}/waiting",
        "A queue's waiting callers in order",
    ),
    (
        "GET",
        "/queues/{tenant}/{queue}/decisions",
        "A queue's recent routing decisions",
    ),
    ("GET", "/agents", "Agents with their states, paged"),
    ("GET", "/agents/{tenant}/{agent}", "One agent"),
    (
        "POST",
        "/agents/{tenant}/{agent}/{command}",
        "login, logout, ready, not-ready",
    ),
    ("GET", "/calls", "Calls in progress on this node"),
    (
        "POST",
        "/calls",
        "Click-to-call: {\"tenant\", \"agent\", \"number\"}",
    ),
    ("GET", "/calls/{call_id}", "One call"),
    ("DELETE", "/calls/{call_id}", "Release a call"),
    ("POST", "/calls/{call_id}/hold", "Hold the customer's leg"),
    ("POST", "/calls/{call_id}/unhold", "Take it off hold"),
    (
        "POST",
        "/calls/{call_id}/transfer",
        "Blind or attended transfer: {\"target\", \"mode\"}",
    ),
    (
        "POST",
        "/calls/{call_id}/consult",
        "Consult a target: {\"target\"}",
    ),
    (
        "POST",
        "/calls/{call_id}/consult/complete",
        "Hand the customer to the consulted target",
    ),
    (
        "POST",
        "/calls/{call_id}/consult/cancel",
        "End the consultation",
    ),
    (
        "POST",
        "/calls/{call_id}/consult/conference",
        "Turn the consultation into a three-way",
    ),
    (
        "POST",
        "/calls/{call_id}/conference",
        "Three-way call: {\"target\"}",
    ),
    (
        "PUT",
        "/calls/{call_id}/conference",
        "Mute or deafen a party",
    ),
    (
        "DELETE",
        "/calls/{call_id}/conference",
        "Let the third party go",
    ),
    (
        "POST",
        "/calls/{call_id}/monitor",
        "A supervisor listens, whispers or barges",
    ),
    (
        "PUT",
        "/calls/{call_id}/monitor",
        "Change the monitor's mode",
    ),
    ("DELETE", "/calls/{call_id}/monitor", "End the monitor"),
    (
        "GET",
        "/risk/check",
        "May this tenant call this number now, and if not, which rule",
    ),
    (
        "GET",
        "/risk/decisions",
        "Recent risk decisions on this node",
    ),
    (
        "GET",
        "/risk/tenants/{tenant}/{kind}",
        "A tenant's black or white list",
    ),
    (
        "POST",
        "/risk/tenants/{tenant}/{kind}",
        "Add entries to a tenant's black or white list",
    ),
    (
        "POST",
        "/risk/tenants/{tenant}/{kind}/remove",
        "Remove entries from a tenant's black or white list",
    ),
    (
        "GET",
        "/risk/tags/{tag}/{kind}",
        "A tag's black or white list",
    ),
    (
        "POST",
        "/risk/tags/{tag}/{kind}",
        "Add entries to a tag's black or white list",
    ),
    (
        "POST",
        "/risk/tags/{tag}/{kind}/remove",
        "Remove entries from a tag's black or white list",
    ),
    (
        "GET",
        "/risk/platform/{kind}",
        "The platform's black or white list",
    ),
    (
        "POST",
        "/risk/platform/{kind}",
        "Add entries to the platform's black or white list",
    ),
    (
        "POST",
        "/risk/platform/{kind}/remove",
        "Remove entries from the platform's black or white list",
    ),
    ("GET", "/conferences", "The conference rooms on this node"),
    (
        "POST",
        "/conferences/{tenant}",
        "Make a conference room: {\"id\"?}",
    ),
    (
        "GET",
        "/conferences/{tenant}/{id}",
        "One room with its participants",
    ),
    (
        "DELETE",
        "/conferences/{tenant}/{id}",
        "End a room: every participant is hung up",
    ),
    (
        "POST",
        "/conferences/{tenant}/{id}/participants",
        "Dial a user into the room {\"target\"}, or move a call's leg in {\"call\", \"leg\"?}",
    ),
    (
        "PUT",
        "/conferences/{tenant}/{id}/participants/{participant}",
        "Mute or deafen a participant: {\"mute\"?, \"deaf\"?}",
    ),
    (
        "DELETE",
        "/conferences/{tenant}/{id}/participants/{participant}",
        "Hang a participant up (kick)",
    ),
    (
        "POST",
        "/calls/{call_id}/recording/{command}",
        "start, stop, pause, resume a recording",
    ),
    ("GET", "/recordings", "The recording index, newest first"),
    ("GET", "/recordings/{id}", "One recording"),
    (
        "GET",
        "/recordings/{id}/audio",
        "A recording's audio, decrypted as it streams",
    ),
    ("GET", "/cdrs", "CDRs, newest first, filtered, cursor-paged"),
    (
        "GET",
        "/cdrs/export",
        "Matching CDRs as CSV, streamed (format=csv)",
    ),
    ("GET", "/reports/queues", "Interval report per queue"),
    ("GET", "/reports/agents", "Interval report per agent"),
    ("GET", "/audit", "The audit log of changes, newest first"),
    (
        "GET",
        "/cluster",
        "Cluster membership and singleton ownership",
    ),
    ("POST", "/cluster/drain", "Give every singleton away"),
    ("POST", "/cluster/undrain", "Take this node's share again"),
    ("GET", "/security/bans", "Bans in force"),
    ("DELETE", "/security/bans/{ip}", "Lift a ban"),
    ("GET", "/routes", "Every route"),
    ("PUT", "/routes/{id}", "Create or replace a route"),
    ("DELETE", "/routes/{id}", "Delete a route"),
    ("GET", "/numbers", "Every number"),
    ("PUT", "/numbers/{number}", "Create or replace a number"),
    ("DELETE", "/numbers/{number}", "Delete a number"),
    ("GET", "/trunks", "Every trunk (no passwords)"),
    ("PUT", "/trunks/{id}", "Create or replace a trunk"),
    ("DELETE", "/trunks/{id}", "Delete a trunk"),
    ("GET", "/tenants", "Tenants added through the API"),
    ("PUT", "/tenants/{id}", "Add a tenant"),
    (
        "DELETE",
        "/tenants/{id}",
        "Delete a tenant added through the API",
    ),
    (
        "GET",
        "/tenants/{tenant}/users",
        "A tenant's users (no hashes)",
    ),
    (
        "PUT",
        "/tenants/{tenant}/users/{name}",
        "Create or replace a user",
    ),
    ("DELETE", "/tenants/{tenant}/users/{name}", "Delete a user"),
    (
        "PUT",
        "/tenants/{tenant}/queues/{id}",
        "Create or replace a queue's settings",
    ),
    (
        "DELETE",
        "/tenants/{tenant}/queues/{id}",
        "Delete a queue added through the API",
    ),
    (
        "GET",
        "/tenants/{tenant}/tokens",
        "A tenant's tokens (no secrets)",
    ),
    (
        "POST",
        "/tenants/{tenant}/tokens",
        "Make a tenant token (secret shown once)",
    ),
    (
        "POST",
        "/tenants/{tenant}/tokens/{id}/rotate",
        "A new secret for a token",
    ),
    ("DELETE", "/tenants/{tenant}/tokens/{id}", "Revoke a token"),
    (
        "GET",
        "/tenants/{tenant}/keys",
        "A tenant's access keys (no secrets)",
    ),
    (
        "POST",
        "/tenants/{tenant}/keys",
        "Make an access key: {\"name\", \"role\"} (secret shown once)",
    ),
    (
        "POST",
        "/tenants/{tenant}/keys/{id}/rotate",
        "A new secret for an access key",
    ),
    (
        "DELETE",
        "/tenants/{tenant}/keys/{id}",
        "Revoke an access key",
    ),
];

/// Routes open without a credential.
const OPEN: [&str; 2] = ["/metrics", "/health"];

pub(super) fn routes(router: Router<ApiState>) -> Router<ApiState> {
    route(router, "/openapi.json", get(serve_document))
}

async fn serve_document() -> Response {
    Json(document()).into_response()
}

/// The `{name}` parameters of a route template, in order.
fn path_params(template: &str) -> Vec<&str> {
    template
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .collect()
}

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, template, summary) in OPERATIONS {
        let m = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
        let open = OPEN.contains(template);
        let tenant = super::auth::tenant_may(&m, template);
        let role = super::keys::least_role(&m, template);
        let mut security = Vec::new();
        if !open {
            security.push(json!({"bearer": []}));
            if role.is_some() {
                security.push(json!({"accessKey": []}));
            }
        }
        let params: Vec<Value> = path_params(template)
            .into_iter()
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut responses = json!({
            "2XX": {"description": "Success (see docs/api.md for the body)",
                    "content": {"application/json": {"schema": {}}}},
            "4XX": {"$ref": "#/components/responses/Problem"},
            "5XX": {"$ref": "#/components/responses/Problem"},
        });
        if !open {
            responses["401"] = json!({"$ref": "#/components/responses/Problem"});
            responses["403"] = json!({"$ref": "#/components/responses/Problem"});
        }
        let mut op = json!({
            "summary": summary,
            "operationId": format!("{}{}", method.to_ascii_lowercase(), template.replace(['/', '{', '}', '.', '-'], "_")),
            "security": security,
            "responses": responses,
            "x-switchyard-tenant-token": tenant,
            "x-switchyard-least-role": role.map(|r| r.as_str()),
        });
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        let entry = paths
            .entry(template.to_string())
            .or_insert_with(|| json!({}));
        entry[method.to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Switchyard API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Management, contact-centre, call-control, CDR and report API of a Switchyard node. Every route but /health and /metrics needs a credential: the node's or a tenant's bearer token, or a tenant's access key (SWY1-HMAC-SHA256 signature). Errors are RFC 9457 problem details."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "The node's token (every route) or a tenant's token (the routes marked x-switchyard-tenant-token)"},
                "accessKey": {"type": "apiKey", "in": "header", "name": "Authorization",
                              "description": "SWY1-HMAC-SHA256 Credential=<key id>, Signature=<hex>, with X-Swy-Date and X-Swy-Nonce; see docs/api-access.md. The key's role must be at least x-switchyard-least-role"}
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"}
                    }
                }
            },
            "responses": {
                "Problem": {
                    "description": "RFC 9457 problem details",
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_security_per_operation() {
        let d = document();
        assert_eq!(d["openapi"], "3.1.0");
        let cdrs = &d["paths"]["/cdrs"]["get"];
        assert_eq!(cdrs["x-switchyard-tenant-token"], true);
        assert_eq!(cdrs["x-switchyard-least-role"], "read_only");
        assert_eq!(cdrs["security"].as_array().unwrap().len(), 2);
        let trunk = &d["paths"]["/trunks/{id}"]["put"];
        assert_eq!(trunk["security"], json!([{"bearer": []}]));
        assert_eq!(trunk["parameters"][0]["name"], "id");
        assert_eq!(d["paths"]["/health"]["get"]["security"], json!([]));
        // Unique operation ids, as the specification requires.
        let mut ids = std::collections::BTreeSet::new();
        for (m, t, _) in OPERATIONS {
            let id = d["paths"][t][m.to_ascii_lowercase()]["operationId"].clone();
            assert!(ids.insert(id.to_string()), "{m} {t}");
        }
    }
}
