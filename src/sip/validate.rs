//! Checks a parsed request before anything acts on it, and names the answer RFC 3261
//! gives each fault (400 with a reason naming the header, 416 for a URI scheme, ...).

use bytes::Bytes;

use super::headers::{is_token, parse_u32, CSeq, NameAddr, Via};
use super::message::{HeaderName, Message, Method};
use super::uri::{Scheme, Uri};

/// Why a request is refused, with the status and reason phrase to answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: &'static str,
    /// A metric label for the fault.
    pub label: &'static str,
}

const fn bad(reason: &'static str, label: &'static str) -> Rejection {
    Rejection {
        status: 400,
        reason,
        label,
    }
}

/// The RFC 3261 branch prefix (§8.1.1.7).
const MAGIC_COOKIE: &[u8] = b"z9hG4bK";

/// Headers that may appear once only.
const SINGLE: [(HeaderName, &str, &str); 7] = [
    (
        HeaderName::From,
        "Bad Request (Multiple From)",
        "multiple_from",
    ),
    (HeaderName::To, "Bad Request (Multiple To)", "multiple_to"),
    (
        HeaderName::CallId,
        "Bad Request (Multiple Call-ID)",
        "multiple_call_id",
    ),
    (
        HeaderName::CSeq,
        "Bad Request (Multiple CSeq)",
        "multiple_cseq",
    ),
    (
        HeaderName::MaxForwards,
        "Bad Request (Multiple Max-Forwards)",
        "multiple_max_forwards",
    ),
    (
        HeaderName::ContentType,
        "Bad Request (Multiple Content-Type)",
        "multiple_content_type",
    ),
    (
        HeaderName::Expires,
        "Bad Request (Multiple Expires)",
        "multiple_expires",
    ),
];

/// The dialog-identifying fields of a screened request, parsed once: present and well
/// formed, so nothing downstream has to `expect` them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ids {
    pub from: NameAddr,
    pub to: NameAddr,
    pub call_id: Bytes,
    /// Its method is the Request-Line's (checked).
    pub cseq: CSeq,
}

/// A request that [`screen`] passed: the message with its [`Ids`]. It dereferences to the
/// [`Message`] for everything else; its From, To, Call-ID and CSeq are read from
/// [`Request::ids`], which cannot fail.
#[derive(Clone, Debug)]
pub struct Request {
    msg: Message,
    /// Boxed: a Request travels by value through the receive path.
    ids: Box<Ids>,
}

impl Request {
    /// Checks `msg` as [`screen`] does the structure of a request ([`check_request`]); for
    /// requests the switch builds itself (click-to-call's stand-in INVITE) and tests.
    pub fn checked(msg: Message) -> Result<Request, Rejection> {
        let ids = Box::new(check_request(&msg)?);
        Ok(Request { msg, ids })
    }

    /// From, To, Call-ID and CSeq as screened.
    pub fn ids(&self) -> &Ids {
        &self.ids
    }

    /// The method (the Request-Line's, which the CSeq repeats).
    pub fn method_checked(&self) -> &Method {
        &self.ids.cseq.method
    }

    pub fn message(&self) -> &Message {
        &self.msg
    }

    /// For hop-by-hop edits (the transport stamps the top Via). [`Request::ids`] keep the
    /// values as screened.
    pub fn message_mut(&mut self) -> &mut Message {
        &mut self.msg
    }

    pub fn into_message(self) -> Message {
        self.msg
    }
}

impl std::ops::Deref for Request {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.msg
    }
}

/// A message [`screen`] passed: a request with its [`Ids`], or a response (whose Call-ID,
/// CSeq and top Via were checked, [`check_response`]).
#[derive(Clone, Debug)]
pub enum Passed {
    Request(Request),
    Response(Message),
}

impl Passed {
    pub fn message(&self) -> &Message {
        match self {
            Passed::Request(r) => r.message(),
            Passed::Response(m) => m,
        }
    }

