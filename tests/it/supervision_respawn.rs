//! Supervision: exits are classified, and slots respawn by the policy.

use std::sync::mpsc;
use std::time::Duration;

use crate::common::recv;
use forkless::{Cluster, Exit, Restart};

/// A 1-worker cluster with throttling off whose every generation reports its
/// number on the returned channel before running `body`.
fn one_worker_reporting<F, Fut>(body: F) -> (Cluster, mpsc::Receiver<u64>)
where
    F: Fn(forkless::Worker) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future + 'static,
    Fut::Output: forkless::BodyResult,
{
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(1)
        .throttle_delay(Duration::ZERO)
        .start(move |worker| {
            tx.send(worker.generation()).expect("test alive");
            body(worker)
        })
        .expect("start");
    (cluster, rx)
}

#[test]
fn a_panicking_body_respawns_in_the_same_slot_with_the_next_generation() {
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(1)
        .throttle_delay(Duration::ZERO)
        .start(move |worker| {
            let tx = tx.clone();
            async move {
                tx.send((worker.slot(), worker.generation()))
                    .expect("test alive");
                if worker.generation() == 0 {
                    panic!("boom in slot {}", worker.slot());
                }
                worker.shutdown_signal().await;
            }
        })
        .expect("start");
    assert_eq!(recv(&rx, "generation 0"), (0, 0));
    assert_eq!(recv(&rx, "generation 1"), (0, 1));
    cluster.shutdown();
    let report = cluster.join();

    let slot = &report.slots[0];
    assert_eq!(slot.generations.len(), 2, "{report}");
    match &slot.generations[0].exit {
        Exit::Panicked { message, location } => {
            assert_eq!(message, "boom in slot 0");
            let location = location.as_deref().expect("location recorded");
            assert!(location.starts_with(concat!(file!(), ":")), "{location}");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    // Throttling is off: respawned at once.
    assert_eq!(slot.generations[0].restart_delay, Some(Duration::ZERO));
    assert_eq!(slot.generations[1].exit, Exit::Normal);
    assert_eq!(report.restarts(), 1);
}

#[test]
fn an_error_return_is_a_failure_with_its_message() {
    let (cluster, rx) = one_worker_reporting(|worker| async move {
        if worker.generation() == 0 {
            return Err(std::io::Error::other("database unreachable"));
        }
        worker.shutdown_signal().await;
        Ok(())
    });
    assert_eq!(recv(&rx, "generation 0"), 0);
    assert_eq!(recv(&rx, "generation 1"), 1);
    cluster.shutdown();
    let report = cluster.join();
    assert_eq!(
        report.slots[0].generations[0].exit,
        Exit::Failed("database unreachable".into())
    );
}

#[test]
fn a_panic_in_the_factory_is_caught_too() {
    let (cluster, rx) = one_worker_reporting(|worker| {
        assert!(worker.generation() > 0, "factory refuses generation 0");
        worker.shutdown_signal()
    });
    assert_eq!(recv(&rx, "generation 0"), 0);
    assert_eq!(recv(&rx, "generation 1"), 1);
    cluster.shutdown();
    let report = cluster.join();
    assert!(matches!(
        &report.slots[0].generations[0].exit,
        Exit::Panicked { message, .. } if message.contains("factory refuses")
    ));
}

#[test]
fn never_runs_each_slot_once_and_the_cluster_ends_by_itself() {
    let report = Cluster::builder()
        .workers(2)
        .restart(Restart::Never)
        .start(|worker| async move {
            if worker.slot() == 1 {
                panic!("slot 1 fails");
            }
        })
        .expect("start")
        .join();
    assert_eq!(report.slots[0].generations.len(), 1);
    assert_eq!(report.slots[0].generations[0].exit, Exit::Normal);
    assert_eq!(report.slots[1].generations.len(), 1);
    assert!(report.slots[1].generations[0].exit.is_failure());
    assert_eq!(report.slots[0].generations[0].restart_delay, None);
}

#[test]
fn on_failure_restarts_failures_only() {
    let report = Cluster::builder()
        .workers(1)
        .restart(Restart::OnFailure)
        .throttle_delay(Duration::ZERO)
        .start(|worker| async move {
            if worker.generation() < 2 {
                Err(format!("generation {} fails", worker.generation()))
            } else {
                Ok(())
            }
        })
        .expect("start")
        .join();
    let exits: Vec<_> = report.exits().map(|(_, _, e)| e.clone()).collect();
    assert_eq!(
        exits,
        vec![
            Exit::Failed("generation 0 fails".into()),
            Exit::Failed("generation 1 fails".into()),
            Exit::Normal,
        ]
    );
}

#[test]
fn always_restarts_a_body_that_returns() {
    let (cluster, rx) = one_worker_reporting(|worker| async move {
        if worker.generation() >= 3 {
            worker.shutdown_signal().await;
        }
    });
    for generation in 0..4 {
        assert_eq!(recv(&rx, "a generation"), generation);
    }
    cluster.shutdown();
    let report = cluster.join();
    assert_eq!(report.slots[0].generations.len(), 4);
    assert!(report.exits().all(|(_, _, e)| *e == Exit::Normal));
}
