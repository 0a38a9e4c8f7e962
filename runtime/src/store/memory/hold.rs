//! The hold: while the engine waits for the store of the process it takes
//! over from (an upgrade), every operation on it waits here, and runs when
//! the hold is released, against the data imported meanwhile.
//!
//! One queue for the whole engine, not one per key: what waited runs in the
//! order it arrived, whatever its collection, and an operation that arrives
//! while the release is running them lines up behind them. Each answers
//! later ([`Reply::Later`]), as behind a key lock: an async caller waits
//! without a thread, a blocking one blocks. Operations, releases,
//! `configure` and `count` alike; `options()`, which answers at once,
//! reads the options in force (the defaults until the import).
//!
//! An acquire that may not wait ([`Wait::No`], or a zero timeout) answers
//! `NotGranted` at once: the store is, in effect, locked by the old
//! process. One with a timeout waits at most that long in the hold (then
//! `NotGranted`, as behind a key lock), and what is left of its timeout
//! applies after the release.
//!
//! At the release, operations whose callers left (their answer's receiver
//! was dropped) are skipped, as behind a key lock; releases of key locks
//! run whatever happened to their caller. The queue is pruned of the
//! callers that left as it grows, and holds at most [`MAX_PARKED`]
//! operations (one more fails with [`Error::is_full`]).
//!
//! [`close`](super::Engine::close) fails every waiting operation with a
//! "stopped" error. The supervisor releases or closes every engine it
//! holds, so that nothing waits forever. The check on the path of every
//! operation is one atomic load.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use forkless_worker::rt::store::{Change, Op, Outcome, Reply, Wait};
use forkless_worker::rt::Errors as _;
use forkless_worker::rt::Owner;
use forkless_worker::{CollectionOptions, Error};
use tokio::sync::oneshot;

use crate::time::clock::TimerKey;
use crate::time::deadline;

use super::locks::{deliver, raise, Ran};
use super::TimerKind;
use super::{lock, Answer, Coll, Panic};

/// The most operations that wait in the hold; one more fails with
/// [`Error::is_full`].
pub(crate) const MAX_PARKED: usize = 1 << 20;

/// The queue is pruned of callers that left when it reaches this length,
/// and then each time it doubles.
const MIN_PRUNE: usize = 1024;

/// Whether the engine is held, and what waits.
#[derive(Default)]
pub(super) struct Hold {
    /// Whether operations must go through [`Coll::park`]: while held, and
    /// while the release runs what waited.
    on: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    held: bool,
    /// A release is running the queue.
    draining: bool,
    queue: VecDeque<Parked>,
    /// The queue's length at which it is next pruned.
    prune_at: usize,
}

/// An operation waiting in the hold.
struct Parked {
    id: u64,
    coll: Arc<Coll>,
    call: Call,
    answer: Answer,
    /// An acquire's timeout, and its timer.
    deadline: Option<Instant>,
    timeout: Option<TimerKey>,
}

/// What a collection was asked.
pub(super) enum Call {
    Op {
        owner: Option<Owner>,
        key: Box<str>,
        op: Op,
    },
    Release {
        key: Box<str>,
        token: u64,
        change: Change,
    },
    Configure(CollectionOptions),
    Count,
}

impl Hold {
    /// Whether an operation must go through [`Coll::park`].
    pub(super) fn is_on(&self) -> bool {
        self.on.load(Ordering::SeqCst)
    }

    /// Holds the engine: every operation from now on waits.
    pub(super) fn hold(&self) {
        let mut state = lock(&self.state);
        state.held = true;
        self.on.store(true, Ordering::SeqCst);
    }

