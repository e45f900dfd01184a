//! What crosses between nodes: serde forms of the contact-centre messages that a call actor
//! on one node exchanges with the queue and agent actors its tenant's owner runs on another,
//! one [`Envelope`] around each, and the port actor's message type whose `ractor::Message`
//! implementation turns an envelope into bytes for ractor_cluster and back.
//!
//! The actors' own message enums stay local (they carry `Arc<str>`, `Bytes`, reply ports);
//! each crossing variant has a mirror here with plain owned fields, converted at the port.
//! Variants that carry an `RpcReplyPort` (the API's queries) and `QueueMsg::Reserved` (an
//! agent answers the queue of its own tenant, always on the same node) never cross.
//!
//! The encoding is JSON (serde_json): a few hundred bytes per message, read by any tool when
//! debugging, and an unknown or garbled envelope is a decode error, never a panic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ractor::message::{BoxedDowncastErr, SerializedMessage};
use serde::{Deserialize, Serialize};

use crate::actors::agent::{AgentMsg, OfferOutcome, OfferRules, Reserve};
use crate::actors::call::{CallMsg, Fork, Offer};
use crate::actors::queue::{CallerState, Join, MemberUpdate, QueueMsg};
use crate::config::CcTarget;
use crate::transport::{Dest, Protocol};

/// The envelope format's version; a peer speaking another one is refused per message
/// (counted as a decode failure) rather than misread.
pub const VERSION: u16 = 1;

/// The `variant` ractor_cluster carries next to the bytes.
const VARIANT: &str = "switchyard.envelope";

/// One message between nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// [`VERSION`].
    pub v: u16,
    /// The sending node's cluster name (replies to a call go back there).
    pub from: String,
    /// When it was sent (Unix microseconds, the sender's clock), for the delivery latency.
    pub sent_us: u64,
    pub to: Payload,
}

/// Whom a message is for, and the message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Payload {
    Queue {
        tenant: String,
        queue: String,
        msg: WireQueueMsg,
    },
    Agent {
        tenant: String,
        agent: String,
        msg: WireAgentMsg,
    },
    Call {
        call_id: String,
        msg: WireCallMsg,
    },
    /// How an attempt through a trunk ended, for the trunk's actor on its owner: every node's
    /// calls feed the one window that judges the trunk (answer rate, quality, health).
    Trunk {
        trunk: String,
        report: crate::actors::trunk::AttemptReport,
    },
    /// For the receiving node itself: does one of its call actors hold this agent (offered
    /// or answered)? Sent to every live node by an agent actor that starts in cluster mode;
    /// a node that finds it answers the agent with [`WireAgentMsg::Resume`].
    FindAgentCall {
        tenant: String,
        agent: String,
    },
}

impl Payload {
    /// A metric label for the message (`queue.join`, `call.offer`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::Queue { msg, .. } => msg.kind(),
            Payload::Agent { msg, .. } => msg.kind(),
            Payload::Call { msg, .. } => msg.kind(),
            Payload::FindAgentCall { .. } => "node.find_agent_call",
            Payload::Trunk { .. } => "trunk.attempt",
        }
    }
}

/// Why bytes from a peer are not an envelope.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not an envelope: {0}")]
    Json(#[from] serde_json::Error),
    #[error("envelope version {0}, this node speaks {VERSION}")]
    Version(u16),
    #[error("not a cast (a call or reply: this port only takes casts)")]
    NotCast,
}

/// The envelope as bytes.
pub fn encode(env: &Envelope) -> Vec<u8> {
    // Plain data (strings, numbers, enums): serialising into memory cannot fail.
    serde_json::to_vec(env).expect("envelope serialises")
}

/// An envelope from bytes: malformed or foreign input is an error.
pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    let env: Envelope = serde_json::from_slice(bytes)?;
    if env.v != VERSION {
        return Err(DecodeError::Version(env.v));
    }
    Ok(env)
}

/// What a port actor receives.
pub enum PortMsg {
    /// An envelope from a peer's port (the only variant that crosses nodes).
    Envelope(Box<Envelope>),
    /// Bytes from a peer that were not an envelope (counted and logged, never a panic).
    Undecodable(String),
    /// The port's own bookkeeping (this node only).
    Local(super::port::Control),
}

// The port is the one actor type whose messages cross nodes: ractor_cluster calls
// `serialize` when the target is a peer's port and `deserialize` on the peer. An error from
// `deserialize` would stop the receiving actor, so bad input becomes `Undecodable` instead.
impl ractor::Message for PortMsg {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        match self {
            PortMsg::Envelope(env) => Ok(SerializedMessage::Cast {
                variant: VARIANT.to_string(),
                args: encode(&env),
                metadata: None,
            }),
            PortMsg::Undecodable(_) | PortMsg::Local(_) => Err(BoxedDowncastErr),
        }
    }

    fn deserialize(msg: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        Ok(from_serialized(msg))
    }
}

