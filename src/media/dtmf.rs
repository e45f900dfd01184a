//! DTMF: digit detection from RFC 4733 telephone-events and from in-band audio, and
//! digit generation (audio tones and RFC 4733 packet sequences).
//!
//! IVR menus and agent feature codes are driven by digits, and callers' phones send them
//! in one of three ways: RFC 4733 events (the usual case, [`EventDetector`]), SIP INFO
//! (handled by the call actor), or plain audio tones when a gateway does not translate
//! them ([`InbandDetector`]). Both detectors report each key press exactly once, which
//! is what the call actor needs; they are plain state machines fed by the relay, with
//! no allocation per packet.

use crate::media::rtp::{digit_event, event_digit, TelephoneEvent};
use crate::media::tone::{goertzel_power, ToneGen, SAMPLE_RATE};

/// Low-group (row) frequencies, Hz.
const ROWS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
/// High-group (column) frequencies, Hz.
const COLS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
/// The keypad: `KEYS[row][col]`.
const KEYS: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// Analysis window: 205 samples (25.6 ms) gives filters about 39 Hz wide, narrow enough
/// to tell adjacent DTMF rows apart (73 Hz at the closest).
const WINDOW: usize = 205;
/// Windows overlap by half, so a decision is made every 12.75 ms.
const HOP: usize = 102;
/// Consecutive identical windows before a digit is reported (together they span 38 ms).
const HITS_TO_BEGIN: u32 = 2;
/// Minimum power of each tone (see [`goertzel_power`]'s scale): a sine of amplitude
/// about 450, roughly -34 dBm0, below the -25 dBm0 receivers must accept.
const MIN_TONE_POWER: f64 = 1.0e5;
/// Row tone may be stronger than the column tone by up to 8 dB (normal twist)...
const NORMAL_TWIST: f64 = 6.3;
/// ...and weaker by up to 4 dB (reverse twist).
const REVERSE_TWIST: f64 = 2.5;
/// The winning tone of a group must beat the others of its group by 8 dB.
const RELATIVE_PEAK: f64 = 6.3;
/// The two tones must carry this share of the window's power. It rejects speech and
/// music, whose energy is spread over many frequencies, and a window only partly filled
/// by a tone, which makes bursts of 25 ms or less too short to report while 40 ms
/// tones are reported at any alignment (the ITU-T Q.24 limits).
const MIN_TONE_SHARE: f64 = 0.75;
/// Per-tone amplitude of generated digits (about -9 dBm0 each).
const GEN_AMPLITUDE: i16 = 8000;
/// RFC 4733 update interval.
const EVENT_UPDATE_MS: u32 = 50;
/// Volume field of generated events (-10 dBm0).
const EVENT_VOLUME: u8 = 10;

/// The (row, column) frequencies of a digit (`a`-`d` accepted as A-D).
fn digit_freqs(digit: char) -> Option<(f32, f32)> {
    let d = digit.to_ascii_uppercase();
    for (r, row) in KEYS.iter().enumerate() {
        for (c, &k) in row.iter().enumerate() {
            if k == d {
                return Some((ROWS[r], COLS[c]));
            }
        }
    }
    None
}

/// In-band DTMF detector over 8 kHz 16-bit audio (decoded G.711).
///
/// Goertzel filters at the eight DTMF frequencies run over 205-sample windows every
/// 102 samples. A window shows a digit when the strongest row and column tones are
/// loud enough, within twist limits, clearly above the other tones of their group, and
/// together carry most of the window's power. A digit is reported once, when two
/// consecutive windows agree (≈ 40 ms); the same digit is reported again only after a
/// window without it (a gap), so a long press is one digit.
#[derive(Clone, Debug)]
pub struct InbandDetector {
    buf: [i16; WINDOW],
    fill: usize,
    /// The previous window's decision and how many windows in a row made it.
    last: Option<char>,
    hits: u32,
    /// The digit reported and still sounding.
    current: Option<char>,
}

impl Default for InbandDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl InbandDetector {
    /// A detector with no history.
    pub fn new() -> Self {
        InbandDetector {
            buf: [0; WINDOW],
            fill: 0,
            last: None,
            hits: 0,
            current: None,
        }
    }

    /// Feeds samples of any length (the relay passes 20 ms frames) and appends the
    /// digits that started to `out`.
    pub fn push(&mut self, mut samples: &[i16], out: &mut Vec<char>) {
        while !samples.is_empty() {
            let n = (WINDOW - self.fill).min(samples.len());
            self.buf[self.fill..self.fill + n].copy_from_slice(&samples[..n]);
            self.fill += n;
            samples = &samples[n..];
            if self.fill == WINDOW {
                let decision = detect_window(&self.buf);
                self.decide(decision, out);
                // Keep the newest WINDOW - HOP samples: the next window overlaps this one.
                self.buf.copy_within(HOP.., 0);
                self.fill = WINDOW - HOP;
            }
        }
    }

