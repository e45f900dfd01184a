//! The API behind tokens on a real node (issue 16, item 6): every route but `/health` and
//! `/metrics` needs a bearer token; a tenant's token (the config file's `api_token`, or one
//! made through `POST /tenants/{t}/tokens`) sees only its tenant's queues, waiting callers,
//! agents, users, numbers and recordings, another tenant's answering 404 exactly like one that
//! does not exist, and the node's routes 403; tokens are rotated and revoked through the API
//! and kept (hashed) across a restart; a short `http.token` is refused at start; the listener
//! speaks HTTPS (rustls) when given a certificate.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::Value;
use switchyard::config::Config;
use switchyard::server::Node;
use switchyard::sip::auth::{ha1, Algorithm};

/// Tenant `t1`'s token from the config file (`api_token`).
const T1_FILE: &str = "tenant-one-file-token-0123456789-abcdef";

/// Tenants `t1` and `t2`, each with queue `q`, one agent (`a1`, `b1`), one user and one
/// number (5001, 5002); `t1` has a token in the file. The node's token is [`API_TOKEN`].
fn two_tenants(dir: &std::path::Path) -> Config {
    let mut c = config(dir, &[]);
    let (h1, h2) = (
        ha1(Algorithm::Md5, "1001", "t1.test", "pw"),
        ha1(Algorithm::Md5, "2001", "t2.test", "pw"),
    );
    c.tenants = Config::from_toml(&format!(
        r#"
        [[tenants]]
        id = "t1"
        domain = "t1.test"
        api_token = "{T1_FILE}"
        users = [{{ username = "1001", ha1_md5 = "{h1}" }}]
        [[tenants.queues]]
        id = "q"
        [[tenants.agents]]
        id = "a1"
        user = "1001"
        queues = [{{ queue = "q" }}]
        [[tenants.numbers]]
        number = "5001"
        target = "queue:q"

        [[tenants]]
        id = "t2"
        domain = "t2.test"
        users = [{{ username = "2001", ha1_md5 = "{h2}" }}]
        [[tenants.queues]]
        id = "q"
        [[tenants.agents]]
        id = "b1"
        user = "2001"
        queues = [{{ queue = "q" }}]
        [[tenants.numbers]]
        number = "5002"
        target = "queue:q"
        "#
    ))
    .unwrap()
    .tenants;
    c
}

/// One request with `Authorization: Bearer <token>` when a token is given.
async fn call(node: &Node, method: &str, path: &str, token: Option<&str>, body: &str) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    http_request(node.http_addr, method, path, auth.as_deref(), body).await
}

async fn get(node: &Node, path: &str, token: &str) -> Reply {
    call(node, "GET", path, Some(token), "").await
}

fn json(r: &Reply) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

/// A problem body with `status`.
fn assert_problem(r: &Reply, status: u16, path: &str) {
    assert_eq!(r.status, status, "{path}: {}", r.body);
    assert_eq!(
        r.header("content-type"),
        "application/problem+json",
        "{path}"
    );
}

