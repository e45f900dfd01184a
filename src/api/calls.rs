//! Call control: the calls in progress on this node, and hold, transfer and release.
//!
//! | route | answer |
//! |---|---|
//! | `GET /calls[?tenant=T][&limit=N][&offset=N]` | [`CallList`]: the calls in progress, oldest first |
//! | `GET /calls/{call_id}` | one call's [`CallView`] |
//! | `POST /calls/{call_id}/hold`, `/unhold` | [`ControlAnswer`]: the customer's leg hears music, the agent's nothing |
//! | `POST /calls/{call_id}/transfer` `{"target", "mode": "blind"}` | [`ControlAnswer`]: the agent's leg leaves, the other party is connected to the target |
//! | `POST /calls/{call_id}/transfer` `{"target", "mode": "attended"}`, `POST /calls/{call_id}/consult` `{"target"}` | [`ControlAnswer`]: the customer holds while the target rings, then talks with the agent |
//! | `POST /calls/{call_id}/consult/complete`, `/consult/cancel` | [`ControlAnswer`]: the target takes the agent's place (an attended transfer), or the agent is back with the customer |
//! | `POST /calls/{call_id}/consult/conference` | [`ControlAnswer`]: a consultation whose target answered becomes a three-way (the customer stops holding and joins) |
//! | `POST /calls/{call_id}/conference` `{"target"}`, `DELETE` | [`ControlAnswer`]: the target rings and joins the caller and the agent in a three-way call; DELETE lets it go |
//! | `PUT /calls/{call_id}/conference` `{"party", "mute", "deaf"}` | [`ControlAnswer`]: `caller`, `agent` or `third` is muted (nobody hears it) or deaf (it hears nobody), or back |
//! | `POST /calls/{call_id}/monitor` `{"supervisor", "mode"}`, `PUT` `{"mode"}`, `DELETE` | [`ControlAnswer`]: a supervisor of the call's queue rings and joins in `listen`, `whisper` or `barge` (403 for anyone else); PUT changes the mode, DELETE lets it go |
//! | `DELETE /calls/{call_id}` | 202 [`ControlAnswer`]: BYE to both legs (CDR reason `released by api`) |
//!
//! `{call_id}` is the caller leg's Call-ID (the CDR's `a_call_id`, `call_id` in the listing),
//! percent-encoded in the path. The list is read from the calls' checkpoints (every call
//! past its first transition); commands go to the call's actor, which answers within
//! [`CONTROL_TIMEOUT`] (503 otherwise). A command the call cannot carry out now is refused
//! with the status the call core gives (409 not connected / on hold already / being
//! transferred, 422 media not anchored, 403 a target the tenant may not reach, 404 an
//! unknown target, 409 no consultation or a target that has not answered yet).
//!
//! A tenant's token sees and controls its own tenant's calls only: another tenant's call,
//! and a call with no tenant, answers 404 with the body of a call that does not exist
//! (counted as `other_tenant` in [`super::AUTH_REFUSED_TOTAL`]). In a cluster a call lives
//! on the node that runs it: another node's calls are not listed and answer 404 there.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::actors::call::{MonitorMode, Party};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use super::problem::respond;
use super::{route, ApiState, Caller, Params, Problem, AUTH_REFUSED_TOTAL};
use crate::actors::call::{CallContext, CallMsg, CallView, Command, Phase};

/// Counter, labels `action` (`hold`, `unhold`, `transfer`, `consult`, `consult_complete`,
/// `consult_cancel`, `consult_conference`, `conference`, `conference_party`, `conference_end`, `monitor`, `monitor_mode`,
/// `monitor_end`, `release`) and `result` (`ok`, `refused`, `not_found`, `unavailable`,
/// `bad_request`): call-control commands on the API.
pub const CALL_CONTROL_TOTAL: &str = "switchyard_call_control_total";

/// How long a call's actor has to answer a command.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// `limit` of `GET /calls` when none is given.
pub const DEFAULT_LIMIT: usize = 1000;

/// The largest `limit` of `GET /calls`: bounds one response (about 0.6 KB per call).
pub const MAX_LIMIT: usize = 10_000;

/// Longest transfer target: a user name or a number.
const MAX_TARGET: usize = 64;

/// The CDR's reason for a call released through the API.
pub const RELEASE_REASON: &str = "released by api";

