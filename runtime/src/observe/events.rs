//! What the supervisor does, as a stream of [`Event`]s, and the cluster's
//! [`Status`].

use std::collections::VecDeque;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use crate::observe::recycle::RecycleReason;
use crate::Exit;

/// Something the cluster's supervisor did or saw, from
/// [`Cluster::events`](crate::Cluster::events). Each is also logged through
/// `tracing`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A generation of a slot was started.
    WorkerStarted {
        /// The slot.
        slot: usize,
        /// The new generation.
        generation: u64,
        /// The core it is pinned to.
        core: Option<usize>,
    },
    /// A generation became ready (it listens, or called `Worker::ready`).
    WorkerReady {
        /// The slot.
        slot: usize,
        /// The generation.
        generation: u64,
        /// How long after its start.
        after: Duration,
    },
    /// A generation ended.
    WorkerExited {
        /// The slot.
        slot: usize,
        /// The generation.
        generation: u64,
        /// How.
        exit: Exit,
        /// How long it ran.
        ran_for: Duration,
    },
    /// A slot will start its next generation after `delay`.
    Restarting {
        /// The slot.
        slot: usize,
        /// The wait before the start (zero: at once).
        delay: Duration,
    },
    /// A slot stopped restarting after too many quick failures; the other
    /// slots serve on, and a surviving worker accepts from its sockets.
    GaveUp {
        /// The slot.
        slot: usize,
        /// Quick failures in a row.
        failures: u32,
    },
    /// A worker's event loop has not turned for `stall_timeout` or more.
    Stalled {
        /// The slot.
        slot: usize,
        /// The generation.
        generation: u64,
        /// How long since its last heartbeat.
        silent_for: Duration,
    },
    /// A stalled worker's loop turns again.
    Recovered {
        /// The slot.
        slot: usize,
        /// The generation.
        generation: u64,
    },
    /// A task spawned by a worker panicked (the body itself did not).
    TaskPanicked {
        /// The slot.
        slot: usize,
        /// The generation.
        generation: u64,
        /// The panic's message.
        message: String,
        /// Where it panicked, when known.
        location: Option<String>,
    },
    /// The number of slots changed.
    Resized {
        /// The size before.
        from: usize,
        /// The size now.
        to: usize,
    },
    /// A rolling restart began.
    RollStarted {
        /// How many slots it will restart.
        slots: usize,
    },
    /// A new generation did not take over during a rolling restart: the
    /// roll stops, and the slot's old generation serves on.
    RollFailed {
        /// The slot.
        slot: usize,
        /// The new generation that failed.
        generation: u64,
        /// Why: its exit, or that it was not ready in time.
        reason: String,
    },
    /// A rolling restart ended.
    RollFinished {
        /// How many slots got a new generation.
        restarted: usize,
        /// False if it stopped at a failure.
        completed: bool,
    },
    /// A worker was recycled ([`Recycle`](crate::Recycle)): its slot's
    /// next generation is ready and serves, and the old one was asked to
    /// stop.
    Recycled {
        /// The slot.
        slot: usize,
        /// Why.
        reason: RecycleReason,
    },
    /// A recycle did not take over: the new generation exited, or was not
    /// ready within `ready_timeout`. The old one serves on; the slot is not
    /// recycled again for `ready_timeout`.
    RecycleFailed {
        /// The slot.
        slot: usize,
        /// The new generation that failed.
        generation: u64,
        /// Why: its exit, or that it was not ready in time.
        reason: String,
    },
    /// An upgrade began ([`Cluster::upgrade`](crate::Cluster::upgrade)):
    /// a new process of the program starts beside this one, with this
    /// one's listening sockets.
    UpgradeStarted {
        /// The new process's id.
        pid: u32,
    },
    /// The new process's workers are ready: it serves. This process stops
    /// gracefully and hands it the store.
    Upgraded {
        /// The new process's id.
        pid: u32,
    },
    /// The new process did not take over (it exited, was not ready within
    /// `ready_timeout`, or could not be started): it is stopped, and this
    /// process serves on.
    UpgradeFailed {
        /// Why.
        reason: String,
    },
    /// In an upgrade's new process: the old process's in-process store was
    /// not taken over (the old process ended without handing it, or it could
    /// not be loaded); this process's store started empty. Also in the log,
    /// as an error.
    StoreHandoverFailed {
        /// Why.
        reason: String,
    },
    /// The cluster began to stop (`terminate`: by force).
    Stopping {
        /// True when workers are terminated rather than asked to stop.
        terminate: bool,
    },
    /// Every worker has ended. The last event.
    Stopped,
    /// This stream fell behind and lost `missed` events.
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// How many past events a new [`Events`] stream starts with, and how far a
/// reader may fall behind before it misses some.
const HISTORY: usize = 1024;

