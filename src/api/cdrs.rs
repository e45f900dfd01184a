//! CDRs and reports read from the store, each tenant seeing only its own.
//!
//! | route | answer |
//! |---|---|
//! | `GET /cdrs[?tenant=][&from=][&to=][&number=][&queue=][&agent=][&disposition=][&limit=][&cursor=]` | `{"cdrs": [...], "next_cursor"}`, newest first |
//! | `GET /cdrs/export?format=csv[&filters]` | every matching CDR as CSV, streamed |
//! | `GET /reports/queues?interval=15m\|1h\|1d[&from=][&to=][&tenant=][&queue=][&sl_secs=][&short_abandon_secs=]` | interval rows per queue |
//! | `GET /reports/agents?interval=...[&agent=]` | interval rows per agent |
//!
//! A tenant's credential sees its own tenant's CDRs (`tenant=` of another is a 404); the
//! node's sees every tenant's, or one with `tenant=`. Paging is by an opaque cursor (the
//! last row's position), so a page costs the same however deep it is. The export walks the
//! same filters in pages of [`EXPORT_PAGE`] rows on the blocking pool and hands each page to
//! the response as one chunk through a channel of [`EXPORT_CHUNKS`]: its memory does not
//! grow with the number of rows, and a client that stops reading stops the walk.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use http_body::{Frame, SizeHint};
use serde::Serialize;
use tokio::sync::mpsc;

use super::db::{store_failed, Db};
use super::{route, ApiState, Caller, Params, Problem};
use crate::store::reports::{CdrFilter, CdrRecord, Disposition, IntervalRow, ReportQuery};

/// Counter, labels `route` (`cdrs`, `export`, `queues`, `agents`) and `result` (`ok`,
/// `bad_request`, `unavailable`): CDR and report requests.
pub const CDR_REQUESTS_TOTAL: &str = "switchyard_api_cdr_requests_total";
/// Counter: CDR rows streamed by `GET /cdrs/export`.
pub const EXPORT_ROWS_TOTAL: &str = "switchyard_api_cdr_export_rows_total";

/// `limit` of `GET /cdrs` without one, and the largest.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = crate::store::reports::MAX_PAGE;
/// Rows per page (and per response chunk) of the export.
pub const EXPORT_PAGE: usize = 1000;
/// Chunks buffered between the export's store walk and the response.
const EXPORT_CHUNKS: usize = 2;
/// How long an export waits for a client that does not read before it gives up (its store
/// connection and permit go back).
const EXPORT_STALL: std::time::Duration = std::time::Duration::from_secs(60);
/// The most intervals one report may span.
pub const MAX_INTERVALS: i64 = 10_000;
/// Longest id, number or name accepted in a filter.
const MAX_VALUE: usize = 128;

const CDR_PARAMS: [&str; 9] = [
    "tenant",
    "from",
    "to",
    "number",
    "queue",
    "agent",
    "disposition",
    "limit",
    "cursor",
];
const EXPORT_PARAMS: [&str; 8] = [
    "format",
    "tenant",
    "from",
    "to",
    "number",
    "queue",
    "agent",
    "disposition",
];
const REPORT_PARAMS: [&str; 8] = [
    "interval",
    "from",
    "to",
    "tenant",
    "queue",
    "agent",
    "sl_secs",
    "short_abandon_secs",
];

/// The CSV export's columns, in order.
pub const CSV_COLUMNS: [&str; 22] = [
    "id",
    "tenant",
    "a_call_id",
    "b_call_id",
    "caller",
    "callee",
    "start_at",
    "answer_at",
    "end_at",
    "duration_ms",
    "billable_ms",
    "final_status",
    "disposition",
    "hangup_by",
    "disconnect_reason",
    "queue",
    "agent",
    "wait_ms",
    "trunk",
    "attempts",
    "transfers",
    "recording",
];

/// Describe this module's metrics with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        CDR_REQUESTS_TOTAL,
        "CDR listing, export and report requests, by route and result"
    );
    metrics::describe_counter!(EXPORT_ROWS_TOTAL, "CDR rows streamed by the CSV export");
}

/// Register the CDR and report routes (each with its `path` label).
pub(super) fn routes(router: Router<ApiState>) -> Router<ApiState> {
    let router = route(router, "/cdrs", get(list_cdrs));
    let router = route(router, "/cdrs/export", get(export_cdrs));
    let router = route(router, "/reports/queues", get(queue_report));
    route(router, "/reports/agents", get(agent_report))
}

