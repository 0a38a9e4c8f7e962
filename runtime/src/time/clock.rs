//! One timer thread per cluster, `forkless-timers`, for what must happen at a
//! deadline outside any worker's runtime: store lock leases, acquire
//! timeouts, expiry sweeps, and the timeouts of bus requests made from
//! threads without a tokio timer.
//!
//! Timers are kept by deadline; one that ends early is cancelled, so the map
//! holds only timers that can still fire. A timer's action runs on the timer
//! thread and must be short; one that panics is caught and counted (see
//! [`guard`](crate::fault::guard)), and the thread goes on with the next.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::fault::guard::Faults;

/// A timer's deadline and a unique id: what [`Clock::cancel`] takes.
pub(crate) type TimerKey = (Instant, u64);

type Action = Box<dyn FnOnce() + Send>;

pub(crate) struct Clock {
    state: Mutex<State>,
    changed: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
    faults: Arc<Faults>,
}

#[derive(Default)]
struct State {
    due: BTreeMap<TimerKey, Action>,
    next_id: u64,
    stop: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Actions run outside the lock, so a panic cannot leave it half-changed.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Clock {
    /// Starts the timer thread.
    pub(crate) fn start(faults: Arc<Faults>) -> std::io::Result<Arc<Clock>> {
        let clock = Arc::new(Clock {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            thread: Mutex::new(None),
            faults,
        });
        let thread = {
            let clock = clock.clone();
            std::thread::Builder::new()
                .name("forkless-timers".into())
                .spawn(move || clock.run())?
        };
        *lock(&clock.thread) = Some(thread);
        Ok(clock)
    }

    /// Runs `action` on the timer thread at `at` (at once if `at` has
    /// passed), unless cancelled first or the clock stops. Make `at` with
    /// [`deadline::after`](crate::time::deadline::after), which cannot overflow.
    pub(crate) fn schedule(&self, at: Instant, action: impl FnOnce() + Send + 'static) -> TimerKey {
        let mut state = lock(&self.state);
        state.next_id += 1;
        let key = (at, state.next_id);
        if state.stop {
            return key;
        }
        let earliest = state.due.first_key_value().is_none_or(|(k, _)| key < *k);
        state.due.insert(key, Box::new(action));
        drop(state);
        if earliest {
            self.changed.notify_one();
        }
        key
    }

    /// Cancels a timer that has not fired. Cancelling one that fired, or
    /// `None`, does nothing.
    pub(crate) fn cancel(&self, key: Option<TimerKey>) {
        if let Some(key) = key {
            let action = lock(&self.state).due.remove(&key);
            // Dropped outside the lock: it may own what a timer action needs.
            drop(action);
        }
    }

    /// How many timers wait to fire.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        lock(&self.state).due.len()
    }

    /// Stops the thread; pending timers never fire.
    pub(crate) fn stop(&self) {
        let dropped = {
            let mut state = lock(&self.state);
            state.stop = true;
            std::mem::take(&mut state.due)
        };
        drop(dropped);
        self.changed.notify_all();
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }

    fn run(&self) {
        let mut state = lock(&self.state);
        loop {
            if state.stop {
                return;
            }
            let now = Instant::now();
            match state.due.first_key_value() {
                None => {
                    state = self
                        .changed
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                Some(((at, _), _)) if *at <= now => {
                    let due = state.due.pop_first();
                    drop(state);
                    if let Some((_, action)) = due {
                        self.faults.caught("forkless-timers", "a timer", action);
                    }
                    state = lock(&self.state);
                }
                Some(((at, _), _)) => {
                    let wait = at.saturating_duration_since(now);
                    state = self
                        .changed
                        .wait_timeout(state, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn timers_fire_in_deadline_order_and_cancelled_ones_never() {
        let clock = Clock::start(Faults::new()).expect("clock");
        let (tx, rx) = mpsc::channel();
        let now = Instant::now();
        for (i, ms) in [(2, 30u64), (1, 10), (3, 50)] {
            let tx = tx.clone();
            clock.schedule(now + Duration::from_millis(ms), move || {
                tx.send(i).expect("test alive")
            });
        }
        let tx2 = tx.clone();
        let cancelled = clock.schedule(now + Duration::from_millis(20), move || {
            tx2.send(0).expect("test alive")
        });
        clock.cancel(Some(cancelled));
        let got: Vec<i32> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(60)).expect("fired"))
            .collect();
        assert_eq!(got, [1, 2, 3]);
        assert_eq!(clock.pending(), 0);
        clock.stop();
        assert!(lock(&clock.thread).is_none(), "joined");
        // After stop, nothing is kept.
        clock.schedule(Instant::now(), move || tx.send(9).expect("test alive"));
        assert_eq!(clock.pending(), 0);
    }

    #[test]
    fn a_panicking_timer_is_counted_and_the_next_ones_still_fire() {
        let faults = Faults::new();
        let clock = Clock::start(faults.clone()).expect("clock");
        let (tx, rx) = mpsc::channel();
        let now = Instant::now();
        clock.schedule(now, || panic!("a timer action broke"));
        clock.schedule(now + Duration::from_millis(5), move || {
            tx.send(1).expect("test alive")
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)), Ok(1));
        assert_eq!(faults.counts(), vec![("forkless-timers", 1)]);
        // A deadline that overflows `Instant` is "never", not a panic.
        let never = clock.schedule(crate::time::deadline::from_now(Duration::MAX), || {});
        assert_eq!(clock.pending(), 1);
        clock.cancel(Some(never));
        clock.stop();
    }
}
