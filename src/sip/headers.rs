//! Typed views of the headers a switch needs, parsed on demand from a header's value.
//!
//! Every view holds `Bytes` slices of the value (no copies), and parameters are kept as one
//! raw slice that is scanned when asked (`Params`), so a lookup allocates nothing.

use bytes::Bytes;

use super::message::Method;
use super::uri::{self, Uri};

/// What is wrong with a header value. The node answers 400 naming the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("empty value")]
    Empty,
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    #[error("malformed display name")]
    DisplayName,
    #[error("malformed angle-bracketed address")]
    AngleBrackets,
    #[error("malformed URI")]
    Uri,
    #[error("malformed parameter")]
    Param,
    #[error("malformed sent-protocol")]
    Protocol,
    #[error("malformed sent-by")]
    SentBy,
    #[error("malformed number")]
    Number,
    #[error("malformed method")]
    Method,
}

/// RFC 3261 `token` characters.
pub fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// True when every byte is a token character and there is at least one.
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&c| is_token_char(c))
}

fn is_ws(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// Trims spaces and tabs from both ends, as a slice of the same buffer.
pub fn trim(b: &Bytes) -> Bytes {
    let s = b.as_ref();
    let start = s.iter().position(|&c| !is_ws(c)).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&c| !is_ws(c))
        .map(|i| i + 1)
        .unwrap_or(start);
    b.slice(start..end)
}

/// Parses an unsigned decimal that fits in `u32` (surrounding whitespace allowed).
pub fn parse_u32(b: &[u8]) -> Option<u32> {
    let s = trim_slice(b);
    if s.is_empty() || s.len() > 10 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        v = v * 10 + u64::from(c - b'0');
    }
    u32::try_from(v).ok()
}

/// Trims spaces and tabs from both ends of a byte slice.
pub fn trim_slice(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&c| !is_ws(c)).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&c| !is_ws(c))
        .map(|i| i + 1)
        .unwrap_or(start);
    &s[start..end]
}

