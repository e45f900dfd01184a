//! The agent actor: one per agent, under its tenant. It holds the agent's state (logged out,
//! available, not ready with a reason, offered (reserved and ringing), on call, wrap-up),
//! its counters and its phone's reachability, and it is the only one that decides whether
//! the agent takes an offer: queues reserve an agent with [`AgentMsg::Reserve`] and are
//! answered with [`QueueMsg::Reserved`] by message, never with a lock or a blocking call,
//! so an agent in several queues gets one offer at a time and no cycle can deadlock.
//!
//! While on a call the agent monitors the call actor (ractor monitors): when the call ends,
//! or its actor dies and no restored actor took the call over, the agent moves to wrap-up at
//! once. A guard timer frees an offer that never got its outcome.
//!
//! State that matters is copied into a checkpoint table after each change, so a restarted
//! agent actor resumes where it was.

use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::sync::Arc;
use std::time::Duration;

use super::call::{CallMsg, Fork};
use super::queue::{self, CcContext, QueueMsg};
use crate::config::AgentConfig;
use crate::store::now_unix_ms;
use crate::timer::TimerId;

pub const AGENTS: &str = "switchyard_agents";
pub const AGENT_OFFERS: &str = "switchyard_agent_offers_total";
pub const AGENT_RESERVATIONS: &str = "switchyard_agent_reservations_total";
pub const AGENT_RESTORED: &str = "switchyard_agents_restored_total";
pub const AGENT_RESUMED: &str = "switchyard_agent_resumed_total";
pub const AGENT_CALL_LOOKUPS: &str = "switchyard_agent_call_lookups_total";

/// Describes the agent metrics (counts by state and outcome; per-agent figures are API data,
/// not series, so 20,000 agents do not make 20,000 series).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(AGENTS, "Agents by tenant and state");
    describe_counter!(
        AGENT_OFFERS,
        "Offers to agents that ended, by tenant and outcome"
    );
    describe_counter!(
        AGENT_RESERVATIONS,
        "Reservation requests from queues, by result (granted, or why refused)"
    );
    describe_counter!(
        AGENT_RESTORED,
        "Agent actors restarted from their checkpoint"
    );
    describe_counter!(
        AGENT_RESUMED,
        "Agent actors that learned from a call actor (on any node) that they are on its call \
         or offered it, after starting on a new owner; by tenant and state (answered, offered)"
    );
    describe_counter!(
        AGENT_CALL_LOOKUPS,
        "Cluster-wide lookups sent by starting agent actors for a call that holds them"
    );
}

/// How long an agent actor that starts in cluster mode is not offered calls: the time for
/// the nodes' answers to its call lookup (a loopback or LAN round trip) with a wide margin.
pub const RESYNC_HOLD: Duration = Duration::from_secs(1);
/// How long after its start an agent takes a [`AgentMsg::Resume`]; a later one is stale.
const RESUME_WINDOW_MS: u64 = 5_000;

/// A call that a call actor on this node holds for an agent: ringing it (an offer) or
/// answered by it. Lets an agent actor that starts on a new owner learn it is busy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentCall {
    pub call_id: Arc<str>,
    pub queue: Arc<str>,
    pub offer: u64,
    pub answered: bool,
}

/// The node's index of [`AgentCall`]s by (tenant, agent), kept by the call actors: one
/// insert or removal per offer and outcome, nothing per message.
pub type AgentCalls = DashMap<(Arc<str>, Arc<str>), AgentCall>;

/// Records that a call holds an agent (an offer rings it, or it answered).
pub fn note_call(calls: &AgentCalls, tenant: &Arc<str>, agent: &Arc<str>, call: AgentCall) {
    calls.insert((tenant.clone(), agent.clone()), call);
}

/// Forgets an agent's call, only if it is still `call_id` (a later call of the agent stays).
pub fn forget_call(calls: &AgentCalls, tenant: &Arc<str>, agent: &Arc<str>, call_id: &str) {
    calls.remove_if(&(tenant.clone(), agent.clone()), |_, c| {
        &*c.call_id == call_id
    });
}

/// The offer id of an agent's outbound (click-to-call) call.
pub const OUTBOUND_OFFER: u64 = u64::MAX;
/// The "queue" an outbound call is shown under.
pub const OUTBOUND_QUEUE: &str = "outbound";

