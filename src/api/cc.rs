//! Contact-centre routes: queues and agents, as thin handlers over their actors' messages.
//!
//! | route | answer |
//! |---|---|
//! | `GET /queues[?tenant=T]` | every queue's [`QueueStats`] |
//! | `GET /queues/{tenant}/{queue}` | one queue's [`QueueStats`] |
//! | `GET /queues/{tenant}/{queue}/waiting` | its waiting callers in order ([`queue::WaitingCaller`]) |
//! | `GET /queues/{tenant}/{queue}/decisions` | its recent routing decisions ([`queue::Decision`]) |
//! | `GET /agents[?tenant=T][&state=S][&limit=N][&offset=N]` | [`AgentList`] |
//! | `GET /agents/{tenant}/{agent}` | one agent's [`AgentInfo`] |
//! | `POST /agents/{tenant}/{agent}/{login,logout,ready,not-ready}` | [`AgentInfo`] after the change |
//!
//! A tenant's token reaches these routes for its own tenant only (the lists are filtered to
//! it; another tenant's queue or agent is a 404 as one that does not exist); recording
//! commands need the node's token (see [`super::auth`]).
//!
//! Actors are found by name (`queue/<tenant>/<id>@<node>`) at each request, never held,
//! so a restarted actor is found again. Which tenants, queues and agents exist comes from
//! the [`Directory`] (the tree's catalog: the config's and those added through the API): a
//! name it does not list is a 404; a listed
//! actor that is not running or does not answer in time is a 503; an agent's refusal of a
//! command (busy, no registered phone) is a 409 with its reason. In a cluster, a tenant
//! another node runs is a 307 to the same path on that node (click-to-call too: a 307 keeps
//! the method and body; clients must resend the token, e.g. `curl --location-trusted`); the
//! lists (`GET /queues`, `GET /agents`) show the tenants this node runs.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::cluster::tenant_elsewhere;
use super::problem::respond;
use super::{route, ApiState, Caller, Params, Problem};
use crate::actors::agent::{self, AgentInfo, AgentMsg, Command, CommandError};
use crate::actors::queue::{self, CcContext, QueueStats};
use crate::supervision::catalog::Catalog;

/// Counter, labels `command` (login, logout, ready, not_ready) and `result` (ok, refused,
/// not_found, unavailable, bad_request): agent state commands received on the API (those
/// refused for their token are counted in [`super::AUTH_REFUSED_TOTAL`]).
pub const AGENT_COMMANDS_TOTAL: &str = "switchyard_api_agent_commands_total";

/// `limit` of `GET /agents` when none is given.
pub const DEFAULT_LIMIT: usize = 1000;

/// The largest `limit` of `GET /agents`: bounds one response (about 0.5 KB per agent).
pub const MAX_LIMIT: usize = 10_000;

/// Agents asked at once while listing: enough to keep both cores busy, few enough that a
/// listing of 20,000 agents does not flood the runtime with tasks and the agents' mailboxes
/// with queries ahead of queue traffic.
const CONCURRENT_ASKS: usize = 128;

/// The not-ready reason when the body gives none.
const DEFAULT_REASON: &str = "break";

/// Longest not-ready reason accepted: it is shown in every listing of the agent.
const MAX_REASON: usize = 64;

/// Agent state labels as [`AgentInfo::state`] reports them, to reject a misspelt `state=`
/// filter instead of answering an empty list.
const STATES: [&str; 6] = agent::Status::LABELS;

/// Describe this module's metrics (called from [`super::describe`]).
pub fn describe() {
    metrics::describe_counter!(
        AGENT_COMMANDS_TOTAL,
        "Agent state commands on the HTTP API, by command and result"
    );
}

/// Which queues and agents each tenant has, by id: the API's map of the contact centre,
/// built from the config at start. Ids are kept sorted, so listings and pages are stable.
/// With [`Directory::with_live_queues`], the tenants, their queues and their agents are
/// those of the tree's [`Catalog`] instead, which tenants and queues added or deleted
/// through the API change.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    tenants: BTreeMap<Arc<str>, Members>,
    live: Option<Catalog>,
}

