//! The router: the transport's [`Handler`]. It finds the call actor that owns a message by
//! Call-ID through a sharded directory, answers what needs no call (OPTIONS, 404/405/481/501,
//! admission refusals) statelessly, and starts a call actor for each admitted new INVITE.

use bytes::Bytes;
use dashmap::DashMap;
use hashlink::LruCache;
use ractor::ActorRef;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::call::{self, CallContext, CallMsg, Fork, QueueJoin};
use super::registrar::{self, Location, RegistrarMsg};
use super::trunk::{TrunkShared, TrunkTable};
use crate::config::{AdmissionConfig, CcTarget, MediaMode, RouteConfig, RouteTarget};
use crate::routing::auth::{AuthOutcome, Authenticator};
use crate::routing::trunks::{self as trunk_policy, Policy, RrState};
use crate::security::trust::{self, Caller, LogLimit, Refused, SourceClass, Trust};
use crate::sip::dialog::{random_token, BRANCH_PREFIX};
use crate::sip::message::{response_to, HeaderName, Message, Method};
use crate::sip::validate::{Passed, Request};
use crate::supervision::SupervisorMsg;
use crate::transport::{status_label, Handler, Inbound, Source};

pub const ADMISSION_REFUSED: &str = "switchyard_admission_refused_total";
pub const STRAY: &str = "switchyard_sip_stray_total";
pub const STATELESS_ANSWERS: &str = "switchyard_sip_stateless_answers_total";

/// Describes the router's metrics.
pub fn describe() {
    use metrics::describe_counter;
    describe_counter!(
        ADMISSION_REFUSED,
        "New calls refused by admission control, by reason"
    );
    describe_counter!(
        STRAY,
        "Responses and ACKs that matched no call, dropped, by kind"
    );
    describe_counter!(
        STATELESS_ANSWERS,
        "Requests answered without a call (OPTIONS, 404, 481, ...), by status"
    );
}

/// Methods this switch serves (the Allow header).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REGISTER";

/// Where a Call-ID's messages go.
pub enum Slot {
    /// The call actor is being started; messages wait here (bounded) until it runs.
    Starting(Vec<Inbound>),
    Running(ActorRef<CallMsg>),
    /// The call has ended and its actor has stopped; retransmitted requests are answered
    /// from here until the entry expires (64*T1), so no actor lingers just to absorb them.
    Retired(Arc<Retired>),
}

/// What an ended call leaves behind: the last response of each of its server transactions.
#[derive(Debug, Default)]
pub struct Retired {
    pub responses: Vec<RetiredResponse>,
    /// The ACK sent for the callee's 2xx: a 2xx retransmitted because that ACK was lost
    /// gets it again.
    pub ack_2xx: Option<(Bytes, crate::transport::Dest)>,
}

/// The final response of one server transaction of an ended call.
#[derive(Debug)]
pub struct RetiredResponse {
    /// Top Via branch of the request it answered.
    pub branch: Bytes,
    pub method: Method,
    /// Sent again for a retransmitted request; empty for an INVITE answered 2xx, whose
    /// retransmissions are absorbed (RFC 6026).
    pub response: Bytes,
    pub dest: crate::transport::Dest,
}

/// Call-ID → call actor, sharded (dashmap) so receive tasks do not contend on one lock.
/// No guard is ever held across an `.await`.
#[derive(Default)]
pub struct Directory {
    map: Arc<DashMap<Bytes, Slot>>,
}

const STARTING_QUEUE: usize = 32;

impl Directory {
    pub fn new() -> Directory {
        Directory {
            map: Arc::new(DashMap::with_capacity(32 * 1024)),
        }
    }

    /// Registers a running actor under a Call-ID and returns what was queued while it started.
    pub fn register(&self, call_id: Bytes, actor: ActorRef<CallMsg>) -> Vec<Inbound> {
        match self.map.insert(call_id, Slot::Running(actor)) {
            Some(Slot::Starting(queued)) => queued,
            _ => Vec::new(),
        }
    }

    /// Removes a Call-ID if it still points at `actor` (a restarted actor may own it now).
    pub fn unregister(&self, call_id: &Bytes, actor: &ActorRef<CallMsg>) {
        self.map.remove_if(
            call_id,
            |_, slot| matches!(slot, Slot::Running(a) if a.get_id() == actor.get_id()),
        );
    }

    /// Removes a Call-ID whatever it points at.
    pub fn remove(&self, call_id: &Bytes) {
        self.map.remove(call_id);
    }

    /// The running actor of a Call-ID (tests and the API).
    pub fn lookup(&self, call_id: &[u8]) -> Option<ActorRef<CallMsg>> {
        match self.map.get(call_id)?.value() {
            Slot::Running(a) => Some(a.clone()),
            Slot::Starting(_) | Slot::Retired(_) => None,
        }
    }

    /// Replaces a stopping actor's entries with what its retransmissions need, and removes
    /// them after `linger`.
    pub fn retire(
        &self,
        call_ids: &[Bytes],
        actor: &ActorRef<CallMsg>,
        retired: Retired,
        timers: &crate::timer::TimerService,
        linger: Duration,
    ) {
        let retired = Arc::new(retired);
        for id in call_ids {
            if let Some(mut slot) = self.map.get_mut(id) {
                if matches!(slot.value(), Slot::Running(a) if a.get_id() == actor.get_id()) {
                    *slot = Slot::Retired(retired.clone());
                }
            }
        }
        let ids = call_ids.to_vec();
        let map = self.map.clone();
        let weak = Arc::downgrade(&retired);
        drop(retired);
        timers.schedule(linger, move || {
            for id in &ids {
                map.remove_if(id, |_, slot| matches!(slot, Slot::Retired(r) if weak.upgrade().is_some_and(|w| Arc::ptr_eq(r, &w))));
            }
        });
    }

