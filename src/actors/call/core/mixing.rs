//! Three-way calls (`POST /calls/{id}/conference`) and supervision (`POST /calls/{id}/monitor`)
//! as topology: a third party rings like a consultation's target (`Leg::X`, on the call's
//! second relay session), and once it answers the caller's, the agent's and its leg meet
//! in the call's mix (named by the call's A-leg Call-ID). What differs between a
//! three-way and the monitor modes is only who hears whom ([`MixOp::Set`]):
//!
//! | | caller hears | agent hears | third party hears |
//! |---|---|---|---|
//! | three-way, barge | agent, third | caller, third | caller, agent |
//! | whisper | agent | caller, supervisor | caller, agent |
//! | listen | agent | caller | caller, agent |
//!
//! In a three-way, when one of the three leaves the other two stay connected: the third
//! party's BYE takes it out of the mix (caller and agent are bridged again); the caller's
//! or agent's BYE is answered here and the other two go on in the mix until one of them
//! hangs up. A monitored call ends as it would (the supervisor is sent BYE with it); the
//! supervisor leaving, or `DELETE /calls/{id}/monitor`, ends only the monitor.
//!
//! The CDR records each party as a leg (role `conference` or `monitor`) and each start and
//! change of mode in the transfer chain (`conference:api>user:1003`,
//! `monitor:whisper>user:1009`).

use super::consult::consult_key;
use super::*;
use crate::actors::call::core::effects::{MixLeg, MixOp};

/// Counter, labels `kind` (`conference`, `monitor`) and `outcome` (`started`, `joined`,
/// `failed`, `left`, `ended`, `refused`): three-way calls and monitors.
pub const MIXES: &str = "switchyard_call_mixes_total";
/// Counter, label `mode` (`listen`, `whisper`, `barge`): monitors joined or switched to a
/// mode.
pub const MONITOR_MODES: &str = "switchyard_monitor_modes_total";

pub fn describe() {
    metrics::describe_counter!(
        MIXES,
        "Three-way calls and supervisor monitors on calls, by kind and outcome"
    );
    metrics::describe_counter!(
        MONITOR_MODES,
        "Supervisor monitors that started in or switched to a mode, by mode"
    );
}

/// How a supervisor takes part in a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MonitorMode {
    /// The supervisor hears both sides; nobody hears the supervisor.
    Listen,
    /// The agent hears the supervisor; the caller does not.
    Whisper,
    /// Everyone hears everyone.
    Barge,
}

impl MonitorMode {
    pub fn label(self) -> &'static str {
        match self {
            MonitorMode::Listen => "listen",
            MonitorMode::Whisper => "whisper",
            MonitorMode::Barge => "barge",
        }
    }

    pub fn parse(s: &str) -> Option<MonitorMode> {
        match s {
            "listen" => Some(MonitorMode::Listen),
            "whisper" => Some(MonitorMode::Whisper),
            "barge" => Some(MonitorMode::Barge),
            _ => None,
        }
    }
}

/// A party of a three-way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Party {
    Caller,
    Agent,
    Third,
}

impl Party {
    pub fn parse(s: &str) -> Option<Party> {
        match s {
            "caller" => Some(Party::Caller),
            "agent" => Some(Party::Agent),
            "third" => Some(Party::Third),
            _ => None,
        }
    }

    fn idx(self) -> usize {
        match self {
            Party::Caller => 0,
            Party::Agent => 1,
            Party::Third => 2,
        }
    }
}

/// What a call's mix is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MixKind {
    /// A three-way call: everyone hears everyone.
    Conference,
    /// A supervisor on the call.
    Monitor(MonitorMode),
}

impl MixKind {
    pub fn label(self) -> &'static str {
        match self {
            MixKind::Conference => "conference",
            MixKind::Monitor(_) => "monitor",
        }
    }
}

impl CallCore {
    /// `POST /calls/{id}/conference {target}`: `target` rings and joins the caller and the
    /// agent.
    pub(super) fn api_conference(&mut self, target: &str) -> Result<String, Refused> {
        self.start_mix(target, MixKind::Conference)
    }

