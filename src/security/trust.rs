//! Who a request comes from, and where it may go (toll fraud).
//!
//! Every request's source is one of:
//! - a **trusted peer**: an address in `[security] trusted` (CIDRs);
//! - a **trunk gateway**: an address of a configured trunk's `gateways` (kept current when
//!   trunks change through the API: whoever swaps the trunk table calls
//!   [`Trust::set_gateways`]);
//! - anyone else, who may still authenticate as a tenant's user (digest, in the router).
//!
//! Nothing is trusted by default, loopback included. [`permit`] decides whether a caller may
//! take a static route: a trusted peer may take any; a tenant's authenticated user only the
//! routes its tenant (and, narrowing it, the user) lists in `outbound`; a call from a trunk
//! gateway only a route marked `from_trunks`; an anonymous caller none. Numbers (DIDs) and
//! users are local destinations that everyone reaches; the router checks those first.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

/// Requests refused at the edge, by `reason` (`anonymous`, `not_permitted`,
/// `from_trunk`) (counter).
pub const SECURITY_REFUSED: &str = "switchyard_security_refused_total";
/// Addresses of trunk gateways known to the edge now (gauge).
pub const SECURITY_GATEWAYS: &str = "switchyard_security_gateway_addresses";

/// Describes this module's metrics.
pub fn describe() {
    metrics::describe_counter!(
        SECURITY_REFUSED,
        "Requests refused at the edge (who may call where), by reason: anonymous, not_permitted, from_trunk"
    );
    metrics::describe_gauge!(
        SECURITY_GATEWAYS,
        "Trunk gateway addresses the edge recognises (kept current with the trunks)"
    );
}

/// Parses a trusted peer: `"192.0.2.0/24"`, `"2001:db8::/32"` or a bare address (one
/// host). Host bits below the prefix are ignored (`10.1.2.3/8` is `10.0.0.0/8`).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    super::parse_net(s)
}

/// What the edge knows of a source address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceClass {
    /// In `[security] trusted`.
    Trusted,
    /// A gateway of this trunk (the lowest id when trunks share an address).
    Gateway(Arc<str>),
    /// Anyone else: anonymous unless it authenticates as a tenant's user.
    Other,
}

/// The trusted networks and the trunks' gateway addresses. Send + Sync; shared through an
/// `Arc` by the router, the trunk table (which keeps the gateways current) and the flood
/// defence (its exemption predicate, [`Trust::exemption`]).
#[derive(Debug, Default)]
pub struct Trust {
    trusted: Vec<IpNet>,
    /// Swapped whole when the trunks change; one read lock per lookup.
    gateways: RwLock<Arc<HashMap<IpAddr, Arc<str>>>>,
}

impl Trust {
    /// Trusts `trusted` (and no gateway until [`Trust::set_gateways`]).
    pub fn new(trusted: Vec<IpNet>) -> Trust {
        Trust {
            trusted,
            gateways: RwLock::default(),
        }
    }

    /// The trusted peers of `[security] trusted` (validated by the config; an entry that
    /// does not parse is an error here too).
    pub fn from_config(trusted: &[String]) -> Result<Trust, String> {
        let nets = trusted
            .iter()
            .map(|s| parse_cidr(s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Trust::new(nets))
    }

    /// Puts the trunks' gateway addresses in force: `(address, trunk id)` pairs; an address
    /// of several trunks belongs to the lowest id.
    pub fn set_gateways(&self, gateways: impl IntoIterator<Item = (IpAddr, Arc<str>)>) {
        let mut map: HashMap<IpAddr, Arc<str>> = HashMap::new();
        for (ip, trunk) in gateways {
            let ip = ip.to_canonical();
            match map.get(&ip) {
                Some(t) if **t <= *trunk => {}
                _ => {
                    map.insert(ip, trunk);
                }
            }
        }
        metrics::gauge!(SECURITY_GATEWAYS).set(map.len() as f64);
        *self.gateways.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
    }

    /// Whether `ip` is a trusted peer.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The trunk whose gateway `ip` is.
    pub fn gateway(&self, ip: IpAddr) -> Option<Arc<str>> {
        self.gateways
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ip.to_canonical())
            .cloned()
    }

