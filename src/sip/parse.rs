//! The message parser: start line, header lines (with folding and compact names), body.
//!
//! Two entry points, as in mini-redis: [`check_stream`] cheaply finds where the next message
//! on a stream ends (or that more bytes are needed), and [`parse`] builds the [`Message`].
//! Header values are slices of the input; only folded values are copied.

use bytes::{BufMut, Bytes, BytesMut};

use super::headers::{is_token, is_token_char, parse_u32, trim, trim_slice};
use super::message::{Header, HeaderName, Message, Method, StartLine};

/// Where the bytes came from: a datagram holds exactly one message (extra octets after
/// Content-Length are ignored; without Content-Length the body is the rest), a stream is
/// framed by Content-Length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Datagram,
    Stream,
}

/// Size limits applied while parsing and framing.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest start line plus headers.
    pub max_header_bytes: usize,
    /// Largest body.
    pub max_body_bytes: usize,
    /// Most header lines.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024,
            max_headers: 128,
        }
    }
}

/// Why a message could not be parsed. Each kind has the status a request gets for it
/// and a short label for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty message")]
    Empty,
    #[error("malformed start line")]
    StartLine,
    #[error("SIP version not supported")]
    Version,
    #[error("malformed status code")]
    StatusCode,
    #[error("malformed header line")]
    HeaderLine,
    #[error("too many header lines")]
    TooManyHeaders,
    #[error("headers too large")]
    HeadersTooLarge,
    #[error("body too large")]
    BodyTooLarge,
    #[error("malformed Content-Length")]
    ContentLength,
    #[error("multiple Content-Length values")]
    MultipleContentLength,
    #[error("Content-Length larger than the message")]
    Truncated,
}

impl ParseError {
    /// The status code to answer a request with.
    pub fn status(self) -> u16 {
        match self {
            ParseError::Version => 505,
            ParseError::HeadersTooLarge | ParseError::BodyTooLarge => 513,
            _ => 400,
        }
    }

    /// The reason phrase naming the fault.
    pub fn reason(self) -> &'static str {
        match self {
            ParseError::Empty => "Bad Request (Empty Message)",
            ParseError::StartLine => "Bad Request (Malformed Request-Line)",
            ParseError::Version => "Version Not Supported",
            ParseError::StatusCode => "Bad Request (Malformed Status Code)",
            ParseError::HeaderLine => "Bad Request (Malformed Header Line)",
            ParseError::TooManyHeaders => "Bad Request (Too Many Headers)",
            ParseError::HeadersTooLarge => "Message Too Large (Headers)",
            ParseError::BodyTooLarge => "Message Too Large (Body)",
            ParseError::ContentLength => "Bad Request (Malformed Content-Length)",
            ParseError::MultipleContentLength => "Bad Request (Multiple Content-Length)",
            ParseError::Truncated => "Bad Request (Content-Length Larger Than Message)",
        }
    }

    /// A metric label.
    pub fn label(self) -> &'static str {
        match self {
            ParseError::Empty => "empty",
            ParseError::StartLine => "start_line",
            ParseError::Version => "version",
            ParseError::StatusCode => "status_code",
            ParseError::HeaderLine => "header_line",
            ParseError::TooManyHeaders => "too_many_headers",
            ParseError::HeadersTooLarge => "headers_too_large",
            ParseError::BodyTooLarge => "body_too_large",
            ParseError::ContentLength => "content_length",
            ParseError::MultipleContentLength => "multiple_content_length",
            ParseError::Truncated => "truncated",
        }
    }
}

/// A parse failure, with whatever was understood before it: when `partial` is a request,
/// the caller can answer it (RFC 4475 wants a 400 for most broken requests).
#[derive(Debug)]
pub struct Malformed {
    pub error: ParseError,
    pub partial: Option<Box<Message>>,
}

impl Malformed {
    fn bare(error: ParseError) -> Malformed {
        Malformed {
            error,
            partial: None,
        }
    }
}

