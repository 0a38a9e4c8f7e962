//! Connection steering by CPU: each slot's socket carries its worker's core
//! as `SO_INCOMING_CPU`, so that the kernel queues a new connection on the
//! socket of the worker pinned to the core that received it.
//!
//! Since Linux 6.2, when a reuseport group picks a socket for a connection it
//! prefers one whose `SO_INCOMING_CPU` is the CPU handling the packet, and
//! falls back to the usual hash when none is. That CPU is the one the NIC
//! queue's interrupt (or RPS) delivers to; on loopback, the connecting
//! thread's. A connection then lives on the core where its packets are
//! already handled: no wake-up crosses cores, and a worker never waits for a
//! thread that another core's traffic keeps busy. On older kernels the
//! option changes nothing (the hash decides) unless the distribution
//! backported the fix (kernel commit b261eda84ec1); [`supported`] tells by
//! the release alone.

use std::io;

use socket2::Socket;

/// What `SO_INCOMING_CPU` holds when unset: the kernel's -1. socket2 passes
/// the value as a C `int`, so `usize::MAX` reaches the kernel as -1.
#[cfg(target_os = "linux")]
const UNSET: usize = usize::MAX;

/// Sets or clears (`None`) the core a socket takes connections for.
#[cfg(target_os = "linux")]
pub(crate) fn set(socket: &Socket, core: Option<usize>) -> io::Result<()> {
    socket.set_cpu_affinity(core.unwrap_or(UNSET))
}

/// `SO_INCOMING_CPU` is Linux's.
#[cfg(not(target_os = "linux"))]
pub(crate) fn set(_socket: &Socket, _core: Option<usize>) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "SO_INCOMING_CPU exists on Linux only",
    ))
}

/// The core a socket takes connections for, if it has one.
#[cfg(test)]
pub(crate) fn get(socket: &Socket) -> io::Result<Option<usize>> {
    let cpu = socket.cpu_affinity()?;
    // The kernel's -1 reads back as usize::MAX; any negative int would.
    Ok((cpu <= i32::MAX as usize).then_some(cpu))
}

/// Whether this kernel steers by `SO_INCOMING_CPU` within a reuseport group
/// (6.2 or later). `None`: the release could not be read.
pub(crate) fn supported() -> Option<bool> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    release_at_least(&release, (6, 2))
}

/// Whether a kernel release string ("6.18.44-fc", "5.15.0-91-generic") is
/// at least `min` (major, minor).
fn release_at_least(release: &str, min: (u32, u32)) -> Option<bool> {
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some((major, minor) >= min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_is_compared_by_major_then_minor() {
        assert_eq!(release_at_least("6.18.44-fc-v769", (6, 2)), Some(true));
        assert_eq!(release_at_least("6.2.0", (6, 2)), Some(true));
        assert_eq!(release_at_least("6.1.90-generic", (6, 2)), Some(false));
        assert_eq!(release_at_least("5.15.0-91-generic", (6, 2)), Some(false));
        assert_eq!(release_at_least("10.0", (6, 2)), Some(true));
        assert_eq!(release_at_least("", (6, 2)), None);
        assert_eq!(release_at_least("six.two", (6, 2)), None);
        assert_eq!(release_at_least("6", (6, 2)), None);
    }

    #[test]
    fn a_socket_keeps_the_core_it_is_given_until_cleared() {
        let socket =
            Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        assert_eq!(get(&socket).expect("get"), None);
        set(&socket, Some(1)).expect("set");
        assert_eq!(get(&socket).expect("get"), Some(1));
        set(&socket, None).expect("clear");
        assert_eq!(get(&socket).expect("get"), None);
    }
}