#[derive(Clone, Debug, Default)]
struct Members {
    queues: Vec<Arc<str>>,
    agents: Vec<Arc<str>>,
}

impl Directory {
    /// An empty directory.
    pub fn new() -> Directory {
        Directory::default()
    }

    /// Add a tenant's queues and agents (merged with what is already listed for it).
    pub fn insert<'a>(
        &mut self,
        tenant: &str,
        queues: impl IntoIterator<Item = &'a str>,
        agents: impl IntoIterator<Item = &'a str>,
    ) {
        let entry = self.tenants.entry(Arc::from(tenant)).or_default();
        entry.queues.extend(queues.into_iter().map(Arc::from));
        entry.agents.extend(agents.into_iter().map(Arc::from));
        for ids in [&mut entry.queues, &mut entry.agents] {
            ids.sort_unstable();
            ids.dedup();
        }
    }

    /// Takes each tenant's queues from `catalog` (the queues in force) rather than from
    /// what was inserted.
    pub fn with_live_queues(mut self, catalog: Catalog) -> Directory {
        self.live = Some(catalog);
        self
    }

    /// `tenant`'s queue ids (sorted), from the catalog if live.
    fn queues_of(&self, tenant: &str, m: &Members) -> Vec<Arc<str>> {
        match &self.live {
            Some(c) => c.queues_of(tenant).into_iter().map(Arc::from).collect(),
            None => m.queues.clone(),
        }
    }

    /// Number of agents listed, over all tenants (at start, for a live directory).
    pub fn agent_count(&self) -> usize {
        self.tenants.values().map(|m| m.agents.len()).sum()
    }

    /// A tenant and its members: from the catalog if live (tenants added or deleted through
    /// the API included), else as inserted.
    fn tenant(&self, tenant: &str) -> Result<(Arc<str>, Members), Problem> {
        let found = match &self.live {
            Some(c) => c.tenant_agents(tenant).map(|agents| {
                let m = Members {
                    queues: Vec::new(), // read from the catalog by queues_of
                    agents: agents.into_iter().map(Arc::from).collect(),
                };
                (Arc::from(tenant), m)
            }),
            None => self
                .tenants
                .get_key_value(tenant)
                .map(|(k, m)| (k.clone(), m.clone())),
        };
        found.ok_or_else(|| Problem::not_found(format!("no tenant {tenant:?}")))
    }

    /// The tenants a listing covers: one (404 if unknown) or all.
    fn select(&self, tenant: Option<&str>) -> Result<Vec<(Arc<str>, Members)>, Problem> {
        match (tenant, &self.live) {
            (Some(t), _) => Ok(vec![self.tenant(t)?]),
            (None, Some(c)) => Ok(c
                .tenants()
                .iter()
                .filter_map(|t| self.tenant(t).ok())
                .collect()),
            (None, None) => Ok(self
                .tenants
                .iter()
                .map(|(k, m)| (k.clone(), m.clone()))
                .collect()),
        }
    }

    /// `Ok` if the tenant exists; a 404 otherwise.
    pub(super) fn has_tenant(&self, tenant: &str) -> Result<(), Problem> {
        self.tenant(tenant).map(|_| ())
    }

    fn has_queue(&self, tenant: &str, queue: &str) -> Result<(), Problem> {
        let (_, m) = self.tenant(tenant)?;
        let found = match &self.live {
            Some(c) => c.has_queue(tenant, queue),
            None => m.queues.binary_search_by(|q| (**q).cmp(queue)).is_ok(),
        };
        match found {
            true => Ok(()),
            false => Err(Problem::not_found(format!(
                "tenant {tenant:?} has no queue {queue:?}"
            ))),
        }
    }

    fn has_agent(&self, tenant: &str, agent: &str) -> Result<(), Problem> {
        let (_, m) = self.tenant(tenant)?;
        match m.agents.binary_search_by(|a| (**a).cmp(agent)) {
            Ok(_) => Ok(()),
            Err(_) => Err(Problem::not_found(format!(
                "tenant {tenant:?} has no agent {agent:?}"
            ))),
        }
    }
}

/// What the contact-centre handlers share (behind an `Arc` in [`ApiState`]).
pub(super) struct ContactCentre {
    pub(super) cc: Arc<CcContext>,
    pub(super) directory: Directory,
}