    pub fn into_message(self) -> Message {
        match self {
            Passed::Request(r) => r.into_message(),
            Passed::Response(m) => m,
        }
    }
}

impl std::ops::Deref for Passed {
    type Target = Message;

    fn deref(&self) -> &Message {
        self.message()
    }
}

/// A request line without a method (a response) has no request structure to check.
const NOT_A_REQUEST: Rejection = bad("Bad Request (Not a Request)", "not_request");

/// Checks the structure every request must have (RFC 3261 §8.1.1, §20, §25) and returns its
/// parsed From, To, Call-ID and CSeq. Extension methods pass; whether they are served is the
/// caller's decision.
pub fn check_request(msg: &Message) -> Result<Ids, Rejection> {
    let Some(method) = msg.method() else {
        return Err(NOT_A_REQUEST);
    };
    for (name, reason, label) in [
        (HeaderName::Via, "Bad Request (Missing Via)", "missing_via"),
        (
            HeaderName::From,
            "Bad Request (Missing From)",
            "missing_from",
        ),
        (HeaderName::To, "Bad Request (Missing To)", "missing_to"),
        (
            HeaderName::CallId,
            "Bad Request (Missing Call-ID)",
            "missing_call_id",
        ),
        (
            HeaderName::CSeq,
            "Bad Request (Missing CSeq)",
            "missing_cseq",
        ),
    ] {
        if msg.header(name).is_none() {
            return Err(bad(reason, label));
        }
    }
    for (name, reason, label) in SINGLE {
        if msg.headers_named(name).nth(1).is_some() {
            return Err(bad(reason, label));
        }
    }
    for (i, v) in msg.values(HeaderName::Via).enumerate() {
        let via = Via::parse(&v).map_err(|_| bad("Bad Request (Malformed Via)", "via"))?;
        // RFC 4475 §3.2.1 (badbranch): a branch that is the magic cookie alone identifies
        // no transaction; 400, statelessly, is the RFC's preferred answer.
        if i == 0 && via.branch().is_some_and(|b| b.as_ref() == MAGIC_COOKIE) {
            return Err(bad(
                "Bad Request (Missing Transaction Identifier)",
                "via_branch",
            ));
        }
    }
    let present = |name, reason, label| msg.value(name).ok_or(bad(reason, label));
    let from = NameAddr::parse(present(
        HeaderName::From,
        "Bad Request (Missing From)",
        "missing_from",
    )?)
    .map_err(|_| bad("Bad Request (Malformed From)", "from"))?;
    let to = NameAddr::parse(present(
        HeaderName::To,
        "Bad Request (Missing To)",
        "missing_to",
    )?)
    .map_err(|_| bad("Bad Request (Malformed To)", "to"))?;
    let call_id = present(
        HeaderName::CallId,
        "Bad Request (Missing Call-ID)",
        "missing_call_id",
    )?
    .clone();
    if call_id.is_empty() || call_id.iter().any(|&c| c <= b' ') {
        return Err(bad("Bad Request (Malformed Call-ID)", "call_id"));
    }
    let cseq = CSeq::parse(present(
        HeaderName::CSeq,
        "Bad Request (Missing CSeq)",
        "missing_cseq",
    )?)
    .map_err(|_| bad("Bad Request (Malformed CSeq)", "cseq"))?;
    if &cseq.method != method {
        return Err(bad(
            "Bad Request (CSeq Method Does Not Match)",
            "cseq_method",
        ));
    }
    if let Some(mf) = msg.value(HeaderName::MaxForwards) {
        if parse_u32(mf).is_none_or(|n| n > 255) {
            return Err(bad("Bad Request (Malformed Max-Forwards)", "max_forwards"));
        }
    }
    if let Some(e) = msg.value(HeaderName::Expires) {
        if parse_u32(e).is_none() {
            return Err(bad("Bad Request (Malformed Expires)", "expires"));
        }
    }
    for v in msg.values(HeaderName::Contact) {
        NameAddr::parse_contact(&v)
            .map_err(|_| bad("Bad Request (Malformed Contact)", "contact"))?;
    }
    for name in [HeaderName::Route, HeaderName::RecordRoute] {
        for v in msg.values(name) {
            NameAddr::parse(&v).map_err(|_| bad("Bad Request (Malformed Route)", "route"))?;
        }
    }
    for name in [
        HeaderName::Require,
        HeaderName::ProxyRequire,
        HeaderName::Supported,
    ] {
        if msg.values(name).any(|t| !is_token(&t)) {
            return Err(bad("Bad Request (Malformed Option Tag)", "option_tag"));
        }
    }
    check_request_uri(msg.request_uri().ok_or(NOT_A_REQUEST)?)?;
    Ok(Ids {
        from,
        to,
        call_id,
        cseq,
    })
}

