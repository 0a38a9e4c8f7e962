//! A collection of the in-process store: its shards, the operations a
//! worker runs on it ([`CollectionBackend`]) on a key that is not locked
//! (one behind a lock waits in the key's queue, see [`locks`](super::locks);
//! every one waits while the engine is held, see [`hold`](super::hold)),
//! and its options, applied to every shard at once.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use forkless_worker::rt::store::{Change, CollectionBackend, Op, Outcome, Reply};
use forkless_worker::rt::Errors as _;
use forkless_worker::rt::Owner;
use forkless_worker::{CollectionOptions, Error};

use crate::store::checks::{check_options, check_sizes, lock_lost, shorten, too_large};

use super::hold::Call;
use super::locks::{raise, take_lock, Back, NewChannel, Ran};
use super::{lock, Coll, Core, Ctx, Entry, Hasher, Limits, Panic, Shard, ShardData, Usage, SHARDS};

impl Coll {
    pub(super) fn new(name: &str, core: Arc<Core>) -> Arc<Coll> {
        let defaults = CollectionOptions::default();
        let epoch = Instant::now();
        Arc::new_cyclic(|me| Coll {
            name: name.to_owned(),
            me: me.clone(),
            core,
            sweeping: AtomicBool::new(false),
            hasher: Hasher::default(),
            shards: (0..SHARDS)
                .map(|_| {
                    Shard(Mutex::new(ShardData {
                        map: HashMap::default(),
                        limits: Limits::from(&defaults),
                        locks: 0,
                        epoch,
                        ops: 0,
                        waits: 0,
                    }))
                })
                .collect(),
            options: Mutex::new(defaults),
            usage: Usage::default(),
        })
    }

    pub(super) fn arc(&self) -> Arc<Coll> {
        // `self` is reached through an `Arc`, so the upgrade cannot fail
        // while a method of it runs.
        self.me.upgrade().unwrap_or_else(|| unreachable!())
    }

    /// The index of `key`'s shard.
    pub(super) fn shard_index(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    pub(super) fn shard(&self, key: &str) -> MutexGuard<'_, ShardData> {
        lock(&self.shards[self.shard_index(key)].0)
    }

    /// Every shard, locked in order.
    pub(super) fn lock_all(&self) -> Vec<MutexGuard<'_, ShardData>> {
        self.shards.iter().map(|s| lock(&s.0)).collect()
    }

    pub(super) fn stopped(&self) -> Error {
        Error::stopped(&format!("store collection {:?}", self.name))
    }

    fn lock_lost(&self, key: &str) -> Error {
        lock_lost(&self.name, key)
    }

    /// The error of a release after the store was exported: the export
    /// took every lock back.
    fn lock_exported(&self, key: &str) -> Error {
        Error::lock_lost(format!(
            "the lock on key {:?} in collection {:?} is no longer held: the store was moved to \
             the process that took over from this one, and locks do not move; nothing was \
             committed",
            shorten(key),
            self.name
        ))
    }

    fn too_large(&self, what: &str, size: usize, max: usize, key: &str) -> Error {
        too_large(&self.name, what, size, max, key)
    }

    /// Refuses an operation whose key or value is over the limits.
    fn check(&self, key: &str, op: &Op, limits: &Limits) -> Result<(), Error> {
        check_sizes(&self.name, key, op, limits.max_key, limits.max_value)
    }
}

