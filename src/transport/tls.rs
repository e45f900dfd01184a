//! TLS (SIPS) on top of the stream transport: certificates and keys from PEM files, a
//! self-signed certificate generated into the data directory when none is configured, the
//! rustls server and client configurations, and the timed, counted handshakes that
//! `tcp.rs` runs in each connection's own task.
//!
//! Outbound TLS verifies the peer: the client configuration trusts exactly the PEM
//! certificates it is given (the node's own certificate and any CA the operator names).
//! There is deliberately no "accept any certificate" mode.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use super::{ListenSpec, Protocol, TLS_HANDSHAKES};

/// How long a peer has to complete the TLS handshake (a connection that never speaks must
/// not hold a connection slot for the idle timeout).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Faults loading or generating TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0}: no certificate in the file")]
    NoCertificate(PathBuf),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Installs the ring crypto provider as the process default (for code that uses
/// `ServerConfig::builder()`, e.g. HTTPS). Safe to call more than once: a provider that is
/// already installed is kept. The configurations built here name their provider
/// explicitly, so SIP TLS works whether or not this was called.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The SHA-256 fingerprint of a DER certificate as uppercase hex pairs joined by colons
/// (`AB:CD:…`), the form browsers and `openssl x509 -fingerprint -sha256` print.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut s = String::with_capacity(digest.len() * 3);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&format!("{b:02X}"));
    }
    s
}

/// The fingerprint of the first (leaf) certificate in a PEM file.
pub fn fingerprint_file(cert_pem: &Path) -> Result<String, TlsError> {
    let certs = load_certs(cert_pem)?;
    Ok(fingerprint(certs[0].as_ref()))
}

