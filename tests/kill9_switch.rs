//! kill -9 of the switch binary: every CDR of a completed call is in the database after a
//! restart, even when the kill comes right after the hangup (the hangup's last message waits
//! for the CDR's commit).

mod common;

use common::*;
use sha2::Digest;
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
    let (req, _) = establish(a, b, sw, call_id).await;
    a.send(sw, &req("BYE", 2, &format!("{call_id}-bye"))).await;
    let (b_bye, _) = b.expect_request("BYE").await;
    b.send(sw, &answer(&b_bye, 200, "OK", "", b.addr, "")).await;
    a.expect(&format!("BYE 200 for {call_id}"), |m| {
        m.status() == Some(200) && m.cseq().is_some_and(|c| c.seq == 2)
    })
    .await;
}

/// One complete call that the callee ends: A sees the BYE and answers it.
async fn call_ended_by_b(a: &Ua, b: &Ua, sw: SocketAddr, call_id: &str) {
    let (_, b_inv) = establish(a, b, sw, call_id).await;
    let mut side = Side::callee(b.addr, &b_inv, "bt");
    side.cseq = 1;
    b.send(sw, &side.request("BYE", 0, "", "")).await;
    let (a_bye, _) = a.expect_request("BYE").await;
    a.send(sw, &answer(&a_bye, 200, "OK", "", a.addr, "")).await;
    b.expect(&format!("BYE 200 for {call_id} at B"), |m| {
        m.status() == Some(200) && m.cseq().is_some_and(|c| c.seq == 2)
    })
    .await;
}

/// A call up to its ACK; returns how to build A's next requests in it, and the INVITE B got.
async fn establish(
    a: &Ua,
    b: &Ua,
    sw: SocketAddr,
    call_id: &str,
) -> (
    impl Fn(&str, u32, &str) -> String,
    switchyard::sip::message::Message,
) {
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
    let (me, call_id) = (a.addr, call_id.to_string());
    let req = move |method: &str, seq: u32, branch: &str| {
        format!(
            "{method} sip:bob@{sw} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{branch};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {seq} {method}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    a.send(sw, &req("ACK", 1, &format!("{}-ack", call_id_of(&ok))))
        .await;
    b.expect_request("ACK").await;
    (req, b_inv)
}

fn call_id_of(m: &switchyard::sip::message::Message) -> String {
    String::from_utf8_lossy(m.call_id().expect("Call-ID")).into_owned()
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
            "data_dir = \"{}\"\n[sip]\nlisten = [\"udp:{sw}\"]\n[http]\nlisten = \"{http}\"\n[security]\ntrusted = [\"127.0.0.1\"]\n[[routes]]\nprefix = \"\"\ntarget = \"sip:{}\"\n",
            dir.path().join("data").display(),
            b.addr
        ),
    )
    .unwrap();

    let mut child = spawn_switch(&cfg);
    wait_healthy(http).await;
    let mut required = Vec::new();
    for i in 0..30 {
        let id = format!("k9-{i}");
        // Both ways of ending: the one that hangs up has its 200, the other end its BYE,
        // only once the CDR is committed.
        if i % 2 == 0 {
            call(&a, &b, sw, &id).await;
        } else {
            call_ended_by_b(&a, &b, sw, &id).await;
        }
        required.push(id);
    }
    // Killed right after the last hangup: no second of grace for the writer.
    child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
    let _ = child.wait();

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

/// kill -9 while calls are being recorded: after the restart no recording is left open,
/// every one listed complete decrypts and verifies against its size and checksum, the
/// interrupted ones are failed with no temporary file left, and the ones finished before
/// the kill are complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_survive_kill_minus_9() {
    use switchyard::media::recording::{self, KeyRing};
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Ua::new().await, Ua::new().await);
    let sw: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("switchyard.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[sip]\nlisten = [\"udp:{sw}\"]\n[http]\nlisten = \"{http}\"\n[security]\ntrusted = [\"127.0.0.1\"]\n[media]\nbind = \"127.0.0.1\"\nrtp_ports = \"44000-44999\"\n[[routes]]\nprefix = \"\"\ntarget = \"sip:{}\"\nrecord = true\n",
            data.display(),
            b.addr
        ),
    )
    .unwrap();
    let mut child = spawn_switch(&cfg);
    wait_healthy(http).await;
    for i in 0..3 {
        call(&a, &b, sw, &format!("rec-done-{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Two calls recording when the switch dies (2.5 s of audio: one sealed chunk each).
    for i in 0..2 {
        let _ = establish(&a, &b, sw, &format!("rec-open-{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();

    let mut child = spawn_switch(&cfg);
    wait_healthy(http).await;
    let keys = KeyRing::from_config(&Default::default(), None, &data).unwrap();
    let rec_dir = data.join("recordings");
    let db = rusqlite::Connection::open(data.join("switchyard.db")).unwrap();
    type Row = (String, String, String, Option<i64>, Option<String>);
    let rows: Vec<Row> = db
        .prepare("SELECT id, call_id, state, size, sha256 FROM recordings")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut complete = 0;
    for (id, call, state, size, sha) in &rows {
        assert_ne!(
            state, "recording",
            "{call}: no recording left open after restart"
        );
        if state == "complete" {
            complete += 1;
            let path = recording::final_path(&rec_dir, id);
            recording::verify(&path, &keys)
                .unwrap_or_else(|e| panic!("{call}: listed complete but does not verify: {e}"));
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(Some(bytes.len() as i64), *size, "{call}: size in the index");
            assert_eq!(
                sha.as_deref(),
                Some(recording::to_hex(&sha2::Sha256::digest(&bytes)).as_str()),
                "{call}: checksum"
            );
        }
        if call.starts_with("rec-done") {
            assert_eq!(state, "complete", "{call} finished before the kill");
        }
    }
    assert_eq!(complete, 3, "{rows:?}");
    let leftovers: Vec<_> = std::fs::read_dir(&rec_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files removed: {leftovers:?}"
    );
    child.kill().unwrap();
    let _ = child.wait();
}