/// Describe this module's metrics (called from [`super::describe`]).
pub fn describe() {
    metrics::describe_counter!(
        CALL_CONTROL_TOTAL,
        "Call-control commands on the HTTP API (hold, unhold, transfer, consult, release), by action and result"
    );
}

/// The body of `GET /calls`.
#[derive(Clone, Debug, Serialize)]
pub struct CallList {
    /// Calls that match the filter, over all pages.
    pub total: usize,
    /// This page, oldest call first.
    pub calls: Vec<CallView>,
}

/// The answer to a command: what was done, and the call as it is now (absent once released).
#[derive(Clone, Debug, Serialize)]
pub struct ControlAnswer {
    pub call_id: String,
    /// `held`, `unheld`, the transfer's target (`user:1003`, `queue:support`), `releasing`.
    pub result: String,
    pub call: Option<CallView>,
}

/// The body of `POST /calls/{call_id}/transfer`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    target: String,
    #[serde(default)]
    mode: Mode,
}

/// The body of `POST /calls/{call_id}/consult`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsultBody {
    target: String,
}

/// The body of `POST /calls/{call_id}/monitor`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MonitorBody {
    supervisor: String,
    mode: String,
}

/// The body of `PUT /calls/{call_id}/conference`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartyBody {
    party: String,
    #[serde(default)]
    mute: Option<bool>,
    #[serde(default)]
    deaf: Option<bool>,
}

/// The body of `PUT /calls/{call_id}/monitor`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MonitorModeBody {
    mode: String,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Blind,
    Attended,
}

/// Register the call-control routes. `POST /calls` (click-to-call) shares its path with
/// `GET /calls`, so it is registered here too.
pub(super) fn routes(router: Router<ApiState>) -> Router<ApiState> {
    let router = route(
        router,
        "/calls",
        get(list_calls).post(super::cc::click_to_call),
    );
    let router = route(
        router,
        "/calls/{call_id}",
        get(get_call).delete(release_call),
    );
    let router = route(router, "/calls/{call_id}/hold", post(hold_call));
    let router = route(router, "/calls/{call_id}/unhold", post(unhold_call));
    let router = route(router, "/calls/{call_id}/transfer", post(transfer_call));
    let router = route(router, "/calls/{call_id}/consult", post(consult_call));
    let router = route(
        router,
        "/calls/{call_id}/consult/complete",
        post(consult_complete),
    );
    let router = route(
        router,
        "/calls/{call_id}/consult/cancel",
        post(consult_cancel),
    );
    let router = route(
        router,
        "/calls/{call_id}/consult/conference",
        post(consult_conference),
    );
    let router = route(
        router,
        "/calls/{call_id}/conference",
        post(conference_call)
            .put(conference_party)
            .delete(conference_end),
    );
    route(
        router,
        "/calls/{call_id}/monitor",
        post(monitor_call).put(monitor_mode).delete(monitor_end),
    )
}

