//! The registrar (RFC 3261 §10) and the location service.
//!
//! One actor processes every REGISTER in order, so the bindings of an address-of-record
//! (AOR) have a single writer. The bindings themselves live in [`Location`], shared through
//! an `Arc`: call routing reads it directly (`lookup`) without a round trip through the actor.
//!
//! - Digest authentication goes through the shared `routing::auth::Authenticator` (401,
//!   `stale=true`, nonce-count replays, brute-force locks).
//! - Each binding keeps the REGISTER's source (transport, address, TCP connection): the phone
//!   is reached through the address and connection it registered from (NAT, RFC 5626-style
//!   flow reuse), not the possibly private address in its Contact.
//! - Persistence: the actor hands each changed AOR's full binding set to its own writer thread
//!   (its own connection to [`RegistrarArgs::database`]: the node's SQLite file, or a
//!   cluster's PostgreSQL; `synchronous=NORMAL`); the thread coalesces and commits every
//!   `flush_interval` (100 ms) in one transaction, so 1,000 REGISTER/s cost about ten commits
//!   per second and no fsync each. At start the unexpired rows are loaded back; a binding's
//!   TCP connection does not survive a restart, so reloaded bindings keep transport and
//!   address only.
//! - Cluster (PostgreSQL): each commit also sends `NOTIFY switchyard_registrations,
//!   '<node>|<tenant>|<user>'` per AOR in the same transaction. A listener thread per
//!   registrar (own connection, reconnecting with backoff) reloads the AORs other nodes
//!   changed and hands them to the actor, which replaces them in [`Location`] (telling the
//!   reachability observer, hence the agents, as a local change does). At each (re)connect it
//!   reloads every binding, so a notification missed while disconnected is repaired. A local
//!   change not yet committed, or committed after the listener read the database, wins over
//!   what the listener read (see [`RegistrarMsg::RemoteBindings`]).
//! - A tick every second removes expired bindings (lookups never return them meanwhile),
//!   purges the authenticator's tables and the response cache.
//! - Retransmitted REGISTERs (same Call-ID, CSeq and branch) get the cached response again
//!   instead of being processed twice (which would give 500 for an equal CSeq, and count a
//!   wrong password twice).

use bytes::Bytes;
use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef, MessagingErr, RpcReplyPort};
use std::collections::HashMap;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;

use crate::config::RegistrarConfig;
use crate::routing::auth::{unix_ms, AuthOutcome, Authenticator, TenantUsers};
use crate::sip::dialog::random_token;
use crate::sip::headers::NameAddr;
use crate::sip::message::{response_to, HeaderName, Message};
use crate::sip::uri::{Scheme, Uri};
use crate::store::registrations::{self, AorBindings, RegistrationRow};
use crate::store::{Database, Store, StoreError, Synchronous};
use crate::transport::{Dest, Inbound, Protocol, Source, Transports};

/// Current bindings, by `tenant` (gauge).
pub const REGISTRAR_BINDINGS: &str = "switchyard_registrar_bindings";
/// REGISTER outcomes, by `result`: ok, unregistered, query, challenged, forbidden, rejected,
/// retransmission (counter).
pub const REGISTRATIONS_TOTAL: &str = "switchyard_registrations_total";
/// Bindings removed because they expired (counter).
pub const REGISTRAR_EXPIRED_TOTAL: &str = "switchyard_registrar_expired_total";
/// AOR binding sets committed to the database (counter).
pub const REGISTRAR_DB_WRITES_TOTAL: &str = "switchyard_registrar_db_writes_total";
/// Failed binding commits; the batch is kept and retried (counter).
pub const REGISTRAR_DB_ERRORS_TOTAL: &str = "switchyard_registrar_db_errors_total";
/// Cluster: AOR binding sets changed through another node and applied to this node's
/// Location (counter).
pub const REGISTRAR_REMOTE_UPDATES_TOTAL: &str = "switchyard_registrar_remote_updates_total";
/// Cluster: times the binding-change listener lost or could not open its PostgreSQL
/// connection and will connect again (counter).
pub const REGISTRAR_LISTENER_RECONNECTS_TOTAL: &str =
    "switchyard_registrar_listener_reconnects_total";

/// Describes the registrar's metrics.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(REGISTRAR_BINDINGS, "Current registrar bindings, by tenant");
    describe_counter!(
        REGISTRATIONS_TOTAL,
        "REGISTER requests by result (ok, unregistered, query, challenged, forbidden, rejected, retransmission)"
    );
    describe_counter!(REGISTRAR_EXPIRED_TOTAL, "Bindings removed on expiry");
    describe_counter!(
        REGISTRAR_DB_WRITES_TOTAL,
        "Address-of-record binding sets committed to the database"
    );
    describe_counter!(
        REGISTRAR_DB_ERRORS_TOTAL,
        "Failed registrar database commits (retried)"
    );
    describe_counter!(
        REGISTRAR_REMOTE_UPDATES_TOTAL,
        "Binding sets changed through another cluster node and applied here"
    );
    describe_counter!(
        REGISTRAR_LISTENER_RECONNECTS_TOTAL,
        "Reconnections of the cluster binding-change listener"
    );
}

/// Bindings per AOR at most; more gets 403 (bounds memory per authenticated user).
pub const MAX_CONTACTS: usize = 16;
/// How long a final response is kept to answer retransmissions (64·T1, RFC 3261 Timer J).
const RESPONSE_CACHE: Duration = Duration::from_secs(32);
const RESPONSE_CACHE_MAX: usize = 100_000;
/// How often the writer deletes expired rows.
const DB_PURGE_EVERY: Duration = Duration::from_secs(60);
/// How long the listener waits for notifications before checking whether it should stop.
const LISTEN_POLL: Duration = Duration::from_millis(200);
/// Silence after which the listener checks its connection with a round trip (a dead server
/// behind a silent network would otherwise go unnoticed).
const LISTEN_PING_EVERY: Duration = Duration::from_secs(5);
/// The listener's reconnect backoff: first wait, doubled up to the maximum.
const LISTEN_FIRST_BACKOFF: Duration = Duration::from_millis(100);
const LISTEN_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a record of a local change is kept once committed (longer than any listener
/// message can be in flight).
const LOCAL_CHANGE_MEMORY: Duration = Duration::from_secs(10);

// ---- location service ----

/// One registered contact of an AOR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The Contact URI (what goes into the Request-URI towards the phone).
    pub contact: Bytes,
    /// q-value in thousandths (1000 when the Contact had none).
    pub q: u16,
    /// Unix milliseconds.
    pub expires_at_ms: u64,
    /// Where the REGISTER came from: the phone is reached through it.
    pub source: Source,
    pub call_id: Bytes,
    pub cseq: u32,
    pub user_agent: Option<Bytes>,
}

