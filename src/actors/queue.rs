//! The queue actor: the single writer of one queue's waiting list. Callers join from their
//! call actors ([`QueueMsg::Join`]); the queue ranks its available members with the pure
//! [`crate::routing::acd::rank`], reserves the chosen agent by message
//! ([`AgentMsg::Reserve`], answered by [`QueueMsg::Reserved`]) and hands the call actor the
//! agent's phones ([`CallMsg::Offer`]). The call reports how the offer ended to the queue
//! and the agent; an unanswered offer leaves the caller at its place in the list.
//!
//! What a caller hears while waiting is an action of the call actor (ringing, 180, for
//! now); announcements and music are further actions once media exists.
//!
//! No lock is shared with agents, and no actor waits for another's reply: every exchange
//! is a pair of casts, so an agent in several queues cannot deadlock them. The waiting list,
//! the outstanding offers and the statistics are checkpointed after each change, so a
//! restarted queue actor has its callers in their order; agents re-announce themselves.

use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::agent::{self, AgentCheckpoints, AgentMsg, OfferOutcome, OfferRules, Reserve};
use super::call::{CallContext, CallMsg, Fork};
use super::registrar::Location;
use crate::config::{CcTarget, QueueConfig};
use crate::routing::acd::{self, Caller, Member, Strategy, Waiting};
use crate::store::now_unix_ms;
use crate::timer::TimerService;

pub const QUEUE_JOINED: &str = "switchyard_queue_joined_total";
pub const QUEUE_ANSWERED: &str = "switchyard_queue_answered_total";
pub const QUEUE_ABANDONED: &str = "switchyard_queue_abandoned_total";
pub const QUEUE_OVERFLOWED: &str = "switchyard_queue_overflowed_total";
pub const QUEUE_OFFERS: &str = "switchyard_queue_offers_total";
pub const QUEUE_WAITING: &str = "switchyard_queue_waiting";
pub const QUEUE_LONGEST_WAIT: &str = "switchyard_queue_longest_wait_seconds";
pub const QUEUE_SERVICE_LEVEL: &str = "switchyard_queue_service_level_ratio";
pub const QUEUE_ANSWER_SPEED: &str = "switchyard_queue_answer_speed_seconds";
pub const QUEUE_HANDLE_TIME: &str = "switchyard_queue_handle_time_seconds";
pub const QUEUE_AGENTS: &str = "switchyard_queue_agents";
pub const QUEUE_RESTORED: &str = "switchyard_queues_restored_total";

/// Describes the queue metrics (labels: tenant, queue).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(QUEUE_JOINED, "Callers that joined a queue (offered calls)");
    describe_counter!(QUEUE_ANSWERED, "Queued callers connected to an agent");
    describe_counter!(
        QUEUE_ABANDONED,
        "Queued callers that hung up before an agent answered"
    );
    describe_counter!(
        QUEUE_OVERFLOWED,
        "Callers sent to the overflow target, by reason (max_wait, full, empty)"
    );
    describe_counter!(
        QUEUE_OFFERS,
        "Offers to agents, by outcome (answered, no_answer, rejected, busy, refused, ...)"
    );
    describe_gauge!(QUEUE_WAITING, "Callers waiting now");
    describe_gauge!(
        QUEUE_LONGEST_WAIT,
        Unit::Seconds,
        "The longest current wait"
    );
    describe_gauge!(
        QUEUE_SERVICE_LEVEL,
        "Answered within the service-level threshold / (answered + abandoned)"
    );
    describe_histogram!(
        QUEUE_ANSWER_SPEED,
        Unit::Seconds,
        "Wait from joining to the agent's answer"
    );
    describe_histogram!(
        QUEUE_HANDLE_TIME,
        Unit::Seconds,
        "Talk time of queue calls (agent answer to hang-up)"
    );
    describe_gauge!(
        QUEUE_AGENTS,
        "Member agents by state (members, logged_in, available)"
    );
    describe_counter!(
        QUEUE_RESTORED,
        "Queue actors restarted from their checkpoint"
    );
}

/// The users who supervise each queue, by (tenant, queue).
pub type Supervisors = DashMap<(Arc<str>, Arc<str>), Arc<[String]>>;

/// What queues, agents and queued calls share.
pub struct CcContext {
    pub node: String,
    pub timers: TimerService,
    pub location: Arc<Location>,
    pub calls: Arc<CallContext>,
    pub agent_checkpoints: AgentCheckpoints,
    /// The agents this node's call actors ring or talk to, by (tenant, agent): what an agent
    /// actor starting on a new owner asks for (cluster mode; see `agent::AgentCall`).
    pub agent_calls: agent::AgentCalls,
    pub queue_checkpoints: DashMap<String, QueueCheckpoint>,
    /// Agent id by (tenant, SIP user), for phone reachability changes.
    pub agents_by_user: DashMap<(Arc<str>, String), Arc<str>>,
    /// The users who supervise each queue, by (tenant, queue) (`supervisors` of the
    /// queue's config): who may monitor its calls. Set by the queue actor when it starts.
    pub supervisors: Supervisors,
    /// Cluster mode: where messages go whose queue, agent or call is not on this node
    /// (set once by `cluster::port`; never set on a node alone).
    pub remote: OnceLock<Arc<dyn super::remote::Remote>>,
}

