//! Every listener's defences against connections that cost without asking anything: a
//! cap on open connections, a deadline for a connection's first bytes (before HTTP/1 or
//! HTTP/2 is even known), hyper's header-read timeout (which also closes idle HTTP/1
//! keep-alive connections), an idle timeout for connections with no request in flight
//! (HTTP/2 peers that only answer pings), a timeout between request body chunks and a
//! deadline for the whole body (slow drips). Connections that hold a slot without asking
//! anything are closed within seconds, so they cannot keep a port unreachable.

use axum_server::accept::Accept;
use futures::future::BoxFuture;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
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
    /// Seconds a whole request body may take to arrive.
    #[arg(long, default_value_t = 60)]
    pub body_deadline_secs: u64,
    /// Seconds a connection may stay open with no request in flight.
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_secs: u64,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 4096,
            header_timeout_secs: 10,
            body_timeout_secs: 10,
            body_deadline_secs: 60,
            idle_timeout_secs: 60,
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
    /// The whole-body deadline.
    pub fn body_deadline(&self) -> Duration {
        Duration::from_secs(self.body_deadline_secs.max(1))
    }
    /// The idle-connection timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }
}

/// An acceptor that admits at most `max_connections` at once and wraps each in [`Guarded`].
#[derive(Clone)]
pub struct Limited<A> {
    inner: A,
    slots: Arc<Semaphore>,
    max: usize,
    first_bytes: Duration,
    idle: Duration,
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
            idle: limits.idle_timeout(),
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
    A: Accept<Guarded<TcpStream>, Tracked<S>> + Clone + Send + Sync + 'static,
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
        let (first_bytes, idle) = (self.first_bytes, self.idle);
        Box::pin(async move {
            let permit = permit.map_err(|_| io::Error::other("connection limit reached"))?;
            let _ = stream.set_nodelay(true);
            let activity = Arc::new(Activity::default());
            let guarded = Guarded {
                inner: stream,
                _permit: permit,
                first_bytes: Some(Box::pin(tokio::time::sleep(first_bytes))),
                activity: activity.clone(),
                idle,
                idle_check: Box::pin(tokio::time::sleep(idle)),
            };
            let tracked = Tracked {
                inner: service,
                activity,
            };
            inner.accept(guarded, tracked).await
        })
    }
}

/// Requests in flight on one connection, and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    last: std::sync::Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            last: std::sync::Mutex::new(Instant::now()),
        }
    }
}

/// Counts a connection's requests in flight for its [`Guarded`] stream.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last.lock().expect("lock") = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S, R> tower::Service<R> for Tracked<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(self.activity.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            drop(guard);
            r
        })
    }
}

/// A connection holding its slot until it closes, and closed if its first bytes do not
/// arrive in time (hyper's own timeouts start only once it knows the protocol).
pub struct Guarded<S> {
    inner: S,
    _permit: OwnedSemaphorePermit,
    first_bytes: Option<Pin<Box<tokio::time::Sleep>>>,
    activity: Arc<Activity>,
    idle: Duration,
    idle_check: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Guarded<S> {
    /// Whether the connection has had no request in flight for the idle timeout. Keeps
    /// the check's timer armed, so a connection that only answers pings is woken and shut.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.idle_check.as_mut().poll(cx).is_ready() {
            let next = if self.activity.in_flight.load(Ordering::Relaxed) > 0 {
                Instant::now() + self.idle
            } else {
                let last = *self.activity.last.lock().expect("lock");
                if last.elapsed() >= self.idle {
                    return true;
                }
                last + self.idle
            };
            self.idle_check.as_mut().reset(next.into());
        }
        false
    }
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
                if self.idle_expired(cx) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "idle connection",
                    )));
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

/// A request body that must arrive whole within a deadline: a body dripped a byte at a
/// time just under the inter-chunk timeout would otherwise hold its connection for ever.
pub struct DeadlineBody {
    inner: axum::body::Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    /// Wraps `inner`; the deadline starts now.
    pub fn new(inner: axum::body::Body, within: Duration) -> Self {
        DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(within)),
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(io::Error::new(
                io::ErrorKind::TimedOut,
                "request body took too long",
            )))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
