//! The store's Lua scripts (in `scripts/`), the codes they answer with,
//! how their answers read, and durations as the scripts pass them to Redis.
//!
//! The scripts of the operations on an unlocked key (get, set, del, incr,
//! compare-and-swap) start with `store_unlocked.lua`, which checks the lock
//! and heals what a lock whose lease ran out left behind. Most of those
//! operations first try a plain command that fails on a locked key
//! ([`collection`](super::collection)), and run their script only then.

use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use forkless_worker::rt::Errors as _;
use forkless_worker::Error;
use redis::{Script, Value};

use crate::time::deadline;

/// Codes the scripts answer with, first in a two-item table: the key is
/// locked; done, and the second item is the value; the operation was refused
/// (the second item says why). Any other code: done, no value.
pub(super) const LOCKED: i64 = 0;
pub(super) const VALUE: i64 = 2;
pub(super) const REFUSED: i64 = 3;

pub(super) static GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("scripts/store_unlocked.lua"),
        include_str!("scripts/store_get.lua")
    ))
});

pub(super) static SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("scripts/store_unlocked.lua"),
        include_str!("scripts/store_set.lua")
    ))
});

pub(super) static DEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("scripts/store_unlocked.lua"),
        include_str!("scripts/store_del.lua")
    ))
});

pub(super) static INCR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("scripts/store_unlocked.lua"),
        include_str!("scripts/store_incr.lua")
    ))
});

pub(super) static CAS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("scripts/store_unlocked.lua"),
        include_str!("scripts/store_cas.lua")
    ))
});

pub(super) static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/store_acquire.lua")));

pub(super) static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/store_release.lua")));

pub(super) static RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/store_renew.lua")));

/// How much longer than its lease the hash that stands for a lock on a key
/// without a value lives (`store_acquire.lua`): it must outlive the lock
/// key, or a plain `SET` could slip in while the lock is still held.
pub(super) const HOLD_MARGIN_MS: u64 = 1000;

/// A duration in whole milliseconds as Redis takes them in `PX` and
/// `PEXPIRE`: at least 1, at most [`deadline::FAR`] (Redis refuses a time
/// to live whose end overflows its clock).
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.min(deadline::FAR).as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn malformed(what: &Value) -> Error {
    Error::unavailable(format!(
        "Redis answered a store script with {what:?}, which the store does not understand"
    ))
}

/// A script's `{code, value}` answer.
pub(super) fn answer_of(v: Value) -> Result<(i64, Value), Error> {
    match v {
        Value::Array(mut items) if items.len() == 2 => {
            let value = items.pop().unwrap_or(Value::Nil);
            let code = int_of(&items[0])?;
            Ok((code, value))
        }
        other => Err(malformed(&other)),
    }
}

pub(super) fn int_of(v: &Value) -> Result<i64, Error> {
    match v {
        Value::Int(n) => Ok(*n),
        other => Err(malformed(other)),
    }
}

pub(super) fn bytes_of(v: Value) -> Result<Bytes, Error> {
    match v {
        Value::BulkString(b) => Ok(Bytes::from(b)),
        Value::SimpleString(s) => Ok(Bytes::from(s)),
        other => Err(malformed(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_are_what_redis_accepts_in_px() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 1);
        assert_eq!(millis(Duration::from_secs(2)), 2000);
        let far = u64::try_from(deadline::FAR.as_millis()).expect("fits");
        assert_eq!(millis(deadline::FAR), far);
        assert_eq!(millis(Duration::MAX), far, "saturates, never u64::MAX");
        // Redis refuses a PX whose end, from its clock in ms, overflows an
        // i64: thirty years from now is far from that.
        assert!(far < (i64::MAX as u64) / 2);
    }
}
