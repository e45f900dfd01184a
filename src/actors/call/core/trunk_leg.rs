//! A call through a trunk group: one attempt after another along the call's plan,
//! failover on the causes that call for it, digest towards the carrier.

use super::*;

impl CallCore {
    // ---- trunks: one attempt after another along the call's plan ----

    pub(super) fn trunk_tx(&self) -> Option<u32> {
        self.trunk_leg
            .as_ref()
            .and_then(|l| l.current.as_ref())
            .map(|c| c.tx)
    }

    /// Tells the trunk's actor how an attempt ended, on whichever node owns the trunk.
    pub(super) fn report_attempt(&mut self, trunk: &Arc<str>, report: AttemptReport) {
        self.tell(Tell::TrunkAttempt {
            trunk: trunk.clone(),
            report,
        });
    }

    pub(super) fn cancel_invite_timer(&mut self) {
        if let Some(id) = self.invite_timer.take() {
            self.cancel_timer(id);
        }
    }

    /// Sends the B leg to the next trunk of the plan that has a channel and a CPS token;
    /// with none left the caller gets 503.
    pub(super) fn next_trunk(&mut self) {
        loop {
            let next = self.trunk_leg.as_mut().and_then(|l| {
                l.plan
                    .pop_front()
                    .map(|t| (t, false))
                    .or_else(|| l.last_resort.pop_front().map(|t| (t, true)))
            });
            let Some((t, last_resort)) = next else {
                let tried = self
                    .trunk_leg
                    .as_ref()
                    .map(|l| l.attempts.join(","))
                    .unwrap_or_default();
                let resp = self.a_response(503, "Service Unavailable (No Trunk Available)", false);
                self.respond_a_invite(resp);
                self.end(503, HangupBy::System, &format!("no trunk left ({tried})"));
                return;
            };
            let seized = if last_resort {
                t.seize_last_resort()
            } else {
                t.seize()
            };
            let gw = match seized {
                Ok(()) => match t.gateway() {
                    Some(gw) => gw,
                    None => {
                        t.release();
                        continue;
                    }
                },
                Err(cause) => {
                    metrics::counter!(trunk::TRUNK_FAILOVERS, "trunk" => t.id.to_string(), "cause" => cause.label()).increment(1);
                    if let Some(l) = self.trunk_leg.as_mut() {
                        l.attempts.push(format!("{}:{}", t.id, cause.label()));
                    }
                    continue;
                }
            };
            let dialled = t.rewrite(&self.core().cdr.callee);
            let fork = Fork {
                ruri: Bytes::from(format!(
                    "sip:{dialled}@{}{}",
                    gw.addr,
                    gw.protocol.uri_param()
                )),
                dest: Dest {
                    protocol: gw.protocol,
                    addr: gw.addr,
                    conn: None,
                },
            };
            let caller_id = t.config.caller_id.clone();
            let txs = self.place_b_leg(
                &[fork],
                Bytes::from(dialled),
                format!("trunk:{}", t.id),
                caller_id.as_deref(),
            );
            metrics::counter!(trunk::TRUNK_ATTEMPTS, "trunk" => t.id.to_string()).increment(1);
            self.core().trunk = Some(t.id.clone());
            self.checkpoint();
            let timeout = Duration::from_millis(t.config.invite_timeout_ms);
            if let (Some(l), Some(&tx)) = (self.trunk_leg.as_mut(), txs.last()) {
                l.current = Some(TrunkAttempt {
                    trunk: t,
                    tx,
                    authenticated: false,
                    sent: self.now,
                    responded: false,
                    pdd_ms: None,
                    answered_at: None,
                });
            }
            self.cancel_invite_timer();
            self.invite_timer = Some(self.schedule_call_timer(CallTimer::InviteTimeout, timeout));
            if self.no_answer.is_none() {
                self.no_answer =
                    Some(self.schedule_call_timer(CallTimer::NoAnswer, self.cfg.no_answer));
            }
            return;
        }
    }

