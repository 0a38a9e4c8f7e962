//! The master thread: owns the slots, spawns each generation, classifies its
//! exit, throttles respawns, rolls restarts, resizes, watches for stalls,
//! and runs the stop sequence. It never runs user code.
//!
//! A slot has at most one *current* generation (the one serving), during a
//! rolling restart one *candidate* (the next one, not yet ready), and any
//! number of *draining* ones (asked to stop, finishing their work). All of
//! them share the slot's sockets, so a connection queued there is served by
//! whichever accepts it.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use forkless_worker::rt::Errors as _;
use forkless_worker::Error;

use super::plan::{Roll, Step};
use super::slot::{Service, Slot};
use crate::config::body::Factory;
use crate::config::builder::Builder;
use crate::fault::exit::install_panic_hook;
use crate::observe::events::{Event, SlotView, View, WorkerState};
use crate::supervisor::cluster::Cluster;
use crate::supervisor::report::{Report, SlotReport};
use crate::supervisor::shared::{Msg, Shared};
use crate::supervisor::systemd::Systemd;
use crate::time::deadline::after;

/// Starts the master thread and, through it, every slot's first worker.
pub(crate) fn start(builder: Builder, factory: Factory) -> Result<Cluster, Error> {
    let cores = if builder.pin_cores {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        if cores.is_empty() {
            tracing::warn!("cannot read this process's CPU affinity; workers will not be pinned");
        }
        cores.into_iter().map(|c| c.id).collect()
    } else {
        Vec::new()
    };
    let size = match builder.workers {
        Some(n) => n,
        None if !cores.is_empty() => cores.len(),
        None => thread::available_parallelism().map_or(1, |n| n.get()),
    };
    install_panic_hook();
    let steer_to = steering(&builder, &cores);

    let (tx, rx) = crossbeam_channel::unbounded();
    let inherited = super::handover::inherited()?;
    let shared = Arc::new(Shared::new(&builder, size, steer_to, tx, inherited)?);
    let slots = (0..size)
        .map(|index| Slot::new(index, core_for(&cores, index)))
        .collect();
    let systemd = Systemd::new(builder.notify_systemd);
    let now = Instant::now();
    let mut master = Master {
        config: builder,
        shared: shared.clone(),
        factory,
        rx,
        cores,
        slots,
        size,
        phase: Phase::Running,
        roll: None,
        step: None,
        last_recycled: size.saturating_sub(1),
        systemd,
        announced_ready: false,
        next_check: now,
        next_ping: now,
    };

    let (init_tx, init_rx) = crossbeam_channel::bounded(1);
    thread::Builder::new()
        .name("forkless-master".to_owned())
        .spawn(move || {
            let shared = master.shared.clone();
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                let started = master.start_all();
                let failed = started.is_err();
                let _ = init_tx.send(started);
                if failed {
                    master.begin_stop(false);
                }
                master.run();
            }));
            if ran.is_err() {
                // A bug in the master. Its slots are gone with it, and with
                // them every worker's stop sender: the workers see a stop.
                // Unblock whoever waits for the end.
                tracing::error!(name = %shared.name, "the master thread panicked; the cluster stops");
                // Status tells the truth from now on: nothing runs.
                shared.view.rcu(|view| {
                    let mut view = View::clone(view);
                    view.mark_stopped();
                    view
                });
                shared.registry().close_all();
                shared.finish(Report {
                    name: shared.name.clone(),
                    slots: Vec::new(),
                });
                // Readers of the events end, as after any stop.
                shared.faults.caught("forkless-master", "the last event", || {
                    shared.events.emit(Event::Stopped)
                });
            }
        })
        .map_err(|e| {
            shared.store.close();
            shared.bus.close(false);
            shared.clock.stop();
            Error::spawn("cannot spawn the master thread", e)
        })?;
    match init_rx.recv() {
        Ok(Ok(())) => {
            tracing::info!(name = %shared.name, workers = size, "cluster started");
            Ok(Cluster { shared })
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::spawn(
            "the master thread ended during start-up",
            std::io::Error::other("master thread panicked"),
        )),
    }
}

/// Slot `i`'s core: the `i`-th allowed core, wrapping around.
pub(super) fn core_for(cores: &[usize], index: usize) -> Option<usize> {
    (!cores.is_empty()).then(|| cores[index % cores.len()])
}

