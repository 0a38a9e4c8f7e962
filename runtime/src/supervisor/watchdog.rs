//! The stall watchdog: a generation whose event loop has not turned for
//! `stall_timeout` is reported stalled (and recovered when it turns
//! again); systemd's watchdog is pinged only while no generation stalls.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::master::{micros, Master};
use super::slot::Slot;
use crate::observe::events::Event;
use crate::time::deadline::after;

impl Master {
    pub(super) fn watch_stalls(&mut self) {
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

    /// Pings systemd's watchdog when it is due, unless a generation stalls.
    pub(super) fn ping_systemd(&mut self, now: Instant) {
        if let Some(interval) = self.systemd.watchdog_interval() {
            if now >= self.next_ping {
                if !self.slots.iter().flat_map(Slot::lives).any(|l| l.stalled) {
                    self.systemd.ping();
                }
                self.next_ping = after(now, interval);
            }
        }
    }
}
