//! [`EdgeGuard`]: what the transports ask about every packet and connection.
//!
//! Per received message, before it is parsed: [`EdgeGuard::admit`] looks the source up in
//! the ban table (one hash lookup: a banned flood costs little more than the receive) and
//! otherwise counts it in the density table; a source over the limit is banned on the spot.
//! After parsing, a request whose User-Agent names a scanner is dropped and its source
//! banned ([`EdgeGuard::scanner`]). Accepted TCP/TLS connections are capped per source
//! ([`EdgeGuard::open_connection`]).
//!
//! Exempt sources are never banned: the configured `exempt` CIDRs and whatever the
//! [`ExemptFn`] says (trusted peers, trunk gateways). NAT gateways (`nat_gateways`) get a
//! higher density limit, are not banned for a scanner behind them and are not capped.
//! Exemptions are looked up only when a source goes over a limit, and remembered for a few
//! seconds, so the common path never runs them.
//!
//! Time is passed in (`now`), so the tables are tested with a simulated clock.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use metrics::{Counter, Gauge};

use super::bans::{next_ban, Ban, BanReason, BanView};
use super::conns::{ConnCounts, ConnSlot};
use super::density::Window;
use super::scanners::ScannerList;
use super::table::{upsert, SourceTable};
use super::{key_prefix, source_key};
use super::{BANS, BANS_TOTAL, DROPPED_TOTAL, EVICTIONS_TOTAL, LIFTED_TOTAL};

/// Says whether a source is never to be banned (trusted peers, trunk gateways); supplied
/// by whoever knows them. Called rarely (when a source goes over a limit), never per packet.
pub type ExemptFn = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// How long an exemption lookup is remembered for a source.
const CLASS_TTL: Duration = Duration::from_secs(10);

/// The flood defence's settings (see `[security.flood]` in the config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FloodSettings {
    /// Count messages and ban sources over the limit.
    pub enabled: bool,
    /// The sliding window.
    pub window: Duration,
    /// Messages per window a source may send.
    pub limit: u32,
    /// The first ban's length; each repeat doubles it.
    pub ban: Duration,
    /// The longest ban, and how long a banned source is remembered after its ban.
    pub max_ban: Duration,
    /// Never banned, never capped.
    pub exempt: Vec<IpNet>,
    /// Gateways carrying many phones: `nat_limit` instead of `limit`, no scanner bans, no cap.
    pub nat_gateways: Vec<IpNet>,
    pub nat_limit: u32,
    /// Sources tracked at most (least recently seen evicted first).
    pub max_sources: usize,
    /// Bans held at most (least recently hit evicted first).
    pub max_bans: usize,
    /// Concurrent inbound TCP/TLS connections per source (0: no cap).
    pub max_connections_per_source: u32,
}

impl Default for FloodSettings {
    fn default() -> Self {
        FloodSettings {
            enabled: true,
            window: Duration::from_secs(2),
            limit: 30,
            ban: Duration::from_secs(60),
            max_ban: Duration::from_secs(3600),
            exempt: Vec::new(),
            nat_gateways: Vec::new(),
            nat_limit: 300,
            max_sources: 65_536,
            max_bans: 65_536,
            max_connections_per_source: 32,
        }
    }
}

/// The scanner defence's settings (see `[security.scanners]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannerSettings {
    pub enabled: bool,
    pub user_agents: Vec<String>,
}

