//! Resizing: a grow starts new slots (or brings retired ones back, fresh);
//! a shrink retires the highest slots, drains their generations and hands
//! their sockets' queues to the survivors.

use std::time::Instant;

use super::master::{core_for, Master, Phase};
use super::slot::{Service, Slot};
use crate::observe::events::Event;

impl Master {
    pub(super) fn resize(&mut self, size: usize) {
        if !matches!(self.phase, Phase::Running) || size == self.size || size == 0 {
            return;
        }
        let from = self.size;
        let now = Instant::now();
        if size > from {
            for index in from..size {
                if index < self.slots.len() {
                    let slot = &mut self.slots[index];
                    slot.service = Service::Serving;
                    slot.quick_failures = 0;
                    self.shared.registry().restore_slot(index);
                } else {
                    let core = core_for(&self.cores, index);
                    self.slots.push(Slot::new(index, core));
                    // A slot this cluster never ran may still be retired in
                    // the registry: one of the process an upgrade took over
                    // from, which had more. It takes its socket back.
                    self.shared.registry().restore_slot(index);
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
                slot.service = Service::Retired;
                slot.recycle_requested = false;
                slot.respawn_at = None;
                slot.idle = None;
                slot.drain_all(now, self.config.shutdown_timeout);
                let survivors = self.survivors(index);
                self.shared.registry().retire_slot(index, &survivors);
                self.slot_left(index);
            }
        }
        tracing::info!(from, to = size, "resized");
        self.emit(Event::Resized { from, to: size });
    }

    /// Gives the bus `size` slots. Closing an inbox fails the requests queued
    /// in it, which wakes their senders: a waker of theirs that panics is
    /// caught.
    pub(super) fn resize_bus(&self, size: usize) {
        self.shared
            .faults
            .caught("forkless-master", "resizing the bus", || {
                self.shared.bus.resize(size)
            });
    }
}
