use std::time::Duration;

use forkless_worker::rt::Errors as _;
use forkless_worker::Error;

use crate::config::Backend;
use crate::config::ControlConfig;

use super::policies::{Restart, TaskPanic};

/// Configures and starts a cluster. Made by [`Cluster::builder`](crate::Cluster::builder).
///
/// Every setter tells its default. Values are checked when the cluster
/// starts: [`run`](Builder::run) and [`start`](Builder::start) return an
/// error that names a value out of range.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use forkless_runtime::{Cluster, Restart};
///
/// let report = Cluster::builder()
///     .workers(4)
///     .shutdown_timeout(Duration::from_secs(10))
///     .restart(Restart::OnFailure)
///     .run(|worker| async move {
///         let listener = worker.listen("0.0.0.0:8080").await?;
///         while let Some(conn) = listener.accept().await {
///             let (_stream, _peer) = conn?;
///         }
///         Ok::<(), forkless_worker::Error>(())
///     })?;
/// println!("{report}");
/// # Ok::<(), forkless_worker::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a Builder starts nothing until `run` or `start` is called"]
pub struct Builder {
    pub(crate) workers: Option<usize>,
    pub(crate) pin_cores: bool,
    pub(crate) incoming_cpu: bool,
    pub(crate) backlog: u32,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) terminate_timeout: Duration,
    pub(crate) throttle_delay: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) max_restarts: u32,
    pub(crate) restart: Restart,
    pub(crate) name: String,
    pub(crate) inbox_capacity: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) ready_timeout: Duration,
    pub(crate) stall_timeout: Duration,
    pub(crate) task_panic: TaskPanic,
    pub(crate) notify_systemd: bool,
    pub(crate) control: ControlConfig,
    pub(crate) store_backend: Backend,
    pub(crate) bus_backend: Backend,
    /// What an upgrade starts; `None`: this program again, as it was started.
    pub(crate) upgrade_command: Option<(std::path::PathBuf, Vec<std::ffi::OsString>)>,
    pub(crate) recycle: super::recycle::Recycle,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder {
            workers: None,
            pin_cores: true,
            incoming_cpu: false,
            backlog: 1024,
            shutdown_timeout: Duration::from_secs(5),
            terminate_timeout: Duration::from_secs(5),
            throttle_delay: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
            max_restarts: 10,
            restart: Restart::Always,
            name: "forkless".to_owned(),
            inbox_capacity: 1024,
            request_timeout: Duration::from_secs(30),
            ready_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(2),
            task_panic: TaskPanic::Isolate,
            notify_systemd: true,
            control: ControlConfig::default(),
            store_backend: Backend::InProcess,
            bus_backend: Backend::InProcess,
            upgrade_command: None,
            recycle: super::recycle::Recycle::new(),
        }
    }
}

impl Builder {
    /// A builder with every default. Same as [`Cluster::builder`](crate::Cluster::builder).
    pub fn new() -> Builder {
        Builder::default()
    }

    /// How many workers (slots) to run.
    ///
    /// The default is the number of cores this process may run on (its CPU
    /// affinity mask, so `taskset -c 0,1 app` gives 2).
    ///
    /// 0 is refused when the cluster starts.
    pub fn workers(mut self, n: usize) -> Builder {
        self.workers = Some(n);
        self
    }

    /// Whether to pin each worker's thread to one core.
    ///
    /// The default is `true`: slot `i` is pinned to the `i`-th core of the
    /// process's affinity mask (wrapping around when there are more workers
    /// than cores), so `taskset -c 2,3 app` keeps every worker on cores 2
    /// and 3.
    pub fn pin_cores(mut self, pin: bool) -> Builder {
        self.pin_cores = pin;
        self
    }

