//! The database: SQLite in WAL mode on a single node (DESIGN.md, "Storage", says why not
//! sled), PostgreSQL for the shared data of a cluster (registrations, CDRs, statistics).
//!
//! One [`Store`] is one connection, to either engine ([`Database`] says which). The switch
//! writes through a few connections owned by actors on their own OS threads (the store writer,
//! the registrar's writer), because both clients block: the PostgreSQL client is the sync
//! `postgres` crate, which runs its own small runtime and panics if called from a tokio worker.
//! Readers (tests, the API) may open further connections; SQLite's WAL lets them read without
//! blocking the writer.
//!
//! **Same queries, same migrations.** Every query is one SQL text for both engines: `$1`, `$2`
//! ... placeholders (SQLite binds them positionally in order of first appearance, so each text
//! names them in ascending order), `INSERT ... ON CONFLICT ... DO UPDATE` instead of
//! `INSERT OR REPLACE`, integers bound as `i64`. The schema evolves through numbered
//! migrations ([`MIGRATIONS`]), written in SQLite's spelling and passed through
//! [`postgres_dialect`] for PostgreSQL, which rewrites the few type spellings that differ.
//! The number applied so far is kept in `PRAGMA user_version` on SQLite and in the one-row
//! table `switchyard_schema` on PostgreSQL; opening a database applies the missing ones in
//! order, one transaction each, under a lock (SQLite's write lock, PostgreSQL's advisory lock
//! [`MIGRATION_LOCK_KEY`]) so nodes starting together never apply one twice. A later feature
//! adds a table or a column by appending one SQL string to the list, never by editing an old
//! one.
//!
//! The recording index (`recordings`) stays in each node's SQLite file, because the files it
//! indexes are node-local.

pub mod access_keys;
pub mod audit;
mod cdr;
pub mod config;
pub mod recordings;
pub mod registrations;
pub mod reports;
pub mod risk;
pub mod tokens;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use rusqlite::{Connection, TransactionBehavior};

pub use cdr::{now_unix_ms, Cdr, CdrLeg, CdrMedia, HangupBy};

/// Migration `n` (1-based) is `MIGRATIONS[n - 1]`; `PRAGMA user_version` (SQLite) or
/// `switchyard_schema.version` (PostgreSQL) holds how many of them a database has had applied.
/// Written in SQLite's spelling; PostgreSQL gets them through [`postgres_dialect`]. Append
/// only: an applied migration is never edited.
pub const MIGRATIONS: &[&str] = &[
    // 1: call detail records, one per call.
    "CREATE TABLE cdrs (
        id                INTEGER PRIMARY KEY,
        a_call_id         TEXT    NOT NULL,
        b_call_id         TEXT,
        caller            TEXT    NOT NULL,
        callee            TEXT    NOT NULL,
        route             TEXT,
        target            TEXT,
        start_at          INTEGER NOT NULL,
        ringing_at        INTEGER,
        answer_at         INTEGER,
        end_at            INTEGER NOT NULL,
        duration_ms       INTEGER NOT NULL,
        billable_ms       INTEGER NOT NULL,
        final_status      INTEGER NOT NULL,
        hangup_by         TEXT    NOT NULL CHECK (hangup_by IN ('caller', 'callee', 'system')),
        disconnect_reason TEXT    NOT NULL
    );
    CREATE INDEX cdrs_a_call_id ON cdrs (a_call_id);
    CREATE INDEX cdrs_end_at ON cdrs (end_at);",
    // 2: registrar bindings (see `registrations`).
    registrations::MIGRATION,
    // 3: contact-centre fields of CDRs, and snapshots of queue statistics.
    "ALTER TABLE cdrs ADD COLUMN queue TEXT;
    ALTER TABLE cdrs ADD COLUMN agent TEXT;
    ALTER TABLE cdrs ADD COLUMN wait_ms INTEGER;
    ALTER TABLE cdrs ADD COLUMN abandoned INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX cdrs_agent ON cdrs (agent, answer_at);
    CREATE TABLE queue_stats (
        id            INTEGER PRIMARY KEY,
        at            INTEGER NOT NULL,
        tenant        TEXT    NOT NULL,
        queue         TEXT    NOT NULL,
        joined        INTEGER NOT NULL,
        answered      INTEGER NOT NULL,
        abandoned     INTEGER NOT NULL,
        overflowed    INTEGER NOT NULL,
        within_sl     INTEGER NOT NULL,
        waiting       INTEGER NOT NULL,
        longest_wait_ms INTEGER NOT NULL,
        asa_ms        INTEGER NOT NULL,
        aht_ms        INTEGER NOT NULL,
        available     INTEGER NOT NULL,
        logged_in     INTEGER NOT NULL
    );
    CREATE INDEX queue_stats_at ON queue_stats (tenant, queue, at);",
    // 4: each agent's latest figures (state, counters, time in each state).
    "CREATE TABLE agent_stats (
        tenant        TEXT    NOT NULL,
        agent         TEXT    NOT NULL,
        at            INTEGER NOT NULL,
        state         TEXT    NOT NULL,
        calls         INTEGER NOT NULL,
        talk_ms       INTEGER NOT NULL,
        offers        INTEGER NOT NULL,
        state_ms      TEXT    NOT NULL,
        PRIMARY KEY (tenant, agent)
    );",
    // 5: trunk attempts of CDRs.
    "ALTER TABLE cdrs ADD COLUMN trunk TEXT;
    ALTER TABLE cdrs ADD COLUMN attempts TEXT;",
    // 6: the recording index (see `recordings`).
    recordings::MIGRATION,
    // 7: media of anchored calls in CDRs: DTMF digits, recording, quality per leg.
    "ALTER TABLE cdrs ADD COLUMN dtmf TEXT;
    ALTER TABLE cdrs ADD COLUMN recording TEXT;
    ALTER TABLE cdrs ADD COLUMN mos_a REAL;
    ALTER TABLE cdrs ADD COLUMN mos_b REAL;
    ALTER TABLE cdrs ADD COLUMN loss_a REAL;
    ALTER TABLE cdrs ADD COLUMN loss_b REAL;
    ALTER TABLE cdrs ADD COLUMN jitter_a_ms REAL;
    ALTER TABLE cdrs ADD COLUMN jitter_b_ms REAL;
    ALTER TABLE cdrs ADD COLUMN rtt_ms REAL;
    ALTER TABLE cdrs ADD COLUMN packets_a INTEGER;
    ALTER TABLE cdrs ADD COLUMN packets_b INTEGER;",
    // 8: routes and numbers changed through the API on a node alone (see `config`).
    config::MIGRATION,
    // 9: transfers and legs of CDRs: the transfer chain, and who talked to whom (one row per
    // leg of a call, in the order the legs joined; written with their CDR).
    "ALTER TABLE cdrs ADD COLUMN transfers TEXT;
    CREATE TABLE cdr_legs (
        cdr_id      INTEGER NOT NULL REFERENCES cdrs (id) ON DELETE CASCADE,
        seq         INTEGER NOT NULL,
        call_id     TEXT    NOT NULL,
        role        TEXT    NOT NULL,
        party       TEXT    NOT NULL,
        start_at    INTEGER NOT NULL,
        answer_at   INTEGER,
        end_at      INTEGER NOT NULL,
        end_reason  TEXT    NOT NULL,
        PRIMARY KEY (cdr_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX cdr_legs_call_id ON cdr_legs (call_id);",
    // 10: the tenant of each CDR (what scopes `GET /cdrs` and the reports); CDRs written
    // before keep NULL and are seen by the node's credentials only. Indexes for the
    // listings (newest first per tenant) and the reports (by start time).
    "ALTER TABLE cdrs ADD COLUMN tenant TEXT;
    CREATE INDEX cdrs_tenant ON cdrs (tenant, id);
    CREATE INDEX cdrs_start_at ON cdrs (start_at);",
    // 11: the audit log of management changes (see `audit`).
    audit::MIGRATION,
    // 12: tenants' access keys, their secrets sealed (see `access_keys`).
    access_keys::MIGRATION,
    // 13: risk control: black and white lists, outbound attempts counted by frequency caps
    // (see `risk`; self-contained, so it may be renumbered after other branches' migrations).
    risk::MIGRATION,
];

/// One snapshot of a queue's counters (the `queue_stats` table; counters are totals since
/// the queue started, so a report takes differences between snapshots).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStatsRow {
    pub at: i64,
    pub tenant: String,
    pub queue: String,
    pub joined: i64,
    pub answered: i64,
    pub abandoned: i64,
    pub overflowed: i64,
    pub within_sl: i64,
    pub waiting: i64,
    pub longest_wait_ms: i64,
    pub asa_ms: i64,
    pub aht_ms: i64,
    pub available: i64,
    pub logged_in: i64,
}

