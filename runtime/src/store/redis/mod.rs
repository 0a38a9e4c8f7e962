//! The store on Redis: each operation is one Lua script, so it is atomic in
//! Redis, and checks the key's lock there.
//!
//! A collection's keys are `{prefix}:s:{len}:{name}:v:{key}` (the value) and
//! `...:l:{key}` (the lock, holding its token, with a lease). The name's
//! length keeps two collections apart whatever their names hold.
//!
//! Durations a worker passes (leases, timeouts, times to live) become
//! deadlines with [`deadline::from_now`] and Redis milliseconds with
//! [`millis`], both saturating at [`deadline::FAR`]: Redis is never sent a
//! `PX` it refuses. `max_keys` and `max_bytes` are refused: Redis expires
//! keys by itself, so the store cannot count them exactly; bound a Redis
//! store with Redis's `maxmemory`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use forkless_worker::backend::{
    Change, CollectionBackend, Grant, Op, Outcome, Owner, Reply, StoreBackend, Wait,
};
use forkless_worker::{CollectionOptions, Error};
use redis::{Script, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use super::checks::{check_options, check_sizes, lock_lost, named, shorten, too_large, Exits};
use crate::config::RedisConfig;
use crate::redis::{follow, glob_escape, Follow, Link, Via};
use crate::store::StoreEngine;
use crate::time::deadline;

/// The longest pause between two looks at a locked key. A release wakes
/// the waiters sooner (it publishes on the lock's key, which hosts with
/// waiters subscribe to); only a lease that runs out publishes nothing.
const MAX_POLL: Duration = Duration::from_millis(100);

/// Codes the scripts answer with, first in a two-item table: the key is
/// locked; done, and the second item is the value; the operation was refused
/// (the second item says why). Any other code: done, no value.
const LOCKED: i64 = 0;
const VALUE: i64 = 2;
const REFUSED: i64 = 3;

static GET: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/store_get.lua")));

static SET: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/store_set.lua")));

static DEL: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/store_del.lua")));

static INCR: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/store_incr.lua")));

static CAS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/store_cas.lua")));

static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/store_acquire.lua")));

static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/store_release.lua")));

static RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/store_renew.lua")));

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
    core: Arc<Core>,
}

/// How one look at the key went.
enum Attempt {
    Done(Outcome),
    /// The key is locked: try again after a release.
    Locked,
}

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
        self.core.link.close(releases);
        self.collections
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// An operation waiting for a locked key. It looks again after a release
/// (made here, or published by another host) or after a pause that doubles
/// from 1 ms up to [`MAX_POLL`].
struct Waiter {
    released: watch::Receiver<u64>,
    _watching: Watching,
    pause: Duration,
}

impl Waiter {
    /// Returns after the next release, or the pause (at most `limit`).
    async fn wait(&mut self, limit: Option<Duration>) {
        let pause = limit.map_or(self.pause, |limit| self.pause.min(limit));
        tokio::select! {
            _ = self.released.changed() => {}
            () = tokio::time::sleep(pause) => {}
        }
        self.pause = (self.pause * 2).min(MAX_POLL);
    }
}

/// A waiter's interest in a lock key's releases, while it waits.
struct Watching {
    core: Arc<Core>,
    key: String,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut watched = lock(&self.core.watched);
        if let Some(n) = watched.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                watched.remove(&self.key);
                let _ = self
                    .core
                    .watch_changes
                    .send(Follow::Unsubscribe(self.key.clone()));
            }
        }
    }
}

impl Core {
    /// Listens to releases of the lock key `key` until the guard goes.
    fn watch(self: &Arc<Self>, key: String) -> Watching {
        let mut watched = lock(&self.watched);
        let n = watched.entry(key.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            let _ = self.watch_changes.send(Follow::Subscribe(key.clone()));
        }
        Watching {
            core: self.clone(),
            key,
        }
    }

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

impl RColl {
    fn arc(&self) -> Arc<RColl> {
        // `self` is reached through an `Arc`, so the upgrade cannot fail
        // while a method of it runs.
        self.me.upgrade().unwrap_or_else(|| unreachable!())
    }

    fn value_key(&self, key: &str) -> String {
        format!("{}v:{key}", self.base)
    }

    fn lock_key(&self, key: &str) -> String {
        format!("{}l:{key}", self.base)
    }

    fn stopped(&self) -> Error {
        Error::stopped(&format!("store collection {:?}", self.name))
    }

    fn link(&self) -> &Link {
        &self.core.link
    }

    /// The time to live of the collection's keys, in ms as the scripts take
    /// it ("0": none).
    fn ttl(&self) -> String {
        lock(&self.options)
            .expire_keys
            .map_or_else(|| "0".to_owned(), |d| millis(d).to_string())
    }

