//! Transfer, hold and call control on a real node (issue 17): a tenant whose users 1001,
//! 1002 and 1003 register their phones with digest, every call anchored
//! (`media.anchor_all`), each phone and its RTP socket on its own 127.0.0.x address.
//! - A phone's blind REFER: the caller ends up talking with the target through the relay
//!   (real RTP both ways), the transferor gets NOTIFY 100 then 200 and a BYE, and the CDR in
//!   SQLite has the chain and three legs.
//! - A busy target: the transferor hears NOTIFY 486 and stays connected (a recall).
//! - A phone's attended transfer: the callee consults a third phone in a second call through
//!   the switch, then REFERs the caller with `Replaces` naming that dialog: the third phone's
//!   leg moves to the first call (re-INVITE onto its relay), both of the transferor's
//!   dialogs end, and the caller and the third phone hear each other.
//! - An INVITE with `Replaces` from a tenant's phone (authenticated with digest) takes the
//!   named leg's place (the replaced phone gets a BYE, real RTP after); a stranger's: 403.
//! - A queue call its agent transfers to another queue's number waits there with its
//!   priority and its original joining time; the agent goes to wrap-up.
//! - The API: `GET /calls` (tenant-scoped), hold (the caller hears music, the agent
//!   nothing), unhold, transfer, `DELETE`; an attended transfer of a queue call (the agent
//!   consults 1003 on a second relay session while the caller hears music, then hands the
//!   caller over), and a cancelled consultation (the agent back with the caller).
//! - A call actor that panics while its call is held, while a transfer rings and while its
//!   agent consults: each resumes in a settled state (held; back with the transferor; back
//!   with the agent).
//! - The mixer (issue 18), each phone sending its own tone and the tones each hears checked
//!   by Goertzel: a three-way (everyone hears the two others; the third party leaving
//!   leaves caller and agent talking; the caller leaving leaves agent and third party
//!   talking; the actor panicking changes nothing; a muted party is heard by nobody, a deaf
//!   one hears silence), and a supervisor of the queue (1003)
//!   listening, whispering and barging in, while others are refused with 403.

mod common;

use common::rtp::{dominant_hz, sdp_addr, Rtp};
use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use switchyard::actors::call::CallMsg;
use switchyard::config::{
    AgentConfig, Config, MembershipConfig, NumberConfig, TenantConfig, UserConfig,
};
use switchyard::server::Node;
use switchyard::sip::auth::{ha1, Algorithm};
use switchyard::sip::message::Message;
use switchyard::store::HangupBy;
use tokio::net::UdpSocket;

const DOMAIN: &str = "acme.test";
/// The tenant acme's API token (its config file's `api_token`).
const ACME: &str = "Bearer acme-tenant-token-0123456789abcdef-0001";
/// Another tenant's token: it must see nothing of acme's calls.
const OTHER: &str = "Bearer other-tenant-token-0123456789abcdef-0002";

/// A test phone: its SIP socket and its RTP socket, both on `ip`.
struct Phone {
    ua: Ua,
    rtp: Rtp,
}

impl Phone {
    async fn at(ip: &str) -> Phone {
        let sock = UdpSocket::bind((ip, 0)).await.unwrap();
        let addr = sock.local_addr().unwrap();
        Phone {
            ua: Ua { sock, addr },
            rtp: Rtp::at(ip).await,
        }
    }

    async fn register(&self, sw: SocketAddr, user: &str) {
        register_udp(&self.ua, sw, DOMAIN, user, &password(user)).await;
    }

    /// Answers a request the switch sent (NOTIFY, BYE) with 200.
    async fn ok(&self, req: &Message, from: SocketAddr) {
        self.ua
            .send(from, &answer(req, 200, "OK", "", self.ua.addr, ""))
            .await;
    }
}

/// A caller and the phones of 1002 and 1003 (registered), at 127.0.0.`base + 1`, `+ 2`
/// and `+ 3`.
async fn three_phones(sw: SocketAddr, base: u8) -> (Phone, Phone, Phone) {
    let at = |n: u8| format!("127.0.0.{}", base + n);
    let (caller, p1002, p1003) = (
        Phone::at(&at(1)).await,
        Phone::at(&at(2)).await,
        Phone::at(&at(3)).await,
    );
    p1002.register(sw, "1002").await;
    p1003.register(sw, "1003").await;
    (caller, p1002, p1003)
}

fn password(user: &str) -> String {
    format!("pw-{user}")
}

fn node_config(dir: &std::path::Path, ports: &str) -> Config {
    let mut c = config(dir, &[]);
    c.media.anchor_all = true;
    c.media.rtp_ports = ports.into();
    c.timers.t1_ms = 100;
    c.timers.t2_ms = 400;
    c.timers.t4_ms = 500;
    let user = |u: &str| UserConfig {
        username: u.into(),
        ha1_md5: Some(ha1(Algorithm::Md5, u, DOMAIN, &password(u))),
        ha1_sha256: Some(ha1(Algorithm::Sha256, u, DOMAIN, &password(u))),
        outbound: None,
    };
    let number = |n: &str, q: &str, priority: u32| NumberConfig {
        number: n.into(),
        target: format!("queue:{q}"),
        priority,
    };
    c.tenants = vec![
        TenantConfig {
            id: "acme".into(),
            domain: DOMAIN.into(),
            users: vec![user("1001"), user("1002"), user("1003")],
            // 5000: support, where agent a2 (phone 1002) answers; 5001: sales, no agent.
            numbers: vec![number("5000", "support", 5), number("5001", "sales", 1)],
            queues: vec![
                toml::from_str(
                    "id = \"support\"\nring_timeout_secs = 5\nwrap_up_secs = 60\nsupervisors = [\"1003\"]",
                )
                    .unwrap(),
                toml::from_str("id = \"sales\"\nring_timeout_secs = 5").unwrap(),
            ],
            agents: vec![AgentConfig {
                id: "a2".into(),
                user: "1002".into(),
                queues: vec![MembershipConfig {
                    queue: "support".into(),
                    tier: 1,
                    penalty: 0,
                }],
                skills: Default::default(),
                wrap_up_secs: None,
                state: Some("available".into()),
            }],
            api_token: Some(ACME.trim_start_matches("Bearer ").into()),
            ..Default::default()
        },
        TenantConfig {
            id: "other".into(),
            domain: "other.test".into(),
            api_token: Some(OTHER.trim_start_matches("Bearer ").into()),
            ..Default::default()
        },
    ];
    c
}

