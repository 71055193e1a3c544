//! Dialing another broker: plain TCP, or TCP then a TLS session with the current dial configuration (a
//! reloaded certificate is presented from the next connection on). The server's certificate must name the
//! host dialed (its DNS name or IP address) and chain to the cluster's CA.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::Tls;

/// Longest a TCP connect and TLS handshake to another broker may take together.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// A tonic connector that speaks TLS to the address of the URI (`http://host:port`).
#[derive(Debug, Clone)]
pub struct TlsConnector {
    tls: Arc<Tls>,
}

type Connecting = Pin<
    Box<
        dyn Future<Output = io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send,
    >,
>;

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.tls.current().dial.clone();
        Box::pin(async move {
            let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
            let host = uri
                .host()
                .ok_or_else(|| invalid(format!("{uri}: no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri
                .port_u16()
                .ok_or_else(|| invalid(format!("{uri}: no port")))?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| invalid(format!("{host}: not a DNS name or IP address: {e}")))?;
            let dial = async {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
            };
            let tls = tokio::time::timeout(DIAL_TIMEOUT, dial)
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no TLS session with {host}:{port} within {DIAL_TIMEOUT:?}"),
                    )
                })??;
            Ok(TokioIo::new(tls))
        })
    }
}

/// A channel to `endpoint` that connects on first use: over TLS when `tls` is set.
pub fn connect_lazy(endpoint: &Endpoint, tls: Option<&Arc<Tls>>) -> Channel {
    match tls {
        None => endpoint.connect_lazy(),
        Some(tls) => endpoint.connect_with_connector_lazy(TlsConnector { tls: tls.clone() }),
    }
}

/// A channel to `endpoint`, connected now: over TLS when `tls` is set.
pub async fn connect(
    endpoint: &Endpoint,
    tls: Option<&Arc<Tls>>,
) -> Result<Channel, tonic::transport::Error> {
    match tls {
        None => endpoint.connect().await,
        Some(tls) => {
            endpoint
                .connect_with_connector(TlsConnector { tls: tls.clone() })
                .await
        }
    }
}
