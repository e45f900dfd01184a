//! The call actor: one per call, a back-to-back user agent. The actor is a thin shell
//! around the pure call core ([`core::CallCore`]): each message becomes a core
//! [`core::Event`]; the [`core::Effect`]s that come back are executed here (send on a
//! transport, set or cancel a timer on the shared timer service, a relay command, a
//! message to a queue, agent or trunk, the CDR write, the checkpoint).
//!
//! Flow: A-leg INVITE → 100 Trying → B-leg INVITE (own Call-ID, tags, CSeq; SDP passed
//! through) → 18x/2xx relayed to A → A's ACK relayed to B (end-to-end) → in-dialog requests
//! relayed either way → BYE from either side ends the call and writes the CDR.
//!
//! The state that matters for an established call ([`Checkpoint`]) is copied into a table
//! the supervisor's restart factory reads at each phase change and after each relayed
//! in-dialog request (CSeqs, targets), so a restarted call actor resumes the call. The
//! actor stops itself once the call has ended and its last transaction has finished.

use bytes::Bytes;
use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::router::{Directory, Route};
use super::store_writer::{self, StoreWriterMsg};
use crate::sip::dialog::new_branch;
use crate::sip::message::{HeaderName, Message, Method};
use crate::sip::transaction::TimerConfig;
use crate::supervision::{start_child, ChildSpec, Restart, SupervisorError, SupervisorMsg};
use crate::timer::{TimerId, TimerService};
use crate::transport::{Dest, Inbound, Protocol, Source, Transports};

pub mod core;
mod env;
pub mod rate;

pub use self::core::consult_owner;
pub use self::core::media::describe as describe_media;
pub use self::core::{
    CallConfig, CallCore, CallInfo, CallTimer, CallView, Checkpoint, Command, Effect, Env, Event,
    HandedLeg, MonitorMode, Now, Party, Phase, RecordingCommand, Refused, Replaces, TargetError,
    TimerFire, TimerKey, TransferTarget,
};
pub use env::{event_sink, MediaCtx, NodeEnv};

pub const CALLS_ACTIVE: &str = "switchyard_calls_active";
pub const CALL_ATTEMPTS: &str = "switchyard_call_attempts_total";
pub const CALLS_ANSWERED: &str = "switchyard_calls_answered_total";
pub const CALLS_FAILED: &str = "switchyard_calls_failed_total";
pub const CALLS_ENDED: &str = "switchyard_calls_ended_total";
pub const CALL_SETUP: &str = "switchyard_call_setup_seconds";
pub const CALLS_RESTORED: &str = "switchyard_calls_restored_total";
pub const CLICK_TO_CALL: &str = "switchyard_click_to_call_seconds";
pub const TRANSACTIONS_ACTIVE: &str = "switchyard_transactions_active";
pub const TRANSACTIONS_TIMED_OUT: &str = "switchyard_transactions_timed_out_total";

pub const DIALOG_481: &str = "switchyard_sip_unknown_dialog_total";
/// Histogram, seconds: a call's end to its CDR's commit, which the last message of the
/// hangup waits for.
pub const CDR_DURABLE_WAIT: &str = "switchyard_cdr_durable_wait_seconds";
/// Counter, label `reason` (`failed`: the commit failed, the CDR is kept and retried;
/// `timeout`: no commit within [`CDR_DURABLE_WAIT_LIMIT`]; `no_writer`): hangups that went on
/// without their CDR being durable.
pub const CDR_NOT_DURABLE: &str = "switchyard_cdr_not_durable_total";

/// How long the end of a call waits for its CDR's commit before the hangup goes on anyway.
pub const CDR_DURABLE_WAIT_LIMIT: Duration = Duration::from_secs(2);

