//! Tone synthesis and analysis at telephone rate (8 kHz, 16-bit linear).
//!
//! Synthesis ([`ToneGen`], [`melody`]) feeds DTMF generation, the default music on hold
//! and test signals; analysis ([`goertzel_power`], [`dominant_frequency`], [`rms`]) is
//! how in-band DTMF is detected and how tests check which tone a recorded channel or
//! a received stream carries. Goertzel is used rather than an FFT because only a few
//! known frequencies are ever asked about, and it needs no buffers or dependencies.

use std::f64::consts::PI;

/// The telephone sample rate every generator here produces.
pub const SAMPLE_RATE: u32 = 8000;

/// A generator of one or more summed sines at 8 kHz, phase-continuous across
/// [`fill`](ToneGen::fill) calls so consecutive 20 ms frames join without clicks.
#[derive(Clone, Debug)]
pub struct ToneGen {
    /// Per sine: phase increment per sample, in cycles.
    steps: Vec<f64>,
    /// Per sine: current phase in cycles, 0.0..1.0.
    phases: Vec<f64>,
    amplitude: f64,
}

impl ToneGen {
    /// A generator of the sines at `freqs` (Hz), each with peak `amplitude`; their sum
    /// saturates at the i16 range (two sines of 16384 or more can clip).
    pub fn new(freqs: &[f32], amplitude: i16) -> Self {
        ToneGen {
            steps: freqs
                .iter()
                .map(|&f| f as f64 / SAMPLE_RATE as f64)
                .collect(),
            phases: vec![0.0; freqs.len()],
            amplitude: amplitude as f64,
        }
    }

    /// Overwrites `out` with the next `out.len()` samples.
    pub fn fill(&mut self, out: &mut [i16]) {
        for o in out.iter_mut() {
            let mut v = 0.0;
            for (phase, step) in self.phases.iter_mut().zip(&self.steps) {
                v += (2.0 * PI * *phase).sin();
                *phase = (*phase + step).fract();
            }
            *o = (v * self.amplitude)
                .round()
                .clamp(i16::MIN as f64, i16::MAX as f64) as i16;
        }
    }
}

/// The power of `samples` at `freq` by the Goertzel algorithm, normalised so that a
/// sine of amplitude `A` at exactly `freq` filling the block gives `A² / 2` (its mean
/// power), comparable with `rms(samples)²`. Any frequency may be asked for, not only
/// bin centres. 0.0 for an empty slice.
pub fn goertzel_power(samples: &[i16], freq: f32, rate: u32) -> f64 {
    if samples.is_empty() || rate == 0 {
        return 0.0;
    }
    let coeff = 2.0 * (2.0 * PI * freq as f64 / rate as f64).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s = x as f64 + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let n = samples.len() as f64;
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) * 2.0 / (n * n)
}

/// The strongest frequency among `lo_hz, lo_hz + step_hz, ... <= hi_hz`.
///
/// The signal is cut into blocks of `rate / step_hz` samples (so each Goertzel filter
/// is as wide as the scan step and a tone between two scan points is not missed) and
/// the powers of all blocks are summed. Returns `lo_hz` for empty input or a
/// non-positive step.
pub fn dominant_frequency(samples: &[i16], rate: u32, lo_hz: f32, hi_hz: f32, step_hz: f32) -> f32 {
    if samples.is_empty() || step_hz <= 0.0 || hi_hz < lo_hz || rate == 0 {
        return lo_hz;
    }
    let block = ((rate as f32 / step_hz).round() as usize).clamp(16, samples.len().max(16));
    let steps = ((hi_hz - lo_hz) / step_hz).floor() as usize;
    let mut best = (lo_hz, f64::MIN);
    for i in 0..=steps {
        let f = lo_hz + i as f32 * step_hz;
        let power: f64 = samples
            .chunks(block)
            .map(|c| goertzel_power(c, f, rate) * c.len() as f64)
            .sum();
        if power > best.1 {
            best = (f, power);
        }
    }
    best.0
}

/// Root mean square of `samples` (0.0 for an empty slice).
pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| (s as f64) * (s as f64)).sum();
    (sum / samples.len() as f64).sqrt()
}

