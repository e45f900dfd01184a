//! Access keys (AK/SK) on a real loopback socket over a real SQLite file: a valid signature
//! passes, an expired date, a replayed nonce, a wrong secret or an altered body fail; a key
//! sees its own tenant only; roles limit the routes; rotation and revocation take effect at
//! once; the shipped Python helper (`tools/swy-sign.py`) signs requests the node accepts.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use switchyard::api::keys::{sign, SealKey};
use switchyard::api::{self, ApiState, Health, Token};
use switchyard::store::{Cdr, Database, HangupBy, Store};

const NODE: &str = "node-token-for-the-access-key-tests-0123";

struct Api {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

async fn serve(db: &std::path::Path) -> Api {
    let metrics = switchyard::metrics::install().expect("recorder");
    let state = ApiState::new(metrics.clone(), Health::new())
        .with_token(Token::new(NODE).unwrap())
        .with_store(Database::Sqlite(db.to_path_buf()))
        .with_access_keys(SealKey::from_bytes(rand::random()));
    let listener = api::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(api::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    Api {
        addr,
        _stop: stop,
        metrics,
    }
}

fn cdr(n: u32, tenant: &str) -> Cdr {
    let start = 1_700_000_000_000 + i64::from(n) * 1000;
    Cdr {
        a_call_id: format!("{tenant}-{n}"),
        b_call_id: None,
        caller: "sip:a@x".into(),
        callee: "100".into(),
        route: None,
        target: None,
        start_at: start,
        ringing_at: None,
        answer_at: Some(start + 1),
        end_at: start + 10,
        duration_ms: 10,
        billable_ms: 9,
        final_status: 200,
        hangup_by: HangupBy::Caller,
        disconnect_reason: "BYE".into(),
        queue: None,
        agent: None,
        wait_ms: None,
        abandoned: false,
        trunk: None,
        attempts: None,
        dtmf: None,
        recording: None,
        media: None,
        transfers: None,
        tenant: Some(tenant.into()),
        legs: Vec::new(),
    }
}

/// One request with `headers` (CRLF-terminated lines); status and body.
async fn raw(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &str,
    body: &str,
) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("reply in time")
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn now() -> i64 {
    switchyard::store::now_unix_ms() / 1000
}

/// The headers of a request signed at `date` with `nonce`.
fn signed(
    key: &str,
    secret: &str,
    method: &str,
    target: &str,
    body: &str,
    date: i64,
    nonce: &str,
) -> String {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let sig = sign(
        secret,
        method,
        path,
        query,
        &date.to_string(),
        nonce,
        body.as_bytes(),
    );
    format!(
        "Authorization: SWY1-HMAC-SHA256 Credential={key}, Signature={sig}\r\nX-Swy-Date: {date}\r\nX-Swy-Nonce: {nonce}\r\n"
    )
}

fn nonce() -> String {
    format!("n{:032x}", rand::random::<u128>())
}

/// A signed request, fresh date and nonce.
async fn call(
    api: &Api,
    k: &(String, String),
    method: &str,
    target: &str,
    body: &str,
) -> (u16, Value) {
    let h = signed(&k.0, &k.1, method, target, body, now(), &nonce());
    raw(api.addr, method, target, &h, body).await
}

async fn make_key(api: &Api, tenant: &str, role: &str) -> (String, String) {
    let h = format!("Authorization: Bearer {NODE}\r\n");
    let (status, k) = raw(
        api.addr,
        "POST",
        &format!("/tenants/{tenant}/keys"),
        &h,
        &format!(r#"{{"name": "{role} key", "role": "{role}"}}"#),
    )
    .await;
    assert_eq!(status, 201, "{k}");
    let secret = k["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("sk_") && secret.len() == 67);
    (k["id"].as_str().unwrap().to_string(), secret)
}

fn failures(api: &Api, reason: &str) -> u64 {
    let label = format!("switchyard_api_signature_failures_total{{reason=\"{reason}\"}}");
    api.metrics
        .render()
        .lines()
        .find(|l| l.starts_with(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_windows_nonces_tenants_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("switchyard.db");
    Store::open(&db)
        .unwrap()
        .insert_cdrs(&[cdr(1, "t1"), cdr(2, "t2"), cdr(3, "t1")])
        .unwrap();
    let api = serve(&db).await;
    let reader = make_key(&api, "t1", "read_only").await;
    let agent = make_key(&api, "t1", "agent").await;
    let admin = make_key(&api, "t1", "admin").await;

    // Valid: a read, its own tenant's CDRs only.
    let (s, page) = call(&api, &reader, "GET", "/cdrs?limit=10", "").await;
    assert_eq!(s, 200, "{page}");
    let cdrs = page["cdrs"].as_array().unwrap();
    assert_eq!(cdrs.len(), 2);
    assert!(cdrs.iter().all(|c| c["tenant"] == "t1"));

    // Expired: a date outside the five minutes, either way.
    let before = failures(&api, "expired");
    for date in [now() - 301, now() + 301] {
        let h = signed(&reader.0, &reader.1, "GET", "/cdrs", "", date, &nonce());
        let (s, p) = raw(api.addr, "GET", "/cdrs", &h, "").await;
        assert_eq!(s, 403, "{p}");
        assert!(p["detail"].as_str().unwrap().contains("5 minutes"), "{p}");
    }
    assert_eq!(failures(&api, "expired") - before, 2);

    // Replayed: the same signed request twice.
    let h = signed(
        &reader.0,
        &reader.1,
        "GET",
        "/cdrs",
        "",
        now(),
        "replay-me-123",
    );
    assert_eq!(raw(api.addr, "GET", "/cdrs", &h, "").await.0, 200);
    let (s, p) = raw(api.addr, "GET", "/cdrs", &h, "").await;
    assert_eq!(s, 403);
    assert!(p["detail"].as_str().unwrap().contains("nonce"), "{p}");
    assert_eq!(failures(&api, "replayed"), 1);

    // A wrong secret, a changed query, a changed body: not valid.
    let wrong = (reader.0.clone(), "sk_wrong".to_string());
    assert_eq!(call(&api, &wrong, "GET", "/cdrs", "").await.0, 403);
    let h = signed(
        &reader.0,
        &reader.1,
        "GET",
        "/cdrs?limit=1",
        "",
        now(),
        &nonce(),
    );
    assert_eq!(raw(api.addr, "GET", "/cdrs?limit=2", &h, "").await.0, 403);
    let h = signed(
        &agent.0,
        &agent.1,
        "POST",
        "/calls",
        r#"{"a":1}"#,
        now(),
        &nonce(),
    );
    assert_eq!(
        raw(api.addr, "POST", "/calls", &h, r#"{"a":2}"#).await.0,
        403
    );
    assert!(failures(&api, "bad_signature") >= 3);
    // An unknown key, malformed headers.
    let ghost = ("ak_0000000000000000".to_string(), "sk_x".to_string());
    assert_eq!(call(&api, &ghost, "GET", "/cdrs", "").await.0, 403);
    let (s, _) = raw(
        api.addr,
        "GET",
        "/cdrs",
        "Authorization: SWY1-HMAC-SHA256 Credential=x\r\n",
        "",
    )
    .await;
    assert_eq!(s, 401);

    // Wrong tenant: another tenant's objects are a 404 as if they did not exist.
    let (s, p) = call(&api, &reader, "GET", "/cdrs?tenant=t2", "").await;
    assert_eq!((s, p["detail"].as_str()), (404, Some(r#"no tenant "t2""#)));
    assert_eq!(
        call(&api, &admin, "GET", "/tenants/t2/keys", "").await.0,
        404
    );
    assert_eq!(
        call(
            &api,
            &admin,
            "POST",
            "/tenants/t2/keys",
            r#"{"role":"admin"}"#
        )
        .await
        .0,
        404
    );

    // Wrong role: a reader may not drive an agent; an agent may not release calls or make
    // keys; nobody but the node reaches the node's routes.
    let (s, p) = call(&api, &reader, "POST", "/agents/t1/a1/login", "").await;
    assert_eq!(s, 403, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("role"), "{p}");
    assert_eq!(call(&api, &agent, "DELETE", "/calls/x", "").await.0, 403);
    assert_eq!(
        call(
            &api,
            &agent,
            "POST",
            "/tenants/t1/keys",
            r#"{"role":"admin"}"#
        )
        .await
        .0,
        403
    );
    // The agent's role reaches the agent's routes (no contact centre here: 404, not 403).
    assert_eq!(
        call(&api, &agent, "POST", "/agents/t1/a1/login", "")
            .await
            .0,
        404
    );
    assert_eq!(call(&api, &admin, "GET", "/trunks", "").await.0, 403);
    assert_eq!(
        call(&api, &admin, "POST", "/tenants/t1/tokens", "{}")
            .await
            .0,
        403
    );

    // An admin key manages its tenant's keys: list (no secrets), make, rotate, revoke.
    let (s, list) = call(&api, &admin, "GET", "/tenants/t1/keys", "").await;
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 3);
    assert!(!list.to_string().contains("sk_"), "{list}");
    let (s, made) = call(
        &api,
        &admin,
        "POST",
        "/tenants/t1/keys",
        r#"{"role":"supervisor"}"#,
    )
    .await;
    assert_eq!(s, 201, "{made}");
    let (s, rotated) = call(
        &api,
        &admin,
        "POST",
        &format!("/tenants/t1/keys/{}/rotate", reader.0),
        "",
    )
    .await;
    assert_eq!(s, 200, "{rotated}");
    assert_eq!(
        call(&api, &reader, "GET", "/cdrs", "").await.0,
        403,
        "old secret"
    );
    let reader = (
        reader.0.clone(),
        rotated["secret"].as_str().unwrap().to_string(),
    );
    assert_eq!(
        call(&api, &reader, "GET", "/cdrs", "").await.0,
        200,
        "new secret"
    );
    let (s, _) = call(
        &api,
        &admin,
        "DELETE",
        &format!("/tenants/t1/keys/{}", reader.0),
        "",
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(
        call(&api, &reader, "GET", "/cdrs", "").await.0,
        403,
        "revoked"
    );

    // The node's bearer token still works next to the keys.
    let (s, _) = raw(
        api.addr,
        "GET",
        "/cdrs",
        &format!("Authorization: Bearer {NODE}\r\n"),
        "",
    )
    .await;
    assert_eq!(s, 200);

    // The secret is sealed in the database, never in clear.
    let text = std::fs::read(&db).unwrap();
    let wal = std::fs::read(dir.path().join("switchyard.db-wal")).unwrap_or_default();
    for hay in [&text, &wal] {
        assert!(
            !hay.windows(agent.1.len()).any(|w| w == agent.1.as_bytes()),
            "a secret in clear in the database"
        );
    }

    // The shipped helper signs requests the node accepts.
    let (url, key, secret) = (
        format!("http://{}", api.addr),
        agent.0.clone(),
        agent.1.clone(),
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/swy-sign.py"))
            .args(["--url", &url, "--key", &key, "--secret", &secret])
            .args(["GET", "/cdrs?limit=1"])
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{body} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["cdrs"].as_array().unwrap().len(), 1);
}
