//! Recordings end to end without SIP: recorded through `media::recording`, indexed through the
//! store writer actor, settled by crash recovery, and served by the HTTP API with tenant
//! isolation. Spoken to in raw HTTP/1.1 over a loopback TCP socket.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ractor::Actor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use switchyard::actors::store_writer::{self, StoreWriterActor, StoreWriterArgs};
use switchyard::api::recordings::Recordings;
use switchyard::api::{bind, serve, ApiState, Health, Token};
use switchyard::media::recording::{self, KeyRing, Recorder};
use switchyard::store::now_unix_ms;
use switchyard::store::recordings::{recover, RecordingRow};
use switchyard::store::Store;

const NODE_TOKEN: &str = "node-token-for-tests";
const T1_TOKEN: &str = "tenant-one-token";
const T2_TOKEN: &str = "tenant-two-token";
const STEP: Duration = Duration::from_secs(10);

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A GET on a fresh connection, read to the end; the body as bytes (audio is not UTF-8).
async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Reply {
    let mut stream = tokio::time::timeout(STEP, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut raw))
        .await
        .expect("reply in time")
        .expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head/body separator");
    let head = String::from_utf8(raw[..split].to_vec()).expect("utf-8 head");
    let body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    assert!(
        !headers.contains_key("transfer-encoding"),
        "this client reads sized bodies only: {headers:?}"
    );
    if let Some(len) = headers.get("content-length") {
        assert_eq!(len.parse::<usize>().expect("length"), body.len());
    }
    Reply {
        status,
        headers,
        body,
    }
}

