//! SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966), parsed into slices of the original.

use bytes::Bytes;
use std::borrow::Cow;

use super::headers::Params;

/// What is wrong with a URI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("no scheme")]
    Scheme,
    #[error("bad host")]
    Host,
    #[error("bad port")]
    Port,
    #[error("bad character")]
    Char,
}

/// A URI scheme.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    Other(Bytes),
}

/// A parsed URI. For `tel:` the number is in `user` and `host` is empty; for other schemes
/// only `scheme` and `opaque` are set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uri {
    pub scheme: Scheme,
    pub user: Option<Bytes>,
    pub password: Option<Bytes>,
    pub host: Bytes,
    pub port: Option<u16>,
    /// `;name=value` URI parameters, raw.
    pub params: Params,
    /// Text after `?` (URI headers), raw, without the `?`.
    pub headers: Bytes,
    /// Everything after the scheme's colon, as written.
    pub opaque: Bytes,
}

/// True when `s` begins with `scheme ":"` where scheme = ALPHA *(ALPHA / DIGIT / + - .).
pub fn has_scheme(s: &[u8]) -> bool {
    scheme_end(s).is_some()
}

fn scheme_end(s: &[u8]) -> Option<usize> {
    let colon = s.iter().position(|&c| c == b':')?;
    let scheme = &s[..colon];
    let ok = !scheme.is_empty()
        && scheme[0].is_ascii_alphabetic()
        && scheme
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'));
    ok.then_some(colon)
}

impl Uri {
    /// Parses a URI. Characters outside the URI grammar (whitespace, `<`, `>`, `"`) are errors.
    pub fn parse(b: &Bytes) -> Result<Uri, UriError> {
        let s = b.as_ref();
        let colon = scheme_end(s).ok_or(UriError::Scheme)?;
        if s.iter()
            .any(|&c| c <= b' ' || matches!(c, b'<' | b'>' | b'"' | 0x7f))
        {
            return Err(UriError::Char);
        }
        let scheme_b = &s[..colon];
        let scheme = if scheme_b.eq_ignore_ascii_case(b"sip") {
            Scheme::Sip
        } else if scheme_b.eq_ignore_ascii_case(b"sips") {
            Scheme::Sips
        } else if scheme_b.eq_ignore_ascii_case(b"tel") {
            Scheme::Tel
        } else {
            Scheme::Other(b.slice(..colon))
        };
        let rest_at = colon + 1;
        let opaque = b.slice(rest_at..);
        let mut uri = Uri {
            scheme,
            user: None,
            password: None,
            host: Bytes::new(),
            port: None,
            params: Params::default(),
            headers: Bytes::new(),
            opaque,
        };
        match uri.scheme {
            Scheme::Sip | Scheme::Sips => {}
            Scheme::Tel => {
                let end = s[rest_at..]
                    .iter()
                    .position(|&c| c == b';')
                    .map(|i| i + rest_at)
                    .unwrap_or(s.len());
                if end == rest_at {
                    return Err(UriError::Char);
                }
                uri.user = Some(b.slice(rest_at..end));
                uri.params = Params(b.slice(end..));
                return Ok(uri);
            }
            Scheme::Other(_) => return Ok(uri),
        }
        // sip/sips: [userinfo "@"] hostport uri-parameters [headers]. '@' cannot appear
        // unescaped anywhere but as the userinfo separator.
        let mut pos = rest_at;
        if let Some(at) = s[rest_at..].iter().position(|&c| c == b'@') {
            let at = at + rest_at;
            let userinfo = &s[rest_at..at];
            match userinfo.iter().position(|&c| c == b':') {
                Some(pc) => {
                    uri.user = Some(b.slice(rest_at..rest_at + pc));
                    uri.password = Some(b.slice(rest_at + pc + 1..at));
                }
                None => uri.user = Some(b.slice(rest_at..at)),
            }
            if uri.user.as_ref().is_some_and(|u| u.is_empty()) {
                return Err(UriError::Char);
            }
            pos = at + 1;
        }
        let hp_end = find_host_end(s, pos);
        let (host, port) = split_host_port(&b.slice(pos..hp_end))?;
        if !is_valid_host(&host) {
            return Err(UriError::Host);
        }
        uri.host = host;
        uri.port = port;
        let q = s[hp_end..]
            .iter()
            .position(|&c| c == b'?')
            .map(|i| i + hp_end)
            .unwrap_or(s.len());
        uri.params = Params(b.slice(hp_end..q));
        if q < s.len() {
            uri.headers = b.slice(q + 1..);
        }
        Ok(uri)
    }

