//! A slot's generations come and go: started ([`Master::spawn_live`]),
//! serving, ready, exited; after an exit the policy decides whether and when
//! the slot runs again.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use forkless_worker::rt::host::WorkerStats;
use forkless_worker::rt::Errors as _;
use forkless_worker::Error;
use tokio::sync::{oneshot, watch};

use super::master::{micros, Master, Phase};
use super::policy::{decide, Decision, Policy};
use super::slot::{Live, Role, Service};
use crate::fault::exit::Exit;
use crate::observe::events::Event;
use crate::supervisor::report::GenerationReport;
use crate::supervisor::worker_thread::{Generation, Thread};
use crate::time::deadline::from_now;

impl Master {
    pub(super) fn start_all(&mut self) -> Result<(), Error> {
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
    pub(super) fn serve(&mut self, index: usize, live: Live) {
        let generation = live.generation;
        self.shared
            .faults
            .caught("forkless-master", "handing a slot's inbox on", || {
                self.shared.bus.serve(index, generation)
            });
        self.slots[index].current = Some(live);
    }

    pub(super) fn role(&self, index: usize, generation: u64) -> Option<Role> {
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

    pub(super) fn ready(&mut self, index: usize, generation: u64) {
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
        self.replaced(index, generation, role);
        self.announce_ready();
    }

    /// `READY=1` once every first worker is ready.
    pub(super) fn announce_ready(&mut self) {
        if self.announced_ready {
            return;
        }
        let all = self.slots[..self.size].iter().all(|s| {
            !s.in_service() || s.current.as_ref().is_some_and(|l| l.ready_after.is_some())
        });
        if all {
            self.announced_ready = true;
            self.systemd.ready(&format!("{} workers ready", self.size));
            // Started by an upgrade: the old process may stop now.
            super::upgrade::child_ready(&self.shared);
        }
    }

    pub(super) fn exited(&mut self, index: usize, generation: u64, exit: Exit) {
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
                // A candidate that took over mid-replacement and exits before
                // it was ready fails the replacement now, not at its deadline.
                let reason = format!("it exited before it was ready: {exit}");
                self.replacement_failed(index, generation, reason);
                let slot = &mut self.slots[index];
                if let Some(candidate) = slot.candidate.take() {
                    // Mid-replacement: the new generation takes over at
                    // once.
                    self.serve(index, candidate);
                    return;
                }
                if matches!(self.phase, Phase::Running) && slot.in_service() {
                    self.after_exit(index, &exit, Some(ran_for));
                }
            }
            Role::Candidate => {
                let reason = format!("it exited before it was ready: {exit}");
                self.replacement_failed(index, generation, reason);
            }
            Role::Draining => {}
        }
    }

    /// The slots that accept for a retired or failed one.
    pub(super) fn survivors(&self, except: usize) -> Vec<usize> {
        self.slots[..self.size]
            .iter()
            .filter(|s| s.index != except && s.in_service())
            .map(|s| s.index)
            .collect()
    }

    /// Decides whether and when the slot runs again.
    pub(super) fn after_exit(&mut self, index: usize, exit: &Exit, ran_for: Option<Duration>) {
        let policy = Policy::of(&self.config);
        let slot = &mut self.slots[index];
        let decision = decide(&policy, exit, ran_for, slot.quick_failures);
        let delay = match decision {
            Decision::End => {
                tracing::info!(
                    slot = index,
                    "slot ends: restart policy {:?}",
                    policy.restart
                );
                slot.service = Service::Ended;
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
                slot.service = Service::GaveUp;
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

    pub(super) fn respawn(&mut self, index: usize) {
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
                // Never started: a quick failure, so that it cannot spin.
                self.after_exit(index, &exit, None);
            }
        }
    }

    /// Starts a slot that has no worker (a new one, or one back from
    /// retirement).
    pub(super) fn respawn_or_start(&mut self, index: usize) {
        match self.spawn_live(index) {
            Ok(live) => self.serve(index, live),
            Err(e) => {
                let exit = Exit::Failed(format!("cannot spawn the worker thread: {e}"));
                tracing::error!(slot = index, %exit, "worker failed");
                self.slots[index].last_exit = Some(exit.clone());
                self.after_exit(index, &exit, None);
            }
        }
    }

    /// Starts the slot's next generation on its own thread.
    pub(super) fn spawn_live(&mut self, index: usize) -> std::io::Result<Live> {
        let slot = &mut self.slots[index];
        let generation = slot.next_generation;
        slot.next_generation += 1;
        let core = slot.core;
        let (stop, stop_rx) = watch::channel(false);
        let (terminate, terminate_rx) = oneshot::channel();
        let stats = Arc::new(WorkerStats::default());
        let worker = forkless_worker::rt::worker(
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
            limits: self.config.recycle.draw(),
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
}
