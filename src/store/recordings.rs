//! The recording index (the `recordings` table) and the crash recovery of recordings.
//!
//! A row is inserted in state `recording` when a recording starts and set to `complete`
//! (with the file's size, checksum and duration) only after the file has been sealed,
//! fsynced and renamed, or to `failed`. A crash leaves rows in `recording`: [`recover`],
//! run once at start before calls, settles each of them from what is on disk, so no row is
//! ever `complete` for a file that does not decrypt and verify.

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use serde::Serialize;

use super::{Store, StoreError};
use crate::media::recording::{
    self, Finished, KeyRing, RecordingError, RECORDINGS_RECOVERED_TOTAL,
};

/// Migration text for the `recordings` table (appended to `MIGRATIONS`).
pub(crate) const MIGRATION: &str = "CREATE TABLE recordings (
        id          TEXT    PRIMARY KEY,
        call_id     TEXT,
        tenant      TEXT,
        state       TEXT    NOT NULL CHECK (state IN ('recording', 'complete', 'failed')),
        started_ms  INTEGER NOT NULL,
        ended_ms    INTEGER,
        duration_ms INTEGER,
        size        INTEGER,
        key_id      TEXT,
        sha256      TEXT,
        path        TEXT
    );
    CREATE INDEX recordings_tenant_started ON recordings (tenant, started_ms);";

/// `state` of a recording being written (or interrupted by a crash, until [`recover`]).
pub const STATE_RECORDING: &str = "recording";
/// `state` of a recording whose file is sealed, fsynced and renamed.
pub const STATE_COMPLETE: &str = "complete";
/// `state` of a recording that did not complete.
pub const STATE_FAILED: &str = "failed";

/// One row of the recording index. Times are Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecordingRow {
    /// The recording id (also its file name: `<id>.syrec`).
    pub id: String,
    /// The Call-ID of the recorded call.
    pub call_id: Option<String>,
    /// The tenant the call belongs to; `None` for calls of no tenant (node token only).
    pub tenant: Option<String>,
    /// `recording`, `complete` or `failed`.
    pub state: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    /// Size of the encrypted file.
    pub size: Option<i64>,
    /// The master key id the data key is wrapped with.
    pub key_id: Option<String>,
    /// SHA-256 of the encrypted file, hex.
    pub sha256: Option<String>,
    /// Where the file is (`<dir>/<id>.syrec`; the `.tmp` name while recording). Not shown
    /// on the API: a server path is none of a tenant's business.
    #[serde(skip_serializing)]
    pub path: Option<String>,
}

impl RecordingRow {
    /// A row for a recording that starts now: state `recording`.
    pub fn started(
        id: impl Into<String>,
        call_id: Option<String>,
        tenant: Option<String>,
        started_ms: i64,
        path: &Path,
        key_id: &str,
    ) -> RecordingRow {
        RecordingRow {
            id: id.into(),
            call_id,
            tenant,
            state: STATE_RECORDING.to_string(),
            started_ms,
            ended_ms: None,
            duration_ms: None,
            size: None,
            key_id: Some(key_id.to_string()),
            sha256: None,
            path: Some(path.display().to_string()),
        }
    }
}

/// What a completed recording adds to its row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingComplete {
    pub ended_ms: i64,
    pub duration_ms: i64,
    pub size: i64,
    pub key_id: String,
    pub sha256: String,
    pub path: String,
}

impl RecordingComplete {
    /// The completion data of `finished`, ended at `ended_ms`.
    pub fn from_finished(finished: &Finished, ended_ms: i64) -> RecordingComplete {
        RecordingComplete {
            ended_ms,
            duration_ms: i64::try_from(finished.duration_ms).unwrap_or(i64::MAX),
            size: i64::try_from(finished.size).unwrap_or(i64::MAX),
            key_id: finished.key_id.clone(),
            sha256: finished.sha256.clone(),
            path: finished.path.display().to_string(),
        }
    }
}

