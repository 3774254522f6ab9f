//! Serving one listener with bounds on what a client can hold: connections at once (more are
//! accepted and closed at once, so one listener cannot take the file descriptors the other
//! needs), the time from accept to a complete request head (TLS handshake included; a
//! half-sent request is dropped), the time and size of a request body, and HTTP/2's concurrent
//! streams, header list size and keep-alive. Each accepted connection is driven by hyper here,
//! with optional TLS from [`crate::tls`], for both the ext_authz (gRPC, HTTP/2 only) and the
//! admin (HTTP/1.1 and HTTP/2) services.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::config::ServerConfig;
use crate::tls::Reloading;

/// Which listener, for limits, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Envoy ext_authz gRPC: HTTP/2 only.
    ExtAuthz,
    /// Admin REST and gRPC: HTTP/1.1 and HTTP/2.
    Admin,
}

impl Kind {
    /// The name used in logs and the `listener` metric label.
    pub fn name(self) -> &'static str {
        match self {
            Kind::ExtAuthz => "ext_authz",
            Kind::Admin => "admin",
        }
    }
}

/// The bounds one listener enforces (from `[server]`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// From accept to the first complete request head; each later HTTP/1 head likewise.
    pub header_read_timeout: Duration,
    /// From a request's head to the end of its body.
    pub body_read_timeout: Duration,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest request head, in bytes.
    pub max_header_bytes: u32,
    /// HTTP/2 streams open at once per connection.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 keep-alive ping after this long without a frame from the client.
    pub http2_keepalive_interval: Duration,
    /// The connection is closed when the ping is not answered within this.
    pub http2_keepalive_timeout: Duration,
}

impl Limits {
    /// The limits `[server]` sets for the listener `kind`.
    pub fn for_listener(server: &ServerConfig, kind: Kind) -> Limits {
        Limits {
            max_connections: match kind {
                Kind::ExtAuthz => server.extauthz_max_connections,
                Kind::Admin => server.admin_max_connections,
            },
            header_read_timeout: server.header_read_timeout,
            body_read_timeout: server.body_read_timeout,
            max_body_bytes: server.max_body_bytes,
            max_header_bytes: server.max_header_bytes,
            http2_max_concurrent_streams: server.http2_max_concurrent_streams,
            http2_keepalive_interval: server.http2_keepalive_interval,
            http2_keepalive_timeout: server.http2_keepalive_timeout,
        }
    }
}

/// Why reading a request body stopped. A body over `server.max_body_bytes` fails with
/// [`http_body_util::LengthLimitError`] instead, which the admin REST API answers with 413.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body did not arrive whole within `server.body_read_timeout`.
    #[error("request body not received within {0:?}")]
    Timeout(Duration),
}

/// A request body bounded in time (from the request's head) and in size.
pub struct LimitedBody {
    inner: Limited<Incoming>,
    started: Instant,
    timeout: Duration,
    // Made only when the body is not already there when first read, so a request whose body
    // came with its head costs no timer.
    deadline: Option<Pin<Box<Sleep>>>,
}

/// The error of a [`LimitedBody`]: a [`BodyError`] or a [`http_body_util::LengthLimitError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl LimitedBody {
    fn new(inner: Incoming, limits: &Limits) -> LimitedBody {
        LimitedBody {
            inner: Limited::new(inner, limits.max_body_bytes),
            started: Instant::now(),
            timeout: limits.body_read_timeout,
            deadline: None,
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                let (started, timeout) = (this.started, this.timeout);
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(started + timeout)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Timeout(timeout).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => ready,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a listener serves: a tower service that answers every bounded request (never an error),
/// cloned for each connection.
pub trait Served<B>:
    tower::Service<
        Request<LimitedBody>,
        Response = Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> Served<B> for S where
    S: tower::Service<
            Request<LimitedBody>,
            Response = Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// A response body a listener can send.
pub trait ServedBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

impl<B> ServedBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

/// The per-connection adapter from hyper to the tower service: bounds the body and notes that
/// a complete request head has arrived.
struct PerConnection<S> {
    service: S,
    limits: Arc<Limits>,
    head_seen: Arc<AtomicBool>,
}

// `Response = Response<B>` spelled out: it is what ties `B` to `S` here.
impl<S, B> hyper::service::Service<Request<Incoming>> for PerConnection<S>
where
    S: Served<B> + tower::Service<Request<LimitedBody>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = tower::util::Oneshot<S, Request<LimitedBody>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.head_seen.store(true, Ordering::Relaxed);
        let request = request.map(|body| LimitedBody::new(body, &self.limits));
        self.service.clone().oneshot(request)
    }
}

/// Serves `service` on `listener` until `stop` is cancelled, then lets the connections finish
/// what they are doing (HTTP/2 `GOAWAY`, HTTP/1 close after the response) and returns once
/// every one of them is closed.
pub async fn serve<S, B>(
    kind: Kind,
    listener: TcpListener,
    tls: Option<Arc<Reloading>>,
    limits: Limits,
    service: S,
    stop: CancellationToken,
) where
    S: Served<B>,
    B: ServedBody,
{
    let name = kind.name();
    let builder = Arc::new(connection_builder(kind, &limits));
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // Out of file descriptors or memory: accepting again at once would spin.
                tracing::warn!(listener = name, error = %e, "accept failed; pausing");
                metrics::counter!("verifyiam_accept_errors_total", "listener" => name).increment(1);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // At the cap: closed at once rather than left in the backlog, so the client learns
            // now and the descriptor is back straight away.
            metrics::counter!("verifyiam_connections_refused_total", "listener" => name)
                .increment(1);
            drop(tcp);
            continue;
        };
        // Nagle off: a Check answer is several small HTTP/2 frames, and with Nagle on against a
        // delayed-ACK client the last of them waits ~40 ms.
        let _ = tcp.set_nodelay(true);
        let connection = Connection {
            name,
            builder: builder.clone(),
            limits: limits.clone(),
            stop: stop.clone(),
        };
        let (service, tls) = (service.clone(), tls.clone());
        let open = metrics::gauge!("verifyiam_connections_open", "listener" => name);
        open.increment(1.0);
        tokio::spawn(async move {
            connection.run(tcp, tls, service).await;
            open.decrement(1.0);
            drop(slot);
        });
    }
    drop(listener);
    // Every connection holds a slot: all of them back means all closed.
    let _ = slots.acquire_many(limits.max_connections as u32).await;
}

