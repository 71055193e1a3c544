//! The connections a listener serves: accepted within its connection limit (`limits.rs`), then, with TLS
//! configured, a TLS handshake with the listener's current configuration. Handshakes run concurrently, each
//! within a deadline, so a client that connects and says nothing holds one permit for a bounded time and
//! delays nobody else. Each connection carries [`ConnInfo`] into its requests' extensions: the address and
//! the certificate the other side presented, if any.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tonic::transport::server::Connected;

use super::limits::{self, Limited};
use crate::tls::names::CertNames;
use crate::tls::{Material, Tls};

/// Longest a TLS handshake may take before the connection is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Established TLS connections waiting for the server to take them.
const HANDSHAKED_QUEUE_MAX: usize = 64;

/// Which of a broker's TLS configurations a listener uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Peer,
    Http,
}

impl Side {
    fn config(self, m: &Material) -> Arc<ServerConfig> {
        match self {
            Side::Client => m.client_listener.clone(),
            Side::Peer => m.peer_listener.clone(),
            Side::Http => m.http_listener.clone(),
        }
    }
}

/// What a request knows about its connection (made once per connection, cloned into each request).
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The names in the leaf certificate the other side presented (verified by the listener's TLS
    /// configuration), read when the connection was accepted.
    pub peer_cert: Option<Arc<CertNames>>,
    /// That certificate chains to the cluster's CA (`tls_ca`), not only to a client CA: a certificate
    /// naming a broker makes its holder that broker only then.
    pub cluster_cert: bool,
}

/// One served connection. A TLS one says whether the other side's certificate chains to the cluster's CA
/// (only such a certificate may speak for a broker: see [`ConnInfo::cluster_cert`]).
pub enum Conn {
    Plain(Limited),
    Tls(Box<tokio_rustls::server::TlsStream<Limited>>, bool),
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match self {
            Conn::Plain(c) => ConnInfo {
                remote: c.remote(),
                peer_cert: None,
                cluster_cert: false,
            },
            Conn::Tls(t, cluster_cert) => {
                let (io, session) = t.get_ref();
                ConnInfo {
                    remote: io.remote(),
                    cluster_cert: *cluster_cert,
                    peer_cert: session
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| Arc::new(CertNames::of(c))),
                }
            }
        }
    }
}

/// The connections `listener` accepts within `permits` (`name` labels the metrics), through a TLS
/// handshake with `tls`'s configuration for `side` when TLS is on.
pub fn incoming(
    listener: TcpListener,
    permits: Arc<Semaphore>,
    name: &'static str,
    tls: Option<(Arc<Tls>, Side)>,
) -> Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>> {
    let accepted = limits::incoming(listener, permits, name);
    let Some((tls, side)) = tls else {
        return Box::pin(accepted.map(|c| c.map(Conn::Plain)));
    };
    let (tx, rx) = mpsc::channel(HANDSHAKED_QUEUE_MAX);
    tokio::spawn(async move {
        let mut accepted = std::pin::pin!(accepted);
        loop {
            // The server dropped the stream (it stopped): stop accepting, which closes the listener.
            let next = tokio::select! {
                _ = tx.closed() => return,
                next = accepted.next() => next,
            };
            match next {
                None => return,
                Some(Err(e)) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(conn)) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(side.config(&tls.current()));
                    let (tx, tls) = (tx.clone(), tls.clone());
                    tokio::spawn(async move {
                        let remote = conn.remote();
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
                            Ok(Ok(s)) => {
                                let cluster_cert = match side {
                                    // Its verifier trusts the cluster's CA alone.
                                    Side::Peer => true,
                                    Side::Http => false,
                                    // Client CAs are trusted too: check the chain against the cluster's.
                                    Side::Client => s
                                        .get_ref()
                                        .1
                                        .peer_certificates()
                                        .is_some_and(|chain| tls.is_cluster_certificate(chain)),
                                };
                                let _ = tx.send(Ok(Conn::Tls(Box::new(s), cluster_cert))).await;
                            }
                            Ok(Err(e)) => refused(name, remote, &e.to_string()),
                            Err(_) => refused(name, remote, "no handshake within the deadline"),
                        }
                    });
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

fn refused(listener: &'static str, remote: Option<SocketAddr>, why: &str) {
    metrics::counter!("ferry_tls_handshake_failures_total", "listener" => listener).increment(1);
    tracing::debug!(?remote, listener, "TLS handshake failed: {why}");
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(c) => Pin::new(c).poll_read(cx, buf),
            Conn::Tls(t, _) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(c) => Pin::new(c).poll_write(cx, buf),
            Conn::Tls(t, _) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(c) => Pin::new(c).poll_flush(cx),
            Conn::Tls(t, _) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(c) => Pin::new(c).poll_shutdown(cx),
            Conn::Tls(t, _) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(c) => Pin::new(c).poll_write_vectored(cx, bufs),
            Conn::Tls(t, _) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(c) => c.is_write_vectored(),
            Conn::Tls(t, _) => t.is_write_vectored(),
        }
    }
}
