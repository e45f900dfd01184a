//! Call attempts per second, as `GET /status` (and `switchyard ctl status`) shows them: one
//! counter per wall-clock second in a small ring, lock-free, so admitting a call costs two
//! relaxed atomic operations and no lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds kept (one more than averaged, so the second under way is never counted).
const SLOTS: usize = 12;
/// Seconds averaged over.
pub const WINDOW_SECS: u64 = 10;

/// The wall clock in unix seconds.
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Calls admitted, per second of the last [`SLOTS`].
#[derive(Debug, Default)]
pub struct CallRate {
    /// Per slot: the second it counts (unix seconds) in the high 32 bits, the count in the
    /// low 32, so a slot is claimed for a new second and counted in one atomic word.
    slots: [AtomicU64; SLOTS],
}

impl CallRate {
    pub fn new() -> CallRate {
        CallRate::default()
    }

    /// One call admitted at `now_secs` (unix seconds).
    pub fn count(&self, now_secs: u64) {
        let slot = &self.slots[now_secs as usize % SLOTS];
        let stamp = (now_secs & 0xffff_ffff) << 32;
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let next = if cur & !0xffff_ffff == stamp {
                cur.saturating_add(1)
            } else {
                stamp | 1
            };
            match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Calls per second over the [`WINDOW_SECS`] whole seconds before `now_secs`.
    pub fn per_second(&self, now_secs: u64) -> f64 {
        let mut total = 0u64;
        for back in 1..=WINDOW_SECS {
            let sec = now_secs.saturating_sub(back);
            let v = self.slots[sec as usize % SLOTS].load(Ordering::Relaxed);
            if v >> 32 == sec & 0xffff_ffff {
                total += v & 0xffff_ffff;
            }
        }
        total as f64 / WINDOW_SECS as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_whole_seconds_and_forgets_old_ones() {
        let r = CallRate::new();
        for _ in 0..30 {
            r.count(1000);
        }
        for _ in 0..10 {
            r.count(1001);
        }
        r.count(1002); // the second under way: not counted yet
        assert_eq!(r.per_second(1002), 4.0);
        assert_eq!(r.per_second(1011), 4.0);
        // 1000 left the window; its slot reused for 1012 starts again from one.
        assert_eq!(r.per_second(1012), 1.1);
        r.count(1012);
        assert_eq!(r.per_second(1013), 1.2);
        assert_eq!(r.per_second(5000), 0.0);
    }
}