impl Ctx<'_> {
    pub(super) fn touch(&self, e: &mut Entry) {
        if let Some(now) = self.now {
            e.touched = now;
        }
    }

    /// Gives `e` the value `new`, counted in the collection's usage, unless
    /// that would take the collection past its limits.
    fn put(&self, e: &mut Entry, new: Option<Bytes>) -> Result<(), Error> {
        self.coll
            .account(self.key, &self.limits, e.value.as_ref(), new.as_ref())?;
        e.value = new;
        Ok(())
    }

    fn expired(&self, e: &Entry) -> bool {
        match (self.limits.expire, self.now) {
            (Some(ttl), Some(now)) => {
                e.lock.is_none() && now.saturating_duration_since(e.touched) >= ttl
            }
            _ => false,
        }
    }

    /// Runs `op` on an unlocked entry (`value: None` is a missing key).
    pub(super) fn apply(
        &mut self,
        e: &mut Entry,
        owner: Option<Owner>,
        op: Op,
    ) -> Result<Outcome, Error> {
        match op {
            Op::Get => {
                if e.value.is_some() {
                    self.touch(e);
                }
                Ok(Outcome::Value(e.value.clone()))
            }
            Op::Set(v) => {
                self.put(e, Some(v))?;
                self.touch(e);
                Ok(Outcome::Done)
            }
            Op::Del => {
                let existed = e.value.is_some();
                self.put(e, None)?;
                Ok(Outcome::Removed(existed))
            }
            Op::Incr(by) => {
                let current = match &e.value {
                    None => 0,
                    Some(v) => std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .ok_or_else(|| {
                            Error::invalid_value(format!(
                                "incr: the value of key {:?} in collection {:?} is not a decimal i64",
                                shorten(self.key),
                                self.coll.name
                            ))
                        })?,
                };
                let n = current.checked_add(by).ok_or_else(|| {
                    Error::invalid_value(format!(
                        "incr: {current} + {by} overflows an i64 (key {:?} in collection {:?})",
                        shorten(self.key),
                        self.coll.name
                    ))
                })?;
                self.put(e, Some(Bytes::from(n.to_string())))?;
                self.touch(e);
                Ok(Outcome::Int(n))
            }
            Op::CompareAndSwap { expected, new } => {
                let swap = e.value == expected;
                if swap {
                    self.put(e, new)?;
                }
                if e.value.is_some() {
                    self.touch(e);
                }
                Ok(Outcome::Swapped(swap))
            }
            Op::Acquire { lease, .. } => {
                if !self.coll.core.alive(owner) {
                    return Err(self.coll.stopped());
                }
                Ok(Outcome::Granted(self.grant(
                    e,
                    owner,
                    lease,
                    VecDeque::new(),
                )))
            }
        }
    }
}

impl CollectionBackend for Coll {
    fn name(&self) -> &str {
        &self.name
    }

    fn configure(&self, options: &CollectionOptions) -> Reply {
        if self.core.hold.is_on() {
            return self.park(Call::Configure(options.clone()));
        }
        Reply::Ready(self.configure_now(options))
    }

    fn options(&self) -> CollectionOptions {
        lock(&self.options).clone()
    }

    fn op(&self, owner: Option<Owner>, key: &str, op: Op) -> Reply {
        if self.core.hold.is_on() {
            let key = key.into();
            return self.park(Call::Op { owner, key, op });
        }
        self.op_now(owner, key, op)
    }

    fn release(&self, key: &str, token: u64, change: Change) -> Reply {
        if self.core.hold.is_on() {
            let key = key.into();
            return self.park(Call::Release { key, token, change });
        }
        let mut panicked = None;
        let result = self.release_now(key, token, change, &mut panicked);
        raise(panicked);
        Reply::Ready(result)
    }

    fn count(&self) -> Reply {
        if self.core.hold.is_on() {
            return self.park(Call::Count);
        }
        Reply::Ready(self.count_now())
    }
}

impl Coll {
    /// [`CollectionBackend::op`] on an engine that is not held.
    pub(super) fn op_now(&self, owner: Option<Owner>, key: &str, op: Op) -> Reply {
        match self.run_op(owner, key, op, NewChannel) {
            Ran::Now(result, NewChannel) => Reply::Ready(result),
            Ran::Waits(rx) => Reply::Later(rx),
        }
    }

    /// Runs `op` on `key` for `owner`, or queues it behind the key's lock
    /// with its answer to go where `back` says.
    pub(super) fn run_op<B: Back>(
        &self,
        owner: Option<Owner>,
        key: &str,
        op: Op,
        back: B,
    ) -> Ran<B> {
        let mut guard = self.shard(key);
        if self.core.is_closed() {
            return Ran::Now(Err(self.stopped()), back);
        }
        let ShardData {
            map,
            limits,
            locks,
            epoch,
            ops,
            waits,
        } = &mut *guard;
        *ops += 1;
        if let Err(e) = self.check(key, &op, limits) {
            return Ran::Now(Err(e), back);
        }
        let mut ctx = Ctx {
            coll: self,
            key,
            limits: *limits,
            now: limits.expire.map(|_| Instant::now()),
            locks,
            panicked: None,
        };
        match map.get_mut(key) {
            Some(entry) => {
                if let Some(locked) = &mut entry.lock {
                    *waits += 1;
                    return self.enqueue(locked, owner, key, op, back);
                }
                if ctx.expired(entry) {
                    self.forget_value(limits, key, entry.value.take().as_ref());
                }
                let result = ctx.apply(entry, owner, op);
                if entry.is_empty() {
                    map.remove(key);
                }
                Ran::Now(result, back)
            }
            None => {
                let mut entry = Entry {
                    value: None,
                    touched: ctx.now.unwrap_or(*epoch),
                    lock: None,
                };
                let result = ctx.apply(&mut entry, owner, op);
                if !entry.is_empty() {
                    map.insert(key.into(), entry);
                }
                Ran::Now(result, back)
            }
        }
    }

