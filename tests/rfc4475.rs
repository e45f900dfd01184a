//! The 49 SIP torture test messages of RFC 4475, each checked against the RFC's verdict.
//!
//! The bytes and the RFC's expectations are in `../shared/testdata/rfc4475/` (manifest.tsv).
//! This test checks the pure layer (parse + screen); `tests/node_rfc4475.rs` sends the same
//! messages to a running node over UDP and TCP.

mod common;

use bytes::Bytes;
use common::{manifest, testdata};
use switchyard::sip::message::{HeaderName, Method};
use switchyard::sip::parse::{Framing, Limits};
use switchyard::sip::validate::{screen, Screened};

fn load(name: &str) -> Bytes {
    Bytes::from(std::fs::read(testdata().join(format!("{name}.dat"))).expect("message file"))
}

/// What this switch does with each message after screening: `Pass`, `Drop`, or the status.
fn ours(name: &str) -> Option<u16> {
    Some(match name {
        "badinv01" | "clerr" | "ncl" | "scalar02" | "quotbal" | "ltgtruri" | "lwsruri"
        | "lwsstart" | "trws" | "escruri" | "regbadct" | "badaspec" | "baddn" | "mismatch01"
        | "mismatch02" | "insuf" | "multi01" | "mcl01" | "badbranch" => 400,
        "badvers" => 505,
        "unkscm" | "novelsc" => 416,
        "bext01" => 420,
        "invut" => 415,
        "sdp01" => 406,
        "zeromf" => 483,
        _ => return None,
    })
}

const DROPPED: &[&str] = &["scalarlg", "bigcode"];

fn screen_dg(name: &str) -> Screened {
    screen(load(name), Framing::Datagram, &Limits::default())
}

#[test]
fn all_49_messages_get_the_rfc_verdict() {
    let m = manifest();
    assert_eq!(m.len(), 49, "the manifest lists 49 messages");
    for (name, v) in &m {
        let outcome = screen_dg(name);
        match (ours(name), &outcome) {
            (Some(code), Screened::Answer { rejection, .. }) => {
                assert_eq!(
                    rejection.status, code,
                    "{name}: answered {} ({})",
                    rejection.status, rejection.reason
                );
                // A valid message may still get a code the RFC names for this role (zeromf: a
                // proxy answers 483).
                let named = v.action.contains(&code.to_string());
                assert!(
                    v.expected != "valid" || named,
                    "{name} is valid but we reject it"
                );
                let allowed = named
                    || v.codes == "error"
                    || v.codes.split('|').any(|c| c == code.to_string());
                assert!(
                    allowed,
                    "{name}: {code} is not among the RFC's codes {}",
                    v.codes
                );
            }
            (None, Screened::Pass(_)) => {
                assert!(!DROPPED.contains(&name.as_str()), "{name} must be dropped");
                assert!(
                    v.expected == "valid" || v.liberal_ok == "yes",
                    "{name} is {} and not repairable, yet it passed",
                    v.expected
                );
            }
            (None, Screened::Drop { .. }) => {
                assert!(
                    DROPPED.contains(&name.as_str()),
                    "{name} dropped unexpectedly: {outcome:?}"
                );
            }
            (want, got) => panic!("{name}: wanted {want:?}, got {got:?}"),
        }
    }
}

