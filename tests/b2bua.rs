//! The B2BUA call actor end to end: a real node on loopback, caller A and callee B as UDP
//! test user agents. Each test asserts what goes over the wire on both legs, the CDR, and
//! that the call is forgotten afterwards (active calls and the directory drain to 0).

mod common;

use common::{answer, call_id, contact_uri, invite, val, wait_until, Side, Ua, SDP};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use switchyard::config::Config;
use switchyard::server::Node;
use switchyard::sip::message::{HeaderName, Message};
use switchyard::store::{Cdr, HangupBy, Store};
use tempfile::TempDir;

/// B's answer SDP (distinct from A's so passing through is visible).
const SDP_B: &str = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";
/// A's hold offer.
const SDP_HOLD: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 101\r\na=sendonly\r\n";
const SDP_HELD: &str = "v=0\r\no=- 2 3 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0 101\r\na=recvonly\r\n";
const DTMF: &str = "Signal=5\r\nDuration=160\r\n";

/// Long enough for UDP transactions to finish lingering (Timer D is 32 s at least).
const DRAIN: Duration = Duration::from_secs(40);
const SHORT: Duration = Duration::from_millis(300);

struct Bed {
    dir: TempDir,
    node: Node,
    a: Ua,
    b: Ua,
    /// The switch's UDP address.
    sw: SocketAddr,
}

/// A node with short RFC 3261 timers routing every number to B.
async fn bed(tune: impl FnOnce(&mut Config)) -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let a = Ua::new().await;
    let b = Ua::new().await;
    let mut c = common::config(dir.path(), &[("", format!("sip:{}", b.addr))]);
    c.timers.t1_ms = 50;
    c.timers.t2_ms = 200;
    c.timers.t4_ms = 250;
    tune(&mut c);
    let node = common::start_with(c).await;
    let sw = common::udp_addr(&node);
    Bed {
        dir,
        node,
        a,
        b,
        sw,
    }
}

fn to_tag(m: &Message) -> Option<String> {
    m.to()
        .and_then(|t| t.tag())
        .map(|t| String::from_utf8_lossy(&t).into_owned())
}

fn from_tag(m: &Message) -> Option<String> {
    m.from()
        .and_then(|t| t.tag())
        .map(|t| String::from_utf8_lossy(&t).into_owned())
}

fn branch(m: &Message) -> String {
    String::from_utf8_lossy(&m.top_via().unwrap().branch().unwrap()).into_owned()
}

fn cseq(m: &Message) -> (u32, String) {
    let c = m.cseq().expect("CSeq");
    (c.seq, c.method.to_string())
}

fn body(m: &Message) -> &str {
    std::str::from_utf8(&m.body).unwrap()
}

fn is_status(status: u16, method: &'static str) -> impl Fn(&Message) -> bool {
    move |m| m.status() == Some(status) && m.cseq().is_some_and(|c| c.method.to_string() == method)
}

fn is_request(method: &'static str) -> impl Fn(&Message) -> bool {
    move |m| m.method().is_some_and(|x| x.to_string() == method)
}

/// Every message that arrives within `window` (retransmissions included).
async fn collect(ua: &Ua, window: Duration) -> Vec<Message> {
    let deadline = tokio::time::Instant::now() + window;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return out;
        }
        match ua.recv(left).await {
            Some((m, _)) => out.push(m),
            None => return out,
        }
    }
}

/// The ACK a UAC sends for a non-2xx final response (same branch as the INVITE).
fn ack_failure(inv: &str, resp: &Message) -> String {
    let first = inv.lines().next().unwrap().replacen("INVITE", "ACK", 1);
    let mut s = format!("{first}\r\n");
    for line in inv.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        let name = line.split(':').next().unwrap();
        match name {
            "Via" | "From" | "Call-ID" | "Max-Forwards" => s.push_str(&format!("{line}\r\n")),
            "CSeq" => s.push_str(&format!("{}\r\n", line.replace("INVITE", "ACK"))),
            _ => {}
        }
    }
    s.push_str(&format!(
        "To: {}\r\nContent-Length: 0\r\n\r\n",
        val(resp, HeaderName::To)
    ));
    s
}

/// The CANCEL a UAC sends for its INVITE.
fn cancel_of(inv: &str) -> String {
    let first = inv.lines().next().unwrap().replacen("INVITE", "CANCEL", 1);
    let mut s = format!("{first}\r\n");
    for line in inv.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        let name = line.split(':').next().unwrap();
        match name {
            "Via" | "From" | "To" | "Call-ID" | "Max-Forwards" => {
                s.push_str(&format!("{line}\r\n"))
            }
            "CSeq" => s.push_str(&format!("{}\r\n", line.replace("INVITE", "CANCEL"))),
            _ => {}
        }
    }
    s.push_str("Content-Length: 0\r\n\r\n");
    s
}

/// The CDR of `a_call_id`, once the writer has it (and the only one).
async fn cdr(t: &Bed, a_call_id: &str) -> Cdr {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        switchyard::actors::store_writer::flush(&t.node.tree.store().unwrap())
            .await
            .unwrap();
        let store = Store::open(&t.dir.path().join("switchyard.db")).unwrap();
        if let Some(c) = store.get_cdr_by_call_id(a_call_id).unwrap() {
            // Each test's node carries one call: one CDR, never a second from a late path.
            assert_eq!(store.count_cdrs().unwrap(), 1, "CDRs written");
            return c;
        }
        assert!(Instant::now() < deadline, "no CDR for {a_call_id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The call is forgotten: no active call, at once; an empty directory once transactions
/// have finished lingering.
async fn assert_drained(t: &Bed) {
    assert!(
        wait_until(Duration::from_secs(3), || t.node.active_calls() == 0).await,
        "active calls: {}",
        t.node.active_calls()
    );
    assert!(
        wait_until(DRAIN, || t.node.ctx.directory.is_empty()).await,
        "directory still holds {} Call-IDs",
        t.node.ctx.directory.len()
    );
}

/// A calls; B gets the INVITE. Returns A's INVITE text and B's INVITE.
async fn dial(t: &Bed, cid: &str) -> (String, Message, SocketAddr) {
    let inv = invite(cid, "1000", t.a.addr, t.sw);
    t.a.send(t.sw, &inv).await;
    let (inv_b, sw_b) = t.b.expect_request("INVITE").await;
    (inv, inv_b, sw_b)
}

/// A established call: A dialled, B answered 200 with SDP_B, A ACKed, B got the ACK.
struct Up {
    a: Side,
    b: Side,
    inv_b: Message,
    sw_b: SocketAddr,
}

async fn establish(t: &Bed, cid: &str) -> Up {
    let (_, inv_b, sw_b) = dial(t, cid).await;
    t.b.send(sw_b, &answer(&inv_b, 200, "OK", "btag", t.b.addr, SDP_B))
        .await;
    let (ok, _) = t.a.expect(" 200 to INVITE", is_status(200, "INVITE")).await;
    let mut a = Side::caller(t.a.addr, cid, &ok);
    t.a.send(t.sw, &a.request("ACK", 1, "", "")).await;
    let (ack, _) = t.b.expect_request("ACK").await;
    assert_eq!(call_id(&ack), call_id(&inv_b));
    Up {
        a,
        b: Side::callee(t.b.addr, &inv_b, "btag"),
        inv_b,
        sw_b,
    }
}

/// A hangs up an established call.
async fn bye_from_a(t: &Bed, up: &mut Up) {
    t.a.send(t.sw, &up.a.request("BYE", 0, "", "")).await;
    let (bye, from) = t.b.expect_request("BYE").await;
    assert_eq!(call_id(&bye), call_id(&up.inv_b));
    t.b.send(from, &answer(&bye, 200, "OK", "", t.b.addr, ""))
        .await;
    t.a.expect("200 to BYE", is_status(200, "BYE")).await;
}

// ---- 1 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_call_caller_hangs_up() {
    let t = bed(|_| {}).await;
    let cid = "basic-1";
    let inv = invite(cid, "1000", t.a.addr, t.sw);
    let sent = Instant::now();
    t.a.send(t.sw, &inv).await;
    let (trying, _) = t.a.recv(Duration::from_secs(2)).await.expect("100 Trying");
    assert_eq!(trying.status(), Some(100), "first answer is 100 Trying");
    assert!(sent.elapsed() < Duration::from_secs(1), "100 at once");

    let (inv_b, sw_b) = t.b.expect_request("INVITE").await;
    let b_cid = call_id(&inv_b);
    assert_ne!(b_cid, cid, "B leg has its own Call-ID");
    let b_from_tag = from_tag(&inv_b).expect("B-leg From tag");
    assert_ne!(b_from_tag, format!("a-{cid}"), "B leg has its own From tag");
    assert_eq!(to_tag(&inv_b), None);
    assert_eq!(cseq(&inv_b).1, "INVITE");
    assert_eq!(body(&inv_b), SDP, "SDP passed through unchanged");
    assert_eq!(val(&inv_b, HeaderName::ContentType), "application/sdp");
    assert!(
        contact_uri(&inv_b).contains(&t.sw.to_string()),
        "B-leg Contact is the switch: {}",
        contact_uri(&inv_b)
    );
    assert!(
        val(&inv_b, HeaderName::Via).contains(&t.sw.to_string()),
        "B-leg Via is the switch"
    );
    assert_ne!(branch(&inv_b), format!("z9hG4bK-{cid}-1"));
    assert!(inv_b.request_uri().unwrap().starts_with(b"sip:1000@"));

    t.b.send(sw_b, &answer(&inv_b, 180, "Ringing", "btag", t.b.addr, ""))
        .await;
    let (ringing, _) = t.a.expect_status(180).await;
    assert_eq!(call_id(&ringing), cid);
    let a_tag = to_tag(&ringing).expect("180 has a To tag");
    assert_ne!(a_tag, "btag", "A leg has its own To tag");

    t.b.send(sw_b, &answer(&inv_b, 200, "OK", "btag", t.b.addr, SDP_B))
        .await;
    let (ok, _) = t.a.expect("200 to INVITE", is_status(200, "INVITE")).await;
    assert_eq!(call_id(&ok), cid, "200 carries A's Call-ID");
    assert_eq!(
        to_tag(&ok).as_deref(),
        Some(a_tag.as_str()),
        "same tag as 180"
    );
    assert_eq!(from_tag(&ok).unwrap(), format!("a-{cid}"));
    assert!(
        contact_uri(&ok).contains(&t.sw.to_string()),
        "Contact of the switch: {}",
        contact_uri(&ok)
    );
    assert_eq!(body(&ok), SDP_B, "B's SDP relayed");
    assert_eq!(val(&ok, HeaderName::ContentType), "application/sdp");
    assert_eq!(t.node.active_calls(), 1);

    let mut a = Side::caller(t.a.addr, cid, &ok);
    t.a.send(t.sw, &a.request("ACK", 1, "", "")).await;
    let (ack, _) = t.b.expect_request("ACK").await;
    assert_eq!(call_id(&ack), b_cid);
    assert_eq!(cseq(&ack), (cseq(&inv_b).0, "ACK".into()));
    assert_eq!(to_tag(&ack).as_deref(), Some("btag"));
    assert_eq!(from_tag(&ack).as_deref(), Some(b_from_tag.as_str()));
    assert_eq!(
        ack.request_uri().unwrap().as_ref(),
        format!("sip:bob@{}", t.b.addr).as_bytes()
    );

    t.a.send(t.sw, &a.request("BYE", 0, "", "")).await;
    let (bye, from) = t.b.expect_request("BYE").await;
    assert_eq!(call_id(&bye), b_cid);
    assert_eq!(to_tag(&bye).as_deref(), Some("btag"));
    assert_eq!(from_tag(&bye).as_deref(), Some(b_from_tag.as_str()));
    assert!(cseq(&bye).0 > cseq(&inv_b).0, "BYE CSeq above the INVITE's");
    t.b.send(from, &answer(&bye, 200, "OK", "", t.b.addr, ""))
        .await;
    let (bye_ok, _) = t.a.expect("200 to BYE", is_status(200, "BYE")).await;
    assert_eq!(call_id(&bye_ok), cid);

    let c = cdr(&t, cid).await;
    assert_eq!(c.caller, format!("sip:alice@{}", t.a.addr));
    assert_eq!(c.callee, "1000");
    assert_eq!(c.final_status, 200);
    assert!(c.answer_at.is_some());
    assert!(c.ringing_at.is_some());
    assert_eq!(c.hangup_by, HangupBy::Caller);
    assert_eq!(c.b_call_id.as_deref(), Some(b_cid.as_str()));
    assert_drained(&t).await;
    t.node.shutdown().await;
}

// ---- 2 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_hangs_up() {
    let t = bed(|_| {}).await;
    let cid = "calleebye-1";
    let mut up = establish(&t, cid).await;
    t.b.send(up.sw_b, &up.b.request("BYE", 0, "", "")).await;
    let (bye, from) = t.a.expect_request("BYE").await;
    assert_eq!(call_id(&bye), cid);
    assert_eq!(from_tag(&bye), to_tag_of_a(&up));
    assert_eq!(to_tag(&bye).unwrap(), format!("a-{cid}"));
    assert_eq!(
        bye.request_uri().unwrap().as_ref(),
        format!("sip:alice@{}", t.a.addr).as_bytes(),
        "BYE goes to A's Contact"
    );
    t.a.send(from, &answer(&bye, 200, "OK", "", t.a.addr, ""))
        .await;
    let (ok, _) = t.b.expect("200 to BYE", is_status(200, "BYE")).await;
    assert_eq!(call_id(&ok), call_id(&up.inv_b));
    let c = cdr(&t, cid).await;
    assert_eq!(c.final_status, 200);
    assert_eq!(c.hangup_by, HangupBy::Callee);
    assert_drained(&t).await;
    t.node.shutdown().await;
}

