//! Waiting until the cluster serves: [`Cluster::ready`] and
//! [`Cluster::wait_ready`], for services that embed a cluster and must
//! know when connecting to it will be answered.

use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use forkless_worker::rt::Errors as _;
use forkless_worker::Error;

use super::cluster::Cluster;
use crate::observe::events::{Event, Events, WorkerState};
use crate::time::deadline::from_now;

impl Cluster {
    /// Resolves once every slot's current generation is ready (it listens,
    /// or called `Worker::ready`): from then on, its listeners accept.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), forkless_worker::Error> {
    /// let cluster = forkless_runtime::Cluster::builder().start(|worker| async move {
    ///     let listener = worker.listen("127.0.0.1:8080").await?;
    ///     while let Some(conn) = listener.accept().await {
    ///         drop(conn?);
    ///     }
    ///     Ok::<(), forkless_worker::Error>(())
    /// })?;
    /// cluster.ready().await?;
    /// // connect to 127.0.0.1:8080 now
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::is_not_ready`] as soon as a slot's worker exits (or its slot
    /// gives up) before every slot is ready, naming the slot and how it
    /// ended; [`Error::is_stopped`] if the cluster stops first.
    pub async fn ready(&self) -> Result<(), Error> {
        let mut events = self.shared.events.subscribe_from_now();
        loop {
            if let Some(done) = self.readiness() {
                return done;
            }
            match events.recv().await {
                None => return Err(Error::stopped("ready")),
                Some(event) => {
                    if let Some(e) = not_ready(&event) {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// [`ready`](Cluster::ready), blocking this thread for at most
    /// `timeout`.
    ///
    /// # Errors
    ///
    /// As `ready`, and [`Error::is_timeout`] when `timeout` passes first.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = from_now(timeout);
        let mut events: Events = self.shared.events.subscribe_from_now();
        loop {
            if let Some(done) = self.readiness() {
                return done;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(event) => {
                    if let Some(e) = not_ready(&event) {
                        return Err(e);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let waiting: Vec<String> = self
                        .status()
                        .workers
                        .iter()
                        .filter(|w| !is_ready(w.state))
                        .map(|w| format!("slot {} ({})", w.slot, w.state))
                        .collect();
                    return Err(Error::timeout(format!(
                        "not every slot was ready within {timeout:?}: {}",
                        waiting.join(", ")
                    )));
                }
                Err(RecvTimeoutError::Disconnected) => return Err(Error::stopped("wait_ready")),
            }
        }
    }

    /// `Some` once the wait is over: every slot ready, one gave up, or the
    /// cluster stops. The status is published before each event, so a
    /// change after the subscription is seen either here or as an event.
    fn readiness(&self) -> Option<Result<(), Error>> {
        let status = self.status();
        if status.stopping {
            return Some(Err(Error::stopped("ready")));
        }
        if let Some(w) = status
            .workers
            .iter()
            .find(|w| w.state == WorkerState::GaveUp)
        {
            return Some(Err(Error::not_ready(format!(
                "slot {} gave up before every slot was ready",
                w.slot
            ))));
        }
        status
            .workers
            .iter()
            .all(|w| is_ready(w.state))
            .then_some(Ok(()))
    }
}

/// Ready, or ready and then stalled (it accepts once its loop turns).
fn is_ready(state: WorkerState) -> bool {
    matches!(state, WorkerState::Ready | WorkerState::Stalled)
}

/// The error an event means while waiting for readiness, if any.
fn not_ready(event: &Event) -> Option<Error> {
    match event {
        Event::WorkerExited {
            slot,
            generation,
            exit,
            ..
        } => Some(Error::not_ready(format!(
            "slot {slot} (generation {generation}) ended before every slot was ready: {exit}"
        ))),
        Event::GaveUp { slot, failures } => Some(Error::not_ready(format!(
            "slot {slot} gave up after {failures} quick failures before every slot was ready"
        ))),
        Event::Stopping { .. } | Event::Stopped => Some(Error::stopped("ready")),
        _ => None,
    }
}