/// The cluster's event log: the last [`HISTORY`] events, numbered, which
/// every reader walks at its own pace, so that a stream taken late still
/// sees the start.
///
/// Readers' wakers are their own code, and the master emits: each waker is
/// woken outside the log's lock and inside `catch_unwind`, so one that
/// panics neither keeps the other readers asleep nor leaves the log half
/// changed (the first such panic goes on to the master's guard, which
/// counts it).
pub(crate) struct Hub {
    log: Mutex<Log>,
    /// Wakes readers that block a thread ([`Events::blocking_recv`]).
    grown: Condvar,
}

#[derive(Default)]
struct Log {
    events: VecDeque<Event>,
    /// The number of `events[0]`.
    first: u64,
    next_reader: u64,
    /// The waker of each reader waiting for the next event, by reader.
    waiting: Vec<(u64, Waker)>,
}

fn lock(log: &Mutex<Log>) -> MutexGuard<'_, Log> {
    // No user code runs under this lock.
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    pub(crate) fn new() -> Arc<Hub> {
        Arc::new(Hub {
            log: Mutex::new(Log::default()),
            grown: Condvar::new(),
        })
    }

    pub(crate) fn emit(&self, event: Event) {
        tracing::debug!(?event, "cluster event");
        let waiting = {
            let mut log = lock(&self.log);
            if log.events.len() == HISTORY {
                log.events.pop_front();
                log.first += 1;
            }
            log.events.push_back(event);
            std::mem::take(&mut log.waiting)
        };
        self.grown.notify_all();
        let mut panicked = None;
        for (_, waker) in waiting {
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| waker.wake())) {
                panicked.get_or_insert(payload);
            }
        }
        if let Some(payload) = panicked {
            panic::resume_unwind(payload);
        }
    }

    /// A stream from the oldest event kept.
    pub(crate) fn subscribe(self: &Arc<Self>) -> Events {
        self.reader(false)
    }

    /// A stream of the events emitted from now on (no history).
    pub(crate) fn subscribe_from_now(self: &Arc<Self>) -> Events {
        self.reader(true)
    }

    fn reader(self: &Arc<Self>, from_now: bool) -> Events {
        let mut log = lock(&self.log);
        log.next_reader += 1;
        let next = if from_now {
            log.first + log.events.len() as u64
        } else {
            log.first
        };
        Events {
            hub: self.clone(),
            reader: log.next_reader,
            next,
            ended: false,
        }
    }
}

/// The cluster's events, from [`Cluster::events`](crate::Cluster::events):
/// first the recent past (up to 1024 events, from the cluster's start), then
/// each new one. Ends after [`Event::Stopped`]. A stream that falls more
/// than 1024 events behind gets [`Event::Lagged`] with the number it
/// missed, then goes on from the oldest event kept.
///
/// A `futures_core::Stream`; or call [`recv`](Events::recv) (async) or
/// [`blocking_recv`](Events::blocking_recv) (from a plain thread).
pub struct Events {
    hub: Arc<Hub>,
    reader: u64,
    /// The number of the next event to read.
    next: u64,
    ended: bool,
}