/// Result of looking for a complete message on a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamCheck {
    /// Only keep-alive CRLFs: drop this many bytes (and answer a double CRLF "ping" with a
    /// single CRLF "pong", RFC 5626 §3.5.1).
    KeepAlive { consumed: usize, ping: bool },
    /// A complete message occupies the first `len` bytes.
    Complete { len: usize },
    /// More bytes are needed.
    Incomplete,
}

/// Finds the extent of the next message in a stream buffer without building it.
/// Errors are framing errors after which the stream cannot be resynchronised.
pub fn check_stream(buf: &[u8], limits: &Limits) -> Result<StreamCheck, ParseError> {
    let lead = buf
        .iter()
        .take_while(|&&c| c == b'\r' || c == b'\n')
        .count();
    if lead > 0 {
        let ping = buf[..lead].windows(4).any(|w| w == b"\r\n\r\n");
        return Ok(StreamCheck::KeepAlive {
            consumed: lead,
            ping,
        });
    }
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        if buf.len() > limits.max_header_bytes {
            return Err(ParseError::HeadersTooLarge);
        }
        return Ok(StreamCheck::Incomplete);
    };
    if end > limits.max_header_bytes {
        return Err(ParseError::HeadersTooLarge);
    }
    let head = &buf[..end + 2];
    let mut content_length: Option<usize> = None;
    for line in head.split(|&c| c == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            continue;
        };
        let name = trim_slice(&line[..colon]);
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            if content_length.is_some() {
                return Err(ParseError::MultipleContentLength);
            }
            let v = parse_u32(&line[colon + 1..]).ok_or(ParseError::ContentLength)? as usize;
            content_length = Some(v);
        }
    }
    // RFC 3261 §18.3: Content-Length is mandatory on streams; a message without one has
    // no body.
    let body = content_length.unwrap_or(0);
    if body > limits.max_body_bytes {
        return Err(ParseError::BodyTooLarge);
    }
    let len = end + 4 + body;
    if buf.len() < len {
        return Ok(StreamCheck::Incomplete);
    }
    Ok(StreamCheck::Complete { len })
}

