//! The shared key/value store: named collections of byte values with key
//! locks and expiry, shared by every worker of a cluster and by the code that
//! runs it.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::rt::store::{Change, CollectionBackend, Op, Outcome, Reply, StoreBackend, Wait};
use crate::rt::Owner;
use crate::{json, Error};

/// The cluster's shared key/value store.
///
/// Get one from a worker with [`Worker::store`](crate::Worker::store), or
/// from outside the workers with `Cluster::store`. All handles of a cluster
/// reach the same data; they are cheap to clone.
///
/// A store holds named [collections](Collection), created on first use. The
/// data lives in the cluster's process: it is shared by every worker and
/// outlives any one of them, and it goes when the cluster stops.
///
/// # Examples
///
/// ```no_run
/// # async fn body(worker: forkless_worker::Worker) -> Result<(), forkless_worker::Error> {
/// let hits = worker.store().collection("hits");
/// let n = hits.incr("/index.html", 1).await?;
/// println!("page seen {n} times by all workers together");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn StoreBackend>,
    owner: Option<Owner>,
}

impl Store {
    /// Creates a handle on `backend` for `owner` (see
    /// [`rt::store_handle`](crate::rt::store_handle)).
    pub(crate) fn new(backend: Arc<dyn StoreBackend>, owner: Option<Owner>) -> Store {
        Store { backend, owner }
    }

    /// The collection named `name`, created on first use with the default
    /// [`CollectionOptions`]. Every handle to the same name reaches the same
    /// keys.
    pub fn collection(&self, name: &str) -> Collection {
        Collection {
            inner: self.backend.collection(name),
            owner: self.owner,
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("owner", &self.owner).finish()
    }
}

/// How a collection behaves: expiry, size limits, default lock lease.
///
/// Build it with struct update syntax from the defaults:
///
/// ```
/// use std::time::Duration;
/// use forkless_worker::CollectionOptions;
///
/// let options = CollectionOptions {
///     expire_keys: Some(Duration::from_secs(30 * 60)),
///     ..CollectionOptions::default()
/// };
/// # drop(options);
/// ```
///
/// # Limits
///
/// | option | default | maximum | over it |
/// |---|---|---|---|
/// | [`expire_keys`](Self::expire_keys) | none | 365 days | refused by `configure` |
/// | [`max_hold`](Self::max_hold) | none | 365 days | refused by `configure` |
/// | [`max_key_size`](Self::max_key_size) | 4 KiB | | the operation fails, [`Error::is_too_large`] |
/// | [`max_value_size`](Self::max_value_size) | 1 MiB | | the operation fails, [`Error::is_too_large`] |
/// | [`max_keys`](Self::max_keys) | none | | a new key fails, [`Error::is_full`] |
/// | [`max_bytes`](Self::max_bytes) | none | | growing fails, [`Error::is_full`] |
///
/// Zero durations and zero sizes are refused by
/// [`configure`](Collection::configure) with [`Error::is_config`]. A store
/// that anonymous clients can fill (sessions, caches, rate limits keyed by
/// address) should have `expire_keys` and `max_keys` or `max_bytes`:
///
/// ```
/// use std::time::Duration;
/// use forkless_worker::CollectionOptions;
///
/// let bounded = CollectionOptions {
///     expire_keys: Some(Duration::from_secs(3600)),
///     max_keys: Some(100_000),
///     max_bytes: Some(256 * 1024 * 1024),
///     ..CollectionOptions::default()
/// };
/// # drop(bounded);
/// ```
///
/// The Redis backend refuses `max_keys` and `max_bytes` (its keys expire
/// inside Redis, where the store cannot count them): bound a Redis store
/// with Redis's own `maxmemory`.
///
/// In-process, a collection with neither limit counts nothing, so its
/// writes from many cores share no counter; setting a limit counts what the
/// collection holds once (one pass over its keys), and keeps the count
/// from then on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionOptions {
    /// Remove a key this long after its last access (a get, set, incr,
    /// compare-and-swap, or the release of its lock). A locked key, or one
    /// with operations waiting on it, does not expire. `None` (the default):
    /// keys stay until deleted. At most 365 days.
    pub expire_keys: Option<Duration>,
    /// The longest key, in bytes (default 4 KiB). A longer one is an error.
    pub max_key_size: usize,
    /// The largest value, in bytes (default 1 MiB). A larger one is an error.
    pub max_value_size: usize,
    /// The longest a [`KeyLock`] may be held, unless its
    /// [`LockOptions::lease`] says otherwise. When it runs out, the store
    /// takes the lock back and the next waiter gets it; the late holder's
    /// [`release`](KeyLock::release) fails and commits nothing. `None` (the
    /// default): no limit. At most 365 days.
    pub max_hold: Option<Duration>,
    /// The most keys with a value the collection holds. An operation that
    /// would give a value to one key more (a set, incr or compare-and-swap
    /// on a new key, or the release of a lock that sets one) fails with
    /// [`Error::is_full`], and changes nothing; a failed release still
    /// frees its lock. Writes to keys that hold a value, and deletes,
    /// always work. `None` (the default): no limit. Not on the Redis
    /// backend.
    ///
    /// ```
    /// use forkless_worker::CollectionOptions;
    ///
    /// // At most a million sessions, whoever asks for them.
    /// let sessions = CollectionOptions {
    ///     max_keys: Some(1_000_000),
    ///     ..CollectionOptions::default()
    /// };
    /// # drop(sessions);
    /// ```
    pub max_keys: Option<usize>,
    /// The most bytes the collection's keys and values hold together (the
    /// key's length plus the value's, for each key with a value; the store's
    /// own bookkeeping is not counted). An operation that would grow the
    /// collection past it fails with [`Error::is_full`] and changes nothing.
    /// Deletes, and writes that do not grow the collection, always work.
    /// `None` (the default): no limit. Not on the Redis backend.
    ///
    /// ```
    /// use forkless_worker::CollectionOptions;
    ///
    /// // A cache of at most 64 MiB of keys and values.
    /// let cache = CollectionOptions {
    ///     max_bytes: Some(64 * 1024 * 1024),
    ///     ..CollectionOptions::default()
    /// };
    /// # drop(cache);
    /// ```
    pub max_bytes: Option<usize>,
}