/// Describes the call metrics.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        CALLS_ACTIVE,
        "Calls in progress (admitted and not yet ended)"
    );
    describe_counter!(CALL_ATTEMPTS, "Calls admitted (call actors started)");
    describe_counter!(CALLS_ANSWERED, "Calls answered (2xx relayed to the caller)");
    describe_counter!(
        CALLS_FAILED,
        "Calls that ended without an answer, by final status"
    );
    describe_counter!(CALLS_ENDED, "Calls ended, by who ended them");
    describe_histogram!(
        CDR_DURABLE_WAIT,
        Unit::Seconds,
        "End of a call to its CDR's commit (the hangup's last message waits for it)"
    );
    describe_counter!(
        CDR_NOT_DURABLE,
        "Hangups that went on before their CDR was committed, by reason"
    );
    describe_histogram!(
        CALL_SETUP,
        Unit::Seconds,
        "INVITE received to 180 (stage=ringing) or 200 (stage=answer) sent"
    );
    describe_histogram!(
        CLICK_TO_CALL,
        Unit::Seconds,
        "Click-to-call: API request to the customer's INVITE sent (stage=customer_invite)"
    );
    describe_counter!(
        CALLS_RESTORED,
        "Call actors restarted from their checkpoint, by phase"
    );
    describe_gauge!(TRANSACTIONS_ACTIVE, "SIP transactions in progress");
    describe_counter!(
        TRANSACTIONS_TIMED_OUT,
        "Transactions that timed out, by kind"
    );
    describe_counter!(
        DIALOG_481,
        "In-dialog requests that matched no dialog (answered 481)"
    );
    self::core::transfer::describe();
    self::core::consult_describe();
    self::core::mixing_describe();
    super::conference::describe();
    self::core::service::describe();
    self::core::flow::describe();
}

/// What every call shares: transports, timers, directory, checkpoints, the CDR writer and
/// the call settings.
pub struct CallContext {
    transports: Transports,
    pub timers: TimerService,
    pub timer_cfg: TimerConfig,
    pub directory: Directory,
    /// Shared with each call's core (an `Arc`, copied by the core on its first change after
    /// a checkpoint): a quiet call holds one copy of its state, and the table's slots stay
    /// small (a hash table keeps up to twice its entries' room).
    pub checkpoints: DashMap<Bytes, Arc<Checkpoint>>,
    /// The CDR writer's registered name (looked up per use: it may have restarted).
    pub store_name: Option<String>,
    pub no_answer: Duration,
    pub max_duration: Option<Duration>,
    /// Calls admitted and not yet ended (admission control reads it).
    pub active: AtomicUsize,
    /// Calls admitted per second (`GET /status`).
    pub rate: rate::CallRate,
    pub user_agent: Bytes,
    pub advertise: Option<IpAddr>,
    /// The static routes and trunk groups (click-to-call routes the customer's number).
    pub routes: OnceLock<Arc<super::router::Routes>>,
    /// Queues and agents, for queued calls (set once the contact centre starts).
    pub cc: OnceLock<std::sync::Weak<crate::actors::queue::CcContext>>,
    /// The node's trunks (channels are given back through it, also after a restart).
    pub trunks: OnceLock<Arc<super::trunk::LiveTrunks>>,
    /// Media anchoring (set once the relay engine runs).
    pub media: OnceLock<Arc<MediaCtx>>,
    /// What every call reads, built once the transports are bound.
    config: OnceLock<Arc<CallConfig>>,
    /// The tenants' numbers (transfers to a number go where a call to it would).
    pub numbers: OnceLock<Arc<super::router::Numbers>>,
    /// The tenants' conferences (`POST /conferences`, `conference:<id>` numbers).
    pub conferences: super::conference::Conferences,
    /// Risk rules of outbound calls (the router and click-to-call ask it).
    pub risk: OnceLock<Arc<super::risk::RiskDesk>>,
}