    /// Retired entries (ended calls absorbing retransmissions).
    pub fn retired(&self) -> usize {
        self.map
            .iter()
            .filter(|e| matches!(e.value(), Slot::Retired(_)))
            .count()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The route table the router reads: replaced whole when routes change through the API or
/// the cluster (an INVITE takes a read lock for one lookup; writers are rare).
pub struct Routes {
    table: RwLock<Arc<RouteTable>>,
}

/// One version of the static routes, longest prefix first.
pub struct RouteTable {
    routes: Vec<Route>,
}

/// One static route.
#[derive(Clone, Debug)]
pub struct Route {
    /// Its id (`id`, else the prefix): what tenants' `outbound` lists name.
    pub id: Arc<str>,
    /// Calls from a trunk's gateway may take it.
    pub from_trunks: bool,
    pub prefix: String,
    pub target: RouteTarget,
    pub strip: usize,
    pub prepend: String,
    /// The target as configured, for CDRs.
    pub target_text: String,
    /// A trunk group instead of the target: the call fails over along the group's plan.
    pub group: Option<Arc<TrunkGroup>>,
    /// What the call does with its audio.
    pub media: MediaPolicy,
}

/// What a call does with its audio: passed through (default) or anchored, recorded,
/// answered first with music and announcements (queues).
#[derive(Clone, Debug, Default)]
pub struct MediaPolicy {
    pub anchor: bool,
    pub record: bool,
    /// Answer the caller on joining a queue; music and announcements until the agent.
    pub answer_first: bool,
    /// Seconds between position announcements (0: none).
    pub announce_secs: u64,
    /// The tenant recordings are filed under.
    pub tenant: Option<Arc<str>>,
    /// The switch itself is the callee (a test number, a conference): no B leg.
    pub service: Option<Service>,
    /// The tenant's conference a `conference:<id>` number puts the caller in.
    pub conference: Option<Arc<str>>,
    /// The switch answers and runs this call flow (IVR) first.
    pub flow: Option<Arc<crate::config::flow::Flow>>,
}

/// What the switch does as the callee of a test number (`echo`, `music`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Every RTP packet the caller sends goes back to it.
    Echo,
    /// Music on hold, until the caller hangs up.
    Music,
    /// The caller joins a conference (`MediaPolicy::conference`).
    Conference,
}

impl Service {
    pub fn label(self) -> &'static str {
        match self {
            Service::Echo => "echo",
            Service::Music => "music",
            Service::Conference => "conference",
        }
    }
}

/// A route's trunks and how one call's order over them is chosen.
#[derive(Debug)]
pub struct TrunkGroup {
    pub trunks: Vec<Arc<TrunkShared>>,
    pub policy: Policy,
    pub max_attempts: usize,
    rr: Mutex<RrState>,
}

impl std::fmt::Debug for TrunkShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrunkShared").field("id", &self.id).finish()
    }
}

impl TrunkGroup {
    /// The order to try the trunks in for one call to `dialled`: the trunks that are up, in
    /// the policy's order; then, as a last resort, the ones marked down (a call that every
    /// trunk that is up has failed may still get through one that recovered before its
    /// probes said so). Full trunks are left out, with why. At most `max_attempts` in all.
    pub fn plan(&self, route: &str, dialled: &str) -> TrunkPlan {
        let views: Vec<_> = self.trunks.iter().map(|t| t.view()).collect();
        let now = crate::store::now_unix_ms() as u64;
        let plan = {
            let mut rr = self.rr.lock().unwrap_or_else(|e| e.into_inner());
            trunk_policy::order(self.policy, &views, dialled, &mut rr, now)
        };
        if let Some(first) = plan.first() {
            metrics::counter!(super::trunk::ROUTE_CHOICES, "route" => route.to_string(), "trunk" => self.trunks[first].id.to_string(), "policy" => self.policy.label()).increment(1);
        }
        let skipped = plan
            .skipped
            .iter()
            .filter(|s| s.cause != trunk_policy::FailoverCause::TrunkDown)
            .map(|s| format!("{}:{}", self.trunks[s.index].id, s.cause.label()))
            .collect();
        let order: Vec<Arc<TrunkShared>> = plan
            .order
            .iter()
            .take(self.max_attempts)
            .map(|&i| self.trunks[i].clone())
            .collect();
        let mut down: Vec<&Arc<TrunkShared>> = plan
            .skipped
            .iter()
            .filter(|s| s.cause == trunk_policy::FailoverCause::TrunkDown)
            .map(|s| &self.trunks[s.index])
            .collect();
        down.sort_by(|a, b| (a.config.priority, &a.id).cmp(&(b.config.priority, &b.id)));
        let last_resort = down
            .into_iter()
            .take(self.max_attempts.saturating_sub(order.len()))
            .cloned()
            .collect();
        TrunkPlan {
            order,
            last_resort,
            skipped,
        }
    }
}

/// One call's trunks: to try in order, then the down ones as a last resort; the full ones
/// left out (`trunk:cause`, for the CDR).
pub struct TrunkPlan {
    pub order: Vec<Arc<TrunkShared>>,
    pub last_resort: Vec<Arc<TrunkShared>>,
    pub skipped: Vec<String>,
}

impl Routes {
    /// The routes of `config` (routes whose trunks are all unknown are left out).
    pub fn new(config: &[RouteConfig], trunks: &TrunkTable) -> Routes {
        Routes {
            table: RwLock::new(Arc::new(RouteTable::new(config, trunks))),
        }
    }

