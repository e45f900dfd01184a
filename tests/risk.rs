//! Risk rules on outbound calls (issue 20) on a real node, loopback addresses standing in
//! for the internet:
//! - 127.0.0.2: user 1001's phone (tenant acme, which may dial out through route `9`);
//! - 127.0.0.10: a trusted peer (a PBX);
//! - 127.0.0.50: the carrier behind trunk `carrier`.
//!
//! A black-listed prefix refuses a phone's call with 403 naming the rule (the carrier hears
//! nothing), a white entry lets a number under it through; click-to-call is refused with a
//! 409 problem naming the rule (a tag's black list) before the agent's phone rings; a
//! frequency cap counted in the SQLite file holds across a node restart; a forbidden window
//! in the callee's zone refuses a call; a trusted peer's calls (no tenant) meet the route's
//! caps and the platform's list.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use switchyard::config::{AgentConfig, Config, TenantConfig, UserConfig};
use switchyard::sip::auth::{ha1, Algorithm};
use switchyard::sip::message::{HeaderName, Message};
use tokio::net::UdpSocket;

const PHONE: &str = "127.0.0.2";
const CARRIER: &str = "127.0.0.50";
const DOMAIN: &str = "acme.test";
/// acme's own API token (`api_token` in the file).
const ACME_TOKEN: &str = "acme-risk-test-token-0123456789abcdef";

async fn ua_at(ip: &str) -> Ua {
    let sock = UdpSocket::bind(format!("{ip}:0")).await.unwrap();
    let addr = sock.local_addr().unwrap();
    Ua { sock, addr }
}

/// Tenant acme (user 1001 and agent a1 on it; route `9` strips the 9 towards the
/// carrier) with `risk` as its `[risk]` section.
fn risk_config(dir: &std::path::Path, carrier: SocketAddr, risk: &str) -> Config {
    let mut c = config(dir, &[]);
    c.timers.t1_ms = 100;
    c.timers.t2_ms = 400;
    c.timers.t4_ms = 500;
    c.registrar.algorithms = vec!["MD5".into()];
    c.trunks = vec![trunk("carrier", carrier, "")];
    c.routes = vec![toml::from_str("prefix = \"9\"\nstrip = 1\ntrunks = [\"carrier\"]").unwrap()];
    c.tenants = vec![TenantConfig {
        id: "acme".into(),
        domain: DOMAIN.into(),
        users: vec![UserConfig {
            username: "1001".into(),
            ha1_md5: Some(ha1(Algorithm::Md5, "1001", DOMAIN, "pw-1001")),
            ha1_sha256: None,
            outbound: None,
        }],
        agents: vec![AgentConfig {
            id: "a1".into(),
            user: "1001".into(),
            queues: Vec::new(),
            skills: Default::default(),
            wrap_up_secs: None,
            state: Some("available".into()),
        }],
        api_token: Some(ACME_TOKEN.into()),
        outbound: vec!["9".into()],
        ..Default::default()
    }];
    c.risk = toml::from_str(risk).unwrap();
    c.validate().expect("a valid config");
    c
}

fn invite_from(
    call_id: &str,
    to_user: &str,
    ua: SocketAddr,
    sw: SocketAddr,
    cseq: u32,
    auth: Option<&str>,
) -> String {
    let auth = auth
        .map(|a| format!("Proxy-Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "INVITE sip:{to_user}@{sw} SIP/2.0\r\nVia: SIP/2.0/UDP {ua};branch=z9hG4bK-{call_id}-{cseq};rport\r\nMax-Forwards: 70\r\nFrom: <sip:1001@{DOMAIN}>;tag=f-{call_id}\r\nTo: <sip:{to_user}@{sw}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:1001@{ua}>\r\n{auth}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    )
}

/// 1001's INVITE to `to_user`, answering the switch's 407: the final answer.
async fn call_out(phone: &Ua, sw: SocketAddr, call_id: &str, to_user: &str) -> Message {
    phone
        .send(sw, &invite_from(call_id, to_user, phone.addr, sw, 1, None))
        .await;
    let (ch, _) = phone.expect_status(407).await;
    let auth = credentials(
        &ch,
        HeaderName::ProxyAuthenticate,
        "1001",
        "pw-1001",
        "INVITE",
        &format!("sip:{to_user}@{sw}"),
    );
    phone
        .send(
            sw,
            &invite_from(call_id, to_user, phone.addr, sw, 2, Some(&auth)),
        )
        .await;
    phone
        .expect(&format!("the final answer to {call_id}"), |m| {
            m.status().is_some_and(|s| s >= 200)
                && m.call_id().is_some_and(|c| c == call_id.as_bytes())
        })
        .await
        .0
}

/// The carrier answers the next INVITE it gets with 486 (ending the attempt).
async fn carrier_busy(carrier: &Ua) -> Message {
    let (inv, from) = carrier.expect_request("INVITE").await;
    carrier
        .send(
            from,
            &answer(&inv, 486, "Busy Here", "busy", carrier.addr, ""),
        )
        .await;
    inv
}

/// Nothing but OPTIONS probes reaches `ua` within `wait`.
async fn hears_no_invite(ua: &Ua, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return true;
        }
        match ua.recv(left).await {
            None => return true,
            Some((m, _)) if m.method().is_some_and(|x| x.to_string() == "INVITE") => return false,
            Some(_) => continue,
        }
    }
}

