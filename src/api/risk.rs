//! Risk control routes (issue 20): the black and white lists, a dry check of a number, the
//! newest decisions. The rules themselves are in [`crate::routing::risk`], their state in
//! [`crate::actors::risk::RiskDesk`].
//!
//! | route | who | answer |
//! |---|---|---|
//! | `GET /risk/check?number=N[&tenant=T]` | node, tenant | whether the tenant may call N now, and if not the rule |
//! | `GET /risk/decisions[?tenant=T][&limit=N]` | node, tenant (its own) | the newest decisions, newest first |
//! | `GET /risk/tenants/{tenant}/{black\|white}` | node, tenant | the tenant's list |
//! | `POST /risk/tenants/{tenant}/{black\|white}[/remove]` | node, tenant | adds (removes) entries |
//! | `GET`, `POST /risk/tags/{tag}/{black\|white}[/remove]` | node | a tag's list |
//! | `GET`, `POST /risk/platform/{black\|white}[/remove]` | node | the platform's list |
//!
//! A change's body is JSON `{"entries": ["4420*", "+442079460000"]}`, or text with one
//! entry per line (the first comma-separated field; `#` comments and blank lines skipped),
//! at most [`MAX_BATCH`] entries: a bad entry refuses the whole request (400 naming it).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use super::problem::respond;
use super::{route, ApiState, Caller, Params, Problem};
use crate::actors::risk::{Attempt, ListError, Origin, RiskDesk};
use crate::routing::risk::{self, Decision, Entry, ListKind, Scope};

/// Most entries one request may add or remove.
pub const MAX_BATCH: usize = 10_000;

/// `limit` of a list or of the decisions when none is given, and the largest.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 100_000;

/// The 409 of a refused outbound call: its detail and `rule` name the rule (503 when the
/// attempt counts could not be read).
pub(super) fn refusal(d: &Decision) -> Problem {
    let status = match d.rule {
        risk::Rule::CapUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::CONFLICT,
    };
    let mut p = Problem::new(
        status,
        format!("refused by risk rule {}: {}", d.rule.label(), d.detail),
    );
    p.rule = Some(d.rule.label());
    p
}

pub(super) fn routes(router: Router<ApiState>) -> Router<ApiState> {
    let router = route(router, "/risk/check", get(check));
    let router = route(router, "/risk/decisions", get(decisions));
    let router = route(
        router,
        "/risk/tenants/{tenant}/{kind}",
        get(get_tenant_list).post(add_tenant),
    );
    let router = route(
        router,
        "/risk/tenants/{tenant}/{kind}/remove",
        post(remove_tenant),
    );
    let router = route(
        router,
        "/risk/tags/{tag}/{kind}",
        get(get_tag_list).post(add_tag),
    );
    let router = route(router, "/risk/tags/{tag}/{kind}/remove", post(remove_tag));
    let router = route(
        router,
        "/risk/platform/{kind}",
        get(get_platform_list).post(add_platform),
    );
    route(
        router,
        "/risk/platform/{kind}/remove",
        post(remove_platform),
    )
}

fn desk(state: &ApiState) -> Result<std::sync::Arc<RiskDesk>, Problem> {
    state
        .cc
        .as_deref()
        .and_then(|cc| cc.calls().risk.get().cloned())
        .ok_or_else(|| Problem::not_found("this node runs no risk desk"))
}

/// A query value with `%2B` as `+` (numbers are given in E.164).
fn plus(value: &str) -> String {
    value.replace("%2B", "+").replace("%2b", "+")
}

// ---------------------------------------------------------------------------- check

/// The answer of `GET /risk/check`.
#[derive(Debug, Serialize)]
struct CheckAnswer {
    tenant: Option<String>,
    number: String,
    /// The number as it would go out (the route's strip and prepend).
    dialled: String,
    /// The route it would take; None: no route (calls to it would be a 404).
    route: Option<String>,
    allowed: bool,
    rule: &'static str,
    detail: String,
}

