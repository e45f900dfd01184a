//! HTTP Digest authentication for SIP (RFC 2617, RFC 7616, RFC 8760): MD5 and SHA-256 with
//! `qop=auth`, challenges, credentials, and stateless self-validating nonces.
//!
//! Pure code: no tokio, no state. Replay tracking (nonce counts) and brute-force locks are
//! stateful and live in `routing::auth`.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

use super::headers::auth_params;

/// A digest algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5` (RFC 2617; also what a credential without `algorithm` means).
    Md5,
    /// `SHA-256` (RFC 7616, RFC 8760).
    Sha256,
}

impl Algorithm {
    /// The token written in challenges and credentials.
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Parses an `algorithm` value (case-insensitive). The `-sess` variants are not supported.
    pub fn from_token(t: &[u8]) -> Option<Algorithm> {
        if t.eq_ignore_ascii_case(b"MD5") {
            Some(Algorithm::Md5)
        } else if t.eq_ignore_ascii_case(b"SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    /// Length of a hash of this algorithm in hex digits.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 => 64,
        }
    }

    /// Hashes `parts` joined by `:` and returns lowercase hex.
    fn hash_joined(self, parts: &[&[u8]]) -> String {
        fn feed<D: Digest>(mut d: D, parts: &[&[u8]]) -> String {
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(p);
            }
            to_hex(&d.finalize())
        }
        match self {
            Algorithm::Md5 => feed(Md5::new(), parts),
            Algorithm::Sha256 => feed(Sha256::new(), parts),
        }
    }
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn from_hex(s: &[u8]) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    s.chunks(2)
        .map(|c| {
            let hi = (c[0] as char).to_digit(16)?;
            let lo = (c[1] as char).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
}

/// `HA1 = H(username:realm:password)` in hex: what the configuration stores instead of the
/// password (for tests and the `ha1` CLI).
pub fn ha1(alg: Algorithm, username: &str, realm: &str, password: &str) -> String {
    alg.hash_joined(&[username.as_bytes(), realm.as_bytes(), password.as_bytes()])
}

/// The `qop=auth` inputs of a response: the nonce count as sent (8 hex digits) and the
/// client nonce.
#[derive(Clone, Copy, Debug)]
pub struct QopAuth<'a> {
    /// The `nc` value exactly as the client sent it (e.g. `00000001`).
    pub nc: &'a [u8],
    pub cnonce: &'a [u8],
}

/// The response a client with `ha1_hex` must send (RFC 7616 §3.4.1 with `qop=auth`;
/// RFC 2617 §3.2.2.1 without qop): `H(HA1:nonce:nc:cnonce:auth:H(method:uri))` or
/// `H(HA1:nonce:H(method:uri))`.
pub fn expected_response(
    alg: Algorithm,
    ha1_hex: &str,
    method: &[u8],
    uri: &[u8],
    nonce: &[u8],
    qop: Option<QopAuth<'_>>,
) -> String {
    let ha2 = alg.hash_joined(&[method, uri]);
    // HA1 from the configuration may be uppercase hex; the hash input is lowercase.
    let ha1 = ha1_hex.to_ascii_lowercase();
    match qop {
        Some(q) => alg.hash_joined(&[
            ha1.as_bytes(),
            nonce,
            q.nc,
            q.cnonce,
            b"auth",
            ha2.as_bytes(),
        ]),
        None => alg.hash_joined(&[ha1.as_bytes(), nonce, ha2.as_bytes()]),
    }
}

/// Compares two hex digests in time independent of where they differ (case-insensitive).
pub fn digest_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| {
        acc | (x.to_ascii_lowercase() ^ y.to_ascii_lowercase())
    }) == 0
}

/// A challenge (`WWW-Authenticate` / `Proxy-Authenticate`), always offering `qop="auth"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// The previous request's nonce was too old (or from before a restart) but its digest
    /// was right: the client may retry without asking its user (RFC 7616 §3.3).
    pub stale: bool,
}

