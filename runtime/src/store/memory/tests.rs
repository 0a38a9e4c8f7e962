//! The in-process engine's unit tests: timers left behind, far deadlines,
//! usage kept exact through random operations, waiter queues, and wakers
//! that panic; the export, import and hold of an upgrade in [`handover`].

mod handover;

use forkless_worker::rt::store::{Change, Reply, Wait};

use super::TimerKind;
use super::*;
use crate::time::deadline;

impl Coll {
    /// The counted usage: keys with a value, and their bytes.
    fn usage(&self) -> (usize, usize) {
        (
            self.usage.keys.load(Ordering::Relaxed),
            self.usage.bytes.load(Ordering::Relaxed),
        )
    }

    /// The usage as counted, or the recount while nothing is counted (no
    /// limit is on).
    fn counted(&self) -> (usize, usize) {
        let options = self.options();
        if options.max_keys.is_some() || options.max_bytes.is_some() {
            self.usage()
        } else {
            self.recount()
        }
    }

    /// The usage counted key by key.
    fn recount(&self) -> (usize, usize) {
        let mut totals = (0, 0);
        for shard in self.shards.iter() {
            for (k, e) in &lock(&shard.0).map {
                if let Some(v) = &e.value {
                    totals.0 += 1;
                    totals.1 += k.len() + v.len();
                }
            }
        }
        totals
    }

    /// How many operations wait behind `key`'s lock, callers gone or not.
    fn queued(&self, key: &str) -> usize {
        self.shard(key)
            .map
            .get(key)
            .and_then(|e| e.lock.as_ref())
            .map_or(0, |l| l.queue.len())
    }
}

fn ready(reply: Reply) -> Outcome {
    match reply {
        Reply::Ready(r) => r.expect("ok"),
        Reply::Later(_) | Reply::Future(_) => panic!("expected an answer at once"),
    }
}

fn token(outcome: Outcome) -> u64 {
    match outcome {
        Outcome::Granted(g) => g.token,
        other => panic!("expected a grant: {other:?}"),
    }
}

fn pending_timers(engine: &Engine) -> usize {
    engine.core.clock.pending()
}

#[test]
fn leases_and_wait_timeouts_that_end_early_leave_no_timer_behind() {
    let clock = Clock::start(crate::fault::guard::Faults::new()).expect("clock");
    let engine = Engine::new(clock.clone());
    let c = engine.collection("timers");
    let hour = Duration::from_secs(3600);
    let acquire = |wait| Op::Acquire {
        wait,
        lease: Some(hour),
    };
    let first = token(ready(c.op(None, "k", acquire(Wait::Forever))));
    assert_eq!(pending_timers(&engine), 1, "the lease");
    let Reply::Later(mut rx) = c.op(None, "k", acquire(Wait::For(hour))) else {
        panic!("expected to wait");
    };
    assert_eq!(pending_timers(&engine), 2, "the lease and the wait");
    ready(c.release("k", first, Change::Keep));
    let second = match rx.try_recv() {
        Ok(Ok(outcome)) => token(outcome),
        other => panic!("expected the grant: {other:?}"),
    };
    assert_eq!(pending_timers(&engine), 1, "the second lease only");
    ready(c.release("k", second, Change::Keep));
    assert_eq!(pending_timers(&engine), 0);
    assert!(matches!(ready(c.count()), Outcome::Count(0)));
    engine.close();
    assert!(matches!(c.count(), Reply::Ready(Err(e)) if e.is_stopped()));
    clock.stop();
}

fn coll(engine: &Engine, name: &str) -> Arc<Coll> {
    named(&engine.collections, name, || {
        Coll::new(name, engine.core.clone())
    })
}

fn acquire(wait: Wait, lease: Option<Duration>) -> Op {
    Op::Acquire { wait, lease }
}

fn later(reply: Reply) -> oneshot::Receiver<Result<Outcome, Error>> {
    match reply {
        Reply::Later(rx) => rx,
        _ => panic!("expected to wait"),
    }
}

fn granted(rx: &mut oneshot::Receiver<Result<Outcome, Error>>) -> u64 {
    match rx.try_recv() {
        Ok(Ok(outcome)) => token(outcome),
        other => panic!("expected the grant: {other:?}"),
    }
}

