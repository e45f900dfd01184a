//! RIFF/WAVE files in and out: prompts are read into 8 kHz mono (whatever the file's format,
//! channels and rate), recordings are written as 16-bit PCM with a 44-byte header whose
//! sizes are patched when the recording ends.
//!
//! Reading accepts PCM (8, 16, 24, 32-bit), IEEE float (32, 64-bit), G.711 μ-law (tag 7)
//! and A-law (tag 6), plain or wrapped in WAVE_FORMAT_EXTENSIBLE; unknown chunks (`LIST`,
//! `fact`, ...) are skipped. Pure code: no I/O.

/// What is wrong with a WAV file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    /// The file does not start with `RIFF....WAVE`.
    #[error("not a RIFF/WAVE file")]
    NotWave,
    /// A chunk header or the `fmt ` chunk is cut short.
    #[error("truncated {0} chunk")]
    Truncated(&'static str),
    /// No `fmt ` chunk before the `data` chunk.
    #[error("no fmt chunk before the data chunk")]
    MissingFormat,
    /// No `data` chunk.
    #[error("no data chunk")]
    MissingData,
    /// A format tag this reader does not decode (e.g. ADPCM, MP3).
    #[error("unsupported WAV format tag {0:#06x}")]
    UnsupportedFormat(u16),
    /// A sample size this reader does not decode for the format.
    #[error("unsupported {bits}-bit samples for format tag {tag:#06x}")]
    UnsupportedBits {
        /// Format tag.
        tag: u16,
        /// Bits per sample.
        bits: u16,
    },
    /// Zero channels, or a block size that does not fit the channels and sample size.
    #[error("bad channel layout ({channels} channels, block align {block_align})")]
    BadChannels {
        /// Channel count.
        channels: u16,
        /// Bytes per frame as written in the file.
        block_align: u16,
    },
    /// A sample rate of 0 (or absurdly high).
    #[error("bad sample rate {0}")]
    BadRate(u32),
}

/// The rate prompts and G.711 media use.
pub const RATE_8K: u32 = 8000;

const TAG_PCM: u16 = 1;
const TAG_FLOAT: u16 = 3;
const TAG_ALAW: u16 = 6;
const TAG_MULAW: u16 = 7;
const TAG_EXTENSIBLE: u16 = 0xFFFE;

/// The decoded `fmt ` chunk.
#[derive(Clone, Copy, Debug)]
struct Fmt {
    tag: u16,
    channels: u16,
    rate: u32,
    block_align: u16,
    bits: u16,
}

/// A decoded file: interleaved 16-bit samples.
struct Decoded {
    channels: usize,
    rate: u32,
    samples: Vec<i16>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn parse_fmt(body: &[u8]) -> Result<Fmt, WavError> {
    if body.len() < 16 {
        return Err(WavError::Truncated("fmt"));
    }
    let mut fmt = Fmt {
        tag: u16_at(body, 0),
        channels: u16_at(body, 2),
        rate: u32_at(body, 4),
        block_align: u16_at(body, 12),
        bits: u16_at(body, 14),
    };
    if fmt.tag == TAG_EXTENSIBLE {
        // cbSize(2) validBits(2) channelMask(4) then the sub-format GUID, whose first two
        // bytes are the real format tag.
        if body.len() < 26 {
            return Err(WavError::Truncated("fmt"));
        }
        fmt.tag = u16_at(body, 24);
    }
    Ok(fmt)
}

/// Walks the chunks and decodes the samples to interleaved i16.
fn decode(bytes: &[u8]) -> Result<Decoded, WavError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWave);
    }
    let mut at = 12;
    let mut fmt = None;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32_at(bytes, at + 4) as usize;
        let start = at + 8;
        // Streaming writers leave the data size at 0 or 0xFFFFFFFF, and truncated files are
        // common; take what is there rather than refusing the file.
        let end = start.saturating_add(size).min(bytes.len());
        let body = &bytes[start..end];
        match id {
            b"fmt " => fmt = Some(parse_fmt(body)?),
            b"data" => {
                let fmt = fmt.ok_or(WavError::MissingFormat)?;
                let body = if size == 0 { &bytes[start..] } else { body };
                return decode_data(fmt, body);
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        at = start.saturating_add(size).saturating_add(size & 1);
    }
    if fmt.is_none() {
        return Err(WavError::Truncated("fmt"));
    }
    Err(WavError::MissingData)
}

