//! Consultation through the API (`POST /calls/{id}/consult`, then `complete` or `cancel`):
//! the agent talks to a third party while the customer holds, then hands the customer over
//! (an attended transfer) or comes back.
//!
//! The customer's leg stays where it is and hears music. The consultation target rings with
//! the switch's offer on a second relay session of the call (`<call>~consult`); once it
//! answers, the agent's phone is re-INVITEd onto that session, so agent and target hear each
//! other there. Completing re-INVITEs the target onto the customer's session in the agent's
//! place and lets the agent go; cancelling hangs up on the target and re-INVITEs the agent
//! back. Every step is a re-INVITE of the switch's own (RFC 3261 §14), so the phones need
//! nothing but re-INVITE support.

use super::*;

/// The call (its A-leg Call-ID) whose consultation, three-way or monitor session `key` is,
/// if it is one: how the relay's reaper finds the owner of a second session.
pub fn consult_owner(key: &[u8]) -> Option<&[u8]> {
    key.strip_suffix(b"~consult")
}

/// The relay session of a call's consultation.
pub fn consult_key(call: &Bytes) -> Bytes {
    let mut k = BytesMut::with_capacity(call.len() + 8);
    k.put_slice(call);
    k.put_slice(b"~consult");
    k.freeze()
}

impl CallCore {
    /// The leg of the agent (the one with a tenant user, the callee first), moved into the B
    /// position if it was in A.
    pub(super) fn agent_in_b(&mut self) -> Result<(), Refused> {
        let users = self.core().users.clone();
        match (&users[0], &users[1]) {
            (_, Some(_)) => Ok(()),
            (Some(_), None) => {
                self.swap_legs();
                Ok(())
            }
            (None, None) => Err(Refused::new(
                409,
                "neither leg of the call is a tenant's user",
            )),
        }
    }

    /// `POST /calls/{id}/consult`: the customer holds, `target` rings.
    pub(super) fn api_consult(&mut self, target: &str) -> Result<String, Refused> {
        self.controllable()?;
        if self.core().consult.is_some() {
            return Err(Refused::new(409, "a consultation is in progress"));
        }
        let (user, forks) = self.phones_of(target)?;
        self.agent_in_b()?;
        let key = consult_key(&self.core().a_call_id);
        let ports = self
            .env
            .allocate_media(&key)
            .map_err(|e| Refused::new(503, format!("no media ports for the consultation: {e}")))?;
        // The customer holds.
        if self.core().held.is_none() {
            let side = self.side_of(Leg::A);
            self.media_op(MediaOp::Bridge(false));
            self.media_op(MediaOp::Music {
                side,
                announce: None,
            });
            self.core().held = Some(Leg::A);
        }
        let label = self.dial_x(user, forks, ports, None);
        metrics::counter!(CONSULTS, "outcome" => "started").increment(1);
        self.checkpoint();
        Ok(label)
    }

    /// The user a consultation, three-way or monitor `target` (a tenant user, agent or
    /// number leading to one) names, and its registered phones.
    pub(super) fn phones_of(&mut self, target: &str) -> Result<(Arc<str>, Vec<Fork>), Refused> {
        let tenant = self.core().tenant.clone().unwrap_or_else(|| Arc::from(""));
        let target = match self.env.transfer_target(&tenant, target) {
            Ok(TransferTarget::Phones { user, forks }) => (user, forks),
            // A consultation is a short internal call: the agent's phones ring without a
            // reservation (a queue may still offer it a call meanwhile).
            Ok(TransferTarget::Agent { user, .. }) => {
                let forks = self.env.lookup_user(&tenant, &user);
                if forks.is_empty() {
                    return Err(Refused::new(409, "the agent has no registered phone"));
                }
                (user, forks)
            }
            Ok(TransferTarget::Queue { .. }) => {
                return Err(Refused::new(
                    409,
                    "a queue cannot be consulted (transfer to it)",
                ))
            }
            Err(e) => {
                metrics::counter!(transfer::TRANSFERS_REFUSED, "reason" => e.label()).increment(1);
                let status = match e {
                    TargetError::NotFound => 404,
                    TargetError::Forbidden => 403,
                    TargetError::Unavailable => 409,
                };
                return Err(Refused::new(status, e.status().1));
            }
        };
        Ok(target)
    }