/// Parses one message. For `Framing::Stream`, `buf` must be exactly the extent found by
/// [`check_stream`].
pub fn parse(buf: Bytes, framing: Framing, limits: &Limits) -> Result<Message, Malformed> {
    let s = buf.as_ref();
    // Leading CRLFs before a message are allowed (RFC 3261 §7.5).
    let mut pos = s.iter().take_while(|&&c| c == b'\r' || c == b'\n').count();
    if pos == s.len() {
        return Err(Malformed::bare(ParseError::Empty));
    }
    let line_end = find_line_end(s, pos);
    // A broken request line is still answered (400 / 505) when the headers allow it, so
    // the headers are parsed behind a stand-in start line.
    let (start, start_error) = match parse_start_line(&buf, pos, line_end.content_end) {
        Ok(start) => (start, None),
        Err(e) if s[pos..].len() >= 4 && s[pos..pos + 4].eq_ignore_ascii_case(b"SIP/") => {
            return Err(Malformed::bare(e))
        }
        Err(e) => {
            let line = &s[pos..line_end.content_end];
            let end = line
                .iter()
                .position(|&c| !is_token_char(c))
                .unwrap_or(line.len());
            let method = Method::from_token(&buf.slice(pos..pos + end));
            (
                StartLine::Request {
                    method,
                    uri: Bytes::new(),
                },
                Some(e),
            )
        }
    };
    pos = line_end.next;

    let mut msg = Message {
        start,
        headers: Vec::with_capacity(16),
        body: Bytes::new(),
    };
    let mut content_length: Option<Result<usize, ParseError>> = None;
    let mut header_error: Option<ParseError> = None;
    let mut counted = 0usize;
    let mut headers_end = s.len();
    // Header lines up to the empty line; a line starting with SP/HT continues the previous.
    while pos < s.len() {
        let le = find_line_end(s, pos);
        if le.content_end == pos {
            headers_end = le.next;
            break;
        }
        if pos > limits.max_header_bytes {
            return Err(Malformed {
                error: ParseError::HeadersTooLarge,
                partial: Some(Box::new(msg)),
            });
        }
        // Join continuation lines.
        let mut next = le.next;
        let mut folded = false;
        while next < s.len() && (s[next] == b' ' || s[next] == b'\t') {
            folded = true;
            next = find_line_end(s, next).next;
        }
        let line = &s[pos..le.content_end];
        if name_counts(line) {
            counted += 1;
        }
        // A bare CR inside a line would end the line for a peer that splits on CR.
        if memchr::memchr_iter(b'\r', &s[pos..next])
            .any(|i| pos + i + 1 < next && s[pos + i + 1] != b'\n')
        {
            header_error.get_or_insert(ParseError::HeaderLine);
        }
        match line.iter().position(|&c| c == b':') {
            Some(colon) if is_token(trim_slice(&line[..colon])) => {
                let name_raw = trim(&buf.slice(pos..pos + colon));
                let name = HeaderName::lookup(&name_raw);
                let value = if folded {
                    unfold(&s[pos + colon + 1..next])
                } else {
                    trim(&buf.slice(pos + colon + 1..le.content_end))
                };
                if name == HeaderName::ContentLength {
                    content_length = Some(match content_length {
                        Some(_) => Err(ParseError::MultipleContentLength),
                        None => parse_u32(&value)
                            .map(|v| v as usize)
                            .ok_or(ParseError::ContentLength),
                    });
                }
                // Content-Length is not counted: the serializer always writes one, so a
                // message at the limit must still parse after a round trip.
                if name != HeaderName::ContentLength && counted > limits.max_headers {
                    header_error.get_or_insert(ParseError::TooManyHeaders);
                } else {
                    msg.headers.push(Header {
                        name,
                        raw_name: name_raw,
                        value,
                    });
                }
            }
            _ => {
                header_error.get_or_insert(ParseError::HeaderLine);
            }
        }
        pos = next;
    }
    if let Some(e) = start_error.or(header_error) {
        return Err(Malformed {
            error: e,
            partial: Some(Box::new(msg)),
        });
    }
    if headers_end > limits.max_header_bytes {
        return Err(Malformed {
            error: ParseError::HeadersTooLarge,
            partial: Some(Box::new(msg)),
        });
    }
    let available = s.len().saturating_sub(headers_end);
    let body_len = match content_length {
        Some(Err(e)) => {
            return Err(Malformed {
                error: e,
                partial: Some(Box::new(msg)),
            })
        }
        Some(Ok(n)) if n > limits.max_body_bytes => {
            return Err(Malformed {
                error: ParseError::BodyTooLarge,
                partial: Some(Box::new(msg)),
            })
        }
        Some(Ok(n)) if n > available => {
            return Err(Malformed {
                error: ParseError::Truncated,
                partial: Some(Box::new(msg)),
            })
        }
        Some(Ok(n)) => n,
        None => match framing {
            Framing::Datagram => available,
            Framing::Stream => 0,
        },
    };
    if body_len > limits.max_body_bytes {
        return Err(Malformed {
            error: ParseError::BodyTooLarge,
            partial: Some(Box::new(msg)),
        });
    }
    msg.body = buf.slice(headers_end..headers_end + body_len);
    Ok(msg)
}

struct LineEnd {
    /// Index just past the line's content (before CR LF).
    content_end: usize,
    /// Index of the next line's first byte.
    next: usize,
}

/// Lines end in CRLF; a bare LF is accepted too (liberal in what we accept).
fn find_line_end(s: &[u8], from: usize) -> LineEnd {
    match memchr::memchr(b'\n', &s[from..]) {
        Some(i) => {
            let nl = from + i;
            let content_end = if nl > from && s[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            LineEnd {
                content_end,
                next: nl + 1,
            }
        }
        // The last line of a datagram may end without LF; a final CR still ends it.
        None => LineEnd {
            content_end: if s.len() > from && s[s.len() - 1] == b'\r' {
                s.len() - 1
            } else {
                s.len()
            },
            next: s.len(),
        },
    }
}

/// Joins folded lines: each CRLF plus leading whitespace becomes one space.
fn unfold(raw: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(raw.len());
    for piece in raw.split(|&c| c == b'\n') {
        let piece = piece.strip_suffix(b"\r").unwrap_or(piece);
        let piece = trim_slice(piece);
        if piece.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.put_u8(b' ');
        }
        out.put_slice(piece);
    }
    out.freeze()
}

