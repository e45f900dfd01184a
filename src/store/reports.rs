//! Reading CDRs back: filtered listings with keyset paging (`GET /cdrs`, the CSV export) and
//! interval reports per queue and per agent (`GET /reports/...`), in SQL that runs the same on
//! SQLite and PostgreSQL.
//!
//! Listings are newest first by row id and page by keyset (`id < cursor`), so a page costs the
//! same however deep it is and an export walks the whole table in bounded pages without
//! holding a transaction open. Reports group CDRs by the interval their call started in:
//! `(start_at / interval) * interval` is integer arithmetic on both engines, and every sum is
//! cast to `BIGINT` (PostgreSQL's `SUM(bigint)` is `numeric`).

use serde::Serialize;

use super::{cdr, req, Cdr, Store, StoreError, Value};

/// What became of a call, derived from its CDR (not stored): the `disposition` filter and
/// column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// Answered (by a callee or an agent).
    Answered,
    /// The caller hung up while waiting in a queue.
    Abandoned,
    /// Not answered: 486 or 600.
    Busy,
    /// Not answered: 408, 480 or 487 (ring timeout, cancelled).
    NoAnswer,
    /// Not answered for another reason.
    Failed,
}

impl Disposition {
    pub const ALL: [Disposition; 5] = [
        Disposition::Answered,
        Disposition::Abandoned,
        Disposition::Busy,
        Disposition::NoAnswer,
        Disposition::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Answered => "answered",
            Disposition::Abandoned => "abandoned",
            Disposition::Busy => "busy",
            Disposition::NoAnswer => "no_answer",
            Disposition::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Disposition> {
        Disposition::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// The disposition of `c`, by the same rules as [`Disposition::condition`].
    pub fn of(c: &Cdr) -> Disposition {
        if c.answer_at.is_some() && !c.abandoned {
            Disposition::Answered
        } else if c.abandoned {
            Disposition::Abandoned
        } else if matches!(c.final_status, 486 | 600) {
            Disposition::Busy
        } else if matches!(c.final_status, 408 | 480 | 487) {
            Disposition::NoAnswer
        } else {
            Disposition::Failed
        }
    }

    /// The SQL condition selecting this disposition (no parameters).
    fn condition(self) -> &'static str {
        match self {
            Disposition::Answered => "(answer_at IS NOT NULL AND abandoned = 0)",
            Disposition::Abandoned => "(abandoned <> 0)",
            Disposition::Busy => {
                "(answer_at IS NULL AND abandoned = 0 AND final_status IN (486, 600))"
            }
            Disposition::NoAnswer => {
                "(answer_at IS NULL AND abandoned = 0 AND final_status IN (408, 480, 487))"
            }
            Disposition::Failed => {
                "(answer_at IS NULL AND abandoned = 0 \
                 AND final_status NOT IN (486, 600, 408, 480, 487))"
            }
        }
    }
}

/// The filters of a CDR listing or export; every one set must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CdrFilter {
    /// Only this tenant's CDRs (a tenant's credential always sets it).
    pub tenant: Option<String>,
    /// Calls that started at or after this (Unix ms).
    pub from: Option<i64>,
    /// Calls that started before this (Unix ms).
    pub to: Option<i64>,
    /// The caller or the callee is this number (the caller also as `sip:<number>@...`).
    pub number: Option<String>,
    /// The queue, as stored: `<tenant>/<queue>`.
    pub queue: Option<String>,
    /// The agent who answered.
    pub agent: Option<String>,
    pub disposition: Option<Disposition>,
}

/// A CDR as listed: its row id (what a cursor points at) and derived disposition with it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CdrRecord {
    pub id: i64,
    pub disposition: Disposition,
    #[serde(flatten)]
    pub cdr: Cdr,
}

/// SQL text with its parameters, numbered in order of first use (as both engines need).
struct Sql<'a> {
    text: String,
    params: Vec<Value<'a>>,
}

impl<'a> Sql<'a> {
    fn new(text: impl Into<String>) -> Self {
        Sql {
            text: text.into(),
            params: Vec::new(),
        }
    }

    /// Binds `v` and returns its placeholder.
    fn bind(&mut self, v: Value<'a>) -> String {
        self.params.push(v);
        format!("${}", self.params.len())
    }

    /// Appends ` AND <condition>` where `{}` in `condition` is `v`'s placeholder.
    fn and(&mut self, condition: &str, v: Value<'a>) {
        let p = self.bind(v);
        self.text.push_str(" AND ");
        self.text.push_str(&condition.replace("{}", &p));
    }
}

