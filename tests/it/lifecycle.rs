//! Lifecycle control: events, status, rolling restart, resize, stall
//! watchdog, task panic policy, bad input.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use crate::common::{self, ask, events_until, recv};
use forkless::{Cluster, Event, Exit, TaskPanic, Worker, WorkerState};

/// A cluster whose workers answer `"{slot} {generation}\n"` on a shared
/// port; returns the port once slot 0 listens.
fn whoami_cluster(builder: forkless::Builder) -> (Cluster, SocketAddr) {
    let (tx, rx) = mpsc::channel();
    let cluster = builder
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                let listener = worker.listen("127.0.0.1:0").await?;
                let _ = tx.send(listener.local_addr()?);
                common::serve_whoami(&worker, &listener).await
            }
        })
        .expect("start");
    let addr = recv(&rx, "a listener");
    (cluster, addr)
}

fn stop(cluster: Cluster) -> forkless::Report {
    cluster.shutdown();
    cluster.join()
}

#[test]
fn a_rolling_restart_readies_each_new_generation_before_stopping_the_old() {
    let (cluster, _addr) = whoami_cluster(Cluster::builder().workers(2));
    let mut events = cluster.events();
    let mut ready = std::collections::HashSet::new();
    events_until(&mut events, "both ready", |e| {
        if let Event::WorkerReady { slot, .. } = e {
            ready.insert(*slot);
        }
        ready.len() == 2
    });
    cluster.restart().expect("restart");
    let seen = events_until(&mut events, "the roll's end", |e| {
        matches!(e, Event::RollFinished { .. })
    });
    assert!(seen.contains(&Event::RollStarted { slots: 2 }), "{seen:#?}");
    assert_eq!(
        seen.last(),
        Some(&Event::RollFinished {
            restarted: 2,
            completed: true
        })
    );
    // Per slot: the new generation is ready before the old one ends, and
    // slot 0 is done before slot 1 starts.
    let at = |pred: &dyn Fn(&Event) -> bool| {
        seen.iter()
            .position(pred)
            .unwrap_or_else(|| panic!("missing event in {seen:#?}"))
    };
    for slot in 0..2 {
        let ready =
            at(&|e| matches!(e, Event::WorkerReady { slot: s, generation: 1, .. } if *s == slot));
        let started =
            at(&|e| matches!(e, Event::WorkerStarted { slot: s, generation: 1, .. } if *s == slot));
        assert!(started < ready);
        if let Some(exited) = seen.iter().position(
            |e| matches!(e, Event::WorkerExited { slot: s, generation: 0, .. } if *s == slot),
        ) {
            assert!(ready < exited, "slot {slot}: {seen:#?}");
        }
    }
    let slot1_started = at(&|e| {
        matches!(
            e,
            Event::WorkerStarted {
                slot: 1,
                generation: 1,
                ..
            }
        )
    });
    let slot0_ready = at(&|e| {
        matches!(
            e,
            Event::WorkerReady {
                slot: 0,
                generation: 1,
                ..
            }
        )
    });
    assert!(slot0_ready < slot1_started, "one slot at a time: {seen:#?}");

    let status = cluster.status();
    assert_eq!(status.size, 2);
    assert!(
        status.workers.iter().all(|w| w.generation == 1),
        "{status:?}"
    );
    let report = stop(cluster);
    for slot in &report.slots {
        assert_eq!(slot.generations[0].exit, Exit::Normal, "{report}");
    }
}

