//! What runs on this thread: the cluster whose worker it is, if any. Set by
//! a slot's thread before it runs a generation; read by the Redis link (a
//! worker thread gets connections of its own) and by the cluster's handle
//! (a worker must not wait for its own cluster's end).

use std::cell::Cell;

thread_local! {
    /// The cluster (its `Shared`'s address) whose worker runs on this thread.
    static CLUSTER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The cluster whose worker is the current thread, if any.
pub(crate) fn cluster() -> Option<usize> {
    CLUSTER.with(Cell::get)
}

/// From now on this thread runs workers of `cluster`.
pub(crate) fn set_cluster(cluster: usize) {
    CLUSTER.with(|c| c.set(Some(cluster)));
}
