//! Numbers the switch answers itself (a number's target `echo`, `music` or
//! `conference:<id>`): the caller is answered at once with the switch's SDP and either hears
//! itself (every RTP packet it sends goes back to it), music on hold, or the tenant's
//! conference, until it hangs up. No B leg is ever placed.
//! A conference's caller joins its room before it is answered (see `conference.rs`).

use super::*;
use crate::actors::router::Service;

/// Counter, label `service` (`echo`, `music`) and `result` (`answered`, `refused`): calls to
/// the switch's test numbers.
pub const SERVICE_CALLS: &str = "switchyard_service_calls_total";

/// The longest call to a test number (or `calls.max_duration_secs` when shorter).
pub const SERVICE_MAX_DURATION: Duration = Duration::from_secs(3600);

pub fn describe() {
    metrics::describe_counter!(
        SERVICE_CALLS,
        "Calls to the switch's test numbers (echo, music), by service and result"
    );
}

impl CallCore {
    /// The test number this call reached, if any.
    pub(super) fn service(&self) -> Option<Service> {
        self.core
            .as_ref()
            .and_then(|c| c.media.as_ref())
            .and_then(|m| m.service)
    }

    /// Answers a call to a test number. Without an anchored session (no media engine, a
    /// delayed offer, no G.711) there is nothing to answer with: 488.
    pub(super) fn start_service(&mut self, service: Service) {
        if service == Service::Conference {
            if let Err(r) = self.join_conference() {
                metrics::counter!(SERVICE_CALLS, "service" => service.label(), "result" => "refused")
                    .increment(1);
                let (status, reason) = match r {
                    Refusal::Full => (486, "Busy Here (Conference Full)"),
                    Refusal::NotFound => (404, "Not Found (No Such Conference)"),
                    _ => (503, "Service Unavailable (Conference)"),
                };
                return self.refuse(status, reason);
            }
        }
        let Some(ok) = self.answer_first() else {
            metrics::counter!(SERVICE_CALLS, "service" => service.label(), "result" => "refused")
                .increment(1);
            return self.refuse(488, "Not Acceptable Here (G.711 Offer Needed)");
        };
        metrics::counter!(SERVICE_CALLS, "service" => service.label(), "result" => "answered")
            .increment(1);
        if self.orig.is_some() {
            // A dial-out: the answer goes in the ACK, once.
            self.respond_a_invite(ok);
        } else {
            self.answer_a(ok);
        }
        // Music never times out for lack of RTP: a test call is bounded on its own.
        let limit = self.service_limit();
        self.max_duration = Some(self.schedule_call_timer(CallTimer::MaxDuration, limit));
        let now = self.wall_ms;
        let cdr = &mut self.core().cdr;
        cdr.answer_ms = Some(now);
        cdr.final_status = 200;
        metrics::counter!(CALLS_ANSWERED).increment(1);
        // A restarted actor finds the call answered (and keeps it).
        self.checkpoint();
    }

    /// The longest call to a number the switch answers.
    fn service_limit(&self) -> Duration {
        self.cfg
            .max_duration
            .map_or(SERVICE_MAX_DURATION, |m| m.min(SERVICE_MAX_DURATION))
    }

    /// A restarted actor of a call the switch answered itself: the caller stays (its echo,
    /// music or place in a conference's mix lives in the relay session, which outlived the
    /// actor); only the bound on its length is set again.
    pub(super) fn restore_service(&mut self) {
        let answered = self.core().cdr.answer_ms.unwrap_or(self.wall_ms);
        let elapsed = Duration::from_millis((self.wall_ms - answered).max(0) as u64);
        let left = self.service_limit().saturating_sub(elapsed);
        self.max_duration = Some(self.schedule_call_timer(CallTimer::MaxDuration, left));
        self.checkpoint();
    }

    /// What the caller of a test number hears once answered.
    pub(super) fn service_media(&mut self, service: Service) {
        let side = self.side_of(Leg::A);
        match service {
            Service::Echo => self.media_op(MediaOp::Echo(side)),
            Service::Music => self.play_music(None),
            // Joined before the answer ([`CallCore::join_conference`]).
            Service::Conference => {}
        }
    }
}