    /// Rings `user` (`Leg::X`) with the offer of the call's second relay session (its B
    /// side): a consultation's target, or a three-way's or monitor's party (`mix`). Its
    /// label (`user:<name>`).
    pub(super) fn dial_x(
        &mut self,
        user: Arc<str>,
        forks: Vec<Fork>,
        ports: MediaPorts,
        mix: Option<super::mixing::MixKind>,
    ) -> String {
        let label = format!("user:{user}");
        // The target rings with the consultation session's offer (its B side).
        let fork = &forks[0];
        let a_invite = self.core().a_invite.clone();
        let (dialog, mut inv, branch) = self.b_leg(
            &a_invite,
            user.as_bytes(),
            fork.ruri.clone(),
            fork.dest,
            fork.dest.addr,
        );
        inv.set(HeaderName::ContentType, "application/sdp");
        inv.body = switch_offer(&ports, Side::B);
        let inv = Arc::new(inv);
        let call_id = dialog.call_id.clone();
        self.core().consult = Some(Box::new(Consult {
            target: label.clone(),
            leg: Parked {
                dialog,
                dest: fork.dest,
                invite: inv.clone(),
                ack: None,
                user: Some(user.clone()),
                side: Side::B,
            },
            ports,
            up: false,
            mix,
            gone: None,
            muted: [false; 3],
            deaf: [false; 3],
            agent_on_consult: false,
        }));
        self.register(call_id.clone());
        self.new_client_tx(Leg::X, Role::Consult, inv, branch, fork.dest);
        self.consult_timer =
            Some(self.schedule_call_timer(CallTimer::ConsultNoAnswer, self.cfg.no_answer));
        label
    }

    /// The consultation target's answer to its INVITE.
    pub(super) fn consult_response(&mut self, id: u32, resp: &Message) {
        let status = resp.status().unwrap_or(0);
        let live = self
            .core
            .as_ref()
            .and_then(|c| c.consult.as_ref())
            .is_some_and(|c| !c.up);
        if !live {
            if (200..300).contains(&status) {
                // A late answer after a cancel: ACK and hang up (RFC 3261 §13.2.2.4).
                self.end_stray_answer(id, resp);
            }
            return;
        }
        match status {
            0..=199 => {}
            200..=299 => {
                if let Some(t) = self.consult_timer.take() {
                    self.cancel_timer(t);
                }
                let cseq = resp.cseq().map(|c| c.seq).unwrap_or(1);
                {
                    let c = self.core().consult.as_mut().expect("checked");
                    let d = &mut c.leg.dialog;
                    d.remote_tag = resp.to().and_then(|t| t.tag()).unwrap_or_default();
                    if let Some(t) = resp.contacts().next() {
                        d.remote_target = t.uri;
                    }
                    d.route_set = resp.values(HeaderName::RecordRoute).collect::<Vec<_>>();
                    d.route_set.reverse();
                }
                let ack = self.send_ack(Leg::X, cseq, Bytes::new(), None);
                if let Some(c) = self.core().consult.as_mut() {
                    c.leg.ack = Some(ack);
                }
                if let Ok(sdp) = crate::sip::sdp::parse(&resp.body) {
                    let ip = self.signalling_ip(Leg::X);
                    self.learn_consult(Side::B, &sdp, ip);
                }
                if self
                    .core()
                    .consult
                    .as_ref()
                    .is_some_and(|c| c.mix.is_some())
                {
                    // A three-way or monitor: the three legs meet in the call's mix.
                    self.mix_up();
                    return;
                }
                // The agent moves onto the consultation session.
                let ports = self.core().consult.as_ref().map(|c| c.ports);
                if let Some(ports) = ports {
                    self.reoffer_on(Leg::B, ports, Side::A, Reoffer::ConsultAgent);
                }
                self.checkpoint();
            }
            _ => self.consult_over("failed", status),
        }
    }

    /// The consultation target did not answer in time, or its INVITE failed.
    pub(super) fn consult_failed(&mut self, status: u16) {
        if self
            .core
            .as_ref()
            .and_then(|c| c.consult.as_ref())
            .is_some_and(|c| !c.up)
        {
            self.consult_over("failed", status);
        }
    }