/// A serialized message from a peer as the port sees it.
pub fn from_serialized(msg: SerializedMessage) -> PortMsg {
    let decoded = match msg {
        SerializedMessage::Cast { args, .. } => decode(&args),
        _ => Err(DecodeError::NotCast),
    };
    match decoded {
        Ok(env) => PortMsg::Envelope(Box::new(env)),
        Err(e) => PortMsg::Undecodable(e.to_string()),
    }
}

// ---- queue messages ----

/// The crossing forms of [`QueueMsg`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireQueueMsg {
    Join {
        call_id: String,
        from: String,
        #[serde(default)]
        user: Option<String>,
        priority: u32,
        joined_ms: u64,
        /// The caller's own skill requirements (skill, level).
        #[serde(default)]
        skills: Vec<(String, u8)>,
    },
    Leave {
        call_id: String,
        abandoned: bool,
    },
    OfferEnded {
        offer: u64,
        agent: String,
        call_id: String,
        outcome: WireOutcome,
    },
    CallEnded {
        talk_ms: u64,
    },
    CallerState {
        call_id: String,
        state: WireCallerState,
    },
    MemberChanged {
        agent: String,
        available: bool,
        logged_in: bool,
        idle_since_ms: u64,
        calls: u64,
        talk_ms: u64,
    },
    Announce {
        call_id: String,
    },
}

/// [`CallerState`] on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireCallerState {
    Waiting { ringing: Vec<(u64, String)> },
    Answered { offer: u64, agent: String },
    Gone { abandoned: bool },
}

impl WireQueueMsg {
    /// The crossing form of a queue message; None for those that cannot cross.
    pub fn from_local(msg: QueueMsg) -> Option<WireQueueMsg> {
        Some(match msg {
            QueueMsg::Join(j) => WireQueueMsg::Join {
                call_id: j.call_id.to_string(),
                from: j.from,
                user: j.user.map(|u| u.to_string()),
                priority: j.priority,
                joined_ms: j.joined_ms,
                skills: j.skills.into_iter().map(|r| (r.skill, r.level)).collect(),
            },
            QueueMsg::Leave { call_id, abandoned } => WireQueueMsg::Leave {
                call_id: call_id.to_string(),
                abandoned,
            },
            QueueMsg::OfferEnded {
                offer,
                agent,
                call_id,
                outcome,
            } => WireQueueMsg::OfferEnded {
                offer,
                agent: agent.to_string(),
                call_id: call_id.to_string(),
                outcome: outcome.into(),
            },
            QueueMsg::CallEnded { talk_ms } => WireQueueMsg::CallEnded { talk_ms },
            QueueMsg::CallerState { call_id, state } => WireQueueMsg::CallerState {
                call_id: call_id.to_string(),
                state: match state {
                    CallerState::Waiting { ringing } => WireCallerState::Waiting {
                        ringing: ringing
                            .into_iter()
                            .map(|(o, a)| (o, a.to_string()))
                            .collect(),
                    },
                    CallerState::Answered { offer, agent } => WireCallerState::Answered {
                        offer,
                        agent: agent.to_string(),
                    },
                    CallerState::Gone { abandoned } => WireCallerState::Gone { abandoned },
                },
            },
            QueueMsg::MemberChanged(u) => WireQueueMsg::MemberChanged {
                agent: u.agent.to_string(),
                available: u.available,
                logged_in: u.logged_in,
                idle_since_ms: u.idle_since_ms,
                calls: u.calls,
                talk_ms: u.talk_ms,
            },
            QueueMsg::Announce { call_id } => WireQueueMsg::Announce {
                call_id: call_id.to_string(),
            },
            QueueMsg::Reserved { .. }
            | QueueMsg::Tick
            | QueueMsg::GetStats(_)
            | QueueMsg::GetWaiting(_)
            | QueueMsg::GetDecisions(_)
            | QueueMsg::InjectPanic => return None,
        })
    }

