//! The store on a real PostgreSQL server (started per test by `common::pg`): the same
//! migrations as SQLite give the same schema, CDRs and registrations round-trip, nodes
//! migrating at once do not collide, the store writer sends CDRs there, and a phone registered
//! through one node's registrar shows up (and goes away) in another node's Location.
//!
//! Skipped with a loud line when PostgreSQL is not installed, unless `CI` is set.

mod common;

use bytes::Bytes;
use ractor::{Actor, ActorRef};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

use common::pg::Pg;
use switchyard::actors::registrar::{self, Location, RegistrarActor, RegistrarArgs, RegistrarMsg};
use switchyard::actors::store_writer::{self, StoreWriterActor, StoreWriterArgs};
use switchyard::config::{RegistrarConfig, TenantConfig, UserConfig};
use switchyard::routing::auth::Authenticator;
use switchyard::sip::auth::{authorization_value, ha1, Algorithm, Challenge};
use switchyard::sip::message::{HeaderName, Message, Method};
use switchyard::sip::parse::{parse, Framing, Limits};
use switchyard::sip::validate::Passed;
use switchyard::store::registrations::{AorBindings, RegistrationRow};
use switchyard::store::{
    AgentStatsRow, Cdr, CdrLeg, CdrMedia, Database, HangupBy, QueueStatsRow, Store, Synchronous,
    MIGRATIONS,
};
use switchyard::transport::{Handler, Inbound, ListenSpec, Protocol, TransportConfig, Transports};

fn pg_store(url: &str) -> Store {
    Store::connect(&Database::Postgres(url.to_string()), Synchronous::Full).unwrap()
}

fn cdr(n: u32) -> Cdr {
    let start = 1_700_000_000_000 + i64::from(n) * 1000;
    Cdr {
        a_call_id: format!("pg-{n}@127.0.0.1"),
        b_call_id: Some(format!("pg-b-{n}@127.0.0.1")),
        caller: "sip:alice@127.0.0.1".to_string(),
        callee: "1002".to_string(),
        route: Some("10".to_string()),
        target: None,
        start_at: start,
        ringing_at: Some(start + 40),
        answer_at: Some(start + 2_000),
        end_at: start + 62_000,
        duration_ms: 62_000,
        billable_ms: 60_000,
        final_status: 200,
        hangup_by: HangupBy::Callee,
        disconnect_reason: "BYE".to_string(),
        queue: Some("t/sales".to_string()),
        agent: Some("agent7".to_string()),
        wait_ms: Some(1234),
        abandoned: n % 2 == 0,
        trunk: None,
        attempts: Some("a:503,b:answered".to_string()),
        dtmf: Some("12#".to_string()),
        recording: None,
        media: (n % 3 == 0).then_some(CdrMedia {
            mos_a: 4.3,
            mos_b: 4.1,
            loss_a: 0.001,
            loss_b: 0.0,
            jitter_a_ms: 2.5,
            jitter_b_ms: 3.25,
            rtt_ms: Some(20.0),
            packets_a: 3000,
            packets_b: 2990,
        }),
        // Every fourth call was transferred: its chain and three legs (one never answered).
        transfers: (n % 4 == 1).then(|| format!("blind:phone>user:10{n}")),
        tenant: Some("t".to_string()),
        legs: if n % 4 == 1 {
            legs(n, start)
        } else {
            Vec::new()
        },
    }
}

/// Who talked to whom in call `n`: the caller, the agent who transferred it, the target.
fn legs(n: u32, start: i64) -> Vec<CdrLeg> {
    let leg =
        |id: String, role: &str, party: String, answer: Option<i64>, end: i64, why: &str| CdrLeg {
            call_id: id,
            role: role.to_string(),
            party,
            start_at: start,
            answer_at: answer,
            end_at: end,
            end_reason: why.to_string(),
        };
    vec![
        leg(
            format!("pg-{n}@127.0.0.1"),
            "caller",
            "sip:alice@127.0.0.1".into(),
            Some(start),
            start + 62_000,
            "bye",
        ),
        leg(
            format!("pg-b-{n}@127.0.0.1"),
            "callee",
            "user:1002".into(),
            Some(start + 2_000),
            start + 30_000,
            "transferred",
        ),
        leg(
            format!("pg-c-{n}@127.0.0.1"),
            "transfer",
            format!("user:10{n}"),
            None,
            start + 62_000,
            "bye",
        ),
    ]
}