impl CcContext {
    pub fn new(node: String, location: Arc<Location>, calls: Arc<CallContext>) -> CcContext {
        CcContext {
            node,
            timers: calls.timers.clone(),
            location,
            calls,
            agent_checkpoints: DashMap::new(),
            agent_calls: DashMap::new(),
            queue_checkpoints: DashMap::new(),
            agents_by_user: DashMap::new(),
            supervisors: DashMap::new(),
            remote: OnceLock::new(),
        }
    }

    /// Casts a message to a call actor by its A-leg Call-ID: on this node, else (cluster
    /// mode) on the node it runs on; false when it runs nowhere known.
    pub fn tell_call(&self, call_id: &str, msg: CallMsg) -> bool {
        match self.calls.directory.lookup(call_id.as_bytes()) {
            Some(c) => c.cast(msg).is_ok(),
            None => self.remote.get().is_some_and(|r| r.call(call_id, msg)),
        }
    }

    /// Whether a call that is not on this node runs on another live one (cluster mode).
    pub fn call_elsewhere(&self, call_id: &str) -> bool {
        self.remote.get().is_some_and(|r| r.call_elsewhere(call_id))
    }

    /// Tells the agent of a SIP user that its phone became (un)reachable.
    pub fn phone_changed(&self, tenant: &str, user: &str, reachable: bool) {
        let key = (Arc::<str>::from(tenant), user.to_string());
        if let Some(id) = self.agents_by_user.get(&key).map(|v| v.clone()) {
            agent::tell(self, tenant, &id, AgentMsg::PhoneChanged(reachable));
        }
    }
}

/// The registered name of a queue's actor.
pub fn actor_name(tenant: &str, queue: &str, node: &str) -> String {
    format!("queue/{tenant}/{queue}@{node}")
}

/// Finds a queue's actor by name.
pub fn lookup(tenant: &str, queue: &str, node: &str) -> Option<ActorRef<QueueMsg>> {
    ractor::registry::where_is(actor_name(tenant, queue, node)).map(Into::into)
}

/// Casts a message to a queue found by name; false when it is not running. In cluster mode
/// a queue not running here goes to its owner node through [`CcContext::remote`].
pub fn tell(cc: &CcContext, tenant: &str, queue: &str, msg: QueueMsg) -> bool {
    match lookup(tenant, queue, &cc.node) {
        Some(q) => q.cast(msg).is_ok(),
        None => cc.remote.get().is_some_and(|r| r.queue(tenant, queue, msg)),
    }
}

/// A queue's live statistics (API).
pub async fn stats(queue: &ActorRef<QueueMsg>) -> Result<QueueStats, String> {
    ractor::call_t!(queue, QueueMsg::GetStats, 2000).map_err(|e| e.to_string())
}

/// A queue's waiting callers in order (API).
pub async fn waiting(queue: &ActorRef<QueueMsg>) -> Result<Vec<WaitingCaller>, String> {
    ractor::call_t!(queue, QueueMsg::GetWaiting, 2000).map_err(|e| e.to_string())
}

/// A queue's recent routing decisions, newest last (API).
pub async fn decisions(queue: &ActorRef<QueueMsg>) -> Result<Vec<Decision>, String> {
    ractor::call_t!(queue, QueueMsg::GetDecisions, 2000).map_err(|e| e.to_string())
}

#[derive(Clone, Copy, Debug, Default)]
pub struct QueueActor;

/// What a queue actor starts from: its config, its members (from the agents' config) and
/// its overflow targets resolved.
pub struct QueueArgs {
    pub cc: Arc<CcContext>,
    pub tenant: Arc<str>,
    pub config: QueueConfig,
    /// Static member data; availability starts false until each agent announces itself.
    pub members: Vec<Member>,
    pub overflow_wait: CcTarget,
    pub overflow_full: CcTarget,
}

/// A caller joins.
#[derive(Clone, Debug)]
pub struct Join {
    pub call_id: Arc<str>,
    pub from: String,
    /// The tenant user who called (authenticated), if any.
    pub user: Option<Arc<str>>,
    pub priority: u32,
    pub joined_ms: u64,
    /// Skills this caller needs on top of the queue's `required_skills` (a call flow's
    /// `set` step); the higher level of the two wins.
    pub skills: Vec<crate::routing::acd::Requirement>,
}

/// An agent's figures as its queues see them.
#[derive(Clone, Debug)]
pub struct MemberUpdate {
    pub agent: Arc<str>,
    pub available: bool,
    pub logged_in: bool,
    pub idle_since_ms: u64,
    pub calls: u64,
    pub talk_ms: u64,
}

pub enum QueueMsg {
    /// A caller joins (idempotent: a caller already waiting keeps its place).
    Join(Join),
    /// A waiting caller left: hung up (abandoned) or its call ended otherwise.
    Leave {
        call_id: Arc<str>,
        abandoned: bool,
    },
    /// An agent's answer to a reservation: its phones, or why not.
    Reserved {
        offer: u64,
        agent: Arc<str>,
        forks: Result<Vec<Fork>, &'static str>,
    },
    /// The call reports how an offer ended.
    OfferEnded {
        offer: u64,
        agent: Arc<str>,
        call_id: Arc<str>,
        outcome: OfferOutcome,
    },
    /// An answered queue call ended (handle time).
    CallEnded {
        talk_ms: u64,
    },
    /// A call's answer to a restarted queue's resync.
    CallerState {
        call_id: Arc<str>,
        state: CallerState,
    },
    MemberChanged(MemberUpdate),
    /// A caller waiting with music asks where it stands (answered with
    /// [`CallMsg::QueuePosition`]).
    Announce {
        call_id: Arc<str>,
    },
    Tick,
    GetStats(RpcReplyPort<QueueStats>),
    GetWaiting(RpcReplyPort<Vec<WaitingCaller>>),
    GetDecisions(RpcReplyPort<Vec<Decision>>),
    /// Fault injection for supervision tests.
    InjectPanic,
}

