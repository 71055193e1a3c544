//! Connection limits of a listener: at most a fixed number of open connections; one more is accepted and
//! closed at once (the client sees the connection refused and retries elsewhere), so a flood of connections
//! costs a bounded number of sockets, buffers and HTTP/2 windows (M7 in the durability audit).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A connection that holds one of its listener's permits while open, and is counted on
/// `ferry_connections_open{listener}` until dropped.
pub struct Limited {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    listener: &'static str,
}

impl Drop for Limited {
    fn drop(&mut self) {
        metrics::gauge!("ferry_connections_open", "listener" => self.listener).decrement(1.0);
    }
}

impl Limited {
    /// The address of the other side.
    pub fn remote(&self) -> Option<std::net::SocketAddr> {
        self.inner.peer_addr().ok()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The connections `listener` accepts, each holding one of `permits` while open (several listeners
/// sharing one pool share its bound). `name` labels the refusals metric.
pub fn incoming(
    listener: TcpListener,
    permits: Arc<Semaphore>,
    name: &'static str,
) -> impl Stream<Item = io::Result<Limited>> {
    let max = permits.available_permits();
    futures::stream::unfold((listener, permits), move |(listener, permits)| async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => return Some((Err(e), (listener, permits))),
            };
            match permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let _ = stream.set_nodelay(true);
                    metrics::gauge!("ferry_connections_open", "listener" => name).increment(1.0);
                    let limited = Limited {
                        inner: stream,
                        _permit: permit,
                        listener: name,
                    };
                    return Some((Ok(limited), (listener, permits)));
                }
                Err(_) => {
                    metrics::counter!("ferry_connections_refused_total", "listener" => name)
                        .increment(1);
                    tracing::debug!(%peer, listener = name, max, "connection limit reached; closed");
                    drop(stream);
                }
            }
        }
    })
}