fn to_tag_of_a(up: &Up) -> Option<String> {
    up.a.to
        .split(";tag=")
        .nth(1)
        .map(|s| s.split(';').next().unwrap().to_string())
}

// ---- 3 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_media_183_with_sdp_then_200_without() {
    let t = bed(|_| {}).await;
    let cid = "early-1";
    let (_, inv_b, sw_b) = dial(&t, cid).await;
    t.b.send(
        sw_b,
        &answer(&inv_b, 183, "Session Progress", "btag", t.b.addr, SDP_B),
    )
    .await;
    let (p, _) = t.a.expect_status(183).await;
    assert_eq!(body(&p), SDP_B, "early media SDP relayed");
    assert_eq!(val(&p, HeaderName::ContentType), "application/sdp");
    // An UPDATE in the early dialog goes to B's Contact from its 183 (RFC 3261 §12.1.2).
    let mut early = Side::caller(t.a.addr, cid, &p);
    t.a.send(
        t.sw,
        &early.request("UPDATE", 0, "Content-Type: application/sdp\r\n", SDP),
    )
    .await;
    let (upd, from) = t.b.expect_request("UPDATE").await;
    assert_eq!(
        upd.request_uri().unwrap().as_ref(),
        format!("sip:bob@{}", t.b.addr).as_bytes()
    );
    assert_eq!(to_tag(&upd).as_deref(), Some("btag"));
    assert_eq!(body(&upd), SDP);
    t.b.send(from, &answer(&upd, 200, "OK", "", t.b.addr, SDP_B))
        .await;
    let (upd_ok, _) = t.a.expect("200 to UPDATE", is_status(200, "UPDATE")).await;
    assert_eq!(body(&upd_ok), SDP_B);
    t.b.send(sw_b, &answer(&inv_b, 200, "OK", "btag", t.b.addr, ""))
        .await;
    let (ok, _) = t.a.expect("200 to INVITE", is_status(200, "INVITE")).await;
    assert!(ok.body.is_empty(), "200 without SDP relayed as is");
    assert_eq!(to_tag(&ok), to_tag(&p));
    let mut a = Side::caller(t.a.addr, cid, &ok);
    a.cseq = early.cseq;
    t.a.send(t.sw, &a.request("ACK", 1, "", "")).await;
    t.b.expect_request("ACK").await;
    let mut up = Up {
        a,
        b: Side::callee(t.b.addr, &inv_b, "btag"),
        inv_b,
        sw_b,
    };
    bye_from_a(&t, &mut up).await;
    let c = cdr(&t, cid).await;
    assert_eq!(c.final_status, 200);
    assert!(c.ringing_at.is_some());
    assert_drained(&t).await;
    t.node.shutdown().await;
}

// ---- 4 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_busy_486_is_relayed_and_acked() {
    let t = bed(|_| {}).await;
    let cid = "busy-1";
    let (inv, inv_b, sw_b) = dial(&t, cid).await;
    t.b.send(
        sw_b,
        &answer(&inv_b, 486, "Busy Here", "btag", t.b.addr, ""),
    )
    .await;
    let (ack, _) = t.b.expect_request("ACK").await;
    assert_eq!(branch(&ack), branch(&inv_b), "non-2xx ACK is hop by hop");
    assert_eq!(cseq(&ack), (cseq(&inv_b).0, "ACK".into()));
    assert_eq!(to_tag(&ack).as_deref(), Some("btag"));
    let (busy, _) = t.a.expect_status(486).await;
    assert_eq!(call_id(&busy), cid);
    assert!(to_tag(&busy).is_some());
    t.a.send(t.sw, &ack_failure(&inv, &busy)).await;
    // No second attempt towards B.
    let later = collect(&t.b, Duration::from_millis(500)).await;
    assert!(
        !later.iter().any(|m| is_request("INVITE")(m)),
        "no other INVITE"
    );
    let c = cdr(&t, cid).await;
    assert_eq!(c.final_status, 486);
    assert!(c.answer_at.is_none());
    assert_eq!(c.hangup_by, HangupBy::Callee);
    assert_drained(&t).await;
    t.node.shutdown().await;
}

