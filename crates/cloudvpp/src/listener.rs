//! Every listener's defences against connections that cost without asking anything: a
//! cap on open connections, a deadline for a connection's first bytes (before HTTP/1 or
//! HTTP/2 is even known), hyper's header-read timeout (which also closes idle keep-alive
//! connections), and a timeout between request body frames. A few hundred silent or
//! half-sent connections then cannot make a port unreachable.

use axum_server::accept::Accept;
use futures::future::BoxFuture;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connection limits of one listener.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ConnLimits {
    /// Most connections open at once on each listener; more are closed as they arrive.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Seconds a connection may take to send a request's headers (the first request, and
    /// each next one on a keep-alive connection, so it also closes idle connections).
    #[arg(long, default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Seconds a request body may pause between two chunks.
    #[arg(long, default_value_t = 10)]
    pub body_timeout_secs: u64,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 4096,
            header_timeout_secs: 10,
            body_timeout_secs: 10,
        }
    }
}

impl ConnLimits {
    /// The header-read timeout.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs.max(1))
    }
    /// The body inter-chunk timeout.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs.max(1))
    }
}

/// An acceptor that admits at most `max_connections` at once and wraps each in [`Guarded`].
#[derive(Clone)]
pub struct Limited<A> {
    inner: A,
    slots: Arc<Semaphore>,
    max: usize,
    first_bytes: Duration,
    last_warning: Arc<AtomicU64>,
}

impl<A> Limited<A> {
    /// Wraps `inner` (plain or TLS).
    pub fn new(inner: A, limits: &ConnLimits) -> Self {
        Limited {
            inner,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            max: limits.max_connections.max(1),
            first_bytes: limits.header_timeout(),
            last_warning: Arc::default(),
        }
    }

    fn warn_full(&self) {
        // At most one line a second: under a flood the log must not become the next victim.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.last_warning.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(
                max = self.max,
                "connection limit reached: closing new connections"
            );
        }
    }
}

impl<A, S> Accept<TcpStream, S> for Limited<A>
where
    A: Accept<Guarded<TcpStream>, S> + Clone + Send + Sync + 'static,
    A::Future: Send,
    S: Send + 'static,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = BoxFuture<'static, io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let permit = self.slots.clone().try_acquire_owned();
        if permit.is_err() {
            self.warn_full();
        }
        let inner = self.inner.clone();
        let first_bytes = self.first_bytes;
        Box::pin(async move {
            let permit = permit.map_err(|_| io::Error::other("connection limit reached"))?;
            let _ = stream.set_nodelay(true);
            let guarded = Guarded {
                inner: stream,
                _permit: permit,
                first_bytes: Some(Box::pin(tokio::time::sleep(first_bytes))),
            };
            inner.accept(guarded, service).await
        })
    }
}

/// A connection holding its slot until it closes, and closed if its first bytes do not
/// arrive in time (hyper's own timeouts start only once it knows the protocol).
pub struct Guarded<S> {
    inner: S,
    _permit: OwnedSemaphorePermit,
    first_bytes: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.first_bytes = None,
            Poll::Pending => {
                if let Some(deadline) = self.first_bytes.as_mut() {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no request bytes in time",
                        )));
                    }
                }
            }
            _ => {}
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
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
