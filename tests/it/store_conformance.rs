//! The store's conformance suite: each test runs against the in-process
//! backend (`in_process::`) and the Redis backend (`redis::`), and checks
//! what both promise. What only one of them promises (the in-process
//! store's first-come-first-served queues and answers without a wait, the
//! Redis store's reconnection and leases across hosts) is tested in
//! `store.rs`, `store_model.rs` and `redis_backend.rs`.
//!
//! The Redis half needs the `redis` feature (`cargo test --all-features`,
//! as `.ci/run` does); it uses `FORKLESS_TEST_REDIS`, or starts a
//! `redis-server` on a loopback port.

#![allow(clippy::unwrap_used)] // the suite's tests are plain functions that `conformance_suite!` wraps

use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{self, done, recv, stop, wait_for, wait_until, Kind, Op, PATIENCE};
use forkless::{Builder, Bytes, Cluster, CollectionOptions, LockOptions, Worker};

fn builder(kind: Kind) -> Builder {
    Cluster::builder().store_backend(kind.backend())
}

/// A 1-worker cluster whose worker idles: the tests use its handle.
fn idle(kind: Kind) -> Cluster {
    common::idle(builder(kind))
}

/// The operations that have waited behind a key lock so far.
fn lock_waits(cluster: &Cluster) -> u64 {
    cluster
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("forkless_store_lock_waits_total "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the lock-waits metric")
}

/// Waits until `n` operations have met a locked key.
fn wait_for_lock_waits(cluster: &Cluster, n: u64) {
    wait_until(&format!("{n} operations to meet the lock"), || {
        lock_waits(cluster) >= n
    });
}

conformance_suite!(
    get_set_del_incr_and_compare_and_swap,
    typed_values_and_bad_values_say_why,
    operations_behind_a_lock_see_what_it_committed,
    a_dropped_lock_discards_its_changes_and_frees_the_key,
    a_cancelled_acquire_never_strands_the_key,
    try_acquire_and_acquire_timeout_do_not_wait_past_their_limit,
    a_lock_past_its_lease_is_taken_back_and_its_late_commit_fails,
    keys_expire_after_their_last_access_but_never_while_locked,
    limits_and_bad_options_are_errors_that_say_which,
    a_lock_leaked_by_a_worker_that_panics_is_freed,
    counters_from_workers_and_threads_at_once_end_exact,
    after_the_cluster_stops_every_operation_fails_and_nothing_hangs,
    endless_waits_and_leases_work_and_zero_or_overlong_ones_are_refused,
    max_keys_and_max_bytes_hold_or_are_refused,
);

fn get_set_del_incr_and_compare_and_swap(kind: Kind) {
    let cluster = idle(kind);
    let c = cluster.store().collection("basics").blocking();

    assert_eq!(c.get("a").unwrap(), None);
    assert_eq!(c.len().unwrap(), 0, "a get creates nothing");
    c.set("a", "1").unwrap();
    assert_eq!(c.get("a").unwrap(), Some(Bytes::from("1")));
    assert_eq!(c.incr("a", 41).unwrap(), 42);
    assert_eq!(c.incr("fresh", -3).unwrap(), -3);
    assert_eq!(c.get("a").unwrap(), Some(Bytes::from("42")));
    assert_eq!(c.len().unwrap(), 2);

    assert!(!c
        .compare_and_swap("a", Some(b"41"), Some("x".into()))
        .unwrap());
    assert!(c
        .compare_and_swap("a", Some(b"42"), Some("x".into()))
        .unwrap());
    assert_eq!(c.get("a").unwrap(), Some(Bytes::from("x")));
    assert!(c.compare_and_swap("new", None, Some("1".into())).unwrap());
    assert!(!c.compare_and_swap("new", None, Some("2".into())).unwrap());
    assert!(c.compare_and_swap("new", Some(b"1"), None).unwrap());
    assert_eq!(c.get("new").unwrap(), None);

    assert!(c.del("a").unwrap());
    assert!(!c.del("a").unwrap());
    assert_eq!(c.len().unwrap(), 1, "only `fresh` is left");

    // Collections are separate name spaces, even when one's name starts
    // with the other's; handles to one name share it.
    let other = cluster.store().collection("basics:v").blocking();
    assert_eq!(other.get("fresh").unwrap(), None);
    other.set("x", "1").unwrap();
    assert_eq!(c.len().unwrap(), 1);
    let again = cluster.store().collection("basics").blocking();
    assert_eq!(again.get("fresh").unwrap(), Some(Bytes::from("-3")));
    // Keys and values are bytes, any bytes.
    c.set("ключ *?[", vec![0u8, 255, b'\n']).unwrap();
    assert_eq!(
        c.get("ключ *?[").unwrap(),
        Some(Bytes::from(vec![0u8, 255, b'\n']))
    );
    assert_eq!(c.len().unwrap(), 2);
    stop(cluster);
}

fn typed_values_and_bad_values_say_why(kind: Kind) {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Session {
        user: String,
        visits: u32,
    }
    let cluster = idle(kind);
    let c = cluster.store().collection("typed").blocking();
    let s = Session {
        user: "ada".into(),
        visits: 3,
    };
    c.set_as("s", &s).unwrap();
    assert_eq!(c.get_as::<Session>("s").unwrap(), Some(s));

    c.set("n", "not json").unwrap();
    let e = c.get_as::<Session>("n").unwrap_err();
    assert!(e.is_invalid_value(), "{e:?}");

    let e = c.incr("n", 1).unwrap_err();
    assert!(e.is_invalid_value(), "{e:?}");
    assert!(e.to_string().contains("not a decimal i64"), "{e}");
    assert_eq!(c.get("n").unwrap(), Some(Bytes::from("not json")));
    c.set("max", i64::MAX.to_string()).unwrap();
    let e = c.incr("max", 1).unwrap_err();
    assert!(
        e.is_invalid_value() && e.to_string().contains("overflow"),
        "{e}"
    );
    assert_eq!(
        c.get("max").unwrap(),
        Some(Bytes::from(i64::MAX.to_string()))
    );
    stop(cluster);
}

fn operations_behind_a_lock_see_what_it_committed(kind: Kind) {
    let cluster = idle(kind);
    let c = cluster.store().collection("behind");
    done(c.set("k", "v0")).unwrap();

    let mut lock = done(c.acquire("k")).unwrap();
    assert_eq!(lock.get(), Some(Bytes::from("v0")));
    let mut get = Op::new(c.get("k"));
    let mut incr = Op::new(c.incr("n", 1));
    let mut held_n = done(c.acquire("n")).unwrap();
    held_n.set("10");
    assert!(get.poll().is_pending());
    assert!(done(c.try_acquire("k")).unwrap().is_none());
    assert_eq!(
        done(c.get("other")).unwrap(),
        None,
        "other keys do not wait"
    );
    // The get has met the lock (the incr may or may not have, yet).
    wait_for_lock_waits(&cluster, 1);
    lock.set("v1");
    assert_eq!(
        lock.get(),
        Some(Bytes::from("v1")),
        "the lock sees its change"
    );
    done(lock.release()).unwrap();
    assert_eq!(get_result(&mut get), Some(Bytes::from("v1")));

    done(held_n.release()).unwrap();
    let n = get_result(&mut incr);
    assert!(
        n == 11 || n == 1,
        "the incr ran before or after the lock: {n}"
    );
    let end = done(c.get("n")).unwrap();
    assert_eq!(
        end,
        Some(Bytes::from(if n == 11 { "11" } else { "10" })),
        "the incr and the commit both took effect, in some order"
    );
    stop(cluster);
}

fn get_result<T>(op: &mut Op<'_, Result<T, forkless::Error>>) -> T {
    wait_for("the operation to finish", || match op.poll() {
        std::task::Poll::Ready(r) => Some(r.unwrap()),
        std::task::Poll::Pending => None,
    })
}

fn a_dropped_lock_discards_its_changes_and_frees_the_key(kind: Kind) {
    let cluster = idle(kind);
    let c = cluster.store().collection("drop");
    done(c.set("k", "kept")).unwrap();
    let mut lock = done(c.acquire("k")).unwrap();
    let mut waiter = Op::new(c.acquire("k"));
    assert!(waiter.poll().is_pending());
    lock.set("discarded");
    drop(lock);
    let lock = get_result(&mut waiter);
    assert_eq!(lock.get(), Some(Bytes::from("kept")));
    drop(lock);
    // The second lock was dropped too: the key is free once the drop's
    // release is through.
    let free = done(c.acquire_timeout("k", PATIENCE)).unwrap();
    drop(free);
    stop(cluster);
}

fn a_cancelled_acquire_never_strands_the_key(kind: Kind) {
    let cluster = idle(kind);
    let c = cluster.store().collection("cancel");
    let lock = done(c.acquire("k")).unwrap();
    let mut cancelled = Op::new(c.acquire("k"));
    assert!(cancelled.poll().is_pending());
    let mut behind = Op::new(c.acquire("k"));
    assert!(behind.poll().is_pending());
    drop(cancelled);
    drop(lock);
    let second = get_result(&mut behind);

    // Cancelled whenever: the grant may or may not have been made.
    for _ in 0..20 {
        let mut racing = Op::new(c.acquire("k"));
        let _ = racing.poll();
        drop(racing);
    }
    drop(second);
    let last = done(c.acquire_timeout("k", PATIENCE));
    assert!(last.is_ok(), "the key was stranded: {:?}", last.map(drop));
    drop(last);
    stop(cluster);
}

fn try_acquire_and_acquire_timeout_do_not_wait_past_their_limit(kind: Kind) {
    let cluster = idle(kind);
    let c = cluster.store().collection("try").blocking();
    let held = c.acquire("k").unwrap();
    assert!(c.try_acquire("k").unwrap().is_none());
    let e = c
        .acquire_timeout("k", Duration::from_millis(20))
        .unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    assert!(e.to_string().contains("\"k\""), "{e}");
    held.release_blocking().unwrap();
    let lock = c.acquire_timeout("k", PATIENCE).unwrap();
    lock.release_blocking().unwrap();
    let again = c.try_acquire("k").unwrap();
    assert!(again.is_some());
    stop(cluster);
}

fn a_lock_past_its_lease_is_taken_back_and_its_late_commit_fails(kind: Kind) {
    let cluster = idle(kind);
    let c = cluster.store().collection("lease");
    done(c.set("k", "before")).unwrap();
    let mut late =
        done(c.acquire_with("k", LockOptions::new().lease(Duration::from_millis(50)))).unwrap();
    late.set("from the late holder");
    let lock = done(c.acquire_timeout("k", PATIENCE));
    assert_eq!(lock.unwrap().get(), Some(Bytes::from("before")));
    let e = done(late.release()).unwrap_err();
    assert!(e.is_lock_lost(), "{e:?}");
    assert!(e.to_string().contains("nothing was committed"), "{e}");
    assert_eq!(done(c.get("k")).unwrap(), Some(Bytes::from("before")));

    // The collection's max_hold is the default lease.
    let c = cluster.store().collection("max_hold");
    done(c.configure(CollectionOptions {
        max_hold: Some(Duration::from_millis(50)),
        ..CollectionOptions::default()
    }))
    .unwrap();
    let held = done(c.acquire("k")).unwrap();
    let lock = done(c.acquire_timeout("k", PATIENCE));
    assert!(lock.is_ok());
    assert!(done(held.release()).unwrap_err().is_lock_lost());
    stop(cluster);
}

fn keys_expire_after_their_last_access_but_never_while_locked(kind: Kind) {
    let cluster = idle(kind);
    let c = cluster.store().collection("expiry").blocking();
    let ttl = Duration::from_millis(100);
    c.configure(CollectionOptions {
        expire_keys: Some(ttl),
        ..CollectionOptions::default()
    })
    .unwrap();
    c.set("gone", "1").unwrap();
    let lock = c.acquire("locked").unwrap();
    let set_at = Instant::now();
    wait_until("the key to expire", || {
        let gone = c.get("gone").unwrap().is_none();
        if !gone {
            // Each read restarts the clock: leave the key alone for longer
            // than the ttl between reads.
            std::thread::sleep(ttl * 2);
        }
        gone
    });
    assert!(set_at.elapsed() >= ttl, "expired early");
    // Keys nobody reads go too.
    c.set("unread", "1").unwrap();
    wait_until("the unread key to expire", || c.len().unwrap() <= 1);
    assert_eq!(c.len().unwrap(), 1, "the locked key stays");
    let mut lock2 = lock;
    lock2.set("value");
    lock2.release_blocking().unwrap();
    assert_eq!(c.get("locked").unwrap(), Some(Bytes::from("value")));
    stop(cluster);
}

fn limits_and_bad_options_are_errors_that_say_which(kind: Kind) {
    let cluster = idle(kind);
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
    let e = c
        .configure(CollectionOptions {
            expire_keys: Some(Duration::ZERO),
            ..CollectionOptions::default()
        })
        .unwrap_err();
    assert!(e.is_config() && e.to_string().contains("must"), "{e}");
    assert_eq!(
        c.options().max_value_size,
        4,
        "a refused configure changes nothing"
    );
    stop(cluster);
}

fn a_lock_leaked_by_a_worker_that_panics_is_freed(kind: Kind) {
    let (tx, rx) = mpsc::channel();
    // Slot 1 idles, so that the cluster runs on once slot 0 has ended.
    let cluster = builder(kind)
        .workers(2)
        .restart(forkless::Restart::Never)
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                if worker.slot() == 1 {
                    worker.shutdown_signal().await;
                    return Ok(());
                }
                let c = worker.store().collection("leak");
                let mut lock = c.acquire("k").await.expect("acquire");
                lock.set("never committed");
                // Leaked: only the store's clean-up at the worker's exit
                // can free the key.
                Box::leak(Box::new(lock));
                tx.send(()).expect("send");
                if worker.slot() == 0 {
                    panic!("holding a leaked lock");
                }
                Ok::<(), forkless::Error>(())
            }
        })
        .expect("start");
    recv(&rx, "the worker to take the lock");
    let c = cluster.store().collection("leak").blocking();
    let lock = c
        .acquire_timeout("k", PATIENCE)
        .expect("the leaked lock to be freed");
    assert_eq!(lock.get(), None, "nothing was committed");
    drop(lock);
    stop(cluster);
}