impl CallContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        timers: TimerService,
        timer_cfg: TimerConfig,
        store_name: Option<String>,
        no_answer: Duration,
        max_duration: Option<Duration>,
        user_agent: &str,
        advertise: Option<IpAddr>,
        transports: Transports,
    ) -> CallContext {
        CallContext {
            transports,
            timers,
            timer_cfg,
            directory: Directory::new(),
            checkpoints: DashMap::new(),
            store_name,
            no_answer,
            max_duration,
            active: AtomicUsize::new(0),
            rate: rate::CallRate::new(),
            user_agent: Bytes::copy_from_slice(user_agent.as_bytes()),
            advertise,
            cc: OnceLock::new(),
            trunks: OnceLock::new(),
            routes: OnceLock::new(),
            media: OnceLock::new(),
            config: OnceLock::new(),
            numbers: OnceLock::new(),
            conferences: super::conference::Conferences::default(),
            risk: OnceLock::new(),
        }
    }

    /// The settings every call's core reads (timers, limits, how the switch names itself).
    pub fn call_config(&self) -> Arc<CallConfig> {
        self.config
            .get_or_init(|| {
                Arc::new(CallConfig {
                    timer_cfg: self.timer_cfg,
                    no_answer: self.no_answer,
                    max_duration: self.max_duration,
                    user_agent: self.user_agent.clone(),
                    force_rport: self.transports().force_rport(),
                    cdr_wait: CDR_DURABLE_WAIT_LIMIT,
                    sent_by: [
                        self.sent_by(Protocol::Udp),
                        self.sent_by(Protocol::Tcp),
                        self.sent_by(Protocol::Tls),
                    ],
                })
            })
            .clone()
    }

    pub(crate) fn store(&self) -> Option<ActorRef<StoreWriterMsg>> {
        let name = self.store_name.clone()?;
        ractor::registry::where_is(name).map(Into::into)
    }

    pub fn transports(&self) -> &Transports {
        &self.transports
    }

    /// True once the node receives SIP (the transports have their handler): before that,
    /// an answer to a request sent (a trunk's probe) would not be heard.
    pub fn ready(&self) -> bool {
        self.transports.serving()
    }

    /// The host:port this switch writes in Via and Contact for a protocol.
    pub fn sent_by(&self, protocol: Protocol) -> (String, u16) {
        let addr = self
            .transports()
            .advertised(protocol)
            .or_else(|| self.transports().advertised(Protocol::Udp))
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 5060)));
        let ip = match (self.advertise, addr.ip()) {
            (Some(ip), _) => ip,
            (None, ip) if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            (None, ip) => ip,
        };
        let host = match ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        };
        (host, addr.port())
    }

    /// Whether a Via sent-by names this switch (loop detection).
    pub fn is_own_sent_by(&self, host: &[u8], port: Option<u16>) -> bool {
        [Protocol::Udp, Protocol::Tcp, Protocol::Tls]
            .iter()
            .any(|&p| {
                let (h, pt) = self.sent_by(p);
                h.as_bytes() == host && port.unwrap_or(5060) == pt
            })
    }

    fn set_active_gauge(&self) {
        metrics::gauge!(CALLS_ACTIVE).set(self.active.load(Ordering::Relaxed) as f64);
    }
}

/// A new call handed over by the router.
pub struct NewCall {
    /// The caller's INVITE as screened (its From, To, Call-ID and CSeq parsed).
    pub invite: Inbound<crate::sip::validate::Request>,
    pub route: Route,
    /// The user to dial on the B leg (after strip/prepend).
    pub dialled: Bytes,
    /// Where the B leg goes when it is not the route's target: a registered user's phones,
    /// rung in parallel (first 2xx wins, the others are cancelled). Empty: the route.
    pub forks: Vec<Fork>,
    /// Set for a call to a queue: the caller waits (hearing ringing) until the queue offers
    /// it to an agent; `forks` and the route target are then unused.
    pub queue: Option<QueueJoin>,
    /// Set for a call the switch originates (click-to-call): `invite` is then a synthetic
    /// stand-in for the agent's side, and `forks` are the agent's phones, rung first.
    pub originate: Option<Originator>,
    /// Whose call it is, as far as the router knows.
    pub parties: Parties,
}

/// The tenant of a call and the tenant users on its legs, as the router knows them: an
/// authenticated caller, the user whose phones are rung. Only a leg with a user may
/// transfer the call.
#[derive(Clone, Debug, Default)]
pub struct Parties {
    pub tenant: Option<Arc<str>>,
    pub caller: Option<Arc<str>>,
    pub callee: Option<Arc<str>>,
}

/// Who a click-to-call is for: the agent (tenant, id) reserved for it, told how it goes.
#[derive(Clone, Debug, Default)]
pub struct Originator {
    pub agent: Option<(Arc<str>, Arc<str>)>,
}

/// Starts a click-to-call: rings the agent's phones (`forks`) with an INVITE without SDP;
/// when one answers, its offer goes to `number` along `route` (trunks), and the answer comes
/// back to the agent in the ACK (RFC 3725, flow I). Returns the agent leg's Call-ID.
#[allow(clippy::too_many_arguments)]
pub async fn originate(
    ctx: &Arc<CallContext>,
    calls: &ActorRef<SupervisorMsg>,
    call_id: String,
    agent_aor: &str,
    agent: Option<(Arc<str>, Arc<str>)>,
    forks: Vec<Fork>,
    number: &str,
    route: Route,
) -> Result<String, SupervisorError> {
    let parties = Parties {
        tenant: agent.as_ref().map(|(t, _)| t.clone()),
        caller: agent
            .as_ref()
            .map(|(_, a)| Arc::from(format!("agent:{a}").as_str())),
        callee: None,
    };
    ring_first(
        ctx, calls, call_id, agent_aor, agent, forks, number, route, parties,
    )
    .await
}

