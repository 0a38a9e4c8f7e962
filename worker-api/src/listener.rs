use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::rt::host::{Adopted, WorkerStats};

/// A TCP listener of one worker, from [`Worker::listen`](crate::Worker::listen).
///
/// Like tokio's `TcpListener`, but [`accept`](Listener::accept) returns `None`
/// once the worker is asked to stop, and it survives the accept errors that
/// a busy server sees (a peer that resets before it is accepted, running out
/// of file descriptors) instead of handing them to the caller.
pub struct Listener {
    inner: TcpListener,
    shutdown: watch::Receiver<bool>,
    adoption: watch::Receiver<Adopted>,
    adopted: Mutex<AdoptedListeners>,
    stats: Arc<WorkerStats>,
}

/// This worker's own listeners on the sockets its slot adopts.
struct AdoptedListeners {
    /// The master's list they were made from.
    from: Option<Adopted>,
    listeners: Vec<TcpListener>,
}

/// How long `accept` waits before trying again when the process is out of
/// file descriptors or memory (as `axum::serve` does).
const RESOURCE_BACKOFF: Duration = Duration::from_secs(1);

impl Listener {
    pub(crate) fn new(
        inner: TcpListener,
        shutdown: watch::Receiver<bool>,
        adoption: watch::Receiver<Adopted>,
        stats: Arc<WorkerStats>,
    ) -> Listener {
        Listener {
            inner,
            shutdown,
            adoption,
            adopted: Mutex::new(AdoptedListeners {
                from: None,
                listeners: Vec::new(),
            }),
            stats,
        }
    }

