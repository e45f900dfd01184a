//! ITU-T G.711 μ-law (PCMU) and A-law (PCMA): encode, decode and transcode.
//!
//! G.711 is the only codec the switch decodes: recording, playback, in-band DTMF and
//! conversion between legs that negotiated different laws all go through here. The
//! relay calls these per sample on every anchored packet, so nothing allocates:
//! decoding and law-to-law conversion are 256-entry tables built at compile time, and
//! encoding is a few integer operations (the segment comes from `leading_zeros`, not
//! a search loop). The algorithms are the classic reference ones (Sun's `g711.c`),
//! which every other implementation agrees with bit for bit.

/// μ-law bias added to the magnitude before the segment search (G.711 §3).
const ULAW_BIAS: i32 = 0x84;
/// Largest magnitude μ-law represents; louder samples clip to the top code.
const ULAW_CLIP: i32 = 32635;

/// The two G.711 laws, as negotiated in SDP (static payload types 0 and 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// μ-law, RTP payload type 0 (North America, Japan).
    Pcmu,
    /// A-law, RTP payload type 8 (rest of the world).
    Pcma,
}

impl Codec {
    /// The static RTP payload type (RFC 3551): 0 for PCMU, 8 for PCMA.
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    /// The codec for a static payload type, `None` for anything but 0 and 8.
    pub fn from_payload_type(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            _ => None,
        }
    }

    /// The SDP encoding name (`a=rtpmap:0 PCMU/8000`).
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    /// Decodes one byte to a 16-bit linear sample.
    #[inline]
    pub fn decode(self, b: u8) -> i16 {
        match self {
            Codec::Pcmu => ulaw_decode(b),
            Codec::Pcma => alaw_decode(b),
        }
    }

    /// Encodes one 16-bit linear sample.
    #[inline]
    pub fn encode(self, s: i16) -> u8 {
        match self {
            Codec::Pcmu => ulaw_encode(s),
            Codec::Pcma => alaw_encode(s),
        }
    }

    /// Decodes `payload` into `out`; converts `min(payload.len(), out.len())` samples.
    pub fn decode_into(self, payload: &[u8], out: &mut [i16]) {
        let table = match self {
            Codec::Pcmu => &ULAW_DECODE,
            Codec::Pcma => &ALAW_DECODE,
        };
        for (o, &b) in out.iter_mut().zip(payload) {
            *o = table[b as usize];
        }
    }

    /// Encodes `pcm` into `out`; converts `min(pcm.len(), out.len())` samples.
    pub fn encode_into(self, pcm: &[i16], out: &mut [u8]) {
        match self {
            Codec::Pcmu => {
                for (o, &s) in out.iter_mut().zip(pcm) {
                    *o = ulaw_encode(s);
                }
            }
            Codec::Pcma => {
                for (o, &s) in out.iter_mut().zip(pcm) {
                    *o = alaw_encode(s);
                }
            }
        }
    }
}

/// Encodes a 16-bit linear sample to μ-law.
#[inline]
pub fn ulaw_encode(s: i16) -> u8 {
    ulaw_encode_const(s)
}

/// Decodes a μ-law byte to a 16-bit linear sample.
#[inline]
pub fn ulaw_decode(b: u8) -> i16 {
    ULAW_DECODE[b as usize]
}

/// Encodes a 16-bit linear sample to A-law.
#[inline]
pub fn alaw_encode(s: i16) -> u8 {
    alaw_encode_const(s)
}

/// Decodes an A-law byte to a 16-bit linear sample.
#[inline]
pub fn alaw_decode(b: u8) -> i16 {
    ALAW_DECODE[b as usize]
}

/// Converts a μ-law byte to the A-law byte for the same decoded value.
#[inline]
pub fn ulaw_to_alaw(b: u8) -> u8 {
    ULAW_TO_ALAW[b as usize]
}

/// Converts an A-law byte to the μ-law byte for the same decoded value.
#[inline]
pub fn alaw_to_ulaw(b: u8) -> u8 {
    ALAW_TO_ULAW[b as usize]
}

/// Converts a G.711 payload between laws in place (no-op when `from == to`), so the
/// relay can bridge a PCMU leg to a PCMA leg without a second buffer.
pub fn transcode_in_place(payload: &mut [u8], from: Codec, to: Codec) {
    let table = match (from, to) {
        (Codec::Pcmu, Codec::Pcma) => &ULAW_TO_ALAW,
        (Codec::Pcma, Codec::Pcmu) => &ALAW_TO_ULAW,
        _ => return,
    };
    for b in payload.iter_mut() {
        *b = table[*b as usize];
    }
}

const fn ulaw_encode_const(s: i16) -> u8 {
    let mut pcm = s as i32;
    let mask: i32 = if pcm < 0 {
        pcm = -pcm;
        0x7F
    } else {
        0xFF
    };
    if pcm > ULAW_CLIP {
        pcm = ULAW_CLIP;
    }
    pcm += ULAW_BIAS;
    // pcm is in 0x84..=0x7FFF, so pcm >> 7 is in 1..=255 and its top bit is the segment.
    let seg = 31 - ((pcm >> 7) as u32).leading_zeros() as i32;
    let mantissa = (pcm >> (seg + 3)) & 0x0F;
    (((seg << 4) | mantissa) ^ mask) as u8
}

const fn ulaw_decode_const(b: u8) -> i16 {
    let u = !b as i32;
    let mut t = ((u & 0x0F) << 3) + ULAW_BIAS;
    t <<= (u & 0x70) >> 4;
    (if u & 0x80 != 0 {
        ULAW_BIAS - t
    } else {
        t - ULAW_BIAS
    }) as i16
}

