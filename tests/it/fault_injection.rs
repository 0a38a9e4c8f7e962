//! Fault injection (issue 14, "make the class impossible"): the public API
//! driven with extreme and hostile values (durations, keys, sizes, slots,
//! topics, lifecycle storms) and a panic in every callback a user passes.
//!
//! After each case: the master still answers `status()` with the right size
//! and no slot stuck; every serving slot answers a bus request (which also
//! uses the store) and the cluster answers TCP requests on new connections;
//! no thread the runtime owns panicked (`forkless_runtime_panics_total`);
//! and `shutdown()` then `join_timeout` returns a report of every slot.

use std::fmt::Debug;
use std::future::Future;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use crate::common::{self, done, Op, PATIENCE};
use forkless::{
    Builder, Bus, Bytes, Cluster, CollectionOptions, Error, Event, Exit, Listener, LockOptions,
    Report, Restart, Status, Store, TaskPanic, Worker, WorkerState,
};

// ---------------------------------------------------------------- helpers

/// How long a health check's bus request may take (less than `PATIENCE`,
/// so that a hang fails with its own message).
const REQUEST: Duration = Duration::from_secs(30);

/// The longest duration an option may hold.
const YEAR: Duration = Duration::from_secs(86_400 * 365);

/// What a case runs in a generation, beside serving. Made by the body
/// factory itself, so a fault that panics while making it panics there.
type Fault = Pin<Box<dyn Future<Output = ()>>>;

fn no_fault() -> Fault {
    Box::pin(async {})
}

/// Settings that keep a busy machine quick: no pinning, short throttling.
fn base() -> Builder {
    Cluster::builder()
        .pin_cores(false)
        .throttle_delay(Duration::from_millis(20))
        .max_backoff(Duration::from_millis(100))
}

/// A running cluster whose workers serve, and what a case expects of it.
struct Served {
    case: String,
    cluster: Cluster,
    addr: SocketAddr,
    size: usize,
    /// Whether the case is about a panic that reaches a runtime thread.
    runtime_panics_allowed: bool,
}

/// Starts `workers` workers that each listen on one shared port, answer
/// `"{slot} {generation}\n"` there, answer bus requests (`"panic"` panics
/// while holding the request; anything else does a store round trip and
/// answers `"{slot} {generation}"`), and run `fault(&worker)` beside.
fn try_serve(
    case: &str,
    builder: Builder,
    workers: usize,
    fault: impl Fn(&Worker) -> Fault + Send + Sync + 'static,
) -> Result<Served, Error> {
    let (tx, rx) = mpsc::channel();
    let cluster = builder.workers(workers).start(move |worker: Worker| {
        let fault = fault(&worker);
        let tx = tx.clone();
        async move {
            let listener = worker.listen("127.0.0.1:0").await?;
            let _ = tx.send(listener.local_addr()?);
            let fault = async move {
                fault.await;
                std::future::pending::<()>().await
            };
            tokio::select! {
                served = serve_all(&worker, &listener) => served,
                () = fault => unreachable!(),
            }
        }
    })?;
    let addr = common::recv(&rx, &format!("{case}: a listener"));
    Ok(Served {
        case: case.to_owned(),
        cluster,
        addr,
        size: workers,
        runtime_panics_allowed: false,
    })
}

fn serve(
    case: &str,
    builder: Builder,
    workers: usize,
    fault: impl Fn(&Worker) -> Fault + Send + Sync + 'static,
) -> Served {
    try_serve(case, builder, workers, fault).unwrap_or_else(|e| panic!("{case}: start: {e}"))
}

async fn serve_all(worker: &Worker, listener: &Listener) -> Result<(), Error> {
    let inbox = async {
        let mut inbox = worker.inbox();
        while let Some(envelope) = inbox.recv().await {
            if !envelope.is_request() {
                continue;
            }
            if envelope.message() == "panic" {
                panic!("slot {} panics holding a request", worker.slot());
            }
            let answer = store_round_trip(worker).await;
            envelope.reply(answer);
        }
    };
    let (_, served) = tokio::join!(inbox, common::serve_whoami(worker, listener));
    served
}

/// `"{slot} {generation}"` once an incr and a lock on the store worked.
async fn store_round_trip(worker: &Worker) -> String {
    let health = worker.store().collection("health");
    let used = async {
        health.incr("hits", 1).await?;
        health.acquire("lock").await?.release().await
    };
    match used.await {
        Ok(()) => format!("{} {}", worker.slot(), worker.generation()),
        Err(e) => format!(
            "{} {}: the store failed: {e}",
            worker.slot(),
            worker.generation()
        ),
    }
}

/// One request on a new connection; errors are returned, not panicked.
fn try_ask(addr: SocketAddr) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, PATIENCE).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(PATIENCE))
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    if answer.is_empty() {
        return Err("closed without an answer".to_owned());
    }
    Ok(answer)
}

/// The `forkless_runtime_panics_total` samples above 0.
fn runtime_panics(cluster: &Cluster) -> Vec<String> {
    cluster
        .metrics()
        .lines()
        .filter(|l| l.starts_with("forkless_runtime_panics_total"))
        .filter(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
        })
        .map(str::to_owned)
        .collect()
}

impl Served {
    fn allowing_runtime_panics(mut self) -> Served {
        self.runtime_panics_allowed = true;
        self
    }

    /// Every slot serves: see [`healthy_except`](Served::healthy_except).
    fn healthy(&self) -> Status {
        self.healthy_except(&[])
    }

