//! Media at the edge (issue 16, item 4): a real node on loopback, phones, a sprayer and a
//! victim each on their own 127.0.0.x address, as stand-ins for internet hosts.
//! - A sprayer sending RTP at a call's relay ports gets no audio, injects none, and its
//!   packets are counted as foreign; the phones still hear each other.
//! - Music is not sent to an address named only in SDP before the caller's first packet.
//! - A call whose RTP stops is ended with BYE after `media.rtp_timeout_secs`, CDR reason
//!   "rtp timeout"; a ringing call and a held call are not.

mod common;

use common::rtp::Rtp;
use common::{answer, cdr, http_request, Side, Ua};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchyard::config::{Config, MediaMode};
use switchyard::media::g711::Codec;
use switchyard::media::{rtp, tone};
use switchyard::sip::message::Message;
use switchyard::store::HangupBy;
use tokio::net::UdpSocket;

/// The payload byte of the sprayer's packets (a tone never encodes to a constant frame).
const SPRAY: u8 = 0x5A;

async fn ua_at(ip: &str) -> Ua {
    let sock = UdpSocket::bind((ip, 0)).await.unwrap();
    let addr = sock.local_addr().unwrap();
    Ua { sock, addr }
}

/// The RTP payloads (any datagram that parses as RTP) `sock` receives within `window`.
async fn listen(sock: &UdpSocket, window: Duration) -> Vec<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + window;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(Ok((n, _))) = tokio::time::timeout(
        deadline.saturating_duration_since(tokio::time::Instant::now()),
        sock.recv_from(&mut buf),
    )
    .await
    {
        match rtp::parse_rtp(&buf[..n]) {
            Some(h) => got.push(h.payload(&buf[..n]).to_vec()),
            None => got.push(buf[..n].to_vec()),
        }
    }
    got
}

fn pcm(payloads: &[Vec<u8>]) -> Vec<i16> {
    payloads
        .iter()
        .flatten()
        .map(|&b| Codec::Pcmu.decode(b))
        .collect()
}

/// The switch's audio address in an SDP body.
fn sdp_addr(m: &Message) -> SocketAddr {
    let sdp = switchyard::sip::sdp::parse(&m.body).expect("SDP");
    let audio = sdp.audio().expect("audio");
    SocketAddr::new(sdp.connection(0).expect("c="), audio.port)
}