    /// The local message again.
    pub fn to_local(&self) -> QueueMsg {
        match self {
            WireQueueMsg::Join {
                call_id,
                from,
                user,
                priority,
                joined_ms,
                skills,
            } => QueueMsg::Join(Join {
                call_id: Arc::from(call_id.as_str()),
                from: from.clone(),
                user: user.as_deref().map(Arc::from),
                priority: *priority,
                joined_ms: *joined_ms,
                skills: skills
                    .iter()
                    .map(|(skill, level)| crate::routing::acd::Requirement {
                        skill: skill.clone(),
                        level: *level,
                    })
                    .collect(),
            }),
            WireQueueMsg::Leave { call_id, abandoned } => QueueMsg::Leave {
                call_id: Arc::from(call_id.as_str()),
                abandoned: *abandoned,
            },
            WireQueueMsg::OfferEnded {
                offer,
                agent,
                call_id,
                outcome,
            } => QueueMsg::OfferEnded {
                offer: *offer,
                agent: Arc::from(agent.as_str()),
                call_id: Arc::from(call_id.as_str()),
                outcome: (*outcome).into(),
            },
            WireQueueMsg::CallEnded { talk_ms } => QueueMsg::CallEnded { talk_ms: *talk_ms },
            WireQueueMsg::CallerState { call_id, state } => QueueMsg::CallerState {
                call_id: Arc::from(call_id.as_str()),
                state: match state {
                    WireCallerState::Waiting { ringing } => CallerState::Waiting {
                        ringing: ringing
                            .iter()
                            .map(|(o, a)| (*o, Arc::from(a.as_str())))
                            .collect(),
                    },
                    WireCallerState::Answered { offer, agent } => CallerState::Answered {
                        offer: *offer,
                        agent: Arc::from(agent.as_str()),
                    },
                    WireCallerState::Gone { abandoned } => CallerState::Gone {
                        abandoned: *abandoned,
                    },
                },
            },
            WireQueueMsg::MemberChanged {
                agent,
                available,
                logged_in,
                idle_since_ms,
                calls,
                talk_ms,
            } => QueueMsg::MemberChanged(MemberUpdate {
                agent: Arc::from(agent.as_str()),
                available: *available,
                logged_in: *logged_in,
                idle_since_ms: *idle_since_ms,
                calls: *calls,
                talk_ms: *talk_ms,
            }),
            WireQueueMsg::Announce { call_id } => QueueMsg::Announce {
                call_id: Arc::from(call_id.as_str()),
            },
        }
    }

    /// The call a message is about, if any.
    pub fn call_id(&self) -> Option<&str> {
        match self {
            WireQueueMsg::Join { call_id, .. }
            | WireQueueMsg::Leave { call_id, .. }
            | WireQueueMsg::OfferEnded { call_id, .. }
            | WireQueueMsg::CallerState { call_id, .. }
            | WireQueueMsg::Announce { call_id } => Some(call_id),
            WireQueueMsg::CallEnded { .. } | WireQueueMsg::MemberChanged { .. } => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            WireQueueMsg::Join { .. } => "queue.join",
            WireQueueMsg::Leave { .. } => "queue.leave",
            WireQueueMsg::OfferEnded { .. } => "queue.offer_ended",
            WireQueueMsg::CallEnded { .. } => "queue.call_ended",
            WireQueueMsg::CallerState { .. } => "queue.caller_state",
            WireQueueMsg::MemberChanged { .. } => "queue.member_changed",
            WireQueueMsg::Announce { .. } => "queue.announce",
        }
    }
}

// ---- agent messages ----

/// The crossing forms of [`AgentMsg`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireAgentMsg {
    Reserve {
        queue: String,
        call_id: String,
        offer: u64,
        rules: WireRules,
    },
    Release {
        offer: u64,
    },
    OfferEnded {
        offer: u64,
        outcome: WireOutcome,
    },
    CallEnded {
        call_id: String,
    },
    PhoneChanged(bool),
    Announce,
    Resume {
        call_id: String,
        queue: String,
        offer: u64,
        answered: bool,
    },
}

/// [`OfferRules`] on the wire (durations in milliseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRules {
    pub ring_timeout_ms: u64,
    pub wrap_up_ms: u64,
    pub max_no_answer: u32,
    pub no_answer_delay_ms: u64,
    pub reject_delay_ms: u64,
    pub busy_delay_ms: u64,
}

impl From<OfferRules> for WireRules {
    fn from(r: OfferRules) -> WireRules {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        WireRules {
            ring_timeout_ms: ms(r.ring_timeout),
            wrap_up_ms: ms(r.wrap_up),
            max_no_answer: r.max_no_answer,
            no_answer_delay_ms: ms(r.no_answer_delay),
            reject_delay_ms: ms(r.reject_delay),
            busy_delay_ms: ms(r.busy_delay),
        }
    }
}

impl From<WireRules> for OfferRules {
    fn from(r: WireRules) -> OfferRules {
        OfferRules {
            ring_timeout: Duration::from_millis(r.ring_timeout_ms),
            wrap_up: Duration::from_millis(r.wrap_up_ms),
            max_no_answer: r.max_no_answer,
            no_answer_delay: Duration::from_millis(r.no_answer_delay_ms),
            reject_delay: Duration::from_millis(r.reject_delay_ms),
            busy_delay: Duration::from_millis(r.busy_delay_ms),
        }
    }
}

/// [`OfferOutcome`] on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireOutcome {
    Answered,
    NoAnswer,
    Rejected(u16),
    Busy,
    Cancelled,
    Failed(u16),
}