/// An INVITE from `ua` to `user` of acme, offering `sdp`.
fn invite_sdp(cid: &str, user: &str, ua: SocketAddr, sdp: &str) -> String {
    format!(
        "INVITE sip:{user}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {ua};branch=z9hG4bK-{cid}-1;rport\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@{ua}>;tag=a-{cid}\r\nTo: <sip:{user}@{DOMAIN}>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{ua}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

fn is_ok_to(method: &'static str) -> impl Fn(&Message) -> bool {
    move |m| m.status() == Some(200) && m.cseq().is_some_and(|c| c.method.to_string() == method)
}

fn is_notify(status: u16) -> impl Fn(&Message) -> bool {
    move |m| {
        m.method().is_some_and(|x| x.to_string() == "NOTIFY")
            && String::from_utf8_lossy(&m.body).starts_with(&format!("SIP/2.0 {status} "))
    }
}

fn subscription_state(notify: &Message) -> String {
    notify
        .other("Subscription-State")
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// The next request `method` within `wait` (others skipped); None if none came.
async fn request_within(ua: &Ua, method: &str, wait: Duration) -> Option<(Message, SocketAddr)> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (m, from) = ua.recv(left).await?;
        if m.method().is_some_and(|x| x.to_string() == method) {
            return Some((m, from));
        }
    }
}

/// A call up to the ACK, as both phones see it.
struct Up {
    /// The caller's dialog, and where it sends its audio.
    a: Side,
    to_switch_a: SocketAddr,
    /// The callee's INVITE and dialog (tag `btag`), and where it sends its audio.
    inv_b: Message,
    b: Side,
    to_switch_b: SocketAddr,
}

/// `caller` calls `dialled` (a user or a queue's number); `callee`'s phone answers.
async fn call(caller: &Phone, callee: &Phone, sw: SocketAddr, cid: &str, dialled: &str) -> Up {
    caller
        .ua
        .send(
            sw,
            &invite_sdp(cid, dialled, caller.ua.addr, &caller.rtp.sdp()),
        )
        .await;
    let (inv_b, from) = callee.ua.expect_request("INVITE").await;
    callee
        .ua
        .send(
            from,
            &answer(&inv_b, 180, "Ringing", "btag", callee.ua.addr, ""),
        )
        .await;
    callee
        .ua
        .send(
            from,
            &answer(&inv_b, 200, "OK", "btag", callee.ua.addr, &callee.rtp.sdp()),
        )
        .await;
    let (ok, _) = caller.ua.expect("200 to INVITE", is_ok_to("INVITE")).await;
    let mut a = Side::caller(caller.ua.addr, cid, &ok);
    caller.ua.send(sw, &a.request("ACK", 1, "", "")).await;
    callee.ua.expect_request("ACK").await;
    Up {
        a,
        to_switch_a: sdp_addr(&ok),
        to_switch_b: sdp_addr(&inv_b),
        b: Side::callee(callee.ua.addr, &inv_b, "btag"),
        inv_b,
    }
}

/// `x` and `y` talk for a second, `x` a 1 kHz tone to `to_x` and `y` a 2 kHz tone to
/// `to_y`: each must hear the other's tone.
async fn talk(x: &Phone, to_x: SocketAddr, y: &Phone, to_y: SocketAddr, what: &str) {
    x.rtp.drain();
    y.rtp.drain();
    let (sx, sy) = (
        x.rtp.send_tone(to_x, 1000.0, 60),
        y.rtp.send_tone(to_y, 2000.0, 60),
    );
    let (heard_by_y, heard_by_x) = tokio::join!(
        y.rtp.listen(Duration::from_millis(1400)),
        x.rtp.listen(Duration::from_millis(1400))
    );
    sx.await.unwrap();
    sy.await.unwrap();
    assert!(
        heard_by_y.len() >= 40 && heard_by_x.len() >= 40,
        "{what}: {} and {} packets arrived",
        heard_by_y.len(),
        heard_by_x.len()
    );
    let (f_y, f_x) = (dominant_hz(&heard_by_y), dominant_hz(&heard_by_x));
    assert!(
        (f_y - 1000.0).abs() <= 50.0,
        "{what}: one side hears {f_y} Hz"
    );
    assert!(
        (f_x - 2000.0).abs() <= 50.0,
        "{what}: the other hears {f_x} Hz"
    );
}

/// While `caller` sends a tone: what it hears (the relay's music) and what `other` hears.
async fn held_audio(caller: &Phone, to_switch: SocketAddr, other: &Phone) -> (usize, usize) {
    caller.rtp.drain();
    other.rtp.drain();
    let sending = caller.rtp.send_tone(to_switch, 1000.0, 50);
    let (at_caller, at_other) = tokio::join!(
        caller.rtp.listen(Duration::from_millis(1200)),
        other.rtp.listen(Duration::from_millis(1200))
    );
    sending.await.unwrap();
    (at_caller.len(), at_other.len())
}

async fn api(node: &Node, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
    let reply = http_request(node.http_addr, method, path, Some(token), body).await;
    let json = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
    (reply.status, json)
}

/// The call `cid` as `GET /calls/{cid}` shows it to the node.
async fn view(node: &Node, cid: &str) -> Value {
    let (status, v) = api(node, "GET", &format!("/calls/{cid}"), API_BEARER, "").await;
    assert_eq!(status, 200, "{v}");
    v
}

/// Polls the view of `cid` until `pred` holds (bounded: 5 s).
async fn view_until(node: &Node, cid: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v = view(node, cid).await;
        if pred(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls agent `id` of acme until its state is `state` (bounded: 5 s), through the API
/// with the tenant's token.
async fn agent_state(node: &Node, id: &str, state: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, list) = api(node, "GET", "/agents?tenant=acme", ACME, "").await;
        assert_eq!(status, 200);
        let got = list["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .map(|a| a["state"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default();
        if got == state {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent {id} is {got}, not {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn agent_offerable(node: &Node) {
    let a = switchyard::actors::agent::lookup("acme", "a2", &node.name).expect("agent a2");
    for _ in 0..250 {
        if switchyard::actors::agent::info(&a)
            .await
            .is_ok_and(|i| i.offerable)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("agent a2 never became offerable");
}

/// A counter's value (the sum of its series carrying every one of `labels`).
async fn metric(node: &Node, name: &str, labels: &[&str]) -> f64 {
    let reply = http_request(node.http_addr, "GET", "/metrics", None, "").await;
    reply
        .body
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The caller hangs up; the phone now in the call (`callee`) gets the BYE and answers.
async fn caller_hangs_up(caller: &Phone, a: &mut Side, callee: &Phone, sw: SocketAddr) {
    caller.ua.send(sw, &a.request("BYE", 0, "", "")).await;
    let (bye, from) = callee.ua.expect_request("BYE").await;
    callee.ok(&bye, from).await;
    caller.ua.expect("200 to BYE", is_ok_to("BYE")).await;
}

/// A REFER from the callee's phone in its dialog.
fn refer(b: &mut Side, target: &str) -> String {
    b.request(
        "REFER",
        0,
        &format!("Refer-To: <sip:{target}@{DOMAIN}>\r\nReferred-By: <sip:1002@{DOMAIN}>\r\n"),
        "",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phones_blind_refer_connects_the_caller_to_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(node_config(dir.path(), "47000-47099")).await;
    let sw = udp_addr(&node);
    let (caller, p1002, p1003) = three_phones(sw, 50).await;
    let cid = "xfer-phone-1";
    let Up {
        mut a,
        to_switch_a,
        inv_b,
        mut b,
        to_switch_b,
    } = call(&caller, &p1002, sw, cid, "1002").await;
    talk(
        &caller,
        to_switch_a,
        &p1002,
        to_switch_b,
        "before the transfer",
    )
    .await;

    // 1002 transfers the caller to 1003: 202, then NOTIFY 100 in 1002's dialog.
    p1002.ua.send(sw, &refer(&mut b, "1003")).await;
    p1002.ua.expect_status(202).await;
    let (n100, from) = p1002.ua.expect("NOTIFY 100", is_notify(100)).await;
    assert_eq!(call_id(&n100), call_id(&inv_b));
    assert_eq!(header(&n100, "Event"), "refer");
    p1002.ok(&n100, from).await;

    // 1003 rings with the switch's offer; the call shows the transfer in progress.
    let (inv_c, from_c) = p1003.ua.expect_request("INVITE").await;
    assert_ne!(call_id(&inv_c), call_id(&inv_b), "the target's own leg");
    let to_switch_c = sdp_addr(&inv_c);
    let v = view(&node, cid).await;
    assert_eq!(v["transfer"]["target"], "user:1003", "{v}");
    let positions: Vec<&str> = v["legs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["position"].as_str().unwrap())
        .collect();
    assert_eq!(positions, ["a", "b", "transferor"], "{v}");
    p1003
        .ua
        .send(
            from_c,
            &answer(&inv_c, 180, "Ringing", "ctag", p1003.ua.addr, ""),
        )
        .await;
    p1003
        .ua
        .send(
            from_c,
            &answer(&inv_c, 200, "OK", "ctag", p1003.ua.addr, &p1003.rtp.sdp()),
        )
        .await;
    p1003.ua.expect_request("ACK").await;

    // 1002 is told it worked and let go.
    let (n200, from) = p1002.ua.expect("NOTIFY 200", is_notify(200)).await;
    assert!(subscription_state(&n200).starts_with("terminated"));
    p1002.ok(&n200, from).await;
    let (bye, from) = p1002.ua.expect_request("BYE").await;
    assert_eq!(call_id(&bye), call_id(&inv_b));
    p1002.ok(&bye, from).await;

    // The caller and 1003 hear each other through the relay.
    talk(
        &caller,
        to_switch_a,
        &p1003,
        to_switch_c,
        "after the transfer",
    )
    .await;
    let v = view(&node, cid).await;
    assert!(v["transfer"].is_null(), "{v}");
    assert_eq!(v["legs"][1]["user"], "1003", "{v}");

    caller_hangs_up(&caller, &mut a, &p1003, sw).await;
    let cdr = cdr(&node, dir.path(), cid).await;
    assert_eq!(cdr.transfers.as_deref(), Some("blind:phone>user:1003"));
    let legs: Vec<(&str, &str, &str)> = cdr
        .legs
        .iter()
        .map(|l| (l.call_id.as_str(), l.role.as_str(), l.end_reason.as_str()))
        .collect();
    assert_eq!(
        legs,
        vec![
            (cid, "caller", "bye"),
            (call_id(&inv_b).as_str(), "callee", "transferred"),
            (call_id(&inv_c).as_str(), "transfer", "bye"),
        ]
    );
    assert_eq!(cdr.legs[2].party, "user:1003");
    assert!(cdr.legs.iter().all(|l| l.answer_at.is_some()));
    assert!(cdr.legs[1].end_at <= cdr.legs[2].end_at);
    assert_eq!(cdr.hangup_by, HangupBy::Caller);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_target_leaves_the_transferor_connected() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(node_config(dir.path(), "47100-47199")).await;
    let sw = udp_addr(&node);
    let (caller, p1002, p1003) = three_phones(sw, 60).await;
    let cid = "xfer-recall-1";
    let Up {
        to_switch_a,
        inv_b,
        mut b,
        to_switch_b,
        ..
    } = call(&caller, &p1002, sw, cid, "1002").await;
    p1002.ua.send(sw, &refer(&mut b, "1003")).await;
    p1002.ua.expect_status(202).await;
    let (n100, from) = p1002.ua.expect("NOTIFY 100", is_notify(100)).await;
    p1002.ok(&n100, from).await;
    let (inv_c, from_c) = p1003.ua.expect_request("INVITE").await;
    p1003
        .ua
        .send(
            from_c,
            &answer(&inv_c, 486, "Busy Here", "ctag", p1003.ua.addr, ""),
        )
        .await;
    p1003.ua.expect_request("ACK").await;
    let (n486, from) = p1002.ua.expect("NOTIFY 486", is_notify(486)).await;
    assert!(subscription_state(&n486).starts_with("terminated"));
    p1002.ok(&n486, from).await;
    assert!(
        request_within(&p1002.ua, "BYE", Duration::from_millis(500))
            .await
            .is_none(),
        "the transferor stays"
    );
    // Back to caller and 1002, who hear each other again.
    talk(
        &caller,
        to_switch_a,
        &p1002,
        to_switch_b,
        "after the recall",
    )
    .await;
    let v = view(&node, cid).await;
    assert!(v["transfer"].is_null(), "{v}");
    assert_eq!(v["transfers"][0], "blind:phone>user:1003:486", "{v}");

    // 1002 hangs up: the caller gets the BYE.
    p1002.ua.send(sw, &b.request("BYE", 0, "", "")).await;
    let (bye, from) = caller.ua.expect_request("BYE").await;
    caller.ok(&bye, from).await;
    p1002.ua.expect("200 to BYE", is_ok_to("BYE")).await;
    let cdr = cdr(&node, dir.path(), cid).await;
    assert_eq!(cdr.transfers.as_deref(), Some("blind:phone>user:1003:486"));
    let roles: Vec<&str> = cdr.legs.iter().map(|l| l.role.as_str()).collect();
    assert_eq!(roles, ["caller", "callee"], "1003 never joined");
    assert_eq!(cdr.legs[1].call_id, call_id(&inv_b));
    assert_eq!(cdr.hangup_by, HangupBy::Callee);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phones_attended_transfer_with_replaces_joins_the_caller_and_the_consulted_phone() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(node_config(dir.path(), "47900-47999")).await;
    let sw = udp_addr(&node);
    let (caller, p1002, p1003) = three_phones(sw, 140).await;
    // Call 1: the caller and 1002.
    let cid = "att-phone-1";
    let Up {
        mut a,
        to_switch_a,
        inv_b,
        mut b,
        ..
    } = call(&caller, &p1002, sw, cid, "1002").await;
    // Call 2, the consultation: 1002's phone calls 1003 through the switch.
    let cid2 = "att-phone-2";
    let Up {
        a: a2,
        to_switch_a: to_switch_a2,
        inv_b: inv_c,
        to_switch_b: to_switch_c,
        ..
    } = call(&p1002, &p1003, sw, cid2, "1003").await;
    talk(
        &p1002,
        to_switch_a2,
        &p1003,
        to_switch_c,
        "the consultation",
    )
    .await;
    // 1002 refers the caller to 1003, replacing the consultation dialog (RFC 3891): its
    // Call-ID, the switch's tag and 1002's own.
    let switch_tag = a2
        .to
        .split(";tag=")
        .nth(1)
        .expect("the switch's tag")
        .to_string();
    let refer_to = format!(
        "Refer-To: <sip:1003@{DOMAIN}?Replaces={cid2}%3Bto-tag%3D{switch_tag}%3Bfrom-tag%3Da-{cid2}>\r\nReferred-By: <sip:1002@{DOMAIN}>\r\n"
    );
    p1002
        .ua
        .send(sw, &b.request("REFER", 0, &refer_to, ""))
        .await;
    p1002.ua.expect_status(202).await;
    // 1003's leg moves to call 1 with a re-INVITE in its own dialog, onto call 1's relay.
    let (reinv_c, from_c) = p1003.ua.expect_request("INVITE").await;
    assert_eq!(call_id(&reinv_c), call_id(&inv_c), "1003's own dialog");
    let to_switch_c = sdp_addr(&reinv_c);
    p1003
        .ua
        .send(
            from_c,
            &answer(&reinv_c, 200, "OK", "", p1003.ua.addr, &p1003.rtp.sdp()),
        )
        .await;
    p1003.ua.expect_request("ACK").await;
    // 1002 hears NOTIFY 100 and 200 and a BYE in call 1, and a BYE in the consultation.
    let (mut notified, mut bye_1, mut bye_2) = (false, false, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !(notified && bye_1 && bye_2) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some((m, from)) = p1002.ua.recv(left).await else {
            panic!("1002: NOTIFY 200 {notified}, BYE in call 1 {bye_1}, BYE in call 2 {bye_2}");
        };
        let Some(method) = m.method().map(|x| x.to_string()) else {
            continue;
        };
        match method.as_str() {
            "NOTIFY" => notified |= is_notify(200)(&m),
            "BYE" if call_id(&m) == call_id(&inv_b) => bye_1 = true,
            "BYE" if call_id(&m) == cid2 => bye_2 = true,
            _ => {}
        }
        p1002.ok(&m, from).await;
    }
    // The caller is offered call 1's media afresh, then hears 1003 and is heard.
    let (refresh, from) = caller.ua.expect_request("INVITE").await;
    assert_eq!(call_id(&refresh), cid);
    caller
        .ua
        .send(
            from,
            &answer(&refresh, 200, "OK", "", caller.ua.addr, &caller.rtp.sdp()),
        )
        .await;
    caller.ua.expect_request("ACK").await;
    talk(
        &caller,
        to_switch_a,
        &p1003,
        to_switch_c,
        "after the attended transfer",
    )
    .await;
    caller_hangs_up(&caller, &mut a, &p1003, sw).await;
    let cdr1 = cdr(&node, dir.path(), cid).await;
    assert!(
        cdr1.transfers
            .as_deref()
            .is_some_and(|t| t.starts_with("attended:phone>")),
        "{:?}",
        cdr1.transfers
    );
    let roles: Vec<&str> = cdr1.legs.iter().map(|l| l.role.as_str()).collect();
    assert_eq!(roles, ["caller", "callee", "transfer"]);
    assert_eq!(cdr1.legs[2].call_id, call_id(&inv_c));
    let cdr2 = cdr(&node, dir.path(), cid2).await;
    assert_eq!(cdr2.disconnect_reason, "replaced (attended transfer)");
    assert!(
        metric(
            &node,
            "switchyard_transfers_total",
            &["kind=\"attended\"", "outcome=\"completed\""]
        )
        .await
            >= 1.0
    );
    node.shutdown().await;
}

/// An INVITE from `ua` as `from` (user@domain) to 1002 carrying `replaces`, with `auth`
/// (a Proxy-Authorization value) from its second try on.
fn replacing_invite(
    cid: &str,
    from: &str,
    ua: &Phone,
    replaces: &str,
    cseq: u32,
    auth: &str,
) -> String {
    let sdp = ua.rtp.sdp();
    let auth = if auth.is_empty() {
        String::new()
    } else {
        format!("Proxy-Authorization: {auth}\r\n")
    };
    format!(
        "INVITE sip:1002@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {at};branch=z9hG4bK-{cid}-{cseq};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{from}>;tag=r-{cid}\r\nTo: <sip:1002@{DOMAIN}>\r\nCall-ID: {cid}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:phone@{at}>\r\nReplaces: {replaces}\r\n{auth}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len(),
        at = ua.ua.addr,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_with_replaces_from_a_tenants_phone_takes_over_the_named_leg() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(node_config(dir.path(), "48000-48099")).await;
    let sw = udp_addr(&node);
    let (caller, p1002, p1003, stranger) = (
        Phone::at("127.0.0.151").await,
        Phone::at("127.0.0.152").await,
        Phone::at("127.0.0.153").await,
        Phone::at("127.0.0.154").await,
    );
    p1002.register(sw, "1002").await;
    let cid = "repl-phone-1";
    let Up {
        mut a,
        to_switch_a,
        inv_b,
        ..
    } = call(&caller, &p1002, sw, cid, "1002").await;
    // 1002's dialog as the switch has it: the switch's tag (its INVITE's From) and btag.
    let switch_tag = header(&inv_b, "From")
        .split("tag=")
        .nth(1)
        .expect("the switch's tag")
        .to_string();
    let replaces = format!("{};to-tag=btag;from-tag={switch_tag}", call_id(&inv_b));
    // A caller that is no user of the tenant is refused (403), nothing is replaced.
    stranger
        .ua
        .send(
            sw,
            &replacing_invite(
                "repl-x",
                "mallory@evil.example",
                &stranger,
                &replaces,
                1,
                "",
            ),
        )
        .await;
    stranger.ua.expect_status(403).await;
    // 1003 authenticates (407, then its credentials) and takes 1002's place.
    let rid = "repl-phone-2";
    p1003
        .ua
        .send(
            sw,
            &replacing_invite(rid, "1003@acme.test", &p1003, &replaces, 1, ""),
        )
        .await;
    let (ch, _) = p1003.ua.expect_status(407).await;
    let auth = credentials(
        &ch,
        switchyard::sip::message::HeaderName::ProxyAuthenticate,
        "1003",
        &password("1003"),
        "INVITE",
        &format!("sip:1002@{DOMAIN}"),
    );
    p1003
        .ua
        .send(
            sw,
            &replacing_invite(rid, "1003@acme.test", &p1003, &replaces, 2, &auth),
        )
        .await;
    let (ok, _) = p1003.ua.expect("200 to INVITE", is_ok_to("INVITE")).await;
    assert_eq!(call_id(&ok), rid);
    let to_switch_c = sdp_addr(&ok);
    let mut c = Side::caller(p1003.ua.addr, rid, &ok);
    c.cseq = 2;
    p1003.ua.send(sw, &c.request("ACK", 2, "", "")).await;
    // The replaced leg is let go.
    let (bye, from) = p1002.ua.expect_request("BYE").await;
    assert_eq!(call_id(&bye), call_id(&inv_b));
    p1002.ok(&bye, from).await;
    talk(
        &caller,
        to_switch_a,
        &p1003,
        to_switch_c,
        "after the replacement",
    )
    .await;
    caller_hangs_up(&caller, &mut a, &p1003, sw).await;
    let cdr = cdr(&node, dir.path(), cid).await;
    assert_eq!(
        cdr.transfers.as_deref(),
        Some(format!("replaces:phone>sip:1003@{DOMAIN}").as_str())
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_transfers_a_queue_call_to_another_queue_which_keeps_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(node_config(dir.path(), "47200-47299")).await;
    let sw = udp_addr(&node);
    let (caller, agent) = (Phone::at("127.0.0.71").await, Phone::at("127.0.0.72").await);
    agent.register(sw, "1002").await;
    agent_offerable(&node).await;
    let cid = "xfer-queue-1";
    let Up {
        mut a,
        to_switch_a,
        mut b,
        ..
    } = call(&caller, &agent, sw, cid, "5000").await;
    let v = view(&node, cid).await;
    assert_eq!(v["queue"]["queue"], "acme/support", "{v}");
    assert_eq!(v["queue"]["priority"], 5, "{v}");
    assert_eq!(v["agent"], "a2", "{v}");
    assert_eq!(v["legs"][1]["user"], "agent:a2", "{v}");
    let joined = v["queue"]["joined_ms"].as_u64().unwrap();

    // The agent's phone transfers the caller to sales' number.
    agent.ua.send(sw, &refer(&mut b, "5001")).await;
    agent.ua.expect_status(202).await;
    let (n200, from) = agent.ua.expect("NOTIFY 200", is_notify(200)).await;
    agent.ok(&n200, from).await;
    let (bye, from) = agent.ua.expect_request("BYE").await;
    agent.ok(&bye, from).await;

    // The caller waits in sales with its priority and the time it first joined support.
    let v = view_until(&node, cid, "queued in sales", |v| v["phase"] == "queued").await;
    assert_eq!(v["queue"]["queue"], "acme/sales", "{v}");
    assert_eq!(
        v["queue"]["priority"], 5,
        "the higher priority is kept: {v}"
    );
    assert_eq!(v["queue"]["joined_ms"].as_u64(), Some(joined), "{v}");
    let (status, waiting) = api(&node, "GET", "/queues/acme/sales/waiting", ACME, "").await;
    assert_eq!(status, 200);
    assert_eq!(waiting[0]["call_id"], cid, "{waiting}");
    assert_eq!(waiting[0]["priority"], 5);
    let since_join = switchyard::store::now_unix_ms() as u64 - joined;
    let waited = waiting[0]["waited_ms"].as_u64().unwrap();
    assert!(
        waited + 100 >= since_join,
        "waited {waited} ms, joined {since_join} ms ago"
    );
    // The agent moved on to wrap-up; the caller hears music while it waits.
    agent_state(&node, "a2", "wrap_up").await;
    let (heard, _) = held_audio(&caller, to_switch_a, &agent).await;
    assert!(heard >= 20, "the caller hears music: {heard} packets");

    caller.ua.send(sw, &a.request("BYE", 0, "", "")).await;
    caller.ua.expect("200 to BYE", is_ok_to("BYE")).await;
    let cdr = cdr(&node, dir.path(), cid).await;
    assert_eq!(cdr.transfers.as_deref(), Some("blind:phone>queue:sales"));
    assert_eq!(cdr.queue.as_deref(), Some("acme/sales"));
    let legs: Vec<(&str, &str)> = cdr
        .legs
        .iter()
        .map(|l| (l.role.as_str(), l.end_reason.as_str()))
        .collect();
    assert_eq!(
        legs,
        vec![
            ("caller", "caller hung up in queue"),
            ("callee", "transferred")
        ]
    );
    assert_eq!(cdr.legs[1].party, "agent:a2");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_lists_holds_transfers_and_releases_a_call() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(node_config(dir.path(), "47300-47399")).await;
    let sw = udp_addr(&node);
    let (caller, agent, p1003) = three_phones(sw, 80).await;
    agent_offerable(&node).await;
    let cid = "api-call-1";
    let Up {
        to_switch_a,
        to_switch_b,
        ..
    } = call(&caller, &agent, sw, cid, "5000").await;
    let path = format!("/calls/{cid}");

    // Listed for the node and for acme; another tenant sees nothing of it.
    let (status, list) = api(&node, "GET", "/calls", ACME, "").await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["calls"][0]["call_id"], cid);
    assert_eq!(list["calls"][0]["tenant"], "acme");
    assert_eq!(list["calls"][0]["phase"], "confirmed");
    let (_, list) = api(&node, "GET", "/calls?tenant=acme", API_BEARER, "").await;
    assert_eq!(list["total"], 1, "{list}");
    let (_, list) = api(&node, "GET", "/calls", OTHER, "").await;
    assert_eq!(list["total"], 0, "{list}");
    assert_eq!(
        api(&node, "GET", "/calls?tenant=acme", OTHER, "").await.0,
        404
    );
    let (status, theirs) = api(&node, "GET", &path, OTHER, "").await;
    let (_, missing) = api(&node, "GET", "/calls/no-such-call", OTHER, "").await;
    assert_eq!(status, 404);
    assert_eq!(
        theirs["detail"].as_str().unwrap().replace(cid, "X"),
        missing["detail"]
            .as_str()
            .unwrap()
            .replace("no-such-call", "X"),
        "another tenant's call looks like no call"
    );
    assert_eq!(
        api(&node, "POST", &format!("{path}/hold"), OTHER, "")
            .await
            .0,
        404
    );
    assert_eq!(api(&node, "DELETE", &path, OTHER, "").await.0, 404);
    assert_eq!(
        api(&node, "GET", "/calls?tenant=acme&limit=x", ACME, "")
            .await
            .0,
        400
    );

    talk(&caller, to_switch_a, &agent, to_switch_b, "before hold").await;

    // Hold: the caller hears music, the agent nothing.
    let (status, held) = api(&node, "POST", &format!("{path}/hold"), ACME, "").await;
    assert_eq!(status, 200, "{held}");
    assert_eq!(held["result"], "held");
    assert_eq!(held["call"]["held"], "a", "{held}");
    let (at_caller, at_agent) = held_audio(&caller, to_switch_a, &agent).await;
    assert!(
        at_caller >= 20,
        "the caller hears music: {at_caller} packets"
    );
    assert_eq!(at_agent, 0, "the agent hears nothing");
    let (status, again) = api(&node, "POST", &format!("{path}/hold"), ACME, "").await;
    assert_eq!(status, 409, "{again}");
    assert!(
        metric(
            &node,
            "switchyard_call_control_total",
            &["action=\"hold\"", "result=\"ok\""]
        )
        .await
            >= 1.0
    );
    assert!(
        metric(
            &node,
            "switchyard_call_control_total",
            &["action=\"hold\"", "result=\"refused\""]
        )
        .await
            >= 1.0
    );

    // Unhold: they hear each other again.
    let (status, unheld) = api(&node, "POST", &format!("{path}/unhold"), ACME, "").await;
    assert_eq!(status, 200, "{unheld}");
    assert!(unheld["call"]["held"].is_null());
    talk(&caller, to_switch_a, &agent, to_switch_b, "after unhold").await;

    // Transfer: a bad target is refused, no consultation to complete, blind to 1003 works.
    let xfer = format!("{path}/transfer");
    let (status, _) = api(&node, "POST", &format!("{path}/consult/complete"), ACME, "").await;
    assert_eq!(status, 409, "no consultation in progress");
    let (status, _) = api(&node, "POST", &xfer, ACME, r#"{"target":"7777"}"#).await;
    assert_eq!(status, 409, "no such user or number is unavailable");
    let (status, _) = api(&node, "POST", &xfer, ACME, r#"{"target":"sip:x@y"}"#).await;
    assert_eq!(status, 400);
    let (status, moved) = api(&node, "POST", &xfer, ACME, r#"{"target":"1003"}"#).await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["result"], "user:1003");
    let (inv_c, from_c) = p1003.ua.expect_request("INVITE").await;
    let to_switch_c = sdp_addr(&inv_c);
    p1003
        .ua
        .send(
            from_c,
            &answer(&inv_c, 200, "OK", "ctag", p1003.ua.addr, &p1003.rtp.sdp()),
        )
        .await;
    p1003.ua.expect_request("ACK").await;
    let (bye, from) = agent.ua.expect_request("BYE").await;
    agent.ok(&bye, from).await;
    agent_state(&node, "a2", "wrap_up").await;
    talk(
        &caller,
        to_switch_a,
        &p1003,
        to_switch_c,
        "after the API's transfer",
    )
    .await;
    let v = view(&node, cid).await;
    assert_eq!(v["legs"][1]["user"], "1003", "{v}");
    assert_eq!(v["transfers"][0], "blind:api>user:1003", "{v}");

    // Release: both legs get a BYE, the call is gone.
    let (status, released) = api(&node, "DELETE", &path, ACME, "").await;
    assert_eq!(status, 202, "{released}");
    let ((bye_a, from_a), (bye_c, from_c)) = tokio::join!(
        caller.ua.expect_request("BYE"),
        p1003.ua.expect_request("BYE")
    );
    caller.ok(&bye_a, from_a).await;
    p1003.ok(&bye_c, from_c).await;
    let cdr = cdr(&node, dir.path(), cid).await;
    assert_eq!(cdr.disconnect_reason, "released by api");
    assert_eq!(cdr.hangup_by, HangupBy::System);
    assert_eq!(cdr.transfers.as_deref(), Some("blind:api>user:1003"));
    assert_eq!(cdr.legs.len(), 3);
    assert_eq!(api(&node, "GET", &path, ACME, "").await.0, 404);
    assert!(
        metric(
            &node,
            "switchyard_call_control_total",
            &["action=\"release\"", "result=\"ok\""]
        )
        .await
            >= 1.0
    );
    node.shutdown().await;
}

/// Injects a panic into the call's actor and waits for its successor.
async fn crash_call(node: &Node, cid: &str) {
    let before = node
        .ctx
        .directory
        .lookup(cid.as_bytes())
        .expect("call actor");
    before.send_message(CallMsg::InjectPanic).unwrap();
    let restarted = wait_until(Duration::from_secs(5), || {
        node.ctx
            .directory
            .lookup(cid.as_bytes())
            .is_some_and(|n| n.get_id() != before.get_id())
    })
    .await;
    assert!(restarted, "a new call actor owns the call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_call_stays_held_when_its_actor_panics() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(node_config(dir.path(), "47400-47499")).await;
    let sw = udp_addr(&node);
    let (caller, p1002) = (Phone::at("127.0.0.91").await, Phone::at("127.0.0.92").await);
    p1002.register(sw, "1002").await;
    let cid = "panic-held-1";
    let Up {
        mut a,
        to_switch_a,
        to_switch_b,
        ..
    } = call(&caller, &p1002, sw, cid, "1002").await;
    talk(&caller, to_switch_a, &p1002, to_switch_b, "before hold").await;
    let path = format!("/calls/{cid}");
    assert_eq!(
        api(&node, "POST", &format!("{path}/hold"), ACME, "")
            .await
            .0,
        200
    );

    crash_call(&node, cid).await;
    let v = view(&node, cid).await;
    assert_eq!(v["held"], "a", "still held after the restart: {v}");
    let (at_caller, at_callee) = held_audio(&caller, to_switch_a, &p1002).await;
    assert!(at_caller >= 20, "still music: {at_caller} packets");
    assert_eq!(at_callee, 0, "the callee still hears nothing");
    // The restarted actor takes the unhold; the call goes on.
    assert_eq!(
        api(&node, "POST", &format!("{path}/unhold"), ACME, "")
            .await
            .0,
        200
    );
    talk(
        &caller,
        to_switch_a,
        &p1002,
        to_switch_b,
        "after restart and unhold",
    )
    .await;
    caller_hangs_up(&caller, &mut a, &p1002, sw).await;
    let cdr = cdr(&node, dir.path(), cid).await;
    assert_eq!(cdr.hangup_by, HangupBy::Caller);
    node.shutdown().await;
}

/// A call actor that panics while the transfer target rings resumes the call as it was
/// before the transfer: the target's INVITE is cancelled, the transferor is told the
/// transfer failed (NOTIFY 500) and talks with the caller again (a recall); the caller, up
/// all along, gets no final error for its answered INVITE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_actor_panics_while_its_transfer_rings_goes_back_to_the_transferor() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(node_config(dir.path(), "47500-47599")).await;
    let sw = udp_addr(&node);
    let (caller, p1002, p1003) = three_phones(sw, 100).await;
    let cid = "panic-xfer-1";
    let Up {
        mut a,
        to_switch_a,
        to_switch_b,
        mut b,
        ..
    } = call(&caller, &p1002, sw, cid, "1002").await;
    p1002.ua.send(sw, &refer(&mut b, "1003")).await;
    p1002.ua.expect_status(202).await;
    let (n100, from) = p1002.ua.expect("NOTIFY 100", is_notify(100)).await;
    p1002.ok(&n100, from).await;
    let (inv_c, from_c) = p1003.ua.expect_request("INVITE").await;
    p1003
        .ua
        .send(
            from_c,
            &answer(&inv_c, 180, "Ringing", "ctag", p1003.ua.addr, ""),
        )
        .await;
    view_until(&node, cid, "the target rings", |v| v["phase"] == "early").await;

    crash_call(&node, cid).await;
    let (cancel, from) = p1003.ua.expect_request("CANCEL").await;
    assert_eq!(call_id(&cancel), call_id(&inv_c));
    p1003.ok(&cancel, from).await;
    p1003
        .ua
        .send(
            from_c,
            &answer(&inv_c, 487, "Request Terminated", "ctag", p1003.ua.addr, ""),
        )
        .await;
    let (n500, from) = p1002.ua.expect("NOTIFY 500", is_notify(500)).await;
    p1002.ok(&n500, from).await;
    let v = view_until(&node, cid, "back to the transferor", |v| {
        v["phase"] == "confirmed" && v["transfer"].is_null()
    })
    .await;
    assert_eq!(v["legs"][1]["user"], "1002", "{v}");
    // Nothing for the caller but audio: no final error to its answered INVITE, no BYE.
    if let Some((m, _)) = caller.ua.recv(Duration::from_millis(500)).await {
        panic!("the caller got {:?}", m.start);
    }
    talk(
        &caller,
        to_switch_a,
        &p1002,
        to_switch_b,
        "recalled after the restart",
    )
    .await;
    caller_hangs_up(&caller, &mut a, &p1002, sw).await;
    let cdr = cdr(&node, dir.path(), cid).await;
    assert!(
        cdr.transfers
            .as_deref()
            .is_some_and(|t| t.starts_with("blind:phone>user:1003:")),
        "the failed attempt is in the chain: {:?}",
        cdr.transfers
    );
    node.shutdown().await;
}

/// An API consultation whose target answered: the target's INVITE, where it sends its audio,
/// and where the agent (moved onto the consultation by a re-INVITE) sends its own.
struct Consulting {
    inv_c: Message,
    from_c: SocketAddr,
    to_switch_c: SocketAddr,
    agent_to_consult: SocketAddr,
}

/// `request` (a consult or an attended transfer to 1003) on `cid`; 1003 answers and the
/// agent's phone takes the re-INVITE onto the consultation.
async fn consult(
    node: &Node,
    cid: &str,
    request: (&str, &str),
    agent: &Phone,
    p1003: &Phone,
) -> Consulting {
    let (status, started) = api(
        node,
        "POST",
        &format!("/calls/{cid}/{}", request.0),
        ACME,
        request.1,
    )
    .await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["result"], "user:1003", "{started}");
    assert_eq!(
        started["call"]["held"], "a",
        "the customer holds: {started}"
    );
    let (inv_c, from_c) = p1003.ua.expect_request("INVITE").await;
    let to_switch_c = sdp_addr(&inv_c);
    p1003
        .ua
        .send(
            from_c,
            &answer(&inv_c, 200, "OK", "ctag", p1003.ua.addr, &p1003.rtp.sdp()),
        )
        .await;
    p1003.ua.expect_request("ACK").await;
    let (moved, from) = agent.ua.expect_request("INVITE").await;
    let agent_to_consult = sdp_addr(&moved);
    agent
        .ua
        .send(
            from,
            &answer(&moved, 200, "OK", "", agent.ua.addr, &agent.rtp.sdp()),
        )
        .await;
    agent.ua.expect_request("ACK").await;
    view_until(node, cid, "the consultation is up", |v| {
        v["consult"]["up"] == true
    })
    .await;
    Consulting {
        inv_c,
        from_c,
        to_switch_c,
        agent_to_consult,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_consults_then_hands_a_queue_call_over_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(node_config(dir.path(), "47600-47699")).await;
    let sw = udp_addr(&node);
    let (caller, agent, p1003) = three_phones(sw, 110).await;
    agent_offerable(&node).await;
    let cid = "api-consult-1";
    let Up {
        mut a, to_switch_a, ..
    } = call(&caller, &agent, sw, cid, "5000").await;

    // An attended transfer starts with a consultation: the agent talks to 1003 on the
    // consultation's session while the caller hears music.
    let body = r#"{"target":"1003","mode":"attended"}"#;
    let c = consult(&node, cid, ("transfer", body), &agent, &p1003).await;
    let v = view(&node, cid).await;
    let positions: Vec<&str> = v["legs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["position"].as_str().unwrap())
        .collect();
    assert_eq!(positions, ["a", "b", "consulted"], "{v}");
    let (music, _) = held_audio(&caller, to_switch_a, &p1003).await;
    assert!(music >= 20, "the caller hears music: {music} packets");
    talk(
        &agent,
        c.agent_to_consult,
        &p1003,
        c.to_switch_c,
        "agent and 1003 consult",
    )
    .await;

    // Complete: 1003 is re-INVITEd onto the call in the agent's place; the agent leaves.
    let (status, done) = api(
        &node,
        "POST",
        &format!("/calls/{cid}/consult/complete"),
        ACME,
        "",
    )
    .await;
    assert_eq!(status, 200, "{done}");
    let (join, _) = p1003.ua.expect_request("INVITE").await;
    assert_eq!(
        call_id(&join),
        call_id(&c.inv_c),
        "the consultation's own dialog"
    );
    let to_switch_c = sdp_addr(&join);
    p1003
        .ua
        .send(
            c.from_c,
            &answer(&join, 200, "OK", "", p1003.ua.addr, &p1003.rtp.sdp()),
        )
        .await;
    p1003.ua.expect_request("ACK").await;
    let (bye, from) = agent.ua.expect_request("BYE").await;
    agent.ok(&bye, from).await;
    agent_state(&node, "a2", "wrap_up").await;
    talk(
        &caller,
        to_switch_a,
        &p1003,
        to_switch_c,
        "caller and 1003 after the handover",
    )
    .await;
    let v = view(&node, cid).await;
    assert!(v["consult"].is_null() && v["held"].is_null(), "{v}");
    assert_eq!(v["legs"][1]["user"], "1003", "{v}");

    caller_hangs_up(&caller, &mut a, &p1003, sw).await;
    let cdr = cdr(&node, dir.path(), cid).await;
    assert_eq!(cdr.transfers.as_deref(), Some("attended:api>user:1003"));
    assert_eq!(cdr.queue.as_deref(), Some("acme/support"));
    assert!(
        metric(
            &node,
            "switchyard_call_control_total",
            &["action=\"consult_complete\"", "result=\"ok\""]
        )
        .await
            >= 1.0
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_consultation_brings_the_agent_back() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(node_config(dir.path(), "47700-47799")).await;
    let sw = udp_addr(&node);
    let (caller, p1002, p1003) = three_phones(sw, 120).await;
    let cid = "api-consult-2";
    let Up {
        mut a, to_switch_a, ..
    } = call(&caller, &p1002, sw, cid, "1002").await;
    let c = consult(
        &node,
        cid,
        ("consult", r#"{"target":"1003"}"#),
        &p1002,
        &p1003,
    )
    .await;
    let (status, again) = api(
        &node,
        "POST",
        &format!("/calls/{cid}/consult"),
        ACME,
        r#"{"target":"1003"}"#,
    )
    .await;
    assert_eq!(status, 409, "one consultation at a time: {again}");

    let (status, cancelled) = api(
        &node,
        "POST",
        &format!("/calls/{cid}/consult/cancel"),
        ACME,
        "",
    )
    .await;
    assert_eq!(status, 200, "{cancelled}");
    let (bye, from) = p1003.ua.expect_request("BYE").await;
    assert_eq!(call_id(&bye), call_id(&c.inv_c));
    p1003.ok(&bye, from).await;
    let (back, from) = p1002.ua.expect_request("INVITE").await;
    let to_switch_b = sdp_addr(&back);
    p1002
        .ua
        .send(
            from,
            &answer(&back, 200, "OK", "", p1002.ua.addr, &p1002.rtp.sdp()),
        )
        .await;
    p1002.ua.expect_request("ACK").await;
    talk(
        &caller,
        to_switch_a,
        &p1002,
        to_switch_b,
        "back with the agent",
    )
    .await;
    let v = view(&node, cid).await;
    assert!(v["consult"].is_null() && v["held"].is_null(), "{v}");
    caller_hangs_up(&caller, &mut a, &p1002, sw).await;
    let cdr = cdr(&node, dir.path(), cid).await;
    assert_eq!(cdr.transfers, None, "nothing was transferred");
    node.shutdown().await;
}

/// A call actor that panics while its agent consults resumes with the agent back with the
/// customer: the consultation's target gets a BYE, the agent a re-INVITE onto the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_actor_panics_while_consulting_is_back_with_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(node_config(dir.path(), "47800-47899")).await;
    let sw = udp_addr(&node);
    let (caller, p1002, p1003) = three_phones(sw, 130).await;
    let cid = "panic-consult-1";
    let Up {
        mut a, to_switch_a, ..
    } = call(&caller, &p1002, sw, cid, "1002").await;
    let c = consult(
        &node,
        cid,
        ("consult", r#"{"target":"1003"}"#),
        &p1002,
        &p1003,
    )
    .await;

    crash_call(&node, cid).await;
    let (bye, from) = p1003.ua.expect_request("BYE").await;
    assert_eq!(call_id(&bye), call_id(&c.inv_c));
    p1003.ok(&bye, from).await;
    let (back, from) = p1002.ua.expect_request("INVITE").await;
    let to_switch_b = sdp_addr(&back);
    p1002
        .ua
        .send(
            from,
            &answer(&back, 200, "OK", "", p1002.ua.addr, &p1002.rtp.sdp()),
        )
        .await;
    p1002.ua.expect_request("ACK").await;
    let v = view_until(&node, cid, "settled after the restart", |v| {
        v["consult"].is_null()
    })
    .await;
    assert_eq!(v["phase"], "confirmed", "{v}");
    talk(
        &caller,
        to_switch_a,
        &p1002,
        to_switch_b,
        "back with the agent after the restart",
    )
    .await;
    caller_hangs_up(&caller, &mut a, &p1002, sw).await;
    node.shutdown().await;
}

// ---- the mixer: three-way calls and supervision (issue 18) ----

/// The caller's, the agent's and the third phone's tones.
const TONES: [f32; 3] = [500.0, 1100.0, 1700.0];

/// Of [`TONES`], those a phone heard (PCMU payloads): a strong component at the frequency.
fn tones_in(payloads: &[Vec<u8>]) -> Vec<f32> {
    use switchyard::media::{g711::Codec, tone};
    let pcm: Vec<i16> = payloads
        .iter()
        .flatten()
        .map(|&b| Codec::Pcmu.decode(b))
        .collect();
    TONES
        .iter()
        .copied()
        .filter(|&f| tone::goertzel_power(&pcm, f, 8000) > 2_000_000.0)
        .collect()
}

/// The phones send their tone of [`TONES`] (the first to the switch address given with it)
/// for 1.2 s; the tones each heard, and how many packets.
async fn talk_tones(phones: &[(&Phone, SocketAddr)]) -> Vec<(Vec<f32>, usize)> {
    for (p, _) in phones {
        p.rtp.drain();
    }
    let senders: Vec<_> = phones
        .iter()
        .enumerate()
        .map(|(i, (p, to))| p.rtp.send_tone(*to, TONES[i], 60))
        .collect();
    let window = Duration::from_millis(1400);
    let listeners: Vec<_> = phones
        .iter()
        .map(|(p, _)| {
            let rtp = Rtp {
                sock: p.rtp.sock.clone(),
                addr: p.rtp.addr,
            };
            tokio::spawn(async move { rtp.listen(window).await })
        })
        .collect();
    let mut heard = Vec::with_capacity(listeners.len());
    for l in listeners {
        let h = l.await.unwrap();
        heard.push((tones_in(&h), h.len()));
    }
    for s in senders {
        s.await.unwrap();
    }
    heard
}

/// Asserts what each phone heard: `expected[i]` are the indices into [`TONES`] phone `i`
/// must hear, and no other.
fn assert_heard(heard: &[(Vec<f32>, usize)], expected: &[&[usize]], what: &str) {
    for (i, ((tones, packets), want)) in heard.iter().zip(expected).enumerate() {
        let want: Vec<f32> = want.iter().map(|&k| TONES[k]).collect();
        assert!(*packets >= 40, "{what}: phone {i} got {packets} packets");
        assert_eq!(tones, &want, "{what}: phone {i} hears");
    }
}

/// `POST /calls/{cid}/{what}` with `body`; 1003's phone rings and answers. Its INVITE,
/// where it sends to and where the switch reaches it.
async fn third_party_joins(
    node: &Node,
    cid: &str,
    what: &str,
    body: &str,
    p1003: &Phone,
) -> (Message, SocketAddr, SocketAddr) {
    let (status, started) = api(node, "POST", &format!("/calls/{cid}/{what}"), ACME, body).await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["result"], "user:1003", "{started}");
    assert!(started["call"]["held"].is_null(), "nobody holds: {started}");
    let (inv_c, from_c) = p1003.ua.expect_request("INVITE").await;
    let to_switch_c = sdp_addr(&inv_c);
    p1003
        .ua
        .send(
            from_c,
            &answer(&inv_c, 200, "OK", "ctag", p1003.ua.addr, &p1003.rtp.sdp()),
        )
        .await;
    p1003.ua.expect_request("ACK").await;
    view_until(node, cid, "the third party is in the mix", |v| {
        v["consult"]["up"] == true
    })
    .await;
    (inv_c, to_switch_c, from_c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_way_call_mixes_three_phones_and_two_stay_when_one_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(node_config(dir.path(), "48100-48199")).await;
    let sw = udp_addr(&node);
    let (caller, agent, p1003) = three_phones(sw, 140).await;
    agent_offerable(&node).await;
    let cid = "3way-node-1";
    let Up {
        mut a,
        to_switch_a,
        to_switch_b,
        ..
    } = call(&caller, &agent, sw, cid, "5000").await;
    // Another tenant's token sees no such call.
    let (status, _) = api(
        &node,
        "POST",
        &format!("/calls/{cid}/conference"),
        OTHER,
        r#"{"target":"1003"}"#,
    )
    .await;
    assert_eq!(status, 404);

    let (inv_c, to_switch_c, from_c) =
        third_party_joins(&node, cid, "conference", r#"{"target":"1003"}"#, &p1003).await;
    let v = view(&node, cid).await;
    assert_eq!(v["consult"]["kind"], "conference", "{v}");
    let phones = [
        (&caller, to_switch_a),
        (&agent, to_switch_b),
        (&p1003, to_switch_c),
    ];
    let heard = talk_tones(&phones).await;
    assert_heard(&heard, &[&[1, 2], &[0, 2], &[0, 1]], "three-way");

    // The caller muted: agent and 1003 hear only each other, the caller still hears both.
    let path = format!("/calls/{cid}/conference");
    let party = |body: &'static str| api(&node, "PUT", &path, ACME, body);
    let (status, v) = party(r#"{"party":"caller","mute":true}"#).await;
    assert_eq!((status, &v["result"]), (200, &Value::from("muted")), "{v}");
    let heard = talk_tones(&phones).await;
    assert_heard(&heard, &[&[1, 2], &[2], &[1]], "the caller muted");
    // Unmuted, and 1003 deaf: it hears silence, the others hear everyone.
    let (status, _) = party(r#"{"party":"caller","mute":false}"#).await;
    assert_eq!(status, 200);
    let (status, _) = party(r#"{"party":"third","deaf":true}"#).await;
    assert_eq!(status, 200);
    let heard = talk_tones(&phones).await;
    assert_heard(&heard, &[&[1, 2], &[0, 2], &[]], "1003 deaf");

    // 1003 hangs up: the caller and the agent go on talking.
    let mut c_side = Side::callee(p1003.ua.addr, &inv_c, "ctag");
    p1003
        .ua
        .send(from_c, &c_side.request("BYE", 0, "", ""))
        .await;
    p1003.ua.expect("200 to BYE", is_ok_to("BYE")).await;
    view_until(&node, cid, "the third party left", |v| {
        v["consult"].is_null()
    })
    .await;
    talk(
        &caller,
        to_switch_a,
        &agent,
        to_switch_b,
        "caller and agent after 1003 left",
    )
    .await;
    caller_hangs_up(&caller, &mut a, &agent, sw).await;
    let cdr = cdr(&node, dir.path(), cid).await;
    assert_eq!(cdr.transfers.as_deref(), Some("conference:api>user:1003"));
    let third = cdr
        .legs
        .iter()
        .find(|l| l.role == "conference")
        .expect("the third party's leg");
    assert_eq!(third.end_reason, "bye");
    assert!(metric(&node, "switchyard_mixer_frames_total", &["kind=\"mixed\""]).await > 100.0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_caller_leaves_a_three_way_the_agent_and_third_party_talk_on_even_across_a_panic()
{
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(node_config(dir.path(), "48200-48299")).await;
    let sw = udp_addr(&node);
    let (caller, agent, p1003) = three_phones(sw, 150).await;
    agent_offerable(&node).await;
    let cid = "3way-node-2";
    let Up {
        mut a,
        to_switch_a,
        to_switch_b,
        mut b,
        ..
    } = call(&caller, &agent, sw, cid, "5000").await;
    let (_, to_switch_c, _) =
        third_party_joins(&node, cid, "conference", r#"{"target":"1003"}"#, &p1003).await;

    // The call's actor panics: the mix goes on, and so does the call.
    crash_call(&node, cid).await;
    let phones = [
        (&caller, to_switch_a),
        (&agent, to_switch_b),
        (&p1003, to_switch_c),
    ];
    let heard = talk_tones(&phones).await;
    assert_heard(
        &heard,
        &[&[1, 2], &[0, 2], &[0, 1]],
        "three-way after a panic",
    );

    // The caller hangs up: answered at once, agent and 1003 stay connected.
    caller.ua.send(sw, &a.request("BYE", 0, "", "")).await;
    caller.ua.expect("200 to BYE", is_ok_to("BYE")).await;
    let heard = talk_tones(&[(&p1003, to_switch_c), (&agent, to_switch_b)]).await;
    // Here 1003 sends TONES[0] and the agent TONES[1].
    assert_heard(
        &heard,
        &[&[1], &[0]],
        "agent and 1003 after the caller left",
    );
    assert!(
        request_within(&agent.ua, "BYE", Duration::from_millis(100))
            .await
            .is_none(),
        "the agent was not hung up on"
    );

    // The agent hangs up: the call ends, 1003 gets the BYE.
    agent.ua.send(sw, &b.request("BYE", 0, "", "")).await;
    agent.ua.expect("200 to BYE", is_ok_to("BYE")).await;
    let (bye, from) = p1003.ua.expect_request("BYE").await;
    p1003.ok(&bye, from).await;
    let cdr = cdr(&node, dir.path(), cid).await;
    assert_eq!(cdr.transfers.as_deref(), Some("conference:api>user:1003"));
    assert!(
        wait_until(Duration::from_secs(5), || node
            .ctx
            .directory
            .lookup(cid.as_bytes())
            .is_none())
        .await
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_listens_whispers_and_barges_in_and_others_may_not() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(node_config(dir.path(), "48300-48399")).await;
    let sw = udp_addr(&node);
    let (caller, agent, p1003) = three_phones(sw, 160).await;
    agent_offerable(&node).await;
    let cid = "monitor-node-1";
    let Up {
        mut a,
        to_switch_a,
        to_switch_b,
        ..
    } = call(&caller, &agent, sw, cid, "5000").await;
    let path = format!("/calls/{cid}/monitor");

    // 1001 supervises nothing: 403 with a problem body, and nothing rings.
    let (status, problem) = api(
        &node,
        "POST",
        &path,
        ACME,
        r#"{"supervisor":"1001","mode":"listen"}"#,
    )
    .await;
    assert_eq!(status, 403, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("supervisor")),
        "{problem}"
    );
    let (status, _) = api(
        &node,
        "POST",
        &path,
        ACME,
        r#"{"supervisor":"1003","mode":"spy"}"#,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = api(&node, "PUT", &path, ACME, r#"{"mode":"barge"}"#).await;
    assert_eq!(status, 409, "not monitored yet");

    let (_, to_switch_c, from_c) = third_party_joins(
        &node,
        cid,
        "monitor",
        r#"{"supervisor":"1003","mode":"listen"}"#,
        &p1003,
    )
    .await;
    let v = view(&node, cid).await;
    assert_eq!(v["consult"]["kind"], "monitor", "{v}");
    assert_eq!(v["consult"]["mode"], "listen", "{v}");
    let phones = [
        (&caller, to_switch_a),
        (&agent, to_switch_b),
        (&p1003, to_switch_c),
    ];
    // Caller 0, agent 1, supervisor 2.
    let heard = talk_tones(&phones).await;
    assert_heard(&heard, &[&[1], &[0], &[0, 1]], "listen");

    let (status, v) = api(&node, "PUT", &path, ACME, r#"{"mode":"whisper"}"#).await;
    assert_eq!(status, 200, "{v}");
    let heard = talk_tones(&phones).await;
    assert_heard(&heard, &[&[1], &[0, 2], &[0, 1]], "whisper");

    let (status, v) = api(&node, "PUT", &path, ACME, r#"{"mode":"barge"}"#).await;
    assert_eq!(status, 200, "{v}");
    let heard = talk_tones(&phones).await;
    assert_heard(&heard, &[&[1, 2], &[0, 2], &[0, 1]], "barge");

    // Another tenant cannot end it; acme's token can: the supervisor gets BYE.
    let (status, _) = api(&node, "DELETE", &path, OTHER, "").await;
    assert_eq!(status, 404);
    let (status, v) = api(&node, "DELETE", &path, ACME, "").await;
    assert_eq!(status, 200, "{v}");
    let (bye, _) = p1003.ua.expect_request("BYE").await;
    p1003.ok(&bye, from_c).await;
    talk(
        &caller,
        to_switch_a,
        &agent,
        to_switch_b,
        "caller and agent after the monitor",
    )
    .await;
    caller_hangs_up(&caller, &mut a, &agent, sw).await;
    let cdr = cdr(&node, dir.path(), cid).await;
    assert_eq!(
        cdr.transfers.as_deref(),
        Some("monitor:listen>user:1003,monitor:whisper>user:1003,monitor:barge>user:1003")
    );
    assert!(cdr.legs.iter().any(|l| l.role == "monitor"));
    assert!(
        metric(
            &node,
            "switchyard_call_mixes_total",
            &["kind=\"monitor\"", "outcome=\"refused\""]
        )
        .await
            >= 1.0
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consultation_completed_as_a_conference_mixes_all_three() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(node_config(dir.path(), "48400-48499")).await;
    let sw = udp_addr(&node);
    let (caller, agent, p1003) = three_phones(sw, 170).await;
    agent_offerable(&node).await;
    let cid = "consult-conf-node-1";
    let Up {
        mut a, to_switch_a, ..
    } = call(&caller, &agent, sw, cid, "5000").await;
    let c = consult(
        &node,
        cid,
        ("consult", r#"{"target":"1003"}"#),
        &agent,
        &p1003,
    )
    .await;
    let (status, v) = api(
        &node,
        "POST",
        &format!("/calls/{cid}/consult/conference"),
        ACME,
        "",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v["call"]["held"].is_null(),
        "the customer no longer holds: {v}"
    );
    let phones = [
        (&caller, to_switch_a),
        (&agent, c.agent_to_consult),
        (&p1003, c.to_switch_c),
    ];
    let heard = talk_tones(&phones).await;
    assert_heard(
        &heard,
        &[&[1, 2], &[0, 2], &[0, 1]],
        "consultation as a conference",
    );

    // 1003 is let go: the agent is re-INVITEd back to the customer's session.
    let (status, _) = api(
        &node,
        "DELETE",
        &format!("/calls/{cid}/conference"),
        ACME,
        "",
    )
    .await;
    assert_eq!(status, 200);
    let (bye, _) = p1003.ua.expect_request("BYE").await;
    p1003.ok(&bye, c.from_c).await;
    let (back, from) = agent.ua.expect_request("INVITE").await;
    let to_switch_b = sdp_addr(&back);
    agent
        .ua
        .send(
            from,
            &answer(&back, 200, "OK", "", agent.ua.addr, &agent.rtp.sdp()),
        )
        .await;
    agent.ua.expect_request("ACK").await;
    talk(
        &caller,
        to_switch_a,
        &agent,
        to_switch_b,
        "caller and agent after the conference",
    )
    .await;
    caller_hangs_up(&caller, &mut a, &agent, sw).await;
    let cdr = cdr(&node, dir.path(), cid).await;
    assert_eq!(cdr.transfers.as_deref(), Some("conference:api>user:1003"));
    node.shutdown().await;
}

// ---- standalone conferences (issue 18) ----

/// `phone` dials `number` (a `conference:<id>` number): the switch answers it. Its dialog
/// and where it sends its audio.
async fn dial_in(phone: &Phone, sw: SocketAddr, cid: &str, number: &str) -> (Side, SocketAddr) {
    phone
        .ua
        .send(
            sw,
            &invite_sdp(cid, number, phone.ua.addr, &phone.rtp.sdp()),
        )
        .await;
    let (ok, _) = phone.ua.expect("200 to INVITE", is_ok_to("INVITE")).await;
    let mut a = Side::caller(phone.ua.addr, cid, &ok);
    phone.ua.send(sw, &a.request("ACK", 1, "", "")).await;
    (a, sdp_addr(&ok))
}

/// Polls `GET /conferences/acme/room` until `pred` holds (bounded: 5 s); the last answer.
async fn room_until(node: &Node, what: &str, pred: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, v) = api(node, "GET", "/conferences/acme/room", ACME, "").await;
        if pred(status, &v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {status} {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conference_room_mixes_dial_in_and_dial_out_phones_mutes_kicks_and_ends_with_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = node_config(dir.path(), "48600-48699");
    c.tenants[0].numbers.push(NumberConfig {
        number: "7000".into(),
        target: "conference:room".into(),
        priority: 0,
    });
    let node = start_with(c).await;
    let sw = udp_addr(&node);
    let (caller, p1002, p1003) = three_phones(sw, 180).await;

    // Rooms are the tenant's: another tenant's token cannot make one in acme.
    let (status, _) = api(
        &node,
        "POST",
        "/conferences/acme",
        OTHER,
        r#"{"id":"room"}"#,
    )
    .await;
    assert_eq!(status, 404);
    let (status, v) = api(&node, "POST", "/conferences/acme", ACME, r#"{"id":"room"}"#).await;
    assert_eq!(status, 201, "{v}");
    let (status, _) = api(&node, "POST", "/conferences/acme", ACME, r#"{"id":"room"}"#).await;
    assert_eq!(status, 409, "the id is taken");
    let (status, _) = api(&node, "POST", "/conferences/acme", ACME, r#"{"id":"a/b"}"#).await;
    assert_eq!(status, 400);

    // Two phones dial in; 1003 is dialled out to and answers with its offer.
    let (mut a1, to_1) = dial_in(&caller, sw, "conf-in-1", "7000").await;
    let (mut a2, to_2) = dial_in(&p1002, sw, "conf-in-2", "7000").await;
    let (status, v) = api(
        &node,
        "POST",
        "/conferences/acme/room/participants",
        ACME,
        r#"{"target":"1003"}"#,
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let out_cid = v["call_id"]
        .as_str()
        .expect("the dial-out's call")
        .to_string();
    let (inv_c, from_c) = p1003.ua.expect_request("INVITE").await;
    assert!(inv_c.body.is_empty(), "the phone makes the offer");
    p1003
        .ua
        .send(
            from_c,
            &answer(&inv_c, 200, "OK", "ctag", p1003.ua.addr, &p1003.rtp.sdp()),
        )
        .await;
    let (ack, _) = p1003.ua.expect_request("ACK").await;
    let to_3 = sdp_addr(&ack);
    let v = room_until(&node, "three in the room", |s, v| {
        s == 200 && v["participants"].as_array().is_some_and(|p| p.len() == 3)
    })
    .await;
    assert_eq!(v["participants"][2]["via"], "dial-out", "{v}");
    let (status, _) = api(&node, "GET", "/conferences/acme/room", OTHER, "").await;
    assert_eq!(status, 404, "another tenant sees no such room");

    let phones = [(&caller, to_1), (&p1002, to_2), (&p1003, to_3)];
    let heard = talk_tones(&phones).await;
    assert_heard(&heard, &[&[1, 2], &[0, 2], &[0, 1]], "the room");

    // A panic in a participant's call actor changes nothing.
    crash_call(&node, "conf-in-1").await;
    // The first caller muted: the others hear only each other; it still hears both.
    let path = "/conferences/acme/room/participants/conf-in-1";
    let (status, v) = api(&node, "PUT", path, ACME, r#"{"mute":true}"#).await;
    assert_eq!((status, &v["muted"]), (200, &Value::from(true)), "{v}");
    let heard = talk_tones(&phones).await;
    assert_heard(&heard, &[&[1, 2], &[2], &[1]], "the first caller muted");
    // Unmuted, and 1003 deaf: it hears silence.
    let (status, _) = api(&node, "PUT", path, ACME, r#"{"mute":false}"#).await;
    assert_eq!(status, 200);
    let path_3 = format!("/conferences/acme/room/participants/{out_cid}");
    let (status, _) = api(&node, "PUT", &path_3, ACME, r#"{"deaf":true}"#).await;
    assert_eq!(status, 200);
    let heard = talk_tones(&phones).await;
    assert_heard(&heard, &[&[1, 2], &[0, 2], &[]], "1003 deaf");

    // 1003 is kicked: a BYE; the two others talk on.
    let (status, v) = api(&node, "DELETE", &path_3, ACME, "").await;
    assert_eq!(status, 202, "{v}");
    let (bye, from) = p1003.ua.expect_request("BYE").await;
    p1003.ok(&bye, from).await;
    room_until(&node, "two left", |s, v| {
        s == 200 && v["participants"].as_array().is_some_and(|p| p.len() == 2)
    })
    .await;
    talk(
        &caller,
        to_1,
        &p1002,
        to_2,
        "the two dial-ins after the kick",
    )
    .await;

    // The callers hang up; the room ends with the last.
    caller.ua.send(sw, &a1.request("BYE", 0, "", "")).await;
    caller.ua.expect("200 to BYE", is_ok_to("BYE")).await;
    p1002.ua.send(sw, &a2.request("BYE", 0, "", "")).await;
    p1002.ua.expect("200 to BYE", is_ok_to("BYE")).await;
    room_until(&node, "the room ended", |s, _| s == 404).await;
    let dialled_in = cdr(&node, dir.path(), "conf-in-1").await;
    assert_eq!(dialled_in.target.as_deref(), Some("conference:room"));
    assert!(dialled_in.answer_at.is_some());
    let kicked = cdr(&node, dir.path(), &out_cid).await;
    assert_eq!(
        kicked.disconnect_reason,
        switchyard::api::conferences::KICK_REASON
    );
    assert_eq!(
        metric(&node, "switchyard_conferences_active", &[]).await,
        0.0
    );
    assert!(
        metric(
            &node,
            "switchyard_conference_events_total",
            &["event=\"kicked\""]
        )
        .await
            >= 1.0
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_callers_leg_moves_into_a_conference_and_its_agent_is_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = node_config(dir.path(), "48700-48799");
    c.tenants[0].numbers.push(NumberConfig {
        number: "7000".into(),
        target: "conference:room".into(),
        priority: 0,
    });
    let node = start_with(c).await;
    let sw = udp_addr(&node);
    let (caller, agent, p1003) = three_phones(sw, 190).await;
    agent_offerable(&node).await;
    // 1003 waits in the room (made by its dial-in).
    let (mut a3, to_3) = dial_in(&p1003, sw, "conf-wait-1", "7000").await;
    let cid = "move-node-1";
    let Up {
        mut a, to_switch_a, ..
    } = call(&caller, &agent, sw, cid, "5000").await;

    let path = "/conferences/acme/room/participants";
    let body = format!(r#"{{"call":"{cid}"}}"#);
    let (status, _) = api(&node, "POST", path, OTHER, &body).await;
    assert_eq!(status, 404, "another tenant's token");
    let (status, v) = api(&node, "POST", path, ACME, r#"{"call":"nope"}"#).await;
    assert_eq!(status, 404, "{v}");
    let (status, v) = api(&node, "POST", path, ACME, &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"], "conference:room", "{v}");
    // The agent is let go; the caller and 1003 talk in the room.
    let (bye, from) = agent.ua.expect_request("BYE").await;
    agent.ok(&bye, from).await;
    let v = room_until(&node, "the caller in the room", |s, v| {
        s == 200 && v["participants"].as_array().is_some_and(|p| p.len() == 2)
    })
    .await;
    assert_eq!(v["participants"][1]["via"], "moved", "{v}");
    talk(
        &caller,
        to_switch_a,
        &p1003,
        to_3,
        "the moved caller and 1003",
    )
    .await;

    caller.ua.send(sw, &a.request("BYE", 0, "", "")).await;
    caller.ua.expect("200 to BYE", is_ok_to("BYE")).await;
    p1003.ua.send(sw, &a3.request("BYE", 0, "", "")).await;
    p1003.ua.expect("200 to BYE", is_ok_to("BYE")).await;
    room_until(&node, "the room ended", |s, _| s == 404).await;
    let moved = cdr(&node, dir.path(), cid).await;
    assert_eq!(moved.transfers.as_deref(), Some("conference:api>room:room"));
    assert_eq!(moved.agent.as_deref(), Some("a2"));
    node.shutdown().await;
}
