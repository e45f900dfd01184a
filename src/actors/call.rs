//! The call actor: one per call, a back-to-back user agent. It owns both legs'
//! transactions (the pure machines of `sip::transaction`), both dialogs, the call's timers
//! and its CDR. The actor is a thin shell: each message is handled by [`CallState`], whose
//! transaction steps return actions that it executes.
//!
//! Flow: A-leg INVITE → 100 Trying → B-leg INVITE (own Call-ID, tags, CSeq; SDP passed
//! through) → 18x/2xx relayed to A → A's ACK relayed to B (end-to-end) → in-dialog requests
//! relayed either way → BYE from either side ends the call and writes the CDR.
//! The ACK of a re-INVITE's 2xx is hop by hop when the re-INVITE carried the offer, end to
//! end when it did not (the ACK carries the answer). One INVITE at a time across both legs
//! (491 otherwise); a 2xx from a second B-leg fork is ACKed and ended with a BYE.
//!
//! The state that matters for an established call ([`Checkpoint`]) is copied into a table
//! the supervisor's restart factory reads at each phase change and after each relayed
//! in-dialog request (CSeqs, targets), so a restarted call actor
//! resumes the call. The actor stops itself once the call has ended and its last
//! transaction has finished lingering.

use bytes::{BufMut, Bytes, BytesMut};
use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::router::{Directory, Retired, RetiredResponse, Route};
use super::store_writer::{self, StoreWriterMsg};
use super::trunk::{self, AttemptReport, TrunkShared};
use crate::routing::trunks::{classify, FailoverCause, Outcome};
use crate::sip::dialog::{
    self, ack_for_failure, cancel_for, cseq_value, new_branch, random_token, Dialog,
};
use crate::sip::message::{reason_phrase, response_to, HeaderName, Message, Method};
use crate::sip::transaction::{
    Action, Event, Kind, Reliability, TimerConfig, TimerName, Transaction,
};
use crate::store::{now_unix_ms, Cdr, HangupBy};
use crate::supervision::{start_child, ChildSpec, Restart, SupervisorError, SupervisorMsg};
use crate::timer::{TimerId, TimerService};
use crate::transport::{status_label, Dest, Inbound, Protocol, Source, Transports};

mod media;
pub use media::{describe as describe_media, event_sink, MediaCtx, RecordingCommand};

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
/// How often a queued caller reminds its queue that it waits.
const QUEUE_KEEPALIVE: Duration = Duration::from_secs(5);

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
}

/// What every call shares: transports, timers, directory, checkpoints, the CDR writer and
/// the call settings.
pub struct CallContext {
    transports: OnceLock<Transports>,
    pub timers: TimerService,
    pub timer_cfg: TimerConfig,
    pub directory: Directory,
    pub checkpoints: DashMap<Bytes, Checkpoint>,
    /// The CDR writer's registered name (looked up per use: it may have restarted).
    pub store_name: Option<String>,
    pub no_answer: Duration,
    pub max_duration: Option<Duration>,
    /// Calls admitted and not yet ended (admission control reads it).
    pub active: AtomicUsize,
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
    ) -> CallContext {
        CallContext {
            transports: OnceLock::new(),
            timers,
            timer_cfg,
            directory: Directory::new(),
            checkpoints: DashMap::new(),
            store_name,
            no_answer,
            max_duration,
            active: AtomicUsize::new(0),
            user_agent: Bytes::copy_from_slice(user_agent.as_bytes()),
            advertise,
            cc: OnceLock::new(),
            trunks: OnceLock::new(),
            routes: OnceLock::new(),
            media: OnceLock::new(),
        }
    }

    /// Sets the transports once they are bound (they need the router, which needs this).
    pub fn set_transports(&self, t: Transports) {
        let _ = self.transports.set(t);
    }

    /// True once the transports are set.
    pub fn ready(&self) -> bool {
        self.transports.get().is_some()
    }

    pub(crate) fn store(&self) -> Option<ActorRef<StoreWriterMsg>> {
        let name = self.store_name.clone()?;
        ractor::registry::where_is(name).map(Into::into)
    }

    pub fn transports(&self) -> &Transports {
        self.transports
            .get()
            .expect("transports are set before any message arrives")
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

    fn via(&self, protocol: Protocol, branch: &[u8]) -> Bytes {
        let (host, port) = self.sent_by(protocol);
        let mut v = BytesMut::with_capacity(64 + branch.len());
        v.put_slice(b"SIP/2.0/");
        v.put_slice(protocol.via_token().as_bytes());
        v.put_u8(b' ');
        v.put_slice(host.as_bytes());
        v.put_u8(b':');
        v.put_slice(itoa::Buffer::new().format(port).as_bytes());
        v.put_slice(b";branch=");
        v.put_slice(branch);
        v.put_slice(b";rport");
        v.freeze()
    }

    fn contact(&self, protocol: Protocol) -> Bytes {
        let (host, port) = self.sent_by(protocol);
        let transport = protocol.uri_param();
        Bytes::from(format!("<sip:{host}:{port}{transport}>"))
    }

    fn set_active_gauge(&self) {
        metrics::gauge!(CALLS_ACTIVE).set(self.active.load(Ordering::Relaxed) as f64);
    }
}

/// A new call handed over by the router.
pub struct NewCall {
    pub invite: Inbound,
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
    };
    match start(ctx, calls, call).await {
        Ok(()) => Ok(call_id),
        Err(e) => {
            ctx.active.fetch_sub(1, Ordering::Relaxed);
            Err(e)
        }
    }
}

/// A click-to-call's agent side before and after the agent answers.
struct Originated {
    answered: bool,
    /// The ACK sent for the agent's 2xx (resent if the 2xx is).
    ack: Option<Bytes>,
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

/// A queued call's contact-centre facts (part of the checkpoint, and the CDR's).
#[derive(Clone, Debug)]
struct QueueLeg {
    tenant: Arc<str>,
    queue: Arc<str>,
    priority: u32,
    joined_ms: u64,
    /// The agent who answered, and the offer it answered.
    agent: Option<Arc<str>>,
    answered_offer: Option<u64>,
    wait_ms: Option<u64>,
    abandoned: bool,
    /// Still waiting in (or being offered by) the queue.
    waiting: bool,
}

/// One ringing fork of an offer: its B-leg transaction and the agent it rings.
#[derive(Clone, Debug)]
struct OfferFork {
    tx: u32,
    offer: u64,
    agent: Arc<str>,
    rang: bool,
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
    let a_call_id = call.invite.msg.call_id().cloned().unwrap_or_default();
    let first = Arc::new(Mutex::new(Some(Box::new(call))));
    let ctx2 = ctx.clone();
    let key = a_call_id.clone();
    let args = move || {
        let init = match first.lock().expect("call init").take() {
            Some(call) => CallInit::New(call),
            None => match ctx2.checkpoints.get(&key) {
                Some(cp) => CallInit::Restore(Box::new(cp.clone())),
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

/// The call actor (stateless: everything is in [`CallState`]).
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
    /// A transaction timer fired.
    TxTimerFired {
        tx: u32,
        timer: TimerName,
        id: TimerId,
    },
    /// A call-level timer fired.
    CallTimerFired(CallTimer, TimerId),
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
}

/// The last messages of a hangup, held until the call's CDR is durable: whoever sees the
/// call complete (a 200 to its BYE, or a BYE) sees it only once its record cannot be lost
/// with the node.
enum AfterCdr {
    /// A final response the switch gives itself (to a BYE): server transaction, status, reason.
    Respond(u32, u16, &'static str),
    /// A BYE relayed to the other leg: the leg it came from, the BYE, its server transaction.
    Relay(Leg, Box<Message>, u32),
    /// The switch's own BYE to a leg.
    Bye(Leg),
    /// The trunk channel is given back, after the BYE that ends it at the carrier went out:
    /// freed earlier, a new call could take it while the carrier still counts the old one.
    ReleaseChannel,
}

// Local only: ractor's `cluster` feature (on for ractor_cluster) asks each message type to
// say whether it can cross nodes; this one never does (the cluster module carries what does).
impl ractor::Message for CallMsg {}

/// Call-level timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallTimer {
    NoAnswer,
    MaxDuration,
    /// Retransmit the 2xx to the caller until its ACK arrives (RFC 3261 §13.3.1.4).
    Resend2xx,
    /// Retransmit the 2xx of a relayed re-INVITE (server transaction `0`) over UDP until
    /// its ACK arrives: the ACK towards the answering leg was hop by hop, so that leg's own
    /// retransmissions have stopped, and one lost 2xx would make the re-INVITE time out,
    /// which ends the call at the sender (RFC 3261 §14.1).
    ResendRelayed2xx(u32),
    /// A queued caller reminds its queue that it waits (a restarted queue actor may have
    /// lost a message; joining again is idempotent).
    QueueKeepalive,
    /// A trunk attempt had no response at all in the trunk's INVITE timeout.
    InviteTimeout,
    /// Time to tell a caller waiting with music where it stands.
    Announce,
}

/// A snapshot for tests and the API.
#[derive(Clone, Debug)]
pub struct CallInfo {
    pub phase: Phase,
    pub a_call_id: Bytes,
    pub b_call_id: Bytes,
    pub transactions: usize,
    pub restored: bool,
    /// DTMF digits detected so far (both legs, in order).
    pub dtmf: String,
    /// Whether the call's media is anchored.
    pub anchored: bool,
}

/// Where a call is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting in a queue for an agent (the caller has 180).
    Queued,
    /// B-leg INVITE sent, no provisional yet.
    Setup,
    /// Provisional response relayed (early dialog).
    Early,
    /// 2xx relayed to the caller, waiting for its ACK.
    Answered,
    /// Both legs confirmed.
    Confirmed,
    /// Over; transactions may still linger to absorb retransmissions.
    Ended,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Setup => "setup",
            Phase::Early => "early",
            Phase::Answered => "answered",
            Phase::Confirmed => "confirmed",
            Phase::Ended => "ended",
        }
    }
}

/// The part of a call's state that survives a restart of its actor.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub phase: Phase,
    pub a_call_id: Bytes,
    pub b_call_id: Bytes,
    /// The caller's INVITE (responses to it are built from it).
    a_invite: Arc<Message>,
    a_source: Source,
    /// The B-leg INVITE as sent (CANCEL and the 2xx ACK are built from it).
    b_invite: Arc<Message>,
    b_dest: Dest,
    /// Dialog with the caller (we are its UAS).
    a: Dialog,
    /// Dialog with the callee (we are its UAC).
    b: Dialog,
    cdr: CdrDraft,
    /// The ACK sent to B for its 2xx (resent when B retransmits the 2xx).
    b_ack: Option<Bytes>,
    ended: bool,
    queue: Option<QueueLeg>,
    /// The trunk whose channel this call holds (given back when the call ends, also by a
    /// restarted actor).
    trunk: Option<Arc<str>>,
    /// Set when the call's media is anchored (the relay session is found by the A-leg
    /// Call-ID, also by a restarted actor).
    media: Option<super::router::MediaPolicy>,
}

/// A call through a trunk group: the trunks still to try, the attempt in progress, and the
/// causes of the ones given up (for the CDR).
struct TrunkLeg {
    plan: std::collections::VecDeque<Arc<TrunkShared>>,
    /// Trunks marked down, tried only when every trunk in `plan` failed.
    last_resort: std::collections::VecDeque<Arc<TrunkShared>>,
    attempts: Vec<String>,
    current: Option<TrunkAttempt>,
}

struct TrunkAttempt {
    trunk: Arc<TrunkShared>,
    tx: u32,
    /// The INVITE was resent with credentials after a 401/407 (once per attempt).
    authenticated: bool,
    sent: Instant,
    responded: bool,
    pdd_ms: Option<u64>,
    answered_at: Option<Instant>,
}

#[derive(Clone, Debug, Default)]
struct CdrDraft {
    start_ms: i64,
    ringing_ms: Option<i64>,
    answer_ms: Option<i64>,
    end_ms: Option<i64>,
    caller: String,
    callee: String,
    route: String,
    target: String,
    final_status: u16,
    hangup_by: Option<HangupBy>,
    reason: String,
    /// Trunk attempts in order, `trunk:cause` (e.g. `a:503,b:timeout,c:answered`).
    attempts: Option<String>,
    /// DTMF digits detected (both legs).
    dtmf: String,
    /// The call's recording, if any.
    recording: Option<String>,
    /// Legs A and B at the end of an anchored call.
    quality: Option<[crate::media::quality::LegQuality; 2]>,
}

/// What a transaction is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// The caller's INVITE (server).
    AInvite,
    /// Click-to-call: our INVITE to the agent's phone (client).
    AOriginate,
    /// Our INVITE to the callee (client).
    BInvite,
    /// Our CANCEL of the B-leg INVITE.
    BCancel,
    /// A request relayed between legs; `peer` is the transaction on the other leg.
    Relay { peer: u32 },
    /// A request we originated whose answer needs no relay (BYE on hangup by the switch).
    Own,
    /// A request answered here (CANCEL's 200, 481, ...).
    Local,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leg {
    A,
    B,
}

struct Tx {
    id: u32,
    leg: Leg,
    role: Role,
    fsm: Transaction,
    /// Server: the top Via branch of the request; client: our branch.
    branch: Bytes,
    method: Method,
    /// Server: the request received; client: the request sent.
    /// Shared with the checkpoint for the INVITEs (a header Vec is ~1 KB per copy).
    request: Arc<Message>,
    /// Client: the request's bytes for retransmission.
    request_bytes: Bytes,
    /// Server: the response being handed to the machine / the last one sent.
    pending: Option<Bytes>,
    last_response: Option<Bytes>,
    /// Server: where responses go; client: where the request goes.
    dest: Dest,
    timers: [Option<TimerId>; 12],
    is_client: bool,
    /// A CANCEL was sent for this (B-leg INVITE) transaction.
    cancelled: bool,
    /// Client re-INVITE relayed between legs: the ACK we sent for its 2xx (resent when the
    /// 2xx is retransmitted).
    ack: Option<Bytes>,
    /// Client re-INVITE without an offer: its 2xx carried the offer, so the answer comes in
    /// the other leg's ACK, which we wait for before ACKing (end to end).
    ack_due: bool,
    /// Server re-INVITE over UDP answered 2xx: its retransmission timer, interval and start.
    resend: Option<(TimerId, Duration, Instant)>,
}

impl Tx {
    /// Whether the transaction has its final answer: a server transaction sent a final
    /// response, a client transaction received one. A settled transaction only absorbs
    /// retransmissions from here on.
    fn settled(&self) -> bool {
        use crate::sip::transaction::{ClientInviteState as CI, ClientNonInviteState as CN};
        match &self.fsm {
            // Completed (a failure answer) must go on ACKing the callee's retransmissions of
            // it, which a retired slot does not do: such calls keep their actor for Timer D.
            Transaction::ClientInvite(c) => matches!(c.state(), CI::Accepted | CI::Terminated),
            Transaction::ClientNonInvite(c) => matches!(c.state(), CN::Completed | CN::Terminated),
            Transaction::ServerInvite(_) | Transaction::ServerNonInvite(_) => {
                self.resend.is_none()
                    && self
                        .last_response
                        .as_ref()
                        .is_some_and(|r| r.len() > 8 && r[8] != b'1')
            }
        }
    }
}

