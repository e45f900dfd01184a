//! Call flows (IVR) on a real node: a caller dials a number whose target is a flow, hears
//! the first menu's prompt (compared byte for byte with the prompt library), presses
//! digits sent as RFC 4733 telephone-events through a second menu, and lands in the queue,
//! where the agent's phone is offered the call.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchyard::config::{AgentConfig, MembershipConfig, NumberConfig, TenantConfig, UserConfig};
use switchyard::media::g711::Codec;
use switchyard::media::prompts::{default_dir, PromptLibrary};
use switchyard::media::{dtmf, rtp};
use switchyard::server::Node;
use switchyard::sip::auth::{ha1, Algorithm};
use switchyard::sip::message::Message;
use tokio::net::UdpSocket;

const DOMAIN: &str = "ivr.test";

const FLOW: &str = r#"
id = "main"
[[steps]]
id = "welcome"
type = "menu"
prompt = "thank-you-for-waiting"
choices = { "1" = "bye", "2" = "sales-menu", "9" = "vip" }
timeout_secs = 10
[[steps]]
id = "sales-menu"
type = "menu"
prompt = "all-agents-busy"
choices = { "4" = "sales" }
timeout_secs = 10
[[steps]]
id = "sales"
type = "queue"
target = "q"
[[steps]]
id = "bye"
type = "hangup"
[[steps]]
id = "vip"
type = "set"
priority = 5
skills = { vip = 5 }
next = "sales"
"#;

/// The caller's RTP socket: sends RFC 4733 digits, collects what it hears.
struct Phone {
    sock: Arc<UdpSocket>,
    port: u16,
    seq: u16,
    ts: u32,
}

impl Phone {
    async fn new() -> Phone {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = sock.local_addr().unwrap().port();
        Phone {
            sock: Arc::new(sock),
            port,
            seq: 1,
            ts: 0,
        }
    }

