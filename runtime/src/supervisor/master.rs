//! The master thread: owns the slots, spawns each generation, classifies its
//! exit, throttles respawns, rolls restarts, resizes, watches for stalls,
//! and runs the stop sequence. It never runs user code.
//!
//! A slot has at most one *current* generation (the one serving), during a
//! rolling restart one *candidate* (the next one, not yet ready), and any
//! number of *draining* ones (asked to stop, finishing their work). All of
//! them share the slot's sockets, so a connection queued there is served by
//! whichever accepts it.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use forkless_worker::host::WorkerStats;
use forkless_worker::{Error, Worker};
use tokio::sync::{oneshot, watch};

use crate::config::body::Factory;
use crate::config::builder::{Builder, Restart};
use crate::fault::exit::{install_panic_hook, Exit};
use crate::observe::events::{Event, SlotView, View, WorkerState};
use crate::supervisor::cluster::Cluster;
use crate::supervisor::cluster::{GenerationReport, Msg, Report, Shared, SlotReport};
use crate::supervisor::systemd::Systemd;
use crate::supervisor::worker_thread::{Generation, Thread};
use crate::time::deadline::{after, from_now};

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

    let (tx, rx) = crossbeam_channel::unbounded();
    let shared = Arc::new(Shared::new(&builder, size, tx)?);
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
                shared
                    .view
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .mark_stopped();
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
            shared.bus.close();
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
fn core_for(cores: &[usize], index: usize) -> Option<usize> {
    (!cores.is_empty()).then(|| cores[index % cores.len()])
}

struct Master {
    config: Builder,
    shared: Arc<Shared>,
    factory: Factory,
    rx: Receiver<Msg>,
    cores: Vec<usize>,
    /// Every slot the cluster ever had; `0..size` are active, the rest
    /// retired by a shrink.
    slots: Vec<Slot>,
    size: usize,
    phase: Phase,
    roll: Option<Roll>,
    systemd: Systemd,
    announced_ready: bool,
    /// When the stall watchdog looks next.
    next_check: Instant,
    /// When systemd's watchdog is pinged next.
    next_ping: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
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

struct Slot {
    index: usize,
    core: Option<usize>,
    current: Option<Live>,
    candidate: Option<Live>,
    draining: Vec<Live>,
    next_generation: u64,
    quick_failures: u32,
    respawn_at: Option<Instant>,
    gave_up: bool,
    /// Its restart policy ended it.
    ended: bool,
    /// Retired by a shrink.
    retired: bool,
    restarts: u64,
    last_exit: Option<Exit>,
    history: VecDeque<GenerationReport>,
    /// The thread of a generation that returned, waiting to run the next.
    idle: Option<Thread>,
}

impl Slot {
    fn new(index: usize, core: Option<usize>) -> Slot {
        Slot {
            index,
            core,
            current: None,
            candidate: None,
            draining: Vec::new(),
            next_generation: 0,
            quick_failures: 0,
            respawn_at: None,
            gave_up: false,
            ended: false,
            retired: false,
            restarts: 0,
            last_exit: None,
            history: VecDeque::new(),
            idle: None,
        }
    }

    fn record(&mut self, generation: GenerationReport) {
        if self.history.len() == SlotReport::HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(generation);
    }

    /// Whether it serves (or will again after a throttled respawn).
    fn in_service(&self) -> bool {
        !self.gave_up && !self.ended && !self.retired
    }

    fn lives(&self) -> impl Iterator<Item = &Live> {
        self.current
            .iter()
            .chain(self.candidate.iter())
            .chain(self.draining.iter())
    }

    fn lives_mut(&mut self) -> impl Iterator<Item = &mut Live> {
        self.current
            .iter_mut()
            .chain(self.candidate.iter_mut())
            .chain(self.draining.iter_mut())
    }

    fn has_workers(&self) -> bool {
        self.current.is_some() || self.candidate.is_some() || !self.draining.is_empty()
    }