#[test]
fn huge_leases_and_timeouts_saturate_instead_of_panicking() {
    let clock = Clock::start(crate::fault::guard::Faults::new()).expect("clock");
    let engine = Engine::new(clock.clone());
    let c = coll(&engine, "huge");
    let max = Some(Duration::MAX);
    let owner = Some(Owner {
        slot: 0,
        generation: 0,
    });
    let first = token(ready(c.op(owner, "k", acquire(Wait::Forever, max))));
    let mut second = later(c.op(None, "k", acquire(Wait::For(Duration::MAX), max)));
    let mut third = later(c.op(None, "k", acquire(Wait::For(Duration::MAX), max)));
    // The holder's worker exits: the grant to the next in line runs
    // here, as it does on the master thread.
    engine.owner_exited(0, 0);
    let second = granted(&mut second);
    assert!(matches!(
        c.release("k", first, Change::Keep),
        Reply::Ready(Err(e)) if e.is_lock_lost()
    ));
    ready(c.release("k", second, Change::Set(Bytes::from("v"))));
    let third = granted(&mut third);
    ready(c.release("k", third, Change::Keep));
    assert_eq!(pending_timers(&engine), 0, "every far timer was cancelled");

    // A collection whose max_hold and expiry are at the maximum.
    let options = CollectionOptions {
        expire_keys: Some(deadline::MAX_OPTION),
        max_hold: Some(deadline::MAX_OPTION),
        ..CollectionOptions::default()
    };
    ready(c.configure(&options));
    let t = token(ready(c.op(None, "k", acquire(Wait::Forever, None))));
    ready(c.release("k", t, Change::Keep));
    assert!(matches!(
        ready(c.op(None, "k", Op::Get)),
        Outcome::Value(Some(_))
    ));
    for over in [
        CollectionOptions {
            expire_keys: Some(Duration::MAX),
            ..CollectionOptions::default()
        },
        CollectionOptions {
            max_hold: Some(deadline::MAX_OPTION + Duration::from_secs(1)),
            ..CollectionOptions::default()
        },
    ] {
        let Reply::Ready(Err(e)) = c.configure(&over) else {
            panic!("accepted {over:?}");
        };
        let name = if over.expire_keys.is_some() {
            "expire_keys"
        } else {
            "max_hold"
        };
        assert!(e.is_config() && e.to_string().contains(name), "{e}");
    }
    assert_eq!(c.options(), options, "a refused configure changes nothing");
    engine.close();
    clock.stop();
}

/// A tiny deterministic generator for the table of random operations.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// A value of 0 to 19 bytes.
    fn value(&mut self) -> Bytes {
        Bytes::from("x".repeat(self.below(20) as usize))
    }
}

