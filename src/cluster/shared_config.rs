//! Routes and numbers changed while the switch runs (`PUT /routes/{id}`, `PUT
//! /numbers/{number}`, ...), put in force in the router without a restart.
//!
//! [`SharedConfig`] holds the current routes and numbers (the config file's, with the changes
//! applied over them) and swaps the router's [`Routes`] and [`Numbers`] tables whole on every
//! change; calls in progress keep the route they started with.
//!
//! - **Alone**, a change is validated, written to the node's SQLite overrides table
//!   (`store::config`) and applied at once; at start the overrides are applied over the file.
//! - **In a cluster**, etcd holds the shared copy: `<prefix>/config/routes/<id>` and
//!   `<prefix>/config/numbers/<number>` (JSON). The first node that finds no
//!   `<prefix>/config/seeded` marker seeds etcd from its file (in a transaction, so only one
//!   does). A change is written to etcd, and every node, the writer included, applies it from
//!   its watch, so all nodes agree on one order; the API answers once its own node has applied
//!   the write. The task has its own etcd client and reloads everything if the watch fails or
//!   falls behind a compaction.
//!
//! Validation is the config file's own ([`Config::validate`]), run on a configuration made of
//! the current entries plus the changed one, so the API refuses exactly what a file would.
//! Tenants, users, queues and trunks stay file-configured.

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
use crate::actors::trunk::TrunkTable;
use crate::config::{Config, MediaMode, NumberConfig, RouteConfig, TenantConfig, TrunkConfig};
use crate::routing::trunks::Policy;
use crate::store::config as overrides;

/// Counter, labels `kind` (`route`, `number`) and `source` (`api`: this node's API, alone;
/// `cluster`: the etcd watch; `store`: the saved overrides at start): changes applied.
pub const CONFIG_CHANGES_TOTAL: &str = "switchyard_config_changes_total";
/// Counter, labels `kind` and `reason` (`invalid`, `unauthorized`, `unavailable`,
/// `not_found`, `stale`, `bad_json`): changes refused or skipped.
pub const CONFIG_REJECTED_TOTAL: &str = "switchyard_config_rejected_total";
/// Gauge: the configuration's generation on this node, bumped per applied change (or
/// reload); nodes that have applied the same changes show the same routes.
pub const CONFIG_GENERATION: &str = "switchyard_config_generation";

/// Describes this module's metrics.
pub fn describe() {
    metrics::describe_counter!(
        CONFIG_CHANGES_TOTAL,
        "Route and number changes applied, by kind and source (api, cluster, store)"
    );
    metrics::describe_counter!(
        CONFIG_REJECTED_TOTAL,
        "Route and number changes refused or skipped, by kind and reason"
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

/// What a change is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Route,
    Number,
}

impl Kind {
    /// The metric label and the overrides table's `kind`.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Route => "route",
            Kind::Number => "number",
        }
    }

    /// The etcd key segment under `<prefix>/config/`.
    fn segment(self) -> &'static str {
        match self {
            Kind::Route => "routes",
            Kind::Number => "numbers",
        }
    }
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
        }
    }
}

