//! Standalone conferences (`POST /conferences`, a number's `conference:<id>` target): a
//! tenant's named room whose participants are call legs meeting in one mix of the media
//! engine (named `conf/<tenant>/<id>`).
//!
//! A conference has no actor of its own: each participant is one leg of a call, and that
//! call's supervised actor owns it (answers it, hangs it up, survives a restart from its
//! checkpoint and stays in the mix meanwhile, since the relay session outlives the actor).
//! What is left is bookkeeping shared by the calls and the API: who is in which room, muted
//! or deaf, since when. It lives here, a table behind one lock, touched a few times per
//! participant (join, leave, mute, list), never per packet.
//!
//! A room is made by `POST /conferences` or by the first caller of its dial-in number, and
//! ends when its last participant leaves. One that nobody has joined ends after
//! [`EMPTY_TTL`]. A tenant holds at most `max_per_tenant` rooms and a room
//! [`crate::media::mix::MIX_CAPACITY`] participants: a flood of `POST /conferences` costs a
//! bounded table, and the joiner of a full room gets 486.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde::Serialize;

use crate::media::mix::MIX_CAPACITY;
use crate::media::relay::{MediaEngine, Side};

/// Gauge: conferences in progress (made and not ended).
pub const CONFERENCES_ACTIVE: &str = "switchyard_conferences_active";
/// Gauge: participants in conferences.
pub const CONFERENCE_PARTICIPANTS: &str = "switchyard_conference_participants";
/// Counter, label `event` (`created`, `joined`, `left`, `kicked`, `muted`, `unmuted`,
/// `ended`, `expired`, `refused`): what happened to conferences and their participants.
pub const CONFERENCE_EVENTS: &str = "switchyard_conference_events_total";

/// How long a room nobody has joined is kept (it was made by the API and never used).
pub const EMPTY_TTL_MS: u64 = 300_000;
/// Rooms a tenant may hold at once, by default.
pub const DEFAULT_MAX_PER_TENANT: usize = 100;

pub fn describe() {
    metrics::describe_gauge!(CONFERENCES_ACTIVE, "Conferences in progress");
    metrics::describe_gauge!(CONFERENCE_PARTICIPANTS, "Participants in conferences");
    metrics::describe_counter!(
        CONFERENCE_EVENTS,
        "Conference events: created, joined, left, kicked, muted, unmuted, ended, expired, refused"
    );
}

pub use crate::config::valid_conference_id as valid_id;

/// The media engine's mix of a tenant's conference.
pub fn mix_name(tenant: &str, id: &str) -> String {
    format!("conf/{tenant}/{id}")
}

/// One leg in a conference.
#[derive(Clone, Debug, Serialize)]
pub struct Participant {
    /// The participant's id in the API: the call's id (a participant is one call's leg).
    pub id: String,
    /// Who it is: the caller's number, the user dialled.
    pub label: String,
    /// How it came: `dial-in`, `dial-out`, `moved`.
    pub via: &'static str,
    pub joined_ms: u64,
    pub muted: bool,
    pub deaf: bool,
    /// The relay session and side the leg is.
    #[serde(skip)]
    pub session: Bytes,
    #[serde(skip)]
    pub side: Side,
}

/// A conference as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Conference {
    pub id: String,
    pub tenant: String,
    pub created_ms: u64,
    /// How it was made: `api` or `dial-in`.
    pub created_by: &'static str,
    pub participants: Vec<Participant>,
    /// Someone has joined (an empty room that had participants has ended).
    #[serde(skip)]
    joined: bool,
}

/// Why a join or a room was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The room holds [`MIX_CAPACITY`] participants (486).
    Full,
    /// The tenant holds its most rooms (503 for a dial-in, 409 for the API).
    TooMany,
    /// No such room (404).
    NotFound,
    /// A room of that id exists (409).
    Exists,
    /// The media engine refused the leg (no session, a closed mix): 503.
    Media(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Full => write!(f, "the conference is full ({MIX_CAPACITY} participants)"),
            Refusal::TooMany => write!(f, "the tenant holds its most conferences"),
            Refusal::NotFound => write!(f, "no such conference"),
            Refusal::Exists => write!(f, "a conference of that id exists"),
            Refusal::Media(e) => write!(f, "media: {e}"),
        }
    }
}

type Key = (Arc<str>, Arc<str>);

/// The node's conferences.
pub struct Conferences {
    rooms: Mutex<HashMap<Key, Conference>>,
    max_per_tenant: usize,
}

impl Default for Conferences {
    fn default() -> Conferences {
        Conferences::new(DEFAULT_MAX_PER_TENANT)
    }
}

fn event(e: &'static str) {
    metrics::counter!(CONFERENCE_EVENTS, "event" => e).increment(1);
}

