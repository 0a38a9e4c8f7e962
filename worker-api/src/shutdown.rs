use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tokio::sync::watch;

/// A future that resolves when the worker is asked to stop.
///
/// Returned by [`Worker::shutdown_signal`](crate::Worker::shutdown_signal).
/// It is `Send + 'static`, so it can be handed to hyper's or axum's graceful
/// shutdown, or moved into a spawned task. It also resolves if the cluster's
/// master is gone.
///
/// Polling it again costs a comparison and an atomic load, not a lock: a
/// server that selects on it beside each connection pays nothing per
/// request for it.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct ShutdownSignal {
    inner: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The waker the inner future holds, once it has been polled: it marks
    /// `woken` and wakes the task.
    armed: Option<Arc<Armed>>,
}

struct Armed {
    woken: AtomicBool,
    task: Waker,
}

impl Wake for Armed {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl ShutdownSignal {
    pub(crate) fn new(mut rx: watch::Receiver<bool>) -> ShutdownSignal {
        ShutdownSignal {
            inner: Box::pin(async move {
                // An error means the sender is gone: the master will not run
                // this worker any more, which is a stop too.
                let _ = rx.wait_for(|stop| *stop).await;
            }),
            armed: None,
        }
    }
}

impl Future for ShutdownSignal {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // The inner future waits on the same task, and nothing woke it: it
        // would answer Pending again (its wait takes a lock to look).
        if let Some(armed) = &self.armed {
            if !armed.woken.load(Ordering::Acquire) && armed.task.will_wake(cx.waker()) {
                return Poll::Pending;
            }
        }
        let armed = Arc::new(Armed {
            woken: AtomicBool::new(false),
            task: cx.waker().clone(),
        });
        let waker = Waker::from(armed.clone());
        let this = &mut *self;
        match this.inner.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(()) => {
                this.armed = None;
                Poll::Ready(())
            }
            Poll::Pending => {
                this.armed = Some(armed);
                Poll::Pending
            }
        }
    }
}

impl fmt::Debug for ShutdownSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownSignal").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its wakes.
    struct Count(std::sync::atomic::AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn it_resolves_on_stop_and_when_the_sender_is_gone_whatever_polls_came_before() {
        for drop_sender in [false, true] {
            let (tx, rx) = watch::channel(false);
            let mut signal = ShutdownSignal::new(rx);
            let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
            let waker = Waker::from(count.clone());
            let mut cx = Context::from_waker(&waker);
            for _ in 0..3 {
                assert!(Pin::new(&mut signal).poll(&mut cx).is_pending());
            }
            // Another task polls it now: it must hold that task's waker.
            let other = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
            let other_waker = Waker::from(other.clone());
            assert!(Pin::new(&mut signal)
                .poll(&mut Context::from_waker(&other_waker))
                .is_pending());
            if drop_sender {
                drop(tx);
            } else {
                tx.send(true).expect("send");
            }
            assert_eq!(
                other.0.load(Ordering::SeqCst),
                1,
                "the newest poller is woken"
            );
            assert!(Pin::new(&mut signal)
                .poll(&mut Context::from_waker(&other_waker))
                .is_ready());
        }
    }
}
