//! The gated replacement a rolling restart and a recycle share: the slot's
//! next generation starts beside the current one as its *candidate*, and
//! only once it is ready is the old one asked to stop. One replacement at a
//! time in the whole cluster (a [`Step`]), so capacity never drops by more
//! than one worker. A candidate that exits, or is not ready within
//! `ready_timeout`, fails the step; the old generation serves on.

use std::time::Instant;

use super::master::Master;
use super::plan::{Purpose, Step};
use super::slot::Role;
use crate::time::deadline::from_now;

impl Master {
    /// Starts slot `index`'s next generation as its candidate. The error
    /// says why it could not be spawned.
    pub(super) fn replace(&mut self, index: usize, purpose: Purpose) -> Result<(), String> {
        let live = self
            .spawn_live(index)
            .map_err(|e| format!("cannot spawn it: {e}"))?;
        let generation = live.generation;
        self.slots[index].candidate = Some(live);
        self.step = Some(Step {
            slot: index,
            generation,
            deadline: from_now(self.config.ready_timeout),
            purpose,
        });
        Ok(())
    }

    /// Generation `generation` of slot `index`, in role `role`, is ready:
    /// if it is the step's candidate, it serves now, the old generation is
    /// asked to stop, and the next replacement may begin.
    pub(super) fn replaced(&mut self, index: usize, generation: u64, role: Role) {
        let Some(step) = self
            .step
            .take_if(|s| s.slot == index && s.generation == generation)
        else {
            return;
        };
        if let Role::Candidate = role {
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
        // A current generation that exited meanwhile made the candidate
        // current already: the replacement is done all the same.
        match step.purpose {
            Purpose::Roll => {
                if let Some(roll) = &mut self.roll {
                    roll.restarted += 1;
                }
            }
            Purpose::Recycle(reason) => self.recycled(index, reason),
        }
        self.after_step();
    }

    /// The step's candidate failed (`reason`): the old generation serves on.
    pub(super) fn replacement_failed(&mut self, index: usize, generation: u64, reason: String) {
        let Some(step) = self
            .step
            .take_if(|s| s.slot == index && s.generation == generation)
        else {
            return;
        };
        match step.purpose {
            Purpose::Roll => self.roll_failed(index, generation, reason),
            Purpose::Recycle(_) => self.recycle_failed(index, generation, reason),
        }
        self.after_step();
    }

    /// A candidate not ready by the step's deadline is terminated, and the
    /// step fails.
    pub(super) fn replacement_timers(&mut self, now: Instant) {
        let late = self
            .step
            .as_ref()
            .filter(|s| s.deadline <= now)
            .map(|s| (s.slot, s.generation));
        if let Some((index, generation)) = late {
            let slot = &mut self.slots[index];
            if let Some(mut candidate) = slot.candidate.take_if(|c| c.generation == generation) {
                candidate.terminate(now, self.config.terminate_timeout);
                slot.draining.push(candidate);
            }
            let reason = format!(
                "it was not ready within ready_timeout ({:?})",
                self.config.ready_timeout
            );
            self.replacement_failed(index, generation, reason);
        }
    }

    /// The step's slot left the cluster (a shrink retired it, its candidate
    /// drains with it): the step is dropped without an event.
    pub(super) fn slot_left(&mut self, index: usize) {
        if self.step.take_if(|s| s.slot == index).is_some() {
            self.after_step();
        }
    }

    /// With no step under way, the roll goes on, or else a recycle that is
    /// due begins.
    fn after_step(&mut self) {
        if self.roll.is_some() {
            self.next_roll_step();
        } else {
            self.check_recycles(Instant::now());
        }
    }
}