/// Finds `needle` in `s` outside quoted strings (honouring `\` escapes inside quotes).
fn find_unquoted(s: &[u8], from: usize, needle: impl Fn(u8) -> bool) -> Option<usize> {
    let mut in_quote = false;
    let mut i = from;
    while i < s.len() {
        let c = s[i];
        if in_quote {
            if c == b'\\' {
                i += 1;
            } else if c == b'"' {
                in_quote = false;
            }
        } else if c == b'"' {
            in_quote = true;
        } else if needle(c) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Splits a list header's value on commas outside quotes and angle brackets; each element is
/// trimmed. Empty elements are yielded (as empty slices) so validation can reject them.
pub fn split_list(value: &Bytes) -> ListIter {
    ListIter {
        value: value.clone(),
        pos: 0,
        done: value.is_empty(),
    }
}

/// Iterator of [`split_list`].
pub struct ListIter {
    value: Bytes,
    pos: usize,
    done: bool,
}

impl Iterator for ListIter {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let s = self.value.as_ref();
        let mut in_quote = false;
        let mut in_angle = false;
        let mut i = self.pos;
        while i < s.len() {
            let c = s[i];
            if in_quote {
                if c == b'\\' {
                    i += 1;
                } else if c == b'"' {
                    in_quote = false;
                }
            } else {
                match c {
                    b'"' => in_quote = true,
                    b'<' => in_angle = true,
                    b'>' => in_angle = false,
                    b',' if !in_angle => {
                        let item = trim(&self.value.slice(self.pos..i));
                        self.pos = i + 1;
                        return Some(item);
                    }
                    _ => {}
                }
            }
            i += 1;
        }
        self.done = true;
        Some(trim(&self.value.slice(self.pos.min(s.len())..)))
    }
}

/// Semicolon parameters (`;name=value;flag`), kept raw and scanned on lookup.
/// LWS around `;` and `=` is allowed (`;tag = x` gives the tag `x`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params(pub Bytes);

impl Params {
    /// Iterates `(name, value)` pairs; names are as written (compare case-insensitively).
    pub fn iter(&self) -> ParamIter {
        ParamIter {
            raw: self.0.clone(),
            pos: 0,
        }
    }

    /// The value of a parameter: `None` if absent, `Some(None)` if present without a value.
    pub fn get(&self, name: &str) -> Option<Option<Bytes>> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Checks that every parameter has a token-ish name and a well-formed value.
    pub fn validate(&self) -> Result<(), HeaderError> {
        let s = self.0.as_ref();
        if s.is_empty() {
            return Ok(());
        }
        let mut pos = 0;
        while pos < s.len() {
            // Each parameter starts with ';' (after optional LWS).
            while pos < s.len() && is_ws(s[pos]) {
                pos += 1;
            }
            if pos >= s.len() {
                break;
            }
            if s[pos] != b';' {
                return Err(HeaderError::Param);
            }
            let end = find_unquoted(s, pos + 1, |c| c == b';').unwrap_or(s.len());
            let item = trim_slice(&s[pos + 1..end]);
            let (name, value) = match item.iter().position(|&c| c == b'=') {
                Some(eq) => (trim_slice(&item[..eq]), Some(trim_slice(&item[eq + 1..]))),
                None => (item, None),
            };
            if !name
                .iter()
                .all(|&c| is_token_char(c) || c == b'[' || c == b']' || c == b':')
                || name.is_empty()
            {
                return Err(HeaderError::Param);
            }
            if let Some(v) = value {
                if v.is_empty() {
                    return Err(HeaderError::Param);
                }
                if v[0] == b'"' {
                    if v.len() < 2 || v[v.len() - 1] != b'"' {
                        return Err(HeaderError::UnterminatedQuote);
                    }
                } else if v.iter().any(|&c| is_ws(c) || c == b'"' || c == b',') {
                    return Err(HeaderError::Param);
                }
            }
            pos = end;
        }
        Ok(())
    }
}

/// Iterator of [`Params::iter`].
pub struct ParamIter {
    raw: Bytes,
    pos: usize,
}

impl Iterator for ParamIter {
    type Item = (Bytes, Option<Bytes>);

    fn next(&mut self) -> Option<Self::Item> {
        let s = self.raw.as_ref();
        loop {
            let start = s[self.pos.min(s.len())..].iter().position(|&c| c == b';')? + self.pos;
            let end = find_unquoted(s, start + 1, |c| c == b';').unwrap_or(s.len());
            self.pos = end;
            let item = self.raw.slice(start + 1..end);
            let (name, value) = match item.iter().position(|&c| c == b'=') {
                Some(eq) => (trim(&item.slice(..eq)), Some(trim(&item.slice(eq + 1..)))),
                None => (trim(&item), None),
            };
            if name.is_empty() {
                continue;
            }
            let value = value.map(|v| {
                if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
                    v.slice(1..v.len() - 1)
                } else {
                    v
                }
            });
            return Some((name, value));
        }
    }
}

/// A Via value: `SIP/2.0/UDP host:port;branch=...;received=...;rport`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    /// The transport token as written (`UDP`, `TCP`, `TLS`, `SCTP`, or an extension).
    pub transport: Bytes,
    pub host: Bytes,
    pub port: Option<u16>,
    pub params: Params,
}

impl Via {
    /// Parses one Via value (one element of the comma-separated list).
    pub fn parse(v: &Bytes) -> Result<Via, HeaderError> {
        let v = trim(v);
        if v.is_empty() {
            return Err(HeaderError::Empty);
        }
        let s = v.as_ref();
        // sent-protocol = protocol-name SLASH protocol-version SLASH transport, LWS allowed
        // around the slashes.
        let mut parts: [&[u8]; 3] = [b""; 3];
        let mut pos = 0;
        for (i, part) in parts.iter_mut().enumerate() {
            while pos < s.len() && is_ws(s[pos]) {
                pos += 1;
            }
            let start = pos;
            while pos < s.len() && is_token_char(s[pos]) {
                pos += 1;
            }
            *part = &s[start..pos];
            while pos < s.len() && is_ws(s[pos]) {
                pos += 1;
            }
            if i < 2 {
                if pos >= s.len() || s[pos] != b'/' {
                    return Err(HeaderError::Protocol);
                }
                pos += 1;
            }
        }
        if !parts[0].eq_ignore_ascii_case(b"SIP") || parts[1] != b"2.0" || parts[2].is_empty() {
            return Err(HeaderError::Protocol);
        }
        let transport_end = pos;
        let transport = {
            let t = &s[..transport_end];
            let t_end = t
                .iter()
                .rposition(|&c| !is_ws(c))
                .map(|i| i + 1)
                .unwrap_or(0);
            let t_start = t[..t_end]
                .iter()
                .rposition(|&c| c == b'/' || is_ws(c))
                .map(|i| i + 1)
                .unwrap_or(0);
            v.slice(t_start..t_end)
        };
        // sent-by = host [ COLON port ], up to the first ';'.
        let params_at = s[pos..]
            .iter()
            .position(|&c| c == b';')
            .map(|i| i + pos)
            .unwrap_or(s.len());
        let sent_by = trim(&v.slice(pos..params_at));
        let (host, port) = uri::split_host_port(&sent_by).map_err(|_| HeaderError::SentBy)?;
        if !uri::is_valid_host(&host) {
            return Err(HeaderError::SentBy);
        }
        let params = Params(v.slice(params_at..));
        params.validate()?;
        Ok(Via {
            transport,
            host,
            port,
            params,
        })
    }

