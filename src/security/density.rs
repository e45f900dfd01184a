//! Request density per source over a sliding window, in O(1) memory per source.
//!
//! Kamailio's `pike` counts a source's requests per `sampling_time_unit` (2 s by default)
//! and flags it past `reqs_density_per_unit` (30). A fixed window lets a source send twice
//! the limit across a boundary; here the count is a sliding window estimated from two
//! buckets (the current one and the one before, weighted by how much of it still lies in
//! the window), the approach of sliding-window rate limiters: two counters and a start time
//! per source, no per-request history.

use std::time::{Duration, Instant};

/// The hits of one source: the current bucket (from `start`, one window long) and the
/// previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    start: Instant,
    current: u32,
    previous: u32,
}

impl Window {
    /// No hits yet; the first bucket starts at `now`.
    pub fn new(now: Instant) -> Window {
        Window {
            start: now,
            current: 0,
            previous: 0,
        }
    }

    /// Counts one message at `now` and returns the estimated number of messages in the
    /// last `len` (this one included).
    pub fn hit(&mut self, now: Instant, len: Duration) -> u32 {
        self.roll(now, len);
        self.current = self.current.saturating_add(1);
        self.estimate(now, len)
    }

    /// The estimated number of messages in the `len` before `now`, without counting one.
    pub fn estimate(&self, now: Instant, len: Duration) -> u32 {
        let mut w = *self;
        w.roll(now, len);
        let len_ns = len.as_nanos().max(1);
        let into = now
            .saturating_duration_since(w.start)
            .as_nanos()
            .min(len_ns);
        // The part of the previous bucket that still lies in the window.
        let previous = u128::from(w.previous) * (len_ns - into) / len_ns;
        u32::try_from(previous)
            .unwrap_or(u32::MAX)
            .saturating_add(w.current)
    }

    /// Moves the buckets on so that `now` falls in the current one.
    fn roll(&mut self, now: Instant, len: Duration) {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= len * 2 {
            // Silent for a whole window: nothing of the past is left in it.
            self.previous = 0;
            self.current = 0;
            self.start = now;
        } else if elapsed >= len {
            self.previous = self.current;
            self.current = 0;
            self.start += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(2);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_counts_every_message() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        for i in 1..=40u32 {
            assert_eq!(w.hit(t0 + ms(u64::from(i)), W), i);
        }
    }

    #[test]
    fn a_steady_rate_under_the_limit_stays_under_it() {
        // 10 per second for a minute: the 2 s window holds about 20, never much more.
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        let mut worst = 0;
        for i in 0..600u64 {
            worst = worst.max(w.hit(t0 + ms(i * 100), W));
        }
        assert!((19..=21).contains(&worst), "{worst}");
    }

    #[test]
    fn the_previous_bucket_fades_out_across_the_window() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        for _ in 0..30 {
            w.hit(t0, W);
        }
        // Half-way into the next bucket, half of the previous one still counts.
        assert_eq!(w.estimate(t0 + ms(3000), W), 15);
        // A boundary gives no fresh allowance: 30 more right after it are well over 30.
        let mut w2 = w;
        let mut last = 0;
        for _ in 0..30 {
            last = w2.hit(t0 + ms(2001), W);
        }
        assert!(last >= 59, "{last}");
        // After two silent windows nothing is left.
        assert_eq!(w.estimate(t0 + ms(4000), W), 0);
        assert_eq!(w.hit(t0 + ms(9000), W), 1);
    }

    #[test]
    fn an_earlier_instant_from_a_racing_thread_is_harmless() {
        let t0 = Instant::now() + ms(10_000);
        let mut w = Window::new(t0);
        w.hit(t0, W);
        assert_eq!(w.hit(t0 - ms(5), W), 2);
    }
}