impl CollectionOptions {
    /// The default longest key: 4 KiB.
    pub const DEFAULT_MAX_KEY_SIZE: usize = 4 * 1024;
    /// The default largest value: 1 MiB.
    pub const DEFAULT_MAX_VALUE_SIZE: usize = 1024 * 1024;
}

impl Default for CollectionOptions {
    fn default() -> CollectionOptions {
        CollectionOptions {
            expire_keys: None,
            max_key_size: CollectionOptions::DEFAULT_MAX_KEY_SIZE,
            max_value_size: CollectionOptions::DEFAULT_MAX_VALUE_SIZE,
            max_hold: None,
            max_keys: None,
            max_bytes: None,
        }
    }
}

/// How [`Collection::acquire_with`] waits for a lock and how long it may hold
/// it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockOptions {
    timeout: Option<Duration>,
    lease: Option<Duration>,
}

impl LockOptions {
    /// Waits as long as it takes; the lease is the collection's `max_hold`.
    pub fn new() -> LockOptions {
        LockOptions::default()
    }

    /// Gives up waiting after `timeout` with an error for which
    /// [`Error::is_timeout`] is true. A zero timeout does not wait (as
    /// [`Collection::try_acquire`]); a huge one, up to `Duration::MAX`, waits
    /// as long as it takes.
    ///
    /// ```
    /// use std::time::Duration;
    /// use forkless_worker::LockOptions;
    ///
    /// let options = LockOptions::new().timeout(Duration::from_millis(250));
    /// # let _ = options;
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> LockOptions {
        self.timeout = Some(timeout);
        self
    }

    /// Lets the store take the lock back `lease` after it was granted (see
    /// [`CollectionOptions::max_hold`]). A huge lease, up to
    /// `Duration::MAX`, is never taken back in practice (the store counts
    /// it as thirty years). A zero lease is refused: the acquire fails with
    /// [`Error::is_config`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use forkless_worker::LockOptions;
    ///
    /// // Held for at most 5 s, whatever happens to the holder.
    /// let options = LockOptions::new().lease(Duration::from_secs(5));
    /// # let _ = options;
    /// ```
    pub fn lease(mut self, lease: Duration) -> LockOptions {
        self.lease = Some(lease);
        self
    }
}