/// The cores the listener registry steers each slot's connections to
/// ([`Builder::incoming_cpu`]): the pinned cores, or none.
fn steering(builder: &Builder, cores: &[usize]) -> Vec<usize> {
    if !builder.incoming_cpu || cores.is_empty() {
        return Vec::new();
    }
    match crate::net::steering::supported() {
        Some(true) => {}
        Some(false) => tracing::warn!(
            "incoming_cpu: this kernel is older than Linux 6.2, whose reuseport groups ignore \
             SO_INCOMING_CPU unless the distribution backported the fix (kernel commit \
             b261eda84ec1); without it, connections are spread by the kernel's hash"
        ),
        None => tracing::debug!("incoming_cpu: cannot read the kernel's release"),
    }
    cores.to_vec()
}

pub(super) struct Master {
    pub(super) config: Builder,
    pub(super) shared: Arc<Shared>,
    pub(super) factory: Factory,
    pub(super) rx: Receiver<Msg>,
    pub(super) cores: Vec<usize>,
    /// Every slot the cluster ever had; `0..size` are active, the rest
    /// retired by a shrink.
    pub(super) slots: Vec<Slot>,
    pub(super) size: usize,
    pub(super) phase: Phase,
    pub(super) roll: Option<Roll>,
    /// The one gated replacement (of a roll or a recycle) under way.
    pub(super) step: Option<Step>,
    /// The slot recycled last: the next check starts after it.
    pub(super) last_recycled: usize,
    pub(super) systemd: Systemd,
    pub(super) announced_ready: bool,
    /// When the stall watchdog looks next.
    pub(super) next_check: Instant,
    /// When systemd's watchdog is pinged next.
    pub(super) next_ping: Instant,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Phase {
    Running,
    /// Workers were asked to stop; terminate those left at `deadline`.
    Stopping {
        deadline: Instant,
    },
    /// Workers were terminated; abandon those left at `deadline`.
    Terminating {
        deadline: Instant,
    },
}

pub(super) fn micros(d: Duration) -> u64 {
    d.as_micros().try_into().unwrap_or(u64::MAX)
}

impl Master {
    /// Publishes the status first, so that whoever sees the event sees a
    /// status at least as new.
    ///
    /// Sending wakes every reader of `Cluster::events`, whose wakers are
    /// code of theirs: a panic there is caught, and the master goes on with
    /// what it was doing.
    pub(super) fn emit(&self, event: Event) {
        self.publish();
        self.shared
            .faults
            .caught("forkless-master", "waking the readers of events", || {
                self.shared.events.emit(event)
            });
    }

    pub(super) fn run(mut self) {
        while !self.finished() {
            let msg = match self.next_deadline() {
                Some(deadline) => match self.rx.recv_deadline(deadline) {
                    Ok(msg) => Some(msg),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match self.rx.recv() {
                    Ok(msg) => Some(msg),
                    Err(_) => break,
                },
            };
            #[cfg(test)]
            if matches!(msg, Some(Msg::PanicOutsideGuard)) {
                panic!("a test asked the master thread to die");
            }
            // A bug met while handling one message or timer (in the store's
            // clean-up after an exit, say) is caught, logged and counted:
            // the master goes on supervising.
            let faults = self.shared.faults.clone();
            if let Some(msg) = msg {
                faults.caught("forkless-master", "a supervisor message", || {
                    self.handle(msg)
                });
            }
            faults.caught("forkless-master", "the supervisor's timers", || {
                self.fire_timers()
            });
            self.publish();
        }
        self.shared.registry().close_all();
        let report = self.report();
        tracing::info!(name = %self.shared.name, restarts = report.restarts(), "cluster stopped");
        self.shared.finish(report);
        self.emit(Event::Stopped);
    }

    /// The cluster ends when no worker runs and none is due to.
    pub(super) fn finished(&self) -> bool {
        self.slots.iter().all(|s| {
            !s.has_workers() && (s.respawn_at.is_none() || !matches!(self.phase, Phase::Running))
        })
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Running => {
                let respawns = self.slots.iter().filter_map(|s| s.respawn_at);
                let drains = self
                    .slots
                    .iter()
                    .flat_map(|s| s.draining.iter().filter_map(|l| l.deadline.map(|d| d.0)));
                let roll = self.step.as_ref().map(|s| s.deadline);
                let ping = self.systemd.watchdog_interval().map(|_| self.next_ping);
                respawns
                    .chain(drains)
                    .chain(roll)
                    .chain(ping)
                    .chain(Some(self.next_check))
                    .min()
            }
            Phase::Stopping { deadline } | Phase::Terminating { deadline } => Some(deadline),
        }
    }

