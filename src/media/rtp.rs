//! RTP (RFC 3550) packet views and builders, RTCP sender/receiver reports, and RFC 4733
//! telephone-event payloads.
//!
//! The relay looks at every packet it forwards, so the RTP side is a zero-copy view:
//! [`parse_rtp`] reads the fixed header, skips CSRCs and the extension header, strips
//! padding and reports where the payload is; [`write_rtp_header`] writes into a
//! caller's buffer. Nothing here allocates except RTCP parsing and building, which
//! happen a few times per call per five seconds. All parsers treat input as hostile:
//! they bound every read by the buffer and return `None` / stop instead of panicking.

use std::time::{SystemTime, UNIX_EPOCH};

/// Size of the fixed RTP header.
pub const RTP_HEADER_LEN: usize = 12;
/// RTCP packet type of a sender report.
pub const RTCP_SR: u8 = 200;
/// RTCP packet type of a receiver report.
pub const RTCP_RR: u8 = 201;
/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
/// Largest report count an RTCP header can carry (5 bits).
const MAX_REPORT_BLOCKS: usize = 31;

/// A parsed RTP header, with where the payload sits in the buffer it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    /// Always 2 for a packet [`parse_rtp`] accepted.
    pub version: u8,
    /// The P bit: padding was present (and is excluded from `payload_len`).
    pub padding: bool,
    /// The M bit (start of a talkspurt for audio; first packet of a DTMF event).
    pub marker: bool,
    /// The 7-bit payload type.
    pub payload_type: u8,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp in the payload's clock.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Offset of the payload: after the fixed header, CSRCs and any extension.
    pub payload_offset: usize,
    /// Payload length, padding excluded.
    pub payload_len: usize,
}

impl RtpHeader {
    /// The payload as a slice of the buffer this header was parsed from.
    pub fn payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.payload_offset..self.payload_offset + self.payload_len]
    }
}

/// Parses an RTP packet's header. `None` if the version is not 2, the buffer is shorter
/// than the header it announces, or the padding count is impossible.
pub fn parse_rtp(buf: &[u8]) -> Option<RtpHeader> {
    if buf.len() < RTP_HEADER_LEN || buf[0] >> 6 != 2 {
        return None;
    }
    let padding = buf[0] & 0x20 != 0;
    let extension = buf[0] & 0x10 != 0;
    let csrc_count = (buf[0] & 0x0F) as usize;
    let mut offset = RTP_HEADER_LEN + 4 * csrc_count;
    if extension {
        // 16-bit profile tag, 16-bit length in 32-bit words, then the words.
        let words = u16::from_be_bytes([*buf.get(offset + 2)?, *buf.get(offset + 3)?]) as usize;
        offset += 4 + 4 * words;
    }
    if offset > buf.len() {
        return None;
    }
    let mut end = buf.len();
    if padding {
        // The last octet counts the padding octets, itself included.
        let pad = buf[end - 1] as usize;
        if pad == 0 || pad > end - offset {
            return None;
        }
        end -= pad;
    }
    Some(RtpHeader {
        version: 2,
        padding,
        marker: buf[1] & 0x80 != 0,
        payload_type: buf[1] & 0x7F,
        seq: u16::from_be_bytes([buf[2], buf[3]]),
        timestamp: be32(buf, 4),
        ssrc: be32(buf, 8),
        payload_offset: offset,
        payload_len: end - offset,
    })
}

/// Writes a 12-byte RTP header (version 2, no padding, extension or CSRCs) at the start
/// of `out` and returns 12. Panics if `out` is shorter than 12 bytes (a caller bug).
pub fn write_rtp_header(
    out: &mut [u8],
    marker: bool,
    pt: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
) -> usize {
    out[0] = 0x80;
    out[1] = (pt & 0x7F) | if marker { 0x80 } else { 0 };
    out[2..4].copy_from_slice(&seq.to_be_bytes());
    out[4..8].copy_from_slice(&ts.to_be_bytes());
    out[8..12].copy_from_slice(&ssrc.to_be_bytes());
    RTP_HEADER_LEN
}

/// Whether a packet on a muxed RTP/RTCP port is RTCP (RFC 5761 §4): version 2 and a
/// second octet in 192..=223, which no RTP payload type 64..=95 with marker can collide
/// with in practice.
pub fn is_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 2 && buf[0] >> 6 == 2 && (192..=223).contains(&buf[1])
}

/// One reception report block of an SR or RR (RFC 3550 §6.4.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Fraction lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed on the wire; clamped when written).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received (cycles << 16 | seq).
    pub highest_seq: u32,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR received from the source.
    pub lsr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub dlsr: u32,
}

