//! The end of a call: its CDR, and the hangup's last messages held until the CDR is
//! durable.

use super::*;

impl CallCore {
    // ---- the end ----

    /// The call is over for its users: count it, write the CDR, free the admission slot.
    /// Transactions may linger a while to absorb retransmissions.
    pub(super) fn end(&mut self, final_status: u16, by: HangupBy, reason: &str) {
        let wall_ms = self.wall_ms;
        let core = self.core();
        if core.ended {
            return;
        }
        core.ended = true;
        core.phase = Phase::Ended;
        core.cdr.end_ms = Some(wall_ms);
        if core.cdr.final_status == 0 || core.cdr.answer_ms.is_none() {
            core.cdr.final_status = final_status;
        }
        core.cdr.hangup_by = Some(by);
        core.cdr.reason = reason.to_string();
        if let Some(id) = self.announce.take() {
            self.cancel_timer(id);
        }
        self.leave_conference();
        self.release_media();
        self.transfer_agent(None, final_status);
        self.queue_call_ended();
        self.trunk_call_ended(final_status);
        self.orig_call_ended(final_status);
        let core = self.core();
        if core.cdr.answer_ms.is_none() {
            metrics::counter!(CALLS_FAILED, "status" => status_label(final_status)).increment(1);
        }
        let hangup = match by {
            HangupBy::Caller => "caller",
            HangupBy::Callee => "callee",
            HangupBy::System => "system",
        };
        metrics::counter!(CALLS_ENDED, "by" => hangup).increment(1);
        let cdr = core.to_cdr();
        self.cancel_call_timers();
        self.out.push(Effect::Ended);
        // The hangup's last messages wait until the writer says the CDR is committed (the
        // actor bounds the wait): [`Event::CdrStored`].
        self.after_cdr = Some(Vec::new());
        self.out.push(Effect::WriteCdr(Box::new(cdr)));
        self.cdr_timer = Some(self.schedule_call_timer(CallTimer::CdrWait, self.cfg.cdr_wait));
        if let Some(c) = self.core().consult.clone() {
            // A consultation still ringing is cancelled, an answered one hung up on; its
            // session goes.
            let ringing: Vec<u32> = self
                .txs
                .iter()
                .filter(|t| t.role == Role::Consult && !t.settled())
                .map(|t| t.id)
                .collect();
            for id in ringing {
                self.cancel_fork(id);
            }
            if c.leg.ack.is_some() {
                self.after_cdr(AfterCdr::Bye(Leg::X));
            }
            let key = super::consult::consult_key(&self.core().a_call_id);
            self.env.release_media(&key);
        } else if self
            .core()
            .transfer
            .as_ref()
            .is_some_and(|t| t.transferor.is_some())
        {
            // A transferor still waiting aside is let go with the call.
            self.after_cdr(AfterCdr::Bye(Leg::X));
        }
        self.after_cdr(AfterCdr::ReleaseChannel);
        self.checkpoint();
    }

    /// A leg joins the call's record of who talked to whom (once per Call-ID).
    pub(super) fn leg_joined(
        &mut self,
        call_id: &Bytes,
        role: &str,
        party: String,
        answered: bool,
    ) {
        let now = self.wall_ms;
        let id = String::from_utf8_lossy(call_id).into_owned();
        let legs = &mut self.core().cdr.legs;
        if legs.capacity() == 0 {
            // Most calls have two legs (room for four by default; a leg is ~130 bytes).
            legs.reserve_exact(2);
        }
        if legs
            .iter()
            .any(|l| l.call_id == id && l.end_reason.is_empty())
        {
            return;
        }
        legs.push(crate::store::CdrLeg {
            call_id: id,
            role: role.to_string(),
            party,
            start_at: now,
            answer_at: answered.then_some(now),
            end_at: 0,
            end_reason: String::new(),
        });
    }

    /// A leg leaves the call before its end (a transferor).
    pub(super) fn leg_left(&mut self, call_id: &str, reason: &str) {
        let now = self.wall_ms;
        if let Some(l) = self
            .core()
            .cdr
            .legs
            .iter_mut()
            .find(|l| l.call_id == call_id && l.end_reason.is_empty())
        {
            l.end_at = now;
            l.end_reason = reason.to_string();
        }
    }