/// Starts a conference's dial-out: rings `user`'s phones (`forks`) with an INVITE without
/// SDP; the phone that answers is answered in the ACK from the switch's relay session and
/// joins the tenant's conference `id`. Returns the call's id (the participant's).
pub async fn dial_into_conference(
    ctx: &Arc<CallContext>,
    calls: &ActorRef<SupervisorMsg>,
    tenant: &Arc<str>,
    id: &str,
    user_aor: &str,
    forks: Vec<Fork>,
) -> Result<String, SupervisorError> {
    let first = forks.first().map(|f| f.dest);
    let (host, _) = ctx.sent_by(first.map_or(Protocol::Udp, |d| d.protocol));
    let call_id = format!(
        "conf-{}@{host}",
        crate::sip::dialog::random_token(16).escape_ascii()
    );
    let target_text = format!("conference:{id}");
    let route = Route {
        id: Arc::from(target_text.as_str()),
        from_trunks: false,
        prefix: format!("conference:{tenant}/{id}"),
        target: crate::config::RouteTarget {
            addr: first.map_or(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), |d| d.addr),
            protocol: first.map_or(Protocol::Udp, |d| d.protocol),
        },
        strip: 0,
        prepend: String::new(),
        target_text,
        group: None,
        media: super::router::MediaPolicy {
            anchor: true,
            answer_first: true,
            tenant: Some(tenant.clone()),
            service: Some(super::router::Service::Conference),
            conference: Some(Arc::from(id)),
            ..Default::default()
        },
    };
    let parties = Parties {
        tenant: Some(tenant.clone()),
        caller: None,
        callee: None,
    };
    // The phone sees the conference calling it.
    let number = format!("conference-{id}");
    ring_first(
        ctx, calls, call_id, user_aor, None, forks, &number, route, parties,
    )
    .await
}

/// Rings `forks` first (an INVITE without SDP, as if the rung party had called `number`),
/// and goes on along `route` once one answers.
#[allow(clippy::too_many_arguments)]
async fn ring_first(
    ctx: &Arc<CallContext>,
    calls: &ActorRef<SupervisorMsg>,
    call_id: String,
    agent_aor: &str,
    agent: Option<(Arc<str>, Arc<str>)>,
    forks: Vec<Fork>,
    number: &str,
    route: Route,
    parties: Parties,
) -> Result<String, SupervisorError> {
    let first = forks.first().map(|f| f.dest);
    let dest = first.unwrap_or(Dest {
        protocol: Protocol::Udp,
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        conn: None,
    });
    let (host, _) = ctx.sent_by(dest.protocol);
    // The agent's side as the rest of the call sees it: as if the agent had called the
    // number (From the agent, To the number), completed once the agent answers.
    let mut invite = Message::request(Method::Invite, format!("sip:{number}@{host}"));
    invite.push(
        HeaderName::Via,
        format!(
            "SIP/2.0/UDP {host};branch={}",
            String::from_utf8_lossy(&new_branch())
        ),
    );
    invite.push(HeaderName::MaxForwards, "70");
    invite.push(HeaderName::From, format!("<{agent_aor}>"));
    invite.push(HeaderName::To, format!("<sip:{number}@{host}>"));
    invite.push(HeaderName::CallId, call_id.clone());
    invite.push(HeaderName::CSeq, "1 INVITE");
    // The agent's address comes from the configuration or the API: checked like a peer's.
    let invite = crate::sip::validate::Request::checked(invite).map_err(|r| {
        SupervisorError::StartFailed {
            id: call_id.clone(),
            source: ractor::SpawnErr::StartupFailed(
                format!("click-to-call INVITE: {}", r.reason).into(),
            ),
        }
    })?;
    ctx.active.fetch_add(1, Ordering::Relaxed);
    let source = Source {
        protocol: dest.protocol,
        remote: dest.addr,
        local: dest.addr,
        conn: dest.conn,
    };
    let call = NewCall {
        invite: Inbound {
            msg: invite,
            source,
        },
        route,
        dialled: Bytes::copy_from_slice(number.as_bytes()),
        forks,
        queue: None,
        originate: Some(Originator { agent }),
        parties,
    };
    match start(ctx, calls, call).await {
        Ok(()) => Ok(call_id),
        Err(e) => {
            ctx.active.fetch_sub(1, Ordering::Relaxed);
            Err(e)
        }
    }
}