impl Challenge {
    /// The header value: `Digest realm="…", nonce="…", algorithm=…, qop="auth"[, stale=true]`.
    pub fn header_value(&self) -> String {
        let mut s = format!(
            "Digest realm=\"{}\", nonce=\"{}\", algorithm={}, qop=\"auth\"",
            self.realm,
            self.nonce,
            self.algorithm.token()
        );
        if let Some(o) = &self.opaque {
            let _ = write!(s, ", opaque=\"{o}\"");
        }
        if self.stale {
            s.push_str(", stale=true");
        }
        s
    }

    /// Parses a challenge (client side: tests, and trunks that challenge the switch).
    /// A missing `algorithm` means MD5; a qop list without `auth` is refused.
    pub fn parse(v: &Bytes) -> Result<Challenge, DigestError> {
        let params = digest_params(v)?;
        let get = |n: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n.as_bytes()))
                .map(|(_, v)| v.clone())
        };
        let text = |b: Bytes| String::from_utf8_lossy(&b).into_owned();
        let algorithm = match get("algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::from_token(&a).ok_or(DigestError::Algorithm)?,
        };
        if let Some(q) = get("qop") {
            if !q
                .split(|&c| c == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"auth"))
            {
                return Err(DigestError::Qop);
            }
        }
        Ok(Challenge {
            realm: text(get("realm").ok_or(DigestError::Missing("realm"))?),
            nonce: text(get("nonce").ok_or(DigestError::Missing("nonce"))?),
            opaque: get("opaque").map(text),
            algorithm,
            stale: get("stale").is_some_and(|s| s.eq_ignore_ascii_case(b"true")),
        })
    }
}

/// What is wrong with a Digest credential or challenge. The registrar answers 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("not a Digest header")]
    NotDigest,
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("unsupported algorithm")]
    Algorithm,
    #[error("unsupported qop")]
    Qop,
    #[error("malformed nc")]
    Nc,
}

fn digest_params(v: &Bytes) -> Result<Vec<(Bytes, Bytes)>, DigestError> {
    let (scheme, params) = auth_params(v).ok_or(DigestError::NotDigest)?;
    if !scheme.eq_ignore_ascii_case(b"Digest") {
        return Err(DigestError::NotDigest);
    }
    Ok(params)
}

/// Credentials from an `Authorization` / `Proxy-Authorization` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: Bytes,
    pub realm: Bytes,
    pub nonce: Bytes,
    pub uri: Bytes,
    pub response: Bytes,
    pub algorithm: Algorithm,
    pub cnonce: Option<Bytes>,
    /// The nonce count, parsed from 8 hex digits; `None` without qop.
    pub nc: Option<u32>,
    /// The nonce count as sent (it enters the hash as text).
    pub nc_text: Option<Bytes>,
    /// True for `qop=auth` (the only qop supported); false for an RFC 2069-style credential.
    pub qop_auth: bool,
    pub opaque: Option<Bytes>,
}