/// `s` with LIKE's wildcards escaped (escape character `\`).
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl CdrFilter {
    /// Appends the filter's conditions to `sql` (which ends in a `WHERE ...`).
    fn apply<'a>(&'a self, sql: &mut Sql<'a>, caller_like: &'a str) {
        if let Some(t) = &self.tenant {
            sql.and("tenant = {}", t.as_str().into());
        }
        if let Some(f) = self.from {
            sql.and("start_at >= {}", f.into());
        }
        if let Some(t) = self.to {
            sql.and("start_at < {}", t.into());
        }
        if let Some(n) = &self.number {
            let p = sql.bind(n.as_str().into());
            let like = sql.bind(caller_like.into());
            sql.text.push_str(&format!(
                " AND (callee = {p} OR caller = {p} OR caller LIKE {like} ESCAPE '\\')"
            ));
        }
        if let Some(q) = &self.queue {
            sql.and("queue = {}", q.as_str().into());
        }
        if let Some(a) = &self.agent {
            sql.and("agent = {}", a.as_str().into());
        }
        if let Some(d) = self.disposition {
            sql.text.push_str(" AND ");
            sql.text.push_str(d.condition());
        }
    }

    fn caller_like(&self) -> String {
        self.number
            .as_deref()
            .map(|n| format!("sip:{}@%", like_escape(n)))
            .unwrap_or_default()
    }
}

/// The counts of one queue (or agent) in one interval, with the figures derived from them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IntervalRow {
    /// Start of the interval (Unix ms).
    pub interval_start: i64,
    /// `<tenant>/<queue>` for a queue report, the agent's id for an agent report.
    pub key: String,
    pub tenant: Option<String>,
    /// Calls that joined (queue report) or reached the agent (agent report).
    pub offered: i64,
    /// Answered by an agent.
    pub answered: i64,
    /// Hung up while waiting, after the short-abandon threshold.
    pub abandoned: i64,
    /// Hung up while waiting, within the short-abandon threshold (kept apart: misdials).
    pub short_abandoned: i64,
    /// Answered within the service-level threshold.
    pub answered_within_sl: i64,
    /// `answered_within_sl / (offered - short_abandoned)`, 0..=1; None without calls.
    pub service_level: Option<f64>,
    /// Average speed of answer (ms): mean wait of answered calls.
    pub asa_ms: Option<i64>,
    /// Average handle time (ms): mean time from the agent's answer to the call's end.
    pub aht_ms: Option<i64>,
    /// Calls with at least one transfer.
    pub transferred: i64,
    /// Not recorded in CDRs (an agent's wrap-up is not part of its call): always null.
    pub acw_ms: Option<i64>,
}

/// A report's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportQuery {
    /// The interval length (ms): 15 min, an hour or a day.
    pub interval_ms: i64,
    /// Calls that started in `[from, to)` (Unix ms).
    pub from: i64,
    pub to: i64,
    pub tenant: Option<String>,
    /// Only this queue (`<tenant>/<queue>`) or agent.
    pub key: Option<String>,
    /// Answered within this many ms counts toward the service level.
    pub sl_threshold_ms: i64,
    /// An abandon within this many ms is a short one.
    pub short_abandon_ms: i64,
}

/// The largest listing page.
pub const MAX_PAGE: usize = 1000;