    /// Whether to give each new connection to the worker pinned to the core
    /// that received it.
    ///
    /// Every slot's listening socket is marked with its worker's core
    /// (`SO_INCOMING_CPU`). When a connection arrives, Linux (6.2 or later)
    /// queues it on the socket of the worker on the core that handles the
    /// connection's packets, and falls back to its usual hash when no
    /// worker is on that core. The connection's packets and its worker then
    /// share a core, and no wake-up crosses cores. With the load generator
    /// on the server's own cores (2 workers and `wrk -t2 -c128` on 2 cores),
    /// it took forkless's p99 latency from 1.35x tokio multi-thread's to
    /// 0.69x, and its throughput from 170k to 269k requests/s (medians of 5
    /// rounds, BENCHMARKS.md).
    ///
    /// Turn it on when connections arrive spread over the workers' cores:
    /// a NIC with one receive queue per core and its interrupts spread over
    /// them (RSS; see `/proc/interrupts`), or RPS, or clients on the same
    /// machine (on loopback, the core that received a connection is the one
    /// the connecting thread ran on). Leave it off when they are not: with
    /// a single receive queue whose interrupts go to core 0, every new
    /// connection would go to core 0's worker.
    ///
    /// The default is `false`: the kernel hashes each connection to a slot.
    /// It needs pinned workers ([`pin_cores`](Builder::pin_cores)); asking
    /// for it with pinning off is refused when the cluster starts. On a
    /// kernel older than 6.2 it changes nothing unless the distribution
    /// backported the fix (kernel commit b261eda84ec1), and the cluster
    /// warns. Sockets inherited from systemd (one queue that every worker
    /// shares) are not steered. During an upgrade the two processes share
    /// their sockets, and with them the marks: once the old process has
    /// handed over, the new one's settings hold (a failed upgrade puts the
    /// old one's back).
    ///
    /// ```no_run
    /// # use forkless_runtime::Cluster;
    /// Cluster::builder()
    ///     .incoming_cpu(true)
    ///     .run(|worker| async move {
    ///         let listener = worker.listen("0.0.0.0:8080").await?;
    ///         while let Some(conn) = listener.accept().await {
    ///             let (_stream, _peer) = conn?;
    ///         }
    ///         Ok::<(), forkless_worker::Error>(())
    ///     })?;
    /// # Ok::<(), forkless_worker::Error>(())
    /// ```
    pub fn incoming_cpu(mut self, steer: bool) -> Builder {
        self.incoming_cpu = steer;
        self
    }

    /// The length of each listening socket's accept queue, as passed to
    /// `listen(2)`. The kernel caps it at `net.core.somaxconn`.
    ///
    /// The default is 1024.
    pub fn backlog(mut self, backlog: u32) -> Builder {
        self.backlog = backlog;
        self
    }

    /// How long a worker has, once asked to stop, to return by itself before
    /// it is terminated (its future and runtime dropped).
    ///
    /// The default is 5 seconds.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Builder {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long a terminated worker's thread has to return before it is
    /// reported [`Exit::Hung`](crate::Exit::Hung) and abandoned.
    ///
    /// The default is 5 seconds.
    pub fn terminate_timeout(mut self, timeout: Duration) -> Builder {
        self.terminate_timeout = timeout;
        self
    }

    /// A worker that exits after running less than this is a *quick
    /// failure*, and the k-th one in a row waits `throttle_delay * 2^(k-1)`
    /// (at most [`max_backoff`](Builder::max_backoff)) before its respawn. A
    /// worker that ran longer is respawned at once.
    ///
    /// The default is 2 seconds. `Duration::ZERO` turns throttling off.
    pub fn throttle_delay(mut self, delay: Duration) -> Builder {
        self.throttle_delay = delay;
        self
    }

    /// The longest wait before a throttled respawn.
    ///
    /// The default is 30 seconds.
    pub fn max_backoff(mut self, max: Duration) -> Builder {
        self.max_backoff = max;
        self
    }

    /// How many quick failures in a row a slot may have: at that many, the
    /// slot gives up, its sockets are closed, and the other slots serve on.
    ///
    /// The default is 10. 0 and 1 both give up at the first quick failure.
    pub fn max_restarts(mut self, n: u32) -> Builder {
        self.max_restarts = n;
        self
    }

    /// When a worker is started again after it exits.
    ///
    /// The default is [`Restart::Always`].
    pub fn restart(mut self, restart: Restart) -> Builder {
        self.restart = restart;
        self
    }

    /// The cluster's name, used in logs and the report.
    ///
    /// The default is `"forkless"`.
    pub fn name(mut self, name: impl Into<String>) -> Builder {
        self.name = name.into();
        self
    }

    /// How many messages each slot's bus inbox (and each topic
    /// subscription) holds; a sender waits while it is full.
    ///
    /// The default is 1024. 0 is refused when the cluster starts.
    pub fn inbox_capacity(mut self, capacity: usize) -> Builder {
        self.inbox_capacity = capacity;
        self
    }

