use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP listener of one worker, from [`Worker::listen`](crate::Worker::listen).
///
/// Like tokio's `TcpListener`, but [`accept`](Listener::accept) returns `None`
/// once the worker is asked to stop, and it survives the accept errors that
/// a busy server sees (a peer that resets before it is accepted, running out
/// of file descriptors) instead of handing them to the caller.
pub struct Listener {
    inner: TcpListener,
    shutdown: watch::Receiver<bool>,
}

/// How long `accept` waits before trying again when the process is out of
/// file descriptors or memory (as `axum::serve` does).
const RESOURCE_BACKOFF: Duration = Duration::from_secs(1);

impl Listener {
    pub(crate) fn new(inner: TcpListener, shutdown: watch::Receiver<bool>) -> Listener {
        Listener { inner, shutdown }
    }

    /// Accepts the next connection, or returns `None` once the worker is
    /// asked to stop (or its master is gone).
    ///
    /// After `None`, connections still queued in the kernel stay in the
    /// slot's socket, which the master keeps open: the slot's next
    /// generation, or a surviving worker, accepts them.
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
        loop {
            if *shutdown.borrow_and_update() {
                return None;
            }
            let result = tokio::select! {
                biased;
                changed = shutdown.changed() => match changed {
                    Ok(()) => continue,
                    // The master is gone: nobody will ask this worker to
                    // stop, nor run it again. Stop too.
                    Err(_) => return None,
                },
                result = self.inner.accept() => result,
            };
            match result {
                Ok(conn) => return Some(Ok(conn)),
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

    /// The local address this listener is bound to; with port 0, the port
    /// the cluster picked.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The underlying tokio listener, for servers that drive accept
    /// themselves. Its `accept` does not stop at shutdown: select on
    /// [`Worker::shutdown_signal`](crate::Worker::shutdown_signal) as well.
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
/// `"host:port"`), [`SocketAddr`] and its V4/V6 forms, and `(ip, port)` pairs.
pub trait ListenAddr {
    /// Resolves to the one address to bind.
    #[doc(hidden)]
    fn resolve(&self) -> Result<SocketAddr, String>;

    /// The address as the user wrote it, for messages.
    #[doc(hidden)]
    fn describe(&self) -> String;
}

fn first(addrs: io::Result<impl Iterator<Item = SocketAddr>>) -> Result<SocketAddr, String> {
    match addrs {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| "it resolves to no address".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

impl ListenAddr for str {
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

impl<T: ListenAddr + ?Sized> ListenAddr for &T {
    fn resolve(&self) -> Result<SocketAddr, String> {
        (**self).resolve()
    }

    fn describe(&self) -> String {
        (**self).describe()
    }
}

impl ListenAddr for String {
    fn resolve(&self) -> Result<SocketAddr, String> {
        self.as_str().resolve()
    }

    fn describe(&self) -> String {
        self.clone()
    }
}

macro_rules! socket_addr_like {
    ($($ty:ty),*) => {$(
        impl ListenAddr for $ty {
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
        impl ListenAddr for ($ty, u16) {
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
        Listener::new(TcpListener::from_std(std).expect("tokio listener"), stop)
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
