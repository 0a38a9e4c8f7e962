//! Serving HTTP on a worker, and draining it without losing a request
//! (feature `http`; `serve_axum` with feature `axum`).
//!
//! [`serve`] accepts on a worker's [`Listener`] until the worker is asked to
//! stop, serves each connection with hyper (HTTP/1.1 with keep-alive, and
//! HTTP/2 with prior knowledge, told apart by the first bytes), and then
//! *drains*: it returns once every connection it accepted is done.
//! [`serve_axum`] does the same for an `axum::Router`.
//!
//! # Why: the keep-alive race
//!
//! An HTTP/1.1 server that stops closes the keep-alive connections that
//! have no request in flight: hyper's `graceful_shutdown`, and with it
//! axum's `with_graceful_shutdown`, do so at once. But "no request in
//! flight" is the server's view. A client that just got an answer sends its
//! next request on the same connection at once, and that request can be on
//! the wire, or already in the server's socket buffer, when the server
//! closes: the client then sees its connection closed (or reset) after it
//! sent a request and before any answer. Nothing tells it whether the
//! request was handled, so it cannot safely retry it; `wrk` counts each as a
//! read error. Under a busy keep-alive load, every rolling restart, shrink
//! or upgrade of a cluster loses a few requests that way, and no amount of
//! care in the listener (which forkless already takes: no connection queued
//! in the kernel is lost) can save them.
//!
//! # How: draining the way Envoy and HAProxy do
//!
//! A proxy that drains (Envoy's drain manager, HAProxy's soft stop) does not
//! close a keep-alive connection under its client's feet: it *tells* the
//! client, in the one place HTTP/1.1 has for it, and lets the client close.
//! Once the worker is asked to stop ([`Worker::shutdown_signal`]):
//!
//! - the listener stops accepting (queued connections stay in the slot's
//!   socket for the next generation, or the worker that adopts it);
//! - every HTTP/1 response written from then on carries `Connection: close`,
//!   and hyper closes the connection after it: a client reads the answer to
//!   the request it sent, sees `close`, and opens a new connection (which the
//!   kernel gives to a worker that is not stopping);
//! - a connection with a request in flight is never closed before its
//!   answer is written;
//! - a connection that is idle (no request in flight, no byte of a next one
//!   received) is left open for a *linger* ([`Options::linger`], 1 s by
//!   default). A request that arrives meanwhile is answered, with
//!   `Connection: close`. A connection still idle after the linger is
//!   closed: its client has been silent for that long, which makes the race
//!   above as unlikely as it can be made (RFC 9112 §9.5 describes the race
//!   and leaves the rest to clients, which may retry an idempotent request
//!   on such a close, §9.3.1);
//! - an HTTP/2 connection gets a GOAWAY at once (hyper sends the two-step
//!   one: streams the client opened before it saw the GOAWAY are still
//!   served), finishes its streams, and closes;
//! - [`serve`] returns once every connection is closed. Keep the linger well
//!   under the cluster's `shutdown_timeout` (5 s by default): a worker still
//!   running then is terminated, and its connections with it. An answer
//!   that never ends (server-sent events, a long poll) or a client halfway
//!   through sending a request holds its connection until then: end such
//!   streams when [`Worker::shutdown_signal`] resolves.
//!
//! A client that honours `Connection: close` (every HTTP/1.1 client does:
//! curl, wrk, hyper, browsers) loses nothing in a rolling restart, a shrink,
//! an upgrade or a recycle, keep-alive or not.
//!
//! # The layer
//!
//! This module drives connections; it does not route, and knows nothing of
//! TLS: it serves plain TCP connections from a [`Listener`]. Connections are
//! spawned with `tokio::task::spawn_local` on the worker's own runtime, so
//! services, their futures and bodies need not be `Send` (`Rc` state is
//! fine); [`serve`] must run on a worker, or elsewhere inside a
//! `tokio::task::LocalSet`. A connection upgraded by its service (a
//! WebSocket, say) leaves hyper's hands at the upgrade: it is the service's
//! to drain, and [`serve`] does not wait for it.
//!
//! ```no_run
//! use std::convert::Infallible;
//!
//! use forkless_worker::http::{self, Options};
//! use hyper::body::Incoming;
//! use hyper::service::service_fn;
//! use hyper::{Request, Response};
//!
//! async fn hello(_req: Request<Incoming>) -> Result<Response<String>, Infallible> {
//!     Ok(Response::new("Hello, World!".to_owned()))
//! }
//!
//! # async fn body(worker: forkless_worker::Worker) -> Result<(), forkless_worker::Error> {
//! let listener = worker.listen("127.0.0.1:8080").await?;
//! // A service per connection; `peer` is the client's address.
//! http::serve(listener, |_peer| service_fn(hello), Options::default()).await?;
//! // The worker was asked to stop, and every connection is closed.
//! # Ok(())
//! # }
//! ```
//!
//! [`Worker::shutdown_signal`]: crate::Worker::shutdown_signal

