//! What the call core asks of the world: [`Effect`]s it emits (executed by the call actor)
//! and the few facts it reads through [`Env`] (media ports, a user's registered phones).

use bytes::{BufMut, Bytes, BytesMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::{CallTimer, Checkpoint};
use crate::actors::agent::{AgentCall, AgentMsg};
pub use crate::actors::conference::Refusal;
use crate::actors::queue::QueueMsg;
use crate::actors::router::Retired;
use crate::actors::trunk::AttemptReport;
use crate::media::g711::Codec;
use crate::media::quality::LegQuality;
use crate::media::relay::Side;
use crate::sip::headers::Via;
use crate::sip::sdp::Direction;
use crate::sip::transaction::{TimerConfig, TimerName};
use crate::store::Cdr;
use crate::transport::{Dest, Protocol, Source};

/// A timer the core set: its key is unique within the call, so a fired timer that was
/// cancelled or replaced meanwhile is recognised and ignored.
pub type TimerKey = u32;

/// What a timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerFire {
    /// A transaction's RFC 3261 timer.
    Tx { tx: u32, name: TimerName },
    /// A call-level timer.
    Call(CallTimer),
}

/// Something the call actor does for the core.
pub enum Effect {
    /// Bytes to a peer.
    Send {
        dest: Dest,
        bytes: Bytes,
    },
    /// Fire `fire` with `key` after `after`.
    StartTimer {
        key: TimerKey,
        after: Duration,
        fire: TimerFire,
    },
    CancelTimer(TimerKey),
    /// Messages with this Call-ID now come to this call (messages the router queued for it
    /// come back as events).
    Register(Bytes),
    /// The call is over and every transaction has its final answer: the router absorbs
    /// retransmissions for these Call-IDs, and the actor stops once its mailbox is drained.
    Retire {
        ids: Vec<Bytes>,
        retired: Retired,
    },
    /// The state a restarted actor resumes from.
    Checkpoint(Arc<Checkpoint>),
    /// The call needs no checkpoint any more.
    DropCheckpoint(Bytes),
    /// Write the CDR; [`super::Event::CdrStored`] says when it is durable (or will not be).
    WriteCdr(Box<Cdr>),
    /// The call no longer counts against admission (`calls.max_calls`).
    Ended,
    /// A message to a queue, an agent or a trunk.
    Tell(Tell),
    /// A command to the call's relay session.
    Media(MediaOp),
    /// Give the trunk's channel back.
    ReleaseTrunk(Arc<str>),
    /// Reserve an agent for this call (a transfer to it): the agent's phones come back as
    /// [`super::Event::AgentReserved`], or why not.
    ReserveAgent {
        tenant: Arc<str>,
        agent: Arc<str>,
    },
    /// A command to the call's consultation session (`<call>~consult`).
    ConsultMedia(MediaOp),
    /// Ask the call that has the dialog `Replaces` names for its other leg (an attended
    /// transfer): the answer comes back as [`super::Event::Adopt`].
    AskHandOver(super::Replaces),
    /// The call's mix (a three-way, a monitor; named by the A-leg Call-ID).
    Mix(MixOp),
    /// POST a call flow's webhook; the answer comes back as
    /// [`super::Event::WebhookAnswered`] with `seq`.
    Webhook(Box<WebhookRequest>),
}

/// A call flow's webhook request.
#[derive(Debug)]
pub struct WebhookRequest {
    pub target: Arc<crate::config::flow::WebhookTarget>,
    /// The JSON body (signed as it is).
    pub body: String,
    pub timeout: Duration,
    pub seq: u32,
}

/// How a webhook request went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookResult {
    /// An HTTP answer: its status and body.
    Answer { status: u16, body: Bytes },
    /// No answer within the step's timeout.
    Timeout,
    /// Too many webhooks in flight on this node: not sent.
    Busy,
    /// Not sent or no answer (connection refused, DNS, TLS, a body too large).
    Failed(String),
}

/// One leg in a call's mix: a relay session (by its key: the call's A-leg Call-ID, or
/// [`super::consult_key`] of it) and its side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MixLeg {
    pub session: Bytes,
    pub side: Side,
}

/// The call's mix as it should be now (stated whole, so a restarted actor can repeat it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MixOp {
    /// Exactly these legs are in the mix (others in it leave); everyone hears everyone
    /// except the `(listener, speaker)` pairs in `apart` (indices into `legs`).
    Set {
        legs: Vec<MixLeg>,
        apart: Vec<(usize, usize)>,
    },
    /// The mix ends: its legs go back to their sessions' own relay.
    End,
}