    /// The route for a Request-URI user, longest prefix first (a copy: the table may be
    /// replaced while the call uses it).
    pub fn lookup(&self, user: &[u8]) -> Option<Route> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table.lookup(user).cloned()
    }

    /// The table in force now.
    pub fn current(&self) -> Arc<RouteTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `table` in force for the next INVITE; calls in progress keep their route.
    pub fn replace(&self, table: RouteTable) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
    }

    /// The user to dial on the B leg: strip, then prepend.
    pub fn rewrite(route: &Route, user: &[u8]) -> Bytes {
        let rest = &user[route.strip.min(user.len())..];
        let mut v = Vec::with_capacity(route.prepend.len() + rest.len());
        v.extend_from_slice(route.prepend.as_bytes());
        v.extend_from_slice(rest);
        Bytes::from(v)
    }
}

impl RouteTable {
    /// Builds the table of `config`, longest prefix first.
    pub fn new(config: &[RouteConfig], trunks: &TrunkTable) -> RouteTable {
        RouteTable::build(config, trunks, None)
    }

    /// Builds the table of `config` after a change to `previous`: a route whose trunk group
    /// is unchanged keeps it, so its round-robin state carries over.
    pub fn rebuilt(
        config: &[RouteConfig],
        trunks: &TrunkTable,
        previous: &RouteTable,
    ) -> RouteTable {
        RouteTable::build(config, trunks, Some(previous))
    }

    fn build(
        config: &[RouteConfig],
        trunks: &TrunkTable,
        previous: Option<&RouteTable>,
    ) -> RouteTable {
        let mut routes: Vec<Route> = config
            .iter()
            .filter_map(|r| {
                if r.trunks.is_empty() {
                    return Some(Route {
                        id: Arc::from(r.key()),
                        from_trunks: r.from_trunks,
                        prefix: r.prefix.clone(),
                        target: RouteTarget::parse(&r.target).ok()?,
                        strip: r.strip,
                        prepend: r.prepend.clone(),
                        target_text: r.target.clone(),
                        group: None,
                        media: MediaPolicy {
                            anchor: r.media == MediaMode::Anchor || r.record,
                            record: r.record,
                            ..MediaPolicy::default()
                        },
                    });
                }
                let members: Vec<Arc<TrunkShared>> = r
                    .trunks
                    .iter()
                    .filter_map(|t| trunks.get(t.as_str()).cloned())
                    .collect();
                let first = members.first()?.gateway()?;
                let trunk_anchors = members.iter().any(|t| t.config.media == MediaMode::Anchor);
                let target_text = format!("trunks:{}", r.trunks.join(","));
                // The same trunks (a changed trunk is a new `TrunkShared`): the group and its
                // round-robin state carry over.
                let kept = previous
                    .and_then(|p| {
                        p.routes
                            .iter()
                            .find(|x| x.prefix == r.prefix && x.target_text == target_text)
                    })
                    .and_then(|x| x.group.clone())
                    .filter(|g| {
                        g.policy == r.policy
                            && g.max_attempts == r.max_attempts
                            && g.trunks.len() == members.len()
                            && g.trunks
                                .iter()
                                .zip(&members)
                                .all(|(a, b)| Arc::ptr_eq(a, b))
                    });
                let group = kept.unwrap_or_else(|| {
                    Arc::new(TrunkGroup {
                        trunks: members,
                        policy: r.policy,
                        max_attempts: r.max_attempts,
                        rr: Mutex::new(RrState::new()),
                    })
                });
                Some(Route {
                    id: Arc::from(r.key()),
                    from_trunks: r.from_trunks,
                    prefix: r.prefix.clone(),
                    target: first,
                    strip: r.strip,
                    prepend: r.prepend.clone(),
                    target_text,
                    group: Some(group),
                    media: MediaPolicy {
                        anchor: r.media == MediaMode::Anchor || r.record || trunk_anchors,
                        record: r.record,
                        ..MediaPolicy::default()
                    },
                })
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        RouteTable { routes }
    }

    /// The route for a Request-URI user, longest prefix first.
    pub fn lookup(&self, user: &[u8]) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| user.starts_with(r.prefix.as_bytes()))
    }

    /// How many routes the table has.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no route.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// A refusal by admission control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
    pub label: &'static str,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(depth: f64) -> Bucket {
        Bucket {
            tokens: depth,
            last: Instant::now(),
        }
    }

    fn take(&mut self, rate: f64, depth: f64) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(depth);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Per-source CPS buckets kept at most: the least recently used source goes first (O(1));
/// a source forgotten so starts again with a full bucket, as an idle one would have.
pub const MAX_SOURCE_BUCKETS: usize = 65_536;

/// Admission control: concurrent calls, a global CPS token bucket, per-source CPS buckets
/// (for sources that are neither trusted nor trunk gateways). Locks are held for a few
/// arithmetic operations only.
pub struct Admission {
    config: AdmissionConfig,
    global: Mutex<Bucket>,
    per_source: Mutex<LruCache<IpAddr, Bucket, RandomState>>,
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Admission {
        Admission::with_capacity(config, MAX_SOURCE_BUCKETS)
    }

    /// [`Admission::new`] remembering at most `sources` per-source buckets.
    pub fn with_capacity(config: AdmissionConfig, sources: usize) -> Admission {
        let depth = Self::depth(config.cps, config.cps_burst);
        Admission {
            global: Mutex::new(Bucket::new(depth)),
            // SipHash with a random key: the source addresses are the peers' to choose.
            per_source: Mutex::new(LruCache::with_hasher(sources.max(1), RandomState::new())),
            config,
        }
    }

