//! A real `kill -9` of a process writing CDRs through the store writer actor: every CDR handed
//! to the writer more than one second before the kill must be in the database afterwards.
//!
//! The test re-runs its own binary as the child, selecting [`kill9_child`] and naming the
//! database in `SWITCHYARD_KILL9_CHILD`; without that variable the child test does nothing.
//! `Child::kill()` is SIGKILL on Unix, so the child gets no chance to flush.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use switchyard::actors::store_writer::{write_cdr, StoreWriterActor, StoreWriterArgs};
use switchyard::store::{now_unix_ms, Cdr, HangupBy, Store};

const CHILD_ENV: &str = "SWITCHYARD_KILL9_CHILD";
/// The promise under test: a CDR is durable this long after it is handed over.
const DURABLE_WITHIN_MS: i64 = 1_000;
/// How long the child writes before it is killed.
const WRITE_FOR: Duration = Duration::from_millis(1_800);
/// A safety net: the child stops by itself if the parent never kills it.
const CHILD_MAX_LIFETIME: Duration = Duration::from_secs(60);

fn cdr(seq: u64, end_at: i64) -> Cdr {
    Cdr {
        a_call_id: format!("kill9-{seq}"),
        b_call_id: Some(format!("kill9-b-{seq}")),
        caller: "sip:alice@127.0.0.1".to_string(),
        callee: "1002".to_string(),
        route: Some("1".to_string()),
        target: Some("sip:1002@127.0.0.1:5070".to_string()),
        start_at: end_at - 30_000,
        ringing_at: Some(end_at - 29_000),
        answer_at: Some(end_at - 25_000),
        end_at,
        duration_ms: 30_000,
        billable_ms: 25_000,
        final_status: 200,
        hangup_by: HangupBy::Caller,
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
        tenant: None,
        legs: Vec::new(),
    }
}

/// The child: writes a CDR every 2 ms and reports each hand-over as `written <seq> at <ms>`.
/// A no-op unless [`CHILD_ENV`] is set.
#[test]
fn kill9_child() {
    let Ok(db) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let (writer, _handle) = ractor::Actor::spawn(
            None,
            StoreWriterActor,
            StoreWriterArgs::new(PathBuf::from(db)),
        )
        .await
        .unwrap();
        println!("ready");
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        let mut seq = 0u64;
        while started.elapsed() < CHILD_MAX_LIFETIME {
            tick.tick().await;
            let now = now_unix_ms();
            write_cdr(&writer, cdr(seq, now)).unwrap();
            // stdout is line-buffered, so each line reaches the pipe at once.
            println!("written {seq} at {now}");
            seq += 1;
        }
    });
}

/// Kills the child if the test fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(db: &Path) -> (KillOnDrop, mpsc::Receiver<String>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kill9_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (KillOnDrop(child), rx)
}

/// Parse `written <seq> at <ms>`.
fn parse_written(line: &str) -> Option<(u64, i64)> {
    let rest = line.strip_prefix("written ")?;
    let (seq, at) = rest.split_once(" at ")?;
    Some((seq.parse().ok()?, at.parse().ok()?))
}

#[test]
fn cdrs_handed_over_a_second_before_kill9_survive() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kill9.db");
    let (mut child, lines) = spawn_child(&db);

    // Wait (bounded) until the child is writing, then let it write for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("child never started writing");
        if parse_written(&line).is_some() {
            break;
        }
    }
    std::thread::sleep(WRITE_FOR);
    let killed_at = now_unix_ms();
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    assert!(!status.success(), "child should have died of SIGKILL");

    // Lines still in the pipe were written before the kill; read them all (EOF ends the loop).
    let mut handed_over = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(10)) {
        if let Some(w) = parse_written(&line) {
            handed_over.push(w);
        }
    }
    let must_survive: BTreeSet<String> = handed_over
        .iter()
        .filter(|(_, at)| *at < killed_at - DURABLE_WITHIN_MS)
        .map(|(seq, _)| format!("kill9-{seq}"))
        .collect();
    // At a CDR every 2 ms for ~0.8 s, hundreds should qualify; too few means the test proved
    // nothing (e.g. the child was starved), so fail rather than pass vacuously.
    assert!(
        must_survive.len() >= 100,
        "only {} CDRs were handed over more than 1 s before the kill",
        must_survive.len()
    );

    let store = Store::open(&db).unwrap();
    let stored: BTreeSet<String> = store
        .list_cdrs(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|c| c.a_call_id)
        .collect();
    let missing: Vec<&String> = must_survive.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{} of {} CDRs handed over > 1 s before kill -9 are missing, e.g. {:?}",
        missing.len(),
        must_survive.len(),
        &missing[..missing.len().min(5)]
    );
    // Sanity: a stored row is intact, not just present.
    let first = must_survive.iter().next().unwrap();
    let row = store.get_cdr_by_call_id(first).unwrap().unwrap();
    assert_eq!(row.final_status, 200);
    assert_eq!(row.duration_ms, 30_000);
    eprintln!(
        "kill -9: {} handed over, {} required, {} stored",
        handed_over.len(),
        must_survive.len(),
        stored.len()
    );
}