/// Messages to the contact centre and the trunks.
pub enum Tell {
    Queue {
        tenant: Arc<str>,
        queue: Arc<str>,
        msg: QueueMsg,
    },
    Agent {
        tenant: Arc<str>,
        agent: Arc<str>,
        msg: AgentMsg,
    },
    /// The node's index of busy agents: this call holds the agent.
    NoteAgentCall {
        tenant: Arc<str>,
        agent: Arc<str>,
        call: AgentCall,
    },
    /// ... and no longer does.
    ForgetAgentCall {
        tenant: Arc<str>,
        agent: Arc<str>,
        call_id: Arc<str>,
    },
    /// How an attempt on a trunk ended, for the trunk's window.
    TrunkAttempt {
        trunk: Arc<str>,
        report: AttemptReport,
    },
}

/// Commands to an anchored call's relay session.
pub enum MediaOp {
    /// Where `side` wants its audio, in which codec, with which telephone-event type.
    SetRemote {
        side: Side,
        addr: SocketAddr,
        codec: Option<Codec>,
        te: Option<u8>,
    },
    SetRemoteCodec {
        side: Side,
        codec: Codec,
    },
    /// The IP `side`'s SIP comes from: its media may latch there too (phones behind NAT),
    /// and media goes there before the first packet (never to an address named only in
    /// SDP).
    SetSignalling {
        side: Side,
        ip: IpAddr,
    },
    SetDirection {
        side: Side,
        direction: Direction,
    },
    /// Relay between the sides (false: each side hears only what is played to it).
    Bridge(bool),
    /// Music on hold to `side`, after a position announcement when given.
    Music {
        side: Side,
        announce: Option<(u32, Option<u64>)>,
    },
    StopPlay(Side),
    /// Prompts of the library (by id) to `side`, one after the other, then silence (a
    /// call flow's step).
    Prompts {
        side: Side,
        ids: Vec<String>,
    },
    /// Sends every RTP packet `side` sends straight back to it (the echo test).
    Echo(Side),
    Record {
        id: String,
        tenant: String,
    },
    PauseRecording(bool),
    StopRecording,
    /// A digit signalled in SIP INFO, for the relay to report (and forward) like one it saw.
    DtmfFromSignalling {
        side: Side,
        digit: char,
    },
}

/// The relay ports of an anchored call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaPorts {
    pub address: IpAddr,
    pub a: u16,
    pub b: u16,
}

impl MediaPorts {
    pub fn port(&self, side: Side) -> u16 {
        match side {
            Side::A => self.a,
            Side::B => self.b,
        }
    }
}

/// The node's media switches (fixed while it runs).
#[derive(Clone, Copy, Debug, Default)]
pub struct MediaSettings {
    pub anchor_all: bool,
    pub record_all: bool,
    pub can_record: bool,
    /// `media.rtp_timeout_secs` (None: off).
    pub rtp_timeout: Option<Duration>,
}

/// What the core asks the node (the call actor answers from the relay engine and the
/// location service; tests answer from tables).
pub trait Env: Send {
    /// The relay engine's switches; None when media anchoring is not running.
    fn media(&self) -> Option<MediaSettings>;
    /// A relay session for the call.
    fn allocate_media(&mut self, call: &Bytes) -> Result<MediaPorts, String>;
    /// The call's session, found again by a restarted actor.
    fn find_media(&mut self, call: &Bytes) -> Option<MediaPorts>;
    /// Releases the session; its legs' final quality figures.
    fn release_media(&mut self, call: &Bytes) -> Option<[LegQuality; 2]>;
    /// The registered phones of a tenant's user.
    fn lookup_user(&self, tenant: &str, user: &str) -> Vec<super::Fork>;
    /// Where a transfer of a `tenant` call to `user` (a number or a user name) goes.
    fn transfer_target(&self, tenant: &str, user: &str) -> Result<TransferTarget, TargetError>;
    /// Whether the tenant's `user` is a supervisor of its queue `queue` (may monitor its
    /// calls).
    fn supervises(&self, tenant: &str, queue: &str, user: &str) -> bool;
    /// How long prompt `id` of the library plays, in milliseconds (None: no such prompt).
    fn prompt_ms(&self, id: &str) -> Option<u64>;
    /// Puts a leg of the call's relay session into a conference (and its mix).
    fn conference_join(&mut self, seat: Seat) -> Result<(), Refusal>;
    /// The call left the conference.
    fn conference_leave(&mut self, tenant: &str, id: &str, call: &str);
}

