//! Polling a connection's futures again, inside the same task poll, when
//! they wake one another.
//!
//! hyper's client is two halves joined by channels: `SendRequest` hands the
//! request to the `Connection`, which hands back the answer and its body,
//! each hand-over a wake. Polled in one task, each wake would put the task
//! back in the runtime's queue for one more round; [`Inline::poll`] instead
//! polls again at once while the last round woke them, and forwards to the
//! task only the wakes that come from outside (the socket, the timer).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Not being polled: a wake goes to the task.
const IDLE: u8 = 0;
/// Being polled: a wake is noted, and the poll runs once more.
const POLLING: u8 = 1;
/// Being polled, and woken since the round began.
const WOKEN: u8 = 2;
/// Rounds in one task poll before the task yields to the others.
const MAX_ROUNDS: usize = 32;

struct State {
    flag: AtomicU8,
    /// The task's own waker, for wakes from outside a poll.
    task: Mutex<Option<Waker>>,
}

impl Wake for State {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self
            .flag
            .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return;
        }
        if self.flag.load(Ordering::Acquire) == WOKEN {
            return;
        }
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

/// One per connection (one allocation).
pub(crate) struct Inline {
    state: Arc<State>,
    waker: Waker,
}

impl Inline {
    pub(crate) fn new() -> Inline {
        let state = Arc::new(State {
            flag: AtomicU8::new(IDLE),
            task: Mutex::new(None),
        });
        let waker = Waker::from(Arc::clone(&state));
        Inline { state, waker }
    }

    /// Runs `round` (which polls the futures) until it is ready or a round
    /// ends without a wake. A wake during the round that ends ready is not
    /// passed on: the caller must poll all its futures again on its next
    /// call (the connection loops do, in the same task poll).
    pub(crate) fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        mut round: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        {
            let mut task = self.state.task.lock().unwrap_or_else(|e| e.into_inner());
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let mut inner = Context::from_waker(&self.waker);
        for _ in 0..MAX_ROUNDS {
            self.state.flag.store(POLLING, Ordering::Release);
            let result = round(&mut inner);
            if result.is_ready() {
                self.state.flag.store(IDLE, Ordering::Release);
                return result;
            }
            if self
                .state
                .flag
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
        }
        // Still waking itself: let the other tasks run first.
        self.state.flag.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_inside_a_round_poll_again_and_outside_reach_the_task() {
        let inline = Inline::new();
        let woken = Arc::new(Counter::default());
        let task = Waker::from(Arc::clone(&woken));
        let mut cx = Context::from_waker(&task);
        // A future that wakes itself twice before it is ready: three
        // rounds, in one poll, and the task is never woken.
        let mut rounds = 0;
        let result = inline.poll(&mut cx, |cx| {
            rounds += 1;
            if rounds < 3 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        });
        assert!(result.is_ready());
        assert_eq!(rounds, 3);
        assert_eq!(woken.count(), 0);
        // Pending without a wake: one round; a later wake (the socket's)
        // goes to the task.
        let mut kept = None;
        let result: Poll<()> = inline.poll(&mut cx, |cx| {
            kept = Some(cx.waker().clone());
            Poll::Pending
        });
        assert!(result.is_pending());
        kept.expect("waker").wake();
        assert_eq!(woken.count(), 1);
        // A future that never stops waking itself yields after MAX_ROUNDS,
        // waking the task so that it comes back.
        let mut rounds = 0;
        let result: Poll<()> = inline.poll(&mut cx, |cx| {
            rounds += 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        });
        assert!(result.is_pending());
        assert_eq!(rounds, MAX_ROUNDS);
        assert_eq!(woken.count(), 2);
    }

    #[derive(Default)]
    struct Counter(std::sync::atomic::AtomicUsize);

    impl Counter {
        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}