    fn decide(&mut self, decision: Option<char>, out: &mut Vec<char>) {
        if decision == self.last {
            self.hits = self.hits.saturating_add(1);
        } else {
            self.last = decision;
            self.hits = 1;
        }
        match decision {
            Some(d) if self.hits >= HITS_TO_BEGIN && self.current != Some(d) => {
                out.push(d);
                self.current = Some(d);
            }
            Some(_) => {}
            None => self.current = None,
        }
    }
}

/// The digit one window shows, if any.
fn detect_window(w: &[i16]) -> Option<char> {
    let mut rows = [0.0f64; 4];
    let mut cols = [0.0f64; 4];
    for i in 0..4 {
        rows[i] = goertzel_power(w, ROWS[i], SAMPLE_RATE);
        cols[i] = goertzel_power(w, COLS[i], SAMPLE_RATE);
    }
    let r = argmax(&rows);
    let c = argmax(&cols);
    let (pr, pc) = (rows[r], cols[c]);
    if pr < MIN_TONE_POWER || pc < MIN_TONE_POWER {
        return None;
    }
    if pr > pc * NORMAL_TWIST || pc > pr * REVERSE_TWIST {
        return None;
    }
    let others_low = |p: &[f64; 4], best: usize| {
        p.iter()
            .enumerate()
            .all(|(i, &x)| i == best || x * RELATIVE_PEAK < p[best])
    };
    if !others_low(&rows, r) || !others_low(&cols, c) {
        return None;
    }
    let total: f64 = w.iter().map(|&s| (s as f64) * (s as f64)).sum::<f64>() / w.len() as f64;
    if pr + pc < MIN_TONE_SHARE * total {
        return None;
    }
    Some(KEYS[r][c])
}

fn argmax(p: &[f64; 4]) -> usize {
    let mut best = 0;
    for i in 1..4 {
        if p[i] > p[best] {
            best = i;
        }
    }
    best
}

/// RFC 4733 telephone-event detector: one digit per event.
///
/// All packets of one event carry the same RTP timestamp (updates while the key is
/// held, then the end packet three times), so a digit is reported on the first packet
/// with a new timestamp, even if that is an end packet because the start was lost.
/// Packets with an older timestamp (late retransmissions of a previous event) are
/// ignored. Non-digit events (flash, 16+) are consumed without reporting.
#[derive(Clone, Debug, Default)]
pub struct EventDetector {
    last_ts: Option<u32>,
}

impl EventDetector {
    /// A detector that has seen no event.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one telephone-event packet (its RTP timestamp and payload); returns the
    /// digit when this packet starts a new event.
    pub fn on_event(&mut self, rtp_timestamp: u32, ev: &TelephoneEvent) -> Option<char> {
        if let Some(last) = self.last_ts {
            // Same event, or an older one (signed difference handles timestamp wrap).
            if rtp_timestamp.wrapping_sub(last) as i32 <= 0 {
                return None;
            }
        }
        self.last_ts = Some(rtp_timestamp);
        event_digit(ev.event)
    }
}

/// Appends `ms` milliseconds of the digit's two tones (8 kHz, each tone at amplitude
/// 8000) to `out`; `false` (and nothing appended) for a character that is not a DTMF
/// digit. Callers add the silence between digits themselves.
pub fn dtmf_tone(digit: char, ms: u32, out: &mut Vec<i16>) -> bool {
    let Some((low, high)) = digit_freqs(digit) else {
        return false;
    };
    let n = (ms as usize) * (SAMPLE_RATE as usize) / 1000;
    let start = out.len();
    out.resize(start + n, 0);
    ToneGen::new(&[low, high], GEN_AMPLITUDE).fill(&mut out[start..]);
    true
}

