//! A call actor that panics in the middle of an established call is restarted by its
//! supervisor from its checkpoint; the call carries on: a later BYE is relayed and both legs
//! end cleanly, with one CDR.

mod common;

use common::*;
use std::time::Duration;
use switchyard::actors::call::{CallMsg, Phase};
use switchyard::actors::store_writer;
use switchyard::sip::message::HeaderName;
use switchyard::store::{HangupBy, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_call_actor_resumes_the_established_call() {
    let dir = tempfile::tempdir().unwrap();
    let a = Ua::new().await;
    let b = Ua::new().await;
    let mut c = config(dir.path(), &[("", format!("sip:{}", b.addr))]);
    c.timers.t1_ms = 50;
    c.timers.t2_ms = 200;
    c.timers.t4_ms = 250;
    let node = start_with(c).await;
    let sw = udp_addr(&node);

    // Set up a call: A → switch → B, answered and ACKed.
    let call_id = "restart-1";
    a.send(sw, &invite(call_id, "100", a.addr, sw)).await;
    let (b_inv, _) = b.expect_request("INVITE").await;
    b.send(sw, &answer(&b_inv, 200, "OK", "b-tag", b.addr, SDP))
        .await;
    let (ok, _) = a.expect_status(200).await;
    let to = String::from_utf8_lossy(ok.value(HeaderName::To).unwrap()).to_string();
    let ack = format!(
        "ACK sip:bob@{sw} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-ack-1;rport\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@{}>;tag=a-{call_id}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        a.addr, a.addr
    );
    a.send(sw, &ack).await;
    b.expect_request("ACK").await;

    let before = node
        .ctx
        .directory
        .lookup(call_id.as_bytes())
        .expect("call actor registered");
    let info = ractor::call_t!(before, CallMsg::GetInfo, 2000).unwrap();
    assert_eq!(info.phase, Phase::Confirmed);
    assert!(!info.restored);

    // Inject a panic: the supervisor restarts the actor from its checkpoint.
    before.send_message(CallMsg::InjectPanic).unwrap();
    let restarted = wait_until(Duration::from_secs(5), || {
        node.ctx
            .directory
            .lookup(call_id.as_bytes())
            .is_some_and(|n| n.get_id() != before.get_id())
    })
    .await;
    assert!(restarted, "a new call actor owns the call");
    let after = node.ctx.directory.lookup(call_id.as_bytes()).unwrap();
    let info = ractor::call_t!(after, CallMsg::GetInfo, 2000).unwrap();
    assert!(info.restored);
    assert_eq!(info.phase, Phase::Confirmed);
    assert_eq!(node.active_calls(), 1, "the call is still up");

    // The callee hangs up: the restored actor relays the BYE to A and A's 200 back to B.
    let b_call_id = String::from_utf8_lossy(b_inv.call_id().unwrap()).to_string();
    let b_from = String::from_utf8_lossy(b_inv.value(HeaderName::From).unwrap()).to_string();
    let b_to = String::from_utf8_lossy(b_inv.value(HeaderName::To).unwrap()).to_string();
    let bye = format!(
        "BYE sip:switch@{sw} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-bye-b;rport\r\nMax-Forwards: 70\r\nFrom: {b_to};tag=b-tag\r\nTo: {b_from}\r\nCall-ID: {b_call_id}\r\nCSeq: 7 BYE\r\nContent-Length: 0\r\n\r\n",
        b.addr
    );
    b.send(sw, &bye).await;
    let (a_bye, _) = a.expect_request("BYE").await;
    assert_eq!(a_bye.call_id().unwrap().as_ref(), call_id.as_bytes());
    a.send(sw, &answer(&a_bye, 200, "OK", "", a.addr, "")).await;
    let (bye_ok, _) = b.expect_status(200).await;
    assert_eq!(bye_ok.cseq().unwrap().seq, 7);

    // One CDR for the call, ended by the callee.
    assert!(wait_until(Duration::from_secs(5), || node.active_calls() == 0).await);
    store_writer::flush(&node.tree.store().unwrap())
        .await
        .unwrap();
    let store = Store::open(&dir.path().join("switchyard.db")).unwrap();
    let all = store.list_cdrs(100).unwrap();
    let ours: Vec<_> = all.iter().filter(|c| c.a_call_id == call_id).collect();
    assert_eq!(ours.len(), 1, "exactly one CDR: {all:?}");
    assert_eq!(ours[0].hangup_by, HangupBy::Callee);
    assert_eq!(ours[0].final_status, 200);
    assert!(ours[0].answer_at.is_some());

    // The restart is visible in Prometheus.
    let text = switchyard::metrics::handle().unwrap().render();
    assert!(
        text.lines()
            .any(|l| l.starts_with("switchyard_actor_restarts_total{kind=\"call\"}")),
        "restart counted"
    );
    assert!(text
        .lines()
        .any(|l| l.starts_with("switchyard_calls_restored_total{phase=\"confirmed\"}")));
    // Lingering transactions end and the actor leaves the directory.
    assert!(
        wait_until(Duration::from_secs(15), || node.ctx.directory.is_empty()).await,
        "directory drained"
    );
    node.shutdown().await;
}
