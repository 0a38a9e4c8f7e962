//! What both store engines check and say alike: limits on options, keys and
//! values, the errors of a lost lock and of a value too large, the workers
//! that have exited (their locks are neither kept nor granted), and the
//! collection table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use forkless_worker::rt::store::Op;
use forkless_worker::rt::Errors as _;
use forkless_worker::rt::Owner;
use forkless_worker::{CollectionOptions, Error};

use crate::time::deadline;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The collection named `name` in `map`, made by `make` on first use. Most
/// calls find it under the read lock.
pub(crate) fn named<T>(
    map: &RwLock<HashMap<String, Arc<T>>>,
    name: &str,
    make: impl FnOnce() -> Arc<T>,
) -> Arc<T> {
    if let Some(c) = map.read().unwrap_or_else(PoisonError::into_inner).get(name) {
        return c.clone();
    }
    map.write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(name.to_owned())
        .or_insert_with(make)
        .clone()
}

/// The error of a release whose lock was taken back.
pub(crate) fn lock_lost(collection: &str, key: &str) -> Error {
    Error::lock_lost(format!(
        "the lock on key {:?} in collection {collection:?} is no longer held (its lease ran \
         out, or its worker exited and the store released it); nothing was committed",
        shorten(key)
    ))
}

pub(crate) fn too_large(collection: &str, what: &str, size: usize, max: usize, key: &str) -> Error {
    Error::too_large(format!(
        "{what} of {size} bytes is over collection {collection:?}'s limit of {max} bytes (key {:?})",
        shorten(key)
    ))
}

/// Refuses an operation whose key or value is over the limits.
pub(crate) fn check_sizes(
    collection: &str,
    key: &str,
    op: &Op,
    max_key: usize,
    max_value: usize,
) -> Result<(), Error> {
    if key.len() > max_key {
        return Err(too_large(collection, "a key", key.len(), max_key, key));
    }
    let value = match op {
        Op::Set(v) => Some(v),
        Op::CompareAndSwap { new: Some(v), .. } => Some(v),
        _ => None,
    };
    match value {
        Some(v) if v.len() > max_value => {
            Err(too_large(collection, "a value", v.len(), max_value, key))
        }
        _ => Ok(()),
    }
}

/// Refuses options out of range: zero durations and sizes, and durations
/// over [`deadline::MAX_OPTION`].
pub(crate) fn check_options(collection: &str, options: &CollectionOptions) -> Result<(), Error> {
    let bad = |what: &str| {
        Err(Error::config(format!(
            "collection {collection:?}: {what} (got {options:?})"
        )))
    };
    if options.expire_keys == Some(Duration::ZERO) {
        return bad("expire_keys must be more than zero; use None to keep keys");
    }
    if options.max_hold == Some(Duration::ZERO) {
        return bad("max_hold must be more than zero; use None for no limit");
    }
    if options.max_key_size == 0 || options.max_value_size == 0 {
        return bad("max_key_size and max_value_size must be at least 1");
    }
    if options.max_keys == Some(0) || options.max_bytes == Some(0) {
        return bad("max_keys and max_bytes must be at least 1; use None for no limit");
    }
    let named = |what: &str| format!("collection {collection:?}: {what}");
    if let Some(d) = options.expire_keys {
        deadline::check_option(&named("expire_keys"), d)?;
    }
    if let Some(d) = options.max_hold {
        deadline::check_option(&named("max_hold"), d)?;
    }
    Ok(())
}

/// The workers that have exited, per slot the newest generation: locks are
/// neither granted to it nor to any older one (it may still be running,
/// abandoned as hung).
#[derive(Default)]
pub(crate) struct Exits(Mutex<HashMap<usize, u64>>);

impl Exits {
    pub(crate) fn record(&self, slot: usize, generation: u64) {
        let mut exited = lock(&self.0);
        let newest = exited.entry(slot).or_insert(generation);
        *newest = (*newest).max(generation);
    }

    /// Returns true unless `owner` has exited (outside owners never do).
    pub(crate) fn alive(&self, owner: Option<Owner>) -> bool {
        owner.is_none_or(|o| lock(&self.0).get(&o.slot).is_none_or(|&g| o.generation > g))
    }
}

/// A key as shown in messages: at most 64 characters.
pub(crate) fn shorten(key: &str) -> String {
    match key.char_indices().nth(64) {
        None => key.to_owned(),
        Some((i, _)) => format!("{}...", &key[..i]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_cuts_long_keys_on_a_char_boundary() {
        assert_eq!(shorten("abc"), "abc");
        let long = "é".repeat(100);
        let short = shorten(&long);
        assert_eq!(short.chars().count(), 67);
        assert!(short.ends_with("..."));
    }
}