/// One change to the index, as the store writer batches them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordingOp {
    /// Insert the row of a recording that started.
    Started(Box<RecordingRow>),
    /// Mark recording `id` complete.
    Finished {
        id: String,
        complete: Box<RecordingComplete>,
    },
    /// Mark recording `id` failed.
    Failed {
        id: String,
        ended_ms: i64,
        reason: String,
    },
}

const COLUMNS: &str =
    "id, call_id, tenant, state, started_ms, ended_ms, duration_ms, size, key_id, sha256, path";
const INSERT_SQL: &str = "INSERT OR REPLACE INTO recordings (id, call_id, tenant, state, \
     started_ms, ended_ms, duration_ms, size, key_id, sha256, path) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
const COMPLETE_SQL: &str = "UPDATE recordings SET state = 'complete', ended_ms = ?2, \
     duration_ms = ?3, size = ?4, key_id = ?5, sha256 = ?6, path = ?7 WHERE id = ?1";
const FAILED_SQL: &str =
    "UPDATE recordings SET state = 'failed', ended_ms = ?2 WHERE id = ?1 AND state != 'complete'";

fn from_row(r: &Row<'_>) -> rusqlite::Result<RecordingRow> {
    Ok(RecordingRow {
        id: r.get(0)?,
        call_id: r.get(1)?,
        tenant: r.get(2)?,
        state: r.get(3)?,
        started_ms: r.get(4)?,
        ended_ms: r.get(5)?,
        duration_ms: r.get(6)?,
        size: r.get(7)?,
        key_id: r.get(8)?,
        sha256: r.get(9)?,
        path: r.get(10)?,
    })
}

fn apply(conn: &Connection, op: &RecordingOp) -> rusqlite::Result<()> {
    match op {
        RecordingOp::Started(r) => {
            conn.prepare_cached(INSERT_SQL)?.execute(params![
                r.id,
                r.call_id,
                r.tenant,
                r.state,
                r.started_ms,
                r.ended_ms,
                r.duration_ms,
                r.size,
                r.key_id,
                r.sha256,
                r.path,
            ])?;
        }
        RecordingOp::Finished { id, complete: c } => {
            conn.prepare_cached(COMPLETE_SQL)?.execute(params![
                id,
                c.ended_ms,
                c.duration_ms,
                c.size,
                c.key_id,
                c.sha256,
                c.path
            ])?;
        }
        RecordingOp::Failed {
            id,
            ended_ms,
            reason,
        } => {
            // The reason goes to the log, not the index: it may name paths.
            tracing::warn!(recording = %id, %reason, "recording failed");
            conn.prepare_cached(FAILED_SQL)?
                .execute(params![id, ended_ms])?;
        }
    }
    Ok(())
}

fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<RecordingRow>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM recordings WHERE id = ?1"))?
        .query_row([id], from_row)
        .optional()
}

fn list(
    conn: &Connection,
    tenant: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<RecordingRow>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = match tenant {
        Some(t) => {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM recordings WHERE tenant = ?1 \
                 ORDER BY started_ms DESC, id DESC LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![t, limit], from_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        }
        None => {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM recordings ORDER BY started_ms DESC, id DESC LIMIT ?1"
            ))?;
            let rows = stmt.query_map(params![limit], from_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        }
    };
    Ok(rows)
}

