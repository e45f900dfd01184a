//! Access keys (AK/SK): per-tenant credentials with a role, whose secret signs each request
//! with HMAC-SHA256 instead of travelling with it.
//!
//! A signed request carries three headers:
//!
//! ```text
//! Authorization: SWY1-HMAC-SHA256 Credential=<key id>, Signature=<hex HMAC>
//! X-Swy-Date: <Unix seconds>
//! X-Swy-Nonce: <8 to 64 letters, digits, - or _, new for every request>
//! ```
//!
//! and the HMAC-SHA256, keyed with the secret, is over [`string_to_sign`]: the scheme, the
//! method, the path, the query string exactly as sent, the date, the nonce and the hex
//! SHA-256 of the body, one per line. The node refuses a date more than
//! [`WINDOW_SECS`] away from its clock, and a nonce a key has used within the window
//! ([`NonceCache`], bounded). Only a request whose signature checks touches the nonce cache,
//! so nobody without a secret can fill it.
//!
//! Roles ([`Role`]) limit the routes: `read_only` reads; `agent` also drives agents and
//! calls (click-to-call, hold, transfer, consult, three-way); `supervisor` also monitors and
//! releases calls; `admin` also manages its tenant's keys. A key never reaches the node's
//! routes, and only its own tenant's objects, as a tenant's token.
//!
//! Keys are made, rotated and revoked through `/tenants/{tenant}/keys` (the node's token, or
//! an admin key of the tenant); the secret (`sk_` and 64 hex digits) is shown once and kept
//! sealed ([`crate::store::access_keys`]) under the node's seal key ([`load_seal_key`]).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::db::Db;
use super::{route, ApiState, Caller, Problem};
use crate::store::access_keys::AccessKeyRow;

/// The `Authorization` scheme of a signed request.
pub const SCHEME: &str = "SWY1-HMAC-SHA256";
/// The header with the request's time (Unix seconds).
pub const DATE_HEADER: &str = "x-swy-date";
/// The header with the request's nonce.
pub const NONCE_HEADER: &str = "x-swy-nonce";
/// How far a request's date may be from the node's clock.
pub const WINDOW_SECS: i64 = 300;
/// Nonces remembered (the oldest is forgotten first beyond this).
pub const NONCE_CAPACITY: usize = 100_000;
/// Keys a tenant may have.
pub const MAX_KEYS: usize = 100;
/// The largest body a signed request may have (it is read whole to be hashed).
pub const MAX_BODY: usize = 2 * 1024 * 1024;
/// Name of the seal key's file in the data directory.
pub const SEAL_KEY_FILE: &str = "access-keys.key";
/// How long a looked-up key (or its absence) is trusted before the store is asked again: a
/// revocation on another node of a cluster takes at most this long.
const CACHE_TTL: Duration = Duration::from_secs(2);
/// Keys (and absent ids) cached at most; beyond, the cache starts over.
const CACHE_CAPACITY: usize = 10_000;

/// Counter, label `reason`: signed requests refused — `malformed` (headers missing or
/// unparsable), `expired` (date outside the window), `unknown_key` (no such key, or revoked),
/// `bad_signature`, `replayed` (nonce used before), `body_too_large`, `unavailable` (the key
/// could not be looked up).
pub const SIGNATURE_FAILURES_TOTAL: &str = "switchyard_api_signature_failures_total";
/// Counter, label `action` (`created`, `rotated`, `revoked`): access key changes.
pub const KEY_CHANGES_TOTAL: &str = "switchyard_api_access_key_changes_total";
/// Counter, label `role`: requests accepted with a valid signature.
pub const SIGNED_REQUESTS_TOTAL: &str = "switchyard_api_signed_requests_total";

/// Describe this module's metrics with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        SIGNATURE_FAILURES_TOTAL,
        "Signed (AK/SK) API requests refused, by reason"
    );
    metrics::describe_counter!(KEY_CHANGES_TOTAL, "Access keys created, rotated, revoked");
    metrics::describe_counter!(
        SIGNED_REQUESTS_TOTAL,
        "Signed (AK/SK) API requests accepted, by the key's role"
    );
}

/// What a key may do; each role may do what the ones before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    ReadOnly,
    Agent,
    Supervisor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read_only",
            Role::Agent => "agent",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::ReadOnly, Role::Agent, Role::Supervisor, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// The routes only an admin key reaches (besides the node's token).