/// The Request-URI must be a well-formed URI; only sip, sips and tel are served (416), and a
/// SIP Request-URI may not carry headers (RFC 3261 §19.1.1 table: not allowed in R-URI).
pub fn check_request_uri(uri: &Bytes) -> Result<Uri, Rejection> {
    let parsed =
        Uri::parse(uri).map_err(|_| bad("Bad Request (Malformed Request-URI)", "request_uri"))?;
    match parsed.scheme {
        Scheme::Sip | Scheme::Sips => {
            if !parsed.headers.is_empty() {
                return Err(bad(
                    "Bad Request (Headers in Request-URI)",
                    "request_uri_headers",
                ));
            }
            Ok(parsed)
        }
        Scheme::Tel => Ok(parsed),
        Scheme::Other(_) => Err(Rejection {
            status: 416,
            reason: "Unsupported URI Scheme",
            label: "uri_scheme",
        }),
    }
}

/// The option tags of Require that are not in `supported` (RFC 3261 §8.2.2.3 → 420).
/// Proxy-Require is a proxy's business; a B2BUA acting as UAS reads Require only.
pub fn unsupported_requires(msg: &Message, supported: &[&str]) -> Vec<Bytes> {
    if matches!(msg.method(), Some(Method::Ack) | Some(Method::Cancel)) {
        return Vec::new();
    }
    msg.require()
        .filter(|tag| {
            !supported
                .iter()
                .any(|s| s.as_bytes().eq_ignore_ascii_case(tag))
        })
        .collect()
}

/// For an INVITE this switch answers with SDP: a body it cannot read is 415, an Accept
/// that excludes SDP is 406.
pub fn check_invite_media(msg: &Message) -> Result<(), Rejection> {
    if !msg.body.is_empty() {
        let ct = msg
            .content_type()
            .map(|v| v.as_ref())
            .unwrap_or(b"application/sdp");
        let mime = ct.split(|&c| c == b';').next().unwrap_or(b"");
        let mime = super::headers::trim_slice(mime);
        if !(mime.eq_ignore_ascii_case(b"application/sdp")
            || mime.eq_ignore_ascii_case(b"multipart/mixed"))
        {
            return Err(Rejection {
                status: 415,
                reason: "Unsupported Media Type",
                label: "content_type",
            });
        }
    }
    if msg.header(HeaderName::Accept).is_some() {
        let ok = msg.values(HeaderName::Accept).any(|v| {
            let m = v.split(|&c| c == b';').next().unwrap_or(b"");
            let m = super::headers::trim_slice(m);
            m.eq_ignore_ascii_case(b"application/sdp")
                || m.eq_ignore_ascii_case(b"application/*")
                || m == b"*/*"
        });
        if !ok {
            return Err(Rejection {
                status: 406,
                reason: "Not Acceptable",
                label: "accept",
            });
        }
    }
    Ok(())
}

/// All values of a list header, for building `Unsupported:` and similar.
pub fn join_values(values: &[Bytes]) -> Bytes {
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v);
    }
    Bytes::from(out)
}

