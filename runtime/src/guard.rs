//! Fault isolation for the threads the runtime owns (master, timers,
//! control, signals, backend links): what such a thread runs on behalf of
//! others runs inside `catch_unwind`. A panic there is caught, logged, and
//! counted (`forkless_runtime_panics_total{thread}` in the metrics), and the
//! thread goes on with its next piece of work.

use std::any::Any;
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, PoisonError};

/// The panics caught on the runtime's own threads of one cluster, by thread.
#[derive(Default)]
pub(crate) struct Faults {
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl Faults {
    pub(crate) fn new() -> Arc<Faults> {
        Arc::new(Faults::default())
    }

    /// Runs `f`; a panic in it is caught, logged with `what` and counted
    /// for `thread`, and gives `None`.
    pub(crate) fn caught<R>(
        &self,
        thread: &'static str,
        what: &str,
        f: impl FnOnce() -> R,
    ) -> Option<R> {
        match panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => Some(r),
            Err(payload) => {
                self.record(thread, what, &*payload);
                None
            }
        }
    }

    /// Logs and counts a panic caught on `thread` while it ran `what`.
    pub(crate) fn record(&self, thread: &'static str, what: &str, payload: &(dyn Any + Send)) {
        let message = crate::exit::message(payload);
        tracing::error!(
            thread,
            %message,
            "a panic in {what} was caught; the thread goes on"
        );
        *self
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(thread)
            .or_default() += 1;
    }

    /// Caught panics so far, by thread.
    pub(crate) fn counts(&self) -> Vec<(&'static str, u64)> {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// All caught panics so far.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn total(&self) -> u64 {
        self.counts().iter().map(|(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_caught_and_counted_by_thread() {
        let faults = Faults::new();
        assert_eq!(faults.caught("timers", "a test", || 7), Some(7));
        assert_eq!(
            faults.caught("timers", "a test", || -> u8 { panic!("boom") }),
            None
        );
        assert_eq!(
            faults.caught("control", "a test", || -> u8 { panic!("boom") }),
            None
        );
        assert_eq!(faults.counts(), vec![("control", 1), ("timers", 1)]);
        assert_eq!(faults.total(), 2);
    }
}
