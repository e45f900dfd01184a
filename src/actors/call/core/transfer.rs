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
    fn new(status: u16, reason: impl Into<String>) -> Refused {
        Refused {
            status,
            reason: reason.into(),
        }
    }
}

/// The target of a Refer-To header: its URI's user, and whether it asks to replace a
/// dialog (an attended transfer).
pub(super) fn refer_target(msg: &Message) -> Option<(String, bool)> {
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
    let replaces = headers
        .split('&')
        .any(|h| h.len() >= 8 && h[..8].eq_ignore_ascii_case("replaces"));
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
            Leg::X => c
                .transfer
                .as_ref()
                .and_then(|t| t.transferor.as_ref())
                .map_or(c.sides[1], |p| p.side),
        }
    }

    /// A REFER on `leg` (in its dialog; server transaction `id`): refused, or accepted and
    /// carried out.
    pub(super) fn on_refer(&mut self, leg: Leg, msg: &Message, id: u32) {
        let refusal = match refer_target(msg) {
            None => Some((400, "Bad Request (Refer-To)", "bad_refer_to")),
            Some((_, true)) => Some((501, "Not Implemented (Replaces)", "replaces")),
            Some((user, false)) => match self.may_transfer(leg) {
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
    fn may_transfer(&self, leg: Leg) -> Result<(), (u16, &'static str, &'static str)> {
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
        if c.transfer.is_some() || self.invite_pending() {
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
        self.core().transfer = Some(Transfer {
            kind: "blind",
            by,
            target: label.clone(),
            transferor: Some(parked),
            notify,
            queue_before,
        });
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
    fn release_transferring_agent(&mut self, t: &Transfer) {
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
    fn notify_transferor(&mut self, status: u16, reason: &str, terminated: bool) {
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

    /// Takes the callee out of the B position into the transfer's parking place.
    fn park_b(&mut self) -> Parked {
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
    fn swap_legs(&mut self) {
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
    fn controllable(&self) -> Result<(), Refused> {
        let Some(c) = self.core.as_ref() else {
            return Err(Refused::new(404, "no such call"));
        };
        if c.phase != Phase::Confirmed || c.ended {
            return Err(Refused::new(409, "the call is not connected"));
        }
        if c.transfer.is_some() {
            return Err(Refused::new(409, "the call is being transferred"));
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
