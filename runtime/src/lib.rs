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

// The subsystems, from the bottom up: a module imports only from those
// above it in this list (checked by `tests/layers.rs`).
mod bus;
mod config;
mod control;
mod current;
mod fault;
mod launch;
mod net;
mod observe;
#[cfg(feature = "redis")]
mod redis;
mod store;
mod supervisor;
mod time;

pub use config::backend::Backend;
pub use config::body::BodyResult;
pub use config::builder::{Builder, Restart, TaskPanic};
#[cfg(feature = "redis")]
pub use config::redis::RedisConfig;
pub use control::default_control_socket;
pub use fault::exit::Exit;
pub use observe::events::{BackendStatus, Event, Events, Status, WorkerState, WorkerStatus};
pub use supervisor::cluster::{Cluster, GenerationReport, Report, SlotReport};
