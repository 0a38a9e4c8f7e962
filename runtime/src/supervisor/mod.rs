//! The supervisor: the master thread and the slots it owns.
//!
//! A slot has at most one *current* generation (the one serving), during a
//! rolling restart one *candidate* (the next one, not yet ready), and any
//! number of *draining* ones (asked to stop, finishing their work). All of
//! them share the slot's sockets, so a connection queued there is served by
//! whichever accepts it.
//!
//! - [`cluster`]: the public handle and what the handles, the workers and
//!   the master share.
//! - [`master`]: the master thread: start-up, its loop over messages and
//!   timers, the published status, the report.
//! - `slot`: a slot's service state (one enum) and its live generations.
//! - `generations`: spawning a generation, ready, exit, respawn.
//! - `policy`: the restart policy as a pure function, tested row by row.
//! - `replace`: the gated replacement (candidate, then the old generation
//!   stops), one at a time, that `roll` and `recycle` share.
//! - `roll`, `recycle`, `resize`, `stop`, `watchdog`: the rolling restart,
//!   recycling, resizing, the stop sequence, the stall watchdog (and
//!   systemd's).
//! - [`upgrade`]: a new process of the program takes over the sockets and
//!   the store.
//! - [`worker_thread`]: a slot's thread, running one generation at a time.
//! - [`systemd`]: `sd_notify` (ready, reloading, stopping, the watchdog).

pub(crate) mod cluster;
mod generations;
mod handover;
pub(crate) mod master;
mod plan;
mod policy;
mod ready;
mod recycle;
mod replace;
pub(crate) mod report;
mod resize;
mod roll;
pub(crate) mod shared;
mod slot;
mod stop;
pub(crate) mod systemd;
pub(crate) mod upgrade;
mod watchdog;
pub(crate) mod worker_thread;

pub(crate) use master::start;
