//! The risk desk: the one decision point of every outbound call (issue 20). A phone's call
//! through a route (the router), click-to-call (`POST /calls`) and `GET /risk/check` ask
//! it; it answers with a [`Decision`] naming the rule, from the pure rules of
//! [`crate::routing::risk`] over the state it keeps:
//! - the black and white lists, loaded from the store at start and changed through the API
//!   (written to the store first, then put in force);
//! - the attempt counts of frequency caps, in the store (`risk_attempts`), checked and
//!   recorded in one transaction serialized per number, so a cap holds across a restart and,
//!   on the cluster's PostgreSQL, across nodes;
//! - the newest decisions, a bounded ring served by `GET /risk/decisions`.
//!
//! Not an actor: a shared service like the route table, read by the router's receive tasks
//! and the API. Store calls block, so they run in `spawn_blocking`, one at a time per node
//! (one connection behind a mutex); only calls that a cap applies to touch the store.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use jiff::tz::TimeZone;
use serde::Serialize;

use crate::config::RiskConfig;
use crate::routing::risk::{
    self, applicable_caps, cap_verdict, screen, CapScope, Decision, Entry, ListKind, Lists, Rule,
    Rules, Scope, Subject,
};
use crate::store::risk::Counted;
use crate::store::{Database, Store, StoreError, Synchronous};

/// Where an attempt comes from (the decision record's `origin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A registered phone's call through a route.
    Phone,
    /// `POST /calls`.
    ClickToCall,
}

/// One outbound attempt to decide on.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    /// The calling tenant; None for a trusted peer's or a trunk's call (platform rules and
    /// the route's caps only).
    pub tenant: Option<&'a str>,
    /// The number as it goes out (after the route's strip and prepend).
    pub number: &'a str,
    /// The route (trunk group) it takes, by id.
    pub route: Option<&'a str>,
    pub origin: Origin,
    /// The callee's zone, when the caller knows it.
    pub zone: Option<&'a TimeZone>,
}

/// A decision as `GET /risk/decisions` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct DecisionRecord {
    pub at_ms: i64,
    pub tenant: Option<String>,
    pub number: String,
    pub route: Option<String>,
    pub origin: Origin,
    pub result: &'static str,
    pub rule: &'static str,
    pub detail: String,
}

/// Why a list change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("the list would hold {0} entries, more than {1}")]
    TooMany(usize, usize),
    #[error("the change could not be stored: {0}")]
    Store(String),
}

/// Count checks waiting for or using the database at once; beyond, an attempt a cap
/// applies to is refused at once as [`Rule::CapUnavailable`] (503) instead of queueing
/// behind a slow database (a flood of capped calls costs a refusal each, not a thread).
pub const MAX_COUNTS_IN_FLIGHT: usize = 64;

/// Attempts recorded between two prunes of rows older than the longest window.
const PRUNE_EVERY: u64 = 1000;

/// See the module documentation.
pub struct RiskDesk {
    lists: RwLock<Lists>,
    rules: Rules,
    store: Option<Arc<Mutex<Store>>>,
    max_entries: usize,
    kept: usize,
    ring: Mutex<VecDeque<DecisionRecord>>,
    recorded: AtomicU64,
    /// Held through a list change (size check, store write, swap).
    changes: tokio::sync::Mutex<()>,
    /// The stored lists' version loaded (see [`RiskDesk::refresh`]).
    version: AtomicI64,
    /// Bounds the count checks in flight ([`MAX_COUNTS_IN_FLIGHT`]).
    counting: Arc<tokio::sync::Semaphore>,
    /// The longest cap window (ms): older attempts are pruned.
    longest_ms: i64,
}

impl std::fmt::Debug for RiskDesk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RiskDesk")
            .field("store", &self.store.is_some())
            .finish()
    }
}

impl RiskDesk {
    /// A desk over `store` (None: no lists persist, and a call a cap applies to is refused
    /// as [`Rule::CapUnavailable`]); loads the stored lists. Blocks (database).
    pub fn new(config: &RiskConfig, store: Option<Store>) -> Result<RiskDesk, StoreError> {
        let (version, lists) = match &store {
            Some(s) => load_lists(s)?,
            None => (0, Lists::default()),
        };
        let rules = Rules::from_config(config);
        let longest_ms = rules
            .tenants
            .values()
            .flat_map(|t| t.caps.iter())
            .chain(rules.routes.values().flatten())
            .map(|c| c.window_secs as i64 * 1000)
            .max()
            .unwrap_or(0);
        let desk = RiskDesk {
            lists: RwLock::new(lists),
            rules,
            store: store.map(|s| Arc::new(Mutex::new(s))),
            max_entries: config.max_list_entries,
            kept: config.decisions_kept.max(1),
            ring: Mutex::new(VecDeque::new()),
            recorded: AtomicU64::new(0),
            changes: tokio::sync::Mutex::new(()),
            version: AtomicI64::new(version),
            counting: Arc::new(tokio::sync::Semaphore::new(MAX_COUNTS_IN_FLIGHT)),
            longest_ms,
        };
        desk.publish_counts();
        Ok(desk)
    }