    /// The user part with `%HH` escapes decoded (may contain any byte, including NUL).
    pub fn user_unescaped(&self) -> Option<Cow<'_, [u8]>> {
        self.user.as_deref().map(unescape)
    }

    /// A URI parameter: `None` if absent, `Some(None)` if present without value.
    pub fn param(&self, name: &str) -> Option<Option<Bytes>> {
        self.params.get(name)
    }

    /// The transport parameter, lower-cased semantics left to the caller.
    pub fn transport(&self) -> Option<Bytes> {
        self.param("transport").flatten()
    }

    pub fn is_sip(&self) -> bool {
        matches!(self.scheme, Scheme::Sip | Scheme::Sips)
    }
}

fn find_host_end(s: &[u8], from: usize) -> usize {
    let mut in_v6 = false;
    for (i, &c) in s[from..].iter().enumerate() {
        match c {
            b'[' => in_v6 = true,
            b']' => in_v6 = false,
            b';' | b'?' if !in_v6 => return from + i,
            _ => {}
        }
    }
    s.len()
}

/// Splits `host[:port]` (IPv6 references in brackets). Errors on an invalid port.
pub fn split_host_port(hp: &Bytes) -> Result<(Bytes, Option<u16>), UriError> {
    let s = hp.as_ref();
    let colon = if s.first() == Some(&b'[') {
        let close = s.iter().position(|&c| c == b']').ok_or(UriError::Host)?;
        match s.get(close + 1) {
            None => None,
            Some(b':') => Some(close + 1),
            Some(_) => return Err(UriError::Host),
        }
    } else {
        s.iter().position(|&c| c == b':')
    };
    match colon {
        None => Ok((hp.clone(), None)),
        Some(c) => {
            let p = &s[c + 1..];
            if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
                return Err(UriError::Port);
            }
            let port: u32 = std::str::from_utf8(p)
                .ok()
                .and_then(|p| p.parse().ok())
                .ok_or(UriError::Port)?;
            let port = u16::try_from(port).map_err(|_| UriError::Port)?;
            Ok((hp.slice(..c), Some(port)))
        }
    }
}

/// A hostname, IPv4 address or bracketed IPv6 reference.
pub fn is_valid_host(h: &[u8]) -> bool {
    if h.is_empty() {
        return false;
    }
    if h[0] == b'[' {
        return h.len() > 2
            && h[h.len() - 1] == b']'
            && std::str::from_utf8(&h[1..h.len() - 1])
                .is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
    }
    h.iter()
        .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
}

/// Decodes `%HH` escapes; an invalid escape is kept as written (RFC 4475 esc02).
pub fn unescape(s: &[u8]) -> Cow<'_, [u8]> {
    if !s.contains(&b'%') {
        return Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    Cow::Owned(out)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Uri {
        Uri::parse(&Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    #[test]
    fn sip_uri_parts() {
        let x = u("sip:alice:pw@[2001:db8::1]:5070;transport=tcp;lr?subject=hi");
        assert_eq!(x.scheme, Scheme::Sip);
        assert_eq!(x.user.as_deref(), Some(&b"alice"[..]));
        assert_eq!(x.password.as_deref(), Some(&b"pw"[..]));
        assert_eq!(x.host.as_ref(), b"[2001:db8::1]");
        assert_eq!(x.port, Some(5070));
        assert_eq!(x.transport().as_deref(), Some(&b"tcp"[..]));
        assert_eq!(x.param("lr"), Some(None));
        assert_eq!(x.headers.as_ref(), b"subject=hi");
        let y = u("sips:example.com");
        assert_eq!(y.scheme, Scheme::Sips);
        assert!(y.user.is_none());
    }

    #[test]
    fn escapes_and_semicolon_users() {
        let x = u("sip:user;par=u%40example.net@example.com");
        assert_eq!(
            x.user_unescaped().unwrap().as_ref(),
            b"user;par=u@example.net"
        );
        assert_eq!(x.host.as_ref(), b"example.com");
        let n = u("sip:null-%00-null@example.com");
        assert_eq!(n.user_unescaped().unwrap().as_ref(), b"null-\0-null");
        assert_eq!(unescape(b"%Z%45").as_ref(), b"%ZE");
    }

    #[test]
    fn other_schemes_and_errors() {
        assert!(matches!(
            u("soap.beep://192.0.2.103:3002").scheme,
            Scheme::Other(_)
        ));
        assert_eq!(
            u("tel:+1-201-555-0123;phone-context=x").user.as_deref(),
            Some(&b"+1-201-555-0123"[..])
        );
        assert!(Uri::parse(&Bytes::from_static(b"<sip:user@example.com>")).is_err());
        assert!(Uri::parse(&Bytes::from_static(b"sip:user@exa mple.com")).is_err());
        assert!(Uri::parse(&Bytes::from_static(b"sip:user@host:99999")).is_err());
    }
}
