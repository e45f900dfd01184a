//! SDP (RFC 4566), just enough for a media-anchoring B2BUA doing RFC 3264 offer/answer.
//!
//! The model keeps every line in order as `(type, value)` pairs, so a body the switch does not
//! change serializes back as it came (modulo CRLF and trailing whitespace) and attributes it
//! does not understand pass through untouched. Typed access covers what anchoring needs: the
//! connection address, the first audio stream, its direction and codecs; the rewrites are
//! [`Sdp::anchor`], [`Sdp::set_direction`] and [`Sdp::retain_formats`]. [`offer`] builds a
//! body from scratch for calls the switch originates or answers itself.
//!
//! Pure code: no I/O, nothing from the rest of the project.

use std::fmt::Write as _;
use std::net::IpAddr;

/// What is wrong with an SDP body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// The body has no lines at all.
    #[error("empty SDP body")]
    Empty,
    /// The body is not UTF-8 (line numbers start at 1).
    #[error("SDP line {line} is not UTF-8")]
    NotUtf8 {
        /// The offending line.
        line: usize,
    },
    /// A line is not `<letter>=<value>`.
    #[error("SDP line {line} is not <type>=<value>")]
    BadLine {
        /// The offending line.
        line: usize,
    },
    /// The first line is not `v=`.
    #[error("SDP does not start with v=")]
    MissingVersion,
    /// `v=` is not `0`.
    #[error("unsupported SDP version {0:?}")]
    UnsupportedVersion(String),
    /// An `m=` line is malformed.
    #[error("SDP line {line}: bad m= line ({reason})")]
    BadMedia {
        /// The offending line.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A parsed SDP body.
#[derive(Clone, Debug, PartialEq)]
pub struct Sdp {
    /// Session-level lines (type char, value) in order, `v=` first.
    pub lines: Vec<(u8, String)>,
    /// The media descriptions in order.
    pub media: Vec<MediaDesc>,
}

/// One media description: an `m=` line and the lines under it.
#[derive(Clone, Debug, PartialEq)]
pub struct MediaDesc {
    /// Media type, e.g. `audio`.
    pub kind: String,
    /// Transport port; 0 means the stream is rejected or disabled. A `/<count>` suffix on
    /// the port is dropped on parse (never used for audio in SIP).
    pub port: u16,
    /// Transport protocol, e.g. `RTP/AVP`.
    pub proto: String,
    /// Media formats (RTP payload types for RTP profiles), in preference order.
    pub formats: Vec<String>,
    /// The lines under the `m=` line (`c=`, `b=`, `a=` ...) in order.
    pub lines: Vec<(u8, String)>,
}

/// One codec of a media description.
#[derive(Clone, Debug, PartialEq)]
pub struct Format {
    /// RTP payload type.
    pub pt: u8,
    /// Encoding name, uppercase (`PCMU`, `PCMA`, `TELEPHONE-EVENT`); static payload types are
    /// named from RFC 3551 when there is no `a=rtpmap`; empty for an unmapped dynamic type.
    pub encoding: String,
    /// RTP clock rate in Hz (0 when unknown).
    pub clock_rate: u32,
}

impl Format {
    /// A format from its parts (the encoding is uppercased).
    pub fn new(pt: u8, encoding: &str, clock_rate: u32) -> Format {
        Format {
            pt,
            encoding: encoding.to_ascii_uppercase(),
            clock_rate,
        }
    }

    /// G.711 μ-law, static payload type 0.
    pub fn pcmu() -> Format {
        Format::new(0, "PCMU", 8000)
    }

    /// G.711 A-law, static payload type 8.
    pub fn pcma() -> Format {
        Format::new(8, "PCMA", 8000)
    }

    /// RFC 4733 telephone-event at 8 kHz on the given dynamic payload type.
    pub fn telephone_event(pt: u8) -> Format {
        Format::new(pt, "TELEPHONE-EVENT", 8000)
    }

    /// Whether this is RFC 4733 telephone-event.
    pub fn is_telephone_event(&self) -> bool {
        self.encoding == "TELEPHONE-EVENT"
    }

    /// Whether both name the same codec (encoding and clock rate), whatever their payload
    /// types: dynamic payload types are per offer, so codecs are matched by name.
    pub fn same_codec(&self, other: &Format) -> bool {
        self.encoding.eq_ignore_ascii_case(&other.encoding) && self.clock_rate == other.clock_rate
    }

    /// The encoding name as conventionally written in `a=rtpmap` (some endpoints compare
    /// `telephone-event` case-sensitively although RFC 4855 says names are case-insensitive).
    fn rtpmap_name(&self) -> &str {
        match self.encoding.as_str() {
            "TELEPHONE-EVENT" => "telephone-event",
            "OPUS" => "opus",
            other => other,
        }
    }
}

/// Media direction (RFC 3264 §5.1, §6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `a=sendrecv` (the default).
    SendRecv,
    /// `a=sendonly` (e.g. the side putting the call on hold).
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

impl Direction {
    /// The attribute name, e.g. `sendonly`.
    pub fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The answerer's view of an offered direction: sendonly ↔ recvonly, the rest unchanged.
    pub fn reverse(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }

    /// The direction named by an attribute (`a=<name>` without value), if it is one.
    pub fn from_attribute(name: &str) -> Option<Direction> {
        match name {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }

    /// Whether the side that wrote this direction sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether the side that wrote this direction wants to receive media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    fn from_flags(sends: bool, receives: bool) -> Direction {
        match (sends, receives) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }
}

/// Parses an SDP body. Lines may end in CRLF or LF; trailing whitespace and blank lines are
/// ignored. Never panics, whatever the input.
pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
    let mut sdp = Sdp {
        lines: Vec::new(),
        media: Vec::new(),
    };
    let mut seen_any = false;
    for (index, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line_no = index + 1;
        let text = std::str::from_utf8(raw).map_err(|_| SdpError::NotUtf8 { line: line_no })?;
        let text = text.trim_end();
        if text.is_empty() {
            continue;
        }
        let bytes = text.as_bytes();
        if bytes.len() < 2 || !bytes[0].is_ascii_alphabetic() || bytes[1] != b'=' {
            return Err(SdpError::BadLine { line: line_no });
        }
        let kind = bytes[0];
        let value = &text[2..];
        if !seen_any {
            if kind != b'v' {
                return Err(SdpError::MissingVersion);
            }
            if value.trim() != "0" {
                return Err(SdpError::UnsupportedVersion(value.to_string()));
            }
            seen_any = true;
        }
        if kind == b'm' {
            sdp.media.push(parse_media(value, line_no)?);
        } else if let Some(media) = sdp.media.last_mut() {
            media.lines.push((kind, value.to_string()));
        } else {
            sdp.lines.push((kind, value.to_string()));
        }
    }
    if !seen_any {
        return Err(SdpError::Empty);
    }
    Ok(sdp)
}

