//! `GET /cdrs`, `GET /cdrs/export` and `GET /reports/...` on a real loopback socket over a
//! real SQLite file: tenant scoping, filters, cursor paging, problem bodies for bad filters,
//! and a CSV export of 100,000 CDRs that streams page by page (the store walk waits for a
//! client that stops reading instead of building the body).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use switchyard::api::{self, ApiState, Health, Token};
use switchyard::store::{Cdr, Database, HangupBy, Store};

const NODE: &str = "node-token-for-the-cdr-api-tests-0123456";
const T1: &str = "tenant-one-token-for-the-cdr-api-tests-01";

struct Api {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

async fn serve(db: &std::path::Path) -> Api {
    let metrics = switchyard::metrics::install().expect("recorder");
    let state = ApiState::new(metrics.clone(), Health::new())
        .with_token(Token::new(NODE).unwrap())
        .with_tenant_token("t1", T1)
        .with_store(Database::Sqlite(db.to_path_buf()));
    let listener = api::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(api::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    Api {
        addr,
        _stop: stop,
        metrics,
    }
}

/// CDR `n` of `tenant`: queue calls of agents a0..a2, every fifth abandoned, every seventh
/// busy and unqueued.
fn cdr(n: u32, tenant: &str) -> Cdr {
    let start = 1_700_000_000_000 + i64::from(n) * 60_000;
    let abandoned = n % 5 == 0;
    let busy = n % 7 == 0 && !abandoned;
    Cdr {
        a_call_id: format!("{tenant}-{n}@127.0.0.1"),
        b_call_id: None,
        caller: format!("sip:{}@127.0.0.1", 5550 + n % 3),
        callee: "100".into(),
        route: None,
        target: None,
        start_at: start,
        ringing_at: None,
        answer_at: (!abandoned && !busy).then_some(start + 1000),
        end_at: start + 30_000,
        duration_ms: 30_000,
        billable_ms: 0,
        final_status: if busy {
            486
        } else if abandoned {
            487
        } else {
            200
        },
        hangup_by: HangupBy::Caller,
        disconnect_reason: "BYE".into(),
        queue: (!busy).then(|| format!("{tenant}/sales")),
        agent: (!abandoned && !busy).then(|| format!("a{}", n % 3)),
        wait_ms: (!busy).then_some(1000 + i64::from(n % 4) * 10_000),
        abandoned,
        trunk: None,
        attempts: None,
        dtmf: None,
        recording: None,
        media: None,
        transfers: (n % 6 == 1).then(|| "blind:B>user:1003".to_string()),
        tenant: Some(tenant.to_string()),
        legs: Vec::new(),
    }
}

async fn get(api: &Api, path: &str, token: &str) -> (u16, Value) {
    let r = common::http_request(api.addr, "GET", path, Some(&format!("Bearer {token}")), "").await;
    let body = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    (r.status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdrs_are_tenant_scoped_filtered_and_paged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("switchyard.db");
    {
        let mut s = Store::open(&db).unwrap();
        let mut all: Vec<Cdr> = (0..40).map(|n| cdr(n, "t1")).collect();
        all.extend((0..10).map(|n| cdr(n, "t2")));
        s.insert_cdrs(&all).unwrap();
    }
    let api = serve(&db).await;

    // A tenant's token sees its own; another tenant is a 404 as for one that does not exist.
    let (status, page) = get(&api, "/cdrs?limit=1000", T1).await;
    assert_eq!(status, 200, "{page}");
    let cdrs = page["cdrs"].as_array().unwrap();
    assert_eq!(cdrs.len(), 40);
    assert!(cdrs.iter().all(|c| c["tenant"] == "t1"));
    assert!(page["next_cursor"].is_null());
    let (status, p) = get(&api, "/cdrs?tenant=t2", T1).await;
    assert_eq!(
        (status, p["detail"].as_str()),
        (404, Some(r#"no tenant "t2""#))
    );
    // The node's token: every tenant, or one.
    let (_, page) = get(&api, "/cdrs?limit=1000", NODE).await;
    assert_eq!(page["cdrs"].as_array().unwrap().len(), 50);
    let (_, page) = get(&api, "/cdrs?tenant=t2", NODE).await;
    assert_eq!(page["cdrs"].as_array().unwrap().len(), 10);

    // Cursor paging walks every row once, newest first.
    let mut seen = Vec::new();
    let mut path = "/cdrs?limit=7".to_string();
    loop {
        let (status, page) = get(&api, &path, T1).await;
        assert_eq!(status, 200, "{page}");
        for c in page["cdrs"].as_array().unwrap() {
            seen.push(c["start_at"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/cdrs?limit=7&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 40);
    assert!(seen.windows(2).all(|w| w[0] > w[1]));

    // Filters: disposition, agent, queue (with its tenant from the token), number, time.
    let (_, page) = get(&api, "/cdrs?disposition=abandoned&limit=1000", T1).await;
    assert_eq!(page["cdrs"].as_array().unwrap().len(), 8);
    assert!(page["cdrs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["disposition"] == "abandoned"));
    let (_, page) = get(&api, "/cdrs?disposition=busy", T1).await;
    assert_eq!(page["cdrs"].as_array().unwrap().len(), 4);
    let (_, page) = get(&api, "/cdrs?agent=a1&queue=sales&limit=1000", T1).await;
    let n = page["cdrs"].as_array().unwrap().len();
    assert!(
        n > 0
            && page["cdrs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["agent"] == "a1")
    );
    let (_, page) = get(&api, "/cdrs?number=5551&limit=1000", T1).await;
    assert_eq!(page["cdrs"].as_array().unwrap().len(), 13);
    let from = 1_700_000_000_000i64 + 10 * 60_000;
    let to = from + 5 * 60_000;
    let (_, page) = get(&api, &format!("/cdrs?from={from}&to={to}"), T1).await;
    assert_eq!(page["cdrs"].as_array().unwrap().len(), 5);

    // Bad filters: a problem body naming what is wrong, never a 500.
    for (path, needle) in [
        ("/cdrs?limit=0", "limit"),
        ("/cdrs?limit=5000", "limit"),
        ("/cdrs?disposition=lost", "disposition"),
        ("/cdrs?from=yesterday", "from"),
        ("/cdrs?from=20&to=10", "from"),
        ("/cdrs?cursor=12", "cursor"),
        ("/cdrs?agnet=a1", "unknown parameter"),
        ("/cdrs?number=1%27%20OR%201=1", "number"),
        ("/cdrs/export", "format"),
        ("/cdrs/export?format=xlsx", "format"),
        ("/reports/queues?interval=5m", "interval"),
        ("/reports/queues?from=0&to=999999999999999", "intervals"),
    ] {
        let r =
            common::http_request(api.addr, "GET", path, Some(&format!("Bearer {T1}")), "").await;
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert_eq!(r.header("content-type"), "application/problem+json");
        assert!(r.body.contains(needle), "{path}: {}", r.body);
    }
    let (status, p) = get(&api, "/cdrs?queue=sales", NODE).await;
    assert_eq!(status, 400, "a queue without its tenant: {p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_per_queue_and_agent_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("switchyard.db");
    {
        let mut s = Store::open(&db).unwrap();
        let mut all: Vec<Cdr> = (0..40).map(|n| cdr(n, "t1")).collect();
        all.extend((0..10).map(|n| cdr(n, "t2")));
        s.insert_cdrs(&all).unwrap();
    }
    let api = serve(&db).await;
    let range = "from=1700000000000&to=1700003600000";
    let (status, r) = get(&api, &format!("/reports/queues?interval=1h&{range}"), T1).await;
    assert_eq!(status, 200, "{r}");
    let rows = r["rows"].as_array().unwrap();
    // 40 calls of t1 in 40 minutes: one hour interval, one queue; t2's are not shown.
    assert_eq!(rows.len(), 1, "{r}");
    let row = &rows[0];
    assert_eq!(row["key"], "t1/sales");
    assert_eq!(row["offered"], 40 - 4, "the busy ones never queued");
    assert_eq!(
        row["abandoned"].as_i64().unwrap() + row["short_abandoned"].as_i64().unwrap(),
        8
    );
    assert_eq!(row["answered"], 40 - 4 - 8);
    let (status, r) = get(&api, &format!("/reports/agents?interval=15m&{range}"), T1).await;
    assert_eq!(status, 200, "{r}");
    let rows = r["rows"].as_array().unwrap();
    let answered: i64 = rows.iter().map(|r| r["answered"].as_i64().unwrap()).sum();
    assert_eq!(answered, 28);
    assert!(rows.iter().all(|r| r["tenant"] == "t1"));
    // Another tenant's report is a 404 for a tenant's token.
    let (status, _) = get(&api, &format!("/reports/queues?tenant=t2&{range}"), T1).await;
    assert_eq!(status, 404);
}

/// Reads one HTTP/1.1 chunk's size line and data; None at the last chunk.
async fn read_chunk(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    let size = usize::from_str_radix(line.trim(), 16).expect("chunk size");
    let mut data = vec![0; size + 2];
    r.read_exact(&mut data).await.unwrap();
    data.truncate(size);
    (size > 0).then_some(data)
}

fn rows_streamed(api: &Api) -> u64 {
    api.metrics
        .render()
        .lines()
        .find(|l| l.starts_with("switchyard_api_cdr_export_rows_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100k_cdr_export_streams_page_by_page() {
    const ROWS: u32 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("switchyard.db");
    {
        let mut s = Store::open(&db).unwrap();
        for batch in (0..ROWS).collect::<Vec<_>>().chunks(10_000) {
            let cdrs: Vec<Cdr> = batch.iter().map(|n| cdr(*n, "t1")).collect();
            s.insert_cdrs(&cdrs).unwrap();
        }
    }
    let api = serve(&db).await;
    let before = rows_streamed(&api);
    // A small receive buffer, so that what the socket holds is small next to the export.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut stream = socket.connect(api.addr).await.unwrap();
    let req = format!(
        "GET /cdrs/export?format=csv HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {T1}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut r = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/csv"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let first = read_chunk(&mut r).await.expect("a first chunk");
    let text = String::from_utf8(first.clone()).unwrap();
    assert!(text.starts_with("id,tenant,a_call_id,"), "{}", &text[..80]);

    // The client stops reading: the store walk stops too, held by the channel and the
    // socket's buffers, long before the end (it does not build the body in memory).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = (rows_streamed(&api), 0);
    while Instant::now() < deadline && last.1 < 5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = rows_streamed(&api);
        last = if now == last.0 {
            (now, last.1 + 1)
        } else {
            (now, 0)
        };
    }
    let produced = last.0 - before;
    assert!(
        produced < u64::from(ROWS) / 2,
        "{produced} rows produced for a client that read one chunk"
    );

    // Reading on: every row arrives, in chunks of at most one page.
    let mut lines = text.lines().count();
    let mut chunks = 1;
    let mut largest = first.len();
    while let Some(chunk) = read_chunk(&mut r).await {
        chunks += 1;
        largest = largest.max(chunk.len());
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    assert_eq!(lines, ROWS as usize + 1, "the header and every row");
    assert!(chunks >= (ROWS as usize) / 1000, "{chunks} chunks");
    assert!(largest < 1000 * 400, "a chunk of {largest} bytes");
    assert_eq!(rows_streamed(&api) - before, u64::from(ROWS));
}
