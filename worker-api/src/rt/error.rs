//! The errors a runtime reports through the handles' [`Error`] type.

use std::fmt;
use std::io;

use crate::Error;

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::Error {}
}

/// The constructors of [`Error`] for a runtime: each makes the kind its
/// `is_*` method tests (`Error::config` is [`Error::is_config`], and so on).
/// Bring it into scope (`use forkless_worker::rt::Errors as _;`) and call
/// them as `Error::config(..)`. Sealed: only [`Error`] implements it.
pub trait Errors: sealed::Sealed {
    /// An address that cannot be parsed or resolved.
    fn invalid_address(addr: &str, why: impl fmt::Display) -> Error;

    /// A failed bind or listen of `addr`.
    fn bind(addr: impl fmt::Display, source: io::Error) -> Error;

    /// A builder value or option that is out of range.
    fn config(message: impl Into<String>) -> Error;

    /// An operation attempted after the cluster stopped.
    fn stopped(what: &str) -> Error;

    /// A thread or runtime that could not be created.
    fn spawn(what: impl fmt::Display, source: io::Error) -> Error;

    /// A wait that ran past its deadline.
    fn timeout(message: impl Into<String>) -> Error;

    /// A key lock that the store took back before its holder released it.
    fn lock_lost(message: impl Into<String>) -> Error;

    /// A key or value over its collection's limit.
    fn too_large(message: impl Into<String>) -> Error;

    /// A stored value that is not what the operation expects.
    fn invalid_value(message: impl Into<String>) -> Error;

    /// A bus message addressed to a slot the cluster does not have.
    fn no_such_slot(slot: usize, size: usize) -> Error;

    /// A bus message addressed to a host, or a slot of another host, that
    /// the bus cannot reach.
    fn no_such_address(message: impl Into<String>) -> Error;

    /// A bounded queue with no room.
    fn full(message: impl Into<String>) -> Error;

    /// A request whose receiver dropped it without replying.
    fn no_reply(message: impl Into<String>) -> Error;

    /// A backend (Redis) that could not be reached or did not answer in time.
    fn unavailable(message: impl Into<String>) -> Error;

    /// A request that what the cluster is doing excludes.
    fn busy(message: impl Into<String>) -> Error;

    /// An upgrade whose new process did not take over.
    fn upgrade_failed(message: impl Into<String>) -> Error;

    /// A slot that exited or gave up before every slot was ready.
    fn not_ready(message: impl Into<String>) -> Error;
}

impl Errors for Error {
    fn invalid_address(addr: &str, why: impl fmt::Display) -> Error {
        Error::invalid_address(addr, why)
    }

    fn bind(addr: impl fmt::Display, source: io::Error) -> Error {
        Error::bind(addr, source)
    }

    fn config(message: impl Into<String>) -> Error {
        Error::config(message)
    }

    fn stopped(what: &str) -> Error {
        Error::stopped(what)
    }

    fn spawn(what: impl fmt::Display, source: io::Error) -> Error {
        Error::spawn(what, source)
    }

    fn timeout(message: impl Into<String>) -> Error {
        Error::timeout(message)
    }

    fn lock_lost(message: impl Into<String>) -> Error {
        Error::lock_lost(message)
    }

    fn too_large(message: impl Into<String>) -> Error {
        Error::too_large(message)
    }

    fn invalid_value(message: impl Into<String>) -> Error {
        Error::invalid_value(message)
    }

    fn no_such_slot(slot: usize, size: usize) -> Error {
        Error::no_such_slot(slot, size)
    }

    fn no_such_address(message: impl Into<String>) -> Error {
        Error::no_such_address(message)
    }

    fn full(message: impl Into<String>) -> Error {
        Error::full(message)
    }

    fn no_reply(message: impl Into<String>) -> Error {
        Error::no_reply(message)
    }

    fn unavailable(message: impl Into<String>) -> Error {
        Error::unavailable(message)
    }

    fn busy(message: impl Into<String>) -> Error {
        Error::busy(message)
    }

    fn upgrade_failed(message: impl Into<String>) -> Error {
        Error::upgrade_failed(message)
    }

    fn not_ready(message: impl Into<String>) -> Error {
        Error::not_ready(message)
    }
}
