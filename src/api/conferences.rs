//! Conferences: a tenant's rooms where any number of call legs meet in one mix
//! ([`crate::actors::conference`]).
//!
//! | route | answer |
//! |---|---|
//! | `GET /conferences[?tenant=T]` | [`ConferenceList`]: the rooms in progress on this node |
//! | `POST /conferences/{tenant}` `{"id"?}` | 201 [`Conference`]: an empty room (a random id if none is given); 409 if the id is taken or the tenant holds its most rooms |
//! | `GET /conferences/{tenant}/{id}` | [`Conference`] with its participants |
//! | `DELETE /conferences/{tenant}/{id}` | 202: every participant is hung up; the room ends with the last |
//! | `POST /conferences/{tenant}/{id}/participants` `{"target"}` | 202 [`Dialling`]: the tenant's user (or agent, or a number leading to a user) is rung and joins when it answers |
//! | `POST /conferences/{tenant}/{id}/participants` `{"call", "leg"?}` | the call's `caller` leg (default) or `callee` leg moves into the room, the other leg is sent BYE (a queue's agent goes to wrap-up); 409 if the call is not connected, 422 if its media is not anchored |
//! | `PUT /conferences/{tenant}/{id}/participants/{participant}` `{"mute"?, "deaf"?}` | the [`Participant`]: muted (nobody hears it) or deaf (it hears nobody), or back |
//! | `DELETE /conferences/{tenant}/{id}/participants/{participant}` | 202: the participant is hung up (kicked) |
//!
//! A participant's id is its call's id (`GET /calls/{call_id}` shows the call). Callers of a
//! tenant number whose target is `conference:<id>` join the room `id` (made by the first).
//! A tenant's token reaches its own rooms only (another tenant's answer 404). Rooms live
//! on the node whose media engine mixes them: another node's are not listed.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use super::problem::respond;
use super::{route, ApiState, Caller, Params, Problem};
use crate::actors::call::{CallContext, CallMsg, Env, NodeEnv, TargetError, TransferTarget};
use crate::actors::conference::{valid_id, Conference, Participant, Refusal};

/// Counter, labels `action` (`create`, `end`, `dial`, `move`, `set`, `kick`) and `result` (`ok`,
/// `refused`, `not_found`, `unavailable`, `bad_request`): conference commands on the API.
pub const CONFERENCE_API_TOTAL: &str = "switchyard_conference_api_total";

/// The CDR's reason for a participant hung up through the API.
pub const KICK_REASON: &str = "kicked from conference";

pub fn describe() {
    metrics::describe_counter!(
        CONFERENCE_API_TOTAL,
        "Conference commands on the HTTP API (create, end, dial, set, kick), by action and result"
    );
}

/// The body of `GET /conferences`.
#[derive(Debug, Serialize)]
pub struct ConferenceList {
    pub conferences: Vec<Conference>,
}

/// The answer to a dial-out: the call ringing the target (the participant's id once it
/// answers).
#[derive(Debug, Serialize)]
pub struct Dialling {
    pub conference: String,
    pub call_id: String,
    pub target: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    id: Option<String>,
}

/// The body of `POST .../participants`: a `target` to dial, or a `call` whose `leg`
/// (`caller`, the default, or `callee`) moves in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    call: Option<String>,
    #[serde(default)]
    leg: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBody {
    #[serde(default)]
    mute: Option<bool>,
    #[serde(default)]
    deaf: Option<bool>,
}

pub(super) fn routes(router: Router<ApiState>) -> Router<ApiState> {
    let router = route(router, "/conferences", get(list));
    let router = route(router, "/conferences/{tenant}", post(create));
    let router = route(router, "/conferences/{tenant}/{id}", get(show).delete(end));
    let router = route(
        router,
        "/conferences/{tenant}/{id}/participants",
        post(dial),
    );
    route(
        router,
        "/conferences/{tenant}/{id}/participants/{participant}",
        put(set).delete(kick),
    )
}

fn calls(state: &ApiState) -> Result<&Arc<CallContext>, Problem> {
    Ok(super::cc::contact_centre(state)?.calls())
}

fn now_ms() -> u64 {
    crate::store::now_unix_ms() as u64
}

fn counted<T>(action: &'static str, answer: &Result<T, Problem>) {
    let result = match answer {
        Ok(_) => "ok",
        Err(p) => match p.status {
            400 => "bad_request",
            404 => "not_found",
            503 => "unavailable",
            _ => "refused",
        },
    };
    metrics::counter!(CONFERENCE_API_TOTAL, "action" => action, "result" => result).increment(1);
}