    /// Runs `op` until it is done, waiting while the key is locked, and
    /// answers on `answer`.
    async fn run(self: Arc<Self>, owner: Option<Owner>, key: String, op: Op, mut answer: Answer) {
        let deadline = match &op {
            Op::Acquire {
                wait: Wait::For(d), ..
            } => Some(deadline::from_now(*d)),
            _ => None,
        };
        let mut waiter = None;
        loop {
            if answer.is_closed() {
                return;
            }
            let attempt = match &op {
                Op::Acquire { lease, .. } => self.acquire(owner, &key, *lease, &answer).await,
                other => self.once(&Via::Link, &key, other).await,
            };
            match attempt {
                Err(e) => {
                    let _ = answer.send(Err(e));
                    return;
                }
                Ok(Attempt::Done(outcome)) => {
                    if let Outcome::Granted(grant) = outcome {
                        let token = grant.token;
                        if let Err(Ok(Outcome::Granted(_))) =
                            answer.send(Ok(Outcome::Granted(grant)))
                        {
                            // The caller left after all: give the lock back.
                            self.core.forget(token);
                            let _ = self.release_now(&key, token, Change::Keep).await;
                        }
                    } else {
                        let _ = answer.send(Ok(outcome));
                    }
                    return;
                }
                Ok(Attempt::Locked) => {}
            }
            if matches!(op, Op::Acquire { wait: Wait::No, .. }) {
                let _ = answer.send(Ok(Outcome::NotGranted));
                return;
            }
            let waiter = waiter.get_or_insert_with(|| self.waiter(&key));
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|left| left.is_zero()) {
                let _ = answer.send(Ok(Outcome::NotGranted));
                return;
            }
            tokio::select! {
                () = waiter.wait(left) => {}
                _ = answer.closed() => return,
            }
        }
    }

    /// Runs `op` on this worker thread's own connection until it is done,
    /// waiting while the key is locked.
    async fn run_here(self: Arc<Self>, via: Via, key: String, op: Op) -> Result<Outcome, Error> {
        let mut waiter = None;
        loop {
            if let Attempt::Done(outcome) = self.once(&via, &key, &op).await? {
                return Ok(outcome);
            }
            waiter
                .get_or_insert_with(|| self.waiter(&key))
                .wait(None)
                .await;
            if self.link().is_closed() {
                return Err(self.stopped());
            }
        }
    }

    /// Starts waiting for `key`'s lock: counts the wait, and listens to the
    /// key's releases.
    fn waiter(&self, key: &str) -> Waiter {
        self.core.waits.fetch_add(1, Ordering::Relaxed);
        Waiter {
            released: self.core.released.subscribe(),
            _watching: self.core.watch(self.lock_key(key)),
            pause: Duration::from_millis(1),
        }
    }

    /// One look at an unlocked-key operation.
    async fn once(&self, via: &Via, key: &str, op: &Op) -> Result<Attempt, Error> {
        let (vkey, lkey, ttl) = (self.value_key(key), self.lock_key(key), self.ttl());
        let (script, what): (&Script, &str) = match op {
            Op::Get => (&GET, "get"),
            Op::Set(_) => (&SET, "set"),
            Op::Del => (&DEL, "del"),
            Op::Incr(_) => (&INCR, "incr"),
            Op::CompareAndSwap { .. } => (&CAS, "compare_and_swap"),
            Op::Acquire { .. } => unreachable!("acquire has a path of its own"),
        };
        let mut call = script.prepare_invoke();
        call.key(&vkey).key(&lkey);
        match op {
            Op::Get | Op::Del => {
                call.arg(&ttl);
            }
            Op::Set(v) => {
                call.arg(v.as_ref()).arg(&ttl);
            }
            Op::Incr(by) => {
                call.arg(*by).arg(&ttl);
            }
            Op::CompareAndSwap { expected, new } => {
                let flag = |v: &Option<Bytes>| if v.is_some() { "1" } else { "0" };
                let bytes = |v: &Option<Bytes>| v.clone().unwrap_or_default().to_vec();
                call.arg(flag(expected))
                    .arg(bytes(expected))
                    .arg(flag(new))
                    .arg(bytes(new))
                    .arg(&ttl);
            }
            Op::Acquire { .. } => {}
        }
        let (code, value) = answer_of(self.link().script_via(via, what, &call).await?)?;
        if code == LOCKED {
            return Ok(Attempt::Locked);
        }
        let outcome = match op {
            Op::Get => Outcome::Value(if code == VALUE {
                Some(bytes_of(value)?)
            } else {
                None
            }),
            Op::Set(_) => Outcome::Done,
            Op::Del => Outcome::Removed(int_of(&value)? == 1),
            Op::Incr(by) => {
                if code == REFUSED {
                    return Err(Error::invalid_value(format!(
                        "incr by {by}: the value of key {:?} in collection {:?} is not a \
                         decimal i64, or the sum overflows ({})",
                        shorten(key),
                        self.name,
                        String::from_utf8_lossy(&bytes_of(value).unwrap_or_default())
                    )));
                }
                Outcome::Int(int_of(&value)?)
            }
            Op::CompareAndSwap { .. } => Outcome::Swapped(int_of(&value)? == 1),
            Op::Acquire { .. } => unreachable!("acquire has a path of its own"),
        };
        Ok(Attempt::Done(outcome))
    }

