//! The in-process store engine behind `Store`, `Collection` and `KeyLock`.
//!
//! Each collection is split into shards, each a small mutex-guarded hash map.
//! An operation locks one shard, does O(1) work and unlocks: no I/O, no
//! allocation beyond the key and value, never across an `await`. So a worker
//! calls the engine directly, with no thread hop, and still never stalls its
//! runtime. An operation that must wait (its key is locked) leaves a oneshot
//! sender in the key's queue and returns; the release that lets it run
//! answers it, in arrival order.
//!
//! The cluster's timer thread ([`Clock`]) fires the store's timers: lock
//! leases, acquire timeouts, and the sweeps that drop expired keys nobody
//! reads (reads check expiry themselves, so a sweep only frees memory).
//! Every deadline is made with [`deadline::from_now`], so that no duration a
//! worker passes can overflow an `Instant` on the thread that grants a lock
//! (which may be the master's, when a holder exits).
//!
//! What a collection's values hold (keys with a value, and their keys' and
//! values' bytes) is counted in two collection-wide atomics, changed under
//! the shard lock by each operation that changes a value: `max_keys` and
//! `max_bytes` are checked against them in O(1). A key's queue is bounded
//! ([`MAX_WAITERS`]) and pruned of the operations whose callers left as it
//! grows, so that abandoned waiters do not pile up behind a lock.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use forkless_worker::backend::{
    Change, CollectionBackend, Grant, Op, Outcome, Owner, Reply, StoreBackend, Wait,
};
use forkless_worker::{CollectionOptions, Error};
use tokio::sync::oneshot;

use crate::store::StoreEngine;
use crate::time::clock::{Clock, TimerKey};
use crate::time::deadline;

use super::checks::{check_options, check_sizes, lock_lost, named, shorten, too_large, Exits};

type Hasher = foldhash::fast::RandomState;
type Answer = oneshot::Sender<Result<Outcome, Error>>;

/// A panic caught while a waiter was answered, raised again once the shard
/// is consistent.
type Panic = Box<dyn std::any::Any + Send>;

/// Shards per collection: enough that workers on different keys rarely meet
/// on a mutex.
const SHARDS: usize = 32;

/// The longest pause between two sweeps of a collection with expiry.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The most operations that wait behind one key's lock; one more fails with
/// [`Error::is_full`].
pub(crate) const MAX_WAITERS: usize = 65_536;

/// A key's queue is swept of operations whose callers left at least every
/// this many new arrivals (and every quarter of its length at the last
/// sweep, whichever is more: amortised O(1) per arrival).
const MIN_QUEUE_SWEEP: usize = 16;

/// The store of one cluster.
pub(crate) struct Engine {
    collections: RwLock<HashMap<String, Arc<Coll>>>,
    core: Arc<Core>,
}

/// What every collection of a store shares.
struct Core {
    closed: AtomicBool,
    next_id: AtomicU64,
    exits: Exits,
    clock: Arc<Clock>,
}

enum TimerKind {
    Lease { key: Box<str>, token: u64 },
    WaitTimeout { key: Box<str>, waiter: u64 },
    Sweep,
}

/// One collection.
struct Coll {
    name: String,
    me: Weak<Coll>,
    core: Arc<Core>,
    options: Mutex<CollectionOptions>,
    sweeping: AtomicBool,
    hasher: Hasher,
    shards: Box<[Shard]>,
    usage: Usage,
}

/// What a collection's values hold: the keys with a value, and the bytes of
/// those keys and values. Counted only while the collection has a
/// `max_keys` or `max_bytes` (an unlimited collection's workers then share
/// no counter: no cache line bounces between cores on its writes); turning
/// a limit on counts the collection once under every shard's lock. Changed
/// only under the lock of the shard whose value changes, so the sums are
/// exact; on a cache line of their own.
#[repr(align(128))]
#[derive(Default)]
struct Usage {
    keys: AtomicUsize,
    bytes: AtomicUsize,
}

/// A shard on a cache line of its own, so that two workers busy on two
/// shards do not share one.
#[repr(align(128))]
struct Shard(Mutex<ShardData>);

struct ShardData {
    map: HashMap<Box<str>, Entry, Hasher>,
    limits: Limits,
    /// How many keys of this shard are locked: a worker's exit only scans
    /// shards with locks.
    locks: usize,
    /// Stands in for "last access" while expiry is off.
    epoch: Instant,
    /// Operations, and those that waited behind a lock, for metrics.
    ops: u64,
    waits: u64,
}

#[derive(Clone, Copy)]
struct Limits {
    expire: Option<Duration>,
    max_key: usize,
    max_value: usize,
    max_hold: Option<Duration>,
    max_keys: Option<usize>,
    max_bytes: Option<usize>,
}

impl Limits {
    /// Whether the collection's usage is counted: it has a limit on it.
    fn counted(&self) -> bool {
        self.max_keys.is_some() || self.max_bytes.is_some()
    }
}