/// Descriptors kept aside for what is not a served connection: the store, upstream
/// connections to key sets and tokeninfo, logs.
const DESCRIPTOR_MARGIN: u64 = 128;

/// Warns when the listeners' connection caps together do not fit the process's open-file limit:
/// then one listener filling up could still leave the other without descriptors. Linux only
/// (reads `/proc/self/limits`); elsewhere it says nothing.
pub fn check_descriptor_budget(server: &ServerConfig) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let Some(soft) = open_files_soft_limit(&limits) else {
        return;
    };
    let caps = (server.extauthz_max_connections + server.admin_max_connections) as u64;
    if caps + DESCRIPTOR_MARGIN > soft {
        tracing::warn!(
            open_files_limit = soft,
            extauthz_max_connections = server.extauthz_max_connections,
            admin_max_connections = server.admin_max_connections,
            "the connection caps and a margin of {DESCRIPTOR_MARGIN} exceed the open-file limit; \
             raise the limit (ulimit -n) or lower the caps"
        );
    }
}

/// The soft "Max open files" of a `/proc/self/limits` text; `None` when unlimited or absent.
fn open_files_soft_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// An accept error that concerns one connection only (the peer went away before the accept).
fn is_per_connection(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::WouldBlock
    )
}

fn connection_builder(kind: Kind, limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if kind == Kind::ExtAuthz {
        builder = builder.http2_only();
    }
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes as usize)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes)
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_timeout);
    builder
}

/// A connection that says it takes no vectored writes. HTTP/2 then copies every frame under
/// 1 KiB into its write buffer (only those under 256 bytes otherwise), so the answers of many
/// streams leave in one write where each larger one would be flushed on its own: an allowed
/// answer with its dynamic metadata, or a denial with its JSON body, is a few hundred bytes.
struct Unvectored<T>(T);

impl<T: AsyncRead + Unpin> AsyncRead for Unvectored<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Unvectored<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    // `is_write_vectored` keeps its default: false.
}

struct Connection {
    name: &'static str,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Arc<Limits>,
    stop: CancellationToken,
}

impl Connection {
    async fn run<S, B>(self, tcp: TcpStream, tls: Option<Arc<Reloading>>, service: S)
    where
        S: Served<B>,
        B: ServedBody,
    {
        let head_deadline = Instant::now() + self.limits.header_read_timeout;
        match tls {
            None => {
                self.drive(TokioIo::new(Unvectored(tcp)), service, head_deadline)
                    .await
            }
            Some(tls) => {
                let handshake = tls.acceptor().accept(tcp);
                match tokio::time::timeout_at(head_deadline, handshake).await {
                    Ok(Ok(stream)) => {
                        self.drive(TokioIo::new(Unvectored(stream)), service, head_deadline)
                            .await
                    }
                    Ok(Err(e)) => {
                        metrics::counter!("verifyiam_tls_handshake_failures_total", "listener" => self.name)
                            .increment(1);
                        tracing::debug!(listener = self.name, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics::counter!("verifyiam_connections_timed_out_total", "listener" => self.name)
                            .increment(1);
                        tracing::debug!(listener = self.name, "TLS handshake timed out");
                    }
                }
            }
        }
    }

    async fn drive<I, S, B>(&self, io: I, service: S, head_deadline: Instant)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        S: Served<B>,
        B: ServedBody,
    {
        let head_seen = Arc::new(AtomicBool::new(false));
        let service = PerConnection {
            service,
            limits: self.limits.clone(),
            head_seen: head_seen.clone(),
        };
        let connection = self.builder.serve_connection(io, service);
        tokio::pin!(connection);
        let watchdog = tokio::time::sleep_until(head_deadline);
        tokio::pin!(watchdog);
        let (mut watching, mut stopping) = (true, false);
        loop {
            tokio::select! {
                done = connection.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(listener = self.name, error = %e, "connection ended with an error");
                    }
                    return;
                }
                // The first request head must be complete by the deadline. Later HTTP/1 heads
                // have hyper's header_read_timeout; later HTTP/2 ones the keep-alive ping, which
                // a client in the middle of a header block cannot answer.
                _ = &mut watchdog, if watching => {
                    if !head_seen.load(Ordering::Relaxed) {
                        metrics::counter!("verifyiam_connections_timed_out_total", "listener" => self.name)
                            .increment(1);
                        tracing::debug!(listener = self.name, "no complete request head in time; closing");
                        return;
                    }
                    watching = false;
                }
                _ = self.stop.cancelled(), if !stopping => {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_soft_limit_is_read_from_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             63704                63704                processes \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(open_files_soft_limit(text), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(open_files_soft_limit(unlimited), None);
        assert_eq!(open_files_soft_limit(""), None);
    }
}
