//! Call quality: RFC 3550 receive statistics (loss, interarrival jitter), round-trip
//! time from RTCP report blocks, and an E-model (ITU-T G.107) MOS estimate.
//!
//! The relay keeps one [`RecvStats`] per received stream and feeds it every packet, so
//! [`RecvStats::on_packet`] is a handful of integer and float operations with no
//! allocation. The figures end up in RTCP receiver reports the switch sends, in the CDR
//! ([`LegQuality`]) and in the trunk actor's quality score, which is why the MOS is a
//! documented formula rather than a guess: trunks are compared on it.

use crate::media::rtp::ReportBlock;

/// Sequence-number modulus.
const RTP_SEQ_MOD: u32 = 1 << 16;
/// A forward jump larger than this is a restart or garbage, not loss (RFC 3550 A.1).
const MAX_DROPOUT: u16 = 3000;
/// A backward jump up to this is a late (reordered or duplicate) packet (RFC 3550 A.1).
const MAX_MISORDER: u16 = 100;

/// Receive statistics for one RTP stream (RFC 3550 A.1 sequence tracking, A.3 loss,
/// A.8 jitter). The probation period of A.1 is skipped: the first packet validates the
/// stream, since the relay only feeds packets from a latched, negotiated source.
#[derive(Clone, Debug, Default)]
pub struct RecvStats {
    initialized: bool,
    max_seq: u16,
    /// Sequence-number wraps, already shifted left by 16.
    cycles: u32,
    base_seq: u32,
    /// The sequence number after a large jump; a packet with it confirms a restart.
    bad_seq: u32,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Previous packet's arrival (ms) and RTP timestamp, for the transit difference.
    last_arrival_ms: f64,
    last_rtp_ts: u32,
    /// Interarrival jitter in timestamp units (A.8's J, kept unscaled as a float).
    jitter: f64,
}

impl RecvStats {
    /// Empty statistics; the first packet initialises them.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one packet: its sequence number, RTP timestamp, arrival time in
    /// milliseconds (any monotonic origin) and the payload's clock rate (8000 for G.711).
    pub fn on_packet(&mut self, seq: u16, rtp_ts: u32, arrival_ms: f64, clock_rate: u32) {
        if !self.initialized {
            self.init_seq(seq);
            self.initialized = true;
            self.received = 1;
            self.last_arrival_ms = arrival_ms;
            self.last_rtp_ts = rtp_ts;
            return;
        }
        if !self.update_seq(seq) {
            return;
        }
        self.received += 1;
        // A.8: D = (Rj - Ri) - (Sj - Si) in timestamp units; the RTP difference is taken
        // as signed so timestamp wrap and reordering give the right sign.
        let arrival_delta = (arrival_ms - self.last_arrival_ms) * clock_rate as f64 / 1000.0;
        let ts_delta = rtp_ts.wrapping_sub(self.last_rtp_ts) as i32 as f64;
        let d = (arrival_delta - ts_delta).abs();
        self.jitter += (d - self.jitter) / 16.0;
        self.last_arrival_ms = arrival_ms;
        self.last_rtp_ts = rtp_ts;
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = seq as u32;
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1; // so seq == bad_seq is false
        self.cycles = 0;
        self.received = 0;
        self.expected_prior = 0;
        self.received_prior = 0;
    }

    /// RFC 3550 A.1 `update_seq` without probation; `false` if the packet is not counted.
    fn update_seq(&mut self, seq: u16) -> bool {
        let udelta = seq.wrapping_sub(self.max_seq);
        if udelta < MAX_DROPOUT {
            // In order, with a permissible gap.
            if seq < self.max_seq {
                self.cycles += RTP_SEQ_MOD;
            }
            self.max_seq = seq;
        } else if udelta as u32 <= RTP_SEQ_MOD - MAX_MISORDER as u32 {
            // A very large jump: accept it as a restart only if the next packet follows it.
            if seq as u32 == self.bad_seq {
                self.init_seq(seq);
            } else {
                self.bad_seq = (seq as u32 + 1) & (RTP_SEQ_MOD - 1);
                return false;
            }
        }
        // Otherwise a duplicate or reordered packet: counted, max unchanged.
        true
    }

    /// Packets received (duplicates included, as RFC 3550 counts them).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets expected: extended highest sequence number minus the first, plus one.
    pub fn expected(&self) -> u64 {
        if !self.initialized {
            return 0;
        }
        (self.extended_max() as u64 + 1).saturating_sub(self.base_seq as u64)
    }

