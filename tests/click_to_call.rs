//! Click-to-call on a real node: `POST /calls` rings the agent's registered phone with an
//! INVITE without SDP; when it answers with its offer, the customer is called through a
//! trunk with that offer; the customer's answer reaches the agent in the ACK (RFC 3725,
//! flow I), and the two are bridged.

mod common;

use common::*;
use std::time::Duration;
use switchyard::config::{AgentConfig, TenantConfig, UserConfig};
use switchyard::sip::auth::{ha1, Algorithm};

const DOMAIN: &str = "c2c.test";

/// The node's API token.
const TOKEN: &str = "click-to-call-test-token-0123456789";

/// `POST /calls` with `body` and bearer `token`: the status and the body.
async fn post_call(addr: std::net::SocketAddr, token: &str, body: &str) -> (u16, String) {
    let r = http_request(
        addr,
        "POST",
        "/calls",
        Some(&format!("Bearer {token}")),
        body,
    )
    .await;
    (r.status, r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn click_to_call_rings_the_agent_then_calls_the_customer_through_a_trunk() {
    let dir = tempfile::tempdir().unwrap();
    let carrier = Ua::new().await;
    let mut c = config(dir.path(), &[]);
    c.http.token = Some(TOKEN.into());
    c.registrar.algorithms = vec!["MD5".into()];
    c.trunks = vec![toml::from_str(&format!(
        "id = \"a\"\ngateways = [\"sip:{}\"]\nprobe_interval_secs = 0",
        carrier.addr
    ))
    .unwrap()];
    c.routes = vec![toml::from_str("prefix = \"9\"\nstrip = 1\ntrunks = [\"a\"]").unwrap()];
    c.tenants = vec![TenantConfig {
        id: "t".into(),
        domain: DOMAIN.into(),
        users: vec![UserConfig {
            username: "2001".into(),
            ha1_md5: Some(ha1(Algorithm::Md5, "2001", DOMAIN, "pw")),
            ha1_sha256: None,
            outbound: None,
        }],
        agents: vec![AgentConfig {
            id: "a1".into(),
            user: "2001".into(),
            queues: Vec::new(),
            skills: Default::default(),
            wrap_up_secs: None,
            state: Some("available".into()),
        }],
        ..Default::default()
    }];
    let node = start_with(c).await;
    let sw = udp_addr(&node);
    let http_addr = node.http_addr;

    // Refusals first: no token, no phone registered yet, an unknown agent.
    let body = r#"{"tenant": "t", "agent": "a1", "number": "9441234"}"#;
    let (st, _) = post_call(http_addr, "wrong", body).await;
    assert_eq!(st, 403);
    let (st, problem) = post_call(http_addr, TOKEN, body).await;
    assert_eq!(st, 409, "{problem}");
    let unknown = r#"{"tenant": "t", "agent": "zz", "number": "9441234"}"#;
    let (st, _) = post_call(http_addr, TOKEN, unknown).await;
    assert_eq!(st, 404);

    let phone = Ua::new().await;
    register_udp(&phone, sw, DOMAIN, "2001", "pw").await;
    let (st, started) = post_call(http_addr, TOKEN, body).await;
    assert_eq!(st, 202, "{started}");
    assert!(started.contains("call_id"), "{started}");

    // The agent's phone rings first, with no offer.
    let (inv_a, _) = phone.expect_request("INVITE").await;
    assert!(inv_a.body.is_empty(), "late offer to the agent");
    phone
        .send(sw, &answer(&inv_a, 180, "Ringing", "ag", phone.addr, ""))
        .await;
    assert!(
        carrier.recv(Duration::from_millis(200)).await.is_none(),
        "the customer is not called before the agent answers"
    );
    phone
        .send(sw, &answer(&inv_a, 200, "OK", "ag", phone.addr, SDP))
        .await;
    // The customer gets the agent's offer, number rewritten by the route.
    let (inv_c, _) = carrier.expect_request("INVITE").await;
    assert!(
        String::from_utf8_lossy(inv_c.request_uri().unwrap()).starts_with("sip:441234@"),
        "{inv_c:?}"
    );
    assert_eq!(&inv_c.body[..], SDP.as_bytes());
    let customer_sdp = SDP.replace("6000", "7000");
    carrier
        .send(
            sw,
            &answer(&inv_c, 200, "OK", "cu", carrier.addr, &customer_sdp),
        )
        .await;
    // Both are ACKed; the agent's ACK carries the customer's answer.
    let (ack_a, _) = phone.expect_request("ACK").await;
    assert!(
        String::from_utf8_lossy(&ack_a.body).contains("7000"),
        "{ack_a:?}"
    );
    carrier.expect_request("ACK").await;
    // The agent is on this call: no queue can offer it another, a second click-to-call is
    // refused.
    let agent = switchyard::actors::agent::lookup("t", "a1", &node.name).unwrap();
    let info = switchyard::actors::agent::info(&agent).await.unwrap();
    assert_eq!(info.state, "on_call", "{info:?}");
    let (st, problem) = post_call(http_addr, TOKEN, body).await;
    assert_eq!(st, 409, "{problem}");
    // The agent hangs up: the customer gets the BYE.
    let bye = format!(
        "BYE sip:switch@{sw} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-c2c-bye;rport\r\nMax-Forwards: 70\r\nFrom: {};tag=ag\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        phone.addr,
        header(&inv_a, "To"),
        header(&inv_a, "From"),
        header(&inv_a, "Call-ID"),
    );
    phone.send(sw, &bye).await;
    let (bye_c, _) = carrier.expect_request("BYE").await;
    carrier
        .send(sw, &answer(&bye_c, 200, "OK", "", carrier.addr, ""))
        .await;
    phone
        .expect("200 for the agent's BYE", |m| m.status() == Some(200))
        .await;
    // And is free again once the call is over.
    let mut state = "";
    for _ in 0..100 {
        state = switchyard::actors::agent::info(&agent).await.unwrap().state;
        if state == "available" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state, "available");
    node.shutdown().await;
}
