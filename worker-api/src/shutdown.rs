use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::watch;

/// A future that resolves when the worker is asked to stop.
///
/// Returned by [`Worker::shutdown_signal`](crate::Worker::shutdown_signal).
/// It is `Send + 'static`, so it can be handed to hyper's or axum's graceful
/// shutdown, or moved into a spawned task. It also resolves if the cluster's
/// master is gone.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct ShutdownSignal {
    inner: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl ShutdownSignal {
    pub(crate) fn new(mut rx: watch::Receiver<bool>) -> ShutdownSignal {
        ShutdownSignal {
            inner: Box::pin(async move {
                // An error means the sender is gone: the master will not run
                // this worker any more, which is a stop too.
                let _ = rx.wait_for(|stop| *stop).await;
            }),
        }
    }
}

impl Future for ShutdownSignal {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for ShutdownSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownSignal").finish_non_exhaustive()
    }
}