/// Which queue a call joins.
#[derive(Clone, Debug)]
pub struct QueueJoin {
    pub tenant: Arc<str>,
    pub queue: Arc<str>,
    pub priority: u32,
}

/// A queue offers a waiting call to an agent: ring the agent's phones.
#[derive(Clone, Debug)]
pub struct Offer {
    pub offer: u64,
    pub tenant: Arc<str>,
    pub queue: Arc<str>,
    pub agent: Arc<str>,
    pub forks: Vec<Fork>,
    pub ring_timeout: Duration,
    /// A ring-all offer: rings together with the other agents' offers of the same round.
    pub ring_all: bool,
}

/// One destination of a forked B leg: a registered contact and the flow to reach it.
#[derive(Clone, Debug)]
pub struct Fork {
    pub ruri: Bytes,
    pub dest: Dest,
}

impl Fork {
    /// One fork per registered contact, in the bindings' order (highest q first).
    pub fn all(bindings: &[super::registrar::Binding]) -> Vec<Fork> {
        bindings
            .iter()
            .map(|b| Fork {
                ruri: b.contact.clone(),
                dest: b.dest(),
            })
            .collect()
    }
}

/// Starts a call actor under the calls supervisor. Its restart factory restores the call
/// from its checkpoint.
pub async fn start(
    ctx: &Arc<CallContext>,
    calls: &ActorRef<SupervisorMsg>,
    call: NewCall,
) -> Result<(), SupervisorError> {
    // Its own allocation: the restart factory keeps it as long as the child.
    let a_call_id = Bytes::copy_from_slice(call.invite.msg.call_id().map_or(&[][..], |c| c));
    let first = Arc::new(Mutex::new(Some(Box::new(call))));
    let ctx2 = ctx.clone();
    let key = a_call_id.clone();
    let args = move || {
        let init = match first.lock().expect("call init").take() {
            Some(call) => CallInit::New(call),
            None => match ctx2.checkpoints.get(&key) {
                Some(cp) => CallInit::Restore(Box::new(Checkpoint::clone(cp.value()))),
                None => CallInit::Lost(key.clone()),
            },
        };
        CallArgs {
            ctx: ctx2.clone(),
            init,
        }
    };
    let id = String::from_utf8_lossy(&a_call_id).into_owned();
    start_child(
        calls,
        ChildSpec::actor(id, "call", Restart::Transient, CallActor, args),
    )
    .await
    .map(|_| ())
}

/// The call actor: a shell around [`CallCore`] (everything is in [`CallState`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct CallActor;

pub struct CallArgs {
    ctx: Arc<CallContext>,
    init: CallInit,
}

enum CallInit {
    New(Box<NewCall>),
    Restore(Box<Checkpoint>),
    /// Restarted before the first checkpoint: nothing to resume.
    Lost(Bytes),
}

/// Messages of the call actor.
pub enum CallMsg {
    /// A SIP message for this call arrived.
    Sip(Box<Inbound>),
    /// A timer the call's core set fired.
    Timer(TimerFire, TimerKey),
    /// Ends an established call from the switch (BYE to both legs).
    Hangup(String),
    /// Describes the call (tests and the API).
    GetInfo(RpcReplyPort<CallInfo>),
    /// Fault injection for supervision tests: the actor panics while handling it.
    InjectPanic,
    /// A queue offers this (queued) call to an agent.
    Offer(Box<Offer>),
    /// The queue sends the caller elsewhere (full, waited too long, emptied).
    QueueOverflow(crate::config::CcTarget),
    /// A restarted queue asks where this caller stands (messages to the dead actor are lost).
    QueueResync,
    /// A restarted agent asks how its offer stands.
    AgentResync { agent: Arc<str>, offer: u64 },
    /// The relay detected a DTMF digit on a leg.
    Dtmf {
        side: crate::media::relay::Side,
        digit: char,
        source: crate::media::relay::DtmfSource,
    },
    /// The relay saw no RTP from either leg for `media.rtp_timeout_secs`: an answered
    /// call ends (BYE to both, CDR reason "rtp timeout").
    MediaTimeout,
    /// The queue says where a waiting caller stands (for its announcement).
    QueuePosition {
        position: u32,
        wait_secs: Option<u64>,
    },
    /// Starts, stops, pauses or resumes the call's recording (the API); replies with the
    /// recording's id or why not.
    Recording(RecordingCommand, RpcReplyPort<Result<String, String>>),
    /// The call's CDR is committed (`true`), or will not be soon (failed or too slow): what
    /// waited for it goes on.
    CdrStored(bool),
    /// The API's call control (hold, unhold, transfer); replies with what was done or why
    /// not.
    Control(Command, RpcReplyPort<Result<String, Refused>>),
    /// An attended transfer in another call (`to`) asks for the leg at the far end of the
    /// dialog `Replaces` names; the answer goes to `to` as [`CallMsg::Adopt`].
    HandOver(Replaces, ActorRef<CallMsg>),
    /// The answer to [`CallMsg::HandOver`]: the consultation call's leg, or why not.
    Adopt(Result<Box<HandedLeg>, String>),
    /// The agent a transfer goes to was reserved (its phones), or why not.
    AgentReserved {
        tenant: Arc<str>,
        agent: Arc<str>,
        phones: Result<Vec<Fork>, String>,
    },
    /// A new INVITE with Replaces naming one of this call's dialogs (the router found the
    /// call by the Call-ID it names), from the tenant user (tenant, user) it authenticated as.
    Replacing {
        invite: Box<Inbound>,
        user: Option<(Arc<str>, Arc<str>)>,
    },
    /// A call flow's webhook answered (or did not).
    WebhookAnswered {
        seq: u32,
        result: core::WebhookResult,
    },
}

