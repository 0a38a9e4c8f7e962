//! The in-process store's key locks: granting one, taking it back (on its
//! release, when its lease runs out, when its worker exits), the queue of
//! operations that wait behind it (bounded, and pruned of those whose
//! callers left), and answering them in order, with a waker's panic caught
//! and raised once the shard is consistent.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use forkless_worker::rt::store::{Grant, Op, Outcome, Wait};
use forkless_worker::rt::Errors as _;
use forkless_worker::rt::Owner;
use forkless_worker::Error;
use tokio::sync::oneshot;

use crate::store::checks::shorten;
use crate::time::deadline;

use super::TimerKind;
use super::{lock, Answer, Coll, Ctx, Entry, Locked, Panic, Queued, ShardData, MAX_WAITERS};

/// A key's queue is swept of operations whose callers left at least every
/// this many new arrivals (and every quarter of its length at the last
/// sweep, whichever is more: amortised O(1) per arrival).
const MIN_QUEUE_SWEEP: usize = 16;

impl Coll {
    /// Takes back the locks held by `owner`; returns the first panic of a
    /// waker woken on the way, after every lock is back.
    pub(super) fn release_owner(&self, owner: Owner) -> Option<Panic> {
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
}

/// Releases the lock on `key` (if `token` is given, only if it is held with
/// that token) without committing anything, and lets the queue behind it run.
/// Returns whether a lock was released. A waiter's waker that panics as it
/// is answered leaves its panic in `panicked` (the first one only), for the
/// caller to raise once it let go of the shard.
pub(super) fn take_lock(
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
    let Some(locked) = entry.lock.take_if(|l| token.is_none_or(|t| t == l.token)) else {
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

/// Where the answer of an operation that must wait behind a lock goes.
pub(super) trait Back {
    /// What the caller keeps while it waits.
    type Waiting;
    /// The sender the queue keeps, and what the caller keeps.
    fn open(self) -> (Answer, Self::Waiting);
}

/// A new channel: the caller waits on its receiver.
pub(super) struct NewChannel;

impl Back for NewChannel {
    type Waiting = oneshot::Receiver<Result<Outcome, Error>>;

    fn open(self) -> (Answer, Self::Waiting) {
        oneshot::channel()
    }
}

/// The channel of an operation that waited in the hold: its caller already
/// waits on the receiver.
impl Back for Answer {
    type Waiting = ();

    fn open(self) -> (Answer, ()) {
        (self, ())
    }
}

/// What became of an operation: its result now (and the unused `B`), or it
/// waits behind the key's lock.
pub(super) enum Ran<B: Back> {
    Now(Result<Outcome, Error>, B),
    Waits(B::Waiting),
}

/// Answers a waiter. The send wakes the waiter's task, with a waker that
/// is the caller's code: if it panics, the answer was already delivered
/// (the send stores it before it wakes), so the store goes on as if the
/// wake had worked, and keeps the panic for [`raise`]. Returns whether the
/// answer was delivered (false: the waiter had left).
pub(super) fn deliver(
    answer: Answer,
    result: Result<Outcome, Error>,
    panicked: &mut Option<Panic>,
) -> bool {
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
pub(super) fn raise(panicked: Option<Panic>) {
    if let Some(payload) = panicked {
        std::panic::resume_unwind(payload);
    }
}

impl Ctx<'_> {
    /// Locks `e` for `owner`, with `queue` waiting behind.
    pub(super) fn grant(
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

impl Coll {
    /// Queues `op` behind `locked`, its answer to go where `back` says.
    pub(super) fn enqueue<B: Back>(
        &self,
        locked: &mut Locked,
        owner: Option<Owner>,
        key: &str,
        op: Op,
        back: B,
    ) -> Ran<B> {
        let timeout = match op {
            Op::Acquire { wait: Wait::No, .. } => return Ran::Now(Ok(Outcome::NotGranted), back),
            Op::Acquire {
                wait: Wait::For(d), ..
            } if d.is_zero() => return Ran::Now(Ok(Outcome::NotGranted), back),
            Op::Acquire {
                wait: Wait::For(d), ..
            } => Some(d),
            _ => None,
        };
        self.prune(locked);
        if locked.queue.len() >= MAX_WAITERS {
            let full = Error::full(format!(
                "{MAX_WAITERS} operations already wait behind the lock on key {:?} in \
                 collection {:?}",
                shorten(key),
                self.name
            ));
            return Ran::Now(Err(full), back);
        }
        let (answer, waiting) = back.open();
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
        Ran::Waits(waiting)
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