pub const KEY_ADMIN_ROUTES: &[(&str, &str)] = &[
    ("POST", "/tenants/{tenant}/keys"),
    ("POST", "/tenants/{tenant}/keys/{id}/rotate"),
    ("DELETE", "/tenants/{tenant}/keys/{id}"),
];

/// What an agent's desktop does: its agent's state and its calls.
const AGENT_ROUTES: &[(&str, &str)] = &[
    ("POST", "/agents/{tenant}/{agent}/{command}"),
    ("POST", "/calls"),
    ("POST", "/calls/{call_id}/hold"),
    ("POST", "/calls/{call_id}/unhold"),
    ("POST", "/calls/{call_id}/transfer"),
    ("POST", "/calls/{call_id}/consult"),
    ("POST", "/calls/{call_id}/consult/complete"),
    ("POST", "/calls/{call_id}/consult/cancel"),
    ("POST", "/calls/{call_id}/consult/conference"),
    ("POST", "/calls/{call_id}/conference"),
    ("PUT", "/calls/{call_id}/conference"),
    ("DELETE", "/calls/{call_id}/conference"),
];

/// What a supervisor adds: monitoring and releasing calls, running conference rooms.
const SUPERVISOR_ROUTES: &[(&str, &str)] = &[
    ("POST", "/calls/{call_id}/monitor"),
    ("PUT", "/calls/{call_id}/monitor"),
    ("DELETE", "/calls/{call_id}/monitor"),
    ("DELETE", "/calls/{call_id}"),
    ("POST", "/conferences/{tenant}"),
    ("DELETE", "/conferences/{tenant}/{id}"),
    ("POST", "/conferences/{tenant}/{id}/participants"),
    (
        "PUT",
        "/conferences/{tenant}/{id}/participants/{participant}",
    ),
    (
        "DELETE",
        "/conferences/{tenant}/{id}/participants/{participant}",
    ),
];

/// The least role that may use `method` on `template`; None for a route no key reaches
/// (the node's). Reads are `read_only`; a change not listed needs `admin`.
pub fn least_role(method: &Method, template: &str) -> Option<Role> {
    let m = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    let listed = |table: &[(&str, &str)]| table.iter().any(|(tm, t)| *tm == m && *t == template);
    if listed(KEY_ADMIN_ROUTES) {
        return Some(Role::Admin);
    }
    if !super::auth::tenant_may(method, template) {
        return None;
    }
    Some(if m == "GET" {
        Role::ReadOnly
    } else if listed(AGENT_ROUTES) {
        Role::Agent
    } else if listed(SUPERVISOR_ROUTES) {
        Role::Supervisor
    } else {
        Role::Admin
    })
}

/// The text a request's signature is over.
pub fn string_to_sign(
    method: &str,
    path: &str,
    query: &str,
    date: &str,
    nonce: &str,
    body: &[u8],
) -> String {
    format!(
        "{SCHEME}\n{method}\n{path}\n{query}\n{date}\n{nonce}\n{}",
        hex(&Sha256::digest(body))
    )
}

/// The signature of a request (hex), as a client computes it.
pub fn sign(
    secret: &str,
    method: &str,
    path: &str,
    query: &str,
    date: &str,
    nonce: &str,
    body: &[u8],
) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(string_to_sign(method, path, query, date, nonce, body).as_bytes());
    hex(&mac.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The node's key that seals access keys' secrets. `Debug` hides it.
#[derive(Clone)]
pub struct SealKey([u8; 32]);

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

impl SealKey {
    pub fn from_bytes(bytes: [u8; 32]) -> SealKey {
        SealKey(bytes)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.0))
    }

    /// `secret` sealed for the key `tenant`/`id` (hex of a random nonce and the ciphertext).
    fn seal(&self, tenant: &str, id: &str, secret: &str) -> String {
        let nonce: [u8; 12] = rand::random();
        let aad = format!("{tenant}/{id}");
        let ct = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM seals any length this small");
        format!("{}{}", hex(&nonce), hex(&ct))
    }

    /// The secret of a sealed row; None if it was sealed under another key or altered.
    fn open(&self, row: &AccessKeyRow) -> Option<Vec<u8>> {
        let raw = unhex(&row.sealed)?;
        if raw.len() < 12 {
            return None;
        }
        let (nonce, ct) = raw.split_at(12);
        let aad = format!("{}/{}", row.tenant, row.id);
        self.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .ok()
    }
}

