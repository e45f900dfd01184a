//! The edge (issue 16, "who may call where" and "digest without the lockout lever"), with a
//! real node and loopback addresses standing in for internet hosts:
//! - 127.0.0.9: an attacker; 127.0.0.10: a trusted peer (`[security] trusted`);
//! - 127.0.0.2: user 1001's phone;
//! - 127.0.0.50 / .51: the carriers behind trunks `carrier-a` (which has credentials) and
//!   `carrier-b`.
//!
//! Anonymous callers reach numbers and users, never a route to a trunk (403, and the carrier
//! hears nothing, so its 407 is never answered with the trunk's credentials); a tenant's
//! users dial out only through the routes their tenant lists; a carrier's call is sent out
//! again only through a route marked `from_trunks`; wrong passwords from one address never
//! lock a user out of its phone elsewhere; the digest `uri` must be the Request-URI; the
//! nonce-count table is bounded.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use switchyard::config::{Config, NumberConfig, RouteConfig, TenantConfig, UserConfig};
use switchyard::sip::auth::{ha1, Algorithm};
use switchyard::sip::message::{HeaderName, Message};
use tokio::net::UdpSocket;

const TOKEN: &str = "edge-trust-test-token-0123456789abcdef";
const ATTACKER: &str = "127.0.0.9";
const TRUSTED: &str = "127.0.0.10";
const PHONE: &str = "127.0.0.2";
const CARRIER_A: &str = "127.0.0.50";
const CARRIER_B: &str = "127.0.0.51";

/// A UA on `ip`, port 0.
async fn ua_at(ip: &str) -> Ua {
    let sock = UdpSocket::bind(format!("{ip}:0")).await.unwrap();
    let addr = sock.local_addr().unwrap();
    Ua { sock, addr }
}

fn user(tenant_domain: &str, name: &str, pw: &str, outbound: Option<Vec<String>>) -> UserConfig {
    UserConfig {
        username: name.into(),
        ha1_md5: Some(ha1(Algorithm::Md5, name, tenant_domain, pw)),
        ha1_sha256: Some(ha1(Algorithm::Sha256, name, tenant_domain, pw)),
        outbound,
    }
}

fn route(text: &str) -> RouteConfig {
    toml::from_str(text).unwrap()
}

/// The example's shape: route `9` to a carrier with credentials, plus tenant beta's own
/// route `8` and a transit route `7` (`from_trunks`), both to carrier-b. Tenant acme may
/// dial out through `9` (user 1002 through nothing); beta through `beta-out`.
fn edge_config(dir: &std::path::Path, a: SocketAddr, b: SocketAddr) -> Config {
    let mut c = config(dir, &[]);
    c.security.trusted = vec![format!("{TRUSTED}/32")];
    c.http.token = Some(TOKEN.into());
    c.timers.t1_ms = 100;
    c.timers.t2_ms = 400;
    c.timers.t4_ms = 500;
    c.trunks = vec![
        trunk(
            "carrier-a",
            a,
            "auth_username = \"switch-account\"\nauth_password = \"carrier-a-secret\"",
        ),
        trunk("carrier-b", b, ""),
    ];
    c.routes = vec![
        route("prefix = \"9\"\nstrip = 1\ntrunks = [\"carrier-a\"]"),
        route("id = \"beta-out\"\nprefix = \"8\"\nstrip = 1\ntrunks = [\"carrier-b\"]"),
        route("id = \"transit\"\nprefix = \"7\"\nstrip = 1\ntrunks = [\"carrier-b\"]\nfrom_trunks = true"),
    ];
    c.tenants = vec![
        TenantConfig {
            id: "acme".into(),
            domain: "acme.test".into(),
            users: vec![
                user("acme.test", "1001", "pw-1001", None),
                user("acme.test", "1002", "pw-1002", Some(vec![])),
            ],
            numbers: vec![NumberConfig {
                number: "5000".into(),
                target: "user:1001".into(),
                priority: 0,
            }],
            outbound: vec!["9".into()],
            ..Default::default()
        },
        TenantConfig {
            id: "beta".into(),
            domain: "beta.test".into(),
            users: vec![user("beta.test", "2001", "pw-2001", None)],
            outbound: vec!["beta-out".into()],
            ..Default::default()
        },
    ];
    c
}