// Local only: ractor's `cluster` feature (on for ractor_cluster) asks each message type to
// say whether it can cross nodes; this one never does (the cluster module carries what does).
impl ractor::Message for QueueMsg {}

/// Where a listed caller stands, as its call actor says.
#[derive(Clone, Debug)]
pub enum CallerState {
    /// Still waiting; these offers are ringing.
    Waiting { ringing: Vec<(u64, Arc<str>)> },
    /// An agent answered (the outcome may have been lost with the previous actor).
    Answered { offer: u64, agent: Arc<str> },
    /// Left without an agent.
    Gone { abandoned: bool },
}

/// Live statistics of a queue.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct QueueStats {
    pub tenant: String,
    pub queue: String,
    pub strategy: &'static str,
    pub joined: u64,
    pub answered: u64,
    pub abandoned: u64,
    pub overflowed: u64,
    pub answered_within_sl: u64,
    pub service_level_secs: u64,
    /// answered_within_sl / (answered + abandoned); 1 when nothing happened yet.
    pub service_level: f64,
    /// Average speed of answer (ms).
    pub asa_ms: u64,
    /// Average handle (talk) time of ended calls (ms).
    pub aht_ms: u64,
    pub handled: u64,
    pub waiting: usize,
    pub longest_wait_ms: u64,
    pub members: usize,
    pub logged_in: usize,
    pub available: usize,
    pub offers: u64,
}

/// A waiting caller (API).
#[derive(Clone, Debug, serde::Serialize)]
pub struct WaitingCaller {
    pub position: usize,
    pub call_id: String,
    pub from: String,
    pub priority: u32,
    pub waited_ms: u64,
    pub offered_to: Vec<String>,
    pub attempts: u32,
}

/// One routing decision: who was eligible, who was chosen and why, what happened.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Decision {
    pub at_ms: u64,
    pub offer: u64,
    pub call_id: String,
    pub strategy: &'static str,
    pub eligible: usize,
    pub chosen: Vec<String>,
    pub reason: String,
    pub outcome: Option<String>,
}

/// What survives a restart of the queue actor.
#[derive(Clone, Debug, Default)]
pub struct QueueCheckpoint {
    waiting: Waiting,
    /// Offer id → (caller, agent, when): reservations and offers in flight. Persistent maps
    /// (`imbl`): the checkpoint is cloned after every message.
    offers: imbl::HashMap<u64, (Arc<str>, Arc<str>, u64)>,
    next_offer: u64,
    /// Offers whose reservation the agent granted (the call has them).
    granted: imbl::HashSet<u64>,
    rr_last: Option<u32>,
    counts: Counts,
}

impl QueueCheckpoint {
    /// The statistics (what cluster mode writes to etcd).
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// A checkpoint holding statistics only, for a queue that starts on a new owner: its
    /// waiting callers re-join from their call actors and its agents re-announce themselves,
    /// so neither is carried across nodes.
    pub fn from_counts(counts: Counts) -> QueueCheckpoint {
        QueueCheckpoint {
            counts,
            ..QueueCheckpoint::default()
        }
    }
}

/// A reservation not answered within this time was lost (the agent actor died with it in
/// its mailbox): it is withdrawn and the caller offered again.
const RESERVE_TIMEOUT_MS: u64 = 2000;

/// A queue's statistics since it was first started: the durable part of its checkpoint,
/// which cluster mode carries to the next owner (`cluster::checkpoints`). Durations are sums
/// of ms, not clock readings, so they mean the same on any node.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Callers that joined.
    pub joined: u64,
    /// Callers connected to an agent.
    pub answered: u64,
    /// Callers that hung up while waiting.
    pub abandoned: u64,
    /// Callers sent to an overflow target.
    pub overflowed: u64,
    /// Answered within the service-level threshold.
    pub within_sl: u64,
    /// Sum of the waits of answered callers (ms).
    pub wait_answered_ms: u64,
    /// Answered calls that ended (handle time known).
    pub handled: u64,
    /// Sum of their talk times (ms).
    pub handle_ms: u64,
    /// Offers made to agents.
    pub offers: u64,
}