    /// Where the cluster's [`Store`](forkless_worker::Store) keeps its
    /// data: [`Backend::InProcess`] (the default), or, with the `redis`
    /// feature, a Redis server shared by every host that points at it.
    ///
    /// With Redis, the cluster starts even if Redis is down (operations
    /// fail with [`Error::is_unavailable`] until it is back). See
    /// `RedisConfig` for what differs from the in-process store.
    pub fn store_backend(mut self, backend: impl Into<Backend>) -> Builder {
        self.store_backend = backend.into();
        self
    }

    /// Where the cluster's [`Bus`](forkless_worker::Bus) carries messages
    /// between hosts: [`Backend::InProcess`] (the default: this cluster's
    /// slots only), or, with the `redis` feature, a Redis server through
    /// which clusters on several hosts reach each other's slots
    /// ([`Bus::send_to`](forkless_worker::Bus::send_to)) and share topics.
    /// Messages between slots of one cluster never go through Redis.
    pub fn bus_backend(mut self, backend: impl Into<Backend>) -> Builder {
        self.bus_backend = backend.into();
        self
    }

    /// How long [`Bus::request`](forkless_worker::Bus::request) waits for a
    /// reply.
    ///
    /// The default is 30 seconds. Zero is refused when the cluster starts.
    pub fn request_timeout(mut self, timeout: Duration) -> Builder {
        self.request_timeout = timeout;
        self
    }

    /// How long a new generation has to become ready during a rolling
    /// restart (it listens, or calls `Worker::ready`) before the roll stops
    /// and the old generation serves on.
    ///
    /// The default is 30 seconds.
    pub fn ready_timeout(mut self, timeout: Duration) -> Builder {
        self.ready_timeout = timeout;
        self
    }

    /// How long a worker's event loop may go without turning (a blocking
    /// call in async code, a busy loop) before it is reported stalled:
    /// [`Event::Stalled`](crate::Event::Stalled), its status, an error log.
    ///
    /// The default is 2 seconds. Each worker runs a heartbeat task four
    /// times per `stall_timeout`.
    pub fn stall_timeout(mut self, timeout: Duration) -> Builder {
        self.stall_timeout = timeout;
        self
    }

    /// What a panic in a task spawned by a worker does.
    ///
    /// The default is [`TaskPanic::Isolate`].
    pub fn task_panic(mut self, policy: TaskPanic) -> Builder {
        self.task_panic = policy;
        self
    }

    /// Whether to send systemd readiness notifications (`READY=1` once every
    /// first worker is ready, `RELOADING=1` during a rolling restart,
    /// `STOPPING=1`, and `WATCHDOG=1` pings while no worker is stalled) when
    /// `NOTIFY_SOCKET` is set. Without it, nothing is sent either way.
    ///
    /// The default is `true`.
    pub fn notify_systemd(mut self, notify: bool) -> Builder {
        self.notify_systemd = notify;
        self
    }

    /// When a healthy worker is replaced anyway (after so many connections,
    /// or so long): see [`Recycle`](super::recycle::Recycle).
    ///
    /// The default recycles nothing.
    pub fn recycle(mut self, recycle: super::recycle::Recycle) -> Builder {
        self.recycle = recycle;
        self
    }

    /// What [`Cluster::upgrade`](crate::Cluster::upgrade) starts: `program`
    /// with `args`, in this process's environment and working directory.
    ///
    /// The default is this program again, with the arguments it was
    /// started with: the path it was started from (read when the cluster
    /// starts, so a new build put at the same path is what runs), not a
    /// copy of the running one.
    ///
    /// The new process takes over only if it is this process's direct
    /// child: a wrapper (`env`, a shell script) must `exec` the program,
    /// not fork it (a forked server would bind its own sockets and never
    /// report ready; the upgrade fails after `ready_timeout`). Only the
    /// first cluster the new process starts takes over; a cluster it starts
    /// later binds its own sockets.
    ///
    /// A new process that does not take over (it exits, is not ready within
    /// `ready_timeout`, cannot read this process's store, or this cluster
    /// stops first) gets `SIGTERM`, then `SIGKILL` after `shutdown_timeout`
    /// + `terminate_timeout` of this builder: the most its own graceful stop
    ///   takes, if it was built with the same values.
    ///
    /// ```no_run
    /// # use forkless_runtime::Cluster;
    /// let cluster = Cluster::builder()
    ///     // A wrapper that execs: the new process is still our child.
    ///     .upgrade_command("env", ["RUST_LOG=info", "/usr/local/bin/my-service"])
    ///     .start(|worker| async move { worker.shutdown_signal().await })?;
    /// # Ok::<(), forkless_worker::Error>(())
    /// ```
    pub fn upgrade_command<I, A>(
        mut self,
        program: impl Into<std::path::PathBuf>,
        args: I,
    ) -> Builder
    where
        I: IntoIterator<Item = A>,
        A: Into<std::ffi::OsString>,
    {
        self.upgrade_command = Some((program.into(), args.into_iter().map(Into::into).collect()));
        self
    }