fn count(route: &'static str, answer: &Result<impl Sized, Problem>) {
    let result = match answer {
        Ok(_) => "ok",
        Err(p) if p.status == 400 => "bad_request",
        Err(p) if p.status == 404 => "not_found",
        Err(_) => "unavailable",
    };
    metrics::counter!(CDR_REQUESTS_TOTAL, "route" => route, "result" => result).increment(1);
}

fn db(state: &ApiState) -> Result<&Arc<Db>, Problem> {
    state
        .store
        .as_ref()
        .ok_or_else(|| Problem::not_found("this node has no CDR store"))
}

/// A listing page.
#[derive(Debug, Serialize)]
pub struct CdrPage {
    pub cdrs: Vec<CdrRecord>,
    /// Pass as `cursor=` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

async fn list_cdrs(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Response {
    let answer = list_inner(&state, &caller, &uri).await;
    count("cdrs", &answer);
    super::problem::respond(answer)
}

async fn list_inner(state: &ApiState, caller: &Caller, uri: &Uri) -> Result<CdrPage, Problem> {
    let params = Params::parse(uri, &CDR_PARAMS)?;
    let filter = parse_filter(&params, caller)?;
    let limit = params.number("limit", DEFAULT_LIMIT)?;
    if limit == 0 || limit > MAX_LIMIT {
        return Err(Problem::bad_request(format!(
            "limit must be 1 to {MAX_LIMIT}"
        )));
    }
    let cursor = params.get("cursor").map(decode_cursor).transpose()?;
    let cdrs = db(state)?
        .run_heavy(move |s| s.find_cdrs(&filter, cursor, limit))
        .await?;
    let next_cursor = (cdrs.len() == limit)
        .then(|| cdrs.last().map(|r| encode_cursor(r.id)))
        .flatten();
    Ok(CdrPage { cdrs, next_cursor })
}

/// The cursor after the row `id`: opaque to clients (it may change between versions).
pub fn encode_cursor(id: i64) -> String {
    format!("c1.{id:x}")
}

pub(super) fn decode_cursor(text: &str) -> Result<i64, Problem> {
    text.strip_prefix("c1.")
        .and_then(|hex| i64::from_str_radix(hex, 16).ok())
        .filter(|id| *id > 0)
        .ok_or_else(|| Problem::bad_request("cursor is not one this API gave out"))
}

/// A filter value: ids, numbers and names of letters, digits and `+*#._@-` (and `/` where
/// `slash`), at most [`MAX_VALUE`] characters.
fn value<'a>(params: &Params<'a>, name: &str, slash: bool) -> Result<Option<&'a str>, Problem> {
    let Some(v) = params.get(name) else {
        return Ok(None);
    };
    let ok = v.len() <= MAX_VALUE
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+*#._@-".contains(&b) || (slash && b == b'/'));
    if !ok {
        return Err(Problem::bad_request(format!(
            "{name} must be at most {MAX_VALUE} letters, digits or +*#._@-"
        )));
    }
    Ok(Some(v))
}

/// A time parameter: Unix milliseconds.
fn time(params: &Params<'_>, name: &str) -> Result<Option<i64>, Problem> {
    params
        .get(name)
        .map(|v| {
            v.parse::<i64>()
                .ok()
                .filter(|t| *t >= 0)
                .ok_or_else(|| Problem::bad_request(format!("{name} must be Unix milliseconds")))
        })
        .transpose()
}

/// The tenant a request covers and its queue filter as stored (`<tenant>/<queue>`): a queue
/// given without its tenant needs one (a tenant's credential, or `tenant=`).
fn queue_key(tenant: Option<&str>, queue: Option<&str>) -> Result<Option<String>, Problem> {
    match (tenant, queue) {
        (_, None) => Ok(None),
        (_, Some(q)) if q.contains('/') => Ok(Some(q.to_string())),
        (Some(t), Some(q)) => Ok(Some(format!("{t}/{q}"))),
        (None, Some(_)) => Err(Problem::bad_request(
            "queue needs its tenant: tenant=T&queue=Q, or queue=T/Q",
        )),
    }
}

fn parse_filter(params: &Params<'_>, caller: &Caller) -> Result<CdrFilter, Problem> {
    let tenant = caller
        .listing(value(params, "tenant", false)?)?
        .map(str::to_string);
    let queue = queue_key(tenant.as_deref(), value(params, "queue", true)?)?;
    let disposition = params
        .get("disposition")
        .map(|d| {
            Disposition::parse(d).ok_or_else(|| {
                let known: Vec<&str> = Disposition::ALL.iter().map(|d| d.as_str()).collect();
                Problem::bad_request(format!("disposition must be one of {}", known.join(", ")))
            })
        })
        .transpose()?;
    let (from, to) = (time(params, "from")?, time(params, "to")?);
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(Problem::bad_request("from is after to"));
        }
    }
    Ok(CdrFilter {
        tenant,
        from,
        to,
        number: value(params, "number", false)?.map(str::to_string),
        queue,
        agent: value(params, "agent", false)?.map(str::to_string),
        disposition,
    })
}