const fn alaw_encode_const(s: i16) -> u8 {
    // A-law works on 13-bit magnitudes; the sign is folded so negative values use -x-1.
    let mut pcm = (s as i32) >> 3;
    let mask: i32 = if pcm >= 0 {
        0xD5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    // pcm is in 0..=4095: segment 0 covers 0..=0x1F, segment n covers 2^(n+4)..2^(n+5).
    let seg = 31 - (((pcm >> 4) | 1) as u32).leading_zeros() as i32;
    let mantissa = if seg < 2 {
        (pcm >> 1) & 0x0F
    } else {
        (pcm >> seg) & 0x0F
    };
    (((seg << 4) | mantissa) ^ mask) as u8
}

const fn alaw_decode_const(b: u8) -> i16 {
    let a = (b ^ 0x55) as i32;
    let mut t = (a & 0x0F) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

const fn build_decode(alaw: bool) -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if alaw {
            alaw_decode_const(i as u8)
        } else {
            ulaw_decode_const(i as u8)
        };
        i += 1;
    }
    t
}

const fn build_transcode(from_alaw: bool) -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if from_alaw {
            ulaw_encode_const(alaw_decode_const(i as u8))
        } else {
            alaw_encode_const(ulaw_decode_const(i as u8))
        };
        i += 1;
    }
    t
}

static ULAW_DECODE: [i16; 256] = build_decode(false);
static ALAW_DECODE: [i16; 256] = build_decode(true);
static ULAW_TO_ALAW: [u8; 256] = build_transcode(false);
static ALAW_TO_ULAW: [u8; 256] = build_transcode(true);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        // Full-scale codes from the G.711 tables.
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
    }

    #[test]
    fn ulaw_round_trip_within_quantisation_error() {
        for s in i16::MIN..=i16::MAX {
            let d = ulaw_decode(ulaw_encode(s)) as i32;
            let s = s as i32;
            let mag = s.abs().min(ULAW_CLIP);
            // Half a step of the segment, plus what clipping removes at full scale.
            let bound = (mag + ULAW_BIAS) / 32 + 1 + (s.abs() - mag);
            assert!((d - s).abs() <= bound, "s={s} decoded={d} bound={bound}");
            assert!(d.signum() * s.signum() >= 0, "sign flipped for {s}");
        }
    }

    #[test]
    fn alaw_round_trip_within_quantisation_error() {
        for s in i16::MIN..=i16::MAX {
            let d = alaw_decode(alaw_encode(s)) as i32;
            let s = s as i32;
            // Segments 0 and 1 have a step of 32, segment n a step of 2^(n+4), i.e. 1/16
            // of the magnitude; the 3 bits A-law drops add up to 8 more.
            let bound = (s.abs() / 32).max(16) + 8;
            assert!((d - s).abs() <= bound, "s={s} decoded={d} bound={bound}");
        }
    }

    #[test]
    fn decode_then_encode_is_identity_on_codes() {
        for b in 0..=255u8 {
            // μ-law has two zero codes (0x7F and 0xFF); both decode to 0 which encodes to 0xFF.
            if b != 0x7F {
                assert_eq!(ulaw_encode(ulaw_decode(b)), b, "ulaw code {b:#x}");
            }
            assert_eq!(alaw_encode(alaw_decode(b)), b, "alaw code {b:#x}");
        }
    }

    #[test]
    fn transcode_tables_agree_with_decode_encode() {
        for b in 0..=255u8 {
            assert_eq!(ulaw_to_alaw(b), alaw_encode(ulaw_decode(b)));
            assert_eq!(alaw_to_ulaw(b), ulaw_encode(alaw_decode(b)));
        }
        let mut buf: Vec<u8> = (0..=255).collect();
        transcode_in_place(&mut buf, Codec::Pcmu, Codec::Pcma);
        for (i, &b) in buf.iter().enumerate() {
            assert_eq!(b, ulaw_to_alaw(i as u8));
        }
        let before = buf.clone();
        transcode_in_place(&mut buf, Codec::Pcma, Codec::Pcma);
        assert_eq!(buf, before);
        // A-law -> μ-law -> A-law keeps the value close (μ-law is finer near zero).
        for b in 0..=255u8 {
            let back = ulaw_to_alaw(alaw_to_ulaw(b));
            let (x, y) = (alaw_decode(b) as i32, alaw_decode(back) as i32);
            assert!(
                (x - y).abs() <= (x.abs() / 16).max(16),
                "{b:#x}: {x} vs {y}"
            );
        }
    }

    #[test]
    fn codec_helpers() {
        for c in [Codec::Pcmu, Codec::Pcma] {
            assert_eq!(Codec::from_payload_type(c.payload_type()), Some(c));
            let pcm: Vec<i16> = (0..160)
                .map(|i| ((i * 397) % 20000 - 10000) as i16)
                .collect();
            let mut enc = [0u8; 160];
            c.encode_into(&pcm, &mut enc);
            let mut dec = [0i16; 160];
            c.decode_into(&enc, &mut dec);
            for i in 0..160 {
                assert_eq!(enc[i], c.encode(pcm[i]));
                assert_eq!(dec[i], c.decode(enc[i]));
            }
        }
        assert_eq!(Codec::from_payload_type(18), None);
        assert_eq!(Codec::Pcmu.name(), "PCMU");
        assert_eq!(Codec::Pcma.name(), "PCMA");
        assert_eq!(Codec::Pcma.payload_type(), 8);
    }
}