fn invite(cid: &str, user: &str, ua: SocketAddr, sw: SocketAddr, sdp: &str) -> String {
    format!(
        "INVITE sip:{user}@{sw} SIP/2.0\r\nVia: SIP/2.0/UDP {ua};branch=z9hG4bK-{cid}-1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@{ua}>;tag=a-{cid}\r\nTo: <sip:{user}@{sw}>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{ua}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

fn is_ok_to(method: &'static str) -> impl Fn(&Message) -> bool {
    move |m| m.status() == Some(200) && m.cseq().is_some_and(|c| c.method.to_string() == method)
}

/// A node routing everything to `callee` with anchored media.
fn node_config(
    dir: &std::path::Path,
    callee: SocketAddr,
    ports: &str,
    tune: impl FnOnce(&mut Config),
) -> Config {
    let mut c = common::config(dir, &[("", format!("sip:{callee}"))]);
    // The phones call through a static route, which only trusted peers may use; the
    // sprayer and the victims send and receive media only, which trust does not cover.
    c.security.trusted = vec!["127.0.0.0/8".into()];
    c.routes[0].media = MediaMode::Anchor;
    c.media.rtp_ports = ports.into();
    tune(&mut c);
    c
}

/// A call through the switch up to the ACK: the caller's dialog and where each phone sends
/// its audio.
struct Up {
    a: Side,
    to_switch_a: SocketAddr,
    to_switch_b: SocketAddr,
}

async fn establish(alice: &Ua, bob: &Ua, ra: &Rtp, rb: &Rtp, sw: SocketAddr, cid: &str) -> Up {
    alice
        .send(sw, &invite(cid, "1000", alice.addr, sw, &ra.sdp()))
        .await;
    let (inv_b, sw_b) = bob.expect_request("INVITE").await;
    let to_switch_b = sdp_addr(&inv_b);
    bob.send(
        sw_b,
        &answer(&inv_b, 200, "OK", "btag", bob.addr, &rb.sdp()),
    )
    .await;
    let (ok, _) = alice.expect("200 to INVITE", is_ok_to("INVITE")).await;
    let mut a = Side::caller(alice.addr, cid, &ok);
    alice.send(sw, &a.request("ACK", 1, "", "")).await;
    bob.expect_request("ACK").await;
    Up {
        to_switch_a: sdp_addr(&ok),
        to_switch_b,
        a,
    }
}

/// The next request `method` within `wait` (other messages skipped); None if none came.
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

/// A counter's value (the sum of its series carrying every one of `labels`).
async fn metric(node: &switchyard::server::Node, name: &str, labels: &[&str]) -> f64 {
    let reply = http_request(node.http_addr, "GET", "/metrics", None, "").await;
    reply
        .body
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls a counter until it reaches `at_least` (bounded: 5 s); its last value.
async fn metric_reaches(
    node: &switchyard::server::Node,
    name: &str,
    labels: &[&str],
    at_least: f64,
) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v = metric(node, name, labels).await;
        if v >= at_least || tokio::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sprayer_gets_no_audio_and_is_counted_while_the_phones_hear_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (ua_at("127.0.0.11").await, ua_at("127.0.0.12").await);
    let (ra, rb) = (Rtp::at("127.0.0.11").await, Rtp::at("127.0.0.12").await);
    let sprayer = UdpSocket::bind("127.0.0.66:0").await.unwrap();
    let node = common::start_with(node_config(dir.path(), bob.addr, "46000-46099", |_| {})).await;
    let sw = common::udp_addr(&node);
    let cid = "edge-spray";
    let Up {
        mut a,
        to_switch_a,
        to_switch_b,
        ..
    } = establish(&alice, &bob, &ra, &rb, sw, cid).await;
    let foreign = ["reason=\"foreign_source\""];
    let before = metric(&node, "switchyard_media_dropped_total", &foreign).await;

    // The sprayer hits the call's RTP and RTCP ports before the phones send anything.
    let mut spray = [SPRAY; 172];
    rtp::write_rtp_header(&mut spray, false, 0, 1, 160, 0x5A5A_5A5A);
    for port_of in [to_switch_a, to_switch_b] {
        for p in [port_of.port(), port_of.port() + 1] {
            for _ in 0..25 {
                sprayer
                    .send_to(&spray, SocketAddr::new(port_of.ip(), p))
                    .await
                    .unwrap();
            }
        }
    }
    assert!(
        metric_reaches(
            &node,
            "switchyard_media_dropped_total",
            &foreign,
            before + 100.0
        )
        .await
            >= before + 100.0,
        "the sprayer's 100 packets are counted as foreign"
    );

    // The phones talk (and the sprayer keeps going): each hears the other only, the
    // sprayer hears nothing.
    let send_a = ra.send_tone(to_switch_a, 1000.0, 100);
    let send_b = rb.send_tone(to_switch_b, 2000.0, 100);
    let spraying = tokio::spawn({
        let sprayer = Arc::new(sprayer);
        let s2 = sprayer.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for _ in 0..150 {
                tick.tick().await;
                for to in [to_switch_a, to_switch_b] {
                    let _ = s2.send_to(&spray, to).await;
                }
            }
            listen(&sprayer, Duration::from_millis(200)).await
        }
    });
    let (heard_by_b, heard_by_a) = tokio::join!(
        listen(&rb.sock, Duration::from_millis(2300)),
        listen(&ra.sock, Duration::from_millis(2300))
    );
    send_a.await.unwrap();
    send_b.await.unwrap();
    let sprayer_heard = spraying.await.unwrap();
    for (who, heard) in [("bob", &heard_by_b), ("alice", &heard_by_a)] {
        assert!(
            !heard
                .iter()
                .any(|p| !p.is_empty() && p.iter().all(|&b| b == SPRAY)),
            "{who} heard the sprayer"
        );
        assert!(heard.len() >= 90, "{who} heard {} packets", heard.len());
    }
    let f_b = tone::dominant_frequency(&pcm(&heard_by_b), 8000, 300.0, 3400.0, 50.0);
    let f_a = tone::dominant_frequency(&pcm(&heard_by_a), 8000, 300.0, 3400.0, 50.0);
    assert!((f_b - 1000.0).abs() <= 50.0, "bob hears alice: {f_b} Hz");
    assert!((f_a - 2000.0).abs() <= 50.0, "alice hears bob: {f_a} Hz");
    assert!(
        sprayer_heard.is_empty(),
        "the sprayer got {} packets",
        sprayer_heard.len()
    );

    alice.send(sw, &a.request("BYE", 0, "", "")).await;
    let (bye, from) = bob.expect_request("BYE").await;
    bob.send(from, &answer(&bye, 200, "OK", "", bob.addr, ""))
        .await;
    alice.expect("200 to BYE", is_ok_to("BYE")).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn music_is_not_sent_to_an_address_named_only_in_sdp_before_the_caller_latches() {
    use switchyard::config::{NumberConfig, TenantConfig};
    let dir = tempfile::tempdir().unwrap();
    // The caller signals from .21; its SDP names a victim at .99.
    let caller = ua_at("127.0.0.21").await;
    let rc = Rtp::at("127.0.0.21").await;
    let victim = Rtp::at("127.0.0.99").await;
    let victim_rtcp = UdpSocket::bind(("127.0.0.99", victim.addr.port() + 1))
        .await
        .unwrap();
    let mut c = common::config(dir.path(), &[]);
    c.media.rtp_ports = "46100-46199".into();
    c.tenants = vec![TenantConfig {
        id: "edge".into(),
        domain: "edge.test".into(),
        numbers: vec![NumberConfig {
            number: "5000".into(),
            target: "queue:q".into(),
            priority: 0,
        }],
        queues: vec![toml::from_str(
            "id = \"q\"\nanswer_first = true\nannounce_secs = 0\nring_timeout_secs = 5",
        )
        .unwrap()],
        ..Default::default()
    }];
    let node = common::start_with(c).await;
    let sw = common::udp_addr(&node);
    let cid = "edge-music";
    let sdp = Rtp::sdp_at(victim.addr, "");
    caller
        .send(sw, &invite(cid, "5000", caller.addr, sw, &sdp))
        .await;
    let (ok, _) = caller.expect("200 to INVITE", is_ok_to("INVITE")).await;
    let to_switch = sdp_addr(&ok);
    let mut a = Side::caller(caller.addr, cid, &ok);
    caller.send(sw, &a.request("ACK", 1, "", "")).await;

    // The switch answered and plays the queue's announcement and music: not to the victim.
    let (rtp_at_victim, rtcp_at_victim) = tokio::join!(
        listen(&victim.sock, Duration::from_millis(1500)),
        listen(&victim_rtcp, Duration::from_millis(1500))
    );
    assert!(
        rtp_at_victim.is_empty() && rtcp_at_victim.is_empty(),
        "the victim got {} RTP and {} RTCP packets",
        rtp_at_victim.len(),
        rtcp_at_victim.len()
    );

    // The caller sends from its signalling address: it latches and hears the music there.
    let sending = rc.send_tone(to_switch, 1000.0, 50);
    let heard = listen(&rc.sock, Duration::from_millis(1000)).await;
    assert!(
        heard.len() >= 20,
        "the caller hears music: {} packets",
        heard.len()
    );
    sending.await.unwrap();
    assert!(
        listen(&victim.sock, Duration::from_millis(200))
            .await
            .is_empty(),
        "still nothing at the victim"
    );

    caller.send(sw, &a.request("BYE", 0, "", "")).await;
    caller.expect("200 to BYE", is_ok_to("BYE")).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_rtp_stops_is_ended_with_bye_and_the_cdr_says_rtp_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (ua_at("127.0.0.31").await, ua_at("127.0.0.32").await);
    let (ra, rb) = (Rtp::at("127.0.0.31").await, Rtp::at("127.0.0.32").await);
    let node = common::start_with(node_config(dir.path(), bob.addr, "46200-46299", |c| {
        c.media.rtp_timeout_secs = 2;
    }))
    .await;
    let sw = common::udp_addr(&node);
    let cid = "edge-timeout";
    let before = metric(&node, "switchyard_media_timeouts_total", &[]).await;
    let Up {
        to_switch_a,
        to_switch_b,
        ..
    } = establish(&alice, &bob, &ra, &rb, sw, cid).await;
    // A second of audio each way, then both phones go silent (say, their network died).
    let (sa, sb) = (
        ra.send_tone(to_switch_a, 1000.0, 50),
        rb.send_tone(to_switch_b, 2000.0, 50),
    );
    sa.await.unwrap();
    sb.await.unwrap();
    let stopped = tokio::time::Instant::now();
    // BYE to both within the timeout and the relay's once-a-second check (bounded: 8 s).
    let (bye_a, bye_b) = tokio::join!(
        request_within(&alice, "BYE", Duration::from_secs(8)),
        request_within(&bob, "BYE", Duration::from_secs(8))
    );
    let waited = stopped.elapsed();
    let (bye_a, from_a) = bye_a.expect("BYE to the caller");
    let (bye_b, from_b) = bye_b.expect("BYE to the callee");
    assert!(
        waited >= Duration::from_millis(1500),
        "not before the timeout: {waited:?}"
    );
    alice
        .send(from_a, &answer(&bye_a, 200, "OK", "", alice.addr, ""))
        .await;
    bob.send(from_b, &answer(&bye_b, 200, "OK", "", bob.addr, ""))
        .await;
    let cdr = cdr(&node, dir.path(), cid).await;
    assert_eq!(cdr.disconnect_reason, "rtp timeout");
    assert_eq!(cdr.hangup_by, HangupBy::System);
    assert_eq!(cdr.final_status, 200);
    assert!(
        metric_reaches(&node, "switchyard_media_timeouts_total", &[], before + 1.0).await
            >= before + 1.0,
        "counted"
    );
    let engine = &node.ctx.media.get().unwrap().engine;
    assert!(
        common::wait_until(Duration::from_secs(5), || engine.sessions() == 0
            && engine.ports_in_use() == 0)
        .await,
        "ports given back"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ringing_call_and_a_held_call_are_not_ended_by_the_rtp_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (ua_at("127.0.0.41").await, ua_at("127.0.0.42").await);
    let (ra, rb) = (Rtp::at("127.0.0.41").await, Rtp::at("127.0.0.42").await);
    let node = common::start_with(node_config(dir.path(), bob.addr, "46300-46399", |c| {
        c.media.rtp_timeout_secs = 2;
    }))
    .await;
    let sw = common::udp_addr(&node);
    let cid = "edge-held";
    alice
        .send(sw, &invite(cid, "1000", alice.addr, sw, &ra.sdp()))
        .await;
    let (inv_b, sw_b) = bob.expect_request("INVITE").await;
    // Ringing without early media for longer than the timeout: the call goes on.
    bob.send(sw_b, &answer(&inv_b, 180, "Ringing", "btag", bob.addr, ""))
        .await;
    alice.expect_status(180).await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(3500);
    while let Some((m, _)) = alice
        .recv(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        assert!(
            m.status().is_some_and(|s| s < 200),
            "nothing ends a ringing call: {:?}",
            m.start
        );
    }
    bob.send(
        sw_b,
        &answer(&inv_b, 200, "OK", "btag", bob.addr, &rb.sdp()),
    )
    .await;
    let (ok, _) = alice.expect("200 to INVITE", is_ok_to("INVITE")).await;
    let mut a = Side::caller(alice.addr, cid, &ok);
    alice.send(sw, &a.request("ACK", 1, "", "")).await;
    bob.expect_request("ACK").await;

    // Alice holds (sendonly), bob answers recvonly; then nobody sends anything.
    let hold = ra.sdp_with("a=sendonly\r\n");
    alice
        .send(
            sw,
            &a.request("INVITE", 0, "Content-Type: application/sdp\r\n", &hold),
        )
        .await;
    let (reinv, from) = bob.expect_request("INVITE").await;
    bob.send(
        from,
        &answer(
            &reinv,
            200,
            "OK",
            "",
            bob.addr,
            &rb.sdp_with("a=recvonly\r\n"),
        ),
    )
    .await;
    alice.expect("200 to re-INVITE", is_ok_to("INVITE")).await;
    alice.send(sw, &a.request("ACK", a.cseq, "", "")).await;
    let (bye_a, bye_b) = tokio::join!(
        request_within(&alice, "BYE", Duration::from_secs(5)),
        request_within(&bob, "BYE", Duration::from_secs(5))
    );
    assert!(
        bye_a.is_none() && bye_b.is_none(),
        "a held call is not ended for its silence"
    );

    alice.send(sw, &a.request("BYE", 0, "", "")).await;
    let (bye, from) = bob.expect_request("BYE").await;
    bob.send(from, &answer(&bye, 200, "OK", "", bob.addr, ""))
        .await;
    alice.expect("200 to BYE", is_ok_to("BYE")).await;
    let cdr = cdr(&node, dir.path(), cid).await;
    assert_eq!(cdr.hangup_by, HangupBy::Caller);
    node.shutdown().await;
}