    /// One try at the lock.
    async fn acquire(
        &self,
        owner: Option<Owner>,
        key: &str,
        lease: Option<Duration>,
        answer: &Answer,
    ) -> Result<Attempt, Error> {
        if !self.core.exits.alive(owner) {
            return Err(self.stopped());
        }
        let fixed = lease.or(lock(&self.options).max_hold);
        let ms = millis(fixed.unwrap_or(self.link().config.lock_lease));
        let token = self.core.next_token.fetch_add(1, Ordering::Relaxed);
        let text = self.core.token_text(token);
        let mut call = ACQUIRE.prepare_invoke();
        call.key(self.value_key(key))
            .key(self.lock_key(key))
            .arg(&text)
            .arg(ms);
        let (code, value) = answer_of(self.link().script("acquire", &call).await?)?;
        if code == LOCKED {
            return Ok(Attempt::Locked);
        }
        let value = if code == VALUE {
            Some(bytes_of(value)?)
        } else {
            None
        };
        let renew = fixed
            .is_none()
            .then(|| self.renew(key.into(), text, ms).abort_handle());
        lock(&self.core.held).insert(
            token,
            Held {
                coll: self.arc(),
                key: key.into(),
                owner,
                renew,
            },
        );
        // The owner may have exited while the script ran: its clean-up
        // looked at the held locks before this one was among them.
        if !self.core.exits.alive(owner) || answer.is_closed() {
            self.core.forget(token);
            let _ = self.release_now(key, token, Change::Keep).await;
            return Err(self.stopped());
        }
        Ok(Attempt::Done(Outcome::Granted(Grant { token, value })))
    }

    /// Keeps a lock without a lease of its own alive while it is held.
    fn renew(&self, key: Box<str>, token: String, ms: u64) -> tokio::task::JoinHandle<()> {
        let coll = self.arc();
        let every = Duration::from_millis(ms / 3);
        self.link().spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let mut call = RENEW.prepare_invoke();
                call.key(coll.value_key(&key))
                    .key(coll.lock_key(&key))
                    .arg(&token)
                    .arg(ms);
                match coll.link().script::<i64>("renew a lock", &call).await {
                    Ok(1) => {}
                    Ok(_) => {
                        tracing::warn!(
                            collection = %coll.name,
                            key = %shorten(&key),
                            "a lock was lost: its lease ran out before it could be renewed"
                        );
                        return;
                    }
                    Err(e) => tracing::warn!(
                        collection = %coll.name,
                        key = %shorten(&key),
                        "cannot renew a lock's lease: {e}"
                    ),
                }
            }
        })
    }

    /// Releases the lock on `key` held with `token`, committing `change`.
    async fn release_now(&self, key: &str, token: u64, change: Change) -> Result<Outcome, Error> {
        let (kind, value) = match change {
            Change::Keep => ("k", Bytes::new()),
            Change::Set(v) => ("s", v),
            Change::Del => ("d", Bytes::new()),
        };
        let mut call = RELEASE.prepare_invoke();
        call.key(self.value_key(key))
            .key(self.lock_key(key))
            .arg(self.core.token_text(token))
            .arg(kind)
            .arg(value.as_ref())
            .arg(self.ttl());
        let (code, _) = answer_of(self.link().script("release", &call).await?)?;
        self.core.released.send_modify(|n| *n = n.wrapping_add(1));
        if code == LOCKED {
            return Err(lock_lost(&self.name, key));
        }
        Ok(Outcome::Done)
    }

    async fn count_now(&self) -> Result<Outcome, Error> {
        let pattern = format!("{}[vl]:*", glob_escape(&self.base));
        let mut keys = std::collections::HashSet::new();
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, batch): (u64, Vec<Vec<u8>>) = self.link().command("len", &cmd).await?;
            for k in batch {
                // The user's key follows the base and the "v:" or "l:".
                if let Some(rest) = k.get(self.base.len() + 2..) {
                    keys.insert(rest.to_vec());
                }
            }
            if next == 0 {
                return Ok(Outcome::Count(keys.len()));
            }
            cursor = next;
        }
    }

    /// Runs `work` on the link's thread and answers later.
    fn later<F, Fut>(&self, work: F) -> Reply
    where
        F: FnOnce(Arc<RColl>) -> Fut,
        Fut: std::future::Future<Output = Result<Outcome, Error>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let fut = work(self.arc());
        self.link().spawn(async move {
            let _ = tx.send(fut.await);
        });
        Reply::Later(rx)
    }
}

