//! Fault isolation for the threads the runtime owns (master, timers,
//! control, signals, backend links): what such a thread runs on behalf of
//! others runs inside `catch_unwind`. A panic there is caught, logged, and
//! counted (`forkless_runtime_panics_total{thread}` in the metrics), and the
//! thread goes on with its next piece of work.

use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

thread_local! {
    /// The faults of the cluster being set up on this thread, for the parts
    /// (backend links) that start their own threads.
    static CURRENT: RefCell<Option<Arc<Faults>>> = const { RefCell::new(None) };
}

/// Runs `f` with `faults` as [`current`]: the cluster's start-up sets up its
/// engines inside this.
pub(crate) fn scope<R>(faults: &Arc<Faults>, f: impl FnOnce() -> R) -> R {
    let previous = CURRENT.with(|c| c.replace(Some(faults.clone())));
    let result = f();
    CURRENT.with(|c| *c.borrow_mut() = previous);
    result
}

/// The faults of the cluster being set up on this thread (a fresh, unshared
/// one outside [`scope`]).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn current() -> Arc<Faults> {
    CURRENT.with(|c| c.borrow().clone()).unwrap_or_default()
}

/// A future whose panic is caught, logged and counted: it then ends
/// (`None`), and the runtime that polls it goes on.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct Caught<F> {
    future: Pin<Box<F>>,
    faults: Arc<Faults>,
    thread: &'static str,
    what: &'static str,
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl<F: Future> Caught<F> {
    pub(crate) fn new(
        faults: Arc<Faults>,
        thread: &'static str,
        what: &'static str,
        future: F,
    ) -> Caught<F> {
        Caught {
            future: Box::pin(future),
            faults,
            thread,
            what,
        }
    }
}

impl<F: Future> Future for Caught<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        let this = self.get_mut();
        let future = &mut this.future;
        match panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Some(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => {
                this.faults.record(this.thread, this.what, &*payload);
                Poll::Ready(None)
            }
        }
    }
}

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
        let message = crate::fault::exit::message(payload);
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

    #[test]
    fn a_panicking_future_ends_and_is_counted() {
        let faults = Faults::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let fine = rt.block_on(Caught::new(faults.clone(), "t", "a task", async { 3 }));
        assert_eq!(fine, Some(3));
        let broke = rt.block_on(Caught::new(faults.clone(), "t", "a task", async {
            panic!("broke")
        }));
        assert_eq!(broke, None::<()>);
        assert_eq!(faults.total(), 1);
        assert!(scope(&faults, || Arc::ptr_eq(&current(), &faults)));
        assert!(!Arc::ptr_eq(&current(), &faults));
    }
}
