//! The demo on the embedded default: with no config file the node runs a tenant `demo` that
//! a newcomer can call at once, the way FreeSWITCH and Asterisk ship default extensions.
//!
//! - users 1001–1005, whose passwords are generated on the first start, printed once, and
//!   kept in `data_dir/demo-users.txt` (mode 0600, one `user password` per line);
//! - a queue `support` on number 5000 with agents 1001 (logged out) and 1002 (available);
//! - an echo test on 9196 and music on hold on 9664 (numbers whose target is `echo` and
//!   `music`, answered by the switch, media anchored).
//!
//! The tenant's domain is the node's advertised address, so a phone given nothing but the
//! server's address and a user registers. Listening on an unspecified address (the default
//! `0.0.0.0`) with no `sip.advertise`, the node advertises its primary address (the one its
//! default route leaves from; no packet is sent to find it), else 127.0.0.1.
//!
//! The demo is an ordinary tenant: the edge rules apply to it as to any other (its users dial
//! no route, anonymous callers reach its numbers only), and a config file that defines
//! tenants replaces it. `--no-demo` turns it off.

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};

use crate::config::{Config, TenantConfig};
use crate::sip::auth::{ha1, Algorithm};

/// The file the demo users' passwords are kept in, under the data directory.
pub const USERS_FILE: &str = "demo-users.txt";

/// The demo's users.
pub const USERS: [&str; 5] = ["1001", "1002", "1003", "1004", "1005"];

/// Gauge, 1 while the node runs the demo tenant.
pub const DEMO_TENANT: &str = "switchyard_demo_tenant";

/// Describe this module's metrics.
pub fn describe() {
    metrics::describe_gauge!(
        DEMO_TENANT,
        "1 while the node runs the demo tenant of the embedded default (no config file)"
    );
}

/// The demo put in place: what to tell the person who started the node.
#[derive(Debug)]
pub struct Demo {
    /// The SIP domain (and realm) phones register under: the node's advertised address.
    pub domain: String,
    /// `(user, password)` of every demo user.
    pub users: Vec<(String, String)>,
    /// Whether the passwords were generated now (printed once) or read from the file.
    pub generated: bool,
    /// Where the passwords are kept.
    pub file: PathBuf,
}

/// Adds the demo tenant to `config` (the embedded default). The advertised address is
/// settled first (see the module documentation) and written into `sip.advertise`.
pub fn apply(config: &mut Config) -> io::Result<Demo> {
    let ip = advertised(config);
    config.sip.advertise = Some(ip);
    let domain = ip.to_string();
    std::fs::create_dir_all(&config.data_dir)?;
    let file = config.data_dir.join(USERS_FILE);
    let (users, generated) = users(&file)?;
    config.tenants.push(tenant(&domain, &users)?);
    config.demo = true;
    Ok(Demo {
        domain,
        users,
        generated,
        file,
    })
}

/// The address the demo tenant is reached at: `sip.advertise`, else the first SIP listen
/// address that is not unspecified, else the primary address, else 127.0.0.1.
fn advertised(config: &Config) -> IpAddr {
    if let Some(ip) = config.sip.advertise {
        return ip;
    }
    if let Some(ip) = config
        .listen_specs()
        .iter()
        .map(|s| s.addr.ip())
        .find(|ip| !ip.is_unspecified())
    {
        return ip;
    }
    primary_address().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// The source address of the default route: a UDP socket "connected" to a documentation
/// address (RFC 5737) learns its local address from the routing table; nothing is sent.
fn primary_address() -> Option<IpAddr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// The demo users' passwords: read from `file`, or generated and written there (0600,
/// created only if absent, so two starts never overwrite each other's).
fn users(file: &Path) -> io::Result<(Vec<(String, String)>, bool)> {
    match std::fs::read_to_string(file) {
        Ok(text) => return parse(&text, file).map(|u| (u, false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", file.display()))),
    }
    let users: Vec<(String, String)> = USERS.iter().map(|u| (u.to_string(), password())).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(file)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", file.display())))?;
    for (u, p) in &users {
        writeln!(f, "{u} {p}")?;
    }
    f.sync_all()?;
    Ok((users, true))
}

/// `user password` lines; every demo user must be there.
fn parse(text: &str, file: &Path) -> io::Result<Vec<(String, String)>> {
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let mut users = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(u), Some(p), None) => users.push((u.to_string(), p.to_string())),
            _ => {
                return Err(invalid(format!(
                    "{} line {}: expected `user password`",
                    file.display(),
                    n + 1
                )))
            }
        }
    }
    for u in USERS {
        if !users.iter().any(|(name, _)| name == u) {
            return Err(invalid(format!(
                "{}: no password for {u} (delete the file to generate new ones)",
                file.display()
            )));
        }
    }
    Ok(users)
}

/// 16 random letters and digits (about 95 bits).
fn password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 16)
}

/// The demo tenant, written as the TOML a user would write, so that it takes every default
/// and passes the same validation as a configured tenant.
fn tenant(domain: &str, users: &[(String, String)]) -> io::Result<TenantConfig> {
    let mut toml = format!("id = \"demo\"\ndomain = \"{domain}\"\n");
    for (u, p) in users {
        toml.push_str(&format!(
            "[[users]]\nusername = \"{u}\"\nha1_md5 = \"{}\"\nha1_sha256 = \"{}\"\n",
            ha1(Algorithm::Md5, u, domain, p),
            ha1(Algorithm::Sha256, u, domain, p),
        ));
    }
    toml.push_str(
        r#"[[queues]]
id = "support"
strategy = "longest-idle"
[[agents]]
id = "1001"
user = "1001"
queues = [{ queue = "support" }]
state = "logged_out"
[[agents]]
id = "1002"
user = "1002"
queues = [{ queue = "support" }]
state = "available"
[[numbers]]
number = "5000"
target = "queue:support"
[[numbers]]
number = "9196"
target = "echo"
[[numbers]]
number = "9664"
target = "music"
"#,
    );
    toml::from_str(&toml).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded default with its data in `dir`, SIP on 127.0.0.7.
    fn at(dir: &Path) -> Config {
        let mut config = Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        config.sip.listen = vec!["udp:127.0.0.7:5060".into()];
        config
    }

    #[test]
    fn the_demo_is_a_valid_tenant_and_its_passwords_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = at(dir.path());
        let demo = apply(&mut config).unwrap();
        assert!(demo.generated);
        assert_eq!(demo.domain, "127.0.0.7");
        assert_eq!(config.sip.advertise, Some("127.0.0.7".parse().unwrap()));
        config.validate().expect("the demo passes validation");
        let t = &config.tenants[0];
        assert_eq!(t.users.len(), 5);
        assert_eq!(t.numbers.len(), 3);
        let (user, pass) = &demo.users[0];
        assert_eq!(
            t.users[0].ha1_md5.as_deref(),
            Some(ha1(Algorithm::Md5, user, "127.0.0.7", pass).as_str())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&demo.file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // The second start reads the same passwords, and prints none.
        let mut again = at(dir.path());
        let second = apply(&mut again).unwrap();
        assert!(!second.generated);
        assert_eq!(second.users, demo.users);
        // Distinct, long passwords.
        let mut seen: Vec<&String> = demo.users.iter().map(|(_, p)| p).collect();
        seen.dedup();
        assert_eq!(seen.len(), 5);
        assert!(seen.iter().all(|p| p.len() == 16));
    }

    #[test]
    fn a_damaged_users_file_is_refused_with_its_place() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(USERS_FILE), "1001 a\n1002\n").unwrap();
        let mut config = at(dir.path());
        let e = apply(&mut config).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