    /// Packets lost: expected minus received; negative when duplicates arrived.
    pub fn lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    /// Cumulative fraction lost, 0.0..=1.0 (0 when duplicates outnumber losses).
    pub fn loss_fraction(&self) -> f64 {
        let expected = self.expected();
        if expected == 0 {
            return 0.0;
        }
        (self.lost() as f64 / expected as f64).clamp(0.0, 1.0)
    }

    /// Interarrival jitter in milliseconds.
    pub fn jitter_ms(&self, clock_rate: u32) -> f64 {
        if clock_rate == 0 {
            return 0.0;
        }
        self.jitter * 1000.0 / clock_rate as f64
    }

    /// Extended highest sequence number received (wrap count << 16 | highest seq).
    pub fn extended_max(&self) -> u32 {
        self.cycles.wrapping_add(self.max_seq as u32)
    }

    /// A report block for an RR or SR about this stream (source `ssrc`), with the
    /// fraction lost since the previous call (RFC 3550 A.3); `lsr`/`dlsr` are passed
    /// through from the last SR received from that source.
    pub fn report_block(&mut self, ssrc: u32, lsr: u32, dlsr: u32) -> ReportBlock {
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: self.lost().clamp(-0x80_0000, 0x7F_FFFF) as i32,
            highest_seq: self.extended_max(),
            jitter: self.jitter as u32,
            lsr,
            dlsr,
        }
    }
}

/// Round-trip time from a report block (RFC 3550 §6.4.1): `A - LSR - DLSR`, where `A`
/// is the middle 32 bits of the NTP time the block arrived, all in 1/65536 s.
/// `None` when the peer has not received an SR yet (`lsr == 0`) or the result is
/// negative (clocks or a bogus block).
pub fn rtt_ms(arrival_ntp_middle: u32, lsr: u32, dlsr: u32) -> Option<f64> {
    if lsr == 0 {
        return None;
    }
    let rtt = arrival_ntp_middle.wrapping_sub(lsr).wrapping_sub(dlsr) as i32;
    if rtt < 0 {
        return None;
    }
    Some(rtt as f64 * 1000.0 / 65536.0)
}

/// G.711 packet-loss robustness factor: G.113 Appendix I gives 25.1 for G.711 with
/// packet-loss concealment and 4.3 without. 25.1 is used because the phones and
/// gateways at the ends of a relayed call conceal loss; the switch only relays.
pub const BPL_G711: f64 = 25.1;

/// Estimated MOS (listening quality, 1.0..=4.5) of a G.711 stream from the ITU-T G.107
/// E-model, simplified as in Cole & Rosenbluth (2001):
///
/// - `d = rtt_ms / 2 + 2 * jitter_ms + 10` — one-way delay: half the round trip, a
///   jitter buffer of twice the jitter, 10 ms of codec packetisation;
/// - `Id = 0.024 d + 0.11 (d - 177.3) H(d - 177.3)` with `H` the unit step;
/// - `Ie_eff = Ie + (95 - Ie) Ppl / (Ppl + Bpl)` with `Ie = 0` for G.711, `Ppl` the
///   loss in percent (random loss, BurstR = 1) and `Bpl =` [`BPL_G711`] `= 25.1`;
/// - `R = 93.2 - Id - Ie_eff` (G.107's default R0 - Is, no advantage factor);
/// - `MOS = 1 + 0.035 R + 7e-6 R (R - 60) (100 - R)`, clamped to 1.0..=4.5 (1.0 for
///   `R <= 0`, 4.5 for `R >= 100`).
///
/// A perfect network gives R ≈ 93 and MOS ≈ 4.4, G.711's ceiling.
pub fn mos(loss_fraction: f64, jitter_ms: f64, rtt_ms: f64) -> f64 {
    let ppl = loss_fraction.clamp(0.0, 1.0) * 100.0;
    let d = rtt_ms.max(0.0) / 2.0 + 2.0 * jitter_ms.max(0.0) + 10.0;
    let id = 0.024 * d + if d > 177.3 { 0.11 * (d - 177.3) } else { 0.0 };
    let ie_eff = 95.0 * ppl / (ppl + BPL_G711);
    let r = 93.2 - id - ie_eff;
    if r.is_nan() || r <= 0.0 {
        return 1.0;
    }
    if r >= 100.0 {
        return 4.5;
    }
    let m = 1.0 + 0.035 * r + 7.0e-6 * r * (r - 60.0) * (100.0 - r);
    m.clamp(1.0, 4.5)
}

