//! The console's HTTP(S) client of a node's API: a bearer token on every request, JSON in and
//! out, and every failure turned into one line that says what to do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// Where the node's API is and how to reach it.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http://127.0.0.1:8080` or `https://host:port`, without a trailing slash.
    pub url: String,
    pub token: String,
    /// A PEM certificate to trust for HTTPS (the API's own, when it is self-issued).
    pub ca: Option<PathBuf>,
}

/// A failed request, as the one line the console prints.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach the node at {url}: {why} (is it running? --url sets the address)")]
    Unreachable { url: String, why: String },
    #[error("the node refused the token (HTTP {status}): pass the node's token with --token, or run where its data directory is (--data-dir)")]
    Refused { status: u16 },
    #[error("{detail} (HTTP {status})")]
    Problem { status: u16, detail: String },
    #[error("{0}")]
    Usage(String),
}

/// The console's connection to one node.
pub struct Client {
    target: Target,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(target: Target) -> Result<Client, CtlError> {
        crate::transport::tls::install_crypto_provider();
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(15)))
            // Problem bodies are read, not turned into errors.
            .http_status_as_error(false);
        if let Some(ca) = &target.ca {
            let pem = std::fs::read(ca)
                .map_err(|e| CtlError::Usage(format!("--ca {}: {e}", ca.display())))?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|p| match p {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(CtlError::Usage(format!(
                    "--ca {}: no certificate in the file",
                    ca.display()
                )));
            }
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        Ok(Client {
            agent: config.build().into(),
            target,
        })
    }

    pub fn get(&self, path: &str) -> Result<Value, CtlError> {
        self.call("GET", path, None)
    }

    pub fn post(&self, path: &str, body: Option<Value>) -> Result<Value, CtlError> {
        self.call("POST", path, body)
    }

    pub fn put(&self, path: &str, body: Value) -> Result<Value, CtlError> {
        self.call("PUT", path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Result<Value, CtlError> {
        self.call("DELETE", path, None)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, CtlError> {
        let url = format!("{}{path}", self.target.url);
        let auth = format!("Bearer {}", self.target.token);
        let result = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            ("PUT", Some(b)) => self
                .agent
                .put(&url)
                .header("Authorization", &auth)
                .send_json(b),
            (_, Some(b)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(b),
            (_, None) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
        };
        let mut response = result.map_err(|e| CtlError::Unreachable {
            url: self.target.url.clone(),
            why: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .unwrap_or_default();
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        match status {
            200..=299 => Ok(value),
            401 | 403 if path_is_node_wide(path) || status == 401 => {
                Err(CtlError::Refused { status })
            }
            _ => Err(CtlError::Problem {
                status,
                detail: value
                    .get("detail")
                    .or_else(|| value.get("title"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{method} {path} failed")),
            }),
        }
    }
}

/// Every route the console uses but the agent commands is the node's.
fn path_is_node_wide(path: &str) -> bool {
    !path.starts_with("/agents/")
}

/// The token: `--token`, else the config file's `http.token`, else `data_dir/api-token`.
pub fn find_token(
    explicit: Option<&str>,
    configured: Option<&str>,
    data_dir: &Path,
) -> Result<String, CtlError> {
    if let Some(t) = explicit.or(configured) {
        return Ok(t.trim().to_string());
    }
    let file = data_dir.join(crate::api::TOKEN_FILE);
    std::fs::read_to_string(&file)
        .map(|t| t.trim().to_string())
        .map_err(|e| {
            CtlError::Usage(format!(
                "no API token: {} ({e}); pass --token, or --data-dir where the node keeps its data",
                file.display()
            ))
        })
}