fn pass(name: &str) -> switchyard::sip::message::Message {
    match screen_dg(name) {
        Screened::Pass(m) => m.into_message(),
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn wsinv_fields() {
    let m = pass("wsinv");
    assert_eq!(m.method(), Some(&Method::Invite));
    assert_eq!(m.to().unwrap().tag().unwrap().as_ref(), b"1918181833n");
    let from = m.from().unwrap();
    assert_eq!(from.tag().unwrap().as_ref(), b"98asjd8");
    assert_eq!(from.display.unwrap().as_ref(), br#"J Rosenberg \\\""#);
    assert_eq!(m.max_forwards(), Some(68));
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (9, Method::Invite));
    let vias: Vec<_> = m.vias().collect();
    assert_eq!(vias.len(), 3);
    assert_eq!(vias[0].branch().unwrap().as_ref(), b"390skdjuw");
    assert_eq!(vias[1].transport.as_ref(), b"TCP");
    assert_eq!(vias[1].host.as_ref(), b"spindle.example.com");
    assert_eq!(vias[2].branch().unwrap().as_ref(), b"z9hG4bK30239");
    let contact = m.contacts().next().unwrap();
    assert_eq!(
        contact.params.get("newparam").unwrap().unwrap().as_ref(),
        b"newvalue"
    );
    assert_eq!(contact.q(), Some(330));
    assert_eq!(
        m.other("NewFangledHeader").unwrap().as_ref(),
        b"newfangled value continued newfangled value"
    );
    assert_eq!(
        m.other("UnknownHeaderWithUnusualValue").unwrap().as_ref(),
        b";;,,;;,;"
    );
    assert_eq!(m.value(HeaderName::Subject).unwrap().as_ref(), b"");
    assert_eq!(m.body.len(), 150);
}

#[test]
fn escaping_fields() {
    let m = pass("esc01");
    let ruri = switchyard::sip::uri::Uri::parse(m.request_uri().unwrap()).unwrap();
    assert_eq!(
        ruri.user_unescaped().unwrap().as_ref(),
        b"sips:user@example.com"
    );
    let to = m.to().unwrap().parsed_uri().unwrap();
    assert_eq!(to.user_unescaped().unwrap().as_ref(), b"user");
    let from = m.from().unwrap().parsed_uri().unwrap();
    assert_eq!(from.user_unescaped().unwrap().as_ref(), b"I have spaces");

    let m = pass("escnull");
    let contacts: Vec<_> = m.contacts().collect();
    assert_eq!(contacts.len(), 2);
    let to = m.to().unwrap().parsed_uri().unwrap();
    assert_eq!(to.user_unescaped().unwrap().as_ref(), b"null-\0-null");

    let m = pass("esc02");
    assert!(matches!(m.method(), Some(Method::Other(t)) if t.as_ref() == b"RE%47IST%45R"));
    assert_eq!(
        m.contacts().count(),
        2,
        "C%6Fntact is an unknown header, not a Contact"
    );

    let m = pass("semiuri");
    let ruri = switchyard::sip::uri::Uri::parse(m.request_uri().unwrap()).unwrap();
    assert_eq!(
        ruri.user_unescaped().unwrap().as_ref(),
        b"user;par=u@example.net"
    );
    assert_eq!(ruri.host.as_ref(), b"example.com");
    assert_eq!(m.values(HeaderName::Accept).count(), 6);
}

#[test]
fn other_valid_fields() {
    assert_eq!(
        pass("lwsdisp").from().unwrap().display.unwrap().as_ref(),
        b"caller"
    );
    let m = pass("longreq");
    assert!(m.to().unwrap().display.unwrap().len() > 100);
    let m = pass("dblreq");
    assert_eq!(m.method(), Some(&Method::Register));
    assert!(m.body.is_empty(), "the extra INVITE octets are ignored");
    let m = pass("transports");
    let t: Vec<_> = m
        .vias()
        .map(|v| String::from_utf8(v.transport.to_vec()).unwrap())
        .collect();
    assert_eq!(t, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
    let m = pass("mpart01");
    assert_eq!(m.body.len(), 553);
    let m = pass("intmeth");
    assert!(matches!(m.method(), Some(Method::Other(_))));
    assert_eq!(m.cseq().unwrap().seq, 139122385);
    let m = pass("cparam01");
    let c = m.contacts().next().unwrap();
    assert_eq!(c.params.get("unknownparam"), Some(None), "a contact-param");
    assert!(!c.uri.as_ref().ends_with(b"unknownparam"));
    let m = pass("cparam02");
    let c = m.contacts().next().unwrap();
    assert_eq!(c.params.get("unknownparam"), None);
    assert_eq!(
        c.parsed_uri().unwrap().param("unknownparam"),
        Some(None),
        "a url-parameter"
    );
    let m = pass("regescrt");
    let c = m.contacts().next().unwrap().parsed_uri().unwrap();
    assert_eq!(c.headers.as_ref(), b"Route=%3Csip:sip.example.com%3E");
    let m = pass("inv2543");
    assert!(m.top_via().unwrap().branch().is_none());
    assert!(m.max_forwards().is_none());
    assert!(
        !m.body.is_empty(),
        "no Content-Length on UDP: the body is the rest"
    );
    // badbranch: the magic cookie alone is no transaction identifier (400, the RFC's
    // preferred answer).
    match screen_dg("badbranch") {
        Screened::Answer {
            request, rejection, ..
        } => {
            assert_eq!(rejection.status, 400);
            assert_eq!(rejection.label, "via_branch");
            assert!(!request.top_via().unwrap().is_rfc3261_branch());
        }
        other => panic!("badbranch: {other:?}"),
    }
    for r in ["unreason", "noreason", "bcast"] {
        assert!(!pass(r).is_request());
    }
    assert_eq!(pass("noreason").status(), Some(100));
    let m = pass("regaut01");
    assert!(m
        .value(HeaderName::Authorization)
        .unwrap()
        .starts_with(b"NoOneKnowsThisScheme"));
}

#[test]
fn round_trip_of_every_parsable_message_is_stable() {
    for name in manifest().keys() {
        if let Screened::Pass(m) = screen_dg(name) {
            let once = m.encode();
            let again = match screen(once.clone(), Framing::Datagram, &Limits::default()) {
                Screened::Pass(m2) => m2,
                other => panic!("{name}: re-parse failed: {other:?}"),
            };
            assert_eq!(again.encode(), once, "{name}: serialize is not stable");
            assert_eq!(
                again.headers.len(),
                m.headers.len() - usize::from(m.header(HeaderName::ContentLength).is_some())
                    + usize::from(again.header(HeaderName::ContentLength).is_some()),
                "{name}"
            );
        }
    }
}
