//! Calls through a trunk group on a real node: carriers are test user agents on loopback.
//! A failover cause (503, silence, ...) moves the call to the next trunk within the same
//! attempt; a callee's answer (486) is relayed at once; channel limits overflow to the next
//! trunk; failed calls take a trunk down; least-cost picks the cheapest trunk.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use switchyard::config::TrunkConfig;
use switchyard::server::Node;

/// A node whose route `9` goes to the given trunks under `policy`.
async fn node(dir: &std::path::Path, trunks: Vec<TrunkConfig>, policy: &str) -> Node {
    start_with(trunk_config(dir, trunks, policy)).await
}

/// The CDR of a call, once written (the call hands it to the writer as it ends, which may be
/// a moment after the last SIP message a test sees).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_along_the_plan_until_a_trunk_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (Ua::new().await, Ua::new().await, Ua::new().await);
    let node = node(
        dir.path(),
        vec![
            trunk("a", a.addr, "priority = 1"),
            trunk("b", b.addr, "priority = 2"),
            trunk("c", c.addr, "priority = 3"),
        ],
        "priority",
    )
    .await;
    let sw = udp_addr(&node);
    let caller = Ua::new().await;
    caller
        .send(sw, &invite("tr-1", "9441234", caller.addr, sw))
        .await;
    // a: 503 → the call moves on; the caller never sees it.
    let (inv_a, _) = a.expect_request("INVITE").await;
    assert!(header(&inv_a, "CSeq").contains("INVITE"));
    assert!(
        String::from_utf8_lossy(inv_a.request_uri().unwrap()).starts_with("sip:441234@"),
        "strip 1 applied: {inv_a:?}"
    );
    a.send(
        sw,
        &answer(&inv_a, 503, "Service Unavailable", "ta", a.addr, ""),
    )
    .await;
    a.expect_request("ACK").await;
    // b: silent → after its 400 ms INVITE timeout the call moves on.
    b.expect_request("INVITE").await;
    // c answers.
    let (inv_c, _) = c.expect_request("INVITE").await;
    c.send(sw, &answer(&inv_c, 200, "OK", "tc", c.addr, SDP))
        .await;
    let (ok, _) = caller
        .expect("200 through c", |m| m.status() == Some(200))
        .await;
    assert_eq!(ok.status(), Some(200));
    // End the call from the switch so its CDR is written.
    node.ctx
        .directory
        .lookup(b"tr-1")
        .expect("call running")
        .cast(switchyard::actors::call::CallMsg::Hangup(
            "test over".into(),
        ))
        .unwrap();
    c.expect_request("BYE").await;
    let r = cdr(&node, dir.path(), "tr-1").await;
    assert_eq!(r.trunk.as_deref(), Some("c"));
    assert_eq!(
        r.attempts.as_deref(),
        Some("a:503,b:timeout,c:answered"),
        "{r:?}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callee_busy_is_relayed_without_trying_another_trunk() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Ua::new().await, Ua::new().await);
    let node = node(
        dir.path(),
        vec![
            trunk("a", a.addr, "priority = 1"),
            trunk("b", b.addr, "priority = 2"),
        ],
        "priority",
    )
    .await;
    let sw = udp_addr(&node);
    let caller = Ua::new().await;
    caller
        .send(sw, &invite("tr-2", "9555", caller.addr, sw))
        .await;
    let (inv, _) = a.expect_request("INVITE").await;
    a.send(sw, &answer(&inv, 486, "Busy Here", "ta", a.addr, ""))
        .await;
    caller.expect_status(486).await;
    assert!(
        b.recv(Duration::from_millis(500)).await.is_none(),
        "b must not be tried after a callee's 486"
    );
    let r = cdr(&node, dir.path(), "tr-2").await;
    assert_eq!(r.attempts.as_deref(), Some("a:486"), "{r:?}");
    assert_eq!(
        node.ctx.trunks.get().unwrap().get("a").unwrap().channels(),
        0
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_trunk_overflows_and_failed_calls_take_a_trunk_down() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Ua::new().await, Ua::new().await);
    let node = node(
        dir.path(),
        vec![
            trunk(
                "a",
                a.addr,
                "priority = 1\nmax_channels = 1\ndown_after_failed_calls = 2",
            ),
            trunk("b", b.addr, "priority = 2"),
        ],
        "priority",
    )
    .await;
    let sw = udp_addr(&node);
    let table = node.ctx.trunks.get().unwrap().clone();
    let caller = Ua::new().await;
    // Call 1 holds a's only channel (ringing).
    caller
        .send(sw, &invite("tr-3", "9100", caller.addr, sw))
        .await;
    let (inv1, _) = a.expect_request("INVITE").await;
    a.send(sw, &answer(&inv1, 180, "Ringing", "ta", a.addr, ""))
        .await;
    assert!(
        wait_until(Duration::from_secs(2), || table
            .get("a")
            .unwrap()
            .channels()
            == 1)
        .await
    );
    // Call 2 finds a full and goes to b at once.
    caller
        .send(sw, &invite("tr-4", "9200", caller.addr, sw))
        .await;
    let (inv2, _) = b.expect_request("INVITE").await;
    assert!(header(&inv2, "To").contains("9200"), "{inv2:?}");
    assert!(
        a.recv(Duration::from_millis(200))
            .await
            .is_none_or(|(m, _)| header(&m, "Call-ID") == header(&inv1, "Call-ID")),
        "a got a second call beyond its channel limit"
    );
    // Call 1 fails with 503 twice over (two calls): a goes down.
    a.send(
        sw,
        &answer(&inv1, 503, "Service Unavailable", "ta", a.addr, ""),
    )
    .await;
    let (inv1b, _) = b.expect_request("INVITE").await;
    assert!(header(&inv1b, "To").contains("9100"));
    caller
        .send(sw, &invite("tr-5", "9300", caller.addr, sw))
        .await;
    let (inv3, _) = a.expect_request("INVITE").await;
    a.send(
        sw,
        &answer(&inv3, 503, "Service Unavailable", "ta", a.addr, ""),
    )
    .await;
    assert!(
        wait_until(Duration::from_secs(2), || !table.get("a").unwrap().is_up()).await,
        "a down after 2 failed calls"
    );
    // A new call skips a.
    caller
        .send(sw, &invite("tr-6", "9400", caller.addr, sw))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut got = false;
    while tokio::time::Instant::now() < deadline {
        match b.recv(Duration::from_millis(200)).await {
            Some((m, _)) if header(&m, "To").contains("9400") => {
                got = true;
                break;
            }
            _ => {}
        }
    }
    assert!(got, "the call after a went down went to b");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_cost_picks_the_cheapest_trunk_for_each_destination() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Ua::new().await, Ua::new().await);
    let node = node(
        dir.path(),
        vec![
            trunk(
                "a",
                a.addr,
                "costs = [{ prefix = \"44\", per_minute = 0.010 }, { prefix = \"1\", per_minute = 0.050 }]",
            ),
            trunk(
                "b",
                b.addr,
                "costs = [{ prefix = \"44\", per_minute = 0.020 }, { prefix = \"1\", per_minute = 0.005 }]",
            ),
        ],
        "least-cost",
    )
    .await;
    let sw = udp_addr(&node);
    let caller = Ua::new().await;
    caller
        .send(sw, &invite("lc-1", "9441234", caller.addr, sw))
        .await;
    a.expect_request("INVITE").await;
    caller
        .send(sw, &invite("lc-2", "912125551234", caller.addr, sw))
        .await;
    b.expect_request("INVITE").await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_probes_take_a_silent_gateway_down_and_bring_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Ua::new().await;
    let mut t = trunk(
        "a",
        gw.addr,
        "down_after_failed_probes = 2\nup_after_good_probes = 2",
    );
    t.probe_interval_secs = 1;
    let node = node(dir.path(), vec![t], "priority").await;
    let table = node.ctx.trunks.get().unwrap().clone();
    // The gateway ignores the probes: down after two unanswered ones.
    let (probe, _) = gw.expect_request("OPTIONS").await;
    assert!(header(&probe, "Call-ID").starts_with("sy-probe-"));
    assert!(
        wait_until(Duration::from_secs(5), || !table.get("a").unwrap().is_up()).await,
        "down after unanswered probes"
    );
    // Now it answers: up again after two good probes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while tokio::time::Instant::now() < deadline && !table.get("a").unwrap().is_up() {
        if let Some((m, _)) = gw.recv(Duration::from_millis(200)).await {
            if m.method().is_some_and(|x| x.to_string() == "OPTIONS") {
                let sw = udp_addr(&node);
                gw.send(sw, &answer(&m, 200, "OK", "gw", gw.addr, "")).await;
            }
        }
    }
    assert!(table.get("a").unwrap().is_up(), "up after good probes");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_trunk_actor_keeps_the_channel_count_and_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Ua::new().await, Ua::new().await);
    let node = node(
        dir.path(),
        vec![
            trunk("a", a.addr, "priority = 1\nmax_channels = 1"),
            trunk("b", b.addr, "priority = 2"),
        ],
        "priority",
    )
    .await;
    let sw = udp_addr(&node);
    let table = node.ctx.trunks.get().unwrap().clone();
    let caller = Ua::new().await;
    caller
        .send(sw, &invite("kc-1", "9100", caller.addr, sw))
        .await;
    let (inv1, _) = a.expect_request("INVITE").await;
    a.send(sw, &answer(&inv1, 200, "OK", "ta", a.addr, SDP))
        .await;
    caller
        .expect("200 through a", |m| m.status() == Some(200))
        .await;
    // The trunk actor dies and is restarted; the call holding a's channel goes on.
    let actor = switchyard::actors::trunk::lookup("a", &node.name).unwrap();
    actor
        .cast(switchyard::actors::trunk::TrunkMsg::InjectPanic)
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || {
            switchyard::actors::trunk::lookup("a", &node.name)
                .is_some_and(|n| n.get_id() != actor.get_id())
        })
        .await,
        "trunk actor restarted"
    );
    assert_eq!(
        table.get("a").unwrap().channels(),
        1,
        "channel count survives the restart"
    );
    // The limit still holds: the next call goes to b.
    caller
        .send(sw, &invite("kc-2", "9200", caller.addr, sw))
        .await;
    let (inv2, _) = b.expect_request("INVITE").await;
    assert!(header(&inv2, "To").contains("9200"));
    // Ending call 1 gives the channel back.
    node.ctx
        .directory
        .lookup(b"kc-1")
        .unwrap()
        .cast(switchyard::actors::call::CallMsg::Hangup("test".into()))
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || table
            .get("a")
            .unwrap()
            .channels()
            == 0)
        .await
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_challenge_is_answered_with_the_trunk_credentials_and_caller_id() {
    use switchyard::sip::auth::{ha1, Algorithm, Credentials};
    let dir = tempfile::tempdir().unwrap();
    let a = Ua::new().await;
    let node = node(
        dir.path(),
        vec![trunk(
            "a",
            a.addr,
            "auth_username = \"acct7\"\nauth_password = \"s3cret\"\ncaller_id = \"+441110000\"",
        )],
        "priority",
    )
    .await;
    let sw = udp_addr(&node);
    let caller = Ua::new().await;
    caller
        .send(sw, &invite("au-1", "9777", caller.addr, sw))
        .await;
    let (inv, _) = a.expect_request("INVITE").await;
    assert!(header(&inv, "From").contains("sip:+441110000@"), "{inv:?}");
    // The carrier challenges (407, as a proxy would).
    let mut challenge = answer(&inv, 407, "Proxy Authentication Required", "ta", a.addr, "");
    challenge = challenge.replacen(
        "Content-Length: 0",
        "Proxy-Authenticate: Digest realm=\"carrier.example\", nonce=\"abc123\", algorithm=MD5, qop=\"auth\"\r\nContent-Length: 0",
        1,
    );
    a.send(sw, &challenge).await;
    // The ACK of the 407 and the new INVITE come in either order.
    let (inv2, _) = a.expect_request("INVITE").await;
    let creds = inv2
        .value(switchyard::sip::message::HeaderName::ProxyAuthorization)
        .expect("Proxy-Authorization on the second INVITE");
    let c = Credentials::parse(creds).unwrap();
    assert_eq!(&c.username[..], b"acct7");
    let key = ha1(Algorithm::Md5, "acct7", "carrier.example", "s3cret");
    assert!(c.verify(&key, b"INVITE"), "digest response verifies: {c:?}");
    assert_ne!(header(&inv2, "CSeq"), header(&inv, "CSeq"));
    assert_eq!(header(&inv2, "Call-ID"), header(&inv, "Call-ID"));
    a.send(sw, &answer(&inv2, 200, "OK", "ta", a.addr, SDP))
        .await;
    caller
        .expect("200 after the carrier's challenge", |m| {
            m.status() == Some(200)
        })
        .await;
    node.shutdown().await;
}

