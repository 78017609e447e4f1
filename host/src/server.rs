//! The local HTTPS transport: a TCP listener, rustls, and hyper serving the
//! one router over HTTP/1.1 and HTTP/2. No plain-HTTP listener exists.
//!
//! Every phase of a connection has a deadline, so that a client cannot hold
//! one of the [`ServerLimits::max_connections`] slots by doing nothing:
//!
//! | phase | bound |
//! |---|---|
//! | TLS handshake | [`ServerLimits::handshake_timeout`] |
//! | end of handshake → first complete request head (HTTP/1 or HTTP/2, including the protocol sniff and a partial HTTP/2 preface) | [`ServerLimits::first_request_timeout`] |
//! | no request in flight (keep-alive, between requests) | [`ServerLimits::idle_timeout`] |
//! | later HTTP/1 request heads | [`ServerLimits::header_timeout`] (and the idle timeout) |
//! | a request body, as a whole (not per chunk) | [`ServerLimits::body_timeout`] and [`ServerLimits::min_body_rate`] |
//!
//! A request that has reached the router is never cut by the connection
//! deadlines; its body is bounded by the body deadline and the model by its
//! own sandbox deadline.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

/// Connection-level limits of the HTTPS server.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// From the end of the TLS handshake, the first request head (HTTP/1.1
    /// or HTTP/2) must have reached the router within this, or the
    /// connection is closed. This covers the bytes hyper reads to tell
    /// HTTP/1 from HTTP/2, a partial HTTP/2 preface, and an HTTP/2
    /// connection that sends its preface and settings but no request.
    pub first_request_timeout: Duration,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/1.1 keep-alive and HTTP/2 alike).
    ///
    /// The default, 30 s, is long enough for a client's connection pool to
    /// reuse a connection across a burst of requests and short enough that
    /// 1024 slots cannot be parked by a client that sends one request and
    /// then waits. It matches the HTTP/2 keep-alive ping interval and sits
    /// under common client pool idle times (90 s for reqwest and Go), so a
    /// client that finds the connection closed simply opens a new one (its
    /// unsent request is retried on a fresh connection). The idle clock
    /// starts when a response is handed to hyper: our responses are fully
    /// buffered, so this also bounds how long a client may take to read one.
    ///
    /// For HTTP/1.1 hyper starts `header_timeout` as soon as a keep-alive
    /// connection waits for its next request, so an idle HTTP/1.1
    /// connection is closed after the shorter of the two (10 s with the
    /// defaults, measured); this one is what bounds idle HTTP/2.
    pub idle_timeout: Duration,
    /// Request headers must arrive within this (HTTP/1.1, timed by hyper
    /// from when the connection waits for the next request; the first is
    /// also bounded by `first_request_timeout`).
    pub header_timeout: Duration,
    /// A request body must have arrived in full within this, counted from
    /// when the request reached the router (not per chunk). 60 s lets a
    /// maximal 16 MiB inference body arrive at ~280 KB/s and a 64 MiB
    /// upload at ~1.1 MB/s.
    pub body_timeout: Duration,
    /// After `body_rate_grace`, a request body must have averaged at least
    /// this many bytes per second since the request reached the router, or
    /// it fails (408) early instead of holding the connection until
    /// `body_timeout`. 0 turns the check off. The default, 1 KiB/s, is far
    /// below any real client and far above a byte-a-second dribble.
    pub min_body_rate: u64,
    /// How long a body may take before `min_body_rate` applies (5 s: a
    /// slow start, TCP slow start or a handler that reads the body late).
    pub body_rate_grace: Duration,
    /// Open connections at most; further ones are closed at once.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams: u32,
    /// How long in-flight requests get to finish on shutdown.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            min_body_rate: 1024,
            body_rate_grace: Duration::from_secs(5),
            max_connections: 1024,
            max_streams: 64,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` completes, then
/// stops accepting and lets open requests finish (up to the grace period).
pub async fn serve_tls(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let limits = Arc::new(limits);
    tokio::pin!(shutdown);

    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let limits = Arc::clone(&limits);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // Held until this task ends, whichever way: the slot is freed
            // when the connection is closed or dropped.
            let _permit = permit;
            let stream =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let activity = Arc::new(Activity::new());
            let service = Tracked {
                router,
                activity: Arc::clone(&activity),
                body: BodyLimits::from(&*limits),
            };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(true);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(limits.max_streams)
                .keep_alive_interval(Some(Duration::from_secs(30)));
            let connection = watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
            tokio::pin!(connection);
            let timer = tokio::time::sleep(limits.first_request_timeout);
            tokio::pin!(timer);
            loop {
                tokio::select! {
                    result = &mut connection => {
                        if let Err(error) = result {
                            tracing::debug!(%peer, error = %error, "connection ended with an error");
                        }
                        break;
                    }
                    () = &mut timer => {}
                    // The last request in flight finished: the idle clock starts.
                    () = activity.idle.notified() => {}
                }
                let now = Instant::now();
                match activity.deadline(&limits) {
                    // Nothing is in flight: dropping the connection closes
                    // the socket and cuts nothing short.
                    Some((at, phase)) if at <= now => {
                        tracing::debug!(%peer, phase, "closing the connection: deadline passed");
                        break;
                    }
                    Some((at, _)) => timer.as_mut().reset(at),
                    // Requests in flight: no deadline until the last one
                    // finishes (and notifies); look again now and then.
                    None => timer.as_mut().reset(now + limits.idle_timeout),
                }
            }
        });
    }

    drop(listener);
    tracing::info!("shutting down: waiting for open requests");
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
    }
    Ok(())
}

/// What one connection is doing, as seen from its service: how many
/// requests are in flight and since when it has been idle.
struct Activity {
    opened: Instant,
    state: Mutex<ActivityState>,
    /// Notified when the last request in flight finishes.
    idle: tokio::sync::Notify,
}

struct ActivityState {
    in_flight: usize,
    requests: u64,
    idle_since: Instant,
}

impl Activity {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            opened: now,
            state: Mutex::new(ActivityState {
                in_flight: 0,
                requests: 0,
                idle_since: now,
            }),
            idle: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a request that reached the router until the guard is dropped.
    fn begin(self: &Arc<Self>) -> InFlight {
        let mut state = self.lock();
        state.in_flight += 1;
        state.requests += 1;
        InFlight(Arc::clone(self))
    }

    /// When the connection must close if nothing happens before, and why;
    /// `None` while a request is in flight.
    fn deadline(&self, limits: &ServerLimits) -> Option<(Instant, &'static str)> {
        let state = self.lock();
        if state.in_flight > 0 {
            None
        } else if state.requests == 0 {
            Some((self.opened + limits.first_request_timeout, "first request"))
        } else {
            Some((state.idle_since + limits.idle_timeout, "idle"))
        }
    }
}

/// One request in flight on a connection.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            self.0.idle.notify_one();
        }
    }
}

/// The per-connection service: counts requests in flight, puts the body
/// deadline on each request body, and calls the router.
#[derive(Clone)]
struct Tracked {
    router: Router,
    activity: Arc<Activity>,
    body: BodyLimits,
}

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<axum::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        // Ends when the response head is ready (or hyper drops the future:
        // a reset stream, a closed connection).
        let in_flight = self.activity.begin();
        let limits = self.body;
        let request = request.map(|body| axum::body::Body::new(TimedBody::new(body, limits)));
        let router = self.router.clone();
        Box::pin(async move {
            let response = router.oneshot(request).await;
            drop(in_flight);
            response
        })
    }
}

/// A request body arrived too late or too slowly. Handlers see it in the
/// source chain of their body error (see [`is_body_timeout`]); the API
/// answers it with 408 Request Timeout.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BodyTimeout {
    /// The body was not complete within the body deadline.
    #[error("the request body was not complete within {limit:?} ({received} bytes received)")]
    Deadline {
        /// The deadline.
        limit: Duration,
        /// Bytes received by then.
        received: u64,
    },
    /// The body arrived slower than the minimum rate.
    #[error(
        "the request body arrived too slowly: {received} bytes in {elapsed:?}, \
         under the minimum of {min_rate} bytes/s"
    )]
    TooSlow {
        /// Bytes received.
        received: u64,
        /// Time since the request reached the server.
        elapsed: Duration,
        /// The minimum rate, in bytes per second.
        min_rate: u64,
    },
}

/// The [`BodyTimeout`] in `error`'s source chain (`error` included), if any.
pub fn find_body_timeout<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a BodyTimeout> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(timeout) = error.downcast_ref::<BodyTimeout>() {
            return Some(timeout);
        }
        next = error.source();
    }
    None
}

/// Whether `error` or one of its sources is a [`BodyTimeout`]: for example
/// axum's `BytesRejection` when the body was cut by the body deadline.
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    find_body_timeout(error).is_some()
}

/// The body deadline and minimum rate of one request.
#[derive(Debug, Clone, Copy)]
struct BodyLimits {
    timeout: Duration,
    min_rate: u64,
    grace: Duration,
}

impl From<&ServerLimits> for BodyLimits {
    fn from(limits: &ServerLimits) -> Self {
        Self {
            timeout: limits.body_timeout,
            min_rate: limits.min_body_rate,
            grace: limits.body_rate_grace,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body with an overall deadline and a minimum average rate,
/// both counted from when the request reached the router. A timer wakes the
/// reader at the next moment a limit could be missed, so the body fails
/// even when no bytes arrive at all.
struct TimedBody<B> {
    inner: B,
    limits: BodyLimits,
    started: Instant,
    received: u64,
    /// Created on the first poll that has to wait.
    timer: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl<B> TimedBody<B> {
    fn new(inner: B, limits: BodyLimits) -> Self {
        Self {
            inner,
            limits,
            started: Instant::now(),
            received: 0,
            timer: None,
            done: false,
        }
    }

    /// Fails when, at `now`, a limit has been missed.
    fn check(&self, now: Instant) -> Result<(), BodyTimeout> {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed >= self.limits.timeout {
            return Err(BodyTimeout::Deadline {
                limit: self.limits.timeout,
                received: self.received,
            });
        }
        let min_rate = self.limits.min_rate;
        if min_rate > 0
            && elapsed >= self.limits.grace
            && u128::from(self.received) * 1000 < u128::from(min_rate) * elapsed.as_millis()
        {
            return Err(BodyTimeout::TooSlow {
                received: self.received,
                elapsed,
                min_rate,
            });
        }
        Ok(())
    }

    /// The next moment a limit could be missed if no more bytes arrive.
    fn next_check(&self) -> Instant {
        let deadline = self.started + self.limits.timeout;
        if self.limits.min_rate == 0 {
            return deadline;
        }
        // The average falls under the minimum once the elapsed time passes
        // received / min_rate.
        let covered =
            u64::try_from(u128::from(self.received) * 1000 / u128::from(self.limits.min_rate))
                .unwrap_or(u64::MAX);
        let covered = Duration::from_millis(covered.saturating_add(1));
        let at = self
            .started
            .checked_add(covered.max(self.limits.grace))
            .unwrap_or(deadline);
        at.min(deadline)
    }

    fn fail(&mut self, timeout: BodyTimeout) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        self.timer = None;
        Poll::Ready(Some(Err(Box::new(timeout))))
    }
}

impl<B> HttpBody for TimedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                }
                if let Err(timeout) = this.check(Instant::now()) {
                    return this.fail(timeout);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(error))) => {
                this.done = true;
                this.timer = None;
                return Poll::Ready(Some(Err(error.into())));
            }
            Poll::Ready(None) => {
                this.done = true;
                this.timer = None;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        // Nothing to read yet: fail now if a limit is missed, else sleep
        // until the next moment one could be.
        loop {
            if let Err(timeout) = this.check(Instant::now()) {
                return this.fail(timeout);
            }
            let next = this.next_check();
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(next)));
            if timer.deadline() != next {
                timer.as_mut().reset(next);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Binds `addr` (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to listen on {addr}"))
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::FromRequest as _;

    /// A body that never delivers a byte.
    struct Stalled;

    impl HttpBody for Stalled {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Pending
        }
    }

    /// A body that delivers one byte every `every`, forever.
    struct Dribble {
        every: Duration,
        timer: Pin<Box<Sleep>>,
    }

    impl Dribble {
        fn new(every: Duration) -> Self {
            Self {
                every,
                timer: Box::pin(tokio::time::sleep(every)),
            }
        }
    }

    impl HttpBody for Dribble {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let every = self.every;
            match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.timer.as_mut().reset(Instant::now() + every);
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
                }
                Poll::Pending => Poll::Pending,
            }
        }
    }

    fn limits(timeout_ms: u64, min_rate: u64, grace_ms: u64) -> BodyLimits {
        BodyLimits {
            timeout: Duration::from_millis(timeout_ms),
            min_rate,
            grace: Duration::from_millis(grace_ms),
        }
    }

    fn request(
        body: impl HttpBody<Data = Bytes, Error = Infallible> + Send + Unpin + 'static,
        limits: BodyLimits,
    ) -> axum::extract::Request {
        axum::extract::Request::new(axum::body::Body::new(TimedBody::new(body, limits)))
    }

    #[tokio::test]
    async fn a_silent_body_fails_at_the_deadline_through_the_bytes_extractor() {
        let started = Instant::now();
        let rejection = Bytes::from_request(request(Stalled, limits(300, 0, 0)), &())
            .await
            .unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
            "{elapsed:?}"
        );
        assert!(is_body_timeout(&rejection), "{rejection:?}");
        assert!(
            matches!(
                find_body_timeout(&rejection),
                Some(BodyTimeout::Deadline { received: 0, .. })
            ),
            "{rejection:?}"
        );
    }

    #[tokio::test]
    async fn a_dribbled_body_fails_on_its_overall_deadline_not_per_chunk() {
        // A byte every 50 ms would never trip a per-chunk timeout of 300 ms.
        let started = Instant::now();
        let error = axum::body::to_bytes(
            request(Dribble::new(Duration::from_millis(50)), limits(300, 0, 0)).into_body(),
            usize::MAX,
        )
        .await
        .unwrap_err();
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        assert!(
            matches!(
                find_body_timeout(&error),
                Some(BodyTimeout::Deadline { .. })
            ),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_body_under_the_minimum_rate_fails_after_the_grace() {
        // 20 bytes/s against a minimum of 100 bytes/s, deadline far away.
        let started = Instant::now();
        let rejection = Bytes::from_request(
            request(
                Dribble::new(Duration::from_millis(50)),
                limits(60_000, 100, 200),
            ),
            &(),
        )
        .await
        .unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(2),
            "{elapsed:?}"
        );
        assert!(
            matches!(
                find_body_timeout(&rejection),
                Some(BodyTimeout::TooSlow { .. })
            ),
            "{rejection:?}"
        );
    }

    #[tokio::test]
    async fn a_body_in_time_is_passed_through() {
        let body = http_body_util::Full::new(Bytes::from_static(b"{\"inputs\": []}"));
        let bytes = Bytes::from_request(request(body, limits(1000, 1_000_000, 1000)), &())
            .await
            .unwrap();
        assert_eq!(&bytes[..], b"{\"inputs\": []}");
    }

    #[test]
    fn other_errors_are_not_body_timeouts() {
        let error = std::io::Error::other("reset");
        assert!(!is_body_timeout(&error));
    }
}
