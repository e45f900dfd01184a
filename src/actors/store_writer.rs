//! The store writer: the one writer of CDRs and recording index changes, committing them in
//! batches.
//!
//! CDRs go to [`StoreWriterArgs::database`]: the node's SQLite file, or in a cluster the shared
//! PostgreSQL database. The recording index always stays in the node's SQLite file
//! ([`StoreWriterArgs::path`]), because the recordings are files on this node.
//!
//! Database calls block (SQLite, and the sync PostgreSQL client, which must not run on a
//! tokio worker), so the actor never touches the database itself: it hands records to a
//! dedicated OS thread that owns the [`Store`] connections. That thread batches everything
//! handed over since its last commit and commits
//! - once `flush_interval` has passed since the oldest uncommitted record (default 100 ms, so a
//!   CDR is durable well within the one second the switch promises),
//! - at once when `max_batch` records are waiting, or on [`flush`], or when the actor stops,
//! - and, while a CDR handed over with [`write_cdr_acked`] waits for its commit, within
//!   `ack_linger` (default 3 ms) of the first such CDR: a group commit of the hangups of those
//!   milliseconds, one fsync for several calls instead of one each. Its sender learns when the CDR is durable, so a call holds
//!   back the last message of its hangup until then and no completed call's record can be
//!   lost with the node.
//!
//! Stop it with [`shutdown`] (a drain): ractor's plain `stop` drops queued messages.
//!
//! A failed commit keeps its batch, is logged and counted, and is retried with backoff; records
//! are never dropped silently. If the actor dies without `post_stop` (killed), the thread sees
//! its channel close and still commits what it holds before exiting.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, MessagingErr, RpcReplyPort};
use tokio::sync::oneshot;

use crate::media::recording::Finished;
use crate::store::recordings::{RecordingComplete, RecordingOp, RecordingRow};
use crate::store::{now_unix_ms, Cdr, Database, Store, StoreError, Synchronous};

/// Rows committed to the database (counter).
pub const CDR_WRITES_TOTAL: &str = "switchyard_cdr_writes_total";
/// Failed batch commits; each is retried (counter).
pub const CDR_WRITE_ERRORS_TOTAL: &str = "switchyard_cdr_write_errors_total";
/// Latency of one batch commit, insert through fsync (histogram, seconds).
pub const CDR_WRITE_SECONDS: &str = "switchyard_cdr_write_seconds";
/// Rows per committed batch (histogram).
pub const CDR_BATCH_ROWS: &str = "switchyard_cdr_batch_rows";
/// CDRs handed to the writer and not yet committed (gauge).
pub const CDR_PENDING: &str = "switchyard_cdr_pending";

/// Default for [`StoreWriterArgs::flush_interval`].
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Default for [`StoreWriterArgs::ack_linger`].
pub const DEFAULT_ACK_LINGER: Duration = Duration::from_millis(3);
/// Default for [`StoreWriterArgs::max_batch`].
pub const DEFAULT_MAX_BATCH: usize = 512;
/// How long [`flush`] waits for the commit before giving up.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`shutdown`] waits for the queue to drain and the last commit.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// First wait before retrying a failed commit; doubles up to [`MAX_RETRY_BACKOFF`].
const FIRST_RETRY_BACKOFF: Duration = Duration::from_millis(100);
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5);
/// Commit attempts when stopping, before the remaining records are reported lost.
const SHUTDOWN_ATTEMPTS: u32 = 5;

/// Describe this module's metrics with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(CDR_WRITES_TOTAL, "CDR rows committed to the database");
    metrics::describe_counter!(
        CDR_WRITE_ERRORS_TOTAL,
        "CDR batch commits that failed (the batch is kept and retried)"
    );
    metrics::describe_histogram!(
        CDR_WRITE_SECONDS,
        metrics::Unit::Seconds,
        "Latency of one CDR batch commit"
    );
    metrics::describe_histogram!(CDR_BATCH_ROWS, "CDR rows per committed batch");
    metrics::describe_gauge!(
        CDR_PENDING,
        "CDRs handed to the writer and not yet committed"
    );
}

