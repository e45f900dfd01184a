//! Routes, numbers, trunks and tenants' users changed while the switch runs (`PUT
//! /routes/{id}`, `PUT /numbers/{number}`, `PUT /trunks/{id}`, `PUT
//! /tenants/{tenant}/users/{name}`, ...), put in force without a restart.
//!
//! [`SharedConfig`] holds the current routes, numbers, trunks and users (the config file's,
//! with the changes applied over them) and swaps the node's [`LiveTrunks`], the router's
//! [`Routes`] and [`Numbers`] tables and the [`Authenticator`]'s user tables whole on every
//! change; calls in progress keep the route and trunks they started with. A changed trunk
//! keeps its channel count ([`TrunkShared::replacing`]) and its actor restarts with it; a new
//! trunk becomes a singleton of the tree's [`Catalog`] (started at once alone, claimed by one
//! node in a cluster); a deleted one (refused while a route names it) is stopped. A removed user's registrations stay until they expire (at most
//! `registrar.max_expires_secs`), but the user can neither refresh them nor authenticate.
//!
//! - **Alone**, a change is validated, written to the node's SQLite overrides table
//!   (`store::config`) and applied at once; at start the overrides are applied over the file.
//! - **In a cluster**, etcd holds the shared copy: `<prefix>/config/routes/<id>`,
//!   `<prefix>/config/numbers/<number>`, `<prefix>/config/trunks/<id>` and
//!   `<prefix>/config/users/<tenant>/<name>` (JSON). The first node that finds no
//!   `<prefix>/config/seeded` marker seeds etcd from its file (in a transaction, so only one
//!   does); users and trunks have their own markers (`seeded-users`, `seeded-trunks`), so a
//!   cluster seeded before they were shared gets them from the next node to start. A change is written to etcd, and every node, the writer included, applies it from
//!   its watch, so all nodes agree on one order; the API answers once its own node has applied
//!   the write. The task has its own etcd client and reloads everything if the watch fails or
//!   falls behind a compaction.
//!
//! Validation is the config file's own ([`Config::validate`]), run on a configuration made of
//! the current entries plus the changed one, so the API refuses exactly what a file would.
//! A queue of the file may get a new configuration (`PUT /tenants/{tenant}/queues/{id}`,
//! stored under `queues/<tenant>/<id>`, never seeded): every node keeps it for the queue's
//! next start, and the node running the queue restarts its actor, which resumes its callers
//! from its checkpoint. A queue the file lacks may be added the same way: it joins its
//! tenant's queues in the tree's [`Catalog`] (so the tenant's every start includes it), starts
//! at once where the tenant runs, and numbers may lead to it; one added so may be deleted
//! (409 while a number or an overflow names it, or callers wait in it here), which stops it.
//! A tenant the file lacks may be added (`PUT /tenants/{id}`, stored under `tenants/<id>`,
//! never seeded), checked whole like the file (its id, domain and numbers its own); its
//! users and numbers become entries of their own. Every node adds it to the
//! [`Authenticator`] (its domain and users) and to the tree's [`Catalog`] as the singleton
//! `tenant/<id>` with its queues and agents (started at once alone, claimed by one node in a
//! cluster). One added so may be deleted (409 while a number leads to it or callers wait in
//! its queues here): its users and queue changes go with it and its actors stop. Changing a
//! tenant (its domain, agents) and deleting the file's tenants and queues stay
//! file-configured (501). Not live for added tenants: per-tenant API tokens (`api_token` is
//! refused), CSV files (refused), and the periodic queue statistics snapshots (written for
//! the file's queues only); their registrations are not restored at a restart (the
//! registrar loads before the added tenants are known): phones register again.
//!
//! Tenants' API tokens made through the API (`POST /tenants/{tenant}/tokens`) are entries
//! too (`tokens/<tenant>/<id>`, never seeded): a [`TokenRecord`] with the secret's SHA-256,
//! never the secret. Every node swaps them into its [`TokenTable`] (with the file's
//! `api_token`s), so a token made or revoked through one node is in force on every node once
//! the watch brings it; a deleted tenant's tokens go with it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::actors::router::{NumberRoute, Numbers, RouteTable, Routes};
use crate::actors::trunk::{LiveTrunks, TrunkShared, TrunkTable};
use crate::config::{
    AgentConfig, Config, MediaMode, NumberConfig, QueueConfig, RouteConfig, TenantConfig,
    TrunkConfig, UserConfig,
};
use crate::routing::auth::{Authenticator, UserKeys, UserMap};
use crate::routing::trunks::Policy;
use crate::store::config as overrides;
use crate::store::tokens::{TokenRecord, TokenTable};
use crate::supervision::catalog::{tenant_key, trunk_key, Catalog};

/// Counter, labels `kind` (`route`, `number`, `user`, `queue`, `trunk`, `tenant`, `token`) and `source` (`api`: this node's API, alone;
/// `cluster`: the etcd watch; `store`: the saved overrides at start): changes applied.
pub const CONFIG_CHANGES_TOTAL: &str = "switchyard_config_changes_total";
/// Counter, labels `kind` and `reason` (`invalid`, `unauthorized`, `unavailable`,
/// `not_found`, `stale`, `bad_json`, `conflict`, `unsupported`, `in_use`): changes refused or
/// skipped.
pub const CONFIG_REJECTED_TOTAL: &str = "switchyard_config_rejected_total";
/// Gauge: the configuration's generation on this node, bumped per applied change (or
/// reload); nodes that have applied the same changes show the same routes.
pub const CONFIG_GENERATION: &str = "switchyard_config_generation";

/// Describes this module's metrics.
pub fn describe() {
    metrics::describe_counter!(
        CONFIG_CHANGES_TOTAL,
        "Route, number, trunk, user, queue and tenant changes applied, by kind and source (api, cluster, store)"
    );
    metrics::describe_counter!(
        CONFIG_REJECTED_TOTAL,
        "Route, number, trunk, user, queue and tenant changes refused or skipped, by kind and reason"
    );
    metrics::describe_gauge!(
        CONFIG_GENERATION,
        "Configuration generation: bumped for every applied change"
    );
}

/// How long the API waits for its own node to apply a change it wrote to etcd.
const APPLY_WAIT: Duration = Duration::from_secs(3);
/// How often a change is checked again after another node changed the configuration first.
const CONFLICT_RETRIES: usize = 3;
/// etcd's default limit of operations in one transaction (`--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;
/// The most API tokens a tenant may have at once.
pub const MAX_TOKENS_PER_TENANT: usize = 100;

/// What a change is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A route, by id.
    Route,
    /// A number (DID), by the number.
    Number,
    /// A tenant's SIP user, by `<tenant>/<username>` (see [`scoped_id`]).
    User,
    /// A tenant's queue, by `<tenant>/<queue>`: a new configuration for one of the file's,
    /// or a queue the file lacks (added through the API).
    Queue,
    /// A carrier trunk, by id.
    Trunk,
    /// A tenant the config file lacks, added through the API, by id.
    Tenant,
    /// A tenant's API token (its digest, never the secret), by `<tenant>/<id>`.
    Token,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Route,
        Kind::Number,
        Kind::User,
        Kind::Queue,
        Kind::Trunk,
        Kind::Tenant,
        Kind::Token,
    ];

    /// The metric label and the overrides table's `kind`.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Route => "route",
            Kind::Number => "number",
            Kind::User => "user",
            Kind::Queue => "queue",
            Kind::Trunk => "trunk",
            Kind::Tenant => "tenant",
            Kind::Token => "token",
        }
    }

    fn from_label(label: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.label() == label)
    }

    /// The etcd key segment under `<prefix>/config/`.
    fn segment(self) -> &'static str {
        match self {
            Kind::Route => "routes",
            Kind::Number => "numbers",
            Kind::User => "users",
            Kind::Queue => "queues",
            Kind::Trunk => "trunks",
            Kind::Tenant => "tenants",
            Kind::Token => "tokens",
        }
    }

    /// The etcd marker (under `<prefix>/config/`) of the node that seeded this kind. Users
    /// and trunks have their own, so that a cluster seeded before they were shared still
    /// gets them.
    fn marker(self) -> &'static str {
        match self {
            // Queues, tenants and tokens are never seeded: the file's stay the file's, an
            // entry is a change over them or one the file lacks.
            Kind::Route | Kind::Number | Kind::Queue | Kind::Tenant | Kind::Token => "seeded",
            Kind::User => "seeded-users",
            Kind::Trunk => "seeded-trunks",
        }
    }
}

/// The id of a tenant's user or queue `name`: `<tenant>/<name>` (tenant ids have no `/`, so
/// the first one splits).
pub fn scoped_id(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

/// A tenant's queue as changed through the API: `PUT /tenants/{tenant}/queues/{id}` with
/// the `[[tenants.queues]]` fields, which replace the file's (a field left out takes its
/// default, as in the file).
#[derive(Clone, Debug)]
pub struct QueueEntry {
    pub tenant: String,
    pub config: QueueConfig,
    /// The body as given, with its `id`: what is stored and shown.
    pub body: Value,
}

/// A tenant added through the API: `PUT /tenants/{id}` with the `[[tenants]]` fields. Its
/// `users` and `numbers` become user and number entries of their own (changed and deleted
/// through their routes), so the tenant entry keeps neither.
#[derive(Clone, Debug)]
pub struct TenantEntry {
    /// With its queues and agents; no users, numbers or files.
    pub config: TenantConfig,
    /// The body as stored (with its `id`, without `users` and `numbers`).
    pub body: Value,
}

/// A number (DID) as the API reads and writes it: `PUT /numbers/{number}` with
/// `{"tenant": "acme", "target": "queue:sales", "priority": 0}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberEntry {
    /// The number itself (from the path; a body may repeat it).
    #[serde(default)]
    pub number: String,
    /// The tenant whose queue or user it leads to.
    pub tenant: String,
    /// `queue:<id>` or `user:<name>`.
    pub target: String,
    /// Caller priority in the queue (higher first).
    #[serde(default)]
    pub priority: u32,
}

/// A tenant's SIP user as stored: `PUT /tenants/{tenant}/users/{username}` with the
/// `[[tenants.users]]` fields, `{"ha1_md5": "...", "ha1_sha256": "..."}`. Its hashes are
/// never shown by the API ([`UserEntry::view`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// The tenant (from the path; a body may repeat it).
    #[serde(default)]
    pub tenant: String,
    /// The digest username (from the path; a body may repeat it).
    #[serde(default)]
    pub username: String,
    /// `hex(MD5(username:realm:password))`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha1_md5: Option<String>,
    /// `hex(SHA-256(username:realm:password))`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha1_sha256: Option<String>,
    /// The routes the user may dial out through, narrowing its tenant's `outbound`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<Vec<String>>,
}

impl UserEntry {
    /// The user as the API shows it: which algorithms it has a hash for, never the hashes.
    pub fn view(&self) -> Value {
        let mut algorithms = Vec::new();
        if self.ha1_sha256.is_some() {
            algorithms.push("SHA-256");
        }
        if self.ha1_md5.is_some() {
            algorithms.push("MD5");
        }
        let mut v =
            json!({ "tenant": self.tenant, "username": self.username, "algorithms": algorithms });
        if let Some(o) = &self.outbound {
            v["outbound"] = json!(o);
        }
        v
    }

    fn keys(&self) -> UserKeys {
        UserKeys {
            ha1_md5: self.ha1_md5.clone(),
            ha1_sha256: self.ha1_sha256.clone(),
            outbound: self.outbound.clone(),
        }
    }
}

/// Why a change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// The body is not a valid route or number: which field, and why (a 400).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// No such route or number (a 404 on delete).
    #[error("no {0}")]
    NotFound(String),
    /// The change could not be stored (SQLite or etcd): nothing changed (a 503).
    #[error("{0}")]
    Unavailable(String),
    /// Other nodes kept changing the configuration while this change was checked (a 409).
    #[error("the configuration kept changing while this change was checked; try again")]
    Conflict,
    /// What the change asks for is configured in the file only (a 501): why.
    #[error("{0}")]
    Unsupported(String),
    /// The entry is still used by others (a trunk by routes): a 409, with which.
    #[error("{0}")]
    InUse(String),
}

/// What a write did.
enum Written {
    Done,
    /// Another change came first (cluster): etcd is at this revision.
    Stale(i64),
}

impl ChangeError {
    fn invalid(field: &str, message: impl Into<String>) -> ChangeError {
        ChangeError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The `reason` label of [`CONFIG_REJECTED_TOTAL`].
    pub fn label(&self) -> &'static str {
        match self {
            ChangeError::Invalid { .. } => "invalid",
            ChangeError::NotFound(_) => "not_found",
            ChangeError::Unavailable(_) => "unavailable",
            ChangeError::Conflict => "conflict",
            ChangeError::Unsupported(_) => "unsupported",
            ChangeError::InUse(_) => "in_use",
        }
    }
}

/// The routes, numbers and users in force, by id, by number and by [`scoped_id`].
#[derive(Clone, Debug, Default)]
struct Tables {
    routes: BTreeMap<String, RouteConfig>,
    numbers: BTreeMap<String, NumberEntry>,
    users: BTreeMap<String, UserEntry>,
    /// Changed queues only (the others run with the file's configuration).
    queues: BTreeMap<String, QueueEntry>,
    trunks: BTreeMap<String, TrunkConfig>,
    /// Tenants added through the API (the file's are not entries).
    tenants: BTreeMap<String, TenantEntry>,
    /// Tenants' API tokens made through the API, by [`scoped_id`] (the file's `api_token`s
    /// are not entries).
    tokens: BTreeMap<String, TokenRecord>,
}

/// What a queue change needs to be put in force: the tree's queue actors and each tenant's
/// agents (a queue's members come from their memberships).
#[derive(Clone, Debug, Default)]
pub struct LiveQueues {
    pub catalog: Catalog,
    pub agents: HashMap<String, Vec<AgentConfig>>,
}

/// One entry of any kind, parsed and keyed by its id.
#[derive(Clone, Debug)]
enum Entry {
    Route(RouteConfig),
    Number(NumberEntry),
    User(UserEntry),
    Queue(QueueEntry),
    Trunk(TrunkConfig),
    Tenant(TenantEntry),
    Token(TokenRecord),
}

impl Entry {
    /// The JSON kept in SQLite or etcd (parses back into the same entry).
    fn stored(&self, id: &str) -> Value {
        match self {
            Entry::Route(r) => route_json(id, r),
            Entry::Number(n) => serde_json::to_value(n).expect("a number serializes"),
            Entry::User(u) => serde_json::to_value(u).expect("a user serializes"),
            Entry::Queue(q) => q.body.clone(),
            Entry::Trunk(t) => trunk_json(t, true),
            Entry::Tenant(t) => t.body.clone(),
            Entry::Token(r) => serde_json::to_value(r).expect("a token serializes"),
        }
    }

