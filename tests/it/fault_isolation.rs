//! Faults stay where they happen: a rolling restart whose new generation
//! fails leaves the bus inbox to the generation that serves on; a slot's
//! next generation runs on the thread of the one that returned; a report
//! keeps where the body itself panicked.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::common;
use forkless::{Cluster, Event, Exit, Restart};

#[test]
fn a_failed_roll_leaves_the_inbox_to_the_generation_that_serves() {
    let (took_tx, took_rx) = mpsc::channel::<u64>();
    let took_tx = Arc::new(Mutex::new(took_tx));
    let cluster = Cluster::builder()
        .workers(1)
        .pin_cores(false)
        .ready_timeout(Duration::from_secs(3))
        .request_timeout(Duration::from_secs(60))
        .start(move |worker| {
            let took_tx = took_tx.clone();
            async move {
                let mut inbox = worker.inbox();
                if worker.generation() == 0 {
                    worker.ready();
                } else {
                    // The roll's candidate takes the inbox and never gets
                    // ready. Polling once makes it the channel's reader, as
                    // it would be if it only waited for messages.
                    let first = futures_poll_once(&mut inbox);
                    assert!(first.is_none(), "a candidate read a message early");
                    let _ = took_tx.lock().expect("lock").send(worker.generation());
                }
                while let Some(envelope) = inbox.recv().await {
                    envelope.reply(format!("generation {}", worker.generation()));
                }
            }
        })
        .expect("start");
    let mut events = cluster.events();
    common::wait_event(&mut events, "generation 0 ready", |e| {
        matches!(e, Event::WorkerReady { generation: 0, .. }).then_some(())
    });
    cluster.restart().expect("roll");
    assert_eq!(common::recv(&took_rx, "the candidate takes the inbox"), 1);
    // While the candidate waits to be ready, the serving generation reads.
    let bus = cluster.bus();
    let answer = common::done(bus.request(0, "during")).expect("answered during the roll");
    assert_eq!(answer, "generation 0");
    common::wait_event(&mut events, "the roll to fail", |e| {
        matches!(e, Event::RollFailed { generation: 1, .. }).then_some(())
    });
    // ... and after it failed, with the candidate gone.
    let answer = common::done(bus.request(0, "after")).expect("answered after the roll");
    assert_eq!(answer, "generation 0");
    common::stop(cluster);
}

/// Polls `inbox` once, without waiting.
fn futures_poll_once(inbox: &mut forkless::Inbox) -> Option<forkless::Envelope> {
    let mut cx = std::task::Context::from_waker(futures_task::noop_waker_ref());
    match inbox.poll_recv(&mut cx) {
        std::task::Poll::Ready(message) => message,
        std::task::Poll::Pending => None,
    }
}

#[test]
fn a_respawn_runs_on_the_thread_of_the_generation_that_returned() {
    let threads = Arc::new(Mutex::new(Vec::new()));
    let seen = threads.clone();
    let cluster = Cluster::builder()
        .workers(1)
        .pin_cores(false)
        .throttle_delay(Duration::ZERO)
        .start(move |worker| {
            let seen = seen.clone();
            async move {
                seen.lock().expect("lock").push(std::thread::current().id());
                worker.ready();
                if worker.generation() < 5 {
                    panic!("generation {} panics on purpose", worker.generation());
                }
                worker.shutdown_signal().await;
            }
        })
        .expect("start");
    let mut events = cluster.events();
    common::wait_event(&mut events, "generation 5 ready", |e| {
        matches!(e, Event::WorkerReady { generation: 5, .. }).then_some(())
    });
    let threads = threads.lock().expect("lock").clone();
    assert_eq!(threads.len(), 6);
    assert!(
        threads.iter().all(|t| *t == threads[0]),
        "each generation ran on a new thread: {threads:?}"
    );
    common::stop(cluster);
}

static BODY_PANIC_LINE: AtomicU32 = AtomicU32::new(0);

/// Panics when dropped, unless it is dropped by a panic's unwinding.
struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("a task's value panics as it is dropped");
        }
    }
}

#[test]
fn the_report_keeps_where_the_body_panicked() {
    let cluster = Cluster::builder()
        .workers(1)
        .pin_cores(false)
        .restart(Restart::Never)
        .start(|_worker| async move {
            let guard = PanicsOnDrop;
            tokio::task::spawn_local(async move {
                let _guard = guard;
                std::future::pending::<()>().await;
            });
            tokio::task::yield_now().await;
            if BODY_PANIC_LINE.load(Ordering::SeqCst) == 0 {
                BODY_PANIC_LINE.store(line!() + 1, Ordering::SeqCst);
                panic!("the body's own panic");
            }
        })
        .expect("start");
    let report = cluster
        .join_timeout(Duration::from_secs(60))
        .expect("the slot ends");
    let exits: Vec<Exit> = report.exits().map(|(_, _, e)| e.clone()).collect();
    let line = BODY_PANIC_LINE.load(Ordering::SeqCst);
    match exits.as_slice() {
        [Exit::Panicked { message, location }] => {
            assert_eq!(message, "the body's own panic");
            let location = location.as_deref().expect("a location");
            assert!(
                location.starts_with(&format!("{}:{line}:", file!())),
                "{location} is not the body's panic at line {line}"
            );
        }
        other => panic!("unexpected exits {other:?}"),
    }
}

