//! A trunk's channel and CPS limits hold for the whole cluster, not per node.
//!
//! Calls seize trunk channels on the node their signalling runs on, with no message per
//! seizure: each node gets a part of `max_channels` (and of `max_cps`), and the parts never
//! add up to more than the limit, also while nodes join and leave:
//!
//! - every live node's *share* is the limit divided by the live nodes (the remainder to the
//!   first names), so the shares add up to the limit exactly;
//! - every node publishes how many channels it uses (etcd `usage/<node>`, under its lease,
//!   at most every half second);
//! - a node's *cap* is its share, lowered so that it plus what each other node may hold
//!   (the larger of its usage and its share) stays within the limit. A node above its new
//!   share after a join keeps its calls but takes no new ones; the joiner starts using its
//!   share as the others come down to theirs;
//! - a dead node's last published usage still counts for `channel_hold_secs`: its calls are
//!   gone for the switch, but the carrier may count them until its own timers end them.
//!
//! Pure code; the membership task feeds it and applies the caps.

use std::collections::BTreeMap;

/// Each live node's share of `limit`; `live` sorted by name.
pub fn shares<'a>(limit: u32, live: &[&'a str]) -> BTreeMap<&'a str, u32> {
    let n = live.len() as u32;
    if n == 0 {
        return BTreeMap::new();
    }
    live.iter()
        .enumerate()
        .map(|(i, name)| {
            let extra = u32::from((i as u32) < limit % n);
            (*name, limit / n + extra)
        })
        .collect()
}

/// This node's cap: its share, lowered so that, with what every other live node may hold
/// (`max(usage, share)`) and what dead nodes held (`held`), the limit is not exceeded.
pub fn cap(limit: u32, me: &str, live: &[&str], usage: &BTreeMap<&str, u32>, held: u32) -> u32 {
    let shares = shares(limit, live);
    let mine = shares.get(me).copied().unwrap_or(0);
    let others: u32 = shares
        .iter()
        .filter(|(n, _)| **n != me)
        .map(|(n, share)| usage.get(n).copied().unwrap_or(0).max(*share))
        .sum::<u32>()
        .saturating_add(held);
    mine.min(limit.saturating_sub(others))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_limit() {
        let s = shares(10, &["a", "b", "c"]);
        assert_eq!(s.values().sum::<u32>(), 10);
        assert_eq!((s["a"], s["b"], s["c"]), (4, 3, 3));
        assert_eq!(shares(2, &["a", "b", "c"]).values().sum::<u32>(), 2);
        assert!(shares(5, &[]).is_empty());
    }

    #[test]
    fn a_joiner_waits_for_the_others_to_come_down() {
        // Two nodes used 15 + 15 of 30; a third joins: shares are 10 each.
        let live = ["a", "b", "c"];
        let usage = BTreeMap::from([("a", 15), ("b", 15), ("c", 0)]);
        assert_eq!(cap(30, "c", &live, &usage, 0), 0);
        assert_eq!(cap(30, "a", &live, &usage, 0), 5); // below its usage: no new calls
                                                       // a came down to 12, b to 10: c may use 8 now, its full 10 later.
        let usage = BTreeMap::from([("a", 12), ("b", 10), ("c", 0)]);
        assert_eq!(cap(30, "c", &live, &usage, 0), 8);
        let usage = BTreeMap::from([("a", 10), ("b", 10), ("c", 0)]);
        assert_eq!(cap(30, "c", &live, &usage, 0), 10);
    }

    #[test]
    fn a_dead_nodes_calls_are_held_then_released() {
        let live = ["a", "b"];
        let usage = BTreeMap::from([("a", 10), ("b", 10)]);
        // c died holding 10 of 30: a and b, at 10 each, take no new call (each must leave
        // the other room to reach its share).
        assert_eq!(cap(30, "a", &live, &usage, 10), 5);
        // Once c's hold ends, each may use 15.
        assert_eq!(cap(30, "a", &live, &usage, 0), 15);
    }

    #[test]
    fn caps_never_add_up_to_more_than_the_limit() {
        // Whatever the published usages, caps (plus what each node already uses above its
        // cap) never exceed the limit.
        let live = ["a", "b", "c"];
        for ua in 0..=12 {
            for ub in 0..=12 {
                let usage = BTreeMap::from([("a", ua), ("b", ub), ("c", 0)]);
                let total: u32 = live
                    .iter()
                    .map(|n| cap(12, n, &live, &usage, 0).max(usage[n]))
                    .sum();
                assert!(total <= 12 || ua + ub > 12, "{ua} {ub}: {total}");
            }
        }
    }
}
