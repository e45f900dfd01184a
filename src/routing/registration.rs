//! Registration to a carrier (a trunk with `register = true`): the switch REGISTERs its
//! account, answers 401/407 challenges with its credentials, follows 423 (Min-Expires),
//! refreshes before the binding expires and retries after a failure. Pure: the trunk actor
//! feeds it responses and ticks and carries out what it asks ([`RegAction`]).
//!
//! A trunk whose registration fails is down (calls fail over past it) until a later attempt
//! succeeds; the actor raises the trunk's down and up alarms on [`RegAction::Down`] and
//! [`RegAction::Up`].

use std::time::Duration;

use crate::sip::auth::Challenge;

/// How long an attempt waits for a final answer before it counts as failed.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);
/// Unanswered attempts in a row after which the registration has failed (each is sent
/// again with the next CSeq meanwhile).
pub const TRIES: u32 = 3;
/// The first wait before retrying a failed registration; it doubles up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(30);
pub const MAX_RETRY: Duration = Duration::from_secs(600);
/// The longest binding the switch asks for or accepts from a 423.
pub const MAX_EXPIRES: u32 = 86_400;

/// Where the registration is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegState {
    /// An attempt is out (`challenged`: it already carries credentials).
    Pending { challenged: bool, tries: u32 },
    /// Registered until `until_ms` (refreshed before).
    Registered { until_ms: u64 },
    /// The last attempt failed for `reason`; the next is at the tick.
    Failed { reason: String },
}

/// What the actor is to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegAction {
    /// Send a REGISTER with this CSeq asking for `expires` seconds, with an
    /// `Authorization` (or, `proxy`, `Proxy-Authorization`) answering `challenge`.
    Send {
        cseq: u32,
        expires: u32,
        challenge: Option<(Challenge, bool)>,
    },
    /// Tick again after this long.
    Tick(Duration),
    /// The trunk is registered (again).
    Up,
    /// The registration failed: the trunk is down for `reason`.
    Down(String),
}

/// A final answer to a REGISTER, as the machine needs it.
#[derive(Clone, Debug, Default)]
pub struct RegAnswer {
    pub status: u16,
    pub cseq: u32,
    /// The challenge of a 401 (`false`) or 407 (`true`).
    pub challenge: Option<(Challenge, bool)>,
    /// A 423's `Min-Expires`.
    pub min_expires: Option<u32>,
    /// What a 2xx granted (the Contact's `expires`, else `Expires`).
    pub granted: Option<u32>,
}

/// One trunk's registration.
#[derive(Clone, Debug)]
pub struct Registration {
    pub state: RegState,
    cseq: u32,
    expires: u32,
    /// When the current wait (attempt timeout, refresh, retry) is over.
    deadline_ms: u64,
    retry: Duration,
    /// The last challenge, answered again on a 423's retry.
    challenge: Option<(Challenge, bool)>,
    /// Whether the trunk is up as far as registration goes (Up/Down said once each).
    up: bool,
    said_down: bool,
}

impl Registration {
    /// A registration asking for `expires` seconds (bounded to 60..=[`MAX_EXPIRES`]).
    pub fn new(expires: u32) -> Registration {
        Registration {
            state: RegState::Failed {
                reason: "not started".into(),
            },
            cseq: 0,
            expires: expires.clamp(60, MAX_EXPIRES),
            deadline_ms: 0,
            retry: FIRST_RETRY,
            challenge: None,
            up: false,
            said_down: false,
        }
    }

    /// The first REGISTER (and after a restart of the actor).
    pub fn start(&mut self, now_ms: u64) -> Vec<RegAction> {
        let mut out = Vec::new();
        self.attempt(now_ms, None, &mut out);
        out
    }

    fn attempt(
        &mut self,
        now_ms: u64,
        challenge: Option<(Challenge, bool)>,
        out: &mut Vec<RegAction>,
    ) {
        let tries = match &self.state {
            RegState::Pending { tries, .. } if challenge.is_none() => tries + 1,
            _ => 1,
        };
        self.cseq += 1;
        self.state = RegState::Pending {
            challenged: challenge.is_some(),
            tries,
        };
        out.push(RegAction::Send {
            cseq: self.cseq,
            expires: self.expires,
            challenge,
        });
        self.wait(now_ms, ATTEMPT_TIMEOUT, out);
    }

    fn wait(&mut self, now_ms: u64, d: Duration, out: &mut Vec<RegAction>) {
        self.deadline_ms = now_ms + d.as_millis() as u64;
        out.push(RegAction::Tick(d));
    }

    fn fail(&mut self, now_ms: u64, reason: String, out: &mut Vec<RegAction>) {
        // Said once per fall (and at the first failure after a start).
        if self.up || !self.said_down {
            out.push(RegAction::Down(reason.clone()));
            self.said_down = true;
        }
        self.up = false;
        self.state = RegState::Failed { reason };
        let d = self.retry;
        self.retry = (self.retry * 2).min(MAX_RETRY);
        self.wait(now_ms, d, out);
    }

