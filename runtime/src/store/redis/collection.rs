//! A collection of the store on Redis: the keys it names, the operations a
//! worker runs on it ([`CollectionBackend`]), each one script that Redis
//! runs atomically, run again after a release while the key is locked, and
//! its options.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use forkless_worker::rt::store::{Change, CollectionBackend, Op, Outcome, Reply, Wait};
use forkless_worker::rt::Errors as _;
use forkless_worker::rt::Owner;
use forkless_worker::{CollectionOptions, Error};
use redis::Script;
use tokio::sync::oneshot;

use crate::redis::{glob_escape, Link, Via};
use crate::store::checks::{check_options, check_sizes, shorten, too_large};
use crate::time::deadline;

use super::scripts::{
    answer_of, bytes_of, int_of, CAS, DEL, GET, INCR, LOCKED, REFUSED, SET, VALUE,
};
use super::{lock, Answer, Attempt, RColl};

impl RColl {
    pub(super) fn arc(&self) -> Arc<RColl> {
        // `self` is reached through an `Arc`, so the upgrade cannot fail
        // while a method of it runs.
        self.me.upgrade().unwrap_or_else(|| unreachable!())
    }

    pub(super) fn value_key(&self, key: &str) -> String {
        format!("{}v:{key}", self.base)
    }

    pub(super) fn lock_key(&self, key: &str) -> String {
        format!("{}l:{key}", self.base)
    }

    pub(super) fn stopped(&self) -> Error {
        Error::stopped(&format!("store collection {:?}", self.name))
    }

    pub(super) fn link(&self) -> &Link {
        &self.core.link
    }

    /// The time to live of the collection's keys, in ms as the scripts take
    /// it (0: none).
    pub(super) fn ttl(&self) -> u64 {
        self.limits.ttl_ms.load(Ordering::Relaxed)
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
                // A key seen locked is looked at with its script only.
                other => self.once(&Via::Link, &key, other, waiter.is_none()).await,
            };
            match attempt {
                Err(e) => {
                    let _ = answer.send(Err(e));
                    return;
                }
                // As in `run_here`: what waited behind a lock and got
                // through while the store closed reports the stop (a lock
                // so granted is given back).
                Ok(Attempt::Done(outcome)) if waiter.is_some() && self.link().is_closed() => {
                    if let Outcome::Granted(grant) = outcome {
                        self.core.forget(grant.token);
                        let _ = self.release_now(&key, grant.token, Change::Keep).await;
                    }
                    let _ = answer.send(Err(self.stopped()));
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
            if self.link().is_closed() {
                let _ = answer.send(Err(self.stopped()));
                return;
            }
        }
    }

    /// Runs `op` on this worker thread's own connection until it is done,
    /// waiting while the key is locked.
    async fn run_here(self: Arc<Self>, via: Via, key: String, op: Op) -> Result<Outcome, Error> {
        let mut waiter = None;
        loop {
            if let Attempt::Done(outcome) = self.once(&via, &key, &op, waiter.is_none()).await? {
                // An operation that waited behind a lock and ran while the
                // store closed (the close releases the locks this host still
                // holds) reports the stop, as every waiting operation does:
                // which of the two came first on Redis is not known here.
                if waiter.is_some() && self.link().is_closed() {
                    return Err(self.stopped());
                }
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

    /// One look at an unlocked-key operation: its plain command first if
    /// `plain` and it has one, then its script if that fails.
    async fn once(&self, via: &Via, key: &str, op: &Op, plain: bool) -> Result<Attempt, Error> {
        let vkey = self.value_key(key);
        let ttl = self.ttl();
        if plain {
            if let Some(outcome) = self.plain(via, &vkey, op, ttl).await? {
                return Ok(Attempt::Done(outcome));
            }
        }
        let lkey = self.lock_key(key);
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
                call.arg(ttl);
            }
            Op::Set(v) => {
                call.arg(v.as_ref()).arg(ttl);
            }
            Op::Incr(by) => {
                call.arg(*by).arg(ttl);
            }
            Op::CompareAndSwap { expected, new } => {
                let flag = |v: &Option<Bytes>| if v.is_some() { "1" } else { "0" };
                let bytes = |v: &Option<Bytes>| v.clone().unwrap_or_default().to_vec();
                call.arg(flag(expected))
                    .arg(bytes(expected))
                    .arg(flag(new))
                    .arg(bytes(new))
                    .arg(ttl);
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

    /// The operation as one plain command, where one does it atomically
    /// and fails on a locked key: while a key is locked its value key holds
    /// a hash (see `store_acquire.lua`), and `GET`, `GETEX`, `SET ... GET`,
    /// `GETDEL` and `INCRBY` answer `WRONGTYPE` on a hash instead of
    /// reading or writing it. `None`: the command failed (the key is
    /// locked, or its lock's lease ran out and left the hash, or this Redis
    /// is older than 6.2), or the operation has none: run its script, which
    /// tells these apart.
    async fn plain(
        &self,
        via: &Via,
        vkey: &str,
        op: &Op,
        ttl: u64,
    ) -> Result<Option<Outcome>, Error> {
        let expire = ttl != 0;
        let (cmd, what) = match op {
            Op::Get if expire => {
                let mut cmd = redis::cmd("GETEX");
                cmd.arg(vkey).arg("PX").arg(ttl);
                (cmd, "get")
            }
            Op::Get => {
                let mut cmd = redis::cmd("GET");
                cmd.arg(vkey);
                (cmd, "get")
            }
            Op::Set(v) => {
                // `GET` makes the set fail on a hash; the old value it
                // answers with is dropped.
                let mut cmd = redis::cmd("SET");
                cmd.arg(vkey).arg(v.as_ref());
                if expire {
                    cmd.arg("PX").arg(ttl);
                }
                cmd.arg("GET");
                (cmd, "set")
            }
            Op::Del => {
                let mut cmd = redis::cmd("GETDEL");
                cmd.arg(vkey);
                (cmd, "del")
            }
            // With a time to live, the increment and the expiry are one
            // script: a PEXPIRE after a failed INCRBY would touch a lock's
            // hash.
            Op::Incr(by) if !expire => {
                let mut cmd = redis::cmd("INCRBY");
                cmd.arg(vkey).arg(*by);
                (cmd, "incr")
            }
            _ => return Ok(None),
        };
        let answer = self.link().answer_via(via, what, &cmd).await?;
        if matches!(answer, redis::Value::ServerError(_)) {
            return Ok(None);
        }
        let found = !matches!(answer, redis::Value::Nil);
        Ok(Some(match op {
            Op::Get => Outcome::Value(if found { Some(bytes_of(answer)?) } else { None }),
            Op::Set(_) => Outcome::Done,
            Op::Del => Outcome::Removed(found),
            _ => Outcome::Int(int_of(&answer)?),
        }))
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
        let mut current = lock(&self.options);
        *current = options.clone();
        self.limits.set(options);
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
        let max_key = self.limits.max_key.load(Ordering::Relaxed);
        let max_value = self.limits.max_value.load(Ordering::Relaxed);
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
        let max_value = self.limits.max_value.load(Ordering::Relaxed);
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
