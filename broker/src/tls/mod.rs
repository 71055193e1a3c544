//! TLS for the broker: the rustls configurations of its listeners and of its connections to other brokers,
//! built from PEM files and rebuilt when the files change (a rotated certificate is used by the next
//! handshake, without a restart), and the broker id a peer's certificate names (`names.rs`).
//!
//! One certificate per broker serves every listener and is presented when it dials another broker. Peers
//! are verified against the cluster's CA (`ca`) and must present a certificate (mTLS) on the peer port;
//! clients must present one signed by `client_ca` (or the cluster CA) when `client_ca` is set. Only a
//! certificate of the cluster's CA speaks for a broker ([`Tls::is_cluster_certificate`]). rustls with the *ring* provider does the cryptography; nothing here
//! is hand-written crypto.

pub mod connect;
pub mod names;

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::pki_types::UnixTime;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_util::sync::CancellationToken;

pub use names::PeerNames;

/// Largest PEM file read (bytes): a certificate chain or key is a few KiB; a path pointing at something
/// else must not be read whole into memory.
const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Most certificates in one PEM file (a chain, or a CA bundle).
const PEM_CERTS_MAX: usize = 256;

/// The PEM files TLS is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This broker's certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The cluster's CA bundle: other brokers' certificates are verified against it.
    pub ca: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs (or by `ca`).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut p = vec![self.cert.as_path(), self.key.as_path(), self.ca.as_path()];
        p.extend(self.client_ca.as_deref());
        p
    }
}

/// Why TLS could not be set up from the files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("TLS: {0}")]
    Config(String),
}

/// The configurations of one generation of the files.
#[derive(Debug)]
pub struct Material {
    /// Client listeners: TLS, with client certificates required when `client_ca` is set.
    pub client_listener: Arc<ServerConfig>,
    /// The peer port: mTLS, certificates from the cluster's CA only.
    pub peer_listener: Arc<ServerConfig>,
    /// The HTTP listener (probes and metrics): TLS without client certificates, HTTP/1.1.
    pub http_listener: Arc<ServerConfig>,
    /// Dialing another broker: the cluster's CA as roots, this broker's certificate as client identity.
    pub dial: Arc<ClientConfig>,
    /// Verifies a certificate chain against the cluster's CA alone (the peer port's verifier).
    pub cluster_verifier: Arc<dyn ClientCertVerifier>,
}

/// Identifies the files' contents: a change of any modification time or length means a reload.
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// TLS of one broker: the current [`Material`], replaced when the files change.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    /// How peers' certificates name their broker ids.
    pub peer_names: PeerNames,
    current: RwLock<(Stamp, Arc<Material>)>,
}

impl Tls {
    /// Reads the files and builds the configurations; any error names the file and what is wrong.
    pub fn load(files: TlsFiles, peer_names: PeerNames) -> Result<Arc<Tls>, TlsError> {
        let stamp = stamp(&files);
        let material = Arc::new(build(&files)?);
        Ok(Arc::new(Tls {
            files,
            peer_names,
            current: RwLock::new((stamp, material)),
        }))
    }

    /// The configurations to use for the next handshake.
    pub fn current(&self) -> Arc<Material> {
        self.current.read().1.clone()
    }

    /// Whether `chain` (leaf first, as a handshake presented it) chains to the cluster's CA, rather than
    /// only to a client CA.
    pub fn is_cluster_certificate(&self, chain: &[CertificateDer<'static>]) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        self.current()
            .cluster_verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .is_ok()
    }

    /// Rebuilds the configurations if a file changed since the last build. A change that does not build
    /// (a half-written file, a key that does not match) keeps the old configurations and is reported; the
    /// next check tries again.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.files);
        if self.current.read().0 == now {
            return Ok(false);
        }
        let material = build(&self.files);
        let mut current = self.current.write();
        match material {
            Ok(m) => {
                *current = (now, Arc::new(m));
                Ok(true)
            }
            Err(e) => {
                // Remember the stamp: the same broken files are reported once, not every check.
                current.0 = now;
                Err(e)
            }
        }
    }