async fn list_calls(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Response {
    respond(list(&state, &caller, &uri))
}

fn list(state: &ApiState, caller: &Caller, uri: &Uri) -> Result<CallList, Problem> {
    let params = Params::parse(uri, &["tenant", "limit", "offset"])?;
    let tenant = caller.listing(params.get("tenant"))?;
    let limit = params.number("limit", DEFAULT_LIMIT)?;
    if limit > MAX_LIMIT {
        return Err(Problem::bad_request(format!(
            "limit is at most {MAX_LIMIT}"
        )));
    }
    let offset = params.number("offset", 0)?;
    let Some(ctx) = calls(state) else {
        return Ok(CallList {
            total: 0,
            calls: Vec::new(),
        });
    };
    // Filter before building views: a tenant's listing costs a look at each checkpoint's
    // tenant, not a copy of every call. No guard is held across an await (there is none).
    let mut keys: Vec<(i64, axum::body::Bytes)> = ctx
        .checkpoints
        .iter()
        .filter(|cp| cp.phase != Phase::Ended)
        .filter(|cp| tenant.is_none_or(|t| cp.tenant.as_deref() == Some(t)))
        .map(|cp| (cp.started_ms(), cp.key().clone()))
        .collect();
    keys.sort_unstable();
    let total = keys.len();
    let calls = keys
        .iter()
        .skip(offset)
        .take(limit)
        .filter_map(|(_, id)| ctx.checkpoints.get(id.as_ref()).map(|cp| cp.view()))
        .filter(|v| v.phase != "ended")
        .collect();
    Ok(CallList { total, calls })
}

async fn get_call(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(call_id): Path<String>,
) -> Response {
    respond(find(&state, &caller, &call_id).map(|(_, view)| view))
}

async fn hold_call(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(call_id): Path<String>,
) -> Response {
    control(&state, &caller, call_id, "hold", Ok(Command::Hold)).await
}

async fn unhold_call(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(call_id): Path<String>,
) -> Response {
    control(&state, &caller, call_id, "unhold", Ok(Command::Unhold)).await
}

async fn transfer_call(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(call_id): Path<String>,
    body: Bytes,
) -> Response {
    let command = transfer_command(&body);
    control(&state, &caller, call_id, "transfer", command).await
}

/// `POST /calls/{call_id}/consult {"target"}`: the start of an attended transfer.
async fn consult_call(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(call_id): Path<String>,
    body: Bytes,
) -> Response {
    let command = target_of(&body).map(|target| Command::Consult { target });
    control(&state, &caller, call_id, "consult", command).await
}

async fn consult_complete(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(call_id): Path<String>,
) -> Response {
    let command = Ok(Command::ConsultComplete);
    control(&state, &caller, call_id, "consult_complete", command).await
}

async fn consult_cancel(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(call_id): Path<String>,
) -> Response {
    let command = Ok(Command::ConsultCancel);
    control(&state, &caller, call_id, "consult_cancel", command).await
}

/// `POST /calls/{call_id}/consult/conference`: the consultation becomes a three-way.
async fn consult_conference(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(call_id): Path<String>,
) -> Response {
    let command = Ok(Command::ConsultConference);
    control(&state, &caller, call_id, "consult_conference", command).await
}

/// `POST /calls/{call_id}/conference {"target"}`: a three-way call.
async fn conference_call(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(call_id): Path<String>,
    body: Bytes,
) -> Response {
    let command = target_of(&body).map(|target| Command::Conference { target });
    control(&state, &caller, call_id, "conference", command).await
}

/// `PUT /calls/{call_id}/conference {"party", "mute", "deaf"}`.
async fn conference_party(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(call_id): Path<String>,
    body: Bytes,
) -> Response {
    let command = party_command(&body);
    control(&state, &caller, call_id, "conference_party", command).await
}

fn party_command(body: &[u8]) -> Result<Command, Problem> {
    let b = Problem::json_body::<PartyBody>(body)?;
    let party = Party::parse(&b.party)
        .ok_or_else(|| Problem::bad_request("party: caller, agent or third".to_string()))?;
    if b.mute.is_none() && b.deaf.is_none() {
        return Err(Problem::bad_request(
            "mute or deaf (true or false)".to_string(),
        ));
    }
    Ok(Command::ConferenceParty {
        party,
        mute: b.mute,
        deaf: b.deaf,
    })
}

async fn conference_end(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(call_id): Path<String>,
) -> Response {
    let command = Ok(Command::ConferenceEnd);
    control(&state, &caller, call_id, "conference_end", command).await
}

/// `POST /calls/{call_id}/monitor {"supervisor", "mode"}`.
async fn monitor_call(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(call_id): Path<String>,
    body: Bytes,
) -> Response {
    let command = monitor_command(&body);
    control(&state, &caller, call_id, "monitor", command).await
}

/// `PUT /calls/{call_id}/monitor {"mode"}`.
async fn monitor_mode(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(call_id): Path<String>,
    body: Bytes,
) -> Response {
    let command = Problem::json_body::<MonitorModeBody>(&body)
        .and_then(|b| checked_mode(&b.mode))
        .map(Command::MonitorMode);
    control(&state, &caller, call_id, "monitor_mode", command).await
}

async fn monitor_end(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(call_id): Path<String>,
) -> Response {
    let command = Ok(Command::MonitorEnd);
    control(&state, &caller, call_id, "monitor_end", command).await
}

/// The checked `target` of a `{"target"}` body (consultation, three-way).
fn target_of(body: &[u8]) -> Result<String, Problem> {
    checked_target(Problem::json_body::<ConsultBody>(body)?.target)
}

fn monitor_command(body: &[u8]) -> Result<Command, Problem> {
    let b = Problem::json_body::<MonitorBody>(body)?;
    Ok(Command::Monitor {
        supervisor: checked_target(b.supervisor)?,
        mode: checked_mode(&b.mode)?,
    })
}

fn checked_mode(mode: &str) -> Result<MonitorMode, Problem> {
    MonitorMode::parse(mode)
        .ok_or_else(|| Problem::bad_request("mode: listen, whisper or barge".to_string()))
}

/// `DELETE /calls/{call_id}`: the call ends at once (BYE to both legs, or the caller's
/// INVITE refused while it rings or waits).
async fn release_call(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(call_id): Path<String>,
) -> Response {
    let answer = (|| {
        let (ctx, _) = find(&state, &caller, &call_id)?;
        let actor = ctx.directory.lookup(call_id.as_bytes()).ok_or_else(|| {
            Problem::unavailable(format!("call {call_id:?} is restarting; try again"))
        })?;
        actor
            .cast(CallMsg::Hangup(RELEASE_REASON.to_string()))
            .map_err(|e| Problem::unavailable(format!("the call did not take the command: {e}")))?;
        Ok(ControlAnswer {
            call_id: call_id.clone(),
            result: "releasing".to_string(),
            call: None,
        })
    })();
    let result = result_label(&answer);
    metrics::counter!(CALL_CONTROL_TOTAL, "action" => "release", "result" => result).increment(1);
    match answer {
        Ok(a) => (StatusCode::ACCEPTED, Json(a)).into_response(),
        Err(p) => p.into_response(),
    }
}

/// The command of a transfer body: mode `blind` (the default) transfers at once; mode
/// `attended` starts a consultation with the target, which `/consult/complete` turns into
/// the transfer.
fn transfer_command(body: &[u8]) -> Result<Command, Problem> {
    let parsed = Problem::json_body::<TransferBody>(body)?;
    let target = checked_target(parsed.target)?;
    Ok(match parsed.mode {
        Mode::Blind => Command::Transfer { target },
        Mode::Attended => Command::Consult { target },
    })
}

/// A transfer or consultation target: 1 to [`MAX_TARGET`] letters, digits and `+*#._-` (a
/// user's name or a number; never a URI, so the API cannot make the switch dial anywhere).
pub(super) fn checked_target(target: String) -> Result<String, Problem> {
    let ok = !target.is_empty()
        && target.len() <= MAX_TARGET
        && target
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+*#._-".contains(c));
    match ok {
        true => Ok(target),
        false => Err(Problem::bad_request(format!(
            "target: 1 to {MAX_TARGET} letters, digits or + * # . _ -"
        ))),
    }
}

/// Runs a command on a call the caller may see; every outcome is counted in
/// [`CALL_CONTROL_TOTAL`].
async fn control(
    state: &ApiState,
    caller: &Caller,
    call_id: String,
    action: &'static str,
    command: Result<Command, Problem>,
) -> Response {
    let answer = run(state, caller, &call_id, command).await;
    let result = result_label(&answer);
    metrics::counter!(CALL_CONTROL_TOTAL, "action" => action, "result" => result).increment(1);
    respond(answer)
}

pub(super) async fn run(
    state: &ApiState,
    caller: &Caller,
    call_id: &str,
    command: Result<Command, Problem>,
) -> Result<ControlAnswer, Problem> {
    let command = command?;
    let (ctx, _) = find(state, caller, call_id)?;
    let actor = ctx.directory.lookup(call_id.as_bytes()).ok_or_else(|| {
        Problem::unavailable(format!("call {call_id:?} is restarting; try again"))
    })?;
    let timeout_ms = CONTROL_TIMEOUT.as_millis() as u64;
    let reply = ractor::call_t!(actor, CallMsg::Control, timeout_ms, command)
        .map_err(|e| Problem::unavailable(format!("the call did not answer: {e}")))?;
    let result = reply.map_err(|refused| {
        let status =
            StatusCode::from_u16(refused.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
        Problem::new(status, refused.reason)
    })?;
    // The actor checkpoints before it answers: the view shows the change.
    let call = ctx.checkpoints.get(call_id.as_bytes()).map(|cp| cp.view());
    Ok(ControlAnswer {
        call_id: call_id.to_string(),
        result,
        call,
    })
}

/// The call `call_id` if it is in progress here and the caller may see it; a 404 otherwise
/// (the same for another tenant's call as for none).
fn find<'s>(
    state: &'s ApiState,
    caller: &Caller,
    call_id: &str,
) -> Result<(&'s Arc<CallContext>, CallView), Problem> {
    let missing = || Problem::not_found(format!("no call {call_id:?} in progress on this node"));
    let ctx = calls(state).ok_or_else(missing)?;
    let view = ctx
        .checkpoints
        .get(call_id.as_bytes())
        .filter(|cp| cp.phase != Phase::Ended)
        .map(|cp| cp.view())
        .ok_or_else(missing)?;
    if let Some(own) = caller.tenant() {
        if view.tenant.as_deref() != Some(own) {
            metrics::counter!(AUTH_REFUSED_TOTAL, "reason" => "other_tenant").increment(1);
            return Err(missing());
        }
    }
    Ok((ctx, view))
}

/// This node's calls (none without a contact centre, which holds them).
fn calls(state: &ApiState) -> Option<&Arc<CallContext>> {
    state.cc.as_deref().map(|cc| cc.calls())
}

fn result_label<T>(answer: &Result<T, Problem>) -> &'static str {
    match answer {
        Ok(_) => "ok",
        Err(p) => match p.status {
            404 => "not_found",
            400 => "bad_request",
            503 => "unavailable",
            _ => "refused",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_bodies_are_checked() {
        assert_eq!(
            transfer_command(br#"{"target":"1003"}"#).unwrap(),
            Command::Transfer {
                target: "1003".into()
            }
        );
        assert_eq!(
            transfer_command(br#"{"target":"+4930123","mode":"blind"}"#).unwrap(),
            Command::Transfer {
                target: "+4930123".into()
            }
        );
        assert_eq!(
            transfer_command(br#"{"target":"1003","mode":"attended"}"#).unwrap(),
            Command::Consult {
                target: "1003".into()
            }
        );
        let status = |b: &[u8]| transfer_command(b).unwrap_err().status;
        assert_eq!(status(br#"{"target":"1003","mode":"consult"}"#), 400);
        assert_eq!(status(br#"{"target":""}"#), 400);
        assert_eq!(status(br#"{"target":"sip:1003@evil.example"}"#), 400);
        assert_eq!(status(br#"{"target":"1003\r\nVia: x"}"#), 400);
        assert_eq!(
            status(format!(r#"{{"target":"{}"}}"#, "1".repeat(65)).as_bytes()),
            400
        );
        assert_eq!(status(br#"{"target":"1003","extra":1}"#), 400);
        assert_eq!(status(b"{"), 400);
        assert_eq!(status(b""), 400);
    }

    #[test]
    fn monitor_bodies_are_checked() {
        assert_eq!(
            monitor_command(br#"{"supervisor":"1009","mode":"whisper"}"#).unwrap(),
            Command::Monitor {
                supervisor: "1009".into(),
                mode: MonitorMode::Whisper
            }
        );
        let status = |b: &[u8]| monitor_command(b).unwrap_err().status;
        assert_eq!(status(br#"{"supervisor":"1009","mode":"spy"}"#), 400);
        assert_eq!(status(br#"{"supervisor":"1009"}"#), 400);
        assert_eq!(
            status(br#"{"supervisor":"sip:x@evil","mode":"listen"}"#),
            400
        );
        assert_eq!(
            status(br#"{"supervisor":"1009","mode":"listen","x":1}"#),
            400
        );
        assert_eq!(checked_mode("barge").unwrap(), MonitorMode::Barge);
        assert_eq!(
            party_command(br#"{"party":"third","mute":true}"#).unwrap(),
            Command::ConferenceParty {
                party: Party::Third,
                mute: Some(true),
                deaf: None
            }
        );
        let status = |b: &[u8]| party_command(b).unwrap_err().status;
        assert_eq!(status(br#"{"party":"third"}"#), 400);
        assert_eq!(status(br#"{"party":"boss","mute":true}"#), 400);
        assert_eq!(status(br#"{"party":"agent","mute":"yes"}"#), 400);
    }

    #[test]
    fn results_are_labelled_by_status() {
        let p = |s: StatusCode| Err::<(), _>(Problem::new(s, "x"));
        assert_eq!(result_label(&Ok::<(), Problem>(())), "ok");
        assert_eq!(result_label(&p(StatusCode::NOT_FOUND)), "not_found");
        assert_eq!(result_label(&p(StatusCode::CONFLICT)), "refused");
        assert_eq!(
            result_label(&p(StatusCode::UNPROCESSABLE_ENTITY)),
            "refused"
        );
        assert_eq!(result_label(&p(StatusCode::FORBIDDEN)), "refused");
        assert_eq!(
            result_label(&p(StatusCode::SERVICE_UNAVAILABLE)),
            "unavailable"
        );
    }
}
