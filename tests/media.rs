//! Anchored media end to end: a real node on loopback, caller and callee as UDP test user
//! agents with their own RTP sockets sending G.711 tones. Asserts what each side hears,
//! the encrypted two-track recording, DTMF from RFC 4733 / SIP INFO / in-band tones, the
//! CDR's quality figures, and that ports and sessions are given back.

mod common;

use common::{answer, cdr, wait_until, Side, Ua};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchyard::config::{Config, MediaMode};
use switchyard::media::g711::Codec;
use switchyard::media::{dtmf, recording, rtp, tone, wav};
use switchyard::sip::message::Message;
use switchyard::store::Store;
use tokio::net::UdpSocket;

/// An RTP endpoint of a test phone.
struct Rtp {
    sock: Arc<UdpSocket>,
    port: u16,
}

impl Rtp {
    async fn new() -> Rtp {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = sock.local_addr().unwrap().port();
        Rtp {
            sock: Arc::new(sock),
            port,
        }
    }

    fn sdp(&self, pts: &str) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP {pts}\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n",
            self.port
        )
    }

    /// Sends `frames` 20 ms PCMU frames of `audio` (looped) to `to`, paced in real time,
    /// then the RFC 4733 packets of `digit` if given.
    fn send(
        &self,
        to: SocketAddr,
        audio: Vec<i16>,
        frames: usize,
        digit: Option<char>,
    ) -> tokio::task::JoinHandle<()> {
        self.send_as(Codec::Pcmu, to, audio, frames, digit)
    }

    fn send_as(
        &self,
        codec: Codec,
        to: SocketAddr,
        audio: Vec<i16>,
        frames: usize,
        digit: Option<char>,
    ) -> tokio::task::JoinHandle<()> {
        let sock = self.sock.clone();
        tokio::spawn(async move {
            let ssrc: u32 = rand::random();
            let (mut seq, mut ts) = (1u16, 0u32);
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut buf = [0u8; 172];
            for f in 0..frames {
                tick.tick().await;
                let pt = codec.payload_type();
                let h = rtp::write_rtp_header(&mut buf, f == 0, pt, seq, ts, ssrc);
                let start = (f * 160) % audio.len().max(1);
                let mut frame = [0i16; 160];
                for (i, s) in frame.iter_mut().enumerate() {
                    *s = audio[(start + i) % audio.len()];
                }
                codec.encode_into(&frame, &mut buf[h..h + 160]);
                sock.send_to(&buf[..h + 160], to).await.unwrap();
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(160);
            }
            if let Some(d) = digit {
                for ev in dtmf::event_packets(d, 100) {
                    tick.tick().await;
                    let h = rtp::write_rtp_header(&mut buf, false, 101, seq, ts, ssrc);
                    let n = rtp::write_telephone_event(&mut buf[h..], &ev);
                    sock.send_to(&buf[..h + n], to).await.unwrap();
                    seq = seq.wrapping_add(1);
                }
            }
        })
    }

    /// Collects decoded PCMU audio for `window`.
    async fn listen(&self, window: Duration) -> Vec<i16> {
        let bytes = self.listen_raw(window).await;
        bytes.iter().map(|&b| Codec::Pcmu.decode(b)).collect()
    }

    /// Collects the PCMU payload bytes received for `window`, in order.
    async fn listen_raw(&self, window: Duration) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + window;
        let mut pcm = Vec::new();
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Ok(Ok((n, _))) = tokio::time::timeout(left, self.sock.recv_from(&mut buf)).await
            else {
                return pcm;
            };
            let Some(h) = rtp::parse_rtp(&buf[..n]) else {
                continue;
            };
            if h.payload_type == 0 {
                pcm.extend_from_slice(h.payload(&buf[..n]));
            }
        }
    }
}

fn tone_of(hz: f32, ms: usize) -> Vec<i16> {
    let mut t = tone::ToneGen::new(&[hz], 8000);
    let mut out = vec![0i16; ms * 8];
    t.fill(&mut out);
    out
}

/// The switch's audio address in an SDP body.
fn sdp_addr(m: &Message) -> SocketAddr {
    let sdp = switchyard::sip::sdp::parse(&m.body).expect("SDP");
    let audio = sdp.audio().expect("audio");
    SocketAddr::new(sdp.connection(0).expect("c="), audio.port)
}