fn decode_data(fmt: Fmt, data: &[u8]) -> Result<Decoded, WavError> {
    if fmt.rate == 0 || fmt.rate > 1_000_000 {
        return Err(WavError::BadRate(fmt.rate));
    }
    let sample_bytes: usize = match (fmt.tag, fmt.bits) {
        (TAG_PCM, 8) | (TAG_MULAW, 8) | (TAG_ALAW, 8) => 1,
        (TAG_PCM, 16) => 2,
        (TAG_PCM, 24) => 3,
        (TAG_PCM, 32) | (TAG_FLOAT, 32) => 4,
        (TAG_FLOAT, 64) => 8,
        (TAG_PCM | TAG_FLOAT | TAG_MULAW | TAG_ALAW, bits) => {
            return Err(WavError::UnsupportedBits { tag: fmt.tag, bits })
        }
        (tag, _) => return Err(WavError::UnsupportedFormat(tag)),
    };
    let channels = fmt.channels as usize;
    let frame = channels * sample_bytes;
    // Some writers leave block_align at 0; otherwise it must hold a whole frame.
    let stride = if fmt.block_align == 0 {
        frame
    } else {
        fmt.block_align as usize
    };
    if channels == 0 || stride < frame {
        return Err(WavError::BadChannels {
            channels: fmt.channels,
            block_align: fmt.block_align,
        });
    }
    let frames = data.len() / stride;
    let mut samples = Vec::with_capacity(frames * channels);
    for f in 0..frames {
        let base = f * stride;
        for c in 0..channels {
            let s = &data[base + c * sample_bytes..base + (c + 1) * sample_bytes];
            samples.push(match (fmt.tag, sample_bytes) {
                (TAG_MULAW, _) => ulaw_to_linear(s[0]),
                (TAG_ALAW, _) => alaw_to_linear(s[0]),
                // 8-bit PCM is unsigned.
                (TAG_PCM, 1) => ((s[0] as i16) - 128) << 8,
                (TAG_PCM, 2) => i16::from_le_bytes([s[0], s[1]]),
                (TAG_PCM, 3) => i16::from_le_bytes([s[1], s[2]]),
                (TAG_PCM, _) => i16::from_le_bytes([s[2], s[3]]),
                (_, 4) => float_to_i16(f32::from_le_bytes([s[0], s[1], s[2], s[3]]) as f64),
                _ => float_to_i16(f64::from_le_bytes([
                    s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
                ])),
            });
        }
    }
    Ok(Decoded {
        channels,
        rate: fmt.rate,
        samples,
    })
}

fn float_to_i16(x: f64) -> i16 {
    // NaN becomes 0 through the saturating cast.
    (x * 32767.0).round().clamp(-32768.0, 32767.0) as i16
}

/// G.711 μ-law to 16-bit linear (the classic Sun reference decoder); kept local so WAV
/// loading depends on nothing else in `media`.
fn ulaw_to_linear(u: u8) -> i16 {
    let u = !u;
    let mut t = (((u & 0x0F) as i16) << 3) + 0x84;
    t <<= (u & 0x70) >> 4;
    if u & 0x80 != 0 {
        0x84 - t
    } else {
        t - 0x84
    }
}

