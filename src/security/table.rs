//! A bounded table keyed by source address: a few LRU shards, each behind its own mutex.
//!
//! Bounded because the keys come from the network: a flood of spoofed UDP sources must not
//! grow memory. A full shard evicts its least recently used entry, in O(1) (a linked hash
//! map), so no request ever scans the table. The shard is picked with a keyed hash (std's
//! `RandomState`), so an attacker cannot aim its sources at one shard and evict the others'
//! entries faster than the table's share would allow.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use hashlink::LruCache;

/// Shards of tables at least this big (smaller ones are one shard, exactly bounded).
const SHARDED_FROM: usize = 1024;
const SHARDS: usize = 16;

/// A bounded LRU table from source keys to `V`.
pub struct SourceTable<V> {
    shards: Box<[Mutex<LruCache<IpAddr, V, RandomState>>]>,
    pick: RandomState,
    capacity: usize,
}

/// What [`SourceTable::upsert`] did to make room.
pub struct Upserted<'a, V> {
    pub value: &'a mut V,
    /// The entry evicted to make room, if the shard was full.
    pub evicted: Option<(IpAddr, V)>,
    /// Whether the entry was created by this call.
    pub created: bool,
}

impl<V> SourceTable<V> {
    /// A table of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> SourceTable<V> {
        let capacity = capacity.max(1);
        let shards = if capacity >= SHARDED_FROM { SHARDS } else { 1 };
        let per_shard = capacity.div_ceil(shards);
        SourceTable {
            shards: (0..shards)
                .map(|_| Mutex::new(LruCache::with_hasher(per_shard, RandomState::new())))
                .collect(),
            pick: RandomState::new(),
            capacity: per_shard * shards,
        }
    }

    /// Most entries the table holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The shard holding `key`, locked. A poisoned lock (a panic while it was held) is
    /// taken over: entries are plain counters, never left half-updated in a harmful way.
    pub fn shard(&self, key: &IpAddr) -> MutexGuard<'_, LruCache<IpAddr, V, RandomState>> {
        let i = if self.shards.len() == 1 {
            0
        } else {
            (self.pick.hash_one(key) as usize) % self.shards.len()
        };
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every shard in turn, locked (for listings and sweeps, never per request).
    pub fn for_each_shard(&self, mut f: impl FnMut(&mut LruCache<IpAddr, V, RandomState>)) {
        for s in self.shards.iter() {
            f(&mut s.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// Entries in the table.
    pub fn len(&self) -> usize {
        let mut n = 0;
        self.for_each_shard(|s| n += s.len());
        n
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Finds `key` in a locked shard (marking it recently used) or inserts `make()`, evicting
/// the least recently used entry first when the shard is full.
pub fn upsert<V>(
    shard: &mut LruCache<IpAddr, V, RandomState>,
    key: IpAddr,
    make: impl FnOnce() -> V,
) -> Upserted<'_, V> {
    let mut evicted = None;
    let mut created = false;
    if !shard.contains_key(&key) {
        if shard.len() >= shard.capacity() {
            evicted = shard.remove_lru();
        }
        shard.insert(key, make());
        created = true;
    }
    Upserted {
        value: shard
            .get_mut(&key)
            .expect("present: found or just inserted"),
        evicted,
        created,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_used() {
        let t: SourceTable<u32> = SourceTable::new(3);
        for n in 0..3 {
            let mut s = t.shard(&ip(n));
            assert!(upsert(&mut s, ip(n), || n).created);
        }
        // Touch 0, so 1 is the least recently used.
        assert_eq!(*upsert(&mut t.shard(&ip(0)), ip(0), || 99).value, 0);
        let mut s = t.shard(&ip(3));
        let up = upsert(&mut s, ip(3), || 3);
        assert_eq!(up.evicted, Some((ip(1), 1)));
        drop(s);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn a_million_spoofed_sources_stay_within_the_bound() {
        let t: SourceTable<u64> = SourceTable::new(4096);
        assert!(t.capacity() >= 4096 && t.capacity() < 4096 + 16);
        let mut evicted = 0;
        for n in 0..1_000_000 {
            let key = ip(n);
            let mut s = t.shard(&key);
            if upsert(&mut s, key, || 0).evicted.is_some() {
                evicted += 1;
            }
        }
        assert!(t.len() <= t.capacity());
        assert_eq!(evicted + t.len(), 1_000_000);
    }
}
