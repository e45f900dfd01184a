//! An INVITE with Replaces (RFC 3891) arriving at the switch: a tenant's authenticated phone
//! takes the place of a leg of an established call (phones that do attended transfer, or a
//! call pickup, that way). The router finds the call by the Call-ID the header names and
//! hands it the INVITE; the new leg becomes the call's A position (answered by the switch
//! with its own SDP, on the relay port the replaced leg used), and the replaced leg gets a
//! BYE. Only anchored calls, and only a phone of the call's own tenant (403 otherwise; 481
//! when the dialog is not this call's).

use super::*;

impl CallCore {
    /// A new INVITE that asks to replace one of this call's legs; `user` is the tenant user
    /// it authenticated as, if any.
    pub(super) fn replacing_invite(
        &mut self,
        inbound: Inbound,
        user: Option<(Arc<str>, Arc<str>)>,
    ) {
        let Inbound { msg, source } = inbound;
        let refuse = |core: &mut CallCore, status: u16, reason: &str, label: &'static str| {
            metrics::counter!(transfer::TRANSFERS_REFUSED, "reason" => label).increment(1);
            let tag = random_token(10);
            let resp = response_to(&msg, status, reason, Some(&tag));
            let dest = core.cfg.response_dest(&source, msg.top_via().as_ref());
            core.send_msg(dest, &resp);
        };
        let replaces = msg
            .other("Replaces")
            .and_then(|v| Replaces::parse(&String::from_utf8_lossy(v)));
        let Some(r) = replaces else {
            return refuse(self, 400, "Bad Request (Replaces)", "bad_replaces");
        };
        let Some(c) = self.core.as_ref() else {
            return refuse(self, 481, "Call/Transaction Does Not Exist", "no_dialog");
        };
        let slot = if r.names(&c.a) {
            Leg::A
        } else if r.names(&c.b) {
            Leg::B
        } else {
            return refuse(self, 481, "Call/Transaction Does Not Exist", "no_dialog");
        };
        let allowed = matches!((&user, &c.tenant), (Some((t, _)), Some(ct)) if t == ct);
        if !allowed {
            return refuse(self, 403, "Forbidden (Replaces Not Allowed)", "not_allowed");
        }
        if c.phase != Phase::Confirmed || c.ended || c.transfer.is_some() || c.consult.is_some() {
            return refuse(self, 486, "Busy Here", "busy");
        }
        if self.session.is_none() {
            return refuse(
                self,
                488,
                "Not Acceptable Here (Transfer Needs Anchored Media)",
                "not_anchored",
            );
        }
        let Some((from, to, call_id)) = msg
            .from()
            .zip(msg.to())
            .zip(msg.call_id().cloned())
            .map(|((f, t), c)| (f, t, c))
        else {
            return refuse(self, 400, "Bad Request", "bad_replaces");
        };
        if slot == Leg::B {
            self.swap_legs();
        }
        // The replaced leg steps aside (it gets a BYE once the new one is answered).
        let core = self.core();
        let old = Parked {
            dialog: core.a.clone(),
            dest: Dest {
                protocol: core.a_source.protocol,
                addr: core.a_source.remote,
                conn: core.a_source.conn,
            },
            invite: core.a_invite.clone(),
            ack: None,
            user: core.users[0].clone(),
            side: core.sides[0],
        };
        for t in self.txs.iter_mut().filter(|t| t.leg == Leg::A) {
            t.leg = Leg::X;
            if t.role == Role::AInvite {
                t.role = Role::Local;
            }
        }
        let party = String::from_utf8_lossy(&from.uri).into_owned();
        let queue_before = self.core().queue.clone();
        let contact = msg
            .contacts()
            .next()
            .map(|c| c.uri)
            .unwrap_or_else(|| from.uri.clone());
        let core = self.core();
        core.transfer = Some(Box::new(Transfer {
            kind: "replaces",
            by: "phone",
            target: party.clone(),
            transferor: Some(old),
            notify: false,
            queue_before,
        }));
        core.a = Dialog {
            call_id: call_id.clone(),
            local_tag: random_token(10),
            remote_tag: from.tag().unwrap_or_default(),
            local_uri: dialog::without_tag(&to),
            remote_uri: dialog::without_tag(&from),
            remote_target: contact,
            route_set: msg.values(HeaderName::RecordRoute).collect(),
            local_cseq: 0,
            remote_cseq: msg.cseq().map(|c| c.seq),
        };
        core.a_source = source;
        core.users[0] = user.map(|(_, u)| u);
        let offer = msg.body.clone();
        let branch = msg.top_via().and_then(|v| v.branch()).unwrap_or_default();
        let dest = self.cfg.response_dest(&source, msg.top_via().as_ref());
        let invite = Arc::new(msg);
        self.core().a_invite = invite.clone();
        self.register(call_id.clone());
        self.new_server_tx(Leg::A, Role::AInvite, invite, branch, dest);
        let side = self.side_of(Leg::A);
        if let Ok(sdp) = crate::sip::sdp::parse(&offer) {
            let ip = self.signalling_ip(Leg::A);
            self.learn_answer(side, &sdp, ip);
        }
        let Some(answer) = self.switch_answer(side, &offer) else {
            // No G.711 (or no offer): refused; the replaced leg takes its place back.
            let resp = self.a_response(488, "Not Acceptable Here", false);
            self.respond_a_invite(resp);
            self.unreplace();
            return;
        };
        let mut ok = self.a_response(200, "OK", true);
        ok.push(HeaderName::ContentType, "application/sdp");
        ok.body = answer;
        self.answer_a(ok);
        if let Some(leg) = self.core().held.take() {
            let s = self.side_of(leg);
            self.media_op(MediaOp::StopPlay(s));
        }
        self.media_op(MediaOp::Bridge(true));
        self.leg_joined(&call_id, "transfer", party, true);
        tracing::info!("a leg replaced by an INVITE with Replaces");
        self.transfer_done();
    }

    /// The replacing INVITE failed: the replaced leg is the A position again.
    fn unreplace(&mut self) {
        let Some(t) = self.core().transfer.take() else {
            return;
        };
        if let Some(p) = t.transferor {
            let core = self.core();
            core.a = p.dialog;
            core.a_source = Source {
                protocol: p.dest.protocol,
                remote: p.dest.addr,
                local: p.dest.addr,
                conn: p.dest.conn,
            };
            core.a_invite = p.invite;
            core.users[0] = p.user;
            for t in self.txs.iter_mut().filter(|t| t.leg == Leg::X) {
                t.leg = Leg::A;
            }
        }
    }
}
