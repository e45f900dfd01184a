//! `GET /health`: liveness plus named readiness checks the rest of the node can register.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use serde::Serialize;

/// A readiness check: cheap, non-blocking, `true` when healthy. It runs on every
/// `GET /health`, so it should read a flag or an atomic, never do I/O.
pub type HealthCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// What `GET /health` reports: the version, the uptime and the result of every check.
#[derive(Clone)]
pub struct Health {
    version: &'static str,
    started: Instant,
    checks: Vec<(String, HealthCheck)>,
}

/// The JSON body of `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// `ok` when every check passes, `unavailable` otherwise.
    pub status: &'static str,
    /// The crate version of this build.
    pub version: &'static str,
    /// Whole seconds since the [`Health`] was created (at node start).
    pub uptime_seconds: u64,
    /// Each check by name: `ok` or `failing` (a SIP listener whose receive loop is down:
    /// `"listener udp:127.0.0.1:5060": "failing"`).
    pub checks: BTreeMap<String, &'static str>,
}

impl Health {
    /// Health with no checks, uptime counted from now.
    pub fn new() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION"),
            started: Instant::now(),
            checks: Vec::new(),
        }
    }

    /// Add a named check (e.g. `"store"`); a failing check turns the answer into 503.
    pub fn with_check(
        mut self,
        name: impl Into<String>,
        check: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        self.checks.push((name.into(), Arc::new(check)));
        self
    }

    /// Run every check and build the report with its HTTP status (200 or 503).
    pub fn report(&self) -> (StatusCode, HealthReport) {
        let checks: BTreeMap<_, _> = self
            .checks
            .iter()
            .map(|(name, check)| (name.clone(), if check() { "ok" } else { "failing" }))
            .collect();
        let healthy = checks.values().all(|s| *s == "ok");
        let report = HealthReport {
            status: if healthy { "ok" } else { "unavailable" },
            version: self.version,
            uptime_seconds: self.started.elapsed().as_secs(),
            checks,
        };
        let status = if healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, report)
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.checks.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Health")
            .field("version", &self.version)
            .field("started", &self.started)
            .field("checks", &names)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn no_checks_is_ok() {
        let (status, report) = Health::new().report();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(report.status, "ok");
        assert_eq!(report.version, env!("CARGO_PKG_VERSION"));
        assert!(report.checks.is_empty());
    }

    #[test]
    fn a_failing_check_makes_it_unavailable() {
        let store_up = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&store_up);
        let health = Health::new()
            .with_check("store", move || flag.load(Ordering::Relaxed))
            .with_check("timer", || true);

        let (status, report) = health.report();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(report.checks["store"], "ok");

        store_up.store(false, Ordering::Relaxed);
        let (status, report) = health.report();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(report.status, "unavailable");
        assert_eq!(report.checks["store"], "failing");
        assert_eq!(report.checks["timer"], "ok");
    }
}