async fn check(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Response {
    let answer = async {
        let params = Params::parse(&uri, &["number", "tenant"])?;
        let tenant = caller.listing(params.get("tenant"))?.map(str::to_string);
        let number = plus(
            params
                .get("number")
                .ok_or_else(|| Problem::bad_request("number= is required"))?,
        );
        if risk::normalize(&number).is_none() {
            return Err(Problem::bad_request(format!(
                "number: digits, letters, * and # (a leading +), at most {}",
                risk::MAX_NUMBER_LEN
            )));
        }
        let desk = desk(&state)?;
        if let (Some(t), Some(cc)) = (&tenant, state.cc.as_deref()) {
            cc.directory.has_tenant(t)?;
        }
        let routes = state.cc.as_deref().and_then(|cc| cc.calls().routes.get());
        let route = routes.and_then(|r| r.lookup(number.as_bytes()));
        let dialled = match &route {
            Some(r) => String::from_utf8_lossy(&crate::actors::router::Routes::rewrite(
                r,
                number.as_bytes(),
            ))
            .into_owned(),
            None => number.clone(),
        };
        let d = desk
            .check(Attempt {
                tenant: tenant.as_deref(),
                number: &dialled,
                route: route.as_ref().map(|r| &*r.id),
                origin: Origin::ClickToCall,
                zone: None,
            })
            .await;
        metrics::counter!(risk::RISK_CHECKS, "result" => d.result()).increment(1);
        Ok(CheckAnswer {
            tenant,
            number,
            dialled,
            route: route.map(|r| r.id.to_string()),
            allowed: d.allow,
            rule: d.rule.label(),
            detail: d.detail,
        })
    };
    respond(answer.await)
}

async fn decisions(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Response {
    let answer = async {
        let params = Params::parse(&uri, &["tenant", "limit"])?;
        let tenant = caller.listing(params.get("tenant"))?;
        let limit = params.number("limit", DEFAULT_LIMIT)?.min(MAX_LIMIT);
        Ok(desk(&state)?.decisions(tenant, limit))
    };
    respond(answer.await)
}

// ---------------------------------------------------------------------------- lists

/// A list as `GET` shows it (a page of its sorted entries).
#[derive(Debug, Serialize)]
struct ListAnswer {
    scope: &'static str,
    owner: String,
    kind: &'static str,
    /// Entries in the list (all pages).
    size: usize,
    entries: Vec<String>,
}

/// The answer to a change: the list's size after it.
#[derive(Debug, Serialize)]
struct ChangeAnswer {
    scope: &'static str,
    owner: String,
    kind: &'static str,
    /// Entries in the request.
    entries: usize,
    size: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeBody {
    entries: Vec<String>,
}

fn kind(text: &str) -> Result<ListKind, Problem> {
    ListKind::parse(text)
        .ok_or_else(|| Problem::not_found(format!("no list {text:?}: black or white")))
}

fn tag_scope(tag: &str) -> Result<Scope, Problem> {
    if !crate::config::valid_risk_name(tag) {
        return Err(Problem::bad_request(format!(
            "tag {tag:?}: 1-64 letters, digits, - _ ."
        )));
    }
    Ok(Scope::Tag(tag.to_string()))
}

fn tenant_scope(state: &ApiState, tenant: &str) -> Result<Scope, Problem> {
    if let Some(cc) = state.cc.as_deref() {
        cc.directory.has_tenant(tenant)?;
    }
    Ok(Scope::Tenant(tenant.to_string()))
}

/// The entries of a change's body: JSON `{"entries": [...]}` or one per line.
fn parse_entries(body: &[u8]) -> Result<Vec<Entry>, Problem> {
    let text = std::str::from_utf8(body).map_err(|_| Problem::bad_request("body is not UTF-8"))?;
    let raw: Vec<String> = if text.trim_start().starts_with('{') {
        Problem::json_body::<ChangeBody>(body)?.entries
    } else {
        text.lines()
            .map(|l| l.split(',').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .take(MAX_BATCH + 1)
            .collect()
    };
    if raw.is_empty() {
        return Err(Problem::bad_request("no entries"));
    }
    if raw.len() > MAX_BATCH {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {MAX_BATCH} entries per request"),
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(i, e)| {
            Entry::parse(e).map_err(|why| Problem::bad_request(format!("entries[{i}]: {why}")))
        })
        .collect()
}

fn show(state: &ApiState, scope: Scope, kind_text: &str, uri: &Uri) -> Result<ListAnswer, Problem> {
    let kind = kind(kind_text)?;
    let params = Params::parse(uri, &["limit", "offset"])?;
    let limit = params.number("limit", DEFAULT_LIMIT)?.min(MAX_LIMIT);
    let offset = params.number("offset", 0)?;
    let all = desk(state)?.list(&scope, kind);
    Ok(ListAnswer {
        scope: scope.label(),
        owner: scope.owner().to_string(),
        kind: kind.label(),
        size: all.len(),
        entries: all.into_iter().skip(offset).take(limit).collect(),
    })
}

async fn change(
    state: &ApiState,
    scope: Scope,
    kind_text: &str,
    body: &[u8],
    add: bool,
) -> Response {
    let answer = async {
        let kind = kind(kind_text)?;
        let entries = parse_entries(body)?;
        let n = entries.len();
        let (a, r) = if add {
            (entries, Vec::new())
        } else {
            (Vec::new(), entries)
        };
        let desk = desk(state)?;
        let size = desk
            .change_list(scope.clone(), kind, a, r)
            .await
            .map_err(|e| match e {
                ListError::TooMany(..) => Problem::new(StatusCode::CONFLICT, e.to_string()),
                ListError::Store(_) => Problem::unavailable(e.to_string()),
            })?;
        Ok::<_, Problem>(ChangeAnswer {
            scope: scope.label(),
            owner: scope.owner().to_string(),
            kind: kind.label(),
            entries: n,
            size,
        })
    };
    let (result, response) = match answer.await {
        Ok(a) => ("ok", Json(a).into_response()),
        Err(p) => {
            let label = match p.status {
                409 => "too_many",
                503 => "unavailable",
                404 => "not_found",
                _ => "bad_request",
            };
            (label, p.into_response())
        }
    };
    metrics::counter!(risk::RISK_LIST_CHANGES, "result" => result).increment(1);
    response
}

async fn get_tenant_list(
    State(state): State<ApiState>,
    Path((tenant, kind)): Path<(String, String)>,
    uri: Uri,
) -> Response {
    respond(tenant_scope(&state, &tenant).and_then(|s| show(&state, s, &kind, &uri)))
}

async fn add_tenant(
    State(state): State<ApiState>,
    Path((tenant, kind)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    match tenant_scope(&state, &tenant) {
        Ok(s) => change(&state, s, &kind, &body, true).await,
        Err(p) => p.into_response(),
    }
}

async fn remove_tenant(
    State(state): State<ApiState>,
    Path((tenant, kind)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    match tenant_scope(&state, &tenant) {
        Ok(s) => change(&state, s, &kind, &body, false).await,
        Err(p) => p.into_response(),
    }
}

async fn get_tag_list(
    State(state): State<ApiState>,
    Path((tag, kind)): Path<(String, String)>,
    uri: Uri,
) -> Response {
    respond(tag_scope(&tag).and_then(|s| show(&state, s, &kind, &uri)))
}

async fn add_tag(
    State(state): State<ApiState>,
    Path((tag, kind)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    match tag_scope(&tag) {
        Ok(s) => change(&state, s, &kind, &body, true).await,
        Err(p) => p.into_response(),
    }
}

async fn remove_tag(
    State(state): State<ApiState>,
    Path((tag, kind)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    match tag_scope(&tag) {
        Ok(s) => change(&state, s, &kind, &body, false).await,
        Err(p) => p.into_response(),
    }
}

async fn get_platform_list(
    State(state): State<ApiState>,
    Path(kind): Path<String>,
    uri: Uri,
) -> Response {
    respond(show(&state, Scope::Platform, &kind, &uri))
}

async fn add_platform(
    State(state): State<ApiState>,
    Path(kind): Path<String>,
    body: Bytes,
) -> Response {
    change(&state, Scope::Platform, &kind, &body, true).await
}

async fn remove_platform(
    State(state): State<ApiState>,
    Path(kind): Path<String>,
    body: Bytes,
) -> Response {
    change(&state, Scope::Platform, &kind, &body, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_as_json_or_lines_and_are_bounded() {
        let e = parse_entries(br#"{"entries": ["4420*", "+33123"]}"#).unwrap();
        assert_eq!(
            e,
            [Entry::Prefix("4420".into()), Entry::Number("33123".into())]
        );
        let e = parse_entries(b"# dnc\n4420*,complaint\n\n+33123\n").unwrap();
        assert_eq!(e.len(), 2);
        let bad = parse_entries(br#"{"entries": ["4420*", "44 20"]}"#).unwrap_err();
        assert_eq!(bad.status, 400);
        assert!(bad.detail.contains("entries[1]"), "{}", bad.detail);
        assert_eq!(parse_entries(b"").unwrap_err().status, 400);
        assert_eq!(
            parse_entries(br#"{"entries": [], "x": 1}"#)
                .unwrap_err()
                .status,
            400
        );
        let many: String = (0..=MAX_BATCH).map(|i| format!("{i}\n")).collect();
        assert_eq!(parse_entries(many.as_bytes()).unwrap_err().status, 413);
    }

    #[test]
    fn a_refusal_names_its_rule() {
        let p = refusal(&Decision::refuse(
            risk::Rule::TenantBlacklist,
            "tenant black 44*",
        ));
        assert_eq!(p.status, 409);
        assert_eq!(p.rule, Some("tenant_blacklist"));
        let body = serde_json::to_value(&p).unwrap();
        assert_eq!(body["rule"], "tenant_blacklist");
        assert_eq!(
            refusal(&Decision::refuse(risk::Rule::CapUnavailable, "")).status,
            503
        );
    }
}