impl Binding {
    /// Seconds left at `now_ms` (rounded up, so a live binding never shows 0).
    pub fn expires_in_secs(&self, now_ms: u64) -> u32 {
        let ms = self.expires_at_ms.saturating_sub(now_ms);
        u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX)
    }

    /// Where to send requests for this binding. Over TCP/TLS: the connection the phone
    /// registered on (a stream whose connection is gone is reopened by the transport).
    /// Over UDP: the address the REGISTER came from (a phone behind NAT is reached only
    /// there), unless the Contact names the same IP with another port: then the phone is not
    /// behind NAT and listens where its Contact says (one host registering for several
    /// phones, like a SIPp or a PBX).
    pub fn dest(&self) -> Dest {
        let mut addr = self.source.remote;
        if self.source.protocol == Protocol::Udp {
            if let Ok(uri) = crate::sip::uri::Uri::parse(&self.contact) {
                let host = std::str::from_utf8(&uri.host).unwrap_or("");
                let ip: Result<std::net::IpAddr, _> =
                    host.trim_start_matches('[').trim_end_matches(']').parse();
                if let (Ok(ip), Some(port)) = (ip, uri.port) {
                    if ip == addr.ip() {
                        addr.set_port(port);
                    }
                }
            }
        }
        Dest {
            protocol: self.source.protocol,
            addr,
            conn: self.source.conn,
        }
    }

    fn to_row(&self, tenant: &str, username: &str) -> RegistrationRow {
        let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
        RegistrationRow {
            tenant: tenant.to_string(),
            username: username.to_string(),
            contact: text(&self.contact),
            q: self.q,
            expires_at_ms: i64::try_from(self.expires_at_ms).unwrap_or(i64::MAX),
            call_id: text(&self.call_id),
            cseq: self.cseq,
            protocol: self.source.protocol.as_str().to_string(),
            remote: self.source.remote.to_string(),
            local: Some(self.source.local.to_string()),
            user_agent: self.user_agent.as_ref().map(text),
        }
    }

    fn from_row(r: &RegistrationRow) -> Option<Binding> {
        let protocol = Protocol::from_token(r.protocol.as_bytes())?;
        let remote: SocketAddr = r.remote.parse().ok()?;
        let local = r
            .local
            .as_deref()
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(|| SocketAddr::new(remote.ip(), 0));
        Some(Binding {
            contact: Bytes::from(r.contact.clone()),
            q: r.q,
            expires_at_ms: u64::try_from(r.expires_at_ms).ok()?,
            source: Source {
                protocol,
                remote,
                local,
                conn: None,
            },
            call_id: Bytes::from(r.call_id.clone()),
            cseq: r.cseq,
            user_agent: r.user_agent.clone().map(Bytes::from),
        })
    }
}

/// An address-of-record: a user of a tenant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AorKey {
    pub tenant: String,
    pub user: String,
}

/// The location service: AOR → bindings (highest q first). Written only by the registrar
/// actor, read by anyone (sharded map; no guard is held beyond a clone).
#[derive(Default)]
pub struct Location {
    map: DashMap<AorKey, Vec<Binding>>,
    counts: DashMap<String, usize>,
    observer: OnceLock<ReachabilityObserver>,
}

/// Told when an AOR gains its first binding (`true`) or loses its last (`false`): agents
/// are available only while their phone is registered.
pub type ReachabilityObserver = Arc<dyn Fn(&AorKey, bool) + Send + Sync>;

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Location")
            .field("aors", &self.map.len())
            .finish()
    }
}

impl Location {
    pub fn new() -> Location {
        Location::default()
    }

    /// Sets the one observer of reachability changes (the node wires the agents in).
    pub fn observe(&self, observer: ReachabilityObserver) {
        let _ = self.observer.set(observer);
    }

    fn notify(&self, key: &AorKey, reachable: bool) {
        if let Some(o) = self.observer.get() {
            o(key, reachable);
        }
    }

    /// Whether `user` has an unexpired binding.
    pub fn is_reachable(&self, tenant: &str, user: &str) -> bool {
        let now = unix_ms(SystemTime::now());
        let key = AorKey {
            tenant: tenant.to_string(),
            user: user.to_string(),
        };
        self.map
            .get(&key)
            .is_some_and(|v| v.iter().any(|b| b.expires_at_ms > now))
    }

    /// The unexpired bindings of `user` in `tenant`, highest q first.
    pub fn lookup(&self, tenant: &str, user: &str) -> Vec<Binding> {
        self.lookup_at(tenant, user, unix_ms(SystemTime::now()))
    }

    /// [`Location::lookup`] at a given time (Unix milliseconds).
    pub fn lookup_at(&self, tenant: &str, user: &str, now_ms: u64) -> Vec<Binding> {
        let key = AorKey {
            tenant: tenant.to_string(),
            user: user.to_string(),
        };
        match self.map.get(&key) {
            Some(v) => v
                .iter()
                .filter(|b| b.expires_at_ms > now_ms)
                .cloned()
                .collect(),
            None => Vec::new(),
        }
    }

    /// Bindings of a tenant (expired ones count until the next sweep, at most a second).
    pub fn count(&self, tenant: &str) -> usize {
        self.counts.get(tenant).map(|c| *c).unwrap_or(0)
    }

    /// Bindings of all tenants.
    pub fn total(&self) -> usize {
        self.counts.iter().map(|c| *c.value()).sum()
    }

    /// Replaces an AOR's bindings (sorted here by q, highest first).
    fn set(&self, key: AorKey, mut bindings: Vec<Binding>) {
        bindings.sort_by_key(|b| std::cmp::Reverse(b.q));
        let new = bindings.len();
        let tenant = key.tenant.clone();
        let old = if bindings.is_empty() {
            self.map.remove(&key).map(|(_, v)| v.len()).unwrap_or(0)
        } else {
            self.map
                .insert(key.clone(), bindings)
                .map(|v| v.len())
                .unwrap_or(0)
        };
        if (old == 0) != (new == 0) {
            self.notify(&key, new > 0);
        }
        if new != old {
            let mut c = self.counts.entry(tenant.clone()).or_insert(0);
            *c = (*c + new).saturating_sub(old);
            metrics::gauge!(REGISTRAR_BINDINGS, "tenant" => tenant).set(*c as f64);
        }
    }

    /// Removes bindings expired at `now_ms`; returns how many went.
    fn sweep(&self, now_ms: u64) -> usize {
        let mut removed: HashMap<String, usize> = HashMap::new();
        let mut gone = Vec::new();
        self.map.retain(|k, v| {
            let before = v.len();
            v.retain(|b| b.expires_at_ms > now_ms);
            if v.len() != before {
                *removed.entry(k.tenant.clone()).or_default() += before - v.len();
            }
            if v.is_empty() {
                gone.push(k.clone());
            }
            !v.is_empty()
        });
        // Outside the map's shard locks: the observer may read the map.
        for k in &gone {
            self.notify(k, false);
        }
        let mut total = 0;
        for (tenant, n) in removed {
            total += n;
            let mut c = self.counts.entry(tenant.clone()).or_insert(0);
            *c = c.saturating_sub(n);
            metrics::gauge!(REGISTRAR_BINDINGS, "tenant" => tenant).set(*c as f64);
        }
        total
    }
}

// ---- public functions ----

/// Hands a REGISTER to the registrar (the router calls this). Never blocks.
pub fn register(
    registrar: &ActorRef<RegistrarMsg>,
    inbound: Inbound,
) -> Result<(), MessagingErr<RegistrarMsg>> {
    registrar.cast(RegistrarMsg::Register(Box::new(inbound)))
}