    /// Sources with a per-source bucket now (tests, gauges).
    pub fn tracked_sources(&self) -> usize {
        self.per_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    fn depth(rate: u32, burst: u32) -> f64 {
        if burst > 0 {
            f64::from(burst)
        } else {
            f64::from(rate.max(1))
        }
    }

    /// Decides on a new call from `source` while `active` calls are up; an `exempt` source
    /// (a trusted peer, a trunk gateway) has no per-source limit.
    pub fn admit(&self, source: IpAddr, active: usize, exempt: bool) -> Result<(), Refusal> {
        if active >= self.config.max_calls {
            return Err(Refusal {
                status: 503,
                reason: "Service Unavailable (Too Many Calls)",
                label: "max_calls",
            });
        }
        if self.config.per_source_cps > 0 && !exempt {
            let rate = f64::from(self.config.per_source_cps);
            let mut map = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
            let taken = match map.get_mut(&source) {
                Some(bucket) => bucket.take(rate, rate),
                None => {
                    let mut bucket = Bucket::new(rate);
                    let taken = bucket.take(rate, rate);
                    map.insert(source, bucket);
                    taken
                }
            };
            drop(map);
            if !taken {
                return Err(Refusal {
                    status: 503,
                    reason: "Service Unavailable (Source Rate)",
                    label: "source_cps",
                });
            }
        }
        if self.config.cps > 0 {
            let rate = f64::from(self.config.cps);
            let depth = Self::depth(self.config.cps, self.config.cps_burst);
            if !self
                .global
                .lock()
                .expect("admission lock")
                .take(rate, depth)
            {
                return Err(Refusal {
                    status: 503,
                    reason: "Service Unavailable (Call Rate)",
                    label: "cps",
                });
            }
        }
        Ok(())
    }

    pub fn retry_after(&self) -> u32 {
        self.config.retry_after_secs
    }
}

/// The router.
pub struct Router {
    ctx: Arc<CallContext>,
    routes: Arc<Routes>,
    admission: Admission,
    /// The calls supervisor's registered name (found again after a restart).
    calls: String,
    registrar: Option<RegistrarLink>,
    /// Numbers (DIDs) → tenant queue or user.
    numbers: Arc<Numbers>,
    /// Trusted peers and trunk gateways (nothing trusted until [`Router::with_trust`]).
    trust: Arc<Trust>,
    /// Refusals at the edge are logged at most once a second.
    refusal_log: LogLimit,
}

/// The numbers (DIDs) the router serves: replaced whole when numbers change through the
/// API or the cluster; an INVITE takes a read lock for one lookup.
#[derive(Default)]
pub struct Numbers {
    map: RwLock<Arc<HashMap<String, Arc<NumberRoute>>>>,
}

impl Numbers {
    /// A table of `numbers`.
    pub fn new(numbers: HashMap<String, NumberRoute>) -> Numbers {
        let n = Numbers::default();
        n.replace(numbers);
        n
    }

    /// Where `number` leads, if it is served.
    pub fn get(&self, number: &str) -> Option<Arc<NumberRoute>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(number)
            .cloned()
    }

    /// Puts `numbers` in force for the next INVITE.
    pub fn replace(&self, numbers: HashMap<String, NumberRoute>) {
        let map = numbers.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        *self.map.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
    }

    /// How many numbers are served.
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no number is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a number leads.
#[derive(Clone, Debug)]
pub struct NumberRoute {
    pub tenant: Arc<str>,
    pub target: CcTarget,
    pub priority: u32,
    /// The media of calls to a queue (its answer-first and recording settings).
    pub media: MediaPolicy,
}

impl NumberRoute {
    /// Where a number of `tenant` leads: `target` (`queue:<id>` or `user:<name>`) with the
    /// media its queue asks for (recording, answer-first, announcements). `None` if the
    /// target does not parse. The server (file numbers) and shared configuration (numbers
    /// set through the API) both build numbers here, so they behave alike.
    pub fn from_config(
        tenant: &crate::config::TenantConfig,
        target: &str,
        priority: u32,
    ) -> Option<NumberRoute> {
        let target = CcTarget::parse(target).ok()?;
        let queue = match &target {
            CcTarget::Queue(q) => tenant.queues.iter().find(|c| &c.id == q),
            _ => None,
        };
        let service = match &target {
            CcTarget::Echo => Some(Service::Echo),
            CcTarget::Music => Some(Service::Music),
            CcTarget::Conference(_) => Some(Service::Conference),
            _ => None,
        };
        let conference = match &target {
            CcTarget::Conference(c) => Some(Arc::from(c.as_str())),
            _ => None,
        };
        let flow = match &target {
            CcTarget::Flow(f) => {
                let config = tenant.flows.iter().find(|c| &c.id == f)?;
                let queues = tenant.queues.iter().map(|q| q.id.clone()).collect();
                let calendar = tenant.calendar(0).ok()?;
                let webhook = tenant.webhook(0).ok()?.map(Arc::new);
                let scope = crate::config::flow::FlowScope {
                    queues: &queues,
                    calendar: &calendar,
                    webhook: webhook.as_ref(),
                    prompts: None,
                };
                Some(Arc::new(
                    crate::config::flow::compile(f, config, &scope).ok()?,
                ))
            }
            _ => None,
        };
        let record = tenant.record || queue.is_some_and(|q| q.record);
        // A test number or a flow is answered by the switch, so its media is always anchored.
        let answer_first =
            queue.is_some_and(|q| q.answer_first) || service.is_some() || flow.is_some();
        let id: Arc<str> = Arc::from(tenant.id.as_str());
        Some(NumberRoute {
            tenant: id.clone(),
            target,
            priority,
            media: MediaPolicy {
                anchor: record || answer_first,
                record,
                answer_first,
                announce_secs: queue.map_or(0, |q| q.announce_secs),
                tenant: Some(id),
                service,
                conference,
                flow,
            },
        })
    }
}

/// Whether a new call leaves the switch through a static route (it then passes the risk
/// rules) or stays local (a number, a user).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outbound {
    Yes,
    No,
}

/// A caller authenticated as a tenant's user: its tenant, and its own outbound list.
struct Member {
    tenant: Arc<crate::routing::auth::TenantUsers>,
    own: Option<Vec<String>>,
}

