//! What the cluster's handles, its workers and its master share
//! ([`Shared`]: the engines, the registry, the events, the published view,
//! the end), the master's inbox ([`Msg`]), and the runtime's side of the
//! worker contract ([`Host`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

use crossbeam_channel::Sender;
use forkless_worker::rt::bus::BusBackend;
use forkless_worker::rt::host::{Host, Listening};
use forkless_worker::rt::store::StoreBackend;
use forkless_worker::rt::Errors as _;
use forkless_worker::rt::Owner;
use forkless_worker::Error;
use tokio::sync::watch;

use arc_swap::ArcSwap;

use super::report::Report;
use crate::bus::{start_bus, BusEngine, BusSettings};
use crate::config::builder::Builder;
use crate::fault::exit::Exit;
use crate::fault::guard::Faults;
use crate::net::registry::Registry;
use crate::observe::events::{Hub, View};
use crate::observe::metrics::Metrics;
use crate::store::{start_store, StoreEngine};
use crate::time::clock::Clock;

/// What the handles, the worker contexts and the master share.
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) tx: Sender<Msg>,
    pub(crate) registry: Mutex<Registry>,
    pub(crate) store: Arc<dyn StoreEngine>,
    pub(super) store_backend: Arc<dyn StoreBackend>,
    pub(crate) bus: Arc<dyn BusEngine>,
    pub(super) bus_backend: Arc<dyn BusBackend>,
    pub(crate) clock: Arc<Clock>,
    /// Panics caught on the runtime's own threads.
    pub(crate) faults: Arc<Faults>,
    pub(crate) events: Arc<Hub>,
    pub(crate) metrics: Metrics,
    /// Where the control server listens, once started.
    pub(crate) control: Mutex<Option<(std::path::PathBuf, Option<SocketAddr>)>>,
    /// The status the master publishes after each change: read by every
    /// `status()`, metrics scrape and control request, written only by the
    /// master, so readers take the latest without a lock or a copy.
    pub(crate) view: ArcSwap<View>,
    /// When the cluster started: heartbeats count from here.
    pub(crate) epoch: Instant,
    pub(crate) stopping: AtomicBool,
    /// What an upgrade starts and waits for.
    pub(crate) upgrade: super::handover::UpgradeConfig,
    /// Where an upgrade stands: the switch and the end of the cluster
    /// decide under this lock, so that a stop either cancels an upgrade
    /// before its switch or follows the switch.
    pub(crate) upgrade_gate: Mutex<Gate>,
    /// Signalled when the gate leaves [`Gate::Starting`].
    pub(crate) upgrade_settled: Condvar,
    /// After a switch: the new process's channel, to hand it the store.
    pub(crate) handover: Mutex<Option<std::os::unix::net::UnixStream>>,
    /// After a switch: the control socket is the new process's; it stays.
    pub(crate) handed_over: AtomicBool,
    /// In an upgrade's new process, until it is ready: the channel to the
    /// old one.
    pub(crate) upgrade_channel: Mutex<Option<std::os::unix::net::UnixStream>>,
    /// In an upgrade's new process, until the old one handed its store
    /// over: the control socket's path is still the old process's, so this
    /// one leaves it in place if it stops first (it failed).
    pub(crate) awaiting_switch: AtomicBool,
    /// In an upgrade's new process: the control socket it inherited, for
    /// the control server to serve on instead of binding one.
    pub(crate) control_inherited: Mutex<Option<std::os::fd::OwnedFd>>,
    /// In an upgrade's new process: the TCP control listener it inherited
    /// (kept only if its `control_tcp` asks for the same address).
    pub(crate) control_tcp_inherited: Mutex<Option<std::net::TcpListener>>,
    /// A duplicate of the control server's Unix socket, to hand to an
    /// upgrade's new process.
    pub(crate) control_fd: Mutex<Option<std::os::fd::OwnedFd>>,
    /// A duplicate of the control server's TCP listener with the address
    /// asked for, to hand to an upgrade's new process.
    pub(crate) control_tcp_fd: Mutex<Option<(SocketAddr, std::os::fd::OwnedFd)>>,
    pub(super) done: Mutex<Option<Report>>,
    pub(super) done_cv: Condvar,
    pub(super) done_tx: watch::Sender<Option<Report>>,
}

/// Where an upgrade stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// None under way.
    Idle,
    /// A new process is starting; it has not taken over.
    Starting,
    /// The new process took over: this cluster stops and hands it the
    /// store.
    Switched,
}

/// The master's inbox.
pub(crate) enum Msg {
    Exited {
        slot: usize,
        generation: u64,
        exit: Exit,
    },
    Ready {
        slot: usize,
        generation: u64,
    },
    /// A task spawned by a worker panicked (see `TaskPanic`).
    TaskPanicked {
        slot: usize,
        generation: u64,
        message: String,
        location: Option<String>,
    },
    Restart,
    Resize(usize),
    Recycle(usize),
    Shutdown,
    Terminate,
    /// Makes the master thread panic outside its guard, as a bug in the
    /// master itself would.
    #[cfg(test)]
    PanicOutsideGuard,
}