/// Errors of the writer's public functions.
#[derive(Debug, thiserror::Error)]
pub enum StoreWriterError {
    /// The writer actor is gone or did not answer in time.
    #[error("store writer unreachable: {0}")]
    Unreachable(String),
    /// The commit failed; the records are kept and retried.
    #[error("CDR commit failed: {0}")]
    Commit(String),
}

/// Hand a finished call's CDR to the writer. It is committed within `flush_interval` (plus the
/// commit time). Fails only if the writer actor is gone; the error carries the message back so
/// the caller can log the CDR rather than lose it silently.
pub fn write_cdr(
    writer: &ActorRef<StoreWriterMsg>,
    cdr: Cdr,
) -> Result<(), MessagingErr<StoreWriterMsg>> {
    writer.cast(StoreWriterMsg::WriteCdr(Box::new(cdr), None))
}

/// Hand a finished call's CDR to the writer and learn when it is durable: `stored` is called
/// with `true` once the transaction holding it committed, `false` if that commit failed (the
/// CDR is kept and retried; the sender should not wait for the retries). While such a CDR is
/// pending the writer commits after at most [`StoreWriterArgs::ack_linger`] instead of
/// `flush_interval`.
pub fn write_cdr_acked(
    writer: &ActorRef<StoreWriterMsg>,
    cdr: Cdr,
    stored: impl Into<CdrAck>,
) -> Result<(), MessagingErr<StoreWriterMsg>> {
    writer.cast(StoreWriterMsg::WriteCdr(Box::new(cdr), Some(stored.into())))
}

/// Who learns that a CDR is durable: called once, on the writer's thread, right after the
/// commit (or its failure). A call actor passes a cast to itself, so no task or channel sits
/// between the commit and the hangup's last message.
pub struct CdrAck(Box<dyn FnOnce(bool) + Send>);

impl CdrAck {
    pub fn new(f: impl FnOnce(bool) + Send + 'static) -> CdrAck {
        CdrAck(Box::new(f))
    }

    fn send(self, stored: bool) {
        (self.0)(stored)
    }
}

impl From<oneshot::Sender<bool>> for CdrAck {
    fn from(tx: oneshot::Sender<bool>) -> CdrAck {
        CdrAck::new(move |stored| {
            let _ = tx.send(stored);
        })
    }
}

impl std::fmt::Debug for CdrAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CdrAck")
    }
}

/// Record that a recording started (its row, state `recording`). Committed in the next batch;
/// a crash before that leaves a `.syrec.tmp` without a row, which recovery removes.
pub fn recording_started(
    writer: &ActorRef<StoreWriterMsg>,
    row: RecordingRow,
) -> Result<(), MessagingErr<StoreWriterMsg>> {
    writer.cast(StoreWriterMsg::RecordingStarted(Box::new(row)))
}

/// Record that recording `id` completed; call only after [`crate::media::recording::Recorder::finish`]
/// returned (the file is fsynced and renamed), so the row never says `complete` before the file
/// is. A crash before the commit leaves the row in `recording`, which recovery completes from
/// the file.
pub fn recording_finished(
    writer: &ActorRef<StoreWriterMsg>,
    id: String,
    finished: &Finished,
) -> Result<(), MessagingErr<StoreWriterMsg>> {
    writer.cast(StoreWriterMsg::RecordingFinished {
        id,
        complete: Box::new(RecordingComplete::from_finished(finished, now_unix_ms())),
    })
}

/// Record that recording `id` failed (`reason` is logged, not stored).
pub fn recording_failed(
    writer: &ActorRef<StoreWriterMsg>,
    id: String,
    reason: String,
) -> Result<(), MessagingErr<StoreWriterMsg>> {
    writer.cast(StoreWriterMsg::RecordingFailed { id, reason })
}

/// Commit everything handed to the writer so far (CDRs and recording index changes); returns
/// how many rows this commit wrote.
pub async fn flush(writer: &ActorRef<StoreWriterMsg>) -> Result<usize, StoreWriterError> {
    let reply = writer
        .call(StoreWriterMsg::Flush, Some(FLUSH_TIMEOUT))
        .await
        .map_err(|e| StoreWriterError::Unreachable(e.to_string()))?;
    match reply {
        ractor::rpc::CallResult::Success(result) => result.map_err(StoreWriterError::Commit),
        ractor::rpc::CallResult::Timeout => {
            Err(StoreWriterError::Unreachable("flush timed out".to_string()))
        }
        ractor::rpc::CallResult::SenderError => Err(StoreWriterError::Unreachable(
            "writer dropped the flush".to_string(),
        )),
    }
}