/// Makes a token for `tenant` with the node's token; its id and secret.
async fn make_token(node: &Node, tenant: &str, name: &str) -> (String, String) {
    let body = format!(r#"{{"name": "{name}"}}"#);
    let path = format!("/tenants/{tenant}/tokens");
    let r = call(node, "POST", &path, Some(API_TOKEN), &body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let v = json(&r);
    (
        v["id"].as_str().unwrap().to_string(),
        v["token"].as_str().unwrap().to_string(),
    )
}

fn metric_present(metrics: &str, name: &str, label: &str) -> bool {
    metrics
        .lines()
        .any(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_need_a_token_like_everything_but_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(two_tenants(dir.path())).await;
    let reads = [
        "/queues",
        "/queues/t1/q",
        "/queues/t1/q/waiting",
        "/queues/t1/q/decisions",
        "/agents",
        "/agents/t1/a1",
        "/tenants/t1/users",
        "/tenants/t1/tokens",
        "/numbers",
        "/trunks",
        "/routes",
        "/tenants",
        "/recordings",
        "/cluster",
        "/status",
        "/log",
    ];
    for path in reads {
        let r = call(&node, "GET", path, None, "").await;
        assert_problem(&r, 401, path);
        assert_eq!(r.header("www-authenticate"), "Bearer", "{path}");
        let r = get(&node, path, "not-a-token-this-node-knows-0123456789").await;
        assert_problem(&r, 403, path);
        assert!(!r.body.contains("t1.test"), "{path}: {}", r.body);
    }
    // Open without one: health for load balancers, metrics for Prometheus.
    for path in ["/health", "/metrics"] {
        let r = call(&node, "GET", path, None, "").await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    // The node's token reads everything.
    let r = get(&node, "/queues", API_TOKEN).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(r#""tenant":"t1""#) && r.body.contains(r#""tenant":"t2""#));
    let r = get(&node, "/numbers", API_TOKEN).await;
    assert_eq!(json(&r).as_array().unwrap().len(), 2, "{}", r.body);

    let metrics = call(&node, "GET", "/metrics", None, "").await.body;
    for reason in ["missing", "invalid"] {
        assert!(
            metric_present(
                &metrics,
                "switchyard_api_auth_refused_total",
                &format!(r#"reason="{reason}""#)
            ),
            "{reason} in {metrics}"
        );
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_sees_only_its_own_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(two_tenants(dir.path())).await;
    let (made_id, made) = make_token(&node, "t1", "crm").await;
    assert!(made.starts_with("swy_") && made.len() >= 64, "{made}");

    // Another tenant's object answers exactly as one that does not exist.
    let unknown = get(&node, "/queues/t9/q/waiting", API_TOKEN).await;
    assert_problem(&unknown, 404, "t9");

    for token in [T1_FILE, made.as_str()] {
        let r = get(&node, "/queues", token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let queues = json(&r);
        assert_eq!(queues.as_array().unwrap().len(), 1, "{}", r.body);
        assert_eq!(queues[0]["tenant"], "t1");
        let r = get(&node, "/queues?tenant=t1", token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = get(&node, "/queues/t1/q/waiting", token).await;
        assert_eq!((r.status, r.body.as_str()), (200, "[]"));
        let r = get(&node, "/agents", token).await;
        assert_eq!(json(&r)["total"], 1, "{}", r.body);
        assert_eq!(json(&r)["agents"][0]["id"], "a1");
        let r = get(&node, "/numbers", token).await;
        let numbers = json(&r);
        assert_eq!(numbers.as_array().unwrap().len(), 1, "{}", r.body);
        assert_eq!(numbers[0]["number"], "5001");
        let r = get(&node, "/tenants/t1/users", token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("1001"), "{}", r.body);
        let r = get(&node, "/recordings", token).await;
        assert_eq!((r.status, r.body.as_str()), (200, "[]"));
        let r = get(&node, "/tenants/t1/tokens", token).await;
        assert_eq!(r.status, 200, "{}", r.body);

        // t2's objects: 404, as for a tenant that does not exist.
        for path in [
            "/queues?tenant=t2",
            "/queues/t2/q",
            "/queues/t2/q/waiting",
            "/queues/t2/q/decisions",
            "/agents?tenant=t2",
            "/agents/t2/b1",
            "/tenants/t2/users",
            "/tenants/t2/tokens",
            "/recordings?tenant=t2",
        ] {
            let r = get(&node, path, token).await;
            assert_problem(&r, 404, path);
            assert!(r.body.contains(r#"no tenant \"t2\""#), "{path}: {}", r.body);
        }
        let r = get(&node, "/queues/t2/q/waiting", token).await;
        assert_eq!(
            r.body,
            unknown.body.replace("t9", "t2"),
            "no existence leaks"
        );

        // The node's routes: 403.
        for (method, path) in [
            ("GET", "/trunks"),
            ("GET", "/routes"),
            ("GET", "/tenants"),
            ("GET", "/cluster"),
            ("POST", "/tenants/t1/tokens"),
            ("DELETE", &*format!("/tenants/t1/tokens/{made_id}")),
            ("POST", &*format!("/tenants/t1/tokens/{made_id}/rotate")),
            ("PUT", "/numbers/5003"),
            ("PUT", "/tenants/t1/users/1009"),
            ("PUT", "/tenants/t1/queues/q"),
            ("PUT", "/tenants/t3"),
            ("POST", "/cluster/drain"),
            ("GET", "/status"),
            ("PUT", "/log"),
        ] {
            let r = call(&node, method, path, Some(token), "{}").await;
            assert_problem(&r, 403, path);
            assert!(r.body.contains("node's token"), "{path}: {}", r.body);
        }

        // Its own agents' commands work; another tenant's agent is not found, unchanged.
        let r = call(&node, "POST", "/agents/t1/a1/not-ready", Some(token), "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = call(&node, "POST", "/agents/t2/b1/not-ready", Some(token), "").await;
        assert_problem(&r, 404, "b1");
        let click = r#"{"tenant": "t2", "agent": "b1", "number": "9123"}"#;
        let r = call(&node, "POST", "/calls", Some(token), click).await;
        assert_problem(&r, 404, "/calls");
        assert!(r.body.contains(r#"no tenant \"t2\""#), "{}", r.body);
    }
    let r = get(&node, "/agents/t2/b1", API_TOKEN).await;
    assert_eq!(json(&r)["state"], "logged_out", "{}", r.body);

    let metrics = call(&node, "GET", "/metrics", None, "").await.body;
    for reason in ["node_only", "other_tenant"] {
        assert!(
            metric_present(
                &metrics,
                "switchyard_api_auth_refused_total",
                &format!(r#"reason="{reason}""#)
            ),
            "{reason} in {metrics}"
        );
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_listed_rotated_revoked_and_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(two_tenants(dir.path())).await;
    let (crm_id, crm) = make_token(&node, "t1", "crm").await;
    let (wall_id, wall) = make_token(&node, "t1", "wallboard").await;
    let (_, t2) = make_token(&node, "t2", "").await;
    assert!(crm_id.len() == 16 && crm_id != wall_id);

    // The secret is shown once, never cached, never stored in the clear.
    let r = call(&node, "POST", "/tenants/t1/tokens", Some(API_TOKEN), "").await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("cache-control"), "no-store");
    let (extra_id, extra) = (
        json(&r)["id"].as_str().unwrap().to_string(),
        json(&r)["token"].as_str().unwrap().to_string(),
    );
    assert!(json(&r).get("sha256").is_none(), "{}", r.body);
    let db = std::fs::read(dir.path().join("switchyard.db")).unwrap();
    let wal = std::fs::read(dir.path().join("switchyard.db-wal")).unwrap_or_default();
    for secret in [&crm, &wall, &extra] {
        let hex = &secret["swy_".len()..];
        assert!(
            !db.windows(hex.len()).any(|w| w == hex.as_bytes())
                && !wal.windows(hex.len()).any(|w| w == hex.as_bytes()),
            "a secret in the database"
        );
    }

    // Used once; the listing shows it, with the file's token, never a secret.
    assert_eq!(get(&node, "/queues", &crm).await.status, 200);
    let r = get(&node, "/tenants/t1/tokens", API_TOKEN).await;
    let list = json(&r);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 4, "{}", r.body);
    assert_eq!(list[0]["id"], "file", "{}", r.body);
    assert_eq!(list[0]["origin"], "file", "{}", r.body);
    let crm_row = list.iter().find(|t| t["id"] == *crm_id).unwrap();
    assert_eq!(crm_row["name"], "crm");
    assert_eq!(crm_row["origin"], "api");
    assert!(crm_row["created_ms"].as_u64().unwrap() > 0);
    assert!(crm_row["last_used_ms"].as_u64().is_some(), "{crm_row}");
    let wall_row = list.iter().find(|t| t["id"] == *wall_id).unwrap();
    assert!(wall_row["last_used_ms"].is_null(), "{wall_row}");
    for secret in [&crm, &wall, &extra, &T1_FILE.to_string()] {
        assert!(
            !r.body.contains(&secret[8..]),
            "a secret listed: {}",
            r.body
        );
    }
    assert!(!r.body.contains("sha256"), "{}", r.body);

    // Rotation: a new secret for the same id; the old one fails at once.
    let path = format!("/tenants/t1/tokens/{crm_id}/rotate");
    let r = call(&node, "POST", &path, Some(API_TOKEN), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("cache-control"), "no-store");
    assert_eq!(json(&r)["id"], *crm_id);
    assert!(json(&r)["rotated_ms"].as_u64().is_some(), "{}", r.body);
    let crm2 = json(&r)["token"].as_str().unwrap().to_string();
    assert_ne!(crm2, crm);
    assert_problem(&get(&node, "/queues", &crm).await, 403, "old secret");
    assert_eq!(get(&node, "/queues", &crm2).await.status, 200);

    // Revocation: fails at once; a second revocation finds nothing.
    let path = format!("/tenants/t1/tokens/{wall_id}");
    assert_eq!(get(&node, "/queues", &wall).await.status, 200);
    let r = call(&node, "DELETE", &path, Some(API_TOKEN), "").await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_problem(&get(&node, "/queues", &wall).await, 403, "revoked");
    let r = call(&node, "DELETE", &path, Some(API_TOKEN), "").await;
    assert_problem(&r, 404, "revoked twice");
    let r = call(
        &node,
        "POST",
        &format!("{path}/rotate"),
        Some(API_TOKEN),
        "",
    )
    .await;
    assert_problem(&r, 404, "a revoked token is not rotated back");
    assert_problem(&get(&node, "/queues", &wall).await, 403, "still revoked");

    // The file's token is changed in the file; refusals of bad requests.
    let r = call(
        &node,
        "DELETE",
        "/tenants/t1/tokens/file",
        Some(API_TOKEN),
        "",
    )
    .await;
    assert_problem(&r, 501, "file token");
    let r = call(
        &node,
        "POST",
        "/tenants/t1/tokens/file/rotate",
        Some(API_TOKEN),
        "",
    )
    .await;
    assert_problem(&r, 501, "file token");
    let r = call(&node, "POST", "/tenants/t9/tokens", Some(API_TOKEN), "").await;
    assert_problem(&r, 404, "unknown tenant");
    let r = call(
        &node,
        "POST",
        "/tenants/t1/tokens",
        Some(API_TOKEN),
        r#"{"nom": 1}"#,
    )
    .await;
    assert_problem(&r, 400, "unknown field");
    let long = format!(r#"{{"name": "{}"}}"#, "x".repeat(65));
    let r = call(&node, "POST", "/tenants/t1/tokens", Some(API_TOKEN), &long).await;
    assert_problem(&r, 400, "long name");

    // A tenant added through the API takes its tokens with it when deleted.
    let r = call(
        &node,
        "PUT",
        "/tenants/t3",
        Some(API_TOKEN),
        r#"{"domain": "t3.test"}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let (_, t3) = make_token(&node, "t3", "").await;
    assert_eq!(get(&node, "/tenants/t3/users", &t3).await.status, 200);
    let r = call(&node, "DELETE", "/tenants/t3", Some(API_TOKEN), "").await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_problem(&get(&node, "/queues", &t3).await, 403, "deleted tenant");

    // Kept across a restart: only the digests were stored, and they still match.
    node.shutdown().await;
    let node = start_with(two_tenants(dir.path())).await;
    assert_eq!(get(&node, "/queues", &crm2).await.status, 200);
    assert_eq!(get(&node, "/queues", &t2).await.status, 200);
    assert_eq!(get(&node, "/queues", &extra).await.status, 200);
    assert_eq!(get(&node, "/queues", T1_FILE).await.status, 200);
    for gone in [&crm, &wall, &t3] {
        assert_problem(&get(&node, "/queues", gone).await, 403, "after the restart");
    }
    let r = call(&node, "POST", "/tenants/t3/tokens", Some(API_TOKEN), "").await;
    assert_problem(&r, 404, "the deleted tenant");

    let path = format!("/tenants/t1/tokens/{extra_id}");
    let r = call(&node, "DELETE", &path, Some(API_TOKEN), "").await;
    assert_eq!(r.status, 204, "{}", r.body);
    let metrics = call(&node, "GET", "/metrics", None, "").await.body;
    assert!(
        metric_present(
            &metrics,
            "switchyard_api_token_changes_total",
            r#"action="revoked""#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("# HELP switchyard_api_token_changes_total"));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_token_is_refused_at_start_and_by_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = two_tenants(dir.path());
    c.http.token = Some("short-token".into());
    let errors = c.validate().unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.place == "http.token" && e.message.contains("32")),
        "{errors:?}"
    );
    // Started without validation, the node refuses it too rather than serve a guessable API.
    let refused = Node::start(c.clone())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(refused.contains("http.token"), "{refused}");

    let mut c = two_tenants(dir.path());
    c.tenants[0].api_token = Some("short".into());
    let errors = c.validate().unwrap_err();
    assert!(
        errors.iter().any(|e| e.place == "tenants[0].api_token"),
        "{errors:?}"
    );
    c.tenants[0].api_token = Some(API_TOKEN.into());
    let errors = c.validate().unwrap_err();
    assert!(
        errors.iter().any(|e| e.message.contains("node's")),
        "a tenant with the node's token: {errors:?}"
    );

    // A certificate that does not load stops the node too, as early.
    let mut c = two_tenants(dir.path());
    c.http.tls_cert = Some(dir.path().join("missing-cert.pem"));
    c.http.tls_key = Some(dir.path().join("missing-key.pem"));
    c.validate().unwrap();
    let refused = Node::start(c).await.err().expect("refused").to_string();
    assert!(refused.contains("http.tls_cert"), "{refused}");

    // check-config reports it with its place.
    let file = dir.path().join("short.toml");
    std::fs::write(&file, "[http]\ntoken = \"change-me\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("http.token"), "{stderr}");
}

/// One HTTP/1.1 request over TLS to `addr`, trusting exactly `cert`; the status line's code
/// and the body.
async fn https_request(
    addr: SocketAddr,
    cert: &std::path::Path,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let client = switchyard::transport::tls::client_config(&[cert]).unwrap();
    let connector = tokio_rustls::TlsConnector::from(client);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("the certificate is trusted");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // A close_notify-less end is an error to rustls; what was read is what matters.
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut raw)).await;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_answers_over_rustls_with_the_same_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let certs = switchyard::transport::tls::ensure_self_signed(&dir.path().join("api")).unwrap();
    let mut c = two_tenants(dir.path());
    c.http.tls_cert = Some(certs.cert.clone());
    c.http.tls_key = Some(certs.key.clone());
    let node = start_with(c).await;
    let addr = node.http_addr;

    let (status, body) = https_request(addr, &certs.cert, "/health", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        https_request(addr, &certs.cert, "/queues", None).await.0,
        401
    );
    let (status, body) = https_request(addr, &certs.cert, "/queues", Some(T1_FILE)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""tenant":"t1""#) && !body.contains("t2"),
        "{body}"
    );

    // Plain HTTP gets no HTTP answer from the HTTPS listener.
    let plain = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), plain)
        .await
        .expect("the listener closes a plain connection");
    assert!(
        !buf.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );

    // A client that does not trust the certificate does not get through.
    let other = switchyard::transport::tls::ensure_self_signed(&dir.path().join("other")).unwrap();
    let client = switchyard::transport::tls::client_config(&[&other.cert]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let refused = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await;
    assert!(refused.is_err(), "an untrusted certificate is refused");

    let (_, metrics) = https_request(addr, &certs.cert, "/metrics", None).await;
    assert!(
        metric_present(
            &metrics,
            "switchyard_api_tls_handshakes_total",
            r#"result="ok""#
        ),
        "{metrics}"
    );
    node.shutdown().await;
}
