//! CDR listings and interval reports give the same answers on SQLite and on a real
//! PostgreSQL (started per test by `common::pg`): one SQL text for both engines. And a
//! database of the previous schema (before CDRs had a tenant) migrates, its CDRs kept.
//!
//! The PostgreSQL half is skipped with a loud line when PostgreSQL is not installed, unless
//! `CI` is set.

mod common;

use common::pg::Pg;
use switchyard::store::reports::{CdrFilter, Disposition, ReportQuery};
use switchyard::store::{Cdr, Database, HangupBy, Store, Synchronous, MIGRATIONS};

const T0: i64 = 1_700_000_000_000;

/// A day of calls for two tenants: agents, waits, abandons (short and long), transfers.
fn cdrs() -> Vec<Cdr> {
    (0..300u32)
        .map(|n| {
            let start = T0 + i64::from(n) * 287_000; // across about a day
            let tenant = if n % 4 == 0 { "t2" } else { "t1" };
            let abandoned = n % 9 == 0;
            let wait = i64::from(n % 11) * 3_000;
            Cdr {
                a_call_id: format!("r-{n}"),
                b_call_id: None,
                caller: format!("sip:{}@127.0.0.1", 7000 + n % 13),
                callee: "200".into(),
                route: None,
                target: None,
                start_at: start,
                ringing_at: None,
                answer_at: (!abandoned).then_some(start + wait),
                end_at: start + wait + 60_000 + i64::from(n % 7) * 1000,
                duration_ms: 0,
                billable_ms: 0,
                final_status: if abandoned { 487 } else { 200 },
                hangup_by: HangupBy::Caller,
                disconnect_reason: "BYE".into(),
                queue: Some(format!("{tenant}/q{}", n % 2)),
                agent: (!abandoned).then(|| format!("ag{}", n % 5)),
                wait_ms: Some(wait),
                abandoned,
                trunk: None,
                attempts: None,
                dtmf: None,
                recording: None,
                media: None,
                transfers: (n % 10 == 3).then(|| "blind:B>user:9".to_string()),
                tenant: Some(tenant.into()),
                legs: Vec::new(),
            }
        })
        .collect()
}

/// Every answer the API's reads give, from one store.
fn answers(s: &Store) -> Vec<String> {
    let mut out = Vec::new();
    for interval_ms in [15 * 60_000, 3_600_000, 86_400_000] {
        for tenant in [None, Some("t1".to_string())] {
            let q = ReportQuery {
                interval_ms,
                from: T0,
                to: T0 + 2 * 86_400_000,
                tenant: tenant.clone(),
                key: None,
                sl_threshold_ms: 20_000,
                short_abandon_ms: 5_000,
            };
            out.push(format!("{:?}", s.queue_report(&q).unwrap()));
            out.push(format!("{:?}", s.agent_report(&q).unwrap()));
        }
    }
    let filters = [
        CdrFilter::default(),
        CdrFilter {
            tenant: Some("t2".into()),
            disposition: Some(Disposition::Abandoned),
            ..Default::default()
        },
        CdrFilter {
            number: Some("7003".into()),
            from: Some(T0 + 3_600_000),
            to: Some(T0 + 50_000_000),
            ..Default::default()
        },
        CdrFilter {
            queue: Some("t1/q1".into()),
            agent: Some("ag3".into()),
            ..Default::default()
        },
    ];
    for f in filters {
        let mut cursor = None;
        loop {
            let page = s.find_cdrs(&f, cursor, 17).unwrap();
            if page.is_empty() {
                break;
            }
            cursor = page.last().map(|r| r.id);
            out.push(format!("{:?}", page));
        }
    }
    out
}

#[test]
fn reports_and_listings_agree_on_sqlite_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let mut lite = Store::open(&dir.path().join("s.db")).unwrap();
    lite.insert_cdrs(&cdrs()).unwrap();
    let on_sqlite = answers(&lite);
    // The figures themselves, on one interval: hand-counted from `cdrs()`.
    let day = ReportQuery {
        interval_ms: 86_400_000,
        from: T0,
        to: T0 + 2 * 86_400_000,
        tenant: Some("t1".into()),
        key: Some("t1/q0".into()),
        sl_threshold_ms: 20_000,
        short_abandon_ms: 5_000,
    };
    let rows = lite.queue_report(&day).unwrap();
    let mine: Vec<Cdr> = cdrs()
        .into_iter()
        .filter(|c| c.queue.as_deref() == Some("t1/q0"))
        .collect();
    let offered: i64 = rows.iter().map(|r| r.offered).sum();
    assert_eq!(offered, mine.len() as i64);
    let answered: Vec<&Cdr> = mine.iter().filter(|c| !c.abandoned).collect();
    assert_eq!(
        rows.iter().map(|r| r.answered).sum::<i64>(),
        answered.len() as i64
    );
    let short = mine
        .iter()
        .filter(|c| c.abandoned && c.wait_ms.unwrap() < 5_000)
        .count() as i64;
    assert_eq!(rows.iter().map(|r| r.short_abandoned).sum::<i64>(), short);
    assert_eq!(
        rows.iter().map(|r| r.transferred).sum::<i64>(),
        mine.iter().filter(|c| c.transfers.is_some()).count() as i64
    );
    if rows.len() == 1 {
        let r = &rows[0];
        let wait: i64 = answered.iter().map(|c| c.wait_ms.unwrap()).sum();
        assert_eq!(r.asa_ms, Some(wait / answered.len() as i64));
        let within = answered
            .iter()
            .filter(|c| c.wait_ms.unwrap() <= 20_000)
            .count();
        assert_eq!(
            r.service_level,
            Some(within as f64 / (mine.len() as i64 - short) as f64)
        );
        assert_eq!(r.acw_ms, None);
    }

    let Some(pg) = Pg::try_start() else { return };
    let mut pgs = Store::connect(&Database::Postgres(pg.url.clone()), Synchronous::Full).unwrap();
    pgs.insert_cdrs(&cdrs()).unwrap();
    let on_pg = answers(&pgs);
    assert_eq!(on_sqlite.len(), on_pg.len());
    for (a, b) in on_sqlite.iter().zip(&on_pg) {
        assert_eq!(a, b);
    }
}

