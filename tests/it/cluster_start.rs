//! Start-up: workers, slots, cores, thread names, bad configuration.

use std::collections::HashSet;
use std::sync::mpsc;

use crate::common::{self, recv};
use forkless::{Cluster, Exit};

struct Seen {
    slot: usize,
    generation: u64,
    core: Option<usize>,
    thread: Option<String>,
    affinity: Vec<usize>,
}

fn start_and_look(workers: usize, pin: bool) -> (Vec<Seen>, forkless::Report) {
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(workers)
        .pin_cores(pin)
        .start(move |worker| {
            let tx = tx.clone();
            async move {
                let affinity = core_affinity::get_core_ids()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| c.id)
                    .collect();
                tx.send(Seen {
                    slot: worker.slot(),
                    generation: worker.generation(),
                    core: worker.core(),
                    thread: std::thread::current().name().map(str::to_owned),
                    affinity,
                })
                .expect("test alive");
                worker.shutdown_signal().await;
            }
        })
        .expect("start");
    let mut seen: Vec<Seen> = (0..workers).map(|_| recv(&rx, "a worker")).collect();
    seen.sort_by_key(|s| s.slot);
    cluster.shutdown();
    (seen, cluster.join())
}

#[test]
fn workers_start_pinned_on_distinct_cores_with_named_threads() {
    let cores: Vec<usize> = core_affinity::get_core_ids()
        .expect("affinity")
        .into_iter()
        .map(|c| c.id)
        .collect();
    let n = 2;
    let (seen, report) = start_and_look(n, true);

    assert_eq!(seen.iter().map(|s| s.slot).collect::<Vec<_>>(), vec![0, 1]);
    for s in &seen {
        assert_eq!(s.generation, 0);
        assert_eq!(
            s.thread.as_deref(),
            Some(format!("forkless-w{}", s.slot).as_str())
        );
        let core = s.core.expect("pinned");
        assert!(cores.contains(&core), "core {core} is not in {cores:?}");
        assert_eq!(s.affinity, vec![core], "the thread runs on its core only");
    }
    if cores.len() >= n {
        let distinct: HashSet<_> = seen.iter().map(|s| s.core).collect();
        assert_eq!(distinct.len(), n, "one core per worker");
    }

    assert_eq!(report.slots.len(), n);
    for slot in &report.slots {
        assert_eq!(slot.generations.len(), 1);
        assert_eq!(slot.generations[0].exit, Exit::Normal);
        assert!(!slot.gave_up);
    }
}

#[test]
fn more_workers_than_cores_wrap_around() {
    let cores = core_affinity::get_core_ids().expect("affinity").len();
    let (seen, _) = start_and_look(cores + 1, true);
    assert_eq!(seen.len(), cores + 1);
    assert_eq!(seen[cores].core, seen[0].core);
}

#[test]
fn unpinned_workers_have_no_core() {
    let (seen, _) = start_and_look(2, false);
    assert!(seen.iter().all(|s| s.core.is_none()));
}

#[test]
fn default_size_is_the_affinity_mask() {
    let cores = core_affinity::get_core_ids().expect("affinity").len();
    let cluster = Cluster::builder()
        .start(|worker| async move { worker.shutdown_signal().await })
        .expect("start");
    cluster.shutdown();
    assert_eq!(cluster.join().slots.len(), cores);
}

#[test]
fn zero_workers_is_refused() {
    let err = Cluster::builder()
        .workers(0)
        .start(|_worker| async {})
        .expect_err("0 workers");
    assert!(err.is_config(), "{err:?}");
    assert!(
        err.to_string().contains("workers must be at least 1"),
        "{err}"
    );
}

