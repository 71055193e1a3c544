//! Certificates made in the test (`rcgen`): a CA per test, certificates it signs written as PEM files, and
//! an HTTPS GET that trusts only that CA (the HTTP listener of a broker with TLS speaks nothing else).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use crate::{run_ferry, wait_until, Ferryd};

/// A certificate authority whose files live in `dir`.
pub struct Pki {
    dir: PathBuf,
    name: String,
    ca: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A new CA named `name`; its certificate is written to `dir/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        let key = KeyPair::generate().expect("CA key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let ca = p.self_signed(&key).expect("CA certificate");
        std::fs::write(dir.join(format!("{name}.pem")), ca.pem()).expect("write CA");
        Pki {
            dir: dir.to_owned(),
            name: name.to_owned(),
            ca,
            key,
        }
    }

    /// The CA certificate's PEM file.
    pub fn ca(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// The CA certificate as PEM.
    pub fn ca_pem(&self) -> Vec<u8> {
        self.ca.pem().into_bytes()
    }

    /// A certificate for `names` (DNS names, or IP addresses), written as `<stem>.pem` and `<stem>.key`.
    pub fn issue(&self, stem: &str, names: &[&str]) -> Issued {
        let p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
        self.sign(stem, p)
    }

    /// A certificate for `names` that expired in 2020.
    pub fn issue_expired(&self, stem: &str, names: &[&str]) -> Issued {
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
        p.not_before = rcgen::date_time_ymd(2019, 1, 1);
        p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        self.sign(stem, p)
    }

    /// A broker's certificate: `broker-<id>` (the default `tls_peer_name`) and 127.0.0.1.
    pub fn broker(&self, id: u64) -> Issued {
        self.issue(
            &format!("broker-{id}"),
            &[&format!("broker-{id}"), "127.0.0.1"],
        )
    }

    fn sign(&self, stem: &str, p: CertificateParams) -> Issued {
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.ca, &self.key).expect("sign");
        let issued = Issued {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
        };
        // Written whole and renamed into place: a broker reloading meanwhile never reads half a file.
        for (path, pem) in [
            (&issued.cert, cert.pem()),
            (&issued.key, key.serialize_pem()),
        ] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, pem).expect("write PEM");
            std::fs::rename(&tmp, path).expect("rename PEM");
        }
        issued
    }
}

impl Issued {
    /// `ferryd` flags serving this certificate, trusting `ca` for peers.
    pub fn broker_flags(&self, ca: &Path) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
            "--tls-ca".into(),
            ca.display().to_string(),
        ]
    }
}

/// Starts a cluster of one broker per dir, each with its own certificate of `pki` (`broker-N`, the default
/// `tls_peer_name`) and `extra` flags; returns the certificates and the brokers, once every broker is
/// ready over HTTPS ([`wait_ready_tls`]).
pub fn start_secure_cluster(
    pki: &Pki,
    dirs: &[tempfile::TempDir],
    extra: &[&str],
) -> (Vec<Issued>, Vec<Ferryd>) {
    let certs: Vec<Issued> = (1..=dirs.len() as u64).map(|id| pki.broker(id)).collect();
    let ca = pki.ca();
    let brokers = crate::cluster::start_cluster_each(dirs, |id| {
        let mut f = certs[id as usize - 1].broker_flags(&ca);
        f.extend(extra.iter().map(|s| s.to_string()));
        f
    });
    wait_ready_tls(&brokers, &pki.ca_pem());
    (certs, brokers)
}

/// Waits until every broker answers `/readyz` over HTTPS and knows the controller's and every
/// partition's leader.
pub fn wait_ready_tls(brokers: &[Ferryd], ca: &[u8]) {
    for b in brokers {
        wait_until(Duration::from_secs(30), "broker ready over HTTPS", || {
            if https_get(&b.http, "/readyz", ca).0 != 200 {
                return false;
            }
            let (_, body) = https_get(&b.http, "/health/cluster", ca);
            serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|h| {
                h["controller_leader"].as_u64().is_some_and(|l| l != 0)
                    && h["leaderless"].as_array().is_some_and(|a| a.is_empty())
            })
        });
    }
}

/// The `sha256:HEX` of `token` a broker's `auth_tokens` holds, from `ferry token hash`.
pub fn token_hash(token: &str) -> String {
    let out = run_ferry(
        "unused:1",
        &["token", "hash"],
        Some(format!("{token}\n").as_bytes()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(h.starts_with("sha256:") && h.len() == 7 + 64, "{h}");
    h
}

/// GET `path` over HTTPS from `addr` (an IP address and port), trusting only `ca_pem`: (status, body), or
/// (0, why) when no TLS session or answer came.
pub fn https_get(addr: &str, path: &str, ca_pem: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile_certs(ca_pem) {
        roots.add(c).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
    let name = rustls::pki_types::ServerName::try_from(host).expect("server name");
    let Ok(conn) = rustls::ClientConnection::new(Arc::new(config), name) else {
        return (0, "no TLS client".into());
    };
    let Ok(tcp) = std::net::TcpStream::connect(addr) else {
        return (0, "no connection".into());
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    if let Err(e) = write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    ) {
        return (0, e.to_string());
    }
    let mut buf = Vec::new();
    if let Err(e) = tls.read_to_end(&mut buf) {
        // A server closing without close_notify after a whole answer is fine; no answer is not.
        if buf.is_empty() {
            return (0, e.to_string());
        }
    }
    crate::http_response(&String::from_utf8_lossy(&buf))
}

/// The certificates of a PEM buffer (rcgen writes one per file).
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates")
}