impl Shared {
    /// `inherited`: what an upgrade's old process handed this one.
    pub(crate) fn new(
        builder: &Builder,
        size: usize,
        steer_to: Vec<usize>,
        tx: Sender<Msg>,
        inherited: Option<super::handover::Inherited>,
    ) -> Result<Shared, Error> {
        let faults = Faults::new();
        let clock = Clock::start(faults.clone())
            .map_err(|e| Error::spawn("cannot spawn the timer thread", e))?;
        let store =
            crate::fault::guard::scope(&faults, || start_store(&builder.store_backend, &clock))
                .inspect_err(|_| clock.stop())?;
        let settings = BusSettings {
            size,
            capacity: builder.inbox_capacity,
            request_timeout: builder.request_timeout,
            name: builder.name.clone(),
        };
        let bus = crate::fault::guard::scope(&faults, || {
            start_bus(&builder.bus_backend, settings, &clock)
        })
        .inspect_err(|_| {
            store.engine.close();
            clock.stop();
        })?;
        let (name, backlog) = (builder.name.clone(), builder.backlog);
        let mut registry = Registry::new(backlog, steer_to);
        let (mut upgrade_channel, mut control_inherited, mut control_tcp_inherited) =
            (None, None, None);
        let awaiting_switch = inherited.is_some();
        if let Some(inherited) = inherited {
            // The old process's store comes once this one is ready; until
            // then every operation waits for it.
            store.engine.hold();
            registry.take_over(inherited.sockets, size);
            upgrade_channel = Some(inherited.channel);
            // The control sockets this build does not serve on close now,
            // before its workers are ready (and the old process stops): a
            // client is refused, not left waiting on a socket that nobody
            // accepts from.
            let control = &builder.control;
            if control.enabled == Some(false) {
                if inherited.control.is_some() || inherited.control_tcp.is_some() {
                    tracing::info!("this build runs no control server: the old process's control sockets close");
                }
            } else {
                control_inherited = inherited.control;
                control_tcp_inherited = match (inherited.control_tcp, &control.tcp) {
                    (Some((requested, listener)), Some((addr, _)))
                        if requested == *addr
                            || listener.local_addr().is_ok_and(|bound| bound == *addr) =>
                    {
                        Some(listener)
                    }
                    (Some((requested, _)), asked) => {
                        tracing::info!(%requested, asked = ?asked.as_ref().map(|(a, _)| a), "the old process's TCP control listener is not this build's: it closes");
                        None
                    }
                    (None, _) => None,
                };
            }
        }
        Ok(Shared {
            name,
            tx,
            registry: Mutex::new(registry),
            store: store.engine,
            store_backend: store.backend,
            bus: bus.engine,
            bus_backend: bus.backend,
            clock,
            faults,
            events: Hub::new(),
            metrics: Metrics::new(),
            control: Mutex::new(None),
            view: ArcSwap::from_pointee(View::default()),
            epoch: Instant::now(),
            stopping: AtomicBool::new(false),
            upgrade: super::handover::UpgradeConfig::of(builder),
            upgrade_gate: Mutex::new(Gate::Idle),
            upgrade_settled: Condvar::new(),
            handover: Mutex::new(None),
            handed_over: AtomicBool::new(false),
            upgrade_channel: Mutex::new(upgrade_channel),
            awaiting_switch: AtomicBool::new(awaiting_switch),
            control_inherited: Mutex::new(control_inherited),
            control_tcp_inherited: Mutex::new(control_tcp_inherited),
            control_fd: Mutex::new(None),
            control_tcp_fd: Mutex::new(None),
            done: Mutex::new(None),
            done_cv: Condvar::new(),
            done_tx: watch::channel(None).0,
        })
    }

    /// The upgrade's gate (nothing it guards can be left half-changed by a
    /// panic: each change is one assignment).
    pub(crate) fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.upgrade_gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the gate back to idle (an upgrade failed or was cancelled), and
    /// wakes the end of the cluster if it waits for that.
    pub(crate) fn upgrade_over(&self) {
        *self.gate() = Gate::Idle;
        self.upgrade_settled.notify_all();
    }

    /// Whether an upgrade switched to a new process: this one stops for it.
    pub(crate) fn switched(&self) -> bool {
        *self.gate() == Gate::Switched
    }