/// The seal key in `data_dir/access-keys.key` (64 hex digits, mode 0600), generated there at
/// the first start. The nodes of a cluster need the same file.
pub fn load_seal_key(data_dir: &Path) -> io::Result<SealKey> {
    let path = data_dir.join(SEAL_KEY_FILE);
    std::fs::create_dir_all(data_dir)?;
    let bytes: [u8; 32] = rand::random();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            writeln!(file, "{}", hex(&bytes))?;
            file.sync_all()?;
            Ok(SealKey(bytes))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(&path)?;
            let key = unhex(text.trim())
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: not 64 hex digits", path.display()),
                    )
                })?;
            Ok(SealKey(key))
        }
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

/// A key as the verifier needs it.
struct KeyEntry {
    tenant: Arc<str>,
    role: Role,
    secret: Vec<u8>,
}

/// A looked-up key (None: no such key, or revoked) and when it was looked up.
type Cached = (Option<Arc<KeyEntry>>, Instant);

/// The nonces used within the window, by key: bounded, the oldest forgotten first.
#[derive(Debug)]
pub struct NonceCache {
    seen: hashlink::LruCache<(String, String), i64>,
}

impl NonceCache {
    pub fn new(capacity: usize) -> NonceCache {
        NonceCache {
            seen: hashlink::LruCache::new(capacity),
        }
    }

    /// Records `nonce` of `key` at `now` (Unix s); false if it was used within the window.
    pub fn fresh(&mut self, key: &str, nonce: &str, now: i64) -> bool {
        let k = (key.to_string(), nonce.to_string());
        if let Some(at) = self.seen.get(&k) {
            if now - *at <= 2 * WINDOW_SECS {
                return false;
            }
        }
        self.seen.insert(k, now);
        true
    }
}

/// The access keys' state of an API: the seal key, a short-lived cache of looked-up keys,
/// and the nonces seen.
pub struct AccessKeys {
    seal: SealKey,
    cache: Mutex<HashMap<String, Cached>>,
    nonces: Mutex<NonceCache>,
}

impl fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessKeys")
    }
}

impl AccessKeys {
    pub fn new(seal: SealKey) -> AccessKeys {
        AccessKeys {
            seal,
            cache: Mutex::new(HashMap::new()),
            nonces: Mutex::new(NonceCache::new(NONCE_CAPACITY)),
        }
    }

    fn forget(&self, id: &str) {
        if let Ok(mut c) = self.cache.lock() {
            c.remove(id);
        }
    }

    /// The key `id` (None: none, or revoked), from the cache or the store.
    async fn find(&self, db: &Arc<Db>, id: &str) -> Result<Option<Arc<KeyEntry>>, Problem> {
        if let Some(entry) = self.cached(id) {
            return Ok(entry);
        }
        let wanted = id.to_string();
        // Only ids of the shape this node gives out are looked up.
        let shaped = id.len() == 19
            && id.starts_with("ak_")
            && id[3..].bytes().all(|b| b.is_ascii_hexdigit());
        if !shaped {
            return Ok(None);
        }
        let row = db.run_lookup(move |s| s.access_key(&wanted)).await?;
        let entry = row.filter(|r| r.revoked_ms.is_none()).and_then(|r| {
            Some(Arc::new(KeyEntry {
                tenant: Arc::from(r.tenant.as_str()),
                role: Role::parse(&r.role)?,
                secret: self.seal.open(&r)?,
            }))
        });
        self.remember(id, entry.clone());
        Ok(entry)
    }

    /// The cached lookup of `id` if still fresh (`Some(None)`: known not to exist).
    #[allow(clippy::option_option)]
    fn cached(&self, id: &str) -> Option<Option<Arc<KeyEntry>>> {
        let c = self.cache.lock().ok()?;
        let (entry, at) = c.get(id)?;
        (at.elapsed() < CACHE_TTL).then(|| entry.clone())
    }

    fn remember(&self, id: &str, entry: Option<Arc<KeyEntry>>) {
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CACHE_CAPACITY {
                c.clear();
            }
            c.insert(id.to_string(), (entry, Instant::now()));
        }
    }
}

/// Why a signed request was refused (the `reason` of [`SIGNATURE_FAILURES_TOTAL`]).
fn refuse(reason: &'static str, status: StatusCode, detail: &str) -> Response {
    metrics::counter!(SIGNATURE_FAILURES_TOTAL, "reason" => reason).increment(1);
    let mut r = Problem::new(status, detail).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(SCHEME));
    }
    r
}

