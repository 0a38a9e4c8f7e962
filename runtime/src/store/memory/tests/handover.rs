//! The store's part of an upgrade: what an export takes (options,
//! counters, values, remaining expiry; locks released, waiters stopped),
//! that it closes the engine, an import's checks and accounting, and the
//! hold: operations of every kind wait, run in arrival order after the
//! release, or fail "stopped" at a close. No test sleeps to synchronise:
//! each waits on an answer, or on the count of what waits in the hold.

use std::time::{Duration, Instant};

use bytes::Bytes;
use forkless_worker::rt::store::CollectionBackend as _;
use forkless_worker::rt::store::{Change, Op, Outcome, Reply, Wait};
use forkless_worker::CollectionOptions;

use super::{acquire, coll, granted, later, pending_timers, ready, token};
use crate::fault::guard::Faults;
use crate::store::memory::{Coll, Engine};
use crate::store::snapshot::{CollectionSnapshot, KeySnapshot, Snapshot};
use crate::time::clock::Clock;

const HOUR: Duration = Duration::from_secs(3600);

type Rx = tokio::sync::oneshot::Receiver<Result<Outcome, forkless_worker::Error>>;

fn clock() -> std::sync::Arc<Clock> {
    Clock::start(Faults::new()).expect("clock")
}

fn set(v: &str) -> Op {
    Op::Set(Bytes::copy_from_slice(v.as_bytes()))
}

fn value(v: &str) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(v.as_bytes()))
}

fn stopped(reply: Reply) -> bool {
    matches!(reply, Reply::Ready(Err(e)) if e.is_stopped())
}

/// The answer that came on `rx`, which must have come.
fn answer(rx: &mut Rx) -> Outcome {
    match rx.try_recv() {
        Ok(Ok(outcome)) => outcome,
        other => panic!("expected an answer: {other:?}"),
    }
}

/// Whether `rx` was answered with a "stopped" error, or closed (which the
/// client reads as one).
fn was_stopped(rx: &mut Rx) -> bool {
    match rx.try_recv() {
        Ok(Err(e)) => e.is_stopped(),
        Err(tokio::sync::oneshot::error::TryRecvError::Closed) => true,
        _ => false,
    }
}

fn unanswered(rx: &mut Rx) -> bool {
    matches!(
        rx.try_recv(),
        Err(tokio::sync::oneshot::error::TryRecvError::Empty)
    )
}

impl Coll {
    /// Makes `key` look last touched `by` earlier.
    fn age(&self, key: &str, by: Duration) {
        let mut data = self.shard(key);
        let e = data.map.get_mut(key).expect("the key");
        e.touched = e
            .touched
            .checked_sub(by)
            .expect("the machine is up a minute");
    }
}

/// The key `key` of collection `name` in `s`.
fn find<'a>(s: &'a Snapshot, name: &str, key: &str) -> &'a KeySnapshot {
    let c = s.collections.iter().find(|c| c.name == name);
    let c = c.unwrap_or_else(|| panic!("no collection {name:?}"));
    let k = c.keys.iter().find(|k| k.key == key);
    k.unwrap_or_else(|| panic!("no key {key:?} in {name:?}"))
}

/// Waits (without sleeping) until `n` operations wait in `engine`'s hold.
fn until_parked(engine: &Engine, n: usize) {
    let give_up = crate::time::deadline::from_now(Duration::from_secs(120));
    while engine.core.hold.parked() < n {
        assert!(Instant::now() < give_up, "never parked {n} operations");
        std::thread::yield_now();
    }
}