/// A named set of keys in the [`Store`].
///
/// Keys are strings, values are [`Bytes`]; [`get_as`](Collection::get_as) and
/// [`set_as`](Collection::set_as) store any serde type as JSON. Every
/// operation is atomic. An operation on a locked key waits behind the lock,
/// in the order the operations came (first come, first served).
///
/// The methods are `async` and never block the thread; from a thread that
/// is not running async code, use [`blocking`](Collection::blocking).
///
/// # Examples
///
/// A counter that every worker updates under a lock:
///
/// ```no_run
/// # async fn body(worker: forkless_worker::Worker) -> Result<(), forkless_worker::Error> {
/// let accounts = worker.store().collection("accounts");
/// let mut lock = accounts.acquire("alice").await?;
/// let balance: i64 = lock.get_as()?.unwrap_or(0);
/// lock.set_as(&(balance + 10))?;
/// lock.release().await?; // commits
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Collection {
    inner: Arc<dyn CollectionBackend>,
    owner: Option<Owner>,
}

impl Collection {
    /// The collection's name.
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// Replaces the collection's options. They apply to every handle of this
    /// collection, in all workers, from the next operation on.
    ///
    /// # Errors
    ///
    /// A zero duration or a zero size limit, a duration over 365 days, and
    /// on the Redis backend `max_keys` or `max_bytes`, are refused
    /// ([`Error::is_config`], naming the option); once the cluster stopped,
    /// every call fails ([`Error::is_stopped`]).
    ///
    /// ```no_run
    /// # async fn f(c: forkless_worker::Collection) -> Result<(), forkless_worker::Error> {
    /// use forkless_worker::CollectionOptions;
    ///
    /// c.configure(CollectionOptions {
    ///     max_keys: Some(10_000),
    ///     ..c.options()
    /// })
    /// .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn configure(&self, options: CollectionOptions) -> Result<(), Error> {
        done(resolve(self.inner.configure(&options)).await?)
    }

    /// The collection's options.
    pub fn options(&self) -> CollectionOptions {
        self.inner.options()
    }

    /// The value of `key`, or `None` if it has none. Waits while the key is
    /// locked. Reading a missing key creates nothing.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        match self.run(key, Op::Get).await? {
            Outcome::Value(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    /// The value of `key` decoded from JSON as a `T`.
    ///
    /// # Errors
    ///
    /// [`Error::is_invalid_value`] if the value is not a JSON `T`.
    pub async fn get_as<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        let value = self.get(key).await?;
        decode(self.name(), key, value)
    }

    /// Sets `key` to `value`. Waits while the key is locked.
    ///
    /// # Errors
    ///
    /// [`Error::is_too_large`] if the key or value is over the collection's
    /// limits; [`Error::is_full`] if the key is new and the collection holds
    /// [`max_keys`](CollectionOptions::max_keys), or the value would grow it
    /// past [`max_bytes`](CollectionOptions::max_bytes).
    pub async fn set(&self, key: &str, value: impl Into<Bytes>) -> Result<(), Error> {
        done(self.run(key, Op::Set(value.into())).await?)
    }

    /// Sets `key` to `value` encoded as JSON.
    pub async fn set_as<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error> {
        let bytes = encode(self.name(), key, value)?;
        self.set(key, bytes).await
    }

    /// Removes `key`; returns whether it held a value. Waits while the key is
    /// locked.
    pub async fn del(&self, key: &str) -> Result<bool, Error> {
        match self.run(key, Op::Del).await? {
            Outcome::Removed(existed) => Ok(existed),
            other => Err(unexpected(&other)),
        }
    }

    /// Adds `by` to the value of `key`, read as a decimal `i64` (a missing
    /// key reads 0), stores the sum as decimal text, and returns it.
    ///
    /// # Errors
    ///
    /// [`Error::is_invalid_value`] if the value is not a decimal `i64`, or
    /// the sum overflows; [`Error::is_full`] as for [`set`](Collection::set).
    pub async fn incr(&self, key: &str, by: i64) -> Result<i64, Error> {
        match self.run(key, Op::Incr(by)).await? {
            Outcome::Int(n) => Ok(n),
            other => Err(unexpected(&other)),
        }
    }

    /// Sets `key` to `new` if its value is `current` (`None` on both sides
    /// meaning no value), atomically; returns whether it did.
    ///
    /// # Errors
    ///
    /// [`Error::is_full`] as for [`set`](Collection::set), when the swap
    /// would be made.
    ///
    /// ```no_run
    /// # async fn f(c: forkless_worker::Collection) -> Result<(), forkless_worker::Error> {
    /// // Claim a job once, whichever worker gets there first.
    /// if c.compare_and_swap("job:42", None, Some("worker-3".into())).await? {
    ///     // ours
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn compare_and_swap(
        &self,
        key: &str,
        current: Option<&[u8]>,
        new: Option<Bytes>,
    ) -> Result<bool, Error> {
        let op = Op::CompareAndSwap {
            expected: current.map(Bytes::copy_from_slice),
            new,
        };
        match self.run(key, op).await? {
            Outcome::Swapped(swapped) => Ok(swapped),
            other => Err(unexpected(&other)),
        }
    }

    /// Locks `key`, waiting behind the current holder and anyone queued
    /// before. The lock is held until [`KeyLock::release`] (which commits the
    /// lock's changes) or until the `KeyLock` is dropped (which discards
    /// them). A lock held by a worker that exits is released for it.
    ///
    /// Locks are not reentrant: acquiring a key that the caller already
    /// holds waits for that very lock (forever, unless it has a lease). Use
    /// [`acquire_timeout`](Collection::acquire_timeout) or a lease where a
    /// code path might.
    pub async fn acquire(&self, key: &str) -> Result<KeyLock, Error> {
        self.acquire_with(key, LockOptions::new()).await
    }

    /// Locks `key` if no one holds it, without waiting.
    pub async fn try_acquire(&self, key: &str) -> Result<Option<KeyLock>, Error> {
        self.lock(key, Wait::No, None).await
    }

    /// Locks `key`, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::is_timeout`] if the lock did not come in time.
    pub async fn acquire_timeout(&self, key: &str, timeout: Duration) -> Result<KeyLock, Error> {
        self.acquire_with(key, LockOptions::new().timeout(timeout))
            .await
    }

    /// Locks `key` with a timeout for the wait and a lease for the holding.
    ///
    /// # Errors
    ///
    /// [`Error::is_timeout`] if the lock did not come in time;
    /// [`Error::is_config`] for a zero lease.
    pub async fn acquire_with(&self, key: &str, options: LockOptions) -> Result<KeyLock, Error> {
        let wait = options.timeout.map_or(Wait::Forever, Wait::For);
        match self.lock(key, wait, options.lease).await? {
            Some(lock) => Ok(lock),
            None => Err(Error::timeout(format!(
                "no lock on key {key:?} in collection {:?}",
                self.name()
            ))),
        }
    }

    /// The number of keys that hold a value or a lock.
    pub async fn len(&self) -> Result<usize, Error> {
        tokio::task::consume_budget().await;
        match resolve(self.inner.count()).await? {
            Outcome::Count(n) => Ok(n),
            other => Err(unexpected(&other)),
        }
    }

    /// Returns true if no key holds a value or a lock.
    pub async fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len().await? == 0)
    }

    /// A view of this collection with blocking methods, for threads that do
    /// not run async code (a thread of your own beside the cluster, say).
    ///
    /// # Panics
    ///
    /// Its methods panic when called from async code (inside a tokio
    /// runtime), where blocking would stall the runtime.
    pub fn blocking(&self) -> BlockingCollection {
        BlockingCollection {
            inner: self.clone(),
        }
    }

    async fn run(&self, key: &str, op: Op) -> Result<Outcome, Error> {
        tokio::task::consume_budget().await;
        resolve(self.inner.op(self.owner, key, op)).await
    }

    async fn lock(
        &self,
        key: &str,
        wait: Wait,
        lease: Option<Duration>,
    ) -> Result<Option<KeyLock>, Error> {
        tokio::task::consume_budget().await;
        if lease == Some(Duration::ZERO) {
            return Err(Error::config(format!(
                "a lock on key {key:?} in collection {:?}: a zero lease would take the lock \
                 back as it is granted; give a longer one, or none",
                self.name()
            )));
        }
        let outcome = match self.inner.op(self.owner, key, Op::Acquire { wait, lease }) {
            Reply::Ready(result) => result?,
            Reply::Later(rx) => {
                let mut waiting = WaitingGrant {
                    rx,
                    coll: &self.inner,
                    key,
                };
                (&mut waiting.rx)
                    .await
                    .map_err(|_| Error::stopped("store"))??
            }
            Reply::Future(f) => f.await?,
        };
        match outcome {
            Outcome::Granted(grant) => Ok(Some(KeyLock {
                coll: self.inner.clone(),
                key: key.into(),
                token: grant.token,
                value: grant.value,
                change: Change::Keep,
                released: false,
            })),
            Outcome::NotGranted => Ok(None),
            other => Err(unexpected(&other)),
        }
    }
}