/// A call's leg taking its place in a conference.
#[derive(Clone, Debug)]
pub struct Seat {
    pub tenant: Arc<str>,
    pub id: Arc<str>,
    /// The call (its A-leg Call-ID), which is the participant's id.
    pub call: String,
    /// The relay session and side of the leg.
    pub session: Bytes,
    pub side: Side,
    pub label: String,
    pub via: &'static str,
    /// Make the conference if there is none (a dial-in).
    pub create: bool,
    pub now_ms: u64,
}

/// Where a transfer goes.
#[derive(Clone, Debug)]
pub enum TransferTarget {
    /// A tenant user's registered phones (rung at once), `user:<name>`.
    Phones {
        user: Arc<str>,
        forks: Vec<super::Fork>,
    },
    /// A tenant's agent (by its user): reserved first, like a queue offer, so it is never
    /// offered two calls at once.
    Agent {
        tenant: Arc<str>,
        agent: Arc<str>,
        /// The agent's SIP user.
        user: Arc<str>,
    },
    /// A tenant's queue (the caller waits there again, keeping its priority and wait).
    Queue {
        tenant: Arc<str>,
        queue: Arc<str>,
        priority: u32,
    },
}

impl TransferTarget {
    /// The target as the CDR and the API name it.
    pub fn label(&self) -> String {
        match self {
            TransferTarget::Phones { user, .. } => format!("user:{user}"),
            TransferTarget::Agent { agent, .. } => format!("agent:{agent}"),
            TransferTarget::Queue { queue, .. } => format!("queue:{queue}"),
        }
    }
}

/// Why a transfer target was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetError {
    /// Not a number or user of the tenant (404).
    NotFound,
    /// Known, but not reachable by this tenant's transfers (403): external numbers.
    Forbidden,
    /// A user with no registered phone (480).
    Unavailable,
}

impl TargetError {
    pub fn status(self) -> (u16, &'static str) {
        match self {
            TargetError::NotFound => (404, "Not Found"),
            TargetError::Forbidden => (403, "Forbidden (Transfer Target Not Allowed)"),
            TargetError::Unavailable => (480, "Temporarily Unavailable"),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            TargetError::NotFound => "not_found",
            TargetError::Forbidden => "forbidden",
            TargetError::Unavailable => "unavailable",
        }
    }
}

/// The settings every call reads: timers, limits, and how the switch names itself.
#[derive(Clone, Debug)]
pub struct CallConfig {
    pub timer_cfg: TimerConfig,
    pub no_answer: Duration,
    pub max_duration: Option<Duration>,
    pub user_agent: Bytes,
    /// Answer UDP at the source port (`sip.force_rport`).
    pub force_rport: bool,
    /// How long the hangup's last message waits for the CDR's commit.
    pub cdr_wait: Duration,
    /// The host and port written in Via and Contact, per protocol (UDP, TCP, TLS).
    pub sent_by: [(String, u16); 3],
}

impl CallConfig {
    /// The host:port this switch writes in Via and Contact for a protocol.
    pub fn sent_by(&self, protocol: Protocol) -> (String, u16) {
        let i = match protocol {
            Protocol::Udp => 0,
            Protocol::Tcp => 1,
            Protocol::Tls => 2,
        };
        self.sent_by[i].clone()
    }

    pub fn via(&self, protocol: Protocol, branch: &[u8]) -> Bytes {
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

    pub fn contact(&self, protocol: Protocol) -> Bytes {
        let (host, port) = self.sent_by(protocol);
        let transport = protocol.uri_param();
        Bytes::from(format!("<sip:{host}:{port}{transport}>"))
    }

    /// Where responses to a request from `source` go (RFC 3261 §18.2.2, RFC 3581).
    pub fn response_dest(&self, source: &Source, via: Option<&Via>) -> Dest {
        if self.force_rport {
            return Dest {
                protocol: source.protocol,
                addr: source.remote,
                conn: source.conn,
            };
        }
        crate::transport::response_dest(source, via)
    }

    /// A settings block for tests: the switch at 127.0.0.1:5060 on every protocol.
    pub fn for_tests() -> CallConfig {
        CallConfig {
            timer_cfg: TimerConfig::default(),
            no_answer: Duration::from_secs(60),
            max_duration: None,
            user_agent: Bytes::from_static(b"Switchyard-test"),
            force_rport: true,
            cdr_wait: Duration::from_secs(2),
            sent_by: [
                ("127.0.0.1".into(), 5060),
                ("127.0.0.1".into(), 5060),
                ("127.0.0.1".into(), 5061),
            ],
        }
    }
}