async fn api(
    node: &switchyard::server::Node,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> Reply {
    http_request(
        node.http_addr,
        method,
        path,
        Some(&format!("Bearer {token}")),
        body,
    )
    .await
}

/// The status line of a response (its reason phrase names the risk rule).
fn status_line(m: &Message) -> String {
    m.to_string().lines().next().unwrap_or("").to_string()
}

fn counter(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_listed_prefix_refuses_a_phones_call_and_a_white_entry_lets_one_through() {
    let dir = tempfile::tempdir().unwrap();
    let carrier = ua_at(CARRIER).await;
    let node = start_with(risk_config(dir.path(), carrier.addr, "")).await;
    let sw = udp_addr(&node);
    let phone = ua_at(PHONE).await;

    // The tenant manages its own lists with its own token: many entries at once.
    let r = api(
        &node,
        "POST",
        "/risk/tenants/acme/black",
        ACME_TOKEN,
        r#"{"entries": ["44*", "+33123456"]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"size\":2"), "{}", r.body);
    let r = api(
        &node,
        "POST",
        "/risk/tenants/acme/white",
        ACME_TOKEN,
        "# released\n4420*\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A bad entry refuses the whole request; the platform's lists are the node's.
    let r = api(
        &node,
        "POST",
        "/risk/tenants/acme/black",
        ACME_TOKEN,
        r#"{"entries": ["55*", "5 5"]}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = api(
        &node,
        "POST",
        "/risk/platform/black",
        ACME_TOKEN,
        r#"{"entries": ["900*"]}"#,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = api(
        &node,
        "POST",
        "/risk/tenants/other/black",
        ACME_TOKEN,
        r#"{"entries": ["1"]}"#,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = api(
        &node,
        "POST",
        "/risk/platform/black",
        API_TOKEN,
        r#"{"entries": ["900*"]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api(&node, "GET", "/risk/tenants/acme/black", ACME_TOKEN, "").await;
    assert!(r.body.contains("[\"33123456\",\"44*\"]"), "{}", r.body);

    // 9 441234 goes out as 441234: black-listed by 44*.
    let r = call_out(&phone, sw, "risk-black", "9441234").await;
    assert_eq!(r.status(), Some(403), "{r}");
    assert!(status_line(&r).contains("tenant_blacklist"), "{r}");
    assert!(hears_no_invite(&carrier, Duration::from_millis(500)).await);
    // The platform's list binds the tenant too.
    let r = call_out(&phone, sw, "risk-platform", "99001").await;
    assert_eq!(r.status(), Some(403), "{r}");
    assert!(status_line(&r).contains("platform_blacklist"), "{r}");
    // 9 4420 7946 is under the white entry 4420*: it reaches the carrier.
    let (r, inv) = tokio::join!(
        call_out(&phone, sw, "risk-white", "944207946"),
        carrier_busy(&carrier)
    );
    assert_eq!(r.status(), Some(486), "{r}");
    assert!(val(&inv, HeaderName::To).contains("44207946"), "{inv}");

    // The dry check says the same, and why; it records nothing.
    let r = api(&node, "GET", "/risk/check?number=9441234", ACME_TOKEN, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["allowed"], false);
    assert_eq!(v["rule"], "tenant_blacklist");
    assert_eq!(v["dialled"], "441234");
    assert_eq!(v["route"], "9");
    let r = api(&node, "GET", "/risk/check?number=%2B33999", ACME_TOKEN, "").await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["allowed"], true, "{}", r.body);
    let r = api(&node, "GET", "/risk/check?number=4%204", ACME_TOKEN, "").await;
    assert_eq!(r.status, 400, "{}", r.body);
    // The decisions, newest first, with their rules.
    let r = api(&node, "GET", "/risk/decisions?limit=10", ACME_TOKEN, "").await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let rules: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["rule"].as_str().unwrap())
        .collect();
    assert_eq!(
        rules,
        ["whitelist", "platform_blacklist", "tenant_blacklist"],
        "{}",
        r.body
    );
    let m = http_request(node.http_addr, "GET", "/metrics", None, "")
        .await
        .body;
    assert_eq!(
        counter(
            &m,
            "switchyard_risk_decisions_total{rule=\"tenant_blacklist\",result=\"refuse\"}"
        ),
        1.0,
        "{m}"
    );
    // (The list gauge is the process's, shared by the tests' nodes: not asserted here.)

    // The lists survive a restart (they are in the SQLite file).
    node.shutdown().await;
    let node = start_with(risk_config(dir.path(), carrier.addr, "")).await;
    let r = api(&node, "GET", "/risk/check?number=9441234", ACME_TOKEN, "").await;
    assert!(r.body.contains("tenant_blacklist"), "{}", r.body);
    let r = api(
        &node,
        "POST",
        "/risk/tenants/acme/black/remove",
        ACME_TOKEN,
        r#"{"entries": ["44*"]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api(&node, "GET", "/risk/check?number=9441234", ACME_TOKEN, "").await;
    assert!(r.body.contains("\"allowed\":true"), "{}", r.body);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn click_to_call_to_a_black_listed_number_is_refused_409_naming_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let carrier = ua_at(CARRIER).await;
    // acme carries the tag `finance`, whose black list the operator keeps.
    let risk = "[[tenants]]\ntenant = \"acme\"\ntags = [\"finance\"]\n";
    let node = start_with(risk_config(dir.path(), carrier.addr, risk)).await;
    let sw = udp_addr(&node);
    let phone = ua_at(PHONE).await;
    register_udp(&phone, sw, DOMAIN, "1001", "pw-1001").await;
    let r = api(
        &node,
        "POST",
        "/risk/tags/finance/black",
        API_TOKEN,
        r#"{"entries": ["44*"]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let body = r#"{"tenant": "acme", "agent": "a1", "number": "9441234"}"#;
    let r = api(&node, "POST", "/calls", ACME_TOKEN, body).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["rule"], "tag_blacklist", "{}", r.body);
    assert!(v["detail"].as_str().unwrap().contains("44*"), "{}", r.body);
    // The agent's phone never rang, and the agent is still free.
    assert!(hears_no_invite(&phone, Duration::from_millis(300)).await);
    let agent = switchyard::actors::agent::lookup("acme", "a1", &node.name).unwrap();
    let info = switchyard::actors::agent::info(&agent).await.unwrap();
    assert_eq!(info.state, "available", "{info:?}");
    let m = http_request(node.http_addr, "GET", "/metrics", None, "")
        .await
        .body;
    assert_eq!(
        counter(
            &m,
            "switchyard_risk_decisions_total{rule=\"tag_blacklist\",result=\"refuse\"}"
        ),
        1.0,
        "{m}"
    );
    // A number the lists allow rings the agent (positive control).
    let ok = r#"{"tenant": "acme", "agent": "a1", "number": "933123"}"#;
    let r = api(&node, "POST", "/calls", ACME_TOKEN, ok).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let (inv, _) = phone.expect_request("INVITE").await;
    phone
        .send(sw, &answer(&inv, 486, "Busy Here", "ag", phone.addr, ""))
        .await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frequency_cap_holds_across_a_node_restart() {
    let dir = tempfile::tempdir().unwrap();
    let carrier = ua_at(CARRIER).await;
    // At most one call a day and two a week to one number, for acme.
    let risk = r#"
        [[tenants]]
        tenant = "acme"
        caps = [{ window = "1d", max = 1 }, { window = "7d", max = 2 }]
    "#;
    let node = start_with(risk_config(dir.path(), carrier.addr, risk)).await;
    let sw = udp_addr(&node);
    let phone = ua_at(PHONE).await;

    let (r, _) = tokio::join!(
        call_out(&phone, sw, "cap-1", "9441234"),
        carrier_busy(&carrier)
    );
    assert_eq!(r.status(), Some(486), "{r}");
    let r = call_out(&phone, sw, "cap-2", "9441234").await;
    assert_eq!(r.status(), Some(403), "{r}");
    assert!(status_line(&r).contains("tenant_frequency_cap"), "{r}");
    // Another number has its own count.
    let (r, _) = tokio::join!(
        call_out(&phone, sw, "cap-3", "9441235"),
        carrier_busy(&carrier)
    );
    assert_eq!(r.status(), Some(486), "{r}");
    node.shutdown().await;

    // A new node on the same SQLite file: the count is still there.
    let node = start_with(risk_config(dir.path(), carrier.addr, risk)).await;
    let sw = udp_addr(&node);
    let r = call_out(&phone, sw, "cap-4", "9441234").await;
    assert_eq!(r.status(), Some(403), "{r}");
    assert!(status_line(&r).contains("tenant_frequency_cap"), "{r}");
    assert!(hears_no_invite(&carrier, Duration::from_millis(300)).await);
    let r = api(&node, "GET", "/risk/check?number=9441234", ACME_TOKEN, "").await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["rule"], "tenant_frequency_cap", "{}", r.body);
    assert!(
        v["detail"].as_str().unwrap().contains("1 calls in 1d"),
        "{}",
        r.body
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_window_refuses_a_phones_call() {
    let dir = tempfile::tempdir().unwrap();
    let carrier = ua_at(CARRIER).await;
    // Forbidden all day, every day, in the callee's zone (whatever the clock says).
    let risk = r#"
        [[tenants]]
        tenant = "acme"
        time_zone = "Asia/Shanghai"
        zones = { "1" = "America/New_York" }
        forbidden = [{ from = "00:00", to = "24:00" }]
    "#;
    let node = start_with(risk_config(dir.path(), carrier.addr, risk)).await;
    let sw = udp_addr(&node);
    let phone = ua_at(PHONE).await;
    let r = call_out(&phone, sw, "window-1", "912125550100").await;
    assert_eq!(r.status(), Some(403), "{r}");
    assert!(status_line(&r).contains("forbidden_window"), "{r}");
    let r = api(
        &node,
        "GET",
        "/risk/check?number=912125550100",
        ACME_TOKEN,
        "",
    )
    .await;
    assert!(r.body.contains("America/New_York"), "{}", r.body);
    assert!(hears_no_invite(&carrier, Duration::from_millis(300)).await);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_peers_calls_meet_the_routes_caps_and_the_platforms_list() {
    let dir = tempfile::tempdir().unwrap();
    let carrier = ua_at(CARRIER).await;
    // Route 9 (the trunk group) carries at most one call a day to one number, whoever
    // makes it.
    let risk = r#"
        [[routes]]
        route = "9"
        caps = [{ window = "1d", max = 1 }]
    "#;
    let mut c = risk_config(dir.path(), carrier.addr, risk);
    c.security.trusted = vec!["127.0.0.10/32".into()];
    let node = start_with(c).await;
    let sw = udp_addr(&node);
    let r = api(&node, "POST", "/risk/platform/black", API_TOKEN, "118*\n").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let pbx = ua_at("127.0.0.10").await;
    pbx.send(sw, &invite("peer-1", "9441234", pbx.addr, sw))
        .await;
    let inv = carrier_busy(&carrier).await;
    assert!(val(&inv, HeaderName::To).contains("441234"), "{inv}");
    let final_for = |cid: &'static str| {
        let pbx = &pbx;
        async move {
            pbx.expect(&format!("the final answer to {cid}"), |m| {
                m.status().is_some_and(|s| s >= 200)
                    && m.call_id().is_some_and(|c| c == cid.as_bytes())
            })
            .await
            .0
        }
    };
    assert_eq!(final_for("peer-1").await.status(), Some(486));
    pbx.send(sw, &invite("peer-2", "9441234", pbx.addr, sw))
        .await;
    let r = final_for("peer-2").await;
    assert_eq!(r.status(), Some(403), "{r}");
    assert!(status_line(&r).contains("route_frequency_cap"), "{r}");
    pbx.send(sw, &invite("peer-3", "911800", pbx.addr, sw))
        .await;
    let r = final_for("peer-3").await;
    assert_eq!(r.status(), Some(403), "{r}");
    assert!(status_line(&r).contains("platform_blacklist"), "{r}");
    assert!(hears_no_invite(&carrier, Duration::from_millis(300)).await);
    node.shutdown().await;
}
