//! The contact centre end to end on a real node: callers dial a number, wait in a queue
//! (hearing 180), and are connected to an agent's registered phone; unanswered offers go
//! back to the queue; a caller who hangs up while waiting is an abandon; agent and queue
//! actors that crash resume from their checkpoints without losing a caller.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use switchyard::actors::{agent, queue};
use switchyard::config::{
    AgentConfig, Config, MembershipConfig, NumberConfig, QueueConfig, TenantConfig, UserConfig,
};
use switchyard::server::Node;
use switchyard::sip::auth::{ha1, Algorithm};
use switchyard::sip::message::Message;

const DOMAIN: &str = "cc.test";

fn queue_config(id: &str) -> QueueConfig {
    queue_toml(id, "no_answer_delay_secs = 0")
}

fn agent_config(id: &str, user: &str, queues: &[&str]) -> AgentConfig {
    AgentConfig {
        id: id.into(),
        user: user.into(),
        queues: queues
            .iter()
            .map(|q| MembershipConfig {
                queue: q.to_string(),
                tier: 1,
                penalty: 0,
            })
            .collect(),
        skills: Default::default(),
        wrap_up_secs: None,
        state: Some("available".into()),
    }
}

/// A node with one tenant: queues `q0..qN`, numbers `500i` → `qi`, and agents.
async fn node(dir: &std::path::Path, queues: usize, agents: &[(&str, &str, &[&str])]) -> Node {
    let queues = (0..queues)
        .map(|i| queue_config(&format!("q{i}")))
        .collect();
    node_with(dir, queues, agents, |_| {}).await
}

/// [`node`] with queues given (`extra` TOML lines each) and a last touch to the tenant.
async fn node_with(
    dir: &std::path::Path,
    queues: Vec<QueueConfig>,
    agents: &[(&str, &str, &[&str])],
    touch: impl FnOnce(&mut TenantConfig),
) -> Node {
    let mut c: Config = config(dir, &[]);
    c.registrar.algorithms = vec!["MD5".into()];
    c.calls.queue_stats_secs = 1;
    let users = agents
        .iter()
        .map(|(_, u, _)| UserConfig {
            username: u.to_string(),
            ha1_md5: Some(ha1(Algorithm::Md5, u, DOMAIN, "pw")),
            ha1_sha256: None,
            outbound: None,
        })
        .collect();
    c.tenants = vec![TenantConfig {
        id: "cc".into(),
        domain: DOMAIN.into(),
        users,
        numbers: (0..queues.len())
            .map(|i| NumberConfig {
                number: format!("500{i}"),
                target: format!("queue:q{i}"),
                priority: 0,
            })
            .collect(),
        queues,
        agents: agents
            .iter()
            .map(|(id, u, qs)| agent_config(id, u, qs))
            .collect(),
        ..Default::default()
    }];
    touch(&mut c.tenants[0]);
    start_with(c).await
}

fn queue_toml(id: &str, extra: &str) -> QueueConfig {
    toml::from_str(&format!(
        "id = \"{id}\"\nring_timeout_secs = 2\nmax_no_answer = 1\n{extra}"
    ))
    .unwrap()
}

async fn agent_info(node: &Node, id: &str) -> agent::AgentInfo {
    let a = agent::lookup("cc", id, &node.name).expect("agent running");
    agent::info(&a).await.expect("agent answers")
}

async fn queue_stats(node: &Node, q: &str) -> queue::QueueStats {
    let a = queue::lookup("cc", q, &node.name).expect("queue running");
    queue::stats(&a).await.expect("queue answers")
}

