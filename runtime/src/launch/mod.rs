//! Starting a cluster: [`Builder::start`] and [`Builder::run`] wire the
//! supervisor, the control server and (under `run`) the signal handlers
//! together. The one module that sees all three; nothing imports it.

mod signals;

use std::future::Future;

use forkless_worker::rt::Errors as _;
use forkless_worker::{Error, Worker};

use crate::config::body::{erase, BodyResult};
use crate::{Builder, Cluster, Report};

impl Builder {
    /// Starts the cluster, and blocks until it stops.
    ///
    /// `body` is called once per generation of each worker, on that worker's
    /// thread, inside its runtime; the future it returns need not be `Send`.
    ///
    /// `run` owns the process's signals while it runs: SIGINT and SIGTERM
    /// stop the cluster gracefully (a second one terminates it), SIGHUP
    /// rolls a restart ([`Cluster::restart`]), SIGTTIN and SIGTTOU add and
    /// remove a worker ([`Cluster::resize`]), as gunicorn does. Once `run`
    /// returns, SIGINT, SIGTERM and SIGHUP end the process again, as by
    /// default.
    ///
    /// `FORKLESS_*` environment variables override the builder's values
    /// (see [`start`](Builder::start)).
    ///
    /// Returns the [`Report`] of how every generation ended.
    ///
    /// # Errors
    ///
    /// As [`start`](Builder::start), and when the signal handlers cannot be
    /// installed.
    pub fn run<F, Fut>(self, body: F) -> Result<Report, Error>
    where
        F: Fn(Worker) -> Fut + Send + Sync + 'static,
        Fut: Future + 'static,
        Fut::Output: BodyResult,
    {
        // Handlers first: a signal sent as soon as the workers listen (a
        // supervisor's reload, say) must reach the cluster, not end the
        // process with the default action.
        let prepared = signals::prepare()
            .map_err(|e| Error::spawn("cannot install the signal handlers", e))?;
        let (cluster, control) = match self.launch(body, true) {
            Ok(launched) => launched,
            Err(e) => {
                prepared.abandon();
                return Err(e);
            }
        };
        let signals = match prepared.serve(cluster.clone()) {
            Ok(handle) => handle,
            Err(e) => {
                cluster.terminate();
                cluster.join();
                return Err(Error::spawn("cannot install the signal handlers", e));
            }
        };
        let report = cluster.join();
        signals.uninstall();
        if let Some(control) = control {
            // The control server's last answers go out before the process
            // can exit.
            let _ = control.join();
        }
        Ok(report)
    }

    /// Starts the cluster and returns a handle to it at once, for services
    /// that embed a cluster. Installs no signal handlers:
    /// [`Cluster::shutdown`] and [`Cluster::join`] end it.
    ///
    /// Returns once every first worker's thread is running. Dropping every
    /// `Cluster` handle does not stop the cluster (like dropping a
    /// `JoinHandle`): call [`Cluster::shutdown`].
    ///
    /// Operators override the builder's values with environment variables,
    /// read here: `FORKLESS_WORKERS`, `FORKLESS_PIN_CORES`,
    /// `FORKLESS_BACKLOG`, `FORKLESS_SHUTDOWN_TIMEOUT`,
    /// `FORKLESS_TERMINATE_TIMEOUT`, `FORKLESS_THROTTLE_DELAY`,
    /// `FORKLESS_MAX_BACKOFF`, `FORKLESS_MAX_RESTARTS`, `FORKLESS_RESTART`
    /// (`always`, `on-failure`, `never`), `FORKLESS_NAME`,
    /// `FORKLESS_INBOX_CAPACITY`, `FORKLESS_REQUEST_TIMEOUT`,
    /// `FORKLESS_READY_TIMEOUT`, `FORKLESS_STALL_TIMEOUT`,
    /// `FORKLESS_TASK_PANIC` (`isolate`, `crash-worker`),
    /// `FORKLESS_NOTIFY_SYSTEMD`. Durations read like `"500ms"` or `"1m 30s"`.
    ///
    /// # Errors
    ///
    /// A value out of range (`workers(0)`), or a `FORKLESS_*` variable
    /// whose value is bad (the error names both), a build with `panic = "abort"`
    /// (panics could not be caught, so one panicking worker would end the
    /// process), or a thread that cannot be spawned.
    pub fn start<F, Fut>(self, body: F) -> Result<Cluster, Error>
    where
        F: Fn(Worker) -> Fut + Send + Sync + 'static,
        Fut: Future + 'static,
        Fut::Output: BodyResult,
    {
        self.launch(body, false).map(|(cluster, _)| cluster)
    }

    fn launch<F, Fut>(
        self,
        body: F,
        owns_process: bool,
    ) -> Result<(Cluster, Option<crate::control::ControlThread>), Error>
    where
        F: Fn(Worker) -> Fut + Send + Sync + 'static,
        Fut: Future + 'static,
        Fut::Output: BodyResult,
    {
        check_panic_strategy(cfg!(panic = "abort"))?;
        let mut this = crate::config::env::from_process(self)?;
        this.check()?;
        // Decided before the supervisor starts: in an upgrade's new process,
        // the control sockets inherited from the old one close at once when
        // this build runs no control server.
        this.control.enabled = Some(this.control.enabled.unwrap_or(owns_process));
        let control = this.control.clone();
        let cluster = crate::supervisor::start(this, erase(body))?;
        let mut thread = None;
        if control.enabled == Some(true) {
            match crate::control::start(&cluster, &control) {
                Ok(None) => {}
                Ok(Some((path, tcp, handle))) => {
                    *cluster
                        .shared
                        .control
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((path, tcp));
                    thread = Some(handle);
                }
                Err(e) => {
                    cluster.terminate();
                    cluster.join();
                    return Err(e);
                }
            }
        }
        Ok((cluster, thread))
    }
}

/// Refuses a build whose panics abort the process: supervision would be a lie.
fn check_panic_strategy(aborts: bool) -> Result<(), Error> {
    if aborts {
        return Err(Error::config(
            "this binary is built with `panic = \"abort\"`: a panicking worker would end \
             the whole process, so forkless cannot supervise it; build with \
             `panic = \"unwind\"` (the default)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_abort_is_refused_with_a_reason() {
        let err = check_panic_strategy(true).expect_err("refused");
        assert!(err.is_config());
        assert!(err.to_string().contains("panic = \"abort\""), "{err}");
        assert!(check_panic_strategy(false).is_ok());
    }
}
