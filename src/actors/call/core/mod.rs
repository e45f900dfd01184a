//! The pure call core: everything a call does, as `step(event) -> effects`.
//!
//! A [`CallCore`] holds one call's state (its legs' dialogs, transactions, timers, the
//! contact-centre and trunk facts, the CDR draft) and changes it only in [`CallCore::step`]:
//! an [`Event`] (a SIP message on a leg, a timer, an API command, a message from a queue,
//! agent or trunk) comes in, [`Effect`]s (send, set or cancel a timer, a media command, tell
//! an actor, write the CDR, checkpoint) come out. It never touches a socket, a clock, a
//! timer wheel or another actor: the call actor ([`super::CallActor`]) executes the effects,
//! and the few facts it must ask the node for (media ports, a user's phones) come through
//! the [`Env`] trait. So every flow is tested without sockets (`tests.rs`), as
//! `sip::transaction` is.
//!
//! The behaviour is split by concern: `b2bua.rs` (the relay rules between the legs),
//! `transactions.rs`, `queue_leg.rs`, `trunk_leg.rs`, `originate.rs` (click-to-call),
//! `media.rs` (anchoring, SDP rewriting, music), `cdr.rs` (the end and the CDR),
//! `service.rs` (the test numbers the switch answers itself: echo, music), `flow.rs` (call
//! flows: IVR menus the switch runs before the call goes on).

use bytes::{BufMut, Bytes, BytesMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    Fork, NewCall, Offer, CALLS_ANSWERED, CALLS_ENDED, CALLS_FAILED, CALLS_RESTORED, CALL_SETUP,
    CLICK_TO_CALL, DIALOG_481, TRANSACTIONS_ACTIVE, TRANSACTIONS_TIMED_OUT,
};
use crate::actors::router::{Retired, RetiredResponse, Route};
use crate::actors::trunk::{self, AttemptReport, TrunkShared};
use crate::media::relay::Side;
use crate::routing::trunks::{classify, FailoverCause, Outcome};
use crate::sip::dialog::{
    self, ack_for_failure, cancel_for, cseq_value, new_branch, random_token, Dialog,
};
use crate::sip::message::{reason_phrase, response_to, HeaderName, Message, Method};
use crate::sip::transaction::{
    Action, Event as TxEvent, Kind, Reliability, TimerName, Transaction,
};
use crate::store::{Cdr, HangupBy};
use crate::transport::{status_label, Dest, Inbound, Protocol, Source};

mod b2bua;
mod cdr;
mod conference;
mod consult;
mod effects;
pub(crate) mod flow;
pub(crate) mod media;
pub(crate) mod mixing;
mod originate;
mod queue_leg;
mod replaces;
pub(crate) mod service;
#[cfg(test)]
mod tests;
mod transactions;
pub(crate) mod transfer;
mod trunk_leg;
mod view;

pub use consult::{consult_key, consult_owner, describe as consult_describe};
pub use effects::{
    CallConfig, Effect, Env, MediaOp, MediaPorts, MediaSettings, MixLeg, MixOp, Refusal, Seat,
    TargetError, Tell, TimerFire, TimerKey, TransferTarget, WebhookRequest, WebhookResult,
};
pub use media::{info_digit, RecordingCommand};
pub use mixing::{describe as mixing_describe, MixKind, MonitorMode, Party};
pub use transfer::{HandedLeg, Refused, Replaces};
pub use view::{CallView, ConsultView, LegView, QueueView, TransferView};

/// The API's call-control commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// The customer's leg hears music, the agent's hears nothing.
    Hold,
    Unhold,
    /// A blind transfer of the agent's leg to a tenant number or user.
    Transfer {
        target: String,
    },
    /// The customer holds while the agent talks to `target`.
    Consult {
        target: String,
    },
    /// The consultation's target takes the agent's place (an attended transfer).
    ConsultComplete,
    /// The consultation ends; the agent is back with the customer.
    ConsultCancel,
    /// The consultation becomes a three-way: the customer joins the agent and the target.
    ConsultConference,
    /// A third party joins the caller and the agent (a three-way call).
    Conference {
        target: String,
    },
    /// The three-way's third party is let go.
    ConferenceEnd,
    /// A party of a three-way is muted (nobody hears it) or made deaf (it hears nobody), or
    /// no longer; `None` leaves that switch as it is.
    ConferenceParty {
        party: Party,
        mute: Option<bool>,
        deaf: Option<bool>,
    },
    /// A supervisor joins the call in a mode.
    Monitor {
        supervisor: String,
        mode: MonitorMode,
    },
    /// The monitor goes on in another mode.
    MonitorMode(MonitorMode),
    /// The supervisor is let go.
    MonitorEnd,
    /// The caller's leg (or the callee's) moves into the tenant's conference `id`; the
    /// other leg is let go.
    JoinConference {
        tenant: Arc<str>,
        id: Arc<str>,
        callee: bool,
    },
}