/// The `id`s of the objects in a JSON list body, in order (the test crate has no JSON parser;
/// ids are plain tokens, so a substring scan is exact here).
fn ids(body: &str) -> Vec<String> {
    body.split("\"id\":\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap_or("").to_owned())
        .collect()
}

fn keys() -> KeyRing {
    let mut k = BTreeMap::new();
    k.insert("k1".to_string(), format!("hex:{}", "5a".repeat(32)));
    KeyRing::from_config(&k, None, Path::new("/nonexistent")).unwrap()
}

/// Left: a ramp; right: its negation; `frames` frames.
fn tracks(frames: usize) -> (Vec<i16>, Vec<i16>) {
    let left: Vec<i16> = (0..frames).map(|i| (i % 1000) as i16 * 7).collect();
    let right = left.iter().map(|s| -s).collect();
    (left, right)
}

#[tokio::test]
async fn recordings_are_indexed_recovered_and_served_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("switchyard.db");
    let rec_dir = dir.path().join("recordings");
    let keys = Arc::new(keys());

    // Before the "crash": one recording completed and renamed whose row still says
    // `recording`, and one interrupted mid-way (tmp only).
    {
        let mut store = Store::open(&db).unwrap();
        let mut r = Recorder::create(&rec_dir, "crashed-done", &keys).unwrap();
        r.write_stereo(&[1; 800], &[2; 800]).unwrap();
        r.finish().unwrap();
        let mut r = Recorder::create(&rec_dir, "crashed-mid", &keys).unwrap();
        r.write_stereo(&[1; 30_000], &[2; 30_000]).unwrap();
        std::mem::forget(r);
        for (id, at) in [("crashed-done", 1), ("crashed-mid", 2)] {
            let row = RecordingRow::started(
                id,
                None,
                Some("t1".to_string()),
                at,
                &recording::tmp_path(&rec_dir, id),
                "k1",
            );
            store.insert_recording(&row).unwrap();
        }
    }
    // Start-up: recovery first, then the writer.
    {
        let mut store = Store::open(&db).unwrap();
        let report = recover(&mut store, &rec_dir, &keys).unwrap();
        assert_eq!(report.completed, ["crashed-done"]);
        assert_eq!(report.failed, ["crashed-mid"]);
    }
    let (writer, _) = Actor::spawn(None, StoreWriterActor, StoreWriterArgs::new(&db))
        .await
        .unwrap();

    // Live recordings of two tenants, written the way the relay does.
    let (left, right) = tracks(20_000);
    let mut expected_wav = HashMap::new();
    for (id, tenant, started) in [("t1-a", "t1", 10), ("t1-b", "t1", 20), ("t2-a", "t2", 30)] {
        let mut rec = Recorder::create(&rec_dir, id, &keys).unwrap();
        let row = RecordingRow::started(
            id,
            Some(format!("call-{id}@127.0.0.1")),
            Some(tenant.to_string()),
            started,
            &recording::tmp_path(&rec_dir, id),
            keys.current_id(),
        );
        store_writer::recording_started(&writer, row).unwrap();
        for (l, r) in left.chunks(160).zip(right.chunks(160)) {
            rec.write_stereo(l, r).unwrap();
        }
        let finished = rec.finish().unwrap();
        store_writer::recording_finished(&writer, id.to_string(), &finished).unwrap();
        let mut wav = Vec::new();
        for chunk in recording::open(&finished.path, &keys).unwrap() {
            wav.extend_from_slice(&chunk.unwrap());
        }
        expected_wav.insert(id, wav);
    }
    // One that fails.
    let rec = Recorder::create(&rec_dir, "t2-failed", &keys).unwrap();
    store_writer::recording_started(
        &writer,
        RecordingRow::started(
            "t2-failed",
            None,
            Some("t2".to_string()),
            now_unix_ms(),
            &recording::tmp_path(&rec_dir, "t2-failed"),
            "k1",
        ),
    )
    .unwrap();
    rec.abort();
    store_writer::recording_failed(&writer, "t2-failed".into(), "test".into()).unwrap();
    store_writer::flush(&writer).await.unwrap();

    // The API.
    let metrics = switchyard::metrics::install().unwrap();
    let recordings = Recordings::new(&db, Arc::clone(&keys))
        .with_tenant_token("t1", Token::new(T1_TOKEN).unwrap())
        .with_tenant_token("t2", Token::new(T2_TOKEN).unwrap());
    let state = ApiState::new(metrics, Health::new())
        .with_token(Token::new(NODE_TOKEN).unwrap())
        .with_recordings(recordings);
    let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async move {
        let _ = stopped.await;
    }));

    // Authentication: none, or an unknown token, is a 401 problem.
    for token in [None, Some("nope")] {
        let r = get(addr, "/recordings", token).await;
        assert_eq!(r.status, 401, "{token:?}");
        assert_eq!(r.headers["content-type"], "application/problem+json");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        assert_eq!(get(addr, "/recordings/t1-a/audio", token).await.status, 401);
    }

    // Listing: a tenant sees its own, newest first; the node sees all.
    let r = get(addr, "/recordings", Some(T1_TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        ids(&r.text()),
        ["t1-b", "t1-a", "crashed-mid", "crashed-done"]
    );
    assert!(!r.text().contains("\"path\""), "server paths are not shown");
    let r = get(addr, "/recordings?limit=1", Some(T1_TOKEN)).await;
    assert_eq!(ids(&r.text()), ["t1-b"]);
    let r = get(addr, "/recordings?tenant=t2", Some(T1_TOKEN)).await;
    assert_eq!(r.status, 404, "another tenant's listing");
    let r = get(addr, "/recordings", Some(NODE_TOKEN)).await;
    assert_eq!(ids(&r.text()).len(), 6);
    let r = get(addr, "/recordings?tenant=t2", Some(NODE_TOKEN)).await;
    assert_eq!(ids(&r.text()), ["t2-failed", "t2-a"]);

    // Metadata: own tenant 200, another tenant's 404 exactly like a missing id.
    let r = get(addr, "/recordings/t1-a", Some(T1_TOKEN)).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("\"state\":\"complete\""), "{}", r.text());
    assert!(r.text().contains("\"duration_ms\":2500"), "{}", r.text());
    let cross = get(addr, "/recordings/t2-a", Some(T1_TOKEN)).await;
    let missing = get(addr, "/recordings/no-such", Some(T1_TOKEN)).await;
    assert_eq!(cross.status, 404);
    assert_eq!(missing.status, 404);
    assert_eq!(
        get(addr, "/recordings/t2-a", Some(NODE_TOKEN)).await.status,
        200
    );
    let r = get(addr, "/recordings/crashed-done", Some(T1_TOKEN)).await;
    assert!(
        r.text().contains("\"state\":\"complete\""),
        "recovered: {}",
        r.text()
    );
    let r = get(addr, "/recordings/crashed-mid", Some(T1_TOKEN)).await;
    assert!(
        r.text().contains("\"state\":\"failed\""),
        "recovered: {}",
        r.text()
    );

    // Audio: the decrypted WAV, header sizes patched, channels as recorded.
    let r = get(addr, "/recordings/t1-a/audio", Some(T1_TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["content-type"], "audio/wav");
    assert_eq!(r.body, expected_wav["t1-a"]);
    assert_eq!(r.body.len(), 44 + 20_000 * 4);
    assert_eq!(&r.body[0..4], b"RIFF");
    assert_eq!(
        u32::from_le_bytes(r.body[40..44].try_into().unwrap()),
        80_000
    );
    for (i, frame) in r.body[44..].chunks(4).enumerate() {
        let l = i16::from_le_bytes([frame[0], frame[1]]);
        let rr = i16::from_le_bytes([frame[2], frame[3]]);
        assert_eq!((l, rr), (left[i], right[i]), "frame {i}");
    }
    assert_eq!(
        get(addr, "/recordings/t2-a/audio", Some(T1_TOKEN))
            .await
            .status,
        404
    );
    let r = get(addr, "/recordings/t2-a/audio", Some(NODE_TOKEN)).await;
    assert_eq!(r.body, expected_wav["t2-a"]);
    assert_eq!(
        get(addr, "/recordings/t2-failed/audio", Some(T2_TOKEN))
            .await
            .status,
        409
    );

    // A file damaged after completion is refused, never served as valid audio.
    let path = recording::final_path(&rec_dir, "t1-b");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len() - 3;
    bytes[n] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let r = get(addr, "/recordings/t1-b/audio", Some(T1_TOKEN)).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_ne!(r.headers["content-type"], "audio/wav");

    let _ = stop.send(());
    tokio::time::timeout(STEP, server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
    store_writer::shutdown(&writer).await.unwrap();
}