    /// `POST /calls/{id}/monitor {supervisor, mode}`: the supervisor's phone rings and
    /// joins in `mode`. Only a supervisor of the call's queue may (403 otherwise).
    pub(super) fn api_monitor(
        &mut self,
        supervisor: &str,
        mode: MonitorMode,
    ) -> Result<String, Refused> {
        self.start_mix(supervisor, MixKind::Monitor(mode))
    }

    fn start_mix(&mut self, target: &str, kind: MixKind) -> Result<String, Refused> {
        let refused = |r: Refused| {
            metrics::counter!(MIXES, "kind" => kind.label(), "outcome" => "refused").increment(1);
            r
        };
        self.controllable().map_err(refused)?;
        let resolved = self.phones_of(target);
        if let MixKind::Monitor(_) = kind {
            // Checked before anything about the target is told: someone who is not a
            // supervisor learns nothing of who is registered.
            let core = self.core();
            let tenant = core.tenant.clone().unwrap_or_else(|| Arc::from(""));
            let queue = core.queue.as_ref().map(|q| q.queue.clone());
            let allowed = queue.as_deref().is_some_and(|q| {
                self.env.supervises(&tenant, q, target)
                    || resolved
                        .as_ref()
                        .is_ok_and(|(user, _)| self.env.supervises(&tenant, q, user))
            });
            if !allowed {
                return Err(refused(Refused::new(
                    403,
                    format!("{target} is not a supervisor of this call's queue"),
                )));
            }
        }
        let (user, forks) = resolved.map_err(refused)?;
        self.agent_in_b().map_err(refused)?;
        let key = consult_key(&self.core().a_call_id);
        let ports = self.env.allocate_media(&key).map_err(|e| {
            refused(Refused::new(
                503,
                format!("no media ports for the third party: {e}"),
            ))
        })?;
        let label = self.dial_x(user, forks, ports, Some(kind));
        metrics::counter!(MIXES, "kind" => kind.label(), "outcome" => "started").increment(1);
        self.checkpoint();
        Ok(label)
    }

    /// `POST /calls/{id}/consult/conference`: the consultation becomes a three-way; the
    /// customer stops holding and joins the agent and the target in the mix (the agent
    /// stays on the consultation's session).
    pub(super) fn api_consult_conference(&mut self) -> Result<String, Refused> {
        let up = self
            .core
            .as_ref()
            .and_then(|c| c.consult.as_ref())
            .map(|c| (c.up, c.mix.is_some()));
        match up {
            Some((true, false)) => {}
            Some((_, true)) => return Err(Refused::new(409, "a three-way or monitor is on")),
            Some((false, _)) => {
                return Err(Refused::new(
                    409,
                    "the consultation target has not answered",
                ))
            }
            None => return Err(Refused::new(409, "no consultation in progress")),
        }
        if let Some(c) = self.core().consult.as_mut() {
            c.mix = Some(MixKind::Conference);
            c.agent_on_consult = true;
        }
        if self.core().held.take().is_some() {
            let a = self.side_of(Leg::A);
            self.media_op(MediaOp::StopPlay(a));
        }
        metrics::counter!(MIXES, "kind" => "conference", "outcome" => "started").increment(1);
        let target = self.mix_up_joined();
        Ok(target)
    }

    /// `PUT /calls/{id}/monitor {mode}`: the monitor goes on in another mode.
    pub(super) fn api_monitor_mode(&mut self, mode: MonitorMode) -> Result<String, Refused> {
        let Some(c) = self.core().consult.as_mut() else {
            return Err(Refused::new(409, "the call is not monitored"));
        };
        if !matches!(c.mix, Some(MixKind::Monitor(_))) {
            return Err(Refused::new(409, "the call is not monitored"));
        }
        c.mix = Some(MixKind::Monitor(mode));
        let (up, target) = (c.up, c.target.clone());
        if up {
            self.mix_topology();
            self.core()
                .cdr
                .transfers
                .push(format!("monitor:{}>{target}", mode.label()));
            metrics::counter!(MONITOR_MODES, "mode" => mode.label()).increment(1);
        }
        self.checkpoint();
        Ok(mode.label().to_string())
    }

