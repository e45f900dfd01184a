//! A queued call: joining, offers to agents (a B leg per offer), overflow, and telling
//! the queue and the agents how it goes.

use super::*;

impl CallCore {
    // ---- the contact centre: a queued call ----

    /// Whether the caller is waiting in a queue (not yet answered by an agent, not gone).
    pub(super) fn queue_waiting(&self) -> bool {
        self.core
            .as_ref()
            .and_then(|c| c.queue.as_ref())
            .is_some_and(|q| q.waiting)
    }

    pub(super) fn a_call_id_str(&mut self) -> Arc<str> {
        Arc::from(String::from_utf8_lossy(&self.core().a_call_id).as_ref())
    }

    /// Joins (or reminds) the queue; re-arms the keep-alive.
    pub(super) fn join_queue(&mut self) {
        let call_id = self.a_call_id_str();
        let from = self.core().cdr.caller.clone();
        let user = self.core().users[0].clone();
        let Some(q) = self.core().queue.clone() else {
            return;
        };
        self.tell_queue(
            q.tenant.clone(),
            q.queue.clone(),
            crate::actors::queue::QueueMsg::Join(crate::actors::queue::Join {
                call_id,
                from,
                user,
                priority: q.priority,
                joined_ms: q.joined_ms,
                skills: q.skills.clone(),
            }),
        );
        if let Some(id) = self.keepalive.take() {
            self.cancel_timer(id);
        }
        self.keepalive = Some(self.schedule_call_timer(CallTimer::QueueKeepalive, QUEUE_KEEPALIVE));
    }