/// A carrier in a task of its own: for its `n`th INVITE it waits `delay(n)`, sends 180, then
/// answers `status(n)` (200 with SDP, or a failure); counts the INVITEs it got.
fn spawn_carrier(
    ua: Ua,
    sw: SocketAddr,
    delay: fn(usize) -> Duration,
    status: fn(usize) -> u16,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        while let Some((m, _)) = ua.recv(Duration::from_secs(30)).await {
            if m.method().is_none_or(|x| x.to_string() != "INVITE") {
                if m.method().is_some_and(|x| x.to_string() == "BYE") {
                    ua.send(sw, &answer(&m, 200, "OK", "", ua.addr, "")).await;
                }
                continue;
            }
            if !seen.insert(header(&m, "Call-ID")) {
                continue;
            }
            let n = count.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay(n)).await;
            ua.send(sw, &answer(&m, 180, "Ringing", "cx", ua.addr, ""))
                .await;
            let st = status(n);
            let (reason, body) = if st == 200 {
                ("OK", SDP)
            } else {
                ("Refused", "")
            };
            ua.send(sw, &answer(&m, st, reason, "cx", ua.addr, body))
                .await;
        }
    })
}

/// Places `n` calls one after the other (each answered or failed, then hung up) and returns
/// how many of them each trunk received first (a's INVITE count before b's).
async fn sequential_calls(node: &Node, caller: &Ua, first: usize, n: usize) {
    let sw = udp_addr(node);
    for i in first..first + n {
        let call_id = format!("seq-{i}");
        caller
            .send(sw, &invite(&call_id, "9123", caller.addr, sw))
            .await;
        let (m, _) = caller
            .expect("a final answer", |m| m.status().is_some_and(|s| s >= 200))
            .await;
        if m.status() == Some(200) {
            if let Some(call) = node.ctx.directory.lookup(call_id.as_bytes()) {
                let _ = call.cast(switchyard::actors::call::CallMsg::Hangup("done".into()));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_rate_first_moves_traffic_away_from_a_trunk_that_starts_refusing() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Ua::new().await, Ua::new().await);
    let node = node(
        dir.path(),
        vec![
            trunk("a", a.addr, "priority = 1"),
            trunk("b", b.addr, "priority = 2"),
        ],
        "answer-rate",
    )
    .await;
    let sw = udp_addr(&node);
    let (na, nb) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // a answers its first 25 calls, then refuses 4 in 10 (a callee-final 480: the caller
    // hears it, a's answer rate drops); b always answers.
    let ta = spawn_carrier(
        a,
        sw,
        |_| Duration::ZERO,
        |n| if n >= 25 && n % 10 < 4 { 480 } else { 200 },
        na.clone(),
    );
    let tb = spawn_carrier(b, sw, |_| Duration::ZERO, |_| 200, nb.clone());
    let caller = Ua::new().await;
    // Equal answer rates at first: the tie goes to a (priority).
    sequential_calls(&node, &caller, 0, 25).await;
    assert_eq!(
        (na.load(Ordering::Relaxed), nb.load(Ordering::Relaxed)),
        (25, 0)
    );
    // a starts refusing; its answer rate falls below b's prior and traffic moves to b.
    sequential_calls(&node, &caller, 25, 30).await;
    let (a_calls, b_calls) = (na.load(Ordering::Relaxed), nb.load(Ordering::Relaxed));
    assert!(
        b_calls >= 15,
        "traffic moved to b: a {a_calls}, b {b_calls}"
    );
    let before = nb.load(Ordering::Relaxed);
    sequential_calls(&node, &caller, 55, 5).await;
    assert_eq!(nb.load(Ordering::Relaxed) - before, 5, "new calls go to b");
    ta.abort();
    tb.abort();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_first_prefers_the_trunk_with_the_lower_post_dial_delay() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Ua::new().await, Ua::new().await);
    let node = node(
        dir.path(),
        vec![
            trunk("a", a.addr, "priority = 1\nweight = 1"),
            trunk("b", b.addr, "priority = 1\nweight = 1"),
        ],
        "quality",
    )
    .await;
    let sw = udp_addr(&node);
    let (na, nb) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // a rings after 300 ms, b at once.
    let ta = spawn_carrier(a, sw, |_| Duration::from_millis(300), |_| 200, na.clone());
    let tb = spawn_carrier(b, sw, |_| Duration::ZERO, |_| 200, nb.clone());
    let caller = Ua::new().await;
    sequential_calls(&node, &caller, 0, 12).await;
    // Once both have a measured PDD, b (lower PDD, higher quality) takes the calls.
    let before = (na.load(Ordering::Relaxed), nb.load(Ordering::Relaxed));
    sequential_calls(&node, &caller, 12, 6).await;
    let after = (na.load(Ordering::Relaxed), nb.load(Ordering::Relaxed));
    assert!(before.0 >= 1, "a was tried at first: {before:?}");
    assert_eq!(
        after.1 - before.1,
        6,
        "the last calls went to b: {before:?} → {after:?}"
    );
    ta.abort();
    tb.abort();
    node.shutdown().await;
}

/// A carrier that answers every INVITE at once and counts the calls it holds (answered,
/// not yet hung up), keeping the peak.
fn spawn_counting_carrier(
    ua: Ua,
    sw: SocketAddr,
    peak: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    total: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        let mut up = std::collections::HashSet::new();
        while let Some((m, _)) = ua.recv(Duration::from_secs(30)).await {
            let cid = header(&m, "Call-ID");
            match m.method().map(|x| x.to_string()).as_deref() {
                Some("INVITE") if up.insert(cid.clone()) => {
                    total.fetch_add(1, Ordering::Relaxed);
                    peak.fetch_max(up.len(), Ordering::Relaxed);
                    ua.send(sw, &answer(&m, 200, "OK", "cx", ua.addr, SDP))
                        .await;
                }
                Some("BYE") => {
                    up.remove(&cid);
                    ua.send(sw, &answer(&m, 200, "OK", "", ua.addr, "")).await;
                }
                _ => {}
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_limit_holds_under_load_while_the_trunk_actor_crashes() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Ua::new().await, Ua::new().await);
    let node = node(
        dir.path(),
        vec![
            trunk("a", a.addr, "priority = 1\nmax_channels = 5"),
            trunk("b", b.addr, "priority = 2"),
        ],
        "priority",
    )
    .await;
    let sw = udp_addr(&node);
    let (peak_a, total_a) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (peak_b, total_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let ta = spawn_counting_carrier(a, sw, peak_a.clone(), total_a.clone());
    let tb = spawn_counting_carrier(b, sw, peak_b.clone(), total_b.clone());
    // 60 calls over ~2 s, each held ~300 ms, the trunk actor killed three times meanwhile.
    const CALLS: usize = 60;
    let caller = Arc::new(Ua::new().await);
    let answered = Arc::new(AtomicUsize::new(0));
    let listener = {
        let (caller, answered, ctx) = (caller.clone(), answered.clone(), node.ctx.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while answered.load(Ordering::Relaxed) < CALLS {
                let Some((m, _)) = caller.recv(Duration::from_secs(10)).await else {
                    break;
                };
                match m.status() {
                    Some(200) if header(&m, "CSeq").contains("INVITE") => {
                        answered.fetch_add(1, Ordering::Relaxed);
                        let cid = header(&m, "Call-ID");
                        let ctx = ctx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            if let Some(call) = ctx.directory.lookup(cid.as_bytes()) {
                                let _ = call
                                    .cast(switchyard::actors::call::CallMsg::Hangup("done".into()));
                            }
                        });
                    }
                    Some(s) if s >= 300 => failures.push(s),
                    _ => {}
                }
            }
            failures
        })
    };
    for i in 0..CALLS {
        caller
            .send(sw, &invite(&format!("ld-{i}"), "9123", caller.addr, sw))
            .await;
        if i % 20 == 10 {
            if let Some(t) = switchyard::actors::trunk::lookup("a", &node.name) {
                t.cast(switchyard::actors::trunk::TrunkMsg::InjectPanic)
                    .unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(33)).await;
    }
    let failures = tokio::time::timeout(Duration::from_secs(30), listener)
        .await
        .expect("every call answered in time")
        .unwrap();
    assert!(failures.is_empty(), "callers got failures: {failures:?}");
    assert_eq!(answered.load(Ordering::Relaxed), CALLS);
    let (pa, ca, cb) = (
        peak_a.load(Ordering::Relaxed),
        total_a.load(Ordering::Relaxed),
        total_b.load(Ordering::Relaxed),
    );
    assert!(pa <= 5, "carrier a held {pa} calls at once, limit 5");
    assert!(
        pa == 5 && cb > 0,
        "a was full and calls overflowed to b: a {ca}, b {cb}, peak {pa}"
    );
    assert_eq!(ca + cb, CALLS);
    ta.abort();
    tb.abort();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cps_limit_overflows_the_excess_to_the_next_trunk() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Ua::new().await, Ua::new().await);
    let node = node(
        dir.path(),
        vec![
            trunk("a", a.addr, "priority = 1\nmax_cps = 5"),
            trunk("b", b.addr, "priority = 2"),
        ],
        "priority",
    )
    .await;
    let sw = udp_addr(&node);
    let (peak_a, total_a) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (peak_b, total_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let ta = spawn_counting_carrier(a, sw, peak_a, total_a.clone());
    let tb = spawn_counting_carrier(b, sw, peak_b, total_b.clone());
    let caller = Ua::new().await;
    // 20 calls in about 0.4 s: a's bucket holds 5 and refills 5 per second.
    for i in 0..20 {
        caller
            .send(sw, &invite(&format!("cps-{i}"), "9123", caller.addr, sw))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        wait_until(Duration::from_secs(3), || {
            total_a.load(Ordering::Relaxed) + total_b.load(Ordering::Relaxed) == 20
        })
        .await,
        "every call reached a carrier"
    );
    let (ca, cb) = (
        total_a.load(Ordering::Relaxed),
        total_b.load(Ordering::Relaxed),
    );
    assert!((5..=7).contains(&ca), "a took {ca} calls in 0.4 s at 5 CPS");
    assert_eq!(cb, 20 - ca);
    ta.abort();
    tb.abort();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_downed_by_failed_calls_is_held_down_despite_good_probes() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Ua::new().await;
    let mut t = trunk(
        "a",
        gw.addr,
        "down_after_failed_calls = 2\nup_after_good_probes = 1\ndown_hold_secs = 2",
    );
    t.probe_interval_secs = 1;
    let node = node(dir.path(), vec![t], "priority").await;
    let sw = udp_addr(&node);
    let table = node.ctx.trunks.get().unwrap().clone();
    let caller = Ua::new().await;
    // The gateway answers OPTIONS but refuses calls (503): down after two calls.
    for i in 0..2 {
        caller
            .send(sw, &invite(&format!("fl-{i}"), "9123", caller.addr, sw))
            .await;
    }
    let mut refused = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while refused < 2 && tokio::time::Instant::now() < deadline {
        if let Some((m, _)) = gw.recv(Duration::from_millis(100)).await {
            match m.method().map(|x| x.to_string()).as_deref() {
                Some("INVITE") => {
                    refused += 1;
                    gw.send(
                        sw,
                        &answer(&m, 503, "Service Unavailable", "g", gw.addr, ""),
                    )
                    .await;
                }
                Some("OPTIONS") => gw.send(sw, &answer(&m, 200, "OK", "g", gw.addr, "")).await,
                _ => {}
            }
        }
    }
    assert!(
        wait_until(Duration::from_secs(2), || !table.get("a").unwrap().is_up()).await,
        "down after failed calls"
    );
    let down_at = tokio::time::Instant::now();
    // Good probes keep coming; the trunk stays down for the 2 s hold, then comes back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while tokio::time::Instant::now() < deadline && !table.get("a").unwrap().is_up() {
        if let Some((m, _)) = gw.recv(Duration::from_millis(100)).await {
            if m.method().is_some_and(|x| x.to_string() == "OPTIONS") {
                gw.send(sw, &answer(&m, 200, "OK", "g", gw.addr, "")).await;
            }
        }
    }
    let held = down_at.elapsed();
    assert!(table.get("a").unwrap().is_up(), "back up after the hold");
    assert!(
        held >= Duration::from_millis(1500),
        "held down {held:?} despite good probes"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_marked_down_is_the_last_resort_when_every_up_trunk_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Ua::new().await, Ua::new().await);
    let node = node(
        dir.path(),
        vec![
            trunk("a", a.addr, "priority = 1\ndown_after_failed_calls = 1"),
            trunk("b", b.addr, "priority = 2"),
        ],
        "priority",
    )
    .await;
    let sw = udp_addr(&node);
    let table = node.ctx.trunks.get().unwrap().clone();
    let caller = Ua::new().await;
    // One 503 from a takes it down (the call goes on to b, which answers).
    caller
        .send(sw, &invite("lr-1", "9100", caller.addr, sw))
        .await;
    let (inv, _) = a.expect_request("INVITE").await;
    a.send(
        sw,
        &answer(&inv, 503, "Service Unavailable", "ta", a.addr, ""),
    )
    .await;
    let (inv, _) = b.expect_request("INVITE").await;
    b.send(sw, &answer(&inv, 200, "OK", "tb", b.addr, SDP))
        .await;
    assert!(wait_until(Duration::from_secs(2), || !table.get("a").unwrap().is_up()).await);
    // Now b refuses: a, though marked down, is tried before the caller is failed.
    caller
        .send(sw, &invite("lr-2", "9200", caller.addr, sw))
        .await;
    let (inv, _) = b
        .expect("INVITE for lr-2", |m| header(m, "To").contains("9200"))
        .await;
    b.send(
        sw,
        &answer(&inv, 503, "Service Unavailable", "tb", b.addr, ""),
    )
    .await;
    let (inv, _) = a.expect_request("INVITE").await;
    a.send(sw, &answer(&inv, 200, "OK", "ta", a.addr, SDP))
        .await;
    caller
        .expect("200 through the last resort", |m| {
            m.status() == Some(200) && header(m, "Call-ID") == "lr-2"
        })
        .await;
    node.ctx
        .directory
        .lookup(b"lr-2")
        .unwrap()
        .cast(switchyard::actors::call::CallMsg::Hangup("done".into()))
        .unwrap();
    let r = cdr(&node, dir.path(), "lr-2").await;
    assert_eq!(r.attempts.as_deref(), Some("b:503,a:answered"), "{r:?}");
    node.shutdown().await;
}

