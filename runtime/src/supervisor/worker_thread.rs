//! A slot's worker thread: named `forkless-w{slot}`, pinned to the slot's
//! core, it runs one generation at a time, each a fresh tokio
//! `current_thread` runtime with a `LocalSet`, inside `catch_unwind`.
//!
//! Between generations the thread waits for the next one ([`Thread::run`]),
//! so a respawn reuses the thread of the generation that returned instead of
//! starting one: each new thread's stack would otherwise go to glibc's cache
//! of dead threads' stacks (up to 40 MiB), which is how `hello` grew from
//! 5.9 MB to 42 MB of RSS over 500 panics. A new thread is started only when
//! none is free (the first generation, a rolling restart's candidate, or
//! after a generation hung and its thread was abandoned).

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use forkless_worker::rt::host::WorkerStats;
use forkless_worker::Worker;
use tokio::sync::{oneshot, Notify};
use tokio::task::LocalSet;

use crate::config::body::Factory;
use crate::config::policies::TaskPanic;
use crate::fault::exit::{
    capture_panics_on_this_thread, panicked, take_panics, watch_panics_on_this_thread, Exit,
};
use crate::supervisor::shared::Msg;

pub(crate) struct Generation {
    /// The address of the cluster's `Shared`, to recognise it.
    pub(crate) cluster: usize,
    pub(crate) slot: usize,
    pub(crate) generation: u64,
    pub(crate) core: Option<usize>,
    pub(crate) factory: Factory,
    pub(crate) worker: Worker,
    pub(crate) terminate: oneshot::Receiver<()>,
    pub(crate) tx: Sender<Msg>,
    pub(crate) stats: Arc<WorkerStats>,
    /// The heartbeat's period.
    pub(crate) beat: Duration,
    /// The cluster's start, which heartbeats count from.
    pub(crate) epoch: Instant,
    pub(crate) task_panic: TaskPanic,
    pub(crate) shared: Arc<crate::supervisor::shared::Shared>,
}

/// A slot's worker thread, as the master holds it: it runs the generations
/// it is given, one at a time, and ends once this handle is dropped while it
/// waits for the next.
pub(crate) struct Thread {
    jobs: std::sync::mpsc::Sender<Box<Generation>>,
}

impl Thread {
    /// Runs `generation` on a new thread.
    pub(crate) fn spawn(generation: Box<Generation>) -> io::Result<Thread> {
        let (jobs, next) = std::sync::mpsc::channel::<Box<Generation>>();
        thread::Builder::new()
            .name(format!("forkless-w{}", generation.slot))
            .spawn(move || {
                let mut job = Some(generation);
                while let Some(generation) = job {
                    let (slot, number, tx) = (
                        generation.slot,
                        generation.generation,
                        generation.tx.clone(),
                    );
                    // `run_body` catches the body's panics; one around it (a
                    // tracing layer, a `Drop` of what the generation held)
                    // is reported as its exit too, and the thread goes on:
                    // the master always hears how a generation ended.
                    let exit = panic::catch_unwind(AssertUnwindSafe(|| run(*generation)))
                        .unwrap_or_else(|payload| {
                            Exit::Failed(format!(
                                "the worker's thread panicked outside its body: {}",
                                crate::fault::exit::message(&*payload)
                            ))
                        });
                    let _ = tx.send(Msg::Exited {
                        slot,
                        generation: number,
                        exit,
                    });
                    job = next.recv().ok();
                }
            })?;
        Ok(Thread { jobs })
    }

    /// Runs `generation` on this thread once its current generation has
    /// returned. Gives `generation` back if the thread has ended.
    pub(crate) fn run(&self, generation: Box<Generation>) -> Result<(), Box<Generation>> {
        self.jobs.send(generation).map_err(|e| e.0)
    }
}

/// Runs one generation, and returns how it ended once everything it held is
/// dropped.
fn run(mut g: Generation) -> Exit {
    let span = tracing::info_span!(
        "worker",
        slot = g.slot,
        generation = g.generation,
        core = g.core
    );
    let _span = span.enter();
    if let Some(core) = g.core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            tracing::warn!(core, "cannot pin the worker to its core");
        }
    }
    // What an earlier generation on this thread left is not this one's:
    // its recorded panics, and its Redis connections (driven by its runtime,
    // which is gone).
    capture_panics_on_this_thread();
    #[cfg(feature = "redis")]
    crate::redis::forget_this_threads_connections();
    forkless_worker::rt::mark_tokio_timer_thread();
    crate::current::set_cluster(g.cluster);
    // This generation's memory counts from here, until its body and its
    // runtime are dropped (`run_body` returns): `Counting`, if it is the
    // global allocator, adds this thread's allocations to it.
    let _memory = crate::alloc::bind(g.stats.clone());
    let terminate = std::mem::replace(&mut g.terminate, oneshot::channel().1);
    run_body(&g, terminate)
}