/// Stop the writer after it has taken every CDR already sent to it, and wait until those are
/// committed. Use this, not `stop`: ractor's `stop` discards messages still in the mailbox,
/// which here would be CDRs.
pub async fn shutdown(writer: &ActorRef<StoreWriterMsg>) -> Result<(), StoreWriterError> {
    writer
        .drain_and_wait(Some(SHUTDOWN_TIMEOUT))
        .await
        .map_err(|e| StoreWriterError::Unreachable(e.to_string()))
}

/// The writer's counters since it started.
pub async fn stats(
    writer: &ActorRef<StoreWriterMsg>,
) -> Result<StoreWriterStats, StoreWriterError> {
    match writer
        .call(StoreWriterMsg::GetStats, Some(FLUSH_TIMEOUT))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(s)) => Ok(s),
        Ok(_) => Err(StoreWriterError::Unreachable("no stats reply".to_string())),
        Err(e) => Err(StoreWriterError::Unreachable(e.to_string())),
    }
}

/// The store writer actor (no configuration of its own: see [`StoreWriterArgs`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct StoreWriterActor;

/// How the writer opens the database and batches.
#[derive(Debug, Clone)]
pub struct StoreWriterArgs {
    /// The node's SQLite file (the recording index, and the CDRs unless `database` says
    /// otherwise); its directory is created if missing.
    pub path: PathBuf,
    /// Where CDRs go: `Database::Sqlite(path)` on a single node (one connection serves both),
    /// `Database::Postgres(url)` in a cluster.
    pub database: Database,
    /// Longest time a record waits before its batch is committed.
    pub flush_interval: Duration,
    /// Commit at once when this many records wait.
    pub max_batch: usize,
    /// How long a commit someone waits for ([`write_cdr_acked`]) is held for more CDRs to
    /// join it: one fsync for the hangups of a few milliseconds instead of one each.
    pub ack_linger: Duration,
    /// What a commit waits for (SQLite: FULL survives power loss, both survive `kill -9` in
    /// WAL mode; PostgreSQL: FULL keeps the server's `synchronous_commit`).
    pub synchronous: Synchronous,
}

impl StoreWriterArgs {
    /// The defaults (100 ms, 512 rows, `synchronous=FULL`) for the database at `path`
    /// (CDRs and recording index both there).
    pub fn new(path: impl Into<PathBuf>) -> StoreWriterArgs {
        let path = path.into();
        StoreWriterArgs {
            database: Database::Sqlite(path.clone()),
            path,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            max_batch: DEFAULT_MAX_BATCH,
            ack_linger: DEFAULT_ACK_LINGER,
            synchronous: Synchronous::Full,
        }
    }

    /// The same, with CDRs in `database` (a cluster's PostgreSQL) and the recording index in
    /// the SQLite file at `path`.
    pub fn with_database(path: impl Into<PathBuf>, database: Database) -> StoreWriterArgs {
        StoreWriterArgs {
            database,
            ..StoreWriterArgs::new(path)
        }
    }

    /// Whether CDRs go to a database of their own (not the recording index's file).
    fn separate_cdr_database(&self) -> bool {
        self.database != Database::Sqlite(self.path.clone())
    }
}

/// Messages of the store writer.
#[derive(Debug)]
pub enum StoreWriterMsg {
    /// Store a finished call's record; the sender, if any, learns when it is committed.
    WriteCdr(Box<Cdr>, Option<CdrAck>),
    /// A recording started: insert its index row (state `recording`).
    RecordingStarted(Box<RecordingRow>),
    /// A recording's file is complete (fsynced and renamed): mark its row `complete`.
    RecordingFinished {
        /// The recording id.
        id: String,
        /// Size, checksum, duration, key id and path of the file.
        complete: Box<RecordingComplete>,
    },
    /// A recording failed: mark its row `failed` (`reason` goes to the log).
    RecordingFailed {
        /// The recording id.
        id: String,
        /// Why, for the log.
        reason: String,
    },
    /// Commit everything handed over so far; replies with the rows this commit wrote.
    Flush(RpcReplyPort<Result<usize, String>>),
    /// The writer's counters.
    GetStats(RpcReplyPort<StoreWriterStats>),
}