pub struct QueueState {
    cc: Arc<CcContext>,
    tenant: Arc<str>,
    name: String,
    config: QueueConfig,
    overflow_wait: CcTarget,
    overflow_full: CcTarget,
    members: Vec<Member>,
    logged_in: Vec<bool>,
    by_id: HashMap<Arc<str>, usize>,
    cp: QueueCheckpoint,
    /// Offers granted by this actor (not a predecessor): a resync never withdraws them.
    granted_here: std::collections::HashSet<u64>,
    dirty: bool,
    decisions: VecDeque<Decision>,
    rules: OfferRules,
    tick: Option<crate::timer::TimerId>,
    myself: ActorRef<QueueMsg>,
    labels: [(&'static str, String); 2],
    /// Callers' own skill requirements, by Call-ID (each keep-alive's Join repeats them, so
    /// a restarted actor learns them again).
    caller_skills: HashMap<Arc<str>, Vec<crate::routing::acd::Requirement>>,
}

const DECISIONS_KEPT: usize = 200;

impl Actor for QueueActor {
    type Msg = QueueMsg;
    type State = QueueState;
    type Arguments = QueueArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<QueueMsg>,
        args: QueueArgs,
    ) -> Result<QueueState, ActorProcessingErr> {
        let name = actor_name(&args.tenant, &args.config.id, &args.cc.node);
        let restored = args.cc.queue_checkpoints.get(&name).map(|c| c.clone());
        if restored.is_some() {
            metrics::counter!(QUEUE_RESTORED).increment(1);
            tracing::info!(queue = %name, "queue restored from checkpoint");
        }
        let c = &args.config;
        args.cc.supervisors.insert(
            (args.tenant.clone(), Arc::from(c.id.as_str())),
            Arc::from(c.supervisors.clone()),
        );
        let rules = OfferRules {
            ring_timeout: Duration::from_secs(c.ring_timeout_secs),
            wrap_up: Duration::from_secs(c.wrap_up_secs),
            max_no_answer: c.max_no_answer,
            no_answer_delay: Duration::from_secs(c.no_answer_delay_secs),
            reject_delay: Duration::from_secs(c.reject_delay_secs),
            busy_delay: Duration::from_secs(c.busy_delay_secs),
        };
        let by_id = args
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id.clone(), i))
            .collect();
        let labels = [
            ("tenant", args.tenant.to_string()),
            ("queue", args.config.id.clone()),
        ];
        let mut state = QueueState {
            logged_in: vec![false; args.members.len()],
            cc: args.cc,
            tenant: args.tenant,
            name,
            overflow_wait: args.overflow_wait,
            overflow_full: args.overflow_full,
            members: args.members,
            by_id,
            cp: restored.clone().unwrap_or_default(),
            granted_here: std::collections::HashSet::new(),
            dirty: false,
            decisions: VecDeque::new(),
            rules,
            tick: None,
            myself,
            labels,
            caller_skills: HashMap::new(),
            config: args.config,
        };
        // Agents that are already running (a queue restart) tell us their state again.
        for m in &state.members {
            agent::tell(&state.cc, &state.tenant, &m.id, AgentMsg::Announce);
        }
        if restored.is_some() {
            state.resync_callers();
        }
        state.schedule_tick();
        state.publish();
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<QueueMsg>,
        msg: QueueMsg,
        state: &mut QueueState,
    ) -> Result<(), ActorProcessingErr> {
        let now = now_unix_ms() as u64;
        match msg {
            QueueMsg::Join(j) => state.on_join(j, now),
            QueueMsg::Leave { call_id, abandoned } => state.on_leave(&call_id, abandoned, now),
            QueueMsg::Reserved {
                offer,
                agent,
                forks,
            } => state.on_reserved(offer, agent, forks, now),
            QueueMsg::OfferEnded {
                offer,
                agent,
                call_id,
                outcome,
            } => state.on_offer_ended(offer, &agent, &call_id, outcome, now),
            QueueMsg::CallEnded { talk_ms } => {
                state.cp.counts.handled += 1;
                state.cp.counts.handle_ms += talk_ms;
                metrics::histogram!(QUEUE_HANDLE_TIME, &state.labels)
                    .record(talk_ms as f64 / 1000.0);
                state.dirty = true;
            }
            QueueMsg::MemberChanged(u) => state.on_member(u),
            QueueMsg::CallerState { call_id, state: cs } => state.on_caller_state(call_id, cs, now),
            QueueMsg::Announce { call_id } => state.announce(&call_id, now),
            QueueMsg::Tick => {
                state.on_tick(now);
                state.forget_granted();
                state.schedule_tick();
                state.publish();
            }
            QueueMsg::GetStats(reply) => {
                let _ = reply.send(state.stats(now));
            }
            QueueMsg::GetWaiting(reply) => {
                let _ = reply.send(state.waiting(now));
            }
            QueueMsg::GetDecisions(reply) => {
                let _ = reply.send(state.decisions.iter().cloned().collect());
            }
            QueueMsg::InjectPanic => panic!("injected fault"),
        }
        state.dispatch(now);
        if state.dirty {
            state.dirty = false;
            state
                .cc
                .queue_checkpoints
                .insert(state.name.clone(), state.cp.clone());
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<QueueMsg>,
        state: &mut QueueState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(id) = state.tick.take() {
            state.cc.timers.cancel(id);
        }
        Ok(())
    }
}

impl QueueState {
    fn on_join(&mut self, j: Join, now: u64) {
        if self.cp.waiting.get(&j.call_id).is_some() {
            // A keep-alive of a caller already here (after a restart: its skills again).
            if !j.skills.is_empty() {
                self.caller_skills.insert(j.call_id.clone(), j.skills);
            }
            return;
        }
        if self.config.max_length > 0 && self.cp.waiting.len() >= self.config.max_length {
            return self.overflow_at_join(&j.call_id, "full", self.overflow_full.clone());
        }
        if !self.config.join_empty && !self.logged_in.iter().any(|l| *l) {
            return self.overflow_at_join(&j.call_id, "empty", self.overflow_wait.clone());
        }
        self.cp.counts.joined += 1;
        metrics::counter!(QUEUE_JOINED, &self.labels).increment(1);
        let position = self.cp.waiting.push(Caller {
            call_id: j.call_id.clone(),
            priority: j.priority,
            seq: 0,
            joined_ms: j.joined_ms.min(now),
            from: j.from,
            user: j.user,
            offered: Vec::new(),
            attempts: 0,
        });
        if !j.skills.is_empty() {
            if self.caller_skills.len() > 2 * self.cp.waiting.len() + 16 {
                // Callers answered or gone leave entries behind: keep the waiting ones only.
                let waiting = &self.cp.waiting;
                self.caller_skills.retain(|id, _| waiting.get(id).is_some());
            }
            self.caller_skills.insert(j.call_id.clone(), j.skills);
        }
        tracing::debug!(queue = %self.name, call_id = %j.call_id, position, "caller joined");
        self.dirty = true;
    }

