//! The rolling restart: one slot at a time, each replaced the gated way
//! ([`replace`](super::replace)): the next generation starts beside the
//! current one, and only once it is ready is the old one asked to stop. A
//! candidate that exits or is not ready within `ready_timeout` stops the
//! roll; the old generation serves on.

use std::collections::VecDeque;

use super::master::{Master, Phase};
use super::plan::{Purpose, Roll};
use crate::observe::events::Event;

impl Master {
    pub(super) fn start_roll(&mut self) {
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
            restarted: 0,
        });
        self.next_roll_step();
    }

    /// Replaces the next slot of the roll, once no replacement (a recycle
    /// begun before the roll) is under way.
    pub(super) fn next_roll_step(&mut self) {
        if self.step.is_some() {
            return;
        }
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
            if let Err(why) = self.replace(index, Purpose::Roll) {
                let generation = self.slots[index].next_generation.saturating_sub(1);
                self.roll_failed(index, generation, why);
            }
            return;
        }
    }

    pub(super) fn roll_failed(&mut self, slot: usize, generation: u64, reason: String) {
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

    pub(super) fn finish_roll(&mut self, completed: bool) {
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
}
