//! The registrar end to end over real UDP on loopback: a `RegistrarActor` behind real
//! transports, and test phones that register with digest MD5 and SHA-256.

use bytes::Bytes;
use ractor::{Actor, ActorRef};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

use switchyard::actors::registrar::{self, Location, RegistrarActor, RegistrarArgs, RegistrarMsg};
use switchyard::config::{RegistrarConfig, TenantConfig, UserConfig};
use switchyard::routing::auth::Authenticator;
use switchyard::sip::auth::{authorization_value, ha1, Algorithm, Challenge};
use switchyard::sip::message::{HeaderName, Message, Method};
use switchyard::sip::parse::{parse, Framing, Limits};
use switchyard::transport::{Handler, Inbound, ListenSpec, Protocol, TransportConfig, Transports};

/// Forwards REGISTERs to whichever registrar actor is current.
#[derive(Default)]
struct Fwd(Mutex<Option<ActorRef<RegistrarMsg>>>);

impl Handler for Fwd {
    fn handle(&self, inbound: Inbound) {
        if inbound.msg.method() != Some(&Method::Register) {
            return;
        }
        if let Some(a) = self.0.lock().unwrap().as_ref() {
            let _ = registrar::register(a, inbound);
        }
    }
}

struct Env {
    _dir: tempfile::TempDir,
    db: PathBuf,
    config: RegistrarConfig,
    auth: Arc<Authenticator>,
    location: Arc<Location>,
    slot: Arc<OnceLock<Transports>>,
    fwd: Arc<Fwd>,
    server: SocketAddr,
    tcp_server: SocketAddr,
    actor: ActorRef<RegistrarMsg>,
}

fn tenant(id: &str, domain: &str, users: &[(&str, &str)]) -> TenantConfig {
    TenantConfig {
        id: id.into(),
        domain: domain.into(),
        realm: None,
        users: users
            .iter()
            .map(|(u, pw)| UserConfig {
                username: u.to_string(),
                ha1_md5: Some(ha1(Algorithm::Md5, u, domain, pw)),
                ha1_sha256: Some(ha1(Algorithm::Sha256, u, domain, pw)),
                outbound: None,
            })
            .collect(),
        users_csv: None,
        ..Default::default()
    }
}

fn base_config() -> RegistrarConfig {
    RegistrarConfig {
        min_expires_secs: 1,
        max_expires_secs: 3600,
        default_expires_secs: 600,
        ..RegistrarConfig::default()
    }
}

async fn spawn_actor(
    env_parts: (
        &RegistrarConfig,
        &Arc<Authenticator>,
        &Arc<Location>,
        &Arc<OnceLock<Transports>>,
        &PathBuf,
    ),
) -> ActorRef<RegistrarMsg> {
    let (config, auth, location, slot, db) = env_parts;
    let args = RegistrarArgs::new(
        config.clone(),
        auth.clone(),
        location.clone(),
        slot.clone(),
        db.clone(),
    );
    let (actor, _) = Actor::spawn(None, RegistrarActor, args).await.unwrap();
    actor
}

async fn setup(config: RegistrarConfig, tenants: &[TenantConfig]) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("switchyard.db");
    let auth = Arc::new(Authenticator::new(&config, tenants).unwrap());
    let location = Arc::new(Location::new());
    let slot = Arc::new(OnceLock::new());
    let fwd = Arc::new(Fwd::default());
    let specs: [ListenSpec; 2] = [
        "udp:127.0.0.1:0".parse().unwrap(),
        "tcp:127.0.0.1:0".parse().unwrap(),
    ];
    let transports = Transports::start(&specs, TransportConfig::default(), fwd.clone())
        .await
        .unwrap();
    let server = transports.advertised(Protocol::Udp).unwrap();
    let tcp_server = transports.advertised(Protocol::Tcp).unwrap();
    let _ = slot.set(transports);
    let actor = spawn_actor((&config, &auth, &location, &slot, &db)).await;
    *fwd.0.lock().unwrap() = Some(actor.clone());
    Env {
        _dir: dir,
        db,
        config,
        auth,
        location,
        slot,
        fwd,
        server,
        tcp_server,
        actor,
    }
}

