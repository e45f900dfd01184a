//! The digest authenticator: who the users of each tenant are, and the stateful half of
//! digest authentication that `sip::auth` leaves out — nonce-count replay protection and
//! brute-force locks.
//!
//! Failures are counted per source address (any users: a scanner spraying names) and per
//! user *from one source* (a password guessed), never per user alone: an attacker failing
//! for user 1001 from its own address locks itself out, never 1001's phone elsewhere. Both
//! tables are LRU caches of bounded size (O(1) eviction: a spoofed flood of sources pushes
//! out the oldest entries, it never costs a scan). The credentials' `uri` must name the
//! Request-URI (RFC 2617 §3.2.2.5: 400 otherwise).
//!
//! One [`Authenticator`] is shared (`Arc`) by the registrar (401 for REGISTER) and call
//! routing (407 for INVITE). Every method takes `&self`: the per-nonce and per-source tables
//! are sharded maps whose guards are held for a few operations only, so receive tasks and
//! actors never wait on each other for long.
//!
//! Nonces are stateless (`sip::auth::NonceKey`); only nonces that have authenticated a
//! request get an entry (their last nonce count), and entries go when the nonce expires.
//! With [`Authenticator::new`] the nonce key is random per process: after a restart clients'
//! nonces are unknown, they get `stale=true` and retry without asking their user.

use bytes::Bytes;
use hashlink::LruCache;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{RegistrarConfig, TenantConfig, UserConfig};
use crate::sip::auth::{Algorithm, Challenge, Credentials, DigestError, NonceCheck, NonceKey};
use crate::sip::message::{response_to, HeaderName, Message};

/// Authentication outcomes, by `outcome` (challenge, success, failure, stale, replay, locked,
/// bad_request, identity_mismatch, uri_mismatch, nonces_full) (counter).
pub const AUTH_TOTAL: &str = "switchyard_auth_total";
/// Locks imposed after repeated failures, by `scope` (source: any users from one address;
/// user_source: one user from one address) (counter).
pub const AUTH_LOCKS_TOTAL: &str = "switchyard_auth_locks_total";

/// Describes this module's metrics.
pub fn describe() {
    metrics::describe_counter!(
        AUTH_TOTAL,
        "Digest authentication outcomes (challenge, success, failure, stale, replay, locked, bad_request, identity_mismatch, uri_mismatch, nonces_full)"
    );
    metrics::describe_counter!(
        AUTH_LOCKS_TOTAL,
        "Temporary locks after repeated authentication failures, by scope (source, user_source)"
    );
}

/// Failure counters kept at most, per table (sources; users from a source): the least
/// recently failed go first.
const MAX_STRIKE_ENTRIES: usize = 100_000;
/// At most one "nonce table full" warning per this many milliseconds.
const FULL_WARN_EVERY_MS: u64 = 10_000;

/// A user's digest secrets (hex HA1 per algorithm; never the password) and the routes it
/// may dial out through when they narrow its tenant's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserKeys {
    pub ha1_md5: Option<String>,
    pub ha1_sha256: Option<String>,
    /// Narrows the tenant's `outbound` (a route must be in both); None: the tenant's.
    pub outbound: Option<Vec<String>>,
}

impl UserKeys {
    /// The HA1 for an algorithm, if the user has one.
    pub fn ha1(&self, alg: Algorithm) -> Option<&str> {
        match alg {
            Algorithm::Md5 => self.ha1_md5.as_deref(),
            Algorithm::Sha256 => self.ha1_sha256.as_deref(),
        }
    }
}

/// One tenant's users by name; replaced whole when the users change through the API.
pub type UserMap = HashMap<String, UserKeys>;

/// A tenant as the authenticator knows it: domain, realm and users.
#[derive(Debug)]
pub struct TenantUsers {
    pub id: String,
    /// The SIP domain, lowercase.
    pub domain: String,
    pub realm: String,
    /// The routes its authenticated users may dial out through (`outbound`).
    pub outbound: Vec<String>,
    /// Swapped whole by [`Authenticator::set_users`]; a request reads it once, so it sees one
    /// version of the table from its challenge to its verdict.
    users: RwLock<Arc<UserMap>>,
}

