//! The audit log on the real binary: a change answered 2xx is in the log after `kill -9`
//! right after the answer and a restart; who, from where, what, before and after are
//! recorded; secrets are not; a tenant's credential reads its own tenant's records only.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const NODE: &str = "node-token-for-the-audit-tests-0123456789";
const T1: &str = "tenant-one-token-for-the-audit-tests-0123";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("switchyard binary starts")
}

async fn wait_up(http: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(http).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("switch did not come up");
}

async fn call(http: SocketAddr, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
    let r = common::http_request(http, method, path, Some(&format!("Bearer {token}")), body).await;
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_answered_2xx_survives_kill_minus_9() {
    let dir = tempfile::tempdir().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let sip = free_port();
    let cfg = dir.path().join("switchyard.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[sip]\nlisten = [\"udp:127.0.0.1:{sip}\"]\n[http]\nlisten = \"{http}\"\ntoken = \"{NODE}\"\n\
             [[tenants]]\nid = \"t1\"\ndomain = \"t1.example\"\napi_token = \"{T1}\"\n\
             [[tenants]]\nid = \"t2\"\ndomain = \"t2.example\"\n\
             [[routes]]\nprefix = \"9\"\ntarget = \"sip:127.0.0.1:5999\"\n",
            dir.path().join("data").display(),
        ),
    )
    .unwrap();
    let mut child = spawn(&cfg);
    wait_up(http).await;

    // A route replaced (before and after), a user with a password hash (masked), a token
    // made for t2: each answered 2xx, then the node is killed at once.
    let (s, _) = call(
        http,
        "PUT",
        "/routes/9",
        NODE,
        r#"{"prefix": "9", "target": "sip:127.0.0.1:5998"}"#,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = call(
        http,
        "PUT",
        "/tenants/t1/users/1001",
        NODE,
        r#"{"ha1_md5": "8f86441503d13ce2b14d845438839c1d"}"#,
    )
    .await;
    assert_eq!(s, 201);
    let (s, _) = call(
        http,
        "POST",
        "/tenants/t2/tokens",
        NODE,
        r#"{"name": "crm"}"#,
    )
    .await;
    assert_eq!(s, 201);
    child.kill().expect("SIGKILL");
    let _ = child.wait();

    let mut child = spawn(&cfg);
    wait_up(http).await;
    let (s, page) = call(http, "GET", "/audit", NODE, "").await;
    assert_eq!(s, 200, "{page}");
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 3, "{page}");
    // Newest first.
    let (token, user, route) = (&records[0], &records[1], &records[2]);
    assert_eq!(route["route"], "/routes/{id}");
    assert_eq!(route["method"], "PUT");
    assert_eq!(route["path"], "/routes/9");
    assert_eq!(route["actor"], "node");
    assert_eq!(route["status"], 200);
    assert!(route["source"].as_str().unwrap().starts_with("127.0.0.1:"));
    let before: Value = serde_json::from_str(route["before"].as_str().unwrap()).unwrap();
    let after: Value = serde_json::from_str(route["after"].as_str().unwrap()).unwrap();
    assert_eq!(before["target"], "sip:127.0.0.1:5999");
    assert_eq!(after["target"], "sip:127.0.0.1:5998");
    assert_eq!(user["tenant"], "t1");
    assert_eq!(user["status"], 201);
    assert!(user["before"].is_null());
    let summary = user["summary"].as_str().unwrap();
    assert!(!summary.contains("8f8644"), "hash recorded: {summary}");
    assert_eq!(token["tenant"], "t2");
    assert_eq!(token["route"], "/tenants/{tenant}/tokens");

    // A tenant's token reads its own tenant's records only.
    let (s, page) = call(http, "GET", "/audit", T1, "").await;
    assert_eq!(s, 200);
    let mine = page["records"].as_array().unwrap();
    assert_eq!(mine.len(), 1, "{page}");
    assert_eq!(mine[0]["path"], "/tenants/t1/users/1001");
    let (s, _) = call(http, "GET", "/audit?tenant=t2", T1, "").await;
    assert_eq!(s, 404);
    // A refused change is not a change: no record (it is counted as a refusal instead).
    let (s, _) = call(http, "DELETE", "/routes/9", T1, "").await;
    assert_eq!(s, 403);
    let (_, page) = call(http, "GET", "/audit?limit=10", NODE, "").await;
    assert_eq!(page["records"].as_array().unwrap().len(), 3);
    child.kill().unwrap();
    let _ = child.wait();
}