/// A generation's Redis connections die with its runtime: the next
/// generation on the same thread makes its own, so its first store call
/// works.
#[cfg(feature = "redis")]
#[test]
fn each_generation_on_a_reused_thread_reaches_redis() {
    let (tx, rx) = mpsc::channel::<(u64, Result<i64, String>)>();
    let tx = Arc::new(Mutex::new(tx));
    let cluster = Cluster::builder()
        .workers(1)
        .pin_cores(false)
        .throttle_delay(Duration::ZERO)
        .store_backend(common::redis::config())
        .start(move |worker| {
            let tx = tx.clone();
            async move {
                let counted = worker.store().collection("generations").incr("n", 1).await;
                let generation = worker.generation();
                let _ = tx
                    .lock()
                    .expect("lock")
                    .send((generation, counted.map_err(|e| e.to_string())));
                if generation < 3 {
                    panic!("generation {generation} panics on purpose");
                }
                worker.shutdown_signal().await;
            }
        })
        .expect("start");
    for expected in 0..4u64 {
        let (generation, counted) = common::recv(&rx, "a generation's first store call");
        assert_eq!(generation, expected);
        assert_eq!(counted, Ok(expected as i64 + 1), "generation {generation}");
    }
    common::stop(cluster);
}

/// Panics when woken: a task of the caller's that the runtime wakes.
struct PanickingWaker;

impl std::task::Wake for PanickingWaker {
    fn wake(self: Arc<Self>) {
        panic!("a waker of the caller's panics as the runtime wakes it");
    }
}

#[test]
fn a_reader_of_events_whose_waker_panics_stops_no_supervision() {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Arc::new(Mutex::new(go_rx));
    let cluster = Cluster::builder()
        .workers(1)
        .pin_cores(false)
        .throttle_delay(Duration::ZERO)
        .start(move |worker| {
            let go_rx = go_rx.clone();
            async move {
                worker.ready();
                if worker.generation() == 0 {
                    let got =
                        tokio::task::spawn_blocking(move || go_rx.lock().expect("lock").recv())
                            .await
                            .expect("join");
                    if got.is_ok() {
                        panic!("generation 0 panics on purpose");
                    }
                }
                worker.shutdown_signal().await;
            }
        })
        .expect("start");
    let mut events = cluster.events();
    common::wait_event(&mut events, "generation 0 ready", |e| {
        matches!(e, Event::WorkerReady { generation: 0, .. }).then_some(())
    });
    // A reader that waits for the next event with a waker that panics.
    let mut bad = cluster.events();
    let waker = std::task::Waker::from(Arc::new(PanickingWaker));
    let mut cx = std::task::Context::from_waker(&waker);
    // Past events come at once; the first call that waits holds the waker.
    let next = loop {
        let mut next = Box::pin(bad.recv());
        if next.as_mut().poll(&mut cx).is_pending() {
            break next;
        }
    };
    go_tx.send(()).expect("worker alive");
    // The master woke the bad reader as generation 0 exited, and still
    // respawned the slot.
    common::wait_event(&mut events, "generation 1 ready", |e| {
        matches!(e, Event::WorkerReady { generation: 1, .. }).then_some(())
    });
    let metrics = cluster.metrics();
    assert!(
        metrics.contains("forkless_runtime_panics_total{thread=\"forkless-master\"}"),
        "{metrics}"
    );
    drop(next);
    common::stop(cluster);
}

/// A worker's waker that panics as the Redis link delivers a message from
/// another host is caught on the link's thread, and the link delivers the
/// next message.
#[cfg(feature = "redis")]
#[test]
fn a_waker_that_panics_as_redis_delivers_stops_no_delivery() {
    let redis = common::redis::config();
    let (armed_tx, armed_rx) = mpsc::channel::<()>();
    let armed_tx = Arc::new(Mutex::new(armed_tx));
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Arc::new(Mutex::new(go_rx));
    let b = Cluster::builder()
        .workers(1)
        .pin_cores(false)
        .bus_backend(redis.clone().host("b"))
        .start(move |worker| {
            let (armed_tx, go_rx) = (armed_tx.clone(), go_rx.clone());
            async move {
                let mut inbox = worker.inbox();
                // Wait for the next message with a waker that panics.
                let waker = std::task::Waker::from(Arc::new(PanickingWaker));
                let mut cx = std::task::Context::from_waker(&waker);
                assert!(inbox.poll_recv(&mut cx).is_pending());
                let _ = armed_tx.lock().expect("lock").send(());
                let go = go_rx.clone();
                tokio::task::spawn_blocking(move || go.lock().expect("lock").recv())
                    .await
                    .expect("join")
                    .expect("the test goes on");
                while let Some(envelope) = inbox.recv().await {
                    let answer = format!("got {}", String::from_utf8_lossy(envelope.message()));
                    envelope.reply(answer);
                }
            }
        })
        .expect("start b");
    let a = Cluster::builder()
        .workers(1)
        .pin_cores(false)
        .bus_backend(redis.host("a"))
        .start(|worker| async move { worker.shutdown_signal().await })
        .expect("start a");
    common::recv(&armed_rx, "b's worker waits with its panicking waker");
    // Delivered into b's inbox, waking the panicking waker on b's link.
    common::wait_until("b on the bus", || {
        match common::done(a.bus().send_to("b", 0, "first")) {
            Ok(()) => true,
            // b announces itself just after it starts.
            Err(e) if e.is_no_such_slot() => false,
            Err(e) => panic!("send_to b: {e}"),
        }
    });
    common::wait_until("the panic to be counted", || {
        b.metrics()
            .contains("forkless_runtime_panics_total{thread=\"forkless-redis\"}")
    });
    go_tx.send(()).expect("b's worker waits");
    let reply = common::done(a.bus().request_to("b", 0, "second")).expect("b's link delivers on");
    assert_eq!(reply, "got second");
    common::stop(a);
    common::stop(b);
}