fn parse_media(value: &str, line: usize) -> Result<MediaDesc, SdpError> {
    let bad = |reason| SdpError::BadMedia { line, reason };
    let mut words = value.split_ascii_whitespace();
    let kind = words.next().ok_or(bad("no media type"))?;
    let port = words.next().ok_or(bad("no port"))?;
    let port = port.split('/').next().unwrap_or(port);
    let port: u16 = port.parse().map_err(|_| bad("port is not 0-65535"))?;
    let proto = words.next().ok_or(bad("no protocol"))?;
    Ok(MediaDesc {
        kind: kind.to_string(),
        port,
        proto: proto.to_string(),
        formats: words.map(str::to_string).collect(),
        lines: Vec::new(),
    })
}

/// Splits an attribute value `name[:value]`.
fn split_attribute(value: &str) -> (&str, &str) {
    match value.split_once(':') {
        Some((name, rest)) => (name, rest),
        None => (value, ""),
    }
}

/// The direction named by an `a=` line, if it is a direction attribute.
fn line_direction(line: &(u8, String)) -> Option<Direction> {
    if line.0 == b'a' {
        Direction::from_attribute(line.1.trim())
    } else {
        None
    }
}

/// The address of a `c=` value (`IN IP4 192.0.2.1`, `IN IP6 ::1`, multicast `/ttl` dropped).
fn connection_address(value: &str) -> Option<IpAddr> {
    let mut words = value.split_ascii_whitespace();
    if words.next()? != "IN" {
        return None;
    }
    let _addrtype = words.next()?;
    let addr = words.next()?;
    let addr = addr.split('/').next()?;
    addr.parse().ok()
}

fn addr_type(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

/// Attributes dropped when anchoring: ICE and RTCP addressing describe the far end's transport,
/// which the switch now replaces with its own (RTCP is relayed on RTP port + 1, so no rtcp-mux).
fn is_transport_attribute(line: &(u8, String)) -> bool {
    if line.0 != b'a' {
        return false;
    }
    let (name, _) = split_attribute(&line.1);
    matches!(
        name,
        "rtcp"
            | "rtcp-mux"
            | "rtcp-mux-only"
            | "candidate"
            | "remote-candidates"
            | "end-of-candidates"
    ) || name.starts_with("ice-")
}

/// The payload type an `a=rtpmap:`/`a=fmtp:`/`a=rtcp-fb:` line is about, if it is one.
fn format_attribute_pt(line: &(u8, String)) -> Option<&str> {
    if line.0 != b'a' {
        return None;
    }
    let (name, rest) = split_attribute(&line.1);
    if matches!(name, "rtpmap" | "fmtp" | "rtcp-fb") {
        rest.split_ascii_whitespace().next()
    } else {
        None
    }
}

/// RFC 3551 static audio payload types.
fn static_format(pt: u8) -> Option<(&'static str, u32)> {
    Some(match pt {
        0 => ("PCMU", 8000),
        3 => ("GSM", 8000),
        4 => ("G723", 8000),
        5 => ("DVI4", 8000),
        6 => ("DVI4", 16000),
        7 => ("LPC", 8000),
        8 => ("PCMA", 8000),
        9 => ("G722", 8000),
        10 | 11 => ("L16", 44100),
        12 => ("QCELP", 8000),
        13 => ("CN", 8000),
        14 => ("MPA", 90000),
        15 => ("G728", 8000),
        16 => ("DVI4", 11025),
        17 => ("DVI4", 22050),
        18 => ("G729", 8000),
        _ => return None,
    })
}

impl MediaDesc {
    /// The `m=` line's value, e.g. `audio 49170 RTP/AVP 0 8 101`.
    pub fn m_line(&self) -> String {
        let mut out = format!("{} {} {}", self.kind, self.port, self.proto);
        for f in &self.formats {
            out.push(' ');
            out.push_str(f);
        }
        out
    }

    /// Whether this is an audio stream.
    pub fn is_audio(&self) -> bool {
        self.kind.eq_ignore_ascii_case("audio")
    }

    /// This stream's own direction attribute, if it has one.
    pub fn direction_attribute(&self) -> Option<Direction> {
        self.lines.iter().find_map(line_direction)
    }

    /// The value of the first `a=<name>` or `a=<name>:<value>` attribute (empty for a flag).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| {
            let (n, v) = split_attribute(&l.1);
            (l.0 == b'a' && n == name).then_some(v)
        })
    }

    /// The codecs on the `m=` line in order; formats that are not payload type numbers are
    /// left out.
    pub fn codecs(&self) -> Vec<Format> {
        self.formats
            .iter()
            .filter_map(|f| f.parse::<u8>().ok())
            .map(|pt| self.format_of(pt))
            .collect()
    }

    fn format_of(&self, pt: u8) -> Format {
        let rtpmap = self.lines.iter().find_map(|l| {
            if l.0 != b'a' {
                return None;
            }
            let (name, rest) = split_attribute(&l.1);
            if name != "rtpmap" {
                return None;
            }
            let (p, map) = rest.trim().split_once(|c: char| c.is_ascii_whitespace())?;
            (p.parse::<u8>().ok()? == pt).then_some(map.trim())
        });
        if let Some(map) = rtpmap {
            let mut parts = map.split('/');
            let encoding = parts.next().unwrap_or("");
            let clock_rate = parts.next().and_then(|r| r.parse().ok()).unwrap_or(0);
            return Format::new(pt, encoding, clock_rate);
        }
        match static_format(pt) {
            Some((encoding, clock_rate)) => Format::new(pt, encoding, clock_rate),
            None => Format::new(pt, "", 0),
        }
    }
}

