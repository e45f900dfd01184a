//! Configuration changes made through the API on a node alone: a table of overrides
//! `(kind, id, json, deleted)` applied over the config file's routes and numbers at start, so
//! a change survives a restart. (In a cluster the shared copy lives in etcd instead; see
//! `cluster::shared_config`.)
//!
//! The functions take a plain SQLite connection and create the table if it is missing, so
//! they work whether or not [`MIGRATION`] has been applied through `MIGRATIONS` yet.

use rusqlite::{params, Connection};

/// Migration text for the `config_overrides` table (appended to `MIGRATIONS`). Idempotent
/// (`IF NOT EXISTS`), because [`load`] and [`save`] also run it on their connection.
pub const MIGRATION: &str = "CREATE TABLE IF NOT EXISTS config_overrides (
        kind        TEXT    NOT NULL,
        id          TEXT    NOT NULL,
        json        TEXT    NOT NULL,
        deleted     INTEGER NOT NULL DEFAULT 0,
        updated_ms  INTEGER NOT NULL,
        PRIMARY KEY (kind, id)
    );";

/// One override: the stored JSON of a route or number, or its deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Override {
    /// `route` or `number`.
    pub kind: String,
    /// The route's id or the number.
    pub id: String,
    /// The object as the API stored it (empty for a deletion).
    pub json: String,
    /// The file's entry of this id is removed.
    pub deleted: bool,
}

/// Opens the node's database file for overrides (WAL is set by the store; a busy timeout
/// rides out the store writer's transactions).
pub fn open(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(MIGRATION)?;
    Ok(conn)
}

/// Every override, in the order they were last written (so a replay gives the same state).
pub fn load(conn: &Connection) -> rusqlite::Result<Vec<Override>> {
    conn.execute_batch(MIGRATION)?;
    let mut stmt = conn.prepare(
        "SELECT kind, id, json, deleted FROM config_overrides ORDER BY updated_ms, kind, id",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok(Override {
            kind: row.get(0)?,
            id: row.get(1)?,
            json: row.get(2)?,
            deleted: row.get::<_, i64>(3)? != 0,
        })
    })?;
    rows.collect()
}

/// Writes one override, replacing an earlier one of the same kind and id; durable when it
/// returns (the API answers after that).
pub fn save(conn: &Connection, o: &Override) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO config_overrides (kind, id, json, deleted, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (kind, id) DO UPDATE SET
            json = excluded.json, deleted = excluded.deleted, updated_ms = excluded.updated_ms",
        params![
            o.kind,
            o.id,
            o.json,
            i64::from(o.deleted),
            crate::store::now_unix_ms()
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_round_trip_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("db")).unwrap();
        assert!(load(&conn).unwrap().is_empty());
        let put = Override {
            kind: "route".into(),
            id: "44".into(),
            json: r#"{"prefix":"44"}"#.into(),
            deleted: false,
        };
        save(&conn, &put).unwrap();
        save(
            &conn,
            &Override {
                kind: "number".into(),
                id: "100".into(),
                json: String::new(),
                deleted: true,
            },
        )
        .unwrap();
        let all = load(&conn).unwrap();
        assert_eq!(all.len(), 2);
        assert!(all.contains(&put));
        let gone = Override {
            json: String::new(),
            deleted: true,
            ..put.clone()
        };
        save(&conn, &gone).unwrap();
        drop(conn);
        // A second connection (a restart) sees the last write only.
        let conn = open(&dir.path().join("db")).unwrap();
        let all = load(&conn).unwrap();
        assert_eq!(all.len(), 2);
        assert!(all.contains(&gone));
        assert!(!all.contains(&put));
    }
}