// Local only: ractor's `cluster` feature (on for ractor_cluster) asks each message type to
// say whether it can cross nodes; this one never does (the cluster module carries what does).
impl ractor::Message for StoreWriterMsg {}

/// Counters of one writer since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreWriterStats {
    /// CDRs handed to the writer.
    pub received: u64,
    /// CDRs committed.
    pub committed: u64,
    /// Failed commit attempts.
    pub write_errors: u64,
}

/// The actor's state: the channel to the writer thread.
pub struct StoreWriterState {
    tx: mpsc::Sender<Command>,
    counters: Arc<Counters>,
}

impl Actor for StoreWriterActor {
    type Msg = StoreWriterMsg;
    type State = StoreWriterState;
    type Arguments = StoreWriterArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: StoreWriterArgs,
    ) -> Result<StoreWriterState, ActorProcessingErr> {
        let (tx, rx) = mpsc::channel();
        let (opened_tx, opened_rx) = oneshot::channel();
        let counters = Arc::new(Counters::default());
        let args_db = args.database.clone();
        let thread_counters = Arc::clone(&counters);
        // Opening (migrations included) blocks too, so it happens on the writer thread.
        std::thread::Builder::new()
            .name("store-writer".to_string())
            .spawn(move || {
                let opened = Store::open_with(&args.path, args.synchronous).and_then(|store| {
                    let cdr_store = if args.separate_cdr_database() {
                        Some(Store::connect(&args.database, args.synchronous)?)
                    } else {
                        None
                    };
                    Ok((store, cdr_store))
                });
                let (store, cdr_store) = match opened {
                    Ok(stores) => {
                        let _ = opened_tx.send(Ok(()));
                        stores
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                args.database.record_backend("cdrs");
                Database::Sqlite(args.path.clone()).record_backend("recordings");
                Writer::new(store, cdr_store, &args, thread_counters).run(rx);
            })?;
        match opened_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Box::new(e)),
            Err(_) => return Err("store writer thread died while opening".into()),
        }
        tracing::info!(cdrs = %args_db, "store writer started");
        Ok(StoreWriterState { tx, counters })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut StoreWriterState,
    ) -> Result<(), ActorProcessingErr> {
        let (done_tx, done_rx) = oneshot::channel();
        if state.tx.send(Command::Shutdown(done_tx)).is_err() {
            return Err("store writer thread is gone".into());
        }
        match done_rx.await {
            Ok(Ok(n)) => {
                tracing::info!(flushed = n, "store writer stopped");
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err("store writer thread died while flushing".into()),
        }
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: StoreWriterMsg,
        state: &mut StoreWriterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StoreWriterMsg::WriteCdr(cdr, stored) => {
                state.counters.received.fetch_add(1, Ordering::Relaxed);
                state.counters.publish_pending();
                // The thread only exits after the channel closes or on shutdown, so a send
                // error means it crashed: fail the actor and let the supervisor restart it.
                state
                    .tx
                    .send(Command::Write(cdr, stored))
                    .map_err(|_| "store writer thread is gone")?;
            }
            StoreWriterMsg::RecordingStarted(row) => {
                state
                    .tx
                    .send(Command::Recording(RecordingOp::Started(row)))
                    .map_err(|_| "store writer thread is gone")?;
            }
            StoreWriterMsg::RecordingFinished { id, complete } => {
                state
                    .tx
                    .send(Command::Recording(RecordingOp::Finished { id, complete }))
                    .map_err(|_| "store writer thread is gone")?;
            }
            StoreWriterMsg::RecordingFailed { id, reason } => {
                let op = RecordingOp::Failed {
                    id,
                    ended_ms: now_unix_ms(),
                    reason,
                };
                state
                    .tx
                    .send(Command::Recording(op))
                    .map_err(|_| "store writer thread is gone")?;
            }
            StoreWriterMsg::Flush(reply) => {
                state
                    .tx
                    .send(Command::Flush(reply))
                    .map_err(|_| "store writer thread is gone")?;
            }
            StoreWriterMsg::GetStats(reply) => {
                let _ = reply.send(state.counters.snapshot());
            }
        }
        Ok(())
    }
}

