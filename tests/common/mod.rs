//! Shared pieces of the integration tests: a node on loopback ports and a minimal SIP user
//! agent over real sockets.
#![allow(dead_code)]

pub mod cluster;
pub mod etcd;
pub mod pg;
pub mod rtp;

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;
use switchyard::config::{Config, RouteConfig};
use switchyard::server::Node;
use switchyard::sip::message::{HeaderName, Message};
use switchyard::sip::parse::{parse, Framing, Limits};
use switchyard::transport::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// The node's API token in the tests' configs (every route but `/health` and `/metrics`
/// needs it; at least 32 characters).
pub const API_TOKEN: &str = "switchyard-test-api-token-0123456789-abcdef";
/// [`API_TOKEN`] as an `Authorization` value.
pub const API_BEARER: &str = "Bearer switchyard-test-api-token-0123456789-abcdef";

pub fn testdata() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/rfc4475")
}

/// One row of `../shared/testdata/rfc4475/manifest.tsv`: the RFC's verdict on a message.
pub struct Verdict {
    /// valid, invalid or semantic-invalid.
    pub expected: String,
    /// What the RFC says an element should do.
    pub action: String,
    /// Status codes it names (`400`, `501|400`, `error`, `-`).
    pub codes: String,
    /// Whether discarding it is allowed (yes / no / tcp).
    pub no_reply_ok: String,
    /// Whether a liberal element may repair it.
    pub liberal_ok: String,
}

/// The RFC 4475 manifest, by message name.
pub fn manifest() -> std::collections::HashMap<String, Verdict> {
    std::fs::read_to_string(testdata().join("manifest.tsv"))
        .expect("manifest.tsv")
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let v = Verdict {
                expected: f[2].into(),
                action: f[3].into(),
                codes: f[4].into(),
                no_reply_ok: f[5].into(),
                liberal_ok: f[6].into(),
            };
            (f[0].to_string(), v)
        })
        .collect()
}

/// A config for a node on 127.0.0.1 with ephemeral ports.
pub fn config(data_dir: &std::path::Path, routes: &[(&str, String)]) -> Config {
    let mut c = Config::default();
    c.sip.listen = vec!["udp:127.0.0.1:0".into(), "tcp:127.0.0.1:0".into()];
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.http.token = Some(API_TOKEN.into());
    c.data_dir = data_dir.to_path_buf();
    c.routes = routes
        .iter()
        .map(|(p, t)| RouteConfig {
            id: None,
            prefix: p.to_string(),
            target: t.clone(),
            strip: 0,
            prepend: String::new(),
            trunks: Vec::new(),
            policy: switchyard::routing::trunks::Policy::Priority,
            max_attempts: 3,
            media: Default::default(),
            record: false,
            from_trunks: false,
        })
        .collect();
    c.media.bind = "127.0.0.1".parse().unwrap();
    // The tests' callers send from 127.0.0.1 and use the static routes: a trusted peer (other
    // loopback addresses stand in for the internet; nothing is trusted by default).
    c.security.trusted = vec!["127.0.0.1/32".into()];
    c
}

pub async fn start(data_dir: &std::path::Path, routes: &[(&str, String)]) -> Node {
    start_with(config(data_dir, routes)).await
}

pub async fn start_with(mut c: Config) -> Node {
    // The tests' own user agents send from 127.0.0.1, often faster than any phone: the
    // edge never bans it. Tests of the edge itself send from other 127.0.0.x addresses.
    let ua = "127.0.0.1/32".to_string();
    if !c.security.flood.exempt.contains(&ua) {
        c.security.flood.exempt.push(ua);
    }
    c.validate().expect("valid config");
    Node::start(c).await.expect("node starts")
}

pub fn udp_addr(node: &Node) -> SocketAddr {
    node.sip_addr(Protocol::Udp).unwrap()
}

pub fn tcp_addr(node: &Node) -> SocketAddr {
    node.sip_addr(Protocol::Tcp).unwrap()
}

/// A test user agent on a UDP socket.
pub struct Ua {
    pub sock: UdpSocket,
    pub addr: SocketAddr,
}

impl Ua {
    pub async fn new() -> Ua {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        Ua { sock, addr }
    }

    pub async fn send(&self, to: SocketAddr, text: &str) {
        self.sock.send_to(text.as_bytes(), to).await.unwrap();
    }

    pub async fn send_bytes(&self, to: SocketAddr, b: &[u8]) {
        self.sock.send_to(b, to).await.unwrap();
    }

