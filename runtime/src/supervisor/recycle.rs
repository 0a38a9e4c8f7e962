//! Recycling ([`Recycle`](crate::Recycle)): a ready worker past one of its
//! generation's limits (connections accepted, age, memory), or one an operator
//! asked for, is replaced the way a roll replaces it. One slot at a time and
//! never during a roll; a recycle is not a failure (no restart is counted,
//! nothing towards giving up). A candidate that fails leaves the old
//! generation serving, and the slot is not recycled again for
//! `ready_timeout`.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::master::{Master, Phase};
use super::plan::Purpose;
use crate::observe::events::Event;
use crate::observe::recycle::RecycleReason;
use crate::time::deadline::after;

impl Master {
    /// Begins the first recycle that is due, unless a replacement is under
    /// way.
    pub(super) fn check_recycles(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Running) || self.step.is_some() || self.roll.is_some() {
            return;
        }
        // Round robin from the slot after the last one recycled, so that one
        // slot due again at once cannot starve the others.
        let (size, first) = (self.size, self.last_recycled + 1);
        for index in (0..size).map(|i| (first + i) % size) {
            let Some(reason) = self.recycle_due(index, now) else {
                continue;
            };
            self.last_recycled = index;
            tracing::info!(slot = index, %reason, "recycling a worker");
            match self.replace(index, Purpose::Recycle(reason)) {
                Ok(()) => return,
                Err(why) => {
                    let generation = self.slots[index].next_generation.saturating_sub(1);
                    self.recycle_failed(index, generation, why);
                }
            }
        }
    }

    /// Why slot `index`'s worker is to be recycled now, if it is.
    fn recycle_due(&mut self, index: usize, now: Instant) -> Option<RecycleReason> {
        let slot = &mut self.slots[index];
        if !slot.in_service() {
            slot.recycle_requested = false;
            return None;
        }
        // The old generation of its last replacement still draining: not
        // yet (at most one old generation per slot, so that a worker due
        // again at once cannot pile them up).
        if slot.candidate.is_some()
            || !slot.draining.is_empty()
            || slot.recycle_after.is_some_and(|at| now < at)
        {
            return None;
        }
        // Only a worker that serves: one starting, or stalled (which would
        // not drain), is left alone.
        let live = slot
            .current
            .as_ref()
            .filter(|l| l.ready_after.is_some() && !l.stalled)?;
        if slot.recycle_requested {
            slot.recycle_requested = false;
            return Some(RecycleReason::Requested);
        }
        if let Some(limit) = live.limits.connections {
            let accepted = live.stats.accepted.load(Ordering::Relaxed);
            if accepted >= limit {
                return Some(RecycleReason::MaxConnections { limit, accepted });
            }
        }
        if let Some(limit) = live.limits.age {
            // Age counts from ready: a generation slower to start than
            // max_age still serves for max_age.
            let ready_at = live.started + live.ready_after.unwrap_or_default();
            let age = now.saturating_duration_since(ready_at);
            if age >= limit {
                return Some(RecycleReason::MaxAge { limit, age });
            }
        }
        if let Some(limit) = self.config.recycle.max_memory {
            if let Some(bytes) = crate::alloc::live_bytes(&live.stats) {
                if bytes > limit {
                    return Some(RecycleReason::MaxMemory { limit, bytes });
                }
            }
        }
        None
    }

    /// An operator asked to recycle slot `index`: it is, as soon as no
    /// replacement is under way and its worker serves.
    pub(super) fn request_recycle(&mut self, index: usize) {
        match self.slots.get_mut(index) {
            Some(slot) if index < self.size && slot.in_service() => {
                slot.recycle_requested = true;
                slot.recycle_after = None;
                self.check_recycles(Instant::now());
            }
            // Retired, ended or gone between the request and now (a resize
            // raced it): said, so that no one waits for a recycle.
            slot => {
                let generation = slot.map_or(0, |s| s.next_generation.saturating_sub(1));
                self.emit(Event::RecycleFailed {
                    slot: index,
                    generation,
                    reason: format!(
                        "slot {index} does not serve (the cluster has {} slots)",
                        self.size
                    ),
                });
            }
        }
    }

    /// Slot `index`'s next generation took over.
    pub(super) fn recycled(&mut self, index: usize, reason: RecycleReason) {
        tracing::info!(slot = index, %reason, "worker recycled");
        let slot = &mut self.slots[index];
        slot.recycles += 1;
        slot.last_recycle = Some(reason.clone());
        self.shared.metrics.recycled(index, &reason);
        self.emit(Event::Recycled {
            slot: index,
            reason,
        });
    }

    /// Slot `index`'s candidate did not take over.
    pub(super) fn recycle_failed(&mut self, index: usize, generation: u64, reason: String) {
        tracing::error!(slot = index, generation, %reason, "recycle failed; the old generation serves on");
        let wait = self.config.ready_timeout;
        self.slots[index].recycle_after = Some(after(Instant::now(), wait));
        self.emit(Event::RecycleFailed {
            slot: index,
            generation,
            reason,
        });
    }
}