    /// The consultation ends without a transfer: the target is let go (cancelled or sent a
    /// BYE), the consultation session released, the customer bridged back with the agent.
    pub(super) fn consult_over(&mut self, outcome: &'static str, status: u16) {
        let Some(c) = self.core().consult.take() else {
            return;
        };
        tracing::info!(target = %c.target, outcome, status, "consultation over");
        if let Some(t) = self.consult_timer.take() {
            self.cancel_timer(t);
        }
        // Its transactions: a ringing INVITE is cancelled, an answered leg gets a BYE.
        let ringing: Vec<u32> = self
            .txs
            .iter()
            .filter(|t| t.role == Role::Consult && !t.settled())
            .map(|t| t.id)
            .collect();
        self.core().consult = Some(c.clone());
        for id in ringing {
            self.cancel_fork(id);
        }
        if c.up || c.leg.ack.is_some() {
            self.send_bye(Leg::X);
        }
        self.core().consult = None;
        self.stale_consults.push(c.leg.dialog.call_id.clone());
        let key = consult_key(&self.core().a_call_id);
        if let Some(kind) = c.mix {
            // A three-way's or monitor's party leaves the mix; the others are bridged again.
            self.mix_over(&c, kind, outcome);
            self.env.release_media(&key);
            self.checkpoint();
            return;
        }
        self.env.release_media(&key);
        if c.up {
            // The agent comes back to the customer's session.
            let ports = self.session;
            if let Some(ports) = ports {
                let side = self.side_of(Leg::B);
                self.reoffer_on(Leg::B, ports, side, Reoffer::Refresh);
            }
        }
        if self.core().held.take().is_some() {
            let a = self.side_of(Leg::A);
            self.media_op(MediaOp::StopPlay(a));
            self.media_op(MediaOp::Bridge(true));
        }
        metrics::counter!(CONSULTS, "outcome" => outcome).increment(1);
        self.checkpoint();
    }

    /// `POST /calls/{id}/consult/cancel`.
    pub(super) fn api_consult_cancel(&mut self) -> Result<String, Refused> {
        if self
            .core
            .as_ref()
            .and_then(|c| c.consult.as_ref())
            .is_none()
        {
            return Err(Refused::new(409, "no consultation in progress"));
        }
        self.consult_over("cancelled", 0);
        Ok("cancelled".into())
    }

    /// `POST /calls/{id}/consult/complete`: the target takes the agent's place with the
    /// customer (an attended transfer).
    pub(super) fn api_consult_complete(&mut self) -> Result<String, Refused> {
        let up = self
            .core
            .as_ref()
            .and_then(|c| c.consult.as_ref())
            .map(|c| c.up);
        match up {
            None => return Err(Refused::new(409, "no consultation in progress")),
            Some(false) => {
                return Err(Refused::new(
                    409,
                    "the consultation target has not answered",
                ))
            }
            Some(true) => {}
        }
        let Some(ports) = self.session else {
            return Err(Refused::new(422, "the call's media is not anchored"));
        };
        let c = self.core().consult.take().expect("checked");
        let label = c.target.clone();
        // The agent steps aside as a transferor; the target takes the B position.
        let agent = self.park_b();
        let queue_before = self.core().queue.clone();
        let old = std::mem::replace(&mut self.core().b_call_id, c.leg.dialog.call_id.clone());
        {
            let core = self.core();
            core.b = c.leg.dialog.clone();
            core.b_dest = c.leg.dest;
            core.b_invite = c.leg.invite.clone();
            core.b_ack = c.leg.ack.clone();
            core.users[1] = c.leg.user.clone();
            core.cdr.target = label.clone();
            core.transfer = Some(Box::new(Transfer {
                kind: "attended",
                by: "api",
                target: label.clone(),
                transferor: Some(agent),
                notify: false,
                queue_before,
            }));
        }
        if !old.is_empty() {
            self.old_b_ids.push(old);
        }
        for t in self.txs.iter_mut().filter(|t| t.role == Role::Consult) {
            t.leg = Leg::B;
        }
        let id = c.leg.dialog.call_id.clone();
        self.leg_joined(&id, "transfer", label.clone(), true);
        let side = self.side_of(Leg::B);
        self.reoffer_on(Leg::B, ports, side, Reoffer::Adopt);
        let key = consult_key(&self.core().a_call_id);
        self.env.release_media(&key);
        self.core().held = None;
        metrics::counter!(CONSULTS, "outcome" => "completed").increment(1);
        self.checkpoint();
        Ok(label)
    }