#[test]
fn a_new_generation_that_crashes_or_is_not_ready_stops_the_roll_and_the_old_serves_on() {
    // Generations after the first panic before they are ready.
    let (cluster, addr) = {
        let (tx, rx) = mpsc::channel();
        let cluster = Cluster::builder()
            .workers(1)
            .start(move |worker: Worker| {
                let tx = tx.clone();
                async move {
                    if worker.generation() > 0 {
                        panic!("the new code is broken");
                    }
                    let listener = worker.listen("127.0.0.1:0").await?;
                    let _ = tx.send(listener.local_addr()?);
                    common::serve_whoami(&worker, &listener).await
                }
            })
            .expect("start");
        (cluster, recv(&rx, "a listener"))
    };
    let mut events = cluster.events();
    cluster.restart().expect("restart");
    let seen = events_until(&mut events, "the roll's end", |e| {
        matches!(e, Event::RollFinished { .. })
    });
    assert!(
        seen.iter().any(|e| matches!(e, Event::RollFailed { slot: 0, generation: 1, reason } if reason.contains("the new code is broken"))),
        "{seen:#?}"
    );
    assert_eq!(
        seen.last(),
        Some(&Event::RollFinished {
            restarted: 0,
            completed: false
        })
    );
    assert_eq!(ask(addr), "0 0\n", "the old generation serves on");
    assert_eq!(cluster.status().workers[0].generation, 0);
    stop(cluster);

    // Not ready in time: never listens.
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(1)
        .ready_timeout(Duration::from_millis(200))
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                if worker.generation() > 0 {
                    worker.shutdown_signal().await;
                    return Ok(());
                }
                let listener = worker.listen("127.0.0.1:0").await?;
                let _ = tx.send(listener.local_addr()?);
                common::serve_whoami(&worker, &listener).await
            }
        })
        .expect("start");
    let addr = recv(&rx, "a listener");
    let mut events = cluster.events();
    cluster.restart().expect("restart");
    let seen = events_until(&mut events, "the roll's end", |e| {
        matches!(e, Event::RollFinished { .. })
    });
    assert!(
        seen.iter().any(
            |e| matches!(e, Event::RollFailed { reason, .. } if reason.contains("ready_timeout"))
        ),
        "{seen:#?}"
    );
    assert_eq!(ask(addr), "0 0\n", "the old generation serves on");
    stop(cluster);
}

#[test]
fn restarts_requested_during_a_roll_are_merged_into_it() {
    let (go_tx, go_rx) = mpsc::channel::<tokio::sync::oneshot::Sender<()>>();
    let cluster = Cluster::builder()
        .workers(1)
        .start(move |worker: Worker| {
            let go_tx = go_tx.clone();
            async move {
                if worker.generation() == 1 {
                    // Hold the roll until the test has asked again.
                    let (go, wait) = tokio::sync::oneshot::channel();
                    go_tx.send(go).expect("test alive");
                    wait.await.ok();
                }
                worker.ready();
                worker.shutdown_signal().await;
            }
        })
        .expect("start");
    let mut events = cluster.events();
    cluster.restart().expect("restart");
    let go = recv(&go_rx, "generation 1 waiting");
    cluster.restart().expect("a second restart");
    cluster.restart().expect("a third restart");
    assert!(cluster.status().rolling);
    go.send(()).expect("generation 1 alive");
    let seen = events_until(&mut events, "the roll's end", |e| {
        matches!(e, Event::RollFinished { .. })
    });
    // Stop, then check that no second roll started.
    let report = stop(cluster);
    let rolls = seen
        .iter()
        .chain(
            std::iter::from_fn(|| events.blocking_recv())
                .collect::<Vec<_>>()
                .iter(),
        )
        .filter(|e| matches!(e, Event::RollStarted { .. }))
        .count();
    assert_eq!(rolls, 1, "{report}");
    assert_eq!(report.slots[0].started, 2, "{report}");
}

#[test]
fn the_cluster_grows_and_shrinks_and_retired_slots_stop_gracefully() {
    let (cluster, addr) = whoami_cluster(Cluster::builder().workers(1));
    let mut events = cluster.events();
    cluster.resize(3).expect("grow");
    let seen = events_until(&mut events, "slot 2 ready", |e| {
        matches!(e, Event::WorkerReady { slot: 2, .. })
    });
    assert!(
        seen.contains(&Event::Resized { from: 1, to: 3 }),
        "{seen:#?}"
    );
    let status = cluster.status();
    assert_eq!(status.size, 3);
    assert_eq!(status.workers.len(), 3);
    assert_eq!(cluster.bus().size(), 3);

    cluster.resize(1).expect("shrink");
    let mut exited = std::collections::HashSet::new();
    let seen = events_until(&mut events, "slots 1 and 2 to end", |e| {
        if let Event::WorkerExited { slot, exit, .. } = e {
            assert_eq!(*exit, Exit::Normal, "a retired worker stops gracefully");
            exited.insert(*slot);
        }
        exited.len() == 2
    });
    assert!(
        seen.contains(&Event::Resized { from: 3, to: 1 }),
        "{seen:#?}"
    );
    assert_eq!(cluster.status().size, 1);
    assert!(cluster
        .bus()
        .try_send(2, "x")
        .unwrap_err()
        .is_no_such_slot());
    // Every connection is answered, whichever socket the kernel picks: the
    // retired slots' sockets are served by slot 0 now.
    for _ in 0..50 {
        assert_eq!(ask(addr), "0 0\n");
    }
    // Slot 1 comes back with its socket.
    cluster.resize(2).expect("grow again");
    events_until(&mut events, "slot 1 back", |e| {
        matches!(e, Event::WorkerReady { slot: 1, .. })
    });
    assert_eq!(cluster.status().workers[1].generation, 1);
    stop(cluster);
}