/// Polls a one-number query until it gives `want` (bounded); returns the last value.
async fn poll_sql(db: &rusqlite::Connection, sql: &str, want: i64) -> i64 {
    let mut got = 0;
    for _ in 0..100 {
        got = db.query_row(sql, [], |r| r.get(0)).unwrap();
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    got
}

/// Polls an agent until `pred` holds (bounded).
async fn wait_agent(node: &Node, id: &str, what: &str, pred: impl Fn(&agent::AgentInfo) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let info = agent_info(node, id).await;
        if pred(&info) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent {id}: {what}; is {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A caller's side of a queued call: INVITE to the number, 180 at once.
async fn call_number(caller: &Ua, sw: SocketAddr, call_id: &str, number: &str) {
    caller
        .send(sw, &invite(call_id, number, caller.addr, sw))
        .await;
    caller
        .expect("180 while queued", |m| m.status() == Some(180))
        .await;
}

/// The agent's phone answers an INVITE: 180 then 200; returns the INVITE.
async fn phone_answers(phone: &Ua, sw: SocketAddr) -> Message {
    let (inv, _) = phone.expect_request("INVITE").await;
    phone
        .send(sw, &answer(&inv, 180, "Ringing", "ag", phone.addr, ""))
        .await;
    phone
        .send(sw, &answer(&inv, 200, "OK", "ag", phone.addr, SDP))
        .await;
    inv
}

fn ack_for(resp: &Message, caller: &Ua, sw: SocketAddr, call_id: &str, number: &str) -> String {
    format!(
        "ACK sip:{number}@{sw} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-ack-{call_id};rport\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        caller.addr,
        header(resp, "From"),
        header(resp, "To"),
    )
}

/// The agent hangs up: BYE from the phone in its dialog.
fn bye_from_phone(inv: &Message, phone: &Ua) -> String {
    format!(
        "BYE sip:switch@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-bye-{};rport\r\nMax-Forwards: 70\r\nFrom: {};tag=ag\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        phone.addr,
        header(inv, "Call-ID").len(),
        header(inv, "To"),
        header(inv, "From"),
        header(inv, "Call-ID"),
    )
}

fn cancel_for(caller: &Ua, sw: SocketAddr, call_id: &str, number: &str) -> String {
    format!(
        "CANCEL sip:{number}@{sw} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-{call_id}-1;rport\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@{}>;tag=a-{call_id}\r\nTo: <sip:{number}@{sw}>\r\nCall-ID: {call_id}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
        caller.addr, caller.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_reaches_agent_and_agent_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), 1, &[("a1", "2001", &["q0"])]).await;
    let sw = udp_addr(&node);
    // Not offerable before its phone registers.
    let info = agent_info(&node, "a1").await;
    assert_eq!(info.state, "available");
    assert!(!info.offerable && !info.phone_registered);
    let phone = Ua::new().await;
    register_udp(&phone, sw, DOMAIN, "2001", "pw").await;
    wait_agent(&node, "a1", "offerable once registered", |i| i.offerable).await;

    let caller = Ua::new().await;
    call_number(&caller, sw, "cc-1", "5000").await;
    let inv = phone_answers(&phone, sw).await;
    let (ok, _) = caller
        .expect("200 from the agent", |m| m.status() == Some(200))
        .await;
    wait_agent(&node, "a1", "on call", |i| i.state == "on_call").await;
    caller
        .send(sw, &ack_for(&ok, &caller, sw, "cc-1", "5000"))
        .await;
    phone.expect_request("ACK").await;
    phone.send(sw, &bye_from_phone(&inv, &phone)).await;
    let (bye, _) = caller.expect_request("BYE").await;
    caller
        .send(sw, &answer(&bye, 200, "OK", "", caller.addr, ""))
        .await;
    // No stuck agent: wrap-up is 0, so straight back to available, with the call counted.
    wait_agent(&node, "a1", "available after the call", |i| {
        i.state == "available" && i.calls == 1
    })
    .await;
    let s = queue_stats(&node, "q0").await;
    assert_eq!((s.joined, s.answered, s.abandoned), (1, 1, 0), "{s:?}");
    assert_eq!(s.answered_within_sl, 1);
    // The call hands its CDR to the writer as it ends: poll (bounded) until it is there.
    let store = node.tree.store().unwrap();
    let mut found = None;
    for _ in 0..100 {
        switchyard::actors::store_writer::flush(&store)
            .await
            .unwrap();
        found = switchyard::store::Store::open(&dir.path().join("switchyard.db"))
            .unwrap()
            .get_cdr_by_call_id("cc-1")
            .unwrap();
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cdr = found.expect("CDR written");
    assert_eq!(cdr.queue.as_deref(), Some("cc/q0"));
    assert_eq!(
        cdr.tenant.as_deref(),
        Some("cc"),
        "the CDR knows its tenant"
    );
    assert_eq!(cdr.agent.as_deref(), Some("a1"));
    assert!(!cdr.abandoned && cdr.wait_ms.is_some());
    // The queue's statistics are snapshotted into the store (every second here), and the
    // agent's figures too.
    let db = rusqlite::Connection::open(dir.path().join("switchyard.db")).unwrap();
    let answered =
        "SELECT COALESCE(MAX(answered), 0) FROM queue_stats WHERE tenant = 'cc' AND queue = 'q0'";
    assert_eq!(
        poll_sql(&db, answered, 1).await,
        1,
        "queue_stats snapshot with the answered call"
    );
    let calls =
        "SELECT COALESCE(MAX(calls), 0) FROM agent_stats WHERE tenant = 'cc' AND agent = 'a1'";
    assert_eq!(
        poll_sql(&db, calls, 1).await,
        1,
        "agent_stats row with the agent's call"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_offer_goes_to_the_next_agent_and_the_first_goes_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(
        dir.path(),
        1,
        &[("a1", "2001", &["q0"]), ("a2", "2002", &["q0"])],
    )
    .await;
    let sw = udp_addr(&node);
    let (p1, p2) = (Ua::new().await, Ua::new().await);
    register_udp(&p1, sw, DOMAIN, "2001", "pw").await;
    wait_agent(&node, "a1", "offerable", |i| i.offerable).await;
    // a2 registers later: a1 has been idle longest and gets the first offer.
    tokio::time::sleep(Duration::from_millis(30)).await;
    register_udp(&p2, sw, DOMAIN, "2002", "pw").await;
    wait_agent(&node, "a2", "offerable", |i| i.offerable).await;

    let caller = Ua::new().await;
    call_number(&caller, sw, "cc-2", "5000").await;
    // a1's phone rings and is never answered: after the 2 s ring timeout it is cancelled.
    let (inv1, _) = p1.expect_request("INVITE").await;
    p1.send(sw, &answer(&inv1, 180, "Ringing", "p1", p1.addr, ""))
        .await;
    let (cancel, _) = p1
        .expect("CANCEL after the ring timeout", |m| {
            m.method().is_some_and(|x| x.to_string() == "CANCEL")
        })
        .await;
    p1.send(sw, &answer(&cancel, 200, "OK", "p1", p1.addr, ""))
        .await;
    p1.send(
        sw,
        &answer(&inv1, 487, "Request Terminated", "p1", p1.addr, ""),
    )
    .await;
    // max_no_answer = 1: a1 is not ready now, reason no-answer.
    wait_agent(&node, "a1", "not ready after no answer", |i| {
        i.state == "not_ready" && i.detail.as_deref() == Some("no-answer")
    })
    .await;
    // The caller never saw a failure and goes to a2.
    let inv2 = phone_answers(&p2, sw).await;
    let (ok, _) = caller
        .expect("200 from a2", |m| m.status() == Some(200))
        .await;
    caller
        .send(sw, &ack_for(&ok, &caller, sw, "cc-2", "5000"))
        .await;
    p2.send(sw, &bye_from_phone(&inv2, &p2)).await;
    let (bye, _) = caller.expect_request("BYE").await;
    caller
        .send(sw, &answer(&bye, 200, "OK", "", caller.addr, ""))
        .await;
    let q = queue::lookup("cc", "q0", &node.name).unwrap();
    let decisions = queue::decisions(&q).await.unwrap();
    assert_eq!(decisions.len(), 2, "{decisions:?}");
    assert_eq!(decisions[0].chosen, vec!["a1".to_string()]);
    assert!(
        decisions[0].reason.contains("longest-idle"),
        "{decisions:?}"
    );
    assert!(decisions[0]
        .outcome
        .as_deref()
        .unwrap_or("")
        .contains("no_answer"));
    assert_eq!(decisions[1].chosen, vec!["a2".to_string()]);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_hanging_up_while_waiting_is_an_abandon() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), 1, &[("a1", "2001", &["q0"])]).await;
    let sw = udp_addr(&node);
    // a1 has no phone: nobody can take the call.
    let caller = Ua::new().await;
    call_number(&caller, sw, "cc-3", "5000").await;
    let q = queue::lookup("cc", "q0", &node.name).unwrap();
    // The 180 goes out as the call joins; the join reaches the queue a moment later.
    let mut waiting = Vec::new();
    for _ in 0..100 {
        waiting = queue::waiting(&q).await.unwrap();
        if !waiting.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].call_id, "cc-3");
    caller
        .send(sw, &cancel_for(&caller, sw, "cc-3", "5000"))
        .await;
    caller.expect_status(487).await;
    let s = queue_stats(&node, "q0").await;
    assert_eq!((s.joined, s.abandoned, s.waiting), (1, 1, 0), "{s:?}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_queue_keeps_its_callers_in_order_and_crashed_agent_its_call() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), 1, &[("a1", "2001", &["q0"])]).await;
    let sw = udp_addr(&node);
    // Three callers wait (no phone registered yet).
    let callers = [Ua::new().await, Ua::new().await, Ua::new().await];
    for (i, c) in callers.iter().enumerate() {
        call_number(c, sw, &format!("cc-q{i}"), "5000").await;
    }
    let q = queue::lookup("cc", "q0", &node.name).unwrap();
    // All three have joined (a join still in the mailbox would die with the actor; the
    // caller would join again on its 5 s keep-alive, but not in this test's order).
    for _ in 0..100 {
        if queue::waiting(&q).await.unwrap().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    q.cast(queue::QueueMsg::InjectPanic).unwrap();
    // The restarted queue (a new actor under the same name) has them in their order.
    let mut restarted = None;
    for _ in 0..100 {
        if let Some(n) = queue::lookup("cc", "q0", &node.name).filter(|n| n.get_id() != q.get_id())
        {
            restarted = Some(n);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let q2 = restarted.expect("queue restarted");
    let order: Vec<String> = queue::waiting(&q2)
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.call_id)
        .collect();
    assert_eq!(order, vec!["cc-q0", "cc-q1", "cc-q2"]);
    // The agent's phone registers; the first caller is offered first.
    let phone = Ua::new().await;
    register_udp(&phone, sw, DOMAIN, "2001", "pw").await;
    let inv = phone_answers(&phone, sw).await;
    // The B leg's From is the caller's (without its tag): each caller has its own address.
    assert!(
        header(&inv, "From").contains(&callers[0].addr.to_string()),
        "{inv:?}"
    );
    let (ok, _) = callers[0]
        .expect("200 for the first caller", |m| m.status() == Some(200))
        .await;
    callers[0]
        .send(sw, &ack_for(&ok, &callers[0], sw, "cc-q0", "5000"))
        .await;
    wait_agent(&node, "a1", "on call", |i| i.state == "on_call").await;
    // The agent actor crashes mid-call: it comes back on the call, then moves on when the
    // call ends.
    let a = agent::lookup("cc", "a1", &node.name).unwrap();
    a.cast(agent::AgentMsg::InjectPanic).unwrap();
    let mut back = false;
    for _ in 0..100 {
        if agent::lookup("cc", "a1", &node.name).is_some_and(|n| n.get_id() != a.get_id()) {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back, "agent restarted");
    assert_eq!(agent_info(&node, "a1").await.state, "on_call");
    phone.send(sw, &bye_from_phone(&inv, &phone)).await;
    let (bye, _) = callers[0].expect_request("BYE").await;
    callers[0]
        .send(sw, &answer(&bye, 200, "OK", "", callers[0].addr, ""))
        .await;
    // Free at once (wrap-up 0), so the next caller is offered straight away.
    wait_agent(&node, "a1", "off the call", |i| {
        i.calls == 1 && matches!(i.state, "available" | "offered")
    })
    .await;
    // The next caller in order is offered next.
    let (inv2, _) = phone.expect_request("INVITE").await;
    assert!(
        header(&inv2, "From").contains(&callers[1].addr.to_string()),
        "{inv2:?}"
    );
    let s = queue_stats(&node, "q0").await;
    assert_eq!(s.joined, 3, "{s:?}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_in_five_queues_takes_one_call_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let qs: &[&str] = &["q0", "q1", "q2", "q3", "q4"];
    let node = node(dir.path(), 5, &[("a1", "2001", qs)]).await;
    let sw = udp_addr(&node);
    let phone = Ua::new().await;
    register_udp(&phone, sw, DOMAIN, "2001", "pw").await;
    wait_agent(&node, "a1", "offerable", |i| i.offerable).await;
    // Five callers (one UA, five calls), one per queue, at once.
    let caller = Ua::new().await;
    for i in 0..5 {
        caller
            .send(
                sw,
                &invite(&format!("cc-m{i}"), &format!("500{i}"), caller.addr, sw),
            )
            .await;
    }
    // The phone gets one INVITE at a time: answer, hang up, then the next one comes.
    let mut served = Vec::new();
    for round in 0..5 {
        let (inv, _) = phone.expect_request("INVITE").await;
        phone
            .send(sw, &answer(&inv, 200, "OK", "ag", phone.addr, SDP))
            .await;
        let (ok, _) = caller
            .expect("a 200 from the agent", |m| m.status() == Some(200))
            .await;
        let call_id = header(&ok, "Call-ID");
        assert!(!served.contains(&call_id), "round {round}: {call_id} twice");
        let number = format!("500{}", &call_id[4..]);
        caller
            .send(sw, &ack_for(&ok, &caller, sw, &call_id, &number))
            .await;
        // No second INVITE while this call is up.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Some((m, _)) = phone
            .recv(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            assert!(
                m.method().is_none_or(|x| x.to_string() != "INVITE"),
                "round {round}: a second offer while on a call"
            );
        }
        phone.send(sw, &bye_from_phone(&inv, &phone)).await;
        let (bye, _) = caller.expect_request("BYE").await;
        caller
            .send(sw, &answer(&bye, 200, "OK", "", caller.addr, ""))
            .await;
        served.push(call_id);
    }
    wait_agent(&node, "a1", "five calls", |i| {
        i.calls == 5 && i.state == "available"
    })
    .await;
    node.shutdown().await;
}

/// An agent's phone in a task of its own: answers every INVITE at once, talks `talk`, hangs
/// up; counts calls and any INVITE that arrives while it is on a call.
fn spawn_phone(
    phone: Ua,
    sw: SocketAddr,
    talk: Duration,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    doubles: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        loop {
            let Some((inv, _)) = phone.recv(Duration::from_secs(30)).await else {
                return;
            };
            if inv.method().is_none_or(|m| m.to_string() != "INVITE") {
                continue;
            }
            phone
                .send(sw, &answer(&inv, 200, "OK", "ag", phone.addr, SDP))
                .await;
            let until = tokio::time::Instant::now() + talk;
            while let Some((m, _)) = phone
                .recv(until.saturating_duration_since(tokio::time::Instant::now()))
                .await
            {
                if m.method().is_some_and(|x| x.to_string() == "INVITE")
                    && header(&m, "Call-ID") != header(&inv, "Call-ID")
                {
                    doubles.fetch_add(1, Ordering::Relaxed);
                }
            }
            phone.send(sw, &bye_from_phone(&inv, &phone)).await;
            calls.fetch_add(1, Ordering::Relaxed);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_and_agent_crashes_under_load_lose_no_caller() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<(String, String)> = (0..8)
        .map(|i| (format!("a{i}"), format!("30{i:02}")))
        .collect();
    let agents: Vec<(&str, &str, &[&str])> = ids
        .iter()
        .map(|(a, u)| (a.as_str(), u.as_str(), &["q0"][..]))
        .collect();
    let node = node(dir.path(), 1, &agents).await;
    let sw = udp_addr(&node);
    let (calls, doubles) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut phones = Vec::new();
    for (a, u) in &ids {
        let p = Ua::new().await;
        register_udp(&p, sw, DOMAIN, u, "pw").await;
        wait_agent(&node, a, "offerable", |i| i.offerable).await;
        phones.push(spawn_phone(
            p,
            sw,
            Duration::from_millis(150),
            calls.clone(),
            doubles.clone(),
        ));
    }
    // 60 callers at ~30 per second; a queue crash and agent crashes while they come.
    const CALLS: usize = 60;
    let caller = Arc::new(Ua::new().await);
    let answered = Arc::new(AtomicUsize::new(0));
    let c_task = {
        let (answered, caller) = (answered.clone(), caller.clone());
        tokio::spawn(async move {
            let mut acked = std::collections::HashSet::new();
            let mut failures = Vec::new();
            while answered.load(Ordering::Relaxed) < CALLS {
                let Some((m, _)) = caller.recv(Duration::from_secs(15)).await else {
                    break;
                };
                let invite = header(&m, "CSeq").contains("INVITE");
                match m.status() {
                    Some(200) if invite => {
                        let cid = header(&m, "Call-ID");
                        caller
                            .send(sw, &ack_for(&m, &caller, sw, &cid, "5000"))
                            .await;
                        if acked.insert(cid) {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(s) if s >= 300 && invite => failures.push(s),
                    _ => {}
                }
                if m.method().is_some_and(|x| x.to_string() == "BYE") {
                    caller
                        .send(sw, &answer(&m, 200, "OK", "", caller.addr, ""))
                        .await;
                }
            }
            failures
        })
    };
    for i in 0..CALLS {
        caller
            .send(sw, &invite(&format!("load-{i}"), "5000", caller.addr, sw))
            .await;
        if i == 20 || i == 40 {
            queue::lookup("cc", "q0", &node.name)
                .unwrap()
                .cast(queue::QueueMsg::InjectPanic)
                .unwrap();
        }
        if i % 10 == 5 {
            if let Some(a) = agent::lookup("cc", &format!("a{}", i % 8), &node.name) {
                a.cast(agent::AgentMsg::InjectPanic).unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(33)).await;
    }
    let failures = tokio::time::timeout(Duration::from_secs(60), c_task)
        .await
        .expect("all callers connected in time")
        .unwrap();
    assert!(failures.is_empty(), "callers got failures: {failures:?}");
    assert_eq!(answered.load(Ordering::Relaxed), CALLS);
    assert_eq!(
        doubles.load(Ordering::Relaxed),
        0,
        "an agent got two offers at once"
    );
    // Outcomes reported to a queue actor in the instant it died are lost with its mailbox;
    // the restarted queue asks each listed caller's call where it stands, so the figures
    // come right (bounded wait: that exchange is asynchronous).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = queue_stats(&node, "q0").await;
        if (s.answered, s.abandoned, s.waiting) == (CALLS as u64, 0, 0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for p in phones {
        p.abort();
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_in_five_queues_under_load_never_get_two_offers() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let qs: &[&str] = &["q0", "q1", "q2", "q3", "q4"];
    let node = node(
        dir.path(),
        5,
        &[("a1", "2001", qs), ("a2", "2002", qs), ("a3", "2003", qs)],
    )
    .await;
    let sw = udp_addr(&node);
    let (calls, doubles) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut phones = Vec::new();
    for (a, u) in [("a1", "2001"), ("a2", "2002"), ("a3", "2003")] {
        let p = Ua::new().await;
        register_udp(&p, sw, DOMAIN, u, "pw").await;
        wait_agent(&node, a, "offerable", |i| i.offerable).await;
        phones.push(spawn_phone(
            p,
            sw,
            Duration::from_millis(50),
            calls.clone(),
            doubles.clone(),
        ));
    }
    // 50 callers at once spread over the five queues: all five queues compete for the same
    // three agents all the time.
    const CALLS: usize = 50;
    let caller = Ua::new().await;
    for i in 0..CALLS {
        caller
            .send(
                sw,
                &invite(
                    &format!("m5-{i}"),
                    &format!("500{}", i % 5),
                    caller.addr,
                    sw,
                ),
            )
            .await;
    }
    let mut connected = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while connected.len() < CALLS {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some((m, _)) = caller.recv(left).await else {
            panic!("{} of {CALLS} connected", connected.len());
        };
        let cseq = header(&m, "CSeq");
        match m.status() {
            Some(200) if cseq.contains("INVITE") => {
                let cid = header(&m, "Call-ID");
                let n = cid.trim_start_matches("m5-").parse::<usize>().unwrap() % 5;
                caller
                    .send(sw, &ack_for(&m, &caller, sw, &cid, &format!("500{n}")))
                    .await;
                connected.insert(cid);
            }
            Some(s) if s >= 300 && cseq.contains("INVITE") => panic!("a caller got {s}"),
            _ => {}
        }
        if m.method().is_some_and(|x| x.to_string() == "BYE") {
            caller
                .send(sw, &answer(&m, 200, "OK", "", caller.addr, ""))
                .await;
        }
    }
    assert_eq!(
        doubles.load(Ordering::Relaxed),
        0,
        "an agent got two offers at once"
    );
    for q in qs {
        let s = queue_stats(&node, q).await;
        assert_eq!((s.joined, s.answered, s.waiting), (10, 10, 0), "{s:?}");
    }
    for p in phones {
        p.abort();
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_overflows_after_max_wait_and_a_full_queue_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    // q0 has no agent and sends callers on to q1 after 1 s; it holds one caller at most.
    let queues = vec![
        queue_toml(
            "q0",
            "max_wait_secs = 1\noverflow_wait = \"queue:q1\"\nmax_length = 1",
        ),
        queue_toml("q1", ""),
    ];
    let node = node_with(dir.path(), queues, &[("a1", "2001", &["q1"])], |_| {}).await;
    let sw = udp_addr(&node);
    let phone = Ua::new().await;
    register_udp(&phone, sw, DOMAIN, "2001", "pw").await;
    wait_agent(&node, "a1", "offerable", |i| i.offerable).await;
    let caller = Ua::new().await;
    call_number(&caller, sw, "of-1", "5000").await;
    // Full: the second caller of q0 gets the overflow_full default, 503.
    let other = Ua::new().await;
    let q0 = queue::lookup("cc", "q0", &node.name).unwrap();
    for _ in 0..100 {
        if queue::stats(&q0).await.unwrap().waiting == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    other
        .send(sw, &invite("of-2", "5000", other.addr, sw))
        .await;
    other.expect_status(503).await;
    // After a second in q0 the first caller moves to q1, where a1 answers.
    let started = tokio::time::Instant::now();
    let inv = phone_answers(&phone, sw).await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "offered before max_wait"
    );
    let (ok, _) = caller
        .expect("200 via q1", |m| m.status() == Some(200))
        .await;
    caller
        .send(sw, &ack_for(&ok, &caller, sw, "of-1", "5000"))
        .await;
    phone.send(sw, &bye_from_phone(&inv, &phone)).await;
    let (bye, _) = caller.expect_request("BYE").await;
    caller
        .send(sw, &answer(&bye, 200, "OK", "", caller.addr, ""))
        .await;
    let (s0, s1) = (
        queue_stats(&node, "q0").await,
        queue_stats(&node, "q1").await,
    );
    assert_eq!((s0.joined, s0.overflowed, s0.answered), (1, 2, 0), "{s0:?}");
    assert_eq!((s1.joined, s1.answered), (1, 1), "{s1:?}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skills_requirement_relaxes_while_the_caller_waits() {
    let dir = tempfile::tempdir().unwrap();
    // The queue wants english 7; after 1 s of waiting 4 is enough. a1 has english 5.
    let queues = vec![queue_toml(
        "q0",
        "strategy = \"skills\"\nrequired_skills = [{ skill = \"english\", level = 7 }]\nrelax = [{ after_secs = 1, by = 3 }]",
    )];
    let node = node_with(dir.path(), queues, &[("a1", "2001", &["q0"])], |t| {
        t.agents[0].skills.insert("english".into(), 5);
    })
    .await;
    let sw = udp_addr(&node);
    let phone = Ua::new().await;
    register_udp(&phone, sw, DOMAIN, "2001", "pw").await;
    wait_agent(&node, "a1", "offerable", |i| i.offerable).await;
    let caller = Ua::new().await;
    let started = tokio::time::Instant::now();
    call_number(&caller, sw, "sk-1", "5000").await;
    // Nobody meets english 7: the caller waits until the requirement relaxes.
    let (inv, _) = phone.expect_request("INVITE").await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "offered after {waited:?}"
    );
    let q = queue::lookup("cc", "q0", &node.name).unwrap();
    let d = queue::decisions(&q).await.unwrap();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].chosen, vec!["a1".to_string()]);
    assert!(d[0].reason.starts_with("skills:"), "{d:?}");
    phone
        .send(sw, &answer(&inv, 486, "Busy Here", "ag", phone.addr, ""))
        .await;
    // A busy phone: the caller goes back to the queue (no failure reaches it) and the agent
    // pauses for busy_delay_secs (10 s by default), so it is not offered again meanwhile.
    wait_agent(&node, "a1", "paused after busy", |i| {
        i.state == "available" && !i.offerable
    })
    .await;
    assert!(caller
        .recv(Duration::from_millis(300))
        .await
        .is_none_or(|(m, _)| m.status().is_none_or(|s| s < 300)));
    caller
        .send(sw, &cancel_for(&caller, sw, "sk-1", "5000"))
        .await;
    caller.expect_status(487).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_all_rings_every_available_agent_and_the_first_answer_wins() {
    let dir = tempfile::tempdir().unwrap();
    let queues = vec![queue_toml("q0", "strategy = \"ring-all\"")];
    let node = node_with(
        dir.path(),
        queues,
        &[("a1", "2001", &["q0"]), ("a2", "2002", &["q0"])],
        |_| {},
    )
    .await;
    let sw = udp_addr(&node);
    let (p1, p2) = (Ua::new().await, Ua::new().await);
    register_udp(&p1, sw, DOMAIN, "2001", "pw").await;
    register_udp(&p2, sw, DOMAIN, "2002", "pw").await;
    wait_agent(&node, "a1", "offerable", |i| i.offerable).await;
    wait_agent(&node, "a2", "offerable", |i| i.offerable).await;
    let caller = Ua::new().await;
    call_number(&caller, sw, "ra-1", "5000").await;
    let (inv1, _) = p1.expect_request("INVITE").await;
    let (inv2, _) = p2.expect_request("INVITE").await;
    p1.send(sw, &answer(&inv1, 180, "Ringing", "p1", p1.addr, ""))
        .await;
    p2.send(sw, &answer(&inv2, 180, "Ringing", "p2", p2.addr, ""))
        .await;
    p2.send(sw, &answer(&inv2, 200, "OK", "p2", p2.addr, SDP))
        .await;
    let (ok, _) = caller
        .expect("200 from a2", |m| m.status() == Some(200))
        .await;
    caller
        .send(sw, &ack_for(&ok, &caller, sw, "ra-1", "5000"))
        .await;
    // a1's phone is cancelled; a1 is free again, a2 is on the call.
    let (cancel, _) = p1
        .expect("CANCEL for the losing phone", |m| {
            m.method().is_some_and(|x| x.to_string() == "CANCEL")
        })
        .await;
    p1.send(sw, &answer(&cancel, 200, "OK", "p1", p1.addr, ""))
        .await;
    p1.send(
        sw,
        &answer(&inv1, 487, "Request Terminated", "p1", p1.addr, ""),
    )
    .await;
    wait_agent(&node, "a2", "on call", |i| i.state == "on_call").await;
    wait_agent(&node, "a1", "available", |i| {
        i.state == "available" && i.offerable
    })
    .await;
    let q = queue::lookup("cc", "q0", &node.name).unwrap();
    let d = queue::decisions(&q).await.unwrap();
    assert_eq!(d[0].chosen.len(), 2, "{d:?}");
    node.shutdown().await;
}