/// What the router needs of the registrar: its name, the authenticator and the location
/// service (read directly, no actor round trip).
struct RegistrarLink {
    auth: Arc<Authenticator>,
    location: Arc<Location>,
    name: String,
    authenticate_invites: bool,
}

impl Router {
    /// A router over `routes` (shared with whoever replaces them on a configuration change).
    pub fn new(
        ctx: Arc<CallContext>,
        routes: Arc<Routes>,
        admission: Admission,
        calls: String,
    ) -> Router {
        let _ = ctx.routes.set(routes.clone());
        Router {
            ctx,
            routes,
            admission,
            calls,
            registrar: None,
            numbers: Arc::default(),
            trust: Arc::default(),
            refusal_log: LogLimit::default(),
        }
    }

    /// Who is trusted: `[security] trusted` and the trunks' gateways.
    pub fn with_trust(mut self, trust: Arc<Trust>) -> Router {
        self.trust = trust;
        self
    }

    /// Serves the tenants' numbers (DIDs): calls to them go to a queue or a user.
    pub fn with_numbers(mut self, numbers: Arc<Numbers>) -> Router {
        let _ = self.ctx.numbers.set(numbers.clone());
        self.numbers = numbers;
        self
    }

    /// Serves tenants' users: REGISTERs go to the registrar, INVITEs from a tenant's users
    /// are authenticated (407) when `authenticate_invites`, calls to them use their bindings.
    pub fn with_registrar(
        mut self,
        auth: Arc<Authenticator>,
        location: Arc<Location>,
        name: String,
        authenticate_invites: bool,
    ) -> Router {
        self.registrar = Some(RegistrarLink {
            auth,
            location,
            name,
            authenticate_invites,
        });
        self
    }

    fn answer(
        &self,
        req: &Message,
        source: &Source,
        status: u16,
        reason: &str,
        extra: &[(HeaderName, &str)],
    ) {
        metrics::counter!(STATELESS_ANSWERS, "status" => status_label(status)).increment(1);
        let tag = random_token(10);
        let mut resp = response_to(req, status, reason, Some(&tag));
        for (name, value) in extra {
            resp.push(*name, Bytes::copy_from_slice(value.as_bytes()));
        }
        resp.push(HeaderName::Server, self.ctx.user_agent.clone());
        self.ctx.transports().send_response(source, &resp);
    }

    fn handle_new_request(&self, inbound: Inbound<Request>) {
        let Inbound { msg, source } = inbound;
        let method = msg.method_checked().clone();
        let has_to_tag = msg.to().is_some_and(|t| t.tag().is_some());
        match method {
            Method::Ack => {
                metrics::counter!(STRAY, "kind" => "ack").increment(1);
            }
            Method::Options if !has_to_tag => self.answer(
                &msg,
                &source,
                200,
                "OK",
                &[
                    (HeaderName::Allow, ALLOW),
                    (HeaderName::Accept, "application/sdp"),
                    (HeaderName::Supported, "replaces, timer"),
                ],
            ),
            Method::Invite if !has_to_tag => self.new_call(msg, source),
            Method::Register if self.registrar.is_some() => self.register(msg, source),
            Method::Cancel => {
                self.answer(&msg, &source, 481, "Call/Transaction Does Not Exist", &[])
            }
            Method::Other(_) => self.answer(
                &msg,
                &source,
                501,
                "Not Implemented",
                &[(HeaderName::Allow, ALLOW)],
            ),
            _ if has_to_tag => {
                self.answer(&msg, &source, 481, "Call/Transaction Does Not Exist", &[])
            }
            Method::Bye | Method::Info | Method::Update | Method::Prack => {
                self.answer(&msg, &source, 481, "Call/Transaction Does Not Exist", &[])
            }
            _ => self.answer(
                &msg,
                &source,
                405,
                "Method Not Allowed",
                &[(HeaderName::Allow, ALLOW)],
            ),
        }
    }

    fn register(&self, msg: Request, source: Source) {
        let Some(reg) = self.registrar.as_ref() else {
            return;
        };
        match ractor::registry::where_is(reg.name.clone()).map(ActorRef::<RegistrarMsg>::from) {
            Some(actor) => {
                let msg = msg.into_message();
                if registrar::register(&actor, Inbound { msg, source }).is_err() {
                    tracing::warn!("registrar not accepting messages");
                }
            }
            None => self.answer(
                &msg,
                &source,
                503,
                "Service Unavailable (Registrar Restarting)",
                &[(HeaderName::RetryAfter, "1")],
            ),
        }
    }