// ---- 5 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_cancels_while_ringing() {
    let t = bed(|_| {}).await;
    let cid = "cancel-1";
    let (inv, inv_b, sw_b) = dial(&t, cid).await;
    t.b.send(sw_b, &answer(&inv_b, 180, "Ringing", "btag", t.b.addr, ""))
        .await;
    t.a.expect_status(180).await;
    let reason = "SIP;cause=200;text=\"Call completed elsewhere\"";
    t.a.send(
        t.sw,
        &cancel_of(&inv).replacen(
            "Content-Length:",
            &format!("Reason: {reason}\r\nContent-Length:"),
            1,
        ),
    )
    .await;
    let (c_ok, _) = t.a.expect("200 to CANCEL", is_status(200, "CANCEL")).await;
    assert_eq!(call_id(&c_ok), cid);
    let (term, _) = t.a.expect("487 to INVITE", is_status(487, "INVITE")).await;
    t.a.send(t.sw, &ack_failure(&inv, &term)).await;

    let (cancel, from) = t.b.expect_request("CANCEL").await;
    assert_eq!(branch(&cancel), branch(&inv_b), "CANCEL matches the INVITE");
    assert_eq!(val(&cancel, HeaderName::Reason), reason, "Reason relayed");
    assert_eq!(call_id(&cancel), call_id(&inv_b));
    assert_eq!(cseq(&cancel), (cseq(&inv_b).0, "CANCEL".into()));
    t.b.send(from, &answer(&cancel, 200, "OK", "btag", t.b.addr, ""))
        .await;
    t.b.send(
        from,
        &answer(&inv_b, 487, "Request Terminated", "btag", t.b.addr, ""),
    )
    .await;
    let (ack, _) = t.b.expect_request("ACK").await;
    assert_eq!(branch(&ack), branch(&inv_b));

    let c = cdr(&t, cid).await;
    assert_eq!(c.final_status, 487);
    assert_eq!(c.hangup_by, HangupBy::Caller);
    assert!(c.answer_at.is_none());
    assert_drained(&t).await;
    t.node.shutdown().await;
}

// ---- 6 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_before_provisional_waits_for_one() {
    let t = bed(|_| {}).await;
    let cid = "cancel-early-1";
    let (inv, inv_b, sw_b) = dial(&t, cid).await;
    t.a.send(t.sw, &cancel_of(&inv)).await;
    t.a.expect("200 to CANCEL", is_status(200, "CANCEL")).await;
    let (term, _) = t.a.expect("487 to INVITE", is_status(487, "INVITE")).await;
    t.a.send(t.sw, &ack_failure(&inv, &term)).await;
    // RFC 3261 §9.1: no CANCEL towards B until B has sent a provisional.
    let seen = collect(&t.b, Duration::from_millis(400)).await;
    assert!(
        !seen.iter().any(|m| is_request("CANCEL")(m)),
        "CANCEL sent before any provisional"
    );
    t.b.send(sw_b, &answer(&inv_b, 180, "Ringing", "btag", t.b.addr, ""))
        .await;
    let (cancel, from) = t.b.expect_request("CANCEL").await;
    assert_eq!(branch(&cancel), branch(&inv_b));
    t.b.send(from, &answer(&cancel, 200, "OK", "btag", t.b.addr, ""))
        .await;
    t.b.send(
        from,
        &answer(&inv_b, 487, "Request Terminated", "btag", t.b.addr, ""),
    )
    .await;
    t.b.expect_request("ACK").await;
    // A never hears B's 180 after cancelling.
    let a_seen = collect(&t.a, Duration::from_millis(200)).await;
    assert!(!a_seen.iter().any(|m| m.status() == Some(180)));
    let c = cdr(&t, cid).await;
    assert_eq!(c.final_status, 487);
    assert_eq!(c.hangup_by, HangupBy::Caller);
    assert_drained(&t).await;
    t.node.shutdown().await;
}

// ---- 7 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_update_and_info_are_relayed() {
    let t = bed(|_| {}).await;
    let cid = "reinvite-1";
    let mut up = establish(&t, cid).await;
    let b_cid = call_id(&up.inv_b);
    let b_local = from_tag(&up.inv_b).unwrap();

    // Hold: re-INVITE from A.
    let ct = "Content-Type: application/sdp\r\n";
    // A's in-dialog requests carry Contact <sip:ua@..>, not the INVITE's <sip:alice@..>:
    // a target refresh (RFC 3261 §12.2.2) that requests towards A must follow.
    t.a.send(t.sw, &up.a.request("INVITE", 0, ct, SDP_HOLD))
        .await;
    let (re, from) = t.b.expect_request("INVITE").await;
    assert_eq!(call_id(&re), b_cid);
    assert_eq!(cseq(&re), (2, "INVITE".into()));
    assert_eq!(to_tag(&re).as_deref(), Some("btag"));
    assert_eq!(from_tag(&re).as_deref(), Some(b_local.as_str()));
    assert_eq!(body(&re), SDP_HOLD);
    assert_eq!(val(&re, HeaderName::ContentType), "application/sdp");
    t.b.send(from, &answer(&re, 200, "OK", "", t.b.addr, SDP_HELD))
        .await;
    let (ok, _) =
        t.a.expect("200 to re-INVITE", is_status(200, "INVITE"))
            .await;
    assert_eq!(cseq(&ok), (2, "INVITE".into()));
    assert_eq!(body(&ok), SDP_HELD);
    assert_eq!(call_id(&ok), cid);
    // The 2xx of the re-INVITE is ACKed on each leg.
    t.a.send(t.sw, &up.a.request("ACK", 2, "", "")).await;
    let (ack, _) = t.b.expect_request("ACK").await;
    assert_eq!(cseq(&ack), (2, "ACK".into()));

    // UPDATE A → B.
    t.a.send(t.sw, &up.a.request("UPDATE", 0, ct, SDP)).await;
    let (upd, from) = t.b.expect_request("UPDATE").await;
    assert_eq!(call_id(&upd), b_cid);
    assert_eq!(body(&upd), SDP);
    t.b.send(from, &answer(&upd, 200, "OK", "", t.b.addr, SDP_B))
        .await;
    let (ok, _) = t.a.expect("200 to UPDATE", is_status(200, "UPDATE")).await;
    assert_eq!(body(&ok), SDP_B);

    // UPDATE B → A.
    t.b.send(up.sw_b, &up.b.request("UPDATE", 0, ct, SDP_B))
        .await;
    let (upd, from) = t.a.expect_request("UPDATE").await;
    assert_eq!(call_id(&upd), cid);
    assert_eq!(
        String::from_utf8_lossy(upd.request_uri().unwrap()),
        format!("sip:ua@{}", t.a.addr),
        "A's refreshed target"
    );
    assert_eq!(to_tag(&upd).unwrap(), format!("a-{cid}"));
    assert_eq!(body(&upd), SDP_B);
    t.a.send(from, &answer(&upd, 200, "OK", "", t.a.addr, SDP))
        .await;
    let (ok, _) = t.b.expect("200 to UPDATE", is_status(200, "UPDATE")).await;
    assert_eq!(call_id(&ok), b_cid);
    assert_eq!(body(&ok), SDP);

    // INFO (DTMF) both ways.
    let dtmf = "Content-Type: application/dtmf-relay\r\n";
    t.a.send(t.sw, &up.a.request("INFO", 0, dtmf, DTMF)).await;
    let (info, from) = t.b.expect_request("INFO").await;
    assert_eq!(call_id(&info), b_cid);
    assert_eq!(body(&info), DTMF);
    assert_eq!(
        val(&info, HeaderName::ContentType),
        "application/dtmf-relay"
    );
    t.b.send(from, &answer(&info, 200, "OK", "", t.b.addr, ""))
        .await;
    t.a.expect("200 to INFO", is_status(200, "INFO")).await;

    t.b.send(up.sw_b, &up.b.request("INFO", 0, dtmf, DTMF))
        .await;
    let (info, from) = t.a.expect_request("INFO").await;
    assert_eq!(call_id(&info), cid);
    assert_eq!(body(&info), DTMF);
    assert_eq!(
        val(&info, HeaderName::ContentType),
        "application/dtmf-relay"
    );
    t.a.send(from, &answer(&info, 200, "OK", "", t.a.addr, ""))
        .await;
    t.b.expect("200 to INFO", is_status(200, "INFO")).await;

    // OPTIONS inside the dialog.
    t.a.send(t.sw, &up.a.request("OPTIONS", 0, "", "")).await;
    let (opt, from) = t.b.expect_request("OPTIONS").await;
    assert_eq!(call_id(&opt), b_cid);
    t.b.send(from, &answer(&opt, 200, "OK", "", t.b.addr, ""))
        .await;
    t.a.expect("200 to OPTIONS", is_status(200, "OPTIONS"))
        .await;

    bye_from_a(&t, &mut up).await;
    let c = cdr(&t, cid).await;
    assert_eq!(c.final_status, 200);
    assert_eq!(c.hangup_by, HangupBy::Caller);
    assert_drained(&t).await;
    t.node.shutdown().await;
}

// ---- 8 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_dialogs_get_481() {
    let t = bed(|_| {}).await;
    let cid = "u481-1";
    let mut up = establish(&t, cid).await;
    // Right Call-ID, wrong To tag.
    let mut wrong = Side {
        to: "<sip:1000@127.0.0.1>;tag=not-ours".into(),
        ..Side::caller(t.a.addr, cid, &{
            let s = format!(
                "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP x;branch=z9hG4bKx\r\nFrom: {}\r\nTo: x\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <{}>\r\nContent-Length: 0\r\n\r\n",
                up.a.from, up.a.ruri
            );
            parse(&s)
        })
    };
    wrong.cseq = 10;
    t.a.send(t.sw, &wrong.request("INFO", 0, "", "")).await;
    let (r, _) =
        t.a.expect("481 to INFO", |m| {
            m.cseq().is_some_and(|c| c.method.to_string() == "INFO") && m.status().is_some()
        })
        .await;
    assert_eq!(r.status(), Some(481));
    // No INFO reached B.
    let seen = collect(&t.b, SHORT).await;
    assert!(!seen.iter().any(|m| is_request("INFO")(m)));

    // A BYE for a Call-ID nobody knows: the router answers.
    let mut ghost = Side {
        call_id: "no-such-call".into(),
        to: "<sip:1000@127.0.0.1>;tag=ghost".into(),
        ruri: format!("sip:1000@{}", t.sw),
        from: "<sip:alice@127.0.0.1>;tag=g1".into(),
        me: t.a.addr,
        cseq: 5,
    };
    t.a.send(t.sw, &ghost.request("BYE", 0, "", "")).await;
    let (r, _) =
        t.a.expect("481 to BYE", |m| {
            m.cseq().is_some_and(|c| c.method.to_string() == "BYE") && m.status().is_some()
        })
        .await;
    assert_eq!(r.status(), Some(481));
    assert_eq!(call_id(&r), "no-such-call");

    // The call itself is untouched.
    assert_eq!(t.node.active_calls(), 1);
    bye_from_a(&t, &mut up).await;
    assert_drained(&t).await;
    t.node.shutdown().await;
}