    /// (a) `status()` settles on the right size, not rolling, every slot
    /// ready except `ended` (stopped by policy); (b) each ready slot answers
    /// a bus request as the generation that status names, an ended one
    /// refuses it, and new connections are answered by a serving slot; no
    /// runtime thread panicked.
    fn healthy_except(&self, ended: &[usize]) -> Status {
        let case = &self.case;
        let status = self.settled(ended);
        let bus = self.cluster.bus();
        for w in &status.workers {
            let reply = done(bus.request_timeout(w.slot, "who", REQUEST));
            if ended.contains(&w.slot) {
                let e = reply.expect_err("an ended slot answered");
                assert!(
                    e.is_stopped() || e.is_no_reply(),
                    "{case}: a request to ended slot {}: {e}",
                    w.slot
                );
                continue;
            }
            let reply = reply.unwrap_or_else(|e| {
                panic!(
                    "{case}: slot {} does not answer the bus: {e}; status now: {:#?}",
                    w.slot,
                    self.cluster.status()
                )
            });
            assert_eq!(
                reply,
                format!("{} {}", w.slot, w.generation),
                "{case}: the answer is not from the generation status names: {w:?}"
            );
        }
        for _ in 0..self.size.max(2) {
            let answer = try_ask(self.addr)
                .unwrap_or_else(|e| panic!("{case}: a request on a new connection: {e}"));
            let slot: usize = answer
                .split(' ')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{case}: a strange answer {answer:?}"));
            assert!(
                slot < self.size && !ended.contains(&slot),
                "{case}: answered {answer:?}, by slot {slot}; status now: {:#?}",
                self.cluster.status()
            );
        }
        self.no_runtime_panics();
        status
    }

    fn no_runtime_panics(&self) {
        if !self.runtime_panics_allowed {
            let panics = runtime_panics(&self.cluster);
            assert!(
                panics.is_empty(),
                "{}: a runtime thread panicked: {panics:?}",
                self.case
            );
        }
    }

    /// Waits until `status()` shows every slot at rest.
    fn settled(&self, ended: &[usize]) -> Status {
        let what = format!("{} slots at rest (ended: {ended:?})", self.size);
        self.wait_status(&what, |s| {
            s.size == self.size
                && s.workers.len() == self.size
                && !s.rolling
                && !s.stopping
                && s.workers.iter().enumerate().all(|(i, w)| {
                    w.slot == i
                        && if ended.contains(&i) {
                            matches!(w.state, WorkerState::Stopped | WorkerState::GaveUp)
                        } else {
                            w.state == WorkerState::Ready
                        }
                })
        })
    }

    /// (c) `shutdown()` then `join_timeout` returns a report of every slot
    /// (the master thread lived), and status says that nothing runs.
    fn stop(self) -> Report {
        let case = &self.case;
        self.cluster.shutdown();
        let report = self
            .cluster
            .join_timeout(PATIENCE)
            .unwrap_or_else(|| panic!("{case}: the cluster did not stop within {PATIENCE:?}"));
        assert!(
            report.slots.len() >= self.size,
            "{case}: the report lacks slots (did the master thread die?):\n{report}"
        );
        let status = self.cluster.status();
        assert!(
            status.stopping
                && status
                    .workers
                    .iter()
                    .all(|w| w.state == WorkerState::Stopped),
            "{case}: status after the stop: {status:#?}"
        );
        self.no_runtime_panics();
        report
    }

    /// Makes `slot` panic while it holds a bus request (the request fails
    /// with "no reply" at once), and waits for status to show its respawn.
    fn panic_slot(&self, slot: usize) {
        let generation = self.settled(&[]).workers[slot].generation;
        let e = done(self.cluster.bus().request_timeout(slot, "panic", PATIENCE))
            .expect_err("a panicking slot replied");
        assert!(e.is_no_reply(), "{}: {e}", self.case);
        self.wait_status(&format!("slot {slot}'s respawn"), |s| {
            s.workers[slot].generation > generation
        });
    }

    /// Waits until `status()` satisfies `done`.
    fn wait_status(&self, what: &str, done: impl Fn(&Status) -> bool) -> Status {
        common::wait_for(&format!("{}: {what}", self.case), || {
            let status = self.cluster.status();
            done(&status).then_some(status)
        })
    }
}

/// Failures of a table of checks, reported all at once.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, what: impl AsRef<str>, ok: bool, got: &dyn Debug) {
        if !ok {
            self.0.push(format!("{}: got {got:?}", what.as_ref()));
        }
    }

    fn err(&mut self, what: &str, got: &Result<impl Debug, Error>, is: fn(&Error) -> bool) {
        self.check(what, got.as_ref().err().is_some_and(is), got);
    }

    fn ok(&mut self, what: &str, got: &Result<impl Debug, Error>) {
        self.check(what, got.is_ok(), got);
    }

    fn assert_clean(self, case: &str) {
        assert!(self.0.is_empty(), "{case}:\n  {}", self.0.join("\n  "));
    }
}

/// A value whose serialization panics.
struct PanicsOnSerialize;

impl serde::Serialize for PanicsOnSerialize {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("a Serialize impl panics")
    }
}

/// Panics when dropped, unless dropped by a panic's unwinding.
struct PanicsOnDrop(&'static str);

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("{}", self.0);
        }
    }
}

/// A waker that panics when woken.
struct PanicsOnWake;

impl Wake for PanicsOnWake {
    fn wake(self: Arc<Self>) {
        panic!("a waker panics as it is woken")
    }
}

// ---------------------------------------------------------------- durations

type SetDuration = fn(Builder, Duration) -> Builder;

const DURATIONS: [(&str, SetDuration); 7] = [
    ("shutdown_timeout", Builder::shutdown_timeout),
    ("terminate_timeout", Builder::terminate_timeout),
    ("throttle_delay", Builder::throttle_delay),
    ("max_backoff", Builder::max_backoff),
    ("request_timeout", Builder::request_timeout),
    ("ready_timeout", Builder::ready_timeout),
    ("stall_timeout", Builder::stall_timeout),
];

/// Zero, a year (the maximum) and `Duration::MAX` for every builder
/// duration: MAX is refused by name; the others are refused with
/// `is_config` or give a cluster that serves, respawns a panicking worker,
/// rolls a restart and stops.
#[test]
fn every_builder_duration_at_zero_a_year_and_max() {
    for (name, set) in DURATIONS {
        for d in [Duration::ZERO, YEAR, Duration::MAX] {
            let case = format!("{name}({d:?})");
            let served = match try_serve(&case, set(base(), d), 2, |_| no_fault()) {
                Err(e) => {
                    assert!(e.is_config(), "{case}: {e}");
                    assert!(e.to_string().contains(name), "{case}: {e}");
                    assert_ne!(d, YEAR, "{case}: a year is allowed: {e}");
                    continue;
                }
                Ok(served) => served,
            };
            assert_ne!(d, Duration::MAX, "{case}: accepted");
            served.healthy();
            served.panic_slot(1);
            let status = served.healthy();
            assert!(status.workers[1].generation >= 1, "{case}: {status:#?}");
            let mut events = served.cluster.events();
            served.cluster.restart().expect("restart");
            let completed =
                common::wait_event(&mut events, &format!("{case}: the roll"), |e| match e {
                    Event::RollFinished { completed, .. } => Some(*completed),
                    _ => None,
                });
            assert!(completed, "{case}: the roll failed");
            served.healthy();
            served.stop();
        }
    }
}

