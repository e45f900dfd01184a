//! Actor messages between two real nodes in one process over ractor_cluster (loopback):
//! a caller on node A's SIP port waits in a queue whose queue and agent actors run on node B,
//! B's agent is offered the call whose actor runs on A, answers, and B's queue counts it; a
//! message to a singleton without a reachable owner is retried, delivered to the new owner
//! when one appears, and otherwise dropped and counted by cause after the retry time.
//!
//! Both nodes start from the same configuration (one tenant, queue q0, agent a1) as a node
//! alone does, with every tenant running; node A's tenant singleton (its tenant, queue and
//! agent actors) is then stopped through the tree's catalog, as cluster mode does for a
//! singleton another node owns. The Directory of each node is filled by hand (no etcd):
//! both nodes live, node B owns the tenant and its queue. The agent's phone registers
//! through node B only (registrations are per node here); the call's node rings it with the
//! contact B's agent hands over.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::actors::{agent, queue};
use switchyard::cluster::port::{self, Port, PortConfig};
use switchyard::cluster::{queue_key, tenant_key, Directory, NodeInfo, NodeState};
use switchyard::config::{
    AgentConfig, Config, MembershipConfig, NumberConfig, QueueConfig, TenantConfig, UserConfig,
};
use switchyard::server::Node;
use switchyard::sip::auth::{ha1, Algorithm};
use switchyard::sip::message::Message;

const DOMAIN: &str = "cc.test";
const SECRET: &str = "cluster-port-test-secret";

/// A node alone with tenant `cc`: queue q0 (number 5000), agent a1 (user 2001) in it.
async fn cc_node(dir: &std::path::Path) -> Node {
    let mut c: Config = config(dir, &[]);
    c.registrar.algorithms = vec!["MD5".into()];
    let q: QueueConfig =
        toml::from_str("id = \"q0\"\nring_timeout_secs = 5\nno_answer_delay_secs = 0").unwrap();
    c.tenants = vec![TenantConfig {
        id: "cc".into(),
        domain: DOMAIN.into(),
        users: vec![UserConfig {
            username: "2001".into(),
            ha1_md5: Some(ha1(Algorithm::Md5, "2001", DOMAIN, "pw")),
            ha1_sha256: None,
            outbound: None,
        }],
        numbers: vec![NumberConfig {
            number: "5000".into(),
            target: "queue:q0".into(),
            priority: 0,
        }],
        queues: vec![q],
        agents: vec![AgentConfig {
            id: "a1".into(),
            user: "2001".into(),
            queues: vec![MembershipConfig {
                queue: "q0".into(),
                tier: 1,
                penalty: 0,
            }],
            skills: Default::default(),
            wrap_up_secs: None,
            state: Some("available".into()),
        }],
        ..Default::default()
    }];
    start_with(c).await
}

fn node_info(name: &str, cluster: SocketAddr) -> NodeInfo {
    NodeInfo {
        name: name.to_string(),
        sip: String::new(),
        http: String::new(),
        cluster,
        state: NodeState::Up,
        since_ms: 0,
    }
}

/// Two nodes with ports; A's tenant stopped; both Directories list both nodes, B owning
/// tenant `cc` and queue q0.
struct Pair {
    a: Node,
    b: Node,
    dir_a: Arc<Directory>,
    dir_b: Arc<Directory>,
    port_a: Arc<Port>,
    port_b: Arc<Port>,
    _tmp: (tempfile::TempDir, tempfile::TempDir),
}

async fn pair(retry_for: Duration) -> Pair {
    let p = pair_with(|a, _| a.retry_for = retry_for).await;
    p.wait_connected().await;
    p
}