    /// `PUT /calls/{id}/conference {party, mute, deaf}`: a party of the three-way is muted
    /// (nobody hears it) or made deaf (it hears nobody), or back.
    pub(super) fn api_conference_party(
        &mut self,
        party: Party,
        mute: Option<bool>,
        deaf: Option<bool>,
    ) -> Result<String, Refused> {
        let Some(c) = self.core().consult.as_mut() else {
            return Err(Refused::new(409, "the call has no third party"));
        };
        if c.mix != Some(MixKind::Conference) || !c.up {
            return Err(Refused::new(409, "the call has no third party in it"));
        }
        let i = party.idx();
        let gone = match c.gone {
            Some(Leg::A) => Some(0),
            Some(Leg::B) => Some(1),
            _ => None,
        };
        if gone == Some(i) {
            return Err(Refused::new(409, "that party has left"));
        }
        if let Some(m) = mute {
            c.muted[i] = m;
        }
        if let Some(d) = deaf {
            c.deaf[i] = d;
        }
        let state = format!(
            "{}{}",
            if c.muted[i] { "muted" } else { "unmuted" },
            if c.deaf[i] { ",deaf" } else { "" }
        );
        self.mix_topology();
        self.checkpoint();
        Ok(state)
    }

    /// `DELETE /calls/{id}/monitor` or `/conference`: the supervisor or third party is let
    /// go; the caller and agent are bridged again.
    pub(super) fn api_mix_end(&mut self, monitor: bool) -> Result<String, Refused> {
        let kind = self.core().consult.as_ref().and_then(|c| c.mix);
        match kind {
            Some(MixKind::Monitor(_)) if monitor => {}
            Some(MixKind::Conference) if !monitor => {}
            _ if monitor => return Err(Refused::new(409, "the call is not monitored")),
            _ => return Err(Refused::new(409, "the call has no third party")),
        }
        if self
            .core()
            .consult
            .as_ref()
            .is_some_and(|c| c.gone.is_some())
        {
            return Err(Refused::new(
                409,
                "the caller or agent left: the third party is the call now",
            ));
        }
        self.consult_over("ended", 0);
        Ok("ended".into())
    }

    /// A three-way's caller or agent that left, or the leg of a call moved into a
    /// conference that was let go (its dialog is over).
    pub(super) fn mix_gone(&self) -> Option<Leg> {
        let c = self.core.as_ref()?;
        c.consult
            .as_ref()
            .and_then(|k| k.gone)
            .or_else(|| self.unseated())
    }

    /// The third party answered: the three legs meet in the mix.
    pub(super) fn mix_up(&mut self) {
        let Some(c) = self.core().consult.as_mut() else {
            return;
        };
        c.up = true;
        self.mix_up_joined();
    }

    /// The three legs meet in the mix; the CDR and the counters say so. The target.
    fn mix_up_joined(&mut self) -> String {
        let Some(c) = self.core().consult.as_mut() else {
            return String::new();
        };
        let (kind, target, id) = (
            c.mix.unwrap_or(MixKind::Conference),
            c.target.clone(),
            c.leg.dialog.call_id.clone(),
        );
        self.mix_topology();
        self.leg_joined(&id, kind.label(), target.clone(), true);
        let entry = match kind {
            MixKind::Conference => format!("conference:api>{target}"),
            MixKind::Monitor(mode) => {
                metrics::counter!(MONITOR_MODES, "mode" => mode.label()).increment(1);
                format!("monitor:{}>{target}", mode.label())
            }
        };
        self.core().cdr.transfers.push(entry);
        metrics::counter!(MIXES, "kind" => kind.label(), "outcome" => "joined").increment(1);
        self.checkpoint();
        target
    }