/// How the body's run ended, short of a panic of its own.
enum Ended {
    Body(Result<(), String>),
    Terminated,
    TaskPanicked(String, Option<String>),
}

fn run_body(g: &Generation, terminate: oneshot::Receiver<()>) -> Exit {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Exit::Failed(format!("cannot build the worker's runtime: {e}")),
    };
    let local = LocalSet::new();
    let panics = Arc::new(Notify::new());
    watch_panics_on_this_thread(panics.clone());
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let body = (g.factory)(g.worker.clone());
        rt.block_on(local.run_until(async {
            let lag = {
                let (shared, slot) = (g.shared.clone(), g.slot);
                move |lag| shared.metrics.observe_lag(slot, lag)
            };
            tokio::task::spawn_local(heartbeat(g.stats.clone(), g.beat, g.epoch, lag));
            tokio::select! {
                biased;
                _ = terminate => Ended::Terminated,
                (message, location) = watch_task_panics(g, &panics) => {
                    Ended::TaskPanicked(message, location)
                }
                result = body => Ended::Body(result),
            }
        }))
    }));
    // The body's own panic is read now: a task whose `Drop` panics below
    // must not change how the body ended, nor where it panicked.
    let outcome = outcome.map_err(|payload| panicked(&*payload));
    // Drop the tasks the body spawned while their runtime is still there.
    {
        let _enter = rt.enter();
        let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(local)));
    }
    // Do not wait for `spawn_blocking` work: it may never end.
    rt.shutdown_background();
    match outcome {
        Ok(Ended::Body(Ok(()))) => Exit::Normal,
        Ok(Ended::Body(Err(message))) => Exit::Failed(message),
        Ok(Ended::Terminated) => Exit::Terminated,
        Ok(Ended::TaskPanicked(message, location)) => Exit::Panicked {
            message: format!("a task panicked: {message}"),
            location,
        },
        Err(exit) => exit,
    }
}

/// Reports each panic of a spawned task to the master; with
/// [`TaskPanic::CrashWorker`], resolves with the first one, which ends the
/// worker. (A panic of the body itself unwinds out of `block_on` before this
/// runs again, so it is never taken for a task's.)
async fn watch_task_panics(g: &Generation, panics: &Notify) -> (String, Option<String>) {
    loop {
        panics.notified().await;
        for (message, location) in take_panics() {
            tracing::error!(%message, location = location.as_deref().unwrap_or("?"), "a task panicked");
            let _ = g.tx.send(Msg::TaskPanicked {
                slot: g.slot,
                generation: g.generation,
                message: message.clone(),
                location: location.clone(),
            });
            if g.task_panic == TaskPanic::CrashWorker {
                return (message, location);
            }
        }
    }
}

/// Beats every `period`: the time of the beat (for the master's stall
/// watchdog), how late it ran (the loop's lag), the runtime's busy share and
/// its alive tasks.
async fn heartbeat(
    stats: Arc<WorkerStats>,
    period: Duration,
    epoch: Instant,
    observe_lag: impl Fn(Duration),
) {
    let handle = tokio::runtime::Handle::current();
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_busy = handle.metrics().worker_total_busy_duration(0);
    let mut last_at = Instant::now();
    loop {
        let scheduled = interval.tick().await;
        let lag = tokio::time::Instant::now().saturating_duration_since(scheduled);
        observe_lag(lag);
        let metrics = handle.metrics();
        let busy = metrics.worker_total_busy_duration(0);
        let wall = last_at.elapsed();
        if !wall.is_zero() {
            let share = busy.saturating_sub(last_busy).as_secs_f64() / wall.as_secs_f64();
            stats
                .busy_permille
                .store((share * 1000.0).clamp(0.0, 1000.0) as u64, Relaxed);
        }
        last_busy = busy;
        last_at = Instant::now();
        stats
            .alive_tasks
            .store(metrics.num_alive_tasks() as u64, Relaxed);
        stats
            .lag_micros
            .store(lag.as_micros().try_into().unwrap_or(u64::MAX), Relaxed);
        stats.last_beat.store(
            epoch.elapsed().as_micros().try_into().unwrap_or(u64::MAX),
            Relaxed,
        );
    }
}