/// Two nodes and their ports, the configs touched by `touch` (A's, B's); not waiting for
/// the connection.
async fn pair_with(touch: impl FnOnce(&mut PortConfig, &mut PortConfig)) -> Pair {
    let (ta, tb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = cc_node(ta.path()).await;
    let b = cc_node(tb.path()).await;
    a.tree.singletons.stop(&tenant_key("cc")).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || {
            queue::lookup("cc", "q0", &a.name).is_none()
                && agent::lookup("cc", "a1", &a.name).is_none()
        })
        .await,
        "node A's queue and agent actors stopped"
    );
    let (dir_a, dir_b) = (Directory::new(&a.name), Directory::new(&b.name));
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut ca = PortConfig::new(&a.name, listen, SECRET, dir_a.clone(), a.cc.clone());
    let mut cb = PortConfig::new(&b.name, listen, SECRET, dir_b.clone(), b.cc.clone());
    touch(&mut ca, &mut cb);
    let port_a = port::start(ca).await.expect("port A starts");
    let port_b = port::start(cb).await.expect("port B starts");
    for d in [&dir_a, &dir_b] {
        d.set_node(node_info(&a.name, port_a.listen_addr()));
        d.set_node(node_info(&b.name, port_b.listen_addr()));
        d.set_owner(&tenant_key("cc"), &b.name);
        d.set_owner(&queue_key("cc", "q0"), &b.name);
    }
    Pair {
        a,
        b,
        dir_a,
        dir_b,
        port_a,
        port_b,
        _tmp: (ta, tb),
    }
}

impl Pair {
    async fn wait_connected(&self) {
        let (a, b) = (&self.port_a, &self.port_b);
        let connected = wait_until(Duration::from_secs(10), || {
            a.stats().peers == vec![self.b.name.clone()]
                && b.stats().peers == vec![self.a.name.clone()]
        })
        .await;
        assert!(
            connected,
            "ports connected: A {:?}, B {:?}",
            a.stats(),
            b.stats()
        );
    }