    /// Checks the files every `every` until `cancel` fires, logging each reload and each failed one.
    pub fn watch(self: &Arc<Self>, every: Duration, cancel: CancellationToken) {
        let tls = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let Some(tls) = tls.upgrade() else { return };
                match tls.reload_if_changed() {
                    Ok(true) => {
                        metrics::counter!("ferry_tls_reloads_total", "result" => "ok").increment(1);
                        tracing::info!("TLS certificates reloaded; new handshakes use them");
                    }
                    Ok(false) => {}
                    Err(e) => {
                        metrics::counter!("ferry_tls_reloads_total", "result" => "error")
                            .increment(1);
                        tracing::error!("TLS files changed but do not load ({e}); still using the previous ones");
                    }
                }
            }
        });
    }
}

fn stamp(files: &TlsFiles) -> Stamp {
    files
        .paths()
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

fn build(files: &TlsFiles) -> Result<Material, TlsError> {
    let chain = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let cluster_ca = read_certs(&files.ca)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = |e: rustls::Error| TlsError::Config(e.to_string());

    let peer_roots = roots(&files.ca, &cluster_ca)?;
    let peer_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(peer_roots.clone()), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(format!("cluster CA {}: {e}", files.ca.display())))?;
    let server = || {
        ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config)
    };
    let mut peer_listener = server()?
        .with_client_cert_verifier(peer_verifier.clone())
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| key_mismatch(files, e))?;
    peer_listener.alpn_protocols = vec![b"h2".to_vec()];

    let mut client_listener = match &files.client_ca {
        None => server()?.with_no_client_auth(),
        Some(path) => {
            let mut client_roots = roots(path, &read_certs(path)?)?;
            for c in &cluster_ca {
                // Already checked by `roots` for the cluster CA.
                let _ = client_roots.add(c.clone());
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(client_roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| TlsError::Config(format!("client CA {}: {e}", path.display())))?;
            server()?.with_client_cert_verifier(verifier)
        }
    }
    .with_single_cert(chain.clone(), key.clone_key())
    .map_err(|e| key_mismatch(files, e))?;
    client_listener.alpn_protocols = vec![b"h2".to_vec()];

    let mut http_listener = server()?
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| key_mismatch(files, e))?;
    http_listener.alpn_protocols = vec![b"http/1.1".to_vec()];

    let mut dial = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config)?
        .with_root_certificates(peer_roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| key_mismatch(files, e))?;
    dial.alpn_protocols = vec![b"h2".to_vec()];

    Ok(Material {
        client_listener: Arc::new(client_listener),
        peer_listener: Arc::new(peer_listener),
        http_listener: Arc::new(http_listener),
        dial: Arc::new(dial),
        cluster_verifier: peer_verifier,
    })
}

fn key_mismatch(files: &TlsFiles, e: rustls::Error) -> TlsError {
    TlsError::Config(format!(
        "certificate {} with key {}: {e}",
        files.cert.display(),
        files.key.display()
    ))
}

fn roots(path: &Path, certs: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c.clone()).map_err(|e| TlsError::File {
            path: path.to_owned(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// The bytes of `path`, refused past `max` bytes: a path pointing at something else (a log, a device) must
/// not be read whole into memory. `what` names the expected file in the refusal.
pub fn read_bounded(path: &Path, max: u64, what: &str) -> Result<Vec<u8>, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("cannot read it: {e}"))?
        .len();
    if len > max {
        return Err(format!(
            "{len} bytes: larger than {what} can be ({max} bytes at most)"
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    read_bounded(
        path,
        PEM_FILE_BYTES_MAX,
        "a PEM file of certificates or a key",
    )
    .map_err(|reason| TlsError::File {
        path: path.to_owned(),
        reason,
    })
}

/// The certificates of a PEM file, at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let err = |reason: String| TlsError::File {
        path: path.to_owned(),
        reason,
    };
    let mut certs = Vec::new();
    for c in rustls_pemfile::certs(&mut BufReader::new(pem.as_slice())) {
        let c = c.map_err(|e| err(format!("not PEM: {e}")))?;
        if certs.len() == PEM_CERTS_MAX {
            return Err(err(format!("more than {PEM_CERTS_MAX} certificates")));
        }
        certs.push(c);
    }
    if certs.is_empty() {
        return Err(err("holds no PEM certificate (BEGIN CERTIFICATE)".into()));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem(path)?;
    rustls_pemfile::private_key(&mut BufReader::new(pem.as_slice()))
        .map_err(|e| TlsError::File {
            path: path.to_owned(),
            reason: format!("not PEM: {e}"),
        })?
        .ok_or_else(|| TlsError::File {
            path: path.to_owned(),
            reason:
                "holds no PEM private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
                    .into(),
        })
}

#[cfg(test)]
mod tests;