/// An agent's latest figures (the `agent_stats` table). `state_ms` is JSON: milliseconds
/// spent in each state, e.g. `{"available":1200,"on_call":20000,...}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentStatsRow {
    pub tenant: String,
    pub agent: String,
    pub at: i64,
    pub state: String,
    pub calls: i64,
    pub talk_ms: i64,
    pub offers: i64,
    pub state_ms: String,
}

/// Which engine a store uses, by role (gauge, always 1; labels `store` = cdrs, registrations,
/// recordings, statistics and `backend` = sqlite or postgres).
pub const STORE_BACKEND: &str = "switchyard_store_backend";
/// PostgreSQL connections of a store re-opened after the server closed them (counter).
pub const STORE_RECONNECTS_TOTAL: &str = "switchyard_store_reconnects_total";

/// Describes the storage layer's metrics (the writers describe their own).
pub fn describe() {
    metrics::describe_gauge!(
        STORE_BACKEND,
        "Always 1; labels say which engine (sqlite, postgres) holds which data (store)"
    );
    metrics::describe_counter!(
        STORE_RECONNECTS_TOTAL,
        "PostgreSQL store connections re-opened after the server closed them"
    );
}

/// How long a connection waits for another connection's lock before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to PostgreSQL may take before it fails.
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL advisory lock taken (per transaction) while checking and applying
/// migrations, so nodes starting at once apply each migration exactly once. Any fixed number
/// works as long as nothing else on the server uses it; this one spells "SWYDMIGR".
pub const MIGRATION_LOCK_KEY: i64 = 0x5357_5944_4d49_4752;

/// The PostgreSQL table holding how many migrations were applied (SQLite: `user_version`).
const PG_SCHEMA_TABLE: &str = "switchyard_schema";

/// Where a store's data lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// The node's own SQLite file (created with its directory if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL server shared by the nodes of a cluster: a libpq URL
    /// (`postgresql://user:pw@host:port/db`) or key=value conninfo (`host=... port=...`).
    Postgres(String),
}

impl Database {
    /// `sqlite` or `postgres` (the `backend` label of [`STORE_BACKEND`]).
    pub fn backend(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgres",
        }
    }

    /// Whether this is a PostgreSQL database.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Database::Postgres(_))
    }

    /// Sets [`STORE_BACKEND`] for the data called `store` (cdrs, registrations, ...).
    pub fn record_backend(&self, store: &'static str) {
        metrics::gauge!(STORE_BACKEND, "store" => store, "backend" => self.backend()).set(1.0);
    }
}

/// Shows where the data is without the password a PostgreSQL URL may carry.
impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            Database::Postgres(conninfo) => match conninfo.parse::<postgres::Config>() {
                Ok(c) => {
                    let hosts: Vec<String> = c
                        .get_hosts()
                        .iter()
                        .zip(c.get_ports().iter().chain(std::iter::repeat(&5432)))
                        .map(|(h, p)| match h {
                            postgres::config::Host::Tcp(h) => format!("{h}:{p}"),
                            postgres::config::Host::Unix(d) => format!("{}:{p}", d.display()),
                        })
                        .collect();
                    write!(
                        f,
                        "postgres://{}@{}/{}",
                        c.get_user().unwrap_or(""),
                        hosts.join(","),
                        c.get_dbname().unwrap_or("")
                    )
                }
                Err(_) => f.write_str("postgres:<unparsable conninfo>"),
            },
        }
    }
}

