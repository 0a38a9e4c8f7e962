//! The store's part of an upgrade: the hold: operations of every kind
//! wait, run in arrival order after the release, or fail "stopped" at a
//! close. No test sleeps to synchronise: each waits on an answer.

use std::time::Duration;

use bytes::Bytes;
use forkless_worker::rt::store::CollectionBackend as _;
use forkless_worker::rt::store::{Change, Op, Outcome, Reply, Wait};
use forkless_worker::CollectionOptions;

use super::{acquire, coll, granted, later, pending_timers, ready};
use crate::fault::guard::Faults;
use crate::store::memory::Engine;
use crate::time::clock::Clock;

const HOUR: Duration = Duration::from_secs(3600);

type Rx = tokio::sync::oneshot::Receiver<Result<Outcome, forkless_worker::Error>>;

fn clock() -> std::sync::Arc<Clock> {
    Clock::start(Faults::new()).expect("clock")
}

fn set(v: &str) -> Op {
    Op::Set(Bytes::copy_from_slice(v.as_bytes()))
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
