//! The master thread: owns the slots, spawns each generation, classifies its
//! exit, throttles respawns, and runs the stop sequence. It never runs user
//! code.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use forkless_worker::{Error, Worker};
use tokio::sync::{oneshot, watch};

use crate::body::Factory;
use crate::cluster::{GenerationReport, Msg, Report, Shared, SlotReport};
use crate::exit::{install_panic_hook, Exit};
use crate::worker_thread::{self, Generation};
use crate::{Builder, Cluster, Restart};

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
        .map(|index| {
            Slot::new(
                index,
                (!cores.is_empty()).then(|| cores[index % cores.len()]),
            )
        })
        .collect();
    let mut master = Master {
        config: builder,
        shared: shared.clone(),
        factory,
        rx,
        slots,
        phase: Phase::Running,
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
                shared.registry().close_all();
                shared.finish(Report {
                    name: shared.name.clone(),
                    slots: Vec::new(),
                });
            }
        })
        .map_err(|e| {
            shared.store.close();
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

struct Master {
    config: Builder,
    shared: Arc<Shared>,
    factory: Factory,
    rx: Receiver<Msg>,
    slots: Vec<Slot>,
    phase: Phase,
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
    live: Option<Live>,
    next_generation: u64,
    quick_failures: u32,
    respawn_at: Option<Instant>,
    gave_up: bool,
    history: VecDeque<GenerationReport>,
}

impl Slot {
    fn new(index: usize, core: Option<usize>) -> Slot {
        Slot {
            index,
            core,
            live: None,
            next_generation: 0,
            quick_failures: 0,
            respawn_at: None,
            gave_up: false,
            history: VecDeque::new(),
        }
    }

    fn record(&mut self, generation: GenerationReport) {
        if self.history.len() == SlotReport::HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(generation);
    }
}

/// The running generation of a slot.
struct Live {
    generation: u64,
    started: Instant,
    ready_after: Option<Duration>,
    stop: watch::Sender<bool>,
    terminate: Option<oneshot::Sender<()>>,
}

impl Master {
    fn start_all(&mut self) -> Result<(), Error> {
        for index in 0..self.slots.len() {
            self.spawn(index)
                .map_err(|e| Error::spawn(format!("cannot spawn worker {index}"), e))?;
        }
        Ok(())
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
            if let Some(msg) = msg {
                self.handle(msg);
            }
            self.fire_timers();
        }
        self.shared.registry().close_all();
        let report = self.report();
        tracing::info!(name = %self.shared.name, restarts = report.restarts(), "cluster stopped");
        self.shared.finish(report);
    }

    /// The cluster ends when no worker runs and none is due to.
    fn finished(&self) -> bool {
        self.slots.iter().all(|s| {
            s.live.is_none() && (s.respawn_at.is_none() || !matches!(self.phase, Phase::Running))
        })
    }

    fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Running => self.slots.iter().filter_map(|s| s.respawn_at).min(),
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
            Msg::Ready { slot, generation } => {
                if let Some(live) = self.live_mut(slot, generation) {
                    if live.ready_after.is_none() {
                        live.ready_after = Some(live.started.elapsed());
                        tracing::debug!(slot, generation, "worker ready");
                    }
                }
            }
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
        }
    }

    fn live_mut(&mut self, slot: usize, generation: u64) -> Option<&mut Live> {
        self.slots
            .get_mut(slot)?
            .live
            .as_mut()
            .filter(|l| l.generation == generation)
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
            }
            Phase::Stopping { deadline } if deadline <= now => self.begin_stop(true),
            Phase::Terminating { deadline } if deadline <= now => self.abandon_hung(),
            Phase::Stopping { .. } | Phase::Terminating { .. } => {}
        }
    }

    /// Graceful stop (`terminate == false`) or terminate.
    fn begin_stop(&mut self, terminate: bool) {
        let now = Instant::now();
        if terminate {
            tracing::info!(
                name = %self.shared.name,
                timeout = ?self.config.terminate_timeout,
                "terminating workers"
            );
            for slot in &mut self.slots {
                if let Some(live) = &mut slot.live {
                    let _ = live.stop.send(true);
                    if let Some(terminate) = live.terminate.take() {
                        let _ = terminate.send(());
                    }
                }
            }
            self.phase = Phase::Terminating {
                deadline: now + self.config.terminate_timeout,
            };
        } else {
            tracing::info!(
                name = %self.shared.name,
                timeout = ?self.config.shutdown_timeout,
                "stopping workers gracefully"
            );
            for slot in &mut self.slots {
                if let Some(live) = &slot.live {
                    let _ = live.stop.send(true);
                }
            }
            self.phase = Phase::Stopping {
                deadline: now + self.config.shutdown_timeout,
            };
        }
    }

    fn abandon_hung(&mut self) {
        for slot in &mut self.slots {
            if let Some(live) = slot.live.take() {
                tracing::error!(
                    slot = slot.index,
                    generation = live.generation,
                    "worker did not return after terminate; abandoning its thread"
                );
                self.shared.owner_exited(slot.index, live.generation);
                slot.record(GenerationReport {
                    generation: live.generation,
                    exit: Exit::Hung,
                    ran_for: live.started.elapsed(),
                    ready_after: live.ready_after,
                    restart_delay: None,
                });
            }
        }
    }

    fn exited(&mut self, index: usize, generation: u64, exit: Exit) {
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        let Some(live) = slot.live.take_if(|l| l.generation == generation) else {
            // A thread abandoned as hung finished after all.
            tracing::info!(slot = index, generation, %exit, "abandoned worker returned");
            return;
        };
        let ran_for = live.started.elapsed();
        self.shared.owner_exited(index, generation);
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
        if matches!(self.phase, Phase::Running) {
            self.after_exit(index, &exit, ran_for < self.config.throttle_delay);
        }
    }

    /// Decides whether and when the slot runs again.
    fn after_exit(&mut self, index: usize, exit: &Exit, quick: bool) {
        let config = &self.config;
        let slot = &mut self.slots[index];
        let restart = match config.restart {
            Restart::Always => true,
            Restart::OnFailure => exit.is_failure(),
            Restart::Never => false,
        };
        if !restart {
            tracing::info!(
                slot = index,
                "slot ends: restart policy {:?}",
                config.restart
            );
            self.shared.slot_ended(index);
            return;
        }
        let delay = if quick {
            slot.quick_failures += 1;
            if slot.quick_failures >= config.max_restarts {
                tracing::error!(
                    slot = index,
                    failures = slot.quick_failures,
                    "slot gave up after {} quick failures in a row; the other slots serve on",
                    slot.quick_failures
                );
                slot.gave_up = true;
                self.shared.slot_ended(index);
                return;
            }
            backoff(
                config.throttle_delay,
                slot.quick_failures,
                config.max_backoff,
            )
        } else {
            slot.quick_failures = 0;
            Duration::ZERO
        };
        if let Some(last) = slot.history.back_mut() {
            last.restart_delay = Some(delay);
        }
        if delay.is_zero() {
            self.respawn(index);
        } else {
            tracing::warn!(slot = index, ?delay, "respawn throttled");
            self.slots[index].respawn_at = Some(Instant::now() + delay);
        }
    }

    fn respawn(&mut self, index: usize) {
        if let Err(e) = self.spawn(index) {
            let generation = self.slots[index].next_generation - 1;
            let exit = Exit::Failed(format!("cannot spawn the worker thread: {e}"));
            tracing::error!(slot = index, generation, %exit, "worker failed");
            self.slots[index].record(GenerationReport {
                generation,
                exit: exit.clone(),
                ran_for: Duration::ZERO,
                ready_after: None,
                restart_delay: None,
            });
            // Always a quick failure, so that it cannot spin.
            self.after_exit(index, &exit, true);
        }
    }

    fn spawn(&mut self, index: usize) -> std::io::Result<()> {
        let slot = &mut self.slots[index];
        let generation = slot.next_generation;
        slot.next_generation += 1;
        let (stop, stop_rx) = watch::channel(false);
        let (terminate, terminate_rx) = oneshot::channel();
        let worker = Worker::new(index, generation, slot.core, self.shared.clone(), stop_rx);
        worker_thread::spawn(Generation {
            cluster: Arc::as_ptr(&self.shared) as usize,
            slot: index,
            generation,
            core: slot.core,
            factory: self.factory.clone(),
            worker,
            terminate: terminate_rx,
            tx: self.shared.tx.clone(),
        })?;
        tracing::debug!(slot = index, generation, core = ?slot.core, "worker started");
        slot.live = Some(Live {
            generation,
            started: Instant::now(),
            ready_after: None,
            stop,
            terminate: Some(terminate),
        });
        Ok(())
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