    /// [`RiskDesk::new`] on `database` (the node's SQLite file, or the cluster's
    /// PostgreSQL, so that caps count every node's calls). Blocks: call it off the tokio
    /// workers.
    pub fn open(config: &RiskConfig, database: &Database) -> Result<RiskDesk, StoreError> {
        let store = Store::connect(database, Synchronous::Normal)?;
        RiskDesk::new(config, Some(store))
    }

    /// Decides on an attempt and, when it may go and caps apply, records it (it counts
    /// against them from now on). Counted in [`risk::RISK_DECISIONS`] and kept in the ring.
    pub async fn decide(self: &Arc<Self>, a: Attempt<'_>) -> Decision {
        let d = self.evaluate(a, true).await;
        metrics::counter!(risk::RISK_DECISIONS, "rule" => d.rule.label(), "result" => d.result())
            .increment(1);
        if !d.allow {
            tracing::info!(tenant = ?a.tenant, number = a.number, route = ?a.route, rule = d.rule.label(), detail = %d.detail, "outbound call refused by risk rules");
        }
        self.remember(&a, &d);
        d
    }

    /// What [`RiskDesk::decide`] would answer now, recording nothing (`GET /risk/check`).
    pub async fn check(self: &Arc<Self>, a: Attempt<'_>) -> Decision {
        self.evaluate(a, false).await
    }