    /// Runs `step` once the call's CDR is durable (at once if nothing is awaited).
    pub(super) fn after_cdr(&mut self, step: AfterCdr) {
        match self.after_cdr.as_mut() {
            Some(waiting) => waiting.push(step),
            None => self.run_after_cdr(step),
        }
    }

    /// The CDR's commit did not come in time: the hangup goes on without it.
    pub(super) fn cdr_wait_over(&mut self) {
        self.cdr_timer = None;
        if self.after_cdr.is_some() {
            metrics::counter!(super::super::CDR_NOT_DURABLE, "reason" => "timeout").increment(1);
            tracing::warn!(
                "CDR not committed within {:?}: hangup goes on",
                self.cfg.cdr_wait
            );
            self.cdr_stored();
        }
    }

    /// The CDR is committed (or will not be soon): the held messages go out.
    pub(super) fn cdr_stored(&mut self) {
        if let Some(t) = self.cdr_timer.take() {
            self.cancel_timer(t);
        }
        let (release, steps): (Vec<_>, Vec<_>) = self
            .after_cdr
            .take()
            .unwrap_or_default()
            .into_iter()
            .partition(|s| matches!(s, AfterCdr::ReleaseChannel));
        for step in steps.into_iter().chain(release) {
            self.run_after_cdr(step);
        }
        self.checkpoint();
    }

    pub(super) fn run_after_cdr(&mut self, step: AfterCdr) {
        match step {
            AfterCdr::Respond(tx, status, reason) => self.respond(tx, status, reason, None),
            AfterCdr::Relay(leg, msg, server) => self.relay_request(leg, &msg, server),
            AfterCdr::Bye(leg) => self.send_bye(leg),
            AfterCdr::ReleaseChannel => self.release_trunk_channel(),
        }
    }
}

impl Checkpoint {
    pub(super) fn to_cdr(&self) -> Cdr {
        let d = &self.cdr;
        let end = d.end_ms.unwrap_or_else(crate::store::now_unix_ms);
        Cdr {
            a_call_id: String::from_utf8_lossy(&self.a_call_id).into_owned(),
            b_call_id: Some(String::from_utf8_lossy(&self.b_call_id).into_owned()),
            caller: d.caller.clone(),
            callee: d.callee.clone(),
            route: Some(d.route.clone()),
            target: Some(d.target.clone()),
            start_at: d.start_ms,
            ringing_at: d.ringing_ms,
            answer_at: d.answer_ms,
            end_at: end,
            duration_ms: end - d.start_ms,
            billable_ms: d.answer_ms.map(|a| end - a).unwrap_or(0),
            final_status: d.final_status,
            hangup_by: d.hangup_by.unwrap_or(HangupBy::System),
            disconnect_reason: d.reason.clone(),
            queue: self
                .queue
                .as_ref()
                .map(|q| format!("{}/{}", q.tenant, q.queue)),
            agent: self
                .queue
                .as_ref()
                .and_then(|q| q.agent.as_ref().map(|a| a.to_string())),
            wait_ms: self.queue.as_ref().map(|q| {
                q.wait_ms
                    .map_or((end.max(0) as u64).saturating_sub(q.joined_ms), |w| w)
                    as i64
            }),
            abandoned: self.queue.as_ref().is_some_and(|q| q.abandoned),
            trunk: self.cdr.target.strip_prefix("trunk:").map(str::to_string),
            attempts: d.attempts.clone(),
            dtmf: (!d.dtmf.is_empty()).then(|| d.dtmf.clone()),
            recording: d.recording.clone(),
            transfers: (!d.transfers.is_empty()).then(|| d.transfers.join(",")),
            tenant: self.tenant.as_deref().map(str::to_string),
            legs: d
                .legs
                .iter()
                .map(|l| {
                    let mut l = l.clone();
                    if l.end_reason.is_empty() {
                        l.end_at = end;
                        l.end_reason = d.reason.clone();
                    }
                    l
                })
                .collect(),
            media: d.quality.as_deref().map(|&[a, b]| crate::store::CdrMedia {
                mos_a: a.mos,
                mos_b: b.mos,
                loss_a: a.loss,
                loss_b: b.loss,
                jitter_a_ms: a.jitter_ms,
                jitter_b_ms: b.jitter_ms,
                rtt_ms: a.rtt_ms.or(b.rtt_ms),
                packets_a: a.packets as i64,
                packets_b: b.packets as i64,
            }),
        }
    }
}
