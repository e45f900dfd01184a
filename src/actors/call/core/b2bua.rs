//! The B2BUA rules: inbound requests and responses on either leg, what is relayed and
//! how, forks of the B leg, building and sending in-dialog requests, the call timers.

use super::*;

impl CallCore {
    pub(super) fn send_forks(&mut self, b_invite: &Message, forks: &[Fork]) -> Vec<u32> {
        let mut ids = Vec::with_capacity(forks.len());
        for fork in forks.iter().skip(1) {
            ids.push(self.send_fork(b_invite, fork));
        }
        ids
    }

    pub(super) fn send_fork(&mut self, b_invite: &Message, fork: &Fork) -> u32 {
        let mut inv = b_invite.clone();
        inv.start = crate::sip::message::StartLine::Request {
            method: Method::Invite,
            uri: fork.ruri.clone(),
        };
        let fork_branch = new_branch();
        inv.set(
            HeaderName::Via,
            self.cfg.via(fork.dest.protocol, &fork_branch),
        );
        inv.set(HeaderName::Contact, self.cfg.contact(fork.dest.protocol));
        self.new_client_tx(Leg::B, Role::BInvite, Arc::new(inv), fork_branch, fork.dest)
    }

    /// A B-leg dialog and its INVITE (own Call-ID, tags and CSeq; SDP passed through).
    pub(super) fn b_leg(
        &mut self,
        a_invite: &Message,
        dialled: &[u8],
        ruri: Bytes,
        b_dest: Dest,
        target: std::net::SocketAddr,
    ) -> (Dialog, Message, Bytes) {
        let ctx = self.cfg.clone();
        // The caller's INVITE passed screening (`sip::validate::Request`: its From and To
        // parse) or the switch built it; a stand-in rather than a panic all the same.
        let from = a_invite
            .from()
            .unwrap_or_else(crate::sip::headers::NameAddr::anonymous);
        let to = a_invite
            .to()
            .unwrap_or_else(crate::sip::headers::NameAddr::anonymous);
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
        b_invite.push(HeaderName::Allow, crate::actors::router::ALLOW);
        b_invite.push(HeaderName::UserAgent, ctx.user_agent.clone());
        if let Some(v) = a_invite.value(HeaderName::ContentType) {
            b_invite.push(HeaderName::ContentType, v.clone());
        }
        copy_extensions(a_invite, &mut b_invite);
        b_invite.body = self.b_offer(&a_invite.body);
        if self.a_answered() {
            b_invite.set(HeaderName::ContentType, "application/sdp");
        }
        // Kept for the call's life (CANCEL, ACK): no spare room in its header vector.
        b_invite.headers.shrink_to_fit();
        (b, b_invite, branch)
    }

    // ---- inbound SIP ----

    pub(super) fn on_sip(&mut self, inbound: Inbound) {
        if self.core.is_none() {
            return;
        }
        let call_id = inbound.msg.call_id();
        let parked = self.x_leg().map(|p| p.dialog.call_id.clone());
        let leg = if call_id == Some(&self.core().a.call_id) {
            Leg::A
        } else if parked.is_some() && call_id == parked.as_ref() {
            Leg::X
        } else {
            Leg::B
        };
        if inbound.msg.is_request() {
            self.on_request(leg, inbound);
        } else {
            self.on_response(inbound.msg);
        }
    }