/// Whether `headers` carry a signed request's `Authorization`.
pub fn is_signed(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with(SCHEME))
}

/// `Credential=<id>, Signature=<hex>` of a signed `Authorization` value.
fn credential(value: &str) -> Option<(&str, &str)> {
    let rest = value.trim().strip_prefix(SCHEME)?.trim();
    let (mut id, mut sig) = (None, None);
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", v)) => id = Some(v.trim()),
            Some(("Signature", v)) => sig = Some(v.trim()),
            _ => return None,
        }
    }
    Some((id?, sig?))
}

/// Checks a signed request; the [`Caller`] it speaks for and the request (its body read and
/// put back), or the refusal.
pub async fn verify(state: &ApiState, request: Request) -> Result<(Caller, Request), Response> {
    let malformed = |detail: &str| refuse("malformed", StatusCode::UNAUTHORIZED, detail);
    let (Some(keys), Some(db)) = (state.keys.as_ref(), state.store.as_ref()) else {
        return Err(malformed("this node does not accept access keys"));
    };
    let headers = request.headers();
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let Some((id, signature)) = header_text(header::AUTHORIZATION.as_str())
        .as_deref()
        .and_then(credential)
        .map(|(i, s)| (i.to_string(), s.to_string()))
    else {
        return Err(malformed(
            "Authorization: SWY1-HMAC-SHA256 Credential=<key id>, Signature=<hex>",
        ));
    };
    let (Some(date), Some(nonce)) = (header_text(DATE_HEADER), header_text(NONCE_HEADER)) else {
        return Err(malformed(
            "a signed request needs X-Swy-Date and X-Swy-Nonce",
        ));
    };
    let nonce_ok = (8..=64).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let Some(ts) = date.parse::<i64>().ok().filter(|_| nonce_ok) else {
        return Err(malformed(
            "X-Swy-Date is Unix seconds; X-Swy-Nonce is 8 to 64 letters, digits, - or _",
        ));
    };
    let now = crate::store::now_unix_ms() / 1000;
    if (now - ts).abs() > WINDOW_SECS {
        return Err(refuse(
            "expired",
            StatusCode::FORBIDDEN,
            "the request's date is more than 5 minutes from the node's clock",
        ));
    }
    // A key of a tenant that no longer exists is no key.
    let live = |e: &KeyEntry| {
        state
            .config
            .as_ref()
            .is_none_or(|c| c.tenant_exists(&e.tenant))
    };
    let entry = match keys.find(db, &id).await {
        Ok(Some(e)) if live(&e) => e,
        Ok(_) => {
            return Err(refuse(
                "unknown_key",
                StatusCode::FORBIDDEN,
                "the signature is not valid",
            ))
        }
        Err(p) => {
            metrics::counter!(SIGNATURE_FAILURES_TOTAL, "reason" => "unavailable").increment(1);
            return Err(p.into_response());
        }
    };
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return Err(refuse(
                "body_too_large",
                StatusCode::PAYLOAD_TOO_LARGE,
                "a signed request's body is at most 2 MiB",
            ))
        }
    };
    let text = string_to_sign(
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query().unwrap_or(""),
        &date,
        &nonce,
        &body,
    );
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&entry.secret).expect("any key length");
    mac.update(text.as_bytes());
    let valid = unhex(&signature).is_some_and(|sig| mac.verify_slice(&sig).is_ok());
    if !valid {
        return Err(refuse(
            "bad_signature",
            StatusCode::FORBIDDEN,
            "the signature is not valid",
        ));
    }
    let fresh = keys
        .nonces
        .lock()
        .map(|mut n| n.fresh(&id, &nonce, now))
        .unwrap_or(false);
    if !fresh {
        return Err(refuse(
            "replayed",
            StatusCode::FORBIDDEN,
            "this nonce was used already",
        ));
    }
    metrics::counter!(SIGNED_REQUESTS_TOTAL, "role" => entry.role.as_str()).increment(1);
    let caller = Caller::Key {
        tenant: Arc::clone(&entry.tenant),
        key: Arc::from(id.as_str()),
        role: entry.role,
    };
    Ok((caller, Request::from_parts(parts, Body::from(body))))
}

