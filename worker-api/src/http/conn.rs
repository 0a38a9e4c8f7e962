//! One connection: what its service, its socket and its task know of it,
//! and how its task drains it.
//!
//! Three views meet in a [`State`]: the socket ([`DrainIo`]) sees bytes come
//! in, the service ([`Drained`]) sees requests go out to the user's service
//! and their answers come back, and the connection's task ([`drive`]) sees
//! the worker asked to stop. From them the task knows whether the
//! connection is *quiet* (no request in flight, no byte of a next one
//! received) and so may be closed without cutting a request off.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONNECTION};
use hyper::service::Service;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::server::graceful::GracefulConnection;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::ShutdownSignal;

/// What a connection's socket, service and task share.
///
/// Atomics with relaxed ordering, not cells: an upgraded connection's socket
/// may move to another thread. All of it is advice to the one task that
/// drains the connection, which reads it between polls of the connection.
#[derive(Debug, Default)]
pub(super) struct State {
    /// The worker was asked to stop: HTTP/1 answers carry `Connection: close`.
    draining: AtomicBool,
    /// Requests handed to the service whose answers are not yet written.
    in_flight: AtomicUsize,
    /// Bytes came in since the last request was handed to the service or
    /// answered: possibly the start of a next request.
    read_pending: AtomicBool,
    /// The client opened with HTTP/2's preface.
    http2: AtomicBool,
}

impl State {
    pub(super) fn new() -> Arc<State> {
        Arc::default()
    }

    /// No request in flight and no byte of a next one received.
    fn is_quiet(&self) -> bool {
        self.in_flight.load(Relaxed) == 0 && !self.read_pending.load(Relaxed)
    }
}

/// The connections a [`serve`](super::serve) call has open.
#[derive(Debug, Default)]
pub(super) struct Open {
    count: Cell<usize>,
    all_closed: Notify,
}

impl Open {
    /// Counts a connection until the guard is dropped.
    pub(super) fn enter(self: &std::rc::Rc<Self>) -> OpenGuard {
        self.count.set(self.count.get() + 1);
        OpenGuard(self.clone())
    }

    /// Waits until no connection is open.
    pub(super) async fn all_closed(&self) {
        while self.count.get() > 0 {
            self.all_closed.notified().await;
        }
    }
}

/// One open connection, counted in [`Open`].
pub(super) struct OpenGuard(std::rc::Rc<Open>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let open = &self.0;
        open.count.set(open.count.get() - 1);
        if open.count.get() == 0 {
            open.all_closed.notify_one();
        }
    }
}

/// Serves `conn` until the worker is asked to stop (`stop`), then drains
/// it: HTTP/2 gets a GOAWAY at once; HTTP/1 is closed once it has been
/// quiet for `linger` (its answers meanwhile carry `Connection: close`,
/// after which hyper closes it itself).
pub(super) async fn drive<C>(
    conn: C,
    state: &State,
    stop: ShutdownSignal,
    linger: Duration,
) -> Result<(), C::Error>
where
    C: GracefulConnection,
{
    tokio::pin!(conn, stop);
    // Serving. The stop is looked at first, so that from the poll in which
    // this task sees it on, every answer is marked.
    tokio::select! {
        biased;
        () = &mut stop => {}
        result = conn.as_mut() => return result,
    }
    state.draining.store(true, Relaxed);
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    // Since when the connection has been quiet, as this task saw it; `None`
    // while it is not.
    let mut quiet_since = Some(Instant::now());
    let mut closing = false;
    poll_fn(|cx| loop {
        // Every change of the state that matters happens in this poll (the
        // socket's reads, the service's calls, the answers' ends): look at
        // the state after it.
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        if closing {
            return Poll::Pending;
        }
        if state.http2.load(Relaxed) {
            // A GOAWAY at once: hyper's HTTP/2 graceful shutdown is the
            // two-step one, which serves the streams already opened.
            conn.as_mut().graceful_shutdown();
            closing = true;
            continue;
        }
        if !state.is_quiet() {
            quiet_since = None;
            return Poll::Pending;
        }
        let since = *quiet_since.get_or_insert_with(Instant::now);
        // A linger too long for the clock never ends (the worker's
        // shutdown timeout does).
        let Some(deadline) = since.checked_add(linger) else {
            return Poll::Pending;
        };
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        if linger.is_zero() || sleep.as_mut().poll(cx).is_ready() {
            // Quiet for the whole linger: hyper closes an idle HTTP/1
            // connection at once (and would finish a request in flight, with
            // `Connection: close`, should one have slipped in).
            conn.as_mut().graceful_shutdown();
            closing = true;
            continue;
        }
        return Poll::Pending;
    })
    .await
}

