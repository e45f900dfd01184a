//! A throwaway etcd for the cluster tests: one member on loopback, its data in a test's
//! temporary directory, killed when the [`Proc`] is dropped (also when the test panics).
//! Started again on the same URLs and data directory, it is the same etcd.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A free TCP port on `ip`.
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The etcd binary, or None (with a loud line) when it is not installed outside CI; in CI
/// (`CI` set) a missing etcd fails the test.
pub fn etcd_binary() -> Option<PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("etcd");
        if p.is_file() {
            return Some(p);
        }
    }
    if std::env::var_os("CI").is_some() {
        panic!("etcd is not installed: apt-get install etcd-server");
    }
    eprintln!("SKIPPED: etcd is not installed (apt-get install etcd-server)");
    None
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Free client and peer URLs on 127.0.0.1 for [`start_etcd`].
pub fn etcd_urls() -> (String, String) {
    (
        format!("http://127.0.0.1:{}", free_port("127.0.0.1")),
        format!("http://127.0.0.1:{}", free_port("127.0.0.1")),
    )
}

/// A one-member etcd on loopback, its data and log in `dir`, serving clients at `client`.
pub fn start_etcd(bin: &Path, dir: &Path, client: &str, peer: &str) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("etcd.log"))
        .unwrap();
    let child = Command::new(bin)
        .arg("--data-dir")
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", client])
        .args(["--advertise-client-urls", client])
        .args(["--listen-peer-urls", peer])
        .args(["--initial-advertise-peer-urls", peer])
        .args(["--initial-cluster", &format!("default={peer}")])
        // As docs/cluster.md asks of a deployment: checkpoints rewrite keys every second.
        .args([
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=10m",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("etcd starts");
    Proc(child)
}
