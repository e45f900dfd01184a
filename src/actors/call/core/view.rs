//! A call as the API shows it: a read-only summary of a [`Checkpoint`] (`GET /calls`), so
//! readers outside the core never reach into its private state.

use serde::Serialize;

use super::*;

/// One call: its legs, parties, phase, queue, agent, hold and transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CallView {
    /// The caller leg's Call-ID: the call's name in the API and its CDR's `a_call_id`.
    pub call_id: String,
    pub tenant: Option<String>,
    /// `queued`, `setup`, `early`, `answered`, `confirmed` or `ended`.
    pub phase: &'static str,
    /// The caller (From URI of the first INVITE) and the number or user it dialled.
    pub caller: String,
    pub callee: String,
    /// When the INVITE arrived and when the call was first answered (Unix ms).
    pub start_ms: i64,
    pub answer_ms: Option<i64>,
    /// The legs in the call now: the caller's position, the callee's (absent while queued),
    /// and a transferor waiting aside while its transfer runs.
    pub legs: Vec<LegView>,
    pub queue: Option<QueueView>,
    /// The agent on a queue call (who answered it, until it leaves by a transfer).
    pub agent: Option<String>,
    /// Which leg is on hold (`a` or `b`), if any: it hears music, the other hears nothing.
    pub held: Option<&'static str>,
    pub transfer: Option<TransferView>,
    /// An API consultation in progress (the customer holds while the agent talks to it).
    pub consult: Option<ConsultView>,
    /// Transfers carried out so far (`kind:by>target`, a failed one with `:status`).
    pub transfers: Vec<String>,
}

/// One leg of a call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LegView {
    /// `a` (the caller's position), `b` (the callee's), `transferor` (aside, waiting for
    /// its transfer to end) or `consulted` (an API consultation's target).
    pub position: &'static str,
    /// The leg's SIP Call-ID.
    pub call_id: String,
    /// Who: the caller's URI, `user:<name>`, `agent:<id>`, a contact or trunk.
    pub party: String,
    /// The tenant user behind the leg, if the switch knows one (such a leg may transfer).
    pub user: Option<String>,
    /// `setup` (being called), `ringing`, `waiting` (hears music or ringing while the switch
    /// finds it a party), `up`, `held`, `aside` or `consulting` (the agent talking to a
    /// consultation's target).
    pub state: &'static str,
}

/// The queue facts of a queue call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QueueView {
    pub queue: String,
    pub priority: u32,
    /// When the caller joined (Unix ms); kept across a transfer to another queue.
    pub joined_ms: u64,
    pub waiting: bool,
}

/// An API consultation in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConsultView {
    /// `user:<name>`.
    pub target: String,
    /// The target answered and talks with the agent (a three-way or monitor: it is in the
    /// call's mix).
    pub up: bool,
    /// `consult`, `conference` (a three-way) or `monitor`.
    pub kind: &'static str,
    /// A monitor's mode: `listen`, `whisper` or `barge`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
}

/// A transfer in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TransferView {
    pub kind: &'static str,
    /// `phone` (a REFER) or `api`.
    pub by: &'static str,
    pub target: String,
}

impl Checkpoint {
    /// When the call's first INVITE arrived (Unix ms): the order of a listing.
    pub fn started_ms(&self) -> i64 {
        self.cdr.start_ms
    }

    /// What the API shows of this call.
    pub fn view(&self) -> CallView {
        let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
        let party_of = |call_id: &str| {
            self.cdr
                .legs
                .iter()
                .rev()
                .find(|l| l.call_id == call_id)
                .map(|l| l.party.clone())
        };
        let held = |leg: Leg| self.held == Some(leg);
        let transferring = self.transfer.is_some();
        let mut legs = Vec::with_capacity(3);
        let a_id = text(&self.a.call_id);
        legs.push(LegView {
            position: "a",
            party: party_of(&a_id).unwrap_or_else(|| self.cdr.caller.clone()),
            call_id: a_id,
            user: self.users[0].as_deref().map(str::to_string),
            state: match self.phase {
                _ if held(Leg::A) => "held",
                // A test number (echo, music): the switch answered, no one else comes.
                Phase::Setup if self.media.as_ref().is_some_and(|m| m.service.is_some()) => "up",
                Phase::Queued => "waiting",
                Phase::Setup | Phase::Early if self.a_up || transferring => "waiting",
                Phase::Setup | Phase::Early => "setup",
                Phase::Answered | Phase::Confirmed | Phase::Ended => "up",
            },
        });
        if !self.b.call_id.is_empty() && self.phase != Phase::Queued {
            let b_id = text(&self.b.call_id);
            legs.push(LegView {
                position: "b",
                party: party_of(&b_id).unwrap_or_else(|| self.cdr.target.clone()),
                call_id: b_id,
                user: self.users[1].as_deref().map(str::to_string),
                state: match self.phase {
                    _ if held(Leg::B) => "held",
                    _ if self
                        .consult
                        .as_ref()
                        .is_some_and(|c| c.up && c.mix.is_none()) =>
                    {
                        "consulting"
                    }
                    Phase::Queued | Phase::Setup => "setup",
                    Phase::Early => "ringing",
                    Phase::Answered | Phase::Confirmed | Phase::Ended => "up",
                },
            });
        }
        if let Some(p) = self.transfer.as_ref().and_then(|t| t.transferor.as_ref()) {
            let id = text(&p.dialog.call_id);
            legs.push(LegView {
                position: "transferor",
                party: party_of(&id).unwrap_or_default(),
                call_id: id,
                user: p.user.as_deref().map(str::to_string),
                state: "aside",
            });
        }
        if let Some(c) = &self.consult {
            let id = text(&c.leg.dialog.call_id);
            legs.push(LegView {
                position: match c.mix {
                    None => "consulted",
                    Some(super::MixKind::Conference) => "conference",
                    Some(super::MixKind::Monitor(_)) => "supervisor",
                },
                party: c.target.clone(),
                call_id: id,
                user: c.leg.user.as_deref().map(str::to_string),
                state: if c.up { "up" } else { "setup" },
            });
        }
        CallView {
            call_id: text(&self.a_call_id),
            tenant: self.tenant.as_deref().map(str::to_string),
            phase: self.phase.label(),
            caller: self.cdr.caller.clone(),
            callee: self.cdr.callee.clone(),
            start_ms: self.cdr.start_ms,
            answer_ms: self.cdr.answer_ms,
            legs,
            queue: self.queue.as_ref().map(|q| QueueView {
                queue: format!("{}/{}", q.tenant, q.queue),
                priority: q.priority,
                joined_ms: q.joined_ms,
                waiting: q.waiting,
            }),
            agent: self
                .queue
                .as_ref()
                .and_then(|q| q.agent.as_deref())
                .filter(|_| self.queue.as_ref().is_some_and(|q| !q.released))
                .map(str::to_string),
            held: self.held.map(|l| match l {
                Leg::A => "a",
                Leg::B => "b",
                Leg::X => "transferor",
            }),
            transfer: self.transfer.as_ref().map(|t| TransferView {
                kind: t.kind,
                by: t.by,
                target: t.target.clone(),
            }),
            consult: self.consult.as_ref().map(|c| ConsultView {
                target: c.target.clone(),
                up: c.up,
                kind: c.mix.map_or("consult", |k| k.label()),
                mode: match c.mix {
                    Some(super::MixKind::Monitor(m)) => Some(m.label()),
                    _ => None,
                },
            }),
            transfers: self.cdr.transfers.clone(),
        }
    }
}