impl From<&CollectionOptions> for Limits {
    fn from(o: &CollectionOptions) -> Limits {
        Limits {
            expire: o.expire_keys,
            max_key: o.max_key_size,
            max_value: o.max_value_size,
            max_hold: o.max_hold,
            max_keys: o.max_keys,
            max_bytes: o.max_bytes,
        }
    }
}

/// A key. It exists while it holds a value or a lock.
struct Entry {
    value: Option<Bytes>,
    touched: Instant,
    lock: Option<Box<Locked>>,
}

struct Locked {
    token: u64,
    owner: Option<Owner>,
    lease: Option<TimerKey>,
    queue: VecDeque<Queued>,
    /// The queue's length at its last sweep, and the arrivals since.
    swept: usize,
    arrivals: usize,
}

/// An operation waiting for a lock to be released.
struct Queued {
    id: u64,
    timeout: Option<TimerKey>,
    owner: Option<Owner>,
    op: Op,
    answer: Answer,
}

/// What an operation on a shard needs besides the entry.
struct Ctx<'a> {
    coll: &'a Coll,
    key: &'a str,
    limits: Limits,
    now: Option<Instant>,
    locks: &'a mut usize,
    /// The first panic of a waker woken by an answer (see [`deliver`]).
    panicked: Option<Panic>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Shard critical sections hold no user code, so a poisoned mutex still
    // guards consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Engine {
    /// Creates the engine, with its timers on `clock`.
    pub(crate) fn new(clock: Arc<Clock>) -> Arc<Engine> {
        let core = Arc::new(Core {
            closed: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            exits: Exits::default(),
            clock,
        });
        Arc::new(Engine {
            collections: RwLock::new(HashMap::new()),
            core,
        })
    }

    fn collections(&self) -> Vec<Arc<Coll>> {
        let map = self
            .collections
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        map.values().cloned().collect()
    }

    /// Operations so far, and those that waited behind a key lock.
    pub(crate) fn counts(&self) -> (u64, u64) {
        let mut totals = (0, 0);
        for coll in self.collections() {
            for shard in coll.shards.iter() {
                let data = lock(&shard.0);
                totals.0 += data.ops;
                totals.1 += data.waits;
            }
        }
        totals
    }

    /// Takes back every lock held by this generation of `slot`, and refuses
    /// it any lock from now on (it may still be running, abandoned as hung).
    pub(crate) fn owner_exited(&self, slot: usize, generation: u64) {
        self.core.exits.record(slot, generation);
        let owner = Owner { slot, generation };
        let mut panicked = None;
        for coll in self.collections() {
            let p = coll.release_owner(owner);
            panicked = panicked.or(p);
        }
        // A waiter's waker panicked: raised now that every lock is back,
        // for the master's guard to count.
        raise(panicked);
    }

    /// Closes the store: every waiting operation and every later one fails
    /// with a "stopped" error.
    pub(crate) fn close(&self) {
        self.core.closed.store(true, Ordering::SeqCst);
        for coll in self.collections() {
            for shard in coll.shards.iter() {
                // Dropping the queues closes their answer channels.
                lock(&shard.0).map.clear();
            }
            coll.usage.keys.store(0, Ordering::Relaxed);
            coll.usage.bytes.store(0, Ordering::Relaxed);
        }
        self.collections
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl StoreEngine for Engine {
    fn counts(&self) -> (u64, u64) {
        Engine::counts(self)
    }

    fn owner_exited(&self, slot: usize, generation: u64) {
        Engine::owner_exited(self, slot, generation);
    }

    fn close(&self) {
        Engine::close(self);
    }
}

impl StoreBackend for Engine {
    fn collection(&self, name: &str) -> Arc<dyn CollectionBackend> {
        let coll: Arc<Coll> = named(&self.collections, name, || {
            Coll::new(name, self.core.clone())
        });
        coll
    }
}

impl Core {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn alive(&self, owner: Option<Owner>) -> bool {
        self.exits.alive(owner)
    }

    fn schedule(&self, at: Instant, coll: Arc<Coll>, kind: TimerKind) -> TimerKey {
        self.clock.schedule(at, move || coll.fire(kind))
    }

    fn cancel(&self, timer: Option<TimerKey>) {
        self.clock.cancel(timer);
    }
}

impl Coll {
    fn new(name: &str, core: Arc<Core>) -> Arc<Coll> {
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

    fn arc(&self) -> Arc<Coll> {
        // `self` is reached through an `Arc`, so the upgrade cannot fail
        // while a method of it runs.
        self.me.upgrade().unwrap_or_else(|| unreachable!())
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, ShardData> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        lock(&self.shards[i].0)
    }

    fn stopped(&self) -> Error {
        Error::stopped(&format!("store collection {:?}", self.name))
    }

    fn lock_lost(&self, key: &str) -> Error {
        lock_lost(&self.name, key)
    }

    fn too_large(&self, what: &str, size: usize, max: usize, key: &str) -> Error {
        too_large(&self.name, what, size, max, key)
    }

    /// Refuses an operation whose key or value is over the limits.
    fn check(&self, key: &str, op: &Op, limits: &Limits) -> Result<(), Error> {
        check_sizes(&self.name, key, op, limits.max_key, limits.max_value)
    }

    /// Takes back the locks held by `owner`; returns the first panic of a
    /// waker woken on the way, after every lock is back.
    fn release_owner(&self, owner: Owner) -> Option<Panic> {
        let mut panicked = None;
        for shard in self.shards.iter() {
            let mut data = lock(&shard.0);
            if data.locks == 0 {
                continue;
            }
            let held: Vec<Box<str>> = data
                .map
                .iter()
                .filter(|(_, e)| e.lock.as_ref().is_some_and(|l| l.owner == Some(owner)))
                .map(|(k, _)| k.clone())
                .collect();
            for key in held {
                tracing::info!(
                    collection = %self.name,
                    key = %shorten(&key),
                    slot = owner.slot,
                    generation = owner.generation,
                    "released a lock held by a worker that exited"
                );
                take_lock(self, &mut data, &key, None, &mut panicked);
            }
        }
        panicked
    }

    fn fire(&self, kind: TimerKind) {
        match kind {
            TimerKind::Lease { key, token } => {
                let mut data = self.shard(&key);
                let mut panicked = None;
                if take_lock(self, &mut data, &key, Some(token), &mut panicked) {
                    tracing::warn!(
                        collection = %self.name,
                        key = %shorten(&key),
                        "a lock's lease ran out; the store took it back"
                    );
                }
                drop(data);
                raise(panicked);
            }
            TimerKind::WaitTimeout { key, waiter } => {
                let mut data = self.shard(&key);
                let Some(locked) = data.map.get_mut(&*key).and_then(|e| e.lock.as_mut()) else {
                    return;
                };
                if let Some(i) = locked.queue.iter().position(|q| q.id == waiter) {
                    if let Some(q) = locked.queue.remove(i) {
                        let _ = q.answer.send(Ok(Outcome::NotGranted));
                    }
                }
            }
            TimerKind::Sweep => self.sweep(),
        }
    }

    /// Drops the expired keys of every shard, and comes back later while the
    /// collection has expiry.
    fn sweep(&self) {
        let mut expire = None;
        for shard in self.shards.iter() {
            let mut data = lock(&shard.0);
            let Some(ttl) = data.limits.expire else {
                continue;
            };
            expire = Some(ttl);
            let now = Instant::now();
            let limits = data.limits;
            data.map.retain(|key, e| {
                let keep = e.lock.is_some() || now.saturating_duration_since(e.touched) < ttl;
                if !keep {
                    self.forget_value(&limits, key, e.value.as_ref());
                }
                keep
            });
        }
        match expire {
            Some(ttl) if !self.core.is_closed() => self.schedule_sweep(ttl),
            _ => self.sweeping.store(false, Ordering::SeqCst),
        }
    }

    fn schedule_sweep(&self, ttl: Duration) {
        let interval = (ttl / 2).clamp(Duration::from_millis(1), MAX_SWEEP_INTERVAL);
        self.core
            .schedule(deadline::from_now(interval), self.arc(), TimerKind::Sweep);
    }

    /// Counts `key`'s value going from `old` to `new`, or refuses it with
    /// [`Error::is_full`] (counting nothing) if that makes one key more than
    /// `max_keys` or grows the collection past `max_bytes`. Call it under
    /// the key's shard lock, and change the value only when it says yes.
    fn account(
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
    fn forget_value(&self, limits: &Limits, key: &str, value: Option<&Bytes>) {
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

#[cfg(test)]
impl Coll {
    /// The counted usage: keys with a value, and their bytes.
    fn usage(&self) -> (usize, usize) {
        (
            self.usage.keys.load(Ordering::Relaxed),
            self.usage.bytes.load(Ordering::Relaxed),
        )
    }

    /// The usage as counted, or the recount while nothing is counted (no
    /// limit is on).
    fn counted(&self) -> (usize, usize) {
        let options = self.options();
        if options.max_keys.is_some() || options.max_bytes.is_some() {
            self.usage()
        } else {
            self.recount()
        }
    }

    /// The usage counted key by key.
    fn recount(&self) -> (usize, usize) {
        let mut totals = (0, 0);
        for shard in self.shards.iter() {
            for (k, e) in &lock(&shard.0).map {
                if let Some(v) = &e.value {
                    totals.0 += 1;
                    totals.1 += k.len() + v.len();
                }
            }
        }
        totals
    }

    /// How many operations wait behind `key`'s lock, callers gone or not.
    fn queued(&self, key: &str) -> usize {
        self.shard(key)
            .map
            .get(key)
            .and_then(|e| e.lock.as_ref())
            .map_or(0, |l| l.queue.len())
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

/// Releases the lock on `key` (if `token` is given, only if it is held with
/// that token) without committing anything, and lets the queue behind it run.
/// Returns whether a lock was released. A waiter's waker that panics as it
/// is answered leaves its panic in `panicked` (the first one only), for the
/// caller to raise once it let go of the shard.
fn take_lock(
    coll: &Coll,
    data: &mut ShardData,
    key: &str,
    token: Option<u64>,
    panicked: &mut Option<Panic>,
) -> bool {
    let ShardData {
        map, limits, locks, ..
    } = data;
    let now = limits.expire.map(|_| Instant::now());
    let Some(entry) = map.get_mut(key) else {
        return false;
    };
    let Some(locked) = entry.lock.take_if(|l| token.map_or(true, |t| t == l.token)) else {
        return false;
    };
    *locks -= 1;
    coll.core.cancel(locked.lease);
    let mut ctx = Ctx {
        coll,
        key,
        limits: *limits,
        now,
        locks,
        panicked: None,
    };
    ctx.touch(entry);
    ctx.advance(entry, locked.queue);
    if panicked.is_none() {
        *panicked = ctx.panicked.take();
    }
    if entry.is_empty() {
        map.remove(key);
    }
    true
}

/// Answers a waiter. The send wakes the waiter's task, with a waker that
/// is the caller's code: if it panics, the answer was already delivered
/// (the send stores it before it wakes), so the store goes on as if the
/// wake had worked, and keeps the panic for [`raise`]. Returns whether the
/// answer was delivered (false: the waiter had left).
fn deliver(answer: Answer, result: Result<Outcome, Error>, panicked: &mut Option<Panic>) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| answer.send(result))) {
        Ok(sent) => sent.is_ok(),
        Err(payload) => {
            panicked.get_or_insert(payload);
            true
        }
    }
}

/// Raises a panic kept by [`deliver`], once the store is consistent: the
/// thread's own guard (the master's, the timer's) counts it.
fn raise(panicked: Option<Panic>) {
    if let Some(payload) = panicked {
        std::panic::resume_unwind(payload);
    }
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.value.is_none() && self.lock.is_none()
    }
}

impl Ctx<'_> {
    fn touch(&self, e: &mut Entry) {
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
    fn apply(&mut self, e: &mut Entry, owner: Option<Owner>, op: Op) -> Result<Outcome, Error> {
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

    /// Locks `e` for `owner`, with `queue` waiting behind.
    fn grant(
        &mut self,
        e: &mut Entry,
        owner: Option<Owner>,
        lease: Option<Duration>,
        queue: VecDeque<Queued>,
    ) -> Grant {
        let token = self.coll.core.next_id();
        let lease = lease.or(self.limits.max_hold).map(|lease| {
            self.coll.core.schedule(
                deadline::from_now(lease),
                self.coll.arc(),
                TimerKind::Lease {
                    key: self.key.into(),
                    token,
                },
            )
        });
        e.lock = Some(Box::new(Locked {
            token,
            owner,
            lease,
            queue,
            swept: 0,
            arrivals: 0,
        }));
        *self.locks += 1;
        Grant {
            token,
            value: e.value.clone(),
        }
    }

    /// Runs the operations that waited behind a released lock, in order,
    /// until one of them takes the lock.
    fn advance(&mut self, e: &mut Entry, mut queue: VecDeque<Queued>) {
        while let Some(q) = queue.pop_front() {
            self.coll.core.cancel(q.timeout);
            if q.answer.is_closed() {
                continue;
            }
            let Op::Acquire { lease, .. } = q.op else {
                let result = self.apply(e, q.owner, q.op);
                deliver(q.answer, result, &mut self.panicked);
                continue;
            };
            if !self.coll.core.alive(q.owner) {
                deliver(q.answer, Err(self.coll.stopped()), &mut self.panicked);
                continue;
            }
            let grant = self.grant(e, q.owner, lease, VecDeque::new());
            if deliver(q.answer, Ok(Outcome::Granted(grant)), &mut self.panicked) {
                if let Some(locked) = e.lock.as_mut() {
                    locked.queue = queue;
                }
                return;
            }
            // The waiter left after all: undo and go on down the line.
            if let Some(locked) = e.lock.take() {
                self.coll.core.cancel(locked.lease);
            }
            *self.locks -= 1;
        }
    }
}

impl CollectionBackend for Coll {
    fn name(&self) -> &str {
        &self.name
    }

    fn configure(&self, options: &CollectionOptions) -> Reply {
        Reply::Ready(self.configure_now(options))
    }

    fn options(&self) -> CollectionOptions {
        lock(&self.options).clone()
    }

    fn op(&self, owner: Option<Owner>, key: &str, op: Op) -> Reply {
        let mut guard = self.shard(key);
        if self.core.is_closed() {
            return Reply::Ready(Err(self.stopped()));
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
            return Reply::Ready(Err(e));
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
                    return self.enqueue(locked, owner, key, op);
                }
                if ctx.expired(entry) {
                    self.forget_value(limits, key, entry.value.take().as_ref());
                }
                let result = ctx.apply(entry, owner, op);
                if entry.is_empty() {
                    map.remove(key);
                }
                Reply::Ready(result)
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
                Reply::Ready(result)
            }
        }
    }

    fn release(&self, key: &str, token: u64, change: Change) -> Reply {
        let mut guard = self.shard(key);
        if self.core.is_closed() {
            return Reply::Ready(Err(self.stopped()));
        }
        let data = &mut *guard;
        let held = data
            .map
            .get(key)
            .and_then(|e| e.lock.as_ref())
            .is_some_and(|l| l.token == token);
        if !held {
            return Reply::Ready(Err(self.lock_lost(key)));
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
        let mut panicked = None;
        take_lock(self, data, key, Some(token), &mut panicked);
        drop(guard);
        raise(panicked);
        Reply::Ready(result)
    }

    fn count(&self) -> Reply {
        if self.core.is_closed() {
            return Reply::Ready(Err(self.stopped()));
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
        Reply::Ready(Ok(Outcome::Count(n)))
    }
}

impl Coll {
    fn configure_now(&self, options: &CollectionOptions) -> Result<Outcome, Error> {
        if self.core.is_closed() {
            return Err(self.stopped());
        }
        check_options(&self.name, options)?;
        let limits = Limits::from(options);
        *lock(&self.options) = options.clone();
        let now = Instant::now();
        // Every shard at once: a limit turned on counts what is there,
        // exactly, before any operation sees it.
        let mut shards: Vec<_> = self.shards.iter().map(|s| lock(&s.0)).collect();
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
        if let Some(ttl) = limits.expire {
            if !self.sweeping.swap(true, Ordering::SeqCst) {
                self.schedule_sweep(ttl);
            }
        }
        Ok(Outcome::Done)
    }

    fn enqueue(&self, locked: &mut Locked, owner: Option<Owner>, key: &str, op: Op) -> Reply {
        let timeout = match op {
            Op::Acquire { wait: Wait::No, .. } => return Reply::Ready(Ok(Outcome::NotGranted)),
            Op::Acquire {
                wait: Wait::For(d), ..
            } if d.is_zero() => return Reply::Ready(Ok(Outcome::NotGranted)),
            Op::Acquire {
                wait: Wait::For(d), ..
            } => Some(d),
            _ => None,
        };
        self.prune(locked);
        if locked.queue.len() >= MAX_WAITERS {
            return Reply::Ready(Err(Error::full(format!(
                "{MAX_WAITERS} operations already wait behind the lock on key {:?} in \
                 collection {:?}",
                shorten(key),
                self.name
            ))));
        }
        let (answer, rx) = oneshot::channel();
        let id = self.core.next_id();
        let timeout = timeout.map(|d| {
            self.core.schedule(
                deadline::from_now(d),
                self.arc(),
                TimerKind::WaitTimeout {
                    key: key.into(),
                    waiter: id,
                },
            )
        });
        locked.queue.push_back(Queued {
            id,
            timeout,
            owner,
            op,
            answer,
        });
        Reply::Later(rx)
    }

    /// Drops the operations whose callers left (their answer's receiver is
    /// gone) from `locked`'s queue, with their timers, before one more
    /// arrives: at both ends every time, and all along the queue every
    /// [`MIN_QUEUE_SWEEP`] arrivals or a quarter of its length, whichever is
    /// more.
    fn prune(&self, locked: &mut Locked) {
        let queue = &mut locked.queue;
        while let Some(q) = queue.pop_back() {
            if !q.answer.is_closed() {
                queue.push_back(q);
                break;
            }
            self.core.cancel(q.timeout);
        }
        while let Some(q) = queue.pop_front() {
            if !q.answer.is_closed() {
                queue.push_front(q);
                break;
            }
            self.core.cancel(q.timeout);
        }
        locked.arrivals += 1;
        if locked.arrivals >= (locked.swept / 4).max(MIN_QUEUE_SWEEP) {
            queue.retain(|q| {
                let live = !q.answer.is_closed();
                if !live {
                    self.core.cancel(q.timeout);
                }
                live
            });
            locked.swept = queue.len();
            locked.arrivals = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(reply: Reply) -> Outcome {
        match reply {
            Reply::Ready(r) => r.expect("ok"),
            Reply::Later(_) | Reply::Future(_) => panic!("expected an answer at once"),
        }
    }

    fn token(outcome: Outcome) -> u64 {
        match outcome {
            Outcome::Granted(g) => g.token,
            other => panic!("expected a grant: {other:?}"),
        }
    }

    fn pending_timers(engine: &Engine) -> usize {
        engine.core.clock.pending()
    }

    #[test]
    fn leases_and_wait_timeouts_that_end_early_leave_no_timer_behind() {
        let clock = Clock::start(crate::fault::guard::Faults::new()).expect("clock");
        let engine = Engine::new(clock.clone());
        let c = engine.collection("timers");
        let hour = Duration::from_secs(3600);
        let acquire = |wait| Op::Acquire {
            wait,
            lease: Some(hour),
        };
        let first = token(ready(c.op(None, "k", acquire(Wait::Forever))));
        assert_eq!(pending_timers(&engine), 1, "the lease");
        let Reply::Later(mut rx) = c.op(None, "k", acquire(Wait::For(hour))) else {
            panic!("expected to wait");
        };
        assert_eq!(pending_timers(&engine), 2, "the lease and the wait");
        ready(c.release("k", first, Change::Keep));
        let second = match rx.try_recv() {
            Ok(Ok(outcome)) => token(outcome),
            other => panic!("expected the grant: {other:?}"),
        };
        assert_eq!(pending_timers(&engine), 1, "the second lease only");
        ready(c.release("k", second, Change::Keep));
        assert_eq!(pending_timers(&engine), 0);
        assert!(matches!(ready(c.count()), Outcome::Count(0)));
        engine.close();
        assert!(matches!(c.count(), Reply::Ready(Err(e)) if e.is_stopped()));
        clock.stop();
    }

    fn coll(engine: &Engine, name: &str) -> Arc<Coll> {
        named(&engine.collections, name, || {
            Coll::new(name, engine.core.clone())
        })
    }

    fn acquire(wait: Wait, lease: Option<Duration>) -> Op {
        Op::Acquire { wait, lease }
    }

    fn later(reply: Reply) -> oneshot::Receiver<Result<Outcome, Error>> {
        match reply {
            Reply::Later(rx) => rx,
            _ => panic!("expected to wait"),
        }
    }

    fn granted(rx: &mut oneshot::Receiver<Result<Outcome, Error>>) -> u64 {
        match rx.try_recv() {
            Ok(Ok(outcome)) => token(outcome),
            other => panic!("expected the grant: {other:?}"),
        }
    }

    #[test]
    fn huge_leases_and_timeouts_saturate_instead_of_panicking() {
        let clock = Clock::start(crate::fault::guard::Faults::new()).expect("clock");
        let engine = Engine::new(clock.clone());
        let c = coll(&engine, "huge");
        let max = Some(Duration::MAX);
        let owner = Some(Owner {
            slot: 0,
            generation: 0,
        });
        let first = token(ready(c.op(owner, "k", acquire(Wait::Forever, max))));
        let mut second = later(c.op(None, "k", acquire(Wait::For(Duration::MAX), max)));
        let mut third = later(c.op(None, "k", acquire(Wait::For(Duration::MAX), max)));
        // The holder's worker exits: the grant to the next in line runs
        // here, as it does on the master thread.
        engine.owner_exited(0, 0);
        let second = granted(&mut second);
        assert!(matches!(
            c.release("k", first, Change::Keep),
            Reply::Ready(Err(e)) if e.is_lock_lost()
        ));
        ready(c.release("k", second, Change::Set(Bytes::from("v"))));
        let third = granted(&mut third);
        ready(c.release("k", third, Change::Keep));
        assert_eq!(pending_timers(&engine), 0, "every far timer was cancelled");

        // A collection whose max_hold and expiry are at the maximum.
        let options = CollectionOptions {
            expire_keys: Some(deadline::MAX_OPTION),
            max_hold: Some(deadline::MAX_OPTION),
            ..CollectionOptions::default()
        };
        ready(c.configure(&options));
        let t = token(ready(c.op(None, "k", acquire(Wait::Forever, None))));
        ready(c.release("k", t, Change::Keep));
        assert!(matches!(
            ready(c.op(None, "k", Op::Get)),
            Outcome::Value(Some(_))
        ));
        for over in [
            CollectionOptions {
                expire_keys: Some(Duration::MAX),
                ..CollectionOptions::default()
            },
            CollectionOptions {
                max_hold: Some(deadline::MAX_OPTION + Duration::from_secs(1)),
                ..CollectionOptions::default()
            },
        ] {
            let Reply::Ready(Err(e)) = c.configure(&over) else {
                panic!("accepted {over:?}");
            };
            let name = if over.expire_keys.is_some() {
                "expire_keys"
            } else {
                "max_hold"
            };
            assert!(e.is_config() && e.to_string().contains(name), "{e}");
        }
        assert_eq!(c.options(), options, "a refused configure changes nothing");
        engine.close();
        clock.stop();
    }

    /// A tiny deterministic generator for the table of random operations.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }

        /// A value of 0 to 19 bytes.
        fn value(&mut self) -> Bytes {
            Bytes::from("x".repeat(self.below(20) as usize))
        }
    }

    #[test]
    fn usage_stays_exact_through_every_kind_of_change() {
        // A stopped clock fires nothing: the test fires leases and sweeps
        // itself, so that nothing changes between two counts.
        let clock = Clock::start(crate::fault::guard::Faults::new()).expect("clock");
        clock.stop();
        let engine = Engine::new(clock);
        for (seed, limited) in [(1u64, false), (7, true), (42, true), (1234, false)] {
            let c = coll(&engine, &format!("usage {seed}"));
            let (max_keys, max_bytes) = (5, 80);
            if limited {
                ready(c.configure(&CollectionOptions {
                    max_keys: Some(max_keys),
                    max_bytes: Some(max_bytes),
                    ..CollectionOptions::default()
                }));
            }
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut held: Vec<(String, u64)> = Vec::new();
            let mut waiting = Vec::new();
            let mut full = 0;
            for step in 0..4000 {
                if !limited && step == 2000 {
                    // Limits turned on halfway count what is there.
                    let mut o = c.options();
                    o.max_keys = Some(1000);
                    o.max_bytes = Some(1 << 20);
                    ready(c.configure(&o));
                }
                let key = format!("key{}", rng.below(9));
                let op = match rng.below(12) {
                    0 => Op::Get,
                    1 | 2 => Op::Set(rng.value()),
                    3 => Op::Del,
                    4 => Op::Incr(rng.below(2000) as i64 - 1000),
                    5 => {
                        let expected = match c.op(None, &key, Op::Get) {
                            Reply::Ready(Ok(Outcome::Value(v))) if rng.below(3) > 0 => v,
                            _ => None,
                        };
                        let new = if rng.below(4) == 0 {
                            None
                        } else {
                            Some(rng.value())
                        };
                        Op::CompareAndSwap { expected, new }
                    }
                    6 | 7 => acquire(Wait::No, None),
                    _ => {
                        if !held.is_empty() {
                            let (key, t) = held.swap_remove(rng.below(held.len() as u64) as usize);
                            let change = match rng.below(4) {
                                0 => Change::Keep,
                                1 => Change::Del,
                                _ => Change::Set(rng.value()),
                            };
                            let reply = if rng.below(5) == 0 {
                                // The lease runs out instead.
                                c.fire(TimerKind::Lease {
                                    key: key.as_str().into(),
                                    token: t,
                                });
                                Reply::Ready(Ok(Outcome::Done))
                            } else {
                                c.release(&key, t, change)
                            };
                            if let Reply::Ready(Err(e)) = reply {
                                assert!(e.is_full(), "{e}");
                                full += 1;
                            }
                        }
                        if step % 500 == 250 {
                            // Expiry on for a while: keys idle 1 ms expire,
                            // on a read or in a sweep.
                            let mut o = c.options();
                            o.expire_keys = o.expire_keys.xor(Some(Duration::from_millis(1)));
                            ready(c.configure(&o));
                            std::thread::sleep(Duration::from_millis(2));
                            // Some expired keys are read (and dropped)
                            // first, the sweep drops the rest.
                            for k in 0..5 {
                                drop(c.op(None, &format!("key{k}"), Op::Get));
                                assert_eq!(c.counted(), c.recount(), "seed {seed}, read {k}");
                            }
                            c.sweep();
                        }
                        assert_eq!(c.counted(), c.recount(), "seed {seed}, step {step}");
                        continue;
                    }
                };
                let is_acquire = matches!(op, Op::Acquire { .. });
                match c.op(None, &key, op) {
                    Reply::Ready(Ok(Outcome::Granted(g))) => held.push((key, g.token)),
                    Reply::Ready(Err(e)) if e.is_full() => full += 1,
                    Reply::Ready(_) => {}
                    Reply::Later(rx) => {
                        assert!(!is_acquire, "try-acquire never waits");
                        // Some callers stay, some leave.
                        if rng.below(2) == 0 {
                            waiting.push(rx);
                        }
                    }
                    Reply::Future(_) => panic!("the engine answers now or later"),
                }
                assert_eq!(c.counted(), c.recount(), "seed {seed}, step {step}");
                if limited {
                    let (keys, bytes) = c.usage();
                    assert!(
                        keys <= max_keys && bytes <= max_bytes,
                        "{keys} keys, {bytes} B"
                    );
                }
            }
            for (key, t) in held.drain(..) {
                drop(c.release(&key, t, Change::Set(Bytes::from("last"))));
            }
            assert_eq!(c.counted(), c.recount(), "seed {seed}, at the end");
            assert_eq!(
                limited,
                full > 0,
                "seed {seed}: {full} operations were refused"
            );
            drop(waiting);
        }
        engine.close();
    }

    #[test]
    fn waiters_whose_callers_left_are_pruned_with_their_timers() {
        let clock = Clock::start(crate::fault::guard::Faults::new()).expect("clock");
        let engine = Engine::new(clock.clone());
        let c = coll(&engine, "abandoned");
        let hour = Duration::from_secs(3600);
        let held = token(ready(c.op(None, "k", acquire(Wait::Forever, None))));
        let mut live = later(c.op(None, "k", acquire(Wait::For(hour), None)));
        // Started and dropped one by one: gets, and acquires with timers.
        for i in 0..10_000 {
            let op = if i % 2 == 0 {
                Op::Get
            } else {
                acquire(Wait::For(hour), None)
            };
            drop(later(c.op(None, "k", op)));
            assert!(c.queued("k") <= 2, "{} queued at {i}", c.queued("k"));
        }
        assert!(pending_timers(&engine) <= 2, "{}", pending_timers(&engine));
        // Started together, every other one dropped: the ones left behind
        // in the middle of the queue go in the sweeps.
        let mut kept = Vec::new();
        for _ in 0..5_000 {
            let gone = later(c.op(None, "k", acquire(Wait::For(hour), None)));
            kept.push(later(c.op(None, "k", Op::Get)));
            drop(gone);
        }
        let queued = c.queued("k");
        assert!(
            queued <= 5_001 + 5_001 / 4 + 16,
            "{queued} queued for 5,001 live"
        );
        assert!(pending_timers(&engine) <= 1 + queued - 5_001);
        drop(kept);
        // The next arrival finds them all gone from the back.
        let mut last = later(c.op(None, "k", Op::Get));
        assert_eq!(c.queued("k"), 2, "the first live waiter and the last");
        assert_eq!(pending_timers(&engine), 1, "the live waiter's timeout");
        ready(c.release("k", held, Change::Set(Bytes::from("v"))));
        let next = granted(&mut live);
        assert!(last.try_recv().is_err(), "waits behind the grant");
        ready(c.release("k", next, Change::Keep));
        assert!(matches!(last.try_recv(), Ok(Ok(Outcome::Value(Some(_))))));
        assert_eq!(pending_timers(&engine), 0);
        engine.close();
        clock.stop();
    }

    #[test]
    fn a_key_has_room_for_max_waiters_and_says_full_past_it() {
        let clock = Clock::start(crate::fault::guard::Faults::new()).expect("clock");
        let engine = Engine::new(clock.clone());
        let c = coll(&engine, "crowded");
        let held = token(ready(c.op(None, "k", acquire(Wait::Forever, None))));
        let mut waiting: Vec<_> = (0..MAX_WAITERS)
            .map(|_| later(c.op(None, "k", Op::Get)))
            .collect();
        let Reply::Ready(Err(e)) = c.op(None, "k", Op::Get) else {
            panic!("one waiter too many was queued");
        };
        assert!(e.is_full() && e.to_string().contains("\"crowded\""), "{e}");
        // Room again once callers leave, wherever they were in the line.
        waiting.swap_remove(MAX_WAITERS / 2);
        let mut tries = 0;
        let last = loop {
            tries += 1;
            if let Reply::Later(rx) = c.op(None, "k", Op::Get) {
                break rx;
            }
            assert!(
                tries <= MAX_WAITERS / 4 + 1,
                "still full after {tries} tries"
            );
        };
        waiting.push(last);
        ready(c.release("k", held, Change::Keep));
        for mut rx in waiting {
            assert!(matches!(rx.try_recv(), Ok(Ok(Outcome::Value(None)))));
        }
        engine.close();
        clock.stop();
    }

    struct PanicsOnWake;

    impl std::task::Wake for PanicsOnWake {
        fn wake(self: Arc<Self>) {
            panic!("a waker panics as it is woken")
        }
    }

    #[test]
    fn a_waker_that_panics_as_its_grant_is_sent_loses_no_lock_and_no_waiter() {
        use std::future::Future;
        let clock = Clock::start(crate::fault::guard::Faults::new()).expect("clock");
        let engine = Engine::new(clock.clone());
        let c = coll(&engine, "wakers");
        let first = token(ready(c.op(None, "k", acquire(Wait::Forever, None))));
        let mut hostile = later(c.op(None, "k", acquire(Wait::Forever, None)));
        let waker = std::task::Waker::from(Arc::new(PanicsOnWake));
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(std::pin::Pin::new(&mut hostile).poll(&mut cx).is_pending());
        let mut behind = later(c.op(None, "k", Op::Get));
        let released = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            c.release("k", first, Change::Set(Bytes::from("v")))
        }));
        assert!(released.is_err(), "the waker's panic reaches the caller");
        // The grant was made and delivered; the one behind still waits.
        let second = granted(&mut hostile);
        assert_eq!(c.queued("k"), 1);
        assert!(behind.try_recv().is_err());
        ready(c.release("k", second, Change::Keep));
        assert!(matches!(behind.try_recv(), Ok(Ok(Outcome::Value(Some(_))))));
        assert_eq!(c.counted(), c.recount());
        engine.close();
        clock.stop();
    }

    #[test]
    fn shorten_cuts_long_keys_on_a_char_boundary() {
        assert_eq!(shorten("abc"), "abc");
        let long = "é".repeat(100);
        let short = shorten(&long);
        assert_eq!(short.chars().count(), 67);
        assert!(short.ends_with("..."));
    }
}