/// Reserves an agent for a click-to-call (see [`AgentMsg::ReserveOutbound`]).
pub async fn reserve_outbound(
    agent: &ActorRef<AgentMsg>,
    call_id: Arc<str>,
) -> Result<Vec<Fork>, String> {
    match ractor::call_t!(
        agent,
        |reply| AgentMsg::ReserveOutbound { call_id, reply },
        2000
    ) {
        Ok(Ok(forks)) => Ok(forks),
        Ok(Err(why)) => Err(why.to_string()),
        Err(e) => Err(format!("agent did not answer: {e}")),
    }
}

/// The registered name of an agent's actor.
pub fn actor_name(tenant: &str, agent: &str, node: &str) -> String {
    format!("agent/{tenant}/{agent}@{node}")
}

/// Finds an agent's actor by name.
pub fn lookup(tenant: &str, agent: &str, node: &str) -> Option<ActorRef<AgentMsg>> {
    ractor::registry::where_is(actor_name(tenant, agent, node)).map(Into::into)
}

/// Casts a message to an agent found by name; false when it is not running. In cluster mode
/// an agent not running here goes to its owner node through [`CcContext::remote`].
pub fn tell(cc: &CcContext, tenant: &str, agent: &str, msg: AgentMsg) -> bool {
    match lookup(tenant, agent, &cc.node) {
        Some(a) => a.cast(msg).is_ok(),
        None => cc.remote.get().is_some_and(|r| r.agent(tenant, agent, msg)),
    }
}

/// Describes an agent (API, tests).
pub async fn info(agent: &ActorRef<AgentMsg>) -> Result<AgentInfo, String> {
    ractor::call_t!(agent, AgentMsg::GetInfo, 2000).map_err(|e| e.to_string())
}

/// Why a state command did not apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// The agent refused it (e.g. on a call, or no registered phone).
    Refused(String),
    /// The agent actor did not answer (restarting or stopped).
    Unavailable(String),
}

/// Applies a state command (API): log in, log out, ready, not ready.
pub async fn command(agent: &ActorRef<AgentMsg>, cmd: Command) -> Result<AgentInfo, CommandError> {
    match ractor::call_t!(agent, AgentMsg::Command, 2000, cmd) {
        Ok(Ok(info)) => Ok(info),
        Ok(Err(reason)) => Err(CommandError::Refused(reason)),
        Err(e) => Err(CommandError::Unavailable(e.to_string())),
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct AgentActor;

/// What an agent actor starts from.
pub struct AgentArgs {
    pub cc: Arc<CcContext>,
    pub tenant: Arc<str>,
    pub config: AgentConfig,
}

/// A reservation request from a queue.
#[derive(Clone, Debug)]
pub struct Reserve {
    pub queue: Arc<str>,
    pub call_id: Arc<str>,
    pub offer: u64,
    /// The queue's rules for this agent's outcome.
    pub rules: OfferRules,
}

/// What a queue tells an agent about handling an offer's outcome.
#[derive(Clone, Copy, Debug)]
pub struct OfferRules {
    pub ring_timeout: Duration,
    pub wrap_up: Duration,
    pub max_no_answer: u32,
    pub no_answer_delay: Duration,
    pub reject_delay: Duration,
    pub busy_delay: Duration,
}

/// How an offer ended, as the call actor saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfferOutcome {
    Answered,
    /// Rang out (the queue's ring timeout).
    NoAnswer,
    /// The phone declined (603, or 486 after ringing).
    Rejected(u16),
    /// The phone was busy (486 without ringing) or 600.
    Busy,
    /// Withdrawn: the caller left, or another agent answered first (ring-all).
    Cancelled,
    /// Not reachable or another failure (408, 480, 5xx, transport error).
    Failed(u16),
}

impl OfferOutcome {
    pub fn label(self) -> &'static str {
        match self {
            OfferOutcome::Answered => "answered",
            OfferOutcome::NoAnswer => "no_answer",
            OfferOutcome::Rejected(_) => "rejected",
            OfferOutcome::Busy => "busy",
            OfferOutcome::Cancelled => "cancelled",
            OfferOutcome::Failed(_) => "failed",
        }
    }

    /// The outcome of a failure status from the agent's phone.
    pub fn from_status(status: u16, rang: bool) -> OfferOutcome {
        match status {
            486 | 600 if !rang => OfferOutcome::Busy,
            486 | 603 | 600 => OfferOutcome::Rejected(status),
            408 => OfferOutcome::NoAnswer,
            487 => OfferOutcome::Cancelled,
            s => OfferOutcome::Failed(s),
        }
    }
}

/// State commands (API).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Login,
    Logout,
    Ready,
    NotReady(String),
}