impl Store {
    /// Apply index changes in order, in one transaction.
    pub fn apply_recording_ops(&mut self, ops: &[RecordingOp]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for op in ops {
            apply(&tx, op)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Insert the row of a recording that started (state `recording`).
    pub fn insert_recording(&mut self, row: &RecordingRow) -> Result<(), StoreError> {
        self.apply_recording_ops(&[RecordingOp::Started(Box::new(row.clone()))])
    }

    /// Mark recording `id` complete.
    pub fn complete_recording(
        &mut self,
        id: &str,
        complete: &RecordingComplete,
    ) -> Result<(), StoreError> {
        apply(
            &self.conn,
            &RecordingOp::Finished {
                id: id.to_string(),
                complete: Box::new(complete.clone()),
            },
        )?;
        Ok(())
    }

    /// Mark recording `id` failed (a complete one stays complete).
    pub fn fail_recording(&mut self, id: &str, ended_ms: i64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(FAILED_SQL)?
            .execute(params![id, ended_ms])?;
        Ok(())
    }

    /// The row of recording `id`.
    pub fn get_recording(&self, id: &str) -> Result<Option<RecordingRow>, StoreError> {
        Ok(get(&self.conn, id)?)
    }

    /// The newest `limit` recordings of `tenant` (of every tenant for `None`), newest first.
    pub fn list_recordings(
        &self,
        tenant: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecordingRow>, StoreError> {
        Ok(list(&self.conn, tenant, limit)?)
    }

    fn recordings_in_state(&self, state: &str) -> Result<Vec<RecordingRow>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM recordings WHERE state = ?1"
        ))?;
        let rows = stmt.query_map([state], from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}

/// A read-only connection to the index, for the API: it never blocks the writer (WAL) and
/// cannot write by mistake.
#[derive(Debug)]
pub struct RecordingIndex {
    conn: Connection,
}

impl RecordingIndex {
    /// Open the database at `path` read-only. It must exist and be migrated (the store writer
    /// does that at start).
    pub fn open(path: &Path) -> Result<RecordingIndex, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(super::BUSY_TIMEOUT)?;
        Ok(RecordingIndex { conn })
    }

    /// The row of recording `id`.
    pub fn get(&self, id: &str) -> Result<Option<RecordingRow>, StoreError> {
        Ok(get(&self.conn, id)?)
    }

    /// The newest `limit` recordings of `tenant` (of every tenant for `None`), newest first.
    pub fn list(
        &self,
        tenant: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecordingRow>, StoreError> {
        Ok(list(&self.conn, tenant, limit)?)
    }
}

/// What [`recover`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Rows left in `recording` whose file verified: now `complete`.
    pub completed: Vec<String>,
    /// Rows left in `recording` whose file was missing or bad: now `failed`, files removed.
    pub failed: Vec<String>,
    /// `.syrec.tmp` files without a row, removed.
    pub stray_tmp_removed: usize,
    /// Rows left in `recording` whose complete-looking file could not be judged (its master
    /// key is not configured, or reading it failed): left as they are, files kept, so that a
    /// start with the key configured settles them. They are not listed complete meanwhile.
    pub skipped: Vec<String>,
}

/// Errors of [`recover`].
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The index could not be read or updated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The recordings directory could not be listed or a file not removed.
    #[error("recordings directory: {0}")]
    Io(#[from] std::io::Error),
}

/// Settle the recordings a crash interrupted; run once at start, before any call records.
///
/// Every row still in `recording`: if `<dir>/<id>.syrec` exists and [`recording::verify`]
/// passes, it becomes `complete` with the file's size, checksum and duration; otherwise it
/// becomes `failed` and its `.syrec.tmp` and any bad `.syrec` are deleted. `.syrec.tmp` files
/// without a row are deleted. Each outcome is counted in [`RECORDINGS_RECOVERED_TOTAL`].
/// A file that cannot be judged (its master key is not configured, or reading it fails) is
/// left alone with its row in `recording`: see [`RecoveryReport::skipped`].
pub fn recover(
    store: &mut Store,
    dir: &Path,
    keys: &KeyRing,
) -> Result<RecoveryReport, RecoverError> {
    let mut report = RecoveryReport::default();
    let now = super::now_unix_ms();
    let open_rows = store.recordings_in_state(STATE_RECORDING)?;
    for row in &open_rows {
        let final_path = recording::final_path(dir, &row.id);
        let tmp = recording::tmp_path(dir, &row.id);
        let verified = if final_path.exists() {
            match recording::verify(&final_path, keys) {
                Ok(plaintext) => Some(plaintext),
                Err(e @ (RecordingError::UnknownKey(_) | RecordingError::Io(_))) => {
                    // Not proof the file is bad: deleting it would destroy a recording
                    // because of a configuration mistake or a passing I/O error.
                    tracing::error!(recording = %row.id, error = %e, "recovery: recording left unsettled");
                    metrics::counter!(RECORDINGS_RECOVERED_TOTAL, "outcome" => "skipped")
                        .increment(1);
                    report.skipped.push(row.id.clone());
                    continue;
                }
                Err(e) => {
                    tracing::warn!(recording = %row.id, error = %e, "recovery: file does not verify");
                    None
                }
            }
        } else {
            None
        };
        match verified {
            Some(plaintext) => {
                let (size, sha256) = hash_file(&final_path)?;
                let key_id = recording::open(&final_path, keys)
                    .map(|r| r.key_id().to_string())
                    .unwrap_or_default();
                let data = plaintext.saturating_sub(recording::WAV_HEADER_LEN as u64);
                let duration_ms = data / 4 * 1000 / u64::from(recording::SAMPLE_RATE);
                let complete = RecordingComplete {
                    ended_ms: file_mtime_ms(&final_path).unwrap_or(now),
                    duration_ms: i64::try_from(duration_ms).unwrap_or(i64::MAX),
                    size: i64::try_from(size).unwrap_or(i64::MAX),
                    key_id,
                    sha256,
                    path: final_path.display().to_string(),
                };
                store.complete_recording(&row.id, &complete)?;
                // A leftover tmp of the same id is stale (the rename happened).
                remove_if_exists(&tmp)?;
                metrics::counter!(RECORDINGS_RECOVERED_TOTAL, "outcome" => "complete").increment(1);
                tracing::info!(recording = %row.id, "recovery: recording completed from its file");
                report.completed.push(row.id.clone());
            }
            None => {
                store.fail_recording(&row.id, now)?;
                remove_if_exists(&tmp)?;
                remove_if_exists(&final_path)?;
                metrics::counter!(RECORDINGS_RECOVERED_TOTAL, "outcome" => "failed").increment(1);
                tracing::warn!(recording = %row.id, "recovery: interrupted recording marked failed");
                report.failed.push(row.id.clone());
            }
        }
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(e.into()),
    };
    let suffix = format!(".{}", recording::TMP_EXTENSION);
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(&suffix)) else {
            continue;
        };
        // Rows settled above already had their tmp removed; any tmp left is either a stray
        // (no row: the start was never committed) or belongs to a row that is not open.
        if store
            .get_recording(id)?
            .is_some_and(|r| r.state == STATE_RECORDING)
        {
            continue;
        }
        remove_if_exists(&entry.path())?;
        metrics::counter!(RECORDINGS_RECOVERED_TOTAL, "outcome" => "stray_tmp").increment(1);
        report.stray_tmp_removed += 1;
    }
    if report != RecoveryReport::default() {
        tracing::info!(
            completed = report.completed.len(),
            failed = report.failed.len(),
            stray_tmp_removed = report.stray_tmp_removed,
            skipped = report.skipped.len(),
            "recording recovery done"
        );
    }
    Ok(report)
}

