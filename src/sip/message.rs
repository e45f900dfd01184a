//! The SIP message model: a start line, headers and a body, all slices of one `Bytes` buffer.
//!
//! Header values are kept as received (trimmed, with folded lines joined); typed views
//! (`Via`, `NameAddr`, `CSeq`, `Uri`) are parsed on demand from those slices, so parsing a
//! message allocates one `Vec` for all its headers and nothing per header.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

use super::headers::{self, CSeq, NameAddr, Via};

/// A request method. Unknown methods keep their token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Info,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    Other(Bytes),
}

impl Method {
    /// Maps a method token (case-sensitive, as RFC 3261 §7.1 says) to a `Method`.
    pub fn from_token(token: &Bytes) -> Method {
        match token.as_ref() {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"OPTIONS" => Method::Options,
            b"REGISTER" => Method::Register,
            b"INFO" => Method::Info,
            b"UPDATE" => Method::Update,
            b"PRACK" => Method::Prack,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"REFER" => Method::Refer,
            b"MESSAGE" => Method::Message,
            b"PUBLISH" => Method::Publish,
            _ => Method::Other(token.clone()),
        }
    }

    /// The method's token as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Method::Invite => b"INVITE",
            Method::Ack => b"ACK",
            Method::Bye => b"BYE",
            Method::Cancel => b"CANCEL",
            Method::Options => b"OPTIONS",
            Method::Register => b"REGISTER",
            Method::Info => b"INFO",
            Method::Update => b"UPDATE",
            Method::Prack => b"PRACK",
            Method::Subscribe => b"SUBSCRIBE",
            Method::Notify => b"NOTIFY",
            Method::Refer => b"REFER",
            Method::Message => b"MESSAGE",
            Method::Publish => b"PUBLISH",
            Method::Other(b) => b,
        }
    }

    /// A short label for metrics: the method name, or `other` for extension methods
    /// (so a scanner cannot create unbounded label values).
    pub fn label(&self) -> &'static str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(_) => "other",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

macro_rules! header_names {
    ($( $variant:ident => $canonical:literal, $lower:literal $(, $compact:literal)? ; )*) => {
        /// Header names the switch knows by type; everything else is `Other` and kept verbatim.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum HeaderName {
            $( $variant, )*
            /// A header the switch does not interpret; its name is kept as received.
            Other,
        }

        impl HeaderName {
            /// Looks a header name up, case-insensitively, including the compact forms.
            pub fn lookup(name: &[u8]) -> HeaderName {
                if name.len() == 1 {
                    let c = name[0].to_ascii_lowercase();
                    $( $( if c == $compact { return HeaderName::$variant; } )? )*
                    return HeaderName::Other;
                }
                $( if name.eq_ignore_ascii_case($lower) { return HeaderName::$variant; } )*
                HeaderName::Other
            }

            /// The canonical (long) form of a known name; `None` for `Other`.
            pub fn canonical(self) -> Option<&'static str> {
                match self {
                    $( HeaderName::$variant => Some($canonical), )*
                    HeaderName::Other => None,
                }
            }
        }
    };
}

