//! Per-worker memory with `forkless::alloc::Counting` as the global
//! allocator: a test binary of its own, since a global allocator is the
//! whole process's (the `it` binary runs without one, and checks there that
//! memory is unknown: `it::alloc_unknown`).
#![allow(missing_docs)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use forkless::{Cluster, Event, Worker};

#[path = "support/wait.rs"]
mod wait;
use wait::{wait_until, PATIENCE};

#[global_allocator]
static ALLOC: forkless::alloc::Counting<std::alloc::System> =
    forkless::alloc::Counting::new(std::alloc::System);

const MIB: u64 = 1 << 20;
/// What slot 0 holds: far above what a worker allocates on its own.
const HELD_MIB: u64 = 64;

fn wait_event<T>(
    events: &mut forkless::Events,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(event) => {
                if let Some(found) = pick(&event) {
                    return found;
                }
            }
            Err(e) => panic!("waiting for {what}: {e:?}"),
        }
    }
}

/// `GET path` on the control socket; the answer's body.
fn get(socket: &Path, path: &str) -> String {
    let mut stream = UnixStream::connect(socket).expect("connect to the control socket");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// `forkless_worker_memory_bytes{slot="N"}` in a scrape, if it is there.
fn metric(text: &str, slot: usize) -> Option<u64> {
    let prefix = format!("forkless_worker_memory_bytes{{slot=\"{slot}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|v| v.trim().parse().expect("a number of bytes"))
}

/// Slot 0 allocates and holds `HELD_MIB` MiB when told, and frees it when
/// told: status (the handle's and the control socket's) and metrics show
/// it on slot 0 and not on slot 1, then no longer once freed.
#[test]
fn a_worker_that_holds_memory_shows_it_until_it_frees_it() {
    let dir = std::env::temp_dir().join(format!("forkless-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let socket = dir.join("control.sock");
    let (hold_tx, hold_rx) = tokio::sync::watch::channel(0u64);
    let (done_tx, done_rx) = mpsc::channel::<u64>();
    let cluster = Cluster::builder()
        .name("alloc-counting")
        .workers(2)
        .control_socket(&socket)
        .start(move |worker: Worker| {
            let mut hold_rx = hold_rx.clone();
            let done_tx = done_tx.clone();
            async move {
                worker.ready();
                if worker.slot() != 0 {
                    worker.shutdown_signal().await;
                    return;
                }
                let mut held: Vec<u8> = Vec::new();
                loop {
                    tokio::select! {
                        changed = hold_rx.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            let mib = *hold_rx.borrow_and_update();
                            held = Vec::new();
                            held.resize((mib * MIB) as usize, 1);
                            done_tx.send(mib).expect("the test waits");
                        }
                        _ = worker.shutdown_signal() => break,
                    }
                }
                drop(held);
            }
        })
        .expect("start");
    let mut events = cluster.events();
    let mut ready = [false; 2];
    while !ready.iter().all(|r| *r) {
        let slot = wait_event(&mut events, "both slots ready", |e| match e {
            Event::WorkerReady { slot, .. } => Some(*slot),
            _ => None,
        });
        ready[slot] = true;
    }

    hold_tx.send(HELD_MIB).expect("slot 0 listens");
    assert_eq!(
        done_rx.recv_timeout(PATIENCE).expect("slot 0 allocated"),
        HELD_MIB
    );
    let status = cluster.status();
    let memory: Vec<u64> = status
        .workers
        .iter()
        .map(|w| w.memory.expect("counted"))
        .collect();
    assert!(memory[0] >= HELD_MIB * MIB, "{memory:?}");
    assert!(memory[1] < HELD_MIB * MIB, "{memory:?}");
    let text = cluster.metrics();
    assert!(
        metric(&text, 0).expect("slot 0's line") >= HELD_MIB * MIB,
        "{text}"
    );
    assert!(
        metric(&text, 1).expect("slot 1's line") < HELD_MIB * MIB,
        "{text}"
    );
    let wire: serde_json::Value =
        serde_json::from_str(&get(&socket, "/status")).expect("status JSON");
    let wire_memory = wire["workers"][0]["memory"].as_u64().expect("memory");
    assert!(wire_memory >= HELD_MIB * MIB, "{wire}");
    assert!(
        metric(&get(&socket, "/metrics"), 0).expect("slot 0's line") >= HELD_MIB * MIB,
        "over the socket"
    );

    hold_tx.send(0).expect("slot 0 listens");
    assert_eq!(done_rx.recv_timeout(PATIENCE).expect("slot 0 freed"), 0);
    let after = cluster.status().workers[0].memory.expect("counted");
    assert!(after < HELD_MIB * MIB, "{after} after freeing");
    assert!(metric(&cluster.metrics(), 0).expect("slot 0's line") < HELD_MIB * MIB);

    cluster.shutdown();
    cluster.join();
    // Nothing runs: unknown again.
    let status = cluster.status();
    assert!(
        status.workers.iter().all(|w| w.memory.is_none()),
        "{status:?}"
    );
    assert_eq!(metric(&cluster.metrics(), 0), None);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A new generation starts from 0: what an earlier generation left on the
/// thread (here leaked) is not counted on the one that follows it there.
#[test]
fn a_new_generation_starts_from_zero() {
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let (thread_tx, thread_rx) = mpsc::channel::<std::thread::ThreadId>();
    let cluster = Cluster::builder()
        .name("alloc-generations")
        .workers(1)
        .throttle_delay(Duration::ZERO)
        .start(move |worker: Worker| {
            let mut go_rx = go_rx.clone();
            let thread_tx = thread_tx.clone();
            async move {
                thread_tx
                    .send(std::thread::current().id())
                    .expect("the test waits");
                worker.ready();
                if worker.generation() == 0 {
                    let leaked: &'static mut [u8] = vec![1u8; (HELD_MIB * MIB) as usize].leak();
                    std::hint::black_box(leaked);
                    // Return (and be started again on this thread) when
                    // told.
                    let _ = go_rx.wait_for(|go| *go).await;
                    return;
                }
                worker.shutdown_signal().await;
            }
        })
        .expect("start");
    let mut events = cluster.events();
    let first_thread = thread_rx.recv_timeout(PATIENCE).expect("generation 0");
    wait_event(&mut events, "generation 0 ready", |e| {
        matches!(e, Event::WorkerReady { generation: 0, .. }).then_some(())
    });
    // The leak happens after `ready`: wait until it is counted.
    wait_until("generation 0's leak to be counted", || {
        cluster.status().workers[0].memory.expect("counted") >= HELD_MIB * MIB
    });
    go_tx.send(true).expect("generation 0 listens");
    wait_event(&mut events, "generation 1 ready", |e| {
        matches!(e, Event::WorkerReady { generation: 1, .. }).then_some(())
    });
    assert_eq!(
        thread_rx.recv_timeout(PATIENCE).expect("generation 1"),
        first_thread,
        "generation 1 runs on generation 0's thread"
    );
    let status = cluster.status();
    assert_eq!(status.workers[0].generation, 1, "{status:?}");
    let second = status.workers[0].memory.expect("counted");
    assert!(second < HELD_MIB * MIB, "{second}");
    cluster.shutdown();
    cluster.join();
}

/// `Recycle::max_memory`: slot 0 holds `HELD_MIB` MiB as it starts, slot 1
/// nothing; with a 32 MiB ceiling, slot 0 is recycled (each generation
/// again, as each holds as much) and slot 1 never.
#[test]
fn a_worker_past_max_memory_is_recycled_and_one_under_it_is_not() {
    let cluster = Cluster::builder()
        .name("alloc-recycle")
        .workers(2)
        .recycle(forkless::Recycle::new().max_memory(32 * MIB))
        .start(|worker: Worker| async move {
            let mut held: Vec<u8> = Vec::new();
            if worker.slot() == 0 {
                held.resize((HELD_MIB * MIB) as usize, 1);
            }
            worker.ready();
            worker.shutdown_signal().await;
            drop(held);
        })
        .expect("start");
    let mut events = cluster.events();
    for round in 0..2 {
        let (slot, reason) = wait_event(&mut events, "a recycle by memory", |e| match e {
            Event::Recycled { slot, reason } => Some((*slot, reason.clone())),
            _ => None,
        });
        assert_eq!(slot, 0, "round {round}: {reason}");
        match reason {
            forkless::RecycleReason::MaxMemory { limit, bytes } => {
                assert_eq!(limit, 32 * MIB);
                assert!(bytes >= HELD_MIB * MIB, "{bytes}");
            }
            other => panic!("round {round}: {other}"),
        }
    }
    let status = cluster.status();
    assert!(status.workers[0].recycles >= 2, "{:?}", status.workers[0]);
    assert_eq!(status.workers[1].recycles, 0, "{:?}", status.workers[1]);
    assert_eq!(status.workers[1].generation, 0);
    assert!(status.workers[1].memory.is_some_and(|m| m < 32 * MIB));
    assert_eq!(
        (status.workers[0].restarts, status.workers[1].restarts),
        (0, 0)
    );
    cluster.shutdown();
    cluster.join();
}