/// How often a queued caller reminds its queue that it waits.
const QUEUE_KEEPALIVE: Duration = Duration::from_secs(5);

/// What happens to a call: the core's input.
pub enum Event {
    /// A new call handed over by the router (or the API, for click-to-call).
    New(Box<NewCall>),
    /// A restarted actor resumes the call from its checkpoint.
    Restore(Box<Checkpoint>),
    /// A SIP message for this call arrived.
    Sip(Box<Inbound>),
    /// A timer the core set fired.
    Timer(TimerFire, TimerKey),
    /// Ends the call from the switch (BYE to both legs).
    Hangup(String),
    /// A queue offers this (queued) call to an agent.
    Offer(Box<Offer>),
    /// The queue sends the caller elsewhere (full, waited too long, emptied).
    QueueOverflow(crate::config::CcTarget),
    /// A restarted queue asks where this caller stands.
    QueueResync,
    /// A restarted agent asks how its offer stands.
    AgentResync { agent: Arc<str>, offer: u64 },
    /// The relay detected a DTMF digit on a leg.
    Dtmf {
        side: crate::media::relay::Side,
        digit: char,
        source: crate::media::relay::DtmfSource,
    },
    /// The queue says where a waiting caller stands (for its announcement).
    QueuePosition {
        position: u32,
        wait_secs: Option<u64>,
    },
    /// The call's CDR is committed (`true`), or will not be soon: what waited goes on.
    CdrStored(bool),
    /// The relay saw no media from either leg for `media.rtp_timeout_secs`.
    MediaTimeout,
    /// The consultation call of an attended transfer handed its leg over (or why not).
    Adopt(Result<Box<HandedLeg>, String>),
    /// The agent a transfer goes to was reserved (its phones), or why not.
    AgentReserved {
        tenant: Arc<str>,
        agent: Arc<str>,
        phones: Result<Vec<Fork>, String>,
    },
    /// A new INVITE with Replaces naming one of this call's dialogs, from the tenant user
    /// (tenant, user) it authenticated as, if any.
    Replacing {
        invite: Box<Inbound>,
        user: Option<(Arc<str>, Arc<str>)>,
    },
    /// A call flow's webhook answered (or did not).
    WebhookAnswered { seq: u32, result: WebhookResult },
}

/// The clock as the actor read it when the event arrived.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub mono: Instant,
    /// Wall clock, milliseconds since the Unix epoch (CDR times).
    pub wall_ms: i64,
}

impl Now {
    pub fn read() -> Now {
        Now {
            mono: Instant::now(),
            wall_ms: crate::store::now_unix_ms(),
        }
    }
}

/// A click-to-call's agent side before and after the agent answers.
struct Originated {
    answered: bool,
    /// The ACK sent for the agent's 2xx (resent if the 2xx is).
    ack: Option<Bytes>,
}

/// A queued call's contact-centre facts (part of the checkpoint, and the CDR's).
#[derive(Clone, Debug)]
struct QueueLeg {
    tenant: Arc<str>,
    queue: Arc<str>,
    priority: u32,
    joined_ms: u64,
    /// Skills the caller needs on top of the queue's (a call flow's `set` step).
    skills: Vec<crate::routing::acd::Requirement>,
    /// The agent who answered, and the offer it answered.
    agent: Option<Arc<str>>,
    answered_offer: Option<u64>,
    wait_ms: Option<u64>,
    abandoned: bool,
    /// Still waiting in (or being offered by) the queue.
    waiting: bool,
    /// The agent left the call by a transfer (told then, not again at the end).
    released: bool,
}

