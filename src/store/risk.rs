//! Risk control's tables (issue 20): the black and white lists managed through the API
//! (`risk_lists`), and one row per outbound attempt the risk rules let through
//! (`risk_attempts`), which frequency caps count.
//!
//! Caps are checked and the attempt recorded in one transaction that first serializes the
//! callers of the same number: SQLite's write lock (`BEGIN IMMEDIATE`), PostgreSQL's
//! transaction-scoped advisory lock on a hash of the number. So two calls to one number at
//! once, on one node or on two nodes sharing the cluster's PostgreSQL, cannot both take the
//! last call a cap allows.
//!
//! Every list change bumps `risk_meta.version`, which the nodes of a cluster poll to reload
//! the lists another node changed.
//!
//! The migration is self-contained (`IF NOT EXISTS`): it may be renumbered when branches
//! merge.

use rusqlite::TransactionBehavior;

use super::{req, Store, StoreError, Tx, Value};

/// Migration text for the risk tables (appended to `MIGRATIONS`).
pub const MIGRATION: &str = "CREATE TABLE IF NOT EXISTS risk_lists (
        scope       TEXT    NOT NULL,
        owner       TEXT    NOT NULL,
        kind        TEXT    NOT NULL,
        entry       TEXT    NOT NULL,
        created_ms  INTEGER NOT NULL,
        PRIMARY KEY (scope, owner, kind, entry)
    );
    CREATE TABLE IF NOT EXISTS risk_attempts (
        id          INTEGER PRIMARY KEY,
        number      TEXT    NOT NULL,
        tenant      TEXT    NOT NULL,
        route       TEXT    NOT NULL,
        at_ms       INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS risk_attempts_number ON risk_attempts (number, at_ms);
    CREATE INDEX IF NOT EXISTS risk_attempts_at ON risk_attempts (at_ms);
    CREATE TABLE IF NOT EXISTS risk_meta (
        id          INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
        version     INTEGER NOT NULL
    );";

/// One list entry as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListRow {
    /// `platform`, `tag` or `tenant`.
    pub scope: String,
    /// The tag or tenant; empty for the platform.
    pub owner: String,
    /// `black` or `white`.
    pub kind: String,
    /// `4420*` or `442079460000`.
    pub entry: String,
}

/// What one attempt's caps count: attempts of `tenant` (or through `route`) to the number
/// since `since_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted<'a> {
    Tenant { tenant: &'a str, since_ms: i64 },
    Route { route: &'a str, since_ms: i64 },
}

const COUNT_TENANT_SQL: &str =
    "SELECT COUNT(*) FROM risk_attempts WHERE number = $1 AND tenant = $2 AND at_ms > $3";
const COUNT_ROUTE_SQL: &str =
    "SELECT COUNT(*) FROM risk_attempts WHERE number = $1 AND route = $2 AND at_ms > $3";
const INSERT_ATTEMPT_SQL: &str =
    "INSERT INTO risk_attempts (number, tenant, route, at_ms) VALUES ($1, $2, $3, $4)";

impl Store {
    /// Every list entry.
    pub fn risk_lists(&self) -> Result<Vec<ListRow>, StoreError> {
        self.query(
            "SELECT scope, owner, kind, entry FROM risk_lists ORDER BY scope, owner, kind, entry",
            &[],
            |r| {
                Ok(ListRow {
                    scope: req(r.text(0)?, 0)?,
                    owner: req(r.text(1)?, 1)?,
                    kind: req(r.text(2)?, 2)?,
                    entry: req(r.text(3)?, 3)?,
                })
            },
        )
    }

    /// Adds `add` and removes `remove` (entries of one list) in one transaction.
    pub fn risk_list_change(
        &mut self,
        (scope, owner, kind): (&str, &str, &str),
        add: &[String],
        remove: &[String],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            for e in add {
                tx.execute(
                    "INSERT INTO risk_lists (scope, owner, kind, entry, created_ms) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, owner, kind, entry) DO NOTHING",
                    &[
                        Value::from(scope),
                        Value::from(owner),
                        Value::from(kind),
                        Value::from(e.as_str()),
                        Value::from(now_ms),
                    ],
                )?;
            }
            for e in remove {
                tx.execute(
                    "DELETE FROM risk_lists WHERE scope = $1 AND owner = $2 AND kind = $3 AND entry = $4",
                    &[
                        Value::from(scope),
                        Value::from(owner),
                        Value::from(kind),
                        Value::from(e.as_str()),
                    ],
                )?;
            }
            tx.execute(
                "INSERT INTO risk_meta (id, version) VALUES (1, 1) \
                 ON CONFLICT (id) DO UPDATE SET version = risk_meta.version + 1",
                &[],
            )?;
            Ok(())
        })
    }

    /// The lists' version: bumped by every change (0 before the first).
    pub fn risk_list_version(&self) -> Result<i64, StoreError> {
        let v = self.query("SELECT version FROM risk_meta WHERE id = 1", &[], |r| {
            req(r.int(0)?, 0)
        })?;
        Ok(v.first().copied().unwrap_or(0))
    }

    /// Counts the attempts to `number` each of `counted` names, asks `verdict` whether this
    /// attempt may go, and if so records it (`tenant` and `route` may be empty) — all in one
    /// transaction serialized per number. Returns the counts and the verdict.
    pub fn risk_attempt(
        &mut self,
        number: &str,
        (tenant, route): (&str, &str),
        counted: &[Counted<'_>],
        now_ms: i64,
        verdict: impl FnOnce(&[u64]) -> bool,
    ) -> Result<(Vec<u64>, bool), StoreError> {
        let work = |tx: &mut Tx<'_, '_>| -> Result<(Vec<u64>, bool), StoreError> {
            let mut counts = Vec::with_capacity(counted.len());
            for c in counted {
                let n = match *c {
                    Counted::Tenant { tenant, since_ms } => tx.count(
                        COUNT_TENANT_SQL,
                        &[number.into(), tenant.into(), since_ms.into()],
                    )?,
                    Counted::Route { route, since_ms } => tx.count(
                        COUNT_ROUTE_SQL,
                        &[number.into(), route.into(), since_ms.into()],
                    )?,
                };
                counts.push(n);
            }
            let go = verdict(&counts);
            if go {
                tx.execute(
                    INSERT_ATTEMPT_SQL,
                    &[number.into(), tenant.into(), route.into(), now_ms.into()],
                )?;
            }
            Ok((counts, go))
        };
        match &self.pg {
            None => {
                let t = self
                    .conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)?;
                let out = work(&mut Tx::Sqlite(&t))?;
                t.commit()?;
                Ok(out)
            }
            Some(_) => self.write(|tx| {
                tx.execute(
                    "SELECT pg_advisory_xact_lock($1)",
                    &[Value::from(number_lock_key(number))],
                )?;
                work(tx)
            }),
        }
    }

    /// Forgets attempts made before `before_ms` (older than the longest cap's window);
    /// returns how many.
    pub fn risk_prune(&mut self, before_ms: i64) -> Result<u64, StoreError> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM risk_attempts WHERE at_ms < $1",
                &[Value::from(before_ms)],
            )
        })
    }
}