    /// A response on the current trunk attempt. True when it was a failover cause and the
    /// call moved on to the next trunk (nothing to relay).
    pub(super) fn trunk_response(&mut self, tx: u32, _resp: &Message, status: u16) -> bool {
        let now = self.now;
        let Some(cur) = self
            .trunk_leg
            .as_mut()
            .and_then(|l| l.current.as_mut())
            .filter(|c| c.tx == tx)
        else {
            return false;
        };
        cur.responded = true;
        if (180..300).contains(&status) && cur.pdd_ms.is_none() {
            cur.pdd_ms = Some(now.saturating_duration_since(cur.sent).as_millis() as u64);
        }
        if (200..300).contains(&status) && cur.answered_at.is_none() {
            cur.answered_at = Some(now);
            metrics::counter!(trunk::TRUNK_ANSWERS, "trunk" => cur.trunk.id.to_string())
                .increment(1);
        }
        if status < 300 {
            // Any response, 100 Trying included, shows the trunk alive.
            self.cancel_invite_timer();
            return false;
        }
        self.cancel_invite_timer();
        if matches!(status, 401 | 407) && self.trunk_authenticate(_resp, status) {
            return true;
        }
        match classify(Some(status), false) {
            outcome @ Outcome::Failover(_) => self.trunk_failed(outcome, Some(status)),
            _ => false,
        }
    }

    /// The carrier challenged our INVITE: send it again with credentials (RFC 3261 §22.2),
    /// once per attempt. False without credentials or after a second challenge (then the
    /// challenge is a failover cause: the carrier refused us, not the callee).
    pub(super) fn trunk_authenticate(&mut self, resp: &Message, status: u16) -> bool {
        use crate::sip::auth::{authorization_value, ha1, Challenge};
        let Some(cur) = self.trunk_leg.as_ref().and_then(|l| l.current.as_ref()) else {
            return false;
        };
        let (Some(user), Some(password)) = (
            cur.trunk.config.auth_username.clone(),
            cur.trunk.config.auth_password.clone(),
        ) else {
            return false;
        };
        if cur.authenticated {
            return false;
        }
        let old_tx = cur.tx;
        let (challenge_header, credentials_header) = if status == 407 {
            (
                HeaderName::ProxyAuthenticate,
                HeaderName::ProxyAuthorization,
            )
        } else {
            (HeaderName::WwwAuthenticate, HeaderName::Authorization)
        };
        let Some(challenge) = resp
            .value(challenge_header)
            .and_then(|v| Challenge::parse(v).ok())
        else {
            return false;
        };
        let dest = self.core().b_dest;
        // The challenged transaction ACKs its 401/407 itself; anything more from it is
        // ignored.
        self.stale_forks.push(old_tx);
        let mut invite = (*self.core().b_invite).clone();
        let uri = invite
            .request_uri()
            .map(|u| String::from_utf8_lossy(u).into_owned())
            .unwrap_or_default();
        let key = ha1(challenge.algorithm, &user, &challenge.realm, &password);
        let cnonce = String::from_utf8_lossy(&random_token(12)).into_owned();
        let value = authorization_value(&challenge, &user, &key, "INVITE", &uri, 1, &cnonce);
        self.core().b.local_cseq += 1;
        let cseq = self.core().b.local_cseq;
        let branch = new_branch();
        invite.set(HeaderName::Via, self.cfg.via(dest.protocol, &branch));
        invite.set(HeaderName::CSeq, cseq_value(cseq, &Method::Invite));
        invite.set(credentials_header, value);
        let invite = Arc::new(invite);
        self.core().b_invite = invite.clone();
        let tx = self.new_client_tx(Leg::B, Role::BInvite, invite, branch, dest);
        let timeout = Duration::from_millis(cur_timeout(self));
        if let Some(cur) = self.trunk_leg.as_mut().and_then(|l| l.current.as_mut()) {
            cur.tx = tx;
            cur.authenticated = true;
            cur.responded = false;
        }
        self.invite_timer = Some(self.schedule_call_timer(CallTimer::InviteTimeout, timeout));
        true
    }