    /// Whether `ip` is a trusted peer or a trunk's gateway: never banned, never held to
    /// per-source limits.
    pub fn is_trusted_or_gateway(&self, ip: IpAddr) -> bool {
        self.is_trusted(ip) || self.gateway(ip).is_some()
    }

    /// What `ip` is (trusted first: a trusted gateway is a trusted peer).
    pub fn classify(&self, ip: IpAddr) -> SourceClass {
        if self.is_trusted(ip) {
            return SourceClass::Trusted;
        }
        match self.gateway(ip) {
            Some(trunk) => SourceClass::Gateway(trunk),
            None => SourceClass::Other,
        }
    }

    /// [`Trust::is_trusted_or_gateway`] as a predicate for code that must not depend on
    /// this type (the flood defence's ban exemption).
    pub fn exemption(self: &Arc<Self>) -> Arc<dyn Fn(IpAddr) -> bool + Send + Sync> {
        let trust = self.clone();
        Arc::new(move |ip| trust.is_trusted_or_gateway(ip))
    }
}

/// Lets one log line through per interval and counts the ones held back, so that a flood of
/// refusals costs a counter, not a log line each.
#[derive(Debug, Default)]
pub struct LogLimit {
    last_ms: std::sync::atomic::AtomicU64,
    held: std::sync::atomic::AtomicU64,
}

impl LogLimit {
    /// Some(lines held back since the last one) when a line may be logged at `now_ms`.
    pub fn allow(&self, now_ms: u64, every_ms: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let last = self.last_ms.load(Relaxed);
        if now_ms.saturating_sub(last) >= every_ms
            && self
                .last_ms
                .compare_exchange(last, now_ms, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Relaxed));
        }
        self.held.fetch_add(1, Relaxed);
        None
    }
}

/// Who is calling, for deciding which routes it may take.
#[derive(Clone, Copy, Debug)]
pub enum Caller<'a> {
    /// A trusted peer.
    Trusted,
    /// A call arriving from a trunk's gateway.
    Gateway,
    /// A tenant's user, authenticated by digest: its tenant's `outbound` list and its own
    /// (which narrows the tenant's), if it has one.
    User {
        tenant_outbound: &'a [String],
        user_outbound: Option<&'a [String]>,
    },
    /// Anyone else.
    Anonymous,
}

/// Why a caller may not take a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Neither trusted nor authenticated: local destinations only.
    Anonymous,
    /// An authenticated user whose outbound permissions do not list the route.
    NotPermitted,
    /// A call from a trunk's gateway to a route without `from_trunks`.
    FromTrunk,
}

impl Refused {
    /// The `reason` label of [`SECURITY_REFUSED`].
    pub fn label(self) -> &'static str {
        match self {
            Refused::Anonymous => "anonymous",
            Refused::NotPermitted => "not_permitted",
            Refused::FromTrunk => "from_trunk",
        }
    }

    /// The reason phrase of the 403.
    pub fn phrase(self) -> &'static str {
        match self {
            Refused::Anonymous => "Forbidden (Not Authorized To Call Out)",
            Refused::NotPermitted => "Forbidden (Route Not Permitted)",
            Refused::FromTrunk => "Forbidden (No Transit From Trunks)",
        }
    }
}