    /// Runs what waited, in order, and those that arrive meanwhile behind
    /// them; then lets operations run at once again. Does nothing unless
    /// held, or while another release runs. A waker that panics as it is
    /// answered is raised once all is run.
    pub(super) fn release(&self) {
        {
            let mut state = lock(&self.state);
            if !state.held || state.draining {
                return;
            }
            state.draining = true;
        }
        let mut panicked = None;
        loop {
            let next = {
                let mut state = lock(&self.state);
                match state.queue.pop_front() {
                    Some(parked) => parked,
                    None => {
                        state.held = false;
                        state.draining = false;
                        state.prune_at = 0;
                        self.on.store(false, Ordering::SeqCst);
                        break;
                    }
                }
            };
            // Nothing in an operation panics but a waker (caught in
            // `deliver`); should anything else, the hold still ends.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                next.run(&mut panicked);
            }));
            if let Err(payload) = ran {
                panicked.get_or_insert(payload);
            }
        }
        raise(panicked);
    }

    /// Ends the hold and fails what waits with a "stopped" error, the first
    /// panic of a waker left in `panicked`.
    pub(super) fn close(&self, panicked: &mut Option<Panic>) {
        let queue = {
            let mut state = lock(&self.state);
            state.held = false;
            self.on.store(false, Ordering::SeqCst);
            std::mem::take(&mut state.queue)
        };
        for parked in queue {
            parked.coll.core.cancel(parked.timeout);
            deliver(parked.answer, Err(parked.coll.stopped()), panicked);
        }
    }

    /// An acquire's timeout ran out while it waited in the hold.
    pub(super) fn timed_out(&self, waiter: u64) {
        let parked = {
            let mut state = lock(&self.state);
            let i = state.queue.iter().position(|p| p.id == waiter);
            i.and_then(|i| state.queue.remove(i))
        };
        if let Some(parked) = parked {
            let mut panicked = None;
            deliver(parked.answer, Ok(Outcome::NotGranted), &mut panicked);
            raise(panicked);
        }
    }

    /// How many operations wait.
    #[cfg(test)]
    pub(super) fn parked(&self) -> usize {
        lock(&self.state).queue.len()
    }
}

impl State {
    /// Drops the operations whose callers left, with their timers, once
    /// the queue has doubled since the last time.
    fn prune(&mut self) {
        if self.queue.len() < self.prune_at.max(MIN_PRUNE) {
            return;
        }
        self.queue.retain(|p| {
            let keep = matches!(p.call, Call::Release { .. }) || !p.answer.is_closed();
            if !keep {
                p.coll.core.cancel(p.timeout);
            }
            keep
        });
        self.prune_at = self.queue.len() * 2;
    }
}

impl Coll {
    /// Runs `call` now, or, while the engine is held, queues it.
    pub(super) fn park(&self, call: Call) -> Reply {
        let mut state = lock(&self.core.hold.state);
        if !state.held || self.core.is_closed() {
            drop(state);
            return self.run_now(call);
        }
        let mut wait_for = None;
        if let Call::Op {
            op: Op::Acquire { wait, .. },
            ..
        } = &call
        {
            match *wait {
                Wait::No => return Reply::Ready(Ok(Outcome::NotGranted)),
                Wait::For(d) if d.is_zero() => return Reply::Ready(Ok(Outcome::NotGranted)),
                Wait::For(d) => wait_for = Some(d),
                Wait::Forever => {}
            }
        }
        state.prune();
        if state.queue.len() >= MAX_PARKED {
            return Reply::Ready(Err(Error::full(format!(
                "{MAX_PARKED} operations already wait for the store to arrive from the process \
                 this one takes over from (collection {:?})",
                self.name
            ))));
        }
        let (answer, rx) = oneshot::channel();
        let id = self.core.next_id();
        let deadline = wait_for.map(deadline::from_now);
        let timeout = deadline.map(|at| {
            self.core
                .schedule(at, self.arc(), TimerKind::HoldTimeout { waiter: id })
        });
        state.queue.push_back(Parked {
            id,
            coll: self.arc(),
            call,
            answer,
            deadline,
            timeout,
        });
        Reply::Later(rx)
    }

    /// Runs `call` as if there were no hold.
    fn run_now(&self, call: Call) -> Reply {
        match call {
            Call::Op { owner, key, op } => self.op_now(owner, &key, op),
            Call::Release { key, token, change } => {
                let mut panicked = None;
                let result = self.release_now(&key, token, change, &mut panicked);
                raise(panicked);
                Reply::Ready(result)
            }
            Call::Configure(options) => Reply::Ready(self.configure_now(&options)),
            Call::Count => Reply::Ready(self.count_now()),
        }
    }
}

impl Parked {
    /// Runs an operation that waited, as the hold is released.
    fn run(self, panicked: &mut Option<Panic>) {
        let Parked {
            coll,
            call,
            answer,
            deadline,
            timeout,
            ..
        } = self;
        coll.core.cancel(timeout);
        let result = match call {
            Call::Release { key, token, change } => coll.release_now(&key, token, change, panicked),
            _ if answer.is_closed() => return,
            Call::Op { owner, key, mut op } => {
                if let (Op::Acquire { wait, .. }, Some(at)) = (&mut op, deadline) {
                    *wait = Wait::For(at.saturating_duration_since(Instant::now()));
                }
                match coll.run_op(owner, &key, op, answer) {
                    Ran::Now(result, answer) => {
                        deliver(answer, result, panicked);
                    }
                    Ran::Waits(()) => {}
                }
                return;
            }
            Call::Configure(options) => coll.configure_now(&options),
            Call::Count => coll.count_now(),
        };
        deliver(answer, result, panicked);
    }
}