    /// [`CollectionBackend::release`] on an engine that is not held; a
    /// waiter's waker that panics is left in `panicked`, for the caller to
    /// raise.
    pub(super) fn release_now(
        &self,
        key: &str,
        token: u64,
        change: Change,
        panicked: &mut Option<Panic>,
    ) -> Result<Outcome, Error> {
        let mut guard = self.shard(key);
        if self.core.is_closed() {
            if self.core.is_exported() {
                return Err(self.lock_exported(key));
            }
            return Err(self.stopped());
        }
        let data = &mut *guard;
        let held = data
            .map
            .get(key)
            .and_then(|e| e.lock.as_ref())
            .is_some_and(|l| l.token == token);
        if !held {
            return Err(self.lock_lost(key));
        }
        let mut result = Ok(Outcome::Done);
        if let Some(entry) = data.map.get_mut(key) {
            let new = match change {
                Change::Keep => None,
                Change::Set(v) if v.len() > data.limits.max_value => {
                    result = Err(self.too_large("a value", v.len(), data.limits.max_value, key));
                    None
                }
                Change::Set(v) => Some(Some(v)),
                Change::Del => Some(None),
            };
            if let Some(new) = new {
                match self.account(key, &data.limits, entry.value.as_ref(), new.as_ref()) {
                    Ok(()) => entry.value = new,
                    Err(e) => result = Err(e),
                }
            }
        }
        take_lock(self, data, key, Some(token), panicked);
        drop(guard);
        result
    }

    /// [`CollectionBackend::count`] on an engine that is not held.
    pub(super) fn count_now(&self) -> Result<Outcome, Error> {
        if self.core.is_closed() {
            return Err(self.stopped());
        }
        let mut n = 0;
        for shard in self.shards.iter() {
            let data = lock(&shard.0);
            n += match data.limits.expire {
                None => data.map.len(),
                Some(ttl) => {
                    let now = Instant::now();
                    data.map
                        .values()
                        .filter(|e| {
                            e.lock.is_some() || now.saturating_duration_since(e.touched) < ttl
                        })
                        .count()
                }
            };
        }
        Ok(Outcome::Count(n))
    }

    /// [`CollectionBackend::configure`] on an engine that is not held.
    pub(super) fn configure_now(&self, options: &CollectionOptions) -> Result<Outcome, Error> {
        if self.core.is_closed() {
            return Err(self.stopped());
        }
        check_options(&self.name, options)?;
        let limits = Limits::from(options);
        // Every shard at once: a limit turned on counts what is there,
        // exactly, before any operation sees it; and an export, which
        // takes them all too, sees the options with the data.
        let mut shards = self.lock_all();
        if self.core.is_closed() {
            return Err(self.stopped());
        }
        *lock(&self.options) = options.clone();
        let now = Instant::now();
        let counted = shards.first().is_some_and(|d| d.limits.counted());
        if limits.counted() && !counted {
            let (mut keys, mut bytes) = (0, 0);
            for data in &shards {
                for (k, e) in &data.map {
                    if let Some(v) = &e.value {
                        keys += 1;
                        bytes += k.len() + v.len();
                    }
                }
            }
            self.usage.keys.store(keys, Ordering::Relaxed);
            self.usage.bytes.store(bytes, Ordering::Relaxed);
        }
        for data in &mut shards {
            if data.limits.expire.is_none() && limits.expire.is_some() {
                // Keys start their time to live now, not when they were set.
                for e in data.map.values_mut() {
                    e.touched = now;
                }
            }
            data.limits = limits;
        }
        drop(shards);
        self.start_sweeping(limits.expire);
        Ok(Outcome::Done)
    }

    /// Starts the sweeps of a collection with expiry `expire`, unless they
    /// run.
    pub(super) fn start_sweeping(&self, expire: Option<std::time::Duration>) {
        if let Some(ttl) = expire {
            if !self.sweeping.swap(true, Ordering::SeqCst) {
                self.schedule_sweep(ttl);
            }
        }
    }
}