    /// The next message within `wait`, with its source.
    pub async fn recv(&self, wait: Duration) -> Option<(Message, SocketAddr)> {
        let mut buf = vec![0u8; 65536];
        let (n, from) = tokio::time::timeout(wait, self.sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        let m = parse(
            Bytes::copy_from_slice(&buf[..n]),
            Framing::Datagram,
            &Limits::default(),
        )
        .ok()?;
        Some((m, from))
    }

    /// Waits for a message matching `pred`, skipping others (e.g. retransmissions, 100).
    pub async fn expect(
        &self,
        what: &str,
        pred: impl Fn(&Message) -> bool,
    ) -> (Message, SocketAddr) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Some((m, from)) if pred(&m) => return (m, from),
                Some(_) => continue,
                None => panic!("timed out waiting for {what}"),
            }
        }
    }

    pub async fn expect_status(&self, status: u16) -> (Message, SocketAddr) {
        self.expect(&format!("a {status} response"), |m| {
            m.status() == Some(status)
        })
        .await
    }

    pub async fn expect_request(&self, method: &str) -> (Message, SocketAddr) {
        self.expect(&format!("a {method} request"), |m| {
            m.method().is_some_and(|x| x.to_string() == method)
        })
        .await
    }
}

/// Sends raw bytes on a new TCP connection and reads the first response (if any) within
/// `wait`.
pub async fn tcp_exchange(to: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Message> {
    let mut s = TcpStream::connect(to).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = &buf[..end];
            let cl = String::from_utf8_lossy(head)
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Content-Length: ")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + cl {
                break;
            }
        }
    }
    parse(Bytes::from(buf), Framing::Datagram, &Limits::default()).ok()
}

