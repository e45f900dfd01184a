//! The edge: who gets shut out before the switch spends work on them. Pure tables and
//! counters (no tokio, no actors), consulted by the transports.
//!
//! - [`density`]: per-source request density over a sliding window (Kamailio `pike`'s
//!   `reqs_density_per_unit` per `sampling_time_unit`).
//! - [`bans`]: how long a ban lasts (doubling on repeat offences, capped) and its record.
//! - [`table`]: the bounded, sharded LRU tables keyed by source address (O(1) eviction, so a
//!   flood of spoofed sources cannot grow memory).
//! - [`scanners`]: the User-Agent list of SIP scanners (sipvicious and friends).
//! - [`conns`]: concurrent TCP/TLS connections per source.
//! - [`guard`]: [`EdgeGuard`], the one object the transports hold: the pre-parse ban check
//!   and density count, scanner bans, the connection cap, exemptions and the ban list.
//! - [`trust`]: who a request comes from (a trusted peer, a trunk gateway, anyone else) and
//!   so where it may go; the router consults it.
//!
//! A source is an IPv4 address or an IPv6 /64 (one subscriber's prefix; see [`source_key`]).

pub mod bans;
pub mod conns;
pub mod density;
pub mod guard;
pub mod scanners;
pub mod table;
pub mod trust;

use std::net::{IpAddr, Ipv6Addr};

pub use bans::{BanReason, BanView};
pub use guard::{Admit, EdgeGuard, ExemptFn, FloodSettings, ScannerSettings};

/// Gauge: sources banned now.
pub const BANS: &str = "switchyard_security_bans";
/// Counter, label `reason` (`flood`, `scanner`): bans imposed.
pub const BANS_TOTAL: &str = "switchyard_security_bans_total";
/// Counter, label `reason` (`banned`, `scanner`, `conn_cap`): packets or connections dropped
/// unanswered by the edge.
pub const DROPPED_TOTAL: &str = "switchyard_security_dropped_total";
/// Counter, label `table` (`sources`, `bans`): entries evicted because a table was full.
pub const EVICTIONS_TOTAL: &str = "switchyard_security_evictions_total";
/// Counter: bans lifted through the API.
pub const LIFTED_TOTAL: &str = "switchyard_security_bans_lifted_total";

/// Describes the edge's metrics.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(BANS, "Sources (IPv4 addresses, IPv6 /64s) banned now");
    describe_counter!(BANS_TOTAL, "Bans imposed, by reason (flood, scanner)");
    describe_counter!(
        DROPPED_TOTAL,
        "Packets and connections dropped unanswered by the edge, by reason (banned, scanner, conn_cap)"
    );
    describe_counter!(
        EVICTIONS_TOTAL,
        "Edge table entries evicted because the table was full, by table (sources, bans)"
    );
    describe_counter!(LIFTED_TOTAL, "Bans lifted through the API");
    trust::describe();
}

/// The key a source is tracked and banned under: an IPv4 address (IPv4-mapped IPv6 ones
/// too), or the /64 of an IPv6 address, since one subscriber usually holds a whole /64 and
/// could otherwise step through its addresses.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

/// The prefix length a key stands for (32 for IPv4, 64 for IPv6).
pub fn key_prefix(key: IpAddr) -> u8 {
    match key {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 64,
    }
}

/// Parses a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare address (a /32 or /128).
pub fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(|ip| ipnet::IpNet::from(ip.to_canonical()))
        .map_err(|_| format!("{s:?} is not an address or CIDR (10.0.0.0/8, 2001:db8::/32)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_v4_addresses_or_v6_slash_64s() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(source_key(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(mapped), v4);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_eq!(source_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_eq!(key_prefix(source_key(a)), 64);
        assert_ne!(
            source_key(a),
            source_key("2001:db8:1:3::1".parse().unwrap())
        );
    }

    #[test]
    fn nets_parse_with_or_without_a_prefix() {
        let n = parse_net("127.0.0.1").unwrap();
        assert!(n.contains(&"127.0.0.1".parse::<IpAddr>().unwrap()));
        assert!(!n.contains(&"127.0.0.2".parse::<IpAddr>().unwrap()));
        let n = parse_net("10.1.2.3/8").unwrap();
        assert_eq!(n.to_string(), "10.0.0.0/8");
        assert!(parse_net("2001:db8::/32").is_ok());
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("example.com").is_err());
    }
}