pub enum AgentMsg {
    /// A queue asks to offer a call to this agent.
    Reserve(Reserve),
    /// The queue withdraws a reservation before the call rang (the caller left).
    Release {
        offer: u64,
    },
    /// The call actor reports how an offer ended.
    OfferEnded {
        offer: u64,
        outcome: OfferOutcome,
    },
    /// The bridged call is over.
    CallEnded {
        call_id: Arc<str>,
    },
    /// The agent's phone gained its first binding or lost its last.
    PhoneChanged(bool),
    /// A (restarted) queue asks its members to tell it their state again.
    Announce,
    /// A call actor (on any node) holds this agent: answered, or ringing it with `offer`.
    /// The answer to the lookup an agent sends when it starts in cluster mode.
    Resume {
        call_id: Arc<str>,
        queue: Arc<str>,
        offer: u64,
        answered: bool,
    },
    /// Click-to-call: reserve the agent for an outbound call with this (agent-leg) Call-ID;
    /// the answer is its phones, or why not. The call reports with offer [`OUTBOUND_OFFER`].
    ReserveOutbound {
        call_id: Arc<str>,
        reply: RpcReplyPort<Result<Vec<Fork>, &'static str>>,
    },
    Command(Command, RpcReplyPort<Result<AgentInfo, String>>),
    TimerFired(AgentTimer, TimerId),
    GetInfo(RpcReplyPort<AgentInfo>),
    /// Fault injection for supervision tests.
    InjectPanic,
}

// Local only: ractor's `cluster` feature (on for ractor_cluster) asks each message type to
// say whether it can cross nodes; this one never does (the cluster module carries what does).
impl ractor::Message for AgentMsg {}

/// Agent timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentTimer {
    /// Wrap-up is over.
    WrapUp,
    /// The pause after a rejected, busy or unanswered offer is over.
    Pause,
    /// An offer had no outcome in time (its call actor vanished): free the agent.
    OfferGuard,
}

/// Where an agent is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    LoggedOut,
    Available,
    NotReady(String),
    /// Reserved by a queue and (soon) ringing.
    Offered {
        queue: Arc<str>,
        call_id: Arc<str>,
        offer: u64,
    },
    OnCall {
        queue: Arc<str>,
        call_id: Arc<str>,
    },
    WrapUp,
}

impl Status {
    pub fn label(&self) -> &'static str {
        match self {
            Status::LoggedOut => "logged_out",
            Status::Available => "available",
            Status::NotReady(_) => "not_ready",
            Status::Offered { .. } => "offered",
            Status::OnCall { .. } => "on_call",
            Status::WrapUp => "wrap_up",
        }
    }

    /// Every state's label, in a fixed order.
    pub const LABELS: [&'static str; 6] = [
        "logged_out",
        "available",
        "not_ready",
        "offered",
        "on_call",
        "wrap_up",
    ];

    fn index(&self) -> usize {
        Self::LABELS
            .iter()
            .position(|l| *l == self.label())
            .unwrap_or(0)
    }
}

/// An agent's figures (API).
#[derive(Clone, Debug, serde::Serialize)]
pub struct AgentInfo {
    pub tenant: String,
    pub id: String,
    pub user: String,
    pub state: &'static str,
    /// Not-ready reason, or the queue and call of an offer or call.
    pub detail: Option<String>,
    pub since_ms: u64,
    pub phone_registered: bool,
    /// Whether a queue may offer a call now.
    pub offerable: bool,
    pub calls: u64,
    pub talk_ms: u64,
    pub offers: u64,
    pub no_answer_streak: u32,
    /// Milliseconds spent in each state, by label.
    pub state_ms: Vec<(&'static str, u64)>,
    pub queues: Vec<String>,
    pub skills: Vec<(String, u8)>,
}

/// The part of an agent's state that survives a restart of its actor.
#[derive(Clone, Debug)]
pub struct AgentCheckpoint {
    status: Status,
    since_ms: u64,
    idle_since_ms: u64,
    pause_until_ms: u64,
    wrap_up_until_ms: u64,
    calls: u64,
    talk_ms: u64,
    offers: u64,
    no_answer_streak: u32,
    state_ms: [u64; 6],
    answered_ms: u64,
    rules: Option<OfferRules>,
}

impl AgentCheckpoint {
    /// The agent's state, as the API names it.
    pub fn status_label(&self) -> &'static str {
        self.status.label()
    }
}

pub struct AgentState {
    cc: Arc<CcContext>,
    myself: ActorRef<AgentMsg>,
    tenant: Arc<str>,
    id: Arc<str>,
    name: String,
    config: AgentConfig,
    cp: AgentCheckpoint,
    phone: bool,
    /// What the queues were last told (offerable, logged in, calls).
    announced: Option<(bool, bool, u64)>,
    timer: Option<(AgentTimer, TimerId)>,
    /// The call actor being monitored.
    monitored: Option<ActorRef<CallMsg>>,
    /// Until when a [`AgentMsg::Resume`] is taken (cluster mode: set at start).
    resume_until_ms: u64,
}

