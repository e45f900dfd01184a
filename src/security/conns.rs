//! Concurrent TCP/TLS connections per source: a count per source key, held by a slot that
//! gives its connection back when dropped. Entries exist only while a source has
//! connections open, so the table is bounded by the node's connection limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open inbound connections per source key.
#[derive(Debug, Default)]
pub struct ConnCounts {
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One open connection of a source; dropping it gives the connection back.
#[derive(Debug)]
pub struct ConnSlot {
    counts: Arc<ConnCounts>,
    key: IpAddr,
}

impl ConnCounts {
    /// Opens a connection for `key` if it has fewer than `cap` open, or whatever its count
    /// when `uncapped` (asked only at the cap, so exemptions are looked up rarely).
    pub fn open(
        self: &Arc<Self>,
        key: IpAddr,
        cap: u32,
        uncapped: impl FnOnce() -> bool,
    ) -> Option<ConnSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= cap && !uncapped() {
            if *n == 0 {
                open.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(ConnSlot {
            counts: self.clone(),
            key,
        })
    }

    /// Connections `key` has open.
    pub fn count(&self, key: IpAddr) -> u32 {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&key).copied().unwrap_or(0)
    }

    /// Sources with connections open.
    pub fn sources(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_cap_connections_and_each_close_frees_one() {
        let counts = Arc::new(ConnCounts::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let mut held: Vec<ConnSlot> = (0..3)
            .map(|_| counts.open(a, 3, || false).unwrap())
            .collect();
        assert!(counts.open(a, 3, || false).is_none(), "over the cap");
        assert!(counts.open(b, 3, || false).is_some(), "another source");
        let extra = counts.open(a, 3, || true);
        assert!(extra.is_some(), "an exempt source passes the cap");
        drop(extra);
        held.pop();
        assert_eq!(counts.count(a), 2);
        assert!(counts.open(a, 3, || false).is_some());
        held.clear();
        assert_eq!(counts.sources(), 0, "no entry is left behind");
        assert!(counts.open(a, 0, || false).is_none());
        assert_eq!(counts.sources(), 0);
    }
}
