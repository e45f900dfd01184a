//! The process-wide metrics recorder and the one place where every metric is described.
//!
//! Metric names live as `pub const` next to the code that records them; each module has a
//! `pub fn describe()`, and [`describe_all`] calls them all once. The Prometheus recorder is
//! installed without its own HTTP listener (no default features): `GET /metrics` on the API
//! server renders it from a [`PrometheusHandle`], and [`spawn_upkeep`] drains histograms.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;

/// Gauge, always 1, labels `version` and `git_sha`: which build this node runs.
pub const BUILD_INFO: &str = "switchyard_build_info";

/// Histogram buckets (seconds) for every metric whose name ends in `_seconds`: SIP and
/// storage latencies, from half a millisecond (a parse, a local commit) to seconds (post-dial
/// delay, a slow carrier, a stalled disk).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// Buckets (seconds) of the cluster takeover histogram: a lease's time to live plus a claim,
/// around the 5 s a takeover must stay under.
pub const TAKEOVER_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 30.0,
];

/// How often [`spawn_upkeep`] drains histogram samples into their buckets. Without the
/// exporter's own listener nobody else does, and samples would accumulate without bound.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Git commit baked in at build time, if the build sets `SWITCHYARD_GIT_SHA` (no build script).
const GIT_SHA: Option<&str> = option_env!("SWITCHYARD_GIT_SHA");

/// Errors of the metrics layer.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The recorder could not be built or another global recorder is already installed.
    #[error("cannot install the Prometheus recorder: {0}")]
    Install(#[from] BuildError),
}

/// The installed handle; set once, then only cloned.
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
/// Serialises the first installation so two concurrent callers cannot both try to install.
static INSTALL: Mutex<()> = Mutex::new(());

/// Install the Prometheus recorder as the global `metrics` recorder and describe every metric.
///
/// Idempotent: the first call installs and describes; later calls (tests, a restarted API
/// server) return a clone of the same handle. Fails if a different global recorder was
/// installed first. The caller serves `handle.render()` and must run [`spawn_upkeep`].
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    // A poisoned lock only means another installer panicked; the OnceLock is still coherent.
    let _guard = INSTALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(crate::cluster::membership::CLUSTER_TAKEOVER_SECONDS.to_owned()),
            TAKEOVER_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)?
        .install_recorder()?;
    let handle = HANDLE.get_or_init(|| handle).clone();
    describe_all();
    Ok(handle)
}

/// The handle installed by [`install`], if it has run.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE.get().cloned()
}

/// Describe every metric of the crate (help text and unit) with the installed recorder, and
/// set the `build_info` gauge. [`install`] calls this; calling it again is harmless.
///
/// A module that records metrics adds its `describe()` call here (one line each):
/// - `crate::supervision::describe()`: actor starts, stops, restarts, escalations
/// - `crate::timer::describe()`: the shared timer facility
/// - `crate::actors::store_writer::describe()`: CDR writes
/// - `crate::api::describe()`: HTTP requests
/// - next: transport, sip (bad requests), call / agent / queue / trunk / tenant actors,
///   routing (admission, risk), media, cluster.
pub fn describe_all() {
    crate::supervision::describe();
    crate::timer::describe();
    crate::actors::store_writer::describe();
    crate::api::describe();
    crate::transport::describe();
    crate::security::describe();
    crate::actors::router::describe();
    crate::routing::risk::describe();
    crate::actors::call::describe();
    crate::actors::tenant::describe();
    crate::actors::queue::describe();
    crate::actors::agent::describe();
    crate::actors::trunk::describe();
    crate::actors::alarms::describe();
    crate::actors::registrar::describe();
    crate::routing::auth::describe();
    crate::security::describe();
    crate::media::relay::describe();
    crate::media::mix::describe();
    crate::media::recording::describe();
    crate::cluster::membership::describe();
    crate::cluster::port::describe();
    crate::cluster::shared_config::describe();
    crate::cluster::checkpoints::describe();
    crate::store::describe();
    crate::actors::call::describe_media();
    crate::demo::describe();

    metrics::describe_gauge!(
        BUILD_INFO,
        "Always 1; the labels say which version and commit this node runs"
    );
    metrics::gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "git_sha" => GIT_SHA.unwrap_or("unknown"),
    )
    .set(1.0);
}

/// Spawn the upkeep task: every [`UPKEEP_INTERVAL`] it drains recorded histogram samples into
/// their buckets. Must run inside a tokio runtime; abort the returned handle to stop it.
pub fn spawn_upkeep(handle: PrometheusHandle) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        // After a stall, one upkeep catches everything up; a burst of them would be wasted work.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_twice_returns_the_same_recorder() {
        let first = install().expect("first install");
        let second = install().expect("second install must not fail");
        metrics::counter!("switchyard_test_metrics_install_total").increment(3);
        // Both handles render the same registry, and the build info was set by install().
        for rendered in [first.render(), second.render()] {
            assert!(
                rendered.contains("switchyard_test_metrics_install_total 3"),
                "{rendered}"
            );
            assert!(rendered.contains(BUILD_INFO), "{rendered}");
        }
        assert!(handle().is_some());
    }

    #[test]
    fn seconds_metrics_are_histograms_with_sip_buckets() {
        let handle = install().expect("install");
        metrics::histogram!("switchyard_test_metrics_latency_seconds").record(0.003);
        handle.run_upkeep();
        let rendered = handle.render();
        assert!(
            rendered.contains("switchyard_test_metrics_latency_seconds_bucket{le=\"0.005\"} 1"),
            "{rendered}"
        );
        assert!(
            rendered.contains("switchyard_test_metrics_latency_seconds_bucket{le=\"0.002\"} 0"),
            "{rendered}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn upkeep_task_runs_and_can_be_stopped() {
        let handle = install().expect("install");
        let task = spawn_upkeep(handle);
        tokio::time::sleep(UPKEEP_INTERVAL * 2).await;
        assert!(!task.is_finished(), "upkeep must keep running");
        task.abort();
        let err = task.await.expect_err("aborted");
        assert!(err.is_cancelled());
    }
}