#[test]
fn a_database_of_the_previous_schema_migrates_and_keeps_its_cdrs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    {
        // The schema as the previous release left it: the first nine migrations, and a CDR
        // written then (no tenant column).
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        for m in &MIGRATIONS[..9] {
            conn.execute_batch(m).unwrap();
        }
        conn.pragma_update(None, "user_version", 9).unwrap();
        conn.execute_batch(
            "INSERT INTO cdrs (a_call_id, caller, callee, start_at, end_at, duration_ms, \
             billable_ms, final_status, hangup_by, disconnect_reason, queue) VALUES \
             ('old-1', 'sip:a@x', '100', 1, 2, 1, 0, 487, 'caller', 'CANCEL', 't1/q');",
        )
        .unwrap();
    }
    let mut s = Store::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
    let all = s.find_cdrs(&CdrFilter::default(), None, 10).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].cdr.tenant, None);
    assert_eq!(all[0].disposition, Disposition::NoAnswer);
    // Without a tenant it is the node's only: a tenant's listing does not show it.
    let t1 = CdrFilter {
        tenant: Some("t1".into()),
        ..Default::default()
    };
    assert!(s.find_cdrs(&t1, None, 10).unwrap().is_empty());
    s.insert_cdrs(&cdrs()[..3]).unwrap();
    assert_eq!(
        s.find_cdrs(&CdrFilter::default(), None, 10).unwrap().len(),
        4
    );
}

/// The audit log and the access keys' table: the same statements on both engines.
fn audit_and_keys(s: &mut Store) -> Vec<String> {
    use switchyard::store::access_keys::AccessKeyRow;
    use switchyard::store::audit::AuditRecord;
    let mut out = Vec::new();
    let mut ids = Vec::new();
    for (n, tenant) in [Some("t1"), None, Some("t2"), Some("t1")]
        .into_iter()
        .enumerate()
    {
        let rec = AuditRecord {
            at: 1000 + n as i64,
            tenant: tenant.map(str::to_string),
            actor: "node".into(),
            source: "127.0.0.1:1".into(),
            method: "PUT".into(),
            route: "/routes/{id}".into(),
            path: format!("/routes/{n}"),
            summary: Some("{\"prefix\":\"9\"}".into()),
            before: (n % 2 == 0).then(|| "{\"a\":1}".to_string()),
            ..Default::default()
        };
        ids.push(s.insert_audit(&rec).unwrap());
    }
    s.complete_audit(ids[0], 201, Some("{\"a\":2}"), 2000)
        .unwrap();
    let strip = |v: Vec<AuditRecord>| -> Vec<AuditRecord> {
        // Row ids differ between engines only by where the sequence starts.
        v.into_iter().map(|r| AuditRecord { id: 0, ..r }).collect()
    };
    out.push(format!(
        "{:?}",
        strip(s.list_audit(Some("t1"), None, 10).unwrap())
    ));
    out.push(format!(
        "{:?}",
        strip(s.list_audit(None, Some(ids[3]), 2).unwrap())
    ));
    for (n, role) in ["admin", "agent", "read_only"].into_iter().enumerate() {
        s.insert_access_key(&AccessKeyRow {
            id: format!("ak_{n:016x}"),
            tenant: "t1".into(),
            name: format!("k{n}"),
            role: role.into(),
            sealed: "00".into(),
            created_ms: n as i64,
            rotated_ms: None,
            revoked_ms: None,
        })
        .unwrap();
    }
    assert!(s
        .rotate_access_key("t1", "ak_0000000000000001", "ff", 9)
        .unwrap());
    assert!(
        !s.rotate_access_key("t2", "ak_0000000000000001", "ff", 9)
            .unwrap(),
        "another tenant's"
    );
    assert!(s
        .revoke_access_key("t1", "ak_0000000000000002", 10)
        .unwrap());
    assert!(
        !s.revoke_access_key("t1", "ak_0000000000000002", 11)
            .unwrap(),
        "twice"
    );
    assert!(
        !s.rotate_access_key("t1", "ak_0000000000000002", "ee", 12)
            .unwrap(),
        "revoked"
    );
    out.push(format!("{:?}", s.access_keys("t1").unwrap()));
    out.push(format!(
        "{:?}",
        s.access_key("ak_0000000000000002").unwrap()
    ));
    out
}

#[test]
fn audit_log_and_access_keys_agree_on_sqlite_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let mut lite = Store::open(&dir.path().join("s.db")).unwrap();
    let on_sqlite = audit_and_keys(&mut lite);
    assert!(
        on_sqlite[0].contains("status: Some(201)"),
        "{}",
        on_sqlite[0]
    );
    assert!(
        on_sqlite[3].contains("revoked_ms: Some(10)"),
        "{}",
        on_sqlite[3]
    );
    let Some(pg) = Pg::try_start() else { return };
    let mut pgs = Store::connect(&Database::Postgres(pg.url.clone()), Synchronous::Full).unwrap();
    assert_eq!(on_sqlite, audit_and_keys(&mut pgs));
}
