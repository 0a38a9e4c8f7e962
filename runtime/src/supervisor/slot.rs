//! A slot and its generations: [`Slot`] (whether it serves, its current,
//! candidate and draining generations, its quick failures, its history)
//! and [`Live`] (a running generation: its stop and terminate signals, its
//! stats, its drain deadline, its thread).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use forkless_worker::rt::host::WorkerStats;
use tokio::sync::{oneshot, watch};

use crate::config::recycle::Limits;
use crate::fault::exit::Exit;
use crate::fault::guard::Faults;
use crate::observe::recycle::RecycleReason;
use crate::supervisor::report::{GenerationReport, SlotReport};
use crate::supervisor::worker_thread::Thread;
use crate::time::deadline::after;

pub(super) struct Slot {
    pub(super) index: usize,
    pub(super) core: Option<usize>,
    pub(super) current: Option<Live>,
    pub(super) candidate: Option<Live>,
    pub(super) draining: Vec<Live>,
    pub(super) next_generation: u64,
    pub(super) quick_failures: u32,
    pub(super) respawn_at: Option<Instant>,
    /// Whether it serves, and if not, why.
    pub(super) service: Service,
    pub(super) restarts: u64,
    pub(super) last_exit: Option<Exit>,
    pub(super) history: VecDeque<GenerationReport>,
    /// The thread of a generation that returned, waiting to run the next.
    pub(super) idle: Option<Thread>,
    /// How many times it was recycled, and why last.
    pub(super) recycles: u64,
    pub(super) last_recycle: Option<RecycleReason>,
    /// An operator asked to recycle it.
    pub(super) recycle_requested: bool,
    /// After a failed recycle: not again before then.
    pub(super) recycle_after: Option<Instant>,
}

impl Slot {
    pub(super) fn new(index: usize, core: Option<usize>) -> Slot {
        Slot {
            index,
            core,
            current: None,
            candidate: None,
            draining: Vec::new(),
            next_generation: 0,
            quick_failures: 0,
            respawn_at: None,
            service: Service::Serving,
            restarts: 0,
            last_exit: None,
            history: VecDeque::new(),
            idle: None,
            recycles: 0,
            last_recycle: None,
            recycle_requested: false,
            recycle_after: None,
        }
    }

    pub(super) fn record(&mut self, generation: GenerationReport) {
        if self.history.len() == SlotReport::HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(generation);
    }

    /// Whether it serves (or will again after a throttled respawn).
    pub(super) fn in_service(&self) -> bool {
        self.service == Service::Serving
    }

    pub(super) fn lives(&self) -> impl Iterator<Item = &Live> {
        self.current
            .iter()
            .chain(self.candidate.iter())
            .chain(self.draining.iter())
    }

    pub(super) fn lives_mut(&mut self) -> impl Iterator<Item = &mut Live> {
        self.current
            .iter_mut()
            .chain(self.candidate.iter_mut())
            .chain(self.draining.iter_mut())
    }

    pub(super) fn has_workers(&self) -> bool {
        self.current.is_some() || self.candidate.is_some() || !self.draining.is_empty()
    }

    /// Moves the current and candidate generations to the draining ones,
    /// asking them to stop.
    pub(super) fn drain_all(&mut self, now: Instant, shutdown_timeout: Duration) {
        for mut live in self.current.take().into_iter().chain(self.candidate.take()) {
            live.ask_to_stop(now, shutdown_timeout);
            self.draining.push(live);
        }
    }
}

/// Whether a slot serves. Only `Serving` slots are respawned, rolled and
/// counted as survivors. A slot leaves `Serving` once, for one reason; a
/// grow brings a `Retired` slot back as `Serving` with no quick failures,
/// whatever it was before it retired (a slot that gave up and was retired
/// starts again if the cluster grows back: the operator asked for that
/// many workers, and the give-up is in the report's history).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    /// It serves, or will again after a throttled respawn.
    Serving,
    /// Its restart policy does not start it again.
    Ended,
    /// It failed quickly `max_restarts` times in a row.
    GaveUp,
    /// A shrink retired it; its sockets' queues went to the survivors.
    Retired,
}

/// A running generation of a slot.
pub(super) struct Live {
    pub(super) generation: u64,
    /// Its recycle limits, jitter drawn.
    pub(super) limits: Limits,
    pub(super) started: Instant,
    pub(super) started_at: SystemTime,
    /// Microseconds from the cluster's start, like heartbeats.
    pub(super) started_micros: u64,
    pub(super) ready_after: Option<Duration>,
    pub(super) stop: watch::Sender<bool>,
    pub(super) terminate: Option<oneshot::Sender<()>>,
    pub(super) stats: Arc<WorkerStats>,
    pub(super) stalled: bool,
    /// For a draining generation: when to terminate it, then abandon it.
    pub(super) deadline: Option<(Instant, Stage)>,
    /// The thread it runs on, free again once it has returned.
    pub(super) thread: Thread,
    /// Where a panic of a waker woken by its stop signal is counted.
    pub(super) faults: Arc<Faults>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    Terminate,
    Abandon,
}

impl Live {
    /// Resolves its shutdown signal. That wakes the tasks that wait on it,
    /// whose wakers are code of theirs: a panic there is caught, and the
    /// master goes on.
    pub(super) fn signal_stop(&self) {
        self.faults
            .caught("forkless-master", "waking a worker to stop", || {
                let _ = self.stop.send(true);
            });
    }

    pub(super) fn ask_to_stop(&mut self, now: Instant, shutdown_timeout: Duration) {
        self.signal_stop();
        if self.deadline.is_none() {
            self.deadline = Some((after(now, shutdown_timeout), Stage::Terminate));
        }
    }

    pub(super) fn terminate(&mut self, now: Instant, terminate_timeout: Duration) {
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

/// Which generation of a slot a message is about.
pub(super) enum Role {
    Current,
    Candidate,
    Draining,
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
}