    fn overflow_at_join(&mut self, call_id: &Arc<str>, reason: &'static str, target: CcTarget) {
        self.cp.counts.overflowed += 1;
        metrics::counter!(QUEUE_OVERFLOWED, "tenant" => self.labels[0].1.clone(), "queue" => self.labels[1].1.clone(), "reason" => reason).increment(1);
        self.tell_call(call_id, CallMsg::QueueOverflow(target));
        self.dirty = true;
    }

    fn on_leave(&mut self, call_id: &str, abandoned: bool, _now: u64) {
        self.caller_skills.remove(call_id);
        if let Some(c) = self.cp.waiting.remove(call_id) {
            if abandoned {
                self.cp.counts.abandoned += 1;
                metrics::counter!(QUEUE_ABANDONED, &self.labels).increment(1);
            }
            // Reservations not yet rung are withdrawn; ringing offers are cancelled by the
            // call itself, which reports them.
            let pending: Vec<u64> = self
                .cp
                .offers
                .iter()
                .filter(|(_, (cid, ..))| **cid == *c.call_id)
                .map(|(id, _)| *id)
                .collect();
            for id in pending {
                if let Some((_, agent, _)) = self.cp.offers.remove(&id) {
                    agent::tell(
                        &self.cc,
                        &self.tenant,
                        &agent,
                        AgentMsg::Release { offer: id },
                    );
                }
            }
            self.dirty = true;
        }
    }

    fn on_reserved(
        &mut self,
        offer: u64,
        agent: Arc<str>,
        forks: Result<Vec<Fork>, &'static str>,
        _now: u64,
    ) {
        let Some((call_id, _, _)) = self.cp.offers.get(&offer).cloned() else {
            // Withdrawn meanwhile (the caller left): free the agent.
            if forks.is_ok() {
                agent::tell(&self.cc, &self.tenant, &agent, AgentMsg::Release { offer });
            }
            return;
        };
        match forks {
            Ok(forks) => {
                // The call may run on another node (cluster mode): tell_call reaches it there.
                let sent = self.cc.tell_call(
                    &call_id,
                    CallMsg::Offer(Box::new(super::call::Offer {
                        offer,
                        tenant: self.tenant.clone(),
                        queue: Arc::from(self.config.id.as_str()),
                        agent: agent.clone(),
                        forks,
                        ring_timeout: self.rules.ring_timeout,
                        ring_all: self.config.strategy == Strategy::RingAll,
                    })),
                );
                if sent {
                    self.cp.granted.insert(offer);
                    self.granted_here.insert(offer);
                } else {
                    // The call is gone without telling us: it leaves the list.
                    tracing::info!(queue = %self.name, call_id = %call_id, "queued call vanished");
                    self.cp.offers.remove(&offer);
                    agent::tell(&self.cc, &self.tenant, &agent, AgentMsg::Release { offer });
                    self.cp.waiting.remove(&call_id);
                }
            }
            Err(why) => {
                metrics::counter!(QUEUE_OFFERS, "tenant" => self.labels[0].1.clone(), "queue" => self.labels[1].1.clone(), "outcome" => "refused").increment(1);
                self.cp.offers.remove(&offer);
                if let Some(c) = self.cp.waiting.get_mut(&call_id) {
                    c.offered.retain(|a| *a != agent);
                }
                if let Some(&i) = self.by_id.get(&agent) {
                    self.members[i].available = false;
                }
                self.note_outcome(offer, format!("refused by {agent}: {why}"));
            }
        }
        self.dirty = true;
    }

    fn on_offer_ended(
        &mut self,
        offer: u64,
        agent: &Arc<str>,
        call_id: &Arc<str>,
        outcome: OfferOutcome,
        now: u64,
    ) {
        self.cp.offers.remove(&offer);
        metrics::counter!(QUEUE_OFFERS, "tenant" => self.labels[0].1.clone(), "queue" => self.labels[1].1.clone(), "outcome" => outcome.label()).increment(1);
        self.note_outcome(offer, format!("{agent}: {}", outcome.label()));
        if outcome == OfferOutcome::Answered {
            if let Some(c) = self.cp.waiting.remove(call_id) {
                let wait = now.saturating_sub(c.joined_ms);
                self.cp.counts.answered += 1;
                self.cp.counts.wait_answered_ms += wait;
                if wait <= self.config.service_level_secs * 1000 {
                    self.cp.counts.within_sl += 1;
                }
                metrics::counter!(QUEUE_ANSWERED, &self.labels).increment(1);
                metrics::histogram!(QUEUE_ANSWER_SPEED, &self.labels).record(wait as f64 / 1000.0);
                // Other reservations of this caller (ring-all) are withdrawn.
                for (id, (cid, a, _)) in self.cp.offers.clone() {
                    if cid == *call_id {
                        self.cp.offers.remove(&id);
                        agent::tell(&self.cc, &self.tenant, &a, AgentMsg::Release { offer: id });
                    }
                }
            }
        } else if let Some(c) = self.cp.waiting.get_mut(call_id) {
            c.offered.retain(|a| a != agent);
        }
        self.dirty = true;
    }