// ---- helpers: the writer thread ----

/// Work for the writer thread.
enum Command {
    Write(Box<Cdr>, Option<CdrAck>),
    Recording(RecordingOp),
    Flush(RpcReplyPort<Result<usize, String>>),
    Shutdown(oneshot::Sender<Result<usize, String>>),
}

/// Counters shared by the actor (which counts records in) and the thread (which commits).
#[derive(Default)]
struct Counters {
    received: AtomicU64,
    committed: AtomicU64,
    write_errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> StoreWriterStats {
        StoreWriterStats {
            received: self.received.load(Ordering::Relaxed),
            committed: self.committed.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
        }
    }

    fn publish_pending(&self) {
        let s = self.snapshot();
        metrics::gauge!(CDR_PENDING).set(s.received.saturating_sub(s.committed) as f64);
    }
}

/// The writer thread's state: the connections and the records not yet committed.
struct Writer {
    /// The node's SQLite file: the recording index, and the CDRs when `cdr_store` is `None`.
    store: Store,
    /// The CDRs' own database (a cluster's PostgreSQL), if not `store`.
    cdr_store: Option<Store>,
    flush_interval: Duration,
    max_batch: usize,
    counters: Arc<Counters>,
    pending: Vec<Cdr>,
    /// Senders waiting for their pending CDR's commit ([`write_cdr_acked`]).
    acks: Vec<CdrAck>,
    /// When the first of them arrived: the commit is due `ack_linger` later (a group commit
    /// for the CDRs that come meanwhile).
    first_ack: Option<Instant>,
    ack_linger: Duration,
    /// Recording index changes not yet committed, in arrival order.
    pending_recordings: Vec<RecordingOp>,
    /// When the oldest pending record arrived: its commit is due `flush_interval` later.
    oldest_pending: Option<Instant>,
    /// After a failed commit: when to try again, and the wait after the next failure.
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Writer {
    fn new(
        store: Store,
        cdr_store: Option<Store>,
        args: &StoreWriterArgs,
        counters: Arc<Counters>,
    ) -> Writer {
        Writer {
            store,
            cdr_store,
            flush_interval: args.flush_interval,
            max_batch: args.max_batch.max(1),
            counters,
            pending: Vec::new(),
            acks: Vec::new(),
            first_ack: None,
            ack_linger: args.ack_linger,
            pending_recordings: Vec::new(),
            oldest_pending: None,
            retry_at: None,
            backoff: FIRST_RETRY_BACKOFF,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Command>) {
        loop {
            let cmd = match self.commit_due() {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(due) => match due.checked_duration_since(Instant::now()) {
                    Some(wait) if !wait.is_zero() => rx.recv_timeout(wait),
                    _ => Err(RecvTimeoutError::Timeout),
                },
            };
            match cmd {
                Ok(Command::Write(cdr, stored)) => {
                    self.note_arrival();
                    self.pending.push(*cdr);
                    if let Some(ack) = stored {
                        // Someone waits: commit within the linger, with what comes meanwhile.
                        self.first_ack.get_or_insert_with(Instant::now);
                        self.acks.push(ack);
                    }
                    // While failing, wait for the retry time instead of hammering the disk.
                    if self.pending.len() >= self.max_batch && self.retry_at.is_none() {
                        let _ = self.commit_pending();
                    }
                }
                Ok(Command::Recording(op)) => {
                    self.note_arrival();
                    self.pending_recordings.push(op);
                }
                Ok(Command::Flush(reply)) => {
                    let _ = reply.send(self.commit_pending());
                }
                Ok(Command::Shutdown(done)) => {
                    let _ = done.send(self.commit_at_shutdown());
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.commit_pending();
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // The actor went away without post_stop (killed): still keep the records.
                    let _ = self.commit_at_shutdown();
                    return;
                }
            }
        }
    }

    /// Start the flush clock when the first record of a batch arrives.
    fn note_arrival(&mut self) {
        if self.pending.is_empty() && self.pending_recordings.is_empty() {
            self.oldest_pending = Some(Instant::now());
        }
    }

    /// When the pending records must be committed; `None` when nothing is pending.
    fn commit_due(&self) -> Option<Instant> {
        if self.pending.is_empty() && self.pending_recordings.is_empty() {
            return None;
        }
        if let Some(at) = self.retry_at {
            return Some(at);
        }
        let flush = self.oldest_pending.map(|t| t + self.flush_interval);
        match (flush, self.first_ack.map(|t| t + self.ack_linger)) {
            (Some(f), Some(a)) => Some(f.min(a)),
            (f, a) => f.or(a),
        }
    }

    /// Commit every pending record, `max_batch` rows per transaction. On failure the records
    /// not yet committed stay pending and a retry is scheduled.
    fn commit_pending(&mut self) -> Result<usize, String> {
        let mut written = 0;
        while !self.pending.is_empty() {
            let n = self.pending.len().min(self.max_batch);
            let started = Instant::now();
            let cdrs = self.cdr_store.as_mut().unwrap_or(&mut self.store);
            match cdrs.insert_cdrs(&self.pending[..n]) {
                Ok(()) => {
                    metrics::histogram!(CDR_WRITE_SECONDS).record(started.elapsed().as_secs_f64());
                    metrics::histogram!(CDR_BATCH_ROWS).record(n as f64);
                    metrics::counter!(CDR_WRITES_TOTAL).increment(n as u64);
                    self.counters
                        .committed
                        .fetch_add(n as u64, Ordering::Relaxed);
                    self.counters.publish_pending();
                    self.pending.drain(..n);
                    written += n;
                }
                Err(e) => return Err(self.commit_failed(&e)),
            }
        }
        // Every CDR handed over so far is committed.
        self.first_ack = None;
        for stored in self.acks.drain(..) {
            stored.send(true);
        }
        if !self.pending_recordings.is_empty() {
            // Few and small (a handful per call): one transaction for all of them.
            match self.store.apply_recording_ops(&self.pending_recordings) {
                Ok(()) => {
                    written += self.pending_recordings.len();
                    self.pending_recordings.clear();
                }
                Err(e) => return Err(self.commit_failed(&e)),
            }
        }
        self.oldest_pending = None;
        self.retry_at = None;
        self.backoff = FIRST_RETRY_BACKOFF;
        Ok(written)
    }

    fn commit_failed(&mut self, e: &StoreError) -> String {
        // The records stay pending and are retried, but nobody waits for the retries.
        self.first_ack = None;
        for stored in self.acks.drain(..) {
            stored.send(false);
        }
        metrics::counter!(CDR_WRITE_ERRORS_TOTAL).increment(1);
        self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            error = %e,
            pending = self.pending.len(),
            pending_recordings = self.pending_recordings.len(),
            retry_in_ms = self.backoff.as_millis() as u64,
            "CDR commit failed; keeping the batch and retrying"
        );
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_RETRY_BACKOFF);
        e.to_string()
    }