// Local only: ractor's `cluster` feature (on for ractor_cluster) asks each message type to
// say whether it can cross nodes; this one never does (the cluster module carries what does).
impl ractor::Message for CallMsg {}

/// The state of a call actor: the core, and what executing its effects needs.
pub struct CallState {
    ctx: Arc<CallContext>,
    myself: ActorRef<CallMsg>,
    core: CallCore,
    /// The core's timers on the shared timer service (cancelled when the actor stops).
    timers: Vec<(TimerKey, TimerId)>,
    /// The effects of the event being handled (kept between events for its capacity).
    out: Vec<Effect>,
}

impl Actor for CallActor {
    type Msg = CallMsg;
    type State = CallState;
    type Arguments = CallArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CallMsg>,
        args: CallArgs,
    ) -> Result<CallState, ActorProcessingErr> {
        let ctx = args.ctx;
        let env = Box::new(NodeEnv::new(ctx.clone()));
        let mut state = CallState {
            core: CallCore::new(ctx.call_config(), env, Now::read()),
            ctx,
            myself: myself.clone(),
            timers: Vec::new(),
            out: Vec::new(),
        };
        match args.init {
            CallInit::New(call) => {
                metrics::counter!(CALL_ATTEMPTS).increment(1);
                state.ctx.set_active_gauge();
                state.run(Event::New(call));
            }
            CallInit::Restore(cp) => state.run(Event::Restore(cp)),
            CallInit::Lost(a_call_id) => {
                tracing::warn!(call_id = %String::from_utf8_lossy(&a_call_id), "call actor restarted before its first checkpoint: call dropped");
                state.ctx.directory.remove(&a_call_id);
                if let Some(m) = state.ctx.media.get() {
                    m.engine.release(&a_call_id);
                }
                state.ctx.active.fetch_sub(1, Ordering::Relaxed);
                state.ctx.set_active_gauge();
                myself.stop(Some("lost".into()));
            }
        }
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<CallMsg>,
        msg: CallMsg,
        state: &mut CallState,
    ) -> Result<(), ActorProcessingErr> {
        let event = match msg {
            CallMsg::Sip(inbound) => Event::Sip(inbound),
            CallMsg::Timer(fire, key) => {
                let Some(i) = state.timers.iter().position(|(k, _)| *k == key) else {
                    return Ok(()); // cancelled meanwhile
                };
                state.timers.swap_remove(i);
                Event::Timer(fire, key)
            }
            CallMsg::Hangup(reason) => Event::Hangup(reason),
            CallMsg::GetInfo(reply) => {
                let _ = reply.send(state.core.info());
                return Ok(());
            }
            CallMsg::InjectPanic => panic!("injected fault"),
            CallMsg::Offer(offer) => Event::Offer(offer),
            CallMsg::QueueOverflow(target) => Event::QueueOverflow(target),
            CallMsg::QueueResync => Event::QueueResync,
            CallMsg::AgentResync { agent, offer } => Event::AgentResync { agent, offer },
            CallMsg::Dtmf {
                side,
                digit,
                source,
            } => Event::Dtmf {
                side,
                digit,
                source,
            },
            CallMsg::QueuePosition {
                position,
                wait_secs,
            } => Event::QueuePosition {
                position,
                wait_secs,
            },
            CallMsg::Recording(cmd, reply) => {
                let result = state.with_core(|core, now, out| core.recording(cmd, now, out));
                let _ = reply.send(result);
                return Ok(());
            }
            CallMsg::CdrStored(stored) => Event::CdrStored(stored),
            CallMsg::MediaTimeout => Event::MediaTimeout,
            CallMsg::Control(cmd, reply) => {
                let result = state.with_core(|core, now, out| core.command(cmd, now, out));
                let _ = reply.send(result);
                return Ok(());
            }
            CallMsg::HandOver(replaces, to) => {
                let result = state.with_core(|core, now, out| core.hand_over(&replaces, now, out));
                let _ = to.cast(CallMsg::Adopt(result.map(Box::new)));
                return Ok(());
            }
            CallMsg::Adopt(handed) => Event::Adopt(handed),
            CallMsg::Replacing { invite, user } => Event::Replacing { invite, user },
            CallMsg::AgentReserved {
                tenant,
                agent,
                phones,
            } => Event::AgentReserved {
                tenant,
                agent,
                phones,
            },
            CallMsg::WebhookAnswered { seq, result } => Event::WebhookAnswered { seq, result },
        };
        state.run(event);
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<CallMsg>,
        state: &mut CallState,
    ) -> Result<(), ActorProcessingErr> {
        for (_, id) in state.timers.drain(..) {
            state.ctx.timers.cancel(id);
        }
        let open = state.core.transactions();
        if open > 0 {
            metrics::gauge!(TRANSACTIONS_ACTIVE).decrement(open as f64);
        }
        for id in state.core.call_ids() {
            state.ctx.directory.unregister(&id, &myself);
        }
        if let Some(id) = state.core.a_call_id() {
            state.ctx.checkpoints.remove(&id);
        }
        Ok(())
    }
}

