//! Click-to-call (RFC 3725 flow I): the agent's phones are rung first; when one answers,
//! its offer goes to the customer, whose answer comes back to the agent in the ACK.

use super::*;

impl CallCore {
    /// Click-to-call, first half: ring the agent. The customer is called when it answers
    /// ([`CallCore::agent_answered`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn begin_originate(
        &mut self,
        a_invite: Message,
        source: Source,
        mut a: Dialog,
        route: Route,
        dialled: Bytes,
        forks: Vec<Fork>,
        caller: String,
        parties: super::super::Parties,
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
        self.core = Some(Arc::new(Checkpoint {
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
                start_ms: self.wall_ms,
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
        self.orig_route = Some(Box::new(route));
        self.orig = Some(Originated {
            answered: false,
            ack: None,
        });
        self.register(a_call_id.clone());
        self.checkpoint();
        for fork in &forks {
            let (local_uri, local_tag) = {
                let a = &self.core().a;
                (a.local_uri.clone(), a.local_tag.clone())
            };
            let mut inv = Message::request(Method::Invite, fork.ruri.clone());
            let branch = new_branch();
            inv.push(HeaderName::Via, self.cfg.via(fork.dest.protocol, &branch));
            inv.push(HeaderName::MaxForwards, "70");
            inv.push(HeaderName::From, dialog::with_tag(&local_uri, &local_tag));
            inv.push(HeaderName::To, self.core().a.remote_uri.clone());
            inv.push(HeaderName::CallId, self.core().a_call_id.clone());
            inv.push(HeaderName::CSeq, cseq_value(1, &Method::Invite));
            inv.push(HeaderName::Contact, self.cfg.contact(fork.dest.protocol));
            inv.push(HeaderName::Allow, crate::actors::router::ALLOW);
            inv.push(HeaderName::UserAgent, self.cfg.user_agent.clone());
            self.new_client_tx(Leg::A, Role::AOriginate, inv, branch, fork.dest);
        }
        self.no_answer = Some(self.schedule_call_timer(CallTimer::NoAnswer, self.cfg.no_answer));
    }

    /// A response from an agent's phone to our click-to-call INVITE.
    pub(super) fn agent_response(&mut self, id: u32, resp: &Message, status: u16) {
        let answered = self.orig.as_ref().is_some_and(|o| o.answered);
        if answered {
            if (200..300).contains(&status) {
                // Our ACK was lost (or another phone answered too): ACK again.
                if let Some(ack) = self.orig.as_ref().and_then(|o| o.ack.clone()) {
                    let (_, dest) = self.leg_dest(Leg::A);
                    self.send(dest, ack);
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
    pub(super) fn agent_answered(&mut self, id: u32, resp: &Message) {
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
        if route.media.service == Some(crate::actors::router::Service::Conference) {
            return self.conference_answered(&route);
        }
        let dialled = Bytes::from(self.core().cdr.callee.clone());
        match &route.group {
            Some(group) => {
                let plan = group.plan(&route.prefix, &String::from_utf8_lossy(&dialled));
                self.trunk_leg = Some(Box::new(TrunkLeg {
                    plan: plan.order.into(),
                    last_resort: plan.last_resort.into(),
                    attempts: plan.skipped,
                    current: None,
                }));
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
                    Some(self.schedule_call_timer(CallTimer::NoAnswer, self.cfg.no_answer));
            }
        }
        metrics::histogram!(CLICK_TO_CALL, "stage" => "customer_invite").record(
            self.now
                .saturating_duration_since(self.received_at)
                .as_secs_f64(),
        );
    }

    /// Tells the click-to-call's agent how its phone's leg went.
    pub(super) fn tell_orig_agent(&mut self, outcome: crate::actors::agent::OfferOutcome) {
        use crate::actors::agent::{self, AgentMsg, OUTBOUND_OFFER};
        let Some((tenant, id)) = self.orig_agent.clone() else {
            return;
        };
        if self.core.is_some() {
            let call_id = self.a_call_id_str();
            if outcome == crate::actors::agent::OfferOutcome::Answered {
                let call = agent::AgentCall {
                    call_id,
                    queue: Arc::from(agent::OUTBOUND_QUEUE),
                    offer: OUTBOUND_OFFER,
                    answered: true,
                };
                self.note_agent_call(tenant.clone(), id.clone(), call);
            } else {
                self.forget_agent_call(tenant.clone(), id.clone(), call_id.clone());
            }
        }
        self.tell_agent(
            tenant.clone(),
            id.clone(),
            AgentMsg::OfferEnded {
                offer: OUTBOUND_OFFER,
                outcome,
            },
        );
    }

    /// At the end of a click-to-call: the agent is told the call is over (or that its phone
    /// never answered).
    pub(super) fn orig_call_ended(&mut self, final_status: u16) {
        use crate::actors::agent::{AgentMsg, OfferOutcome};
        let Some(answered) = self.orig.as_ref().map(|o| o.answered) else {
            return;
        };
        if !answered {
            return self.tell_orig_agent(OfferOutcome::from_status(final_status, false));
        }
        let Some((tenant, id)) = self.orig_agent.clone() else {
            return;
        };
        let call_id = self.a_call_id_str();
        self.forget_agent_call(tenant.clone(), id.clone(), call_id.clone());
        self.tell_agent(tenant.clone(), id.clone(), AgentMsg::CallEnded { call_id });
    }

    /// What the caller would have been told, for a click-to-call: the agent's 2xx is ACKed
    /// with the customer's answer (or, if the customer failed, ACKed and hung up).
    pub(super) fn originated_answer(&mut self, resp: &Message) {
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
}