    /// Whether to run the control server: HTTP/1.1 + JSON on a Unix socket
    /// (mode 0600) for `curl --unix-socket` and `forkless-ctl` (`GET
    /// /status`, `GET /events`, `POST /resize`, `POST /restart`, `POST
    /// /shutdown`, `GET /metrics`).
    ///
    /// The default is on for [`run`](Builder::run) and off for
    /// [`start`](Builder::start). The socket is
    /// [`default_control_socket`](crate::default_control_socket) of the
    /// cluster's name unless [`control_socket`](Builder::control_socket)
    /// says otherwise: `$XDG_RUNTIME_DIR/forkless-{name}.sock`, or else
    /// `{temp dir}/forkless-{uid}/forkless-{name}.sock`, in a directory the
    /// server creates with mode 0700 and uses only while it is a real
    /// directory (not a symbolic link) owned by this uid with no group or
    /// other permission bits. On that default path a problem does not stop
    /// the cluster: if another live cluster already answers there (two
    /// services that both keep the default name), the directory is not
    /// private, or something other than a stale socket of ours is in the
    /// way, this one starts anyway, without a control server, and logs an
    /// error. On an explicit `control_socket` path any such problem is a
    /// start-up error.
    ///
    /// Only processes of this uid or root reach the socket: its mode is
    /// 0600 from its creation, and every connection's peer credentials are
    /// checked (`SO_PEERCRED`); others are disconnected at once. At most 64
    /// connections are served at once per listener.
    ///
    /// In an upgrade's new process built with the control server off, the
    /// control sockets handed over by the old process are closed at start:
    /// once the old process exits, `forkless-ctl` is refused at once rather
    /// than left waiting.
    pub fn control(mut self, enabled: bool) -> Builder {
        self.control.enabled = Some(enabled);
        self
    }

    /// Runs the control server on the Unix socket at `path`, and turns it on.
    ///
    /// The socket file has mode 0600 from its creation (set before `bind`,
    /// so under any umask), and only peers of this process's uid or root
    /// are served (`SO_PEERCRED`). A file already at `path` is replaced only
    /// if it is a socket of this uid that no cluster answers on; anything
    /// else there (a regular file, a symbolic link, another user's socket,
    /// a live cluster) is left intact, and [`start`](Builder::start) /
    /// [`run`](Builder::run) fail with an error
    /// ([`Error::is_config`](forkless_worker::Error::is_config)) that names `path` and
    /// what is there. Choose a directory other users cannot write to.
    pub fn control_socket(mut self, path: impl Into<std::path::PathBuf>) -> Builder {
        self.control.enabled = Some(true);
        self.control.path = Some(path.into());
        self
    }

    /// Also serves the control API on TCP at `addr` (keep it on loopback),
    /// to clients that send `Authorization: Bearer <token>`; others get 401,
    /// and their connection is closed.
    /// Turns the control server on.
    ///
    /// A token shorter than 16 bytes is refused at start: the TCP listener
    /// never runs without a real token.
    ///
    /// In an upgrade the listener moves to the new process (one queue, no
    /// connection refused) when the new build asks for the same address
    /// (the same `addr`, or the address the old one bound); otherwise the
    /// new process closes it and binds its own.
    pub fn control_tcp(mut self, addr: std::net::SocketAddr, token: impl Into<String>) -> Builder {
        self.control.enabled = Some(true);
        self.control.tcp = Some((addr, token.into()));
        self
    }

