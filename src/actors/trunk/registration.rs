//! The trunk actor's side of a carrier registration (`register = true`): it carries out what
//! the pure [`crate::routing::registration`] machine asks — REGISTERs to the trunk's first
//! gateway, ticks, the registered flag in [`TrunkShared`] and the down/up alarms.
//!
//! Each REGISTER is sent outside any transaction (like the OPTIONS probes): an unanswered
//! one is sent again by the machine with the next CSeq. All of a trunk's REGISTERs share
//! one Call-ID, `sy-reg-<trunk>@<host>`, by which the router hands their answers back.

use super::*;
use crate::routing::registration::{RegAction, RegAnswer, Registration};
use crate::sip::auth::{authorization_value, ha1};

/// Counter, labels `trunk` and `result` (`sent`, `registered`, `challenged`, `failed`):
/// REGISTERs to carriers and their outcomes.
pub const TRUNK_REGISTRATIONS: &str = "switchyard_trunk_registrations_total";
/// Gauge, label `trunk`: 1 while the trunk's registration with its carrier holds.
pub const TRUNK_REGISTERED: &str = "switchyard_trunk_registered";

/// Counter: calls from a carrier to the account the switch registered with it, routed by
/// the number in their To.
pub const TRUNK_REGISTERED_CALLS: &str = "switchyard_trunk_registered_calls_total";

/// The Call-ID prefix of registrations.
pub const REGISTER_PREFIX: &str = "sy-reg-";

pub fn describe() {
    metrics::describe_counter!(
        TRUNK_REGISTRATIONS,
        "REGISTERs to carriers (register = true), by trunk and result: sent, registered, challenged, failed"
    );
    metrics::describe_counter!(
        TRUNK_REGISTERED_CALLS,
        "Calls from a carrier to the account the switch registered, routed by the number in To"
    );
    metrics::describe_gauge!(
        TRUNK_REGISTERED,
        "1 while the trunk's registration with its carrier holds (trunks with register = true)"
    );
}

/// The trunk a registration answer is for (its Call-ID: `sy-reg-<trunk>@<host>`).
pub fn parse_register_call_id(call_id: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(call_id).ok()?;
    let (trunk, _) = s.strip_prefix(REGISTER_PREFIX)?.rsplit_once('@')?;
    Some(trunk.to_string())
}

fn counted(trunk: &str, result: &'static str) {
    metrics::counter!(TRUNK_REGISTRATIONS, "trunk" => trunk.to_string(), "result" => result)
        .increment(1);
}

impl TrunkState {
    /// At the actor's start: a trunk that registers starts registering (down until the
    /// carrier says yes, if it was not registered before).
    pub(super) fn register_start(&mut self, now: u64) {
        if !self.shared.config.register {
            return;
        }
        let mut reg = Registration::new(self.shared.config.register_expires_secs);
        let actions = reg.start(now);
        self.reg = Some(reg);
        self.apply_reg(actions, now);
    }

    pub(super) fn register_tick(&mut self, now: u64) {
        let Some(reg) = self.reg.as_mut() else { return };
        let actions = reg.tick(now);
        self.apply_reg(actions, now);
    }

    pub(super) fn register_answered(&mut self, resp: &Message, now: u64) {
        if self.reg.is_none() {
            return;
        }
        let status = resp.status().unwrap_or(0);
        let challenge = match status {
            401 => resp.value(HeaderName::WwwAuthenticate).map(|v| (v, false)),
            407 => resp.value(HeaderName::ProxyAuthenticate).map(|v| (v, true)),
            _ => None,
        }
        .and_then(|(v, proxy)| Challenge::parse(v).ok().map(|c| (c, proxy)));
        let number = |name: HeaderName| {
            resp.value(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse::<u32>().ok())
        };
        // What a 2xx granted: our Contact's `expires` (the registrar lists every binding
        // of the account), else the Expires header.
        let ours = self.reg_contact_user();
        let granted = resp
            .contacts()
            .find(|c| String::from_utf8_lossy(&c.uri).contains(&format!("sip:{ours}@")))
            .and_then(|c| c.params.get("expires").flatten())
            .and_then(|v| std::str::from_utf8(&v).ok().and_then(|v| v.parse().ok()))
            .or_else(|| number(HeaderName::Expires));
        let answer = RegAnswer {
            status,
            cseq: resp.cseq().map_or(0, |c| c.seq),
            challenge,
            min_expires: number(HeaderName::MinExpires),
            granted,
        };
        if matches!(status, 401 | 407) {
            counted(&self.shared.id, "challenged");
        }
        let Some(reg) = self.reg.as_mut() else { return };
        let actions = reg.answer(&answer, now);
        self.apply_reg(actions, now);
    }

