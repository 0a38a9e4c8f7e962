//! The in-process store's limits: durations a worker passes never panic a
//! runtime thread (a lock granted on the master thread with an endless
//! lease), and `max_keys` and `max_bytes` hold exactly when workers and
//! threads fill a collection at once. What both backends promise about
//! limits is in `store_conformance.rs`.

use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use crate::common::{self, ask, recv, stop, wait_for, wait_until, Op};
use forkless::{
    Bytes, Cluster, CollectionOptions, Exit, LockOptions, Restart, Worker, WorkerState,
};

/// Locks whose waits and leases are "forever", spelled `Duration::MAX`.
fn endless() -> LockOptions {
    LockOptions::new()
        .lease(Duration::MAX)
        .timeout(Duration::MAX)
}

fn metric(cluster: &Cluster, prefix: &str) -> u64 {
    cluster
        .metrics()
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|rest| rest.rsplit(' ').next()?.trim().parse::<u64>().ok())
        .sum()
}

#[derive(Debug)]
enum Said {
    Held,
    Listening(std::net::SocketAddr),
    Granted,
}

#[test]
fn an_endless_lease_granted_on_the_master_thread_harms_no_one() {
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Arc::new(std::sync::Mutex::new(Some(go_rx)));
    let cluster = Cluster::builder()
        .workers(2)
        .restart(Restart::Never)
        .start(move |worker: Worker| {
            let tx = tx.clone();
            let go_rx = go_rx.clone();
            async move {
                let c = worker.store().collection("endless");
                if worker.slot() == 0 {
                    let lock = c.acquire_with("k", endless()).await?;
                    // Leaked: only the store's clean-up after this worker's
                    // exit, on the master thread, frees the key and grants
                    // it to the next in line (with an endless lease).
                    Box::leak(Box::new(lock));
                    c.set("held", "yes").await?;
                    tx.send(Said::Held).expect("test alive");
                    let go = go_rx.lock().expect("go").take().expect("one slot 0");
                    tokio::task::spawn_blocking(move || go.recv())
                        .await
                        .expect("join")
                        .ok();
                    return Ok(());
                }
                let listener = worker.listen("127.0.0.1:0").await?;
                tx.send(Said::Listening(listener.local_addr()?))
                    .expect("test alive");
                let waiter = tokio::task::spawn_local({
                    let tx = tx.clone();
                    async move {
                        // In line behind slot 0, not before it.
                        while c.get("held").await?.is_none() {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        let mut lock = c.acquire_with("k", endless()).await?;
                        lock.set("from slot 1");
                        lock.release().await?;
                        tx.send(Said::Granted).expect("test alive");
                        Ok::<(), forkless::Error>(())
                    }
                });
                common::serve_whoami(&worker, &listener).await?;
                waiter.await.expect("join")
            }
        })
        .expect("start");
    let (mut held, mut addr) = (false, None);
    while !held || addr.is_none() {
        match recv(&rx, "slot 0's lock and slot 1's listener") {
            Said::Held => held = true,
            Said::Listening(a) => addr = Some(a),
            Said::Granted => panic!("granted while held"),
        }
    }
    let addr = addr.expect("an address");
    let waits = "forkless_store_lock_waits_total ";
    wait_until("slot 1 to queue", || metric(&cluster, waits) >= 1);
    let c = cluster.store().collection("endless");
    let behind = Op::new(c.acquire_with("k", endless())).pending("the thread behind slot 1");
    go_tx.send(()).expect("slot 0 alive");

    assert!(matches!(recv(&rx, "slot 1's grant"), Said::Granted));
    let lock = behind.wait("the grant after slot 1").expect("granted");
    assert_eq!(lock.get(), Some(Bytes::from("from slot 1")));
    drop(lock);

    // The master goes on past the exit it handled: its view shows it.
    let status = wait_for("slot 0 stopped in the status", || {
        let status = cluster.status();
        (status.workers[0].state == WorkerState::Stopped).then_some(status)
    });
    assert!(
        matches!(status.workers[0].last_exit, Some(Exit::Normal)),
        "{status:?}"
    );
    assert_eq!(status.workers[1].state, WorkerState::Ready, "{status:?}");
    assert_eq!(ask(addr), "1 0\n", "slot 1 serves");
    assert_eq!(
        metric(&cluster, "forkless_runtime_panics_total"),
        0,
        "no runtime thread panicked:\n{}",
        cluster.metrics()
    );
    stop(cluster);
}

#[test]
fn max_keys_and_max_bytes_hold_exactly_when_threads_fill_a_collection_at_once() {
    const THREADS: usize = 4;
    const EACH: usize = 100;
    let cluster = common::idle_cluster();
    for (max_keys, max_bytes) in [(Some(150), None), (None, Some(150 * 8))] {
        let c = cluster.store().collection(&format!("race {max_keys:?}"));
        common::done(c.configure(CollectionOptions {
            max_keys,
            max_bytes,
            ..CollectionOptions::default()
        }))
        .expect("configure");
        let start = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (c, start) = (c.blocking(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let mut stored = 0;
                    for i in 0..EACH {
                        // Keys of 4 bytes, values of 4 bytes: 8 a key.
                        match c.set(&format!("{t}{i:03}"), "vvvv") {
                            Ok(()) => stored += 1,
                            Err(e) => assert!(e.is_full(), "{e}"),
                        }
                    }
                    stored
                })
            })
            .collect();
        let stored: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        assert_eq!(stored, 150, "{max_keys:?} {max_bytes:?}");
        let c = c.blocking();
        assert_eq!(c.len().expect("len"), 150);
        // Full: a new key fails, an old one takes a new value of its size,
        // and a delete makes room for exactly one.
        let e = c.set("new!", "vvvv").expect_err("full");
        assert!(e.is_full() && e.to_string().contains("race"), "{e}");
        let old = (0..THREADS * EACH)
            .map(|n| format!("{}{:03}", n / EACH, n % EACH))
            .find(|k| c.get(k).expect("get").is_some())
            .expect("a stored key");
        c.set(&old, "wwww").expect("overwrite");
        assert!(c.del(&old).expect("del"));
        c.set("new!", "vvvv").expect("room for one");
        assert!(c.set("new?", "vvvv").expect_err("full again").is_full());
    }
    stop(cluster);
}
