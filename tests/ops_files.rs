//! The shipped operations files: `ops/prometheus/alerts.yml` passes `promtool check rules`
//! (when promtool is installed; required with `CI` set), and every Switchyard metric the
//! rules and `ops/grafana/switchyard.json` name is one the code defines, so a renamed metric
//! cannot leave a silent panel or an alert that never fires.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `switchyard_...` names in `text`, without a histogram's `_bucket`/`_sum`/`_count`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("switchyard_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        out.insert(base.to_string());
    }
    out
}

/// Every Rust source under `dir`, concatenated.
fn sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn every_metric_the_dashboard_and_alerts_name_exists() {
    let mut code = String::new();
    sources(&root().join("src"), &mut code);
    let dashboard = std::fs::read_to_string(root().join("ops/grafana/switchyard.json")).unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let alerts = std::fs::read_to_string(root().join("ops/prometheus/alerts.yml")).unwrap();
    let named: BTreeSet<String> = metric_names(&dashboard)
        .into_iter()
        .chain(metric_names(&alerts))
        .collect();
    assert!(named.len() > 20, "{named:?}");
    let missing: Vec<&String> = named
        .iter()
        .filter(|n| !code.contains(&format!("\"{n}\"")))
        .collect();
    assert!(
        missing.is_empty(),
        "named in ops/ but not defined in src/: {missing:?}"
    );
}

#[test]
fn alert_rules_pass_promtool() {
    let rules = root().join("ops/prometheus/alerts.yml");
    match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "\n=== SKIPPED: promtool is not installed (Debian package `prometheus`) ===\n"
            )
        }
        Err(e) => panic!("promtool not found in CI: {e}"),
    }
}