// ---- the key management routes ----

pub(super) fn routes(router: Router<ApiState>) -> Router<ApiState> {
    let router = route(
        router,
        "/tenants/{tenant}/keys",
        get(list_keys).post(create_key),
    );
    let router = route(
        router,
        "/tenants/{tenant}/keys/{id}/rotate",
        post(rotate_key),
    );
    route(
        router,
        "/tenants/{tenant}/keys/{id}",
        axum::routing::delete(revoke_key),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    #[serde(default)]
    name: String,
    role: Role,
}

/// A key as shown: never its secret but in the answer that makes it.
#[derive(Debug, Serialize)]
struct Shown {
    id: String,
    tenant: String,
    name: String,
    role: String,
    created_ms: i64,
    rotated_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl Shown {
    fn of(r: AccessKeyRow, secret: Option<String>) -> Shown {
        Shown {
            id: r.id,
            tenant: r.tenant,
            name: r.name,
            role: r.role,
            created_ms: r.created_ms,
            rotated_ms: r.rotated_ms,
            secret,
        }
    }
}

fn parts(state: &ApiState) -> Result<(&Arc<AccessKeys>, &Arc<Db>), Problem> {
    match (state.keys.as_ref(), state.store.as_ref()) {
        (Some(k), Some(d)) => Ok((k, d)),
        _ => Err(Problem::not_found("this node does not keep access keys")),
    }
}

fn known_tenant(state: &ApiState, tenant: &str) -> Result<(), Problem> {
    match &state.config {
        Some(c) if !c.tenant_exists(tenant) => {
            Err(Problem::not_found(format!("no tenant {tenant:?}")))
        }
        _ => Ok(()),
    }
}

fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("sk_{}", hex(&bytes))
}

/// A response shown once: not to be cached anywhere.
fn once(status: StatusCode, body: Shown) -> Response {
    let mut r = (status, Json(body)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn list_keys(
    State(state): State<ApiState>,
    UrlPath(tenant): UrlPath<String>,
) -> Result<Response, Problem> {
    let (_, db) = parts(&state)?;
    known_tenant(&state, &tenant)?;
    let rows = db.run(move |s| s.access_keys(&tenant)).await?;
    let shown: Vec<Shown> = rows.into_iter().map(|r| Shown::of(r, None)).collect();
    Ok(Json(shown).into_response())
}

async fn create_key(
    State(state): State<ApiState>,
    UrlPath(tenant): UrlPath<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let (keys, db) = parts(&state)?;
    known_tenant(&state, &tenant)?;
    let new: NewKey = Problem::json_body(&body)?;
    if new.name.chars().count() > 64 {
        return Err(Problem::bad_request("name is at most 64 characters"));
    }
    let id = format!("ak_{}", hex(&rand::random::<[u8; 8]>()));
    let secret = new_secret();
    let row = AccessKeyRow {
        sealed: keys.seal.seal(&tenant, &id, &secret),
        id,
        tenant: tenant.clone(),
        name: new.name,
        role: new.role.as_str().to_string(),
        created_ms: crate::store::now_unix_ms(),
        rotated_ms: None,
        revoked_ms: None,
    };
    let stored = row.clone();
    let made = db
        .run(move |s| {
            if s.access_keys(&stored.tenant)?.len() >= MAX_KEYS {
                return Ok(false);
            }
            s.insert_access_key(&stored).map(|_| true)
        })
        .await?;
    if !made {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!("a tenant has at most {MAX_KEYS} access keys"),
        ));
    }
    metrics::counter!(KEY_CHANGES_TOTAL, "action" => "created").increment(1);
    Ok(once(StatusCode::CREATED, Shown::of(row, Some(secret))))
}

async fn rotate_key(
    State(state): State<ApiState>,
    UrlPath((tenant, id)): UrlPath<(String, String)>,
) -> Result<Response, Problem> {
    let (keys, db) = parts(&state)?;
    let secret = new_secret();
    let sealed = keys.seal.seal(&tenant, &id, &secret);
    let now = crate::store::now_unix_ms();
    let (t, i) = (tenant.clone(), id.clone());
    let row = db
        .run(move |s| {
            if !s.rotate_access_key(&t, &i, &sealed, now)? {
                return Ok(None);
            }
            s.access_key(&i)
        })
        .await?
        .ok_or_else(|| Problem::not_found(format!("no access key {id:?} of {tenant:?}")))?;
    keys.forget(&id);
    metrics::counter!(KEY_CHANGES_TOTAL, "action" => "rotated").increment(1);
    Ok(once(StatusCode::OK, Shown::of(row, Some(secret))))
}

async fn revoke_key(
    State(state): State<ApiState>,
    Extension(_caller): Extension<Caller>,
    UrlPath((tenant, id)): UrlPath<(String, String)>,
) -> Result<Response, Problem> {
    let (keys, db) = parts(&state)?;
    let now = crate::store::now_unix_ms();
    let (t, i) = (tenant.clone(), id.clone());
    let revoked = db.run(move |s| s.revoke_access_key(&t, &i, now)).await?;
    if !revoked {
        return Err(Problem::not_found(format!(
            "no access key {id:?} of {tenant:?}"
        )));
    }
    keys.forget(&id);
    metrics::counter!(KEY_CHANGES_TOTAL, "action" => "revoked").increment(1);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_limit_routes() {
        let (get, post, del) = (Method::GET, Method::POST, Method::DELETE);
        assert_eq!(least_role(&get, "/cdrs"), Some(Role::ReadOnly));
        assert_eq!(
            least_role(&post, "/agents/{tenant}/{agent}/{command}"),
            Some(Role::Agent)
        );
        assert_eq!(
            least_role(&post, "/calls/{call_id}/monitor"),
            Some(Role::Supervisor)
        );
        assert_eq!(least_role(&del, "/calls/{call_id}"), Some(Role::Supervisor));
        assert_eq!(
            least_role(&post, "/tenants/{tenant}/keys"),
            Some(Role::Admin)
        );
        assert_eq!(least_role(&get, "/trunks"), None);
        assert_eq!(least_role(&post, "/tenants/{tenant}/tokens"), None);
        assert!(Role::ReadOnly < Role::Agent && Role::Supervisor < Role::Admin);
        for r in [Role::ReadOnly, Role::Agent, Role::Supervisor, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn sealed_secrets_open_only_for_their_row_and_key() {
        let seal = SealKey([7; 32]);
        let mut row = AccessKeyRow {
            id: "ak_1".into(),
            tenant: "t1".into(),
            name: String::new(),
            role: "admin".into(),
            sealed: seal.seal("t1", "ak_1", "sk_secret"),
            created_ms: 0,
            rotated_ms: None,
            revoked_ms: None,
        };
        assert!(!row.sealed.contains("sk_secret"));
        assert_eq!(seal.open(&row).as_deref(), Some(&b"sk_secret"[..]));
        assert_eq!(SealKey([8; 32]).open(&row), None, "another node's key");
        row.tenant = "t2".into();
        assert_eq!(seal.open(&row), None, "moved to another tenant");
    }

    #[test]
    fn nonces_are_refused_twice_within_the_window_and_bounded() {
        let mut n = NonceCache::new(2);
        assert!(n.fresh("k", "n1", 1000));
        assert!(!n.fresh("k", "n1", 1000 + WINDOW_SECS));
        assert!(n.fresh("other", "n1", 1000), "per key");
        assert!(n.fresh("k", "n2", 1000));
        assert_eq!(n.seen.len(), 2);
    }

    #[test]
    fn credentials_parse_and_signatures_depend_on_every_part() {
        assert_eq!(
            credential("SWY1-HMAC-SHA256 Credential=ak_1, Signature=00ff"),
            Some(("ak_1", "00ff"))
        );
        assert_eq!(credential("SWY1-HMAC-SHA256 Credential=ak_1"), None);
        assert_eq!(credential("Bearer x"), None);
        let base = sign("s", "GET", "/cdrs", "limit=1", "100", "nonce123", b"");
        for other in [
            sign("t", "GET", "/cdrs", "limit=1", "100", "nonce123", b""),
            sign("s", "POST", "/cdrs", "limit=1", "100", "nonce123", b""),
            sign("s", "GET", "/cdr", "limit=1", "100", "nonce123", b""),
            sign("s", "GET", "/cdrs", "limit=2", "100", "nonce123", b""),
            sign("s", "GET", "/cdrs", "limit=1", "101", "nonce123", b""),
            sign("s", "GET", "/cdrs", "limit=1", "100", "nonce124", b""),
            sign("s", "GET", "/cdrs", "limit=1", "100", "nonce123", b"x"),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(base.len(), 64);
    }
}