impl Conferences {
    pub fn new(max_per_tenant: usize) -> Conferences {
        Conferences {
            rooms: Mutex::new(HashMap::new()),
            max_per_tenant,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Conference>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gauges(rooms: &HashMap<Key, Conference>) {
        metrics::gauge!(CONFERENCES_ACTIVE).set(rooms.len() as f64);
        let n: usize = rooms.values().map(|c| c.participants.len()).sum();
        metrics::gauge!(CONFERENCE_PARTICIPANTS).set(n as f64);
    }

    /// Rooms nobody joined within [`EMPTY_TTL_MS`] go.
    fn expire(rooms: &mut HashMap<Key, Conference>, now_ms: u64) {
        let before = rooms.len();
        rooms.retain(|_, c| {
            c.joined || !c.participants.is_empty() || now_ms < c.created_ms + EMPTY_TTL_MS
        });
        for _ in rooms.len()..before {
            event("expired");
        }
    }

    fn make(
        rooms: &mut HashMap<Key, Conference>,
        tenant: &str,
        id: &str,
        now_ms: u64,
        by: &'static str,
        max: usize,
    ) -> Result<(), Refusal> {
        let held = rooms.keys().filter(|(t, _)| &**t == tenant).count();
        if held >= max {
            event("refused");
            return Err(Refusal::TooMany);
        }
        rooms.insert(
            (Arc::from(tenant), Arc::from(id)),
            Conference {
                id: id.to_string(),
                tenant: tenant.to_string(),
                created_ms: now_ms,
                created_by: by,
                participants: Vec::new(),
                joined: false,
            },
        );
        event("created");
        Ok(())
    }

    /// `POST /conferences`: a new empty room.
    pub fn create(&self, tenant: &str, id: &str, now_ms: u64) -> Result<Conference, Refusal> {
        let mut rooms = self.lock();
        Self::expire(&mut rooms, now_ms);
        if rooms.contains_key(&(Arc::from(tenant), Arc::from(id))) {
            return Err(Refusal::Exists);
        }
        Self::make(&mut rooms, tenant, id, now_ms, "api", self.max_per_tenant)?;
        Self::gauges(&rooms);
        Ok(rooms[&(Arc::from(tenant), Arc::from(id))].clone())
    }

    /// The tenant's rooms.
    pub fn list(&self, tenant: &str, now_ms: u64) -> Vec<Conference> {
        let mut rooms = self.lock();
        Self::expire(&mut rooms, now_ms);
        Self::gauges(&rooms);
        let mut out: Vec<Conference> = rooms
            .values()
            .filter(|c| c.tenant == tenant)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Every tenant's rooms (the node's token).
    pub fn list_all(&self, now_ms: u64) -> Vec<Conference> {
        let mut rooms = self.lock();
        Self::expire(&mut rooms, now_ms);
        Self::gauges(&rooms);
        let mut out: Vec<Conference> = rooms.values().cloned().collect();
        out.sort_by(|a, b| (&a.tenant, &a.id).cmp(&(&b.tenant, &b.id)));
        out
    }

    pub fn get(&self, tenant: &str, id: &str) -> Option<Conference> {
        self.lock()
            .get(&(Arc::from(tenant), Arc::from(id)))
            .cloned()
    }

    /// Whether a leg could join `id` now (a dial-in asks before it answers): the room
    /// exists or may be made (`create`), and has room.
    pub fn admits(&self, tenant: &str, id: &str, create: bool, now_ms: u64) -> Result<(), Refusal> {
        let mut rooms = self.lock();
        Self::expire(&mut rooms, now_ms);
        match rooms.get(&(Arc::from(tenant), Arc::from(id))) {
            Some(c) if c.participants.len() >= MIX_CAPACITY => Err(Refusal::Full),
            Some(_) => Ok(()),
            None if !create => Err(Refusal::NotFound),
            None => {
                let held = rooms.keys().filter(|(t, _)| &**t == tenant).count();
                if held >= self.max_per_tenant {
                    Err(Refusal::TooMany)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// `side` of the relay session `session` (the call `call`) joins the room (made now
    /// if `create` and there is none) and its mix. Joining again (a restarted call actor)
    /// changes nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &self,
        engine: &MediaEngine,
        tenant: &str,
        id: &str,
        call: &str,
        session: &Bytes,
        side: Side,
        label: &str,
        via: &'static str,
        create: bool,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        let mut rooms = self.lock();
        Self::expire(&mut rooms, now_ms);
        let key: Key = (Arc::from(tenant), Arc::from(id));
        if !rooms.contains_key(&key) {
            if !create {
                event("refused");
                return Err(Refusal::NotFound);
            }
            Self::make(
                &mut rooms,
                tenant,
                id,
                now_ms,
                "dial-in",
                self.max_per_tenant,
            )?;
        }
        let room = rooms.get_mut(&key).expect("made above");
        if room.participants.iter().any(|p| p.id == call) {
            return Ok(());
        }
        if room.participants.len() >= MIX_CAPACITY {
            event("refused");
            return Err(Refusal::Full);
        }
        let Some(s) = engine.get(session) else {
            event("refused");
            return Err(Refusal::Media("the call has no relay session".into()));
        };
        let mix = engine.mix(&mix_name(tenant, id));
        if engine.join_mix(&mix, &s, side).is_err() {
            event("refused");
            return Err(Refusal::Media("the mix is full or closed".into()));
        }
        room.joined = true;
        room.participants.push(Participant {
            id: call.to_string(),
            label: label.to_string(),
            via,
            joined_ms: now_ms,
            muted: false,
            deaf: false,
            session: session.clone(),
            side,
        });
        event("joined");
        Self::gauges(&rooms);
        Ok(())
    }

    /// The call `call` has left the room (hung up, kicked, moved on); the room ends with
    /// its last participant. Its leg leaves the mix with its relay session, or here.
    pub fn leave(&self, engine: Option<&MediaEngine>, tenant: &str, id: &str, call: &str) {
        let mut rooms = self.lock();
        let key: Key = (Arc::from(tenant), Arc::from(id));
        let Some(room) = rooms.get_mut(&key) else {
            return;
        };
        let Some(i) = room.participants.iter().position(|p| p.id == call) else {
            return;
        };
        let p = room.participants.remove(i);
        if let Some(s) = engine.and_then(|e| e.get(&p.session).map(|s| (e, s))) {
            s.0.leave_mix(&s.1, p.side);
        }
        event("left");
        if room.participants.is_empty() {
            rooms.remove(&key);
            event("ended");
        }
        Self::gauges(&rooms);
    }

    /// Mutes (nobody hears it) or deafens (it hears nobody) a participant, or undoes it.
    /// The participant as it is now.
    pub fn set(
        &self,
        engine: &MediaEngine,
        tenant: &str,
        id: &str,
        participant: &str,
        mute: Option<bool>,
        deaf: Option<bool>,
    ) -> Result<Participant, Refusal> {
        let mut rooms = self.lock();
        let room = rooms
            .get_mut(&(Arc::from(tenant), Arc::from(id)))
            .ok_or(Refusal::NotFound)?;
        let p = room
            .participants
            .iter_mut()
            .find(|p| p.id == participant)
            .ok_or(Refusal::NotFound)?;
        let mix = engine.find_mix(&mix_name(tenant, id));
        if let Some(m) = mute {
            p.muted = m;
            if let Some(mix) = &mix {
                mix.set_muted(&p.session, p.side, m);
            }
            event(if m { "muted" } else { "unmuted" });
        }
        if let Some(d) = deaf {
            p.deaf = d;
            if let Some(mix) = &mix {
                mix.set_deaf(&p.session, p.side, d);
            }
        }
        Ok(p.clone())
    }

    /// The participants' call ids (to hang them up: `DELETE /conferences/{id}`).
    pub fn calls(&self, tenant: &str, id: &str) -> Option<Vec<String>> {
        self.lock()
            .get(&(Arc::from(tenant), Arc::from(id)))
            .map(|c| c.participants.iter().map(|p| p.id.clone()).collect())
    }

    /// Ends a room nobody is in (`DELETE` of an empty room). True when it was there.
    pub fn remove_empty(&self, tenant: &str, id: &str) -> bool {
        let mut rooms = self.lock();
        let key: Key = (Arc::from(tenant), Arc::from(id));
        let gone = rooms.get(&key).is_some_and(|c| c.participants.is_empty())
            && rooms.remove(&key).is_some();
        if gone {
            event("ended");
            Self::gauges(&rooms);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_and_plain() {
        assert!(valid_id("sales-daily_1.a"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"x".repeat(65)));
    }

    #[test]
    fn rooms_are_bounded_per_tenant_and_expire_unused() {
        let c = Conferences::new(2);
        c.create("t", "a", 0).unwrap();
        assert_eq!(c.create("t", "a", 0).unwrap_err(), Refusal::Exists);
        c.create("t", "b", 0).unwrap();
        assert_eq!(c.create("t", "c", 0).unwrap_err(), Refusal::TooMany);
        // Another tenant has its own room count.
        c.create("u", "a", 0).unwrap();
        assert_eq!(c.list("t", 1).len(), 2);
        assert!(c.get("u", "b").is_none());
        // Nobody joined: both of t's rooms expire, and t may make new ones.
        assert!(c.list("t", EMPTY_TTL_MS).is_empty());
        c.create("t", "c", EMPTY_TTL_MS).unwrap();
        assert_eq!(
            c.admits("t", "d", false, EMPTY_TTL_MS),
            Err(Refusal::NotFound)
        );
        assert_eq!(c.admits("t", "d", true, EMPTY_TTL_MS), Ok(()));
        assert!(c.remove_empty("t", "c"));
        assert!(!c.remove_empty("t", "c"));
    }
}
