//! Dialogs (RFC 3261 §12) and the requests built inside them: in-dialog requests, the ACK
//! of a 2xx (§13.2.2.4), the ACK of a non-2xx (§17.1.1.3) and CANCEL (§9.1). Pure code.

use bytes::{BufMut, Bytes, BytesMut};
use rand::Rng;

use super::headers::NameAddr;
use super::message::{HeaderName, Message, Method};

/// One side of a dialog as this switch sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dialog {
    pub call_id: Bytes,
    pub local_tag: Bytes,
    pub remote_tag: Bytes,
    /// Our URI (From of our requests), without tag.
    pub local_uri: Bytes,
    /// The peer's URI (To of our requests), without tag.
    pub remote_uri: Bytes,
    /// The peer's Contact: where in-dialog requests go.
    pub remote_target: Bytes,
    /// Route set, in the order Route headers are written.
    pub route_set: Vec<Bytes>,
    /// Our last CSeq number in this dialog.
    pub local_cseq: u32,
    /// The peer's last CSeq number (requests with a lower one are out of order).
    pub remote_cseq: Option<u32>,
}

impl Dialog {
    /// Builds a request inside the dialog with the next CSeq. `via` is the complete Via value
    /// (with its branch); `contact` is our Contact value.
    pub fn request(
        &mut self,
        method: Method,
        via: &Bytes,
        contact: &Bytes,
        max_forwards: u32,
    ) -> Message {
        if method != Method::Ack && method != Method::Cancel {
            self.local_cseq += 1;
        }
        self.request_with_cseq(method, self.local_cseq, via, contact, max_forwards)
    }

    /// Builds a request inside the dialog with a given CSeq number (ACK reuses the INVITE's).
    pub fn request_with_cseq(
        &self,
        method: Method,
        cseq: u32,
        via: &Bytes,
        contact: &Bytes,
        max_forwards: u32,
    ) -> Message {
        let mut m = Message::request(method.clone(), self.remote_target.clone());
        m.push(HeaderName::Via, via.clone());
        m.push(
            HeaderName::MaxForwards,
            itoa::Buffer::new().format(max_forwards).to_owned(),
        );
        for r in &self.route_set {
            m.push(HeaderName::Route, r.clone());
        }
        m.push(HeaderName::From, with_tag(&self.local_uri, &self.local_tag));
        m.push(HeaderName::To, with_tag(&self.remote_uri, &self.remote_tag));
        m.push(HeaderName::CallId, self.call_id.clone());
        m.push(HeaderName::CSeq, cseq_value(cseq, &method));
        if method != Method::Ack && method != Method::Cancel && method != Method::Bye {
            m.push(HeaderName::Contact, contact.clone());
        }
        m
    }
}

/// `<uri>;tag=tag` (or the value as is when it is already a name-addr).
pub fn with_tag(uri: &Bytes, tag: &Bytes) -> Bytes {
    let mut v = BytesMut::with_capacity(uri.len() + tag.len() + 8);
    if uri.first() == Some(&b'<') || uri.contains(&b'<') {
        v.put_slice(uri);
    } else {
        v.put_u8(b'<');
        v.put_slice(uri);
        v.put_u8(b'>');
    }
    if !tag.is_empty() {
        v.put_slice(b";tag=");
        v.put_slice(tag);
    }
    v.freeze()
}

/// `1 INVITE`
pub fn cseq_value(seq: u32, method: &Method) -> Bytes {
    let mut v = BytesMut::with_capacity(24);
    v.put_slice(itoa::Buffer::new().format(seq).as_bytes());
    v.put_u8(b' ');
    v.put_slice(method.as_bytes());
    v.freeze()
}

/// The name-addr of a From/To value without its tag (display name and URI kept).
pub fn without_tag(na: &NameAddr) -> Bytes {
    let mut v = BytesMut::with_capacity(na.uri.len() + 40);
    if let Some(d) = &na.display {
        v.put_u8(b'"');
        v.put_slice(d);
        v.put_slice(b"\" ");
    }
    v.put_u8(b'<');
    v.put_slice(&na.uri);
    v.put_u8(b'>');
    for (name, value) in na.params.iter() {
        if name.eq_ignore_ascii_case(b"tag") {
            continue;
        }
        v.put_u8(b';');
        v.put_slice(&name);
        if let Some(value) = value {
            v.put_u8(b'=');
            v.put_slice(&value);
        }
    }
    v.freeze()
}