    pub(super) fn on_response(&mut self, msg: Message) {
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
            metrics::counter!(crate::actors::router::STRAY, "kind" => "response").increment(1);
            return;
        };
        let status = msg.status().unwrap_or(0);
        let id = self.txs[idx].id;
        let tx = &mut self.txs[idx];
        let actions = tx
            .fsm
            .step(TxEvent::ReceivedResponse { status }, &self.cfg.timer_cfg);
        if let Transaction::ClientInvite(c) = &tx.fsm {
            // An answered INVITE is never sent again (Timer A stops at the first
            // response): its encoded bytes (~0.9 KB) need not last the call.
            if c.state() != crate::sip::transaction::ClientInviteState::Calling {
                tx.request_bytes = Bytes::new();
            }
        }
        self.execute(id, &actions, Some(&msg));
    }

    pub(super) fn on_request(&mut self, leg: Leg, inbound: Inbound) {
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
                .step(TxEvent::ReceivedRequest, &self.cfg.timer_cfg);
            return self.execute(id, &actions, None);
        }
        // A new request inside a dialog: its To tag must be ours on that leg.
        let to_tag = msg.to().and_then(|t| t.tag()).unwrap_or_default();
        let ours = self.dialog_mut(leg).local_tag.clone();
        let dest = self.cfg.response_dest(&source, msg.top_via().as_ref());
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
        let dialog = self.dialog_mut(leg);
        if dialog.remote_cseq.is_some_and(|r| cseq <= r) {
            let id = self.new_server_tx(leg, Role::Local, msg, branch, dest);
            return self.respond(id, 500, "Server Internal Error (CSeq Out of Order)", None);
        }
        dialog.remote_cseq = Some(cseq);
        if leg == Leg::X {
            // The transferor, out of the bridge: nothing to relay its requests to.
            let id = self.new_server_tx(leg, Role::Local, msg, branch, dest);
            return self.parked_request(&method, id);
        }
        if method == Method::Refer {
            // A transfer is carried out by the switch, not relayed (RFC 3515).
            let id = self.new_server_tx(leg, Role::Local, msg.clone(), branch, dest);
            return self.on_refer(leg, &msg, id);
        }
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
        if method == Method::Bye
            && (self.seated_bye(leg, server) || self.mixed_leg_bye(leg, server))
        {
            // A three-way: the other two stay connected.
            return;
        }
        if method == Method::Bye {
            if self.core().phase == Phase::Answered {
                // A BYE before the caller's ACK. From the caller it proves it has our 2xx
                // (its ACK was lost or is late): stop resending the 2xx. Either way ACK the
                // callee's 2xx now: before the BYE reaches it (it would see a BYE in a dialog
                // it still waits to have confirmed), or so that its 2xx retransmissions do
                // not look like an answer after the end (which gets a second BYE).
                if leg == Leg::A {
                    if let Some((id, ..)) = self.resend_2xx.take() {
                        self.cancel_timer(id);
                    }
                }
                self.ack_b(Bytes::new(), None);
            }
            self.end_on_bye(leg);
            return self.after_cdr(AfterCdr::Relay(leg, Box::new(msg), server));
        }
        if self.mixed_leg_alone(leg, &method, server) {
            return;
        }
        self.relay_request(leg, &msg, server);
    }

    /// Relays an in-dialog request (server transaction `server`) to the other leg.
    pub(super) fn relay_request(&mut self, leg: Leg, msg: &Message, server: u32) {
        let method = msg.method().cloned().unwrap_or(Method::Bye);
        let other = if leg == Leg::A { Leg::B } else { Leg::A };
        let mut out = self.in_dialog_request(other, method, msg);
        out.body = msg.body.clone();
        // An offer (re-INVITE, UPDATE) of an anchored call: the switch's address and port.
        self.rewrite_body_of(leg, &mut out, false);
        let (protocol, dest) = self.leg_dest(other);
        let branch = new_branch();
        out.push_front(HeaderName::Via, self.cfg.via(protocol, &branch));
        let client = self.new_client_tx(other, Role::Relay { peer: server }, out, branch, dest);
        if let Some(t) = self.tx_mut(server) {
            t.role = Role::Relay { peer: client };
        }
        // Both dialogs' CSeqs (and maybe a target) moved: a restarted actor must not reuse
        // a CSeq, which the peer would refuse as out of order.
        self.checkpoint();
    }

    pub(super) fn on_cancel(&mut self, leg: Leg, msg: Message, source: Source, branch: Bytes) {
        let dest = self.cfg.response_dest(&source, msg.top_via().as_ref());
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
    pub(super) fn cancel_relayed_invite(&mut self, server: u32, client: u32) {
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

    pub(super) fn on_ack(&mut self, leg: Leg, msg: Message, branch: Bytes) {
        if let Some(idx) = self.txs.iter().position(|t| {
            !t.is_client && t.method == Method::Invite && t.branch == branch && t.leg == leg
        }) {
            let id = self.txs[idx].id;
            let actions = self.txs[idx]
                .fsm
                .step(TxEvent::ReceivedAck, &self.cfg.timer_cfg);
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
                self.cancel_timer(id);
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
            self.cancel_timer(id);
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

    // ---- the transaction user: what responses and failures mean for the call ----

    pub(super) fn tu_response(&mut self, id: u32, resp: &Message) {
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
                            self.send(dest, ack);
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
            Role::Reoffer(purpose) => self.reoffer_answered(id, purpose, resp),
            Role::Consult => self.consult_response(id, resp),
            Role::BCancel | Role::Own | Role::Local | Role::AInvite => {}
        }
    }

    pub(super) fn tu_failed(&mut self, id: u32, status: u16, reason: &str) {
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
            Role::Consult => self.consult_failed(status),
            Role::Reoffer(purpose) => {
                let failure = Message::response(status, Bytes::new());
                self.reoffer_answered(id, purpose, &failure)
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
                    if self.core().transfer.is_some() {
                        if !self.transfer_failed(status) {
                            self.hang_up_answered_caller(
                                HangupBy::System,
                                "transfer target unreachable",
                            );
                        }
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

    pub(super) fn b_invite_response(&mut self, resp: &Message, status: u16) {
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
                    self.send(dest, ack);
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
                    self.core().cdr.ringing_ms = Some(self.wall_ms);
                    metrics::histogram!(CALL_SETUP, "stage" => "ringing").record(
                        self.now
                            .saturating_duration_since(self.received_at)
                            .as_secs_f64(),
                    );
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
                if self.core().cdr.answer_ms.is_none() {
                    self.core().cdr.answer_ms = Some(self.wall_ms);
                    self.core().cdr.final_status = status;
                    metrics::histogram!(CALL_SETUP, "stage" => "answer").record(
                        self.now
                            .saturating_duration_since(self.received_at)
                            .as_secs_f64(),
                    );
                    metrics::counter!(CALLS_ANSWERED).increment(1);
                }
                let role = if self.core().transfer.is_some() {
                    "transfer"
                } else {
                    "callee"
                };
                let (b_id, party) = (
                    self.core().b.call_id.clone(),
                    self.core().cdr.target.clone(),
                );
                self.leg_joined(&b_id, role, party, true);
                if self.a_answered() {
                    // The agent answers a caller the switch answered (or the target of a
                    // transfer answers): bridge them.
                    self.bridge_agent(resp);
                    self.ack_b(Bytes::new(), None);
                    if let (Some(max), None) = (self.cfg.max_duration, self.max_duration) {
                        self.max_duration =
                            Some(self.schedule_call_timer(CallTimer::MaxDuration, max));
                    }
                    self.set_phase(Phase::Confirmed);
                    self.cancel_other_forks();
                    return self.transfer_done();
                }
                let mut out = self.a_response(status, &resp_reason(resp), true);
                copy_body(resp, &mut out);
                self.rewrite_body_of(Leg::B, &mut out, true);
                copy_extensions(resp, &mut out);
                let bytes = out.encode();
                self.respond_a_invite(out);
                if !self.core().a_source.protocol.is_reliable() && self.orig.is_none() {
                    let t1 = self.cfg.timer_cfg.t1;
                    let id = self.schedule_call_timer(CallTimer::Resend2xx, t1);
                    self.resend_2xx = Some((id, bytes, t1, self.now));
                }
                if let Some(max) = self.cfg.max_duration {
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
                    Some(b) if fork_rank(b.status().unwrap_or(500)) < fork_rank(status) => &**b,
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
                if self.core().transfer.is_some() {
                    if !self.transfer_failed(st) {
                        let why = format!("transfer target answered {status}");
                        self.hang_up_answered_caller(HangupBy::Callee, &why);
                    }
                    return;
                }
                if self.a_answered() {
                    // The caller was answered by the switch (a call flow, a queue's overflow
                    // to a user): its INVITE has its 200, so it gets a BYE, not the failure.
                    let why = format!("callee answered {status}");
                    return self.hang_up_answered_caller(HangupBy::Callee, &why);
                }
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
    pub(super) fn end_other_fork(&mut self, resp: &Message) {
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
        let contact = self.cfg.contact(protocol);
        let via = self.cfg.via(protocol, &new_branch());
        let ack = fork.request_with_cseq(Method::Ack, fork.local_cseq, &via, &contact, 70);
        self.send_msg(dest, &ack);
        if self.ended_forks.contains(&tag) {
            return; // a retransmission: the BYE is on its way
        }
        tracing::info!("2xx from a second fork: ACK and BYE");
        self.ended_forks.push(tag);
        let branch = new_branch();
        let via = self.cfg.via(protocol, &branch);
        let bye = fork.request(Method::Bye, &via, &contact, 70);
        self.new_client_tx(Leg::B, Role::Own, bye, branch, dest);
    }

    pub(super) fn learn_b_dialog(&mut self, resp: &Message) {
        // Copied out of the response: slices would keep its whole datagram alive for the
        // call's life (~0.7 KB per call).
        let own = |b: Bytes| Bytes::copy_from_slice(&b);
        let tag = resp.to().and_then(|t| t.tag()).map(own).unwrap_or_default();
        let target = resp.contacts().next().map(|c| own(c.uri));
        let routes: Vec<Bytes> = resp.values(HeaderName::RecordRoute).map(own).collect();
        let b = &mut self.core().b;
        b.remote_tag = tag;
        if let Some(t) = target {
            b.remote_target = t;
        }
        b.route_set = routes.into_iter().rev().collect();
    }

    // ---- building and sending ----

    /// A response to the caller's INVITE with our tag (and Contact when it creates a dialog).
    pub(super) fn a_response(&mut self, status: u16, reason: &str, with_contact: bool) -> Message {
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
            resp.push(HeaderName::Contact, self.cfg.contact(protocol));
        }
        resp.push(HeaderName::Server, self.cfg.user_agent.clone());
        resp
    }

    /// Refuses the caller's INVITE before a B leg exists and ends the call.
    pub(super) fn refuse(&mut self, status: u16, reason: &str) {
        let resp = self.a_response(status, reason, false);
        self.respond_a_invite(resp);
        self.end(status, HangupBy::System, reason);
    }

    /// Answers the caller's INVITE from the switch itself (retransmitted over UDP until
    /// its ACK comes).
    pub(super) fn answer_a(&mut self, ok: Message) {
        let bytes = ok.encode();
        self.respond_a_invite(ok);
        if !self.core().a_source.protocol.is_reliable() {
            let t1 = self.cfg.timer_cfg.t1;
            let id = self.schedule_call_timer(CallTimer::Resend2xx, t1);
            self.resend_2xx = Some((id, bytes, t1, self.now));
        }
    }

    pub(super) fn respond_a_invite(&mut self, resp: Message) {
        if self.orig.is_some() {
            return self.originated_answer(&resp);
        }
        if let Some(id) = self
            .txs
            .iter()
            .find(|t| t.role == Role::AInvite && t.leg == Leg::A)
            .map(|t| t.id)
        {
            self.respond_msg(id, &resp);
        } else {
            // After a restart the transaction is gone: send directly.
            let (source, via) = (self.core().a_source, self.core().a_invite.top_via());
            self.send_msg(self.cfg.response_dest(&source, via.as_ref()), &resp);
        }
    }

    pub(super) fn leg_dest(&mut self, leg: Leg) -> (Protocol, Dest) {
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
            Leg::X => {
                let b = self.core().b_dest;
                let d = self.x_leg().map_or(b, |p| p.dest);
                (d.protocol, d)
            }
        }
    }

    /// A request in the dialog of `leg` (Via is added by the caller), with the body and
    /// content headers of `from`.
    pub(super) fn in_dialog_request(
        &mut self,
        leg: Leg,
        method: Method,
        from: &Message,
    ) -> Message {
        let (protocol, _) = self.leg_dest(leg);
        let contact = self.cfg.contact(protocol);
        let mf = from.max_forwards().unwrap_or(70).saturating_sub(1).max(1);
        let dialog = self.dialog_mut(leg);
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

    pub(super) fn send_ack(
        &mut self,
        leg: Leg,
        cseq: u32,
        body: Bytes,
        content_type: Option<Bytes>,
    ) -> Bytes {
        let (protocol, dest) = self.leg_dest(leg);
        let via = self.cfg.via(protocol, &new_branch());
        let contact = self.cfg.contact(protocol);
        let dialog = self.dialog_mut(leg);
        let mut ack = dialog.request_with_cseq(Method::Ack, cseq, &via, &contact, 70);
        if let Some(ct) = content_type {
            ack.push(HeaderName::ContentType, ct);
        }
        ack.body = body;
        crate::transport::count_sent(protocol, &ack);
        let bytes = ack.encode();
        self.send(dest, bytes.clone());
        bytes
    }

    /// ACKs the callee's 2xx (end to end: when the caller's ACK arrives).
    pub(super) fn ack_b(&mut self, body: Bytes, content_type: Option<Bytes>) {
        let cseq = self.core().b_invite.cseq().map(|c| c.seq).unwrap_or(1);
        let bytes = self.send_ack(Leg::B, cseq, body, content_type);
        self.core().b_ack = Some(bytes);
    }

    pub(super) fn send_bye(&mut self, leg: Leg) {
        let (protocol, dest) = self.leg_dest(leg);
        let branch = new_branch();
        let via = self.cfg.via(protocol, &branch);
        let contact = self.cfg.contact(protocol);
        let dialog = self.dialog_mut(leg);
        let bye = dialog.request(Method::Bye, &via, &contact, 70);
        self.new_client_tx(leg, Role::Own, bye, branch, dest);
    }

    pub(super) fn cancel_b(&mut self) {
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
    pub(super) fn cancel_fork(&mut self, id: u32) {
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
    pub(super) fn adopt_fork(&mut self) {
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
    pub(super) fn cancel_other_forks(&mut self) {
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
    pub(super) fn last_fork_failed(&mut self, resp: &Message) -> bool {
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
            self.best_failure = Some(Box::new(resp.clone()));
        }
        false
    }

    pub(super) fn send_b_cancel(&mut self) {
        let mut cancel = cancel_for(&self.core().b_invite);
        if let Some(r) = self.cancel_reason.clone() {
            cancel.push(HeaderName::Reason, r);
        }
        let dest = self.core().b_dest;
        self.new_client_tx(Leg::B, Role::BCancel, cancel, Bytes::new(), dest);
    }

    /// The switch ends an established call: BYE to both legs.
    pub(super) fn hangup_both(&mut self, by: HangupBy, reason: &str) {
        match self.core.as_ref().map(|c| c.phase) {
            Some(Phase::Answered | Phase::Confirmed) => {
                self.cancel_call_timers();
                if let Some((id, ..)) = self.resend_2xx.take() {
                    self.cancel_timer(id);
                }
                if self.core().phase == Phase::Answered {
                    self.ack_b(Bytes::new(), None);
                }
                let status = self.core().cdr.final_status;
                // A three-way's caller or agent that left has no dialog to end.
                let gone = self.mix_gone();
                self.end(status, by, reason);
                for leg in [Leg::A, Leg::B] {
                    if gone != Some(leg) {
                        self.after_cdr(AfterCdr::Bye(leg));
                    }
                }
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

    pub(super) fn schedule_call_timer(&mut self, timer: CallTimer, after: Duration) -> TimerKey {
        self.start_timer(TimerFire::Call(timer), after)
    }

    pub(super) fn cancel_no_answer(&mut self) {
        if let Some(id) = self.no_answer.take() {
            self.cancel_timer(id);
        }
    }

    /// A BYE from `leg` ends the call: its timers stop and the CDR is written (what
    /// follows, the BYE relayed or answered, waits for the CDR).
    pub(super) fn end_on_bye(&mut self, leg: Leg) {
        let by = if leg == Leg::A {
            HangupBy::Caller
        } else {
            HangupBy::Callee
        };
        self.cancel_call_timers();
        let status = self.core().cdr.final_status.max(200);
        self.end(status, by, "bye");
    }

    pub(super) fn cancel_call_timers(&mut self) {
        self.cancel_no_answer();
        if let Some(id) = self.max_duration.take() {
            self.cancel_timer(id);
        }
    }

    pub(super) fn on_call_timer(&mut self, timer: CallTimer, id: TimerKey) {
        match timer {
            CallTimer::NoAnswer if self.no_answer == Some(id) && self.offering() => {
                self.no_answer = None;
                self.offer_timed_out();
            }
            CallTimer::NoAnswer
                if self.no_answer == Some(id)
                    && self.core.as_ref().is_some_and(|c| c.transfer.is_some()) =>
            {
                self.no_answer = None;
                self.cancel_b();
                if !self.transfer_failed(480) {
                    self.hang_up_answered_caller(
                        HangupBy::System,
                        "transfer target did not answer",
                    );
                }
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
                if self.now.saturating_duration_since(since) >= self.cfg.timer_cfg.t1_x64() {
                    // RFC 3261 §13.3.1.4: no ACK came; end the dialog.
                    tracing::info!("no ACK for 2xx: ending the call");
                    self.hangup_both(HangupBy::System, "no ACK from caller");
                    return;
                }
                let (source, via) = (self.core().a_source, self.core().a_invite.top_via());
                self.send(self.cfg.response_dest(&source, via.as_ref()), bytes.clone());
                let next = (interval * 2).min(self.cfg.timer_cfg.t2);
                let tid = self.schedule_call_timer(CallTimer::Resend2xx, next);
                self.resend_2xx = Some((tid, bytes, next, since));
            }
            CallTimer::ResendRelayed2xx(tx) => self.resend_relayed_2xx(tx, id),
            CallTimer::Announce if self.announce == Some(id) => self.request_position(),
            CallTimer::CdrWait if self.cdr_timer == Some(id) => self.cdr_wait_over(),
            CallTimer::Flow => self.on_flow_timer(id),
            CallTimer::ConsultNoAnswer if self.consult_timer == Some(id) => {
                self.consult_timer = None;
                self.consult_failed(480);
            }
            _ => {}
        }
    }

    pub(super) fn start_relayed_2xx_resend(&mut self, server: u32) {
        let t1 = self.cfg.timer_cfg.t1;
        let unreliable = self
            .txs
            .iter()
            .find(|t| t.id == server)
            .is_some_and(|t| !t.dest.protocol.is_reliable() && t.resend.is_none());
        if unreliable {
            let id = self.schedule_call_timer(CallTimer::ResendRelayed2xx(server), t1);
            let now = self.now;
            if let Some(t) = self.tx_mut(server) {
                t.resend = Some((id, t1, now));
            }
        }
    }

    pub(super) fn resend_relayed_2xx(&mut self, server: u32, id: TimerKey) {
        let (t1_x64, t2) = (self.cfg.timer_cfg.t1_x64(), self.cfg.timer_cfg.t2);
        let now = self.now;
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
        if now.saturating_duration_since(since) >= t1_x64 {
            // Its sender will end the call itself (RFC 3261 §14.1); nothing more to do.
            tracing::info!("no ACK for a relayed re-INVITE's 2xx");
            return;
        }
        let (dest, bytes) = (t.dest, t.last_response.clone());
        if let Some(bytes) = bytes {
            self.send(dest, bytes);
        }
        let next = (interval * 2).min(t2);
        let nid = self.schedule_call_timer(CallTimer::ResendRelayed2xx(server), next);
        if let Some(t) = self.tx_mut(server) {
            t.resend = Some((nid, next, since));
        }
    }
}
