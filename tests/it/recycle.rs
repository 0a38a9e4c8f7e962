//! Recycling ([`forkless::Recycle`]): under client load (a new connection
//! per request, and keep-alive), workers past their connection or age limit
//! are replaced one slot at a time, nothing is refused or reset, and a
//! recycle is never counted as a failure.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::common;
use crate::lifecycle_load::{
    keep_alive_client, more_answers, one_shot_client, start_line_server, Counts,
};
use forkless::{Cluster, Event, Recycle, RecycleReason, Worker};

/// A 2-worker cluster of the line server, recycled by `recycle`, with its
/// port.
fn start(recycle: Recycle) -> (Cluster, SocketAddr) {
    start_line_server(Cluster::builder().workers(2).recycle(recycle))
}

/// Two clients of each kind on `addr`, until `stop`.
fn load(
    addr: SocketAddr,
    stop: &Arc<AtomicBool>,
) -> (Arc<Counts>, Arc<Counts>, Vec<std::thread::JoinHandle<()>>) {
    let one_shot = Arc::new(Counts::default());
    let keep_alive = Arc::new(Counts::default());
    let mut clients = Vec::new();
    for i in 0..4 {
        let stop = stop.clone();
        let (one_shot, keep_alive) = (one_shot.clone(), keep_alive.clone());
        clients.push(std::thread::spawn(move || {
            if i % 2 == 0 {
                one_shot_client(addr, stop, one_shot)
            } else {
                keep_alive_client(addr, stop, keep_alive)
            }
        }));
    }
    (one_shot, keep_alive, clients)
}

/// Stops the clients and the cluster; nothing was lost.
fn finish(
    cluster: Cluster,
    stop: &AtomicBool,
    clients: Vec<std::thread::JoinHandle<()>>,
    counts: [(&str, &Counts); 2],
) {
    stop.store(true, Relaxed);
    for client in clients {
        client.join().expect("client");
    }
    let status = cluster.status();
    for worker in &status.workers {
        assert_eq!(worker.restarts, 0, "a recycle is not a restart: {worker:?}");
        assert!(worker.recycles > 0, "{worker:?}");
        assert!(worker.last_recycle.is_some(), "{worker:?}");
    }
    cluster.shutdown();
    let report = cluster.join();
    for (name, counts) in counts {
        assert_eq!(counts.failures(), 0, "{name}: nothing lost\n{report}");
    }
}

/// Waits for `n` `Recycled` events, checking that replacements never
/// overlap: after the first workers start, a generation starts only when
/// no other replacement is under way.
fn recycles(events: &mut forkless::Events, n: usize) -> Vec<(usize, RecycleReason)> {
    let mut seen = Vec::new();
    let mut starting: Option<usize> = None;
    let mut first_ready = 0;
    common::events_until(events, "recycles", |e| {
        match e {
            Event::WorkerReady { generation: 0, .. } => first_ready += 1,
            Event::WorkerStarted {
                slot, generation, ..
            } if *generation > 0 => {
                assert_eq!(first_ready, 2, "a recycle waits for the first workers");
                assert_eq!(starting, None, "one replacement at a time: {e:?}");
                starting = Some(*slot);
            }
            Event::Recycled { slot, reason } => {
                assert_eq!(starting, Some(*slot), "{e:?}");
                starting = None;
                seen.push((*slot, reason.clone()));
            }
            Event::RecycleFailed { .. } | Event::GaveUp { .. } | Event::Restarting { .. } => {
                panic!("no failure: {e:?}")
            }
            _ => {}
        }
        seen.len() >= n
    });
    seen
}

#[test]
fn workers_past_their_connection_limit_are_recycled_in_turn_and_nothing_is_lost() {
    let (cluster, addr) = start(Recycle::new().max_connections(150).jitter(0.5));
    let mut events = cluster.events();
    let stop = Arc::new(AtomicBool::new(false));
    let (one_shot, keep_alive, clients) = load(addr, &stop);
    let seen = recycles(&mut events, 6);
    let mut limits = Vec::new();
    for (slot, reason) in &seen {
        match reason {
            RecycleReason::MaxConnections { limit, accepted } => {
                assert!(
                    (150..=225).contains(limit),
                    "jitter stays in range: {limit}"
                );
                assert!(accepted >= limit, "slot {slot}: {reason}");
                limits.push(*limit);
            }
            other => panic!("slot {slot}: {other}"),
        }
    }
    assert!(seen.iter().any(|(s, _)| *s == 0) && seen.iter().any(|(s, _)| *s == 1));
    assert!(
        limits.iter().any(|l| *l != limits[0]),
        "jitter gives generations different limits: {limits:?}"
    );
    more_answers(&one_shot, 100);
    more_answers(&keep_alive, 100);
    let metrics = cluster.metrics();
    assert!(
        metrics.contains("forkless_worker_recycles_total{slot=\"0\",reason=\"max_connections\"}"),
        "{metrics}"
    );
    finish(
        cluster,
        &stop,
        clients,
        [
            ("new connection per request", &one_shot),
            ("keep-alive", &keep_alive),
        ],
    );
    // The keep-alive clients were moved to the new generations.
    assert!(keep_alive.reconnects.load(Relaxed) > 2);
}