/// The state of a call actor.
pub struct CallState {
    ctx: Arc<CallContext>,
    myself: ActorRef<CallMsg>,
    core: Option<Checkpoint>,
    txs: Vec<Tx>,
    next_tx: u32,
    no_answer: Option<TimerId>,
    max_duration: Option<TimerId>,
    resend_2xx: Option<(TimerId, Bytes, Duration, Instant)>,
    /// The caller cancelled before the B leg had a provisional: CANCEL it when one comes.
    cancel_pending: bool,
    /// The caller's Reason for cancelling (e.g. "answered elsewhere"), carried on the B
    /// leg's CANCEL so the callee's phone does not show a missed call for it.
    cancel_reason: Option<Bytes>,
    /// To tags of B-leg forks whose 2xx came after the answer and that were ended.
    ended_forks: Vec<Bytes>,
    received_at: Instant,
    restored: bool,
    /// Handed to the router's retired slot; draining the last messages.
    retired: bool,
    /// The B-leg INVITE transaction (fork) whose response is being handled.
    fork_tx: Option<u32>,
    /// The best failure among forks that failed while others were still ringing.
    best_failure: Option<Message>,
    /// The forks of the current queue offer (empty when none rings).
    offer_forks: Vec<OfferFork>,
    /// B-leg INVITE transactions of earlier offers: their late answers are cancelled or
    /// ended, never relayed.
    stale_forks: Vec<u32>,
    /// B-leg Call-IDs of earlier offers (retired with the call).
    old_b_ids: Vec<Bytes>,
    keepalive: Option<TimerId>,
    trunk_leg: Option<TrunkLeg>,
    invite_timer: Option<TimerId>,
    /// Click-to-call: the agent side, and the route to the customer until it is used.
    orig: Option<Originated>,
    orig_route: Option<Route>,
    /// The agent reserved for this click-to-call, told how its call goes.
    orig_agent: Option<(Arc<str>, Arc<str>)>,
    /// Offers of this call already reported over (a restarted agent asking about one gets
    /// its outcome; one never seen may still be on its way).
    ended_offers: Vec<u64>,
    /// The relay session of an anchored call.
    session: Option<Arc<crate::media::relay::Session>>,
    /// The next position announcement to a caller waiting with music.
    announce: Option<TimerId>,
    /// While the CDR's commit is awaited: what waits for it (see [`AfterCdr`]).
    after_cdr: Option<Vec<AfterCdr>>,
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
        let mut state = CallState {
            ctx: args.ctx,
            myself: myself.clone(),
            core: None,
            txs: Vec::with_capacity(4),
            next_tx: 1,
            no_answer: None,
            max_duration: None,
            resend_2xx: None,
            cancel_pending: false,
            cancel_reason: None,
            ended_forks: Vec::new(),
            received_at: Instant::now(),
            restored: false,
            retired: false,
            fork_tx: None,
            best_failure: None,
            offer_forks: Vec::new(),
            stale_forks: Vec::new(),
            old_b_ids: Vec::new(),
            keepalive: None,
            trunk_leg: None,
            invite_timer: None,
            orig: None,
            orig_route: None,
            orig_agent: None,
            ended_offers: Vec::new(),
            session: None,
            announce: None,
            after_cdr: None,
        };
        match args.init {
            CallInit::New(call) => {
                metrics::counter!(CALL_ATTEMPTS).increment(1);
                state.ctx.set_active_gauge();
                state.begin(*call);
            }
            CallInit::Restore(cp) => state.restore(*cp),
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
        match msg {
            CallMsg::Sip(inbound) => state.on_sip(*inbound),
            CallMsg::TxTimerFired { tx, timer, id } => state.on_tx_timer(tx, timer, id),
            CallMsg::CallTimerFired(timer, id) => state.on_call_timer(timer, id),
            CallMsg::Hangup(reason) => state.hangup_both(HangupBy::System, &reason),
            CallMsg::GetInfo(reply) => {
                let info = CallInfo {
                    phase: state.core.as_ref().map(|c| c.phase).unwrap_or(Phase::Ended),
                    a_call_id: state
                        .core
                        .as_ref()
                        .map(|c| c.a_call_id.clone())
                        .unwrap_or_default(),
                    b_call_id: state
                        .core
                        .as_ref()
                        .map(|c| c.b_call_id.clone())
                        .unwrap_or_default(),
                    transactions: state.txs.len(),
                    restored: state.restored,
                    dtmf: state
                        .core
                        .as_ref()
                        .map(|c| c.cdr.dtmf.clone())
                        .unwrap_or_default(),
                    anchored: state.session.is_some(),
                };
                let _ = reply.send(info);
            }
            CallMsg::InjectPanic => panic!("injected fault"),
            CallMsg::Offer(offer) => state.on_offer(*offer),
            CallMsg::QueueOverflow(target) => state.on_overflow(target),
            CallMsg::QueueResync => state.on_queue_resync(),
            CallMsg::AgentResync { agent, offer } => state.on_agent_resync(agent, offer),
            CallMsg::Dtmf {
                side,
                digit,
                source,
            } => state.on_dtmf(side, digit, source),
            CallMsg::MediaTimeout => state.on_media_timeout(),
            CallMsg::QueuePosition {
                position,
                wait_secs,
            } => state.on_position(position, wait_secs),
            CallMsg::Recording(cmd, reply) => {
                let _ = reply.send(state.recording_command(cmd));
            }
            CallMsg::CdrStored(_) => state.cdr_stored(),
        }
        state.sweep();
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<CallMsg>,
        state: &mut CallState,
    ) -> Result<(), ActorProcessingErr> {
        for tx in state.txs.drain(..) {
            let resend = tx.resend.map(|r| r.0);
            for id in tx.timers.into_iter().chain([resend]).flatten() {
                state.ctx.timers.cancel(id);
            }
            metrics::gauge!(TRANSACTIONS_ACTIVE).decrement(1.0);
        }
        for id in [state.no_answer.take(), state.max_duration.take()]
            .into_iter()
            .flatten()
        {
            state.ctx.timers.cancel(id);
        }
        if let Some((id, ..)) = state.resend_2xx.take() {
            state.ctx.timers.cancel(id);
        }
        for id in [state.keepalive.take(), state.announce.take()]
            .into_iter()
            .flatten()
        {
            state.ctx.timers.cancel(id);
        }
        for id in &state.old_b_ids {
            state.ctx.directory.unregister(id, &myself);
        }
        if let Some(core) = &state.core {
            state.ctx.directory.unregister(&core.a_call_id, &myself);
            state.ctx.directory.unregister(&core.b_call_id, &myself);
            state.ctx.checkpoints.remove(&core.a_call_id);
        }
        Ok(())
    }
}

impl CallState {
    fn core(&mut self) -> &mut Checkpoint {
        self.core.as_mut().expect("call state")
    }

    // ---- start and restore ----

    fn begin(&mut self, call: NewCall) {
        let NewCall {
            invite,
            route,
            dialled,
            forks,
            queue,
            originate,
        } = call;
        let Inbound {
            msg: a_invite,
            source,
        } = invite;
        let ctx = self.ctx.clone();
        let a_call_id = a_invite.call_id().cloned().unwrap_or_default();
        let from = a_invite.from().expect("validated");
        let to = a_invite.to().expect("validated");
        let a_contact = a_invite
            .contacts()
            .next()
            .map(|c| c.uri)
            .unwrap_or_else(|| from.uri.clone());
        let a = Dialog {
            call_id: a_call_id.clone(),
            local_tag: random_token(10),
            remote_tag: from.tag().unwrap_or_default(),
            local_uri: dialog::without_tag(&to),
            remote_uri: dialog::without_tag(&from),
            remote_target: a_contact,
            route_set: a_invite.values(HeaderName::RecordRoute).collect(),
            local_cseq: 0,
            remote_cseq: a_invite.cseq().map(|c| c.seq),
        };
        let caller = String::from_utf8_lossy(&from.uri).into_owned();
        let callee = String::from_utf8_lossy(&dialled).into_owned();
        if let Some(o) = originate {
            self.orig_agent = o.agent;
            return self.begin_originate(a_invite, source, a, route, dialled, forks, caller);
        }
        let a_invite = Arc::new(a_invite);
        let a_branch = a_invite
            .top_via()
            .and_then(|v| v.branch())
            .unwrap_or_default();
        let a_dest = ctx
            .transports()
            .response_dest(&source, a_invite.top_via().as_ref());
        let cdr = CdrDraft {
            start_ms: now_unix_ms(),
            caller,
            callee,
            route: route.prefix.clone(),
            target: route.target_text.clone(),
            ..CdrDraft::default()
        };
        if queue.is_some() || route.group.is_some() {
            // Queued: no B leg until the queue offers an agent. Through a trunk group: the
            // B leg goes to the first trunk of the call's plan, then the next on failover.
            let b = pending_b_dialog();
            self.core = Some(Checkpoint {
                phase: if queue.is_some() {
                    Phase::Queued
                } else {
                    Phase::Setup
                },
                a_call_id: a_call_id.clone(),
                b_call_id: Bytes::new(),
                a_invite: a_invite.clone(),
                a_source: source,
                b_invite: Arc::new(Message::request(
                    Method::Invite,
                    Bytes::from_static(b"sip:queued"),
                )),
                b_dest: Dest {
                    protocol: source.protocol,
                    addr: source.remote,
                    conn: None,
                },
                a,
                b,
                cdr,
                b_ack: None,
                ended: false,
                queue: queue.map(|join| QueueLeg {
                    tenant: join.tenant,
                    queue: join.queue,
                    priority: join.priority,
                    joined_ms: now_unix_ms() as u64,
                    agent: None,
                    answered_offer: None,
                    wait_ms: None,
                    abandoned: false,
                    waiting: true,
                }),
                trunk: None,
                media: None,
            });
            let anchored = self.anchor_media(&a_invite, &a_call_id, &route.media);
            let queued = self.ctx.directory.register(a_call_id, self.myself.clone());
            self.new_server_tx(Leg::A, Role::AInvite, a_invite, a_branch, a_dest);
            if !self.media_settled(anchored) {
                return;
            }
            if let Some(group) = &route.group {
                let plan = group.plan(&route.prefix, &String::from_utf8_lossy(&dialled));
                self.trunk_leg = Some(TrunkLeg {
                    plan: plan.order.into(),
                    last_resort: plan.last_resort.into(),
                    attempts: plan.skipped,
                    current: None,
                });
                self.next_trunk();
                for inbound in queued {
                    self.on_sip(inbound);
                }
                return;
            }
            // The caller hears ringing while it waits, or (a queue that answers first) is
            // answered and hears music and its position.
            match self.answer_first() {
                Some(ok) => self.answer_a(ok),
                None => {
                    let ringing = self.a_response(180, "Ringing", true);
                    self.respond_a_invite(ringing);
                }
            }
            self.core().cdr.ringing_ms = Some(now_unix_ms());
            metrics::histogram!(CALL_SETUP, "stage" => "ringing")
                .record(self.received_at.elapsed().as_secs_f64());
            self.join_queue();
            for inbound in queued {
                self.on_sip(inbound);
            }
            return;
        }
        // The B leg: its own Call-ID, tags and CSeq; SDP passed through unchanged.
        let b_dest = match forks.first() {
            Some(f) => f.dest,
            None => Dest {
                protocol: route.target.protocol,
                addr: route.target.addr,
                conn: None,
            },
        };
        let target = route.target.addr;
        let ruri = match forks.first() {
            Some(f) => f.ruri.clone(),
            None => Bytes::from(format!(
                "sip:{}@{}{}",
                String::from_utf8_lossy(&dialled),
                target,
                b_dest.protocol.uri_param()
            )),
        };
        let anchored = self.anchor_media(&a_invite, &a_call_id, &route.media);
        let (b, b_invite, branch) = self.b_leg(&a_invite, &dialled, ruri, b_dest, target);
        let b_call_id = b.call_id.clone();
        let b_invite = Arc::new(b_invite);
        self.core = Some(Checkpoint {
            phase: Phase::Setup,
            a_call_id: a_call_id.clone(),
            b_call_id: b_call_id.clone(),
            a_invite: a_invite.clone(),
            a_source: source,
            b_invite: b_invite.clone(),
            b_dest,
            a,
            b,
            cdr,
            b_ack: None,
            ended: false,
            queue: None,
            trunk: None,
            media: None,
        });
        let queued = self.ctx.directory.register(a_call_id, self.myself.clone());
        self.ctx.directory.register(b_call_id, self.myself.clone());

        // The caller's INVITE server transaction answers 100 Trying at once.
        self.new_server_tx(Leg::A, Role::AInvite, a_invite, a_branch, a_dest);
        if !self.media_settled(anchored) {
            return;
        }
        let mut ids = self.send_forks(&b_invite, &forks);
        ids.push(self.new_client_tx(Leg::B, Role::BInvite, b_invite, branch, b_dest));
        self.no_answer = Some(self.schedule_call_timer(CallTimer::NoAnswer, self.ctx.no_answer));
        for inbound in queued {
            self.on_sip(inbound);
        }
    }

    /// The other forks of a B-leg INVITE: the same INVITE (same Call-ID and From tag, like
    /// a forking proxy's branches) to each contact after the first, each its own
    /// transaction. Returns their transaction ids.
    fn send_forks(&mut self, b_invite: &Message, forks: &[Fork]) -> Vec<u32> {
        let mut ids = Vec::with_capacity(forks.len());
        for fork in forks.iter().skip(1) {
            ids.push(self.send_fork(b_invite, fork));
        }
        ids
    }

    fn send_fork(&mut self, b_invite: &Message, fork: &Fork) -> u32 {
        let mut inv = b_invite.clone();
        inv.start = crate::sip::message::StartLine::Request {
            method: Method::Invite,
            uri: fork.ruri.clone(),
        };
        let fork_branch = new_branch();
        inv.set(
            HeaderName::Via,
            self.ctx.via(fork.dest.protocol, &fork_branch),
        );
        inv.set(HeaderName::Contact, self.ctx.contact(fork.dest.protocol));
        self.new_client_tx(Leg::B, Role::BInvite, Arc::new(inv), fork_branch, fork.dest)
    }

    /// A B-leg dialog and its INVITE (own Call-ID, tags and CSeq; SDP passed through).
    fn b_leg(
        &self,
        a_invite: &Message,
        dialled: &[u8],
        ruri: Bytes,
        b_dest: Dest,
        target: std::net::SocketAddr,
    ) -> (Dialog, Message, Bytes) {
        let ctx = &self.ctx;
        let from = a_invite.from().expect("validated");
        let to = a_invite.to().expect("validated");
        let b_protocol = b_dest.protocol;
        let (host, _) = ctx.sent_by(b_protocol);
        let b_call_id = {
            let mut v = BytesMut::with_capacity(40);
            v.put_slice(&random_token(20));
            v.put_u8(b'@');
            v.put_slice(host.as_bytes());
            v.freeze()
        };
        let to_uri = to.parsed_uri().ok();
        let b_remote_uri = match to_uri {
            Some(u) if u.user.is_some() => dialog::without_tag(&to),
            _ => Bytes::from(format!(
                "<sip:{}@{}>",
                String::from_utf8_lossy(dialled),
                target.ip()
            )),
        };
        let b = Dialog {
            call_id: b_call_id.clone(),
            local_tag: random_token(10),
            remote_tag: Bytes::new(),
            local_uri: dialog::without_tag(&from),
            remote_uri: b_remote_uri,
            remote_target: ruri.clone(),
            route_set: Vec::new(),
            local_cseq: 1,
            remote_cseq: None,
        };
        let branch = new_branch();
        let mut b_invite = Message::request(Method::Invite, ruri);
        b_invite.push(HeaderName::Via, ctx.via(b_protocol, &branch));
        let mf = a_invite.max_forwards().unwrap_or(70).saturating_sub(1);
        b_invite.push(
            HeaderName::MaxForwards,
            itoa::Buffer::new().format(mf).to_owned(),
        );
        b_invite.push(
            HeaderName::From,
            dialog::with_tag(&b.local_uri, &b.local_tag),
        );
        b_invite.push(HeaderName::To, b.remote_uri.clone());
        b_invite.push(HeaderName::CallId, b_call_id);
        b_invite.push(HeaderName::CSeq, cseq_value(1, &Method::Invite));
        b_invite.push(HeaderName::Contact, ctx.contact(b_protocol));
        b_invite.push(HeaderName::Allow, super::router::ALLOW);
        b_invite.push(HeaderName::UserAgent, ctx.user_agent.clone());
        if let Some(v) = a_invite.value(HeaderName::ContentType) {
            b_invite.push(HeaderName::ContentType, v.clone());
        }
        copy_extensions(a_invite, &mut b_invite);
        b_invite.body = self.b_offer(&a_invite.body);
        if self.a_answered() {
            b_invite.set(HeaderName::ContentType, "application/sdp");
        }
        (b, b_invite, branch)
    }

    /// Click-to-call, first half: ring the agent. The customer is called when it answers
    /// ([`CallState::agent_answered`]).
    #[allow(clippy::too_many_arguments)]
    fn begin_originate(
        &mut self,
        a_invite: Message,
        source: Source,
        mut a: Dialog,
        route: Route,
        dialled: Bytes,
        forks: Vec<Fork>,
        caller: String,
    ) {
        let a_call_id = a.call_id.clone();
        // We are the agent leg's UAC: our tag is its From tag, the agent's comes in its 2xx.
        a.local_uri = dialog::without_tag(&a_invite.to().expect("built"));
        a.remote_uri = dialog::without_tag(&a_invite.from().expect("built"));
        a.remote_tag = Bytes::new();
        a.local_cseq = 1;
        a.remote_cseq = None;
        let a_invite = Arc::new(a_invite);
        let b = pending_b_dialog();
        self.core = Some(Checkpoint {
            phase: Phase::Setup,
            a_call_id: a_call_id.clone(),
            b_call_id: Bytes::new(),
            a_invite: a_invite.clone(),
            a_source: source,
            b_invite: Arc::new(Message::request(
                Method::Invite,
                Bytes::from_static(b"sip:pending"),
            )),
            b_dest: Dest {
                protocol: source.protocol,
                addr: source.remote,
                conn: None,
            },
            a,
            b,
            cdr: CdrDraft {
                start_ms: now_unix_ms(),
                caller,
                callee: String::from_utf8_lossy(&dialled).into_owned(),
                route: route.prefix.clone(),
                target: route.target_text.clone(),
                ..CdrDraft::default()
            },
            b_ack: None,
            ended: false,
            queue: None,
            trunk: None,
            media: None,
        });
        self.orig_route = Some(route);
        self.orig = Some(Originated {
            answered: false,
            ack: None,
        });
        let queued = self.ctx.directory.register(a_call_id, self.myself.clone());
        self.checkpoint();
        for fork in &forks {
            let (local_uri, local_tag) = {
                let a = &self.core().a;
                (a.local_uri.clone(), a.local_tag.clone())
            };
            let mut inv = Message::request(Method::Invite, fork.ruri.clone());
            let branch = new_branch();
            inv.push(HeaderName::Via, self.ctx.via(fork.dest.protocol, &branch));
            inv.push(HeaderName::MaxForwards, "70");
            inv.push(HeaderName::From, dialog::with_tag(&local_uri, &local_tag));
            inv.push(HeaderName::To, self.core().a.remote_uri.clone());
            inv.push(HeaderName::CallId, self.core().a_call_id.clone());
            inv.push(HeaderName::CSeq, cseq_value(1, &Method::Invite));
            inv.push(HeaderName::Contact, self.ctx.contact(fork.dest.protocol));
            inv.push(HeaderName::Allow, super::router::ALLOW);
            inv.push(HeaderName::UserAgent, self.ctx.user_agent.clone());
            self.new_client_tx(Leg::A, Role::AOriginate, inv, branch, fork.dest);
        }
        self.no_answer = Some(self.schedule_call_timer(CallTimer::NoAnswer, self.ctx.no_answer));
        for inbound in queued {
            self.on_sip(inbound);
        }
    }

