//! Listening sockets: the [`registry`] holds every slot's `SO_REUSEPORT`
//! socket for as long as the cluster runs and hands workers duplicates;
//! [`activation`] adopts the sockets systemd passed; [`steering`] marks each
//! slot's socket with its worker's core.

mod activation;
pub(crate) mod registry;
pub(crate) mod steering;

/// The IP address `socket` is bound to.
fn local_addr(socket: &socket2::Socket) -> std::io::Result<std::net::SocketAddr> {
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("not an IP socket"))
}
