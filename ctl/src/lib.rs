//! The parts of `forkless-ctl` that are more than a request and a table,
//! as a library so that its tests can drive them: [`top`], the live view.
//!
//! The command itself is the `forkless-ctl` binary; see its `--help`.

pub mod top;