impl Env {
    /// Starts a new registrar on the same database with a fresh Location, as a restarted
    /// process would (after the old one was stopped: its writer commits on stop).
    async fn start_again(&mut self) {
        self.location = Arc::new(Location::new());
        self.actor = spawn_actor((
            &self.config,
            &self.auth,
            &self.location,
            &self.slot,
            &self.db,
        ))
        .await;
        *self.fwd.0.lock().unwrap() = Some(self.actor.clone());
    }
}

/// A phone: a UDP socket, an AOR, a password and the digest state a real phone keeps.
struct Phone {
    sock: UdpSocket,
    addr: SocketAddr,
    server: SocketAddr,
    user: String,
    domain: String,
    password: String,
    alg: Algorithm,
    call_id: String,
    cseq: u32,
    challenge: Option<Challenge>,
    nc: u32,
    branch: u32,
    /// The last request as sent, to retransmit it.
    last: String,
}

impl Phone {
    async fn new(env: &Env, user: &str, domain: &str, password: &str, alg: Algorithm) -> Phone {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        Phone {
            sock,
            addr,
            server: env.server,
            user: user.into(),
            domain: domain.into(),
            password: password.into(),
            alg,
            call_id: format!("{}-{}@127.0.0.1", user, addr.port()),
            cseq: 0,
            challenge: None,
            nc: 0,
            branch: 0,
            last: String::new(),
        }
    }

    fn contact(&self, tag: &str) -> String {
        format!("<sip:{}@{};line={tag}>", self.user, self.addr)
    }

    /// The Authorization value for the next request with the current challenge.
    fn authorization(&mut self) -> Option<String> {
        let ch = self.challenge.clone()?;
        self.nc += 1;
        let h = ha1(ch.algorithm, &self.user, &ch.realm, &self.password);
        let uri = format!("sip:{}", self.domain);
        Some(authorization_value(
            &ch, &self.user, &h, "REGISTER", &uri, self.nc, "0a4f113b",
        ))
    }