impl Credentials {
    /// Parses a credential. With `qop=auth`, `nc` (8 hex digits) and `cnonce` are required.
    pub fn parse(v: &Bytes) -> Result<Credentials, DigestError> {
        let params = digest_params(v)?;
        let get = |n: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n.as_bytes()))
                .map(|(_, v)| v.clone())
        };
        let need = |n: &'static str| get(n).ok_or(DigestError::Missing(n));
        let algorithm = match get("algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::from_token(&a).ok_or(DigestError::Algorithm)?,
        };
        let qop_auth = match get("qop") {
            None => false,
            Some(q) if q.eq_ignore_ascii_case(b"auth") => true,
            Some(_) => return Err(DigestError::Qop),
        };
        let (nc, nc_text, cnonce) = if qop_auth {
            let text = need("nc")?;
            if text.len() != 8 {
                return Err(DigestError::Nc);
            }
            let n = std::str::from_utf8(&text)
                .ok()
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .ok_or(DigestError::Nc)?;
            (Some(n), Some(text), Some(need("cnonce")?))
        } else {
            (None, None, None)
        };
        Ok(Credentials {
            username: need("username")?,
            realm: need("realm")?,
            nonce: need("nonce")?,
            uri: need("uri")?,
            response: need("response")?,
            algorithm,
            cnonce,
            nc,
            nc_text,
            qop_auth,
            opaque: get("opaque"),
        })
    }

    /// The response these credentials should carry for `method` if the user's HA1 is `ha1_hex`.
    pub fn expected_response(&self, ha1_hex: &str, method: &[u8]) -> String {
        let qop = match (&self.nc_text, &self.cnonce) {
            (Some(nc), Some(cnonce)) if self.qop_auth => Some(QopAuth { nc, cnonce }),
            _ => None,
        };
        expected_response(self.algorithm, ha1_hex, method, &self.uri, &self.nonce, qop)
    }

    /// True when the response matches `ha1_hex` (constant-time comparison).
    pub fn verify(&self, ha1_hex: &str, method: &[u8]) -> bool {
        digest_eq(
            self.expected_response(ha1_hex, method).as_bytes(),
            &self.response,
        )
    }
}

/// Builds an `Authorization` value answering `challenge` with `qop=auth` (client side:
/// tests, and the switch authenticating to a trunk).
pub fn authorization_value(
    challenge: &Challenge,
    username: &str,
    ha1_hex: &str,
    method: &str,
    uri: &str,
    nc: u32,
    cnonce: &str,
) -> String {
    let nc_text = format!("{nc:08x}");
    let response = expected_response(
        challenge.algorithm,
        ha1_hex,
        method.as_bytes(),
        uri.as_bytes(),
        challenge.nonce.as_bytes(),
        Some(QopAuth {
            nc: nc_text.as_bytes(),
            cnonce: cnonce.as_bytes(),
        }),
    );
    let mut s = format!(
        "Digest username=\"{username}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{response}\", algorithm={}, qop=auth, nc={nc_text}, cnonce=\"{cnonce}\"",
        challenge.realm,
        challenge.nonce,
        challenge.algorithm.token(),
    );
    if let Some(o) = &challenge.opaque {
        let _ = write!(s, ", opaque=\"{o}\"");
    }
    s
}

/// What a nonce check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceCheck {
    /// Issued by this key, `issued_at_ms` (Unix milliseconds), not older than the TTL.
    Valid { issued_at_ms: u64 },
    /// Issued by this key but older than the TTL: challenge again with `stale=true`.
    Stale,
    /// Not issued by this key (forged, mangled, or from before a key change).
    Invalid,
}

/// Bytes of the MAC kept in a nonce (96 bits: forging one means guessing them).
const NONCE_MAC_LEN: usize = 12;
/// Clock slack for nonces that look issued in the future (a clock step back).
const NONCE_FUTURE_SLACK_MS: u64 = 60_000;

/// Issues and checks stateless nonces: `hex(timestamp_ms(8) || random(8) || HMAC-SHA256(key,
/// timestamp || random)[..12])`. Nothing is stored per nonce: the MAC proves it is ours and
/// the timestamp says how old it is.
#[derive(Clone)]
pub struct NonceKey {
    key: [u8; 32],
}

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

impl NonceKey {
    /// A key from secret bytes (persist them to keep nonces valid across restarts).
    pub fn new(key: [u8; 32]) -> NonceKey {
        NonceKey { key }
    }

    /// A random key: nonces die with the process (clients get `stale=true` and retry).
    pub fn random() -> NonceKey {
        NonceKey {
            key: rand::random(),
        }
    }

