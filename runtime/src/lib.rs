//! The master of a forkless cluster: the [`Builder`], the supervisor, the
//! worker threads and the listener registry.
//!
//! Applications use the `forkless` facade, which re-exports this crate; the
//! model, with examples, is explained there.
//!
//! A [`Cluster`] is a master thread (`forkless-master`) and one thread per
//! slot (`forkless-w{slot}`), pinned to a core, running a `current_thread`
//! tokio runtime with a `LocalSet`. The master owns each slot's listening
//! sockets and hands workers duplicates of them, runs every generation of a
//! worker inside `catch_unwind`, classifies how it ended ([`Exit`]), respawns
//! it by the [`Restart`] policy with throttling, and stops the cluster
//! gracefully, then by force. The worker side of this boundary lives in
//! `forkless-worker`.
#![doc(test(attr(deny(warnings), allow(dead_code, unused_variables))))]

// The subsystems, from the bottom up: each may use only those declared
// before it (checked by `runtime/tests/layers.rs`; ARCHITECTURE.md draws
// the map).
//
// Per-worker memory: the counting global allocator, per-generation counters.
mod alloc;
// Which cluster's worker runs on this thread.
mod current;
// Panics caught on the runtime's threads; how a generation ended.
mod fault;
// Saturating deadlines; the timer thread.
mod time;
// Events, status, metrics.
mod observe;
// The builder, `FORKLESS_*`, backends' and control's settings.
mod config;
// The listener registry; socket activation.
mod net;
// The link to Redis both Redis engines use.
#[cfg(feature = "redis")]
mod redis;
// The store's engines.
mod store;
// The bus's router and its Redis engine.
mod bus;
// The master thread, slots, generations, roll, resize, stop.
mod supervisor;
// The control server, a client of the cluster's handle.
mod control;
// `Builder::start` and `run`: the supervisor, control and signals wired.
mod launch;

pub use alloc::Counting;
pub use config::backend::Backend;
pub use config::body::BodyResult;
pub use config::builder::Builder;
pub use config::policies::{Restart, TaskPanic};
pub use config::recycle::Recycle;
#[cfg(feature = "redis")]
pub use config::redis::RedisConfig;
pub use control::default_control_socket;
pub use fault::exit::Exit;
pub use observe::events::{BackendStatus, Event, Events, Status, WorkerState, WorkerStatus};
pub use observe::recycle::RecycleReason;
pub use supervisor::cluster::Cluster;
pub use supervisor::report::{GenerationReport, Report, SlotReport};