    pub fn branch(&self) -> Option<Bytes> {
        self.params.get("branch").flatten()
    }

    pub fn received(&self) -> Option<Bytes> {
        self.params.get("received").flatten()
    }

    /// `None` if there is no rport; `Some(None)` for a bare `;rport` (a request for one).
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params.get("rport").map(|v| {
            v.and_then(|p| parse_u32(&p))
                .and_then(|p| u16::try_from(p).ok())
        })
    }

    /// True when the branch carries the RFC 3261 magic cookie (and something after it).
    pub fn is_rfc3261_branch(&self) -> bool {
        self.branch()
            .is_some_and(|b| b.len() > 7 && b.starts_with(b"z9hG4bK"))
    }
}

/// A name-addr or addr-spec with header parameters: From, To, Contact, Route, Record-Route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr {
    /// The display name without its quotes (quoted-pair escapes are left as written).
    pub display: Option<Bytes>,
    /// The URI text (inside the angle brackets when there are any).
    pub uri: Bytes,
    /// Header parameters after the address (`;tag=...`, `;expires=...`, `;q=...`).
    pub params: Params,
    /// True for the Contact value `*`.
    pub star: bool,
}

impl NameAddr {
    /// `"Anonymous" <sip:anonymous@anonymous.invalid>` (RFC 3323 §4.1.1.3): the stand-in
    /// where a message the switch holds has no readable address.
    pub fn anonymous() -> NameAddr {
        NameAddr {
            display: Some(Bytes::from_static(b"Anonymous")),
            uri: Bytes::from_static(b"sip:anonymous@anonymous.invalid"),
            params: Params::default(),
            star: false,
        }
    }

    /// Parses a From / To / Route / Record-Route value.
    pub fn parse(v: &Bytes) -> Result<NameAddr, HeaderError> {
        let v = trim(v);
        let s = v.as_ref();
        if s.is_empty() {
            return Err(HeaderError::Empty);
        }
        let mut display = None;
        let laquot;
        if s[0] == b'"' {
            let close = find_closing_quote(s, 1).ok_or(HeaderError::UnterminatedQuote)?;
            display = Some(v.slice(1..close));
            let mut i = close + 1;
            while i < s.len() && is_ws(s[i]) {
                i += 1;
            }
            if i >= s.len() || s[i] != b'<' {
                return Err(HeaderError::AngleBrackets);
            }
            laquot = Some(i);
        } else {
            laquot = find_unquoted(s, 0, |c| c == b'<');
            if let Some(lq) = laquot {
                // display-name = *(token LWS): tokens separated by whitespace only.
                let dn = trim_slice(&s[..lq]);
                if !dn.iter().all(|&c| is_token_char(c) || is_ws(c)) {
                    return Err(HeaderError::DisplayName);
                }
                if !dn.is_empty() {
                    display = Some(trim(&v.slice(..lq)));
                }
            } else if s.contains(&b'"') {
                return Err(HeaderError::UnterminatedQuote);
            }
        }
        match laquot {
            Some(lq) => {
                let rq = s[lq..]
                    .iter()
                    .position(|&c| c == b'>')
                    .ok_or(HeaderError::AngleBrackets)?
                    + lq;
                let uri = v.slice(lq + 1..rq);
                if uri.is_empty() || uri.iter().any(|&c| is_ws(c) || c == b'<') {
                    return Err(HeaderError::AngleBrackets);
                }
                if !uri::has_scheme(&uri) {
                    return Err(HeaderError::Uri);
                }
                let params = Params(v.slice(rq + 1..));
                params.validate()?;
                Ok(NameAddr {
                    display,
                    uri,
                    params,
                    star: false,
                })
            }
            None => {
                // addr-spec: the URI ends at the first ';' (what follows are header params),
                // and it may not contain ',', '?' or whitespace (RFC 3261 §20).
                let end = s.iter().position(|&c| c == b';').unwrap_or(s.len());
                let uri = trim(&v.slice(..end));
                if uri.is_empty()
                    || uri
                        .iter()
                        .any(|&c| is_ws(c) || matches!(c, b',' | b'?' | b'<' | b'>'))
                    || !uri::has_scheme(&uri)
                {
                    return Err(HeaderError::Uri);
                }
                let params = Params(v.slice(end..));
                params.validate()?;
                Ok(NameAddr {
                    display: None,
                    uri,
                    params,
                    star: false,
                })
            }
        }
    }