async fn export_cdrs(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Response {
    let answer = export_inner(&state, &caller, &uri).await;
    count("export", &answer);
    match answer {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"cdrs.csv\"",
                ),
            ],
            body,
        )
            .into_response(),
        Err(p) => p.into_response(),
    }
}

async fn export_inner(state: &ApiState, caller: &Caller, uri: &Uri) -> Result<Body, Problem> {
    let params = Params::parse(uri, &EXPORT_PARAMS)?;
    match params.get("format") {
        Some("csv") => {}
        _ => return Err(Problem::bad_request("format must be csv")),
    }
    let filter = parse_filter(&params, caller)?;
    let mut conn = db(state)?.acquire_heavy().await?;
    // The first page is read before answering, so a failing store is a 503 rather than a
    // 200 cut short.
    let first = {
        let f = filter.clone();
        tokio::task::spawn_blocking(move || {
            let page = conn.store().find_cdrs(&f, None, EXPORT_PAGE);
            (conn, page)
        })
        .await
        .map_err(|_| Problem::unavailable("the export did not start"))?
    };
    let (mut conn, page) = first;
    let page = page.map_err(|e| store_failed(&e))?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(EXPORT_CHUNKS);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut page = page;
        let mut header = true;
        loop {
            let cursor = page.last().map(|r| r.id);
            let chunk = csv_chunk(&page, header);
            header = false;
            metrics::counter!(EXPORT_ROWS_TOTAL).increment(page.len() as u64);
            // A client that stops reading for a minute lets its store connection go.
            let sent = runtime.block_on(tx.send_timeout(Ok(chunk), EXPORT_STALL));
            if sent.is_err() {
                return; // the client went away or stalled
            }
            let Some(cursor) = cursor.filter(|_| page.len() == EXPORT_PAGE) else {
                return;
            };
            page = match conn.store().find_cdrs(&filter, Some(cursor), EXPORT_PAGE) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "CDR export cut short");
                    conn.discard();
                    let _ = tx.blocking_send(Err(std::io::Error::other("store failed")));
                    return;
                }
            };
        }
    });
    Ok(Body::new(ChannelBody { rx }))
}

/// One chunk of the export: `rows` as CSV lines (after the header line if `header`).
pub fn csv_chunk(rows: &[CdrRecord], header: bool) -> Bytes {
    let mut w = csv::Writer::from_writer(Vec::with_capacity(rows.len() * 256 + 256));
    // Writing into a Vec cannot fail but for a bug in the csv crate.
    if header {
        let _ = w.write_record(CSV_COLUMNS);
    }
    for r in rows {
        let c = &r.cdr;
        let int = |v: i64| v.to_string();
        let opt = |v: Option<i64>| v.map(int).unwrap_or_default();
        let fields: [String; 22] = [
            int(r.id),
            cell(c.tenant.as_deref()),
            cell(Some(&c.a_call_id)),
            cell(c.b_call_id.as_deref()),
            cell(Some(&c.caller)),
            cell(Some(&c.callee)),
            int(c.start_at),
            opt(c.answer_at),
            int(c.end_at),
            int(c.duration_ms),
            int(c.billable_ms),
            c.final_status.to_string(),
            r.disposition.as_str().to_string(),
            c.hangup_by.as_str().to_string(),
            cell(Some(&c.disconnect_reason)),
            cell(c.queue.as_deref()),
            cell(c.agent.as_deref()),
            opt(c.wait_ms),
            cell(c.trunk.as_deref()),
            cell(c.attempts.as_deref()),
            cell(c.transfers.as_deref()),
            cell(c.recording.as_deref()),
        ];
        let _ = w.write_record(&fields);
    }
    Bytes::from(w.into_inner().unwrap_or_default())
}

/// A text cell that a spreadsheet will not run as a formula: callers' names and numbers come
/// from the network, so one starting with `=`, `@`, a tab or CR, or `+`/`-` followed by
/// anything but digits, gets a leading `'` (OWASP's advice on CSV injection).
fn cell(v: Option<&str>) -> String {
    let v = v.unwrap_or("");
    let risky = match v.as_bytes().first() {
        Some(b'=' | b'@' | b'\t' | b'\r') => true,
        Some(b'+' | b'-') => !v[1..].bytes().all(|b| b.is_ascii_digit()) || v.len() == 1,
        _ => false,
    };
    if risky {
        format!("'{v}")
    } else {
        v.to_string()
    }
}