    /// The agent's answer to the re-INVITE that moved it onto the consultation session.
    pub(super) fn consult_agent_moved(&mut self, ok: bool, status: u16) {
        if ok {
            if let Some(c) = self.core().consult.as_mut() {
                c.up = true;
            }
            self.out.push(Effect::ConsultMedia(MediaOp::Bridge(true)));
            self.checkpoint();
        } else {
            self.consult_over("failed", status);
        }
    }

    /// An answer to an INVITE of a consultation that is over: ACKed and hung up.
    pub(super) fn end_stray_answer(&mut self, id: u32, resp: &Message) {
        let Some(tx) = self.txs.iter().find(|t| t.id == id) else {
            return;
        };
        let mut d = Dialog {
            call_id: tx.request.call_id().cloned().unwrap_or_default(),
            local_tag: tx.request.from().and_then(|f| f.tag()).unwrap_or_default(),
            remote_tag: resp.to().and_then(|t| t.tag()).unwrap_or_default(),
            local_uri: tx
                .request
                .from()
                .map(|f| dialog::without_tag(&f))
                .unwrap_or_default(),
            remote_uri: tx
                .request
                .to()
                .map(|t| dialog::without_tag(&t))
                .unwrap_or_default(),
            remote_target: resp.contacts().next().map(|c| c.uri).unwrap_or_default(),
            route_set: Vec::new(),
            local_cseq: tx.request.cseq().map(|c| c.seq).unwrap_or(1),
            remote_cseq: None,
        };
        let dest = tx.dest;
        let contact = self.cfg.contact(dest.protocol);
        let via = self.cfg.via(dest.protocol, &new_branch());
        let ack = d.request_with_cseq(Method::Ack, d.local_cseq, &via, &contact, 70);
        self.send_msg(dest, &ack);
        let branch = new_branch();
        let via = self.cfg.via(dest.protocol, &branch);
        let bye = d.request(Method::Bye, &via, &contact, 70);
        self.new_client_tx(Leg::X, Role::Own, bye, branch, dest);
    }

    /// An answer on the consultation session: where `side` wants its audio.
    pub(super) fn learn_consult(
        &mut self,
        side: Side,
        sdp: &crate::sip::sdp::Sdp,
        ip: Option<std::net::IpAddr>,
    ) {
        let mut ops = Vec::new();
        self.learn_answer(side, sdp, ip);
        // `learn_answer` queued the commands for the call's session: they are for the
        // consultation's.
        while let Some(Effect::Media(_)) = self.out.last() {
            if let Some(Effect::Media(op)) = self.out.pop() {
                ops.push(op);
            }
        }
        for op in ops.into_iter().rev() {
            self.out.push(Effect::ConsultMedia(op));
        }
    }
}

/// The switch's own SDP offer for `side` of a session (G.711 both laws, telephone-event).
pub(super) fn switch_offer(ports: &MediaPorts, side: Side) -> Bytes {
    let formats = [
        crate::sip::sdp::Format::pcmu(),
        crate::sip::sdp::Format::pcma(),
        crate::sip::sdp::Format::telephone_event(101),
    ];
    let sdp = crate::sip::sdp::offer(
        ports.address,
        ports.port(side),
        rand::random::<u32>() as u64,
        &formats,
        crate::sip::sdp::Direction::SendRecv,
    );
    Bytes::from(sdp.to_bytes())
}

/// Counter, label `outcome` (`started`, `completed`, `cancelled`, `failed`): API
/// consultations.
pub const CONSULTS: &str = "switchyard_consults_total";

pub fn describe() {
    metrics::describe_counter!(CONSULTS, "API consultations, by outcome");
}