impl Events {
    /// The next event, or `None` after [`Event::Stopped`].
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_next_event(cx)).await
    }

    /// [`recv`](Events::recv) for threads that do not run async code.
    ///
    /// # Panics
    ///
    /// When called inside a tokio runtime, whose thread it would block.
    #[track_caller]
    pub fn blocking_recv(&mut self) -> Option<Event> {
        assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "Events::blocking_recv called inside a tokio runtime would block its thread; \
             use `recv().await`"
        );
        if self.ended {
            return None;
        }
        let hub = self.hub.clone();
        let mut log = lock(&hub.log);
        loop {
            if let Some(event) = self.take(&log) {
                return Some(event);
            }
            log = hub.grown.wait(log).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// [`blocking_recv`](Events::blocking_recv) with a limit, for tests and
    /// tools that must not wait forever: the next event, or
    /// `Err(RecvTimeoutError::Timeout)` if none came within `timeout`, or
    /// `Err(RecvTimeoutError::Disconnected)` after [`Event::Stopped`].
    ///
    /// ```no_run
    /// # fn f(cluster: forkless_runtime::Cluster) {
    /// use std::time::Duration;
    ///
    /// let mut events = cluster.events();
    /// while let Ok(event) = events.recv_timeout(Duration::from_secs(10)) {
    ///     println!("{event:?}");
    /// }
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// When called inside a tokio runtime, whose thread it would block.
    #[track_caller]
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Event, RecvTimeoutError> {
        assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "Events::recv_timeout called inside a tokio runtime would block its thread; \
             use `recv().await`"
        );
        if self.ended {
            return Err(RecvTimeoutError::Disconnected);
        }
        let deadline = crate::time::deadline::from_now(timeout);
        let hub = self.hub.clone();
        let mut log = lock(&hub.log);
        loop {
            if let Some(event) = self.take(&log) {
                return Ok(event);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            log = hub
                .grown
                .wait_timeout(log, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The next event in `log` for this reader, if there is one.
    fn take(&mut self, log: &Log) -> Option<Event> {
        if self.next < log.first {
            let missed = log.first - self.next;
            self.next = log.first;
            return Some(Event::Lagged { missed });
        }
        let i = usize::try_from(self.next - log.first).ok()?;
        let event = log.events.get(i)?.clone();
        self.next += 1;
        if event == Event::Stopped {
            self.ended = true;
        }
        Some(event)
    }

    fn poll_next_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let hub = self.hub.clone();
        let mut log = lock(&hub.log);
        if let Some(event) = self.take(&log) {
            return Poll::Ready(Some(event));
        }
        let reader = self.reader;
        match log.waiting.iter_mut().find(|(r, _)| *r == reader) {
            Some((_, waker)) => waker.clone_from(cx.waker()),
            None => log.waiting.push((reader, cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let reader = self.reader;
        lock(&self.hub.log).waiting.retain(|(r, _)| *r != reader);
    }
}

impl futures_core::Stream for Events {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().poll_next_event(cx)
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("next", &self.next)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// A snapshot of the cluster, from [`Cluster::status`](crate::Cluster::status).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Status {
    /// The cluster's name.
    pub name: String,
    /// How many slots the cluster has. It does not change during a rolling
    /// restart.
    pub size: usize,
    /// Whether a rolling restart is under way.
    pub rolling: bool,
    /// Whether the cluster is stopping or has stopped.
    pub stopping: bool,
    /// The process the cluster runs in.
    pub pid: u32,
    /// How long since the cluster started.
    pub uptime: Duration,
    /// One entry per slot, `0..size`: its serving generation.
    pub workers: Vec<WorkerStatus>,
    /// The store's and the bus's remote backends (Redis), if they have one;
    /// empty with the in-process backends.
    pub backends: Vec<BackendStatus>,
}

/// A remote backend of the store or the bus, in a [`Status`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendStatus {
    /// `"store"` or `"bus"`.
    pub name: &'static str,
    /// What it runs on: `"redis"`.
    pub kind: &'static str,
    /// Whether its last command was answered.
    pub reachable: bool,
    /// Commands that failed because it could not be reached or did not
    /// answer in time.
    pub failures: u64,
}

/// One slot in a [`Status`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// The slot.
    pub slot: usize,
    /// Its serving (or last) generation.
    pub generation: u64,
    /// The core it is pinned to.
    pub core: Option<usize>,
    /// What it is doing.
    pub state: WorkerState,
    /// When this generation started.
    pub started_at: Option<SystemTime>,
    /// How many times the slot was started again after an exit.
    pub restarts: u64,
    /// How the slot's last generation to end ended.
    pub last_exit: Option<Exit>,
    /// How many times the slot was recycled ([`Recycle`](crate::Recycle)).
    pub recycles: u64,
    /// Why it was recycled last.
    pub last_recycle: Option<RecycleReason>,
    /// Connections this generation accepted.
    pub accepted: u64,
    /// Tasks alive in its runtime, as tokio's stable metrics count them:
    /// tasks started with `tokio::spawn` on the worker. Tasks started with
    /// `spawn_local` live in the worker's `LocalSet`, which tokio does not
    /// count (nor the body itself).
    pub alive_tasks: u64,
    /// Share of time its runtime was busy over the last heartbeat period,
    /// from 0 to 1.
    pub busy_ratio: f64,
    /// How late its last heartbeat ran: the event loop's lag.
    pub loop_lag: Duration,
    /// The bytes this generation's thread holds (allocated and not freed
    /// since the generation started), when the program's global allocator
    /// is [`Counting`](crate::Counting); `None` (unknown) without it, or
    /// while no generation runs.
    pub memory: Option<u64>,
}

/// What a slot is doing, in a [`WorkerStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerState {
    /// Started, not yet ready.
    Starting,
    /// Ready and serving.
    Ready,
    /// Its event loop has not turned for `stall_timeout` or more.
    Stalled,
    /// No worker runs; the next starts after a throttling delay.
    Restarting,
    /// The slot gave up after too many quick failures.
    GaveUp,
    /// The slot ended by its restart policy, or the cluster stopped.
    Stopped,
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Stalled => "stalled",
            WorkerState::Restarting => "restarting",
            WorkerState::GaveUp => "gave up",
            WorkerState::Stopped => "stopped",
        })
    }
}