/// G.711 A-law to 16-bit linear (the classic Sun reference decoder).
fn alaw_to_linear(a: u8) -> i16 {
    let a = a ^ 0x55;
    let mut t = ((a & 0x0F) as i16) << 4;
    match (a & 0x70) >> 4 {
        0 => t += 8,
        1 => t += 0x108,
        seg => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    if a & 0x80 != 0 {
        t
    } else {
        -t
    }
}

/// Reads a WAV file as 8 kHz mono: channels are averaged and other rates resampled (a
/// windowed-sinc low-pass below 4 kHz first when downsampling, then linear interpolation).
pub fn read_8k_mono(bytes: &[u8]) -> Result<Vec<i16>, WavError> {
    let decoded = decode(bytes)?;
    let mono = if decoded.channels == 1 {
        decoded.samples
    } else {
        decoded
            .samples
            .chunks_exact(decoded.channels)
            .map(|frame| {
                let sum: i32 = frame.iter().map(|&s| s as i32).sum();
                (sum / decoded.channels as i32) as i16
            })
            .collect()
    };
    Ok(resample(&mono, decoded.rate, RATE_8K))
}

/// Reads a WAV file as two tracks at its own rate: `(left, right, rate)`. A mono file gives
/// the same track twice; channels past the second are ignored.
pub fn read_stereo(bytes: &[u8]) -> Result<(Vec<i16>, Vec<i16>, u32), WavError> {
    let decoded = decode(bytes)?;
    let n = decoded.channels;
    let frames = decoded.samples.chunks_exact(n);
    let left: Vec<i16> = frames.clone().map(|f| f[0]).collect();
    let right: Vec<i16> = if n == 1 {
        left.clone()
    } else {
        frames.map(|f| f[1]).collect()
    };
    Ok((left, right, decoded.rate))
}

/// Resamples mono audio from `from` Hz to `to` Hz. Downsampling first low-passes the signal
/// below 90 % of the new Nyquist frequency so that, e.g., 22.05 kHz speech does not fold
/// its 4–11 kHz content back into the telephone band.
pub fn resample(samples: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to || samples.is_empty() || from == 0 || to == 0 {
        return samples.to_vec();
    }
    let filtered;
    let input: &[i16] = if to < from {
        let ratio = from as f64 / to as f64;
        // About 16 taps per output sample period keeps the transition band near 10 % of
        // the new rate whatever the ratio; capped for absurd ratios.
        let half = (8.0 * ratio).ceil().min(256.0) as isize;
        filtered = low_pass(samples, 0.45 / ratio, half);
        &filtered
    } else {
        samples
    };
    let out_len = (input.len() as u64 * to as u64 / from as u64) as usize;
    let last = input.len() - 1;
    (0..out_len)
        .map(|n| {
            // Exact integer position so long files do not drift.
            let pos = n as u64 * from as u64;
            let i = (pos / to as u64) as usize;
            let frac = (pos % to as u64) as f64 / to as f64;
            let a = input[i.min(last)] as f64;
            let b = input[(i + 1).min(last)] as f64;
            (a + (b - a) * frac).round() as i16
        })
        .collect()
}

/// A Hamming-windowed sinc FIR low-pass of `2 * half + 1` taps; `cutoff` is a fraction of
/// the sample rate.
fn low_pass(samples: &[i16], cutoff: f64, half: isize) -> Vec<i16> {
    let taps: Vec<f64> = (-half..=half)
        .map(|k| {
            let x = k as f64;
            let sinc = if k == 0 {
                2.0 * cutoff
            } else {
                (2.0 * std::f64::consts::PI * cutoff * x).sin() / (std::f64::consts::PI * x)
            };
            let window = 0.54 + 0.46 * (std::f64::consts::PI * x / (half as f64 + 1.0)).cos();
            sinc * window
        })
        .collect();
    let gain: f64 = taps.iter().sum();
    let n = samples.len() as isize;
    (0..n)
        .map(|i| {
            let mut acc = 0.0;
            for (j, tap) in taps.iter().enumerate() {
                let k = i + j as isize - half;
                if (0..n).contains(&k) {
                    acc += tap * samples[k as usize] as f64;
                }
            }
            (acc / gain).round().clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

/// Appends a 44-byte PCM 16-bit WAV header. For a file written as it is recorded, pass 0
/// as `data_len` and fix the sizes with [`patch_sizes`] at the end.
pub fn write_header(out: &mut Vec<u8>, channels: u16, rate: u32, data_len: u32) {
    let block_align = channels.saturating_mul(2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&36u32.saturating_add(data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&TAG_PCM.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&rate.saturating_mul(block_align as u32).to_le_bytes());
    out.extend_from_slice(&block_align.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
}

/// Fixes the RIFF and data sizes of a header written by [`write_header`].
///
/// # Panics
/// If `header` is shorter than 44 bytes (a caller bug, not bad input).
pub fn patch_sizes(header: &mut [u8], data_len: u32) {
    assert!(header.len() >= 44, "a WAV header is 44 bytes");
    header[4..8].copy_from_slice(&36u32.saturating_add(data_len).to_le_bytes());
    header[40..44].copy_from_slice(&data_len.to_le_bytes());
}

/// A whole 8 kHz mono 16-bit WAV file holding `samples`.
pub fn mono_8k(samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    write_header(&mut out, 1, RATE_8K, data_len);
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, rate: u32, secs: f64, amp: f64) -> Vec<i16> {
        let n = (rate as f64 * secs) as usize;
        (0..n)
            .map(|i| {
                (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin()) as i16
            })
            .collect()
    }

    fn zero_crossings(s: &[i16]) -> usize {
        s.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count()
    }

    fn rms(s: &[i16]) -> f64 {
        (s.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / s.len() as f64).sqrt()
    }

    /// A WAV file with an arbitrary fmt chunk, an optional LIST chunk before the data.
    fn wav_file(tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8], list: bool) -> Vec<u8> {
        let block_align = channels * bits / 8;
        let mut fmt = Vec::new();
        fmt.extend_from_slice(&tag.to_le_bytes());
        fmt.extend_from_slice(&channels.to_le_bytes());
        fmt.extend_from_slice(&rate.to_le_bytes());
        fmt.extend_from_slice(&rate.saturating_mul(block_align as u32).to_le_bytes());
        fmt.extend_from_slice(&block_align.to_le_bytes());
        fmt.extend_from_slice(&bits.to_le_bytes());
        let mut body = b"WAVE".to_vec();
        let mut chunk = |id: &[u8], bytes: &[u8]| {
            body.extend_from_slice(id);
            body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            body.extend_from_slice(bytes);
            if bytes.len() % 2 == 1 {
                body.push(0);
            }
        };
        chunk(b"fmt ", &fmt);
        if list {
            chunk(b"LIST", b"INFOISFT\x05\x00\x00\x00odd!\x00");
        }
        chunk(b"data", data);
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn le16(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    #[test]
    fn mono_8k_round_trips() {
        let samples: Vec<i16> = (0..800).map(|i| (i * 37 % 2000 - 1000) as i16).collect();
        let file = mono_8k(&samples);
        assert_eq!(file.len(), 44 + 1600);
        assert_eq!(&file[0..4], b"RIFF");
        assert_eq!(u32_at(&file, 4), 36 + 1600);
        assert_eq!(u32_at(&file, 40), 1600);
        assert_eq!(read_8k_mono(&file).unwrap(), samples);
        let (l, r, rate) = read_stereo(&file).unwrap();
        assert_eq!(
            (l.as_slice(), r.as_slice(), rate),
            (&samples[..], &samples[..], 8000)
        );
    }

    #[test]
    fn header_with_placeholder_sizes_is_patched() {
        let mut file = Vec::new();
        write_header(&mut file, 2, 8000, 0);
        assert_eq!(file.len(), 44);
        // Interleaved left 1000s, right -1000s.
        for _ in 0..100 {
            file.extend_from_slice(&1000i16.to_le_bytes());
            file.extend_from_slice(&(-1000i16).to_le_bytes());
        }
        patch_sizes(&mut file[..44], 400);
        assert_eq!(u32_at(&file, 4), 436);
        assert_eq!(u32_at(&file, 40), 400);
        assert_eq!(u32_at(&file, 28), 32000, "byte rate");
        assert_eq!(u16_at(&file, 32), 4, "block align");
        let (l, r, rate) = read_stereo(&file).unwrap();
        assert_eq!(rate, 8000);
        assert_eq!(l, vec![1000; 100]);
        assert_eq!(r, vec![-1000; 100]);
        // Mono mix of opposite channels is silence.
        assert_eq!(read_8k_mono(&file).unwrap(), vec![0; 100]);
    }

    #[test]
    fn a_header_with_unpatched_zero_size_still_reads() {
        let mut file = Vec::new();
        write_header(&mut file, 1, 8000, 0);
        file.extend_from_slice(&le16(&[1, 2, 3]));
        assert_eq!(read_8k_mono(&file).unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn resampling_a_16k_440_hz_tone_keeps_its_frequency() {
        let tone = sine(440.0, 16000, 1.0, 10000.0);
        let file = wav_file(TAG_PCM, 1, 16000, 16, &le16(&tone), true);
        let out = read_8k_mono(&file).unwrap();
        assert_eq!(out.len(), 8000);
        // 440 Hz for one second: 880 zero crossings.
        let zc = zero_crossings(&out);
        assert!((875..=885).contains(&zc), "{zc} zero crossings");
        // The low-pass leaves the pass band at (nearly) full level.
        let level = rms(&out[100..7900]) / rms(&tone);
        assert!((0.95..1.05).contains(&level), "level {level}");
    }

    #[test]
    fn downsampling_removes_what_would_alias() {
        // 6 kHz at 22.05 kHz would fold to 2 kHz at 8 kHz without the low-pass.
        let tone = sine(6000.0, 22050, 0.5, 10000.0);
        let file = wav_file(TAG_PCM, 1, 22050, 16, &le16(&tone), false);
        let out = read_8k_mono(&file).unwrap();
        assert_eq!(out.len(), 4000);
        assert!(
            rms(&out[100..3900]) < 300.0,
            "alias rms {}",
            rms(&out[100..3900])
        );
        // 48 kHz stereo, 1 kHz in both channels.
        let left = sine(1000.0, 48000, 0.5, 8000.0);
        let stereo: Vec<i16> = left.iter().flat_map(|&s| [s, s]).collect();
        let file = wav_file(TAG_PCM, 2, 48000, 16, &le16(&stereo), true);
        let out = read_8k_mono(&file).unwrap();
        assert_eq!(out.len(), 4000);
        let zc = zero_crossings(&out);
        assert!((995..=1005).contains(&zc), "{zc} zero crossings");
    }

    #[test]
    fn upsampling_interpolates() {
        let file = wav_file(TAG_PCM, 1, 4000, 16, &le16(&[0, 1000, 2000]), false);
        assert_eq!(
            read_8k_mono(&file).unwrap(),
            vec![0, 500, 1000, 1500, 2000, 2000]
        );
    }

    #[test]
    fn decodes_8_bit_g711_24_bit_and_float() {
        let file = wav_file(TAG_PCM, 1, 8000, 8, &[128, 255, 0], false);
        assert_eq!(read_8k_mono(&file).unwrap(), vec![0, 127 << 8, -32768]);

        let file = wav_file(TAG_MULAW, 1, 8000, 8, &[0xFF, 0x7F, 0x00, 0x80], false);
        assert_eq!(read_8k_mono(&file).unwrap(), vec![0, 0, -32124, 32124]);

        let file = wav_file(TAG_ALAW, 1, 8000, 8, &[0xD5, 0x55, 0x2A, 0xAA], false);
        assert_eq!(read_8k_mono(&file).unwrap(), vec![8, -8, -32256, 32256]);

        let file = wav_file(
            TAG_PCM,
            1,
            8000,
            24,
            &[0x00, 0x34, 0x12, 0x00, 0x00, 0x80],
            false,
        );
        assert_eq!(read_8k_mono(&file).unwrap(), vec![0x1234, -32768]);

        let floats: Vec<u8> = [0.5f32, -1.0, 2.0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        let file = wav_file(TAG_FLOAT, 1, 8000, 32, &floats, false);
        assert_eq!(read_8k_mono(&file).unwrap(), vec![16384, -32767, 32767]);
    }

    #[test]
    fn extensible_format_uses_its_sub_format() {
        let mut fmt = Vec::new();
        fmt.extend_from_slice(&TAG_EXTENSIBLE.to_le_bytes());
        fmt.extend_from_slice(&1u16.to_le_bytes());
        fmt.extend_from_slice(&8000u32.to_le_bytes());
        fmt.extend_from_slice(&16000u32.to_le_bytes());
        fmt.extend_from_slice(&2u16.to_le_bytes());
        fmt.extend_from_slice(&16u16.to_le_bytes());
        fmt.extend_from_slice(&22u16.to_le_bytes());
        fmt.extend_from_slice(&16u16.to_le_bytes());
        fmt.extend_from_slice(&4u32.to_le_bytes());
        fmt.extend_from_slice(&[
            1, 0, 0, 0, 0, 0, 0x10, 0, 0x80, 0, 0, 0xAA, 0, 0x38, 0x9B, 0x71,
        ]);
        let mut file = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
        file.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
        file.extend_from_slice(&fmt);
        file.extend_from_slice(b"data\x04\0\0\0");
        file.extend_from_slice(&le16(&[7, -7]));
        assert_eq!(read_8k_mono(&file).unwrap(), vec![7, -7]);
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(read_8k_mono(b"").unwrap_err(), WavError::NotWave);
        assert_eq!(
            read_8k_mono(b"RIFF\0\0\0\0AVI LIST").unwrap_err(),
            WavError::NotWave
        );
        assert_eq!(
            read_8k_mono(b"RIFF\0\0\0\0WAVE").unwrap_err(),
            WavError::Truncated("fmt")
        );
        assert_eq!(
            read_8k_mono(b"RIFF\0\0\0\0WAVEdata\x02\0\0\0\0\0").unwrap_err(),
            WavError::MissingFormat
        );
        let no_data = &wav_file(TAG_PCM, 1, 8000, 16, &[], false)[..36];
        assert_eq!(read_8k_mono(no_data).unwrap_err(), WavError::MissingData);
        let adpcm = wav_file(2, 1, 8000, 4, &[0; 4], false);
        assert_eq!(
            read_8k_mono(&adpcm).unwrap_err(),
            WavError::UnsupportedFormat(2)
        );
        let pcm12 = wav_file(TAG_PCM, 1, 8000, 12, &[0; 4], false);
        assert_eq!(
            read_8k_mono(&pcm12).unwrap_err(),
            WavError::UnsupportedBits { tag: 1, bits: 12 }
        );
        let no_channels = wav_file(TAG_PCM, 0, 8000, 16, &[0; 4], false);
        assert!(matches!(
            read_8k_mono(&no_channels).unwrap_err(),
            WavError::BadChannels { channels: 0, .. }
        ));
        let no_rate = wav_file(TAG_PCM, 1, 0, 16, &[0; 4], false);
        assert_eq!(read_8k_mono(&no_rate).unwrap_err(), WavError::BadRate(0));
        assert!(WavError::UnsupportedFormat(0x55)
            .to_string()
            .contains("0x0055"));
    }

    #[test]
    fn garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let good = wav_file(
            TAG_PCM,
            2,
            11025,
            16,
            &le16(&sine(300.0, 11025, 0.05, 5000.0)),
            true,
        );
        for _ in 0..3000 {
            let mut file = good.clone();
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..file.len());
                file[at] = rng.random();
            }
            file.truncate(rng.random_range(0..=file.len()));
            let _ = read_8k_mono(&file);
            let _ = read_stereo(&file);
        }
    }
}