impl ContactCentre {
    pub(super) fn new(cc: Arc<CcContext>, directory: Directory) -> ContactCentre {
        ContactCentre { cc, directory }
    }

    /// The node's calls (for [`super::calls`]).
    pub(super) fn calls(&self) -> &Arc<crate::actors::call::CallContext> {
        &self.cc.calls
    }

    /// The node's contact centre (for [`super::status`]).
    pub(super) fn context(&self) -> &Arc<CcContext> {
        &self.cc
    }
}

impl std::fmt::Debug for ContactCentre {
    // The context's tables (checkpoints of every agent) are not worth printing.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContactCentre")
            .field("node", &self.cc.node)
            .field("tenants", &self.directory.tenants.len())
            .field("agents", &self.directory.agent_count())
            .finish()
    }
}

/// The body of `GET /agents`.
#[derive(Clone, Debug, Serialize)]
pub struct AgentList {
    /// Agents that match the filters, over all pages.
    pub total: usize,
    /// This page, in tenant then agent id order.
    pub agents: Vec<AgentInfo>,
    /// Agents that did not answer in time (restarting, overloaded) and are left out: out
    /// of this page without a state filter, out of `total` with one.
    pub unanswered: usize,
}

/// The optional body of `POST .../not-ready`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotReadyBody {
    reason: Option<String>,
}

/// `POST /calls` body: ring `agent`'s phone, then call `number` (through the routes and
/// trunks) and bridge.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClickToCall {
    tenant: String,
    agent: String,
    number: String,
}

/// The answer to `POST /calls`: the agent leg's Call-ID (the CDR's `a_call_id`).
#[derive(Debug, Serialize)]
struct CallStarted {
    call_id: String,
}

/// Register the contact-centre routes (each with its `path` label).
pub(super) fn routes(router: Router<ApiState>) -> Router<ApiState> {
    let router = route(router, "/queues", get(list_queues));
    let router = route(router, "/queues/{tenant}/{queue}", get(get_queue));
    let router = route(router, "/queues/{tenant}/{queue}/waiting", get(get_waiting));
    let router = route(
        router,
        "/queues/{tenant}/{queue}/decisions",
        get(get_decisions),
    );
    let router = route(
        router,
        "/calls/{call_id}/recording/{command}",
        post(recording_command),
    );
    let router = route(router, "/agents", get(list_agents));
    let router = route(router, "/agents/{tenant}/{agent}", get(get_agent));
    route(
        router,
        "/agents/{tenant}/{agent}/{command}",
        post(agent_command),
    )
}

// ---------------------------------------------------------------------------- queues