fn refused(r: Refusal) -> Problem {
    let status = match r {
        Refusal::NotFound => StatusCode::NOT_FOUND,
        Refusal::Media(_) => StatusCode::SERVICE_UNAVAILABLE,
        Refusal::Full | Refusal::TooMany | Refusal::Exists => StatusCode::CONFLICT,
    };
    Problem::new(status, r.to_string())
}

fn missing(tenant: &str, id: &str) -> Problem {
    Problem::not_found(format!("no conference {tenant}/{id}"))
}

async fn list(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Response {
    respond((|| {
        let params = Params::parse(&uri, &["tenant"])?;
        let ctx = calls(&state)?;
        let conferences = match caller.listing(params.get("tenant"))? {
            Some(t) => ctx.conferences.list(t, now_ms()),
            None => ctx.conferences.list_all(now_ms()),
        };
        Ok(ConferenceList { conferences })
    })())
}

async fn create(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let answer = (|| {
        caller.check(&tenant)?;
        known_tenant(&state, &tenant)?;
        let b: CreateBody = if body.is_empty() {
            CreateBody::default()
        } else {
            Problem::json_body(&body)?
        };
        let id = match b.id {
            Some(id) if valid_id(&id) => id,
            Some(_) => {
                return Err(Problem::bad_request(
                    "id: 1 to 64 letters, digits, - _ or .",
                ))
            }
            None => String::from_utf8_lossy(&crate::sip::dialog::random_token(12)).into_owned(),
        };
        calls(&state)?
            .conferences
            .create(&tenant, &id, now_ms())
            .map_err(refused)
    })();
    counted("create", &answer);
    match answer {
        Ok(c) => (StatusCode::CREATED, Json(c)).into_response(),
        Err(p) => p.into_response(),
    }
}

/// A tenant this node knows: rooms of made-up tenants are refused (404).
fn known_tenant(state: &ApiState, tenant: &str) -> Result<(), Problem> {
    super::cc::contact_centre(state)?
        .directory
        .has_tenant(tenant)
}

async fn show(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((tenant, id)): Path<(String, String)>,
) -> Response {
    respond((|| {
        caller.check(&tenant)?;
        calls(&state)?
            .conferences
            .get(&tenant, &id)
            .ok_or_else(|| missing(&tenant, &id))
    })())
}

/// Asks a participant's call to hang up (a kick).
fn hang_up(ctx: &CallContext, call_id: &str) -> Result<(), Problem> {
    let actor = ctx.directory.lookup(call_id.as_bytes()).ok_or_else(|| {
        Problem::unavailable(format!("call {call_id:?} is restarting; try again"))
    })?;
    actor
        .cast(CallMsg::Hangup(KICK_REASON.to_string()))
        .map_err(|e| Problem::unavailable(format!("the call did not take the command: {e}")))?;
    metrics::counter!(crate::actors::conference::CONFERENCE_EVENTS, "event" => "kicked")
        .increment(1);
    Ok(())
}

/// The participants' call ids of a room the caller may see (404 if there is none).
fn members(ctx: &CallContext, tenant: &str, id: &str) -> Result<Vec<String>, Problem> {
    ctx.conferences
        .calls(tenant, id)
        .ok_or_else(|| missing(tenant, id))
}

async fn end(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((tenant, id)): Path<(String, String)>,
) -> Response {
    let answer = (|| {
        caller.check(&tenant)?;
        let ctx = calls(&state)?;
        let members = members(ctx, &tenant, &id)?;
        if members.is_empty() {
            ctx.conferences.remove_empty(&tenant, &id);
        }
        for call in &members {
            hang_up(ctx, call)?;
        }
        Ok(
            serde_json::json!({ "conference": id, "result": "ending", "participants": members.len() }),
        )
    })();
    counted("end", &answer);
    match answer {
        Ok(a) => (StatusCode::ACCEPTED, Json(a)).into_response(),
        Err(p) => p.into_response(),
    }
}

async fn dial(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((tenant, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let parsed = caller
        .check(&tenant)
        .and_then(|_| Problem::json_body::<JoinBody>(&body));
    let b = match parsed {
        Ok(b) => b,
        Err(p) => {
            counted::<()>("dial", &Err(p.clone()));
            return p.into_response();
        }
    };
    match (b.target, b.call) {
        (Some(target), None) if b.leg.is_none() => {
            let answer = dial_out(&state, &tenant, &id, target).await;
            counted("dial", &answer);
            match answer {
                Ok(a) => (StatusCode::ACCEPTED, Json(a)).into_response(),
                Err(p) => p.into_response(),
            }
        }
        (None, Some(call)) => {
            let answer = move_in(&state, &caller, &tenant, &id, &call, b.leg.as_deref()).await;
            counted("move", &answer);
            respond(answer)
        }
        _ => {
            let p = Problem::bad_request("either target, or call (with leg: caller or callee)");
            counted::<()>("dial", &Err(p.clone()));
            p.into_response()
        }
    }
}

/// One leg of a call in progress moves into the room; the other is let go.
async fn move_in(
    state: &ApiState,
    caller: &Caller,
    tenant: &str,
    id: &str,
    call: &str,
    leg: Option<&str>,
) -> Result<super::calls::ControlAnswer, Problem> {
    let callee = match leg.unwrap_or("caller") {
        "caller" => false,
        "callee" => true,
        _ => return Err(Problem::bad_request("leg: caller or callee")),
    };
    if calls(state)?.conferences.get(tenant, id).is_none() {
        return Err(missing(tenant, id));
    }
    let command = crate::actors::call::Command::JoinConference {
        tenant: Arc::from(tenant),
        id: Arc::from(id),
        callee,
    };
    super::calls::run(state, caller, call, Ok(command)).await
}

async fn dial_out(
    state: &ApiState,
    tenant: &str,
    id: &str,
    target: String,
) -> Result<Dialling, Problem> {
    let target = super::calls::checked_target(target)?;
    let ctx = calls(state)?;
    if ctx.conferences.get(tenant, id).is_none() {
        return Err(missing(tenant, id));
    }
    // The same rule as a transfer's target: the tenant's users (an agent is rung like
    // one), its numbers that lead to a user; never an external number (it costs money).
    let env = NodeEnv::new(ctx.clone());
    let user = match env.transfer_target(tenant, &target) {
        Ok(TransferTarget::Phones { user, .. } | TransferTarget::Agent { user, .. }) => user,
        Ok(TransferTarget::Queue { .. }) => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "a queue cannot be dialled into a conference",
            ))
        }
        Err(e) => {
            let status = match e {
                TargetError::NotFound => StatusCode::NOT_FOUND,
                TargetError::Forbidden => StatusCode::FORBIDDEN,
                TargetError::Unavailable => StatusCode::CONFLICT,
            };
            return Err(Problem::new(status, format!("{target}: {}", e.status().1)));
        }
    };
    let forks = env.lookup_user(tenant, &user);
    if forks.is_empty() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!("{user} has no registered phone"),
        ));
    }
    let cc = &super::cc::contact_centre(state)?.cc;
    let supervisor = ractor::registry::where_is(crate::supervision::catalog::calls_name(&cc.node))
        .map(ractor::ActorRef::<crate::supervision::SupervisorMsg>::from)
        .ok_or_else(|| Problem::unavailable("calls supervisor not running"))?;
    let domain = super::cc::tenant_domain(cc, tenant).await;
    let aor = format!("sip:{user}@{domain}");
    let tenant_id: Arc<str> = Arc::from(tenant);
    let call_id =
        crate::actors::call::dial_into_conference(ctx, &supervisor, &tenant_id, id, &aor, forks)
            .await
            .map_err(|e| Problem::unavailable(format!("call not started: {e}")))?;
    Ok(Dialling {
        conference: id.to_string(),
        call_id,
        target: format!("user:{user}"),
    })
}