#[test]
fn a_store_moves_whole_with_options_counters_and_remaining_expiry() {
    let clock = clock();
    let old = Engine::new(clock.clone());
    let plain = coll(&old, "plain");
    ready(plain.op(None, "counter", Op::Incr(41)));
    ready(plain.op(None, "binary", Op::Set(Bytes::from_static(b"\0\xff"))));
    let limits = CollectionOptions {
        max_key_size: 100,
        max_value_size: 200,
        max_hold: Some(Duration::from_secs(60)),
        max_keys: Some(3),
        max_bytes: Some(1000),
        ..CollectionOptions::default()
    };
    let limited = coll(&old, "limited");
    ready(limited.configure(&limits));
    ready(limited.op(None, "a", set("1")));
    ready(limited.op(None, "b", set("22")));
    let expiry = CollectionOptions {
        expire_keys: Some(HOUR),
        ..CollectionOptions::default()
    };
    let expiring = coll(&old, "expiring");
    ready(expiring.configure(&expiry));
    ready(expiring.op(None, "fresh", set("f")));
    ready(expiring.op(None, "aged", set("a")));
    expiring.age("aged", Duration::from_secs(60));
    coll(&old, "empty");

    let snapshot = old.export();
    let mut bytes = Vec::new();
    snapshot.write_to(&mut bytes).expect("write");
    let read = Snapshot::read_from(&mut bytes.as_slice()).expect("read");
    assert_eq!(read, snapshot);
    let names: Vec<_> = snapshot.collections.iter().map(|c| &c.name[..]).collect();
    assert_eq!(names, ["empty", "expiring", "limited", "plain"]);
    assert_eq!(find(&snapshot, "plain", "counter").expires_in, None);
    let aged = find(&snapshot, "expiring", "aged")
        .expires_in
        .expect("left");
    assert!(!aged.is_zero() && aged <= HOUR - Duration::from_secs(60));
    let fresh = find(&snapshot, "expiring", "fresh")
        .expires_in
        .expect("left");
    assert!(!fresh.is_zero() && fresh <= HOUR);

    let new = Engine::new(clock.clone());
    new.import(read).expect("import");
    for (name, options) in [
        ("plain", CollectionOptions::default()),
        ("limited", limits),
        ("expiring", expiry),
        ("empty", CollectionOptions::default()),
    ] {
        assert_eq!(coll(&new, name).options(), options, "{name}");
    }
    let plain = coll(&new, "plain");
    assert!(matches!(
        ready(plain.op(None, "counter", Op::Incr(1))),
        Outcome::Int(42)
    ));
    assert!(matches!(
        ready(plain.op(None, "binary", Op::Get)),
        Outcome::Value(Some(v)) if v == Bytes::from_static(b"\0\xff")
    ));
    // The limits count what moved: two keys of 2 and 3 bytes.
    let limited = coll(&new, "limited");
    assert_eq!(limited.usage(), (2, 5));
    ready(limited.op(None, "c", set("3")));
    assert!(matches!(
        limited.op(None, "d", set("4")),
        Reply::Ready(Err(e)) if e.is_full()
    ));
    assert_eq!(limited.usage(), limited.recount());

    // Moved again, each key has at most the time it had, and some left.
    let again = new.export();
    let aged_again = find(&again, "expiring", "aged").expires_in.expect("left");
    assert!(
        !aged_again.is_zero() && aged_again <= aged,
        "{aged_again:?}"
    );
    let fresh_again = find(&again, "expiring", "fresh").expires_in.expect("left");
    assert!(!fresh_again.is_zero() && fresh_again <= fresh);
    assert_eq!(again.keys(), 7);
    new.close();
    old.close();
    clock.stop();
}