impl Sdp {
    /// Serializes with CRLF line ends. `parse(to_bytes(s))` gives `s` back for any parsed `s`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(256);
        let mut line = |kind: u8, value: &str| {
            out.push(kind as char);
            out.push('=');
            out.push_str(value);
            out.push_str("\r\n");
        };
        for (kind, value) in &self.lines {
            line(*kind, value);
        }
        for media in &self.media {
            line(b'm', &media.m_line());
            for (kind, value) in &media.lines {
                line(*kind, value);
            }
        }
        out.into_bytes()
    }

    /// The index in [`Sdp::media`] of the first audio stream with a port other than 0.
    pub fn audio_index(&self) -> Option<usize> {
        self.media.iter().position(|m| m.is_audio() && m.port != 0)
    }

    /// The first audio stream with a port other than 0.
    pub fn audio(&self) -> Option<&MediaDesc> {
        self.audio_index().map(|i| &self.media[i])
    }

    /// Mutable access to the first audio stream with a port other than 0.
    pub fn audio_mut(&mut self) -> Option<&mut MediaDesc> {
        self.audio_index().map(move |i| &mut self.media[i])
    }

    /// The connection address of a media stream: its own `c=`, else the session's `c=`.
    /// `None` when the index is out of range or no `c=` parses.
    pub fn connection(&self, media_index: usize) -> Option<IpAddr> {
        let media = self.media.get(media_index)?;
        media
            .lines
            .iter()
            .find(|l| l.0 == b'c')
            .or_else(|| self.lines.iter().find(|l| l.0 == b'c'))
            .and_then(|l| connection_address(&l.1))
    }

    /// The first `a=<name>[:<value>]` session-level attribute's value.
    pub fn session_attribute(&self, name: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| {
            let (n, v) = split_attribute(&l.1);
            (l.0 == b'a' && n == name).then_some(v)
        })
    }

    /// The direction of the first audio stream: its own attribute, else the session-level
    /// one, else sendrecv. A connection address of 0.0.0.0 (the RFC 2543 hold that RFC 3264
    /// §8.4 still asks answerers to understand) means "do not send to me", so it removes the
    /// receive half: sendrecv becomes sendonly, recvonly becomes inactive.
    pub fn direction(&self) -> Direction {
        let index = self.audio_index();
        let attribute = index
            .and_then(|i| self.media[i].direction_attribute())
            .or_else(|| self.lines.iter().find_map(line_direction))
            .unwrap_or(Direction::SendRecv);
        let held = index
            .and_then(|i| self.connection(i))
            .is_some_and(|a| a.is_unspecified());
        if held {
            Direction::from_flags(attribute.sends(), false)
        } else {
            attribute
        }
    }

    /// Sets the first audio stream's direction: any session-level direction attribute is
    /// removed (pushed down to the other streams that relied on it, so they keep theirs) and
    /// the stream's own attribute is replaced in place or appended. With no audio stream the
    /// attribute is set at session level.
    pub fn set_direction(&mut self, d: Direction) {
        let session = self.lines.iter().find_map(line_direction);
        self.lines.retain(|l| line_direction(l).is_none());
        let target = self
            .audio_index()
            .or_else(|| self.media.iter().position(MediaDesc::is_audio));
        let Some(target) = target else {
            self.lines.push((b'a', d.attribute().to_string()));
            return;
        };
        for (i, media) in self.media.iter_mut().enumerate() {
            if i == target {
                let mut placed = false;
                media.lines.retain_mut(|l| {
                    if line_direction(l).is_none() {
                        return true;
                    }
                    if placed {
                        return false;
                    }
                    placed = true;
                    l.1 = d.attribute().to_string();
                    true
                });
                if !placed {
                    media.lines.push((b'a', d.attribute().to_string()));
                }
            } else if let Some(s) = session {
                if media.direction_attribute().is_none() {
                    media.lines.push((b'a', s.attribute().to_string()));
                }
            }
        }
    }

    /// The `o=` session version, if it parses.
    pub fn session_version(&self) -> Option<u64> {
        let origin = self.lines.iter().find(|l| l.0 == b'o')?;
        origin.1.split_ascii_whitespace().nth(2)?.parse().ok()
    }

    /// Sets the `o=` session version (RFC 3264 §8: it must grow by one with every changed
    /// offer or answer in a dialog). No-op without a well-formed `o=`.
    pub fn set_session_version(&mut self, version: u64) {
        self.edit_origin(|words| words[2] = version.to_string());
    }

    /// Rewrites the `o=` line's words (username, sess-id, sess-version, nettype, addrtype,
    /// address) when it has all six.
    fn edit_origin(&mut self, edit: impl FnOnce(&mut Vec<String>)) {
        let Some(origin) = self.lines.iter_mut().find(|l| l.0 == b'o') else {
            return;
        };
        let mut words: Vec<String> = origin
            .1
            .split_ascii_whitespace()
            .map(str::to_string)
            .collect();
        if words.len() != 6 {
            return;
        }
        edit(&mut words);
        origin.1 = words.join(" ");
    }

    /// Anchors the media on the switch: the `o=` address and every `c=` (session and media)
    /// become `addr`, the first audio stream's port becomes `audio_port` (a `c=` is added to
    /// it if none applies), ICE and RTCP transport attributes (`a=candidate`, `a=ice-*`,
    /// `a=rtcp`, `a=rtcp-mux`, ...) are dropped everywhere since the switch relays RTCP on
    /// `audio_port + 1`, and the `o=` session version is bumped. Codecs, direction and other
    /// attributes are kept. Other streams keep their ports (see [`Sdp::reject_non_audio`]).
    pub fn anchor(&mut self, addr: IpAddr, audio_port: u16) {
        let connection = format!("IN {} {}", addr_type(addr), addr);
        self.edit_origin(|words| {
            if let Ok(v) = words[2].parse::<u64>() {
                words[2] = v.wrapping_add(1).to_string();
            }
            words[4] = addr_type(addr).to_string();
            words[5] = addr.to_string();
        });
        let rewrite = |lines: &mut Vec<(u8, String)>| {
            lines.retain(|l| !is_transport_attribute(l));
            for line in lines.iter_mut().filter(|l| l.0 == b'c') {
                line.1.clone_from(&connection);
            }
        };
        rewrite(&mut self.lines);
        for media in &mut self.media {
            rewrite(&mut media.lines);
        }
        let session_c = self.lines.iter().any(|l| l.0 == b'c');
        if let Some(media) = self.audio_mut() {
            media.port = audio_port;
            if !session_c && !media.lines.iter().any(|l| l.0 == b'c') {
                // RFC 4566 §5.7: c= goes after i= (if any) and before b=/k=/a=.
                let at = media.lines.iter().take_while(|l| l.0 == b'i').count();
                media.lines.insert(at, (b'c', connection.clone()));
            }
        }
    }

    /// Disables (port 0) every stream other than the first audio one: a switch that anchors
    /// audio only must not attract video or other streams to its address (RFC 3264 §6
    /// answers a stream it does not take with port 0; an offer may do the same).
    pub fn reject_non_audio(&mut self) {
        let keep = self.audio_index();
        for (i, media) in self.media.iter_mut().enumerate() {
            if Some(i) != keep {
                media.port = 0;
            }
        }
    }

    /// The codecs of the first audio stream (empty without one).
    pub fn codecs(&self) -> Vec<Format> {
        self.audio().map(MediaDesc::codecs).unwrap_or_default()
    }

    /// Keeps only the first audio stream's codecs for which `keep` is true: the others leave
    /// the `m=` line together with their `a=rtpmap`, `a=fmtp` and `a=rtcp-fb` lines. Formats
    /// that are not payload type numbers are kept.
    pub fn retain_formats(&mut self, keep: impl Fn(&Format) -> bool) {
        let Some(media) = self.audio_mut() else {
            return;
        };
        let removed: Vec<String> = media
            .formats
            .iter()
            .filter(|f| f.parse::<u8>().is_ok_and(|pt| !keep(&media.format_of(pt))))
            .cloned()
            .collect();
        if removed.is_empty() {
            return;
        }
        media.formats.retain(|f| !removed.contains(f));
        media
            .lines
            .retain(|l| format_attribute_pt(l).is_none_or(|pt| !removed.iter().any(|r| r == pt)));
    }
}

