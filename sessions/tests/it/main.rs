//! The integration tests of `forkless-sessions`, in one test binary: one
//! module per area (`store::...`, `bounds::...`), so that the crate is
//! linked once.

mod common;

mod bounds;
mod store;