    /// The JSON the API answers with (a user's hashes and a trunk's password left out).
    fn view(&self, id: &str) -> Value {
        match self {
            Entry::User(u) => u.view(),
            Entry::Trunk(t) => trunk_json(t, false),
            Entry::Token(r) => serde_json::to_value(r.view()).expect("a token serializes"),
            other => other.stored(id),
        }
    }
}

impl Tables {
    fn contains(&self, kind: Kind, id: &str) -> bool {
        match kind {
            Kind::Route => self.routes.contains_key(id),
            Kind::Number => self.numbers.contains_key(id),
            Kind::User => self.users.contains_key(id),
            Kind::Queue => self.queues.contains_key(id),
            Kind::Trunk => self.trunks.contains_key(id),
            Kind::Tenant => self.tenants.contains_key(id),
            Kind::Token => self.tokens.contains_key(id),
        }
    }

    /// Removes an entry; whether there was one.
    fn remove(&mut self, kind: Kind, id: &str) -> bool {
        match kind {
            Kind::Route => self.routes.remove(id).is_some(),
            Kind::Number => self.numbers.remove(id).is_some(),
            Kind::User => self.users.remove(id).is_some(),
            Kind::Queue => self.queues.remove(id).is_some(),
            Kind::Trunk => self.trunks.remove(id).is_some(),
            Kind::Tenant => {
                // Its users, queues and tokens go with it (the store and etcd delete theirs
                // too).
                let scope = scoped_id(id, "");
                self.users.retain(|k, _| !k.starts_with(&scope));
                self.queues.retain(|k, _| !k.starts_with(&scope));
                self.tokens.retain(|k, _| !k.starts_with(&scope));
                self.tenants.remove(id).is_some()
            }
            Kind::Token => self.tokens.remove(id).is_some(),
        }
    }

    fn insert(&mut self, id: &str, entry: Entry) {
        let id = id.to_string();
        match entry {
            Entry::Route(r) => {
                self.routes.insert(id, r);
            }
            Entry::Number(n) => {
                self.numbers.insert(id, n);
            }
            Entry::User(u) => {
                self.users.insert(id, u);
            }
            Entry::Queue(q) => {
                self.queues.insert(id, q);
            }
            Entry::Trunk(t) => {
                self.trunks.insert(id, t);
            }
            Entry::Tenant(t) => {
                self.tenants.insert(id, t);
            }
            Entry::Token(r) => {
                self.tokens.insert(id, r);
            }
        }
    }

    /// Every entry with its id and stored JSON.
    fn stored(&self) -> Vec<(Kind, &str, Value)> {
        let routes = self
            .routes
            .iter()
            .map(|(id, r)| (Kind::Route, id.as_str(), route_json(id, r)));
        let numbers = self.numbers.iter().map(|(id, n)| {
            (
                Kind::Number,
                id.as_str(),
                Entry::Number(n.clone()).stored(id),
            )
        });
        let users = self
            .users
            .iter()
            .map(|(id, u)| (Kind::User, id.as_str(), Entry::User(u.clone()).stored(id)));
        let queues = self
            .queues
            .iter()
            .map(|(id, q)| (Kind::Queue, id.as_str(), q.body.clone()));
        let trunks = self
            .trunks
            .iter()
            .map(|(id, t)| (Kind::Trunk, id.as_str(), trunk_json(t, true)));
        let tenants = self
            .tenants
            .iter()
            .map(|(id, t)| (Kind::Tenant, id.as_str(), t.body.clone()));
        let tokens = self
            .tokens
            .iter()
            .map(|(id, r)| (Kind::Token, id.as_str(), Entry::Token(r.clone()).stored(id)));
        // Trunks and tenants first: a node applying these in order (a restart's overrides)
        // finds a route's trunks and a number's or user's tenant already there.
        trunks
            .chain(tenants)
            .chain(routes)
            .chain(numbers)
            .chain(users)
            .chain(queues)
            .chain(tokens)
            .collect()
    }

    /// `tenant`'s users, by name.
    fn users_of<'t>(&'t self, tenant: &str) -> impl Iterator<Item = &'t UserEntry> + 't {
        let start = scoped_id(tenant, "");
        self.users
            .range(start.clone()..)
            .take_while(move |(k, _)| k.starts_with(&start))
            .map(|(_, u)| u)
    }
}

/// Where changes are kept.
enum Backend {
    /// The node's SQLite file (overrides table).
    Sqlite(PathBuf),
    /// etcd, shared by the cluster.
    Etcd(Box<Etcd>),
}

struct Etcd {
    client: Client,
    prefix: String,
    /// The etcd revision this node has applied (the watch task advances it).
    applied: watch::Receiver<i64>,
    /// Dropped with the [`SharedConfig`]: the watch task then ends.
    _stop: watch::Sender<()>,
}

/// The node's live routes, numbers and users: read by the API, changed through it, and put in
/// force in the router and the authenticator by swapping their tables.
pub struct SharedConfig {
    /// The file's tenants without users and agents (numbers are checked against their
    /// queues) and its trunks (routes name them).
    tenants: Vec<TenantConfig>,
    /// The node's trunks in force (swapped on a trunk change; calls and the router read it).
    trunk_table: Arc<LiveTrunks>,
    /// Cluster mode: a trunk's limits are shared between the nodes (a new trunk takes no
    /// channel before this node's part is known).
    cluster: bool,
    routes: Arc<Routes>,
    numbers: Arc<Numbers>,
    /// The registrar's and call routing's users.
    auth: Arc<Authenticator>,
    /// Where queue changes are put in force (the tree's queue actors).
    queues: LiveQueues,
    /// One queue or trunk actor change at a time (a restart reads the latest spec).
    restarting: Arc<tokio::sync::Mutex<()>>,
    tables: Mutex<Tables>,
    generation: AtomicU64,
    backend: Backend,
    /// One change at a time through this node (validation sees the previous one's result).
    writing: tokio::sync::Mutex<()>,
    /// The tenants' API tokens in force (the file's and the entries'), read by the API.
    tokens: Arc<TokenTable>,
    /// The file's media section: the prompts a call flow changed here may name.
    media: crate::config::MediaConfig,
}

impl std::fmt::Debug for SharedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedConfig")
            .field("generation", &self.generation())
            .finish()
    }
}