    async fn evaluate(self: &Arc<Self>, a: Attempt<'_>, record: bool) -> Decision {
        let number = a.number.strip_prefix('+').unwrap_or(a.number);
        let tenant_rules = a.tenant.and_then(|t| self.rules.tenants.get(t));
        let now = jiff::Timestamp::now();
        let screened = {
            let lists = self.lists.read().unwrap_or_else(|e| e.into_inner());
            let subject = Subject {
                tenant: a.tenant,
                number,
                zone: a.zone,
            };
            screen(&lists, tenant_rules, subject, now)
        };
        if !screened.allow {
            return screened;
        }
        let caps = applicable_caps(&self.rules, a.tenant, a.route);
        if caps.is_empty() {
            return screened;
        }
        let Some(store) = self.store.clone() else {
            return Decision::refuse(Rule::CapUnavailable, "no database for the counts");
        };
        let Ok(permit) = self.counting.clone().try_acquire_owned() else {
            return Decision::refuse(Rule::CapUnavailable, "too many count checks at once");
        };
        let now_ms = now.as_millisecond();
        let (number, tenant, route) = (
            number.to_string(),
            a.tenant.unwrap_or("").to_string(),
            a.route.unwrap_or("").to_string(),
        );
        let prune = record
            && self.recorded.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1;
        let before = now_ms - self.longest_ms;
        let caps_for_store = caps.clone();
        let counted = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
            let windows: Vec<Counted<'_>> = caps_for_store
                .iter()
                .map(|(scope, cap)| {
                    let since_ms = now_ms - cap.window_secs as i64 * 1000;
                    match scope {
                        CapScope::Tenant => Counted::Tenant {
                            tenant: &tenant,
                            since_ms,
                        },
                        CapScope::Route => Counted::Route {
                            route: &route,
                            since_ms,
                        },
                    }
                })
                .collect();
            let out = store.risk_attempt(&number, (&tenant, &route), &windows, now_ms, |counts| {
                record && cap_verdict(&caps_for_store, counts).is_none()
            });
            if prune {
                if let Err(e) = store.risk_prune(before) {
                    tracing::warn!(error = %e, "risk attempts not pruned");
                }
            }
            out
        })
        .await;
        match counted {
            Ok(Ok((counts, _))) => cap_verdict(&caps, &counts).unwrap_or(screened),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "risk counts unavailable");
                Decision::refuse(Rule::CapUnavailable, "the attempt counts could not be read")
            }
            Err(e) => {
                tracing::warn!(error = %e, "risk count task failed");
                Decision::refuse(Rule::CapUnavailable, "the attempt counts could not be read")
            }
        }
    }

    fn remember(&self, a: &Attempt<'_>, d: &Decision) {
        let record = DecisionRecord {
            at_ms: crate::store::now_unix_ms(),
            tenant: a.tenant.map(str::to_string),
            number: a.number.to_string(),
            route: a.route.map(str::to_string),
            origin: a.origin,
            result: d.result(),
            rule: d.rule.label(),
            detail: d.detail.clone(),
        };
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() >= self.kept {
            ring.pop_front();
        }
        ring.push_back(record);
    }

    /// The newest decisions first, of `tenant` if given, at most `limit`.
    pub fn decisions(&self, tenant: Option<&str>, limit: usize) -> Vec<DecisionRecord> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter()
            .rev()
            .filter(|r| tenant.is_none_or(|t| r.tenant.as_deref() == Some(t)))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The entries of one list, sorted.
    pub fn list(&self, scope: &Scope, kind: ListKind) -> Vec<String> {
        let lists = self.lists.read().unwrap_or_else(|e| e.into_inner());
        lists
            .get(scope)
            .map(|p| p.list(kind).entries().iter().map(Entry::text).collect())
            .unwrap_or_default()
    }

    /// Adds and removes entries of one list: stored first (when there is a store), then in
    /// force. Returns the list's size after. A list may not grow beyond
    /// `risk.max_list_entries`.
    pub async fn change_list(
        self: &Arc<Self>,
        scope: Scope,
        kind: ListKind,
        add: Vec<Entry>,
        remove: Vec<Entry>,
    ) -> Result<usize, ListError> {
        // One change at a time per node: the size check and the store write agree.
        let _one = self.changes.lock().await;
        {
            let lists = self.lists.read().unwrap_or_else(|e| e.into_inner());
            let mut probe = lists
                .get(&scope)
                .map(|p| p.list(kind).clone())
                .unwrap_or_default();
            drop(lists);
            for e in &remove {
                probe.remove(e);
            }
            for e in &add {
                probe.insert(e);
            }
            if probe.len() > self.max_entries {
                return Err(ListError::TooMany(probe.len(), self.max_entries));
            }
        }
        if let Some(store) = self.store.clone() {
            let (s, o, k) = (
                scope.label().to_string(),
                scope.owner().to_string(),
                kind.label().to_string(),
            );
            let add_text: Vec<String> = add.iter().map(Entry::text).collect();
            let remove_text: Vec<String> = remove.iter().map(Entry::text).collect();
            tokio::task::spawn_blocking(move || {
                let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
                store.risk_list_change(
                    (&s, &o, &k),
                    &add_text,
                    &remove_text,
                    crate::store::now_unix_ms(),
                )
            })
            .await
            .map_err(|e| ListError::Store(e.to_string()))?
            .map_err(|e| ListError::Store(e.to_string()))?;
        }
        let mut lists = self.lists.write().unwrap_or_else(|e| e.into_inner());
        let list = lists.get_mut(scope).list_mut(kind);
        for e in &remove {
            list.remove(e);
        }
        for e in &add {
            list.insert(e);
        }
        let len = list.len();
        drop(lists);
        self.publish_counts();
        Ok(len)
    }

    /// Reloads the lists if the stored version moved (another node of the cluster changed
    /// them); whether it did. Blocks (database): call it from `spawn_blocking`.
    pub fn refresh(&self) -> Result<bool, StoreError> {
        let Some(store) = &self.store else {
            return Ok(false);
        };
        let store = store.lock().unwrap_or_else(|e| e.into_inner());
        if store.risk_list_version()? == self.version.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let (version, lists) = load_lists(&store)?;
        drop(store);
        *self.lists.write().unwrap_or_else(|e| e.into_inner()) = lists;
        self.version.store(version, Ordering::Relaxed);
        self.publish_counts();
        Ok(true)
    }

    fn publish_counts(&self) {
        let counts = self
            .lists
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .counts();
        for (scope, n) in counts {
            metrics::gauge!(risk::RISK_LIST_ENTRIES, "scope" => scope).set(n as f64);
        }
    }
}

impl Drop for RiskDesk {
    /// The PostgreSQL client must not be dropped on a tokio worker (its connection's drop
    /// blocks on a runtime of its own): it goes on a thread of its own.
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            let _ = std::thread::Builder::new()
                .name("risk-store-close".into())
                .spawn(move || drop(store));
        }
    }
}

/// The stored lists and their version (read first: a change landing meanwhile is seen by
/// the next [`RiskDesk::refresh`]).
fn load_lists(store: &Store) -> Result<(i64, Lists), StoreError> {
    let version = store.risk_list_version()?;
    let mut lists = Lists::default();
    for row in store.risk_lists()? {
        let (Some(scope), Some(kind), Ok(entry)) = (
            Scope::from_parts(&row.scope, &row.owner),
            ListKind::parse(&row.kind),
            Entry::parse(&row.entry),
        ) else {
            tracing::warn!(?row, "risk list entry skipped: does not parse");
            continue;
        };
        lists.get_mut(scope).list_mut(kind).insert(&entry);
    }
    Ok((version, lists))
}