fn parse(s: &str) -> Message {
    use switchyard::sip::parse::{parse, Framing, Limits};
    parse(
        bytes::Bytes::copy_from_slice(s.as_bytes()),
        Framing::Datagram,
        &Limits::default(),
    )
    .unwrap()
}

// ---- 9 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_timeout_gives_480_and_cancels_b() {
    let t = bed(|c| c.calls.no_answer_timeout_secs = 1).await;
    let cid = "noanswer-1";
    let (inv, inv_b, sw_b) = dial(&t, cid).await;
    let started = Instant::now();
    t.b.send(sw_b, &answer(&inv_b, 180, "Ringing", "btag", t.b.addr, ""))
        .await;
    t.a.expect_status(180).await;
    let (fin, _) =
        t.a.expect("a final to INVITE", |m| {
            m.status().is_some_and(|s| s >= 300)
        })
        .await;
    assert_eq!(fin.status(), Some(480));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(3),
        "no-answer after {waited:?}"
    );
    t.a.send(t.sw, &ack_failure(&inv, &fin)).await;
    let (cancel, from) = t.b.expect_request("CANCEL").await;
    assert_eq!(branch(&cancel), branch(&inv_b));
    t.b.send(from, &answer(&cancel, 200, "OK", "btag", t.b.addr, ""))
        .await;
    t.b.send(
        from,
        &answer(&inv_b, 487, "Request Terminated", "btag", t.b.addr, ""),
    )
    .await;
    t.b.expect_request("ACK").await;
    let c = cdr(&t, cid).await;
    assert_eq!(c.final_status, 480);
    assert_eq!(c.hangup_by, HangupBy::System);
    assert_eq!(c.disconnect_reason, "no answer");
    assert_drained(&t).await;
    t.node.shutdown().await;
}

// ---- 10 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_duration_sends_bye_both_ways() {
    let t = bed(|c| c.calls.max_duration_secs = 1).await;
    let cid = "maxdur-1";
    let started = Instant::now();
    let up = establish(&t, cid).await;
    let (bye_a, from_a) = t.a.expect_request("BYE").await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(3),
        "BYE after {waited:?}"
    );
    assert_eq!(call_id(&bye_a), cid);
    let (bye_b, from_b) = t.b.expect_request("BYE").await;
    assert_eq!(call_id(&bye_b), call_id(&up.inv_b));
    assert_eq!(to_tag(&bye_b).as_deref(), Some("btag"));
    t.a.send(from_a, &answer(&bye_a, 200, "OK", "", t.a.addr, ""))
        .await;
    t.b.send(from_b, &answer(&bye_b, 200, "OK", "", t.b.addr, ""))
        .await;
    let c = cdr(&t, cid).await;
    assert_eq!(c.final_status, 200);
    assert_eq!(c.hangup_by, HangupBy::System);
    assert!(c.answer_at.is_some());
    assert!(c.billable_ms >= 800, "billable {} ms", c.billable_ms);
    assert_drained(&t).await;
    t.node.shutdown().await;
}

// ---- 11 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_callee_times_out_with_408() {
    let t = bed(|_| {}).await;
    let cid = "silent-1";
    let (inv, inv_b, _) = dial(&t, cid).await;
    let started = Instant::now();
    // B says nothing; the switch retransmits its INVITE (Timer A) until Timer B.
    let (fin, _) = {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            assert!(Instant::now() < deadline, "no final for A");
            if let Some((m, f)) = t.a.recv(Duration::from_secs(1)).await {
                if m.status().is_some_and(|s| s >= 200) {
                    break (m, f);
                }
            }
        }
    };
    assert_eq!(fin.status(), Some(408));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(6),
        "Timer B after {waited:?}"
    );
    t.a.send(t.sw, &ack_failure(&inv, &fin)).await;
    let seen = collect(&t.b, SHORT).await;
    let retrans = seen
        .iter()
        .filter(|m| is_request("INVITE")(m) && branch(m) == branch(&inv_b))
        .count();
    assert!(retrans >= 2, "Timer A retransmissions seen by B: {retrans}");
    let c = cdr(&t, cid).await;
    assert_eq!(c.final_status, 408);
    assert_drained(&t).await;
    t.node.shutdown().await;
}

// ---- 12 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retransmissions_towards_and_from_caller() {
    let t = bed(|_| {}).await;
    let cid = "retrans-1";
    let (inv, inv_b, sw_b) = dial(&t, cid).await;
    t.b.send(sw_b, &answer(&inv_b, 180, "Ringing", "btag", t.b.addr, ""))
        .await;
    let (r1, _) = t.a.expect_status(180).await;
    // A retransmits its INVITE: it gets the last provisional again.
    t.a.send(t.sw, &inv).await;
    let (r2, _) = t.a.expect_status(180).await;
    assert_eq!(to_tag(&r1), to_tag(&r2));
    // B answers; A withholds its ACK and sees the 200 again and again.
    t.b.send(sw_b, &answer(&inv_b, 200, "OK", "btag", t.b.addr, SDP_B))
        .await;
    let seen = collect(&t.a, Duration::from_millis(700)).await;
    let oks: Vec<&Message> = seen
        .iter()
        .filter(|m| is_status(200, "INVITE")(m))
        .collect();
    assert!(oks.len() >= 2, "2xx retransmitted: {} copies", oks.len());
    assert!(oks
        .iter()
        .all(|m| body(m) == SDP_B && to_tag(m) == to_tag(&r1)));
    // A's ACK is not relayed before A sends it.
    let b_seen = collect(&t.b, Duration::from_millis(50)).await;
    assert!(
        !b_seen.iter().any(|m| is_request("ACK")(m)),
        "ACK before A's"
    );
    let mut a = Side::caller(t.a.addr, cid, oks[0]);
    t.a.send(t.sw, &a.request("ACK", 1, "", "")).await;
    t.b.expect_request("ACK").await;
    // The retransmissions stop.
    let _ = collect(&t.a, Duration::from_millis(100)).await;
    let after = collect(&t.a, Duration::from_millis(600)).await;
    assert!(
        !after.iter().any(|m| is_status(200, "INVITE")(m)),
        "2xx still retransmitted after ACK"
    );
    let mut up = Up {
        a,
        b: Side::callee(t.b.addr, &inv_b, "btag"),
        inv_b,
        sw_b,
    };
    bye_from_a(&t, &mut up).await;
    assert_eq!(cdr(&t, cid).await.final_status, 200);
    assert_drained(&t).await;
    t.node.shutdown().await;
}

// ---- 13 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_retransmission_does_not_start_a_second_call() {
    let t = bed(|_| {}).await;
    let cid = "dup-1";
    let inv = invite(cid, "1000", t.a.addr, t.sw);
    for _ in 0..3 {
        t.a.send(t.sw, &inv).await;
    }
    let (inv_b, sw_b) = t.b.expect_request("INVITE").await;
    // Answer 100 so the switch stops retransmitting; any further INVITE would be a new call.
    t.b.send(sw_b, &answer(&inv_b, 100, "Trying", "", t.b.addr, ""))
        .await;
    t.a.send(t.sw, &inv).await;
    let seen = collect(&t.b, Duration::from_millis(600)).await;
    let others: Vec<String> = seen
        .iter()
        .filter(|m| is_request("INVITE")(m))
        .map(call_id)
        .filter(|c| *c != call_id(&inv_b))
        .collect();
    assert!(others.is_empty(), "second call started: {others:?}");
    assert_eq!(t.node.active_calls(), 1);
    let a_seen = collect(&t.a, SHORT).await;
    assert!(a_seen.iter().all(|m| m.status() == Some(100)));
    t.b.send(
        sw_b,
        &answer(&inv_b, 486, "Busy Here", "btag", t.b.addr, ""),
    )
    .await;
    let (busy, _) = t.a.expect_status(486).await;
    t.a.send(t.sw, &ack_failure(&inv, &busy)).await;
    assert_eq!(cdr(&t, cid).await.final_status, 486);
    assert_drained(&t).await;
    t.node.shutdown().await;
}

// ---- beyond the list: cases a B2BUA commonly gets wrong ----

