//! The call's transactions: the pure machines of `sip::transaction`, stepped and their
//! actions turned into effects.

use super::*;

impl CallCore {
    // ---- transactions ----

    /// A server transaction for a request received on `leg`.
    pub(super) fn new_server_tx(
        &mut self,
        leg: Leg,
        role: Role,
        request: impl Into<Arc<Message>>,
        branch: Bytes,
        dest: Dest,
    ) -> u32 {
        self.new_tx(false, leg, role, request.into(), branch, dest)
    }

    /// A client transaction for a request sent on `leg` (an empty `branch` is read from
    /// the request's top Via).
    pub(super) fn new_client_tx(
        &mut self,
        leg: Leg,
        role: Role,
        request: impl Into<Arc<Message>>,
        branch: Bytes,
        dest: Dest,
    ) -> u32 {
        self.new_tx(true, leg, role, request.into(), branch, dest)
    }

    pub(super) fn new_tx(
        &mut self,
        client: bool,
        leg: Leg,
        role: Role,
        request: Arc<Message>,
        branch: Bytes,
        dest: Dest,
    ) -> u32 {
        let id = self.next_tx;
        self.next_tx += 1;
        let method = request.method().cloned().unwrap_or(Method::Ack);
        let kind = match (client, method == Method::Invite) {
            (true, true) => Kind::ClientInvite,
            (true, false) => Kind::ClientNonInvite,
            (false, true) => Kind::ServerInvite,
            (false, false) => Kind::ServerNonInvite,
        };
        let reliability = Reliability::from(dest.protocol.is_reliable());
        let (fsm, actions) = Transaction::start(kind, reliability, &self.cfg.timer_cfg);
        metrics::gauge!(TRANSACTIONS_ACTIVE).increment(1.0);
        let (request_bytes, branch) = if client {
            crate::transport::count_sent(dest.protocol, &request);
            let branch = if branch.is_empty() {
                request
                    .top_via()
                    .and_then(|v| v.branch())
                    .unwrap_or_default()
            } else {
                branch
            };
            (request.encode(), branch)
        } else {
            (Bytes::new(), branch)
        };
        self.txs.push(Tx {
            id,
            leg,
            role,
            fsm,
            branch,
            method,
            request,
            request_bytes,
            pending: None,
            last_response: None,
            dest,
            timers: [None; 12],
            is_client: client,
            cancelled: false,
            ack: None,
            ack_due: false,
            resend: None,
        });
        self.execute(id, &actions, None);
        id
    }

    /// Whether an INVITE transaction of the call, on either leg, has no final response yet.
    pub(super) fn invite_pending(&self) -> bool {
        use crate::sip::transaction::{ClientInviteState as C, ServerInviteState as S};
        self.txs.iter().any(|t| match &t.fsm {
            Transaction::ServerInvite(s) => s.state() == S::Proceeding,
            Transaction::ClientInvite(c) => matches!(c.state(), C::Calling | C::Proceeding),
            _ => false,
        })
    }

    pub(super) fn dialog_mut(&mut self, leg: Leg) -> &mut Dialog {
        let core = Arc::make_mut(self.core.as_mut().expect("call state"));
        match leg {
            Leg::A => &mut core.a,
            Leg::B => &mut core.b,
            Leg::X => {
                if let Some(p) = core.transfer.as_mut().and_then(|t| t.transferor.as_mut()) {
                    &mut p.dialog
                } else if let Some(c) = core.consult.as_mut() {
                    &mut c.leg.dialog
                } else {
                    // Gone meanwhile: its late messages are matched against the B dialog,
                    // which answers them 481.
                    &mut core.b
                }
            }
        }
    }

    pub(super) fn tx_mut(&mut self, id: u32) -> Option<&mut Tx> {
        self.txs.iter_mut().find(|t| t.id == id)
    }

