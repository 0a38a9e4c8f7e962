//! The in-process store's timers, fired on the cluster's timer thread
//! ([`Clock`](crate::time::clock::Clock)): lock leases, acquire timeouts
//! (behind a key lock, or in the [`hold`](super::hold)), and the sweeps
//! that drop the expired keys nobody reads.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use forkless_worker::rt::store::Outcome;

use crate::store::checks::shorten;
use crate::time::clock::TimerKey;
use crate::time::deadline;

use super::locks::{raise, take_lock};
use super::{lock, Coll, Core, TimerKind};

/// The longest pause between two sweeps of a collection with expiry.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

impl Core {
    pub(super) fn schedule(&self, at: Instant, coll: Arc<Coll>, kind: TimerKind) -> TimerKey {
        self.clock.schedule(at, move || coll.fire(kind))
    }

    pub(super) fn cancel(&self, timer: Option<TimerKey>) {
        self.clock.cancel(timer);
    }
}

impl Coll {
    pub(super) fn fire(&self, kind: TimerKind) {
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
            TimerKind::HoldTimeout { waiter } => self.core.hold.timed_out(waiter),
            TimerKind::Sweep => self.sweep(),
        }
    }

    /// Drops the expired keys of every shard, and comes back later while the
    /// collection has expiry.
    pub(super) fn sweep(&self) {
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

    pub(super) fn schedule_sweep(&self, ttl: Duration) {
        let interval = (ttl / 2).clamp(Duration::from_millis(1), MAX_SWEEP_INTERVAL);
        self.core
            .schedule(deadline::from_now(interval), self.arc(), TimerKind::Sweep);
    }
}
