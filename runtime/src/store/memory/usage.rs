//! What a collection's values hold, counted against its `max_keys` and
//! `max_bytes`: each change of a value is counted, or refused with
//! [`Error::is_full`], under its shard's lock.

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use forkless_worker::rt::Errors as _;
use forkless_worker::Error;

use crate::store::checks::shorten;

use super::{Coll, Limits};

impl Coll {
    /// Counts `key`'s value going from `old` to `new`, or refuses it with
    /// [`Error::is_full`] (counting nothing) if that makes one key more than
    /// `max_keys` or grows the collection past `max_bytes`. Call it under
    /// the key's shard lock, and change the value only when it says yes.
    pub(super) fn account(
        &self,
        key: &str,
        limits: &Limits,
        old: Option<&Bytes>,
        new: Option<&Bytes>,
    ) -> Result<(), Error> {
        if !limits.counted() {
            return Ok(());
        }
        let size = |v: Option<&Bytes>| v.map_or(0, |v| key.len() + v.len());
        let (was, will) = (size(old), size(new));
        let usage = &self.usage;
        let added = old.is_none() && new.is_some();
        if added && !reserve(&usage.keys, 1, limits.max_keys) {
            let max = limits.max_keys.unwrap_or(usize::MAX);
            return Err(Error::full(format!(
                "collection {:?} is full: it holds its max_keys of {max} keys, so key {:?} \
                 cannot be added (delete keys, or raise max_keys)",
                self.name,
                shorten(key)
            )));
        }
        if will > was && !reserve(&usage.bytes, will - was, limits.max_bytes) {
            if added {
                usage.keys.fetch_sub(1, Ordering::Relaxed);
            }
            let max = limits.max_bytes.unwrap_or(usize::MAX);
            return Err(Error::full(format!(
                "collection {:?} is full: {} bytes more for key {:?} would take it past its \
                 max_bytes of {max} bytes (it holds {}; delete keys, or raise max_bytes)",
                self.name,
                will - was,
                shorten(key),
                usage.bytes.load(Ordering::Relaxed)
            )));
        }
        if will < was {
            usage.bytes.fetch_sub(was - will, Ordering::Relaxed);
        }
        if old.is_some() && new.is_none() {
            usage.keys.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Counts `key`'s value as gone.
    pub(super) fn forget_value(&self, limits: &Limits, key: &str, value: Option<&Bytes>) {
        if !limits.counted() {
            return;
        }
        if let Some(v) = value {
            self.usage.keys.fetch_sub(1, Ordering::Relaxed);
            self.usage
                .bytes
                .fetch_sub(key.len() + v.len(), Ordering::Relaxed);
        }
    }
}

/// Adds `by` to `counter` unless the sum would be over `max`; returns
/// whether it did.
fn reserve(counter: &AtomicUsize, by: usize, max: Option<usize>) -> bool {
    match max {
        None => {
            counter.fetch_add(by, Ordering::Relaxed);
            true
        }
        Some(max) => counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                n.checked_add(by).filter(|&sum| sum <= max)
            })
            .is_ok(),
    }
}
