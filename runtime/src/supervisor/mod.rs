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
//! - [`master`]: the master thread's loop and its messages.
//! - [`worker_thread`]: a slot's thread, running one generation at a time.
//! - [`systemd`]: `sd_notify` (ready, reloading, stopping, the watchdog).

pub(crate) mod cluster;
pub(crate) mod master;
pub(crate) mod systemd;
pub(crate) mod worker_thread;

pub(crate) use master::start;
