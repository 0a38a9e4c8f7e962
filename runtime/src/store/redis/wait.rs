//! Waiting for a locked key on Redis: a pause that doubles, cut short by a
//! release made here or published by another host, and this host's
//! subscriptions to the lock keys its waiters wait on.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::redis::Follow;

use super::{lock, Core, RColl};

/// The longest pause between two looks at a locked key. A release wakes
/// the waiters sooner (it publishes on the lock's key, which hosts with
/// waiters subscribe to); only a lease that runs out publishes nothing.
const MAX_POLL: Duration = Duration::from_millis(100);

/// An operation waiting for a locked key. It looks again after a release
/// (made here, or published by another host) or after a pause that doubles
/// from 1 ms up to [`MAX_POLL`].
pub(super) struct Waiter {
    released: watch::Receiver<u64>,
    _watching: Watching,
    pause: Duration,
}

impl Waiter {
    /// Returns after the next release, or the pause (at most `limit`).
    pub(super) async fn wait(&mut self, limit: Option<Duration>) {
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
}

impl RColl {
    /// Starts waiting for `key`'s lock: counts the wait, and listens to the
    /// key's releases.
    pub(super) fn waiter(&self, key: &str) -> Waiter {
        self.core.waits.fetch_add(1, Ordering::Relaxed);
        Waiter {
            released: self.core.released.subscribe(),
            _watching: self.core.watch(self.lock_key(key)),
            pause: Duration::from_millis(1),
        }
    }
}