async fn list_queues(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Response {
    respond(list_queues_inner(&state, &caller, &uri).await)
}

async fn list_queues_inner(
    state: &ApiState,
    caller: &Caller,
    uri: &Uri,
) -> Result<Vec<QueueStats>, Problem> {
    let params = Params::parse(uri, &["tenant"])?;
    let tenant = caller.listing(params.get("tenant"))?;
    let Some(cc) = &state.cc else {
        return Ok(Vec::new());
    };
    let keys: Vec<(Arc<str>, Arc<str>)> = cc
        .directory
        .select(tenant)?
        .into_iter()
        .flat_map(|(t, m)| {
            let queues = cc.directory.queues_of(&t, &m);
            queues.into_iter().map(move |q| (t.clone(), q))
        })
        .collect();
    let node: Arc<str> = Arc::from(cc.cc.node.as_str());
    let answers = ask_all(&keys, |(t, q)| {
        let (t, q, node) = (t.clone(), q.clone(), node.clone());
        async move { queue::stats(&queue::lookup(&t, &q, &node)?).await.ok() }
    })
    .await;
    // Queues are few and restart in milliseconds: a short list would hide the sick one,
    // so the listing fails and names it instead.
    let missing: Vec<String> = keys
        .iter()
        .zip(&answers)
        .filter(|(_, a)| a.is_none())
        .map(|((t, q), _)| format!("{t}/{q}"))
        .collect();
    if !missing.is_empty() {
        return Err(Problem::unavailable(format!(
            "queues not answering: {}",
            missing.join(", ")
        )));
    }
    Ok(answers.into_iter().flatten().collect())
}

async fn get_queue(
    State(state): State<ApiState>,
    Path((tenant, queue)): Path<(String, String)>,
    uri: Uri,
) -> Response {
    respond(
        ask_queue(&state, &uri, &tenant, &queue, |q| async move {
            queue::stats(&q).await
        })
        .await,
    )
}

async fn get_waiting(
    State(state): State<ApiState>,
    Path((tenant, queue)): Path<(String, String)>,
    uri: Uri,
) -> Response {
    respond(
        ask_queue(&state, &uri, &tenant, &queue, |q| async move {
            queue::waiting(&q).await
        })
        .await,
    )
}

async fn get_decisions(
    State(state): State<ApiState>,
    Path((tenant, queue)): Path<(String, String)>,
    uri: Uri,
) -> Response {
    respond(
        ask_queue(&state, &uri, &tenant, &queue, |q| async move {
            queue::decisions(&q).await
        })
        .await,
    )
}

/// Find a listed queue's actor and ask it one query.
async fn ask_queue<T, F, Fut>(
    state: &ApiState,
    uri: &Uri,
    tenant: &str,
    queue_id: &str,
    ask: F,
) -> Result<T, Problem>
where
    F: FnOnce(ractor::ActorRef<queue::QueueMsg>) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let cc = contact_centre(state)?;
    cc.directory.has_queue(tenant, queue_id)?;
    let actor = queue::lookup(tenant, queue_id, &cc.cc.node).ok_or_else(|| {
        tenant_elsewhere(state, tenant, uri).unwrap_or_else(|| {
            Problem::unavailable(format!("queue {tenant}/{queue_id} is not running"))
        })
    })?;
    ask(actor)
        .await
        .map_err(|e| Problem::unavailable(format!("queue {tenant}/{queue_id} did not answer: {e}")))
}

// ---------------------------------------------------------------------------- agents