/// The advisory lock key of a number: FNV-1a of its text, with the top bits of "RISK" so it
/// stays clear of [`super::MIGRATION_LOCK_KEY`].
fn number_lock_key(number: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in number.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    ((0x5249_u64 << 48) | (h & 0x0000_ffff_ffff_ffff)) as i64
}

impl Tx<'_, '_> {
    /// Runs a `SELECT COUNT(*) ...` and returns the count.
    fn count(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError> {
        let n: i64 = match self {
            Tx::Sqlite(conn) => conn
                .prepare_cached(sql)?
                .query_row(rusqlite::params_from_iter(params.iter()), |r| r.get(0))?,
            Tx::Postgres { tx, statements } => {
                let stmt = match statements.get(sql) {
                    Some(s) => s.clone(),
                    None => {
                        let s = tx.prepare(sql)?;
                        statements.insert(sql.to_string(), s.clone());
                        s
                    }
                };
                tx.query_one(&stmt, &super::pg_params(params))?.try_get(0)?
            }
        };
        Ok(n.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_and_attempts_are_counted_per_tenant_and_route() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut store = Store::open(&path).unwrap();
        let list = ("tenant", "acme", "black");
        store
            .risk_list_change(list, &["44*".into(), "4420".into()], &[], 1)
            .unwrap();
        store
            .risk_list_change(list, &["44*".into()], &["4420".into()], 2)
            .unwrap();
        let rows = store.risk_lists().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(store.risk_list_version().unwrap(), 2);
        assert_eq!(rows[0].entry, "44*");

        let counted = |since| {
            [
                Counted::Tenant {
                    tenant: "acme",
                    since_ms: since,
                },
                Counted::Route {
                    route: "uk",
                    since_ms: since,
                },
            ]
        };
        // Two attempts allowed at most: the third is refused and not recorded.
        for (i, expect) in [(0u64, true), (1, true), (2, false), (2, false)] {
            let (counts, go) = store
                .risk_attempt("4420", ("acme", "uk"), &counted(0), 100, |c| c[0] < 2)
                .unwrap();
            assert_eq!((counts[0], go), (i, expect));
        }
        // Another tenant through the same route: its own count is 0, the route's is 2.
        let other = [
            Counted::Tenant {
                tenant: "other",
                since_ms: 0,
            },
            Counted::Route {
                route: "uk",
                since_ms: 0,
            },
        ];
        let (counts, _) = store
            .risk_attempt("4420", ("other", "uk"), &other, 100, |_| false)
            .unwrap();
        assert_eq!(counts, [0, 2]);
        // Outside the window nothing counts; a restart (a new connection) keeps the rows.
        drop(store);
        let mut store = Store::open(&path).unwrap();
        let (counts, _) = store
            .risk_attempt("4420", ("acme", "uk"), &counted(100), 200, |_| false)
            .unwrap();
        assert_eq!(counts, [0, 0]);
        let (counts, _) = store
            .risk_attempt("4420", ("acme", "uk"), &counted(99), 200, |_| false)
            .unwrap();
        assert_eq!(counts, [2, 2]);
        assert_eq!(store.risk_prune(101).unwrap(), 2);
    }

    #[test]
    fn lock_keys_differ_per_number_and_from_the_migration_lock() {
        assert_ne!(number_lock_key("4420"), number_lock_key("4421"));
        assert_ne!(number_lock_key(""), super::super::MIGRATION_LOCK_KEY);
        assert_eq!(number_lock_key("4420") >> 48, 0x5249);
    }
}