// ---------------------------------------------------------------- store

/// Empty, maximal and oversized keys and values, counters that overflow or
/// hold no decimal, lock options and collection options at their extremes.
async fn hostile_store(store: &Store, prefix: &str) -> Checks {
    let mut ch = Checks::default();
    let c = store.collection(&format!("{prefix} hostile"));

    // The empty key: refused, or a key like any other.
    match c.set("", "empty").await {
        Ok(()) => {
            let got = c.get("").await;
            ch.check(
                "get(\"\")",
                matches!(&got, Ok(Some(v)) if v == "empty"),
                &got,
            );
            let got = c.acquire("").await;
            ch.ok("acquire(\"\")", &got);
            if let Ok(lock) = got {
                ch.ok("release(\"\")", &lock.release().await);
            }
            ch.ok("del(\"\")", &c.del("").await);
        }
        Err(e) => ch.check("set(\"\")", e.is_invalid_value() || e.is_config(), &e),
    }

    // Keys at and over the 4 KiB limit.
    let max_key = "k".repeat(CollectionOptions::DEFAULT_MAX_KEY_SIZE);
    ch.ok("set(4 KiB key)", &c.set(&max_key, "v").await);
    let got = c.get(&max_key).await;
    ch.check("get(4 KiB key)", matches!(&got, Ok(Some(_))), &got);
    for over in [
        "k".repeat(CollectionOptions::DEFAULT_MAX_KEY_SIZE + 1),
        "k".repeat(1 << 20),
    ] {
        let n = over.len();
        let too_large = Error::is_too_large;
        ch.err(
            &format!("set({n} B key)"),
            &c.set(&over, "v").await,
            too_large,
        );
        ch.err(&format!("get({n} B key)"), &c.get(&over).await, too_large);
        ch.err(&format!("del({n} B key)"), &c.del(&over).await, too_large);
        ch.err(
            &format!("incr({n} B key)"),
            &c.incr(&over, 1).await,
            too_large,
        );
        let cas = c
            .compare_and_swap(&over, None, Some(Bytes::from("v")))
            .await;
        ch.err(&format!("cas({n} B key)"), &cas, too_large);
        ch.err(
            &format!("acquire({n} B key)"),
            &c.acquire(&over).await,
            too_large,
        );
        let got = c.try_acquire(&over).await;
        ch.err(&format!("try_acquire({n} B key)"), &got, too_large);
    }

    // Values at and over the 1 MiB limit.
    let mib = CollectionOptions::DEFAULT_MAX_VALUE_SIZE;
    ch.ok("set(1 MiB value)", &c.set("v", vec![b'v'; mib]).await);
    for n in [mib + 1, 16 * mib] {
        let over = Bytes::from(vec![b'v'; n]);
        ch.err(
            &format!("set({n} B value)"),
            &c.set("v", over.clone()).await,
            Error::is_too_large,
        );
        let cas = c.compare_and_swap("v", None, Some(over.clone())).await;
        ch.err(&format!("cas({n} B value)"), &cas, Error::is_too_large);
        match c.acquire("v").await {
            Ok(mut lock) => {
                lock.set(over);
                let released = lock.release().await;
                ch.err(
                    &format!("release({n} B value)"),
                    &released,
                    Error::is_too_large,
                );
                let again = c.try_acquire("v").await;
                ch.check(
                    "the key is free after",
                    matches!(&again, Ok(Some(_))),
                    &again,
                );
            }
            Err(e) => ch.check("acquire(\"v\")", false, &e),
        }
    }
    let got = c.get("v").await;
    ch.check(
        "1 MiB value kept",
        matches!(&got, Ok(Some(v)) if v.len() == mib),
        &got.map(|v| v.map(|v| v.len())),
    );

    // Counters: overflow, and values that are not decimal.
    ch.ok("set(i64::MAX)", &c.set("n", i64::MAX.to_string()).await);
    ch.err(
        "incr(i64::MAX, 1)",
        &c.incr("n", 1).await,
        Error::is_invalid_value,
    );
    let got = c.incr("n", i64::MIN).await;
    ch.check("incr(i64::MAX, i64::MIN)", matches!(got, Ok(-1)), &got);
    ch.err(
        "incr(-1, i64::MIN)",
        &c.incr("n", i64::MIN).await,
        Error::is_invalid_value,
    );
    let got = c.get("n").await;
    ch.check(
        "unchanged after overflow",
        matches!(&got, Ok(Some(v)) if v == "-1"),
        &got,
    );
    let not_decimal: [&[u8]; 12] = [
        b"",
        b"abc",
        b" 1",
        b"1 ",
        b"1.5",
        b"0x10",
        b"1e3",
        "\u{661}\u{662}".as_bytes(),
        b"99999999999999999999",
        b"\0",
        b"\xff\xfe",
        b"--1",
    ];
    for bad in not_decimal {
        ch.ok("set(not decimal)", &c.set("bad", bad.to_vec()).await);
        let got = c.incr("bad", 1).await;
        ch.err(&format!("incr({bad:?})"), &got, Error::is_invalid_value);
        let got = c.get("bad").await;
        ch.check(
            format!("{bad:?} unchanged"),
            matches!(&got, Ok(Some(v)) if v == bad),
            &got,
        );
        if bad.trim_ascii() != b"1" {
            let got = c.get_as::<u64>("bad").await;
            let what = format!("get_as::<u64>({bad:?})");
            ch.err(&what, &got, Error::is_invalid_value);
        }
    }

    // Lock options at their extremes.
    let lease = |d| LockOptions::new().lease(d);
    let timeout = |d| LockOptions::new().timeout(d);
    ch.err(
        "lease(ZERO)",
        &c.acquire_with("l", lease(Duration::ZERO)).await,
        Error::is_config,
    );
    for (what, options) in [
        ("lease(MAX)", lease(Duration::MAX)),
        ("timeout(ZERO), free", timeout(Duration::ZERO)),
        ("timeout(MAX), free", timeout(Duration::MAX)),
        (
            "lease(MAX).timeout(MAX)",
            lease(Duration::MAX).timeout(Duration::MAX),
        ),
        (
            "lease(YEAR).timeout(ZERO)",
            lease(YEAR).timeout(Duration::ZERO),
        ),
    ] {
        match c.acquire_with("l", options).await {
            Ok(mut lock) => {
                lock.set(what);
                ch.ok(&format!("{what}: release"), &lock.release().await);
            }
            Err(e) => ch.check(what, false, &e),
        }
    }
    let got = c.acquire_timeout("l", Duration::MAX).await;
    ch.ok("acquire_timeout(MAX), free", &got);
    if let Ok(held) = got {
        let got = c.acquire_with("l", timeout(Duration::ZERO)).await;
        ch.err("timeout(ZERO), held", &got, Error::is_timeout);
        let got = c.acquire_timeout("l", Duration::ZERO).await;
        ch.err("acquire_timeout(ZERO), held", &got, Error::is_timeout);
        let got = c.try_acquire("l").await;
        ch.check("try_acquire, held", matches!(got, Ok(None)), &got);
        ch.ok("release", &held.release().await);
    }

    // Collection options at their extremes: refused, or a collection that works.
    let d = |expire_keys, max_hold| CollectionOptions {
        expire_keys,
        max_hold,
        ..CollectionOptions::default()
    };
    let sizes = |max_key_size, max_value_size, max_keys, max_bytes| CollectionOptions {
        max_key_size,
        max_value_size,
        max_keys,
        max_bytes,
        ..CollectionOptions::default()
    };
    let (kb, mb) = (
        CollectionOptions::DEFAULT_MAX_KEY_SIZE,
        CollectionOptions::DEFAULT_MAX_VALUE_SIZE,
    );
    for (what, options, must_refuse) in [
        ("expire_keys ZERO", d(Some(Duration::ZERO), None), true),
        ("expire_keys YEAR", d(Some(YEAR), None), false),
        ("expire_keys MAX", d(Some(Duration::MAX), None), true),
        ("max_hold ZERO", d(None, Some(Duration::ZERO)), true),
        ("max_hold YEAR", d(None, Some(YEAR)), false),
        ("max_hold MAX", d(None, Some(Duration::MAX)), true),
        (
            "expire_keys and max_hold YEAR",
            d(Some(YEAR), Some(YEAR)),
            false,
        ),
        ("max_key_size 0", sizes(0, mb, None, None), true),
        ("max_key_size MAX", sizes(usize::MAX, mb, None, None), false),
        ("max_value_size 0", sizes(kb, 0, None, None), true),
        (
            "max_value_size MAX",
            sizes(kb, usize::MAX, None, None),
            false,
        ),
        ("max_keys 0", sizes(kb, mb, Some(0), None), true),
        ("max_keys MAX", sizes(kb, mb, Some(usize::MAX), None), false),
        ("max_bytes 0", sizes(kb, mb, None, Some(0)), true),
        (
            "max_bytes MAX",
            sizes(kb, mb, None, Some(usize::MAX)),
            false,
        ),
    ] {
        let c = store.collection(&format!("{prefix} {what}"));
        match c.configure(options).await {
            Err(e) => {
                ch.check(format!("configure({what}) is_config"), e.is_config(), &e);
                let named = what.split(' ').next().unwrap_or(what);
                let names = !what.ends_with("MAX") || e.to_string().contains(named);
                ch.check(format!("configure({what}) names {named}"), names, &e);
            }
            Ok(()) => {
                ch.check(format!("configure({what}) accepted"), !must_refuse, &());
                ch.ok(&format!("{what}: set"), &c.set("k", "1").await);
                ch.ok(&format!("{what}: get"), &c.get("k").await);
                ch.ok(&format!("{what}: incr"), &c.incr("k", 1).await);
                match c.acquire("k").await {
                    Ok(mut lock) => {
                        lock.set("3");
                        ch.ok(&format!("{what}: release"), &lock.release().await);
                    }
                    Err(e) => ch.check(format!("{what}: acquire"), false, &e),
                }
                ch.ok(&format!("{what}: del"), &c.del("k").await);
            }
        }
    }
    ch
}

