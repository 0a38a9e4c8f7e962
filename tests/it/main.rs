//! The integration tests of `forkless`, in one test binary: one module per
//! area (a test's name starts with its module, `store::...`,
//! `bus_conformance::redis::...`), so that the crate is linked once.
//!
//! The tests share one process and run at once on several threads, so no
//! test changes what is process-wide (environment variables that clusters
//! read, the umask, the global log subscriber): a test that needs it
//! changed runs in a child process of this binary, through
//! [`common::alone_in_a_child`] (or, in `control_security`, its own runner
//! of `#[ignore]`d children). Temporary paths and Redis prefixes are unique
//! per test, not only per process.
//!
//! The modules that need the `redis` feature (`cargo test --all-features`,
//! as `.ci/run` does) are compiled only with it.

#[macro_use]
mod common;

mod alloc_unknown;
mod bus;
mod bus_conformance;
mod chaos;
mod cluster_start;
mod control;
mod control_security;
mod example_axum;
mod example_hello;
#[cfg(feature = "redis")]
mod example_two_hosts;
mod fault_injection;
mod fault_isolation;
mod http_drain;
mod incoming_cpu;
mod lifecycle;
mod lifecycle_load;
mod listen_errors;
mod listener_queue;
mod macro_ui;
mod recycle;
#[cfg(feature = "redis")]
mod redis_backend;
#[cfg(feature = "redis")]
mod redis_upgrade;
#[cfg(feature = "redis")]
mod secrets;
mod sessions_conformance;
mod shutdown;
mod store;
mod store_concurrent;
mod store_conformance;
mod store_limits;
mod store_model;
mod store_node_bugs;
mod supervision_respawn;
mod supervision_throttle;
mod systemd;
mod upgrade;
mod upgrade_faults;
mod worker_local;