impl Store {
    /// CDRs matching `filter`, newest first, at most `limit`, those with a row id below
    /// `before` (the cursor of the previous page) if given. Legs are not read.
    pub fn find_cdrs(
        &self,
        filter: &CdrFilter,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<CdrRecord>, StoreError> {
        let like = filter.caller_like();
        let mut sql = Sql::new(format!(
            "SELECT {} FROM cdrs WHERE 1 = 1",
            cdr::select_columns()
        ));
        filter.apply(&mut sql, &like);
        if let Some(b) = before {
            sql.and("id < {}", b.into());
        }
        let limit = i64::try_from(limit.min(MAX_PAGE)).unwrap_or(1);
        let p = sql.bind(limit.into());
        sql.text.push_str(&format!(" ORDER BY id DESC LIMIT {p}"));
        self.query(&sql.text, &sql.params, |r| {
            let (id, cdr) = cdr::from_row_with_id(r)?;
            Ok(CdrRecord {
                id,
                disposition: Disposition::of(&cdr),
                cdr,
            })
        })
    }

    /// The queue report: one row per queue and interval with calls, in interval then queue
    /// order.
    pub fn queue_report(&self, q: &ReportQuery) -> Result<Vec<IntervalRow>, StoreError> {
        self.report(q, "queue", "queue IS NOT NULL")
    }

    /// The agent report: one row per agent and interval, counting the calls the agent
    /// answered (`offered` = `answered`: offers that rang out are not in CDRs).
    pub fn agent_report(&self, q: &ReportQuery) -> Result<Vec<IntervalRow>, StoreError> {
        self.report(q, "agent", "agent IS NOT NULL")
    }

    fn report(
        &self,
        q: &ReportQuery,
        key: &str,
        present: &str,
    ) -> Result<Vec<IntervalRow>, StoreError> {
        let mut sql = Sql::new(String::new());
        let iv = sql.bind(q.interval_ms.into());
        let short = sql.bind(q.short_abandon_ms.into());
        let sl = sql.bind(q.sl_threshold_ms.into());
        let answered = "agent IS NOT NULL AND abandoned = 0";
        sql.text = format!(
            "SELECT (start_at / {iv}) * {iv} AS bucket, {key}, MIN(tenant), COUNT(*), \
             CAST(SUM(CASE WHEN {answered} THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN abandoned <> 0 AND COALESCE(wait_ms, 0) >= {short} \
                 THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN abandoned <> 0 AND COALESCE(wait_ms, 0) < {short} \
                 THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN {answered} AND COALESCE(wait_ms, 0) <= {sl} \
                 THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN {answered} THEN COALESCE(wait_ms, 0) ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN {answered} \
                 THEN end_at - start_at - COALESCE(wait_ms, 0) ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN transfers IS NOT NULL THEN 1 ELSE 0 END) AS BIGINT) \
             FROM cdrs WHERE {present}"
        );
        sql.and("start_at >= {}", q.from.into());
        sql.and("start_at < {}", q.to.into());
        if let Some(t) = &q.tenant {
            sql.and("tenant = {}", t.as_str().into());
        }
        if let Some(k) = &q.key {
            sql.and(&format!("{key} = {{}}"), k.as_str().into());
        }
        sql.text
            .push_str(&format!(" GROUP BY bucket, {key} ORDER BY bucket, {key}"));
        self.query(&sql.text, &sql.params, |r| {
            let int = |i: usize| -> Result<i64, StoreError> { req(r.int(i)?, i) };
            let offered = int(3)?;
            let answered = int(4)?;
            let short_abandoned = int(6)?;
            let within = int(7)?;
            let counted = offered - short_abandoned;
            Ok(IntervalRow {
                interval_start: int(0)?,
                key: req(r.text(1)?, 1)?,
                tenant: r.text(2)?,
                offered,
                answered,
                abandoned: int(5)?,
                short_abandoned,
                answered_within_sl: within,
                service_level: (counted > 0).then(|| within as f64 / counted as f64),
                asa_ms: (answered > 0)
                    .then(|| int(8).map(|w| w / answered))
                    .transpose()?,
                aht_ms: (answered > 0)
                    .then(|| int(9).map(|h| h / answered))
                    .transpose()?,
                transferred: int(10)?,
                acw_ms: None,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::sample;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn dispositions_round_trip_and_match_their_sql() {
        for d in Disposition::ALL {
            assert_eq!(Disposition::parse(d.as_str()), Some(d));
        }
        assert_eq!(Disposition::parse("Answered"), None);
        let (_d, mut s) = store();
        let mut cdrs = Vec::new();
        for (n, (answer, abandoned, status)) in [
            (true, false, 200),
            (false, true, 487),
            (false, false, 486),
            (false, false, 480),
            (false, false, 503),
        ]
        .into_iter()
        .enumerate()
        {
            let mut c = sample(n as u32);
            c.answer_at = answer.then_some(c.start_at + 1);
            c.abandoned = abandoned;
            c.final_status = status;
            cdrs.push(c);
        }
        s.insert_cdrs(&cdrs).unwrap();
        for (c, d) in cdrs.iter().zip(Disposition::ALL) {
            assert_eq!(Disposition::of(c), d);
            let f = CdrFilter {
                disposition: Some(d),
                ..Default::default()
            };
            let found = s.find_cdrs(&f, None, 10).unwrap();
            assert_eq!(found.len(), 1, "{d:?}");
            assert_eq!(found[0].cdr.a_call_id, c.a_call_id);
            assert_eq!(found[0].disposition, d);
        }
    }

    #[test]
    fn filters_and_keyset_pages() {
        let (_d, mut s) = store();
        let cdrs: Vec<Cdr> = (0..25)
            .map(|n| {
                let mut c = sample(n);
                c.tenant = Some(if n % 2 == 0 { "t1" } else { "t2" }.to_string());
                c.caller = format!("sip:{}@127.0.0.1", 500 + n % 5);
                c
            })
            .collect();
        s.insert_cdrs(&cdrs).unwrap();
        let t1 = CdrFilter {
            tenant: Some("t1".into()),
            ..Default::default()
        };
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = s.find_cdrs(&t1, cursor, 5).unwrap();
            if page.is_empty() {
                break;
            }
            cursor = page.last().map(|r| r.id);
            seen.extend(page.into_iter().map(|r| r.cdr));
        }
        assert_eq!(seen.len(), 13);
        assert!(seen.iter().all(|c| c.tenant.as_deref() == Some("t1")));
        assert!(seen.windows(2).all(|w| w[0].start_at > w[1].start_at));
        let by_number = CdrFilter {
            number: Some("502".into()),
            ..Default::default()
        };
        assert_eq!(s.find_cdrs(&by_number, None, 100).unwrap().len(), 5);
        // LIKE's wildcards in a number match themselves only.
        let wild = CdrFilter {
            number: Some("5%".into()),
            ..Default::default()
        };
        assert!(s.find_cdrs(&wild, None, 100).unwrap().is_empty());
        let range = CdrFilter {
            from: Some(cdrs[3].start_at),
            to: Some(cdrs[6].start_at),
            ..Default::default()
        };
        assert_eq!(s.find_cdrs(&range, None, 100).unwrap().len(), 3);
    }
}