/// The routes and numbers in force, by id and by number.
#[derive(Clone, Debug, Default)]
struct Tables {
    routes: BTreeMap<String, RouteConfig>,
    numbers: BTreeMap<String, NumberEntry>,
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

/// The node's live routes and numbers: read by the API, changed through it, and put in force
/// in the router by swapping its tables.
pub struct SharedConfig {
    /// The file's tenants without users and agents (numbers are checked against their
    /// queues) and its trunks (routes name them).
    tenants: Vec<TenantConfig>,
    trunks: Vec<TrunkConfig>,
    trunk_table: Arc<TrunkTable>,
    routes: Arc<Routes>,
    numbers: Arc<Numbers>,
    tables: Mutex<Tables>,
    generation: AtomicU64,
    backend: Backend,
    /// One change at a time through this node (validation sees the previous one's result).
    writing: tokio::sync::Mutex<()>,
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
    /// (`routes`, `numbers`). Alone: the saved overrides are applied over them. In a cluster:
    /// etcd is seeded (first node) or read, the router gets etcd's routes and numbers, and a
    /// task follows the changes. Fails when the overrides or etcd cannot be read.
    pub async fn start(
        config: &Config,
        routes: Arc<Routes>,
        numbers: Arc<Numbers>,
        trunk_table: Arc<TrunkTable>,
    ) -> Result<Arc<SharedConfig>, String> {
        let file = file_tables(config);
        let tenants = bare_tenants(config);
        let make = |backend| SharedConfig {
            tenants,
            trunks: config.trunks.clone(),
            trunk_table,
            routes,
            numbers,
            tables: Mutex::new(Tables::default()),
            generation: AtomicU64::new(0),
            backend,
            writing: tokio::sync::Mutex::new(()),
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

    /// Every number as the API shows it.
    pub fn numbers(&self) -> Vec<NumberEntry> {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        t.numbers.values().cloned().collect()
    }

    /// Creates or replaces route `id` from a JSON body with [`RouteConfig`]'s fields.
    /// Returns whether it was created, and the route as stored.
    pub async fn put_route(&self, id: &str, body: Value) -> Result<(bool, Value), ChangeError> {
        let result = self.put_route_inner(id, body).await;
        count_rejected(Kind::Route, &result);
        result
    }

    async fn put_route_inner(&self, id: &str, body: Value) -> Result<(bool, Value), ChangeError> {
        let mut route = parse_route(body)?;
        match route.id.as_deref() {
            Some(given) if given != id => {
                return Err(ChangeError::invalid(
                    "id",
                    format!("{given:?} differs from the path's {id:?}"),
                ))
            }
            _ => route.id = Some(id.to_string()),
        }
        let stored = route_json(id, &route);
        let existed = self
            .change(Kind::Route, id, Some(&stored), |t| {
                self.check_route(t, id, &route)?;
                Ok(t.routes.contains_key(id))
            })
            .await?;
        Ok((!existed, stored))
    }

    /// Removes route `id` (a file route too).
    pub async fn delete_route(&self, id: &str) -> Result<(), ChangeError> {
        let result = self.delete(Kind::Route, id).await;
        count_rejected(Kind::Route, &result);
        result
    }

    /// Creates or replaces `number` from a JSON body `{tenant, target, priority}`. Returns
    /// whether it was created, and the number as stored.
    pub async fn put_number(
        &self,
        number: &str,
        body: Value,
    ) -> Result<(bool, NumberEntry), ChangeError> {
        let result = self.put_number_inner(number, body).await;
        count_rejected(Kind::Number, &result);
        result
    }

    async fn put_number_inner(
        &self,
        number: &str,
        body: Value,
    ) -> Result<(bool, NumberEntry), ChangeError> {
        let mut entry = parse_number(body)?;
        if !entry.number.is_empty() && entry.number != number {
            return Err(ChangeError::invalid(
                "number",
                format!("{:?} differs from the path's {number:?}", entry.number),
            ));
        }
        entry.number = number.to_string();
        let stored = serde_json::to_value(&entry).expect("a number serializes");
        let existed = self
            .change(Kind::Number, number, Some(&stored), |t| {
                self.check_number(t, &entry)?;
                Ok(t.numbers.contains_key(number))
            })
            .await?;
        Ok((!existed, entry))
    }

    /// Removes `number` (a file number too).
    pub async fn delete_number(&self, number: &str) -> Result<(), ChangeError> {
        let result = self.delete(Kind::Number, number).await;
        count_rejected(Kind::Number, &result);
        result
    }

    async fn delete(&self, kind: Kind, id: &str) -> Result<(), ChangeError> {
        self.change(kind, id, None, |t| {
            let exists = match kind {
                Kind::Route => t.routes.contains_key(id),
                Kind::Number => t.numbers.contains_key(id),
            };
            if exists {
                Ok(true)
            } else {
                Err(ChangeError::NotFound(format!("{} {id:?}", kind.label())))
            }
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
                let saved = o.clone();
                tokio::task::spawn_blocking(move || {
                    overrides::open(&path).and_then(|c| overrides::save(&c, &saved))
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
                let op = match value {
                    Some(v) => TxnOp::put(key, v.to_string(), None),
                    None => TxnOp::delete(key, None),
                };
                let unchanged = Compare::mod_revision(e.prefix.as_str(), CompareOp::Less, seen + 1)
                    .with_prefix();
                let resp = e
                    .client
                    .clone()
                    .txn(Txn::new().when([unchanged]).and_then([op]))
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
        let kind = match o.kind.as_str() {
            "route" => Kind::Route,
            "number" => Kind::Number,
            other => return Err(ChangeError::invalid("kind", format!("{other:?}"))),
        };
        if o.deleted {
            match kind {
                Kind::Route => {
                    tables.routes.remove(&o.id);
                }
                Kind::Number => {
                    tables.numbers.remove(&o.id);
                }
            }
            return Ok(());
        }
        let v = serde_json::from_str::<Value>(&o.json)
            .map_err(|e| ChangeError::invalid("json", e.to_string()))?;
        match kind {
            Kind::Route => {
                let mut r = parse_route(v)?;
                r.id = Some(o.id.clone());
                self.check_route(tables, &o.id, &r)?;
                tables.routes.insert(o.id.clone(), r);
            }
            Kind::Number => {
                let mut n = parse_number(v)?;
                n.number = o.id.clone();
                self.check_number(tables, &n)?;
                tables.numbers.insert(o.id.clone(), n);
            }
        }
        Ok(())
    }

    /// The file's validation of route `id` as `route`, among the other current routes.
    fn check_route(&self, t: &Tables, id: &str, route: &RouteConfig) -> Result<(), ChangeError> {
        let mut c = Config {
            trunks: self.trunks.clone(),
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
        let Some(ti) = self.tenants.iter().position(|x| x.id == n.tenant) else {
            return Err(ChangeError::invalid(
                "tenant",
                format!("no tenant {:?}", n.tenant),
            ));
        };
        let mut c = Config {
            tenants: self.tenants.clone(),
            ..Config::default()
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

    /// Puts `tables` in force: the router's tables are rebuilt and swapped.
    fn install(&self, tables: Tables) {
        let routes: Vec<RouteConfig> = tables.routes.values().cloned().collect();
        let previous = self.routes.current();
        let table = RouteTable::rebuilt(&routes, &self.trunk_table, &previous);
        self.routes.replace(table);
        let mut numbers = HashMap::with_capacity(tables.numbers.len());
        for n in tables.numbers.values() {
            let route = self
                .tenants
                .iter()
                .find(|t| t.id == n.tenant)
                .and_then(|t| NumberRoute::from_config(t, &n.target, n.priority));
            if let Some(route) = route {
                numbers.insert(n.number.clone(), route);
            }
        }
        self.numbers.replace(numbers);
        *self.tables.lock().unwrap_or_else(|e| e.into_inner()) = tables;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(CONFIG_GENERATION).set(generation as f64);
    }
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

/// The file's routes by id and numbers by number.
fn file_tables(config: &Config) -> Tables {
    let mut t = Tables::default();
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
    })
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

/// Seeds `<prefix>` from the file unless some node did so before (the `seeded` marker),
/// in transactions of at most etcd's operation limit, the first of which claims the marker.
async fn seed(client: &mut Client, prefix: &str, file: &Tables, node: &str) -> Result<(), String> {
    let marker = format!("{prefix}seeded");
    let mut ops: Vec<TxnOp> = Vec::new();
    for (id, r) in &file.routes {
        ops.push(TxnOp::put(
            format!("{prefix}routes/{id}"),
            route_json(id, r).to_string(),
            None,
        ));
    }
    for (number, n) in &file.numbers {
        let v = serde_json::to_string(n).expect("a number serializes");
        ops.push(TxnOp::put(format!("{prefix}numbers/{number}"), v, None));
    }
    let mut rest = ops.into_iter();
    let mut first: Vec<TxnOp> = rest.by_ref().take(MAX_TXN_OPS - 1).collect();
    first.push(TxnOp::put(marker.clone(), node.to_string(), None));
    let txn = Txn::new()
        .when([Compare::create_revision(marker, CompareOp::Equal, 0)])
        .and_then(first);
    let resp = client
        .txn(txn)
        .await
        .map_err(|e| format!("etcd seed: {e}"))?;
    if !resp.succeeded() {
        return Ok(()); // another node seeded (or is seeding) the shared configuration
    }
    let rest: Vec<TxnOp> = rest.collect();
    for chunk in rest.chunks(MAX_TXN_OPS) {
        client
            .txn(Txn::new().and_then(chunk.to_vec()))
            .await
            .map_err(|e| format!("etcd seed: {e}"))?;
    }
    tracing::info!(
        routes = file.routes.len(),
        numbers = file.numbers.len(),
        "shared configuration seeded from this node's file"
    );
    Ok(())
}

/// Which entry a key under `<prefix>` is.
fn classify<'k>(prefix: &str, key: &'k str) -> Option<(Kind, &'k str)> {
    let rest = key.strip_prefix(prefix)?;
    if let Some(id) = rest.strip_prefix("routes/") {
        Some((Kind::Route, id))
    } else {
        rest.strip_prefix("numbers/").map(|n| (Kind::Number, n))
    }
}

/// Sets one entry from its etcd value; false (and counted) if the value does not parse.
fn set_entry(t: &mut Tables, kind: Kind, id: &str, value: &str) -> bool {
    let parsed = serde_json::from_str::<Value>(value)
        .map_err(|e| ChangeError::invalid("json", e.to_string()))
        .and_then(|v| match kind {
            Kind::Route => parse_route(v).map(|mut r| {
                r.id = Some(id.to_string());
                t.routes.insert(id.to_string(), r);
            }),
            Kind::Number => parse_number(v).map(|mut n| {
                n.number = id.to_string();
                t.numbers.insert(id.to_string(), n);
            }),
        });
    if let Err(e) = parsed {
        metrics::counter!(CONFIG_REJECTED_TOTAL, "kind" => kind.label(), "reason" => "bad_json")
            .increment(1);
        tracing::warn!(kind = kind.label(), id, error = %e, "shared configuration entry skipped");
        return false;
    }
    true
}

/// Every route and number under `prefix`, and the revision they were read at.
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
                            EventType::Delete => match kind {
                                Kind::Route => tables.routes.remove(id).is_some(),
                                Kind::Number => tables.numbers.remove(id).is_some(),
                            },
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
        SharedConfig {
            tenants: bare_tenants(config),
            trunks: config.trunks.clone(),
            trunk_table: Arc::new(TrunkTable::new()),
            routes: Arc::new(Routes::new(&[], &TrunkTable::new())),
            numbers: Arc::new(Numbers::default()),
            tables: Mutex::new(file_tables(config)),
            generation: AtomicU64::new(0),
            backend: Backend::Sqlite(PathBuf::new()),
            writing: tokio::sync::Mutex::new(()),
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
        let mut s = shared(&c);
        s.trunk_table = Arc::new(
            c.trunks
                .iter()
                .map(|t| {
                    let shared = Arc::new(crate::actors::trunk::TrunkShared::new(t.clone()));
                    (shared.id.clone(), shared)
                })
                .collect(),
        );
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

    #[test]
    fn keys_are_classified() {
        let p = "/sy/config/";
        assert_eq!(
            classify(p, "/sy/config/routes/44"),
            Some((Kind::Route, "44"))
        );
        assert_eq!(
            classify(p, "/sy/config/numbers/+100"),
            Some((Kind::Number, "+100"))
        );
        assert_eq!(classify(p, "/sy/config/seeded"), None);
        assert_eq!(classify(p, "/sy/nodes/n1"), None);
    }
}