fn counters_from_workers_and_threads_at_once_end_exact(kind: Kind) {
    const ROUNDS: i64 = 40;
    const TASKS: i64 = 3;
    const WORKERS: i64 = 2;
    let (tx, rx) = mpsc::channel();
    let cluster = builder(kind)
        .workers(WORKERS as usize)
        .restart(forkless::Restart::Never)
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                let c = worker.store().collection("count");
                let tasks: Vec<_> = (0..TASKS)
                    .map(|_| tokio::task::spawn_local(count_rounds(c.clone(), ROUNDS)))
                    .collect();
                for t in tasks {
                    t.await.expect("task")?;
                }
                tx.send(()).expect("send");
                worker.shutdown_signal().await;
                Ok::<(), forkless::Error>(())
            }
        })
        .expect("start");
    // A plain thread counts too, through the cluster's handle.
    let c = cluster.store().collection("count").blocking();
    for _ in 0..ROUNDS {
        c.incr("incr", 1).unwrap();
    }
    for _ in 0..WORKERS {
        recv(&rx, "a worker to finish its rounds");
    }
    let by_workers = WORKERS * TASKS * ROUNDS;
    let n = |key: &str| -> i64 {
        let v = c.get(key).unwrap().expect("a value");
        std::str::from_utf8(&v).unwrap().parse().unwrap()
    };
    assert_eq!(n("locked"), by_workers);
    assert_eq!(n("cas"), by_workers);
    assert_eq!(n("incr"), by_workers + ROUNDS);
    stop(cluster);
}