/// A fresh SDP from the switch for a single audio stream: `o=switchyard <id> <id> ...`
/// (the version starts at the session id; see [`Sdp::set_session_version`]), `s=-`, a
/// session `c=`, `t=0 0`, `m=audio <port> RTP/AVP <pts>`, an `a=rtpmap` for each format,
/// `a=fmtp:<pt> 0-15` for telephone-event, `a=ptime:20` and the direction.
pub fn offer(
    addr: IpAddr,
    port: u16,
    session_id: u64,
    formats: &[Format],
    direction: Direction,
) -> Sdp {
    let origin = format!(
        "switchyard {session_id} {session_id} IN {} {addr}",
        addr_type(addr)
    );
    let mut media = MediaDesc {
        kind: "audio".to_string(),
        port,
        proto: "RTP/AVP".to_string(),
        formats: formats.iter().map(|f| f.pt.to_string()).collect(),
        lines: Vec::with_capacity(formats.len() + 3),
    };
    for f in formats {
        let mut map = String::new();
        let _ = write!(map, "rtpmap:{} {}/{}", f.pt, f.rtpmap_name(), f.clock_rate);
        media.lines.push((b'a', map));
        if f.is_telephone_event() {
            media.lines.push((b'a', format!("fmtp:{} 0-15", f.pt)));
        }
    }
    media.lines.push((b'a', "ptime:20".to_string()));
    media.lines.push((b'a', direction.attribute().to_string()));
    Sdp {
        lines: vec![
            (b'v', "0".to_string()),
            (b'o', origin),
            (b's', "-".to_string()),
            (b'c', format!("IN {} {addr}", addr_type(addr))),
            (b't', "0 0".to_string()),
        ],
        media: vec![media],
    }
}