/// Same as `Display`: never prints a password.
impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Database({self})")
    }
}

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused an operation, or the connection failed.
    #[error("postgres: {}", pg_error_text(.0))]
    Postgres(#[from] postgres::Error),
    /// The database directory could not be created.
    #[error("creating the database directory {path}: {source}")]
    CreateDir {
        /// The directory that could not be created.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The database was written by a newer Switchyard whose schema this build does not know.
    #[error("database schema version {found} is newer than this build knows ({known})")]
    SchemaTooNew {
        /// `PRAGMA user_version` of the file, or `switchyard_schema.version`.
        found: i64,
        /// The number of migrations this build has.
        known: usize,
    },
    /// SQLite would not switch the file to WAL mode (e.g. an in-memory database).
    #[error("database refused WAL mode (journal_mode is {0})")]
    NotWal(String),
    /// A stored value does not fit the Rust type (a NULL in a required column, a number out
    /// of range, an unknown enum text).
    #[error("bad stored value: {0}")]
    BadValue(String),
    /// The PostgreSQL connection was closed (the server went away); the next operation on
    /// the store reconnects.
    #[error("the database connection is closed")]
    Closed,
    /// The operation exists for one engine only (e.g. LISTEN is PostgreSQL's).
    #[error("{0} is not supported on this database engine")]
    Unsupported(&'static str),
}

/// A PostgreSQL error with the server's message and SQLSTATE (the client's own `Display`
/// says only "db error" for those).
fn pg_error_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// What a commit waits for before it returns.
///
/// SQLite: in WAL mode both settings survive the process being killed (`kill -9`): a committed
/// transaction is in the WAL file in the OS page cache either way. Only `Full` also survives
/// a power loss or kernel crash, because it fsyncs the WAL at every commit.
///
/// PostgreSQL: `Full` is the server's default (`synchronous_commit` as configured, normally
/// on); `Normal` sets `synchronous_commit = off` for the session, so a commit does not wait for
/// the server's WAL flush (a server crash may lose the last fraction of a second of commits,
/// never consistency), which suits registrations as it does on SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// fsync the WAL only at checkpoints: survives process death, not power loss.
    Normal,
    /// fsync the WAL at every commit: survives power loss too. The default for CDRs.
    #[default]
    Full,
}

impl Synchronous {
    fn as_pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// One connection to the Switchyard database, with the schema migrated to this build.
pub struct Store {
    /// SQLite: the database. PostgreSQL: an empty in-memory SQLite database. It exists only
    /// because the recording index code (`recordings`, node-local by design and SQLite only)
    /// reaches for this field: on a PostgreSQL store its calls fail with "no such table"
    /// instead of touching the shared server.
    conn: Connection,
    /// Set for a PostgreSQL store; every query but the recording index's goes here. In a
    /// `RefCell` because reads take `&self` while the client needs `&mut` (a `Store` is used
    /// by one thread at a time, as a SQLite connection is).
    pg: Option<RefCell<Pg>>,
}

/// A PostgreSQL connection with what is needed to re-open it and its prepared statements.
struct Pg {
    client: postgres::Client,
    conninfo: String,
    synchronous: Synchronous,
    /// Prepared statements by SQL text; dropped on reconnect and after any error (a failed
    /// transaction may have been the one that prepared them).
    statements: HashMap<String, postgres::Statement>,
    /// Set by [`Store::listen`]: a lost connection is then an error, never silently replaced
    /// by a fresh one that listens to nothing.
    listening: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.pg {
            None => f
                .debug_struct("Store")
                .field("path", &self.conn.path())
                .finish(),
            Some(pg) => {
                let conninfo = pg
                    .try_borrow()
                    .map(|p| Database::Postgres(p.conninfo.clone()).to_string())
                    .unwrap_or_default();
                f.debug_struct("Store")
                    .field("postgres", &conninfo)
                    .finish()
            }
        }
    }
}

impl Store {
    /// Open (creating if needed) the database at `path` with `synchronous=FULL`: creates the
    /// parent directory, switches to WAL and applies missing migrations.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, Synchronous::Full)
    }

    /// [`Store::open`] with an explicit `synchronous` setting.
    pub fn open_with(path: &Path, synchronous: Synchronous) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotWal(mode));
        }
        conn.pragma_update(None, "synchronous", synchronous.as_pragma())?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Store { conn, pg: None })
    }

    /// Opens `database` (SQLite: as [`Store::open_with`]; PostgreSQL: connects and applies the
    /// missing migrations under [`MIGRATION_LOCK_KEY`]). Blocks: call it on a thread of its
    /// own or in `spawn_blocking`, never on a tokio worker (the PostgreSQL client panics there).
    pub fn connect(database: &Database, synchronous: Synchronous) -> Result<Store, StoreError> {
        match database {
            Database::Sqlite(path) => Store::open_with(path, synchronous),
            Database::Postgres(conninfo) => {
                let mut client = pg_connect(conninfo, synchronous)?;
                migrate_pg(&mut client)?;
                Ok(Store {
                    conn: Connection::open_in_memory()?,
                    pg: Some(RefCell::new(Pg {
                        client,
                        conninfo: conninfo.clone(),
                        synchronous,
                        statements: HashMap::new(),
                        listening: false,
                    })),
                })
            }
        }
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        if self.pg.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// The schema version of the open database: how many [`MIGRATIONS`] it has.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        match &self.pg {
            None => Ok(user_version(&self.conn)?),
            Some(_) => {
                let sql = format!("SELECT version FROM {PG_SCHEMA_TABLE} WHERE id = 1");
                let v = self.query(&sql, &[], |r| req(r.int(0)?, 0))?;
                Ok(v.first().copied().unwrap_or(0))
            }
        }
    }

    /// Every table of the schema with its column names in order (the engine's own
    /// bookkeeping tables left out): what a comparison of the two engines' schemas needs.
    pub fn schema_columns(&self) -> Result<BTreeMap<String, Vec<String>>, StoreError> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        match &self.pg {
            None => {
                let tables = self.query(
                    "SELECT name FROM sqlite_master WHERE type = 'table' \
                     AND name NOT LIKE 'sqlite_%' ORDER BY name",
                    &[],
                    |r| req(r.text(0)?, 0),
                )?;
                for t in tables {
                    let cols = self.query(
                        "SELECT name FROM pragma_table_info($1) ORDER BY cid",
                        &[Value::from(t.as_str())],
                        |r| req(r.text(0)?, 0),
                    )?;
                    out.insert(t, cols);
                }
            }
            Some(_) => {
                let rows = self.query(
                    "SELECT table_name::text, column_name::text FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name <> $1 \
                     ORDER BY table_name, ordinal_position",
                    &[Value::from(PG_SCHEMA_TABLE)],
                    |r| Ok((req(r.text(0)?, 0)?, req(r.text(1)?, 1)?)),
                )?;
                for (t, c) in rows {
                    out.entry(t).or_default().push(c);
                }
            }
        }
        Ok(out)
    }

    /// Insert `cdrs` and their legs in one transaction: either all of them are committed or
    /// none is.
    pub fn insert_cdrs(&mut self, cdrs: &[Cdr]) -> Result<(), StoreError> {
        self.write(|tx| {
            for c in cdrs {
                let id = tx.insert_returning_id(cdr::INSERT_SQL, &cdr::values(c))?;
                for (seq, leg) in (0i64..).zip(&c.legs) {
                    tx.execute(cdr::INSERT_LEG_SQL, &cdr::leg_values(id, seq, leg))?;
                }
            }
            Ok(())
        })
    }

    /// Appends snapshots of queue statistics (one transaction).
    pub fn insert_queue_stats(&mut self, rows: &[QueueStatsRow]) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO queue_stats (at, tenant, queue, joined, answered, \
             abandoned, overflowed, within_sl, waiting, longest_wait_ms, asa_ms, aht_ms, \
             available, logged_in) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";
        self.write(|tx| {
            for r in rows {
                tx.execute(
                    SQL,
                    &[
                        r.at.into(),
                        r.tenant.as_str().into(),
                        r.queue.as_str().into(),
                        r.joined.into(),
                        r.answered.into(),
                        r.abandoned.into(),
                        r.overflowed.into(),
                        r.within_sl.into(),
                        r.waiting.into(),
                        r.longest_wait_ms.into(),
                        r.asa_ms.into(),
                        r.aht_ms.into(),
                        r.available.into(),
                        r.logged_in.into(),
                    ],
                )?;
            }
            Ok(())
        })
    }

    /// Stores each agent's latest figures (one row per agent, replaced; one transaction).
    pub fn upsert_agent_stats(&mut self, rows: &[AgentStatsRow]) -> Result<(), StoreError> {
        self.write(|tx| {
            for r in rows {
                tx.execute(
                    UPSERT_AGENT_STATS_SQL,
                    &[
                        r.tenant.as_str().into(),
                        r.agent.as_str().into(),
                        r.at.into(),
                        r.state.as_str().into(),
                        r.calls.into(),
                        r.talk_ms.into(),
                        r.offers.into(),
                        r.state_ms.as_str().into(),
                    ],
                )?;
            }
            Ok(())
        })
    }

    /// The newest `limit` CDRs, newest first, with their legs.
    pub fn list_cdrs(&self, limit: usize) -> Result<Vec<Cdr>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.query(&cdr::LIST_SQL, &[limit.into()], cdr::from_row_with_id)?;
        self.with_legs(rows)
    }

    /// Fills the legs of `rows` (CDRs with their row ids, newest first: consecutive ids)
    /// with one range query.
    fn with_legs(&self, mut rows: Vec<(i64, Cdr)>) -> Result<Vec<Cdr>, StoreError> {
        let (Some(newest), Some(oldest)) = (rows.first(), rows.last()) else {
            return Ok(Vec::new());
        };
        let (from, to) = (oldest.0, newest.0);
        let legs = self.query(cdr::LEGS_SQL, &[from.into(), to.into()], cdr::leg_from_row)?;
        for (cdr_id, leg) in legs {
            // Newest first: the row of `cdr_id` is found by binary search on descending ids.
            if let Ok(i) = rows.binary_search_by(|(id, _)| cdr_id.cmp(id)) {
                rows[i].1.legs.push(leg);
            }
        }
        Ok(rows.into_iter().map(|(_, c)| c).collect())
    }

    /// How many CDRs are stored.
    pub fn count_cdrs(&self) -> Result<u64, StoreError> {
        let n = self.query("SELECT COUNT(*) FROM cdrs", &[], |r| req(r.int(0)?, 0))?;
        Ok(n.first().and_then(|n| u64::try_from(*n).ok()).unwrap_or(0))
    }

    /// The CDR whose A-leg Call-ID is `a_call_id` (the newest, should a Call-ID repeat).
    pub fn get_cdr_by_call_id(&self, a_call_id: &str) -> Result<Option<Cdr>, StoreError> {
        let rows = self.query(
            &cdr::BY_CALL_ID_SQL,
            &[a_call_id.into()],
            cdr::from_row_with_id,
        )?;
        Ok(self.with_legs(rows)?.pop())
    }

    // ---- the two engines behind one interface ----

    /// Runs `sql` (placeholders `$1`, `$2`, ... in ascending order) and maps each row.
    fn query<T>(
        &self,
        sql: &str,
        params: &[Value<'_>],
        mut map: impl FnMut(&dyn SqlRow) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        match &self.pg {
            None => {
                let mut stmt = self.conn.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
                while let Some(row) = rows.next()? {
                    out.push(map(row)?);
                }
            }
            Some(pg) => with_pg(&mut pg.borrow_mut(), |pg| {
                let stmt = pg.statement(sql)?;
                for row in pg.client.query(&stmt, &pg_params(params))? {
                    out.push(map(&row)?);
                }
                Ok(())
            })?,
        }
        Ok(out)
    }

    /// Runs `work` in one transaction, committed if it returns `Ok`, rolled back otherwise.
    fn write<T>(
        &mut self,
        work: impl FnOnce(&mut Tx<'_, '_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.pg {
            None => {
                let tx = self.conn.transaction()?;
                let out = work(&mut Tx::Sqlite(&tx))?;
                tx.commit()?;
                Ok(out)
            }
            Some(pg) => with_pg(&mut pg.borrow_mut(), |pg| {
                let mut tx = pg.client.transaction()?;
                let out = work(&mut Tx::Postgres {
                    tx: &mut tx,
                    statements: &mut pg.statements,
                })?;
                tx.commit()?;
                Ok(out)
            }),
        }
    }

    /// Runs `work` on the PostgreSQL connection (reopened if the server closed it).
    fn pg_only<T>(
        &self,
        what: &'static str,
        work: impl FnOnce(&mut postgres::Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.pg {
            None => Err(StoreError::Unsupported(what)),
            Some(pg) => with_pg(&mut pg.borrow_mut(), |pg| work(&mut pg.client)),
        }
    }

    /// PostgreSQL only: `LISTEN channel` on this connection (see [`Store::notifications`]).
    /// `channel` must be a plain identifier.
    pub fn listen(&mut self, channel: &str) -> Result<(), StoreError> {
        if channel.is_empty()
            || !channel
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(StoreError::BadValue(format!(
                "channel {channel:?} is not a plain identifier"
            )));
        }
        self.pg_only("LISTEN", |c| {
            Ok(c.batch_execute(&format!("LISTEN {channel}"))?)
        })?;
        if let Some(pg) = &self.pg {
            pg.borrow_mut().listening = true;
        }
        Ok(())
    }

    /// PostgreSQL only: the notifications that arrived on the channels this connection
    /// listens to, as `(channel, payload)`: those already buffered, else the first ones
    /// within `timeout` (an empty list when none came). Fails when the connection is lost,
    /// so a listener knows to reconnect and catch up.
    pub fn notifications(
        &mut self,
        timeout: Duration,
    ) -> Result<Vec<(String, String)>, StoreError> {
        /// Enough to return promptly under a burst; the rest stays buffered for the next call.
        const MAX_PER_CALL: usize = 10_000;
        self.pg_only("notifications", |c| {
            let mut out = Vec::new();
            {
                let mut notifications = c.notifications();
                // Wait for the first one only: `timeout_iter` would wait the whole timeout
                // again after each notification; what else has arrived is taken at once.
                let first = notifications.timeout_iter(timeout).next()?;
                if let Some(n) = first {
                    out.push((n.channel().to_string(), n.payload().to_string()));
                    let mut rest = notifications.iter();
                    while out.len() < MAX_PER_CALL {
                        match rest.next()? {
                            Some(n) => out.push((n.channel().to_string(), n.payload().to_string())),
                            None => break,
                        }
                    }
                }
            }
            // `None` also means "disconnected": tell the caller rather than wait forever.
            if out.is_empty() && c.is_closed() {
                return Err(StoreError::Closed);
            }
            Ok(out)
        })
    }

    /// PostgreSQL: a round trip, a listener's liveness check between notifications (a
    /// listening store fails if the connection is gone; any other reconnects first).
    /// SQLite: always fine.
    pub fn ping(&mut self) -> Result<(), StoreError> {
        match &self.pg {
            None => Ok(()),
            Some(pg) => with_pg(&mut pg.borrow_mut(), |pg| {
                Ok(pg.client.batch_execute("SELECT 1")?)
            }),
        }
    }
}

/// `agent_stats` upsert: one spelling both engines accept (`INSERT OR REPLACE` is SQLite's).
const UPSERT_AGENT_STATS_SQL: &str = "INSERT INTO agent_stats (tenant, agent, at, state, calls, \
     talk_ms, offers, state_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (tenant, agent) DO UPDATE SET at = excluded.at, state = excluded.state, \
     calls = excluded.calls, talk_ms = excluded.talk_ms, offers = excluded.offers, \
     state_ms = excluded.state_ms";

/// One open transaction on either engine.
enum Tx<'a, 'b> {
    Sqlite(&'a Connection),
    Postgres {
        tx: &'a mut postgres::Transaction<'b>,
        statements: &'a mut HashMap<String, postgres::Statement>,
    },
}

impl Tx<'_, '_> {
    /// Runs one statement (placeholders `$1`, `$2`, ... in ascending order); returns the
    /// number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError> {
        match self {
            Tx::Sqlite(conn) => {
                let n = conn
                    .prepare_cached(sql)?
                    .execute(rusqlite::params_from_iter(params.iter()))?;
                Ok(n as u64)
            }
            Tx::Postgres { tx, statements } => {
                let stmt = match statements.get(sql) {
                    Some(s) => s.clone(),
                    None => {
                        let s = tx.prepare(sql)?;
                        statements.insert(sql.to_string(), s.clone());
                        s
                    }
                };
                Ok(tx.execute(&stmt, &pg_params(params))?)
            }
        }
    }
}

impl Tx<'_, '_> {
    /// Runs an `INSERT ... RETURNING id` and returns the new row's id.
    fn insert_returning_id(&mut self, sql: &str, params: &[Value<'_>]) -> Result<i64, StoreError> {
        match self {
            Tx::Sqlite(conn) => Ok(conn
                .prepare_cached(sql)?
                .query_row(rusqlite::params_from_iter(params.iter()), |r| r.get(0))?),
            Tx::Postgres { tx, statements } => {
                let stmt = match statements.get(sql) {
                    Some(s) => s.clone(),
                    None => {
                        let s = tx.prepare(sql)?;
                        statements.insert(sql.to_string(), s.clone());
                        s
                    }
                };
                Ok(tx.query_one(&stmt, &pg_params(params))?.try_get(0)?)
            }
        }
    }
}

impl Pg {
    /// The prepared statement for `sql`, preparing it on first use.
    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

/// Runs `work` on `pg`, first reopening the connection if the server closed it (a restarted
/// server, a failover): the store's owner keeps its data and retries, and the next attempt
/// gets a fresh connection. A listening connection is not reopened (the caller must LISTEN
/// again and catch up). Any error drops the prepared statements.
fn with_pg<T>(
    pg: &mut Pg,
    work: impl FnOnce(&mut Pg) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    if pg.client.is_closed() {
        if pg.listening {
            return Err(StoreError::Closed);
        }
        pg.statements.clear();
        pg.client = pg_connect(&pg.conninfo, pg.synchronous)?;
        metrics::counter!(STORE_RECONNECTS_TOTAL).increment(1);
        tracing::info!(database = %Database::Postgres(pg.conninfo.clone()), "store reconnected");
    }
    let out = work(pg);
    if out.is_err() {
        pg.statements.clear();
    }
    out
}

fn pg_connect(conninfo: &str, synchronous: Synchronous) -> Result<postgres::Client, StoreError> {
    let mut config: postgres::Config = conninfo.parse()?;
    if config.get_application_name().is_none() {
        config.application_name("switchyard");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(PG_CONNECT_TIMEOUT);
    }
    let mut client = config.connect(postgres::NoTls)?;
    if synchronous == Synchronous::Normal {
        client.batch_execute("SET synchronous_commit = off")?;
    }
    Ok(client)
}

fn pg_params<'v>(params: &'v [Value<'_>]) -> Vec<&'v (dyn postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|p| p as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

/// A value bound to a placeholder, in the three types the schema uses. Integers are `i64`
/// because [`postgres_dialect`] makes every integer column `BIGINT` (PostgreSQL checks bound
/// types strictly; SQLite does not care).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Value<'a> {
    Int(Option<i64>),
    Real(Option<f64>),
    Text(Option<&'a str>),
}

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Value::Int(Some(v))
    }
}
impl From<Option<i64>> for Value<'_> {
    fn from(v: Option<i64>) -> Self {
        Value::Int(v)
    }
}
impl From<Option<f64>> for Value<'_> {
    fn from(v: Option<f64>) -> Self {
        Value::Real(v)
    }
}
impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Value::Text(Some(v))
    }
}
impl<'a> From<Option<&'a str>> for Value<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Value::Text(v)
    }
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{Null, ToSqlOutput};
        Ok(match *self {
            Value::Int(Some(v)) => ToSqlOutput::from(v),
            Value::Real(Some(v)) => ToSqlOutput::from(v),
            Value::Text(Some(v)) => ToSqlOutput::from(v),
            Value::Int(None) | Value::Real(None) | Value::Text(None) => ToSqlOutput::from(Null),
        })
    }
}

