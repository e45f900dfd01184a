//! Routes, numbers, trunks and users changed through the API on a node alone: in force for the next
//! call or REGISTER, kept across a restart, refused (400 naming the field, 401/403 without
//! the token) exactly where the config file would be. And in a cluster (a real etcd, three
//! switchyard processes on 127.0.0.1-3): a route put through one node routes calls on
//! another within a second, and a user put through one node registers through another
//! within a second; a trunk put through one node is claimed by exactly one node and carries
//! calls routed through another.

mod common;

use common::cluster::{owners_of, NodeProc};
use common::etcd::{etcd_binary, free_port, start_etcd};
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use switchyard::config::Config;
use switchyard::server::Node;
use switchyard::sip::auth::{ha1, Algorithm};
use switchyard::sip::message::HeaderName;

const TOKEN: &str = API_TOKEN;
const AUTH: Option<&str> = Some(API_BEARER);

/// A node with a token, one file route `9` → `callee`, and tenant `cc` with queue `q`.
fn node_config(dir: &std::path::Path, callee: SocketAddr) -> Config {
    let mut c = config(dir, &[("9", format!("sip:{callee}"))]);
    c.http.token = Some(TOKEN.into());
    c.tenants = Config::from_toml(
        r#"
        [[tenants]]
        id = "cc"
        domain = "cc.test"
        [[tenants.queues]]
        id = "q"
        [[tenants.numbers]]
        number = "5000"
        target = "queue:q"
        "#,
    )
    .unwrap()
    .tenants;
    c
}

async fn put(node: &Node, path: &str, auth: Option<&str>, body: &str) -> Reply {
    http_request(node.http_addr, "PUT", path, auth, body).await
}

async fn delete(node: &Node, path: &str) -> Reply {
    http_request(node.http_addr, "DELETE", path, AUTH, "").await
}

async fn get(node: &Node, path: &str) -> serde_json::Value {
    let r = http_request(node.http_addr, "GET", path, AUTH, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

/// Asserts a 400 problem naming `field`.
fn assert_bad(r: &Reply, field: &str) {
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.header("content-type"), "application/problem+json");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["field"], field, "{}", r.body);
}

/// Sends an INVITE for `user` and returns the first final or provisional status other than
/// 100 the caller sees (the callee, if any, is left to the caller of this function).
async fn call_status(node: &Node, caller: &Ua, user: &str) -> u16 {
    let cid = rand_token();
    caller
        .send(
            udp_addr(node),
            &invite(&cid, user, caller.addr, udp_addr(node)),
        )
        .await;
    let (m, _) = caller
        .expect("a response other than 100", |m| {
            m.status().is_some_and(|s| s > 100) && call_id(m) == cid
        })
        .await;
    m.status().unwrap()
}

/// A user's body for `PUT /tenants/cc/users/{user}`: both hashes of `pw` in realm `cc.test`.
fn user_body(user: &str, pw: &str) -> String {
    format!(
        r#"{{"ha1_md5": "{}", "ha1_sha256": "{}"}}"#,
        ha1(Algorithm::Md5, user, "cc.test", pw),
        ha1(Algorithm::Sha256, user, "cc.test", pw)
    )
}

/// Registers `user` of `cc.test` from `phone` through `sw` (answering the 401 with `pw`);
/// the final status of the authenticated REGISTER (CSeq `cseq` + 1).
async fn register_status(sw: SocketAddr, phone: &Ua, user: &str, pw: &str, cseq: u32) -> u16 {
    register_status_at(sw, phone, "cc.test", user, pw, cseq).await
}

/// [`register_status`] for a user of `domain` (its realm).
async fn register_status_at(
    sw: SocketAddr,
    phone: &Ua,
    domain: &str,
    user: &str,
    pw: &str,
    cseq: u32,
) -> u16 {
    let contact = format!("sip:{user}@{}", phone.addr);
    let via = phone.addr.to_string();
    let request = |cseq, auth| register_request(domain, user, &contact, "UDP", &via, cseq, auth);
    phone.send(sw, &request(cseq, None)).await;
    let (ch, _) = phone
        .expect("a 401 challenge", |m| {
            m.status() == Some(401) && header(m, "CSeq").starts_with(&format!("{cseq} "))
        })
        .await;
    let auth = credentials(
        &ch,
        HeaderName::WwwAuthenticate,
        user,
        pw,
        "REGISTER",
        &format!("sip:{domain}"),
    );
    phone.send(sw, &request(cseq + 1, Some(auth))).await;
    let (m, _) = phone
        .expect("the authenticated REGISTER's answer", |m| {
            m.status().is_some_and(|s| s >= 200)
                && header(m, "CSeq").starts_with(&format!("{} ", cseq + 1))
        })
        .await;
    m.status().unwrap()
}

