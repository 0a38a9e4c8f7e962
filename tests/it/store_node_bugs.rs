//! Where strong-store-cluster (the Node store forkless's store follows) goes
//! wrong, forkless must not: each bug as its own test.

use std::sync::mpsc;
use std::time::Duration;

use crate::common::{idle_cluster, now, recv, Op};
use forkless::{Bytes, Cluster, CollectionOptions, Exit, Worker};
use tokio::sync::oneshot;

#[derive(Clone, Copy, Debug)]
enum How {
    Panic,
    ReturnError,
    Terminate,
}

/// Generation 0 of a 1-worker cluster locks "k" (changing it through the
/// lock), says so, waits for the go, then exits `how`. With `leak`, it leaks
/// the lock first, so that only the store's clean-up of exited workers can
/// free it (not the lock's drop).
fn holder(how: How, leak: bool) -> (Cluster, mpsc::Receiver<oneshot::Sender<()>>) {
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(1)
        .throttle_delay(Duration::ZERO)
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                if worker.generation() > 0 {
                    worker.shutdown_signal().await;
                    return Ok(());
                }
                let c = worker.store().collection("held");
                let mut lock = c.acquire("k").await?;
                lock.set("uncommitted");
                let (go, wait_go) = oneshot::channel();
                tx.send(go).expect("test alive");
                if leak {
                    #[allow(clippy::mem_forget)]
                    std::mem::forget(lock);
                    wait_go.await.ok();
                    exit(how).await
                } else {
                    wait_go.await.ok();
                    let result = exit(how).await;
                    drop(lock);
                    result
                }
            }
        })
        .expect("start");
    (cluster, rx)
}

async fn exit(how: How) -> Result<(), forkless::Error> {
    match how {
        How::Panic => panic!("holder panics"),
        How::ReturnError => Err(forkless::Error::from(std::io::Error::other("holder fails"))),
        How::Terminate => std::future::pending().await,
    }
}

fn lock_is_freed_when_its_holder_exits(how: How, leak: bool) {
    let (cluster, rx) = holder(how, leak);
    let go = recv(&rx, "the holder's lock");
    let c = cluster.store().collection("held");
    let waiter = Op::new(c.acquire("k")).pending("acquire behind the holder");
    go.send(()).expect("holder alive");
    if matches!(how, How::Terminate) {
        cluster.terminate();
    }
    let lock = waiter
        .wait("the lock of an exited holder")
        .unwrap_or_else(|e| panic!("{how:?}, leak {leak}: {e}"));
    assert_eq!(
        lock.get(),
        None,
        "{how:?}: the holder's change is not committed"
    );
    drop(lock);
    cluster.shutdown();
    let report = cluster.join();
    let first = &report.slots[0].generations[0].exit;
    match how {
        How::Panic => assert!(matches!(first, Exit::Panicked { .. }), "{report}"),
        How::ReturnError => assert!(matches!(first, Exit::Failed(_)), "{report}"),
        How::Terminate => assert!(matches!(first, Exit::Terminated), "{report}"),
    }
}

#[test]
fn bug1_a_lock_is_freed_when_its_worker_panics() {
    lock_is_freed_when_its_holder_exits(How::Panic, false);
    lock_is_freed_when_its_holder_exits(How::Panic, true);
}

#[test]
fn bug1_a_lock_is_freed_when_its_worker_returns_an_error() {
    lock_is_freed_when_its_holder_exits(How::ReturnError, false);
    lock_is_freed_when_its_holder_exits(How::ReturnError, true);
}

#[test]
fn bug1_a_lock_is_freed_when_its_worker_is_terminated() {
    lock_is_freed_when_its_holder_exits(How::Terminate, false);
    lock_is_freed_when_its_holder_exits(How::Terminate, true);
}

#[test]
fn bug1_several_waiters_take_the_lock_in_turn_after_the_holder_panics() {
    let (cluster, rx) = holder(How::Panic, true);
    let go = recv(&rx, "the holder's lock");
    let c = cluster.store().collection("held");
    let first = Op::new(c.acquire("k")).pending("first acquire");
    let get = Op::new(c.get("k")).pending("get");
    let second = Op::new(c.acquire("k")).pending("second acquire");
    let set = Op::new(c.set("k", "last")).pending("set");
    go.send(()).expect("holder alive");

    let mut lock = first.wait("the first waiter");
    let mut get = get.pending("get behind the first waiter");
    let lock1 = lock.as_mut().expect("first lock");
    lock1.set("from the first waiter");
    now(lock.expect("first lock").release()).unwrap();
    assert!(
        matches!(get.poll(), std::task::Poll::Ready(Ok(Some(v))) if v == "from the first waiter")
    );
    let lock2 = second.wait("the second waiter").unwrap();
    let set = set.pending("set behind the second waiter");
    drop(lock2);
    set.wait("the set").unwrap();
    assert_eq!(now(c.get("k")).unwrap(), Some(Bytes::from("last")));
    cluster.shutdown();
    cluster.join();
}

