//! The store on Redis: each operation is one command or one Lua script, so
//! it is atomic in Redis, and checks the key's lock there, whichever host
//! took it.
//!
//! A collection's keys are `{prefix}:s:{len}:{name}:v:{key}` (the value) and
//! `...:l:{key}` (the lock, holding its token, with a lease). The name's
//! length keeps two collections apart whatever their names hold. While a
//! key is locked its value key holds a hash (`l`, and `v`: the value, if
//! any), not a string: so `get`, `set`, `del` and `incr` run as plain
//! commands (`GET`/`GETEX`, `SET ... GET`, `GETDEL`, `INCRBY`) that fail
//! with `WRONGTYPE` on a locked key instead of bypassing its lock, and run
//! their script only then (one round trip, and no Lua, in the common case).
//! Hosts of this version must not share a prefix with older ones, whose
//! locks leave the value a string.
//!
//! Durations a worker passes (leases, timeouts, times to live) become
//! deadlines with [`deadline::from_now`] and Redis milliseconds with
//! [`millis`], both saturating at [`deadline::FAR`]: Redis is never sent a
//! `PX` it refuses. `max_keys` and `max_bytes` are refused: Redis expires
//! keys by itself, so the store cannot count them exactly; bound a Redis
//! store with Redis's `maxmemory`.
//!
//! The engine and its types are here; a collection's operations in
//! [`collection`], its locks (taken, kept alive, released) in [`locks`],
//! the wait for a locked key in [`wait`], and the Lua scripts with the
//! reading of their answers in [`scripts`].
//!
//! [`deadline::from_now`]: crate::time::deadline::from_now
//! [`deadline::FAR`]: crate::time::deadline::FAR
//! [`millis`]: scripts::millis

mod collection;
mod locks;
mod scripts;
mod wait;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};

use forkless_worker::rt::store::{Change, CollectionBackend, Outcome, StoreBackend};
use forkless_worker::rt::Owner;
use forkless_worker::{CollectionOptions, Error};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use crate::config::RedisConfig;
use crate::redis::{follow, Follow, Link};
use crate::store::StoreEngine;

use super::checks::{named, shorten, Exits};

/// The store of one cluster, on Redis.
pub(crate) struct RedisStore {
    collections: RwLock<HashMap<String, Arc<RColl>>>,
    core: Arc<Core>,
}

struct Core {
    link: Arc<Link>,
    /// Makes this process's lock tokens unique among the hosts.
    instance: String,
    next_token: AtomicU64,
    exits: Exits,
    /// The locks this process holds, by token.
    held: Mutex<HashMap<u64, Held>>,
    /// Bumped at each release made here, and at each one another host
    /// publishes on a key this host waits for: wakes this host's waiters.
    released: watch::Sender<u64>,
    /// The lock keys this host's waiters wait on, with how many wait.
    watched: Mutex<HashMap<String, usize>>,
    /// Tells the pub/sub follower which lock keys to listen to.
    watch_changes: mpsc::UnboundedSender<Follow>,
    ops: AtomicU64,
    waits: AtomicU64,
}

struct Held {
    coll: Arc<RColl>,
    key: Box<str>,
    owner: Option<Owner>,
    renew: Option<AbortHandle>,
}

struct RColl {
    name: String,
    me: Weak<RColl>,
    /// What every key of the collection starts with.
    base: String,
    options: Mutex<CollectionOptions>,
    /// What every operation reads of `options`, without its mutex.
    limits: Limits,
    core: Arc<Core>,
}

/// A copy of a collection's options that every operation reads: the two
/// workers of a cluster share the collection, and would share its options'
/// mutex on each operation.
struct Limits {
    /// The keys' time to live in ms as the scripts take it (0: none).
    ttl_ms: AtomicU64,
    max_key: AtomicUsize,
    max_value: AtomicUsize,
}

impl Limits {
    fn of(options: &CollectionOptions) -> Limits {
        let limits = Limits {
            ttl_ms: AtomicU64::new(0),
            max_key: AtomicUsize::new(0),
            max_value: AtomicUsize::new(0),
        };
        limits.set(options);
        limits
    }

