//! The API's connections to the store (the CDR database: SQLite alone, PostgreSQL in a
//! cluster): a few kept open and reused, each used by one blocking task at a time, never the
//! writers'. Two kinds of work wait for separate permits, so that one cannot starve the
//! other: at most [`MAX_HEAVY`] listings, exports and reports ([`Db::run_heavy`]), and at most
//! [`MAX_LIGHT`] short ones — audit records, access key lookups and changes ([`Db::run`]).
//! The key lookups of signed requests ([`Db::run_lookup`]) have [`MAX_LOOKUPS`] permits of
//! their own. A flood of report requests (or of requests naming made-up keys) queues behind
//! its permits instead of opening a connection each, and never delays an audited change;
//! waiting longer than [`QUEUE_WAIT`] is a 503.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Problem;
use crate::store::{Database, Store, StoreError, Synchronous};

/// Listings, exports and reports running at once.
pub const MAX_HEAVY: usize = 4;
/// Short queries (audit, access key changes) running at once.
pub const MAX_LIGHT: usize = 4;
/// Access key lookups of signed requests running at once (anyone can send a signed request
/// naming a key id, so they have permits of their own).
pub const MAX_LOOKUPS: usize = 2;
/// How long a request waits for a free connection before it is answered 503.
const QUEUE_WAIT: Duration = Duration::from_secs(5);

/// The store as the API reads (and audits into) it.
#[derive(Debug)]
pub struct Db {
    database: Database,
    idle: Mutex<Vec<Store>>,
    heavy: Arc<Semaphore>,
    light: Arc<Semaphore>,
    lookups: Arc<Semaphore>,
}

/// A connection taken from the pool; given back when dropped (unless it failed).
pub struct Conn {
    store: Option<Store>,
    db: Arc<Db>,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    pub fn store(&mut self) -> &mut Store {
        self.store.as_mut().expect("present until dropped")
    }

    /// The connection failed: close it rather than give it back.
    pub fn discard(&mut self) {
        self.store = None;
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(s) = self.store.take() {
            if let Ok(mut idle) = self.db.idle.lock() {
                idle.push(s);
            }
        }
    }
}

impl Db {
    pub fn new(database: Database) -> Arc<Db> {
        Arc::new(Db {
            database,
            idle: Mutex::new(Vec::new()),
            heavy: Arc::new(Semaphore::new(MAX_HEAVY)),
            light: Arc::new(Semaphore::new(MAX_LIGHT)),
            lookups: Arc::new(Semaphore::new(MAX_LOOKUPS)),
        })
    }

    /// A connection for heavy work (an export holds it while it streams), waiting for a
    /// permit (503 after [`QUEUE_WAIT`]).
    pub async fn acquire_heavy(self: &Arc<Self>) -> Result<Conn, Problem> {
        self.acquire(&self.heavy).await
    }

    async fn acquire(self: &Arc<Self>, permits: &Arc<Semaphore>) -> Result<Conn, Problem> {
        let permit = tokio::time::timeout(QUEUE_WAIT, permits.clone().acquire_owned())
            .await
            .map_err(|_| Problem::unavailable("the store is busy: try again"))?
            .map_err(|_| Problem::unavailable("the store is closed"))?;
        let idle = self.idle.lock().ok().and_then(|mut i| i.pop());
        let store = match idle {
            Some(s) => s,
            None => {
                let database = self.database.clone();
                tokio::task::spawn_blocking(move || Store::connect(&database, Synchronous::Full))
                    .await
                    .map_err(|e| internal(format!("store task: {e}")))?
                    .map_err(|e| store_failed(&e))?
            }
        };
        Ok(Conn {
            store: Some(store),
            db: Arc::clone(self),
            _permit: permit,
        })
    }

    /// Runs short `work` (audit, access keys) on a pooled connection on the blocking pool; a
    /// store error is a 503 (the connection is closed, the next request opens a fresh one).
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Problem> {
        let conn = self.acquire(&self.light).await?;
        Self::work_on(conn, work).await
    }

    /// [`Db::run`] for a listing or report.
    pub async fn run_heavy<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Problem> {
        let conn = self.acquire(&self.heavy).await?;
        Self::work_on(conn, work).await
    }

    /// [`Db::run`] for the key lookup of a signed request.
    pub async fn run_lookup<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Problem> {
        let conn = self.acquire(&self.lookups).await?;
        Self::work_on(conn, work).await
    }

    async fn work_on<T: Send + 'static>(
        mut conn: Conn,
        work: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Problem> {
        tokio::task::spawn_blocking(move || {
            let out = work(conn.store());
            if out.is_err() {
                conn.discard();
            }
            out
        })
        .await
        .map_err(|e| internal(format!("store task: {e}")))?
        .map_err(|e| store_failed(&e))
    }
}

/// A store failure as the client sees it (the details go to the log).
pub fn store_failed(e: &StoreError) -> Problem {
    tracing::warn!(error = %e, "API store query failed");
    Problem::unavailable("the store did not answer: try again")
}

fn internal(detail: String) -> Problem {
    tracing::error!(%detail, "API store task failed");
    Problem::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "internal error",
    )
}
