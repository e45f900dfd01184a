//! Transfer and hold: the switch carries out a REFER (RFC 3515) itself instead of relaying
//! it, and the API's hold, unhold and transfer commands work the same way.
//!
//! A blind transfer moves the transferor aside (`Leg::X`, where it still gets the NOTIFYs
//! of its REFER and can hang up), plays music to the other party (the transferee) and
//! rings the target in the B position with the switch's own SDP offer. When the target
//! answers, the transferee and the target are bridged, the transferor is told `200 OK` and
//! sent a BYE. When the target fails, the transferor (if it is still there) is bridged back
//! and told the failure (a recall). A transfer to a queue puts the caller back in the
//! queue with its priority and its original joining time. When the caller transfers
//! itself away, the legs swap positions first, so the callee is the one who stays.
//!
//! Transfers need the call's media anchored: the switch offers the target its own relay
//! port, so the transferee's audio does not have to be renegotiated (others get 488).

use super::*;

/// Counter, labels `kind` (`blind`), `by` (`phone`, `api`) and `outcome` (`completed`,
/// `failed`, `refused`): transfers.
pub const TRANSFERS: &str = "switchyard_transfers_total";
/// Counter, label `reason`: REFERs and transfer commands refused, by why.
pub const TRANSFERS_REFUSED: &str = "switchyard_transfers_refused_total";
/// Counter, label `action` (`hold`, `unhold`): API hold commands carried out.
pub const HOLDS: &str = "switchyard_call_holds_total";

pub fn describe() {
    use metrics::describe_counter;
    describe_counter!(TRANSFERS, "Call transfers, by kind, requester and outcome");
    describe_counter!(
        TRANSFERS_REFUSED,
        "Transfer requests (REFER or API) refused, by reason"
    );
    describe_counter!(HOLDS, "Hold and unhold commands carried out, by action");
}

/// Why a call-control command (API) was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The HTTP status that fits (404, 409, 422, ...).
    pub status: u16,
    pub reason: String,
}

impl Refused {
    pub(super) fn new(status: u16, reason: impl Into<String>) -> Refused {
        Refused {
            status,
            reason: reason.into(),
        }
    }
}

/// The dialog a Refer-To's `Replaces` (RFC 3891) names: an attended transfer's consultation
/// call, as the transferor knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replaces {
    pub call_id: Bytes,
    pub to_tag: Bytes,
    pub from_tag: Bytes,
}

impl Replaces {
    /// `callid;to-tag=X;from-tag=Y` (parameters in any order, escapes already undone).
    pub fn parse(v: &str) -> Option<Replaces> {
        let mut parts = v.split(';');
        let call_id = parts.next()?.trim();
        let (mut to_tag, mut from_tag) = (None, None);
        for p in parts {
            match p.split_once('=') {
                Some((k, t)) if k.trim().eq_ignore_ascii_case("to-tag") => to_tag = Some(t.trim()),
                Some((k, t)) if k.trim().eq_ignore_ascii_case("from-tag") => {
                    from_tag = Some(t.trim())
                }
                _ => {}
            }
        }
        if call_id.is_empty() {
            return None;
        }
        Some(Replaces {
            call_id: Bytes::copy_from_slice(call_id.as_bytes()),
            to_tag: Bytes::copy_from_slice(to_tag?.as_bytes()),
            from_tag: Bytes::copy_from_slice(from_tag?.as_bytes()),
        })
    }

    /// Whether `d` is the dialog named: its Call-ID, and its two tags in either order (the
    /// transferor names them from its own side of the dialog).
    pub(super) fn names(&self, d: &Dialog) -> bool {
        d.call_id == self.call_id
            && ((d.local_tag == self.to_tag && d.remote_tag == self.from_tag)
                || (d.local_tag == self.from_tag && d.remote_tag == self.to_tag))
    }
}

