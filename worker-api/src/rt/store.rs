//! The store's half of the contract: what an engine that keeps the data
//! implements ([`StoreBackend`], [`CollectionBackend`]) for the client
//! ([`Store`](crate::Store), [`Collection`](crate::Collection),
//! [`KeyLock`](crate::KeyLock)).
//!
//! Every operation returns a [`Reply`]: either its result at once, or a
//! channel on which the engine answers once the operation's turn comes (it
//! waits behind a lock). The client never blocks a thread on the engine.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::Owner;
use crate::{CollectionOptions, Error};

/// How long an acquire may wait behind the current holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Do not wait: answer `NotGranted` if the key is locked.
    No,
    /// Wait as long as it takes.
    Forever,
    /// Wait at most this long, then fail with a timeout error.
    For(Duration),
}

/// One operation on one key.
#[derive(Debug, Clone)]
pub enum Op {
    /// Read the value.
    Get,
    /// Write the value.
    Set(Bytes),
    /// Remove the key.
    Del,
    /// Add to the value read as a decimal `i64` (a missing key reads 0).
    Incr(i64),
    /// Replace the value with `new` if it equals `expected`.
    CompareAndSwap {
        /// The value the key must hold (`None`: the key must be absent).
        expected: Option<Bytes>,
        /// The value to store (`None`: remove the key).
        new: Option<Bytes>,
    },
    /// Lock the key.
    Acquire {
        /// How long to wait behind the current holder.
        wait: Wait,
        /// Take the lock back after this long.
        lease: Option<Duration>,
    },
}

/// What a lock's holder commits when it releases the lock.
#[derive(Debug, Clone)]
pub enum Change {
    /// Leave the value as it is.
    Keep,
    /// Store this value.
    Set(Bytes),
    /// Remove the key.
    Del,
}

/// A granted lock.
#[derive(Debug)]
pub struct Grant {
    /// Identifies this holding of the lock; the release must present it.
    pub token: u64,
    /// The key's value when the lock was granted.
    pub value: Option<Bytes>,
}

/// The result of an operation.
#[derive(Debug)]
pub enum Outcome {
    /// `Get`: the value, if any.
    Value(Option<Bytes>),
    /// `Set`, `configure` and a release: done.
    Done,
    /// `Del`: whether the key held a value.
    Removed(bool),
    /// `Incr`: the new value.
    Int(i64),
    /// `CompareAndSwap`: whether the value was replaced.
    Swapped(bool),
    /// `Acquire`: the lock.
    Granted(Grant),
    /// `Acquire` with [`Wait::No`] on a locked key.
    NotGranted,
    /// `len`: the number of keys.
    Count(usize),
}

/// The engine's answer to an operation.
pub enum Reply {
    /// The result, at once.
    Ready(Result<Outcome, Error>),
    /// The result comes on this channel. If the channel closes without one,
    /// the store was closed.
    Later(oneshot::Receiver<Result<Outcome, Error>>),
    /// The result comes from this future, which the caller drives: the
    /// engine's I/O runs on the caller's own runtime. Never for an acquire
    /// or a release, which must finish even if their caller goes away.
    Future(std::pin::Pin<Box<dyn std::future::Future<Output = Result<Outcome, Error>> + Send>>),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Ready(result) => f.debug_tuple("Ready").field(result).finish(),
            Reply::Later(rx) => f.debug_tuple("Later").field(rx).finish(),
            Reply::Future(_) => f.write_str("Future(..)"),
        }
    }
}

/// The engine of a store: a set of named collections.
pub trait StoreBackend: Send + Sync + 'static {
    /// The collection named `name`, created on first use.
    fn collection(&self, name: &str) -> Arc<dyn CollectionBackend>;
}

/// The engine of one collection.
pub trait CollectionBackend: Send + Sync + 'static {
    /// The collection's name.
    fn name(&self) -> &str;

    /// Replaces the collection's options, checked first.
    fn configure(&self, options: &CollectionOptions) -> Reply;

    /// The collection's options.
    fn options(&self) -> CollectionOptions;

    /// Runs `op` on `key` for `owner`.
    fn op(&self, owner: Option<Owner>, key: &str, op: Op) -> Reply;

    /// Releases the lock on `key` held with `token`, committing `change`.
    /// Fails with a lock-lost error if the lock is no longer held with that
    /// token; the change is then not made.
    fn release(&self, key: &str, token: u64, change: Change) -> Reply;

    /// The number of keys that hold a value or a lock.
    fn count(&self) -> Reply;
}