/// The same migrations give both engines the same tables with the same columns in the same
/// order, and the same schema version; connecting again applies nothing twice.
#[test]
fn migrations_give_both_engines_the_same_tables_and_columns() {
    let Some(pg) = Pg::try_start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(&dir.path().join("s.db")).unwrap();
    let postgres = pg_store(&pg.url);
    assert_eq!(postgres.backend(), "postgres");
    let want = sqlite.schema_columns().unwrap();
    let got = postgres.schema_columns().unwrap();
    assert!(want.contains_key("cdrs") && want.contains_key("registrations"));
    assert_eq!(got, want, "PostgreSQL schema differs from SQLite's");
    assert_eq!(postgres.schema_version().unwrap(), MIGRATIONS.len() as i64);
    drop(postgres);
    let again = pg_store(&pg.url);
    assert_eq!(again.schema_version().unwrap(), MIGRATIONS.len() as i64);
    assert_eq!(again.schema_columns().unwrap(), want);
}

/// CDRs, statistics and registrations go through the same queries on PostgreSQL.
#[test]
fn cdrs_stats_and_registrations_round_trip_on_postgres() {
    let Some(pg) = Pg::try_start() else { return };
    let mut store = pg_store(&pg.url);
    let all: Vec<Cdr> = (0..1_000).map(cdr).collect();
    for batch in all.chunks(512) {
        store.insert_cdrs(batch).unwrap();
    }
    assert_eq!(store.count_cdrs().unwrap(), 1_000);
    for n in [0, 1, 3, 511, 512, 513, 999] {
        assert_eq!(
            store
                .get_cdr_by_call_id(&format!("pg-{n}@127.0.0.1"))
                .unwrap(),
            Some(cdr(n)),
            "every field intact"
        );
    }
    let newest = store.list_cdrs(5).unwrap();
    let want: Vec<Cdr> = (995..1_000).rev().map(cdr).collect();
    assert_eq!(newest, want, "newest first, each with its own legs");
    assert_eq!(cdr(997).legs.len(), 3, "the page has a transferred call");
    assert_eq!(store.get_cdr_by_call_id("nope").unwrap(), None);

    store
        .insert_queue_stats(&[QueueStatsRow {
            at: 1,
            tenant: "t".into(),
            queue: "q".into(),
            joined: 3,
            ..Default::default()
        }])
        .unwrap();
    let mut agent = AgentStatsRow {
        tenant: "t".into(),
        agent: "a".into(),
        at: 1,
        state: "available".into(),
        calls: 1,
        talk_ms: 0,
        offers: 1,
        state_ms: "{}".into(),
    };
    store.upsert_agent_stats(&[agent.clone()]).unwrap();
    agent.calls = 2;
    store.upsert_agent_stats(&[agent]).unwrap();

    let row = |user: &str, contact: &str, q: u16, exp: i64| RegistrationRow {
        tenant: "t".into(),
        username: user.into(),
        contact: contact.into(),
        q,
        expires_at_ms: exp,
        call_id: "c@x".into(),
        cseq: 4_000_000_000,
        protocol: "udp".into(),
        remote: "127.0.0.1:5062".into(),
        local: None,
        user_agent: Some("phone".into()),
    };
    store
        .replace_registrations(&[
            AorBindings {
                tenant: "t".into(),
                username: "a".into(),
                rows: vec![
                    row("a", "sip:a@1", 500, 2_000),
                    row("a", "sip:a@2", 1000, 3_000),
                ],
            },
            AorBindings {
                tenant: "t".into(),
                username: "b".into(),
                rows: vec![row("b", "sip:b@1", 1000, 500)],
            },
        ])
        .unwrap();
    assert_eq!(
        store.load_registrations(1_000).unwrap(),
        vec![
            row("a", "sip:a@2", 1000, 3_000),
            row("a", "sip:a@1", 500, 2_000)
        ],
        "unexpired only, highest q first"
    );
    assert_eq!(
        store.load_aor_registrations("t", "a", 2_500).unwrap(),
        vec![row("a", "sip:a@2", 1000, 3_000)]
    );
    store
        .replace_registrations(&[AorBindings {
            tenant: "t".into(),
            username: "a".into(),
            rows: vec![],
        }])
        .unwrap();
    assert!(store
        .load_aor_registrations("t", "a", 0)
        .unwrap()
        .is_empty());
    assert_eq!(store.purge_registrations(1_000).unwrap(), 1, "b's binding");
}