#[test]
fn an_export_releases_a_lock_held_outside_the_workers_and_stops_its_waiters() {
    let clock = clock();
    let engine = Engine::new(clock.clone());
    let c = coll(&engine, "locks");
    ready(c.op(None, "k", set("before")));
    let held = token(ready(c.op(None, "k", acquire(Wait::Forever, Some(HOUR)))));
    let bare = token(ready(c.op(None, "bare", acquire(Wait::Forever, None))));
    let mut get = later(c.op(None, "k", Op::Get));
    let mut next = later(c.op(None, "k", acquire(Wait::For(HOUR), None)));
    assert_eq!(pending_timers(&engine), 2, "the lease and the wait");

    let snapshot = engine.export();
    let keys = &snapshot.collections[0].keys;
    assert_eq!(keys.len(), 1, "the key that held only a lock does not move");
    assert_eq!(
        (&keys[0].key[..], &keys[0].value[..]),
        ("k", &b"before"[..])
    );
    assert_eq!(
        pending_timers(&engine),
        0,
        "the lease and the wait cancelled"
    );
    assert!(was_stopped(&mut get) && was_stopped(&mut next));
    // The holders' releases commit nothing and say why.
    for (key, t) in [("k", held), ("bare", bare)] {
        let Reply::Ready(Err(e)) = c.release(key, t, Change::Set(Bytes::from("after"))) else {
            panic!("a release after the export worked");
        };
        assert!(e.is_lock_lost() && e.to_string().contains("moved"), "{e}");
    }
    assert_eq!(engine.export(), snapshot);
    engine.close();
    clock.stop();
}

#[test]
fn after_an_export_every_operation_is_refused_and_a_second_export_is_the_same() {
    let clock = clock();
    let engine = Engine::new(clock.clone());
    let c = coll(&engine, "c");
    ready(c.op(None, "k", set("v")));
    let first = engine.export();
    for op in [
        Op::Get,
        set("w"),
        Op::Del,
        Op::Incr(1),
        Op::CompareAndSwap {
            expected: value("v"),
            new: value("w"),
        },
        acquire(Wait::No, None),
    ] {
        assert!(stopped(c.op(None, "k", op.clone())), "{op:?}");
    }
    assert!(stopped(c.configure(&CollectionOptions::default())));
    assert!(stopped(c.count()));
    let e = engine.import(Snapshot::default()).expect_err("closed");
    assert!(e.is_stopped(), "{e}");
    assert_eq!(engine.export(), first, "nothing changed since");
    assert!(stopped(coll(&engine, "new").op(None, "k", set("v"))));
    engine.close();
    assert!(engine.export().collections.is_empty());
    clock.stop();
}

#[test]
fn operations_held_wait_and_run_in_arrival_order_against_the_imported_store() {
    let clock = clock();
    let engine = Engine::new(clock.clone());
    engine.hold();
    let c = coll(&engine, "app");
    let mut ops = [
        later(c.op(None, "n", Op::Incr(1))),
        later(c.op(None, "v", set("1"))),
        later(c.op(None, "v", set("2"))),
        later(c.op(None, "v", Op::Get)),
        later(c.op(None, "n", Op::Incr(1))),
        later(c.count()),
    ];
    let mut lock = later(c.op(None, "k", acquire(Wait::Forever, None)));
    let mut behind = later(c.op(None, "k", Op::Get));
    let limits = CollectionOptions {
        max_keys: Some(100),
        ..CollectionOptions::default()
    };
    let mut configured = later(c.configure(&limits));
    assert_eq!(engine.core.hold.parked(), 9);

    engine
        .import(Snapshot {
            collections: vec![CollectionSnapshot {
                name: "app".into(),
                options: CollectionOptions::default(),
                keys: vec![
                    KeySnapshot {
                        key: "n".into(),
                        value: Bytes::from("41"),
                        expires_in: None,
                    },
                    KeySnapshot {
                        key: "k".into(),
                        value: Bytes::from("x"),
                        expires_in: None,
                    },
                ],
            }],
        })
        .expect("import");
    assert!(
        ops.iter_mut().all(unanswered),
        "nothing runs before the release"
    );
    assert!(unanswered(&mut lock) && unanswered(&mut configured));

    engine.release_hold();
    let outcomes: Vec<String> = ops
        .iter_mut()
        .map(|rx| format!("{:?}", answer(rx)))
        .collect();
    assert_eq!(
        outcomes,
        [
            "Int(42)",
            "Done",
            "Done",
            "Value(Some(b\"2\"))",
            "Int(43)",
            "Count(3)"
        ]
    );
    let held = granted(&mut lock);
    assert!(
        unanswered(&mut behind),
        "waits behind the lock granted first"
    );
    assert!(matches!(answer(&mut configured), Outcome::Done));
    assert_eq!(c.options(), limits);
    assert_eq!(engine.core.hold.parked(), 0);
    // Not held any more: answers come at once.
    assert!(matches!(
        ready(c.op(None, "v", Op::Get)),
        Outcome::Value(Some(_))
    ));
    ready(c.release("k", held, Change::Keep));
    assert!(matches!(answer(&mut behind), Outcome::Value(Some(v)) if v == "x"));
    assert_eq!(c.usage(), c.recount());
    engine.close();
    clock.stop();
}