/// The caller hangs up before its ACK (lost or not yet sent): B must get the ACK of its
/// 2xx before the BYE, and one BYE only; the 2xx retransmissions to A stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bye_before_ack_acks_the_callee_first() {
    let t = bed(|_| {}).await;
    let cid = "byefirst-1";
    let (_, inv_b, sw_b) = dial(&t, cid).await;
    t.b.send(sw_b, &answer(&inv_b, 200, "OK", "btag", t.b.addr, SDP_B))
        .await;
    let (ok, _) = t.a.expect("200 to INVITE", is_status(200, "INVITE")).await;
    let mut a = Side::caller(t.a.addr, cid, &ok);
    t.a.send(t.sw, &a.request("BYE", 0, "", "")).await;
    let (first, _) =
        t.b.expect("ACK or BYE", |m| {
            is_request("ACK")(m) || is_request("BYE")(m)
        })
        .await;
    assert!(
        is_request("ACK")(&first),
        "B got BYE before the ACK of its 2xx"
    );
    let (bye, from) = t.b.expect_request("BYE").await;
    t.b.send(from, &answer(&bye, 200, "OK", "", t.b.addr, ""))
        .await;
    // B retransmits its 2xx (it may not have seen the ACK yet): only the ACK is repeated.
    t.b.send(sw_b, &answer(&inv_b, 200, "OK", "btag", t.b.addr, SDP_B))
        .await;
    t.a.expect("200 to BYE", is_status(200, "BYE")).await;
    let b_later = collect(&t.b, Duration::from_millis(500)).await;
    assert!(
        !b_later.iter().any(|m| is_request("BYE")(m)),
        "a second BYE to B"
    );
    assert!(b_later.iter().any(|m| is_request("ACK")(m)), "ACK repeated");
    let a_later = collect(&t.a, Duration::from_millis(500)).await;
    assert!(
        !a_later.iter().any(|m| is_status(200, "INVITE")(m)),
        "2xx still retransmitted after A's BYE"
    );
    let c = cdr(&t, cid).await;
    assert_eq!(c.hangup_by, HangupBy::Caller);
    assert_eq!(c.final_status, 200);
    assert_drained(&t).await;
    t.node.shutdown().await;
}

/// Delayed offer: A's INVITE has no SDP, B's 200 carries the offer, A's ACK the answer,
/// which must reach B in its ACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_offer_answer_in_ack_reaches_callee() {
    let t = bed(|_| {}).await;
    let cid = "delayed-1";
    let inv = invite(cid, "1000", t.a.addr, t.sw)
        .replace("Content-Type: application/sdp\r\n", "")
        .replace(
            &format!("Content-Length: {}\r\n\r\n{SDP}", SDP.len()),
            "Content-Length: 0\r\n\r\n",
        );
    t.a.send(t.sw, &inv).await;
    let (inv_b, sw_b) = t.b.expect_request("INVITE").await;
    assert!(inv_b.body.is_empty(), "no SDP invented");
    t.b.send(sw_b, &answer(&inv_b, 200, "OK", "btag", t.b.addr, SDP_B))
        .await;
    let (ok, _) = t.a.expect("200 to INVITE", is_status(200, "INVITE")).await;
    assert_eq!(body(&ok), SDP_B);
    let mut a = Side::caller(t.a.addr, cid, &ok);
    t.a.send(
        t.sw,
        &a.request("ACK", 1, "Content-Type: application/sdp\r\n", SDP),
    )
    .await;
    let (ack, _) = t.b.expect_request("ACK").await;
    assert_eq!(body(&ack), SDP, "answer in ACK relayed");
    assert_eq!(val(&ack, HeaderName::ContentType), "application/sdp");

    // The same with a re-INVITE without SDP (e.g. unhold by a 3pcc controller).
    t.a.send(t.sw, &a.request("INVITE", 0, "", "")).await;
    let (re, from) = t.b.expect_request("INVITE").await;
    assert!(re.body.is_empty());
    t.b.send(from, &answer(&re, 200, "OK", "", t.b.addr, SDP_B))
        .await;
    let (ok, _) =
        t.a.expect("200 to re-INVITE", is_status(200, "INVITE"))
            .await;
    assert_eq!(body(&ok), SDP_B);
    let seq = cseq(&ok).0;
    t.a.send(
        t.sw,
        &a.request("ACK", seq, "Content-Type: application/sdp\r\n", SDP),
    )
    .await;
    let (ack, _) = t.b.expect_request("ACK").await;
    assert_eq!(cseq(&ack), (cseq(&re).0, "ACK".into()));
    assert_eq!(body(&ack), SDP, "answer in the re-INVITE's ACK relayed");

    let mut up = Up {
        a,
        b: Side::callee(t.b.addr, &inv_b, "btag"),
        inv_b,
        sw_b,
    };
    bye_from_a(&t, &mut up).await;
    assert_drained(&t).await;
    t.node.shutdown().await;
}

/// B retransmits its 2xx after the call is confirmed: the switch ACKs it again and relays
/// nothing to A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retransmitted_2xx_from_callee_is_acked_again() {
    let t = bed(|_| {}).await;
    let cid = "b2xx-1";
    let mut up = establish(&t, cid).await;
    t.b.send(
        up.sw_b,
        &answer(&up.inv_b, 200, "OK", "btag", t.b.addr, SDP_B),
    )
    .await;
    let (ack, _) = t.b.expect_request("ACK").await;
    assert_eq!(cseq(&ack), (cseq(&up.inv_b).0, "ACK".into()));
    let a_seen = collect(&t.a, SHORT).await;
    assert!(a_seen.is_empty(), "relayed to A: {}", a_seen.len());
    bye_from_a(&t, &mut up).await;
    assert_drained(&t).await;
    t.node.shutdown().await;
}

/// A re-INVITE refused by B (491) reaches A, and the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reinvite_keeps_the_call() {
    let t = bed(|_| {}).await;
    let cid = "re491-1";
    let mut up = establish(&t, cid).await;
    let ct = "Content-Type: application/sdp\r\n";
    let re_a = up.a.request("INVITE", 0, ct, SDP_HOLD);
    t.a.send(t.sw, &re_a).await;
    let (re, from) = t.b.expect_request("INVITE").await;
    t.b.send(from, &answer(&re, 491, "Request Pending", "", t.b.addr, ""))
        .await;
    let (ack, _) = t.b.expect_request("ACK").await;
    assert_eq!(branch(&ack), branch(&re));
    let (r, _) = t.a.expect("491", is_status(491, "INVITE")).await;
    t.a.send(t.sw, &ack_failure(&re_a, &r)).await;
    assert_eq!(t.node.active_calls(), 1);
    bye_from_a(&t, &mut up).await;
    let c = cdr(&t, cid).await;
    assert_eq!(c.final_status, 200);
    assert_drained(&t).await;
    t.node.shutdown().await;
}

/// The caller sends BYE in the early dialog (RFC 3261 §15): it gets 200 for the BYE and
/// 487 for its INVITE, B is CANCELled, and the call is forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bye_in_early_dialog_from_caller() {
    let t = bed(|_| {}).await;
    let cid = "earlybye-1";
    let (inv, inv_b, sw_b) = dial(&t, cid).await;
    t.b.send(sw_b, &answer(&inv_b, 180, "Ringing", "btag", t.b.addr, ""))
        .await;
    let (ringing, _) = t.a.expect_status(180).await;
    let mut a = Side::caller(t.a.addr, cid, &ringing);
    t.a.send(t.sw, &a.request("BYE", 0, "", "")).await;
    t.a.expect("200 to BYE", is_status(200, "BYE")).await;
    let (term, _) = t.a.expect("487 to INVITE", is_status(487, "INVITE")).await;
    t.a.send(t.sw, &ack_failure(&inv, &term)).await;
    let (cancel, from) =
        t.b.expect("CANCEL or BYE", |m| {
            is_request("CANCEL")(m) || is_request("BYE")(m)
        })
        .await;
    assert!(
        is_request("CANCEL")(&cancel),
        "the unanswered B leg is CANCELled"
    );
    assert_eq!(branch(&cancel), branch(&inv_b));
    t.b.send(from, &answer(&cancel, 200, "OK", "btag", t.b.addr, ""))
        .await;
    t.b.send(
        from,
        &answer(&inv_b, 487, "Request Terminated", "btag", t.b.addr, ""),
    )
    .await;
    t.b.expect_request("ACK").await;
    let c = cdr(&t, cid).await;
    assert_eq!(c.final_status, 487);
    assert_eq!(c.hangup_by, HangupBy::Caller);
    assert!(c.answer_at.is_none());
    assert_drained(&t).await;
    t.node.shutdown().await;
}