impl TenantUsers {
    /// The users in force (a snapshot: a change after this call is not in it).
    pub fn users(&self) -> Arc<UserMap> {
        self.users.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A user's keys.
    pub fn user(&self, username: &str) -> Option<UserKeys> {
        self.users().get(username).cloned()
    }

    /// How many users the tenant has.
    pub fn user_count(&self) -> usize {
        self.users().len()
    }
}

/// A tenant's user file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {message}")]
    Csv {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// What to do with a request after authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The credentials are right: the request comes from `username` of the tenant.
    Authenticated { username: String },
    /// Answer `status` (401 or 407) with one `header` line per value (SHA-256 first, then
    /// MD5, as RFC 8760 §2.4 asks).
    Challenge {
        status: u16,
        header: HeaderName,
        values: Vec<String>,
    },
    /// Answer 403: the source or the user is locked.
    Forbidden { reason: &'static str },
    /// Answer 400: the credentials do not parse.
    BadRequest { reason: &'static str },
}

impl AuthOutcome {
    /// The response to send for this outcome (`None` when authenticated).
    pub fn response(&self, req: &Message, to_tag: &[u8]) -> Option<Message> {
        match self {
            AuthOutcome::Authenticated { .. } => None,
            AuthOutcome::Challenge {
                status,
                header,
                values,
            } => {
                let reason = if *status == 407 {
                    "Proxy Authentication Required"
                } else {
                    "Unauthorized"
                };
                let mut r = response_to(req, *status, reason, Some(to_tag));
                for v in values {
                    r.push(*header, Bytes::from(v.clone()));
                }
                Some(r)
            }
            AuthOutcome::Forbidden { reason } => Some(response_to(
                req,
                403,
                &format!("Forbidden ({reason})"),
                Some(to_tag),
            )),
            AuthOutcome::BadRequest { reason } => Some(response_to(
                req,
                400,
                &format!("Bad Request ({reason})"),
                Some(to_tag),
            )),
        }
    }
}

/// Recent failures of one source (or one user from one source), and its lock.
#[derive(Clone, Copy, Debug, Default)]
struct Strikes {
    count: u32,
    last_ms: u64,
    locked_until_ms: u64,
}

/// Users per tenant, nonces, replay tracking and brute-force locks. Send + Sync; share it
/// through an `Arc`.
pub struct Authenticator {
    /// Algorithms offered in challenges, in order (`registrar.algorithms`).
    algorithms: Vec<Algorithm>,
    nonce_ttl_ms: u64,
    max_failures: u32,
    lock_ms: u64,
    /// The tenants by id and by domain, swapped whole when a tenant is added or removed
    /// through the API (a request reads it once).
    tenants: RwLock<Arc<TenantIndex>>,
    key: NonceKey,
    nc: Mutex<NcTable>,
    by_source: Mutex<LruCache<IpAddr, Strikes, RandomState>>,
    /// (tenant, user, source).
    by_user_source: Mutex<LruCache<UserSource, Strikes, RandomState>>,
    /// When the last "nonce table full" warning was logged (Unix ms).
    full_warned_ms: AtomicU64,
}

/// A user of a tenant, failing from one source address.
type UserSource = (String, String, IpAddr);

/// The last nonce count of each nonce that has authenticated a request, with the nonces in
/// the order they were issued: expired ones leave from the front (amortised O(1) per
/// request, never a scan), and the table never holds more than `max`.
struct NcTable {
    /// The last nonce count seen, by nonce.
    map: HashMap<Bytes, u32>,
    by_issue: BTreeSet<(u64, Bytes)>,
    max: usize,
}

impl NcTable {
    fn new(max: usize) -> NcTable {
        NcTable {
            map: HashMap::new(),
            by_issue: BTreeSet::new(),
            max,
        }
    }

    /// Drops the nonces issued more than `ttl_ms` before `now_ms` (they are stale anyway).
    fn expire(&mut self, now_ms: u64, ttl_ms: u64) {
        while let Some((issued, _)) = self.by_issue.first() {
            if issued.saturating_add(ttl_ms) >= now_ms {
                break;
            }
            if let Some((_, nonce)) = self.by_issue.pop_first() {
                self.map.remove(&nonce);
            }
        }
    }
}

/// Drops the entries at the front of an LRU table (least recently failed) that have nothing
/// left to remember: O(dropped), since the front fails least recently.
fn expire_strikes<K: std::hash::Hash + Eq>(
    table: &mut LruCache<K, Strikes, RandomState>,
    now_ms: u64,
    lock_ms: u64,
) {
    while let Some((_, s)) = table.iter().next() {
        if s.locked_until_ms > now_ms || s.last_ms.saturating_add(lock_ms.max(60_000)) > now_ms {
            break;
        }
        table.remove_lru();
    }
}

fn lru<K: std::hash::Hash + Eq>() -> Mutex<LruCache<K, Strikes, RandomState>> {
    // SipHash with a random key: sources and user names are the peer's to choose.
    Mutex::new(LruCache::with_hasher(
        MAX_STRIKE_ENTRIES,
        RandomState::new(),
    ))
}

/// The tenants by id, and their ids by lowercase domain.
#[derive(Default)]
struct TenantIndex {
    by_id: HashMap<String, Arc<TenantUsers>>,
    by_domain: HashMap<String, String>,
}

impl TenantIndex {
    fn insert(&mut self, t: &TenantConfig, users: UserMap) {
        let domain = t.domain.to_ascii_lowercase();
        self.by_domain.insert(domain.clone(), t.id.clone());
        self.by_id.insert(
            t.id.clone(),
            Arc::new(TenantUsers {
                id: t.id.clone(),
                domain,
                realm: t.realm().to_string(),
                outbound: t.outbound.clone(),
                users: RwLock::new(Arc::new(users)),
            }),
        );
    }
}

/// Unix milliseconds of a `SystemTime`.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Authenticator {
    /// Loads the tenants' users (including each `users_csv`) with a random nonce key.
    pub fn new(config: &RegistrarConfig, tenants: &[TenantConfig]) -> Result<Self, LoadError> {
        Self::with_key(config, tenants, NonceKey::random())
    }

    /// [`Authenticator::new`] with a given nonce key (persist its secret to keep clients'
    /// nonces valid across a restart).
    pub fn with_key(
        config: &RegistrarConfig,
        tenants: &[TenantConfig],
        key: NonceKey,
    ) -> Result<Self, LoadError> {
        let mut index = TenantIndex::default();
        for t in tenants {
            let mut users = config_users(t);
            if let Some(path) = &t.users_csv {
                for (name, keys) in load_csv(path)? {
                    users.insert(name, keys);
                }
            }
            index.insert(t, users);
        }
        let algorithms = config
            .algorithms
            .iter()
            .filter_map(|a| Algorithm::from_token(a.as_bytes()))
            .collect();
        Ok(Authenticator {
            algorithms,
            nonce_ttl_ms: u64::from(config.nonce_ttl_secs) * 1000,
            max_failures: config.max_auth_failures.max(1),
            lock_ms: u64::from(config.lock_secs) * 1000,
            tenants: RwLock::new(Arc::new(index)),
            key,
            nc: Mutex::new(NcTable::new(config.max_nonces.max(1))),
            by_source: lru(),
            by_user_source: lru(),
            full_warned_ms: AtomicU64::new(0),
        })
    }

    fn index(&self) -> Arc<TenantIndex> {
        self.tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The tenant whose SIP domain is `host` (case-insensitive).
    pub fn tenant_for_domain(&self, host: &[u8]) -> Option<Arc<TenantUsers>> {
        let host = std::str::from_utf8(host).ok()?.to_ascii_lowercase();
        let index = self.index();
        let id = index.by_domain.get(&host)?;
        index.by_id.get(id).cloned()
    }

    /// Every tenant.
    pub fn tenants(&self) -> Vec<Arc<TenantUsers>> {
        self.index().by_id.values().cloned().collect()
    }

    /// A tenant by id.
    pub fn tenant(&self, id: &str) -> Option<Arc<TenantUsers>> {
        self.index().by_id.get(id).cloned()
    }

    /// Adds tenant `t` (put through the API) with `users` (its `users_csv` is not read:
    /// users come through the API); false, changing nothing, if its id or domain is taken.
    pub fn add_tenant(&self, t: &TenantConfig, users: UserMap) -> bool {
        let mut current = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        let domain = t.domain.to_ascii_lowercase();
        if current.by_id.contains_key(&t.id) || current.by_domain.contains_key(&domain) {
            return false;
        }
        let mut next = TenantIndex {
            by_id: current.by_id.clone(),
            by_domain: current.by_domain.clone(),
        };
        next.insert(t, users);
        *current = Arc::new(next);
        true
    }

    /// Removes tenant `id`: its users no longer authenticate and its domain is no one's.
    /// Whether it was there.
    pub fn remove_tenant(&self, id: &str) -> bool {
        let mut current = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        if !current.by_id.contains_key(id) {
            return false;
        }
        let mut next = TenantIndex {
            by_id: current.by_id.clone(),
            by_domain: current.by_domain.clone(),
        };
        next.by_id.remove(id);
        next.by_domain.retain(|_, t| t != id);
        *current = Arc::new(next);
        true
    }

    /// True when `username` is a user of `tenant`.
    pub fn has_user(&self, tenant: &str, username: &str) -> bool {
        self.tenant(tenant)
            .is_some_and(|t| t.users().contains_key(username))
    }

    /// Puts `users` in force for `tenant` (the next request sees them; one in progress keeps
    /// the table it read). False when there is no such tenant. A removed user's nonce counts
    /// and locks stay until they expire: they are no use without the user.
    pub fn set_users(&self, tenant: &str, users: UserMap) -> bool {
        let Some(t) = self.tenant(tenant) else {
            return false;
        };
        *t.users.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(users);
        true
    }

    /// True while `ip` is locked.
    pub fn is_source_locked(&self, ip: IpAddr, now: SystemTime) -> bool {
        self.source_locked(ip, unix_ms(now))
    }

    fn source_locked(&self, ip: IpAddr, now_ms: u64) -> bool {
        lock(&self.by_source)
            .peek(&ip)
            .is_some_and(|s| s.locked_until_ms > now_ms)
    }

    /// True while `username` of `tenant` is locked from `ip` (and from there only).
    pub fn is_user_locked(
        &self,
        tenant: &str,
        username: &str,
        ip: IpAddr,
        now: SystemTime,
    ) -> bool {
        let key = (tenant.to_string(), username.to_string(), ip);
        lock(&self.by_user_source)
            .peek(&key)
            .is_some_and(|s| s.locked_until_ms > unix_ms(now))
    }

    /// Authenticates a request of `tenant` from `source_ip`. `proxy` selects 407 with
    /// Proxy-Authenticate / Proxy-Authorization (INVITE) instead of 401 with
    /// WWW-Authenticate / Authorization (REGISTER).
    pub fn check(
        &self,
        req: &Message,
        tenant: &str,
        source_ip: IpAddr,
        proxy: bool,
        now: SystemTime,
    ) -> AuthOutcome {
        let now_ms = unix_ms(now);
        let Some(t) = self.tenant(tenant) else {
            return self.outcome_forbidden("unknown tenant");
        };
        let t = &*t;
        if self.source_locked(source_ip, now_ms) {
            return self.outcome_forbidden("source locked");
        }
        let cred_header = if proxy {
            HeaderName::ProxyAuthorization
        } else {
            HeaderName::Authorization
        };
        // A request may carry credentials for several realms and schemes; our realm's Digest
        // credentials are the ones that count. Other schemes are ignored (RFC 4475 regaut01).
        let mut creds = None;
        for h in req.headers_named(cred_header) {
            match Credentials::parse(&h.value) {
                Ok(c) if c.realm.as_ref() == t.realm.as_bytes() => {
                    creds = Some(c);
                    break;
                }
                Ok(_) | Err(DigestError::NotDigest) => {}
                Err(_) => {
                    metrics::counter!(AUTH_TOTAL, "outcome" => "bad_request").increment(1);
                    return AuthOutcome::BadRequest {
                        reason: "malformed credentials",
                    };
                }
            }
        }
        let Some(creds) = creds else {
            return self.challenge(t, proxy, false, None, now_ms, "challenge");
        };
        // Credentials computed for another Request-URI are someone else's request (replayed
        // or relayed), not a wrong password: refused without a strike.
        if !uri_matches(req, &creds.uri) {
            metrics::counter!(AUTH_TOTAL, "outcome" => "uri_mismatch").increment(1);
            return AuthOutcome::BadRequest {
                reason: "digest uri is not the Request-URI",
            };
        }
        let username = String::from_utf8_lossy(&creds.username).into_owned();
        let users = t.users();
        let Some(keys) = users.get(&username) else {
            // Unknown users count against the source only: a table per guessed name would
            // let a scanner grow memory.
            return self.fail(t, None, source_ip, proxy, now_ms);
        };
        let user_key = (t.id.clone(), username.clone(), source_ip);
        if lock(&self.by_user_source)
            .peek(&user_key)
            .is_some_and(|s| s.locked_until_ms > now_ms)
        {
            return self.outcome_forbidden("user locked");
        }
        let Some(ha1) = keys.ha1(creds.algorithm) else {
            // The client chose an algorithm this user has no hash for: offer what it has.
            return self.challenge(t, proxy, false, Some(keys), now_ms, "challenge");
        };
        let method = req.method().map(|m| m.as_bytes()).unwrap_or(b"");
        if !creds.verify(ha1, method) {
            return self.fail(t, Some(user_key), source_ip, proxy, now_ms);
        }
        // The digest is right; now the nonce must be ours, fresh, and its count new.
        let issued_ms = match self.key.check(&creds.nonce, now_ms, self.nonce_ttl_ms) {
            NonceCheck::Valid { issued_at_ms } => issued_at_ms,
            NonceCheck::Stale | NonceCheck::Invalid => {
                return self.challenge(t, proxy, true, Some(keys), now_ms, "stale");
            }
        };
        // Without qop (RFC 2069 style) there is no count: such a nonce is good for one use.
        let nc = creds.nc.unwrap_or(0);
        match self.record_nc(&creds.nonce, nc, issued_ms, now_ms) {
            NcVerdict::Fresh => {}
            NcVerdict::Replay => {
                return self.challenge(t, proxy, false, Some(keys), now_ms, "replay");
            }
            NcVerdict::Unknown => {
                return self.challenge(t, proxy, true, Some(keys), now_ms, "stale");
            }
            NcVerdict::Full => {
                self.warn_full(now_ms);
                return self.challenge(t, proxy, true, Some(keys), now_ms, "nonces_full");
            }
        }
        lock(&self.by_source).remove(&source_ip);
        lock(&self.by_user_source).remove(&user_key);
        metrics::counter!(AUTH_TOTAL, "outcome" => "success").increment(1);
        AuthOutcome::Authenticated { username }
    }

    /// Authenticates a new out-of-dialog request (an INVITE) whose From is a tenant's user:
    /// the tenant is the one whose domain is the From host. Returns `None` when the From
    /// domain is no tenant's (e.g. a carrier's call: the caller decides whether its source
    /// is trusted), else the tenant id and the outcome (407 challenges; an authenticated
    /// user other than the From user is refused with 403).
    pub fn check_caller(
        &self,
        req: &Message,
        source_ip: IpAddr,
        now: SystemTime,
    ) -> Option<(String, AuthOutcome)> {
        let from = req.from()?.parsed_uri().ok()?;
        let tenant = self.tenant_for_domain(&from.host)?;
        let outcome = match self.check(req, &tenant.id, source_ip, true, now) {
            AuthOutcome::Authenticated { username }
                if from.user_unescaped().as_deref() != Some(username.as_bytes()) =>
            {
                metrics::counter!(AUTH_TOTAL, "outcome" => "identity_mismatch").increment(1);
                AuthOutcome::Forbidden {
                    reason: "From is not the authenticated user",
                }
            }
            other => other,
        };
        Some((tenant.id.clone(), outcome))
    }

    /// Drops nonce counts of expired nonces and failure counters with nothing left to
    /// remember. Call it periodically (the registrar does, every second or so).
    pub fn purge(&self, now: SystemTime) {
        let now_ms = unix_ms(now);
        self.purge_ms(now_ms);
    }

    fn purge_ms(&self, now_ms: u64) {
        lock(&self.nc).expire(now_ms, self.nonce_ttl_ms);
        expire_strikes(&mut lock(&self.by_source), now_ms, self.lock_ms);
        expire_strikes(&mut lock(&self.by_user_source), now_ms, self.lock_ms);
    }

    /// Entries in the nonce-count table (tests, gauges).
    pub fn tracked_nonces(&self) -> usize {
        lock(&self.nc).map.len()
    }

    /// Entries in the failure tables: (sources, users from a source) (tests, gauges).
    pub fn tracked_failures(&self) -> (usize, usize) {
        (
            lock(&self.by_source).len(),
            lock(&self.by_user_source).len(),
        )
    }

    fn warn_full(&self, now_ms: u64) {
        let last = self.full_warned_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= FULL_WARN_EVERY_MS
            && self
                .full_warned_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                max_nonces = lock(&self.nc).max,
                "nonce-count table full: new nonces get stale=true until older ones expire"
            );
        }
    }

    fn outcome_forbidden(&self, reason: &'static str) -> AuthOutcome {
        metrics::counter!(AUTH_TOTAL, "outcome" => "locked").increment(1);
        AuthOutcome::Forbidden { reason }
    }

    /// A challenge with a fresh nonce: one line per configured algorithm, in the configured
    /// order (SHA-256 first by default, RFC 8760 §2.4; clients that only read the first
    /// challenge, such as SIPp 3.6, need MD5 alone). With `keys` known, only the algorithms
    /// the user has a hash for are offered.
    fn challenge(
        &self,
        t: &TenantUsers,
        proxy: bool,
        stale: bool,
        keys: Option<&UserKeys>,
        now_ms: u64,
        outcome: &'static str,
    ) -> AuthOutcome {
        metrics::counter!(AUTH_TOTAL, "outcome" => outcome).increment(1);
        let nonce = self.key.issue(now_ms);
        let values = self
            .algorithms
            .iter()
            .copied()
            .filter(|&a| keys.is_none_or(|k| k.ha1(a).is_some()))
            .map(|algorithm| {
                Challenge {
                    realm: t.realm.clone(),
                    nonce: nonce.clone(),
                    opaque: None,
                    algorithm,
                    stale,
                }
                .header_value()
            })
            .collect();
        AuthOutcome::Challenge {
            status: if proxy { 407 } else { 401 },
            header: if proxy {
                HeaderName::ProxyAuthenticate
            } else {
                HeaderName::WwwAuthenticate
            },
            values,
        }
    }

    /// Counts a failure against the source (and the user from this source, when known);
    /// locks either once it reaches the limit. Answers a new challenge, or 403 when this
    /// failure locked.
    fn fail(
        &self,
        t: &TenantUsers,
        user: Option<UserSource>,
        ip: IpAddr,
        proxy: bool,
        now_ms: u64,
    ) -> AuthOutcome {
        metrics::counter!(AUTH_TOTAL, "outcome" => "failure").increment(1);
        let mut locked = self.strike_source(ip, now_ms);
        if let Some(key) = user {
            locked |= self.strike_user(key, now_ms);
        }
        if locked {
            return AuthOutcome::Forbidden {
                reason: "too many authentication failures",
            };
        }
        self.challenge(t, proxy, false, None, now_ms, "challenge")
    }

    fn strike_source(&self, ip: IpAddr, now_ms: u64) -> bool {
        if self.strike(&self.by_source, ip, now_ms) {
            metrics::counter!(AUTH_LOCKS_TOTAL, "scope" => "source").increment(1);
            tracing::warn!(source = %ip, lock_secs = self.lock_ms / 1000, "authentication locked for source after repeated failures");
            return true;
        }
        false
    }

    fn strike_user(&self, key: UserSource, now_ms: u64) -> bool {
        let (tenant, user, ip) = (key.0.clone(), key.1.clone(), key.2);
        if self.strike(&self.by_user_source, key, now_ms) {
            metrics::counter!(AUTH_LOCKS_TOTAL, "scope" => "user_source").increment(1);
            tracing::warn!(%tenant, %user, source = %ip, lock_secs = self.lock_ms / 1000, "authentication locked for user from this source after repeated failures");
            return true;
        }
        false
    }

    /// One more failure of `key` in `table` (the least recently failed entry goes when the
    /// table is full); true when it starts a lock.
    fn strike<K: std::hash::Hash + Eq>(
        &self,
        table: &Mutex<LruCache<K, Strikes, RandomState>>,
        key: K,
        now_ms: u64,
    ) -> bool {
        let mut table = lock(table);
        expire_strikes(&mut table, now_ms, self.lock_ms);
        if let Some(s) = table.get_mut(&key) {
            return self.bump(s, now_ms);
        }
        let mut s = Strikes::default();
        let locked = self.bump(&mut s, now_ms);
        table.insert(key, s);
        locked
    }

    /// One more failure; true when it starts a lock.
    fn bump(&self, s: &mut Strikes, now_ms: u64) -> bool {
        s.count += 1;
        s.last_ms = now_ms;
        if s.count >= self.max_failures {
            s.count = 0;
            s.locked_until_ms = now_ms + self.lock_ms;
            return true;
        }
        false
    }

    fn record_nc(&self, nonce: &Bytes, nc: u32, issued_ms: u64, now_ms: u64) -> NcVerdict {
        let mut table = lock(&self.nc);
        if let Some(last) = table.map.get_mut(nonce) {
            if nc <= *last {
                return NcVerdict::Replay;
            }
            *last = nc;
            return NcVerdict::Fresh;
        }
        // A valid nonce we hold no count for was either never used (its first count is 1,
        // or 0 without qop) or its entry expired: then ask for a new nonce.
        if nc > 1 {
            return NcVerdict::Unknown;
        }
        table.expire(now_ms, self.nonce_ttl_ms);
        if table.map.len() >= table.max {
            // Never cleared wholesale (that would re-open every live nonce to replay): the
            // client takes a new nonce and tries again once older ones have expired.
            return NcVerdict::Full;
        }
        table.map.insert(nonce.clone(), nc);
        table.by_issue.insert((issued_ms, nonce.clone()));
        NcVerdict::Fresh
    }
}

enum NcVerdict {
    Fresh,
    Replay,
    Unknown,
    /// The table holds `max_nonces` live nonces: answer `stale=true`.
    Full,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether the credentials' `uri` names the request's Request-URI: the same text, or the
/// same scheme, user, host (any case) and port (clients differ in parameters and escaping).
fn uri_matches(req: &Message, uri: &Bytes) -> bool {
    use crate::sip::uri::Uri;
    let Some(ruri) = req.request_uri() else {
        return false;
    };
    if ruri == uri {
        return true;
    }
    match (Uri::parse(ruri), Uri::parse(uri)) {
        (Ok(a), Ok(b)) => {
            a.scheme == b.scheme
                && a.user_unescaped() == b.user_unescaped()
                && a.host.eq_ignore_ascii_case(&b.host)
                && a.port == b.port
        }
        _ => false,
    }
}

/// Reads `username,ha1_md5,ha1_sha256` lines (`#` comments and blank lines skipped; either
/// hash may be empty but not both).
/// The users a tenant's config lists inline (`[[tenants.users]]`), by name.
pub fn config_users(t: &TenantConfig) -> UserMap {
    t.users
        .iter()
        .map(|u: &UserConfig| {
            (
                u.username.clone(),
                UserKeys {
                    ha1_md5: u.ha1_md5.clone(),
                    ha1_sha256: u.ha1_sha256.clone(),
                    outbound: u.outbound.clone(),
                },
            )
        })
        .collect()
}

fn load_csv(path: &Path) -> Result<Vec<(String, UserKeys)>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_csv(&text).map_err(|(line, message)| LoadError::Csv {
        path: path.to_path_buf(),
        line,
        message,
    })
}

fn parse_csv(text: &str) -> Result<Vec<(String, UserKeys)>, (usize, String)> {
    let hex = |s: &str, len: usize| s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit());
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != 3 {
            return Err((i + 1, "expected username,ha1_md5,ha1_sha256".into()));
        }
        let (user, md5, sha) = (fields[0], fields[1], fields[2]);
        if user.is_empty() {
            return Err((i + 1, "empty username".into()));
        }
        if md5.is_empty() && sha.is_empty() {
            return Err((i + 1, "needs ha1_md5 or ha1_sha256".into()));
        }
        if !md5.is_empty() && !hex(md5, 32) {
            return Err((i + 1, "ha1_md5 must be 32 hex digits".into()));
        }
        if !sha.is_empty() && !hex(sha, 64) {
            return Err((i + 1, "ha1_sha256 must be 64 hex digits".into()));
        }
        out.push((
            user.to_string(),
            UserKeys {
                ha1_md5: (!md5.is_empty()).then(|| md5.to_string()),
                ha1_sha256: (!sha.is_empty()).then(|| sha.to_string()),
                outbound: None,
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::auth::{authorization_value, ha1};
    use crate::sip::message::Method;
    use std::time::Duration;

    fn config(max: u32, lock: u32, ttl: u32) -> RegistrarConfig {
        RegistrarConfig {
            max_auth_failures: max,
            lock_secs: lock,
            nonce_ttl_secs: ttl,
            ..RegistrarConfig::default()
        }
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

    fn auth(max: u32) -> Authenticator {
        Authenticator::new(
            &config(max, 60, 300),
            &[
                tenant("a", "a.test", &[("alice", "pw-a")]),
                tenant("b", "b.test", &[("alice", "pw-b")]),
            ],
        )
        .unwrap()
    }

    fn register(authz: Option<String>) -> Message {
        let mut m = Message::request(Method::Register, "sip:a.test");
        if let Some(a) = authz {
            m.push(HeaderName::Authorization, a);
        }
        m
    }

    fn challenge_of(o: &AuthOutcome) -> Challenge {
        match o {
            AuthOutcome::Challenge { values, .. } => {
                Challenge::parse(&Bytes::from(values[0].clone())).unwrap()
            }
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    fn answer(ch: &Challenge, user: &str, pw: &str, nc: u32) -> Message {
        let h = ha1(ch.algorithm, user, &ch.realm, pw);
        register(Some(authorization_value(
            ch,
            user,
            &h,
            "REGISTER",
            "sip:a.test",
            nc,
            "cn",
        )))
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn challenge_offers_sha256_then_md5() {
        let a = auth(10);
        let o = a.check(&register(None), "a", IP, false, SystemTime::now());
        let AuthOutcome::Challenge {
            status,
            header,
            values,
        } = &o
        else {
            panic!("{o:?}")
        };
        assert_eq!((*status, *header), (401, HeaderName::WwwAuthenticate));
        assert_eq!(values.len(), 2);
        assert!(values[0].contains("algorithm=SHA-256"), "{values:?}");
        assert!(values[1].contains("algorithm=MD5"), "{values:?}");
        assert!(values[0].contains("realm=\"a.test\""));
        let p = a.check(&register(None), "a", IP, true, SystemTime::now());
        assert!(matches!(
            p,
            AuthOutcome::Challenge {
                status: 407,
                header: HeaderName::ProxyAuthenticate,
                ..
            }
        ));
    }

    #[test]
    fn right_password_authenticates_and_nc_replay_is_refused() {
        let a = auth(10);
        let now = SystemTime::now();
        let ch = challenge_of(&a.check(&register(None), "a", IP, false, now));
        let ok = a.check(&answer(&ch, "alice", "pw-a", 1), "a", IP, false, now);
        assert_eq!(
            ok,
            AuthOutcome::Authenticated {
                username: "alice".into()
            }
        );
        // The same nc again is a replay; a higher one is fine.
        let replay = a.check(&answer(&ch, "alice", "pw-a", 1), "a", IP, false, now);
        assert!(!challenge_of(&replay).stale);
        assert!(matches!(
            a.check(&answer(&ch, "alice", "pw-a", 2), "a", IP, false, now),
            AuthOutcome::Authenticated { .. }
        ));
        assert_eq!(a.tracked_nonces(), 1);
        // Tenants are separate: alice of tenant b has another password and realm.
        let ch_b = challenge_of(&a.check(&register(None), "b", IP, false, now));
        assert_eq!(ch_b.realm, "b.test");
        assert!(matches!(
            a.check(&answer(&ch_b, "alice", "pw-a", 1), "b", IP, false, now),
            AuthOutcome::Challenge { .. }
        ));
    }

    #[test]
    fn stale_nonce_gets_stale_true_and_is_not_a_failure() {
        let a = Authenticator::new(
            &config(1, 60, 1),
            &[tenant("a", "a.test", &[("alice", "pw-a")])],
        )
        .unwrap();
        let t0 = SystemTime::now();
        let ch = challenge_of(&a.check(&register(None), "a", IP, false, t0));
        let later = t0 + Duration::from_millis(1_500);
        let o = a.check(&answer(&ch, "alice", "pw-a", 1), "a", IP, false, later);
        assert!(challenge_of(&o).stale);
        // max_auth_failures is 1: had that counted, the source would be locked now.
        assert!(!a.is_source_locked(IP, later));
        // A wrong password with a stale nonce is a failure, not stale.
        let o = a.check(&answer(&ch, "alice", "nope", 1), "a", IP, false, later);
        assert!(matches!(o, AuthOutcome::Forbidden { .. }), "{o:?}");
    }

    #[test]
    fn repeated_failures_lock_the_source_until_the_lock_lifts() {
        let a = auth(3);
        let t0 = SystemTime::now();
        let ch = challenge_of(&a.check(&register(None), "a", IP, false, t0));
        for i in 0..2 {
            let o = a.check(&answer(&ch, "alice", "bad", i + 1), "a", IP, false, t0);
            assert!(matches!(o, AuthOutcome::Challenge { .. }), "{i}: {o:?}");
        }
        let o = a.check(&answer(&ch, "alice", "bad", 3), "a", IP, false, t0);
        assert!(matches!(o, AuthOutcome::Forbidden { .. }), "{o:?}");
        // The right password is refused while locked, from this source...
        let o = a.check(&answer(&ch, "alice", "pw-a", 4), "a", IP, false, t0);
        assert!(matches!(o, AuthOutcome::Forbidden { .. }), "{o:?}");
        // ...but never for this user from another source: no lockout lever.
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let ch2 = challenge_of(&a.check(&register(None), "a", other, false, t0));
        let o = a.check(&answer(&ch2, "alice", "pw-a", 1), "a", other, false, t0);
        assert!(matches!(o, AuthOutcome::Authenticated { .. }), "{o:?}");
        // After the lock: a fresh nonce works.
        let t1 = t0 + Duration::from_secs(61);
        let ch = challenge_of(&a.check(&register(None), "a", IP, false, t1));
        assert!(matches!(
            a.check(&answer(&ch, "alice", "pw-a", 1), "a", IP, false, t1),
            AuthOutcome::Authenticated { .. }
        ));
    }

    #[test]
    fn unknown_users_count_against_the_source_only() {
        let a = auth(2);
        let now = SystemTime::now();
        let ch = challenge_of(&a.check(&register(None), "a", IP, false, now));
        a.check(&answer(&ch, "mallory", "x", 1), "a", IP, false, now);
        let o = a.check(&answer(&ch, "eve", "x", 1), "a", IP, false, now);
        assert!(matches!(o, AuthOutcome::Forbidden { .. }));
        assert_eq!(a.tracked_failures(), (1, 0));
        a.purge(now + Duration::from_secs(3600));
        assert_eq!(a.tracked_failures(), (0, 0));
        assert_eq!(a.tracked_nonces(), 0);
    }

    #[test]
    fn invites_from_tenant_users_get_407() {
        let a = auth(10);
        let now = SystemTime::now();
        let invite = |from: &str, authz: Option<String>| {
            let mut m = Message::request(Method::Invite, "sip:bob@a.test");
            m.push(HeaderName::From, format!("<sip:{from}>;tag=1"));
            if let Some(v) = authz {
                m.push(HeaderName::ProxyAuthorization, v);
            }
            m
        };
        assert!(a
            .check_caller(&invite("x@carrier.example", None), IP, now)
            .is_none());
        let (tenant, o) = a
            .check_caller(&invite("alice@a.test", None), IP, now)
            .unwrap();
        assert_eq!(tenant, "a");
        let AuthOutcome::Challenge {
            status,
            header,
            values,
        } = &o
        else {
            panic!("{o:?}")
        };
        assert_eq!((*status, *header), (407, HeaderName::ProxyAuthenticate));
        let ch = Challenge::parse(&Bytes::from(values[0].clone())).unwrap();
        let h = ha1(ch.algorithm, "alice", "a.test", "pw-a");
        let v = authorization_value(&ch, "alice", &h, "INVITE", "sip:bob@a.test", 1, "c");
        let (_, o) = a
            .check_caller(&invite("alice@a.test", Some(v.clone())), IP, now)
            .unwrap();
        assert_eq!(
            o,
            AuthOutcome::Authenticated {
                username: "alice".into()
            }
        );
        // alice's credentials with someone else's From.
        let v2 = authorization_value(&ch, "alice", &h, "INVITE", "sip:bob@a.test", 2, "c");
        let (_, o) = a
            .check_caller(&invite("carol@a.test", Some(v2)), IP, now)
            .unwrap();
        assert!(matches!(o, AuthOutcome::Forbidden { .. }), "{o:?}");
    }

    #[test]
    fn failures_from_one_source_never_lock_the_user_out_elsewhere() {
        let a = auth(10);
        let t0 = SystemTime::now();
        let attacker: IpAddr = "127.0.0.9".parse().unwrap();
        let phone: IpAddr = "127.0.0.2".parse().unwrap();
        let ch = challenge_of(&a.check(&register(None), "a", attacker, false, t0));
        let mut last = None;
        for i in 0..10 {
            last = Some(a.check(
                &answer(&ch, "alice", "guess", i + 1),
                "a",
                attacker,
                false,
                t0,
            ));
        }
        assert!(
            matches!(last, Some(AuthOutcome::Forbidden { .. })),
            "{last:?}"
        );
        assert!(a.is_source_locked(attacker, t0));
        assert!(a.is_user_locked("a", "alice", attacker, t0));
        assert!(!a.is_user_locked("a", "alice", phone, t0));
        // alice's own phone registers as ever, and keeps doing so while the attacker goes on.
        for round in 0..3u32 {
            let ch = challenge_of(&a.check(&register(None), "a", phone, false, t0));
            let o = a.check(&answer(&ch, "alice", "pw-a", 1), "a", phone, false, t0);
            assert!(
                matches!(o, AuthOutcome::Authenticated { .. }),
                "{round}: {o:?}"
            );
            let o = a.check(
                &answer(&ch, "alice", "guess", 20 + round),
                "a",
                attacker,
                false,
                t0,
            );
            assert!(matches!(o, AuthOutcome::Forbidden { .. }), "{o:?}");
        }
        // The attacker's address is locked for every user, the right password included.
        let o = a.check(&answer(&ch, "alice", "pw-a", 30), "a", attacker, false, t0);
        assert_eq!(
            o,
            AuthOutcome::Forbidden {
                reason: "source locked"
            }
        );
    }

    #[test]
    fn a_users_failures_from_one_source_lock_it_there_only() {
        let a = Authenticator::new(
            &config(3, 60, 300),
            &[tenant("a", "a.test", &[("alice", "pw-a"), ("bob", "pw-b")])],
        )
        .unwrap();
        let t0 = SystemTime::now();
        let office: IpAddr = "127.0.0.5".parse().unwrap();
        let ch = challenge_of(&a.check(&register(None), "a", office, false, t0));
        let chb = challenge_of(&a.check(&register(None), "a", office, false, t0));
        // Failures for alice interleave with successes of bob from the same address (a
        // NAT): a success clears the source's count, not alice's.
        for i in 0..2 {
            let o = a.check(&answer(&ch, "alice", "bad", 10 + i), "a", office, false, t0);
            assert!(matches!(o, AuthOutcome::Challenge { .. }), "{o:?}");
            let ok = a.check(&answer(&chb, "bob", "pw-b", 1 + i), "a", office, false, t0);
            assert!(matches!(ok, AuthOutcome::Authenticated { .. }), "{ok:?}");
        }
        let o = a.check(&answer(&ch, "alice", "bad", 30), "a", office, false, t0);
        assert_eq!(
            o,
            AuthOutcome::Forbidden {
                reason: "too many authentication failures"
            }
        );
        assert!(a.is_user_locked("a", "alice", office, t0));
        assert!(!a.is_source_locked(office, t0));
        let o = a.check(&answer(&ch, "alice", "pw-a", 31), "a", office, false, t0);
        assert_eq!(
            o,
            AuthOutcome::Forbidden {
                reason: "user locked"
            }
        );
        let ok = a.check(&answer(&chb, "bob", "pw-b", 3), "a", office, false, t0);
        assert!(matches!(ok, AuthOutcome::Authenticated { .. }), "{ok:?}");
    }

    #[test]
    fn failure_tables_are_bounded_and_evict_the_oldest() {
        let a = auth(1_000);
        let now = unix_ms(SystemTime::now());
        for i in 0..(MAX_STRIKE_ENTRIES as u32 + 10) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            a.strike_source(ip, now);
        }
        assert_eq!(a.tracked_failures().0, MAX_STRIKE_ENTRIES);
        // The first sources went, the last ones are remembered.
        let first = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000));
        let last = IpAddr::V4(std::net::Ipv4Addr::from(
            0x0a00_0000 + MAX_STRIKE_ENTRIES as u32 + 9,
        ));
        assert!(lock(&a.by_source).peek(&first).is_none());
        assert_eq!(lock(&a.by_source).peek(&last).map(|s| s.count), Some(1));
    }

    #[test]
    fn the_digest_uri_must_be_the_request_uri() {
        let a = auth(1);
        let now = SystemTime::now();
        let ch = challenge_of(&a.check(&register(None), "a", IP, false, now));
        let h = ha1(ch.algorithm, "alice", "a.test", "pw-a");
        // Right password, computed for another Request-URI: 400, and no strike (max 1).
        let v = authorization_value(&ch, "alice", &h, "REGISTER", "sip:b.test", 1, "cn");
        let o = a.check(&register(Some(v)), "a", IP, false, now);
        assert_eq!(
            o,
            AuthOutcome::BadRequest {
                reason: "digest uri is not the Request-URI"
            }
        );
        assert!(!a.is_source_locked(IP, now));
        // The same URI written differently is the same URI.
        let v = authorization_value(&ch, "alice", &h, "REGISTER", "sip:A.TEST", 1, "cn");
        let o = a.check(&register(Some(v)), "a", IP, false, now);
        assert!(matches!(o, AuthOutcome::Authenticated { .. }), "{o:?}");
        assert!(!uri_matches(
            &register(None),
            &Bytes::from_static(b"not a uri")
        ));
    }

    #[test]
    fn the_nonce_table_is_bounded_never_cleared_and_answers_stale_when_full() {
        let mut c = config(10, 60, 10);
        c.max_nonces = 2;
        let a = Authenticator::new(&c, &[tenant("a", "a.test", &[("alice", "pw-a")])]).unwrap();
        let t0 = SystemTime::now();
        let chs: Vec<Challenge> = (0..3)
            .map(|i| {
                let t = t0 + Duration::from_millis(i);
                challenge_of(&a.check(&register(None), "a", IP, false, t))
            })
            .collect();
        for ch in &chs[..2] {
            let o = a.check(&answer(ch, "alice", "pw-a", 1), "a", IP, false, t0);
            assert!(matches!(o, AuthOutcome::Authenticated { .. }), "{o:?}");
        }
        // Full: a third nonce is not remembered, and its user is told to take a new one.
        let o = a.check(&answer(&chs[2], "alice", "pw-a", 1), "a", IP, false, t0);
        assert!(challenge_of(&o).stale, "{o:?}");
        assert_eq!(a.tracked_nonces(), 2);
        // The nonces held keep their replay protection (nothing was cleared).
        let o = a.check(&answer(&chs[0], "alice", "pw-a", 1), "a", IP, false, t0);
        assert!(!challenge_of(&o).stale, "a replay is refused: {o:?}");
        assert!(matches!(
            a.check(&answer(&chs[1], "alice", "pw-a", 2), "a", IP, false, t0),
            AuthOutcome::Authenticated { .. }
        ));
        // Once the old nonces expire, a new one is remembered again.
        let later = t0 + Duration::from_secs(11);
        let ch = challenge_of(&a.check(&register(None), "a", IP, false, later));
        let o = a.check(&answer(&ch, "alice", "pw-a", 1), "a", IP, false, later);
        assert!(matches!(o, AuthOutcome::Authenticated { .. }), "{o:?}");
        assert_eq!(a.tracked_nonces(), 1);
    }

    #[test]
    fn unknown_schemes_are_ignored() {
        let a = auth(10);
        let m = register(Some("NoOneKnowsThisScheme opaque-data=here".into()));
        assert!(matches!(
            a.check(&m, "a", IP, false, SystemTime::now()),
            AuthOutcome::Challenge { status: 401, .. }
        ));
    }

    #[test]
    fn bad_credentials_are_400() {
        let a = auth(10);
        let m = register(Some(r#"Digest username="alice", realm="a.test""#.into()));
        assert!(matches!(
            a.check(&m, "a", IP, false, SystemTime::now()),
            AuthOutcome::BadRequest { .. }
        ));
    }

    #[test]
    fn users_can_be_replaced_while_running() {
        let a = auth(10);
        let before = a.tenant("a").unwrap().users();
        let keys = UserKeys {
            ha1_md5: Some(ha1(Algorithm::Md5, "bob", "a.test", "pw")),
            ha1_sha256: None,
            outbound: Some(vec!["9".into()]),
        };
        assert!(a.set_users("a", [("bob".to_string(), keys.clone())].into()));
        assert!(a.has_user("a", "bob"));
        assert!(!a.has_user("a", "alice"));
        assert_eq!(a.tenant("a").unwrap().user("bob"), Some(keys));
        assert!(
            before.contains_key("alice"),
            "a snapshot taken before is unchanged"
        );
        assert!(a.has_user("b", "alice"), "other tenants are untouched");
        assert!(!a.set_users("nope", UserMap::new()));
    }

    #[test]
    fn csv_users() {
        let md5 = "0".repeat(32);
        let sha = "a".repeat(64);
        let text = format!("# users\n\nbob,{md5},\ncarol,,{sha}\n");
        let users = parse_csv(&text).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].1.ha1_md5.as_deref(), Some(md5.as_str()));
        assert_eq!(users[1].1.ha1_md5, None);
        assert_eq!(parse_csv("dave,,\n").unwrap_err().0, 1);
        assert_eq!(parse_csv("# x\neve,123,\n").unwrap_err().0, 2);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.csv");
        std::fs::write(&path, &text).unwrap();
        let mut t = tenant("a", "a.test", &[]);
        t.users_csv = Some(path);
        let a = Authenticator::new(&config(10, 60, 300), &[t]).unwrap();
        assert!(a.has_user("a", "carol"));
        assert!(!a.has_user("b", "carol"));
        assert_eq!(a.tenant_for_domain(b"A.TEST").unwrap().id, "a");
    }

    #[test]
    fn tenants_are_added_and_removed_live() {
        let a = Authenticator::new(&config(10, 60, 300), &[tenant("a", "a.test", &[])]).unwrap();
        let c = tenant("c", "C.test", &[("carol", "pw-c")]);
        let before = a.tenant("a").unwrap();
        assert!(a.add_tenant(&c, config_users(&c)));
        assert_eq!(a.tenant_for_domain(b"c.TEST").unwrap().id, "c");
        assert!(a.has_user("c", "carol"));
        assert!(Arc::ptr_eq(&before, &a.tenant("a").unwrap()), "others kept");
        // Neither an id nor a domain may be taken twice.
        assert!(!a.add_tenant(&tenant("c", "other.test", &[]), UserMap::new()));
        assert!(!a.add_tenant(&tenant("d", "a.test", &[]), UserMap::new()));
        assert!(a.tenant("d").is_none());
        assert!(a.remove_tenant("c"));
        assert!(!a.remove_tenant("c"));
        assert!(a.tenant_for_domain(b"c.test").is_none());
        assert!(!a.has_user("c", "carol"));
        assert_eq!(a.tenants().len(), 1);
    }
}