impl SharedConfig {
    /// Starts with the file's routes and numbers in `config`, whose tables the router reads
    /// (`routes`, `numbers`), the users `auth` loaded from it (CSV files included), and its
    /// queues as `queues` runs them.
    /// Alone: the saved overrides are applied over them. In a cluster: etcd is seeded (first
    /// node) or read, the router and `auth` get etcd's entries, and a task follows the
    /// changes. Fails when the overrides or etcd cannot be read.
    pub async fn start(
        config: &Config,
        routes: Arc<Routes>,
        numbers: Arc<Numbers>,
        trunk_table: Arc<LiveTrunks>,
        auth: Arc<Authenticator>,
        queues: LiveQueues,
    ) -> Result<Arc<SharedConfig>, String> {
        let file = file_tables(config, &auth);
        let tenants = bare_tenants(config);
        let tokens = Arc::new(TokenTable::new());
        for t in &config.tenants {
            if let Some(secret) = &t.api_token {
                tokens.add_file(&t.id, secret);
            }
        }
        let make = |backend| SharedConfig {
            tenants,
            trunk_table,
            cluster: config.cluster.is_some(),
            routes,
            numbers,
            auth,
            queues,
            restarting: Arc::default(),
            tables: Mutex::new(Tables::default()),
            generation: AtomicU64::new(0),
            backend,
            writing: tokio::sync::Mutex::new(()),
            tokens,
            media: config.media.clone(),
        };
        match &config.cluster {
            None => {
                let path = config.data_dir.join("switchyard.db");
                let shared = Arc::new(make(Backend::Sqlite(path.clone())));
                let saved = tokio::task::spawn_blocking(move || {
                    overrides::open(&path).and_then(|c| overrides::load(&c))
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("configuration overrides: {e}"))?;
                let saved = trunks_first(saved);
                let mut tables = file;
                for o in &saved {
                    match shared.apply_override(&mut tables, o) {
                        Ok(()) => {
                            metrics::counter!(CONFIG_CHANGES_TOTAL, "kind" => o.kind.clone(), "source" => "store").increment(1);
                        }
                        Err(e) => {
                            // The file changed under it (a trunk or queue removed): the file wins.
                            metrics::counter!(CONFIG_REJECTED_TOTAL, "kind" => o.kind.clone(), "reason" => "stale").increment(1);
                            tracing::warn!(kind = %o.kind, id = %o.id, error = %e, "saved configuration change no longer valid; skipped");
                        }
                    }
                }
                if !saved.is_empty() {
                    tracing::info!(overrides = saved.len(), "configuration changes restored");
                }
                shared.install(tables);
                Ok(shared)
            }
            Some(c) => {
                let mut client = super::etcd_connect(c).await?;
                let prefix = format!("{}/config/", c.etcd.prefix);
                seed(&mut client, &prefix, &file, &c.name).await?;
                let (tables, revision) = read_all(&mut client, &prefix).await?;
                let (applied_tx, applied) = watch::channel(revision);
                let (stop, stopped) = watch::channel(());
                let shared = Arc::new(make(Backend::Etcd(Box::new(Etcd {
                    client: client.clone(),
                    prefix: prefix.clone(),
                    applied,
                    _stop: stop,
                }))));
                shared.install(tables);
                tokio::spawn(follow(
                    Arc::downgrade(&shared),
                    client,
                    prefix,
                    revision,
                    applied_tx,
                    stopped,
                ));
                Ok(shared)
            }
        }
    }

    /// The generation in force (bumped per applied change).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Every route, by id, as the API shows it.
    pub fn routes(&self) -> Vec<Value> {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        t.routes.iter().map(|(id, r)| route_json(id, r)).collect()
    }

    /// Every trunk as the API shows it (its carrier password left out).
    pub fn trunks(&self) -> Vec<Value> {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        t.trunks.values().map(|c| trunk_json(c, false)).collect()
    }

    /// Every number as the API shows it.
    pub fn numbers(&self) -> Vec<NumberEntry> {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        t.numbers.values().cloned().collect()
    }

    /// `tenant`'s users as the API shows them (no hashes); None if there is no such tenant.
    pub fn users(&self, tenant: &str) -> Option<Vec<Value>> {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if !self.has_tenant(&t, tenant) {
            return None;
        }
        Some(t.users_of(tenant).map(UserEntry::view).collect())
    }

    /// Every tenant added through the API, as stored (the file's are not listed).
    pub fn added_tenants(&self) -> Vec<Value> {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        t.tenants
            .values()
            .map(|e| without_secrets(e.body.clone()))
            .collect()
    }

    /// The tenants' API tokens in force: the file's `api_token`s and those made through
    /// the API, swapped on every change.
    pub fn tokens(&self) -> Arc<TokenTable> {
        Arc::clone(&self.tokens)
    }

    /// Token `id` of `tenant` as stored (made through the API); None if there is none.
    pub fn token(&self, tenant: &str, id: &str) -> Option<TokenRecord> {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        t.tokens.get(&scoped_id(tenant, id)).cloned()
    }

    /// Whether `tenant` is in force (the file's or added through the API).
    pub fn tenant_exists(&self, tenant: &str) -> bool {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        self.has_tenant(&t, tenant)
    }

    /// Whether `tenant` is in force in `t` (the file's or added through the API).
    fn has_tenant(&self, t: &Tables, tenant: &str) -> bool {
        self.tenants.iter().any(|x| x.id == tenant) || t.tenants.contains_key(tenant)
    }

    /// Creates or replaces the entry `id` of `kind` from a JSON body with the config file's
    /// fields (a user's id: [`scoped_id`]). Returns whether it was created, and the entry as the
    /// API shows it (a route or number as stored; a user without its hashes).
    pub async fn put(
        &self,
        kind: Kind,
        id: &str,
        body: Value,
    ) -> Result<(bool, Value), ChangeError> {
        let result = self.put_inner(kind, id, body).await;
        count_rejected(kind, &result);
        result
    }

    /// Replaces the entry `id` of `kind` from a JSON body, only while it exists: a 404
    /// (`NotFound`) if it does not, also when it is removed (through any node) while this
    /// change is checked. Returns the entry as the API shows it.
    pub async fn replace(&self, kind: Kind, id: &str, body: Value) -> Result<Value, ChangeError> {
        let result = async {
            let entry = parse_entry(kind, id, body)?;
            let stored = entry.stored(id);
            self.change(kind, id, Some(&stored), |t| {
                if !t.contains(kind, id) {
                    return Err(ChangeError::NotFound(format!("{} {id:?}", kind.label())));
                }
                self.check(t, id, &entry)?;
                Ok(true)
            })
            .await?;
            Ok(entry.view(id))
        }
        .await;
        count_rejected(kind, &result);
        result
    }

    async fn put_inner(
        &self,
        kind: Kind,
        id: &str,
        body: Value,
    ) -> Result<(bool, Value), ChangeError> {
        if kind == Kind::Tenant {
            return self.put_tenant(id, body).await;
        }
        self.put_entry(kind, id, body).await
    }

    async fn put_entry(
        &self,
        kind: Kind,
        id: &str,
        body: Value,
    ) -> Result<(bool, Value), ChangeError> {
        let entry = parse_entry(kind, id, body)?;
        let stored = entry.stored(id);
        let existed = self
            .change(kind, id, Some(&stored), |t| {
                self.check(t, id, &entry)?;
                // A queue changed for the first time is the file's: replaced, not created.
                Ok(t.contains(kind, id) || self.is_file_queue(t, kind, id))
            })
            .await?;
        Ok((!existed, entry.view(id)))
    }

    /// A new tenant: checked whole (with its users and numbers) like the file, stored
    /// without them, then each of its users and numbers stored as an entry of its own.
    /// A tenant that exists (the file's or one added before) is not changed here (501): its
    /// users, queues and numbers have their own routes.
    async fn put_tenant(&self, id: &str, body: Value) -> Result<(bool, Value), ChangeError> {
        if self.has_tenant(&self.snapshot(), id) {
            return Err(tenant_exists(id)); // whatever the body (checked again below)
        }
        let full: TenantConfig = parse_fields(with_id(body.clone(), id)?)?;
        let entry = parse_entry(Kind::Tenant, id, body)?;
        let stored = entry.stored(id);
        self.change(Kind::Tenant, id, Some(&stored), |t| {
            if self.has_tenant(t, id) {
                return Err(tenant_exists(id));
            }
            self.check_tenant(t, &full)?;
            Ok(false)
        })
        .await?;
        for u in &full.users {
            let mut user = json!({ "ha1_md5": u.ha1_md5, "ha1_sha256": u.ha1_sha256 });
            if let Some(o) = &u.outbound {
                user["outbound"] = json!(o);
            }
            self.put_entry(Kind::User, &scoped_id(id, &u.username), user)
                .await?;
        }
        for n in &full.numbers {
            let number = json!({ "tenant": id, "target": n.target, "priority": n.priority });
            self.put_entry(Kind::Number, &n.number, number).await?;
        }
        let mut view = without_secrets(stored);
        view["users"] = json!(full.users.iter().map(|u| &u.username).collect::<Vec<_>>());
        view["numbers"] = json!(full.numbers.iter().map(|n| &n.number).collect::<Vec<_>>());
        Ok((true, view))
    }

    /// The file's validation of a new tenant (with its users and numbers) among the tenants
    /// and numbers in force: its id, domain and numbers must be its own.
    fn check_tenant(&self, t: &Tables, full: &TenantConfig) -> Result<(), ChangeError> {
        let mut c = Config {
            tenants: self.tenants_with(t),
            media: self.media.clone(),
            ..with_routes(t)
        };
        for n in t.numbers.values() {
            if let Some(x) = c.tenants.iter_mut().find(|x| x.id == n.tenant) {
                x.numbers.push(number_config(n));
            }
        }
        let ti = c.tenants.len();
        c.tenants.push(full.clone());
        first_error(c.validate(), &format!("tenants[{ti}]"))
    }

    /// Whether tenant `id` may be deleted from `t`: only one added through the API, and
    /// only once no number leads to it (numbers are deleted first, so no new call arrives).
    fn check_tenant_delete(&self, t: &Tables, id: &str) -> Result<(), ChangeError> {
        if self.tenants.iter().any(|x| x.id == id) {
            return Err(ChangeError::Unsupported(format!(
                "tenant {id:?} is in the config file: remove it there and restart the node"
            )));
        }
        if !t.tenants.contains_key(id) {
            return Err(ChangeError::NotFound(format!("tenant {id:?}")));
        }
        let numbers: Vec<&str> = t
            .numbers
            .values()
            .filter(|n| n.tenant == id)
            .map(|n| n.number.as_str())
            .collect();
        if !numbers.is_empty() {
            return Err(ChangeError::InUse(format!(
                "numbers {numbers:?} lead to tenant {id:?}: delete them first"
            )));
        }
        Ok(())
    }

    /// The tenants (`<id>`) and users (`<tenant>/<name>`) whose `outbound` names route
    /// `route`, sorted.
    fn outbound_naming(&self, t: &Tables, route: &str) -> Vec<String> {
        let names = |l: &[String]| l.iter().any(|r| r == route);
        let tenants = self
            .all_tenants(t)
            .into_iter()
            .filter(|x| names(&x.outbound))
            .map(|x| x.id);
        let users = t
            .users
            .iter()
            .filter(|(_, u)| u.outbound.as_deref().is_some_and(names))
            .map(|(k, _)| k.clone());
        let mut named: Vec<String> = tenants.chain(users).collect();
        named.sort();
        named
    }

    /// Whether `id` is a queue of its tenant's own configuration (`kind` Queue): the config
    /// file's, or the body of a tenant added through the API.
    fn is_file_queue(&self, t: &Tables, kind: Kind, id: &str) -> bool {
        kind == Kind::Queue
            && id
                .split_once('/')
                .is_some_and(|(tenant, queue)| self.in_file(t, tenant, queue))
    }

    /// Removes the entry `id` of `kind` (a file entry too; of queues, only those added
    /// through the API, and not while callers wait in it on this node).
    pub async fn delete(&self, kind: Kind, id: &str) -> Result<(), ChangeError> {
        let result = self.delete_inner(kind, id).await;
        count_rejected(kind, &result);
        result
    }

    async fn delete_inner(&self, kind: Kind, id: &str) -> Result<(), ChangeError> {
        if kind == Kind::Tenant {
            self.check_tenant_delete(&self.snapshot(), id)?;
            // Its callers would be lost with its queues (the node running it knows).
            for queue in self.queues.catalog.queues_of(id) {
                if let Some(waiting @ 1..) = self.queues.catalog.queue_waiting(id, &queue).await {
                    return Err(ChangeError::InUse(format!(
                        "{waiting} callers wait in queue {queue:?} of tenant {id:?}: try again once they are served"
                    )));
                }
            }
        }
        if kind == Kind::Queue {
            // Refusals that need no queue actor first (a file queue, one named elsewhere).
            self.check_queue_delete(&self.snapshot(), id)?;
            let (tenant, queue) = split_id(id)?;
            // Its callers would be lost with its actor: refused until they are served (the
            // node running the tenant knows; another node's API cannot tell).
            if let Some(waiting @ 1..) = self.queues.catalog.queue_waiting(tenant, queue).await {
                return Err(ChangeError::InUse(format!(
                    "{waiting} callers wait in queue {queue:?}: try again once they are served"
                )));
            }
        }
        self.change(kind, id, None, |t| {
            if kind == Kind::Tenant {
                self.check_tenant_delete(t, id)?;
                return Ok(true);
            }
            if kind == Kind::Queue {
                self.check_queue_delete(t, id)?;
                return Ok(true);
            }
            if !t.contains(kind, id) {
                return Err(ChangeError::NotFound(format!("{} {id:?}", kind.label())));
            }
            if kind == Kind::Route {
                let named = self.outbound_naming(t, id);
                if !named.is_empty() {
                    return Err(ChangeError::InUse(format!(
                        "route {id:?} is in the outbound permissions of {named:?}: change them first"
                    )));
                }
            }
            if kind == Kind::Trunk {
                let users: Vec<&str> = t
                    .routes
                    .iter()
                    .filter(|(_, r)| r.trunks.iter().any(|x| x == id))
                    .map(|(rid, _)| rid.as_str())
                    .collect();
                if !users.is_empty() {
                    return Err(ChangeError::InUse(format!(
                        "trunk {id:?} is used by routes {users:?}: change or delete them first"
                    )));
                }
            }
            Ok(true)
        })
        .await
        .map(|_| ())
    }

    /// Checks a change against the tables in force (`check` says whether the entry exists)
    /// and writes it (None: a deletion). In a cluster the write only succeeds if nothing under
    /// `<prefix>/config/` changed since the revision the check saw; otherwise this node
    /// catches up and checks again, so two nodes cannot both accept changes that clash.
    async fn change(
        &self,
        kind: Kind,
        id: &str,
        value: Option<&Value>,
        check: impl Fn(&Tables) -> Result<bool, ChangeError>,
    ) -> Result<bool, ChangeError> {
        let _one = self.writing.lock().await;
        for _ in 0..CONFLICT_RETRIES {
            // Read before the tables: tables newer than `seen` only make the write's
            // comparison fail (and the check run again), never pass on an older view.
            let seen = self.seen_revision();
            let existed = check(&self.tables.lock().unwrap_or_else(|e| e.into_inner()))?;
            match self.write(kind, id, value, seen).await? {
                Written::Done => return Ok(existed),
                Written::Stale(revision) => {
                    self.catch_up(revision).await;
                }
            }
        }
        Err(ChangeError::Conflict)
    }

    /// The etcd revision this node's tables reflect (0 alone).
    fn seen_revision(&self) -> i64 {
        match &self.backend {
            Backend::Sqlite(_) => 0,
            Backend::Etcd(e) => *e.applied.borrow(),
        }
    }

    /// Waits (bounded) until this node has applied etcd's changes up to `revision`; whether
    /// it did.
    async fn catch_up(&self, revision: i64) -> bool {
        let Backend::Etcd(e) = &self.backend else {
            return true;
        };
        let mut applied = e.applied.clone();
        let waited = tokio::time::timeout(APPLY_WAIT, applied.wait_for(|r| *r >= revision)).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Stores a change (None: a deletion) and puts it in force: alone, after it is durable
    /// in SQLite; in a cluster, once the watch has brought it back from etcd. `seen`: the
    /// revision the change was checked at (cluster).
    async fn write(
        &self,
        kind: Kind,
        id: &str,
        value: Option<&Value>,
        seen: i64,
    ) -> Result<Written, ChangeError> {
        match &self.backend {
            Backend::Sqlite(path) => {
                let o = overrides::Override {
                    kind: kind.label().to_string(),
                    id: id.to_string(),
                    json: value.map_or_else(String::new, Value::to_string),
                    deleted: value.is_none(),
                };
                let path = path.clone();
                let mut saved = vec![o.clone()];
                if kind == Kind::Tenant && value.is_none() {
                    // Its users and queues go with it, here and after a restart.
                    saved.extend(self.scoped_ids(id).into_iter().map(|(k, sub)| {
                        overrides::Override {
                            kind: k.label().to_string(),
                            id: sub,
                            json: String::new(),
                            deleted: true,
                        }
                    }));
                }
                tokio::task::spawn_blocking(move || {
                    let c = overrides::open(&path)?;
                    saved.iter().try_for_each(|o| overrides::save(&c, o))
                })
                .await
                .map_err(|e| ChangeError::Unavailable(e.to_string()))?
                .map_err(|e| ChangeError::Unavailable(format!("saving the change: {e}")))?;
                let mut tables = self.snapshot();
                // Checked under the writing lock just before: this cannot fail now.
                self.apply_override(&mut tables, &o)?;
                metrics::counter!(CONFIG_CHANGES_TOTAL, "kind" => kind.label(), "source" => "api")
                    .increment(1);
                self.install(tables);
                Ok(Written::Done)
            }
            Backend::Etcd(e) => {
                let key = format!("{}{}/{id}", e.prefix, kind.segment());
                let mut ops = vec![match value {
                    Some(v) => TxnOp::put(key, v.to_string(), None),
                    None => TxnOp::delete(key, None),
                }];
                if kind == Kind::Tenant && value.is_none() {
                    // Its users, queues and tokens go with it.
                    for k in [Kind::User, Kind::Queue, Kind::Token] {
                        let scope = format!("{}{}/{}", e.prefix, k.segment(), scoped_id(id, ""));
                        ops.push(TxnOp::delete(
                            scope,
                            Some(etcd_client::DeleteOptions::new().with_prefix()),
                        ));
                    }
                }
                let unchanged = Compare::mod_revision(e.prefix.as_str(), CompareOp::Less, seen + 1)
                    .with_prefix();
                let resp = e
                    .client
                    .clone()
                    .txn(Txn::new().when([unchanged]).and_then(ops))
                    .await
                    .map_err(|err| ChangeError::Unavailable(format!("etcd: {err}")))?;
                let revision = resp.header().map_or(0, |h| h.revision());
                if !resp.succeeded() {
                    return Ok(Written::Stale(revision));
                }
                // Answer once this node routes with it, so a call right after the answer
                // sees the change here too.
                if !self.catch_up(revision).await {
                    tracing::warn!(
                        revision,
                        "configuration change stored in etcd but not yet applied here"
                    );
                }
                Ok(Written::Done)
            }
        }
    }

    /// The users, queues and tokens entries of tenant `id`, by kind and id.
    fn scoped_ids(&self, id: &str) -> Vec<(Kind, String)> {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let scope = scoped_id(id, "");
        let users = t.users.keys().filter(|k| k.starts_with(&scope));
        let queues = t.queues.keys().filter(|k| k.starts_with(&scope));
        let tokens = t.tokens.keys().filter(|k| k.starts_with(&scope));
        users
            .map(|k| (Kind::User, k.clone()))
            .chain(queues.map(|k| (Kind::Queue, k.clone())))
            .chain(tokens.map(|k| (Kind::Token, k.clone())))
            .collect()
    }

    fn snapshot(&self) -> Tables {
        self.tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Applies one saved override to `tables` if it is still valid.
    fn apply_override(
        &self,
        tables: &mut Tables,
        o: &overrides::Override,
    ) -> Result<(), ChangeError> {
        let Some(kind) = Kind::from_label(&o.kind) else {
            return Err(ChangeError::invalid("kind", format!("{:?}", o.kind)));
        };
        if o.deleted {
            tables.remove(kind, &o.id);
            return Ok(());
        }
        let v = serde_json::from_str::<Value>(&o.json)
            .map_err(|e| ChangeError::invalid("json", e.to_string()))?;
        let entry = parse_entry(kind, &o.id, v)?;
        self.check(tables, &o.id, &entry)?;
        tables.insert(&o.id, entry);
        Ok(())
    }

    /// The file's validation of `entry` as entry `id` among the current ones.
    fn check(&self, t: &Tables, id: &str, entry: &Entry) -> Result<(), ChangeError> {
        match entry {
            Entry::Route(r) => self.check_route(t, id, r),
            Entry::Number(n) => self.check_number(t, n),
            Entry::User(u) => self.check_user(t, u),
            Entry::Queue(q) => self.check_queue(t, q),
            Entry::Trunk(c) => check_trunk(t, id, c),
            // A restart's or the cluster's copy of a tenant checked when it was put: only
            // its id must be free (the file may have got it since).
            Entry::Tenant(e) => match self.tenants.iter().any(|x| x.id == e.config.id) {
                true => Err(ChangeError::Unsupported(format!(
                    "tenant {id:?} is in the config file now"
                ))),
                false => Ok(()),
            },
            Entry::Token(r) => self.check_token(t, id, r),
        }
    }

    /// A token entry must belong to a tenant in force, and a tenant has at most
    /// [`MAX_TOKENS_PER_TENANT`] (bounding what a leaked node token can fill etcd with).
    fn check_token(&self, t: &Tables, id: &str, r: &TokenRecord) -> Result<(), ChangeError> {
        if let Err((field, message)) = r.check() {
            return Err(ChangeError::invalid(field, message));
        }
        if !self.has_tenant(t, &r.tenant) {
            return Err(ChangeError::NotFound(format!("tenant {:?}", r.tenant)));
        }
        let scope = scoped_id(&r.tenant, "");
        let others = t
            .tokens
            .keys()
            .filter(|k| k.starts_with(&scope) && k.as_str() != id)
            .count();
        if others >= MAX_TOKENS_PER_TENANT {
            return Err(ChangeError::InUse(format!(
                "tenant {:?} has {others} tokens, the most it may have: revoke one first",
                r.tenant
            )));
        }
        Ok(())
    }

    /// The file's tenants with their queues in force in `t`: the file's (changed ones
    /// replaced) and, after them, those added through the API (by id).
    fn tenants_with(&self, t: &Tables) -> Vec<TenantConfig> {
        let mut tenants = self.all_tenants(t);
        for q in t.queues.values() {
            let Some(tenant) = tenants.iter_mut().find(|x| x.id == q.tenant) else {
                continue;
            };
            match tenant.queues.iter_mut().find(|x| x.id == q.config.id) {
                Some(x) => *x = q.config.clone(),
                None => tenant.queues.push(q.config.clone()),
            }
        }
        tenants
    }

    /// The file's tenants and, after them, those added through the API (by id), bare (see
    /// [`bare_tenants`]) with their own queues.
    fn all_tenants(&self, t: &Tables) -> Vec<TenantConfig> {
        let added = t.tenants.values().map(|e| TenantConfig {
            agents: Vec::new(),
            ..e.config.clone()
        });
        self.tenants.iter().cloned().chain(added).collect()
    }

    /// Whether `tenant`'s queue `queue` is one of its own configuration's: the config
    /// file's, or the body's of a tenant added through the API.
    fn in_file(&self, t: &Tables, tenant: &str, queue: &str) -> bool {
        self.all_tenants(t)
            .iter()
            .any(|x| x.id == tenant && x.queues.iter().any(|q| q.id == queue))
    }

    /// The file's validation of a queue (new, or a new configuration) in its tenant, with
    /// the current numbers (an overflow may name one) and the tenant's other queues.
    fn check_queue(&self, t: &Tables, q: &QueueEntry) -> Result<(), ChangeError> {
        let tenants = self.tenants_with(t);
        let Some(ti) = tenants.iter().position(|x| x.id == q.tenant) else {
            return Err(ChangeError::NotFound(format!("tenant {:?}", q.tenant)));
        };
        let mut c = Config {
            tenants,
            media: self.media.clone(),
            ..with_routes(t)
        };
        let tenant = &mut c.tenants[ti];
        tenant.numbers = self.numbers_of(t, &q.tenant);
        let qi = match tenant.queues.iter().position(|x| x.id == q.config.id) {
            Some(qi) => qi,
            None => {
                tenant.queues.push(q.config.clone());
                tenant.queues.len() - 1
            }
        };
        tenant.queues[qi] = q.config.clone();
        first_error(c.validate(), &format!("tenants[{ti}].queues[{qi}]"))
    }

    /// Whether queue `id` (`<tenant>/<queue>`) may be deleted from `t`: only one added
    /// through the API (the file's are removed in the file), and only once no number and no
    /// other queue's overflow names it (the file's validation without it).
    fn check_queue_delete(&self, t: &Tables, id: &str) -> Result<(), ChangeError> {
        let (tenant, queue) = split_id(id)?;
        if self.in_file(t, tenant, queue) {
            return Err(ChangeError::Unsupported(format!(
                "queue {queue:?} of tenant {tenant:?} is in the config file: remove it there and restart the node"
            )));
        }
        if !t.queues.contains_key(id) {
            return Err(ChangeError::NotFound(format!("queue {id:?}")));
        }
        let tenants = self.tenants_with(t);
        let Some(ti) = tenants.iter().position(|x| x.id == tenant) else {
            return Err(ChangeError::NotFound(format!("tenant {tenant:?}")));
        };
        let mut c = Config {
            tenants,
            media: self.media.clone(),
            ..with_routes(t)
        };
        c.tenants[ti].numbers = self.numbers_of(t, tenant);
        c.tenants[ti].queues.retain(|q| q.id != queue);
        match first_error(c.validate(), &format!("tenants[{ti}]")) {
            Ok(()) => Ok(()),
            Err(e) => Err(ChangeError::InUse(format!(
                "queue {queue:?} is still named ({e}): change or delete that first"
            ))),
        }
    }

    /// `tenant`'s current numbers as the file writes them.
    fn numbers_of(&self, t: &Tables, tenant: &str) -> Vec<NumberConfig> {
        t.numbers
            .values()
            .filter(|n| n.tenant == tenant)
            .map(number_config)
            .collect()
    }

    /// A queue as `tables` configure it (changed, added, or the file's), ready to start;
    /// None if `tables` have no such queue.
    fn queue_spec(
        &self,
        t: &Tables,
        tenant: &str,
        queue: &str,
    ) -> Option<crate::actors::queue::QueueSpec> {
        let all = self.all_tenants(t);
        let bare = all.iter().find(|x| x.id == tenant)?;
        let config = match t.queues.get(&scoped_id(tenant, queue)) {
            Some(e) => e.config.clone(),
            None => bare.queues.iter().find(|q| q.id == queue)?.clone(),
        };
        let one = TenantConfig {
            queues: vec![config],
            numbers: self.numbers_of(t, tenant),
            ..bare.clone()
        };
        let agents = match self.queues.agents.get(tenant) {
            Some(a) => a.as_slice(),
            None => t
                .tenants
                .get(tenant)
                .map_or(&[][..], |e| e.config.agents.as_slice()),
        };
        crate::actors::queue::plan(&one, agents).pop()
    }

    /// Puts the queues whose configuration differs between `old` and `new` (all changed
    /// or added ones on the `first` install) in force: their specs at once, their actors
    /// restarted in the background (one at a time), resuming their callers from their
    /// checkpoints. A queue added through the API joins its tenant's queues (started here if
    /// the tenant runs here); a deleted one leaves them and its actor is stopped.
    fn install_queues(&self, old: &Tables, new: &Tables, first: bool) {
        let mut ids: Vec<&String> = new.queues.keys().chain(old.queues.keys()).collect();
        ids.sort();
        ids.dedup();
        let catalog = &self.queues.catalog;
        let (mut restart, mut start, mut stop) = (Vec::new(), Vec::new(), Vec::new());
        for id in ids {
            let body = |t: &Tables| t.queues.get(id).map(|q| q.body.clone());
            if !first && body(old) == body(new) {
                continue;
            }
            let Some((tenant, queue)) = id.split_once('/') else {
                continue;
            };
            let pair = (tenant.to_string(), queue.to_string());
            match self.queue_spec(new, tenant, queue) {
                Some(spec) if catalog.has_queue(tenant, queue) => {
                    if catalog.set_queue(tenant, spec) {
                        restart.push(pair);
                    }
                }
                Some(spec) => {
                    if catalog.add_queue(tenant, spec) {
                        tracing::info!(tenant, queue, "queue added");
                        start.push(pair);
                    }
                }
                None => {
                    if catalog.remove_queue(tenant, queue) {
                        tracing::info!(tenant, queue, "queue removed");
                        stop.push(pair);
                    }
                }
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if restart.is_empty() && start.is_empty() && stop.is_empty() {
            return;
        }
        let (catalog, one) = (catalog.clone(), self.restarting.clone());
        runtime.spawn(async move {
            let _one = one.lock().await;
            for (tenant, queue) in stop {
                if let Err(e) = catalog.stop_queue(&tenant, &queue).await {
                    tracing::warn!(tenant, queue, error = %e, "removed queue's actor would not stop");
                }
            }
            for (tenant, queue) in restart {
                match catalog.restart_queue(&tenant, &queue).await {
                    Ok(true) => tracing::info!(tenant, queue, "queue restarted with its new configuration"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(tenant, queue, error = %e, "queue restart for a configuration change failed"),
                }
            }
            for (tenant, queue) in start {
                if let Err(e) = catalog.start_queue(&tenant, &queue).await {
                    tracing::warn!(tenant, queue, error = %e, "new queue's actor would not start");
                }
            }
        });
    }

    /// Puts the tenants added to or removed from `old` in `new` in force: an added one joins
    /// the authenticator (its domain and users) and the tree's [`Catalog`] with its queues and
    /// agents (started at once alone, claimed by one node in a cluster); a removed one leaves
    /// both and its actors are stopped (in a cluster its owner then releases its keys).
    fn install_tenants(&self, old: &Tables, new: &Tables) {
        let catalog = &self.queues.catalog;
        let (mut start, mut stop) = (Vec::new(), Vec::new());
        for id in old
            .tenants
            .keys()
            .filter(|id| !new.tenants.contains_key(*id))
        {
            self.auth.remove_tenant(id);
            if let Some(queues) = catalog.remove_tenant(id) {
                tracing::info!(tenant = %id, "tenant removed");
                stop.push((id.clone(), queues));
            }
        }
        let all = self.tenants_with(new);
        for (id, e) in new
            .tenants
            .iter()
            .filter(|(id, _)| !old.tenants.contains_key(*id))
        {
            let users: UserMap = new
                .users_of(id)
                .map(|u| (u.username.clone(), u.keys()))
                .collect();
            let count = users.len();
            if !self.auth.add_tenant(&e.config, users) {
                tracing::warn!(tenant = %id, "added tenant's id or domain already known to the authenticator");
            }
            let Some(bare) = all.iter().find(|x| &x.id == id) else {
                continue;
            };
            let config = TenantConfig {
                agents: e.config.agents.clone(),
                numbers: self.numbers_of(new, id),
                ..bare.clone()
            };
            let spec = crate::supervision::catalog::TenantSpec {
                queues: crate::actors::queue::plan(&config, &config.agents),
                agents: config.agents.clone(),
                users: count,
                config,
            };
            if catalog.add_tenant(&spec) {
                tracing::info!(tenant = %id, "tenant added");
                start.push(id.clone());
            } else {
                tracing::warn!(tenant = %id, "tenant added without actors (no tree)");
            }
        }
        if start.is_empty() && stop.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Alone, every tenant runs here; in a cluster the membership claims new ones.
        if self.cluster {
            start.clear();
        }
        let (catalog, one) = (catalog.clone(), self.restarting.clone());
        runtime.spawn(async move {
            let _one = one.lock().await;
            for (id, queues) in stop {
                if let Err(e) = catalog.stop_tenant(&id, &queues).await {
                    tracing::warn!(tenant = %id, error = %e, "removed tenant's actors would not stop");
                }
            }
            for id in start {
                if let Err(e) = catalog.start(&tenant_key(&id)).await {
                    tracing::warn!(tenant = %id, error = %e, "new tenant's actors would not start");
                }
            }
        });
    }

    /// Puts the trunks of `new` in force: an unchanged trunk keeps its [`TrunkShared`] (its
    /// channels, health and route groups), a changed one is replaced keeping its channel count
    /// ([`TrunkShared::replacing`]) and its actor restarts with it, a new one becomes a
    /// singleton (started at once alone, claimed by one node in a cluster), a removed one is
    /// stopped (and its key released by its owner). Returns the table now in force.
    fn install_trunks(&self, new: &Tables) -> Arc<TrunkTable> {
        let old = self.trunk_table.current();
        let plan = plan_trunks(&old, &new.trunks, self.cluster);
        if plan.added.is_empty() && plan.changed.is_empty() && plan.removed.is_empty() {
            return old;
        }
        self.trunk_table.replace(plan.table);
        let catalog = &self.queues.catalog;
        // The catalog changes now, in the order of the changes; only the actors' starts and
        // stops wait for the task below (which takes them in the same order).
        for id in &plan.removed {
            catalog.remove(&trunk_key(id));
        }
        for id in &plan.added {
            if !catalog.add_trunk(id) {
                tracing::warn!(trunk = %id, "trunk added without an actor (no tree)");
            }
        }
        for id in plan.added.iter().chain(&plan.changed).chain(&plan.removed) {
            tracing::info!(trunk = %id, "trunk configuration changed");
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (catalog, one) = (catalog.clone(), self.restarting.clone());
            // Alone, every trunk runs here; in a cluster the membership claims new ones.
            let start = if self.cluster { Vec::new() } else { plan.added };
            let (changed, removed) = (plan.changed, plan.removed);
            runtime.spawn(async move {
                let _one = one.lock().await;
                for id in removed {
                    if let Err(e) = catalog.stop(&trunk_key(&id)).await {
                        tracing::warn!(trunk = %id, error = %e, "removed trunk's actor would not stop");
                    }
                }
                for id in changed {
                    if let Err(e) = catalog.restart(&trunk_key(&id)).await {
                        tracing::warn!(trunk = %id, error = %e, "changed trunk's actor would not restart");
                    }
                }
                for id in start {
                    if let Err(e) = catalog.start(&trunk_key(&id)).await {
                        tracing::warn!(trunk = %id, error = %e, "new trunk's actor would not start");
                    }
                }
            });
        }
        self.trunk_table.current()
    }

    /// The file's validation of a user as its tenant's only one (its name is unique by its
    /// id): the hashes' forms.
    fn check_user(&self, t: &Tables, u: &UserEntry) -> Result<(), ChangeError> {
        let tenants = self.all_tenants(t);
        let Some(ti) = tenants.iter().position(|x| x.id == u.tenant) else {
            return Err(ChangeError::NotFound(format!("tenant {:?}", u.tenant)));
        };
        // With the routes in force: the user's `outbound` must name them.
        let mut c = Config {
            tenants,
            ..with_routes(t)
        };
        c.tenants[ti].users = vec![UserConfig {
            username: u.username.clone(),
            ha1_md5: u.ha1_md5.clone(),
            ha1_sha256: u.ha1_sha256.clone(),
            outbound: u.outbound.clone(),
        }];
        first_error(c.validate(), &format!("tenants[{ti}].users[0]"))
    }

    /// The file's validation of route `id` as `route`, among the other current routes.
    fn check_route(&self, t: &Tables, id: &str, route: &RouteConfig) -> Result<(), ChangeError> {
        let mut c = Config {
            trunks: t.trunks.values().cloned().collect(),
            ..Config::default()
        };
        c.routes = t
            .routes
            .iter()
            .filter(|(k, _)| k.as_str() != id)
            .map(|(_, r)| r.clone())
            .collect();
        // Last, so that a clash (a prefix already routed) is reported on this route.
        let index = c.routes.len();
        let mut route = route.clone();
        route.id = Some(id.to_string());
        c.routes.push(route);
        first_error(c.validate(), &format!("routes[{index}]"))
    }

    /// The file's validation of a number among the current ones and its tenant's queues.
    fn check_number(&self, t: &Tables, n: &NumberEntry) -> Result<(), ChangeError> {
        let tenants = self.tenants_with(t);
        let Some(ti) = tenants.iter().position(|x| x.id == n.tenant) else {
            return Err(ChangeError::invalid(
                "tenant",
                format!("no tenant {:?}", n.tenant),
            ));
        };
        let mut c = Config {
            tenants,
            media: self.media.clone(),
            ..with_routes(t)
        };
        for other in t.numbers.values().filter(|o| o.number != n.number) {
            if let Some(x) = c.tenants.iter_mut().find(|x| x.id == other.tenant) {
                x.numbers.push(number_config(other));
            }
        }
        let numbers = &mut c.tenants[ti].numbers;
        let index = numbers.len();
        numbers.push(number_config(n));
        // The number's old entry was left out above, so it cannot clash with itself; a clash
        // with another number is impossible (one entry per number), so what remains is this
        // entry's own fault (characters, target).
        first_error(c.validate(), &format!("tenants[{ti}].numbers[{index}]"))
    }

    /// Puts `tables` in force: the trunk table and the router's tables are rebuilt and
    /// swapped.
    fn install(&self, tables: Tables) {
        let trunks = self.install_trunks(&tables);
        let routes: Vec<RouteConfig> = tables.routes.values().cloned().collect();
        let previous = self.routes.current();
        let table = RouteTable::rebuilt(&routes, &trunks, &previous);
        self.routes.replace(table);
        let mut numbers = HashMap::with_capacity(tables.numbers.len());
        let tenants = self.tenants_with(&tables);
        for n in tables.numbers.values() {
            let route = tenants
                .iter()
                .find(|t| t.id == n.tenant)
                .and_then(|t| NumberRoute::from_config(t, &n.target, n.priority));
            if let Some(route) = route {
                numbers.insert(n.number.clone(), route);
            }
        }
        self.numbers.replace(numbers);
        let mut current = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let first = self.generation() == 0;
        self.install_tenants(&current, &tables);
        let ids = self
            .tenants
            .iter()
            .map(|t| &t.id)
            .chain(tables.tenants.keys());
        for tenant in ids {
            // Only a tenant whose users changed gets a new table (tenants of 20,000 agents
            // are not rebuilt for a route change).
            if first || !tables.users_of(tenant).eq(current.users_of(tenant)) {
                let users: UserMap = tables
                    .users_of(tenant)
                    .map(|u| (u.username.clone(), u.keys()))
                    .collect();
                self.auth.set_users(tenant, users);
            }
        }
        self.install_queues(&current, &tables, first);
        if first || tables.tokens != current.tokens {
            self.tokens.set_api(tables.tokens.values());
        }
        *current = tables;
        drop(current);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(CONFIG_GENERATION).set(generation as f64);
    }
}

/// Why `PUT /tenants/{id}` of an existing tenant changes nothing.
fn tenant_exists(id: &str) -> ChangeError {
    ChangeError::Unsupported(format!(
        "tenant {id:?} exists: change its users, queues and numbers through their routes"
    ))
}

/// Saved overrides in the order they are applied at start: trunks first (each override is
/// its entry's final state, so only validation sees the order, and a route checks that its
/// trunks are there), the rest in the order they were made.
fn trunks_first(mut saved: Vec<overrides::Override>) -> Vec<overrides::Override> {
    // Then tenants: a number, user or queue of a tenant added through the API finds it.
    saved.sort_by_key(|o| match Kind::from_label(&o.kind) {
        Some(Kind::Trunk) => 0,
        Some(Kind::Tenant) => 1,
        _ => 2,
    });
    saved
}

fn count_rejected<T>(kind: Kind, result: &Result<T, ChangeError>) {
    if let Err(e) = result {
        metrics::counter!(CONFIG_REJECTED_TOTAL, "kind" => kind.label(), "reason" => e.label())
            .increment(1);
    }
}

/// The first validation error placed under `place` (`routes[3]`), as the field it names.
fn first_error(
    result: Result<(), Vec<crate::config::ConfigError>>,
    place: &str,
) -> Result<(), ChangeError> {
    let Err(errors) = result else { return Ok(()) };
    match errors.iter().find(|e| e.place.starts_with(place)) {
        Some(e) => {
            let field = e.place[place.len()..].trim_start_matches('.');
            let field = if field.is_empty() { "body" } else { field };
            Err(ChangeError::invalid(field, e.message.clone()))
        }
        // Errors elsewhere were there before this change (the file's own); not this one's.
        None => Ok(()),
    }
}

/// The file's tenants with only what numbers are checked against (id, domain, queues,
/// recording): no users or agents (their CSV files are not read again per change), no numbers
/// (the current ones are added per check).
fn bare_tenants(config: &Config) -> Vec<TenantConfig> {
    config
        .tenants
        .iter()
        .map(|t| TenantConfig {
            users: Vec::new(),
            users_csv: None,
            agents: Vec::new(),
            agents_csv: None,
            numbers: Vec::new(),
            api_token: None,
            ..t.clone()
        })
        .collect()
}

fn number_config(n: &NumberEntry) -> NumberConfig {
    NumberConfig {
        number: n.number.clone(),
        target: n.target.clone(),
        priority: n.priority,
    }
}

/// The file's routes by id, numbers by number, and the users `auth` loaded (the file's and
/// its CSV files') by [`scoped_id`].
fn file_tables(config: &Config, auth: &Authenticator) -> Tables {
    let mut t = Tables::default();
    for trunk in &config.trunks {
        t.trunks.insert(trunk.id.clone(), trunk.clone());
    }
    for r in &config.routes {
        let mut r = r.clone();
        let id = r.key().to_string();
        r.id = Some(id.clone());
        t.routes.insert(id, r);
    }
    for tenant in &config.tenants {
        for n in &tenant.numbers {
            t.numbers.insert(
                n.number.clone(),
                NumberEntry {
                    number: n.number.clone(),
                    tenant: tenant.id.clone(),
                    target: n.target.clone(),
                    priority: n.priority,
                },
            );
        }
        let users = auth
            .tenant(&tenant.id)
            .map(|u| u.users())
            .unwrap_or_default();
        for (name, keys) in users.iter() {
            t.users.insert(
                scoped_id(&tenant.id, name),
                UserEntry {
                    tenant: tenant.id.clone(),
                    username: name.clone(),
                    ha1_md5: keys.ha1_md5.clone(),
                    ha1_sha256: keys.ha1_sha256.clone(),
                    outbound: keys.outbound.clone(),
                },
            );
        }
    }
    t
}

/// A route as the API shows and stores it: every field, defaults included, in the forms the
/// config file takes (so the JSON parses back into the same route).
pub fn route_json(id: &str, r: &RouteConfig) -> Value {
    let policy = match r.policy {
        Policy::Weighted { asr, quality, cost } => {
            json!({ "weighted": { "asr": asr, "quality": quality, "cost": cost } })
        }
        p => json!(p.label()),
    };
    json!({
        "id": id,
        "prefix": r.prefix,
        "target": r.target,
        "trunks": r.trunks,
        "policy": policy,
        "max_attempts": r.max_attempts,
        "strip": r.strip,
        "prepend": r.prepend,
        "media": match r.media { MediaMode::Pass => "pass", MediaMode::Anchor => "anchor" },
        "record": r.record,
        "from_trunks": r.from_trunks,
    })
}

/// An empty configuration with the routes and trunks in force in `t` (a tenant's or user's
/// `outbound` is checked against the routes).
/// A stored tenant as the API shows it: its webhook secret is never echoed.
fn without_secrets(mut v: Value) -> Value {
    if let Some(s) = v.get_mut("webhook_secret") {
        if !s.is_null() {
            *s = json!("(set)");
        }
    }
    v
}

fn with_routes(t: &Tables) -> Config {
    Config {
        routes: t.routes.values().cloned().collect(),
        trunks: t.trunks.values().cloned().collect(),
        ..Config::default()
    }
}

/// A trunk as the API stores (`secrets`: with its carrier password) or shows it: every
/// field, defaults included, in the forms the config file takes (so the JSON parses back
/// into the same trunk).
pub fn trunk_json(t: &TrunkConfig, secrets: bool) -> Value {
    let costs: Vec<Value> = t
        .costs
        .iter()
        .map(|c| {
            json!({
                "prefix": c.prefix,
                "per_minute": c.per_minute,
                "increment_secs": c.increment_secs,
                "min_secs": c.min_secs,
            })
        })
        .collect();
    let mut v = json!({
        "id": t.id,
        "gateways": t.gateways,
        "max_channels": t.max_channels,
        "max_cps": t.max_cps,
        "priority": t.priority,
        "weight": t.weight,
        "invite_timeout_ms": t.invite_timeout_ms,
        "probe_interval_secs": t.probe_interval_secs,
        "down_hold_secs": t.down_hold_secs,
        "down_after_failed_probes": t.down_after_failed_probes,
        "down_after_failed_calls": t.down_after_failed_calls,
        "up_after_good_probes": t.up_after_good_probes,
        "strip": t.strip,
        "prefix": t.prefix,
        "costs": costs,
        "auth_username": t.auth_username,
        "caller_id": t.caller_id,
        "media": match t.media { MediaMode::Pass => "pass", MediaMode::Anchor => "anchor" },
    });
    if secrets {
        v["auth_password"] = json!(t.auth_password);
    } else {
        v["auth_password_set"] = json!(t.auth_password.is_some());
    }
    v
}

/// The file's validation of trunk `id` as `trunk` among the current trunks and routes (a
/// route naming a trunk must find it).
fn check_trunk(t: &Tables, id: &str, trunk: &TrunkConfig) -> Result<(), ChangeError> {
    let mut c = Config {
        routes: t.routes.values().cloned().collect(),
        ..Config::default()
    };
    c.trunks = t
        .trunks
        .iter()
        .filter(|(k, _)| k.as_str() != id)
        .map(|(_, x)| x.clone())
        .collect();
    let index = c.trunks.len();
    c.trunks.push(trunk.clone());
    first_error(c.validate(), &format!("trunks[{index}]"))
}

/// How the node's trunk table changes.
struct TrunkPlan {
    table: TrunkTable,
    added: Vec<String>,
    changed: Vec<String>,
    removed: Vec<String>,
}

/// The trunk table for `configs` after `old`: an unchanged trunk (the same stored JSON) keeps
/// its [`TrunkShared`], a changed one replaces it keeping its channel count, a new one starts
/// with no part of its limits in a `cluster` (the membership shares them).
fn plan_trunks(
    old: &TrunkTable,
    configs: &BTreeMap<String, TrunkConfig>,
    cluster: bool,
) -> TrunkPlan {
    let mut plan = TrunkPlan {
        table: TrunkTable::with_capacity(configs.len()),
        added: Vec::new(),
        changed: Vec::new(),
        removed: Vec::new(),
    };
    for (id, c) in configs {
        let shared = match old.get(id.as_str()) {
            Some(o) if trunk_json(&o.config, true) == trunk_json(c, true) => o.clone(),
            Some(o) => {
                plan.changed.push(id.clone());
                Arc::new(TrunkShared::replacing(c.clone(), o, cluster))
            }
            None => {
                plan.added.push(id.clone());
                let t = TrunkShared::new(c.clone());
                if cluster {
                    t.set_caps(0, 0);
                }
                Arc::new(t)
            }
        };
        plan.table.insert(shared.id.clone(), shared);
    }
    let mut removed: Vec<String> = old
        .keys()
        .filter(|id| !configs.contains_key(id.as_ref()))
        .map(|id| id.to_string())
        .collect();
    removed.sort();
    plan.removed = removed;
    plan
}

/// A route from a JSON body with [`RouteConfig`]'s fields; a type error or unknown field
/// names the field it is in.
pub fn parse_route(body: Value) -> Result<RouteConfig, ChangeError> {
    parse_fields(body)
}

/// A number from a JSON body `{tenant, target, priority}` (and optionally `number`).
pub fn parse_number(body: Value) -> Result<NumberEntry, ChangeError> {
    parse_fields(body)
}

/// An entry of `kind` from a JSON body; the body may repeat the id's parts (`id`, `number`,
/// `tenant` and `username`), which must then be the path's.
fn parse_entry(kind: Kind, id: &str, body: Value) -> Result<Entry, ChangeError> {
    let differs = |field: &str, given: &str, path: &str| {
        Err(ChangeError::invalid(
            field,
            format!("{given:?} differs from the path's {path:?}"),
        ))
    };
    match kind {
        Kind::Route => {
            let mut route = parse_route(body)?;
            if let Some(given) = route.id.as_deref().filter(|g| *g != id) {
                return differs("id", given, id);
            }
            route.id = Some(id.to_string());
            Ok(Entry::Route(route))
        }
        Kind::Number => {
            let mut n = parse_number(body)?;
            if !n.number.is_empty() && n.number != id {
                return differs("number", &n.number, id);
            }
            n.number = id.to_string();
            Ok(Entry::Number(n))
        }
        Kind::User => {
            let (tenant, username) = split_id(id)?;
            let mut u: UserEntry = parse_fields(body)?;
            if !u.tenant.is_empty() && u.tenant != tenant {
                return differs("tenant", &u.tenant, tenant);
            }
            if !u.username.is_empty() && u.username != username {
                return differs("username", &u.username, username);
            }
            u.tenant = tenant.to_string();
            u.username = username.to_string();
            Ok(Entry::User(u))
        }
        Kind::Queue => {
            let (tenant, queue) = split_id(id)?;
            let body = with_id(body, queue)?;
            let config: QueueConfig = parse_fields(body.clone())?;
            Ok(Entry::Queue(QueueEntry {
                tenant: tenant.to_string(),
                config,
                body,
            }))
        }
        Kind::Tenant => {
            let mut body = with_id(body, id)?;
            let Value::Object(map) = &mut body else {
                return Err(ChangeError::invalid("body", "a JSON object is expected"));
            };
            // Read at start only, or used at start only: refused rather than ignored.
            for field in ["users_csv", "agents_csv", "api_token"] {
                if map.get(field).is_some_and(|v| !v.is_null()) {
                    return Err(ChangeError::invalid(
                        field,
                        "only in the config file (a tenant added through the API has its users put through the API and its tokens made with POST /tenants/{id}/tokens)",
                    ));
                }
            }
            // Kept as entries of their own (see [`TenantEntry`]).
            map.remove("users");
            map.remove("numbers");
            let config: TenantConfig = parse_fields(body.clone())?;
            Ok(Entry::Tenant(TenantEntry { config, body }))
        }
        Kind::Token => {
            let (tenant, token) = split_id(id)?;
            let mut r: TokenRecord = parse_fields(body)?;
            if !r.tenant.is_empty() && r.tenant != tenant {
                return differs("tenant", &r.tenant, tenant);
            }
            if !r.id.is_empty() && r.id != token {
                return differs("id", &r.id, token);
            }
            r.tenant = tenant.to_string();
            r.id = token.to_string();
            Ok(Entry::Token(r))
        }
        Kind::Trunk => {
            let mut body = with_id(body, id)?;
            // What `GET /trunks` shows instead of the password: ignored, so that a shown
            // trunk can be sent back (with its `auth_password` added if it has one).
            if let Value::Object(map) = &mut body {
                map.remove("auth_password_set");
            }
            Ok(Entry::Trunk(parse_fields(body)?))
        }
    }
}

/// `body` with its `id` member set to the path's `id` (a body may repeat it, the same).
fn with_id(body: Value, id: &str) -> Result<Value, ChangeError> {
    let Value::Object(mut map) = body else {
        return Err(ChangeError::invalid("body", "a JSON object is expected"));
    };
    match map.get("id") {
        Some(Value::String(given)) if given != id => {
            return Err(ChangeError::invalid(
                "id",
                format!("{given:?} differs from the path's {id:?}"),
            ))
        }
        Some(Value::String(_)) | None => {}
        Some(_) => return Err(ChangeError::invalid("id", "a string is expected")),
    }
    map.insert("id".into(), json!(id));
    Ok(Value::Object(map))
}

/// `<tenant>/<name>` split at its first `/`.
fn split_id(id: &str) -> Result<(&str, &str), ChangeError> {
    id.split_once('/')
        .ok_or_else(|| ChangeError::invalid("id", format!("{id:?} is not tenant/name")))
}

/// Deserializes an object; on failure, finds the field at fault by trying each field of the
/// body alone (serde_json names the line and column, not the field).
fn parse_fields<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, ChangeError> {
    let Value::Object(map) = &body else {
        return Err(ChangeError::invalid("body", "a JSON object is expected"));
    };
    match serde_json::from_value::<T>(body.clone()) {
        Ok(v) => Ok(v),
        Err(whole) => {
            for (k, v) in map {
                let alone = Value::Object([(k.clone(), v.clone())].into_iter().collect());
                if let Err(e) = serde_json::from_value::<T>(alone) {
                    // Alone it may only lack the required fields; that is not this field's fault.
                    if !e.to_string().starts_with("missing field") {
                        return Err(ChangeError::invalid(k, e.to_string()));
                    }
                }
            }
            let text = whole.to_string();
            let field = text
                .strip_prefix("missing field `")
                .and_then(|r| r.split('`').next())
                .unwrap_or("body")
                .to_string();
            Err(ChangeError::Invalid {
                field,
                message: text,
            })
        }
    }
}

/// Seeds `<prefix>` from the file, each kind unless some node did so before (its marker,
/// [`Kind::marker`]).
async fn seed(client: &mut Client, prefix: &str, file: &Tables, node: &str) -> Result<(), String> {
    for (marker, entries) in seed_groups(prefix, file) {
        let count = entries.len();
        let ops = entries
            .into_iter()
            .map(|(key, value)| TxnOp::put(key, value, None))
            .collect();
        if seed_once(client, &marker, ops, node).await? {
            tracing::info!(
                marker,
                entries = count,
                "shared configuration seeded from this node's file"
            );
        }
    }
    Ok(())
}

/// The file's entries as etcd keys and values, under each marker that guards their seeding
/// (each marker once).
fn seed_groups(prefix: &str, file: &Tables) -> Vec<(String, Vec<(String, String)>)> {
    let entries = file.stored();
    let mut markers: Vec<&str> = Kind::ALL.iter().map(|k| k.marker()).collect();
    markers.sort_unstable();
    markers.dedup();
    markers
        .into_iter()
        .map(|marker| {
            let kvs = entries
                .iter()
                .filter(|(kind, _, _)| kind.marker() == marker)
                .map(|(kind, id, v)| (format!("{prefix}{}/{id}", kind.segment()), v.to_string()))
                .collect();
            (format!("{prefix}{marker}"), kvs)
        })
        .collect()
}

/// Writes `ops` unless `marker` exists, in transactions of at most etcd's operation limit,
/// the first of which claims the marker. Whether this node did.
async fn seed_once(
    client: &mut Client,
    marker: &str,
    ops: Vec<TxnOp>,
    node: &str,
) -> Result<bool, String> {
    let mut rest = ops.into_iter();
    let mut first: Vec<TxnOp> = rest.by_ref().take(MAX_TXN_OPS - 1).collect();
    first.push(TxnOp::put(marker, node.to_string(), None));
    let txn = Txn::new()
        .when([Compare::create_revision(marker, CompareOp::Equal, 0)])
        .and_then(first);
    let resp = client
        .txn(txn)
        .await
        .map_err(|e| format!("etcd seed: {e}"))?;
    if !resp.succeeded() {
        return Ok(false); // another node seeded (or is seeding) these entries
    }
    let rest: Vec<TxnOp> = rest.collect();
    for chunk in rest.chunks(MAX_TXN_OPS) {
        client
            .txn(Txn::new().and_then(chunk.to_vec()))
            .await
            .map_err(|e| format!("etcd seed: {e}"))?;
    }
    Ok(true)
}

/// Which entry a key under `<prefix>` is.
fn classify<'k>(prefix: &str, key: &'k str) -> Option<(Kind, &'k str)> {
    let rest = key.strip_prefix(prefix)?;
    Kind::ALL.into_iter().find_map(|kind| {
        let id = rest.strip_prefix(kind.segment())?.strip_prefix('/')?;
        Some((kind, id))
    })
}

/// Sets one entry from its etcd value; false (and counted) if the value does not parse.
fn set_entry(t: &mut Tables, kind: Kind, id: &str, value: &str) -> bool {
    let parsed = serde_json::from_str::<Value>(value)
        .map_err(|e| ChangeError::invalid("json", e.to_string()))
        .and_then(|v| parse_entry(kind, id, v))
        .map(|entry| t.insert(id, entry));
    if let Err(e) = parsed {
        metrics::counter!(CONFIG_REJECTED_TOTAL, "kind" => kind.label(), "reason" => "bad_json")
            .increment(1);
        tracing::warn!(kind = kind.label(), id, error = %e, "shared configuration entry skipped");
        return false;
    }
    true
}

/// Every entry under `prefix`, and the revision they were read at.
async fn read_all(client: &mut Client, prefix: &str) -> Result<(Tables, i64), String> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| format!("etcd get: {e}"))?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut t = Tables::default();
    for kv in resp.kvs() {
        if let (Ok(k), Ok(v)) = (kv.key_str(), kv.value_str()) {
            if let Some((kind, id)) = classify(prefix, k) {
                set_entry(&mut t, kind, id, v);
            }
        }
    }
    Ok((t, revision))
}

/// The watch task: applies etcd's changes from `revision` on; on a failed or compacted
/// watch, reads everything again and watches from there. Ends when the [`SharedConfig`] goes.
async fn follow(
    shared: Weak<SharedConfig>,
    mut client: Client,
    prefix: String,
    mut revision: i64,
    applied: watch::Sender<i64>,
    mut stop: watch::Receiver<()>,
) {
    let mut stream: Option<etcd_client::WatchStream> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        if stream.is_none() {
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1);
            match client.watch(prefix.as_str(), Some(opts)).await {
                Ok(s) => {
                    stream = Some(s);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "shared configuration watch failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        let msg = tokio::select! {
            m = stream.as_mut().expect("set above").message() => m,
            _ = stop.changed() => return,
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match msg {
            Ok(Some(resp)) if resp.compact_revision() > 0 || resp.canceled() => {
                // Too far behind (compacted) or cancelled: read everything again.
                stream = None;
                reload(&shared, &mut client, &prefix, &mut revision, &applied).await;
            }
            Ok(Some(resp)) => {
                let events = resp.events();
                if !events.is_empty() {
                    let mut tables = shared.snapshot();
                    for ev in events {
                        let Some(kv) = ev.kv() else { continue };
                        let Ok(key) = kv.key_str() else { continue };
                        let Some((kind, id)) = classify(&prefix, key) else {
                            continue;
                        };
                        let changed = match ev.event_type() {
                            EventType::Put => {
                                set_entry(&mut tables, kind, id, kv.value_str().unwrap_or(""))
                            }
                            EventType::Delete => tables.remove(kind, id),
                        };
                        if changed {
                            metrics::counter!(CONFIG_CHANGES_TOTAL, "kind" => kind.label(), "source" => "cluster").increment(1);
                        }
                    }
                    shared.install(tables);
                }
                if let Some(h) = resp.header() {
                    revision = revision.max(h.revision());
                }
                let _ = applied.send(revision);
            }
            Ok(None) | Err(_) => {
                tracing::warn!("shared configuration watch ended; reloading");
                stream = None;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                reload(&shared, &mut client, &prefix, &mut revision, &applied).await;
            }
        }
    }
}

/// Reads everything again and puts it in force (after a failed or compacted watch).
async fn reload(
    shared: &SharedConfig,
    client: &mut Client,
    prefix: &str,
    revision: &mut i64,
    applied: &watch::Sender<i64>,
) {
    match read_all(client, prefix).await {
        Ok((tables, r)) => {
            shared.install(tables);
            *revision = r;
            let _ = applied.send(r);
        }
        Err(e) => tracing::warn!(error = %e, "shared configuration reload failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::trunks::FailoverCause;

    fn route(body: Value) -> Result<RouteConfig, ChangeError> {
        parse_route(body)
    }

    #[test]
    fn route_json_round_trips() {
        let r = route(json!({
            "prefix": "44",
            "trunks": ["a", "b"],
            "policy": { "weighted": { "asr": 0.5, "quality": 0.3, "cost": 0.2 } },
            "strip": 2,
            "media": "anchor",
        }))
        .unwrap();
        let v = route_json("uk", &r);
        assert_eq!(v["id"], "uk");
        assert_eq!(v["max_attempts"], 3, "defaults are shown");
        let back = route(v.clone()).unwrap();
        assert_eq!(route_json("uk", &back), v);
        assert_eq!(back.policy, r.policy);
        assert_eq!(back.media, MediaMode::Anchor);
    }

    #[test]
    fn bad_fields_are_named() {
        let e = route(json!({"prefix": "1", "strip": "two"})).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "strip"),
            "{e:?}"
        );
        let e = route(json!({"prefix": "1", "colour": "red"})).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "colour"),
            "{e:?}"
        );
        let e = route(json!(["not", "an", "object"])).unwrap_err();
        assert!(matches!(&e, ChangeError::Invalid { field, .. } if field == "body"));
        let e = parse_number(json!({"target": "queue:q"})).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "tenant"),
            "{e:?}"
        );
        let n = parse_number(json!({"tenant": "t", "target": "queue:q"})).unwrap();
        assert_eq!(n.priority, 0);
    }