    /// A response from an agent's phone to our click-to-call INVITE.
    fn agent_response(&mut self, id: u32, resp: &Message, status: u16) {
        let answered = self.orig.as_ref().is_some_and(|o| o.answered);
        if answered {
            if (200..300).contains(&status) {
                // Our ACK was lost (or another phone answered too): ACK again.
                if let Some(ack) = self.orig.as_ref().and_then(|o| o.ack.clone()) {
                    let (_, dest) = self.leg_dest(Leg::A);
                    self.ctx.transports().send(dest, ack);
                }
            }
            return;
        }
        match status {
            100..=199 => {}
            200..=299 => self.agent_answered(id, resp),
            _ => {
                let others = self.txs.iter().any(|t| {
                    t.role == Role::AOriginate
                        && t.id != id
                        && !t.settled()
                        && !t.fsm.is_terminated()
                });
                if !others {
                    self.cancel_no_answer();
                    self.end(
                        status,
                        HangupBy::Callee,
                        &format!("agent answered {status}"),
                    );
                }
            }
        }
    }

    /// Click-to-call, second half: the agent answered with its offer; call the customer.
    fn agent_answered(&mut self, id: u32, resp: &Message) {
        self.cancel_no_answer();
        if let Some(o) = self.orig.as_mut() {
            o.answered = true;
        }
        self.tell_orig_agent(crate::actors::agent::OfferOutcome::Answered);
        let dest = self.txs.iter().find(|t| t.id == id).map(|t| t.dest);
        let tag = resp.to().and_then(|t| t.tag()).unwrap_or_default();
        let target = resp.contacts().next().map(|c| c.uri);
        let routes: Vec<Bytes> = resp.values(HeaderName::RecordRoute).collect();
        {
            let core = self.core();
            core.a.remote_tag = tag.clone();
            if let Some(t) = target {
                core.a.remote_target = t;
            }
            core.a.route_set = routes.into_iter().rev().collect();
            if let Some(d) = dest {
                core.a_source.protocol = d.protocol;
                core.a_source.remote = d.addr;
                core.a_source.conn = d.conn;
            }
            // The agent's side now carries its offer, as an INVITE from it would have.
            let mut inv = (*core.a_invite).clone();
            inv.set(HeaderName::From, dialog::with_tag(&core.a.remote_uri, &tag));
            if let Some(ct) = resp.value(HeaderName::ContentType) {
                inv.set(HeaderName::ContentType, ct.clone());
            }
            inv.body = resp.body.clone();
            core.a_invite = Arc::new(inv);
        }
        // Other phones of the agent that still ring are cancelled.
        let ringing: Vec<u32> = self
            .txs
            .iter()
            .filter(|t| t.role == Role::AOriginate && t.id != id && !t.settled())
            .map(|t| t.id)
            .collect();
        for t in ringing {
            if let Some(tx) = self.txs.iter_mut().find(|x| x.id == t) {
                let cancel = cancel_for(&tx.request);
                let dest = tx.dest;
                tx.cancelled = true;
                self.new_client_tx(Leg::A, Role::Own, cancel, Bytes::new(), dest);
            }
        }
        self.checkpoint();
        let Some(route) = self.orig_route.take() else {
            return;
        };
        let dialled = Bytes::from(self.core().cdr.callee.clone());
        match &route.group {
            Some(group) => {
                let plan = group.plan(&route.prefix, &String::from_utf8_lossy(&dialled));
                self.trunk_leg = Some(TrunkLeg {
                    plan: plan.order.into(),
                    last_resort: plan.last_resort.into(),
                    attempts: plan.skipped,
                    current: None,
                });
                self.next_trunk();
            }
            None => {
                let fork = Fork {
                    ruri: Bytes::from(format!(
                        "sip:{}@{}{}",
                        String::from_utf8_lossy(&dialled),
                        route.target.addr,
                        route.target.protocol.uri_param()
                    )),
                    dest: Dest {
                        protocol: route.target.protocol,
                        addr: route.target.addr,
                        conn: None,
                    },
                };
                self.place_b_leg(&[fork], dialled, route.target_text.clone(), None);
                self.no_answer =
                    Some(self.schedule_call_timer(CallTimer::NoAnswer, self.ctx.no_answer));
            }
        }
        metrics::histogram!(CLICK_TO_CALL, "stage" => "customer_invite")
            .record(self.received_at.elapsed().as_secs_f64());
    }

    /// Tells the click-to-call's agent how its phone's leg went.
    fn tell_orig_agent(&self, outcome: crate::actors::agent::OfferOutcome) {
        use crate::actors::agent::{self, AgentMsg, OUTBOUND_OFFER};
        let (Some((tenant, id)), Some(cc)) = (&self.orig_agent, self.cc()) else {
            return;
        };
        if let Some(core) = self.core.as_ref() {
            let call_id: Arc<str> = Arc::from(String::from_utf8_lossy(&core.a_call_id).as_ref());
            if outcome == crate::actors::agent::OfferOutcome::Answered {
                let call = agent::AgentCall {
                    call_id,
                    queue: Arc::from(agent::OUTBOUND_QUEUE),
                    offer: OUTBOUND_OFFER,
                    answered: true,
                };
                agent::note_call(&cc.agent_calls, tenant, id, call);
            } else {
                agent::forget_call(&cc.agent_calls, tenant, id, &call_id);
            }
        }
        agent::tell(
            &cc,
            tenant,
            id,
            AgentMsg::OfferEnded {
                offer: OUTBOUND_OFFER,
                outcome,
            },
        );
    }

    /// At the end of a click-to-call: the agent is told the call is over (or that its phone
    /// never answered).
    fn orig_call_ended(&mut self, final_status: u16) {
        use crate::actors::agent::{self, AgentMsg, OfferOutcome};
        let Some(answered) = self.orig.as_ref().map(|o| o.answered) else {
            return;
        };
        if !answered {
            return self.tell_orig_agent(OfferOutcome::from_status(final_status, false));
        }
        let (Some((tenant, id)), Some(cc)) = (self.orig_agent.clone(), self.cc()) else {
            return;
        };
        let call_id = self.a_call_id_str();
        agent::forget_call(&cc.agent_calls, &tenant, &id, &call_id);
        agent::tell(&cc, &tenant, &id, AgentMsg::CallEnded { call_id });
    }

    /// What the caller would have been told, for a click-to-call: the agent's 2xx is ACKed
    /// with the customer's answer (or, if the customer failed, ACKed and hung up).
    fn originated_answer(&mut self, resp: &Message) {
        let answered = self.orig.as_ref().is_some_and(|o| o.answered);
        let status = resp.status().unwrap_or(0);
        if status < 200 {
            return;
        }
        if !answered {
            // The agent never answered: stop ringing its phones.
            let ringing: Vec<(u32, Arc<Message>, Dest)> = self
                .txs
                .iter()
                .filter(|t| t.role == Role::AOriginate && !t.settled() && !t.cancelled)
                .map(|t| (t.id, t.request.clone(), t.dest))
                .collect();
            for (id, req, dest) in ringing {
                if let Some(t) = self.txs.iter_mut().find(|t| t.id == id) {
                    t.cancelled = true;
                }
                self.new_client_tx(Leg::A, Role::Own, cancel_for(&req), Bytes::new(), dest);
            }
            return;
        }
        if self.orig.as_ref().is_some_and(|o| o.ack.is_some()) {
            return;
        }
        let (body, ct) = if (200..300).contains(&status) {
            (
                resp.body.clone(),
                resp.value(HeaderName::ContentType).cloned(),
            )
        } else {
            (Bytes::new(), None)
        };
        let ack = self.send_ack(Leg::A, 1, body, ct);
        if let Some(o) = self.orig.as_mut() {
            o.ack = Some(ack);
        }
        if status >= 300 {
            self.send_bye(Leg::A);
        }
    }

    fn restore(&mut self, cp: Checkpoint) {
        let phase = cp.phase;
        metrics::counter!(CALLS_RESTORED, "phase" => phase.label()).increment(1);
        tracing::info!(call_id = %String::from_utf8_lossy(&cp.a_call_id), phase = phase.label(), "call restored from checkpoint");
        self.restored = true;
        self.ctx
            .directory
            .register(cp.a_call_id.clone(), self.myself.clone());
        if !cp.b_call_id.is_empty() {
            self.ctx
                .directory
                .register(cp.b_call_id.clone(), self.myself.clone());
        }
        self.core = Some(cp);
        self.reattach_media();
        let waiting = self.queue_waiting();
        if self.a_answered()
            && waiting
            && matches!(phase, Phase::Queued | Phase::Setup | Phase::Early)
        {
            // A caller the switch answered keeps its call: a ringing agent's offer is
            // withdrawn (its transaction died with the actor) and the caller waits again,
            // in its place, with music.
            if phase != Phase::Queued {
                let cancel = cancel_for(&self.core().b_invite);
                let dest = self.core().b_dest;
                self.new_client_tx(Leg::B, Role::BCancel, cancel, Bytes::new(), dest);
            }
            self.play_music(None);
            return self.back_to_queue();
        }
        match phase {
            Phase::Queued => {
                let resp = self.a_response(500, "Server Internal Error (Call Restarted)", false);
                let (source, via) = (self.core().a_source, self.core().a_invite.top_via());
                self.ctx.transports().send_message(
                    self.ctx.transports().response_dest(&source, via.as_ref()),
                    &resp,
                );
                self.end(500, HangupBy::System, "restarted while queued");
            }
            Phase::Setup | Phase::Early => {
                // Transactions in flight are lost with the actor: end both legs cleanly.
                let cancel = cancel_for(&self.core().b_invite);
                let dest = self.core().b_dest;
                self.new_client_tx(Leg::B, Role::BCancel, cancel, Bytes::new(), dest);
                let resp = self.a_response(500, "Server Internal Error (Call Restarted)", false);
                let (source, via) = (self.core().a_source, self.core().a_invite.top_via());
                self.ctx.transports().send_message(
                    self.ctx.transports().response_dest(&source, via.as_ref()),
                    &resp,
                );
                self.end(500, HangupBy::System, "restarted during setup");
            }
            Phase::Answered | Phase::Confirmed => {
                if phase == Phase::Answered {
                    self.ack_b(Bytes::new(), None);
                    self.core().phase = Phase::Confirmed;
                }
                if let Some(max) = self.ctx.max_duration {
                    let answered = self.core().cdr.answer_ms.unwrap_or_else(now_unix_ms);
                    let elapsed = Duration::from_millis((now_unix_ms() - answered).max(0) as u64);
                    let left = max.saturating_sub(elapsed);
                    self.max_duration =
                        Some(self.schedule_call_timer(CallTimer::MaxDuration, left));
                }
                self.checkpoint();
            }
            Phase::Ended => {
                // Died while its hangup waited for the CDR's commit (the CDR is with the
                // writer): the channel is all that is left to give back.
                self.release_trunk_channel();
                self.checkpoint();
            }
        }
    }