    async fn stop(self) {
        self.port_a.stop().await;
        self.port_b.stop().await;
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

async fn agent_info(node: &Node, id: &str) -> agent::AgentInfo {
    let a = agent::lookup("cc", id, &node.name).expect("agent running");
    agent::info(&a).await.expect("agent answers")
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

async fn queue_stats(node: &Node) -> queue::QueueStats {
    let q = queue::lookup("cc", "q0", &node.name).expect("queue running");
    queue::stats(&q).await.expect("queue answers")
}

async fn waiting_ids(node: &Node) -> Vec<String> {
    let q = queue::lookup("cc", "q0", &node.name).expect("queue running");
    queue::waiting(&q)
        .await
        .expect("queue answers")
        .into_iter()
        .map(|w| w.call_id)
        .collect()
}

/// Polls the waiting list of B's queue until `pred` holds (bounded); returns the last list.
async fn wait_waiting(node: &Node, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ids = waiting_ids(node).await;
        if pred(&ids) || tokio::time::Instant::now() >= deadline {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ack_for(resp: &Message, caller: &Ua, sw: SocketAddr, call_id: &str, number: &str) -> String {
    format!(
        "ACK sip:{number}@{sw} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-ack-{call_id};rport\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        caller.addr,
        header(resp, "From"),
        header(resp, "To"),
    )
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_on_node_a_reaches_the_agent_of_a_queue_on_node_b() {
    let p = pair(port::DEFAULT_RETRY_FOR).await;
    let (sw_a, sw_b) = (udp_addr(&p.a), udp_addr(&p.b));
    // The agent's phone registers through B, where its agent actor runs.
    let phone = Ua::new().await;
    register_udp(&phone, sw_b, DOMAIN, "2001", "pw").await;
    wait_agent(&p.b, "a1", "offerable once registered", |i| i.offerable).await;

    // The caller dials the queue's number on node A: A's call actor joins B's queue.
    let caller = Ua::new().await;
    caller
        .send(sw_a, &invite("xn-1", "5000", caller.addr, sw_a))
        .await;
    caller
        .expect("180 while queued", |m| m.status() == Some(180))
        .await;
    // B's queue offers B's agent; A's call actor rings the phone (from A's SIP socket).
    let (inv, from) = phone.expect_request("INVITE").await;
    assert_eq!(from, sw_a, "the agent's phone is rung by the call's node");
    wait_agent(&p.b, "a1", "offered", |i| i.state == "offered").await;
    phone
        .send(sw_a, &answer(&inv, 180, "Ringing", "ag", phone.addr, ""))
        .await;
    phone
        .send(sw_a, &answer(&inv, 200, "OK", "ag", phone.addr, SDP))
        .await;
    let (ok, _) = caller
        .expect("200 from the agent", |m| m.status() == Some(200))
        .await;
    caller
        .send(sw_a, &ack_for(&ok, &caller, sw_a, "xn-1", "5000"))
        .await;
    phone.expect_request("ACK").await;
    // The agent on B is on the call, though it cannot monitor a call actor on A.
    wait_agent(&p.b, "a1", "on call", |i| i.state == "on_call").await;
    let mut s = queue_stats(&p.b).await;
    for _ in 0..100 {
        if s.answered == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        s = queue_stats(&p.b).await;
    }
    assert_eq!((s.joined, s.answered, s.abandoned), (1, 1, 0), "{s:?}");
    // Still on call a moment later (no false "call actor gone").
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(agent_info(&p.b, "a1").await.state, "on_call");

    // The agent hangs up: the call on A tells B's agent and queue.
    phone.send(sw_a, &bye_from_phone(&inv, &phone)).await;
    let (bye, _) = caller.expect_request("BYE").await;
    caller
        .send(sw_a, &answer(&bye, 200, "OK", "", caller.addr, ""))
        .await;
    wait_agent(&p.b, "a1", "available after the call", |i| {
        i.state == "available" && i.calls == 1
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while queue_stats(&p.b).await.handled < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(queue_stats(&p.b).await.handled, 1, "handle time reported");

    let (sa, sb) = (p.port_a.stats(), p.port_b.stats());
    // A sent Join (and keep-alives), OfferEnded x2, CallEnded x2; B sent the Offer.
    assert!(sa.sent >= 5 && sb.received >= 5, "A {sa:?} B {sb:?}");
    assert!(sb.sent >= 1 && sa.received >= 1, "A {sa:?} B {sb:?}");
    assert!(
        sa.failed.is_empty() && sb.failed.is_empty(),
        "A {sa:?} B {sb:?}"
    );
    // B forgot the call once it ended.
    assert_eq!(sb.calls, 0, "{sb:?}");
    // The same as Prometheus metrics (by kind; the latency from the envelopes' stamps).
    let text = switchyard::metrics::handle().expect("recorder").render();
    for line in [
        "switchyard_cluster_messages_sent_total{kind=\"call.offer\"}",
        "switchyard_cluster_messages_received_total{kind=\"queue.offer_ended\"}",
        "switchyard_cluster_message_latency_seconds_count",
        "switchyard_cluster_peers",
    ] {
        assert!(text.contains(line), "/metrics has {line}");
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_without_a_reachable_owner_are_retried_then_counted() {
    let retry_for = Duration::from_secs(1);
    let p = pair(retry_for).await;
    let join = |id: &str| {
        queue::QueueMsg::Join(queue::Join {
            call_id: Arc::from(id),
            from: "\"X\" <sip:x@127.0.0.1>".into(),
            user: None,
            priority: 0,
            joined_ms: 0,
            skills: Vec::new(),
        })
    };

    // A message that cannot cross (it carries a reply port) is refused at once.
    let (tx, _rx) = ractor::concurrency::oneshot();
    assert!(!queue::tell(
        &p.a.cc,
        "cc",
        "q0",
        queue::QueueMsg::GetStats(tx.into())
    ));

    // 1. The owner just died (none yet): the message waits, and reaches the new owner.
    p.dir_a.remove_owner(&queue_key("cc", "q0"));
    p.dir_a.set_owner(&tenant_key("cc"), "dead-node");
    assert!(queue::tell(&p.a.cc, "cc", "q0", join("retry-1")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        waiting_ids(&p.b).await.is_empty(),
        "not delivered without an owner"
    );
    p.dir_a.set_owner(&tenant_key("cc"), &p.b.name);
    let ids = wait_waiting(&p.b, |ids| ids.contains(&"retry-1".to_string())).await;
    assert_eq!(
        ids,
        vec!["retry-1".to_string()],
        "delivered to the new owner"
    );
    let s = p.port_a.stats();
    assert!(s.retried >= 1 && s.failed.is_empty(), "{s:?}");
    // And it leaves again through the port.
    assert!(queue::tell(
        &p.a.cc,
        "cc",
        "q0",
        queue::QueueMsg::Leave {
            call_id: Arc::from("retry-1"),
            abandoned: false,
        }
    ));
    let ids = wait_waiting(&p.b, |ids| ids.is_empty()).await;
    assert!(ids.is_empty(), "{ids:?}");

    // 2. No owner for the whole retry time: dropped, counted as no_owner, not before.
    p.dir_a.set_owner(&tenant_key("cc"), "dead-node");
    let sent = Instant::now();
    assert!(agent::tell(&p.a.cc, "cc", "a1", agent::AgentMsg::Announce));
    let counted = wait_until(Duration::from_secs(5), || {
        p.port_a.stats().failed.get("no_owner") == Some(&1)
    })
    .await;
    assert!(counted, "{:?}", p.port_a.stats());
    assert!(
        sent.elapsed() >= retry_for,
        "dropped only after the retry time"
    );

    // 3. An owner that is listed live but whose port cannot be reached: unreachable.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    p.dir_a.set_node(node_info("zz-unreachable", closed));
    p.dir_a.set_owner(&tenant_key("cc"), "zz-unreachable");
    assert!(queue::tell(&p.a.cc, "cc", "q0", join("retry-2")));
    let counted = wait_until(Duration::from_secs(5), || {
        p.port_a.stats().failed.get("unreachable") == Some(&1)
    })
    .await;
    assert!(counted, "{:?}", p.port_a.stats());
    assert!(waiting_ids(&p.b).await.is_empty(), "never reached B");

    // 4. A node leaving the Directory releases B's agents from the calls it ran: a call
    //    on A joined B's queue, then A is gone.
    p.dir_a.set_owner(&tenant_key("cc"), &p.b.name);
    assert!(queue::tell(&p.a.cc, "cc", "q0", join("orphan-1")));
    let ids = wait_waiting(&p.b, |ids| ids.contains(&"orphan-1".to_string())).await;
    assert!(ids.contains(&"orphan-1".to_string()), "{ids:?}");
    assert_eq!(p.port_b.stats().calls, 1, "B remembers the call's node");
    p.dir_b.remove_node(&p.a.name);
    let ids = wait_waiting(&p.b, |ids| ids.is_empty()).await;
    assert!(
        ids.is_empty(),
        "the dead node's caller left B's queue: {ids:?}"
    );
    assert_eq!(p.port_b.stats().calls, 0);
    p.stop().await;
}

/// Moves tenant `cc` (its queue and agent actors) from node B to node A, as a takeover
/// does: B stops it, both Directories name A the owner, A starts it. A ran the tenant at
/// boot, so its agent starts from that old (stale: available) checkpoint.
async fn move_tenant_to_a(p: &Pair) {
    p.b.tree.singletons.stop(&tenant_key("cc")).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || agent::lookup(
            "cc", "a1", &p.b.name
        )
        .is_none())
        .await,
        "node B's agent stopped"
    );
    for d in [&p.dir_a, &p.dir_b] {
        d.set_owner(&tenant_key("cc"), &p.a.name);
        d.set_owner(&queue_key("cc", "q0"), &p.a.name);
    }
    p.a.tree.singletons.start(&tenant_key("cc")).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || agent::lookup(
            "cc", "a1", &p.a.name
        )
        .is_some())
        .await,
        "node A's agent started"
    );
}

/// A caller on node B (the tenant's owner) reaches B's agent, whose phone registered
/// through B; returns the phone's INVITE once it rings.
async fn ring_agent_on_b(p: &Pair, call_id: &str) -> (Ua, Ua, Message) {
    let sw_b = udp_addr(&p.b);
    let phone = Ua::new().await;
    register_udp(&phone, sw_b, DOMAIN, "2001", "pw").await;
    wait_agent(&p.b, "a1", "offerable once registered", |i| i.offerable).await;
    let caller = Ua::new().await;
    caller
        .send(sw_b, &invite(call_id, "5000", caller.addr, sw_b))
        .await;
    caller
        .expect("180 while queued", |m| m.status() == Some(180))
        .await;
    let (inv, _) = phone.expect_request("INVITE").await;
    wait_agent(&p.b, "a1", "offered", |i| i.state == "offered").await;
    phone
        .send(sw_b, &answer(&inv, 180, "Ringing", "ag", phone.addr, ""))
        .await;
    (caller, phone, inv)
}

/// The agent answers; the caller gets the 200 and ACKs it.
async fn agent_answers(p: &Pair, caller: &Ua, phone: &Ua, inv: &Message, call_id: &str) {
    let sw_b = udp_addr(&p.b);
    phone
        .send(sw_b, &answer(inv, 200, "OK", "ag", phone.addr, SDP))
        .await;
    let (ok, _) = caller
        .expect("200 from the agent", |m| m.status() == Some(200))
        .await;
    caller
        .send(sw_b, &ack_for(&ok, caller, sw_b, call_id, "5000"))
        .await;
    phone.expect_request("ACK").await;
}

/// The agent hangs up; the caller answers the BYE.
async fn agent_hangs_up(p: &Pair, caller: &Ua, phone: &Ua, inv: &Message) {
    let sw_b = udp_addr(&p.b);
    phone.send(sw_b, &bye_from_phone(inv, phone)).await;
    let (bye, _) = caller.expect_request("BYE").await;
    caller
        .send(sw_b, &answer(&bye, 200, "OK", "", caller.addr, ""))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_a_call_stays_on_it_when_its_tenant_moves() {
    let p = pair(port::DEFAULT_RETRY_FOR).await;
    let (caller, phone, inv) = ring_agent_on_b(&p, "mv-1").await;
    agent_answers(&p, &caller, &phone, &inv, "mv-1").await;
    wait_agent(&p.b, "a1", "on call on B", |i| i.state == "on_call").await;

    // The tenant moves to A while the call (its actor on B) goes on: A's agent learns from
    // B's call actor that it is on that call, instead of looking available.
    move_tenant_to_a(&p).await;
    wait_agent(&p.a, "a1", "on the call after the move", |i| {
        i.state == "on_call" && i.detail.as_deref().is_some_and(|d| d.ends_with(" mv-1"))
    })
    .await;
    let info = agent_info(&p.a, "a1").await;
    assert!(!info.offerable, "{info:?}");
    assert_eq!(
        info.detail.as_deref(),
        Some("q0 mv-1"),
        "the call's queue too"
    );
    // Still on the call a moment later: A knows the call runs on B (no false "call gone").
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(agent_info(&p.a, "a1").await.state, "on_call");
    assert_eq!(p.port_a.stats().calls, 1, "A remembers the call's node");

    // The call ends on B: B's call actor tells the agent at its new owner.
    agent_hangs_up(&p, &caller, &phone, &inv).await;
    wait_agent(&p.a, "a1", "available after the call", |i| {
        i.state == "available" && i.calls == 1
    })
    .await;
    let (sa, sb) = (p.port_a.stats(), p.port_b.stats());
    assert!(
        sa.failed.is_empty() && sb.failed.is_empty(),
        "A {sa:?} B {sb:?}"
    );
    assert_eq!(sa.calls, 0, "A forgot the call once it ended: {sa:?}");
    assert!(
        p.b.cc.agent_calls.is_empty(),
        "B's index forgot the agent's call"
    );
    let text = switchyard::metrics::handle().expect("recorder").render();
    for line in [
        "switchyard_agent_resumed_total{tenant=\"cc\",state=\"answered\"}",
        "switchyard_agent_call_lookups_total",
        "switchyard_cluster_messages_sent_total{kind=\"node.find_agent_call\"}",
        "switchyard_cluster_messages_received_total{kind=\"agent.resume\"}",
    ] {
        assert!(text.contains(line), "/metrics has {line}");
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_offered_a_call_stays_offered_when_its_tenant_moves() {
    let p = pair(port::DEFAULT_RETRY_FOR).await;
    let (caller, phone, inv) = ring_agent_on_b(&p, "mv-2").await;

    // The tenant moves while the agent's phone rings: A's agent is offered that call.
    move_tenant_to_a(&p).await;
    wait_agent(&p.a, "a1", "offered after the move", |i| {
        i.state == "offered" && i.detail.as_deref() == Some("q0 mv-2")
    })
    .await;
    assert!(!agent_info(&p.a, "a1").await.offerable);

    // The phone answers: the call on B reports it to the agent's new owner.
    agent_answers(&p, &caller, &phone, &inv, "mv-2").await;
    wait_agent(&p.a, "a1", "on call once answered", |i| {
        i.state == "on_call"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(agent_info(&p.a, "a1").await.state, "on_call");
    agent_hangs_up(&p, &caller, &phone, &inv).await;
    wait_agent(&p.a, "a1", "available after the call", |i| {
        i.state == "available" && i.calls == 1
    })
    .await;
    let text = switchyard::metrics::handle().expect("recorder").render();
    let line = "switchyard_agent_resumed_total{tenant=\"cc\",state=\"offered\"}";
    assert!(text.contains(line), "/metrics has {line}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_lookup_waits_for_a_peer_that_connects_late() {
    let p = pair(port::DEFAULT_RETRY_FOR).await;
    // The call and its agent both run on B (the owner): no message crosses.
    let (caller, phone, inv) = ring_agent_on_b(&p, "mv-3").await;
    agent_answers(&p, &caller, &phone, &inv, "mv-3").await;
    wait_agent(&p.b, "a1", "on call on B", |i| i.state == "on_call").await;

    // The nodes lose each other; then A sees B live again at an address it cannot reach yet
    // (B, not seeing A, does not dial it either).
    p.dir_a.remove_node(&p.b.name);
    p.dir_b.remove_node(&p.a.name);
    assert!(
        wait_until(Duration::from_secs(5), || p.port_a.stats().peers.is_empty()
            && p.port_b.stats().peers.is_empty())
        .await,
        "ports disconnected"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    p.dir_a.set_node(node_info(&p.b.name, closed));

    // A takes the tenant over while B is not connected: its agent's lookup waits for B.
    move_tenant_to_a(&p).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        agent_info(&p.a, "a1").await.state,
        "available",
        "B not asked yet"
    );
    p.dir_a
        .set_node(node_info(&p.b.name, p.port_b.listen_addr()));
    p.dir_b
        .set_node(node_info(&p.a.name, p.port_a.listen_addr()));
    p.wait_connected().await;
    wait_agent(&p.a, "a1", "on the call once B is connected", |i| {
        i.state == "on_call" && i.detail.as_deref() == Some("q0 mv-3")
    })
    .await;

    agent_hangs_up(&p, &caller, &phone, &inv).await;
    wait_agent(&p.a, "a1", "available after the call", |i| {
        i.state == "available" && i.calls == 1
    })
    .await;
    p.stop().await;
}

/// The cluster's TLS: one self-signed certificate for `switchyard.test`, trusted by all.
fn tls() -> port::PortTls {
    let ck = rcgen::generate_simple_self_signed(vec!["switchyard.test".to_string()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    port::PortTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        server_name: rustls_pki_types::ServerName::try_from("switchyard.test").unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_connect_over_tls() {
    let tls = tls();
    let p = pair_with(|a, b| {
        a.tls = Some(tls.clone());
        b.tls = Some(tls);
    })
    .await;
    p.wait_connected().await;
    let join = queue::QueueMsg::Join(queue::Join {
        call_id: Arc::from("tls-1"),
        from: "\"X\" <sip:x@127.0.0.1>".into(),
        user: None,
        priority: 0,
        joined_ms: 0,
        skills: Vec::new(),
    });
    assert!(queue::tell(&p.a.cc, "cc", "q0", join));
    let ids = wait_waiting(&p.b, |ids| !ids.is_empty()).await;
    assert_eq!(ids, vec!["tls-1".to_string()], "crossed over TLS");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_secret_is_refused() {
    let p = pair_with(|a, b| {
        a.retry_for = Duration::from_secs(1);
        b.secret = "another-cluster-entirely".into();
    })
    .await;
    // Dials are retried every 2 s: none gets through the handshake.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(p.port_a.stats().peers.is_empty(), "{:?}", p.port_a.stats());
    assert!(p.port_b.stats().peers.is_empty(), "{:?}", p.port_b.stats());
    assert!(agent::tell(&p.a.cc, "cc", "a1", agent::AgentMsg::Announce));
    let counted = wait_until(Duration::from_secs(5), || {
        p.port_a.stats().failed.get("unreachable") == Some(&1)
    })
    .await;
    assert!(counted, "{:?}", p.port_a.stats());
    assert_eq!(p.port_b.stats().received, 0);
    p.stop().await;
}

/// A trunk's calls go through every node, but one actor on the trunk's owner judges it: an
/// attempt through node A on a trunk whose actor runs on node B reaches B's window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trunk_attempts_through_one_node_reach_the_trunks_owner() {
    use switchyard::actors::trunk::{self, TrunkMsg};
    use switchyard::cluster::trunk_key;
    let gw = Ua::new().await;
    let (ta, tb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg =
        |dir: &std::path::Path| trunk_config(dir, vec![trunk("carrier", gw.addr, "")], "priority");
    let a = start_with(cfg(ta.path())).await;
    let b = start_with(cfg(tb.path())).await;
    // As in cluster mode: the trunk's actor runs on its owner only.
    a.tree.singletons.stop(&trunk_key("carrier")).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || trunk::lookup("carrier", &a.name)
            .is_none())
        .await,
        "node A's trunk actor stopped"
    );
    let (dir_a, dir_b) = (Directory::new(&a.name), Directory::new(&b.name));
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let port_a = port::start(PortConfig::new(
        &a.name,
        listen,
        SECRET,
        dir_a.clone(),
        a.cc.clone(),
    ))
    .await
    .expect("port A starts");
    let port_b = port::start(PortConfig::new(
        &b.name,
        listen,
        SECRET,
        dir_b.clone(),
        b.cc.clone(),
    ))
    .await
    .expect("port B starts");
    for d in [&dir_a, &dir_b] {
        d.set_node(node_info(&a.name, port_a.listen_addr()));
        d.set_node(node_info(&b.name, port_b.listen_addr()));
        d.set_owner(&trunk_key("carrier"), &b.name);
    }
    assert!(
        wait_until(Duration::from_secs(10), || port_a.stats().peers
            == vec![b.name.clone()])
        .await,
        "ports connected"
    );

    // A call through A; the carrier refuses it.
    let (caller, sw) = (Ua::new().await, udp_addr(&a));
    caller
        .send(sw, &invite("tr-remote-1", "9441234", caller.addr, sw))
        .await;
    let (inv, _) = gw.expect_request("INVITE").await;
    gw.send(
        sw,
        &answer(&inv, 503, "Service Unavailable", "gw", gw.addr, ""),
    )
    .await;
    caller
        .expect("the caller's final answer", |m| {
            m.status().is_some_and(|s| s >= 400)
        })
        .await;

    let owner = trunk::lookup("carrier", &b.name).expect("B runs the trunk");
    let deadline = Instant::now() + Duration::from_secs(5);
    let info = loop {
        let info = ractor::call_t!(owner, TrunkMsg::GetInfo, 2000).expect("trunk answers");
        if info.attempts >= 1 || Instant::now() > deadline {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (info.attempts, info.answered),
        (1, 0),
        "B's trunk window counts A's attempt"
    );
    assert!(port_b.stats().received >= 1, "it came over the port");
    port_a.stop().await;
    port_b.stop().await;
    a.shutdown().await;
    b.shutdown().await;
}