/// The RFC 4733 payloads for one key press of `duration_ms`: an update every 50 ms
/// while the key is held (durations 400, 800, ... in 8 kHz units), then the end packet
/// three times with the full duration (capped at 65535 units, 8.19 s). The sender puts
/// all of them under the event's start timestamp, sets the marker bit on the first and
/// sends them 50 ms apart (the end copies may follow each other closely). Empty for a
/// character that is not a DTMF digit.
pub fn event_packets(digit: char, duration_ms: u32) -> Vec<TelephoneEvent> {
    let Some(event) = digit_event(digit) else {
        return Vec::new();
    };
    let units = |ms: u32| (ms as u64 * SAMPLE_RATE as u64 / 1000).min(u16::MAX as u64) as u16;
    let mut packets = Vec::with_capacity((duration_ms / EVENT_UPDATE_MS) as usize + 3);
    let mut t = EVENT_UPDATE_MS;
    while t < duration_ms {
        packets.push(TelephoneEvent {
            event,
            end: false,
            volume: EVENT_VOLUME,
            duration: units(t),
        });
        t += EVENT_UPDATE_MS;
    }
    let end = TelephoneEvent {
        event,
        end: true,
        volume: EVENT_VOLUME,
        duration: units(duration_ms),
    };
    packets.extend([end; 3]);
    packets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::g711::{ulaw_decode, ulaw_encode};
    use crate::media::tone::melody;

    const DIGITS: &str = "0123456789*#ABCD";

    /// Through μ-law and back, as audio arrives from a G.711 leg.
    fn through_ulaw(s: &[i16]) -> Vec<i16> {
        s.iter().map(|&x| ulaw_decode(ulaw_encode(x))).collect()
    }

    /// Feeds audio in 160-sample frames, as the relay does.
    fn detect(audio: &[i16]) -> String {
        let mut d = InbandDetector::new();
        let mut out = Vec::new();
        for frame in audio.chunks(160) {
            d.push(frame, &mut out);
        }
        out.into_iter().collect()
    }

    fn silence(ms: usize) -> Vec<i16> {
        vec![0; ms * 8]
    }

    #[test]
    fn every_digit_detected_once() {
        for digit in DIGITS.chars() {
            // Several alignments of the tone against the analysis windows.
            for lead in [0usize, 13, 50, 97] {
                let mut a = vec![0i16; 400 + lead];
                assert!(dtmf_tone(digit, 100, &mut a));
                a.extend(silence(50));
                assert_eq!(
                    detect(&through_ulaw(&a)),
                    digit.to_string(),
                    "digit {digit} lead {lead}"
                );
            }
        }
    }

    #[test]
    fn long_press_is_one_digit_and_gap_separates_repeats() {
        let mut a = silence(20);
        dtmf_tone('7', 1000, &mut a);
        a.extend(silence(40));
        dtmf_tone('7', 60, &mut a);
        a.extend(silence(40));
        assert_eq!(detect(&through_ulaw(&a)), "77");
    }

    #[test]
    fn sequence_with_60ms_gaps() {
        let mut a = silence(30);
        for d in "123#".chars() {
            assert!(dtmf_tone(d, 70, &mut a));
            a.extend(silence(60));
        }
        assert_eq!(detect(&through_ulaw(&a)), "123#");
        // Low-level digits at about -25 dBm0 per tone are still heard.
        let quiet: Vec<i16> = a.iter().map(|&s| s / 6).collect();
        assert_eq!(detect(&through_ulaw(&quiet)), "123#");
        // With white noise 20 dB below the tones (uniform, rms 800).
        let mut x: u32 = 99;
        let noisy: Vec<i16> = a
            .iter()
            .map(|&s| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                s + ((x % 2773) as i32 - 1386) as i16
            })
            .collect();
        assert_eq!(detect(&through_ulaw(&noisy)), "123#");
    }

    #[test]
    fn duration_limits() {
        // At every alignment against the 102-sample hop: 40 ms is a digit, 25 ms is not.
        for lead in 0..HOP {
            for (ms, want) in [(40, "8"), (25, ""), (10, "")] {
                let mut a = vec![0i16; 240 + lead];
                dtmf_tone('8', ms, &mut a);
                a.extend(silence(60));
                assert_eq!(detect(&a), want, "{ms} ms tone, lead {lead}");
            }
        }
    }

    #[test]
    fn unknown_digit_is_refused() {
        let mut a = Vec::new();
        assert!(!dtmf_tone('x', 100, &mut a));
        assert!(a.is_empty());
        assert!(event_packets('x', 100).is_empty());
        assert!(dtmf_tone('d', 10, &mut a));
        assert_eq!(a.len(), 80);
    }

    /// Deterministic speech-like signal: a glottal pulse train with a wandering pitch
    /// through two formant resonators that move every 20 ms, plus some breath noise.
    fn speech_like(seconds: usize) -> Vec<i16> {
        let mut x: u32 = 12345;
        let mut rnd = move || {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 8) as f64 / (1u32 << 24) as f64
        };
        let resonator = |f: f64, bw: f64| {
            let r = (-std::f64::consts::PI * bw / 8000.0).exp();
            let a1 = 2.0 * r * (2.0 * std::f64::consts::PI * f / 8000.0).cos();
            (a1, -r * r)
        };
        let mut out = Vec::with_capacity(seconds * 8000);
        let (mut y1, mut y2, mut z1, mut z2) = (0.0, 0.0, 0.0, 0.0);
        let mut phase = 0.0;
        for _frame in 0..seconds * 50 {
            let pitch = 90.0 + rnd() * 160.0;
            let (a1, a2) = resonator(300.0 + rnd() * 600.0, 90.0);
            let (b1, b2) = resonator(900.0 + rnd() * 1600.0, 120.0);
            let voiced = rnd() < 0.8;
            for _ in 0..160 {
                phase += pitch / 8000.0;
                let mut e = (rnd() - 0.5) * 0.3;
                if voiced && phase >= 1.0 {
                    e += 1.0;
                }
                phase = phase.fract();
                let y = e + a1 * y1 + a2 * y2;
                y2 = y1;
                y1 = y;
                let z = y + b1 * z1 + b2 * z2;
                z2 = z1;
                z1 = z;
                out.push(z);
            }
        }
        let peak = out.iter().fold(0.0f64, |m, &v| m.max(v.abs()));
        out.iter().map(|&v| (v / peak * 20000.0) as i16).collect()
    }

    #[test]
    fn speech_music_and_single_tones_are_not_digits() {
        let speech = speech_like(10);
        assert!(crate::media::tone::rms(&speech) > 500.0);
        assert_eq!(detect(&through_ulaw(&speech)), "", "speech-like noise");
        let music: Vec<i16> = melody().repeat(3);
        assert_eq!(detect(&through_ulaw(&music)), "", "melody");
        for f in [1000.0f32, 697.0, 1336.0, 440.0] {
            let mut t = vec![0i16; 16000];
            ToneGen::new(&[f], 12000).fill(&mut t);
            assert_eq!(detect(&through_ulaw(&t)), "", "single {f} Hz tone");
        }
        // White noise.
        let mut x: u32 = 7;
        let noise: Vec<i16> = (0..40000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as i16) / 3
            })
            .collect();
        assert_eq!(detect(&noise), "", "white noise");
    }

    #[test]
    fn event_packets_follow_rfc4733() {
        let p = event_packets('5', 120);
        let durations: Vec<(u16, bool)> = p.iter().map(|e| (e.duration, e.end)).collect();
        assert_eq!(
            durations,
            vec![
                (400, false),
                (800, false),
                (960, true),
                (960, true),
                (960, true)
            ]
        );
        assert!(p.iter().all(|e| e.event == 5 && e.volume == 10));
        let long = event_packets('#', 60_000);
        assert_eq!(long.last().unwrap().duration, u16::MAX);
        assert_eq!(event_packets('1', 30).len(), 3);
    }

    #[test]
    fn event_detector_reports_each_press_once() {
        let mut d = EventDetector::new();
        let mut got = String::new();
        let mut ts = 4_294_967_000u32; // crosses the timestamp wrap below
        for digit in "55".chars().chain("9".chars()) {
            for ev in event_packets(digit, 200) {
                // Every packet is duplicated on the wire, too.
                for _ in 0..2 {
                    if let Some(c) = d.on_event(ts, &ev) {
                        got.push(c);
                    }
                }
            }
            // A late copy of this event's end after it: still the same press.
            let late = *event_packets(digit, 200).last().unwrap();
            assert_eq!(d.on_event(ts, &late), None);
            ts = ts.wrapping_add(3200);
        }
        assert_eq!(got, "559");
        // An old event's packet arriving after a newer one is ignored.
        assert_eq!(
            d.on_event(ts.wrapping_sub(6400), &event_packets('1', 50)[0]),
            None
        );
        // A lost start: the first packet seen is an end packet; still reported once.
        let end = *event_packets('3', 100).last().unwrap();
        assert_eq!(d.on_event(ts, &end), Some('3'));
        assert_eq!(d.on_event(ts, &end), None);
        // Flash (16) is not a digit.
        let flash = TelephoneEvent {
            event: 16,
            end: false,
            volume: 10,
            duration: 400,
        };
        assert_eq!(d.on_event(ts.wrapping_add(8000), &flash), None);
    }

    #[test]
    fn event_detector_over_event_packets_yields_five_once() {
        let mut d = EventDetector::new();
        let got: Vec<char> = event_packets('5', 100)
            .iter()
            .filter_map(|ev| d.on_event(1000, ev))
            .collect();
        assert_eq!(got, vec!['5']);
    }
}
