//! The listener registry: the master's `SO_REUSEPORT` sockets, one per
//! (address, slot).
//!
//! A worker never owns a listening socket. It gets a duplicate (`dup(2)`) of
//! the one its slot holds here, so when the worker dies the socket, and the
//! connections the kernel has queued on it, stay. The slot's next generation
//! gets a duplicate of the same socket and accepts them. Closing a
//! `SO_REUSEPORT` socket drops its accept queue on Linux, so sockets close only
//! when their slot ends for good or the cluster stops.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

use forkless_worker::Error;
use socket2::{Domain, Protocol, Socket, Type};

pub(crate) struct Registry {
    backlog: i32,
    groups: Vec<Group>,
    closed: bool,
}

/// The sockets of one address, one per slot, all in one reuseport group.
struct Group {
    /// The address as asked for (port 0 stays 0 here).
    requested: SocketAddr,
    /// The address bound (with the port the kernel picked for port 0).
    bound: SocketAddr,
    sockets: HashMap<usize, Socket>,
}

impl Registry {
    pub(crate) fn new(backlog: u32) -> Registry {
        Registry {
            backlog: i32::try_from(backlog).unwrap_or(i32::MAX),
            groups: Vec::new(),
            closed: false,
        }
    }

    /// Returns a duplicate of the socket of (`addr`, `slot`), creating it on
    /// first use.
    pub(crate) fn listen(
        &mut self,
        slot: usize,
        addr: SocketAddr,
        shown: &str,
    ) -> Result<std::net::TcpListener, Error> {
        if self.closed {
            return Err(Error::stopped(&format!("listen on {shown}")));
        }
        let backlog = self.backlog;
        let index = self
            .groups
            .iter()
            .position(|g| g.requested == addr || g.bound == addr);
        let group = match index {
            Some(i) => &mut self.groups[i],
            None => {
                // First socket for this address: make sure nobody else holds
                // it. A socket that has SO_REUSEPORT would otherwise silently
                // join another process's group (a second instance of the same
                // service, say) and split its traffic.
                if addr.port() != 0 {
                    probe(addr).map_err(|e| Error::bind(shown, e))?;
                }
                let socket = bind(addr, backlog).map_err(|e| Error::bind(shown, e))?;
                let bound = local_addr(&socket).map_err(|e| Error::bind(shown, e))?;
                tracing::debug!(%bound, slot, "listening");
                self.groups.push(Group {
                    requested: addr,
                    bound,
                    sockets: HashMap::from([(slot, socket)]),
                });
                let last = self.groups.len() - 1;
                &mut self.groups[last]
            }
        };
        if !group.sockets.contains_key(&slot) {
            let socket = bind(group.bound, backlog).map_err(|e| Error::bind(shown, e))?;
            group.sockets.insert(slot, socket);
        }
        let socket = &group.sockets[&slot];
        let dup = socket.try_clone().map_err(|e| Error::bind(shown, e))?;
        Ok(dup.into())
    }

    /// Closes the sockets of a slot that will not run again, so that the
    /// kernel stops queueing connections where nobody accepts them.
    pub(crate) fn close_slot(&mut self, slot: usize) {
        for group in &mut self.groups {
            if group.sockets.remove(&slot).is_some() {
                tracing::debug!(bound = %group.bound, slot, "closed the slot's socket");
            }
        }
    }

    /// Closes every socket; `listen` fails from now on.
    pub(crate) fn close_all(&mut self) {
        self.closed = true;
        self.groups.clear();
    }
}

fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Rebinding over connections in TIME_WAIT after a restart must work.
    socket.set_reuse_address(true)?;
    Ok(socket)
}

/// Binds a throwaway socket without SO_REUSEPORT: it fails with EADDRINUSE if
/// any socket is listening on `addr`, reuseport or not.
fn probe(addr: SocketAddr) -> io::Result<()> {
    let socket = new_socket(addr)?;
    socket.bind(&addr.into())
}

fn bind(addr: SocketAddr, backlog: i32) -> io::Result<Socket> {
    let socket = new_socket(addr)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    // Shared by every duplicate: what tokio needs.
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn local_addr(socket: &Socket) -> io::Result<SocketAddr> {
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn localhost() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[test]
    fn port_zero_is_picked_once_for_every_slot() {
        let mut registry = Registry::new(16);
        let a = registry
            .listen(0, localhost(), "127.0.0.1:0")
            .expect("slot 0");
        let b = registry
            .listen(1, localhost(), "127.0.0.1:0")
            .expect("slot 1");
        let port = a.local_addr().expect("addr").port();
        assert_ne!(port, 0);
        assert_eq!(b.local_addr().expect("addr").port(), port);
        // Asking by the bound address finds the same group.
        let bound = a.local_addr().expect("addr");
        let c = registry
            .listen(2, bound, &bound.to_string())
            .expect("slot 2");
        assert_eq!(c.local_addr().expect("addr"), bound);
    }

    #[test]
    fn a_slot_gets_the_same_queue_back() {
        let mut registry = Registry::new(16);
        let first = registry
            .listen(0, localhost(), "127.0.0.1:0")
            .expect("listen");
        let addr = first.local_addr().expect("addr");
        drop(first); // the worker died
        let _client = std::net::TcpStream::connect(addr).expect("queued by the kernel");
        let second = registry
            .listen(0, localhost(), "127.0.0.1:0")
            .expect("listen");
        second.set_nonblocking(false).expect("blocking");
        let (_conn, peer) = second
            .accept()
            .expect("the queued connection is still there");
        assert!(peer.ip().is_loopback());
        second.set_nonblocking(true).expect("nonblocking again");
    }

    #[test]
    fn a_foreign_reuseport_socket_is_refused() {
        let foreign = bind(localhost(), 16).expect("foreign socket");
        let addr = local_addr(&foreign).expect("addr");
        let mut registry = Registry::new(16);
        let err = registry
            .listen(0, addr, &addr.to_string())
            .expect_err("must not join another group");
        assert!(err.is_addr_in_use(), "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn closed_registry_refuses() {
        let mut registry = Registry::new(16);
        registry.close_all();
        let err = registry
            .listen(0, localhost(), "127.0.0.1:0")
            .expect_err("closed");
        assert!(err.is_stopped());
    }
}
