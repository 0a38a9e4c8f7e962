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
//!
//! In an upgrade the store moves to the new process: the old one's engine
//! exports its data and closes, the new one's waits, held, until it has
//! imported them ([`handover`], [`hold`]).
//!
//! The engine and its types are here; a collection's operations in
//! [`collection`], its key locks and their queues in [`locks`], the count of
//! what its values hold in [`usage`], its timers in [`timers`], the export
//! and import in [`handover`], and the hold in [`hold`].
//!
//! [`deadline::from_now`]: crate::time::deadline::from_now

mod collection;
mod handover;
mod hold;
mod locks;
#[cfg(test)]
mod tests;
mod timers;
mod usage;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use forkless_worker::rt::store::{CollectionBackend, Op, Outcome, StoreBackend};
use forkless_worker::rt::Owner;
use forkless_worker::{CollectionOptions, Error};
use tokio::sync::oneshot;

use crate::store::snapshot::Snapshot;
use crate::store::StoreEngine;
use crate::time::clock::{Clock, TimerKey};

use super::checks::{named, Exits};
use locks::raise;

/// What a timer of the store's clock does when it fires (`timers`).
enum TimerKind {
    /// A lock's lease ran out.
    Lease { key: Box<str>, token: u64 },
    /// A waiter for a lock waited its whole timeout.
    WaitTimeout { key: Box<str>, waiter: u64 },
    /// An operation waiting behind the hold waited its whole timeout.
    HoldTimeout { waiter: u64 },
    /// Time to sweep a collection's expired keys.
    Sweep,
}

type Hasher = foldhash::fast::RandomState;
type Answer = oneshot::Sender<Result<Outcome, Error>>;

/// A panic caught while a waiter was answered, raised again once the shard
/// is consistent.
type Panic = Box<dyn std::any::Any + Send>;

/// Shards per collection: enough that workers on different keys rarely meet
/// on a mutex.
const SHARDS: usize = 32;

/// The most operations that wait behind one key's lock; one more fails with
/// [`Error::is_full`].
pub(crate) const MAX_WAITERS: usize = 65_536;

/// The store of one cluster.
pub(crate) struct Engine {
    collections: RwLock<HashMap<String, Arc<Coll>>>,
    core: Arc<Core>,
}

/// What every collection of a store shares.
struct Core {
    closed: AtomicBool,
    /// Closed by an export: its locks were taken back for good.
    exported: AtomicBool,
    hold: hold::Hold,
    next_id: AtomicU64,
    exits: Exits,
    clock: Arc<Clock>,
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
    /// The first panic of a waker woken by an answer (see `deliver` in
    /// [`locks`]).
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
            exported: AtomicBool::new(false),
            hold: hold::Hold::default(),
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

    /// Closes the store: every waiting operation (behind a key lock or in
    /// the hold) and every later one fails with a "stopped" error.
    pub(crate) fn close(&self) {
        self.core.closed.store(true, Ordering::SeqCst);
        let mut panicked = None;
        self.core.hold.close(&mut panicked);
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
        raise(panicked);
    }

    /// Holds the engine: every operation from now on waits until
    /// [`release_hold`](Engine::release_hold) or [`close`](Engine::close).
    /// See [`hold`].
    pub(crate) fn hold(&self) {
        self.core.hold.hold();
    }

    /// Runs the operations that waited in the hold, in the order they
    /// arrived, then lets operations run at once again. Does nothing unless
    /// held.
    pub(crate) fn release_hold(&self) {
        self.core.hold.release();
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

    fn moves(&self) -> bool {
        true
    }

    fn export(&self) -> Option<Snapshot> {
        Some(Engine::export(self))
    }

    fn import(&self, snapshot: Snapshot) -> Result<(), Error> {
        Engine::import(self, snapshot)
    }

    fn hold(&self) {
        Engine::hold(self);
    }

    fn release_hold(&self) {
        Engine::release_hold(self);
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

    fn is_exported(&self) -> bool {
        self.exported.load(Ordering::SeqCst)
    }

    fn alive(&self, owner: Option<Owner>) -> bool {
        self.exits.alive(owner)
    }
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.value.is_none() && self.lock.is_none()
    }
}