/// One ringing fork of an offer: its B-leg transaction and the agent it rings.
#[derive(Clone, Debug)]
struct OfferFork {
    tx: u32,
    offer: u64,
    agent: Arc<str>,
    rang: bool,
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
    /// An API consultation's target did not answer in time.
    ConsultNoAnswer,
    /// The CDR's commit took too long: the hangup goes on without waiting more.
    CdrWait,
    /// A call flow's step: its prompt ended, or no input came in time.
    Flow,
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
    media: Option<crate::actors::router::MediaPolicy>,
    /// The tenant the call belongs to (its number's, queue's or caller's), if any.
    pub tenant: Option<Arc<str>>,
    /// The tenant user behind each leg (A, B), if the switch knows one (an authenticated
    /// caller, a user's or agent's phone): only such a leg may transfer the call.
    users: [Option<Arc<str>>; 2],
    /// The relay side each leg uses (A, B); swapped when the caller transfers itself away
    /// and the callee takes the caller's place.
    sides: [Side; 2],
    /// A transfer in progress (boxed: rare, and a checkpoint is copied at every phase).
    transfer: Option<Box<Transfer>>,
    /// The leg put on hold through the API (it hears music; the other hears nothing).
    held: Option<Leg>,
    /// The caller's leg is up already (answered by an earlier callee before a transfer): a
    /// new callee is offered the switch's own SDP and bridged when it answers.
    a_up: bool,
    /// An API consultation in progress (`Leg::X` is its target; boxed: rare).
    consult: Option<Box<Consult>>,
    /// An agent a transfer went to (reserved like for a click-to-call; told when its
    /// offer ends and when the call does): tenant, agent, answered.
    agent: Option<(Arc<str>, Arc<str>, bool)>,
    /// The leg moved into a standalone conference (the other was let go): the call is
    /// that leg alone, in the room's mix.
    seated: Option<Leg>,
    /// The call flow the caller is in (boxed: only while it runs).
    flow: Option<Box<flow::FlowRun>>,
}

/// An API consultation: the target's leg and the second relay session it talks on.
#[derive(Clone, Debug)]
struct Consult {
    target: String,
    leg: Parked,
    ports: MediaPorts,
    /// The target answered and the agent was moved onto the consultation session (for a
    /// three-way or monitor: the target answered and the three legs are in the mix).
    up: bool,
    /// Not a consultation but a three-way call or a supervisor's monitor: the target joins
    /// the call's mix instead of talking to the agent alone.
    mix: Option<mixing::MixKind>,
    /// A three-way's caller or agent that left (the other two stay connected).
    gone: Option<Leg>,
    /// A three-way's parties muted and deaf, by [`mixing::Party`] index.
    muted: [bool; 3],
    deaf: [bool; 3],
    /// A consultation completed as a conference: the agent talks on the second session
    /// (its A side), where the consultation had moved it.
    agent_on_consult: bool,
}

/// A transfer in progress: the new leg rings in the B position while the transferor waits
/// aside (`Leg::X`), reachable for the NOTIFYs of its REFER and its BYE.
#[derive(Clone, Debug)]
struct Transfer {
    /// `blind` or `attended`.
    kind: &'static str,
    /// Who asked (`A`, `B`, `api`), and where to, for the CDR.
    by: &'static str,
    target: String,
    /// The transferor's leg while the target rings; None once it is gone.
    transferor: Option<Parked>,
    /// The transferor asked with a REFER: it is told how it goes (NOTIFY, RFC 3515).
    notify: bool,
    /// The queue facts of the call before a transfer to a queue or an agent.
    queue_before: Option<QueueLeg>,
}

/// A leg out of the bridge: its dialog and where it is reached.
#[derive(Clone, Debug)]
struct Parked {
    dialog: Dialog,
    dest: Dest,
    invite: Arc<Message>,
    ack: Option<Bytes>,
    user: Option<Arc<str>>,
    side: Side,
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
    /// Legs A and B at the end of an anchored call (boxed: set only at the end).
    quality: Option<Box<[crate::media::quality::LegQuality; 2]>>,
    /// Who talked to whom: every leg that joined the call, in order.
    legs: Vec<crate::store::CdrLeg>,
    /// Transfers carried out, in order (`blind:B>user:1003`).
    transfers: Vec<String>,
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
    /// A re-INVITE of the switch's own (its SDP offer), and what its answer is for.
    Reoffer(Reoffer),
    /// Our INVITE to an API consultation's target.
    Consult,
}