    fn mac(&self, data: &[u8]) -> [u8; NONCE_MAC_LEN] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        m.update(data);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; NONCE_MAC_LEN];
        out.copy_from_slice(&full[..NONCE_MAC_LEN]);
        out
    }

    /// A nonce issued at `now_ms` (Unix milliseconds) with the given random part.
    pub fn issue_with(&self, now_ms: u64, random: [u8; 8]) -> String {
        let mut raw = [0u8; 16 + NONCE_MAC_LEN];
        raw[..8].copy_from_slice(&now_ms.to_be_bytes());
        raw[8..16].copy_from_slice(&random);
        let mac = self.mac(&raw[..16]);
        raw[16..].copy_from_slice(&mac);
        to_hex(&raw)
    }

    /// A nonce issued at `now_ms` with fresh randomness.
    pub fn issue(&self, now_ms: u64) -> String {
        self.issue_with(now_ms, rand::random())
    }

    /// Checks a nonce at `now_ms` against a TTL.
    pub fn check(&self, nonce: &[u8], now_ms: u64, ttl_ms: u64) -> NonceCheck {
        let Some(raw) = from_hex(nonce).filter(|r| r.len() == 16 + NONCE_MAC_LEN) else {
            return NonceCheck::Invalid;
        };
        if !digest_eq(&self.mac(&raw[..16]), &raw[16..]) {
            return NonceCheck::Invalid;
        }
        let issued = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
        if issued > now_ms.saturating_add(NONCE_FUTURE_SLACK_MS) {
            return NonceCheck::Invalid;
        }
        if now_ms.saturating_sub(issued) > ttl_ms {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid {
                issued_at_ms: issued,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn rfc2617_section_3_5_example() {
        // RFC 2617 §3.5: password "Circle Of Life", GET /dir/index.html, qop=auth.
        let ha1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let creds = Credentials::parse(&b(
            r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        ))
        .unwrap();
        assert_eq!(creds.nc, Some(1));
        assert_eq!(creds.algorithm, Algorithm::Md5);
        assert_eq!(
            creds.expected_response(&ha1, b"GET"),
            "6629fae49393a05397450978507c4ef1"
        );
        assert!(creds.verify(&ha1, b"GET"));
        assert!(!creds.verify(&ha1, b"POST"), "the method is covered");
        let wrong = super::ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "circle of life",
        );
        assert!(!creds.verify(&wrong, b"GET"));
    }

    #[test]
    fn rfc7616_section_3_9_1_examples() {
        // RFC 7616 §3.9.1: password "Circle of Life" (lowercase "of"), qop=auth.
        let realm = "http-auth@example.org";
        let nonce = b"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let cnonce = b"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        let q = Some(QopAuth {
            nc: b"00000001",
            cnonce,
        });
        let md5 = ha1(Algorithm::Md5, "Mufasa", realm, "Circle of Life");
        assert_eq!(
            expected_response(Algorithm::Md5, &md5, b"GET", b"/dir/index.html", nonce, q),
            "8ca523f5e9506fed4657c9700eebdbec"
        );
        let sha = ha1(Algorithm::Sha256, "Mufasa", realm, "Circle of Life");
        assert_eq!(sha.len(), 64);
        assert_eq!(
            expected_response(
                Algorithm::Sha256,
                &sha,
                b"GET",
                b"/dir/index.html",
                nonce,
                q
            ),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        // Uppercase HA1 in the configuration gives the same answer.
        assert_eq!(
            expected_response(
                Algorithm::Sha256,
                &sha.to_ascii_uppercase(),
                b"GET",
                b"/dir/index.html",
                nonce,
                q
            ),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn rfc2069_style_without_qop() {
        let ha1 = ha1(Algorithm::Md5, "bob", "r", "pw");
        let expect = expected_response(Algorithm::Md5, &ha1, b"REGISTER", b"sip:r", b"n", None);
        let v = format!(
            r#"Digest username="bob", realm="r", nonce="n", uri="sip:r", response="{expect}""#
        );
        let c = Credentials::parse(&b(&v)).unwrap();
        assert!(!c.qop_auth);
        assert_eq!(c.nc, None);
        assert!(c.verify(&ha1, b"REGISTER"));
    }

    #[test]
    fn credential_faults() {
        assert_eq!(
            Credentials::parse(&b(r#"Basic dXNlcjpwYXNz"#)),
            Err(DigestError::NotDigest)
        );
        assert_eq!(
            Credentials::parse(&b(
                r#"Digest username="a", realm="r", nonce="n", uri="u", response="x", algorithm=SHA-512-256"#
            )),
            Err(DigestError::Algorithm)
        );
        assert_eq!(
            Credentials::parse(&b(
                r#"Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth, nc=zz000001, cnonce="c""#
            )),
            Err(DigestError::Nc)
        );
        assert_eq!(
            Credentials::parse(&b(
                r#"Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth, nc=00000001"#
            )),
            Err(DigestError::Missing("cnonce"))
        );
        assert_eq!(
            Credentials::parse(&b(r#"Digest realm="r", nonce="n", uri="u", response="x""#)),
            Err(DigestError::Missing("username"))
        );
    }

    #[test]
    fn challenge_round_trip_and_client_answer() {
        let ch = Challenge {
            realm: "a.example".into(),
            nonce: "abc".into(),
            opaque: None,
            algorithm: Algorithm::Sha256,
            stale: true,
        };
        let v = ch.header_value();
        assert_eq!(
            v,
            r#"Digest realm="a.example", nonce="abc", algorithm=SHA-256, qop="auth", stale=true"#
        );
        assert_eq!(Challenge::parse(&b(&v)).unwrap(), ch);
        let ha1 = ha1(Algorithm::Sha256, "alice", "a.example", "secret");
        let auth = authorization_value(&ch, "alice", &ha1, "REGISTER", "sip:a.example", 7, "cn");
        let c = Credentials::parse(&b(&auth)).unwrap();
        assert_eq!(c.nc, Some(7));
        assert_eq!(c.algorithm, Algorithm::Sha256);
        assert!(c.verify(&ha1, b"REGISTER"));
        assert_eq!(
            Challenge::parse(&b(r#"Digest realm="r", nonce="n", qop="auth-int""#)),
            Err(DigestError::Qop)
        );
    }

    #[test]
    fn nonces_validate_expire_and_resist_forgery() {
        let key = NonceKey::new([7; 32]);
        let n = key.issue_with(1_000_000, [1; 8]);
        assert_eq!(n.len(), 2 * (16 + NONCE_MAC_LEN));
        assert_eq!(
            key.check(n.as_bytes(), 1_000_500, 1_000),
            NonceCheck::Valid {
                issued_at_ms: 1_000_000
            }
        );
        assert_eq!(key.check(n.as_bytes(), 1_001_001, 1_000), NonceCheck::Stale);
        // Another key, a flipped digit, garbage, and a nonce from far in the future.
        assert_eq!(
            NonceKey::new([8; 32]).check(n.as_bytes(), 1_000_500, 1_000),
            NonceCheck::Invalid
        );
        let mut flipped = n.clone().into_bytes();
        flipped[3] = if flipped[3] == b'0' { b'1' } else { b'0' };
        assert_eq!(key.check(&flipped, 1_000_500, 1_000), NonceCheck::Invalid);
        assert_eq!(key.check(b"zz", 1_000_500, 1_000), NonceCheck::Invalid);
        let future = key.issue_with(10_000_000, [1; 8]);
        assert_eq!(
            key.check(future.as_bytes(), 1_000_000, 1_000),
            NonceCheck::Invalid
        );
        assert_ne!(key.issue(5), key.issue(5), "random part differs");
    }

    #[test]
    fn digest_comparison() {
        assert!(digest_eq(b"abcdef", b"ABCDEF"));
        assert!(!digest_eq(b"abcdef", b"abcdee"));
        assert!(!digest_eq(b"abc", b"abcd"));
    }
}