#[test]
fn bug2_with_expiry_deleting_the_last_key_then_setting_another_works() {
    let cluster = idle_cluster();
    let c = cluster.store().collection("expiring").blocking();
    c.configure(CollectionOptions {
        expire_keys: Some(Duration::from_secs(3600)),
        ..CollectionOptions::default()
    })
    .unwrap();
    c.set("only", "1").unwrap();
    assert!(c.del("only").unwrap());
    assert_eq!(c.len().unwrap(), 0);
    c.set("another", "2").unwrap();
    assert_eq!(c.get("another").unwrap(), Some(Bytes::from("2")));
    let lock = c.acquire("third").unwrap();
    lock.release_blocking().unwrap();
    c.set("third", "3").unwrap();
    assert_eq!(c.len().unwrap(), 2);
    cluster.shutdown();
    cluster.join();
}

#[test]
fn bug3_a_del_queued_behind_a_lock_does_not_strand_the_waiters_after_it() {
    let cluster = idle_cluster();
    let c = cluster.store().collection("del");
    now(c.set("k", "v")).unwrap();
    let lock = now(c.acquire("k")).unwrap();
    let del = Op::new(c.del("k")).pending("del");
    let get = Op::new(c.get("k")).pending("get after del");
    let acquire = Op::new(c.acquire("k")).pending("acquire after del");
    let set = Op::new(c.set("k", "again")).pending("set after del");
    now(lock.release()).unwrap();
    assert!(del.wait("del").unwrap(), "the value was there");
    assert_eq!(get.wait("get").unwrap(), None);
    let mut lock = acquire.wait("acquire").unwrap();
    assert_eq!(lock.get(), None);
    lock.set("locked");
    let set = set.pending("set behind the new lock");
    now(lock.release()).unwrap();
    set.wait("set").unwrap();
    assert_eq!(now(c.get("k")).unwrap(), Some(Bytes::from("again")));
    cluster.shutdown();
    cluster.join();
}

#[test]
fn bug4_getting_a_missing_key_creates_nothing() {
    let cluster = idle_cluster();
    for expiry in [None, Some(Duration::from_secs(3600))] {
        let c = cluster
            .store()
            .collection(&format!("missing {expiry:?}"))
            .blocking();
        c.configure(CollectionOptions {
            expire_keys: expiry,
            ..CollectionOptions::default()
        })
        .unwrap();
        assert_eq!(c.get("nothing").unwrap(), None);
        assert!(!c.del("nothing").unwrap());
        assert!(!c.compare_and_swap("nothing", Some(b"x"), None).unwrap());
        let lock = c.acquire("nothing").unwrap();
        lock.release_blocking().unwrap();
        assert_eq!(c.len().unwrap(), 0, "expiry {expiry:?}");
        assert!(c.is_empty().unwrap());
    }
    cluster.shutdown();
    cluster.join();
}

#[test]
fn bug5_errors_carry_their_message_to_the_caller() {
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(1)
        .restart(forkless::Restart::Never)
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                let c = worker.store().collection("errors");
                c.configure(CollectionOptions {
                    max_value_size: 8,
                    ..CollectionOptions::default()
                })
                .await?;
                let e = c
                    .set("big", "0123456789")
                    .await
                    .expect_err("over the limit");
                tx.send((e.is_too_large(), e.to_string()))
                    .expect("test alive");
                c.set("text", "abc").await?;
                c.incr("text", 1).await.map(drop)
            }
        })
        .expect("start");
    let (too_large, message) = recv(&rx, "the worker's error");
    assert!(too_large);
    assert!(
        message.contains("10 bytes")
            && message.contains("limit of 8 bytes")
            && message.contains("\"errors\"")
            && message.contains("\"big\""),
        "{message}"
    );
    let report = cluster.join();
    match &report.slots[0].generations[0].exit {
        Exit::Failed(m) => assert!(
            m.contains("incr") && m.contains("\"text\"") && m.contains("not a decimal i64"),
            "{m}"
        ),
        other => panic!("expected the incr error as the exit: {other}"),
    }
}