    /// The current attempt failed over: report it, give its channel back, try the next
    /// trunk. False when no trunk is left (the failure is then the caller's answer).
    pub(super) fn trunk_failed(&mut self, outcome: Outcome, status: Option<u16>) -> bool {
        let Some(cur) = self.trunk_leg.as_mut().and_then(|l| l.current.take()) else {
            return false;
        };
        self.cancel_invite_timer();
        let label = match outcome {
            Outcome::Failover(c) => c.label(),
            _ => "failed",
        };
        if let Some(l) = self.trunk_leg.as_mut() {
            l.attempts.push(format!("{}:{label}", cur.trunk.id));
        }
        cur.trunk.release();
        self.core().trunk = None;
        self.report_attempt(
            &cur.trunk.id,
            AttemptReport {
                outcome,
                status,
                pdd_ms: cur.pdd_ms,
                duration_ms: None,
                media: None,
            },
        );
        let waiting = self
            .core
            .as_ref()
            .is_some_and(|c| matches!(c.phase, Phase::Setup | Phase::Early) && !c.ended);
        let more = self
            .trunk_leg
            .as_ref()
            .is_some_and(|l| !l.plan.is_empty() || !l.last_resort.is_empty());
        if !(waiting && more) {
            return false;
        }
        // The abandoned attempt: a late provisional is CANCELled, a late 2xx ended.
        self.stale_forks.push(cur.tx);
        self.withdraw_fork(cur.tx);
        if !cur.responded {
            self.stop_retransmitting(cur.tx);
        }
        self.next_trunk();
        true
    }

    /// No response at all from the trunk in its INVITE timeout.
    pub(super) fn trunk_timed_out(&mut self) {
        let silent = self
            .trunk_leg
            .as_ref()
            .and_then(|l| l.current.as_ref())
            .is_some_and(|c| !c.responded);
        if !silent {
            return;
        }
        let tx = self.trunk_tx();
        if self.trunk_failed(Outcome::Failover(FailoverCause::Timeout), None) {
            return;
        }
        // No trunk left: the caller gets the failure now rather than after Timer B.
        if let Some(tx) = tx {
            self.stale_forks.push(tx);
            self.withdraw_fork(tx);
            self.stop_retransmitting(tx);
        }
        let resp = self.a_response(503, "Service Unavailable (All Trunks Failed)", false);
        self.respond_a_invite(resp);
        self.end(503, HangupBy::System, "no trunk answered");
    }

    /// Gives up on a silent attempt like a proxy's final-response timer does (Kamailio's
    /// fr_timer): no more retransmissions of its INVITE (Timer A off). The transaction stays
    /// until Timer B, so a late answer is still CANCELled or ended.
    pub(super) fn stop_retransmitting(&mut self, tx: u32) {
        let id = self
            .txs
            .iter_mut()
            .find(|t| t.id == tx)
            .and_then(|t| t.timers[TimerName::A as usize].take());
        if let Some(id) = id {
            self.cancel_timer(id);
        }
    }

    /// The call is over: its attempt's result goes to the trunk, its channel back.
    pub(super) fn trunk_call_ended(&mut self, final_status: u16) {
        self.cancel_invite_timer();
        // The carrier's leg (B) as measured by the relay, for the trunk's quality score.
        let media = self
            .core
            .as_ref()
            .and_then(|c| c.cdr.quality.as_deref())
            .map(|[_, b]| *b)
            .filter(|b| b.packets > 0)
            .map(|b| crate::routing::trunks::MediaQuality {
                loss: b.loss,
                jitter_ms: b.jitter_ms,
                mos: b.mos,
            });
        if let Some(cur) = self.trunk_leg.as_mut().and_then(|l| l.current.take()) {
            let (outcome, duration_ms) = match cur.answered_at {
                Some(at) => (
                    Outcome::Answered,
                    Some(self.now.saturating_duration_since(at).as_millis() as u64),
                ),
                None => (classify(Some(final_status), false), None),
            };
            let outcome = match outcome {
                // The caller hung up first: not the trunk's failure.
                Outcome::Failover(_) if final_status == 487 => Outcome::CalleeFinal,
                o => o,
            };
            let label = match outcome {
                Outcome::Answered => "answered".to_string(),
                _ => final_status.to_string(),
            };
            if let Some(l) = self.trunk_leg.as_mut() {
                l.attempts.push(format!("{}:{label}", cur.trunk.id));
            }
            self.report_attempt(
                &cur.trunk.id,
                AttemptReport {
                    outcome,
                    status: Some(final_status),
                    pdd_ms: cur.pdd_ms,
                    duration_ms,
                    media,
                },
            );
        }
        if let Some(l) = &self.trunk_leg {
            let attempts = l.attempts.join(",");
            self.core().cdr.attempts = Some(attempts);
        }
    }

    /// Gives the trunk channel back (also when a restarted actor ends the call).
    pub(super) fn release_trunk_channel(&mut self) {
        if let Some(id) = self
            .core
            .as_mut()
            .and_then(|c| Arc::make_mut(c).trunk.take())
        {
            self.out.push(Effect::ReleaseTrunk(id));
        }
    }
}