    fn other_algorithm(&self, c: &Challenge) -> bool {
        self.challenge
            .as_ref()
            .is_some_and(|(prev, _)| prev.algorithm != c.algorithm)
    }

    /// A final answer to one of our REGISTERs (older CSeqs are ignored).
    pub fn answer(&mut self, a: &RegAnswer, now_ms: u64) -> Vec<RegAction> {
        let mut out = Vec::new();
        let RegState::Pending { challenged, .. } = self.state.clone() else {
            return out;
        };
        if a.cseq != self.cseq || a.status < 200 {
            return out;
        }
        match a.status {
            200..=299 => {
                let granted = a.granted.unwrap_or(self.expires).min(MAX_EXPIRES);
                if granted == 0 {
                    self.fail(now_ms, "registrar granted no binding".into(), &mut out);
                    return out;
                }
                self.state = RegState::Registered {
                    until_ms: now_ms + u64::from(granted) * 1000,
                };
                self.retry = FIRST_RETRY;
                if !self.up {
                    self.up = true;
                    self.said_down = false;
                    out.push(RegAction::Up);
                }
                // Refresh at 80 % of the binding, and at least 5 s before it ends.
                let ms = u64::from(granted) * 1000;
                let refresh = (ms * 4 / 5).min(ms.saturating_sub(5000)).max(1000);
                self.wait(now_ms, Duration::from_millis(refresh), &mut out);
            }
            401 | 407 => match a.challenge.clone() {
                // A fresh nonce for a right password (stale) may be answered again, and so
                // may a challenge in another algorithm (a registrar offering SHA-256 first
                // asks again in MD5 for an account it only holds an MD5 hash of).
                Some(c) if !challenged || c.0.stale || self.other_algorithm(&c.0) => {
                    self.challenge = Some(c.clone());
                    self.attempt(now_ms, Some(c), &mut out);
                }
                _ => self.fail(
                    now_ms,
                    format!("registrar refused the credentials ({})", a.status),
                    &mut out,
                ),
            },
            423 => match a.min_expires {
                Some(m) if m > self.expires && m <= MAX_EXPIRES => {
                    self.expires = m;
                    let c = self.challenge.clone();
                    self.attempt(now_ms, c, &mut out);
                }
                _ => self.fail(now_ms, "423 without a usable Min-Expires".into(), &mut out),
            },
            s => self.fail(now_ms, format!("registrar answered {s}"), &mut out),
        }
        out
    }

    /// The actor's tick: an attempt unanswered in time, a refresh or a retry due. Early
    /// ticks (a timer of a wait since replaced) do nothing.
    pub fn tick(&mut self, now_ms: u64) -> Vec<RegAction> {
        let mut out = Vec::new();
        if now_ms < self.deadline_ms {
            return out;
        }
        match self.state.clone() {
            RegState::Pending { tries, .. } if tries >= TRIES => {
                self.fail(now_ms, "registrar did not answer".into(), &mut out)
            }
            RegState::Pending { .. } => self.attempt(now_ms, None, &mut out),
            RegState::Registered { until_ms } if now_ms >= until_ms => {
                self.fail(now_ms, "binding expired".into(), &mut out)
            }
            RegState::Registered { .. } | RegState::Failed { .. } => {
                // A refresh answers the last challenge at once (most registrars take a
                // nonce for a while; a stale one is challenged again).
                let c = self.challenge.clone();
                self.attempt_fresh(now_ms, c, &mut out);
            }
        }
        out
    }

    fn attempt_fresh(
        &mut self,
        now_ms: u64,
        challenge: Option<(Challenge, bool)>,
        out: &mut Vec<RegAction>,
    ) {
        self.cseq += 1;
        self.state = RegState::Pending {
            challenged: false,
            tries: 1,
        };
        out.push(RegAction::Send {
            cseq: self.cseq,
            expires: self.expires,
            challenge,
        });
        self.wait(now_ms, ATTEMPT_TIMEOUT, out);
    }