/// The hostile store table, from the test thread and from a worker.
#[test]
fn the_store_takes_hostile_keys_values_and_options() {
    let (tx, rx) = mpsc::channel();
    let served = serve("hostile store", base(), 2, move |worker| {
        if worker.slot() != 0 || worker.generation() != 0 {
            return no_fault();
        }
        let (store, tx) = (worker.store(), tx.clone());
        Box::pin(async move {
            let _ = tx.send(hostile_store(&store, "worker").await);
        })
    });
    done(hostile_store(&served.cluster.store(), "thread")).assert_clean("from the test thread");
    common::recv(&rx, "the worker's table").assert_clean("from a worker");
    served.healthy();
    served.stop();
}

/// Waiters with endless leases or waits (`(collection, key, options)`)
/// queued behind locks that slot 0 holds and leaks, so that only the
/// store's clean-up after its exit, on the master thread, frees them and
/// grants them to the waiters. Collection "held" has `max_hold` and
/// `expire_keys` of a year. Returns the cluster for more.
fn granted_on_the_master_thread(
    case: &str,
    waiters: [(&'static str, &'static str, LockOptions); 2],
) -> Served {
    let (held_tx, held_rx) = mpsc::channel();
    let served = serve(case, base(), 2, move |worker| {
        if worker.slot() != 0 || worker.generation() != 0 {
            return no_fault();
        }
        let (store, held_tx) = (worker.store(), held_tx.clone());
        Box::pin(async move {
            let options = CollectionOptions {
                max_hold: Some(YEAR),
                expire_keys: Some(YEAR),
                ..CollectionOptions::default()
            };
            store
                .collection("held")
                .configure(options)
                .await
                .expect("configure");
            for (collection, key, _) in waiters {
                let lock = store
                    .collection(collection)
                    .acquire(key)
                    .await
                    .expect("lock");
                Box::leak(Box::new(lock));
            }
            let _ = held_tx.send(());
        })
    });
    common::recv(&held_rx, "slot 0 holds its locks");
    let store = served.cluster.store();
    let queued: Vec<_> = waiters
        .iter()
        .map(|(collection, key, options)| {
            let c = store.collection(collection);
            let what = format!("{case}: {key} waits");
            Op::new(async move { c.acquire_with(key, *options).await }).pending(&what)
        })
        .collect();
    served.panic_slot(0);
    for ((_, key, options), op) in waiters.iter().zip(queued) {
        let what = format!("{case}: {key} ({options:?}) granted after slot 0's exit");
        let mut lock = op.wait(&what).unwrap_or_else(|e| panic!("{what}: {e}"));
        lock.set("granted");
        done(lock.release()).unwrap_or_else(|e| panic!("{what}: release: {e}"));
    }
    served.healthy();
    served
}