/// An INVITE for `to_user` at the switch from `from` (a URI), with Proxy-Authorization
/// `auth` when given.
fn invite_from(
    call_id: &str,
    to_user: &str,
    from: &str,
    ua: SocketAddr,
    sw: SocketAddr,
    cseq: u32,
    auth: Option<&str>,
) -> String {
    let auth = auth
        .map(|a| format!("Proxy-Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "INVITE sip:{to_user}@{sw} SIP/2.0\r\nVia: SIP/2.0/UDP {ua};branch=z9hG4bK-{call_id}-{cseq};rport\r\nMax-Forwards: 70\r\nFrom: <{from}>;tag=f-{call_id}\r\nTo: <sip:{to_user}@{sw}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:caller@{ua}>\r\n{auth}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    )
}

/// A tenant user's INVITE answered through the switch's 407: returns the final answer to
/// the authenticated INVITE (or the first response that is not a 100 or 407).
async fn authenticated_invite(
    ua: &Ua,
    sw: SocketAddr,
    call_id: &str,
    to_user: &str,
    (name, domain, pw): (&str, &str, &str),
) -> Message {
    let from = format!("sip:{name}@{domain}");
    ua.send(
        sw,
        &invite_from(call_id, to_user, &from, ua.addr, sw, 1, None),
    )
    .await;
    let (ch, _) = ua.expect_status(407).await;
    let auth = credentials(
        &ch,
        HeaderName::ProxyAuthenticate,
        name,
        pw,
        "INVITE",
        &format!("sip:{to_user}@{sw}"),
    );
    ua.send(
        sw,
        &invite_from(call_id, to_user, &from, ua.addr, sw, 2, Some(&auth)),
    )
    .await;
    final_for(ua, call_id).await
}

/// The final response to the request of Call-ID `cid` (retransmitted answers to earlier
/// calls are skipped).
async fn final_for(ua: &Ua, cid: &str) -> Message {
    ua.expect(&format!("the final answer to {cid}"), |m| {
        m.status().is_some_and(|s| s >= 200) && m.call_id().is_some_and(|c| c == cid.as_bytes())
    })
    .await
    .0
}

/// The next INVITE of a call not seen before (retransmissions are skipped).
async fn new_invite(ua: &Ua, seen: &mut Vec<String>) -> (Message, SocketAddr) {
    loop {
        let (m, from) = ua.expect_request("INVITE").await;
        let c = call_id(&m);
        if !seen.contains(&c) {
            seen.push(c);
            return (m, from);
        }
    }
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

/// Answers the INVITE `inv` with 486, ending the attempt.
async fn busy(ua: &Ua, inv: &Message, from: SocketAddr) {
    ua.send(from, &answer(inv, 486, "Busy Here", "busy", ua.addr, ""))
        .await;
}

async fn metrics(node: &switchyard::server::Node) -> String {
    http_request(node.http_addr, "GET", "/metrics", None, "")
        .await
        .body
}

/// The value of the counter line starting with `series` (0 when absent).
fn counter(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_caller_never_reaches_a_trunk_and_its_credentials_are_never_used() {
    let dir = tempfile::tempdir().unwrap();
    let (carrier_a, carrier_b) = (ua_at(CARRIER_A).await, ua_at(CARRIER_B).await);
    let node = start_with(edge_config(dir.path(), carrier_a.addr, carrier_b.addr)).await;
    let sw = udp_addr(&node);
    let attacker = ua_at(ATTACKER).await;
    let evil = "sip:attacker@evil.example";

    // Toll fraud as the issue tried it: 9<number> from an unknown address.
    attacker
        .send(
            sw,
            &invite_from("fraud-1", "9441234567", evil, attacker.addr, sw, 1, None),
        )
        .await;
    let r = final_for(&attacker, "fraud-1").await;
    assert_eq!(r.status(), Some(403), "{r}");
    // An unrouted number gets the same answer: the route table is not probed.
    attacker
        .send(
            sw,
            &invite_from("fraud-2", "0044123", evil, attacker.addr, sw, 1, None),
        )
        .await;
    let r = final_for(&attacker, "fraud-2").await;
    assert_eq!(r.status(), Some(403), "{r}");
    // A From in a tenant's domain is challenged, not believed.
    let spoofed = "sip:1001@acme.test";
    attacker
        .send(
            sw,
            &invite_from("fraud-3", "9441234567", spoofed, attacker.addr, sw, 1, None),
        )
        .await;
    let r = final_for(&attacker, "fraud-3").await;
    assert_eq!(r.status(), Some(407), "{r}");
    // The carrier heard nothing: so it never challenged, and no credentials went out.
    assert!(hears_no_invite(&carrier_a, Duration::from_millis(800)).await);
    let m = metrics(&node).await;
    assert!(
        counter(
            &m,
            "switchyard_security_refused_total{reason=\"anonymous\"}"
        ) >= 2.0,
        "{m}"
    );

    // The same call from a trusted peer goes to the carrier, and its 407 is answered with
    // the trunk's account (positive control: the credentials are used when authorized).
    let peer = ua_at(TRUSTED).await;
    let pbx = "sip:pbx@peer.example";
    peer.send(
        sw,
        &invite_from("peer-1", "9441234567", pbx, peer.addr, sw, 1, None),
    )
    .await;
    let mut seen = Vec::new();
    let (inv, from) = new_invite(&carrier_a, &mut seen).await;
    assert!(val(&inv, HeaderName::To).contains("441234567"));
    let challenge = answer(&inv, 407, "Proxy Authentication Required", "ch", carrier_a.addr, "")
        .replacen(
            "Content-Length",
            "Proxy-Authenticate: Digest realm=\"carrier.example\", nonce=\"n0nce\", algorithm=MD5, qop=\"auth\"\r\nContent-Length",
            1,
        );
    carrier_a.send(from, &challenge).await;
    let (again, from) = carrier_a
        .expect("the INVITE with credentials", |m| {
            m.method().is_some_and(|x| x.to_string() == "INVITE")
                && m.value(HeaderName::ProxyAuthorization).is_some()
        })
        .await;
    assert!(val(&again, HeaderName::ProxyAuthorization).contains("username=\"switch-account\""));
    busy(&carrier_a, &again, from).await;
    let r = final_for(&peer, "peer-1").await;
    assert_eq!(r.status(), Some(486), "{r}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_users_dial_out_only_through_their_tenants_routes() {
    let dir = tempfile::tempdir().unwrap();
    let (carrier_a, carrier_b) = (ua_at(CARRIER_A).await, ua_at(CARRIER_B).await);
    let node = start_with(edge_config(dir.path(), carrier_a.addr, carrier_b.addr)).await;
    let sw = udp_addr(&node);
    let phone = ua_at(PHONE).await;
    let alice = ("1001", "acme.test", "pw-1001");

    // acme's 1001 may use `9`...
    let (r, ()) = tokio::join!(
        authenticated_invite(&phone, sw, "acme-9", "9441234", alice),
        async {
            let (inv, from) = new_invite(&carrier_a, &mut Vec::new()).await;
            busy(&carrier_a, &inv, from).await;
        }
    );
    assert_eq!(r.status(), Some(486), "{r}");
    // ...but not beta's carrier.
    let r = authenticated_invite(&phone, sw, "acme-8", "8441234", alice).await;
    assert_eq!(r.status(), Some(403), "{r}");
    // 1002's own list (empty) narrows acme's.
    let bob = ("1002", "acme.test", "pw-1002");
    let r = authenticated_invite(&phone, sw, "acme-9b", "9441234", bob).await;
    assert_eq!(r.status(), Some(403), "{r}");
    assert!(hears_no_invite(&carrier_b, Duration::from_millis(500)).await);
    // beta's 2001 uses its own route.
    let beta_phone = ua_at("127.0.0.3").await;
    let carol = ("2001", "beta.test", "pw-2001");
    let (r, ()) = tokio::join!(
        authenticated_invite(&beta_phone, sw, "beta-8", "8441234", carol),
        async {
            let (inv, from) = new_invite(&carrier_b, &mut Vec::new()).await;
            busy(&carrier_b, &inv, from).await;
        }
    );
    assert_eq!(r.status(), Some(486), "{r}");
    let m = metrics(&node).await;
    assert!(
        counter(
            &m,
            "switchyard_security_refused_total{reason=\"not_permitted\"}"
        ) >= 2.0,
        "{m}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anyone_reaches_numbers_and_users_and_carriers_transit_only_where_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (carrier_a, carrier_b) = (ua_at(CARRIER_A).await, ua_at(CARRIER_B).await);
    let node = start_with(edge_config(dir.path(), carrier_a.addr, carrier_b.addr)).await;
    let sw = udp_addr(&node);
    let phone = ua_at(PHONE).await;
    register_udp(&phone, sw, "acme.test", "1001", "pw-1001").await;
    let attacker = ua_at(ATTACKER).await;
    let mut rung = Vec::new();
    let someone = "sip:someone@elsewhere.example";

    // Anyone may call the tenant's number, and its user by name.
    let did = invite_from("anon-did", "5000", someone, attacker.addr, sw, 1, None);
    let by_name = invite_from("anon-user", "1001", someone, attacker.addr, sw, 1, None)
        .replace(&format!("sip:1001@{sw}"), "sip:1001@acme.test");
    for (cid, text) in [("anon-did", did), ("anon-user", by_name)] {
        attacker.send(sw, &text).await;
        let (inv, from) = new_invite(&phone, &mut rung).await;
        busy(&phone, &inv, from).await;
        let r = final_for(&attacker, cid).await;
        assert_eq!(r.status(), Some(486), "{cid}: {r}");
    }

    // A carrier's call reaches the number too...
    let carrier = "sip:+4930123@carrier.example";
    carrier_a
        .send(
            sw,
            &invite_from("in-did", "5000", carrier, carrier_a.addr, sw, 1, None),
        )
        .await;
    let (inv, from) = new_invite(&phone, &mut rung).await;
    busy(&phone, &inv, from).await;
    assert_eq!(final_for(&carrier_a, "in-did").await.status(), Some(486));
    // ...but goes out again only through a route marked from_trunks.
    carrier_a
        .send(
            sw,
            &invite_from("in-8", "8441234", carrier, carrier_a.addr, sw, 1, None),
        )
        .await;
    let r = final_for(&carrier_a, "in-8").await;
    assert_eq!(r.status(), Some(403), "{r}");
    assert!(hears_no_invite(&carrier_b, Duration::from_millis(500)).await);
    carrier_a
        .send(
            sw,
            &invite_from("in-7", "7441234", carrier, carrier_a.addr, sw, 1, None),
        )
        .await;
    let (inv, from) = new_invite(&carrier_b, &mut Vec::new()).await;
    busy(&carrier_b, &inv, from).await;
    assert_eq!(final_for(&carrier_a, "in-7").await.status(), Some(486));
    let m = metrics(&node).await;
    assert!(
        counter(
            &m,
            "switchyard_security_refused_total{reason=\"from_trunk\"}"
        ) >= 1.0,
        "{m}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_added_through_the_api_is_a_gateway_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (carrier_a, carrier_b) = (ua_at(CARRIER_A).await, ua_at(CARRIER_B).await);
    let node = start_with(edge_config(dir.path(), carrier_a.addr, carrier_b.addr)).await;
    let sw = udp_addr(&node);
    let carrier_c = ua_at("127.0.0.52").await;
    let auth = format!("Bearer {TOKEN}");
    let transit = |cid: &str| {
        invite_from(
            cid,
            "7441234",
            "sip:+1@c.example",
            carrier_c.addr,
            sw,
            1,
            None,
        )
    };

    // Not a trunk's gateway yet: anonymous.
    carrier_c.send(sw, &transit("c-1")).await;
    let r = final_for(&carrier_c, "c-1").await;
    assert_eq!(r.status(), Some(403), "{r}");
    let body = format!(
        r#"{{"gateways": ["sip:{}"], "probe_interval_secs": 0}}"#,
        carrier_c.addr
    );
    let put = http_request(
        node.http_addr,
        "PUT",
        "/trunks/carrier-c",
        Some(&auth),
        &body,
    )
    .await;
    assert_eq!(put.status, 201, "{}", put.body);
    assert_eq!(
        node.trust.gateway(carrier_c.addr.ip()).as_deref(),
        Some("carrier-c")
    );
    carrier_c.send(sw, &transit("c-2")).await;
    let (inv, from) = new_invite(&carrier_b, &mut Vec::new()).await;
    busy(&carrier_b, &inv, from).await;
    assert_eq!(final_for(&carrier_c, "c-2").await.status(), Some(486));
    // Deleted: anonymous again.
    let del = http_request(
        node.http_addr,
        "DELETE",
        "/trunks/carrier-c",
        Some(&auth),
        "",
    )
    .await;
    assert_eq!(del.status, 204, "{}", del.body);
    assert!(node.trust.gateway(carrier_c.addr.ip()).is_none());
    carrier_c.send(sw, &transit("c-3")).await;
    let r = final_for(&carrier_c, "c-3").await;
    assert_eq!(r.status(), Some(403), "{r}");

    // The new fields are checked like the file's: a route named in outbound must exist, and
    // one that is named cannot be deleted.
    let t = http_request(
        node.http_addr,
        "PUT",
        "/tenants/gamma",
        Some(&auth),
        r#"{"domain": "gamma.test", "outbound": ["nope"]}"#,
    )
    .await;
    assert_eq!(t.status, 400, "{}", t.body);
    assert!(t.body.contains("outbound"), "{}", t.body);
    let ok = http_request(
        node.http_addr,
        "PUT",
        "/tenants/gamma",
        Some(&auth),
        r#"{"domain": "gamma.test", "outbound": ["transit"]}"#,
    )
    .await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    let u = http_request(
        node.http_addr,
        "PUT",
        "/tenants/acme/users/1003",
        Some(&auth),
        &format!(
            r#"{{"ha1_md5": "{}", "outbound": ["transit-x"]}}"#,
            "0".repeat(32)
        ),
    )
    .await;
    assert_eq!(u.status, 400, "{}", u.body);
    for named in ["beta-out", "transit"] {
        let path = format!("/routes/{named}");
        let d = http_request(node.http_addr, "DELETE", &path, Some(&auth), "").await;
        assert_eq!(d.status, 409, "{named}: {}", d.body);
    }
    let r = http_request(node.http_addr, "GET", "/routes", Some(&auth), "").await;
    assert!(r.body.contains("\"from_trunks\":true"), "{}", r.body);
    node.shutdown().await;
}

/// A REGISTER of `user`@acme.test with its own Call-ID, digest `auth` when given.
fn reg(call_id: &str, user: &str, ua: SocketAddr, cseq: u32, auth: Option<&str>) -> String {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "REGISTER sip:acme.test SIP/2.0\r\nVia: SIP/2.0/UDP {ua};branch=z9hG4bK-{call_id}-{cseq};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{user}@acme.test>;tag={call_id}\r\nTo: <sip:{user}@acme.test>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{ua}>\r\nExpires: 600\r\n{auth}Content-Length: 0\r\n\r\n"
    )
}

fn reg_auth(ch: &Message, user: &str, pw: &str, uri: &str) -> String {
    credentials(ch, HeaderName::WwwAuthenticate, user, pw, "REGISTER", uri)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_from_another_address_never_lock_a_user_out_of_its_phone() {
    let dir = tempfile::tempdir().unwrap();
    let (carrier_a, carrier_b) = (ua_at(CARRIER_A).await, ua_at(CARRIER_B).await);
    let node = start_with(edge_config(dir.path(), carrier_a.addr, carrier_b.addr)).await;
    let sw = udp_addr(&node);
    let (attacker, phone) = (ua_at(ATTACKER).await, ua_at(PHONE).await);

    attacker
        .send(sw, &reg("guess", "1001", attacker.addr, 1, None))
        .await;
    let (ch, _) = attacker.expect_status(401).await;
    // Ten wrong passwords (registrar.max_auth_failures): the tenth locks.
    for i in 0..10u32 {
        let a = reg_auth(&ch, "1001", &format!("guess-{i}"), "sip:acme.test");
        attacker
            .send(sw, &reg("guess", "1001", attacker.addr, 2 + i, Some(&a)))
            .await;
        let r = final_for(&attacker, "guess").await;
        let want = if i == 9 { 403 } else { 401 };
        assert_eq!(r.status(), Some(want), "attempt {i}: {r}");
    }
    // The phone registers at once, and again while the attacker keeps trying.
    for round in 0..2u32 {
        let cid = format!("phone-{round}");
        phone
            .send(sw, &reg(&cid, "1001", phone.addr, 1, None))
            .await;
        let (ch, _) = phone.expect_status(401).await;
        let a = reg_auth(&ch, "1001", "pw-1001", "sip:acme.test");
        phone
            .send(sw, &reg(&cid, "1001", phone.addr, 2, Some(&a)))
            .await;
        let r = final_for(&phone, &cid).await;
        assert_eq!(r.status(), Some(200), "round {round}: {r}");
        let a = reg_auth(&ch, "1001", "still-guessing", "sip:acme.test");
        attacker
            .send(
                sw,
                &reg("guess", "1001", attacker.addr, 20 + round, Some(&a)),
            )
            .await;
        attacker.expect_status(403).await;
    }
    // The attacker's address is what is locked: even the right password is refused there.
    let a = reg_auth(&ch, "1001", "pw-1001", "sip:acme.test");
    attacker
        .send(sw, &reg("guess", "1001", attacker.addr, 30, Some(&a)))
        .await;
    attacker.expect_status(403).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_digest_uri_must_be_the_request_uri_and_the_nonce_table_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (carrier_a, carrier_b) = (ua_at(CARRIER_A).await, ua_at(CARRIER_B).await);
    let mut c = edge_config(dir.path(), carrier_a.addr, carrier_b.addr);
    c.registrar.max_nonces = 2;
    let node = start_with(c).await;
    let sw = udp_addr(&node);
    let phone = ua_at(PHONE).await;

    // Right password, computed for another Request-URI: 400.
    phone
        .send(sw, &reg("uri", "1001", phone.addr, 1, None))
        .await;
    let (ch, _) = phone.expect_status(401).await;
    let a = reg_auth(&ch, "1001", "pw-1001", "sip:beta.test");
    phone
        .send(sw, &reg("uri", "1001", phone.addr, 2, Some(&a)))
        .await;
    let r = final_for(&phone, "uri").await;
    assert_eq!(r.status(), Some(400), "{r}");

    // Two nonces fill the table; a third gets stale=true, never a wholesale clear.
    let mut used = Vec::new();
    for n in 0..3u32 {
        let cid = format!("nonce-{n}");
        phone
            .send(sw, &reg(&cid, "1001", phone.addr, 1, None))
            .await;
        let (ch, _) = phone.expect_status(401).await;
        let a = reg_auth(&ch, "1001", "pw-1001", "sip:acme.test");
        phone
            .send(sw, &reg(&cid, "1001", phone.addr, 2, Some(&a)))
            .await;
        let r = final_for(&phone, &cid).await;
        if n < 2 {
            assert_eq!(r.status(), Some(200), "nonce {n}: {r}");
        } else {
            assert_eq!(r.status(), Some(401), "nonce {n}: {r}");
            assert!(
                val(&r, HeaderName::WwwAuthenticate).contains("stale=true"),
                "{r}"
            );
        }
        used.push((cid, a));
    }
    // The first nonce is still remembered: its count replayed is refused (not stale).
    let (cid, a) = &used[0];
    phone
        .send(sw, &reg(cid, "1001", phone.addr, 3, Some(a)))
        .await;
    let r = final_for(&phone, cid).await;
    assert_eq!(r.status(), Some(401), "{r}");
    assert!(
        !val(&r, HeaderName::WwwAuthenticate).contains("stale=true"),
        "{r}"
    );
    let m = metrics(&node).await;
    assert!(
        counter(&m, "switchyard_auth_total{outcome=\"uri_mismatch\"}") >= 1.0,
        "{m}"
    );
    assert!(
        counter(&m, "switchyard_auth_total{outcome=\"nonces_full\"}") >= 1.0,
        "{m}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_configuration_is_safe_as_shipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("switchyard.example.toml");
    let mut c = Config::load(&path).expect("the example is valid");
    assert!(c.security.trusted.is_empty(), "nothing trusted as shipped");
    // Only what a test must change: its sockets, its data, and the carrier's address (a
    // loopback stand-in for 192.0.2.10).
    let carrier = ua_at(CARRIER_A).await;
    c.sip.listen = vec!["udp:127.0.0.1:0".into()];
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.data_dir = dir.path().to_path_buf();
    c.media.bind = "127.0.0.1".parse().unwrap();
    for t in &mut c.trunks {
        t.gateways = vec![format!("sip:{}", carrier.addr)];
        t.probe_interval_secs = 0;
    }
    let node = start_with(c).await;
    let sw = udp_addr(&node);
    let attacker = ua_at(ATTACKER).await;
    for (cid, number) in [("ex-9", "9441234567"), ("ex-1", "1555"), ("ex-any", "0800")] {
        let text = invite_from(
            cid,
            number,
            "sip:a@evil.example",
            attacker.addr,
            sw,
            1,
            None,
        );
        attacker.send(sw, &text).await;
        let r = final_for(&attacker, cid).await;
        assert_eq!(r.status(), Some(403), "{number}: {r}");
    }
    assert!(hears_no_invite(&carrier, Duration::from_millis(500)).await);
    node.shutdown().await;
}