#[test]
fn usage_stays_exact_through_every_kind_of_change() {
    // A stopped clock fires nothing: the test fires leases and sweeps
    // itself, so that nothing changes between two counts.
    let clock = Clock::start(crate::fault::guard::Faults::new()).expect("clock");
    clock.stop();
    let engine = Engine::new(clock);
    for (seed, limited) in [(1u64, false), (7, true), (42, true), (1234, false)] {
        let c = coll(&engine, &format!("usage {seed}"));
        let (max_keys, max_bytes) = (5, 80);
        if limited {
            ready(c.configure(&CollectionOptions {
                max_keys: Some(max_keys),
                max_bytes: Some(max_bytes),
                ..CollectionOptions::default()
            }));
        }
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut held: Vec<(String, u64)> = Vec::new();
        let mut waiting = Vec::new();
        let mut full = 0;
        for step in 0..4000 {
            if !limited && step == 2000 {
                // Limits turned on halfway count what is there.
                let mut o = c.options();
                o.max_keys = Some(1000);
                o.max_bytes = Some(1 << 20);
                ready(c.configure(&o));
            }
            let key = format!("key{}", rng.below(9));
            let op = match rng.below(12) {
                0 => Op::Get,
                1 | 2 => Op::Set(rng.value()),
                3 => Op::Del,
                4 => Op::Incr(rng.below(2000) as i64 - 1000),
                5 => {
                    let expected = match c.op(None, &key, Op::Get) {
                        Reply::Ready(Ok(Outcome::Value(v))) if rng.below(3) > 0 => v,
                        _ => None,
                    };
                    let new = if rng.below(4) == 0 {
                        None
                    } else {
                        Some(rng.value())
                    };
                    Op::CompareAndSwap { expected, new }
                }
                6 | 7 => acquire(Wait::No, None),
                _ => {
                    if !held.is_empty() {
                        let (key, t) = held.swap_remove(rng.below(held.len() as u64) as usize);
                        let change = match rng.below(4) {
                            0 => Change::Keep,
                            1 => Change::Del,
                            _ => Change::Set(rng.value()),
                        };
                        let reply = if rng.below(5) == 0 {
                            // The lease runs out instead.
                            c.fire(TimerKind::Lease {
                                key: key.as_str().into(),
                                token: t,
                            });
                            Reply::Ready(Ok(Outcome::Done))
                        } else {
                            c.release(&key, t, change)
                        };
                        if let Reply::Ready(Err(e)) = reply {
                            assert!(e.is_full(), "{e}");
                            full += 1;
                        }
                    }
                    if step % 500 == 250 {
                        // Expiry on for a while: keys idle 1 ms expire,
                        // on a read or in a sweep.
                        let mut o = c.options();
                        o.expire_keys = o.expire_keys.xor(Some(Duration::from_millis(1)));
                        ready(c.configure(&o));
                        std::thread::sleep(Duration::from_millis(2));
                        // Some expired keys are read (and dropped)
                        // first, the sweep drops the rest.
                        for k in 0..5 {
                            drop(c.op(None, &format!("key{k}"), Op::Get));
                            assert_eq!(c.counted(), c.recount(), "seed {seed}, read {k}");
                        }
                        c.sweep();
                    }
                    assert_eq!(c.counted(), c.recount(), "seed {seed}, step {step}");
                    continue;
                }
            };
            let is_acquire = matches!(op, Op::Acquire { .. });
            match c.op(None, &key, op) {
                Reply::Ready(Ok(Outcome::Granted(g))) => held.push((key, g.token)),
                Reply::Ready(Err(e)) if e.is_full() => full += 1,
                Reply::Ready(_) => {}
                Reply::Later(rx) => {
                    assert!(!is_acquire, "try-acquire never waits");
                    // Some callers stay, some leave.
                    if rng.below(2) == 0 {
                        waiting.push(rx);
                    }
                }
                Reply::Future(_) => panic!("the engine answers now or later"),
            }
            assert_eq!(c.counted(), c.recount(), "seed {seed}, step {step}");
            if limited {
                let (keys, bytes) = c.usage();
                assert!(
                    keys <= max_keys && bytes <= max_bytes,
                    "{keys} keys, {bytes} B"
                );
            }
        }
        for (key, t) in held.drain(..) {
            drop(c.release(&key, t, Change::Set(Bytes::from("last"))));
        }
        assert_eq!(c.counted(), c.recount(), "seed {seed}, at the end");
        assert_eq!(
            limited,
            full > 0,
            "seed {seed}: {full} operations were refused"
        );
        drop(waiting);
    }
    engine.close();
}