/// Endless leases granted on the master thread: `lease(MAX)`, and the
/// year-long `max_hold` of a collection.
#[test]
fn endless_leases_granted_on_the_master_thread() {
    let served = granted_on_the_master_thread(
        "endless leases, master thread",
        [
            ("plain", "a", LockOptions::new().lease(Duration::MAX)),
            ("held", "b", LockOptions::new()),
        ],
    );
    served.stop();
}

/// Endless waits granted on the master thread, then an endless lease
/// granted on the timer thread as a short one runs out.
#[test]
fn endless_waits_granted_on_the_master_and_timer_threads() {
    let endless = LockOptions::new()
        .lease(Duration::MAX)
        .timeout(Duration::MAX);
    let served = granted_on_the_master_thread(
        "endless waits, master thread",
        [
            ("plain", "a", LockOptions::new().timeout(Duration::MAX)),
            ("plain", "b", endless),
        ],
    );
    let c = served.cluster.store().collection("plain");
    let short = LockOptions::new().lease(Duration::from_millis(300));
    let holder = done(c.acquire_with("t", short)).expect("a short lease");
    let waiter = Op::new(c.acquire_with("t", endless)).pending("behind a short lease");
    let lock = waiter
        .wait("the grant at the lease's end")
        .expect("granted");
    let late = done(holder.release());
    assert!(late.as_ref().is_err_and(Error::is_lock_lost), "{late:?}");
    done(lock.release()).expect("release");
    served.healthy();
    served.stop();
}

/// A waiter whose waker panics as it is woken, queued on a key that a
/// runtime thread will grant it, with a plain waiter behind it: the grant
/// goes on, the slot is respawned, and once the hostile waiter leaves, the
/// one behind it gets the key. Returns the cluster, slot 0 holding "m".
fn hostile_waker_case(case: &str) -> (Served, Waker) {
    let (held_tx, held_rx) = mpsc::channel();
    let served = serve(case, base(), 2, move |worker| {
        if worker.slot() != 0 || worker.generation() != 0 {
            return no_fault();
        }
        let (store, held_tx) = (worker.store(), held_tx.clone());
        Box::pin(async move {
            let c = store.collection("wakers");
            Box::leak(Box::new(c.acquire("m").await.expect("lock")));
            let _ = held_tx.send(());
        })
    })
    .allowing_runtime_panics();
    common::recv(&held_rx, "slot 0 holds its lock");
    (served, Waker::from(Arc::new(PanicsOnWake)))
}

/// ... granted by the master thread, as the holder's worker exits.
#[test]
fn a_waker_that_panics_when_the_master_thread_grants_it_a_lock() {
    let (served, waker) = hostile_waker_case("panicking waker, master thread");
    let c = served.cluster.store().collection("wakers");
    let mut hostile = Box::pin(c.acquire("m"));
    assert!(hostile
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    let behind = Op::new(c.acquire("m")).pending("behind the hostile waiter");
    served.panic_slot(0);
    drop(hostile);
    let lock = behind
        .wait("the grant after the hostile waiter left")
        .expect("granted");
    done(lock.release()).expect("release");
    eprintln!("{}: {:?}", served.case, runtime_panics(&served.cluster));
    served.healthy();
    served.stop();
}

/// ... granted by the timer thread, as a lease runs out.
#[test]
fn a_waker_that_panics_when_the_timer_thread_grants_it_a_lock() {
    let (served, waker) = hostile_waker_case("panicking waker, timer thread");
    let c = served.cluster.store().collection("wakers");
    let short = LockOptions::new().lease(Duration::from_millis(300));
    let holder = done(c.acquire_with("t", short)).expect("a short lease");
    let mut hostile = Box::pin(c.acquire("t"));
    assert!(hostile
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    let behind = Op::new(c.acquire("t")).pending("behind the hostile waiter");
    served.wait_status("the timer thread's grant", |_| {
        runtime_panics(&served.cluster)
            .iter()
            .any(|l| l.contains("timers"))
    });
    drop(hostile);
    let lock = behind
        .wait("the grant after the hostile waiter left")
        .expect("granted");
    done(lock.release()).expect("release");
    let late = done(holder.release());
    assert!(late.as_ref().is_err_and(Error::is_lock_lost), "{late:?}");
    eprintln!("{}: {:?}", served.case, runtime_panics(&served.cluster));
    served.healthy();
    served.stop();
}

/// A future that polls a store operation and panics when polled again
/// (woken by the grant): the grant it leaves behind is given back.
struct PanicsWhenWoken<F> {
    inner: Pin<Box<F>>,
    pending: Option<mpsc::Sender<()>>,
}

impl<F: Future> Future for PanicsWhenWoken<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(tx) = self.pending.take() else {
            panic!("a future panics while it awaits a store operation");
        };
        let polled = self.inner.as_mut().poll(cx);
        if polled.is_pending() {
            let _ = tx.send(());
        }
        polled
    }
}

