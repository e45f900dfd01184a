//! Tenant API tokens: what is stored of them (a SHA-256 digest, never the secret) and the
//! in-memory table the API looks a presented bearer token up in.
//!
//! A token made through the API (`POST /tenants/{tenant}/tokens`) is a random secret of 256
//! bits shown once, `swy_` followed by 64 hex digits; the node keeps a [`TokenRecord`] with
//! the SHA-256 of the secret, its tenant, id and name. The records are configuration entries
//! (`cluster::shared_config`, kind `token`): in the node's SQLite overrides table alone, in
//! etcd in a cluster, so that every node knows every token and a revocation reaches all of
//! them within a second. A tenant's `api_token` from the config file is a token of the same
//! kind with the id [`FILE_TOKEN_ID`], hashed at start and neither stored nor revocable
//! through the API.
//!
//! Lookup is by the digest of the presented text: a hash-map lookup keyed by SHA-256 leaks
//! nothing about a secret through its timing (an attacker would need a preimage to steer it),
//! and unknown tokens cost one digest and one lookup, no write.
//!
//! Room for access keys with roles (issue 21): a record gains optional fields (serde
//! defaults keep old records readable) and [`Issued`] carries them to the API's policy check.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What every token made through the API starts with (so a leaked one is recognisable,
/// e.g. by secret scanners).
pub const SECRET_PREFIX: &str = "swy_";

/// Random bytes in a secret: 256 bits.
const SECRET_BYTES: usize = 32;

/// Random bytes in a token id (16 hex digits).
const ID_BYTES: usize = 8;

/// The id of a tenant's token from the config file (`[[tenants]] api_token`).
pub const FILE_TOKEN_ID: &str = "file";

/// Longest token name.
pub const MAX_NAME: usize = 64;

/// The shortest token accepted from a config file (`http.token`, `api_token`): 32
/// characters, as long as a generated one.
pub const MIN_TOKEN_LEN: usize = 32;

/// Whether `text` may be a token from a config file (`http.token`, `api_token`, the
/// generated `data_dir/api-token`): at least [`MIN_TOKEN_LEN`] characters, printable ASCII
/// without spaces (it must fit in an `Authorization` header as typed).
pub fn is_valid_token(text: &str) -> bool {
    text.len() >= MIN_TOKEN_LEN && text.bytes().all(|b| b.is_ascii_graphic())
}

/// A SHA-256 digest.
pub type Digest32 = [u8; 32];

/// A token as stored: never the secret, only its digest. The JSON of a configuration entry
/// `token` with the id `<tenant>/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// The tenant whose data the token reaches (from the entry's id).
    #[serde(default)]
    pub tenant: String,
    /// The token's id, 16 hex digits (from the entry's id).
    #[serde(default)]
    pub id: String,
    /// What the operator called it (`crm`, `wallboard`); may be empty.
    #[serde(default)]
    pub name: String,
    /// Lowercase hex SHA-256 of the secret.
    pub sha256: String,
    /// When it was made (Unix milliseconds).
    pub created_ms: u64,
    /// When its secret was last replaced (`POST .../rotate`), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_ms: Option<u64>,
}

impl TokenRecord {
    /// A new record for `secret` (see [`new_secret`]).
    pub fn new(tenant: &str, id: &str, name: &str, secret: &str, now_ms: u64) -> TokenRecord {
        TokenRecord {
            tenant: tenant.to_string(),
            id: id.to_string(),
            name: name.to_string(),
            sha256: crate::sip::auth::to_hex(&digest(secret)),
            created_ms: now_ms,
            rotated_ms: None,
        }
    }