/// Several nodes starting at once on an empty database: each migration is applied exactly
/// once (without the advisory lock two of them create the same table and fail).
#[test]
fn nodes_migrating_at_once_do_not_collide() {
    let Some(pg) = Pg::try_start() else { return };
    const NODES: usize = 4;
    for round in 0..3 {
        let url = pg.create_database(&format!("race{round}"));
        let barrier = Arc::new(Barrier::new(NODES));
        let threads: Vec<_> = (0..NODES)
            .map(|_| {
                let (url, barrier) = (url.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    Store::connect(&Database::Postgres(url), Synchronous::Full)
                        .map(|s| s.schema_version().unwrap())
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        for t in threads {
            assert_eq!(
                t.join().unwrap(),
                Ok(MIGRATIONS.len() as i64),
                "round {round}"
            );
        }
        let store = pg_store(&url);
        assert_eq!(store.count_cdrs().unwrap(), 0);
    }
}

/// The store writer with CDRs in PostgreSQL: they land there, not in the node's SQLite file
/// (which keeps the recording index).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_writer_commits_cdrs_to_postgres() {
    let Some(pg) = Pg::try_start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.db");
    let args = StoreWriterArgs::with_database(&path, Database::Postgres(pg.url.clone()));
    let (writer, _) = Actor::spawn(None, StoreWriterActor, args).await.unwrap();
    for n in 0..100 {
        store_writer::write_cdr(&writer, cdr(n)).unwrap();
    }
    assert_eq!(store_writer::flush(&writer).await.unwrap(), 100);
    store_writer::shutdown(&writer).await.unwrap();
    let url = pg.url.clone();
    let (in_pg, transferred) = tokio::task::spawn_blocking(move || {
        let store = pg_store(&url);
        let transferred = store.get_cdr_by_call_id("pg-5@127.0.0.1").unwrap();
        (store.count_cdrs().unwrap(), transferred)
    })
    .await
    .unwrap();
    assert_eq!(in_pg, 100);
    assert_eq!(transferred, Some(cdr(5)), "legs written with their CDR");
    assert_eq!(Store::open(&path).unwrap().count_cdrs().unwrap(), 0);
}

// ---- two registrars, two nodes, one database ----

/// Forwards REGISTERs to the registrar of node "a".
#[derive(Default)]
struct Fwd(Mutex<Option<ActorRef<RegistrarMsg>>>);

impl Handler for Fwd {
    fn handle(&self, inbound: Inbound<Passed>) {
        if inbound.msg.method() != Some(&Method::Register) {
            return;
        }
        if let Some(a) = self.0.lock().unwrap().as_ref() {
            let _ = registrar::register(a, inbound.into_plain());
        }
    }
}

fn tenant() -> TenantConfig {
    TenantConfig {
        id: "t".into(),
        domain: "t.test".into(),
        realm: None,
        users: vec![UserConfig {
            username: "alice".into(),
            ha1_md5: Some(ha1(Algorithm::Md5, "alice", "t.test", "pw")),
            ha1_sha256: None,
            outbound: None,
        }],
        users_csv: None,
        ..Default::default()
    }
}

fn registrar_config() -> RegistrarConfig {
    RegistrarConfig {
        min_expires_secs: 1,
        max_expires_secs: 3600,
        default_expires_secs: 600,
        ..RegistrarConfig::default()
    }
}

/// One node's registrar on the shared database.
struct Node {
    location: Arc<Location>,
    actor: ActorRef<RegistrarMsg>,
    /// What the Location told its reachability observer, in order.
    seen: Arc<Mutex<Vec<(String, bool)>>>,
}

async fn node(name: &str, url: &str, transports: Arc<OnceLock<Transports>>) -> Node {
    let config = registrar_config();
    let auth = Arc::new(Authenticator::new(&config, &[tenant()]).unwrap());
    let location = Arc::new(Location::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    location.observe(Arc::new(move |key, reachable| {
        log.lock().unwrap().push((key.user.clone(), reachable));
    }));
    // The path is unused: the database is PostgreSQL.
    let mut args = RegistrarArgs::new(config, auth, location.clone(), transports, "unused.db");
    args.database = Database::Postgres(url.to_string());
    args.node = name.to_string();
    let (actor, _) = Actor::spawn(None, RegistrarActor, args).await.unwrap();
    Node {
        location,
        actor,
        seen,
    }
}

/// A minimal phone: REGISTERs over UDP with digest MD5.
struct Phone {
    sock: UdpSocket,
    server: SocketAddr,
    cseq: u32,
}

impl Phone {
    async fn request(&mut self, expires: u32, authz: Option<String>) -> Message {
        self.cseq += 1;
        let addr = self.sock.local_addr().unwrap();
        let mut s = format!(
            "REGISTER sip:t.test SIP/2.0\r\nVia: SIP/2.0/UDP {addr};branch=z9hG4bK-{c};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@t.test>;tag=p\r\nTo: <sip:alice@t.test>\r\n\
             Call-ID: pg-phone@127.0.0.1\r\nCSeq: {c} REGISTER\r\n\
             Contact: <sip:alice@{addr}>\r\nExpires: {expires}\r\n",
            c = self.cseq
        );
        if let Some(a) = authz {
            s.push_str(&format!("Authorization: {a}\r\n"));
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        self.sock.send_to(s.as_bytes(), self.server).await.unwrap();
        let mut buf = vec![0u8; 65536];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), self.sock.recv_from(&mut buf))
            .await
            .expect("a response within 5 s")
            .unwrap();
        parse(
            Bytes::copy_from_slice(&buf[..n]),
            Framing::Datagram,
            &Limits::default(),
        )
        .unwrap()
    }

    /// REGISTER with `expires` (0 removes), answering the challenge; returns the status.
    async fn register(&mut self, expires: u32) -> u16 {
        let first = self.request(expires, None).await;
        assert_eq!(first.status(), Some(401), "{first}");
        let ch = first
            .headers_named(HeaderName::WwwAuthenticate)
            .map(|h| Challenge::parse(&h.value).unwrap())
            .find(|c| c.algorithm == Algorithm::Md5)
            .expect("MD5 offered");
        let h = ha1(Algorithm::Md5, "alice", "t.test", "pw");
        let authz = authorization_value(&ch, "alice", &h, "REGISTER", "sip:t.test", 1, "0a4f");
        self.request(expires, Some(authz)).await.status().unwrap()
    }
}

/// Polls `f` every 20 ms for at most `wait`.
async fn within(wait: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// A phone registered through node "a" is in node "b"'s Location within 2 s, and its removal
/// too; b's reachability observer (the agents) hears both. After every connection is cut, the
/// listeners reconnect and catch up with what changed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_registered_through_one_node_reach_the_other() {
    let Some(pg) = Pg::try_start() else { return };
    let url = pg.create_database("cluster");
    let fwd = Arc::new(Fwd::default());
    let specs: [ListenSpec; 1] = ["udp:127.0.0.1:0".parse().unwrap()];
    let transports = Transports::start(&specs, TransportConfig::default(), fwd.clone())
        .await
        .unwrap();
    let server = transports.advertised(Protocol::Udp).unwrap();
    let slot = Arc::new(OnceLock::new());
    let _ = slot.set(transports);
    let a = node("a", &url, slot).await;
    *fwd.0.lock().unwrap() = Some(a.actor.clone());
    // b never receives a REGISTER: everything it knows comes through the database.
    let b = node("b", &url, Arc::new(OnceLock::new())).await;

    let mut phone = Phone {
        sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        server,
        cseq: 0,
    };
    let contact = format!("sip:alice@{}", phone.sock.local_addr().unwrap());
    assert_eq!(phone.register(300).await, 200);
    assert_eq!(a.location.lookup("t", "alice").len(), 1);
    let started = Instant::now();
    assert!(
        within(Duration::from_secs(2), || b
            .location
            .is_reachable("t", "alice"))
        .await,
        "node b did not learn node a's binding within 2 s"
    );
    println!("binding reached node b after {:?}", started.elapsed());
    let on_b = b.location.lookup("t", "alice");
    assert_eq!(on_b.len(), 1);
    assert_eq!(on_b[0].contact, Bytes::from(contact.clone()));
    assert_eq!(
        on_b[0].source.remote,
        phone.sock.local_addr().unwrap(),
        "b reaches the phone where it registered from"
    );

    assert_eq!(phone.register(0).await, 200, "unregister");
    assert!(a.location.lookup("t", "alice").is_empty());
    assert!(
        within(Duration::from_secs(2), || !b
            .location
            .is_reachable("t", "alice"))
        .await,
        "node b did not learn the removal within 2 s"
    );
    assert_eq!(
        *b.seen.lock().unwrap(),
        vec![("alice".to_string(), true), ("alice".to_string(), false)],
        "b's agents are told the phone came and went"
    );

    // A change b is never notified of (written without NOTIFY, as if sent while b was
    // disconnected), then every connection cut (a failover, a restarted server): b's
    // listener reconnects, reloads everything and so catches up.
    let unnotified = "sip:alice@127.0.0.1:5999";
    let url2 = url.clone();
    tokio::task::spawn_blocking(move || {
        let expires_at_ms = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap()
            + 300_000;
        pg_store(&url2)
            .replace_registrations(&[AorBindings {
                tenant: "t".into(),
                username: "alice".into(),
                rows: vec![RegistrationRow {
                    tenant: "t".into(),
                    username: "alice".into(),
                    contact: unnotified.into(),
                    q: 1000,
                    expires_at_ms,
                    call_id: "elsewhere@127.0.0.1".into(),
                    cseq: 1,
                    protocol: "udp".into(),
                    remote: "127.0.0.1:5999".into(),
                    local: None,
                    user_agent: None,
                }],
            }])
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        !within(Duration::from_millis(300), || b
            .location
            .is_reachable("t", "alice"))
        .await,
        "nothing tells b before its connection is cut"
    );
    pg.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = 'cluster' AND pid <> pg_backend_pid()",
    );
    assert!(
        within(Duration::from_secs(5), || b
            .location
            .is_reachable("t", "alice"))
        .await,
        "node b did not catch up after its connection was cut"
    );
    assert_eq!(
        b.location.lookup("t", "alice")[0].contact,
        Bytes::from(unnotified)
    );

    a.actor.stop_and_wait(None, None).await.unwrap();
    b.actor.stop_and_wait(None, None).await.unwrap();
}

/// Frequency caps on the cluster's PostgreSQL (issue 20): eight connections (eight nodes'
/// risk desks) race for a number whose cap allows three calls; the per-number advisory lock
/// lets exactly three through, and every connection sees the same count.
#[test]
fn a_frequency_cap_holds_across_connections_racing_for_one_number() {
    use switchyard::store::risk::Counted;
    let Some(pg) = Pg::try_start() else { return };
    pg_store(&pg.url); // migrate once
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (url, barrier) = (pg.url.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut store = pg_store(&url);
                let counted = [Counted::Route {
                    route: "uk",
                    since_ms: 0,
                }];
                barrier.wait();
                let (_, go) = store
                    .risk_attempt("441234", ("", "uk"), &counted, 1_000, |c| c[0] < 3)
                    .unwrap();
                go
            })
        })
        .collect();
    let allowed = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|&go| go)
        .count();
    assert_eq!(allowed, 3);
    let mut store = pg_store(&pg.url);
    let counted = [Counted::Tenant {
        tenant: "",
        since_ms: 0,
    }];
    let (counts, _) = store
        .risk_attempt("441234", ("", "uk"), &counted, 1_000, |_| false)
        .unwrap();
    assert_eq!(counts, [3]);
}