    /// Parses a Contact value, accepting `*`.
    pub fn parse_contact(v: &Bytes) -> Result<NameAddr, HeaderError> {
        let t = trim(v);
        if t.as_ref() == b"*" {
            return Ok(NameAddr {
                display: None,
                uri: t,
                params: Params::default(),
                star: true,
            });
        }
        NameAddr::parse(&t)
    }

    pub fn tag(&self) -> Option<Bytes> {
        self.params.get("tag").flatten()
    }

    /// The Contact `expires` parameter.
    pub fn expires(&self) -> Option<u32> {
        self.params
            .get("expires")
            .flatten()
            .and_then(|v| parse_u32(&v))
    }

    /// The Contact `q` parameter in thousandths (q=0.5 gives 500); `None` if absent or invalid.
    pub fn q(&self) -> Option<u16> {
        let v = self.params.get("q").flatten()?;
        let s = v.as_ref();
        let (int, frac) = match s.iter().position(|&c| c == b'.') {
            Some(d) => (&s[..d], &s[d + 1..]),
            None => (s, &b""[..]),
        };
        if int.len() != 1
            || !int[0].is_ascii_digit()
            || frac.len() > 3
            || !frac.iter().all(u8::is_ascii_digit)
        {
            return None;
        }
        let mut q = u16::from(int[0] - b'0') * 1000;
        let mut scale = 100;
        for &c in frac {
            q += u16::from(c - b'0') * scale;
            scale /= 10;
        }
        (q <= 1000).then_some(q)
    }

    /// The URI parsed.
    pub fn parsed_uri(&self) -> Result<Uri, HeaderError> {
        Uri::parse(&self.uri).map_err(|_| HeaderError::Uri)
    }
}

fn find_closing_quote(s: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// A CSeq value: sequence number and method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    /// Parses `1 INVITE`; the number must be below 2^31 (RFC 3261 §8.1.1.5).
    pub fn parse(v: &Bytes) -> Result<CSeq, HeaderError> {
        let v = trim(v);
        let s = v.as_ref();
        let sp = s
            .iter()
            .position(|&c| is_ws(c))
            .ok_or(HeaderError::Method)?;
        let seq = parse_u32(&s[..sp])
            .filter(|&n| n < 1 << 31)
            .ok_or(HeaderError::Number)?;
        let m = trim(&v.slice(sp..));
        if !is_token(&m) {
            return Err(HeaderError::Method);
        }
        Ok(CSeq {
            seq,
            method: Method::from_token(&m),
        })
    }
}