    /// Last commit before the thread exits: a few attempts, then the loss is reported loudly.
    fn commit_at_shutdown(&mut self) -> Result<usize, String> {
        let before = self.counters.committed.load(Ordering::Relaxed);
        let mut last_err = String::new();
        for attempt in 0..SHUTDOWN_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(FIRST_RETRY_BACKOFF * (1 << attempt));
            }
            match self.commit_pending() {
                Ok(_) => {
                    let after = self.counters.committed.load(Ordering::Relaxed);
                    return Ok((after - before) as usize);
                }
                Err(e) => last_err = e,
            }
        }
        tracing::error!(
            lost = self.pending.len(),
            lost_recording_changes = self.pending_recordings.len(),
            error = %last_err,
            "store writer stopping with uncommitted CDRs"
        );
        Err(format!(
            "{} CDRs and {} recording index changes not committed at shutdown: {last_err}",
            self.pending.len(),
            self.pending_recordings.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::HangupBy;

    fn cdr(n: usize) -> Cdr {
        Cdr {
            a_call_id: format!("writer-{n}"),
            b_call_id: None,
            caller: "sip:alice@127.0.0.1".to_string(),
            callee: "1002".to_string(),
            route: None,
            target: None,
            start_at: 1_700_000_000_000,
            ringing_at: None,
            answer_at: None,
            end_at: 1_700_000_001_000,
            duration_ms: 1_000,
            billable_ms: 0,
            final_status: 487,
            hangup_by: HangupBy::Caller,
            disconnect_reason: "CANCEL".to_string(),
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

    async fn spawn(args: StoreWriterArgs) -> ActorRef<StoreWriterMsg> {
        let (actor, _handle) = Actor::spawn(None, StoreWriterActor, args).await.unwrap();
        actor
    }

    #[tokio::test]
    async fn thousand_cdrs_are_all_there_after_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.db");
        let writer = spawn(StoreWriterArgs::new(&path)).await;
        for n in 0..1_000 {
            write_cdr(&writer, cdr(n)).unwrap();
        }
        flush(&writer).await.unwrap();
        let stats = stats(&writer).await.unwrap();
        assert_eq!(stats.received, 1_000);
        assert_eq!(stats.committed, 1_000);
        assert_eq!(stats.write_errors, 0);

        let store = Store::open(&path).unwrap();
        assert_eq!(store.count_cdrs().unwrap(), 1_000);
        for n in [0, 511, 512, 999] {
            assert_eq!(
                store.get_cdr_by_call_id(&format!("writer-{n}")).unwrap(),
                Some(cdr(n))
            );
        }
        shutdown(&writer).await.unwrap();
    }

    #[tokio::test]
    async fn commits_within_the_flush_interval_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.db");
        let writer = spawn(StoreWriterArgs::new(&path)).await;
        let reader = Store::open(&path).unwrap();
        let handed_over = Instant::now();
        write_cdr(&writer, cdr(1)).unwrap();
        // Bounded poll: the promise is "durable within a second".
        let deadline = handed_over + Duration::from_secs(1);
        while reader.count_cdrs().unwrap() == 0 {
            assert!(Instant::now() < deadline, "CDR not committed within 1 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(stats(&writer).await.unwrap().committed, 1);
        shutdown(&writer).await.unwrap();
    }

    #[tokio::test]
    async fn stopping_commits_what_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.db");
        let mut args = StoreWriterArgs::new(&path);
        // Far longer than the test: only the stop can commit these.
        args.flush_interval = Duration::from_secs(3600);
        let writer = spawn(args).await;
        for n in 0..10 {
            write_cdr(&writer, cdr(n)).unwrap();
        }
        shutdown(&writer).await.unwrap();
        assert_eq!(Store::open(&path).unwrap().count_cdrs().unwrap(), 10);
    }

    #[tokio::test]
    async fn an_acked_cdr_is_committed_before_its_sender_hears_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.db");
        let mut args = StoreWriterArgs::new(&path);
        // Far longer than the test: only the waiting sender can make these commit.
        args.flush_interval = Duration::from_secs(3600);
        let writer = spawn(args).await;
        let reader = Store::open(&path).unwrap();
        // Unacked records before it ride along in the same commit.
        for n in 0..5 {
            write_cdr(&writer, cdr(n)).unwrap();
        }
        let mut waits = Vec::new();
        for n in 5..10 {
            let (tx, rx) = oneshot::channel();
            write_cdr_acked(&writer, cdr(n), tx).unwrap();
            waits.push((n, rx));
        }
        for (n, rx) in waits {
            let stored = tokio::time::timeout(Duration::from_secs(5), rx)
                .await
                .expect("no answer within 5 s")
                .expect("sender dropped");
            assert!(stored, "CDR {n} reported not stored");
            // Durable when told so: another connection sees it.
            assert_eq!(
                reader.get_cdr_by_call_id(&format!("writer-{n}")).unwrap(),
                Some(cdr(n))
            );
        }
        assert_eq!(reader.count_cdrs().unwrap(), 10);
        // Plain writes alone still wait for the interval.
        write_cdr(&writer, cdr(10)).unwrap();
        assert_eq!(stats(&writer).await.unwrap().received, 11);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(reader.count_cdrs().unwrap(), 10);
        shutdown(&writer).await.unwrap();
    }

    #[tokio::test]
    async fn killed_actor_still_commits_what_it_handed_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.db");
        let mut args = StoreWriterArgs::new(&path);
        args.flush_interval = Duration::from_secs(3600);
        let writer = spawn(args).await;
        for n in 0..10 {
            write_cdr(&writer, cdr(n)).unwrap();
        }
        // The stats reply comes after the ten writes, so all ten reached the thread.
        assert_eq!(stats(&writer).await.unwrap().received, 10);
        // No post_stop: the thread notices its channel closing and commits on its own.
        writer.kill();
        let reader = Store::open(&path).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while reader.count_cdrs().unwrap() < 10 {
            assert!(Instant::now() < deadline, "killed writer lost its batch");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn failed_commit_is_retried_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.db");
        let mut args = StoreWriterArgs::new(&path);
        args.flush_interval = Duration::from_millis(10);
        let writer = spawn(args).await;
        // Another connection makes every insert fail until it drops its trigger; the writer's
        // cached statement is re-prepared by SQLite when the schema changes.
        let admin = rusqlite::Connection::open(&path).unwrap();
        admin
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON cdrs BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        write_cdr(&writer, cdr(7)).unwrap();
        let err = flush(&writer).await.unwrap_err();
        assert!(matches!(err, StoreWriterError::Commit(_)), "{err}");
        assert!(stats(&writer).await.unwrap().write_errors >= 1);
        admin.execute_batch("DROP TRIGGER refuse").unwrap();
        // The kept batch goes in on the scheduled retry, without another flush.
        let reader = Store::open(&path).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while reader.get_cdr_by_call_id("writer-7").unwrap().is_none() {
            assert!(Instant::now() < deadline, "failed batch was never retried");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(reader.count_cdrs().unwrap(), 1);
        shutdown(&writer).await.unwrap();
    }

    #[tokio::test]
    async fn recording_index_changes_are_committed_by_a_flush() {
        use crate::store::recordings::{RecordingIndex, STATE_COMPLETE, STATE_FAILED};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.db");
        let mut args = StoreWriterArgs::new(&path);
        // Only the flush can commit within the test.
        args.flush_interval = Duration::from_secs(3600);
        let writer = spawn(args).await;
        for id in ["r1", "r2"] {
            let row = RecordingRow::started(
                id,
                Some(format!("call-{id}")),
                Some("t".to_string()),
                1,
                &dir.path().join(format!("{id}.syrec.tmp")),
                "k1",
            );
            recording_started(&writer, row).unwrap();
        }
        let finished = Finished {
            path: dir.path().join("r1.syrec"),
            size: 1234,
            sha256: "ab".repeat(32),
            duration_ms: 5000,
            key_id: "k1".to_string(),
        };
        recording_finished(&writer, "r1".to_string(), &finished).unwrap();
        recording_failed(&writer, "r2".to_string(), "disk full".to_string()).unwrap();
        write_cdr(&writer, cdr(1)).unwrap();
        assert_eq!(flush(&writer).await.unwrap(), 5, "1 CDR + 4 index changes");

        let index = RecordingIndex::open(&path).unwrap();
        let r1 = index.get("r1").unwrap().unwrap();
        assert_eq!(r1.state, STATE_COMPLETE);
        assert_eq!(r1.size, Some(1234));
        assert_eq!(r1.duration_ms, Some(5000));
        assert_eq!(r1.path.as_deref(), finished.path.to_str());
        assert_eq!(index.get("r2").unwrap().unwrap().state, STATE_FAILED);
        // CDR counters are not disturbed by index changes.
        assert_eq!(stats(&writer).await.unwrap().committed, 1);
        shutdown(&writer).await.unwrap();
    }

    #[tokio::test]
    async fn unopenable_database_fails_the_spawn() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be.
        let args = StoreWriterArgs::new(dir.path());
        assert!(Actor::spawn(None, StoreWriterActor, args).await.is_err());
    }
}