mod conn;

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

use crate::{Error, Listener};

/// The longest duration an option takes: a year, as the cluster's own
/// duration options.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// How [`serve`] treats its connections.
///
/// ```
/// use std::time::Duration;
/// use forkless_worker::http::Options;
///
/// let options = Options::new()
///     .linger(Duration::from_millis(500))
///     .header_read_timeout(Some(Duration::from_secs(10)));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Options {
    linger: Duration,
    header_read_timeout: Option<Duration>,
}

impl Options {
    /// The default linger: 1 s.
    pub const DEFAULT_LINGER: Duration = Duration::from_secs(1);

    /// The defaults: a linger of 1 s, no header read timeout.
    pub fn new() -> Options {
        Options {
            linger: Options::DEFAULT_LINGER,
            header_read_timeout: None,
        }
    }

    /// How long, once the worker is asked to stop, an idle HTTP/1
    /// connection (no request in flight, no byte of a next one received) is
    /// left open before it is closed. A request that arrives meanwhile is
    /// answered, with `Connection: close`. Measured from the start of the
    /// drain, or from the end of the last answer if that came later.
    ///
    /// The default is 1 s. Keep it well under the cluster's
    /// `shutdown_timeout` (5 s by default), which cuts it short: a worker
    /// still running then is terminated, and its connections are dropped.
    ///
    /// Zero closes idle connections as soon as the drain begins, as hyper's
    /// `graceful_shutdown` does; a request the client sends at that moment
    /// is lost. More than a year is refused: [`serve`] returns an error for
    /// which [`Error::is_config`] is true.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let options = forkless_worker::http::Options::new().linger(Duration::from_millis(250));
    /// ```
    pub fn linger(mut self, linger: Duration) -> Options {
        self.linger = linger;
        self
    }

    /// How long an HTTP/1 client has to send a request's headers, once it
    /// starts one and while its connection is idle between requests; a
    /// connection past it is closed (hyper's `header_read_timeout`).
    ///
    /// The default is `None`: no limit, so that idle keep-alive connections
    /// are closed only by their clients or a drain. Note that with a limit,
    /// hyper closes an idle keep-alive connection after it, which races
    /// with the client's next request as described in the
    /// [module docs](self); make it longer than your clients' idle timeout.
    ///
    /// Zero, or more than a year, is refused: [`serve`] returns an error for
    /// which [`Error::is_config`] is true.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let options = forkless_worker::http::Options::new()
    ///     .header_read_timeout(Some(Duration::from_secs(30)));
    /// ```
    pub fn header_read_timeout(mut self, timeout: Option<Duration>) -> Options {
        self.header_read_timeout = timeout;
        self
    }

    /// Refuses the values that cannot work.
    fn check(&self) -> Result<(), Error> {
        if self.linger > MAX_DURATION {
            return Err(Error::config(format!(
                "http::Options::linger: {:?} is more than the maximum of a year",
                self.linger
            )));
        }
        match self.header_read_timeout {
            Some(timeout) if timeout.is_zero() => Err(Error::config(
                "http::Options::header_read_timeout: zero would close every connection \
                 before its first request (use None for no limit)",
            )),
            Some(timeout) if timeout > MAX_DURATION => Err(Error::config(format!(
                "http::Options::header_read_timeout: {timeout:?} is more than the maximum \
                 of a year (use None for no limit)"
            ))),
            _ => Ok(()),
        }
    }