    /// Moves the current and candidate generations to the draining ones,
    /// asking them to stop.
    fn drain_all(&mut self, now: Instant, shutdown_timeout: Duration) {
        for mut live in self.current.take().into_iter().chain(self.candidate.take()) {
            live.ask_to_stop(now, shutdown_timeout);
            self.draining.push(live);
        }
    }
}

/// A running generation of a slot.
struct Live {
    generation: u64,
    started: Instant,
    started_at: SystemTime,
    /// Microseconds from the cluster's start, like heartbeats.
    started_micros: u64,
    ready_after: Option<Duration>,
    stop: watch::Sender<bool>,
    terminate: Option<oneshot::Sender<()>>,
    stats: Arc<WorkerStats>,
    stalled: bool,
    /// For a draining generation: when to terminate it, then abandon it.
    deadline: Option<(Instant, Stage)>,
    /// The thread it runs on, free again once it has returned.
    thread: Thread,
    /// Where a panic of a waker woken by its stop signal is counted.
    faults: Arc<crate::fault::guard::Faults>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Terminate,
    Abandon,
}

impl Live {
    /// Resolves its shutdown signal. That wakes the tasks that wait on it,
    /// whose wakers are code of theirs: a panic there is caught, and the
    /// master goes on.
    fn signal_stop(&self) {
        self.faults
            .caught("forkless-master", "waking a worker to stop", || {
                let _ = self.stop.send(true);
            });
    }

    fn ask_to_stop(&mut self, now: Instant, shutdown_timeout: Duration) {
        self.signal_stop();
        if self.deadline.is_none() {
            self.deadline = Some((after(now, shutdown_timeout), Stage::Terminate));
        }
    }

    fn terminate(&mut self, now: Instant, terminate_timeout: Duration) {
        self.signal_stop();
        if let Some(terminate) = self.terminate.take() {
            self.faults
                .caught("forkless-master", "terminating a worker", || {
                    let _ = terminate.send(());
                });
        }
        self.deadline = Some((after(now, terminate_timeout), Stage::Abandon));
    }
}

/// A rolling restart under way.
struct Roll {
    pending: VecDeque<usize>,
    step: Option<Step>,
    restarted: usize,
}

/// The slot being rolled: its candidate generation must be ready by
/// `deadline`.
struct Step {
    slot: usize,
    generation: u64,
    deadline: Instant,
}

/// Which generation of a slot a message is about.
enum Role {
    Current,
    Candidate,
    Draining,
}

impl Master {
    fn start_all(&mut self) -> Result<(), Error> {
        for index in 0..self.slots.len() {
            let live = self
                .spawn_live(index)
                .map_err(|e| Error::spawn(format!("cannot spawn worker {index}"), e))?;
            self.serve(index, live);
        }
        self.publish();
        Ok(())
    }

    /// Makes `live` the generation that serves the slot: from now on it
    /// reads the slot's inbox (a candidate that took the inbox before it was
    /// ready waited until now; one that fails never reads it).
    fn serve(&mut self, index: usize, live: Live) {
        let generation = live.generation;
        self.shared
            .faults
            .caught("forkless-master", "handing a slot's inbox on", || {
                self.shared.bus.serve(index, generation)
            });
        self.slots[index].current = Some(live);
    }

    /// Publishes the status first, so that whoever sees the event sees a
    /// status at least as new.
    ///
    /// Sending wakes every reader of `Cluster::events`, whose wakers are
    /// code of theirs: a panic there is caught, and the master goes on with
    /// what it was doing.
    fn emit(&self, event: Event) {
        self.publish();
        self.shared
            .faults
            .caught("forkless-master", "waking the readers of events", || {
                self.shared.events.emit(event)
            });
    }

