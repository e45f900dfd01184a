//! Routes and numbers changed through the API on a node alone: in force for the next call,
//! kept across a restart, refused (400 naming the field, 401/403 without the token) exactly
//! where the config file would be.

mod common;

use common::*;
use std::net::SocketAddr;
use switchyard::config::Config;
use switchyard::server::Node;

const TOKEN: &str = "config-api-token-for-tests";
const AUTH: Option<&str> = Some("Bearer config-api-token-for-tests");

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
    let r = http_request(node.http_addr, "GET", path, None, "").await;
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