    pub(super) fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Exited {
                slot,
                generation,
                exit,
            } => self.exited(slot, generation, exit),
            Msg::Ready { slot, generation } => self.ready(slot, generation),
            Msg::TaskPanicked {
                slot,
                generation,
                message,
                location,
            } => {
                self.shared.metrics.task_panicked(slot);
                self.emit(Event::TaskPanicked {
                    slot,
                    generation,
                    message,
                    location,
                })
            }
            Msg::Restart => self.start_roll(),
            Msg::Resize(size) => self.resize(size),
            Msg::Recycle(slot) => self.request_recycle(slot),
            Msg::Shutdown => match self.phase {
                Phase::Running => self.begin_stop(false),
                // A second request while stopping: stop waiting.
                Phase::Stopping { .. } => self.begin_stop(true),
                Phase::Terminating { .. } => {}
            },
            Msg::Terminate => {
                if !matches!(self.phase, Phase::Terminating { .. }) {
                    self.begin_stop(true);
                }
            }
            #[cfg(test)]
            Msg::PanicOutsideGuard => {}
        }
    }

    pub(super) fn fire_timers(&mut self) {
        let now = Instant::now();
        match self.phase {
            Phase::Running => {
                for index in 0..self.slots.len() {
                    if self.slots[index].respawn_at.is_some_and(|at| at <= now) {
                        self.slots[index].respawn_at = None;
                        self.respawn(index);
                    }
                }
                self.drain_timers(now);
                self.replacement_timers(now);
                if now >= self.next_check {
                    self.watch_stalls();
                    self.check_recycles(now);
                    self.next_check = after(now, self.config.stall_timeout / 4);
                }
                self.ping_systemd(now);
            }
            Phase::Stopping { deadline } if deadline <= now => self.begin_stop(true),
            Phase::Terminating { deadline } if deadline <= now => self.abandon_hung(),
            Phase::Stopping { .. } | Phase::Terminating { .. } => {}
        }
    }

    /// Publishes the view that `Cluster::status` reads.
    pub(super) fn publish(&self) {
        let slots = self.slots[..self.size]
            .iter()
            .map(|s| {
                let live = s.current.as_ref();
                let state = if s.service == Service::GaveUp {
                    WorkerState::GaveUp
                } else if let Some(live) = live {
                    if live.stalled {
                        WorkerState::Stalled
                    } else if live.ready_after.is_some() {
                        WorkerState::Ready
                    } else {
                        WorkerState::Starting
                    }
                } else if s.respawn_at.is_some() && matches!(self.phase, Phase::Running) {
                    WorkerState::Restarting
                } else {
                    WorkerState::Stopped
                };
                SlotView {
                    slot: s.index,
                    generation: live.map_or(s.next_generation.saturating_sub(1), |l| l.generation),
                    core: s.core,
                    state,
                    started_at: live.map(|l| l.started_at),
                    restarts: s.restarts,
                    last_exit: s.last_exit.clone(),
                    recycles: s.recycles,
                    last_recycle: s.last_recycle.clone(),
                    stats: live.map(|l| l.stats.clone()),
                }
            })
            .collect();
        let view = View {
            size: self.size,
            rolling: self.roll.is_some(),
            stopping: !matches!(self.phase, Phase::Running),
            slots,
        };
        self.shared.view.store(std::sync::Arc::new(view));
    }

    pub(super) fn report(&self) -> Report {
        Report {
            name: self.shared.name.clone(),
            slots: self
                .slots
                .iter()
                .map(|s| SlotReport {
                    slot: s.index,
                    core: s.core,
                    started: s.next_generation,
                    generations: s.history.iter().cloned().collect(),
                    gave_up: s.service == Service::GaveUp,
                })
                .collect(),
        }
    }
}