    /// Tells the queue and the agent how an offer ended.
    pub(super) fn report_offer(
        &mut self,
        f: &OfferFork,
        outcome: crate::actors::agent::OfferOutcome,
    ) {
        if self.ended_offers.len() >= 16 {
            self.ended_offers.remove(0);
        }
        self.ended_offers.push(f.offer);
        let Some(q) = self.core().queue.clone() else {
            return;
        };
        let call_id = self.a_call_id_str();
        // The node's index of busy agents (for an agent actor restarted on a new owner).
        if outcome == crate::actors::agent::OfferOutcome::Answered {
            self.note_agent_call(
                q.tenant.clone(),
                f.agent.clone(),
                crate::actors::agent::AgentCall {
                    call_id: call_id.clone(),
                    queue: q.queue.clone(),
                    offer: f.offer,
                    answered: true,
                },
            );
        } else {
            self.forget_agent_call(q.tenant.clone(), f.agent.clone(), call_id.clone());
        }
        self.tell_agent(
            q.tenant.clone(),
            f.agent.clone(),
            crate::actors::agent::AgentMsg::OfferEnded {
                offer: f.offer,
                outcome,
            },
        );
        self.tell_queue(
            q.tenant.clone(),
            q.queue.clone(),
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
    pub(super) fn on_offer(&mut self, offer: Offer) {
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
            self.cancel_timer(id);
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
    pub(super) fn note_offer(&mut self, f: &OfferFork) {
        let Some(q) = self.core().queue.clone() else {
            return;
        };
        let call_id = self.a_call_id_str();
        self.note_agent_call(
            q.tenant.clone(),
            f.agent.clone(),
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
    pub(super) fn place_b_leg(
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
            let (host, _) = self.cfg.sent_by(first.dest.protocol);
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
        self.register(b_call_id);
        self.best_failure = None;
        self.cancel_pending = false;
        let mut txs = self.send_forks(&b_invite, forks);
        txs.push(self.new_client_tx(Leg::B, Role::BInvite, b_invite, branch, first.dest));
        txs
    }

    /// Tells a restarted agent how its offer stands: still ringing (nothing to say: the
    /// outcome comes), answered by it, or over.
    pub(super) fn on_agent_resync(&mut self, agent: Arc<str>, offer: u64) {
        use crate::actors::agent::{AgentMsg, OfferOutcome};
        if self.offer_forks.iter().any(|f| f.offer == offer) {
            return;
        }
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
        self.tell_agent(
            q.tenant.clone(),
            agent.clone(),
            AgentMsg::OfferEnded { offer, outcome },
        );
    }

    /// Tells a restarted queue where this caller stands.
    pub(super) fn on_queue_resync(&mut self) {
        use crate::actors::queue::{CallerState, QueueMsg};
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
        self.tell_queue(
            q.tenant.clone(),
            q.queue.clone(),
            QueueMsg::CallerState { call_id, state },
        );
    }

    /// Whether B-leg responses are offers to agents (failures go back to the queue
    /// instead of to the caller).
    pub(super) fn offering(&self) -> bool {
        !self.offer_forks.is_empty()
    }

    /// An offer's fork failed. When it was the last one ringing the caller waits again.
    pub(super) fn offer_fork_failed(&mut self, tx: u32, status: u16) {
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
    pub(super) fn back_to_queue(&mut self) {
        self.cancel_no_answer();
        self.best_failure = None;
        self.set_phase(Phase::Queued);
        self.join_queue();
    }

    /// The ring timeout of an offer: cancel its forks, report no answer, wait again.
    pub(super) fn offer_timed_out(&mut self) {
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
    pub(super) fn withdraw_fork(&mut self, tx: u32) {
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
    pub(super) fn offer_answered(&mut self, tx: u32) {
        use crate::actors::agent::OfferOutcome;
        let forks = std::mem::take(&mut self.offer_forks);
        let Some(winner) = forks.iter().find(|f| f.tx == tx).cloned() else {
            return;
        };
        for f in forks.iter().filter(|f| f.tx != tx) {
            self.stale_forks.push(f.tx);
        }
        let now = self.wall_ms as u64;
        // The agent's phone is a tenant user's: it may transfer the call (REFER), and the API
        // holds and transfers on its behalf.
        self.core().users[1] = Some(Arc::from(format!("agent:{}", winner.agent)));
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
    pub(super) fn abandon_queue(&mut self) {
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

    pub(super) fn leave_queue(&mut self, abandoned: bool) {
        if let Some(id) = self.keepalive.take() {
            self.cancel_timer(id);
        }
        let Some(q) = self.core().queue.clone() else {
            return;
        };
        let call_id = self.a_call_id_str();
        self.tell_queue(
            q.tenant.clone(),
            q.queue.clone(),
            crate::actors::queue::QueueMsg::Leave { call_id, abandoned },
        );
    }

    /// The queue sends the caller elsewhere.
    pub(super) fn on_overflow(&mut self, target: crate::config::CcTarget) {
        use crate::config::CcTarget;
        let queued = self
            .core
            .as_ref()
            .is_some_and(|c| c.phase == Phase::Queued && !c.ended);
        if !queued {
            return;
        }
        if let Some(id) = self.keepalive.take() {
            self.cancel_timer(id);
        }
        match target {
            CcTarget::Queue(other) => {
                tracing::info!(to = %other, "caller overflows to another queue");
                let now = self.wall_ms as u64;
                if let Some(q) = self.core().queue.as_mut() {
                    q.queue = Arc::from(other.as_str());
                    q.joined_ms = now;
                }
                self.core().cdr.route = format!("queue:{other}");
                self.join_queue();
            }
            CcTarget::User(user) => {
                let tenant = self.core().queue.as_ref().map(|q| q.tenant.clone());
                let forks = match tenant {
                    Some(t) => self.env.lookup_user(&t, &user),
                    None => Vec::new(),
                };
                if let Some(q) = self.core().queue.as_mut() {
                    q.waiting = false;
                }
                if forks.is_empty() {
                    return self.fail_queued(
                        480,
                        "Temporarily Unavailable",
                        "overflow user not registered",
                    );
                }
                // From here on an ordinary call to the user's phones: failures are relayed.
                self.place_b_leg(
                    &forks,
                    Bytes::from(user.clone()),
                    format!("user:{user}"),
                    None,
                );
                self.no_answer =
                    Some(self.schedule_call_timer(CallTimer::NoAnswer, self.cfg.no_answer));
                self.set_phase(Phase::Setup);
            }
            CcTarget::Status(code) => {
                if let Some(q) = self.core().queue.as_mut() {
                    q.waiting = false;
                }
                self.fail_queued(code, reason_phrase(code), "queue overflow")
            }
            // Not overflow targets (validation refuses them); as an unresolved number.
            CcTarget::Number(_)
            | CcTarget::Echo
            | CcTarget::Music
            | CcTarget::Conference(_)
            | CcTarget::Flow(_) => {
                if let Some(q) = self.core().queue.as_mut() {
                    q.waiting = false;
                }
                self.fail_queued(480, "Temporarily Unavailable", "overflow number unresolved")
            }
        }
    }

    /// Ends a caller that never reached an agent with a final failure.
    pub(super) fn fail_queued(&mut self, status: u16, reason: &str, why: &str) {
        if self.a_answered() {
            return self.hang_up_answered_caller(HangupBy::System, why);
        }
        let resp = self.a_response(status, reason, false);
        self.respond_a_invite(resp);
        self.end(status, HangupBy::System, why);
    }

    /// Ends the call of a caller the switch answered (waiting with music, or its agent
    /// ringing): a BYE to the caller, the ringing agent cancelled.
    pub(super) fn hang_up_answered_caller(&mut self, by: HangupBy, why: &str) {
        self.abandon_queue();
        if let Some((id, ..)) = self.resend_2xx.take() {
            self.cancel_timer(id);
        }
        self.cancel_b();
        self.end(200, by, why);
        if by != HangupBy::Caller {
            self.after_cdr(AfterCdr::Bye(Leg::A));
        }
    }

    /// After the call ends: the agent moves on, the queue counts the handle time, a caller
    /// still listed leaves.
    pub(super) fn queue_call_ended(&mut self) {
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
            self.cancel_timer(id);
        }
        let end = self.core().cdr.end_ms;
        self.release_agent(end);
    }

    /// The queue's agent leaves the call (it ended, or the agent transferred it away): the
    /// agent moves on to wrap-up and the queue counts its talk time, once.
    pub(super) fn release_agent(&mut self, until_ms: Option<i64>) {
        let Some(q) = self.core().queue.clone() else {
            return;
        };
        let Some(agent) = q.agent.clone().filter(|_| !q.released) else {
            return;
        };
        if let Some(qm) = self.core().queue.as_mut() {
            qm.released = true;
        }
        let call_id = self.a_call_id_str();
        self.forget_agent_call(q.tenant.clone(), agent.clone(), call_id.clone());
        self.tell_agent(
            q.tenant.clone(),
            agent.clone(),
            crate::actors::agent::AgentMsg::CallEnded { call_id },
        );
        let talk_ms = match (self.core().cdr.answer_ms, until_ms) {
            (Some(a), Some(e)) => (e - a).max(0) as u64,
            _ => 0,
        };
        self.tell_queue(
            q.tenant.clone(),
            q.queue.clone(),
            crate::actors::queue::QueueMsg::CallEnded { talk_ms },
        );
    }
}
