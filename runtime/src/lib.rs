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

mod backend;
mod body;
mod builder;
mod bus;
mod clock;
mod cluster;
mod control;
mod deadline;
mod env;
mod events;
mod exit;
mod guard;
mod master;
mod metrics;
#[cfg(feature = "redis")]
mod redis;
mod registry;
mod signals;
mod store;
mod systemd;
mod worker_thread;

pub use backend::Backend;
pub use body::BodyResult;
pub use builder::{Builder, Restart, TaskPanic};
pub use cluster::{Cluster, GenerationReport, Report, SlotReport};
pub use control::default_control_socket;
pub use events::{BackendStatus, Event, Events, Status, WorkerState, WorkerStatus};
pub use exit::Exit;
#[cfg(feature = "redis")]
pub use redis::RedisConfig;