    /// Refuses values out of range.
    pub(crate) fn check(&self) -> Result<(), Error> {
        for (what, d) in [
            ("shutdown_timeout", self.shutdown_timeout),
            ("terminate_timeout", self.terminate_timeout),
            ("throttle_delay", self.throttle_delay),
            ("max_backoff", self.max_backoff),
            ("request_timeout", self.request_timeout),
            ("ready_timeout", self.ready_timeout),
            ("stall_timeout", self.stall_timeout),
        ] {
            crate::time::deadline::check_option(what, d)?;
        }
        if self.workers == Some(0) {
            return Err(Error::config(
                "workers must be at least 1, got 0 (leave it unset to run one per core)",
            ));
        }
        if self.incoming_cpu && !self.pin_cores {
            return Err(Error::config(
                "incoming_cpu(true) (FORKLESS_INCOMING_CPU) needs pinned workers, but pin_cores is \
                 false (FORKLESS_PIN_CORES): steering gives a connection to the worker on the core \
                 that received it, and an unpinned worker has no core",
            ));
        }
        if self.inbox_capacity == 0 {
            return Err(Error::config("inbox_capacity must be at least 1, got 0"));
        }
        if self.inbox_capacity > MAX_INBOX_CAPACITY {
            return Err(Error::config(format!(
                "inbox_capacity must be at most {MAX_INBOX_CAPACITY}, got {}",
                self.inbox_capacity
            )));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::config("request_timeout must be more than zero"));
        }
        self.store_backend.check()?;
        self.bus_backend.check()?;
        if self.ready_timeout.is_zero() {
            return Err(Error::config("ready_timeout must be more than zero"));
        }
        if self.stall_timeout < Duration::from_millis(4) {
            return Err(Error::config(format!(
                "stall_timeout must be at least 4ms, got {:?}",
                self.stall_timeout
            )));
        }
        if let Some((addr, token)) = &self.control.tcp {
            if token.len() < 16 {
                return Err(Error::config(format!(
                    "control_tcp({addr}): the token must be at least 16 bytes; the TCP control \
                     listener never runs without a real one"
                )));
            }
        }
        if let Some((program, _)) = &self.upgrade_command {
            if program.as_os_str().is_empty() {
                return Err(Error::config(
                    "upgrade_command: the program must not be empty",
                ));
            }
        }
        self.recycle.check()?;
        if let Some(n) = self.workers.filter(|n| *n > super::MAX_WORKERS) {
            return Err(Error::config(format!(
                "workers must be at most {}, got {n}",
                super::MAX_WORKERS
            )));
        }
        Ok(())
    }
}

/// The largest inbox tokio's bounded channel takes.
const MAX_INBOX_CAPACITY: usize = usize::MAX >> 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values() {
        let b = Builder::default();
        assert_eq!(b.workers, None);
        assert!(b.pin_cores);
        assert!(!b.incoming_cpu);
        assert_eq!(b.backlog, 1024);
        assert_eq!(b.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(b.terminate_timeout, Duration::from_secs(5));
        assert_eq!(b.throttle_delay, Duration::from_secs(2));
        assert_eq!(b.max_backoff, Duration::from_secs(30));
        assert_eq!(b.max_restarts, 10);
        assert_eq!(b.inbox_capacity, 1024);
        assert_eq!(b.request_timeout, Duration::from_secs(30));
        assert_eq!(b.restart, Restart::Always);
    }

    #[test]
    fn durations_over_a_year_are_refused_by_name() {
        for (what, b) in [
            (
                "shutdown_timeout",
                Builder::new().shutdown_timeout(Duration::MAX),
            ),
            (
                "terminate_timeout",
                Builder::new().terminate_timeout(Duration::MAX),
            ),
            (
                "throttle_delay",
                Builder::new().throttle_delay(Duration::MAX),
            ),
            ("max_backoff", Builder::new().max_backoff(Duration::MAX)),
            (
                "request_timeout",
                Builder::new().request_timeout(Duration::MAX),
            ),
            ("ready_timeout", Builder::new().ready_timeout(Duration::MAX)),
            ("stall_timeout", Builder::new().stall_timeout(Duration::MAX)),
        ] {
            let e = b.check().expect_err(what);
            assert!(e.is_config() && e.to_string().contains(what), "{e}");
        }
        let year = crate::time::deadline::MAX_OPTION;
        Builder::new()
            .shutdown_timeout(year)
            .ready_timeout(year)
            .max_backoff(year)
            .check()
            .expect("a year is allowed");
    }

    #[test]
    fn steering_by_cpu_needs_pinned_workers() {
        let e = Builder::new()
            .pin_cores(false)
            .incoming_cpu(true)
            .check()
            .expect_err("unpinned");
        assert!(
            e.is_config() && e.to_string().contains("incoming_cpu"),
            "{e}"
        );
        Builder::new()
            .incoming_cpu(true)
            .check()
            .expect("pinned is the default");
        Builder::new()
            .pin_cores(false)
            .incoming_cpu(false)
            .check()
            .expect("off needs nothing");
    }
}