/// The sender-info section of a sender report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderInfo {
    /// NTP timestamp, seconds since 1900.
    pub ntp_sec: u32,
    /// NTP timestamp, fraction of a second in 1/2^32.
    pub ntp_frac: u32,
    /// The RTP timestamp corresponding to the NTP timestamp.
    pub rtp_ts: u32,
    /// Packets sent since the start of transmission.
    pub packets: u32,
    /// Payload octets sent since the start of transmission.
    pub octets: u32,
}

/// One packet of a compound RTCP packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RtcpPacket {
    /// SR (PT 200).
    SenderReport {
        /// The sender's SSRC.
        ssrc: u32,
        /// What the sender has sent.
        info: SenderInfo,
        /// What the sender has received.
        blocks: Vec<ReportBlock>,
    },
    /// RR (PT 201).
    ReceiverReport {
        /// The reporter's SSRC.
        ssrc: u32,
        /// What the reporter has received.
        blocks: Vec<ReportBlock>,
    },
    /// Any other packet type (SDES, BYE, APP, feedback...), not decoded.
    Other {
        /// The RTCP packet type.
        packet_type: u8,
    },
}

/// Walks a compound RTCP packet and decodes its SRs and RRs. Stops at the first
/// malformed packet (wrong version, a length running past the buffer, report blocks
/// not fitting the packet) and returns what came before it; never panics.
pub fn parse_rtcp(buf: &[u8]) -> Vec<RtcpPacket> {
    let mut packets = Vec::new();
    let mut rest = buf;
    while rest.len() >= 4 {
        if rest[0] >> 6 != 2 {
            break;
        }
        let count = (rest[0] & 0x1F) as usize;
        let packet_type = rest[1];
        let len = (u16::from_be_bytes([rest[2], rest[3]]) as usize + 1) * 4;
        if len > rest.len() {
            break;
        }
        let pkt = &rest[..len];
        rest = &rest[len..];
        let parsed = match packet_type {
            RTCP_SR => parse_sr(pkt, count),
            RTCP_RR => parse_rr(pkt, count),
            _ => Some(RtcpPacket::Other { packet_type }),
        };
        match parsed {
            Some(p) => packets.push(p),
            None => break,
        }
    }
    packets
}

fn parse_sr(pkt: &[u8], count: usize) -> Option<RtcpPacket> {
    if pkt.len() < 28 + 24 * count {
        return None;
    }
    let info = SenderInfo {
        ntp_sec: be32(pkt, 8),
        ntp_frac: be32(pkt, 12),
        rtp_ts: be32(pkt, 16),
        packets: be32(pkt, 20),
        octets: be32(pkt, 24),
    };
    Some(RtcpPacket::SenderReport {
        ssrc: be32(pkt, 4),
        info,
        blocks: parse_blocks(&pkt[28..], count),
    })
}

fn parse_rr(pkt: &[u8], count: usize) -> Option<RtcpPacket> {
    if pkt.len() < 8 + 24 * count {
        return None;
    }
    Some(RtcpPacket::ReceiverReport {
        ssrc: be32(pkt, 4),
        blocks: parse_blocks(&pkt[8..], count),
    })
}

/// Decodes `count` blocks; the caller checked that they fit.
fn parse_blocks(b: &[u8], count: usize) -> Vec<ReportBlock> {
    (0..count)
        .map(|i| {
            let o = i * 24;
            // 24-bit two's complement: shift into the top of an i32 and back to sign-extend.
            let cumulative_lost = (be32(b, o + 4) << 8) as i32 >> 8;
            ReportBlock {
                ssrc: be32(b, o),
                fraction_lost: b[o + 4],
                cumulative_lost,
                highest_seq: be32(b, o + 8),
                jitter: be32(b, o + 12),
                lsr: be32(b, o + 16),
                dlsr: be32(b, o + 20),
            }
        })
        .collect()
}

/// Appends a sender report to `out` (so several packets can form a compound packet).
/// At most 31 blocks fit an RTCP header; further blocks are left out.
pub fn write_sender_report(
    out: &mut Vec<u8>,
    ssrc: u32,
    info: &SenderInfo,
    blocks: &[ReportBlock],
) {
    let blocks = &blocks[..blocks.len().min(MAX_REPORT_BLOCKS)];
    write_rtcp_header(out, blocks.len(), RTCP_SR, 28 + 24 * blocks.len());
    out.extend_from_slice(&ssrc.to_be_bytes());
    for v in [
        info.ntp_sec,
        info.ntp_frac,
        info.rtp_ts,
        info.packets,
        info.octets,
    ] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    write_blocks(out, blocks);
}

