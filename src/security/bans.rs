//! Bans: why a source was shut out, until when, and how long the next ban lasts.
//!
//! A first offence is banned for `ban`; each repeat while the source is remembered doubles
//! it, up to `max_ban`. A source is remembered for `max_ban` after its ban ends (so a
//! flooder that waits out a short ban and starts again gets a longer one), then forgotten.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Why a source was banned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BanReason {
    /// More messages than the density limit allows.
    Flood,
    /// A request with a scanner's User-Agent.
    Scanner,
}

impl BanReason {
    pub fn label(self) -> &'static str {
        match self {
            BanReason::Flood => "flood",
            BanReason::Scanner => "scanner",
        }
    }
}

/// One source's ban record (kept after the ban ends while it is remembered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ban {
    pub reason: BanReason,
    pub since: Instant,
    pub until: Instant,
    /// Bans in a row (1 for the first).
    pub offences: u32,
    /// Packets and connections dropped during this ban.
    pub dropped: u64,
    /// Whether the ban is counted in the current-bans gauge (cleared when it ends).
    pub counted: bool,
}

impl Ban {
    pub fn active(&self, now: Instant) -> bool {
        now < self.until
    }

    /// Whether the record can be dropped: its ban ended more than `memory` ago.
    pub fn forgotten(&self, now: Instant, memory: Duration) -> bool {
        now >= self.until + memory
    }
}

/// How long ban number `offences` (1 for the first) lasts: `base` doubled per repeat,
/// at most `max`.
pub fn ban_length(offences: u32, base: Duration, max: Duration) -> Duration {
    let doublings = offences.saturating_sub(1).min(31);
    base.saturating_mul(1u32 << doublings).min(max)
}

/// The record of a new ban of a source last seen as `previous` (None: never, or
/// forgotten).
pub fn next_ban(
    previous: Option<&Ban>,
    reason: BanReason,
    now: Instant,
    base: Duration,
    max: Duration,
) -> Ban {
    let offences = match previous {
        Some(b) if !b.forgotten(now, max) => b.offences.saturating_add(1),
        _ => 1,
    };
    Ban {
        reason,
        since: now,
        until: now + ban_length(offences, base, max),
        offences,
        dropped: 0,
        counted: previous.is_some_and(|b| b.counted),
    }
}

/// A ban as the API lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BanView {
    /// The banned address (an IPv6 /64 is shown as its first address).
    pub source: IpAddr,
    /// 32 for an IPv4 address, 64 for an IPv6 prefix.
    pub prefix: u8,
    pub reason: BanReason,
    /// When it ends, Unix milliseconds.
    pub until_ms: u64,
    /// Whole seconds left (rounded up).
    pub remaining_secs: u64,
    /// Bans in a row, this one included.
    pub offences: u32,
    /// Packets and connections dropped during this ban.
    pub dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn bans_double_up_to_the_cap() {
        let lengths: Vec<u64> = (1..=8)
            .map(|n| ban_length(n, S(60), S(3600)).as_secs())
            .collect();
        assert_eq!(lengths, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(ban_length(u32::MAX, S(60), S(3600)), S(3600));
        assert_eq!(ban_length(0, S(60), S(3600)), S(60));
        assert_eq!(ban_length(1, S(60), S(30)), S(30), "the cap wins");
    }

    #[test]
    fn a_repeat_is_remembered_for_the_longest_ban_then_forgotten() {
        let t0 = Instant::now();
        let first = next_ban(None, BanReason::Flood, t0, S(60), S(600));
        assert_eq!((first.offences, first.until), (1, t0 + S(60)));
        assert!(first.active(t0 + S(59)) && !first.active(t0 + S(60)));
        // Back 100 s after the ban ended: a repeat, banned twice as long.
        let second = next_ban(Some(&first), BanReason::Flood, t0 + S(160), S(60), S(600));
        assert_eq!((second.offences, second.until), (2, t0 + S(160) + S(120)));
        // Back only after the memory ran out: a first offence again.
        let later = t0 + S(280) + S(600);
        assert!(second.forgotten(later, S(600)));
        let fresh = next_ban(Some(&second), BanReason::Scanner, later, S(60), S(600));
        assert_eq!((fresh.offences, fresh.reason), (1, BanReason::Scanner));
    }
}