    /// Hands a response to a server transaction; it is sent if the machine allows it.
    pub(super) fn respond_msg(&mut self, id: u32, resp: &Message) {
        let Some(tx) = self.txs.iter_mut().find(|t| t.id == id) else {
            return;
        };
        let status = resp.status().unwrap_or(500);
        crate::transport::count_sent(tx.dest.protocol, resp);
        tx.pending = Some(resp.encode());
        let actions = tx
            .fsm
            .step(TxEvent::TuResponse { status }, &self.cfg.timer_cfg);
        self.execute(id, &actions, None);
    }

    pub(super) fn respond(
        &mut self,
        id: u32,
        status: u16,
        reason: &str,
        body: Option<(&Message, bool)>,
    ) {
        let Some(tx) = self.txs.iter().find(|t| t.id == id) else {
            return;
        };
        let leg = tx.leg;
        let tag = self
            .core
            .is_some()
            .then(|| self.dialog_mut(leg).local_tag.clone());
        let Some(tx) = self.txs.iter().find(|t| t.id == id) else {
            return;
        };
        let mut resp = response_to(&tx.request, status, reason, tag.as_deref());
        if let Some((from, with_contact)) = body {
            copy_body(from, &mut resp);
            if (200..300).contains(&status) || status == 422 {
                copy_extensions(from, &mut resp);
            }
            if with_contact {
                resp.push(HeaderName::Contact, self.cfg.contact(tx.dest.protocol));
            }
        }
        self.respond_msg(id, &resp);
    }

    pub(super) fn execute(&mut self, id: u32, actions: &[Action], msg: Option<&Message>) {
        for action in actions {
            match *action {
                Action::SendRequest => {
                    if let Some((dest, bytes)) = self
                        .txs
                        .iter()
                        .find(|t| t.id == id)
                        .map(|t| (t.dest, t.request_bytes.clone()))
                    {
                        self.send(dest, bytes);
                    }
                }
                Action::SendAck => {
                    if let (Some(tx), Some(resp)) = (self.txs.iter().find(|t| t.id == id), msg) {
                        let ack = ack_for_failure(&tx.request, resp);
                        let dest = tx.dest;
                        self.send_msg(dest, &ack);
                    }
                }
                Action::SendTrying => {
                    if let Some(tx) = self.tx_mut(id) {
                        let trying = response_to(&tx.request, 100, "Trying", None);
                        let bytes = trying.encode();
                        crate::transport::count_sent(tx.dest.protocol, &trying);
                        tx.last_response = Some(bytes.clone());
                        let dest = tx.dest;
                        self.send(dest, bytes);
                    }
                }
                Action::SendResponse => {
                    if let Some(tx) = self.tx_mut(id) {
                        if let Some(bytes) = tx.pending.take() {
                            tx.last_response = Some(bytes.clone());
                            let dest = tx.dest;
                            self.send(dest, bytes);
                        }
                    }
                }
                Action::ResendResponse => {
                    if let Some((dest, Some(bytes))) = self
                        .txs
                        .iter()
                        .find(|t| t.id == id)
                        .map(|t| (t.dest, t.last_response.clone()))
                    {
                        self.send(dest, bytes);
                    }
                }
                Action::StartTimer(name, after) => {
                    let key = self.start_timer(TimerFire::Tx { tx: id, name }, after);
                    if let Some(old) = self
                        .tx_mut(id)
                        .and_then(|tx| tx.timers[name as usize].replace(key))
                    {
                        self.cancel_timer(old);
                    }
                }
                Action::CancelTimer(name) => {
                    if let Some(old) = self
                        .tx_mut(id)
                        .and_then(|tx| tx.timers[name as usize].take())
                    {
                        self.cancel_timer(old);
                    }
                }
                Action::PassRequestToTu | Action::PassAckToTu => {}
                Action::PassResponseToTu => {
                    if let Some(resp) = msg {
                        self.tu_response(id, resp);
                    }
                }
                Action::Timeout => {
                    let kind = self.txs.iter().find(|t| t.id == id).map(|t| t.fsm.kind());
                    let label = match kind {
                        Some(Kind::ClientInvite) => "client_invite",
                        Some(Kind::ClientNonInvite) => "client_non_invite",
                        Some(Kind::ServerInvite) => "server_invite",
                        _ => "server_non_invite",
                    };
                    metrics::counter!(TRANSACTIONS_TIMED_OUT, "kind" => label).increment(1);
                    self.tu_failed(id, 408, "Request Timeout");
                }
                Action::TransportErrorToTu => {
                    self.tu_failed(id, 503, "Service Unavailable (Transport Error)")
                }
                Action::Terminated => {}
            }
        }
    }

