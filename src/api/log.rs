//! The log filter, changed while the node runs (what `switchyard ctl log level` uses);
//! behind the node's token.
//!
//! | route | answer |
//! |---|---|
//! | `GET /log` | `{"filter"}`: the filter in force (`RUST_LOG` syntax, e.g. `switchyard=info`) |
//! | `PUT /log` | body `{"filter": "switchyard=debug"}` (or a bare level: `debug`, taken for `switchyard=debug`): sets it, answers the new `{"filter"}`; 400 for a filter that does not parse |
//!
//! The `switchyard` binary installs the control at start-up ([`install`]); a node started
//! inside another program (the tests) has none, and both routes answer 404.

use std::sync::{Mutex, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{route, ApiState, Problem};

/// Counter, label `result` (`ok`, `invalid`): changes of the log filter through the API.
pub const LOG_FILTER_CHANGES_TOTAL: &str = "switchyard_log_filter_changes_total";

pub fn describe() {
    metrics::describe_counter!(
        LOG_FILTER_CHANGES_TOTAL,
        "Log filter changes through PUT /log, by result (ok, invalid)"
    );
}

/// Sets the process's log filter; Err says why a filter was refused.
pub type SetFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

struct LogControl {
    set: SetFilter,
    current: Mutex<String>,
}

/// The process's one log subscriber (a process has one, like its metrics recorder).
static CONTROL: OnceLock<LogControl> = OnceLock::new();

/// Hands the API the way to change the process's log filter, now `current`. Once per
/// process; later calls are ignored.
pub fn install(current: String, set: SetFilter) {
    let _ = CONTROL.set(LogControl {
        set,
        current: Mutex::new(current),
    });
}

/// The filter in force, when the control is installed.
pub fn current() -> Option<String> {
    CONTROL
        .get()
        .map(|c| c.current.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

pub(super) fn routes(router: Router<ApiState>) -> Router<ApiState> {
    route(router, "/log", get(show).put(change))
}

#[derive(Serialize)]
struct Filter {
    filter: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    filter: String,
}

fn no_control() -> Problem {
    Problem::not_found("this node's log filter cannot be changed (it runs inside another program)")
}

async fn show(State(_): State<ApiState>) -> Response {
    match current() {
        Some(filter) => Json(Filter { filter }).into_response(),
        None => no_control().into_response(),
    }
}

/// A bare level names the switch's own logs; anything else is taken as a full filter.
fn expand(filter: &str) -> String {
    let f = filter.trim();
    match f.to_ascii_lowercase().as_str() {
        "trace" | "debug" | "info" | "warn" | "error" | "off" => format!("switchyard={f}"),
        _ => f.to_string(),
    }
}

async fn change(State(_): State<ApiState>, body: axum::body::Bytes) -> Response {
    let Some(control) = CONTROL.get() else {
        return no_control().into_response();
    };
    let change: Change = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return Problem::new(
                StatusCode::BAD_REQUEST,
                format!("body: {e}; expected {{\"filter\": \"switchyard=debug\"}}"),
            )
            .into_response()
        }
    };
    let filter = expand(&change.filter);
    if filter.is_empty() || filter.len() > 1024 {
        metrics::counter!(LOG_FILTER_CHANGES_TOTAL, "result" => "invalid").increment(1);
        return Problem::new(StatusCode::BAD_REQUEST, "a filter of 1 to 1024 characters")
            .into_response();
    }
    if let Err(e) = (control.set)(&filter) {
        metrics::counter!(LOG_FILTER_CHANGES_TOTAL, "result" => "invalid").increment(1);
        return Problem::new(StatusCode::BAD_REQUEST, format!("filter {filter:?}: {e}"))
            .into_response();
    }
    metrics::counter!(LOG_FILTER_CHANGES_TOTAL, "result" => "ok").increment(1);
    tracing::warn!(%filter, "log filter changed through the API");
    *control.current.lock().unwrap_or_else(|e| e.into_inner()) = filter.clone();
    Json(Filter { filter }).into_response()
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn a_bare_level_names_the_switch() {
        assert_eq!(expand("debug"), "switchyard=debug");
        assert_eq!(expand(" WARN "), "switchyard=WARN");
        assert_eq!(
            expand("switchyard=info,ractor=warn"),
            "switchyard=info,ractor=warn"
        );
    }
}