type Answer = oneshot::Sender<Result<Outcome, Error>>;

impl CollectionBackend for RColl {
    fn name(&self) -> &str {
        &self.name
    }

    fn configure(&self, options: &CollectionOptions) -> Reply {
        if self.link().is_closed() {
            return Reply::Ready(Err(self.stopped()));
        }
        if let Err(e) = check_options(&self.name, options) {
            return Reply::Ready(Err(e));
        }
        if options.max_keys.is_some() || options.max_bytes.is_some() {
            return Reply::Ready(Err(Error::config(format!(
                "collection {:?}: max_keys and max_bytes are not supported on the Redis \
                 backend: use Redis's maxmemory (got {options:?})",
                self.name
            ))));
        }
        *lock(&self.options) = options.clone();
        Reply::Ready(Ok(Outcome::Done))
    }

    fn options(&self) -> CollectionOptions {
        lock(&self.options).clone()
    }

    fn op(&self, owner: Option<Owner>, key: &str, op: Op) -> Reply {
        if self.link().is_closed() {
            return Reply::Ready(Err(self.stopped()));
        }
        self.core.ops.fetch_add(1, Ordering::Relaxed);
        let (max_key, max_value) = {
            let o = lock(&self.options);
            (o.max_key_size, o.max_value_size)
        };
        if let Err(e) = check_sizes(&self.name, key, &op, max_key, max_value) {
            return Reply::Ready(Err(e));
        }
        let op = match op {
            Op::Acquire {
                wait: Wait::For(d),
                lease,
            } if d.is_zero() => Op::Acquire {
                wait: Wait::No,
                lease,
            },
            other => other,
        };
        if !matches!(op, Op::Acquire { .. }) {
            if let Some(via) = self.core.link.local() {
                return Reply::Future(Box::pin(self.arc().run_here(via, key.to_owned(), op)));
            }
        }
        let (tx, rx) = oneshot::channel();
        self.link()
            .spawn(self.arc().run(owner, key.to_owned(), op, tx));
        Reply::Later(rx)
    }

    fn release(&self, key: &str, token: u64, change: Change) -> Reply {
        if self.link().is_closed() {
            return Reply::Ready(Err(self.stopped()));
        }
        self.core.forget(token);
        let max_value = lock(&self.options).max_value_size;
        let (change, refused) = match change {
            Change::Set(v) if v.len() > max_value => (
                Change::Keep,
                Some(too_large(&self.name, "a value", v.len(), max_value, key)),
            ),
            other => (other, None),
        };
        let key = key.to_owned();
        self.later(move |coll| async move {
            let released = coll.release_now(&key, token, change).await;
            match refused {
                Some(e) => Err(e),
                None => released,
            }
        })
    }

    fn count(&self) -> Reply {
        if self.link().is_closed() {
            return Reply::Ready(Err(self.stopped()));
        }
        self.later(|coll| async move { coll.count_now().await })
    }
}

/// A duration in whole milliseconds as Redis takes them in `PX` and
/// `PEXPIRE`: at least 1, at most [`deadline::FAR`] (Redis refuses a time
/// to live whose end overflows its clock).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.min(deadline::FAR).as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
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

fn malformed(what: &Value) -> Error {
    Error::unavailable(format!(
        "Redis answered a store script with {what:?}, which the store does not understand"
    ))
}

/// A script's `{code, value}` answer.
fn answer_of(v: Value) -> Result<(i64, Value), Error> {
    match v {
        Value::Array(mut items) if items.len() == 2 => {
            let value = items.pop().unwrap_or(Value::Nil);
            let code = int_of(&items[0])?;
            Ok((code, value))
        }
        other => Err(malformed(&other)),
    }
}

fn int_of(v: &Value) -> Result<i64, Error> {
    match v {
        Value::Int(n) => Ok(*n),
        other => Err(malformed(other)),
    }
}

fn bytes_of(v: Value) -> Result<Bytes, Error> {
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