/// Whether `caller` may take the static route `route` (its id), marked `from_trunks` or not.
pub fn permit(caller: Caller<'_>, route: &str, from_trunks: bool) -> Result<(), Refused> {
    match caller {
        Caller::Trusted => Ok(()),
        Caller::Gateway if from_trunks => Ok(()),
        Caller::Gateway => Err(Refused::FromTrunk),
        Caller::User {
            tenant_outbound,
            user_outbound,
        } => {
            let listed = |l: &[String]| l.iter().any(|r| r == route);
            if listed(tenant_outbound) && user_outbound.is_none_or(listed) {
                Ok(())
            } else {
                Err(Refused::NotPermitted)
            }
        }
        Caller::Anonymous => Err(Refused::Anonymous),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_and_bare_addresses_parse() {
        assert_eq!(
            parse_cidr("10.1.2.3/8").unwrap(),
            "10.0.0.0/8".parse().unwrap()
        );
        assert_eq!(
            parse_cidr(" 192.0.2.7 ").unwrap(),
            "192.0.2.7/32".parse().unwrap()
        );
        assert_eq!(
            parse_cidr("2001:db8::1").unwrap(),
            "2001:db8::1/128".parse().unwrap()
        );
        for bad in ["", "10.0.0.0/33", "example.com", "10.0.0/8", "*"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        assert!(Trust::from_config(&["127.0.0.1".into(), "nope".into()]).is_err());
    }

    #[test]
    fn nothing_is_trusted_by_default_loopback_included() {
        let t = Trust::default();
        for a in ["127.0.0.1", "::1", "10.0.0.1", "0.0.0.0"] {
            assert_eq!(t.classify(ip(a)), SourceClass::Other, "{a}");
            assert!(!t.is_trusted_or_gateway(ip(a)));
        }
    }

    #[test]
    fn trusted_networks_and_gateways_are_classified() {
        let t = Trust::from_config(&["127.0.0.0/30".into(), "2001:db8::/32".into()]).unwrap();
        assert_eq!(t.classify(ip("127.0.0.3")), SourceClass::Trusted);
        assert_eq!(t.classify(ip("127.0.0.4")), SourceClass::Other);
        assert_eq!(t.classify(ip("2001:db8:5::9")), SourceClass::Trusted);
        // An IPv4 peer seen through a dual-stack socket is the same peer.
        assert_eq!(t.classify(ip("::ffff:127.0.0.2")), SourceClass::Trusted);
        t.set_gateways([
            (ip("127.0.0.50"), Arc::from("b")),
            (ip("127.0.0.50"), Arc::from("a")),
            (ip("127.0.0.51"), Arc::from("b")),
            (ip("127.0.0.2"), Arc::from("c")),
        ]);
        assert_eq!(t.gateway(ip("127.0.0.50")).as_deref(), Some("a"));
        assert_eq!(
            t.classify(ip("127.0.0.51")),
            SourceClass::Gateway(Arc::from("b"))
        );
        // Trusted wins over gateway.
        assert_eq!(t.classify(ip("127.0.0.2")), SourceClass::Trusted);
        let exempt = Arc::new(t);
        let f = exempt.exemption();
        assert!(f(ip("127.0.0.51")) && f(ip("127.0.0.1")) && !f(ip("127.0.0.9")));
        // Trunks changed: the old gateway is anyone again.
        exempt.set_gateways([(ip("127.0.0.60"), Arc::from("d"))]);
        assert!(!f(ip("127.0.0.51")) && f(ip("127.0.0.60")));
    }

    #[test]
    fn log_lines_are_limited_and_the_rest_counted() {
        let l = LogLimit::default();
        assert_eq!(l.allow(10_000, 1000), Some(0));
        assert_eq!(l.allow(10_500, 1000), None);
        assert_eq!(l.allow(10_900, 1000), None);
        assert_eq!(l.allow(11_000, 1000), Some(2));
    }

    #[test]
    fn who_may_take_which_route() {
        let tenant = vec!["9".to_string(), "intl".to_string()];
        let user = vec!["9".to_string()];
        assert_eq!(permit(Caller::Trusted, "9", false), Ok(()));
        assert_eq!(
            permit(Caller::Anonymous, "9", true),
            Err(Refused::Anonymous)
        );
        assert_eq!(permit(Caller::Gateway, "9", false), Err(Refused::FromTrunk));
        assert_eq!(permit(Caller::Gateway, "9", true), Ok(()));
        let member = Caller::User {
            tenant_outbound: &tenant,
            user_outbound: None,
        };
        assert_eq!(permit(member, "intl", false), Ok(()));
        assert_eq!(permit(member, "other", false), Err(Refused::NotPermitted));
        let narrowed = Caller::User {
            tenant_outbound: &tenant,
            user_outbound: Some(&user),
        };
        assert_eq!(permit(narrowed, "9", false), Ok(()));
        assert_eq!(permit(narrowed, "intl", false), Err(Refused::NotPermitted));
        // A user's list never widens its tenant's.
        let wider = vec!["other".to_string()];
        let c = Caller::User {
            tenant_outbound: &tenant,
            user_outbound: Some(&wider),
        };
        assert_eq!(permit(c, "other", false), Err(Refused::NotPermitted));
        let none = Caller::User {
            tenant_outbound: &[],
            user_outbound: None,
        };
        assert_eq!(permit(none, "9", false), Err(Refused::NotPermitted));
    }
}