#[test]
fn bad_requests_are_clear_errors() {
    let (cluster, _addr) = whoami_cluster(Cluster::builder().workers(1));
    let e = cluster.resize(0).unwrap_err();
    assert!(e.is_config() && e.to_string().contains("resize(0)"), "{e}");
    let e = cluster.resize(100_000).unwrap_err();
    assert!(e.is_config(), "{e}");
    cluster.shutdown();
    let e = cluster.restart().unwrap_err();
    assert!(e.is_stopped(), "a roll while stopping: {e}");
    let e = cluster.resize(2).unwrap_err();
    assert!(e.is_stopped(), "{e}");
    cluster.join();
    assert!(cluster.restart().unwrap_err().is_stopped());

    for (builder, name) in [
        (
            Cluster::builder().ready_timeout(Duration::ZERO),
            "ready_timeout",
        ),
        (
            Cluster::builder().stall_timeout(Duration::from_millis(1)),
            "stall_timeout",
        ),
        (Cluster::builder().workers(5000), "workers"),
    ] {
        let e = builder.start(|_w: Worker| async {}).unwrap_err();
        assert!(e.is_config() && e.to_string().contains(name), "{e}");
    }
}

#[test]
fn a_blocked_worker_is_reported_stalled_then_recovered() {
    let stall = Duration::from_secs(1);
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(1)
        .stall_timeout(stall)
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                worker.ready();
                // Let a heartbeat run first.
                tokio::time::sleep(Duration::from_millis(300)).await;
                tx.send(()).expect("test alive");
                // Blocking code in async: the loop stops turning.
                std::thread::sleep(stall * 3);
                worker.shutdown_signal().await;
            }
        })
        .expect("start");
    let mut events = cluster.events();
    recv(&rx, "the worker about to block");
    let seen = events_until(&mut events, "the stall", |e| {
        matches!(e, Event::Stalled { .. })
    });
    match seen.last() {
        Some(Event::Stalled {
            slot: 0,
            generation: 0,
            silent_for,
        }) => assert!(
            *silent_for <= stall * 2,
            "reported within 2x stall_timeout: {silent_for:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(cluster.status().workers[0].state, WorkerState::Stalled);
    events_until(&mut events, "the recovery", |e| {
        matches!(e, Event::Recovered { slot: 0, .. })
    });
    assert_eq!(cluster.status().workers[0].state, WorkerState::Ready);
    stop(cluster);
}

#[test]
fn task_panics_are_isolated_or_crash_the_worker_by_policy() {
    for policy in [TaskPanic::Isolate, TaskPanic::CrashWorker] {
        let (tx, rx) = mpsc::channel();
        let cluster = Cluster::builder()
            .workers(1)
            .throttle_delay(Duration::ZERO)
            .task_panic(policy)
            .start(move |worker: Worker| {
                let tx = tx.clone();
                async move {
                    worker.ready();
                    if worker.generation() == 0 {
                        let task = tokio::task::spawn_local(async { panic!("a task broke") });
                        let _ = task.await;
                        tx.send("survived").expect("test alive");
                    }
                    worker.shutdown_signal().await;
                }
            })
            .expect("start");
        let mut events = cluster.events();
        let seen = events_until(&mut events, "the task's panic", |e| {
            matches!(e, Event::TaskPanicked { .. })
        });
        match seen.last() {
            Some(Event::TaskPanicked {
                slot: 0,
                generation: 0,
                message,
                location,
            }) => {
                assert_eq!(message, "a task broke");
                assert!(
                    location
                        .as_deref()
                        .is_some_and(|l| l.contains("lifecycle.rs")),
                    "{location:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        match policy {
            TaskPanic::Isolate => {
                assert_eq!(recv(&rx, "the worker goes on"), "survived");
                assert_eq!(cluster.status().workers[0].generation, 0);
            }
            _ => {
                let seen = events_until(&mut events, "the worker's exit", |e| {
                    matches!(e, Event::WorkerExited { .. })
                });
                match seen.last() {
                    Some(Event::WorkerExited {
                        exit: Exit::Panicked { message, .. },
                        ..
                    }) => assert_eq!(message, "a task panicked: a task broke"),
                    other => panic!("{other:?}"),
                }
                events_until(&mut events, "generation 1", |e| {
                    matches!(e, Event::WorkerReady { generation: 1, .. })
                });
            }
        }
        stop(cluster);
    }
}

#[test]
fn events_arrive_in_order_from_start_to_stop_and_status_has_figures() {
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(2)
        .throttle_delay(Duration::ZERO)
        .stall_timeout(Duration::from_millis(40))
        .task_panic(TaskPanic::CrashWorker)
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                // A task on the runtime: tokio's alive-task count sees it
                // (tasks on the worker's LocalSet it does not count).
                let task = tokio::spawn(std::future::pending::<()>());
                // "crash" on the bus crashes the worker.
                let mut inbox = worker.inbox();
                tokio::task::spawn_local(async move {
                    while let Some(e) = inbox.recv().await {
                        assert!(e.message() != "crash", "crash requested");
                    }
                });
                let listener = worker.listen("127.0.0.1:0").await?;
                let _ = tx.send(listener.local_addr()?);
                let served = common::serve_whoami(&worker, &listener).await;
                task.abort();
                served
            }
        })
        .expect("start");
    let addr = recv(&rx, "a listener");
    for _ in 0..20 {
        ask(addr);
    }
    // Wait until a heartbeat has published figures.
    let status = common::wait_for("a heartbeat's figures from every ready worker", || {
        let status = cluster.status();
        status
            .workers
            .iter()
            .all(|w| w.alive_tasks > 0 && w.state == WorkerState::Ready)
            .then_some(status)
    });
    assert_eq!(status.size, 2);
    assert_eq!(status.workers.iter().map(|w| w.accepted).sum::<u64>(), 20);
    for w in &status.workers {
        assert_eq!(w.state, WorkerState::Ready);
        assert!((0.0..=1.0).contains(&w.busy_ratio), "{w:?}");
        assert!(w.started_at.is_some() && w.restarts == 0 && w.last_exit.is_none());
    }
    let mut events = cluster.events();
    common::now(cluster.bus().send(0, "crash")).expect("send");
    events_until(&mut events, "slot 0 back after its crash", |e| {
        matches!(
            e,
            Event::WorkerReady {
                slot: 0,
                generation: 1,
                ..
            }
        )
    });
    cluster.restart().expect("roll");
    events_until(&mut events, "the roll", |e| {
        matches!(e, Event::RollFinished { .. })
    });
    cluster.resize(1).expect("shrink");
    events_until(&mut events, "the shrink", |e| {
        matches!(e, Event::Resized { .. })
    });
    let report = stop(cluster.clone());
    let all: Vec<Event> = std::iter::from_fn(|| events.blocking_recv()).collect();
    assert_eq!(all.last(), Some(&Event::Stopped), "{report}");
    assert!(all.contains(&Event::Stopping { terminate: false }));

    // The whole history, from a stream taken now: a valid order per slot
    // and generation (started, then ready, then exited), every generation
    // exits once, and Stopping comes before the last exits.
    let mut history = cluster.events();
    let all: Vec<Event> = std::iter::from_fn(|| history.blocking_recv()).collect();
    let mut states = std::collections::HashMap::new();
    for e in &all {
        match e {
            Event::WorkerStarted {
                slot, generation, ..
            } => {
                assert!(
                    states.insert((*slot, *generation), "started").is_none(),
                    "{all:#?}"
                );
            }
            Event::WorkerReady {
                slot, generation, ..
            } => {
                assert_eq!(
                    states.insert((*slot, *generation), "ready"),
                    Some("started")
                );
            }
            Event::WorkerExited {
                slot, generation, ..
            } => {
                let before = states.insert((*slot, *generation), "exited");
                assert!(matches!(before, Some("ready" | "started")), "{all:#?}");
            }
            _ => {}
        }
    }
    assert!(states.values().all(|s| *s == "exited"), "{states:?}");
    let crash = all
        .iter()
        .position(|e| {
            matches!(
                e,
                Event::WorkerExited {
                    slot: 0,
                    generation: 0,
                    exit: Exit::Panicked { .. },
                    ..
                }
            )
        })
        .expect("the crash");
    assert_eq!(
        all.get(crash + 1),
        Some(&Event::Restarting {
            slot: 0,
            delay: Duration::ZERO
        })
    );
    assert!(matches!(all.first(), Some(Event::WorkerStarted { .. })));
    assert_eq!(all.last(), Some(&Event::Stopped));
}