    /// Drops terminated transactions and stops the actor when the call is over and nothing
    /// is left.
    pub(super) fn sweep(&mut self) {
        // A delayed-offer re-INVITE whose 2xx the other leg never ACKed: ACK it without an
        // answer rather than leave that peer waiting for an ACK forever.
        let overdue: Vec<(Leg, u32)> = self
            .txs
            .iter()
            .filter(|t| t.ack_due && t.fsm.is_terminated())
            .map(|t| (t.leg, t.request.cseq().map(|c| c.seq).unwrap_or(1)))
            .collect();
        for (leg, seq) in overdue {
            tracing::info!("no ACK for a relayed re-INVITE's 2xx: ACKing it empty");
            self.send_ack(leg, seq, Bytes::new(), None);
        }
        let resends: Vec<TimerKey> = self
            .txs
            .iter_mut()
            .filter(|t| t.fsm.is_terminated())
            .filter_map(|t| t.resend.take().map(|r| r.0))
            .collect();
        for key in resends {
            self.cancel_timer(key);
        }
        let before = self.txs.len();
        self.txs.retain(|t| !t.fsm.is_terminated());
        let gone = before - self.txs.len();
        if gone > 0 {
            metrics::gauge!(TRANSACTIONS_ACTIVE).decrement(gone as f64);
        }
        let ended = self.core.as_ref().is_none_or(|c| c.phase == Phase::Ended);
        if !ended || self.resend_2xx.is_some() || self.after_cdr.is_some() {
            return;
        }
        // Even with no transaction left the Call-IDs stay retired for 64*T1: a late 2xx
        // retransmission still gets its ACK, and a stray INVITE retransmission cannot
        // start a second call.
        if !self.retired && self.txs.iter().all(Tx::settled) {
            self.retire();
        }
    }

    /// The call is over and every transaction has its final answer: what is left is only
    /// absorbing retransmissions (Timers G–K, L, M). That is handed to the router as the
    /// final responses already sent, and the actor stops now instead of lingering for
    /// 64*T1: at 500 CAPS lingering kept ~2.5 actors alive per live call.
    pub(super) fn retire(&mut self) {
        let Some(core) = &self.core else { return };
        let responses = self
            .txs
            .iter()
            .filter(|t| !t.is_client)
            .filter_map(|t| {
                let response = t.last_response.clone()?;
                // A retransmitted INVITE whose answer was a 2xx is absorbed (RFC 6026
                // "Accepted"), so that 2xx (~0.7 KB) need not outlive the call; an empty
                // response tells the router to absorb.
                let absorb = t.method == Method::Invite && response.get(8) == Some(&b'2');
                Some(RetiredResponse {
                    // Copied: a slice would keep the request's whole datagram for 64*T1.
                    branch: Bytes::copy_from_slice(&t.branch),
                    method: t.method.clone(),
                    response: if absorb { Bytes::new() } else { response },
                    dest: t.dest,
                })
            })
            .collect();
        let ids = self.call_ids();
        let retired = Retired {
            responses,
            ack_2xx: core.b_ack.clone().map(|ack| (ack, core.b_dest)),
        };
        self.out.push(Effect::Retire { ids, retired });
        self.retired = true;
    }

    pub(super) fn on_tx_timer(&mut self, id: u32, name: TimerName, timer_id: TimerKey) {
        let Some(tx) = self.txs.iter_mut().find(|t| t.id == id) else {
            return;
        };
        if tx.timers[name as usize] != Some(timer_id) {
            return; // replaced or cancelled meanwhile
        }
        tx.timers[name as usize] = None;
        let actions = tx.fsm.step(TxEvent::TimerFired(name), &self.cfg.timer_cfg);
        self.execute(id, &actions, None);
    }
}