    fn new_call(&self, msg: Request, source: Source) {
        // A loop: our own B-leg INVITE came back to us.
        if msg.vias().any(|v| {
            v.branch()
                .is_some_and(|b| b.starts_with(BRANCH_PREFIX.as_bytes()))
        }) && msg.vias().any(|v| self.ctx.is_own_sent_by(&v.host, v.port))
        {
            return self.answer(&msg, &source, 482, "Loop Detected", &[]);
        }
        let ruri = msg
            .request_uri()
            .and_then(|u| crate::sip::uri::Uri::parse(u).ok());
        let mut user = ruri
            .as_ref()
            .and_then(|u| u.user_unescaped().map(|c| c.into_owned()))
            .unwrap_or_default();
        if self
            .ctx
            .trunks
            .get()
            .is_some_and(|t| t.registered_account(source.remote.ip(), &user))
        {
            // A carrier's call to the account the switch registered with it (our Contact):
            // the number the caller dialled is in To.
            if let Some(to) = msg
                .to()
                .and_then(|t| crate::sip::uri::Uri::parse(&t.uri).ok())
                .and_then(|u| u.user_unescaped().map(|c| c.into_owned()))
            {
                metrics::counter!(super::trunk::TRUNK_REGISTERED_CALLS).increment(1);
                user = to;
            }
        }
        let mut parties = call::Parties::default();
        // The tenant's user the caller authenticated as, if any.
        let mut member: Option<Member> = None;
        if let Some(reg) = &self.registrar {
            // Calls from a tenant's phones are authenticated before they are routed.
            if reg.authenticate_invites {
                if let Some((tenant, outcome)) =
                    reg.auth
                        .check_caller(&msg, source.remote.ip(), std::time::SystemTime::now())
                {
                    let AuthOutcome::Authenticated { username } = outcome else {
                        let tag = random_token(10);
                        if let Some(resp) = outcome.response(&msg, &tag) {
                            metrics::counter!(STATELESS_ANSWERS, "status" => status_label(resp.status().unwrap_or(0))).increment(1);
                            self.ctx.transports().send_response(&source, &resp);
                        }
                        return;
                    };
                    parties.tenant = Some(Arc::from(tenant.as_str()));
                    parties.caller = Some(Arc::from(username.as_str()));
                    member = reg.auth.tenant(&tenant).map(|t| Member {
                        own: t.user(&username).and_then(|k| k.outbound),
                        tenant: t,
                    });
                }
            }
            // An INVITE with Replaces (RFC 3891) goes to the call whose dialog it names.
            if msg.other("Replaces").is_some() {
                return self.replacing(msg, source, &parties);
            }
            // A tenant's number (DID): its queue, its user, or a test number.
            let number = String::from_utf8_lossy(&user);
            if let Some(n) = self.numbers.get(number.as_ref()) {
                // Answered here (a queue, echo, music): a route with no one beyond the switch.
                let (id, target_text, join) = match &n.target {
                    CcTarget::User(u) => {
                        let (tenant, u) = (n.tenant.clone(), u.clone());
                        return self.call_user(msg, source, &reg.location, &tenant, &u, parties);
                    }
                    CcTarget::Queue(q) => (
                        format!("queue:{}/{q}", n.tenant),
                        format!("queue:{q}"),
                        Some(QueueJoin {
                            tenant: n.tenant.clone(),
                            queue: Arc::from(q.as_str()),
                            priority: n.priority,
                        }),
                    ),
                    CcTarget::Echo | CcTarget::Music => {
                        let label = n.media.service.map_or("", Service::label);
                        (label.to_string(), label.to_string(), None)
                    }
                    CcTarget::Conference(c) => (
                        format!("conference:{}/{c}", n.tenant),
                        format!("conference:{c}"),
                        None,
                    ),
                    CcTarget::Flow(f) => {
                        (format!("flow:{}/{f}", n.tenant), format!("flow:{f}"), None)
                    }
                    _ => return self.answer(&msg, &source, 404, "Not Found", &[]),
                };
                let route = Route {
                    id: Arc::from(id.as_str()),
                    from_trunks: false,
                    prefix: id,
                    target: RouteTarget {
                        addr: source.remote,
                        protocol: source.protocol,
                    },
                    strip: 0,
                    prepend: String::new(),
                    target_text,
                    group: None,
                    media: n.media.clone(),
                };
                parties.tenant = Some(n.tenant.clone());
                return self.admit_and_start(
                    msg,
                    source,
                    &route,
                    Bytes::from(user),
                    Vec::new(),
                    join,
                    parties,
                    Outbound::No,
                );
            }
            // A call to a tenant's user goes to the phones it registered, all at once.
            if let Some(tenant) = ruri
                .as_ref()
                .and_then(|u| reg.auth.tenant_for_domain(&u.host))
            {
                let name = String::from_utf8_lossy(&user).into_owned();
                if reg.auth.has_user(&tenant.id, &name) {
                    let id = tenant.id.clone();
                    return self.call_user(msg, source, &reg.location, &id, &name, parties);
                }
            }
        }
        // Not a local destination: a static route, for callers allowed to take it.
        let caller = match (self.trust.classify(source.remote.ip()), &member) {
            (SourceClass::Trusted, _) => Caller::Trusted,
            (_, Some(m)) => Caller::User {
                tenant_outbound: &m.tenant.outbound,
                user_outbound: m.own.as_deref(),
            },
            (SourceClass::Gateway(_), None) => Caller::Gateway,
            (SourceClass::Other, None) => Caller::Anonymous,
        };
        let Some(route) = self.routes.lookup(&user) else {
            // An anonymous caller learns nothing of the route table.
            if matches!(caller, Caller::Anonymous) {
                return self.refuse(&msg, &source, Refused::Anonymous, &user);
            }
            return self.answer(&msg, &source, 404, "Not Found", &[]);
        };
        if let Err(refused) = trust::permit(caller, &route.id, route.from_trunks) {
            return self.refuse(&msg, &source, refused, &user);
        }
        let dialled = Routes::rewrite(&route, &user);
        self.admit_and_start(
            msg,
            source,
            &route,
            dialled,
            Vec::new(),
            None,
            parties,
            Outbound::Yes,
        );
    }

    /// The risk rules' decision on a call through a route (issue 20): the calling tenant's
    /// (None for a trusted peer or a trunk's transit: platform lists and route caps only).
    /// Refused: 403 naming the rule (503 when the counts cannot be read); the Call-ID's
    /// claim is given up, so a retransmission is decided again.
    async fn risk_gate(ctx: &CallContext, init: &call::NewCall, call_id: &Bytes) -> Result<(), ()> {
        let Some(desk) = ctx.risk.get() else {
            return Ok(());
        };
        let number = String::from_utf8_lossy(&init.dialled);
        let attempt = super::risk::Attempt {
            tenant: init.parties.tenant.as_deref(),
            number: &number,
            route: Some(&init.route.id),
            origin: super::risk::Origin::Phone,
            zone: None,
        };
        let d = desk.decide(attempt).await;
        if d.allow {
            return Ok(());
        }
        let (status, phrase) = match d.rule {
            crate::routing::risk::Rule::CapUnavailable => {
                (503, "Service Unavailable (Risk Counts)")
            }
            _ => (403, "Forbidden (Risk Rule)"),
        };
        let reason = format!("{phrase}: {}", d.rule.label());
        metrics::counter!(STATELESS_ANSWERS, "status" => status_label(status)).increment(1);
        let mut resp = response_to(&init.invite.msg, status, &reason, Some(&random_token(10)));
        resp.push(HeaderName::Server, ctx.user_agent.clone());
        if status == 503 {
            resp.push(HeaderName::RetryAfter, Bytes::from_static(b"5"));
        }
        ctx.transports().send_response(&init.invite.source, &resp);
        ctx.directory.remove(call_id);
        ctx.active.fetch_sub(1, Ordering::Relaxed);
        Err(())
    }