/// Appends a receiver report to `out`. At most 31 blocks are written.
pub fn write_receiver_report(out: &mut Vec<u8>, ssrc: u32, blocks: &[ReportBlock]) {
    let blocks = &blocks[..blocks.len().min(MAX_REPORT_BLOCKS)];
    write_rtcp_header(out, blocks.len(), RTCP_RR, 8 + 24 * blocks.len());
    out.extend_from_slice(&ssrc.to_be_bytes());
    write_blocks(out, blocks);
}

fn write_rtcp_header(out: &mut Vec<u8>, count: usize, pt: u8, total_len: usize) {
    out.push(0x80 | count as u8);
    out.push(pt);
    out.extend_from_slice(&((total_len / 4 - 1) as u16).to_be_bytes());
}

fn write_blocks(out: &mut Vec<u8>, blocks: &[ReportBlock]) {
    for b in blocks {
        out.extend_from_slice(&b.ssrc.to_be_bytes());
        let lost = b.cumulative_lost.clamp(-0x80_0000, 0x7F_FFFF) as u32 & 0x00FF_FFFF;
        out.extend_from_slice(&((b.fraction_lost as u32) << 24 | lost).to_be_bytes());
        for v in [b.highest_seq, b.jitter, b.lsr, b.dlsr] {
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

/// The current wall-clock time as an NTP timestamp (seconds since 1900, fraction).
pub fn ntp_now() -> (u32, u32) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let sec = (now.as_secs() + NTP_UNIX_OFFSET) as u32;
    let frac = ((now.subsec_nanos() as u64) << 32) / 1_000_000_000;
    (sec, frac as u32)
}

/// The middle 32 bits of an NTP timestamp: the LSR of a report block, and the unit
/// (1/65536 s) in which round-trip time is computed.
pub fn ntp_middle(sec: u32, frac: u32) -> u32 {
    (sec << 16) | (frac >> 16)
}

/// An RFC 4733 telephone-event payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code: 0-9, 10 = `*`, 11 = `#`, 12-15 = A-D, 16 = flash.
    pub event: u8,
    /// The E bit: this is (one of the three copies of) the last packet of the event.
    pub end: bool,
    /// Power level in -dBm0 (0..=63).
    pub volume: u8,
    /// Duration so far, in timestamp units (8 kHz for telephone-event/8000).
    pub duration: u16,
}

/// Parses a telephone-event payload (the first 4 octets; `None` if shorter).
pub fn parse_telephone_event(payload: &[u8]) -> Option<TelephoneEvent> {
    if payload.len() < 4 {
        return None;
    }
    Some(TelephoneEvent {
        event: payload[0],
        end: payload[1] & 0x80 != 0,
        volume: payload[1] & 0x3F,
        duration: u16::from_be_bytes([payload[2], payload[3]]),
    })
}

/// Writes a telephone-event payload into `out` and returns 4. Panics if `out` is
/// shorter than 4 bytes (a caller bug).
pub fn write_telephone_event(out: &mut [u8], ev: &TelephoneEvent) -> usize {
    out[0] = ev.event;
    out[1] = (ev.volume & 0x3F) | if ev.end { 0x80 } else { 0 };
    out[2..4].copy_from_slice(&ev.duration.to_be_bytes());
    4
}

/// The DTMF digit of an event code (0-9, `*`, `#`, A-D), `None` for other events.
pub fn event_digit(event: u8) -> Option<char> {
    Some(match event {
        0..=9 => (b'0' + event) as char,
        10 => '*',
        11 => '#',
        12..=15 => (b'A' + event - 12) as char,
        _ => return None,
    })
}

/// The event code of a DTMF digit (`a`-`d` accepted as A-D), `None` for anything else.
pub fn digit_event(digit: char) -> Option<u8> {
    Some(match digit {
        '0'..='9' => digit as u8 - b'0',
        '*' => 10,
        '#' => 11,
        'A'..='D' => digit as u8 - b'A' + 12,
        'a'..='d' => digit as u8 - b'a' + 12,
        _ => return None,
    })
}

/// Big-endian u32 at `o`; callers have bounded `o + 4` by the slice length.
#[inline]
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(n: u32) -> ReportBlock {
        ReportBlock {
            ssrc: 0x1000 + n,
            fraction_lost: n as u8 * 3,
            cumulative_lost: -(n as i32) * 1000 + 17,
            highest_seq: 0x0001_FFF0 + n,
            jitter: 40 + n,
            lsr: 0xABCD_0000 + n,
            dlsr: 65536 * n,
        }
    }

    #[test]
    fn rtp_header_round_trip() {
        let mut buf = [0u8; 172];
        let n = write_rtp_header(&mut buf, true, 8, 65535, 0xDEAD_BEEF, 0x1234_5678);
        assert_eq!(n, 12);
        let h = parse_rtp(&buf).unwrap();
        assert_eq!(h.version, 2);
        assert!(h.marker && !h.padding);
        assert_eq!(
            (h.payload_type, h.seq, h.timestamp, h.ssrc),
            (8, 65535, 0xDEAD_BEEF, 0x1234_5678)
        );
        assert_eq!((h.payload_offset, h.payload_len), (12, 160));
        assert_eq!(h.payload(&buf).len(), 160);
    }

    #[test]
    fn rtp_csrcs_extension_and_padding() {
        // 2 CSRCs, an extension of 1 word, 5 payload bytes and 3 padding bytes.
        let mut buf = vec![0xB2, 0x00, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        buf.extend_from_slice(&[0; 8]); // CSRCs
        buf.extend_from_slice(&[0xBE, 0xDE, 0, 1, 9, 9, 9, 9]); // extension
        buf.extend_from_slice(&[1, 2, 3, 4, 5]);
        buf.extend_from_slice(&[0, 0, 3]);
        let h = parse_rtp(&buf).unwrap();
        assert!(h.padding);
        assert_eq!(h.payload_offset, 28);
        assert_eq!(h.payload_len, 5);
        assert_eq!(h.payload(&buf), &[1, 2, 3, 4, 5]);
        // Padding count larger than the payload, or zero: rejected.
        let mut bad = buf.clone();
        *bad.last_mut().unwrap() = 9;
        assert_eq!(parse_rtp(&bad), None);
        *bad.last_mut().unwrap() = 0;
        assert_eq!(parse_rtp(&bad), None);
        // Extension running past the end: rejected.
        let mut bad = buf.clone();
        bad[23] = 200;
        assert_eq!(parse_rtp(&bad), None);
    }

    #[test]
    fn rtp_rejects_wrong_version_and_short() {
        let mut buf = [0u8; 20];
        write_rtp_header(&mut buf, false, 0, 1, 2, 3);
        buf[0] = 0x40;
        assert_eq!(parse_rtp(&buf), None);
        buf[0] = 0x80;
        assert!(parse_rtp(&buf).is_some());
        assert_eq!(parse_rtp(&buf[..11]), None);
        buf[0] = 0x8F; // 15 CSRCs do not fit in 20 bytes
        assert_eq!(parse_rtp(&buf), None);
    }

    #[test]
    fn rtcp_demux() {
        let mut out = Vec::new();
        write_receiver_report(&mut out, 1, &[]);
        assert!(is_rtcp(&out));
        let mut rtp = [0u8; 12];
        write_rtp_header(&mut rtp, true, 0, 1, 2, 3);
        assert!(!is_rtcp(&rtp));
        write_rtp_header(&mut rtp, true, 101, 1, 2, 3);
        assert!(!is_rtcp(&rtp));
        assert!(!is_rtcp(&[0x80]));
    }

    #[test]
    fn sender_report_round_trip() {
        let info = SenderInfo {
            ntp_sec: 3_900_000_000,
            ntp_frac: 0x8000_0000,
            rtp_ts: 160_000,
            packets: 1000,
            octets: 160_000,
        };
        let blocks = [block(1), block(2)];
        let mut out = Vec::new();
        write_sender_report(&mut out, 0xAAAA, &info, &blocks);
        assert_eq!(out.len(), 28 + 48);
        write_receiver_report(&mut out, 0xBBBB, &[block(3)]);
        // An SDES-like packet (not decoded) and a trailing RR after it.
        out.extend_from_slice(&[0x81, 202, 0, 1, 0, 0, 0xAA, 0xAA]);
        write_receiver_report(&mut out, 0xCCCC, &[]);
        let parsed = parse_rtcp(&out);
        assert_eq!(
            parsed,
            vec![
                RtcpPacket::SenderReport {
                    ssrc: 0xAAAA,
                    info,
                    blocks: blocks.to_vec()
                },
                RtcpPacket::ReceiverReport {
                    ssrc: 0xBBBB,
                    blocks: vec![block(3)]
                },
                RtcpPacket::Other { packet_type: 202 },
                RtcpPacket::ReceiverReport {
                    ssrc: 0xCCCC,
                    blocks: vec![]
                },
            ]
        );
    }

    #[test]
    fn cumulative_lost_clamps_to_24_bits() {
        let mut b = block(0);
        b.cumulative_lost = 50_000_000;
        let mut out = Vec::new();
        write_receiver_report(&mut out, 1, &[b]);
        b.cumulative_lost = -50_000_000;
        write_receiver_report(&mut out, 2, &[b]);
        let parsed = parse_rtcp(&out);
        let lost: Vec<i32> = parsed
            .iter()
            .map(|p| match p {
                RtcpPacket::ReceiverReport { blocks, .. } => blocks[0].cumulative_lost,
                _ => panic!("not an RR: {p:?}"),
            })
            .collect();
        assert_eq!(lost, vec![0x7F_FFFF, -0x80_0000]);
    }

    #[test]
    fn too_many_blocks_are_capped() {
        let blocks: Vec<ReportBlock> = (0..40).map(block).collect();
        let mut out = Vec::new();
        write_receiver_report(&mut out, 9, &blocks);
        match &parse_rtcp(&out)[..] {
            [RtcpPacket::ReceiverReport { blocks: got, .. }] => assert_eq!(got[..], blocks[..31]),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rtcp_malformed_stops_safely() {
        let mut out = Vec::new();
        write_receiver_report(&mut out, 1, &[block(1)]);
        let good = out.len();
        write_receiver_report(&mut out, 2, &[block(2)]);
        // Second packet claims more blocks than its length holds.
        out[good] = 0x80 | 5;
        assert_eq!(parse_rtcp(&out).len(), 1);
        // Second packet's length runs past the buffer.
        out[good] = 0x81;
        out[good + 3] = 200;
        assert_eq!(parse_rtcp(&out).len(), 1);
        // Wrong version at the start: nothing.
        out[0] = 0x41;
        assert!(parse_rtcp(&out).is_empty());
        assert!(parse_rtcp(&[]).is_empty());
    }

    #[test]
    fn random_and_truncated_buffers_never_panic() {
        // xorshift: deterministic, no dependency on rand's API.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut valid = Vec::new();
        write_sender_report(&mut valid, 7, &SenderInfo::default(), &[block(1), block(2)]);
        write_receiver_report(&mut valid, 8, &[block(3)]);
        let mut rtp = vec![0u8; 12];
        write_rtp_header(&mut rtp, false, 0, 1, 2, 3);
        rtp.extend_from_slice(&[0xFF; 40]);
        for cut in 0..=valid.len() {
            let _ = parse_rtcp(&valid[..cut]);
        }
        for cut in 0..=rtp.len() {
            let _ = parse_rtp(&rtp[..cut]);
        }
        let mut seen_rtp = 0;
        for _ in 0..20_000 {
            let len = (next() % 120) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len > 0 && next() % 2 == 0 {
                buf[0] = 0x80 | (buf[0] & 0x3F); // version 2 so the deeper paths run
            }
            if let Some(h) = parse_rtp(&buf) {
                seen_rtp += 1;
                assert!(h.payload_offset + h.payload_len <= buf.len());
                let _ = h.payload(&buf);
            }
            let _ = parse_rtcp(&buf);
            let _ = is_rtcp(&buf);
            let _ = parse_telephone_event(&buf);
            // Mutate a valid compound packet in one byte.
            let mut m = valid.clone();
            let i = (next() as usize) % m.len();
            m[i] = next() as u8;
            let _ = parse_rtcp(&m);
        }
        assert!(seen_rtp > 100, "the fuzz loop should reach the accept path");
    }

    #[test]
    fn ntp_helpers() {
        let (sec, frac) = ntp_now();
        // After 2020 (NTP 3_786_825_600) in any plausible test environment.
        assert!(sec > 3_786_825_600);
        let _ = frac;
        assert_eq!(ntp_middle(0x1234_5678, 0x9ABC_DEF0), 0x5678_9ABC);
    }

    #[test]
    fn telephone_event_round_trip_and_digits() {
        let ev = TelephoneEvent {
            event: 11,
            end: true,
            volume: 10,
            duration: 1600,
        };
        let mut buf = [0u8; 4];
        assert_eq!(write_telephone_event(&mut buf, &ev), 4);
        assert_eq!(buf, [11, 0x8A, 0x06, 0x40]);
        assert_eq!(parse_telephone_event(&buf), Some(ev));
        assert_eq!(parse_telephone_event(&buf[..3]), None);
        let digits = "0123456789*#ABCD";
        for (code, d) in digits.chars().enumerate() {
            assert_eq!(event_digit(code as u8), Some(d));
            assert_eq!(digit_event(d), Some(code as u8));
        }
        assert_eq!(digit_event('c'), Some(14));
        assert_eq!(event_digit(16), None);
        assert_eq!(digit_event('E'), None);
    }
}