    /// The end of the cluster waits here for an upgrade under way: with
    /// `stopping` set, it is cancelled (its new process stopped) unless it
    /// switched already. Bounded by what the upgrade itself can take.
    fn settle_upgrade(&self) {
        let limit = self
            .upgrade
            .ready_timeout
            .saturating_add(self.upgrade.child_grace)
            .saturating_add(std::time::Duration::from_secs(10));
        let gate = self.gate();
        let (gate, timeout) = self
            .upgrade_settled
            .wait_timeout_while(gate, limit, |gate| *gate == Gate::Starting)
            .unwrap_or_else(PoisonError::into_inner);
        if timeout.timed_out() && *gate == Gate::Starting {
            tracing::error!(
                "the upgrade under way did not end in {limit:?}; this process stops without it"
            );
        }
    }

    pub(crate) fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // The registry holds no invariant that a panic could break halfway.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A generation has exited: the store and the bus take back what it held.
    ///
    /// Handing a lock on to its next waiter wakes that waiter's task, whose
    /// waker is code of theirs: a panic there is caught here, so that the
    /// master goes on with the exit (records it, respawns the slot).
    pub(crate) fn owner_exited(&self, slot: usize, generation: u64) {
        let what = "the clean-up after a worker's exit";
        self.faults.caught("forkless-master", what, || {
            self.store.owner_exited(slot, generation)
        });
        self.faults.caught("forkless-master", what, || {
            self.bus.owner_exited(Owner { slot, generation })
        });
    }

    /// A slot will not run again: a survivor accepts from its sockets (so
    /// nothing queued there is lost), and its inbox closes.
    pub(crate) fn slot_ended(&self, slot: usize, survivors: &[usize]) {
        self.registry().retire_slot(slot, survivors);
        // Closing the inbox fails the requests queued there, waking their
        // senders' wakers.
        self.faults
            .caught("forkless-master", "closing a slot's inbox", || {
                self.bus.close_slot(slot)
            });
    }

    /// The old process's end of an upgrade: hands the store to the new
    /// process, if an upgrade switched to one. Called once every worker has
    /// exited, so nothing mutates the store any more.
    fn hand_store(&self) {
        let channel = self
            .handover
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(channel) = channel else {
            return;
        };
        let snapshot = self.store.export();
        match super::handover::send_store(channel, snapshot.as_ref()) {
            Ok(()) => tracing::info!("the store was handed to the new process"),
            Err(e) => tracing::error!(error = %e, "cannot hand the store to the new process"),
        }
    }

    pub(crate) fn finish(&self, report: Report) {
        // An upgrade under way sees that the cluster stops, and is cancelled
        // (its new process stopped) unless it switched already: then the
        // store goes to the new process below.
        self.stopping.store(true, Ordering::Release);
        self.settle_upgrade();
        // The control socket goes before anyone learns that the cluster
        // stopped, so that a cluster started next can take the same path.
        let control = self
            .control
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some((path, _)) = control {
            // After an upgrade the socket is the new process's; in a new
            // process that stops before the switch, still the old one's.
            if !self.handed_over.load(Ordering::Acquire)
                && !self.awaiting_switch.load(Ordering::Acquire)
            {
                let _ = std::fs::remove_file(path);
            }
        }
        // The duplicates kept for an upgrade go: no upgrade comes now, and
        // an embedding process that keeps its `Cluster` handles must not
        // keep the control listeners open (clients would queue on them).
        drop(
            self.control_fd
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        drop(
            self.control_tcp_fd
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        // After an upgrade, the new process takes the store: nothing
        // mutates it any more (every worker has exited).
        self.faults
            .caught("forkless-master", "handing the store over", || {
                self.hand_store()
            });
        // Every worker is gone: what still waits on the store fails now.
        // Each step wakes waiters of the callers' own: a waker that panics
        // stops none of the steps after it.
        let thread = "forkless-master";
        self.faults
            .caught(thread, "closing the store", || self.store.close());
        self.faults.caught(thread, "closing the bus", || {
            self.bus.close(self.handed_over.load(Ordering::Acquire))
        });
        self.clock.stop();
        // Every way of asking "has it stopped?" says yes before anyone
        // waiting for the stop wakes up.
        self.stopping.store(true, Ordering::Release);
        *self.done.lock().unwrap_or_else(PoisonError::into_inner) = Some(report.clone());
        self.faults
            .caught(thread, "waking who awaits the stop", || {
                self.done_tx.send_replace(Some(report));
            });
        self.done_cv.notify_all();
    }
}

impl Host for Shared {
    fn listen(&self, slot: usize, addr: SocketAddr, shown: &str) -> Result<Listening, Error> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(Error::stopped(&format!("listen on {shown}")));
        }
        self.registry().listen(slot, addr, shown)
    }

    fn ready(&self, slot: usize, generation: u64) {
        let _ = self.tx.send(Msg::Ready { slot, generation });
    }

    fn store(&self) -> Arc<dyn StoreBackend> {
        self.store_backend.clone()
    }

    fn bus(&self) -> Arc<dyn BusBackend> {
        self.bus_backend.clone()
    }
}