async fn list_agents(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Response {
    respond(list_agents_inner(&state, &caller, &uri).await)
}

async fn list_agents_inner(
    state: &ApiState,
    caller: &Caller,
    uri: &Uri,
) -> Result<AgentList, Problem> {
    let params = Params::parse(uri, &["tenant", "state", "limit", "offset"])?;
    let tenant = caller.listing(params.get("tenant"))?;
    let wanted_state = match params.get("state") {
        Some(s) if !STATES.contains(&s) => {
            return Err(Problem::bad_request(format!(
                "state {s:?} is not one of {}",
                STATES.join(", ")
            )))
        }
        s => s,
    };
    let limit = params.number("limit", DEFAULT_LIMIT)?;
    if limit > MAX_LIMIT {
        return Err(Problem::bad_request(format!(
            "limit is at most {MAX_LIMIT}"
        )));
    }
    let offset = params.number("offset", 0)?;
    let empty = AgentList {
        total: 0,
        agents: Vec::new(),
        unanswered: 0,
    };
    let Some(cc) = &state.cc else {
        return Ok(empty);
    };
    let keys: Vec<(Arc<str>, Arc<str>)> = cc
        .directory
        .select(tenant)?
        .into_iter()
        .flat_map(|(t, m)| m.agents.into_iter().map(move |a| (t.clone(), a)))
        .collect();
    let node: Arc<str> = Arc::from(cc.cc.node.as_str());
    let ask = |(t, a): &(Arc<str>, Arc<str>)| {
        let (t, a, node) = (t.clone(), a.clone(), node.clone());
        async move { agent::info(&agent::lookup(&t, &a, &node)?).await.ok() }
    };
    match wanted_state {
        // Without a state filter the total is known from the directory: ask only this page.
        None => {
            let page = page(&keys, offset, limit);
            let answers = ask_all(page, ask).await;
            let unanswered = answers.iter().filter(|a| a.is_none()).count();
            Ok(AgentList {
                total: keys.len(),
                agents: answers.into_iter().flatten().collect(),
                unanswered,
            })
        }
        // A state is only known by asking, so every agent of the selected tenants is asked.
        Some(wanted) => {
            let answers = ask_all(&keys, ask).await;
            let unanswered = answers.iter().filter(|a| a.is_none()).count();
            let mut total = 0;
            let mut agents = Vec::new();
            for info in answers.into_iter().flatten().filter(|a| a.state == wanted) {
                if total >= offset && agents.len() < limit {
                    agents.push(info);
                }
                total += 1;
            }
            Ok(AgentList {
                total,
                agents,
                unanswered,
            })
        }
    }
}

async fn get_agent(
    State(state): State<ApiState>,
    Path((tenant, agent_id)): Path<(String, String)>,
    uri: Uri,
) -> Response {
    let answer = async {
        let actor = find_agent(&state, &uri, &tenant, &agent_id)?;
        agent::info(&actor).await.map_err(|e| {
            Problem::unavailable(format!("agent {tenant}/{agent_id} did not answer: {e}"))
        })
    };
    respond(answer.await)
}

/// `POST /agents/{tenant}/{agent}/{command}`: `login`, `logout`, `ready`, `not-ready` (the
/// last with an optional `{"reason": ...}` body). One handler, so every command gets the same
/// counting and problem bodies (the token was checked by the [`super::auth`] layers: the
/// node's, or the path tenant's own).
async fn agent_command(
    State(state): State<ApiState>,
    Path((tenant, agent_id, verb)): Path<(String, String, String)>,
    uri: Uri,
    body: Bytes,
) -> Response {
    let (name, command) = match verb.as_str() {
        "login" => ("login", Ok(Command::Login)),
        "logout" => ("logout", Ok(Command::Logout)),
        "ready" => ("ready", Ok(Command::Ready)),
        "not-ready" => ("not_ready", not_ready_command(&body)),
        _ => {
            return Problem::new(
                StatusCode::NOT_FOUND,
                format!("no agent command {verb:?}: login, logout, ready or not-ready"),
            )
            .into_response()
        }
    };
    let target = (tenant.as_str(), agent_id.as_str(), &uri);
    apply(&state, target, name, command).await
}

/// The command of a not-ready body: empty, `{}` or `{"reason": "..."}`.
fn not_ready_command(body: &[u8]) -> Result<Command, Problem> {
    let parsed = if body.iter().all(u8::is_ascii_whitespace) {
        NotReadyBody::default()
    } else {
        Problem::json_body::<NotReadyBody>(body)?
    };
    let reason = parsed.reason.unwrap_or_else(|| DEFAULT_REASON.to_owned());
    if reason.trim().is_empty() || reason.chars().count() > MAX_REASON {
        return Err(Problem::bad_request(format!(
            "reason is 1 to {MAX_REASON} characters"
        )));
    }
    Ok(Command::NotReady(reason))
}

/// Run an agent command: check the body, find the agent, ask it. Every outcome is counted
/// in [`AGENT_COMMANDS_TOTAL`].
async fn apply(
    state: &ApiState,
    (tenant, agent_id, uri): (&str, &str, &Uri),
    name: &'static str,
    command: Result<Command, Problem>,
) -> Response {
    let (result, response) = match run_command(state, uri, tenant, agent_id, command).await {
        Ok(info) => ("ok", Json(info).into_response()),
        Err(problem) => (result_label(problem.status), problem.into_response()),
    };
    metrics::counter!(AGENT_COMMANDS_TOTAL, "command" => name, "result" => result).increment(1);
    response
}

async fn run_command(
    state: &ApiState,
    uri: &Uri,
    tenant: &str,
    agent_id: &str,
    command: Result<Command, Problem>,
) -> Result<AgentInfo, Problem> {
    let command = command?;
    let actor = find_agent(state, uri, tenant, agent_id)?;
    match agent::command(&actor, command).await {
        Ok(info) => Ok(info),
        Err(CommandError::Refused(reason)) => Err(Problem::new(StatusCode::CONFLICT, reason)),
        Err(CommandError::Unavailable(e)) => Err(Problem::unavailable(format!(
            "agent {tenant}/{agent_id} did not answer: {e}"
        ))),
    }
}

fn result_label(status: u16) -> &'static str {
    match status {
        404 => "not_found",
        409 => "refused",
        503 => "unavailable",
        _ => "bad_request",
    }
}