    /// Makes listeners for the sockets the slot adopts, if that list changed.
    fn refresh_adopted(&self) {
        let current = self.adoption.borrow().clone();
        let mut adopted = self.adopted.lock().unwrap_or_else(PoisonError::into_inner);
        if adopted
            .from
            .as_ref()
            .is_some_and(|from| Arc::ptr_eq(from, &current))
        {
            return;
        }
        adopted.listeners = current
            .iter()
            .filter_map(|socket| {
                let own = socket.try_clone().and_then(|s| {
                    s.set_nonblocking(true)?;
                    TcpListener::from_std(s)
                });
                match own {
                    Ok(listener) => Some(listener),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot take over an adopted socket");
                        None
                    }
                }
            })
            .collect();
        adopted.from = Some(current);
    }

    /// Accepts from the worker's own socket first, then from adopted ones.
    fn poll_accept_any(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        if let Poll::Ready(result) = self.inner.poll_accept(cx) {
            return Poll::Ready(result);
        }
        let adopted = self.adopted.lock().unwrap_or_else(PoisonError::into_inner);
        for listener in &adopted.listeners {
            if let Poll::Ready(result) = listener.poll_accept(cx) {
                return Poll::Ready(result);
            }
        }
        Poll::Pending
    }

    /// Accepts the next connection, or returns `None` once the worker is
    /// asked to stop (or its master is gone).
    ///
    /// After `None`, connections still queued in the kernel stay in the
    /// slot's socket, which the master keeps open: the slot's next
    /// generation, or a surviving worker, accepts them. When the cluster
    /// shrinks (or a slot gives up), a surviving worker's listener accepts
    /// from the retired slot's socket too, so its queue is never dropped.
    ///
    /// Errors that concern one connection only (reset or aborted before it
    /// was accepted) are skipped. When the process is out of file descriptors
    /// or memory, `accept` logs the error, waits a second (or until shutdown)
    /// and tries again. Other errors are returned.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, like tokio's `accept`: used in `select!`, no connection is
    /// lost when another branch completes first.
    pub async fn accept(&self) -> Option<io::Result<(TcpStream, SocketAddr)>> {
        let mut shutdown = self.shutdown.clone();
        let mut adoption = self.adoption.clone();
        let mut adoption_open = true;
        loop {
            if *shutdown.borrow_and_update() {
                return None;
            }
            self.refresh_adopted();
            let result = tokio::select! {
                biased;
                changed = shutdown.changed() => match changed {
                    Ok(()) => continue,
                    // The master is gone: nobody will ask this worker to
                    // stop, nor run it again. Stop too.
                    Err(_) => return None,
                },
                changed = adoption.changed(), if adoption_open => {
                    adoption_open = changed.is_ok();
                    continue;
                }
                result = poll_fn(|cx| self.poll_accept_any(cx)) => result,
            };
            match result {
                Ok(conn) => {
                    self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    return Some(Ok(conn));
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) if is_resource_error(&e) => {
                    tracing::error!(error = %e, "accept failed, retrying in {:?}", RESOURCE_BACKOFF);
                    tokio::select! {
                        changed = shutdown.changed() => if changed.is_err() {
                            return None;
                        },
                        _ = tokio::time::sleep(RESOURCE_BACKOFF) => {}
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// A future that resolves when this listener's worker is asked to stop.
    #[cfg(feature = "http")]
    pub(crate) fn shutdown_signal(&self) -> crate::ShutdownSignal {
        crate::ShutdownSignal::new(self.shutdown.clone())
    }

    /// The local address this listener is bound to; with port 0, the port
    /// the cluster picked.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The underlying tokio listener, for servers that drive accept
    /// themselves. Its `accept` does not stop at shutdown: select on
    /// [`Worker::shutdown_signal`](crate::Worker::shutdown_signal) as well.
    /// Nor does it accept from sockets adopted after a shrink, and its
    /// connections are not counted in the cluster's status: prefer
    /// [`accept`](Listener::accept).
    pub fn as_tokio(&self) -> &TcpListener {
        &self.inner
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.inner.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// With the `axum` feature: `axum::serve(listener, app)` serves from a
/// worker's listener, adopted sockets included.
///
/// axum's `accept` cannot say "stop", so once the worker is asked to stop
/// this one never returns: stop axum with
/// `.with_graceful_shutdown(worker.shutdown_signal())`. That closes idle
/// keep-alive connections at once, racing with their clients' next
/// requests; [`http::serve_axum`](crate::http::serve_axum) drains them
/// without that race.
///
/// ```no_run
/// # async fn body(worker: forkless_worker::Worker) -> Result<(), forkless_worker::Error> {
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "Hello, World!" }));
/// let listener = worker.listen("127.0.0.1:8080").await?;
/// axum::serve(listener, app)
///     .with_graceful_shutdown(worker.shutdown_signal())
///     .await?;
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "axum")]
impl axum::serve::Listener for Listener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match Listener::accept(self).await {
                Some(Ok(conn)) => return conn,
                Some(Err(e)) => {
                    tracing::error!(error = %e, "accept failed, retrying in {:?}", RESOURCE_BACKOFF);
                    tokio::time::sleep(RESOURCE_BACKOFF).await;
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Listener::local_addr(self)
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

fn is_resource_error(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM.
    matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12))
}

/// An address that [`Worker::listen`](crate::Worker::listen) accepts.
///
/// Implemented for `&str` and `String` (`"ip:port"`, `"[ipv6]:port"` or
/// `"host:port"`), [`SocketAddr`] and its V4/V6 forms, and `(ip, port)` and
/// `(&str, port)` pairs, as in `worker.listen(("127.0.0.1", 8080))`.
///
/// The trait is sealed: these are the addresses forkless knows how to bind,
/// and what it asks of them is not part of the public API.
pub trait ListenAddr: sealed::Address {}

impl<T: sealed::Address + ?Sized> ListenAddr for T {}

/// What [`ListenAddr`] asks of an address, out of users' reach.
#[allow(unreachable_pub)]
pub(crate) mod sealed {
    use std::net::SocketAddr;

    pub trait Address {
        /// Resolves to the one address to bind.
        fn resolve(&self) -> Result<SocketAddr, String>;

        /// The address as the user wrote it, for messages.
        fn describe(&self) -> String;
    }
}

use sealed::Address;

fn first(addrs: io::Result<impl Iterator<Item = SocketAddr>>) -> Result<SocketAddr, String> {
    match addrs {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| "it resolves to no address".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

impl Address for str {
    fn resolve(&self) -> Result<SocketAddr, String> {
        if let Ok(addr) = self.parse::<SocketAddr>() {
            return Ok(addr);
        }
        // Refuse what cannot be a host name before asking the resolver, so a
        // typo never turns into a DNS query.
        let Some((host, port)) = self.rsplit_once(':') else {
            return Err("expected `ip:port`, `[ipv6]:port` or `host:port`".to_owned());
        };
        if port.parse::<u16>().is_err() {
            return Err(format!("`{port}` is not a port (0 to 65535)"));
        }
        if host.starts_with('[') || host.contains(':') {
            return Err("malformed IPv6 address (expected `[ipv6]:port`)".to_owned());
        }
        if host.is_empty() || host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(format!("`{host}` is not an IPv4 address"));
        }
        first(self.to_socket_addrs())
    }

    fn describe(&self) -> String {
        self.to_owned()
    }
}

impl<T: Address + ?Sized> Address for &T {
    fn resolve(&self) -> Result<SocketAddr, String> {
        (**self).resolve()
    }

    fn describe(&self) -> String {
        (**self).describe()
    }
}

impl Address for String {
    fn resolve(&self) -> Result<SocketAddr, String> {
        self.as_str().resolve()
    }

    fn describe(&self) -> String {
        self.clone()
    }
}

macro_rules! socket_addr_like {
    ($($ty:ty),*) => {$(
        impl Address for $ty {
            fn resolve(&self) -> Result<SocketAddr, String> {
                Ok(SocketAddr::from(*self))
            }

            fn describe(&self) -> String {
                SocketAddr::from(*self).to_string()
            }
        }
    )*};
}

socket_addr_like!(SocketAddr, SocketAddrV4, SocketAddrV6);

macro_rules! pair_like {
    ($($ty:ty),*) => {$(
        impl Address for ($ty, u16) {
            fn resolve(&self) -> Result<SocketAddr, String> {
                Ok(SocketAddr::from(*self))
            }

            fn describe(&self) -> String {
                SocketAddr::from(*self).to_string()
            }
        }
    )*};
}

pair_like!(IpAddr, Ipv4Addr, Ipv6Addr);

/// `("127.0.0.1", 8080)`, `("::1", 8080)`, `("localhost", 8080)`, as tokio
/// takes them.
impl Address for (&str, u16) {
    fn resolve(&self) -> Result<SocketAddr, String> {
        if let Ok(ip) = self.0.parse::<IpAddr>() {
            return Ok(SocketAddr::from((ip, self.1)));
        }
        self.describe().as_str().resolve()
    }

    fn describe(&self) -> String {
        match self.0.parse::<Ipv6Addr>() {
            Ok(_) => format!("[{}]:{}", self.0, self.1),
            Err(_) => format!("{}:{}", self.0, self.1),
        }
    }
}

impl Address for (String, u16) {
    fn resolve(&self) -> Result<SocketAddr, String> {
        (self.0.as_str(), self.1).resolve()
    }

    fn describe(&self) -> String {
        (self.0.as_str(), self.1).describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_addresses_without_resolving() {
        assert_eq!(
            "127.0.0.1:80".resolve(),
            Ok(SocketAddr::from(([127, 0, 0, 1], 80)))
        );
        assert_eq!(
            "[::1]:8080".resolve(),
            Ok(SocketAddr::from((Ipv6Addr::LOCALHOST, 8080)))
        );
        assert_eq!(
            String::from("0.0.0.0:0").resolve(),
            Ok(SocketAddr::from(([0, 0, 0, 0], 0)))
        );
    }

    #[test]
    fn takes_host_and_port_pairs() {
        assert_eq!(
            ("127.0.0.1", 80).resolve(),
            Ok(SocketAddr::from(([127, 0, 0, 1], 80)))
        );
        assert_eq!(
            ("::1", 8080).resolve(),
            Ok(SocketAddr::from((Ipv6Addr::LOCALHOST, 8080)))
        );
        assert_eq!(("::1", 8080).describe(), "[::1]:8080");
        assert_eq!(
            (String::from("0.0.0.0"), 0).resolve(),
            Ok(SocketAddr::from(([0, 0, 0, 0], 0)))
        );
        assert!(("300.1.1.1", 80).resolve().is_err());
        assert!(("", 80).resolve().is_err());
    }

    #[test]
    fn refuses_malformed_addresses() {
        assert!("8080".resolve().is_err());
        assert!("127.0.0.1:99999".resolve().is_err());
        assert!("not an address".resolve().is_err());
        assert!("[::1:80".resolve().is_err());
        assert!("300.1.1.1:80".resolve().is_err());
        assert!(":80".resolve().is_err());
        assert!("::1:80".resolve().is_err());
    }

    fn listener_with(stop: watch::Receiver<bool>) -> Listener {
        let std = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std.set_nonblocking(true).expect("nonblocking");
        Listener::new(
            TcpListener::from_std(std).expect("tokio listener"),
            stop,
            watch::channel(Adopted::from([])).1,
            Arc::default(),
        )
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn accept_yields_connections_then_none_at_shutdown() {
        block_on(async {
            let (tx, rx) = watch::channel(false);
            let listener = listener_with(rx);
            let addr = listener.local_addr().expect("addr");
            let _client = TcpStream::connect(addr).await.expect("connect");
            let (_, peer) = listener.accept().await.expect("a connection").expect("ok");
            assert!(peer.ip().is_loopback());
            tx.send(true).expect("send");
            assert!(listener.accept().await.is_none());
        });
    }

    #[test]
    fn accept_stops_when_the_master_is_gone() {
        block_on(async {
            let (tx, rx) = watch::channel(false);
            let listener = listener_with(rx);
            drop(tx);
            assert!(listener.accept().await.is_none());
        });
    }

    #[test]
    fn resolves_localhost() {
        let addr = "localhost:7000".resolve().expect("localhost resolves");
        assert!(addr.ip().is_loopback());
        assert_eq!(addr.port(), 7000);
    }
}
