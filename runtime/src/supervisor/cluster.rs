use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use forkless_worker::rt::Errors as _;
use forkless_worker::{Bus, Error, Store};

use super::report::Report;
use super::shared::{Msg, Shared};
use crate::config::builder::Builder;
use crate::config::MAX_WORKERS;
use crate::observe::events::{Events, Status, WorkerState};
use crate::observe::metrics::{active_connections, Figures};

/// A handle to a running cluster: cheap to clone, `Send + Sync`, usable from
/// sync and async code.
///
/// Each method sends a command to the cluster's master thread and returns at
/// once; [`join`](Cluster::join) and [`stopped`](Cluster::stopped) wait for
/// the end.
///
/// # Examples
///
/// ```no_run
/// use forkless_runtime::Cluster;
///
/// let cluster = Cluster::builder()
///     .workers(2)
///     .start(|worker| async move {
///         worker.shutdown_signal().await;
///     })?;
/// // ... the service runs ...
/// cluster.shutdown();
/// let report = cluster.join();
/// assert_eq!(report.slots.len(), 2);
/// # Ok::<(), forkless_worker::Error>(())
/// ```
#[derive(Clone)]
pub struct Cluster {
    pub(crate) shared: Arc<Shared>,
}

impl Cluster {
    /// A [`Builder`] with every default.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The cluster's shared [`Store`], the same one its workers reach with
    /// [`Worker::store`](forkless_worker::Worker::store).
    ///
    /// Use it from async code, or from a plain thread through
    /// [`Collection::blocking`](forkless_worker::Collection::blocking). Locks
    /// taken through this handle are not tied to a worker: they are released
    /// by `release`, by drop, or by their lease. Once the cluster has
    /// stopped, every operation fails with [`Error::is_stopped`].
    ///
    /// ```no_run
    /// # fn f(cluster: forkless_runtime::Cluster) -> Result<(), forkless_worker::Error> {
    /// let settings = cluster.store().collection("settings").blocking();
    /// settings.set("maintenance", "off")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn store(&self) -> Store {
        forkless_worker::rt::store_handle(self.shared.store_backend.clone(), None)
    }

    /// The cluster's message [`Bus`], the same one its workers reach with
    /// [`Worker::bus`](forkless_worker::Worker::bus). Messages sent through
    /// this handle have no sender slot
    /// ([`Envelope::from`](forkless_worker::Envelope::from) is `None`).
    ///
    /// Its methods are `async`; they need no particular runtime, and request
    /// timeouts are kept by the cluster's timer thread. Once the cluster has
    /// stopped, every call fails with [`Error::is_stopped`].
    ///
    /// ```no_run
    /// # async fn f(cluster: forkless_runtime::Cluster) -> Result<(), forkless_worker::Error> {
    /// let answer = cluster.bus().request(0, "ping").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn bus(&self) -> Bus {
        forkless_worker::rt::bus_handle(self.shared.bus_backend.clone(), None)
    }

    /// The cluster's events: what its supervisor did, from its start (the
    /// last 1024) and as it happens, until [`Event::Stopped`](crate::Event::Stopped).
    ///
    /// ```no_run
    /// # fn f(cluster: forkless_runtime::Cluster) {
    /// let mut events = cluster.events();
    /// while let Some(event) = events.blocking_recv() {
    ///     println!("{event:?}");
    /// }
    /// # }
    /// ```
    pub fn events(&self) -> Events {
        self.shared.events.subscribe()
    }

    /// A snapshot of every slot: generation, state, restarts, last exit, and
    /// its worker's figures (connections accepted, tasks, busy ratio, loop
    /// lag, from tokio's runtime metrics and a heartbeat); and whether the
    /// store's and the bus's Redis, if they use one, answers.
    pub fn status(&self) -> Status {
        let view = self.shared.view.load_full();
        let mut status = view.status(&self.shared.name);
        if self.is_stopped() {
            // Whatever the master published last, nothing runs now.
            let mut view = crate::observe::events::View::clone(&view);
            view.mark_stopped();
            status = view.status(&self.shared.name);
        }
        status.uptime = self.shared.epoch.elapsed();
        let engines = [
            ("store", self.shared.store.health()),
            ("bus", self.shared.bus.health()),
        ];
        status.backends = engines
            .into_iter()
            .filter_map(|(name, health)| {
                health.map(|h| crate::BackendStatus {
                    name,
                    kind: "redis",
                    reachable: h.reachable,
                    failures: h.failures,
                })
            })
            .collect();
        status
    }

    /// The cluster's metrics in Prometheus' text format (OpenMetrics): per
    /// worker, generation, uptime, restarts, recycles by reason, exits by
    /// kind, accepted connections, alive tasks, busy ratio, stalls, task
    /// panics, a histogram of event-loop lag, and its heap bytes when
    /// [`Counting`](crate::Counting) is the global allocator; for the cluster, its size and uptime,
    /// established connections on its ports, store operations and lock
    /// waits, bus messages, whether a Redis backend answers and how many of
    /// its commands failed, and the process's resident memory and CPU time.
    /// The control socket serves it as `GET /metrics`.
    pub fn metrics(&self) -> String {
        let (store_ops, store_lock_waits) = self.shared.store.counts();
        let ports = self.shared.registry().ports();
        let figures = Figures {
            active_connections: active_connections(&ports),
            store_ops,
            store_lock_waits,
            bus_messages: self.shared.bus.messages(),
            store_health: self.shared.store.health(),
            bus_health: self.shared.bus.health(),
            runtime_panics: self.shared.faults.counts(),
        };
        self.shared.metrics.scrape(&self.status(), figures)
    }

    /// Where the control server listens: its Unix socket, and its TCP
    /// address if one was asked for. `None` when it does not run.
    pub fn control_address(&self) -> Option<(std::path::PathBuf, Option<SocketAddr>)> {
        self.shared
            .control
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Restarts every worker, one slot at a time, without dropping a
    /// connection: each slot's next generation starts on the same core and
    /// socket, and its old generation is asked to stop only once the new one
    /// is ready. A new generation that exits, or is not ready within
    /// `ready_timeout`, stops the roll; the old one serves on. SIGHUP does
    /// this when [`Builder::run`] owns the signals.
    ///
    /// Returns at once; follow it with [`events`](Cluster::events). A call
    /// while a roll runs is merged into it.
    ///
    /// # Errors
    ///
    /// [`Error::is_stopped`] once the cluster is stopping.
    pub fn restart(&self) -> Result<(), Error> {
        self.check_running("restart")?;
        let _ = self.shared.tx.send(Msg::Restart);
        Ok(())
    }

    /// Grows or shrinks the cluster to `workers` slots. New slots start like
    /// the first ones; the highest slots retire on a shrink: their workers
    /// are asked to stop, and a surviving worker accepts from their
    /// sockets, so no connection the kernel queued there is lost. SIGTTIN and
    /// SIGTTOU add and remove one when [`Builder::run`] owns the signals.
    ///
    /// # Errors
    ///
    /// [`Error::is_config`] for 0 (use [`shutdown`](Cluster::shutdown)) or
    /// more than 4096; [`Error::is_stopped`] once the cluster is stopping.
    pub fn resize(&self, workers: usize) -> Result<(), Error> {
        if workers == 0 {
            return Err(Error::config(
                "resize(0): a cluster needs at least one worker; use shutdown() to stop it",
            ));
        }
        if workers > MAX_WORKERS {
            return Err(Error::config(format!(
                "resize({workers}): at most {MAX_WORKERS} workers"
            )));
        }
        self.check_running("resize")?;
        let _ = self.shared.tx.send(Msg::Resize(workers));
        Ok(())
    }

    /// Recycles slot `slot`'s worker now (see [`Recycle`](crate::Recycle)):
    /// its next generation starts beside it, and it is asked to stop once
    /// that one is ready; [`Event::Recycled`](crate::Event::Recycled) with
    /// [`RecycleReason::Requested`](crate::RecycleReason::Requested) says
    /// when. It waits for a rolling restart or another recycle under way, and
    /// for the worker to be ready. `forkless-ctl recycle SLOT` and
    /// `POST /recycle` do this.
    ///
    /// Returns at once; follow it with [`events`](Cluster::events).
    ///
    /// # Errors
    ///
    /// [`Error::is_config`] for a slot the cluster does not have (or one
    /// that has ended or gave up); [`Error::is_stopped`] once the cluster
    /// is stopping.
    pub fn recycle(&self, slot: usize) -> Result<(), Error> {
        self.check_running("recycle")?;
        let status = self.status();
        match status.workers.get(slot) {
            None => {
                return Err(Error::config(format!(
                    "recycle({slot}): the cluster has slots 0 to {}",
                    status.size.saturating_sub(1)
                )))
            }
            Some(w) if matches!(w.state, WorkerState::GaveUp | WorkerState::Stopped) => {
                return Err(Error::config(format!(
                    "recycle({slot}): the slot does not serve ({})",
                    w.state
                )))
            }
            Some(_) => {}
        }
        let _ = self.shared.tx.send(Msg::Recycle(slot));
        Ok(())
    }

    fn check_running(&self, what: &str) -> Result<(), Error> {
        if self.shared.stopping.load(Ordering::Acquire) || self.is_stopped() {
            return Err(Error::stopped(what));
        }
        Ok(())
    }

    /// Stops the cluster gracefully: every worker's
    /// [`shutdown_signal`](forkless_worker::Worker::shutdown_signal) resolves
    /// and its listeners stop handing out connections; workers still running
    /// after `shutdown_timeout` are terminated. No worker is respawned.
    ///
    /// Returns at once; [`join`](Cluster::join) waits for the end. Calling it
    /// again, or after the cluster stopped, does nothing more.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        let _ = self.shared.tx.send(Msg::Shutdown);
    }

    /// Stops the cluster now: every worker's future and runtime is dropped
    /// (tasks are cancelled at their next `.await`), and a thread that has
    /// not returned after `terminate_timeout` is reported
    /// [`Exit::Hung`](crate::Exit::Hung) and abandoned.
    pub fn terminate(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        let _ = self.shared.tx.send(Msg::Terminate);
    }

    /// Blocks until the cluster has stopped, and returns its report.
    ///
    /// # Panics
    ///
    /// When called from a worker of this same cluster, which would wait
    /// forever: the cluster cannot stop while one of its workers is blocked.
    /// From a worker, await [`stopped`](Cluster::stopped) instead.
    #[track_caller]
    pub fn join(&self) -> Report {
        self.assert_not_own_worker("join");
        let mut done = self
            .shared
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(report) = done.as_ref() {
                return report.clone();
            }
            done = self
                .shared
                .done_cv
                .wait(done)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Like [`join`](Cluster::join), with a limit: `None` if the cluster has
    /// not stopped within `timeout`.
    ///
    /// # Panics
    ///
    /// As [`join`](Cluster::join), when called from one of this cluster's
    /// workers.
    #[track_caller]
    pub fn join_timeout(&self, timeout: Duration) -> Option<Report> {
        self.assert_not_own_worker("join_timeout");
        let done = self
            .shared
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (done, _) = self
            .shared
            .done_cv
            .wait_timeout_while(done, timeout, |done| done.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        done.clone()
    }

    /// Waits, without blocking a thread, until the cluster has stopped, and
    /// returns its report.
    pub async fn stopped(&self) -> Report {
        let mut rx = self.shared.done_tx.subscribe();
        let report = rx
            .wait_for(Option::is_some)
            .await
            .map(|r| r.clone())
            .ok()
            .flatten();
        match report {
            Some(report) => report,
            // The sender lives in `shared`, which we hold.
            None => self.join(),
        }
    }

    #[track_caller]
    fn assert_not_own_worker(&self, method: &str) {
        let shared = Arc::as_ptr(&self.shared) as usize;
        assert!(
            crate::current::cluster() != Some(shared),
            "Cluster::{method} called from one of the cluster's own workers would wait \
             forever (the cluster cannot stop while its worker is blocked); \
             await `Cluster::stopped` instead"
        );
    }

    /// Returns true once the cluster has stopped.
    pub fn is_stopped(&self) -> bool {
        self.shared.done_tx.borrow().is_some()
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.shared.name)
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_tells_the_truth_after_the_master_thread_died() {
        let cluster = Cluster::builder()
            .workers(2)
            .pin_cores(false)
            .start(|worker| async move {
                worker.ready();
                worker.shutdown_signal().await;
            })
            .expect("start");
        let mut events = cluster.events();
        let mut ready = 0;
        while ready < 2 {
            match events.blocking_recv() {
                Some(crate::Event::WorkerReady { .. }) => ready += 1,
                Some(_) => {}
                None => panic!("stopped early"),
            }
        }
        assert!(!cluster.status().stopping);
        let _ = cluster.shared.tx.send(Msg::PanicOutsideGuard);
        let report = cluster
            .join_timeout(Duration::from_secs(60))
            .expect("the cluster ends when its master dies");
        assert!(report.slots.is_empty());
        let status = cluster.status();
        assert!(status.stopping, "{status:?}");
        assert!(
            status
                .workers
                .iter()
                .all(|w| w.state == crate::WorkerState::Stopped),
            "{status:?}"
        );
        assert!(cluster.restart().is_err_and(|e| e.is_stopped()));
    }
}