    /// An INVITE with Replaces: handed to the call that has the dialog it names (which
    /// checks the tags and who may), or 481 when no call here has that Call-ID.
    fn replacing(&self, msg: Request, source: Source, parties: &call::Parties) {
        let named = msg
            .message()
            .other("Replaces")
            .and_then(|v| call::Replaces::parse(&String::from_utf8_lossy(v)));
        let Some(actor) = named.and_then(|r| self.ctx.directory.lookup(&r.call_id)) else {
            return self.answer(&msg, &source, 481, "Call/Transaction Does Not Exist", &[]);
        };
        let user = parties.tenant.clone().zip(parties.caller.clone());
        let invite = Box::new(Inbound {
            msg: msg.into_message(),
            source,
        });
        let _ = actor.cast(CallMsg::Replacing { invite, user });
    }

    /// Refuses a call its caller may not make (403): counted, and logged at most once a
    /// second (a flood of them costs a counter each, not a log line).
    fn refuse(&self, msg: &Message, source: &Source, refused: Refused, dialled: &[u8]) {
        metrics::counter!(trust::SECURITY_REFUSED, "reason" => refused.label()).increment(1);
        let now_ms = crate::store::now_unix_ms() as u64;
        if let Some(held) = self.refusal_log.allow(now_ms, 1000) {
            let from = msg
                .from()
                .map(|f| String::from_utf8_lossy(&f.uri).into_owned());
            tracing::warn!(
                source = %source.remote,
                reason = refused.label(),
                dialled = ?String::from_utf8_lossy(dialled),
                from = ?from,
                refusals_not_logged = held,
                "call refused at the edge"
            );
        }
        self.answer(msg, source, 403, refused.phrase(), &[]);
    }

    /// A call to a tenant's user: every phone it registered rings at once.
    fn call_user(
        &self,
        msg: Request,
        source: Source,
        location: &Location,
        tenant: &str,
        name: &str,
        mut parties: call::Parties,
    ) {
        let bindings = location.lookup(tenant, name);
        let Some(first) = bindings.first() else {
            return self.answer(&msg, &source, 480, "Temporarily Unavailable", &[]);
        };
        let forks = Fork::all(&bindings);
        let route = Route {
            id: Arc::from(format!("user:{tenant}/{name}")),
            from_trunks: false,
            prefix: format!("user:{tenant}/{name}"),
            target: RouteTarget {
                addr: first.dest().addr,
                protocol: first.dest().protocol,
            },
            strip: 0,
            prepend: String::new(),
            target_text: String::from_utf8_lossy(&first.contact).into_owned(),
            group: None,
            media: MediaPolicy::default(),
        };
        let dialled = Bytes::copy_from_slice(name.as_bytes());
        parties.tenant = Some(Arc::from(tenant));
        parties.callee = Some(Arc::from(name));
        self.admit_and_start(
            msg,
            source,
            &route,
            dialled,
            forks,
            None,
            parties,
            Outbound::No,
        );
    }