    fn sdp(&self) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n",
            self.port
        )
    }

    /// One digit as RFC 4733 packets (100 ms), paced at 20 ms.
    async fn digit(&mut self, to: SocketAddr, d: char) {
        let mut buf = [0u8; 64];
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for ev in dtmf::event_packets(d, 100) {
            tick.tick().await;
            let h = rtp::write_rtp_header(&mut buf, false, 101, self.seq, self.ts, 0x1234);
            let n = rtp::write_telephone_event(&mut buf[h..], &ev);
            self.sock.send_to(&buf[..h + n], to).await.unwrap();
            self.seq = self.seq.wrapping_add(1);
        }
        self.ts = self.ts.wrapping_add(1600);
    }

    /// The PCMU payload bytes heard for `window`.
    async fn listen(&self, window: Duration) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + window;
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Ok(Ok((n, _))) = tokio::time::timeout(left, self.sock.recv_from(&mut buf)).await
            else {
                return got;
            };
            if let Some(h) = rtp::parse_rtp(&buf[..n]) {
                if h.payload_type == 0 {
                    got.extend_from_slice(h.payload(&buf[..n]));
                }
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// A prompt of the shipped library as the caller hears it (PCMU bytes).
fn prompt_bytes(id: &str) -> Vec<u8> {
    let library = PromptLibrary::load(&default_dir()).unwrap();
    let pcm = library.get(id).expect("shipped prompt");
    pcm.iter().map(|&s| Codec::Pcmu.encode(s)).collect()
}

fn sdp_addr(m: &Message) -> SocketAddr {
    let sdp = switchyard::sip::sdp::parse(&m.body).expect("SDP");
    let audio = sdp.audio().expect("audio");
    SocketAddr::new(sdp.connection(0).expect("c="), audio.port)
}

fn is_ok_invite(m: &Message) -> bool {
    m.status() == Some(200) && m.cseq().is_some_and(|c| c.method.to_string() == "INVITE")
}

/// An agent: id, SIP user, skills with levels.
type Agent<'a> = (&'a str, &'a str, &'a [(&'a str, u8)]);

/// A node whose tenant `cc` has the flow on 8000, the queue `q` (strategy `top-down`: a1 first) and
/// agents `(id, user, skills)`, available once their phones register.
async fn node(dir: &std::path::Path, agents: &[Agent<'_>]) -> Node {
    node_with(dir, agents, |_| {}).await
}

/// [`node`] with a last touch to the tenant.
async fn node_with(
    dir: &std::path::Path,
    agents: &[Agent<'_>],
    touch: impl FnOnce(&mut TenantConfig),
) -> Node {
    let mut c = common::config(dir, &[]);
    c.media.rtp_ports = "44000-44999".into();
    c.registrar.algorithms = vec!["MD5".into()];
    c.tenants = vec![TenantConfig {
        id: "cc".into(),
        domain: DOMAIN.into(),
        users: agents
            .iter()
            .map(|(_, u, _)| UserConfig {
                username: u.to_string(),
                ha1_md5: Some(ha1(Algorithm::Md5, u, DOMAIN, "pw")),
                ha1_sha256: None,
                outbound: None,
            })
            .collect(),
        numbers: vec![NumberConfig {
            number: "8000".into(),
            target: "flow:main".into(),
            priority: 0,
        }],
        queues: vec![toml::from_str(
            "id = \"q\"\nstrategy = \"top-down\"\nannounce_secs = 0\nring_timeout_secs = 5",
        )
        .unwrap()],
        agents: agents
            .iter()
            .map(|(id, u, skills)| AgentConfig {
                id: id.to_string(),
                user: u.to_string(),
                queues: vec![MembershipConfig {
                    queue: "q".into(),
                    tier: 1,
                    penalty: 0,
                }],
                skills: skills.iter().map(|(k, l)| (k.to_string(), *l)).collect(),
                wrap_up_secs: None,
                state: Some("available".into()),
            })
            .collect(),
        flows: vec![toml::from_str(FLOW).unwrap()],
        ..Default::default()
    }];
    touch(&mut c.tenants[0]);
    common::start_with(c).await
}

/// The caller dials the flow's number: answered by the switch with its own SDP. Returns
/// the caller's dialog and the switch's audio address.
async fn dial_flow(caller: &Ua, phone: &Phone, sw: SocketAddr, cid: &str) -> (Side, SocketAddr) {
    dial(caller, phone, sw, cid, "8000").await
}

async fn dial(
    caller: &Ua,
    phone: &Phone,
    sw: SocketAddr,
    cid: &str,
    number: &str,
) -> (Side, SocketAddr) {
    let sdp = phone.sdp();
    let inv = format!(
        "INVITE sip:{number}@{sw} SIP/2.0\r\nVia: SIP/2.0/UDP {ua};branch=z9hG4bK-{cid}-1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@{ua}>;tag=a-{cid}\r\nTo: <sip:{number}@{sw}>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{ua}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len(),
        ua = caller.addr,
    );
    caller.send(sw, &inv).await;
    let (ok, _) = caller.expect("200 to INVITE", is_ok_invite).await;
    let to_switch = sdp_addr(&ok);
    let mut a = Side::caller(caller.addr, cid, &ok);
    caller.send(sw, &a.request("ACK", 1, "", "")).await;
    (a, to_switch)
}

/// Polls the queue until `n` callers wait (bounded); the last count.
async fn waiting(node: &Node, n: usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let q = switchyard::actors::queue::lookup("cc", "q", &node.name).expect("queue");
        let s = switchyard::actors::queue::stats(&q).await.expect("stats");
        if s.waiting == n || tokio::time::Instant::now() > deadline {
            return s.waiting;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc4733_digits_walk_a_two_level_menu_into_the_queue_and_reach_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (caller, agent) = (Ua::new().await, Ua::new().await);
    let mut phone = Phone::new().await;
    let node = node(dir.path(), &[("a1", "2001", &[])]).await;
    let sw = common::udp_addr(&node);
    let cid = "ivr-1";
    let (mut a, to_switch) = dial_flow(&caller, &phone, sw, cid).await;

    // The first menu's prompt, byte for byte.
    let first = prompt_bytes("thank-you-for-waiting");
    let heard = phone.listen(Duration::from_millis(1500)).await;
    assert!(
        contains(&heard, &first[400..1200]),
        "the caller hears the first menu ({} bytes heard)",
        heard.len()
    );

    // 2: the second menu, whose prompt is heard next.
    phone.digit(to_switch, '2').await;
    let second = prompt_bytes("all-agents-busy");
    let heard = phone.listen(Duration::from_millis(1500)).await;
    assert!(
        contains(&heard, &second[400..1200]),
        "the caller hears the second menu ({} bytes heard)",
        heard.len()
    );

    // 4: the queue; the agent's phone registers and is offered the call.
    phone.digit(to_switch, '4').await;
    assert_eq!(
        waiting(&node, 1).await,
        1,
        "the caller waits in the queue after 2, 4"
    );
    common::register_udp(&agent, sw, DOMAIN, "2001", "pw").await;
    let (offer, from) = agent.expect_request("INVITE").await;
    agent
        .send(
            from,
            &answer(&offer, 200, "OK", "ag", agent.addr, &phone_sdp_for_agent()),
        )
        .await;
    agent.expect_request("ACK").await;

    // The caller hangs up; the CDR keeps the digits and the queue it reached.
    caller.send(sw, &a.request("BYE", 0, "", "")).await;
    let (bye, from) = agent.expect_request("BYE").await;
    agent
        .send(from, &answer(&bye, 200, "OK", "", agent.addr, ""))
        .await;
    caller
        .expect("200 to BYE", |m| {
            m.status() == Some(200) && m.cseq().is_some_and(|c| c.method.to_string() == "BYE")
        })
        .await;
    let cdr = common::cdr(&node, dir.path(), cid).await;
    assert_eq!(cdr.dtmf.as_deref(), Some("24"), "{cdr:?}");
    assert_eq!(cdr.route.as_deref(), Some("queue:q"), "{cdr:?}");
    assert_eq!(cdr.queue.as_deref(), Some("cc/q"), "{cdr:?}");
    assert_eq!(cdr.agent.as_deref(), Some("a1"), "{cdr:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flows_set_step_gives_the_caller_skills_only_a_skilled_agent_is_offered() {
    let dir = tempfile::tempdir().unwrap();
    let (caller, plain, skilled) = (Ua::new().await, Ua::new().await, Ua::new().await);
    let mut phone = Phone::new().await;
    let node = node(
        dir.path(),
        &[("a1", "2001", &[]), ("a2", "2002", &[("vip", 6)])],
    )
    .await;
    let sw = common::udp_addr(&node);
    common::register_udp(&plain, sw, DOMAIN, "2001", "pw").await;
    common::register_udp(&skilled, sw, DOMAIN, "2002", "pw").await;
    let (_a, to_switch) = dial_flow(&caller, &phone, sw, "ivr-vip").await;
    // 9: priority 5 and the skill vip at level 5, then the queue.
    phone.digit(to_switch, '9').await;
    let (offer, _) = skilled.expect_request("INVITE").await;
    assert!(!common::call_id(&offer).is_empty());
    assert!(
        plain.recv(Duration::from_millis(500)).await.is_none(),
        "the agent without the skill is not offered the call"
    );
}

fn phone_sdp_for_agent() -> String {
    "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 47000 RTP/AVP 0\r\n".into()
}

const HOOKED: &str = r#"
id = "hooked"
[[steps]]
id = "ask"
type = "webhook"
timeout_ms = 1000
fallback = "bye"
[[steps]]
id = "sales"
type = "queue"
target = "q"
[[steps]]
id = "bye"
type = "hangup"
"#;

const SECRET: &str = "a-webhook-secret-of-the-tenant";

/// One request the webhook server received: its headers (lower-case names) and body.
struct HookRequest {
    headers: std::collections::HashMap<String, String>,
    body: Vec<u8>,
}

/// A webhook server on loopback that answers by the Call-ID in the body: `slow` after 2 s,
/// `badjson` with a body that is not JSON, `fails` with 500, anything else `{"next":
/// "sales"}`. Every request it read goes to the returned channel.
async fn hook_server() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<HookRequest>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let headers: std::collections::HashMap<String, String> = head
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let len: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = buf[head_end..head_end + len].to_vec();
                let text = String::from_utf8_lossy(&body).into_owned();
                let (status, answer) = if text.contains("hook-slow") {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    (200, r#"{"next": "sales"}"#)
                } else if text.contains("hook-badjson") {
                    (200, "{next: sales")
                } else if text.contains("hook-fails") {
                    (500, r#"{"next": "sales"}"#)
                } else {
                    (200, r#"{"next": "sales", "priority": 2}"#)
                };
                let _ = tx.send(HookRequest { headers, body });
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_step_routes_by_a_signed_answer_and_falls_back_on_slow_bad_and_500() {
    let dir = tempfile::tempdir().unwrap();
    let (hook, mut requests) = hook_server().await;
    let node = node_with(dir.path(), &[("a1", "2001", &[])], |t| {
        t.webhook_url = Some(format!("http://{hook}/ivr"));
        t.webhook_secret = Some(SECRET.into());
        t.flows.push(toml::from_str(HOOKED).unwrap());
        t.numbers.push(NumberConfig {
            number: "8100".into(),
            target: "flow:hooked".into(),
            priority: 0,
        });
    })
    .await;
    let sw = common::udp_addr(&node);
    let phone = Phone::new().await;

    // A good answer: the caller waits in the queue the answer named.
    let caller = Ua::new().await;
    let (mut a, _) = dial(&caller, &phone, sw, "hook-good", "8100").await;
    assert_eq!(waiting(&node, 1).await, 1, "the answer's step: the queue");
    let req = requests.recv().await.expect("the webhook was called");
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["call_id"], "hook-good");
    assert_eq!(body["tenant"], "cc");
    assert_eq!(body["called"], "8100");
    // The signature: HMAC-SHA256 of "<timestamp>.<body>" under the tenant's secret.
    let ts = req.headers["x-switchyard-timestamp"].clone();
    let mut signed = ts.into_bytes();
    signed.push(b'.');
    signed.extend_from_slice(&req.body);
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&signed);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        req.headers["x-switchyard-signature"],
        format!("sha256={want}")
    );
    caller.send(sw, &a.request("BYE", 0, "", "")).await;
    assert_eq!(waiting(&node, 0).await, 0);

    // A slow answer (2 s for a 1 s timeout), bad JSON and a 500: the fallback hangs up.
    for cid in ["hook-slow", "hook-badjson", "hook-fails"] {
        let caller = Ua::new().await;
        dial(&caller, &phone, sw, cid, "8100").await;
        let (bye, _) = caller.expect_request("BYE").await;
        assert_eq!(common::call_id(&bye), cid);
        let req = requests.recv().await.expect("the webhook was called");
        assert!(String::from_utf8_lossy(&req.body).contains(cid));
    }
    assert_eq!(waiting(&node, 0).await, 0, "no fallback reached the queue");
}
