//! Throttled respawn: quick failures back off exponentially, then the slot
//! gives up while the other slots serve on.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{self, ask, recv};
use forkless::{Cluster, Event, Exit, Restart, WorkerState};

#[test]
fn quick_failures_back_off_then_the_slot_gives_up_while_others_serve() {
    const REQUESTS: usize = 20;
    // Far longer than a worker that panics at once can run, even on a busy
    // machine: every failure of slot 1 is quick.
    let base = Duration::from_millis(500);
    let (started_tx, started_rx) = mpsc::channel();
    let (addr_tx, addr_rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(2)
        // Slot 0 returns after serving; only failures are restarted.
        .restart(Restart::OnFailure)
        .throttle_delay(base)
        .max_backoff(Duration::from_millis(1000))
        .max_restarts(4)
        .start(move |worker| {
            let started_tx = started_tx.clone();
            let addr_tx = addr_tx.clone();
            async move {
                if worker.slot() == 1 {
                    started_tx
                        .send((worker.generation(), Instant::now()))
                        .expect("test alive");
                    panic!("slot 1 cannot start");
                }
                let listener = worker.listen("127.0.0.1:0").await?;
                addr_tx.send(listener.local_addr()?).expect("test alive");
                for _ in 0..REQUESTS {
                    let Some(conn) = listener.accept().await else {
                        break;
                    };
                    common::answer(&worker, conn?.0).await?;
                }
                Ok::<(), forkless::Error>(())
            }
        })
        .expect("start");
    let addr = recv(&addr_rx, "slot 0's address");
    let starts: Vec<(u64, Instant)> = (0..4).map(|_| recv(&started_rx, "slot 1 start")).collect();
    for _ in 0..REQUESTS {
        assert_eq!(ask(addr), "0 0\n", "slot 0 serves every request");
    }
    // Slot 0 has returned, slot 1 has given up: the cluster ends by itself.
    let report = cluster.join();

    let slot1 = &report.slots[1];
    assert!(slot1.gave_up, "{report}");
    assert_eq!(slot1.generations.len(), 4, "{report}");
    assert!(slot1.generations.iter().all(|g| g.exit.is_failure()));
    let delays: Vec<_> = slot1.generations.iter().map(|g| g.restart_delay).collect();
    let ms = |n| Some(Duration::from_millis(n));
    // 500, 1000, then 2000 capped at 1000; the fourth failure gives up.
    assert_eq!(delays, vec![ms(500), ms(1000), ms(1000), None]);
    for (pair, delay) in starts.windows(2).zip(&delays) {
        assert_eq!(pair[1].0, pair[0].0 + 1);
        let gap = pair[1].1 - pair[0].1;
        let delay = delay.expect("respawned");
        assert!(
            gap >= delay,
            "respawned after {gap:?}, before its delay {delay:?}"
        );
    }

    let slot0 = &report.slots[0];
    assert_eq!(slot0.generations.len(), 1);
    assert_eq!(slot0.generations[0].exit, Exit::Normal);
    assert!(!slot0.gave_up);
}

#[test]
fn a_healthy_run_resets_the_count_and_respawns_at_once() {
    let throttle = Duration::from_millis(500);
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(1)
        .throttle_delay(throttle)
        .max_restarts(2)
        .start(move |worker| {
            let tx = tx.clone();
            async move {
                tx.send(worker.generation()).expect("test alive");
                if worker.generation() == 0 {
                    // A run longer than the throttle delay: no quick failure.
                    tokio::time::sleep(throttle + Duration::from_millis(10)).await;
                }
                if worker.generation() < 3 {
                    panic!("generation {} fails", worker.generation());
                }
                worker.shutdown_signal().await;
            }
        })
        .expect("start");
    // Generation 0 fails after a healthy run and is respawned at once;
    // generations 1 and 2 fail quickly, and with max_restarts 2 the second
    // quick failure gives up.
    for generation in 0..3 {
        assert_eq!(recv(&rx, "a generation"), generation);
    }
    let report = cluster.join();
    let delays: Vec<_> = report.slots[0]
        .generations
        .iter()
        .map(|g| g.restart_delay)
        .collect();
    assert_eq!(delays, vec![Some(Duration::ZERO), Some(throttle), None]);
    assert!(report.slots[0].gave_up);
}

#[test]
fn a_slot_that_gave_up_and_was_retired_starts_afresh_when_the_cluster_grows_back() {
    let cluster = Cluster::builder()
        .workers(2)
        .throttle_delay(Duration::from_secs(30))
        .max_restarts(1)
        .start(|worker| async move {
            // Slot 1's first generation fails at once; with max_restarts 1
            // that first quick failure is a give-up. Its later ones serve.
            if worker.slot() == 1 && worker.generation() == 0 {
                panic!("slot 1 cannot start");
            }
            worker.ready();
            worker.shutdown_signal().await;
        })
        .expect("start");
    let mut events = cluster.events();
    common::wait_event(&mut events, "slot 1 gives up", |e| {
        matches!(e, Event::GaveUp { slot: 1, .. }).then_some(())
    });
    cluster.resize(1).expect("shrink");
    common::wait_event(&mut events, "the shrink", |e| {
        matches!(e, Event::Resized { to: 1, .. }).then_some(())
    });
    cluster.resize(2).expect("grow");
    // Back from retirement, the slot serves again: a new generation starts
    // and becomes ready, with no quick failure counted from before.
    let generation = common::wait_event(&mut events, "slot 1 ready again", |e| match e {
        Event::WorkerReady {
            slot: 1,
            generation,
            ..
        } => Some(*generation),
        _ => None,
    });
    assert_eq!(generation, 1);
    let status = cluster.status();
    assert_eq!(status.workers[1].state, WorkerState::Ready, "{status:?}");
    cluster.shutdown();
    let report = cluster.join();
    assert!(!report.slots[1].gave_up, "{report}");
    assert_eq!(report.slots[1].generations.len(), 2, "{report}");
}