impl From<OfferOutcome> for WireOutcome {
    fn from(o: OfferOutcome) -> WireOutcome {
        match o {
            OfferOutcome::Answered => WireOutcome::Answered,
            OfferOutcome::NoAnswer => WireOutcome::NoAnswer,
            OfferOutcome::Rejected(s) => WireOutcome::Rejected(s),
            OfferOutcome::Busy => WireOutcome::Busy,
            OfferOutcome::Cancelled => WireOutcome::Cancelled,
            OfferOutcome::Failed(s) => WireOutcome::Failed(s),
        }
    }
}

impl From<WireOutcome> for OfferOutcome {
    fn from(o: WireOutcome) -> OfferOutcome {
        match o {
            WireOutcome::Answered => OfferOutcome::Answered,
            WireOutcome::NoAnswer => OfferOutcome::NoAnswer,
            WireOutcome::Rejected(s) => OfferOutcome::Rejected(s),
            WireOutcome::Busy => OfferOutcome::Busy,
            WireOutcome::Cancelled => OfferOutcome::Cancelled,
            WireOutcome::Failed(s) => OfferOutcome::Failed(s),
        }
    }
}

impl WireAgentMsg {
    /// The crossing form of an agent message; None for those that cannot cross.
    pub fn from_local(msg: AgentMsg) -> Option<WireAgentMsg> {
        Some(match msg {
            AgentMsg::Reserve(r) => WireAgentMsg::Reserve {
                queue: r.queue.to_string(),
                call_id: r.call_id.to_string(),
                offer: r.offer,
                rules: r.rules.into(),
            },
            AgentMsg::Release { offer } => WireAgentMsg::Release { offer },
            AgentMsg::OfferEnded { offer, outcome } => WireAgentMsg::OfferEnded {
                offer,
                outcome: outcome.into(),
            },
            AgentMsg::CallEnded { call_id } => WireAgentMsg::CallEnded {
                call_id: call_id.to_string(),
            },
            AgentMsg::PhoneChanged(up) => WireAgentMsg::PhoneChanged(up),
            AgentMsg::Announce => WireAgentMsg::Announce,
            AgentMsg::Resume {
                call_id,
                queue,
                offer,
                answered,
            } => WireAgentMsg::Resume {
                call_id: call_id.to_string(),
                queue: queue.to_string(),
                offer,
                answered,
            },
            AgentMsg::ReserveOutbound { .. }
            | AgentMsg::Command(..)
            | AgentMsg::TimerFired(..)
            | AgentMsg::GetInfo(_)
            | AgentMsg::InjectPanic => return None,
        })
    }

    /// The local message again.
    pub fn to_local(&self) -> AgentMsg {
        match self {
            WireAgentMsg::Reserve {
                queue,
                call_id,
                offer,
                rules,
            } => AgentMsg::Reserve(Reserve {
                queue: Arc::from(queue.as_str()),
                call_id: Arc::from(call_id.as_str()),
                offer: *offer,
                rules: (*rules).into(),
            }),
            WireAgentMsg::Release { offer } => AgentMsg::Release { offer: *offer },
            WireAgentMsg::OfferEnded { offer, outcome } => AgentMsg::OfferEnded {
                offer: *offer,
                outcome: (*outcome).into(),
            },
            WireAgentMsg::CallEnded { call_id } => AgentMsg::CallEnded {
                call_id: Arc::from(call_id.as_str()),
            },
            WireAgentMsg::PhoneChanged(up) => AgentMsg::PhoneChanged(*up),
            WireAgentMsg::Announce => AgentMsg::Announce,
            WireAgentMsg::Resume {
                call_id,
                queue,
                offer,
                answered,
            } => AgentMsg::Resume {
                call_id: Arc::from(call_id.as_str()),
                queue: Arc::from(queue.as_str()),
                offer: *offer,
                answered: *answered,
            },
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            WireAgentMsg::Reserve { .. } => "agent.reserve",
            WireAgentMsg::Release { .. } => "agent.release",
            WireAgentMsg::OfferEnded { .. } => "agent.offer_ended",
            WireAgentMsg::CallEnded { .. } => "agent.call_ended",
            WireAgentMsg::PhoneChanged(_) => "agent.phone_changed",
            WireAgentMsg::Announce => "agent.announce",
            WireAgentMsg::Resume { .. } => "agent.resume",
        }
    }
}

// ---- call messages ----

/// The crossing forms of [`CallMsg`] (what queues and agents send to calls).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireCallMsg {
    Offer(WireOffer),
    QueueOverflow(WireTarget),
    QueueResync,
    AgentResync {
        agent: String,
        offer: u64,
    },
    QueuePosition {
        position: u32,
        wait_secs: Option<u64>,
    },
}

