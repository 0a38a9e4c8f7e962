//! The in-process store: locks and their first-come-first-served queues,
//! answers without a wait, leases, limits, and what happens once the
//! cluster stops. What both store backends promise (plain operations,
//! expiry, `try_acquire` and `acquire_timeout`, ...) is checked once per
//! backend in `store_conformance`.

use std::sync::mpsc;
use std::time::Duration;

use crate::common::{idle_cluster, now, recv, stop, Op};
use forkless::{Bytes, Cluster, CollectionOptions, LockOptions};

#[test]
fn typed_values_round_trip_as_json_and_bad_ones_say_why() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Session {
        user: String,
        visits: u32,
    }
    let cluster = idle_cluster();
    let c = cluster.store().collection("typed").blocking();
    let s = Session {
        user: "ada".into(),
        visits: 3,
    };
    c.set_as("s", &s).unwrap();
    assert_eq!(c.get_as::<Session>("s").unwrap(), Some(s));
    assert_eq!(
        c.get("s").unwrap(),
        Some(Bytes::from(r#"{"user":"ada","visits":3}"#))
    );

    c.set("n", "not json").unwrap();
    let e = c.get_as::<Session>("n").unwrap_err();
    assert!(e.is_invalid_value(), "{e:?}");
    assert!(
        e.to_string().contains("\"n\"") && e.to_string().contains("typed"),
        "{e}"
    );

    let e = c.incr("n", 1).unwrap_err();
    assert!(e.is_invalid_value(), "{e:?}");
    assert!(e.to_string().contains("not a decimal i64"), "{e}");
    c.set("max", i64::MAX.to_string()).unwrap();
    let e = c.incr("max", 1).unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");
    assert_eq!(
        c.get("max").unwrap(),
        Some(Bytes::from(i64::MAX.to_string()))
    );
    stop(cluster);
}

#[test]
fn operations_on_a_locked_key_wait_in_line_and_run_in_order_at_release() {
    let cluster = idle_cluster();
    let c = cluster.store().collection("queue");
    now(c.set("k", "v0")).unwrap();

    let mut lock = now(c.acquire("k")).unwrap();
    assert_eq!(lock.get(), Some(Bytes::from("v0")));
    let get1 = Op::new(c.get("k")).pending("get behind the lock");
    let set = Op::new(c.set("k", "v2")).pending("set behind the lock");
    let next = Op::new(c.acquire("k")).pending("acquire behind the lock");
    let get2 = Op::new(c.get("k")).pending("get behind the second lock");
    assert!(now(c.try_acquire("k")).unwrap().is_none());
    assert!(
        now(c.get("other")).unwrap().is_none(),
        "other keys do not wait"
    );

    lock.set("v1");
    assert_eq!(
        lock.get(),
        Some(Bytes::from("v1")),
        "the lock sees its change"
    );
    now(lock.release()).unwrap();

    assert_eq!(get1.wait("get1").unwrap(), Some(Bytes::from("v1")));
    set.wait("set").unwrap();
    let mut lock2 = next.wait("acquire").unwrap();
    assert_eq!(lock2.get(), Some(Bytes::from("v2")));
    let mut get2 = get2.pending("get behind the second lock");
    lock2.del();
    now(lock2.release()).unwrap();
    assert!(matches!(get2.poll(), std::task::Poll::Ready(Ok(None))));
    assert_eq!(now(c.len()).unwrap(), 0);
    stop(cluster);
}

#[test]
fn a_dropped_lock_discards_its_changes_and_frees_the_key() {
    let cluster = idle_cluster();
    let c = cluster.store().collection("drop");
    now(c.set("k", "kept")).unwrap();
    let mut lock = now(c.acquire("k")).unwrap();
    let waiter = Op::new(c.acquire("k")).pending("second acquire");
    lock.set("discarded");
    drop(lock);
    let lock = waiter.wait("second acquire");
    assert_eq!(lock.unwrap().get(), Some(Bytes::from("kept")));
    // The second lock was dropped too: the key is free.
    assert!(now(c.try_acquire("k")).unwrap().is_some());
    stop(cluster);
}

#[test]
fn a_cancelled_acquire_never_strands_the_key() {
    let cluster = idle_cluster();
    let c = cluster.store().collection("cancel");
    let lock = now(c.acquire("k")).unwrap();
    let cancelled = Op::new(c.acquire("k")).pending("acquire to cancel");
    let behind = Op::new(c.acquire("k")).pending("acquire behind it");
    drop(cancelled);
    drop(lock);
    let second = behind.wait("acquire behind the cancelled one").unwrap();

    // Cancelled after the grant was sent but before it was read.
    let granted_unread = Op::new(c.acquire("k")).pending("acquire");
    let last = Op::new(c.acquire("k")).pending("last acquire");
    drop(second);
    drop(granted_unread);
    drop(last.wait("the acquire after a grant nobody read").unwrap());
    stop(cluster);
}

#[test]
fn a_lock_past_its_lease_goes_to_the_next_waiter_and_its_late_commit_fails() {
    let cluster = idle_cluster();
    let c = cluster.store().collection("lease");
    now(c.set("k", "before")).unwrap();
    let mut late =
        now(c.acquire_with("k", LockOptions::new().lease(Duration::from_millis(50)))).unwrap();
    late.set("from the late holder");
    let next = Op::new(c.acquire("k")).pending("acquire behind the leased lock");
    let lock = next.wait("the lease to run out");
    assert_eq!(lock.unwrap().get(), Some(Bytes::from("before")));
    let e = now(late.release()).unwrap_err();
    assert!(e.is_lock_lost(), "{e:?}");
    assert!(e.to_string().contains("nothing was committed"), "{e}");
    assert_eq!(now(c.get("k")).unwrap(), Some(Bytes::from("before")));

    // The collection's max_hold is the default lease.
    let c = cluster.store().collection("max_hold");
    now(c.configure(CollectionOptions {
        max_hold: Some(Duration::from_millis(50)),
        ..CollectionOptions::default()
    }))
    .unwrap();
    let held = now(c.acquire("k")).unwrap();
    let lock = Op::new(c.acquire("k"))
        .pending("acquire behind max_hold")
        .wait("max_hold to run out");
    assert!(lock.is_ok());
    assert!(now(held.release()).unwrap_err().is_lock_lost());
    stop(cluster);
}

#[test]
fn limits_and_bad_options_are_errors_that_say_which() {
    let cluster = idle_cluster();
    let c = cluster.store().collection("limits").blocking();
    let big = vec![0u8; CollectionOptions::DEFAULT_MAX_VALUE_SIZE + 1];
    let e = c.set("k", big.clone()).unwrap_err();
    assert!(e.is_too_large(), "{e:?}");
    assert!(e.to_string().contains("1048577 bytes"), "{e}");
    assert!(c
        .set("k", vec![0u8; CollectionOptions::DEFAULT_MAX_VALUE_SIZE])
        .is_ok());
    let long_key = "k".repeat(CollectionOptions::DEFAULT_MAX_KEY_SIZE + 1);
    assert!(c.get(&long_key).unwrap_err().is_too_large());
    assert!(c
        .compare_and_swap("k", None, Some(big.clone().into()))
        .unwrap_err()
        .is_too_large());

    // A commit over the limit: refused, and the lock is released.
    let mut lock = c.acquire("k").unwrap();
    lock.set(big);
    assert!(lock.release_blocking().unwrap_err().is_too_large());
    assert!(c.try_acquire("k").unwrap().is_some());

    c.configure(CollectionOptions {
        max_value_size: 4,
        max_key_size: 2,
        ..CollectionOptions::default()
    })
    .unwrap();
    assert!(c.set("k", "12345").unwrap_err().is_too_large());
    assert!(c.set("kkk", "1").unwrap_err().is_too_large());
    c.set("k", "1234").unwrap();

    for bad in [
        CollectionOptions {
            expire_keys: Some(Duration::ZERO),
            ..CollectionOptions::default()
        },
        CollectionOptions {
            max_hold: Some(Duration::ZERO),
            ..CollectionOptions::default()
        },
        CollectionOptions {
            max_value_size: 0,
            ..CollectionOptions::default()
        },
        CollectionOptions {
            max_key_size: 0,
            ..CollectionOptions::default()
        },
    ] {
        let e = c.configure(bad.clone()).unwrap_err();
        assert!(e.is_config(), "{bad:?}: {e:?}");
        assert!(e.to_string().contains("must"), "{e}");
    }
    assert_eq!(
        c.options().max_value_size,
        4,
        "a refused configure changes nothing"
    );
    stop(cluster);
}

#[test]
fn after_the_cluster_stops_every_operation_fails_and_nothing_hangs() {
    let cluster = idle_cluster();
    let store = cluster.store();
    let c = store.collection("stop");
    let lock = now(c.acquire("k")).unwrap();
    let mut waiting_get = Op::new(c.get("k")).pending("get behind the lock");
    let mut waiting_acquire = Op::new(c.acquire("k")).pending("acquire behind the lock");
    stop(cluster);

    match waiting_get.poll() {
        std::task::Poll::Ready(Err(e)) => assert!(e.is_stopped(), "{e:?}"),
        other => panic!("a waiting get after stop: {other:?}"),
    }
    match waiting_acquire.poll() {
        std::task::Poll::Ready(Err(e)) => assert!(e.is_stopped(), "{e:?}"),
        other => panic!(
            "a waiting acquire after stop: {:?}",
            other.map(|r| r.map(drop))
        ),
    }
    assert!(now(lock.release()).unwrap_err().is_stopped());
    let c = store.collection("stop").blocking();
    assert!(c.get("k").unwrap_err().is_stopped());
    assert!(c.set("k", "v").unwrap_err().is_stopped());
    assert!(c.acquire("k").unwrap_err().is_stopped());
    assert!(c.len().unwrap_err().is_stopped());
    assert!(c
        .configure(CollectionOptions::default())
        .unwrap_err()
        .is_stopped());
    let e = store.collection("new after stop").blocking().incr("n", 1);
    assert!(e.unwrap_err().is_stopped());
}

#[test]
fn workers_and_plain_threads_share_one_store() {
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(2)
        .start(move |worker| {
            let tx = tx.clone();
            async move {
                let c = worker.store().collection("shared");
                c.incr("started", 1).await?;
                c.set(&format!("slot{}", worker.slot()), "here").await?;
                tx.send(()).expect("test alive");
                worker.shutdown_signal().await;
                Ok::<_, forkless::Error>(())
            }
        })
        .expect("start");
    recv(&rx, "worker 0");
    recv(&rx, "worker 1");
    let c = cluster.store().collection("shared").blocking();
    assert_eq!(c.get("started").unwrap(), Some(Bytes::from("2")));
    assert_eq!(c.get("slot0").unwrap(), Some(Bytes::from("here")));
    assert_eq!(c.get("slot1").unwrap(), Some(Bytes::from("here")));
    stop(cluster);
}

#[test]
#[should_panic(expected = "use the async methods")]
fn blocking_methods_refuse_to_run_inside_async_code() {
    let cluster = idle_cluster();
    let c = cluster.store().collection("x").blocking();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async { c.get("k") }).ok();
}