/// A connection's socket, telling [`State`] when bytes come in.
pub(super) struct DrainIo {
    stream: TcpStream,
    state: Arc<State>,
    /// How many of the first bytes matched HTTP/2's preface so far; `None`
    /// once the connection's version is told.
    preface: Option<usize>,
}

impl DrainIo {
    pub(super) fn new(stream: TcpStream, state: Arc<State>) -> DrainIo {
        DrainIo {
            stream,
            state,
            preface: Some(0),
        }
    }
}

/// How an HTTP/2 connection with prior knowledge starts (RFC 9113 §3.4); no
/// HTTP/1 request does.
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

impl AsyncRead for DrainIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            if let Some(matched) = self.preface {
                let want = &H2_PREFACE_START[matched..];
                let n = new.len().min(want.len());
                self.preface = if new[..n] != want[..n] {
                    None
                } else if matched + n == H2_PREFACE_START.len() {
                    self.state.http2.store(true, Relaxed);
                    None
                } else {
                    // Too few bytes yet to tell.
                    Some(matched + n)
                };
            }
            self.state.read_pending.store(true, Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for DrainIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The user's service, counting requests in flight and marking answers
/// `Connection: close` during a drain.
pub(super) struct Drained<S> {
    inner: S,
    state: Arc<State>,
}

impl<S> Drained<S> {
    pub(super) fn new(inner: S, state: Arc<State>) -> Drained<S> {
        Drained { inner, state }
    }
}

impl<S, B> Service<Request<Incoming>> for Drained<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<DrainBody<B>>;
    type Error = S::Error;
    type Future = DrainFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::new(&self.state);
        let http1 = req.version() < Version::HTTP_2;
        DrainFuture {
            inner: self.inner.call(req),
            in_flight: Some(in_flight),
            http1,
        }
    }
}

/// A request in flight, from its call to the end of its answer's body.
struct InFlight(Arc<State>);

impl InFlight {
    fn new(state: &Arc<State>) -> InFlight {
        state.in_flight.fetch_add(1, Relaxed);
        // Its bytes are in: whatever comes next belongs to a next request.
        state.read_pending.store(false, Relaxed);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
        // A request body's last bytes may have come after the call; a next
        // request's bytes come after this answer.
        self.0.read_pending.store(false, Relaxed);
    }
}

pin_project! {
    /// The user's service's future; marks its answer during a drain.
    pub(super) struct DrainFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
        http1: bool,
    }
}

impl<F, B, E> Future for DrainFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<DrainBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        let Some(in_flight) = this.in_flight.take() else {
            // Polled after it finished; hyper does not.
            return Poll::Pending;
        };
        if *this.http1
            && in_flight.0.draining.load(Relaxed)
            && response.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(response.map(|inner| DrainBody {
            inner,
            _in_flight: in_flight,
        })))
    }
}

pin_project! {
    /// An answer's body; its request is in flight until it is dropped.
    pub(super) struct DrainBody<B> {
        #[pin]
        inner: B,
        _in_flight: InFlight,
    }
}

impl<B: Body> Body for DrainBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