    fn run(mut self) {
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
    fn finished(&self) -> bool {
        self.slots.iter().all(|s| {
            !s.has_workers() && (s.respawn_at.is_none() || !matches!(self.phase, Phase::Running))
        })
    }

    fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Running => {
                let respawns = self.slots.iter().filter_map(|s| s.respawn_at);
                let drains = self
                    .slots
                    .iter()
                    .flat_map(|s| s.draining.iter().filter_map(|l| l.deadline.map(|d| d.0)));
                let roll = self
                    .roll
                    .as_ref()
                    .and_then(|r| r.step.as_ref().map(|s| s.deadline));
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

    fn handle(&mut self, msg: Msg) {
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

    fn role(&self, index: usize, generation: u64) -> Option<Role> {
        let slot = self.slots.get(index)?;
        if slot
            .current
            .as_ref()
            .is_some_and(|l| l.generation == generation)
        {
            Some(Role::Current)
        } else if slot
            .candidate
            .as_ref()
            .is_some_and(|l| l.generation == generation)
        {
            Some(Role::Candidate)
        } else if slot.draining.iter().any(|l| l.generation == generation) {
            Some(Role::Draining)
        } else {
            None
        }
    }

    fn ready(&mut self, index: usize, generation: u64) {
        let Some(role) = self.role(index, generation) else {
            return;
        };
        let slot = &mut self.slots[index];
        let Some(live) = slot.lives_mut().find(|l| l.generation == generation) else {
            return;
        };
        if live.ready_after.is_some() {
            return;
        }
        let after = live.started.elapsed();
        live.ready_after = Some(after);
        tracing::debug!(slot = index, generation, ?after, "worker ready");
        self.emit(Event::WorkerReady {
            slot: index,
            generation,
            after,
        });
        let step_done = self
            .roll
            .as_ref()
            .and_then(|r| r.step.as_ref())
            .is_some_and(|s| s.slot == index && s.generation == generation);
        if step_done {
            if let Role::Candidate = role {
                // The new generation serves: only now is the old one asked
                // to stop.
                let now = Instant::now();
                let slot = &mut self.slots[index];
                if let Some(mut old) = slot.current.take() {
                    old.ask_to_stop(now, self.config.shutdown_timeout);
                    slot.draining.push(old);
                }
                if let Some(candidate) = slot.candidate.take() {
                    self.serve(index, candidate);
                }
            }
            if let Some(roll) = &mut self.roll {
                roll.restarted += 1;
                roll.step = None;
            }
            self.next_roll_step();
        }
        self.announce_ready();
    }

    /// `READY=1` once every first worker is ready.
    fn announce_ready(&mut self) {
        if self.announced_ready {
            return;
        }
        let all = self.slots[..self.size].iter().all(|s| {
            !s.in_service() || s.current.as_ref().is_some_and(|l| l.ready_after.is_some())
        });
        if all {
            self.announced_ready = true;
            self.systemd.ready(&format!("{} workers ready", self.size));
        }
    }

    fn exited(&mut self, index: usize, generation: u64, exit: Exit) {
        let Some(role) = self.role(index, generation) else {
            // A thread abandoned as hung finished after all.
            tracing::info!(slot = index, generation, %exit, "abandoned worker returned");
            return;
        };
        let slot = &mut self.slots[index];
        let live = match role {
            Role::Current => slot.current.take(),
            Role::Candidate => slot.candidate.take(),
            Role::Draining => {
                let i = slot
                    .draining
                    .iter()
                    .position(|l| l.generation == generation);
                i.map(|i| slot.draining.swap_remove(i))
            }
        };
        let Some(live) = live else {
            return;
        };
        let ran_for = live.started.elapsed();
        self.shared.owner_exited(index, generation);
        // Its thread has returned: it runs the slot's next generation (an
        // idle one left from before ends).
        if slot.in_service() && matches!(self.phase, Phase::Running) {
            slot.idle = Some(live.thread);
        }
        match &exit {
            Exit::Normal => tracing::info!(slot = index, generation, ?ran_for, "worker returned"),
            Exit::Failed(_) | Exit::Panicked { .. } => {
                tracing::error!(slot = index, generation, ?ran_for, %exit, "worker failed")
            }
            _ => tracing::warn!(slot = index, generation, ?ran_for, %exit, "worker exited"),
        }
        slot.record(GenerationReport {
            generation,
            exit: exit.clone(),
            ran_for,
            ready_after: live.ready_after,
            restart_delay: None,
        });
        slot.last_exit = Some(exit.clone());
        self.shared.metrics.exited(index, &exit);
        self.emit(Event::WorkerExited {
            slot: index,
            generation,
            exit: exit.clone(),
            ran_for,
        });
        match role {
            Role::Current => {
                let slot = &mut self.slots[index];
                if let Some(candidate) = slot.candidate.take() {
                    // Mid-roll: the new generation takes over at once.
                    self.serve(index, candidate);
                    return;
                }
                if matches!(self.phase, Phase::Running) && slot.in_service() {
                    self.after_exit(index, &exit, ran_for < self.config.throttle_delay);
                }
            }
            Role::Candidate => {
                let reason = format!("it exited before it was ready: {exit}");
                self.roll_failed(index, generation, reason);
            }
            Role::Draining => {}
        }
    }

    /// The slots that accept for a retired or failed one.
    fn survivors(&self, except: usize) -> Vec<usize> {
        self.slots[..self.size]
            .iter()
            .filter(|s| s.index != except && s.in_service())
            .map(|s| s.index)
            .collect()
    }

    /// Decides whether and when the slot runs again.
    fn after_exit(&mut self, index: usize, exit: &Exit, quick: bool) {
        let policy = Policy::of(&self.config);
        let slot = &mut self.slots[index];
        let decision = decide(&policy, exit, quick, slot.quick_failures);
        let delay = match decision {
            Decision::End => {
                tracing::info!(
                    slot = index,
                    "slot ends: restart policy {:?}",
                    policy.restart
                );
                slot.ended = true;
                slot.idle = None;
                let survivors = self.survivors(index);
                self.shared.slot_ended(index, &survivors);
                return;
            }
            Decision::GiveUp { failures } => {
                tracing::error!(
                    slot = index,
                    failures,
                    "slot gave up after {failures} quick failures in a row; the other slots serve on",
                );
                slot.quick_failures = failures;
                slot.gave_up = true;
                slot.idle = None;
                let survivors = self.survivors(index);
                self.shared.slot_ended(index, &survivors);
                self.emit(Event::GaveUp {
                    slot: index,
                    failures,
                });
                return;
            }
            Decision::Respawn {
                delay,
                quick_failures,
            } => {
                slot.quick_failures = quick_failures;
                delay
            }
        };
        if let Some(last) = slot.history.back_mut() {
            last.restart_delay = Some(delay);
        }
        self.emit(Event::Restarting { slot: index, delay });
        if delay.is_zero() {
            self.respawn(index);
        } else {
            tracing::warn!(slot = index, ?delay, "respawn throttled");
            self.slots[index].respawn_at = Some(from_now(delay));
        }
    }

    fn respawn(&mut self, index: usize) {
        self.slots[index].restarts += 1;
        self.shared.metrics.restarted(index);
        match self.spawn_live(index) {
            Ok(live) => self.serve(index, live),
            Err(e) => {
                let slot = &mut self.slots[index];
                let generation = slot.next_generation - 1;
                let exit = Exit::Failed(format!("cannot spawn the worker thread: {e}"));
                tracing::error!(slot = index, generation, %exit, "worker failed");
                slot.record(GenerationReport {
                    generation,
                    exit: exit.clone(),
                    ran_for: Duration::ZERO,
                    ready_after: None,
                    restart_delay: None,
                });
                slot.last_exit = Some(exit.clone());
                // Always a quick failure, so that it cannot spin.
                self.after_exit(index, &exit, true);
            }
        }
    }

    /// Starts the slot's next generation on its own thread.
    fn spawn_live(&mut self, index: usize) -> std::io::Result<Live> {
        let slot = &mut self.slots[index];
        let generation = slot.next_generation;
        slot.next_generation += 1;
        let core = slot.core;
        let (stop, stop_rx) = watch::channel(false);
        let (terminate, terminate_rx) = oneshot::channel();
        let stats = Arc::new(WorkerStats::default());
        let worker = Worker::new(
            index,
            generation,
            core,
            self.shared.clone(),
            stop_rx,
            stats.clone(),
        );
        let job = Box::new(Generation {
            cluster: Arc::as_ptr(&self.shared) as usize,
            slot: index,
            generation,
            core,
            factory: self.factory.clone(),
            worker,
            terminate: terminate_rx,
            tx: self.shared.tx.clone(),
            stats: stats.clone(),
            beat: self.config.stall_timeout / 4,
            epoch: self.shared.epoch,
            task_panic: self.config.task_panic,
            shared: self.shared.clone(),
        });
        // The thread of a generation that returned runs the next one; a new
        // thread only when there is none (or it has ended after all).
        let thread = match self.slots[index].idle.take() {
            Some(thread) => match thread.run(job) {
                Ok(()) => thread,
                Err(job) => Thread::spawn(job)?,
            },
            None => Thread::spawn(job)?,
        };
        tracing::debug!(slot = index, generation, core = ?core, "worker started");
        self.emit(Event::WorkerStarted {
            slot: index,
            generation,
            core,
        });
        Ok(Live {
            generation,
            started: Instant::now(),
            started_at: SystemTime::now(),
            started_micros: micros(self.shared.epoch.elapsed()),
            ready_after: None,
            stop,
            terminate: Some(terminate),
            stats,
            stalled: false,
            deadline: None,
            thread,
            faults: self.shared.faults.clone(),
        })
    }

    fn start_roll(&mut self) {
        if !matches!(self.phase, Phase::Running) {
            return;
        }
        if self.roll.is_some() {
            tracing::info!("a rolling restart is under way; the request joins it");
            return;
        }
        let pending: VecDeque<usize> = self.slots[..self.size]
            .iter()
            .filter(|s| s.in_service() && s.current.is_some())
            .map(|s| s.index)
            .collect();
        tracing::info!(slots = pending.len(), "rolling restart");
        self.emit(Event::RollStarted {
            slots: pending.len(),
        });
        self.systemd.reloading();
        self.roll = Some(Roll {
            pending,
            step: None,
            restarted: 0,
        });
        self.next_roll_step();
    }

    fn next_roll_step(&mut self) {
        loop {
            let Some(index) = self.roll.as_mut().and_then(|r| r.pending.pop_front()) else {
                self.finish_roll(true);
                return;
            };
            let slot = &self.slots[index];
            if index >= self.size
                || !slot.in_service()
                || slot.current.is_none()
                || slot.candidate.is_some()
            {
                continue;
            }
            match self.spawn_live(index) {
                Ok(live) => {
                    let generation = live.generation;
                    self.slots[index].candidate = Some(live);
                    if let Some(roll) = &mut self.roll {
                        roll.step = Some(Step {
                            slot: index,
                            generation,
                            deadline: from_now(self.config.ready_timeout),
                        });
                    }
                    return;
                }
                Err(e) => {
                    let generation = self.slots[index].next_generation - 1;
                    self.roll_failed(index, generation, format!("cannot spawn it: {e}"));
                    return;
                }
            }
        }
    }

    fn roll_failed(&mut self, slot: usize, generation: u64, reason: String) {
        if self.roll.is_none() {
            return;
        }
        tracing::error!(slot, generation, %reason, "rolling restart stopped; the old generation serves on");
        self.emit(Event::RollFailed {
            slot,
            generation,
            reason,
        });
        self.finish_roll(false);
    }

    fn finish_roll(&mut self, completed: bool) {
        let Some(roll) = self.roll.take() else {
            return;
        };
        tracing::info!(
            restarted = roll.restarted,
            completed,
            "rolling restart finished"
        );
        self.emit(Event::RollFinished {
            restarted: roll.restarted,
            completed,
        });
        if matches!(self.phase, Phase::Running) {
            self.systemd.ready(&format!("{} workers ready", self.size));
        }
    }

    fn resize(&mut self, size: usize) {
        if !matches!(self.phase, Phase::Running) || size == self.size || size == 0 {
            return;
        }
        let from = self.size;
        let now = Instant::now();
        if size > from {
            for index in from..size {
                if index < self.slots.len() {
                    let slot = &mut self.slots[index];
                    slot.retired = false;
                    slot.quick_failures = 0;
                    self.shared.registry().restore_slot(index);
                } else {
                    let core = core_for(&self.cores, index);
                    self.slots.push(Slot::new(index, core));
                }
            }
            self.size = size;
            self.resize_bus(size);
            for index in from..size {
                let slot = &self.slots[index];
                if slot.current.is_none() && slot.in_service() {
                    self.respawn_or_start(index);
                }
            }
        } else {
            self.size = size;
            self.resize_bus(size);
            for index in (size..from).rev() {
                let slot = &mut self.slots[index];
                slot.retired = true;
                slot.respawn_at = None;
                slot.idle = None;
                slot.drain_all(now, self.config.shutdown_timeout);
                let survivors = self.survivors(index);
                self.shared.registry().retire_slot(index, &survivors);
                let stepping = self
                    .roll
                    .as_ref()
                    .and_then(|r| r.step.as_ref())
                    .is_some_and(|s| s.slot == index);
                if stepping {
                    if let Some(roll) = &mut self.roll {
                        roll.step = None;
                    }
                    self.next_roll_step();
                }
            }
        }
        tracing::info!(from, to = size, "resized");
        self.emit(Event::Resized { from, to: size });
    }

    /// Gives the bus `size` slots. Closing an inbox fails the requests queued
    /// in it, which wakes their senders: a waker of theirs that panics is
    /// caught.
    fn resize_bus(&self, size: usize) {
        self.shared
            .faults
            .caught("forkless-master", "resizing the bus", || {
                self.shared.bus.resize(size)
            });
    }

    /// Starts a slot that has no worker (a new one, or one back from
    /// retirement).
    fn respawn_or_start(&mut self, index: usize) {
        match self.spawn_live(index) {
            Ok(live) => self.serve(index, live),
            Err(e) => {
                let exit = Exit::Failed(format!("cannot spawn the worker thread: {e}"));
                tracing::error!(slot = index, %exit, "worker failed");
                self.slots[index].last_exit = Some(exit.clone());
                self.after_exit(index, &exit, true);
            }
        }
    }

    fn fire_timers(&mut self) {
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
                let late = self
                    .roll
                    .as_ref()
                    .and_then(|r| r.step.as_ref())
                    .filter(|s| s.deadline <= now)
                    .map(|s| (s.slot, s.generation));
                if let Some((index, generation)) = late {
                    let slot = &mut self.slots[index];
                    if let Some(mut candidate) =
                        slot.candidate.take_if(|c| c.generation == generation)
                    {
                        candidate.terminate(now, self.config.terminate_timeout);
                        slot.draining.push(candidate);
                    }
                    let reason = format!(
                        "it was not ready within ready_timeout ({:?})",
                        self.config.ready_timeout
                    );
                    self.roll_failed(index, generation, reason);
                }
                if now >= self.next_check {
                    self.watch_stalls();
                    self.next_check = after(now, self.config.stall_timeout / 4);
                }
                if let Some(interval) = self.systemd.watchdog_interval() {
                    if now >= self.next_ping {
                        if !self.slots.iter().flat_map(Slot::lives).any(|l| l.stalled) {
                            self.systemd.ping();
                        }
                        self.next_ping = after(now, interval);
                    }
                }
            }
            Phase::Stopping { deadline } if deadline <= now => self.begin_stop(true),
            Phase::Terminating { deadline } if deadline <= now => self.abandon_hung(),
            Phase::Stopping { .. } | Phase::Terminating { .. } => {}
        }
    }

    /// Terminates draining generations past their shutdown timeout, and
    /// abandons those past their terminate timeout.
    fn drain_timers(&mut self, now: Instant) {
        let terminate_timeout = self.config.terminate_timeout;
        let mut hung = Vec::new();
        for slot in &mut self.slots {
            for live in &mut slot.draining {
                match live.deadline {
                    Some((at, Stage::Terminate)) if at <= now => {
                        tracing::warn!(
                            slot = slot.index,
                            generation = live.generation,
                            "terminating a generation that did not stop in time"
                        );
                        live.terminate(now, terminate_timeout);
                    }
                    Some((at, Stage::Abandon)) if at <= now => {
                        hung.push((slot.index, live.generation));
                    }
                    _ => {}
                }
            }
        }
        for (index, generation) in hung {
            let slot = &mut self.slots[index];
            if let Some(i) = slot
                .draining
                .iter()
                .position(|l| l.generation == generation)
            {
                let live = slot.draining.swap_remove(i);
                self.abandon(index, live);
            }
        }
    }

    fn watch_stalls(&mut self) {
        let now = micros(self.shared.epoch.elapsed());
        let limit = micros(self.config.stall_timeout);
        let mut events = Vec::new();
        for slot in &mut self.slots {
            let index = slot.index;
            for live in slot.lives_mut() {
                let beat = live.stats.last_beat.load(Ordering::Relaxed);
                let silent = now.saturating_sub(beat.max(live.started_micros));
                if silent > limit && !live.stalled {
                    live.stalled = true;
                    let silent_for = Duration::from_micros(silent);
                    tracing::error!(
                        slot = index,
                        generation = live.generation,
                        ?silent_for,
                        "worker stalled: its event loop has not turned (blocking code in async?)"
                    );
                    events.push(Event::Stalled {
                        slot: index,
                        generation: live.generation,
                        silent_for,
                    });
                } else if silent <= limit && live.stalled {
                    live.stalled = false;
                    tracing::info!(
                        slot = index,
                        generation = live.generation,
                        "worker recovered from a stall"
                    );
                    events.push(Event::Recovered {
                        slot: index,
                        generation: live.generation,
                    });
                }
            }
        }
        for event in events {
            self.emit(event);
        }
    }

    /// Graceful stop (`terminate == false`) or terminate.
    fn begin_stop(&mut self, terminate: bool) {
        let now = Instant::now();
        self.shared.stopping.store(true, Ordering::Release);
        self.finish_roll(false);
        self.emit(Event::Stopping { terminate });
        self.systemd.stopping();
        // Threads waiting for a generation that will not come end now.
        for slot in &mut self.slots {
            slot.idle = None;
        }
        if terminate {
            tracing::info!(
                name = %self.shared.name,
                timeout = ?self.config.terminate_timeout,
                "terminating workers"
            );
            for slot in &mut self.slots {
                for live in slot.lives_mut() {
                    live.terminate(now, self.config.terminate_timeout);
                }
            }
            self.phase = Phase::Terminating {
                deadline: after(now, self.config.terminate_timeout),
            };
        } else {
            tracing::info!(
                name = %self.shared.name,
                timeout = ?self.config.shutdown_timeout,
                "stopping workers gracefully"
            );
            for slot in &mut self.slots {
                for live in slot.lives_mut() {
                    live.signal_stop();
                }
            }
            self.phase = Phase::Stopping {
                deadline: after(now, self.config.shutdown_timeout),
            };
        }
    }

    fn abandon_hung(&mut self) {
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            let lives: Vec<Live> = slot
                .current
                .take()
                .into_iter()
                .chain(slot.candidate.take())
                .chain(slot.draining.drain(..))
                .collect();
            for live in lives {
                self.abandon(index, live);
            }
        }
    }