/// Risk lists on the cluster's PostgreSQL: a change made through one node's desk reaches
/// another node's desk at its next refresh (the nodes poll the lists' version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_risk_list_change_on_one_node_reaches_another() {
    use switchyard::actors::risk::{Attempt, Origin, RiskDesk};
    use switchyard::routing::risk::{Entry, ListKind, Rule, Scope};
    let Some(pg) = Pg::try_start() else { return };
    let db = Database::Postgres(pg.url.clone());
    let open = |db: Database| async move {
        tokio::task::spawn_blocking(move || RiskDesk::open(&Default::default(), &db).unwrap())
            .await
            .unwrap()
    };
    let a = Arc::new(open(db.clone()).await);
    let b = Arc::new(open(db.clone()).await);
    a.change_list(
        Scope::Platform,
        ListKind::Black,
        vec![Entry::parse("900*").unwrap()],
        vec![],
    )
    .await
    .unwrap();
    let attempt = Attempt {
        tenant: None,
        number: "9001",
        route: None,
        origin: Origin::Phone,
        zone: None,
    };
    assert!(b.check(attempt).await.allow, "not refreshed yet");
    let b2 = b.clone();
    assert!(tokio::task::spawn_blocking(move || b2.refresh().unwrap())
        .await
        .unwrap());
    assert_eq!(b.check(attempt).await.rule, Rule::PlatformBlacklist);
    let b2 = b.clone();
    assert!(!tokio::task::spawn_blocking(move || b2.refresh().unwrap())
        .await
        .unwrap());
}