/// A response body fed chunk by chunk from a channel.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| c.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A report's answer.
#[derive(Debug, Serialize)]
pub struct Report {
    pub interval: &'static str,
    pub from: i64,
    pub to: i64,
    pub sl_secs: i64,
    pub short_abandon_secs: i64,
    pub rows: Vec<IntervalRow>,
}

async fn queue_report(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Response {
    let answer = report_inner(&state, &caller, &uri, true).await;
    count("queues", &answer);
    super::problem::respond(answer)
}

async fn agent_report(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Response {
    let answer = report_inner(&state, &caller, &uri, false).await;
    count("agents", &answer);
    super::problem::respond(answer)
}

/// The report's interval: its name and length.
fn interval(text: Option<&str>) -> Result<(&'static str, i64), Problem> {
    match text.unwrap_or("1h") {
        "15m" => Ok(("15m", 15 * 60_000)),
        "1h" => Ok(("1h", 3_600_000)),
        "1d" => Ok(("1d", 86_400_000)),
        _ => Err(Problem::bad_request("interval must be 15m, 1h or 1d")),
    }
}

async fn report_inner(
    state: &ApiState,
    caller: &Caller,
    uri: &Uri,
    queues: bool,
) -> Result<Report, Problem> {
    let params = Params::parse(uri, &REPORT_PARAMS)?;
    let (name, interval_ms) = interval(params.get("interval"))?;
    let tenant = caller
        .listing(value(&params, "tenant", false)?)?
        .map(str::to_string);
    let key = if queues {
        if params.get("agent").is_some() {
            return Err(Problem::bad_request("agent= is for /reports/agents"));
        }
        queue_key(tenant.as_deref(), value(&params, "queue", true)?)?
    } else {
        if params.get("queue").is_some() {
            return Err(Problem::bad_request("queue= is for /reports/queues"));
        }
        value(&params, "agent", false)?.map(str::to_string)
    };
    let now = crate::store::now_unix_ms();
    // Without a range: the last day, in whole intervals.
    let to = time(&params, "to")?.unwrap_or((now / interval_ms + 1) * interval_ms);
    let from = time(&params, "from")?.unwrap_or(to - 86_400_000).max(0);
    if from >= to {
        return Err(Problem::bad_request("from must be before to"));
    }
    if (to - from) / interval_ms > MAX_INTERVALS {
        return Err(Problem::bad_request(format!(
            "the range spans more than {MAX_INTERVALS} intervals"
        )));
    }
    let secs = |name: &str, default: usize| -> Result<i64, Problem> {
        let v = params.number(name, default)?;
        if v > 86_400 {
            return Err(Problem::bad_request(format!("{name} is at most 86400")));
        }
        Ok(v as i64)
    };
    let (sl_secs, short_abandon_secs) = (secs("sl_secs", 20)?, secs("short_abandon_secs", 5)?);
    let q = ReportQuery {
        interval_ms,
        from,
        to,
        tenant,
        key,
        sl_threshold_ms: sl_secs * 1000,
        short_abandon_ms: short_abandon_secs * 1000,
    };
    let rows = db(state)?
        .run_heavy(move |s| match queues {
            true => s.queue_report(&q),
            false => s.agent_report(&q),
        })
        .await?;
    Ok(Report {
        interval: name,
        from,
        to,
        sl_secs,
        short_abandon_secs,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_forgeries_cleanly() {
        assert_eq!(decode_cursor(&encode_cursor(12345)).unwrap(), 12345);
        for bad in ["", "12345", "c1.", "c1.zz", "c1.-5", "c2.10"] {
            assert_eq!(decode_cursor(bad).unwrap_err().status, 400, "{bad}");
        }
    }

    #[test]
    fn cells_that_a_spreadsheet_would_run_are_defused() {
        assert_eq!(cell(Some("=HYPERLINK(\"x\")")), "'=HYPERLINK(\"x\")");
        assert_eq!(cell(Some("@SUM(1)")), "'@SUM(1)");
        assert_eq!(cell(Some("-1+2")), "'-1+2");
        assert_eq!(cell(Some("+441234")), "+441234");
        assert_eq!(cell(Some("sip:alice@x")), "sip:alice@x");
        assert_eq!(cell(None), "");
    }

    #[test]
    fn a_queue_without_its_tenant_is_refused() {
        assert_eq!(queue_key(None, Some("sales")).unwrap_err().status, 400);
        assert_eq!(
            queue_key(Some("t"), Some("sales")).unwrap(),
            Some("t/sales".into())
        );
        assert_eq!(
            queue_key(None, Some("t/sales")).unwrap(),
            Some("t/sales".into())
        );
    }
}
