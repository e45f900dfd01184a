//! The RTP port pool: even ports of the configured range, each leg taking an even port for
//! RTP and the odd one above it for RTCP (RFC 3550 §11). Ports are handed out least recently
//! used first, so a port freed by one call is not reused at once (late packets of the old
//! call would reach the new one).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Free even ports of a range, shared by every relay thread.
#[derive(Debug)]
pub struct PortPool {
    free: Mutex<VecDeque<u16>>,
    capacity: usize,
    in_use: AtomicUsize,
}

impl PortPool {
    /// A pool over `first..=last` (only even RTP ports whose RTCP port is also in range).
    pub fn new(first: u16, last: u16) -> PortPool {
        let start = first + (first % 2);
        let free: VecDeque<u16> = (start..last).step_by(2).collect();
        PortPool {
            capacity: free.len(),
            free: Mutex::new(free),
            in_use: AtomicUsize::new(0),
        }
    }

    /// Takes the least recently used free RTP port (its RTCP port is `port + 1`).
    pub fn take(&self) -> Option<u16> {
        let port = self.lock().pop_front()?;
        self.in_use.fetch_add(1, Ordering::Relaxed);
        Some(port)
    }

    /// Gives a port back (to the end of the line).
    pub fn give(&self, port: u16) {
        self.lock().push_back(port);
        self.in_use.fetch_sub(1, Ordering::Relaxed);
    }

    /// Ports (pairs) handed out and not given back.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Pairs the range holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<u16>> {
        // A panic while holding this lock leaves a consistent deque (push/pop only).
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_even_pairs_inside_the_range_least_recently_used_first() {
        let pool = PortPool::new(20001, 20009);
        assert_eq!(pool.capacity(), 4); // 20002, 20004, 20006, 20008 (20009 is its RTCP)
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert_eq!((a, b), (20002, 20004));
        assert_eq!(pool.in_use(), 2);
        pool.give(a);
        assert_eq!(pool.take(), Some(20006));
        assert_eq!(pool.take(), Some(20008));
        assert_eq!(pool.take(), Some(20002), "the freed port comes back last");
        assert_eq!(pool.take(), None);
        assert_eq!(pool.in_use(), 4);
    }
}