    fn set(&self, options: &CollectionOptions) {
        let ttl = options.expire_keys.map_or(0, scripts::millis);
        self.ttl_ms.store(ttl, Ordering::Relaxed);
        self.max_key.store(options.max_key_size, Ordering::Relaxed);
        self.max_value
            .store(options.max_value_size, Ordering::Relaxed);
    }
}

/// How one look at the key went.
enum Attempt {
    Done(Outcome),
    /// The key is locked: try again after a release.
    Locked,
}

type Answer = oneshot::Sender<Result<Outcome, Error>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing under these mutexes can panic halfway.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RedisStore {
    pub(crate) fn start(config: &RedisConfig) -> Result<Arc<RedisStore>, Error> {
        let link = Link::start(config, "store")?;
        let (watch_changes, changes) = mpsc::unbounded_channel();
        let core = Arc::new(Core {
            link: link.clone(),
            instance: instance_id(),
            next_token: AtomicU64::new(1),
            exits: Exits::default(),
            held: Mutex::new(HashMap::new()),
            released: watch::channel(0).0,
            watched: Mutex::new(HashMap::new()),
            watch_changes,
            ops: AtomicU64::new(0),
            waits: AtomicU64::new(0),
        });
        // Releases other hosts make on the keys this host waits for.
        let follower = Arc::downgrade(&core);
        link.spawn(async move {
            let Some(core) = follower.upgrade() else {
                return;
            };
            let link = core.link.clone();
            let channels = || lock(&core.watched).keys().cloned().collect();
            follow(&link, "store", channels, changes, |_, _| {
                core.released.send_modify(|n| *n = n.wrapping_add(1));
                std::future::ready(())
            })
            .await;
        });
        Ok(Arc::new(RedisStore {
            collections: RwLock::new(HashMap::new()),
            core,
        }))
    }
}

impl StoreBackend for RedisStore {
    fn collection(&self, name: &str) -> Arc<dyn CollectionBackend> {
        let coll: Arc<RColl> = named(&self.collections, name, || {
            let base = format!("{}:s:{}:{name}:", self.core.link.config.prefix, name.len());
            Arc::new_cyclic(|me| RColl {
                name: name.to_owned(),
                me: me.clone(),
                base,
                options: Mutex::new(CollectionOptions::default()),
                limits: Limits::of(&CollectionOptions::default()),
                core: self.core.clone(),
            })
        });
        coll
    }
}

impl StoreEngine for RedisStore {
    fn health(&self) -> Option<crate::observe::Health> {
        Some(self.core.link.health())
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.core.ops.load(Ordering::Relaxed),
            self.core.waits.load(Ordering::Relaxed),
        )
    }

    fn owner_exited(&self, slot: usize, generation: u64) {
        self.core.exits.record(slot, generation);
        let owner = Owner { slot, generation };
        let tokens: Vec<u64> = lock(&self.core.held)
            .iter()
            .filter(|(_, h)| h.owner == Some(owner))
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            if let Some(held) = self.core.forget(token) {
                tracing::info!(
                    collection = %held.coll.name,
                    key = %shorten(&held.key),
                    slot, generation,
                    "releasing a lock held by a worker that exited"
                );
                let (coll, key) = (held.coll, held.key);
                self.core.link.spawn(async move {
                    let _ = coll.release_now(&key, token, Change::Keep).await;
                });
            }
        }
    }

    fn close(&self) {
        // The locks still held (by code outside the workers, or leaked) are
        // released before the link stops, so that no other host waits for
        // their leases.
        let held: Vec<(u64, Held)> = lock(&self.core.held).drain().collect();
        let releases = async move {
            for (token, held) in held {
                if let Some(renew) = held.renew {
                    renew.abort();
                }
                let _ = held.coll.release_now(&held.key, token, Change::Keep).await;
            }
        };
        self.core
            .link
            .close(self.core.link.config.timeout, releases);
        self.collections
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl Core {
    fn forget(&self, token: u64) -> Option<Held> {
        let held = lock(&self.held).remove(&token)?;
        if let Some(renew) = &held.renew {
            renew.abort();
        }
        Some(held)
    }

    fn token_text(&self, token: u64) -> String {
        format!("{}:{token}", self.instance)
    }
}

/// A random identity for this process's lock tokens.
fn instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", h.finish())
}