/// A call to `user` reaches `callee` (which answers 486, ending it).
async fn call_reaches(node: &Node, caller: &Ua, callee: &Ua, user: &str) {
    let cid = rand_token();
    caller
        .send(
            udp_addr(node),
            &invite(&cid, user, caller.addr, udp_addr(node)),
        )
        .await;
    let (inv, from) = callee.expect_request("INVITE").await;
    assert!(
        String::from_utf8_lossy(inv.request_uri().unwrap()).contains(user),
        "the B leg dials {user}"
    );
    callee
        .send(from, &answer(&inv, 486, "Busy Here", "b1", callee.addr, ""))
        .await;
    let (m, _) = caller
        .expect("486", |m| m.status() == Some(486) && call_id(m) == cid)
        .await;
    assert_eq!(m.status(), Some(486));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_put_through_the_api_routes_the_next_call_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (caller, uk, file_target) = (Ua::new().await, Ua::new().await, Ua::new().await);
    let node = start_with(node_config(dir.path(), file_target.addr)).await;

    let routes = get(&node, "/routes").await;
    assert_eq!(routes[0]["id"], "9", "a file route's id is its prefix");
    assert_eq!(call_status(&node, &caller, "4420").await, 404);

    let body = format!(r#"{{"prefix": "44", "target": "sip:{}"}}"#, uk.addr);
    let r = put(&node, "/routes/uk", AUTH, &body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let stored: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(stored["id"], "uk");
    assert_eq!(
        stored["max_attempts"], 3,
        "the stored route shows its defaults"
    );
    call_reaches(&node, &caller, &uk, "4420").await;
    // The same PUT again replaces it.
    assert_eq!(put(&node, "/routes/uk", AUTH, &body).await.status, 200);

    assert_eq!(delete(&node, "/routes/uk").await.status, 204);
    assert_eq!(call_status(&node, &caller, "4420").await, 404);
    assert_eq!(delete(&node, "/routes/uk").await.status, 404);

    // Put it back, and remove the file's route: both are remembered across a restart.
    assert_eq!(put(&node, "/routes/uk", AUTH, &body).await.status, 201);
    assert_eq!(delete(&node, "/routes/9").await.status, 204);
    let metrics = http_request(node.http_addr, "GET", "/metrics", None, "").await;
    assert!(
        metrics.body.contains("switchyard_config_changes_total")
            && metrics.body.contains("switchyard_config_generation"),
        "config metrics are exported"
    );
    node.shutdown().await;

    let node = start_with(node_config(dir.path(), file_target.addr)).await;
    let routes = get(&node, "/routes").await;
    let ids: Vec<&str> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["uk"], "the API's changes outlive the restart");
    call_reaches(&node, &caller, &uk, "4420").await;
    assert_eq!(call_status(&node, &caller, "900").await, 404);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_put_through_the_api_leads_to_its_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (caller, target) = (Ua::new().await, Ua::new().await);
    let node = start_with(node_config(dir.path(), target.addr)).await;

    let numbers = get(&node, "/numbers").await;
    assert_eq!(numbers[0]["number"], "5000");
    assert_eq!(numbers[0]["tenant"], "cc");
    assert_eq!(call_status(&node, &caller, "7000").await, 404);

    let r = put(
        &node,
        "/numbers/7000",
        AUTH,
        r#"{"tenant": "cc", "target": "queue:q", "priority": 5}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    // A caller of the new number waits in the queue (hearing 180).
    assert_eq!(call_status(&node, &caller, "7000").await, 180);
    let q = get(&node, "/queues/cc/q").await;
    assert_eq!(q["waiting"], 1, "{q}");

    assert_eq!(delete(&node, "/numbers/7000").await.status, 204);
    assert_eq!(call_status(&node, &caller, "7000").await, 404);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_put_through_the_api_registers_at_once_and_a_deleted_one_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let (phone, target) = (Ua::new().await, Ua::new().await);
    let node = start_with(node_config(dir.path(), target.addr)).await;
    let sw = udp_addr(&node);

    assert_eq!(get(&node, "/tenants/cc/users").await, serde_json::json!([]));
    assert_eq!(register_status(sw, &phone, "dave", "pw-1", 1).await, 401);

    let r = put(
        &node,
        "/tenants/cc/users/dave",
        AUTH,
        &user_body("dave", "pw-1"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(
        !r.body.contains("ha1"),
        "hashes are never echoed: {}",
        r.body
    );
    let shown: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(shown["username"], "dave");
    assert_eq!(shown["algorithms"], serde_json::json!(["SHA-256", "MD5"]));
    assert_eq!(register_status(sw, &phone, "dave", "pw-1", 3).await, 200);
    let users = get(&node, "/tenants/cc/users").await;
    assert_eq!(users[0]["username"], "dave", "{users}");
    assert!(!users.to_string().contains("ha1"), "{users}");

    // A new password is in force at once; the old one no longer works.
    let r = put(
        &node,
        "/tenants/cc/users/dave",
        AUTH,
        &user_body("dave", "pw-2"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(register_status(sw, &phone, "dave", "pw-1", 5).await, 401);
    assert_eq!(register_status(sw, &phone, "dave", "pw-2", 7).await, 200);

    // Refused: no token, a bad hash, an unknown tenant, a name the body contradicts.
    let body = user_body("erin", "pw");
    assert_eq!(
        put(&node, "/tenants/cc/users/erin", None, &body)
            .await
            .status,
        401
    );
    assert_bad(
        &put(
            &node,
            "/tenants/cc/users/erin",
            AUTH,
            r#"{"ha1_md5": "abc"}"#,
        )
        .await,
        "ha1_md5",
    );
    assert_bad(
        &put(
            &node,
            "/tenants/cc/users/erin",
            AUTH,
            r#"{"password": "pw"}"#,
        )
        .await,
        "password",
    );
    assert_bad(
        &put(
            &node,
            "/tenants/cc/users/erin",
            AUTH,
            r#"{"username": "x"}"#,
        )
        .await,
        "username",
    );
    assert_eq!(
        put(&node, "/tenants/nope/users/erin", AUTH, &body)
            .await
            .status,
        404
    );
    assert_eq!(
        http_request(node.http_addr, "GET", "/tenants/nope/users", AUTH, "")
            .await
            .status,
        404
    );
    // A tenant that exists is changed through its routes, not replaced: refused, not ignored.
    let r = put(&node, "/tenants/cc", AUTH, "{}").await;
    assert_eq!(r.status, 501, "{}", r.body);

    assert_eq!(delete(&node, "/tenants/cc/users/dave").await.status, 204);
    assert_eq!(register_status(sw, &phone, "dave", "pw-2", 9).await, 401);
    assert_eq!(delete(&node, "/tenants/cc/users/dave").await.status, 404);

    // A user put back is remembered across a restart.
    let r = put(
        &node,
        "/tenants/cc/users/dave",
        AUTH,
        &user_body("dave", "pw-3"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    node.shutdown().await;
    let node = start_with(node_config(dir.path(), target.addr)).await;
    assert_eq!(get(&node, "/tenants/cc/users").await[0]["username"], "dave");
    assert_eq!(
        register_status(udp_addr(&node), &phone, "dave", "pw-3", 11).await,
        200
    );
    node.shutdown().await;
}

/// Polls `GET /queues/cc/q` until `pred` holds (bounded); the last answer. A 503 (the queue
/// actor between its stop and its start, while it restarts with a change) is polled over.
async fn wait_queue(node: &Node, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    wait_queue_at(node, "/queues/cc/q", pred).await
}

/// [`wait_queue`] for the queue at `path`.
/// A caller waits in queue `queue.0` through `number`; deleting `queue.1` (the queue, or its
/// tenant) is refused with 409 while the number leads there (the answer names `named`), the
/// number is deleted, then 409 again while the caller waits; the caller then gives up.
async fn refused_while_numbered_or_waited(
    node: &Node,
    caller: &Ua,
    number: &str,
    queue: (&str, &str),
    named: &str,
) {
    let (stats, path) = queue;
    let (cid, sw) = (rand_token(), udp_addr(node));
    let inv = invite(&cid, number, caller.addr, sw);
    caller.send(sw, &inv).await;
    caller
        .expect("180", |m| m.status() == Some(180) && call_id(m) == cid)
        .await;
    wait_queue_at(node, stats, |q| q["waiting"] == 1).await;
    let r = delete(node, path).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains(named), "{}", r.body);
    let n = format!("/numbers/{number}");
    assert_eq!(delete(node, &n).await.status, 204);
    let r = delete(node, path).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("wait"), "{}", r.body);
    caller.send(sw, &cancel_of(&inv)).await;
    caller
        .expect("487", |m| m.status() == Some(487) && call_id(m) == cid)
        .await;
    wait_queue_at(node, stats, |q| q["waiting"] == 0).await;
}

async fn wait_queue_at(
    node: &Node,
    path: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let r = http_request(node.http_addr, "GET", path, AUTH, "").await;
        assert!(r.status == 200 || r.status == 503, "{}", r.body);
        let q: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        if r.status == 200 && pred(&q) {
            return q;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "queue not as expected: {q}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_changed_through_the_api_keeps_its_callers_and_takes_the_new_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second, target) = (Ua::new().await, Ua::new().await, Ua::new().await);
    let node = start_with(node_config(dir.path(), target.addr)).await;
    assert_eq!(call_status(&node, &first, "5000").await, 180);
    let q = wait_queue(&node, |q| q["waiting"] == 1).await;
    assert_ne!(q["service_level_secs"], 42);

    let body = r#"{"max_length": 1, "overflow_full": "status:486", "service_level_secs": 42}"#;
    let r = put(&node, "/tenants/cc/queues/q", AUTH, body).await;
    assert_eq!(r.status, 200, "a file queue is replaced: {}", r.body);
    let stored: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(stored["id"], "q");
    // The queue actor restarts with it and keeps its waiting caller.
    let q = wait_queue(&node, |q| q["service_level_secs"] == 42).await;
    assert_eq!(q["waiting"], 1, "{q}");
    // Full at one caller now: the next one overflows to 486.
    let cid = rand_token();
    let sw = udp_addr(&node);
    second
        .send(sw, &invite(&cid, "5000", second.addr, sw))
        .await;
    let (m, _) = second
        .expect("a final response", |m| {
            m.status().is_some_and(|s| s >= 200) && call_id(m) == cid
        })
        .await;
    assert_eq!(m.status(), Some(486));

    assert_bad(
        &put(
            &node,
            "/tenants/cc/queues/q",
            AUTH,
            r#"{"overflow_full": "queue:nope"}"#,
        )
        .await,
        "overflow_full",
    );
    assert_bad(
        &put(&node, "/tenants/cc/queues/q", AUTH, r#"{"id": "other"}"#).await,
        "id",
    );
    assert_eq!(
        put(&node, "/tenants/cc/queues/q", None, body).await.status,
        401
    );
    // Removing a queue of the file stays with the file.
    assert_eq!(delete(&node, "/tenants/cc/queues/q").await.status, 501);
    assert_eq!(
        put(&node, "/tenants/nope/queues/q", AUTH, "{}")
            .await
            .status,
        404
    );

    // The change outlives a restart.
    node.shutdown().await;
    let node = start_with(node_config(dir.path(), target.addr)).await;
    wait_queue(&node, |q| q["service_level_secs"] == 42).await;
    node.shutdown().await;
}

/// The CANCEL a caller sends for its INVITE `inv`.
fn cancel_of(inv: &str) -> String {
    let first = inv.lines().next().unwrap().replacen("INVITE", "CANCEL", 1);
    let mut s = format!("{first}\r\n");
    for line in inv.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        match line.split(':').next().unwrap() {
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

/// Whether `GET /queues` on `node` lists `cc`'s queue `id`.
async fn lists_queue(node: &Node, id: &str) -> bool {
    let all = get(node, "/queues").await;
    all.as_array()
        .unwrap()
        .iter()
        .any(|q| q["tenant"] == "cc" && q["queue"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_added_through_the_api_takes_callers_outlives_a_restart_and_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (caller, target) = (Ua::new().await, Ua::new().await);
    let node = start_with(node_config(dir.path(), target.addr)).await;
    let support = "/queues/cc/support";
    let r = http_request(node.http_addr, "GET", support, AUTH, "").await;
    assert_eq!(r.status, 404, "{}", r.body);

    let body = r#"{"service_level_secs": 17}"#;
    let r = put(&node, "/tenants/cc/queues/support", AUTH, body).await;
    assert_eq!(r.status, 201, "a new queue is created: {}", r.body);
    // Started under its tenant at once, and listed.
    wait_queue_at(&node, support, |q| q["service_level_secs"] == 17).await;
    assert!(lists_queue(&node, "support").await && lists_queue(&node, "q").await);
    assert_eq!(
        put(&node, "/tenants/cc/queues/support", AUTH, body)
            .await
            .status,
        200,
        "put again: replaced"
    );
    // The tenant's next start (a restart, or a takeover on another node) starts it too.
    let tenant = &node.tree.singletons;
    tenant.stop("tenant/cc").await.unwrap();
    let stopped = wait_until(Duration::from_secs(5), || {
        switchyard::actors::queue::lookup("cc", "support", &node.name).is_none()
    });
    assert!(stopped.await, "stopped with its tenant");
    tenant.start("tenant/cc").await.unwrap();
    wait_queue_at(&node, support, |q| q["service_level_secs"] == 17).await;

    // A number leads to it; its caller waits there.
    let number = r#"{"tenant": "cc", "target": "queue:support"}"#;
    assert_eq!(put(&node, "/numbers/7100", AUTH, number).await.status, 201);
    let queue = (support, "/tenants/cc/queues/support");
    refused_while_numbered_or_waited(&node, &caller, "7100", queue, "number").await;

    // It outlives a restart.
    node.shutdown().await;
    let node = start_with(node_config(dir.path(), target.addr)).await;
    wait_queue_at(&node, support, |q| q["service_level_secs"] == 17).await;

    assert_eq!(
        delete(&node, "/tenants/cc/queues/support").await.status,
        204
    );
    let r = http_request(node.http_addr, "GET", support, AUTH, "").await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(!lists_queue(&node, "support").await);
    assert_eq!(
        delete(&node, "/tenants/cc/queues/support").await.status,
        404
    );
    // Its actor is gone, and the deletion outlives a restart too.
    assert!(
        wait_until(Duration::from_secs(5), || {
            switchyard::actors::queue::lookup("cc", "support", &node.name).is_none()
        })
        .await,
        "the deleted queue's actor stopped"
    );
    node.shutdown().await;
    let node = start_with(node_config(dir.path(), target.addr)).await;
    let r = http_request(node.http_addr, "GET", support, AUTH, "").await;
    assert_eq!(r.status, 404, "{}", r.body);
    node.shutdown().await;
}

/// The first answer other than 100 to an unauthenticated REGISTER of `user@domain`.
async fn register_first_status(sw: SocketAddr, phone: &Ua, domain: &str, user: &str) -> u16 {
    let contact = format!("sip:{user}@{}", phone.addr);
    let via = phone.addr.to_string();
    let cseq = 77;
    let req = register_request(domain, user, &contact, "UDP", &via, cseq, None);
    phone.send(sw, &req).await;
    let (m, _) = phone
        .expect("an answer to the REGISTER", |m| {
            m.status().is_some_and(|s| s > 100)
                && header(m, "CSeq").starts_with(&format!("{cseq} "))
        })
        .await;
    m.status().unwrap()
}

/// The body of a new tenant `nu` (domain `new.test`): user `nina` (password `pw`), queue
/// `help` and number `7200` to it.
fn new_tenant_body() -> String {
    serde_json::json!({
        "domain": "new.test",
        "users": [{
            "username": "nina",
            "ha1_md5": ha1(Algorithm::Md5, "nina", "new.test", "pw"),
            "ha1_sha256": ha1(Algorithm::Sha256, "nina", "new.test", "pw"),
        }],
        "queues": [{"id": "help", "service_level_secs": 13}],
        "numbers": [{"number": "7200", "target": "queue:help"}],
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_put_through_the_api_registers_takes_callers_outlives_a_restart_and_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (caller, phone, target) = (Ua::new().await, Ua::new().await, Ua::new().await);
    let node = start_with(node_config(dir.path(), target.addr)).await;
    let help = "/queues/nu/help";
    assert_eq!(
        register_first_status(udp_addr(&node), &phone, "new.test", "nina").await,
        404
    );

    // Refused like the file: another tenant's domain; an existing tenant is not replaced.
    let clash = new_tenant_body().replace("new.test", "CC.test");
    assert_bad(&put(&node, "/tenants/other", AUTH, &clash).await, "domain");
    let r = put(&node, "/tenants/nu", AUTH, &new_tenant_body()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        put(&node, "/tenants/nu", AUTH, &new_tenant_body())
            .await
            .status,
        501
    );
    let listed = get(&node, "/tenants").await;
    assert_eq!(listed[0]["id"], "nu", "{listed}");
    assert_eq!(get(&node, "/tenants/nu/users").await[0]["username"], "nina");

    // Its user registers, its queue runs (listed), and a caller reaches it by its number.
    let sw = udp_addr(&node);
    assert_eq!(
        register_status_at(sw, &phone, "new.test", "nina", "pw", 1).await,
        200
    );
    wait_queue_at(&node, help, |q| q["service_level_secs"] == 13).await;
    let all = get(&node, "/queues?tenant=nu").await;
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    refused_while_numbered_or_waited(&node, &caller, "7200", (help, "/tenants/nu"), "7200").await;

    // It outlives a restart: its queue runs again and its user registers.
    node.shutdown().await;
    let node = start_with(node_config(dir.path(), target.addr)).await;
    let sw = udp_addr(&node);
    wait_queue_at(&node, help, |q| q["service_level_secs"] == 13).await;
    assert_eq!(
        register_status_at(sw, &phone, "new.test", "nina", "pw", 3).await,
        200
    );

    // Deleted: its actors stop, its domain is no one's, and the file's tenant is kept.
    assert_eq!(delete(&node, "/tenants/nu").await.status, 204);
    assert_eq!(delete(&node, "/tenants/cc").await.status, 501);
    assert_eq!(delete(&node, "/tenants/nu").await.status, 404);
    assert_eq!(
        register_first_status(sw, &phone, "new.test", "nina").await,
        404
    );
    let r = http_request(node.http_addr, "GET", help, AUTH, "").await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(
        wait_until(Duration::from_secs(5), || {
            switchyard::actors::queue::lookup("nu", "help", &node.name).is_none()
        })
        .await,
        "the deleted tenant's queue stopped"
    );
    assert_eq!(get(&node, "/tenants").await, serde_json::json!([]));
    // The deletion outlives a restart; the same id may be put again, afresh.
    node.shutdown().await;
    let node = start_with(node_config(dir.path(), target.addr)).await;
    let r = http_request(node.http_addr, "GET", help, AUTH, "").await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = http_request(node.http_addr, "GET", "/tenants/nu/users", AUTH, "").await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = put(&node, "/tenants/nu", AUTH, &new_tenant_body()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    wait_queue_at(&node, help, |q| q["joined"] == 0).await;
    node.shutdown().await;
}

/// Polls (bounded) until `pred` holds.
async fn eventually(what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !pred() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A trunk's body for `PUT /trunks/{id}`: one gateway, no probes (the test UAs stay quiet).
fn trunk_body(gateway: SocketAddr) -> String {
    format!(r#"{{"gateways": ["sip:{gateway}"], "probe_interval_secs": 0}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_put_through_the_api_carries_calls_and_is_kept_while_routes_use_it() {
    let dir = tempfile::tempdir().unwrap();
    let (caller, gw, gw2, file_target) = (
        Ua::new().await,
        Ua::new().await,
        Ua::new().await,
        Ua::new().await,
    );
    let node = start_with(node_config(dir.path(), file_target.addr)).await;
    assert_eq!(get(&node, "/trunks").await, serde_json::json!([]));
    // A route cannot name a trunk that is not there yet.
    let route = r#"{"prefix": "44", "trunks": ["carrier"]}"#;
    assert_bad(&put(&node, "/routes/out", AUTH, route).await, "trunks");
    assert_bad(
        &put(
            &node,
            "/trunks/carrier",
            AUTH,
            r#"{"gateways": ["tel:+1"]}"#,
        )
        .await,
        "gateways[0]",
    );
    let r = put(&node, "/trunks/carrier", None, &trunk_body(gw.addr)).await;
    assert_eq!(r.status, 401);

    let r = put(&node, "/trunks/carrier", AUTH, &trunk_body(gw.addr)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let shown: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(shown["id"], "carrier");
    assert_eq!(
        shown["auth_password_set"], false,
        "a password is never shown"
    );
    assert_eq!(shown["invite_timeout_ms"], 3000, "defaults are shown");
    let catalog = &node.tree.singletons;
    eventually("the new trunk's actor runs", || {
        catalog.running("trunk/carrier")
    })
    .await;
    assert_eq!(put(&node, "/routes/out", AUTH, route).await.status, 201);
    call_reaches(&node, &caller, &gw, "4420").await;

    // In use by a route: not deleted.
    let r = delete(&node, "/trunks/carrier").await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("out"), "{}", r.body);

    // Changed: the next call goes to its new gateway; the same PUT again is a 200.
    let r = put(&node, "/trunks/carrier", AUTH, &trunk_body(gw2.addr)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    call_reaches(&node, &caller, &gw2, "4420").await;
    eventually("the changed trunk's actor runs", || {
        catalog.running("trunk/carrier")
    })
    .await;
    let trunks = get(&node, "/trunks").await;
    assert_eq!(trunks[0]["gateways"][0], format!("sip:{}", gw2.addr));
    node.shutdown().await;

    // Both outlive a restart; then the route goes, and the trunk with it.
    let node = start_with(node_config(dir.path(), file_target.addr)).await;
    call_reaches(&node, &caller, &gw2, "4420").await;
    assert!(node.tree.singletons.running("trunk/carrier"));
    assert_eq!(delete(&node, "/routes/out").await.status, 204);
    assert_eq!(delete(&node, "/trunks/carrier").await.status, 204);
    assert_eq!(delete(&node, "/trunks/carrier").await.status, 404);
    let catalog = &node.tree.singletons;
    eventually("the deleted trunk's actor stops", || {
        !catalog.running("trunk/carrier") && !catalog.contains("trunk/carrier")
    })
    .await;
    assert_eq!(get(&node, "/trunks").await, serde_json::json!([]));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_changes_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = Ua::new().await;
    let node = start_with(node_config(dir.path(), target.addr)).await;
    let good = format!(r#"{{"prefix": "44", "target": "sip:{}"}}"#, target.addr);

    let r = put(&node, "/routes/uk", None, &good).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), "Bearer");
    let r = put(&node, "/routes/uk", Some("Bearer wrong"), &good).await;
    assert_eq!(r.status, 403);

    assert_bad(&put(&node, "/routes/uk", AUTH, "{not json").await, "body");
    assert_bad(
        &put(
            &node,
            "/routes/uk",
            AUTH,
            r#"{"prefix": "44", "target": "tel:+44"}"#,
        )
        .await,
        "target",
    );
    assert_bad(
        &put(
            &node,
            "/routes/uk",
            AUTH,
            r#"{"prefix": "44", "colour": "red"}"#,
        )
        .await,
        "colour",
    );
    assert_bad(
        &put(
            &node,
            "/routes/uk",
            AUTH,
            r#"{"prefix": "44", "strip": "two"}"#,
        )
        .await,
        "strip",
    );
    assert_bad(
        &put(
            &node,
            "/routes/uk",
            AUTH,
            r#"{"prefix": "44", "trunks": ["none"]}"#,
        )
        .await,
        "trunks",
    );
    let clash = format!(r#"{{"prefix": "9", "target": "sip:{}"}}"#, target.addr);
    assert_bad(&put(&node, "/routes/other", AUTH, &clash).await, "prefix");
    let other_id = format!(
        r#"{{"id": "x", "prefix": "44", "target": "sip:{}"}}"#,
        target.addr
    );
    assert_bad(&put(&node, "/routes/uk", AUTH, &other_id).await, "id");

    assert_bad(
        &put(
            &node,
            "/numbers/7000",
            AUTH,
            r#"{"tenant": "nope", "target": "queue:q"}"#,
        )
        .await,
        "tenant",
    );
    assert_bad(
        &put(
            &node,
            "/numbers/7000",
            AUTH,
            r#"{"tenant": "cc", "target": "queue:nope"}"#,
        )
        .await,
        "target",
    );
    assert_bad(
        &put(&node, "/numbers/7000", AUTH, r#"{"target": "queue:q"}"#).await,
        "tenant",
    );
    assert_eq!(delete(&node, "/numbers/7000").await.status, 404);

    let ids: Vec<String> = get(&node, "/routes")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["9"], "nothing refused was applied");
    assert_eq!(get(&node, "/numbers").await.as_array().unwrap().len(), 1);
    node.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Cluster: etcd and switchyard processes (tests/common/cluster.rs)
// ---------------------------------------------------------------------------------------------

/// Route ids as `GET /routes` on `http` lists them; None while the node is not up.
async fn route_ids(http: SocketAddr) -> Option<Vec<String>> {
    tokio::net::TcpStream::connect(http).await.ok()?;
    let r = http_request(http, "GET", "/routes", AUTH, "").await;
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    Some(
        v.as_array()?
            .iter()
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect(),
    )
}

/// Polls `GET /routes` on `http` until `pred` holds on its ids; the time it took.
async fn wait_routes(
    http: SocketAddr,
    limit: Duration,
    pred: impl Fn(&[String]) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < limit {
        last = route_ids(http).await;
        if last.as_deref().is_some_and(&pred) {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("routes on {http} not as expected in {limit:?}: last {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_put_on_one_node_routes_calls_on_another_within_a_second() {
    let Some(etcd_bin) = etcd_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let etcd_url = format!("http://127.0.0.1:{}", free_port("127.0.0.1"));
    let peer_url = format!("http://127.0.0.1:{}", free_port("127.0.0.1"));
    let etcd = start_etcd(&etcd_bin, dir.path(), &etcd_url, &peer_url);
    let (caller, uk, file_target) = (Ua::new().await, Ua::new().await, Ua::new().await);
    let config_path = dir.path().join("switchyard.toml");
    std::fs::write(
        &config_path,
        format!(
            "[http]\ntoken = \"{TOKEN}\"\n[security]\ntrusted = [\"127.0.0.1\"]\n[[routes]]\nprefix = \"9\"\ntarget = \"sip:{}\"\n\
             [[tenants]]\nid = \"cc\"\ndomain = \"cc.test\"\n[[tenants.queues]]\nid = \"q\"\n",
            file_target.addr
        ),
    )
    .unwrap();
    // Serving reads, not only accepting connections (a node started before etcd has a leader
    // fails to join).
    let ready = async {
        loop {
            let client = etcd_client::Client::connect([etcd_url.as_str()], None).await;
            if let Ok(mut c) = client {
                if c.get("/", None).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), ready)
        .await
        .expect("etcd did not come up");
    let nodes: Vec<NodeProc> = (1..=3)
        .map(|i| {
            let (name, ip) = (format!("n{i}"), format!("127.0.0.{i}"));
            let etcd = (etcd_url.as_str(), "/cfg");
            let mut n = NodeProc::new(dir.path(), &name, &ip, &config_path, etcd, "");
            n.spawn(dir.path());
            n
        })
        .collect();
    // The first node seeds etcd from its file; every node then serves the file's route.
    for n in &nodes {
        wait_routes(n.http, Duration::from_secs(20), |ids| ids == ["9"]).await;
    }
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let status_on = |node: SocketAddr, user: &'static str| {
        let caller = &caller;
        async move {
            let cid = rand_token();
            caller
                .send(node, &invite(&cid, user, caller.addr, node))
                .await;
            let (m, _) = caller
                .expect("a final response", |m| {
                    m.status().is_some_and(|s| s >= 200) && call_id(m) == cid
                })
                .await;
            m.status().unwrap()
        }
    };
    assert_eq!(status_on(n3.sip, "4420").await, 404);

    // PUT on node 1; node 3 routes with it within a second.
    let body = format!(r#"{{"prefix": "44", "target": "sip:{}"}}"#, uk.addr);
    let bearer = format!("Bearer {TOKEN}");
    let start = Instant::now();
    let r = http_request(n1.http, "PUT", "/routes/uk", Some(&bearer), &body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let answered = start.elapsed();
    wait_routes(n3.http, Duration::from_secs(1), |ids| {
        ids.iter().any(|i| i == "uk")
    })
    .await;
    let in_force = start.elapsed();
    eprintln!("route put on n1: answered after {answered:?}, in force on n3 after {in_force:?}");
    assert!(in_force < Duration::from_secs(1), "took {in_force:?}");
    let cid = rand_token();
    caller
        .send(n3.sip, &invite(&cid, "4420", caller.addr, n3.sip))
        .await;
    let (inv, from) = uk.expect_request("INVITE").await;
    uk.send(from, &answer(&inv, 486, "Busy Here", "b1", uk.addr, ""))
        .await;
    caller
        .expect("486 through n3", |m| {
            m.status() == Some(486) && call_id(m) == cid
        })
        .await;

    // A user put on node 1 registers through node 3 within a second.
    let phone = Ua::new().await;
    let start = Instant::now();
    let r = http_request(
        n1.http,
        "PUT",
        "/tenants/cc/users/dave",
        Some(&bearer),
        &user_body("dave", "pw"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let mut cseq = 1;
    while register_status(n3.sip, &phone, "dave", "pw", cseq).await != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "user not in force on n3"
        );
        cseq += 2;
    }
    let in_force = start.elapsed();
    eprintln!("user put on n1: registered through n3 after {in_force:?}");
    assert!(in_force < Duration::from_secs(1), "took {in_force:?}");
    // Deleted through node 2: node 3 refuses it.
    let r = http_request(
        n2.http,
        "DELETE",
        "/tenants/cc/users/dave",
        Some(&bearer),
        "",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    cseq += 2;
    while register_status(n3.sip, &phone, "dave", "pw", cseq).await == 200 {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "deleted user still in force on n3"
        );
        cseq += 2;
    }

    // A tenant token made through node 1 is accepted by node 3 within a second (etcd keeps
    // its digest); revoked through node 2, node 1 refuses it within a second.
    let start = Instant::now();
    let r = http_request(n1.http, "POST", "/tenants/cc/tokens", Some(&bearer), "").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let made: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let tenant_bearer = format!("Bearer {}", made["token"].as_str().unwrap());
    let tenant_reads = |n: SocketAddr| {
        let auth = tenant_bearer.clone();
        async move {
            http_request(n, "GET", "/numbers", Some(&auth), "")
                .await
                .status
        }
    };
    while tenant_reads(n3.http).await != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "token not in force on n3"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "token made on n1: accepted by n3 after {:?}",
        start.elapsed()
    );
    let start = Instant::now();
    let path = format!("/tenants/cc/tokens/{}", made["id"].as_str().unwrap());
    let r = http_request(n2.http, "DELETE", &path, Some(&bearer), "").await;
    assert_eq!(r.status, 204, "{}", r.body);
    while tenant_reads(n1.http).await != 403 {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "revoked token still accepted by n1"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "token revoked on n2: refused by n1 after {:?}",
        start.elapsed()
    );

    // A queue changed through node 1 runs with it on whichever node runs its tenant (only
    // that node's API finds the queue actor).
    let r = http_request(
        n1.http,
        "PUT",
        "/tenants/cc/queues/q",
        Some(&bearer),
        r#"{"service_level_secs": 42}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(5);
    'changed: loop {
        for n in &nodes {
            let r = http_request(n.http, "GET", "/queues/cc/q", AUTH, "").await;
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            if r.status == 200 && v["service_level_secs"] == 42 {
                break 'changed;
            }
        }
        assert!(Instant::now() < deadline, "queue change not in force");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A queue added through node 1 runs within a second on the node running its tenant,
    // whose owner key it gets; deleted through node 2, it stops and its key goes.
    let start = Instant::now();
    let r = http_request(
        n1.http,
        "PUT",
        "/tenants/cc/queues/added",
        Some(&bearer),
        r#"{"service_level_secs": 7}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let runs_on = |path: &'static str| {
        let nodes = &nodes;
        async move {
            let mut on = Vec::new();
            for n in nodes {
                let r = http_request(n.http, "GET", path, AUTH, "").await;
                let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
                if r.status == 200 && v["service_level_secs"] == 7 {
                    on.push(n.name.clone());
                }
            }
            on
        }
    };
    let runner = loop {
        let on = runs_on("/queues/cc/added").await;
        assert!(on.len() < 2, "the new queue runs twice: {on:?}");
        if let [one] = &on[..] {
            break one.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "new queue not running in 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "queue put on n1: running on {runner} after {:?}",
        start.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (queue, tenant) = (
            owners_of(n1.http, "queue/cc/added").await,
            owners_of(n1.http, "tenant/cc").await,
        );
        if queue == [runner.clone()] && tenant == queue {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new queue's key: {queue:?}, tenant's: {tenant:?}, runs on {runner}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = http_request(
        n2.http,
        "DELETE",
        "/tenants/cc/queues/added",
        Some(&bearer),
        "",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !owners_of(n1.http, "queue/cc/added").await.is_empty()
        || !runs_on("/queues/cc/added").await.is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "deleted queue still owned or running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A trunk put on node 1 is owned by exactly one node within two seconds, and a call
    // through node 3 on a route to it reaches its gateway.
    let gw = Ua::new().await;
    let start = Instant::now();
    let r = http_request(
        n1.http,
        "PUT",
        "/trunks/carrier",
        Some(&bearer),
        &trunk_body(gw.addr),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    loop {
        let owners = owners_of(n1.http, "trunk/carrier").await;
        if owners.len() == 1 {
            eprintln!(
                "trunk put on n1: owned by {owners:?} after {:?}",
                start.elapsed()
            );
            break;
        }
        assert!(owners.len() < 2, "owned twice: {owners:?}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "new trunk not owned in 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let route = r#"{"prefix": "66", "trunks": ["carrier"]}"#;
    let r = http_request(n1.http, "PUT", "/routes/out", Some(&bearer), route).await;
    assert_eq!(r.status, 201, "{}", r.body);
    wait_routes(n3.http, Duration::from_secs(1), |ids| {
        ids.iter().any(|i| i == "out")
    })
    .await;
    let cid = rand_token();
    caller
        .send(n3.sip, &invite(&cid, "6620", caller.addr, n3.sip))
        .await;
    let (inv, from) = gw.expect_request("INVITE").await;
    gw.send(from, &answer(&inv, 486, "Busy Here", "b1", gw.addr, ""))
        .await;
    caller
        .expect("486 through n3 and the new trunk", |m| {
            m.status() == Some(486) && call_id(m) == cid
        })
        .await;
    // In use by the route: refused on any node; once the route goes, deleted and released.
    let r = http_request(n2.http, "DELETE", "/trunks/carrier", Some(&bearer), "").await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = http_request(n2.http, "DELETE", "/routes/out", Some(&bearer), "").await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = http_request(n2.http, "DELETE", "/trunks/carrier", Some(&bearer), "").await;
    assert_eq!(r.status, 204, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !owners_of(n1.http, "trunk/carrier").await.is_empty() {
        assert!(Instant::now() < deadline, "deleted trunk still owned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in &nodes {
        let r = http_request(n.http, "GET", "/trunks", AUTH, "").await;
        assert_eq!(r.body, "[]", "trunk deleted everywhere");
    }

    // A tenant put on node 1 is owned by exactly one node within a second, its queue runs
    // there (with its owner key), and its user registers through node 3.
    let start = Instant::now();
    let r = http_request(
        n1.http,
        "PUT",
        "/tenants/nu",
        Some(&bearer),
        &new_tenant_body(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let owner = loop {
        let owners = owners_of(n1.http, "tenant/nu").await;
        assert!(owners.len() < 2, "owned twice: {owners:?}");
        if let [one] = &owners[..] {
            break one.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "new tenant not owned in 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "tenant put on n1: owned by {owner} after {:?}",
        start.elapsed()
    );
    let running = nodes.iter().find(|n| n.name == owner).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let r = http_request(running.http, "GET", "/queues/nu/help", AUTH, "").await;
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        let key = owners_of(n1.http, "queue/nu/help").await;
        if r.status == 200 && v["service_level_secs"] == 13 && key == [owner.clone()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new tenant's queue: {} {key:?}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let phone = Ua::new().await;
    let mut cseq = 1;
    while register_status_at(n3.sip, &phone, "new.test", "nina", "pw", cseq).await != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "new tenant's user not in force on n3"
        );
        cseq += 2;
    }
    // Deleted through node 2 once its number is: stopped, keys released, gone everywhere.
    let r = http_request(n2.http, "DELETE", "/tenants/nu", Some(&bearer), "").await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = http_request(n2.http, "DELETE", "/numbers/7200", Some(&bearer), "").await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = http_request(n2.http, "DELETE", "/tenants/nu", Some(&bearer), "").await;
    assert_eq!(r.status, 204, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !owners_of(n1.http, "tenant/nu").await.is_empty()
        || !owners_of(n1.http, "queue/nu/help").await.is_empty()
    {
        assert!(Instant::now() < deadline, "deleted tenant still owned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in &nodes {
        let r = http_request(n.http, "GET", "/tenants", AUTH, "").await;
        assert_eq!(r.body, "[]", "tenant deleted everywhere");
    }
    assert_eq!(
        register_first_status(n3.sip, &phone, "new.test", "nina").await,
        404
    );

    // Two nodes accepting clashing routes at once (two ids, one prefix): exactly one wins,
    // the other is refused on the prefix, however the two interleave.
    let clash = format!(r#"{{"prefix": "55", "target": "sip:{}"}}"#, uk.addr);
    let (a, b) = tokio::join!(
        http_request(n1.http, "PUT", "/routes/a55", Some(&bearer), &clash),
        http_request(n2.http, "PUT", "/routes/b55", Some(&bearer), &clash),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [201, 400], "{} / {}", a.body, b.body);
    let loser = if a.status == 400 { &a } else { &b };
    assert!(loser.body.contains(r#""field":"prefix""#), "{}", loser.body);
    let winner = if a.status == 201 { "a55" } else { "b55" };
    let r = http_request(
        n3.http,
        "DELETE",
        &format!("/routes/{winner}"),
        Some(&bearer),
        "",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);

    // A delete on node 2 (of the file's route too) is in force on all nodes.
    let r = http_request(n2.http, "DELETE", "/routes/9", Some(&bearer), "").await;
    assert_eq!(r.status, 204, "{}", r.body);
    for n in &nodes {
        wait_routes(n.http, Duration::from_secs(1), |ids| ids == ["uk"]).await;
    }
    assert_eq!(status_on(n1.sip, "900").await, 404);
    // etcd unreachable: a change is refused with 503 and nothing changes.
    drop(etcd);
    let fr = body.replace("44", "33");
    let r = http_request(n2.http, "PUT", "/routes/fr", Some(&bearer), &fr).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(route_ids(n2.http).await.unwrap(), ["uk"]);
    // etcd back: the nodes reconnect, and changes flow again to every node.
    let _etcd = start_etcd(&etcd_bin, dir.path(), &etcd_url, &peer_url);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = http_request(n2.http, "PUT", "/routes/fr", Some(&bearer), &fr).await;
        if r.status == 201 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(Instant::now() < deadline, "etcd writes did not resume");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in &nodes {
        wait_routes(n.http, Duration::from_secs(5), |ids| ids == ["fr", "uk"]).await;
    }
}
