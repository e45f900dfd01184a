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

const NODE_TOKEN: &str = "node-token-for-the-recording-tests-0123";
const T1_TOKEN: &str = "tenant-one-token-for-the-recording-tests";
const T2_TOKEN: &str = "tenant-two-token-for-the-recording-tests";
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
    if raw.is_empty() {
        // The server closed the connection without a byte (an aborted stream whose headers
        // were never flushed): status 0.
        return Reply {
            status: 0,
            headers: HashMap::new(),
            body: Vec::new(),
        };
    }
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
    // A body shorter than its Content-Length is a stream the server aborted; the caller checks.
    if let Some(len) = headers.get("content-length") {
        assert!(len.parse::<usize>().expect("length") >= body.len());
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
    let recordings = Recordings::new(&db, Arc::clone(&keys));
    let state = ApiState::new(metrics, Health::new())
        .with_token(Token::new(NODE_TOKEN).unwrap())
        .with_tenant_token("t1", T1_TOKEN)
        .with_tenant_token("t2", T2_TOKEN)
        .with_recordings(recordings);
    let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async move {
        let _ = stopped.await;
    }));

    // Authentication: none is a 401 problem with the challenge, an unknown token a 403.
    for (token, status) in [(None, 401), (Some("nope"), 403)] {
        let r = get(addr, "/recordings", token).await;
        assert_eq!(r.status, status, "{token:?}");
        assert_eq!(r.headers["content-type"], "application/problem+json");
        if status == 401 {
            assert_eq!(r.headers["www-authenticate"], "Bearer");
        }
        assert_eq!(
            get(addr, "/recordings/t1-a/audio", token).await.status,
            status
        );
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

    // A file damaged after completion is never served as a whole recording: damage at the
    // start is a 500, damage further on cuts the stream short of its Content-Length.
    let path = recording::final_path(&rec_dir, "t1-b");
    let good = std::fs::read(&path).unwrap();
    let mut bytes = good.clone();
    let n = bytes.len() - 3;
    bytes[n] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let r = get(addr, "/recordings/t1-b/audio", Some(T1_TOKEN)).await;
    // Either the headers went out with the first chunk and the body stops short of its
    // length, or the stream failed before anything was flushed and the connection closed
    // empty (which one depends on scheduling); never a whole WAV.
    if r.status != 0 {
        assert_eq!(r.status, 200, "{}", r.text());
        let announced: usize = r.headers["content-length"].parse().unwrap();
        assert_eq!(announced, 44 + 20_000 * 4);
        assert!(r.body.len() < announced, "a cut stream, not a whole WAV");
    }
    let mut bytes = good.clone();
    bytes[100] ^= 0xff; // in the first chunk
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

// ---- kill -9 during recording ----

const KILL9_CHILD_ENV: &str = "SWITCHYARD_RECORDINGS_KILL9_CHILD";
/// Recordings written at once by the child.
const KILL9_RECORDERS: usize = 4;
/// A safety net: the child stops by itself if the parent never kills it.
const KILL9_CHILD_MAX_LIFETIME: Duration = Duration::from_secs(60);

/// The child: `KILL9_RECORDERS` threads record one recording after another (about 0.3 s and
/// 5 chunks each) through the store writer, printing `started <id> at <ms>` after the start
/// is handed to the writer and `finished <id>` once `finish` returned. A no-op unless
/// [`KILL9_CHILD_ENV`] names the data directory.
#[test]
fn recordings_kill9_child() {
    let Ok(data) = std::env::var(KILL9_CHILD_ENV) else {
        return;
    };
    let data = std::path::PathBuf::from(data);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let writer = rt.block_on(async {
        let args = StoreWriterArgs::new(data.join("switchyard.db"));
        let (writer, _) = Actor::spawn(None, StoreWriterActor, args).await.unwrap();
        writer
    });
    let keys = Arc::new(keys());
    let rec_dir = data.join("recordings");
    let started = std::time::Instant::now();
    let threads: Vec<_> = (0..KILL9_RECORDERS)
        .map(|t| {
            let (writer, keys, rec_dir) = (writer.clone(), Arc::clone(&keys), rec_dir.clone());
            std::thread::spawn(move || {
                let (left, right) = tracks(4000);
                let mut n = 0;
                while started.elapsed() < KILL9_CHILD_MAX_LIFETIME {
                    let id = format!("k{t}-{n}");
                    n += 1;
                    let mut rec = Recorder::create(&rec_dir, &id, &keys).unwrap();
                    let row = RecordingRow::started(
                        id.as_str(),
                        None,
                        Some("t".to_string()),
                        now_unix_ms(),
                        &recording::tmp_path(&rec_dir, &id),
                        keys.current_id(),
                    );
                    store_writer::recording_started(&writer, row).unwrap();
                    println!("started {id} at {}", now_unix_ms());
                    for _ in 0..20 {
                        rec.write_stereo(&left, &right).unwrap();
                        std::thread::sleep(Duration::from_millis(15));
                    }
                    let finished = rec.finish().unwrap();
                    store_writer::recording_finished(&writer, id.clone(), &finished).unwrap();
                    println!("finished {id}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Record a child's `started <id> at <ms>` or `finished <id>` line.
/// The harness's `test ... ` may precede the first line on the same line, hence the search.
fn note(line: &str, started_at: &mut HashMap<String, i64>, finished: &mut Vec<String>) {
    if let Some((_, rest)) = line.split_once("started ") {
        if let Some((id, at)) = rest.split_once(" at ") {
            started_at.insert(id.to_string(), at.trim().parse().unwrap());
        }
    } else if let Some((_, id)) = line.split_once("finished ") {
        finished.push(id.trim().to_string());
    }
}

/// Kills the child if the test fails before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kill -9` while recordings are being written: after recovery no row is left `recording`,
/// every `complete` row's file decrypts and verifies with the size and checksum the row
/// gives, no temporary file is left, and every recording that finished (started well before
/// the kill, so its row was committed) is listed complete.
#[tokio::test]
async fn kill9_during_recording_leaves_no_unverifiable_complete_recording() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "recordings_kill9_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(KILL9_CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut started_at: HashMap<String, i64> = HashMap::new();
    let mut finished: Vec<String> = Vec::new();
    // Let at least a dozen recordings complete, then kill in the middle of the next ones.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while finished.len() < 12 {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("child stopped recording");
        note(&line, &mut started_at, &mut finished);
    }
    std::thread::sleep(Duration::from_millis(170));
    let killed_at = now_unix_ms();
    child.0.kill().unwrap();
    assert!(!child.0.wait().unwrap().success(), "child died of SIGKILL");
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(10)) {
        note(&line, &mut started_at, &mut finished);
    }

    let db = dir.path().join("switchyard.db");
    let rec_dir = dir.path().join("recordings");
    let keys = keys();
    let mut store = Store::open(&db).unwrap();
    let report = recover(&mut store, &rec_dir, &keys).unwrap();
    eprintln!(
        "kill -9: {} started, {} finished; recovery completed {:?}, failed {:?}, removed {} stray",
        started_at.len(),
        finished.len(),
        report.completed,
        report.failed,
        report.stray_tmp_removed
    );
    assert!(
        !report.failed.is_empty() || report.stray_tmp_removed > 0,
        "the kill interrupted no recording: the test proved nothing"
    );

    let rows = store.list_recordings(None, usize::MAX).unwrap();
    let mut complete = 0;
    for row in &rows {
        assert_ne!(row.state, "recording", "{} left open", row.id);
        if row.state != "complete" {
            continue;
        }
        complete += 1;
        let path = std::path::PathBuf::from(row.path.as_deref().unwrap());
        let plaintext = recording::verify(&path, &keys)
            .unwrap_or_else(|e| panic!("{} is complete but does not verify: {e}", row.id));
        assert_eq!(plaintext, 44 + 20 * 4000 * 4, "{}", row.id);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(row.size, Some(bytes.len() as i64), "{}", row.id);
        let sha = {
            use sha2::Digest;
            recording::to_hex(&sha2::Sha256::digest(&bytes))
        };
        assert_eq!(row.sha256.as_deref(), Some(sha.as_str()), "{}", row.id);
    }
    for id in &finished {
        if started_at[id] < killed_at - 1_000 {
            let row = store.get_recording(id).unwrap();
            assert_eq!(
                row.map(|r| r.state).as_deref(),
                Some("complete"),
                "{id} finished before the kill but is not complete"
            );
        }
    }
    assert!(complete >= 12, "only {complete} complete recordings");
    for entry in std::fs::read_dir(&rec_dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(!name.ends_with(".tmp"), "{name} left behind");
    }
}