/// Why the switch re-INVITEs a leg with its own offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reoffer {
    /// The leg handed over by an attended transfer's consultation call joins this call.
    Adopt,
    /// The transferee, after a transfer: its media afresh, sendrecv (it may have been held).
    Refresh,
    /// The agent moves onto an API consultation's relay session.
    ConsultAgent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leg {
    /// The caller's position (we answered its INVITE, or dialled the agent of a
    /// click-to-call).
    A,
    /// The callee's position (we sent its INVITE).
    B,
    /// A leg out of the bridge: the transferor while its transfer runs.
    X,
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
    timers: [Option<TimerKey>; 12],
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
    resend: Option<(TimerKey, Duration, Instant)>,
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

/// One call's state, changed only by [`CallCore::step`].
pub struct CallCore {
    cfg: Arc<CallConfig>,
    env: Box<dyn Env>,
    /// The clock of the event being handled.
    now: Instant,
    wall_ms: i64,
    /// What the event being handled asks the actor to do.
    out: Vec<Effect>,
    next_timer: TimerKey,
    /// Shared with the checkpoint table: copied on the first change after a checkpoint.
    core: Option<Arc<Checkpoint>>,
    txs: Vec<Tx>,
    next_tx: u32,
    no_answer: Option<TimerKey>,
    max_duration: Option<TimerKey>,
    resend_2xx: Option<(TimerKey, Bytes, Duration, Instant)>,
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
    best_failure: Option<Box<Message>>,
    /// The forks of the current queue offer (empty when none rings).
    offer_forks: Vec<OfferFork>,
    /// B-leg INVITE transactions of earlier offers: their late answers are cancelled or
    /// ended, never relayed.
    stale_forks: Vec<u32>,
    /// B-leg Call-IDs of earlier offers (retired with the call).
    old_b_ids: Vec<Bytes>,
    keepalive: Option<TimerKey>,
    trunk_leg: Option<Box<TrunkLeg>>,
    invite_timer: Option<TimerKey>,
    /// Click-to-call: the agent side, and the route to the customer until it is used.
    orig: Option<Originated>,
    orig_route: Option<Box<Route>>,
    /// The agent reserved for this click-to-call, told how its call goes.
    orig_agent: Option<(Arc<str>, Arc<str>)>,
    /// Offers of this call already reported over (a restarted agent asking about one gets
    /// its outcome; one never seen may still be on its way).
    ended_offers: Vec<u64>,
    /// The relay ports of an anchored call.
    session: Option<MediaPorts>,
    /// The recording in progress (the CDR keeps the last one).
    recording: Option<String>,
    /// The next position announcement to a caller waiting with music.
    announce: Option<TimerKey>,
    /// While the CDR's commit is awaited: what waits for it (see [`AfterCdr`]).
    after_cdr: Option<Vec<AfterCdr>>,
    /// Call-IDs of legs handed to another call (an attended transfer): not this call's to
    /// retire or unregister.
    handed_over: Vec<Bytes>,
    /// The consultation target's no-answer timer.
    consult_timer: Option<TimerKey>,
    /// The bound on the wait for the CDR's commit.
    cdr_timer: Option<TimerKey>,
    /// Call-IDs of consultations that are over (their late messages still come here).
    stale_consults: Vec<Bytes>,
    /// The current call flow step's timer.
    flow_timer: Option<TimerKey>,
}

impl CallCore {
    /// A call with nothing in it yet: [`Event::New`] or [`Event::Restore`] starts it.
    pub fn new(cfg: Arc<CallConfig>, env: Box<dyn Env>, now: Now) -> CallCore {
        CallCore {
            cfg,
            env,
            now: now.mono,
            wall_ms: now.wall_ms,
            // Empty: `step` swaps the shell's buffer in, so this one never holds effects
            // between events (with room for 8 it cost ~1.3 KB per call for nothing).
            out: Vec::new(),
            next_timer: 1,
            core: None,
            // An established call has two transactions (the INVITEs on either leg).
            txs: Vec::with_capacity(2),
            next_tx: 1,
            no_answer: None,
            max_duration: None,
            resend_2xx: None,
            cancel_pending: false,
            cancel_reason: None,
            ended_forks: Vec::new(),
            received_at: now.mono,
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
            recording: None,
            announce: None,
            after_cdr: None,
            handed_over: Vec::new(),
            consult_timer: None,
            cdr_timer: None,
            stale_consults: Vec::new(),
            flow_timer: None,
        }
    }

    /// Handles one event; what the actor is to do is appended to `out` (in order).
    pub fn step(&mut self, event: Event, now: Now, out: &mut Vec<Effect>) {
        self.now = now.mono;
        self.wall_ms = now.wall_ms;
        std::mem::swap(&mut self.out, out);
        match event {
            Event::New(call) => self.begin(*call),
            Event::Restore(cp) => self.restore(*cp),
            Event::Sip(inbound) => self.on_sip(*inbound),
            Event::Timer(TimerFire::Tx { tx, name }, key) => self.on_tx_timer(tx, name, key),
            Event::Timer(TimerFire::Call(timer), key) => self.on_call_timer(timer, key),
            Event::Hangup(reason) => self.hangup_both(HangupBy::System, &reason),
            Event::Offer(offer) => self.on_offer(*offer),
            Event::QueueOverflow(target) => self.on_overflow(target),
            Event::QueueResync => self.on_queue_resync(),
            Event::AgentResync { agent, offer } => self.on_agent_resync(agent, offer),
            Event::Dtmf {
                side,
                digit,
                source,
            } => self.on_dtmf(side, digit, source),
            Event::QueuePosition {
                position,
                wait_secs,
            } => self.on_position(position, wait_secs),
            Event::CdrStored(_) => self.cdr_stored(),
            Event::MediaTimeout => self.on_media_timeout(),
            Event::Adopt(handed) => self.adopt(handed.map(|h| *h)),
            Event::AgentReserved {
                tenant,
                agent,
                phones,
            } => self.agent_reserved(tenant, agent, phones),
            Event::Replacing { invite, user } => self.replacing_invite(*invite, user),
            Event::WebhookAnswered { seq, result } => self.webhook_answered(seq, result),
        }
        self.sweep();
        std::mem::swap(&mut self.out, out);
    }

    /// The API's recording commands (effects appended to `out`).
    pub fn recording(
        &mut self,
        cmd: RecordingCommand,
        now: Now,
        out: &mut Vec<Effect>,
    ) -> Result<String, String> {
        self.now = now.mono;
        self.wall_ms = now.wall_ms;
        std::mem::swap(&mut self.out, out);
        let result = self.recording_command(cmd);
        std::mem::swap(&mut self.out, out);
        result
    }

    /// The API's call control: hold, unhold, transfer (effects appended to `out`). Ok with
    /// what was done, or why not.
    pub fn command(
        &mut self,
        cmd: Command,
        now: Now,
        out: &mut Vec<Effect>,
    ) -> Result<String, Refused> {
        self.now = now.mono;
        self.wall_ms = now.wall_ms;
        std::mem::swap(&mut self.out, out);
        let result = match cmd {
            Command::Hold => {
                let leg = self.customer_leg();
                self.hold(leg).map(|()| "held".to_string())
            }
            Command::Unhold => self.unhold().map(|()| "unheld".to_string()),
            Command::Transfer { target } => self.api_transfer(&target),
            Command::Consult { target } => self.api_consult(&target),
            Command::ConsultComplete => self.api_consult_complete(),
            Command::ConsultCancel => self.api_consult_cancel(),
            Command::ConsultConference => self.api_consult_conference(),
            Command::Conference { target } => self.api_conference(&target),
            Command::ConferenceEnd => self.api_mix_end(false),
            Command::ConferenceParty { party, mute, deaf } => {
                self.api_conference_party(party, mute, deaf)
            }
            Command::Monitor { supervisor, mode } => self.api_monitor(&supervisor, mode),
            Command::MonitorMode(mode) => self.api_monitor_mode(mode),
            Command::MonitorEnd => self.api_mix_end(true),
            Command::JoinConference { tenant, id, callee } => {
                let leg = if callee { Leg::B } else { Leg::A };
                self.api_join_conference(tenant, id, leg)
            }
        };
        self.sweep();
        std::mem::swap(&mut self.out, out);
        result
    }

    /// Another call asks for this call's leg at the far end of the dialog `r` names (an
    /// attended transfer whose consultation call this is).
    pub fn hand_over(
        &mut self,
        r: &Replaces,
        now: Now,
        out: &mut Vec<Effect>,
    ) -> Result<HandedLeg, String> {
        self.now = now.mono;
        self.wall_ms = now.wall_ms;
        std::mem::swap(&mut self.out, out);
        let result = self.give_leg(r);
        self.sweep();
        std::mem::swap(&mut self.out, out);
        result
    }

    /// The leg of the call that is not the tenant's agent or user (the customer): the one
    /// the API holds.
    fn customer_leg(&self) -> Leg {
        match self.core.as_ref().map(|c| &c.users) {
            Some([_, Some(_)]) => Leg::A,
            Some([Some(_), None]) => Leg::B,
            _ => Leg::A,
        }
    }

    /// A snapshot for tests and the API.
    pub fn info(&self) -> CallInfo {
        CallInfo {
            phase: self.core.as_ref().map(|c| c.phase).unwrap_or(Phase::Ended),
            a_call_id: self
                .core
                .as_ref()
                .map(|c| c.a_call_id.clone())
                .unwrap_or_default(),
            b_call_id: self
                .core
                .as_ref()
                .map(|c| c.b_call_id.clone())
                .unwrap_or_default(),
            transactions: self.txs.len(),
            restored: self.restored,
            dtmf: self
                .core
                .as_ref()
                .map(|c| c.cdr.dtmf.clone())
                .unwrap_or_default(),
            anchored: self.session.is_some(),
        }
    }

    /// Transactions still open (the actor counts them out of the gauge when it stops).
    pub fn transactions(&self) -> usize {
        self.txs.len()
    }

    /// Every Call-ID this call answers to (the actor unregisters them when it stops).
    pub fn call_ids(&self) -> Vec<Bytes> {
        let mut ids = self.old_b_ids.clone();
        if let Some(core) = &self.core {
            ids.push(core.a_call_id.clone());
            ids.push(core.a.call_id.clone());
            ids.push(core.b_call_id.clone());
            if let Some(p) = core.transfer.as_ref().and_then(|t| t.transferor.as_ref()) {
                ids.push(p.dialog.call_id.clone());
            }
            if let Some(c) = &core.consult {
                ids.push(c.leg.dialog.call_id.clone());
            }
        }
        ids.extend(self.stale_consults.iter().cloned());
        // A leg handed to another call is that call's now.
        ids.retain(|id| !id.is_empty() && !self.handed_over.contains(id));
        ids.sort();
        ids.dedup();
        ids
    }

    /// The caller leg's Call-ID: the call's name (its checkpoint, its relay session).
    pub fn a_call_id(&self) -> Option<Bytes> {
        self.core.as_ref().map(|c| c.a_call_id.clone())
    }

    /// The call's state to change: shared with the last checkpoint until the first change
    /// after it, which copies it (so a quiet established call holds one copy, not two).
    fn core(&mut self) -> &mut Checkpoint {
        Arc::make_mut(self.core.as_mut().expect("call state"))
    }

    // ---- effects ----

    fn send(&mut self, dest: Dest, bytes: Bytes) {
        self.out.push(Effect::Send { dest, bytes });
    }

    fn send_msg(&mut self, dest: Dest, msg: &Message) {
        crate::transport::count_sent(dest.protocol, msg);
        self.send(dest, msg.encode());
    }

    fn start_timer(&mut self, fire: TimerFire, after: Duration) -> TimerKey {
        let key = self.next_timer;
        self.next_timer = self.next_timer.wrapping_add(1).max(1);
        self.out.push(Effect::StartTimer { key, after, fire });
        key
    }

    fn cancel_timer(&mut self, key: TimerKey) {
        self.out.push(Effect::CancelTimer(key));
    }

    fn register(&mut self, call_id: Bytes) {
        self.out.push(Effect::Register(call_id));
    }

    fn tell(&mut self, tell: Tell) {
        self.out.push(Effect::Tell(tell));
    }

    fn media_op(&mut self, op: MediaOp) {
        self.out.push(Effect::Media(op));
    }

    fn tell_queue(
        &mut self,
        tenant: Arc<str>,
        queue: Arc<str>,
        msg: crate::actors::queue::QueueMsg,
    ) {
        self.tell(Tell::Queue { tenant, queue, msg });
    }

    fn tell_agent(
        &mut self,
        tenant: Arc<str>,
        agent: Arc<str>,
        msg: crate::actors::agent::AgentMsg,
    ) {
        self.tell(Tell::Agent { tenant, agent, msg });
    }

    fn note_agent_call(
        &mut self,
        tenant: Arc<str>,
        agent: Arc<str>,
        call: crate::actors::agent::AgentCall,
    ) {
        self.tell(Tell::NoteAgentCall {
            tenant,
            agent,
            call,
        });
    }

    fn forget_agent_call(&mut self, tenant: Arc<str>, agent: Arc<str>, call_id: Arc<str>) {
        self.tell(Tell::ForgetAgentCall {
            tenant,
            agent,
            call_id,
        });
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
            mut parties,
        } = call;
        if parties.tenant.is_none() {
            parties.tenant = queue
                .as_ref()
                .map(|q| q.tenant.clone())
                .or_else(|| route.media.tenant.clone());
        }
        let Inbound {
            msg: a_invite,
            source,
        } = invite;
        let a_call_id = Bytes::copy_from_slice(&a_invite.ids().call_id);
        let (from, to) = (a_invite.ids().from.clone(), a_invite.ids().to.clone());
        let mut a_invite = a_invite.into_message();
        // Kept for the whole call: no spare room in its header vector.
        a_invite.headers.shrink_to_fit();
        // (The Call-ID above has its own allocation: it names the call in tables that
        // outlive the INVITE, checkpoints and the directory's retired slots.)
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
            return self
                .begin_originate(a_invite, source, a, route, dialled, forks, caller, parties);
        }
        let a_invite = Arc::new(a_invite);
        let a_branch = a_invite
            .top_via()
            .and_then(|v| v.branch())
            .unwrap_or_default();
        let a_dest = self.cfg.response_dest(&source, a_invite.top_via().as_ref());
        let cdr = CdrDraft {
            start_ms: self.wall_ms,
            caller,
            callee,
            route: route.prefix.clone(),
            target: route.target_text.clone(),
            ..CdrDraft::default()
        };
        if queue.is_some()
            || route.group.is_some()
            || route.media.service.is_some()
            || route.media.flow.is_some()
        {
            // Queued (or a test number the switch answers itself): no B leg until the queue offers an agent. Through a trunk group: the
            // B leg goes to the first trunk of the call's plan, then the next on failover.
            let b = pending_b_dialog();
            self.core = Some(Arc::new(Checkpoint {
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
                    joined_ms: self.wall_ms as u64,
                    skills: Vec::new(),
                    agent: None,
                    answered_offer: None,
                    wait_ms: None,
                    abandoned: false,
                    waiting: true,
                    released: false,
                }),
                trunk: None,
                media: None,
                tenant: parties.tenant.clone(),
                users: [parties.caller.clone(), parties.callee.clone()],
                sides: [Side::A, Side::B],
                transfer: None,
                held: None,
                a_up: false,
                consult: None,
                agent: None,
                seated: None,
                flow: None,
            }));
            let anchored = self.anchor_media(&a_invite, &a_call_id, &route.media);
            self.register(a_call_id.clone());
            let caller = self.core().cdr.caller.clone();
            self.leg_joined(&a_call_id, "caller", caller, true);
            self.new_server_tx(Leg::A, Role::AInvite, a_invite, a_branch, a_dest);
            if !self.media_settled(anchored) {
                return;
            }
            if let Some(service) = route.media.service {
                return self.start_service(service);
            }
            if let Some(flow) = route.media.flow.clone() {
                return self.start_flow(flow, 0);
            }
            if let Some(group) = &route.group {
                let plan = group.plan(&route.prefix, &String::from_utf8_lossy(&dialled));
                self.trunk_leg = Some(Box::new(TrunkLeg {
                    plan: plan.order.into(),
                    last_resort: plan.last_resort.into(),
                    attempts: plan.skipped,
                    current: None,
                }));
                self.next_trunk();
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
            self.core().cdr.ringing_ms = Some(self.wall_ms);
            metrics::histogram!(CALL_SETUP, "stage" => "ringing").record(
                self.now
                    .saturating_duration_since(self.received_at)
                    .as_secs_f64(),
            );
            self.join_queue();
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
        self.core = Some(Arc::new(Checkpoint {
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
            tenant: parties.tenant.clone(),
            users: [parties.caller.clone(), parties.callee.clone()],
            sides: [Side::A, Side::B],
            transfer: None,
            held: None,
            a_up: false,
            consult: None,
            agent: None,
            seated: None,
            flow: None,
        }));
        self.register(a_call_id.clone());
        self.register(b_call_id);
        let caller = self.core().cdr.caller.clone();
        self.leg_joined(&a_call_id, "caller", caller, true);

        // The caller's INVITE server transaction answers 100 Trying at once.
        self.new_server_tx(Leg::A, Role::AInvite, a_invite, a_branch, a_dest);
        if !self.media_settled(anchored) {
            return;
        }
        let mut ids = self.send_forks(&b_invite, &forks);
        ids.push(self.new_client_tx(Leg::B, Role::BInvite, b_invite, branch, b_dest));
        self.no_answer = Some(self.schedule_call_timer(CallTimer::NoAnswer, self.cfg.no_answer));
    }

    /// The other forks of a B-leg INVITE: the same INVITE (same Call-ID and From tag, like
    /// a forking proxy's branches) to each contact after the first, each its own
    /// transaction. Returns their transaction ids.
    fn restore(&mut self, cp: Checkpoint) {
        let phase = cp.phase;
        metrics::counter!(CALLS_RESTORED, "phase" => phase.label()).increment(1);
        tracing::info!(call_id = %String::from_utf8_lossy(&cp.a_call_id), phase = phase.label(), "call restored from checkpoint");
        self.restored = true;
        self.core = Some(Arc::new(cp));
        for id in self.call_ids() {
            self.register(id);
        }
        self.reattach_media();
        if self.restore_topology(phase) {
            return;
        }
        if self.in_flow() && self.a_answered() && phase != Phase::Ended {
            // The caller hears its flow's current step again.
            return self.resume_flow();
        }
        if phase == Phase::Setup && self.service().is_some() && self.a_answered() {
            return self.restore_service();
        }
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
                self.send_msg(self.cfg.response_dest(&source, via.as_ref()), &resp);
                self.end(500, HangupBy::System, "restarted while queued");
            }
            Phase::Setup | Phase::Early => {
                // Transactions in flight are lost with the actor: end both legs cleanly.
                let cancel = cancel_for(&self.core().b_invite);
                let dest = self.core().b_dest;
                self.new_client_tx(Leg::B, Role::BCancel, cancel, Bytes::new(), dest);
                let resp = self.a_response(500, "Server Internal Error (Call Restarted)", false);
                let (source, via) = (self.core().a_source, self.core().a_invite.top_via());
                self.send_msg(self.cfg.response_dest(&source, via.as_ref()), &resp);
                self.end(500, HangupBy::System, "restarted during setup");
            }
            Phase::Answered | Phase::Confirmed => {
                if phase == Phase::Answered {
                    self.ack_b(Bytes::new(), None);
                    self.core().phase = Phase::Confirmed;
                }
                if let Some(max) = self.cfg.max_duration {
                    let answered = self.core().cdr.answer_ms.unwrap_or(self.wall_ms);
                    let elapsed = Duration::from_millis((self.wall_ms - answered).max(0) as u64);
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
            let effect = if core.phase == Phase::Ended && self.after_cdr.is_none() {
                Effect::DropCheckpoint(core.a_call_id.clone())
            } else {
                Effect::Checkpoint(core.clone())
            };
            self.out.push(effect);
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        if self.core().phase != phase {
            self.core().phase = phase;
            self.checkpoint();
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
fn cur_timeout(state: &CallCore) -> u64 {
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