/// One leg's measured quality, as stored in the CDR and fed to the trunk's score.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LegQuality {
    /// Packets received from the leg.
    pub packets: u64,
    /// Packets lost (negative with duplicates).
    pub lost: i64,
    /// Loss fraction 0.0..=1.0.
    pub loss: f64,
    /// Interarrival jitter in milliseconds.
    pub jitter_ms: f64,
    /// Round-trip time, if RTCP gave one.
    pub rtt_ms: Option<f64>,
    /// Estimated MOS (see [`mos`]).
    pub mos: f64,
}

impl LegQuality {
    /// The quality of a stream from its statistics and an optional RTT (taken as 0
    /// for the MOS when unknown).
    pub fn from_stats(stats: &RecvStats, clock_rate: u32, rtt_ms: Option<f64>) -> Self {
        let loss = stats.loss_fraction();
        let jitter_ms = stats.jitter_ms(clock_rate);
        LegQuality {
            packets: stats.received(),
            lost: stats.lost(),
            loss,
            jitter_ms,
            rtt_ms,
            mos: mos(loss, jitter_ms, rtt_ms.unwrap_or(0.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds packets `seqs` 20 ms apart in time and timestamp (160 samples at 8 kHz).
    fn feed(stats: &mut RecvStats, seqs: impl IntoIterator<Item = u16>) {
        for (i, seq) in seqs.into_iter().enumerate() {
            stats.on_packet(seq, (seq as u32).wrapping_mul(160), i as f64 * 20.0, 8000);
        }
    }

    #[test]
    fn clean_stream() {
        let mut s = RecvStats::new();
        assert_eq!((s.received(), s.expected(), s.lost()), (0, 0, 0));
        assert_eq!(s.loss_fraction(), 0.0);
        feed(&mut s, 1000..1100);
        assert_eq!((s.received(), s.expected(), s.lost()), (100, 100, 0));
        assert_eq!(s.extended_max(), 1099);
        assert!(s.jitter_ms(8000) < 1e-9);
    }

    #[test]
    fn sequence_wrap_extends_max() {
        let mut s = RecvStats::new();
        feed(&mut s, (65500..=65535).chain(0..100));
        assert_eq!(s.received(), 136);
        assert_eq!(s.expected(), 136);
        assert_eq!(s.extended_max(), 65536 + 99);
        assert_eq!(s.lost(), 0);
    }

    #[test]
    fn loss_reorder_and_duplicates() {
        let mut s = RecvStats::new();
        // 0..100 with every 10th missing: 10 lost of 100.
        feed(&mut s, (0..100).filter(|i| i % 10 != 5));
        assert_eq!(s.expected(), 100);
        assert_eq!(s.lost(), 10);
        assert!((s.loss_fraction() - 0.10).abs() < 1e-9);

        let mut s = RecvStats::new();
        feed(&mut s, [0, 1, 3, 2, 4, 4, 4, 5]);
        assert_eq!(s.expected(), 6);
        assert_eq!(s.received(), 8);
        assert_eq!(s.lost(), -2);
        assert_eq!(s.loss_fraction(), 0.0);
        assert_eq!(s.extended_max(), 5);
    }

    #[test]
    fn big_jump_needs_confirmation_then_restarts() {
        let mut s = RecvStats::new();
        feed(&mut s, 0..10);
        s.on_packet(30_000, 0, 500.0, 8000);
        assert_eq!(s.received(), 10, "a lone wild packet is not counted");
        s.on_packet(30_001, 160, 520.0, 8000);
        // Restart: the stream is re-based on 30001.
        assert_eq!(s.extended_max(), 30_001);
        assert_eq!(s.expected(), 1);
        assert_eq!(s.lost(), 0);
    }

    #[test]
    fn jitter_follows_a8() {
        let mut s = RecvStats::new();
        // Every other packet arrives 20 ms late: each transit difference is 20 ms
        // (160 units) one way or the other, so J converges to 20 ms.
        for i in 0..2000u32 {
            let offset = if i % 2 == 0 { 0.0 } else { 20.0 };
            s.on_packet(i as u16, i * 160, i as f64 * 20.0 + offset, 8000);
        }
        let j = s.jitter_ms(8000);
        assert!((j - 20.0).abs() < 0.5, "jitter {j}");
        // Timestamp wrap does not spike the jitter.
        let mut s = RecvStats::new();
        for i in 0..100u32 {
            let ts = (u32::MAX - 800).wrapping_add(i * 160);
            s.on_packet(i as u16, ts, i as f64 * 20.0, 8000);
        }
        assert!(s.jitter_ms(8000) < 1e-6);
    }

    #[test]
    fn report_block_fraction_since_last_report() {
        let mut s = RecvStats::new();
        feed(&mut s, (0..100).filter(|i| i % 4 != 2)); // 25 of 100 lost
        let b = s.report_block(42, 7, 9);
        assert_eq!(b.ssrc, 42);
        assert_eq!(b.fraction_lost, 64);
        assert_eq!(b.cumulative_lost, 25);
        assert_eq!(b.highest_seq, 99);
        assert_eq!((b.lsr, b.dlsr), (7, 9));
        // Next interval is clean: fraction 0, cumulative unchanged.
        for (i, seq) in (100..200u16).enumerate() {
            s.on_packet(seq, seq as u32 * 160, 2000.0 + i as f64 * 20.0, 8000);
        }
        let b2 = s.report_block(42, 0, 0);
        assert_eq!(b2.fraction_lost, 0);
        assert_eq!(b2.cumulative_lost, b.cumulative_lost);
        assert_eq!(b2.highest_seq, 199);
    }

    #[test]
    fn rtt_from_report_block() {
        // LSR at 10 s, DLSR 1 s, arrival 11.25 s -> 250 ms.
        let lsr = 10 << 16;
        let dlsr = 1 << 16;
        let a = (11 << 16) + (1 << 14);
        let rtt = rtt_ms(a, lsr, dlsr).unwrap();
        assert!((rtt - 250.0).abs() < 1e-6, "{rtt}");
        assert_eq!(rtt_ms(a, 0, dlsr), None);
        assert_eq!(rtt_ms(lsr, lsr, dlsr), None, "negative");
        // Across the 32-bit wrap of the middle bits.
        let lsr = u32::MAX - (1 << 15);
        assert!((rtt_ms(1 << 15, lsr, 0).unwrap() - 1000.0).abs() < 0.1);
    }

    #[test]
    fn mos_values_and_monotonicity() {
        let perfect = mos(0.0, 0.0, 0.0);
        assert!((perfect - 4.4).abs() < 0.05, "{perfect}");
        let lossy = mos(0.05, 0.0, 0.0);
        assert!(lossy < perfect - 0.3, "5 % loss {lossy} vs {perfect}");
        assert!(mos(1.0, 500.0, 2000.0) >= 1.0);
        assert_eq!(mos(1.0, 500.0, 2000.0), 1.0);
        let grid = |i: usize| i as f64;
        let mut prev = f64::INFINITY;
        for i in 0..=100 {
            let m = mos(grid(i) / 100.0, 5.0, 50.0);
            assert!(m <= prev, "loss not monotone at {i}");
            prev = m;
        }
        prev = f64::INFINITY;
        for i in 0..=300 {
            let m = mos(0.01, grid(i), 50.0);
            assert!(m <= prev, "jitter not monotone at {i}");
            prev = m;
        }
        prev = f64::INFINITY;
        for i in 0..=200 {
            let m = mos(0.01, 5.0, grid(i) * 10.0);
            assert!(m <= prev, "rtt not monotone at {i}");
            prev = m;
        }
        // High delay beyond 177 ms one-way costs more than below it.
        assert!(
            mos(0.0, 0.0, 300.0) - mos(0.0, 0.0, 500.0) > mos(0.0, 0.0, 0.0) - mos(0.0, 0.0, 200.0)
        );
    }

    #[test]
    fn leg_quality_from_stats() {
        let mut s = RecvStats::new();
        feed(&mut s, (0..200).filter(|i| i % 20 != 7));
        let q = LegQuality::from_stats(&s, 8000, Some(40.0));
        assert_eq!(q.packets, 190);
        assert_eq!(q.lost, 10);
        assert!((q.loss - 0.05).abs() < 1e-9);
        assert_eq!(q.rtt_ms, Some(40.0));
        assert!((q.mos - mos(0.05, q.jitter_ms, 40.0)).abs() < 1e-12);
    }
}