/// Find a listed agent's actor: 404 if the directory does not list it, 503 if it is not
/// running (between a crash and its restart).
fn find_agent(
    state: &ApiState,
    uri: &Uri,
    tenant: &str,
    agent_id: &str,
) -> Result<ractor::ActorRef<AgentMsg>, Problem> {
    let cc = contact_centre(state)?;
    cc.directory.has_agent(tenant, agent_id)?;
    agent::lookup(tenant, agent_id, &cc.cc.node).ok_or_else(|| {
        tenant_elsewhere(state, tenant, uri).unwrap_or_else(|| {
            Problem::unavailable(format!("agent {tenant}/{agent_id} is not running"))
        })
    })
}

/// `POST /calls`: click-to-call (the node's token, or the tenant's own for its agents).
/// Registered by [`super::calls`], which serves `GET /calls` on the same path.
pub(super) async fn click_to_call(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    body: Bytes,
) -> Response {
    let answer = async {
        let req: ClickToCall = Problem::json_body(&body)?;
        caller.check(&req.tenant)?;
        if req.number.is_empty()
            || !req
                .number
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+*#".contains(c))
        {
            return Err(Problem::bad_request("number: digits, letters, + * # only"));
        }
        let actor = find_agent(&state, &uri, &req.tenant, &req.agent)?;
        let cc = contact_centre(&state)?.cc.clone();
        let info = agent::info(&actor)
            .await
            .map_err(|e| Problem::unavailable(format!("agent did not answer: {e}")))?;

        let domain = tenant_domain(&cc, &req.tenant).await;
        let ctx = cc.calls.clone();
        let routes = ctx
            .routes
            .get()
            .ok_or_else(|| Problem::unavailable("the switch is starting"))?;
        let route = routes.lookup(req.number.as_bytes()).ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                format!("no route for {}", req.number),
            )
        })?;
        let dialled = crate::actors::router::Routes::rewrite(&route, req.number.as_bytes());
        // The risk rules, before the agent's phone rings: a refusal is a 409 naming the rule.
        if let Some(desk) = ctx.risk.get() {
            let number = String::from_utf8_lossy(&dialled);
            let attempt = crate::actors::risk::Attempt {
                tenant: Some(&req.tenant),
                number: &number,
                route: Some(&route.id),
                origin: crate::actors::risk::Origin::ClickToCall,
                zone: None,
            };
            let decision = desk.decide(attempt).await;
            if !decision.allow {
                return Err(super::risk::refusal(&decision));
            }
        }
        let calls = ractor::registry::where_is(crate::supervision::catalog::calls_name(&cc.node))
            .map(ractor::ActorRef::<crate::supervision::SupervisorMsg>::from)
            .ok_or_else(|| Problem::unavailable("calls supervisor not running"))?;
        // The agent is reserved first (no queue can offer it a call meanwhile, and an agent
        // already on a call or offered one is refused), then its phones ring.
        let (host, _) = ctx.sent_by(crate::transport::Protocol::Udp);
        let call_id = format!(
            "c2c-{}@{host}",
            crate::sip::dialog::random_token(16).escape_ascii()
        );
        let forks = agent::reserve_outbound(&actor, Arc::from(call_id.as_str()))
            .await
            .map_err(|why| {
                Problem::new(
                    StatusCode::CONFLICT,
                    format!("agent {} cannot take an outbound call: {why}", req.agent),
                )
            })?;
        let aor = format!("sip:{}@{domain}", info.user);
        let who = Some((
            Arc::from(req.tenant.as_str()),
            Arc::from(req.agent.as_str()),
        ));
        let started = crate::actors::call::originate(
            &ctx,
            &calls,
            call_id.clone(),
            &aor,
            who,
            forks,
            &String::from_utf8_lossy(&dialled),
            route,
        )
        .await;
        match started {
            Ok(call_id) => Ok(CallStarted { call_id }),
            Err(e) => {
                // Free the agent again.
                agent::tell(
                    &cc,
                    &req.tenant,
                    &req.agent,
                    AgentMsg::OfferEnded {
                        offer: agent::OUTBOUND_OFFER,
                        outcome: agent::OfferOutcome::Cancelled,
                    },
                );
                Err(Problem::unavailable(format!("call not started: {e}")))
            }
        }
    };
    match answer.await {
        Ok(started) => (StatusCode::ACCEPTED, Json(started)).into_response(),
        Err(problem) => problem.into_response(),
    }
}