header_names! {
    Via => "Via", b"via", b'v';
    From => "From", b"from", b'f';
    To => "To", b"to", b't';
    CallId => "Call-ID", b"call-id", b'i';
    CSeq => "CSeq", b"cseq";
    Contact => "Contact", b"contact", b'm';
    MaxForwards => "Max-Forwards", b"max-forwards";
    ContentLength => "Content-Length", b"content-length", b'l';
    ContentType => "Content-Type", b"content-type", b'c';
    ContentEncoding => "Content-Encoding", b"content-encoding", b'e';
    Route => "Route", b"route";
    RecordRoute => "Record-Route", b"record-route";
    Expires => "Expires", b"expires";
    MinExpires => "Min-Expires", b"min-expires";
    Require => "Require", b"require";
    ProxyRequire => "Proxy-Require", b"proxy-require";
    Supported => "Supported", b"supported", b'k';
    Unsupported => "Unsupported", b"unsupported";
    Allow => "Allow", b"allow";
    Accept => "Accept", b"accept";
    Authorization => "Authorization", b"authorization";
    WwwAuthenticate => "WWW-Authenticate", b"www-authenticate";
    ProxyAuthenticate => "Proxy-Authenticate", b"proxy-authenticate";
    ProxyAuthorization => "Proxy-Authorization", b"proxy-authorization";
    Reason => "Reason", b"reason";
    UserAgent => "User-Agent", b"user-agent";
    Server => "Server", b"server";
    Subject => "Subject", b"subject", b's';
    Event => "Event", b"event", b'o';
    AllowEvents => "Allow-Events", b"allow-events", b'u';
    ReferTo => "Refer-To", b"refer-to", b'r';
    ReferredBy => "Referred-By", b"referred-by", b'b';
    SessionExpires => "Session-Expires", b"session-expires", b'x';
    Identity => "Identity", b"identity", b'y';
    RetryAfter => "Retry-After", b"retry-after";
    Date => "Date", b"date";
    Warning => "Warning", b"warning";
}

impl HeaderName {
    /// Headers whose grammar allows several comma-separated values in one line.
    /// (Authorization-style headers have commas inside one value and are not lists.)
    pub fn is_list(self) -> bool {
        matches!(
            self,
            HeaderName::Via
                | HeaderName::Contact
                | HeaderName::Route
                | HeaderName::RecordRoute
                | HeaderName::Require
                | HeaderName::ProxyRequire
                | HeaderName::Supported
                | HeaderName::Unsupported
                | HeaderName::Allow
                | HeaderName::Accept
                | HeaderName::AllowEvents
                | HeaderName::ContentEncoding
        )
    }
}

/// One header line: its name as known, its name as received, and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: HeaderName,
    /// The name exactly as it was received (or the canonical name for built headers).
    pub raw_name: Bytes,
    /// The value with surrounding whitespace trimmed and folded lines joined by a space.
    pub value: Bytes,
}

impl Header {
    /// A known header with its canonical name.
    pub fn new(name: HeaderName, value: impl Into<Bytes>) -> Header {
        let raw_name = Bytes::from_static(name.canonical().unwrap_or("X").as_bytes());
        Header {
            name,
            raw_name,
            value: value.into(),
        }
    }

    /// Any header by name; known names are recognised.
    pub fn named(name: impl Into<Bytes>, value: impl Into<Bytes>) -> Header {
        let raw_name = name.into();
        Header {
            name: HeaderName::lookup(&raw_name),
            raw_name,
            value: value.into(),
        }
    }
}

/// The first line of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request { method: Method, uri: Bytes },
    Response { status: u16, reason: Bytes },
}

/// A SIP request or response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub start: StartLine,
    pub headers: Vec<Header>,
    pub body: Bytes,
}

impl Message {
    /// A new request with no headers.
    pub fn request(method: Method, uri: impl Into<Bytes>) -> Message {
        Message {
            start: StartLine::Request {
                method,
                uri: uri.into(),
            },
            headers: Vec::with_capacity(12),
            body: Bytes::new(),
        }
    }

