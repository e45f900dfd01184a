//! kill -9 of the switch binary: every CDR of a call that ended more than a second before
//! the kill is in the database after a restart.

mod common;

use common::*;
use std::net::{SocketAddr, UdpSocket as StdUdp};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchyard::sip::message::HeaderName;
use switchyard::store::Store;

fn free_udp_port() -> u16 {
    StdUdp::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_switch(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("switchyard binary starts")
}

async fn wait_healthy(http: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(http).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("switch did not come up");
}

/// One complete call: INVITE, 200, ACK, BYE, 200. The callee is the test's B UA.
async fn call(a: &Ua, b: &Ua, sw: SocketAddr, call_id: &str) {
    a.send(sw, &invite(call_id, "100", a.addr, sw)).await;
    let (b_inv, _) = b.expect_request("INVITE").await;
    b.send(sw, &answer(&b_inv, 200, "OK", "bt", b.addr, SDP))
        .await;
    let (ok, _) = a
        .expect(&format!("200 for {call_id}"), |m| {
            m.status() == Some(200)
                && m.call_id()
                    .is_some_and(|c| c.as_ref() == call_id.as_bytes())
        })
        .await;
    let to = String::from_utf8_lossy(ok.value(HeaderName::To).unwrap()).to_string();
    let from = format!("\"Alice\" <sip:alice@{}>;tag=a-{call_id}", a.addr);
    let req = |method: &str, seq: u32, branch: &str| {
        format!(
            "{method} sip:bob@{sw} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-{branch};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {seq} {method}\r\nContent-Length: 0\r\n\r\n",
            a.addr
        )
    };
    a.send(sw, &req("ACK", 1, &format!("{call_id}-ack"))).await;
    b.expect_request("ACK").await;
    a.send(sw, &req("BYE", 2, &format!("{call_id}-bye"))).await;
    let (b_bye, _) = b.expect_request("BYE").await;
    b.send(sw, &answer(&b_bye, 200, "OK", "", b.addr, "")).await;
    a.expect(&format!("BYE 200 for {call_id}"), |m| {
        m.status() == Some(200) && m.cseq().is_some_and(|c| c.seq == 2)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdrs_survive_kill_minus_9() {
    let dir = tempfile::tempdir().unwrap();
    let a = Ua::new().await;
    let b = Ua::new().await;
    let sip_port = free_udp_port();
    let http_port = free_tcp_port();
    let sw: SocketAddr = format!("127.0.0.1:{sip_port}").parse().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let cfg = dir.path().join("switchyard.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[sip]\nlisten = [\"udp:{sw}\"]\n[http]\nlisten = \"{http}\"\n[[routes]]\nprefix = \"\"\ntarget = \"sip:{}\"\n",
            dir.path().join("data").display(),
            b.addr
        ),
    )
    .unwrap();

    let mut child = spawn_switch(&cfg);
    wait_healthy(http).await;
    let mut ended: Vec<(String, Instant)> = Vec::new();
    for i in 0..25 {
        let id = format!("k9-{i}");
        call(&a, &b, sw, &id).await;
        ended.push((id, Instant::now()));
    }
    // Calls that end after this point may or may not make it; the ones before must.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 25..30 {
        let id = format!("k9-{i}");
        call(&a, &b, sw, &id).await;
    }
    let killed_at = Instant::now();
    child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
    let _ = child.wait();
    let required: Vec<&String> = ended
        .iter()
        .filter(|(_, t)| killed_at.duration_since(*t) > Duration::from_secs(1))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        required.len(),
        25,
        "the first 25 calls ended over a second before the kill"
    );

    // Restart on the same data directory: it comes up, and the CDRs are there.
    let mut child = spawn_switch(&cfg);
    wait_healthy(http).await;
    let store = Store::open(&dir.path().join("data").join("switchyard.db")).unwrap();
    for id in &required {
        let cdr = store.get_cdr_by_call_id(id).unwrap();
        let cdr = cdr.unwrap_or_else(|| panic!("CDR of {id} lost after kill -9"));
        assert_eq!(cdr.final_status, 200);
    }
    // The restarted switch still switches calls.
    call(&a, &b, sw, "after-restart").await;
    child.kill().unwrap();
    let _ = child.wait();
}