async fn set(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((tenant, id, participant)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let answer = (|| -> Result<Participant, Problem> {
        caller.check(&tenant)?;
        let b: SetBody = Problem::json_body(&body)?;
        if b.mute.is_none() && b.deaf.is_none() {
            return Err(Problem::bad_request("mute or deaf (true or false)"));
        }
        let ctx = calls(&state)?;
        let media = ctx
            .media
            .get()
            .ok_or_else(|| Problem::unavailable("media anchoring is not running"))?;
        ctx.conferences
            .set(&media.engine, &tenant, &id, &participant, b.mute, b.deaf)
            .map_err(|r| match r {
                Refusal::NotFound => {
                    Problem::not_found(format!("no participant {participant:?} in {tenant}/{id}"))
                }
                r => refused(r),
            })
    })();
    counted("set", &answer);
    respond(answer)
}

async fn kick(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((tenant, id, participant)): Path<(String, String, String)>,
) -> Response {
    let answer = (|| {
        caller.check(&tenant)?;
        let ctx = calls(&state)?;
        if !members(ctx, &tenant, &id)?.contains(&participant) {
            return Err(Problem::not_found(format!(
                "no participant {participant:?} in {tenant}/{id}"
            )));
        }
        hang_up(ctx, &participant)?;
        Ok(serde_json::json!({ "conference": id, "participant": participant, "result": "kicked" }))
    })();
    counted("kick", &answer);
    match answer {
        Ok(a) => (StatusCode::ACCEPTED, Json(a)).into_response(),
        Err(p) => p.into_response(),
    }
}