    /// After a restart: outcomes reported to the dead actor are lost, so each listed
    /// caller's call is asked where it stands; callers whose call is gone leave.
    fn resync_callers(&mut self) {
        let listed: Vec<Arc<str>> = self.cp.waiting.iter().map(|c| c.call_id.clone()).collect();
        for call_id in listed {
            if !self.cc.tell_call(&call_id, CallMsg::QueueResync) {
                self.cp.waiting.remove(&call_id);
                self.cp.offers.retain(|_, (c, _, _)| *c != call_id);
                self.dirty = true;
            }
        }
        if self.dirty {
            self.cc
                .queue_checkpoints
                .insert(self.name.clone(), self.cp.clone());
            self.dirty = false;
        }
    }

    fn on_caller_state(&mut self, call_id: Arc<str>, cs: CallerState, now: u64) {
        match cs {
            CallerState::Waiting { ringing } => {
                // Offers whose outcome was lost are over and the caller can be offered again;
                // offers this actor granted since are newer than the call's answer.
                let here = &self.granted_here;
                self.cp.offers.retain(|id, (c, _, _)| {
                    *c != call_id || ringing.iter().any(|(o, _)| o == id) || here.contains(id)
                });
                let live: Vec<Arc<str>> = self
                    .cp
                    .offers
                    .values()
                    .filter(|(c, _, _)| *c == call_id)
                    .map(|(_, a, _)| a.clone())
                    .collect();
                if let Some(c) = self.cp.waiting.get_mut(&call_id) {
                    c.offered = live;
                }
            }
            CallerState::Answered { offer, agent } => {
                self.on_offer_ended(offer, &agent, &call_id, OfferOutcome::Answered, now)
            }
            CallerState::Gone { abandoned } => self.on_leave(&call_id, abandoned, now),
        }
        self.dirty = true;
    }

    fn on_member(&mut self, u: MemberUpdate) {
        let Some(&i) = self.by_id.get(&u.agent) else {
            return;
        };
        let m = &mut self.members[i];
        m.available = u.available;
        m.idle_since_ms = u.idle_since_ms;
        m.calls = u.calls;
        m.talk_ms = u.talk_ms;
        self.logged_in[i] = u.logged_in;
    }

    /// Offers waiting callers to available agents while both exist.
    fn dispatch(&mut self, now: u64) {
        loop {
            let Some(caller) = self.cp.waiting.next_unoffered().cloned() else {
                return;
            };
            let waited = now.saturating_sub(caller.joined_ms);
            let ring_all = self.config.strategy == Strategy::RingAll;
            // The agent whose phone placed the call is not offered it (an agent testing
            // its own queue): out of this ranking only.
            let own = caller.user.as_ref().and_then(|u| {
                self.members
                    .iter()
                    .position(|m| m.available && m.user.as_ref() == Some(u))
            });
            if let Some(i) = own {
                self.members[i].available = false;
            }
            let reqs = match self.caller_skills.get(&caller.call_id) {
                Some(own) => std::borrow::Cow::Owned(acd::merge_requirements(
                    &self.config.required_skills,
                    own,
                )),
                None => std::borrow::Cow::Borrowed(&self.config.required_skills[..]),
            };
            let ranking = acd::rank_top(
                self.config.strategy,
                &self.members,
                &reqs,
                &self.config.relax,
                waited,
                now,
                self.cp.rr_last,
                rand::random(),
                if ring_all { usize::MAX } else { 1 },
            );
            if let Some(i) = own {
                self.members[i].available = true;
            }
            if ranking.order.is_empty() {
                // Callers behind the first wait less, so their requirements are no looser.
                return;
            }
            let take = if self.config.strategy == Strategy::RingAll {
                ranking.order.len()
            } else {
                1
            };
            let mut chosen = Vec::with_capacity(take);
            let first_offer = self.cp.next_offer + 1;
            for &i in ranking.order.iter().take(take) {
                self.cp.next_offer += 1;
                let offer = self.cp.next_offer;
                let m = &mut self.members[i];
                m.available = false;
                chosen.push(m.id.clone());
                self.cp.rr_last = Some(m.position);
                self.cp
                    .offers
                    .insert(offer, (caller.call_id.clone(), m.id.clone(), now));
                self.cp.counts.offers += 1;
                agent::tell(
                    &self.cc,
                    &self.tenant,
                    &m.id,
                    AgentMsg::Reserve(Reserve {
                        queue: Arc::from(self.config.id.as_str()),
                        call_id: caller.call_id.clone(),
                        offer,
                        rules: self.rules,
                    }),
                );
            }
            if let Some(c) = self.cp.waiting.get_mut(&caller.call_id) {
                c.offered.extend(chosen.iter().cloned());
                c.attempts += 1;
            }
            tracing::info!(queue = %self.name, call_id = %caller.call_id, eligible = ranking.eligible, chosen = ?chosen, reason = %ranking.reason, "offer");
            if self.decisions.len() == DECISIONS_KEPT {
                self.decisions.pop_front();
            }
            self.decisions.push_back(Decision {
                at_ms: now,
                offer: first_offer,
                call_id: caller.call_id.to_string(),
                strategy: self.config.strategy.label(),
                eligible: ranking.eligible,
                chosen: chosen.iter().map(|a| a.to_string()).collect(),
                reason: ranking.reason,
                outcome: None,
            });
            self.dirty = true;
        }
    }