/// The callee hangs up before the caller's ACK: B's 2xx is ACKed (so its retransmissions
/// do not look like a late answer that earns a second BYE), A gets the BYE, and A's late
/// ACK stops the 2xx retransmissions towards A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_bye_before_caller_ack() {
    let t = bed(|_| {}).await;
    let cid = "calleefirst-1";
    let (_, inv_b, sw_b) = dial(&t, cid).await;
    t.b.send(sw_b, &answer(&inv_b, 200, "OK", "btag", t.b.addr, SDP_B))
        .await;
    let (ok, _) = t.a.expect("200 to INVITE", is_status(200, "INVITE")).await;
    let mut b = Side::callee(t.b.addr, &inv_b, "btag");
    t.b.send(sw_b, &b.request("BYE", 0, "", "")).await;
    let (bye, from) = t.a.expect_request("BYE").await;
    t.a.send(from, &answer(&bye, 200, "OK", "", t.a.addr, ""))
        .await;
    let mut a = Side::caller(t.a.addr, cid, &ok);
    t.a.send(t.sw, &a.request("ACK", 1, "", "")).await;
    t.b.expect("200 to BYE", is_status(200, "BYE")).await;
    // B retransmits its 2xx: ACK only.
    t.b.send(sw_b, &answer(&inv_b, 200, "OK", "btag", t.b.addr, SDP_B))
        .await;
    let b_seen = collect(&t.b, Duration::from_millis(500)).await;
    assert!(b_seen.iter().any(|m| is_request("ACK")(m)), "2xx ACKed");
    assert!(
        !b_seen.iter().any(|m| is_request("BYE")(m)),
        "BYE sent to B after B's own BYE"
    );
    let _ = collect(&t.a, Duration::from_millis(100)).await;
    let a_seen = collect(&t.a, Duration::from_millis(500)).await;
    assert!(
        !a_seen.iter().any(|m| is_status(200, "INVITE")(m)),
        "2xx resent after A's ACK"
    );
    let c = cdr(&t, cid).await;
    assert_eq!(c.hangup_by, HangupBy::Callee);
    assert_drained(&t).await;
    t.node.shutdown().await;
}

/// Extensions through the switch: 100rel is not offered to B (PRACK is not relayed, so a
/// reliable 18x would never be acknowledged); session timers (RFC 4028) pass end to end so
/// that the refresher B names is told so and its refreshes reach B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_timer_passes_and_100rel_is_not_offered() {
    let t = bed(|_| {}).await;
    let cid = "timers-1";
    let inv = invite(cid, "1000", t.a.addr, t.sw).replacen(
        "Content-Type:",
        "Supported: 100rel, timer\r\nSession-Expires: 1800\r\nMin-SE: 90\r\nContent-Type:",
        1,
    );
    t.a.send(t.sw, &inv).await;
    let (inv_b, sw_b) = t.b.expect_request("INVITE").await;
    let sup = val(&inv_b, HeaderName::Supported);
    assert!(!sup.contains("100rel"), "100rel offered to B: {sup}");
    assert!(sup.contains("timer"), "timer not offered to B: {sup}");
    assert_eq!(val(&inv_b, HeaderName::SessionExpires), "1800");
    let with_timer = |s: String| {
        s.replacen(
            "Content-Length:",
            "Require: timer\r\nSession-Expires: 1800;refresher=uac\r\nContent-Length:",
            1,
        )
    };
    t.b.send(
        sw_b,
        &with_timer(answer(&inv_b, 200, "OK", "btag", t.b.addr, SDP_B)),
    )
    .await;
    let (ok, _) = t.a.expect("200 to INVITE", is_status(200, "INVITE")).await;
    assert_eq!(val(&ok, HeaderName::Require), "timer");
    assert_eq!(
        val(&ok, HeaderName::SessionExpires),
        "1800;refresher=uac",
        "A is told it refreshes"
    );
    let mut a = Side::caller(t.a.addr, cid, &ok);
    t.a.send(t.sw, &a.request("ACK", 1, "", "")).await;
    t.b.expect_request("ACK").await;
    // A refreshes with UPDATE.
    t.a.send(
        t.sw,
        &a.request(
            "UPDATE",
            0,
            "Supported: timer\r\nSession-Expires: 1800;refresher=uac\r\n",
            "",
        ),
    )
    .await;
    let (upd, from) = t.b.expect_request("UPDATE").await;
    assert_eq!(val(&upd, HeaderName::SessionExpires), "1800;refresher=uac");
    t.b.send(from, &with_timer(answer(&upd, 200, "OK", "", t.b.addr, "")))
        .await;
    let (upd_ok, _) = t.a.expect("200 to UPDATE", is_status(200, "UPDATE")).await;
    assert_eq!(
        val(&upd_ok, HeaderName::SessionExpires),
        "1800;refresher=uac"
    );
    let mut up = Up {
        a,
        b: Side::callee(t.b.addr, &inv_b, "btag"),
        inv_b,
        sw_b,
    };
    bye_from_a(&t, &mut up).await;
    assert_drained(&t).await;
    t.node.shutdown().await;
}

/// A user agent on one TCP stream, messages framed by Content-Length.
struct TcpUa {
    s: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl TcpUa {
    fn take_one(&mut self) -> Option<Message> {
        while self.buf.starts_with(b"\r\n") {
            self.buf.drain(..2);
        }
        let end = self.buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
        let cl = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                let n = n.trim().to_ascii_lowercase();
                (n == "content-length" || n == "l").then(|| v.trim().parse::<usize>().unwrap())
            })
            .unwrap_or(0);
        if self.buf.len() < end + 4 + cl {
            return None;
        }
        let bytes: Vec<u8> = self.buf.drain(..end + 4 + cl).collect();
        Some(parse(std::str::from_utf8(&bytes).unwrap()))
    }

    async fn expect(&mut self, what: &str, pred: impl Fn(&Message) -> bool) -> Message {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            while let Some(m) = self.take_one() {
                if pred(&m) {
                    return m;
                }
            }
            let mut chunk = [0u8; 8192];
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => panic!("timed out (or closed) waiting for {what} over TCP"),
            }
        }
    }

    async fn send(&mut self, text: &str) {
        use tokio::io::AsyncWriteExt;
        self.s.write_all(text.as_bytes()).await.unwrap();
    }
}

/// The B leg over TCP: Via, Contact and Request-URI name TCP, every message of the call
/// travels on the stream, and the callee's BYE comes back through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let a = Ua::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_addr = listener.local_addr().unwrap();
    let mut c = common::config(dir.path(), &[("", format!("sip:{b_addr};transport=tcp"))]);
    c.timers.t1_ms = 50;
    c.timers.t2_ms = 200;
    c.timers.t4_ms = 250;
    let node = common::start_with(c).await;
    let sw = common::udp_addr(&node);
    let sw_tcp = common::tcp_addr(&node);
    let cid = "tcp-b-1";
    let inv = invite(cid, "1000", a.addr, sw);
    a.send(sw, &inv).await;
    let (s, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .expect("switch connects to B")
        .unwrap();
    let mut b = TcpUa { s, buf: Vec::new() };
    let inv_b = b.expect("INVITE", is_request("INVITE")).await;
    assert!(val(&inv_b, HeaderName::Via).starts_with("SIP/2.0/TCP "));
    assert!(
        contact_uri(&inv_b).ends_with(&format!("{sw_tcp};transport=tcp")),
        "Contact names the TCP listener: {}",
        contact_uri(&inv_b)
    );
    assert!(inv_b.request_uri().unwrap().ends_with(b";transport=tcp"));
    assert_eq!(body(&inv_b), SDP);
    b.send(&answer(&inv_b, 180, "Ringing", "btag", b_addr, ""))
        .await;
    a.expect_status(180).await;
    b.send(&answer(&inv_b, 200, "OK", "btag", b_addr, SDP_B))
        .await;
    let (ok, _) = a.expect("200 to INVITE", is_status(200, "INVITE")).await;
    assert_eq!(body(&ok), SDP_B);
    assert!(
        !contact_uri(&ok).contains("transport=tcp"),
        "A's Contact stays UDP"
    );
    let mut side_a = Side::caller(a.addr, cid, &ok);
    a.send(sw, &side_a.request("ACK", 1, "", "")).await;
    let ack = b.expect("ACK", is_request("ACK")).await;
    assert!(val(&ack, HeaderName::Via).starts_with("SIP/2.0/TCP "));
    // B hangs up over the same stream.
    let mut side_b = Side::callee(b_addr, &inv_b, "btag");
    let bye = side_b
        .request("BYE", 0, "", "")
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    b.send(&bye).await;
    let (bye_a, from) = a.expect_request("BYE").await;
    a.send(from, &answer(&bye_a, 200, "OK", "", a.addr, ""))
        .await;
    let ok_b = b.expect("200 to BYE", is_status(200, "BYE")).await;
    assert_eq!(call_id(&ok_b), call_id(&inv_b));
    assert!(wait_until(Duration::from_secs(3), || node.active_calls() == 0).await);
    assert!(wait_until(DRAIN, || node.ctx.directory.is_empty()).await);
    switchyard::actors::store_writer::flush(&node.tree.store().unwrap())
        .await
        .unwrap();
    let cdr = Store::open(&dir.path().join("switchyard.db"))
        .unwrap()
        .get_cdr_by_call_id(cid)
        .unwrap()
        .expect("CDR");
    assert_eq!(cdr.hangup_by, HangupBy::Callee);
    assert_eq!(cdr.final_status, 200);
    node.shutdown().await;
}