impl fmt::Debug for Collection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collection")
            .field("name", &self.name())
            .field("owner", &self.owner)
            .finish()
    }
}

/// A lock request in line. If it is dropped (its future was cancelled) after
/// the engine granted it but before the grant was read, it releases the lock,
/// so that a cancelled acquire never strands a key.
struct WaitingGrant<'a> {
    rx: oneshot::Receiver<Result<Outcome, Error>>,
    coll: &'a Arc<dyn CollectionBackend>,
    key: &'a str,
}

impl Drop for WaitingGrant<'_> {
    fn drop(&mut self) {
        // After close, the engine can no longer send: it sees the request as
        // gone. A grant it sent before is still here to give back.
        self.rx.close();
        if let Ok(Ok(Outcome::Granted(grant))) = self.rx.try_recv() {
            drop(self.coll.release(self.key, grant.token, Change::Keep));
        }
    }
}

/// A lock on one key of a [`Collection`].
///
/// Other operations on the key wait until the lock is released. Read and
/// change the value through the lock; the changes are made in the store at
/// [`release`](KeyLock::release), all at once. Dropping the lock without
/// releasing it discards the changes and frees the key (so an error or a
/// panic while it is held changes nothing). `release` takes the lock by
/// value, so a released lock cannot be used again.
#[must_use = "a KeyLock frees its key when dropped; call `release` to commit"]
pub struct KeyLock {
    coll: Arc<dyn CollectionBackend>,
    key: Box<str>,
    token: u64,
    value: Option<Bytes>,
    change: Change,
    released: bool,
}