/// Random token characters for tags, branches and Call-IDs.
pub fn random_token(len: usize) -> Bytes {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let v: Vec<u8> = (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
        .collect();
    Bytes::from(v)
}

/// The branch prefix of this switch: RFC 3261's magic cookie plus a marker, so loops back
/// through the switch are recognised.
pub const BRANCH_PREFIX: &str = "z9hG4bK-sy";

/// A new branch parameter value.
pub fn new_branch() -> Bytes {
    let mut v = BytesMut::with_capacity(28);
    v.put_slice(BRANCH_PREFIX.as_bytes());
    v.put_slice(&random_token(16));
    v.freeze()
}

/// The ACK for a non-2xx final response (RFC 3261 §17.1.1.3): same Request-URI, Call-ID,
/// From, top Via and CSeq number as the INVITE, To from the response, the INVITE's Routes.
pub fn ack_for_failure(invite: &Message, response: &Message) -> Message {
    let uri = invite.request_uri().cloned().unwrap_or_default();
    let mut ack = Message::request(Method::Ack, uri);
    if let Some(v) = invite.value(HeaderName::Via) {
        let top = super::headers::split_list(v).next().unwrap_or_default();
        ack.push(HeaderName::Via, top);
    }
    ack.push(HeaderName::MaxForwards, "70");
    for h in invite.headers_named(HeaderName::Route) {
        ack.headers.push(h.clone());
    }
    if let Some(f) = invite.value(HeaderName::From) {
        ack.push(HeaderName::From, f.clone());
    }
    if let Some(t) = response.value(HeaderName::To) {
        ack.push(HeaderName::To, t.clone());
    }
    if let Some(c) = invite.call_id() {
        ack.push(HeaderName::CallId, c.clone());
    }
    let seq = invite.cseq().map(|c| c.seq).unwrap_or(1);
    ack.push(HeaderName::CSeq, cseq_value(seq, &Method::Ack));
    ack
}

/// CANCEL for a pending INVITE (RFC 3261 §9.1): same Request-URI, Call-ID, To, From, top Via
/// and CSeq number; Routes copied.
pub fn cancel_for(invite: &Message) -> Message {
    let uri = invite.request_uri().cloned().unwrap_or_default();
    let mut c = Message::request(Method::Cancel, uri);
    if let Some(v) = invite.value(HeaderName::Via) {
        let top = super::headers::split_list(v).next().unwrap_or_default();
        c.push(HeaderName::Via, top);
    }
    c.push(HeaderName::MaxForwards, "70");
    for h in invite.headers_named(HeaderName::Route) {
        c.headers.push(h.clone());
    }
    for name in [HeaderName::From, HeaderName::To, HeaderName::CallId] {
        if let Some(v) = invite.value(name) {
            c.push(name, v.clone());
        }
    }
    let seq = invite.cseq().map(|c| c.seq).unwrap_or(1);
    c.push(HeaderName::CSeq, cseq_value(seq, &Method::Cancel));
    c
}

/// An option-tag list (Supported, Require) without `tag`; `None` when nothing is left.
/// A B2BUA forwards the extensions both ends can use through it and drops the ones it
/// cannot relay (100rel: it does not relay PRACK).
pub fn without_option_tag(value: &Bytes, tag: &str) -> Option<Bytes> {
    let mut v = BytesMut::with_capacity(value.len());
    for t in super::headers::split_list(value) {
        if t.is_empty() || t.eq_ignore_ascii_case(tag.as_bytes()) {
            continue;
        }
        if !v.is_empty() {
            v.put_slice(b", ");
        }
        v.put_slice(&t);
    }
    (!v.is_empty()).then(|| v.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::parse::{parse, Framing, Limits};

    fn msg(s: &str) -> Message {
        parse(
            Bytes::copy_from_slice(s.as_bytes()),
            Framing::Datagram,
            &Limits::default(),
        )
        .unwrap()
    }

    #[test]
    fn in_dialog_request_carries_the_dialog() {
        let mut d = Dialog {
            call_id: Bytes::from_static(b"cid"),
            local_tag: Bytes::from_static(b"lt"),
            remote_tag: Bytes::from_static(b"rt"),
            local_uri: Bytes::from_static(b"<sip:a@x>"),
            remote_uri: Bytes::from_static(b"sip:b@y"),
            remote_target: Bytes::from_static(b"sip:b@10.0.0.2:5070"),
            route_set: vec![Bytes::from_static(b"<sip:p1;lr>")],
            local_cseq: 1,
            remote_cseq: None,
        };
        let via = Bytes::from_static(b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-syx");
        let bye = d.request(
            Method::Bye,
            &via,
            &Bytes::from_static(b"<sip:127.0.0.1>"),
            70,
        );
        let reparsed = msg(std::str::from_utf8(&bye.encode()).unwrap());
        assert_eq!(
            reparsed.request_uri().unwrap().as_ref(),
            b"sip:b@10.0.0.2:5070"
        );
        assert_eq!(reparsed.cseq().unwrap().seq, 2);
        assert_eq!(reparsed.from().unwrap().tag().unwrap().as_ref(), b"lt");
        assert_eq!(reparsed.to().unwrap().tag().unwrap().as_ref(), b"rt");
        assert_eq!(reparsed.routes().count(), 1);
        assert!(reparsed.header(HeaderName::Contact).is_none());
    }

    #[test]
    fn ack_and_cancel_follow_the_invite() {
        let inv = msg("INVITE sip:b@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n");
        let resp = msg("SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=9\r\nCall-ID: c\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n");
        let ack = ack_for_failure(&inv, &resp);
        assert_eq!(
            ack.top_via().unwrap().branch().unwrap().as_ref(),
            b"z9hG4bK1"
        );
        assert_eq!(ack.to().unwrap().tag().unwrap().as_ref(), b"9");
        assert_eq!(
            ack.cseq().unwrap(),
            crate::sip::headers::CSeq {
                seq: 7,
                method: Method::Ack
            }
        );
        let cancel = cancel_for(&inv);
        assert_eq!(cancel.cseq().unwrap().method, Method::Cancel);
        assert!(cancel.to().unwrap().tag().is_none());
    }

    #[test]
    fn option_tags_are_dropped_one_by_one() {
        let v = Bytes::from_static(b"100rel, timer,replaces");
        assert_eq!(
            without_option_tag(&v, "100rel").unwrap().as_ref(),
            b"timer, replaces"
        );
        assert_eq!(
            without_option_tag(&Bytes::from_static(b"100REL"), "100rel"),
            None
        );
    }

    #[test]
    fn tags_are_stripped_and_added() {
        let na = NameAddr::parse(&Bytes::from_static(b"\"Al\" <sip:a@x>;tag=5;foo=bar")).unwrap();
        assert_eq!(without_tag(&na).as_ref(), b"\"Al\" <sip:a@x>;foo=bar");
        assert!(new_branch().starts_with(BRANCH_PREFIX.as_bytes()));
    }
}
