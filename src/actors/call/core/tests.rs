//! Flows of the call core, driven without sockets, actors or a runtime: SIP text goes in as
//! events, the effects that come out are read back (messages parsed, timers kept on a
//! simulated clock, CDRs and checkpoints collected). The integration tests in
//! `tests/b2bua.rs` run the same flows against a real node.

use super::*;
use crate::sip::parse::{parse, Framing, Limits};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

const SDP_A: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";
const SDP_B: &str = "v=0\r\no=- 2 2 IN IP4 127.0.0.3\r\ns=-\r\nc=IN IP4 127.0.0.3\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";

/// The caller's phone.
const A: &str = "127.0.0.2:5062";
/// The callee (the route's target).
const B: &str = "127.0.0.3:5090";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

fn msg(text: &str) -> Message {
    parse(
        Bytes::from(text.to_string()),
        Framing::Datagram,
        &Limits::default(),
    )
    .unwrap_or_else(|e| panic!("test message does not parse ({e:?}):\n{text}"))
}

fn hv(m: &Message, name: HeaderName) -> String {
    m.value(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

fn to_tag(m: &Message) -> Option<String> {
    m.to()
        .and_then(|t| t.tag())
        .map(|t| String::from_utf8_lossy(&t).into_owned())
}

fn call_id(m: &Message) -> String {
    hv(m, HeaderName::CallId)
}

fn body(m: &Message) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

fn method(m: &Message) -> Option<Method> {
    m.method().cloned()
}

fn cseq_of(m: &Message) -> (u32, Method) {
    let c = m.cseq().expect("CSeq");
    (c.seq, c.method)
}

/// An INVITE from the caller.
fn invite(cid: &str, user: &str, sdp: &str) -> String {
    let ct = if sdp.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    format!(
        "INVITE sip:{user}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {A};branch=z9hG4bK-{cid}-1;rport\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@{A}>;tag=a-{cid}\r\nTo: <sip:{user}@127.0.0.1>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{A}>\r\n{ct}Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// A response to a request the switch sent (the callee's side).
fn answer(req: &Message, status: u16, reason: &str, tag: &str, contact: &str, sdp: &str) -> String {
    let mut s = format!("SIP/2.0 {status} {reason}\r\n");
    for h in &req.headers {
        let v = String::from_utf8_lossy(&h.value).into_owned();
        match h.name {
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                s.push_str(&format!("{}: {v}\r\n", h.name.canonical().unwrap()))
            }
            HeaderName::To => {
                let v = if v.contains("tag=") || tag.is_empty() {
                    v
                } else {
                    format!("{v};tag={tag}")
                };
                s.push_str(&format!("To: {v}\r\n"));
            }
            _ => {}
        }
    }
    s.push_str(&format!("Contact: <sip:bob@{contact}>\r\n"));
    if !sdp.is_empty() {
        s.push_str("Content-Type: application/sdp\r\n");
    }
    s.push_str(&format!("Content-Length: {}\r\n\r\n{sdp}", sdp.len()));
    s
}

/// One side of a dialog as a test phone sees it.
struct Side {
    me: String,
    ruri: String,
    from: String,
    to: String,
    call_id: String,
    cseq: u32,
    n: u32,
}

impl Side {
    /// The caller after the switch's 2xx (or 18x) to its INVITE.
    fn caller(resp: &Message) -> Side {
        Side {
            me: A.into(),
            ruri: contact(resp),
            from: hv(resp, HeaderName::From),
            to: hv(resp, HeaderName::To),
            call_id: call_id(resp),
            cseq: 1,
            n: 0,
        }
    }

    /// The callee after answering the switch's INVITE with `tag`.
    fn callee(inv: &Message, tag: &str) -> Side {
        Side {
            me: B.into(),
            ruri: contact(inv),
            from: format!("{};tag={tag}", hv(inv, HeaderName::To)),
            to: hv(inv, HeaderName::From),
            call_id: call_id(inv),
            cseq: 0,
            n: 0,
        }
    }

    fn request(&mut self, method: &str, ack_cseq: u32, extra: &str, body: &str) -> String {
        let seq = if method == "ACK" {
            ack_cseq
        } else {
            self.cseq += 1;
            self.cseq
        };
        self.n += 1;
        let br = format!("z9hG4bK-{}-{}-{}", self.call_id, method, self.n);
        let ct = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        format!(
            "{method} {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={br};rport\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {seq} {method}\r\nContact: <sip:ua@{}>\r\n{extra}{ct}Content-Length: {}\r\n\r\n{body}",
            self.ruri, self.me, self.from, self.to, self.call_id, self.me, body.len()
        )
    }
}

fn contact(m: &Message) -> String {
    m.contacts()
        .next()
        .map(|c| String::from_utf8_lossy(&c.uri).into_owned())
        .unwrap_or_default()
}

/// The node as the tests see it: users' phones in a table, media ports from a counter.
#[derive(Default)]
struct FakeEnv {
    media: Option<MediaSettings>,
    users: HashMap<String, Vec<Fork>>,
    targets: HashMap<String, Result<TransferTarget, TargetError>>,
    /// (queue, user) pairs: the user supervises the queue.
    supervisors: Vec<(String, String)>,
    /// Conference joins and leaves, as `join <tenant>/<id> <call> <via>` and `leave ...`.
    seats: Arc<std::sync::Mutex<Vec<String>>>,
    /// The conference is full: joins are refused.
    conference_full: bool,
    /// Prompt lengths (ms) by id.
    prompts: HashMap<String, u64>,
}

impl Env for FakeEnv {
    fn media(&self) -> Option<MediaSettings> {
        self.media
    }
    fn allocate_media(&mut self, call: &Bytes) -> Result<MediaPorts, String> {
        let consult = call.ends_with(b"~consult");
        Ok(MediaPorts {
            address: "127.0.0.1".parse().unwrap(),
            a: if consult { 30000 } else { 20000 },
            b: if consult { 30002 } else { 20002 },
        })
    }
    fn find_media(&mut self, call: &Bytes) -> Option<MediaPorts> {
        self.allocate_media(call).ok()
    }
    fn release_media(&mut self, _call: &Bytes) -> Option<[crate::media::quality::LegQuality; 2]> {
        None
    }
    fn lookup_user(&self, _tenant: &str, user: &str) -> Vec<Fork> {
        self.users.get(user).cloned().unwrap_or_default()
    }
    fn transfer_target(&self, _tenant: &str, user: &str) -> Result<TransferTarget, TargetError> {
        self.targets
            .get(user)
            .cloned()
            .unwrap_or(Err(TargetError::NotFound))
    }
    fn supervises(&self, _tenant: &str, queue: &str, user: &str) -> bool {
        self.supervisors
            .iter()
            .any(|(q, u)| q == queue && u == user)
    }
    fn conference_join(&mut self, seat: Seat) -> Result<(), Refusal> {
        if self.conference_full {
            return Err(Refusal::Full);
        }
        self.seats.lock().unwrap().push(format!(
            "join {}/{} {} {} {}",
            seat.tenant, seat.id, seat.call, seat.via, seat.label
        ));
        Ok(())
    }
    fn conference_leave(&mut self, tenant: &str, id: &str, call: &str) {
        self.seats
            .lock()
            .unwrap()
            .push(format!("leave {tenant}/{id} {call}"));
    }
    fn prompt_ms(&self, id: &str) -> Option<u64> {
        self.prompts.get(id).copied()
    }
}

/// A route to the static target B.
fn route_to_b() -> Route {
    route_to(B)
}

fn route_to(at: &str) -> Route {
    let t = crate::config::RouteTarget::parse(&format!("sip:{at}")).unwrap();
    Route {
        id: Arc::from("test"),
        from_trunks: false,
        prefix: String::new(),
        target: t,
        strip: 0,
        prepend: String::new(),
        target_text: format!("sip:{at}"),
        group: None,
        media: MediaPolicy::default(),
    }
}

use crate::actors::router::MediaPolicy;

/// One call under test, with a simulated clock.
struct Call {
    core: CallCore,
    start: Instant,
    now: Now,
    timers: Vec<(TimerKey, TimerFire, Instant)>,
    sent: VecDeque<(Dest, Message)>,
    cdrs: Vec<Cdr>,
    /// CDR commits not yet reported (with `auto_cdr` off).
    cdr_pending: bool,
    auto_cdr: bool,
    checkpoint: Option<Checkpoint>,
    retired: bool,
    ended: bool,
    registered: Vec<Bytes>,
    tells: Vec<Tell>,
    media: Vec<MediaOp>,
    /// Attended transfers asking another call for a leg.
    asks: Vec<Replaces>,
    /// Commands to the consultation session.
    consult_media: Vec<MediaOp>,
    /// Agents asked to be reserved for a transfer.
    reserves: Vec<(Arc<str>, Arc<str>)>,
    /// The call's mix as it was asked to be, in order.
    mixes: Vec<MixOp>,
    /// Webhook requests of call flows.
    webhooks: Vec<WebhookRequest>,
}

fn cfg() -> CallConfig {
    let mut c = CallConfig::for_tests();
    c.timer_cfg.t1 = Duration::from_millis(50);
    c.timer_cfg.t2 = Duration::from_millis(200);
    c.timer_cfg.t4 = Duration::from_millis(250);
    c
}

impl Call {
    fn with(cfg: CallConfig, env: FakeEnv) -> Call {
        let start = Instant::now();
        let now = Now {
            mono: start,
            wall_ms: 1_700_000_000_000,
        };
        Call {
            core: CallCore::new(Arc::new(cfg), Box::new(env), now),
            start,
            now,
            timers: Vec::new(),
            sent: VecDeque::new(),
            cdrs: Vec::new(),
            cdr_pending: false,
            auto_cdr: true,
            checkpoint: None,
            retired: false,
            ended: false,
            registered: Vec::new(),
            tells: Vec::new(),
            media: Vec::new(),
            asks: Vec::new(),
            consult_media: Vec::new(),
            reserves: Vec::new(),
            mixes: Vec::new(),
            webhooks: Vec::new(),
        }
    }

    /// A call from A through `route` (the router's hand-over).
    fn start(inv: &str, route: Route, forks: Vec<Fork>) -> Call {
        let mut c = Call::with(cfg(), FakeEnv::default());
        c.begin(inv, route, forks);
        c
    }

    fn begin(&mut self, inv: &str, route: Route, forks: Vec<Fork>) {
        self.begin_as(inv, route, forks, super::super::Parties::default());
    }

    fn begin_as(
        &mut self,
        inv: &str,
        route: Route,
        forks: Vec<Fork>,
        parties: super::super::Parties,
    ) {
        let invite = msg(inv);
        let dialled = invite
            .request_uri()
            .and_then(|u| crate::sip::uri::Uri::parse(u).ok())
            .and_then(|u| u.user)
            .unwrap_or_default();
        let call = NewCall {
            invite: Inbound {
                msg: crate::sip::validate::Request::checked(invite).expect("a valid INVITE"),
                source: source(A),
            },
            route,
            dialled,
            forks,
            queue: None,
            originate: None,
            parties,
        };
        self.feed(Event::New(Box::new(call)));
    }

    fn feed(&mut self, event: Event) {
        let mut out = Vec::new();
        self.core.step(event, self.now, &mut out);
        for e in out {
            self.apply(e);
        }
        if self.cdr_pending && self.auto_cdr {
            self.cdr_pending = false;
            self.feed(Event::CdrStored(true));
        }
    }

    /// Applies what a direct call of the core (an API command, a hand-over) asked.
    fn apply_all(&mut self, out: Vec<Effect>) {
        for e in out {
            self.apply(e);
        }
        if self.cdr_pending && self.auto_cdr {
            self.cdr_pending = false;
            self.feed(Event::CdrStored(true));
        }
    }

    fn apply(&mut self, e: Effect) {
        match e {
            Effect::Send { dest, bytes } => {
                let m = parse(bytes, Framing::Datagram, &Limits::default())
                    .expect("the switch sends what it parses");
                self.sent.push_back((dest, m));
            }
            Effect::StartTimer { key, after, fire } => {
                self.timers.push((key, fire, self.now.mono + after))
            }
            Effect::CancelTimer(key) => self.timers.retain(|t| t.0 != key),
            Effect::Register(id) => self.registered.push(id),
            Effect::Retire { .. } => self.retired = true,
            Effect::Checkpoint(cp) => self.checkpoint = Some(Checkpoint::clone(&cp)),
            Effect::DropCheckpoint(_) => self.checkpoint = None,
            Effect::WriteCdr(cdr) => {
                self.cdrs.push(*cdr);
                self.cdr_pending = true;
            }
            Effect::Ended => self.ended = true,
            Effect::Tell(t) => self.tells.push(t),
            Effect::Media(op) => self.media.push(op),
            Effect::ReleaseTrunk(_) => {}
            Effect::AskHandOver(r) => self.asks.push(r),
            Effect::ConsultMedia(op) => self.consult_media.push(op),
            Effect::ReserveAgent { tenant, agent } => self.reserves.push((tenant, agent)),
            Effect::Mix(op) => self.mixes.push(op),
            Effect::Webhook(req) => self.webhooks.push(*req),
        }
    }

    /// A SIP message from `from`.
    fn from(&mut self, from: &str, text: &str) {
        let inbound = Inbound {
            msg: msg(text),
            source: source(from),
        };
        self.feed(Event::Sip(Box::new(inbound)));
    }

    /// Moves the clock on, firing the timers due on the way, in order.
    fn advance(&mut self, d: Duration) {
        let until = self.now.mono + d;
        loop {
            let due = self
                .timers
                .iter()
                .filter(|t| t.2 <= until)
                .min_by_key(|t| t.2)
                .copied();
            let Some((key, fire, at)) = due else { break };
            self.timers.retain(|t| t.0 != key);
            self.set_clock(at);
            self.feed(Event::Timer(fire, key));
        }
        self.set_clock(until);
    }

    fn set_clock(&mut self, at: Instant) {
        let ms = at.duration_since(self.start).as_millis() as i64;
        self.now = Now {
            mono: at,
            wall_ms: 1_700_000_000_000 + ms,
        };
    }

    /// The first message sent to `to` that `pred` accepts (removed), or a panic listing
    /// what was sent.
    fn take(&mut self, to: &str, what: &str, pred: impl Fn(&Message) -> bool) -> Message {
        let to = addr(to);
        match self.sent.iter().position(|(d, m)| d.addr == to && pred(m)) {
            Some(i) => self.sent.remove(i).unwrap().1,
            None => panic!(
                "expected {what} to {to}; sent: {:#?}",
                self.sent
                    .iter()
                    .map(|(d, m)| format!("{} {}", d.addr, first_line(m)))
                    .collect::<Vec<_>>()
            ),
        }
    }

    fn request(&mut self, to: &str, m: Method) -> Message {
        self.take(to, &format!("{m:?}"), |x| method(x).as_ref() == Some(&m))
    }

    fn status(&mut self, to: &str, status: u16, m: Method) -> Message {
        self.take(to, &format!("{status} to {m:?}"), |x| {
            x.status() == Some(status) && x.cseq().map(|c| c.method) == Some(m.clone())
        })
    }

    /// Whether anything sent to `to` matches.
    fn has(&self, to: &str, pred: impl Fn(&Message) -> bool) -> bool {
        let to = addr(to);
        self.sent.iter().any(|(d, m)| d.addr == to && pred(m))
    }

    fn clear(&mut self) {
        self.sent.clear();
    }

    fn phase(&self) -> Phase {
        self.core.info().phase
    }
}

fn first_line(m: &Message) -> String {
    let e = m.encode();
    let s = String::from_utf8_lossy(&e);
    s.lines().next().unwrap_or_default().to_string()
}

fn source(from: &str) -> Source {
    Source {
        protocol: Protocol::Udp,
        remote: addr(from),
        local: addr("127.0.0.1:5060"),
        conn: None,
    }
}

/// A call A → B up to the confirmed state: (the B-leg INVITE, A's side, B's side).
fn established(cid: &str) -> (Call, Message, Side, Side) {
    let mut c = Call::start(&invite(cid, "1000", SDP_A), route_to_b(), vec![]);
    c.status(A, 100, Method::Invite);
    let inv_b = c.request(B, Method::Invite);
    c.from(B, &answer(&inv_b, 200, "OK", "btag", B, SDP_B));
    let ok = c.status(A, 200, Method::Invite);
    let mut a = Side::caller(&ok);
    c.from(A, &a.request("ACK", 1, "", ""));
    c.request(B, Method::Ack);
    assert_eq!(c.phase(), Phase::Confirmed);
    let b = Side::callee(&inv_b, "btag");
    (c, inv_b, a, b)
}

// ---- the flows ----

#[test]
fn basic_call_caller_hangs_up() {
    let cid = "basic-1";
    let mut c = Call::start(&invite(cid, "1000", SDP_A), route_to_b(), vec![]);
    let trying = c.status(A, 100, Method::Invite);
    assert_eq!(call_id(&trying), cid);
    let inv_b = c.request(B, Method::Invite);
    let b_cid = call_id(&inv_b);
    assert_ne!(b_cid, cid, "the B leg has its own Call-ID");
    assert_ne!(
        hv(&inv_b, HeaderName::From),
        hv(&msg(&invite(cid, "1000", "")), HeaderName::From)
    );
    assert_eq!(to_tag(&inv_b), None);
    assert_eq!(body(&inv_b), SDP_A, "SDP passed through unchanged");
    assert!(
        contact(&inv_b).contains("127.0.0.1:5060"),
        "B-leg Contact is the switch"
    );
    assert!(c.registered.iter().any(|r| r.as_ref() == b_cid.as_bytes()));

    c.from(B, &answer(&inv_b, 180, "Ringing", "btag", B, ""));
    let ringing = c.status(A, 180, Method::Invite);
    let a_tag = to_tag(&ringing).expect("180 has a To tag");
    assert_ne!(a_tag, "btag", "the A leg has its own To tag");
    assert_eq!(c.phase(), Phase::Early);

    c.from(B, &answer(&inv_b, 200, "OK", "btag", B, SDP_B));
    let ok = c.status(A, 200, Method::Invite);
    assert_eq!(
        to_tag(&ok).as_deref(),
        Some(a_tag.as_str()),
        "same tag as the 180"
    );
    assert_eq!(body(&ok), SDP_B, "B's SDP relayed");
    assert_eq!(c.phase(), Phase::Answered);

    let mut a = Side::caller(&ok);
    c.from(A, &a.request("ACK", 1, "", ""));
    let ack = c.request(B, Method::Ack);
    assert_eq!(call_id(&ack), b_cid);
    assert_eq!(cseq_of(&ack).0, cseq_of(&inv_b).0);
    assert_eq!(to_tag(&ack).as_deref(), Some("btag"));
    assert_eq!(c.phase(), Phase::Confirmed);

    c.from(A, &a.request("BYE", 0, "", ""));
    let bye = c.request(B, Method::Bye);
    assert_eq!(call_id(&bye), b_cid);
    assert!(
        cseq_of(&bye).0 > cseq_of(&inv_b).0,
        "BYE CSeq above the INVITE's"
    );
    c.from(B, &answer(&bye, 200, "OK", "", B, ""));
    c.status(A, 200, Method::Bye);

    assert_eq!(c.cdrs.len(), 1);
    let cdr = &c.cdrs[0];
    assert_eq!(cdr.caller, format!("sip:alice@{A}"));
    assert_eq!(cdr.callee, "1000");
    assert_eq!(cdr.final_status, 200);
    assert!(cdr.answer_at.is_some() && cdr.ringing_at.is_some());
    assert_eq!(cdr.hangup_by, HangupBy::Caller);
    assert_eq!(cdr.b_call_id.as_deref(), Some(b_cid.as_str()));
    assert!(c.ended);
    c.advance(Duration::from_secs(10));
    assert!(
        c.retired,
        "the call hands its Call-IDs to the router and stops"
    );
}

#[test]
fn callee_hangs_up() {
    let (mut c, _, _, mut b) = established("calleebye-1");
    c.from(B, &b.request("BYE", 0, "", ""));
    let bye = c.request(A, Method::Bye);
    assert_eq!(call_id(&bye), "calleebye-1");
    c.from(A, &answer(&bye, 200, "OK", "", A, ""));
    c.status(B, 200, Method::Bye);
    assert_eq!(c.cdrs[0].hangup_by, HangupBy::Callee);
}

#[test]
fn the_last_message_of_a_hangup_waits_for_the_cdr() {
    let (mut c, _, mut a, _) = established("durable-1");
    c.auto_cdr = false;
    c.from(A, &a.request("BYE", 0, "", ""));
    assert_eq!(c.cdrs.len(), 1, "the CDR is written at once");
    assert!(
        !c.has(B, |m| method(m) == Some(Method::Bye)),
        "the BYE waits for the commit"
    );
    c.feed(Event::CdrStored(true));
    c.request(B, Method::Bye);
}

#[test]
fn early_media_183_with_sdp_then_200_without() {
    let mut c = Call::start(&invite("early-1", "1000", SDP_A), route_to_b(), vec![]);
    let inv_b = c.request(B, Method::Invite);
    c.from(
        B,
        &answer(&inv_b, 183, "Session Progress", "btag", B, SDP_B),
    );
    let p = c.status(A, 183, Method::Invite);
    assert_eq!(body(&p), SDP_B);
    c.from(B, &answer(&inv_b, 200, "OK", "btag", B, ""));
    let ok = c.status(A, 200, Method::Invite);
    assert_eq!(body(&ok), "");
}

#[test]
fn callee_busy_486_is_relayed_and_acked() {
    let mut c = Call::start(&invite("busy-1", "1000", SDP_A), route_to_b(), vec![]);
    let inv_b = c.request(B, Method::Invite);
    c.from(B, &answer(&inv_b, 486, "Busy Here", "btag", B, ""));
    let ack = c.request(B, Method::Ack);
    assert_eq!(cseq_of(&ack).0, cseq_of(&inv_b).0);
    c.status(A, 486, Method::Invite);
    assert_eq!(c.cdrs[0].final_status, 486);
    assert_eq!(c.cdrs[0].hangup_by, HangupBy::Callee);
    assert!(c.cdrs[0].answer_at.is_none());
}

#[test]
fn caller_cancels_while_ringing() {
    let cid = "cancel-1";
    let inv = invite(cid, "1000", SDP_A);
    let mut c = Call::start(&inv, route_to_b(), vec![]);
    let inv_b = c.request(B, Method::Invite);
    c.from(B, &answer(&inv_b, 180, "Ringing", "btag", B, ""));
    c.clear();
    let cancel = format!(
        "CANCEL sip:1000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {A};branch=z9hG4bK-{cid}-1;rport\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@{A}>;tag=a-{cid}\r\nTo: <sip:1000@127.0.0.1>\r\nCall-ID: {cid}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    );
    c.from(A, &cancel);
    c.status(A, 200, Method::Cancel);
    c.status(A, 487, Method::Invite);
    let cancel_b = c.request(B, Method::Cancel);
    assert_eq!(call_id(&cancel_b), call_id(&inv_b));
    assert_eq!(c.cdrs[0].final_status, 487);
    assert_eq!(c.cdrs[0].hangup_by, HangupBy::Caller);
}

#[test]
fn cancel_before_provisional_waits_for_one() {
    let cid = "cancel-2";
    let mut c = Call::start(&invite(cid, "1000", SDP_A), route_to_b(), vec![]);
    let inv_b = c.request(B, Method::Invite);
    let cancel = format!(
        "CANCEL sip:1000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {A};branch=z9hG4bK-{cid}-1;rport\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@{A}>;tag=a-{cid}\r\nTo: <sip:1000@127.0.0.1>\r\nCall-ID: {cid}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    );
    c.from(A, &cancel);
    c.status(A, 487, Method::Invite);
    assert!(
        !c.has(B, |m| method(m) == Some(Method::Cancel)),
        "RFC 3261 §9.1: no CANCEL before a provisional"
    );
    c.from(B, &answer(&inv_b, 100, "Trying", "", B, ""));
    c.from(B, &answer(&inv_b, 180, "Ringing", "btag", B, ""));
    c.request(B, Method::Cancel);
}

#[test]
fn reinvite_update_and_info_are_relayed() {
    let (mut c, inv_b, mut a, mut b) = established("reinv-1");
    // A re-INVITE from A with an offer: relayed to B, B's answer relayed back.
    c.from(A, &a.request("INVITE", 0, "", SDP_A));
    let re = c.request(B, Method::Invite);
    assert_eq!(call_id(&re), call_id(&inv_b));
    assert!(cseq_of(&re).0 > cseq_of(&inv_b).0);
    assert_eq!(body(&re), SDP_A);
    c.from(B, &answer(&re, 200, "OK", "", B, SDP_B));
    c.request(B, Method::Ack); // hop by hop: the re-INVITE carried the offer
    let ok = c.status(A, 200, Method::Invite);
    assert_eq!(body(&ok), SDP_B);
    c.from(A, &a.request("ACK", 2, "", ""));
    // UPDATE from B.
    c.from(B, &b.request("UPDATE", 0, "", SDP_B));
    let up = c.request(A, Method::Update);
    assert_eq!(body(&up), SDP_B);
    c.from(A, &answer(&up, 200, "OK", "", A, SDP_A));
    c.status(B, 200, Method::Update);
    // INFO from A.
    c.from(A, &a.request("INFO", 0, "", ""));
    let info = c.request(B, Method::Info);
    c.from(B, &answer(&info, 200, "OK", "", B, ""));
    c.status(A, 200, Method::Info);
    assert_eq!(c.phase(), Phase::Confirmed);
}

#[test]
fn unknown_dialogs_get_481() {
    let (mut c, _, a, _) = established("481-1");
    let mut stranger = Side {
        to: format!("{};tag=nottheirs", a.to.split(";tag=").next().unwrap()),
        ..a
    };
    c.from(A, &stranger.request("BYE", 0, "", ""));
    c.status(A, 481, Method::Bye);
    assert_eq!(c.phase(), Phase::Confirmed);
}

#[test]
fn no_answer_timeout_gives_480_and_cancels_b() {
    let mut conf = cfg();
    conf.no_answer = Duration::from_secs(3);
    let mut c = Call::with(conf, FakeEnv::default());
    c.begin(&invite("noans-1", "1000", SDP_A), route_to_b(), vec![]);
    let inv_b = c.request(B, Method::Invite);
    c.from(B, &answer(&inv_b, 180, "Ringing", "btag", B, ""));
    c.advance(Duration::from_millis(2900));
    assert!(!c.has(A, |m| m.status() == Some(480)));
    c.advance(Duration::from_millis(200));
    c.status(A, 480, Method::Invite);
    c.request(B, Method::Cancel);
    assert_eq!(c.cdrs[0].disconnect_reason, "no answer");
}

#[test]
fn max_duration_sends_bye_both_ways() {
    let mut conf = cfg();
    conf.max_duration = Some(Duration::from_secs(5));
    let mut c = Call::with(conf, FakeEnv::default());
    c.begin(&invite("max-1", "1000", SDP_A), route_to_b(), vec![]);
    let inv_b = c.request(B, Method::Invite);
    c.from(B, &answer(&inv_b, 200, "OK", "btag", B, SDP_B));
    let ok = c.status(A, 200, Method::Invite);
    c.from(A, &Side::caller(&ok).request("ACK", 1, "", ""));
    c.clear();
    c.advance(Duration::from_secs(5));
    c.request(A, Method::Bye);
    c.request(B, Method::Bye);
    assert_eq!(c.cdrs[0].disconnect_reason, "maximum call duration");
    assert_eq!(c.cdrs[0].hangup_by, HangupBy::System);
}

#[test]
fn silent_callee_times_out_with_408() {
    let mut c = Call::start(&invite("silent-1", "1000", SDP_A), route_to_b(), vec![]);
    c.request(B, Method::Invite);
    // Timer A retransmits the INVITE; Timer B (64*T1 = 3.2 s) gives up.
    c.advance(Duration::from_millis(60));
    c.request(B, Method::Invite);
    c.advance(Duration::from_secs(4));
    c.status(A, 408, Method::Invite);
    assert_eq!(c.cdrs[0].final_status, 408);
}

#[test]
fn invite_retransmission_does_not_start_a_second_b_leg() {
    let inv = invite("retrans-1", "1000", SDP_A);
    let mut c = Call::start(&inv, route_to_b(), vec![]);
    c.request(B, Method::Invite);
    c.clear();
    c.from(A, &inv);
    c.status(A, 100, Method::Invite);
    assert!(!c.has(B, |m| method(m) == Some(Method::Invite)));
}

#[test]
fn retransmissions_of_the_2xx_to_the_caller_until_its_ack() {
    let mut c = Call::start(&invite("resend-1", "1000", SDP_A), route_to_b(), vec![]);
    let inv_b = c.request(B, Method::Invite);
    c.from(B, &answer(&inv_b, 200, "OK", "btag", B, SDP_B));
    let ok = c.status(A, 200, Method::Invite);
    c.advance(Duration::from_millis(60));
    c.status(A, 200, Method::Invite);
    c.advance(Duration::from_millis(110));
    c.status(A, 200, Method::Invite);
    c.from(A, &Side::caller(&ok).request("ACK", 1, "", ""));
    c.request(B, Method::Ack);
    c.advance(Duration::from_secs(1));
    assert!(
        !c.has(A, |m| m.status() == Some(200)),
        "no more 2xx after the ACK"
    );
}

#[test]
fn no_ack_from_the_caller_ends_the_call() {
    let mut c = Call::start(&invite("noack-1", "1000", SDP_A), route_to_b(), vec![]);
    let inv_b = c.request(B, Method::Invite);
    c.from(B, &answer(&inv_b, 200, "OK", "btag", B, SDP_B));
    c.advance(Duration::from_secs(4));
    c.request(A, Method::Bye);
    c.request(B, Method::Bye);
    assert_eq!(c.cdrs[0].disconnect_reason, "no ACK from caller");
}

#[test]
fn bye_before_ack_acks_the_callee_first() {
    let mut c = Call::start(&invite("byeack-1", "1000", SDP_A), route_to_b(), vec![]);
    let inv_b = c.request(B, Method::Invite);
    c.from(B, &answer(&inv_b, 200, "OK", "btag", B, SDP_B));
    let ok = c.status(A, 200, Method::Invite);
    c.clear();
    c.from(A, &Side::caller(&ok).request("BYE", 0, "", ""));
    let first = c
        .sent
        .iter()
        .find(|(d, _)| d.addr == addr(B))
        .map(|(_, m)| method(m));
    assert_eq!(
        first,
        Some(Some(Method::Ack)),
        "B is ACKed before it gets the BYE"
    );
    c.request(B, Method::Bye);
}

#[test]
fn delayed_offer_answer_in_ack_reaches_callee() {
    let mut c = Call::start(&invite("delayed-1", "1000", ""), route_to_b(), vec![]);
    let inv_b = c.request(B, Method::Invite);
    assert_eq!(body(&inv_b), "");
    c.from(B, &answer(&inv_b, 200, "OK", "btag", B, SDP_B));
    let ok = c.status(A, 200, Method::Invite);
    assert_eq!(body(&ok), SDP_B, "the callee's offer");
    c.from(A, &Side::caller(&ok).request("ACK", 1, "", SDP_A));
    let ack = c.request(B, Method::Ack);
    assert_eq!(body(&ack), SDP_A, "the caller's answer, end to end");
}

#[test]
fn retransmitted_2xx_from_callee_is_acked_again() {
    let (mut c, inv_b, _, _) = established("re2xx-1");
    c.from(B, &answer(&inv_b, 200, "OK", "btag", B, SDP_B));
    c.request(B, Method::Ack);
    assert!(!c.has(A, |m| m.status() == Some(200)), "not relayed again");
}

#[test]
fn refused_reinvite_keeps_the_call() {
    let (mut c, _, mut a, _) = established("refre-1");
    c.from(A, &a.request("INVITE", 0, "", SDP_A));
    let re = c.request(B, Method::Invite);
    c.from(B, &answer(&re, 488, "Not Acceptable Here", "", B, ""));
    c.request(B, Method::Ack);
    c.status(A, 488, Method::Invite);
    assert_eq!(c.phase(), Phase::Confirmed);
    assert!(c.cdrs.is_empty());
}

#[test]
fn bye_in_early_dialog_from_caller() {
    let mut c = Call::start(&invite("earlybye-1", "1000", SDP_A), route_to_b(), vec![]);
    let inv_b = c.request(B, Method::Invite);
    c.from(B, &answer(&inv_b, 180, "Ringing", "btag", B, ""));
    let ringing = c.status(A, 180, Method::Invite);
    c.from(A, &Side::caller(&ringing).request("BYE", 0, "", ""));
    c.status(A, 487, Method::Invite);
    c.status(A, 200, Method::Bye);
    c.request(B, Method::Cancel);
}

#[test]
fn reinvite_glare_gets_491() {
    let (mut c, _, mut a, mut b) = established("glare-1");
    c.from(A, &a.request("INVITE", 0, "", SDP_A));
    c.request(B, Method::Invite);
    c.from(B, &b.request("INVITE", 0, "", SDP_B));
    c.status(B, 491, Method::Invite);
}

#[test]
fn redirect_is_relayed_with_its_contact() {
    let mut c = Call::start(&invite("redir-1", "1000", SDP_A), route_to_b(), vec![]);
    let inv_b = c.request(B, Method::Invite);
    c.from(
        B,
        &answer(
            &inv_b,
            302,
            "Moved Temporarily",
            "btag",
            "127.0.0.9:5060",
            "",
        ),
    );
    let r = c.status(A, 302, Method::Invite);
    assert!(contact(&r).contains("127.0.0.9:5060"));
}

#[test]
fn second_fork_answer_is_acked_and_ended() {
    let forks = vec![
        Fork {
            ruri: Bytes::from(format!("sip:bob@{B}")),
            dest: Dest {
                protocol: Protocol::Udp,
                addr: addr(B),
                conn: None,
            },
        },
        Fork {
            ruri: Bytes::from_static(b"sip:bob@127.0.0.4:5090"),
            dest: Dest {
                protocol: Protocol::Udp,
                addr: addr("127.0.0.4:5090"),
                conn: None,
            },
        },
    ];
    let mut c = Call::start(&invite("fork-1", "1000", SDP_A), route_to_b(), forks);
    let inv_1 = c.request(B, Method::Invite);
    let inv_2 = c.request("127.0.0.4:5090", Method::Invite);
    assert_eq!(call_id(&inv_1), call_id(&inv_2), "one B leg, two branches");
    c.from(B, &answer(&inv_1, 200, "OK", "tag1", B, SDP_B));
    c.status(A, 200, Method::Invite);
    c.from(
        "127.0.0.4:5090",
        &answer(&inv_2, 180, "Ringing", "tag2", "127.0.0.4:5090", ""),
    );
    c.request("127.0.0.4:5090", Method::Cancel);
    // A late answer of the losing fork is ACKed and ended.
    c.from(
        "127.0.0.4:5090",
        &answer(&inv_2, 200, "OK", "tag2", "127.0.0.4:5090", SDP_B),
    );
    c.request("127.0.0.4:5090", Method::Ack);
    c.request("127.0.0.4:5090", Method::Bye);
}

#[test]
fn crossing_byes_both_get_200() {
    let (mut c, _, mut a, mut b) = established("cross-1");
    c.from(A, &a.request("BYE", 0, "", ""));
    c.request(B, Method::Bye);
    c.from(B, &b.request("BYE", 0, "", ""));
    c.status(B, 200, Method::Bye);
}

#[test]
fn hangup_command_ends_both_legs() {
    let (mut c, _, _, _) = established("hang-1");
    c.feed(Event::Hangup("api".into()));
    c.request(A, Method::Bye);
    c.request(B, Method::Bye);
    assert_eq!(c.cdrs[0].disconnect_reason, "api");
}

#[test]
fn a_restored_call_keeps_its_dialogs_cseqs() {
    let (mut c, inv_b, _, mut b) = established("restore-1");
    c.from(B, &b.request("INFO", 0, "", ""));
    let info = c.request(A, Method::Info);
    c.from(A, &answer(&info, 200, "OK", "", A, ""));
    let cp = c
        .checkpoint
        .clone()
        .expect("a confirmed call has a checkpoint");
    // A new actor resumes from the checkpoint.
    let mut r = Call::with(cfg(), FakeEnv::default());
    r.feed(Event::Restore(Box::new(cp)));
    assert_eq!(r.phase(), Phase::Confirmed);
    assert!(r.core.info().restored);
    r.feed(Event::Hangup("test".into()));
    let bye_a = r.request(A, Method::Bye);
    let bye_b = r.request(B, Method::Bye);
    assert!(
        cseq_of(&bye_a).0 > cseq_of(&info).0,
        "CSeq after the relayed INFO"
    );
    assert!(cseq_of(&bye_b).0 > cseq_of(&inv_b).0);
}

#[test]
fn a_call_restored_during_setup_is_ended_cleanly() {
    let mut c = Call::start(&invite("restore-2", "1000", SDP_A), route_to_b(), vec![]);
    let inv_b = c.request(B, Method::Invite);
    c.from(B, &answer(&inv_b, 180, "Ringing", "btag", B, ""));
    let cp = c.checkpoint.clone().expect("checkpoint");
    let mut r = Call::with(cfg(), FakeEnv::default());
    r.feed(Event::Restore(Box::new(cp)));
    r.status(A, 500, Method::Invite);
    r.request(B, Method::Cancel);
    assert_eq!(r.cdrs[0].disconnect_reason, "restarted during setup");
}

#[test]
fn anchored_call_rewrites_sdp_both_ways_and_tells_the_relay() {
    let env = FakeEnv {
        media: Some(MediaSettings {
            anchor_all: true,
            ..MediaSettings::default()
        }),
        ..FakeEnv::default()
    };
    let mut c = Call::with(cfg(), env);
    c.begin(&invite("anchor-1", "1000", SDP_A), route_to_b(), vec![]);
    let inv_b = c.request(B, Method::Invite);
    assert!(
        body(&inv_b).contains("m=audio 20002 "),
        "B is offered the B-side port"
    );
    assert!(!body(&inv_b).contains("127.0.0.2"), "A's address is hidden");
    c.from(B, &answer(&inv_b, 200, "OK", "btag", B, SDP_B));
    let ok = c.status(A, 200, Method::Invite);
    assert!(
        body(&ok).contains("m=audio 20000 "),
        "A is answered with the A-side port"
    );
    let learned: Vec<_> = c
        .media
        .iter()
        .filter_map(|op| match op {
            MediaOp::SetRemote { side, addr, .. } => Some((*side, *addr)),
            _ => None,
        })
        .collect();
    assert!(learned.contains(&(crate::media::relay::Side::A, addr("127.0.0.2:6000"))));
    assert!(learned.contains(&(crate::media::relay::Side::B, addr("127.0.0.3:7000"))));
    assert!(c.core.info().anchored);
}

// ---- transfer and hold ----

/// The transfer target's phone.
const C: &str = "127.0.0.5:5090";

fn fork_to(at: &str) -> Fork {
    Fork {
        ruri: Bytes::from(format!("sip:1003@{at}")),
        dest: Dest {
            protocol: Protocol::Udp,
            addr: addr(at),
            conn: None,
        },
    }
}

/// An anchored call of tenant acme from A (user `caller` if given) to agent phone B (user
/// 1002), with 1003 (phones at C) and queue number 5000 as transfer targets.
fn anchored_call(cid: &str, caller: Option<&str>) -> (Call, Message, Side, Side) {
    let mut targets = HashMap::new();
    targets.insert(
        "1003".to_string(),
        Ok(TransferTarget::Phones {
            user: Arc::from("1003"),
            forks: vec![fork_to(C)],
        }),
    );
    targets.insert(
        "5000".to_string(),
        Ok(TransferTarget::Queue {
            tenant: Arc::from("acme"),
            queue: Arc::from("support"),
            priority: 0,
        }),
    );
    targets.insert("900441234".to_string(), Err(TargetError::Forbidden));
    targets.insert(
        "1004".to_string(),
        Ok(TransferTarget::Agent {
            tenant: Arc::from("acme"),
            agent: Arc::from("bob"),
            user: Arc::from("1004"),
        }),
    );
    let env = FakeEnv {
        media: Some(MediaSettings {
            anchor_all: true,
            ..MediaSettings::default()
        }),
        targets,
        ..FakeEnv::default()
    };
    let mut c = Call::with(cfg(), env);
    let parties = super::super::Parties {
        tenant: Some(Arc::from("acme")),
        caller: caller.map(Arc::from),
        callee: Some(Arc::from("1002")),
    };
    c.begin_as(&invite(cid, "1002", SDP_A), route_to_b(), vec![], parties);
    let inv_b = c.request(B, Method::Invite);
    c.from(B, &answer(&inv_b, 200, "OK", "btag", B, SDP_B));
    let ok = c.status(A, 200, Method::Invite);
    let mut a = Side::caller(&ok);
    c.from(A, &a.request("ACK", 1, "", ""));
    c.request(B, Method::Ack);
    c.clear();
    c.media.clear();
    let b = Side::callee(&inv_b, "btag");
    (c, inv_b, a, b)
}

fn refer_to(target: &str) -> String {
    format!("Refer-To: <sip:{target}@127.0.0.1>\r\nReferred-By: <sip:1002@127.0.0.1>\r\n")
}

fn sipfrag(m: &Message) -> String {
    body(m).lines().next().unwrap_or_default().to_string()
}

#[test]
fn blind_transfer_by_the_agent_connects_the_caller_to_the_target() {
    let (mut c, inv_b, mut a, mut b) = anchored_call("xfer-1", None);
    c.from(B, &b.request("REFER", 0, &refer_to("1003"), ""));
    c.status(B, 202, Method::Refer);
    let n1 = c.request(B, Method::Notify);
    assert_eq!(hv(&n1, HeaderName::Event), "refer");
    assert_eq!(sipfrag(&n1), "SIP/2.0 100 Trying");
    assert_eq!(
        call_id(&n1),
        call_id(&inv_b),
        "NOTIFY in the transferor's dialog"
    );
    c.from(B, &answer(&n1, 200, "OK", "", B, ""));
    // The caller hears music while the target rings with the switch's own offer.
    assert!(c.media.iter().any(|op| matches!(
        op,
        MediaOp::Music {
            side: crate::media::relay::Side::A,
            ..
        }
    )));
    let inv_c = c.request(C, Method::Invite);
    assert_ne!(
        call_id(&inv_c),
        call_id(&inv_b),
        "the target gets a leg of its own"
    );
    assert!(
        body(&inv_c).contains("m=audio 20002 "),
        "offered the port B used"
    );
    assert!(
        !c.has(A, |m| method(m) == Some(Method::Invite)),
        "no re-INVITE to the caller"
    );
    c.from(C, &answer(&inv_c, 180, "Ringing", "ctag", C, ""));
    assert!(
        !c.has(A, |m| m.status() == Some(180)),
        "the caller is up already"
    );
    c.from(C, &answer(&inv_c, 200, "OK", "ctag", C, SDP_B));
    c.request(C, Method::Ack);
    let n2 = c.request(B, Method::Notify);
    assert_eq!(sipfrag(&n2), "SIP/2.0 200 OK");
    let state = n2
        .other("Subscription-State")
        .map(|v| String::from_utf8_lossy(v).into_owned());
    assert_eq!(state.as_deref(), Some("terminated;reason=noresource"));
    let bye_b = c.request(B, Method::Bye);
    assert_eq!(call_id(&bye_b), call_id(&inv_b));
    assert!(c.media.iter().any(|op| matches!(op, MediaOp::Bridge(true))));
    assert_eq!(c.phase(), Phase::Confirmed);
    c.from(B, &answer(&bye_b, 200, "OK", "", B, ""));
    // Caller and target talk; the caller's BYE reaches the target.
    c.from(A, &a.request("BYE", 0, "", ""));
    let bye_c = c.request(C, Method::Bye);
    assert_eq!(call_id(&bye_c), call_id(&inv_c));
    c.from(C, &answer(&bye_c, 200, "OK", "", C, ""));
    c.status(A, 200, Method::Bye);
    let cdr = &c.cdrs[0];
    assert_eq!(cdr.transfers.as_deref(), Some("blind:phone>user:1003"));
    let legs: Vec<(&str, &str)> = cdr
        .legs
        .iter()
        .map(|l| (l.role.as_str(), l.end_reason.as_str()))
        .collect();
    assert_eq!(
        legs,
        vec![
            ("caller", "bye"),
            ("callee", "transferred"),
            ("transfer", "bye")
        ]
    );
    assert_eq!(cdr.hangup_by, HangupBy::Caller);
}

#[test]
fn a_failed_blind_transfer_bridges_the_transferor_back() {
    let (mut c, inv_b, mut a, mut b) = anchored_call("xfer-2", None);
    c.from(B, &b.request("REFER", 0, &refer_to("1003"), ""));
    c.status(B, 202, Method::Refer);
    c.request(B, Method::Notify);
    let inv_c = c.request(C, Method::Invite);
    c.from(C, &answer(&inv_c, 486, "Busy Here", "ctag", C, ""));
    c.request(C, Method::Ack);
    let n = c.request(B, Method::Notify);
    assert_eq!(sipfrag(&n), "SIP/2.0 486 Busy Here");
    assert!(
        !c.has(B, |m| method(m) == Some(Method::Bye)),
        "the transferor stays"
    );
    assert!(c.media.iter().any(|op| matches!(op, MediaOp::Bridge(true))));
    assert_eq!(c.phase(), Phase::Confirmed);
    // Back to caller ↔ transferor: the caller's BYE reaches B in B's dialog.
    c.from(A, &a.request("BYE", 0, "", ""));
    let bye = c.request(B, Method::Bye);
    assert_eq!(call_id(&bye), call_id(&inv_b));
    assert_eq!(
        c.cdrs[0].transfers.as_deref(),
        Some("blind:phone>user:1003:486")
    );
}

#[test]
fn a_transferor_that_hangs_up_at_once_is_answered_and_the_transfer_goes_on() {
    let (mut c, _, _, mut b) = anchored_call("xfer-3", None);
    c.from(B, &b.request("REFER", 0, &refer_to("1003"), ""));
    c.request(B, Method::Notify);
    c.from(B, &b.request("BYE", 0, "", ""));
    c.status(B, 200, Method::Bye);
    assert!(
        !c.has(A, |m| method(m) == Some(Method::Bye)),
        "the caller stays"
    );
    let inv_c = c.request(C, Method::Invite);
    c.from(C, &answer(&inv_c, 200, "OK", "ctag", C, SDP_B));
    c.request(C, Method::Ack);
    assert!(
        !c.has(B, |m| method(m) == Some(Method::Notify)),
        "no one to tell"
    );
    assert_eq!(c.phase(), Phase::Confirmed);
}

#[test]
fn refer_from_an_anonymous_caller_is_forbidden() {
    let (mut c, _, mut a, _) = anchored_call("xfer-4", None);
    c.from(A, &a.request("REFER", 0, &refer_to("1003"), ""));
    c.status(A, 403, Method::Refer);
    assert!(!c.has(C, |_| true));
}

#[test]
fn refer_to_an_external_number_is_forbidden() {
    let (mut c, _, _, mut b) = anchored_call("xfer-5", None);
    c.from(B, &b.request("REFER", 0, &refer_to("900441234"), ""));
    c.status(B, 403, Method::Refer);
    c.from(B, &b.request("REFER", 0, &refer_to("7777"), ""));
    c.status(B, 404, Method::Refer);
    assert_eq!(c.phase(), Phase::Confirmed);
}

#[test]
fn refer_on_a_call_whose_media_is_not_anchored_gets_488() {
    let mut c = Call::with(cfg(), FakeEnv::default());
    let parties = super::super::Parties {
        tenant: Some(Arc::from("acme")),
        caller: None,
        callee: Some(Arc::from("1002")),
    };
    c.begin_as(
        &invite("xfer-6", "1002", SDP_A),
        route_to_b(),
        vec![],
        parties,
    );
    let inv_b = c.request(B, Method::Invite);
    c.from(B, &answer(&inv_b, 200, "OK", "btag", B, SDP_B));
    let ok = c.status(A, 200, Method::Invite);
    c.from(A, &Side::caller(&ok).request("ACK", 1, "", ""));
    let mut b = Side::callee(&inv_b, "btag");
    c.from(B, &b.request("REFER", 0, &refer_to("1003"), ""));
    c.status(B, 488, Method::Refer);
}

#[test]
fn refer_with_replaces_is_not_relayed() {
    let (mut c, _, _, mut b) = anchored_call("xfer-7", None);
    c.from(
        B,
        &b.request(
            "REFER",
            0,
            "Refer-To: <sip:1003@127.0.0.1?Replaces=abc%3Bto-tag%3D1%3Bfrom-tag%3D2>\r\n",
            "",
        ),
    );
    c.status(B, 202, Method::Refer);
    assert!(!c.has(A, |m| method(m) == Some(Method::Refer)));
    assert_eq!(
        c.asks.len(),
        1,
        "the consultation call is asked for its leg"
    );
}

#[test]
fn the_caller_transfers_itself_away_and_the_callee_stays() {
    let (mut c, inv_b, mut a, mut b) = anchored_call("xfer-8", Some("1001"));
    c.from(A, &a.request("REFER", 0, &refer_to("1003"), ""));
    c.status(A, 202, Method::Refer);
    let n = c.request(A, Method::Notify);
    assert_eq!(call_id(&n), "xfer-8");
    let inv_c = c.request(C, Method::Invite);
    // The caller left the A side: the target gets the port the caller used.
    assert!(body(&inv_c).contains("m=audio 20000 "), "{}", body(&inv_c));
    c.from(C, &answer(&inv_c, 200, "OK", "ctag", C, SDP_A));
    c.request(C, Method::Ack);
    c.request(A, Method::Notify);
    c.request(A, Method::Bye);
    // The callee's BYE now reaches the target.
    c.from(B, &b.request("BYE", 0, "", ""));
    let bye_c = c.request(C, Method::Bye);
    assert_eq!(call_id(&bye_c), call_id(&inv_c));
    assert_ne!(call_id(&bye_c), call_id(&inv_b));
}

#[test]
fn hold_plays_music_to_the_customer_and_unhold_bridges_again() {
    let (mut c, _, _, _) = anchored_call("hold-1", None);
    let mut out = Vec::new();
    let r = c.core.command(Command::Hold, c.now, &mut out);
    assert_eq!(r, Ok("held".to_string()));
    for e in out.drain(..) {
        c.apply(e);
    }
    assert!(c
        .media
        .iter()
        .any(|op| matches!(op, MediaOp::Bridge(false))));
    assert!(c.media.iter().any(|op| matches!(
        op,
        MediaOp::Music {
            side: crate::media::relay::Side::A,
            ..
        }
    )));
    assert_eq!(
        c.core
            .command(Command::Hold, c.now, &mut out)
            .unwrap_err()
            .status,
        409
    );
    out.clear();
    c.media.clear();
    assert!(c.core.command(Command::Unhold, c.now, &mut out).is_ok());
    for e in out.drain(..) {
        c.apply(e);
    }
    assert!(c
        .media
        .iter()
        .any(|op| matches!(op, MediaOp::StopPlay(crate::media::relay::Side::A))));
    assert!(c.media.iter().any(|op| matches!(op, MediaOp::Bridge(true))));
}

#[test]
fn api_transfer_to_a_queue_keeps_the_callers_place() {
    let (mut c, _, _, _) = anchored_call("xfer-9", None);
    let mut out = Vec::new();
    let r = c.core.command(
        Command::Transfer {
            target: "5000".into(),
        },
        c.now,
        &mut out,
    );
    assert_eq!(r, Ok("queue:support".to_string()));
    for e in out.drain(..) {
        c.apply(e);
    }
    assert_eq!(c.phase(), Phase::Queued);
    let joined = c.tells.iter().find_map(|t| match t {
        Tell::Queue {
            queue,
            msg: crate::actors::queue::QueueMsg::Join(j),
            ..
        } => Some((queue.clone(), j.joined_ms)),
        _ => None,
    });
    let (queue, joined_ms) = joined.expect("the caller joins the queue");
    assert_eq!(&*queue, "support");
    assert_eq!(joined_ms, 1_700_000_000_000, "joined when the call started");
    // The agent's phone is let go; the caller hears music.
    c.request(B, Method::Bye);
    assert!(c.media.iter().any(|op| matches!(op, MediaOp::Music { .. })));
}

#[test]
fn api_refuses_what_it_cannot_do() {
    let (mut c, _, _, _) = anchored_call("xfer-10", None);
    let mut out = Vec::new();
    let e = c
        .core
        .command(
            Command::Transfer {
                target: "900441234".into(),
            },
            c.now,
            &mut out,
        )
        .unwrap_err();
    assert_eq!(e.status, 403);
    let e = c
        .core
        .command(Command::Unhold, c.now, &mut out)
        .unwrap_err();
    assert_eq!(e.status, 409);
}

#[test]
fn the_view_shows_legs_hold_and_a_transfer_in_progress() {
    let (mut c, inv_b, _, mut b) = anchored_call("view-1", None);
    let v = c.checkpoint.as_ref().expect("checkpoint").view();
    assert_eq!(v.call_id, "view-1");
    assert_eq!(v.tenant.as_deref(), Some("acme"));
    assert_eq!(v.phase, "confirmed");
    let legs: Vec<(&str, &str, Option<&str>)> = v
        .legs
        .iter()
        .map(|l| (l.position, l.state, l.user.as_deref()))
        .collect();
    assert_eq!(legs, vec![("a", "up", None), ("b", "up", Some("1002"))]);
    assert_eq!(v.legs[1].call_id, call_id(&inv_b));
    assert!(v.held.is_none() && v.transfer.is_none());

    let mut out = Vec::new();
    c.core.command(Command::Hold, c.now, &mut out).unwrap();
    for e in out.drain(..) {
        c.apply(e);
    }
    let v = c.checkpoint.as_ref().unwrap().view();
    assert_eq!(v.held, Some("a"));
    assert_eq!(v.legs[0].state, "held");
    c.core.command(Command::Unhold, c.now, &mut out).unwrap();
    for e in out.drain(..) {
        c.apply(e);
    }

    c.from(B, &b.request("REFER", 0, &refer_to("1003"), ""));
    let v = c.checkpoint.as_ref().unwrap().view();
    let t = v.transfer.as_ref().expect("a transfer in progress");
    assert_eq!(
        (t.kind, t.by, t.target.as_str()),
        ("blind", "phone", "user:1003")
    );
    let legs: Vec<(&str, &str)> = v.legs.iter().map(|l| (l.position, l.state)).collect();
    assert_eq!(
        legs,
        vec![("a", "waiting"), ("b", "setup"), ("transferor", "aside")]
    );
    assert_eq!(v.legs[2].call_id, call_id(&inv_b));
    assert_eq!(v.legs[2].user.as_deref(), Some("1002"));
    let inv_c = c.request(C, Method::Invite);
    assert_eq!(v.legs[1].call_id, call_id(&inv_c));
    c.from(C, &answer(&inv_c, 200, "OK", "ctag", C, SDP_B));
    let v = c.checkpoint.as_ref().unwrap().view();
    assert!(v.transfer.is_none());
    assert_eq!(v.transfers, vec!["blind:phone>user:1003".to_string()]);
    assert_eq!(v.legs.len(), 2);
    assert_eq!(v.legs[1].user.as_deref(), Some("1003"));
}

#[test]
fn attended_transfer_joins_the_consultation_calls_target_to_the_caller() {
    // Call 1: the caller A and agent 1002 (B), anchored.
    let (mut c1, inv_b, mut a, mut b) = anchored_call("att-1", None);
    // Call 2: the agent (authenticated caller 1002) consults 1003 at C.
    let env = FakeEnv {
        media: Some(MediaSettings {
            anchor_all: true,
            ..MediaSettings::default()
        }),
        ..FakeEnv::default()
    };
    let mut c2 = Call::with(cfg(), env);
    let parties = super::super::Parties {
        tenant: Some(Arc::from("acme")),
        caller: Some(Arc::from("1002")),
        callee: Some(Arc::from("1003")),
    };
    c2.begin_as(
        &invite("consult-1", "1003", SDP_A),
        route_to(C),
        vec![],
        parties,
    );
    let inv_c = c2.request(C, Method::Invite);
    c2.from(C, &answer(&inv_c, 200, "OK", "ctag", C, SDP_B));
    let ok2 = c2.status(A, 200, Method::Invite);
    c2.from(A, &Side::caller(&ok2).request("ACK", 1, "", ""));
    c2.request(C, Method::Ack);
    // The agent's phone names its consultation dialog: its Call-ID and both tags.
    let switch_tag = to_tag(&ok2).unwrap();
    let refer_to = format!(
        "Refer-To: <sip:1003@127.0.0.1?Replaces=consult-1%3Bto-tag%3D{switch_tag}%3Bfrom-tag%3Da-consult-1>\r\n"
    );
    c1.from(B, &b.request("REFER", 0, &refer_to, ""));
    c1.status(B, 202, Method::Refer);
    assert_eq!(
        sipfrag(&c1.request(B, Method::Notify)),
        "SIP/2.0 100 Trying"
    );
    let r = c1.asks.pop().expect("call 1 asks for the consultation leg");
    assert_eq!(r.call_id.as_ref(), b"consult-1");
    // Call 2 hands its target over: the agent's consultation leg gets a BYE, C none.
    let mut out = Vec::new();
    let handed = c2.core.hand_over(&r, c2.now, &mut out);
    c2.apply_all(out);
    let handed = handed.expect("the consultation call has the dialog");
    c2.request(A, Method::Bye);
    assert!(
        !c2.has(C, |m| method(m) == Some(Method::Bye)),
        "the target stays up"
    );
    assert!(
        !c2.core
            .call_ids()
            .iter()
            .any(|id| id.as_ref() == call_id(&inv_c).as_bytes()),
        "the target's Call-ID is no longer call 2's"
    );
    assert_eq!(c2.cdrs[0].disconnect_reason, "replaced (attended transfer)");
    // Call 1 adopts it and moves its media with a re-INVITE.
    c1.feed(Event::Adopt(Ok(Box::new(handed))));
    assert!(c1
        .registered
        .iter()
        .any(|id| id.as_ref() == call_id(&inv_c).as_bytes()));
    let reinv = c1.request(C, Method::Invite);
    assert_eq!(
        call_id(&reinv),
        call_id(&inv_c),
        "in the target's own dialog"
    );
    assert!(cseq_of(&reinv).0 > cseq_of(&inv_c).0);
    assert!(
        body(&reinv).contains("m=audio 20002 "),
        "call 1's port for the B side"
    );
    c1.from(C, &answer(&reinv, 200, "OK", "", C, SDP_B));
    c1.request(C, Method::Ack);
    assert_eq!(sipfrag(&c1.request(B, Method::Notify)), "SIP/2.0 200 OK");
    let bye_b = c1.request(B, Method::Bye);
    assert_eq!(call_id(&bye_b), call_id(&inv_b));
    // The caller is offered the call's media afresh (it may have been held).
    let refresh = c1.request(A, Method::Invite);
    assert!(body(&refresh).contains("a=sendrecv") || !body(&refresh).contains("a=sendonly"));
    c1.from(A, &answer(&refresh, 200, "OK", "", A, SDP_A));
    c1.request(A, Method::Ack);
    // Caller and target talk: the caller's BYE reaches C in C's dialog.
    c1.from(A, &a.request("BYE", 0, "", ""));
    let bye_c = c1.request(C, Method::Bye);
    assert_eq!(call_id(&bye_c), call_id(&inv_c));
    let cdr = &c1.cdrs[0];
    assert_eq!(
        cdr.transfers.as_deref(),
        Some(format!("attended:phone>sip:{C}").as_str())
    );
    assert_eq!(
        cdr.legs.iter().map(|l| l.role.as_str()).collect::<Vec<_>>(),
        vec!["caller", "callee", "transfer"]
    );
}

#[test]
fn an_attended_transfer_naming_no_dialog_recalls_the_transferor() {
    let (mut c, _, _, mut b) = anchored_call("att-2", None);
    c.from(
        B,
        &b.request(
            "REFER",
            0,
            "Refer-To: <sip:1003@127.0.0.1?Replaces=nope%3Bto-tag%3D1%3Bfrom-tag%3D2>\r\n",
            "",
        ),
    );
    c.status(B, 202, Method::Refer);
    c.request(B, Method::Notify);
    c.feed(Event::Adopt(Err("no such call here".into())));
    assert_eq!(
        sipfrag(&c.request(B, Method::Notify)),
        "SIP/2.0 481 Call/Transaction Does Not Exist"
    );
    assert!(c.media.iter().any(|op| matches!(op, MediaOp::Bridge(true))));
    assert_eq!(c.phase(), Phase::Confirmed);
}

#[test]
fn replaces_parses_escaped_and_in_any_order() {
    let r = Replaces::parse("abc@h;from-tag=F;to-tag=T").unwrap();
    assert_eq!(r.call_id.as_ref(), b"abc@h");
    assert_eq!(r.to_tag.as_ref(), b"T");
    assert_eq!(r.from_tag.as_ref(), b"F");
    assert!(Replaces::parse("abc;to-tag=T").is_none());
    let m = msg(&format!(
        "REFER sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {B};branch=z9hG4bK-r\r\nFrom: <sip:b@h>;tag=1\r\nTo: <sip:a@h>;tag=2\r\nCall-ID: r\r\nCSeq: 2 REFER\r\nRefer-To: <sip:1003@h?Replaces=c%40d%3Bto-tag%3Dt%3Bfrom-tag%3Df>\r\nContent-Length: 0\r\n\r\n"
    ));
    let (user, replaces) = transfer::refer_target(&m).unwrap();
    assert_eq!(user, "1003");
    assert_eq!(replaces.unwrap().unwrap().call_id.as_ref(), b"c@d");
}

// ---- API consultation ----

fn command(c: &mut Call, cmd: Command) -> Result<String, Refused> {
    let mut out = Vec::new();
    let r = c.core.command(cmd, c.now, &mut out);
    c.apply_all(out);
    r
}

/// A consultation up: the customer holds, the agent (B) talks to 1003 (C) on the
/// consultation session. Returns C's INVITE.
fn consulting(cid: &str) -> (Call, Message, Side) {
    let (mut c, _, a, _) = anchored_call(cid, None);
    let r = command(
        &mut c,
        Command::Consult {
            target: "1003".into(),
        },
    );
    assert_eq!(r, Ok("user:1003".to_string()));
    assert!(c.media.iter().any(|op| matches!(
        op,
        MediaOp::Music {
            side: crate::media::relay::Side::A,
            ..
        }
    )));
    let inv_c = c.request(C, Method::Invite);
    assert!(
        body(&inv_c).contains("m=audio 30002 "),
        "the consultation session's B side"
    );
    c.from(C, &answer(&inv_c, 200, "OK", "ctag", C, SDP_B));
    c.request(C, Method::Ack);
    let move_b = c.request(B, Method::Invite);
    assert!(
        body(&move_b).contains("m=audio 30000 "),
        "the agent moves to the consultation"
    );
    c.from(B, &answer(&move_b, 200, "OK", "", B, SDP_B));
    c.request(B, Method::Ack);
    assert!(c
        .consult_media
        .iter()
        .any(|op| matches!(op, MediaOp::Bridge(true))));
    (c, inv_c, a)
}

#[test]
fn consult_then_complete_hands_the_customer_to_the_target() {
    let (mut c, inv_c, mut a) = consulting("consult-2");
    c.media.clear();
    assert_eq!(
        command(&mut c, Command::ConsultComplete),
        Ok("user:1003".to_string())
    );
    let join = c.request(C, Method::Invite);
    assert_eq!(call_id(&join), call_id(&inv_c));
    assert!(
        body(&join).contains("m=audio 20002 "),
        "the target takes the agent's port"
    );
    c.from(C, &answer(&join, 200, "OK", "", C, SDP_B));
    c.request(C, Method::Ack);
    c.request(B, Method::Bye);
    assert!(c
        .media
        .iter()
        .any(|op| matches!(op, MediaOp::StopPlay(crate::media::relay::Side::A))));
    assert!(c.media.iter().any(|op| matches!(op, MediaOp::Bridge(true))));
    c.from(A, &a.request("BYE", 0, "", ""));
    let bye_c = c.request(C, Method::Bye);
    assert_eq!(call_id(&bye_c), call_id(&inv_c));
    assert_eq!(
        c.cdrs[0].transfers.as_deref(),
        Some("attended:api>user:1003")
    );
}

#[test]
fn consult_then_cancel_brings_the_agent_back() {
    let (mut c, inv_c, mut a) = consulting("consult-3");
    c.media.clear();
    assert_eq!(
        command(&mut c, Command::ConsultCancel),
        Ok("cancelled".to_string())
    );
    let bye_c = c.request(C, Method::Bye);
    assert_eq!(call_id(&bye_c), call_id(&inv_c));
    let back = c.request(B, Method::Invite);
    assert!(
        body(&back).contains("m=audio 20002 "),
        "the agent back on the call's session"
    );
    c.from(B, &answer(&back, 200, "OK", "", B, SDP_B));
    c.request(B, Method::Ack);
    assert!(c.media.iter().any(|op| matches!(op, MediaOp::Bridge(true))));
    c.from(A, &a.request("BYE", 0, "", ""));
    c.request(B, Method::Bye);
}

#[test]
fn a_busy_consultation_target_leaves_the_agent_with_the_customer() {
    let (mut c, _, _, _) = anchored_call("consult-4", None);
    command(
        &mut c,
        Command::Consult {
            target: "1003".into(),
        },
    )
    .unwrap();
    let inv_c = c.request(C, Method::Invite);
    c.from(C, &answer(&inv_c, 486, "Busy Here", "ctag", C, ""));
    c.request(C, Method::Ack);
    assert!(
        !c.has(B, |m| method(m) == Some(Method::Invite)),
        "the agent never moved"
    );
    assert!(c.media.iter().any(|op| matches!(op, MediaOp::Bridge(true))));
    assert_eq!(
        command(&mut c, Command::ConsultCancel).unwrap_err().status,
        409
    );
    // The call can be held again: nothing is left of the consultation.
    assert!(command(&mut c, Command::Hold).is_ok());
}

#[test]
fn consult_refusals() {
    let (mut c, _, _, _) = anchored_call("consult-5", None);
    assert_eq!(
        command(&mut c, Command::ConsultComplete)
            .unwrap_err()
            .status,
        409
    );
    assert_eq!(
        command(
            &mut c,
            Command::Consult {
                target: "5000".into()
            }
        )
        .unwrap_err()
        .status,
        409
    );
    assert_eq!(
        command(
            &mut c,
            Command::Consult {
                target: "900441234".into()
            }
        )
        .unwrap_err()
        .status,
        403
    );
    command(
        &mut c,
        Command::Consult {
            target: "1003".into(),
        },
    )
    .unwrap();
    assert_eq!(
        command(
            &mut c,
            Command::Consult {
                target: "1003".into()
            }
        )
        .unwrap_err()
        .status,
        409
    );
    assert_eq!(
        command(
            &mut c,
            Command::Transfer {
                target: "1003".into()
            }
        )
        .unwrap_err()
        .status,
        409
    );
}

// ---- restarts in every topology ----

fn restarted(c: &Call) -> Call {
    let cp = c.checkpoint.clone().expect("a checkpoint");
    let env = FakeEnv {
        media: Some(MediaSettings {
            anchor_all: true,
            ..MediaSettings::default()
        }),
        ..FakeEnv::default()
    };
    let mut r = Call::with(cfg(), env);
    r.feed(Event::Restore(Box::new(cp)));
    r
}

#[test]
fn a_held_call_stays_held_across_a_restart() {
    let (mut c, _, _, _) = anchored_call("rs-hold", None);
    command(&mut c, Command::Hold).unwrap();
    let mut r = restarted(&c);
    assert_eq!(r.phase(), Phase::Confirmed);
    assert_eq!(
        command(&mut r, Command::Hold).unwrap_err().status,
        409,
        "still held"
    );
    assert!(command(&mut r, Command::Unhold).is_ok());
    assert!(r.media.iter().any(|op| matches!(op, MediaOp::Bridge(true))));
}

#[test]
fn a_call_restarted_while_its_transfer_target_rings_goes_back_to_the_transferor() {
    let (mut c, inv_b, mut a, mut b) = anchored_call("rs-xfer", None);
    c.from(B, &b.request("REFER", 0, &refer_to("1003"), ""));
    let inv_c = c.request(C, Method::Invite);
    c.from(C, &answer(&inv_c, 180, "Ringing", "ctag", C, ""));
    let mut r = restarted(&c);
    let cancel = r.request(C, Method::Cancel);
    assert_eq!(call_id(&cancel), call_id(&inv_c));
    assert_eq!(
        sipfrag(&r.request(B, Method::Notify)),
        "SIP/2.0 500 Server Internal Error"
    );
    assert_eq!(r.phase(), Phase::Confirmed);
    // Caller and transferor talk again: the caller's BYE reaches the transferor.
    r.from(A, &a.request("BYE", 0, "", ""));
    let bye = r.request(B, Method::Bye);
    assert_eq!(call_id(&bye), call_id(&inv_b));
}

#[test]
fn a_call_restarted_while_consulting_is_back_with_the_agent() {
    let (c, inv_c, _) = consulting("rs-consult");
    let mut r = restarted(&c);
    let bye = r.request(C, Method::Bye);
    assert_eq!(call_id(&bye), call_id(&inv_c));
    let back = r.request(B, Method::Invite);
    assert!(body(&back).contains("m=audio 20002 "));
    assert!(r.media.iter().any(|op| matches!(op, MediaOp::Bridge(true))));
    assert_eq!(r.phase(), Phase::Confirmed);
}

// ---- transfer to an agent ----

const D: &str = "127.0.0.6:5090";

fn agent_msgs(c: &Call, agent: &str) -> Vec<String> {
    c.tells
        .iter()
        .filter_map(|t| match t {
            Tell::Agent { agent: a, msg, .. } if &**a == agent => Some(match msg {
                crate::actors::agent::AgentMsg::OfferEnded { outcome, .. } => {
                    format!("offer-ended:{outcome:?}")
                }
                crate::actors::agent::AgentMsg::CallEnded { .. } => "call-ended".to_string(),
                _ => "other".to_string(),
            }),
            _ => None,
        })
        .collect()
}

#[test]
fn a_transfer_to_an_agent_reserves_it_first() {
    let (mut c, _, mut a, mut b) = anchored_call("xfer-agent", None);
    c.from(B, &b.request("REFER", 0, &refer_to("1004"), ""));
    c.status(B, 202, Method::Refer);
    assert_eq!(c.reserves, vec![(Arc::from("acme"), Arc::from("bob"))]);
    assert!(!c.has(D, |_| true), "nothing rings before the reservation");
    c.feed(Event::AgentReserved {
        tenant: Arc::from("acme"),
        agent: Arc::from("bob"),
        phones: Ok(vec![fork_to(D)]),
    });
    let inv_d = c.request(D, Method::Invite);
    c.from(D, &answer(&inv_d, 200, "OK", "dtag", D, SDP_B));
    c.request(D, Method::Ack);
    assert_eq!(agent_msgs(&c, "bob"), vec!["offer-ended:Answered"]);
    c.from(A, &a.request("BYE", 0, "", ""));
    c.request(D, Method::Bye);
    assert_eq!(
        agent_msgs(&c, "bob"),
        vec!["offer-ended:Answered", "call-ended"]
    );
    assert_eq!(
        c.cdrs[0].transfers.as_deref(),
        Some("blind:phone>agent:bob")
    );
}

#[test]
fn a_busy_agent_is_not_offered_the_transfer_and_the_transferor_comes_back() {
    let (mut c, _, _, mut b) = anchored_call("xfer-agent-busy", None);
    c.from(B, &b.request("REFER", 0, &refer_to("1004"), ""));
    c.status(B, 202, Method::Refer);
    c.request(B, Method::Notify);
    c.feed(Event::AgentReserved {
        tenant: Arc::from("acme"),
        agent: Arc::from("bob"),
        phones: Err("on_call".into()),
    });
    assert_eq!(
        sipfrag(&c.request(B, Method::Notify)),
        "SIP/2.0 486 Busy Here"
    );
    assert!(!c.has(D, |_| true));
    assert_eq!(c.phase(), Phase::Confirmed);
}

// ---- INVITE with Replaces ----

/// A new INVITE from a phone at `at` naming the dialog with `call_id`, `local` and `remote`
/// tags (as the phone's side would put them: to-tag, from-tag).
fn replacing_invite(at: &str, cid: &str, r_call: &str, to_tag: &str, from_tag: &str) -> String {
    format!(
        "INVITE sip:1002@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {at};branch=z9hG4bK-{cid}-1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:1005@acme.test>;tag=e-{cid}\r\nTo: <sip:1002@127.0.0.1>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:1005@{at}>\r\nReplaces: {r_call};to-tag={to_tag};from-tag={from_tag}\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_A}",
        SDP_A.len()
    )
}

const E: &str = "127.0.0.7:5062";

fn from_tag_of(m: &Message) -> String {
    m.from()
        .and_then(|f| f.tag())
        .map(|t| String::from_utf8_lossy(&t).into_owned())
        .unwrap_or_default()
}

fn replacing(c: &mut Call, text: &str, user: Option<(&str, &str)>) {
    let invite = Box::new(Inbound {
        msg: msg(text),
        source: source(E),
    });
    let user = user.map(|(t, u)| (Arc::from(t), Arc::from(u)));
    c.feed(Event::Replacing { invite, user });
}

#[test]
fn an_invite_with_replaces_takes_the_named_legs_place() {
    let (mut c, inv_b, _, mut b) = anchored_call("repl-1", None);
    // A phone of the tenant (1005 at E) replaces the agent's leg B, naming B's dialog (the
    // switch's tag is the From tag of its INVITE to B).
    let switch_tag = from_tag_of(&inv_b);
    let text = replacing_invite(E, "repl-new", &call_id(&inv_b), "btag", &switch_tag);
    replacing(&mut c, &text, Some(("acme", "1005")));
    c.status(E, 100, Method::Invite);
    let ok = c.status(E, 200, Method::Invite);
    assert!(
        body(&ok).contains("m=audio 20002 "),
        "the port the replaced leg used"
    );
    assert!(c.registered.iter().any(|id| id.as_ref() == b"repl-new"));
    // The replaced leg is let go.
    let bye = c.request(B, Method::Bye);
    assert_eq!(call_id(&bye), call_id(&inv_b));
    c.from(B, &answer(&bye, 200, "OK", "", B, ""));
    // The new phone ACKs; its BYE reaches the caller.
    let mut e = Side::caller(&ok);
    e.me = E.into();
    c.from(E, &e.request("ACK", 1, "", ""));
    c.from(E, &e.request("BYE", 0, "", ""));
    c.request(A, Method::Bye);
    assert_eq!(
        c.cdrs[0].transfers.as_deref(),
        Some("replaces:phone>sip:1005@acme.test")
    );
    let _ = b.request("BYE", 0, "", "");
}

#[test]
fn an_invite_with_replaces_from_a_stranger_or_for_no_dialog_is_refused() {
    let (mut c, inv_b, _, _) = anchored_call("repl-2", None);
    let from_tag = from_tag_of(&inv_b);
    let text = replacing_invite(E, "repl-x", &call_id(&inv_b), "btag", &from_tag);
    replacing(&mut c, &text, None);
    c.status(E, 403, Method::Invite);
    replacing(&mut c, &text, Some(("other-tenant", "1005")));
    c.status(E, 403, Method::Invite);
    let wrong = replacing_invite(E, "repl-y", &call_id(&inv_b), "nope", &from_tag);
    replacing(&mut c, &wrong, Some(("acme", "1005")));
    c.status(E, 481, Method::Invite);
    assert!(
        !c.has(B, |m| method(m) == Some(Method::Bye)),
        "nothing replaced"
    );
    assert_eq!(c.phase(), Phase::Confirmed);
}

#[test]
fn the_view_shows_a_consultation() {
    let (c, inv_c, _) = consulting("view-consult");
    let v = c.checkpoint.as_ref().expect("checkpoint").view();
    let consult = v.consult.as_ref().expect("a consultation");
    assert_eq!((consult.target.as_str(), consult.up), ("user:1003", true));
    assert_eq!(v.held, Some("a"));
    let legs: Vec<(&str, &str)> = v.legs.iter().map(|l| (l.position, l.state)).collect();
    assert_eq!(
        legs,
        vec![("a", "held"), ("b", "consulting"), ("consulted", "up")]
    );
    assert_eq!(v.legs[2].call_id, call_id(&inv_c));
    assert_eq!(v.legs[2].user.as_deref(), Some("1003"));
}

// ---- three-way and supervision (the call's mix) ----

/// Legs of a mix as (session, side), and the (listener, speaker) pairs kept apart.
type MixShape = (
    Vec<(String, crate::media::relay::Side)>,
    Vec<(usize, usize)>,
);

/// The mix as last asked: its legs (session, side) and the pairs kept apart.
fn last_mix(c: &Call) -> Option<MixShape> {
    match c.mixes.last()? {
        MixOp::Set { legs, apart } => Some((
            legs.iter()
                .map(|l| (String::from_utf8_lossy(&l.session).into_owned(), l.side))
                .collect(),
            apart.clone(),
        )),
        MixOp::End => None,
    }
}

/// A third party (1003 at C) rung by `cmd` and answered: it is in the mix. Its INVITE and
/// its side of the dialog.
fn third_party_up(c: &mut Call, cmd: Command) -> (Message, Side) {
    assert_eq!(command(c, cmd), Ok("user:1003".to_string()));
    assert!(
        !c.media.iter().any(|op| matches!(op, MediaOp::Music { .. })),
        "nobody holds while the third party rings"
    );
    let inv_c = c.request(C, Method::Invite);
    assert!(
        body(&inv_c).contains("m=audio 30002 "),
        "on the second session"
    );
    assert!(c.mixes.is_empty(), "no mix before the answer");
    c.from(C, &answer(&inv_c, 200, "OK", "ctag", C, SDP_B));
    c.request(C, Method::Ack);
    assert!(
        !c.has(B, |m| method(m) == Some(Method::Invite)),
        "the agent stays on its session (no re-INVITE)"
    );
    let mut side = Side::callee(&inv_c, "ctag");
    side.me = C.into();
    (inv_c, side)
}

/// A queue call of `support` with 1003 as its supervisor.
fn queue_call(cid: &str) -> (Call, Message, Side, Side) {
    let (mut c, inv_b, a, b) = anchored_call(cid, None);
    Arc::make_mut(c.core.core.as_mut().unwrap()).queue = Some(QueueLeg {
        tenant: Arc::from("acme"),
        queue: Arc::from("support"),
        priority: 0,
        joined_ms: 0,
        skills: Vec::new(),
        agent: Some(Arc::from("alice")),
        answered_offer: Some(1),
        wait_ms: Some(0),
        abandoned: false,
        waiting: false,
        released: false,
    });
    (c, inv_b, a, b)
}

fn supervised(c: &mut Call) {
    let env = FakeEnv {
        supervisors: vec![("support".into(), "1003".into())],
        ..FakeEnv::default()
    };
    // Only the supervisor table differs; the targets are anchored_call's.
    let mut targets = HashMap::new();
    targets.insert(
        "1003".to_string(),
        Ok(TransferTarget::Phones {
            user: Arc::from("1003"),
            forks: vec![fork_to(C)],
        }),
    );
    c.core.env = Box::new(FakeEnv {
        media: Some(MediaSettings {
            anchor_all: true,
            ..MediaSettings::default()
        }),
        targets,
        ..env
    });
}

#[test]
fn a_three_way_puts_the_third_party_in_the_mix_and_its_leaving_bridges_the_two_again() {
    let (mut c, _, mut a, _) = anchored_call("3way-1", None);
    let (inv_c, mut cs) = third_party_up(
        &mut c,
        Command::Conference {
            target: "1003".into(),
        },
    );
    let call = call_id(&inv_c);
    let (legs, apart) = last_mix(&c).expect("a mix");
    assert_eq!(
        legs,
        vec![
            ("3way-1".to_string(), crate::media::relay::Side::A),
            ("3way-1".to_string(), crate::media::relay::Side::B),
            ("3way-1~consult".to_string(), crate::media::relay::Side::B),
        ]
    );
    assert!(apart.is_empty(), "everyone hears everyone");
    let view = c.checkpoint.as_ref().unwrap().view();
    assert_eq!(view.consult.as_ref().map(|v| v.kind), Some("conference"));
    assert!(view.legs.iter().any(|l| l.position == "conference"));
    // Hold or transfer now would break the three-way.
    assert_eq!(command(&mut c, Command::Hold).unwrap_err().status, 409);
    // The third party hangs up: the mix ends, caller and agent stay connected.
    c.from(C, &cs.request("BYE", 0, "", ""));
    c.status(C, 200, Method::Bye);
    assert_eq!(c.mixes.last(), Some(&MixOp::End));
    assert_eq!(c.phase(), Phase::Confirmed);
    assert!(!c.has(A, |m| method(m) == Some(Method::Bye)));
    assert!(!c.has(B, |m| method(m) == Some(Method::Bye)));
    assert_eq!(
        command(&mut c, Command::ConferenceEnd).unwrap_err().status,
        409
    );
    c.from(A, &a.request("BYE", 0, "", ""));
    c.request(B, Method::Bye);
    let cdr = &c.cdrs[0];
    assert_eq!(cdr.transfers.as_deref(), Some("conference:api>user:1003"));
    let third = cdr
        .legs
        .iter()
        .find(|l| l.call_id == call)
        .expect("its leg");
    assert_eq!(
        (third.role.as_str(), third.end_reason.as_str()),
        ("conference", "bye")
    );
}

#[test]
fn when_the_caller_leaves_a_three_way_the_agent_and_third_party_stay() {
    let (mut c, _, mut a, mut b) = anchored_call("3way-2", None);
    let (inv_c, _) = third_party_up(
        &mut c,
        Command::Conference {
            target: "1003".into(),
        },
    );
    c.from(A, &a.request("BYE", 0, "", ""));
    c.status(A, 200, Method::Bye);
    assert!(
        !c.has(B, |m| method(m) == Some(Method::Bye)),
        "the agent stays"
    );
    assert!(
        !c.has(C, |m| method(m) == Some(Method::Bye)),
        "the third party stays"
    );
    assert_eq!(c.phase(), Phase::Confirmed);
    let (legs, _) = last_mix(&c).expect("a mix");
    assert_eq!(
        legs,
        vec![
            ("3way-2".to_string(), crate::media::relay::Side::B),
            ("3way-2~consult".to_string(), crate::media::relay::Side::B),
        ]
    );
    // Then the agent: the call ends, the third party is sent BYE.
    c.from(B, &b.request("BYE", 0, "", ""));
    c.status(B, 200, Method::Bye);
    let bye_c = c.request(C, Method::Bye);
    assert_eq!(call_id(&bye_c), call_id(&inv_c));
    assert!(c.ended);
    assert_eq!(c.cdrs.len(), 1);
}

#[test]
fn when_the_agent_leaves_a_three_way_the_third_party_hanging_up_ends_the_call() {
    let (mut c, _, _, mut b) = anchored_call("3way-3", None);
    let (_, mut cs) = third_party_up(
        &mut c,
        Command::Conference {
            target: "1003".into(),
        },
    );
    c.from(B, &b.request("BYE", 0, "", ""));
    c.status(B, 200, Method::Bye);
    assert!(!c.has(A, |m| method(m) == Some(Method::Bye)));
    assert_eq!(
        command(&mut c, Command::ConferenceEnd).unwrap_err().status,
        409,
        "the third party is the call now"
    );
    c.from(C, &cs.request("BYE", 0, "", ""));
    c.status(C, 200, Method::Bye);
    c.request(A, Method::Bye);
    assert!(
        !c.has(B, |m| method(m) == Some(Method::Bye)),
        "gone already"
    );
    assert!(c.ended);
}

#[test]
fn a_supervisor_listens_whispers_barges_and_leaves() {
    let (mut c, _, mut a, _) = queue_call("mon-1");
    supervised(&mut c);
    let (inv_c, _) = third_party_up(
        &mut c,
        Command::Monitor {
            supervisor: "1003".into(),
            mode: MonitorMode::Listen,
        },
    );
    // The caller is 0, the agent 1, the supervisor 2.
    assert_eq!(last_mix(&c).unwrap().1, vec![(0, 2), (1, 2)]);
    assert_eq!(
        command(&mut c, Command::MonitorMode(MonitorMode::Whisper)),
        Ok("whisper".to_string())
    );
    assert_eq!(last_mix(&c).unwrap().1, vec![(0, 2)]);
    command(&mut c, Command::MonitorMode(MonitorMode::Barge)).unwrap();
    assert_eq!(last_mix(&c).unwrap().1, vec![]);
    let view = c.checkpoint.as_ref().unwrap().view();
    assert_eq!(view.consult.as_ref().and_then(|v| v.mode), Some("barge"));
    assert_eq!(
        command(&mut c, Command::ConferenceEnd).unwrap_err().status,
        409
    );
    assert_eq!(
        command(&mut c, Command::MonitorEnd),
        Ok("ended".to_string())
    );
    let bye_c = c.request(C, Method::Bye);
    assert_eq!(call_id(&bye_c), call_id(&inv_c));
    assert_eq!(c.mixes.last(), Some(&MixOp::End));
    assert_eq!(
        command(&mut c, Command::MonitorMode(MonitorMode::Listen))
            .unwrap_err()
            .status,
        409
    );
    c.from(A, &a.request("BYE", 0, "", ""));
    c.request(B, Method::Bye);
    assert_eq!(
        c.cdrs[0].transfers.as_deref(),
        Some("monitor:listen>user:1003,monitor:whisper>user:1003,monitor:barge>user:1003")
    );
    assert!(c.cdrs[0].legs.iter().any(|l| l.role == "monitor"));
}

#[test]
fn only_a_supervisor_of_the_calls_queue_may_monitor() {
    let monitor = |who: &str| Command::Monitor {
        supervisor: who.into(),
        mode: MonitorMode::Listen,
    };
    // Not a queue call.
    let (mut c, _, _, _) = anchored_call("mon-2", None);
    supervised(&mut c);
    assert_eq!(command(&mut c, monitor("1003")).unwrap_err().status, 403);
    // A queue call, but 1003 supervises another queue.
    let (mut c, _, _, _) = queue_call("mon-3");
    supervised(&mut c);
    Arc::make_mut(c.core.core.as_mut().unwrap())
        .queue
        .as_mut()
        .unwrap()
        .queue = Arc::from("sales");
    assert_eq!(command(&mut c, monitor("1003")).unwrap_err().status, 403);
    assert!(!c.has(C, |_| true), "nothing rang");
    // An unknown user.
    let (mut c, _, _, _) = queue_call("mon-4");
    supervised(&mut c);
    assert_eq!(command(&mut c, monitor("nobody")).unwrap_err().status, 403);
}

#[test]
fn a_supervisor_who_does_not_answer_leaves_the_call_as_it_was() {
    let (mut c, _, _, _) = queue_call("mon-5");
    supervised(&mut c);
    command(
        &mut c,
        Command::Monitor {
            supervisor: "1003".into(),
            mode: MonitorMode::Barge,
        },
    )
    .unwrap();
    let inv_c = c.request(C, Method::Invite);
    c.from(C, &answer(&inv_c, 486, "Busy Here", "ctag", C, ""));
    c.request(C, Method::Ack);
    assert!(c.mixes.is_empty());
    assert!(!c.has(B, |m| method(m) == Some(Method::Invite)));
    assert_eq!(c.phase(), Phase::Confirmed);
    assert!(
        command(&mut c, Command::Hold).is_ok(),
        "nothing is left of it"
    );
}

#[test]
fn a_call_restarted_in_a_three_way_states_its_mix_again() {
    let (mut c, _, _, _) = anchored_call("rs-3way", None);
    third_party_up(
        &mut c,
        Command::Conference {
            target: "1003".into(),
        },
    );
    let before = last_mix(&c);
    let mut r = restarted(&c);
    assert_eq!(last_mix(&r), before, "the same mix, stated again");
    assert!(
        !r.has(C, |m| method(m) == Some(Method::Bye)),
        "the third party stays"
    );
    assert_eq!(r.phase(), Phase::Confirmed);
    assert_eq!(
        command(&mut r, Command::ConferenceEnd),
        Ok("ended".to_string())
    );
    r.request(C, Method::Bye);
}

#[test]
fn a_second_session_is_owned_by_its_call() {
    let call = Bytes::from_static(b"abc@host");
    assert_eq!(consult_owner(&consult_key(&call)), Some(&b"abc@host"[..]));
    assert_eq!(consult_owner(b"abc~def@host"), None);
    assert_eq!(consult_owner(b"abc@host"), None);
}

#[test]
fn a_three_ways_parties_are_muted_and_made_deaf_in_the_relation() {
    let (mut c, _, mut a, _) = anchored_call("3way-mute", None);
    let party = |party, mute, deaf| Command::ConferenceParty { party, mute, deaf };
    assert_eq!(
        command(&mut c, party(Party::Caller, Some(true), None))
            .unwrap_err()
            .status,
        409,
        "no three-way yet"
    );
    third_party_up(
        &mut c,
        Command::Conference {
            target: "1003".into(),
        },
    );
    // Caller 0, agent 1, third 2; pairs are (listener, speaker).
    assert_eq!(
        command(&mut c, party(Party::Caller, Some(true), None)),
        Ok("muted".to_string())
    );
    assert_eq!(last_mix(&c).unwrap().1, vec![(1, 0), (2, 0)]);
    command(&mut c, party(Party::Third, None, Some(true))).unwrap();
    assert_eq!(last_mix(&c).unwrap().1, vec![(1, 0), (2, 0), (2, 1)]);
    command(&mut c, party(Party::Caller, Some(false), None)).unwrap();
    assert_eq!(last_mix(&c).unwrap().1, vec![(2, 0), (2, 1)]);
    // The caller leaves: the indices follow the legs still in the mix (agent 0, third 1).
    c.from(A, &a.request("BYE", 0, "", ""));
    c.status(A, 200, Method::Bye);
    assert_eq!(last_mix(&c).unwrap().1, vec![(1, 0)]);
    assert_eq!(
        command(&mut c, party(Party::Caller, Some(true), None))
            .unwrap_err()
            .status,
        409,
        "the caller left"
    );
}

// ---- test numbers the switch answers itself ----

fn service_route(service: crate::actors::router::Service) -> Route {
    let mut r = route_to(A);
    r.target_text = service.label().into();
    r.media = MediaPolicy {
        anchor: true,
        answer_first: true,
        service: Some(service),
        ..MediaPolicy::default()
    };
    r
}

fn media_env() -> FakeEnv {
    FakeEnv {
        media: Some(MediaSettings::default()),
        ..FakeEnv::default()
    }
}

#[test]
fn the_echo_number_answers_at_once_echoes_and_ends_on_bye() {
    use crate::actors::router::Service;
    let mut c = Call::with(cfg(), media_env());
    c.begin(
        &invite("echo-1", "9196", SDP_A),
        service_route(Service::Echo),
        vec![],
    );
    let ok = c.status(A, 200, Method::Invite);
    assert!(
        body(&ok).contains("m=audio 20000 "),
        "the switch's own answer"
    );
    assert!(!c.has(B, |_| true), "no B leg is ever placed");
    let side = crate::media::relay::Side::A;
    assert!(c
        .media
        .iter()
        .any(|op| matches!(op, MediaOp::Echo(s) if *s == side)));
    assert!(!c.media.iter().any(|op| matches!(op, MediaOp::Music { .. })));
    assert!(
        !c.timers
            .iter()
            .any(|t| t.1 == TimerFire::Call(CallTimer::Announce)),
        "no queue announcements"
    );
    let view = c.checkpoint.as_ref().expect("a checkpoint").view();
    assert_eq!(view.legs.len(), 1);
    assert_eq!(view.legs[0].state, "up");
    let mut a = Side::caller(&ok);
    c.from(A, &a.request("ACK", 1, "", ""));
    c.from(A, &a.request("BYE", 0, "", ""));
    c.status(A, 200, Method::Bye);
    assert!(c.ended);
    let cdr = &c.cdrs[0];
    assert_eq!(cdr.target.as_deref(), Some("echo"));
    assert!(cdr.answer_at.is_some(), "an answered call in the CDR");
}

#[test]
fn the_music_number_plays_music_and_is_bounded() {
    use crate::actors::router::Service;
    let mut c = Call::with(cfg(), media_env());
    c.begin(
        &invite("music-1", "9664", SDP_A),
        service_route(Service::Music),
        vec![],
    );
    let ok = c.status(A, 200, Method::Invite);
    assert!(c
        .media
        .iter()
        .any(|op| matches!(op, MediaOp::Music { announce: None, .. })));
    let mut a = Side::caller(&ok);
    c.from(A, &a.request("ACK", 1, "", ""));
    c.advance(super::service::SERVICE_MAX_DURATION + Duration::from_secs(1));
    c.request(A, Method::Bye);
    assert!(c.ended);
}

#[test]
fn a_test_number_without_media_or_an_offer_is_refused_with_488() {
    use crate::actors::router::Service;
    // No relay engine: nothing to answer with.
    let mut c = Call::start(
        &invite("echo-2", "9196", SDP_A),
        service_route(Service::Echo),
        vec![],
    );
    c.status(A, 488, Method::Invite);
    assert!(c.ended);
    // A delayed offer (no SDP in the INVITE).
    let mut c = Call::with(cfg(), media_env());
    c.begin(
        &invite("echo-3", "9196", ""),
        service_route(Service::Echo),
        vec![],
    );
    c.status(A, 488, Method::Invite);
}

#[test]
fn a_three_way_released_after_the_caller_left_sends_no_bye_to_the_caller() {
    let (mut c, _, mut a, _) = anchored_call("3way-release", None);
    third_party_up(
        &mut c,
        Command::Conference {
            target: "1003".into(),
        },
    );
    c.from(A, &a.request("BYE", 0, "", ""));
    c.status(A, 200, Method::Bye);
    c.feed(Event::Hangup("released by api".into()));
    c.request(B, Method::Bye);
    c.request(C, Method::Bye);
    assert!(
        !c.has(A, |m| method(m) == Some(Method::Bye)),
        "its dialog is over"
    );
    assert!(c.ended);
}

#[test]
fn the_agent_alone_with_the_third_party_is_answered_by_the_switch() {
    let (mut c, _, mut a, mut b) = anchored_call("3way-alone", None);
    third_party_up(
        &mut c,
        Command::Conference {
            target: "1003".into(),
        },
    );
    c.from(A, &a.request("BYE", 0, "", ""));
    c.status(A, 200, Method::Bye);
    c.from(B, &b.request("INFO", 0, "", ""));
    c.status(B, 200, Method::Info);
    c.from(B, &b.request("INVITE", 0, "", SDP_B));
    c.status(B, 488, Method::Invite);
    assert!(!c.has(A, |_| true), "nothing goes to the caller who left");
    assert_eq!(c.phase(), Phase::Confirmed);
}

#[test]
fn a_consultation_completed_as_a_conference_joins_the_customer_and_ends_back_with_the_agent() {
    let (mut c, inv_c, _) = consulting("consult-conf");
    c.media.clear();
    assert_eq!(
        command(&mut c, Command::ConsultConference),
        Ok("user:1003".to_string())
    );
    assert!(c
        .media
        .iter()
        .any(|op| matches!(op, MediaOp::StopPlay(crate::media::relay::Side::A))));
    let (legs, apart) = last_mix(&c).expect("a mix");
    assert_eq!(
        legs,
        vec![
            ("consult-conf".to_string(), crate::media::relay::Side::A),
            (
                "consult-conf~consult".to_string(),
                crate::media::relay::Side::A
            ),
            (
                "consult-conf~consult".to_string(),
                crate::media::relay::Side::B
            ),
        ],
        "the agent stays on the consultation's session"
    );
    assert!(apart.is_empty());
    assert_eq!(
        command(&mut c, Command::ConsultConference)
            .unwrap_err()
            .status,
        409
    );
    // The third party is let go: the agent comes back to the customer's session.
    assert_eq!(
        command(&mut c, Command::ConferenceEnd),
        Ok("ended".to_string())
    );
    let bye_c = c.request(C, Method::Bye);
    assert_eq!(call_id(&bye_c), call_id(&inv_c));
    assert_eq!(c.mixes.last(), Some(&MixOp::End));
    let back = c.request(B, Method::Invite);
    assert!(
        body(&back).contains("m=audio 20002 "),
        "back on the call's session"
    );
    assert!(c.media.iter().any(|op| matches!(op, MediaOp::Bridge(true))));
}

#[test]
fn a_queue_agent_who_leaves_a_three_way_is_freed_while_the_others_talk_on() {
    let (mut c, _, _, mut b) = queue_call("3way-agent");
    third_party_up(
        &mut c,
        Command::Conference {
            target: "1003".into(),
        },
    );
    assert!(agent_msgs(&c, "alice").is_empty());
    c.from(B, &b.request("BYE", 0, "", ""));
    c.status(B, 200, Method::Bye);
    assert_eq!(agent_msgs(&c, "alice"), vec!["call-ended".to_string()]);
    assert_eq!(c.phase(), Phase::Confirmed);
}

fn conference_route(id: &str) -> Route {
    use crate::actors::router::Service;
    let mut r = service_route(Service::Conference);
    r.target_text = format!("conference:{id}");
    r.media.tenant = Some(Arc::from("t1"));
    r.media.conference = Some(Arc::from(id));
    r
}

#[test]
fn a_conference_number_joins_the_caller_then_answers_and_leaves_on_bye() {
    let env = media_env();
    let seats = env.seats.clone();
    let mut c = Call::with(cfg(), env);
    c.begin(
        &invite("conf-1", "7000", SDP_A),
        conference_route("room"),
        vec![],
    );
    let ok = c.status(A, 200, Method::Invite);
    assert!(body(&ok).contains("m=audio 20000 "), "the switch answers");
    assert!(!c.has(B, |_| true), "no B leg");
    let joined = seats.lock().unwrap().clone();
    assert_eq!(joined.len(), 1);
    assert!(
        joined[0].starts_with("join t1/room conf-1 dial-in sip:alice@"),
        "{joined:?}"
    );
    let mut a = Side::caller(&ok);
    c.from(A, &a.request("ACK", 1, "", ""));
    c.from(A, &a.request("BYE", 0, "", ""));
    c.status(A, 200, Method::Bye);
    assert!(c.ended);
    assert_eq!(seats.lock().unwrap()[1], "leave t1/room conf-1");
    let cdr = &c.cdrs[0];
    assert_eq!(cdr.target.as_deref(), Some("conference:room"));
    assert!(cdr.answer_at.is_some());
}

#[test]
fn a_full_conference_is_refused_with_486_and_nothing_answered() {
    let env = FakeEnv {
        conference_full: true,
        ..media_env()
    };
    let seats = env.seats.clone();
    let mut c = Call::with(cfg(), env);
    c.begin(
        &invite("conf-2", "7000", SDP_A),
        conference_route("room"),
        vec![],
    );
    c.status(A, 486, Method::Invite);
    assert!(c.ended);
    assert!(!c.has(A, |m| m.status() == Some(200)));
    assert!(
        !seats.lock().unwrap().iter().any(|s| s.starts_with("join")),
        "never joined"
    );
}

#[test]
fn a_conference_caller_stays_when_its_actor_restarts_and_leaves_on_bye() {
    let env = media_env();
    let mut c = Call::with(cfg(), env);
    c.begin(
        &invite("conf-3", "7000", SDP_A),
        conference_route("room"),
        vec![],
    );
    let ok = c.status(A, 200, Method::Invite);
    let mut a = Side::caller(&ok);
    c.from(A, &a.request("ACK", 1, "", ""));
    let mut r = restarted(&c);
    assert!(!r.ended, "an answered caller is not ended by a restart");
    assert!(!r.has(A, |m| m.status() == Some(500)));
    assert!(r
        .timers
        .iter()
        .any(|t| t.1 == TimerFire::Call(CallTimer::MaxDuration)));
    r.from(A, &a.request("BYE", 0, "", ""));
    r.status(A, 200, Method::Bye);
    assert!(r.ended);
    assert_eq!(r.cdrs[0].target.as_deref(), Some("conference:room"));
    assert!(r.cdrs[0].answer_at.is_some(), "answered before the restart");
}

#[test]
fn a_call_moved_into_a_conference_lets_the_other_leg_go_and_ends_on_its_bye() {
    let (mut c, _, mut a, _) = anchored_call("move-1", None);
    let seats = Arc::new(std::sync::Mutex::new(Vec::new()));
    c.core.env = Box::new(FakeEnv {
        media: Some(MediaSettings {
            anchor_all: true,
            ..MediaSettings::default()
        }),
        seats: seats.clone(),
        ..FakeEnv::default()
    });
    let join = |tenant: &str| Command::JoinConference {
        tenant: Arc::from(tenant),
        id: Arc::from("room"),
        callee: false,
    };
    // Another tenant's room: as if there were no such call.
    assert_eq!(command(&mut c, join("other")).unwrap_err().status, 404);
    assert!(seats.lock().unwrap().is_empty());
    assert_eq!(command(&mut c, join("acme")), Ok("conference:room".into()));
    let joined = seats.lock().unwrap().clone();
    assert!(
        joined[0].starts_with("join acme/room move-1 moved"),
        "{joined:?}"
    );
    // The callee is let go; the caller's leg is the call now.
    let bye = c.request(B, Method::Bye);
    c.from(B, &answer(&bye, 200, "OK", "btag", B, ""));
    assert!(!c.ended);
    assert_eq!(command(&mut c, Command::Hold).unwrap_err().status, 409);
    // A re-INVITE would move its media away from the room: 488 leaves it as it is.
    c.from(A, &a.request("INVITE", 0, "", SDP_A));
    c.status(A, 488, Method::Invite);
    assert!(!c.has(B, |_| true), "nothing for the leg that left");
    c.from(A, &a.request("BYE", 0, "", ""));
    c.status(A, 200, Method::Bye);
    assert!(c.ended);
    assert!(!c.has(B, |m| method(m) == Some(Method::Bye)));
    assert_eq!(seats.lock().unwrap()[1], "leave acme/room move-1");
    let cdr = &c.cdrs[0];
    assert_eq!(cdr.transfers.as_deref(), Some("conference:api>room:room"));
}

#[test]
fn in_dialog_requests_to_a_number_the_switch_answers_are_answered_here() {
    use crate::actors::router::Service;
    let mut c = Call::with(cfg(), media_env());
    c.begin(
        &invite("echo-dlg", "9196", SDP_A),
        service_route(Service::Echo),
        vec![],
    );
    let ok = c.status(A, 200, Method::Invite);
    let mut a = Side::caller(&ok);
    c.from(A, &a.request("ACK", 1, "", ""));
    c.from(A, &a.request("OPTIONS", 0, "", ""));
    c.status(A, 200, Method::Options);
    // Its media is the switch's: an offer would move nothing (491: a phone keeps the
    // session it has).
    c.from(A, &a.request("INVITE", 0, "", SDP_A));
    c.status(A, 491, Method::Invite);
    c.from(A, &a.request("BYE", 0, "", ""));
    c.status(A, 200, Method::Bye);
    assert!(c.ended);
    assert!(!c.has(B, |_| true), "nothing is ever sent to a B leg");
    assert!(
        !c.has(A, |m| m.method().is_some()),
        "no request is sent back to the caller"
    );
}

// ---- call flows (IVR) ----

const FLOW: &str = r##"
id = "main"
[[steps]]
id = "welcome"
type = "menu"
prompt = "welcome"
choices = { "1" = "sales", "2" = "more" }
timeout_secs = 5
retries = 1
timeout_prompt = "no-input"
invalid_prompt = "invalid"
fail = "bye"
[[steps]]
id = "more"
type = "menu"
prompt = "more"
choices = { "3" = "vip", "4" = "account" }
[[steps]]
id = "vip"
type = "set"
priority = 9
skills = { vip = 5 }
next = "sales"
[[steps]]
id = "sales"
type = "queue"
target = "sales"
[[steps]]
id = "account"
type = "collect"
var = "account"
max_digits = 4
terminator = "#"
next = "desk"
[[steps]]
id = "desk"
type = "user"
target = "1001"
[[steps]]
id = "bye"
type = "play"
prompt = "bye"
next = "end"
[[steps]]
id = "end"
type = "hangup"
"##;

fn flow_route() -> Route {
    flow_route_with(FLOW, crate::config::flow::Calendar::default())
}

fn flow_route_with(text: &str, calendar: crate::config::flow::Calendar) -> Route {
    flow_route_hooked(text, calendar, None)
}

fn flow_route_hooked(
    text: &str,
    calendar: crate::config::flow::Calendar,
    webhook: Option<Arc<crate::config::flow::WebhookTarget>>,
) -> Route {
    let config: crate::config::flow::FlowConfig = toml::from_str(text).expect("flow parses");
    let queues = ["sales".to_string()].into();
    let flow = crate::config::flow::compile(
        "flow",
        &config,
        &crate::config::flow::FlowScope {
            queues: &queues,
            calendar: &calendar,
            webhook: webhook.as_ref(),
            prompts: None,
        },
    )
    .expect("flow compiles");
    let mut r = route_to(A);
    r.target_text = "flow:main".into();
    r.media = MediaPolicy {
        anchor: true,
        answer_first: true,
        tenant: Some(Arc::from("acme")),
        flow: Some(Arc::new(flow)),
        ..MediaPolicy::default()
    };
    r
}

fn flow_env() -> FakeEnv {
    let mut env = media_env();
    for (id, ms) in [
        ("welcome", 2000),
        ("more", 1500),
        ("no-input", 800),
        ("invalid", 700),
        ("bye", 1000),
    ] {
        env.prompts.insert(id.into(), ms);
    }
    env
}

/// A call answered by the flow, its ACK sent.
fn flow_call(cid: &str, env: FakeEnv) -> (Call, Side) {
    let mut c = Call::with(cfg(), env);
    c.begin_as(
        &invite(cid, "8000", SDP_A),
        flow_route(),
        vec![],
        super::super::Parties {
            tenant: Some(Arc::from("acme")),
            ..Default::default()
        },
    );
    let ok = c.status(A, 200, Method::Invite);
    assert!(
        body(&ok).contains("m=audio 20000 "),
        "the switch's own answer"
    );
    let mut a = Side::caller(&ok);
    c.from(A, &a.request("ACK", 1, "", ""));
    (c, a)
}

fn digit(c: &mut Call, d: char) {
    c.feed(Event::Dtmf {
        side: crate::media::relay::Side::A,
        digit: d,
        source: crate::media::relay::DtmfSource::Rfc4733,
    });
}

/// The prompt lists played to the caller, in order.
fn prompts_played(c: &Call) -> Vec<Vec<String>> {
    c.media
        .iter()
        .filter_map(|op| match op {
            MediaOp::Prompts { ids, .. } => Some(ids.clone()),
            _ => None,
        })
        .collect()
}

/// The queue joined, with the caller's priority and the number of its own skills.
fn joined_queue(c: &Call) -> Option<(String, u32, usize)> {
    c.tells.iter().find_map(|t| match t {
        Tell::Queue {
            queue,
            msg: crate::actors::queue::QueueMsg::Join(j),
            ..
        } => Some((queue.to_string(), j.priority, j.skills.len())),
        _ => None,
    })
}

#[test]
fn a_flow_answers_plays_its_menu_and_two_digits_lead_to_the_queue_with_priority() {
    let (mut c, _a) = flow_call("flow-1", flow_env());
    assert_eq!(prompts_played(&c), vec![vec!["welcome".to_string()]]);
    assert!(
        !c.media.iter().any(|op| matches!(op, MediaOp::Music { .. })),
        "no music while the flow plays its prompts"
    );
    assert!(c.core.info().anchored);
    digit(&mut c, '2');
    assert_eq!(prompts_played(&c)[1], vec!["more".to_string()]);
    assert!(c
        .media
        .iter()
        .any(|op| matches!(op, MediaOp::StopPlay(crate::media::relay::Side::A))));
    digit(&mut c, '3');
    assert_eq!(joined_queue(&c), Some(("sales".to_string(), 9, 1)));
    assert_eq!(c.phase(), Phase::Queued);
    assert!(c.media.iter().any(|op| matches!(op, MediaOp::Music { .. })));
    assert_eq!(c.core.info().dtmf, "23");
    // The flow's timer is gone: nothing more happens in the menu.
    c.advance(Duration::from_secs(30));
    assert_eq!(prompts_played(&c).len(), 2);
    assert!(!c.ended);
}

#[test]
fn a_menu_retries_on_timeout_and_invalid_input_then_takes_its_fail_step() {
    let (mut c, _a) = flow_call("flow-2", flow_env());
    // Nothing for the prompt (2 s) and the timeout (5 s): the timeout prompt, the menu again.
    c.advance(Duration::from_millis(6900));
    assert_eq!(
        prompts_played(&c).len(),
        1,
        "not before the prompt and timeout"
    );
    c.advance(Duration::from_millis(200));
    assert_eq!(
        prompts_played(&c)[1],
        vec!["no-input".to_string(), "welcome".to_string()]
    );
    // A digit the menu lacks: out of retries (1), the fail step plays and hangs up.
    digit(&mut c, '7');
    assert_eq!(prompts_played(&c)[2], vec!["bye".to_string()]);
    assert!(!c.ended);
    c.advance(Duration::from_millis(1000));
    c.request(A, Method::Bye);
    assert!(c.ended);
    assert_eq!(c.cdrs[0].disconnect_reason, "flow hangup");
    assert!(joined_queue(&c).is_none());
}

#[test]
fn an_invalid_digit_hears_the_invalid_prompt_and_the_menu_again() {
    let (mut c, _a) = flow_call("flow-3", flow_env());
    digit(&mut c, '9');
    assert_eq!(
        prompts_played(&c)[1],
        vec!["invalid".to_string(), "welcome".to_string()]
    );
    digit(&mut c, '1');
    assert_eq!(joined_queue(&c), Some(("sales".to_string(), 0, 0)));
}

#[test]
fn collect_takes_digits_up_to_the_terminator_then_rings_the_user() {
    let mut env = flow_env();
    env.users.insert(
        "1001".into(),
        vec![Fork {
            ruri: Bytes::from(format!("sip:1001@{B}")),
            dest: Dest {
                protocol: Protocol::Udp,
                addr: addr(B),
                conn: None,
            },
        }],
    );
    let (mut c, _a) = flow_call("flow-4", env);
    digit(&mut c, '2');
    digit(&mut c, '4');
    for d in ['5', '6', '#'] {
        digit(&mut c, d);
    }
    let inv = c.request(B, Method::Invite);
    assert!(
        body(&inv).contains("m=audio 20002 "),
        "the user is offered the switch's SDP"
    );
    assert_eq!(c.phase(), Phase::Setup);
}

#[test]
fn a_flow_user_not_registered_ends_the_call() {
    let (mut c, _a) = flow_call("flow-5", flow_env());
    digit(&mut c, '2');
    digit(&mut c, '4');
    // The collect step times out with what it has.
    digit(&mut c, '5');
    c.advance(Duration::from_secs(6));
    c.request(A, Method::Bye);
    assert_eq!(c.cdrs[0].disconnect_reason, "flow user not registered");
}

#[test]
fn a_flow_without_media_is_refused_and_a_restarted_actor_plays_the_step_again() {
    let mut c = Call::with(cfg(), FakeEnv::default());
    c.begin(&invite("flow-6", "8000", SDP_A), flow_route(), vec![]);
    c.status(A, 488, Method::Invite);
    assert!(c.ended);

    let (mut c, _a) = flow_call("flow-7", flow_env());
    digit(&mut c, '2');
    let cp = c.checkpoint.clone().expect("a checkpoint");
    let mut r = Call::with(cfg(), flow_env());
    r.feed(Event::Restore(Box::new(cp)));
    assert_eq!(prompts_played(&r), vec![vec!["more".to_string()]]);
    digit(&mut r, '3');
    assert_eq!(joined_queue(&r), Some(("sales".to_string(), 9, 1)));
}

#[test]
fn the_caller_hanging_up_in_a_menu_ends_the_call_and_its_timer_does_nothing() {
    let (mut c, mut a) = flow_call("flow-8", flow_env());
    c.from(A, &a.request("BYE", 0, "", ""));
    c.status(A, 200, Method::Bye);
    assert!(c.ended);
    let before = prompts_played(&c).len();
    c.advance(Duration::from_secs(30));
    assert_eq!(prompts_played(&c).len(), before);
}

const SCHEDULED: &str = r#"
id = "hours"
[[steps]]
id = "hours"
type = "schedule"
hours = ["mon-fri 09:00-18:00"]
open = "sales"
closed = "closed"
holiday = "bye"
[[steps]]
id = "sales"
type = "queue"
target = "sales"
[[steps]]
id = "closed"
type = "play"
prompt = "bye"
next = "end"
[[steps]]
id = "bye"
type = "hangup"
[[steps]]
id = "end"
type = "hangup"
"#;

/// A call to the scheduled flow with the tenant's calendar, at the test clock (Tuesday
/// 2023-11-14 22:13:20 UTC).
fn scheduled_call(cid: &str, tz: &str, holidays: &[&str]) -> Call {
    let holidays: Vec<String> = holidays.iter().map(|s| s.to_string()).collect();
    let calendar = crate::config::flow::Calendar::parse("t", Some(tz), &holidays).unwrap();
    let mut c = Call::with(cfg(), flow_env());
    c.begin_as(
        &invite(cid, "8001", SDP_A),
        flow_route_with(SCHEDULED, calendar),
        vec![],
        super::super::Parties {
            tenant: Some(Arc::from("acme")),
            ..Default::default()
        },
    );
    c.status(A, 200, Method::Invite);
    c
}

#[test]
fn a_schedule_step_branches_on_the_tenants_local_time_and_holidays() {
    // 22:13 on Tuesday in UTC: closed, the closed message plays.
    let c = scheduled_call("sched-1", "UTC", &[]);
    assert_eq!(prompts_played(&c), vec![vec!["bye".to_string()]]);
    assert!(joined_queue(&c).is_none());
    // 09:13 on Wednesday in Sydney (UTC+11 in November): open, the queue.
    let c = scheduled_call("sched-2", "Australia/Sydney", &[]);
    assert_eq!(joined_queue(&c), Some(("sales".to_string(), 0, 0)));
    // The same, but the 15th is a holiday in Sydney: hung up.
    let mut c = scheduled_call("sched-3", "Australia/Sydney", &["2023-11-15"]);
    assert!(joined_queue(&c).is_none());
    c.request(A, Method::Bye);
    assert!(c.ended);
}

const HOOKED: &str = r#"
id = "hooked"
[[steps]]
id = "ask"
type = "webhook"
timeout_ms = 2000
fallback = "closed"
[[steps]]
id = "sales"
type = "queue"
target = "sales"
[[steps]]
id = "closed"
type = "play"
prompt = "bye"
next = "end"
[[steps]]
id = "end"
type = "hangup"
"#;

fn hooked_call(cid: &str) -> Call {
    let target = Arc::new(crate::config::flow::WebhookTarget {
        url: "http://127.0.0.1:9/hook".into(),
        secret: "0123456789abcdef".into(),
    });
    let mut c = Call::with(cfg(), flow_env());
    c.begin_as(
        &invite(cid, "8002", SDP_A),
        flow_route_hooked(
            HOOKED,
            crate::config::flow::Calendar::default(),
            Some(target),
        ),
        vec![],
        super::super::Parties {
            tenant: Some(Arc::from("acme")),
            ..Default::default()
        },
    );
    c.status(A, 200, Method::Invite);
    c
}

fn hook_answer(c: &mut Call, status: u16, body: &str) {
    let seq = c.webhooks.last().expect("a webhook request").seq;
    c.feed(Event::WebhookAnswered {
        seq,
        result: WebhookResult::Answer {
            status,
            body: Bytes::from(body.to_string()),
        },
    });
}

#[test]
fn a_webhook_posts_the_calls_variables_and_its_answer_names_the_next_step() {
    let mut c = hooked_call("hook-1");
    let req = &c.webhooks[0];
    assert_eq!(req.timeout, Duration::from_millis(2000));
    let body: serde_json::Value = serde_json::from_str(&req.body).unwrap();
    assert_eq!(body["call_id"], "hook-1");
    assert_eq!(body["tenant"], "acme");
    assert_eq!(body["flow"], "hooked");
    assert_eq!(body["step"], "ask");
    assert_eq!(body["called"], "8002");
    hook_answer(
        &mut c,
        200,
        r#"{"next": "sales", "priority": 3, "vars": {"tier": "gold"}}"#,
    );
    assert_eq!(joined_queue(&c), Some(("sales".to_string(), 3, 0)));
    assert!(prompts_played(&c).is_empty());
}

#[test]
fn bad_late_and_failed_webhook_answers_take_the_fallback() {
    for (cid, status, body) in [
        ("hook-json", 200, "{not json"),
        ("hook-500", 500, r#"{"next": "sales"}"#),
        ("hook-step", 200, r#"{"next": "nowhere"}"#),
        ("hook-field", 200, r#"{"next": "sales", "run": "rm -rf"}"#),
    ] {
        let mut c = hooked_call(cid);
        hook_answer(&mut c, status, body);
        assert!(joined_queue(&c).is_none(), "{cid}");
        assert_eq!(prompts_played(&c), vec![vec!["bye".to_string()]], "{cid}");
    }
    // No answer in the step's timeout: the fallback; the answer that comes later is ignored.
    let mut c = hooked_call("hook-slow");
    c.advance(Duration::from_millis(1999));
    assert!(prompts_played(&c).is_empty());
    c.advance(Duration::from_millis(1));
    assert_eq!(prompts_played(&c), vec![vec!["bye".to_string()]]);
    hook_answer(&mut c, 200, r#"{"next": "sales"}"#);
    assert!(joined_queue(&c).is_none(), "a late answer changes nothing");
    // A node with too many webhooks in flight: the fallback at once.
    let mut c = hooked_call("hook-busy");
    let seq = c.webhooks[0].seq;
    c.feed(Event::WebhookAnswered {
        seq,
        result: WebhookResult::Busy,
    });
    assert_eq!(prompts_played(&c), vec![vec!["bye".to_string()]]);
}

#[test]
fn the_webhook_signature_is_hmac_sha256_of_timestamp_and_body() {
    // RFC 4231 test case 2 key and data, with the timestamp prefix the receiver rebuilds.
    let sig = super::flow::webhook_signature(b"Jefe", 0, b"what do ya want for nothing?");
    assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64, "{sig}");
    assert_ne!(
        sig,
        super::flow::webhook_signature(b"Jefe", 1, b"what do ya want for nothing?"),
        "the timestamp is signed"
    );
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"Jefe").unwrap();
    mac.update(b"0.what do ya want for nothing?");
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sig, format!("sha256={hex}"));
}

const EXITS: &str = r#"
id = "exits"
[[steps]]
id = "wait"
type = "queue"
target = "sales"
exit_keys = { "0" = "menu" }
[[steps]]
id = "menu"
type = "menu"
prompt = "more"
choices = { "1" = "wait", "2" = "end" }
[[steps]]
id = "end"
type = "hangup"
"#;

#[test]
fn an_exit_key_leaves_the_queue_for_its_step_and_the_caller_can_go_back() {
    let mut c = Call::with(cfg(), flow_env());
    c.begin_as(
        &invite("exit-1", "8003", SDP_A),
        flow_route_with(EXITS, crate::config::flow::Calendar::default()),
        vec![],
        super::super::Parties {
            tenant: Some(Arc::from("acme")),
            ..Default::default()
        },
    );
    c.status(A, 200, Method::Invite);
    assert_eq!(joined_queue(&c), Some(("sales".to_string(), 0, 0)));
    assert_eq!(c.phase(), Phase::Queued);
    // A digit that is no exit key changes nothing.
    digit(&mut c, '5');
    assert_eq!(c.phase(), Phase::Queued);
    assert!(prompts_played(&c).is_empty());
    // 0: the caller leaves the queue (not an abandon) for the menu.
    digit(&mut c, '0');
    let left = c.tells.iter().any(|t| {
        matches!(
            t,
            Tell::Queue {
                msg: crate::actors::queue::QueueMsg::Leave {
                    abandoned: false,
                    ..
                },
                ..
            }
        )
    });
    assert!(left, "the queue is told the caller left");
    assert_eq!(prompts_played(&c), vec![vec!["more".to_string()]]);
    assert_ne!(c.phase(), Phase::Queued);
    // 1: back in the queue (joined afresh).
    c.tells.clear();
    digit(&mut c, '1');
    assert_eq!(joined_queue(&c), Some(("sales".to_string(), 0, 0)));
    assert_eq!(c.phase(), Phase::Queued);
    // A restarted actor keeps the caller waiting in its place, the exit key still works.
    let cp = c.checkpoint.clone().expect("a checkpoint");
    let mut r = Call::with(cfg(), flow_env());
    r.feed(Event::Restore(Box::new(cp)));
    assert!(prompts_played(&r).is_empty(), "no flow step is replayed");
    digit(&mut r, '0');
    assert_eq!(prompts_played(&r), vec![vec!["more".to_string()]]);
}

#[test]
fn a_flow_user_who_is_busy_ends_the_answered_caller_with_a_bye() {
    let mut env = flow_env();
    env.users.insert(
        "1001".into(),
        vec![Fork {
            ruri: Bytes::from(format!("sip:1001@{B}")),
            dest: Dest {
                protocol: Protocol::Udp,
                addr: addr(B),
                conn: None,
            },
        }],
    );
    let (mut c, _a) = flow_call("flow-busy", env);
    for d in ['2', '4', '#'] {
        digit(&mut c, d);
    }
    let inv = c.request(B, Method::Invite);
    c.from(B, &answer(&inv, 486, "Busy Here", "b1", B, ""));
    assert!(
        !c.has(A, |m| m.status() == Some(486)),
        "no failure after the caller's 200"
    );
    c.request(A, Method::Bye);
    assert!(c.ended);
    assert_eq!(c.cdrs[0].disconnect_reason, "callee answered 486");
}