/// What to do with received bytes before any dialog or transaction logic sees them.
#[derive(Debug)]
pub enum Screened {
    /// A well-formed message to act on (a request with its [`Ids`]).
    Pass(Passed),
    /// A request to answer at once, statelessly, with `status` (and `unsupported` option
    /// tags for a 420).
    Answer {
        request: Box<Message>,
        rejection: Rejection,
        unsupported: Vec<Bytes>,
    },
    /// Nothing to answer (a broken response, unparseable bytes): drop and count.
    Drop { label: &'static str },
}

/// Option tags this switch supports (Require values outside this set get 420).
pub const SUPPORTED: &[&str] = &["replaces", "timer", "outbound", "path"];

/// Parses and checks a message; the result says whether to act on it, answer it or drop it.
pub fn screen(
    buf: Bytes,
    framing: super::parse::Framing,
    limits: &super::parse::Limits,
) -> Screened {
    use super::parse::parse;
    let msg = match parse(buf, framing, limits) {
        Ok(m) => m,
        Err(e) => {
            return match e.partial {
                Some(p) if p.is_request() && answerable(&p) => Screened::Answer {
                    request: p,
                    rejection: Rejection {
                        status: e.error.status(),
                        reason: e.error.reason(),
                        label: e.error.label(),
                    },
                    unsupported: Vec::new(),
                },
                _ => Screened::Drop {
                    label: e.error.label(),
                },
            };
        }
    };
    if !msg.is_request() {
        // A response that is not well formed is dropped (RFC 4475 §3.1.2.5, §3.1.2.19).
        return match check_response(&msg) {
            Ok(()) => Screened::Pass(Passed::Response(msg)),
            Err(label) => Screened::Drop { label },
        };
    }
    let ids = match check_request(&msg) {
        Ok(ids) => Box::new(ids),
        Err(rejection) if !answerable(&msg) => {
            return Screened::Drop {
                label: rejection.label,
            };
        }
        Err(rejection) => {
            return Screened::Answer {
                request: Box::new(msg),
                rejection,
                unsupported: Vec::new(),
            };
        }
    };
    let method = ids.cseq.method.clone();
    if method == Method::Ack {
        return Screened::Pass(Passed::Request(Request { msg, ids }));
    }
    if msg.max_forwards() == Some(0) {
        let rejection = Rejection {
            status: 483,
            reason: "Too Many Hops",
            label: "max_forwards_zero",
        };
        return Screened::Answer {
            request: Box::new(msg),
            rejection,
            unsupported: Vec::new(),
        };
    }
    let unsupported = unsupported_requires(&msg, SUPPORTED);
    if !unsupported.is_empty() {
        let rejection = Rejection {
            status: 420,
            reason: "Bad Extension",
            label: "require",
        };
        return Screened::Answer {
            request: Box::new(msg),
            rejection,
            unsupported,
        };
    }
    if method == Method::Invite {
        if let Err(rejection) = check_invite_media(&msg) {
            return Screened::Answer {
                request: Box::new(msg),
                rejection,
                unsupported: Vec::new(),
            };
        }
    }
    Screened::Pass(Passed::Request(Request { msg, ids }))
}

/// A request can be answered when it has a Via to answer along (the response goes to the
/// packet's source in any case, RFC 3261 §18.2.2) and is not an ACK (never answered).
fn answerable(msg: &Message) -> bool {
    msg.header(HeaderName::Via).is_some() && msg.method() != Some(&Method::Ack)
}

/// A response needs a parsable top Via, CSeq and Call-ID to be matched to anything.
pub fn check_response(msg: &Message) -> Result<(), &'static str> {
    if msg.call_id().is_none() {
        return Err("response_call_id");
    }
    let cseq = msg.value(HeaderName::CSeq).ok_or("response_cseq")?;
    CSeq::parse(cseq).map_err(|_| "response_cseq")?;
    msg.top_via().ok_or("response_via")?;
    for (name, _, _) in SINGLE {
        if msg.headers_named(name).nth(1).is_some() {
            return Err("response_multiple");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::parse::{Framing, Limits};

    fn request(method: &str, branch: &str) -> Bytes {
        Bytes::from(format!(
            "{method} sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch={branch}\r\nVia: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        ))
    }

    #[test]
    fn a_passed_request_carries_its_parsed_ids() {
        let limits = Limits::default();
        let Screened::Pass(Passed::Request(req)) =
            screen(request("INVITE", "z9hG4bKx"), Framing::Datagram, &limits)
        else {
            panic!("an INVITE passes");
        };
        let ids = req.ids();
        assert_eq!(ids.from.uri.as_ref(), b"sip:x@y");
        assert_eq!(ids.from.tag().unwrap().as_ref(), b"1");
        assert_eq!(ids.to.uri.as_ref(), b"sip:a@b");
        assert_eq!(ids.call_id.as_ref(), b"c");
        assert_eq!((ids.cseq.seq, &ids.cseq.method), (1, &Method::Invite));
        assert_eq!(req.method_checked(), &Method::Invite);
        // The message itself is still there, unchanged.
        assert_eq!(req.method(), Some(&Method::Invite));
        assert_eq!(req.into_message().call_id().unwrap().as_ref(), b"c");
    }

    #[test]
    fn a_response_passes_as_a_response_and_a_request_without_ids_never_passes() {
        let limits = Limits::default();
        let ok = Bytes::from_static(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(matches!(
            screen(ok, Framing::Datagram, &limits),
            Screened::Pass(Passed::Response(_))
        ));
        // Each of the four missing, or unreadable: answered 400, never passed.
        let base = String::from_utf8(request("OPTIONS", "z9hG4bKx").to_vec()).unwrap();
        for (cut, label) in [
            ("From: <sip:x@y>;tag=1\r\n", "missing_from"),
            ("To: <sip:a@b>\r\n", "missing_to"),
            ("Call-ID: c\r\n", "missing_call_id"),
            ("CSeq: 1 OPTIONS\r\n", "missing_cseq"),
        ] {
            let msg = Bytes::from(base.replacen(cut, "", 1));
            match screen(msg, Framing::Datagram, &limits) {
                Screened::Answer { rejection, .. } => assert_eq!(rejection.label, label),
                other => panic!("{label}: {other:?}"),
            }
        }
        let msg = Bytes::from(base.replacen("From: <sip:x@y>", "From: <sip:x@y", 1));
        assert!(matches!(
            screen(msg, Framing::Datagram, &limits),
            Screened::Answer { rejection, .. } if rejection.label == "from"
        ));
        // A request the switch builds itself is checked the same way.
        let built =
            crate::sip::parse::parse(request("OPTIONS", "z9hG4bKx"), Framing::Datagram, &limits)
                .unwrap();
        assert!(Request::checked(built.clone()).is_ok());
        let mut no_to = built;
        no_to.headers.retain(|h| h.name != HeaderName::To);
        assert_eq!(Request::checked(no_to).unwrap_err().label, "missing_to");
    }

    #[test]
    fn a_branch_that_is_only_the_magic_cookie_gets_400() {
        let limits = Limits::default();
        match screen(request("OPTIONS", "z9hG4bK"), Framing::Datagram, &limits) {
            Screened::Answer { rejection, .. } => {
                assert_eq!((rejection.status, rejection.label), (400, "via_branch"));
                assert_eq!(
                    rejection.reason,
                    "Bad Request (Missing Transaction Identifier)"
                );
            }
            other => panic!("{other:?}"),
        }
        // An ACK is never answered: dropped.
        assert!(matches!(
            screen(request("ACK", "z9hG4bK"), Framing::Datagram, &limits),
            Screened::Drop {
                label: "via_branch"
            }
        ));
        // A real branch passes; a bare cookie further down is another hop's business, and an
        // RFC 2543 branch without the cookie is served as before.
        for branch in ["z9hG4bKx", "abc"] {
            assert!(matches!(
                screen(request("OPTIONS", branch), Framing::Datagram, &limits),
                Screened::Pass(_)
            ));
        }
    }
}