/// The bindings of an AOR, through the actor (tests, the API). Call routing should read
/// [`Location::lookup`] instead.
pub async fn get_bindings(
    registrar: &ActorRef<RegistrarMsg>,
    tenant: &str,
    user: &str,
) -> Result<Vec<Binding>, String> {
    let (tenant, user) = (tenant.to_string(), user.to_string());
    match registrar
        .call(
            |reply| RegistrarMsg::GetBindings(tenant, user, reply),
            Some(Duration::from_secs(5)),
        )
        .await
    {
        Ok(ractor::rpc::CallResult::Success(b)) => Ok(b),
        Ok(_) => Err("registrar did not answer".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Commits every binding change made so far to the database (tests, shutdown).
pub async fn flush(registrar: &ActorRef<RegistrarMsg>) -> Result<(), String> {
    match registrar
        .call(RegistrarMsg::Flush, Some(Duration::from_secs(10)))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(r)) => r,
        Ok(_) => Err("registrar did not answer".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The registrar actor (its configuration comes in [`RegistrarArgs`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct RegistrarActor;

/// What the registrar needs. Cloned for each (re)start by the supervisor.
#[derive(Clone)]
pub struct RegistrarArgs {
    pub config: RegistrarConfig,
    pub auth: Arc<Authenticator>,
    /// Shared with call routing; survives restarts of the actor.
    pub location: Arc<Location>,
    /// Set once the transports are bound (they need the router, which needs this actor).
    pub transports: Arc<OnceLock<Transports>>,
    /// Where bindings are kept: the node's SQLite file (the store writer's too: WAL lets both
    /// connections write), or a cluster's PostgreSQL, shared by every node's registrar.
    pub database: Database,
    /// This node's name, naming the writer in binding-change notifications (PostgreSQL) so a
    /// node ignores its own. Must differ between nodes and contain no `|`; [`RegistrarArgs::new`]
    /// makes a random one, the cluster sets the node's configured name.
    pub node: String,
    /// Longest time a binding change waits before its batch is committed.
    pub flush_interval: Duration,
    /// The Server header of responses.
    pub server: Option<String>,
}

impl RegistrarArgs {
    /// Arguments with a 100 ms flush interval, no Server header, bindings in the SQLite file
    /// `db_path` and a random node name (set `database` and `node` for a cluster).
    pub fn new(
        config: RegistrarConfig,
        auth: Arc<Authenticator>,
        location: Arc<Location>,
        transports: Arc<OnceLock<Transports>>,
        db_path: impl Into<PathBuf>,
    ) -> RegistrarArgs {
        RegistrarArgs {
            config,
            auth,
            location,
            transports,
            database: Database::Sqlite(db_path.into()),
            // Unique unless set: nodes that all kept one default name would ignore each
            // other's notifications as their own.
            node: format!("node-{}", String::from_utf8_lossy(&random_token(10))),
            flush_interval: Duration::from_millis(100),
            server: None,
        }
    }
}

/// Messages of the registrar.
#[derive(Debug)]
pub enum RegistrarMsg {
    /// A REGISTER from the transports.
    Register(Box<Inbound>),
    /// The bindings of `(tenant, user)`.
    GetBindings(String, String, RpcReplyPort<Vec<Binding>>),
    /// Commit pending binding changes now.
    Flush(RpcReplyPort<Result<(), String>>),
    /// Periodic: expire bindings, purge caches.
    Tick,
    /// Cluster: another node changed `aor`; `bindings` is its unexpired set as the listener
    /// read it once every local change numbered up to `read_after` was committed. Applied
    /// unless this node changed the AOR later than that (its own commit then tells the
    /// others).
    RemoteBindings {
        /// The address-of-record.
        aor: AorKey,
        /// Its complete binding set (empty: unregistered).
        bindings: Vec<Binding>,
        /// The local change number committed when the listener read the database.
        read_after: u64,
    },
    /// Cluster: every unexpired binding, read by the listener at (re)connect; AORs missing
    /// from it are removed, under the same rule as [`RegistrarMsg::RemoteBindings`].
    RemoteSnapshot {
        /// Every AOR with bindings.
        aors: Vec<(AorKey, Vec<Binding>)>,
        /// The local change number committed when the listener read the database.
        read_after: u64,
    },
}

// Local only: ractor's `cluster` feature (on for ractor_cluster) asks each message type to
// say whether it can cross nodes; this one never does (the cluster module carries what does).
impl ractor::Message for RegistrarMsg {}

/// The actor's state.
pub struct RegistrarState {
    core: Registrar,
    transports: Arc<OnceLock<Transports>>,
    writer: mpsc::Sender<WriterCmd>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    /// Cluster: the binding-change listener (stopped by dropping `stop`).
    listener: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
    /// Numbers local changes; shared with the writer, which reports what it committed.
    seqs: Arc<ChangeSeqs>,
    /// Cluster: AORs changed here, with the change's number and time, so a remote update read
    /// before that change reached the database does not undo it.
    local_changes: HashMap<AorKey, (u64, Instant)>,
    tick: Option<tokio::task::JoinHandle<()>>,
    /// Responses to UDP requests by (source, Call-ID, CSeq, branch), encoded, to answer
    /// retransmissions (only from the address the original came from: the bindings listed
    /// in a 200 are not for anyone else).
    recent: HashMap<RetransmissionKey, (Bytes, Dest, Instant)>,
}

/// Stored bindings grouped by address-of-record (the rows `keep` accepts; a row that does not
/// make a binding is skipped).
fn group_by_aor(
    rows: &[RegistrationRow],
    keep: impl Fn(&RegistrationRow) -> bool,
) -> HashMap<AorKey, Vec<Binding>> {
    let mut by_aor: HashMap<AorKey, Vec<Binding>> = HashMap::new();
    for r in rows.iter().filter(|r| keep(r)) {
        if let Some(b) = Binding::from_row(r) {
            by_aor
                .entry(AorKey {
                    tenant: r.tenant.clone(),
                    user: r.username.clone(),
                })
                .or_default()
                .push(b);
        }
    }
    by_aor
}

impl Actor for RegistrarActor {
    type Msg = RegistrarMsg;
    type State = RegistrarState;
    type Arguments = RegistrarArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RegistrarMsg>,
        args: RegistrarArgs,
    ) -> Result<RegistrarState, ActorProcessingErr> {
        let (tx, rx) = mpsc::channel();
        let (loaded_tx, loaded_rx) = oneshot::channel();
        let database = args.database.clone();
        let flush_interval = args.flush_interval;
        let seqs = Arc::new(ChangeSeqs::default());
        let writer_seqs = seqs.clone();
        let node = args.node.clone();
        // Opening and loading block, so they happen on the writer thread.
        let thread = std::thread::Builder::new()
            .name("registrar-writer".into())
            .spawn(move || {
                let store = match Store::connect(&database, Synchronous::Normal) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let now = i64::try_from(unix_ms(SystemTime::now())).unwrap_or(i64::MAX);
                match store.load_registrations(now) {
                    Ok(rows) => {
                        let _ = loaded_tx.send(Ok(rows));
                    }
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e.to_string()));
                        return;
                    }
                }
                Writer::new(store, flush_interval, node, writer_seqs).run(rx);
            })?;
        let rows = match loaded_rx.await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => return Err(format!("registrar database: {e}").into()),
            Err(_) => return Err("registrar writer thread died while loading".into()),
        };
        // After a crash-restart the shared Location is still current (and newer than the
        // database by up to one batch): keep it. Only an empty Location (a new process) is
        // filled from the database.
        let mut loaded = 0;
        if args.location.total() == 0 {
            // A tenant removed from the configuration keeps no bindings.
            let by_aor = group_by_aor(&rows, |r| args.auth.tenant(&r.tenant).is_some());
            for (k, v) in by_aor {
                loaded += v.len();
                args.location.set(k, v);
            }
        }
        for t in args.auth.tenants() {
            metrics::gauge!(REGISTRAR_BINDINGS, "tenant" => t.id.clone())
                .set(args.location.count(&t.id) as f64);
        }
        args.database.record_backend("registrations");
        let listener = match &args.database {
            Database::Sqlite(_) => None,
            Database::Postgres(conninfo) => {
                let (stop_tx, stop_rx) = mpsc::channel();
                let listener = Listener {
                    conninfo: conninfo.clone(),
                    node: args.node.clone(),
                    registrar: myself.clone(),
                    seqs: seqs.clone(),
                    stop: stop_rx,
                };
                let thread = std::thread::Builder::new()
                    .name("registrar-listener".into())
                    .spawn(move || listener.run())?;
                Some((stop_tx, thread))
            }
        };
        tracing::info!(loaded, database = %args.database, node = %args.node, "registrar started");
        let tick = myself.send_interval(Duration::from_secs(1), || RegistrarMsg::Tick);
        Ok(RegistrarState {
            core: Registrar {
                config: args.config,
                auth: args.auth,
                location: args.location,
                server: args.server.map(Bytes::from),
            },
            transports: args.transports,
            writer: tx,
            writer_thread: Some(thread),
            listener,
            seqs,
            local_changes: HashMap::new(),
            tick: Some(tick),
            recent: HashMap::new(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RegistrarMsg>,
        state: &mut RegistrarState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.tick.take() {
            t.abort();
        }
        if let Some((stop, thread)) = state.listener.take() {
            // Dropping the sender is the stop signal; the thread notices within LISTEN_POLL.
            drop(stop);
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        // Commit what is pending before the actor is reported stopped, so a successor
        // opening the same database finds it.
        let (done_tx, done_rx) = oneshot::channel();
        let _ = state.writer.send(WriterCmd::Shutdown(done_tx));
        let _ = done_rx.await;
        if let Some(t) = state.writer_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        tracing::info!("registrar stopped");
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<RegistrarMsg>,
        msg: RegistrarMsg,
        state: &mut RegistrarState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegistrarMsg::Register(inbound) => state.on_register(*inbound)?,
            RegistrarMsg::GetBindings(tenant, user, reply) => {
                let _ = reply.send(state.core.location.lookup(&tenant, &user));
            }
            RegistrarMsg::Flush(reply) => {
                state
                    .writer
                    .send(WriterCmd::Flush(reply))
                    .map_err(|_| "registrar writer thread is gone")?;
            }
            RegistrarMsg::Tick => state.on_tick(),
            RegistrarMsg::RemoteBindings {
                aor,
                bindings,
                read_after,
            } => {
                state.on_remote(aor, bindings, read_after);
            }
            RegistrarMsg::RemoteSnapshot { aors, read_after } => {
                state.on_remote_snapshot(aors, read_after)
            }
        }
        Ok(())
    }
}

impl RegistrarState {
    fn on_register(&mut self, inbound: Inbound) -> Result<(), ActorProcessingErr> {
        let Inbound { msg, source } = inbound;
        let Some(transports) = self.transports.get().cloned() else {
            tracing::warn!("registrar: transports not set, REGISTER dropped");
            return Ok(());
        };
        // Streams do not retransmit; UDP does until it hears the final response.
        let key = (source.protocol == Protocol::Udp)
            .then(|| retransmission_key(&msg, &source))
            .flatten();
        if let Some(k) = &key {
            if let Some((bytes, dest, _)) = self.recent.get(k) {
                metrics::counter!(REGISTRATIONS_TOTAL, "result" => "retransmission").increment(1);
                transports.send(*dest, bytes.clone());
                return Ok(());
            }
        }
        let out = self.core.register(&msg, &source, SystemTime::now());
        metrics::counter!(REGISTRATIONS_TOTAL, "result" => out.result).increment(1);
        let dest = transports.response_dest(&source, out.response.top_via().as_ref());
        let bytes = out.response.encode();
        crate::transport::count_sent(dest.protocol, &out.response);
        transports.send(dest, bytes.clone());
        if let Some(aor) = out.changed {
            let rows = self
                .core
                .location
                .map
                .get(&aor)
                .map(|v| v.iter().map(|b| b.to_row(&aor.tenant, &aor.user)).collect())
                .unwrap_or_default();
            let seq = self.seqs.handed.fetch_add(1, Ordering::Relaxed) + 1;
            if self.listener.is_some() {
                self.local_changes
                    .insert(aor.clone(), (seq, Instant::now()));
            }
            // The thread exits only on shutdown or when this sender is dropped, so a send
            // error means it crashed: fail and let the supervisor restart the registrar.
            self.writer
                .send(WriterCmd::Put(
                    AorBindings {
                        tenant: aor.tenant,
                        username: aor.user,
                        rows,
                    },
                    seq,
                ))
                .map_err(|_| "registrar writer thread is gone")?;
        }
        if let Some(k) = key {
            if self.recent.len() >= RESPONSE_CACHE_MAX {
                self.recent.clear();
            }
            self.recent.insert(k, (bytes, dest, Instant::now()));
        }
        Ok(())
    }

    fn on_tick(&mut self) {
        let now = SystemTime::now();
        let expired = self.core.location.sweep(unix_ms(now));
        if expired > 0 {
            metrics::counter!(REGISTRAR_EXPIRED_TOTAL).increment(expired as u64);
            tracing::debug!(expired, "bindings expired");
        }
        self.core.auth.purge(now);
        self.recent
            .retain(|_, (_, _, at)| at.elapsed() < RESPONSE_CACHE);
        let committed = self.seqs.committed.load(Ordering::Acquire);
        self.local_changes
            .retain(|_, (seq, at)| *seq > committed || at.elapsed() < LOCAL_CHANGE_MEMORY);
    }

    /// Applies another node's binding set for `aor` (see [`RegistrarMsg::RemoteBindings`]);
    /// returns whether the Location changed.
    fn on_remote(&mut self, aor: AorKey, bindings: Vec<Binding>, read_after: u64) -> bool {
        if self.core.auth.tenant(&aor.tenant).is_none() {
            return false; // a tenant this node's configuration does not have (yet)
        }
        if let Some((seq, _)) = self.local_changes.get(&aor) {
            // `read_after` never exceeds what is committed, so this also covers a local
            // change still waiting in the writer.
            if *seq > read_after {
                tracing::debug!(tenant = %aor.tenant, user = %aor.user, "remote bindings older than a local change; kept the local ones");
                return false;
            }
        }
        let now = unix_ms(SystemTime::now());
        let bindings: Vec<Binding> = bindings
            .into_iter()
            .filter(|b| b.expires_at_ms > now)
            .collect();
        // The same set as here (e.g. this node's own AOR in a snapshot): keep the local
        // bindings, whose TCP connections a reloaded binding would not know.
        let same = {
            let current = self.core.location.lookup_at(&aor.tenant, &aor.user, now);
            let rows = |v: &[Binding]| -> Vec<RegistrationRow> {
                let mut r: Vec<RegistrationRow> =
                    v.iter().map(|b| b.to_row(&aor.tenant, &aor.user)).collect();
                r.sort_by(|a, b| a.contact.cmp(&b.contact));
                r
            };
            rows(&current) == rows(&bindings)
        };
        if same {
            return false;
        }
        tracing::debug!(tenant = %aor.tenant, user = %aor.user, bindings = bindings.len(), "bindings changed through another node");
        self.core.location.set(aor, bindings);
        metrics::counter!(REGISTRAR_REMOTE_UPDATES_TOTAL).increment(1);
        true
    }

    /// Applies the listener's full reload: every AOR in it, and removal of the AORs it lacks.
    fn on_remote_snapshot(&mut self, aors: Vec<(AorKey, Vec<Binding>)>, read_after: u64) {
        let mut seen = HashSet::with_capacity(aors.len());
        let mut changed = 0usize;
        for (aor, bindings) in aors {
            seen.insert(aor.clone());
            changed += usize::from(self.on_remote(aor, bindings, read_after));
        }
        let gone: Vec<AorKey> = self
            .core
            .location
            .map
            .iter()
            .map(|e| e.key().clone())
            .filter(|k| !seen.contains(k))
            .collect();
        for aor in gone {
            changed += usize::from(self.on_remote(aor, Vec::new(), read_after));
        }
        tracing::info!(
            aors = seen.len(),
            changed,
            "registrar caught up with the shared database"
        );
    }
}

/// (source, Call-ID, CSeq, branch) of a request.
type RetransmissionKey = (SocketAddr, Bytes, u32, Bytes);

fn retransmission_key(msg: &Message, source: &Source) -> Option<RetransmissionKey> {
    // Copies, so the cache does not keep whole request buffers alive.
    Some((
        source.remote,
        Bytes::copy_from_slice(msg.call_id()?),
        msg.cseq()?.seq,
        Bytes::copy_from_slice(&msg.top_via()?.branch()?),
    ))
}

// ---- REGISTER processing (no actor state beyond the shared maps) ----

/// The REGISTER logic: decides a response and updates the location service.
struct Registrar {
    config: RegistrarConfig,
    auth: Arc<Authenticator>,
    location: Arc<Location>,
    server: Option<Bytes>,
}

/// The result of one REGISTER.
struct Outcome {
    response: Message,
    /// The AOR whose bindings changed (to be persisted).
    changed: Option<AorKey>,
    /// Label for `REGISTRATIONS_TOTAL`.
    result: &'static str,
}

/// A parsed Contact of a REGISTER.
struct NewContact {
    uri: Bytes,
    q: u16,
    expires: u32,
}

impl Registrar {
    fn register(&self, msg: &Message, source: &Source, now: SystemTime) -> Outcome {
        let now_ms = unix_ms(now);
        let tag = random_token(10);
        let reply = |status: u16, reason: &str, result: &'static str| {
            let mut r = response_to(msg, status, reason, Some(&tag));
            if let Some(s) = &self.server {
                r.push(HeaderName::Server, s.clone());
            }
            Outcome {
                response: r,
                changed: None,
                result,
            }
        };
        // The Request-URI names the domain, hence the tenant.
        let Some(ruri) = msg.request_uri().and_then(|u| Uri::parse(u).ok()) else {
            return reply(400, "Bad Request (Request-URI)", "rejected");
        };
        if !ruri.is_sip() {
            return reply(416, "Unsupported URI Scheme", "rejected");
        }
        let Some(tenant) = self.auth.tenant_for_domain(&ruri.host) else {
            return reply(404, "Not Found (Unknown Domain)", "rejected");
        };
        let tenant = &*tenant;
        // The To header is the address-of-record.
        let Some(to) = msg.to() else {
            return reply(400, "Bad Request (To)", "rejected");
        };
        let aor = match to.parsed_uri() {
            Ok(u) if matches!(u.scheme, Scheme::Sip | Scheme::Sips) => u,
            _ => {
                return reply(
                    400,
                    "Bad Request (AOR must be a sip or sips URI)",
                    "rejected",
                )
            }
        };
        if !aor.host.eq_ignore_ascii_case(tenant.domain.as_bytes()) {
            return reply(404, "Not Found (AOR Not In This Domain)", "rejected");
        }
        let Some(user) = aor
            .user_unescaped()
            .and_then(|u| String::from_utf8(u.into_owned()).ok())
        else {
            return reply(404, "Not Found", "rejected");
        };
        let (Some(call_id), Some(cseq)) = (msg.call_id().cloned(), msg.cseq()) else {
            return reply(400, "Bad Request (Call-ID/CSeq)", "rejected");
        };
        match self
            .auth
            .check(msg, &tenant.id, source.remote.ip(), false, now)
        {
            AuthOutcome::Authenticated { username } => {
                if !self.auth.has_user(&tenant.id, &user) {
                    return reply(404, "Not Found", "rejected");
                }
                if username != user {
                    return reply(403, "Forbidden (Not Your AOR)", "forbidden");
                }
            }
            other => {
                let result = match other {
                    AuthOutcome::Challenge { .. } => "challenged",
                    AuthOutcome::Forbidden { .. } => "forbidden",
                    _ => "rejected",
                };
                let mut r = other
                    .response(msg, &tag)
                    .expect("not authenticated has a response");
                if let Some(s) = &self.server {
                    r.push(HeaderName::Server, s.clone());
                }
                return Outcome {
                    response: r,
                    changed: None,
                    result,
                };
            }
        }
        let contacts = match self.parse_contacts(msg) {
            Ok(c) => c,
            Err(ContactFault::Bad(reason)) => return reply(400, reason, "rejected"),
            Err(ContactFault::TooBrief) => {
                let mut o = reply(423, "Interval Too Brief", "rejected");
                o.response.push(
                    HeaderName::MinExpires,
                    self.config.min_expires_secs.to_string(),
                );
                return o;
            }
        };
        let key = AorKey {
            tenant: tenant.id.clone(),
            user,
        };
        let current = self.location.lookup_at(&key.tenant, &key.user, now_ms);
        let Some(contacts) = contacts else {
            // No Contact: a query.
            return self.ok(msg, &tag, tenant, &current, now_ms, None, "query");
        };
        // RFC 3261 §10.3 step 7: the same Call-ID with a CSeq not above the binding's means
        // an out-of-order request; the whole request is refused and nothing changes.
        let out_of_order = |b: &Binding| b.call_id == call_id && cseq.seq <= b.cseq;
        let user_agent = msg.value(HeaderName::UserAgent).cloned();
        let mut next = current.clone();
        let mut removed_any = false;
        match contacts {
            Contacts::Star => {
                if current.iter().any(out_of_order) {
                    return reply(500, "Server Internal Error (CSeq Out Of Order)", "rejected");
                }
                removed_any = !next.is_empty();
                next.clear();
            }
            Contacts::List(list) => {
                for c in &list {
                    if current
                        .iter()
                        .any(|b| b.contact == c.uri && out_of_order(b))
                    {
                        return reply(500, "Server Internal Error (CSeq Out Of Order)", "rejected");
                    }
                }
                for c in list {
                    let existing = next.iter().position(|b| b.contact == c.uri);
                    if c.expires == 0 {
                        if let Some(i) = existing {
                            next.remove(i);
                            removed_any = true;
                        }
                        continue;
                    }
                    let b = Binding {
                        contact: c.uri,
                        q: c.q,
                        expires_at_ms: now_ms + u64::from(c.expires) * 1000,
                        source: *source,
                        call_id: call_id.clone(),
                        cseq: cseq.seq,
                        user_agent: user_agent.clone(),
                    };
                    match existing {
                        Some(i) => next[i] = b,
                        None => next.push(b),
                    }
                }
                if next.len() > MAX_CONTACTS {
                    return reply(403, "Forbidden (Too Many Contacts)", "forbidden");
                }
            }
        }
        next.sort_by_key(|b| std::cmp::Reverse(b.q));
        let result = if removed_any && next.len() < current.len() {
            "unregistered"
        } else {
            "ok"
        };
        self.location.set(key.clone(), next.clone());
        self.ok(msg, &tag, tenant, &next, now_ms, Some(key), result)
    }

    /// 200 OK listing every current binding with its remaining time, and a Date header.
    #[allow(clippy::too_many_arguments)]
    fn ok(
        &self,
        msg: &Message,
        tag: &[u8],
        _tenant: &TenantUsers,
        bindings: &[Binding],
        now_ms: u64,
        changed: Option<AorKey>,
        result: &'static str,
    ) -> Outcome {
        let mut r = response_to(msg, 200, "OK", Some(tag));
        for b in bindings {
            let mut v = Vec::with_capacity(b.contact.len() + 24);
            v.push(b'<');
            v.extend_from_slice(&b.contact);
            v.extend_from_slice(b">;expires=");
            v.extend_from_slice(b.expires_in_secs(now_ms).to_string().as_bytes());
            if b.q != 1000 {
                v.extend_from_slice(b";q=");
                v.extend_from_slice(format_q(b.q).as_bytes());
            }
            r.push(HeaderName::Contact, Bytes::from(v));
        }
        r.push(HeaderName::Date, http_date(now_ms / 1000));
        if let Some(s) = &self.server {
            r.push(HeaderName::Server, s.clone());
        }
        Outcome {
            response: r,
            changed,
            result,
        }
    }

    /// The Contacts of a REGISTER: `None` for a query, `*`, or a list with expiry decided
    /// (Contact parameter, else Expires header, else the default; cut to the maximum).
    fn parse_contacts(&self, msg: &Message) -> Result<Option<Contacts>, ContactFault> {
        let header_expires = match msg.value(HeaderName::Expires) {
            None => None,
            Some(_) => Some(
                msg.expires()
                    .ok_or(ContactFault::Bad("Bad Request (Expires)"))?,
            ),
        };
        let raw: Vec<Bytes> = msg.values(HeaderName::Contact).collect();
        if raw.is_empty() {
            return Ok(None);
        }
        let mut parsed = Vec::with_capacity(raw.len());
        for v in &raw {
            parsed.push(
                NameAddr::parse_contact(v)
                    .map_err(|_| ContactFault::Bad("Bad Request (Contact)"))?,
            );
        }
        if parsed.iter().any(|c| c.star) {
            if parsed.len() != 1 || header_expires != Some(0) {
                return Err(ContactFault::Bad(
                    "Bad Request (Contact: * needs Expires: 0 and no other Contact)",
                ));
            }
            return Ok(Some(Contacts::Star));
        }
        let mut list = Vec::with_capacity(parsed.len());
        for c in parsed {
            let q = match c.params.get("q") {
                None => 1000,
                Some(_) => c.q().ok_or(ContactFault::Bad("Bad Request (q)"))?,
            };
            let expires = c
                .expires()
                .or(header_expires)
                .unwrap_or(self.config.default_expires_secs);
            if expires != 0 && expires < self.config.min_expires_secs {
                return Err(ContactFault::TooBrief);
            }
            list.push(NewContact {
                uri: c.uri,
                q,
                expires: expires.min(self.config.max_expires_secs),
            });
        }
        Ok(Some(Contacts::List(list)))
    }
}

enum Contacts {
    Star,
    List(Vec<NewContact>),
}

enum ContactFault {
    Bad(&'static str),
    TooBrief,
}

/// `q` in thousandths as written in a Contact (`0.5`, `0.25`, `1`).
fn format_q(q: u16) -> String {
    if q >= 1000 {
        return "1".into();
    }
    let s = format!("0.{q:03}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// An RFC 1123 date (`Sun, 06 Nov 1994 08:49:37 GMT`), as SIP's Date header wants.
fn http_date(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

// ---- the writer thread ----

/// Local change numbers: handed to the writer (the actor counts) and committed (the writer
/// reports the highest number in each successful commit).
#[derive(Default)]
struct ChangeSeqs {
    handed: AtomicU64,
    committed: AtomicU64,
}

enum WriterCmd {
    /// An AOR's complete binding set (replaces what is stored), with its change number.
    Put(AorBindings, u64),
    Flush(RpcReplyPort<Result<(), String>>),
    Shutdown(oneshot::Sender<()>),
}

/// Coalesces binding sets per AOR (only the newest set of an AOR is written) and commits
/// them in one transaction per batch.
struct Writer {
    store: Store,
    flush_interval: Duration,
    /// This node's name, in the NOTIFY of each committed AOR (PostgreSQL).
    node: String,
    seqs: Arc<ChangeSeqs>,
    pending: HashMap<(String, String), AorBindings>,
    /// The highest change number among `pending`.
    pending_seq: u64,
    due: Option<Instant>,
    last_purge: Instant,
}

impl Writer {
    fn new(store: Store, flush_interval: Duration, node: String, seqs: Arc<ChangeSeqs>) -> Writer {
        Writer {
            store,
            flush_interval,
            node,
            seqs,
            pending: HashMap::new(),
            pending_seq: 0,
            due: None,
            last_purge: Instant::now(),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<WriterCmd>) {
        loop {
            let cmd = match self.due {
                None => rx.recv_timeout(DB_PURGE_EVERY),
                Some(due) => match due.checked_duration_since(Instant::now()) {
                    Some(wait) if !wait.is_zero() => rx.recv_timeout(wait),
                    _ => Err(RecvTimeoutError::Timeout),
                },
            };
            match cmd {
                Ok(WriterCmd::Put(aor, seq)) => {
                    if self.pending.is_empty() {
                        self.due = Some(Instant::now() + self.flush_interval);
                    }
                    self.pending_seq = self.pending_seq.max(seq);
                    self.pending
                        .insert((aor.tenant.clone(), aor.username.clone()), aor);
                }
                Ok(WriterCmd::Flush(reply)) => {
                    let _ = reply.send(self.commit());
                }
                Ok(WriterCmd::Shutdown(done)) => {
                    let _ = self.commit();
                    let _ = done.send(());
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.commit();
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // The actor died without post_stop: still keep what it handed over.
                    let _ = self.commit();
                    return;
                }
            }
            if self.last_purge.elapsed() >= DB_PURGE_EVERY {
                self.last_purge = Instant::now();
                let now = i64::try_from(unix_ms(SystemTime::now())).unwrap_or(i64::MAX);
                if let Err(e) = self.store.purge_registrations(now) {
                    tracing::warn!(error = %e, "registrar: purging expired rows failed");
                }
            }
        }
    }

    fn commit(&mut self) -> Result<(), String> {
        if self.pending.is_empty() {
            self.due = None;
            return Ok(());
        }
        let batch: Vec<AorBindings> = self.pending.values().cloned().collect();
        match self.store.publish_registrations(&self.node, &batch) {
            Ok(()) => {
                metrics::counter!(REGISTRAR_DB_WRITES_TOTAL).increment(batch.len() as u64);
                self.seqs
                    .committed
                    .fetch_max(self.pending_seq, Ordering::AcqRel);
                self.pending.clear();
                self.due = None;
                Ok(())
            }
            Err(e) => {
                metrics::counter!(REGISTRAR_DB_ERRORS_TOTAL).increment(1);
                tracing::warn!(error = %e, aors = batch.len(), "registrar: commit failed, will retry");
                // Keep the batch; retry after a second rather than spin on a busy disk.
                self.due = Some(Instant::now() + Duration::from_secs(1));
                Err(e.to_string())
            }
        }
    }
}

// ---- the cluster listener thread ----

/// Follows other nodes' binding changes on PostgreSQL (LISTEN/NOTIFY) and hands them to the
/// registrar actor. Runs on its own OS thread with its own connection.
struct Listener {
    conninfo: String,
    node: String,
    registrar: ActorRef<RegistrarMsg>,
    seqs: Arc<ChangeSeqs>,
    /// Closed (sender dropped) when the registrar stops.
    stop: mpsc::Receiver<()>,
}

/// Why a listening session ended.
enum SessionEnd {
    /// The registrar stopped (or is gone): the thread exits.
    Stop,
    /// The connection failed: reconnect after a backoff.
    Lost(StoreError),
}

impl From<StoreError> for SessionEnd {
    fn from(e: StoreError) -> Self {
        SessionEnd::Lost(e)
    }
}

impl Listener {
    fn run(self) {
        let mut backoff = LISTEN_FIRST_BACKOFF;
        loop {
            let started = Instant::now();
            match self.session() {
                SessionEnd::Stop => return,
                SessionEnd::Lost(e) => {
                    metrics::counter!(REGISTRAR_LISTENER_RECONNECTS_TOTAL).increment(1);
                    // A session that ran a while was healthy: start the backoff over.
                    if started.elapsed() > LISTEN_MAX_BACKOFF {
                        backoff = LISTEN_FIRST_BACKOFF;
                    }
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "registrar listener lost its database connection");
                }
            }
            match self.stop.recv_timeout(backoff) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            backoff = (backoff * 2).min(LISTEN_MAX_BACKOFF);
        }
    }

    /// One connection: LISTEN, catch up with everything, then follow notifications.
    fn session(&self) -> SessionEnd {
        let database = Database::Postgres(self.conninfo.clone());
        let mut store = match Store::connect(&database, Synchronous::Normal) {
            Ok(s) => s,
            Err(e) => return SessionEnd::Lost(e),
        };
        if let Err(e) = store.listen(registrations::CHANNEL) {
            return SessionEnd::Lost(e);
        }
        // Listening first, then reading: a change committed in between is both in the
        // snapshot and notified, never in neither.
        let read_after = self.seqs.committed.load(Ordering::Acquire);
        let rows = match store.load_registrations(now_i64()) {
            Ok(rows) => rows,
            Err(e) => return SessionEnd::Lost(e),
        };
        let by_aor = group_by_aor(&rows, |_| true);
        let msg = RegistrarMsg::RemoteSnapshot {
            aors: by_aor.into_iter().collect(),
            read_after,
        };
        if self.registrar.cast(msg).is_err() {
            return SessionEnd::Stop;
        }
        tracing::info!(
            bindings = rows.len(),
            "registrar listener following other nodes"
        );
        let mut last_heard = Instant::now();
        loop {
            match self.stop.try_recv() {
                Err(TryRecvError::Empty) => {}
                _ => return SessionEnd::Stop,
            }
            let batch = match store.notifications(LISTEN_POLL) {
                Ok(b) => b,
                Err(e) => return SessionEnd::Lost(e),
            };
            if batch.is_empty() {
                if last_heard.elapsed() >= LISTEN_PING_EVERY {
                    if let Err(e) = store.ping() {
                        return SessionEnd::Lost(e);
                    }
                    last_heard = Instant::now();
                }
                continue;
            }
            last_heard = Instant::now();
            // One reload per AOR however often it was notified in the batch.
            let mut aors: Vec<AorKey> = Vec::new();
            let mut seen = HashSet::new();
            for (_, payload) in &batch {
                match registrations::parse_notification(payload) {
                    Some((node, tenant, user)) if node != self.node => {
                        let key = AorKey {
                            tenant: tenant.to_string(),
                            user: user.to_string(),
                        };
                        if seen.insert(key.clone()) {
                            aors.push(key);
                        }
                    }
                    Some(_) => {} // this node's own change
                    None => tracing::warn!(payload, "unreadable binding notification"),
                }
            }
            let read_after = self.seqs.committed.load(Ordering::Acquire);
            for aor in aors {
                let rows = match store.load_aor_registrations(&aor.tenant, &aor.user, now_i64()) {
                    Ok(rows) => rows,
                    Err(e) => return SessionEnd::Lost(e),
                };
                let bindings = rows.iter().filter_map(Binding::from_row).collect();
                let msg = RegistrarMsg::RemoteBindings {
                    aor,
                    bindings,
                    read_after,
                };
                if self.registrar.cast(msg).is_err() {
                    return SessionEnd::Stop;
                }
            }
        }
    }
}

/// Now in Unix milliseconds as the store wants it.
fn now_i64() -> i64 {
    i64::try_from(unix_ms(SystemTime::now())).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{TenantConfig, UserConfig};
    use crate::sip::auth::{authorization_value, ha1, Algorithm, Challenge};
    use crate::sip::message::Method;

    fn registrar(min: u32, max: u32) -> Registrar {
        let config = RegistrarConfig {
            min_expires_secs: min,
            max_expires_secs: max,
            ..RegistrarConfig::default()
        };
        let t = TenantConfig {
            id: "a".into(),
            domain: "a.test".into(),
            realm: None,
            users: vec![UserConfig {
                username: "alice".into(),
                ha1_md5: Some(ha1(Algorithm::Md5, "alice", "a.test", "pw")),
                ha1_sha256: None,
                outbound: None,
            }],
            users_csv: None,
            ..Default::default()
        };
        Registrar {
            auth: Arc::new(Authenticator::new(&config, &[t]).unwrap()),
            config,
            location: Arc::new(Location::new()),
            server: None,
        }
    }

    fn source() -> Source {
        Source {
            protocol: Protocol::Udp,
            remote: "127.0.0.1:5062".parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            conn: None,
        }
    }

    /// Sends a REGISTER through the challenge and returns the final response.
    fn reg(r: &Registrar, cseq: u32, call_id: &str, extra: &[(HeaderName, &str)]) -> Outcome {
        let build = |auth: Option<String>| {
            let mut m = Message::request(Method::Register, "sip:a.test");
            m.push(
                HeaderName::Via,
                "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1",
            );
            m.push(HeaderName::From, "<sip:alice@a.test>;tag=f");
            m.push(HeaderName::To, "<sip:alice@a.test>");
            m.push(HeaderName::CallId, call_id.to_string());
            m.push(HeaderName::CSeq, format!("{cseq} REGISTER"));
            for (n, v) in extra {
                m.push(*n, v.to_string());
            }
            if let Some(a) = auth {
                m.push(HeaderName::Authorization, a);
            }
            m
        };
        let first = r.register(&build(None), &source(), SystemTime::now());
        assert_eq!(first.response.status(), Some(401));
        // Before the user is known both algorithms are offered, SHA-256 first.
        let offered: Vec<Challenge> = first
            .response
            .headers_named(HeaderName::WwwAuthenticate)
            .map(|h| Challenge::parse(&h.value).unwrap())
            .collect();
        assert_eq!(offered.len(), 2);
        assert_eq!(offered[0].algorithm, Algorithm::Sha256);
        let ch = offered[1].clone();
        assert_eq!(ch.algorithm, Algorithm::Md5);
        let h = ha1(Algorithm::Md5, "alice", "a.test", "pw");
        let a = authorization_value(&ch, "alice", &h, "REGISTER", "sip:a.test", 1, "c");
        r.register(&build(Some(a)), &source(), SystemTime::now())
    }

    fn contacts(o: &Outcome) -> Vec<String> {
        o.response
            .values(HeaderName::Contact)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .collect()
    }

    #[test]
    fn register_query_refresh_and_unregister() {
        let r = registrar(60, 3600);
        let o = reg(
            &r,
            1,
            "c1",
            &[
                (
                    HeaderName::Contact,
                    "<sip:alice@10.0.0.1>;q=0.5, <sip:alice@10.0.0.2>",
                ),
                (HeaderName::Expires, "7200"),
            ],
        );
        assert_eq!(o.response.status(), Some(200));
        assert_eq!(o.result, "ok");
        let c = contacts(&o);
        assert_eq!(
            c,
            [
                "<sip:alice@10.0.0.2>;expires=3600",
                "<sip:alice@10.0.0.1>;expires=3600;q=0.5"
            ]
        );
        assert!(o.response.value(HeaderName::Date).is_some());
        assert_eq!(r.location.count("a"), 2);
        // A query lists without changing.
        let q = reg(&r, 2, "c1", &[]);
        assert_eq!((q.result, contacts(&q).len()), ("query", 2));
        // Lower CSeq with the same Call-ID: 500, nothing changes.
        let o = reg(
            &r,
            1,
            "c1",
            &[(HeaderName::Contact, "<sip:alice@10.0.0.1>;expires=0")],
        );
        assert_eq!(o.response.status(), Some(500));
        assert_eq!(r.location.count("a"), 2);
        // Another Call-ID may remove it whatever its CSeq.
        let o = reg(
            &r,
            1,
            "c2",
            &[(HeaderName::Contact, "<sip:alice@10.0.0.1>;expires=0")],
        );
        assert_eq!((o.result, contacts(&o).len()), ("unregistered", 1));
        let o = reg(
            &r,
            3,
            "c1",
            &[(HeaderName::Contact, "*"), (HeaderName::Expires, "0")],
        );
        assert_eq!((o.result, contacts(&o).len()), ("unregistered", 0));
        assert_eq!(r.location.count("a"), 0);
    }

    #[test]
    fn expiry_limits_and_star_rules() {
        let r = registrar(60, 3600);
        let o = reg(
            &r,
            1,
            "c",
            &[(HeaderName::Contact, "<sip:alice@h>;expires=30")],
        );
        assert_eq!(o.response.status(), Some(423));
        assert_eq!(
            o.response.value(HeaderName::MinExpires).unwrap().as_ref(),
            b"60"
        );
        let o = reg(&r, 2, "c", &[(HeaderName::Contact, "*")]);
        assert_eq!(o.response.status(), Some(400), "* without Expires: 0");
        let o = reg(
            &r,
            3,
            "c",
            &[
                (HeaderName::Contact, "*, <sip:alice@h>"),
                (HeaderName::Expires, "0"),
            ],
        );
        assert_eq!(o.response.status(), Some(400));
        let o = reg(&r, 4, "c", &[(HeaderName::Contact, "<sip:alice@h>;q=2")]);
        assert_eq!(o.response.status(), Some(400), "q above 1");
    }

    #[test]
    fn aor_checks() {
        let r = registrar(60, 3600);
        let mut m = Message::request(Method::Register, "sip:other.test");
        m.push(
            HeaderName::Via,
            "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1",
        );
        m.push(HeaderName::From, "<sip:alice@a.test>;tag=f");
        m.push(HeaderName::To, "<sip:alice@a.test>");
        m.push(HeaderName::CallId, "x");
        m.push(HeaderName::CSeq, "1 REGISTER");
        assert_eq!(
            r.register(&m, &source(), SystemTime::now())
                .response
                .status(),
            Some(404)
        );
        m.start = crate::sip::message::StartLine::Request {
            method: Method::Register,
            uri: Bytes::from_static(b"sip:a.test"),
        };
        m.set(HeaderName::To, "<http://alice@a.test>");
        assert_eq!(
            r.register(&m, &source(), SystemTime::now())
                .response
                .status(),
            Some(400)
        );
    }

    #[test]
    fn dates_and_q() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(format_q(500), "0.5");
        assert_eq!(format_q(250), "0.25");
        assert_eq!(format_q(1), "0.001");
        assert_eq!(format_q(0), "0");
        assert_eq!(format_q(1000), "1");
    }

    /// The RFC 4475 torture messages that are REGISTERs, against a registrar for
    /// example.com: the invalid one is refused, the valid ones are challenged and, with
    /// credentials added, bind exactly the contacts the RFC says.
    #[test]
    fn rfc4475_registers() {
        use crate::sip::parse::{Framing, Limits};
        use crate::sip::validate::{screen, Screened};
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/rfc4475");
        let users = ["j.user", "watson", "user", "null-\0-null"];
        let config = RegistrarConfig::default();
        let t = TenantConfig {
            id: "ex".into(),
            domain: "example.com".into(),
            realm: None,
            users: users
                .iter()
                .map(|u| UserConfig {
                    username: u.to_string(),
                    ha1_md5: Some(ha1(Algorithm::Md5, u, "example.com", "pw")),
                    ha1_sha256: None,
                    outbound: None,
                })
                .collect(),
            users_csv: None,
            ..Default::default()
        };
        let r = Registrar {
            auth: Arc::new(Authenticator::new(&config, &[t]).unwrap()),
            config,
            location: Arc::new(Location::new()),
            server: None,
        };
        let load = |name: &str| {
            let bytes = std::fs::read(dir.join(format!("{name}.dat"))).unwrap();
            match screen(Bytes::from(bytes), Framing::Datagram, &Limits::default()) {
                Screened::Pass(m) => m,
                _ => panic!("{name} does not pass screening"),
            }
        };
        let unksm2 = load("unksm2");
        assert_eq!(
            r.register(&unksm2, &source(), SystemTime::now())
                .response
                .status(),
            Some(400),
            "To must be a sip or sips AOR"
        );
        let cases: [(&str, &str, &[&str]); 6] = [
            ("regaut01", "j.user", &[]),
            ("dblreq", "j.user", &["sip:j.user@host.example.com"]),
            ("cparam01", "watson", &["sip:+19725552222@gw1.example.net"]),
            (
                "cparam02",
                "watson",
                &["sip:+19725552222@gw1.example.net;unknownparam"],
            ),
            (
                "regescrt",
                "user",
                &["sip:user@example.com?Route=%3Csip:sip.example.com%3E"],
            ),
            (
                "escnull",
                "null-\0-null",
                &["sip:%00@host5.example.com", "sip:%00%00@host5.example.com"],
            ),
        ];
        for (name, user, bound) in cases {
            let m = load(name);
            let first = r.register(&m, &source(), SystemTime::now());
            assert_eq!(first.response.status(), Some(401), "{name}");
            let ch = first
                .response
                .headers_named(HeaderName::WwwAuthenticate)
                .map(|h| Challenge::parse(&h.value).unwrap())
                .find(|c| c.algorithm == Algorithm::Md5)
                .expect("MD5 offered");
            let h = ha1(ch.algorithm, user, "example.com", "pw");
            let mut authed = m.clone();
            authed.remove(HeaderName::Authorization);
            authed.push(
                HeaderName::Authorization,
                authorization_value(&ch, user, &h, "REGISTER", "sip:example.com", 1, "c"),
            );
            let o = r.register(&authed, &source(), SystemTime::now());
            assert_eq!(o.response.status(), Some(200), "{name}: {}", o.response);
            let got: Vec<Bytes> = r
                .location
                .lookup("ex", user)
                .into_iter()
                .map(|b| b.contact)
                .collect();
            for want in bound {
                assert!(
                    got.iter().any(|c| c.as_ref() == want.as_bytes()),
                    "{name}: {want} not in {got:?}"
                );
            }
        }
    }

    /// Remote binding sets replace the Location's unless a local change is newer than what
    /// the listener read; a snapshot also removes the AORs it lacks, under the same rule.
    #[test]
    fn remote_updates_yield_to_newer_local_changes() {
        let (writer, _rx) = mpsc::channel();
        let mut state = RegistrarState {
            core: registrar(60, 3600),
            transports: Arc::new(OnceLock::new()),
            writer,
            writer_thread: None,
            listener: None,
            seqs: Arc::new(ChangeSeqs::default()),
            local_changes: HashMap::new(),
            tick: None,
            recent: HashMap::new(),
        };
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        state.core.location.observe(Arc::new(move |k: &AorKey, up| {
            log.lock().unwrap().push((k.user.clone(), up))
        }));
        let far = unix_ms(SystemTime::now()) + 600_000;
        let b = |c: &str| Binding {
            contact: Bytes::from(c.to_string()),
            q: 1000,
            expires_at_ms: far,
            source: source(),
            call_id: Bytes::from_static(b"c"),
            cseq: 1,
            user_agent: None,
        };
        let key = |user: &str| AorKey {
            tenant: "a".into(),
            user: user.into(),
        };
        assert!(state.on_remote(key("alice"), vec![b("sip:1")], 0));
        assert_eq!(state.core.location.lookup("a", "alice").len(), 1);
        assert!(
            !state.on_remote(key("alice"), vec![b("sip:1")], 0),
            "same set: no change"
        );
        let unknown = AorKey {
            tenant: "nope".into(),
            user: "x".into(),
        };
        assert!(
            !state.on_remote(unknown, vec![b("sip:9")], 0),
            "unknown tenant"
        );

        // A local change numbered 5: a read made before it was committed does not undo it.
        state
            .local_changes
            .insert(key("alice"), (5, Instant::now()));
        assert!(!state.on_remote(key("alice"), vec![], 4));
        assert!(state.core.location.is_reachable("a", "alice"));
        assert!(
            state.on_remote(key("alice"), vec![], 5),
            "read after the commit"
        );
        assert!(!state.core.location.is_reachable("a", "alice"));

        // Snapshot: bob (changed remotely) goes, carol (changed here later) stays.
        state.core.location.set(key("bob"), vec![b("sip:b")]);
        state.core.location.set(key("carol"), vec![b("sip:c")]);
        state
            .local_changes
            .insert(key("carol"), (9, Instant::now()));
        state.on_remote_snapshot(vec![(key("dave"), vec![b("sip:d")])], 8);
        assert!(!state.core.location.is_reachable("a", "bob"));
        assert!(state.core.location.is_reachable("a", "carol"));
        assert!(state.core.location.is_reachable("a", "dave"));
        let seen = seen.lock().unwrap().clone();
        assert!(seen.contains(&("bob".to_string(), false)), "{seen:?}");
        assert!(seen.contains(&("dave".to_string(), true)), "{seen:?}");
    }

    #[test]
    fn location_sweeps_and_counts() {
        let loc = Location::new();
        let b = |c: &str, q, exp| Binding {
            contact: Bytes::from(c.to_string()),
            q,
            expires_at_ms: exp,
            source: source(),
            call_id: Bytes::from_static(b"c"),
            cseq: 1,
            user_agent: None,
        };
        loc.set(
            AorKey {
                tenant: "t".into(),
                user: "u".into(),
            },
            vec![b("sip:1", 100, 1_000), b("sip:2", 900, 5_000)],
        );
        assert_eq!(loc.count("t"), 2);
        let l = loc.lookup_at("t", "u", 500);
        assert_eq!(l[0].contact.as_ref(), b"sip:2", "highest q first");
        assert_eq!(
            loc.lookup_at("t", "u", 2_000).len(),
            1,
            "expired is never returned"
        );
        assert!(loc.lookup_at("other", "u", 0).is_empty());
        assert_eq!(loc.sweep(2_000), 1);
        assert_eq!(loc.count("t"), 1);
        assert_eq!(loc.sweep(6_000), 1);
        assert_eq!((loc.count("t"), loc.total()), (0, 0));
    }
}