#[test]
fn workers_past_their_age_are_recycled_one_at_a_time_and_nothing_is_lost() {
    let (cluster, addr) = start(Recycle::new().max_age(Duration::from_secs(1)));
    let mut events = cluster.events();
    let stop = Arc::new(AtomicBool::new(false));
    let (one_shot, keep_alive, clients) = load(addr, &stop);
    let seen = recycles(&mut events, 4);
    for (slot, reason) in &seen {
        match reason {
            RecycleReason::MaxAge { limit, age } => {
                assert_eq!(*limit, Duration::from_secs(1));
                assert!(age >= limit, "slot {slot}: {reason}");
            }
            other => panic!("slot {slot}: {other}"),
        }
    }
    more_answers(&one_shot, 100);
    more_answers(&keep_alive, 100);
    finish(
        cluster,
        &stop,
        clients,
        [
            ("new connection per request", &one_shot),
            ("keep-alive", &keep_alive),
        ],
    );
}

#[test]
fn a_requested_recycle_replaces_the_slot_and_bad_requests_are_refused() {
    let cluster = Cluster::builder()
        .workers(2)
        .start(|worker: Worker| async move {
            worker.ready();
            worker.shutdown_signal().await;
        })
        .expect("start");
    cluster.wait_ready(common::PATIENCE).expect("ready");
    let mut events = cluster.events();
    cluster.recycle(1).expect("recycle slot 1");
    common::events_until(&mut events, "slot 1 recycled", |e| {
        matches!(
            e,
            Event::Recycled {
                slot: 1,
                reason: RecycleReason::Requested
            }
        )
    });
    let status = cluster.status();
    assert_eq!(status.workers[1].generation, 1);
    assert_eq!(status.workers[1].recycles, 1);
    assert_eq!(status.workers[1].restarts, 0);
    assert_eq!(status.workers[0].generation, 0, "slot 0 untouched");

    let e = cluster.recycle(2).expect_err("no slot 2");
    assert!(
        e.is_config() && e.to_string().contains("slots 0 to 1"),
        "{e}"
    );
    let e = cluster.recycle(usize::MAX).expect_err("no such slot");
    assert!(e.is_config(), "{e}");
    cluster.shutdown();
    let e = cluster.recycle(0).expect_err("stopping");
    assert!(e.is_stopped(), "{e}");
    cluster.join();
}

#[test]
fn a_new_generation_that_fails_leaves_the_old_one_serving_and_counts_no_failure() {
    let cluster = Cluster::builder()
        .workers(1)
        .max_restarts(1)
        .start(|worker: Worker| async move {
            if worker.generation() > 0 {
                panic!("this build cannot start");
            }
            worker.ready();
            worker.shutdown_signal().await;
        })
        .expect("start");
    cluster.wait_ready(common::PATIENCE).expect("ready");
    let mut events = cluster.events();
    for attempt in 0..2 {
        cluster.recycle(0).expect("recycle");
        common::events_until(&mut events, "the recycle fails", |e| {
            assert!(
                !matches!(e, Event::GaveUp { .. } | Event::Restarting { .. }),
                "attempt {attempt}: {e:?}"
            );
            matches!(e, Event::RecycleFailed { slot: 0, reason, .. } if reason.contains("exited"))
        });
    }
    let status = cluster.status();
    let worker = &status.workers[0];
    assert_eq!(worker.generation, 0, "the old generation serves on");
    assert_eq!(worker.state, forkless::WorkerState::Ready);
    assert_eq!((worker.restarts, worker.recycles), (0, 0));
    common::stop(cluster);
}

/// Without `forkless::alloc::Counting` (this test binary has none), a
/// worker's memory is unknown: `max_memory` is refused at start, saying
/// what it needs.
#[test]
fn max_memory_without_the_counting_allocator_is_refused_at_start() {
    let e = Cluster::builder()
        .workers(1)
        .recycle(Recycle::new().max_memory(1 << 30))
        .start(|worker: Worker| async move { worker.shutdown_signal().await })
        .expect_err("no counting allocator");
    assert!(e.is_config(), "{e}");
    assert!(
        e.to_string().contains("max_memory") && e.to_string().contains("Counting"),
        "{e}"
    );
}
