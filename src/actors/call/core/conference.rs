//! A call's leg in a tenant's standalone conference (`crate::actors::conference`): the
//! room's mix, named by tenant and id, holds legs of many calls, one leg per call.
//!
//! - **Dial-in** (a number's `conference:<id>` target): the caller's leg joins the room
//!   (made by the first caller) before the switch answers it, like the other numbers the
//!   switch answers itself (`service.rs`). A full room answers 486.
//! - **Dial-out** (`POST /conferences/{tenant}/{id}/participants {"target"}`): the switch
//!   rings the user's phones with an INVITE without an offer (like click-to-call); the
//!   phone that answers is anchored, joins the room and is answered in the ACK.
//! - **Moved in** (`... {"call", "leg"}`): one leg of a connected, anchored call joins the
//!   room and the other leg is let go (BYE; a queue's agent goes to wrap-up). The call is
//!   then that leg alone ([`Checkpoint::seated`]): its BYE ends the call, a re-INVITE gets
//!   488 (the session stays as it is: its media is the room's), other requests 200.
//!
//! Whichever way it came, the call leaves the room when it ends (a hangup, a kick through
//! the API, a timeout), and the room ends with its last participant. A restarted actor
//! keeps its place: the mix lives in the relay session, which outlives the actor.

use super::*;
use crate::actors::router::Service;

impl CallCore {
    /// The tenant and id of the conference this call's leg is in (or rings for).
    pub(super) fn conference(&self) -> Option<(Arc<str>, Arc<str>)> {
        let m = self.core.as_ref()?.media.as_ref()?;
        Some((m.tenant.clone()?, m.conference.clone()?))
    }

    /// The caller's (or the dialled phone's) leg takes its place in the conference. A
    /// dial-in makes the room if there is none; a dial-out finds it gone if it ended while
    /// the phone rang.
    pub(super) fn join_conference(&mut self) -> Result<(), Refusal> {
        let Some((tenant, id)) = self.conference() else {
            return Err(Refusal::NotFound);
        };
        let dial_out = self.orig.is_some();
        let core = self.core.as_ref().expect("a call");
        let seat = Seat {
            tenant,
            id,
            call: String::from_utf8_lossy(&core.a_call_id).into_owned(),
            session: core.a_call_id.clone(),
            side: self.side_of(Leg::A),
            label: if dial_out {
                core.cdr.callee.clone()
            } else {
                core.cdr.caller.clone()
            },
            via: if dial_out { "dial-out" } else { "dial-in" },
            create: !dial_out,
            now_ms: self.wall_ms as u64,
        };
        self.env.conference_join(seat)
    }

    /// The call is over: its leg leaves its conference (the room ends with its last).
    pub(super) fn leave_conference(&mut self) {
        if let Some((tenant, id)) = self.conference() {
            let call = self.a_call_id_str();
            self.env.conference_leave(&tenant, &id, &call);
        }
    }

    /// A conference's dial-out: the phone answered with its offer (now the A leg's
    /// INVITE body). The leg is anchored, joins the room and is answered in the ACK.
    pub(super) fn conference_answered(&mut self, route: &crate::actors::router::Route) {
        let (a_invite, a_call_id) = {
            let c = self.core();
            (c.a_invite.clone(), c.a_call_id.clone())
        };
        let anchored = self.anchor_media(&a_invite, &a_call_id, &route.media);
        if !self.media_settled(anchored) {
            return;
        }
        self.core().a_up = true;
        self.start_service(Service::Conference);
    }

    /// `POST /conferences/{tenant}/{id}/participants {"call", "leg"}`: `leg` of this
    /// connected call joins the room; the other leg is let go.
    pub(super) fn api_join_conference(
        &mut self,
        tenant: Arc<str>,
        id: Arc<str>,
        leg: Leg,
    ) -> Result<String, Refused> {
        self.controllable()?;
        if self.core().tenant.as_deref() != Some(&*tenant) {
            return Err(Refused::new(404, "no such call in this tenant"));
        }
        let other = if leg == Leg::A { Leg::B } else { Leg::A };
        let (call, party) = {
            let c = self.core();
            let party = if leg == Leg::A {
                c.cdr.caller.clone()
            } else {
                c.cdr.callee.clone()
            };
            (c.a_call_id.clone(), party)
        };
        let seat = Seat {
            tenant: tenant.clone(),
            id: id.clone(),
            call: String::from_utf8_lossy(&call).into_owned(),
            session: call.clone(),
            side: self.side_of(leg),
            label: party,
            via: "moved",
            create: false,
            now_ms: self.wall_ms as u64,
        };
        self.env.conference_join(seat).map_err(|r| match r {
            Refusal::NotFound => Refused::new(404, "no such conference"),
            Refusal::Full => Refused::new(409, "the conference is full"),
            r => Refused::new(503, r.to_string()),
        })?;
        // The two legs no longer talk to each other: one is in the room, the other goes.
        self.media_op(MediaOp::Bridge(false));
        if let Some(m) = self.core().media.as_mut() {
            m.conference = Some(id.clone());
            m.tenant = Some(tenant.clone());
        }
        self.core().seated = Some(leg);
        let gone_id = match other {
            Leg::A => self.core().a.call_id.clone(),
            _ => self.core().b.call_id.clone(),
        };
        self.leg_left(&String::from_utf8_lossy(&gone_id), "conference");
        if other == Leg::B {
            // A queue's agent who hands its caller to a room is free (wrap-up).
            let now = self.wall_ms;
            self.release_agent(Some(now));
        }
        self.send_bye(other);
        self.core()
            .cdr
            .transfers
            .push(format!("conference:api>room:{id}"));
        self.checkpoint();
        Ok(format!("conference:{id}"))
    }

    /// The leg of a moved call that is not in the room (its dialog is over).
    pub(super) fn unseated(&self) -> Option<Leg> {
        match self.core.as_ref()?.seated? {
            Leg::A => Some(Leg::B),
            _ => Some(Leg::A),
        }
    }

    /// A BYE (transaction `server`) on a moved call: from the leg in the room it ends the
    /// call; from the other (its dialog is over) 481. True when it was dealt with here.
    pub(super) fn seated_bye(&mut self, leg: Leg, server: u32) -> bool {
        let Some(seated) = self.core.as_ref().and_then(|c| c.seated) else {
            return false;
        };
        if leg != seated {
            self.respond(server, 481, "Call/Transaction Does Not Exist", None);
            return true;
        }
        self.end_on_bye(leg);
        self.after_cdr(AfterCdr::Respond(server, 200, "OK"));
        true
    }
}