impl Actor for AgentActor {
    type Msg = AgentMsg;
    type State = AgentState;
    type Arguments = AgentArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AgentMsg>,
        args: AgentArgs,
    ) -> Result<AgentState, ActorProcessingErr> {
        let name = actor_name(&args.tenant, &args.config.id, &args.cc.node);
        let now = now_unix_ms() as u64;
        let restored = args.cc.agent_checkpoints.get(&name).map(|c| c.clone());
        let cp = match &restored {
            Some(cp) => {
                metrics::counter!(AGENT_RESTORED).increment(1);
                cp.clone()
            }
            None => {
                let status = match args.config.state.as_deref() {
                    Some("available") => Status::Available,
                    _ => Status::LoggedOut,
                };
                AgentCheckpoint {
                    status,
                    since_ms: now,
                    idle_since_ms: now,
                    pause_until_ms: 0,
                    wrap_up_until_ms: 0,
                    calls: 0,
                    talk_ms: 0,
                    offers: 0,
                    no_answer_streak: 0,
                    state_ms: [0; 6],
                    answered_ms: 0,
                    rules: None,
                }
            }
        };
        let phone = args
            .cc
            .location
            .is_reachable(&args.tenant, &args.config.user);
        let mut state = AgentState {
            cc: args.cc,
            myself,
            id: Arc::from(args.config.id.as_str()),
            tenant: args.tenant,
            name,
            config: args.config,
            cp,
            phone,
            announced: None,
            timer: None,
            monitored: None,
            resume_until_ms: 0,
        };
        if restored.is_none() {
            state.gauge(&state.cp.status.clone(), 1.0);
        }
        state.find_call(now);
        state.resume(now);
        state.after_change();
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<AgentMsg>,
        msg: AgentMsg,
        state: &mut AgentState,
    ) -> Result<(), ActorProcessingErr> {
        let now = now_unix_ms() as u64;
        match msg {
            AgentMsg::Reserve(r) => state.on_reserve(r, now),
            AgentMsg::ReserveOutbound { call_id, reply } => {
                let _ = reply.send(state.on_reserve_outbound(call_id, now));
            }
            AgentMsg::Release { offer } => {
                if matches!(&state.cp.status, Status::Offered { offer: o, .. } if *o == offer) {
                    state.set_status(Status::Available, now);
                }
            }
            AgentMsg::OfferEnded { offer, outcome } => state.on_offer_ended(offer, outcome, now),
            AgentMsg::CallEnded { call_id } => {
                if matches!(&state.cp.status, Status::OnCall { call_id: c, .. } if *c == call_id) {
                    state.call_over(now);
                }
            }
            AgentMsg::PhoneChanged(up) => state.phone = up,
            AgentMsg::Announce => state.announced = None,
            AgentMsg::Resume {
                call_id,
                queue,
                offer,
                answered,
            } => state.on_resume(call_id, queue, offer, answered, now),
            AgentMsg::Command(cmd, reply) => {
                let r = state.on_command(cmd, now).map(|_| state.info(now));
                let _ = reply.send(r);
            }
            AgentMsg::TimerFired(timer, id) => state.on_timer(timer, id, now),
            AgentMsg::GetInfo(reply) => {
                let _ = reply.send(state.info(now));
            }
            AgentMsg::InjectPanic => panic!("injected fault"),
        }
        state.after_change();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<AgentMsg>,
        evt: SupervisionEvent,
        state: &mut AgentState,
    ) -> Result<(), ActorProcessingErr> {
        let gone = match &evt {
            SupervisionEvent::ActorTerminated(cell, ..)
            | SupervisionEvent::ActorFailed(cell, _) => Some(cell.get_id()),
            _ => None,
        };
        if let (Some(id), Some(m)) = (gone, &state.monitored) {
            if m.get_id() == id {
                state.monitored = None;
                state.call_actor_gone(now_unix_ms() as u64);
                state.after_change();
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<AgentMsg>,
        state: &mut AgentState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((_, id)) = state.timer.take() {
            state.cc.timers.cancel(id);
        }
        Ok(())
    }
}

impl AgentState {
    /// Cluster mode, at start: the state this agent had may have stayed on another node
    /// (its tenant moved here), or be stale here (the tenant comes back to a node that ran
    /// it before), while a call actor on some node still rings it or talks to it. Every
    /// node is asked; the agent is held unofferable for [`RESYNC_HOLD`] meanwhile (as a
    /// pause, so the queues see it unavailable). A node alone asks nothing.
    fn find_call(&mut self, now: u64) {
        let Some(remote) = self.cc.remote.get() else {
            return;
        };
        if !remote.find_agent_call(&self.tenant, &self.id) {
            return;
        }
        metrics::counter!(AGENT_CALL_LOOKUPS).increment(1);
        self.resume_until_ms = now + RESUME_WINDOW_MS;
        // Whatever the state now: a restored call or offer may turn out to be over here
        // (the call is not known on this node) before the answers arrive.
        let hold = now + RESYNC_HOLD.as_millis() as u64;
        self.cp.pause_until_ms = self.cp.pause_until_ms.max(hold);
    }

    /// A call actor holds this agent (the answer to [`Self::find_call`]): take the call or
    /// offer over unless the agent has moved on to another one meanwhile.
    fn on_resume(
        &mut self,
        call_id: Arc<str>,
        queue: Arc<str>,
        offer: u64,
        answered: bool,
        now: u64,
    ) {
        if now > self.resume_until_ms {
            tracing::debug!(agent = %self.name, call_id = %call_id, "late resume ignored");
            return;
        }
        let take = match &self.cp.status {
            // Already on it, or on another call (its own end frees the agent).
            Status::OnCall { .. } => false,
            // Offered this very call: the answer may be news; another offer stands.
            Status::Offered { call_id: c, .. } => *c == call_id && answered,
            _ => true,
        };
        if !take {
            return;
        }
        let label = if answered { "answered" } else { "offered" };
        metrics::counter!(AGENT_RESUMED, "tenant" => self.tenant.to_string(), "state" => label)
            .increment(1);
        tracing::info!(agent = %self.name, call_id = %call_id, state = label, "agent resumes a call held on another actor");
        if answered {
            // The answer time stayed with the previous actor: talk time counts from here.
            self.cp.answered_ms = now;
            self.cp.no_answer_streak = 0;
            self.set_status(Status::OnCall { queue, call_id }, now);
        } else {
            self.set_status(
                Status::Offered {
                    queue,
                    call_id,
                    offer,
                },
                now,
            );
        }
        // The guard timer and the call's resync for an offer; the monitor (or, for a call
        // on another node, the port's bookkeeping) for a call.
        self.resume(now);
    }

    /// After a (re)start: timers and the call monitor for the state we are in.
    fn resume(&mut self, now: u64) {
        match self.cp.status.clone() {
            Status::WrapUp => {
                let left = self.cp.wrap_up_until_ms.saturating_sub(now);
                self.schedule(AgentTimer::WrapUp, Duration::from_millis(left));
            }
            Status::Offered { call_id, offer, .. } => {
                let ring = self
                    .cp
                    .rules
                    .map_or(Duration::from_secs(30), |r| r.ring_timeout);
                self.schedule(AgentTimer::OfferGuard, ring + Duration::from_secs(10));
                // The offer's outcome may have died with the previous actor: ask the call
                // (here, or on the node it runs on in cluster mode).
                let asked = self.cc.tell_call(
                    &call_id,
                    CallMsg::AgentResync {
                        agent: self.id.clone(),
                        offer,
                    },
                );
                if !asked {
                    self.on_offer_ended(offer, OfferOutcome::Cancelled, now);
                }
            }
            Status::OnCall { .. } => self.monitor_call(now),
            Status::Available if self.cp.pause_until_ms > now => {
                let left = self.cp.pause_until_ms - now;
                self.schedule(AgentTimer::Pause, Duration::from_millis(left));
            }
            _ => {}
        }
    }

    fn offerable(&self, now: u64) -> bool {
        self.cp.status == Status::Available && self.phone && self.cp.pause_until_ms <= now
    }

    /// An outbound call (click-to-call) for this agent: allowed unless it has a call or an
    /// offer already (not-ready agents may dial out), with a registered phone.
    fn on_reserve_outbound(
        &mut self,
        call_id: Arc<str>,
        now: u64,
    ) -> Result<Vec<Fork>, &'static str> {
        let why = match &self.cp.status {
            Status::Offered { .. } => Some("offered"),
            Status::OnCall { .. } => Some("on_call"),
            Status::LoggedOut => Some("logged_out"),
            _ => None,
        };
        if let Some(why) = why {
            metrics::counter!(AGENT_RESERVATIONS, "result" => why).increment(1);
            return Err(why);
        }
        let forks = self.phone_forks()?;
        metrics::counter!(AGENT_RESERVATIONS, "result" => "outbound").increment(1);
        let rules = OfferRules {
            ring_timeout: Duration::from_secs(60),
            wrap_up: Duration::ZERO,
            max_no_answer: u32::MAX,
            no_answer_delay: Duration::ZERO,
            reject_delay: Duration::ZERO,
            busy_delay: Duration::ZERO,
        };
        self.cp.rules = Some(rules);
        self.set_status(
            Status::Offered {
                queue: Arc::from(OUTBOUND_QUEUE),
                call_id,
                offer: OUTBOUND_OFFER,
            },
            now,
        );
        self.schedule(
            AgentTimer::OfferGuard,
            rules.ring_timeout + Duration::from_secs(10),
        );
        self.after_change();
        Ok(forks)
    }

    /// The agent's registered phones as forks; none registered (a binding just expired)
    /// marks the phone gone.
    fn phone_forks(&mut self) -> Result<Vec<Fork>, &'static str> {
        let bindings = self.cc.location.lookup(&self.tenant, &self.config.user);
        if bindings.is_empty() {
            self.phone = false;
            return Err("no_phone");
        }
        Ok(Fork::all(&bindings))
    }

    fn on_reserve(&mut self, r: Reserve, now: u64) {
        let refusal = if !self.phone {
            Some("no_phone")
        } else {
            match &self.cp.status {
                Status::Available if self.cp.pause_until_ms > now => Some("paused"),
                Status::Available => None,
                Status::Offered { .. } => Some("offered"),
                Status::OnCall { .. } => Some("on_call"),
                Status::WrapUp => Some("wrap_up"),
                Status::LoggedOut | Status::NotReady(_) => Some("not_ready"),
            }
        };
        let forks: Result<Vec<Fork>, &'static str> = match refusal {
            Some(why) => Err(why),
            None => self.phone_forks(),
        };
        metrics::counter!(AGENT_RESERVATIONS, "result" => match &forks {
            Ok(_) => "granted",
            Err(why) => why,
        })
        .increment(1);
        if forks.is_ok() {
            self.cp.offers += 1;
            self.cp.rules = Some(r.rules);
            self.set_status(
                Status::Offered {
                    queue: r.queue.clone(),
                    call_id: r.call_id.clone(),
                    offer: r.offer,
                },
                now,
            );
            self.schedule(
                AgentTimer::OfferGuard,
                r.rules.ring_timeout + Duration::from_secs(10),
            );
            // The queues see this agent unavailable before the reply reaches the reserving
            // one, so no other queue picks it meanwhile.
            self.after_change();
        }
        queue::tell(
            &self.cc,
            &self.tenant,
            &r.queue,
            QueueMsg::Reserved {
                offer: r.offer,
                agent: self.id.clone(),
                forks,
            },
        );
    }

    fn on_offer_ended(&mut self, offer: u64, outcome: OfferOutcome, now: u64) {
        let (queue, call_id) = match &self.cp.status {
            Status::Offered {
                offer: o,
                queue,
                call_id,
            } if *o == offer => (queue.clone(), call_id.clone()),
            _ => return,
        };
        metrics::counter!(AGENT_OFFERS, "tenant" => self.tenant.to_string(), "outcome" => outcome.label())
            .increment(1);
        let rules = self.cp.rules.unwrap_or(OfferRules {
            ring_timeout: Duration::from_secs(15),
            wrap_up: Duration::ZERO,
            max_no_answer: 3,
            no_answer_delay: Duration::ZERO,
            reject_delay: Duration::ZERO,
            busy_delay: Duration::ZERO,
        });
        match outcome {
            OfferOutcome::Answered => {
                self.cp.no_answer_streak = 0;
                self.cp.answered_ms = now;
                self.set_status(Status::OnCall { queue, call_id }, now);
                self.monitor_call(now);
            }
            OfferOutcome::Cancelled => self.set_status(Status::Available, now),
            OfferOutcome::NoAnswer | OfferOutcome::Failed(_) => {
                self.cp.no_answer_streak += 1;
                if self.cp.no_answer_streak >= rules.max_no_answer {
                    tracing::info!(agent = %self.name, streak = self.cp.no_answer_streak, "agent not ready after unanswered offers");
                    self.set_status(Status::NotReady("no-answer".into()), now);
                } else {
                    self.pause(rules.no_answer_delay, now);
                }
            }
            OfferOutcome::Rejected(_) => self.pause(rules.reject_delay, now),
            OfferOutcome::Busy => self.pause(rules.busy_delay, now),
        }
    }

    /// Back to available, not offered before `delay` has passed.
    fn pause(&mut self, delay: Duration, now: u64) {
        self.set_status(Status::Available, now);
        if !delay.is_zero() {
            self.cp.pause_until_ms = now + delay.as_millis() as u64;
            self.schedule(AgentTimer::Pause, delay);
        }
    }

    /// Finds the call actor of the current call (a restored actor has a new reference) and
    /// monitors it; no running actor means the call is over.
    fn monitor_call(&mut self, now: u64) {
        let Status::OnCall { call_id, .. } = &self.cp.status else {
            return;
        };
        match self.cc.calls.directory.lookup(call_id.as_bytes()) {
            Some(actor) => {
                self.myself.get_cell().monitor(actor.get_cell());
                self.monitored = Some(actor);
            }
            // A call on another node cannot be monitored: its node reports the end
            // (CallEnded), or the cluster port does when that node dies.
            None if self.cc.call_elsewhere(call_id) => {}
            None => self.call_over(now),
        }
    }

    /// The monitored call actor stopped or died: a restored actor may have the call now.
    fn call_actor_gone(&mut self, now: u64) {
        if matches!(self.cp.status, Status::OnCall { .. }) {
            self.monitor_call(now);
        }
    }

    fn call_over(&mut self, now: u64) {
        if let Some(m) = self.monitored.take() {
            self.myself.get_cell().unmonitor(m.get_cell());
        }
        self.cp.calls += 1;
        self.cp.talk_ms += now.saturating_sub(self.cp.answered_ms);
        let wrap = self
            .config
            .wrap_up_secs
            .map(Duration::from_secs)
            .or(self.cp.rules.map(|r| r.wrap_up))
            .unwrap_or_default();
        if wrap.is_zero() {
            self.set_status(Status::Available, now);
        } else {
            self.cp.wrap_up_until_ms = now + wrap.as_millis() as u64;
            self.set_status(Status::WrapUp, now);
            self.schedule(AgentTimer::WrapUp, wrap);
        }
    }

    fn on_command(&mut self, cmd: Command, now: u64) -> Result<(), String> {
        let busy = matches!(
            self.cp.status,
            Status::Offered { .. } | Status::OnCall { .. }
        );
        match cmd {
            Command::Login | Command::Ready => {
                if busy {
                    return Err(format!("agent is {}", self.cp.status.label()));
                }
                if !self.phone {
                    return Err("no registered phone: register the agent's phone first".into());
                }
                self.cp.no_answer_streak = 0;
                self.cp.pause_until_ms = 0;
                self.set_status(Status::Available, now);
            }
            Command::NotReady(reason) => {
                if busy {
                    return Err(format!("agent is {}", self.cp.status.label()));
                }
                self.set_status(Status::NotReady(reason), now);
            }
            Command::Logout => {
                if busy {
                    return Err(format!("agent is {}", self.cp.status.label()));
                }
                self.set_status(Status::LoggedOut, now);
            }
        }
        Ok(())
    }

    fn on_timer(&mut self, timer: AgentTimer, id: TimerId, now: u64) {
        if self.timer != Some((timer, id)) {
            return;
        }
        self.timer = None;
        match timer {
            AgentTimer::WrapUp if self.cp.status == Status::WrapUp => {
                self.set_status(Status::Available, now)
            }
            AgentTimer::Pause => self.cp.pause_until_ms = 0,
            AgentTimer::OfferGuard => {
                if let Status::Offered { offer, .. } = self.cp.status {
                    tracing::warn!(agent = %self.name, "offer had no outcome in time: agent freed");
                    self.on_offer_ended(offer, OfferOutcome::Failed(408), now);
                }
            }
            _ => {}
        }
    }

    fn schedule(&mut self, timer: AgentTimer, after: Duration) {
        if let Some((_, id)) = self.timer.take() {
            self.cc.timers.cancel(id);
        }
        let id = self
            .cc
            .timers
            .schedule_cast_with(after, &self.myself, move |id| {
                AgentMsg::TimerFired(timer, id)
            });
        self.timer = Some((timer, id));
    }

    fn set_status(&mut self, status: Status, now: u64) {
        let old = std::mem::replace(&mut self.cp.status, status);
        self.cp.state_ms[old.index()] += now.saturating_sub(self.cp.since_ms);
        self.cp.since_ms = now;
        if self.cp.status == Status::Available && old != Status::Available {
            self.cp.idle_since_ms = now;
        }
        if old.label() != self.cp.status.label() {
            self.gauge(&old, -1.0);
            let new = self.cp.status.clone();
            self.gauge(&new, 1.0);
        }
        // A timer belongs to the state it was set in (a pause survives only in available).
        if let Some((t, id)) = self.timer {
            let keep = match t {
                AgentTimer::WrapUp => self.cp.status == Status::WrapUp,
                AgentTimer::Pause => self.cp.status == Status::Available,
                AgentTimer::OfferGuard => matches!(self.cp.status, Status::Offered { .. }),
            };
            if !keep {
                self.cc.timers.cancel(id);
                self.timer = None;
            }
        }
        // Back to available within a pause set earlier (the hold at a cluster start): the
        // queues hear of it when the pause is over.
        if self.cp.status == Status::Available
            && self.timer.is_none()
            && self.cp.pause_until_ms > now
        {
            let left = self.cp.pause_until_ms - now;
            self.schedule(AgentTimer::Pause, Duration::from_millis(left));
        }
    }

    fn gauge(&self, status: &Status, delta: f64) {
        metrics::gauge!(AGENTS, "tenant" => self.tenant.to_string(), "state" => status.label())
            .increment(delta);
    }

    /// Checkpoints and tells the member queues when the agent's offerability changed.
    fn after_change(&mut self) {
        let now = now_unix_ms() as u64;
        self.cc
            .agent_checkpoints
            .insert(self.name.clone(), self.cp.clone());
        let logged_in = !matches!(self.cp.status, Status::LoggedOut);
        let view = (self.offerable(now), logged_in, self.cp.calls);
        if self.announced == Some(view) {
            return;
        }
        self.announced = Some(view);
        for m in &self.config.queues {
            queue::tell(
                &self.cc,
                &self.tenant,
                &m.queue,
                QueueMsg::MemberChanged(queue::MemberUpdate {
                    agent: self.id.clone(),
                    available: view.0,
                    logged_in,
                    idle_since_ms: self.cp.idle_since_ms,
                    calls: self.cp.calls,
                    talk_ms: self.cp.talk_ms,
                }),
            );
        }
    }

    fn info(&self, now: u64) -> AgentInfo {
        let mut state_ms = self.cp.state_ms;
        state_ms[self.cp.status.index()] += now.saturating_sub(self.cp.since_ms);
        AgentInfo {
            tenant: self.tenant.to_string(),
            id: self.id.to_string(),
            user: self.config.user.clone(),
            state: self.cp.status.label(),
            detail: match &self.cp.status {
                Status::NotReady(r) => Some(r.clone()),
                Status::Offered { queue, call_id, .. } | Status::OnCall { queue, call_id } => {
                    Some(format!("{queue} {call_id}"))
                }
                _ => None,
            },
            since_ms: self.cp.since_ms,
            phone_registered: self.phone,
            offerable: self.offerable(now),
            calls: self.cp.calls,
            talk_ms: self.cp.talk_ms,
            offers: self.cp.offers,
            no_answer_streak: self.cp.no_answer_streak,
            state_ms: Status::LABELS.iter().copied().zip(state_ms).collect(),
            queues: self.config.queues.iter().map(|m| m.queue.clone()).collect(),
            skills: self
                .config
                .skills
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }
    }
}