fn node_config(
    dir: &std::path::Path,
    callee: SocketAddr,
    tune: impl FnOnce(&mut Config),
) -> Config {
    let mut c = common::config(dir, &[("", format!("sip:{callee}"))]);
    c.routes[0].media = MediaMode::Anchor;
    c.media.rtp_ports = "42000-42999".into();
    tune(&mut c);
    c
}

fn invite(cid: &str, ua: SocketAddr, sw: SocketAddr, sdp: &str) -> String {
    format!(
        "INVITE sip:1000@{sw} SIP/2.0\r\nVia: SIP/2.0/UDP {ua};branch=z9hG4bK-{cid}-1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@{ua}>;tag=a-{cid}\r\nTo: <sip:1000@{sw}>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{ua}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// A call through the switch: the caller's dialog and where each side sends its audio.
struct Up {
    a: Side,
    to_switch_a: SocketAddr,
    to_switch_b: SocketAddr,
}

/// Caller `alice` (RTP `ra`) calls callee `bob` (RTP `rb`), both offering PCMU and
/// telephone-event; up to the ACK.
async fn establish(alice: &Ua, bob: &Ua, ra: &Rtp, rb: &Rtp, sw: SocketAddr, cid: &str) -> Up {
    alice
        .send(sw, &invite(cid, alice.addr, sw, &ra.sdp("0 101")))
        .await;
    let (inv_b, sw_b) = bob.expect_request("INVITE").await;
    let to_switch_b = sdp_addr(&inv_b);
    bob.send(
        sw_b,
        &answer(&inv_b, 200, "OK", "btag", bob.addr, &rb.sdp("0 101")),
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

/// The caller hangs up; the callee answers the BYE.
async fn hang_up(alice: &Ua, bob: &Ua, sw: SocketAddr, a: &mut Side) {
    alice.send(sw, &a.request("BYE", 0, "", "")).await;
    let (bye, from) = bob.expect_request("BYE").await;
    bob.send(from, &answer(&bye, 200, "OK", "", bob.addr, ""))
        .await;
    alice.expect("200 to BYE", is_ok_to("BYE")).await;
}

fn is_ok_to(method: &'static str) -> impl Fn(&Message) -> bool {
    move |m| m.status() == Some(200) && m.cseq().is_some_and(|c| c.method.to_string() == method)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchored_call_relays_records_two_tracks_detects_dtmf_and_measures_quality() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (Ua::new().await, Ua::new().await);
    let (ra, rb) = (Rtp::new().await, Rtp::new().await);
    let node = common::start_with(node_config(dir.path(), bob.addr, |c| {
        c.routes[0].record = true;
        c.media.inband_dtmf = true;
    }))
    .await;
    let sw = common::udp_addr(&node);
    let cid = "media-1";
    let Up {
        mut a,
        to_switch_a,
        to_switch_b,
    } = establish(&alice, &bob, &ra, &rb, sw, cid).await;
    // Each side is offered the switch's address and a port of its own, not the other's.
    assert_eq!(to_switch_b.ip().to_string(), "127.0.0.1");
    assert_ne!(
        to_switch_b.port(),
        ra.port,
        "the B leg's SDP points at the switch"
    );
    assert_ne!(
        to_switch_a.port(),
        rb.port,
        "the A leg's SDP points at the switch"
    );
    assert_ne!(
        to_switch_a.port(),
        to_switch_b.port(),
        "a port pair per leg"
    );

    // 3 s of audio each way: 1000 Hz from the caller, 2000 Hz from the callee, each
    // followed by a digit (RFC 4733 from the caller, an in-band tone from the callee).
    let mut b_audio = tone_of(2000.0, 2400);
    dtmf::dtmf_tone('3', 120, &mut b_audio);
    b_audio.extend(std::iter::repeat_n(0, 800));
    let send_a = ra.send(to_switch_a, tone_of(1000.0, 3000), 150, Some('7'));
    let send_b = rb.send(to_switch_b, b_audio, 150, None);
    let (heard_by_b, heard_by_a) = tokio::join!(
        rb.listen(Duration::from_millis(3300)),
        ra.listen(Duration::from_millis(3300))
    );
    send_a.await.unwrap();
    send_b.await.unwrap();
    assert!(
        heard_by_b.len() >= 140 * 160,
        "callee heard {} samples",
        heard_by_b.len()
    );
    assert!(
        heard_by_a.len() >= 140 * 160,
        "caller heard {} samples",
        heard_by_a.len()
    );
    let f_b = tone::dominant_frequency(&heard_by_b[8000..16000], 8000, 300.0, 3400.0, 50.0);
    let f_a = tone::dominant_frequency(&heard_by_a[8000..16000], 8000, 300.0, 3400.0, 50.0);
    assert!(
        (f_b - 1000.0).abs() <= 50.0,
        "callee hears the caller's 1000 Hz: {f_b}"
    );
    assert!(
        (f_a - 2000.0).abs() <= 50.0,
        "caller hears the callee's 2000 Hz: {f_a}"
    );

    // A digit by SIP INFO, relayed and detected too.
    let info = a.request(
        "INFO",
        0,
        "Content-Type: application/dtmf-relay\r\n",
        "Signal=9\r\nDuration=160\r\n",
    );
    alice.send(sw, &info).await;
    let (info_b, from) = bob.expect_request("INFO").await;
    bob.send(from, &answer(&info_b, 200, "OK", "", bob.addr, ""))
        .await;
    alice.expect("200 to INFO", is_ok_to("INFO")).await;

    // The switch sends a digit to the caller as RFC 4733 events (101, as it offered).
    let engine = &node.ctx.media.get().unwrap().engine;
    let session = engine.get(cid.as_bytes()).expect("session");
    session.send_dtmf(switchyard::media::relay::Side::A, '4');
    let mut buf = [0u8; 2048];
    let mut ends = 0;
    while ends == 0 {
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), ra.sock.recv_from(&mut buf))
            .await
            .expect("RFC 4733 digit sent by the switch")
            .unwrap();
        let Some(h) = rtp::parse_rtp(&buf[..n]) else {
            continue;
        };
        if h.payload_type == 101 {
            let ev = rtp::parse_telephone_event(h.payload(&buf[..n])).unwrap();
            assert_eq!(rtp::event_digit(ev.event), Some('4'));
            ends += ev.end as usize;
        }
    }

    hang_up(&alice, &bob, sw, &mut a).await;

    let cdr = cdr(&node, dir.path(), cid).await;
    let digits = cdr.dtmf.clone().unwrap_or_default();
    for d in ['7', '3', '9'] {
        assert!(digits.contains(d), "digit {d} detected: {digits:?}");
    }
    assert_eq!(digits.len(), 3, "each digit once: {digits:?}");
    let m = cdr.media.expect("anchored call has media figures");
    assert!(m.packets_a >= 140 && m.packets_b >= 140, "{m:?}");
    assert!(m.loss_a < 0.01 && m.loss_b < 0.01, "{m:?}");
    assert!(
        m.mos_a > 4.0 && m.mos_b > 4.0,
        "clean loopback audio: {m:?}"
    );

    // The recording: complete in the index, decrypts to a stereo WAV whose left track is
    // the caller (1000 Hz) and right track the callee (2000 Hz).
    let id = cdr.recording.clone().expect("the route records");
    let db = dir.path().join("switchyard.db");
    let store = node.tree.store().unwrap();
    let mut row = None;
    for _ in 0..200 {
        switchyard::actors::store_writer::flush(&store)
            .await
            .unwrap();
        let r = Store::open(&db).unwrap().get_recording(&id).unwrap();
        if r.as_ref().is_some_and(|r| r.state == "complete") {
            row = r;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let row = row.expect("recording completed");
    assert_eq!(row.call_id.as_deref(), Some(cid));
    let keys = recording::KeyRing::from_config(&Default::default(), None, dir.path()).unwrap();
    let path = recording::final_path(&dir.path().join("recordings"), &id);
    let mut wav_bytes = Vec::new();
    for chunk in recording::open(&path, &keys).unwrap() {
        wav_bytes.extend(chunk.unwrap());
    }
    let (left, right, rate) = wav::read_stereo(&wav_bytes).unwrap();
    assert_eq!(rate, 8000);
    assert!(
        left.len() >= 2 * 8000,
        "at least 2 s recorded: {}",
        left.len()
    );
    let mid = left.len() / 2;
    let fl = tone::dominant_frequency(&left[mid - 4000..mid + 4000], 8000, 300.0, 3400.0, 50.0);
    let fr = tone::dominant_frequency(&right[mid - 4000..mid + 4000], 8000, 300.0, 3400.0, 50.0);
    assert!(
        (fl - 1000.0).abs() <= 50.0,
        "left channel is the caller: {fl}"
    );
    assert!(
        (fr - 2000.0).abs() <= 50.0,
        "right channel is the callee: {fr}"
    );

    assert!(
        wait_until(Duration::from_secs(5), || engine.sessions() == 0
            && engine.ports_in_use() == 0)
        .await,
        "session and ports given back"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_a_call_without_g711_is_refused_with_488() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (Ua::new().await, Ua::new().await);
    let ra = Rtp::new().await;
    let node = common::start_with(node_config(dir.path(), bob.addr, |c| {
        c.routes[0].record = true;
    }))
    .await;
    let sw = common::udp_addr(&node);
    let sdp = ra
        .sdp("18 101")
        .replace("a=rtpmap:101", "a=rtpmap:18 G729/8000\r\na=rtpmap:101");
    alice
        .send(sw, &invite("media-488", alice.addr, sw, &sdp))
        .await;
    let (resp, _) = alice.expect("488", |m| m.status() == Some(488)).await;
    assert_eq!(resp.status(), Some(488));
    assert!(
        bob.recv(Duration::from_millis(300)).await.is_none(),
        "no B leg"
    );
    let engine = &node.ctx.media.get().unwrap().engine;
    assert_eq!(engine.sessions(), 0);
    node.shutdown().await;
}

/// Whether `window` occurs in `haystack`.
fn contains(haystack: &[u8], window: &[u8]) -> bool {
    haystack.windows(window.len()).any(|w| w == window)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_answers_first_plays_position_and_music_then_bridges_the_agent() {
    use switchyard::config::{
        AgentConfig, MembershipConfig, NumberConfig, TenantConfig, UserConfig,
    };
    use switchyard::media::prompts::{default_dir, position_announcement, PromptLibrary};
    use switchyard::sip::auth::{ha1, Algorithm};
    const DOMAIN: &str = "media.test";
    let dir = tempfile::tempdir().unwrap();
    let (caller, phone) = (Ua::new().await, Ua::new().await);
    let (rc, rp) = (Rtp::new().await, Rtp::new().await);
    let mut c = common::config(dir.path(), &[]);
    c.media.rtp_ports = "43000-43999".into();
    c.registrar.algorithms = vec!["MD5".into()];
    c.tenants = vec![TenantConfig {
        id: "cc".into(),
        domain: DOMAIN.into(),
        users: vec![UserConfig {
            username: "2001".into(),
            ha1_md5: Some(ha1(Algorithm::Md5, "2001", DOMAIN, "pw")),
            ha1_sha256: None,
            outbound: None,
        }],
        numbers: vec![NumberConfig {
            number: "5000".into(),
            target: "queue:q".into(),
            priority: 0,
        }],
        queues: vec![toml::from_str(
            "id = \"q\"\nanswer_first = true\nannounce_secs = 0\nring_timeout_secs = 5",
        )
        .unwrap()],
        agents: vec![AgentConfig {
            id: "a1".into(),
            user: "2001".into(),
            queues: vec![MembershipConfig {
                queue: "q".into(),
                tier: 1,
                penalty: 0,
            }],
            skills: Default::default(),
            wrap_up_secs: None,
            state: Some("available".into()),
        }],
        ..Default::default()
    }];
    let node = common::start_with(c).await;
    let sw = common::udp_addr(&node);

    // The caller is answered by the switch at once (no agent is reachable yet).
    let cid = "media-queue-1";
    let inv = invite(cid, caller.addr, sw, &rc.sdp("0 8 101")).replace("sip:1000@", "sip:5000@");
    caller.send(sw, &inv).await;
    let (ok, _) = caller.expect("200 to INVITE", is_ok_to("INVITE")).await;
    let to_switch_a = sdp_addr(&ok);
    let mut a = Side::caller(caller.addr, cid, &ok);
    caller.send(sw, &a.request("ACK", 1, "", "")).await;

    // It hears its position, then music: compared byte for byte with what the switch plays.
    // The switch is the caller's sender now: its RTCP reports go to the caller's RTCP port.
    let rtcp = UdpSocket::bind(("127.0.0.1", rc.port + 1)).await.unwrap();
    let heard = rc.listen_raw(Duration::from_secs(6)).await;
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(1), rtcp.recv_from(&mut buf))
        .await
        .expect("an RTCP report from the switch")
        .unwrap();
    let reports = rtp::parse_rtcp(&buf[..n]);
    assert!(
        matches!(reports.first(), Some(rtp::RtcpPacket::SenderReport { info, .. }) if info.packets >= 1),
        "a sender report for the music stream: {reports:?}"
    );
    let library = PromptLibrary::load(&default_dir()).unwrap();
    let announcement = library.compose(&position_announcement(1, None), 150);
    assert!(announcement.len() > 8000, "the announcement is real audio");
    let encode = |pcm: &[i16]| -> Vec<u8> { pcm.iter().map(|&s| Codec::Pcmu.encode(s)).collect() };
    let spoken = encode(&announcement);
    let mid = spoken.len() / 2;
    assert!(
        contains(&heard, &spoken[mid..mid + 1600]),
        "the caller heard its position announcement ({} bytes heard)",
        heard.len()
    );
    let music = encode(&tone::melody());
    assert!(
        contains(&heard, &music[800..2400]),
        "the caller heard the music on hold"
    );

    // The agent's phone registers: the queue offers the call with the switch's own SDP.
    common::register_udp(&phone, sw, DOMAIN, "2001", "pw").await;
    let (offer, from) = phone.expect_request("INVITE").await;
    let to_switch_b = sdp_addr(&offer);
    assert_ne!(
        to_switch_b.port(),
        rc.port,
        "the agent is offered the switch's address"
    );
    // The agent answers in A-law: the switch converts for the caller, who chose μ-law.
    phone
        .send(
            from,
            &answer(&offer, 200, "OK", "ptag", phone.addr, &rp.sdp("8 101")),
        )
        .await;
    phone.expect_request("ACK").await;
    let send_agent = rp.send_as(Codec::Pcma, to_switch_b, tone_of(2000.0, 3000), 100, None);
    let send_caller = rc.send(to_switch_a, tone_of(1000.0, 3000), 100, None);
    let heard_by_agent = tokio::spawn({
        let sock = rp.sock.clone();
        async move {
            let mut buf = [0u8; 2048];
            let mut pcm = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_millis(2300);
            while let Ok(Ok((n, _))) = tokio::time::timeout(
                deadline.saturating_duration_since(tokio::time::Instant::now()),
                sock.recv_from(&mut buf),
            )
            .await
            {
                if let Some(h) = rtp::parse_rtp(&buf[..n]) {
                    if h.payload_type == 8 {
                        pcm.extend(h.payload(&buf[..n]).iter().map(|&b| Codec::Pcma.decode(b)));
                    }
                }
            }
            pcm
        }
    });
    let heard_by_caller = rc.listen(Duration::from_millis(2300)).await;
    let heard_by_agent = heard_by_agent.await.unwrap();
    send_agent.await.unwrap();
    send_caller.await.unwrap();
    let tail = &heard_by_caller[heard_by_caller.len().saturating_sub(8000)..];
    let f = tone::dominant_frequency(tail, 8000, 300.0, 3400.0, 50.0);
    assert!(
        (f - 2000.0).abs() <= 50.0,
        "after the bridge the caller hears the agent: {f} Hz"
    );
    assert!(
        heard_by_agent.len() >= 8000,
        "the agent hears the caller ({} samples)",
        heard_by_agent.len()
    );
    let f = tone::dominant_frequency(
        &heard_by_agent[heard_by_agent.len() - 8000..],
        8000,
        300.0,
        3400.0,
        50.0,
    );
    assert!(
        (f - 1000.0).abs() <= 50.0,
        "the agent hears the caller in A-law: {f} Hz"
    );

    hang_up(&caller, &phone, sw, &mut a).await;
    let cdr = cdr(&node, dir.path(), cid).await;
    assert_eq!(cdr.agent.as_deref(), Some("a1"));
    assert!(cdr.media.is_some());
    node.shutdown().await;
}

/// Counts the RTP packets arriving on a socket for `window`.
async fn count_packets(sock: &UdpSocket, window: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + window;
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while let Ok(Ok(_)) = tokio::time::timeout(
        deadline.saturating_duration_since(tokio::time::Instant::now()),
        sock.recv_from(&mut buf),
    )
    .await
    {
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_survives_the_call_actor_restarting_and_obeys_hold() {
    use switchyard::actors::call::CallMsg;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (Ua::new().await, Ua::new().await);
    let (ra, rb) = (Rtp::new().await, Rtp::new().await);
    let node = common::start_with(node_config(dir.path(), bob.addr, |c| {
        c.media.rtp_ports = "45000-45999".into();
        c.http.token = Some("media-test-token-0123456789-0123456789".into());
    }))
    .await;
    let sw = common::udp_addr(&node);
    let cid = "media-restart";
    let Up {
        mut a,
        to_switch_a,
        to_switch_b,
    } = establish(&alice, &bob, &ra, &rb, sw, cid).await;

    // 100 packets from the caller while its call actor panics and is restored: the callee
    // gets every one of them.
    let sending = ra.send(to_switch_a, tone_of(1000.0, 1000), 100, None);
    let counting = tokio::spawn({
        let sock = rb.sock.clone();
        async move { count_packets(&sock, Duration::from_millis(2600)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = node.ctx.directory.lookup(cid.as_bytes()).unwrap();
    before.send_message(CallMsg::InjectPanic).unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || node
            .ctx
            .directory
            .lookup(cid.as_bytes())
            .is_some_and(|after| after.get_id() != before.get_id()))
        .await,
        "the call actor was restarted"
    );
    sending.await.unwrap();
    assert_eq!(
        counting.await.unwrap(),
        100,
        "no packet lost while the actor restarted"
    );

    // The recording is started and stopped through the API.
    let api = node.http_addr;
    let path = format!("/calls/{cid}/recording/start");
    let auth = Some("Bearer media-test-token-0123456789-0123456789");
    let r = common::http_request(api, "POST", &path, None, "").await;
    assert_eq!(r.status, 401, "recording commands need the token");
    let r = common::http_request(api, "POST", &path, auth, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r
        .body
        .split("\"recording\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the recording's id")
        .to_string();
    let command = |verb: &str| {
        let path = format!("/calls/{cid}/recording/{verb}");
        async move { common::http_request(api, "POST", &path, auth, "").await }
    };
    let r = command("pause").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = command("stop").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = command("stop").await;
    assert_eq!(r.status, 409, "nothing records any more: {}", r.body);
    let r = common::http_request(api, "POST", "/calls/nope/recording/start", auth, "").await;
    assert_eq!(r.status, 404, "{}", r.body);
    let store = node.tree.store().unwrap();
    let db = dir.path().join("switchyard.db");
    let mut complete = false;
    for _ in 0..200 {
        switchyard::actors::store_writer::flush(&store)
            .await
            .unwrap();
        let row = Store::open(&db).unwrap().get_recording(&id).unwrap();
        if row.is_some_and(|r| r.state == "complete") {
            complete = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        complete,
        "the recording stopped through the API is complete"
    );

    // Hold from the caller (sendonly): the callee is offered the switch's address with
    // sendonly, answers recvonly; the callee's audio no longer reaches the caller.
    let hold = ra.sdp("0 101") + "a=sendonly\r\n";
    alice
        .send(
            sw,
            &a.request("INVITE", 0, "Content-Type: application/sdp\r\n", &hold),
        )
        .await;
    let (reinv, from) = bob.expect_request("INVITE").await;
    let body = String::from_utf8_lossy(&reinv.body).into_owned();
    assert!(
        body.contains("a=sendonly"),
        "hold reaches the callee: {body}"
    );
    assert_eq!(
        sdp_addr(&reinv),
        to_switch_b,
        "the same switch port for the callee"
    );
    let held = rb.sdp("0 101") + "a=recvonly\r\n";
    bob.send(from, &answer(&reinv, 200, "OK", "", bob.addr, &held))
        .await;
    let (ok2, _) = alice.expect("200 to re-INVITE", is_ok_to("INVITE")).await;
    assert_eq!(
        sdp_addr(&ok2),
        to_switch_a,
        "the same switch port for the caller"
    );
    alice.send(sw, &a.request("ACK", a.cseq, "", "")).await;
    let sending = rb.send(to_switch_b, tone_of(2000.0, 1000), 25, None);
    assert_eq!(
        count_packets(&ra.sock, Duration::from_millis(800)).await,
        0,
        "on hold: nothing relayed to the caller"
    );
    sending.await.unwrap();

    hang_up(&alice, &bob, sw, &mut a).await;
    let engine = &node.ctx.media.get().unwrap().engine;
    assert!(
        wait_until(Duration::from_secs(5), || engine.sessions() == 0
            && engine.ports_in_use() == 0)
        .await,
        "ports given back after a restarted call ends"
    );
    node.shutdown().await;
}