#[test]
fn blocking_and_async_clients_wait_for_the_release() {
    let clock = clock();
    let engine = Engine::new(clock.clone());
    engine.hold();
    let store = forkless_worker::rt::store_handle(engine.clone(), None);
    let blocking = {
        let c = store.collection("app").blocking();
        std::thread::spawn(move || c.incr("n", 1))
    };
    until_parked(&engine, 1);
    let asynchronous = {
        let c = store.collection("app");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            rt.block_on(async move { c.get("n").await })
        })
    };
    until_parked(&engine, 2);
    engine
        .import(Snapshot {
            collections: vec![CollectionSnapshot {
                name: "app".into(),
                options: CollectionOptions::default(),
                keys: vec![KeySnapshot {
                    key: "n".into(),
                    value: Bytes::from("41"),
                    expires_in: None,
                }],
            }],
        })
        .expect("import");
    engine.release_hold();
    assert_eq!(blocking.join().expect("thread").expect("incr"), 42);
    let read = asynchronous.join().expect("thread").expect("get");
    assert_eq!(read, value("42"));
    engine.close();
    clock.stop();
}

#[test]
fn an_acquire_waits_in_the_hold_no_longer_than_it_may() {
    let clock = clock();
    let engine = Engine::new(clock.clone());
    engine.hold();
    let c = coll(&engine, "app");
    assert!(matches!(
        ready(c.op(None, "k", acquire(Wait::No, None))),
        Outcome::NotGranted
    ));
    assert!(matches!(
        ready(c.op(None, "k", acquire(Wait::For(Duration::ZERO), None))),
        Outcome::NotGranted
    ));
    let mut long = later(c.op(None, "k", acquire(Wait::For(HOUR), None)));
    let short = later(c.op(
        None,
        "j",
        acquire(Wait::For(Duration::from_millis(1)), None),
    ));
    assert_eq!(pending_timers(&engine), 2);
    // The short one's timer fires on the timer thread while still held.
    assert!(matches!(short.blocking_recv(), Ok(Ok(Outcome::NotGranted))));
    assert_eq!(engine.core.hold.parked(), 1);
    engine.release_hold();
    let t = granted(&mut long);
    assert_eq!(pending_timers(&engine), 0, "its hold timeout cancelled");
    ready(c.release("k", t, Change::Keep));
    engine.close();
    clock.stop();
}

#[test]
fn a_held_engine_that_closes_fails_what_waits_with_stopped() {
    let clock = clock();
    let engine = Engine::new(clock.clone());
    engine.hold();
    let c = coll(&engine, "app");
    let mut waiting = [
        later(c.op(None, "k", Op::Get)),
        later(c.op(None, "k", set("v"))),
        later(c.count()),
        later(c.configure(&CollectionOptions::default())),
        later(c.op(None, "k", acquire(Wait::For(HOUR), None))),
    ];
    engine.close();
    assert!(waiting.iter_mut().all(was_stopped));
    assert_eq!(pending_timers(&engine), 0);
    assert!(stopped(c.op(None, "k", Op::Get)));
    engine.release_hold();
    assert!(stopped(c.count()));
    clock.stop();
}

