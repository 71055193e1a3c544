//! TLS to the brokers: the CA their certificates chain to, and the client's own certificate for brokers
//! that require one (mTLS). tonic's rustls support does the handshake; nothing here is hand-written crypto.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::error::ClientError;

/// Largest PEM file read (bytes).
const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// How the client speaks TLS to every broker.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// The CA bundle (PEM) the brokers' certificates must chain to.
    pub ca_pem: Vec<u8>,
    /// This client's certificate chain and private key (PEM), presented when a broker asks for one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name every broker's certificate is checked for, instead of the host dialed (a broker reached
    /// through an address its certificate does not name).
    pub server_name: Option<String>,
}

impl ClientTls {
    /// TLS with the CA bundle at `ca` and, with both set, the certificate `cert` and key `key`.
    pub fn from_files(
        ca: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<ClientTls, ClientError> {
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((read_pem(c)?, read_pem(k)?)),
            _ => {
                return Err(ClientError::InvalidArgument(
                    "a client certificate needs its key, and a key its certificate".into(),
                ))
            }
        };
        let ca_pem = read_pem(ca)?;
        if !String::from_utf8_lossy(&ca_pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(ClientError::InvalidArgument(format!(
                "{}: holds no PEM certificate (BEGIN CERTIFICATE)",
                ca.display()
            )));
        }
        Ok(ClientTls {
            ca_pem,
            identity,
            server_name: None,
        })
    }

    pub(crate) fn tonic_config(&self) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.server_name {
            c = c.domain_name(name.clone());
        }
        c
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, ClientError> {
    let bad = |why: String| ClientError::InvalidArgument(format!("{}: {why}", path.display()));
    let len = std::fs::metadata(path)
        .map_err(|e| bad(format!("cannot read it: {e}")))?
        .len();
    if len > PEM_FILE_BYTES_MAX {
        return Err(bad(format!(
            "{len} bytes: larger than a PEM file can be ({PEM_FILE_BYTES_MAX} bytes at most)"
        )));
    }
    std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))
}