    /// Sends one REGISTER (next CSeq, new branch) and returns the response.
    async fn send(&mut self, headers: &[(&str, String)], authz: Option<String>) -> Message {
        self.cseq += 1;
        self.branch += 1;
        let mut s = format!(
            "REGISTER sip:{d} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-{b}-{p};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{u}@{d}>;tag=ph{p}\r\nTo: <sip:{u}@{d}>\r\nCall-ID: {c}\r\nCSeq: {q} REGISTER\r\nUser-Agent: test-phone\r\n",
            d = self.domain,
            a = self.addr,
            b = self.branch,
            p = self.addr.port(),
            u = self.user,
            c = self.call_id,
            q = self.cseq,
        );
        for (n, v) in headers {
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(a) = authz {
            s.push_str(&format!("Authorization: {a}\r\n"));
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        self.sock.send_to(s.as_bytes(), self.server).await.unwrap();
        self.last = s;
        self.recv().await
    }

    /// Sends the last request again, byte for byte (a UDP retransmission).
    async fn retransmit(&mut self) -> Message {
        self.sock
            .send_to(self.last.as_bytes(), self.server)
            .await
            .unwrap();
        self.recv().await
    }

    async fn recv(&self) -> Message {
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

    /// Takes the challenge for this phone's algorithm from a 401.
    fn take_challenge(&mut self, resp: &Message) -> Challenge {
        assert_eq!(resp.status(), Some(401), "{resp}");
        let offered: Vec<Challenge> = resp
            .headers_named(HeaderName::WwwAuthenticate)
            .map(|h| Challenge::parse(&h.value).unwrap())
            .collect();
        assert_eq!(
            offered.first().map(|c| c.algorithm),
            Some(Algorithm::Sha256),
            "SHA-256 is offered first"
        );
        let ch = offered
            .into_iter()
            .find(|c| c.algorithm == self.alg)
            .expect("the phone's algorithm is offered");
        self.challenge = Some(ch.clone());
        self.nc = 0;
        ch
    }

    /// REGISTER as a phone does: with the credentials it holds, and once more after a 401.
    async fn register(&mut self, headers: &[(&str, String)]) -> Message {
        let authz = self.authorization();
        let resp = self.send(headers, authz).await;
        if resp.status() != Some(401) {
            return resp;
        }
        self.take_challenge(&resp);
        let authz = self.authorization();
        self.send(headers, authz).await
    }
}

fn contacts(resp: &Message) -> Vec<String> {
    resp.values(HeaderName::Contact)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .collect()
}

async fn wait_until(wait: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

#[tokio::test]
async fn md5_and_sha256_register_with_q_values_and_flow_source() {
    let env = setup(base_config(), &[tenant("a", "a.test", &[("alice", "pw")])]).await;
    let mut sha = Phone::new(&env, "alice", "a.test", "pw", Algorithm::Sha256).await;
    // First REGISTER has no credentials: 401 with SHA-256 and MD5 challenges.
    let r = sha.send(&[("Contact", sha.contact("1"))], None).await;
    assert_eq!(r.status(), Some(401));
    sha.take_challenge(&r);
    let c = sha.contact("1");
    let authz = sha.authorization();
    let r = sha
        .send(
            &[("Contact", format!("{c};q=0.5")), ("Expires", "300".into())],
            authz,
        )
        .await;
    assert_eq!(r.status(), Some(200), "{r}");
    assert_eq!(contacts(&r), [format!("{c};expires=300;q=0.5")]);
    assert!(r.value(HeaderName::Date).is_some(), "200 carries a Date");
    assert!(r.to().unwrap().tag().is_some());

    let mut md5 = Phone::new(&env, "alice", "a.test", "pw", Algorithm::Md5).await;
    let c2 = md5.contact("2");
    let r = md5
        .register(&[("Contact", format!("{c2};expires=120"))])
        .await;
    assert_eq!(r.status(), Some(200), "{r}");
    let listed = contacts(&r);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed[0].starts_with(&c2), "q=1 first: {listed:?}");
    assert!(listed[0].ends_with(";expires=120"), "{listed:?}");

    // Call routing reads the location service directly: highest q first, with the source
    // each REGISTER came from.
    let b = env.location.lookup("a", "alice");
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].q, 1000);
    assert_eq!(b[0].source.remote, md5.addr);
    assert_eq!(b[0].source.protocol, Protocol::Udp);
    assert_eq!(b[1].q, 500);
    assert_eq!(b[1].dest().addr, sha.addr);
    assert_eq!(b[1].user_agent.as_deref(), Some(&b"test-phone"[..]));
    assert_eq!(env.location.count("a"), 2);
    assert_eq!(
        registrar::get_bindings(&env.actor, "a", "alice")
            .await
            .unwrap(),
        b
    );
    // A query (no Contact) lists the bindings without changing them.
    let r = md5.register(&[]).await;
    assert_eq!(contacts(&r).len(), 2);
    env.actor.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test]
async fn too_brief_unregister_one_and_star() {
    let mut config = base_config();
    config.min_expires_secs = 60;
    let env = setup(config, &[tenant("a", "a.test", &[("alice", "pw")])]).await;
    let mut p = Phone::new(&env, "alice", "a.test", "pw", Algorithm::Sha256).await;
    let r = p
        .register(&[("Contact", p.contact("1")), ("Expires", "30".into())])
        .await;
    assert_eq!(r.status(), Some(423));
    assert_eq!(r.value(HeaderName::MinExpires).unwrap().as_ref(), b"60");
    assert!(env.location.lookup("a", "alice").is_empty());

    let both = format!("{}, {};q=0.1", p.contact("1"), p.contact("2"));
    let r = p
        .register(&[("Contact", both), ("Expires", "90".into())])
        .await;
    assert_eq!(contacts(&r).len(), 2, "{r}");
    // Un-register one.
    let r = p
        .register(&[("Contact", format!("{};expires=0", p.contact("2")))])
        .await;
    assert_eq!(r.status(), Some(200));
    assert_eq!(contacts(&r), [format!("{};expires=90", p.contact("1"))]);
    // `*` needs Expires: 0.
    let r = p.register(&[("Contact", "*".into())]).await;
    assert_eq!(r.status(), Some(400));
    let r = p
        .register(&[("Contact", "*".into()), ("Expires", "0".into())])
        .await;
    assert_eq!(r.status(), Some(200));
    assert!(contacts(&r).is_empty());
    assert!(env.location.lookup("a", "alice").is_empty());
    assert_eq!(env.location.count("a"), 0);
    env.actor.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test]
async fn lower_cseq_with_the_same_call_id_is_500() {
    let env = setup(base_config(), &[tenant("a", "a.test", &[("alice", "pw")])]).await;
    let mut p = Phone::new(&env, "alice", "a.test", "pw", Algorithm::Md5).await;
    p.cseq = 10;
    let r = p.register(&[("Contact", p.contact("1"))]).await;
    assert_eq!(r.status(), Some(200));
    p.cseq = 3;
    let r = p
        .register(&[("Contact", format!("{};expires=0", p.contact("1")))])
        .await;
    assert_eq!(r.status(), Some(500), "{r}");
    assert_eq!(
        env.location.lookup("a", "alice").len(),
        1,
        "nothing changed"
    );
    // A retransmission of a processed REGISTER (same branch, Call-ID and CSeq) gets the
    // same response again, not a 500 for its equal CSeq.
    p.cseq = 20;
    let first = p.register(&[("Contact", p.contact("1"))]).await;
    assert_eq!(first.status(), Some(200));
    let again = p.retransmit().await;
    assert_eq!(again.status(), Some(200), "{again}");
    assert_eq!(again.to().unwrap().tag(), first.to().unwrap().tag());
    env.actor.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test]
async fn ten_wrong_passwords_lock_the_source_until_the_lock_lifts() {
    let mut config = base_config();
    config.max_auth_failures = 10;
    config.lock_secs = 1;
    let env = setup(config, &[tenant("a", "a.test", &[("alice", "pw")])]).await;
    let mut p = Phone::new(&env, "alice", "a.test", "wrong", Algorithm::Sha256).await;
    let contact = [("Contact", p.contact("1"))];
    let r = p.send(&contact, None).await;
    p.take_challenge(&r);
    for i in 1..10 {
        let a = p.authorization();
        let r = p.send(&contact, a).await;
        assert_eq!(r.status(), Some(401), "failure {i} is challenged again");
        p.take_challenge(&r);
    }
    let a = p.authorization();
    let r = p.send(&contact, a).await;
    assert_eq!(r.status(), Some(403), "the 10th failure locks: {r}");
    let locked_at = Instant::now();
    // The right password is refused while the lock holds.
    p.password = "pw".into();
    let a = p.authorization();
    let r = p.send(&contact, a).await;
    assert_eq!(r.status(), Some(403), "{r}");
    // Then it lifts: poll until the phone gets in.
    let mut ok_after = None;
    while locked_at.elapsed() < Duration::from_secs(5) {
        let r = p.register(&contact).await;
        if r.status() == Some(200) {
            ok_after = Some(locked_at.elapsed());
            break;
        }
        assert_eq!(r.status(), Some(403), "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ok_after = ok_after.expect("the lock lifts within 5 s");
    assert!(
        ok_after >= Duration::from_millis(800),
        "the lock held for about lock_secs: {ok_after:?}"
    );
    assert_eq!(env.location.lookup("a", "alice").len(), 1);
    env.actor.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test]
async fn stale_nonce_and_nonce_count_replay_are_challenged() {
    let mut config = base_config();
    config.nonce_ttl_secs = 1;
    let env = setup(config, &[tenant("a", "a.test", &[("alice", "pw")])]).await;
    let mut p = Phone::new(&env, "alice", "a.test", "pw", Algorithm::Sha256).await;
    let contact = [("Contact", p.contact("1"))];
    let r = p.register(&contact).await;
    assert_eq!(r.status(), Some(200));
    // Replay: the same nonce count again (a captured request sent anew).
    p.nc -= 1;
    let a = p.authorization();
    let r = p.send(&contact, a).await;
    assert_eq!(r.status(), Some(401), "nc replay: {r}");
    let ch = Challenge::parse(r.value(HeaderName::WwwAuthenticate).unwrap()).unwrap();
    assert!(!ch.stale);
    // A higher count on the same nonce is fine while it is fresh.
    let a = p.authorization();
    let r = p.send(&contact, a).await;
    assert_eq!(r.status(), Some(200), "{r}");
    // Once the nonce is older than its TTL: 401 with stale=true (poll: time must pass).
    let started = Instant::now();
    let stale = loop {
        assert!(started.elapsed() < Duration::from_secs(5), "never stale");
        let a = p.authorization();
        let r = p.send(&contact, a).await;
        if r.status() == Some(401) {
            break r;
        }
        assert_eq!(r.status(), Some(200));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let offered: Vec<Challenge> = stale
        .headers_named(HeaderName::WwwAuthenticate)
        .map(|h| Challenge::parse(&h.value).unwrap())
        .collect();
    assert!(offered.iter().all(|c| c.stale), "{stale}");
    // The phone retries with the new nonce at once and gets in.
    p.take_challenge(&stale);
    let a = p.authorization();
    assert_eq!(p.send(&contact, a).await.status(), Some(200));
    env.actor.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test]
async fn bindings_survive_a_restart_and_expire_on_time() {
    let mut env = setup(base_config(), &[tenant("a", "a.test", &[("alice", "pw")])]).await;
    let mut p = Phone::new(&env, "alice", "a.test", "pw", Algorithm::Md5).await;
    let list = format!(
        "{};expires=3600, {};expires=1",
        p.contact("long"),
        p.contact("short")
    );
    let r = p.register(&[("Contact", list)]).await;
    assert_eq!(contacts(&r).len(), 2, "{r}");
    let registered = Instant::now();
    // The short binding disappears from lookup on time, and the sweep removes it.
    assert!(
        wait_until(Duration::from_secs(3), || env
            .location
            .lookup("a", "alice")
            .len()
            == 1)
        .await
    );
    assert!(
        registered.elapsed() >= Duration::from_millis(500),
        "not before its expiry"
    );
    assert!(wait_until(Duration::from_secs(3), || env.location.count("a") == 1).await);

    // Register another short one, stop the actor before it expires, restart after.
    let r = p
        .register(&[("Contact", format!("{};expires=1", p.contact("short2")))])
        .await;
    assert_eq!(contacts(&r).len(), 2);
    let short2_at = Instant::now();
    env.actor.stop_and_wait(None, None).await.unwrap();
    while short2_at.elapsed() < Duration::from_millis(1_100) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.start_again().await;
    let b = env.location.lookup("a", "alice");
    assert_eq!(b.len(), 1, "the unexpired binding is back: {b:?}");
    assert!(String::from_utf8_lossy(&b[0].contact).contains("line=long"));
    assert_eq!(b[0].source.remote, p.addr, "its source address is kept");
    assert_eq!(b[0].source.conn, None);
    assert_eq!(
        env.location.count("a"),
        1,
        "the expired one was not reloaded"
    );
    // The restarted registrar serves it: a query lists it with its remaining time.
    let r = p.register(&[]).await;
    let listed = contacts(&r);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].contains("line=long"));
    env.actor.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test]
async fn tenants_are_isolated() {
    let env = setup(
        base_config(),
        &[
            tenant("a", "a.test", &[("alice", "pw-a")]),
            tenant("b", "b.test", &[("alice", "pw-b")]),
        ],
    )
    .await;
    let mut pa = Phone::new(&env, "alice", "a.test", "pw-a", Algorithm::Sha256).await;
    let mut pb = Phone::new(&env, "alice", "b.test", "pw-b", Algorithm::Md5).await;
    assert_eq!(
        pa.register(&[("Contact", pa.contact("a"))]).await.status(),
        Some(200)
    );
    let r = pb.register(&[("Contact", pb.contact("b"))]).await;
    assert_eq!(r.status(), Some(200));
    assert_eq!(contacts(&r).len(), 1, "tenant b sees only its own alice");
    let a = env.location.lookup("a", "alice");
    let b = env.location.lookup("b", "alice");
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_eq!(a[0].source.remote, pa.addr);
    assert_eq!(b[0].source.remote, pb.addr);
    // Tenant a's password does not open tenant b's alice.
    let mut wrong = Phone::new(&env, "alice", "b.test", "pw-a", Algorithm::Sha256).await;
    let r = wrong.register(&[("Contact", wrong.contact("x"))]).await;
    assert_eq!(r.status(), Some(401));
    // An unknown domain is not ours.
    let mut stranger = Phone::new(&env, "alice", "c.test", "pw-a", Algorithm::Sha256).await;
    let r = stranger
        .send(&[("Contact", stranger.contact("x"))], None)
        .await;
    assert_eq!(r.status(), Some(404));
    assert_eq!((env.location.count("a"), env.location.count("b")), (1, 1));
    env.actor.stop_and_wait(None, None).await.unwrap();
}

/// Not a correctness test: 20,000 users of one tenant register once each (with a nonce
/// they already hold, as refreshing phones do) through real UDP, 200 in flight; prints the
/// rate, then checks every binding reached the location service and the database. Run with
/// `cargo test --test registrar twenty_thousand -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn twenty_thousand_users_register() {
    use switchyard::sip::auth::NonceKey;
    const USERS: usize = 20_000;
    const WINDOW: usize = 200;
    let users: Vec<(String, String)> = (0..USERS)
        .map(|i| (format!("u{i}"), format!("pw{i}")))
        .collect();
    let t = TenantConfig {
        id: "big".into(),
        domain: "big.test".into(),
        realm: None,
        users: users
            .iter()
            .map(|(u, pw)| UserConfig {
                username: u.clone(),
                ha1_md5: None,
                ha1_sha256: Some(ha1(Algorithm::Sha256, u, "big.test", pw)),
                outbound: None,
            })
            .collect(),
        users_csv: None,
        ..Default::default()
    };
    let config = base_config();
    let key = NonceKey::new([9; 32]);
    let mut env = setup(config.clone(), &[]).await;
    // Swap in an authenticator whose nonce key the test knows, and a registrar using it.
    env.actor.stop_and_wait(None, None).await.unwrap();
    env.auth = Arc::new(Authenticator::with_key(&config, &[t], key.clone()).unwrap());
    env.start_again().await;

    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let requests: Vec<String> = users
        .iter()
        .enumerate()
        .map(|(i, (u, pw))| {
            let ch = Challenge {
                realm: "big.test".into(),
                nonce: key.issue(now_ms),
                opaque: None,
                algorithm: Algorithm::Sha256,
                stale: false,
            };
            let h = ha1(Algorithm::Sha256, u, "big.test", pw);
            let a = authorization_value(&ch, u, &h, "REGISTER", "sip:big.test", 1, "c");
            format!(
                "REGISTER sip:big.test SIP/2.0\r\nVia: SIP/2.0/UDP {addr};branch=z9hG4bK-{i};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{u}@big.test>;tag={i}\r\nTo: <sip:{u}@big.test>\r\nCall-ID: {i}@load\r\nCSeq: 1 REGISTER\r\nContact: <sip:{u}@{addr}>\r\nExpires: 600\r\nAuthorization: {a}\r\nContent-Length: 0\r\n\r\n"
            )
        })
        .collect();
    let started = Instant::now();
    let (mut sent, mut ok) = (0usize, 0usize);
    let mut buf = vec![0u8; 65536];
    while ok < USERS {
        while sent < USERS && sent - ok < WINDOW {
            sock.send_to(requests[sent].as_bytes(), env.server)
                .await
                .unwrap();
            sent += 1;
        }
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("responses keep coming")
            .unwrap();
        assert!(
            buf[..n].starts_with(b"SIP/2.0 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        ok += 1;
    }
    let elapsed = started.elapsed();
    println!(
        "{USERS} REGISTERs in {elapsed:?}: {:.0}/s (debug build unless --release)",
        USERS as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(env.location.count("big"), USERS);
    let flushed = Instant::now();
    registrar::flush(&env.actor).await.unwrap();
    println!("final flush {:?}", flushed.elapsed());
    let store = switchyard::store::Store::open(&env.db).unwrap();
    assert_eq!(store.load_registrations(0).unwrap().len(), USERS);
    env.actor.stop_and_wait(None, None).await.unwrap();
}

/// Reads one SIP message from a stream (the registrar's responses have no body).
async fn read_stream_message(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Message {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let msg: Vec<u8> = buf.drain(..end + 4).collect();
            return parse(Bytes::from(msg), Framing::Datagram, &Limits::default()).unwrap();
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("a message within 5 s")
            .unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The phone is reached through the flow it registered on: over UDP at its source address
/// and port, over TCP on the very connection its REGISTER came through.
#[tokio::test]
async fn phones_are_reached_through_their_registration_flow() {
    use tokio::io::AsyncWriteExt;
    let env = setup(base_config(), &[tenant("a", "a.test", &[("alice", "pw")])]).await;
    let transports = env.slot.get().unwrap().clone();

    // UDP: the Contact names an address the switch cannot reach (a phone behind NAT); the
    // binding keeps the source it came from.
    let mut p = Phone::new(&env, "alice", "a.test", "pw", Algorithm::Md5).await;
    let r = p
        .register(&[("Contact", "<sip:alice@10.255.0.1:5060>".into())])
        .await;
    assert_eq!(r.status(), Some(200));
    let b = env.location.lookup("a", "alice");
    assert_eq!(b[0].contact.as_ref(), b"sip:alice@10.255.0.1:5060");
    transports.send(b[0].dest(), Bytes::from_static(b"OPTIONS-PROBE"));
    let mut buf = [0u8; 64];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), p.sock.recv_from(&mut buf))
        .await
        .expect("reached over UDP")
        .unwrap();
    assert_eq!(&buf[..n], b"OPTIONS-PROBE");

    // TCP: register over a connection, then the switch writes to that same connection.
    let mut stream = tokio::net::TcpStream::connect(env.tcp_server)
        .await
        .unwrap();
    let local = stream.local_addr().unwrap();
    let mut rbuf = Vec::new();
    let request = |cseq: u32, authz: Option<String>| {
        let mut s = format!(
            "REGISTER sip:a.test SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK-tcp{cseq}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@a.test>;tag=t\r\nTo: <sip:alice@a.test>\r\nCall-ID: tcp@test\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:alice@10.255.0.2;transport=tcp>\r\n"
        );
        if let Some(a) = authz {
            s.push_str(&format!("Authorization: {a}\r\n"));
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        s
    };
    stream.write_all(request(1, None).as_bytes()).await.unwrap();
    let r = read_stream_message(&mut stream, &mut rbuf).await;
    assert_eq!(r.status(), Some(401));
    let ch = Challenge::parse(r.value(HeaderName::WwwAuthenticate).unwrap()).unwrap();
    let h = ha1(ch.algorithm, "alice", "a.test", "pw");
    let a = authorization_value(&ch, "alice", &h, "REGISTER", "sip:a.test", 1, "c");
    stream
        .write_all(request(2, Some(a)).as_bytes())
        .await
        .unwrap();
    let r = read_stream_message(&mut stream, &mut rbuf).await;
    assert_eq!(r.status(), Some(200), "{r}");
    let b = env.location.lookup("a", "alice");
    let tcp = b
        .iter()
        .find(|b| b.source.protocol == Protocol::Tcp)
        .expect("a TCP binding");
    assert_eq!(tcp.source.remote, local);
    assert!(tcp.source.conn.is_some(), "the connection is recorded");
    let probe = "OPTIONS sip:alice@10.255.0.2 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKp\r\nMax-Forwards: 70\r\nFrom: <sip:sw@a.test>;tag=s\r\nTo: <sip:alice@a.test>\r\nCall-ID: probe@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    transports.send(tcp.dest(), Bytes::from_static(probe.as_bytes()));
    let m = read_stream_message(&mut stream, &mut rbuf).await;
    assert_eq!(
        m.method(),
        Some(&Method::Options),
        "reached on its own connection"
    );
    env.actor.stop_and_wait(None, None).await.unwrap();
}
