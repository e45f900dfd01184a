//! Registrar bindings (the location service's durable copy).
//!
//! The registrar writes the full set of bindings of an address-of-record at a time (delete,
//! then insert), batched many AORs per transaction, and reads the unexpired rows back at
//! start-up. Times are Unix milliseconds.

use rusqlite::params;

use super::{Store, StoreError};

/// Migration text for the `registrations` table (appended to `MIGRATIONS`).
pub(crate) const MIGRATION: &str = "CREATE TABLE registrations (
        tenant      TEXT    NOT NULL,
        username    TEXT    NOT NULL,
        contact     TEXT    NOT NULL,
        q           INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,
        call_id     TEXT    NOT NULL,
        cseq        INTEGER NOT NULL,
        protocol    TEXT    NOT NULL,
        remote      TEXT    NOT NULL,
        local       TEXT,
        user_agent  TEXT,
        PRIMARY KEY (tenant, username, contact)
    ) WITHOUT ROWID;
    CREATE INDEX registrations_expires_at ON registrations (expires_at);";

/// One binding as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationRow {
    pub tenant: String,
    pub username: String,
    /// The Contact URI.
    pub contact: String,
    /// q-value in thousandths.
    pub q: u16,
    /// Unix milliseconds.
    pub expires_at_ms: i64,
    pub call_id: String,
    pub cseq: u32,
    /// Transport token (`udp`, `tcp`, ...) the REGISTER came over.
    pub protocol: String,
    /// The REGISTER's source address (`IP:port`): where the phone is reached.
    pub remote: String,
    /// The local address it arrived at.
    pub local: Option<String>,
    pub user_agent: Option<String>,
}

/// The complete binding set of one address-of-record: `rows` replace whatever is stored
/// (an empty `rows` deletes the AOR's bindings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AorBindings {
    pub tenant: String,
    pub username: String,
    pub rows: Vec<RegistrationRow>,
}

const DELETE_AOR_SQL: &str = "DELETE FROM registrations WHERE tenant = ?1 AND username = ?2";
const INSERT_SQL: &str = "INSERT OR REPLACE INTO registrations
    (tenant, username, contact, q, expires_at, call_id, cseq, protocol, remote, local, user_agent)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
const LOAD_SQL: &str = "SELECT tenant, username, contact, q, expires_at, call_id, cseq, protocol,
    remote, local, user_agent FROM registrations WHERE expires_at > ?1
    ORDER BY tenant, username, q DESC";

impl Store {
    /// Replaces the bindings of each AOR in `aors`, all in one transaction.
    pub fn replace_registrations(&mut self, aors: &[AorBindings]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut delete = tx.prepare_cached(DELETE_AOR_SQL)?;
            let mut insert = tx.prepare_cached(INSERT_SQL)?;
            for aor in aors {
                delete.execute(params![aor.tenant, aor.username])?;
                for r in &aor.rows {
                    insert.execute(params![
                        r.tenant,
                        r.username,
                        r.contact,
                        r.q,
                        r.expires_at_ms,
                        r.call_id,
                        r.cseq,
                        r.protocol,
                        r.remote,
                        r.local,
                        r.user_agent
                    ])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Bindings that expire after `now_ms`, by tenant and user, highest q first.
    pub fn load_registrations(&self, now_ms: i64) -> Result<Vec<RegistrationRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(LOAD_SQL)?;
        let rows = stmt.query_map([now_ms], |r| {
            Ok(RegistrationRow {
                tenant: r.get(0)?,
                username: r.get(1)?,
                contact: r.get(2)?,
                q: r.get(3)?,
                expires_at_ms: r.get(4)?,
                call_id: r.get(5)?,
                cseq: r.get(6)?,
                protocol: r.get(7)?,
                remote: r.get(8)?,
                local: r.get(9)?,
                user_agent: r.get(10)?,
            })
        })?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?);
        }
        Ok(out)
    }

    /// Deletes bindings that expired at or before `now_ms`; returns how many.
    pub fn purge_registrations(&mut self, now_ms: i64) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM registrations WHERE expires_at <= ?1", [now_ms])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: &str, contact: &str, q: u16, exp: i64) -> RegistrationRow {
        RegistrationRow {
            tenant: "t".into(),
            username: user.into(),
            contact: contact.into(),
            q,
            expires_at_ms: exp,
            call_id: "c@x".into(),
            cseq: 7,
            protocol: "udp".into(),
            remote: "127.0.0.1:5062".into(),
            local: Some("127.0.0.1:5060".into()),
            user_agent: None,
        }
    }

    #[test]
    fn replace_load_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = Store::open(&path).unwrap();
        store
            .replace_registrations(&[
                AorBindings {
                    tenant: "t".into(),
                    username: "a".into(),
                    rows: vec![
                        row("a", "sip:a@1", 500, 2_000),
                        row("a", "sip:a@2", 1000, 3_000),
                    ],
                },
                AorBindings {
                    tenant: "t".into(),
                    username: "b".into(),
                    rows: vec![row("b", "sip:b@1", 1000, 500)],
                },
            ])
            .unwrap();
        let loaded = store.load_registrations(1_000).unwrap();
        assert_eq!(loaded.len(), 2, "b's binding expired");
        assert_eq!(
            loaded[0],
            row("a", "sip:a@2", 1000, 3_000),
            "highest q first"
        );
        // Replacing an AOR drops bindings not in the new set.
        store
            .replace_registrations(&[AorBindings {
                tenant: "t".into(),
                username: "a".into(),
                rows: vec![row("a", "sip:a@2", 1000, 4_000)],
            }])
            .unwrap();
        let reopened = Store::open(&path).unwrap();
        let loaded = reopened.load_registrations(1_000).unwrap();
        assert_eq!(loaded, vec![row("a", "sip:a@2", 1000, 4_000)]);
        assert_eq!(store.purge_registrations(1_000).unwrap(), 1);
        assert_eq!(store.purge_registrations(1_000).unwrap(), 0);
    }
}
