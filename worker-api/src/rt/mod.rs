//! The contract between `forkless-worker` and the runtime that runs workers,
//! in the manner of `hyper::rt`: the traits a runtime implements, and the
//! constructors it calls to hand worker code its handles. Applications and
//! libraries never need it; `forkless-runtime` is its implementation.
//!
//! - [`host`]: what a worker asks of its master ([`Host`](host::Host):
//!   listening sockets, readiness, the engines) and the figures it keeps for
//!   the master ([`WorkerStats`](host::WorkerStats)).
//! - [`store`]: what a store engine implements
//!   ([`StoreBackend`](store::StoreBackend),
//!   [`CollectionBackend`](store::CollectionBackend)), and the operations,
//!   replies and grants that cross it.
//! - [`bus`]: what a bus router implements
//!   ([`BusBackend`](bus::BusBackend)), and the slot inbox
//!   ([`Mailbox`](bus::Mailbox)) both sides share. Routing (a broadcast's
//!   fan-out, topics, other hosts) is the router's.
//! - The handles' constructors ([`worker`], [`store_handle`], [`bus_handle`],
//!   [`envelope`]), the errors a runtime reports ([`Errors`]), and
//!   [`mark_tokio_timer_thread`].
//!
//! # Stability
//!
//! This module is versioned with the crate, but it is an interface between
//! two crates of one workspace: `forkless-runtime` depends on
//! `forkless-worker` with an exact version (`=`), so a change here never
//! meets a runtime it was not built with. Code outside the workspace that
//! implements these traits (a test double, an engine of its own) must pin
//! the exact version the same way.

pub mod bus;
mod error;
pub mod host;
pub mod store;

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

pub use error::Errors;

use crate::{Bus, Envelope, Store, Worker};

/// Who asks: a worker generation, whose locks the engine takes back when it
/// exits, or `None` for a handle from outside the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The worker's slot.
    pub slot: usize,
    /// The worker's generation.
    pub generation: u64,
}

/// Creates the context of generation `generation` of `slot`, pinned to
/// `core`: `shutdown` turns true when it is asked to stop; `stats` is where
/// it keeps the figures the master reads.
pub fn worker(
    slot: usize,
    generation: u64,
    core: Option<usize>,
    host: Arc<dyn host::Host>,
    shutdown: watch::Receiver<bool>,
    stats: Arc<host::WorkerStats>,
) -> Worker {
    Worker::new(slot, generation, core, host, shutdown, stats)
}

/// A store handle on `engine`, for `owner` (a worker generation, whose
/// locks the engine takes back when it exits), or `None` outside workers.
pub fn store_handle(engine: Arc<dyn store::StoreBackend>, owner: Option<Owner>) -> Store {
    Store::new(engine, owner)
}

/// A bus handle on `router`, sending as `owner`'s slot, or as nobody
/// (`None`) outside workers.
pub fn bus_handle(router: Arc<dyn bus::BusBackend>, owner: Option<Owner>) -> Bus {
    Bus::new(router, owner)
}

/// An envelope as a router delivers it: from slot `from` of host `host`
/// (`None`: this cluster), published on `topic` (`None`: sent to a slot),
/// with the way to `reply` for a request.
pub fn envelope(
    host: Option<Arc<str>>,
    from: Option<usize>,
    topic: Option<Arc<str>>,
    message: Bytes,
    reply: Option<oneshot::Sender<Bytes>>,
) -> Envelope {
    Envelope::from_host(host, from, topic, message, reply)
}

/// Marks this thread as one whose tokio runtime has a timer (a forkless
/// worker's), so that the bus's request timeouts use it; elsewhere they use
/// the router's [`alarm`](bus::BusBackend::alarm).
pub fn mark_tokio_timer_thread() {
    crate::bus::mark_tokio_timer_thread();
}