/// [`Offer`] on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireOffer {
    pub offer: u64,
    pub tenant: String,
    pub queue: String,
    pub agent: String,
    pub forks: Vec<WireFork>,
    pub ring_timeout_ms: u64,
    pub ring_all: bool,
}

/// A [`Fork`]: the agent phone's contact and the flow to reach it. The connection id of a
/// stream flow is the sending node's and means nothing elsewhere: it is not sent, and the
/// call's node reaches the phone at its address (UDP as is; TCP/TLS through a connection
/// of its own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireFork {
    pub ruri: String,
    /// `udp`, `tcp` or `tls`.
    pub protocol: String,
    pub addr: SocketAddr,
}

/// [`CcTarget`] on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireTarget {
    Queue(String),
    User(String),
    Number(String),
    Status(u16),
    Echo,
    Music,
    Conference(String),
    Flow(String),
}

impl WireCallMsg {
    /// The crossing form of a call message; None for those that cannot cross.
    pub fn from_local(msg: CallMsg) -> Option<WireCallMsg> {
        Some(match msg {
            CallMsg::Offer(o) => WireCallMsg::Offer(WireOffer {
                offer: o.offer,
                tenant: o.tenant.to_string(),
                queue: o.queue.to_string(),
                agent: o.agent.to_string(),
                forks: o
                    .forks
                    .iter()
                    .map(|f| WireFork {
                        ruri: String::from_utf8_lossy(&f.ruri).into_owned(),
                        protocol: f.dest.protocol.as_str().to_string(),
                        addr: f.dest.addr,
                    })
                    .collect(),
                ring_timeout_ms: u64::try_from(o.ring_timeout.as_millis()).unwrap_or(u64::MAX),
                ring_all: o.ring_all,
            }),
            CallMsg::QueueOverflow(t) => WireCallMsg::QueueOverflow(match t {
                CcTarget::Queue(q) => WireTarget::Queue(q),
                CcTarget::User(u) => WireTarget::User(u),
                CcTarget::Number(n) => WireTarget::Number(n),
                CcTarget::Status(s) => WireTarget::Status(s),
                CcTarget::Echo => WireTarget::Echo,
                CcTarget::Music => WireTarget::Music,
                CcTarget::Conference(c) => WireTarget::Conference(c),
                CcTarget::Flow(f) => WireTarget::Flow(f),
            }),
            CallMsg::QueueResync => WireCallMsg::QueueResync,
            CallMsg::AgentResync { agent, offer } => WireCallMsg::AgentResync {
                agent: agent.to_string(),
                offer,
            },
            CallMsg::QueuePosition {
                position,
                wait_secs,
            } => WireCallMsg::QueuePosition {
                position,
                wait_secs,
            },
            CallMsg::Sip(_)
            | CallMsg::Timer(..)
            | CallMsg::Control(..)
            | CallMsg::HandOver(..)
            | CallMsg::Adopt(_)
            | CallMsg::AgentReserved { .. }
            | CallMsg::WebhookAnswered { .. }
            | CallMsg::Replacing { .. }
            | CallMsg::Hangup(_)
            | CallMsg::GetInfo(_)
            | CallMsg::InjectPanic
            | CallMsg::MediaTimeout
            | CallMsg::Dtmf { .. }
            | CallMsg::Recording(..)
            | CallMsg::CdrStored(_) => return None,
        })
    }

    /// The local message again; an offer's fork with an unknown transport is an error.
    pub fn to_local(&self) -> Result<CallMsg, String> {
        Ok(match self {
            WireCallMsg::Offer(o) => {
                let forks = o
                    .forks
                    .iter()
                    .map(|f| {
                        let protocol = Protocol::from_token(f.protocol.as_bytes())
                            .ok_or_else(|| format!("fork transport {:?}", f.protocol))?;
                        Ok(Fork {
                            ruri: Bytes::from(f.ruri.clone()),
                            dest: Dest {
                                protocol,
                                addr: f.addr,
                                conn: None,
                            },
                        })
                    })
                    .collect::<Result<Vec<Fork>, String>>()?;
                CallMsg::Offer(Box::new(Offer {
                    offer: o.offer,
                    tenant: Arc::from(o.tenant.as_str()),
                    queue: Arc::from(o.queue.as_str()),
                    agent: Arc::from(o.agent.as_str()),
                    forks,
                    ring_timeout: Duration::from_millis(o.ring_timeout_ms),
                    ring_all: o.ring_all,
                }))
            }
            WireCallMsg::QueueOverflow(t) => CallMsg::QueueOverflow(match t {
                WireTarget::Queue(q) => CcTarget::Queue(q.clone()),
                WireTarget::User(u) => CcTarget::User(u.clone()),
                WireTarget::Number(n) => CcTarget::Number(n.clone()),
                WireTarget::Status(s) => CcTarget::Status(*s),
                WireTarget::Echo => CcTarget::Echo,
                WireTarget::Music => CcTarget::Music,
                WireTarget::Conference(c) => CcTarget::Conference(c.clone()),
                WireTarget::Flow(f) => CcTarget::Flow(f.clone()),
            }),
            WireCallMsg::QueueResync => CallMsg::QueueResync,
            WireCallMsg::AgentResync { agent, offer } => CallMsg::AgentResync {
                agent: Arc::from(agent.as_str()),
                offer: *offer,
            },
            WireCallMsg::QueuePosition {
                position,
                wait_secs,
            } => CallMsg::QueuePosition {
                position: *position,
                wait_secs: *wait_secs,
            },
        })
    }

