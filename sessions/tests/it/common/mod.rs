//! What the session store's tests share: a one-worker cluster to hold the
//! store, and a runtime to await it from a test thread.
#![allow(dead_code)]

use forkless::Cluster;

#[path = "../../../../tests/support/wait.rs"]
mod wait;
pub(crate) use wait::wait_until;

pub(crate) fn cluster() -> Cluster {
    Cluster::builder()
        .workers(1)
        .start(|w: forkless::Worker| async move { w.shutdown_signal().await })
        .expect("start")
}

pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}