    /// After a consultation completed as a conference, the mix ended with the agent still
    /// on the consultation's session: it comes back to the call's, bridged with the customer.
    fn agent_back_from_consult(&mut self, c: &Consult) {
        if !c.agent_on_consult || c.gone == Some(Leg::B) {
            return;
        }
        self.media_op(MediaOp::Bridge(true));
        if let Some(ports) = self.session {
            let side = self.side_of(Leg::B);
            self.reoffer_on(Leg::B, ports, side, Reoffer::Refresh);
        }
    }

    /// The mix as it should be now: who is in it and who does not hear whom.
    pub(super) fn mix_topology(&mut self) {
        let Some(c) = self.core.as_ref().and_then(|c| c.consult.clone()) else {
            return;
        };
        let (Some(kind), true) = (c.mix, c.up) else {
            return;
        };
        let call = self.core().a_call_id.clone();
        let mut legs = Vec::with_capacity(3);
        for leg in [Leg::A, Leg::B] {
            if c.gone == Some(leg) {
                continue;
            }
            legs.push(if leg == Leg::B && c.agent_on_consult {
                MixLeg {
                    session: consult_key(&call),
                    side: Side::A,
                }
            } else {
                MixLeg {
                    session: call.clone(),
                    side: self.side_of(leg),
                }
            });
        }
        legs.push(MixLeg {
            session: consult_key(&call),
            side: Side::B,
        });
        // The caller is 0, the agent 1 (agent_in_b put it there), the supervisor 2.
        let mut apart = match kind {
            MixKind::Conference | MixKind::Monitor(MonitorMode::Barge) => vec![],
            MixKind::Monitor(MonitorMode::Whisper) => vec![(0, 2)],
            MixKind::Monitor(MonitorMode::Listen) => vec![(0, 2), (1, 2)],
        };
        // A three-way's muted and deaf parties (by party; the legs of those still in it).
        let parties: Vec<usize> = [(0, Leg::A), (1, Leg::B)]
            .into_iter()
            .filter(|(_, leg)| c.gone != Some(*leg))
            .map(|(p, _)| p)
            .chain([2])
            .collect();
        for (i, &p) in parties.iter().enumerate() {
            for j in 0..parties.len() {
                if i == j {
                    continue;
                }
                if c.muted[p] && !apart.contains(&(j, i)) {
                    apart.push((j, i));
                }
                if c.deaf[p] && !apart.contains(&(i, j)) {
                    apart.push((i, j));
                }
            }
        }
        self.out.push(Effect::Mix(MixOp::Set { legs, apart }));
    }

    /// The third party's part ends (it hung up, failed, or was let go): the mix ends and
    /// the caller and agent are bridged again. `c` has been taken out of the state.
    pub(super) fn mix_over(&mut self, c: &Consult, kind: MixKind, outcome: &'static str) {
        if c.up {
            self.out.push(Effect::Mix(MixOp::End));
            let id = String::from_utf8_lossy(&c.leg.dialog.call_id).into_owned();
            self.leg_left(&id, outcome);
            self.agent_back_from_consult(c);
        }
        let outcome = if c.up { outcome } else { "failed" };
        metrics::counter!(MIXES, "kind" => kind.label(), "outcome" => outcome).increment(1);
    }