/// Whether a header line counts against `Limits::max_headers` (Content-Length does not).
fn name_counts(line: &[u8]) -> bool {
    let name = line
        .iter()
        .position(|&c| c == b':')
        .map(|c| trim_slice(&line[..c]))
        .unwrap_or(line);
    HeaderName::lookup(name) != HeaderName::ContentLength
}

fn parse_start_line(buf: &Bytes, from: usize, to: usize) -> Result<StartLine, ParseError> {
    let line = &buf[from..to];
    if line.contains(&b'\r') {
        return Err(ParseError::StartLine);
    }
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        // '/' is not a token character, so no method can start this way.
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let sp1 = line
            .iter()
            .position(|&c| c == b' ')
            .ok_or(ParseError::StartLine)?;
        check_version(&line[..sp1])?;
        let rest = &line[sp1 + 1..];
        let code_end = rest.iter().position(|&c| c == b' ').unwrap_or(rest.len());
        let code = &rest[..code_end];
        if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
            return Err(ParseError::StatusCode);
        }
        let status = u16::from(code[0] - b'0') * 100
            + u16::from(code[1] - b'0') * 10
            + u16::from(code[2] - b'0');
        if !(100..=699).contains(&status) {
            return Err(ParseError::StatusCode);
        }
        let reason_at = (from + sp1 + 1 + code_end + 1).min(to);
        return Ok(StartLine::Response {
            status,
            reason: buf.slice(reason_at..to),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version: exactly two single spaces.
    let sp1 = line
        .iter()
        .position(|&c| c == b' ')
        .ok_or(ParseError::StartLine)?;
    let method = &line[..sp1];
    if !method.iter().all(|&c| is_token_char(c)) || method.is_empty() {
        return Err(ParseError::StartLine);
    }
    let rest = &line[sp1 + 1..];
    let sp2 = rest
        .iter()
        .position(|&c| c == b' ')
        .ok_or(ParseError::StartLine)?;
    let uri = &rest[..sp2];
    let version = &rest[sp2 + 1..];
    if uri.is_empty() || version.iter().any(|&c| c == b' ' || c == b'\t') || version.is_empty() {
        return Err(ParseError::StartLine);
    }
    check_version(version)?;
    let method = Method::from_token(&buf.slice(from..from + sp1));
    let uri = buf.slice(from + sp1 + 1..from + sp1 + 1 + sp2);
    Ok(StartLine::Request { method, uri })
}

/// `SIP/2.0` (case-insensitive) is accepted; another well-formed `SIP/x.y` is 505.
fn check_version(v: &[u8]) -> Result<(), ParseError> {
    if v.eq_ignore_ascii_case(b"SIP/2.0") {
        return Ok(());
    }
    let well_formed = v.len() > 4
        && v[..4].eq_ignore_ascii_case(b"SIP/")
        && v[4..].split(|&c| c == b'.').count() == 2
        && v[4..]
            .split(|&c| c == b'.')
            .all(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
    Err(if well_formed {
        ParseError::Version
    } else {
        ParseError::StartLine
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@example.com>\r\n\
From: Alice <sip:alice@example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@10.0.0.1>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

    fn dg(b: &[u8]) -> Result<Message, Malformed> {
        parse(
            Bytes::copy_from_slice(b),
            Framing::Datagram,
            &Limits::default(),
        )
    }

    #[test]
    fn parses_a_typical_invite() {
        let m = dg(INVITE).unwrap();
        assert_eq!(m.method(), Some(&Method::Invite));
        assert_eq!(m.request_uri().unwrap().as_ref(), b"sip:bob@example.com");
        assert_eq!(m.headers.len(), 9);
        assert_eq!(m.body.as_ref(), b"v=0\n");
        assert_eq!(m.cseq().unwrap().seq, 314159);
        assert_eq!(m.from().unwrap().tag().unwrap().as_ref(), b"1928301774");
        assert_eq!(
            m.top_via().unwrap().branch().unwrap().as_ref(),
            b"z9hG4bK776asdhds"
        );
        assert_eq!(m.max_forwards(), Some(70));
    }

    #[test]
    fn round_trip_is_stable() {
        let m = dg(INVITE).unwrap();
        let once = m.encode();
        let m2 = dg(&once).unwrap();
        assert_eq!(m, m2);
        assert_eq!(once, m2.encode());
    }

    #[test]
    fn compact_and_folded_headers() {
        let raw = b"OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bKx\r\ni: abc\r\nf: <sip:x@y>\r\n ;tag=1\r\nt: sip:a@b\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n";
        let m = dg(raw).unwrap();
        assert_eq!(m.call_id().unwrap().as_ref(), b"abc");
        assert_eq!(
            m.value(HeaderName::From).unwrap().as_ref(),
            b"<sip:x@y> ;tag=1"
        );
        assert_eq!(m.from().unwrap().tag().unwrap().as_ref(), b"1");
    }

    #[test]
    fn start_line_faults() {
        assert_eq!(
            dg(b"INVITE  sip:a@b SIP/2.0\r\n\r\n").unwrap_err().error,
            ParseError::StartLine
        );
        assert_eq!(
            dg(b"INVITE sip:a@b SIP/2.0 \r\n\r\n").unwrap_err().error,
            ParseError::StartLine
        );
        assert_eq!(
            dg(b"INVITE sip:a@b SIP/7.0\r\n\r\n").unwrap_err().error,
            ParseError::Version
        );
        assert_eq!(
            dg(b"SIP/2.0 4294967301 x\r\n\r\n").unwrap_err().error,
            ParseError::StatusCode
        );
        assert_eq!(dg(b"\r\n\r\n").unwrap_err().error, ParseError::Empty);
        let r = dg(b"SIP/2.0 100 \r\nCall-ID: x\r\n\r\n").unwrap();
        assert_eq!(r.status(), Some(100));
    }

    #[test]
    fn bare_cr_inside_a_line_is_refused() {
        let raw = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nSubject: a\rInjected: 1\r\n\r\n";
        assert_eq!(dg(raw).unwrap_err().error, ParseError::HeaderLine);
        assert_eq!(
            dg(b"SIP/2.0 100 a\rb\r\n\r\n").unwrap_err().error,
            ParseError::StartLine
        );
    }

    #[test]
    fn stream_framing() {
        let l = Limits::default();
        assert_eq!(
            check_stream(b"\r\n\r\n", &l),
            Ok(StreamCheck::KeepAlive {
                consumed: 4,
                ping: true
            })
        );
        assert_eq!(
            check_stream(b"\r\n", &l),
            Ok(StreamCheck::KeepAlive {
                consumed: 2,
                ping: false
            })
        );
        assert_eq!(check_stream(&INVITE[..50], &l), Ok(StreamCheck::Incomplete));
        assert_eq!(
            check_stream(&INVITE[..INVITE.len() - 1], &l),
            Ok(StreamCheck::Incomplete)
        );
        let mut two = INVITE.to_vec();
        two.extend_from_slice(INVITE);
        assert_eq!(
            check_stream(&two, &l),
            Ok(StreamCheck::Complete { len: INVITE.len() })
        );
        let big = b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 9999999\r\n\r\n";
        assert_eq!(check_stream(big, &l), Err(ParseError::BodyTooLarge));
        let neg = b"INVITE sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(check_stream(neg, &l), Err(ParseError::ContentLength));
        let huge = vec![b'a'; 20_000];
        assert_eq!(check_stream(&huge, &l), Err(ParseError::HeadersTooLarge));
    }
}