/// Size and SHA-256 (hex) of the file at `path`, read in pieces.
fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let size = std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok((size, recording::to_hex(&hasher.finalize())))
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn file_mtime_ms(path: &Path) -> Option<i64> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    let ms = modified
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis();
    i64::try_from(ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn keys() -> KeyRing {
        let mut k = BTreeMap::new();
        k.insert("k1".to_string(), format!("hex:{}", "ab".repeat(32)));
        KeyRing::from_config(&k, None, Path::new("/nonexistent")).unwrap()
    }

    fn started(id: &str, tenant: &str, at: i64, dir: &Path) -> RecordingRow {
        RecordingRow::started(
            id,
            Some(format!("call-{id}")),
            Some(tenant.to_string()),
            at,
            &recording::tmp_path(dir, id),
            "k1",
        )
    }

    #[test]
    fn index_round_trip_and_listing() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let mut store = Store::open(&db).unwrap();
        store
            .insert_recording(&started("a", "t1", 10, dir.path()))
            .unwrap();
        store
            .insert_recording(&started("b", "t1", 20, dir.path()))
            .unwrap();
        store
            .insert_recording(&started("c", "t2", 30, dir.path()))
            .unwrap();
        let complete = RecordingComplete {
            ended_ms: 99,
            duration_ms: 1000,
            size: 4242,
            key_id: "k1".into(),
            sha256: "00".into(),
            path: "/x/a.syrec".into(),
        };
        store.complete_recording("a", &complete).unwrap();
        store.fail_recording("b", 50).unwrap();
        // Failing a complete recording does not undo it.
        store.fail_recording("a", 60).unwrap();
        let a = store.get_recording("a").unwrap().unwrap();
        assert_eq!(a.state, STATE_COMPLETE);
        assert_eq!(
            (a.size, a.duration_ms, a.ended_ms),
            (Some(4242), Some(1000), Some(99))
        );
        assert_eq!(
            store.get_recording("b").unwrap().unwrap().state,
            STATE_FAILED
        );
        assert_eq!(store.get_recording("zz").unwrap(), None);

        let reader = RecordingIndex::open(&db).unwrap();
        let ids = |rows: Vec<RecordingRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(reader.list(Some("t1"), 10).unwrap()), ["b", "a"]);
        assert_eq!(ids(reader.list(Some("t1"), 1).unwrap()), ["b"]);
        assert_eq!(ids(reader.list(None, 10).unwrap()), ["c", "b", "a"]);
        assert_eq!(reader.get("a").unwrap(), Some(a));
    }

    #[test]
    fn recover_settles_interrupted_recordings() {
        let dir = tempfile::tempdir().unwrap();
        let rec_dir = dir.path().join("rec");
        let db = dir.path().join("s.db");
        let keys = keys();
        let mut store = Store::open(&db).unwrap();

        // 1. Completed on disk (renamed) but the crash came before the row said so.
        let mut r = recording::Recorder::create(&rec_dir, "done", &keys).unwrap();
        r.write_stereo(&[1; 8000], &[2; 8000]).unwrap();
        let finished = r.finish().unwrap();
        store
            .insert_recording(&started("done", "t", 1, &rec_dir))
            .unwrap();
        // 2. Only a tmp file: interrupted mid-recording.
        let mut r = recording::Recorder::create(&rec_dir, "mid", &keys).unwrap();
        r.write_stereo(&[1; 40_000], &[2; 40_000]).unwrap();
        std::mem::forget(r); // as if killed: no finish, no abort
        store
            .insert_recording(&started("mid", "t", 2, &rec_dir))
            .unwrap();
        // 3. A renamed file that is truncated (the disk lied): must not become complete.
        let mut r = recording::Recorder::create(&rec_dir, "bad", &keys).unwrap();
        r.write_stereo(&[1; 40_000], &[2; 40_000]).unwrap();
        let bad = r.finish().unwrap();
        let bytes = std::fs::read(&bad.path).unwrap();
        std::fs::write(&bad.path, &bytes[..bytes.len() - 100]).unwrap();
        store
            .insert_recording(&started("bad", "t", 3, &rec_dir))
            .unwrap();
        // 4. No file at all.
        store
            .insert_recording(&started("gone", "t", 4, &rec_dir))
            .unwrap();
        // 5. A stray tmp without a row.
        std::fs::write(recording::tmp_path(&rec_dir, "stray"), b"x").unwrap();
        // 6. Complete on disk but wrapped with a key this start does not have: kept as is.
        let mut other = BTreeMap::new();
        other.insert("k0".to_string(), format!("hex:{}", "cd".repeat(32)));
        let other = KeyRing::from_config(&other, None, Path::new("/nonexistent")).unwrap();
        let mut r = recording::Recorder::create(&rec_dir, "rotated", &other).unwrap();
        r.write_stereo(&[1; 10], &[2; 10]).unwrap();
        r.finish().unwrap();
        store
            .insert_recording(&started("rotated", "t", 5, &rec_dir))
            .unwrap();
        // 7. A complete row is left alone.
        let mut r = recording::Recorder::create(&rec_dir, "old", &keys).unwrap();
        r.write_stereo(&[1; 10], &[2; 10]).unwrap();
        let old = r.finish().unwrap();
        store
            .insert_recording(&started("old", "t", 0, &rec_dir))
            .unwrap();
        store
            .complete_recording("old", &RecordingComplete::from_finished(&old, 5))
            .unwrap();

        let report = recover(&mut store, &rec_dir, &keys).unwrap();
        let mut failed = report.failed.clone();
        failed.sort();
        assert_eq!(report.completed, ["done"]);
        assert_eq!(failed, ["bad", "gone", "mid"]);
        assert_eq!(report.stray_tmp_removed, 1);
        assert_eq!(report.skipped, ["rotated"]);
        let rotated = store.get_recording("rotated").unwrap().unwrap();
        assert_eq!(
            rotated.state, STATE_RECORDING,
            "not listed complete, not failed"
        );
        assert!(
            recording::final_path(&rec_dir, "rotated").exists(),
            "file kept"
        );

        let done = store.get_recording("done").unwrap().unwrap();
        assert_eq!(done.state, STATE_COMPLETE);
        assert_eq!(done.size, Some(finished.size as i64));
        assert_eq!(done.sha256.as_deref(), Some(finished.sha256.as_str()));
        assert_eq!(done.duration_ms, Some(1000));
        assert_eq!(done.key_id.as_deref(), Some("k1"));
        assert_eq!(done.path.as_deref(), Some(finished.path.to_str().unwrap()));
        for id in ["mid", "bad", "gone"] {
            assert_eq!(
                store.get_recording(id).unwrap().unwrap().state,
                STATE_FAILED
            );
        }
        assert!(!recording::tmp_path(&rec_dir, "mid").exists());
        assert!(!recording::final_path(&rec_dir, "bad").exists());
        assert!(!recording::tmp_path(&rec_dir, "stray").exists());
        assert!(recording::final_path(&rec_dir, "done").exists());
        assert_eq!(
            store.get_recording("old").unwrap().unwrap().state,
            STATE_COMPLETE
        );
        // Every complete row verifies.
        for row in store.list_recordings(None, 100).unwrap() {
            if row.state == STATE_COMPLETE {
                recording::verify(Path::new(row.path.as_deref().unwrap()), &keys).unwrap();
            }
        }
        // Idempotent, and the skipped one is settled once its key is there.
        let again = recover(&mut store, &rec_dir, &keys).unwrap();
        assert_eq!(again.skipped, ["rotated"]);
        assert!(again.completed.is_empty() && again.failed.is_empty());
        let mut both = BTreeMap::new();
        both.insert("k0".to_string(), format!("hex:{}", "cd".repeat(32)));
        both.insert("k1".to_string(), format!("hex:{}", "ab".repeat(32)));
        let both = KeyRing::from_config(&both, None, Path::new("/nonexistent")).unwrap();
        let settled = recover(&mut store, &rec_dir, &both).unwrap();
        assert_eq!(settled.completed, ["rotated"]);
        assert_eq!(
            recover(&mut store, &rec_dir, &both).unwrap(),
            RecoveryReport::default()
        );
    }

    #[test]
    fn recover_without_a_directory_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let report = recover(&mut store, &dir.path().join("none"), &keys()).unwrap();
        assert_eq!(report, RecoveryReport::default());
    }
}