    /// Why the record cannot be a token: a field and the reason.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !is_id(&self.id) {
            return Err(("id", format!("{:?} is not 16 hex digits", self.id)));
        }
        if let Err(e) = check_name(&self.name) {
            return Err(("name", e));
        }
        if parse_digest(&self.sha256).is_none() {
            return Err(("sha256", "64 lowercase hex digits".into()));
        }
        Ok(())
    }

    /// The record as the API shows it (no digest).
    pub fn view(&self) -> TokenView {
        TokenView {
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            name: self.name.clone(),
            origin: Origin::Api,
            created_ms: Some(self.created_ms),
            rotated_ms: self.rotated_ms,
            last_used_ms: None,
        }
    }
}

/// A token name is at most [`MAX_NAME`] printable characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(format!(
            "at most {MAX_NAME} characters, no control characters"
        ));
    }
    Ok(())
}

/// Whether `id` is a token id made by [`new_id`]: 16 lowercase hex digits.
pub fn is_id(id: &str) -> bool {
    id.len() == 2 * ID_BYTES && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A fresh secret: [`SECRET_PREFIX`] and 256 random bits from the thread's CSPRNG as hex.
pub fn new_secret() -> String {
    let bytes: [u8; SECRET_BYTES] = rand::random();
    format!("{SECRET_PREFIX}{}", crate::sip::auth::to_hex(&bytes))
}

/// A fresh token id.
pub fn new_id() -> String {
    let bytes: [u8; ID_BYTES] = rand::random();
    crate::sip::auth::to_hex(&bytes)
}

/// The SHA-256 of a presented or configured token.
pub fn digest(secret: &str) -> Digest32 {
    Sha256::digest(secret.as_bytes()).into()
}

/// A digest from its 64 lowercase hex digits.
fn parse_digest(hex: &str) -> Option<Digest32> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let nibble = |b: u8| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        };
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// Whether `a` and `b` are equal, in time independent of where they differ.
pub fn digests_equal(a: &Digest32, b: &Digest32) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// Where a token comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Made through the API; rotated and revoked through it.
    Api,
    /// A tenant's `api_token` in the config file; changed there.
    File,
}

/// A token the node accepts: who it speaks for and when it was last used here.
#[derive(Debug)]
pub struct Issued {
    pub tenant: Arc<str>,
    pub id: Arc<str>,
    pub name: String,
    pub origin: Origin,
    pub created_ms: Option<u64>,
    pub rotated_ms: Option<u64>,
    /// Unix milliseconds of the last request that presented it to this node; 0: none yet.
    last_used_ms: AtomicU64,
}

impl Issued {
    /// When a request last presented it to this node.
    pub fn last_used_ms(&self) -> Option<u64> {
        match self.last_used_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(ms),
        }
    }

    /// The token as the API shows it.
    pub fn view(&self) -> TokenView {
        TokenView {
            id: self.id.to_string(),
            tenant: self.tenant.to_string(),
            name: self.name.clone(),
            origin: self.origin,
            created_ms: self.created_ms,
            rotated_ms: self.rotated_ms,
            last_used_ms: self.last_used_ms(),
        }
    }
}

/// A token as `GET /tenants/{tenant}/tokens` shows it: never the secret or its digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenView {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub origin: Origin,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotated_ms: Option<u64>,
    /// The last request that presented it to the node answering (each node counts its own).
    pub last_used_ms: Option<u64>,
}

/// The tenant tokens a node accepts, by the digest of their secret: the config file's and
/// those made through the API (replaced whole whenever the configuration changes). Its
/// `Debug` form shows how many, never a digest (a file's token may be weak enough to guess
/// from its digest).
#[derive(Default)]
pub struct TokenTable {
    inner: RwLock<Tokens>,
}

impl std::fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenTable")
            .field("tokens", &self.len())
            .finish()
    }
}

#[derive(Default)]
struct Tokens {
    /// The config file's, kept across replacements.
    file: Vec<(Digest32, Arc<Issued>)>,
    /// Every token: the file's and the API's.
    by_digest: HashMap<Digest32, Arc<Issued>>,
}

impl TokenTable {
    pub fn new() -> TokenTable {
        TokenTable::default()
    }

