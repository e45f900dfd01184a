//! Registrar bindings (the location service's durable copy).
//!
//! The registrar writes the full set of bindings of an address-of-record at a time (delete,
//! then insert), batched many AORs per transaction, and reads the unexpired rows back at
//! start-up. Times are Unix milliseconds.
//!
//! In a cluster (PostgreSQL) every node's registrar writes the same table, and
//! [`Store::publish_registrations`] also sends `NOTIFY` [`CHANNEL`] with
//! `<node>|<tenant>|<user>` for each AOR, in the same transaction (PostgreSQL delivers it at
//! commit, only if the commit succeeds), so the other nodes reload that AOR
//! ([`Store::load_aor_registrations`]) and a phone registered through one node is reachable
//! through all.

use super::{narrow, req, SqlRow, Store, StoreError, Value};

/// The PostgreSQL notification channel of binding changes.
pub const CHANNEL: &str = "switchyard_registrations";

/// The payload of a binding-change notification: `<node>|<tenant>|<user>`. Node names and
/// tenant ids must not contain `|`; a user may (everything after the second `|` is the user).
pub fn notification_payload(node: &str, tenant: &str, user: &str) -> String {
    format!("{node}|{tenant}|{user}")
}

/// Parses [`notification_payload`]'s format into `(node, tenant, user)`.
pub fn parse_notification(payload: &str) -> Option<(&str, &str, &str)> {
    let mut parts = payload.splitn(3, '|');
    Some((parts.next()?, parts.next()?, parts.next()?))
}

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

const DELETE_AOR_SQL: &str = "DELETE FROM registrations WHERE tenant = $1 AND username = $2";
/// A contact appears once per AOR, so a plain insert after the delete suffices; the upsert
/// keeps a duplicate in one set (a caller's bug) from failing the whole batch.
const INSERT_SQL: &str = "INSERT INTO registrations
    (tenant, username, contact, q, expires_at, call_id, cseq, protocol, remote, local, user_agent)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    ON CONFLICT (tenant, username, contact) DO UPDATE SET q = excluded.q,
    expires_at = excluded.expires_at, call_id = excluded.call_id, cseq = excluded.cseq,
    protocol = excluded.protocol, remote = excluded.remote, local = excluded.local,
    user_agent = excluded.user_agent";
const COLUMNS: &str = "tenant, username, contact, q, expires_at, call_id, cseq, protocol, \
    remote, local, user_agent";
static LOAD_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM registrations WHERE expires_at > $1 \
         ORDER BY tenant, username, q DESC, contact"
    )
});
static LOAD_AOR_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM registrations WHERE expires_at > $1 AND tenant = $2 \
         AND username = $3 ORDER BY q DESC, contact"
    )
});
const PURGE_SQL: &str = "DELETE FROM registrations WHERE expires_at <= $1";
const NOTIFY_SQL: &str = "SELECT pg_notify($1, $2)";

impl Store {
    /// Replaces the bindings of each AOR in `aors`, all in one transaction.
    pub fn replace_registrations(&mut self, aors: &[AorBindings]) -> Result<(), StoreError> {
        self.write_registrations(None, aors)
    }

    /// [`Store::replace_registrations`], and on PostgreSQL also a `NOTIFY` [`CHANNEL`] per AOR
    /// naming `node` as the writer, in the same transaction (SQLite: nobody else to tell).
    pub fn publish_registrations(
        &mut self,
        node: &str,
        aors: &[AorBindings],
    ) -> Result<(), StoreError> {
        self.write_registrations(Some(node), aors)
    }

    fn write_registrations(
        &mut self,
        node: Option<&str>,
        aors: &[AorBindings],
    ) -> Result<(), StoreError> {
        let notify = node.filter(|_| self.backend() == "postgres");
        self.write(|tx| {
            for aor in aors {
                tx.execute(
                    DELETE_AOR_SQL,
                    &[aor.tenant.as_str().into(), aor.username.as_str().into()],
                )?;
                for r in &aor.rows {
                    tx.execute(
                        INSERT_SQL,
                        &[
                            r.tenant.as_str().into(),
                            r.username.as_str().into(),
                            r.contact.as_str().into(),
                            i64::from(r.q).into(),
                            r.expires_at_ms.into(),
                            r.call_id.as_str().into(),
                            i64::from(r.cseq).into(),
                            r.protocol.as_str().into(),
                            r.remote.as_str().into(),
                            r.local.as_deref().into(),
                            r.user_agent.as_deref().into(),
                        ],
                    )?;
                }
                if let Some(node) = notify {
                    let payload = notification_payload(node, &aor.tenant, &aor.username);
                    tx.execute(NOTIFY_SQL, &[CHANNEL.into(), payload.as_str().into()])?;
                }
            }
            Ok(())
        })
    }

    /// Bindings that expire after `now_ms`, by tenant and user, highest q first.
    pub fn load_registrations(&self, now_ms: i64) -> Result<Vec<RegistrationRow>, StoreError> {
        self.query(&LOAD_SQL, &[now_ms.into()], row_from)
    }

    /// The bindings of one AOR that expire after `now_ms`, highest q first.
    pub fn load_aor_registrations(
        &self,
        tenant: &str,
        username: &str,
        now_ms: i64,
    ) -> Result<Vec<RegistrationRow>, StoreError> {
        let params: [Value<'_>; 3] = [now_ms.into(), tenant.into(), username.into()];
        self.query(&LOAD_AOR_SQL, &params, row_from)
    }

    /// Deletes bindings that expired at or before `now_ms`; returns how many.
    pub fn purge_registrations(&mut self, now_ms: i64) -> Result<usize, StoreError> {
        let n = self.write(|tx| tx.execute(PURGE_SQL, &[now_ms.into()]))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// Reads a row selected with `COLUMNS`.
fn row_from(r: &dyn SqlRow) -> Result<RegistrationRow, StoreError> {
    let text = |i: usize| -> Result<String, StoreError> { req(r.text(i)?, i) };
    let int = |i: usize| -> Result<i64, StoreError> { req(r.int(i)?, i) };
    Ok(RegistrationRow {
        tenant: text(0)?,
        username: text(1)?,
        contact: text(2)?,
        q: narrow(int(3)?, 3)?,
        expires_at_ms: int(4)?,
        call_id: text(5)?,
        cseq: narrow(int(6)?, 6)?,
        protocol: text(7)?,
        remote: text(8)?,
        local: r.text(9)?,
        user_agent: r.text(10)?,
    })
}

/// Every SQL text of this module, for the placeholder-order check in `store::tests`.
#[cfg(test)]
pub(super) fn all_sql() -> Vec<String> {
    vec![
        DELETE_AOR_SQL.to_string(),
        INSERT_SQL.to_string(),
        LOAD_SQL.to_string(),
        LOAD_AOR_SQL.to_string(),
        PURGE_SQL.to_string(),
        NOTIFY_SQL.to_string(),
    ]
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
