use std::fmt;
use std::io;

/// The error type of forkless.
///
/// Opaque on purpose: ask what went wrong with the `is_*` predicates, read the
/// cause with [`source`](std::error::Error::source), and show it with
/// `Display`. The text of the message is not part of the API.
pub struct Error {
    inner: Box<ErrorImpl>,
}

struct ErrorImpl {
    kind: Kind,
    message: String,
    source: Option<io::Error>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InvalidAddress,
    AddrInUse,
    Bind,
    Config,
    Stopped,
    Spawn,
    Io,
    Timeout,
    LockLost,
    TooLarge,
    InvalidValue,
    NoSuchSlot,
    Full,
    NoReply,
    Unavailable,
    Busy,
    UpgradeFailed,
    NotReady,
}

impl Error {
    fn new(kind: Kind, message: impl Into<String>, source: Option<io::Error>) -> Error {
        Error {
            inner: Box::new(ErrorImpl {
                kind,
                message: message.into(),
                source,
            }),
        }
    }

    /// An address that cannot be parsed or resolved.
    pub(crate) fn invalid_address(addr: &str, why: impl fmt::Display) -> Error {
        Error::new(
            Kind::InvalidAddress,
            format!("invalid listen address `{addr}`: {why}"),
            None,
        )
    }

    /// A failed bind or listen of `addr`.
    pub(crate) fn bind(addr: impl fmt::Display, source: io::Error) -> Error {
        let (kind, message) = match source.kind() {
            io::ErrorKind::AddrInUse => (
                Kind::AddrInUse,
                format!(
                    "cannot listen on {addr}: the address is already in use \
                     (by another process, or another socket of this one)"
                ),
            ),
            io::ErrorKind::PermissionDenied => (
                Kind::Bind,
                format!(
                    "cannot listen on {addr}: permission denied (ports below 1024 \
                     need CAP_NET_BIND_SERVICE)"
                ),
            ),
            io::ErrorKind::AddrNotAvailable => (
                Kind::Bind,
                format!("cannot listen on {addr}: the address is not one of this machine's"),
            ),
            _ => (Kind::Bind, format!("cannot listen on {addr}: {source}")),
        };
        Error::new(kind, message, Some(source))
    }

    /// A builder value or option that is out of range.
    pub(crate) fn config(message: impl Into<String>) -> Error {
        Error::new(Kind::Config, message, None)
    }

    /// An operation attempted after the cluster stopped.
    pub(crate) fn stopped(what: &str) -> Error {
        Error::new(
            Kind::Stopped,
            format!("{what}: the cluster is stopping or has stopped"),
            None,
        )
    }

    /// A thread or runtime that could not be created.
    pub(crate) fn spawn(what: impl fmt::Display, source: io::Error) -> Error {
        Error::new(Kind::Spawn, format!("{what}: {source}"), Some(source))
    }

    /// A wait that ran past its deadline.
    pub(crate) fn timeout(message: impl Into<String>) -> Error {
        Error::new(Kind::Timeout, message, None)
    }

    /// A key lock that the store took back before its holder released it.
    pub(crate) fn lock_lost(message: impl Into<String>) -> Error {
        Error::new(Kind::LockLost, message, None)
    }

    /// A key or value over its collection's limit.
    pub(crate) fn too_large(message: impl Into<String>) -> Error {
        Error::new(Kind::TooLarge, message, None)
    }

    /// A stored value that is not what the operation expects.
    pub(crate) fn invalid_value(message: impl Into<String>) -> Error {
        Error::new(Kind::InvalidValue, message, None)
    }

    /// A bus message addressed to a slot the cluster does not have.
    pub(crate) fn no_such_slot(slot: usize, size: usize) -> Error {
        Error::new(
            Kind::NoSuchSlot,
            format!("no slot {slot}: the cluster has slots 0..{size}"),
            None,
        )
    }

    /// A bus message addressed to a host, or a slot of another host, that
    /// the bus cannot reach.
    pub(crate) fn no_such_address(message: impl Into<String>) -> Error {
        Error::new(Kind::NoSuchSlot, message, None)
    }

    /// A bounded queue with no room.
    pub(crate) fn full(message: impl Into<String>) -> Error {
        Error::new(Kind::Full, message, None)
    }

    /// A request whose receiver dropped it without replying.
    pub(crate) fn no_reply(message: impl Into<String>) -> Error {
        Error::new(Kind::NoReply, message, None)
    }

    /// A backend (Redis) that could not be reached or did not answer in time.
    pub(crate) fn unavailable(message: impl Into<String>) -> Error {
        Error::new(Kind::Unavailable, message, None)
    }

    /// A request that what the cluster is doing excludes (a second upgrade
    /// while one is under way).
    pub(crate) fn busy(message: impl Into<String>) -> Error {
        Error::new(Kind::Busy, message, None)
    }

    /// A slot that exited or gave up before every slot was ready.
    pub(crate) fn not_ready(message: impl Into<String>) -> Error {
        Error::new(Kind::NotReady, message, None)
    }

    /// An upgrade whose new process did not take over.
    pub(crate) fn upgrade_failed(message: impl Into<String>) -> Error {
        Error::new(Kind::UpgradeFailed, message, None)
    }