/// What the master publishes of one slot for [`Status`]; the figures come
/// from the worker's live stats when `status()` is called.
#[derive(Clone)]
pub(crate) struct SlotView {
    pub(crate) slot: usize,
    pub(crate) generation: u64,
    pub(crate) core: Option<usize>,
    pub(crate) state: WorkerState,
    pub(crate) started_at: Option<SystemTime>,
    pub(crate) restarts: u64,
    pub(crate) last_exit: Option<Exit>,
    pub(crate) recycles: u64,
    pub(crate) last_recycle: Option<RecycleReason>,
    pub(crate) stats: Option<Arc<forkless_worker::rt::host::WorkerStats>>,
}

/// The master's published view of the cluster.
#[derive(Clone, Default)]
pub(crate) struct View {
    pub(crate) size: usize,
    pub(crate) rolling: bool,
    pub(crate) stopping: bool,
    pub(crate) slots: Vec<SlotView>,
}

impl View {
    /// The view of a cluster whose master has ended: nothing runs.
    pub(crate) fn mark_stopped(&mut self) {
        self.stopping = true;
        self.rolling = false;
        for slot in &mut self.slots {
            slot.state = WorkerState::Stopped;
            slot.started_at = None;
            slot.stats = None;
        }
    }

    pub(crate) fn status(&self, name: &str) -> Status {
        use std::sync::atomic::Ordering::Relaxed;
        Status {
            name: name.to_owned(),
            size: self.size,
            rolling: self.rolling,
            stopping: self.stopping,
            pid: std::process::id(),
            uptime: Duration::ZERO,
            backends: Vec::new(),
            workers: self
                .slots
                .iter()
                .map(|s| {
                    let stat = |f: fn(&forkless_worker::rt::host::WorkerStats) -> u64| {
                        s.stats.as_ref().map_or(0, |st| f(st))
                    };
                    WorkerStatus {
                        slot: s.slot,
                        generation: s.generation,
                        core: s.core,
                        state: s.state,
                        started_at: s.started_at,
                        restarts: s.restarts,
                        last_exit: s.last_exit.clone(),
                        recycles: s.recycles,
                        last_recycle: s.last_recycle.clone(),
                        accepted: stat(|st| st.accepted.load(Relaxed)),
                        alive_tasks: stat(|st| st.alive_tasks.load(Relaxed)),
                        busy_ratio: stat(|st| st.busy_permille.load(Relaxed)) as f64 / 1000.0,
                        loop_lag: Duration::from_micros(stat(|st| st.lag_micros.load(Relaxed))),
                        memory: s.stats.as_deref().and_then(crate::alloc::live_bytes),
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod hub_tests {
    use super::*;

    #[test]
    fn a_late_or_slow_reader_sees_what_is_kept_and_how_much_it_missed() {
        let hub = Hub::new();
        let mut early = hub.subscribe();
        for slot in 0..HISTORY + 10 {
            hub.emit(Event::GaveUp { slot, failures: 1 });
        }
        assert_eq!(early.blocking_recv(), Some(Event::Lagged { missed: 10 }));
        assert_eq!(
            early.blocking_recv(),
            Some(Event::GaveUp {
                slot: 10,
                failures: 1
            })
        );
        let mut late = hub.subscribe();
        assert_eq!(
            late.blocking_recv(),
            Some(Event::GaveUp {
                slot: 10,
                failures: 1
            })
        );
        hub.emit(Event::Stopped);
        let rest: Vec<Event> = std::iter::from_fn(|| late.blocking_recv()).collect();
        assert_eq!(rest.len(), HISTORY);
        assert_eq!(rest.last(), Some(&Event::Stopped));
        assert_eq!(late.blocking_recv(), None, "ends after Stopped");
        assert_eq!(
            late.recv_timeout(Duration::from_secs(60)),
            Err(RecvTimeoutError::Disconnected)
        );
        let mut waiting = hub.subscribe();
        while waiting.recv_timeout(Duration::ZERO).is_ok() {}
        assert_eq!(
            waiting.recv_timeout(Duration::from_millis(1)),
            Err(RecvTimeoutError::Disconnected),
            "it read up to Stopped"
        );
        let quiet = Hub::new();
        assert_eq!(
            quiet.subscribe().recv_timeout(Duration::from_millis(1)),
            Err(RecvTimeoutError::Timeout)
        );
    }
}