impl Default for ScannerSettings {
    fn default() -> Self {
        ScannerSettings {
            enabled: true,
            user_agents: super::scanners::DEFAULT_USER_AGENTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// What to do with a received message before parsing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Go on.
    Pass,
    /// The source is banned: drop it unanswered (counted).
    Banned,
    /// This message put its source over the limit: banned now, drop it (counted).
    Flooded,
}

impl Admit {
    pub fn pass(self) -> bool {
        self == Admit::Pass
    }
}

/// How a source is treated at a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Normal,
    Nat,
    Exempt,
}

/// A tracked source: its window and, once it went over the limit, its class.
#[derive(Clone, Copy, Debug)]
struct Tracked {
    window: Window,
    class: Option<(Class, Instant)>,
}

/// Counter handles, made once (the per-packet path does not build metric keys).
struct Counters {
    dropped_banned: Counter,
    dropped_scanner: Counter,
    dropped_conn_cap: Counter,
    bans_flood: Counter,
    bans_scanner: Counter,
    bans_now: Gauge,
    evicted_sources: Counter,
    evicted_bans: Counter,
    lifted: Counter,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            dropped_banned: metrics::counter!(DROPPED_TOTAL, "reason" => "banned"),
            dropped_scanner: metrics::counter!(DROPPED_TOTAL, "reason" => "scanner"),
            dropped_conn_cap: metrics::counter!(DROPPED_TOTAL, "reason" => "conn_cap"),
            bans_flood: metrics::counter!(BANS_TOTAL, "reason" => "flood"),
            bans_scanner: metrics::counter!(BANS_TOTAL, "reason" => "scanner"),
            bans_now: metrics::gauge!(BANS),
            evicted_sources: metrics::counter!(EVICTIONS_TOTAL, "table" => "sources"),
            evicted_bans: metrics::counter!(EVICTIONS_TOTAL, "table" => "bans"),
            lifted: metrics::counter!(LIFTED_TOTAL),
        }
    }
}

/// The edge's tables: bans, source density, connections per source, scanner list.
pub struct EdgeGuard {
    flood: FloodSettings,
    scanners: Option<ScannerList>,
    bans: SourceTable<Ban>,
    sources: SourceTable<Tracked>,
    conns: Arc<ConnCounts>,
    exempt_fn: RwLock<Option<ExemptFn>>,
    counters: Counters,
}

impl fmt::Debug for EdgeGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeGuard")
            .field("flood", &self.flood)
            .field("scanners", &self.scanners.is_some())
            .finish_non_exhaustive()
    }
}

impl EdgeGuard {
    /// A guard with empty tables. Metric handles are taken from the recorder installed now.
    pub fn new(flood: FloodSettings, scanners: ScannerSettings) -> EdgeGuard {
        let scanner_list = scanners
            .enabled
            .then(|| ScannerList::new(&scanners.user_agents));
        EdgeGuard {
            bans: SourceTable::new(flood.max_bans),
            sources: SourceTable::new(flood.max_sources),
            flood,
            scanners: scanner_list,
            conns: Arc::new(ConnCounts::default()),
            exempt_fn: RwLock::new(None),
            counters: Counters::new(),
        }
    }

    /// Who is never banned besides the configured `exempt` CIDRs (trusted peers, trunk
    /// gateways). Replaces the one set before.
    pub fn set_exempt(&self, f: ExemptFn) {
        *self.exempt_fn.write().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    pub fn settings(&self) -> &FloodSettings {
        &self.flood
    }

    /// Before parsing a message from `ip`: drop it if the source is banned, otherwise count
    /// it and ban the source if this message puts it over its limit.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Admit {
        let key = source_key(ip);
        if self.banned_key(key, now) {
            return Admit::Banned;
        }
        if !self.flood.enabled {
            return Admit::Pass;
        }
        let (estimate, class) = {
            let mut shard = self.sources.shard(&key);
            let up = upsert(&mut shard, key, || Tracked {
                window: Window::new(now),
                class: None,
            });
            if up.evicted.is_some() {
                self.counters.evicted_sources.increment(1);
            }
            let t = up.value;
            let estimate = t.window.hit(now, self.flood.window);
            if estimate <= self.flood.limit {
                return Admit::Pass;
            }
            (estimate, t.class.filter(|(_, until)| now < *until))
        };
        // Over the base limit: how is this source treated? (Looked up outside the lock.)
        let class = match class {
            Some((c, _)) => c,
            None => {
                let c = self.class_of(ip);
                let mut shard = self.sources.shard(&key);
                if let Some(t) = shard.peek_mut(&key) {
                    t.class = Some((c, now + CLASS_TTL));
                }
                c
            }
        };
        let over = match class {
            Class::Exempt => false,
            Class::Nat => estimate > self.flood.nat_limit,
            Class::Normal => true,
        };
        if !over {
            return Admit::Pass;
        }
        self.impose(key, BanReason::Flood, now);
        self.counters.dropped_banned.increment(1);
        Admit::Flooded
    }