impl postgres::types::ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // The inner value checks the column type itself (an i64 for a TEXT column fails
        // instead of sending eight bytes the server would misread).
        match self {
            Value::Int(v) => v.to_sql_checked(ty, out),
            Value::Real(v) => v.to_sql_checked(ty, out),
            Value::Text(v) => v.to_sql_checked(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// A result row of either engine, read by column index.
trait SqlRow {
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    fn real(&self, i: usize) -> Result<Option<f64>, StoreError>;
    fn text(&self, i: usize) -> Result<Option<String>, StoreError>;
}

impl SqlRow for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.get(i)?)
    }
    fn real(&self, i: usize) -> Result<Option<f64>, StoreError> {
        Ok(self.get(i)?)
    }
    fn text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.get(i)?)
    }
}

impl SqlRow for postgres::Row {
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn real(&self, i: usize) -> Result<Option<f64>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(i)?)
    }
}

/// A required (NOT NULL) column's value.
fn req<T>(v: Option<T>, column: usize) -> Result<T, StoreError> {
    v.ok_or_else(|| StoreError::BadValue(format!("column {column} is NULL")))
}

/// A stored integer converted to a narrower type.
fn narrow<T: TryFrom<i64>>(v: i64, column: usize) -> Result<T, StoreError> {
    T::try_from(v).map_err(|_| StoreError::BadValue(format!("column {column}: {v} out of range")))
}