/// Re-INVITE glare (RFC 3261 §14): while one re-INVITE is relayed and unanswered, a
/// re-INVITE from either end gets 491 and is not relayed; the first one completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_glare_gets_491() {
    let t = bed(|_| {}).await;
    let cid = "glare-1";
    let mut up = establish(&t, cid).await;
    let ct = "Content-Type: application/sdp\r\n";
    t.a.send(t.sw, &up.a.request("INVITE", 0, ct, SDP_HOLD))
        .await;
    let (re, from) = t.b.expect_request("INVITE").await;
    // B's own re-INVITE crosses it.
    let re_b = up.b.request("INVITE", 0, ct, SDP_B);
    t.b.send(up.sw_b, &re_b).await;
    let (r, _) =
        t.b.expect("491 to B's re-INVITE", |m| {
            m.status().is_some_and(|s| s >= 200)
                && m.cseq().is_some_and(|c| c.method.to_string() == "INVITE")
        })
        .await;
    assert_eq!(r.status(), Some(491));
    t.b.send(up.sw_b, &ack_failure(&re_b, &r)).await;
    // A tries again before the first is answered.
    let re_a2 = up.a.request("INVITE", 0, ct, SDP);
    t.a.send(t.sw, &re_a2).await;
    let (r, _) =
        t.a.expect("491 to A's second re-INVITE", |m| {
            m.status().is_some_and(|s| s >= 200)
        })
        .await;
    assert_eq!(r.status(), Some(491));
    t.a.send(t.sw, &ack_failure(&re_a2, &r)).await;
    let a_seen = collect(&t.a, SHORT).await;
    assert!(
        !a_seen.iter().any(|m| is_request("INVITE")(m)),
        "B's re-INVITE relayed"
    );
    // The first completes.
    t.b.send(from, &answer(&re, 200, "OK", "", t.b.addr, SDP_HELD))
        .await;
    let (ok, _) =
        t.a.expect("200 to re-INVITE", is_status(200, "INVITE"))
            .await;
    assert_eq!(cseq(&ok).0, 2);
    assert_eq!(body(&ok), SDP_HELD);
    t.a.send(t.sw, &up.a.request("ACK", 2, "", "")).await;
    bye_from_a(&t, &mut up).await;
    assert_drained(&t).await;
    t.node.shutdown().await;
}

/// A redirect from B reaches A with its Contact (where to go instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_is_relayed_with_its_contact() {
    let t = bed(|_| {}).await;
    let cid = "redirect-1";
    let (inv, inv_b, sw_b) = dial(&t, cid).await;
    let moved = answer(&inv_b, 302, "Moved Temporarily", "btag", t.b.addr, "").replace(
        &format!("Contact: <sip:bob@{}>", t.b.addr),
        "Contact: <sip:bob@192.0.2.9:5060>",
    );
    t.b.send(sw_b, &moved).await;
    t.b.expect_request("ACK").await;
    let (r, _) = t.a.expect_status(302).await;
    assert_eq!(contact_uri(&r), "sip:bob@192.0.2.9:5060");
    t.a.send(t.sw, &ack_failure(&inv, &r)).await;
    let c = cdr(&t, cid).await;
    assert_eq!(c.final_status, 302);
    assert_drained(&t).await;
    t.node.shutdown().await;
}

/// A call actor restarted after in-dialog requests resumes with the dialogs' current CSeqs
/// (a stale checkpoint would reuse a CSeq, which the peer refuses as out of order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_call_keeps_dialog_cseqs() {
    use switchyard::actors::call::CallMsg;
    let t = bed(|_| {}).await;
    let cid = "restart-cseq-1";
    let mut up = establish(&t, cid).await;
    let dtmf = "Content-Type: application/dtmf-relay\r\n";
    t.a.send(t.sw, &up.a.request("INFO", 0, dtmf, DTMF)).await;
    let (info, from) = t.b.expect_request("INFO").await;
    let info_seq = cseq(&info).0;
    t.b.send(from, &answer(&info, 200, "OK", "", t.b.addr, ""))
        .await;
    t.a.expect("200 to INFO", is_status(200, "INFO")).await;

    let before = t.node.ctx.directory.lookup(cid.as_bytes()).expect("actor");
    before.send_message(CallMsg::InjectPanic).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || {
            t.node
                .ctx
                .directory
                .lookup(cid.as_bytes())
                .is_some_and(|n| n.get_id() != before.get_id())
        })
        .await,
        "call actor restarted"
    );
    t.a.send(t.sw, &up.a.request("BYE", 0, "", "")).await;
    let (bye, from) = t.b.expect_request("BYE").await;
    assert!(
        cseq(&bye).0 > info_seq,
        "BYE CSeq {} not above the INFO's {info_seq}",
        cseq(&bye).0
    );
    t.b.send(from, &answer(&bye, 200, "OK", "", t.b.addr, ""))
        .await;
    t.a.expect("200 to BYE", is_status(200, "BYE")).await;
    assert_drained(&t).await;
    t.node.shutdown().await;
}

/// The caller on TCP: every response and the callee's BYE reach it on its own connection
/// (no 2xx retransmission over a reliable transport is needed for the call to proceed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_over_tcp() {
    let t = bed(|_| {}).await;
    let sw_tcp = common::tcp_addr(&t.node);
    let s = tokio::net::TcpStream::connect(sw_tcp).await.unwrap();
    let me = s.local_addr().unwrap();
    let mut a = TcpUa { s, buf: Vec::new() };
    let cid = "tcp-a-1";
    let inv = invite(cid, "1000", me, sw_tcp).replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    a.send(&inv).await;
    a.expect("100", |m| m.status() == Some(100)).await;
    let (inv_b, sw_b) = t.b.expect_request("INVITE").await;
    assert!(val(&inv_b, HeaderName::Via).starts_with("SIP/2.0/UDP "));
    t.b.send(sw_b, &answer(&inv_b, 180, "Ringing", "btag", t.b.addr, ""))
        .await;
    a.expect("180", |m| m.status() == Some(180)).await;
    t.b.send(sw_b, &answer(&inv_b, 200, "OK", "btag", t.b.addr, SDP_B))
        .await;
    let ok = a.expect("200", is_status(200, "INVITE")).await;
    assert!(
        contact_uri(&ok).ends_with(&format!("{sw_tcp};transport=tcp")),
        "A's Contact names the TCP listener: {}",
        contact_uri(&ok)
    );
    assert_eq!(body(&ok), SDP_B);
    let mut side_a = Side::caller(me, cid, &ok);
    a.send(
        &side_a
            .request("ACK", 1, "", "")
            .replace("SIP/2.0/UDP", "SIP/2.0/TCP"),
    )
    .await;
    t.b.expect_request("ACK").await;
    let mut b = Side::callee(t.b.addr, &inv_b, "btag");
    t.b.send(sw_b, &b.request("BYE", 0, "", "")).await;
    let bye = a.expect("BYE", is_request("BYE")).await;
    assert!(val(&bye, HeaderName::Via).starts_with("SIP/2.0/TCP "));
    let ok_bye = answer(&bye, 200, "OK", "", me, "");
    a.send(&ok_bye).await;
    t.b.expect("200 to BYE", is_status(200, "BYE")).await;
    let c = cdr(&t, cid).await;
    assert_eq!(c.hangup_by, HangupBy::Callee);
    assert_drained(&t).await;
    t.node.shutdown().await;
}

/// Two forks behind B answer: the first 2xx is the call's answer; the second fork's 2xx
/// is ACKed and ended with a BYE in its own dialog (RFC 3261 §13.2.2.4), and only once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_fork_answer_is_acked_and_ended() {
    let t = bed(|_| {}).await;
    let cid = "forks-1";
    let (_, inv_b, sw_b) = dial(&t, cid).await;
    t.b.send(sw_b, &answer(&inv_b, 200, "OK", "f1", t.b.addr, SDP_B))
        .await;
    let (ok, _) = t.a.expect("200 to INVITE", is_status(200, "INVITE")).await;
    let second = answer(&inv_b, 200, "OK", "f2", t.b.addr, SDP_B);
    t.b.send(sw_b, &second).await;
    let (ack2, _) = t.b.expect_request("ACK").await;
    assert_eq!(
        to_tag(&ack2).as_deref(),
        Some("f2"),
        "second fork ACKed first"
    );
    let (bye2, from) = t.b.expect_request("BYE").await;
    assert_eq!(to_tag(&bye2).as_deref(), Some("f2"));
    t.b.send(from, &answer(&bye2, 200, "OK", "", t.b.addr, ""))
        .await;
    // Its retransmission gets an ACK only.
    t.b.send(sw_b, &second).await;
    let seen = collect(&t.b, SHORT).await;
    assert!(seen
        .iter()
        .any(|m| is_request("ACK")(m) && to_tag(m).as_deref() == Some("f2")));
    assert!(!seen.iter().any(|m| is_request("BYE")(m)), "second BYE");
    // A sees one answer; the call with fork 1 goes on.
    let a_seen = collect(&t.a, Duration::from_millis(100)).await;
    assert!(a_seen
        .iter()
        .all(|m| is_status(200, "INVITE")(m) && to_tag(m) == to_tag(&ok)));
    let mut a = Side::caller(t.a.addr, cid, &ok);
    t.a.send(t.sw, &a.request("ACK", 1, "", "")).await;
    let (ack1, _) = t.b.expect_request("ACK").await;
    assert_eq!(to_tag(&ack1).as_deref(), Some("f1"));
    t.a.send(t.sw, &a.request("BYE", 0, "", "")).await;
    let (bye, from) = t.b.expect_request("BYE").await;
    assert_eq!(to_tag(&bye).as_deref(), Some("f1"));
    t.b.send(from, &answer(&bye, 200, "OK", "", t.b.addr, ""))
        .await;
    t.a.expect("200 to BYE", is_status(200, "BYE")).await;
    assert_eq!(cdr(&t, cid).await.final_status, 200);
    assert_drained(&t).await;
    t.node.shutdown().await;
}