impl KeyLock {
    /// The locked key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The key's value as this lock sees it: the value when the lock was
    /// granted, or what [`set`](KeyLock::set) or [`del`](KeyLock::del) made
    /// it since.
    pub fn get(&self) -> Option<Bytes> {
        match &self.change {
            Change::Keep => self.value.clone(),
            Change::Set(v) => Some(v.clone()),
            Change::Del => None,
        }
    }

    /// The value decoded from JSON as a `T`.
    pub fn get_as<T: DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        decode(self.coll.name(), &self.key, self.get())
    }

    /// Sets the value, in the store at release.
    pub fn set(&mut self, value: impl Into<Bytes>) {
        self.change = Change::Set(value.into());
    }

    /// Sets the value encoded as JSON, in the store at release.
    pub fn set_as<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let bytes = encode(self.coll.name(), &self.key, value)?;
        self.set(bytes);
        Ok(())
    }

    /// Removes the key, in the store at release.
    pub fn del(&mut self) {
        self.change = Change::Del;
    }

    /// Commits the changes made through this lock and frees the key for the
    /// next in line.
    ///
    /// # Errors
    ///
    /// [`Error::is_lock_lost`] if the store took the lock back first (its
    /// lease ran out): nothing is committed. [`Error::is_too_large`] if the
    /// new value is over the collection's limit, and [`Error::is_full`] if
    /// it would create a key past [`CollectionOptions::max_keys`] or grow
    /// the collection past [`CollectionOptions::max_bytes`]: either way the
    /// lock is released and nothing is committed.
    pub async fn release(mut self) -> Result<(), Error> {
        tokio::task::consume_budget().await;
        done(resolve(self.take_release()).await?)
    }

    /// [`release`](KeyLock::release) for threads that do not run async code.
    ///
    /// # Panics
    ///
    /// When called from async code (inside a tokio runtime).
    pub fn release_blocking(self) -> Result<(), Error> {
        block_on(self.release())
    }

    fn take_release(&mut self) -> Reply {
        self.released = true;
        let change = std::mem::replace(&mut self.change, Change::Keep);
        self.coll.release(&self.key, self.token, change)
    }
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        if !self.released {
            self.change = Change::Keep;
            // The engine finishes the release whether or not anyone reads
            // the answer.
            drop(self.take_release());
        }
    }
}

impl fmt::Debug for KeyLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyLock")
            .field("collection", &self.coll.name())
            .field("key", &self.key)
            .finish()
    }
}

