//! Switchyard processes of a cluster test: one per loopback address, each with its own
//! `cluster.toml`, free SIP (UDP) and HTTP ports and a data directory in the test's
//! temporary directory; killed with SIGKILL when dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::etcd::{free_port, Proc};
use super::{http_request, wait_until};

/// The shared secret of the test clusters.
pub const SECRET: &str = "a-test-secret-0123456789";

/// One node of a test cluster, started with [`NodeProc::spawn`] (again after a
/// [`NodeProc::kill9`]: same name, addresses and data).
pub struct NodeProc {
    pub name: String,
    pub http: SocketAddr,
    pub sip: SocketAddr,
    pub args: Vec<String>,
    pub proc: Option<Proc>,
}

impl NodeProc {
    /// Node `name` on `ip`, running `config`, joining the etcd at `etcd_url` under `prefix`
    /// (lease 3 s); `extra` is appended to its cluster.toml (a `[tls]` table, say).
    pub fn new(
        dir: &Path,
        name: &str,
        ip: &str,
        config: &Path,
        etcd: (&str, &str),
        extra: &str,
    ) -> NodeProc {
        let (etcd_url, prefix) = etcd;
        let cluster = dir.join(format!("{name}.toml"));
        std::fs::write(
            &cluster,
            format!(
                "name = \"{name}\"\nlisten = \"{ip}:{}\"\nsecret = \"{SECRET}\"\n\
                 [etcd]\nendpoints = [\"{etcd_url}\"]\nprefix = \"{prefix}\"\nlease_ttl_secs = 3\n{extra}",
                free_port(ip),
            ),
        )
        .unwrap();
        let http: SocketAddr = format!("{ip}:{}", free_port(ip)).parse().unwrap();
        let sip: SocketAddr = format!("{ip}:{}", free_port(ip)).parse().unwrap();
        let args = vec![
            "--config".into(),
            config.display().to_string(),
            "--cluster".into(),
            cluster.display().to_string(),
            "--sip-listen".into(),
            format!("udp:{sip}"),
            "--http-listen".into(),
            http.to_string(),
            "--data-dir".into(),
            dir.join(name).display().to_string(),
        ];
        NodeProc {
            name: name.to_string(),
            http,
            sip,
            args,
            proc: None,
        }
    }

    /// Starts the process; its log (appended across restarts) is `dir/<name>.log`.
    pub fn spawn(&mut self, dir: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{}.log", self.name)))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(&self.args)
            .env("RUST_LOG", "switchyard=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("switchyard starts");
        self.proc = Some(Proc(child));
    }

    pub fn kill9(&mut self) {
        self.proc.take(); // Drop sends SIGKILL and reaps
    }
}

/// Waits (bounded) until etcd at `url` (`http://ip:port`) accepts connections.
pub async fn wait_etcd(url: &str) {
    let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(addr).is_ok()
        })
        .await,
        "etcd did not come up"
    );
}

/// `GET path` (with the tests' node token, [`super::API_TOKEN`]) as JSON, or None when the
/// node does not answer (yet) or answers non-200.
pub async fn get_json(addr: SocketAddr, path: &str) -> Option<Value> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    let reply = http_request(addr, "GET", path, Some(super::API_BEARER), "").await;
    (reply.status == 200).then(|| serde_json::from_str(&reply.body).expect("JSON body"))
}

/// The nodes that own singleton `key` in `node`'s `GET /cluster` (empty when none does or the
/// node does not answer).
pub async fn owners_of(node: SocketAddr, key: &str) -> Vec<String> {
    let Some(view) = get_json(node, "/cluster").await else {
        return Vec::new();
    };
    view["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| {
            n["owns"]
                .as_array()
                .is_some_and(|o| o.iter().any(|k| k.as_str() == Some(key)))
        })
        .filter_map(|n| n["name"].as_str().map(str::to_string))
        .collect()
}