#[test]
fn a_worker_panics_while_it_awaits_a_lock() {
    let go = Arc::new(tokio::sync::Notify::new());
    let (waiting_tx, waiting_rx) = mpsc::channel();
    let served = serve("panic awaiting a lock", base(), 2, {
        let go = go.clone();
        move |worker| {
            if worker.slot() != 1 || worker.generation() != 0 {
                return no_fault();
            }
            let (go, c) = (go.clone(), worker.store().collection("awaited"));
            let waiting_tx = waiting_tx.clone();
            Box::pin(async move {
                go.notified().await;
                let acquire = c.acquire("k");
                let _ = PanicsWhenWoken {
                    inner: Box::pin(acquire),
                    pending: Some(waiting_tx),
                }
                .await;
            })
        }
    });
    let c = served.cluster.store().collection("awaited");
    let holder = done(c.acquire("k")).expect("lock");
    go.notify_one();
    common::recv(&waiting_rx, "slot 1 waits for the lock");
    let mut events = served.cluster.events();
    let behind = Op::new(c.acquire("k")).pending("behind slot 1");
    done(holder.release()).expect("release");
    let exit = common::wait_event(&mut events, "slot 1's exit", |e| match e {
        Event::WorkerExited { slot: 1, exit, .. } => Some(exit.clone()),
        _ => None,
    });
    assert!(
        matches!(&exit, Exit::Panicked { message, .. } if message.contains("awaits a store")),
        "{exit:?}"
    );
    let lock = behind
        .wait("the grant after slot 1 panicked")
        .expect("granted");
    done(lock.release()).expect("release");
    served.healthy();
    served.stop();
}

// ---------------------------------------------------------------- bus

/// Slots that do not exist, endless and zero timeouts, empty and 1 MiB
/// topics, publishing to nobody, huge messages.
async fn hostile_bus(bus: &Bus, size: usize) -> Checks {
    let mut ch = Checks::default();
    let no_slot = Error::is_no_such_slot;
    for slot in [size, usize::MAX] {
        ch.err(
            &format!("send({slot})"),
            &bus.send(slot, "x").await,
            no_slot,
        );
        ch.err(
            &format!("try_send({slot})"),
            &bus.try_send(slot, "x"),
            no_slot,
        );
        ch.err(
            &format!("request({slot})"),
            &bus.request(slot, "who").await,
            no_slot,
        );
        let got = bus.request_timeout(slot, "who", Duration::MAX).await;
        ch.err(&format!("request_timeout({slot}, MAX)"), &got, no_slot);
        ch.err(
            &format!("send_as({slot})"),
            &bus.send_as(slot, &1).await,
            no_slot,
        );
    }
    let got = bus.request_timeout(1, "who", Duration::MAX).await;
    ch.check(
        "request_timeout(1, MAX)",
        matches!(&got, Ok(b) if b.starts_with(b"1 ")),
        &got,
    );
    let got = bus.request_timeout(1, "who", YEAR).await;
    ch.check(
        "request_timeout(1, YEAR)",
        matches!(&got, Ok(b) if b.starts_with(b"1 ")),
        &got,
    );
    let got = bus.request_timeout(1, "who", Duration::ZERO).await;
    ch.check(
        "request_timeout(1, ZERO)",
        got.as_ref()
            .map_or_else(Error::is_timeout, |b| b.starts_with(b"1 ")),
        &got,
    );
    let huge = Bytes::from(vec![b'm'; 16 << 20]);
    let got = bus.send(1, huge.clone()).await;
    ch.check(
        "send(16 MiB)",
        got.as_ref().map_or_else(Error::is_too_large, |()| true),
        &got,
    );

    let nobody = bus.publish("nobody listens here", "x").await;
    ch.check("publish to nobody", matches!(nobody, Ok(0)), &nobody);
    let nobody = bus.publish("nobody listens here", huge).await;
    ch.check(
        "publish 16 MiB to nobody",
        matches!(&nobody, Ok(0)) || nobody.as_ref().is_err_and(Error::is_too_large),
        &nobody,
    );
    for topic in [String::new(), "t".repeat(1 << 20)] {
        let n = topic.len();
        match bus.subscribe(&topic) {
            Ok(mut sub) => {
                let got = bus.publish(&topic, "hello").await;
                ch.check(format!("publish({n} B topic)"), matches!(got, Ok(1)), &got);
                let got = sub.recv().await.map(|e| e.into_message());
                ch.check(
                    format!("receive on a {n} B topic"),
                    got.as_deref() == Some(b"hello".as_slice()),
                    &got,
                );
                let got = bus.publish_as(&topic, &7).await;
                ch.check(
                    format!("publish_as({n} B topic)"),
                    matches!(got, Ok(1)),
                    &got,
                );
            }
            Err(e) => {
                let refused = e.is_too_large() || e.is_config() || e.is_invalid_value();
                ch.check(format!("subscribe({n} B topic)"), refused, &e);
                let got = bus.publish(&topic, "hello").await;
                ch.check(
                    format!("publish({n} B topic)"),
                    matches!(got, Ok(0)) || got.is_err(),
                    &got,
                );
            }
        }
    }
    ch
}

#[test]
fn the_bus_takes_hostile_slots_topics_and_timeouts() {
    let (tx, rx) = mpsc::channel();
    let served = serve("hostile bus", base(), 3, move |worker| {
        if worker.slot() != 0 || worker.generation() != 0 {
            return no_fault();
        }
        let (bus, tx) = (worker.bus(), tx.clone());
        Box::pin(async move {
            let _ = tx.send(hostile_bus(&bus, 3).await);
        })
    });
    // One after the other: both subscribe to the same topics.
    common::recv(&rx, "the worker's table").assert_clean("from a worker");
    done(hostile_bus(&served.cluster.bus(), 3)).assert_clean("from the test thread");
    served.healthy();
    // A worker that panics holding a request: "no reply" at once, and
    // the slot is respawned.
    served.panic_slot(2);
    let status = served.healthy();
    assert!(status.workers[2].generation >= 1, "{status:#?}");
    served.stop();
}

