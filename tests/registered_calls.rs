//! Calls to a tenant's registered users: phones register with digest authentication (over
//! UDP and over TCP), a call to the user rings all its phones at once over the flows they
//! registered on, the first answer wins and the others are cancelled. Calls from a tenant's
//! phones are challenged (407); a user with no binding gets 480; bindings survive a restart.

mod common;

use bytes::Bytes;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use switchyard::config::{TenantConfig, UserConfig};
use switchyard::sip::auth::{ha1, Algorithm};
use switchyard::sip::message::{HeaderName, Message};
use switchyard::sip::parse::{check_stream, parse, Framing, Limits, StreamCheck};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DOMAIN: &str = "acme.test";

fn tenant() -> TenantConfig {
    let user = |u: &str, pw: &str| UserConfig {
        username: u.into(),
        ha1_md5: Some(ha1(Algorithm::Md5, u, DOMAIN, pw)),
        ha1_sha256: Some(ha1(Algorithm::Sha256, u, DOMAIN, pw)),
        outbound: None,
    };
    TenantConfig {
        id: "acme".into(),
        domain: DOMAIN.into(),
        realm: None,
        users: vec![
            user("1001", "pw-1001"),
            user("1002", "pw-1002"),
            user("1003", "pw-1003"),
        ],
        users_csv: None,
        ..Default::default()
    }
}

/// A phone on a TCP connection (its own framing).
struct TcpPhone {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl TcpPhone {
    async fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).await.unwrap();
    }

    async fn recv(&mut self, wait: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Ok(StreamCheck::Complete { len }) = check_stream(&self.buf, &Limits::default()) {
                let bytes: Vec<u8> = self.buf.drain(..len).collect();
                return parse(Bytes::from(bytes), Framing::Stream, &Limits::default()).ok();
            }
            let mut chunk = [0u8; 4096];
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    async fn expect(&mut self, what: &str, pred: impl Fn(&Message) -> bool) -> Message {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Some(m) if pred(&m) => return m,
                Some(_) => continue,
                None => panic!("TCP phone: timed out waiting for {what}"),
            }
        }
    }
}

/// Registers over TCP with a Contact whose port is NOT the connection's source port (as
/// behind NAT): the switch must use the connection, not the Contact.
async fn register_tcp(sw_tcp: SocketAddr, user: &str, pw: &str) -> TcpPhone {
    let stream = TcpStream::connect(sw_tcp).await.unwrap();
    let mut phone = TcpPhone {
        stream,
        buf: Vec::new(),
    };
    let contact = format!("sip:{user}@127.0.0.1:5999;transport=tcp");
    phone
        .send(&register_request(
            DOMAIN,
            user,
            &contact,
            "TCP",
            "127.0.0.1:5999",
            1,
            None,
        ))
        .await;
    let ch = phone.expect("401", |m| m.status() == Some(401)).await;
    let auth = credentials(
        &ch,
        HeaderName::WwwAuthenticate,
        user,
        pw,
        "REGISTER",
        &format!("sip:{DOMAIN}"),
    );
    phone
        .send(&register_request(
            DOMAIN,
            user,
            &contact,
            "TCP",
            "127.0.0.1:5999",
            2,
            Some(auth),
        ))
        .await;
    phone.expect("200", |m| m.status() == Some(200)).await;
    phone
}