/// How often a node of a cluster looks for list changes made on other nodes.
pub const REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Polls the stored lists' version every [`REFRESH_INTERVAL`] (cluster mode: the lists are
/// in the shared PostgreSQL), until the desk is dropped.
pub fn spawn_refresh(desk: &Arc<RiskDesk>) {
    let weak = Arc::downgrade(desk);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(desk) = weak.upgrade() else { return };
            match tokio::task::spawn_blocking(move || desk.refresh()).await {
                Ok(Ok(true)) => tracing::info!("risk lists reloaded (changed on another node)"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "risk lists not refreshed"),
                Err(e) => tracing::warn!(error = %e, "risk list refresh failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RiskCapConfig, RiskTenantConfig};

    fn config() -> RiskConfig {
        RiskConfig {
            tenants: vec![RiskTenantConfig {
                tenant: "acme".into(),
                caps: vec![
                    RiskCapConfig {
                        window: "1d".into(),
                        max: 1,
                    },
                    RiskCapConfig {
                        window: "7d".into(),
                        max: 3,
                    },
                ],
                ..RiskTenantConfig::default()
            }],
            ..RiskConfig::default()
        }
    }

    fn attempt<'a>(tenant: &'a str, number: &'a str) -> Attempt<'a> {
        Attempt {
            tenant: Some(tenant),
            number,
            route: Some("uk"),
            origin: Origin::ClickToCall,
            zone: None,
        }
    }

    #[tokio::test]
    async fn lists_and_caps_persist_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::Sqlite(dir.path().join("switchyard.db"));
        let desk = Arc::new(RiskDesk::open(&config(), &db).unwrap());
        let t = Scope::Tenant("acme".into());
        let n = desk
            .change_list(
                t.clone(),
                ListKind::Black,
                vec![Entry::parse("44*").unwrap(), Entry::parse("33*").unwrap()],
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(n, 2);
        let d = desk.decide(attempt("acme", "+4420")).await;
        assert_eq!((d.allow, d.rule), (false, Rule::TenantBlacklist));
        // A dry check says what a call would meet, and counts nothing.
        assert!(desk.check(attempt("acme", "4930")).await.allow);
        assert!(desk.decide(attempt("acme", "4930")).await.allow);
        let d = desk.decide(attempt("acme", "4930")).await;
        assert_eq!((d.allow, d.rule), (false, Rule::TenantCap));
        // Another tenant has no caps.
        assert!(desk.decide(attempt("other", "4930")).await.allow);
        let seen = desk.decisions(Some("acme"), 10);
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].rule, "tenant_frequency_cap");
        drop(desk);

        let desk = Arc::new(RiskDesk::open(&config(), &db).unwrap());
        assert_eq!(desk.list(&t, ListKind::Black), ["33*", "44*"]);
        assert_eq!(
            desk.check(attempt("acme", "4930")).await.rule,
            Rule::TenantCap
        );
        assert_eq!(
            desk.check(attempt("acme", "4420")).await.rule,
            Rule::TenantBlacklist
        );
    }

    #[tokio::test]
    async fn count_checks_in_flight_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::Sqlite(dir.path().join("switchyard.db"));
        let desk = Arc::new(RiskDesk::open(&config(), &db).unwrap());
        // A slow database: every count slot is taken.
        let held = desk
            .counting
            .clone()
            .acquire_many_owned(MAX_COUNTS_IN_FLIGHT as u32)
            .await
            .unwrap();
        let d = desk.decide(attempt("acme", "4930")).await;
        assert_eq!((d.allow, d.rule), (false, Rule::CapUnavailable));
        // Calls no cap applies to do not need a slot.
        assert!(desk.decide(attempt("other", "4930")).await.allow);
        drop(held);
        assert!(desk.decide(attempt("acme", "4930")).await.allow);
    }

    #[tokio::test]
    async fn lists_are_bounded_and_caps_without_a_store_refuse() {
        let desk = Arc::new(
            RiskDesk::new(
                &RiskConfig {
                    max_list_entries: 2,
                    ..config()
                },
                None,
            )
            .unwrap(),
        );
        let entries = |v: &[&str]| v.iter().map(|e| Entry::parse(e).unwrap()).collect();
        let err = desk
            .change_list(
                Scope::Platform,
                ListKind::Black,
                entries(&["1", "2", "3"]),
                vec![],
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ListError::TooMany(3, 2)));
        assert!(desk.list(&Scope::Platform, ListKind::Black).is_empty());
        let d = desk.decide(attempt("acme", "4930")).await;
        assert_eq!((d.allow, d.rule), (false, Rule::CapUnavailable));
    }
}