    fn abandon(&mut self, index: usize, live: Live) {
        tracing::error!(
            slot = index,
            generation = live.generation,
            "worker did not return after terminate; abandoning its thread"
        );
        self.shared.owner_exited(index, live.generation);
        let ran_for = live.started.elapsed();
        let slot = &mut self.slots[index];
        slot.record(GenerationReport {
            generation: live.generation,
            exit: Exit::Hung,
            ran_for,
            ready_after: live.ready_after,
            restart_delay: None,
        });
        slot.last_exit = Some(Exit::Hung);
        self.shared.metrics.exited(index, &Exit::Hung);
        self.emit(Event::WorkerExited {
            slot: index,
            generation: live.generation,
            exit: Exit::Hung,
            ran_for,
        });
    }

    /// Publishes the view that `Cluster::status` reads.
    fn publish(&self) {
        let slots = self.slots[..self.size]
            .iter()
            .map(|s| {
                let live = s.current.as_ref();
                let state = if s.gave_up {
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
        *self
            .shared
            .view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = view;
    }

    fn report(&self) -> Report {
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
                    gave_up: s.gave_up,
                })
                .collect(),
        }
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().try_into().unwrap_or(u64::MAX)
}

/// The restart rules, from the builder.
#[derive(Debug, Clone, Copy)]
struct Policy {
    restart: Restart,
    throttle_delay: Duration,
    max_backoff: Duration,
    max_restarts: u32,
}

impl Policy {
    fn of(config: &Builder) -> Policy {
        Policy {
            restart: config.restart,
            throttle_delay: config.throttle_delay,
            max_backoff: config.max_backoff,
            max_restarts: config.max_restarts,
        }
    }
}

/// What the supervisor does with a slot whose serving generation exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Start the next generation after `delay` (zero: at once); the slot
    /// now has `quick_failures` in a row.
    Respawn {
        delay: Duration,
        quick_failures: u32,
    },
    /// Too many quick failures in a row: the slot stops for good.
    GiveUp { failures: u32 },
    /// The restart policy does not start this slot again.
    End,
}

/// The restart policy as a pure function (DESIGN.md, "Supervision").
///
/// `quick` says whether the generation ran less than `throttle_delay`
/// (or could not be started at all); `quick_failures` is how many quick
/// exits in a row the slot had before this one. Any quick exit counts,
/// a normal return included, so that a body that returns at once is
/// throttled like one that fails at once.
///
/// | policy | exit | quick | decision |
/// |---|---|---|---|
/// | `Never` | any | any | end |
/// | `OnFailure` | normal or terminated | any | end |
/// | `Always`, or `OnFailure` and a failure | any | no | respawn at once; the count goes back to 0 |
/// | the same | any | yes, k-th in a row, k < `max_restarts` | respawn after `throttle_delay * 2^(k-1)`, at most `max_backoff` |
/// | the same | any | yes, k-th in a row, k >= `max_restarts` | give up |
fn decide(policy: &Policy, exit: &Exit, quick: bool, quick_failures: u32) -> Decision {
    let restart = match policy.restart {
        Restart::Always => true,
        Restart::OnFailure => exit.is_failure(),
        Restart::Never => false,
    };
    if !restart {
        return Decision::End;
    }
    if !quick {
        return Decision::Respawn {
            delay: Duration::ZERO,
            quick_failures: 0,
        };
    }
    let k = quick_failures.saturating_add(1);
    if k >= policy.max_restarts {
        return Decision::GiveUp { failures: k };
    }
    Decision::Respawn {
        delay: backoff(policy.throttle_delay, k, policy.max_backoff),
        quick_failures: k,
    }
}

/// `base * 2^(k-1)`, at most `max`.
fn backoff(base: Duration, k: u32, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(k.saturating_sub(1)).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_history_is_bounded() {
        let mut slot = Slot::new(0, None);
        for generation in 0..(SlotReport::HISTORY as u64 + 5) {
            slot.record(GenerationReport {
                generation,
                exit: Exit::Normal,
                ran_for: Duration::ZERO,
                ready_after: None,
                restart_delay: None,
            });
        }
        assert_eq!(slot.history.len(), SlotReport::HISTORY);
        assert_eq!(slot.history.front().map(|g| g.generation), Some(5));
    }

    fn policy(restart: Restart) -> Policy {
        Policy {
            restart,
            throttle_delay: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
            max_restarts: 4,
        }
    }

    fn failed() -> Exit {
        Exit::Failed("no".into())
    }

    #[test]
    fn the_restart_policy_row_by_row() {
        let s = Duration::from_secs;
        let respawn = |delay, quick_failures| Decision::Respawn {
            delay,
            quick_failures,
        };
        let panicked = Exit::Panicked {
            message: "boom".into(),
            location: None,
        };
        // Never: every exit ends the slot.
        for exit in [Exit::Normal, failed(), Exit::Terminated, panicked.clone()] {
            for quick in [false, true] {
                assert_eq!(
                    decide(&policy(Restart::Never), &exit, quick, 0),
                    Decision::End
                );
            }
        }
        // OnFailure: a return or a termination ends it, a failure restarts.
        let on_failure = policy(Restart::OnFailure);
        assert_eq!(decide(&on_failure, &Exit::Normal, false, 0), Decision::End);
        assert_eq!(
            decide(&on_failure, &Exit::Terminated, true, 0),
            Decision::End
        );
        assert_eq!(decide(&on_failure, &failed(), false, 3), respawn(s(0), 0));
        assert_eq!(decide(&on_failure, &panicked, true, 0), respawn(s(2), 1));
        // Always: a healthy run respawns at once and forgets the failures.
        let always = policy(Restart::Always);
        assert_eq!(decide(&always, &Exit::Normal, false, 3), respawn(s(0), 0));
        assert_eq!(decide(&always, &failed(), false, 3), respawn(s(0), 0));
        // Quick exits back off, doubling, a quick return included...
        assert_eq!(decide(&always, &Exit::Normal, true, 0), respawn(s(2), 1));
        assert_eq!(decide(&always, &failed(), true, 1), respawn(s(4), 2));
        assert_eq!(decide(&always, &failed(), true, 2), respawn(s(8), 3));
        // ... until the max_restarts-th in a row gives up.
        assert_eq!(
            decide(&always, &failed(), true, 3),
            Decision::GiveUp { failures: 4 }
        );
        // The back-off is capped, and a count at its maximum cannot wrap.
        let patient = Policy {
            max_restarts: u32::MAX,
            ..always
        };
        assert_eq!(decide(&patient, &failed(), true, 10), respawn(s(30), 11));
        assert_eq!(
            decide(&patient, &failed(), true, u32::MAX),
            Decision::GiveUp { failures: u32::MAX }
        );
        // max_restarts 0 and 1 both give up at the first quick failure.
        for max_restarts in [0, 1] {
            let strict = Policy {
                max_restarts,
                ..always
            };
            assert_eq!(
                decide(&strict, &failed(), true, 0),
                Decision::GiveUp { failures: 1 }
            );
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(2), 1, s(30)), s(2));
        assert_eq!(backoff(s(2), 2, s(30)), s(4));
        assert_eq!(backoff(s(2), 4, s(30)), s(16));
        assert_eq!(backoff(s(2), 5, s(30)), s(30));
        assert_eq!(backoff(s(2), 40, s(30)), s(30));
        assert_eq!(backoff(Duration::ZERO, 3, s(30)), Duration::ZERO);
    }
}
