//! The one way the tests wait for a condition: poll it every few
//! milliseconds, fail naming what was awaited after a generous limit.
//! Shared by `tests/it`, `tests/alloc_counting.rs`, `ctl/tests` and
//! `sessions/tests` (each includes this file with `#[path]`).
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

/// How long any test waits for anything before it fails: long enough for
/// a busy 2-core machine compiling beside the tests.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(5);

/// Polls `f` until it gives a value, and returns it; fails, naming `what`,
/// after [`PATIENCE`].
pub fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_for_within(PATIENCE, what, f)
}

/// [`wait_for`] with its own limit.
pub fn wait_for_within<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        std::thread::sleep(POLL);
    }
}

/// Polls `done` until it holds; fails, naming `what`, after [`PATIENCE`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    wait_for(what, || done().then_some(()));
}