#[test]
fn join_and_stopped_agree() {
    let cluster = Cluster::builder()
        .workers(1)
        .name("agree")
        .start(|worker| async move { worker.shutdown_signal().await })
        .expect("start");
    assert!(!cluster.is_stopped());
    assert!(cluster
        .join_timeout(std::time::Duration::from_millis(1))
        .is_none());
    assert_eq!(cluster.name(), "agree");
    cluster.shutdown();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let from_async = rt.block_on(cluster.stopped());
    let from_sync = cluster.join();
    assert!(cluster.is_stopped());
    assert_eq!(from_async.name, "agree");
    assert_eq!(from_async.slots.len(), from_sync.slots.len());
    // Calls after the end do nothing more.
    cluster.shutdown();
    cluster.terminate();
    assert_eq!(cluster.join().restarts(), 0);
}

#[test]
fn join_from_an_own_worker_panics_instead_of_waiting_forever() {
    let (tx, rx) = mpsc::channel::<Cluster>();
    let rx = std::sync::Mutex::new(rx);
    let cluster = Cluster::builder()
        .workers(1)
        .restart(forkless::Restart::Never)
        .start(move |_worker| {
            let own = rx.lock().expect("lock").recv().expect("the handle");
            async move {
                own.join();
            }
        })
        .expect("start");
    tx.send(cluster.clone()).expect("worker waits");
    let report = cluster.join();
    match &report.slots[0].generations[0].exit {
        Exit::Panicked { message, .. } => {
            assert!(message.contains("would wait forever"), "{message}")
        }
        other => panic!("expected a panic, got {other:?}"),
    }
}

#[test]
fn ready_resolves_only_once_every_slot_listens() {
    let (go_tx, go_rx) = std::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let cluster = forkless::Cluster::builder()
        .workers(2)
        .start(move |worker: forkless::Worker| {
            let (go_tx, addr_tx) = (go_tx.clone(), addr_tx.clone());
            async move {
                if worker.slot() == 1 {
                    // Slot 1 listens only when the test says so.
                    let (go, wait) = tokio::sync::oneshot::channel();
                    go_tx.send(go).expect("test alive");
                    let _ = wait.await;
                }
                let listener = worker.listen("127.0.0.1:0").await?;
                addr_tx.send(listener.local_addr()?).expect("test alive");
                worker.shutdown_signal().await;
                Ok::<(), forkless::Error>(())
            }
        })
        .expect("start");
    let go = common::recv(&go_rx, "slot 1 waiting");
    common::recv(&addr_rx, "slot 0 listening");
    let waiting = {
        let cluster = cluster.clone();
        std::thread::spawn(move || cluster.wait_ready(common::PATIENCE))
    };
    // Slot 1 does not listen yet: a short wait times out, naming it.
    let e = cluster
        .wait_ready(std::time::Duration::from_millis(100))
        .expect_err("slot 1 is not ready");
    assert!(e.is_timeout() && e.to_string().contains("slot 1"), "{e}");
    assert!(!waiting.is_finished());
    go.send(()).expect("slot 1 alive");
    waiting.join().expect("thread").expect("every slot ready");
    common::recv(&addr_rx, "slot 1 listening");
    // Ready already: both forms answer at once.
    cluster.wait_ready(common::PATIENCE).expect("ready");
    common::now(cluster.ready()).expect("ready");
    common::stop(cluster);
}

#[test]
fn ready_fails_naming_the_slot_whose_body_exits_at_start() {
    let cluster = forkless::Cluster::builder()
        .workers(2)
        .start(|worker: forkless::Worker| async move {
            if worker.slot() == 1 {
                return Err(forkless::Error::from(std::io::Error::other("no config")));
            }
            let _listener = worker.listen("127.0.0.1:0").await?;
            worker.shutdown_signal().await;
            Ok::<(), forkless::Error>(())
        })
        .expect("start");
    let e = common::done(cluster.ready()).expect_err("slot 1 exits");
    assert!(e.is_not_ready(), "{e:?}");
    assert!(e.to_string().contains("slot 1"), "{e}");
    common::stop(cluster);
}
