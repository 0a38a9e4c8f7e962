use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use forkless_worker::Worker;

/// What a worker body may return: `()` or `Result<(), E>` with a displayable
/// `E`. An `Err` ends the generation as [`Exit::Failed`](crate::Exit::Failed)
/// with the error's message. Sealed: those two are the only ones.
pub trait BodyResult: sealed::Sealed {
    /// `Ok` for a normal return, `Err` with the message for a failure.
    fn into_result(self) -> Result<(), String>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for () {}
    impl<E: std::fmt::Display> Sealed for Result<(), E> {}
}

impl BodyResult for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: fmt::Display> BodyResult for Result<(), E> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

pub(crate) type LocalBoxFuture = Pin<Box<dyn Future<Output = Result<(), String>>>>;

/// The body, with its future type erased. The future is made, run and dropped
/// on the worker's own thread, so it need not be `Send`.
pub(crate) type Factory = Arc<dyn Fn(Worker) -> LocalBoxFuture + Send + Sync>;

pub(crate) fn erase<F, Fut>(body: F) -> Factory
where
    F: Fn(Worker) -> Fut + Send + Sync + 'static,
    Fut: Future + 'static,
    Fut::Output: BodyResult,
{
    Arc::new(move |worker| {
        let fut = body(worker);
        Box::pin(async move { fut.await.into_result() })
    })
}