#[test]
fn waiters_whose_callers_left_are_pruned_with_their_timers() {
    let clock = Clock::start(crate::fault::guard::Faults::new()).expect("clock");
    let engine = Engine::new(clock.clone());
    let c = coll(&engine, "abandoned");
    let hour = Duration::from_secs(3600);
    let held = token(ready(c.op(None, "k", acquire(Wait::Forever, None))));
    let mut live = later(c.op(None, "k", acquire(Wait::For(hour), None)));
    // Started and dropped one by one: gets, and acquires with timers.
    for i in 0..10_000 {
        let op = if i % 2 == 0 {
            Op::Get
        } else {
            acquire(Wait::For(hour), None)
        };
        drop(later(c.op(None, "k", op)));
        assert!(c.queued("k") <= 2, "{} queued at {i}", c.queued("k"));
    }
    assert!(pending_timers(&engine) <= 2, "{}", pending_timers(&engine));
    // Started together, every other one dropped: the ones left behind
    // in the middle of the queue go in the sweeps.
    let mut kept = Vec::new();
    for _ in 0..5_000 {
        let gone = later(c.op(None, "k", acquire(Wait::For(hour), None)));
        kept.push(later(c.op(None, "k", Op::Get)));
        drop(gone);
    }
    let queued = c.queued("k");
    assert!(
        queued <= 5_001 + 5_001 / 4 + 16,
        "{queued} queued for 5,001 live"
    );
    assert!(pending_timers(&engine) <= 1 + queued - 5_001);
    drop(kept);
    // The next arrival finds them all gone from the back.
    let mut last = later(c.op(None, "k", Op::Get));
    assert_eq!(c.queued("k"), 2, "the first live waiter and the last");
    assert_eq!(pending_timers(&engine), 1, "the live waiter's timeout");
    ready(c.release("k", held, Change::Set(Bytes::from("v"))));
    let next = granted(&mut live);
    assert!(last.try_recv().is_err(), "waits behind the grant");
    ready(c.release("k", next, Change::Keep));
    assert!(matches!(last.try_recv(), Ok(Ok(Outcome::Value(Some(_))))));
    assert_eq!(pending_timers(&engine), 0);
    engine.close();
    clock.stop();
}

#[test]
fn a_key_has_room_for_max_waiters_and_says_full_past_it() {
    let clock = Clock::start(crate::fault::guard::Faults::new()).expect("clock");
    let engine = Engine::new(clock.clone());
    let c = coll(&engine, "crowded");
    let held = token(ready(c.op(None, "k", acquire(Wait::Forever, None))));
    let mut waiting: Vec<_> = (0..MAX_WAITERS)
        .map(|_| later(c.op(None, "k", Op::Get)))
        .collect();
    let Reply::Ready(Err(e)) = c.op(None, "k", Op::Get) else {
        panic!("one waiter too many was queued");
    };
    assert!(e.is_full() && e.to_string().contains("\"crowded\""), "{e}");
    // Room again once callers leave, wherever they were in the line.
    waiting.swap_remove(MAX_WAITERS / 2);
    let mut tries = 0;
    let last = loop {
        tries += 1;
        if let Reply::Later(rx) = c.op(None, "k", Op::Get) {
            break rx;
        }
        assert!(
            tries <= MAX_WAITERS / 4 + 1,
            "still full after {tries} tries"
        );
    };
    waiting.push(last);
    ready(c.release("k", held, Change::Keep));
    for mut rx in waiting {
        assert!(matches!(rx.try_recv(), Ok(Ok(Outcome::Value(None)))));
    }
    engine.close();
    clock.stop();
}

struct PanicsOnWake;

impl std::task::Wake for PanicsOnWake {
    fn wake(self: Arc<Self>) {
        panic!("a waker panics as it is woken")
    }
}

#[test]
fn a_waker_that_panics_as_its_grant_is_sent_loses_no_lock_and_no_waiter() {
    use std::future::Future;
    let clock = Clock::start(crate::fault::guard::Faults::new()).expect("clock");
    let engine = Engine::new(clock.clone());
    let c = coll(&engine, "wakers");
    let first = token(ready(c.op(None, "k", acquire(Wait::Forever, None))));
    let mut hostile = later(c.op(None, "k", acquire(Wait::Forever, None)));
    let waker = std::task::Waker::from(Arc::new(PanicsOnWake));
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(std::pin::Pin::new(&mut hostile).poll(&mut cx).is_pending());
    let mut behind = later(c.op(None, "k", Op::Get));
    let released = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.release("k", first, Change::Set(Bytes::from("v")))
    }));
    assert!(released.is_err(), "the waker's panic reaches the caller");
    // The grant was made and delivered; the one behind still waits.
    let second = granted(&mut hostile);
    assert_eq!(c.queued("k"), 1);
    assert!(behind.try_recv().is_err());
    ready(c.release("k", second, Change::Keep));
    assert!(matches!(behind.try_recv(), Ok(Ok(Outcome::Value(Some(_))))));
    assert_eq!(c.counted(), c.recount());
    engine.close();
    clock.stop();
}
