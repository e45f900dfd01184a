//! `cluster.toml`: how a node joins a cluster (`switchyard --cluster cluster.toml`).
//!
//! ```toml
//! name = "n1"                        # unique in the cluster
//! listen = "127.0.0.1:4370"          # inter-node messages (ractor_cluster)
//! secret = "a long shared secret"    # or secret_file = "/etc/switchyard/cluster.secret"
//!
//! [etcd]
//! endpoints = ["http://127.0.0.1:2379"]
//! prefix = "/switchyard"
//! lease_ttl_secs = 3
//!
//! [database]
//! url = "host=127.0.0.1 port=5432 user=switchyard dbname=switchyard"
//! ```
//! The node's SIP and HTTP addresses are its own (config file or `--sip-listen`,
//! `--http-listen`); they are announced in etcd as the node binds them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A node's cluster settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name: letters, digits, `-`, `_`, `.`; unique in the cluster.
    pub name: String,
    /// Where this node listens for other nodes' actor messages.
    pub listen: SocketAddr,
    /// The shared secret that authenticates nodes to each other.
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the secret (first line), instead of `secret`.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    pub etcd: EtcdConfig,
    /// TLS between the nodes (their actor messages); plain TCP without it.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How long a dead node's trunk channels still count against the trunks' limits (its
    /// calls are gone for the switch, but the carrier may count them until its own timers end
    /// them).
    #[serde(default = "default_hold")]
    pub channel_hold_secs: u64,
    /// The shared database (PostgreSQL) for registrations and CDRs.
    #[serde(default)]
    pub database: Option<DatabaseConfig>,
}

/// Where etcd is.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Key prefix, so several clusters may share one etcd.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The node's lease: a node that stops refreshing it is dead after this long and its
    /// singletons are taken over. etcd refuses less than its minimum (about 3 s by default).
    #[serde(default = "default_ttl")]
    pub lease_ttl_secs: u64,
}

/// TLS between nodes: every node presents `cert` (valid for `server_name`) and accepts peers
/// whose certificate chains to `ca` (default: `cert` itself, for one certificate shared by
/// the cluster). The shared secret is still checked inside the TLS session.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The name the peers' certificates are checked against.
    #[serde(default = "default_server_name")]
    pub server_name: String,
}

fn default_server_name() -> String {
    "switchyard-cluster".into()
}

/// The shared database.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// A PostgreSQL connection string (`host=... user=... dbname=...` or `postgres://...`).
    pub url: String,
}

fn default_prefix() -> String {
    "/switchyard".into()
}

fn default_hold() -> u64 {
    60
}

fn default_ttl() -> u64 {
    3
}

impl ClusterConfig {
    /// Reads and validates `cluster.toml`.
    pub fn load(path: &Path) -> Result<ClusterConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut c: ClusterConfig =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(file) = &c.secret_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("secret_file {}: {e}", file.display()))?;
            c.secret = text.lines().next().map(|l| l.trim().to_string());
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks what cannot work, with one message per problem.
    pub fn validate(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            errors.push(format!(
                "name {:?}: 1-64 letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        match &self.secret {
            Some(s) if s.len() >= 16 => {}
            _ => errors.push("secret (or secret_file): at least 16 characters".to_string()),
        }
        if self.etcd.endpoints.is_empty() {
            errors.push("etcd.endpoints: at least one".to_string());
        }
        if !self.etcd.prefix.starts_with('/') || self.etcd.prefix.ends_with('/') {
            errors.push(format!(
                "etcd.prefix {:?}: starts with '/', does not end with one",
                self.etcd.prefix
            ));
        }
        if !(1..=60).contains(&self.etcd.lease_ttl_secs) {
            errors.push("etcd.lease_ttl_secs: 1-60".to_string());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// The shared secret (validated to be present).
    pub fn secret(&self) -> &str {
        self.secret.as_deref().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterConfig, String> {
        let c: ClusterConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map(|_| c)
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster.toml");
        let c = ClusterConfig::load(&path).unwrap();
        assert_eq!(c.etcd.prefix, "/switchyard");
        assert!(c.database.is_some());
    }

    #[test]
    fn defaults_and_errors() {
        let c = parse(
            "name = \"a\"\nlisten = \"127.0.0.1:4370\"\nsecret = \"0123456789abcdef\"\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n",
        )
        .unwrap();
        assert_eq!(
            (c.etcd.prefix.as_str(), c.etcd.lease_ttl_secs),
            ("/switchyard", 3)
        );
        let e = parse(
            "name = \"a b\"\nlisten = \"127.0.0.1:4370\"\nsecret = \"short\"\n[etcd]\nendpoints = []\nprefix = \"x/\"\n",
        )
        .unwrap_err();
        for part in ["name", "secret", "etcd.endpoints", "etcd.prefix"] {
            assert!(e.contains(part), "{part} missing in {e}");
        }
        assert!(parse("name = \"a\"\nlisten = \"x\"\n[etcd]\nendpoints = []\n").is_err());
        assert!(parse("nme = \"a\"").is_err());
    }
}