/// Undoes `%XX` escapes (a URI header's value); a malformed escape stays as it is.
fn unescape(s: &str) -> String {
    pub(super) fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A leg one call hands to another (the target of an attended transfer).
#[derive(Clone, Debug)]
pub struct HandedLeg {
    leg: Parked,
    /// Who it is, for the CDR (`user:1003`, a URI).
    party: String,
}

/// The target of a Refer-To header: its URI's user, and the dialog it asks to replace (an
/// attended transfer), if any.
pub(super) fn refer_target(msg: &Message) -> Option<(String, Option<Result<Replaces, ()>>)> {
    let v = msg.value(HeaderName::ReferTo)?;
    let text = String::from_utf8_lossy(v);
    let inner = match (text.find('<'), text.find('>')) {
        (Some(a), Some(b)) if a < b => &text[a + 1..b],
        _ => text.split(';').next().unwrap_or_default().trim(),
    };
    let (uri, headers) = match inner.split_once('?') {
        Some((u, h)) => (u, h),
        None => (inner, ""),
    };
    let replaces = headers.split('&').find_map(|h| {
        let (k, v) = h.split_once('=')?;
        k.eq_ignore_ascii_case("replaces")
            .then(|| Replaces::parse(&unescape(v)).ok_or(()))
    });
    let parsed = crate::sip::uri::Uri::parse(&Bytes::copy_from_slice(uri.as_bytes())).ok()?;
    let user = parsed.user_unescaped()?;
    let user = String::from_utf8_lossy(&user).into_owned();
    (!user.is_empty()).then_some((user, replaces))
}

impl CallCore {
    /// The relay side `leg` uses.
    pub(super) fn side_of(&self, leg: Leg) -> Side {
        let Some(c) = self.core.as_ref() else {
            return match leg {
                Leg::B => Side::B,
                _ => Side::A,
            };
        };
        match leg {
            Leg::A => c.sides[0],
            Leg::B => c.sides[1],
            Leg::X => self.x_leg().map_or(c.sides[1], |p| p.side),
        }
    }

    /// A REFER on `leg` (in its dialog; server transaction `id`): refused, or accepted and
    /// carried out.
    pub(super) fn on_refer(&mut self, leg: Leg, msg: &Message, id: u32) {
        let refusal = match refer_target(msg) {
            None | Some((_, Some(Err(())))) => {
                Some((400, "Bad Request (Refer-To)", "bad_refer_to"))
            }
            Some((_, Some(Ok(replaces)))) => match self.may_transfer(leg) {
                Err(refused) => Some(refused),
                Ok(()) => {
                    self.respond(id, 202, "Accepted", None);
                    self.attended_transfer(leg, replaces);
                    None
                }
            },
            Some((user, None)) => match self.may_transfer(leg) {
                Err((status, reason, label)) => Some((status, reason, label)),
                Ok(()) => {
                    let tenant = self.core().tenant.clone().unwrap_or_else(|| Arc::from(""));
                    match self.env.transfer_target(&tenant, &user) {
                        Ok(target) => {
                            self.respond(id, 202, "Accepted", None);
                            self.blind_transfer(leg, target, "phone", true);
                            None
                        }
                        Err(e) => {
                            let (status, reason) = e.status();
                            Some((status, reason, e.label()))
                        }
                    }
                }
            },
        };
        if let Some((status, reason, label)) = refusal {
            metrics::counter!(TRANSFERS_REFUSED, "reason" => label).increment(1);
            tracing::info!(status, reason = label, "REFER refused");
            self.respond(id, status, reason, None);
        }
    }

    /// Whether `leg` may transfer the call now: Err with the SIP status, reason and counter
    /// label otherwise.
    pub(super) fn may_transfer(&self, leg: Leg) -> Result<(), (u16, &'static str, &'static str)> {
        let Some(c) = self.core.as_ref() else {
            return Err((481, "Call/Transaction Does Not Exist", "no_call"));
        };
        let user = match leg {
            Leg::A => &c.users[0],
            Leg::B => &c.users[1],
            Leg::X => &None,
        };
        if user.is_none() || c.tenant.is_none() {
            // Only a tenant's own user (an agent's phone, an authenticated caller) moves a
            // call: an anonymous caller or a carrier must not make the switch dial out.
            return Err((403, "Forbidden (Transfer Not Allowed)", "not_allowed"));
        }
        if c.phase != Phase::Confirmed || c.ended {
            return Err((491, "Request Pending", "not_confirmed"));
        }
        if c.transfer.is_some() || c.consult.is_some() || self.invite_pending() {
            return Err((491, "Request Pending", "busy"));
        }
        if self.session.is_none() {
            return Err((
                488,
                "Not Acceptable Here (Transfer Needs Anchored Media)",
                "not_anchored",
            ));
        }
        Ok(())
    }

    /// Moves `transferor` out of the call and connects the other party to `target`.
    pub(super) fn blind_transfer(
        &mut self,
        transferor: Leg,
        target: TransferTarget,
        by: &'static str,
        notify: bool,
    ) {
        if transferor == Leg::A {
            // The callee stays: it takes the caller's position, the target the callee's.
            self.swap_legs();
        }
        let label = target.label();
        tracing::info!(target = %label, by, "blind transfer");
        let parked = self.park_b();
        let queue_before = self.core().queue.clone();
        self.core().transfer = Some(Box::new(Transfer {
            kind: "blind",
            by,
            target: label.clone(),
            transferor: Some(parked),
            notify,
            queue_before,
        }));
        self.core().a_up = true;
        if let Some(id) = self.max_duration.take() {
            self.cancel_timer(id);
        }
        self.notify_transferor(100, "Trying", false);
        // The transferee hears music while the target rings.
        self.media_op(MediaOp::Bridge(false));
        self.play_music(None);
        match target {
            TransferTarget::Phones { user, forks } => {
                self.core().users[1] = Some(user.clone());
                self.place_b_leg(&forks, Bytes::from(user.to_string()), label, None);
                self.cancel_no_answer();
                self.no_answer =
                    Some(self.schedule_call_timer(CallTimer::NoAnswer, self.cfg.no_answer));
                self.set_phase(Phase::Setup);
            }
            TransferTarget::Agent { tenant, agent, .. } => {
                // Reserved first (never two calls at once); the transferee hears music
                // meanwhile. The target rings once the agent's phones are known.
                self.core().users[1] = Some(Arc::from(format!("agent:{agent}").as_str()));
                self.set_phase(Phase::Setup);
                self.out.push(Effect::ReserveAgent { tenant, agent });
            }
            TransferTarget::Queue {
                tenant,
                queue,
                priority,
            } => {
                // The agent that had the call moves on; the caller waits again with the
                // priority and the joining time it had.
                let now = self.wall_ms;
                self.release_agent(Some(now));
                let (joined_ms, priority) = match &self.core().queue {
                    Some(q) => (q.joined_ms, q.priority.max(priority)),
                    None => (now as u64, priority),
                };
                self.core().queue = Some(QueueLeg {
                    tenant,
                    queue,
                    priority,
                    joined_ms,
                    skills: Vec::new(),
                    agent: None,
                    answered_offer: None,
                    wait_ms: None,
                    abandoned: false,
                    waiting: true,
                    released: false,
                });
                self.core().users[1] = None;
                self.core().cdr.route = label;
                self.set_phase(Phase::Queued);
                self.join_queue();
                // In the queue the transfer is done: the transferor is let go.
                self.transfer_done();
            }
        }
        self.checkpoint();
    }

    /// The target answered and is bridged with the transferee (or the caller is back in a
    /// queue): the transferor is told and let go.
    pub(super) fn transfer_done(&mut self) {
        let Some(t) = self.core().transfer.clone() else {
            return;
        };
        self.transfer_agent(Some(true), 200);
        self.notify_transferor(200, "OK", true);
        if let Some(p) = &t.transferor {
            let id = String::from_utf8_lossy(&p.dialog.call_id).into_owned();
            self.leg_left(&id, "transferred");
            self.send_bye(Leg::X);
        }
        self.release_transferring_agent(&t);
        let by = if t.by == "api" { "api" } else { "phone" };
        metrics::counter!(TRANSFERS, "kind" => t.kind, "by" => by, "outcome" => "completed")
            .increment(1);
        let entry = format!("{}:{}>{}", t.kind, t.by, t.target);
        let core = self.core();
        core.cdr.transfers.push(entry);
        core.transfer = None;
        self.checkpoint();
    }

    /// A queue's agent who transferred the call away goes to wrap-up now.
    pub(super) fn release_transferring_agent(&mut self, t: &Transfer) {
        let agent_was_transferor = t
            .queue_before
            .as_ref()
            .and_then(|q| q.agent.as_ref())
            .is_some_and(|a| {
                t.transferor
                    .as_ref()
                    .and_then(|p| p.user.as_deref())
                    .is_some_and(|u| u == format!("agent:{a}") || u == &**a)
            });
        if agent_was_transferor {
            let now = self.wall_ms;
            self.release_agent(Some(now));
        }
    }

    /// The target did not answer. True when the call goes on: the transferor, still there,
    /// is bridged back (a recall). False when there is no one to go back to.
    pub(super) fn transfer_failed(&mut self, status: u16) -> bool {
        let Some(t) = self.core().transfer.take() else {
            return false;
        };
        self.transfer_agent(Some(false), status);
        let by = if t.by == "api" { "api" } else { "phone" };
        metrics::counter!(TRANSFERS, "kind" => t.kind, "by" => by, "outcome" => "failed")
            .increment(1);
        let entry = format!("{}:{}>{}:{status}", t.kind, t.by, t.target);
        self.core().cdr.transfers.push(entry);
        let Some(p) = t.transferor.clone() else {
            self.checkpoint();
            return false;
        };
        // Tell the transferor while its dialog is still the parked one.
        self.core().transfer = Some(t);
        self.notify_transferor(status, reason_phrase(status), true);
        self.core().transfer = None;
        let core = self.core();
        let failed = std::mem::replace(&mut core.b_call_id, p.dialog.call_id.clone());
        core.b = p.dialog;
        core.b_dest = p.dest;
        core.b_invite = p.invite;
        core.b_ack = p.ack;
        core.users[1] = p.user;
        core.sides[1] = p.side;
        if !failed.is_empty() {
            self.old_b_ids.push(failed);
        }
        self.cancel_no_answer();
        self.offer_forks.clear();
        let a = self.side_of(Leg::A);
        self.media_op(MediaOp::StopPlay(a));
        self.media_op(MediaOp::Bridge(true));
        self.set_phase(Phase::Confirmed);
        true
    }

    /// A NOTIFY (RFC 3515 §2.4.5) to the transferor with the target's progress as a
    /// `message/sipfrag` status line; `terminated` ends the implicit subscription.
    pub(super) fn notify_transferor(&mut self, status: u16, reason: &str, terminated: bool) {
        let notify = self
            .core
            .as_ref()
            .and_then(|c| c.transfer.as_ref())
            .is_some_and(|t| t.notify && t.transferor.is_some());
        if !notify {
            return;
        }
        let (protocol, dest) = self.leg_dest(Leg::X);
        let branch = new_branch();
        let via = self.cfg.via(protocol, &branch);
        let contact = self.cfg.contact(protocol);
        let mut n = self
            .dialog_mut(Leg::X)
            .request(Method::Notify, &via, &contact, 70);
        n.push(HeaderName::Event, "refer");
        n.headers.push(crate::sip::message::Header::named(
            "Subscription-State",
            if terminated {
                Bytes::from_static(b"terminated;reason=noresource")
            } else {
                Bytes::from_static(b"active;expires=60")
            },
        ));
        n.push(HeaderName::ContentType, "message/sipfrag;version=2.0");
        n.body = Bytes::from(format!("SIP/2.0 {status} {reason}\r\n"));
        self.new_client_tx(Leg::X, Role::Own, n, branch, dest);
    }

    /// The leg out of the bridge (`Leg::X`): a transferor waiting aside, else a
    /// consultation's target.
    pub(super) fn x_leg(&self) -> Option<&Parked> {
        let c = self.core.as_ref()?;
        c.transfer
            .as_ref()
            .and_then(|t| t.transferor.as_ref())
            .or(c.consult.as_ref().map(|k| &k.leg))
    }

    /// Takes the callee out of the B position into the transfer's parking place.
    pub(super) fn park_b(&mut self) -> Parked {
        let core = self.core();
        let parked = Parked {
            dialog: core.b.clone(),
            dest: core.b_dest,
            invite: core.b_invite.clone(),
            ack: core.b_ack.take(),
            user: core.users[1].clone(),
            side: core.sides[1],
        };
        // Transactions of the old callee (the REFER's, a NOTIFY's) go with it.
        for t in self.txs.iter_mut().filter(|t| t.leg == Leg::B) {
            t.leg = Leg::X;
        }
        parked
    }

    /// The caller and the callee change positions (the caller transfers itself away).
    pub(super) fn swap_legs(&mut self) {
        let core = self.core();
        std::mem::swap(&mut core.a, &mut core.b);
        let a_dest = Dest {
            protocol: core.a_source.protocol,
            addr: core.a_source.remote,
            conn: core.a_source.conn,
        };
        let b = core.b_dest;
        core.a_source = Source {
            protocol: b.protocol,
            remote: b.addr,
            local: b.addr,
            conn: b.conn,
        };
        core.b_dest = a_dest;
        std::mem::swap(&mut core.a_invite, &mut core.b_invite);
        core.b_call_id = core.b.call_id.clone();
        core.b_ack = None;
        core.users.swap(0, 1);
        core.sides.swap(0, 1);
        for t in self.txs.iter_mut() {
            t.leg = match t.leg {
                Leg::A => Leg::B,
                Leg::B => Leg::A,
                Leg::X => Leg::X,
            };
        }
    }

    /// A request from the parked transferor: its BYE is answered here (nothing to relay to);
    /// anything else is acknowledged.
    pub(super) fn parked_request(&mut self, method: &Method, id: u32) {
        if *method == Method::Bye && self.mixed_x_bye(id) {
            return;
        }
        if *method == Method::Bye {
            if let Some(t) = self.core().transfer.as_mut() {
                if let Some(p) = t.transferor.take() {
                    let call_id = String::from_utf8_lossy(&p.dialog.call_id).into_owned();
                    self.leg_left(&call_id, "transferred");
                }
            }
            self.checkpoint();
        }
        self.respond(id, 200, "OK", None);
    }

    /// The agent a blind transfer goes to was reserved: its phones ring; or it could not be
    /// (busy, logged out): the transfer fails.
    pub(super) fn agent_reserved(
        &mut self,
        tenant: Arc<str>,
        agent: Arc<str>,
        phones: Result<Vec<Fork>, String>,
    ) {
        let live = self.core.as_ref().is_some_and(|c| {
            !c.ended && c.transfer.is_some() && c.phase == Phase::Setup && c.agent.is_none()
        });
        match phones {
            Ok(forks) if live && !forks.is_empty() => {
                self.core().agent = Some((tenant.clone(), agent.clone(), false));
                let call_id = self.a_call_id_str();
                self.note_agent_call(
                    tenant,
                    agent.clone(),
                    crate::actors::agent::AgentCall {
                        call_id,
                        queue: Arc::from(crate::actors::agent::OUTBOUND_QUEUE),
                        offer: crate::actors::agent::OUTBOUND_OFFER,
                        answered: false,
                    },
                );
                let label = format!("agent:{agent}");
                self.place_b_leg(&forks, Bytes::from(agent.to_string()), label, None);
                self.cancel_no_answer();
                self.no_answer =
                    Some(self.schedule_call_timer(CallTimer::NoAnswer, self.cfg.no_answer));
                self.checkpoint();
            }
            Ok(_) if live => {
                self.release_reserved(
                    &tenant,
                    &agent,
                    crate::actors::agent::OfferOutcome::Cancelled,
                );
                if !self.transfer_failed(480) {
                    self.hang_up_answered_caller(HangupBy::System, "transfer target unavailable");
                }
            }
            Ok(_) => {
                // The transfer is over meanwhile: the reservation is given back.
                self.release_reserved(
                    &tenant,
                    &agent,
                    crate::actors::agent::OfferOutcome::Cancelled,
                );
            }
            Err(why) => {
                tracing::info!(%agent, %why, "transfer target agent not reserved");
                metrics::counter!(TRANSFERS_REFUSED, "reason" => "agent_busy").increment(1);
                if live && !self.transfer_failed(486) {
                    self.hang_up_answered_caller(HangupBy::System, "transfer target busy");
                }
            }
        }
    }

    /// Tells a reserved agent how its offer ended (and forgets it as this call's).
    fn release_reserved(
        &mut self,
        tenant: &Arc<str>,
        agent: &Arc<str>,
        outcome: crate::actors::agent::OfferOutcome,
    ) {
        let call_id = self.a_call_id_str();
        self.forget_agent_call(tenant.clone(), agent.clone(), call_id);
        self.tell_agent(
            tenant.clone(),
            agent.clone(),
            crate::actors::agent::AgentMsg::OfferEnded {
                offer: crate::actors::agent::OUTBOUND_OFFER,
                outcome,
            },
        );
    }

    /// A transfer's agent answered (it is on the call), failed to (its reservation ends), or
    /// the call it took ended (it moves on).
    pub(super) fn transfer_agent(&mut self, answered: Option<bool>, status: u16) {
        let Some((tenant, agent, was_answered)) = self.core().agent.clone() else {
            return;
        };
        use crate::actors::agent::{AgentMsg, OfferOutcome};
        match answered {
            Some(true) if !was_answered => {
                self.core().agent = Some((tenant.clone(), agent.clone(), true));
                let call_id = self.a_call_id_str();
                self.note_agent_call(
                    tenant.clone(),
                    agent.clone(),
                    crate::actors::agent::AgentCall {
                        call_id,
                        queue: Arc::from(crate::actors::agent::OUTBOUND_QUEUE),
                        offer: crate::actors::agent::OUTBOUND_OFFER,
                        answered: true,
                    },
                );
                self.tell_agent(
                    tenant,
                    agent,
                    AgentMsg::OfferEnded {
                        offer: crate::actors::agent::OUTBOUND_OFFER,
                        outcome: OfferOutcome::Answered,
                    },
                );
            }
            Some(false) if !was_answered => {
                self.core().agent = None;
                self.release_reserved(&tenant, &agent, OfferOutcome::from_status(status, true));
            }
            None if was_answered => {
                self.core().agent = None;
                let call_id = self.a_call_id_str();
                self.forget_agent_call(tenant.clone(), agent.clone(), call_id.clone());
                self.tell_agent(tenant, agent, AgentMsg::CallEnded { call_id });
            }
            None => {
                self.core().agent = None;
                self.release_reserved(&tenant, &agent, OfferOutcome::Cancelled);
            }
            _ => {}
        }
    }

    // ---- attended transfer: the consultation call's other leg joins this call ----

    /// A REFER with Replaces from `transferor`: the other party of the consultation call it
    /// names is asked for (that call hands it over and ends), then joins this call in the
    /// transferor's place ([`CallCore::adopt`]).
    pub(super) fn attended_transfer(&mut self, transferor: Leg, replaces: Replaces) {
        if transferor == Leg::A {
            self.swap_legs();
        }
        tracing::info!(replaces = %String::from_utf8_lossy(&replaces.call_id), "attended transfer");
        let parked = self.park_b();
        let queue_before = self.core().queue.clone();
        self.core().transfer = Some(Box::new(Transfer {
            kind: "attended",
            by: "phone",
            target: String::new(),
            transferor: Some(parked),
            notify: true,
            queue_before,
        }));
        self.core().a_up = true;
        self.notify_transferor(100, "Trying", false);
        self.media_op(MediaOp::Bridge(false));
        self.play_music(None);
        self.out.push(Effect::AskHandOver(replaces));
        self.checkpoint();
    }

    /// Another call asks for the leg at the far end of the dialog `r` names (this call is the
    /// consultation call of an attended transfer): that leg is handed over, the named one (the
    /// transferor's) gets a BYE, and this call ends.
    pub(super) fn give_leg(&mut self, r: &Replaces) -> Result<HandedLeg, String> {
        let c = self.core.as_ref().ok_or("no call")?;
        if c.phase != Phase::Confirmed || c.ended || c.transfer.is_some() {
            return Err("the consultation call is not connected".into());
        }
        if c.trunk.is_some() {
            // Its channel would be counted by a call that no longer holds it.
            return Err("the consultation call is on a trunk".into());
        }
        let give = if r.names(&c.a) {
            Leg::B
        } else if r.names(&c.b) {
            Leg::A
        } else {
            return Err("no such dialog".into());
        };
        if give == Leg::A {
            self.swap_legs();
        }
        let party = self.core().cdr.target.clone();
        let leg = self.park_b();
        let call_id = leg.dialog.call_id.clone();
        let id = String::from_utf8_lossy(&call_id).into_owned();
        self.leg_left(&id, "transferred");
        self.handed_over.push(call_id);
        self.core().b_call_id = Bytes::new();
        self.core()
            .cdr
            .transfers
            .push("attended:handed-over".into());
        self.cancel_call_timers();
        self.end(200, HangupBy::System, "replaced (attended transfer)");
        self.after_cdr(AfterCdr::Bye(Leg::A));
        Ok(HandedLeg { leg, party })
    }

    /// The consultation call's leg arrives (or why not): it takes the transferor's place and
    /// is re-INVITEd to this call's media; its answer completes the transfer.
    pub(super) fn adopt(&mut self, handed: Result<HandedLeg, String>) {
        let waiting = self.core.as_ref().is_some_and(|c| {
            !c.ended
                && c.transfer
                    .as_ref()
                    .is_some_and(|t| t.kind == "attended" && t.target.is_empty())
        });
        let handed = match handed {
            Ok(h) if waiting => h,
            Ok(h) => {
                // Too late (the call ended meanwhile): the leg is let go.
                let b = std::mem::replace(&mut self.core().b, h.leg.dialog.clone());
                let dest = std::mem::replace(&mut self.core().b_dest, h.leg.dest);
                self.send_bye(Leg::B);
                self.core().b = b;
                self.core().b_dest = dest;
                return;
            }
            Err(why) => {
                tracing::info!(%why, "attended transfer: no consultation leg");
                metrics::counter!(TRANSFERS_REFUSED, "reason" => "no_dialog").increment(1);
                if !self.transfer_failed(481) {
                    self.hang_up_answered_caller(HangupBy::System, "transfer failed");
                }
                return;
            }
        };
        let HandedLeg { leg, party } = handed;
        let call_id = leg.dialog.call_id.clone();
        if let Some(t) = self.core().transfer.as_mut() {
            t.target = party.clone();
        }
        let core = self.core();
        let old = std::mem::replace(&mut core.b_call_id, call_id.clone());
        core.b = leg.dialog;
        core.b_dest = leg.dest;
        core.b_invite = leg.invite;
        core.b_ack = leg.ack;
        core.users[1] = leg.user;
        core.cdr.target = party.clone();
        if !old.is_empty() {
            self.old_b_ids.push(old);
        }
        self.register(call_id.clone());
        self.leg_joined(&call_id, "transfer", party, true);
        self.reoffer(Leg::B, Reoffer::Adopt);
        self.checkpoint();
    }

    /// A re-INVITE of the switch's own: `leg` is offered this call's relay port (sendrecv).
    pub(super) fn reoffer(&mut self, leg: Leg, purpose: Reoffer) {
        let Some(session) = self.session else { return };
        let side = self.side_of(leg);
        self.reoffer_on(leg, session, side, purpose);
    }

    /// A re-INVITE of the switch's own offering `leg` the port of `side` of a session.
    pub(super) fn reoffer_on(&mut self, leg: Leg, ports: MediaPorts, side: Side, purpose: Reoffer) {
        let body = super::consult::switch_offer(&ports, side);
        let (protocol, dest) = self.leg_dest(leg);
        let branch = new_branch();
        let via = self.cfg.via(protocol, &branch);
        let contact = self.cfg.contact(protocol);
        let mut inv = self
            .dialog_mut(leg)
            .request(Method::Invite, &via, &contact, 70);
        inv.push(HeaderName::ContentType, "application/sdp");
        inv.body = body;
        self.new_client_tx(leg, Role::Reoffer(purpose), inv, branch, dest);
    }

    /// The answer to a re-INVITE of the switch's own.
    pub(super) fn reoffer_answered(&mut self, id: u32, purpose: Reoffer, resp: &Message) {
        let status = resp.status().unwrap_or(0);
        let Some((leg, cseq)) = self
            .txs
            .iter()
            .find(|t| t.id == id)
            .map(|t| (t.leg, t.request.cseq().map(|c| c.seq).unwrap_or(1)))
        else {
            return;
        };
        if status < 200 {
            return;
        }
        if (200..300).contains(&status) {
            // The offer was ours: the ACK carries nothing (hop by hop).
            self.send_ack(leg, cseq, Bytes::new(), None);
            if let Some(c) = resp.contacts().next() {
                self.dialog_mut(leg).remote_target = c.uri;
            }
            if let Ok(sdp) = crate::sip::sdp::parse(&resp.body) {
                let ip = self.signalling_ip(leg);
                if purpose == Reoffer::ConsultAgent {
                    self.learn_consult(Side::A, &sdp, ip);
                } else {
                    let side = self.side_of(leg);
                    self.learn_answer(side, &sdp, ip);
                }
            }
        }
        match purpose {
            Reoffer::ConsultAgent => self.consult_agent_moved((200..300).contains(&status), status),
            Reoffer::Adopt if (200..300).contains(&status) => {
                let a = self.side_of(Leg::A);
                self.media_op(MediaOp::StopPlay(a));
                self.media_op(MediaOp::Bridge(true));
                self.transfer_done();
                // The transferee may have been put on hold by the transferor: it is offered
                // the call's media afresh (sendrecv).
                self.reoffer(Leg::A, Reoffer::Refresh);
            }
            Reoffer::Adopt => {
                // The consultation leg refused to move: it is let go, the transferor comes back.
                self.send_bye(Leg::B);
                if !self.transfer_failed(status) {
                    self.hang_up_answered_caller(HangupBy::System, "transfer target refused");
                }
            }
            Reoffer::Refresh => {}
        }
        self.checkpoint();
    }

    // ---- restart ----

    /// A restarted actor puts a transfer or consultation it was in the middle of into a
    /// settled state (the transactions in flight died with the old actor). True when the
    /// call is dealt with; false lets the usual restore of its phase go on. A held call
    /// needs nothing: its music plays in the relay and `held` is in the checkpoint.
    pub(super) fn restore_topology(&mut self, phase: Phase) -> bool {
        if let Some(c) = self.core().consult.clone() {
            if c.mix.is_some() && c.up {
                // A three-way or monitor in progress goes on (the mix kept mixing): its
                // topology is stated again.
                self.mix_topology();
                return false;
            }
            if !c.up && c.leg.ack.is_none() {
                // Still ringing: its INVITE is cancelled without its transaction.
                let cancel = cancel_for(&c.leg.invite);
                self.new_client_tx(Leg::X, Role::Own, cancel, Bytes::new(), c.leg.dest);
            }
            self.consult_over("failed", 500);
            return false;
        }
        let Some(t) = self.core().transfer.clone() else {
            return false;
        };
        if matches!(phase, Phase::Setup | Phase::Early) {
            // The target was ringing: cancelled, and the transferor (if there) bridged back.
            let cancel = cancel_for(&self.core().b_invite);
            let dest = self.core().b_dest;
            self.new_client_tx(Leg::B, Role::BCancel, cancel, Bytes::new(), dest);
            if !self.transfer_failed(500) {
                self.hang_up_answered_caller(HangupBy::System, "restarted during a transfer");
            }
            return true;
        }
        if phase == Phase::Confirmed && t.kind == "attended" {
            if t.target.is_empty() {
                // The consultation call's answer went to the old actor.
                self.transfer_failed(500);
            } else {
                // The target joined but its re-INVITE's answer was lost: offer again.
                self.reoffer(Leg::B, Reoffer::Adopt);
            }
        }
        false
    }

    // ---- hold ----

    /// Puts `leg` on hold: it hears music, the other leg hears nothing.
    pub(super) fn hold(&mut self, leg: Leg) -> Result<(), Refused> {
        self.controllable()?;
        if self.core().held.is_some() {
            return Err(Refused::new(409, "the call is on hold already"));
        }
        let side = self.side_of(leg);
        self.media_op(MediaOp::Bridge(false));
        self.media_op(MediaOp::Music {
            side,
            announce: None,
        });
        self.core().held = Some(leg);
        metrics::counter!(HOLDS, "action" => "hold").increment(1);
        self.checkpoint();
        Ok(())
    }

    /// Takes the held leg off hold: the music stops and the legs hear each other again.
    pub(super) fn unhold(&mut self) -> Result<(), Refused> {
        self.controllable()?;
        let Some(leg) = self.core().held.take() else {
            return Err(Refused::new(409, "the call is not on hold"));
        };
        let side = self.side_of(leg);
        self.media_op(MediaOp::StopPlay(side));
        self.media_op(MediaOp::Bridge(true));
        metrics::counter!(HOLDS, "action" => "unhold").increment(1);
        self.checkpoint();
        Ok(())
    }

    /// A call the API may hold or transfer: up, anchored, not in a transfer.
    pub(super) fn controllable(&self) -> Result<(), Refused> {
        let Some(c) = self.core.as_ref() else {
            return Err(Refused::new(404, "no such call"));
        };
        if c.phase != Phase::Confirmed || c.ended {
            return Err(Refused::new(409, "the call is not connected"));
        }
        if c.transfer.is_some() {
            return Err(Refused::new(409, "the call is being transferred"));
        }
        if c.consult.is_some() {
            return Err(Refused::new(409, "a consultation is in progress"));
        }
        if c.seated.is_some() {
            return Err(Refused::new(409, "the call is in a conference"));
        }
        if self.session.is_none() {
            return Err(Refused::new(
                422,
                "the call's media is not anchored (route or queue `media = \"anchor\"`)",
            ));
        }
        Ok(())
    }

    /// The API's transfer: the agent's leg (the one with a tenant user, the callee first)
    /// is the transferor.
    pub(super) fn api_transfer(&mut self, target: &str) -> Result<String, Refused> {
        self.controllable()?;
        let users = self.core().users.clone();
        let transferor = match (&users[0], &users[1]) {
            (_, Some(_)) => Leg::B,
            (Some(_), None) => Leg::A,
            (None, None) => {
                metrics::counter!(TRANSFERS_REFUSED, "reason" => "not_allowed").increment(1);
                return Err(Refused::new(
                    409,
                    "neither leg of the call is a tenant's user",
                ));
            }
        };
        let tenant = self.core().tenant.clone().unwrap_or_else(|| Arc::from(""));
        let target = self.env.transfer_target(&tenant, target).map_err(|e| {
            metrics::counter!(TRANSFERS_REFUSED, "reason" => e.label()).increment(1);
            let status = match e {
                TargetError::NotFound => 404,
                TargetError::Forbidden => 403,
                TargetError::Unavailable => 409,
            };
            Refused::new(status, e.status().1)
        })?;
        if let Some(leg) = self.core().held.take() {
            let side = self.side_of(leg);
            self.media_op(MediaOp::StopPlay(side));
        }
        let label = target.label();
        self.blind_transfer(transferor, target, "api", false);
        Ok(label)
    }
}