pub fn options(call_id: &str, ua: SocketAddr, proto: &str) -> String {
    format!(
        "OPTIONS sip:switch@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{proto} {ua};branch=z9hG4bK{call_id};rport\r\nMax-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p1\r\nTo: <sip:switch@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

pub const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";

/// An INVITE from `ua` to user `user` at the switch.
pub fn invite(call_id: &str, user: &str, ua: SocketAddr, to: SocketAddr) -> String {
    format!(
        "INVITE sip:{user}@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {ua};branch=z9hG4bK-{call_id}-1;rport\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@{ua}>;tag=a-{call_id}\r\nTo: <sip:{user}@{to}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{ua}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    )
}

/// A response to a received request, built by the test UA (callee side).
pub fn answer(
    req: &Message,
    status: u16,
    reason: &str,
    to_tag: &str,
    contact: SocketAddr,
    body: &str,
) -> String {
    let mut s = format!("SIP/2.0 {status} {reason}\r\n");
    for h in &req.headers {
        match h.name {
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => s
                .push_str(&format!(
                    "{}: {}\r\n",
                    h.name.canonical().unwrap(),
                    String::from_utf8_lossy(&h.value)
                )),
            HeaderName::To => {
                let v = String::from_utf8_lossy(&h.value).to_string();
                let v = if v.contains("tag=") || to_tag.is_empty() {
                    v
                } else {
                    format!("{v};tag={to_tag}")
                };
                s.push_str(&format!("To: {v}\r\n"));
            }
            _ => {}
        }
    }
    s.push_str(&format!("Contact: <sip:bob@{contact}>\r\n"));
    if !body.is_empty() {
        s.push_str("Content-Type: application/sdp\r\n");
    }
    s.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s
}

/// Polls `f` until it is true or `wait` passes.
pub async fn wait_until(wait: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// A REGISTER for `user` of `domain` (digest `auth` once challenged).
pub fn register_request(
    domain: &str,
    user: &str,
    contact: &str,
    proto: &str,
    via_host: &str,
    cseq: u32,
    auth: Option<String>,
) -> String {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/{proto} {via_host};branch=z9hG4bK-reg-{user}-{cseq};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{user}@{domain}>;tag=r{user}\r\nTo: <sip:{user}@{domain}>\r\nCall-ID: reg-{user}-{proto}\r\nCSeq: {cseq} REGISTER\r\nContact: <{contact}>\r\nExpires: 600\r\n{auth}Content-Length: 0\r\n\r\n"
    )
}

/// The Authorization value answering a 401/407 (SHA-256 offered first).
pub fn credentials(
    challenge: &Message,
    header: switchyard::sip::message::HeaderName,
    user: &str,
    pw: &str,
    method: &str,
    uri: &str,
) -> String {
    let ch = switchyard::sip::auth::Challenge::parse(challenge.value(header).expect("a challenge"))
        .expect("parsable challenge");
    let h = switchyard::sip::auth::ha1(ch.algorithm, user, &ch.realm, pw);
    switchyard::sip::auth::authorization_value(&ch, user, &h, method, uri, 1, "0a4f113b")
}

/// Registers a UDP phone with digest authentication (answering the 401).
pub async fn register_udp(ua: &Ua, sw: SocketAddr, domain: &str, user: &str, pw: &str) {
    let contact = format!("sip:{user}@{}", ua.addr);
    ua.send(
        sw,
        &register_request(domain, user, &contact, "UDP", &ua.addr.to_string(), 1, None),
    )
    .await;
    let (ch, _) = ua.expect_status(401).await;
    let auth = credentials(
        &ch,
        switchyard::sip::message::HeaderName::WwwAuthenticate,
        user,
        pw,
        "REGISTER",
        &format!("sip:{domain}"),
    );
    ua.send(
        sw,
        &register_request(
            domain,
            user,
            &contact,
            "UDP",
            &ua.addr.to_string(),
            2,
            Some(auth),
        ),
    )
    .await;
    ua.expect_status(200).await;
}

/// The value of the first header called `name` (case-insensitive), or "".
pub fn header(m: &Message, name: &str) -> String {
    m.headers
        .iter()
        .find(|h| {
            h.name
                .canonical()
                .is_some_and(|c| c.eq_ignore_ascii_case(name))
        })
        .map(|h| String::from_utf8_lossy(&h.value).into_owned())
        .unwrap_or_default()
}

/// A trunk to a gateway on loopback: probes off, a 400 ms INVITE timeout, `extra` TOML lines.
pub fn trunk(id: &str, gw: SocketAddr, extra: &str) -> switchyard::config::TrunkConfig {
    toml::from_str(&format!(
        "id = \"{id}\"\ngateways = [\"sip:{gw}\"]\ninvite_timeout_ms = 400\nprobe_interval_secs = 0\n{extra}"
    ))
    .unwrap()
}

/// A config whose route `9` (strip 1) goes to `trunks` under `policy`.
pub fn trunk_config(
    dir: &std::path::Path,
    trunks: Vec<switchyard::config::TrunkConfig>,
    policy: &str,
) -> Config {
    let mut c: Config = config(dir, &[]);
    let route: RouteConfig = toml::from_str(&format!(
        "prefix = \"9\"\nstrip = 1\ntrunks = [{}]\npolicy = \"{policy}\"",
        trunks
            .iter()
            .map(|t| format!("\"{}\"", t.id))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .unwrap();
    c.routes = vec![route];
    c.trunks = trunks;
    c
}

/// An HTTP reply as the API tests read it.
pub struct Reply {
    pub status: u16,
    pub headers: std::collections::HashMap<String, String>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to the end.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: &str,
) -> Reply {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let content_type = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("reply in time")
        .expect("read");
    let raw = String::from_utf8(raw).expect("utf-8 reply");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head/body separator");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: std::collections::HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    // The parsing above is only right for sized bodies; catch a chunked reply loudly.
    assert!(
        !headers.contains_key("transfer-encoding"),
        "unexpected chunked reply: {headers:?}"
    );
    if let Some(len) = headers.get("content-length") {
        assert_eq!(len.parse::<usize>().expect("length"), body.len());
    }
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A header's value as text (panics if missing).
pub fn val(m: &Message, h: HeaderName) -> String {
    String::from_utf8_lossy(m.value(h).unwrap_or_else(|| panic!("{h:?} missing"))).into_owned()
}

/// The Call-ID as text.
pub fn call_id(m: &Message) -> String {
    String::from_utf8_lossy(m.call_id().expect("Call-ID")).into_owned()
}

/// The first Contact's URI.
pub fn contact_uri(m: &Message) -> String {
    String::from_utf8_lossy(&m.contacts().next().expect("Contact").uri).into_owned()
}

/// A token unique within the test process.
pub fn rand_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One side of a dialog as a test UA sees it: what it needs to send requests in it.
pub struct Side {
    pub me: SocketAddr,
    pub ruri: String,
    pub from: String,
    pub to: String,
    pub call_id: String,
    pub cseq: u32,
}

impl Side {
    /// The caller's side after the switch's 2xx (or 18x) to its INVITE `cid`.
    pub fn caller(me: SocketAddr, cid: &str, resp: &Message) -> Side {
        Side {
            me,
            ruri: contact_uri(resp),
            from: val(resp, HeaderName::From),
            to: val(resp, HeaderName::To),
            call_id: cid.to_string(),
            cseq: 1,
        }
    }

    /// The callee's side after answering the switch's INVITE with tag `tag`.
    pub fn callee(me: SocketAddr, inv: &Message, tag: &str) -> Side {
        Side {
            me,
            ruri: contact_uri(inv),
            from: format!("{};tag={tag}", val(inv, HeaderName::To)),
            to: val(inv, HeaderName::From),
            call_id: call_id(inv),
            cseq: 0,
        }
    }

    /// A request in the dialog (the next CSeq; ACK reuses `ack_cseq`). Returns it and its
    /// branch.
    pub fn request(&mut self, method: &str, ack_cseq: u32, extra: &str, body: &str) -> String {
        let seq = if method == "ACK" {
            ack_cseq
        } else {
            self.cseq += 1;
            self.cseq
        };
        let br = format!("z9hG4bK-t{}", rand_token());
        format!(
            "{method} {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={br};rport\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {seq} {method}\r\nContact: <sip:ua@{}>\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            self.ruri,
            self.me,
            self.from,
            self.to,
            self.call_id,
            self.me,
            body.len()
        )
    }
}

/// The CDR of a call, once the store writer has committed it (flushing and polling, bounded).
pub async fn cdr(node: &Node, dir: &std::path::Path, call_id: &str) -> switchyard::store::Cdr {
    let store = node.tree.store().unwrap();
    for _ in 0..200 {
        switchyard::actors::store_writer::flush(&store)
            .await
            .unwrap();
        let found = switchyard::store::Store::open(&dir.join("switchyard.db"))
            .unwrap()
            .get_cdr_by_call_id(call_id)
            .unwrap();
        if let Some(c) = found {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no CDR for {call_id}");
}