/// A carrier that is another switch: its registrar holds the account `acct1` of its tenant
/// `carrier.test` (password `pw-acct1`), with a 120 s minimum binding.
async fn carrier_registrar(dir: &std::path::Path) -> Node {
    use switchyard::config::{TenantConfig, UserConfig};
    use switchyard::sip::auth::{ha1, Algorithm};
    let mut c = config(dir, &[]);
    c.registrar.min_expires_secs = 120;
    c.tenants = vec![TenantConfig {
        id: "carrier".into(),
        domain: "carrier.test".into(),
        users: vec![UserConfig {
            username: "acct1".into(),
            ha1_md5: Some(ha1(Algorithm::Md5, "acct1", "carrier.test", "pw-acct1")),
            ha1_sha256: None,
            outbound: None,
        }],
        ..Default::default()
    }];
    start_with(c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_registers_with_its_carrier_follows_423_and_is_down_with_a_wrong_password() {
    let carrier_dir = tempfile::tempdir().unwrap();
    let carrier = carrier_registrar(carrier_dir.path()).await;
    let gw = udp_addr(&carrier);
    let registering = |id: &str, password: &str| {
        trunk(
            id,
            gw,
            &format!(
                "register = true\nregister_expires_secs = 60\nregister_domain = \"carrier.test\"\nauth_username = \"acct1\"\nauth_password = \"{password}\""
            ),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let callee = Ua::new().await;
    let mut c = trunk_config(
        dir.path(),
        vec![registering("good", "pw-acct1"), registering("bad", "wrong")],
        "priority",
    );
    c.routes
        .extend(config(dir.path(), &[("77", format!("sip:{}", callee.addr))]).routes);
    let node = start_with(c).await;
    let table = node.ctx.trunks.get().unwrap().clone();
    // The good trunk answers the challenge and the 423 (60 s asked, 120 s the minimum): the
    // carrier holds a binding for acct1 at the switch's address.
    assert!(
        wait_until(Duration::from_secs(10), || {
            !carrier.location.lookup("carrier", "acct1").is_empty()
        })
        .await,
        "the carrier has a binding for acct1"
    );
    assert!(
        wait_until(Duration::from_secs(5), || table
            .get("good")
            .unwrap()
            .is_up())
        .await,
        "registered, so up"
    );
    let bindings = carrier.location.lookup("carrier", "acct1");
    assert!(
        bindings[0].expires_at_ms > switchyard::store::now_unix_ms() as u64 + 100_000,
        "the 423's minimum was followed"
    );
    // The wrong password: refused, and the trunk is down with an alarm.
    let failed = "switchyard_trunk_registrations_total{trunk=\"bad\",result=\"failed\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let m = http_request(node.http_addr, "GET", "/metrics", None, "")
            .await
            .body;
        if m.contains(failed) || tokio::time::Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(metrics.contains(failed), "{metrics}");
    assert!(!table.get("bad").unwrap().is_registered());
    assert!(!table.get("bad").unwrap().is_up());
    assert!(
        metrics.contains("switchyard_alarms_total{kind=\"trunk-down\",trunk=\"bad\"}"),
        "an alarm"
    );
    assert!(
        metrics.contains("switchyard_trunk_registered{trunk=\"good\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("switchyard_trunk_registered{trunk=\"bad\"} 0"));
    assert!(metrics.contains("switchyard_trunk_up{trunk=\"bad\"} 0"));

    // The carrier calls the registered account (our Contact) for the number in To.
    let sw = udp_addr(&node);
    let from_carrier = Ua::new().await;
    let inv = format!(
        "INVITE sip:acct1@{sw} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-regin-1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:+4930111@carrier.test>;tag=c1\r\nTo: <sip:77001@carrier.test>\r\nCall-ID: regin-1\r\nCSeq: 1 INVITE\r\nContact: <sip:c@{}>\r\nContent-Length: 0\r\n\r\n",
        from_carrier.addr, from_carrier.addr
    );
    from_carrier.send(sw, &inv).await;
    let (got, _) = callee.expect_request("INVITE").await;
    let ruri = String::from_utf8_lossy(got.request_uri().unwrap()).into_owned();
    assert!(ruri.starts_with("sip:77001@"), "routed by To: {ruri}");
    node.shutdown().await;
    carrier.shutdown().await;
}