    /// hyper's connection builder with these options.
    fn builder(&self) -> auto::Builder<LocalExec> {
        let mut builder = auto::Builder::new(LocalExec);
        match self.header_read_timeout {
            // hyper applies a header read timeout of its own (30 s) when it
            // has a timer: give it one only with a limit set here.
            Some(timeout) => {
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(timeout);
            }
            None => {
                builder.http1().header_read_timeout(None);
            }
        }
        builder
    }
}

impl Default for Options {
    fn default() -> Options {
        Options::new()
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("linger", &self.linger)
            .field("header_read_timeout", &self.header_read_timeout)
            .finish()
    }
}

/// Runs hyper's HTTP/2 streams on the worker's runtime, `!Send` or not.
#[derive(Clone, Copy, Debug)]
struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
    F::Output: 'static,
{
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

/// Serves HTTP on `listener` until the worker is asked to stop, then drains
/// its connections as the [module docs](self) say, and returns once every
/// one is closed.
///
/// `make_service` is called once per connection with the client's address,
/// and returns the hyper service that answers its requests (a
/// `hyper::service::service_fn`, say). Neither it, nor the service, nor its
/// futures and bodies need be `Send`.
///
/// ```no_run
/// use std::convert::Infallible;
/// use std::rc::Rc;
///
/// use forkless_worker::http::{self, Options};
/// use hyper::service::service_fn;
/// use hyper::Response;
///
/// # async fn body(worker: forkless_worker::Worker) -> Result<(), forkless_worker::Error> {
/// let listener = worker.listen("127.0.0.1:8080").await?;
/// let slot = Rc::new(format!("slot {}\n", worker.slot())); // !Send is fine
/// http::serve(
///     listener,
///     move |_peer| {
///         let slot = slot.clone();
///         service_fn(move |_req| {
///             let answer = slot.to_string();
///             async move { Ok::<_, Infallible>(Response::new(answer)) }
///         })
///     },
///     Options::default(),
/// )
/// .await?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// An [`Options`] value out of range ([`Error::is_config`]), at once; an
/// accept error that is not about one connection (those are skipped, and
/// running out of file descriptors is waited out, as
/// [`Listener::accept`] does), at once, leaving the connections already
/// accepted to finish on their own. Errors of one connection (a client that
/// resets, a malformed request) are logged at debug level and end that
/// connection only.
///
/// # Panics
///
/// When polled outside a `tokio::task::LocalSet`, as a worker's body always
/// is: connections are spawned with `tokio::task::spawn_local`.
pub async fn serve<M, S, B>(
    listener: Listener,
    mut make_service: M,
    options: Options,
) -> Result<(), Error>
where
    M: FnMut(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + 'static,
    S::Future: 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    options.check()?;
    let builder = Rc::new(options.builder());
    let open = Rc::new(conn::Open::default());
    while let Some(accepted) = listener.accept().await {
        let (stream, peer) = accepted?;
        let state = conn::State::new();
        let service = conn::Drained::new(make_service(peer), state.clone());
        let io = TokioIo::new(conn::DrainIo::new(stream, state.clone()));
        let stop = listener.shutdown_signal();
        let (builder, guard, linger) = (builder.clone(), open.enter(), options.linger);
        tokio::task::spawn_local(async move {
            let conn = builder.serve_connection_with_upgrades(io, service);
            if let Err(e) = conn::drive(conn, &state, stop, linger).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(guard);
        });
    }
    open.all_closed().await;
    Ok(())
}

/// [`serve`] for an axum app (feature `axum`): each connection gets a clone
/// of `router`.
///
/// ```no_run
/// use axum::routing::get;
/// use forkless_worker::http::{self, Options};
///
/// # async fn body(worker: forkless_worker::Worker) -> Result<(), forkless_worker::Error> {
/// let app = axum::Router::new().route("/", get(|| async { "Hello, World!" }));
/// let listener = worker.listen("127.0.0.1:3000").await?;
/// http::serve_axum(listener, app, Options::default()).await?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// As [`serve`].
///
/// # Panics
///
/// As [`serve`]: outside a `tokio::task::LocalSet`.
#[cfg(feature = "axum")]
pub async fn serve_axum(
    listener: Listener,
    router: axum::Router,
    options: Options,
) -> Result<(), Error> {
    serve(
        listener,
        move |_peer| hyper_util::service::TowerToHyperService::new(router.clone()),
        options,
    )
    .await
}

#[cfg(test)]
mod tests;