    fn note_outcome(&mut self, offer: u64, outcome: String) {
        if let Some(d) = self
            .decisions
            .iter_mut()
            .rev()
            .find(|d| d.offer <= offer && offer < d.offer + d.chosen.len().max(1) as u64)
        {
            match &mut d.outcome {
                Some(o) => {
                    o.push_str("; ");
                    o.push_str(&outcome);
                }
                None => d.outcome = Some(outcome),
            }
        }
    }

    /// Once a second: overflow of callers waiting too long (or all, when the queue emptied
    /// and leave_empty is set), offers that never got an outcome, gauges.
    fn on_tick(&mut self, now: u64) {
        let max_wait = self.config.max_wait_secs * 1000;
        let empty = self.config.leave_empty && !self.logged_in.iter().any(|l| *l);
        let leaving: Vec<(Arc<str>, &'static str)> = self
            .cp
            .waiting
            .iter()
            .filter(|c| c.offered.is_empty())
            .filter_map(|c| {
                if empty {
                    Some((c.call_id.clone(), "empty"))
                } else if max_wait > 0 && now.saturating_sub(c.joined_ms) >= max_wait {
                    Some((c.call_id.clone(), "max_wait"))
                } else {
                    None
                }
            })
            .collect();
        for (call_id, reason) in leaving {
            self.cp.waiting.remove(&call_id);
            self.overflow_at_join(&call_id, reason, self.overflow_wait.clone());
        }
        // An offer whose reservation or outcome was lost (an actor restarted between the
        // two casts) would hold its caller forever.
        let limit = (self.rules.ring_timeout + Duration::from_secs(15)).as_millis() as u64;
        let granted = &self.cp.granted;
        let stale: Vec<(u64, Arc<str>, Arc<str>)> = self
            .cp
            .offers
            .iter()
            .filter(|(id, (_, _, at))| {
                let age = now.saturating_sub(*at);
                age > limit || (!granted.contains(*id) && age > RESERVE_TIMEOUT_MS)
            })
            .map(|(id, (c, a, _))| (*id, c.clone(), a.clone()))
            .collect();
        for (id, call_id, agent) in stale {
            tracing::warn!(queue = %self.name, offer = id, agent = %agent, "offer without outcome: withdrawn");
            self.cp.offers.remove(&id);
            if self.cp.granted.remove(&id).is_none() {
                // Reserved late after all: the agent frees itself on this.
                agent::tell(
                    &self.cc,
                    &self.tenant,
                    &agent,
                    AgentMsg::Release { offer: id },
                );
            }
            if let Some(c) = self.cp.waiting.get_mut(&call_id) {
                c.offered.retain(|a| *a != agent);
            }
            self.dirty = true;
        }
    }

    fn forget_granted(&mut self) {
        let offers = &self.cp.offers;
        self.cp.granted.retain(|o| offers.contains_key(o));
        self.granted_here.retain(|o| offers.contains_key(o));
    }

    fn schedule_tick(&mut self) {
        let id = self
            .cc
            .timers
            .schedule_cast_with(Duration::from_secs(1), &self.myself, |_| QueueMsg::Tick);
        self.tick = Some(id);
    }

    /// Sets the queue's gauges.
    fn publish(&self) {
        let now = now_unix_ms() as u64;
        let s = self.stats(now);
        metrics::gauge!(QUEUE_WAITING, &self.labels).set(s.waiting as f64);
        metrics::gauge!(QUEUE_LONGEST_WAIT, &self.labels).set(s.longest_wait_ms as f64 / 1000.0);
        metrics::gauge!(QUEUE_SERVICE_LEVEL, &self.labels).set(s.service_level);
        for (state, n) in [
            ("members", s.members),
            ("logged_in", s.logged_in),
            ("available", s.available),
        ] {
            metrics::gauge!(QUEUE_AGENTS, "tenant" => self.labels[0].1.clone(), "queue" => self.labels[1].1.clone(), "state" => state)
                .set(n as f64);
        }
    }

    /// Tells a waiting caller its position and, once calls have been handled, an estimate
    /// of its wait: callers ahead of it (and itself) times the average handle time, shared
    /// by the agents logged in.
    fn announce(&self, call_id: &str, now: u64) {
        let Some(i) = self.cp.waiting.iter().position(|c| &*c.call_id == call_id) else {
            return;
        };
        let position = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let stats = self.stats(now);
        let agents = stats.logged_in.max(1) as u64;
        let wait_secs = (stats.handled > 0).then(|| (i as u64 + 1) * stats.aht_ms / agents / 1000);
        self.tell_call(
            call_id,
            CallMsg::QueuePosition {
                position,
                wait_secs,
            },
        );
    }

    fn tell_call(&self, call_id: &str, msg: CallMsg) {
        self.cc.tell_call(call_id, msg);
    }

    fn stats(&self, now: u64) -> QueueStats {
        let c = &self.cp.counts;
        let settled = c.answered + c.abandoned;
        QueueStats {
            tenant: self.tenant.to_string(),
            queue: self.config.id.clone(),
            strategy: self.config.strategy.label(),
            joined: c.joined,
            answered: c.answered,
            abandoned: c.abandoned,
            overflowed: c.overflowed,
            answered_within_sl: c.within_sl,
            service_level_secs: self.config.service_level_secs,
            service_level: if settled == 0 {
                1.0
            } else {
                c.within_sl as f64 / settled as f64
            },
            asa_ms: c.wait_answered_ms.checked_div(c.answered).unwrap_or(0),
            aht_ms: c.handle_ms.checked_div(c.handled).unwrap_or(0),
            handled: c.handled,
            waiting: self.cp.waiting.len(),
            longest_wait_ms: self.cp.waiting.longest_wait_ms(now),
            members: self.members.len(),
            logged_in: self.logged_in.iter().filter(|l| **l).count(),
            available: self.members.iter().filter(|m| m.available).count(),
            offers: c.offers,
        }
    }

    fn waiting(&self, now: u64) -> Vec<WaitingCaller> {
        self.cp
            .waiting
            .iter()
            .enumerate()
            .map(|(i, c)| WaitingCaller {
                position: i + 1,
                call_id: c.call_id.to_string(),
                from: c.from.clone(),
                priority: c.priority,
                waited_ms: now.saturating_sub(c.joined_ms),
                offered_to: c.offered.iter().map(|a| a.to_string()).collect(),
                attempts: c.attempts,
            })
            .collect()
    }
}

/// One queue ready to start: its config, members and resolved overflow targets.
#[derive(Clone, Debug)]
pub struct QueueSpec {
    pub config: QueueConfig,
    pub members: Vec<Member>,
    pub overflow_wait: CcTarget,
    pub overflow_full: CcTarget,
}

/// The queues of a tenant with their members (from the agents' memberships, in agent
/// order) and overflow targets resolved (`number:` through the tenant's numbers).
pub fn plan(
    tenant: &crate::config::TenantConfig,
    agents: &[crate::config::AgentConfig],
) -> Vec<QueueSpec> {
    let resolve = |t: &Option<String>, default: u16| -> CcTarget {
        match t.as_deref().map(CcTarget::parse) {
            Some(Ok(CcTarget::Number(n))) => tenant
                .numbers
                .iter()
                .find(|x| x.number == n)
                .and_then(|x| CcTarget::parse(&x.target).ok())
                .unwrap_or(CcTarget::Status(480)),
            Some(Ok(t)) => t,
            _ => CcTarget::Status(default),
        }
    };
    tenant
        .queues
        .iter()
        .map(|q| {
            let members = agents
                .iter()
                .enumerate()
                .filter_map(|(i, a)| {
                    let m = a.queues.iter().find(|m| m.queue == q.id)?;
                    Some(Member {
                        id: Arc::from(a.id.as_str()),
                        user: (!a.user.is_empty()).then(|| Arc::from(a.user.as_str())),
                        tier: m.tier,
                        penalty: m.penalty,
                        position: u32::try_from(i).unwrap_or(u32::MAX),
                        available: false,
                        idle_since_ms: 0,
                        calls: 0,
                        talk_ms: 0,
                        skills: a.skills.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    })
                })
                .collect();
            QueueSpec {
                config: q.clone(),
                members,
                overflow_wait: resolve(&q.overflow_wait, 480),
                overflow_full: resolve(&q.overflow_full, 503),
            }
        })
        .collect()
}

/// Every `every`, snapshots the statistics of `queues` ((tenant, queue) pairs) into the
/// `queue_stats` table, and every agent's figures into `agent_stats`, through a connection
/// of its own (blocking work off the runtime
/// threads). Runs until the node's runtime stops.
pub async fn snapshot_stats(
    cc: Arc<CcContext>,
    queues: Vec<(String, String)>,
    db: crate::store::Database,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = now_unix_ms();
        let mut rows = Vec::with_capacity(queues.len());
        for (tenant, queue) in &queues {
            let Some(q) = lookup(tenant, queue, &cc.node) else {
                continue;
            };
            let Ok(s) = stats(&q).await else { continue };
            let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            rows.push(crate::store::QueueStatsRow {
                at: now,
                tenant: s.tenant,
                queue: s.queue,
                joined: n(s.joined),
                answered: n(s.answered),
                abandoned: n(s.abandoned),
                overflowed: n(s.overflowed),
                within_sl: n(s.answered_within_sl),
                waiting: s.waiting as i64,
                longest_wait_ms: n(s.longest_wait_ms),
                asa_ms: n(s.asa_ms),
                aht_ms: n(s.aht_ms),
                available: s.available as i64,
                logged_in: s.logged_in as i64,
            });
        }
        // Each agent's figures (per-agent data is not a Prometheus series: it goes here).
        let agents: Vec<(Arc<str>, Arc<str>)> = cc
            .agents_by_user
            .iter()
            .map(|e| (e.key().0.clone(), e.value().clone()))
            .collect();
        let mut agent_rows = Vec::with_capacity(agents.len());
        for (tenant, id) in agents {
            let Some(a) = super::agent::lookup(&tenant, &id, &cc.node) else {
                continue;
            };
            let Ok(info) = super::agent::info(&a).await else {
                continue;
            };
            let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            let state_ms = info
                .state_ms
                .iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect::<Vec<_>>()
                .join(",");
            agent_rows.push(crate::store::AgentStatsRow {
                tenant: info.tenant,
                agent: info.id,
                at: now,
                state: info.state.to_string(),
                calls: n(info.calls),
                talk_ms: n(info.talk_ms),
                offers: n(info.offers),
                state_ms: format!("{{{state_ms}}}"),
            });
        }
        if rows.is_empty() && agent_rows.is_empty() {
            continue;
        }
        let db = db.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut st = crate::store::Store::connect(&db, crate::store::Synchronous::Normal)?;
            st.insert_queue_stats(&rows)?;
            st.upsert_agent_stats(&agent_rows)
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!("queue and agent statistics snapshot not written");
        }
    }
}