/// An RFC 3264 answer from the switch to `offer`: one `m=` line per offered stream, in the
/// same order; the first audio stream is accepted at `addr:port` with the offered codecs
/// (offer order, offer payload types) that match one of `supported` by name and clock rate,
/// every other stream is rejected with port 0. The body is otherwise built as by [`offer`],
/// with `direction` (usually `offer.direction().reverse()`, or inactive while the switch
/// holds). `None` when there is no audio stream or no common audio codec other than
/// telephone-event: the caller answers 488.
pub fn answer(
    offer_sdp: &Sdp,
    addr: IpAddr,
    port: u16,
    session_id: u64,
    supported: &[Format],
    direction: Direction,
) -> Option<Sdp> {
    let audio = offer_sdp.audio_index()?;
    let common: Vec<Format> = offer_sdp.media[audio]
        .codecs()
        .into_iter()
        .filter(|f| supported.iter().any(|s| s.same_codec(f)))
        .collect();
    if common.iter().all(Format::is_telephone_event) {
        return None;
    }
    let mut sdp = offer(addr, port, session_id, &common, direction);
    let accepted = sdp.media.pop()?;
    for (i, offered) in offer_sdp.media.iter().enumerate() {
        if i == audio {
            sdp.media.push(accepted.clone());
        } else {
            sdp.media.push(MediaDesc {
                kind: offered.kind.clone(),
                port: 0,
                proto: offered.proto.clone(),
                formats: offered.formats.clone(),
                lines: Vec::new(),
            });
        }
    }
    Some(sdp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// A softphone offer (Linphone / baresip style) with ICE and rtcp-mux.
    const LINPHONE: &str = "v=0\r\n\
o=alice 2890 1 IN IP4 192.168.1.20\r\n\
s=Talk\r\n\
c=IN IP4 192.168.1.20\r\n\
t=0 0\r\n\
a=ice-pwd:6b5f0d4f8a9e2c7a1b3d5e7f\r\n\
a=ice-ufrag:a1b2c3d4\r\n\
a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics\r\n\
m=audio 7078 RTP/AVP 96 0 8 101\r\n\
a=rtpmap:96 opus/48000/2\r\n\
a=fmtp:96 useinbandfec=1\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=rtcp:7079\r\n\
a=rtcp-mux\r\n\
a=rtcp-fb:96 nack\r\n\
a=candidate:1 1 UDP 2130706431 192.168.1.20 7078 typ host\r\n\
a=candidate:1 2 UDP 2130706430 192.168.1.20 7079 typ host\r\n\
a=candidate:2 1 UDP 1694498815 203.0.113.7 40000 typ srflx raddr 192.168.1.20 rport 7078\r\n\
a=end-of-candidates\r\n\
a=ptime:20\r\n\
m=video 9078 RTP/AVP 97\r\n\
a=rtpmap:97 VP8/90000\r\n\
a=rtcp-mux\r\n";

    /// An Asterisk-style offer (LF only, trailing spaces, media-level c=).
    const ASTERISK: &str = "v=0\n\
o=- 1766341234 1766341234 IN IP4 10.0.0.5 \n\
s=Asterisk\n\
c=IN IP4 10.0.0.5\n\
t=0 0\n\
m=audio 16384 RTP/AVP 0 8 3 101\n\
a=rtpmap:0 PCMU/8000\n\
a=rtpmap:8 PCMA/8000\n\
a=rtpmap:3 GSM/8000\n\
a=rtpmap:101 telephone-event/8000\n\
a=fmtp:101 0-16\n\
a=ptime:20\n\
a=maxptime:150\n\
a=sendrecv\n\
\n";

    /// A hold re-INVITE with a=sendonly at media level.
    const HOLD: &str = "v=0\r\n\
o=bob 100 101 IN IP4 198.51.100.9\r\n\
s=-\r\n\
c=IN IP4 198.51.100.9\r\n\
t=0 0\r\n\
m=audio 30000 RTP/AVP 8 101\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=sendonly\r\n";

    /// An RFC 2543 hold: c=0.0.0.0 and no direction attribute.
    const OLD_HOLD: &str = "v=0\r\n\
o=carol 5 6 IN IP4 203.0.113.50\r\n\
s=-\r\n\
c=IN IP4 0.0.0.0\r\n\
t=0 0\r\n\
m=audio 40000 RTP/AVP 0\r\n";

    fn lines_of(sdp: &Sdp) -> Vec<String> {
        String::from_utf8(sdp.to_bytes())
            .unwrap()
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn parses_a_softphone_offer() {
        let sdp = parse(LINPHONE.as_bytes()).unwrap();
        assert_eq!(sdp.lines.len(), 8);
        assert_eq!(sdp.lines[0], (b'v', "0".to_string()));
        assert_eq!(sdp.media.len(), 2);
        let audio = sdp.audio().unwrap();
        assert_eq!(audio.kind, "audio");
        assert_eq!(audio.port, 7078);
        assert_eq!(audio.proto, "RTP/AVP");
        assert_eq!(audio.formats, ["96", "0", "8", "101"]);
        assert_eq!(audio.lines.len(), 12);
        assert_eq!(sdp.connection(0), Some(v4(192, 168, 1, 20)));
        assert_eq!(sdp.connection(1), Some(v4(192, 168, 1, 20)));
        assert_eq!(sdp.connection(2), None);
        assert_eq!(sdp.direction(), Direction::SendRecv);
        assert_eq!(
            sdp.codecs(),
            vec![
                Format::new(96, "OPUS", 48000),
                Format::pcmu(),
                Format::pcma(),
                Format::telephone_event(101),
            ]
        );
        assert_eq!(audio.attribute("ptime"), Some("20"));
        assert_eq!(audio.attribute("rtcp-mux"), Some(""));
        assert_eq!(sdp.session_attribute("ice-ufrag"), Some("a1b2c3d4"));
        assert_eq!(sdp.session_version(), Some(1));
    }

    #[test]
    fn parses_an_asterisk_offer_with_lf_and_trailing_space() {
        let sdp = parse(ASTERISK.as_bytes()).unwrap();
        assert_eq!(
            sdp.lines[1],
            (b'o', "- 1766341234 1766341234 IN IP4 10.0.0.5".to_string())
        );
        assert_eq!(sdp.media.len(), 1);
        assert_eq!(sdp.connection(0), Some(v4(10, 0, 0, 5)));
        assert_eq!(sdp.direction(), Direction::SendRecv);
        let codecs = sdp.codecs();
        assert_eq!(codecs.len(), 4);
        assert_eq!(codecs[2], Format::new(3, "GSM", 8000));
        assert!(codecs[3].is_telephone_event());
        // Serialized with CRLF, no trailing spaces, no blank line.
        let text = String::from_utf8(sdp.to_bytes()).unwrap();
        assert!(text.starts_with("v=0\r\no=- 1766341234 1766341234 IN IP4 10.0.0.5\r\n"));
        assert!(text.ends_with("a=sendrecv\r\n"));
        assert!(!text.contains(" \r\n"));
        assert_eq!(parse(text.as_bytes()).unwrap(), sdp);
    }

    #[test]
    fn hold_directions() {
        let hold = parse(HOLD.as_bytes()).unwrap();
        assert_eq!(hold.direction(), Direction::SendOnly);
        assert_eq!(hold.direction().reverse(), Direction::RecvOnly);
        // Static PT 8 named without rtpmap.
        assert_eq!(
            hold.codecs(),
            vec![Format::pcma(), Format::telephone_event(101)]
        );

        let old = parse(OLD_HOLD.as_bytes()).unwrap();
        assert_eq!(old.connection(0), Some(v4(0, 0, 0, 0)));
        assert_eq!(old.direction(), Direction::SendOnly);
        let mut old_recvonly = old.clone();
        old_recvonly.set_direction(Direction::RecvOnly);
        assert_eq!(old_recvonly.direction(), Direction::Inactive);

        // Session-level direction applies when the stream has none.
        let mut session = parse(OLD_HOLD.as_bytes()).unwrap();
        session.lines[3].1 = "IN IP4 203.0.113.50".to_string();
        session.lines.push((b'a', "inactive".to_string()));
        assert_eq!(session.direction(), Direction::Inactive);
        // A media-level attribute wins over the session one.
        session.media[0].lines.push((b'a', "recvonly".to_string()));
        assert_eq!(session.direction(), Direction::RecvOnly);
    }

    #[test]
    fn direction_helpers() {
        use Direction::*;
        for (d, name, rev) in [
            (SendRecv, "sendrecv", SendRecv),
            (SendOnly, "sendonly", RecvOnly),
            (RecvOnly, "recvonly", SendOnly),
            (Inactive, "inactive", Inactive),
        ] {
            assert_eq!(d.attribute(), name);
            assert_eq!(d.reverse(), rev);
            assert_eq!(Direction::from_attribute(name), Some(d));
            assert_eq!(Direction::from_flags(d.sends(), d.receives()), d);
        }
        assert_eq!(Direction::from_attribute("ptime"), None);
    }

    #[test]
    fn set_direction_replaces_session_and_media_attributes() {
        let mut sdp = parse(ASTERISK.as_bytes()).unwrap();
        sdp.set_direction(Direction::SendOnly);
        assert_eq!(sdp.direction(), Direction::SendOnly);
        let lines = lines_of(&sdp);
        assert_eq!(lines.iter().filter(|l| *l == "a=sendonly").count(), 1);
        assert!(!lines.iter().any(|l| l == "a=sendrecv"));
        // Replaced in place, not moved.
        assert_eq!(lines.last().unwrap(), "a=sendonly");

        // Session-level attribute is removed, pushed down to the other stream.
        let mut sdp = parse(LINPHONE.as_bytes()).unwrap();
        sdp.lines.push((b'a', "sendonly".to_string()));
        sdp.set_direction(Direction::Inactive);
        assert!(sdp.lines.iter().all(|l| line_direction(l).is_none()));
        assert_eq!(sdp.direction(), Direction::Inactive);
        assert_eq!(
            sdp.media[0].lines.last(),
            Some(&(b'a', "inactive".to_string()))
        );
        assert_eq!(
            sdp.media[1].direction_attribute(),
            Some(Direction::SendOnly)
        );

        // Without any audio stream the session level carries it.
        let mut video = parse(b"v=0\r\ns=-\r\nm=video 5000 RTP/AVP 97\r\n").unwrap();
        video.set_direction(Direction::RecvOnly);
        assert_eq!(video.lines.last(), Some(&(b'a', "recvonly".to_string())));
    }

    #[test]
    fn anchor_rewrites_a_softphone_offer_line_by_line() {
        let mut sdp = parse(LINPHONE.as_bytes()).unwrap();
        sdp.anchor(v4(127, 0, 0, 1), 20000);
        assert_eq!(
            lines_of(&sdp),
            [
                "v=0",
                "o=alice 2890 2 IN IP4 127.0.0.1",
                "s=Talk",
                "c=IN IP4 127.0.0.1",
                "t=0 0",
                "a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics",
                "m=audio 20000 RTP/AVP 96 0 8 101",
                "a=rtpmap:96 opus/48000/2",
                "a=fmtp:96 useinbandfec=1",
                "a=rtpmap:101 telephone-event/8000",
                "a=fmtp:101 0-16",
                "a=rtcp-fb:96 nack",
                "a=ptime:20",
                "m=video 9078 RTP/AVP 97",
                "a=rtpmap:97 VP8/90000",
            ]
        );
        assert_eq!(sdp.session_version(), Some(2));
        sdp.reject_non_audio();
        assert_eq!(sdp.media[1].port, 0);
        assert_eq!(sdp.media[0].port, 20000);
    }

    #[test]
    fn anchor_rewrites_media_level_connections_and_ipv6() {
        let body = "v=0\r\n\
o=- 7 9 IN IP4 10.1.1.1\r\n\
s=-\r\n\
t=0 0\r\n\
m=audio 0 RTP/AVP 0\r\n\
c=IN IP4 10.1.1.1\r\n\
m=audio 5004 RTP/AVP 0 8\r\n\
i=main\r\n\
c=IN IP4 10.1.1.2\r\n\
a=rtcp:5005 IN IP4 10.1.1.2\r\n\
a=sendrecv\r\n";
        let mut sdp = parse(body.as_bytes()).unwrap();
        assert_eq!(sdp.audio_index(), Some(1));
        assert_eq!(sdp.connection(1), Some(v4(10, 1, 1, 2)));
        let addr = IpAddr::V6(Ipv6Addr::LOCALHOST);
        sdp.anchor(addr, 30000);
        assert_eq!(
            lines_of(&sdp),
            [
                "v=0",
                "o=- 7 10 IN IP6 ::1",
                "s=-",
                "t=0 0",
                "m=audio 0 RTP/AVP 0",
                "c=IN IP6 ::1",
                "m=audio 30000 RTP/AVP 0 8",
                "i=main",
                "c=IN IP6 ::1",
                "a=sendrecv",
            ]
        );
        assert_eq!(sdp.connection(1), Some(addr));

        // A stream without any c= gets one, after i=.
        let mut bare = parse(
            b"v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nt=0 0\nm=audio 4000 RTP/AVP 0\ni=x\na=ptime:20\n",
        )
        .unwrap();
        assert_eq!(bare.connection(0), None);
        bare.anchor(v4(127, 0, 0, 1), 4100);
        assert_eq!(
            bare.media[0].lines,
            vec![
                (b'i', "x".to_string()),
                (b'c', "IN IP4 127.0.0.1".to_string()),
                (b'a', "ptime:20".to_string()),
            ]
        );
    }

    #[test]
    fn anchor_ends_an_old_style_hold_but_keeps_attributes() {
        let mut sdp = parse(HOLD.as_bytes()).unwrap();
        sdp.anchor(v4(127, 0, 0, 1), 20002);
        assert_eq!(
            lines_of(&sdp),
            [
                "v=0",
                "o=bob 100 102 IN IP4 127.0.0.1",
                "s=-",
                "c=IN IP4 127.0.0.1",
                "t=0 0",
                "m=audio 20002 RTP/AVP 8 101",
                "a=rtpmap:101 telephone-event/8000",
                "a=sendonly",
            ]
        );
        let mut old = parse(OLD_HOLD.as_bytes()).unwrap();
        old.anchor(v4(127, 0, 0, 1), 20004);
        // The hold is no longer visible in c=, so the B2BUA must carry it as an attribute.
        assert_eq!(old.direction(), Direction::SendRecv);
        old.set_direction(Direction::SendOnly);
        assert_eq!(old.direction(), Direction::SendOnly);
    }

    #[test]
    fn retain_formats_removes_lines_of_dropped_codecs() {
        let mut sdp = parse(LINPHONE.as_bytes()).unwrap();
        sdp.retain_formats(|f| {
            f.encoding == "PCMU" || f.encoding == "PCMA" || f.is_telephone_event()
        });
        let audio = sdp.audio().unwrap();
        assert_eq!(audio.formats, ["0", "8", "101"]);
        assert!(!audio
            .lines
            .iter()
            .any(|l| l.1.contains("96") && l.1.starts_with("rtp")));
        assert!(!audio.lines.iter().any(|l| l.1.starts_with("fmtp:96")));
        assert!(audio.lines.iter().any(|l| l.1 == "fmtp:101 0-16"));
        // The video stream is untouched.
        assert_eq!(sdp.media[1].formats, ["97"]);
        assert_eq!(
            sdp.codecs(),
            vec![Format::pcmu(), Format::pcma(), Format::telephone_event(101)]
        );
        // Removing everything leaves an empty format list, not a panic.
        sdp.retain_formats(|_| false);
        assert!(sdp.codecs().is_empty());
        assert_eq!(sdp.audio().unwrap().m_line(), "audio 7078 RTP/AVP");
    }

    #[test]
    fn unmapped_dynamic_payload_type_has_no_name() {
        let sdp = parse(b"v=0\nm=audio 1 RTP/AVP 120 bogus\n").unwrap();
        assert_eq!(sdp.codecs(), vec![Format::new(120, "", 0)]);
    }

    #[test]
    fn offer_builds_a_fresh_body() {
        let sdp = offer(
            v4(127, 0, 0, 1),
            20000,
            42,
            &[Format::pcmu(), Format::pcma(), Format::telephone_event(101)],
            Direction::SendRecv,
        );
        assert_eq!(
            lines_of(&sdp),
            [
                "v=0",
                "o=switchyard 42 42 IN IP4 127.0.0.1",
                "s=-",
                "c=IN IP4 127.0.0.1",
                "t=0 0",
                "m=audio 20000 RTP/AVP 0 8 101",
                "a=rtpmap:0 PCMU/8000",
                "a=rtpmap:8 PCMA/8000",
                "a=rtpmap:101 telephone-event/8000",
                "a=fmtp:101 0-15",
                "a=ptime:20",
                "a=sendrecv",
            ]
        );
        let back = parse(&sdp.to_bytes()).unwrap();
        assert_eq!(back, sdp);
        assert_eq!(
            back.codecs(),
            vec![Format::pcmu(), Format::pcma(), Format::telephone_event(101)]
        );
        let mut held = offer(
            v4(127, 0, 0, 1),
            1,
            7,
            &[Format::pcma()],
            Direction::SendOnly,
        );
        assert_eq!(held.direction(), Direction::SendOnly);
        held.set_session_version(8);
        assert_eq!(held.session_version(), Some(8));
        assert_eq!(held.lines[1].1, "switchyard 7 8 IN IP4 127.0.0.1");
    }

    #[test]
    fn answer_matches_codecs_by_name_and_rejects_other_streams() {
        let offered = parse(LINPHONE.as_bytes()).unwrap();
        let supported = [Format::pcma(), Format::pcmu(), Format::telephone_event(96)];
        let sdp = answer(
            &offered,
            v4(127, 0, 0, 1),
            20000,
            9,
            &supported,
            offered.direction().reverse(),
        )
        .unwrap();
        assert_eq!(
            lines_of(&sdp),
            [
                "v=0",
                "o=switchyard 9 9 IN IP4 127.0.0.1",
                "s=-",
                "c=IN IP4 127.0.0.1",
                "t=0 0",
                // Offer order and the offer's telephone-event payload type.
                "m=audio 20000 RTP/AVP 0 8 101",
                "a=rtpmap:0 PCMU/8000",
                "a=rtpmap:8 PCMA/8000",
                "a=rtpmap:101 telephone-event/8000",
                "a=fmtp:101 0-15",
                "a=ptime:20",
                "a=sendrecv",
                "m=video 0 RTP/AVP 97",
            ]
        );
        // A held call is answered recvonly.
        let hold = parse(HOLD.as_bytes()).unwrap();
        let sdp = answer(
            &hold,
            v4(127, 0, 0, 1),
            1,
            1,
            &supported,
            hold.direction().reverse(),
        )
        .unwrap();
        assert_eq!(sdp.direction(), Direction::RecvOnly);
        assert_eq!(
            sdp.codecs(),
            vec![Format::pcma(), Format::telephone_event(101)]
        );
        // Only telephone-event in common, or no audio at all: no answer (488).
        let mut opus_only = offered.clone();
        opus_only.retain_formats(|f| f.encoding == "OPUS" || f.is_telephone_event());
        assert_eq!(
            answer(
                &opus_only,
                v4(127, 0, 0, 1),
                1,
                1,
                &supported,
                Direction::SendRecv
            ),
            None
        );
        let video = parse(b"v=0\r\nm=video 5000 RTP/AVP 97\r\n").unwrap();
        assert_eq!(
            answer(
                &video,
                v4(127, 0, 0, 1),
                1,
                1,
                &supported,
                Direction::SendRecv
            ),
            None
        );
    }

    #[test]
    fn round_trips_are_stable() {
        for body in [LINPHONE, ASTERISK, HOLD, OLD_HOLD] {
            let sdp = parse(body.as_bytes()).unwrap();
            let bytes = sdp.to_bytes();
            let again = parse(&bytes).unwrap();
            assert_eq!(again, sdp);
            assert_eq!(again.to_bytes(), bytes);
        }
        // A CRLF body without trailing whitespace comes back byte for byte.
        assert_eq!(
            parse(LINPHONE.as_bytes()).unwrap().to_bytes(),
            LINPHONE.as_bytes()
        );
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(parse(b""), Err(SdpError::Empty));
        assert_eq!(parse(b"\r\n \n"), Err(SdpError::Empty));
        assert_eq!(
            parse(b"o=- 1 1 IN IP4 1.2.3.4\n"),
            Err(SdpError::MissingVersion)
        );
        assert_eq!(
            parse(b"v=1\n"),
            Err(SdpError::UnsupportedVersion("1".to_string()))
        );
        assert_eq!(parse(b"v=0\nhello\n"), Err(SdpError::BadLine { line: 2 }));
        assert_eq!(parse(b"v=0\r\n=x\r\n"), Err(SdpError::BadLine { line: 2 }));
        assert_eq!(parse(b"v=0\ns=\xff\n"), Err(SdpError::NotUtf8 { line: 2 }));
        assert_eq!(
            parse(b"v=0\nm=audio 70000 RTP/AVP 0\n"),
            Err(SdpError::BadMedia {
                line: 2,
                reason: "port is not 0-65535"
            })
        );
        assert!(matches!(
            parse(b"v=0\nm=audio 7000\n"),
            Err(SdpError::BadMedia { line: 2, .. })
        ));
        let message = parse(b"v=0\nm=\n").unwrap_err().to_string();
        assert!(message.contains("line 2"), "{message}");
        // Port count is accepted and dropped.
        let sdp = parse(b"v=0\nm=audio 5000/2 RTP/AVP 0\n").unwrap();
        assert_eq!(sdp.media[0].port, 5000);
    }

    /// Random bytes and random mutations of real offers never panic, and whatever parses
    /// round-trips.
    #[test]
    fn randomized_input_never_panics_and_round_trips() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5d9);
        let seeds = [LINPHONE, ASTERISK, HOLD, OLD_HOLD];
        let alphabet = b"vosctmabi=0123456789 ./:-\r\nINP4audioRTP/AVP\xff\x00";
        let mut parsed = 0;
        for round in 0..20_000 {
            let mut body: Vec<u8> = if round % 2 == 0 {
                let len = rng.random_range(0..200);
                (0..len)
                    .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                    .collect()
            } else {
                seeds[rng.random_range(0..seeds.len())].as_bytes().to_vec()
            };
            if round % 2 == 1 || round % 7 == 0 {
                body.splice(0..0, b"v=0\n".iter().copied());
                for _ in 0..rng.random_range(1..8) {
                    let at = rng.random_range(0..=body.len());
                    match rng.random_range(0..3) {
                        0 if at < body.len() => {
                            body.remove(at);
                        }
                        1 if at < body.len() => body[at] = rng.random(),
                        _ => body.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                    }
                }
            }
            if let Ok(mut sdp) = parse(&body) {
                parsed += 1;
                let bytes = sdp.to_bytes();
                let again = parse(&bytes).expect("serialized SDP parses");
                assert_eq!(again, sdp, "body {:?}", String::from_utf8_lossy(&body));
                // The accessors and rewrites must not panic either.
                let _ = sdp.direction();
                let _ = sdp.codecs();
                for i in 0..sdp.media.len() {
                    let _ = sdp.connection(i);
                }
                sdp.retain_formats(|f| f.pt % 2 == 0);
                sdp.set_direction(Direction::SendOnly);
                sdp.anchor(v4(127, 0, 0, 1), 9);
                parse(&sdp.to_bytes()).expect("rewritten SDP parses");
            }
        }
        assert!(parsed > 1000, "only {parsed} inputs parsed");
    }
}