/// Rewrites a migration from SQLite's spelling into PostgreSQL's. The only differences the
/// schema uses are type names and a table option:
///
/// | SQLite                 | PostgreSQL              | why |
/// |------------------------|-------------------------|-----|
/// | `INTEGER PRIMARY KEY`  | `BIGSERIAL PRIMARY KEY` | SQLite makes such a column the rowid, numbered on insert |
/// | `INTEGER`              | `BIGINT`                | SQLite integers are 64-bit; PostgreSQL's `INTEGER` is 32 |
/// | `REAL`                 | `DOUBLE PRECISION`      | SQLite's `REAL` is 8 bytes; PostgreSQL's is 4 |
/// | `BLOB`                 | `BYTEA`                 | the name |
/// | `WITHOUT ROWID`        | (dropped)               | a SQLite storage option |
///
/// Keywords are matched case-insensitively as whole words outside string literals, so a
/// `CHECK (state IN ('real'))` is left alone. A column must not be named like one of these
/// types (none is, and a new migration must keep it so).
pub fn postgres_dialect(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 32);
    let bytes = sql.as_bytes();
    let mut i = 0;
    let word_at = |from: usize| -> (usize, usize) {
        // Skips whitespace, then returns the span of the word that follows (empty if none).
        let mut s = from;
        while s < bytes.len() && bytes[s].is_ascii_whitespace() {
            s += 1;
        }
        let mut e = s;
        while e < bytes.len() && (bytes[e].is_ascii_alphanumeric() || bytes[e] == b'_') {
            e += 1;
        }
        (s, e)
    };
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\'' {
            // A string literal, copied untouched ('' is an escaped quote).
            let mut j = i + 1;
            while j < bytes.len() {
                if bytes[j] == b'\'' {
                    if bytes.get(j + 1) == Some(&b'\'') {
                        j += 2;
                        continue;
                    }
                    break;
                }
                j += 1;
            }
            let end = (j + 1).min(bytes.len());
            out.push_str(&sql[i..end]);
            i = end;
        } else if b.is_ascii_alphabetic() || b == b'_' {
            let (_, e) = word_at(i);
            let word = &sql[i..e];
            let next = |from: usize, want: &str| {
                let (s, e) = word_at(from);
                (sql[s..e].eq_ignore_ascii_case(want)).then_some(e)
            };
            if word.eq_ignore_ascii_case("INTEGER") {
                match next(e, "PRIMARY").and_then(|p| next(p, "KEY")) {
                    Some(end) => {
                        out.push_str("BIGSERIAL PRIMARY KEY");
                        i = end;
                    }
                    None => {
                        out.push_str("BIGINT");
                        i = e;
                    }
                }
            } else if word.eq_ignore_ascii_case("REAL") {
                out.push_str("DOUBLE PRECISION");
                i = e;
            } else if word.eq_ignore_ascii_case("BLOB") {
                out.push_str("BYTEA");
                i = e;
            } else if let Some(end) = word
                .eq_ignore_ascii_case("WITHOUT")
                .then(|| next(e, "ROWID"))
                .flatten()
            {
                i = end;
            } else {
                out.push_str(word);
                i = e;
            }
        } else if b.is_ascii_digit() {
            // A number or the digits of a word like `loss_a2`: copied as one token so the
            // tail is never read as a keyword.
            let mut e = i;
            while e < bytes.len() && (bytes[e].is_ascii_alphanumeric() || bytes[e] == b'_') {
                e += 1;
            }
            out.push_str(&sql[i..e]);
            i = e;
        } else {
            let ch = sql[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// Apply the migrations the database lacks, each in its own write transaction together with
/// its `user_version` bump, so a crash mid-way leaves a consistent, resumable schema. The
/// version is read inside the write lock so two connections opening at once cannot both apply
/// the same migration.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version = user_version(&tx)?;
        let applied = usize::try_from(version).unwrap_or(usize::MAX);
        if applied > MIGRATIONS.len() {
            return Err(StoreError::SchemaTooNew {
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        let Some(sql) = MIGRATIONS.get(applied) else {
            return Ok(());
        };
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
        tracing::info!(version = version + 1, "store schema migrated");
    }
}

/// [`migrate`] for PostgreSQL: the same migrations through [`postgres_dialect`], each in its
/// own transaction that first takes the advisory lock [`MIGRATION_LOCK_KEY`] (released at
/// commit) and only then reads the version, so nodes starting at once queue up instead of
/// applying a migration twice. DDL is transactional in PostgreSQL, so a crash mid-way leaves
/// the migration unapplied and the version unchanged.
fn migrate_pg(client: &mut postgres::Client) -> Result<(), StoreError> {
    loop {
        let mut tx = client.transaction()?;
        tx.batch_execute(&format!(
            "SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY});
             CREATE TABLE IF NOT EXISTS {PG_SCHEMA_TABLE} (
                 id      INTEGER PRIMARY KEY CHECK (id = 1),
                 version BIGINT  NOT NULL
             );
             INSERT INTO {PG_SCHEMA_TABLE} (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;"
        ))?;
        let version: i64 = tx
            .query_one(
                &format!("SELECT version FROM {PG_SCHEMA_TABLE} WHERE id = 1"),
                &[],
            )?
            .try_get(0)?;
        let applied = usize::try_from(version).unwrap_or(usize::MAX);
        if applied > MIGRATIONS.len() {
            return Err(StoreError::SchemaTooNew {
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        let Some(sql) = MIGRATIONS.get(applied) else {
            tx.commit()?;
            return Ok(());
        };
        tx.batch_execute(&postgres_dialect(sql))?;
        tx.execute(
            &format!("UPDATE {PG_SCHEMA_TABLE} SET version = $1 WHERE id = 1"),
            &[&(version + 1)],
        )?;
        tx.commit()?;
        tracing::info!(version = version + 1, "store schema migrated (postgres)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(n: u32) -> Cdr {
        let start = 1_700_000_000_000 + i64::from(n) * 1000;
        Cdr {
            a_call_id: format!("a-{n}@127.0.0.1"),
            b_call_id: Some(format!("b-{n}@127.0.0.1")),
            caller: "sip:alice@127.0.0.1".to_string(),
            callee: "1002".to_string(),
            route: Some("10".to_string()),
            target: Some("sip:1002@127.0.0.1:5070".to_string()),
            start_at: start,
            ringing_at: Some(start + 40),
            answer_at: Some(start + 2_000),
            end_at: start + 62_000,
            duration_ms: 62_000,
            billable_ms: 60_000,
            final_status: 200,
            hangup_by: HangupBy::Callee,
            disconnect_reason: "BYE".to_string(),
            queue: None,
            agent: None,
            wait_ms: None,
            abandoned: false,
            trunk: None,
            attempts: None,
            dtmf: None,
            recording: None,
            media: None,
            transfers: None,
            tenant: Some("t".to_string()),
            legs: Vec::new(),
        }
    }

    #[test]
    fn open_creates_parent_dir_and_applies_migrations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/deeper/switchyard.db");
        let store = Store::open(&path).unwrap();
        assert!(path.exists());
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let mode: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        // synchronous: 2 = FULL
        let sync: i64 = store
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2);
    }

    #[test]
    fn opening_twice_is_idempotent_and_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let mut store = Store::open(&path).unwrap();
            store.insert_cdrs(&[sample(1)]).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(store.count_cdrs().unwrap(), 1);
        // A second live connection (a reader next to the writer) opens fine as well.
        let other = Store::open(&path).unwrap();
        assert_eq!(other.count_cdrs().unwrap(), 1);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 999).unwrap();
        }
        match Store::open(&path) {
            Err(StoreError::SchemaTooNew { found: 999, known }) => {
                assert_eq!(known, MIGRATIONS.len())
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }

    #[test]
    fn insert_list_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let mut unanswered = sample(2);
        unanswered.b_call_id = None;
        unanswered.route = None;
        unanswered.target = None;
        unanswered.ringing_at = None;
        unanswered.answer_at = None;
        unanswered.billable_ms = 0;
        unanswered.final_status = 487;
        unanswered.hangup_by = HangupBy::Caller;
        unanswered.disconnect_reason = "CANCEL".to_string();
        let mut system = sample(3);
        system.hangup_by = HangupBy::System;
        let written = vec![sample(1), unanswered, system];
        store.insert_cdrs(&written).unwrap();

        assert_eq!(store.count_cdrs().unwrap(), 3);
        let listed = store.list_cdrs(10).unwrap();
        let expected: Vec<Cdr> = written.iter().rev().cloned().collect();
        assert_eq!(listed, expected, "newest first, every field intact");
        assert_eq!(store.list_cdrs(2).unwrap(), expected[..2].to_vec());
        assert_eq!(
            store.get_cdr_by_call_id("a-2@127.0.0.1").unwrap(),
            Some(written[1].clone())
        );
        assert_eq!(store.get_cdr_by_call_id("nope").unwrap(), None);
    }

    /// A call transferred once: the caller, the agent who transferred it and the target.
    pub(crate) fn transferred(n: u32) -> Cdr {
        let mut c = sample(n);
        let start = c.start_at;
        let leg = |id: String, role: &str, party: &str, at: i64, end: i64, why: &str| CdrLeg {
            call_id: id,
            role: role.to_string(),
            party: party.to_string(),
            start_at: at,
            answer_at: Some(at + 1_000),
            end_at: end,
            end_reason: why.to_string(),
        };
        c.transfers = Some("blind:phone>user:1003".to_string());
        c.legs = vec![
            leg(
                c.a_call_id.clone(),
                "caller",
                "sip:alice@127.0.0.1",
                start,
                start + 62_000,
                "bye",
            ),
            leg(
                format!("b-{n}"),
                "callee",
                "user:1002",
                start + 1_000,
                start + 30_000,
                "transferred",
            ),
            leg(
                format!("c-{n}"),
                "transfer",
                "user:1003",
                start + 20_000,
                start + 62_000,
                "bye",
            ),
        ];
        // A leg that never answered keeps its NULL.
        c.legs[1].answer_at = None;
        c
    }

    #[test]
    fn transfers_and_legs_round_trip_with_their_cdr() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        // Legs of several CDRs in one batch, a CDR without legs among them, and a Call-ID
        // that repeats (the newest CDR is read back, with its own legs only).
        let mut again = transferred(1);
        again.legs.truncate(1);
        again.transfers = None;
        let written = vec![transferred(1), sample(2), transferred(3), again.clone()];
        store.insert_cdrs(&written).unwrap();
        assert_eq!(
            store.get_cdr_by_call_id("a-3@127.0.0.1").unwrap(),
            Some(transferred(3)),
            "chain and legs, in order"
        );
        assert_eq!(
            store.get_cdr_by_call_id("a-1@127.0.0.1").unwrap(),
            Some(again)
        );
        let listed = store.list_cdrs(10).unwrap();
        let expected: Vec<Cdr> = written.iter().rev().cloned().collect();
        assert_eq!(listed, expected, "every CDR with its own legs");
        assert_eq!(store.list_cdrs(2).unwrap(), expected[..2].to_vec());
        let rows: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM cdr_legs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 7);
        // Who talked to whom is plain SQL: the legs of the call a leg's Call-ID belongs to.
        let parties: Vec<String> = store
            .conn
            .prepare(
                "SELECT l.party FROM cdr_legs l JOIN cdr_legs me ON me.cdr_id = l.cdr_id \
                 WHERE me.call_id = 'c-3' ORDER BY l.seq",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(parties, ["sip:alice@127.0.0.1", "user:1002", "user:1003"]);
    }

    #[test]
    fn a_failing_leg_rolls_back_its_cdr_and_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .conn
            .execute_batch("CREATE TRIGGER refuse BEFORE INSERT ON cdr_legs WHEN NEW.party = 'bad' BEGIN SELECT RAISE(ABORT, 'refused'); END;")
            .unwrap();
        let mut bad = transferred(2);
        bad.legs[2].party = "bad".to_string();
        assert!(store.insert_cdrs(&[transferred(1), bad]).is_err());
        assert_eq!(store.count_cdrs().unwrap(), 0);
        let legs: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM cdr_legs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(legs, 0, "no leg outlives its rolled-back CDR");
    }

    #[test]
    fn insert_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        // A CHECK violation on the second row must roll back the first.
        store
            .conn
            .execute_batch("CREATE TRIGGER refuse BEFORE INSERT ON cdrs WHEN NEW.callee = 'bad' BEGIN SELECT RAISE(ABORT, 'refused'); END;")
            .unwrap();
        let mut bad = sample(2);
        bad.callee = "bad".to_string();
        assert!(store.insert_cdrs(&[sample(1), bad]).is_err());
        assert_eq!(store.count_cdrs().unwrap(), 0);
        store.insert_cdrs(&[sample(1)]).unwrap();
        assert_eq!(store.count_cdrs().unwrap(), 1);
    }

    #[test]
    fn dialect_rewrites_types_and_drops_without_rowid() {
        let sqlite = "CREATE TABLE t (
            id     INTEGER PRIMARY KEY,
            n      integer NOT NULL DEFAULT 0,
            x      REAL,
            b      BLOB,
            state  TEXT CHECK (state IN ('real', 'INTEGER', 'it''s BLOB'))
        ) WITHOUT ROWID;
        ALTER TABLE t ADD COLUMN loss_2 REAL;
        CREATE TABLE u (a TEXT, k INTEGER NOT NULL, PRIMARY KEY (a, k)) without  rowid;";
        let pg = postgres_dialect(sqlite);
        assert_eq!(
            pg,
            "CREATE TABLE t (
            id     BIGSERIAL PRIMARY KEY,
            n      BIGINT NOT NULL DEFAULT 0,
            x      DOUBLE PRECISION,
            b      BYTEA,
            state  TEXT CHECK (state IN ('real', 'INTEGER', 'it''s BLOB'))
        ) ;
        ALTER TABLE t ADD COLUMN loss_2 DOUBLE PRECISION;
        CREATE TABLE u (a TEXT, k BIGINT NOT NULL, PRIMARY KEY (a, k)) ;"
        );
        // Words that merely contain a keyword are not touched.
        assert_eq!(
            postgres_dialect("CREATE TABLE realm (integers TEXT, blobby REAL_X)"),
            "CREATE TABLE realm (integers TEXT, blobby REAL_X)"
        );
    }

    #[test]
    fn dialect_leaves_no_sqlite_spelling_in_the_migrations() {
        for (n, m) in MIGRATIONS.iter().enumerate() {
            let pg = postgres_dialect(m).to_ascii_uppercase();
            let words: Vec<&str> = pg
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .collect();
            for bad in ["INTEGER", "REAL", "BLOB", "ROWID"] {
                assert!(
                    !words.contains(&bad),
                    "migration {}: {bad} left in {pg}",
                    n + 1
                );
            }
            // The rewrite changes types only: the same statements, in the same order.
            assert_eq!(
                m.matches(';').count(),
                pg.matches(';').count(),
                "migration {}",
                n + 1
            );
        }
    }

    /// `$n` placeholders must appear in ascending order of first use: SQLite numbers them by
    /// first appearance, PostgreSQL by their digits; only then do both bind the same values.
    #[test]
    fn placeholders_are_numbered_in_order_of_first_use() {
        fn in_order(sql: &str) -> bool {
            let mut next = 1;
            let mut rest = sql;
            while let Some(i) = rest.find('$') {
                let digits: String = rest[i + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                rest = &rest[i + 1 + digits.len()..];
                let n: u32 = digits.parse().expect("a numbered placeholder");
                if n == next {
                    next += 1;
                } else if n > next {
                    return false;
                }
            }
            true
        }
        assert!(!in_order("SELECT $2, $1"), "the check itself works");
        assert!(in_order("SELECT $1, $2, $1"));
        let mut all = vec![
            cdr::INSERT_SQL.to_string(),
            cdr::LIST_SQL.to_string(),
            cdr::BY_CALL_ID_SQL.to_string(),
            cdr::INSERT_LEG_SQL.to_string(),
            cdr::LEGS_SQL.to_string(),
            UPSERT_AGENT_STATS_SQL.to_string(),
        ];
        all.extend(registrations::all_sql());
        for sql in all {
            assert!(in_order(&sql), "{sql}");
        }
    }

    #[test]
    fn agent_stats_upsert_replaces_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let mut row = AgentStatsRow {
            tenant: "t".into(),
            agent: "a".into(),
            at: 1,
            state: "available".into(),
            calls: 1,
            talk_ms: 10,
            offers: 2,
            state_ms: "{}".into(),
        };
        store.upsert_agent_stats(&[row.clone()]).unwrap();
        row.at = 2;
        row.calls = 5;
        store.upsert_agent_stats(&[row.clone()]).unwrap();
        let got: Vec<(i64, i64)> = store
            .query("SELECT at, calls FROM agent_stats", &[], |r| {
                Ok((req(r.int(0)?, 0)?, req(r.int(1)?, 1)?))
            })
            .unwrap();
        assert_eq!(got, vec![(2, 5)]);
    }

    #[test]
    fn sqlite_schema_columns_lists_every_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let cols = store.schema_columns().unwrap();
        let tables: Vec<&str> = cols.keys().map(String::as_str).collect();
        assert_eq!(
            tables,
            vec![
                "access_keys",
                "agent_stats",
                "audit_log",
                "cdr_legs",
                "cdrs",
                "config_overrides",
                "queue_stats",
                "recordings",
                "registrations",
                "risk_attempts",
                "risk_lists",
                "risk_meta"
            ],
        );
        assert_eq!(cols["cdrs"][0], "id");
        assert_eq!(cols["cdrs"].last().unwrap(), "tenant");
        assert_eq!(cols["cdr_legs"][0], "cdr_id");
    }

    #[test]
    fn database_display_hides_the_password() {
        let db = Database::Postgres("postgresql://sw:secret@10.0.0.5:5433/calls".into());
        let shown = format!("{db} {db:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("10.0.0.5:5433"), "{shown}");
        let kv = Database::Postgres("host=h port=1 user=u password=hunter2 dbname=d".into());
        assert!(!kv.to_string().contains("hunter2"));
        assert_eq!(
            Database::Sqlite("/x/s.db".into()).to_string(),
            "sqlite:/x/s.db"
        );
    }

    #[test]
    fn postgres_only_calls_fail_cleanly_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        assert!(matches!(
            store.listen("switchyard_registrations"),
            Err(StoreError::Unsupported(_))
        ));
        assert!(store.ping().is_ok());
    }

    /// Not a correctness test: prints the cost of committing a 500-row batch with
    /// `synchronous=FULL` and `NORMAL`. Run with
    /// `cargo test --lib store::tests::measure_sync_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn measure_sync_cost() {
        let dir = tempfile::tempdir().unwrap();
        let batch: Vec<Cdr> = (0..500).map(sample).collect();
        for sync in [Synchronous::Normal, Synchronous::Full] {
            let mut store =
                Store::open_with(&dir.path().join(format!("{sync:?}.db")), sync).unwrap();
            store.insert_cdrs(&batch).unwrap(); // warm the statement cache and the file
            let rounds = 20u32;
            let t = std::time::Instant::now();
            for _ in 0..rounds {
                store.insert_cdrs(&batch).unwrap();
            }
            let per_batch = t.elapsed() / rounds;
            let t = std::time::Instant::now();
            for i in 0..rounds {
                store
                    .insert_cdrs(&batch[i as usize..i as usize + 1])
                    .unwrap();
            }
            let per_row = t.elapsed() / rounds;
            println!("synchronous={sync:?}: 500-row batch {per_batch:?}, 1-row commit {per_row:?}");
        }
    }
}