    fn reg_contact_user(&self) -> String {
        self.shared.config.auth_username.clone().unwrap_or_default()
    }

    fn apply_reg(&mut self, actions: Vec<RegAction>, now: u64) {
        for a in actions {
            match a {
                RegAction::Send {
                    cseq,
                    expires,
                    challenge,
                } => self.send_register(cseq, expires, challenge),
                RegAction::Tick(d) => {
                    self.ctx
                        .timers
                        .schedule_cast_with(d, &self.myself, |_| TrunkMsg::RegisterTick);
                }
                RegAction::Up => {
                    counted(&self.shared.id, "registered");
                    tracing::info!(trunk = %self.shared.id, "registered with the carrier");
                    let was_up = self.shared.is_up();
                    self.shared.set_registered(true);
                    if !was_up && self.shared.is_up() {
                        self.alarms
                            .raise(Alarm::trunk_up(self.shared.id.clone(), 0, now));
                    }
                }
                RegAction::Down(reason) => {
                    counted(&self.shared.id, "failed");
                    tracing::warn!(trunk = %self.shared.id, %reason, "registration with the carrier failed");
                    self.shared.set_registered(false);
                    self.alarms.raise(Alarm::trunk_unregistered(
                        self.shared.id.clone(),
                        reason,
                        now,
                    ));
                }
            }
        }
    }

    /// A REGISTER for the trunk's account to its first gateway.
    fn send_register(&mut self, cseq: u32, expires: u32, challenge: Option<(Challenge, bool)>) {
        if !self.ctx.ready() {
            return;
        }
        let Some(gw) = self.shared.gateways.first().cloned() else {
            return;
        };
        let c = &self.shared.config;
        let (Some(user), Some(password)) = (c.auth_username.clone(), c.auth_password.clone())
        else {
            return;
        };
        let domain = c
            .register_domain
            .clone()
            .unwrap_or_else(|| gw.addr.to_string());
        let (host, port) = self.ctx.sent_by(gw.protocol);
        let ruri = format!("sip:{domain}");
        let aor = format!("<sip:{user}@{domain}>");
        let mut m = self.gateway_request(
            Method::Register,
            ruri.clone(),
            &gw,
            &aor,
            aor.clone(),
            format!("{REGISTER_PREFIX}{}@{host}", self.shared.id),
            u64::from(cseq),
        );
        m.push(
            HeaderName::Contact,
            format!("<sip:{user}@{host}:{port}{}>", gw.protocol.uri_param()),
        );
        m.push(HeaderName::Expires, expires.to_string());
        if let Some((ch, proxy)) = &challenge {
            let key = ha1(ch.algorithm, &user, &ch.realm, &password);
            let cnonce = String::from_utf8_lossy(&random_token(12)).into_owned();
            // The nonce count starts at 1 for each new nonce (RFC 7616 §3.4).
            if self.reg_nonce != ch.nonce {
                self.reg_nonce = ch.nonce.clone();
                self.reg_nc = 0;
            }
            self.reg_nc = self.reg_nc.wrapping_add(1);
            let value =
                authorization_value(ch, &user, &key, "REGISTER", &ruri, self.reg_nc, &cnonce);
            let name = if *proxy {
                HeaderName::ProxyAuthorization
            } else {
                HeaderName::Authorization
            };
            m.push(name, value);
        }
        counted(&self.shared.id, "sent");
        self.send_to_gateway(&gw, &m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_call_ids_name_their_trunk() {
        assert_eq!(
            parse_register_call_id(b"sy-reg-carrier-1@10.0.0.1").as_deref(),
            Some("carrier-1")
        );
        assert_eq!(parse_register_call_id(b"sy-probe-1-x@h"), None);
    }
}