    /// A new response with no headers.
    pub fn response(status: u16, reason: impl Into<Bytes>) -> Message {
        Message {
            start: StartLine::Response {
                status,
                reason: reason.into(),
            },
            headers: Vec::with_capacity(10),
            body: Bytes::new(),
        }
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method, or `None` for a response.
    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI as received, or `None` for a response.
    pub fn request_uri(&self) -> Option<&Bytes> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code, or `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { status, .. } => Some(status),
            StartLine::Request { .. } => None,
        }
    }

    /// The first header line with this name.
    pub fn header(&self, name: HeaderName) -> Option<&Header> {
        self.headers.iter().find(|h| h.name == name)
    }

    /// The value of the first header line with this name.
    pub fn value(&self, name: HeaderName) -> Option<&Bytes> {
        self.header(name).map(|h| &h.value)
    }

    /// All header lines with this name, in order.
    pub fn headers_named(&self, name: HeaderName) -> impl Iterator<Item = &Header> + '_ {
        self.headers.iter().filter(move |h| h.name == name)
    }

    /// Every value of a list header across all its lines (split on commas outside quotes
    /// and angle brackets), in order.
    pub fn values(&self, name: HeaderName) -> impl Iterator<Item = Bytes> + '_ {
        self.headers_named(name)
            .flat_map(|h| headers::split_list(&h.value))
    }

    /// An unknown header's value by name (case-insensitive).
    pub fn other(&self, name: &str) -> Option<&Bytes> {
        self.headers
            .iter()
            .find(|h| {
                h.name == HeaderName::Other && h.raw_name.eq_ignore_ascii_case(name.as_bytes())
            })
            .map(|h| &h.value)
    }

    /// Appends a header line.
    pub fn push(&mut self, name: HeaderName, value: impl Into<Bytes>) {
        self.headers.push(Header::new(name, value));
    }

    /// Inserts a header line before all others (used for the top Via).
    pub fn push_front(&mut self, name: HeaderName, value: impl Into<Bytes>) {
        self.headers.insert(0, Header::new(name, value));
    }

    /// Removes every line of this header.
    pub fn remove(&mut self, name: HeaderName) {
        self.headers.retain(|h| h.name != name);
    }

    /// Replaces every line of this header by one line with `value`, keeping the position
    /// of the first.
    pub fn set(&mut self, name: HeaderName, value: impl Into<Bytes>) {
        let value = value.into();
        if let Some(i) = self.headers.iter().position(|h| h.name == name) {
            self.headers[i].value = value;
            let mut seen = false;
            self.headers.retain(|h| {
                if h.name != name {
                    return true;
                }
                let keep = !seen;
                seen = true;
                keep
            });
        } else {
            self.push(name, value);
        }
    }

    // Typed access to the headers a switch needs. Each returns `None` when the header is
    // absent or does not parse; validation (see `validate`) tells the two apart.

    /// The topmost Via value.
    pub fn top_via(&self) -> Option<Via> {
        self.values(HeaderName::Via)
            .next()
            .and_then(|v| Via::parse(&v).ok())
    }

    /// All Via values, top first.
    pub fn vias(&self) -> impl Iterator<Item = Via> + '_ {
        self.values(HeaderName::Via)
            .filter_map(|v| Via::parse(&v).ok())
    }

    pub fn from(&self) -> Option<NameAddr> {
        self.value(HeaderName::From)
            .and_then(|v| NameAddr::parse(v).ok())
    }

    pub fn to(&self) -> Option<NameAddr> {
        self.value(HeaderName::To)
            .and_then(|v| NameAddr::parse(v).ok())
    }

    pub fn call_id(&self) -> Option<&Bytes> {
        self.value(HeaderName::CallId)
    }

    pub fn cseq(&self) -> Option<CSeq> {
        self.value(HeaderName::CSeq)
            .and_then(|v| CSeq::parse(v).ok())
    }

    pub fn max_forwards(&self) -> Option<u32> {
        self.value(HeaderName::MaxForwards)
            .and_then(|v| headers::parse_u32(v))
    }

    pub fn expires(&self) -> Option<u32> {
        self.value(HeaderName::Expires)
            .and_then(|v| headers::parse_u32(v))
    }

    pub fn content_type(&self) -> Option<&Bytes> {
        self.value(HeaderName::ContentType)
    }

    /// Contact values; `*` is returned as a `NameAddr` with `star` set.
    pub fn contacts(&self) -> impl Iterator<Item = NameAddr> + '_ {
        self.values(HeaderName::Contact)
            .filter_map(|v| NameAddr::parse_contact(&v).ok())
    }

    /// Route values, top first.
    pub fn routes(&self) -> impl Iterator<Item = NameAddr> + '_ {
        self.values(HeaderName::Route)
            .filter_map(|v| NameAddr::parse(&v).ok())
    }

    /// Record-Route values, top first.
    pub fn record_routes(&self) -> impl Iterator<Item = NameAddr> + '_ {
        self.values(HeaderName::RecordRoute)
            .filter_map(|v| NameAddr::parse(&v).ok())
    }

    /// Option tags of Require.
    pub fn require(&self) -> impl Iterator<Item = Bytes> + '_ {
        self.values(HeaderName::Require)
    }

    /// The size of the serialized message, to reserve a buffer once.
    pub fn encoded_len(&self) -> usize {
        let start = match &self.start {
            StartLine::Request { method, uri } => method.as_bytes().len() + uri.len() + 11,
            StartLine::Response { reason, .. } => reason.len() + 14,
        };
        let headers: usize = self
            .headers
            .iter()
            .map(|h| h.raw_name.len() + h.value.len() + 4)
            .sum();
        start + headers + 24 + self.body.len()
    }

    /// Serializes the message. Known headers are written with their canonical name,
    /// unknown ones byte-for-byte; Content-Length is always written and always true.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out.freeze()
    }

    /// Serializes into `out`.
    pub fn encode_into(&self, out: &mut BytesMut) {
        match &self.start {
            StartLine::Request { method, uri } => {
                out.put_slice(method.as_bytes());
                out.put_u8(b' ');
                out.put_slice(uri);
                out.put_slice(b" SIP/2.0\r\n");
            }
            StartLine::Response { status, reason } => {
                out.put_slice(b"SIP/2.0 ");
                let mut buf = itoa::Buffer::new();
                out.put_slice(buf.format(*status).as_bytes());
                out.put_u8(b' ');
                out.put_slice(reason);
                out.put_slice(b"\r\n");
            }
        }
        for h in &self.headers {
            if h.name == HeaderName::ContentLength {
                continue;
            }
            match h.name.canonical() {
                Some(n) => out.put_slice(n.as_bytes()),
                None => out.put_slice(&h.raw_name),
            }
            out.put_slice(b": ");
            out.put_slice(&h.value);
            out.put_slice(b"\r\n");
        }
        out.put_slice(b"Content-Length: ");
        let mut buf = itoa::Buffer::new();
        out.put_slice(buf.format(self.body.len()).as_bytes());
        out.put_slice(b"\r\n\r\n");
        out.put_slice(&self.body);
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.encode()))
    }
}

/// The reason phrase RFC 3261 gives a status code (a generic one for unknown codes).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => match status / 100 {
            1 => "Progress",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}

/// Builds a response to `req` per RFC 3261 §8.2.6: Via, From, To, Call-ID and CSeq copied,
/// a To tag added when `to_tag` is given and the To has none.
pub fn response_to(req: &Message, status: u16, reason: &str, to_tag: Option<&[u8]>) -> Message {
    let mut resp = Message::response(status, Bytes::copy_from_slice(reason.as_bytes()));
    for h in &req.headers {
        match h.name {
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                resp.headers.push(h.clone())
            }
            HeaderName::To => {
                let mut h = h.clone();
                if let Some(tag) = to_tag {
                    let has_tag = NameAddr::parse(&h.value)
                        .map(|na| na.tag().is_some())
                        .unwrap_or(true);
                    if !has_tag && status != 100 {
                        let mut v = BytesMut::with_capacity(h.value.len() + tag.len() + 5);
                        v.put_slice(&h.value);
                        v.put_slice(b";tag=");
                        v.put_slice(tag);
                        h.value = v.freeze();
                    }
                }
                resp.headers.push(h)
            }
            _ => {}
        }
    }
    resp
}