#[test]
fn a_release_that_waited_runs_though_its_caller_left_and_other_leavers_are_skipped() {
    let clock = clock();
    let engine = Engine::new(clock.clone());
    engine.hold();
    let c = coll(&engine, "app");
    let mut first = later(c.op(None, "k", acquire(Wait::Forever, None)));
    engine.release_hold();
    let t = granted(&mut first);
    engine.hold();
    drop(later(c.release(
        "k",
        t,
        Change::Set(Bytes::from("committed")),
    )));
    drop(later(c.op(None, "gone", set("never"))));
    let mut get = later(c.op(None, "k", Op::Get));
    engine.release_hold();
    assert!(matches!(answer(&mut get), Outcome::Value(Some(v)) if v == "committed"));
    assert!(matches!(
        ready(c.op(None, "gone", Op::Get)),
        Outcome::Value(None)
    ));
    engine.close();
    clock.stop();
}

#[test]
fn callers_that_left_the_hold_are_pruned_with_their_timers() {
    let clock = clock();
    let engine = Engine::new(clock.clone());
    engine.hold();
    let c = coll(&engine, "app");
    let mut live = later(c.op(None, "k", set("v")));
    for i in 0..10_000 {
        let op = if i % 2 == 0 {
            Op::Get
        } else {
            acquire(Wait::For(HOUR), None)
        };
        drop(later(c.op(None, "k", op)));
        assert!(engine.core.hold.parked() <= 1024, "at {i}");
    }
    assert!(pending_timers(&engine) <= 1024);
    engine.release_hold();
    assert!(matches!(answer(&mut live), Outcome::Done));
    assert_eq!(pending_timers(&engine), 0);
    engine.close();
    clock.stop();
}

#[test]
fn an_import_loads_all_or_nothing_and_only_into_an_empty_engine() {
    let clock = clock();
    let snapshot = |keys: &[&str], max_keys| Snapshot {
        collections: vec![
            CollectionSnapshot {
                name: "a".into(),
                options: CollectionOptions::default(),
                keys: vec![KeySnapshot {
                    key: "x".into(),
                    value: Bytes::from("1"),
                    expires_in: None,
                }],
            },
            CollectionSnapshot {
                name: "b".into(),
                options: CollectionOptions {
                    max_keys,
                    ..CollectionOptions::default()
                },
                keys: keys
                    .iter()
                    .map(|k| KeySnapshot {
                        key: (*k).into(),
                        value: Bytes::from("v"),
                        expires_in: None,
                    })
                    .collect(),
            },
        ],
    };
    let busy = Engine::new(clock.clone());
    ready(coll(&busy, "other").op(None, "k", set("v")));
    let e = busy.import(snapshot(&["y"], None)).expect_err("not empty");
    assert!(e.is_config() && e.to_string().contains("\"other\""), "{e}");
    assert!(matches!(ready(coll(&busy, "a").count()), Outcome::Count(0)));

    let engine = Engine::new(clock.clone());
    let e = engine
        .import(snapshot(&["y", "z", "y"], Some(5)))
        .expect_err("a key twice");
    assert!(
        e.is_invalid_value() && e.to_string().contains("twice"),
        "{e}"
    );
    for name in ["a", "b"] {
        let c = coll(&engine, name);
        assert!(matches!(ready(c.count()), Outcome::Count(0)), "{name}");
        assert_eq!(c.options(), CollectionOptions::default(), "{name}");
        assert_eq!(c.usage(), (0, 0));
    }
    let mut bad = snapshot(&[], None);
    bad.collections[0].options.max_value_size = 0;
    assert!(engine
        .import(bad)
        .expect_err("bad options")
        .is_invalid_value());
    // Past a limit (lowered after the keys were written): loaded, counted.
    engine
        .import(snapshot(&["y", "z"], Some(1)))
        .expect("import");
    let b = coll(&engine, "b");
    assert_eq!(b.usage(), (2, 4));
    assert!(matches!(b.op(None, "w", set("v")), Reply::Ready(Err(e)) if e.is_full()));
    busy.close();
    engine.close();
    clock.stop();
}