/// Both ends hang up at once: each BYE gets 200 (not 481), one CDR says the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_byes_both_get_200() {
    let t = bed(|_| {}).await;
    let cid = "crossbye-1";
    let mut up = establish(&t, cid).await;
    t.a.send(t.sw, &up.a.request("BYE", 0, "", "")).await;
    let (relayed, from) = t.b.expect_request("BYE").await;
    // B's own BYE crosses the relayed one.
    t.b.send(up.sw_b, &up.b.request("BYE", 0, "", "")).await;
    let (r, _) =
        t.b.expect("answer to B's BYE", |m| {
            m.status().is_some_and(|s| s >= 200)
                && m.cseq().is_some_and(|c| c.method.to_string() == "BYE")
        })
        .await;
    assert_eq!(r.status(), Some(200));
    t.b.send(from, &answer(&relayed, 200, "OK", "", t.b.addr, ""))
        .await;
    t.a.expect("200 to BYE", is_status(200, "BYE")).await;
    assert_eq!(cdr(&t, cid).await.hangup_by, HangupBy::Caller);
    assert_drained(&t).await;
    t.node.shutdown().await;
}

/// The switch ends a call on command (`CallMsg::Hangup`, what the API sends): BYE to both
/// legs, CDR by the system with the reason given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_command_ends_both_legs() {
    use switchyard::actors::call::CallMsg;
    let t = bed(|_| {}).await;
    let cid = "hangup-cmd-1";
    let up = establish(&t, cid).await;
    let actor = t.node.ctx.directory.lookup(cid.as_bytes()).expect("actor");
    actor
        .send_message(CallMsg::Hangup("operator".into()))
        .unwrap();
    let (bye_a, from_a) = t.a.expect_request("BYE").await;
    let (bye_b, from_b) = t.b.expect_request("BYE").await;
    assert_eq!(call_id(&bye_b), call_id(&up.inv_b));
    t.a.send(from_a, &answer(&bye_a, 200, "OK", "", t.a.addr, ""))
        .await;
    t.b.send(from_b, &answer(&bye_b, 200, "OK", "", t.b.addr, ""))
        .await;
    let c = cdr(&t, cid).await;
    assert_eq!(c.hangup_by, HangupBy::System);
    assert_eq!(c.disconnect_reason, "operator");
    assert_eq!(c.final_status, 200);
    assert_drained(&t).await;
    t.node.shutdown().await;
}

/// A TCP callee that refuses the connection: the caller gets a final answer and the call
/// is forgotten (today through Timer B: the transport does not report the refusal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_tcp_callee_fails_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let a = Ua::new().await;
    // A port with nothing listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut c = common::config(dir.path(), &[("", format!("sip:{closed};transport=tcp"))]);
    c.timers.t1_ms = 50;
    c.timers.t2_ms = 200;
    c.timers.t4_ms = 250;
    let node = common::start_with(c).await;
    let sw = common::udp_addr(&node);
    let cid = "tcp-refused-1";
    let inv = invite(cid, "1000", a.addr, sw);
    let started = Instant::now();
    a.send(sw, &inv).await;
    let (fin, _) = {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            assert!(Instant::now() < deadline, "no final for A");
            if let Some((m, f)) = a.recv(Duration::from_secs(1)).await {
                if m.status().is_some_and(|s| s >= 200) {
                    break (m, f);
                }
            }
        }
    };
    let status = fin.status().unwrap();
    assert!(status == 503 || status == 408, "final {status}");
    eprintln!("refused TCP callee: {status} after {:?}", started.elapsed());
    a.send(sw, &ack_failure(&inv, &fin)).await;
    assert!(wait_until(Duration::from_secs(3), || node.active_calls() == 0).await);
    assert!(wait_until(DRAIN, || node.ctx.directory.is_empty()).await);
    node.shutdown().await;
}

/// A record-routing proxy in front of the caller: the 18x and 2xx carry its Record-Route
/// (RFC 3261 §12.1.1), and the switch's requests to the caller are routed through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_record_route_is_honoured() {
    let t = bed(|_| {}).await;
    let cid = "rr-1";
    let rr = "<sip:proxy.example.net;lr>";
    let inv = invite(cid, "1000", t.a.addr, t.sw).replacen(
        "Contact:",
        &format!("Record-Route: {rr}\r\nContact:"),
        1,
    );
    t.a.send(t.sw, &inv).await;
    let (inv_b, sw_b) = t.b.expect_request("INVITE").await;
    assert!(
        inv_b.value(HeaderName::RecordRoute).is_none(),
        "A's Record-Route is not B's business"
    );
    t.b.send(sw_b, &answer(&inv_b, 180, "Ringing", "btag", t.b.addr, ""))
        .await;
    let (ringing, _) = t.a.expect_status(180).await;
    assert_eq!(val(&ringing, HeaderName::RecordRoute), rr);
    t.b.send(sw_b, &answer(&inv_b, 200, "OK", "btag", t.b.addr, SDP_B))
        .await;
    let (ok, _) = t.a.expect("200 to INVITE", is_status(200, "INVITE")).await;
    assert_eq!(val(&ok, HeaderName::RecordRoute), rr);
    let mut a = Side::caller(t.a.addr, cid, &ok);
    t.a.send(t.sw, &a.request("ACK", 1, "", "")).await;
    t.b.expect_request("ACK").await;
    let mut b = Side::callee(t.b.addr, &inv_b, "btag");
    t.b.send(sw_b, &b.request("BYE", 0, "", "")).await;
    let (bye, from) = t.a.expect_request("BYE").await;
    assert_eq!(val(&bye, HeaderName::Route), rr, "BYE routed via the proxy");
    t.a.send(from, &answer(&bye, 200, "OK", "", t.a.addr, ""))
        .await;
    t.b.expect("200 to BYE", is_status(200, "BYE")).await;
    assert_drained(&t).await;
    t.node.shutdown().await;
}

/// A re-INVITE's 2xx relayed to a UDP caller is retransmitted until the caller's ACK (B's
/// own retransmissions stopped with the switch's hop-by-hop ACK), and a 2xx retransmitted
/// by B after that is ACKed without reaching A again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_2xx_is_retransmitted_to_the_caller_until_ack() {
    let t = bed(|_| {}).await;
    let cid = "re2xx-1";
    let mut up = establish(&t, cid).await;
    let ct = "Content-Type: application/sdp\r\n";
    t.a.send(t.sw, &up.a.request("INVITE", 0, ct, SDP_HOLD))
        .await;
    let (re, from) = t.b.expect_request("INVITE").await;
    let ok_b = answer(&re, 200, "OK", "", t.b.addr, SDP_HELD);
    t.b.send(from, &ok_b).await;
    t.b.expect_request("ACK").await;
    let seen = collect(&t.a, Duration::from_millis(700)).await;
    let oks = seen
        .iter()
        .filter(|m| is_status(200, "INVITE")(m) && cseq(m).0 == 2)
        .count();
    assert!(oks >= 2, "re-INVITE 2xx sent {oks} times without an ACK");
    t.a.send(t.sw, &up.a.request("ACK", 2, "", "")).await;
    let _ = collect(&t.a, Duration::from_millis(100)).await;
    // B retransmits its 2xx: the switch ACKs it, A hears nothing more.
    t.b.send(from, &ok_b).await;
    t.b.expect_request("ACK").await;
    let after = collect(&t.a, Duration::from_millis(500)).await;
    assert!(
        !after.iter().any(|m| is_status(200, "INVITE")(m)),
        "2xx still sent to A after its ACK"
    );
    bye_from_a(&t, &mut up).await;
    assert_drained(&t).await;
    t.node.shutdown().await;
}

/// The caller CANCELs a re-INVITE that B has not answered yet: 200 for the CANCEL, 487
/// for the re-INVITE, a CANCEL to B's copy (same branch), and the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_reinvite_is_cancelled_on_the_other_leg() {
    let t = bed(|_| {}).await;
    let cid = "cancel-re-1";
    let mut up = establish(&t, cid).await;
    let ct = "Content-Type: application/sdp\r\n";
    let re_a = up.a.request("INVITE", 0, ct, SDP_HOLD);
    t.a.send(t.sw, &re_a).await;
    let (re, from) = t.b.expect_request("INVITE").await;
    // A provisional, relayed: once A has it, the switch has it too.
    t.b.send(
        from,
        &answer(&re, 183, "Session Progress", "", t.b.addr, ""),
    )
    .await;
    t.a.expect("183 to re-INVITE", is_status(183, "INVITE"))
        .await;
    t.a.send(t.sw, &cancel_of(&re_a)).await;
    t.a.expect("200 to CANCEL", is_status(200, "CANCEL")).await;
    let (term, _) =
        t.a.expect("487 to re-INVITE", is_status(487, "INVITE"))
            .await;
    t.a.send(t.sw, &ack_failure(&re_a, &term)).await;
    let (cancel, cfrom) = t.b.expect_request("CANCEL").await;
    assert_eq!(branch(&cancel), branch(&re));
    assert_eq!(cseq(&cancel), (cseq(&re).0, "CANCEL".into()));
    t.b.send(cfrom, &answer(&cancel, 200, "OK", "", t.b.addr, ""))
        .await;
    t.b.send(
        cfrom,
        &answer(&re, 487, "Request Terminated", "", t.b.addr, ""),
    )
    .await;
    t.b.expect_request("ACK").await;
    assert_eq!(t.node.active_calls(), 1, "the call goes on");
    bye_from_a(&t, &mut up).await;
    assert_eq!(cdr(&t, cid).await.final_status, 200);
    assert_drained(&t).await;
    t.node.shutdown().await;
}