    /// A BYE from the caller or agent while a three-way is up (`server` is its
    /// transaction): the other two stay connected. True when it was dealt with here.
    pub(super) fn mixed_leg_bye(&mut self, leg: Leg, server: u32) -> bool {
        let Some(c) = self.core.as_ref().and_then(|c| c.consult.clone()) else {
            return false;
        };
        if c.mix != Some(MixKind::Conference) || !c.up || leg == Leg::X {
            return false;
        }
        match c.gone {
            None => {
                if let Some(k) = self.core().consult.as_mut() {
                    k.gone = Some(leg);
                }
                let id = match leg {
                    Leg::A => self.core().a.call_id.clone(),
                    _ => self.core().b.call_id.clone(),
                };
                self.leg_left(&String::from_utf8_lossy(&id), "bye");
                if leg == Leg::B {
                    // A queue's agent who leaves is free (wrap-up) while the others talk on.
                    let now = self.wall_ms;
                    self.release_agent(Some(now));
                }
                self.mix_topology();
                self.respond(server, 200, "OK", None);
                self.checkpoint();
            }
            Some(g) if g == leg => {
                self.respond(server, 481, "Call/Transaction Does Not Exist", None)
            }
            Some(_) => {
                // The last of caller and agent leaves: the call ends (the third party is
                // sent BYE with it).
                self.end_on_bye(leg);
                self.after_cdr(AfterCdr::Respond(server, 200, "OK"));
            }
        }
        true
    }

    /// An in-dialog request other than BYE from the caller or agent of a three-way whose
    /// other main leg left: nothing to relay it to, so it is answered here. A re-INVITE or
    /// UPDATE gets 488, which leaves the session as it was (RFC 3261 §14.2; its media is
    /// the mix's), anything else 200. True when it was dealt with here.
    pub(super) fn mixed_leg_alone(&mut self, leg: Leg, method: &Method, server: u32) -> bool {
        let Some(gone) = self.mix_gone() else {
            return false;
        };
        if leg == Leg::X {
            return false;
        }
        if leg == gone {
            self.respond(server, 481, "Call/Transaction Does Not Exist", None);
        } else if matches!(method, Method::Invite | Method::Update) {
            self.respond(server, 488, "Not Acceptable Here", None);
        } else {
            self.respond(server, 200, "OK", None);
        }
        true
    }

    /// A BYE from the third party (`Leg::X`, transaction `id`) of a three-way or monitor.
    /// True when it was dealt with here.
    pub(super) fn mixed_x_bye(&mut self, id: u32) -> bool {
        let Some(c) = self.core.as_ref().and_then(|c| c.consult.clone()) else {
            return false;
        };
        if c.mix.is_none() {
            return false;
        }
        if let Some(gone) = c.gone {
            // Caller or agent left before: the call ends with the third party.
            let left = String::from_utf8_lossy(&c.leg.dialog.call_id).into_owned();
            self.leg_left(&left, "bye");
            self.core().consult = None;
            self.stale_consults.push(c.leg.dialog.call_id.clone());
            let key = consult_key(&self.core().a_call_id);
            self.env.release_media(&key);
            let remaining = if gone == Leg::A { Leg::B } else { Leg::A };
            self.cancel_call_timers();
            let status = self.core().cdr.final_status.max(200);
            self.end(status, HangupBy::Callee, "bye");
            self.after_cdr(AfterCdr::Bye(remaining));
            self.after_cdr(AfterCdr::Respond(id, 200, "OK"));
            return true;
        }
        // Its dialog is over: no BYE goes back to it.
        if let Some(k) = self.core().consult.as_mut() {
            k.leg.ack = None;
        }
        let was_up = c.up;
        if let Some(k) = self.core().consult.as_mut() {
            k.up = false;
        }
        if was_up {
            self.out.push(Effect::Mix(MixOp::End));
            let left = String::from_utf8_lossy(&c.leg.dialog.call_id).into_owned();
            self.leg_left(&left, "bye");
            metrics::counter!(MIXES, "kind" => c.mix.map_or("conference", |k| k.label()), "outcome" => "left")
                .increment(1);
            self.agent_back_from_consult(&c);
            // `consult_over` must not count it again as failed.
            if let Some(k) = self.core().consult.take() {
                self.stale_consults.push(k.leg.dialog.call_id.clone());
                if let Some(t) = self.consult_timer.take() {
                    self.cancel_timer(t);
                }
                let key = consult_key(&self.core().a_call_id);
                self.env.release_media(&key);
            }
        } else {
            self.consult_over("failed", 0);
        }
        self.respond(id, 200, "OK", None);
        self.checkpoint();
        true
    }
}