    /// Returns true if a listen address could not be parsed or resolved.
    pub fn is_invalid_address(&self) -> bool {
        self.inner.kind == Kind::InvalidAddress
    }

    /// Returns true if a listen address is already in use by a socket that is
    /// not this cluster's.
    pub fn is_addr_in_use(&self) -> bool {
        self.inner.kind == Kind::AddrInUse
    }

    /// Returns true if binding or listening failed for another reason (no
    /// permission, address not available, ...).
    pub fn is_bind(&self) -> bool {
        matches!(self.inner.kind, Kind::Bind | Kind::AddrInUse)
    }

    /// Returns true if a configuration value was refused.
    pub fn is_config(&self) -> bool {
        self.inner.kind == Kind::Config
    }

    /// Returns true if the operation came after the cluster began to stop.
    pub fn is_stopped(&self) -> bool {
        self.inner.kind == Kind::Stopped
    }

    /// Returns true if this error wraps an I/O error (from `?` on an
    /// `io::Result`).
    pub fn is_io(&self) -> bool {
        self.inner.kind == Kind::Io
    }

    /// Returns true if a thread or runtime could not be created.
    pub fn is_spawn(&self) -> bool {
        self.inner.kind == Kind::Spawn
    }

    /// Returns true if a wait ran out of time, such as
    /// [`Collection::acquire_timeout`](crate::Collection::acquire_timeout).
    pub fn is_timeout(&self) -> bool {
        self.inner.kind == Kind::Timeout
    }

    /// Returns true if a [`KeyLock`](crate::KeyLock) was taken back by the
    /// store before it was released (its lease ran out, or the store released
    /// it for a worker that had exited); its changes were not committed.
    pub fn is_lock_lost(&self) -> bool {
        self.inner.kind == Kind::LockLost
    }

    /// Returns true if a key or a value is over its collection's size limit
    /// ([`CollectionOptions`](crate::CollectionOptions)).
    pub fn is_too_large(&self) -> bool {
        self.inner.kind == Kind::TooLarge
    }

    /// Returns true if a bus message was addressed to a slot the cluster
    /// does not have, or to a host (or a slot of a host) that the bus does
    /// not know.
    pub fn is_no_such_slot(&self) -> bool {
        self.inner.kind == Kind::NoSuchSlot
    }

    /// Returns true if a [`Bus::try_send`](crate::Bus::try_send) found the
    /// inbox full.
    pub fn is_full(&self) -> bool {
        self.inner.kind == Kind::Full
    }

    /// Returns true if a [`Bus::request`](crate::Bus::request) ended without
    /// a reply: its receiver dropped it, or exited before replying.
    pub fn is_no_reply(&self) -> bool {
        self.inner.kind == Kind::NoReply
    }

    /// Returns true if a stored value is not what the operation expects: not a
    /// decimal `i64` for [`incr`](crate::Collection::incr), or not decodable
    /// (or encodable) as the type asked of `get_as`/`set_as`.
    pub fn is_invalid_value(&self) -> bool {
        self.inner.kind == Kind::InvalidValue
    }

    /// Returns true if the store's or the bus's backend (Redis) could not be
    /// reached, or did not answer within its timeout. The operation may or
    /// may not have taken effect there; the client reconnects by itself, so
    /// a later call can succeed.
    pub fn is_unavailable(&self) -> bool {
        self.inner.kind == Kind::Unavailable
    }

    /// Returns true if the request was refused because of what the cluster
    /// is doing: an upgrade while another is under way. Nothing was done;
    /// try again once it is over.
    pub fn is_busy(&self) -> bool {
        self.inner.kind == Kind::Busy
    }

    /// Returns true if an upgrade's new process did not take over: it
    /// could not be started, exited, or was not ready within
    /// `ready_timeout`. It was stopped, and this process serves on; the
    /// message says why.
    pub fn is_upgrade_failed(&self) -> bool {
        self.inner.kind == Kind::UpgradeFailed
    }

    /// Returns true if a wait for every slot to be ready
    /// (`Cluster::ready`) ended because a slot's worker exited or gave up
    /// first; the message names the slot and how it ended.
    pub fn is_not_ready(&self) -> bool {
        self.inner.kind == Kind::NotReady
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("forkless::Error");
        d.field("kind", &self.inner.kind);
        d.field("message", &self.inner.message);
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::new(Kind::Io, e.to_string(), Some(e))
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_errors_name_the_address_and_keep_the_cause() {
        let e = Error::bind("127.0.0.1:80", io::Error::from(io::ErrorKind::AddrInUse));
        assert!(e.is_addr_in_use() && e.is_bind());
        assert!(e.to_string().contains("127.0.0.1:80"), "{e}");
        assert!(std::error::Error::source(&e).is_some());

        let e = Error::bind("[::1]:80", io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(!e.is_addr_in_use() && e.is_bind());
        assert!(e.to_string().contains("[::1]:80") && e.to_string().contains("permission"));
    }

    #[test]
    fn predicates_are_exclusive() {
        let e = Error::config("workers must be at least 1");
        assert!(e.is_config() && !e.is_bind() && !e.is_stopped() && !e.is_spawn());
        let e = Error::stopped("listen");
        assert!(e.is_stopped() && !e.is_config());
        assert!(format!("{e:?}").contains("Stopped"));
    }
}