/// Reads `name="value"` / `name=token` pairs of a Digest credential or challenge
/// (`Digest realm="x", nonce="y"`); returns the scheme and an iterator-friendly list.
pub fn auth_params(v: &Bytes) -> Option<(Bytes, Vec<(Bytes, Bytes)>)> {
    let v = trim(v);
    let s = v.as_ref();
    let sp = s.iter().position(|&c| is_ws(c)).unwrap_or(s.len());
    let scheme = v.slice(..sp);
    if !is_token(&scheme) {
        return None;
    }
    let mut out = Vec::new();
    let mut pos = sp;
    while pos < s.len() {
        let end = find_unquoted(s, pos, |c| c == b',').unwrap_or(s.len());
        let item = trim(&v.slice(pos..end));
        pos = end + 1;
        if item.is_empty() {
            continue;
        }
        let eq = item.iter().position(|&c| c == b'=')?;
        let name = trim(&item.slice(..eq));
        let mut val = trim(&item.slice(eq + 1..));
        if val.len() >= 2 && val[0] == b'"' && val[val.len() - 1] == b'"' {
            val = val.slice(1..val.len() - 1);
        }
        out.push((name, val));
    }
    Some((scheme, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn list_split_respects_quotes_and_brackets() {
        let items: Vec<Bytes> =
            split_list(&b(r#""a, b" <sip:x@y;p=1,2>, <sip:z>  ,sip:w"#)).collect();
        assert_eq!(items.len(), 3, "{items:?}");
        assert_eq!(items[1], b("<sip:z>"));
        assert_eq!(items[2], b("sip:w"));
    }

    #[test]
    fn params_allow_lws_around_equals() {
        let p = Params(b(" ;   tag    = 1918181833n ; lr"));
        assert_eq!(p.get("tag"), Some(Some(b("1918181833n"))));
        assert_eq!(p.get("LR"), Some(None));
        assert_eq!(p.get("x"), None);
        assert!(p.validate().is_ok());
        assert!(Params(b(";;")).validate().is_err());
    }

    #[test]
    fn via_with_lws_everywhere() {
        let v = Via::parse(&b("SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw")).unwrap();
        assert_eq!(v.transport, b("UDP"));
        assert_eq!(v.host, b("192.0.2.2"));
        assert_eq!(v.branch(), Some(b("390skdjuw")));
        let v = Via::parse(&b(
            "SIP/2.0/TCP [2001:db8::9:1]:5061;branch=z9hG4bKx;rport;received=1.2.3.4",
        ))
        .unwrap();
        assert_eq!(v.host, b("[2001:db8::9:1]"));
        assert_eq!(v.port, Some(5061));
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.received(), Some(b("1.2.3.4")));
        assert!(Via::parse(&b("SIP/2.0/UDP 192.0.2.15;;")).is_err());
        assert!(Via::parse(&b("SIP/3.0/UDP h")).is_err());
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(&b(
            r#""J Rosenberg \\\""       <sip:jdrosen@example.com>  ;  tag = 98asjd8"#,
        ))
        .unwrap();
        assert_eq!(n.display, Some(b(r#"J Rosenberg \\\""#)));
        assert_eq!(n.uri, b("sip:jdrosen@example.com"));
        assert_eq!(n.tag(), Some(b("98asjd8")));
        let n = NameAddr::parse(&b("sip:caller@example.net;tag=134161461246")).unwrap();
        assert_eq!(n.uri, b("sip:caller@example.net"));
        assert_eq!(n.tag(), Some(b("134161461246")));
        let n = NameAddr::parse(&b(r#""caller"<sip:caller@example.com>;tag=323"#)).unwrap();
        assert_eq!(n.display, Some(b("caller")));
        assert!(NameAddr::parse(&b(r#""Mr. J. User <sip:j.user@example.com>"#)).is_err());
        assert!(NameAddr::parse(&b("Bell, Alexander <sip:a.g.bell@example.com>;tag=43")).is_err());
        assert!(NameAddr::parse(&b(r#""Watson, Thomas" < sip:t.watson@example.org >"#)).is_err());
        assert!(
            NameAddr::parse(&b("sip:user@example.com?Route=%3Csip:sip.example.com%3E")).is_err()
        );
        let c = NameAddr::parse_contact(&b(" * ")).unwrap();
        assert!(c.star);
        let c = NameAddr::parse(&b("<sip:a@b>;q=0.33;expires=60")).unwrap();
        assert_eq!(c.q(), Some(330));
        assert_eq!(c.expires(), Some(60));
    }

    #[test]
    fn cseq_bounds() {
        assert_eq!(CSeq::parse(&b("0009  INVITE")).unwrap().seq, 9);
        assert!(CSeq::parse(&b("36893488147419103232 REGISTER")).is_err());
        assert!(CSeq::parse(&b("2147483648 INVITE")).is_err());
        assert_eq!(
            CSeq::parse(&b("2147483647 BYE")).unwrap().method,
            Method::Bye
        );
    }

    #[test]
    fn digest_params() {
        let (scheme, p) = auth_params(&b(
            r#"Digest username="bob", realm="a,b", nc=00000001, qop=auth"#,
        ))
        .unwrap();
        assert_eq!(scheme, b("Digest"));
        assert_eq!(p[1], (b("realm"), b("a,b")));
        assert_eq!(p[2], (b("nc"), b("00000001")));
    }
}