    /// Accepts `secret` (a tenant's `api_token` from the config file) for `tenant`.
    pub fn add_file(&self, tenant: &str, secret: &str) {
        let issued = Arc::new(Issued {
            tenant: Arc::from(tenant),
            id: Arc::from(FILE_TOKEN_ID),
            name: "config file".to_string(),
            origin: Origin::File,
            created_ms: None,
            rotated_ms: None,
            last_used_ms: AtomicU64::new(0),
        });
        let d = digest(secret);
        let mut t = self.inner.write().unwrap_or_else(|e| e.into_inner());
        t.file.push((d, Arc::clone(&issued)));
        t.by_digest.insert(d, issued);
    }

    /// Puts `records` (the API's tokens in force) in place of the previous ones; a token
    /// that stays keeps its last use. Records whose digest does not parse are skipped (they
    /// were checked when stored).
    pub fn set_api<'r>(&self, records: impl IntoIterator<Item = &'r TokenRecord>) {
        let mut t = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let mut used: HashMap<(Arc<str>, Arc<str>), u64> = HashMap::new();
        for i in t.by_digest.values().filter(|i| i.origin == Origin::Api) {
            let ms = i.last_used_ms.load(Ordering::Relaxed);
            used.insert((Arc::clone(&i.tenant), Arc::clone(&i.id)), ms);
        }
        let mut by_digest: HashMap<Digest32, Arc<Issued>> =
            t.file.iter().map(|(d, i)| (*d, Arc::clone(i))).collect();
        for r in records {
            let Some(d) = parse_digest(&r.sha256) else {
                continue;
            };
            let (tenant, id): (Arc<str>, Arc<str>) = (Arc::from(&*r.tenant), Arc::from(&*r.id));
            let last = used.get(&(Arc::clone(&tenant), Arc::clone(&id))).copied();
            by_digest.insert(
                d,
                Arc::new(Issued {
                    tenant,
                    id,
                    name: r.name.clone(),
                    origin: Origin::Api,
                    created_ms: Some(r.created_ms),
                    rotated_ms: r.rotated_ms,
                    last_used_ms: AtomicU64::new(last.unwrap_or(0)),
                }),
            );
        }
        t.by_digest = by_digest;
    }

    /// The token `presented` is, noting its use at `now_ms`; None if the node knows no such
    /// token (never made, revoked, or replaced by a rotation).
    pub fn find(&self, presented: &str, now_ms: u64) -> Option<Arc<Issued>> {
        let d = digest(presented);
        let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let found = t.by_digest.get(&d).map(Arc::clone)?;
        found.last_used_ms.fetch_max(now_ms, Ordering::Relaxed);
        Some(found)
    }

    /// `tenant`'s tokens, the file's first, then by id.
    pub fn of_tenant(&self, tenant: &str) -> Vec<TokenView> {
        let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut views: Vec<TokenView> = t
            .by_digest
            .values()
            .filter(|i| &*i.tenant == tenant)
            .map(|i| i.view())
            .collect();
        views.sort_by(|a, b| {
            (a.origin != Origin::File, &a.id).cmp(&(b.origin != Origin::File, &b.id))
        });
        views
    }

    /// Whether `tenant` has a token from the config file.
    pub fn has_file_token(&self, tenant: &str) -> bool {
        let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
        t.file.iter().any(|(_, i)| &*i.tenant == tenant)
    }

    /// Number of tokens accepted.
    pub fn len(&self) -> usize {
        let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
        t.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_random_and_prefixed() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(a.len(), SECRET_PREFIX.len() + 64);
        assert!(a.len() >= MIN_TOKEN_LEN);
        assert!(a.bytes().all(|b| b.is_ascii_graphic()));
        let id = new_id();
        assert!(is_id(&id), "{id}");
        assert!(!is_id(FILE_TOKEN_ID));
        assert!(!is_id("0123456789ABCDEF"), "uppercase is not an id");
    }

    #[test]
    fn a_record_keeps_the_digest_never_the_secret() {
        let secret = new_secret();
        let r = TokenRecord::new("acme", &new_id(), "crm", &secret, 1000);
        r.check().unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains(&secret[SECRET_PREFIX.len()..]), "{json}");
        assert_eq!(parse_digest(&r.sha256), Some(digest(&secret)));
        // It reads back as stored (the shared configuration's round trip).
        let back: TokenRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let view = serde_json::to_string(&r.view()).unwrap();
        assert!(!view.contains(&r.sha256), "{view}");

        let bad = TokenRecord {
            sha256: "xyz".into(),
            ..r.clone()
        };
        assert_eq!(bad.check().unwrap_err().0, "sha256");
        let bad = TokenRecord {
            id: "nope".into(),
            ..r.clone()
        };
        assert_eq!(bad.check().unwrap_err().0, "id");
        let bad = TokenRecord {
            name: "x".repeat(MAX_NAME + 1),
            ..r
        };
        assert_eq!(bad.check().unwrap_err().0, "name");
        assert!(check_name("line\nbreak").is_err());
    }

    #[test]
    fn lookup_finds_file_and_api_tokens_and_forgets_revoked_ones() {
        let table = TokenTable::new();
        let file_secret = "a-tenant-token-from-the-file-0123456789";
        table.add_file("t1", file_secret);
        let s1 = new_secret();
        let r1 = TokenRecord::new("t1", &new_id(), "crm", &s1, 10);
        let s2 = new_secret();
        let r2 = TokenRecord::new("t2", &new_id(), "", &s2, 20);
        table.set_api([&r1, &r2]);
        assert_eq!(table.len(), 3);
        assert_eq!(format!("{table:?}"), "TokenTable { tokens: 3 }");

        let found = table.find(&s1, 500).expect("api token");
        assert_eq!((&*found.tenant, &*found.id), ("t1", r1.id.as_str()));
        assert_eq!(found.last_used_ms(), Some(500));
        let file = table.find(file_secret, 600).expect("file token");
        assert_eq!((&*file.tenant, &*file.id), ("t1", FILE_TOKEN_ID));
        assert_eq!(&*table.find(&s2, 700).unwrap().tenant, "t2");
        assert!(table.find("swy_guess", 800).is_none());
        assert!(table.find(&s1[..s1.len() - 1], 800).is_none(), "a prefix");

        // Listing: the file's first, never a secret; the last use shows.
        let views = table.of_tenant("t1");
        assert_eq!(views.len(), 2);
        assert_eq!(views[0].origin, Origin::File);
        assert_eq!(views[1].id, r1.id);
        assert_eq!(views[1].last_used_ms, Some(500));
        assert!(table.has_file_token("t1") && !table.has_file_token("t2"));

        // A revocation (r1 gone) and a rotation (r2 with a new secret): the old secrets
        // fail, the file token stays, a token that stays keeps its last use.
        let s2b = new_secret();
        let r2b = TokenRecord {
            sha256: crate::sip::auth::to_hex(&digest(&s2b)),
            rotated_ms: Some(900),
            ..r2.clone()
        };
        table.set_api([&r2b]);
        assert!(table.find(&s1, 1000).is_none());
        assert!(table.find(&s2, 1000).is_none());
        let rotated = table.find(&s2b, 1100).expect("rotated");
        assert_eq!(rotated.rotated_ms, Some(900));
        assert!(table.find(file_secret, 1200).is_some());
        assert_eq!(table.of_tenant("t2")[0].last_used_ms, Some(1100));
        table.set_api([&r2b]);
        assert_eq!(table.of_tenant("t2")[0].last_used_ms, Some(1100), "kept");
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn digests_compare_equal_only_when_equal() {
        let a = digest("one");
        let mut b = a;
        assert!(digests_equal(&a, &b));
        b[31] ^= 1;
        assert!(!digests_equal(&a, &b));
    }
}