    /// Registered as far as the registrar said last.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// The binding the switch asks for now (after a 423, the registrar's minimum).
    pub fn expires(&self) -> u32 {
        self.expires
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::auth::Algorithm;

    fn challenge(stale: bool) -> Option<(Challenge, bool)> {
        Some((
            Challenge {
                realm: "carrier.test".into(),
                nonce: "n1".into(),
                opaque: None,
                algorithm: Algorithm::Md5,
                stale,
            },
            false,
        ))
    }

    fn sent(out: &[RegAction]) -> Option<(u32, u32, bool)> {
        out.iter().find_map(|a| match a {
            RegAction::Send {
                cseq,
                expires,
                challenge,
            } => Some((*cseq, *expires, challenge.is_some())),
            _ => None,
        })
    }

    fn answer(status: u16, cseq: u32) -> RegAnswer {
        RegAnswer {
            status,
            cseq,
            ..RegAnswer::default()
        }
    }

    #[test]
    fn a_challenge_is_answered_once_and_the_binding_refreshed_before_it_ends() {
        let mut r = Registration::new(3600);
        assert_eq!(sent(&r.start(0)), Some((1, 3600, false)));
        let out = r.answer(
            &RegAnswer {
                challenge: challenge(false),
                ..answer(401, 1)
            },
            10,
        );
        assert_eq!(sent(&out), Some((2, 3600, true)));
        // A late answer to the first attempt changes nothing.
        assert!(r.answer(&answer(200, 1), 20).is_empty());
        let out = r.answer(
            &RegAnswer {
                granted: Some(600),
                ..answer(200, 2)
            },
            30,
        );
        assert!(out.contains(&RegAction::Up));
        assert!(r.is_up());
        assert!(r.tick(30 + 400_000).is_empty(), "not due yet");
        let out = r.tick(30 + 480_000);
        assert_eq!(
            sent(&out),
            Some((3, 3600, true)),
            "refreshed with the last nonce"
        );
        // The refresh is answered: no second Up.
        let out = r.answer(&answer(200, 3), 480_100);
        assert!(!out.contains(&RegAction::Up));
    }

    #[test]
    fn wrong_credentials_take_the_trunk_down_and_retry_later() {
        let mut r = Registration::new(3600);
        r.start(0);
        let c = RegAnswer {
            challenge: challenge(false),
            ..answer(401, 1)
        };
        r.answer(&c, 1);
        let out = r.answer(
            &RegAnswer {
                challenge: challenge(false),
                ..answer(401, 2)
            },
            2,
        );
        assert!(matches!(out[0], RegAction::Down(_)), "{out:?}");
        assert!(!r.is_up());
        assert!(out.contains(&RegAction::Tick(FIRST_RETRY)));
        // A challenge in another algorithm is answered once more (then refused again: down).
        let mut r = Registration::new(3600);
        r.start(0);
        r.answer(&c, 1);
        let mut sha = challenge(false);
        if let Some((ch, _)) = sha.as_mut() {
            ch.algorithm = Algorithm::Sha256;
        }
        let other = RegAnswer {
            challenge: sha,
            ..answer(401, 2)
        };
        assert_eq!(sent(&r.answer(&other, 2)), Some((3, 3600, true)));
        let again = RegAnswer {
            cseq: 3,
            ..other.clone()
        };
        assert!(matches!(r.answer(&again, 3)[0], RegAction::Down(_)));
        // A stale nonce, though, is answered again.
        let mut r = Registration::new(3600);
        r.start(0);
        r.answer(&c, 1);
        let out = r.answer(
            &RegAnswer {
                challenge: challenge(true),
                ..answer(401, 2)
            },
            2,
        );
        assert_eq!(sent(&out), Some((3, 3600, true)));
    }

    #[test]
    fn a_423_raises_the_binding_to_the_registrars_minimum() {
        let mut r = Registration::new(60);
        r.start(0);
        let out = r.answer(
            &RegAnswer {
                min_expires: Some(300),
                ..answer(423, 1)
            },
            1,
        );
        assert_eq!(sent(&out), Some((2, 300, false)));
        // A minimum beyond a day is not followed.
        let mut r = Registration::new(60);
        r.start(0);
        let out = r.answer(
            &RegAnswer {
                min_expires: Some(MAX_EXPIRES + 1),
                ..answer(423, 1)
            },
            1,
        );
        assert!(matches!(out[0], RegAction::Down(_)));
    }

    #[test]
    fn an_unanswered_registration_is_sent_again_then_fails_and_backs_off() {
        let mut r = Registration::new(3600);
        r.start(0);
        let t = ATTEMPT_TIMEOUT.as_millis() as u64;
        assert_eq!(sent(&r.tick(t)), Some((2, 3600, false)));
        assert_eq!(sent(&r.tick(2 * t)), Some((3, 3600, false)));
        let out = r.tick(3 * t);
        assert!(matches!(out[0], RegAction::Down(_)), "{out:?}");
        let out = r.tick(3 * t + FIRST_RETRY.as_millis() as u64);
        assert_eq!(sent(&out), Some((4, 3600, false)));
        // Failing again waits twice as long, and says Down only once.
        r.tick(4 * t + FIRST_RETRY.as_millis() as u64);
        r.tick(5 * t + FIRST_RETRY.as_millis() as u64);
        let out = r.tick(6 * t + FIRST_RETRY.as_millis() as u64);
        assert!(
            !out.iter().any(|a| matches!(a, RegAction::Down(_))),
            "{out:?}"
        );
        assert!(out.contains(&RegAction::Tick(FIRST_RETRY * 2)));
    }
}
