//! Socket activation: the TCP listeners systemd (or any launcher speaking
//! its protocol) passed to this process, adopted by the registry in place of
//! binding new ones.

use std::net::SocketAddr;

use socket2::Socket;

use super::local_addr;

/// The TCP listeners systemd passed (`LISTEN_FDS`, `LISTEN_PID`), with their
/// addresses. Others (Unix sockets, UDP) are left alone.
pub(super) fn inherited_sockets() -> Vec<(SocketAddr, Socket)> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut sockets = Vec::new();
    for i in 0..fds.len() {
        match fds.take_tcp_listener(i) {
            Ok(Some(listener)) => {
                let socket = Socket::from(listener);
                match local_addr(&socket).and_then(|a| socket.set_nonblocking(true).map(|()| a)) {
                    Ok(addr) => sockets.push((addr, socket)),
                    Err(e) => {
                        tracing::warn!(fd = 3 + i, error = %e, "ignoring an inherited socket")
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(fd = 3 + i, error = %e, "inherited fd is not a TCP listener"),
        }
    }
    sockets
}