    fn checkpoint(&mut self) {
        if let Some(core) = &self.core {
            // An ended call is kept while its hangup waits for the CDR (its trunk channel is
            // still held), so a restarted actor can give the channel back.
            if core.phase == Phase::Ended && self.after_cdr.is_none() {
                self.ctx.checkpoints.remove(&core.a_call_id);
            } else {
                self.ctx
                    .checkpoints
                    .insert(core.a_call_id.clone(), core.clone());
            }
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        if self.core().phase != phase {
            self.core().phase = phase;
            self.checkpoint();
        }
    }

    // ---- inbound SIP ----

    fn on_sip(&mut self, inbound: Inbound) {
        if self.core.is_none() {
            return;
        }
        let leg = if inbound.msg.call_id() == Some(&self.core().a_call_id) {
            Leg::A
        } else {
            Leg::B
        };
        if inbound.msg.is_request() {
            self.on_request(leg, inbound);
        } else {
            self.on_response(inbound.msg);
        }
    }

    fn on_response(&mut self, msg: Message) {
        let Some(branch) = msg.top_via().and_then(|v| v.branch()) else {
            return;
        };
        let Some(method) = msg.cseq().map(|c| c.method) else {
            return;
        };
        let Some(idx) = self
            .txs
            .iter()
            .position(|t| t.is_client && t.branch == branch && t.method == method)
        else {
            metrics::counter!(super::router::STRAY, "kind" => "response").increment(1);
            return;
        };
        let status = msg.status().unwrap_or(0);
        let id = self.txs[idx].id;
        let actions = self.txs[idx]
            .fsm
            .step(Event::ReceivedResponse { status }, &self.ctx.timer_cfg);
        self.execute(id, &actions, Some(&msg));
    }

    fn on_request(&mut self, leg: Leg, inbound: Inbound) {
        let Inbound { msg, source } = inbound;
        let method = msg.method().cloned().expect("request");
        let branch = msg.top_via().and_then(|v| v.branch()).unwrap_or_default();
        // A CANCEL matches the INVITE server transaction with the same branch.
        if method == Method::Cancel {
            return self.on_cancel(leg, msg, source, branch);
        }
        if method == Method::Ack {
            return self.on_ack(leg, msg, branch);
        }
        // A retransmission of a request we have a server transaction for.
        if let Some(idx) = self
            .txs
            .iter()
            .position(|t| !t.is_client && t.branch == branch && t.method == method && t.leg == leg)
        {
            let id = self.txs[idx].id;
            let actions = self.txs[idx]
                .fsm
                .step(Event::ReceivedRequest, &self.ctx.timer_cfg);
            return self.execute(id, &actions, None);
        }
        // A new request inside a dialog: its To tag must be ours on that leg.
        let to_tag = msg.to().and_then(|t| t.tag()).unwrap_or_default();
        let ours = match leg {
            Leg::A => self.core().a.local_tag.clone(),
            Leg::B => self.core().b.local_tag.clone(),
        };
        let dest = self
            .ctx
            .transports()
            .response_dest(&source, msg.top_via().as_ref());
        if to_tag == ours && method == Method::Bye && self.core().phase == Phase::Ended {
            // Crossing BYEs (both ends hung up at once): the dialog is ending as this end
            // asks, so it gets 200, not a 481 it might log as an error.
            let id = self.new_server_tx(leg, Role::Local, msg, branch, dest);
            return self.respond(id, 200, "OK", None);
        }
        if to_tag != ours || self.core().phase == Phase::Ended {
            metrics::counter!(DIALOG_481).increment(1);
            let id = self.new_server_tx(leg, Role::Local, msg, branch, dest);
            return self.respond(id, 481, "Call/Transaction Does Not Exist", None);
        }
        let cseq = msg.cseq().map(|c| c.seq).unwrap_or(0);
        let dialog = match leg {
            Leg::A => &mut self.core.as_mut().expect("core").a,
            Leg::B => &mut self.core.as_mut().expect("core").b,
        };
        if dialog.remote_cseq.is_some_and(|r| cseq <= r) {
            let id = self.new_server_tx(leg, Role::Local, msg, branch, dest);
            return self.respond(id, 500, "Server Internal Error (CSeq Out of Order)", None);
        }
        dialog.remote_cseq = Some(cseq);
        if method == Method::Invite && self.invite_pending() {
            // Glare (RFC 3261 §14.1, §14.2): one INVITE at a time across the call, both legs
            // included, or the two ends' offers cross and each gets the other's answer.
            let id = self.new_server_tx(leg, Role::Local, msg, branch, dest);
            return self.respond(id, 491, "Request Pending", None);
        }
        if method == Method::Info {
            self.info_dtmf(leg, &msg);
        }
        if leg == Leg::A
            && self.a_answered()
            && matches!(
                self.core().phase,
                Phase::Queued | Phase::Setup | Phase::Early
            )
        {
            // A caller the switch answered, still waiting: nothing to relay its requests to.
            let id = self.new_server_tx(leg, Role::Local, msg, branch, dest);
            return match method {
                Method::Bye => {
                    self.hang_up_answered_caller(HangupBy::Caller, "caller hung up in queue");
                    self.after_cdr(AfterCdr::Respond(id, 200, "OK"));
                }
                Method::Invite | Method::Update => self.respond(id, 491, "Request Pending", None),
                _ => self.respond(id, 200, "OK", None),
            };
        }
        if matches!(method, Method::Invite | Method::Update) {
            // A target refresh (RFC 3261 §12.2.2): later requests go to the new Contact.
            if let Some(c) = msg.contacts().next() {
                self.dialog_mut(leg).remote_target = c.uri;
            }
        }
        if method == Method::Bye && matches!(self.core().phase, Phase::Setup | Phase::Early) {
            // A BYE in an early dialog (RFC 3261 §15). From the caller it ends the call like
            // a CANCEL: its INVITE gets 487 (§15.1.2), which a relayed BYE would never
            // produce, and the B leg is CANCELled. From the callee (which must not send
            // one) it is only acknowledged: B's final answer or the no-answer timer ends
            // the call.
            let reason = msg.value(HeaderName::Reason).cloned();
            let id = self.new_server_tx(leg, Role::Local, msg, branch, dest);
            if leg == Leg::A {
                self.cancel_reason = reason;
                let resp = self.a_response(487, "Request Terminated", false);
                self.respond_a_invite(resp);
                self.cancel_b();
                self.end(487, HangupBy::Caller, "bye before answer");
            }
            return self.after_cdr(AfterCdr::Respond(id, 200, "OK"));
        }
        // Relay to the other leg.
        let server = self.new_server_tx(leg, Role::Local, msg.clone(), branch, dest);
        if method == Method::Bye {
            if self.core().phase == Phase::Answered {
                // A BYE before the caller's ACK. From the caller it proves it has our 2xx
                // (its ACK was lost or is late): stop resending the 2xx. Either way ACK the
                // callee's 2xx now: before the BYE reaches it (it would see a BYE in a dialog
                // it still waits to have confirmed), or so that its 2xx retransmissions do
                // not look like an answer after the end (which gets a second BYE).
                if leg == Leg::A {
                    if let Some((id, ..)) = self.resend_2xx.take() {
                        self.ctx.timers.cancel(id);
                    }
                }
                self.ack_b(Bytes::new(), None);
            }
            let by = if leg == Leg::A {
                HangupBy::Caller
            } else {
                HangupBy::Callee
            };
            self.cancel_call_timers();
            let status = self.core().cdr.final_status.max(200);
            self.end(status, by, "bye");
            return self.after_cdr(AfterCdr::Relay(leg, Box::new(msg), server));
        }
        self.relay_request(leg, &msg, server);
    }

    /// Relays an in-dialog request (server transaction `server`) to the other leg.
    fn relay_request(&mut self, leg: Leg, msg: &Message, server: u32) {
        let method = msg.method().cloned().unwrap_or(Method::Bye);
        let other = if leg == Leg::A { Leg::B } else { Leg::A };
        let mut out = self.in_dialog_request(other, method, msg);
        out.body = msg.body.clone();
        // An offer (re-INVITE, UPDATE) of an anchored call: the switch's address and port.
        self.rewrite_body_of(leg, &mut out, false);
        let (protocol, dest) = self.leg_dest(other);
        let branch = new_branch();
        out.push_front(HeaderName::Via, self.ctx.via(protocol, &branch));
        let client = self.new_client_tx(other, Role::Relay { peer: server }, out, branch, dest);
        if let Some(t) = self.tx_mut(server) {
            t.role = Role::Relay { peer: client };
        }
        // Both dialogs' CSeqs (and maybe a target) moved: a restarted actor must not reuse
        // a CSeq, which the peer would refuse as out of order.
        self.checkpoint();
    }

    fn on_cancel(&mut self, leg: Leg, msg: Message, source: Source, branch: Bytes) {
        let dest = self
            .ctx
            .transports()
            .response_dest(&source, msg.top_via().as_ref());
        let invite = self
            .txs
            .iter()
            .find(|t| {
                !t.is_client && t.leg == leg && t.method == Method::Invite && t.branch == branch
            })
            .map(|t| (t.id, t.role));
        let reason = msg.value(HeaderName::Reason).cloned();
        let id = self.new_server_tx(leg, Role::Local, msg, branch, dest);
        let Some((invite, role)) = invite else {
            return self.respond(id, 481, "Call/Transaction Does Not Exist", None);
        };
        self.respond(id, 200, "OK", None);
        if let Role::Relay { peer } = role {
            return self.cancel_relayed_invite(invite, peer);
        }
        if matches!(
            self.core().phase,
            Phase::Setup | Phase::Early | Phase::Queued
        ) {
            self.cancel_reason = reason;
            self.abandon_queue();
            let resp = self.a_response(487, "Request Terminated", false);
            self.respond_a_invite(resp);
            self.cancel_b();
            self.end(487, HangupBy::Caller, "cancelled");
        }
    }

    /// CANCEL of a re-INVITE we relayed (RFC 3261 §9.2): if it is still unanswered it gets
    /// 487, and the relayed one is CANCELled once it had a provisional (§9.1; without one,
    /// its answer comes and is ACKed, but is not relayed to a transaction that is over).
    fn cancel_relayed_invite(&mut self, server: u32, client: u32) {
        use crate::sip::transaction::{ClientInviteState as C, ServerInviteState as S};
        let unanswered = self.txs.iter().any(|t| {
            t.id == server
                && matches!(&t.fsm, Transaction::ServerInvite(s) if s.state() == S::Proceeding)
        });
        if !unanswered {
            return;
        }
        self.respond(server, 487, "Request Terminated", None);
        let pending = self.txs.iter().find(|t| {
            t.id == client
                && matches!(&t.fsm, Transaction::ClientInvite(c) if c.state() == C::Proceeding)
        });
        if let Some(t) = pending {
            let (leg, dest, cancel) = (t.leg, t.dest, cancel_for(&t.request));
            self.new_client_tx(leg, Role::Own, cancel, Bytes::new(), dest);
        }
    }

    fn on_ack(&mut self, leg: Leg, msg: Message, branch: Bytes) {
        if let Some(idx) = self.txs.iter().position(|t| {
            !t.is_client && t.method == Method::Invite && t.branch == branch && t.leg == leg
        }) {
            let id = self.txs[idx].id;
            let actions = self.txs[idx]
                .fsm
                .step(Event::ReceivedAck, &self.ctx.timer_cfg);
            self.execute(id, &actions, None);
            if self
                .txs
                .iter()
                .find(|t| t.id == id)
                .is_some_and(|t| t.role != Role::AInvite)
            {
                return;
            }
        }
        // The ACK of the caller's 2xx: stop retransmitting it and ACK the callee. The 2xx
        // may still be resent after the call ended (the callee hung up first): that stops
        // here too.
        if leg == Leg::A && msg.cseq().map(|c| c.seq) == self.core().a_invite.cseq().map(|c| c.seq)
        {
            if let Some((id, ..)) = self.resend_2xx.take() {
                self.ctx.timers.cancel(id);
            }
            if self.core().phase == Phase::Answered {
                let ct = msg.content_type().cloned();
                let body = self.rewrite_sdp(Leg::A, &msg.body, true);
                self.ack_b(body, ct);
                self.set_phase(Phase::Confirmed);
            }
            return;
        }
        // The ACK of a relayed re-INVITE's 2xx: stop resending that 2xx, and if the other
        // leg waits for this ACK (delayed offer), relay it with its answer.
        let seq = msg.cseq().map(|c| c.seq);
        let found = self.txs.iter().find_map(|t| match t.role {
            Role::Relay { peer }
                if !t.is_client
                    && t.leg == leg
                    && t.method == Method::Invite
                    && t.request.cseq().map(|c| c.seq) == seq =>
            {
                Some((t.id, peer))
            }
            _ => None,
        });
        let Some((server, peer)) = found else {
            return;
        };
        if let Some((id, ..)) = self.tx_mut(server).and_then(|t| t.resend.take()) {
            self.ctx.timers.cancel(id);
        }
        let Some((peer_leg, peer_seq)) = self
            .txs
            .iter()
            .find(|t| t.id == peer && t.ack_due)
            .map(|t| (t.leg, t.request.cseq().map(|c| c.seq).unwrap_or(1)))
        else {
            return;
        };
        let ct = msg.content_type().cloned();
        let body = self.rewrite_sdp(leg, &msg.body, true);
        let ack = self.send_ack(peer_leg, peer_seq, body, ct);
        if let Some(t) = self.tx_mut(peer) {
            t.ack_due = false;
            t.ack = Some(ack);
        }
    }

    // ---- transactions ----

    /// A server transaction for a request received on `leg`.
    fn new_server_tx(
        &mut self,
        leg: Leg,
        role: Role,
        request: impl Into<Arc<Message>>,
        branch: Bytes,
        dest: Dest,
    ) -> u32 {
        self.new_tx(false, leg, role, request.into(), branch, dest)
    }

    /// A client transaction for a request sent on `leg` (an empty `branch` is read from
    /// the request's top Via).
    fn new_client_tx(
        &mut self,
        leg: Leg,
        role: Role,
        request: impl Into<Arc<Message>>,
        branch: Bytes,
        dest: Dest,
    ) -> u32 {
        self.new_tx(true, leg, role, request.into(), branch, dest)
    }

    fn new_tx(
        &mut self,
        client: bool,
        leg: Leg,
        role: Role,
        request: Arc<Message>,
        branch: Bytes,
        dest: Dest,
    ) -> u32 {
        let id = self.next_tx;
        self.next_tx += 1;
        let method = request.method().cloned().unwrap_or(Method::Ack);
        let kind = match (client, method == Method::Invite) {
            (true, true) => Kind::ClientInvite,
            (true, false) => Kind::ClientNonInvite,
            (false, true) => Kind::ServerInvite,
            (false, false) => Kind::ServerNonInvite,
        };
        let reliability = Reliability::from(dest.protocol.is_reliable());
        let (fsm, actions) = Transaction::start(kind, reliability, &self.ctx.timer_cfg);
        metrics::gauge!(TRANSACTIONS_ACTIVE).increment(1.0);
        let (request_bytes, branch) = if client {
            crate::transport::count_sent(dest.protocol, &request);
            let branch = if branch.is_empty() {
                request
                    .top_via()
                    .and_then(|v| v.branch())
                    .unwrap_or_default()
            } else {
                branch
            };
            (request.encode(), branch)
        } else {
            (Bytes::new(), branch)
        };
        self.txs.push(Tx {
            id,
            leg,
            role,
            fsm,
            branch,
            method,
            request,
            request_bytes,
            pending: None,
            last_response: None,
            dest,
            timers: [None; 12],
            is_client: client,
            cancelled: false,
            ack: None,
            ack_due: false,
            resend: None,
        });
        self.execute(id, &actions, None);
        id
    }

    /// Whether an INVITE transaction of the call, on either leg, has no final response yet.
    fn invite_pending(&self) -> bool {
        use crate::sip::transaction::{ClientInviteState as C, ServerInviteState as S};
        self.txs.iter().any(|t| match &t.fsm {
            Transaction::ServerInvite(s) => s.state() == S::Proceeding,
            Transaction::ClientInvite(c) => matches!(c.state(), C::Calling | C::Proceeding),
            _ => false,
        })
    }

    fn dialog_mut(&mut self, leg: Leg) -> &mut Dialog {
        let core = self.core.as_mut().expect("call state");
        match leg {
            Leg::A => &mut core.a,
            Leg::B => &mut core.b,
        }
    }

    fn tx_mut(&mut self, id: u32) -> Option<&mut Tx> {
        self.txs.iter_mut().find(|t| t.id == id)
    }

    /// Hands a response to a server transaction; it is sent if the machine allows it.
    fn respond_msg(&mut self, id: u32, resp: &Message) {
        let Some(tx) = self.txs.iter_mut().find(|t| t.id == id) else {
            return;
        };
        let status = resp.status().unwrap_or(500);
        crate::transport::count_sent(tx.dest.protocol, resp);
        tx.pending = Some(resp.encode());
        let actions = tx
            .fsm
            .step(Event::TuResponse { status }, &self.ctx.timer_cfg);
        self.execute(id, &actions, None);
    }

    fn respond(&mut self, id: u32, status: u16, reason: &str, body: Option<(&Message, bool)>) {
        let Some(tx) = self.txs.iter().find(|t| t.id == id) else {
            return;
        };
        let tag = match tx.leg {
            Leg::A => self.core.as_ref().map(|c| c.a.local_tag.clone()),
            Leg::B => self.core.as_ref().map(|c| c.b.local_tag.clone()),
        };
        let mut resp = response_to(&tx.request, status, reason, tag.as_deref());
        if let Some((from, with_contact)) = body {
            copy_body(from, &mut resp);
            if (200..300).contains(&status) || status == 422 {
                copy_extensions(from, &mut resp);
            }
            if with_contact {
                resp.push(HeaderName::Contact, self.ctx.contact(tx.dest.protocol));
            }
        }
        self.respond_msg(id, &resp);
    }

    fn execute(&mut self, id: u32, actions: &[Action], msg: Option<&Message>) {
        for action in actions {
            match *action {
                Action::SendRequest => {
                    if let Some(tx) = self.txs.iter().find(|t| t.id == id) {
                        self.ctx
                            .transports()
                            .send(tx.dest, tx.request_bytes.clone());
                    }
                }
                Action::SendAck => {
                    if let (Some(tx), Some(resp)) = (self.txs.iter().find(|t| t.id == id), msg) {
                        let ack = ack_for_failure(&tx.request, resp);
                        self.ctx.transports().send_message(tx.dest, &ack);
                    }
                }
                Action::SendTrying => {
                    if let Some(tx) = self.tx_mut(id) {
                        let trying = response_to(&tx.request, 100, "Trying", None);
                        let bytes = trying.encode();
                        crate::transport::count_sent(tx.dest.protocol, &trying);
                        tx.last_response = Some(bytes.clone());
                        let dest = tx.dest;
                        self.ctx.transports().send(dest, bytes);
                    }
                }
                Action::SendResponse => {
                    if let Some(tx) = self.tx_mut(id) {
                        if let Some(bytes) = tx.pending.take() {
                            tx.last_response = Some(bytes.clone());
                            let dest = tx.dest;
                            self.ctx.transports().send(dest, bytes);
                        }
                    }
                }
                Action::ResendResponse => {
                    if let Some(tx) = self.txs.iter().find(|t| t.id == id) {
                        if let Some(bytes) = &tx.last_response {
                            self.ctx.transports().send(tx.dest, bytes.clone());
                        }
                    }
                }
                Action::StartTimer(name, after) => {
                    let me = self.myself.clone();
                    let timer_id = self.ctx.timers.schedule_cast_with(after, &me, move |tid| {
                        CallMsg::TxTimerFired {
                            tx: id,
                            timer: name,
                            id: tid,
                        }
                    });
                    if let Some(tx) = self.tx_mut(id) {
                        if let Some(old) = tx.timers[name as usize].replace(timer_id) {
                            self.ctx.timers.cancel(old);
                        }
                    }
                }
                Action::CancelTimer(name) => {
                    if let Some(old) = self
                        .tx_mut(id)
                        .and_then(|tx| tx.timers[name as usize].take())
                    {
                        self.ctx.timers.cancel(old);
                    }
                }
                Action::PassRequestToTu | Action::PassAckToTu => {}
                Action::PassResponseToTu => {
                    if let Some(resp) = msg {
                        self.tu_response(id, resp);
                    }
                }
                Action::Timeout => {
                    let kind = self.txs.iter().find(|t| t.id == id).map(|t| t.fsm.kind());
                    let label = match kind {
                        Some(Kind::ClientInvite) => "client_invite",
                        Some(Kind::ClientNonInvite) => "client_non_invite",
                        Some(Kind::ServerInvite) => "server_invite",
                        _ => "server_non_invite",
                    };
                    metrics::counter!(TRANSACTIONS_TIMED_OUT, "kind" => label).increment(1);
                    self.tu_failed(id, 408, "Request Timeout");
                }
                Action::TransportErrorToTu => {
                    self.tu_failed(id, 503, "Service Unavailable (Transport Error)")
                }
                Action::Terminated => {}
            }
        }
    }

    /// Drops terminated transactions and stops the actor when the call is over and nothing
    /// is left.
    fn sweep(&mut self) {
        // A delayed-offer re-INVITE whose 2xx the other leg never ACKed: ACK it without an
        // answer rather than leave that peer waiting for an ACK forever.
        let overdue: Vec<(Leg, u32)> = self
            .txs
            .iter()
            .filter(|t| t.ack_due && t.fsm.is_terminated())
            .map(|t| (t.leg, t.request.cseq().map(|c| c.seq).unwrap_or(1)))
            .collect();
        for (leg, seq) in overdue {
            tracing::info!("no ACK for a relayed re-INVITE's 2xx: ACKing it empty");
            self.send_ack(leg, seq, Bytes::new(), None);
        }
        for t in self.txs.iter_mut().filter(|t| t.fsm.is_terminated()) {
            if let Some((id, ..)) = t.resend.take() {
                self.ctx.timers.cancel(id);
            }
        }
        let before = self.txs.len();
        self.txs.retain(|t| !t.fsm.is_terminated());
        let gone = before - self.txs.len();
        if gone > 0 {
            metrics::gauge!(TRANSACTIONS_ACTIVE).decrement(gone as f64);
        }
        let ended = self.core.as_ref().is_none_or(|c| c.phase == Phase::Ended);
        if !ended || self.resend_2xx.is_some() || self.after_cdr.is_some() {
            return;
        }
        // Even with no transaction left the Call-IDs stay retired for 64*T1: a late 2xx
        // retransmission still gets its ACK, and a stray INVITE retransmission cannot
        // start a second call.
        if !self.retired && self.txs.iter().all(Tx::settled) {
            self.retire();
        }
    }

    /// The call is over and every transaction has its final answer: what is left is only
    /// absorbing retransmissions (Timers G–K, L, M). That is handed to the router as the
    /// final responses already sent, and the actor stops now instead of lingering for
    /// 64*T1: at 500 CAPS lingering kept ~2.5 actors alive per live call.
    fn retire(&mut self) {
        let Some(core) = &self.core else { return };
        let responses = self
            .txs
            .iter()
            .filter(|t| !t.is_client)
            .filter_map(|t| {
                Some(RetiredResponse {
                    branch: t.branch.clone(),
                    method: t.method.clone(),
                    response: t.last_response.clone()?,
                    dest: t.dest,
                })
            })
            .collect();
        let mut ids = vec![core.a_call_id.clone()];
        if !core.b_call_id.is_empty() {
            ids.push(core.b_call_id.clone());
        }
        ids.extend(self.old_b_ids.iter().cloned());
        self.ctx.directory.retire(
            &ids,
            &self.myself,
            Retired {
                responses,
                ack_2xx: core.b_ack.clone().map(|ack| (ack, core.b_dest)),
            },
            &self.ctx.timers,
            self.ctx.timer_cfg.t1_x64(),
        );
        self.retired = true;
        // Drain, not stop: messages the router queued before the switch (a 2xx
        // retransmission, say) are still handled.
        if self.myself.drain().is_err() {
            self.myself.stop(None);
        }
    }

    fn on_tx_timer(&mut self, id: u32, name: TimerName, timer_id: TimerId) {
        let Some(tx) = self.txs.iter_mut().find(|t| t.id == id) else {
            return;
        };
        if tx.timers[name as usize] != Some(timer_id) {
            return; // replaced or cancelled meanwhile
        }
        tx.timers[name as usize] = None;
        let actions = tx.fsm.step(Event::TimerFired(name), &self.ctx.timer_cfg);
        self.execute(id, &actions, None);
    }

    // ---- the transaction user: what responses and failures mean for the call ----

    fn tu_response(&mut self, id: u32, resp: &Message) {
        let Some(tx) = self.txs.iter().find(|t| t.id == id) else {
            return;
        };
        let (role, tx_leg) = (tx.role, tx.leg);
        let method = tx.method.clone();
        let status = resp.status().unwrap_or(0);
        match role {
            Role::BInvite => {
                self.fork_tx = Some(id);
                self.b_invite_response(resp, status);
                self.fork_tx = None;
            }
            Role::AOriginate => self.agent_response(id, resp, status),
            Role::Relay { peer } => {
                if matches!(method, Method::Invite | Method::Update) && (200..300).contains(&status)
                {
                    // The answer to a target refresh refreshes the answerer's target too.
                    if let Some(c) = resp.contacts().next() {
                        self.dialog_mut(tx_leg).remote_target = c.uri;
                        self.checkpoint();
                    }
                }
                if method == Method::Invite && (200..300).contains(&status) {
                    let cseq = resp.cseq().map(|c| c.seq).unwrap_or(1);
                    let (leg, dest, acked, offer) = {
                        let t = self.txs.iter().find(|t| t.id == id).expect("found above");
                        (t.leg, t.dest, t.ack.clone(), !t.request.body.is_empty())
                    };
                    match acked {
                        // A retransmitted 2xx: our ACK was lost; send it again. The other
                        // leg's copy of the 2xx is ours to retransmit, not this one's.
                        Some(ack) => {
                            self.ctx.transports().send(dest, ack);
                            return;
                        }
                        // The re-INVITE carried the offer, so the ACK carries nothing the
                        // other leg has to say: ACK at once, hop by hop.
                        None if offer => {
                            let ack = self.send_ack(leg, cseq, Bytes::new(), None);
                            if let Some(t) = self.tx_mut(id) {
                                t.ack = Some(ack);
                            }
                        }
                        // Delayed offer: this 2xx carries the offer and the answer comes in
                        // the other leg's ACK, so the ACK is relayed end to end (`on_ack`).
                        None => {
                            if let Some(t) = self.tx_mut(id) {
                                t.ack_due = true;
                            }
                        }
                    }
                }
                if status >= 101 {
                    let reason = resp_reason(resp);
                    let with_contact =
                        matches!(method, Method::Invite | Method::Update) && status < 300;
                    if self.session.is_some() && !resp.body.is_empty() {
                        let mut rewritten = resp.clone();
                        self.rewrite_body_of(tx_leg, &mut rewritten, true);
                        self.respond(peer, status, &reason, Some((&rewritten, with_contact)));
                    } else {
                        self.respond(peer, status, &reason, Some((resp, with_contact)));
                    }
                    if method == Method::Invite && (200..300).contains(&status) {
                        self.start_relayed_2xx_resend(peer);
                    }
                }
            }
            Role::BCancel | Role::Own | Role::Local | Role::AInvite => {}
        }
    }

    fn tu_failed(&mut self, id: u32, status: u16, reason: &str) {
        let Some(role) = self.txs.iter().find(|t| t.id == id).map(|t| t.role) else {
            return;
        };
        if role == Role::BInvite && !self.stale_forks.contains(&id) && self.trunk_tx() == Some(id) {
            // Timer B or a transport error on a trunk: fail over if another trunk is left.
            let cause = if status == 408 {
                FailoverCause::Timeout
            } else {
                FailoverCause::NoResponse
            };
            if self.trunk_failed(Outcome::Failover(cause), Some(status)) {
                return;
            }
        }
        let Some(tx) = self.txs.iter().find(|t| t.id == id) else {
            return;
        };
        match tx.role {
            Role::AOriginate => {
                self.agent_response(id, &Message::response(status, Bytes::new()), status)
            }
            Role::BInvite if self.stale_forks.contains(&id) => {}
            Role::BInvite if self.offering() => self.offer_fork_failed(id, status),
            Role::BInvite => {
                if matches!(self.core().phase, Phase::Setup | Phase::Early) {
                    // One fork timing out while others ring is one failure among theirs.
                    self.fork_tx = Some(id);
                    let last = self.last_fork_failed(&Message::response(
                        status,
                        Bytes::copy_from_slice(reason.as_bytes()),
                    ));
                    if last {
                        if let Some(best) = self
                            .best_failure
                            .take()
                            .filter(|b| fork_rank(b.status().unwrap_or(500)) < fork_rank(status))
                        {
                            let st = best.status().unwrap_or(500);
                            self.b_invite_response(&best, st);
                        }
                    }
                    self.fork_tx = None;
                    if !last || self.core().phase == Phase::Ended {
                        return;
                    }
                    let resp = self.a_response(status, reason, false);
                    self.respond_a_invite(resp);
                    self.end(
                        status,
                        HangupBy::System,
                        if status == 408 {
                            "no response from callee"
                        } else {
                            "transport error"
                        },
                    );
                }
            }
            Role::Relay { peer } if tx.is_client => {
                // The call is over either way after a BYE.
                let status = if tx.method == Method::Bye {
                    200
                } else {
                    status
                };
                let reason = if status == 200 { "OK" } else { reason };
                self.respond(peer, status, reason, None);
            }
            _ => {}
        }
    }

    fn b_invite_response(&mut self, resp: &Message, status: u16) {
        let phase = self.core().phase;
        if let Some(tx) = self.fork_tx.filter(|t| self.stale_forks.contains(t)) {
            // A fork of an offer that is over (rang out, lost to another agent, the caller
            // left): never relayed. CANCEL it once it rings; end it if it answers late.
            match status {
                101..=199 => self.cancel_fork(tx),
                200..=299 => self.end_other_fork(resp),
                _ => {}
            }
            return;
        }
        if let (Some(tx), true) = (self.fork_tx, phase != Phase::Ended) {
            if self.trunk_response(tx, resp, status) {
                return;
            }
        }
        if self.offering() && phase != Phase::Ended {
            if let Some(tx) = self.fork_tx {
                match status {
                    101..=199 => {
                        if let Some(f) = self.offer_forks.iter_mut().find(|f| f.tx == tx) {
                            f.rang = true;
                        }
                    }
                    200..=299 => self.offer_answered(tx),
                    300.. => return self.offer_fork_failed(tx, status),
                    _ => {}
                }
            }
        }
        if status >= 300 && matches!(phase, Phase::Answered | Phase::Confirmed) {
            // A losing fork's failure (often the 487 for our CANCEL): its transaction ACKs
            // it; the call has its answer.
            return;
        }
        if (101..200).contains(&status) && matches!(phase, Phase::Answered | Phase::Confirmed) {
            // A provisional from a fork that lost the race: never relayed; the CANCEL it
            // was waiting for (RFC 3261 §9.1) goes now.
            if let (Some(id), true) = (self.fork_tx, self.cancel_pending) {
                self.cancel_fork(id);
            }
            return;
        }
        if (200..300).contains(&status)
            && (self.core().b_ack.is_some() || matches!(phase, Phase::Answered | Phase::Confirmed))
        {
            let tag = resp.to().and_then(|t| t.tag()).unwrap_or_default();
            if tag == self.core().b.remote_tag {
                // A retransmission of the 2xx (our ACK was lost, or the caller has not
                // ACKed yet): ACK again if we have; the call goes on or its BYE is on its way.
                if let Some(ack) = self.core().b_ack.clone() {
                    let dest = self.core().b_dest;
                    self.ctx.transports().send(dest, ack);
                }
            } else {
                self.end_other_fork(resp);
            }
            return;
        }
        if phase == Phase::Ended {
            // Cancelled or timed out meanwhile.
            if (101..200).contains(&status) && self.cancel_pending {
                // This fork may now be cancelled (RFC 3261 §9.1); others when they answer.
                match self.fork_tx {
                    Some(id) => self.cancel_fork(id),
                    None => self.send_b_cancel(),
                }
            }
            if (200..300).contains(&status) {
                // Answered after all: ACK it and hang up, once (retransmissions of this 2xx
                // get the same ACK, not another BYE).
                self.learn_b_dialog(resp);
                let cseq = resp.cseq().map(|c| c.seq).unwrap_or(1);
                let ack = self.send_ack(Leg::B, cseq, Bytes::new(), None);
                self.core().b_ack = Some(ack);
                self.send_bye(Leg::B);
            }
            return;
        }
        match status {
            100 => {}
            101..=199 => {
                if resp.to().and_then(|t| t.tag()).is_some() {
                    // An early dialog (RFC 3261 §12.1.2): its tag, remote target and route
                    // set carry requests sent in it (an UPDATE before the answer).
                    self.learn_b_dialog(resp);
                }
                if self.core().cdr.ringing_ms.is_none() {
                    self.core().cdr.ringing_ms = Some(now_unix_ms());
                    metrics::histogram!(CALL_SETUP, "stage" => "ringing")
                        .record(self.received_at.elapsed().as_secs_f64());
                }
                if self.a_answered() {
                    // The caller, answered by the switch, hears music, not the agent's ring.
                    return self.set_phase(Phase::Early);
                }
                let mut out = self.a_response(status, &resp_reason(resp), true);
                copy_body(resp, &mut out);
                self.rewrite_body_of(Leg::B, &mut out, true);
                self.respond_a_invite(out);
                self.set_phase(Phase::Early);
            }
            200..=299 => {
                self.adopt_fork();
                self.learn_b_dialog(resp);
                self.cancel_no_answer();
                self.core().cdr.answer_ms = Some(now_unix_ms());
                self.core().cdr.final_status = status;
                metrics::histogram!(CALL_SETUP, "stage" => "answer")
                    .record(self.received_at.elapsed().as_secs_f64());
                metrics::counter!(CALLS_ANSWERED).increment(1);
                if self.a_answered() {
                    // The agent answers a caller the switch answered: bridge them.
                    self.bridge_agent(resp);
                    self.ack_b(Bytes::new(), None);
                    if let Some(max) = self.ctx.max_duration {
                        self.max_duration =
                            Some(self.schedule_call_timer(CallTimer::MaxDuration, max));
                    }
                    self.set_phase(Phase::Confirmed);
                    return self.cancel_other_forks();
                }
                let mut out = self.a_response(status, &resp_reason(resp), true);
                copy_body(resp, &mut out);
                self.rewrite_body_of(Leg::B, &mut out, true);
                copy_extensions(resp, &mut out);
                let bytes = out.encode();
                self.respond_a_invite(out);
                if !self.core().a_source.protocol.is_reliable() && self.orig.is_none() {
                    let t1 = self.ctx.timer_cfg.t1;
                    let id = self.schedule_call_timer(CallTimer::Resend2xx, t1);
                    self.resend_2xx = Some((id, bytes, t1, Instant::now()));
                }
                if let Some(max) = self.ctx.max_duration {
                    self.max_duration = Some(self.schedule_call_timer(CallTimer::MaxDuration, max));
                }
                self.set_phase(Phase::Answered);
                self.cancel_other_forks();
                if self.orig.is_some() {
                    // Click-to-call: the agent has had the answer in our ACK; the customer's
                    // 2xx answered our offer, so its ACK is ours to send now.
                    self.ack_b(Bytes::new(), None);
                    self.set_phase(Phase::Confirmed);
                }
            }
            _ => {
                // Other forks still ringing: keep the best failure until the last one ends.
                if !self.last_fork_failed(resp) {
                    return;
                }
                let best = self.best_failure.take();
                let resp = match &best {
                    Some(b) if fork_rank(b.status().unwrap_or(500)) < fork_rank(status) => b,
                    _ => resp,
                };
                let status = resp.status().unwrap_or(status);
                // A final failure: relay it (authentication challenges are per hop).
                let (st, reason) = match status {
                    401 | 407 => (
                        403,
                        "Forbidden (Upstream Authentication Required)".to_string(),
                    ),
                    _ => (status, resp_reason(resp)),
                };
                let mut out = self.a_response(st, &reason, false);
                if let Some(ra) = resp.value(HeaderName::RetryAfter) {
                    out.push(HeaderName::RetryAfter, ra.clone());
                }
                if status == 422 {
                    // Session Interval Too Small: the caller retries with this Min-SE.
                    copy_extensions(resp, &mut out);
                }
                // What the caller needs to act on the failure: where to go instead (3xx),
                // what the callee allows, accepts or lacks (405, 415, 420), why (Warning).
                for name in [
                    HeaderName::Contact,
                    HeaderName::Allow,
                    HeaderName::Accept,
                    HeaderName::Unsupported,
                    HeaderName::Warning,
                ] {
                    for h in resp.headers_named(name) {
                        out.headers.push(h.clone());
                    }
                }
                self.respond_a_invite(out);
                self.end(st, HangupBy::Callee, &format!("callee answered {status}"));
            }
        }
    }

    /// A 2xx from a second fork of the B-leg INVITE (a forking proxy's other phone also
    /// answered): RFC 3261 §13.2.2.4 has it ACKed and, as the call has its answer, ended
    /// with a BYE, or that phone stays off-hook without media until its own timeout.
    fn end_other_fork(&mut self, resp: &Message) {
        let tag = resp.to().and_then(|t| t.tag()).unwrap_or_default();
        let mut fork = self.core().b.clone();
        fork.remote_tag = tag.clone();
        if let Some(c) = resp.contacts().next() {
            fork.remote_target = c.uri;
        }
        let mut routes: Vec<Bytes> = resp.values(HeaderName::RecordRoute).collect();
        routes.reverse();
        fork.route_set = routes;
        fork.local_cseq = self.core().b_invite.cseq().map(|c| c.seq).unwrap_or(1);
        // A fork of our own (another phone of the user) is reached over its own flow.
        let (protocol, dest) = match self
            .fork_tx
            .and_then(|id| self.txs.iter().find(|t| t.id == id))
        {
            Some(t) => (t.dest.protocol, t.dest),
            None => self.leg_dest(Leg::B),
        };
        let contact = self.ctx.contact(protocol);
        let via = self.ctx.via(protocol, &new_branch());
        let ack = fork.request_with_cseq(Method::Ack, fork.local_cseq, &via, &contact, 70);
        self.ctx.transports().send_message(dest, &ack);
        if self.ended_forks.contains(&tag) {
            return; // a retransmission: the BYE is on its way
        }
        tracing::info!("2xx from a second fork: ACK and BYE");
        self.ended_forks.push(tag);
        let branch = new_branch();
        let via = self.ctx.via(protocol, &branch);
        let bye = fork.request(Method::Bye, &via, &contact, 70);
        self.new_client_tx(Leg::B, Role::Own, bye, branch, dest);
    }

    fn learn_b_dialog(&mut self, resp: &Message) {
        let tag = resp.to().and_then(|t| t.tag()).unwrap_or_default();
        let target = resp.contacts().next().map(|c| c.uri);
        let routes: Vec<Bytes> = resp.values(HeaderName::RecordRoute).collect();
        let b = &mut self.core().b;
        b.remote_tag = tag;
        if let Some(t) = target {
            b.remote_target = t;
        }
        b.route_set = routes.into_iter().rev().collect();
    }

    // ---- building and sending ----

    /// A response to the caller's INVITE with our tag (and Contact when it creates a dialog).
    fn a_response(&mut self, status: u16, reason: &str, with_contact: bool) -> Message {
        let tag = self.core().a.local_tag.clone();
        let protocol = self.core().a_source.protocol;
        let mut resp = response_to(&self.core().a_invite, status, reason, Some(&tag));
        if with_contact && status > 100 {
            // RFC 3261 §12.1.1: a dialog-creating response copies the request's
            // Record-Route, or a record-routing proxy in front of the caller is left out of
            // the caller's ACK and BYE.
            for h in self.core().a_invite.headers_named(HeaderName::RecordRoute) {
                resp.headers.push(h.clone());
            }
            resp.push(HeaderName::Contact, self.ctx.contact(protocol));
        }
        resp.push(HeaderName::Server, self.ctx.user_agent.clone());
        resp
    }

    /// Refuses the caller's INVITE before a B leg exists and ends the call.
    fn refuse(&mut self, status: u16, reason: &str) {
        let resp = self.a_response(status, reason, false);
        self.respond_a_invite(resp);
        self.end(status, HangupBy::System, reason);
    }

    /// Answers the caller's INVITE from the switch itself (retransmitted over UDP until
    /// its ACK comes).
    fn answer_a(&mut self, ok: Message) {
        let bytes = ok.encode();
        self.respond_a_invite(ok);
        if !self.core().a_source.protocol.is_reliable() {
            let t1 = self.ctx.timer_cfg.t1;
            let id = self.schedule_call_timer(CallTimer::Resend2xx, t1);
            self.resend_2xx = Some((id, bytes, t1, Instant::now()));
        }
    }

    fn respond_a_invite(&mut self, resp: Message) {
        if self.orig.is_some() {
            return self.originated_answer(&resp);
        }
        if let Some(id) = self
            .txs
            .iter()
            .find(|t| t.role == Role::AInvite)
            .map(|t| t.id)
        {
            self.respond_msg(id, &resp);
        } else {
            // After a restart the transaction is gone: send directly.
            let (source, via) = (self.core().a_source, self.core().a_invite.top_via());
            self.ctx.transports().send_message(
                self.ctx.transports().response_dest(&source, via.as_ref()),
                &resp,
            );
        }
    }

    fn leg_dest(&mut self, leg: Leg) -> (Protocol, Dest) {
        match leg {
            Leg::A => {
                let s = self.core().a_source;
                (
                    s.protocol,
                    Dest {
                        protocol: s.protocol,
                        addr: s.remote,
                        conn: s.conn,
                    },
                )
            }
            Leg::B => {
                let d = self.core().b_dest;
                (d.protocol, d)
            }
        }
    }

    /// A request in the dialog of `leg` (Via is added by the caller), with the body and
    /// content headers of `from`.
    fn in_dialog_request(&mut self, leg: Leg, method: Method, from: &Message) -> Message {
        let (protocol, _) = self.leg_dest(leg);
        let contact = self.ctx.contact(protocol);
        let mf = from.max_forwards().unwrap_or(70).saturating_sub(1).max(1);
        let dialog = match leg {
            Leg::A => &mut self.core.as_mut().expect("core").a,
            Leg::B => &mut self.core.as_mut().expect("core").b,
        };
        let empty = Bytes::new();
        let mut m = dialog.request(method, &empty, &contact, mf);
        m.remove(HeaderName::Via);
        for name in [
            HeaderName::ContentType,
            HeaderName::Reason,
            HeaderName::Event,
        ] {
            if let Some(v) = from.value(name) {
                m.push(name, v.clone());
            }
        }
        // Session refreshes (RFC 4028) are relayed with their interval.
        copy_extensions(from, &mut m);
        if let Some(v) = from.other("Info-Package") {
            m.headers.push(crate::sip::message::Header::named(
                "Info-Package",
                v.clone(),
            ));
        }
        m
    }

    fn send_ack(&mut self, leg: Leg, cseq: u32, body: Bytes, content_type: Option<Bytes>) -> Bytes {
        let (protocol, dest) = self.leg_dest(leg);
        let via = self.ctx.via(protocol, &new_branch());
        let contact = self.ctx.contact(protocol);
        let dialog = match leg {
            Leg::A => &self.core.as_ref().expect("core").a,
            Leg::B => &self.core.as_ref().expect("core").b,
        };
        let mut ack = dialog.request_with_cseq(Method::Ack, cseq, &via, &contact, 70);
        if let Some(ct) = content_type {
            ack.push(HeaderName::ContentType, ct);
        }
        ack.body = body;
        crate::transport::count_sent(protocol, &ack);
        let bytes = ack.encode();
        self.ctx.transports().send(dest, bytes.clone());
        bytes
    }

    /// ACKs the callee's 2xx (end to end: when the caller's ACK arrives).
    fn ack_b(&mut self, body: Bytes, content_type: Option<Bytes>) {
        let cseq = self.core().b_invite.cseq().map(|c| c.seq).unwrap_or(1);
        let bytes = self.send_ack(Leg::B, cseq, body, content_type);
        self.core().b_ack = Some(bytes);
    }

    fn send_bye(&mut self, leg: Leg) {
        let (protocol, dest) = self.leg_dest(leg);
        let branch = new_branch();
        let via = self.ctx.via(protocol, &branch);
        let contact = self.ctx.contact(protocol);
        let dialog = match leg {
            Leg::A => &mut self.core.as_mut().expect("core").a,
            Leg::B => &mut self.core.as_mut().expect("core").b,
        };
        let bye = dialog.request(Method::Bye, &via, &contact, 70);
        self.new_client_tx(leg, Role::Own, bye, branch, dest);
    }

    fn cancel_b(&mut self) {
        use crate::sip::transaction::ClientInviteState as CI;
        let forks: Vec<(u32, Option<CI>)> = self
            .txs
            .iter()
            .filter(|t| t.role == Role::BInvite)
            .map(|t| {
                (
                    t.id,
                    match &t.fsm {
                        Transaction::ClientInvite(c) => Some(c.state()),
                        _ => None,
                    },
                )
            })
            .collect();
        for (id, state) in forks {
            match state {
                Some(CI::Proceeding) => self.cancel_fork(id),
                // RFC 3261 §9.1: no CANCEL before a provisional response.
                Some(CI::Calling) => self.cancel_pending = true,
                _ => {}
            }
        }
    }

    /// CANCELs one fork of the B-leg INVITE (once).
    fn cancel_fork(&mut self, id: u32) {
        let Some(tx) = self.txs.iter_mut().find(|t| t.id == id) else {
            return;
        };
        if tx.cancelled {
            return;
        }
        tx.cancelled = true;
        let mut cancel = cancel_for(&tx.request);
        let dest = tx.dest;
        if let Some(r) = self.cancel_reason.clone() {
            cancel.push(HeaderName::Reason, r);
        }
        self.new_client_tx(Leg::B, Role::BCancel, cancel, Bytes::new(), dest);
    }

    /// The answering fork becomes the B leg: ACK, BYE and re-INVITEs go to its contact
    /// over its flow.
    fn adopt_fork(&mut self) {
        let Some(tx) = self
            .fork_tx
            .and_then(|id| self.txs.iter().find(|t| t.id == id))
        else {
            return;
        };
        let (request, dest) = (tx.request.clone(), tx.dest);
        let core = self.core();
        if let Some(uri) = request.request_uri() {
            core.b.remote_target = uri.clone();
        }
        core.b_invite = request;
        core.b_dest = dest;
    }

    /// After the answer, the forks still ringing are cancelled (RFC 3261 §16.7 step 10 for
    /// a forking proxy; the same for a B2BUA ringing several phones).
    fn cancel_other_forks(&mut self) {
        let winner = self.fork_tx;
        let pending: Vec<u32> = self
            .txs
            .iter()
            .filter(|t| t.role == Role::BInvite && Some(t.id) != winner && !t.settled())
            .map(|t| t.id)
            .collect();
        for id in pending {
            let proceeding = self.txs.iter().find(|t| t.id == id).is_some_and(|t| {
                matches!(&t.fsm, Transaction::ClientInvite(c) if c.state() == crate::sip::transaction::ClientInviteState::Proceeding)
            });
            if proceeding {
                self.cancel_fork(id);
            } else {
                self.cancel_pending = true;
            }
        }
    }

    /// A fork failed: true if it was the last one still ringing (then the best failure is
    /// relayed), false if others ring on (this failure is kept if it is the best so far).
    fn last_fork_failed(&mut self, resp: &Message) -> bool {
        let current = self.fork_tx;
        let others_ringing = self.txs.iter().any(|t| {
            t.role == Role::BInvite
                && Some(t.id) != current
                && !self.stale_forks.contains(&t.id)
                && !t.settled()
                && !t.fsm.is_terminated()
        });
        if !others_ringing {
            return true;
        }
        let status = resp.status().unwrap_or(500);
        let better = self
            .best_failure
            .as_ref()
            .is_none_or(|b| fork_rank(status) < fork_rank(b.status().unwrap_or(500)));
        if better {
            self.best_failure = Some(resp.clone());
        }
        false
    }

    fn send_b_cancel(&mut self) {
        let mut cancel = cancel_for(&self.core().b_invite);
        if let Some(r) = self.cancel_reason.clone() {
            cancel.push(HeaderName::Reason, r);
        }
        let dest = self.core().b_dest;
        self.new_client_tx(Leg::B, Role::BCancel, cancel, Bytes::new(), dest);
    }

    /// The switch ends an established call: BYE to both legs.
    fn hangup_both(&mut self, by: HangupBy, reason: &str) {
        match self.core.as_ref().map(|c| c.phase) {
            Some(Phase::Answered | Phase::Confirmed) => {
                self.cancel_call_timers();
                if let Some((id, ..)) = self.resend_2xx.take() {
                    self.ctx.timers.cancel(id);
                }
                if self.core().phase == Phase::Answered {
                    self.ack_b(Bytes::new(), None);
                }
                let status = self.core().cdr.final_status;
                self.end(status, by, reason);
                self.after_cdr(AfterCdr::Bye(Leg::A));
                self.after_cdr(AfterCdr::Bye(Leg::B));
            }
            Some(Phase::Setup | Phase::Early | Phase::Queued) if self.a_answered() => {
                self.hang_up_answered_caller(by, reason);
            }
            Some(Phase::Setup | Phase::Early | Phase::Queued) => {
                self.abandon_queue();
                let resp = self.a_response(480, "Temporarily Unavailable", false);
                self.respond_a_invite(resp);
                self.cancel_b();
                self.end(480, by, reason);
            }
            _ => {}
        }
    }

    // ---- timers ----

    fn schedule_call_timer(&self, timer: CallTimer, after: Duration) -> TimerId {
        self.ctx
            .timers
            .schedule_cast_with(after, &self.myself, move |id| {
                CallMsg::CallTimerFired(timer, id)
            })
    }

    fn cancel_no_answer(&mut self) {
        if let Some(id) = self.no_answer.take() {
            self.ctx.timers.cancel(id);
        }
    }

    fn cancel_call_timers(&mut self) {
        self.cancel_no_answer();
        if let Some(id) = self.max_duration.take() {
            self.ctx.timers.cancel(id);
        }
    }

    fn on_call_timer(&mut self, timer: CallTimer, id: TimerId) {
        match timer {
            CallTimer::NoAnswer if self.no_answer == Some(id) && self.offering() => {
                self.no_answer = None;
                self.offer_timed_out();
            }
            CallTimer::NoAnswer if self.no_answer == Some(id) => {
                self.no_answer = None;
                self.hangup_both(HangupBy::System, "no answer");
            }
            CallTimer::InviteTimeout if self.invite_timer == Some(id) => {
                self.invite_timer = None;
                self.trunk_timed_out();
            }
            CallTimer::QueueKeepalive if self.keepalive == Some(id) => {
                self.keepalive = None;
                let waiting = self.core.as_ref().is_some_and(|c| {
                    c.phase == Phase::Queued && c.queue.as_ref().is_some_and(|q| q.waiting)
                });
                if waiting {
                    self.join_queue();
                }
            }
            CallTimer::MaxDuration if self.max_duration == Some(id) => {
                self.max_duration = None;
                self.hangup_both(HangupBy::System, "maximum call duration");
            }
            CallTimer::Resend2xx if self.resend_2xx.as_ref().is_some_and(|r| r.0 == id) => {
                let (_, bytes, interval, since) = self.resend_2xx.take().expect("checked");
                if since.elapsed() >= self.ctx.timer_cfg.t1_x64() {
                    // RFC 3261 §13.3.1.4: no ACK came; end the dialog.
                    tracing::info!("no ACK for 2xx: ending the call");
                    self.hangup_both(HangupBy::System, "no ACK from caller");
                    return;
                }
                let (source, via) = (self.core().a_source, self.core().a_invite.top_via());
                self.ctx.transports().send(
                    self.ctx.transports().response_dest(&source, via.as_ref()),
                    bytes.clone(),
                );
                let next = (interval * 2).min(self.ctx.timer_cfg.t2);
                let tid = self.schedule_call_timer(CallTimer::Resend2xx, next);
                self.resend_2xx = Some((tid, bytes, next, since));
            }
            CallTimer::ResendRelayed2xx(tx) => self.resend_relayed_2xx(tx, id),
            CallTimer::Announce if self.announce == Some(id) => self.request_position(),
            _ => {}
        }
    }

    fn start_relayed_2xx_resend(&mut self, server: u32) {
        let t1 = self.ctx.timer_cfg.t1;
        let unreliable = self
            .txs
            .iter()
            .find(|t| t.id == server)
            .is_some_and(|t| !t.dest.protocol.is_reliable() && t.resend.is_none());
        if unreliable {
            let id = self.schedule_call_timer(CallTimer::ResendRelayed2xx(server), t1);
            if let Some(t) = self.tx_mut(server) {
                t.resend = Some((id, t1, Instant::now()));
            }
        }
    }

    fn resend_relayed_2xx(&mut self, server: u32, id: TimerId) {
        let (t1_x64, t2) = (self.ctx.timer_cfg.t1_x64(), self.ctx.timer_cfg.t2);
        let Some(t) = self.tx_mut(server) else {
            return;
        };
        let Some((tid, interval, since)) = t.resend else {
            return;
        };
        if tid != id {
            return;
        }
        t.resend = None;
        if since.elapsed() >= t1_x64 {
            // Its sender will end the call itself (RFC 3261 §14.1); nothing more to do.
            tracing::info!("no ACK for a relayed re-INVITE's 2xx");
            return;
        }
        let (dest, bytes) = (t.dest, t.last_response.clone());
        if let Some(bytes) = bytes {
            self.ctx.transports().send(dest, bytes);
        }
        let next = (interval * 2).min(t2);
        let nid = self.schedule_call_timer(CallTimer::ResendRelayed2xx(server), next);
        if let Some(t) = self.tx_mut(server) {
            t.resend = Some((nid, next, since));
        }
    }

    // ---- the contact centre: a queued call ----

    fn cc(&self) -> Option<Arc<crate::actors::queue::CcContext>> {
        self.ctx.cc.get().and_then(std::sync::Weak::upgrade)
    }

    /// Whether the caller is waiting in a queue (not yet answered by an agent, not gone).
    fn queue_waiting(&self) -> bool {
        self.core
            .as_ref()
            .and_then(|c| c.queue.as_ref())
            .is_some_and(|q| q.waiting)
    }

    fn a_call_id_str(&mut self) -> Arc<str> {
        Arc::from(String::from_utf8_lossy(&self.core().a_call_id).as_ref())
    }

    /// Joins (or reminds) the queue; re-arms the keep-alive.
    fn join_queue(&mut self) {
        let Some(cc) = self.cc() else { return };
        let call_id = self.a_call_id_str();
        let from = self.core().cdr.caller.clone();
        let Some(q) = self.core().queue.clone() else {
            return;
        };
        let joined = crate::actors::queue::tell(
            &cc,
            &q.tenant,
            &q.queue,
            crate::actors::queue::QueueMsg::Join(crate::actors::queue::Join {
                call_id,
                from,
                priority: q.priority,
                joined_ms: q.joined_ms,
            }),
        );
        if !joined {
            tracing::warn!(queue = %q.queue, "queue not running: caller waits for its restart");
        }
        if let Some(id) = self.keepalive.take() {
            self.ctx.timers.cancel(id);
        }
        self.keepalive = Some(self.schedule_call_timer(CallTimer::QueueKeepalive, QUEUE_KEEPALIVE));
    }

    /// Tells the queue and the agent how an offer ended.
    fn report_offer(&mut self, f: &OfferFork, outcome: crate::actors::agent::OfferOutcome) {
        if self.ended_offers.len() >= 16 {
            self.ended_offers.remove(0);
        }
        self.ended_offers.push(f.offer);
        let Some(cc) = self.cc() else { return };
        let Some(q) = self.core().queue.clone() else {
            return;
        };
        let call_id = self.a_call_id_str();
        // The node's index of busy agents (for an agent actor restarted on a new owner).
        if outcome == crate::actors::agent::OfferOutcome::Answered {
            crate::actors::agent::note_call(
                &cc.agent_calls,
                &q.tenant,
                &f.agent,
                crate::actors::agent::AgentCall {
                    call_id: call_id.clone(),
                    queue: q.queue.clone(),
                    offer: f.offer,
                    answered: true,
                },
            );
        } else {
            crate::actors::agent::forget_call(&cc.agent_calls, &q.tenant, &f.agent, &call_id);
        }
        crate::actors::agent::tell(
            &cc,
            &q.tenant,
            &f.agent,
            crate::actors::agent::AgentMsg::OfferEnded {
                offer: f.offer,
                outcome,
            },
        );
        crate::actors::queue::tell(
            &cc,
            &q.tenant,
            &q.queue,
            crate::actors::queue::QueueMsg::OfferEnded {
                offer: f.offer,
                agent: f.agent.clone(),
                call_id,
                outcome,
            },
        );
    }

    /// A queue offers this call to an agent: ring the agent's phones (a B leg of its own
    /// Call-ID per offer). A ring-all queue sends several offers; they ring together.
    fn on_offer(&mut self, offer: Offer) {
        use crate::actors::agent::OfferOutcome;
        let phase = self.core.as_ref().map(|c| c.phase);
        let ringing =
            !self.offer_forks.is_empty() && matches!(phase, Some(Phase::Setup | Phase::Early));
        let waiting = self.queue_waiting();
        let f = OfferFork {
            tx: 0,
            offer: offer.offer,
            agent: offer.agent.clone(),
            rang: false,
        };
        if !waiting || !(phase == Some(Phase::Queued) || ringing) || offer.forks.is_empty() {
            self.report_offer(&f, OfferOutcome::Cancelled);
            if !waiting && self.core.is_some() {
                // The queue still lists a caller that is no longer waiting (a message to a
                // restarting queue was lost): it leaves now.
                self.leave_queue(false);
            }
            return;
        }
        if ringing && !offer.ring_all {
            // One agent at a time outside ring-all (a restarted queue's stale view).
            return self.report_offer(&f, OfferOutcome::Cancelled);
        }
        if ringing {
            // Another agent of a ring-all offer: one more fork of the same B leg.
            let b_invite = self.core().b_invite.clone();
            for fork in &offer.forks {
                let tx = self.send_fork(&b_invite, fork);
                self.offer_forks.push(OfferFork { tx, ..f.clone() });
            }
            return self.note_offer(&f);
        }
        if let Some(id) = self.keepalive.take() {
            self.ctx.timers.cancel(id);
        }
        let dialled = Bytes::from(self.core().cdr.callee.clone());
        let txs = self.place_b_leg(
            &offer.forks,
            dialled,
            format!("agent:{}", offer.agent),
            None,
        );
        for tx in txs {
            self.offer_forks.push(OfferFork { tx, ..f.clone() });
        }
        self.note_offer(&f);
        self.cancel_no_answer();
        self.no_answer = Some(self.schedule_call_timer(CallTimer::NoAnswer, offer.ring_timeout));
        self.set_phase(Phase::Setup);
    }

    /// Indexes a ringing offer's agent as held by this call (until the offer's outcome).
    fn note_offer(&mut self, f: &OfferFork) {
        let (Some(cc), Some(q)) = (self.cc(), self.core().queue.clone()) else {
            return;
        };
        let call_id = self.a_call_id_str();
        crate::actors::agent::note_call(
            &cc.agent_calls,
            &q.tenant,
            &f.agent,
            crate::actors::agent::AgentCall {
                call_id,
                queue: q.queue.clone(),
                offer: f.offer,
                answered: false,
            },
        );
    }

    /// A new B leg for a queued call (an offer, or an overflow to a user): its own Call-ID,
    /// the INVITE to every fork; earlier B Call-IDs stay known for late answers. Returns
    /// the INVITE transactions.
    fn place_b_leg(
        &mut self,
        forks: &[Fork],
        dialled: Bytes,
        target: String,
        caller_id: Option<&str>,
    ) -> Vec<u32> {
        let first = forks[0].clone();
        let a_invite = self.core().a_invite.clone();
        let (mut b, mut b_invite, branch) = self.b_leg(
            &a_invite,
            &dialled,
            first.ruri.clone(),
            first.dest,
            first.dest.addr,
        );
        if let Some(cid) = caller_id {
            // The caller-ID the carrier is to present (its trunk's setting).
            let (host, _) = self.ctx.sent_by(first.dest.protocol);
            b.local_uri = Bytes::from(format!("<sip:{cid}@{host}>"));
            b_invite.set(
                HeaderName::From,
                dialog::with_tag(&b.local_uri, &b.local_tag),
            );
        }
        let b_call_id = b.call_id.clone();
        let old = std::mem::replace(&mut self.core().b_call_id, b_call_id.clone());
        if !old.is_empty() {
            self.old_b_ids.push(old);
        }
        let b_invite = Arc::new(b_invite);
        {
            let core = self.core();
            core.b = b;
            core.b_invite = b_invite.clone();
            core.b_dest = first.dest;
            core.cdr.target = target;
        }
        self.ctx.directory.register(b_call_id, self.myself.clone());
        self.best_failure = None;
        self.cancel_pending = false;
        let mut txs = self.send_forks(&b_invite, forks);
        txs.push(self.new_client_tx(Leg::B, Role::BInvite, b_invite, branch, first.dest));
        txs
    }

    /// Tells a restarted agent how its offer stands: still ringing (nothing to say: the
    /// outcome comes), answered by it, or over.
    fn on_agent_resync(&mut self, agent: Arc<str>, offer: u64) {
        use crate::actors::agent::{AgentMsg, OfferOutcome};
        if self.offer_forks.iter().any(|f| f.offer == offer) {
            return;
        }
        let Some(cc) = self.cc() else { return };
        let Some(q) = self.core.as_ref().and_then(|c| c.queue.clone()) else {
            return;
        };
        let outcome = if q.answered_offer == Some(offer) {
            OfferOutcome::Answered
        } else if q.waiting && !self.ended_offers.contains(&offer) {
            // Not seen yet: the queue's Offer may still be on its way here. The agent stays
            // offered; the offer's outcome, or the agent's guard timer, frees it.
            return;
        } else {
            OfferOutcome::Cancelled
        };
        crate::actors::agent::tell(
            &cc,
            &q.tenant,
            &agent,
            AgentMsg::OfferEnded { offer, outcome },
        );
    }

    /// Tells a restarted queue where this caller stands.
    fn on_queue_resync(&mut self) {
        use crate::actors::queue::{CallerState, QueueMsg};
        let Some(cc) = self.cc() else { return };
        let Some(q) = self.core.as_ref().and_then(|c| c.queue.clone()) else {
            return;
        };
        let state = if q.waiting {
            CallerState::Waiting {
                ringing: self
                    .offer_forks
                    .iter()
                    .map(|f| (f.offer, f.agent.clone()))
                    .collect(),
            }
        } else {
            match (q.answered_offer, q.agent.clone()) {
                (Some(offer), Some(agent)) => CallerState::Answered { offer, agent },
                _ => CallerState::Gone {
                    abandoned: q.abandoned,
                },
            }
        };
        let call_id = self.a_call_id_str();
        crate::actors::queue::tell(
            &cc,
            &q.tenant,
            &q.queue,
            QueueMsg::CallerState { call_id, state },
        );
    }

    /// Whether B-leg responses are offers to agents (failures go back to the queue
    /// instead of to the caller).
    fn offering(&self) -> bool {
        !self.offer_forks.is_empty()
    }

    /// An offer's fork failed. When it was the last one ringing the caller waits again.
    fn offer_fork_failed(&mut self, tx: u32, status: u16) {
        use crate::actors::agent::OfferOutcome;
        let Some(i) = self.offer_forks.iter().position(|f| f.tx == tx) else {
            return;
        };
        let f = self.offer_forks.remove(i);
        self.stale_forks.push(tx);
        // An agent with several phones: the offer failed only when all its phones did.
        if !self.offer_forks.iter().any(|o| o.offer == f.offer) {
            self.report_offer(&f, OfferOutcome::from_status(status, f.rang));
        }
        if self.offer_forks.is_empty() {
            self.back_to_queue();
        }
    }

    /// Every fork of the offer is over unanswered: wait in the queue again.
    fn back_to_queue(&mut self) {
        self.cancel_no_answer();
        self.best_failure = None;
        self.set_phase(Phase::Queued);
        self.join_queue();
    }

    /// The ring timeout of an offer: cancel its forks, report no answer, wait again.
    fn offer_timed_out(&mut self) {
        use crate::actors::agent::OfferOutcome;
        let forks = std::mem::take(&mut self.offer_forks);
        let mut reported: Vec<u64> = Vec::new();
        for f in &forks {
            self.withdraw_fork(f.tx);
            if !reported.contains(&f.offer) {
                reported.push(f.offer);
                self.report_offer(f, OfferOutcome::NoAnswer);
            }
        }
        self.back_to_queue();
    }

    /// CANCELs a ringing fork (or marks it for CANCEL at its first provisional) and
    /// remembers it as stale.
    fn withdraw_fork(&mut self, tx: u32) {
        use crate::sip::transaction::ClientInviteState as CI;
        self.stale_forks.push(tx);
        let state = self
            .txs
            .iter()
            .find(|t| t.id == tx)
            .and_then(|t| match &t.fsm {
                Transaction::ClientInvite(c) => Some(c.state()),
                _ => None,
            });
        match state {
            Some(CI::Proceeding) => self.cancel_fork(tx),
            Some(CI::Calling) => self.cancel_pending = true,
            _ => {}
        }
    }

    /// The answering fork wins the offer: its agent is on the call, the other agents'
    /// offers are cancelled.
    fn offer_answered(&mut self, tx: u32) {
        use crate::actors::agent::OfferOutcome;
        let forks = std::mem::take(&mut self.offer_forks);
        let Some(winner) = forks.iter().find(|f| f.tx == tx).cloned() else {
            return;
        };
        for f in forks.iter().filter(|f| f.tx != tx) {
            self.stale_forks.push(f.tx);
        }
        let now = now_unix_ms() as u64;
        if let Some(q) = self.core().queue.as_mut() {
            q.agent = Some(winner.agent.clone());
            q.answered_offer = Some(winner.offer);
            q.wait_ms = Some(now.saturating_sub(q.joined_ms));
            q.waiting = false;
        }
        self.report_offer(&winner, OfferOutcome::Answered);
        let mut reported = vec![winner.offer];
        for f in &forks {
            if !reported.contains(&f.offer) {
                reported.push(f.offer);
                self.report_offer(f, OfferOutcome::Cancelled);
            }
        }
    }

    /// The caller left while waiting or while an agent was ringing.
    fn abandon_queue(&mut self) {
        use crate::actors::agent::OfferOutcome;
        let Some(q) = self.core().queue.clone() else {
            return;
        };
        if !q.waiting {
            return;
        }
        if let Some(qm) = self.core().queue.as_mut() {
            qm.waiting = false;
            qm.abandoned = true;
        }
        let forks = std::mem::take(&mut self.offer_forks);
        let mut reported: Vec<u64> = Vec::new();
        for f in &forks {
            self.withdraw_fork(f.tx);
            if !reported.contains(&f.offer) {
                reported.push(f.offer);
                self.report_offer(f, OfferOutcome::Cancelled);
            }
        }
        self.leave_queue(true);
    }

    fn leave_queue(&mut self, abandoned: bool) {
        if let Some(id) = self.keepalive.take() {
            self.ctx.timers.cancel(id);
        }
        let Some(cc) = self.cc() else { return };
        let Some(q) = self.core().queue.clone() else {
            return;
        };
        let call_id = self.a_call_id_str();
        crate::actors::queue::tell(
            &cc,
            &q.tenant,
            &q.queue,
            crate::actors::queue::QueueMsg::Leave { call_id, abandoned },
        );
    }

    /// The queue sends the caller elsewhere.
    fn on_overflow(&mut self, target: crate::config::CcTarget) {
        use crate::config::CcTarget;
        let queued = self
            .core
            .as_ref()
            .is_some_and(|c| c.phase == Phase::Queued && !c.ended);
        if !queued {
            return;
        }
        if let Some(id) = self.keepalive.take() {
            self.ctx.timers.cancel(id);
        }
        match target {
            CcTarget::Queue(other) => {
                tracing::info!(to = %other, "caller overflows to another queue");
                if let Some(q) = self.core().queue.as_mut() {
                    q.queue = Arc::from(other.as_str());
                    q.joined_ms = now_unix_ms() as u64;
                }
                self.core().cdr.route = format!("queue:{other}");
                self.join_queue();
            }
            CcTarget::User(user) => {
                let tenant = self.core().queue.as_ref().map(|q| q.tenant.clone());
                let bindings = match (self.cc(), tenant) {
                    (Some(cc), Some(t)) => cc.location.lookup(&t, &user),
                    _ => Vec::new(),
                };
                if let Some(q) = self.core().queue.as_mut() {
                    q.waiting = false;
                }
                if bindings.is_empty() {
                    return self.fail_queued(
                        480,
                        "Temporarily Unavailable",
                        "overflow user not registered",
                    );
                }
                // From here on an ordinary call to the user's phones: failures are relayed.
                let forks = Fork::all(&bindings);
                self.place_b_leg(
                    &forks,
                    Bytes::from(user.clone()),
                    format!("user:{user}"),
                    None,
                );
                self.no_answer =
                    Some(self.schedule_call_timer(CallTimer::NoAnswer, self.ctx.no_answer));
                self.set_phase(Phase::Setup);
            }
            CcTarget::Status(code) => {
                if let Some(q) = self.core().queue.as_mut() {
                    q.waiting = false;
                }
                self.fail_queued(code, reason_phrase(code), "queue overflow")
            }
            CcTarget::Number(_) => {
                if let Some(q) = self.core().queue.as_mut() {
                    q.waiting = false;
                }
                self.fail_queued(480, "Temporarily Unavailable", "overflow number unresolved")
            }
        }
    }

    /// Ends a caller that never reached an agent with a final failure.
    fn fail_queued(&mut self, status: u16, reason: &str, why: &str) {
        if self.a_answered() {
            return self.hang_up_answered_caller(HangupBy::System, why);
        }
        let resp = self.a_response(status, reason, false);
        self.respond_a_invite(resp);
        self.end(status, HangupBy::System, why);
    }

    /// Ends the call of a caller the switch answered (waiting with music, or its agent
    /// ringing): a BYE to the caller, the ringing agent cancelled.
    fn hang_up_answered_caller(&mut self, by: HangupBy, why: &str) {
        self.abandon_queue();
        if let Some((id, ..)) = self.resend_2xx.take() {
            self.ctx.timers.cancel(id);
        }
        self.cancel_b();
        self.end(200, by, why);
        if by != HangupBy::Caller {
            self.after_cdr(AfterCdr::Bye(Leg::A));
        }
    }

    /// After the call ends: the agent moves on, the queue counts the handle time, a caller
    /// still listed leaves.
    fn queue_call_ended(&mut self) {
        let Some(q) = self.core().queue.clone() else {
            return;
        };
        if q.waiting {
            if let Some(qm) = self.core().queue.as_mut() {
                qm.waiting = false;
            }
            self.leave_queue(false);
        }
        if let Some(id) = self.keepalive.take() {
            self.ctx.timers.cancel(id);
        }
        let (Some(agent), Some(cc)) = (q.agent.clone(), self.cc()) else {
            return;
        };
        let call_id = self.a_call_id_str();
        crate::actors::agent::forget_call(&cc.agent_calls, &q.tenant, &agent, &call_id);
        crate::actors::agent::tell(
            &cc,
            &q.tenant,
            &agent,
            crate::actors::agent::AgentMsg::CallEnded { call_id },
        );
        let talk_ms = match (self.core().cdr.answer_ms, self.core().cdr.end_ms) {
            (Some(a), Some(e)) => (e - a).max(0) as u64,
            _ => 0,
        };
        crate::actors::queue::tell(
            &cc,
            &q.tenant,
            &q.queue,
            crate::actors::queue::QueueMsg::CallEnded { talk_ms },
        );
    }

    // ---- trunks: one attempt after another along the call's plan ----

    fn trunk_tx(&self) -> Option<u32> {
        self.trunk_leg
            .as_ref()
            .and_then(|l| l.current.as_ref())
            .map(|c| c.tx)
    }

    /// Tells the trunk's actor how an attempt ended, on whichever node owns the trunk.
    fn report_attempt(&self, trunk: &str, report: AttemptReport) {
        if let Some(cc) = self.cc() {
            trunk::report(trunk, &cc.node, report, cc.remote.get());
        }
    }

    fn cancel_invite_timer(&mut self) {
        if let Some(id) = self.invite_timer.take() {
            self.ctx.timers.cancel(id);
        }
    }

    /// Sends the B leg to the next trunk of the plan that has a channel and a CPS token;
    /// with none left the caller gets 503.
    fn next_trunk(&mut self) {
        loop {
            let next = self.trunk_leg.as_mut().and_then(|l| {
                l.plan
                    .pop_front()
                    .map(|t| (t, false))
                    .or_else(|| l.last_resort.pop_front().map(|t| (t, true)))
            });
            let Some((t, last_resort)) = next else {
                let tried = self
                    .trunk_leg
                    .as_ref()
                    .map(|l| l.attempts.join(","))
                    .unwrap_or_default();
                let resp = self.a_response(503, "Service Unavailable (No Trunk Available)", false);
                self.respond_a_invite(resp);
                self.end(503, HangupBy::System, &format!("no trunk left ({tried})"));
                return;
            };
            let seized = if last_resort {
                t.seize_last_resort()
            } else {
                t.seize()
            };
            let gw = match seized {
                Ok(()) => match t.gateway() {
                    Some(gw) => gw,
                    None => {
                        t.release();
                        continue;
                    }
                },
                Err(cause) => {
                    metrics::counter!(trunk::TRUNK_FAILOVERS, "trunk" => t.id.to_string(), "cause" => cause.label()).increment(1);
                    if let Some(l) = self.trunk_leg.as_mut() {
                        l.attempts.push(format!("{}:{}", t.id, cause.label()));
                    }
                    continue;
                }
            };
            let dialled = t.rewrite(&self.core().cdr.callee);
            let fork = Fork {
                ruri: Bytes::from(format!(
                    "sip:{dialled}@{}{}",
                    gw.addr,
                    gw.protocol.uri_param()
                )),
                dest: Dest {
                    protocol: gw.protocol,
                    addr: gw.addr,
                    conn: None,
                },
            };
            let caller_id = t.config.caller_id.clone();
            let txs = self.place_b_leg(
                &[fork],
                Bytes::from(dialled),
                format!("trunk:{}", t.id),
                caller_id.as_deref(),
            );
            metrics::counter!(trunk::TRUNK_ATTEMPTS, "trunk" => t.id.to_string()).increment(1);
            self.core().trunk = Some(t.id.clone());
            self.checkpoint();
            let timeout = Duration::from_millis(t.config.invite_timeout_ms);
            if let (Some(l), Some(&tx)) = (self.trunk_leg.as_mut(), txs.last()) {
                l.current = Some(TrunkAttempt {
                    trunk: t,
                    tx,
                    authenticated: false,
                    sent: Instant::now(),
                    responded: false,
                    pdd_ms: None,
                    answered_at: None,
                });
            }
            self.cancel_invite_timer();
            self.invite_timer = Some(self.schedule_call_timer(CallTimer::InviteTimeout, timeout));
            if self.no_answer.is_none() {
                self.no_answer =
                    Some(self.schedule_call_timer(CallTimer::NoAnswer, self.ctx.no_answer));
            }
            return;
        }
    }

    /// A response on the current trunk attempt. True when it was a failover cause and the
    /// call moved on to the next trunk (nothing to relay).
    fn trunk_response(&mut self, tx: u32, _resp: &Message, status: u16) -> bool {
        let Some(cur) = self
            .trunk_leg
            .as_mut()
            .and_then(|l| l.current.as_mut())
            .filter(|c| c.tx == tx)
        else {
            return false;
        };
        cur.responded = true;
        if (180..300).contains(&status) && cur.pdd_ms.is_none() {
            cur.pdd_ms = Some(cur.sent.elapsed().as_millis() as u64);
        }
        if (200..300).contains(&status) && cur.answered_at.is_none() {
            cur.answered_at = Some(Instant::now());
            metrics::counter!(trunk::TRUNK_ANSWERS, "trunk" => cur.trunk.id.to_string())
                .increment(1);
        }
        if status < 300 {
            // Any response, 100 Trying included, shows the trunk alive.
            self.cancel_invite_timer();
            return false;
        }
        self.cancel_invite_timer();
        if matches!(status, 401 | 407) && self.trunk_authenticate(_resp, status) {
            return true;
        }
        match classify(Some(status), false) {
            outcome @ Outcome::Failover(_) => self.trunk_failed(outcome, Some(status)),
            _ => false,
        }
    }

    /// The carrier challenged our INVITE: send it again with credentials (RFC 3261 §22.2),
    /// once per attempt. False without credentials or after a second challenge (then the
    /// challenge is a failover cause: the carrier refused us, not the callee).
    fn trunk_authenticate(&mut self, resp: &Message, status: u16) -> bool {
        use crate::sip::auth::{authorization_value, ha1, Challenge};
        let Some(cur) = self.trunk_leg.as_ref().and_then(|l| l.current.as_ref()) else {
            return false;
        };
        let (Some(user), Some(password)) = (
            cur.trunk.config.auth_username.clone(),
            cur.trunk.config.auth_password.clone(),
        ) else {
            return false;
        };
        if cur.authenticated {
            return false;
        }
        let old_tx = cur.tx;
        let (challenge_header, credentials_header) = if status == 407 {
            (
                HeaderName::ProxyAuthenticate,
                HeaderName::ProxyAuthorization,
            )
        } else {
            (HeaderName::WwwAuthenticate, HeaderName::Authorization)
        };
        let Some(challenge) = resp
            .value(challenge_header)
            .and_then(|v| Challenge::parse(v).ok())
        else {
            return false;
        };
        let dest = self.core().b_dest;
        // The challenged transaction ACKs its 401/407 itself; anything more from it is
        // ignored.
        self.stale_forks.push(old_tx);
        let mut invite = (*self.core().b_invite).clone();
        let uri = invite
            .request_uri()
            .map(|u| String::from_utf8_lossy(u).into_owned())
            .unwrap_or_default();
        let key = ha1(challenge.algorithm, &user, &challenge.realm, &password);
        let cnonce = String::from_utf8_lossy(&random_token(12)).into_owned();
        let value = authorization_value(&challenge, &user, &key, "INVITE", &uri, 1, &cnonce);
        self.core().b.local_cseq += 1;
        let cseq = self.core().b.local_cseq;
        let branch = new_branch();
        invite.set(HeaderName::Via, self.ctx.via(dest.protocol, &branch));
        invite.set(HeaderName::CSeq, cseq_value(cseq, &Method::Invite));
        invite.set(credentials_header, value);
        let invite = Arc::new(invite);
        self.core().b_invite = invite.clone();
        let tx = self.new_client_tx(Leg::B, Role::BInvite, invite, branch, dest);
        let timeout = Duration::from_millis(cur_timeout(self));
        if let Some(cur) = self.trunk_leg.as_mut().and_then(|l| l.current.as_mut()) {
            cur.tx = tx;
            cur.authenticated = true;
            cur.responded = false;
        }
        self.invite_timer = Some(self.schedule_call_timer(CallTimer::InviteTimeout, timeout));
        true
    }

    /// The current attempt failed over: report it, give its channel back, try the next
    /// trunk. False when no trunk is left (the failure is then the caller's answer).
    fn trunk_failed(&mut self, outcome: Outcome, status: Option<u16>) -> bool {
        let Some(cur) = self.trunk_leg.as_mut().and_then(|l| l.current.take()) else {
            return false;
        };
        self.cancel_invite_timer();
        let label = match outcome {
            Outcome::Failover(c) => c.label(),
            _ => "failed",
        };
        if let Some(l) = self.trunk_leg.as_mut() {
            l.attempts.push(format!("{}:{label}", cur.trunk.id));
        }
        cur.trunk.release();
        self.core().trunk = None;
        self.report_attempt(
            &cur.trunk.id,
            AttemptReport {
                outcome,
                status,
                pdd_ms: cur.pdd_ms,
                duration_ms: None,
                media: None,
            },
        );
        let waiting = self
            .core
            .as_ref()
            .is_some_and(|c| matches!(c.phase, Phase::Setup | Phase::Early) && !c.ended);
        let more = self
            .trunk_leg
            .as_ref()
            .is_some_and(|l| !l.plan.is_empty() || !l.last_resort.is_empty());
        if !(waiting && more) {
            return false;
        }
        // The abandoned attempt: a late provisional is CANCELled, a late 2xx ended.
        self.stale_forks.push(cur.tx);
        self.withdraw_fork(cur.tx);
        if !cur.responded {
            self.stop_retransmitting(cur.tx);
        }
        self.next_trunk();
        true
    }

    /// No response at all from the trunk in its INVITE timeout.
    fn trunk_timed_out(&mut self) {
        let silent = self
            .trunk_leg
            .as_ref()
            .and_then(|l| l.current.as_ref())
            .is_some_and(|c| !c.responded);
        if !silent {
            return;
        }
        let tx = self.trunk_tx();
        if self.trunk_failed(Outcome::Failover(FailoverCause::Timeout), None) {
            return;
        }
        // No trunk left: the caller gets the failure now rather than after Timer B.
        if let Some(tx) = tx {
            self.stale_forks.push(tx);
            self.withdraw_fork(tx);
            self.stop_retransmitting(tx);
        }
        let resp = self.a_response(503, "Service Unavailable (All Trunks Failed)", false);
        self.respond_a_invite(resp);
        self.end(503, HangupBy::System, "no trunk answered");
    }

    /// Gives up on a silent attempt like a proxy's final-response timer does (Kamailio's
    /// fr_timer): no more retransmissions of its INVITE (Timer A off). The transaction stays
    /// until Timer B, so a late answer is still CANCELled or ended.
    fn stop_retransmitting(&mut self, tx: u32) {
        let id = self
            .txs
            .iter_mut()
            .find(|t| t.id == tx)
            .and_then(|t| t.timers[TimerName::A as usize].take());
        if let Some(id) = id {
            self.ctx.timers.cancel(id);
        }
    }

    /// The call is over: its attempt's result goes to the trunk, its channel back.
    fn trunk_call_ended(&mut self, final_status: u16) {
        self.cancel_invite_timer();
        // The carrier's leg (B) as measured by the relay, for the trunk's quality score.
        let media = self
            .core
            .as_ref()
            .and_then(|c| c.cdr.quality)
            .map(|[_, b]| b)
            .filter(|b| b.packets > 0)
            .map(|b| crate::routing::trunks::MediaQuality {
                loss: b.loss,
                jitter_ms: b.jitter_ms,
                mos: b.mos,
            });
        if let Some(cur) = self.trunk_leg.as_mut().and_then(|l| l.current.take()) {
            let (outcome, duration_ms) = match cur.answered_at {
                Some(at) => (Outcome::Answered, Some(at.elapsed().as_millis() as u64)),
                None => (classify(Some(final_status), false), None),
            };
            let outcome = match outcome {
                // The caller hung up first: not the trunk's failure.
                Outcome::Failover(_) if final_status == 487 => Outcome::CalleeFinal,
                o => o,
            };
            let label = match outcome {
                Outcome::Answered => "answered".to_string(),
                _ => final_status.to_string(),
            };
            if let Some(l) = self.trunk_leg.as_mut() {
                l.attempts.push(format!("{}:{label}", cur.trunk.id));
            }
            self.report_attempt(
                &cur.trunk.id,
                AttemptReport {
                    outcome,
                    status: Some(final_status),
                    pdd_ms: cur.pdd_ms,
                    duration_ms,
                    media,
                },
            );
        }
        if let Some(l) = &self.trunk_leg {
            let attempts = l.attempts.join(",");
            self.core().cdr.attempts = Some(attempts);
        }
    }

    /// Gives the trunk channel back (also when a restarted actor ends the call).
    fn release_trunk_channel(&mut self) {
        if let Some(id) = self.core.as_mut().and_then(|c| c.trunk.take()) {
            if let Some(t) = self.ctx.trunks.get().and_then(|table| table.get(&id)) {
                t.release();
            }
        }
    }

    // ---- the end ----

    /// The call is over for its users: count it, write the CDR, free the admission slot.
    /// Transactions may linger a while to absorb retransmissions.
    fn end(&mut self, final_status: u16, by: HangupBy, reason: &str) {
        let ctx = self.ctx.clone();
        let core = self.core();
        if core.ended {
            return;
        }
        core.ended = true;
        core.phase = Phase::Ended;
        core.cdr.end_ms = Some(now_unix_ms());
        if core.cdr.final_status == 0 || core.cdr.answer_ms.is_none() {
            core.cdr.final_status = final_status;
        }
        core.cdr.hangup_by = Some(by);
        core.cdr.reason = reason.to_string();
        if let Some(id) = self.announce.take() {
            self.ctx.timers.cancel(id);
        }
        self.release_media();
        self.queue_call_ended();
        self.trunk_call_ended(final_status);
        self.orig_call_ended(final_status);
        let core = self.core();
        if core.cdr.answer_ms.is_none() {
            metrics::counter!(CALLS_FAILED, "status" => status_label(final_status)).increment(1);
        }
        let hangup = match by {
            HangupBy::Caller => "caller",
            HangupBy::Callee => "callee",
            HangupBy::System => "system",
        };
        metrics::counter!(CALLS_ENDED, "by" => hangup).increment(1);
        let cdr = core.to_cdr();
        self.cancel_call_timers();
        ctx.active.fetch_sub(1, Ordering::Relaxed);
        ctx.set_active_gauge();
        match ctx.store() {
            Some(store) => {
                let (stored, committed) = tokio::sync::oneshot::channel();
                match store_writer::write_cdr_acked(&store, cdr, stored) {
                    Ok(()) => self.await_cdr(committed),
                    Err(e) => {
                        metrics::counter!(CDR_NOT_DURABLE, "reason" => "no_writer").increment(1);
                        tracing::error!(error = %e, "CDR writer unavailable: CDR lost");
                    }
                }
            }
            None if ctx.store_name.is_some() => {
                metrics::counter!(CDR_NOT_DURABLE, "reason" => "no_writer").increment(1);
                tracing::error!("CDR writer not running: CDR lost");
            }
            None => {}
        }
        self.after_cdr(AfterCdr::ReleaseChannel);
        self.checkpoint();
    }

    /// Holds the hangup's last messages ([`AfterCdr`]) until the writer says the CDR is
    /// committed, for at most [`CDR_DURABLE_WAIT_LIMIT`]: the wait runs in a task, which tells
    /// the actor with [`CallMsg::CdrStored`].
    fn await_cdr(&mut self, committed: tokio::sync::oneshot::Receiver<bool>) {
        self.after_cdr = Some(Vec::new());
        let me = self.myself.clone();
        let started = Instant::now();
        tokio::spawn(async move {
            let stored = match tokio::time::timeout(CDR_DURABLE_WAIT_LIMIT, committed).await {
                Ok(Ok(true)) => {
                    metrics::histogram!(CDR_DURABLE_WAIT).record(started.elapsed().as_secs_f64());
                    true
                }
                Ok(_) => {
                    metrics::counter!(CDR_NOT_DURABLE, "reason" => "failed").increment(1);
                    false
                }
                Err(_) => {
                    metrics::counter!(CDR_NOT_DURABLE, "reason" => "timeout").increment(1);
                    tracing::warn!(
                        "CDR not committed within {CDR_DURABLE_WAIT_LIMIT:?}: hangup goes on"
                    );
                    false
                }
            };
            let _ = me.cast(CallMsg::CdrStored(stored));
        });
    }

    /// Runs `step` once the call's CDR is durable (at once if nothing is awaited).
    fn after_cdr(&mut self, step: AfterCdr) {
        match self.after_cdr.as_mut() {
            Some(waiting) => waiting.push(step),
            None => self.run_after_cdr(step),
        }
    }

    /// The CDR is committed (or will not be soon): the held messages go out.
    fn cdr_stored(&mut self) {
        let (release, steps): (Vec<_>, Vec<_>) = self
            .after_cdr
            .take()
            .unwrap_or_default()
            .into_iter()
            .partition(|s| matches!(s, AfterCdr::ReleaseChannel));
        for step in steps.into_iter().chain(release) {
            self.run_after_cdr(step);
        }
        self.checkpoint();
    }

    fn run_after_cdr(&mut self, step: AfterCdr) {
        match step {
            AfterCdr::Respond(tx, status, reason) => self.respond(tx, status, reason, None),
            AfterCdr::Relay(leg, msg, server) => self.relay_request(leg, &msg, server),
            AfterCdr::Bye(leg) => self.send_bye(leg),
            AfterCdr::ReleaseChannel => self.release_trunk_channel(),
        }
    }
}

impl Checkpoint {
    fn to_cdr(&self) -> Cdr {
        let d = &self.cdr;
        let end = d.end_ms.unwrap_or_else(now_unix_ms);
        Cdr {
            a_call_id: String::from_utf8_lossy(&self.a_call_id).into_owned(),
            b_call_id: Some(String::from_utf8_lossy(&self.b_call_id).into_owned()),
            caller: d.caller.clone(),
            callee: d.callee.clone(),
            route: Some(d.route.clone()),
            target: Some(d.target.clone()),
            start_at: d.start_ms,
            ringing_at: d.ringing_ms,
            answer_at: d.answer_ms,
            end_at: end,
            duration_ms: end - d.start_ms,
            billable_ms: d.answer_ms.map(|a| end - a).unwrap_or(0),
            final_status: d.final_status,
            hangup_by: d.hangup_by.unwrap_or(HangupBy::System),
            disconnect_reason: d.reason.clone(),
            queue: self
                .queue
                .as_ref()
                .map(|q| format!("{}/{}", q.tenant, q.queue)),
            agent: self
                .queue
                .as_ref()
                .and_then(|q| q.agent.as_ref().map(|a| a.to_string())),
            wait_ms: self.queue.as_ref().map(|q| {
                q.wait_ms
                    .map_or((end.max(0) as u64).saturating_sub(q.joined_ms), |w| w)
                    as i64
            }),
            abandoned: self.queue.as_ref().is_some_and(|q| q.abandoned),
            trunk: self.cdr.target.strip_prefix("trunk:").map(str::to_string),
            attempts: d.attempts.clone(),
            dtmf: (!d.dtmf.is_empty()).then(|| d.dtmf.clone()),
            recording: d.recording.clone(),
            media: d.quality.map(|[a, b]| crate::store::CdrMedia {
                mos_a: a.mos,
                mos_b: b.mos,
                loss_a: a.loss,
                loss_b: b.loss,
                jitter_a_ms: a.jitter_ms,
                jitter_b_ms: b.jitter_ms,
                rtt_ms: a.rtt_ms.or(b.rtt_ms),
                packets_a: a.packets as i64,
                packets_b: b.packets as i64,
            }),
        }
    }
}

/// The B dialog of a call whose B leg is not placed yet (queued, or waiting for the agent
/// of a click-to-call): filled in when the first B INVITE goes out.
fn pending_b_dialog() -> Dialog {
    Dialog {
        call_id: Bytes::new(),
        local_tag: Bytes::new(),
        remote_tag: Bytes::new(),
        local_uri: Bytes::new(),
        remote_uri: Bytes::new(),
        remote_target: Bytes::new(),
        route_set: Vec::new(),
        local_cseq: 1,
        remote_cseq: None,
    }
}

/// The current trunk attempt's INVITE timeout.
fn cur_timeout(state: &CallState) -> u64 {
    state
        .trunk_leg
        .as_ref()
        .and_then(|l| l.current.as_ref())
        .map_or(3000, |c| c.trunk.config.invite_timeout_ms)
}

/// Which failure to relay when every fork failed (lower is better), after RFC 3261 §16.7:
/// a 6xx is final everywhere; a callee's 4xx (busy, declined) says more than a redirect, a
/// server failure or a timeout.
fn fork_rank(status: u16) -> u8 {
    match status {
        600..=699 => 0,
        408 => 4,
        400..=499 => 1,
        300..=399 => 2,
        _ => 3,
    }
}

fn resp_reason(resp: &Message) -> String {
    match &resp.start {
        crate::sip::message::StartLine::Response { reason, .. } if !reason.is_empty() => {
            String::from_utf8_lossy(reason).into_owned()
        }
        _ => reason_phrase(resp.status().unwrap_or(500)).to_string(),
    }
}

/// Copies the extension headers a call needs end to end: Supported and Require without
/// 100rel (this switch does not relay PRACK, so a reliable provisional would never be
/// acknowledged), and the session timer's Session-Expires and Min-SE (RFC 4028), so that
/// the refresher one end is told to be actually refreshes the other end's session.
fn copy_extensions(from: &Message, to: &mut Message) {
    for name in [HeaderName::Supported, HeaderName::Require] {
        if let Some(v) = from
            .value(name)
            .and_then(|v| dialog::without_option_tag(v, "100rel"))
        {
            to.push(name, v);
        }
    }
    if let Some(v) = from.value(HeaderName::SessionExpires) {
        to.push(HeaderName::SessionExpires, v.clone());
    }
    if let Some(v) = from.other("Min-SE") {
        to.headers
            .push(crate::sip::message::Header::named("Min-SE", v.clone()));
    }
}

/// Copies the body and its content headers.
fn copy_body(from: &Message, to: &mut Message) {
    if !from.body.is_empty() {
        if let Some(ct) = from.content_type() {
            to.push(HeaderName::ContentType, ct.clone());
        }
        to.body = from.body.clone();
    }
}
