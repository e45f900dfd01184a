//! The audit log (操作日志): one row per management change made through the API, who made
//! it, from where, what it was, and the configuration before and after.
//!
//! A record is committed before the change is answered 2xx (see `api::audit`): it is written
//! when the request arrives (`status` NULL: attempted) and completed with the answer's status
//! and the value after the change once the handler has run, both in their own transaction on
//! a `synchronous=FULL` connection.

use serde::Serialize;

use super::{req, SqlRow, Store, StoreError, Value};

/// Migration text for the `audit_log` table (appended to `MIGRATIONS`).
pub const MIGRATION: &str = "CREATE TABLE audit_log (
        id          INTEGER PRIMARY KEY,
        at          INTEGER NOT NULL,
        tenant      TEXT,
        actor       TEXT    NOT NULL,
        source      TEXT    NOT NULL,
        method      TEXT    NOT NULL,
        route       TEXT    NOT NULL,
        path        TEXT    NOT NULL,
        summary     TEXT,
        before_json TEXT,
        after_json  TEXT,
        status      INTEGER,
        done_at     INTEGER
    );
    CREATE INDEX audit_log_tenant ON audit_log (tenant, id);";

/// One audit record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Row id (assigned on insert; the cursor of `GET /audit`).
    pub id: i64,
    /// When the request arrived (Unix ms).
    pub at: i64,
    /// The tenant the change concerns (the credential's, or the path's `{tenant}`); None for
    /// node-wide changes.
    pub tenant: Option<String>,
    /// Who: `node` (the node's token), `token:<tenant>/<id>` or `key:<tenant>/<id>`.
    pub actor: String,
    /// The client's address (`ip:port`).
    pub source: String,
    pub method: String,
    /// The route template (`/routes/{id}`).
    pub route: String,
    /// The path as requested.
    pub path: String,
    /// The request body, bounded, secrets masked.
    pub summary: Option<String>,
    /// Configuration changes: the object before (JSON), if it existed.
    pub before: Option<String>,
    /// Configuration changes: the object after (JSON), if it still exists.
    pub after: Option<String>,
    /// The answer's status; None while in progress (or if the node died before answering).
    pub status: Option<u16>,
    /// When the answer was decided (Unix ms).
    pub done_at: Option<i64>,
}

const INSERT_SQL: &str = "INSERT INTO audit_log (at, tenant, actor, source, method, route, \
     path, summary, before_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id";

const COMPLETE_SQL: &str =
    "UPDATE audit_log SET status = $1, after_json = $2, done_at = $3 WHERE id = $4";

const COLUMNS: &str = "id, at, tenant, actor, source, method, route, path, summary, \
     before_json, after_json, status, done_at";

fn from_row(r: &dyn SqlRow) -> Result<AuditRecord, StoreError> {
    let text = |i: usize| -> Result<String, StoreError> { req(r.text(i)?, i) };
    Ok(AuditRecord {
        id: req(r.int(0)?, 0)?,
        at: req(r.int(1)?, 1)?,
        tenant: r.text(2)?,
        actor: text(3)?,
        source: text(4)?,
        method: text(5)?,
        route: text(6)?,
        path: text(7)?,
        summary: r.text(8)?,
        before: r.text(9)?,
        after: r.text(10)?,
        status: r.int(11)?.and_then(|s| u16::try_from(s).ok()),
        done_at: r.int(12)?,
    })
}

impl Store {
    /// Commits `rec` (its `id`, `after`, `status` and `done_at` ignored) and returns its id.
    pub fn insert_audit(&mut self, rec: &AuditRecord) -> Result<i64, StoreError> {
        self.write(|tx| {
            tx.insert_returning_id(
                INSERT_SQL,
                &[
                    rec.at.into(),
                    rec.tenant.as_deref().into(),
                    rec.actor.as_str().into(),
                    rec.source.as_str().into(),
                    rec.method.as_str().into(),
                    rec.route.as_str().into(),
                    rec.path.as_str().into(),
                    rec.summary.as_deref().into(),
                    rec.before.as_deref().into(),
                ],
            )
        })
    }

    /// Commits the outcome of the record `id`.
    pub fn complete_audit(
        &mut self,
        id: i64,
        status: u16,
        after: Option<&str>,
        at: i64,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                COMPLETE_SQL,
                &[i64::from(status).into(), after.into(), at.into(), id.into()],
            )
            .map(|_| ())
        })
    }

    /// Audit records, newest first: `tenant`'s only if given, ids below `before` if given,
    /// at most `limit`.
    pub fn list_audit(
        &self,
        tenant: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut params: Vec<Value<'_>> = Vec::new();
        let mut sql = format!("SELECT {COLUMNS} FROM audit_log WHERE 1 = 1");
        if let Some(t) = tenant {
            params.push(t.into());
            sql.push_str(&format!(" AND tenant = ${}", params.len()));
        }
        if let Some(b) = before {
            params.push(b.into());
            sql.push_str(&format!(" AND id < ${}", params.len()));
        }
        params.push(i64::try_from(limit).unwrap_or(i64::MAX).into());
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
        self.query(&sql, &params, from_row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_written_completed_and_listed_by_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.db")).unwrap();
        let mut rec = AuditRecord {
            at: 1,
            tenant: Some("t1".into()),
            actor: "node".into(),
            source: "127.0.0.1:5000".into(),
            method: "PUT".into(),
            route: "/numbers/{number}".into(),
            path: "/numbers/100".into(),
            summary: Some("{}".into()),
            before: None,
            ..Default::default()
        };
        let id = s.insert_audit(&rec).unwrap();
        rec.tenant = None;
        let other = s.insert_audit(&rec).unwrap();
        s.complete_audit(id, 201, Some("{\"a\":1}"), 2).unwrap();
        let t1 = s.list_audit(Some("t1"), None, 10).unwrap();
        assert_eq!(t1.len(), 1);
        assert_eq!(t1[0].id, id);
        assert_eq!(t1[0].status, Some(201));
        assert_eq!(t1[0].after.as_deref(), Some("{\"a\":1}"));
        let all = s.list_audit(None, None, 10).unwrap();
        assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), [other, id]);
        assert_eq!(s.list_audit(None, Some(other), 10).unwrap().len(), 1);
        assert_eq!(all[0].status, None, "not completed");
    }
}