/// Requests that race with a shrink that retires their slot end (a reply
/// or an error, never a timeout); after it, the old handle and a new one
/// are refused at once.
#[test]
fn requests_to_a_slot_retired_by_a_shrink() {
    let mut served = serve("retired slot", base(), 3, |_| no_fault());
    served.healthy();
    let old = served.cluster.bus();
    let stop = Arc::new(AtomicBool::new(false));
    let racer = std::thread::spawn({
        let (old, stop) = (old.clone(), stop.clone());
        move || {
            let mut outcomes = Vec::new();
            while !stop.load(Ordering::Acquire) && outcomes.len() < 10_000 {
                outcomes.push(done(old.request_timeout(2, "who", PATIENCE)).map(|_| ()));
            }
            outcomes
        }
    });
    let mut events = served.cluster.events();
    served.cluster.resize(1).expect("shrink");
    common::wait_event(&mut events, "the shrink", |e| {
        matches!(e, Event::Resized { to: 1, .. }).then_some(())
    });
    served.size = 1;
    served.settled(&[]);
    stop.store(true, Ordering::Release);
    let outcomes = racer.join().expect("racer");
    for outcome in &outcomes {
        if let Err(e) = outcome {
            assert!(
                e.is_stopped() || e.is_no_reply() || e.is_no_such_slot(),
                "a request racing the shrink: {e}"
            );
        }
    }
    for bus in [&old, &served.cluster.bus()] {
        let e = done(bus.request_timeout(2, "who", PATIENCE)).expect_err("retired");
        assert!(e.is_stopped() || e.is_no_such_slot(), "{e}");
        let e = done(bus.send(2, "x")).expect_err("retired");
        assert!(e.is_stopped() || e.is_no_such_slot(), "{e}");
    }
    served.healthy();
    served.cluster.resize(3).expect("grow");
    served.size = 3;
    served.healthy();
    served.stop();
}

// ---------------------------------------------------------------- lifecycle