// ---------------------------------------------------------------------------- helpers

/// The SIP domain of `tenant` (its users' AORs), or its id if its actor does not answer.
pub(super) async fn tenant_domain(cc: &CcContext, tenant: &str) -> String {
    match crate::actors::tenant::lookup(tenant, &cc.node) {
        Some(t) => crate::actors::tenant::info(&t)
            .await
            .map(|i| i.domain)
            .unwrap_or_else(|_| tenant.to_string()),
        None => tenant.to_string(),
    }
}

/// The answer to a recording command: the recording's id.
#[derive(Debug, Serialize)]
struct RecordingAnswer {
    call_id: String,
    recording: String,
}

/// `POST /calls/{call_id}/recording/{start|stop|pause|resume}`: the call (its A-leg
/// Call-ID, the CDR's `a_call_id`) must be in progress with anchored media. The node's token
/// only (a call's tenant is not known here: [`super::auth::TENANT_ROUTES`] leaves it out).
async fn recording_command(
    State(state): State<ApiState>,
    Path((call_id, verb)): Path<(String, String)>,
) -> Response {
    use crate::actors::call::{CallMsg, RecordingCommand};
    let answer = async {
        let cmd = RecordingCommand::parse(&verb).ok_or_else(|| {
            Problem::not_found(format!(
                "no recording command {verb:?}: start, stop, pause or resume"
            ))
        })?;
        let cc = contact_centre(&state)?;
        let call = cc
            .cc
            .calls
            .directory
            .lookup(call_id.as_bytes())
            .ok_or_else(|| Problem::not_found(format!("no call {call_id:?} in progress")))?;
        let reply = ractor::call!(call, CallMsg::Recording, cmd)
            .map_err(|e| Problem::unavailable(format!("the call did not answer: {e}")))?;
        let recording = reply.map_err(|why| Problem::new(StatusCode::CONFLICT, why))?;
        Ok(RecordingAnswer { call_id, recording })
    };
    respond(answer.await)
}

pub(super) fn contact_centre(state: &ApiState) -> Result<&ContactCentre, Problem> {
    state
        .cc
        .as_deref()
        .ok_or_else(|| Problem::not_found("this node runs no contact centre"))
}

/// `items[offset..offset + limit]`, clamped to the slice.
fn page<T>(items: &[T], offset: usize, limit: usize) -> &[T] {
    let start = offset.min(items.len());
    let end = start.saturating_add(limit).min(items.len());
    &items[start..end]
}