    /// Whether `ip` is banned now (counted as a drop when it is): the check of a new
    /// connection.
    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.banned_key(source_key(ip), now)
    }

    fn banned_key(&self, key: IpAddr, now: Instant) -> bool {
        let mut shard = self.bans.shard(&key);
        let Some(ban) = shard.get_mut(&key) else {
            return false;
        };
        if ban.active(now) {
            ban.dropped += 1;
            drop(shard);
            self.counters.dropped_banned.increment(1);
            return true;
        }
        if ban.forgotten(now, self.flood.max_ban) {
            let counted = ban.counted;
            shard.remove(&key);
            drop(shard);
            if counted {
                self.counters.bans_now.decrement(1.0);
            }
        }
        false
    }

    /// Whether a request's User-Agent names a scanner (false when the list is off).
    pub fn is_scanner(&self, user_agent: &[u8]) -> bool {
        self.scanners
            .as_ref()
            .is_some_and(|l| l.matches(user_agent))
    }

    /// A scanner's request from `ip` was dropped: count it and ban the source unless it is
    /// exempt or a NAT gateway. Returns the ban's length, if one was imposed.
    pub fn scanner(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        self.counters.dropped_scanner.increment(1);
        match self.class_of(ip) {
            Class::Normal => Some(self.impose(source_key(ip), BanReason::Scanner, now)),
            Class::Nat | Class::Exempt => None,
        }
    }

    /// Bans `ip` for `reason` unless it is exempt (NAT gateways included for a flood above
    /// their limit). Returns the ban's length, if one was imposed.
    pub fn ban(&self, ip: IpAddr, reason: BanReason, now: Instant) -> Option<Duration> {
        (self.class_of(ip) != Class::Exempt).then(|| self.impose(source_key(ip), reason, now))
    }

    /// Records the ban and forgets the source's density (it starts afresh after the ban).
    fn impose(&self, key: IpAddr, reason: BanReason, now: Instant) -> Duration {
        let (ban, newly_counted, evicted_counted) = {
            let mut shard = self.bans.shard(&key);
            let previous = shard.peek(&key).copied();
            if let Some(b) = previous.filter(|b| b.active(now)) {
                // Already banned (two connections of one source crossing the limit at
                // once): one offence, not two.
                return b.until - now;
            }
            let mut ban = next_ban(
                previous.as_ref(),
                reason,
                now,
                self.flood.ban,
                self.flood.max_ban,
            );
            let newly_counted = !ban.counted;
            ban.counted = true;
            let up = upsert(&mut shard, key, || ban);
            *up.value = ban;
            let evicted_counted = up.evicted.map(|(_, b)| b.counted);
            (ban, newly_counted, evicted_counted)
        };
        self.sources.shard(&key).remove(&key);
        if newly_counted {
            self.counters.bans_now.increment(1.0);
        }
        if let Some(counted) = evicted_counted {
            self.counters.evicted_bans.increment(1);
            if counted {
                self.counters.bans_now.decrement(1.0);
            }
        }
        match reason {
            BanReason::Flood => self.counters.bans_flood.increment(1),
            BanReason::Scanner => self.counters.bans_scanner.increment(1),
        }
        let secs = (ban.until - now).as_secs();
        tracing::warn!(source = %key, reason = reason.label(), secs, offences = ban.offences, "source banned");
        ban.until - now
    }

    /// Lifts the ban of `ip` (and forgets its offences and density). False when it was
    /// not banned.
    pub fn lift(&self, ip: IpAddr, now: Instant) -> bool {
        let key = source_key(ip);
        let removed = self.bans.shard(&key).remove(&key);
        self.sources.shard(&key).remove(&key);
        let Some(ban) = removed else {
            return false;
        };
        if ban.counted {
            self.counters.bans_now.decrement(1.0);
        }
        let active = ban.active(now);
        if active {
            self.counters.lifted.increment(1);
            tracing::info!(source = %key, "ban lifted");
        }
        active
    }

    /// The bans in force, longest remaining first.
    pub fn bans(&self, now: Instant) -> Vec<BanView> {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut out = Vec::new();
        self.bans.for_each_shard(|shard| {
            for (key, ban) in shard.iter() {
                if !ban.active(now) {
                    continue;
                }
                let left = ban.until - now;
                out.push(BanView {
                    source: *key,
                    prefix: key_prefix(*key),
                    reason: ban.reason,
                    until_ms: (wall + left).as_millis() as u64,
                    remaining_secs: left.as_secs() + u64::from(left.subsec_nanos() > 0),
                    offences: ban.offences,
                    dropped: ban.dropped,
                });
            }
        });
        out.sort_by(|a, b| b.until_ms.cmp(&a.until_ms).then(a.source.cmp(&b.source)));
        out
    }

    /// Bans in force now.
    pub fn active_bans(&self, now: Instant) -> usize {
        let mut n = 0;
        self.bans
            .for_each_shard(|s| n += s.iter().filter(|(_, b)| b.active(now)).count());
        n
    }

    /// Upkeep, every few seconds (never per request): ended bans leave the current-bans
    /// gauge, forgotten ones leave the table. A whole pass over the ban table.
    pub fn sweep(&self, now: Instant) {
        let memory = self.flood.max_ban;
        let mut ended = 0u32;
        self.bans.for_each_shard(|shard| {
            let mut forget = Vec::new();
            for (key, ban) in shard.iter_mut() {
                if ban.counted && !ban.active(now) {
                    ban.counted = false;
                    ended += 1;
                }
                if ban.forgotten(now, memory) {
                    forget.push(*key);
                }
            }
            for key in forget {
                shard.remove(&key);
            }
        });
        if ended > 0 {
            self.counters.bans_now.decrement(f64::from(ended));
        }
    }

    /// A new inbound TCP/TLS connection from `ip`: its slot, or None when the source is at
    /// its cap (counted; exempt sources and NAT gateways are not capped). Drop the slot when
    /// the connection closes.
    pub fn open_connection(&self, ip: IpAddr) -> Option<ConnSlot> {
        let cap = match self.flood.max_connections_per_source {
            0 => u32::MAX,
            n => n,
        };
        let slot = self
            .conns
            .open(source_key(ip), cap, || self.class_of(ip) != Class::Normal);
        if slot.is_none() {
            self.counters.dropped_conn_cap.increment(1);
        }
        slot
    }

    /// Connections `ip`'s source has open.
    pub fn connections(&self, ip: IpAddr) -> u32 {
        self.conns.count(source_key(ip))
    }

    /// Sources tracked for density.
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }

    /// Ban records held (in force, or ended and remembered).
    pub fn ban_records(&self) -> usize {
        self.bans.len()
    }

    fn class_of(&self, ip: IpAddr) -> Class {
        let ip = ip.to_canonical();
        if self.flood.exempt.iter().any(|n| n.contains(&ip)) {
            return Class::Exempt;
        }
        let external = self
            .exempt_fn
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if external.is_some_and(|f| f(ip)) {
            return Class::Exempt;
        }
        if self.flood.nat_gateways.iter().any(|n| n.contains(&ip)) {
            return Class::Nat;
        }
        Class::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn guard(f: impl FnOnce(&mut FloodSettings)) -> EdgeGuard {
        let mut s = FloodSettings::default();
        f(&mut s);
        EdgeGuard::new(s, ScannerSettings::default())
    }

    /// Sends `n` messages from `src` spread evenly over `over`, from `t0`; returns what
    /// each got.
    fn burst(g: &EdgeGuard, src: IpAddr, t0: Instant, n: u64, over: Duration) -> Vec<Admit> {
        (0..n)
            .map(|i| g.admit(src, t0 + over * i as u32 / n as u32))
            .collect()
    }

    #[test]
    fn a_flood_is_banned_at_the_limit_and_then_dropped() {
        let g = guard(|_| {});
        let t0 = Instant::now();
        let a = ip("192.0.2.5");
        let got = burst(&g, a, t0, 1000, ms(1000));
        assert!(got[..30].iter().all(|x| x.pass()), "30 in the window pass");
        assert_eq!(got[30], Admit::Flooded);
        assert!(got[31..].iter().all(|x| *x == Admit::Banned));
        let bans = g.bans(t0 + ms(1000));
        assert_eq!(bans.len(), 1);
        assert_eq!((bans[0].source, bans[0].reason), (a, BanReason::Flood));
        assert_eq!(bans[0].dropped, 969);
        assert_eq!(bans[0].remaining_secs, 60);
        // Another source is untouched.
        assert!(g.admit(ip("192.0.2.6"), t0 + ms(1000)).pass());
        assert_eq!(
            g.tracked_sources(),
            1,
            "the banned source left the density table"
        );
    }

    #[test]
    fn a_steady_phone_is_never_banned() {
        let g = guard(|_| {});
        let t0 = Instant::now();
        // 10 messages per second (REGISTER refreshes, calls, responses) for ten minutes.
        let got = burst(&g, ip("192.0.2.9"), t0, 6000, Duration::from_secs(600));
        assert!(got.iter().all(|x| x.pass()));
    }

    #[test]
    fn the_ban_ends_and_a_repeat_is_banned_twice_as_long() {
        let g = guard(|_| {});
        let t0 = Instant::now();
        let a = ip("192.0.2.5");
        burst(&g, a, t0, 31, ms(100));
        assert!(!g.admit(a, t0 + ms(59_000)).pass());
        let back = t0 + ms(61_000);
        assert!(g.admit(a, back).pass(), "the ban ended");
        assert_eq!(g.active_bans(back), 0);
        // The message at `back` counted too: the 30th of this burst is the 31st.
        let got = burst(&g, a, back, 30, ms(100));
        assert_eq!(got[29], Admit::Flooded);
        let bans = g.bans(back + ms(100));
        assert_eq!(bans[0].offences, 2);
        assert_eq!(bans[0].remaining_secs, 120);
        // Lifting forgets it all: the next flood is a first offence again.
        assert!(g.lift(a, back + ms(200)));
        assert!(!g.lift(a, back + ms(200)), "nothing left to lift");
        assert!(g.admit(a, back + ms(300)).pass());
        assert_eq!(g.ban(a, BanReason::Flood, back + ms(400)), Some(ms(60_000)));
    }

    #[test]
    fn exempt_sources_are_never_banned_and_nat_gateways_get_their_own_limit() {
        let g = guard(|s| {
            s.exempt = vec!["10.0.0.0/8".parse().unwrap()];
            s.nat_gateways = vec!["203.0.113.1/32".parse().unwrap()];
        });
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let c = calls.clone();
        g.set_exempt(Arc::new(move |ip| {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ip == IpAddr::from([198, 51, 100, 7])
        }));
        let t0 = Instant::now();
        for src in ["10.1.2.3", "198.51.100.7"] {
            let got = burst(&g, ip(src), t0, 5000, ms(1000));
            assert!(got.iter().all(|x| x.pass()), "{src}");
            assert_eq!(g.ban(ip(src), BanReason::Scanner, t0), None);
            assert_eq!(g.scanner(ip(src), t0), None);
        }
        // The predicate is asked when a source crosses the limit, then remembered.
        assert!(calls.load(std::sync::atomic::Ordering::Relaxed) <= 10);
        let nat = ip("203.0.113.1");
        let got = burst(&g, nat, t0, 301, ms(1000));
        assert!(got[..300].iter().all(|x| x.pass()));
        assert_eq!(got[300], Admit::Flooded, "over the NAT limit");
        assert_eq!(g.scanner(ip("203.0.113.1"), t0), None, "no scanner ban");
        assert_eq!(g.active_bans(t0 + ms(1000)), 1);
    }

    #[test]
    fn a_ban_in_force_is_not_counted_twice() {
        let g = guard(|_| {});
        let t0 = Instant::now();
        let a = ip("192.0.2.5");
        assert_eq!(
            g.ban(a, BanReason::Flood, t0),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            g.ban(a, BanReason::Scanner, t0 + ms(1000)),
            Some(Duration::from_secs(59))
        );
        let b = &g.bans(t0 + ms(1000))[0];
        assert_eq!((b.offences, b.reason), (1, BanReason::Flood));
    }

    #[test]
    fn a_scanner_is_banned_at_once() {
        let g = guard(|_| {});
        let t0 = Instant::now();
        assert!(g.is_scanner(b"friendly-scanner"));
        assert!(!g.is_scanner(b"baresip"));
        let s = ip("192.0.2.66");
        assert_eq!(g.scanner(s, t0), Some(Duration::from_secs(60)));
        assert_eq!(g.admit(s, t0 + ms(1)), Admit::Banned);
        assert!(g.is_banned(s, t0 + ms(2)));
        assert_eq!(g.bans(t0)[0].reason, BanReason::Scanner);
        let off = EdgeGuard::new(
            FloodSettings::default(),
            ScannerSettings {
                enabled: false,
                ..Default::default()
            },
        );
        assert!(!off.is_scanner(b"friendly-scanner"));
    }

    #[test]
    fn a_disabled_flood_defence_counts_nothing_but_bans_still_hold() {
        let g = guard(|s| s.enabled = false);
        let t0 = Instant::now();
        assert!(burst(&g, ip("192.0.2.5"), t0, 1000, ms(100))
            .iter()
            .all(|x| x.pass()));
        assert_eq!(g.tracked_sources(), 0);
        g.scanner(ip("192.0.2.5"), t0);
        assert_eq!(g.admit(ip("192.0.2.5"), t0), Admit::Banned);
    }

    #[test]
    fn spoofed_sources_cannot_grow_the_tables() {
        let g = guard(|s| {
            s.max_sources = 2048;
            s.max_bans = 1024;
        });
        let t0 = Instant::now();
        for n in 0..200_000u32 {
            let src = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + n));
            g.admit(src, t0);
            if n % 10 == 0 {
                g.scanner(src, t0);
            }
        }
        assert!(g.tracked_sources() <= 2048 + 16);
        assert!(g.ban_records() <= 1024 + 16);
        assert!(g.active_bans(t0) > 900);
    }

    #[test]
    fn ended_bans_are_swept_and_forgotten() {
        let g = guard(|s| {
            s.ban = Duration::from_secs(10);
            s.max_ban = Duration::from_secs(100);
        });
        let t0 = Instant::now();
        let secs = |n| t0 + Duration::from_secs(n);
        g.scanner(ip("192.0.2.1"), t0);
        g.scanner(ip("192.0.2.2"), secs(50));
        g.sweep(secs(55));
        assert_eq!(g.ban_records(), 2, "an ended ban is remembered");
        assert_eq!(g.active_bans(secs(55)), 1);
        g.sweep(secs(111));
        assert_eq!(g.ban_records(), 1, "the first one is forgotten");
        assert_eq!(g.bans(secs(111)).len(), 0);
        // Remembered: a repeat of the second one is its second offence.
        g.scanner(ip("192.0.2.2"), secs(120));
        assert_eq!(g.bans(secs(120))[0].offences, 2);
    }

    #[test]
    fn ipv6_sources_are_banned_by_slash_64() {
        let g = guard(|_| {});
        let t0 = Instant::now();
        g.scanner(ip("2001:db8:0:1::1"), t0);
        assert!(g.is_banned(ip("2001:db8:0:1::ffff"), t0));
        assert!(!g.is_banned(ip("2001:db8:0:2::1"), t0));
        let b = &g.bans(t0)[0];
        assert_eq!((b.source, b.prefix), (ip("2001:db8:0:1::"), 64));
        assert!(g.lift(ip("2001:db8:0:1::42"), t0));
    }

    #[test]
    fn connections_are_capped_per_source() {
        let g = guard(|s| {
            s.max_connections_per_source = 2;
            s.exempt = vec!["10.0.0.0/8".parse().unwrap()];
        });
        let a = ip("192.0.2.5");
        let s1 = g.open_connection(a).unwrap();
        let _s2 = g.open_connection(a).unwrap();
        assert!(g.open_connection(a).is_none());
        assert!(g.open_connection(ip("192.0.2.6")).is_some());
        drop(s1);
        assert!(g.open_connection(a).is_some());
        let exempt: Vec<_> = (0..5)
            .map(|_| g.open_connection(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(g.connections(ip("10.0.0.1")), 5);
        drop(exempt);
        assert_eq!(g.connections(ip("10.0.0.1")), 0);
    }
}