/// The agents' checkpoints, by actor name.
pub type AgentCheckpoints = DashMap<String, AgentCheckpoint>;

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, answered: bool) -> AgentCall {
        AgentCall {
            call_id: Arc::from(id),
            queue: Arc::from("q0"),
            offer: 7,
            answered,
        }
    }

    #[test]
    fn the_index_forgets_only_the_call_it_is_told_about() {
        let calls = AgentCalls::new();
        let (t, a): (Arc<str>, Arc<str>) = (Arc::from("t1"), Arc::from("a1"));
        let key = (t.clone(), a.clone());
        note_call(&calls, &t, &a, call("c1", false));
        // The offer is answered: the same entry, now answered.
        note_call(&calls, &t, &a, call("c1", true));
        assert_eq!(calls.len(), 1);
        assert!(calls.get(&key).unwrap().answered);
        // A late end of an earlier call does not erase the agent's current one.
        forget_call(&calls, &t, &a, "c0");
        assert_eq!(calls.get(&key).unwrap().call_id.as_ref(), "c1");
        forget_call(&calls, &t, &a, "c1");
        assert!(calls.is_empty());
        // Another tenant's agent of the same id is another entry.
        let t2: Arc<str> = Arc::from("t2");
        note_call(&calls, &t, &a, call("c2", true));
        forget_call(&calls, &t2, &a, "c2");
        assert_eq!(calls.len(), 1);
    }
}