impl CallState {
    /// Hands `event` to the core and executes what it asks, then the events that brings
    /// back (messages queued for a Call-ID the call registers, a CDR with no writer).
    fn run(&mut self, event: Event) {
        self.with_core(|core, now, out| core.step(event, now, out));
    }

    /// Calls the core, executes the effects, and hands the core the events that brings
    /// back, until there are none.
    fn with_core<R>(&mut self, f: impl FnOnce(&mut CallCore, Now, &mut Vec<Effect>) -> R) -> R {
        let mut out = std::mem::take(&mut self.out);
        let result = f(&mut self.core, Now::read(), &mut out);
        self.out = out;
        let mut events = VecDeque::new();
        self.execute_all(&mut events);
        while let Some(event) = events.pop_front() {
            self.core.step(event, Now::read(), &mut self.out);
            self.execute_all(&mut events);
        }
        // Not kept between events: an idle call would hold its room (an `Effect` is ~160
        // bytes, a call's events push up to ~10) for its whole life.
        self.out = Vec::new();
        result
    }

    fn execute_all(&mut self, events: &mut VecDeque<Event>) {
        let mut out = std::mem::take(&mut self.out);
        for effect in out.drain(..) {
            self.execute(effect, events);
        }
        self.out = out;
    }

    fn execute(&mut self, effect: Effect, events: &mut VecDeque<Event>) {
        let ctx = &self.ctx;
        match effect {
            Effect::Send { dest, bytes } => ctx.transports().send(dest, bytes),
            Effect::StartTimer { key, after, fire } => {
                let id = ctx
                    .timers
                    .schedule_cast_with(after, &self.myself, move |_| CallMsg::Timer(fire, key));
                self.timers.push((key, id));
            }
            Effect::CancelTimer(key) => {
                if let Some(i) = self.timers.iter().position(|(k, _)| *k == key) {
                    let (_, id) = self.timers.swap_remove(i);
                    ctx.timers.cancel(id);
                }
            }
            Effect::Register(call_id) => {
                for inbound in ctx.directory.register(call_id, self.myself.clone()) {
                    events.push_back(Event::Sip(Box::new(inbound)));
                }
            }
            Effect::Retire { ids, retired } => {
                ctx.directory.retire(
                    &ids,
                    &self.myself,
                    retired,
                    &ctx.timers,
                    ctx.timer_cfg.t1_x64(),
                );
                // Drain, not stop: messages the router queued before the switch (a 2xx
                // retransmission, say) are still handled.
                if self.myself.drain().is_err() {
                    self.myself.stop(None);
                }
            }
            Effect::Checkpoint(cp) => {
                ctx.checkpoints.insert(cp.a_call_id.clone(), cp);
            }
            Effect::DropCheckpoint(id) => {
                ctx.checkpoints.remove(&id);
            }
            Effect::WriteCdr(cdr) => {
                if !self.write_cdr(*cdr) {
                    events.push_back(Event::CdrStored(false));
                }
            }
            Effect::Ended => {
                ctx.active.fetch_sub(1, Ordering::Relaxed);
                ctx.set_active_gauge();
            }
            Effect::Tell(tell) => env::tell(ctx, tell),
            Effect::Media(op) => {
                if let Some(id) = self.core.a_call_id() {
                    env::media(ctx, &id, op);
                }
            }
            Effect::ReserveAgent { tenant, agent } => self.reserve_agent(tenant, agent, events),
            Effect::Webhook(req) => env::webhook(self.myself.clone(), *req),
            Effect::ConsultMedia(op) => {
                if let Some(id) = self.core.a_call_id() {
                    env::media(ctx, &core::consult_key(&id), op);
                }
            }
            Effect::Mix(op) => {
                if let Some(id) = self.core.a_call_id() {
                    env::mix(ctx, &id, op);
                }
            }
            Effect::AskHandOver(replaces) => match ctx.directory.lookup(&replaces.call_id) {
                Some(actor) if actor.get_id() != self.myself.get_id() => {
                    let me = self.myself.clone();
                    let _ = actor.cast(CallMsg::HandOver(replaces, me));
                }
                _ => events.push_back(Event::Adopt(Err("no such call here".into()))),
            },
            Effect::ReleaseTrunk(id) => {
                if let Some(t) = ctx.trunks.get().and_then(|table| table.get(&id)) {
                    t.release();
                }
            }
        }
    }

