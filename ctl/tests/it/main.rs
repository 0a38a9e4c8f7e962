//! The integration tests of `forkless-ctl`, in one test binary: one module
//! per area (a test's name starts with its module, `ctl_e2e::...`), so that
//! the crate is linked once. They drive the `hello` example, which
//! `cargo test --workspace` builds (`cargo build -p forkless --examples`
//! alone does too).
//!
//! The tests share one process and run at once: each keeps its control
//! sockets in a directory of its own.
#![allow(missing_docs)]

mod common;

mod ctl_e2e;
mod ctl_peer;
mod ctl_top;
mod ctl_upgrade;
