//! A copy of the in-process store, to move it to another process in an
//! upgrade: every collection with its options, every key with its value and
//! the time it has left before it expires. Counters are values (a decimal
//! `i64`), so they move as values.
//!
//! The old process makes one with [`StoreEngine::export`], which also closes
//! its engine (so that no write it acknowledges after the copy is lost),
//! and sends it with [`Snapshot::write_to`]; the new one reads it with
//! [`Snapshot::read_from`] and loads it with [`StoreEngine::import`] into
//! its empty engine, held until then ([`StoreEngine::hold`]). The byte
//! format, versioned, is described in [`wire`].
//!
//! Locks do not move. By the time of the export the old process's workers
//! have all exited, and the store took their locks back as each exited; a
//! lock still held then is held by a handle outside the workers (the old
//! process's `Cluster::store()`), which cannot outlive its process: the
//! export releases it without committing anything, as when a lease runs
//! out, and its holder's release fails with a lock-lost error.
//!
//! The socket, and when to write and read, are the supervisor's: this module
//! only copies and encodes.
//!
//! [`StoreEngine::export`]: super::StoreEngine::export
//! [`StoreEngine::import`]: super::StoreEngine::import
//! [`StoreEngine::hold`]: super::StoreEngine::hold

#[cfg(test)]
mod tests;
mod wire;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use forkless_worker::rt::Errors as _;
use forkless_worker::{CollectionOptions, Error};

use super::checks::{check_options, shorten};

/// The store's collections and keys at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Snapshot {
    /// Each collection once, by name.
    pub(crate) collections: Vec<CollectionSnapshot>,
}

/// One collection in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CollectionSnapshot {
    pub(crate) name: String,
    pub(crate) options: CollectionOptions,
    /// Its keys with a value, each once. Keys that held only a lock are not
    /// here: locks do not move.
    pub(crate) keys: Vec<KeySnapshot>,
}

/// One key with its value in a [`CollectionSnapshot`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KeySnapshot {
    pub(crate) key: String,
    pub(crate) value: Bytes,
    /// The time the key had left before it expired, when the snapshot was
    /// made: more than zero and at most the collection's `expire_keys`;
    /// `None` exactly when the collection has no expiry. Imported, the key
    /// expires that long after the import unless it is read or written
    /// first (which starts its `expire_keys` again, as in the old process).
    pub(crate) expires_in: Option<Duration>,
}

impl Snapshot {
    /// The format version [`write_to`](Snapshot::write_to) writes.
    pub(crate) const VERSION_WRITTEN: u32 = wire::VERSION;

    /// The format versions [`read_from`](Snapshot::read_from) reads: what
    /// an upgrade's new process tells the old one before the switch, so that
    /// the old one never hands its store to a process that cannot load it.
    pub(crate) const VERSIONS_READ: &'static [u32] = &[wire::VERSION];

    /// The number of keys, over every collection.
    pub(crate) fn keys(&self) -> usize {
        self.collections.iter().map(|c| c.keys.len()).sum()
    }

    /// Whether it holds no key (it may still name collections).
    pub(crate) fn is_empty(&self) -> bool {
        self.collections.iter().all(|c| c.keys.is_empty())
    }

    /// Checks what an import relies on, except that keys are unique (the
    /// import finds a repeated key as it loads them, and loads nothing):
    /// each collection named once, with options `configure` would accept,
    /// and its keys' remaining times consistent with its expiry.
    ///
    /// Keys and values longer than the collection's `max_key_size` and
    /// `max_value_size` are accepted: the old store holds such values when
    /// the limits were lowered after they were written.
    ///
    /// # Errors
    ///
    /// [`Error::is_invalid_value`], saying what is wrong where.
    pub(crate) fn check(&self) -> Result<(), Error> {
        let mut names = HashSet::new();
        for c in &self.collections {
            if !names.insert(c.name.as_str()) {
                return Err(invalid(format!(
                    "collection {:?} appears twice",
                    shorten(&c.name)
                )));
            }
            c.check()?;
        }
        Ok(())
    }
}

impl CollectionSnapshot {
    /// [`Snapshot::check`] for one collection.
    pub(crate) fn check(&self) -> Result<(), Error> {
        check_options(&self.name, &self.options).map_err(|e| invalid(e.to_string()))?;
        for k in &self.keys {
            k.check(&self.name, self.options.expire_keys)?;
        }
        Ok(())
    }
}

impl KeySnapshot {
    /// Checks that the key's remaining time fits the collection's expiry
    /// `ttl`.
    pub(crate) fn check(&self, collection: &str, ttl: Option<Duration>) -> Result<(), Error> {
        let fits = match (ttl, self.expires_in) {
            (None, None) => true,
            (Some(ttl), Some(left)) => !left.is_zero() && left <= ttl,
            _ => false,
        };
        if fits {
            return Ok(());
        }
        Err(invalid(format!(
            "key {:?} in collection {:?} has {:?} left before it expires, which does not fit \
             the collection's expire_keys of {ttl:?}",
            shorten(&self.key),
            shorten(collection),
            self.expires_in,
        )))
    }
}

/// The error of a snapshot that cannot be loaded.
fn invalid(message: String) -> Error {
    Error::invalid_value(format!("store snapshot: {message}"))
}
