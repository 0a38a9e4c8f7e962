//! Stopping: graceful first, then terminate, then abandon what hangs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::common::{self, recv, serve_whoami};
use forkless::{Cluster, Exit};

#[test]
fn a_body_that_honours_the_signal_returns_normally() {
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(2)
        // Far longer than needed: a Normal exit means it returned in time.
        .shutdown_timeout(Duration::from_secs(60))
        .start(move |worker| {
            let tx = tx.clone();
            async move {
                let listener = worker.listen("127.0.0.1:0").await?;
                tx.send(()).expect("test alive");
                // `accept` returns None once the worker is asked to stop.
                serve_whoami(&worker, &listener).await?;
                assert!(worker.is_shutting_down());
                // Listening is refused from now on.
                let err = worker.listen("127.0.0.1:0").await.expect_err("stopping");
                assert!(err.is_stopped(), "{err}");
                Ok::<(), forkless::Error>(())
            }
        })
        .expect("start");
    recv(&rx, "worker 0");
    recv(&rx, "worker 1");
    cluster.shutdown();
    let report = cluster.join();
    for (slot, generation, exit) in report.exits() {
        assert_eq!(*exit, Exit::Normal, "slot {slot} generation {generation}");
    }
}

#[test]
fn a_body_that_ignores_the_signal_is_terminated_and_its_tasks_dropped() {
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(1)
        .shutdown_timeout(Duration::from_millis(100))
        .start(move |_worker| {
            let tx = tx.clone();
            async move {
                let flag = common::SendOnDrop(tx.clone());
                tokio::task::spawn_local(async move {
                    let _flag = flag;
                    std::future::pending::<()>().await;
                });
                tx.send("running").expect("test alive");
                std::future::pending::<()>().await;
            }
        })
        .expect("start");
    assert_eq!(recv(&rx, "the worker"), "running");
    cluster.shutdown();
    let report = cluster.join();
    assert_eq!(report.slots[0].generations[0].exit, Exit::Terminated);
    assert_eq!(recv(&rx, "the spawned task's drop"), "dropped");
}

#[test]
fn a_thread_stuck_in_a_blocking_loop_is_reported_hung_and_run_returns() {
    let release = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(1)
        .shutdown_timeout(Duration::from_millis(100))
        .terminate_timeout(Duration::from_millis(200))
        .start({
            let release = release.clone();
            move |_worker| {
                let release = release.clone();
                let tx = tx.clone();
                async move {
                    tx.send(()).expect("test alive");
                    // Never awaits: neither the signal nor terminate reach it.
                    while !release.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        })
        .expect("start");
    recv(&rx, "the worker");
    cluster.shutdown();
    let report = cluster.join();
    assert_eq!(report.slots[0].generations[0].exit, Exit::Hung);
    // Let the abandoned thread end.
    release.store(true, Ordering::Release);
}

/// A worker that ignores the graceful signal, a shutdown timeout of an hour,
/// and `second` called after `shutdown()`: the cluster must be terminated
/// without waiting that hour.
fn stops_without_the_graceful_wait(second: impl Fn(&Cluster)) {
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(1)
        .shutdown_timeout(Duration::from_secs(3600))
        .start(move |_worker| {
            let tx = tx.clone();
            async move {
                tx.send(()).expect("test alive");
                std::future::pending::<()>().await;
            }
        })
        .expect("start");
    recv(&rx, "the worker");
    cluster.shutdown();
    second(&cluster);
    let report = cluster
        .join_timeout(common::PATIENCE)
        .expect("terminated without the hour's wait");
    assert_eq!(report.slots[0].generations[0].exit, Exit::Terminated);
}

#[test]
fn terminate_skips_the_graceful_wait() {
    stops_without_the_graceful_wait(Cluster::terminate);
}

#[test]
fn a_second_shutdown_terminates() {
    stops_without_the_graceful_wait(Cluster::shutdown);
}
