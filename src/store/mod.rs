//! The embedded database: SQLite in WAL mode (DESIGN.md, "Storage", says why not sled).
//!
//! One [`Store`] is one connection. The switch writes through exactly one connection, owned by
//! the store writer actor (`actors::store_writer`) on its own OS thread, because SQLite calls
//! block; readers (tests, the API) may open further connections to the same file, which WAL
//! lets them do without blocking the writer.
//!
//! The schema evolves through numbered migrations ([`MIGRATIONS`]): the number applied so far
//! is kept in `PRAGMA user_version`, and opening a database applies the missing ones in order.
//! A later feature adds a table or a column by appending one SQL string to the list, never by
//! editing an old one.

mod cdr;
pub mod recordings;
pub mod registrations;

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

pub use cdr::{now_unix_ms, Cdr, CdrMedia, HangupBy};

/// Migration `n` (1-based) is `MIGRATIONS[n - 1]`; `PRAGMA user_version` holds how many of
/// them a database has had applied. Append only: an applied migration is never edited.
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

/// How long a connection waits for another connection's lock before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database directory could not be created.
    #[error("creating the database directory {path}: {source}")]
    CreateDir {
        /// The directory that could not be created.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file was written by a newer Switchyard whose schema this build does not know.
    #[error("database schema version {found} is newer than this build knows ({known})")]
    SchemaTooNew {
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// The number of migrations this build has.
        known: usize,
    },
    /// SQLite would not switch the file to WAL mode (e.g. an in-memory database).
    #[error("database refused WAL mode (journal_mode is {0})")]
    NotWal(String),
}

/// SQLite's `synchronous` setting: what a commit waits for before it returns.
///
/// In WAL mode both settings survive the process being killed (`kill -9`): a committed
/// transaction is in the WAL file in the OS page cache either way. Only `Full` also survives
/// a power loss or kernel crash, because it fsyncs the WAL at every commit.
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
    conn: Connection,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.conn.path())
            .finish()
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
        Ok(Store { conn })
    }

    /// The schema version of the open database (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(user_version(&self.conn)?)
    }

    /// Insert `cdrs` in one transaction: either all of them are committed or none is.
    pub fn insert_cdrs(&mut self, cdrs: &[Cdr]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(cdr::INSERT_SQL)?;
            for c in cdrs {
                cdr::insert(&mut stmt, c)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Appends snapshots of queue statistics (one transaction).
    pub fn insert_queue_stats(&mut self, rows: &[QueueStatsRow]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO queue_stats (at, tenant, queue, joined, answered, abandoned, \
                 overflowed, within_sl, waiting, longest_wait_ms, asa_ms, aht_ms, available, \
                 logged_in) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?;
            for r in rows {
                stmt.execute(rusqlite::params![
                    r.at,
                    r.tenant,
                    r.queue,
                    r.joined,
                    r.answered,
                    r.abandoned,
                    r.overflowed,
                    r.within_sl,
                    r.waiting,
                    r.longest_wait_ms,
                    r.asa_ms,
                    r.aht_ms,
                    r.available,
                    r.logged_in,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Stores each agent's latest figures (one row per agent, replaced; one transaction).
    pub fn upsert_agent_stats(&mut self, rows: &[AgentStatsRow]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO agent_stats (tenant, agent, at, state, calls, talk_ms, \
                 offers, state_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for r in rows {
                stmt.execute(rusqlite::params![
                    r.tenant, r.agent, r.at, r.state, r.calls, r.talk_ms, r.offers, r.state_ms,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The newest `limit` CDRs, newest first.
    pub fn list_cdrs(&self, limit: usize) -> Result<Vec<Cdr>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&cdr::LIST_SQL)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map([limit], cdr::from_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?);
        }
        Ok(out)
    }

    /// How many CDRs are stored.
    pub fn count_cdrs(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM cdrs", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The CDR whose A-leg Call-ID is `a_call_id` (the newest, should a Call-ID repeat).
    pub fn get_cdr_by_call_id(&self, a_call_id: &str) -> Result<Option<Cdr>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&cdr::BY_CALL_ID_SQL)?;
        let mut rows = stmt.query_map([a_call_id], cdr::from_row)?;
        match rows.next() {
            Some(row) => Ok(Some(row?)),
            None => Ok(None),
        }
    }
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