    /// Admission control, then a call actor for the INVITE (its Call-ID claimed first).
    #[allow(clippy::too_many_arguments)]
    fn admit_and_start(
        &self,
        msg: Request,
        source: Source,
        route: &Route,
        dialled: Bytes,
        forks: Vec<Fork>,
        queue: Option<QueueJoin>,
        parties: call::Parties,
        outbound: Outbound,
    ) {
        let active = self.ctx.active.load(Ordering::Relaxed);
        let ip = source.remote.ip();
        let exempt = self.trust.is_trusted_or_gateway(ip);
        if let Err(refusal) = self.admission.admit(ip, active, exempt) {
            metrics::counter!(ADMISSION_REFUSED, "reason" => refusal.label).increment(1);
            let retry = self.admission.retry_after().to_string();
            let extra: &[(HeaderName, &str)] = if refusal.status == 503 {
                &[(HeaderName::RetryAfter, retry.as_str())]
            } else {
                &[]
            };
            return self.answer(&msg, &source, refusal.status, refusal.reason, extra);
        }
        let Some(calls) =
            ractor::registry::where_is(self.calls.clone()).map(ActorRef::<SupervisorMsg>::from)
        else {
            tracing::error!("calls supervisor not running");
            return self.answer(
                &msg,
                &source,
                503,
                "Service Unavailable (Restarting)",
                &[(HeaderName::RetryAfter, "1")],
            );
        };
        // Its own allocation: the directory keeps the key after the call (a retired slot,
        // 64*T1), and a slice would keep the INVITE's whole datagram alive with it.
        let call_id = Bytes::copy_from_slice(&msg.ids().call_id);
        // Claim the Call-ID before the actor exists, so retransmissions and a CANCEL that
        // arrive while it starts wait for it instead of starting a second call.
        match self.ctx.directory.map.entry(call_id.clone()) {
            dashmap::Entry::Occupied(_) => return,
            dashmap::Entry::Vacant(v) => {
                v.insert(Slot::Starting(Vec::new()));
            }
        }
        self.ctx.active.fetch_add(1, Ordering::Relaxed);
        self.ctx.rate.count(call::rate::unix_secs());
        let init = call::NewCall {
            invite: Inbound { msg, source },
            route: route.clone(),
            dialled,
            forks,
            queue,
            originate: None,
            parties,
        };
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            if outbound == Outbound::Yes && Router::risk_gate(&ctx, &init, &call_id).await.is_err()
            {
                return;
            }
            if let Err(e) = call::start(&ctx, &calls, init).await {
                tracing::error!(call_id = %String::from_utf8_lossy(&call_id), error = %e, "call actor did not start");
                ctx.directory.remove(&call_id);
                ctx.active.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }
}

impl Router {
    /// A message for an ended call: a retransmitted request gets its final response again,
    /// ACKs and late responses are absorbed, anything new gets 481.
    fn absorb(&self, retired: &Retired, inbound: Inbound) {
        let Inbound { msg, source } = inbound;
        let Some(method) = msg.method().cloned() else {
            let invite_2xx = msg.status().is_some_and(|s| (200..300).contains(&s))
                && msg.cseq().is_some_and(|c| c.method == Method::Invite);
            match &retired.ack_2xx {
                Some((ack, dest)) if invite_2xx => self.ctx.transports().send(*dest, ack.clone()),
                _ => metrics::counter!(STRAY, "kind" => "late_response").increment(1),
            }
            return;
        };
        if method == Method::Ack {
            return;
        }
        let branch = msg.top_via().and_then(|v| v.branch()).unwrap_or_default();
        match retired
            .responses
            .iter()
            .find(|r| r.branch == branch && r.method == method)
        {
            // A 2xx-answered INVITE: its retransmissions are absorbed (RFC 6026).
            Some(r) if r.response.is_empty() => {}
            Some(r) => self.ctx.transports().send(r.dest, r.response.clone()),
            None => self.answer(&msg, &source, 481, "Call/Transaction Does Not Exist", &[]),
        }
    }
}

impl Handler for Router {
    fn handle(&self, inbound: Inbound<Passed>) {
        let call_id = match &inbound.msg {
            Passed::Request(r) => r.ids().call_id.clone(),
            Passed::Response(m) => match m.call_id() {
                Some(c) => c.clone(),
                None => return,
            },
        };
        let Some(mut slot) = self.ctx.directory.map.get_mut(&call_id) else {
            let Inbound { msg, source } = inbound;
            let msg = match msg {
                Passed::Request(msg) => {
                    return self.handle_new_request(Inbound { msg, source });
                }
                Passed::Response(msg) => msg,
            };
            if let Some(trunk) = super::trunk::parse_register_call_id(&call_id) {
                // The answer to a trunk's REGISTER with its carrier.
                let node = self.ctx.cc.get().and_then(std::sync::Weak::upgrade);
                if let Some(t) = node.and_then(|cc| super::trunk::lookup(&trunk, &cc.node)) {
                    let _ = t.cast(super::trunk::TrunkMsg::RegisterAnswered(Box::new(msg)));
                }
                return;
            }
            if let Some((trunk, seq)) = super::trunk::parse_probe_call_id(&call_id) {
                // The answer to a trunk's OPTIONS probe.
                let status = msg.status().unwrap_or(0);
                let node = self.ctx.cc.get().and_then(std::sync::Weak::upgrade);
                if let Some(t) = node.and_then(|cc| super::trunk::lookup(&trunk, &cc.node)) {
                    let _ = t.cast(super::trunk::TrunkMsg::ProbeAnswered { seq, status });
                }
                return;
            }
            metrics::counter!(STRAY, "kind" => "response").increment(1);
            return;
        };
        // Calls and the ended-call memory take the plain message.
        let inbound = inbound.into_plain();
        let actor = match slot.value_mut() {
            Slot::Running(actor) => actor.clone(),
            Slot::Retired(retired) => {
                let retired = retired.clone();
                drop(slot);
                return self.absorb(&retired, inbound);
            }
            Slot::Starting(queue) => {
                if queue.len() < STARTING_QUEUE {
                    queue.push(inbound);
                }
                return;
            }
        };
        // Never hold a directory guard while talking to an actor.
        drop(slot);
        if actor.send_message(CallMsg::Sip(Box::new(inbound))).is_err() {
            // The actor is stopping: its lingering transactions are gone.
            metrics::counter!(STRAY, "kind" => "late").increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(per_source_cps: u32, sources: usize) -> Admission {
        let config = AdmissionConfig {
            per_source_cps,
            cps: 0,
            ..AdmissionConfig::default()
        };
        Admission::with_capacity(config, sources)
    }

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn per_source_limits_spare_exempt_sources() {
        let a = admission(1, 16);
        assert!(a.admit(ip(1), 0, false).is_ok());
        let refused = a.admit(ip(1), 0, false).unwrap_err();
        assert_eq!(refused.label, "source_cps");
        // Another source has its own bucket; a trusted peer or gateway has none.
        assert!(a.admit(ip(2), 0, false).is_ok());
        for _ in 0..100 {
            assert!(a.admit(ip(3), 0, true).is_ok());
        }
        assert_eq!(a.tracked_sources(), 2);
    }

    #[test]
    fn the_source_table_is_bounded_and_forgets_the_least_recent() {
        let a = admission(1, 4);
        for i in 0..10 {
            assert!(a.admit(ip(i), 0, false).is_ok());
        }
        assert_eq!(a.tracked_sources(), 4);
        // The most recent sources are remembered (their bucket is empty)...
        assert!(a.admit(ip(9), 0, false).is_err());
        // ...the first ones were forgotten, and start again with a full bucket.
        assert!(a.admit(ip(0), 0, false).is_ok());
        assert_eq!(a.tracked_sources(), 4);
    }
}