    /// Reserves an agent for a transfer (its actor answers in a task, so the call goes on
    /// meanwhile); the answer comes back as [`CallMsg::AgentReserved`].
    fn reserve_agent(&mut self, tenant: Arc<str>, agent: Arc<str>, events: &mut VecDeque<Event>) {
        let cc = self.ctx.cc.get().and_then(std::sync::Weak::upgrade);
        let actor = cc
            .as_ref()
            .and_then(|cc| crate::actors::agent::lookup(&tenant, &agent, &cc.node));
        let (Some(actor), Some(call_id)) = (actor, self.core.a_call_id()) else {
            events.push_back(Event::AgentReserved {
                tenant,
                agent,
                phones: Err("agent not running here".into()),
            });
            return;
        };
        let me = self.myself.clone();
        let call_id: Arc<str> = Arc::from(String::from_utf8_lossy(&call_id).as_ref());
        tokio::spawn(async move {
            let phones = crate::actors::agent::reserve_outbound(&actor, call_id).await;
            let _ = me.cast(CallMsg::AgentReserved {
                tenant,
                agent,
                phones,
            });
        });
    }

    /// Hands the CDR to the writer, which casts [`CallMsg::CdrStored`] back right after the
    /// commit (the core bounds the wait with a timer: [`CDR_DURABLE_WAIT_LIMIT`]). False
    /// when there is no writer to wait for.
    fn write_cdr(&mut self, cdr: crate::store::Cdr) -> bool {
        let store = match self.ctx.store() {
            Some(store) => store,
            None => {
                if self.ctx.store_name.is_some() {
                    metrics::counter!(CDR_NOT_DURABLE, "reason" => "no_writer").increment(1);
                    tracing::error!("CDR writer not running: CDR lost");
                }
                return false;
            }
        };
        let me = self.myself.clone();
        let started = Instant::now();
        let ack = store_writer::CdrAck::new(move |stored| {
            if stored {
                metrics::histogram!(CDR_DURABLE_WAIT).record(started.elapsed().as_secs_f64());
            } else {
                metrics::counter!(CDR_NOT_DURABLE, "reason" => "failed").increment(1);
            }
            let _ = me.cast(CallMsg::CdrStored(stored));
        });
        if let Err(e) = store_writer::write_cdr_acked(&store, cdr, ack) {
            metrics::counter!(CDR_NOT_DURABLE, "reason" => "no_writer").increment(1);
            tracing::error!(error = %e, "CDR writer unavailable: CDR lost");
            return false;
        }
        true
    }
}