/// Resizes 1 -> 4 -> 1 -> 3, over and over, while TCP and bus requests
/// flow: none is lost, and the cluster settles on 3.
#[test]
fn resize_storms_while_requests_flow() {
    let mut served = serve("resize storm", base(), 1, |_| no_fault());
    served.healthy();
    let stop = Arc::new(AtomicBool::new(false));
    let served_count = Arc::new(AtomicUsize::new(0));
    let traffic = std::thread::spawn({
        let (addr, bus, stop, count) = (
            served.addr,
            served.cluster.bus(),
            stop.clone(),
            served_count.clone(),
        );
        move || -> Result<(), String> {
            while !stop.load(Ordering::Acquire) {
                try_ask(addr)?;
                done(bus.request_timeout(0, "who", PATIENCE)).map_err(|e| format!("bus: {e}"))?;
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
    });
    let mut events = served.cluster.events();
    for round in 0..3 {
        for n in [4, 1, 3] {
            served.cluster.resize(n).expect("resize");
            if round == 0 {
                // The first round waits for each step; the others do not.
                common::wait_event(&mut events, "a resize", |e| {
                    matches!(e, Event::Resized { to, .. } if *to == n).then_some(())
                });
                served.size = n;
                served.settled(&[]);
            }
        }
    }
    // Rounds 1 and 2 did not wait: 6 more resizes (each changes the size)
    // must be applied before the status can be the last one's.
    for _ in 0..6 {
        common::wait_event(&mut events, "the storm's resizes", |e| {
            matches!(e, Event::Resized { .. }).then_some(())
        });
    }
    served.size = 3;
    served.settled(&[]);
    stop.store(true, Ordering::Release);
    traffic
        .join()
        .expect("traffic thread")
        .unwrap_or_else(|e| panic!("a request during the storm failed: {e}"));
    assert!(served_count.load(Ordering::Relaxed) > 0);
    served.healthy();
    served.stop();
}

#[test]
fn resize_to_zero_or_past_the_maximum_is_refused() {
    let served = serve("bad resize", base(), 2, |_| no_fault());
    for n in [0, 4097, usize::MAX] {
        let e = served.cluster.resize(n).expect_err("refused");
        assert!(
            e.is_config() && e.to_string().contains("resize"),
            "resize({n}): {e}"
        );
    }
    served.healthy();
    let cluster = served.cluster.clone();
    served.stop();
    assert!(cluster.resize(2).expect_err("stopped").is_stopped());
    assert!(cluster.restart().expect_err("stopped").is_stopped());
}

#[test]
fn restart_during_a_resize_and_resize_during_a_roll() {
    let mut served = serve("restart and resize", base(), 2, |_| no_fault());
    served.healthy();
    let mut events = served.cluster.events();
    served.cluster.resize(4).expect("grow");
    served.cluster.restart().expect("restart");
    common::wait_event(&mut events, "the roll", |e| {
        matches!(e, Event::RollFinished { .. }).then_some(())
    });
    served.size = 4;
    served.healthy();
    served.cluster.restart().expect("restart");
    served.cluster.resize(1).expect("shrink");
    common::wait_event(&mut events, "the second roll", |e| {
        matches!(e, Event::RollFinished { .. }).then_some(())
    });
    // The retired slots' generations were asked to stop; wait until each
    // one that ever started has exited before asking who answers. (One that
    // is never asked to stop would fail here, after PATIENCE.)
    let mut history = served.cluster.events();
    let mut running = std::collections::HashSet::new();
    let mut shrunk = false;
    common::wait_event(
        &mut history,
        "the retired slots' generations to exit",
        |e| {
            match e {
                Event::WorkerStarted {
                    slot, generation, ..
                } if *slot > 0 => {
                    running.insert((*slot, *generation));
                }
                Event::WorkerExited {
                    slot, generation, ..
                } => {
                    running.remove(&(*slot, *generation));
                }
                Event::Resized { to: 1, .. } => shrunk = true,
                _ => {}
            }
            (shrunk && running.is_empty()).then_some(())
        },
    );
    served.size = 1;
    served.healthy();
    served.stop();
}

#[test]
fn shutdown_during_a_roll() {
    for wait_for_start in [false, true] {
        let case = format!("shutdown during a roll (waits for its start: {wait_for_start})");
        let served = serve(&case, base(), 3, |_| no_fault());
        served.healthy();
        let mut events = served.cluster.events();
        served.cluster.restart().expect("restart");
        if wait_for_start {
            common::wait_event(&mut events, "the roll's first new generation", |e| {
                matches!(e, Event::WorkerStarted { generation: 1, .. }).then_some(())
            });
        }
        let report = served.stop();
        assert_eq!(report.slots.len(), 3, "{case}:\n{report}");
    }
}

// ---------------------------------------------------------------- panics

/// What a panic in a callback should do to its slot.
enum Then {
    /// The slot is respawned; its generation 0 ended with this panic.
    Respawn(&'static str),
    /// The worker serves on (a task's panic, isolated).
    ServesOn,
    /// The slot ends (`Restart::Never`) with this panic; the others serve on.
    Ends(&'static str),
}

type Inject = fn(&Worker) -> Fault;

fn panic_cases() -> Vec<(&'static str, TaskPanic, Restart, Inject, Then)> {
    use Then::*;
    let (isolate, crash, always) = (TaskPanic::Isolate, TaskPanic::CrashWorker, Restart::Always);
    vec![
        (
            "the body factory panics",
            isolate,
            always,
            |_| panic!("the body factory panics"),
            Respawn("the body factory panics"),
        ),
        (
            "the body future panics",
            isolate,
            always,
            |_| Box::pin(async { panic!("the body future panics") }),
            Respawn("the body future panics"),
        ),
        (
            "the body future panics, Restart::Never",
            isolate,
            Restart::Never,
            |_| Box::pin(async { panic!("the body future panics") }),
            Ends("the body future panics"),
        ),
        (
            "a spawn_local task panics, Isolate",
            isolate,
            always,
            |_| Box::pin(async { spawn_local_panic() }),
            ServesOn,
        ),
        (
            "a spawn_local task panics, CrashWorker",
            crash,
            always,
            |_| Box::pin(async { spawn_local_panic() }),
            Respawn("a local task panics"),
        ),
        (
            "a tokio::spawn task panics, Isolate",
            isolate,
            always,
            |_| {
                Box::pin(async {
                    tokio::spawn(async { panic!("a spawned task panics") });
                })
            },
            ServesOn,
        ),
        (
            "a task's Drop panics as it ends, Isolate",
            isolate,
            always,
            |_| Box::pin(async { spawn_local_drop_panic() }),
            ServesOn,
        ),
        (
            "a task's Drop panics as it ends, CrashWorker",
            crash,
            always,
            |_| Box::pin(async { spawn_local_drop_panic() }),
            Respawn("a task's value panics as it is dropped"),
        ),
        (
            "a pending task's Drop panics as the body panics",
            isolate,
            always,
            |_| {
                Box::pin(async {
                    let guard = PanicsOnDrop("a pending task's value panics as it is dropped");
                    tokio::task::spawn_local(async move {
                        let _guard = guard;
                        std::future::pending::<()>().await
                    });
                    tokio::task::yield_now().await;
                    panic!("the body panics with a task alive")
                })
            },
            Respawn("the body panics with a task alive"),
        ),
        (
            "a Serialize impl panics in Collection::set_as",
            isolate,
            always,
            |worker| {
                let c = worker.store().collection("serialize");
                Box::pin(async move {
                    let _ = c.set_as("k", &PanicsOnSerialize).await;
                })
            },
            Respawn("a Serialize impl panics"),
        ),
        (
            "a Serialize impl panics in KeyLock::set_as",
            isolate,
            always,
            |worker| {
                let c = worker.store().collection("serialize");
                Box::pin(async move {
                    let mut lock = c.acquire("locked").await.expect("lock");
                    let _ = lock.set_as(&PanicsOnSerialize);
                })
            },
            Respawn("a Serialize impl panics"),
        ),
        (
            "a Serialize impl panics in Bus::send_as",
            isolate,
            always,
            |worker| {
                let bus = worker.bus();
                Box::pin(async move {
                    let _ = bus.send_as(0, &PanicsOnSerialize).await;
                })
            },
            Respawn("a Serialize impl panics"),
        ),
        (
            "a Serialize impl panics in Bus::request_as, in a task",
            isolate,
            always,
            |worker| {
                let bus = worker.bus();
                Box::pin(async move {
                    tokio::task::spawn_local(async move {
                        let _ = bus.request_as::<_, u8>(0, &PanicsOnSerialize).await;
                    });
                })
            },
            ServesOn,
        ),
    ]
}

fn spawn_local_panic() {
    tokio::task::spawn_local(async { panic!("a local task panics") });
}

fn spawn_local_drop_panic() {
    let guard = PanicsOnDrop("a task's value panics as it is dropped");
    tokio::task::spawn_local(async move { drop(guard) });
}

/// A panic in every callback a user passes, in slot 1's first generation:
/// the slot is respawned (or serves on, or ends, by policy), the others
/// serve, and the store's locks the panic dropped are free.
#[test]
fn a_panic_in_every_user_callback() {
    for (case, task_panic, restart, inject, then) in panic_cases() {
        let served = serve(
            case,
            base().task_panic(task_panic).restart(restart),
            2,
            move |worker| {
                if worker.slot() == 1 && worker.generation() == 0 {
                    inject(worker)
                } else {
                    no_fault()
                }
            },
        );
        let mut events = served.cluster.events();
        match then {
            Then::Respawn(message) | Then::Ends(message) => {
                let exit = common::wait_event(
                    &mut events,
                    &format!("{case}: slot 1's exit"),
                    |e| match e {
                        Event::WorkerExited {
                            slot: 1,
                            generation: 0,
                            exit,
                            ..
                        } => Some(exit.clone()),
                        _ => None,
                    },
                );
                assert!(
                    matches!(&exit, Exit::Panicked { message: m, .. } if m.contains(message)),
                    "{case}: {exit:?}"
                );
            }
            Then::ServesOn => {
                common::wait_event(&mut events, &format!("{case}: the task's panic"), |e| {
                    matches!(
                        e,
                        Event::TaskPanicked {
                            slot: 1,
                            generation: 0,
                            ..
                        }
                    )
                    .then_some(())
                });
            }
        }
        served.wait_status("slot 1's outcome in status", |s| match then {
            Then::Respawn(_) => s.workers[1].generation >= 1,
            Then::Ends(_) => s.workers[1].state == WorkerState::Stopped,
            Then::ServesOn => true,
        });
        let status = match then {
            Then::Ends(_) => served.healthy_except(&[1]),
            _ => served.healthy(),
        };
        let generation = status.workers[1].generation;
        match then {
            Then::Respawn(_) => assert!(generation >= 1, "{case}: {status:#?}"),
            Then::ServesOn | Then::Ends(_) => assert_eq!(generation, 0, "{case}: {status:#?}"),
        }
        // A lock a panic dropped is free.
        let c = served.cluster.store().collection("serialize");
        let free = done(c.try_acquire("locked")).expect("try_acquire");
        assert!(free.is_some(), "{case}: a lock outlived the panic");
        drop(free);
        served.stop();
    }
}