/// Ask `ask(key)` for every key with at most [`CONCURRENT_ASKS`] in flight; the answers
/// come back in the keys' order, `None` where there was none (or the task failed).
/// Dropping the future (the client went away) aborts the asks still running.
async fn ask_all<K, T, F, Fut>(keys: &[K], ask: F) -> Vec<Option<T>>
where
    F: Fn(&K) -> Fut,
    Fut: Future<Output = Option<T>> + Send + 'static,
    T: Send + 'static,
{
    let mut answers: Vec<Option<T>> = std::iter::repeat_with(|| None).take(keys.len()).collect();
    let mut tasks = JoinSet::new();
    let mut store = |joined: Option<Result<(usize, Option<T>), _>>| {
        if let Some(Ok((i, answer))) = joined {
            answers[i] = answer;
        }
    };
    for (i, key) in keys.iter().enumerate() {
        if tasks.len() >= CONCURRENT_ASKS {
            store(tasks.join_next().await);
        }
        let asked = ask(key);
        tasks.spawn(async move { (i, asked.await) });
    }
    while let Some(joined) = tasks.join_next().await {
        store(Some(joined));
    }
    answers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory() -> Directory {
        let mut d = Directory::new();
        d.insert("t", ["support", "sales"], ["a2", "a1"]);
        d.insert("t", ["support"], ["a3"]);
        d.insert("u", [], ["b1"]);
        d
    }

    #[test]
    fn directory_sorts_merges_and_finds() {
        let d = directory();
        assert_eq!(d.agent_count(), 4);
        let (_, t) = d.tenant("t").unwrap();
        let agents: Vec<&str> = t.agents.iter().map(|a| &**a).collect();
        assert_eq!(agents, ["a1", "a2", "a3"]);
        let queues: Vec<&str> = t.queues.iter().map(|q| &**q).collect();
        assert_eq!(queues, ["sales", "support"]);
        assert!(d.has_queue("t", "sales").is_ok());
        assert_eq!(d.has_queue("t", "billing").unwrap_err().status, 404);
        assert_eq!(d.has_queue("x", "sales").unwrap_err().status, 404);
        assert!(d.has_agent("u", "b1").is_ok());
        assert_eq!(d.has_agent("u", "a1").unwrap_err().status, 404);
        assert_eq!(d.select(None).unwrap().len(), 2);
        assert_eq!(d.select(Some("nope")).unwrap_err().status, 404);
    }

    #[test]
    fn params_reject_unknown_and_repeated_names() {
        let uri: Uri = "/agents?tenant=t&state=available&limit=5".parse().unwrap();
        let p = Params::parse(&uri, &["tenant", "state", "limit", "offset"]).unwrap();
        assert_eq!(p.get("tenant"), Some("t"));
        assert_eq!(p.number("limit", 1000).unwrap(), 5);
        assert_eq!(p.number("offset", 0).unwrap(), 0);

        let uri: Uri = "/agents?tenat=t".parse().unwrap();
        assert_eq!(Params::parse(&uri, &["tenant"]).unwrap_err().status, 400);
        let uri: Uri = "/agents?tenant=t&tenant=u".parse().unwrap();
        assert_eq!(Params::parse(&uri, &["tenant"]).unwrap_err().status, 400);
        let uri: Uri = "/agents?limit=-1".parse().unwrap();
        let p = Params::parse(&uri, &["limit"]).unwrap();
        assert_eq!(p.number("limit", 1000).unwrap_err().status, 400);
    }

    #[test]
    fn page_is_clamped() {
        let items = [1, 2, 3, 4, 5];
        assert_eq!(page(&items, 1, 2), &[2, 3]);
        assert_eq!(page(&items, 4, 10), &[5]);
        assert!(page(&items, 9, 10).is_empty());
        assert!(page(&items, 0, 0).is_empty());
        assert_eq!(page(&items, 3, usize::MAX), &[4, 5]);
    }

    #[test]
    fn not_ready_reason_defaults_and_is_bounded() {
        assert_eq!(
            not_ready_command(b"").unwrap(),
            Command::NotReady("break".into())
        );
        assert_eq!(
            not_ready_command(b"{}").unwrap(),
            Command::NotReady("break".into())
        );
        assert_eq!(
            not_ready_command(br#"{"reason":"lunch"}"#).unwrap(),
            Command::NotReady("lunch".into())
        );
        assert_eq!(not_ready_command(b"{").unwrap_err().status, 400);
        assert_eq!(
            not_ready_command(br#"{"reason":"x","extra":1}"#)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            not_ready_command(br#"{"reason":" "}"#).unwrap_err().status,
            400
        );
        let long = format!(r#"{{"reason":"{}"}}"#, "x".repeat(MAX_REASON + 1));
        assert_eq!(not_ready_command(long.as_bytes()).unwrap_err().status, 400);
    }

    #[tokio::test]
    async fn ask_all_keeps_order_and_bounds_concurrency() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let keys: Vec<usize> = (0..1000).collect();
        let answers = ask_all(&keys, |k| {
            let (k, in_flight, peak) = (*k, in_flight.clone(), peak.clone());
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                // Every seventh key has no answer, like an agent that timed out.
                (k % 7 != 0).then_some(k * 2)
            }
        })
        .await;
        assert_eq!(answers.len(), 1000);
        for (k, a) in answers.iter().enumerate() {
            assert_eq!(*a, (k % 7 != 0).then_some(k * 2), "key {k}");
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!((1..=CONCURRENT_ASKS).contains(&peak), "peak {peak}");
    }
}