/// Adds 1 to three counters `rounds` times: under a lock, with `incr`, and
/// with a compare-and-swap loop.
async fn count_rounds(c: forkless::Collection, rounds: i64) -> Result<(), forkless::Error> {
    for _ in 0..rounds {
        let mut lock = c.acquire("locked").await?;
        let n: i64 = lock.get_as()?.unwrap_or(0);
        lock.set_as(&(n + 1))?;
        lock.release().await?;
        c.incr("incr", 1).await?;
        loop {
            let old = c.get("cas").await?;
            let n: i64 = old
                .as_deref()
                .map_or(0, |b| std::str::from_utf8(b).unwrap().parse().unwrap());
            let new = Bytes::from((n + 1).to_string());
            if c.compare_and_swap("cas", old.as_deref(), Some(new)).await? {
                break;
            }
        }
    }
    Ok(())
}

fn after_the_cluster_stops_every_operation_fails_and_nothing_hangs(kind: Kind) {
    let cluster = idle(kind);
    let store = cluster.store();
    let c = store.collection("stop");
    let lock = done(c.acquire("k")).unwrap();
    let mut waiting_get = Op::new(c.get("k"));
    assert!(waiting_get.poll().is_pending());
    let mut waiting_acquire = Op::new(c.acquire("k"));
    assert!(waiting_acquire.poll().is_pending());
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
    assert!(done(lock.release()).unwrap_err().is_stopped());
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

fn endless_waits_and_leases_work_and_zero_or_overlong_ones_are_refused(kind: Kind) {
    let cluster = idle(kind);
    let c = cluster.store().collection("endless");
    let endless = LockOptions::new()
        .lease(Duration::MAX)
        .timeout(Duration::MAX);
    let mut held = done(c.acquire_with("k", endless)).unwrap();
    held.set("first");
    // Behind the holder, waiting "forever" in two spellings, one after
    // the other (the Redis store does not keep waiters in order).
    let behind = Op::new(c.acquire_timeout("k", Duration::MAX)).pending("acquire_timeout(MAX)");
    wait_for_lock_waits(&cluster, 1);
    done(held.release()).unwrap();
    let mut lock = behind.wait("the grant at release").unwrap();
    assert_eq!(lock.get(), Some(Bytes::from("first")));
    lock.set("second");
    let last = Op::new(c.acquire_with("k", endless)).pending("acquire_with(endless)");
    wait_for_lock_waits(&cluster, 2);
    done(lock.release()).unwrap();
    let lock = last.wait("the grant after that").unwrap();
    assert_eq!(lock.get(), Some(Bytes::from("second")));
    done(lock.release()).unwrap();

    // A zero lease would take the lock back as it is granted: refused.
    let e = done(c.acquire_with("k", LockOptions::new().lease(Duration::ZERO))).unwrap_err();
    assert!(e.is_config() && e.to_string().contains("zero lease"), "{e}");
    assert!(
        done(c.try_acquire("k")).unwrap().is_some(),
        "the refused acquire holds nothing"
    );

    // Collection durations: a year at most, each named when refused.
    let year = Duration::from_secs(365 * 86_400);
    done(c.configure(CollectionOptions {
        expire_keys: Some(year),
        max_hold: Some(year),
        ..CollectionOptions::default()
    }))
    .unwrap();
    done(c.set("k", "kept")).unwrap();
    let lock = done(c.acquire("k")).unwrap();
    done(lock.release()).unwrap();
    assert_eq!(done(c.get("k")).unwrap(), Some(Bytes::from("kept")));
    for (name, options) in [
        (
            "expire_keys",
            CollectionOptions {
                expire_keys: Some(Duration::MAX),
                ..CollectionOptions::default()
            },
        ),
        (
            "max_hold",
            CollectionOptions {
                max_hold: Some(year + Duration::from_secs(1)),
                ..CollectionOptions::default()
            },
        ),
    ] {
        let e = done(c.configure(options)).unwrap_err();
        assert!(e.is_config() && e.to_string().contains(name), "{e}");
    }
    assert_eq!(c.options().max_hold, Some(year), "refused, nothing changed");
    stop(cluster);
}

fn max_keys_and_max_bytes_hold_or_are_refused(kind: Kind) {
    let cluster = idle(kind);
    let c = cluster.store().collection("bounded").blocking();
    let limited = |max_keys, max_bytes| CollectionOptions {
        max_keys,
        max_bytes,
        ..CollectionOptions::default()
    };
    for bad in [limited(Some(0), None), limited(None, Some(0))] {
        let e = c.configure(bad).unwrap_err();
        assert!(e.is_config(), "{e}");
    }
    if let Err(e) = c.configure(limited(Some(2), None)) {
        // The Redis backend cannot count keys that Redis expires: it says
        // so, and points at Redis's own bound.
        assert!(!matches!(kind, Kind::InProcess), "{e}");
        assert!(e.is_config() && e.to_string().contains("maxmemory"), "{e}");
        let e = c.configure(limited(None, Some(1 << 20))).unwrap_err();
        assert!(e.is_config() && e.to_string().contains("max_bytes"), "{e}");
        assert_eq!(c.options(), CollectionOptions::default());
        stop(cluster);
        return;
    }
    // max_keys: 2. A new key past it fails, whatever makes it.
    c.set("a", "1").unwrap();
    c.set("b", "2").unwrap();
    let e = c.set("c", "3").unwrap_err();
    assert!(e.is_full(), "{e:?}");
    assert!(
        e.to_string().contains("\"bounded\"") && e.to_string().contains("max_keys of 2"),
        "{e}"
    );
    assert!(c.incr("c", 1).unwrap_err().is_full());
    assert!(c
        .compare_and_swap("c", None, Some("3".into()))
        .unwrap_err()
        .is_full());
    let mut lock = c.acquire("c").unwrap();
    lock.set("3");
    assert!(lock.release_blocking().unwrap_err().is_full());
    assert!(c.try_acquire("c").unwrap().is_some(), "the lock was freed");
    assert_eq!(c.get("c").unwrap(), None, "nothing was committed");
    // Old keys take any value; deletes always work and make room.
    c.set("a", "a longer value").unwrap();
    assert_eq!(c.incr("b", 40).unwrap(), 42);
    assert!(c.del("a").unwrap());
    c.set("c", "3").unwrap();
    assert_eq!(c.len().unwrap(), 2);

    // max_bytes: keys and values together.
    let c = cluster.store().collection("bytes").blocking();
    c.configure(limited(None, Some(10))).unwrap();
    c.set("k1", "12345678").unwrap(); // 10 bytes
    let e = c.set("k2", "").unwrap_err();
    assert!(
        e.is_full() && e.to_string().contains("max_bytes of 10"),
        "{e}"
    );
    assert!(c.set("k1", "123456789").unwrap_err().is_full(), "grows");
    c.set("k1", "1234").unwrap(); // 6 bytes: shrinking works
    c.set("k2", "12").unwrap(); // 10 bytes again
    assert!(c.incr("k2", 100).unwrap_err().is_full(), "12 + 100 grows");
    assert_eq!(c.incr("k2", -2).unwrap(), 10, "the same size");
    assert_eq!(c.get("k2").unwrap(), Some(Bytes::from("10")));
    stop(cluster);
}
