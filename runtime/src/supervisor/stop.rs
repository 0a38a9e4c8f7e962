//! Stopping: the graceful stop (every generation is asked to stop), then
//! terminate, then abandoning a thread that still does not return; the
//! same deadlines for a single draining generation.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::master::{Master, Phase};
use super::slot::{Live, Stage};
use crate::fault::exit::Exit;
use crate::observe::events::Event;
use crate::supervisor::report::GenerationReport;
use crate::time::deadline::after;

impl Master {
    /// Graceful stop (`terminate == false`) or terminate.
    pub(super) fn begin_stop(&mut self, terminate: bool) {
        let now = Instant::now();
        self.shared.stopping.store(true, Ordering::Release);
        self.finish_roll(false);
        self.step = None;
        self.emit(Event::Stopping { terminate });
        // After an upgrade's switch the new process is the service's main
        // one: this one's STOPPING=1 would read as the service stopping
        // (with `NotifyAccess=all`, systemd would stop the new process).
        // Read under the upgrade's gate, after `stopping` is set: an
        // upgrade not switched by now never will be (it is cancelled).
        if !self.shared.switched() {
            self.systemd.stopping();
        }
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

    /// Terminates draining generations past their shutdown timeout, and
    /// abandons those past their terminate timeout.
    pub(super) fn drain_timers(&mut self, now: Instant) {
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

    pub(super) fn abandon_hung(&mut self) {
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

    pub(super) fn abandon(&mut self, index: usize, live: Live) {
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
}