/// The default music on hold: an original, gentle 4.8 s loop (written for Switchyard,
/// no copyright concerns) of sixteen notes on the C major pentatonic scale, each a
/// sine with a soft second harmonic, a 10 ms attack, a slow decay and a 40 ms fade
/// out, peak about 6000. Every note starts and ends at silence, so the loop joins
/// without a click, and only one note sounds at a time, so it never looks like DTMF.
pub fn melody() -> Vec<i16> {
    const C5: f64 = 523.25;
    const D5: f64 = 587.33;
    const E5: f64 = 659.26;
    const G5: f64 = 783.99;
    const A5: f64 = 880.00;
    const G4: f64 = 392.00;
    /// (frequency, length in eighths of 300 ms).
    const NOTES: [(f64, usize); 14] = [
        (C5, 1),
        (E5, 1),
        (G5, 1),
        (E5, 1),
        (A5, 1),
        (G5, 1),
        (E5, 2),
        (D5, 1),
        (E5, 1),
        (G5, 1),
        (D5, 1),
        (C5, 1),
        (G4, 1),
        (C5, 2),
    ];
    const EIGHTH: usize = 2400; // 300 ms
    const ATTACK: usize = 80; // 10 ms
    const RELEASE: usize = 320; // 40 ms
    const PEAK: f64 = 5200.0;
    const HARMONIC: f64 = 0.15;

    let total: usize = NOTES.iter().map(|n| n.1 * EIGHTH).sum();
    let mut out = Vec::with_capacity(total);
    for &(freq, eighths) in NOTES.iter() {
        let len = eighths * EIGHTH;
        let w = 2.0 * PI * freq / SAMPLE_RATE as f64;
        for n in 0..len {
            // Attack, then a decay from 1.0 to 0.55, with a fade to zero at the end.
            let env = if n < ATTACK {
                n as f64 / ATTACK as f64
            } else {
                1.0 - 0.45 * (n - ATTACK) as f64 / (len - ATTACK) as f64
            };
            let fade = if n + RELEASE > len {
                (len - n) as f64 / RELEASE as f64
            } else {
                1.0
            };
            let x = (w * n as f64).sin() + HARMONIC * (2.0 * w * n as f64).sin();
            out.push((PEAK * env * fade * x).round() as i16);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tone_gen_is_phase_continuous() {
        let mut whole = ToneGen::new(&[440.0, 1330.0], 8000);
        let mut a = vec![0i16; 1000];
        whole.fill(&mut a);
        let mut chunked = ToneGen::new(&[440.0, 1330.0], 8000);
        let mut b = vec![0i16; 1000];
        for c in b.chunks_mut(7) {
            chunked.fill(c);
        }
        assert_eq!(a, b);
        assert!(a.iter().any(|&s| s > 12000), "two sines of 8000 add up");
    }

    #[test]
    fn single_sine_level_and_power() {
        let mut g = ToneGen::new(&[1000.0], 10000);
        let mut s = vec![0i16; 8000];
        g.fill(&mut s);
        let r = rms(&s);
        assert!((r - 10000.0 / 2f64.sqrt()).abs() < 20.0, "rms {r}");
        let p = goertzel_power(&s[..205], 1000.0, 8000);
        assert!((p / 50_000_000.0 - 1.0).abs() < 0.05, "power {p}");
        let off = goertzel_power(&s[..205], 1336.0, 8000);
        assert!(off < p / 100.0, "off-frequency {off} vs {p}");
        assert_eq!(goertzel_power(&[], 1000.0, 8000), 0.0);
        assert_eq!(rms(&[]), 0.0);
    }

    #[test]
    fn dominant_frequency_finds_the_tone() {
        for &f in &[350.0f32, 443.0, 1000.0, 2711.0] {
            let mut g = ToneGen::new(&[f], 6000);
            let mut s = vec![0i16; 16000];
            g.fill(&mut s);
            let d = dominant_frequency(&s, 8000, 100.0, 3500.0, 10.0);
            assert!((d - f).abs() <= 5.0, "tone {f} found {d}");
        }
        // The louder of two tones wins.
        let mut a = vec![0i16; 8000];
        ToneGen::new(&[600.0], 8000).fill(&mut a);
        let mut b = vec![0i16; 8000];
        ToneGen::new(&[1500.0], 3000).fill(&mut b);
        let mix: Vec<i16> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        assert_eq!(dominant_frequency(&mix, 8000, 100.0, 3500.0, 10.0), 600.0);
        assert_eq!(dominant_frequency(&[], 8000, 100.0, 3500.0, 10.0), 100.0);
    }

    #[test]
    fn melody_is_gentle_and_loops_cleanly() {
        let m = melody();
        assert!(m.len() >= 3 * 8000, "a few seconds, got {}", m.len());
        let peak = m.iter().map(|&s| (s as i32).abs()).max().unwrap();
        assert!((4500..=7000).contains(&peak), "peak {peak}");
        assert!(rms(&m) > 1500.0);
        assert!(
            m[0].abs() < 100 && m[m.len() - 1].abs() < 100,
            "loop joins at silence"
        );
        // Several distinct notes: the dominant frequency changes across the loop.
        let notes: Vec<f32> = m
            .chunks(2400)
            .map(|c| dominant_frequency(c, 8000, 300.0, 1000.0, 10.0))
            .collect();
        let mut distinct = notes.clone();
        distinct.sort_by(|a, b| a.partial_cmp(b).unwrap());
        distinct.dedup();
        assert!(distinct.len() >= 5, "notes {notes:?}");
    }
}
