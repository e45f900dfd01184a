//! Placement of singletons over live nodes: rendezvous (highest random weight) hashing.
//!
//! Every node computes the same owner for a key from the same set of live nodes, so no
//! coordinator is needed to decide; etcd only arbitrates the moment of claiming. When a node
//! joins, only the keys it now wins move to it (about 1/n of them); when one leaves, only its
//! keys move, spread over the others. Pure code: no etcd, no actors.

/// A stable 64-bit score of (key, node): FNV-1a over both, then a 64-bit finaliser
/// (splitmix64) so that similar names do not give similar scores. Stable across processes,
/// builds and machines (unlike `std`'s `RandomState`).
pub fn score(key: &str, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain([0xff]).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The node that should own `key` among `nodes` (the live nodes that take singletons):
/// the highest score, ties broken by name. None when there is no node.
pub fn owner<'a, S: AsRef<str>>(key: &str, nodes: &'a [S]) -> Option<&'a str> {
    nodes
        .iter()
        .map(AsRef::as_ref)
        .max_by(|a, b| score(key, a).cmp(&score(key, b)).then_with(|| b.cmp(a)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("queue/t{}/q{i}", i % 7)).collect()
    }

    #[test]
    fn every_node_agrees_whatever_the_order() {
        let a = ["n1", "n2", "n3"];
        let b = ["n3", "n1", "n2"];
        for k in keys(200) {
            assert_eq!(owner(&k, &a), owner(&k, &b));
        }
        assert_eq!(owner::<&str>("trunk/x", &[]), None);
        assert_eq!(owner("trunk/x", &["only"]), Some("only"));
    }

    #[test]
    fn spread_is_even() {
        let nodes = ["n1", "n2", "n3"];
        let mut count: HashMap<&str, usize> = HashMap::new();
        for k in keys(3000) {
            *count.entry(owner(&k, &nodes).unwrap()).or_default() += 1;
        }
        for n in nodes {
            let c = count[n];
            assert!((850..=1150).contains(&c), "{n} owns {c} of 3000");
        }
    }

    #[test]
    fn a_leaving_node_moves_only_its_keys_and_a_joining_one_takes_a_fair_share() {
        let three = ["n1", "n2", "n3"];
        let two = ["n1", "n3"];
        let ks = keys(3000);
        let mut moved_to_joiner = 0;
        for k in &ks {
            let before = owner(k, &three).unwrap();
            let after = owner(k, &two).unwrap();
            if before != "n2" {
                assert_eq!(before, after, "{k} moved although its owner stayed");
            }
            if before == "n2" {
                moved_to_joiner += 1; // n2 rejoining takes exactly these back
            }
        }
        assert!((850..=1150).contains(&moved_to_joiner));
    }

    #[test]
    fn scores_are_stable_across_builds() {
        // Pinned: a change here would move every singleton in a rolling upgrade.
        // (The values were computed independently, from the algorithm's description.)
        assert_eq!(score("trunk/a", "n1"), 0x196a_dbc4_84da_e262);
        assert_eq!(score("tenant/red", "n2"), 0x5604_f40a_d5aa_4265);
        assert_ne!(score("trunk/a", "n1"), score("trunk/a", "n2"));
        assert_ne!(score("trunk/ab", "n1"), score("trunk/a", "bn1"));
    }
}