fn node_config(dir: &std::path::Path) -> switchyard::config::Config {
    let mut c = config(dir, &[]);
    c.tenants = vec![tenant()];
    c.timers.t1_ms = 100;
    c.timers.t2_ms = 400;
    c.timers.t4_ms = 500;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_rings_every_phone_of_the_user_over_its_own_flow() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(node_config(dir.path())).await;
    let (sw, sw_tcp) = (udp_addr(&node), tcp_addr(&node));
    let udp_phone = Ua::new().await;
    register_udp(&udp_phone, sw, DOMAIN, "1001", "pw-1001").await;
    let mut tcp_phone = register_tcp(sw_tcp, "1001", "pw-1001").await;
    assert_eq!(node.location.lookup("acme", "1001").len(), 2);

    // A caller from outside the tenant calls the user: both phones ring.
    let caller = Ua::new().await;
    let cid = "fork-1";
    let inv = invite(cid, "1001", caller.addr, sw)
        .replace(&format!("sip:1001@{sw}"), &format!("sip:1001@{DOMAIN}"));
    caller.send(sw, &inv).await;
    let (udp_inv, udp_from) = udp_phone.expect_request("INVITE").await;
    let tcp_inv = tcp_phone
        .expect("INVITE on the registered TCP connection", |m| {
            m.method().is_some()
        })
        .await;
    assert_eq!(
        udp_inv.request_uri().unwrap().as_ref(),
        format!("sip:1001@{}", udp_phone.addr).as_bytes()
    );
    assert!(tcp_inv
        .request_uri()
        .unwrap()
        .starts_with(b"sip:1001@127.0.0.1:5999"));
    assert_eq!(udp_inv.call_id(), tcp_inv.call_id(), "one B leg, two forks");
    assert_ne!(
        udp_inv.top_via().unwrap().branch(),
        tcp_inv.top_via().unwrap().branch()
    );
    udp_phone
        .send(
            udp_from,
            &answer(&udp_inv, 180, "Ringing", "udp-tag", udp_phone.addr, ""),
        )
        .await;

    // The TCP phone answers first: the UDP phone's fork is cancelled.
    tcp_phone
        .send(&answer(
            &tcp_inv,
            200,
            "OK",
            "tcp-tag",
            "127.0.0.1:5999".parse().unwrap(),
            SDP,
        ))
        .await;
    let (ok, _) = caller.expect_status(200).await;
    assert!(ok.body.len() > 10, "the answering phone's SDP");
    let (cancel, _) = udp_phone.expect_request("CANCEL").await;
    assert_eq!(
        cancel.top_via().unwrap().branch(),
        udp_inv.top_via().unwrap().branch()
    );
    udp_phone
        .send(
            udp_from,
            &answer(&cancel, 200, "OK", "", udp_phone.addr, ""),
        )
        .await;
    udp_phone
        .send(
            udp_from,
            &answer(
                &udp_inv,
                487,
                "Request Terminated",
                "udp-tag",
                udp_phone.addr,
                "",
            ),
        )
        .await;
    udp_phone.expect_request("ACK").await;

    // The caller's ACK and BYE reach the TCP phone over its connection.
    let to = String::from_utf8_lossy(ok.value(HeaderName::To).unwrap()).to_string();
    let req = |m: &str, seq: u32| {
        format!(
            "{m} sip:x@{sw} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-{cid}-{m};rport\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@{}>;tag=a-{cid}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {seq} {m}\r\nContent-Length: 0\r\n\r\n",
            caller.addr, caller.addr
        )
    };
    caller.send(sw, &req("ACK", 1)).await;
    tcp_phone
        .expect("ACK", |m| {
            m.method().is_some_and(|x| x.as_bytes() == b"ACK")
        })
        .await;
    caller.send(sw, &req("BYE", 2)).await;
    let bye = tcp_phone
        .expect("BYE", |m| {
            m.method().is_some_and(|x| x.as_bytes() == b"BYE")
        })
        .await;
    tcp_phone
        .send(&answer(
            &bye,
            200,
            "OK",
            "",
            "127.0.0.1:5999".parse().unwrap(),
            "",
        ))
        .await;
    caller
        .expect("200 to BYE", |m| {
            m.status() == Some(200) && m.cseq().is_some_and(|c| c.seq == 2)
        })
        .await;
    assert!(wait_until(Duration::from_secs(5), || node.active_calls() == 0).await);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_phones_are_challenged_and_unregistered_users_get_480() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(node_config(dir.path())).await;
    let sw = udp_addr(&node);
    let phone = Ua::new().await;
    register_udp(&phone, sw, DOMAIN, "1001", "pw-1001").await;

    // 1002 calls 1001: challenged with 407 first, then put through with credentials.
    let caller = Ua::new().await;
    let cid = "auth-1";
    let inv = |auth: &str, seq: u32| {
        format!(
            "INVITE sip:1001@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-{cid}-{seq};rport\r\nMax-Forwards: 70\r\nFrom: <sip:1002@{DOMAIN}>;tag=c1\r\nTo: <sip:1001@{DOMAIN}>\r\nCall-ID: {cid}\r\nCSeq: {seq} INVITE\r\nContact: <sip:1002@{}>\r\n{auth}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
            caller.addr, caller.addr, SDP.len()
        )
    };
    caller.send(sw, &inv("", 1)).await;
    let (ch, _) = caller.expect_status(407).await;
    assert!(
        phone.recv(Duration::from_millis(300)).await.is_none(),
        "nothing rings before authentication"
    );
    let auth = credentials(
        &ch,
        HeaderName::ProxyAuthenticate,
        "1002",
        "pw-1002",
        "INVITE",
        &format!("sip:1001@{DOMAIN}"),
    );
    caller
        .send(sw, &inv(&format!("Proxy-Authorization: {auth}\r\n"), 2))
        .await;
    let (ring, _) = phone.expect_request("INVITE").await;
    assert!(
        ring.value(HeaderName::ProxyAuthorization).is_none(),
        "credentials are not passed on"
    );

    // A wrong password for 1002 is refused again (407), not routed.
    let bad = credentials(
        &ch,
        HeaderName::ProxyAuthenticate,
        "1002",
        "wrong",
        "INVITE",
        &format!("sip:1001@{DOMAIN}"),
    );
    let cid2 = "auth-2";
    caller
        .send(
            sw,
            &inv(&format!("Proxy-Authorization: {bad}\r\n"), 3).replace(cid, cid2),
        )
        .await;
    caller
        .expect("407 for a wrong password", |m| {
            m.status() == Some(407) && m.call_id().is_some_and(|c| c.as_ref() == cid2.as_bytes())
        })
        .await;

    // A user with no binding: 480.
    let outsider = Ua::new().await;
    outsider
        .send(
            sw,
            &invite("nobind-1", "1003", outsider.addr, sw)
                .replace(&format!("sip:1003@{sw}"), &format!("sip:1003@{DOMAIN}")),
        )
        .await;
    outsider.expect_status(480).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_survive_a_restart_and_calls_reach_the_phone() {
    let dir = tempfile::tempdir().unwrap();
    let phone = Ua::new().await;
    {
        let node = start_with(node_config(dir.path())).await;
        register_udp(&phone, udp_addr(&node), DOMAIN, "1001", "pw-1001").await;
        if let Some(r) = ractor::registry::where_is(node.tree.registrar_name.clone()) {
            switchyard::actors::registrar::flush(&r.into())
                .await
                .unwrap();
        }
        node.shutdown().await;
    }
    let node = start_with(node_config(dir.path())).await;
    assert!(
        wait_until(Duration::from_secs(5), || node
            .location
            .lookup("acme", "1001")
            .len()
            == 1)
        .await,
        "the binding was reloaded"
    );
    let sw = udp_addr(&node);
    let caller = Ua::new().await;
    caller
        .send(
            sw,
            &invite("restart-1", "1001", caller.addr, sw)
                .replace(&format!("sip:1001@{sw}"), &format!("sip:1001@{DOMAIN}")),
        )
        .await;
    let (inv, _) = phone.expect_request("INVITE").await;
    assert_eq!(
        inv.request_uri().unwrap().as_ref(),
        format!("sip:1001@{}", phone.addr).as_bytes()
    );
    node.shutdown().await;
}