/// Every certificate in a PEM file, leaf first; at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |source| TlsError::Pem {
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| match e {
            rustls::pki_types::pem::Error::Io(source) => TlsError::Io {
                path: path.to_path_buf(),
                source,
            },
            e => pem_err(e),
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::Io(source) => TlsError::Io {
            path: path.to_path_buf(),
            source,
        },
        source => TlsError::Pem {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// A server configuration (no client certificates) from a PEM chain and key. Fails when the
/// key does not match the certificate.
pub fn server_config(cert_pem: &Path, key_pem: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert_pem)?;
    let key = load_key(key_pem)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// A client configuration that trusts exactly the certificates in the given PEM files
/// (CA certificates, or self-signed leaf certificates such as a peer node's).
pub fn client_config(trusted_pem: &[&Path]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for path in trusted_pem {
        for cert in load_certs(path)? {
            roots.add(cert)?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate and key on disk and the certificate's fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SHA-256, `AB:CD:…`.
    pub fingerprint: String,
    /// Whether this call generated the files (false: they were already there).
    pub generated: bool,
}

/// The node's self-signed certificate in `data_dir/tls/{cert,key}.pem`: loaded when both
/// files exist, otherwise generated (names: localhost, 127.0.0.1, ::1 and the host name)
/// and written, the key readable by its owner only.
pub fn ensure_self_signed(data_dir: &Path) -> Result<CertFiles, TlsError> {
    let dir = data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.is_file() && key.is_file() {
        // Checks that the key parses too, so a damaged pair is reported at start-up.
        load_key(&key)?;
        let fingerprint = fingerprint_file(&cert)?;
        return Ok(CertFiles {
            cert,
            key,
            fingerprint,
            generated: false,
        });
    }
    std::fs::create_dir_all(&dir).map_err(|source| TlsError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Some(h) = host_name() {
        if !names.contains(&h) {
            names.push(h);
        }
    }
    let mut params = rcgen::CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "switchyard");
    let key_pair = rcgen::KeyPair::generate()?;
    let generated = params.self_signed(&key_pair)?;
    // The key first: a crash between the two writes leaves no certificate, so the next
    // start generates a fresh pair instead of pairing a new certificate with an old key.
    write_file(&key, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert, generated.pem().as_bytes(), 0o644)?;
    Ok(CertFiles {
        cert,
        key,
        fingerprint: fingerprint(generated.der().as_ref()),
        generated: true,
    })
}

/// Writes through a temporary file and a rename, so a reader never sees half a file; the
/// mode is set when the file is created (a key is never briefly world-readable).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}

/// The machine's host name when it is a usable DNS name.
fn host_name() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()?;
    let h = raw.trim().to_ascii_lowercase();
    let ok = !h.is_empty()
        && h.len() <= 253
        && h != "localhost"
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    ok.then_some(h)
}

/// What a node needs for SIP over TLS.
#[derive(Clone, Debug)]
pub struct NodeTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    /// The certificate in use and its fingerprint.
    pub cert: CertFiles,
}

/// Prepares TLS for a node when any listen socket is `tls:`: the configured certificate and
/// key, or else the self-signed pair in `data_dir/tls`. Outbound connections trust the
/// node's own certificate plus `extra_ca` (PEM files). Logs the fingerprint at info.
/// Returns `None` when nothing listens on TLS.
pub fn setup(
    specs: &[ListenSpec],
    cert: Option<&Path>,
    key: Option<&Path>,
    extra_ca: &[&Path],
    data_dir: &Path,
) -> Result<Option<NodeTls>, TlsError> {
    if !specs.iter().any(|s| s.protocol == Protocol::Tls) {
        return Ok(None);
    }
    let files = match (cert, key) {
        (Some(c), Some(k)) => CertFiles {
            cert: c.to_path_buf(),
            key: k.to_path_buf(),
            fingerprint: fingerprint_file(c)?,
            generated: false,
        },
        _ => ensure_self_signed(data_dir)?,
    };
    let server = server_config(&files.cert, &files.key)?;
    let mut trusted: Vec<&Path> = vec![&files.cert];
    trusted.extend_from_slice(extra_ca);
    let client = client_config(&trusted)?;
    tracing::info!(
        cert = %files.cert.display(),
        generated = files.generated,
        "TLS certificate fingerprint (SHA-256): {}",
        files.fingerprint
    );
    Ok(Some(NodeTls {
        server,
        client,
        cert: files,
    }))
}

/// Runs the server side of a handshake, bounded by `timeout`, and counts the outcome.
pub(crate) async fn accept(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    timeout: Duration,
) -> Option<server::TlsStream<TcpStream>> {
    let outcome = tokio::time::timeout(timeout, acceptor.accept(stream)).await;
    finish("inbound", remote, outcome)
}

/// Runs the client side of a handshake with `ip` as the name the certificate must carry.
pub(crate) async fn connect(
    connector: &TlsConnector,
    stream: TcpStream,
    remote: SocketAddr,
    timeout: Duration,
) -> Option<client::TlsStream<TcpStream>> {
    let name = ServerName::IpAddress(remote.ip().into());
    let outcome = tokio::time::timeout(timeout, connector.connect(name, stream)).await;
    finish("outbound", remote, outcome)
}

fn finish<S>(
    side: &'static str,
    remote: SocketAddr,
    outcome: Result<std::io::Result<S>, tokio::time::error::Elapsed>,
) -> Option<S> {
    let (result, stream) = match outcome {
        Ok(Ok(s)) => ("ok", Some(s)),
        Ok(Err(e)) => {
            // Debug, not warn: scanners and plain-text clients fail here all day.
            tracing::debug!(%remote, side, error = %e, "tls handshake failed");
            ("failed", None)
        }
        Err(_) => {
            tracing::debug!(%remote, side, "tls handshake timed out");
            ("timeout", None)
        }
    };
    metrics::counter!(TLS_HANDSHAKES, "side" => side, "result" => result).increment(1);
    stream
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_colon_separated_uppercase_sha256() {
        let f = fingerprint(b"abc");
        assert_eq!(
            f,
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn self_signed_is_generated_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_self_signed(dir.path()).unwrap();
        assert!(first.generated);
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        let second = ensure_self_signed(dir.path()).unwrap();
        assert!(!second.generated, "the existing pair is reused");
        assert_eq!(first.fingerprint, second.fingerprint);
        assert_eq!(fingerprint_file(&first.cert).unwrap(), first.fingerprint);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&first.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the key is private");
        }
        // The pair loads into a server configuration (the key matches the certificate).
        server_config(&first.cert, &first.key).unwrap();
        client_config(&[&first.cert]).unwrap();
    }

    #[test]
    fn a_missing_key_regenerates_the_pair() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_self_signed(dir.path()).unwrap();
        std::fs::remove_file(&first.key).unwrap();
        let again = ensure_self_signed(dir.path()).unwrap();
        assert!(again.generated);
        assert_ne!(first.fingerprint, again.fingerprint);
    }

    #[test]
    fn bad_files_are_reported_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        let e = load_certs(&junk).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate(_)), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = server_config(&missing, &junk).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        assert!(load_key(&junk).is_err());
    }

    #[test]
    fn a_key_that_does_not_match_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let ca = ensure_self_signed(a.path()).unwrap();
        let cb = ensure_self_signed(b.path()).unwrap();
        assert!(server_config(&ca.cert, &cb.key).is_err());
    }

    #[test]
    fn setup_only_when_a_tls_socket_is_configured() {
        let dir = tempfile::tempdir().unwrap();
        let udp: Vec<ListenSpec> = vec!["udp:127.0.0.1:0".parse().unwrap()];
        assert!(setup(&udp, None, None, &[], dir.path()).unwrap().is_none());
        assert!(!dir.path().join("tls").exists(), "nothing generated");
        let tls: Vec<ListenSpec> = vec!["tls:127.0.0.1:0".parse().unwrap()];
        let t = setup(&tls, None, None, &[], dir.path()).unwrap().unwrap();
        assert!(t.cert.generated);
        // A configured pair is used as given.
        let other = tempfile::tempdir().unwrap();
        let files = ensure_self_signed(other.path()).unwrap();
        let t2 = setup(&tls, Some(&files.cert), Some(&files.key), &[], dir.path())
            .unwrap()
            .unwrap();
        assert_eq!(t2.cert.fingerprint, files.fingerprint);
        assert!(!t2.cert.generated);
    }
}