    fn kind(&self) -> &'static str {
        match self {
            WireCallMsg::Offer(_) => "call.offer",
            WireCallMsg::QueueOverflow(_) => "call.queue_overflow",
            WireCallMsg::QueueResync => "call.queue_resync",
            WireCallMsg::AgentResync { .. } => "call.agent_resync",
            WireCallMsg::QueuePosition { .. } => "call.queue_position",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(to: Payload) -> Envelope {
        Envelope {
            v: VERSION,
            from: "node-a".into(),
            sent_us: 1_700_000_000_000_000,
            to,
        }
    }

    /// Encodes, decodes and compares; also through ractor's serialize/deserialize.
    fn round_trip(e: Envelope) -> Envelope {
        let back = decode(&encode(&e)).expect("decodes");
        assert_eq!(back, e);
        let ser = ractor::Message::serialize(PortMsg::Envelope(Box::new(e.clone())))
            .expect("an envelope serialises");
        match <PortMsg as ractor::Message>::deserialize(ser).expect("never an error") {
            PortMsg::Envelope(b) => assert_eq!(*b, e),
            _ => panic!("not an envelope after ractor's round trip"),
        }
        back
    }

    fn queue(msg: QueueMsg) -> Payload {
        Payload::Queue {
            tenant: "t1".into(),
            queue: "sales".into(),
            msg: WireQueueMsg::from_local(msg).expect("crosses"),
        }
    }

    fn agent(msg: AgentMsg) -> Payload {
        Payload::Agent {
            tenant: "t1".into(),
            agent: "a7".into(),
            msg: WireAgentMsg::from_local(msg).expect("crosses"),
        }
    }

    fn call(msg: CallMsg) -> Payload {
        Payload::Call {
            call_id: "abc@host".into(),
            msg: WireCallMsg::from_local(msg).expect("crosses"),
        }
    }

    fn rules() -> OfferRules {
        OfferRules {
            ring_timeout: Duration::from_secs(15),
            wrap_up: Duration::from_millis(2500),
            max_no_answer: 3,
            no_answer_delay: Duration::from_secs(1),
            reject_delay: Duration::ZERO,
            busy_delay: Duration::from_secs(5),
        }
    }

    #[test]
    fn every_queue_message_survives_a_round_trip() {
        let id: Arc<str> = Arc::from("abc@host");
        let msgs = vec![
            QueueMsg::Join(Join {
                call_id: id.clone(),
                from: "\"Alice\" <sip:alice@x>".into(),
                user: Some(Arc::from("1001")),
                priority: 7,
                joined_ms: 1234,
                skills: vec![crate::routing::acd::Requirement {
                    skill: "billing".into(),
                    level: 4,
                }],
            }),
            QueueMsg::Leave {
                call_id: id.clone(),
                abandoned: true,
            },
            QueueMsg::OfferEnded {
                offer: 9,
                agent: Arc::from("a1"),
                call_id: id.clone(),
                outcome: OfferOutcome::Rejected(603),
            },
            QueueMsg::CallEnded { talk_ms: 65_000 },
            QueueMsg::CallerState {
                call_id: id.clone(),
                state: CallerState::Waiting {
                    ringing: vec![(3, Arc::from("a1")), (4, Arc::from("a2"))],
                },
            },
            QueueMsg::CallerState {
                call_id: id.clone(),
                state: CallerState::Answered {
                    offer: 3,
                    agent: Arc::from("a1"),
                },
            },
            QueueMsg::CallerState {
                call_id: id.clone(),
                state: CallerState::Gone { abandoned: false },
            },
            QueueMsg::MemberChanged(MemberUpdate {
                agent: Arc::from("a1"),
                available: true,
                logged_in: true,
                idle_since_ms: 99,
                calls: 4,
                talk_ms: 1000,
            }),
            QueueMsg::Announce { call_id: id },
        ];
        for m in msgs {
            let p = queue(m);
            let back = round_trip(env(p.clone()));
            let Payload::Queue { msg, .. } = &back.to else {
                panic!("queue payload");
            };
            // And back to a local message and across once more: the same wire form.
            let again = WireQueueMsg::from_local(msg.to_local()).unwrap();
            assert_eq!(&again, msg, "{}", p.kind());
        }
    }

    #[test]
    fn every_agent_message_survives_a_round_trip() {
        let msgs = vec![
            AgentMsg::Reserve(Reserve {
                queue: Arc::from("sales"),
                call_id: Arc::from("abc@host"),
                offer: 12,
                rules: rules(),
            }),
            AgentMsg::Release { offer: 12 },
            AgentMsg::OfferEnded {
                offer: crate::actors::agent::OUTBOUND_OFFER,
                outcome: OfferOutcome::Failed(480),
            },
            AgentMsg::CallEnded {
                call_id: Arc::from("abc@host"),
            },
            AgentMsg::PhoneChanged(true),
            AgentMsg::Announce,
            AgentMsg::Resume {
                call_id: Arc::from("abc@host"),
                queue: Arc::from("sales"),
                offer: 12,
                answered: true,
            },
            AgentMsg::Resume {
                call_id: Arc::from("abc@host"),
                queue: Arc::from(crate::actors::agent::OUTBOUND_QUEUE),
                offer: crate::actors::agent::OUTBOUND_OFFER,
                answered: false,
            },
        ];
        for m in msgs {
            let back = round_trip(env(agent(m)));
            let Payload::Agent { msg, .. } = &back.to else {
                panic!("agent payload");
            };
            assert_eq!(&WireAgentMsg::from_local(msg.to_local()).unwrap(), msg);
        }
        // The rules keep their millisecond values.
        let WireAgentMsg::Reserve { rules: r, .. } =
            WireAgentMsg::from_local(AgentMsg::Reserve(Reserve {
                queue: Arc::from("q"),
                call_id: Arc::from("c"),
                offer: 1,
                rules: rules(),
            }))
            .unwrap()
        else {
            panic!("reserve");
        };
        let local: OfferRules = r.into();
        assert_eq!(local.wrap_up, Duration::from_millis(2500));
        assert_eq!(local.busy_delay, Duration::from_secs(5));
    }

    #[test]
    fn an_agent_call_lookup_survives_a_round_trip() {
        let to = Payload::FindAgentCall {
            tenant: "t1".into(),
            agent: "a7".into(),
        };
        assert_eq!(to.kind(), "node.find_agent_call");
        let back = round_trip(env(to.clone()));
        assert_eq!(back.to, to);
        // A resume keeps every field, and is labelled as such.
        let p = agent(AgentMsg::Resume {
            call_id: Arc::from("c1"),
            queue: Arc::from("q"),
            offer: 3,
            answered: false,
        });
        assert_eq!(p.kind(), "agent.resume");
        let Payload::Agent { msg, .. } = round_trip(env(p)).to else {
            panic!("agent payload");
        };
        assert_eq!(
            msg,
            WireAgentMsg::Resume {
                call_id: "c1".into(),
                queue: "q".into(),
                offer: 3,
                answered: false,
            }
        );
    }

    #[test]
    fn a_trunk_attempt_survives_a_round_trip() {
        use crate::routing::trunks::{FailoverCause, MediaQuality, Outcome};
        for (outcome, media) in [
            (
                Outcome::Answered,
                Some(MediaQuality {
                    loss: 0.01,
                    jitter_ms: 12.5,
                    mos: 4.2,
                }),
            ),
            (Outcome::Failover(FailoverCause::ServiceUnavailable), None),
        ] {
            let to = Payload::Trunk {
                trunk: "carrier-a".into(),
                report: crate::actors::trunk::AttemptReport {
                    outcome,
                    status: Some(503),
                    pdd_ms: Some(850),
                    duration_ms: None,
                    media,
                },
            };
            assert_eq!(to.kind(), "trunk.attempt");
            assert_eq!(round_trip(env(to.clone())).to, to);
        }
    }

    #[test]
    fn every_call_message_survives_a_round_trip() {
        let offer = Offer {
            offer: 5,
            tenant: Arc::from("t1"),
            queue: Arc::from("sales"),
            agent: Arc::from("a1"),
            forks: vec![
                Fork {
                    ruri: Bytes::from_static(b"sip:2001@127.0.0.1:5070"),
                    dest: Dest {
                        protocol: Protocol::Udp,
                        addr: "127.0.0.1:5070".parse().unwrap(),
                        conn: None,
                    },
                },
                Fork {
                    ruri: Bytes::from_static(b"sip:2001@[::1]:5071;transport=tcp"),
                    dest: Dest {
                        protocol: Protocol::Tcp,
                        addr: "[::1]:5071".parse().unwrap(),
                        // Not carried: this node's connection id means nothing elsewhere.
                        conn: Some(42),
                    },
                },
            ],
            ring_timeout: Duration::from_secs(20),
            ring_all: true,
        };
        let msgs = vec![
            CallMsg::Offer(Box::new(offer)),
            CallMsg::QueueOverflow(CcTarget::Queue("backup".into())),
            CallMsg::QueueOverflow(CcTarget::User("2001".into())),
            CallMsg::QueueOverflow(CcTarget::Number("+4930123".into())),
            CallMsg::QueueOverflow(CcTarget::Status(486)),
            CallMsg::QueueResync,
            CallMsg::AgentResync {
                agent: Arc::from("a1"),
                offer: 5,
            },
            CallMsg::QueuePosition {
                position: 3,
                wait_secs: Some(90),
            },
            CallMsg::QueuePosition {
                position: 1,
                wait_secs: None,
            },
        ];
        for m in msgs {
            let back = round_trip(env(call(m)));
            let Payload::Call { msg, .. } = &back.to else {
                panic!("call payload");
            };
            let local = msg.to_local().expect("converts back");
            if let CallMsg::Offer(o) = &local {
                assert_eq!(o.forks.len(), 2);
                assert_eq!(&o.forks[1].ruri[..], b"sip:2001@[::1]:5071;transport=tcp");
                assert_eq!(o.forks[1].dest.protocol, Protocol::Tcp);
                assert_eq!(o.forks[1].dest.conn, None);
                assert_eq!(o.ring_timeout, Duration::from_secs(20));
                assert!(o.ring_all);
            }
            assert_eq!(&WireCallMsg::from_local(local).unwrap(), msg);
        }
    }

    #[test]
    fn messages_with_reply_ports_do_not_cross() {
        let (tx, _rx) = ractor::concurrency::oneshot();
        assert!(WireQueueMsg::from_local(QueueMsg::GetStats(tx.into())).is_none());
        assert!(WireQueueMsg::from_local(QueueMsg::Reserved {
            offer: 1,
            agent: Arc::from("a"),
            forks: Err("no_phone"),
        })
        .is_none());
        let (tx, _rx) = ractor::concurrency::oneshot();
        assert!(WireAgentMsg::from_local(AgentMsg::GetInfo(tx.into())).is_none());
        assert!(WireCallMsg::from_local(CallMsg::Hangup("x".into())).is_none());
        // Only the envelope serialises.
        assert!(ractor::Message::serialize(PortMsg::Undecodable("x".into())).is_err());
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let inputs: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"\x00\xff\xfe garbage".to_vec(),
            b"{".to_vec(),
            b"{}".to_vec(),
            b"null".to_vec(),
            b"[1,2,3]".to_vec(),
            br#"{"v":1,"from":"a","sent_us":1,"to":{"Queue":{"tenant":"t"}}}"#.to_vec(),
            br#"{"v":1,"from":"a","sent_us":-1,"to":{"Call":{"call_id":"c","msg":"QueueResync"}}}"#
                .to_vec(),
            vec![b'['; 100_000],
        ];
        for i in &inputs {
            assert!(decode(i).is_err(), "{:?}", String::from_utf8_lossy(i));
        }
        // Every prefix of a real envelope is an error too.
        let good = encode(&env(queue(QueueMsg::Leave {
            call_id: Arc::from("c"),
            abandoned: false,
        })));
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_err(), "prefix {n}");
        }
        // Another version is refused, not misread.
        let mut other = env(Payload::Call {
            call_id: "c".into(),
            msg: WireCallMsg::QueueResync,
        });
        other.v = VERSION + 1;
        assert!(matches!(
            decode(&encode(&other)),
            Err(DecodeError::Version(_))
        ));
        // Through ractor: garbage and non-casts become Undecodable, not an Err that would
        // stop the port actor.
        let garbage = SerializedMessage::Cast {
            variant: VARIANT.into(),
            args: b"\xde\xad\xbe\xef".to_vec(),
            metadata: None,
        };
        assert!(matches!(
            <PortMsg as ractor::Message>::deserialize(garbage),
            Ok(PortMsg::Undecodable(_))
        ));
        assert!(matches!(
            from_serialized(SerializedMessage::CallReply(1, b"{}".to_vec())),
            PortMsg::Undecodable(_)
        ));
    }

    #[test]
    fn a_fork_with_an_unknown_transport_is_an_error() {
        let m = WireCallMsg::Offer(WireOffer {
            offer: 1,
            tenant: "t".into(),
            queue: "q".into(),
            agent: "a".into(),
            forks: vec![WireFork {
                ruri: "sip:x@y".into(),
                protocol: "sctp".into(),
                addr: "127.0.0.1:1".parse().unwrap(),
            }],
            ring_timeout_ms: 1000,
            ring_all: false,
        });
        assert!(m.to_local().is_err());
    }
}