/// A [`Collection`] with blocking methods, from [`Collection::blocking`].
///
/// Each method is the async method of the same name, waited for on the
/// calling thread.
///
/// ```no_run
/// # fn f(cluster_store: forkless_worker::Store) -> Result<(), forkless_worker::Error> {
/// let config = cluster_store.collection("config").blocking();
/// config.set("motd", "hello from the admin thread")?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct BlockingCollection {
    inner: Collection,
}

impl BlockingCollection {
    /// See [`Collection::configure`].
    pub fn configure(&self, options: CollectionOptions) -> Result<(), Error> {
        block_on(self.inner.configure(options))
    }

    /// See [`Collection::options`].
    pub fn options(&self) -> CollectionOptions {
        self.inner.options()
    }

    /// See [`Collection::get`].
    pub fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        block_on(self.inner.get(key))
    }

    /// See [`Collection::get_as`].
    pub fn get_as<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        block_on(self.inner.get_as(key))
    }

    /// See [`Collection::set`].
    pub fn set(&self, key: &str, value: impl Into<Bytes>) -> Result<(), Error> {
        block_on(self.inner.set(key, value))
    }

    /// See [`Collection::set_as`].
    pub fn set_as<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error> {
        block_on(self.inner.set_as(key, value))
    }

    /// See [`Collection::del`].
    pub fn del(&self, key: &str) -> Result<bool, Error> {
        block_on(self.inner.del(key))
    }

    /// See [`Collection::incr`].
    pub fn incr(&self, key: &str, by: i64) -> Result<i64, Error> {
        block_on(self.inner.incr(key, by))
    }

    /// See [`Collection::compare_and_swap`].
    pub fn compare_and_swap(
        &self,
        key: &str,
        current: Option<&[u8]>,
        new: Option<Bytes>,
    ) -> Result<bool, Error> {
        block_on(self.inner.compare_and_swap(key, current, new))
    }

    /// See [`Collection::acquire`]. Release the lock with
    /// [`KeyLock::release_blocking`].
    pub fn acquire(&self, key: &str) -> Result<KeyLock, Error> {
        block_on(self.inner.acquire(key))
    }

    /// See [`Collection::try_acquire`].
    pub fn try_acquire(&self, key: &str) -> Result<Option<KeyLock>, Error> {
        block_on(self.inner.try_acquire(key))
    }

    /// See [`Collection::acquire_timeout`].
    pub fn acquire_timeout(&self, key: &str, timeout: Duration) -> Result<KeyLock, Error> {
        block_on(self.inner.acquire_timeout(key, timeout))
    }

    /// See [`Collection::acquire_with`].
    pub fn acquire_with(&self, key: &str, options: LockOptions) -> Result<KeyLock, Error> {
        block_on(self.inner.acquire_with(key, options))
    }

    /// See [`Collection::len`].
    pub fn len(&self) -> Result<usize, Error> {
        block_on(self.inner.len())
    }

    /// See [`Collection::is_empty`].
    pub fn is_empty(&self) -> Result<bool, Error> {
        block_on(self.inner.is_empty())
    }
}

async fn resolve(reply: Reply) -> Result<Outcome, Error> {
    match reply {
        Reply::Ready(result) => result,
        Reply::Later(rx) => rx.await.map_err(|_| Error::stopped("store"))?,
        Reply::Future(f) => f.await,
    }
}

fn done(outcome: Outcome) -> Result<(), Error> {
    match outcome {
        Outcome::Done => Ok(()),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(outcome: &Outcome) -> Error {
    Error::invalid_value(format!(
        "the store answered with an unexpected {outcome:?} (a bug in the store backend)"
    ))
}

fn decode<T: DeserializeOwned>(
    collection: &str,
    key: &str,
    value: Option<Bytes>,
) -> Result<Option<T>, Error> {
    value
        .map(|v| {
            json::decode(&v, || {
                format!("the value of key {key:?} in collection {collection:?}")
            })
        })
        .transpose()
}

fn encode<T: Serialize + ?Sized>(collection: &str, key: &str, value: &T) -> Result<Bytes, Error> {
    json::encode(value, || {
        format!("a value for key {key:?} in collection {collection:?}")
    })
}

/// Runs `future` to completion on this thread (futures' executor parks it
/// while it waits).
fn block_on<F: Future>(future: F) -> F::Output {
    assert!(
        tokio::runtime::Handle::try_current().is_err(),
        "a blocking store method was called from async code; use the async methods there"
    );
    futures_executor::block_on(future)
}
