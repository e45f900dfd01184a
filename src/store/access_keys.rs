//! Tenants' access keys (AK/SK): an id, a role and a secret that signs requests (see
//! `api::keys`). The secret is kept **sealed** (AES-256-GCM under the node's seal key, the
//! row's tenant and id as associated data), never in clear: the node must know it to check
//! an HMAC, so a one-way hash would not do. The table lives in the CDRs' database (SQLite
//! alone, PostgreSQL in a cluster).

use super::{req, SqlRow, Store, StoreError};

/// Migration text for the `access_keys` table (appended to `MIGRATIONS`).
pub const MIGRATION: &str = "CREATE TABLE access_keys (
        id          TEXT    NOT NULL PRIMARY KEY,
        tenant      TEXT    NOT NULL,
        name        TEXT    NOT NULL,
        role        TEXT    NOT NULL,
        sealed      TEXT    NOT NULL,
        created_ms  INTEGER NOT NULL,
        rotated_ms  INTEGER,
        revoked_ms  INTEGER
    );
    CREATE INDEX access_keys_tenant ON access_keys (tenant);";

/// One access key as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AccessKeyRow {
    pub id: String,
    pub tenant: String,
    pub name: String,
    /// `admin`, `supervisor`, `agent` or `read_only`.
    pub role: String,
    /// The sealed secret (hex of nonce and ciphertext); never shown.
    #[serde(skip)]
    pub sealed: String,
    pub created_ms: i64,
    pub rotated_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

const COLUMNS: &str = "id, tenant, name, role, sealed, created_ms, rotated_ms, revoked_ms";

fn from_row(r: &dyn SqlRow) -> Result<AccessKeyRow, StoreError> {
    let text = |i: usize| -> Result<String, StoreError> { req(r.text(i)?, i) };
    Ok(AccessKeyRow {
        id: text(0)?,
        tenant: text(1)?,
        name: text(2)?,
        role: text(3)?,
        sealed: text(4)?,
        created_ms: req(r.int(5)?, 5)?,
        rotated_ms: r.int(6)?,
        revoked_ms: r.int(7)?,
    })
}

impl Store {
    /// Commits a new key.
    pub fn insert_access_key(&mut self, k: &AccessKeyRow) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO access_keys (id, tenant, name, role, sealed, created_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    k.id.as_str().into(),
                    k.tenant.as_str().into(),
                    k.name.as_str().into(),
                    k.role.as_str().into(),
                    k.sealed.as_str().into(),
                    k.created_ms.into(),
                ],
            )
            .map(|_| ())
        })
    }

    /// Replaces the sealed secret of a key not revoked; whether there was one.
    pub fn rotate_access_key(
        &mut self,
        tenant: &str,
        id: &str,
        sealed: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE access_keys SET sealed = $1, rotated_ms = $2 \
                 WHERE tenant = $3 AND id = $4 AND revoked_ms IS NULL",
                &[sealed.into(), at.into(), tenant.into(), id.into()],
            )
            .map(|n| n > 0)
        })
    }

    /// Revokes a key (kept, marked, for the audit trail); whether there was one to revoke.
    pub fn revoke_access_key(
        &mut self,
        tenant: &str,
        id: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE access_keys SET revoked_ms = $1 \
                 WHERE tenant = $2 AND id = $3 AND revoked_ms IS NULL",
                &[at.into(), tenant.into(), id.into()],
            )
            .map(|n| n > 0)
        })
    }

    /// The key `id`, revoked or not.
    pub fn access_key(&self, id: &str) -> Result<Option<AccessKeyRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM access_keys WHERE id = $1");
        Ok(self.query(&sql, &[id.into()], from_row)?.pop())
    }

    /// `tenant`'s keys not revoked, oldest first.
    pub fn access_keys(&self, tenant: &str) -> Result<Vec<AccessKeyRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM access_keys WHERE tenant = $1 AND revoked_ms IS NULL \
             ORDER BY created_ms, id"
        );
        self.query(&sql, &[tenant.into()], from_row)
    }
}