    fn shared(config: &Config) -> SharedConfig {
        let auth = Arc::new(Authenticator::new(&config.registrar, &config.tenants).unwrap());
        let trunks = crate::actors::trunk::trunk_table(&config.trunks);
        SharedConfig {
            tenants: bare_tenants(config),
            trunk_table: Arc::new(LiveTrunks::new(trunks)),
            cluster: false,
            routes: Arc::new(Routes::new(&[], &TrunkTable::new())),
            numbers: Arc::new(Numbers::default()),
            tables: Mutex::new(file_tables(config, &auth)),
            auth,
            queues: LiveQueues::default(),
            restarting: Arc::default(),
            generation: AtomicU64::new(0),
            backend: Backend::Sqlite(PathBuf::new()),
            writing: tokio::sync::Mutex::new(()),
            tokens: Arc::default(),
            media: config.media.clone(),
        }
    }

    fn config() -> Config {
        Config::from_toml(
            r#"
            [[routes]]
            prefix = "1"
            target = "sip:127.0.0.1:5070"
            [[routes]]
            prefix = ""
            target = "sip:127.0.0.1:5071"
            [[tenants]]
            id = "acme"
            domain = "acme.test"
            [[tenants.queues]]
            id = "sales"
            [[tenants.numbers]]
            number = "100"
            target = "queue:sales"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn routes_are_validated_like_the_file() {
        let c = config();
        let s = shared(&c);
        let t = s.snapshot();
        assert_eq!(
            t.routes.keys().collect::<Vec<_>>(),
            ["1", "default"],
            "file routes get their prefix (or `default`) as id"
        );
        let ok = route(json!({"prefix": "44", "target": "sip:127.0.0.1:5080"})).unwrap();
        assert!(s.check_route(&t, "44", &ok).is_ok());
        // Replacing a route by its id may keep its prefix.
        let same = route(json!({"prefix": "1", "target": "sip:127.0.0.1:5081"})).unwrap();
        assert!(s.check_route(&t, "1", &same).is_ok());
        // Another id with a routed prefix is refused on the prefix.
        let e = s.check_route(&t, "other", &same).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "prefix"),
            "{e:?}"
        );
        let bad = route(json!({"prefix": "44", "target": "tel:+44"})).unwrap();
        let e = s.check_route(&t, "44", &bad).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "target"),
            "{e:?}"
        );
        let unknown = route(json!({"prefix": "44", "trunks": ["nope"]})).unwrap();
        let e = s.check_route(&t, "44", &unknown).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "trunks"),
            "{e:?}"
        );
    }

    #[test]
    fn numbers_are_validated_against_their_tenant() {
        let c = config();
        let s = shared(&c);
        let t = s.snapshot();
        let n = |tenant: &str, target: &str| NumberEntry {
            number: "200".into(),
            tenant: tenant.into(),
            target: target.into(),
            priority: 1,
        };
        assert!(s.check_number(&t, &n("acme", "queue:sales")).is_ok());
        assert!(s.check_number(&t, &n("acme", "user:bob")).is_ok());
        let e = s.check_number(&t, &n("acme", "queue:nope")).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "target"),
            "{e:?}"
        );
        let e = s.check_number(&t, &n("other", "queue:sales")).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "tenant"),
            "{e:?}"
        );
        let spaced = NumberEntry {
            number: "20 0".into(),
            ..n("acme", "queue:sales")
        };
        let e = s.check_number(&t, &spaced).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "number"),
            "{e:?}"
        );
        // The file's own number may be replaced (it does not clash with itself).
        let again = NumberEntry {
            number: "100".into(),
            ..n("acme", "user:bob")
        };
        assert!(s.check_number(&t, &again).is_ok());
        let e = s.check_number(&t, &n("acme", "status:486")).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "target"),
            "{e:?}"
        );
    }

    #[test]
    fn install_swaps_the_routers_tables() {
        let c = config();
        let s = shared(&c);
        let mut t = s.snapshot();
        t.routes.insert(
            "44".into(),
            route(json!({"prefix": "44", "target": "sip:127.0.0.1:5080"})).unwrap(),
        );
        s.install(t);
        assert_eq!(s.generation(), 1);
        let r = s.routes.lookup(b"4411").expect("new route in force");
        assert_eq!(r.target.addr.port(), 5080);
        assert_eq!(s.routes.lookup(b"999").unwrap().target.addr.port(), 5071);
        let n = s.numbers.get("100").expect("file number in force");
        assert_eq!(&*n.tenant, "acme");
        let mut t = s.snapshot();
        t.routes.remove("44");
        t.numbers.remove("100");
        s.install(t);
        assert_eq!(s.routes.lookup(b"4411").unwrap().target.addr.port(), 5071);
        assert!(s.numbers.get("100").is_none());
        assert_eq!(s.generation(), 2);
    }

    #[test]
    fn an_unchanged_trunk_group_keeps_its_state_across_a_change() {
        let c = Config::from_toml(
            r#"
            [[trunks]]
            id = "a"
            gateways = ["sip:127.0.0.1:5090"]
            [[trunks]]
            id = "b"
            gateways = ["sip:127.0.0.1:5091"]
            [[routes]]
            prefix = "1"
            trunks = ["a", "b"]
            policy = "weighted-round-robin"
            "#,
        )
        .unwrap();
        let s = shared(&c);
        s.install(s.snapshot());
        let group = |s: &SharedConfig| s.routes.lookup(b"100").unwrap().group.unwrap();
        let before = group(&s);
        let mut t = s.snapshot();
        t.routes.insert(
            "44".into(),
            route(json!({"prefix": "44", "target": "sip:127.0.0.1:5080"})).unwrap(),
        );
        s.install(t);
        assert!(
            Arc::ptr_eq(&before, &group(&s)),
            "untouched route keeps its group"
        );
        let mut t = s.snapshot();
        t.routes.get_mut("1").unwrap().max_attempts = 1;
        s.install(t);
        let after = group(&s);
        assert!(!Arc::ptr_eq(&before, &after), "a changed group is new");
        assert_eq!(after.max_attempts, 1);
    }

    fn two_trunks() -> Config {
        Config::from_toml(
            r#"
            [[trunks]]
            id = "a"
            gateways = ["sip:127.0.0.1:5090"]
            max_channels = 2
            [[trunks]]
            id = "b"
            gateways = ["sip:127.0.0.1:5091"]
            auth_username = "sw"
            auth_password = "secret"
            [[routes]]
            prefix = "1"
            trunks = ["a", "b"]
            "#,
        )
        .unwrap()
    }

    #[test]
    fn a_changed_trunk_keeps_its_channels_and_rebuilds_its_groups() {
        let s = shared(&two_trunks());
        s.install(s.snapshot());
        let group = |s: &SharedConfig| s.routes.lookup(b"100").unwrap().group.unwrap();
        let before = group(&s);
        let old_a = s.trunk_table.get("a").unwrap();
        let old_b = s.trunk_table.get("b").unwrap();
        old_a.seize().unwrap();
        old_a.seize().unwrap();
        assert_eq!(old_a.seize(), Err(FailoverCause::ChannelsFull));
        // a: a third channel and another gateway; b unchanged.
        let mut t = s.snapshot();
        let body = json!({"gateways": ["sip:127.0.0.1:6000"], "max_channels": 3});
        t.insert("a", parse_entry(Kind::Trunk, "a", body).unwrap());
        s.install(t);
        let new_a = s.trunk_table.get("a").unwrap();
        assert!(!Arc::ptr_eq(&old_a, &new_a), "a changed trunk is new");
        assert!(
            Arc::ptr_eq(&old_b, &s.trunk_table.get("b").unwrap()),
            "an unchanged trunk is kept"
        );
        assert_eq!(
            new_a.channels(),
            2,
            "channels in use count against the new limit"
        );
        new_a.seize().unwrap();
        assert_eq!(new_a.seize(), Err(FailoverCause::ChannelsFull));
        old_a.release(); // a call from before the change hangs up
        assert_eq!(new_a.channels(), 2);
        assert_eq!(new_a.gateway().unwrap().addr.port(), 6000);
        let after = group(&s);
        assert!(
            !Arc::ptr_eq(&before, &after),
            "the group of a changed trunk is new"
        );
        assert!(after.trunks.iter().any(|x| Arc::ptr_eq(x, &new_a)));
        // Removed from the table with the change that removes it.
        let mut t = s.snapshot();
        t.routes.clear();
        t.remove(Kind::Trunk, "b");
        s.install(t);
        assert!(s.trunk_table.get("b").is_none());
        assert!(Arc::ptr_eq(&new_a, &s.trunk_table.get("a").unwrap()));
    }

    #[test]
    fn a_tenants_flows_are_checked_against_the_nodes_prompts() {
        let mut c = config();
        c.media.tts.insert("hello".into(), "Hello".into());
        let s = shared(&c);
        let t = s.snapshot();
        let mut full: TenantConfig = serde_json::from_value(json!({
            "id": "ivr",
            "domain": "ivr.test",
            "numbers": [{"number": "7700", "target": "flow:f"}],
            "flows": [{"id": "f", "steps": [
                {"id": "a", "type": "play", "prompt": "hello", "next": "b"},
                {"id": "b", "type": "hangup"}
            ]}]
        }))
        .unwrap();
        assert!(s.check_tenant(&t, &full).is_ok(), "a media.tts prompt");
        full.flows[0].steps[0].prompt = Some("nope".into());
        let e = s.check_tenant(&t, &full).unwrap_err();
        assert!(
            format!("{e:?}").contains("flows[0].steps[0].prompt"),
            "{e:?}"
        );
        full.flows[0].steps[0].prompt = Some("hello".into());
        full.numbers[0].target = "flow:other".into();
        let e = s.check_tenant(&t, &full).unwrap_err();
        assert!(format!("{e:?}").contains("no flow"), "{e:?}");
    }

    #[test]
    fn a_new_trunk_in_a_cluster_takes_no_channel_before_its_share() {
        let old = TrunkTable::new();
        let mut configs = BTreeMap::new();
        let c = two_trunks().trunks[0].clone();
        configs.insert("a".to_string(), c.clone());
        let plan = plan_trunks(&old, &configs, true);
        assert_eq!(plan.added, ["a"]);
        assert_eq!(plan.table["a"].seize(), Err(FailoverCause::ChannelsFull));
        let plan = plan_trunks(&old, &configs, false);
        assert!(
            plan.table["a"].seize().is_ok(),
            "alone: the configured limit"
        );
        // A changed trunk on a cluster node keeps its part, never above the new limit.
        let t = Arc::new(TrunkShared::new(c.clone()));
        t.set_caps(1, 0);
        let old: TrunkTable = [(t.id.clone(), t.clone())].into_iter().collect();
        configs.get_mut("a").unwrap().max_channels = 5;
        let plan = plan_trunks(&old, &configs, true);
        assert_eq!(plan.changed, ["a"]);
        assert_eq!(plan.table["a"].channel_cap(), 1);
        configs.remove("a");
        let plan = plan_trunks(&old, &configs, true);
        assert_eq!(plan.removed, ["a"]);
        assert!(plan.table.is_empty());
    }

    #[test]
    fn trunks_are_validated_like_the_file_and_never_show_their_password() {
        let s = shared(&two_trunks());
        let t = s.snapshot();
        let put = |id: &str, body: Value| parse_entry(Kind::Trunk, id, body);
        let ok = put(
            "c",
            json!({"gateways": ["sip:127.0.0.1:5092"], "weight": 3}),
        )
        .unwrap();
        assert!(s.check(&t, "c", &ok).is_ok());
        let e = put("c", json!({"id": "d", "gateways": []})).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "id"),
            "{e:?}"
        );
        let e = put("c", json!({"gateways": ["sip:x"], "colour": 1})).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "colour"),
            "{e:?}"
        );
        let e = put("c", json!({"max_channels": 1})).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "gateways"),
            "{e:?}"
        );
        let bad = put("c", json!({"gateways": ["tel:+1"]})).unwrap();
        let e = s.check(&t, "c", &bad).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "gateways[0]"),
            "{e:?}"
        );
        let bad = put("c d", json!({"gateways": ["sip:127.0.0.1:5092"]})).unwrap();
        let e = s.check(&t, "c d", &bad).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "id"),
            "{e:?}"
        );
        // Stored with the password (a node needs it), shown without; what is shown may be
        // sent back.
        let b = Entry::Trunk(t.trunks["b"].clone());
        assert_eq!(b.stored("b")["auth_password"], "secret");
        let shown = b.view("b");
        assert!(!shown.to_string().contains("secret"), "{shown}");
        assert_eq!(shown["auth_password_set"], true);
        assert_eq!(s.trunks()[1], shown);
        let Entry::Trunk(back) = put("b", shown).unwrap() else {
            panic!()
        };
        assert_eq!(back.auth_password, None);
        let Entry::Trunk(again) = put("b", b.stored("b")).unwrap() else {
            panic!()
        };
        assert_eq!(trunk_json(&again, true), b.stored("b"), "round trip");
    }

    #[tokio::test]
    async fn a_trunk_in_use_is_not_deleted() {
        let s = shared(&two_trunks());
        let e = s.delete(Kind::Trunk, "a").await.unwrap_err();
        assert!(
            matches!(&e, ChangeError::InUse(m) if m.contains("\"1\"")),
            "{e:?}"
        );
        let e = s.delete(Kind::Trunk, "nope").await.unwrap_err();
        assert!(matches!(e, ChangeError::NotFound(_)), "{e:?}");
        // A route cannot name a trunk that is not there.
        let r = route(json!({"prefix": "44", "trunks": ["c"]})).unwrap();
        let e = s.check_route(&s.snapshot(), "44", &r).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "trunks"),
            "{e:?}"
        );
    }

    const MD5: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn users_are_validated_like_the_file() {
        let s = shared(&config());
        let put = |id: &str, body: Value| parse_entry(Kind::User, id, body);
        let ok = put("acme/bob", json!({"ha1_md5": MD5})).unwrap();
        assert!(s.check(&s.snapshot(), "acme/bob", &ok).is_ok());
        let Entry::User(u) = &ok else {
            panic!("{ok:?}")
        };
        assert_eq!((u.tenant.as_str(), u.username.as_str()), ("acme", "bob"));
        let e = put("acme/bob", json!({"ha1_md5": MD5, "password": "pw"})).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "password"),
            "{e:?}"
        );
        let e = put("acme/bob", json!({"username": "carol", "ha1_md5": MD5})).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "username"),
            "{e:?}"
        );
        let short = put("acme/bob", json!({"ha1_md5": "abc"})).unwrap();
        let e = s.check(&s.snapshot(), "acme/bob", &short).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "ha1_md5"),
            "{e:?}"
        );
        let none = put("acme/bob", json!({})).unwrap();
        let e = s.check(&s.snapshot(), "acme/bob", &none).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "body"),
            "{e:?}"
        );
        let elsewhere = put("other/bob", json!({"ha1_md5": MD5})).unwrap();
        let e = s.check(&s.snapshot(), "other/bob", &elsewhere).unwrap_err();
        assert!(matches!(e, ChangeError::NotFound(_)), "{e:?}");
    }

    #[test]
    fn users_are_put_in_force_in_the_authenticator_and_never_shown() {
        let c = Config::from_toml(
            r#"
            [[tenants]]
            id = "acme"
            domain = "acme.test"
            [[tenants.users]]
            username = "alice"
            ha1_md5 = "0123456789abcdef0123456789abcdef"
            [[tenants]]
            id = "beta"
            domain = "beta.test"
            "#,
        )
        .unwrap();
        let s = shared(&c);
        assert!(s.snapshot().users.contains_key("acme/alice"), "file user");
        s.install(s.snapshot()); // the first install sets every tenant's table
        let beta_before = s.auth.tenant("beta").unwrap().users();
        let mut t = s.snapshot();
        let bob = parse_entry(Kind::User, "acme/bob", json!({"ha1_sha256": MD5.repeat(2)}));
        t.insert("acme/bob", bob.unwrap());
        t.remove(Kind::User, "acme/alice");
        s.install(t);
        assert!(s.auth.has_user("acme", "bob"));
        assert!(
            !s.auth.has_user("acme", "alice"),
            "a removed user is gone at once"
        );
        assert_eq!(
            s.auth
                .tenant("acme")
                .unwrap()
                .user("bob")
                .unwrap()
                .ha1_sha256,
            Some(MD5.repeat(2))
        );
        assert!(
            Arc::ptr_eq(&beta_before, &s.auth.tenant("beta").unwrap().users()),
            "an untouched tenant keeps its table"
        );
        let shown = s.users("acme").unwrap();
        assert_eq!(
            shown,
            [json!({"tenant": "acme", "username": "bob", "algorithms": ["SHA-256"]})]
        );
        assert!(
            !shown[0].to_string().contains(MD5),
            "hashes are never shown"
        );
        assert!(s.users("nope").is_none());
        // The stored form keeps the hashes (a restart or another node needs them).
        let snapshot = s.snapshot();
        let stored = snapshot.stored();
        let (_, _, v) = stored.iter().find(|(k, _, _)| *k == Kind::User).unwrap();
        assert_eq!(v["ha1_sha256"], MD5.repeat(2));
    }

    #[test]
    fn saved_user_overrides_apply_over_the_file() {
        let s = shared(&config());
        let mut t = s.snapshot();
        let o = |id: &str, json: &str, deleted| overrides::Override {
            kind: "user".into(),
            id: id.into(),
            json: json.into(),
            deleted,
        };
        let body = json!({"tenant": "acme", "username": "bob", "ha1_md5": MD5}).to_string();
        s.apply_override(&mut t, &o("acme/bob", &body, false))
            .unwrap();
        assert_eq!(t.users["acme/bob"].ha1_md5.as_deref(), Some(MD5));
        s.apply_override(&mut t, &o("acme/bob", "", true)).unwrap();
        assert!(t.users.is_empty());
        // A saved user of a tenant the file no longer has is skipped.
        let gone = body.replace("acme", "gone");
        assert!(s
            .apply_override(&mut t, &o("gone/bob", &gone, false))
            .is_err());
    }

    #[test]
    fn saved_trunks_apply_before_the_routes_that_name_them() {
        let s = shared(&config());
        let o = |kind: &str, id: &str, json: Value| overrides::Override {
            kind: kind.into(),
            id: id.into(),
            json: json.to_string(),
            deleted: false,
        };
        // The route was saved before the trunk's last change.
        let saved = vec![
            o("route", "out", json!({"prefix": "44", "trunks": ["c"]})),
            o("trunk", "c", json!({"gateways": ["sip:127.0.0.1:5092"]})),
        ];
        let mut t = s.snapshot();
        for o in &trunks_first(saved) {
            s.apply_override(&mut t, o).unwrap();
        }
        assert!(t.trunks.contains_key("c") && t.routes.contains_key("out"));
    }

    #[test]
    fn queue_changes_are_validated_like_the_file_and_planned() {
        let s = shared(&config());
        let t = s.snapshot();
        let put = |id: &str, body: Value| parse_entry(Kind::Queue, id, body);
        let ok = put(
            "acme/sales",
            json!({"strategy": "round-robin", "max_length": 2, "overflow_full": "status:486"}),
        )
        .unwrap();
        assert!(s.check(&t, "acme/sales", &ok).is_ok());
        let Entry::Queue(q) = &ok else {
            panic!("{ok:?}")
        };
        assert_eq!(q.body["id"], "sales", "the stored body carries its id");
        assert_eq!(q.config.max_length, 2);
        // Planned with the change; a queue without one keeps the file's configuration.
        let mut changed = t.clone();
        changed.insert("acme/sales", ok.clone());
        let spec = s.queue_spec(&changed, "acme", "sales").unwrap();
        assert_eq!(spec.config.max_length, 2);
        assert_eq!(spec.overflow_full, crate::config::CcTarget::Status(486));
        assert_eq!(
            s.queue_spec(&t, "acme", "sales").unwrap().config.max_length,
            0
        );
        assert!(s.queue_spec(&t, "acme", "nope").is_none());

        let e = put("acme/sales", json!({"id": "other"})).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "id"),
            "{e:?}"
        );
        let e = put("acme/sales", json!({"colour": "red"})).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "colour"),
            "{e:?}"
        );
        let bad = put("acme/sales", json!({"overflow_full": "queue:nope"})).unwrap();
        let e = s.check(&t, "acme/sales", &bad).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "overflow_full"),
            "{e:?}"
        );
        let elsewhere = put("other/sales", json!({})).unwrap();
        let e = s.check(&t, "other/sales", &elsewhere).unwrap_err();
        assert!(matches!(e, ChangeError::NotFound(_)), "{e:?}");
    }

    #[test]
    fn a_new_queue_is_validated_planned_and_numbered_and_deleted_once_unnamed() {
        let s = shared(&config());
        let t = s.snapshot();
        let put = |id: &str, body: Value| parse_entry(Kind::Queue, id, body);
        let new = put("acme/support", json!({"max_length": 3})).unwrap();
        assert!(s.check(&t, "acme/support", &new).is_ok());
        assert!(s.is_file_queue(&s.snapshot(), Kind::Queue, "acme/sales"));
        assert!(!s.is_file_queue(&s.snapshot(), Kind::Queue, "acme/support"));
        // The file's checks apply to a new queue too (an overflow to a queue that is not
        // there), and another queue may overflow to the new one once it is there.
        let bad = put("acme/support", json!({"overflow_full": "queue:nope"})).unwrap();
        let e = s.check(&t, "acme/support", &bad).unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "overflow_full"),
            "{e:?}"
        );
        let to_new = put("acme/sales", json!({"overflow_full": "queue:support"})).unwrap();
        assert!(s.check(&t, "acme/sales", &to_new).is_err(), "not there yet");
        let mut added = t.clone();
        added.insert("acme/support", new);
        assert!(s.check(&added, "acme/sales", &to_new).is_ok());
        assert_eq!(
            s.queue_spec(&added, "acme", "support")
                .unwrap()
                .config
                .max_length,
            3
        );
        assert!(s.queue_spec(&t, "acme", "support").is_none());
        // A number may lead to it once it is there.
        let n = parse_entry(
            Kind::Number,
            "200",
            json!({"tenant": "acme", "target": "queue:support"}),
        )
        .unwrap();
        assert!(s.check(&t, "200", &n).is_err(), "no such queue yet");
        assert!(s.check(&added, "200", &n).is_ok());
        let mut numbered = added.clone();
        numbered.insert("200", n);
        // Deleted: not while a number names it; never a file queue; not one never added.
        let e = s.check_queue_delete(&numbered, "acme/support").unwrap_err();
        assert!(
            matches!(&e, ChangeError::InUse(m) if m.contains("support")),
            "{e:?}"
        );
        let mut overflowing = added.clone();
        overflowing.insert("acme/sales", to_new);
        let e = s
            .check_queue_delete(&overflowing, "acme/support")
            .unwrap_err();
        assert!(matches!(e, ChangeError::InUse(_)), "{e:?}");
        assert!(s.check_queue_delete(&added, "acme/support").is_ok());
        let e = s.check_queue_delete(&added, "acme/sales").unwrap_err();
        assert!(matches!(e, ChangeError::Unsupported(_)), "{e:?}");
        let e = s.check_queue_delete(&t, "acme/support").unwrap_err();
        assert!(matches!(e, ChangeError::NotFound(_)), "{e:?}");
    }

    #[test]
    fn users_are_seeded_under_their_own_marker() {
        let c = Config::from_toml(
            r#"
            [[routes]]
            prefix = "1"
            target = "sip:127.0.0.1:5070"
            [[tenants]]
            id = "acme"
            domain = "acme.test"
            [[tenants.users]]
            username = "alice"
            ha1_md5 = "0123456789abcdef0123456789abcdef"
            "#,
        )
        .unwrap();
        let s = shared(&c);
        let groups = seed_groups("/p/config/", &s.snapshot());
        let keys: Vec<(&str, Vec<&str>)> = groups
            .iter()
            .map(|(m, kvs)| (m.as_str(), kvs.iter().map(|(k, _)| k.as_str()).collect()))
            .collect();
        assert_eq!(
            keys,
            [
                ("/p/config/seeded", vec!["/p/config/routes/1"]),
                ("/p/config/seeded-trunks", vec![]),
                ("/p/config/seeded-users", vec!["/p/config/users/acme/alice"]),
            ]
        );
        let user: Value = serde_json::from_str(&groups[2].1[0].1).unwrap();
        assert_eq!(
            user["ha1_md5"], MD5,
            "a node needs the hashes to authenticate"
        );
    }

    #[test]
    fn keys_are_classified() {
        assert_eq!(
            classify("/sy/config/", "/sy/config/trunks/a"),
            Some((Kind::Trunk, "a"))
        );
        let p = "/sy/config/";
        assert_eq!(
            classify(p, "/sy/config/routes/44"),
            Some((Kind::Route, "44"))
        );
        assert_eq!(
            classify(p, "/sy/config/numbers/+100"),
            Some((Kind::Number, "+100"))
        );
        assert_eq!(
            classify(p, "/sy/config/users/acme/bob"),
            Some((Kind::User, "acme/bob"))
        );
        assert_eq!(classify(p, "/sy/config/seeded"), None);
        assert_eq!(
            classify(p, "/sy/config/queues/acme/sales"),
            Some((Kind::Queue, "acme/sales"))
        );
        assert_eq!(classify(p, "/sy/config/seeded-users"), None);
        assert_eq!(classify(p, "/sy/config/usersx/a"), None);
        assert_eq!(classify(p, "/sy/nodes/n1"), None);
    }

    #[test]
    fn tenant_bodies_are_parsed_and_validated_like_the_file() {
        let s = shared(&config());
        let t = s.snapshot();
        let body = json!({
            "domain": "beta.test",
            "users": [{"username": "bob", "ha1_md5": MD5}],
            "queues": [{"id": "support"}],
            "numbers": [{"number": "200", "target": "queue:support"}],
        });
        let Entry::Tenant(e) = parse_entry(Kind::Tenant, "beta", body.clone()).unwrap() else {
            panic!("a tenant entry");
        };
        // Users and numbers become entries of their own: the tenant keeps neither.
        assert_eq!(e.body["id"], "beta");
        assert!(e.body.get("users").is_none() && e.body.get("numbers").is_none());
        assert!(e.config.users.is_empty() && e.config.numbers.is_empty());
        assert_eq!(e.config.queues.len(), 1);
        for field in ["api_token", "users_csv", "agents_csv"] {
            let mut b = body.clone();
            b[field] = json!("x");
            let err = parse_entry(Kind::Tenant, "beta", b).unwrap_err();
            assert!(
                matches!(&err, ChangeError::Invalid { field: f, .. } if f == field),
                "{err:?}"
            );
        }
        let full =
            |b: Value| -> TenantConfig { parse_fields(with_id(b, "beta").unwrap()).unwrap() };
        assert!(s.check_tenant(&t, &full(body.clone())).is_ok());
        // Another tenant's domain, a number of another tenant, a number to no queue.
        let mut clash = body.clone();
        clash["domain"] = json!("ACME.test");
        let err = s.check_tenant(&t, &full(clash)).unwrap_err();
        assert!(
            matches!(&err, ChangeError::Invalid { field, .. } if field == "domain"),
            "{err:?}"
        );
        let mut taken = body.clone();
        taken["numbers"] = json!([{"number": "100", "target": "queue:support"}]);
        assert!(s.check_tenant(&t, &full(taken)).is_err(), "acme's number");
        let mut nowhere = body.clone();
        nowhere["numbers"] = json!([{"number": "300", "target": "queue:nope"}]);
        assert!(s.check_tenant(&t, &full(nowhere)).is_err());
        assert!(s.has_tenant(&t, "acme") && !s.has_tenant(&t, "beta"));
    }

    #[tokio::test]
    async fn an_added_tenant_is_put_in_force_kept_and_deleted_once_unnumbered() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("switchyard.db");
        let mut s = shared(&config());
        s.backend = Backend::Sqlite(db.clone());
        s.install(s.snapshot());
        let body = json!({
            "domain": "beta.test",
            "users": [{"username": "bob", "ha1_md5": MD5}],
            "queues": [{"id": "support"}],
            "numbers": [{"number": "200", "target": "queue:support"}],
        });
        let (created, view) = s.put(Kind::Tenant, "beta", body.clone()).await.unwrap();
        assert!(created);
        assert_eq!(view["users"], json!(["bob"]));
        // In force: its domain and user in the authenticator, its number routed.
        assert_eq!(s.auth.tenant_for_domain(b"beta.test").unwrap().id, "beta");
        assert!(s.auth.has_user("beta", "bob"));
        assert!(s.numbers.get("200").is_some());
        assert_eq!(s.users("beta").unwrap().len(), 1);
        assert_eq!(s.added_tenants().len(), 1);
        // A tenant that exists is not changed here.
        let e = s.put(Kind::Tenant, "beta", body.clone()).await.unwrap_err();
        assert!(matches!(e, ChangeError::Unsupported(_)), "{e:?}");
        let e = s.put(Kind::Tenant, "acme", body).await.unwrap_err();
        assert!(matches!(e, ChangeError::Unsupported(_)), "{e:?}");
        // Saved: the overrides bring it back, tenant before its user and number.
        let saved = trunks_first(overrides::load(&overrides::open(&db).unwrap()).unwrap());
        let kinds: Vec<&str> = saved.iter().map(|o| o.kind.as_str()).collect();
        assert_eq!(kinds, ["tenant", "user", "number"]);
        let mut again = s.snapshot();
        again.remove(Kind::Tenant, "beta");
        for o in &saved {
            s.apply_override(&mut again, o).unwrap();
        }
        assert!(again.tenants.contains_key("beta") && again.users.contains_key("beta/bob"));
        // Deleted: never the file's; not while a number leads to it.
        let e = s.delete(Kind::Tenant, "acme").await.unwrap_err();
        assert!(matches!(e, ChangeError::Unsupported(_)), "{e:?}");
        let e = s.delete(Kind::Tenant, "beta").await.unwrap_err();
        assert!(
            matches!(&e, ChangeError::InUse(m) if m.contains("200")),
            "{e:?}"
        );
        s.delete(Kind::Number, "200").await.unwrap();
        s.delete(Kind::Tenant, "beta").await.unwrap();
        assert!(s.auth.tenant_for_domain(b"beta.test").is_none());
        assert!(!s.auth.has_user("beta", "bob"));
        assert!(s.users("beta").is_none());
        assert!(
            !s.snapshot().users.contains_key("beta/bob"),
            "its users went with it"
        );
        let e = s.delete(Kind::Tenant, "beta").await.unwrap_err();
        assert!(matches!(e, ChangeError::NotFound(_)), "{e:?}");
        // Its user's deletion was saved too: a restart does not bring it back.
        let saved = overrides::load(&overrides::open(&db).unwrap()).unwrap();
        assert!(saved
            .iter()
            .any(|o| o.kind == "user" && o.id == "beta/bob" && o.deleted));
    }

    #[tokio::test]
    async fn tokens_are_stored_hashed_put_in_force_bounded_and_go_with_their_tenant() {
        use crate::store::tokens::{new_id, new_secret, TokenRecord};
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("switchyard.db");
        let mut s = shared(&config());
        s.backend = Backend::Sqlite(db.clone());
        s.install(s.snapshot());
        let record = |tenant: &str, secret: &str| {
            let r = TokenRecord::new(tenant, &new_id(), "crm", secret, 1);
            (scoped_id(tenant, &r.id), serde_json::to_value(&r).unwrap())
        };
        // Made: in force in the token table at once, stored without the secret.
        let secret = new_secret();
        let (id, body) = record("acme", &secret);
        let (created, view) = s.put(Kind::Token, &id, body).await.unwrap();
        assert!(created);
        assert!(view.get("sha256").is_none(), "{view}");
        assert_eq!(&*s.tokens().find(&secret, 5).unwrap().tenant, "acme");
        let saved = overrides::load(&overrides::open(&db).unwrap()).unwrap();
        assert_eq!(saved.len(), 1);
        assert!(!saved[0].json.contains(&secret[4..]), "{}", saved[0].json);
        // A restart's overrides bring it back.
        let mut again = Tables::default();
        s.apply_override(&mut again, &saved[0]).unwrap();
        assert!(again.tokens.contains_key(&id));
        // Refused: an unknown tenant, a body contradicting the path, a bad digest.
        let (other, body) = record("nope", &new_secret());
        let e = s.put(Kind::Token, &other, body).await.unwrap_err();
        assert!(matches!(e, ChangeError::NotFound(_)), "{e:?}");
        let (_, body) = record("acme", &new_secret());
        let e = s.put(Kind::Token, &id, body).await.unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "id"),
            "{e:?}"
        );
        let e = s
            .put(Kind::Token, &id, json!({"sha256": "xx", "created_ms": 1}))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ChangeError::Invalid { field, .. } if field == "sha256"),
            "{e:?}"
        );
        // Replaced only while it exists.
        let rotated = new_secret();
        let r = TokenRecord {
            rotated_ms: Some(9),
            ..TokenRecord::new("acme", &id[5..], "crm", &rotated, 1)
        };
        s.replace(Kind::Token, &id, serde_json::to_value(&r).unwrap())
            .await
            .unwrap();
        assert!(s.tokens().find(&secret, 6).is_none(), "the old secret");
        assert!(s.tokens().find(&rotated, 6).is_some());
        let (missing, body) = record("acme", &new_secret());
        let e = s.replace(Kind::Token, &missing, body).await.unwrap_err();
        assert!(matches!(e, ChangeError::NotFound(_)), "{e:?}");
        // At most MAX_TOKENS_PER_TENANT per tenant.
        for _ in 1..MAX_TOKENS_PER_TENANT {
            let (id, body) = record("acme", &new_secret());
            s.put(Kind::Token, &id, body).await.unwrap();
        }
        let (over, body) = record("acme", &new_secret());
        let e = s.put(Kind::Token, &over, body).await.unwrap_err();
        assert!(matches!(e, ChangeError::InUse(_)), "{e:?}");
        // Revoked: out of force at once.
        s.delete(Kind::Token, &id).await.unwrap();
        assert!(s.tokens().find(&rotated, 7).is_none());
        // A tenant added through the API takes its tokens with it, here and after a restart.
        s.put(Kind::Tenant, "beta", json!({"domain": "beta.test"}))
            .await
            .unwrap();
        let beta = new_secret();
        let (beta_id, body) = record("beta", &beta);
        s.put(Kind::Token, &beta_id, body).await.unwrap();
        assert!(s.tokens().find(&beta, 8).is_some());
        s.delete(Kind::Tenant, "beta").await.unwrap();
        assert!(s.tokens().find(&beta, 9).is_none());
        assert!(!s.snapshot().tokens.contains_key(&beta_id));
        let saved = overrides::load(&overrides::open(&db).unwrap()).unwrap();
        assert!(saved
            .iter()
            .any(|o| o.kind == "token" && o.id == beta_id && o.deleted));
    }
}
