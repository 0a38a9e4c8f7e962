//! One generation of one worker: a named thread, pinned to its core, running a
//! tokio `current_thread` runtime with a `LocalSet`, inside `catch_unwind`.

use std::cell::Cell;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::thread;

use crossbeam_channel::Sender;
use forkless_worker::Worker;
use tokio::sync::oneshot;
use tokio::task::LocalSet;

use crate::body::Factory;
use crate::cluster::Msg;
use crate::exit::{capture_panics_on_this_thread, panicked, Exit};

thread_local! {
    /// The cluster (its `Shared`'s address) whose worker runs on this thread.
    static CLUSTER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The cluster whose worker is the current thread, if any.
pub(crate) fn current_cluster() -> Option<usize> {
    CLUSTER.with(Cell::get)
}

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
}

pub(crate) fn spawn(generation: Generation) -> io::Result<()> {
    thread::Builder::new()
        .name(format!("forkless-w{}", generation.slot))
        .spawn(move || run(generation))
        .map(drop)
}

fn run(g: Generation) {
    let span = tracing::info_span!("worker", slot = g.slot, generation = g.generation);
    let _span = span.enter();
    if let Some(core) = g.core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            tracing::warn!(core, "cannot pin the worker to its core");
        }
    }
    capture_panics_on_this_thread();
    forkless_worker::mark_tokio_timer_thread();
    CLUSTER.with(|c| c.set(Some(g.cluster)));
    let exit = run_body(g.factory, g.worker, g.terminate);
    let _ = g.tx.send(Msg::Exited {
        slot: g.slot,
        generation: g.generation,
        exit,
    });
}

fn run_body(factory: Factory, worker: Worker, terminate: oneshot::Receiver<()>) -> Exit {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Exit::Failed(format!("cannot build the worker's runtime: {e}")),
    };
    let local = LocalSet::new();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let body = factory(worker);
        rt.block_on(local.run_until(async move {
            tokio::select! {
                biased;
                _ = terminate => None,
                result = body => Some(result),
            }
        }))
    }));
    // Drop the tasks the body spawned while their runtime is still there. A
    // task whose `Drop` panics does not change how the body ended.
    {
        let _enter = rt.enter();
        let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(local)));
    }
    // Do not wait for `spawn_blocking` work: it may never end.
    rt.shutdown_background();
    match outcome {
        Ok(Some(Ok(()))) => Exit::Normal,
        Ok(Some(Err(message))) => Exit::Failed(message),
        Ok(None) => Exit::Terminated,
        Err(payload) => panicked(&*payload),
    }
}
